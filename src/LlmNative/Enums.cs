// Public enums. Values equal the C enums' so conversions are plain casts; a test asserts every C
// constant has a member here with the same value.
namespace LlmNative;

/// <summary>A compute backend (<c>llmn_backend</c>).</summary>
/// <example>
/// <code>
/// using var ctx = LlmContext.Create(Backend.Cpu);
/// </code>
/// </example>
public enum Backend
{
    /// <summary>The CPU backend: AVX2/AVX-512/NEON kernels with a scalar reference, on a thread pool.</summary>
    Cpu = 0,

    /// <summary>The CUDA backend (one device, one stream per context).</summary>
    Cuda = 1,
}

/// <summary>Instruction sets the CPU kernels can use (<c>llmn_cpu_isa</c>).</summary>
/// <example>
/// <code>
/// LlmNativeRuntime.SetCpuIsa(CpuIsa.Scalar); // run the reference kernels
/// </code>
/// </example>
public enum CpuIsa
{
    /// <summary>Portable scalar code: the reference every SIMD path is tested against.</summary>
    Scalar = 0,

    /// <summary>AVX2 + FMA + F16C.</summary>
    Avx2 = 1,

    /// <summary>AVX-512 F/BW/VL.</summary>
    Avx512 = 2,

    /// <summary>ARM NEON.</summary>
    Neon = 3,
}

/// <summary>Element type of a buffer (<c>llmn_dtype</c>).</summary>
/// <example>
/// <code>
/// using var buf = LlmBuffer.Allocate(ctx, DType.F16, 1024);
/// int bytes = DType.F16.SizeInBytes(); // 2
/// </code>
/// </example>
public enum DType
{
    /// <summary>32-bit IEEE float (C# <see cref="float"/>).</summary>
    F32 = 0,

    /// <summary>16-bit IEEE half (C# <c>System.Half</c> on .NET 5+, or its bits as <see cref="ushort"/>).</summary>
    F16 = 1,

    /// <summary>bfloat16 (its bits as <see cref="ushort"/>).</summary>
    BF16 = 2,

    /// <summary>Signed 8-bit integer (<see cref="sbyte"/>).</summary>
    I8 = 3,

    /// <summary>Unsigned 8-bit integer (<see cref="byte"/>).</summary>
    U8 = 4,

    /// <summary>Signed 32-bit integer (<see cref="int"/>).</summary>
    I32 = 5,
}

/// <summary>Where a buffer's memory lives (<c>llmn_memory</c>).</summary>
/// <example>
/// <code>
/// using var staging = LlmBuffer.Allocate(ctx, DType.F32, 4096, MemoryKind.Host);
/// </code>
/// </example>
public enum MemoryKind
{
    /// <summary>The context's device memory (host memory for the CPU backend).</summary>
    Device = 0,

    /// <summary>Host memory (page-locked on CUDA, for fast transfers).</summary>
    Host = 1,
}

/// <summary>Helpers for <see cref="DType"/>.</summary>
/// <example>
/// <code>
/// long bytes = count * DType.BF16.SizeInBytes();
/// </code>
/// </example>
public static class DTypeExtensions
{
    /// <summary>Bytes per element of <paramref name="dtype"/>.</summary>
    /// <param name="dtype">The element type.</param>
    /// <returns>1, 2 or 4.</returns>
    /// <exception cref="System.ArgumentOutOfRangeException"><paramref name="dtype"/> is not a defined value.</exception>
    public static int SizeInBytes(this DType dtype) => dtype switch
    {
        DType.F32 => 4,
        DType.F16 => 2,
        DType.BF16 => 2,
        DType.I8 => 1,
        DType.U8 => 1,
        DType.I32 => 4,
        _ => throw new System.ArgumentOutOfRangeException(nameof(dtype), dtype, $"dtype must be a defined DType, got {(int)dtype}"),
    };
}
