// INT4 weight-only GEMM on the CPU: LlmNative (GPTQ-imported symmetric weights, group 128 and 32) vs
// LlmNative's dense f32 baseline vs ONNX Runtime's com.microsoft MatMulNBits (block 32/128, accuracy_level
// 1 = f32 compute, 4 = int8 activations) on the SAME quantized values and scales, f32 activations,
// the same thread count. Each implementation rotates over enough distinct weight copies (>= RotateBytes,
// several times the L3) that every call streams its weight from DRAM. Before measuring, copy 0 of each
// implementation is checked against a float64 reference on sampled columns at the benchmark's own shape.
using System;
using System.Collections.Generic;
using BenchmarkDotNet.Attributes;
using LlmNative.Benchmarks.Data;
using LlmNative.Benchmarks.Ort;

namespace LlmNative.Benchmarks.Benchmarks;

public class Int4Gemm
{
    private LlmBuffer? _x, _y;
    private NativeArray? _ortA, _ortY;
    private List<Int4Weight>? _ours;
    private List<LlmBuffer>? _dense;
    private List<OrtMatMulNBits>? _ort;
    private int _next;

    [ParamsSource(nameof(ShapeValues))]
    public GemmShape Shape { get; set; }

    [ParamsSource(nameof(MValues))]
    public int M { get; set; }

    public static IEnumerable<GemmShape> ShapeValues => BenchSettings.Shapes;
    public static IEnumerable<int> MValues => BenchSettings.GemmM;

    [GlobalSetup(Target = nameof(Ours_G128))] public void SetupOursG128() => SetupOurs(128);
    [GlobalSetup(Target = nameof(Ours_G32))] public void SetupOursG32() => SetupOurs(32);
    [GlobalSetup(Target = nameof(Dense_F32))] public void SetupDense() => SetupDenseCore();
    [GlobalSetup(Target = nameof(Ort_B128_Acc1))] public void SetupOrt128A1() => SetupOrt(128, 1);
    [GlobalSetup(Target = nameof(Ort_B128_Acc4))] public void SetupOrt128A4() => SetupOrt(128, 4);
    [GlobalSetup(Target = nameof(Ort_B32_Acc1))] public void SetupOrt32A1() => SetupOrt(32, 1);
    [GlobalSetup(Target = nameof(Ort_B32_Acc4))] public void SetupOrt32A4() => SetupOrt(32, 4);

    /// <summary>LlmNative INT4, group 128 (GPTQ sym), f32 activations.</summary>
    [Benchmark] public void Ours_G128() => Gemm.Int4(_x!, NextOurs(), _y!, M);

    /// <summary>LlmNative INT4, group 32.</summary>
    [Benchmark] public void Ours_G32() => Gemm.Int4(_x!, NextOurs(), _y!, M);

    /// <summary>LlmNative dense f32 baseline (4x the INT4 weight bytes at best, 8x the codes).</summary>
    [Benchmark] public void Dense_F32() => Gemm.Dense(_x!, NextDense(), _y!, M, Shape.K, Shape.N);

    [Benchmark] public void Ort_B128_Acc1() => NextOrt().Run();
    [Benchmark] public void Ort_B128_Acc4() => NextOrt().Run();
    [Benchmark] public void Ort_B32_Acc1() => NextOrt().Run();
    [Benchmark] public void Ort_B32_Acc4() => NextOrt().Run();

    private Int4Weight NextOurs()
    {
        List<Int4Weight> l = _ours!;
        Int4Weight w = l[_next];
        if (++_next == l.Count) _next = 0;
        return w;
    }

    private LlmBuffer NextDense()
    {
        List<LlmBuffer> l = _dense!;
        LlmBuffer w = l[_next];
        if (++_next == l.Count) _next = 0;
        return w;
    }

    private OrtMatMulNBits NextOrt()
    {
        List<OrtMatMulNBits> l = _ort!;
        OrtMatMulNBits s = l[_next];
        if (++_next == l.Count) _next = 0;
        return s;
    }

    /// <summary>Seed of copy <paramref name="copy"/> of a shape/group: the same for LlmNative and ORT.</summary>
    private static ulong Seed(GemmShape s, int group, int copy) => (ulong)s.K * 1_000_003UL + (ulong)s.N * 7919UL + (ulong)group * 131UL + (ulong)copy;

    /// <summary>Logical INT4 bytes of one weight (codes + fp16 scales): the W bytes/s numerator for every INT4 variant.</summary>
    public static long Int4Bytes(GemmShape s, int group) => (long)s.K * s.N / 2 + (long)s.K / group * s.N * 2;

    public static long DenseBytes(GemmShape s) => (long)s.K * s.N * 4;

    private void SetupActivations(out float[] x)
    {
        x = SelfCheck.Activations(M, Shape.K, seed: 17);
        LlmContext ctx = BenchSettings.Context;
        _x = LlmBuffer.Allocate(ctx, DType.F32, (long)M * Shape.K);
        _x.Upload<float>(x);
        _y = LlmBuffer.Allocate(ctx, DType.F32, (long)M * Shape.N);
        _next = 0;
    }

    private void SetupOurs(int group)
    {
        GemmShape shape = Shape;
        OursInt4Set set = DataCache.Get($"gemm-{shape}", $"ours-g{group}", () => OursInt4Set.Build(shape, group));
        _ours = set.Weights;
        SetupActivations(out float[] x);
        Gemm.Int4(_x!, _ours[0], _y!, M);
        float[] y = _y!.ToArray<float>();
        Validate($"LlmNative INT4 g{group}", set.First, x, y, Ours.OursCheck.Int8ActivationBlock);
        if (group == 128) AdjacentStream.Sample(AdjacentKey(shape, M));
    }

