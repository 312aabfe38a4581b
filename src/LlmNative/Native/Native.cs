// The one error gate: every native call's llmn_status goes through Native.Check, which reads the
// thread-local native message right away (same thread, before any other native call can replace it).
using System;
using System.Runtime.CompilerServices;
using System.Text;
using LlmNative.Interop;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

internal static unsafe class Native
{
    /// <summary>Loads the library and checks its ABI on first use; cheap afterwards.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void EnsureLoaded() => LlmNativeLibrary.EnsureLoaded();

    /// <summary>Throws <see cref="LlmNativeException"/> unless <paramref name="status"/> is OK.</summary>
    /// <param name="status">What the native function returned.</param>
    /// <param name="call">Filled in by the compiler with the call expression; the C function name is taken from it.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Check(llmn_status status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != llmn_status.LLMN_STATUS_OK) throw Failure(status, call);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static LlmNativeException Failure(llmn_status status, string call) =>
        new((LlmNativeStatus)status, LastError(), FunctionName(call));

    /// <summary>The calling thread's native last-error message.</summary>
    public static string LastError() => ReadString(&llmn_get_last_error, "llmn_get_last_error", throwOnError: false);

    /// <summary>"llmn_buffer_create" out of "NativeMethods.llmn_buffer_create(c.Pointer, ...)".</summary>
    internal static string? FunctionName(string call)
    {
        int start = call.IndexOf("llmn_", StringComparison.Ordinal);
        if (start < 0) return null;
        int end = start;
        while (end < call.Length && (char.IsLetterOrDigit(call[end]) || call[end] == '_')) end++;
        return call.Substring(start, end - start);
    }

    /// <summary>
    /// Reads a string written "like llmn_get_last_error" (capacity in, full length out), growing the buffer
    /// when the first attempt was truncated. The error reader itself passes <paramref name="throwOnError"/> false.
    /// </summary>
    public static string ReadString(delegate*<byte*, int, int*, llmn_status> getter, string function, bool throwOnError = true)
    {
        const int StackCapacity = 512;
        byte* stackBuffer = stackalloc byte[StackCapacity];
        int length = 0;
        llmn_status status = getter(stackBuffer, StackCapacity, &length);
        if (status != llmn_status.LLMN_STATUS_OK)
        {
            if (throwOnError) Check(status, function);
            return string.Empty;
        }
        if (length < StackCapacity) return Utf8(stackBuffer, length);

        byte[] heap = new byte[length + 1];
        fixed (byte* p = heap)
        {
            int full = 0;
            status = getter(p, heap.Length, &full);
            if (status != llmn_status.LLMN_STATUS_OK)
            {
                if (throwOnError) Check(status, function);
                return string.Empty;
            }
            return Utf8(p, Math.Min(full, heap.Length - 1));
        }
    }

    /// <summary>Decodes <paramref name="length"/> UTF-8 bytes.</summary>
    public static string Utf8(byte* p, int length) => length <= 0 ? string.Empty : Encoding.UTF8.GetString(p, length);

    /// <summary>Decodes a NUL-terminated UTF-8 string of at most <paramref name="capacity"/> bytes (a C char[N] field).</summary>
    public static string Utf8Z(byte* p, int capacity)
    {
        if (p == null) return string.Empty;
        int n = 0;
        while (n < capacity && p[n] != 0) n++;
        return Utf8(p, n);
    }
}
