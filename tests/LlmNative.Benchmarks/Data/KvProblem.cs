// Deterministic attention data: the K/V of sequence `index` (any copy of any batch) and a query, generated
// from a seed so that LlmNative's cache and ORT's past tensors are filled with the same values without
// keeping a third copy around. Values are fp16 (the cache format both sides read).
using System;

namespace LlmNative.Benchmarks.Data;

internal sealed class KvProblem
{
    public KvProblem(int qHeads, int kvHeads, int headDim, ulong seed)
    {
        QHeads = qHeads;
        KvHeads = kvHeads;
        HeadDim = headDim;
        Seed = seed;
    }

    public int QHeads { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    public ulong Seed { get; }

    /// <summary>Elements of one token's K (or V): kvHeads * headDim.</summary>
    public int TokenElems => KvHeads * HeadDim;

    /// <summary>
    /// Fills tokens [start, start + count) of sequence <paramref name="index"/>, layout [count, kvHeads, headDim],
    /// as fp16 bits. K and V come from different streams; token t's values do not depend on start/count.
    /// </summary>
    public void Fill(long index, bool value, long start, int count, Span<ushort> dst)
    {
        int per = TokenElems;
        if (dst.Length < count * per) throw new ArgumentException("destination too small");
        for (int t = 0; t < count; ++t)
        {
            var rng = new SplitMix64(Seed ^ ((ulong)index * 0x100000001B3UL) ^ ((ulong)(start + t) << 20) ^ (value ? 0xABCDEFUL : 0UL));
            Span<ushort> row = dst.Slice(t * per, per);
            for (int i = 0; i < per; i += 4)
            {
                ulong r = rng.Next();
                // four values in (-1, 1) from 16-bit slices: smooth enough, cheap enough for GiB of cache
                row[i] = ToHalfBits(r);
                row[i + 1] = ToHalfBits(r >> 16);
                row[i + 2] = ToHalfBits(r >> 32);
                row[i + 3] = ToHalfBits(r >> 48);
            }
        }
    }

    /// <summary>Query of batch element <paramref name="b"/>, [qHeads * headDim] floats (fp16-representable).</summary>
    public float[] Query(int batch)
    {
        var q = new float[batch * QHeads * HeadDim];
        var rng = new SplitMix64(Seed * 31 + 7);
        for (int i = 0; i < q.Length; ++i) q[i] = (float)(Half)(rng.NextNormal());
        return q;
    }

    private static ushort ToHalfBits(ulong r)
    {
        // 16 random bits -> value in (-1, 1): sign from bit 15, magnitude (bits 0..14) / 2^15
        int m = (int)(r & 0x7fff);
        float v = m * (1.0f / 32768.0f);
        if ((r & 0x8000) != 0) v = -v;
        return BitConverter.HalfToUInt16Bits((Half)v);
    }

    public static float HalfToFloat(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    /// <summary>
    /// Float64 reference of decode attention for one sequence: q [qHeads, headDim], k/v [len, kvHeads, headDim]
    /// (fp16 bits), scale 1/sqrt(headDim). Returns [qHeads, headDim].
    /// </summary>
    public double[] Reference(ReadOnlySpan<float> q, ReadOnlySpan<ushort> k, ReadOnlySpan<ushort> v, int len)
    {
        int group = QHeads / KvHeads, d = HeadDim;
        double scale = 1.0 / Math.Sqrt(d);
        var outp = new double[QHeads * d];
        var s = new double[len];
        for (int h = 0; h < QHeads; ++h)
        {
            int kh = h / group;
            double max = double.NegativeInfinity;
            for (int t = 0; t < len; ++t)
            {
                double dot = 0;
                int off = (t * KvHeads + kh) * d;
                for (int i = 0; i < d; ++i) dot += q[h * d + i] * (double)HalfToFloat(k[off + i]);
                s[t] = dot * scale;
                max = Math.Max(max, s[t]);
            }
            double sum = 0;
            for (int t = 0; t < len; ++t) sum += s[t] = Math.Exp(s[t] - max);
            for (int t = 0; t < len; ++t)
            {
                int off = (t * KvHeads + kh) * d;
                double p = s[t] / sum;
                for (int i = 0; i < d; ++i) outp[h * d + i] += p * HalfToFloat(v[off + i]);
            }
        }
        return outp;
    }
}