    /// <summary>Key of a case's <see cref="AdjacentStream"/> samples (LlmNative g128).</summary>
    public static string AdjacentKey(GemmShape s, int m) => $"int4|{s}|{m}";

    private void SetupDenseCore()
    {
        GemmShape shape = Shape;
        DenseSet set = DataCache.Get($"gemm-{shape}", "dense-f32", () => DenseSet.Build(shape));
        _dense = set.Weights;
        SetupActivations(out _);
    }

    private void SetupOrt(int block, int accuracyLevel)
    {
        GemmShape shape = Shape;
        OrtSet set = DataCache.Get($"gemm-{shape}", $"ort-b{block}-acc{accuracyLevel}", () => OrtSet.Build(shape, block, accuracyLevel));
        _ort = set.Sessions;
        float[] x = SelfCheck.Activations(M, Shape.K, seed: 17);
        _ortA = new NativeArray((long)M * Shape.K * 4);
        _ortY = new NativeArray((long)M * Shape.N * 4);
        x.AsSpan().CopyTo(_ortA.AsSpan<float>(0, x.Length));
        _ortY.Touch();
        foreach (OrtMatMulNBits s in _ort) s.Bind(_ortA, _ortY, M);
        _next = 0;
        _ort[0].Run();
        float[] y = _ortY.AsSpan<float>(0, M * Shape.N).ToArray();
        Validate($"ORT MatMulNBits b{block} acc{accuracyLevel}", set.First, x, y, accuracyLevel == 4 ? block : 0);
    }

    private void Validate(string what, Int4Problem w, float[] x, float[] y, int int8Block)
    {
        if (!SelfCheck.SampledInt4(Console.Out, $"{what} {Shape} M={M}", w, x, M, y, int8Block))
            throw new InvalidOperationException($"{what} at {Shape}, M={M} does not match the float64 reference; not measuring it");
    }

    [GlobalCleanup(Target = nameof(Ours_G128))]
    public void CleanupOursG128()
    {
        AdjacentStream.Sample(AdjacentKey(Shape, M));
        Cleanup();
    }

    [GlobalCleanup(Targets = new[] { nameof(Ours_G32), nameof(Dense_F32), nameof(Ort_B128_Acc1), nameof(Ort_B128_Acc4),
                                     nameof(Ort_B32_Acc1), nameof(Ort_B32_Acc4) })]
    public void Cleanup()
    {
        _x?.Dispose();
        _y?.Dispose();
        _x = _y = null;
        _ortA?.Dispose();
        _ortY?.Dispose();
        _ortA = _ortY = null;
        // the weight sets stay in DataCache for the next case of the same kind
    }

    private sealed class OursInt4Set : IDisposable
    {
        public List<Int4Weight> Weights { get; } = new();
        public Int4Problem First { get; private set; } = null!;

        public static OursInt4Set Build(GemmShape shape, int group)
        {
            var set = new OursInt4Set();
            int copies = BenchSettings.Copies(Int4Bytes(shape, group));
            for (int c = 0; c < copies; ++c)
            {
                Int4Problem p = Int4Problem.Random(shape.K, shape.N, group, Seed(shape, group, c));
                if (c == 0) set.First = p;
                var t = new GptqTensors(shape.K, shape.N, group, symmetric: true, GptqFormat.V2, p.QWeight,
                    ReadOnlyMemory<int>.Empty, p.ScalesF16);
                set.Weights.Add(Int4Weight.ImportGptq(BenchSettings.Context, t));
            }
            return set;
        }

        public void Dispose()
        {
            foreach (Int4Weight w in Weights) w.Dispose();
            Weights.Clear();
        }
    }

    private sealed class DenseSet : IDisposable
    {
        public List<LlmBuffer> Weights { get; } = new();

        public static DenseSet Build(GemmShape shape)
        {
            var set = new DenseSet();
            long count = (long)shape.K * shape.N;
            int copies = BenchSettings.Copies(DenseBytes(shape), minimum: 2);
            var chunk = new float[1 << 20];
            for (int c = 0; c < copies; ++c)
            {
                var rng = new SplitMix64(Seed(shape, 0, c));
                LlmBuffer b = LlmBuffer.Allocate(BenchSettings.Context, DType.F32, count);
                for (long off = 0; off < count; off += chunk.Length)
                {
                    int n = (int)Math.Min(chunk.Length, count - off);
                    for (int i = 0; i < n; ++i) chunk[i] = rng.NextSigned() * 0.05f;
                    b.Upload<float>(chunk.AsSpan(0, n), off);
                }
                set.Weights.Add(b);
            }
            return set;
        }

        public void Dispose()
        {
            foreach (LlmBuffer b in Weights) b.Dispose();
            Weights.Clear();
        }
    }

    private sealed class OrtSet : IDisposable
    {
        public List<OrtMatMulNBits> Sessions { get; } = new();
        public Int4Problem First { get; private set; } = null!;

        public static OrtSet Build(GemmShape shape, int block, int accuracyLevel)
        {
            var set = new OrtSet();
            int copies = BenchSettings.Copies(Int4Bytes(shape, block));
            for (int c = 0; c < copies; ++c)
            {
                Int4Problem p = Int4Problem.Random(shape.K, shape.N, block, Seed(shape, block, c));
                if (c == 0) set.First = p;
                set.Sessions.Add(new OrtMatMulNBits(p, accuracyLevel));
            }
            return set;
        }

        public void Dispose()
        {
            foreach (OrtMatMulNBits s in Sessions) s.Dispose();
            Sessions.Clear();
        }
    }
}
