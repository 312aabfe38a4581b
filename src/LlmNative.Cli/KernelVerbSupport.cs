// Shared by the verify and bench verbs: the --backend option, deterministic data, dtype conversions and
// buffer transfers, the packers for hand-built GPTQ/AWQ tensors, and the float64 references with their
// error bounds. Everything runs through LlmNative's public API; nothing here knows kernel internals beyond
// what the bounds document.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;

namespace LlmNative.Cli;

/// <summary>The --backend option: cpu, cuda, or best (CUDA when available, else the CPU).</summary>
internal static class BackendOption
{
    public const string Help = "  --backend <cpu|cuda|best>  backend to run on (default: best = CUDA when available, else CPU)\n";

    public static bool TryParse(string verb, string[] args, ref int i, ref string backend)
    {
        if (args[i] != "--backend") return false;
        if (++i >= args.Length) throw new UsageException($"{verb}: --backend needs a value (cpu, cuda or best)");
        backend = args[i] switch
        {
            "cpu" or "cuda" or "best" => args[i],
            _ => throw new UsageException($"{verb}: --backend must be cpu, cuda or best, got '{args[i]}'"),
        };
        return true;
    }

    public static LlmContext Create(string backend) => backend switch
    {
        "cpu" => LlmContext.Create(Backend.Cpu),
        "cuda" => LlmContext.Create(Backend.Cuda),
        _ => LlmContext.CreateBest(),
    };

    /// <summary>"cpu (avx2, 16 threads, AMD EPYC ...)" or "cuda device 0 (NVIDIA H100 ...)".</summary>
    public static string Describe(LlmContext ctx)
    {
        if (ctx.Backend == Backend.Cuda)
        {
            CudaDeviceInfo? d = LlmNativeInfo.Cuda.Devices.FirstOrDefault(x => x.Index == ctx.Device);
            return $"cuda device {ctx.Device}" + (d is null ? "" : $" ({d.Name}, compute {d.ComputeCapability})");
        }
        CpuInfo c = LlmNativeInfo.Cpu;
        string model = c.ModelName.Length > 0 ? $", {c.ModelName}" : "";
        return $"cpu ({c.ActiveIsa.ToString().ToLowerInvariant()}, {c.Threads} threads{model})";
    }
}

/// <summary>Deterministic pseudo-random data: a value is a pure function of (seed, index), so any element can be regenerated.</summary>
internal static class Data
{
    public static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public static ulong Bits(ulong seed, long index) => Mix(seed * 0x632BE59BD9B4E019UL + (ulong)index);

    /// <summary>Uniform in [-1, 1).</summary>
    public static float Uniform(ulong seed, long index) => (float)((Bits(seed, index) >> 11) * (1.0 / (1UL << 53)) * 2 - 1);

    /// <summary>Uniform in [-1, 1) with one value in 64 eight times larger (activation-like outliers).</summary>
    public static float Activation(ulong seed, long index) =>
        Uniform(seed, index) * ((Bits(seed ^ 0x5555, index) & 63) == 0 ? 8f : 1f);

    public static int Nibble(ulong seed, long index) => (int)(Bits(seed, index) >> 60);

    public static float[] Array(int count, Func<long, float> f)
    {
        var a = new float[count];
        for (int i = 0; i < count; i++) a[i] = f(i);
        return a;
    }
}

/// <summary>Rounding to and from the 16-bit float types, and transfers of float data into buffers of any float dtype.</summary>
internal static class Numeric
{
    public static ushort ToBf16(float v)
    {
        uint b = BitConverter.SingleToUInt32Bits(v);
        if ((b & 0x7fffffff) > 0x7f800000) return (ushort)((b >> 16) | 0x40); // NaN stays NaN
        return (ushort)((b + 0x7fff + ((b >> 16) & 1)) >> 16);              // round to nearest even
    }

    public static float FromBf16(ushort h) => BitConverter.UInt32BitsToSingle((uint)h << 16);

    /// <summary>The value a buffer of <paramref name="dtype"/> holds after <paramref name="v"/> is stored.</summary>
    public static float Round(DType dtype, float v) => dtype switch
    {
        DType.F16 => (float)(Half)v,
        DType.BF16 => FromBf16(ToBf16(v)),
        _ => v,
    };

    public static float[] Round(DType dtype, float[] a) => a.Select(v => Round(dtype, v)).ToArray();

