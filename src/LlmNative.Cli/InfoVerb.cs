using System;
using System.IO;
using System.Linq;
using System.Text.Json;

namespace LlmNative.Cli;

/// <summary><c>llmnative info</c>: what was loaded from where, and what it can run on (or why not).</summary>
internal static class InfoVerb
{
    public const string Usage =
        "Usage: llmnative info [--json]\n" +
        "\n" +
        "Prints the LlmNative version and C ABI, the native library file and how it was found, the backends,\n" +
        "the CPU (instruction set detected and active, threads, L3 cache) and CUDA (compiled in, available,\n" +
        "devices, or the reason it is unavailable).\n" +
        "\n" +
        "Options:\n" +
        "  --json      one JSON object instead of text\n" +
        "  -h, --help  show this help\n";

    public static int Run(Invocation inv)
    {
        bool json = false;
        foreach (string a in inv.Args)
        {
            if (a == "--json") json = true;
            else throw new UsageException($"info: unknown argument '{a}'");
        }

        LlmNativeLibrary.Load();
        var report = new Report(
            LlmNativeInfo.Version, LlmNativeInfo.ManagedVersion, LlmNativeInfo.AbiVersion, LlmNativeInfo.ExpectedAbiVersion,
            LlmNativeLibrary.LoadedFrom ?? LlmNativeInfo.LibraryPath, FoundVia(inv.Options), LlmNativeInfo.Cpu, LlmNativeInfo.Cuda);
        if (json) WriteJson(inv.Out, report);
        else WriteText(inv.Out, report);
        return Cli.Ok;
    }

    private sealed record Report(string Version, string ManagedVersion, int Abi, int ExpectedAbi, string LibraryPath,
        string Source, CpuInfo Cpu, CudaInfo Cuda)
    {
        public string[] Backends => Cuda.Available ? new[] { "cpu", "cuda" } : new[] { "cpu" };
    }

    /// <summary>How the library was found, in words ("repository" when the CLI fell back to the checkout's build).</summary>
    private static string FoundVia(GlobalOptions options) =>
        options.RepositoryBuildPath != null && LlmNativeLibrary.Source == NativeLibrarySource.ExplicitPath
            ? "repository"
            : LlmNativeLibrary.Source switch
            {
                NativeLibrarySource.ExplicitPath => "option",
                NativeLibrarySource.EnvironmentVariable => "environment",
                NativeLibrarySource.RuntimesFolder => "runtimes-folder",
                NativeLibrarySource.ApplicationFolder => "application-folder",
                _ => "default-probing",
            };

    private static string SourceText(string source) => source switch
    {
        "repository" => "this repository's build output (no --library and no LLMNATIVE_LIBRARY_PATH given)",
        "option" => "the --library option",
        "environment" => "the LLMNATIVE_LIBRARY_PATH environment variable",
        "runtimes-folder" => $"the package folder runtimes/{LlmNativeLibrary.RuntimeIdentifier}/native",
        "application-folder" => "the application folder",
        _ => "the runtime's default search (deps.json native assets, LD_LIBRARY_PATH, PATH)",
    };

    private static string Isa(CpuIsa isa) => isa.ToString().ToLowerInvariant();

