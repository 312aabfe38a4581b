using System;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>
/// Matrix products of the decode path: <c>Y[m, N] = X[m, K] · W[K, N] (+ bias[N])</c>, row-major, accumulated in f32.
/// <see cref="Int4(LlmBuffer, Int4Weight, LlmBuffer, int, LlmBuffer?)"/> multiplies with a 4-bit weight
/// (W4A16), <see cref="Dense"/> with a dense weight of the activations' dtype (the baseline). Activation dtypes:
/// F32 or F16 on the CPU, F16 or BF16 on CUDA; x, y and bias share one dtype. The work runs on the weight's
/// context (buffers may belong to other contexts of the same device). The span overloads are for CPU contexts:
/// they wrap the caller's memory for the one call, without copying.
/// </summary>
/// <example>
/// <code>
/// using var ctx = LlmContext.Create(Backend.Cpu);
/// using var w = Int4Weight.Quantize(ctx, dense, k: 4096, n: 11008, groupSize: 128, symmetric: true);
///
/// float[] x = new float[2 * 4096], y = new float[2 * 11008];
/// Gemm.Int4(x, w, y, m: 2);                                   // spans, CPU only
///
/// using var xb = LlmBuffer.Allocate(ctx, DType.F16, 2 * 4096);  // buffers, any backend
/// using var yb = LlmBuffer.Allocate(ctx, DType.F16, 2 * 11008);
/// Gemm.Int4(xb, w, yb, m: 2);
/// </code>
/// </example>
public static class Gemm
{
    /// <summary>
    /// <c>y[m, N] = x[m, K] · dequant(w) (+ bias)</c> on the weight's context. Only the first m·K elements of
    /// <paramref name="x"/> are read and the first m·N of <paramref name="y"/> written; y must not overlap x or bias.
    /// </summary>
    /// <param name="x">Activations [m, K]: F32/F16 on the CPU, F16/BF16 on CUDA.</param>
    /// <param name="w">The quantized weight.</param>
    /// <param name="y">Output [m, N], the dtype of <paramref name="x"/>.</param>
    /// <param name="m">Rows (tokens); 0 does nothing.</param>
    /// <param name="bias">Optional bias [N], the dtype of <paramref name="x"/>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="x"/>, <paramref name="w"/> or <paramref name="y"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">An argument was disposed (the exception names it).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="m"/> is negative.</exception>
    /// <exception cref="ArgumentException">A buffer is on another device than the weight, has the wrong dtype or too few elements, or y is x or bias.</exception>
    /// <exception cref="LlmNativeException">The native kernel refused (for example partially overlapping buffers) or the backend failed.</exception>
    public static void Int4(LlmBuffer x, Int4Weight w, LlmBuffer y, int m, LlmBuffer? bias = null)
    {
        Argument.NotNull(x, nameof(x));
        Argument.NotNull(w, nameof(w));
        Argument.NotNull(y, nameof(y));
        using NativeHandle.Lease wl = w.Handle.Acquire(nameof(w));
        CheckBuffers(w.Context, x, y, bias, m, w.K, w.N);
        using NativeHandle.Lease xl = x.Acquire(nameof(x));
        using NativeHandle.Lease yl = y.Acquire(nameof(y));
        using NativeHandle.Lease bl = bias?.Acquire(nameof(bias)) ?? NativeHandle.Lease.None;
        Native.Check(llmn_gemm_int4(w.ContextPointer, xl.Pointer, wl.Pointer, bl.Pointer, yl.Pointer, m));
    }

