// BenchmarkDotNet configuration: in-process (the benchmarks own big native data and thread pools; a child
// process per case would rebuild them and need a project rebuild on a 2-core box), an execution order that
// keeps one implementation's data resident across its cases, and a bytes/s column.
using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Order;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using LlmNative.Benchmarks.Benchmarks;
using Perfolizer.Horology;

namespace LlmNative.Benchmarks;

internal static class BenchConfig
{
    /// <summary>The config; <paramref name="job"/> names BenchmarkDotNet's preset (dry, short, medium, long, default).</summary>
    public static IConfig Create(string? job) =>
        ManualConfig.Create(DefaultConfig.Instance)
            // the one default job: BenchmarkDotNet's own --job would be ignored next to it, so Program handles --job
            .AddJob(BaseJob(job).WithToolchain(InProcessEmitToolchain.Instance).AsDefault())
            .AddColumn(StatisticColumn.Median, new ThroughputColumn())
            .WithOrderer(new KindMajorOrderer())
            .WithSummaryStyle(SummaryStyle.Default.WithTimeUnit(TimeUnit.Microsecond))
            .WithOptions(ConfigOptions.DisableLogFile);

    private static Job BaseJob(string? job) => (job ?? "default").ToLowerInvariant() switch
    {
        "dry" => Job.Dry,
        // ShortRun (1 launch, 3 warmups, 3 iterations) with 250 ms iterations: every iteration still averages
        // tens to thousands of calls, and the ~70 cases of the short set finish in a few minutes on 2 cores
        "short" => Job.ShortRun.WithIterationTime(TimeInterval.FromMilliseconds(250)),
        "medium" => Job.MediumRun,
        "long" => Job.LongRun,
        "default" => Job.Default,
        _ => throw new ArgumentException($"--job must be dry, short, medium, long or default, got '{job}'"),
    };
}

/// <summary>Bytes a case streams per operation (weights, KV, or the stream array); null when not known.</summary>
internal static class Throughput
{
    public static long? BytesPerOp(BenchmarkCase c)
    {
        string method = c.Descriptor.WorkloadMethod.Name;
        Type type = c.Descriptor.Type;
        if (type == typeof(StreamRead) || type == typeof(StreamReadLast)) return StreamRead.Bytes;
        if (type == typeof(Int4Gemm) && c.Parameters["Shape"] is GemmShape s)
        {
            if (method == nameof(Int4Gemm.Dense_F32)) return Int4Gemm.DenseBytes(s);
            int group = method.Contains("32", StringComparison.Ordinal) ? 32 : 128;
            return Int4Gemm.Int4Bytes(s, group);
        }
        if (type == typeof(DecodeAttention) && c.Parameters["Case"] is AttnCase a)
            return DecodeAttention.KvBytes(a, f32: method == nameof(DecodeAttention.Ort_F32));
        return null;
    }

    /// <summary>Median time of a case in seconds, or null when it did not run.</summary>
    public static double? MedianSeconds(Summary summary, BenchmarkCase c)
    {
        BenchmarkReport? r = summary[c];
        return r?.ResultStatistics is { } st ? st.Median / 1e9 : null;
    }
}

internal sealed class ThroughputColumn : IColumn
{
    public string Id => "LlmNative.GBps";
    public string ColumnName => "GB/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Bytes streamed per call (INT4: codes + fp16 scales; dense: f32 W; attention: K+V) / median time, 1e9 B/s";

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
    {
        long? bytes = Throughput.BytesPerOp(benchmarkCase);
        double? t = Throughput.MedianSeconds(summary, benchmarkCase);
        return bytes is long b && t is double s && s > 0 ? (b / s / 1e9).ToString("F2", System.Globalization.CultureInfo.InvariantCulture) : "-";
    }

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
}

/// <summary>
/// Executes shape-major: for each GEMM shape (attention case), every M and every contender back to back, so a
/// change in machine load between minutes hits the compared numbers alike. The data of one shape (all
/// contenders' weight sets, about 1.3 GiB at most) stays resident while its cases run (DataCache); attention
/// keeps one contender's KV at a time, built once per case.
/// </summary>
internal sealed class KindMajorOrderer : DefaultOrderer
{
    public override IEnumerable<BenchmarkCase> GetExecutionOrder(ImmutableArray<BenchmarkCase> benchmarksCase,
        IEnumerable<BenchmarkLogicalGroupRule>? order = null) =>
        benchmarksCase
            .Select((c, i) => (c, i))
            .OrderBy(t => TypeRank(t.c))
            .ThenBy(t => DataParams(t.c), StringComparer.Ordinal)
            .ThenBy(t => t.c.Parameters.Items.FirstOrDefault(p => p.Name == "M")?.Value is int m ? m : 0)
            .ThenBy(t => t.c.Descriptor.MethodIndex)
            .ThenBy(t => t.i)
            .Select(t => t.c);

    private static int TypeRank(BenchmarkCase c)
    {
        Type t = c.Descriptor.Type;
        if (t == typeof(StreamRead)) return 0;
        if (t == typeof(StreamReadLast)) return 9;
        return t == typeof(Int4Gemm) ? 1 : t == typeof(DecodeAttention) ? 2 : 3;
    }

    /// <summary>The parameters a data set depends on (all but M, the GEMM's row count), sortable.</summary>
    private static string DataParams(BenchmarkCase c) =>
        string.Join(",", c.Parameters.Items.Where(p => p.Name != "M").Select(p => p.Value is object v ? Pad(v) : ""));

    private static string Pad(object v) => v switch
    {
        GemmShape s => $"{s.K:D6}x{s.N:D6}",
        AttnCase a => $"{a.Batch:D4}x{a.Context:D7}",
        _ => v.ToString() ?? "",
    };
}
