using System;
using System.Linq;
using Xunit;
using static LlmNative.Tests.Int4TestData;

namespace LlmNative.Tests;

/// <summary>Int4Weight: quantizer accuracy, importers against hand-packed tensors, validation, lifetime.</summary>
public class Int4WeightTests
{
    [Theory]
    [InlineData(200, 72, 32, true)]
    [InlineData(200, 72, 64, false)]
    [InlineData(256, 257, 128, true)]
    [InlineData(256, 257, 0, false)]
    [InlineData(37, 9, 0, true)]
    public void Quantizer_error_is_at_most_half_a_step(int k, int n, int groupSize, bool symmetric)
    {
        var r = TestSetup.Random(out int seed);
        float[] w = new float[k * n];
        for (int i = 0; i < w.Length; i++) w[i] = (float)((r.NextDouble() * 2 - 1) * (r.Next(50) == 0 ? 4 : 0.3));
        for (int row = 0; row < k; row++) w[row * n + n - 1] = 0f; // an all-zero column: scale 0, dequantizes to 0
        using var ctx = LlmContext.Create(Backend.Cpu);
        using Int4Weight q = Int4Weight.Quantize(ctx, w, k, n, groupSize, symmetric);
        Assert.Equal((k, n, groupSize, symmetric, false), (q.K, q.N, q.GroupSize, q.Symmetric, q.HasActOrder));
        Assert.True(q.SizeInBytes >= (long)k * n / 2, $"SizeInBytes {q.SizeInBytes}");

        float[] back = Nan(k * n + 5);
        q.Dequantize(back);
        Assert.True(back.Skip(k * n).All(float.IsNaN), "Dequantize wrote past K x N");
        int gs = groupSize == 0 ? k : groupSize;
        for (int col = 0; col < n; col++)
        {
            for (int g0 = 0; g0 < k; g0 += gs)
            {
                int g1 = Math.Min(k, g0 + gs);
                double lo = double.MaxValue, hi = double.MinValue;
                for (int row = g0; row < g1; row++)
                {
                    lo = Math.Min(lo, w[row * n + col]);
                    hi = Math.Max(hi, w[row * n + col]);
                }
                double wanted = symmetric ? Math.Max(-lo / 8, hi / 7) : (Math.Max(hi, 0) - Math.Min(lo, 0)) / 15;
                double step = RoundUpToHalf(wanted);
                for (int row = g0; row < g1; row++)
                {
                    double e = Math.Abs(back[row * n + col] - (double)w[row * n + col]);
                    double bound = step / 2 * (1 + 1e-6) + Math.Abs(w[row * n + col]) * 1e-7;
                    Assert.True(e <= bound,
                        $"seed {seed}: w[{row}][{col}] = {w[row * n + col]} dequantizes to {back[row * n + col]}, error {e} > half step {step / 2}");
                }
            }
        }
        for (int row = 0; row < k; row++) Assert.Equal(0f, back[row * n + n - 1]);
    }

    [Fact]
    public void Quantizer_takes_f16_bits_and_Half_and_agrees_with_f32_input()
    {
        var r = TestSetup.Random(out int seed);
        const int K = 64, N = 24;
        Half[] h = Enumerable.Range(0, K * N).Select(_ => (Half)(r.NextDouble() - 0.5)).ToArray();
        float[] f = h.Select(v => (float)v).ToArray();
        ushort[] bits = h.Select(Bits).ToArray();
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var a = Int4Weight.Quantize(ctx, f, K, N, 32, symmetric: false);
        using var b = Int4Weight.Quantize(ctx, bits, K, N, 32, symmetric: false);
        using var c = Int4Weight.Quantize(ctx, h, K, N, 32, symmetric: false);
        float[] da = new float[K * N], db = new float[K * N], dc = new float[K * N];
        a.Dequantize(da);
        b.Dequantize(db);
        c.Dequantize(dc);
        Assert.True(da.SequenceEqual(db) && da.SequenceEqual(dc), $"seed {seed}");
        var dh = new Half[K * N];
        a.Dequantize(dh);
        for (int i = 0; i < dh.Length; i++) Assert.Equal((Half)da[i], dh[i]);
    }

