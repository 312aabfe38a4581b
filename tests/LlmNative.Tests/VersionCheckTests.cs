using System;
using System.IO;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using LlmNative.Interop;
using Xunit;

namespace LlmNative.Tests;

/// <summary>The loader's release check: the native library must be the managed assembly's major.minor.patch.</summary>
public class VersionCheckTests
{
    [Theory]
    [InlineData("0.1.0", "0.1.0")]
    [InlineData("0.1.0+cuda.12.4", "0.1.0")]
    [InlineData("0.1.0", "0.1.0-preview.3")]
    [InlineData("1.02.3", "1.2.3")]
    public void Same_release_is_accepted(string native, string managed) =>
        LlmNativeLibrary.CheckVersion("/x/libllmnative.so", native, managed, "/app/LlmNative.dll");

    [Theory]
    [InlineData("0.2.0", "0.1.0")]
    [InlineData("0.1.1+abc", "0.1.0")]
    [InlineData("1.0", "1.0.0")]
    [InlineData("garbage", "0.1.0")]
    public void Another_release_is_refused_naming_both_versions_and_both_files(string native, string managed)
    {
        var e = Assert.Throws<LlmNativeVersionMismatchException>(() =>
            LlmNativeLibrary.CheckVersion("/x/libllmnative.so", native, managed, "/app/LlmNative.dll"));
        Assert.Contains($"native library /x/libllmnative.so is version {native}", e.Message);
        Assert.Contains($"managed assembly /app/LlmNative.dll is version {managed}", e.Message);
        Assert.Contains("LlmNative.Runtime.<rid>", e.Message);
        Assert.IsAssignableFrom<InvalidOperationException>(e);
        Assert.Equal(("/x/libllmnative.so", native, "/app/LlmNative.dll", managed),
            (e.LibraryPath, e.NativeVersion, e.AssemblyPath, e.ManagedVersion));
    }

    [Fact]
    public void A_library_without_a_version_is_refused_as_unknown()
    {
        var e = Assert.Throws<LlmNativeVersionMismatchException>(() =>
            LlmNativeLibrary.CheckVersion("/x/libllmnative.so", null, "0.1.0", "/app/LlmNative.dll"));
        Assert.Contains("is version unknown", e.Message);
    }

    [Fact]
    public void The_loaded_library_is_this_release()
    {
        LlmNativeLibrary.Load();
        LlmNativeLibrary.CheckVersion(LlmNativeLibrary.LoadedFrom!, LlmNativeInfo.Version, LlmNativeInfo.ManagedVersion, "LlmNative.dll");
    }

    [Fact]
    public void A_library_of_another_release_is_refused_and_released()
    {
        string path = Path.Combine(Path.GetTempPath(), "llmnative-fake-" + Guid.NewGuid().ToString("N") + ".so");
        File.WriteAllText(path, "stand-in; the fake loader never opens it");
        try
        {
            var loader = new OtherReleaseLoader();
            var candidates = LlmNativeLibrary.BuildCandidates(path, null, Array.Empty<string>(), "linux-x64", "libllmnative.so");
            var e = Assert.Throws<LlmNativeVersionMismatchException>(() => LlmNativeLibrary.LoadFirst(candidates, loader));
            Assert.Equal(Path.GetFullPath(path), e.LibraryPath);
            Assert.Equal("9.8.7+fake", e.NativeVersion);
            Assert.Equal(LlmNativeInfo.ManagedVersion, e.ManagedVersion);
            Assert.Equal(typeof(LlmNativeLibrary).Assembly.Location, e.AssemblyPath);
            Assert.Contains(Path.GetFullPath(path), e.Message);
            Assert.Contains(typeof(LlmNativeLibrary).Assembly.Location, e.Message);
            Assert.True(loader.Freed);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Pretends to load a library with this ABI whose llmn_get_version reports "9.8.7+fake".</summary>
    private sealed unsafe class OtherReleaseLoader : LlmNativeLibrary.LibraryLoader
    {
        public bool Freed { get; private set; }

        public override IntPtr Load(LlmNativeLibrary.Candidate candidate, out string? error)
        {
            error = null;
            return (IntPtr)1;
        }

        public override IntPtr GetExport(IntPtr library, string symbol) => symbol switch
        {
            "llmn_get_abi_version" => (IntPtr)(delegate* unmanaged[Cdecl]<int*, int>)&Abi,
            "llmn_get_version" => (IntPtr)(delegate* unmanaged[Cdecl]<byte*, int, int*, int>)&Version,
            _ => IntPtr.Zero,
        };

        public override void Free(IntPtr library) => Freed = true;

        [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
        private static int Abi(int* version)
        {
            *version = NativeMethods.LLMN_ABI_VERSION;
            return 0;
        }

        [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
        private static int Version(byte* buffer, int capacity, int* length)
        {
            byte[] text = Encoding.UTF8.GetBytes("9.8.7+fake");
            *length = text.Length;
            for (int i = 0; i < text.Length && i < capacity - 1; i++) buffer[i] = text[i];
            if (capacity > 0) buffer[Math.Min(text.Length, capacity - 1)] = 0;
            return 0;
        }
    }
}
