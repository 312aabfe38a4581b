// After the run: one markdown file with the run's facts (date, commit, machine, command, load) and the
// tables and ratios the performance targets are stated in, computed from BenchmarkDotNet's medians.
// Nothing here measures; a case that did not run shows as "-".
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using LlmNative.Benchmarks.Benchmarks;

namespace LlmNative.Benchmarks;

internal sealed record RunFacts(DateTime StartUtc, string[] Args, string LoadBefore, string LoadAfter, bool Full);

internal static class Report
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Set by --commit: the source commit of a build made outside a git checkout.</summary>
    public static string? CommitOverride { get; set; }

    private static readonly string[] GemmMethods =
    {
        nameof(Int4Gemm.Ours_G128), nameof(Int4Gemm.Ours_G32), nameof(Int4Gemm.Dense_F32),
        nameof(Int4Gemm.Ort_B128_Acc1), nameof(Int4Gemm.Ort_B128_Acc4), nameof(Int4Gemm.Ort_B32_Acc1), nameof(Int4Gemm.Ort_B32_Acc4),
    };

    private static readonly string[] OrtGemmMethods = GemmMethods.Where(m => m.StartsWith("Ort_", StringComparison.Ordinal)).ToArray();

    private sealed record Row(string Type, string Method, BenchmarkCase Case, double? Seconds, long? Bytes)
    {
        public double? GBps => Seconds is double s && Bytes is long b && s > 0 ? b / s / 1e9 : null;
    }

    public static string Write(IEnumerable<Summary> summaries, string path, RunFacts facts)
    {
        var rows = new List<Row>();
        foreach (Summary s in summaries)
            foreach (BenchmarkCase c in s.BenchmarksCases)
                rows.Add(new Row(c.Descriptor.Type.Name, c.Descriptor.WorkloadMethod.Name, c, Throughput.MedianSeconds(s, c), Throughput.BytesPerOp(c)));

        var md = new StringBuilder();
        md.AppendLine($"# LlmNative CPU benchmark report ({facts.StartUtc:yyyy-MM-dd HH:mm} UTC)").AppendLine();
        AppendFacts(md, facts);
        md.AppendLine($"- data: every implementation rotates over >= {BenchSettings.RotateBytes >> 20} MiB of distinct weights/KV per case; times are BenchmarkDotNet medians");
        md.AppendLine();

        List<Row> streams = rows.Where(r => (r.Type == nameof(StreamRead) || r.Type == nameof(StreamReadLast)) && r.GBps.HasValue).ToList();
        double? stream = streams.Count > 0 ? streams.Max(r => r.GBps) : null;
        md.AppendLine("## Streaming-read roofline").AppendLine();
        md.AppendLine(stream is double sb
            ? $"All {BenchSettings.Threads} threads summing a 1 GiB array, measured first and last in the run: " +
              string.Join(", ", streams.Select(r => $"{(r.Type == nameof(StreamRead) ? "first" : "last")}: {F(r.GBps)} GB/s")) +
              $" (medians). Roofline used below (the higher): **{F(sb)} GB/s**."
            : "StreamRead did not run (filtered out): the % of streaming bandwidth columns are empty.");
        Row? denseBest = rows.Where(r => r.Method == nameof(Int4Gemm.Dense_F32) && r.GBps.HasValue && (int)r.Case.Parameters["M"] == 1)
            .OrderByDescending(r => r.GBps).FirstOrDefault();
        if (denseBest is not null)
            md.AppendLine().AppendLine($"For comparison, the fastest weight stream of the run: dense f32 GEMM at M=1, " +
                $"{denseBest.Case.Parameters["Shape"]}: {F(denseBest.GBps)} GB/s" +
                (stream is double r0 ? $" ({denseBest.GBps / r0 * 100:F0}% of the roofline above)." : "."));
        md.AppendLine();

        WriteGemm(md, rows, stream);
        WriteAttention(md, rows, stream);
        WriteTargets(md, rows, stream);

        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        File.WriteAllText(path, md.ToString());
        return md.ToString();
    }

    /// <summary>The run's facts (commit, machine, versions, command, load) as markdown list items; shared with the paired report.</summary>
    public static void AppendFacts(StringBuilder md, RunFacts facts)
    {
        CpuInfo cpu = LlmNativeInfo.Cpu;
        md.AppendLine(CommitOverride is string sha
            ? $"- git commit: `{sha}` (built from an export of that commit)"
            : $"- git commit: `{Git("rev-parse HEAD")}`{Dirty()}");
        string l3 = cpu.L3CacheBytes > 0 ? $"L3 {cpu.L3CacheBytes >> 20} MiB" : "L3 size not reported by the OS";
        md.AppendLine($"- machine: {cpu.ModelName}{CpuFamily()}, {cpu.LogicalCores} logical cores, {l3}, {Math.Round(MemTotalGiB(), 1)} GiB RAM; LlmNative ISA {cpu.ActiveIsa}, pool threads {cpu.Threads}; ORT intra-op threads {Onnx.OrtModels.Threads} (one global pool)");
        md.AppendLine($"- LlmNative {LlmNativeInfo.Version} ({LlmNativeInfo.LibraryPath}); ONNX Runtime {Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetVersionString()}; .NET {Environment.Version}");
        md.AppendLine($"- command: `dotnet run --project tests/LlmNative.Benchmarks -c Release -- {string.Join(' ', facts.Args)}` ({(facts.Full ? "full" : "short")} configuration)");
        md.AppendLine($"- load average (1/5/15 min) before: {facts.LoadBefore}; after: {facts.LoadAfter}");
    }

    private static void WriteGemm(StringBuilder md, List<Row> rows, double? stream)
    {
        List<Row> gemm = rows.Where(r => r.Type == nameof(Int4Gemm)).ToList();
        if (gemm.Count == 0) return;
        md.AppendLine("## INT4 GEMM (f32 activations, symmetric INT4, same quantized weights for LlmNative and ORT)").AppendLine();
        md.AppendLine("Times in µs. GB/s = logical INT4 bytes (codes + fp16 scales; ORT stores the same scales as f32) or dense f32 bytes / time.");
        md.AppendLine("`vs dense` = dense time / INT4 time; `vs ORT` = fastest ORT setting's time / ours (> 1: ours faster); same-block = ORT at our group size.").AppendLine();
        md.AppendLine("| K x N | M | ours g128 | ours g32 | dense f32 | ORT b128 acc1 | ORT b128 acc4 | ORT b32 acc1 | ORT b32 acc4 | ours g128 GB/s | % of stream | % of adjacent read | g128 vs dense | g128 vs ORT best | g32 vs ORT b32 best |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var key in gemm.Select(r => ((GemmShape)r.Case.Parameters["Shape"], (int)r.Case.Parameters["M"])).Distinct().OrderBy(k => k.Item1).ThenBy(k => k.Item2))
        {
            Row? Get(string m) => gemm.FirstOrDefault(r => r.Method == m && (GemmShape)r.Case.Parameters["Shape"] == key.Item1 && (int)r.Case.Parameters["M"] == key.Item2);
            double? T(string m) => Get(m)?.Seconds;
            double? g128 = T(nameof(Int4Gemm.Ours_G128)), g32 = T(nameof(Int4Gemm.Ours_G32)), dense = T(nameof(Int4Gemm.Dense_F32));
            double? ortBest = Min(OrtGemmMethods.Select(T));
            double? ortB32 = Min(new[] { T(nameof(Int4Gemm.Ort_B32_Acc1)), T(nameof(Int4Gemm.Ort_B32_Acc4)) });
            double? gbps = Get(nameof(Int4Gemm.Ours_G128))?.GBps;
            md.Append($"| {key.Item1} | {key.Item2} |");
            foreach (string m in GemmMethods) md.Append($" {Us(T(m))} |");
            double? adj = AdjacentStream.Get(Int4Gemm.AdjacentKey(key.Item1, key.Item2));
            md.Append($" {F(gbps)} | {Pct(gbps, stream)} | {Pct(gbps, adj)} | {X(dense, g128)} | {X(ortBest, g128)} | {X(ortB32, g32)} |").AppendLine();
        }
        md.AppendLine();
    }

    private static void WriteAttention(StringBuilder md, List<Row> rows, double? stream)
    {
        List<Row> attn = rows.Where(r => r.Type == nameof(DecodeAttention)).ToList();
        if (attn.Count == 0) return;
        md.AppendLine("## Decode attention (Llama-3-8B: 32 q heads, 8 KV heads, head_dim 128, one new token)").AppendLine();
        md.AppendLine("Times in µs. KV GB/s = K+V bytes of the batch (f16: 4 KiB per token; ORT f32: 8 KiB) / time. `vs ORT` = fastest ORT time / ours auto.").AppendLine();
        md.AppendLine("`% of adjacent read` = ours auto KV GB/s over the best streaming read sampled right before and right after LlmNative's runs of that case (AdjacentStream: the minutes the case ran in; the run-wide roofline above is the conservative reference).").AppendLine();
        md.AppendLine("| batch | context | ours auto | ours no-split | ORT GQA f16 | ORT GQA f32 | ours auto KV GB/s | % of stream | % of adjacent read | ours no-split KV GB/s | ORT f16 KV GB/s | auto vs ORT best |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (AttnCase c in attn.Select(r => (AttnCase)r.Case.Parameters["Case"]).Distinct().OrderBy(c => c))
        {
            Row? Get(string m) => attn.FirstOrDefault(r => r.Method == m && (AttnCase)r.Case.Parameters["Case"] == c);
            double? auto = Get(nameof(DecodeAttention.Ours_Auto))?.Seconds;
            double? ortBest = Min(new[] { Get(nameof(DecodeAttention.Ort_F16))?.Seconds, Get(nameof(DecodeAttention.Ort_F32))?.Seconds });
            double? autoGb = Get(nameof(DecodeAttention.Ours_Auto))?.GBps;
            md.AppendLine($"| {c.Batch} | {c.Context} | {Us(auto)} | {Us(Get(nameof(DecodeAttention.Ours_NoSplit))?.Seconds)} | " +
                          $"{Us(Get(nameof(DecodeAttention.Ort_F16))?.Seconds)} | {Us(Get(nameof(DecodeAttention.Ort_F32))?.Seconds)} | " +
                          $"{F(autoGb)} | {Pct(autoGb, stream)} | {Pct(autoGb, AdjacentStream.Get(DecodeAttention.AdjacentKey(c)))} | " +
                          $"{F(Get(nameof(DecodeAttention.Ours_NoSplit))?.GBps)} | " +
                          $"{F(Get(nameof(DecodeAttention.Ort_F16))?.GBps)} | {X(ortBest, auto)} |");
        }
        md.AppendLine();
    }

    private static void WriteTargets(StringBuilder md, List<Row> rows, double? stream)
    {
        md.AppendLine("## Targets").AppendLine();
        md.AppendLine("| target | measured | met? |").AppendLine("|---|---|---|");
        List<Row> gemm = rows.Where(r => r.Type == nameof(Int4Gemm)).ToList();
        List<Row> attn = rows.Where(r => r.Type == nameof(DecodeAttention)).ToList();

        IEnumerable<(GemmShape Shape, double? Ours, double? Ort, double? GBps)> GemmAt(int m) =>
            gemm.Where(r => (int)r.Case.Parameters["M"] == m).Select(r => (GemmShape)r.Case.Parameters["Shape"]).Distinct().OrderBy(s => s)
                .Select(s =>
                {
                    Row? ours = gemm.FirstOrDefault(r => r.Method == nameof(Int4Gemm.Ours_G128) && (GemmShape)r.Case.Parameters["Shape"] == s && (int)r.Case.Parameters["M"] == m);
                    double? ort = Min(gemm.Where(r => r.Method.StartsWith("Ort_", StringComparison.Ordinal) && (GemmShape)r.Case.Parameters["Shape"] == s && (int)r.Case.Parameters["M"] == m).Select(r => r.Seconds));
                    return (s, ours?.Seconds, ort, ours?.GBps);
                });

        var m1 = GemmAt(1).ToList();
        if (m1.Count > 0)
        {
            var pcts = m1.Where(t => t.GBps.HasValue && stream.HasValue).Select(t => (t.Shape, P: t.GBps!.Value / stream!.Value)).ToList();
            if (pcts.Count > 0)
                md.AppendLine($"| CPU INT4 (g128) at M=1 >= 90% of streaming-read bandwidth | {string.Join("; ", pcts.Select(p => $"{p.Shape}: {p.P * 100:F0}%"))} | {Met(pcts.All(p => p.P >= 0.9), pcts.Any(p => p.P >= 0.9))} |");
            var adj = m1.Where(t => t.GBps.HasValue && AdjacentStream.Get(Int4Gemm.AdjacentKey(t.Shape, 1)).HasValue)
                        .Select(t => (t.Shape, P: t.GBps!.Value / AdjacentStream.Get(Int4Gemm.AdjacentKey(t.Shape, 1))!.Value)).ToList();
            if (adj.Count > 0)
                md.AppendLine($"| same, against the adjacent read of each case | {string.Join("; ", adj.Select(p => $"{p.Shape}: {p.P * 100:F0}%"))} | {Met(adj.All(p => p.P >= 0.9), adj.Any(p => p.P >= 0.9))} |");
            RatioTarget(md, "CPU INT4 (g128) vs ORT MatMulNBits fastest setting at M=1 >= 1.5x", m1, 1.5);
        }
        var m16 = GemmAt(16).ToList();
        if (m16.Count > 0) RatioTarget(md, "CPU INT4 (g128) vs ORT MatMulNBits fastest setting at M=16 >= 2x", m16, 2.0);

        foreach (AttnCase c in new[] { new AttnCase(1, 4096), new AttnCase(1, 16384) })
        {
            double? ours = attn.FirstOrDefault(r => r.Method == nameof(DecodeAttention.Ours_Auto) && (AttnCase)r.Case.Parameters["Case"] == c)?.Seconds;
            double? ort = Min(attn.Where(r => r.Method.StartsWith("Ort_", StringComparison.Ordinal) && (AttnCase)r.Case.Parameters["Case"] == c).Select(r => r.Seconds));
            if (ours is double o && ort is double t)
                md.AppendLine($"| Attention vs ORT GQA (fastest of f16/f32) at batch 1 x {c.Context} >= 5x | {t / o:F2}x | {Met(t / o >= 5)} |");
        }
        var longCtx = attn.Where(r => r.Method == nameof(DecodeAttention.Ours_Auto) && ((AttnCase)r.Case.Parameters["Case"]).Context >= 16384 && r.GBps.HasValue).ToList();
        if (longCtx.Count > 0 && stream is double sbw)
        {
            var ps = longCtx.Select(r => ((AttnCase)r.Case.Parameters["Case"], r.GBps!.Value / sbw)).OrderBy(t => t.Item1).ToList();
            md.AppendLine($"| Attention (auto) on long contexts (>= 16k) >= 80% of streaming-read bandwidth | {string.Join("; ", ps.Select(p => $"{p.Item1}: {p.Item2 * 100:F0}%"))} | {Met(ps.All(p => p.Item2 >= 0.8), ps.Any(p => p.Item2 >= 0.8))} |");
        }
        var longAdj = longCtx.Select(r => ((AttnCase)r.Case.Parameters["Case"], r.GBps!.Value, AdjacentStream.Get(DecodeAttention.AdjacentKey((AttnCase)r.Case.Parameters["Case"]))))
                             .Where(t => t.Item3.HasValue).Select(t => (t.Item1, P: t.Item2 / t.Item3!.Value)).OrderBy(t => t.Item1).ToList();
        if (longAdj.Count > 0)
            md.AppendLine($"| same, against the adjacent read of each case | {string.Join("; ", longAdj.Select(p => $"{p.Item1}: {p.P * 100:F0}%"))} | {Met(longAdj.All(p => p.P >= 0.8), longAdj.Any(p => p.P >= 0.8))} |");
        md.AppendLine();
    }

    private static void RatioTarget(StringBuilder md, string name, List<(GemmShape Shape, double? Ours, double? Ort, double? GBps)> at, double target)
    {
        var r = at.Where(t => t.Ours.HasValue && t.Ort.HasValue).Select(t => (t.Shape, X: t.Ort!.Value / t.Ours!.Value)).ToList();
        if (r.Count > 0)
            md.AppendLine($"| {name} | {string.Join("; ", r.Select(p => $"{p.Shape}: {p.X:F2}x"))} | {Met(r.All(p => p.X >= target), r.Any(p => p.X >= target))} |");
    }

    private static string Met(bool all, bool any = false) => all ? "yes" : any ? "partly (not on every shape)" : "no";

    private static double? Min(IEnumerable<double?> values)
    {
        double? best = null;
        foreach (double? v in values)
            if (v is double d && (best is null || d < best)) best = d;
        return best;
    }

    internal static string Us(double? seconds) => seconds is double s ? (s * 1e6).ToString(s * 1e6 >= 100 ? "F0" : "F1", Inv) : "-";
    private static string F(double? v) => v is double d ? d.ToString("F2", Inv) : "-";
    private static string Pct(double? v, double? of) => v is double a && of is double b && b > 0 ? (a / b * 100).ToString("F0", Inv) + "%" : "-";
    private static string X(double? slower, double? ours) => slower is double a && ours is double b && b > 0 ? (a / b).ToString("F2", Inv) + "x" : "-";

    public static string LoadAverage()
    {
        try { return string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "unknown"; }
        catch (UnauthorizedAccessException) { return "unknown"; }
    }

    public static double Load1() =>
        double.TryParse(LoadAverage().Split(' ')[0], NumberStyles.Float, Inv, out double v) ? v : 0;

    // " (family F model M)" from /proc/cpuinfo: the model name of a VM can be as bare as "AMD EPYC".
    private static string CpuFamily()
    {
        try
        {
            string[] lines = File.ReadLines("/proc/cpuinfo").TakeWhile(l => l.Length > 0).ToArray();
            string? Field(string key) => lines.FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal) && l.Substring(key.Length).TrimStart().StartsWith(':'))?.Split(':', 2)[1].Trim();
            string? family = Field("cpu family"), model = Field("model");
            return family is null || model is null ? "" : $" (family {family} model {model})";
        }
        catch (IOException) { return ""; }
    }

    private static double MemTotalGiB()
    {
        try
        {
            string? line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
            return line is null ? 0 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], Inv) / (1024.0 * 1024.0);
        }
        catch (IOException) { return 0; }
    }

    private static string Dirty()
    {
        string s = Git("status --porcelain --untracked-files=no");
        return s == "unknown" ? " (working tree state unknown)" : s.Length > 0 ? " (working tree has uncommitted changes to tracked files)" : "";
    }

    private static string Git(string args)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo("git", args) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false });
            if (p is null) return "unknown";
            string o = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? o : "unknown";
        }
        catch (System.ComponentModel.Win32Exception) { return "unknown"; }
    }
}
