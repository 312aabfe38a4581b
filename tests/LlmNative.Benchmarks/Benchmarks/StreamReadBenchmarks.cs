// The roofline for decode kernels: how fast all threads (LlmNative's pool size) can read memory. Each
// thread sums its contiguous share of a 1 GiB array with 4 independent AVX2 (or Vector<T>) accumulators;
// nothing is written, so the number is the streaming-read bandwidth a weight- or KV-streaming kernel
// can at best reach. It runs twice, first (StreamRead) and last (StreamReadLast) in the run, because the
// machine is shared: the report takes the higher of the two as the roofline (the conservative choice for
// "% of stream").
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Threading;
using BenchmarkDotNet.Attributes;
using LlmNative.Benchmarks.Data;

namespace LlmNative.Benchmarks.Benchmarks;

public class StreamRead
{
    public const long Bytes = 1L << 30;

    private ParallelReader? _reader;

    [GlobalSetup]
    public void Setup()
    {
        DataCache.Clear();
        _reader = new ParallelReader(Bytes);
    }

    /// <summary>All threads sum 1 GiB once.</summary>
    [Benchmark]
    public ulong SumAllThreads() => _reader!.SumAll();

    [GlobalCleanup]
    public void Cleanup()
    {
        _reader?.Dispose();
        _reader = null;
    }
}

/// <summary>
/// All pool-size threads summing their contiguous shares of one array (the measurement of <see cref="StreamRead"/>).
/// Dedicated threads released by a barrier: no thread-pool scheduling inside the measurement; the calling thread
/// takes share 0.
/// </summary>
internal sealed class ParallelReader : IDisposable
{
    private readonly NativeArray _data;
    private readonly long _bytes;
    private readonly ulong[] _sums;
    private readonly Thread[] _threads;
    private readonly Barrier _start, _done;
    private volatile bool _stop;

    public unsafe ParallelReader(long bytes)
    {
        _bytes = bytes;
        _data = new NativeArray(bytes);
        ulong* p = (ulong*)_data.Pointer;
        for (long i = 0; i < bytes / 8; ++i) p[i] = (ulong)i;
        int threads = BenchSettings.Threads;
        _sums = new ulong[threads * 8];
        _start = new Barrier(threads);
        _done = new Barrier(threads);
        _threads = new Thread[threads - 1];
        for (int t = 1; t < threads; ++t)
        {
            int id = t;
            _threads[t - 1] = new Thread(() =>
            {
                while (true)
                {
                    _start.SignalAndWait();
                    if (_stop) return;
                    _sums[id * 8] = SumShare(id);
                    _done.SignalAndWait();
                }
            }) { IsBackground = true, Name = $"stream-read-{t}" };
            _threads[t - 1].Start();
        }
    }

    public long Bytes => _bytes;

    public ulong SumAll()
    {
        _start.SignalAndWait();
        _sums[0] = SumShare(0);
        _done.SignalAndWait();
        ulong total = 0;
        for (int t = 0; t < BenchSettings.Threads; ++t) total += _sums[t * 8];
        return total;
    }

    private unsafe ulong SumShare(int t)
    {
        int threads = BenchSettings.Threads;
        long vecs = _bytes / 32;
        long b = vecs * t / threads, e = vecs * (t + 1) / threads;
        var p = (Vector256<ulong>*)_data.Pointer;
        Vector256<ulong> s0 = default, s1 = default, s2 = default, s3 = default;
        long i = b;
        for (; i + 4 <= e; i += 4)
        {
            s0 += p[i];
            s1 += p[i + 1];
            s2 += p[i + 2];
            s3 += p[i + 3];
        }
        for (; i < e; ++i) s0 += p[i];
        return Vector256.Sum(s0 + s1 + s2 + s3);
    }

    public void Dispose()
    {
        _stop = true;
        if (_threads.Length > 0) _start.SignalAndWait();
        foreach (Thread t in _threads) t.Join();
        _start.Dispose();
        _done.Dispose();
        _data.Dispose();
    }
}

/// <summary>
/// The streaming read measured next to a case: LlmNative's attention and M=1 INT4 cases take a sample (best of
/// three passes over 512 MiB, ~30 ms) right after their setup and again in their cleanup, so "% of adjacent
/// read" compares a case with the memory bandwidth of its own minutes on a shared machine (the native harness
/// pairs every round with a read the same way). The run-wide roofline (<see cref="StreamRead"/>) stays the
/// conservative reference.
/// </summary>
internal static class AdjacentStream
{
    private static ParallelReader? s_reader;
    private static readonly Dictionary<string, double> s_best = new();

    public static void Sample(string key)
    {
        s_reader ??= new ParallelReader(512L << 20);
        double best = 0.0;
        for (int i = 0; i < 3; ++i)
        {
            long t0 = Stopwatch.GetTimestamp();
            GC.KeepAlive(s_reader.SumAll());
            double secs = (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
            best = Math.Max(best, s_reader.Bytes / secs / 1e9);
        }
        s_best[key] = s_best.TryGetValue(key, out double prev) ? Math.Max(prev, best) : best;
    }

    /// <summary>GB/s of the best sample taken for <paramref name="key"/>, or null.</summary>
    public static double? Get(string key) => s_best.TryGetValue(key, out double v) ? v : null;
}

/// <summary>The same measurement, run after every other benchmark (Program lists it last).</summary>
public class StreamReadLast : StreamRead
{
}
