using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;

namespace LlmNative.Cli;

/// <summary>
/// <c>llmnative verify</c>: a numerical self-test of every kernel on this machine against float64 references with
/// derived error bounds (KernelVerbSupport.cs). Formats the native library does not implement yet are reported
/// as "unsupported", which is not a failure.
/// </summary>
internal static class VerifyVerb
{
    public const string Usage =
        "Usage: llmnative verify [--backend cpu|cuda|best] [--json]\n" +
        "\n" +
        "Runs every kernel on small fresh problems and compares it with a float64 reference computed from what the\n" +
        "library stores (Int4Weight.Dequantize, KvCache.Read), within a derived error bound:\n" +
        "  int4 gemm         quantized (sym g128, asym g32, per-column), GPTQ v1 act-order import, AWQ import;\n" +
        "                    m = 1 and 5, K 512, N 384, with bias, each activation dtype of the backend\n" +
        "  dense gemm        the baseline, same shapes\n" +
        "  decode attention  f16 KV cache (GQA 4, mixed lengths, q_len 1; q_len 4 with window and soft-cap, forced\n" +
        "                    splits), then every other KV format: \"unsupported\" where this build cannot store it\n" +
        "Prints one row per check: the largest error, the bound at the worst element, error/bound, pass or fail.\n" +
        "\n" +
        "Options:\n" +
        BackendOption.Help +
        "  --json      one JSON object instead of the table\n" +
        "  -h, --help  show this help\n" +
        "\n" +
        "Exit codes: 0 every check passed (or is unsupported), 1 a check failed, 2 usage error.\n";

    private const int K = 512, N = 384;
    private static readonly int[] Ms = { 1, 5 };

    internal sealed record Result(string Kernel, string Case, string Status, double MaxError, double Bound, double Ratio, string Detail);

    public static int Run(Invocation inv)
    {
        bool json = false;
        string backend = "best";
        for (int i = 0; i < inv.Args.Length; i++)
        {
            if (inv.Args[i] == "--json") json = true;
            else if (!BackendOption.TryParse("verify", inv.Args, ref i, ref backend))
                throw new UsageException($"verify: unknown argument '{inv.Args[i]}'");
        }

        using LlmContext ctx = BackendOption.Create(backend);
        string device = BackendOption.Describe(ctx);
        var results = new List<Result>();
        foreach ((string kernel, string name, bool optional, Func<LlmContext, IEnumerable<Result>> check) in Checks(ctx.Backend))
        {
            if (!json) inv.Error.WriteLine($"verify: {kernel}, {name} ...");
            results.AddRange(Guarded(ctx, kernel, name, optional, check));
        }

        int failed = results.Count(r => r.Status != "pass" && r.Status != "unsupported");
        if (json) WriteJson(inv.Out, device, results);
        else WriteTable(inv.Out, device, results);
        return failed == 0 ? Cli.Ok : Cli.Failed;
    }

    /// <summary>Runs one check; Unsupported becomes "unsupported" for optional checks, any other exception "error".</summary>
    private static List<Result> Guarded(LlmContext ctx, string kernel, string name, bool optional,
        Func<LlmContext, IEnumerable<Result>> check)
    {
        try
        {
            return check(ctx).ToList();
        }
        catch (LlmNativeException e) when (optional && e.Status == LlmNativeStatus.Unsupported)
        {
            return new List<Result> { new(kernel, name, "unsupported", 0, 0, 0, e.NativeMessage) };
        }
        catch (Exception e) when (e is LlmNativeException or ArgumentException or InvalidOperationException)
        {
            return new List<Result> { new(kernel, name, "error", double.NaN, double.NaN, double.NaN, $"{e.GetType().Name}: {e.Message}") };
        }
    }

    private static IEnumerable<(string Kernel, string Case, bool Optional, Func<LlmContext, IEnumerable<Result>> Run)> Checks(Backend backend)
    {
        DType[] acts = backend == Backend.Cpu ? new[] { DType.F32, DType.F16 } : new[] { DType.F16, DType.BF16 };
        yield return ("int4 gemm", "quantized sym g128", false, c => Int4(c, "quantized sym g128", acts, QuantizedWeight(c, 128, true)));
        yield return ("int4 gemm", "quantized asym g32", false, c => Int4(c, "quantized asym g32", acts, QuantizedWeight(c, 32, false)));
        yield return ("int4 gemm", "quantized sym per-column", false, c => Int4(c, "quantized sym per-column", acts, QuantizedWeight(c, 0, true)));
        yield return ("int4 gemm", "gptq v1 asym g64 act-order", false, c => Int4(c, "gptq v1 asym g64 act-order", acts, GptqActOrder(c)));
        yield return ("int4 gemm", "awq g128", false, c => Int4(c, "awq g128", acts, Awq(c)));
        yield return ("dense gemm", "baseline", false, c => Dense(c, acts));
        foreach (KvFormat f in new[] { KvFormat.F16, KvFormat.BF16, KvFormat.Int8, KvFormat.Fp8E4M3, KvFormat.Int4, KvFormat.Int2 })
        {
            bool optional = f != KvFormat.F16;
            yield return ("decode attention", $"kv {f.ToString().ToLowerInvariant()}", optional, c => Attention(c, f, acts));
        }
    }

