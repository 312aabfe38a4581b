using System;
using System.Linq;
using System.Runtime.CompilerServices;
using System.Threading;
using System.Threading.Tasks;
using Xunit;

namespace LlmNative.Tests;

public class LifetimeTests
{
    [Fact]
    public void Buffer_outlives_a_disposed_context()
    {
        long baseline = TestSetup.SettledLiveObjectCount();
        var ctx = LlmContext.Create(Backend.Cpu);
        var a = LlmBuffer.Allocate(ctx, DType.F32, 16);
        var b = LlmBuffer.Allocate(ctx, DType.F32, 16);
        Assert.Equal(baseline + 3, LlmNativeRuntime.LiveObjectCount);

        ctx.Dispose();
        Assert.True(ctx.IsDisposed);
        // The native context lives on for the buffers: they still work, with each other too.
        a.Upload<float>(Enumerable.Range(0, 16).Select(i => (float)i).ToArray());
        b.CopyFrom(a);
        Assert.Equal(a.ToArray<float>(), b.ToArray<float>());
        Assert.Equal(baseline + 3, LlmNativeRuntime.LiveObjectCount);

        a.Dispose();
        Assert.Equal(baseline + 2, LlmNativeRuntime.LiveObjectCount);
        b.Dispose();
        Assert.Equal(baseline, LlmNativeRuntime.LiveObjectCount); // the last buffer took the context with it
    }

    [Fact]
    public void Disposed_objects_throw_ObjectDisposedException()
    {
        var ctx = LlmContext.Create(Backend.Cpu);
        var buf = LlmBuffer.Allocate(ctx, DType.I32, 4);
        var other = LlmBuffer.Allocate(ctx, DType.I32, 4);
        buf.Dispose();
        Assert.True(buf.IsDisposed);

        var e = Assert.Throws<ObjectDisposedException>(() => buf.Upload<int>(new int[4]));
        Assert.Equal(nameof(LlmBuffer), e.ObjectName);
        Assert.Throws<ObjectDisposedException>(() => buf.Download<int>(new int[4]));
        Assert.Throws<ObjectDisposedException>(() => buf.Fill(1));
        Assert.Throws<ObjectDisposedException>(() => buf.ToArray<int>());
        Assert.Throws<ObjectDisposedException>(() => buf.DangerousGetDataPointer());
        Assert.Throws<ObjectDisposedException>(() => buf.CopyFrom(other));
        // A disposed argument names the parameter.
        e = Assert.Throws<ObjectDisposedException>(() => other.CopyFrom(buf));
        Assert.Contains("'source'", e.Message);

        ctx.Dispose();
        Assert.Throws<ObjectDisposedException>(() => ctx.Synchronize());
        e = Assert.Throws<ObjectDisposedException>(() => LlmBuffer.Allocate(ctx, DType.F32, 1));
        Assert.Equal(nameof(LlmContext), e.ObjectName);
        Assert.Contains("'context'", e.Message);
        Assert.Throws<ObjectDisposedException>(() => LlmBuffer.Wrap(ctx, new float[1].AsMemory()));

        // Idempotent dispose, in any order.
        ctx.Dispose();
        buf.Dispose();
        other.Dispose();
        other.Dispose();
        Assert.Contains("disposed", ctx.ToString());
    }

    [Fact]
    public void Wrapped_memory_is_unpinned_when_the_buffer_goes()
    {
        long baseline = TestSetup.SettledLiveObjectCount();
        using var ctx = LlmContext.Create(Backend.Cpu);
        var owner = new TrackingMemoryManager(8);
        var buf = LlmBuffer.Wrap(ctx, owner.Memory);
        Assert.Equal(1, owner.PinCount);
        buf.Upload<float>(new[] { 7f });
        Assert.Equal(7f, owner.Array[0]);
        buf.Dispose();
        Assert.Equal(0, owner.PinCount);
        Assert.Equal(baseline + 1, LlmNativeRuntime.LiveObjectCount);
    }

