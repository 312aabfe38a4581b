using System;
using System.IO;
using System.Linq;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using LlmNative.Interop;
using Xunit;

namespace LlmNative.Tests;

public class LoaderTests
{
    [Fact]
    public void Abi_check_accepts_the_same_version_and_explains_a_different_one()
    {
        LlmNativeLibrary.CheckAbi("/x/libllmnative.so", 1, 1);
        var e = Assert.Throws<LlmNativeAbiMismatchException>(() => LlmNativeLibrary.CheckAbi("/x/libllmnative.so", 7, 1));
        Assert.Contains("native library at /x/libllmnative.so has ABI 7, this LlmNative expects 1", e.Message);
        Assert.Equal(7, e.NativeAbiVersion);
        Assert.Equal(1, e.ExpectedAbiVersion);
        Assert.Equal("/x/libllmnative.so", e.LibraryPath);
    }

    [Fact]
    public void Candidates_follow_the_documented_order()
    {
        string rid = "linux-x64", file = "libllmnative.so";
        string app = Path.Combine(Path.GetTempPath(), "app"), asm = Path.Combine(Path.GetTempPath(), "asm");

        var probed = LlmNativeLibrary.BuildCandidates(null, null, new[] { asm, app, asm }, rid, file);
        Assert.Equal(new[]
        {
            Path.Combine(asm, "runtimes", rid, "native", file),
            Path.Combine(app, "runtimes", rid, "native", file),
            Path.Combine(asm, file),
            Path.Combine(app, file),
            NativeMethods.LibraryName,
        }, probed.Select(c => c.Path));
        Assert.Equal(NativeLibrarySource.DefaultProbing, probed[^1].Source);

        var env = LlmNativeLibrary.BuildCandidates(null, "/env/lib.so", new[] { app }, rid, file);
        Assert.Equal(NativeLibrarySource.EnvironmentVariable, Assert.Single(env).Source);

        var explicitFirst = LlmNativeLibrary.BuildCandidates("/explicit/lib.so", "/env/lib.so", new[] { app }, rid, file);
        Assert.Equal(Path.GetFullPath("/explicit/lib.so"), Assert.Single(explicitFirst).Path);

        // A folder is completed with the file name.
        var folder = LlmNativeLibrary.BuildCandidates(Path.GetTempPath(), null, Array.Empty<string>(), rid, file);
        Assert.Equal(Path.Combine(Path.GetFullPath(Path.GetTempPath()), file), Assert.Single(folder).Path);
    }

    [Fact]
    public void Failure_message_lists_every_path_tried_and_the_fix()
    {
        string dir = Path.Combine(Path.GetTempPath(), "llmnative-missing-" + Guid.NewGuid().ToString("N"));
        var candidates = LlmNativeLibrary.BuildCandidates(null, null, new[] { dir }, "linux-x64", "libllmnative-does-not-exist.so")
            .Take(2).ToList(); // leave out default probing: it might find the real library
        var e = Assert.Throws<LlmNativeLibraryNotFoundException>(() =>
            LlmNativeLibrary.LoadFirst(candidates, LlmNativeLibrary.LibraryLoader.Default));
        Assert.IsAssignableFrom<DllNotFoundException>(e);
        foreach (var c in candidates)
        {
            Assert.Contains(c.Path, e.Message);
            Assert.Contains(c.Path, e.PathsTried);
        }
        Assert.Contains("file not found", e.Message);
        Assert.Contains("./build.sh", e.Message);
        Assert.Contains(LlmNativeLibrary.PathEnvironmentVariable, e.Message);
    }

    [Fact]
    public void Failure_message_for_an_explicit_path_says_so()
    {
        var candidates = LlmNativeLibrary.BuildCandidates("/no/such/libllmnative.so", null, Array.Empty<string>(), "linux-x64", "libllmnative.so");
        var e = Assert.Throws<LlmNativeLibraryNotFoundException>(() =>
            LlmNativeLibrary.LoadFirst(candidates, LlmNativeLibrary.LibraryLoader.Default));
        Assert.Contains("/no/such/libllmnative.so", e.Message);
        Assert.Contains("SetLibraryPath", e.Message);
        Assert.DoesNotContain("relative", e.Message);

        candidates = LlmNativeLibrary.BuildCandidates(null, "no/such/lib.so", Array.Empty<string>(), "linux-x64", "libllmnative.so");
        e = Assert.Throws<LlmNativeLibraryNotFoundException>(() =>
            LlmNativeLibrary.LoadFirst(candidates, LlmNativeLibrary.LibraryLoader.Default));
        Assert.Contains(LlmNativeLibrary.PathEnvironmentVariable, e.Message);
        Assert.Contains("'no/such/lib.so' is a relative path", e.Message);
        Assert.Contains(Environment.CurrentDirectory, e.Message);
    }