    // ---- INT4 GEMM ----------------------------------------------------------------------------------------------

    private sealed record WeightCase(Int4Weight Weight, int[] GroupOfRow, bool Grouped);

    private static Func<WeightCase> QuantizedWeight(LlmContext ctx, int groupSize, bool symmetric) => () =>
    {
        ulong seed = (ulong)(groupSize * 2 + (symmetric ? 1 : 0));
        float[] w = Data.Array(K * N, i => Data.Uniform(seed, i) * ((Data.Bits(seed + 99, i) & 255) == 0 ? 0.5f : 0.05f));
        return new WeightCase(Int4Weight.Quantize(ctx, w, K, N, groupSize, symmetric),
            Enumerable.Range(0, K).Select(k => groupSize == 0 ? 0 : k / groupSize).ToArray(), groupSize != 0);
    };

    private static Func<WeightCase> GptqActOrder(LlmContext ctx) => () =>
    {
        const int GS = 64, G = K / GS;
        const ulong Seed = 777;
        int[] perm = Enumerable.Range(0, K).OrderBy(k => Data.Bits(Seed, k)).ToArray();
        int[] gIdx = perm.Select(p => p / GS).ToArray();
        int[] qweight = Packing.GptqQWeight((k, n) => Data.Nibble(Seed + 1, (long)k * N + n), K, N);
        // v1 stores zero - 1; real zero points 1..15 (v1 cannot express 0).
        int[] qzeros = Packing.GptqColumns((g, n) => Data.Nibble(Seed + 2, (long)g * N + n) % 15, G, N);
        ushort[] scales = Enumerable.Range(0, G * N)
            .Select(i => BitConverter.HalfToUInt16Bits((Half)(0.002 + 0.02 * (Data.Uniform(Seed + 3, i) + 1)))).ToArray();
        var t = new GptqTensors(K, N, GS, symmetric: false, GptqFormat.V1, qweight, qzeros, scales, gIdx);
        return new WeightCase(Int4Weight.ImportGptq(ctx, t), gIdx, true);
    };

    private static Func<WeightCase> Awq(LlmContext ctx) => () =>
    {
        const int GS = 128, G = K / GS;
        const ulong Seed = 4242;
        int[] qweight = Packing.Awq((k, n) => Data.Nibble(Seed, (long)k * N + n), K, N);
        int[] qzeros = Packing.Awq((g, n) => Data.Nibble(Seed + 1, (long)g * N + n), G, N);
        float[] scales = Enumerable.Range(0, G * N).Select(i => (float)(Half)(0.002 + 0.02 * (Data.Uniform(Seed + 2, i) + 1))).ToArray();
        var t = new AwqTensors(K, N, GS, qweight, qzeros, scales);
        return new WeightCase(Int4Weight.ImportAwq(ctx, t), Enumerable.Range(0, K).Select(k => k / GS).ToArray(), true);
    };

    private static IEnumerable<Result> Int4(LlmContext ctx, string name, DType[] acts, Func<WeightCase> build)
    {
        WeightCase wc = build();
        using Int4Weight w = wc.Weight;
        float[] deq = new float[K * N];
        w.Dequantize(deq);
        var results = new List<Result>();
        foreach (DType dtype in acts)
        {
            var worst = new List<Comparison>();
            string detail = "";
            foreach (int m in Ms)
            {
                ulong seed = (ulong)(m * 31 + (int)dtype);
                float[] x = Numeric.Round(dtype, Data.Array(m * K, i => Data.Activation(seed, i)));
                float[] bias = Numeric.Round(dtype, Data.Array(N, i => 0.5f * Data.Uniform(seed + 1, i)));
                using LlmBuffer xb = Numeric.Buffer(ctx, dtype, x), bb = Numeric.Buffer(ctx, dtype, bias);
                using LlmBuffer yb = LlmBuffer.Allocate(ctx, dtype, m * N + 8);
                Numeric.Poison(yb);
                Gemm.Int4(xb, w, yb, m, bb);
                float[] y = Numeric.Download(yb);
                if (y.Skip(m * N).Any(v => !float.IsNaN(v))) detail = $"m {m}: wrote past the output";
                var (reference, s) = GemmReference.Compute(x, deq, bias, m, K, N);
                worst.Add(Comparison.Of(y, reference,
                    GemmReference.Int4Bound(ctx.Backend, dtype, x, deq, reference, s, m, K, N, wc.GroupOfRow, wc.Grouped)));
            }
            results.Add(ToResult("int4 gemm", $"{name}, x {Numeric.Name(dtype)}", worst, detail));
        }
        return results;
    }

