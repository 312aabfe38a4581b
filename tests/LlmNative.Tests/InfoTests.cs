using System.IO;
using LlmNative.Interop;
using Xunit;

namespace LlmNative.Tests;

public class InfoTests
{
    [Fact]
    public void Version_matches_the_managed_assembly_and_the_cmake_project()
    {
        string native = LlmNativeInfo.Version;
        Assert.Matches(@"^\d+\.\d+\.\d+", native);
        // Directory.Build.props <Version> must equal project(LlmNative VERSION ...) in CMakeLists.txt.
        Assert.StartsWith(LlmNativeInfo.ManagedVersion, native);
        Assert.Equal("0.1.0", LlmNativeInfo.ManagedVersion);
    }

    [Fact]
    public void Abi_version_equals_the_generated_constant()
    {
        Assert.Equal(NativeMethods.LLMN_ABI_VERSION, LlmNativeInfo.AbiVersion);
        Assert.Equal(NativeMethods.LLMN_ABI_VERSION, LlmNativeInfo.ExpectedAbiVersion);
    }

    [Fact]
    public void Library_path_names_the_loaded_file()
    {
        string path = LlmNativeInfo.LibraryPath;
        Assert.True(File.Exists(path), $"LibraryPath '{path}' does not exist");
        Assert.True(LlmNativeLibrary.IsLoaded);
        Assert.Equal(Path.GetFullPath(path), Path.GetFullPath(LlmNativeLibrary.LoadedFrom!));
        Assert.NotNull(LlmNativeLibrary.Source);
        Assert.EndsWith(LlmNativeLibrary.FileName, path);
    }

    [Fact]
    public void Cpu_info_is_consistent()
    {
        CpuInfo cpu = LlmNativeInfo.Cpu;
        Assert.True(cpu.Threads >= 1, $"threads {cpu.Threads}");
        Assert.True(cpu.LogicalCores >= 1, $"logical cores {cpu.LogicalCores}");
        Assert.True(cpu.L3CacheBytes >= 0);
        Assert.True(System.Enum.IsDefined(cpu.DetectedIsa));
        Assert.True(cpu.ActiveIsa <= cpu.DetectedIsa, $"active {cpu.ActiveIsa} above detected {cpu.DetectedIsa}");
        Assert.NotNull(cpu.ModelName);
    }

    [Fact]
    public void Cuda_info_explains_itself()
    {
        CudaInfo cuda = LlmNativeInfo.Cuda;
        if (cuda.Available)
        {
            Assert.True(cuda.Compiled);
            Assert.True(cuda.DeviceCount >= 1);
            Assert.Equal(cuda.DeviceCount, cuda.Devices.Count);
            Assert.Equal("", cuda.UnavailableReason);
            for (int i = 0; i < cuda.Devices.Count; i++)
            {
                Assert.Equal(i, cuda.Devices[i].Index);
                Assert.False(string.IsNullOrEmpty(cuda.Devices[i].Name));
                Assert.True(cuda.Devices[i].ComputeMajor >= 5);
                Assert.True(cuda.Devices[i].TotalMemoryBytes > 0);
            }
            Assert.Contains(Backend.Cuda, LlmNativeInfo.AvailableBackends);
        }
        else
        {
            Assert.Empty(cuda.Devices);
            Assert.False(string.IsNullOrWhiteSpace(cuda.UnavailableReason), "an unavailable CUDA backend must say why");
            Assert.Equal(new[] { Backend.Cpu }, LlmNativeInfo.AvailableBackends);
        }
        if (!cuda.Compiled) Assert.Equal(0, cuda.RuntimeVersion);
    }

    [Theory]
    [InlineData(0, "none")]
    [InlineData(12040, "12.4")]
    [InlineData(11080, "11.8")]
    [InlineData(13000, "13.0")]
    public void Cuda_versions_format_as_major_minor(int version, string expected) =>
        Assert.Equal(expected, LlmNativeInfo.FormatCudaVersion(version));

    [Fact]
    public void Cpu_threads_and_isa_can_be_changed_and_restored()
    {
        CpuInfo before = LlmNativeInfo.Cpu;
        try
        {
            LlmNativeRuntime.SetCpuThreads(3);
            Assert.Equal(3, LlmNativeInfo.Cpu.Threads);
            LlmNativeRuntime.SetCpuIsa(CpuIsa.Scalar);
            Assert.Equal(CpuIsa.Scalar, LlmNativeInfo.Cpu.ActiveIsa);
        }
        finally
        {
            LlmNativeRuntime.SetCpuThreads(0);
            LlmNativeRuntime.SetCpuIsa(before.ActiveIsa);
        }
        Assert.Equal(before.ActiveIsa, LlmNativeInfo.Cpu.ActiveIsa);
    }
}
