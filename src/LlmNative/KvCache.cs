using System;
using System.Runtime.CompilerServices;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>
/// A paged KV cache: one pool of fixed-size blocks in a context's memory, shared by any number of sequences.
/// Each sequence has one block table for all layers and its own length per layer. Sequences are identified by
/// <see cref="long"/> ids the cache assigns (never reused). Forks share full blocks (copy-on-write).
/// </summary>
/// <remarks>
/// <para>Failures leave the cache unchanged: a full pool throws <see cref="KvCacheFullException"/>; an id that is
/// not live throws <see cref="KvSequenceNotFoundException"/> (both are <see cref="LlmNativeException"/>s, with
/// <see cref="LlmNativeStatus.CapacityExceeded"/> / <see cref="LlmNativeStatus.NotFound"/>). Arguments C# can check
/// (layer range, shapes, dtypes, devices) throw <see cref="ArgumentException"/>s naming the parameter.</para>
/// <para>The cache keeps its context alive: it stays usable after the context is disposed, until it is disposed itself.
/// One cache may be used from several threads (the native side locks), but the usual context rule applies to the
/// kernels: one thread at a time per context.</para>
/// </remarks>
/// <example>
/// <code>
/// using var ctx = LlmContext.Create(Backend.Cpu);
/// using var cache = KvCache.Create(ctx, new KvCacheOptions { NumLayers = 32, NumKvHeads = 8, HeadDim = 128, CapacityTokens = 8192 });
/// long seq = cache.AddSequence();
/// cache.Append(seq, layer: 0, k, v);                          // spans [tokens, 8, 128]
/// cache.DecodeAttention(new[] { seq }, q, output, new AttentionOptions { Layer = 0, NumQHeads = 32 });
/// long fork = cache.Fork(seq);                                // beam / speculative branch
/// cache.Truncate(fork, 10);
/// </code>
/// </example>
public sealed class KvCache : IDisposable
{
    private KvCache(KvCacheHandle handle, LlmContext context, KvCacheOptions options)
    {
        Handle = handle;
        Context = context;
        Options = options;
    }

    /// <summary>The context whose memory holds the pool and whose kernels read it.</summary>
    public LlmContext Context { get; }

    /// <summary>
    /// The cache's resolved description: <see cref="KvCacheOptions.MaxBatch"/> filled in and the capacity given as
    /// <see cref="KvCacheOptions.CapacityTokens"/> in whole blocks (<see cref="KvCacheOptions.CapacityBytes"/> 0).
    /// </summary>
    public KvCacheOptions Options { get; }

    /// <summary>True after <see cref="Dispose"/>.</summary>
    public bool IsDisposed => Handle.IsDisposeRequested;

    internal KvCacheHandle Handle { get; }

    private int TokenElements => Options.NumKvHeads * Options.HeadDim;

