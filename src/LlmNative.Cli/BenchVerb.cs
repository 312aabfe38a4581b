using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Numerics;
using System.Text.Json;
using System.Threading.Tasks;

namespace LlmNative.Cli;

/// <summary>
/// <c>llmnative bench</c>: times the decode kernels at model-sized shapes and relates them to the memory bandwidth
/// measured on the same machine. Every configuration rotates over enough copies of its data that the cache
/// hierarchy cannot serve it (at least 64 MiB and twice the last-level cache between two visits of a copy).
/// </summary>
internal static class BenchVerb
{
    public const string Usage =
        "Usage: llmnative bench [--backend cpu|cuda|best] [--json] [--shapes small|default|<k>x<n>,...] [--quick]\n" +
        "                       [--int8-query]\n" +
        "\n" +
        "Measures the memory bandwidth, then times:\n" +
        "  int4 gemm         W4A16, GPTQ-layout weights (symmetric, group 128), f16 activations, m = 1 and 16\n" +
        "  dense gemm        the f16 dense baseline on the same matrix\n" +
        "  decode attention  Llama-3-8B heads (32 q, 8 kv, head_dim 128), batch 1, one layer, f16 KV cache and\n" +
        "                    each quantized KV format (\"unsupported\" where this build cannot store it)\n" +
        "and prints per configuration: time per call (median), bytes moved per second, that rate as a share of the\n" +
        "measured bandwidth (the better of a measurement before and one after the kernels), speedup over the\n" +
        "dense / f16-KV baseline, and the largest error against a float64 reference (sampled columns for GEMMs).\n" +
        "Bandwidth: CPU = streaming read (a vectorized sum over a 256 MiB array on as many threads as the CPU\n" +
        "backend's pool); CUDA = device-to-device copy of 512 MiB (bytes read plus bytes written).\n" +
        "Progress goes to stderr.\n" +
        "\n" +
        "Options:\n" +
        BackendOption.Help +
        "  --shapes <s>   default: GEMM 4096x4096 and 8192x8192, attention contexts 4096 and 32768;\n" +
        "                 small: GEMM 1024x1024 and 2048x2048, contexts 512 and 2048;\n" +
        "                 <k>x<n>,...: these GEMM shapes (k a multiple of 8), default contexts\n" +
        "  --quick        fewer timing samples (a rough number in seconds)\n" +
        "  --int8-query   also time the INT8 / INT4 / INT2 KV caches with AttentionOptions.Int8Query (rows \"... q8\";\n" +
        "                 the CPU backend rounds the query to int8 for those keys, CUDA ignores the option); their\n" +
        "                 max error is still against the exact-query reference, so it includes the query's rounding\n" +
        "  --json         one JSON object instead of the table\n" +
        "  -h, --help     show this help\n" +
        "\n" +
        "Exit codes: 0 done, 1 a kernel failed, 2 usage error.\n";

    private const int QHeads = 32, KvHeads = 8, HeadDim = 128, GroupSize = 128;

    private sealed record Options(string Backend, bool Json, bool Quick, (int K, int N)[] Shapes, int[] Contexts, bool Int8Query);

    internal sealed record Row(string Kernel, string Shape, string Status, double Seconds, double Bytes, double MaxError, string Detail)
    {
        public string Baseline { get; init; } = "";
        public double Speedup { get; set; } = double.NaN;
        public double BytesPerSecond => Status == "ok" ? Bytes / Seconds : double.NaN;
    }

    private sealed record Bandwidth(string Method, double BytesPerSecond);

