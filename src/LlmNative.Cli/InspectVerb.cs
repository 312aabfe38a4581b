using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text.Json;

namespace LlmNative.Cli;

/// <summary>
/// <c>llmnative inspect</c>: the INT4 layers of a GPTQ / AWQ safetensors checkpoint (SafetensorsCheckpoint,
/// GptqTensors / AwqTensors.FromSafetensors), optionally imported into Int4Weight and each checked with one GEMM
/// against a float64 reference of its dequantized matrix, so a user can see that a real checkpoint loads and
/// computes before wiring it into a model.
/// </summary>
internal static class InspectVerb
{
    public const string Usage =
        "Usage: llmnative inspect <checkpoint> [--layer <text>] [--sym | --asym] [--format gptq|gptq_v2|awq]\n" +
        "                         [--import] [--check] [--backend cpu|cuda|best] [--json]\n" +
        "\n" +
        "<checkpoint>: a directory (model.safetensors.index.json or its one .safetensors file), an index file, or a\n" +
        ".safetensors file. Lists every INT4 layer (a tensor '<layer>.qweight' with '<layer>.scales'): method (GPTQ or\n" +
        "AWQ, from the shapes), K, N, group size, whether it has a g_idx (act-order; an identity g_idx is dropped on\n" +
        "import), scale dtype. The quantization settings come from\n" +
        "quantize_config.json or config.json's \"quantization_config\" beside the checkpoint (sym, checkpoint_format);\n" +
        "without them GPTQ layers import asymmetric with their qzeros (exact for symmetric files too) as format v1.\n" +
        "\n" +
        "Options:\n" +
        "  --layer <text>  only layers whose name contains <text>\n" +
        "  --sym, --asym   override \"sym\" (GPTQ)\n" +
        "  --format <f>    override the format: gptq (v1 zero points), gptq_v2, awq\n" +
        "  --import        import every listed layer into an Int4Weight on the backend and time it\n" +
        "  --check         --import, then one GEMM per layer (m = 1, fp16 activations) against a float64 reference\n" +
        "                  of the layer's dequantized matrix, within the verify verb's error bound\n" +
        BackendOption.Help +
        "  --json          one JSON object instead of the table\n" +
        "  -h, --help      show this help\n" +
        "\n" +
        "Exit codes: 0 listed (and every import / check passed), 1 a layer failed to import or check, 2 usage error.\n";

    private sealed record Layer(string Prefix, string Method, int K, int N, int Groups, string ScaleType, bool HasGIdx)
    {
        public string? Status { get; set; }
        public double ImportSeconds { get; set; }
        public double Ratio { get; set; } = double.NaN;
        public string Detail { get; set; } = "";
    }

    private sealed record Settings(bool? Symmetric, string? Format, string Source);

    public static int Run(Invocation inv)
    {
        string? path = null, filter = null, format = null, backend = "best";
        bool? sym = null;
        bool import = false, check = false, json = false;
        for (int i = 0; i < inv.Args.Length; i++)
        {
            string a = inv.Args[i];
            switch (a)
            {
                case "--layer":
                    filter = ++i < inv.Args.Length ? inv.Args[i] : throw new UsageException("inspect: --layer needs a text");
                    break;
                case "--sym": sym = true; break;
                case "--asym": sym = false; break;
                case "--format":
                    format = ++i < inv.Args.Length ? inv.Args[i] : throw new UsageException("inspect: --format needs gptq, gptq_v2 or awq");
                    if (format is not ("gptq" or "gptq_v2" or "awq")) throw new UsageException($"inspect: unknown format '{format}' (gptq, gptq_v2, awq)");
                    break;
                case "--import": import = true; break;
                case "--check": import = check = true; break;
                case "--json": json = true; break;
                default:
                    if (BackendOption.TryParse("inspect", inv.Args, ref i, ref backend)) break;
                    if (a.StartsWith('-') || path != null) throw new UsageException($"inspect: unknown argument '{a}'");
                    path = a;
                    break;
            }
        }
        if (path == null) throw new UsageException("inspect: no checkpoint given");

        Settings config = ReadSettings(path);
        var settings = new Settings(sym ?? config.Symmetric, format ?? config.Format, sym != null || format != null ? "options" : config.Source);
        using var ckpt = SafetensorsCheckpoint.Open(path);
        List<Layer> layers = FindLayers(ckpt, filter, settings);

        LlmContext? ctx = import ? BackendOption.Create(backend) : null;
        try
        {
            foreach (Layer l in layers.Where(_ => import))
            {
                if (!json) inv.Error.WriteLine($"inspect: {l.Prefix} ...");
                Import(ctx!, ckpt, l, settings, check);
            }
            if (json) WriteJson(inv.Out, path, ckpt, layers, settings, ctx);
            else WriteText(inv.Out, path, ckpt, layers, settings, ctx);
        }
        finally
        {
            ctx?.Dispose();
        }
        return layers.Any(l => l.Status is not (null or "imported" or "pass")) ? Cli.Failed : Cli.Ok;
    }

