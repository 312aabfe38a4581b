// Correctness checks run before any measurement (and alone with --selfcheck): the hand-encoded ONNX models
// load in ORT and every contender (ORT MatMulNBits at each block size / accuracy level, ORT GQA in f16 and
// f32, LlmNative's INT4 GEMM and decode attention) matches a float64 reference on a small case built from
// the same data the benchmarks use. Error bounds are derived from the data, not tuned: f32 accumulation
// gets K * 2^-22 of sum|x*w|; int8 activations (ORT accuracy_level 4, LlmNative's default int8-dot path)
// get the activation rounding error, sum over blocks of amax/254 * sum|w|.
using System;
using System.Collections.Generic;
using System.IO;
using LlmNative.Benchmarks.Data;
using LlmNative.Benchmarks.Ort;
using LlmNative.Benchmarks.Ours;

namespace LlmNative.Benchmarks;

internal static class SelfCheck
{
    public static bool Run(TextWriter log)
    {
        bool ok = true;
        const int M = 3;
        foreach (int gs in new[] { 32, 128 })
        {
            Int4Problem w = Int4Problem.Random(256, 48, gs, seed: 11 + (ulong)gs);
            float[] x = Activations(M, w.K, seed: 5);
            double[] reference = w.Reference(x, M);
            foreach (int acc in new[] { 1, 4 })
            {
                using var ort = new OrtMatMulNBits(w, acc);
                using var a = new NativeArray(x.Length * 4L);
                using var y = new NativeArray(M * w.N * 4);
                x.AsSpan().CopyTo(a.AsSpan<float>(0, x.Length));
                y.AsSpan<float>(0, (int)(M * w.N)).Fill(float.NaN);
                ort.Bind(a, y, M);
                ort.Run();
                float[] got = y.AsSpan<float>(0, (int)(M * w.N)).ToArray();
                ok &= Compare(log, $"ORT MatMulNBits block {gs} accuracy_level {acc}", got, reference,
                    Int4Bound(w, x, M, acc == 4 ? gs : 0));
            }
            ok &= OursCheck.Int4(log, w, x, M, reference, (ww, xx, mm) => Int4Bound(ww, xx, mm, OursCheck.Int8ActivationBlock));
        }

        var kv = new KvProblem(qHeads: 32, kvHeads: 8, headDim: 128, seed: 99);
        int[] lens = { 37, 20, 1 };
        float[] q = kv.Query(lens.Length);
        var refs = new double[lens.Length][];
        for (int b = 0; b < lens.Length; ++b)
        {
            var k = new ushort[lens[b] * kv.TokenElems];
            var v = new ushort[lens[b] * kv.TokenElems];
            kv.Fill(b, false, 0, lens[b], k);
            kv.Fill(b, true, 0, lens[b], v);
            refs[b] = kv.Reference(q.AsSpan(b * kv.QHeads * kv.HeadDim, kv.QHeads * kv.HeadDim), k, v, lens[b]);
        }
        double[] flat = Concat(refs);
        foreach (bool f16 in new[] { true, false })
        {
            using var session = OrtGqaBatch.CreateSession(f16, kv);
            using var gqa = new OrtGqaBatch(session, f16, kv, lens.Length, capacity: 40);
            for (int b = 0; b < lens.Length; ++b) gqa.Fill(b, b, lens[b]);
            gqa.SetQuery(q);
            gqa.Run();
            var got = new float[flat.Length];
            for (int i = 0; i < got.Length; ++i) got[i] = gqa.Output(i);
            // f16 output: half an fp16 ulp of |out| <= 1 (values are in (-1, 1)), plus f32 accumulation
            ok &= Compare(log, $"ORT GroupQueryAttention {(f16 ? "f16" : "f32")}", got, flat, _ => f16 ? 1.0 / 2048 + 1e-5 : 2e-5);
        }
        ok &= OursCheck.Attention(log, kv, lens, q, flat);
        return ok;
    }

    public static float[] Activations(int m, long k, ulong seed)
    {
        var rng = new SplitMix64(seed);
        var x = new float[m * k];
        for (int i = 0; i < x.Length; ++i) x[i] = rng.NextNormal();
        return x;
    }

