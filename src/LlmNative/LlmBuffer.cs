using System;
using System.Buffers;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>
/// A typed array of <see cref="Count"/> elements of <see cref="DType"/> in a context's memory (device memory
/// on CUDA, host memory on the CPU). Element types used to read and write it: <see cref="float"/> for F32,
/// <c>Half</c> (.NET 5+) or <see cref="ushort"/> bits for F16, <see cref="ushort"/> bits for BF16,
/// <see cref="sbyte"/>/<see cref="byte"/> for I8/U8, <see cref="int"/> for I32.
/// </summary>
/// <example>
/// <code>
/// using var ctx = LlmContext.Create(Backend.Cpu);
/// using var buf = LlmBuffer.Allocate(ctx, DType.F32, 3);
/// buf.Upload(new[] { 1f, 2f, 3f }.AsSpan());
/// float[] back = buf.ToArray&lt;float&gt;();           // { 1, 2, 3 }
///
/// float[] mine = new float[1024];
/// using var view = LlmBuffer.Wrap(ctx, mine.AsMemory()); // no copy: kernels read and write `mine`
/// </code>
/// </example>
public sealed class LlmBuffer : IDisposable
{
    private LlmBuffer(BufferHandle handle, LlmContext context, DType dtype, long count, MemoryKind memory, bool wrapped)
    {
        Handle = handle;
        Context = context;
        DType = dtype;
        Count = count;
        Memory = memory;
        IsWrapped = wrapped;
    }

    /// <summary>The context the buffer belongs to (kept alive natively while the buffer lives).</summary>
    public LlmContext Context { get; }

    /// <summary>Element type.</summary>
    public DType DType { get; }

    /// <summary>Number of elements.</summary>
    public long Count { get; }

    /// <summary>Where the memory lives.</summary>
    public MemoryKind Memory { get; }

    /// <summary>True when the buffer wraps caller memory (<see cref="Wrap{T}(LlmContext, Memory{T}, DType)"/>).</summary>
    public bool IsWrapped { get; }

    /// <summary>Size in bytes: <see cref="Count"/> times the element size.</summary>
    public long SizeInBytes => Count * DType.SizeInBytes();

    /// <summary>True after <see cref="Dispose"/>.</summary>
    public bool IsDisposed => Handle.IsDisposeRequested;

    internal BufferHandle Handle { get; }

