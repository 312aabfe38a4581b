// Decode attention on the CPU, Llama-3-8B shape (32 query heads, 8 KV heads, head_dim 128, one new token):
// LlmNative's paged f16 KV cache with split-KV chosen per call (num_splits 0) and without splitting
// (num_splits 1), against ONNX Runtime's com.microsoft GroupQueryAttention (f16 and f32 past KV, past and
// present bound to the same memory so ORT appends in place instead of copying the cache) on the same
// K/V/query values and thread count. Every sequence holds Context tokens, the new one included. Each
// implementation rotates over copies of the batch (>= RotateBytes of KV in all) so the KV comes from DRAM.
// LlmNative's call is attention only (its new token was appended beforehand); ORT's includes writing the
// new token's K/V into the past buffer (one token: negligible next to reading Context tokens).
using System;
using System.Collections.Generic;
using System.Linq;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using LlmNative.Benchmarks.Data;
using LlmNative.Benchmarks.Ort;
using Microsoft.ML.OnnxRuntime;

namespace LlmNative.Benchmarks.Benchmarks;

public class DecodeAttention
{
    private OursKv? _ours;
    private OrtKv? _ort;
    private LlmBuffer? _q, _out;
    private readonly AttentionOptions _auto = new() { Layer = 0, NumQHeads = BenchSettings.QHeads, NumSplits = 0 };
    private readonly AttentionOptions _noSplit = new() { Layer = 0, NumQHeads = BenchSettings.QHeads, NumSplits = 1 };
    private int _next;

    [ParamsSource(nameof(CaseValues))]
    public AttnCase Case { get; set; }

    public static IEnumerable<AttnCase> CaseValues => BenchSettings.Attention;

    internal static KvProblem Problem { get; } =
        new(BenchSettings.QHeads, BenchSettings.KvHeads, BenchSettings.HeadDim, seed: 4242);

    /// <summary>K+V bytes one call reads: batch x context tokens x kvHeads x headDim x 2 (K and V) x element size.</summary>
    public static long KvBytes(AttnCase c, bool f32) =>
        (long)c.Batch * c.Context * BenchSettings.KvHeads * BenchSettings.HeadDim * 2 * (f32 ? 4 : 2);

    [GlobalSetup(Targets = new[] { nameof(Ours_Auto), nameof(Ours_NoSplit) })]
    public void SetupOurs()
    {
        AttnCase c = Case;
        _ours = DataCache.Get("ours-attn-" + c, "ours-" + c, () => OursKv.Build(c));
        LlmContext ctx = BenchSettings.Context;
        int qElems = c.Batch * BenchSettings.QHeads * BenchSettings.HeadDim;
        float[] q = Problem.Query(c.Batch);
        var qh = new Half[qElems];
        for (int i = 0; i < qElems; ++i) qh[i] = (Half)q[i];
        _q = LlmBuffer.Allocate(ctx, DType.F16, qElems);
        _q.Upload<Half>(qh);
        _out = LlmBuffer.Allocate(ctx, DType.F16, qElems);
        _next = 0;
        AdjacentStream.Sample(AdjacentKey(c));
        if (_ours.Validated) return;
        _ours.Validated = true;
        foreach (AttentionOptions o in new[] { _auto, _noSplit })
        {
            _out.Upload<Half>(Enumerable.Repeat(Half.NaN, qElems).ToArray());
            _ours.Cache.DecodeAttention(_ours.Ids[0], _q, _out, o);
            Half[] got = _out.ToArray<Half>();
            Validate($"LlmNative decode attention (num_splits {o.NumSplits})", c, q, i => (float)got[i]);
        }
    }

    [GlobalSetup(Target = nameof(Ort_F16))] public void SetupOrtF16() => SetupOrt(f16: true);
    [GlobalSetup(Target = nameof(Ort_F32))] public void SetupOrtF32() => SetupOrt(f16: false);

    /// <summary>LlmNative, f16 paged cache, split-KV chosen per call.</summary>
    [Benchmark]
    public void Ours_Auto() => _ours!.Cache.DecodeAttention(NextIds(), _q!, _out!, _auto);

    /// <summary>LlmNative without split-KV (one partition per sequence and KV head).</summary>
    [Benchmark]
    public void Ours_NoSplit() => _ours!.Cache.DecodeAttention(NextIds(), _q!, _out!, _noSplit);

    /// <summary>ORT GroupQueryAttention, f16 past KV (converted to f32 per head inside ORT).</summary>
    [Benchmark] public void Ort_F16() => NextOrt().Run();

    /// <summary>ORT GroupQueryAttention, f32 past KV (twice the bytes).</summary>
    [Benchmark] public void Ort_F32() => NextOrt().Run();

    private long[] NextIds()
    {
        long[][] ids = _ours!.Ids;
        long[] r = ids[_next];
        if (++_next == ids.Length) _next = 0;
        return r;
    }

    private OrtGqaBatch NextOrt()
    {
        List<OrtGqaBatch> l = _ort!.Batches;
        OrtGqaBatch b = l[_next];
        if (++_next == l.Count) _next = 0;
        return b;
    }

    private void SetupOrt(bool f16)
    {
        AttnCase c = Case;
        _ort = DataCache.Get($"ort-gqa-{(f16 ? "f16" : "f32")}-{c}", $"ort-{(f16 ? "f16" : "f32")}-{c}", () => OrtKv.Build(c, f16));
        _next = 0;
        OrtGqaBatch first = _ort.Batches[0];
        first.Run();
        Validate($"ORT GroupQueryAttention {(f16 ? "f16" : "f32")}", c, Problem.Query(c.Batch), i => first.Output(i));
    }

