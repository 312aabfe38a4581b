using System;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>Storage format of a KV cache's keys or values (<c>llmn_kv_format</c>).</summary>
/// <remarks>
/// <see cref="BF16"/> is CUDA only; every other format works on the CPU and CUDA backends. Keys and values choose their
/// formats independently (for example Int4 keys with F16 values); CUDA decode attention does not mix F16 with BF16, nor
/// Int4/Int2 with Int8/Fp8E4M3 (an <see cref="LlmNativeException"/> of status <see cref="LlmNativeStatus.Unsupported"/>
/// at the call; the CPU backend reads every mix). The Int4/Int2 CUDA kernels are compiled but have not yet run on a GPU
/// (docs/STATUS.md). Int4/Int2 (KIVI) keep the newest,
/// not-yet-full block of each sequence in f16 (the residual) and quantize it when it fills; such a cache holds at
/// most <see cref="KvCacheOptions.MaxBatch"/> live sequences (one residual slot each). Accuracy and sizes:
/// docs/kv-quantization.md.
/// </remarks>
/// <example>
/// <code>
/// var options = new KvCacheOptions { NumLayers = 32, NumKvHeads = 8, HeadDim = 128, KFormat = KvFormat.F16, VFormat = KvFormat.F16, CapacityTokens = 65536 };
/// </code>
/// </example>
public enum KvFormat
{
    /// <summary>IEEE half precision.</summary>
    F16 = 0,

    /// <summary>bfloat16 (CUDA only).</summary>
    BF16 = 1,

    /// <summary>Symmetric int8, one f32 scale per (token, head).</summary>
    Int8 = 2,

    /// <summary>OCP FP8 E4M3, one f32 scale per (token, head).</summary>
    Fp8E4M3 = 3,

    /// <summary>
    /// 4-bit KIVI (asymmetric, f16 scale and minimum): keys per channel over the tokens of a block, values per token
    /// in groups of <see cref="KvCacheOptions.ValueGroupSize"/> channels; the partial newest block stays f16.
    /// </summary>
    Int4 = 4,

    /// <summary>2-bit KIVI, laid out like <see cref="Int4"/> (four codes per byte).</summary>
    Int2 = 5,
}

/// <summary>
/// The shape and size of a <see cref="KvCache"/>. Set exactly one of <see cref="CapacityTokens"/> and
/// <see cref="CapacityBytes"/>. Values are checked by <see cref="KvCache.Create"/> and the planner
/// (<see cref="ArgumentException"/>s name the member, for example <c>options.HeadDim</c>).
/// </summary>
/// <example>
/// <code>
/// // Llama-3-8B: 32 layers, 8 KV heads of 128 channels, 4 GiB of cache
/// var options = new KvCacheOptions { NumLayers = 32, NumKvHeads = 8, HeadDim = 128, CapacityBytes = 4L &lt;&lt; 30 };
/// long tokens = KvCache.TokensForBudget(options, 4L &lt;&lt; 30);
/// using var cache = KvCache.Create(ctx, options);
/// </code>
/// </example>
public sealed record KvCacheOptions
{
    /// <summary>Transformer layers (1..4096); each has its own K/V rows and lengths.</summary>
    public int NumLayers { get; init; }

    /// <summary>Key/value heads per layer (1..1024).</summary>
    public int NumKvHeads { get; init; }

    /// <summary>Channels per head: 64, 80, 96, 128 or 256.</summary>
    public int HeadDim { get; init; }

    /// <summary>Tokens per block (the paging unit): 8, 16, 32, 64, 128 or 256. Default 16.</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>Storage format of keys. Default <see cref="KvFormat.F16"/>.</summary>
    public KvFormat KFormat { get; init; } = KvFormat.F16;

    /// <summary>Storage format of values. Default <see cref="KvFormat.F16"/>.</summary>
    public KvFormat VFormat { get; init; } = KvFormat.F16;

    /// <summary>
    /// Channels per value group for <see cref="KvFormat.Int4"/>/<see cref="KvFormat.Int2"/> values: 32, 64 or 128, and it
    /// must divide <see cref="HeadDim"/> (so head_dim 80 cannot have Int4/Int2 values). Required (non-zero) when
    /// <see cref="VFormat"/> is Int4 or Int2; ignored (0 allowed) otherwise.
    /// </summary>
    public int ValueGroupSize { get; init; }

    /// <summary>
    /// Largest batch of one decode-attention call (sizes the workspace); 0 = 256. With Int4/Int2 keys or values it is
    /// also the most live sequences (each has an f16 residual slot of NumLayers x NumKvHeads x BlockSize x HeadDim x 2
    /// bytes per Int4/Int2 side, allocated up front).
    /// </summary>
    public int MaxBatch { get; init; }

