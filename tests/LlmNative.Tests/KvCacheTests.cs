using System;
using System.Linq;
using Xunit;

namespace LlmNative.Tests;

/// <summary>KvCache: round trips, fork, truncate, capacity, unknown sequences, validation, planner, lifetime.</summary>
public class KvCacheTests
{
    private const int H = 2, D = 64, Layers = 3, Block = 16;

    private static KvCacheOptions Options(long capacityTokens = 512) =>
        new() { NumLayers = Layers, NumKvHeads = H, HeadDim = D, BlockSize = Block, CapacityTokens = capacityTokens };

    private static float[] Rows(Random r, int tokens)
    {
        var a = new float[tokens * H * D];
        for (int i = 0; i < a.Length; i++) a[i] = (float)(r.NextDouble() * 8 - 4);
        return a;
    }

    /// <summary>What the cache stores: the f16 rounding of the input.</summary>
    private static float[] Stored(float[] a) => a.Select(v => (float)(Half)v).ToArray();

    private static (float[] K, float[] V) ReadAll(KvCache cache, long seq, int layer)
    {
        int len = (int)cache.GetLength(seq, layer);
        float[] k = new float[len * H * D], v = new float[len * H * D];
        cache.Read(seq, layer, 0, k, v);
        return (k, v);
    }

    [Fact]
    public void Append_and_read_round_trip_through_spans_and_buffers()
    {
        var r = TestSetup.Random(out int seed);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, Options());
        Assert.Equal(512, cache.Options.CapacityTokens);
        Assert.Equal(256, cache.Options.MaxBatch); // resolved default
        Assert.Equal(0, cache.Options.CapacityBytes);
        long seq = cache.AddSequence();
        Assert.Equal(0, cache.GetLength(seq, 0));

        // Appends of 5, 11, 1 and 30 tokens cross block boundaries; layer 1 gets different data in between.
        var kAll = new System.Collections.Generic.List<float>();
        var vAll = new System.Collections.Generic.List<float>();
        foreach (int n in new[] { 5, 11, 1, 30 })
        {
            float[] k = Rows(r, n), v = Rows(r, n);
            if (n % 2 == 1) cache.Append(seq, 0, k, v);
            else
            {
                using var kb = LlmBuffer.Allocate(ctx, DType.F32, k.Length);
                using var vb = LlmBuffer.Allocate(ctx, DType.F16, v.Length); // k and v dtypes may differ
                kb.Upload<float>(k);
                vb.Upload<Half>(v.Select(x => (Half)x).ToArray());
                cache.Append(seq, 0, kb, vb, n);
            }
            cache.Append(seq, 1, Rows(r, 1), Rows(r, 1));
            kAll.AddRange(k);
            vAll.AddRange(v);
        }
        Assert.Equal(47, cache.GetLength(seq, 0));
        Assert.Equal(4, cache.GetLength(seq, 1));
        Assert.Equal(0, cache.GetLength(seq, 2));

        var (kr, vr) = ReadAll(cache, seq, 0);
        Assert.True(Stored(kAll.ToArray()).SequenceEqual(kr), $"seed {seed}: keys differ");
        Assert.True(Stored(vAll.ToArray()).SequenceEqual(vr), $"seed {seed}: values differ");

        // A middle range, into buffers and Half spans.
        using var kOut = LlmBuffer.Allocate(ctx, DType.F16, 20 * H * D);
        using var vOut = LlmBuffer.Allocate(ctx, DType.F32, 20 * H * D);
        cache.Read(seq, 0, 13, 20, kOut, vOut);
        Assert.True(kOut.ToArray<Half>().Select(x => (float)x).SequenceEqual(kr.Skip(13 * H * D).Take(20 * H * D)), $"seed {seed}");
        Assert.True(vOut.ToArray<float>().SequenceEqual(vr.Skip(13 * H * D).Take(20 * H * D)), $"seed {seed}");
        Half[] kh = new Half[3 * H * D], vh = new Half[3 * H * D];
        cache.Read(seq, 0, 44, kh, vh);
        Assert.True(kh.Select(x => (float)x).SequenceEqual(kr.Skip(44 * H * D)), $"seed {seed}");

