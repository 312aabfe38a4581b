// Which C# element types may read/write which DType. Sizes must match, and so must the kind of value
// (an int[] is never silently written into an F32 buffer); ushort carries F16/BF16 bits.
using System;

namespace LlmNative;

internal static class ElementTypes
{
    internal static bool IsCompatible<T>(DType dtype) where T : unmanaged
    {
        Type t = typeof(T);
        return dtype switch
        {
            DType.F32 => t == typeof(float),
#if NET5_0_OR_GREATER
            DType.F16 => t == typeof(ushort) || t == typeof(Half),
#else
            DType.F16 => t == typeof(ushort),
#endif
            DType.BF16 => t == typeof(ushort),
            DType.I8 => t == typeof(sbyte) || t == typeof(byte),
            DType.U8 => t == typeof(byte) || t == typeof(sbyte),
            DType.I32 => t == typeof(int),
            _ => false,
        };
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming <paramref name="paramName"/> when T cannot carry dtype.</summary>
    internal static void Check<T>(DType dtype, string paramName) where T : unmanaged
    {
        if (!IsCompatible<T>(dtype))
            throw new ArgumentException(
                $"element type {typeof(T).Name} does not match the buffer's dtype {dtype} (use {Expected(dtype)})", paramName);
    }

    /// <summary>The dtype a <see cref="LlmBuffer.Wrap{T}(LlmContext, Memory{T})"/> of T gets by default.</summary>
    internal static DType DefaultDType<T>(string paramName) where T : unmanaged
    {
        Type t = typeof(T);
        if (t == typeof(float)) return DType.F32;
#if NET5_0_OR_GREATER
        if (t == typeof(Half)) return DType.F16;
#endif
        if (t == typeof(sbyte)) return DType.I8;
        if (t == typeof(byte)) return DType.U8;
        if (t == typeof(int)) return DType.I32;
        if (t == typeof(ushort))
            throw new ArgumentException("ushort memory may hold F16 or BF16 bits: pass the dtype explicitly", paramName);
        throw new ArgumentException(
            $"element type {t.Name} is not supported (float, Half, ushort, sbyte, byte, int)", paramName);
    }

    private static string Expected(DType dtype) => dtype switch
    {
        DType.F32 => "float",
#if NET5_0_OR_GREATER
        DType.F16 => "Half or ushort",
#else
        DType.F16 => "ushort",
#endif
        DType.BF16 => "ushort",
        DType.I8 => "sbyte",
        DType.U8 => "byte",
        DType.I32 => "int",
        _ => "a defined DType",
    };
}
