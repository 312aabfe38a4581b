using System;
using System.Collections.Generic;
using System.Reflection;
using LlmNative.Interop;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>
/// What the loaded native library is and what it can use: versions, the file it was loaded from, the CPU it
/// runs on and whether CUDA is usable (and if not, why). Each property queries the native library.
/// </summary>
/// <example>
/// <code>
/// Console.WriteLine($"LlmNative {LlmNativeInfo.Version} from {LlmNativeInfo.LibraryPath}");
/// var cuda = LlmNativeInfo.Cuda;
/// Console.WriteLine(cuda.Available ? $"{cuda.DeviceCount} CUDA device(s)" : $"no CUDA: {cuda.UnavailableReason}");
/// </code>
/// </example>
public static unsafe class LlmNativeInfo
{
    /// <summary>The native library's version string ("major.minor.patch", optionally "+build").</summary>
    public static string Version
    {
        get
        {
            Native.EnsureLoaded();
            return Native.ReadString(&llmn_get_version, nameof(llmn_get_version));
        }
    }

    /// <summary>This managed assembly's version (equal to the native <see cref="Version"/> in a consistent build).</summary>
    public static string ManagedVersion
    {
        get
        {
            Assembly a = typeof(LlmNativeInfo).Assembly;
            string? informational = a.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
            if (informational is null) return a.GetName().Version?.ToString(3) ?? "0.0.0";
            int plus = informational.IndexOf('+');
            return plus < 0 ? informational : informational.Substring(0, plus);
        }
    }

    /// <summary>The C ABI version the native library reports (always equal to <see cref="ExpectedAbiVersion"/> once loaded).</summary>
    public static int AbiVersion
    {
        get
        {
            Native.EnsureLoaded();
            int v;
            Native.Check(llmn_get_abi_version(&v));
            return v;
        }
    }

    /// <summary>The C ABI version this assembly was generated against (<c>LLMN_ABI_VERSION</c>).</summary>
    public static int ExpectedAbiVersion => NativeMethods.LLMN_ABI_VERSION;

    /// <summary>Path of the native library file as the library itself reports it.</summary>
    public static string LibraryPath
    {
        get
        {
            Native.EnsureLoaded();
            string path = Native.ReadString(&llmn_get_library_path, nameof(llmn_get_library_path));
            return path.Length > 0 ? path : LlmNativeLibrary.LoadedFrom ?? string.Empty;
        }
    }

    /// <summary>Backends usable now: always <see cref="Backend.Cpu"/>, plus <see cref="Backend.Cuda"/> when a device is available.</summary>
    public static IReadOnlyList<Backend> AvailableBackends =>
        Cuda.Available ? new[] { Backend.Cpu, Backend.Cuda } : new[] { Backend.Cpu };

    /// <summary>The CPU backend: instruction sets, thread pool, caches.</summary>
    public static CpuInfo Cpu
    {
        get
        {
            Native.EnsureLoaded();
            llmn_cpu_info info;
            Native.Check(llmn_get_cpu_info(&info));
            return new CpuInfo((CpuIsa)info.detected_isa, (CpuIsa)info.active_isa, info.threads, info.logical_cores,
                info.l3_cache_bytes, Native.Utf8Z(info.model_name, 128));
        }
    }

    /// <summary>The CUDA backend: whether it was compiled in, whether a device is usable, and the devices.</summary>
    public static CudaInfo Cuda
    {
        get
        {
            Native.EnsureLoaded();
            llmn_cuda_info info;
            Native.Check(llmn_get_cuda_info(&info));
            var devices = new List<CudaDeviceInfo>();
            for (int i = 0; info.available != 0 && i < info.device_count; i++)
            {
                llmn_cuda_device_info d;
                Native.Check(llmn_get_cuda_device_info(i, &d));
                devices.Add(new CudaDeviceInfo(d.index, Native.Utf8Z(d.name, 256), d.compute_major, d.compute_minor, d.sm_count,
                    d.total_memory_bytes, d.free_memory_bytes, d.l2_cache_bytes, d.memory_bus_width_bits, d.memory_clock_khz));
            }
            return new CudaInfo(info.compiled != 0, info.available != 0, info.device_count, info.driver_version,
                info.runtime_version, Native.Utf8Z(info.unavailable_reason, 256), devices);
        }
    }

