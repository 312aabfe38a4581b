// 64-byte aligned unmanaged memory for big benchmark arrays (ORT tensors, the streaming-read array): no GC
// heap pressure, no pinning, and pages touched by the caller (so they are resident before timing).
using System;
using System.Runtime.InteropServices;

namespace LlmNative.Benchmarks.Data;

internal sealed unsafe class NativeArray : IDisposable
{
    public NativeArray(long bytes)
    {
        if (bytes <= 0) throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "must be positive");
        Bytes = bytes;
        Pointer = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        if (Pointer == null) throw new OutOfMemoryException($"could not allocate {bytes} bytes");
    }

    public long Bytes { get; }
    public byte* Pointer { get; private set; }
    public IntPtr Address => (IntPtr)Pointer;

    public Span<T> AsSpan<T>(long elementOffset, int count) where T : unmanaged
    {
        if (elementOffset < 0 || count < 0 || (elementOffset + count) * sizeof(T) > Bytes)
            throw new ArgumentOutOfRangeException(nameof(elementOffset), $"[{elementOffset}, +{count}) of {typeof(T).Name} outside {Bytes} bytes");
        return new Span<T>((T*)Pointer + elementOffset, count);
    }

    /// <summary>Writes every page (so it is resident, not a shared zero page).</summary>
    public void Touch()
    {
        for (long off = 0; off < Bytes; off += 1 << 30)
            new Span<byte>(Pointer + off, (int)Math.Min(Bytes - off, 1 << 30)).Clear();
    }

    public void Dispose()
    {
        if (Pointer != null)
        {
            NativeMemory.AlignedFree(Pointer);
            Pointer = null;
        }
    }
}