    [Theory]
    [InlineData(GptqFormat.V1, false, false)]
    [InlineData(GptqFormat.V2, false, false)]
    [InlineData(GptqFormat.V1, true, false)]
    [InlineData(GptqFormat.V2, false, true)]
    public void Gptq_import_dequantizes_to_exactly_the_encoded_matrix(GptqFormat format, bool symmetric, bool f32Scales)
    {
        var r = TestSetup.Random(out int seed);
        const int K = 96, N = 40, GS = 32, G = 3;
        byte[] q = RandomNibbles(r, K * N);
        // Real zero points: v1 can store 1..15 only (stored = zero − 1, and 15 would mean 16).
        byte[] zeros = symmetric ? Enumerable.Repeat((byte)8, G * N).ToArray()
            : RandomNibbles(r, G * N, format == GptqFormat.V1 ? 1 : 0, format == GptqFormat.V1 ? 16 : 16);
        ushort[] scales = Enumerable.Range(0, G * N).Select(_ => RandomScale(r)).ToArray();
        byte[] stored = zeros.Select(z => (byte)(symmetric ? 7 : format == GptqFormat.V1 ? z - 1 : z)).ToArray();
        int[] qweight = PackGptqQWeight(q, K, N), qzeros = PackGptqColumns(stored, G, N);

        GptqTensors t = f32Scales
            ? new GptqTensors(K, N, GS, symmetric, format, qweight, qzeros, scales.Select(F16).ToArray())
            : new GptqTensors(K, N, GS, symmetric, format, qweight, qzeros, scales);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using Int4Weight w = Int4Weight.ImportGptq(ctx, t);
        Assert.Equal((K, N, GS, symmetric, false), (w.K, w.N, w.GroupSize, w.Symmetric, w.HasActOrder));
        float[] got = new float[K * N];
        w.Dequantize(got);
        float[] want = Dequant(q, zeros, scales, K, N, row => row / GS);
        Assert.True(want.SequenceEqual(got), $"seed {seed}: first difference at {FirstDifference(want, got)}");
    }

    [Fact]
    public void Gptq_v1_and_v2_of_the_same_zero_points_import_identically()
    {
        var r = TestSetup.Random(out int seed);
        const int K = 64, N = 16, G = 1;
        byte[] q = RandomNibbles(r, K * N), zeros = RandomNibbles(r, G * N, 1, 16);
        ushort[] scales = Enumerable.Range(0, G * N).Select(_ => RandomScale(r)).ToArray();
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var v1 = Int4Weight.ImportGptq(ctx, new GptqTensors(K, N, -1, false, GptqFormat.V1, PackGptqQWeight(q, K, N),
            PackGptqColumns(zeros.Select(z => (byte)(z - 1)).ToArray(), G, N), scales));
        using var v2 = Int4Weight.ImportGptq(ctx, new GptqTensors(K, N, 0, false, GptqFormat.V2, PackGptqQWeight(q, K, N),
            PackGptqColumns(zeros, G, N), scales));
        Assert.Equal(0, v1.GroupSize); // GPTQ's -1 means per-column
        float[] a = new float[K * N], b = new float[K * N];
        v1.Dequantize(a);
        v2.Dequantize(b);
        Assert.True(a.SequenceEqual(b), $"seed {seed}");
        Assert.True(a.SequenceEqual(Dequant(q, zeros, scales, K, N, _ => 0)), $"seed {seed}");
    }

