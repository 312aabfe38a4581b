// Lifetime plumbing shared by every native object type. A concrete handle class only names its one
// destroy function; parent links, pinned memory and call leases live here, so a new native type
// (Int4Weight, KvCache, ...) adds a two-line handle and a thin public class.
using System;
using System.Buffers;
using System.Runtime.InteropServices;
using System.Threading;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>
/// Base of the SafeHandles over native LlmNative objects. Invalid when zero. Release destroys the
/// native object, then unpins memory the object used, then releases the parent handle: a child
/// keeps its parent alive (DangerousAddRef at creation), so objects may be disposed in any order.
/// </summary>
internal abstract class NativeHandle : SafeHandle
{
    private SafeHandle? _parent;
    private MemoryHandle _pin;
    private int _disposeRequested;

    protected NativeHandle() : base(IntPtr.Zero, ownsHandle: true)
    {
    }

    public sealed override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>
    /// True once Dispose was called. SafeHandle only reports IsClosed when the last reference is gone, and a
    /// child (a buffer of this context) holds one; a disposed parent must still refuse new work.
    /// </summary>
    internal bool IsDisposeRequested => Volatile.Read(ref _disposeRequested) != 0;

    protected override void Dispose(bool disposing)
    {
        Interlocked.Exchange(ref _disposeRequested, 1);
        base.Dispose(disposing);
    }

    /// <summary>Public type name used in <see cref="ObjectDisposedException"/> messages ("LlmBuffer").</summary>
    internal abstract string ObjectName { get; }

    /// <summary>Calls the one native destroy function of this type.</summary>
    protected abstract llmn_status Destroy(IntPtr nativeHandle);

    protected sealed override bool ReleaseHandle()
    {
        llmn_status status = Destroy(handle);
        _pin.Dispose(); // the native object no longer references the memory
        _pin = default;
        SafeHandle? parent = _parent;
        _parent = null;
        parent?.DangerousRelease();
        return status == llmn_status.LLMN_STATUS_OK;
    }

    /// <summary>
    /// Takes ownership of a freshly created native object. <paramref name="parent"/> (the handle the object
    /// was created from, usually a context) is kept alive until this handle is released; <paramref name="pin"/>
    /// (caller memory the object wraps) stays pinned until then.
    /// </summary>
    internal void Initialize(IntPtr nativeHandle, SafeHandle? parent, MemoryHandle pin = default)
    {
        if (parent != null)
        {
            bool added = false;
            parent.DangerousAddRef(ref added); // the caller holds a lease on parent, so this cannot fail
            _parent = parent;
        }
        _pin = pin;
        SetHandle(nativeHandle);
    }

    /// <summary>
    /// Keeps the handle alive for the duration of one native call and returns the raw pointer. Use with
    /// <c>using</c>: a concurrent Dispose then cannot free the object mid-call. Throws
    /// <see cref="ObjectDisposedException"/> (naming <paramref name="paramName"/>, when given) after Dispose.
    /// </summary>
    internal Lease Acquire(string? paramName = null)
    {
        if (IsDisposeRequested) throw Disposed(paramName);
        bool added = false;
        try
        {
            DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            throw Disposed(paramName);
        }
        return new Lease(this, handle);
    }

    internal ObjectDisposedException Disposed(string? paramName) =>
        paramName is null
            ? new ObjectDisposedException(ObjectName)
            : new ObjectDisposedException(ObjectName, $"The {ObjectName} passed as '{paramName}' has been disposed.");

    /// <summary>A counted reference on a handle for the span of a native call; Dispose releases it.</summary>
    internal readonly struct Lease : IDisposable
    {
        private readonly SafeHandle? _owner;

        internal Lease(SafeHandle owner, IntPtr pointer)
        {
            _owner = owner;
            Pointer = pointer;
        }

        /// <summary>The raw native handle, valid until this lease is disposed. Zero for <see cref="None"/>.</summary>
        public IntPtr Pointer { get; }

        /// <summary>A lease on nothing: for optional handle arguments passed as NULL.</summary>
        public static Lease None => default;

        public void Dispose() => _owner?.DangerousRelease();
    }
}

/// <summary>An <c>llmn_context</c>.</summary>
internal sealed class ContextHandle : NativeHandle
{
    /// <summary>The native context id; its logger registration goes with the handle even when nobody called Dispose.</summary>
    internal ulong ContextId { get; set; }

    internal override string ObjectName => nameof(LlmContext);

    protected override llmn_status Destroy(IntPtr nativeHandle)
    {
        llmn_status status = llmn_context_destroy(nativeHandle);
        NativeLog.Unregister(ContextId);
        return status;
    }
}

/// <summary>An <c>llmn_buffer</c>; its parent is the context's handle.</summary>
internal sealed class BufferHandle : NativeHandle
{
    internal override string ObjectName => nameof(LlmBuffer);

    protected override llmn_status Destroy(IntPtr nativeHandle) => llmn_buffer_destroy(nativeHandle);
}

/// <summary>An <c>llmn_int4_weight</c>; its parent is the context's handle.</summary>
internal sealed class Int4WeightHandle : NativeHandle
{
    internal override string ObjectName => "Int4Weight";

    protected override llmn_status Destroy(IntPtr nativeHandle) => llmn_int4_weight_destroy(nativeHandle);
}

/// <summary>An <c>llmn_kv_cache</c>; its parent is the context's handle.</summary>
internal sealed class KvCacheHandle : NativeHandle
{
    internal override string ObjectName => "KvCache";

    protected override llmn_status Destroy(IntPtr nativeHandle) => llmn_kv_cache_destroy(nativeHandle);
}
