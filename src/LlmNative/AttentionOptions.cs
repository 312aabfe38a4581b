using System;

namespace LlmNative;

/// <summary>
/// Parameters of one <see cref="KvCache.DecodeAttention(ReadOnlySpan{long}, LlmBuffer, LlmBuffer, AttentionOptions)"/>
/// call. For a sequence of length L (its <see cref="QLen"/> new tokens already appended) query i sits at position
/// L − QLen + i and sees keys 0 … L − QLen + i (causal among the new tokens), or only the last <see cref="Window"/>
/// of them; scores are <c>Scale · q·k</c>, soft-capped (<c>c·tanh(s/c)</c>) when <see cref="SoftCap"/> &gt; 0, plus
/// <c>slope[h] · (key − query)</c> with ALiBi. Query head h reads KV head h / (NumQHeads / NumKvHeads) (GQA).
/// </summary>
/// <example>
/// <code>
/// var options = new AttentionOptions { Layer = 3, NumQHeads = 32 };   // Scale defaults to 1/sqrt(head_dim)
/// cache.DecodeAttention(new long[] { seqA, seqB }, q, output, options);
/// </code>
/// </example>
public sealed record AttentionOptions
{
    /// <summary>The layer whose keys and values are read.</summary>
    public int Layer { get; init; }

    /// <summary>Query heads: a multiple of the cache's NumKvHeads, at most 16 per KV head.</summary>
    public int NumQHeads { get; init; }

    /// <summary>New tokens per sequence, 1..8 (speculative decoding verifies several at once). Default 1.</summary>
    public int QLen { get; init; } = 1;

    /// <summary>Split-KV partitions per (sequence, KV head): 0 chooses per call, 1 disables splitting, n forces n (at most 256).</summary>
    public int NumSplits { get; init; }

    /// <summary>Softmax scale; null means 1 / sqrt(HeadDim).</summary>
    public float? Scale { get; init; }

    /// <summary>Logit soft-cap c (Gemma 2: 50); 0 disables.</summary>
    public float SoftCap { get; init; }

    /// <summary>Sliding window: attend to the last <c>Window</c> positions (including the query's own); 0 disables.</summary>
    public int Window { get; init; }

    /// <summary>Optional ALiBi slopes: an F32 buffer of NumQHeads values on the cache's device.</summary>
    public LlmBuffer? AlibiSlopes { get; init; }

    /// <summary>
    /// Lets the backend compute q·k against quantized keys as exact integer dot products of an int8 query: a row x
    /// becomes round-to-nearest-even(x · 127 / max|x|) with scale max|x| / 127. The CPU backend does so for
    /// <see cref="KvFormat.Int8"/> keys (x = the query after <see cref="Scale"/>) and for KIVI
    /// <see cref="KvFormat.Int4"/> / <see cref="KvFormat.Int2"/> keys (x = that query times each full block's
    /// per-channel key scales; the f16 residual block keeps f32). Other key formats and the CUDA backend ignore it.
    /// Measured 1.15-1.27x faster attention for INT8 keys and up to 1.27x for KIVI keys on an AVX-512 VNNI CPU (less
    /// with AVX2); adds the query's rounding (at most
    /// max|x| / 254 per element) to the scores. Measured speed and output error: docs/kv-quantization.md.
    /// Default false (exact f32 queries).
    /// </summary>
    public bool Int8Query { get; init; }

    internal const int MaxQueryLength = 8;
    internal const int MaxSplits = 256;
    internal const int MaxGqaGroup = 16;

    /// <summary>Checks every member against a cache; exceptions name the member as <c>options.X</c>.</summary>
    internal void Validate(KvCacheOptions cache, LlmContext context)
    {
        const string P = "options";
        if (Layer < 0 || Layer >= cache.NumLayers)
            throw new ArgumentOutOfRangeException($"{P}.{nameof(Layer)}", Layer,
                $"{P}.{nameof(Layer)} must be in [0, {cache.NumLayers}) (the cache's NumLayers), got {Layer}");
        if (NumQHeads < 1 || NumQHeads % cache.NumKvHeads != 0 || NumQHeads / cache.NumKvHeads > MaxGqaGroup)
            throw new ArgumentOutOfRangeException($"{P}.{nameof(NumQHeads)}", NumQHeads,
                $"{P}.{nameof(NumQHeads)} must be a positive multiple of the cache's NumKvHeads ({cache.NumKvHeads}), " +
                $"at most {MaxGqaGroup} per KV head, got {NumQHeads}");
        if (QLen < 1 || QLen > MaxQueryLength)
            throw new ArgumentOutOfRangeException($"{P}.{nameof(QLen)}", QLen,
                $"{P}.{nameof(QLen)} must be in [1, {MaxQueryLength}], got {QLen}");
        if (NumSplits < 0 || NumSplits > MaxSplits)
            throw new ArgumentOutOfRangeException($"{P}.{nameof(NumSplits)}", NumSplits,
                $"{P}.{nameof(NumSplits)} must be in [0, {MaxSplits}] (0 = automatic, 1 = no split), got {NumSplits}");
        if (Scale is float s && (float.IsNaN(s) || float.IsInfinity(s)))
            throw new ArgumentOutOfRangeException($"{P}.{nameof(Scale)}", s, $"{P}.{nameof(Scale)} must be finite, got {s}");
        if (float.IsNaN(SoftCap) || float.IsInfinity(SoftCap) || SoftCap < 0)
            throw new ArgumentOutOfRangeException($"{P}.{nameof(SoftCap)}", SoftCap,
                $"{P}.{nameof(SoftCap)} must be finite and >= 0 (0 disables), got {SoftCap}");
        if (Window < 0)
            throw new ArgumentOutOfRangeException($"{P}.{nameof(Window)}", Window,
                $"{P}.{nameof(Window)} must be >= 0 (0 disables), got {Window}");
        if (AlibiSlopes is LlmBuffer a)
        {
            string name = $"{P}.{nameof(AlibiSlopes)}";
            Argument.OnDeviceOf(a, context, name);
            Argument.DTypeIn(a, name, DType.F32);
            if (a.Count < NumQHeads)
                throw new ArgumentException($"{name} has {a.Count} elements but needs one per query head ({NumQHeads})", name);
        }
    }

    /// <summary>The effective softmax scale for a head dimension.</summary>
    internal float EffectiveScale(int headDim) => Scale ?? (float)(1.0 / Math.Sqrt(headDim));
}
