// The one loading path. Order: SetLibraryPath, else LLMNATIVE_LIBRARY_PATH, else the package layout
// runtimes/<rid>/native next to the assembly, the assembly's own folder, and finally the runtime's
// default probing. An explicit path is authoritative: if it fails we say so instead of quietly loading
// some other copy. The ABI version is read through the export itself before any P/Invoke is bound,
// so a wrong library is reported (and released) instead of crashing.
using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Runtime.InteropServices;
using LlmNative.Interop;

namespace LlmNative;

/// <summary>How <see cref="LlmNativeLibrary"/> found the native library it loaded.</summary>
/// <example>
/// <code>
/// Console.WriteLine($"{LlmNativeLibrary.LoadedFrom} (via {LlmNativeLibrary.Source})");
/// </code>
/// </example>
public enum NativeLibrarySource
{
    /// <summary><see cref="LlmNativeLibrary.SetLibraryPath"/>.</summary>
    ExplicitPath,

    /// <summary>The <c>LLMNATIVE_LIBRARY_PATH</c> environment variable.</summary>
    EnvironmentVariable,

    /// <summary><c>runtimes/&lt;rid&gt;/native/</c> next to the LlmNative assembly (the NuGet package layout).</summary>
    RuntimesFolder,

    /// <summary>The folder of the LlmNative assembly or of the application.</summary>
    ApplicationFolder,

    /// <summary>The runtime's default search (deps.json native assets, LD_LIBRARY_PATH, PATH, ...).</summary>
    DefaultProbing,
}

/// <summary>
/// Finds and loads the native library (<c>libllmnative.so</c>, <c>llmnative.dll</c>, <c>libllmnative.dylib</c>)
/// and checks that its C ABI version is the one this assembly was generated against. Loading happens on the
/// first use of any LlmNative API; call <see cref="Load"/> to do it eagerly.
/// </summary>
/// <example>
/// <code>
/// LlmNativeLibrary.SetLibraryPath("/opt/llmnative/lib/libllmnative.so"); // optional, before first use
/// LlmNativeLibrary.Load();
/// Console.WriteLine(LlmNativeLibrary.LoadedFrom);
/// </code>
/// </example>
public static class LlmNativeLibrary
{
    /// <summary>Environment variable naming the native library file (or its folder).</summary>
    public const string PathEnvironmentVariable = "LLMNATIVE_LIBRARY_PATH";

    private static readonly object s_lock = new();
    private static string? s_explicitPath;
    private static volatile Loaded? s_loaded;
    private static bool s_resolverInstalled;

    internal sealed class Loaded
    {
        public Loaded(IntPtr handle, string path, NativeLibrarySource source)
        {
            Handle = handle;
            Path = path;
            Source = source;
        }

        public IntPtr Handle { get; }

        public string Path { get; }

        public NativeLibrarySource Source { get; }
    }

    /// <summary>True once the library is loaded and its ABI checked.</summary>
    public static bool IsLoaded => s_loaded != null;

    /// <summary>Full path of the loaded native library file; null before it is loaded.</summary>
    public static string? LoadedFrom => s_loaded?.Path;

    /// <summary>How the loaded library was found; null before it is loaded.</summary>
    public static NativeLibrarySource? Source => s_loaded?.Source;

    /// <summary>The platform's file name of the native library (<c>libllmnative.so</c> on Linux).</summary>
    public static string FileName =>
        RuntimeInformation.IsOSPlatform(OSPlatform.Windows) ? "llmnative.dll"
        : RuntimeInformation.IsOSPlatform(OSPlatform.OSX) ? "libllmnative.dylib"
        : "libllmnative.so";

    /// <summary>The runtime identifier used for <c>runtimes/&lt;rid&gt;/native</c>, for example <c>linux-x64</c>.</summary>
    public static string RuntimeIdentifier
    {
        get
        {
            string os = RuntimeInformation.IsOSPlatform(OSPlatform.Windows) ? "win"
                : RuntimeInformation.IsOSPlatform(OSPlatform.OSX) ? "osx"
                : RuntimeInformation.IsOSPlatform(OSPlatform.Linux) ? "linux"
                : "freebsd";
            string arch = RuntimeInformation.OSArchitecture switch
            {
                Architecture.X64 => "x64",
                Architecture.X86 => "x86",
                Architecture.Arm64 => "arm64",
                Architecture.Arm => "arm",
                Architecture other => other.ToString().ToLowerInvariant(),
            };
            return os + "-" + arch;
        }
    }

