using System;
using System.Linq;
using Xunit;

namespace LlmNative.Tests;

public class BufferTests
{
    private static T[] RandomArray<T>(Random r, int n, Func<Random, T> next) => Enumerable.Range(0, n).Select(_ => next(r)).ToArray();

    /// <summary>Upload, full and partial download, offset writes, fill and copy for one dtype and element type.</summary>
    private static void RoundTrip<T>(DType dtype, Func<Random, T> next, MemoryKind memory) where T : unmanaged, IEquatable<T>
    {
        Random r = TestSetup.Random(out int seed);
        string why = $"dtype {dtype}, {typeof(T).Name}, {memory}, seed {seed}";
        using var ctx = LlmContext.Create(Backend.Cpu);
        foreach (int n in new[] { 1, 7, 1023 })
        {
            T[] data = RandomArray(r, n, next);
            using var buf = LlmBuffer.Allocate(ctx, dtype, n, memory);
            Assert.Equal(dtype, buf.DType);
            Assert.Equal(n, buf.Count);
            Assert.Equal(memory, buf.Memory);
            Assert.Equal((long)n * dtype.SizeInBytes(), buf.SizeInBytes);

            buf.Upload<T>(data);
            Assert.True(data.SequenceEqual(buf.ToArray<T>()), why);

            // A destination shorter than the buffer reads only that many elements, from the offset.
            if (n > 2)
            {
                var part = new T[n - 2];
                buf.Download<T>(part, offset: 1);
                Assert.True(data.Skip(1).Take(n - 2).SequenceEqual(part), why);

                T[] patch = RandomArray(r, 2, next);
                buf.Upload<T>(patch, offset: n - 2);
                T[] expected = data.Take(n - 2).Concat(patch).ToArray();
                Assert.True(expected.SequenceEqual(buf.ToArray<T>()), why);
                data = expected;
            }

            T value = next(r);
            buf.Fill(value, offset: n / 2);
            T[] filled = data.Take(n / 2).Concat(Enumerable.Repeat(value, n - n / 2)).ToArray();
            Assert.True(filled.SequenceEqual(buf.ToArray<T>()), why);

            using var ctx2 = LlmContext.Create(Backend.Cpu);
            using var copy = LlmBuffer.Allocate(ctx2, dtype, n + 3);
            copy.Fill(default(T));
            copy.CopyFrom(buf, destinationOffset: 3);
            T[] copied = copy.ToArray<T>();
            Assert.True(Enumerable.Repeat(default(T), 3).Concat(filled).SequenceEqual(copied), why);
        }
    }

    [Theory]
    [InlineData(MemoryKind.Device)]
    [InlineData(MemoryKind.Host)]
    public void F32_round_trips(MemoryKind memory) => RoundTrip(DType.F32, r => (float)(r.NextDouble() * 200 - 100), memory);

    [Theory]
    [InlineData(MemoryKind.Device)]
    [InlineData(MemoryKind.Host)]
    public void F16_round_trips_as_Half(MemoryKind memory) => RoundTrip(DType.F16, r => (Half)(r.NextDouble() * 8 - 4), memory);

    [Fact]
    public void F16_round_trips_as_ushort_bits() => RoundTrip(DType.F16, r => (ushort)r.Next(0, 0x7c00), MemoryKind.Device);

    [Fact]
    public void BF16_round_trips_as_ushort_bits() => RoundTrip(DType.BF16, r => (ushort)r.Next(0, 65536), MemoryKind.Device);

    [Fact]
    public void I8_round_trips() => RoundTrip(DType.I8, r => (sbyte)r.Next(-128, 128), MemoryKind.Device);

    [Fact]
    public void I8_round_trips_as_bytes() => RoundTrip(DType.I8, r => (byte)r.Next(0, 256), MemoryKind.Device);

    [Fact]
    public void U8_round_trips() => RoundTrip(DType.U8, r => (byte)r.Next(0, 256), MemoryKind.Device);

    [Fact]
    public void I32_round_trips() => RoundTrip(DType.I32, r => r.Next(int.MinValue, int.MaxValue), MemoryKind.Device);

    [Fact]
    public void Element_sizes_match_the_native_library()
    {
        foreach (DType d in Enum.GetValues<DType>())
        {
            unsafe
            {
                int bytes;
                Native.Check(Interop.NativeMethods.llmn_dtype_size((int)d, &bytes));
                Assert.Equal(bytes, d.SizeInBytes());
            }
        }
    }