    /// <summary>Pool size in tokens (rounded up to whole blocks); 0 when <see cref="CapacityBytes"/> is used.</summary>
    public long CapacityTokens { get; init; }

    /// <summary>Pool size as a byte budget (whole blocks that fit); 0 when <see cref="CapacityTokens"/> is used.</summary>
    public long CapacityBytes { get; init; }

    /// <summary>Checks every field in C# (the native library repeats the checks); capacity only when <paramref name="forCreate"/>.</summary>
    internal void Validate(string paramName, bool forCreate)
    {
        OneOf(NumLayers, 1, 4096, nameof(NumLayers), paramName);
        OneOf(NumKvHeads, 1, 1024, nameof(NumKvHeads), paramName);
        In(HeadDim, new[] { 64, 80, 96, 128, 256 }, nameof(HeadDim), paramName);
        In(BlockSize, new[] { 8, 16, 32, 64, 128, 256 }, nameof(BlockSize), paramName);
        Defined(KFormat, nameof(KFormat), paramName);
        Defined(VFormat, nameof(VFormat), paramName);
        In(ValueGroupSize, new[] { 0, 32, 64, 128 }, nameof(ValueGroupSize), paramName);
        if (VFormat is KvFormat.Int4 or KvFormat.Int2)
        {
            if (ValueGroupSize == 0)
                throw Range(nameof(ValueGroupSize), ValueGroupSize, $"must be 32, 64 or 128 when VFormat is {VFormat}", paramName);
            if (HeadDim % ValueGroupSize != 0)
                throw Range(nameof(ValueGroupSize), ValueGroupSize,
                    $"must divide HeadDim ({HeadDim}) when VFormat is {VFormat}", paramName);
        }
        OneOf(MaxBatch, 0, 65536, nameof(MaxBatch), paramName);
        if (!forCreate) return;
        if (CapacityTokens < 0) throw Range(nameof(CapacityTokens), CapacityTokens, "must be >= 0", paramName);
        if (CapacityBytes < 0) throw Range(nameof(CapacityBytes), CapacityBytes, "must be >= 0", paramName);
        if ((CapacityTokens > 0) == (CapacityBytes > 0))
            throw new ArgumentException(
                $"exactly one of {paramName}.CapacityTokens ({CapacityTokens}) and {paramName}.CapacityBytes ({CapacityBytes}) must be > 0",
                $"{paramName}.{nameof(CapacityTokens)}");
    }

    internal llmn_kv_cache_desc ToNative() => new()
    {
        num_layers = NumLayers,
        num_kv_heads = NumKvHeads,
        head_dim = HeadDim,
        block_size = BlockSize,
        k_format = (int)KFormat,
        v_format = (int)VFormat,
        value_group_size = ValueGroupSize,
        max_batch = MaxBatch,
        capacity_tokens = CapacityTokens,
        capacity_bytes = CapacityBytes,
    };

    internal static KvCacheOptions FromNative(in llmn_kv_cache_desc d) => new()
    {
        NumLayers = d.num_layers,
        NumKvHeads = d.num_kv_heads,
        HeadDim = d.head_dim,
        BlockSize = d.block_size,
        KFormat = (KvFormat)d.k_format,
        VFormat = (KvFormat)d.v_format,
        ValueGroupSize = d.value_group_size,
        MaxBatch = d.max_batch,
        CapacityTokens = d.capacity_tokens,
        CapacityBytes = d.capacity_bytes,
    };

    private static void OneOf(long value, long min, long max, string member, string paramName)
    {
        if (value < min || value > max) throw Range(member, value, $"must be in [{min}, {max}]", paramName);
    }

    private static void In(int value, int[] allowed, string member, string paramName)
    {
        if (Array.IndexOf(allowed, value) < 0)
            throw Range(member, value, $"must be {string.Join(", ", allowed)}", paramName);
    }

    private static void Defined(KvFormat value, string member, string paramName)
    {
        if (!Enum.IsDefined(typeof(KvFormat), value)) throw Range(member, (int)value, "must be a defined KvFormat", paramName);
    }

    private static ArgumentOutOfRangeException Range(string member, object value, string what, string paramName) =>
        new($"{paramName}.{member}", value, $"{paramName}.{member} {what}, got {value}");
}

