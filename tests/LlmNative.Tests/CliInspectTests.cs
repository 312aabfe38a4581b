using System;
using System.IO;
using System.Linq;
using System.Text;
using System.Text.Json;
using Xunit;
using static LlmNative.Tests.Int4TestData;
using static LlmNative.Tests.SafetensorsWriter;

namespace LlmNative.Tests;

/// <summary>The inspect verb on small checkpoints written here: listing, settings from the config files, import + check, errors.</summary>
public sealed class CliInspectTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "llmn-inspect-" + Guid.NewGuid().ToString("N"));

    public CliInspectTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void Lists_imports_and_checks_the_layers_of_a_gptq_checkpoint()
    {
        var r = TestSetup.Random(out int seed);
        File.WriteAllBytes(Path.Combine(_dir, "model.safetensors"), Build(
            GptqLayer(r, "model.layers.0.mlp.up_proj", 256, 48, 64).Entries
                .Concat(GptqLayer(r, "model.layers.0.mlp.down_proj", 128, 40, 64, GIdxStore.None).Entries)
                .Append(E("model.norm.weight", "F16", new long[] { 4 }, new ushort[4]))));
        File.WriteAllText(Path.Combine(_dir, "quantize_config.json"),
            "{\"bits\": 4, \"group_size\": 64, \"desc_act\": true, \"sym\": false, \"checkpoint_format\": \"gptq\"}");

        var (code, output, error) = Run("inspect", _dir);
        Assert.True(code == 0, error);
        Assert.Contains("8 tensors", output);
        Assert.Contains("sym false, format gptq (from quantize_config.json)", output);
        Assert.Contains("int4 layers  2", output);
        Assert.Matches(@"model\.layers\.0\.mlp\.up_proj\s+gptq\s+256\s+48\s+64\s+yes\s+F16", output);
        Assert.Matches(@"model\.layers\.0\.mlp\.down_proj\s+gptq\s+128\s+40\s+64\s+no\s+F16", output);

        (code, output, error) = Run("inspect", _dir, "--check", "--backend", "cpu", "--json");
        Assert.True(code == 0, $"seed {seed}: {error}{output}");
        using JsonDocument doc = JsonDocument.Parse(output);
        JsonElement[] layers = doc.RootElement.GetProperty("layers").EnumerateArray().ToArray();
        Assert.Equal(2, layers.Length);
        foreach (JsonElement l in layers)
        {
            Assert.Equal("pass", l.GetProperty("status").GetString());
            Assert.InRange(l.GetProperty("errorToBound").GetDouble(), 0, 1);
        }

        (code, output, _) = Run("inspect", Path.Combine(_dir, "model.safetensors"), "--layer", "down", "--import", "--backend", "cpu");
        Assert.Equal(0, code);
        Assert.Contains("int4 layers  1", output);
        Assert.DoesNotContain("up_proj", output);
    }

    [Fact]
    public void A_broken_layer_fails_with_its_name_and_awq_is_recognised()
    {
        var r = TestSetup.Random(out int seed);
        File.WriteAllBytes(Path.Combine(_dir, "bad.safetensors"), Build(GptqLayer(r, "l.q_proj", 64, 16, 32, GIdxStore.None, nanScaleAt: 3).Entries));
        var (code, output, _) = Run("inspect", Path.Combine(_dir, "bad.safetensors"), "--import", "--backend", "cpu");
        Assert.Equal(1, code);
        Assert.Contains("error: layer 'l.q_proj'", output);
        Assert.Contains("NaN", output);

        // AWQ, settings from config.json's quantization_config.
        string awqDir = Path.Combine(_dir, "awq");
        Directory.CreateDirectory(awqDir);
        const int K = 96, N = 16, G = 3;
        byte[] q = RandomNibbles(r, K * N), z = RandomNibbles(r, G * N);
        File.WriteAllBytes(Path.Combine(awqDir, "model.safetensors"), Build(new[]
        {
            E("m.o_proj.qweight", "I32", new long[] { K, N / 8 }, PackAwq(q, K, N)),
            E("m.o_proj.qzeros", "I32", new long[] { G, N / 8 }, PackAwq(z, G, N)),
            E("m.o_proj.scales", "F16", new long[] { G, N }, Enumerable.Range(0, G * N).Select(_ => RandomScale(r)).ToArray()),
        }));
        File.WriteAllText(Path.Combine(awqDir, "config.json"),
            "{\"model_type\": \"llama\", \"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 32, \"version\": \"gemm\"}}");
        (code, output, _) = Run("inspect", awqDir, "--check", "--backend", "cpu");
        Assert.True(code == 0, $"seed {seed}: {output}");
        Assert.Contains("format awq (from config.json)", output);
        Assert.Matches(@"m\.o_proj\s+awq\s+96\s+16\s+32\s+no\s+F16\s+[0-9.]+ ms\s+pass", output);
    }

    [Theory]
    [InlineData("inspect")]
    [InlineData("inspect", "x", "y")]
    [InlineData("inspect", "x", "--format", "q4_k")]
    [InlineData("inspect", "x", "--layer")]
    public void Usage_errors_exit_with_2(params string[] args)
    {
        var (code, _, error) = Run(args);
        Assert.Equal(2, code);
        Assert.Contains("inspect", error);
    }

    [Fact]
    public void A_missing_or_malformed_checkpoint_fails_with_the_reason()
    {
        var (code, _, error) = Run("inspect", Path.Combine(_dir, "nope.safetensors"));
        Assert.Equal(1, code);
        Assert.Contains("nope.safetensors", error);
        File.WriteAllBytes(Path.Combine(_dir, "junk.safetensors"), Encoding.ASCII.GetBytes("not a safetensors file at all"));
        (code, _, error) = Run("inspect", Path.Combine(_dir, "junk.safetensors"));
        Assert.Equal(1, code);
        Assert.Contains("not a valid safetensors file", error);
    }
}