    public static void Upload(LlmBuffer b, ReadOnlySpan<float> values, long offset = 0)
    {
        switch (b.DType)
        {
            case DType.F32:
                b.Upload(values, offset);
                break;
            case DType.F16:
            {
                var h = new Half[values.Length];
                for (int i = 0; i < h.Length; i++) h[i] = (Half)values[i];
                b.Upload<Half>(h, offset);
                break;
            }
            default:
            {
                var h = new ushort[values.Length];
                for (int i = 0; i < h.Length; i++) h[i] = ToBf16(values[i]);
                b.Upload<ushort>(h, offset);
                break;
            }
        }
    }

    public static LlmBuffer Buffer(LlmContext ctx, DType dtype, float[] values)
    {
        LlmBuffer b = LlmBuffer.Allocate(ctx, dtype, Math.Max(1, values.Length));
        try
        {
            Upload(b, values);
            return b;
        }
        catch
        {
            b.Dispose();
            throw;
        }
    }

    public static void Poison(LlmBuffer b)
    {
        switch (b.DType)
        {
            case DType.F32: b.Fill(float.NaN); break;
            case DType.F16: b.Fill(Half.NaN); break;
            default: b.Fill((ushort)0x7fc0); break;
        }
    }

    public static float[] Download(LlmBuffer b) => b.DType switch
    {
        DType.F32 => b.ToArray<float>(),
        DType.F16 => b.ToArray<Half>().Select(v => (float)v).ToArray(),
        _ => b.ToArray<ushort>().Select(FromBf16).ToArray(),
    };

    /// <summary>Unit roundoff of a storage dtype (relative error of one rounding).</summary>
    public static double UnitRoundoff(DType dtype) => dtype switch
    {
        DType.F16 => Math.Pow(2, -11),
        DType.BF16 => Math.Pow(2, -8),
        _ => Math.Pow(2, -24),
    };

    public static string Name(DType dtype) => dtype.ToString().ToLowerInvariant();

    public static string Seconds(double s) =>
        s >= 1 ? $"{s:0.00} s" : s >= 1e-3 ? $"{s * 1e3:0.000} ms" : $"{s * 1e6:0.0} us";

    public static string Rate(double bytesPerSecond) => $"{bytesPerSecond / 1e9:0.0} GB/s";

    public static string Sci(double v) => v.ToString("0.00e+00", CultureInfo.InvariantCulture);
}

/// <summary>Test-side packers for checkpoint tensors, written from the layouts documented on GptqTensors / AwqTensors.</summary>
internal static class Packing
{
    private static readonly int[] AwqOrder = { 0, 2, 4, 6, 1, 3, 5, 7 };

    /// <summary>GPTQ qweight [K/8, N]: row k is nibble k % 8 of word [k / 8][n].</summary>
    public static int[] GptqQWeight(Func<int, int, int> q, int k, int n)
    {
        var w = new int[k / 8 * n];
        for (int row = 0; row < k; row++)
            for (int col = 0; col < n; col++)
                w[row / 8 * n + col] |= q(row, col) << (4 * (row % 8));
        return w;
    }

    /// <summary>GPTQ qzeros [G, N/8]: column n is nibble n % 8 of word [g][n / 8].</summary>
    public static int[] GptqColumns(Func<int, int, int> v, int rows, int n)
    {
        var w = new int[rows * (n / 8)];
        for (int g = 0; g < rows; g++)
            for (int col = 0; col < n; col++)
                w[g * (n / 8) + col / 8] |= v(g, col) << (4 * (col % 8));
        return w;
    }

    /// <summary>AWQ [rows, N/8]: nibble i of word [r][j] holds column 8j + {0,2,4,6,1,3,5,7}[i].</summary>
    public static int[] Awq(Func<int, int, int> v, int rows, int n)
    {
        var w = new int[rows * (n / 8)];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < n / 8; j++)
                for (int i = 0; i < 8; i++)
                    w[r * (n / 8) + j] |= v(r, 8 * j + AwqOrder[i]) << (4 * i);
        return w;
    }
}

/// <summary>The worst element of a comparison: its error, its bound, and error / bound.</summary>
internal readonly record struct Comparison(double MaxError, double BoundAtWorst, double Ratio, int Bad, string FirstBad)
{
    public bool Passed => Bad == 0;

    public static Comparison Of(IReadOnlyList<float> got, double[] reference, Func<int, double> bound)
    {
        double maxErr = 0, worstRatio = -1, worstBound = 0;
        int bad = 0;
        string first = "";
        for (int i = 0; i < reference.Length; i++)
        {
            double e = Math.Abs(got[i] - reference[i]), b = bound(i);
            bool ok = e <= b; // false for NaN
            if (!ok && bad++ == 0) first = $"element {i}: {got[i]} vs reference {reference[i]} (error {Numeric.Sci(e)} > bound {Numeric.Sci(b)})";
            double ratio = ok ? (b > 0 ? e / b : 0) : double.PositiveInfinity;
            maxErr = Math.Max(maxErr, double.IsNaN(e) ? double.PositiveInfinity : e);
            if (ratio > worstRatio)
            {
                worstRatio = ratio;
                worstBound = b;
            }
        }
        return new Comparison(maxErr, worstBound, Math.Max(0, worstRatio), bad, first);
    }
}