/// <summary>A snapshot of a <see cref="KvCache"/>'s block pool (<see cref="KvCache.Stats"/>).</summary>
/// <example>
/// <code>
/// KvCacheStats s = cache.Stats;
/// Console.WriteLine($"{s.FreeBlocks} of {s.TotalBlocks} blocks free, {s.Sequences} sequences, {s.PoolBytes} bytes");
/// </code>
/// </example>
public readonly struct KvCacheStats : IEquatable<KvCacheStats>
{
    /// <summary>Creates a snapshot.</summary>
    /// <param name="totalBlocks">Blocks in the pool.</param>
    /// <param name="freeBlocks">Blocks not used by any sequence.</param>
    /// <param name="sequences">Live sequences.</param>
    /// <param name="poolBytes">Bytes of the pool allocation.</param>
    public KvCacheStats(long totalBlocks, long freeBlocks, long sequences, long poolBytes)
    {
        TotalBlocks = totalBlocks;
        FreeBlocks = freeBlocks;
        Sequences = sequences;
        PoolBytes = poolBytes;
    }

    /// <summary>Blocks in the pool.</summary>
    public long TotalBlocks { get; }

    /// <summary>Blocks not used by any sequence (shared blocks count once).</summary>
    public long FreeBlocks { get; }

    /// <summary>Live sequences.</summary>
    public long Sequences { get; }

    /// <summary>Bytes of the pool allocation in the context's memory.</summary>
    public long PoolBytes { get; }

    /// <inheritdoc/>
    public bool Equals(KvCacheStats other) =>
        TotalBlocks == other.TotalBlocks && FreeBlocks == other.FreeBlocks && Sequences == other.Sequences && PoolBytes == other.PoolBytes;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is KvCacheStats s && Equals(s);

    /// <inheritdoc/>
    public override int GetHashCode() => (TotalBlocks, FreeBlocks, Sequences, PoolBytes).GetHashCode();

    /// <summary>Equality of all four numbers.</summary>
    /// <param name="left">A snapshot.</param>
    /// <param name="right">Another snapshot.</param>
    /// <returns>True when equal.</returns>
    public static bool operator ==(KvCacheStats left, KvCacheStats right) => left.Equals(right);

    /// <summary>Inequality of any of the four numbers.</summary>
    /// <param name="left">A snapshot.</param>
    /// <param name="right">Another snapshot.</param>
    /// <returns>True when different.</returns>
    public static bool operator !=(KvCacheStats left, KvCacheStats right) => !left.Equals(right);

    /// <inheritdoc/>
    public override string ToString() =>
        $"KvCacheStats({FreeBlocks} of {TotalBlocks} blocks free, {Sequences} sequences, {PoolBytes} bytes)";
}

/// <summary>
/// The KV cache has no free block left for an append or fork (<see cref="LlmNativeStatus.CapacityExceeded"/>).
/// The cache is unchanged: remove or truncate sequences, or create a larger cache, and retry.
/// </summary>
/// <example>
/// <code>
/// try { cache.Append(seq, layer, k, v); }
/// catch (KvCacheFullException) { cache.RemoveSequence(oldest); cache.Append(seq, layer, k, v); }
/// </code>
/// </example>
public sealed class KvCacheFullException : LlmNativeException
{
    /// <summary>Creates the exception from the native failure.</summary>
    /// <param name="nativeMessage">The native message (says how many blocks were needed and free).</param>
    /// <param name="function">The C function that failed.</param>
    public KvCacheFullException(string nativeMessage, string? function = null)
        : base(LlmNativeStatus.CapacityExceeded, nativeMessage, function)
    {
    }
}

/// <summary>
/// A sequence id is not live in the KV cache (removed, never added, or from another cache):
/// <see cref="LlmNativeStatus.NotFound"/>. Nothing was changed.
/// </summary>
/// <example>
/// <code>
/// try { cache.GetLength(id, 0); }
/// catch (KvSequenceNotFoundException e) { Console.WriteLine($"sequence {e.SequenceId} is gone"); }
/// </code>
/// </example>
public sealed class KvSequenceNotFoundException : LlmNativeException
{
    /// <summary>Creates the exception from the native failure.</summary>
    /// <param name="sequenceId">The unknown id, when the call named one id.</param>
    /// <param name="nativeMessage">The native message (names the parameter and the id).</param>
    /// <param name="function">The C function that failed.</param>
    public KvSequenceNotFoundException(long? sequenceId, string nativeMessage, string? function = null)
        : base(LlmNativeStatus.NotFound, nativeMessage, function)
    {
        SequenceId = sequenceId;
    }

    /// <summary>The id that was not found; null when a batch call failed (the message names its index and id).</summary>
    public long? SequenceId { get; }
}