    public static int Run(Invocation inv)
    {
        Options opt = Parse(inv.Args);
        using LlmContext ctx = BackendOption.Create(opt.Backend);
        string device = BackendOption.Describe(ctx);
        TextWriter progress = inv.Error;
        progress.WriteLine($"bench: {device}; measuring bandwidth ...");
        Bandwidth bw = ctx.Backend == Backend.Cpu ? CpuStreamRead(opt.Quick) : DeviceCopy(ctx, opt.Quick);
        long target = Math.Max(64L << 20, 2 * LlmNativeInfo.Cpu.L3CacheBytes);
        if (ctx.Backend == Backend.Cuda)
        {
            CudaDeviceInfo? d = LlmNativeInfo.Cuda.Devices.FirstOrDefault(x => x.Index == ctx.Device);
            target = Math.Max(256L << 20, 4L * (d?.L2CacheBytes ?? 0));
        }

        var plan = new List<(string Label, Func<List<Row>> Run)>();
        foreach ((int k, int n) in opt.Shapes)
        {
            var shape = new Lazy<GemmData>(() => new GemmData(ctx, k, n, target));
            foreach (int m in new[] { 1, 16 })
            {
                int mm = m;
                plan.Add(($"gemm m={m} {k}x{n}", () => shape.Value.Run(mm, opt.Quick)));
            }
            plan.Add(($"(free {k}x{n})", () =>
            {
                if (shape.IsValueCreated) shape.Value.Dispose();
                return new List<Row>();
            }));
        }
        foreach (int c in opt.Contexts)
        {
            foreach (KvFormat f in new[] { KvFormat.F16, KvFormat.Int8, KvFormat.Fp8E4M3, KvFormat.Int4, KvFormat.Int2 })
            {
                int cc = c;
                plan.Add(($"decode attention ctx {c} kv {f.ToString().ToLowerInvariant()}", () => new List<Row> { Attention(ctx, cc, f, target, opt.Quick, false) }));
                if (opt.Int8Query && f is KvFormat.Int8 or KvFormat.Int4 or KvFormat.Int2)
                    plan.Add(($"decode attention ctx {c} kv {f.ToString().ToLowerInvariant()} q8", () => new List<Row> { Attention(ctx, cc, f, target, opt.Quick, true) }));
            }
        }

        var rows = new List<Row>();
        int steps = plan.Count(p => !p.Label.StartsWith('(')), step = 0;
        foreach ((string label, Func<List<Row>> run) in plan)
        {
            if (!label.StartsWith('(')) progress.WriteLine($"bench: [{++step}/{steps}] {label}");
            rows.AddRange(run());
        }
        // The machine may be busier at one end of the run than the other: the bandwidth is the better of two measurements.
        progress.WriteLine("bench: measuring bandwidth again ...");
        Bandwidth again = ctx.Backend == Backend.Cpu ? CpuStreamRead(opt.Quick) : DeviceCopy(ctx, opt.Quick);
        if (again.BytesPerSecond > bw.BytesPerSecond) bw = again;
        Speedups(rows);
        if (opt.Json) WriteJson(inv.Out, device, bw, rows);
        else WriteTable(inv.Out, device, bw, rows);
        return rows.Any(r => r.Status == "error") ? Cli.Failed : Cli.Ok;
    }

    private static Options Parse(string[] args)
    {
        string backend = "best";
        bool json = false, quick = false, int8Query = false;
        (int, int)[] shapes = { (4096, 4096), (8192, 8192) };
        int[] contexts = { 4096, 32768 };
        for (int i = 0; i < args.Length; i++)
        {
            if (BackendOption.TryParse("bench", args, ref i, ref backend)) continue;
            switch (args[i])
            {
                case "--json": json = true; break;
                case "--quick": quick = true; break;
                case "--int8-query": int8Query = true; break;
                case "--shapes":
                    if (++i >= args.Length) throw new UsageException("bench: --shapes needs a value (small, default or <k>x<n>,...)");
                    if (args[i] == "small")
                    {
                        shapes = new[] { (1024, 1024), (2048, 2048) };
                        contexts = new[] { 512, 2048 };
                    }
                    else if (args[i] != "default") shapes = ParseShapes(args[i]);
                    break;
                default: throw new UsageException($"bench: unknown argument '{args[i]}'");
            }
        }
        return new Options(backend, json, quick, shapes, contexts, int8Query);
    }

    internal static (int K, int N)[] ParseShapes(string value)
    {
        var list = new List<(int, int)>();
        foreach (string part in value.Split(','))
        {
            string[] kn = part.Trim().Split('x');
            if (kn.Length != 2 || !int.TryParse(kn[0], out int k) || !int.TryParse(kn[1], out int n) || k < 8 || n < 1)
                throw new UsageException($"bench: --shapes: '{part}' is not <k>x<n> (for example 4096x11008)");
            if (k % 8 != 0) throw new UsageException($"bench: --shapes: k must be a multiple of 8 (GPTQ packing), got {k} in '{part}'");
            if ((long)k * n > 1L << 30) throw new UsageException($"bench: --shapes: '{part}' has more than 2^30 weights");
            list.Add((k, n));
        }
        return list.ToArray();
    }

