// One random symmetric INT4 weight in two layouts that encode the SAME quantized values and scales:
// GPTQ tensors (what LlmNative's importer takes) and ORT MatMulNBits inputs. Codes are uniform 0..15
// (every bit of qweight random), scales random fp16 values in [2^-8, 2^-7); ORT gets them widened to f32
// exactly, so both libraries compute w = (q - 8) * scale.
using System;

namespace LlmNative.Benchmarks.Data;

internal sealed class Int4Problem
{
    private Int4Problem(long k, long n, int groupSize, int[] qweight, ushort[] scales)
    {
        K = k;
        N = n;
        GroupSize = groupSize;
        QWeight = qweight;
        ScalesF16 = scales;
    }

    public long K { get; }
    public long N { get; }
    public int GroupSize { get; }
    public long Groups => K / GroupSize;

    /// <summary>GPTQ qweight int32 [K/8, N]: row k in bits 4*(k%8) of word [k/8, n].</summary>
    public int[] QWeight { get; }

    /// <summary>GPTQ scales, fp16 bits [K/groupSize, N].</summary>
    public ushort[] ScalesF16 { get; }

    /// <summary>Bytes of the logical INT4 weight: codes plus fp16 scales (what a decode GEMM must stream).</summary>
    public long LogicalBytes => K * N / 2 + Groups * N * 2;

    public static Int4Problem Random(long k, long n, int groupSize, ulong seed)
    {
        if (k % 8 != 0 || k % groupSize != 0) throw new ArgumentException($"K {k} must be a multiple of 8 and of group size {groupSize}");
        var rng = new SplitMix64(seed);
        var q = new int[checked(k / 8 * n)];
        Span<ulong> words = System.Runtime.InteropServices.MemoryMarshal.Cast<int, ulong>(q.AsSpan(0, q.Length & ~1));
        for (int i = 0; i < words.Length; ++i) words[i] = rng.Next();
        if ((q.Length & 1) != 0) q[^1] = (int)rng.Next();
        var s = new ushort[checked(k / groupSize * n)];
        for (int i = 0; i < s.Length; ++i) s[i] = (ushort)(0x1c00 + (int)(rng.Next() & 0x3ff));
        return new Int4Problem(k, n, groupSize, q, s);
    }

    public int Code(long k, long n) => (QWeight[(k >> 3) * N + n] >> (int)((k & 7) * 4)) & 15;

    public float Scale(long g, long n) => (float)BitConverter.UInt16BitsToHalf(ScalesF16[g * N + n]);

    /// <summary>Dequantized weight w[k, n] = (q - 8) * scale, exact in float64.</summary>
    public double Weight(long k, long n) => (Code(k, n) - 8) * (double)Scale(k / GroupSize, n);

    /// <summary>
    /// MatMulNBits B, uint8 [N, K/bs, bs/2] with element k in nibble k%2 of byte k/2 (low first). Eight
    /// consecutive k rows of one column are exactly the little-endian bytes of one GPTQ word, so B viewed as
    /// int32 [N, K/8] is the transpose of qweight.
    /// </summary>
    public byte[] OrtB()
    {
        long rows = K / 8;
        var b = new byte[checked(K * N / 2)];
        Span<int> bw = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(b.AsSpan());
        const int Tile = 64;
        for (long r0 = 0; r0 < rows; r0 += Tile)
            for (long n0 = 0; n0 < N; n0 += Tile)
            {
                long r1 = Math.Min(rows, r0 + Tile), n1 = Math.Min(N, n0 + Tile);
                for (long r = r0; r < r1; ++r)
                    for (long n = n0; n < n1; ++n)
                        bw[(int)(n * rows + r)] = QWeight[r * N + n];
            }
        return b;
    }

    /// <summary>MatMulNBits scales, f32 [N, K/groupSize] (the fp16 scales widened exactly).</summary>
    public float[] OrtScales()
    {
        long g = Groups;
        var s = new float[checked(g * N)];
        for (long gi = 0; gi < g; ++gi)
            for (long n = 0; n < N; ++n)
                s[n * g + gi] = Scale(gi, n);
        return s;
    }

    /// <summary>Float64 reference Y[M, N] = X[M, K] * W.</summary>
    public double[] Reference(float[] x, int m)
    {
        var y = new double[m * N];
        var w = new double[N];
        for (long k = 0; k < K; ++k)
        {
            for (long n = 0; n < N; ++n) w[n] = Weight(k, n);
            for (int i = 0; i < m; ++i)
            {
                double xv = x[i * K + k];
                for (long n = 0; n < N; ++n) y[i * N + n] += xv * w[n];
            }
        }
        return y;
    }
}

/// <summary>SplitMix64: fast, seedable, good enough for benchmark data.</summary>
internal struct SplitMix64
{
    private ulong _state;

    public SplitMix64(ulong seed) => _state = seed;

    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [-1, 1).</summary>
    public float NextSigned() => (float)((long)(Next() >> 11) * (1.0 / (1L << 52)) - 1.0);

    /// <summary>Approximately standard normal (sum of 4 uniforms, rescaled).</summary>
    public float NextNormal()
    {
        float s = NextSigned() + NextSigned() + NextSigned() + NextSigned();
        return s * 0.8660254f; // variance of a U(-1,1) is 1/3; four of them: 4/3
    }
}