    /// <summary>
    /// The dense baseline <c>y[m, n] = x[m, k] · w[k, n] (+ bias)</c> on <paramref name="w"/>'s context, with the
    /// same conventions as <see cref="Int4(LlmBuffer, Int4Weight, LlmBuffer, int, LlmBuffer?)"/>.
    /// </summary>
    /// <param name="x">Activations [m, k].</param>
    /// <param name="w">Dense row-major weight [k, n], the dtype of <paramref name="x"/>.</param>
    /// <param name="y">Output [m, n], the dtype of <paramref name="x"/>.</param>
    /// <param name="m">Rows (tokens); 0 does nothing.</param>
    /// <param name="k">Input features, at least 1.</param>
    /// <param name="n">Output features, at least 1.</param>
    /// <param name="bias">Optional bias [n].</param>
    /// <exception cref="ArgumentNullException"><paramref name="x"/>, <paramref name="w"/> or <paramref name="y"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">An argument was disposed (the exception names it).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="m"/> is negative, or <paramref name="k"/> or <paramref name="n"/> below 1.</exception>
    /// <exception cref="ArgumentException">A buffer is on another device, has the wrong dtype or too few elements, or y is x, w or bias.</exception>
    /// <exception cref="LlmNativeException">The native kernel refused or the backend failed.</exception>
    public static void Dense(LlmBuffer x, LlmBuffer w, LlmBuffer y, int m, int k, int n, LlmBuffer? bias = null)
    {
        Argument.NotNull(x, nameof(x));
        Argument.NotNull(w, nameof(w));
        Argument.NotNull(y, nameof(y));
        Argument.AtLeast(k, 1, nameof(k));
        Argument.AtLeast(n, 1, nameof(n));
        using NativeHandle.Lease wl = w.Acquire(nameof(w));
        CheckBuffers(w.Context, x, y, bias, m, k, n);
        if (w.DType != x.DType)
            throw new ArgumentException($"w has dtype {w.DType} but x has dtype {x.DType}; they must match", nameof(w));
        CheckCount(w, (long)k * n, nameof(w), $"[k, n] = [{k}, {n}]");
        if (ReferenceEquals(y, w)) throw new ArgumentException("y must not be the same buffer as w", nameof(y));
        using NativeHandle.Lease xl = x.Acquire(nameof(x));
        using NativeHandle.Lease yl = y.Acquire(nameof(y));
        using NativeHandle.Lease bl = bias?.Acquire(nameof(bias)) ?? NativeHandle.Lease.None;
        Native.Check(llmn_gemm_dense(w.Context.Handle.DangerousGetHandle(), xl.Pointer, wl.Pointer, bl.Pointer, yl.Pointer,
            m, k, n));
    }

    /// <summary>
    /// <c>y[m, N] = x[m, K] · dequant(w) (+ bias)</c> on caller memory, for weights on a CPU context: the spans are
    /// pinned and passed to the kernel for this call only (no copy).
    /// </summary>
    /// <param name="x">Activations, at least m·K values.</param>
    /// <param name="w">A weight on a CPU context.</param>
    /// <param name="y">Output, at least m·N values; must not overlap x or bias.</param>
    /// <param name="m">Rows (tokens); 0 does nothing.</param>
    /// <param name="bias">Optional bias of N values (empty for none).</param>
    /// <exception cref="ArgumentNullException"><paramref name="w"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="w"/> was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="m"/> is negative.</exception>
    /// <exception cref="ArgumentException"><paramref name="w"/> is on a CUDA context (use the <see cref="LlmBuffer"/> overload), a span is too short, or y overlaps x or bias.</exception>
    public static void Int4(ReadOnlySpan<float> x, Int4Weight w, Span<float> y, int m, ReadOnlySpan<float> bias = default) =>
        Int4Spans(x, w, y, m, bias, DType.F32);

#if NET5_0_OR_GREATER
    /// <summary>The <see cref="Half"/> form of <see cref="Int4(ReadOnlySpan{float}, Int4Weight, Span{float}, int, ReadOnlySpan{float})"/> (CPU contexts).</summary>
    /// <param name="x">Activations, at least m·K values.</param>
    /// <param name="w">A weight on a CPU context.</param>
    /// <param name="y">Output, at least m·N values; must not overlap x or bias.</param>
    /// <param name="m">Rows (tokens); 0 does nothing.</param>
    /// <param name="bias">Optional bias of N values (empty for none).</param>
    /// <exception cref="ArgumentNullException"><paramref name="w"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="w"/> was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="m"/> is negative.</exception>
    /// <exception cref="ArgumentException"><paramref name="w"/> is on a CUDA context, a span is too short, or y overlaps x or bias.</exception>
    public static void Int4(ReadOnlySpan<Half> x, Int4Weight w, Span<Half> y, int m, ReadOnlySpan<Half> bias = default) =>
        Int4Spans(x, w, y, m, bias, DType.F16);
#endif