    /// <summary>Allocates a buffer. Its contents are undefined until written.</summary>
    /// <param name="context">The owning context.</param>
    /// <param name="dtype">Element type.</param>
    /// <param name="count">Number of elements, at least 1.</param>
    /// <param name="memory">Device memory (default) or host memory (page-locked on CUDA).</param>
    /// <returns>The new buffer; dispose it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="dtype"/> or <paramref name="memory"/> is undefined, or <paramref name="count"/> is below 1 or its byte size overflows.</exception>
    /// <exception cref="LlmNativeException">The native allocation failed (<see cref="LlmNativeStatus.OutOfMemory"/>, or a count above the native limit).</exception>
    public static unsafe LlmBuffer Allocate(LlmContext context, DType dtype, long count, MemoryKind memory = MemoryKind.Device)
    {
        Argument.NotNull(context, nameof(context));
        Argument.Defined(dtype, nameof(dtype));
        Argument.Defined(memory, nameof(memory));
        CheckCount(count, dtype, nameof(count));
        using NativeHandle.Lease ctx = context.Acquire(nameof(context));
        var handle = new BufferHandle();
        try
        {
            IntPtr raw;
            Native.Check(llmn_buffer_create(ctx.Pointer, (int)dtype, count, (int)memory, &raw));
            handle.Initialize(raw, context.Handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
        return new LlmBuffer(handle, context, dtype, count, memory, wrapped: false);
    }

    /// <summary>
    /// Wraps caller memory without copying (CPU contexts only). The memory stays pinned until the buffer is
    /// disposed; kernels and <see cref="Upload{T}"/> write straight into it. The dtype follows T: float → F32,
    /// Half → F16, sbyte → I8, byte → U8, int → I32 (for ushort, say F16 or BF16 with the other overload).
    /// </summary>
    /// <typeparam name="T">Element type of the memory.</typeparam>
    /// <param name="context">A CPU context.</param>
    /// <param name="memory">The memory to wrap; at least one element.</param>
    /// <returns>The new buffer; dispose it to unpin the memory.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="ArgumentException"><paramref name="context"/> is not a CPU context, <paramref name="memory"/> is empty, or T has no default dtype.</exception>
    public static LlmBuffer Wrap<T>(LlmContext context, Memory<T> memory) where T : unmanaged =>
        Wrap(context, memory, ElementTypes.DefaultDType<T>(nameof(memory)));

    /// <summary>Wraps caller memory without copying (CPU contexts only), as elements of <paramref name="dtype"/>.</summary>
    /// <typeparam name="T">Element type of the memory; must match <paramref name="dtype"/>.</typeparam>
    /// <param name="context">A CPU context.</param>
    /// <param name="memory">The memory to wrap; at least one element.</param>
    /// <param name="dtype">The buffer's element type.</param>
    /// <returns>The new buffer; dispose it to unpin the memory.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="ArgumentException"><paramref name="context"/> is not a CPU context, <paramref name="memory"/> is empty, or T does not match <paramref name="dtype"/>.</exception>
    public static unsafe LlmBuffer Wrap<T>(LlmContext context, Memory<T> memory, DType dtype) where T : unmanaged
    {
        Argument.NotNull(context, nameof(context));
        Argument.Defined(dtype, nameof(dtype));
        ElementTypes.Check<T>(dtype, nameof(memory));
        if (context.Backend != Backend.Cpu)
            throw new ArgumentException(
                $"Wrap needs a CPU context; context is {context.Backend} device {context.Device} (use Allocate and Upload)",
                nameof(context));
        if (memory.IsEmpty) throw new ArgumentException("memory must contain at least one element, got 0", nameof(memory));

        using NativeHandle.Lease ctx = context.Acquire(nameof(context));
        var handle = new BufferHandle();
        MemoryHandle pin = memory.Pin();
        try
        {
            IntPtr raw;
            Native.Check(llmn_buffer_wrap_host(ctx.Pointer, (int)dtype, memory.Length, pin.Pointer, &raw));
            handle.Initialize(raw, context.Handle, pin);
        }
        catch
        {
            pin.Dispose();
            handle.Dispose();
            throw;
        }
        return new LlmBuffer(handle, context, dtype, memory.Length, MemoryKind.Device, wrapped: true);
    }

    /// <summary>Copies <paramref name="source"/> into the buffer starting at element <paramref name="offset"/>.</summary>
    /// <typeparam name="T">Element type; must match <see cref="DType"/>.</typeparam>
    /// <param name="source">The elements to write; all of them are written.</param>
    /// <param name="offset">First element of the buffer to write.</param>
    /// <exception cref="ObjectDisposedException">The buffer was disposed.</exception>
    /// <exception cref="ArgumentException">T does not match <see cref="DType"/>, or <paramref name="source"/> does not fit after <paramref name="offset"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is negative or past the end.</exception>
    public unsafe void Upload<T>(ReadOnlySpan<T> source, long offset = 0) where T : unmanaged
    {
        using NativeHandle.Lease b = Handle.Acquire();
        ElementTypes.Check<T>(DType, nameof(source));
        Argument.Range(offset, source.Length, Count, nameof(offset), nameof(source));
        fixed (T* p = source)
            Native.Check(llmn_buffer_upload(b.Pointer, offset, p, source.Length));
    }

    /// <summary>Copies elements starting at <paramref name="offset"/> into <paramref name="destination"/> (waits for queued work).</summary>
    /// <typeparam name="T">Element type; must match <see cref="DType"/>.</typeparam>
    /// <param name="destination">Receives <c>destination.Length</c> elements.</param>
    /// <param name="offset">First element of the buffer to read.</param>
    /// <exception cref="ObjectDisposedException">The buffer was disposed.</exception>
    /// <exception cref="ArgumentException">T does not match <see cref="DType"/>, or the buffer has fewer than <c>destination.Length</c> elements after <paramref name="offset"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is negative or past the end.</exception>
    public unsafe void Download<T>(Span<T> destination, long offset = 0) where T : unmanaged
    {
        using NativeHandle.Lease b = Handle.Acquire();
        ElementTypes.Check<T>(DType, nameof(destination));
        Argument.Range(offset, destination.Length, Count, nameof(offset), nameof(destination));
        fixed (T* p = destination)
            Native.Check(llmn_buffer_download(b.Pointer, offset, p, destination.Length));
    }

    /// <summary>Downloads the whole buffer into a new array.</summary>
    /// <typeparam name="T">Element type; must match <see cref="DType"/>.</typeparam>
    /// <returns>An array of <see cref="Count"/> elements.</returns>
    /// <exception cref="ObjectDisposedException">The buffer was disposed.</exception>
    /// <exception cref="ArgumentException">T does not match <see cref="DType"/>.</exception>
    /// <exception cref="InvalidOperationException">The buffer has more elements than an array can hold.</exception>
    public T[] ToArray<T>() where T : unmanaged
    {
        ElementTypes.Check<T>(DType, "T");
        if (Count > int.MaxValue)
            throw new InvalidOperationException($"the buffer has {Count} elements, more than an array can hold; use Download with an offset");
        var result = new T[Count];
        Download(result.AsSpan());
        return result;
    }

    /// <summary>
    /// Copies <paramref name="count"/> elements from <paramref name="source"/> (same dtype, same device; the
    /// contexts may differ) into this buffer. Overlapping ranges of the same buffer are handled.
    /// </summary>
    /// <param name="source">The buffer to copy from.</param>
    /// <param name="sourceOffset">First element of <paramref name="source"/>.</param>
    /// <param name="destinationOffset">First element of this buffer.</param>
    /// <param name="count">Elements to copy; null for all of <paramref name="source"/> after <paramref name="sourceOffset"/>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">This buffer or <paramref name="source"/> was disposed.</exception>
    /// <exception cref="ArgumentException">The dtypes differ, the buffers are on different devices, or a range does not fit.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An offset or the count is negative or past the end.</exception>
    public void CopyFrom(LlmBuffer source, long sourceOffset = 0, long destinationOffset = 0, long? count = null)
    {
        Argument.NotNull(source, nameof(source));
        using NativeHandle.Lease d = Handle.Acquire();
        using NativeHandle.Lease s = source.Handle.Acquire(nameof(source));
        if (source.DType != DType)
            throw new ArgumentException($"source has dtype {source.DType} but this buffer has dtype {DType}", nameof(source));
        if (source.Context.Backend != Context.Backend || source.Context.Device != Context.Device)
            throw new ArgumentException(
                $"source is on {source.Context.Backend} device {source.Context.Device} but this buffer is on {Context.Backend} " +
                $"device {Context.Device}; copy through host memory (Download, then Upload)", nameof(source));
        long n = count ?? source.Count - Math.Min(Math.Max(sourceOffset, 0), source.Count);
        Argument.Range(sourceOffset, n, source.Count, nameof(sourceOffset), nameof(count));
        Argument.Range(destinationOffset, n, Count, nameof(destinationOffset), nameof(count));
        Native.Check(llmn_buffer_copy(d.Pointer, destinationOffset, s.Pointer, sourceOffset, n));
    }

    /// <summary>Sets <paramref name="count"/> elements from <paramref name="offset"/> to <paramref name="value"/>.</summary>
    /// <typeparam name="T">Element type; must match <see cref="DType"/>.</typeparam>
    /// <param name="value">The value.</param>
    /// <param name="offset">First element to set.</param>
    /// <param name="count">Elements to set; null for all from <paramref name="offset"/> to the end.</param>
    /// <exception cref="ObjectDisposedException">The buffer was disposed.</exception>
    /// <exception cref="ArgumentException">T does not match <see cref="DType"/>, or the range does not fit.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="count"/> is negative or past the end.</exception>
    public unsafe void Fill<T>(T value, long offset = 0, long? count = null) where T : unmanaged
    {
        using NativeHandle.Lease b = Handle.Acquire();
        ElementTypes.Check<T>(DType, nameof(value));
        long n = count ?? Count - Math.Min(Math.Max(offset, 0), Count);
        Argument.Range(offset, n, Count, nameof(offset), nameof(count));
        Native.Check(llmn_buffer_fill(b.Pointer, offset, n, &value));
    }

    /// <summary>
    /// The raw data pointer (a device pointer for CUDA device memory), for interop with other native libraries.
    /// It is valid only while this buffer is alive and must not be freed.
    /// </summary>
    /// <returns>The address of element 0.</returns>
    /// <exception cref="ObjectDisposedException">The buffer was disposed.</exception>
    public unsafe IntPtr DangerousGetDataPointer()
    {
        using NativeHandle.Lease b = Handle.Acquire();
        void* data;
        Native.Check(llmn_buffer_get_data(b.Pointer, &data));
        return (IntPtr)data;
    }

    /// <summary>
    /// Keeps the buffer alive for one native call and returns its raw handle (for the internal kernel wrappers).
    /// </summary>
    /// <param name="paramName">The parameter this buffer came in as, for the <see cref="ObjectDisposedException"/>.</param>
    internal NativeHandle.Lease Acquire(string? paramName = null) => Handle.Acquire(paramName);

    /// <summary>Releases the buffer (and unpins wrapped memory once no call uses it). Idempotent.</summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc/>
    public override string ToString() =>
        $"LlmBuffer({DType} x {Count}, {Memory}{(IsWrapped ? ", wrapped" : "")}, {Context.Backend} device {Context.Device}{(IsDisposed ? ", disposed" : "")})";

    private static void CheckCount(long count, DType dtype, string paramName)
    {
        Argument.AtLeast(count, 1, paramName);
        int size = dtype.SizeInBytes();
        if (count > long.MaxValue / size)
            throw new ArgumentOutOfRangeException(paramName, count,
                $"{paramName} of {count} {dtype} elements overflows a 64-bit byte size");
    }
}