    /// <summary>
    /// Uses this native library file (or folder containing it) instead of searching. Call before the first use of
    /// LlmNative; it takes precedence over <c>LLMNATIVE_LIBRARY_PATH</c>.
    /// </summary>
    /// <param name="path">Path of the library file, or of the folder that contains <see cref="FileName"/>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="path"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty.</exception>
    /// <exception cref="InvalidOperationException">A library is already loaded from another path.</exception>
    public static void SetLibraryPath(string path)
    {
        if (path is null) throw new ArgumentNullException(nameof(path));
        if (path.Trim().Length == 0) throw new ArgumentException("path must not be empty", nameof(path));
        lock (s_lock)
        {
            Loaded? loaded = s_loaded;
            if (loaded != null)
            {
                if (SamePath(Resolve(path), loaded.Path)) return;
                throw new InvalidOperationException(
                    $"the native library is already loaded from {loaded.Path}; call SetLibraryPath(\"{path}\") before the first use of LlmNative");
            }
            s_explicitPath = path;
        }
    }

    /// <summary>Loads the native library now (otherwise it is loaded on first use).</summary>
    /// <exception cref="LlmNativeLibraryNotFoundException">No candidate could be loaded; the message lists each path tried.</exception>
    /// <exception cref="LlmNativeAbiMismatchException">The library found has another ABI version.</exception>
    /// <exception cref="LlmNativeVersionMismatchException">The library found is another LlmNative release than this assembly.</exception>
    public static void Load() => EnsureLoaded();

    internal static void EnsureLoaded()
    {
        if (s_loaded == null) LoadSlow();
    }

    private static void LoadSlow()
    {
        lock (s_lock)
        {
            if (s_loaded != null) return;
            IReadOnlyList<Candidate> candidates = BuildCandidates(
                s_explicitPath, Environment.GetEnvironmentVariable(PathEnvironmentVariable), BaseDirectories(),
                RuntimeIdentifier, FileName);
            Loaded loaded = LoadFirst(candidates, LibraryLoader.Default);
            InstallResolver(loaded.Handle);
            s_loaded = loaded;
        }
    }

    /// <summary>A place to try: a file path, or (for default probing) a bare library name.</summary>
    internal sealed class Candidate
    {
        public Candidate(string path, NativeLibrarySource source, string? configured = null)
        {
            Path = path;
            Source = source;
            Configured = configured;
        }

        public string Path { get; }

        /// <summary>The path as configured (SetLibraryPath / environment), before resolution; null when probed.</summary>
        public string? Configured { get; }

        public NativeLibrarySource Source { get; }

        public bool IsDefaultProbe => Source == NativeLibrarySource.DefaultProbing;

        public override string ToString() =>
            IsDefaultProbe ? $"default probing for '{Path}'" : $"{Path} ({Describe(Source)})";
    }

    internal static string Describe(NativeLibrarySource source) => source switch
    {
        NativeLibrarySource.ExplicitPath => "LlmNativeLibrary.SetLibraryPath",
        NativeLibrarySource.EnvironmentVariable => PathEnvironmentVariable,
        NativeLibrarySource.RuntimesFolder => "package runtimes folder",
        NativeLibrarySource.ApplicationFolder => "application folder",
        _ => "default probing",
    };

    /// <summary>The ordered places to try. An explicit path or the environment variable, when set, is the only one.</summary>
    internal static IReadOnlyList<Candidate> BuildCandidates(string? explicitPath, string? environmentPath,
        IEnumerable<string> baseDirectories, string rid, string fileName)
    {
        if (!string.IsNullOrWhiteSpace(explicitPath))
            return new[] { new Candidate(Resolve(explicitPath!, fileName), NativeLibrarySource.ExplicitPath, explicitPath) };
        if (!string.IsNullOrWhiteSpace(environmentPath))
            return new[] { new Candidate(Resolve(environmentPath!, fileName), NativeLibrarySource.EnvironmentVariable, environmentPath) };

        var list = new List<Candidate>();
        List<string> dirs = baseDirectories.Where(d => !string.IsNullOrEmpty(d))
            .Select(d => System.IO.Path.GetFullPath(d).TrimEnd(System.IO.Path.DirectorySeparatorChar, System.IO.Path.AltDirectorySeparatorChar))
            .Distinct(PathComparer).ToList();
        foreach (string dir in dirs)
            list.Add(new Candidate(System.IO.Path.Combine(dir, "runtimes", rid, "native", fileName), NativeLibrarySource.RuntimesFolder));
        foreach (string dir in dirs)
            list.Add(new Candidate(System.IO.Path.Combine(dir, fileName), NativeLibrarySource.ApplicationFolder));
        list.Add(new Candidate(NativeMethods.LibraryName, NativeLibrarySource.DefaultProbing));
        return list;
    }