    /// <summary>Batch element 0 of copy 0 against the float64 reference (sequence index 0).</summary>
    private static void Validate(string what, AttnCase c, float[] q, Func<int, float> output)
    {
        KvProblem p = Problem;
        int per = p.TokenElems;
        var k = new ushort[(long)c.Context * per];
        var v = new ushort[(long)c.Context * per];
        p.Fill(0, false, 0, c.Context, k);
        p.Fill(0, true, 0, c.Context, v);
        double[] reference = p.Reference(q.AsSpan(0, p.QHeads * p.HeadDim), k, v, c.Context);
        var got = new float[reference.Length];
        for (int i = 0; i < got.Length; ++i) got[i] = output(i);
        // |values| < 1: half an fp16 ulp of the output plus an f32 accumulation allowance growing with the context
        double bound = 1.0 / 2048 + c.Context * Math.Pow(2, -22);
        if (!SelfCheck.Compare(Console.Out, $"{what} {c}", got, reference, _ => bound))
            throw new InvalidOperationException($"{what} at {c} does not match the float64 reference; not measuring it");
    }

    private static void CheckBudget(AttnCase c, int copies, bool f32, string what)
    {
        long bytes = KvBytes(c, f32) * copies;
        if (bytes > BenchSettings.MaxKvBytes)
            throw new NotSupportedException(
                $"skipped: {what} at {c} needs {bytes / (double)(1L << 30):F2} GiB of KV ({copies} copies), over the " +
                $"--max-kv-gib budget of {BenchSettings.MaxKvBytes / (double)(1L << 30):F2} GiB");
    }

    /// <summary>Key of a case's <see cref="AdjacentStream"/> samples.</summary>
    public static string AdjacentKey(AttnCase c) => "attn|" + c;

    [GlobalCleanup(Targets = new[] { nameof(Ours_Auto), nameof(Ours_NoSplit) })]
    public void CleanupOurs()
    {
        AdjacentStream.Sample(AdjacentKey(Case));
        Cleanup();
    }

    [GlobalCleanup(Targets = new[] { nameof(Ort_F16), nameof(Ort_F32) })]
    public void Cleanup()
    {
        _q?.Dispose();
        _out?.Dispose();
        _q = _out = null;
    }

    private sealed class OursKv : IDisposable
    {
        private OursKv(KvCache cache, long[][] ids)
        {
            Cache = cache;
            Ids = ids;
        }

        public KvCache Cache { get; }
        public long[][] Ids { get; }
        public bool Validated { get; set; }

        public static OursKv Build(AttnCase c)
        {
            int copies = BenchSettings.Copies(KvBytes(c, f32: false));
            CheckBudget(c, copies, f32: false, "LlmNative");
            KvProblem p = Problem;
            var cache = KvCache.Create(BenchSettings.Context, new KvCacheOptions
            {
                NumLayers = 1,
                NumKvHeads = p.KvHeads,
                HeadDim = p.HeadDim,
                MaxBatch = c.Batch,
                CapacityTokens = (long)copies * c.Batch * (c.Context + 16),
            });
            var ids = new long[copies][];
            const int Chunk = 512;
            var k = new ushort[Chunk * p.TokenElems];
            var v = new ushort[Chunk * p.TokenElems];
            for (int cp = 0; cp < copies; ++cp)
            {
                ids[cp] = new long[c.Batch];
                for (int b = 0; b < c.Batch; ++b)
                {
                    long id = cache.AddSequence();
                    ids[cp][b] = id;
                    long index = (long)cp * c.Batch + b;
                    for (int t0 = 0; t0 < c.Context; t0 += Chunk)
                    {
                        int n = Math.Min(Chunk, c.Context - t0);
                        p.Fill(index, false, t0, n, k);
                        p.Fill(index, true, t0, n, v);
                        cache.Append(id, 0, MemoryMarshal.Cast<ushort, Half>(k.AsSpan(0, n * p.TokenElems)),
                            MemoryMarshal.Cast<ushort, Half>(v.AsSpan(0, n * p.TokenElems)));
                    }
                }
            }
            return new OursKv(cache, ids);
        }

        public void Dispose() => Cache.Dispose();
    }

    private sealed class OrtKv : IDisposable
    {
        private OrtKv(InferenceSession session) => Session = session;

        public InferenceSession Session { get; }
        public List<OrtGqaBatch> Batches { get; } = new();

        public static OrtKv Build(AttnCase c, bool f16)
        {
            int copies = BenchSettings.Copies(KvBytes(c, f32: !f16));
            CheckBudget(c, copies, f32: !f16, $"ORT GQA {(f16 ? "f16" : "f32")}");
            var kv = new OrtKv(OrtGqaBatch.CreateSession(f16, Problem));
            float[] q = Problem.Query(c.Batch);
            for (int cp = 0; cp < copies; ++cp)
            {
                var batch = new OrtGqaBatch(kv.Session, f16, Problem, c.Batch, capacity: c.Context);
                kv.Batches.Add(batch);
                for (int b = 0; b < c.Batch; ++b) batch.Fill(b, (long)cp * c.Batch + b, c.Context);
                batch.SetQuery(q);
            }
            return kv;
        }

        public void Dispose()
        {
            foreach (OrtGqaBatch b in Batches) b.Dispose();
            Batches.Clear();
            Session.Dispose();
        }
    }
}