    /// <summary>Creates a cache and allocates its whole pool.</summary>
    /// <param name="context">The context whose memory holds the pool.</param>
    /// <param name="options">Shape, formats and capacity (exactly one of CapacityTokens and CapacityBytes).</param>
    /// <returns>The cache; dispose it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> or <paramref name="options"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="ArgumentException">A member of <paramref name="options"/> is out of range (named as <c>options.Member</c>).</exception>
    /// <exception cref="LlmNativeException">
    /// <see cref="LlmNativeStatus.Unsupported"/>: a format this build or backend cannot store (BF16 on the CPU).
    /// <see cref="LlmNativeStatus.OutOfMemory"/>: the pool could not be allocated.
    /// </exception>
    public static unsafe KvCache Create(LlmContext context, KvCacheOptions options)
    {
        Argument.NotNull(context, nameof(context));
        Argument.NotNull(options, nameof(options));
        options.Validate(nameof(options), forCreate: true);
        using NativeHandle.Lease ctx = context.Acquire(nameof(context));
        llmn_kv_cache_desc desc = options.ToNative();
        var handle = new KvCacheHandle();
        try
        {
            IntPtr raw;
            Native.Check(llmn_kv_cache_create(ctx.Pointer, &desc, &raw));
            handle.Initialize(raw, context.Handle); // the cache keeps its context alive
            llmn_kv_cache_desc resolved;
            Native.Check(llmn_kv_cache_get_desc(raw, &resolved));
            return new KvCache(handle, context, KvCacheOptions.FromNative(resolved));
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Planner: bytes one token takes in one layer (keys and values with their scales). No context needed.</summary>
    /// <param name="options">The cache shape (capacity members are ignored).</param>
    /// <returns>Bytes per token per layer (rounded up when a block's padding does not divide evenly).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    /// <exception cref="ArgumentException">A member of <paramref name="options"/> is out of range.</exception>
    /// <exception cref="LlmNativeException">A format the native library does not implement yet (<see cref="LlmNativeStatus.Unsupported"/>).</exception>
    public static unsafe long BytesPerToken(KvCacheOptions options)
    {
        Argument.NotNull(options, nameof(options));
        options.Validate(nameof(options), forCreate: false);
        Native.EnsureLoaded();
        llmn_kv_cache_desc desc = options.ToNative();
        long bytes;
        Native.Check(llmn_kv_cache_bytes_per_token(&desc, &bytes));
        return bytes;
    }

    /// <summary>Planner: how many tokens (in every layer) a cache with a byte budget holds, in whole blocks.</summary>
    /// <param name="options">The cache shape (capacity members are ignored).</param>
    /// <param name="budgetBytes">The byte budget, at least 0.</param>
    /// <returns>Tokens that <see cref="Create"/> with <c>CapacityBytes = budgetBytes</c> would hold.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="budgetBytes"/> is negative.</exception>
    /// <exception cref="ArgumentException">A member of <paramref name="options"/> is out of range.</exception>
    /// <exception cref="LlmNativeException">A format the native library does not implement yet (<see cref="LlmNativeStatus.Unsupported"/>).</exception>
    public static unsafe long TokensForBudget(KvCacheOptions options, long budgetBytes)
    {
        Argument.NotNull(options, nameof(options));
        options.Validate(nameof(options), forCreate: false);
        Argument.AtLeast(budgetBytes, 0, nameof(budgetBytes));
        Native.EnsureLoaded();
        llmn_kv_cache_desc desc = options.ToNative();
        long tokens;
        Native.Check(llmn_kv_cache_tokens_for_budget(&desc, budgetBytes, &tokens));
        return tokens;
    }

    /// <summary>A snapshot of the pool: total and free blocks, live sequences, pool bytes.</summary>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public unsafe KvCacheStats Stats
    {
        get
        {
            using NativeHandle.Lease c = Handle.Acquire();
            llmn_kv_cache_stats s;
            Native.Check(llmn_kv_cache_get_stats(c.Pointer, &s));
            return new KvCacheStats(s.total_blocks, s.free_blocks, s.num_sequences, s.pool_bytes);
        }
    }

    /// <summary>Adds an empty sequence.</summary>
    /// <returns>Its id, unique for the cache's lifetime.</returns>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public unsafe long AddSequence()
    {
        using NativeHandle.Lease c = Handle.Acquire();
        long id;
        Check(llmn_kv_cache_add_sequence(c.Pointer, &id), null);
        return id;
    }

    /// <summary>Removes a sequence and frees the blocks no other sequence shares.</summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    public void RemoveSequence(long sequenceId)
    {
        using NativeHandle.Lease c = Handle.Acquire();
        Check(llmn_kv_cache_remove_sequence(c.Pointer, sequenceId), sequenceId);
    }

    /// <summary>
    /// A new sequence with the same contents as <paramref name="sourceId"/>: blocks full in every layer are shared
    /// (copy-on-write), the partial ones copied.
    /// </summary>
    /// <param name="sourceId">A live sequence.</param>
    /// <returns>The new sequence's id.</returns>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sourceId"/> is not live.</exception>
    /// <exception cref="KvCacheFullException">No free blocks for the partial blocks' copies; nothing changed.</exception>
    public unsafe long Fork(long sourceId)
    {
        using NativeHandle.Lease c = Handle.Acquire();
        long id;
        Check(llmn_kv_cache_fork_sequence(c.Pointer, sourceId, &id), sourceId);
        return id;
    }

    /// <summary>Shortens a sequence to <paramref name="length"/> tokens in every layer (layers already shorter stay).</summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <param name="length">The new length, at least 0.</param>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="length"/> is negative.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    public void Truncate(long sequenceId, long length)
    {
        Argument.AtLeast(length, 0, nameof(length));
        using NativeHandle.Lease c = Handle.Acquire();
        Check(llmn_kv_cache_truncate_sequence(c.Pointer, sequenceId, length), sequenceId);
    }

    /// <summary>Tokens stored for a sequence in one layer.</summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <param name="layer">0 ≤ layer &lt; NumLayers.</param>
    /// <returns>The length.</returns>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> is out of range.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    public unsafe long GetLength(long sequenceId, int layer)
    {
        CheckLayer(layer);
        using NativeHandle.Lease c = Handle.Acquire();
        long length;
        Check(llmn_kv_cache_get_sequence_length(c.Pointer, sequenceId, layer, &length), sequenceId);
        return length;
    }

    /// <summary>
    /// Appends <paramref name="numTokens"/> tokens' keys and values to one layer of a sequence. All or nothing: a
    /// full cache or a NaN/Inf value (or one the storage format cannot hold) leaves the cache unchanged.
    /// </summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <param name="layer">0 ≤ layer &lt; NumLayers.</param>
    /// <param name="k">Keys [numTokens, NumKvHeads, HeadDim]: F32 or F16 (BF16 too on CUDA), on the cache's device.</param>
    /// <param name="v">Values, same shape and dtype rules as <paramref name="k"/>.</param>
    /// <param name="numTokens">Tokens to append, at least 1.</param>
    /// <exception cref="ArgumentNullException"><paramref name="k"/> or <paramref name="v"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The cache or a buffer was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> or <paramref name="numTokens"/> is out of range.</exception>
    /// <exception cref="ArgumentException">A buffer is on another device, has a wrong dtype or too few elements.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    /// <exception cref="KvCacheFullException">Not enough free blocks; nothing changed.</exception>
    /// <exception cref="LlmNativeException">A value is NaN/Inf or overflows the storage format (<see cref="LlmNativeStatus.InvalidArgument"/>); nothing changed.</exception>
    public void Append(long sequenceId, int layer, LlmBuffer k, LlmBuffer v, int numTokens)
    {
        Argument.NotNull(k, nameof(k));
        Argument.NotNull(v, nameof(v));
        CheckLayer(layer);
        Argument.AtLeast(numTokens, 1, nameof(numTokens));
        long needed = (long)numTokens * TokenElements;
        string shape = TokenShape(nameof(numTokens), numTokens);
        CheckKvBuffer(k, nameof(k), needed, shape, input: true);
        CheckKvBuffer(v, nameof(v), needed, shape, input: true);
        using NativeHandle.Lease c = Handle.Acquire();
        using NativeHandle.Lease kl = k.Acquire(nameof(k));
        using NativeHandle.Lease vl = v.Acquire(nameof(v));
        Check(llmn_kv_cache_append(c.Pointer, sequenceId, layer, kl.Pointer, vl.Pointer, numTokens), sequenceId);
    }

    /// <summary>
    /// Appends keys and values from caller memory (CPU caches; no copy besides the cache's own). The token count is
    /// <c>k.Length / (NumKvHeads · HeadDim)</c>; <paramref name="v"/> has the same length.
    /// </summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <param name="layer">0 ≤ layer &lt; NumLayers.</param>
    /// <param name="k">Keys [tokens, NumKvHeads, HeadDim], at least one token.</param>
    /// <param name="v">Values [tokens, NumKvHeads, HeadDim].</param>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="InvalidOperationException">The cache is on a CUDA context (use the <see cref="LlmBuffer"/> overload).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> is out of range.</exception>
    /// <exception cref="ArgumentException">A length is not a positive multiple of NumKvHeads · HeadDim, or the lengths differ.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    /// <exception cref="KvCacheFullException">Not enough free blocks; nothing changed.</exception>
    /// <exception cref="LlmNativeException">A value is NaN/Inf or overflows the storage format; nothing changed.</exception>
    public void Append(long sequenceId, int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v) =>
        AppendSpans(sequenceId, layer, k, v, DType.F32);

#if NET5_0_OR_GREATER
    /// <summary>The <see cref="Half"/> form of <see cref="Append(long, int, ReadOnlySpan{float}, ReadOnlySpan{float})"/>.</summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <param name="layer">0 ≤ layer &lt; NumLayers.</param>
    /// <param name="k">Keys [tokens, NumKvHeads, HeadDim], at least one token.</param>
    /// <param name="v">Values [tokens, NumKvHeads, HeadDim].</param>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="InvalidOperationException">The cache is on a CUDA context.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> is out of range.</exception>
    /// <exception cref="ArgumentException">A length is not a positive multiple of NumKvHeads · HeadDim, or the lengths differ.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    /// <exception cref="KvCacheFullException">Not enough free blocks; nothing changed.</exception>
    /// <exception cref="LlmNativeException">A value is NaN/Inf; nothing changed.</exception>
    public void Append(long sequenceId, int layer, ReadOnlySpan<Half> k, ReadOnlySpan<Half> v) =>
        AppendSpans(sequenceId, layer, k, v, DType.F16);
#endif

    /// <summary>Reads tokens [start, start + count) of one layer back, dequantized, into k and v.</summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <param name="layer">0 ≤ layer &lt; NumLayers.</param>
    /// <param name="start">First token, at least 0.</param>
    /// <param name="count">Tokens; start + count must not exceed the sequence's length in the layer.</param>
    /// <param name="k">Receives keys [count, NumKvHeads, HeadDim]: an F32 or F16 buffer on the cache's device.</param>
    /// <param name="v">Receives values, same shape and dtype rules.</param>
    /// <exception cref="ArgumentNullException"><paramref name="k"/> or <paramref name="v"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The cache or a buffer was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/>, <paramref name="start"/> or <paramref name="count"/> is out of range.</exception>
    /// <exception cref="ArgumentException">A buffer is on another device, has a wrong dtype or too few elements.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    public void Read(long sequenceId, int layer, long start, long count, LlmBuffer k, LlmBuffer v)
    {
        Argument.NotNull(k, nameof(k));
        Argument.NotNull(v, nameof(v));
        CheckReadRange(sequenceId, layer, start, count);
        long needed = count * TokenElements;
        string shape = TokenShape(nameof(count), count);
        CheckKvBuffer(k, nameof(k), needed, shape, input: false);
        CheckKvBuffer(v, nameof(v), needed, shape, input: false);
        using NativeHandle.Lease c = Handle.Acquire();
        using NativeHandle.Lease kl = k.Acquire(nameof(k));
        using NativeHandle.Lease vl = v.Acquire(nameof(v));
        Check(llmn_kv_cache_read(c.Pointer, sequenceId, layer, start, count, kl.Pointer, vl.Pointer), sequenceId);
    }

    /// <summary>
    /// Reads tokens back into caller memory (CPU caches): <c>k.Length / (NumKvHeads · HeadDim)</c> tokens from
    /// <paramref name="start"/>; <paramref name="v"/> has the same length.
    /// </summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <param name="layer">0 ≤ layer &lt; NumLayers.</param>
    /// <param name="start">First token.</param>
    /// <param name="k">Receives keys [tokens, NumKvHeads, HeadDim].</param>
    /// <param name="v">Receives values [tokens, NumKvHeads, HeadDim].</param>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="InvalidOperationException">The cache is on a CUDA context.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> or <paramref name="start"/> is out of range, or the tokens run past the sequence's end.</exception>
    /// <exception cref="ArgumentException">A length is not a multiple of NumKvHeads · HeadDim, or the lengths differ.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    public void Read(long sequenceId, int layer, long start, Span<float> k, Span<float> v) =>
        ReadSpans(sequenceId, layer, start, k, v, DType.F32);

#if NET5_0_OR_GREATER
    /// <summary>The <see cref="Half"/> form of <see cref="Read(long, int, long, Span{float}, Span{float})"/>.</summary>
    /// <param name="sequenceId">A live sequence.</param>
    /// <param name="layer">0 ≤ layer &lt; NumLayers.</param>
    /// <param name="start">First token.</param>
    /// <param name="k">Receives keys [tokens, NumKvHeads, HeadDim].</param>
    /// <param name="v">Receives values [tokens, NumKvHeads, HeadDim].</param>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="InvalidOperationException">The cache is on a CUDA context.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> or <paramref name="start"/> is out of range, or the tokens run past the sequence's end.</exception>
    /// <exception cref="ArgumentException">A length is not a multiple of NumKvHeads · HeadDim, or the lengths differ.</exception>
    /// <exception cref="KvSequenceNotFoundException"><paramref name="sequenceId"/> is not live.</exception>
    public void Read(long sequenceId, int layer, long start, Span<Half> k, Span<Half> v) =>
        ReadSpans(sequenceId, layer, start, k, v, DType.F16);
#endif

    /// <summary>
    /// Split-KV decode attention for a batch of sequences of different lengths, on the cache's context. Each
    /// sequence must already hold its <see cref="AttentionOptions.QLen"/> new tokens in <see cref="AttentionOptions.Layer"/>.
    /// </summary>
    /// <param name="sequenceIds">The batch: 1..MaxBatch live sequences (duplicates allowed).</param>
    /// <param name="q">Queries [batch, QLen, NumQHeads, HeadDim]: F32/F16 on the CPU, F16/BF16 on CUDA.</param>
    /// <param name="output">Receives [batch, QLen, NumQHeads, HeadDim], the dtype of <paramref name="q"/> (may be q itself).</param>
    /// <param name="options">Layer, heads, QLen, splits, scale, soft-cap, window, ALiBi.</param>
    /// <exception cref="ArgumentNullException"><paramref name="q"/>, <paramref name="output"/> or <paramref name="options"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The cache or a buffer was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A member of <paramref name="options"/> is out of range (named <c>options.Member</c>), or the batch exceeds MaxBatch.</exception>
    /// <exception cref="ArgumentException"><paramref name="sequenceIds"/> is empty, or a buffer is on another device, has a wrong dtype or too few elements.</exception>
    /// <exception cref="KvSequenceNotFoundException">A sequence id is not live.</exception>
    /// <exception cref="LlmNativeException">A sequence holds fewer than QLen tokens in the layer (<see cref="LlmNativeStatus.InvalidArgument"/>), or the backend failed.</exception>
    public unsafe void DecodeAttention(ReadOnlySpan<long> sequenceIds, LlmBuffer q, LlmBuffer output, AttentionOptions options)
    {
        Argument.NotNull(q, nameof(q));
        Argument.NotNull(output, nameof(output));
        long needed = CheckAttention(sequenceIds, options);
        CheckQueryBuffer(q, nameof(q), needed, sequenceIds.Length, options);
        CheckQueryBuffer(output, nameof(output), needed, sequenceIds.Length, options);
        if (output.DType != q.DType)
            throw new ArgumentException($"output has dtype {output.DType} but q has dtype {q.DType}; they must match", nameof(output));
        using NativeHandle.Lease c = Handle.Acquire();
        using NativeHandle.Lease ql = q.Acquire(nameof(q));
        using NativeHandle.Lease ol = output.Acquire(nameof(output));
        using NativeHandle.Lease al = options.AlibiSlopes?.Acquire("options.AlibiSlopes") ?? NativeHandle.Lease.None;
        llmn_attention_params p = ToNative(options);
        fixed (long* ids = sequenceIds)
            Check(llmn_decode_attention(ContextPointer, c.Pointer, ids, sequenceIds.Length, ql.Pointer, al.Pointer, ol.Pointer, &p),
                sequenceIds.Length == 1 ? sequenceIds[0] : null);
    }

    /// <summary>
    /// Decode attention on caller memory (CPU caches; the spans are wrapped for the call, not copied). Same
    /// semantics as the <see cref="LlmBuffer"/> overload.
    /// </summary>
    /// <param name="sequenceIds">The batch: 1..MaxBatch live sequences.</param>
    /// <param name="q">Queries [batch, QLen, NumQHeads, HeadDim].</param>
    /// <param name="output">Receives [batch, QLen, NumQHeads, HeadDim]; may be the same memory as q, must not partly overlap it.</param>
    /// <param name="options">Layer, heads, QLen, splits, scale, soft-cap, window, ALiBi.</param>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="InvalidOperationException">The cache is on a CUDA context.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A member of <paramref name="options"/> is out of range, or the batch exceeds MaxBatch.</exception>
    /// <exception cref="ArgumentException"><paramref name="sequenceIds"/> is empty, a span is too short, or output partly overlaps q.</exception>
    /// <exception cref="KvSequenceNotFoundException">A sequence id is not live.</exception>
    /// <exception cref="LlmNativeException">A sequence holds fewer than QLen tokens in the layer.</exception>
    public void DecodeAttention(ReadOnlySpan<long> sequenceIds, ReadOnlySpan<float> q, Span<float> output, AttentionOptions options) =>
        AttentionSpans(sequenceIds, q, output, options, DType.F32);

#if NET5_0_OR_GREATER
    /// <summary>The <see cref="Half"/> form of <see cref="DecodeAttention(ReadOnlySpan{long}, ReadOnlySpan{float}, Span{float}, AttentionOptions)"/>.</summary>
    /// <param name="sequenceIds">The batch: 1..MaxBatch live sequences.</param>
    /// <param name="q">Queries [batch, QLen, NumQHeads, HeadDim].</param>
    /// <param name="output">Receives [batch, QLen, NumQHeads, HeadDim].</param>
    /// <param name="options">Layer, heads, QLen, splits, scale, soft-cap, window, ALiBi.</param>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    /// <exception cref="InvalidOperationException">The cache is on a CUDA context.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A member of <paramref name="options"/> is out of range, or the batch exceeds MaxBatch.</exception>
    /// <exception cref="ArgumentException"><paramref name="sequenceIds"/> is empty, a span is too short, or output partly overlaps q.</exception>
    /// <exception cref="KvSequenceNotFoundException">A sequence id is not live.</exception>
    /// <exception cref="LlmNativeException">A sequence holds fewer than QLen tokens in the layer.</exception>
    public void DecodeAttention(ReadOnlySpan<long> sequenceIds, ReadOnlySpan<Half> q, Span<Half> output, AttentionOptions options) =>
        AttentionSpans(sequenceIds, q, output, options, DType.F16);
#endif

    /// <summary>Releases the cache (the pool is freed once no call uses it). Idempotent.</summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc/>
    public override string ToString() =>
        $"KvCache({Options.NumLayers} layers, {Options.NumKvHeads} kv heads x {Options.HeadDim}, K {Options.KFormat}, V {Options.VFormat}, " +
        $"{Options.CapacityTokens} tokens, {Context.Backend} device {Context.Device}{(IsDisposed ? ", disposed" : "")})";

    /// <summary>The raw context handle; valid while a lease on this cache is held (the cache references its context).</summary>
    private IntPtr ContextPointer => Context.Handle.DangerousGetHandle();

    /// <summary>
    /// The KV cache's view of the one error gate: <see cref="Native.Check"/> builds the exception (reading the
    /// native message), then capacity and unknown-sequence failures become their typed exceptions.
    /// </summary>
    private static void Check(llmn_status status, long? sequenceId, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status == llmn_status.LLMN_STATUS_OK) return;
        try
        {
            Native.Check(status, call);
        }
        catch (LlmNativeException e) when (e.Status == LlmNativeStatus.CapacityExceeded)
        {
            throw new KvCacheFullException(e.NativeMessage, e.Function);
        }
        catch (LlmNativeException e) when (e.Status == LlmNativeStatus.NotFound)
        {
            throw new KvSequenceNotFoundException(sequenceId, e.NativeMessage, e.Function);
        }
    }

    private void CheckLayer(int layer)
    {
        if (layer < 0 || layer >= Options.NumLayers)
            throw new ArgumentOutOfRangeException(nameof(layer), layer,
                $"layer must be in [0, {Options.NumLayers}) (the cache's NumLayers), got {layer}");
    }

    private string TokenShape(string tokensName, long tokens) =>
        $"[{tokensName}={tokens}, NumKvHeads={Options.NumKvHeads}, HeadDim={Options.HeadDim}]";

    private void CheckKvBuffer(LlmBuffer b, string paramName, long needed, string shape, bool input)
    {
        Argument.OnDeviceOf(b, Context, paramName);
        if (input && Context.Backend == Backend.Cuda) Argument.DTypeIn(b, paramName, DType.F32, DType.F16, DType.BF16);
        else Argument.DTypeIn(b, paramName, DType.F32, DType.F16);
        if (b.Count < needed)
            throw new ArgumentException($"{paramName} has {b.Count} elements but {shape} needs {needed}", paramName);
    }

    /// <summary>Layer, start and count against the sequence's current length (also reports an unknown sequence).</summary>
    private void CheckReadRange(long sequenceId, int layer, long start, long count)
    {
        CheckLayer(layer);
        Argument.AtLeast(start, 0, nameof(start));
        Argument.AtLeast(count, 0, nameof(count));
        long length = GetLength(sequenceId, layer);
        if (start > length)
            throw new ArgumentOutOfRangeException(nameof(start), start,
                $"start must be <= the length of sequence {sequenceId} in layer {layer} ({length}), got {start}");
        if (count > length - start)
            throw new ArgumentOutOfRangeException(nameof(count), count,
                $"tokens [{start}, {start} + {count}) run past the end of sequence {sequenceId}, which holds {length} tokens in layer {layer}");
    }

    /// <summary>Token count of a span pair: equal lengths, a multiple of one token's elements.</summary>
    private int SpanTokens(int kLength, int vLength, bool allowEmpty)
    {
        int per = TokenElements;
        if (kLength % per != 0 || (!allowEmpty && kLength == 0))
            throw new ArgumentException(
                $"k has {kLength} elements, which is not a {(allowEmpty ? "" : "positive ")}multiple of NumKvHeads x HeadDim = {per}", "k");
        if (vLength != kLength)
            throw new ArgumentException($"v has {vLength} elements but k has {kLength}; they must match", "v");
        return kLength / per;
    }

    private void RequireCpu()
    {
        if (Context.Backend != Backend.Cpu)
            throw new InvalidOperationException(
                $"the span overloads work on CPU caches only; this cache is on {Context.Backend} device {Context.Device} " +
                "(allocate LlmBuffers, upload, and use the LlmBuffer overload)");
    }

    private unsafe void AppendSpans<T>(long sequenceId, int layer, ReadOnlySpan<T> k, ReadOnlySpan<T> v, DType dtype) where T : unmanaged
    {
        CheckLayer(layer);
        int tokens = SpanTokens(k.Length, v.Length, allowEmpty: false);
        using NativeHandle.Lease c = Handle.Acquire();
        RequireCpu();
        IntPtr ctx = ContextPointer;
        fixed (T* pk = k)
        fixed (T* pv = v)
        {
            IntPtr kb = IntPtr.Zero, vb = IntPtr.Zero;
            try
            {
                kb = HostWrap.Wrap(ctx, dtype, k.Length, pk);
                vb = HostWrap.Wrap(ctx, dtype, v.Length, pv);
                Check(llmn_kv_cache_append(c.Pointer, sequenceId, layer, kb, vb, tokens), sequenceId);
            }
            finally
            {
                HostWrap.Release(vb);
                HostWrap.Release(kb);
            }
        }
    }

    private unsafe void ReadSpans<T>(long sequenceId, int layer, long start, Span<T> k, Span<T> v, DType dtype) where T : unmanaged
    {
        int tokens = SpanTokens(k.Length, v.Length, allowEmpty: true);
        if (((ReadOnlySpan<T>)k).Overlaps(v)) throw new ArgumentException("v must not overlap k", nameof(v));
        using NativeHandle.Lease c = Handle.Acquire();
        RequireCpu();
        CheckReadRange(sequenceId, layer, start, tokens);
        if (tokens == 0) return;
        IntPtr ctx = ContextPointer;
        fixed (T* pk = k)
        fixed (T* pv = v)
        {
            IntPtr kb = IntPtr.Zero, vb = IntPtr.Zero;
            try
            {
                kb = HostWrap.Wrap(ctx, dtype, k.Length, pk);
                vb = HostWrap.Wrap(ctx, dtype, v.Length, pv);
                Check(llmn_kv_cache_read(c.Pointer, sequenceId, layer, start, tokens, kb, vb), sequenceId);
            }
            finally
            {
                HostWrap.Release(vb);
                HostWrap.Release(kb);
            }
        }
    }

    private unsafe void AttentionSpans<T>(ReadOnlySpan<long> sequenceIds, ReadOnlySpan<T> q, Span<T> output, AttentionOptions options,
        DType dtype) where T : unmanaged
    {
        long needed = CheckAttention(sequenceIds, options);
        HostWrap.CheckLength(q.Length, needed, nameof(q), QueryShape(sequenceIds.Length, options));
        HostWrap.CheckLength(output.Length, needed, nameof(output), QueryShape(sequenceIds.Length, options));
        ReadOnlySpan<T> qUsed = q.Slice(0, (int)needed), oUsed = output.Slice(0, (int)needed);
        if (oUsed.Overlaps(qUsed, out int offset) && offset != 0)
            throw new ArgumentException("output must be the same memory as q or not overlap it", nameof(output));
        using NativeHandle.Lease c = Handle.Acquire();
        RequireCpu();
        using NativeHandle.Lease al = options.AlibiSlopes?.Acquire("options.AlibiSlopes") ?? NativeHandle.Lease.None;
        llmn_attention_params p = ToNative(options);
        IntPtr ctx = ContextPointer;
        fixed (long* ids = sequenceIds)
        fixed (T* pq = q)
        fixed (T* po = output)
        {
            IntPtr qb = IntPtr.Zero, ob = IntPtr.Zero;
            try
            {
                qb = HostWrap.Wrap(ctx, dtype, needed, pq);
                ob = HostWrap.Wrap(ctx, dtype, needed, po);
                Check(llmn_decode_attention(ctx, c.Pointer, ids, sequenceIds.Length, qb, al.Pointer, ob, &p),
                    sequenceIds.Length == 1 ? sequenceIds[0] : null);
            }
            finally
            {
                HostWrap.Release(ob);
                HostWrap.Release(qb);
            }
        }
    }

    /// <summary>Checks the batch and the options; returns the element count of q and output.</summary>
    private long CheckAttention(ReadOnlySpan<long> sequenceIds, AttentionOptions options)
    {
        Argument.NotNull(options, nameof(options));
        if (sequenceIds.IsEmpty) throw new ArgumentException("sequenceIds must name at least one sequence", nameof(sequenceIds));
        if (sequenceIds.Length > Options.MaxBatch)
            throw new ArgumentOutOfRangeException(nameof(sequenceIds), sequenceIds.Length,
                $"sequenceIds has {sequenceIds.Length} entries; the cache's MaxBatch is {Options.MaxBatch}");
        options.Validate(Options, Context);
        return (long)sequenceIds.Length * options.QLen * options.NumQHeads * Options.HeadDim;
    }

    private string QueryShape(int batch, AttentionOptions o) =>
        $"[batch={batch}, QLen={o.QLen}, NumQHeads={o.NumQHeads}, HeadDim={Options.HeadDim}]";

    private void CheckQueryBuffer(LlmBuffer b, string paramName, long needed, int batch, AttentionOptions options)
    {
        Argument.OnDeviceOf(b, Context, paramName);
        if (Context.Backend == Backend.Cpu) Argument.DTypeIn(b, paramName, DType.F32, DType.F16);
        else Argument.DTypeIn(b, paramName, DType.F16, DType.BF16);
        if (b.Count < needed)
            throw new ArgumentException($"{paramName} has {b.Count} elements but {QueryShape(batch, options)} needs {needed}", paramName);
    }

    private llmn_attention_params ToNative(AttentionOptions o) => new()
    {
        layer = o.Layer,
        num_q_heads = o.NumQHeads,
        q_len = o.QLen,
        num_splits = o.NumSplits,
        scale = o.EffectiveScale(Options.HeadDim),
        softcap = o.SoftCap,
        window = o.Window,
        flags = o.Int8Query ? (int)llmn_attention_flags.LLMN_ATTN_FLAG_INT8_QUERY : 0,
    };
}
