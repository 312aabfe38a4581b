using System;
using System.Linq;
using Xunit;

namespace LlmNative.Tests;

/// <summary>
/// KIVI Int4/Int2 KV cache formats through the C# API (CPU): creation and option validation, append (bulk and one token
/// at a time) and read-back, planner sizes, decode attention against a float64 reference over the read-back cache,
/// and bad input leaving the cache unchanged.
/// </summary>
/// <remarks>
/// Read-back bound (per element, rows of full blocks): the input's f16 rounding h, quantized with the group's min m
/// (exact) and a scale s, the smallest f16 >= (max - min) / qmax, so |x' - h| &lt;= s / 2 + f32 rounding of
/// code * s + m; the test uses (max - min) / qmax * (1 + 2^-10) / 2 + 2^-22 (|x'| + qmax s). Rows of the partial
/// newest block are stored f16: exactly h. Attention bound: native/tests/test_kv_kivi.cpp
/// (FusedMatchesFloat64Reference), with the split count at its maximum (256) to cover the automatic choice.
/// </remarks>
public class KvKiviTests
{
    private const int H = 2, D = 64, Block = 16, Group = 32;
    private const double U = 1.0 / (1 << 24), EpsExp = 1.0 / (1 << 21), MaxSplits = 256;

    private static KvCacheOptions Options(KvFormat k, KvFormat v, long capacityTokens = 1024) => new()
    {
        NumLayers = 2, NumKvHeads = H, HeadDim = D, BlockSize = Block, KFormat = k, VFormat = v,
        ValueGroupSize = Group, MaxBatch = 4, CapacityTokens = capacityTokens,
    };

