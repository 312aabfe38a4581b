// ORT MatMulNBits / GroupQueryAttention instances on our data, used by the self-check and the benchmarks.
using System;
using LlmNative.Benchmarks.Data;
using LlmNative.Benchmarks.Onnx;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace LlmNative.Benchmarks.Ort;

/// <summary>A MatMulNBits session over one INT4 weight (pre-packed by ORT at creation).</summary>
internal sealed class OrtMatMulNBits : IDisposable
{
    private readonly BoundSession _bound;

    public OrtMatMulNBits(Int4Problem w, int accuracyLevel)
    {
        K = w.K;
        N = w.N;
        byte[] model = OrtModels.MatMulNBits(w.K, w.N, w.GroupSize, accuracyLevel, w.OrtB(), w.OrtScales());
        using SessionOptions o = OrtModels.NewSessionOptions();
        _bound = new BoundSession(new InferenceSession(model, o), ownsSession: true);
    }

    public long K { get; }
    public long N { get; }

    /// <summary>Binds A [m, K] and Y [m, N] f32 (caller memory, used by every following <see cref="Run"/>).</summary>
    public void Bind(NativeArray a, NativeArray y, int m) => _bound.Bind((b, keep) =>
    {
        b.BindInput("A", keep(OrtTensors.Over(a, TensorElementType.Float, m, K)));
        b.BindOutput("Y", keep(OrtTensors.Over(y, TensorElementType.Float, m, N)));
    });

    public void Run() => _bound.Run();

    public void Dispose() => _bound.Dispose();
}

/// <summary>
/// GroupQueryAttention decode over ORT-layout KV (BNSH past buffers of capacity <see cref="Capacity"/>) that
/// the caller fills; past and present are the same memory, so ORT appends the new token in place.
/// </summary>
internal sealed class OrtGqaBatch : IDisposable
{
    private readonly BoundSession _bound;
    private readonly NativeArray _q, _k, _v, _out, _seqlens, _total;

    public OrtGqaBatch(InferenceSession session, bool f16, KvProblem p, int batch, int capacity)
    {
        F16 = f16;
        Batch = batch;
        Capacity = capacity;
        Problem = p;
        int es = f16 ? 2 : 4;
        TensorElementType t = f16 ? TensorElementType.Float16 : TensorElementType.Float;
        long qElems = (long)batch * p.QHeads * p.HeadDim, kvTok = (long)batch * p.KvHeads * p.HeadDim;
        long pastElems = (long)batch * p.KvHeads * capacity * p.HeadDim;
        PastKey = new NativeArray(pastElems * es);
        PastValue = new NativeArray(pastElems * es);
        _q = new NativeArray(qElems * es);
        _k = new NativeArray(kvTok * es);
        _v = new NativeArray(kvTok * es);
        _out = new NativeArray(qElems * es);
        _seqlens = new NativeArray(batch * 4L);
        _total = new NativeArray(4);
        _seqlens.Touch();
        _total.Touch();
        _bound = new BoundSession(session, ownsSession: false);
        _bound.Bind((b, keep) =>
        {
            b.BindInput("query", keep(OrtTensors.Over(_q, t, batch, 1, (long)p.QHeads * p.HeadDim)));
            b.BindInput("key", keep(OrtTensors.Over(_k, t, batch, 1, (long)p.KvHeads * p.HeadDim)));
            b.BindInput("value", keep(OrtTensors.Over(_v, t, batch, 1, (long)p.KvHeads * p.HeadDim)));
            OrtValue pk = keep(OrtTensors.Over(PastKey, t, batch, p.KvHeads, capacity, p.HeadDim));
            OrtValue pv = keep(OrtTensors.Over(PastValue, t, batch, p.KvHeads, capacity, p.HeadDim));
            b.BindInput("past_key", pk);
            b.BindInput("past_value", pv);
            b.BindInput("seqlens_k", keep(OrtTensors.Over(_seqlens, TensorElementType.Int32, batch)));
            b.BindInput("total_sequence_length", keep(OrtTensors.Over(_total, TensorElementType.Int32)));
            b.BindOutput("output", keep(OrtTensors.Over(_out, t, batch, 1, (long)p.QHeads * p.HeadDim)));
            b.BindOutput("present_key", pk);
            b.BindOutput("present_value", pv);
        });
    }