    /// <summary>Formats a CUDA version number (12040) as "12.4"; "none" for 0.</summary>
    /// <param name="version">A CUDA driver or runtime version as the CUDA API reports it.</param>
    /// <returns>"major.minor", or "none".</returns>
    public static string FormatCudaVersion(int version) =>
        version <= 0 ? "none" : $"{version / 1000}.{version % 1000 / 10}";
}

/// <summary>The CPU backend as the native library sees it.</summary>
/// <param name="DetectedIsa">Best instruction set the CPU and this build support.</param>
/// <param name="ActiveIsa">Instruction set the kernels use now (see <see cref="LlmNativeRuntime.SetCpuIsa"/>).</param>
/// <param name="Threads">Worker threads of the CPU backend's pool.</param>
/// <param name="LogicalCores">Hardware threads the OS reports.</param>
/// <param name="L3CacheBytes">Last-level cache size in bytes; 0 when unknown.</param>
/// <param name="ModelName">The CPU's model name; may be empty.</param>
/// <example>
/// <code>
/// var cpu = LlmNativeInfo.Cpu;
/// Console.WriteLine($"{cpu.ModelName}: {cpu.ActiveIsa} of {cpu.DetectedIsa}, {cpu.Threads} threads");
/// </code>
/// </example>
public sealed record CpuInfo(CpuIsa DetectedIsa, CpuIsa ActiveIsa, int Threads, int LogicalCores, long L3CacheBytes, string ModelName);

/// <summary>The CUDA backend as the native library sees it.</summary>
/// <param name="Compiled">The library was built with the CUDA backend.</param>
/// <param name="Available">At least one usable device was found.</param>
/// <param name="DeviceCount">Number of devices.</param>
/// <param name="DriverVersion">CUDA driver version (12040 for 12.4); 0 when there is no driver.</param>
/// <param name="RuntimeVersion">Version of the CUDA runtime linked into the library; 0 when not compiled.</param>
/// <param name="UnavailableReason">Why CUDA is not available; empty when it is.</param>
/// <param name="Devices">The devices, when available.</param>
/// <example>
/// <code>
/// var cuda = LlmNativeInfo.Cuda;
/// foreach (var d in cuda.Devices) Console.WriteLine($"{d.Index}: {d.Name} sm_{d.ComputeMajor}{d.ComputeMinor}");
/// </code>
/// </example>
public sealed record CudaInfo(bool Compiled, bool Available, int DeviceCount, int DriverVersion, int RuntimeVersion,
    string UnavailableReason, IReadOnlyList<CudaDeviceInfo> Devices);

/// <summary>One CUDA device.</summary>
/// <param name="Index">Device index, as passed to <see cref="LlmContext.Create(Backend, int, Microsoft.Extensions.Logging.ILoggerFactory)"/>.</param>
/// <param name="Name">Device name.</param>
/// <param name="ComputeMajor">Compute capability, major part.</param>
/// <param name="ComputeMinor">Compute capability, minor part.</param>
/// <param name="SmCount">Streaming multiprocessors.</param>
/// <param name="TotalMemoryBytes">Device memory in bytes.</param>
/// <param name="FreeMemoryBytes">Free device memory in bytes when queried.</param>
/// <param name="L2CacheBytes">L2 cache size in bytes.</param>
/// <param name="MemoryBusWidthBits">Memory bus width in bits.</param>
/// <param name="MemoryClockKHz">Memory clock in kHz.</param>
/// <example>
/// <code>
/// var d = LlmNativeInfo.Cuda.Devices[0];
/// Console.WriteLine($"{d.Name}, sm_{d.ComputeMajor}{d.ComputeMinor}, {d.SmCount} SMs, {d.TotalMemoryBytes >> 30} GiB");
/// </code>
/// </example>
public sealed record CudaDeviceInfo(int Index, string Name, int ComputeMajor, int ComputeMinor, int SmCount, long TotalMemoryBytes,
    long FreeMemoryBytes, int L2CacheBytes, int MemoryBusWidthBits, int MemoryClockKHz)
{
    /// <summary>Compute capability as "major.minor", for example "9.0".</summary>
    public string ComputeCapability => $"{ComputeMajor}.{ComputeMinor}";
}
