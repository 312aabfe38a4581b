using System;
using System.IO;
using System.Runtime.CompilerServices;
using LlmNative.Development;
using Xunit;

// Native state is process-wide (live-object counter, log callback, CPU ISA): tests run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace LlmNative.Tests;

internal static class TestSetup
{
    /// <summary>
    /// Where the native library comes from: LLMNATIVE_LIBRARY_PATH (a relative value is taken from the repository
    /// root, where `dotnet test` is run, since the test host runs in bin/), else the repository build.
    /// </summary>
    [ModuleInitializer]
    internal static void PointAtRepositoryBuild()
    {
        string? env = Environment.GetEnvironmentVariable(LlmNativeLibrary.PathEnvironmentVariable);
        string? root = DevLibraryLocator.FindRepositoryRoot(AppContext.BaseDirectory);
        if (!string.IsNullOrWhiteSpace(env) && !Path.IsPathRooted(env) && root != null)
            LlmNativeLibrary.SetLibraryPath(Path.Combine(root, env));
        else
            DevLibraryLocator.UseRepositoryBuildIfUnconfigured(AppContext.BaseDirectory);
    }

    /// <summary>A random generator with a fresh seed; tests put the seed into their assertion messages.</summary>
    internal static Random Random(out int seed)
    {
        seed = Environment.TickCount & 0x7fffffff;
        return new Random(seed);
    }

    /// <summary>Collects finalizable leftovers of earlier tests so object counts are stable.</summary>
    internal static long SettledLiveObjectCount()
    {
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        return LlmNativeRuntime.LiveObjectCount;
    }
}

/// <summary>A [Fact] that is skipped, visibly and with the reason, when no CUDA device is usable.</summary>
public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute()
    {
        string? reason = CudaSkipReason.Value;
        if (reason != null) Skip = reason;
    }
}

internal static class CudaSkipReason
{
    /// <summary>Null when CUDA is usable, else why not.</summary>
    public static readonly Lazy<string?> Lazy = new(Compute);

    public static string? Value => Lazy.Value;

    private static string? Compute()
    {
        try
        {
            CudaInfo cuda = LlmNativeInfo.Cuda;
            if (cuda.Available) return null;
            return cuda.Compiled
                ? $"CUDA not available: {cuda.UnavailableReason}"
                : "CUDA not available: the native library was built without the CUDA backend";
        }
        catch (Exception e)
        {
            return $"CUDA not available: the native library could not be queried ({e.GetType().Name}: {e.Message})";
        }
    }
}
