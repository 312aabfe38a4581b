// LlmNative's side of the self-check, through the library's public C# API (Int4Weight.ImportGptq + Gemm.Int4,
// KvCache.Append + DecodeAttention), on the same data and references as the ORT checks.
using System;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using LlmNative.Benchmarks.Data;

namespace LlmNative.Benchmarks.Ours;

internal static class OursCheck
{
    /// <summary>LlmNative's default CPU path quantizes activations per 32-row block to int8 (gemm_int4_avx2.cpp).</summary>
    public const int Int8ActivationBlock = 32;

    public static bool Int4(TextWriter log, Int4Problem w, float[] x, int m, double[] reference,
        Func<Int4Problem, float[], int, Func<int, double>> bound)
    {
        var t = new GptqTensors((int)w.K, (int)w.N, w.GroupSize, symmetric: true, GptqFormat.V2, w.QWeight,
            ReadOnlyMemory<int>.Empty, w.ScalesF16);
        using Int4Weight weight = Int4Weight.ImportGptq(BenchSettings.Context, t);
        var y = Enumerable.Repeat(float.NaN, (int)(m * w.N)).ToArray();
        Gemm.Int4(x, weight, y, m);
        return SelfCheck.Compare(log, $"LlmNative INT4 GEMM group {w.GroupSize}", y, reference, bound(w, x, m));
    }

    public static bool Attention(TextWriter log, KvProblem kv, int[] lens, float[] q, double[] reference)
    {
        using var cache = KvCache.Create(BenchSettings.Context, new KvCacheOptions
        {
            NumLayers = 1,
            NumKvHeads = kv.KvHeads,
            HeadDim = kv.HeadDim,
            MaxBatch = lens.Length,
            CapacityTokens = lens.Sum() + 16 * lens.Length,
        });
        var ids = new long[lens.Length];
        for (int b = 0; b < lens.Length; ++b)
        {
            ids[b] = cache.AddSequence();
            var k = new ushort[lens[b] * kv.TokenElems];
            var v = new ushort[lens[b] * kv.TokenElems];
            kv.Fill(b, false, 0, lens[b], k);
            kv.Fill(b, true, 0, lens[b], v);
            cache.Append(ids[b], 0, MemoryMarshal.Cast<ushort, Half>(k), MemoryMarshal.Cast<ushort, Half>(v));
        }
        Half[] qh = q.Select(f => (Half)f).ToArray();
        bool ok = true;
        foreach (int splits in new[] { 0, 1, 4 })
        {
            var output = Enumerable.Repeat(Half.NaN, qh.Length).ToArray();
            cache.DecodeAttention(ids, qh, output, new AttentionOptions { Layer = 0, NumQHeads = kv.QHeads, NumSplits = splits });
            float[] got = output.Select(h => (float)h).ToArray();
            ok &= SelfCheck.Compare(log, $"LlmNative decode attention f16 (num_splits {splits})", got, reference, _ => 1.0 / 2048 + 1e-5);
        }
        return ok;
    }
}
