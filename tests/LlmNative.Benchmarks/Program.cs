// LlmNative CPU benchmarks (BenchmarkDotNet, in-process). Our options, removed before BenchmarkDotNet sees
// the rest of the command line:
//   --full               all M {1,4,16,64,256} x 4 shapes, attention batch {1,8,32} x context {1k,4k,16k,32k}
//                        (default: the short set, M {1,16} x 4 shapes, attention 1x4k, 1x16k, 8x4k)
//   --m 1,4              GEMM row counts (overrides the set)
//   --attn 1x4096,8x1024 attention cases, batch x context (overrides the set)
//   --threads N          LlmNative pool size (ORT's intra-op pool gets the same); default: the library's
//   --rotate-mib N       rotate over at least N MiB of weights/KV per case (default 128; L3 is 16-32 MiB)
//   --max-kv-gib X       skip attention cases whose rotation set needs more KV than this (default 4.5)
//   --wait-load X        before measuring, wait until the 1-minute load average is below X (poll 30 s)
//   --wait-max-min N     ... for at most N minutes (default 40), then measure anyway and say so
//   --paired N           instead of BenchmarkDotNet: N paired rounds per case (every contender and a streaming
//                        read back to back, ratios taken per round; Paired.cs), report llmnative-paired-report.md
//   --selfcheck          only run the correctness self-check (exit 1 on failure)
//   --no-selfcheck       skip it
//   --report PATH        markdown report (default: <artifacts>/llmnative-cpu-report.md)
//   --commit SHA         the commit the measured build came from (default: git rev-parse HEAD in the current
//                        directory; use it when running a build made from an exported snapshot)
//   --job NAME           BenchmarkDotNet job: dry, short (ShortRun: 3 warmups, 3 iterations), medium, long,
//                        default (BenchmarkDotNet's own accuracy target); always in-process
// Everything else goes to BenchmarkDotNet (e.g. --filter '*Int4Gemm*', --artifacts DIR); without --filter
// everything runs.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Threading;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using LlmNative;
using LlmNative.Benchmarks;
using LlmNative.Benchmarks.Benchmarks;
using LlmNative.Benchmarks.Onnx;

var inv = CultureInfo.InvariantCulture;
var bdnArgs = new List<string>();
bool selfcheckOnly = false, skipSelfcheck = false;
double waitLoad = 0;
int waitMaxMin = 40, threads = 0, pairedRounds = 0;
string? reportPath = null, artifacts = null, job = null;
try
{
    for (int i = 0; i < args.Length; ++i)
    {
        string a = args[i];
        string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
        switch (a)
        {
            case "--full": BenchSettings.Full = true; break;
            case "--m": BenchSettings.MOverride = Next().Split(',').Select(s => int.Parse(s, inv)).ToArray(); break;
            case "--attn":
                BenchSettings.AttnOverride = Next().Split(',').Select(s =>
                {
                    string[] p = s.ToLowerInvariant().Split('x');
                    return new AttnCase(int.Parse(p[0], inv), int.Parse(p[1], inv));
                }).ToArray();
                break;
            case "--threads": threads = int.Parse(Next(), inv); break;
            case "--rotate-mib": BenchSettings.RotateBytes = long.Parse(Next(), inv) << 20; break;
            case "--max-kv-gib": BenchSettings.MaxKvBytes = (long)(double.Parse(Next(), inv) * (1L << 30)); break;
            case "--wait-load": waitLoad = double.Parse(Next(), inv); break;
            case "--wait-max-min": waitMaxMin = int.Parse(Next(), inv); break;
            case "--paired": pairedRounds = int.Parse(Next(), inv); break;
            case "--selfcheck": selfcheckOnly = true; break;
            case "--no-selfcheck": skipSelfcheck = true; break;
            case "--report": reportPath = Next(); break;
            case "--job": job = Next(); break;
            case "--commit": Report.CommitOverride = Next(); break;
            default:
                if (a == "--artifacts" && i + 1 < args.Length) artifacts = args[i + 1];
                bdnArgs.Add(a);
                break;
        }
    }
}
catch (Exception e) when (e is FormatException or ArgumentException or OverflowException or IndexOutOfRangeException)
{
    Console.Error.WriteLine($"LlmNative.Benchmarks: bad option: {e.Message} (see the header of Program.cs)");
    return 2;
}

