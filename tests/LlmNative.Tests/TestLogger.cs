using System;
using System.Collections.Generic;
using System.Linq;
using Microsoft.Extensions.Logging;

namespace LlmNative.Tests;

/// <summary>An ILogger that records every entry at or above a minimum level.</summary>
internal sealed class TestLogger : ILogger
{
    private readonly object _lock = new();
    private readonly List<(LogLevel Level, string Message)> _entries = new();

    public TestLogger(LogLevel minimum = LogLevel.Trace) => Minimum = minimum;

    public LogLevel Minimum { get; }

    public bool ThrowOnLog { get; set; }

    public IReadOnlyList<(LogLevel Level, string Message)> Entries
    {
        get
        {
            lock (_lock) return _entries.ToList();
        }
    }

    public bool Contains(string fragment) => Entries.Any(e => e.Message.Contains(fragment, StringComparison.Ordinal));

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= Minimum && logLevel != LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel)) return;
        if (ThrowOnLog) throw new InvalidOperationException("logger failure requested by the test");
        lock (_lock) _entries.Add((logLevel, formatter(state, exception)));
    }
}
