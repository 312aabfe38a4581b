using System;
using System.Collections.Generic;
using System.Linq;
using Xunit;

namespace LlmNative.Tests;

/// <summary>
/// KvCache.DecodeAttention against a float64 softmax-attention reference computed from the K/V the cache hands
/// back (f16 storage is part of the cache's semantics). Blocks are scattered (interleaved appends of several
/// sequences and layers); outputs are poisoned with NaN first.
/// </summary>
/// <remarks>
/// Error bound per output row (u = 2^-24, eps = 2^-21 for exp; the native test's derivation, see
/// native/tests/test_decode_attention.cpp): scores |ds| &lt;= (D + 2) u A (+ soft-cap and ALiBi terms), weights
/// 2 (max ds + eps + 2 u Smax), accumulation 2 (N + T + 4) u, split merge, f16 output rounding; all times Vmax,
/// first order, so multiplied by 1.25 with 8 u Vmax of slack. The split count in the bound is 256 (the maximum),
/// which covers whatever the automatic choice picks.
/// </remarks>
public class AttentionTests
{
    private const int D = 64, Layers = 2, Block = 16;
    private const double U = 1.0 / (1 << 24), EpsExp = 1.0 / (1 << 21), MaxSplits = 256;

    private sealed class Setup : IDisposable
    {
        public LlmContext Ctx = null!;
        public KvCache Cache = null!;
        public long[] Ids = null!;
        public int[] Lengths = null!;
        public int H;

        public void Dispose()
        {
            Cache.Dispose();
            Ctx.Dispose();
        }
    }

    /// <summary>A cache with one sequence per length, filled in interleaved chunks in both layers (scattered blocks).</summary>
    private static Setup Build(Random r, int h, int[] lengths, int blockSize = Block)
    {
        var s = new Setup { Ctx = LlmContext.Create(Backend.Cpu), H = h, Lengths = lengths };
        s.Cache = KvCache.Create(s.Ctx, new KvCacheOptions
        {
            NumLayers = Layers, NumKvHeads = h, HeadDim = D, BlockSize = blockSize, CapacityTokens = lengths.Sum() + 64 * lengths.Length,
        });
        s.Ids = lengths.Select(_ => s.Cache.AddSequence()).ToArray();
        var filled = new int[lengths.Length];
        while (filled.Zip(lengths).Any(p => p.First < p.Second))
        {
            for (int b = 0; b < lengths.Length; b++)
            {
                int n = Math.Min(lengths[b] - filled[b], 1 + r.Next(23));
                if (n == 0) continue;
                for (int layer = 0; layer < Layers; layer++)
                {
                    float[] k = Values(r, n * h * D, outliers: true), v = Values(r, n * h * D, outliers: false);
                    s.Cache.Append(s.Ids[b], layer, k, v);
                }
                filled[b] += n;
            }
        }
        return s;
    }

    private static float[] Values(Random r, int count, bool outliers)
    {
        var a = new float[count];
        for (int i = 0; i < count; i++) a[i] = (float)((r.NextDouble() * 2 - 1) * (outliers && r.Next(100) == 0 ? 6 : 1.5));
        return a;
    }

    private sealed record Reference(double[] O, double[] Bound, double[] SplitBound);