    [Fact]
    public void Gptq_literal_words_pin_the_nibble_order()
    {
        // qweight word 0x76543210 in column 0: rows 0..7 hold 0..7. v2 zero of column 1 = 3 (nibble 1 of 0x30).
        const int K = 8, N = 8;
        int[] qweight = new int[N];
        qweight[0] = 0x76543210;
        int[] qzeros = { 0x00000030 };
        ushort[] scales = Enumerable.Repeat(Bits((Half)1), N).ToArray();
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var w = Int4Weight.ImportGptq(ctx, new GptqTensors(K, N, 0, false, GptqFormat.V2, qweight, qzeros, scales));
        float[] d = new float[K * N];
        w.Dequantize(d);
        for (int row = 0; row < K; row++)
        {
            Assert.Equal(row, d[row * N + 0]);      // zero 0
            Assert.Equal(-3f, d[row * N + 1]);      // q 0, zero 3
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Awq_import_dequantizes_to_exactly_the_encoded_matrix(bool f32Scales)
    {
        var r = TestSetup.Random(out int seed);
        const int K = 130, N = 48, GS = 64, G = 3;
        byte[] q = RandomNibbles(r, K * N), zeros = RandomNibbles(r, G * N);
        ushort[] scales = Enumerable.Range(0, G * N).Select(_ => RandomScale(r)).ToArray();
        int[] qweight = PackAwq(q, K, N), qzeros = PackAwq(zeros, G, N);
        AwqTensors t = f32Scales
            ? new AwqTensors(K, N, GS, qweight, qzeros, scales.Select(F16).ToArray())
            : new AwqTensors(K, N, GS, qweight, qzeros, scales);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using Int4Weight w = Int4Weight.ImportAwq(ctx, t);
        Assert.Equal((K, N, GS, false, false), (w.K, w.N, w.GroupSize, w.Symmetric, w.HasActOrder));
        float[] got = new float[K * N];
        w.Dequantize(got);
        float[] want = Dequant(q, zeros, scales, K, N, row => row / GS);
        Assert.True(want.SequenceEqual(got), $"seed {seed}: first difference at {FirstDifference(want, got)}");
    }

    [Fact]
    public void Awq_literal_word_pins_the_interleaved_order()
    {
        // nibble i of 0x76543210 is i, and goes to column {0,2,4,6,1,3,5,7}[i].
        const int K = 1, N = 8;
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var w = Int4Weight.ImportAwq(ctx, new AwqTensors(K, N, 0, new[] { 0x76543210 }, new[] { 0 },
            Enumerable.Repeat(Bits((Half)1), N).ToArray()));
        float[] d = new float[N];
        w.Dequantize(d);
        Assert.Equal(new float[] { 0, 4, 1, 5, 2, 6, 3, 7 }, d);
    }

    [Fact]
    public void Gptq_act_order_groups_rows_by_g_idx()
    {
        var r = TestSetup.Random(out int seed);
        const int K = 128, N = 16, GS = 32, G = 4;
        byte[] q = RandomNibbles(r, K * N), zeros = RandomNibbles(r, G * N);
        ushort[] scales = Enumerable.Range(0, G * N).Select(_ => RandomScale(r)).ToArray();
        int[] gIdx = Enumerable.Range(0, K).OrderBy(_ => r.Next()).Select(p => p / GS).ToArray();
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var w = Int4Weight.ImportGptq(ctx, new GptqTensors(K, N, GS, false, GptqFormat.V2, PackGptqQWeight(q, K, N),
            PackGptqColumns(zeros, G, N), scales, gIdx));
        Assert.True(w.HasActOrder);
        float[] d = new float[K * N];
        w.Dequantize(d);
        Assert.True(Dequant(q, zeros, scales, K, N, row => gIdx[row]).SequenceEqual(d), $"seed {seed}");

        // A g_idx that is just k / group_size is no act-order at all.
        int[] trivial = Enumerable.Range(0, K).Select(k => k / GS).ToArray();
        using var plain = Int4Weight.ImportGptq(ctx, new GptqTensors(K, N, GS, false, GptqFormat.V2, PackGptqQWeight(q, K, N),
            PackGptqColumns(zeros, G, N), scales, trivial));
        Assert.False(plain.HasActOrder);
    }

    // ---- bad input ----------------------------------------------------------------------------------------------

    [Fact]
    public void Quantize_rejects_bad_shapes_values_and_group_sizes_naming_the_parameter()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        var e = Assert.Throws<ArgumentException>(() => Int4Weight.Quantize(ctx, new float[10 * 8 - 1], 10, 8, 0, true));
        Assert.Equal("weights", e.ParamName);
        Assert.Contains("79", e.Message);
        Assert.Contains("80", e.Message);

        float[] w = new float[64 * 8];
        w[3 * 8 + 5] = float.NaN;
        e = Assert.Throws<ArgumentException>(() => Int4Weight.Quantize(ctx, w, 64, 8, 32, true));
        Assert.Equal("weights", e.ParamName);
        Assert.Contains("weights[3][5]", e.Message);
        Assert.Contains("NaN", e.Message);
        w[3 * 8 + 5] = float.NegativeInfinity;
        e = Assert.Throws<ArgumentException>(() => Int4Weight.Quantize(ctx, w, 64, 8, 32, true));
        Assert.Contains("weights[3][5]", e.Message);
        Assert.Contains("finite", e.Message);

        e = Assert.Throws<ArgumentException>(() => Int4Weight.Quantize(ctx, new float[64 * 8], 64, 8, 48, true));
        Assert.Equal("groupSize", e.ParamName);
        Assert.Contains("48", e.Message);
        var o = Assert.Throws<ArgumentOutOfRangeException>(() => Int4Weight.Quantize(ctx, new float[8], 0, 8, 0, true));
        Assert.Equal("k", o.ParamName);
        Assert.Throws<ArgumentNullException>(() => Int4Weight.Quantize(null!, new float[8], 1, 8, 0, true));
    }

    [Fact]
    public void Quantize_failing_natively_goes_through_the_gate_and_creates_nothing()
    {
        long baseline = TestSetup.SettledLiveObjectCount();
        using (var ctx = LlmContext.Create(Backend.Cpu))
        {
            // A group spanning [-1e6, 1e6] needs a scale above the fp16 maximum: only the native side knows.
            float[] w = new float[32];
            w[0] = 1e6f;
            w[1] = -1e6f;
            var e = Assert.Throws<LlmNativeException>(() => Int4Weight.Quantize(ctx, w, 32, 1, 32, false));
            Assert.Equal(LlmNativeStatus.InvalidArgument, e.Status);
            Assert.Equal("llmn_int4_weight_quantize", e.Function);
            Assert.Contains("fp16", e.NativeMessage);
            Assert.Equal(baseline + 1, LlmNativeRuntime.LiveObjectCount);
        }
        Assert.Equal(baseline, TestSetup.SettledLiveObjectCount());
    }

    [Fact]
    public void Gptq_tensors_reject_mismatched_shapes_bad_scales_and_g_idx_naming_the_parameter()
    {
        const int K = 64, N = 16, GS = 32, G = 2;
        int[] qweight = new int[K / 8 * N], qzeros = new int[G * N / 8], gIdx = new int[K];
        ushort[] scales = Enumerable.Repeat(Bits((Half)0.01), G * N).ToArray();

        // qweight sized for another K
        var e = Assert.Throws<ArgumentException>(() =>
            new GptqTensors(K + 8, N, GS, false, GptqFormat.V2, qweight, new int[3 * N / 8], new ushort[3 * N]));
        Assert.Equal("qWeight", e.ParamName);
        Assert.Contains($"{qweight.Length}", e.Message);
        Assert.Contains($"{(K + 8) / 8 * N}", e.Message);
        e = Assert.Throws<ArgumentException>(() => new GptqTensors(K + 1, N, GS, false, GptqFormat.V2, qweight, qzeros, scales));
        Assert.Equal("k", e.ParamName);

        e = Assert.Throws<ArgumentException>(() => new GptqTensors(K, N, GS, false, GptqFormat.V2, qweight, qzeros, scales[..^1]));
        Assert.Equal("scales", e.ParamName);
        Assert.Contains($"{G * N - 1}", e.Message);
        Assert.Contains($"{G * N}", e.Message);
        e = Assert.Throws<ArgumentException>(() => new GptqTensors(K, N, GS, false, GptqFormat.V2, qweight, qzeros[..^1], scales));
        Assert.Equal("qZeros", e.ParamName);

        ushort[] nanScales = (ushort[])scales.Clone();
        nanScales[N + 3] = Bits(Half.NaN);
        e = Assert.Throws<ArgumentException>(() => new GptqTensors(K, N, GS, false, GptqFormat.V2, qweight, qzeros, nanScales));
        Assert.Equal("scales", e.ParamName);
        Assert.Contains("scales[1][3]", e.Message);
        Assert.Contains("NaN", e.Message);
        float[] infScales = new float[G * N];
        infScales[5] = float.PositiveInfinity;
        e = Assert.Throws<ArgumentException>(() => new GptqTensors(K, N, GS, false, GptqFormat.V2, qweight, qzeros, infScales));
        Assert.Equal("scales", e.ParamName);
        Assert.Contains("scales[0][5]", e.Message);
        Assert.Contains("finite", e.Message);

        gIdx[17] = G;
        var o = Assert.Throws<ArgumentOutOfRangeException>(() =>
            new GptqTensors(K, N, GS, false, GptqFormat.V2, qweight, qzeros, scales, gIdx));
        Assert.Equal("gIdx", o.ParamName);
        Assert.Contains("gIdx[17] = 2", o.Message);
        gIdx[17] = -1;
        o = Assert.Throws<ArgumentOutOfRangeException>(() =>
            new GptqTensors(K, N, GS, false, GptqFormat.V2, qweight, qzeros, scales, gIdx));
        Assert.Contains("-1", o.Message);
        e = Assert.Throws<ArgumentException>(() => new GptqTensors(K, N, GS, false, GptqFormat.V2, qweight, qzeros, scales, new int[K - 1]));
        Assert.Equal("gIdx", e.ParamName);

        e = Assert.Throws<ArgumentException>(() => new GptqTensors(K, N, 16, false, GptqFormat.V2, qweight, qzeros, scales));
        Assert.Equal("groupSize", e.ParamName);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => new GptqTensors(K, N, GS, false, (GptqFormat)7, qweight, qzeros, scales));
        Assert.Equal("format", o.ParamName);
        // Symmetric checkpoints may leave qzeros out; asymmetric ones may not.
        _ = new GptqTensors(K, N, GS, true, GptqFormat.V1, qweight, ReadOnlyMemory<int>.Empty, scales);
        e = Assert.Throws<ArgumentException>(() => new GptqTensors(K, N, GS, false, GptqFormat.V1, qweight, ReadOnlyMemory<int>.Empty, scales));
        Assert.Equal("qZeros", e.ParamName);
    }