/// <summary>float64 references of the GEMMs and their error bounds per backend.</summary>
internal static class GemmReference
{
    private const double U = 1.0 / (1 << 24);

    /// <summary>y = x · w (+ bias) in float64, with S = Σ|x w| + |bias| per element.</summary>
    public static (double[] Y, double[] S) Compute(float[] x, float[] w, float[]? bias, int m, int k, int n)
    {
        var y = new double[m * n];
        var s = new double[m * n];
        var acc = new double[n];
        var abs = new double[n];
        for (int row = 0; row < m; row++)
        {
            System.Array.Clear(acc);
            System.Array.Clear(abs);
            for (int i = 0; i < k; i++)
            {
                double xv = x[row * k + i];
                if (xv == 0) continue;
                for (int col = 0; col < n; col++)
                {
                    double p = xv * w[i * n + col];
                    acc[col] += p;
                    abs[col] += Math.Abs(p);
                }
            }
            for (int col = 0; col < n; col++)
            {
                y[row * n + col] = acc[col] + (bias?[col] ?? 0);
                s[row * n + col] = abs[col] + Math.Abs(bias?[col] ?? 0);
            }
        }
        return (y, s);
    }

    /// <summary>
    /// Bound of the INT4 GEMM. CPU: the exact-f32 path (gamma(Kp + 2) · S) or the int8-activation path, which rounds x
    /// per 32-row block of the CPU layout (rows sorted by group, groups padded to 32) with scale amax / 127:
    /// E = Σ_k amax_block(k) / 254 · (1 + 2^-20) · |w_kn|, total E + gamma(Kp + 4) · (S + E). CUDA: grouped weights
    /// are rounded to the activation type after scaling (2^-11 for f16, 2^-7 for bf16; doubled here for margin),
    /// f32 accumulation in any order, output rounding. Both add the output dtype's rounding.
    /// </summary>
    public static Func<int, double> Int4Bound(Backend backend, DType dtype, float[] x, float[] w, double[] y, double[] s, int m, int k,
        int n, int[] groupOfRow, bool grouped)
    {
        double eo = dtype == DType.F32 ? 0 : Numeric.UnitRoundoff(dtype);
        if (backend == Backend.Cuda)
        {
            double ew = grouped ? (dtype == DType.BF16 ? Math.Pow(2, -6) : Math.Pow(2, -10)) : 4 * U;
            double kp = 2.0 * k + 256, gam = (kp + 2) * U / (1 - (kp + 2) * U);
            return i => s[i] * (ew + gam) * (1 + eo) + Math.Abs(y[i]) * eo + 1e-6 * (1 + s[i] * 1e-3) + U * kp;
        }

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
        double kq = rows + 4, gamma = kq * U / (1 - kq * U);
        var e = new double[m * n];
        var amax = new double[rows / 32];
        for (int row = 0; row < m; row++)
        {
            System.Array.Clear(amax);
            for (int i = 0; i < k; i++) amax[block[i]] = Math.Max(amax[block[i]], Math.Abs(x[row * k + i]));
            for (int i = 0; i < k; i++)
            {
                double c = amax[block[i]] / 254 * (1 + 1.0 / (1 << 20));
                for (int col = 0; col < n; col++) e[row * n + col] += c * Math.Abs(w[i * n + col]);
            }
        }
        return i =>
        {
            double b = e[i] + gamma * (s[i] + e[i]) + 1e-12 * s[i];
            return eo == 0 ? b : b + (Math.Abs(y[i]) + b) * eo + 1e-7;
        };
    }

    /// <summary>Bound of the dense baseline: products exact in f32, f32 accumulation (gamma(K + 2) · S; CUDA ×4 for tensor-core accumulation), output rounding.</summary>
    public static Func<int, double> DenseBound(Backend backend, DType dtype, double[] y, double[] s, int k)
    {
        double eo = dtype == DType.F32 ? 0 : Numeric.UnitRoundoff(dtype);
        double gamma = (k + 2) * U / (1 - (k + 2) * U) * (backend == Backend.Cuda ? 4 : 1);
        return i =>
        {
            double b = gamma * s[i] + 1e-12 * s[i];
            return eo == 0 ? b : b + (Math.Abs(y[i]) + b) * eo + 1e-7;
        };
    }
}