BenchmarkDotNet.Configs.IConfig config;
try
{
    config = BenchConfig.Create(job);
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"LlmNative.Benchmarks: bad option: {e.Message}");
    return 2;
}

if (threads > 0) LlmNativeRuntime.SetCpuThreads(threads);
CpuInfo cpu = LlmNativeInfo.Cpu;
BenchSettings.Threads = cpu.Threads;
OrtModels.InitEnvironment(cpu.Threads);
Console.WriteLine($"LlmNative {LlmNativeInfo.Version} ({LlmNativeInfo.LibraryPath}); CPU {cpu.ModelName}, ISA {cpu.ActiveIsa}, " +
                  $"{cpu.Threads} pool threads; ORT {Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetVersionString()} with {cpu.Threads} intra-op threads");

if (!skipSelfcheck)
{
    Console.WriteLine("Self-check (float64 references):");
    if (!SelfCheck.Run(Console.Out))
    {
        Console.Error.WriteLine("LlmNative.Benchmarks: self-check FAILED; not measuring");
        return 1;
    }
    if (selfcheckOnly) return 0;
}

if (waitLoad > 0)
{
    DateTime until = DateTime.UtcNow.AddMinutes(waitMaxMin);
    while (Report.Load1() >= waitLoad && DateTime.UtcNow < until)
    {
        Console.WriteLine($"waiting: load average {Report.LoadAverage()} (want 1-min < {waitLoad.ToString(inv)})");
        Thread.Sleep(TimeSpan.FromSeconds(30));
    }
    if (Report.Load1() >= waitLoad)
        Console.WriteLine($"WARNING: load average still {Report.LoadAverage()} after {waitMaxMin} min; measuring anyway");
}

if (pairedRounds > 0)
{
    string pairedPath = reportPath ?? Path.Combine(artifacts ?? "BenchmarkDotNet.Artifacts", "llmnative-paired-report.md");
    string pmd = Paired.Run(pairedRounds, pairedPath, new RunFacts(DateTime.UtcNow, args, Report.LoadAverage(), "", BenchSettings.Full), Console.Out);
    Console.WriteLine();
    Console.WriteLine(pmd);
    Console.WriteLine($"report: {Path.GetFullPath(pairedPath)}");
    return 0;
}

bdnArgs = LastOptionWins(bdnArgs);
if (!bdnArgs.Contains("--filter") && !bdnArgs.Any(a => a.StartsWith("--filter=", StringComparison.Ordinal)))
    bdnArgs.AddRange(new[] { "--filter", "*" });
var facts = new RunFacts(DateTime.UtcNow, args, Report.LoadAverage(), "", BenchSettings.Full);
IEnumerable<Summary> summaries = BenchmarkSwitcher
    .FromTypes(new[] { typeof(StreamRead), typeof(Int4Gemm), typeof(DecodeAttention), typeof(StreamReadLast) })
    .Run(bdnArgs.ToArray(), config)
    .ToList();
facts = facts with { LoadAfter = Report.LoadAverage() };
DataCache.Clear();

reportPath ??= Path.Combine(artifacts ?? "BenchmarkDotNet.Artifacts", "llmnative-cpu-report.md");
string md = Report.Write(summaries, reportPath, facts);
Console.WriteLine();
Console.WriteLine(md);
Console.WriteLine($"report: {Path.GetFullPath(reportPath)}");
return summaries.Any(s => s.HasCriticalValidationErrors) ? 1 : 0;

// build.sh passes defaults (--filter '*', --artifacts ...) before the user's arguments: when an option is
// given twice, the later one (with its values) replaces the earlier, instead of BenchmarkDotNet refusing it.
static List<string> LastOptionWins(List<string> args)
{
    var groups = new List<(string Name, List<string> Items)>();
    foreach (string a in args)
    {
        if (a.StartsWith("-", StringComparison.Ordinal) || groups.Count == 0)
        {
            string name = a.Split('=')[0];
            groups.RemoveAll(g => g.Name == name);
            groups.Add((name, new List<string> { a }));
        }
        else
        {
            groups[^1].Items.Add(a);
        }
    }
    return groups.SelectMany(g => g.Items).ToList();
}
