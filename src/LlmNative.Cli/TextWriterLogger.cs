using System;
using System.IO;
using Microsoft.Extensions.Logging;

namespace LlmNative.Cli;

/// <summary>A minimal ILogger for --verbose: one "[level] message" line per entry on a writer (stderr).</summary>
internal sealed class TextWriterLogger : ILogger
{
    private readonly TextWriter _writer;
    private readonly object _lock = new();

    public TextWriterLogger(TextWriter writer, LogLevel minimum = LogLevel.Debug)
    {
        _writer = writer;
        Minimum = minimum;
    }

    public LogLevel Minimum { get; }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= Minimum && logLevel != LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel)) return;
        string line = $"[{logLevel.ToString().ToLowerInvariant()}] {formatter(state, exception)}";
        lock (_lock) _writer.WriteLine(line);
    }
}