    /// <summary>One failed attempt, for the error message.</summary>
    internal readonly struct Attempt
    {
        public Attempt(Candidate candidate, string error)
        {
            Candidate = candidate;
            Error = error;
        }

        public Candidate Candidate { get; }

        public string Error { get; }
    }

    /// <summary>Loads the first candidate that loads, exports the ABI entry point and has our ABI version.</summary>
    internal static unsafe Loaded LoadFirst(IReadOnlyList<Candidate> candidates, LibraryLoader loader)
    {
        var attempts = new List<Attempt>();
        foreach (Candidate c in candidates)
        {
            if (!c.IsDefaultProbe && !File.Exists(c.Path))
            {
                attempts.Add(new Attempt(c, "file not found"));
                continue;
            }
            IntPtr h = loader.Load(c, out string? error);
            if (h == IntPtr.Zero)
            {
                attempts.Add(new Attempt(c, error ?? "could not be loaded"));
                continue;
            }
            IntPtr abiFn = loader.GetExport(h, "llmn_get_abi_version");
            if (abiFn == IntPtr.Zero)
            {
                loader.Free(h);
                attempts.Add(new Attempt(c, "loaded, but it does not export llmn_get_abi_version: not an LlmNative library"));
                continue;
            }
            string path = NativeReportedPath(loader, h) ?? (c.IsDefaultProbe ? c.Path : System.IO.Path.GetFullPath(c.Path));
            int abi = 0;
            ((delegate* unmanaged[Cdecl]<int*, NativeMethods.llmn_status>)abiFn)(&abi);
            try
            {
                CheckAbi(path, abi, NativeMethods.LLMN_ABI_VERSION);
                CheckVersion(path, NativeReportedString(loader, h, "llmn_get_version"), LlmNativeInfo.ManagedVersion, ManagedAssemblyPath());
            }
            catch
            {
                loader.Free(h);
                throw;
            }
            return new Loaded(h, path, c.Source);
        }
        throw new LlmNativeLibraryNotFoundException(FormatFailure(FileName, RuntimeIdentifier, attempts),
            attempts.Select(a => a.Candidate.IsDefaultProbe ? a.Candidate.ToString() : a.Candidate.Path).ToArray());
    }

    /// <summary>Throws <see cref="LlmNativeAbiMismatchException"/> unless the versions are equal.</summary>
    internal static void CheckAbi(string libraryPath, int nativeAbiVersion, int expectedAbiVersion)
    {
        if (nativeAbiVersion != expectedAbiVersion)
            throw new LlmNativeAbiMismatchException(libraryPath, nativeAbiVersion, expectedAbiVersion);
    }

    /// <summary>
    /// Throws <see cref="LlmNativeVersionMismatchException"/> unless the native library is the same release
    /// (major.minor.patch; pre-release and build suffixes ignored) as this assembly's informational version.
    /// A null or unparsable native version (no llmn_get_version export) is a mismatch too.
    /// </summary>
    internal static void CheckVersion(string libraryPath, string? nativeVersion, string managedVersion, string assemblyPath)
    {
        static string? Release(string? version)
        {
            if (version is null) return null;
            string core = version.Trim().Split('+', '-')[0];
            string[] parts = core.Split('.');
            if (parts.Length < 3 || parts.Take(3).Any(p => p.Length == 0 || !p.All(char.IsDigit))) return null;
            return string.Join(".", parts.Take(3).Select(p => p.TrimStart('0').Length == 0 ? "0" : p.TrimStart('0')));
        }

        string? native = Release(nativeVersion), managed = Release(managedVersion);
        if (native == null || native != managed)
            throw new LlmNativeVersionMismatchException(libraryPath, string.IsNullOrWhiteSpace(nativeVersion) ? "unknown" : nativeVersion!,
                assemblyPath, managedVersion);
    }

    /// <summary>A string export of the library ("like llmn_get_last_error"), read before any P/Invoke is bound; null when absent or failing.</summary>
    private static unsafe string? NativeReportedString(LibraryLoader loader, IntPtr h, string symbol)
    {
        IntPtr fn = loader.GetExport(h, symbol);
        if (fn == IntPtr.Zero) return null;
        const int Capacity = 256;
        byte* buffer = stackalloc byte[Capacity];
        int length = 0;
        var status = ((delegate* unmanaged[Cdecl]<byte*, int, int*, NativeMethods.llmn_status>)fn)(buffer, Capacity, &length);
        if (status != NativeMethods.llmn_status.LLMN_STATUS_OK || length < 0 || length >= Capacity) return null;
        return Native.Utf8(buffer, length);
    }

