using System;

namespace LlmNative;

/// <summary>
/// A native LlmNative call failed. <see cref="Status"/> says what kind of failure it was and
/// <see cref="NativeMessage"/> is the native library's own explanation (it names the argument and value).
/// Argument errors that C# can detect itself are reported earlier as <see cref="ArgumentException"/>s.
/// </summary>
/// <example>
/// <code>
/// try
/// {
///     using var ctx = LlmContext.Create(Backend.Cuda);
/// }
/// catch (LlmNativeException e)
/// {
///     Console.WriteLine($"{e.Function} failed ({e.Status}): {e.NativeMessage}");
/// }
/// </code>
/// </example>
public class LlmNativeException : Exception
{
    /// <summary>Creates an exception for a failed native call.</summary>
    /// <param name="status">The status the native function returned.</param>
    /// <param name="nativeMessage">The native last-error message.</param>
    /// <param name="function">The C function that failed, when known (for example <c>llmn_buffer_create</c>).</param>
    public LlmNativeException(LlmNativeStatus status, string nativeMessage, string? function = null)
        : base(Format(status, nativeMessage, function))
    {
        Status = status;
        NativeMessage = nativeMessage;
        Function = function;
    }

    /// <summary>The status code the native function returned.</summary>
    public LlmNativeStatus Status { get; }

    /// <summary>The native library's message for the failure (may be empty).</summary>
    public string NativeMessage { get; }

    /// <summary>The C function that failed, for example <c>llmn_buffer_create</c>; null when unknown.</summary>
    public string? Function { get; }

    private static string Format(LlmNativeStatus status, string message, string? function)
    {
        string what = function is null ? "LlmNative native call" : function;
        return message.Length == 0 ? $"{what} failed: {status}" : $"{what} failed ({status}): {message}";
    }
}