    [Fact]
    public void Forgotten_objects_are_released_by_the_finalizer_with_their_logger_registration()
    {
        long baseline = TestSetup.SettledLiveObjectCount();
        int registered = NativeLog.RegisteredContextCount;
        CreateAndForget();
        Assert.Equal(registered + 1, NativeLog.RegisteredContextCount);
        Assert.Equal(baseline, TestSetup.SettledLiveObjectCount());
        Assert.Equal(registered, NativeLog.RegisteredContextCount);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void CreateAndForget()
    {
        var ctx = LlmContext.Create(Backend.Cpu, 0, new TestLogger(Microsoft.Extensions.Logging.LogLevel.Error));
        LlmBuffer.Allocate(ctx, DType.F32, 64).Upload<float>(new float[64]);
    }

    [Fact]
    public void Hundred_thousand_create_dispose_cycles_leak_nothing()
    {
        long baseline = TestSetup.SettledLiveObjectCount();
        int registered = NativeLog.RegisteredContextCount;
        var logger = new TestLogger(Microsoft.Extensions.Logging.LogLevel.Warning);
        for (int i = 0; i < 100_000; i++)
        {
            var ctx = (i % 10 == 0) ? LlmContext.Create(Backend.Cpu, 0, logger) : LlmContext.Create(Backend.Cpu);
            var buf = LlmBuffer.Allocate(ctx, (DType)(i % 6), 1 + i % 97, (MemoryKind)(i % 2));
            if (i % 2 == 0)
            {
                ctx.Dispose(); // parent first
                buf.Dispose();
            }
            else
            {
                buf.Dispose();
                ctx.Dispose();
            }
        }
        Assert.Equal(baseline, LlmNativeRuntime.LiveObjectCount);
        Assert.Equal(registered, NativeLog.RegisteredContextCount);
        Assert.Empty(logger.Entries);
    }

    [Fact]
    public async Task Eight_threads_with_their_own_contexts_get_identical_results()
    {
        const int Threads = 8, N = 4099;
        long baseline = TestSetup.SettledLiveObjectCount();
        float[] input = Enumerable.Range(0, N).Select(i => MathF.Sin(i) * 1000f).ToArray();
        var results = new float[Threads][];
        using var start = new Barrier(Threads);
        Task[] tasks = Enumerable.Range(0, Threads).Select(t => Task.Factory.StartNew(() =>
        {
            start.SignalAndWait();
            for (int round = 0; round < 50; round++)
            {
                using var ctx = LlmContext.Create(Backend.Cpu);
                using var a = LlmBuffer.Allocate(ctx, DType.F32, N);
                using var b = LlmBuffer.Allocate(ctx, DType.F32, N + 1);
                a.Upload<float>(input);
                b.Fill(-1f);
                b.CopyFrom(a, sourceOffset: 1, destinationOffset: 0);
                b.Fill(3.25f, offset: N - 1, count: 2);
                ctx.Synchronize();
                results[t] = b.ToArray<float>();
            }
        }, TaskCreationOptions.LongRunning)).ToArray();
        await Task.WhenAll(tasks);

        float[] expected = input.Skip(1).Concat(new[] { 3.25f, 3.25f }).ToArray();
        for (int t = 0; t < Threads; t++) Assert.Equal(expected, results[t]);
        Assert.Equal(baseline, LlmNativeRuntime.LiveObjectCount);
    }

    /// <summary>A MemoryManager that counts pins, to see that Wrap pins exactly for the buffer's lifetime.</summary>
    private sealed class TrackingMemoryManager : System.Buffers.MemoryManager<float>
    {
        private System.Runtime.InteropServices.GCHandle _gc;

        public TrackingMemoryManager(int n) => Array = new float[n];

        public float[] Array { get; }

        public int PinCount { get; private set; }

        public override Span<float> GetSpan() => Array;

        public override unsafe System.Buffers.MemoryHandle Pin(int elementIndex = 0)
        {
            if (PinCount++ == 0) _gc = System.Runtime.InteropServices.GCHandle.Alloc(Array, System.Runtime.InteropServices.GCHandleType.Pinned);
            return new System.Buffers.MemoryHandle((float*)_gc.AddrOfPinnedObject() + elementIndex, default, this);
        }

        public override void Unpin()
        {
            if (--PinCount == 0) _gc.Free();
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
