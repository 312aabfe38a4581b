using System.IO;
using System.Linq;
using System.Text.Json;
using LlmNative.Cli;
using Xunit;

namespace LlmNative.Tests;

/// <summary>The verify and bench verbs of the CLI: help, usage errors, a passing self-test on the CPU, a bench smoke run.</summary>
public class CliKernelVerbsTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Theory]
    [InlineData("verify", "--backend <cpu|cuda|best>", "--json")]
    [InlineData("bench", "--shapes <s>", "--quick")]
    public void Verbs_are_in_the_table_with_help(string verb, string option1, string option2)
    {
        Assert.Contains(Verbs.All, v => v.Name == verb);
        var (code, output, _) = Run(verb, "--help");
        Assert.Equal(0, code);
        Assert.Contains($"Usage: llmnative {verb}", output);
        Assert.Contains(option1, output);
        Assert.Contains(option2, output);
        Assert.Contains("Exit codes", output);
        var (rootCode, root, _) = Run("--help");
        Assert.Equal(0, rootCode);
        Assert.Contains($"  {verb} ", root);
    }

    [Theory]
    [InlineData("verify", "--backend", "gpu")]
    [InlineData("verify", "--backend")]
    [InlineData("verify", "--fast")]
    [InlineData("bench", "--shapes", "12x")]
    [InlineData("bench", "--shapes", "100x64")]
    [InlineData("bench", "--shapes")]
    [InlineData("bench", "small")]
    public void Usage_errors_exit_2(params string[] args)
    {
        var (code, output, error) = Run(args);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        Assert.StartsWith($"llmnative: {args[0]}: ", error);
    }

    [Fact]
    public void Shapes_parse_as_k_by_n()
    {
        Assert.Equal(new[] { (4096, 11008), (8, 1) }, BenchVerb.ParseShapes("4096x11008, 8x1"));
    }

    [Fact]
    public void Verify_on_the_cpu_passes_every_supported_check()
    {
        var (code, output, error) = Run("verify", "--backend", "cpu");
        Assert.True(code == 0, output + error);
        Assert.Contains("llmnative verify on cpu", output);
        Assert.Contains(" 0 failed", output);
        string[] rows = output.Split('\n').Where(l => l.StartsWith("int4 gemm") || l.StartsWith("dense gemm") || l.StartsWith("decode attention")).ToArray();
        Assert.Equal(10, rows.Count(l => l.StartsWith("int4 gemm")));
        Assert.Equal(2, rows.Count(l => l.StartsWith("dense gemm")));
        Assert.All(rows.Where(l => l.Contains("kv f16")), l => Assert.EndsWith("pass", l.TrimEnd()));
        Assert.All(rows, l => Assert.True(l.TrimEnd().EndsWith("pass") || l.TrimEnd().EndsWith("unsupported"), l));
    }

    [Fact]
    public void Verify_json_reports_every_check_with_its_error_and_bound()
    {
        var (code, output, _) = Run("verify", "--backend", "cpu", "--json");
        Assert.Equal(0, code);
        using JsonDocument doc = JsonDocument.Parse(output);
        JsonElement root = doc.RootElement;
        Assert.Equal(0, root.GetProperty("failed").GetInt32());
        JsonElement[] checks = root.GetProperty("checks").EnumerateArray().ToArray();
        Assert.Equal(checks.Length, root.GetProperty("passed").GetInt32() + root.GetProperty("unsupported").GetInt32());
        foreach (JsonElement c in checks)
        {
            string status = c.GetProperty("status").GetString()!;
            if (status == "unsupported")
            {
                Assert.Equal("decode attention", c.GetProperty("kernel").GetString());
                Assert.False(string.IsNullOrEmpty(c.GetProperty("detail").GetString()));
                continue;
            }
            Assert.Equal("pass", status);
            double err = c.GetProperty("maxError").GetDouble(), ratio = c.GetProperty("errorOverBound").GetDouble();
            Assert.InRange(ratio, 0, 1);
            Assert.True(err >= 0 && c.GetProperty("bound").GetDouble() > 0);
        }
    }

    [Fact]
    public void Verify_on_cuda_without_cuda_fails_with_the_reason()
    {
        if (LlmNativeInfo.Cuda.Available) return; // the CUDA run is the [CudaFact] below
        var (code, output, error) = Run("verify", "--backend", "cuda");
        Assert.Equal(1, code);
        Assert.Equal("", output);
        Assert.Contains("llmn_context_create", error);
    }

    [CudaFact]
    public void Verify_on_cuda_passes_every_supported_check()
    {
        var (code, output, error) = Run("verify", "--backend", "cuda");
        Assert.True(code == 0, output + error);
        Assert.Contains(" 0 failed", output);
    }

    [Fact]
    public void Bench_small_quick_reports_every_configuration()
    {
        var (code, output, error) = Run("bench", "--backend", "cpu", "--shapes", "small", "--quick", "--json", "--int8-query");
        Assert.True(code == 0, output + error);
        Assert.Contains("bench: [1/20]", error);
        using JsonDocument doc = JsonDocument.Parse(output);
        JsonElement root = doc.RootElement;
        Assert.True(root.GetProperty("bandwidth").GetProperty("bytesPerSecond").GetDouble() > 0);
        JsonElement[] results = root.GetProperty("results").EnumerateArray().ToArray();
        Assert.Equal(8 + 2 * (5 + 3), results.Length); // --int8-query: one more row for INT8, INT4 and INT2 per context
        Assert.Equal(2 * 3, results.Count(r => r.GetProperty("kernel").GetString()!.EndsWith(" q8")));
        foreach (JsonElement r in results)
        {
            string kernel = r.GetProperty("kernel").GetString()!, status = r.GetProperty("status").GetString()!;
            if (kernel.Contains("gemm") || kernel.EndsWith("kv f16")) Assert.Equal("ok", status);
            if (status != "ok")
            {
                Assert.Equal("unsupported", status);
                continue;
            }
            Assert.True(r.GetProperty("seconds").GetDouble() > 0, kernel);
            Assert.True(r.GetProperty("bytesPerSecond").GetDouble() > 0, kernel);
            Assert.True(r.GetProperty("speedup").GetDouble() > 0, kernel);
            double err = r.GetProperty("maxError").GetDouble();
            Assert.True(err >= 0 && err < 0.5, $"{kernel} {r.GetProperty("shape").GetString()}: max error {err}");
        }
    }
}
