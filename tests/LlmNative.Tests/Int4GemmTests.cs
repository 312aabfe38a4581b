using System;
using System.Collections.Generic;
using System.Linq;
using Xunit;
using static LlmNative.Tests.Int4TestData;

namespace LlmNative.Tests;

/// <summary>
/// Gemm.Int4 / Gemm.Dense against a float64 reference computed from Int4Weight.Dequantize (what the kernel must
/// multiply with), on fresh random data; outputs poisoned with NaN; bounds in Int4TestData.Reference.
/// </summary>
public class Int4GemmTests
{
    private static readonly int[] Ms = { 1, 3, 16, 17 };

    public static IEnumerable<object[]> Shapes()
    {
        foreach ((int k, int n) in new[] { (200, 72), (256, 257) })
            foreach (int gs in new[] { 32, 64, 128, 0 })
                foreach (bool sym in new[] { true, false })
                    yield return new object[] { k, n, gs, sym };
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Int4_gemm_matches_the_float64_reference(int k, int n, int groupSize, bool symmetric)
    {
        var r = TestSetup.Random(out int seed);
        float[] dense = new float[k * n];
        for (int i = 0; i < dense.Length; i++) dense[i] = (float)((r.NextDouble() * 2 - 1) * 0.1);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using Int4Weight w = Int4Weight.Quantize(ctx, dense, k, n, groupSize, symmetric);
        float[] deq = new float[k * n];
        w.Dequantize(deq);
        int[] groups = NaturalGroups(k, groupSize);

        foreach (int m in Ms)
        {
            bool withBias = m % 2 == 1;
            float[] x = Activations(r, m * k);
            float[]? bias = withBias ? Activations(r, n) : null;
            string what = $"seed {seed}, m {m}, K {k}, N {n}, group {groupSize}, {(symmetric ? "sym" : "asym")}, bias {withBias}";

            // f32: spans, then buffers (same kernel: bitwise the same result).
            var (reference, bound) = Reference(x, deq, bias, m, k, n, groups, f16Out: false);
            float[] y = Nan(m * n + 7);
            Gemm.Int4(x, w, y, m, bias);
            AssertWithin(y, reference, bound, what + ", f32 spans");
            float[] yb = RunBuffers(ctx, w, x, bias, m, DType.F32);
            Assert.True(y.AsSpan(0, m * n).SequenceEqual(yb.AsSpan(0, m * n)), what + ": buffer and span overloads differ");

            // f16 activations, bias and output; the reference sees the f16-rounded inputs.
            float[] xh = RoundToHalf(x);
            float[]? bh = bias is null ? null : RoundToHalf(bias);
            var (refH, boundH) = Reference(xh, deq, bh, m, k, n, groups, f16Out: true);
            Half[] yh = Enumerable.Repeat(Half.NaN, m * n + 7).ToArray();
            Gemm.Int4(ToHalf(x), w, yh, m, bias is null ? default : ToHalf(bias));
            AssertWithin(yh.Select(v => (float)v).ToArray(), refH, boundH, what + ", f16 spans");
            float[] ybh = RunBuffers(ctx, w, x, bias, m, DType.F16);
            Assert.True(yh.Take(m * n).Select(v => (float)v).SequenceEqual(ybh.Take(m * n)), what + ": f16 buffer and span overloads differ");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Int4_gemm_with_act_order_from_a_gptq_import_matches_the_reference(bool symmetric)
    {
        var r = TestSetup.Random(out int seed);
        const int K = 256, N = 72, GS = 64, G = 4;
        byte[] q = RandomNibbles(r, K * N), zeros = symmetric ? Enumerable.Repeat((byte)8, G * N).ToArray() : RandomNibbles(r, G * N);
        ushort[] scales = Enumerable.Range(0, G * N).Select(_ => RandomScale(r)).ToArray();
        int[] gIdx = Enumerable.Range(0, K).OrderBy(_ => r.Next()).Select(p => p / GS).ToArray();
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var w = Int4Weight.ImportGptq(ctx, new GptqTensors(K, N, GS, symmetric, GptqFormat.V2, PackGptqQWeight(q, K, N),
            symmetric ? ReadOnlyMemory<int>.Empty : PackGptqColumns(zeros, G, N), scales, gIdx));
        Assert.True(w.HasActOrder);
        float[] deq = new float[K * N];
        w.Dequantize(deq);
        Assert.True(Dequant(q, zeros, scales, K, N, row => gIdx[row]).SequenceEqual(deq), $"seed {seed}");
        foreach (int m in Ms)
        {
            float[] x = Activations(r, m * K);
            var (reference, bound) = Reference(x, deq, null, m, K, N, gIdx, false);
            float[] y = Nan(m * N + 3);
            Gemm.Int4(x, w, y, m);
            AssertWithin(y, reference, bound, $"seed {seed}, act-order, m {m}");
            Half[] yh = Enumerable.Repeat(Half.NaN, m * N).ToArray();
            Gemm.Int4(ToHalf(x), w, yh, m);
            var (refH, boundH) = Reference(RoundToHalf(x), deq, null, m, K, N, gIdx, true);
            AssertWithin(yh.Select(v => (float)v).ToArray(), refH, boundH, $"seed {seed}, act-order f16, m {m}");
        }
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    public void Dense_gemm_matches_the_float64_reference(DType dtype)
    {
        var r = TestSetup.Random(out int seed);
        const int K = 200, N = 72;
        float[] wf = Activations(r, K * N);
        if (dtype == DType.F16) wf = RoundToHalf(wf);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var wb = LlmBuffer.Allocate(ctx, dtype, K * N);
        Upload(wb, wf);
        foreach (int m in Ms)
        {
            float[] x = Activations(r, m * K), bias = Activations(r, N);
            if (dtype == DType.F16)
            {
                x = RoundToHalf(x);
                bias = RoundToHalf(bias);
            }
            using var xb = LlmBuffer.Allocate(ctx, dtype, m * K);
            using var yb = LlmBuffer.Allocate(ctx, dtype, m * N + 5);
            using var bb = LlmBuffer.Allocate(ctx, dtype, N);
            Upload(xb, x);
            Upload(bb, bias);
            Poison(yb);
            Gemm.Dense(xb, wb, yb, m, K, N, bb);
            // The dense baseline is exact f32 arithmetic: gamma(K + 2) * S (+ f16 output rounding).
            const double U = 1.0 / (1 << 24);
            double gamma = (K + 2) * U / (1 - (K + 2) * U);
            float[] y = Download(yb);
            var (reference, _) = Reference(x, wf, bias, m, K, N, NaturalGroups(K, 0), false);
            double[] bound = new double[m * N];
            for (int row = 0; row < m; row++)
                for (int col = 0; col < N; col++)
                {
                    double s = Math.Abs(bias[col]);
                    for (int i = 0; i < K; i++) s += Math.Abs((double)x[row * K + i] * wf[i * N + col]);
                    double b = gamma * s + 1e-12 * s;
                    if (dtype == DType.F16) b += (Math.Abs(reference[row * N + col]) + b) / 2048 + 1.0 / (1 << 25);
                    bound[row * N + col] = b;
                }
            AssertWithin(y, reference, bound, $"seed {seed}, dense {dtype}, m {m}");
        }
    }

    [Fact]
    public void M_zero_does_nothing()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var w = Int4Weight.Quantize(ctx, new float[64 * 8], 64, 8, 64, true);
        float[] y = Nan(8);
        Gemm.Int4(ReadOnlySpan<float>.Empty, w, y, 0);
        using var xb = LlmBuffer.Allocate(ctx, DType.F32, 1);
        using var yb = LlmBuffer.Allocate(ctx, DType.F32, 1);
        yb.Fill(float.NaN);
        Gemm.Int4(xb, w, yb, 0);
        Assert.True(float.IsNaN(yb.ToArray<float>()[0]));
        Assert.True(y.All(float.IsNaN));
    }

    // ---- bad input: the exception names the parameter, y is not written ------------------------------------------

    [Fact]
    public void Bad_gemm_arguments_name_the_parameter_and_leave_y_untouched()
    {
        const int K = 64, N = 16, M = 3;
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var w = Int4Weight.Quantize(ctx, Activations(new Random(1), K * N), K, N, 32, false);
        using var x = LlmBuffer.Allocate(ctx, DType.F32, M * K);
        using var xShort = LlmBuffer.Allocate(ctx, DType.F32, M * K - 1);
        using var y = LlmBuffer.Allocate(ctx, DType.F32, M * N);
        using var y16 = LlmBuffer.Allocate(ctx, DType.F16, M * N);
        using var bias = LlmBuffer.Allocate(ctx, DType.F32, N - 1);
        using var i32 = LlmBuffer.Allocate(ctx, DType.I32, M * K);
        x.Fill(1f);
        y.Fill(float.NaN);

        var e = Assert.Throws<ArgumentException>(() => Gemm.Int4(xShort, w, y, M));
        Assert.Equal("x", e.ParamName);
        Assert.Contains($"{M * K - 1}", e.Message);
        Assert.Contains($"[m, K] = [{M}, {K}]", e.Message);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(x, w, y16, M));
        Assert.Equal("y", e.ParamName);
        Assert.Contains("F16", e.Message);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(i32, w, y, M));
        Assert.Equal("x", e.ParamName);
        Assert.Contains("I32", e.Message);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(x, w, y, M, bias));
        Assert.Equal("bias", e.ParamName);
        Assert.Contains($"{N - 1}", e.Message);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(x, w, x, 1));
        Assert.Equal("y", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(x, w, y, M + 1));
        Assert.Equal("x", e.ParamName);
        var o = Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.Int4(x, w, y, -1));
        Assert.Equal("m", o.ParamName);
        Assert.Throws<ArgumentNullException>(() => Gemm.Int4(x, null!, y, M));
        Assert.True(y.ToArray<float>().All(float.IsNaN), "a rejected call wrote y");

        // Spans.
        float[] ys = Nan(M * N);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(new float[M * K - 1], w, ys, M));
        Assert.Equal("x", e.ParamName);
        Assert.Contains($"{M * K}", e.Message);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(new float[M * K], w, new float[M * N - 1], M));
        Assert.Equal("y", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(new float[M * K], w, ys, M, new float[N - 1]));
        Assert.Equal("bias", e.ParamName);
        float[] shared = new float[M * K + M * N];
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(shared.AsSpan(0, M * K), w, shared.AsSpan(M * K - 1), M));
        Assert.Equal("y", e.ParamName);
        Assert.Contains("overlap", e.Message);
        Assert.True(ys.All(float.IsNaN), "a rejected span call wrote y");

        // Dense.
        using var wd = LlmBuffer.Allocate(ctx, DType.F32, K * N - 1);
        e = Assert.Throws<ArgumentException>(() => Gemm.Dense(x, wd, y, M, K, N));
        Assert.Equal("w", e.ParamName);
        Assert.Contains($"[k, n] = [{K}, {N}]", e.Message);
        using var wd16 = LlmBuffer.Allocate(ctx, DType.F16, K * N);
        e = Assert.Throws<ArgumentException>(() => Gemm.Dense(x, wd16, y, M, K, N));
        Assert.Equal("w", e.ParamName);
        o = Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.Dense(x, wd16, y, M, 0, N));
        Assert.Equal("k", o.ParamName);
        Assert.True(y.ToArray<float>().All(float.IsNaN), "a rejected dense call wrote y");
    }

    [Fact]
    public void Buffers_of_another_cpu_context_are_fine_and_disposed_ones_are_named()
    {
        var r = TestSetup.Random(out int seed);
        using var a = LlmContext.Create(Backend.Cpu);
        using var b = LlmContext.Create(Backend.Cpu);
        using var w = Int4Weight.Quantize(a, Activations(r, 64 * 8), 64, 8, 64, true);
        using var x = LlmBuffer.Allocate(b, DType.F32, 64);
        using var y = LlmBuffer.Allocate(b, DType.F32, 8);
        float[] xs = Activations(r, 64);
        x.Upload<float>(xs);
        Gemm.Int4(x, w, y, 1);
        float[] ys = new float[8];
        Gemm.Int4(xs, w, ys, 1);
        Assert.True(ys.SequenceEqual(y.ToArray<float>()), $"seed {seed}");
        var gone = LlmBuffer.Allocate(b, DType.F32, 64);
        gone.Dispose();
        var e = Assert.Throws<ObjectDisposedException>(() => Gemm.Int4(gone, w, y, 1));
        Assert.Contains("'x'", e.Message);
    }

    [CudaFact]
    public void Buffers_on_another_device_and_spans_on_cuda_are_rejected()
    {
        using var cpu = LlmContext.Create(Backend.Cpu);
        using var cuda = LlmContext.Create(Backend.Cuda);
        using var w = Int4Weight.Quantize(cuda, new float[64 * 8], 64, 8, 64, true);
        using var x = LlmBuffer.Allocate(cpu, DType.F16, 64);
        using var y = LlmBuffer.Allocate(cuda, DType.F16, 8);
        var e = Assert.Throws<ArgumentException>(() => Gemm.Int4(x, w, y, 1));
        Assert.Equal("x", e.ParamName);
        Assert.Contains("Cpu", e.Message);
        e = Assert.Throws<ArgumentException>(() => Gemm.Int4(new float[64], w, new float[8], 1));
        Assert.Equal("w", e.ParamName);
        Assert.Contains("CPU", e.Message);
    }

    private static float[] RunBuffers(LlmContext ctx, Int4Weight w, float[] x, float[]? bias, int m, DType dtype)
    {
        using var xb = LlmBuffer.Allocate(ctx, dtype, x.Length);
        using var yb = LlmBuffer.Allocate(ctx, dtype, (long)m * w.N);
        using var bb = bias is null ? null : LlmBuffer.Allocate(ctx, dtype, bias.Length);
        Upload(xb, x);
        if (bb != null) Upload(bb, bias!);
        Poison(yb);
        Gemm.Int4(xb, w, yb, m, bb);
        return Download(yb);
    }

    private static void Upload(LlmBuffer b, float[] values)
    {
        if (b.DType == DType.F32) b.Upload<float>(values);
        else b.Upload<Half>(ToHalf(values));
    }

    private static void Poison(LlmBuffer b)
    {
        if (b.DType == DType.F32) b.Fill(float.NaN);
        else b.Fill(Half.NaN);
    }

    private static float[] Download(LlmBuffer b) =>
        b.DType == DType.F32 ? b.ToArray<float>() : b.ToArray<Half>().Select(v => (float)v).ToArray();
}