        // Half input spans.
        long s2 = cache.AddSequence();
        Half[] hk = Rows(r, 3).Select(x => (Half)x).ToArray(), hv = Rows(r, 3).Select(x => (Half)x).ToArray();
        cache.Append(s2, 2, hk, hv);
        var (k2, v2) = ReadAll(cache, s2, 2);
        Assert.True(hk.Select(x => (float)x).SequenceEqual(k2) && hv.Select(x => (float)x).SequenceEqual(v2), $"seed {seed}");

        KvCacheStats stats = cache.Stats;
        Assert.Equal(512 / Block, stats.TotalBlocks);
        Assert.Equal(2, stats.Sequences);
        Assert.Equal(512 / Block - 3 - 1, stats.FreeBlocks); // 47 tokens: 3 blocks; 3 tokens: 1 block
        Assert.Equal(cache.Options.CapacityTokens * Layers * KvCache.BytesPerToken(cache.Options), stats.PoolBytes);
    }

    [Fact]
    public void Fork_shares_full_blocks_copies_the_partial_one_and_diverges()
    {
        var r = TestSetup.Random(out int seed);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, Options());
        long a = cache.AddSequence();
        float[] k = Rows(r, 40), v = Rows(r, 40);
        for (int l = 0; l < Layers; l++) cache.Append(a, l, k, v);
        long free0 = cache.Stats.FreeBlocks;

        long b = cache.Fork(a);
        Assert.NotEqual(a, b);
        Assert.Equal(free0 - 1, cache.Stats.FreeBlocks); // 2 full blocks shared, the partial third copied
        for (int l = 0; l < Layers; l++) Assert.Equal(40, cache.GetLength(b, l));

        float[] k2 = Rows(r, 10), v2 = Rows(r, 10);
        cache.Append(b, 0, k2, v2);
        var (ka, va) = ReadAll(cache, a, 0);
        var (kb, vb) = ReadAll(cache, b, 0);
        Assert.True(Stored(k).SequenceEqual(ka) && Stored(v).SequenceEqual(va), $"seed {seed}: the source changed");
        Assert.True(Stored(k.Concat(k2).ToArray()).SequenceEqual(kb) && Stored(v.Concat(v2).ToArray()).SequenceEqual(vb),
            $"seed {seed}: the fork is wrong");

        // Removing the source keeps the fork's shared blocks.
        cache.RemoveSequence(a);
        var (kb2, _) = ReadAll(cache, b, 0);
        Assert.True(kb.SequenceEqual(kb2), $"seed {seed}");
        Assert.Equal(1, cache.Stats.Sequences);
    }

    [Fact]
    public void Truncate_shortens_every_layer_frees_blocks_and_appends_continue()
    {
        var r = TestSetup.Random(out int seed);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, Options());
        long s = cache.AddSequence();
        float[] k = Rows(r, 50), v = Rows(r, 50);
        cache.Append(s, 0, k, v);
        cache.Append(s, 1, k.AsSpan(0, 10 * H * D), v.AsSpan(0, 10 * H * D));
        long free = cache.Stats.FreeBlocks;
        cache.Truncate(s, 20);
        Assert.Equal(20, cache.GetLength(s, 0));
        Assert.Equal(10, cache.GetLength(s, 1)); // already shorter: unchanged
        Assert.Equal(free + 2, cache.Stats.FreeBlocks); // 4 blocks -> 2
        float[] k2 = Rows(r, 7), v2 = Rows(r, 7);
        cache.Append(s, 0, k2, v2);
        var (kr, vr) = ReadAll(cache, s, 0);
        Assert.True(Stored(k.Take(20 * H * D).Concat(k2).ToArray()).SequenceEqual(kr), $"seed {seed}");
        Assert.True(Stored(v.Take(20 * H * D).Concat(v2).ToArray()).SequenceEqual(vr), $"seed {seed}");
        cache.Truncate(s, 0);
        Assert.Equal(0, cache.GetLength(s, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(s, -1));
    }

    [Fact]
    public void Full_cache_throws_KvCacheFullException_and_changes_nothing()
    {
        var r = TestSetup.Random(out int seed);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, Options(capacityTokens: 4 * Block)); // 4 blocks
        long a = cache.AddSequence(), b = cache.AddSequence();
        float[] k = Rows(r, 40), v = Rows(r, 40); // 3 blocks
        for (int l = 0; l < Layers; l++) cache.Append(a, l, k, v);
        KvCacheStats before = cache.Stats;
        Assert.Equal(1, before.FreeBlocks);

        var e = Assert.Throws<KvCacheFullException>(() => cache.Append(b, 0, Rows(r, 20), Rows(r, 20)));
        Assert.Equal(LlmNativeStatus.CapacityExceeded, e.Status);
        Assert.Equal("llmn_kv_cache_append", e.Function);
        Assert.Contains("full", e.NativeMessage);
        Assert.IsAssignableFrom<LlmNativeException>(e);
        // Appending to a's partial block plus a new one also does not fit.
        Assert.Throws<KvCacheFullException>(() => cache.Append(a, 0, Rows(r, 30), Rows(r, 30)));
        using var kb = LlmBuffer.Allocate(ctx, DType.F32, 30 * H * D);
        kb.Fill(1f);
        Assert.Throws<KvCacheFullException>(() => cache.Append(a, 0, kb, kb, 30));
        // Fork copies a's partial block and shares the two full ones: fits once, then the pool is full.
        long f = cache.Fork(a);
        Assert.Throws<KvCacheFullException>(() => cache.Fork(a));
        cache.RemoveSequence(f);

        Assert.Equal(before, cache.Stats);
        Assert.Equal(0, cache.GetLength(b, 0));
        Assert.Equal(40, cache.GetLength(a, 0));
        var (kr, vr) = ReadAll(cache, a, 0);
        Assert.True(Stored(k).SequenceEqual(kr) && Stored(v).SequenceEqual(vr), $"seed {seed}: contents changed");

        // What fits still goes in.
        cache.Append(b, 0, Rows(r, 16), Rows(r, 16));
        Assert.Equal(0, cache.Stats.FreeBlocks);
    }

    [Fact]
    public void Non_finite_values_are_refused_natively_and_change_nothing()
    {
        var r = TestSetup.Random(out _);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, Options());
        long s = cache.AddSequence();
        float[] k = Rows(r, 3), v = Rows(r, 3);
        v[H * D + 5] = float.NaN;
        var e = Assert.Throws<LlmNativeException>(() => cache.Append(s, 0, k, v));
        Assert.Equal(LlmNativeStatus.InvalidArgument, e.Status);
        Assert.Contains("NaN", e.NativeMessage);
        Assert.Equal(0, cache.GetLength(s, 0));
        Assert.Equal(cache.Options.CapacityTokens / Block, cache.Stats.FreeBlocks);
    }

    [Fact]
    public void Unknown_sequences_throw_KvSequenceNotFoundException_with_the_id()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, Options());
        long s = cache.AddSequence();
        cache.RemoveSequence(s);
        var e = Assert.Throws<KvSequenceNotFoundException>(() => cache.GetLength(s, 0));
        Assert.Equal(s, e.SequenceId);
        Assert.Equal(LlmNativeStatus.NotFound, e.Status);
        Assert.Contains($"{s}", e.NativeMessage);
        Assert.Throws<KvSequenceNotFoundException>(() => cache.RemoveSequence(s));
        Assert.Throws<KvSequenceNotFoundException>(() => cache.Fork(12345));
        Assert.Throws<KvSequenceNotFoundException>(() => cache.Truncate(-7, 0));
        Assert.Throws<KvSequenceNotFoundException>(() => cache.Append(s, 0, new float[H * D], new float[H * D]));
        Assert.Throws<KvSequenceNotFoundException>(() => cache.Read(s, 0, 0, new float[0], new float[0]));
        long next = cache.AddSequence();
        Assert.NotEqual(s, next); // ids are never reused
    }

    [Fact]
    public void Layers_shapes_and_dtypes_are_checked_naming_the_parameter()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, Options());
        long s = cache.AddSequence();
        var o = Assert.Throws<ArgumentOutOfRangeException>(() => cache.GetLength(s, Layers));
        Assert.Equal("layer", o.ParamName);
        Assert.Contains($"[0, {Layers})", o.Message);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => cache.Append(s, -1, new float[H * D], new float[H * D]));
        Assert.Equal("layer", o.ParamName);

        var e = Assert.Throws<ArgumentException>(() => cache.Append(s, 0, new float[H * D + 1], new float[H * D + 1]));
        Assert.Equal("k", e.ParamName);
        Assert.Contains($"{H * D}", e.Message);
        e = Assert.Throws<ArgumentException>(() => cache.Append(s, 0, new float[H * D], new float[2 * H * D]));
        Assert.Equal("v", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => cache.Append(s, 0, ReadOnlySpan<float>.Empty, ReadOnlySpan<float>.Empty));
        Assert.Equal("k", e.ParamName);

        using var kb = LlmBuffer.Allocate(ctx, DType.F32, 2 * H * D);
        using var small = LlmBuffer.Allocate(ctx, DType.F32, 2 * H * D - 1);
        using var i8 = LlmBuffer.Allocate(ctx, DType.I8, 2 * H * D);
        using var bf = LlmBuffer.Allocate(ctx, DType.BF16, 2 * H * D);
        kb.Fill(0.5f);
        e = Assert.Throws<ArgumentException>(() => cache.Append(s, 0, kb, small, 2));
        Assert.Equal("v", e.ParamName);
        Assert.Contains($"[numTokens=2, NumKvHeads={H}, HeadDim={D}]", e.Message);
        e = Assert.Throws<ArgumentException>(() => cache.Append(s, 0, i8, kb, 2));
        Assert.Equal("k", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => cache.Append(s, 0, bf, kb, 2)); // bf16 input is CUDA only
        Assert.Equal("k", e.ParamName);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => cache.Append(s, 0, kb, kb, 0));
        Assert.Equal("numTokens", o.ParamName);

        cache.Append(s, 0, kb, kb, 2);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => cache.Read(s, 0, 1, 2, kb, kb));
        Assert.Equal("count", o.ParamName);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => cache.Read(s, 0, 3, 0, kb, kb));
        Assert.Equal("start", o.ParamName);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => cache.Read(s, 0, 1, new float[2 * H * D], new float[2 * H * D]));
        Assert.Equal("count", o.ParamName);
        e = Assert.Throws<ArgumentException>(() => cache.Read(s, 0, 0, 2, i8, kb));
        Assert.Equal("k", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => cache.Read(s, 0, 0, 2, kb, small));
        Assert.Equal("v", e.ParamName);
        Assert.Equal(2, cache.GetLength(s, 0));
    }

    [Fact]
    public void Options_are_validated_naming_the_member()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        var o = Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.Create(ctx, Options() with { HeadDim = 100 }));
        Assert.Equal("options.HeadDim", o.ParamName);
        Assert.Contains("100", o.Message);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.Create(ctx, Options() with { BlockSize = 12 }));
        Assert.Equal("options.BlockSize", o.ParamName);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.Create(ctx, Options() with { NumLayers = 0 }));
        Assert.Equal("options.NumLayers", o.ParamName);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.Create(ctx, Options() with { KFormat = (KvFormat)9 }));
        Assert.Equal("options.KFormat", o.ParamName);
        var e = Assert.Throws<ArgumentException>(() => KvCache.Create(ctx, Options() with { CapacityBytes = 1 << 20 }));
        Assert.Equal("options.CapacityTokens", e.ParamName);
        Assert.Contains("exactly one", e.Message);
        e = Assert.Throws<ArgumentException>(() => KvCache.Create(ctx, Options(0)));
        Assert.Contains("exactly one", e.Message);
        Assert.Throws<ArgumentNullException>(() => KvCache.Create(ctx, null!));
        o = Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.BytesPerToken(Options() with { NumKvHeads = -1 }));
        Assert.Equal("options.NumKvHeads", o.ParamName);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.TokensForBudget(Options(), -1));
        Assert.Equal("budgetBytes", o.ParamName);
        // A byte budget smaller than one block is only known natively.
        var n = Assert.Throws<LlmNativeException>(() => KvCache.Create(ctx, Options(0) with { CapacityBytes = 100 }));
        Assert.Equal(LlmNativeStatus.InvalidArgument, n.Status);
        Assert.Equal("llmn_kv_cache_create", n.Function);
    }

    [Theory]
    [InlineData(KvFormat.Int8)]
    [InlineData(KvFormat.Fp8E4M3)]
    [InlineData(KvFormat.Int4)]
    [InlineData(KvFormat.Int2)]
    [InlineData(KvFormat.BF16)]
    public void Formats_this_build_cannot_store_on_the_cpu_are_unsupported(KvFormat format)
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        long baseline = LlmNativeRuntime.LiveObjectCount;
        KvCache? cache = null;
        try
        {
            cache = KvCache.Create(ctx, Options() with { KFormat = format, VFormat = format, ValueGroupSize = 32 });
        }
        catch (LlmNativeException e)
        {
            Assert.Equal(LlmNativeStatus.Unsupported, e.Status);
            Assert.Equal("llmn_kv_cache_create", e.Function);
            Assert.Equal(baseline, LlmNativeRuntime.LiveObjectCount);
            return;
        }
        // Once the quantized formats land this test starts exercising them: the cache must then work.
        using (cache)
        {
            Assert.NotEqual(KvFormat.BF16, format);
            Assert.Equal(format, cache.Options.KFormat);
            long s = cache.AddSequence();
            cache.Append(s, 0, new float[H * D], new float[H * D]);
            Assert.Equal(1, cache.GetLength(s, 0));
        }
    }

    [Fact]
    public void Planner_agrees_with_what_create_allocates()
    {
        KvCacheOptions o = Options(0);
        long perToken = KvCache.BytesPerToken(o);
        Assert.Equal(2L * H * D * 2, perToken); // f16 K and V, no padding
        long budget = 10L << 20;
        long tokens = KvCache.TokensForBudget(o, budget);
        Assert.Equal(budget / (perToken * Layers * Block) * Block, tokens);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, o with { CapacityBytes = budget });
        Assert.Equal(tokens, cache.Options.CapacityTokens);
        Assert.True(cache.Stats.PoolBytes <= budget);
        Assert.Equal(0, KvCache.TokensForBudget(o, 0));
    }

    [Fact]
    public void Cache_outlives_its_context_and_throws_ObjectDisposedException_after_dispose()
    {
        long baseline = TestSetup.SettledLiveObjectCount();
        var r = TestSetup.Random(out int seed);
        var ctx = LlmContext.Create(Backend.Cpu);
        var cache = KvCache.Create(ctx, Options());
        ctx.Dispose();
        long s = cache.AddSequence();
        float[] k = Rows(r, 3), v = Rows(r, 3);
        cache.Append(s, 0, k, v);
        var (kr, _) = ReadAll(cache, s, 0);
        Assert.True(Stored(k).SequenceEqual(kr), $"seed {seed}");
        float[] q = Rows(r, 1), output = new float[q.Length];
        cache.DecodeAttention(new[] { s }, q, output, new AttentionOptions { Layer = 0, NumQHeads = H });
        Assert.True(output.All(float.IsFinite));

        cache.Dispose();
        Assert.True(cache.IsDisposed);
        var e = Assert.Throws<ObjectDisposedException>(() => cache.AddSequence());
        Assert.Equal("KvCache", e.ObjectName);
        Assert.Throws<ObjectDisposedException>(() => cache.Stats);
        Assert.Throws<ObjectDisposedException>(() => cache.GetLength(s, 0));
        Assert.Throws<ObjectDisposedException>(() => cache.Append(s, 0, k, v));
        Assert.Throws<ObjectDisposedException>(() => cache.DecodeAttention(new[] { s }, q, output, new AttentionOptions { NumQHeads = H }));
        cache.Dispose();
        Assert.Equal(baseline, TestSetup.SettledLiveObjectCount());
        Assert.Throws<ObjectDisposedException>(() => KvCache.Create(ctx, Options()));
    }

    [Fact]
    public void Kv_format_enum_mirrors_the_c_enum()
    {
        var c = Enum.GetValues<Interop.NativeMethods.llmn_kv_format>();
        Assert.Equal(c.Length, Enum.GetValues<KvFormat>().Length);
        Assert.Equal((int)Interop.NativeMethods.llmn_kv_format.LLMN_KV_F16, (int)KvFormat.F16);
        Assert.Equal((int)Interop.NativeMethods.llmn_kv_format.LLMN_KV_BF16, (int)KvFormat.BF16);
        Assert.Equal((int)Interop.NativeMethods.llmn_kv_format.LLMN_KV_INT8, (int)KvFormat.Int8);
        Assert.Equal((int)Interop.NativeMethods.llmn_kv_format.LLMN_KV_FP8_E4M3, (int)KvFormat.Fp8E4M3);
        Assert.Equal((int)Interop.NativeMethods.llmn_kv_format.LLMN_KV_INT4, (int)KvFormat.Int4);
        Assert.Equal((int)Interop.NativeMethods.llmn_kv_format.LLMN_KV_INT2, (int)KvFormat.Int2);
    }
}