    /// <summary>
    /// Per-output error bound: f32 accumulation (K * 2^-22 * sum|x w|) plus, when activations are rounded to
    /// int8 in blocks of <paramref name="int8Block"/> (0: no rounding), sum over blocks of amax/254 * sum|w|.
    /// </summary>
    public static Func<int, double> Int4Bound(Int4Problem w, float[] x, int m, int int8Block)
    {
        long K = w.K, N = w.N;
        var bound = new double[m * N];
        for (int i = 0; i < m; ++i)
        {
            int blk = int8Block > 0 ? int8Block : (int)K;
            for (long k0 = 0; k0 < K; k0 += blk)
            {
                double amax = 0;
                for (long k = k0; k < k0 + blk; ++k) amax = Math.Max(amax, Math.Abs(x[i * K + k]));
                for (long n = 0; n < N; ++n)
                {
                    double sw = 0, sxw = 0;
                    for (long k = k0; k < k0 + blk; ++k)
                    {
                        double wv = Math.Abs(w.Weight(k, n));
                        sw += wv;
                        sxw += wv * Math.Abs(x[i * K + k]);
                    }
                    bound[i * N + n] += K * Math.Pow(2, -22) * sxw + (int8Block > 0 ? amax / 254 * sw * 1.001 : 0);
                }
            }
        }
        return j => bound[j] + 1e-6;
    }

    /// <summary>
    /// Checks y[M, N] against a float64 reference on rows {0, M-1} and 48 sampled columns (first, middle, last
    /// 16), with the bound of <see cref="Int4Bound"/>: cheap enough to run at every benchmark shape.
    /// </summary>
    public static bool SampledInt4(TextWriter log, string what, Int4Problem w, float[] x, int m, ReadOnlySpan<float> y, int int8Block)
    {
        long K = w.K, N = w.N;
        var cols = new List<long>();
        foreach (long start in new[] { 0L, N / 2, N - 16 })
            for (long n = start; n < start + 16; ++n)
                if (n >= 0 && n < N && !cols.Contains(n)) cols.Add(n);
        int[] rows = m == 1 ? new[] { 0 } : new[] { 0, m - 1 };
        var reference = new double[rows.Length * cols.Count];
        var bounds = new double[reference.Length];
        var got = new float[reference.Length];
        int blk = int8Block > 0 ? int8Block : (int)K;
        for (int ri = 0; ri < rows.Length; ++ri)
        {
            int i = rows[ri];
            for (int ci = 0; ci < cols.Count; ++ci)
            {
                long n = cols[ci];
                double sum = 0, bound = 0;
                for (long k0 = 0; k0 < K; k0 += blk)
                {
                    double amax = 0, sw = 0, sxw = 0;
                    for (long k = k0; k < k0 + blk; ++k)
                    {
                        double xv = x[i * K + k], wv = w.Weight(k, n);
                        amax = Math.Max(amax, Math.Abs(xv));
                        sum += xv * wv;
                        sw += Math.Abs(wv);
                        sxw += Math.Abs(xv * wv);
                    }
                    bound += K * Math.Pow(2, -22) * sxw + (int8Block > 0 ? amax / 254 * sw * 1.001 : 0);
                }
                int j = ri * cols.Count + ci;
                reference[j] = sum;
                bounds[j] = bound + 1e-6;
                got[j] = y[(int)(i * N + n)];
            }
        }
        return Compare(log, what, got, reference, j => bounds[j]);
    }

    public static bool Compare(TextWriter log, string what, ReadOnlySpan<float> got, ReadOnlySpan<double> reference, Func<int, double> bound)
    {
        double worst = 0, maxRef = 0;
        int worstAt = -1, bad = 0;
        for (int i = 0; i < reference.Length; ++i)
        {
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
            double err = Math.Abs(got[i] - reference[i]);
            double b = bound(i);
            if (!(err <= b)) ++bad; // NaN fails
            double r = double.IsNaN(err) ? double.PositiveInfinity : err / b;
            if (r > worst) { worst = r; worstAt = i; }
        }
        string msg = $"{what}: {(bad == 0 ? "ok" : "FAILED")} ({reference.Length} outputs, max |ref| {maxRef:G3}, worst error/bound {worst:F3}" +
                     (worstAt >= 0 ? $" at {worstAt}: got {got[worstAt]:G6} ref {reference[worstAt]:G6}" : "") + (bad > 0 ? $", {bad} over the bound" : "") + ")";
        log.WriteLine("  selfcheck: " + msg);
        return bad == 0;
    }

    private static double[] Concat(double[][] parts)
    {
        int n = 0;
        foreach (double[] p in parts) n += p.Length;
        var r = new double[n];
        int o = 0;
        foreach (double[] p in parts) { p.CopyTo(r, o); o += p.Length; }
        return r;
    }
}
