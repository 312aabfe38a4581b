using System;

namespace LlmNative;

/// <summary>
/// The native library that was found is another LlmNative release (major.minor.patch) than this managed assembly.
/// The two are built and shipped together (the LlmNative package depends on <c>LlmNative.Runtime.&lt;rid&gt;</c> of
/// the same exact version), so a difference means a stale or foreign copy was picked up; it is not used.
/// </summary>
/// <example>
/// <code>
/// try { LlmNativeLibrary.Load(); }
/// catch (LlmNativeVersionMismatchException e) { Console.Error.WriteLine($"{e.LibraryPath} is {e.NativeVersion}, expected {e.ManagedVersion}"); }
/// </code>
/// </example>
public sealed class LlmNativeVersionMismatchException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="libraryPath">The native library file that was found.</param>
    /// <param name="nativeVersion">The version that library reports (<c>llmn_get_version</c>), or "unknown".</param>
    /// <param name="assemblyPath">The LlmNative assembly file.</param>
    /// <param name="managedVersion">This assembly's version.</param>
    public LlmNativeVersionMismatchException(string libraryPath, string nativeVersion, string assemblyPath, string managedVersion)
        : base($"LlmNative version mismatch: the native library {libraryPath} is version {nativeVersion}, but the managed " +
               $"assembly {assemblyPath} is version {managedVersion}; both must be the same release. Use the " +
               "LlmNative.Runtime.<rid> package of the same version (a PackageReference to LlmNative alone brings it), " +
               $"remove the stale copy, or point {LlmNativeLibrary.PathEnvironmentVariable} / LlmNativeLibrary.SetLibraryPath at " +
               "the matching library (./build.sh rebuilds both from one checkout).")
    {
        LibraryPath = libraryPath;
        NativeVersion = nativeVersion;
        AssemblyPath = assemblyPath;
        ManagedVersion = managedVersion;
    }

    /// <summary>The native library file that was found.</summary>
    public string LibraryPath { get; }

    /// <summary>The version the native library reports, or "unknown".</summary>
    public string NativeVersion { get; }

    /// <summary>The LlmNative assembly file.</summary>
    public string AssemblyPath { get; }

    /// <summary>This assembly's version (informational version without the build suffix).</summary>
    public string ManagedVersion { get; }
}