    private static Reference Compute(Setup s, float[] q, AttentionOptions o, float[]? slopes, bool f16Out)
    {
        int hq = o.NumQHeads, g = hq / s.H, ql = o.QLen, batch = s.Ids.Length;
        double scale = o.Scale ?? 1.0 / Math.Sqrt(D), c = o.SoftCap;
        var res = new Reference(new double[batch * ql * hq * D], new double[batch * ql * hq], new double[batch * ql * hq]);
        for (int b = 0; b < batch; b++)
        {
            int len = s.Lengths[b];
            float[] kf = new float[len * s.H * D], vf = new float[len * s.H * D];
            s.Cache.Read(s.Ids[b], o.Layer, 0, kf, vf);
            for (int i = 0; i < ql; i++)
            {
                int pos = len - ql + i;
                int lo = o.Window > 0 ? Math.Max(0, pos - o.Window + 1) : 0;
                int n = pos - lo + 1;
                for (int head = 0; head < hq; head++)
                {
                    int kv = head / g;
                    int qOff = ((b * ql + i) * hq + head) * D;
                    var sc = new double[n];
                    double dmax = 0, smax = double.NegativeInfinity, sabs = 0;
                    for (int t = lo; t <= pos; t++)
                    {
                        double dot = 0, a = 0;
                        for (int d = 0; d < D; d++)
                        {
                            double p = (double)q[qOff + d] * kf[(t * s.H + kv) * D + d];
                            dot += p;
                            a += Math.Abs(p);
                        }
                        dot *= scale;
                        a *= Math.Abs(scale);
                        double err = (D + 2) * U * a;
                        if (c > 0)
                        {
                            dot = c * Math.Tanh(dot / c);
                            err += c * (EpsExp + 4 * U) + 2 * U * a;
                        }
                        if (slopes != null)
                        {
                            double bias = (double)slopes[head] * (t - pos);
                            dot += bias;
                            err += 2 * U * (Math.Abs(bias) + a);
                        }
                        sc[t - lo] = dot;
                        dmax = Math.Max(dmax, err);
                        smax = Math.Max(smax, dot);
                        sabs = Math.Max(sabs, Math.Abs(dot));
                    }
                    double l = 0, vmax = 0, omax = 0;
                    var acc = new double[D];
                    for (int t = lo; t <= pos; t++)
                    {
                        double w = Math.Exp(sc[t - lo] - smax);
                        l += w;
                        for (int d = 0; d < D; d++)
                        {
                            double v = vf[(t * s.H + kv) * D + d];
                            acc[d] += w * v;
                            vmax = Math.Max(vmax, Math.Abs(v));
                        }
                    }
                    for (int d = 0; d < D; d++)
                    {
                        res.O[qOff + d] = acc[d] / l;
                        omax = Math.Max(omax, Math.Abs(acc[d] / l));
                    }
                    double tiles = n / 64.0 + MaxSplits + 2;
                    double weights = 2 * (dmax + EpsExp + 2 * U * sabs);
                    double accum = 2 * (n + tiles + 4) * U;
                    double merge = 2 * (2 * U * (sabs + Math.Log(n) + 2) + EpsExp + (MaxSplits + 2) * U) + MaxSplits * U;
                    double outRound = f16Out ? omax / 2048 : 0;
                    int row = (b * ql + i) * hq + head;
                    res.Bound[row] = 1.25 * vmax * (weights + accum + merge) + 8 * U * vmax + outRound;
                    res.SplitBound[row] = 1.25 * vmax * (2 * (2 * EpsExp + 4 * U * sabs) + 2 * accum + merge) + 8 * U * vmax + 2 * outRound;
                }
            }
        }
        return res;
    }

    private static void AssertClose(float[] got, Reference reference, string what)
    {
        int bad = 0;
        string first = "";
        for (int i = 0; i < reference.O.Length; i++)
        {
            double e = Math.Abs(got[i] - reference.O[i]);
            if (!(e <= reference.Bound[i / D]) && bad++ == 0)
                first = $"out[{i}] = {got[i]}, reference {reference.O[i]}, error {e} > bound {reference.Bound[i / D]}";
        }
        Assert.True(bad == 0, $"{what}: {bad} elements outside the bound; first: {first}");
        for (int i = reference.O.Length; i < got.Length; i++) Assert.True(float.IsNaN(got[i]), $"{what}: out[{i}] past the output was written");
    }