    /// <summary>The file of this assembly, for messages ("(single-file application)" when it has none).</summary>
    private static string ManagedAssemblyPath()
    {
        try
        {
#pragma warning disable IL3000 // empty in single-file apps: handled below
            string location = typeof(LlmNativeLibrary).Assembly.Location;
#pragma warning restore IL3000
            return string.IsNullOrEmpty(location) ? $"{AppContext.BaseDirectory} (single-file application)" : location;
        }
        catch (NotSupportedException)
        {
            return "(dynamic assembly)";
        }
    }

    /// <summary>The path the library reports for itself (dladdr), which resolves default probing to a file.</summary>
    private static unsafe string? NativeReportedPath(LibraryLoader loader, IntPtr h)
    {
        IntPtr fn = loader.GetExport(h, "llmn_get_library_path");
        if (fn == IntPtr.Zero) return null;
        const int Capacity = 4096;
        byte* buffer = stackalloc byte[Capacity];
        int length = 0;
        var status = ((delegate* unmanaged[Cdecl]<byte*, int, int*, NativeMethods.llmn_status>)fn)(buffer, Capacity, &length);
        if (status != NativeMethods.llmn_status.LLMN_STATUS_OK || length <= 0 || length >= Capacity) return null;
        return Native.Utf8(buffer, length);
    }

    /// <summary>The error text when nothing loads: every place tried, why each failed, and how to fix it.</summary>
    internal static string FormatFailure(string fileName, string rid, IReadOnlyList<Attempt> attempts)
    {
        var lines = new List<string>
        {
            $"The LlmNative native library ({fileName} for {rid}) could not be loaded. Tried:",
        };
        foreach (Attempt a in attempts) lines.Add($"  - {a.Candidate}: {a.Error}");
        bool explicitOnly = attempts.Count > 0 && attempts.All(a =>
            a.Candidate.Source is NativeLibrarySource.ExplicitPath or NativeLibrarySource.EnvironmentVariable);
        foreach (Attempt a in attempts)
        {
            if (a.Candidate.Configured is string configured && !System.IO.Path.IsPathRooted(configured))
                lines.Add($"Note: '{configured}' is a relative path, resolved against the current directory " +
                          $"{Environment.CurrentDirectory}; use an absolute path.");
        }
        lines.Add(explicitOnly
            ? "Fix: point the path at an existing build of the library (./build.sh builds it into build/native/lib/)."
            : $"Fix: build it with ./build.sh (output build/native/lib/{fileName}) and set {PathEnvironmentVariable} to that file, " +
              $"call LlmNativeLibrary.SetLibraryPath(path) before first use, or deploy it as runtimes/{rid}/native/{fileName} " +
              "next to LlmNative.dll.");
        return string.Join(Environment.NewLine, lines);
    }

    private static IEnumerable<string> BaseDirectories()
    {
        string? assemblyDir = null;
        try
        {
#pragma warning disable IL3000 // empty in single-file apps; AppContext.BaseDirectory below covers that case
            string location = typeof(LlmNativeLibrary).Assembly.Location;
#pragma warning restore IL3000
            if (!string.IsNullOrEmpty(location)) assemblyDir = System.IO.Path.GetDirectoryName(location);
        }
        catch (NotSupportedException)
        {
            // dynamic or single-file assembly: no location
        }
        if (assemblyDir != null) yield return assemblyDir;
        yield return AppContext.BaseDirectory;
    }

    private static string Resolve(string path) => Resolve(path, FileName);

    private static string Resolve(string path, string fileName)
    {
        string full = System.IO.Path.GetFullPath(path);
        return Directory.Exists(full) ? System.IO.Path.Combine(full, fileName) : full;
    }

    private static StringComparer PathComparer =>
        RuntimeInformation.IsOSPlatform(OSPlatform.Windows) ? StringComparer.OrdinalIgnoreCase : StringComparer.Ordinal;

    private static bool SamePath(string a, string b) => PathComparer.Equals(System.IO.Path.GetFullPath(a), System.IO.Path.GetFullPath(b));