/// <summary>
/// float64 decode attention from the K/V a cache hands back (dequantized), with the error bound of
/// native/tests/test_decode_attention.cpp: score error (D + 2) u A (+ soft-cap), weights, accumulation over
/// N keys and T tiles, the split merge (for up to 256 splits), f16/bf16 output rounding, times 1.25 plus
/// 8 u Vmax. For quantized K/V (stored as code · scale + min) the kernel may fold the scale and minimum
/// into different products, so A and Vmax are taken 3× larger there.
/// </summary>
internal static class AttentionReference
{
    private const double U = 1.0 / (1 << 24), EpsExp = 1.0 / (1 << 21), Splits = 256;

    public static (double[] O, double[] Bound) Compute(KvCache cache, long[] ids, float[] q, AttentionOptions o, DType outType,
        bool quantizedK, bool quantizedV)
    {
        KvCacheOptions c = cache.Options;
        int h = c.NumKvHeads, d = c.HeadDim, hq = o.NumQHeads, g = hq / h, ql = o.QLen;
        double scale = o.Scale ?? 1.0 / Math.Sqrt(d), cap = o.SoftCap;
        double fa = quantizedK ? 3 : 1, fv = quantizedV ? 3 : 1, eo = outType == DType.F32 ? 0 : Numeric.UnitRoundoff(outType);
        var outp = new double[ids.Length * ql * hq * d];
        var bound = new double[ids.Length * ql * hq];
        for (int b = 0; b < ids.Length; b++)
        {
            int len = checked((int)cache.GetLength(ids[b], o.Layer));
            float[] k = new float[len * h * d], v = new float[len * h * d];
            using (var kb = LlmBuffer.Allocate(cache.Context, DType.F32, Math.Max(1, k.Length)))
            using (var vb = LlmBuffer.Allocate(cache.Context, DType.F32, Math.Max(1, v.Length)))
            {
                cache.Read(ids[b], o.Layer, 0, len, kb, vb);
                kb.Download<float>(k);
                vb.Download<float>(v);
            }
            for (int i = 0; i < ql; i++)
            {
                int pos = len - ql + i, lo = o.Window > 0 ? Math.Max(0, pos - o.Window + 1) : 0, nk = pos - lo + 1;
                for (int head = 0; head < hq; head++)
                {
                    int kv = head / g, qo = ((b * ql + i) * hq + head) * d;
                    var sc = new double[nk];
                    double dmax = 0, smax = double.NegativeInfinity, sabs = 0;
                    for (int t = lo; t <= pos; t++)
                    {
                        double dot = 0, a = 0;
                        for (int x = 0; x < d; x++)
                        {
                            double p = (double)q[qo + x] * k[(t * h + kv) * d + x];
                            dot += p;
                            a += Math.Abs(p);
                        }
                        dot *= scale;
                        a *= Math.Abs(scale) * fa;
                        double err = (d + 2) * U * a;
                        if (cap > 0)
                        {
                            dot = cap * Math.Tanh(dot / cap);
                            err += cap * (EpsExp + 4 * U) + 2 * U * a;
                        }
                        sc[t - lo] = dot;
                        dmax = Math.Max(dmax, err);
                        smax = Math.Max(smax, dot);
                        sabs = Math.Max(sabs, Math.Abs(dot));
                    }
                    double l = 0, vmax = 0, omax = 0;
                    var acc = new double[d];
                    for (int t = lo; t <= pos; t++)
                    {
                        double w = Math.Exp(sc[t - lo] - smax);
                        l += w;
                        for (int x = 0; x < d; x++)
                        {
                            double vv = v[(t * h + kv) * d + x];
                            acc[x] += w * vv;
                            vmax = Math.Max(vmax, Math.Abs(vv));
                        }
                    }
                    for (int x = 0; x < d; x++)
                    {
                        outp[qo + x] = acc[x] / l;
                        omax = Math.Max(omax, Math.Abs(acc[x] / l));
                    }
                    vmax *= fv;
                    double tiles = nk / 64.0 + Splits + 2;
                    double weights = 2 * (dmax + EpsExp + 2 * U * sabs);
                    double accum = 2 * (nk + tiles + 4) * U;
                    double merge = 2 * (2 * U * (sabs + Math.Log(nk) + 2) + EpsExp + (Splits + 2) * U) + Splits * U;
                    bound[(b * ql + i) * hq + head] = 1.25 * vmax * (weights + accum + merge) + 8 * U * vmax + omax * eo;
                }
            }
        }
        return (outp, bound);
    }
}
