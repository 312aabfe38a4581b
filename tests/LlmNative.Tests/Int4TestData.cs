using System;
using System.Linq;

namespace LlmNative.Tests;

/// <summary>
/// Test-side packers for GPTQ/AWQ tensors (written from the documented layouts, independently of the native
/// importers), fp16 helpers and the float64 GEMM reference with its error bound.
/// </summary>
internal static class Int4TestData
{
    public static readonly int[] AwqOrder = { 0, 2, 4, 6, 1, 3, 5, 7 };

    public static ushort Bits(Half h) => BitConverter.HalfToUInt16Bits(h);

    public static float F16(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    /// <summary>A random positive fp16 scale in [lo, hi).</summary>
    public static ushort RandomScale(Random r, double lo = 0.002, double hi = 0.05) => Bits((Half)(lo + r.NextDouble() * (hi - lo)));

    /// <summary>qweight [K/8, N]: row k is nibble k % 8 of word [k / 8][n].</summary>
    public static int[] PackGptqQWeight(byte[] q, int k, int n)
    {
        var w = new int[k / 8 * n];
        for (int row = 0; row < k; row++)
            for (int col = 0; col < n; col++)
                w[row / 8 * n + col] |= q[row * n + col] << (4 * (row % 8));
        return w;
    }

    /// <summary>GPTQ qzeros [G, N/8]: column n is nibble n % 8 of word [g][n / 8].</summary>
    public static int[] PackGptqColumns(byte[] values, int rows, int n)
    {
        var w = new int[rows * (n / 8)];
        for (int g = 0; g < rows; g++)
            for (int col = 0; col < n; col++)
                w[g * (n / 8) + col / 8] |= values[g * n + col] << (4 * (col % 8));
        return w;
    }

    /// <summary>AWQ [rows, N/8]: nibble i of word [r][j] holds column 8j + AwqOrder[i].</summary>
    public static int[] PackAwq(byte[] values, int rows, int n)
    {
        var w = new int[rows * (n / 8)];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < n / 8; j++)
                for (int i = 0; i < 8; i++)
                    w[r * (n / 8) + j] |= values[r * n + 8 * j + AwqOrder[i]] << (4 * i);
        return w;
    }

    /// <summary>The documented dequantization, evaluated in f32 exactly as specified: (q − z) · scale.</summary>
    public static float[] Dequant(byte[] q, byte[] zeros, ushort[] scales, int k, int n, Func<int, int> groupOf)
    {
        var w = new float[k * n];
        for (int row = 0; row < k; row++)
        {
            int g = groupOf(row);
            for (int col = 0; col < n; col++)
                w[row * n + col] = ((float)q[row * n + col] - zeros[g * n + col]) * F16(scales[g * n + col]);
        }
        return w;
    }

    public static byte[] RandomNibbles(Random r, int count, int lo = 0, int hi = 16)
    {
        var b = new byte[count];
        for (int i = 0; i < count; i++) b[i] = (byte)r.Next(lo, hi);
        return b;
    }

    /// <summary>Random activations in [-1, 1) with a few larger outliers (what real activations look like).</summary>
    public static float[] Activations(Random r, int count)
    {
        var x = new float[count];
        for (int i = 0; i < count; i++) x[i] = (float)(r.NextDouble() * 2 - 1) * (r.Next(64) == 0 ? 8f : 1f);
        return x;
    }

    /// <summary>Group of every row: k / groupSize (0 per-column), or the act-order g_idx.</summary>
    public static int[] NaturalGroups(int k, int groupSize) =>
        System.Linq.Enumerable.Range(0, k).Select(row => groupSize == 0 ? 0 : row / groupSize).ToArray();