    // ---- timing -------------------------------------------------------------------------------------------------

    /// <summary>Median seconds per call; each sample is one pass over all copies, then a synchronize.</summary>
    private static double Time(LlmContext ctx, int copies, Action<int> call, bool quick)
    {
        for (int i = 0; i < Math.Max(2, copies); i++) call(i % copies);
        ctx.Synchronize();
        double budget = quick ? 0.15 : 1.0;
        int minSamples = quick ? 3 : 7;
        var samples = new List<double>();
        var total = Stopwatch.StartNew();
        int next = 0;
        while (samples.Count < minSamples || (total.Elapsed.TotalSeconds < budget && samples.Count < 2000))
        {
            var sw = Stopwatch.StartNew();
            for (int j = 0; j < copies; j++) call(next++ % copies);
            ctx.Synchronize();
            samples.Add(sw.Elapsed.TotalSeconds / copies);
        }
        samples.Sort();
        return samples[samples.Count / 2];
    }

    private static int Copies(long bytesPerCopy, long target) => (int)Math.Clamp((target + bytesPerCopy - 1) / Math.Max(1, bytesPerCopy), 1, 64);

    // ---- bandwidth ----------------------------------------------------------------------------------------------

    /// <summary>Streaming read: a vectorized sum of 64-bit words over 256 MiB, split in 256 chunks over the pool's thread count; best of the repetitions.</summary>
    private static Bandwidth CpuStreamRead(bool quick)
    {
        const long Bytes = 256L << 20;
        var data = new ulong[Bytes / 8];
        Parallel.For(0, 256, c => // touch every page (first-touch placement on the threads that read it)
        {
            long b = data.LongLength * c / 256, e = data.LongLength * (c + 1) / 256;
            for (long i = b; i < e; i++) data[i] = (ulong)i;
        });
        int threads = Math.Max(1, LlmNativeInfo.Cpu.Threads);
        var po = new ParallelOptions { MaxDegreeOfParallelism = threads };
        double best = 0;
        ulong sink = 0;
        for (int rep = 0; rep < (quick ? 3 : 6); rep++)
        {
            var parts = new ulong[256];
            var sw = Stopwatch.StartNew();
            Parallel.For(0, 256, po, c =>
            {
                int b = (int)(data.LongLength * c / 256), e = (int)(data.LongLength * (c + 1) / 256);
                parts[c] = Sum(data.AsSpan(b, e - b));
            });
            double s = sw.Elapsed.TotalSeconds;
            foreach (ulong p in parts) sink += p;
            best = Math.Max(best, Bytes / s);
        }
        GC.KeepAlive(sink);
        return new Bandwidth($"streaming read: vectorized sum of a 256 MiB array, {threads} threads", best);
    }

    private static ulong Sum(ReadOnlySpan<ulong> a)
    {
        var v = System.Runtime.InteropServices.MemoryMarshal.Cast<ulong, Vector<ulong>>(a);
        Vector<ulong> s0 = default, s1 = default, s2 = default, s3 = default;
        int i = 0;
        for (; i + 4 <= v.Length; i += 4)
        {
            s0 += v[i];
            s1 += v[i + 1];
            s2 += v[i + 2];
            s3 += v[i + 3];
        }
        for (; i < v.Length; i++) s0 += v[i];
        ulong total = Vector.Sum(s0 + s1 + s2 + s3);
        for (int j = v.Length * Vector<ulong>.Count; j < a.Length; j++) total += a[j];
        return total;
    }

    /// <summary>Device-to-device copy of 512 MiB through LlmBuffer.CopyFrom; bytes read plus written; best of the repetitions.</summary>
    private static Bandwidth DeviceCopy(LlmContext ctx, bool quick)
    {
        const long Bytes = 512L << 20;
        using var a = LlmBuffer.Allocate(ctx, DType.U8, Bytes);
        using var b = LlmBuffer.Allocate(ctx, DType.U8, Bytes);
        a.Fill((byte)1);
        b.CopyFrom(a);
        ctx.Synchronize();
        double best = 0;
        for (int rep = 0; rep < (quick ? 3 : 10); rep++)
        {
            var sw = Stopwatch.StartNew();
            b.CopyFrom(a);
            ctx.Synchronize();
            best = Math.Max(best, 2.0 * Bytes / sw.Elapsed.TotalSeconds);
        }
        return new Bandwidth("device copy: 512 MiB buffer to buffer, bytes read + written", best);
    }

