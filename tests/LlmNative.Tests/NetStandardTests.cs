using System;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Runtime.Loader;
using Xunit;

namespace LlmNative.Tests;

/// <summary>
/// The netstandard2.0 build (DllImport branch of the generated bindings, dlopen preloading instead of
/// NativeLibrary, delegate-based callback) loaded side by side in its own AssemblyLoadContext and driven
/// through reflection. No logger is given to it: its log callback must never replace the main copy's.
/// </summary>
public class NetStandardTests
{
    private static readonly Lazy<Assembly> NetStandard = new(Load);

    private static Assembly Load()
    {
        string path = typeof(NetStandardTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .Single(a => a.Key == "NetStandardLlmNative").Value!;
        Assert.True(File.Exists(path), $"netstandard2.0 build not found at {path}");
        var alc = new AssemblyLoadContext("LlmNative-netstandard2.0", isCollectible: false);
        Assembly a = alc.LoadFromAssemblyPath(path);
        Assert.NotSame(typeof(LlmContext).Assembly, a);
        // Same library file as the main copy.
        a.GetType("LlmNative.LlmNativeLibrary")!.GetMethod("SetLibraryPath")!.Invoke(null, new object[] { LlmNativeLibrary.LoadedFrom ?? LlmNativeInfo.LibraryPath });
        return a;
    }

    private static Type T(string name) => NetStandard.Value.GetType("LlmNative." + name, throwOnError: true)!;

    private static object? Get(string type, string property) => T(type).GetProperty(property)!.GetValue(null);

    [Fact]
    public void Netstandard_build_targets_netstandard()
    {
        var tfm = NetStandard.Value.GetCustomAttribute<System.Runtime.Versioning.TargetFrameworkAttribute>();
        Assert.Equal(".NETStandard,Version=v2.0", tfm?.FrameworkName);
    }

    [Fact]
    public void Netstandard_build_loads_the_library_and_reports_versions()
    {
        Assert.Equal(LlmNativeInfo.Version, Get("LlmNativeInfo", "Version"));
        Assert.Equal(LlmNativeInfo.AbiVersion, Get("LlmNativeInfo", "AbiVersion"));
        Assert.Equal(LlmNativeLibrary.LoadedFrom, Get("LlmNativeLibrary", "LoadedFrom"));
    }

    [Fact]
    public void Netstandard_build_reads_safetensors_and_rejects_a_bad_header()
    {
        string dir = Path.Combine(Path.GetTempPath(), "llmn-ns-st-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string good = Path.Combine(dir, "a.safetensors"), bad = Path.Combine(dir, "b.safetensors");
            File.WriteAllBytes(good, SafetensorsWriter.Build(new[]
            {
                SafetensorsWriter.E("w", "I32", new long[] { 2, 2 }, new[] { 1, -2, 3, int.MaxValue }),
                SafetensorsWriter.E("s", "F16", new long[] { 3 }, new ushort[] { 0x3c00, 0xc000, 0x0001 }),
            }, new System.Collections.Generic.Dictionary<string, string> { ["format"] = "pt\u00e9" }));
            File.WriteAllBytes(bad, SafetensorsWriter.Build(new[] { SafetensorsWriter.E("w", "I32", new long[] { 3 }, new int[4]) }));

            MethodInfo open = T("SafetensorsFile").GetMethod("Open")!;
            using (var f = (IDisposable)open.Invoke(null, new object[] { good })!)
            {
                Type ft = f.GetType();
                Assert.Equal(new[] { 1, -2, 3, int.MaxValue }, (int[])ft.GetMethod("Read")!.MakeGenericMethod(typeof(int)).Invoke(f, new object[] { "w" })!);
                Assert.Equal(new ushort[] { 0x3c00, 0xc000, 0x0001 }, (ushort[])ft.GetMethod("Read")!.MakeGenericMethod(typeof(ushort)).Invoke(f, new object[] { "s" })!);
                var meta = (System.Collections.Generic.IReadOnlyDictionary<string, string>)ft.GetProperty("Metadata")!.GetValue(f)!;
                Assert.Equal("pt\u00e9", meta["format"]);
            }
            var e = Assert.Throws<TargetInvocationException>(() => open.Invoke(null, new object[] { bad }));
            Assert.IsType<InvalidDataException>(e.InnerException);
            Assert.Contains("needs 12", e.InnerException!.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Netstandard_build_runs_buffers_wrap_and_errors()
    {
        long baseline = TestSetup.SettledLiveObjectCount();
        Type backend = T("Backend"), dtype = T("DType"), memoryKind = T("MemoryKind");
        object ctx = T("LlmContext").GetMethods().Single(m => m.Name == "Create" && m.GetParameters()[2].ParameterType.Name == "ILoggerFactory")
            .Invoke(null, new object?[] { Enum.ToObject(backend, 0), 0, null })!;
        try
        {
            MethodInfo allocate = T("LlmBuffer").GetMethod("Allocate")!;
            using var buf = (IDisposable)allocate.Invoke(null, new[] { ctx, Enum.ToObject(dtype, 5), 5L, Enum.ToObject(memoryKind, 0) })!;
            buf.GetType().GetMethod("Fill")!.MakeGenericMethod(typeof(int)).Invoke(buf, new object?[] { 7, 1L, null });
            buf.GetType().GetMethod("Fill")!.MakeGenericMethod(typeof(int)).Invoke(buf, new object?[] { -1, 0L, 1L });
            var back = (int[])buf.GetType().GetMethod("ToArray")!.MakeGenericMethod(typeof(int)).Invoke(buf, null)!;
            Assert.Equal(new[] { -1, 7, 7, 7, 7 }, back);

            float[] mine = new float[4];
            MethodInfo wrap = T("LlmBuffer").GetMethods().Single(m => m.Name == "Wrap" && m.GetParameters().Length == 2).MakeGenericMethod(typeof(float));
            using (var wrapped = (IDisposable)wrap.Invoke(null, new object[] { ctx, mine.AsMemory() })!)
                wrapped.GetType().GetMethod("Fill")!.MakeGenericMethod(typeof(float)).Invoke(wrapped, new object?[] { 1.5f, 0L, null });
            Assert.Equal(new[] { 1.5f, 1.5f, 1.5f, 1.5f }, mine);

            var e = Assert.Throws<TargetInvocationException>(() =>
                allocate.Invoke(null, new[] { ctx, Enum.ToObject(dtype, 4), 1L << 52, Enum.ToObject(memoryKind, 0) }));
            Assert.Equal("LlmNative.LlmNativeException", e.InnerException!.GetType().FullName);
            Assert.Equal("InvalidArgument", e.InnerException.GetType().GetProperty("Status")!.GetValue(e.InnerException)!.ToString());
            Assert.Equal("llmn_buffer_create", e.InnerException.GetType().GetProperty("Function")!.GetValue(e.InnerException));
        }
        finally
        {
            ((IDisposable)ctx).Dispose();
        }
        Assert.Equal(baseline, LlmNativeRuntime.LiveObjectCount);
    }
}
