namespace LlmNative;

/// <summary>
/// Status codes of the native library (the C enum <c>llmn_status</c>, same values). Carried by
/// <see cref="LlmNativeException.Status"/>.
/// </summary>
/// <example>
/// <code>
/// try { LlmNativeRuntime.SetCpuIsa(CpuIsa.Avx512); }
/// catch (LlmNativeException e) when (e.Status == LlmNativeStatus.Unsupported) { /* this CPU lacks AVX-512 */ }
/// </code>
/// </example>
public enum LlmNativeStatus
{
    /// <summary>Success.</summary>
    Ok = 0,

    /// <summary>A value is out of range or inconsistent with another.</summary>
    InvalidArgument = 1,

    /// <summary>A handle is null, freed, or of the wrong type.</summary>
    InvalidHandle = 2,

    /// <summary>A host or device allocation failed.</summary>
    OutOfMemory = 3,

    /// <summary>A valid request that this build, backend or device cannot do.</summary>
    Unsupported = 4,

    /// <summary>The CUDA runtime (or another backend) reported an error.</summary>
    BackendError = 5,

    /// <summary>A KV cache has no free block left.</summary>
    CapacityExceeded = 6,

    /// <summary>An unknown sequence id.</summary>
    NotFound = 7,

    /// <summary>An output string or array capacity is too small.</summary>
    BufferTooSmall = 8,

    /// <summary>A bug in LlmNative; please report it with the message.</summary>
    Internal = 9,
}
