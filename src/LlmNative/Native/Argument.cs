// C#-side argument checks, done before any native call so the exception names the parameter and the
// bad value in .NET's own terms. The native library repeats every check (it must, for C callers).
using System;

namespace LlmNative;

internal static class Argument
{
    public static T NotNull<T>(T? value, string paramName) where T : class =>
        value ?? throw new ArgumentNullException(paramName);

    public static void Defined<TEnum>(TEnum value, string paramName) where TEnum : struct, Enum
    {
        if (!Enum.IsDefined(typeof(TEnum), value))
            throw new ArgumentOutOfRangeException(paramName, value,
                $"{paramName} must be a defined {typeof(TEnum).Name}, got {Convert.ToInt64(value, System.Globalization.CultureInfo.InvariantCulture)}");
    }

    public static void AtLeast(long value, long min, string paramName)
    {
        if (value < min)
            throw new ArgumentOutOfRangeException(paramName, value, $"{paramName} must be >= {min}, got {value}");
    }

    /// <summary>
    /// Kernel inputs must live where the context's kernels run: same backend and device (the contexts may differ).
    /// Null passes (optional arguments); a disposed buffer is reported when its lease is taken.
    /// </summary>
    public static void OnDeviceOf(LlmBuffer? buffer, LlmContext context, string paramName)
    {
        if (buffer is null) return;
        LlmContext owner = buffer.Context;
        if (owner.Backend != context.Backend || owner.Device != context.Device)
            throw new ArgumentException(
                $"{paramName} is on {owner.Backend} device {owner.Device}, but the operation runs on {context.Backend} " +
                $"device {context.Device}", paramName);
    }

    /// <summary>The buffer's dtype must be one of <paramref name="allowed"/>. Null passes (optional arguments).</summary>
    public static void DTypeIn(LlmBuffer? buffer, string paramName, params DType[] allowed)
    {
        if (buffer is null || Array.IndexOf(allowed, buffer.DType) >= 0) return;
        throw new ArgumentException(
            $"{paramName} has dtype {buffer.DType}; expected {string.Join(" or ", allowed)}", paramName);
    }

    /// <summary>Checks that [offset, offset + length) lies inside [0, count) of a buffer.</summary>
    public static void Range(long offset, long length, long count, string offsetName, string lengthName)
    {
        if (offset < 0)
            throw new ArgumentOutOfRangeException(offsetName, offset, $"{offsetName} must be >= 0, got {offset}");
        if (offset > count)
            throw new ArgumentOutOfRangeException(offsetName, offset,
                $"{offsetName} must be <= the buffer's Count ({count}), got {offset}");
        if (length < 0)
            throw new ArgumentOutOfRangeException(lengthName, length, $"{lengthName} must be >= 0, got {length}");
        if (length > count - offset)
            throw new ArgumentException(
                $"{lengthName} covers {length} elements but the buffer has only {count - offset} from offset {offset} (Count {count})",
                lengthName);
    }
}