    /// <summary>Makes the loaded module the target of every [DllImport]/[LibraryImport] of "llmnative" in this assembly.</summary>
    private static void InstallResolver(IntPtr handle)
    {
        if (s_resolverInstalled) return;
        s_resolverInstalled = true;
#if NET5_0_OR_GREATER
        NativeLibrary.SetDllImportResolver(typeof(LlmNativeLibrary).Assembly, (name, _, _) =>
            name == NativeMethods.LibraryName && s_loaded is Loaded l ? l.Handle : IntPtr.Zero);
#else
        // No resolver API: the module loaded by path is already in the process, and the runtime's own
        // lookup of "llmnative" (dlopen("libllmnative.so") / LoadLibrary("llmnative.dll")) returns it.
        _ = handle;
#endif
    }

    /// <summary>Loads a candidate with the platform's loader; a seam so tests can drive <see cref="LoadFirst"/>.</summary>
    internal class LibraryLoader
    {
        public static readonly LibraryLoader Default = new();

        public virtual IntPtr Load(Candidate candidate, out string? error)
        {
#if NET5_0_OR_GREATER
            try
            {
                error = null;
                return candidate.IsDefaultProbe
                    ? NativeLibrary.Load(candidate.Path, typeof(LlmNativeLibrary).Assembly, null)
                    : NativeLibrary.Load(candidate.Path);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                error = LastLine(e.Message);
                return IntPtr.Zero;
            }
#else
            string name = candidate.IsDefaultProbe ? FileName : candidate.Path;
            return OsLoader.Load(name, out error);
#endif
        }

        public virtual IntPtr GetExport(IntPtr library, string symbol)
        {
#if NET5_0_OR_GREATER
            return NativeLibrary.TryGetExport(library, symbol, out IntPtr address) ? address : IntPtr.Zero;
#else
            return OsLoader.GetExport(library, symbol);
#endif
        }

        public virtual void Free(IntPtr library)
        {
#if NET5_0_OR_GREATER
            NativeLibrary.Free(library);
#else
            OsLoader.Free(library);
#endif
        }

        /// <summary>.NET puts the OS loader's reason (dlerror / LoadLibrary) on the last line of its message.</summary>
        internal static string LastLine(string message)
        {
            string[] lines = message.Split(new[] { '\n' }, StringSplitOptions.RemoveEmptyEntries)
                .Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();
            return lines.Length == 0 ? message : lines[lines.Length - 1];
        }
    }
}

/// <summary>
/// The native library could not be loaded from any of the places LlmNative looked. The message lists each path
/// tried with the reason it failed, and how to fix it.
/// </summary>
/// <example>
/// <code>
/// try { LlmNativeLibrary.Load(); }
/// catch (LlmNativeLibraryNotFoundException e) { Console.Error.WriteLine(e.Message); }
/// </code>
/// </example>
public sealed class LlmNativeLibraryNotFoundException : DllNotFoundException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">The full explanation, including every path tried.</param>
    /// <param name="pathsTried">The paths (or probe descriptions) that were tried, in order.</param>
    public LlmNativeLibraryNotFoundException(string message, IReadOnlyList<string> pathsTried) : base(message)
    {
        PathsTried = pathsTried;
    }

    /// <summary>The paths (or probe descriptions) that were tried, in order.</summary>
    public IReadOnlyList<string> PathsTried { get; }
}

/// <summary>
/// The native library that was found has a different C ABI version than this LlmNative assembly was generated
/// against (<c>LLMN_ABI_VERSION</c>). Using it could corrupt memory, so it is not used.
/// </summary>
/// <example>
/// <code>
/// try { LlmNativeLibrary.Load(); }
/// catch (LlmNativeAbiMismatchException e) { Console.Error.WriteLine($"rebuild {e.LibraryPath}"); }
/// </code>
/// </example>
public sealed class LlmNativeAbiMismatchException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="libraryPath">The library file that was found.</param>
    /// <param name="nativeAbiVersion">The ABI version that library reports.</param>
    /// <param name="expectedAbiVersion">The ABI version this assembly expects.</param>
    public LlmNativeAbiMismatchException(string libraryPath, int nativeAbiVersion, int expectedAbiVersion)
        : base($"The native library at {libraryPath} has ABI {nativeAbiVersion}, this LlmNative expects {expectedAbiVersion}. " +
               "Use the native library built from the same LlmNative version (./build.sh rebuilds both).")
    {
        LibraryPath = libraryPath;
        NativeAbiVersion = nativeAbiVersion;
        ExpectedAbiVersion = expectedAbiVersion;
    }

    /// <summary>The library file that was found.</summary>
    public string LibraryPath { get; }

    /// <summary>The ABI version the library reports.</summary>
    public int NativeAbiVersion { get; }

    /// <summary>The ABI version this assembly expects.</summary>
    public int ExpectedAbiVersion { get; }
}
