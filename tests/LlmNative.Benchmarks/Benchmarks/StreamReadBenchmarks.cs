// The roofline for decode kernels: how fast all threads (LlmNative's pool size) can read memory. Each
// thread sums its contiguous share of a 1 GiB array with 4 independent AVX2 (or Vector<T>) accumulators;
// nothing is written, so the number is the streaming-read bandwidth a weight- or KV-streaming kernel
// can at best reach. It runs twice, first (StreamRead) and last (StreamReadLast) in the run, because the
// machine is shared: the report takes the higher of the two as the roofline (the conservative choice for
// "% of stream").
using System;
using System.Runtime.Intrinsics;
using System.Threading;
using BenchmarkDotNet.Attributes;
using LlmNative.Benchmarks.Data;

namespace LlmNative.Benchmarks.Benchmarks;

public class StreamRead
{
    public const long Bytes = 1L << 30;

    private NativeArray? _data;
    private ulong[] _sums = Array.Empty<ulong>();
    private Thread[] _threads = Array.Empty<Thread>();
    private Barrier? _start, _done;
    private volatile bool _stop;

    [GlobalSetup]
    public unsafe void Setup()
    {
        DataCache.Clear();
        _data = new NativeArray(Bytes);
        ulong* p = (ulong*)_data.Pointer;
        for (long i = 0; i < Bytes / 8; ++i) p[i] = (ulong)i;
        int threads = BenchSettings.Threads;
        _sums = new ulong[threads * 8];
        // Dedicated threads released by a barrier: no thread-pool scheduling inside the measurement; the
        // calling thread takes share 0.
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

    /// <summary>All threads sum 1 GiB once.</summary>
    [Benchmark]
    public ulong SumAllThreads()
    {
        _start!.SignalAndWait();
        _sums[0] = SumShare(0);
        _done!.SignalAndWait();
        ulong total = 0;
        for (int t = 0; t < BenchSettings.Threads; ++t) total += _sums[t * 8];
        return total;
    }

    private unsafe ulong SumShare(int t)
    {
        int threads = BenchSettings.Threads;
        long vecs = Bytes / 32;
        long b = vecs * t / threads, e = vecs * (t + 1) / threads;
        var p = (Vector256<ulong>*)_data!.Pointer;
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

    [GlobalCleanup]
    public void Cleanup()
    {
        _stop = true;
        if (_threads.Length > 0) _start!.SignalAndWait();
        foreach (Thread t in _threads) t.Join();
        _start?.Dispose();
        _done?.Dispose();
        _data?.Dispose();
        _data = null;
    }
}

/// <summary>The same measurement, run after every other benchmark (Program lists it last).</summary>
public class StreamReadLast : StreamRead
{
}