    private static IEnumerable<Result> Dense(LlmContext ctx, DType[] acts)
    {
        var results = new List<Result>();
        foreach (DType dtype in acts)
        {
            float[] w = Numeric.Round(dtype, Data.Array(K * N, i => 0.05f * Data.Uniform(11, i)));
            using LlmBuffer wb = Numeric.Buffer(ctx, dtype, w);
            var worst = new List<Comparison>();
            string detail = "";
            foreach (int m in Ms)
            {
                ulong seed = (ulong)(m * 37 + (int)dtype);
                float[] x = Numeric.Round(dtype, Data.Array(m * K, i => Data.Activation(seed, i)));
                float[] bias = Numeric.Round(dtype, Data.Array(N, i => 0.5f * Data.Uniform(seed + 1, i)));
                using LlmBuffer xb = Numeric.Buffer(ctx, dtype, x), bb = Numeric.Buffer(ctx, dtype, bias);
                using LlmBuffer yb = LlmBuffer.Allocate(ctx, dtype, m * N + 8);
                Numeric.Poison(yb);
                Gemm.Dense(xb, wb, yb, m, K, N, bb);
                float[] y = Numeric.Download(yb);
                if (y.Skip(m * N).Any(v => !float.IsNaN(v))) detail = $"m {m}: wrote past the output";
                var (reference, s) = GemmReference.Compute(x, w, bias, m, K, N);
                worst.Add(Comparison.Of(y, reference, GemmReference.DenseBound(ctx.Backend, dtype, reference, s, K)));
            }
            results.Add(ToResult("dense gemm", $"baseline, {Numeric.Name(dtype)}", worst, detail));
        }
        return results;
    }

    // ---- decode attention ---------------------------------------------------------------------------------------

    private static IEnumerable<Result> Attention(LlmContext ctx, KvFormat format, DType[] acts)
    {
        const int H = 2, Hq = 8, D = 128;
        int[] lengths = { 1, 4, 37, 300, 1000 };
        bool quantized = format is KvFormat.Int8 or KvFormat.Fp8E4M3 or KvFormat.Int4 or KvFormat.Int2;
        using KvCache cache = KvCache.Create(ctx, new KvCacheOptions
        {
            NumLayers = 2, NumKvHeads = H, HeadDim = D, BlockSize = 16, KFormat = format, VFormat = format,
            ValueGroupSize = format is KvFormat.Int4 or KvFormat.Int2 ? 32 : 0,
            CapacityTokens = lengths.Sum() + 64 * lengths.Length,
        });
        long[] ids = lengths.Select(_ => cache.AddSequence()).ToArray();
        // Interleaved chunks of every sequence and both layers, so blocks are scattered through the pool.
        var filled = new int[lengths.Length];
        for (int round = 0; filled.Where((f, b) => f < lengths[b]).Any(); round++)
        {
            for (int b = 0; b < lengths.Length; b++)
            {
                int n = Math.Min(lengths[b] - filled[b], 1 + (int)(Data.Bits(5, round * 8 + b) % 97));
                if (n <= 0) continue;
                for (int layer = 0; layer < 2; layer++)
                {
                    ulong seed = (ulong)(b * 1000 + layer * 100000 + filled[b]);
                    float[] k = Data.Array(n * H * D, i => 1.5f * Data.Activation(seed, i));
                    float[] v = Data.Array(n * H * D, i => 1.5f * Data.Uniform(seed + 7, i));
                    using LlmBuffer kb = Numeric.Buffer(ctx, DType.F32, k), vb = Numeric.Buffer(ctx, DType.F32, v);
                    cache.Append(ids[b], layer, kb, vb, n);
                }
                filled[b] += n;
            }
        }

        var cases = new (string Name, long[] Ids, AttentionOptions Options)[]
        {
            ("q_len 1", ids, new AttentionOptions { Layer = 1, NumQHeads = Hq }),
            ("q_len 4, window 64, soft-cap 30, 3 splits", ids.Skip(1).ToArray(),
                new AttentionOptions { Layer = 1, NumQHeads = Hq, QLen = 4, Window = 64, SoftCap = 30, NumSplits = 3 }),
        };
        var results = new List<Result>();
        foreach (DType dtype in acts)
        {
            var worst = new List<Comparison>();
            foreach (var c in cases)
            {
                int count = c.Ids.Length * c.Options.QLen * Hq * D;
                float[] q = Numeric.Round(dtype, Data.Array(count, i => Data.Uniform((ulong)(c.Options.QLen * 13 + (int)dtype), i)));
                using LlmBuffer qb = Numeric.Buffer(ctx, dtype, q);
                using LlmBuffer ob = LlmBuffer.Allocate(ctx, dtype, count);
                Numeric.Poison(ob);
                cache.DecodeAttention(c.Ids, qb, ob, c.Options);
                float[] got = Numeric.Download(ob);
                var (reference, bound) = AttentionReference.Compute(cache, c.Ids, q, c.Options, dtype, quantized, quantized);
                worst.Add(Comparison.Of(got, reference, i => bound[i / D]));
            }
            results.Add(ToResult("decode attention", $"kv {format.ToString().ToLowerInvariant()}, q {Numeric.Name(dtype)}", worst, ""));
        }
        return results;
    }