    // ---- GEMM ---------------------------------------------------------------------------------------------------

    /// <summary>
    /// One GEMM shape: rotating copies of an INT4 weight (GPTQ import of codes q(k, n) and fp16 scales s(g, n) that are
    /// functions of their indices) and of the same matrix dequantized to f16 for the dense baseline.
    /// </summary>
    private sealed class GemmData : IDisposable
    {
        private readonly LlmContext _ctx;
        private readonly int _k, _n;
        private readonly List<Int4Weight> _int4 = new();
        private readonly List<LlmBuffer> _dense = new();
        private readonly ushort[] _scales;
        private const ulong Seed = 20240601;

        public GemmData(LlmContext ctx, int k, int n, long target)
        {
            _ctx = ctx;
            _k = k;
            _n = n;
            int groups = (k + GroupSize - 1) / GroupSize;
            _scales = Enumerable.Range(0, groups * n)
                .Select(i => BitConverter.HalfToUInt16Bits((Half)(0.001 + 0.004 * (Data.Uniform(Seed + 1, i) + 1)))).ToArray();
            int[] qweight = Packing.GptqQWeight(Code, k, n);
            var t = new GptqTensors(k, n, GroupSize, symmetric: true, GptqFormat.V2, qweight, ReadOnlyMemory<int>.Empty, _scales);
            try
            {
                _int4.Add(Int4Weight.ImportGptq(ctx, t));
                int copies = Copies(_int4[0].SizeInBytes, target);
                while (_int4.Count < copies) _int4.Add(Int4Weight.ImportGptq(ctx, t));

                long denseBytes = (long)k * n * 2;
                int denseCopies = Copies(denseBytes, target);
                var row = new Half[n];
                for (int c = 0; c < denseCopies; c++)
                {
                    LlmBuffer b = LlmBuffer.Allocate(ctx, DType.F16, (long)k * n);
                    _dense.Add(b);
                    for (int r = 0; r < k; r++)
                    {
                        for (int col = 0; col < n; col++) row[col] = (Half)Weight(r, col);
                        b.Upload<Half>(row, (long)r * n);
                    }
                }
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        private int Code(int k, int n) => Data.Nibble(Seed, (long)k * _n + n);

        /// <summary>dequant(W)[k][n] = (q − 8) · scale, exactly as the kernel sees it (f32 product of exact values).</summary>
        private float Weight(int k, int n) => (Code(k, n) - 8) * (float)BitConverter.UInt16BitsToHalf(_scales[k / GroupSize * _n + n]);

        public List<Row> Run(int m, bool quick)
        {
            string shape = $"m={m} {_k}x{_n}";
            float[] x = Data.Array(m * _k, i => (float)(Half)Data.Activation(Seed + 7, i));
            using LlmBuffer xb = Numeric.Buffer(_ctx, DType.F16, x);
            using LlmBuffer yb = LlmBuffer.Allocate(_ctx, DType.F16, (long)m * _n);
            double io = 2.0 * m * (_k + _n);
            var rows = new List<Row>();

            double td = Time(_ctx, _dense.Count, i => Gemm.Dense(xb, _dense[i], yb, m, _k, _n), quick);
            Numeric.Poison(yb);
            Gemm.Dense(xb, _dense[0], yb, m, _k, _n);
            rows.Add(new Row("dense gemm f16", shape, "ok", td, 2.0 * _k * _n + io, MaxError(x, m, Numeric.Download(yb), dense: true), "")
                { Baseline = "dense:" + shape });

            double ti = Time(_ctx, _int4.Count, i => Gemm.Int4(xb, _int4[i], yb, m), quick);
            Numeric.Poison(yb);
            Gemm.Int4(xb, _int4[0], yb, m);
            rows.Add(new Row("int4 gemm g128", shape, "ok", ti, _int4[0].SizeInBytes + io, MaxError(x, m, Numeric.Download(yb), dense: false), "")
                { Baseline = "dense:" + shape });
            return rows;
        }

        /// <summary>Largest |y − y_ref| over 64 spread columns (all rows), y_ref in float64.</summary>
        private double MaxError(float[] x, int m, float[] y, bool dense)
        {
            double worst = 0;
            int cols = Math.Min(64, _n);
            for (int c = 0; c < cols; c++)
            {
                int col = (int)((long)c * _n / cols);
                for (int r = 0; r < m; r++)
                {
                    double acc = 0;
                    for (int i = 0; i < _k; i++)
                    {
                        float w = Weight(i, col);
                        acc += (double)x[r * _k + i] * (dense ? (float)(Half)w : w);
                    }
                    double e = Math.Abs(y[r * _n + col] - acc);
                    worst = Math.Max(worst, double.IsNaN(e) ? double.PositiveInfinity : e);
                }
            }
            return worst;
        }

        public void Dispose()
        {
            foreach (Int4Weight w in _int4) w.Dispose();
            foreach (LlmBuffer b in _dense) b.Dispose();
            _int4.Clear();
            _dense.Clear();
        }
    }

    // ---- decode attention ---------------------------------------------------------------------------------------

    private static Row Attention(LlmContext ctx, int context, KvFormat format, long target, bool quick, bool int8Query)
    {
        string shape = $"ctx {context}, heads {QHeads}/{KvHeads}x{HeadDim}, batch 1";
        string kernel = $"decode attention kv {format.ToString().ToLowerInvariant()}" + (int8Query ? " q8" : "");
        var options = new KvCacheOptions
        {
            NumLayers = 1, NumKvHeads = KvHeads, HeadDim = HeadDim, BlockSize = 16, KFormat = format, VFormat = format,
            ValueGroupSize = format is KvFormat.Int4 or KvFormat.Int2 ? 32 : 0, MaxBatch = 1, CapacityTokens = 1,
        };
        try
        {
            long perToken = KvCache.BytesPerToken(options);
            long kvBytes = (long)context * perToken;
            int copies = Copies(kvBytes, target);
            // One live sequence per rotation copy: MaxBatch also bounds the live sequences of a KIVI cache
            // (one f16 residual slot each), so it is sized for all copies, not for the batch of one call.
            using KvCache cache = KvCache.Create(ctx, options with { CapacityTokens = (long)copies * (context + 16), MaxBatch = copies });
            long[] ids = Enumerable.Range(0, copies).Select(_ => cache.AddSequence()).ToArray();
            const int Chunk = 512;
            int chunkElems = Chunk * KvHeads * HeadDim;
            using var kb = LlmBuffer.Allocate(ctx, DType.F16, chunkElems);
            using var vb = LlmBuffer.Allocate(ctx, DType.F16, chunkElems);
            var kh = new Half[chunkElems];
            var vh = new Half[chunkElems];
            for (int t0 = 0; t0 < context; t0 += Chunk)
            {
                int n = Math.Min(Chunk, context - t0);
                long off = (long)t0 * KvHeads * HeadDim;
                for (int i = 0; i < n * KvHeads * HeadDim; i++)
                {
                    kh[i] = (Half)(1.5f * Data.Activation(31, off + i));
                    vh[i] = (Half)(1.5f * Data.Uniform(32, off + i));
                }
                kb.Upload<Half>(kh.AsSpan(0, n * KvHeads * HeadDim));
                vb.Upload<Half>(vh.AsSpan(0, n * KvHeads * HeadDim));
                foreach (long id in ids) cache.Append(id, 0, kb, vb, n); // same contents, different memory
            }

            var ao = new AttentionOptions { Layer = 0, NumQHeads = QHeads, Int8Query = int8Query };
            float[] q = Data.Array(QHeads * HeadDim, i => (float)(Half)Data.Uniform(33, i));
            using LlmBuffer qb = Numeric.Buffer(ctx, DType.F16, q);
            using LlmBuffer ob = LlmBuffer.Allocate(ctx, DType.F16, q.Length);
            var one = new long[1];
            double t = Time(ctx, copies, i =>
            {
                one[0] = ids[i];
                cache.DecodeAttention(one, qb, ob, ao);
            }, quick);

            Numeric.Poison(ob);
            cache.DecodeAttention(new[] { ids[0] }, qb, ob, ao);
            float[] got = Numeric.Download(ob);
            var (reference, _) = AttentionReference.Compute(cache, new[] { ids[0] }, q, ao, DType.F16, false, false);
            double maxErr = 0;
            for (int i = 0; i < reference.Length; i++)
            {
                double e = Math.Abs(got[i] - reference[i]);
                maxErr = Math.Max(maxErr, double.IsNaN(e) ? double.PositiveInfinity : e);
            }
            return new Row(kernel, shape, "ok", t, kvBytes + 4.0 * q.Length, maxErr, "") { Baseline = "attention:" + context };
        }
        catch (LlmNativeException e) when (e.Status == LlmNativeStatus.Unsupported)
        {
            return new Row(kernel, shape, "unsupported", double.NaN, double.NaN, double.NaN, e.NativeMessage);
        }
        catch (Exception e) when (e is LlmNativeException or ArgumentException or InvalidOperationException)
        {
            return new Row(kernel, shape, "error", double.NaN, double.NaN, double.NaN, $"{e.GetType().Name}: {e.Message}");
        }
    }

    // ---- output -------------------------------------------------------------------------------------------------

    /// <summary>Speedup of every row over the first (baseline) row of its group: dense f16 for GEMMs, f16 KV for attention.</summary>
    private static void Speedups(List<Row> rows)
    {
        foreach (var group in rows.Where(r => r.Baseline.Length > 0).GroupBy(r => r.Baseline))
        {
            Row baseline = group.First();
            foreach (Row r in group)
                if (r.Status == "ok" && baseline.Status == "ok") r.Speedup = baseline.Seconds / r.Seconds;
        }
    }

    private static void WriteTable(TextWriter o, string device, Bandwidth bw, List<Row> rows)
    {
        o.WriteLine($"llmnative bench on {device}");
        o.WriteLine($"bandwidth: {Numeric.Rate(bw.BytesPerSecond)} ({bw.Method})");
        o.WriteLine();
        o.WriteLine($"{"kernel",-28} {"shape",-36} {"time",-11} {"bytes/s",-11} {"% of bw",-8} {"speedup",-8} max error");
        foreach (Row r in rows)
        {
            if (r.Status != "ok")
            {
                o.WriteLine($"{r.Kernel,-28} {r.Shape,-36} {r.Status}");
                continue;
            }
            string pct = $"{100 * r.BytesPerSecond / bw.BytesPerSecond:0.0}%";
            string speed = double.IsNaN(r.Speedup) ? "-" : $"{r.Speedup:0.00}x";
            o.WriteLine($"{r.Kernel,-28} {r.Shape,-36} {Numeric.Seconds(r.Seconds),-11} {Numeric.Rate(r.BytesPerSecond),-11} {pct,-8} {speed,-8} {Numeric.Sci(r.MaxError)}");
        }
        o.WriteLine();
        o.WriteLine("bytes/s counts the weights (GEMM) or K+V of the layer (attention) plus activations once per call;");
        o.WriteLine("speedup is over the dense f16 GEMM of the same shape, or the f16 KV cache of the same context.");
        foreach (Row r in rows.Where(r => r.Status == "error")) o.WriteLine($"error: {r.Kernel} {r.Shape}: {r.Detail}");
    }

    private static void WriteJson(TextWriter o, string device, Bandwidth bw, List<Row> rows)
    {
        using var stream = new MemoryStream();
        using (var j = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            j.WriteStartObject();
            j.WriteString("device", device);
            j.WriteStartObject("bandwidth");
            j.WriteString("method", bw.Method);
            VerifyVerb.Number(j, "bytesPerSecond", bw.BytesPerSecond);
            j.WriteEndObject();
            j.WriteStartArray("results");
            foreach (Row r in rows)
            {
                j.WriteStartObject();
                j.WriteString("kernel", r.Kernel);
                j.WriteString("shape", r.Shape);
                j.WriteString("status", r.Status);
                if (r.Status == "ok")
                {
                    VerifyVerb.Number(j, "seconds", r.Seconds);
                    VerifyVerb.Number(j, "bytes", r.Bytes);
                    VerifyVerb.Number(j, "bytesPerSecond", r.BytesPerSecond);
                    VerifyVerb.Number(j, "fractionOfBandwidth", r.BytesPerSecond / bw.BytesPerSecond);
                    VerifyVerb.Number(j, "speedup", r.Speedup);
                    VerifyVerb.Number(j, "maxError", r.MaxError);
                }
                if (r.Detail.Length > 0) j.WriteString("detail", r.Detail);
                j.WriteEndObject();
            }
            j.WriteEndArray();
            j.WriteEndObject();
        }
        o.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }
}