    [Fact]
    public void Wrap_shares_memory_with_the_caller_without_copying()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        float[] backing = new float[16];
        Memory<float> window = backing.AsMemory(4, 8);
        using (var buf = LlmBuffer.Wrap(ctx, window))
        {
            Assert.True(buf.IsWrapped);
            Assert.Equal(DType.F32, buf.DType);
            Assert.Equal(8, buf.Count);

            buf.Upload<float>(new[] { 1f, 2f, 3f });
            Assert.Equal(new[] { 0f, 0f, 0f, 0f, 1f, 2f, 3f, 0f }, backing.Take(8));

            backing[11] = 42f; // element 7 of the window
            Assert.Equal(42f, buf.ToArray<float>()[7]);

            unsafe
            {
                fixed (float* p = &backing[4])
                    Assert.Equal((IntPtr)p, buf.DangerousGetDataPointer());
            }
            buf.Fill(5f, offset: 6, count: 1);
            Assert.Equal(5f, backing[10]);
        }
        Assert.Equal(0f, backing[15]); // nothing beyond the window was touched
    }

    [Fact]
    public void Wrap_infers_the_dtype_or_takes_it_explicitly()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using (var b = LlmBuffer.Wrap(ctx, new int[3].AsMemory())) Assert.Equal(DType.I32, b.DType);
        using (var b = LlmBuffer.Wrap(ctx, new sbyte[3].AsMemory())) Assert.Equal(DType.I8, b.DType);
        using (var b = LlmBuffer.Wrap(ctx, new byte[3].AsMemory())) Assert.Equal(DType.U8, b.DType);
        using (var b = LlmBuffer.Wrap(ctx, new Half[3].AsMemory())) Assert.Equal(DType.F16, b.DType);
        using (var b = LlmBuffer.Wrap(ctx, new ushort[3].AsMemory(), DType.BF16)) Assert.Equal(DType.BF16, b.DType);
        var e = Assert.Throws<ArgumentException>(() => LlmBuffer.Wrap(ctx, new ushort[3].AsMemory()));
        Assert.Equal("memory", e.ParamName);
        Assert.Contains("BF16", e.Message);
    }

    [Fact]
    public void Copy_within_one_buffer_handles_overlap()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var buf = LlmBuffer.Allocate(ctx, DType.I32, 10);
        buf.Upload<int>(Enumerable.Range(0, 10).ToArray());
        buf.CopyFrom(buf, sourceOffset: 0, destinationOffset: 2, count: 6);
        Assert.Equal(new[] { 0, 1, 0, 1, 2, 3, 4, 5, 8, 9 }, buf.ToArray<int>());
    }

    [Fact]
    public void Copy_between_cpu_contexts_works()
    {
        // Cross-device copies are refused (see CrossDevice_copy_is_refused, which needs CUDA); two CPU
        // contexts share the host "device", so copying between them is allowed and exact.
        using var a = LlmContext.Create(Backend.Cpu);
        using var b = LlmContext.Create(Backend.Cpu);
        using var src = LlmBuffer.Allocate(a, DType.F32, 5);
        using var dst = LlmBuffer.Allocate(b, DType.F32, 5);
        src.Upload<float>(new[] { 1f, -2f, 3.5f, float.MaxValue, float.Epsilon });
        dst.CopyFrom(src);
        Assert.Equal(src.ToArray<float>(), dst.ToArray<float>());
    }

    [CudaFact]
    public void CrossDevice_copy_is_refused()
    {
        using var cpu = LlmContext.Create(Backend.Cpu);
        using var gpu = LlmContext.Create(Backend.Cuda);
        using var host = LlmBuffer.Allocate(cpu, DType.F32, 4);
        using var dev = LlmBuffer.Allocate(gpu, DType.F32, 4);
        var e = Assert.Throws<ArgumentException>(() => dev.CopyFrom(host));
        Assert.Equal("source", e.ParamName);
        Assert.Contains("Cpu device 0", e.Message);
    }

    [CudaFact]
    public void Cuda_buffers_round_trip()
    {
        using var gpu = LlmContext.Create(Backend.Cuda);
        Assert.Equal(Backend.Cuda, gpu.Backend);
        float[] data = Enumerable.Range(0, 1000).Select(i => i * 0.5f).ToArray();
        using var dev = LlmBuffer.Allocate(gpu, DType.F32, data.Length);
        using var dev2 = LlmBuffer.Allocate(gpu, DType.F32, data.Length);
        dev.Upload<float>(data);
        dev2.CopyFrom(dev);
        gpu.Synchronize();
        Assert.Equal(data, dev2.ToArray<float>());
        dev.Fill(2f);
        Assert.All(dev.ToArray<float>(), v => Assert.Equal(2f, v));
    }
}