    private static float[] Gaussian(Random r, int n, double sigma = 1)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++)
            a[i] = (float)(sigma * Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble()));
        return a;
    }

    private static int QMax(KvFormat f) => f == KvFormat.Int4 ? 15 : 3;

    /// <summary>Checks one side's read-back against the input (layout [tokens][H][D]).</summary>
    private static void CheckSide(float[] x, float[] got, int len, KvFormat f, bool value, int seed)
    {
        float[] h = x.Select(v => (float)(Half)v).ToArray();
        int full = len / Block * Block;
        for (int t = 0; t < len; t++)
            for (int hd = 0; hd < H; hd++)
                for (int d = 0; d < D; d++)
                {
                    int i = (t * H + hd) * D + d;
                    if (f == KvFormat.F16 || t >= full)
                    {
                        Assert.True(got[i] == h[i], $"seed {seed}: f16 row {t} head {hd} ch {d}: {got[i]} vs {h[i]}");
                        continue;
                    }
                    double lo = double.MaxValue, hi = double.MinValue;
                    if (!value)
                        for (int u = t / Block * Block; u < t / Block * Block + Block; u++)
                        {
                            lo = Math.Min(lo, h[(u * H + hd) * D + d]);
                            hi = Math.Max(hi, h[(u * H + hd) * D + d]);
                        }
                    else
                        for (int c = d / Group * Group; c < d / Group * Group + Group; c++)
                        {
                            lo = Math.Min(lo, h[(t * H + hd) * D + c]);
                            hi = Math.Max(hi, h[(t * H + hd) * D + c]);
                        }
                    double s = (hi - lo) / QMax(f) * (1 + 1.0 / 1024);
                    double bound = s / 2 + 4 * U * (Math.Abs(got[i]) + QMax(f) * s);
                    Assert.True(Math.Abs(got[i] - h[i]) <= bound,
                        $"seed {seed}: {f} {(value ? "V" : "K")} row {t} head {hd} ch {d}: {got[i]} vs {h[i]} (bound {bound})");
                }
    }

    [Theory]
    [InlineData(KvFormat.Int4, KvFormat.Int4)]
    [InlineData(KvFormat.Int2, KvFormat.Int2)]
    [InlineData(KvFormat.Int4, KvFormat.F16)]
    [InlineData(KvFormat.F16, KvFormat.Int2)]
    public void Append_read_back_bulk_equals_one_at_a_time(KvFormat kf, KvFormat vf)
    {
        var r = TestSetup.Random(out int seed);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, Options(kf, vf));
        Assert.Equal(kf, cache.Options.KFormat);
        Assert.Equal(Group, cache.Options.ValueGroupSize);
        long a = cache.AddSequence(), b = cache.AddSequence();
        const int n = 2 * Block + 5; // two quantized blocks and a partial (f16 residual) block
        float[] k = Gaussian(r, n * H * D), v = Gaussian(r, n * H * D);
        cache.Append(a, 0, k, v);
        for (int t = 0; t < n; t++)
            cache.Append(b, 0, k.AsSpan(t * H * D, H * D), v.AsSpan(t * H * D, H * D));
        float[] ka = new float[n * H * D], va = new float[n * H * D], kb = new float[n * H * D], vb = new float[n * H * D];
        cache.Read(a, 0, 0, ka, va);
        cache.Read(b, 0, 0, kb, vb);
        Assert.True(ka.SequenceEqual(kb) && va.SequenceEqual(vb), $"seed {seed}: bulk and one-at-a-time appends differ");
        CheckSide(k, ka, n, kf, false, seed);
        CheckSide(v, va, n, vf, true, seed);
    }

    [Fact]
    public void Planner_sizes_for_llama3_8b()
    {
        var o = new KvCacheOptions { NumLayers = 32, NumKvHeads = 8, HeadDim = 128, BlockSize = 16, ValueGroupSize = 32, MaxBatch = 4 };
        Assert.Equal(4096, KvCache.BytesPerToken(o));
        Assert.Equal(1408, KvCache.BytesPerToken(o with { KFormat = KvFormat.Int4, VFormat = KvFormat.Int4 }));
        Assert.Equal(896, KvCache.BytesPerToken(o with { KFormat = KvFormat.Int2, VFormat = KvFormat.Int2 }));
        // The residual region (4 slots x 32 layers x 8 heads x 2 sides x 16 x 128 x 2 bytes = 8 MiB) comes off the budget.
        long residual = 4L * 32 * 8 * 2 * 16 * 128 * 2;
        long budget = 1L << 30;
        Assert.Equal((budget - residual) / (1408L * 16 * 32) * 16,
            KvCache.TokensForBudget(o with { KFormat = KvFormat.Int4, VFormat = KvFormat.Int4 }, budget));
    }

    [Fact]
    public void Attention_matches_float64_reference_over_the_read_back_cache()
    {
        var r = TestSetup.Random(out int seed);
        using var ctx = LlmContext.Create(Backend.Cpu);
        int[] lengths = { 5, 40, 300 };
        const int G = 4, Hq = H * G;
        foreach (var (kf, vf) in new[] { (KvFormat.Int4, KvFormat.Int4), (KvFormat.Int2, KvFormat.Int2), (KvFormat.Int4, KvFormat.F16) })
        {
            using var cache = KvCache.Create(ctx, Options(kf, vf));
            long[] ids = new long[lengths.Length];
            for (int b = 0; b < lengths.Length; b++)
            {
                ids[b] = cache.AddSequence();
                cache.Append(ids[b], 1, Gaussian(r, lengths[b] * H * D), Gaussian(r, lengths[b] * H * D));
            }
            float[] q = Gaussian(r, lengths.Length * Hq * D);
            float[] o = Enumerable.Repeat(float.NaN, q.Length).ToArray();
            cache.DecodeAttention(ids, q, o, new AttentionOptions { Layer = 1, NumQHeads = Hq });
            float scale = 1.0f / MathF.Sqrt(D);
            for (int b = 0; b < lengths.Length; b++)
            {
                int len = lengths[b];
                float[] k = new float[len * H * D], v = new float[len * H * D];
                cache.Read(ids[b], 1, 0, k, v);
                for (int hq = 0; hq < Hq; hq++)
                {
                    int h = hq / G;
                    double[] s = new double[len];
                    double m = double.NegativeInfinity, sMax = 0, vMax = 0, aStar = 0;
                    for (int d = 0; d < D; d++)
                    {
                        double kAbs = 0;
                        for (int t = 0; t < len; t++) kAbs = Math.Max(kAbs, Math.Abs(k[(t * H + h) * D + d]));
                        aStar += 3 * Math.Abs((double)(q[(b * Hq + hq) * D + d] * scale)) * kAbs;
                    }
                    for (int t = 0; t < len; t++)
                    {
                        double dot = 0;
                        for (int d = 0; d < D; d++) dot += (double)(q[(b * Hq + hq) * D + d] * scale) * k[(t * H + h) * D + d];
                        s[t] = dot;
                        m = Math.Max(m, dot);
                        sMax = Math.Max(sMax, Math.Abs(dot));
                        for (int d = 0; d < D; d++) vMax = Math.Max(vMax, Math.Abs(v[(t * H + h) * D + d]));
                    }
                    double l = 0;
                    double[] refOut = new double[D];
                    for (int t = 0; t < len; t++)
                    {
                        double w = Math.Exp(s[t] - m);
                        l += w;
                        for (int d = 0; d < D; d++) refOut[d] += w * v[(t * H + h) * D + d];
                    }
                    double n = len, tiles = Math.Ceiling(n / 8) + MaxSplits, v3 = 3 * vMax;
                    double eta = (2 * D + 8) * U * aStar + EpsExp + 2 * U * sMax + 2 * U;
                    double merge = 2 * (2 * U * (sMax + Math.Log(n) + 2) + EpsExp + (MaxSplits + 2) * U) * v3 + MaxSplits * U * v3;
                    double bound = 1.25 * (2 * eta * v3 + 2 * (n + tiles + 4) * U * v3 + merge) + 8 * U * v3;
                    for (int d = 0; d < D; d++)
                    {
                        double got = o[(b * Hq + hq) * D + d], err = Math.Abs(got - refOut[d] / l);
                        Assert.True(err <= bound, $"seed {seed}: {kf}/{vf} seq {b} head {hq} ch {d}: error {err} > bound {bound}");
                    }
                }
            }
        }
    }

    [Fact]
    public void Bad_options_and_bad_values_are_rejected()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
            KvCache.Create(ctx, Options(KvFormat.Int4, KvFormat.Int4) with { ValueGroupSize = 0 }));
        Assert.Equal("options.ValueGroupSize", e.ParamName);
        e = Assert.Throws<ArgumentOutOfRangeException>(() =>
            KvCache.Create(ctx, Options(KvFormat.F16, KvFormat.Int2) with { HeadDim = 80 }));
        Assert.Equal("options.ValueGroupSize", e.ParamName);
        Assert.Contains("HeadDim (80)", e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => KvCache.BytesPerToken(Options(KvFormat.Int4, KvFormat.Int2) with { ValueGroupSize = 0 }));
        Assert.Equal("options.ValueGroupSize", e.ParamName);
        // Int4 keys with f16 values need no group, and head_dim 80 is fine for keys.
        using (KvCache.Create(ctx, Options(KvFormat.Int4, KvFormat.F16) with { HeadDim = 80, ValueGroupSize = 0 })) { }

        var r = TestSetup.Random(out int seed);
        using var cache = KvCache.Create(ctx, Options(KvFormat.Int4, KvFormat.Int2));
        long id = cache.AddSequence();
        cache.Append(id, 0, Gaussian(r, 20 * H * D), Gaussian(r, 20 * H * D));
        float[] k0 = new float[20 * H * D], v0 = new float[20 * H * D];
        cache.Read(id, 0, 0, k0, v0);
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity, 1e6f })
        {
            float[] k = Gaussian(r, 12 * H * D), v = Gaussian(r, 12 * H * D);
            v[7 * H * D + 3] = bad; // the append would have filled and quantized the residual block
            var n = Assert.Throws<LlmNativeException>(() => cache.Append(id, 0, k, v));
            Assert.Equal(LlmNativeStatus.InvalidArgument, n.Status);
            Assert.Contains("v[token 7", n.Message);
            Assert.Equal(20, cache.GetLength(id, 0));
            float[] k1 = new float[20 * H * D], v1 = new float[20 * H * D];
            cache.Read(id, 0, 0, k1, v1);
            Assert.True(k0.SequenceEqual(k1) && v0.SequenceEqual(v1), $"seed {seed}: cache changed after rejected {bad}");
        }
        // Residual slots: MaxBatch (4) live sequences.
        for (int i = 0; i < 3; i++) cache.AddSequence();
        var full = Assert.Throws<KvCacheFullException>(() => cache.AddSequence());
        Assert.Contains("max_batch = 4", full.Message);
        Assert.Throws<KvCacheFullException>(() => cache.Fork(id));
    }
}
