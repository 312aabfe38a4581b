using System.IO;
using System.Text.Json;
using LlmNative.Cli;
using Xunit;

namespace LlmNative.Tests;

public class CliTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void Info_reports_versions_library_cpu_and_cuda()
    {
        var (code, output, error) = Run("info");
        Assert.True(code == 0, error);
        Assert.Contains($"LlmNative            {LlmNativeInfo.Version}", output);
        Assert.Contains($"C ABI              {LlmNativeInfo.AbiVersion}", output);
        Assert.Contains(LlmNativeLibrary.LoadedFrom!, output);
        Assert.Contains("found via", output);
        Assert.Contains($"{LlmNativeInfo.Cpu.ActiveIsa.ToString().ToLowerInvariant()}", output);
        Assert.Contains("CUDA", output);
        if (!LlmNativeInfo.Cuda.Available) Assert.Contains(LlmNativeInfo.Cuda.UnavailableReason, output);
    }

    [Fact]
    public void Info_json_is_one_parseable_object()
    {
        var (code, output, _) = Run("info", "--json");
        Assert.Equal(0, code);
        using JsonDocument doc = JsonDocument.Parse(output);
        Assert.Equal(LlmNativeInfo.AbiVersion, doc.RootElement.GetProperty("abi").GetInt32());
        Assert.Equal(LlmNativeInfo.Cpu.Threads, doc.RootElement.GetProperty("cpu").GetProperty("threads").GetInt32());
        Assert.Equal(LlmNativeInfo.Cuda.Available, doc.RootElement.GetProperty("cuda").GetProperty("available").GetBoolean());
    }

    [Fact]
    public void Help_on_the_root_and_on_each_verb()
    {
        var (code, output, _) = Run("--help");
        Assert.Equal(0, code);
        foreach (Verb v in Verbs.All)
        {
            Assert.Contains(v.Name, output);
            var (vc, vo, _) = Run(v.Name, "-h");
            Assert.Equal(0, vc);
            Assert.Contains($"llmnative {v.Name}", vo);
        }
    }

    [Theory]
    [InlineData("frobnicate")]
    [InlineData("--no-such-option", "info")]
    [InlineData("info", "--no-such-option")]
    [InlineData]
    public void Usage_errors_exit_2_with_a_message(params string[] args)
    {
        var (code, output, error) = Run(args);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        Assert.StartsWith("llmnative: ", error);
        Assert.Contains("--help", error);
    }
}