    private static Result ToResult(string kernel, string name, List<Comparison> parts, string detail)
    {
        Comparison w = parts.OrderByDescending(p => p.Ratio).First();
        bool ok = parts.All(p => p.Passed) && detail.Length == 0;
        Comparison firstBad = parts.FirstOrDefault(p => !p.Passed);
        if (!ok && detail.Length == 0) detail = $"{parts.Sum(p => p.Bad)} elements outside the bound; first: {firstBad.FirstBad}";
        return new Result(kernel, name, ok ? "pass" : "fail", parts.Max(p => p.MaxError), w.BoundAtWorst, w.Ratio, detail);
    }

    // ---- output -------------------------------------------------------------------------------------------------

    private static void WriteTable(TextWriter o, string device, List<Result> results)
    {
        o.WriteLine($"llmnative verify on {device}");
        o.WriteLine();
        o.WriteLine($"{"kernel",-17} {"case",-44} {"max error",-10} {"bound",-10} {"err/bound",-9}  result");
        foreach (Result r in results)
        {
            bool measured = r.Status is "pass" or "fail";
            o.WriteLine($"{r.Kernel,-17} {r.Case,-44} {(measured ? Numeric.Sci(r.MaxError) : "-"),-10} " +
                        $"{(measured ? Numeric.Sci(r.Bound) : "-"),-10} {(measured ? r.Ratio.ToString("0.000", System.Globalization.CultureInfo.InvariantCulture) : "-"),-9}  {r.Status}");
            if (r.Status != "pass" && r.Detail.Length > 0) o.WriteLine($"    {r.Detail}");
        }
        o.WriteLine();
        o.WriteLine($"{results.Count} checks: {results.Count(r => r.Status == "pass")} passed, " +
                    $"{results.Count(r => r.Status is "fail" or "error")} failed, {results.Count(r => r.Status == "unsupported")} unsupported");
    }

    private static void WriteJson(TextWriter o, string device, List<Result> results)
    {
        using var stream = new MemoryStream();
        using (var j = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            j.WriteStartObject();
            j.WriteString("device", device);
            j.WriteNumber("passed", results.Count(r => r.Status == "pass"));
            j.WriteNumber("failed", results.Count(r => r.Status is "fail" or "error"));
            j.WriteNumber("unsupported", results.Count(r => r.Status == "unsupported"));
            j.WriteStartArray("checks");
            foreach (Result r in results)
            {
                j.WriteStartObject();
                j.WriteString("kernel", r.Kernel);
                j.WriteString("case", r.Case);
                j.WriteString("status", r.Status);
                if (r.Status is "pass" or "fail")
                {
                    Number(j, "maxError", r.MaxError);
                    Number(j, "bound", r.Bound);
                    Number(j, "errorOverBound", r.Ratio);
                }
                if (r.Detail.Length > 0) j.WriteString("detail", r.Detail);
                j.WriteEndObject();
            }
            j.WriteEndArray();
            j.WriteEndObject();
        }
        o.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }

    /// <summary>JSON has no NaN/Infinity: those are written as null.</summary>
    internal static void Number(Utf8JsonWriter j, string name, double v)
    {
        if (double.IsFinite(v)) j.WriteNumber(name, v);
        else j.WriteNull(name);
    }
}