    private static unsafe void Int4Spans<T>(ReadOnlySpan<T> x, Int4Weight w, Span<T> y, int m, ReadOnlySpan<T> bias, DType dtype)
        where T : unmanaged
    {
        Argument.NotNull(w, nameof(w));
        Argument.AtLeast(m, 0, nameof(m));
        using NativeHandle.Lease wl = w.Handle.Acquire(nameof(w));
        HostWrap.RequireCpu(w.Context, nameof(w));
        HostWrap.CheckLength(x.Length, (long)m * w.K, nameof(x), $"[m, K] = [{m}, {w.K}]");
        HostWrap.CheckLength(y.Length, (long)m * w.N, nameof(y), $"[m, N] = [{m}, {w.N}]");
        if (!bias.IsEmpty) HostWrap.CheckLength(bias.Length, w.N, nameof(bias), $"[N] = [{w.N}]");
        if (m == 0) return;
        ReadOnlySpan<T> yr = y;
        if (yr.Overlaps(x)) throw new ArgumentException("y must not overlap x (in-place GEMM is not supported)", nameof(y));
        if (yr.Overlaps(bias)) throw new ArgumentException("y must not overlap bias", nameof(y));

        IntPtr ctx = w.ContextPointer;
        fixed (T* px = x)
        fixed (T* py = y)
        fixed (T* pb = bias)
        {
            IntPtr xb = IntPtr.Zero, yb = IntPtr.Zero, bb = IntPtr.Zero;
            try
            {
                xb = HostWrap.Wrap(ctx, dtype, (long)m * w.K, px);
                yb = HostWrap.Wrap(ctx, dtype, (long)m * w.N, py);
                if (!bias.IsEmpty) bb = HostWrap.Wrap(ctx, dtype, w.N, pb);
                Native.Check(llmn_gemm_int4(ctx, xb, wl.Pointer, bb, yb, m));
            }
            finally
            {
                HostWrap.Release(bb);
                HostWrap.Release(yb);
                HostWrap.Release(xb);
            }
        }
    }

    /// <summary>Shared C#-side checks of both GEMMs: devices, dtypes, element counts (the native library repeats them).</summary>
    private static void CheckBuffers(LlmContext context, LlmBuffer x, LlmBuffer y, LlmBuffer? bias, int m, long k, long n)
    {
        Argument.AtLeast(m, 0, nameof(m));
        Argument.OnDeviceOf(x, context, nameof(x));
        Argument.OnDeviceOf(y, context, nameof(y));
        Argument.OnDeviceOf(bias, context, nameof(bias));
        if (context.Backend == Backend.Cpu) Argument.DTypeIn(x, nameof(x), DType.F32, DType.F16);
        else Argument.DTypeIn(x, nameof(x), DType.F16, DType.BF16);
        if (y.DType != x.DType)
            throw new ArgumentException($"y has dtype {y.DType} but x has dtype {x.DType}; they must match", nameof(y));
        if (bias != null && bias.DType != x.DType)
            throw new ArgumentException($"bias has dtype {bias.DType} but x has dtype {x.DType}; they must match", nameof(bias));
        CheckCount(x, m * k, nameof(x), $"[m, K] = [{m}, {k}]");
        CheckCount(y, m * n, nameof(y), $"[m, N] = [{m}, {n}]");
        if (bias != null) CheckCount(bias, n, nameof(bias), $"[N] = [{n}]");
        if (ReferenceEquals(y, x)) throw new ArgumentException("y must not be the same buffer as x (in-place GEMM is not supported)", nameof(y));
        if (ReferenceEquals(y, bias)) throw new ArgumentException("y must not be the same buffer as bias", nameof(y));
    }

    private static void CheckCount(LlmBuffer buffer, long needed, string paramName, string shape)
    {
        if (buffer.Count < needed)
            throw new ArgumentException($"{paramName} has {buffer.Count} elements but {shape} needs {needed}", paramName);
    }
}

/// <summary>
/// Span overloads of the kernels: caller memory is pinned by <c>fixed</c> and wrapped as a native buffer
/// (llmn_buffer_wrap_host) for one call, then the wrapper is destroyed. CPU contexts only.
/// </summary>
internal static unsafe class HostWrap
{
    public static void RequireCpu(LlmContext context, string paramName)
    {
        if (context.Backend != Backend.Cpu)
            throw new ArgumentException(
                $"the span overloads work on CPU contexts only; {paramName} is on {context.Backend} device {context.Device} " +
                "(allocate LlmBuffers, upload, and use the LlmBuffer overload)", paramName);
    }

    public static void CheckLength(int length, long needed, string paramName, string shape)
    {
        if (length < needed)
            throw new ArgumentException($"{paramName} has {length} elements but {shape} needs {needed}", paramName);
    }

    /// <summary>A native buffer over <paramref name="count"/> elements at <paramref name="data"/> (which the caller keeps pinned).</summary>
    public static IntPtr Wrap(IntPtr context, DType dtype, long count, void* data)
    {
        IntPtr raw;
        Native.Check(llmn_buffer_wrap_host(context, (int)dtype, count, data, &raw));
        return raw;
    }

    /// <summary>Destroys a wrapper made by <see cref="Wrap"/> (zero is ignored). The memory itself is the caller's.</summary>
    public static void Release(IntPtr buffer)
    {
        if (buffer != IntPtr.Zero) _ = llmn_buffer_destroy(buffer);
    }
}