    /// <summary>
    /// float64 reference y = x · W (+ bias) and a per-element bound that covers both CPU compute paths
    /// (the derivation of native/tests/test_gemm_int4.cpp): the exact-f32 one, gamma(Kp + 2) · S, and the
    /// int8-activation one, which rounds x per 32-row block of the packed order (rows sorted by group, each group
    /// padded to 32 rows) with scale amax_block / 127: E = Σ_k amax_block(k) / 254 · (1 + 2^-20) · |w_kn|, total
    /// E + gamma(Kp + 4) · (S + E). f16 outputs add their final rounding; the float64 sum itself 1e-12 · S.
    /// </summary>
    public static (double[] Ref, double[] Bound) Reference(float[] x, float[] w, float[]? bias, int m, int k, int n, int[] groupOfRow,
        bool f16Out)
    {
        const double U = 1.0 / (1 << 24);
        int groups = groupOfRow.Max() + 1;
        var count = new int[groups];
        foreach (int g in groupOfRow) count[g]++;
        var fill = new int[groups];
        int rows = 0;
        for (int g = 0; g < groups; g++)
        {
            fill[g] = rows;
            rows += (count[g] + 31) / 32 * 32;
        }
        var block = new int[k];
        for (int row = 0; row < k; row++) block[row] = fill[groupOfRow[row]]++ / 32;
        double kp = rows + 4;
        double gamma = kp * U / (1 - kp * U);
        var y = new double[m * n];
        var bound = new double[m * n];
        var amax = new double[rows / 32];
        var cq = new double[k];
        for (int row = 0; row < m; row++)
        {
            Array.Clear(amax, 0, amax.Length);
            for (int i = 0; i < k; i++) amax[block[i]] = Math.Max(amax[block[i]], Math.Abs(x[row * k + i]));
            for (int i = 0; i < k; i++) cq[i] = amax[block[i]] / 254 * (1 + 1.0 / (1 << 20));
            for (int col = 0; col < n; col++)
            {
                double acc = 0, s = 0, e = 0;
                for (int i = 0; i < k; i++)
                {
                    double xv = x[row * k + i], wv = w[i * n + col];
                    acc += xv * wv;
                    s += Math.Abs(xv * wv);
                    e += cq[i] * Math.Abs(wv);
                }
                if (bias != null)
                {
                    acc += bias[col];
                    s += Math.Abs(bias[col]);
                }
                double b = e + gamma * (s + e) + 1e-12 * s;
                if (f16Out) b += (Math.Abs(acc) + b) / 2048 + 1.0 / (1 << 25);
                y[row * n + col] = acc;
                bound[row * n + col] = b;
            }
        }
        return (y, bound);
    }

    /// <summary>Asserts y[0 .. m·N) within the bound and everything after still NaN (not written).</summary>
    public static void AssertWithin(ReadOnlySpan<float> y, double[] reference, double[] bound, string what)
    {
        int bad = 0;
        string first = "";
        for (int i = 0; i < reference.Length; i++)
        {
            double e = Math.Abs(y[i] - reference[i]);
            if (!(e <= bound[i]) && bad++ == 0) first = $"y[{i}] = {y[i]}, reference {reference[i]}, error {e} > bound {bound[i]}";
        }
        Xunit.Assert.True(bad == 0, $"{what}: {bad} elements outside the bound; first: {first}");
        for (int i = reference.Length; i < y.Length; i++)
            Xunit.Assert.True(float.IsNaN(y[i]), $"{what}: y[{i}] past the output was written ({y[i]})");
    }

    public static float[] Nan(int count)
    {
        var a = new float[count];
        a.AsSpan().Fill(float.NaN);
        return a;
    }

    public static float[] RoundToHalf(float[] a)
    {
        var r = new float[a.Length];
        for (int i = 0; i < a.Length; i++) r[i] = (float)(Half)a[i];
        return r;
    }

    public static Half[] ToHalf(float[] a)
    {
        var r = new Half[a.Length];
        for (int i = 0; i < a.Length; i++) r[i] = (Half)a[i];
        return r;
    }
}
