// What to run (short or full configuration), set once by Program before BenchmarkDotNet enumerates the
// parameters, plus the shared CPU context and the cache of big benchmark data.
using System;
using System.Collections.Generic;
using System.Linq;

namespace LlmNative.Benchmarks;

/// <summary>A GEMM weight shape, K x N.</summary>
public readonly record struct GemmShape(int K, int N) : IComparable<GemmShape>
{
    public int CompareTo(GemmShape other) => (K, N).CompareTo((other.K, other.N));
    public override string ToString() => $"{K}x{N}";
}

/// <summary>A decode-attention case: batch size and context length (tokens per sequence, new token included).</summary>
public readonly record struct AttnCase(int Batch, int Context) : IComparable<AttnCase>
{
    public int CompareTo(AttnCase other) => (Batch, Context).CompareTo((other.Batch, other.Context));
    public override string ToString() => $"B{Batch}xT{Context}";
}

internal static class BenchSettings
{
    public static readonly GemmShape[] AllShapes = { new(4096, 4096), new(4096, 14336), new(14336, 4096), new(8192, 8192) };
    public static readonly int[] AllM = { 1, 4, 16, 64, 256 };
    public static readonly int[] ShortM = { 1, 16 };
    public static readonly int[] AllBatches = { 1, 8, 32 };
    public static readonly int[] AllContexts = { 1024, 4096, 16384, 32768 };
    public static readonly AttnCase[] ShortAttn = { new(1, 4096), new(1, 16384), new(8, 4096) };

    /// <summary>Llama-3-8B attention: 32 query heads, 8 KV heads, head_dim 128.</summary>
    public const int QHeads = 32, KvHeads = 8, HeadDim = 128;

    public static bool Full { get; set; }
    public static int[]? MOverride { get; set; }
    public static AttnCase[]? AttnOverride { get; set; }

    /// <summary>Threads of LlmNative's CPU pool; ORT's intra-op pool gets the same number.</summary>
    public static int Threads { get; set; }

    /// <summary>Every kernel rotates over copies of its data totalling at least this much (several times L3).</summary>
    public static long RotateBytes { get; set; } = 128L << 20;

    /// <summary>Largest KV data (all rotation copies of one implementation) an attention case may allocate.</summary>
    public static long MaxKvBytes { get; set; } = (long)(4.5 * (1L << 30));

    public static IEnumerable<int> GemmM => MOverride ?? (Full ? AllM : ShortM);
    public static IEnumerable<GemmShape> Shapes => AllShapes;

    public static IEnumerable<AttnCase> Attention => AttnOverride ??
        (Full ? AllBatches.SelectMany(b => AllContexts.Select(t => new AttnCase(b, t))) : ShortAttn);

    /// <summary>Number of copies so that copies * bytesEach >= RotateBytes (at least <paramref name="minimum"/>).</summary>
    public static int Copies(long bytesEach, int minimum = 1) =>
        (int)Math.Max(minimum, (RotateBytes + bytesEach - 1) / bytesEach);

    private static LlmContext? s_context;

    /// <summary>The CPU context every LlmNative object of the run lives on.</summary>
    public static LlmContext Context => s_context ??= LlmContext.Create(Backend.Cpu);
}

/// <summary>
/// Big benchmark data (weight sets, KV caches, ORT sessions) reused across the cases of one kind (e.g. all M
/// of one implementation), and freed as soon as a case of another kind starts, so at most one
/// implementation's data is resident.
/// </summary>
internal static class DataCache
{
    private static string? s_kind;
    private static readonly Dictionary<string, IDisposable> s_items = new();

    /// <summary>Keep every set alive across kinds (the paired mode needs all contenders of a case at once).</summary>
    public static bool KeepAll { get; set; }

    public static T Get<T>(string kind, string key, Func<T> create) where T : class, IDisposable
    {
        if (s_kind != kind && !KeepAll)
        {
            Clear();
            s_kind = kind;
        }
        if (s_items.TryGetValue(key, out IDisposable? existing)) return (T)existing;
        T created = create();
        s_items[key] = created;
        GC.Collect();
        return created;
    }

    public static void Clear()
    {
        foreach (IDisposable d in s_items.Values) d.Dispose();
        s_items.Clear();
        s_kind = null;
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }
}

/// <summary>A list of disposables disposed together.</summary>
internal sealed class DisposableList<T> : List<T>, IDisposable where T : IDisposable
{
    public void Dispose()
    {
        foreach (T item in this) item.Dispose();
        Clear();
    }
}