    public static IEnumerable<object[]> Cases()
    {
        // h, group, qLen, window, softcap, alibi, f16
        yield return new object[] { 2, 4, 1, 0, 0f, false, false };
        yield return new object[] { 2, 4, 4, 0, 0f, false, true };
        yield return new object[] { 1, 7, 1, 0, 0f, false, false };
        yield return new object[] { 2, 7, 4, 0, 0f, false, false };
        yield return new object[] { 2, 4, 4, 37, 0f, false, false };
        yield return new object[] { 2, 4, 1, 16, 0f, false, true };
        yield return new object[] { 2, 4, 1, 0, 5f, false, false };
        yield return new object[] { 1, 7, 4, 50, 3f, true, false };
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Decode_attention_matches_the_float64_reference(int h, int group, int qLen, int window, float softCap, bool alibi, bool f16)
    {
        var r = TestSetup.Random(out int seed);
        int[] lengths = new[] { qLen, 17, 64, 131, 300 };
        using Setup s = Build(r, h, lengths);
        int hq = h * group, batch = lengths.Length, count = batch * qLen * hq * D;
        float[] q = Values(r, count, outliers: false);
        if (f16) q = q.Select(v => (float)(Half)v).ToArray();
        float[]? slopes = alibi ? Enumerable.Range(0, hq).Select(i => (float)Math.Pow(2, -8.0 * (i + 1) / hq)).ToArray() : null;
        using LlmBuffer? slopeBuffer = slopes is null ? null : LlmBuffer.Wrap(s.Ctx, slopes.AsMemory());
        var o = new AttentionOptions { Layer = 1, NumQHeads = hq, QLen = qLen, Window = window, SoftCap = softCap, AlibiSlopes = slopeBuffer };
        Reference reference = Compute(s, q, o, slopes, f16);
        string what = $"seed {seed}, H {h}, group {group}, q_len {qLen}, window {window}, softcap {softCap}, alibi {alibi}, f16 {f16}";

        var outs = new Dictionary<int, float[]>();
        foreach (int splits in new[] { 0, 1, 5 })
        {
            float[] got = Run(s, q, o with { NumSplits = splits }, f16, count + 3);
            AssertClose(got, reference, $"{what}, splits {splits}");
            outs[splits] = got;
        }
        for (int i = 0; i < count; i++)
        {
            double d = Math.Abs(outs[5][i] - outs[1][i]);
            Assert.True(d <= reference.SplitBound[i / D], $"{what}: split 5 vs none differ by {d} at {i} (bound {reference.SplitBound[i / D]})");
        }
        // Same call, same bits.
        float[] again = Run(s, q, o, f16, count + 3);
        Assert.True(again.AsSpan(0, count).SequenceEqual(outs[0].AsSpan(0, count)), $"{what}: a repeated call differs");
    }

    private static float[] Run(Setup s, float[] q, AttentionOptions o, bool f16, int outLength)
    {
        if (!f16)
        {
            float[] output = Enumerable.Repeat(float.NaN, outLength).ToArray();
            s.Cache.DecodeAttention(s.Ids, q, output, o);
            return output;
        }
        Half[] oh = Enumerable.Repeat(Half.NaN, outLength).ToArray();
        s.Cache.DecodeAttention(s.Ids, q.Select(v => (Half)v).ToArray(), oh, o);
        return oh.Select(v => (float)v).ToArray();
    }

    [Fact]
    public void Buffer_span_and_in_place_calls_agree_bitwise_and_an_explicit_scale_is_used()
    {
        var r = TestSetup.Random(out int seed);
        using Setup s = Build(r, 2, new[] { 9, 40 });
        var o = new AttentionOptions { Layer = 0, NumQHeads = 8, QLen = 2, Scale = 0.05f };
        int count = 2 * 2 * 8 * D;
        float[] q = Values(r, count, false);
        float[] spans = new float[count];
        s.Cache.DecodeAttention(s.Ids, q, spans, o);
        AssertClose(spans, Compute(s, q, o, null, false), $"seed {seed}");

        using var qb = LlmBuffer.Allocate(s.Ctx, DType.F32, count);
        using var ob = LlmBuffer.Allocate(s.Ctx, DType.F32, count);
        qb.Upload<float>(q);
        ob.Fill(float.NaN);
        s.Cache.DecodeAttention(s.Ids, qb, ob, o);
        Assert.True(spans.SequenceEqual(ob.ToArray<float>()), $"seed {seed}: buffer overload differs");
        s.Cache.DecodeAttention(s.Ids, qb, qb, o); // output may be q itself
        Assert.True(spans.SequenceEqual(qb.ToArray<float>()), $"seed {seed}: in-place (buffers) differs");
        float[] inPlace = (float[])q.Clone();
        s.Cache.DecodeAttention(s.Ids, inPlace, inPlace, o);
        Assert.True(spans.SequenceEqual(inPlace), $"seed {seed}: in-place (spans) differs");
    }

    /// <summary>
    /// <see cref="AttentionOptions.Int8Query"/> reaches the native call: on INT8 and KIVI INT4 / INT2 key caches the
    /// output changes (the query is rounded to int8) and stays within 3 % (Frobenius, relative; 0.3-1.2 % over 30
    /// runs) of the exact-query output (the native KvQuant / KvKivi Int8Query tests check it against a float64
    /// reference of the rounded query); on f16 and FP8 key caches the flag is ignored and the output is bitwise the same.
    /// </summary>
    [Theory]
    [InlineData(KvFormat.Int8, true)]
    [InlineData(KvFormat.Int4, true)]
    [InlineData(KvFormat.Int2, true)]
    [InlineData(KvFormat.F16, false)]
    [InlineData(KvFormat.Fp8E4M3, false)]
    public void Int8_query_changes_quantized_key_caches_within_bound_and_nothing_else(KvFormat kFormat, bool changes)
    {
        var r = TestSetup.Random(out int seed);
        using var ctx = LlmContext.Create(Backend.Cpu);
        const int h = 2, hq = 8, len = 300;
        using var cache = KvCache.Create(ctx, new KvCacheOptions
        {
            NumLayers = 1, NumKvHeads = h, HeadDim = D, BlockSize = Block, CapacityTokens = 2 * len + 64,
            KFormat = kFormat, VFormat = KvFormat.Int8,
        });
        long[] ids = { cache.AddSequence(), cache.AddSequence() };
        foreach (long id in ids) cache.Append(id, 0, Values(r, len * h * D, true), Values(r, len * h * D, false));
        float[] q = Values(r, ids.Length * hq * D, false);
        float[] exact = Enumerable.Repeat(float.NaN, q.Length).ToArray(), rounded = (float[])exact.Clone();
        cache.DecodeAttention(ids, q, exact, new AttentionOptions { Layer = 0, NumQHeads = hq });
        cache.DecodeAttention(ids, q, rounded, new AttentionOptions { Layer = 0, NumQHeads = hq, Int8Query = true });
        if (!changes)
        {
            Assert.True(exact.SequenceEqual(rounded), $"seed {seed}: the flag changed a {kFormat} cache's output");
            return;
        }
        double num = 0, den = 0;
        for (int i = 0; i < q.Length; i++)
        {
            Assert.True(float.IsFinite(rounded[i]), $"seed {seed}: element {i} not written");
            num += (rounded[i] - exact[i]) * (double)(rounded[i] - exact[i]);
            den += exact[i] * (double)exact[i];
        }
        double rel = Math.Sqrt(num / den);
        Assert.True(rel > 0 && rel <= 0.03, $"seed {seed}: relative difference {rel}");
    }

    [Fact]
    public void Bad_arguments_name_the_parameter_and_leave_the_output_untouched()
    {
        var r = TestSetup.Random(out _);
        using Setup s = Build(r, 2, new[] { 3, 20 });
        var o = new AttentionOptions { Layer = 0, NumQHeads = 4 };
        int count = 2 * 4 * D;
        float[] q = Values(r, count, false), output = Enumerable.Repeat(float.NaN, count).ToArray();

        var e = Assert.Throws<ArgumentException>(() => s.Cache.DecodeAttention(s.Ids, q.AsSpan(1), output, o));
        Assert.Equal("q", e.ParamName);
        Assert.Contains($"{count - 1}", e.Message);
        Assert.Contains($"[batch=2, QLen=1, NumQHeads=4, HeadDim={D}]", e.Message);
        e = Assert.Throws<ArgumentException>(() => s.Cache.DecodeAttention(s.Ids, q, output.AsSpan(1), o));
        Assert.Equal("output", e.ParamName);
        float[] both = new float[count + 8];
        e = Assert.Throws<ArgumentException>(() => s.Cache.DecodeAttention(s.Ids, both.AsSpan(0, count), both.AsSpan(8), o));
        Assert.Equal("output", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => s.Cache.DecodeAttention(ReadOnlySpan<long>.Empty, q, output, o));
        Assert.Equal("sequenceIds", e.ParamName);

        void Member(string name, AttentionOptions bad)
        {
            var x = Assert.ThrowsAny<ArgumentException>(() => s.Cache.DecodeAttention(s.Ids, q, output, bad));
            Assert.Equal($"options.{name}", x.ParamName);
        }
        Member("Layer", o with { Layer = Layers });
        Member("Layer", o with { Layer = -1 });
        Member("NumQHeads", o with { NumQHeads = 3 });
        Member("NumQHeads", o with { NumQHeads = 2 * 17 });
        Member("QLen", o with { QLen = 9 });
        Member("QLen", o with { QLen = 0 });
        Member("NumSplits", o with { NumSplits = 257 });
        Member("Scale", o with { Scale = float.NaN });
        Member("SoftCap", o with { SoftCap = -1 });
        Member("Window", o with { Window = -1 });
        using var i32 = LlmBuffer.Allocate(s.Ctx, DType.I32, 4);
        using var shortSlopes = LlmBuffer.Allocate(s.Ctx, DType.F32, 3);
        Member("AlibiSlopes", o with { AlibiSlopes = i32 });
        Member("AlibiSlopes", o with { AlibiSlopes = shortSlopes });
        Assert.Throws<ArgumentNullException>(() => s.Cache.DecodeAttention(s.Ids, q, output, null!));

        using var qb = LlmBuffer.Allocate(s.Ctx, DType.F32, count);
        using var ob16 = LlmBuffer.Allocate(s.Ctx, DType.F16, count);
        e = Assert.Throws<ArgumentException>(() => s.Cache.DecodeAttention(s.Ids, qb, ob16, o));
        Assert.Equal("output", e.ParamName);
        using var qShort = LlmBuffer.Allocate(s.Ctx, DType.F32, count - 1);
        e = Assert.Throws<ArgumentException>(() => s.Cache.DecodeAttention(s.Ids, qShort, qb, o));
        Assert.Equal("q", e.ParamName);

        // Known only natively: unknown ids, and sequences shorter than QLen.
        var nf = Assert.Throws<KvSequenceNotFoundException>(() => s.Cache.DecodeAttention(new[] { 999L }, q.AsSpan(0, 4 * D), output, o));
        Assert.Equal(999L, nf.SequenceId);
        nf = Assert.Throws<KvSequenceNotFoundException>(() => s.Cache.DecodeAttention(new[] { s.Ids[0], 999L }, q, output, o));
        Assert.Null(nf.SequenceId);
        Assert.Contains("sequence_ids[1]", nf.NativeMessage);
        float[] q4 = new float[2 * 4 * 4 * D];
        var n = Assert.Throws<LlmNativeException>(() => s.Cache.DecodeAttention(s.Ids, q4, new float[q4.Length], o with { QLen = 4 }));
        Assert.Equal(LlmNativeStatus.InvalidArgument, n.Status);
        Assert.Equal("llmn_decode_attention", n.Function);
        Assert.Contains("q_len", n.NativeMessage);

        Assert.True(output.All(float.IsNaN), "a rejected call wrote the output");
    }

    [Fact]
    public void Batches_above_max_batch_are_rejected()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var cache = KvCache.Create(ctx, new KvCacheOptions { NumLayers = 1, NumKvHeads = 1, HeadDim = D, MaxBatch = 2, CapacityTokens = 64 });
        long a = cache.AddSequence();
        cache.Append(a, 0, new float[D], new float[D]);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
            cache.DecodeAttention(new[] { a, a, a }, new float[3 * D], new float[3 * D], new AttentionOptions { NumQHeads = 1 }));
        Assert.Equal("sequenceIds", e.ParamName);
        float[] o = new float[2 * D];
        cache.DecodeAttention(new[] { a, a }, new float[2 * D], o, new AttentionOptions { NumQHeads = 1 });
        Assert.True(o.All(v => v == 0f)); // one zero key/value row: the output is that row
    }
}