    [Fact]
    public void Awq_tensors_reject_mismatched_shapes_naming_the_parameter()
    {
        const int K = 64, N = 16;
        var e = Assert.Throws<ArgumentException>(() => new AwqTensors(K, 12, 32, new int[K * 2], new int[4], new ushort[24]));
        Assert.Equal("n", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => new AwqTensors(K, N, 32, new int[K * 2 - 1], new int[4], new ushort[32]));
        Assert.Equal("qWeight", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => new AwqTensors(K, N, 32, new int[K * 2], new int[4], new ushort[31]));
        Assert.Equal("scales", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => new AwqTensors(K, N, 32, new int[K * 2], new int[3], new ushort[32]));
        Assert.Equal("qZeros", e.ParamName);
    }

    [Fact]
    public void Gptq_v1_zero_nibble_15_is_refused_natively_with_the_reason()
    {
        const int K = 8, N = 8;
        using var ctx = LlmContext.Create(Backend.Cpu);
        var t = new GptqTensors(K, N, 0, false, GptqFormat.V1, new int[N], new[] { 0xF << 8 }, new ushort[N]);
        var e = Assert.Throws<LlmNativeException>(() => Int4Weight.ImportGptq(ctx, t));
        Assert.Equal(LlmNativeStatus.InvalidArgument, e.Status);
        Assert.Equal("llmn_int4_weight_import_gptq", e.Function);
        Assert.Contains("qzeros", e.NativeMessage);
        Assert.Contains("16", e.NativeMessage);
        // The same word is a legal zero point 15 in v2.
        using var ok = Int4Weight.ImportGptq(ctx, new GptqTensors(K, N, 0, false, GptqFormat.V2, new int[N], new[] { 0xF << 8 }, new ushort[N]));
        Assert.False(ok.Symmetric);
    }

