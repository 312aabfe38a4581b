using System;
using Microsoft.Extensions.Logging;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>Process-wide settings of the native runtime: CPU thread pool, CPU instruction set, logging, leak counter.</summary>
/// <example>
/// <code>
/// LlmNativeRuntime.SetLogger(loggerFactory.CreateLogger("LlmNative")); // lines not tied to a context
/// LlmNativeRuntime.SetCpuThreads(8);
/// LlmNativeRuntime.SetCpuIsa(CpuIsa.Scalar);                          // reference kernels, e.g. to compare
/// long live = LlmNativeRuntime.LiveObjectCount;
/// </code>
/// </example>
public static unsafe class LlmNativeRuntime
{
    /// <summary>Resizes the CPU backend's thread pool.</summary>
    /// <param name="threads">Worker threads, at most 1024; 0 sizes the pool from the machine (or LLMNATIVE_NUM_THREADS).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threads"/> is negative.</exception>
    /// <exception cref="LlmNativeException">The native library refused the value (above its limit).</exception>
    public static void SetCpuThreads(int threads)
    {
        Argument.AtLeast(threads, 0, nameof(threads));
        Native.EnsureLoaded();
        Native.Check(llmn_set_cpu_threads(threads));
    }

    /// <summary>Caps the instruction set the CPU kernels use (<see cref="CpuIsa.Scalar"/> runs the reference path).</summary>
    /// <param name="isa">An instruction set no better than <see cref="CpuInfo.DetectedIsa"/>.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="isa"/> is undefined.</exception>
    /// <exception cref="LlmNativeException">The CPU or this build lacks it (<see cref="LlmNativeStatus.Unsupported"/>).</exception>
    public static void SetCpuIsa(CpuIsa isa)
    {
        Argument.Defined(isa, nameof(isa));
        Native.EnsureLoaded();
        Native.Check(llmn_set_cpu_isa((int)isa));
    }

    /// <summary>Number of live native objects (contexts, buffers, weights, caches), for leak checks.</summary>
    public static long LiveObjectCount
    {
        get
        {
            Native.EnsureLoaded();
            long count;
            Native.Check(llmn_debug_live_objects(&count));
            return count;
        }
    }

    /// <summary>
    /// Sets the logger for native lines that concern no context (and for contexts created without a logger).
    /// Without one, such lines go to every context's logger. Null removes it. Loggers must not call LlmNative.
    /// </summary>
    /// <param name="logger">The logger, or null.</param>
    public static void SetLogger(ILogger? logger) => NativeLog.SetGlobal(logger);
}
