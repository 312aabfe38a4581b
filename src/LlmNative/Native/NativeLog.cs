// Native log lines -> ILogger. One static callback is installed once per process; it routes each
// line by context id to the logger given when that context was created. The native side holds a
// mutex while it calls us, so nothing here takes a lock that a thread calling into native code may
// hold (the registry is lock-free to read), and nothing here ever throws back into native code.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Threading;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using static LlmNative.Interop.NativeMethods;
#if NET5_0_OR_GREATER
using System.Runtime.CompilerServices;
#endif

namespace LlmNative;

internal static unsafe partial class NativeLog
{
    private const int NativeLevelNone = (int)llmn_log_level.LLMN_LOG_NONE;

    private static readonly object s_lock = new();
    private static readonly ConcurrentDictionary<ulong, ILogger> s_byContext = new();
    private static readonly List<ILogger> s_pending = new(); // loggers of contexts being created right now
    private static ILogger? s_global;
    private static ILogger[] s_contextLoggers = Array.Empty<ILogger>(); // snapshot for lines with context id 0
    private static bool s_installed;
    private static int s_nativeLevel = NativeLevelNone;

    // A context's creation logs before its id is known to us: lines for unknown ids on the creating
    // thread go to the logger of the context being created.
    [ThreadStatic] private static ILogger? t_creating;

    /// <summary>The process-wide logger (<see cref="LlmNativeRuntime.SetLogger"/>), or null.</summary>
    internal static ILogger? Global => Volatile.Read(ref s_global);

    /// <summary>Number of context loggers registered now (leak checks in tests).</summary>
    internal static int RegisteredContextCount => s_byContext.Count;

    /// <summary>The native minimum level currently requested (5 = none).</summary>
    internal static int NativeLevel => Volatile.Read(ref s_nativeLevel);

    /// <summary>Null for no logger or a <see cref="NullLogger"/>: nothing to register.</summary>
    internal static ILogger? Normalize(ILogger? logger) => logger is null || logger is NullLogger ? null : logger;

    internal static void SetGlobal(ILogger? logger)
    {
        lock (s_lock)
        {
            Volatile.Write(ref s_global, Normalize(logger));
            UpdateNativeLevel();
        }
    }

    /// <summary>
    /// Starts the creation of a context on this thread: its logger receives the lines native code emits
    /// during creation, and the native level includes it. Dispose the scope after <see cref="Register"/>.
    /// </summary>
    internal static CreationScope BeginCreation(ILogger? logger)
    {
        if (logger is null) return default;
        lock (s_lock)
        {
            s_pending.Add(logger);
            UpdateNativeLevel();
        }
        t_creating = logger;
        return new CreationScope(logger);
    }

    internal readonly struct CreationScope : IDisposable
    {
        private readonly ILogger? _logger;

        internal CreationScope(ILogger logger) => _logger = logger;

        public void Dispose()
        {
            if (_logger is null) return;
            t_creating = null;
            lock (s_lock)
            {
                s_pending.Remove(_logger);
                UpdateNativeLevel();
            }
        }
    }

    internal static void Register(ulong contextId, ILogger? logger)
    {
        if (logger is null) return;
        lock (s_lock)
        {
            s_byContext[contextId] = logger;
            RefreshSnapshot();
            UpdateNativeLevel();
        }
    }

    internal static void Unregister(ulong contextId)
    {
        lock (s_lock)
        {
            if (!s_byContext.TryRemove(contextId, out _)) return;
            RefreshSnapshot();
            try
            {
                UpdateNativeLevel();
            }
            catch (Exception)
            {
                // Called from Dispose: a failure to lower the native level only costs formatting time.
            }
        }
    }

    private static void RefreshSnapshot()
    {
        var distinct = new List<ILogger>();
        foreach (ILogger l in s_byContext.Values)
            if (!distinct.Contains(l)) distinct.Add(l);
        Volatile.Write(ref s_contextLoggers, distinct.ToArray());
    }

