// Development fallback shared by the CLI and the tests (linked into both): when the program runs from
// a checkout of this repository and nothing else says where the native library is, use the one
// ./build.sh built. The library itself never guesses repository layouts; only these two programs do.
using System;
using System.IO;

namespace LlmNative.Development;

internal static class DevLibraryLocator
{
    /// <summary>
    /// The native library under the repository's build folder ($LLMNATIVE_BUILD_DIR/lib, else build/native/lib),
    /// found by walking up from <paramref name="startDirectory"/> to LlmNative.sln; null when there is none.
    /// </summary>
    public static string? FindRepositoryBuild(string startDirectory)
    {
        string? root = FindRepositoryRoot(startDirectory);
        if (root is null) return null;
        string? buildDir = Environment.GetEnvironmentVariable("LLMNATIVE_BUILD_DIR");
        string libDir = string.IsNullOrWhiteSpace(buildDir)
            ? Path.Combine(root, "build", "native", "lib")
            : Path.Combine(Path.GetFullPath(Path.Combine(root, buildDir)), "lib");
        string file = Path.Combine(libDir, LlmNativeLibrary.FileName);
        return File.Exists(file) ? file : null;
    }

    /// <summary>The nearest directory at or above <paramref name="startDirectory"/> that contains LlmNative.sln.</summary>
    public static string? FindRepositoryRoot(string startDirectory)
    {
        for (DirectoryInfo? d = new(Path.GetFullPath(startDirectory)); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "LlmNative.sln"))) return d.FullName;
        return null;
    }

    /// <summary>
    /// Points LlmNative at the repository build when neither SetLibraryPath nor LLMNATIVE_LIBRARY_PATH is in effect.
    /// Returns the path used, or null when it changed nothing.
    /// </summary>
    public static string? UseRepositoryBuildIfUnconfigured(string startDirectory)
    {
        if (LlmNativeLibrary.IsLoaded) return null;
        if (!string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(LlmNativeLibrary.PathEnvironmentVariable))) return null;
        string? path = FindRepositoryBuild(startDirectory);
        if (path != null) LlmNativeLibrary.SetLibraryPath(path);
        return path;
    }
}