    internal static string Bytes(long bytes)
    {
        if (bytes <= 0) return "unknown";
        string[] units = { "B", "KiB", "MiB", "GiB", "TiB" };
        double v = bytes;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1)
        {
            v /= 1024;
            u++;
        }
        return u == 0 ? $"{bytes} B" : $"{v:0.#} {units[u]}";
    }

    private static void WriteText(TextWriter w, Report r)
    {
        void Row(string key, string value) => w.WriteLine($"{key,-20} {value}");

        Row("LlmNative", $"{r.Version} (managed {r.ManagedVersion})");
        Row("  C ABI", r.Abi == r.ExpectedAbi ? $"{r.Abi}" : $"{r.Abi} (this tool expects {r.ExpectedAbi})");
        Row("  native library", r.LibraryPath);
        Row("  found via", SourceText(r.Source));
        Row("backends", string.Join(", ", r.Backends));
        Row("CPU", r.Cpu.ModelName.Length > 0 ? r.Cpu.ModelName : "(model unknown)");
        Row("  ISA", r.Cpu.ActiveIsa == r.Cpu.DetectedIsa
            ? $"{Isa(r.Cpu.ActiveIsa)} (detected and active)"
            : $"{Isa(r.Cpu.ActiveIsa)} active, {Isa(r.Cpu.DetectedIsa)} detected");
        Row("  threads", $"{r.Cpu.Threads} (logical cores {r.Cpu.LogicalCores})");
        Row("  L3 cache", Bytes(r.Cpu.L3CacheBytes));
        CudaInfo c = r.Cuda;
        Row("CUDA", c.Available ? $"available, {c.DeviceCount} device(s)" : $"not available: {c.UnavailableReason}");
        Row("  compiled", !c.Compiled ? "no (built without the CUDA backend)"
            : c.RuntimeVersion > 0 ? $"yes (CUDA runtime {LlmNativeInfo.FormatCudaVersion(c.RuntimeVersion)})" : "yes");
        Row("  driver", LlmNativeInfo.FormatCudaVersion(c.DriverVersion));
        foreach (CudaDeviceInfo d in c.Devices)
        {
            Row($"  device {d.Index}", $"{d.Name}: compute {d.ComputeCapability}, {d.SmCount} SMs, " +
                                      $"{Bytes(d.TotalMemoryBytes)} ({Bytes(d.FreeMemoryBytes)} free), L2 {Bytes(d.L2CacheBytes)}");
        }
    }

    private static void WriteJson(TextWriter w, Report r)
    {
        using var stream = new MemoryStream();
        using (var j = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            j.WriteStartObject();
            j.WriteString("version", r.Version);
            j.WriteString("managedVersion", r.ManagedVersion);
            j.WriteNumber("abi", r.Abi);
            j.WriteNumber("expectedAbi", r.ExpectedAbi);
            j.WriteString("library", r.LibraryPath);
            j.WriteString("librarySource", r.Source);
            j.WriteStartArray("backends");
            foreach (string b in r.Backends) j.WriteStringValue(b);
            j.WriteEndArray();
            j.WriteStartObject("cpu");
            j.WriteString("model", r.Cpu.ModelName);
            j.WriteString("detectedIsa", Isa(r.Cpu.DetectedIsa));
            j.WriteString("activeIsa", Isa(r.Cpu.ActiveIsa));
            j.WriteNumber("threads", r.Cpu.Threads);
            j.WriteNumber("logicalCores", r.Cpu.LogicalCores);
            j.WriteNumber("l3CacheBytes", r.Cpu.L3CacheBytes);
            j.WriteEndObject();
            j.WriteStartObject("cuda");
            j.WriteBoolean("compiled", r.Cuda.Compiled);
            j.WriteBoolean("available", r.Cuda.Available);
            j.WriteNumber("deviceCount", r.Cuda.DeviceCount);
            j.WriteNumber("driverVersion", r.Cuda.DriverVersion);
            j.WriteNumber("runtimeVersion", r.Cuda.RuntimeVersion);
            j.WriteString("unavailableReason", r.Cuda.UnavailableReason);
            j.WriteStartArray("devices");
            foreach (CudaDeviceInfo d in r.Cuda.Devices)
            {
                j.WriteStartObject();
                j.WriteNumber("index", d.Index);
                j.WriteString("name", d.Name);
                j.WriteString("computeCapability", d.ComputeCapability);
                j.WriteNumber("smCount", d.SmCount);
                j.WriteNumber("totalMemoryBytes", d.TotalMemoryBytes);
                j.WriteNumber("freeMemoryBytes", d.FreeMemoryBytes);
                j.WriteNumber("l2CacheBytes", d.L2CacheBytes);
                j.WriteEndObject();
            }
            j.WriteEndArray();
            j.WriteEndObject();
            j.WriteEndObject();
        }
        w.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }
}