    [Fact]
    public void A_file_that_is_not_a_library_is_reported_with_the_loaders_reason()
    {
        string path = Path.Combine(Path.GetTempPath(), "llmnative-not-a-library-" + Guid.NewGuid().ToString("N") + ".so");
        File.WriteAllText(path, "not an ELF file");
        try
        {
            var candidates = LlmNativeLibrary.BuildCandidates(path, null, Array.Empty<string>(), "linux-x64", "libllmnative.so");
            var e = Assert.Throws<LlmNativeLibraryNotFoundException>(() =>
                LlmNativeLibrary.LoadFirst(candidates, LlmNativeLibrary.LibraryLoader.Default));
            Assert.Contains(path, e.Message);
            Assert.DoesNotContain("file not found", e.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void A_library_with_another_abi_is_refused_and_released()
    {
        string path = Path.Combine(Path.GetTempPath(), "llmnative-fake-" + Guid.NewGuid().ToString("N") + ".so");
        File.WriteAllText(path, "stand-in; the fake loader never opens it");
        try
        {
            var loader = new FakeLoader();
            var candidates = LlmNativeLibrary.BuildCandidates(path, null, Array.Empty<string>(), "linux-x64", "libllmnative.so");
            var e = Assert.Throws<LlmNativeAbiMismatchException>(() => LlmNativeLibrary.LoadFirst(candidates, loader));
            Assert.Contains($"native library at {Path.GetFullPath(path)} has ABI 99, this LlmNative expects {NativeMethods.LLMN_ABI_VERSION}", e.Message);
            Assert.True(loader.Freed);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Os_loader_opens_the_real_library_and_finds_its_exports()
    {
        string path = LlmNativeLibrary.LoadedFrom ?? LlmNativeInfo.LibraryPath;
        IntPtr h = OsLoader.Load(path, out string? error);
        Assert.True(h != IntPtr.Zero, error);
        try
        {
            Assert.NotEqual(IntPtr.Zero, OsLoader.GetExport(h, "llmn_get_abi_version"));
            Assert.Equal(IntPtr.Zero, OsLoader.GetExport(h, "llmn_no_such_function"));
        }
        finally
        {
            OsLoader.Free(h);
        }
        Assert.Equal(IntPtr.Zero, OsLoader.Load("/no/such/libllmnative.so", out error));
        Assert.False(string.IsNullOrEmpty(error));
    }

    [Fact]
    public void SetLibraryPath_after_loading_accepts_the_same_path_and_refuses_another()
    {
        LlmNativeLibrary.Load();
        LlmNativeLibrary.SetLibraryPath(LlmNativeLibrary.LoadedFrom!);
        var e = Assert.Throws<InvalidOperationException>(() => LlmNativeLibrary.SetLibraryPath("/somewhere/else/libllmnative.so"));
        Assert.Contains(LlmNativeLibrary.LoadedFrom!, e.Message);
        Assert.Throws<ArgumentNullException>(() => LlmNativeLibrary.SetLibraryPath(null!));
        Assert.Throws<ArgumentException>(() => LlmNativeLibrary.SetLibraryPath(" "));
    }

    [Fact]
    public void Rid_and_file_name_describe_this_platform()
    {
        Assert.Matches("^(linux|win|osx|freebsd)-[a-z0-9]+$", LlmNativeLibrary.RuntimeIdentifier);
        if (OperatingSystem.IsLinux()) Assert.Equal("libllmnative.so", LlmNativeLibrary.FileName);
    }

    /// <summary>Pretends to load a library whose llmn_get_abi_version reports 99.</summary>
    private sealed unsafe class FakeLoader : LlmNativeLibrary.LibraryLoader
    {
        public bool Freed { get; private set; }

        public override IntPtr Load(LlmNativeLibrary.Candidate candidate, out string? error)
        {
            error = null;
            return (IntPtr)1;
        }

        public override IntPtr GetExport(IntPtr library, string symbol) =>
            symbol == "llmn_get_abi_version" ? (IntPtr)(delegate* unmanaged[Cdecl]<int*, int>)&FakeAbi : IntPtr.Zero;

        public override void Free(IntPtr library) => Freed = true;

        [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
        private static int FakeAbi(int* version)
        {
            *version = 99;
            return 0;
        }
    }
}