    // quantize_config.json (AutoGPTQ / GPTQModel / AutoAWQ) or config.json's "quantization_config" (Transformers).
    private static Settings ReadSettings(string path)
    {
        string dir = Directory.Exists(path) ? path : Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".";
        foreach ((string file, string? member) in new[] { ("quantize_config.json", (string?)null), ("config.json", "quantization_config") })
        {
            string f = Path.Combine(dir, file);
            if (!File.Exists(f)) continue;
            try
            {
                using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(f));
                JsonElement q = doc.RootElement;
                if (member != null && !q.TryGetProperty(member, out q)) continue;
                if (q.ValueKind != JsonValueKind.Object) continue;
                bool? sym = q.TryGetProperty("sym", out JsonElement s) && s.ValueKind is JsonValueKind.True or JsonValueKind.False ? s.GetBoolean() : null;
                string? method = q.TryGetProperty("quant_method", out JsonElement m) && m.ValueKind == JsonValueKind.String ? m.GetString() : null;
                string? fmt = q.TryGetProperty("checkpoint_format", out JsonElement c) && c.ValueKind == JsonValueKind.String ? c.GetString() : null;
                string? format = method == "awq" ? "awq" : fmt == "gptq_v2" ? "gptq_v2" : fmt == "gptq" || method == "gptq" ? "gptq" : null;
                return new Settings(sym, format, file);
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{f}: not valid JSON ({e.Message})");
            }
        }
        return new Settings(null, null, "none");
    }

    private static List<Layer> FindLayers(ISafetensors ckpt, string? filter, Settings settings)
    {
        var layers = new List<Layer>();
        foreach (string name in ckpt.Names.Where(n => n.EndsWith(".qweight", StringComparison.Ordinal)).OrderBy(n => n, StringComparer.Ordinal))
        {
            string prefix = name.Substring(0, name.Length - ".qweight".Length);
            if (filter != null && !prefix.Contains(filter, StringComparison.Ordinal)) continue;
            if (!ckpt.Contains(prefix + ".scales")) continue;
            SafetensorsTensorInfo qw = ckpt.GetTensor(name), sc = ckpt.GetTensor(prefix + ".scales");
            if (qw.Shape.Count != 2 || sc.Shape.Count != 2) continue;
            // GPTQ qweight [K/8, N], AWQ [K, N/8]; scales [G, N] for both.
            bool awq = settings.Format == "awq" || (settings.Format == null && qw.Shape[1] * 8 == sc.Shape[1] && qw.Shape[1] != sc.Shape[1]);
            long k = awq ? qw.Shape[0] : qw.Shape[0] * 8, n = sc.Shape[1];
            layers.Add(new Layer(prefix, awq ? "awq" : "gptq", (int)Math.Min(k, int.MaxValue), (int)Math.Min(n, int.MaxValue),
                (int)Math.Min(sc.Shape[0], int.MaxValue), sc.DType, !awq && ckpt.Contains(prefix + ".g_idx")));
        }
        return layers;
    }

    private static void Import(LlmContext ctx, ISafetensors ckpt, Layer l, Settings settings, bool check)
    {
        try
        {
            var sw = Stopwatch.StartNew();
            int[]? gIdx = null;  // the check's reference needs each row's group: g_idx, else k / group size
            Int4Weight w;
            if (l.Method == "awq")
            {
                w = Int4Weight.ImportAwq(ctx, AwqTensors.FromSafetensors(ckpt, l.Prefix));
            }
            else
            {
                // Unknown "sym": asymmetric with the file's qzeros (a symmetric v1 file stores zero 8 there, so the
                // matrix is the same), symmetric when the layer has none.
                bool sym = settings.Symmetric ?? !ckpt.Contains(l.Prefix + ".qzeros");
                GptqTensors t = GptqTensors.FromSafetensors(ckpt, l.Prefix, sym, settings.Format == "gptq_v2" ? GptqFormat.V2 : GptqFormat.V1);
                w = Int4Weight.ImportGptq(ctx, t);
                if (!t.GIdx.IsEmpty) gIdx = t.GIdx.ToArray();
            }
            using (w)
            {
                l.ImportSeconds = sw.Elapsed.TotalSeconds;
                l.Status = "imported";
                if (check)
                    Check(ctx, w, l, gIdx ?? Enumerable.Range(0, w.K).Select(k => w.GroupSize == 0 ? 0 : k / w.GroupSize).ToArray(),
                        w.GroupSize != 0);
            }
        }
        catch (Exception e) when (e is ArgumentException or InvalidDataException or LlmNativeException or NotSupportedException)
        {
            l.Status = "error";
            l.Detail = e.Message;
        }
    }

    private static void Check(LlmContext ctx, Int4Weight w, Layer l, int[] groupOfRow, bool grouped)
    {
        const int M = 1;
        DType dtype = DType.F16;
        float[] deq = new float[(long)w.K * w.N];
        w.Dequantize(deq);
        ulong seed = (ulong)l.Prefix.Length * 7919 + (ulong)w.K;
        float[] x = Numeric.Round(dtype, Data.Array(M * w.K, i => Data.Activation(seed, i)));
        using LlmBuffer xb = Numeric.Buffer(ctx, dtype, x);
        using LlmBuffer yb = LlmBuffer.Allocate(ctx, dtype, M * w.N);
        Numeric.Poison(yb);
        Gemm.Int4(xb, w, yb, M);
        float[] y = Numeric.Download(yb);
        var (reference, s) = GemmReference.Compute(x, deq, null, M, w.K, w.N);
        Comparison c = Comparison.Of(y, reference, GemmReference.Int4Bound(ctx.Backend, dtype, x, deq, reference, s, M, w.K, w.N, groupOfRow, grouped));
        l.Ratio = c.Ratio;
        l.Status = c.Passed ? "pass" : "fail";
        if (!c.Passed) l.Detail = c.FirstBad;
    }

    private static void WriteText(TextWriter o, string path, SafetensorsCheckpoint ckpt, List<Layer> layers, Settings s, LlmContext? ctx)
    {
        o.WriteLine($"checkpoint   {path} ({ckpt.Shards.Count} file{(ckpt.Shards.Count == 1 ? "" : "s")}, {ckpt.Names.Count} tensors)");
        o.WriteLine($"settings     sym {(s.Symmetric is bool b ? (b ? "true" : "false") : "unknown")}, format {s.Format ?? "unknown"} (from {s.Source})");
        if (ctx != null) o.WriteLine($"backend      {BackendOption.Describe(ctx)}");
        o.WriteLine($"int4 layers  {layers.Count}");
        if (layers.Count == 0) return;
        int width = Math.Max(5, layers.Max(l => l.Prefix.Length));
        o.WriteLine();
        o.WriteLine($"{"layer".PadRight(width)}  method      K       N  group  g_idx      scales  {(ctx != null ? "import    check" : "")}".TrimEnd());
        foreach (Layer l in layers)
        {
            int gs = l.Groups <= 1 ? 0 : new[] { 32, 64, 128 }.FirstOrDefault(g => (l.K + g - 1) / g == l.Groups);
            string group = l.Groups <= 1 ? "column" : gs > 0 ? gs.ToString() : $"G={l.Groups}";
            string tail = l.Status == null ? ""
                : l.Status == "error" ? $"  error: {l.Detail}"
                : $"  {l.ImportSeconds * 1e3,6:0.0} ms  " + (double.IsNaN(l.Ratio) ? "" : $"{l.Status} ({l.Ratio:0.000} of bound)" + (l.Detail.Length > 0 ? $" {l.Detail}" : ""));
            o.WriteLine($"{l.Prefix.PadRight(width)}  {l.Method,-6} {l.K,6} {l.N,7}  {group,5}  {(l.HasGIdx ? "yes" : "no"),-9}  {l.ScaleType,-6}{tail}".TrimEnd());
        }
    }

    private static void WriteJson(TextWriter o, string path, SafetensorsCheckpoint ckpt, List<Layer> layers, Settings s, LlmContext? ctx)
    {
        using var stream = new MemoryStream();
        using (var j = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            j.WriteStartObject();
            j.WriteString("checkpoint", path);
            j.WriteNumber("files", ckpt.Shards.Count);
            j.WriteNumber("tensors", ckpt.Names.Count);
            if (s.Symmetric is bool b) j.WriteBoolean("sym", b);
            else j.WriteNull("sym");
            j.WriteString("format", s.Format);
            j.WriteString("settingsFrom", s.Source);
            if (ctx != null) j.WriteString("backend", BackendOption.Describe(ctx));
            j.WriteStartArray("layers");
            foreach (Layer l in layers)
            {
                j.WriteStartObject();
                j.WriteString("name", l.Prefix);
                j.WriteString("method", l.Method);
                j.WriteNumber("k", l.K);
                j.WriteNumber("n", l.N);
                j.WriteNumber("groups", l.Groups);
                j.WriteBoolean("gIdx", l.HasGIdx);
                j.WriteString("scales", l.ScaleType);
                if (l.Status != null)
                {
                    j.WriteString("status", l.Status);
                    j.WriteNumber("importSeconds", l.ImportSeconds);
                    if (!double.IsNaN(l.Ratio)) j.WriteNumber("errorToBound", double.IsInfinity(l.Ratio) ? double.MaxValue : l.Ratio);
                    if (l.Detail.Length > 0) j.WriteString("detail", l.Detail);
                }
                j.WriteEndObject();
            }
            j.WriteEndArray();
            j.WriteEndObject();
        }
        o.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }
}