    [Fact]
    public void Dequantize_destination_too_short_names_it()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var w = Int4Weight.Quantize(ctx, new float[32 * 8], 32, 8, 32, true);
        var e = Assert.Throws<ArgumentException>(() => w.Dequantize(new float[255]));
        Assert.Equal("destination", e.ParamName);
        Assert.Contains("256", e.Message);
    }

    // ---- lifetime ---------------------------------------------------------------------------------------------

    [Fact]
    public void Weight_outlives_its_context_and_throws_ObjectDisposedException_after_dispose()
    {
        long baseline = TestSetup.SettledLiveObjectCount();
        var r = TestSetup.Random(out int seed);
        var ctx = LlmContext.Create(Backend.Cpu);
        float[] dense = Activations(r, 64 * 16);
        var w = Int4Weight.Quantize(ctx, dense, 64, 16, 32, false);
        var x = LlmBuffer.Allocate(ctx, DType.F32, 64);
        var y = LlmBuffer.Allocate(ctx, DType.F32, 16);
        ctx.Dispose();

        // Everything still works through the weight's own reference on the native context.
        float[] deq = new float[64 * 16];
        w.Dequantize(deq);
        float[] xs = Activations(r, 64), ys = Nan(16);
        Gemm.Int4(xs, w, ys, 1);
        x.Upload<float>(xs);
        Gemm.Int4(x, w, y, 1);
        Assert.True(ys.SequenceEqual(y.ToArray<float>()), $"seed {seed}");
        var (reference, bound) = Reference(xs, deq, null, 1, 64, 16, NaturalGroups(64, 32), false);
        AssertWithin(ys, reference, bound, $"seed {seed}");

        w.Dispose();
        Assert.True(w.IsDisposed);
        var e = Assert.Throws<ObjectDisposedException>(() => w.Dequantize(deq));
        Assert.Equal("Int4Weight", e.ObjectName);
        e = Assert.Throws<ObjectDisposedException>(() => Gemm.Int4(x, w, y, 1));
        Assert.Contains("'w'", e.Message);
        Assert.Throws<ObjectDisposedException>(() => Gemm.Int4(xs, w, ys, 1));
        Assert.Contains("disposed", w.ToString());
        w.Dispose(); // idempotent
        x.Dispose();
        y.Dispose();
        Assert.Equal(baseline, TestSetup.SettledLiveObjectCount());
        Assert.Throws<ObjectDisposedException>(() => Int4Weight.Quantize(ctx, dense, 64, 16, 32, false));
    }

    [Fact]
    public void Gptq_format_enum_mirrors_the_c_enum()
    {
        Assert.Equal((int)Interop.NativeMethods.llmn_gptq_format.LLMN_GPTQ_V1, (int)GptqFormat.V1);
        Assert.Equal((int)Interop.NativeMethods.llmn_gptq_format.LLMN_GPTQ_V2, (int)GptqFormat.V2);
        Assert.Equal(Enum.GetValues<Interop.NativeMethods.llmn_gptq_format>().Length, Enum.GetValues<GptqFormat>().Length);
    }

    private static double RoundUpToHalf(double v)
    {
        if (v <= 0) return 0;
        Half h = (Half)v;
        while ((double)h < v) h = BitConverter.UInt16BitsToHalf((ushort)(Bits(h) + 1));
        return (double)h;
    }

    private static string FirstDifference(float[] want, float[] got)
    {
        for (int i = 0; i < want.Length; i++)
            if (want[i] != got[i]) return $"element {i}: want {want[i]}, got {got[i]}";
        return "none";
    }
}