    /// <summary>
    /// Sets the native minimum level to the lowest level any logger wants. Installs the callback the first
    /// time a logger wants anything; afterwards only the level changes. Caller holds s_lock.
    /// </summary>
    private static void UpdateNativeLevel()
    {
        int level = NativeLevelNone;
        if (s_global != null) level = Math.Min(level, LowestEnabled(s_global));
        foreach (ILogger l in s_byContext.Values) level = Math.Min(level, LowestEnabled(l));
        foreach (ILogger l in s_pending) level = Math.Min(level, LowestEnabled(l));
        if (level == s_nativeLevel && (s_installed || level == NativeLevelNone)) return;

        Native.EnsureLoaded();
        Native.Check(llmn_set_log_callback(CallbackPointer, null, level));
        if (!s_installed)
        {
            s_installed = true;
            // Native code may log while the process tears down; by then managed code must not be called.
            AppDomain.CurrentDomain.ProcessExit += (_, _) => llmn_set_log_callback(IntPtr.Zero, null, NativeLevelNone);
        }
        Volatile.Write(ref s_nativeLevel, level);
    }

    private static int LowestEnabled(ILogger logger)
    {
        for (int level = 0; level < NativeLevelNone; level++)
            if (logger.IsEnabled(ToLogLevel(level))) return level;
        return NativeLevelNone;
    }

    internal static LogLevel ToLogLevel(int nativeLevel) => nativeLevel switch
    {
        0 => LogLevel.Trace,
        1 => LogLevel.Debug,
        2 => LogLevel.Information,
        3 => LogLevel.Warning,
        _ => LogLevel.Error,
    };

    /// <summary>Routes one native line. Never throws: an exception must not unwind into native frames.</summary>
    internal static void Dispatch(int level, ulong contextId, byte* message)
    {
        try
        {
            string text = message == null ? string.Empty : Native.Utf8Z(message, int.MaxValue);
            LogLevel logLevel = ToLogLevel(level);
            if (contextId != 0)
            {
                ILogger? target = s_byContext.TryGetValue(contextId, out ILogger? l) ? l : t_creating ?? Global;
                if (target != null) Write(target, logLevel, contextId, text);
                return;
            }
            ILogger? global = Global;
            if (global != null)
            {
                Write(global, logLevel, 0, text);
                return;
            }
            foreach (ILogger l in Volatile.Read(ref s_contextLoggers)) Write(l, logLevel, 0, text);
            if (t_creating is ILogger creating && Array.IndexOf(Volatile.Read(ref s_contextLoggers), creating) < 0)
                Write(creating, logLevel, 0, text);
        }
        catch (Exception)
        {
            // Swallowed on purpose: see the summary.
        }
    }

    private static void Write(ILogger logger, LogLevel level, ulong contextId, string text)
    {
        try
        {
            if (contextId == 0) Log.NativeProcessLine(logger, level, text);
            else Log.NativeContextLine(logger, level, contextId, text);
        }
        catch (Exception)
        {
            // One failing logger must not keep the line from the others, nor reach native code.
        }
    }

#if NET5_0_OR_GREATER
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void OnNativeLog(int level, ulong contextId, byte* message, void* userData) =>
        Dispatch(level, contextId, message);

    private static IntPtr CallbackPointer =>
        (IntPtr)(delegate* unmanaged[Cdecl]<int, ulong, byte*, void*, void>)&OnNativeLog;
#else
    // Kept in a static field for the life of the process: the native side holds a pointer to its thunk.
    private static readonly llmn_log_callback s_callback = OnNativeLog;

    private static void OnNativeLog(int level, ulong contextId, byte* message, void* userData) =>
        Dispatch(level, contextId, message);

    private static IntPtr CallbackPointer => Marshal.GetFunctionPointerForDelegate(s_callback);
#endif
}