    public bool F16 { get; }
    public int Batch { get; }
    public int Capacity { get; }
    public KvProblem Problem { get; }
    public NativeArray PastKey { get; }
    public NativeArray PastValue { get; }
    public long KvBytes(long tokensTotal) => tokensTotal * Problem.TokenElems * 2L * (F16 ? 2 : 4);

    /// <summary>
    /// Fills sequence <paramref name="b"/> with tokens 0..len-1 of the problem's sequence <paramref name="index"/>:
    /// 0..len-2 in the past buffers, len-1 as the new key/value; sets seqlens_k[b] = len - 1.
    /// </summary>
    public unsafe void Fill(int b, long index, int len)
    {
        KvProblem p = Problem;
        int d = p.HeadDim, per = p.TokenElems;
        if (len < 1 || len > Capacity) throw new ArgumentOutOfRangeException(nameof(len), len, $"1..{Capacity}");
        const int Chunk = 256;
        var tmp = new ushort[Chunk * per];
        for (int pass = 0; pass < 2; ++pass)
        {
            bool value = pass == 1;
            NativeArray past = value ? PastValue : PastKey;
            for (int t0 = 0; t0 < len; t0 += Chunk)
            {
                int n = Math.Min(Chunk, len - t0);
                p.Fill(index, value, t0, n, tmp);
                for (int t = 0; t < n; ++t)
                    for (int h = 0; h < p.KvHeads; ++h)
                    {
                        ReadOnlySpan<ushort> src = tmp.AsSpan((t * p.KvHeads + h) * d, d);
                        int tok = t0 + t;
                        if (tok == len - 1)
                            Store(value ? _v : _k, ((long)b * p.KvHeads + h) * d, src);
                        else
                            Store(past, (((long)b * p.KvHeads + h) * Capacity + tok) * d, src);
                    }
            }
        }
        ((int*)_seqlens.Pointer)[b] = len - 1;
        int* total = (int*)_total.Pointer;
        if (*total < len) *total = len;
    }

    /// <summary>Sets the queries [batch, qHeads*headDim] from floats.</summary>
    public void SetQuery(ReadOnlySpan<float> q)
    {
        for (int i = 0; i < q.Length; ++i)
        {
            if (F16) _q.AsSpan<Half>(i, 1)[0] = (Half)q[i];
            else _q.AsSpan<float>(i, 1)[0] = q[i];
        }
    }

    public float Output(long i) => F16 ? (float)_out.AsSpan<Half>(i, 1)[0] : _out.AsSpan<float>(i, 1)[0];

    public void Run() => _bound.Run();

    private void Store(NativeArray dst, long elemOffset, ReadOnlySpan<ushort> src)
    {
        if (F16)
        {
            src.CopyTo(dst.AsSpan<ushort>(elemOffset, src.Length));
        }
        else
        {
            Span<float> f = dst.AsSpan<float>(elemOffset, src.Length);
            for (int i = 0; i < src.Length; ++i) f[i] = KvProblem.HalfToFloat(src[i]);
        }
    }

    public void Dispose()
    {
        _bound.Dispose();
        PastKey.Dispose();
        PastValue.Dispose();
        _q.Dispose();
        _k.Dispose();
        _v.Dispose();
        _out.Dispose();
        _seqlens.Dispose();
        _total.Dispose();
    }

    public static InferenceSession CreateSession(bool f16, KvProblem p)
    {
        byte[] model = OrtModels.GroupQueryAttention(f16 ? OnnxType.Float16 : OnnxType.Float, p.QHeads, p.KvHeads, p.HeadDim);
        using SessionOptions o = OrtModels.NewSessionOptions();
        return new InferenceSession(model, o);
    }
}
