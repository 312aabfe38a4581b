using System.Linq;
using Microsoft.Extensions.Logging;
using Xunit;

namespace LlmNative.Tests;

public class LoggingTests
{
    [Fact]
    public void Context_creation_line_reaches_that_contexts_logger_only()
    {
        var mine = new TestLogger(LogLevel.Debug);
        var other = new TestLogger(LogLevel.Debug);
        using var otherCtx = LlmContext.Create(Backend.Cpu, 0, other);
        int otherBefore = other.Entries.Count;

        using var ctx = LlmContext.Create(Backend.Cpu, 0, mine);
        var created = mine.Entries.Where(e => e.Message.Contains($"context {ctx.Id} created")).ToList();
        Assert.Single(created);
        Assert.Equal(LogLevel.Debug, created[0].Level);
        Assert.StartsWith($"[context {ctx.Id}]", created[0].Message);
        Assert.DoesNotContain(other.Entries.Skip(otherBefore), e => e.Message.Contains($"context {ctx.Id} created"));
    }

    [Fact]
    public void Logger_wanting_only_warnings_gets_no_debug_lines()
    {
        var quiet = new TestLogger(LogLevel.Warning);
        using var ctx = LlmContext.Create(Backend.Cpu, 0, quiet);
        Assert.Empty(quiet.Entries);
    }

    [Fact]
    public void Lines_without_a_context_go_to_the_global_logger_or_else_to_every_context_logger()
    {
        CpuIsa active = LlmNativeInfo.Cpu.ActiveIsa;
        var global = new TestLogger(LogLevel.Information);
        var perContext = new TestLogger(LogLevel.Information);
        using var ctx = LlmContext.Create(Backend.Cpu, 0, perContext);
        try
        {
            LlmNativeRuntime.SetLogger(global);
            LlmNativeRuntime.SetCpuIsa(CpuIsa.Scalar); // logs "CPU kernels now use isa 0" with context id 0
            Assert.Contains(global.Entries, e => e.Level == LogLevel.Information && e.Message.Contains("isa 0"));
            Assert.DoesNotContain(perContext.Entries, e => e.Message.Contains("isa 0"));

            LlmNativeRuntime.SetLogger(null);
            LlmNativeRuntime.SetCpuIsa(active);
            Assert.Contains(perContext.Entries, e => e.Message.Contains($"isa {(int)active}"));
        }
        finally
        {
            LlmNativeRuntime.SetLogger(null);
            LlmNativeRuntime.SetCpuIsa(active);
        }
    }

    [Fact]
    public void Disposed_context_logger_is_removed_and_the_native_level_drops()
    {
        int registered = NativeLog.RegisteredContextCount;
        var logger = new TestLogger(LogLevel.Trace);
        var ctx = LlmContext.Create(Backend.Cpu, 0, logger);
        Assert.Equal(registered + 1, NativeLog.RegisteredContextCount);
        Assert.Equal(0, NativeLog.NativeLevel); // Trace requested
        ctx.Dispose();
        Assert.Equal(registered, NativeLog.RegisteredContextCount);
        if (registered == 0 && NativeLog.Global is null) Assert.Equal(5, NativeLog.NativeLevel);
    }

    [Fact]
    public void A_throwing_logger_never_breaks_the_native_call()
    {
        var bad = new TestLogger(LogLevel.Trace) { ThrowOnLog = true };
        using var ctx = LlmContext.Create(Backend.Cpu, 0, bad); // the creation line throws inside the callback
        using var buf = LlmBuffer.Allocate(ctx, DType.F32, 4);
        buf.Fill(1f);
        Assert.Equal(new[] { 1f, 1f, 1f, 1f }, buf.ToArray<float>());
    }

    [Fact]
    public void CreateBest_logs_its_choice_and_returns_a_working_context()
    {
        var logger = new TestLogger(LogLevel.Information);
        using var ctx = LlmContext.CreateBest(logger);
        Backend expected = LlmNativeInfo.Cuda.Available ? Backend.Cuda : Backend.Cpu;
        Assert.Equal(expected, ctx.Backend);
        // The choice is logged once per process; this is the only test that calls CreateBest.
        Assert.Contains(logger.Entries, e => e.Level == LogLevel.Information && e.Message.StartsWith($"Using the {expected} backend"));
        using var buf = LlmBuffer.Allocate(ctx, DType.I32, 3);
        buf.Fill(9);
        Assert.Equal(new[] { 9, 9, 9 }, buf.ToArray<int>());
    }
}
