using System;
using LlmNative.Interop;
using Xunit;

namespace LlmNative.Tests;

/// <summary>Bad arguments are reported by C# with the parameter's name and the value; native refusals through the one gate.</summary>
public class ValidationTests
{
    [Fact]
    public void Null_context_names_the_parameter()
    {
        var e = Assert.Throws<ArgumentNullException>(() => LlmBuffer.Allocate(null!, DType.F32, 4));
        Assert.Equal("context", e.ParamName);
        e = Assert.Throws<ArgumentNullException>(() => LlmBuffer.Wrap(null!, new float[2].AsMemory()));
        Assert.Equal("context", e.ParamName);
    }

    [Theory]
    [InlineData(0L)]
    [InlineData(-1L)]
    [InlineData(long.MinValue)]
    public void Count_below_one_is_out_of_range(long count)
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmBuffer.Allocate(ctx, DType.F32, count));
        Assert.Equal("count", e.ParamName);
        Assert.Contains(count.ToString(), e.Message);
    }

    [Fact]
    public void Count_whose_byte_size_overflows_is_out_of_range()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmBuffer.Allocate(ctx, DType.F32, long.MaxValue / 2));
        Assert.Equal("count", e.ParamName);
        Assert.Contains("overflows", e.Message);
    }

    [Fact]
    public void Count_above_the_native_limit_is_refused_by_the_native_gate()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        long count = 1L << 52; // fits a 64-bit byte size, above the native limit of 2^50 elements
        var e = Assert.Throws<LlmNativeException>(() => LlmBuffer.Allocate(ctx, DType.U8, count));
        Assert.Equal(LlmNativeStatus.InvalidArgument, e.Status);
        Assert.Equal("llmn_buffer_create", e.Function);
        Assert.Contains("count", e.NativeMessage);
        Assert.Contains(count.ToString(), e.NativeMessage);
        Assert.Contains(e.NativeMessage, e.Message);
    }

    [Fact]
    public void Undefined_enums_are_out_of_range()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmBuffer.Allocate(ctx, (DType)99, 4));
        Assert.Equal("dtype", e.ParamName);
        Assert.Contains("99", e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmBuffer.Allocate(ctx, DType.F32, 4, (MemoryKind)7));
        Assert.Equal("memory", e.ParamName);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmContext.Create((Backend)5));
        Assert.Equal("backend", e.ParamName);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmNativeRuntime.SetCpuIsa((CpuIsa)17));
        Assert.Equal("isa", e.ParamName);
    }

    [Fact]
    public void Cpu_device_must_be_zero()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmContext.Create(Backend.Cpu, 1));
        Assert.Equal("device", e.ParamName);
        Assert.Contains("1", e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmContext.Create(Backend.Cuda, -1));
        Assert.Equal("device", e.ParamName);
    }

    [Fact]
    public void Cuda_context_without_cuda_is_a_native_error_that_says_why()
    {
        if (LlmNativeInfo.Cuda.Available) return; // covered by the CUDA tests
        var e = Assert.Throws<LlmNativeException>(() => LlmContext.Create(Backend.Cuda));
        Assert.NotEqual(LlmNativeStatus.Ok, e.Status);
        Assert.Equal("llmn_context_create", e.Function);
        Assert.False(string.IsNullOrWhiteSpace(e.NativeMessage));
    }

    [Fact]
    public void Span_longer_than_the_remaining_range_is_rejected()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var buf = LlmBuffer.Allocate(ctx, DType.F32, 8);
        var e = Assert.Throws<ArgumentException>(() => buf.Upload<float>(new float[9]));
        Assert.Equal("source", e.ParamName);
        Assert.Contains("9", e.Message);
        e = Assert.Throws<ArgumentException>(() => buf.Upload<float>(new float[4], offset: 5));
        Assert.Equal("source", e.ParamName);
        Assert.Contains("only 3", e.Message);
        e = Assert.Throws<ArgumentException>(() => buf.Download<float>(new float[8], offset: 1));
        Assert.Equal("destination", e.ParamName);
        // Nothing was written by the failed calls.
        buf.Fill(1f);
        Assert.Throws<ArgumentException>(() => buf.Upload<float>(new float[9]));
        Assert.All(buf.ToArray<float>(), v => Assert.Equal(1f, v));
    }

    [Fact]
    public void Offsets_out_of_range_name_the_offset()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var buf = LlmBuffer.Allocate(ctx, DType.I32, 8);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => buf.Upload<int>(new int[1], offset: -1));
        Assert.Equal("offset", e.ParamName);
        Assert.Contains("-1", e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => buf.Download<int>(new int[1], offset: 9));
        Assert.Equal("offset", e.ParamName);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => buf.Fill(0, offset: 2, count: -3));
        Assert.Equal("count", e.ParamName);
        var a = Assert.Throws<ArgumentException>(() => buf.Fill(0, offset: 2, count: 7));
        Assert.Equal("count", a.ParamName);
        using var other = LlmBuffer.Allocate(ctx, DType.I32, 4);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => buf.CopyFrom(other, sourceOffset: long.MaxValue));
        Assert.Equal("sourceOffset", e.ParamName);
        a = Assert.Throws<ArgumentException>(() => other.CopyFrom(buf));
        Assert.Equal("count", a.ParamName);
        // Zero-length transfers at the end are fine.
        buf.Upload<int>(ReadOnlySpan<int>.Empty, offset: 8);
        buf.Download<int>(Span<int>.Empty, offset: 8);
    }

    [Fact]
    public void Element_type_must_match_the_dtype()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var i32 = LlmBuffer.Allocate(ctx, DType.I32, 4);
        var e = Assert.Throws<ArgumentException>(() => i32.Upload<float>(new float[4]));
        Assert.Equal("source", e.ParamName);
        Assert.Contains("Single", e.Message);
        Assert.Contains("I32", e.Message);
        e = Assert.Throws<ArgumentException>(() => i32.Download<uint>(new uint[4]));
        Assert.Equal("destination", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => i32.Fill(1.0));
        Assert.Equal("value", e.ParamName);
        using var f16 = LlmBuffer.Allocate(ctx, DType.F16, 4);
        e = Assert.Throws<ArgumentException>(() => f16.Upload<short>(new short[4]));
        Assert.Equal("source", e.ParamName);
        using var bf16 = LlmBuffer.Allocate(ctx, DType.BF16, 4);
        e = Assert.Throws<ArgumentException>(() => bf16.Upload<Half>(new Half[4]));
        Assert.Contains("ushort", e.Message);
        e = Assert.Throws<ArgumentException>(() => LlmBuffer.Wrap(ctx, new float[4].AsMemory(), DType.I32));
        Assert.Equal("memory", e.ParamName);
    }

    [Fact]
    public void Copy_requires_the_same_dtype()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using var f32 = LlmBuffer.Allocate(ctx, DType.F32, 4);
        using var i32 = LlmBuffer.Allocate(ctx, DType.I32, 4);
        var e = Assert.Throws<ArgumentException>(() => f32.CopyFrom(i32));
        Assert.Equal("source", e.ParamName);
        Assert.Contains("I32", e.Message);
        Assert.Throws<ArgumentNullException>(() => f32.CopyFrom(null!));
    }

    [Fact]
    public void Kernel_argument_helpers_name_the_parameter()
    {
        using var a = LlmContext.Create(Backend.Cpu);
        using var b = LlmContext.Create(Backend.Cpu);
        using var x = LlmBuffer.Allocate(b, DType.F32, 4);
        Argument.OnDeviceOf(x, a, "x");     // another context on the same device is fine
        Argument.OnDeviceOf(null, a, "bias"); // optional argument
        Argument.DTypeIn(x, "x", DType.F16, DType.F32);
        var e = Assert.Throws<ArgumentException>(() => Argument.DTypeIn(x, "x", DType.F16, DType.BF16));
        Assert.Equal("x", e.ParamName);
        Assert.Contains("F32", e.Message);
        Assert.Contains("F16 or BF16", e.Message);
    }

    [CudaFact]
    public void Kernel_argument_on_another_device_is_rejected()
    {
        using var cpu = LlmContext.Create(Backend.Cpu);
        using var gpu = LlmContext.Create(Backend.Cuda);
        using var x = LlmBuffer.Allocate(cpu, DType.F32, 4);
        var e = Assert.Throws<ArgumentException>(() => Argument.OnDeviceOf(x, gpu, "x"));
        Assert.Equal("x", e.ParamName);
    }

    [Fact]
    public void Empty_wrap_is_rejected()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        var e = Assert.Throws<ArgumentException>(() => LlmBuffer.Wrap(ctx, Memory<float>.Empty));
        Assert.Equal("memory", e.ParamName);
    }

    [CudaFact]
    public void Wrap_needs_a_cpu_context()
    {
        using var gpu = LlmContext.Create(Backend.Cuda);
        var e = Assert.Throws<ArgumentException>(() => LlmBuffer.Wrap(gpu, new float[4].AsMemory()));
        Assert.Equal("context", e.ParamName);
    }

    [Fact]
    public void Negative_thread_count_is_out_of_range_and_too_many_is_a_native_error()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => LlmNativeRuntime.SetCpuThreads(-2));
        Assert.Equal("threads", e.ParamName);
        var n = Assert.Throws<LlmNativeException>(() => LlmNativeRuntime.SetCpuThreads(100_000));
        Assert.Equal(LlmNativeStatus.InvalidArgument, n.Status);
        Assert.Contains("100000", n.NativeMessage);
    }

    [Fact]
    public void Wrong_or_stale_raw_handles_are_reported_by_the_gate_not_a_crash()
    {
        using var ctx = LlmContext.Create(Backend.Cpu);
        using NativeHandle.Lease c = ctx.Acquire();
        IntPtr contextPointer = c.Pointer;
        // A context handle where a buffer handle is expected.
        var e = Assert.Throws<LlmNativeException>(() => BufferInfo(contextPointer));
        Assert.Equal(LlmNativeStatus.InvalidHandle, e.Status);
        Assert.Equal("llmn_buffer_get_info", e.Function);
        Assert.Contains("buffer", e.NativeMessage);

        // A handle value that was never issued.
        e = Assert.Throws<LlmNativeException>(() => Native.Check(NativeMethods.llmn_context_synchronize((IntPtr)0x1234)));
        Assert.Equal(LlmNativeStatus.InvalidHandle, e.Status);
        Assert.Equal("llmn_context_synchronize", e.Function);
    }

    private static unsafe void BufferInfo(IntPtr buffer)
    {
        int dtype, memory;
        long count;
        Native.Check(NativeMethods.llmn_buffer_get_info(buffer, &dtype, &count, &memory));
    }

    [Fact]
    public void Native_status_enum_mirrors_the_c_enum()
    {
        foreach (NativeMethods.llmn_status s in Enum.GetValues<NativeMethods.llmn_status>())
        {
            string name = Pascal(s.ToString(), "LLMN_STATUS_");
            Assert.True(Enum.TryParse(name, out LlmNativeStatus mine), $"LlmNativeStatus lacks {name}");
            Assert.Equal((int)s, (int)mine);
        }
        Assert.Equal(Enum.GetValues<NativeMethods.llmn_status>().Length, Enum.GetValues<LlmNativeStatus>().Length);
        Mirrors<NativeMethods.llmn_backend, Backend>("LLMN_BACKEND_");
        Mirrors<NativeMethods.llmn_cpu_isa, CpuIsa>("LLMN_CPU_ISA_");
        Mirrors<NativeMethods.llmn_dtype, DType>("LLMN_DTYPE_", upper: true);
        Mirrors<NativeMethods.llmn_memory, MemoryKind>("LLMN_MEMORY_");
    }

    private static void Mirrors<TC, TCs>(string prefix, bool upper = false) where TC : struct, Enum where TCs : struct, Enum
    {
        foreach (TC c in Enum.GetValues<TC>())
        {
            string name = upper ? c.ToString()![prefix.Length..] : Pascal(c.ToString()!, prefix);
            Assert.True(Enum.TryParse(name, ignoreCase: true, out TCs mine), $"{typeof(TCs).Name} lacks {name}");
            Assert.Equal(Convert.ToInt32(c), Convert.ToInt32(mine));
        }
        Assert.Equal(Enum.GetValues<TC>().Length, Enum.GetValues<TCs>().Length);
    }

    private static string Pascal(string cName, string prefix)
    {
        var parts = cName[prefix.Length..].Split('_');
        return string.Concat(Array.ConvertAll(parts, p => p[..1] + p[1..].ToLowerInvariant()));
    }
}
