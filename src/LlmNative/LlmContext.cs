using System;
using Microsoft.Extensions.Logging;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>
/// One backend + device + stream. Every buffer, weight and cache belongs to a context; all work on a context
/// runs in order. Use one context per thread: operations of one context must not run on two threads at once.
/// Disposing the context while buffers still use it is safe: the native context lives until the last of them
/// is disposed.
/// </summary>
/// <example>
/// <code>
/// using var ctx = LlmContext.CreateBest(loggerFactory);   // CUDA when available, else CPU (logged once)
/// using var x = LlmBuffer.Allocate(ctx, DType.F32, 4096);
/// x.Upload(data.AsSpan());
/// ctx.Synchronize();
/// </code>
/// </example>
public sealed class LlmContext : IDisposable
{
    /// <summary>Category of the loggers created from an <see cref="ILoggerFactory"/>.</summary>
    public const string LoggerCategory = "LlmNative";

    private static int s_backendChoiceLogged;

    private LlmContext(ContextHandle handle, Backend backend, int device, ulong id, ILogger? logger)
    {
        Handle = handle;
        Backend = backend;
        Device = device;
        Id = id;
        Logger = logger;
    }

    /// <summary>The backend this context runs on.</summary>
    public Backend Backend { get; }

    /// <summary>The device index (always 0 for <see cref="LlmNative.Backend.Cpu"/>).</summary>
    public int Device { get; }

    /// <summary>Process-unique id of the native context; native log lines about this context carry it.</summary>
    public ulong Id { get; }

    /// <summary>True after <see cref="Dispose"/>.</summary>
    public bool IsDisposed => Handle.IsDisposeRequested;

    internal ContextHandle Handle { get; }

    /// <summary>The logger given at creation (null for none); native lines for this context go to it.</summary>
    internal ILogger? Logger { get; }

    /// <summary>Creates a context on a backend and device.</summary>
    /// <param name="backend">The backend.</param>
    /// <param name="device">Device index: 0 for the CPU, a CUDA device index otherwise.</param>
    /// <param name="loggerFactory">Where native log lines about this context go (category <see cref="LoggerCategory"/>); null for none.</param>
    /// <returns>The new context; dispose it.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="backend"/> is undefined, <paramref name="device"/> is negative, or not 0 for the CPU.</exception>
    /// <exception cref="LlmNativeException">The native library refused (for example CUDA unavailable: <see cref="LlmNativeStatus.Unsupported"/>).</exception>
    public static LlmContext Create(Backend backend, int device = 0, ILoggerFactory? loggerFactory = null) =>
        CreateCore(backend, device, loggerFactory?.CreateLogger(LoggerCategory));

    /// <summary>Creates a context on a backend and device, logging native lines about it to <paramref name="logger"/>.</summary>
    /// <param name="backend">The backend.</param>
    /// <param name="device">Device index: 0 for the CPU, a CUDA device index otherwise.</param>
    /// <param name="logger">Receives native log lines about this context.</param>
    /// <returns>The new context; dispose it.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="backend"/> is undefined, <paramref name="device"/> is negative, or not 0 for the CPU.</exception>
    /// <exception cref="LlmNativeException">The native library refused.</exception>
    public static LlmContext Create(Backend backend, int device, ILogger logger) => CreateCore(backend, device, logger);

    /// <summary>
    /// Creates a context on CUDA device 0 when CUDA is available, else on the CPU. The first time it falls back
    /// (or picks CUDA) it logs why at Information level.
    /// </summary>
    /// <param name="loggerFactory">Where the choice and native lines go; null for none.</param>
    /// <returns>The new context; dispose it.</returns>
    public static LlmContext CreateBest(ILoggerFactory? loggerFactory = null) =>
        CreateBestCore(loggerFactory?.CreateLogger(LoggerCategory));

    /// <summary>Like <see cref="CreateBest(ILoggerFactory)"/>, logging to <paramref name="logger"/>.</summary>
    /// <param name="logger">Receives the choice and native lines about the context.</param>
    /// <returns>The new context; dispose it.</returns>
    public static LlmContext CreateBest(ILogger logger) => CreateBestCore(logger);

    private static LlmContext CreateBestCore(ILogger? logger)
    {
        CudaInfo cuda = LlmNativeInfo.Cuda;
        Backend backend = cuda.Available && cuda.DeviceCount > 0 ? Backend.Cuda : Backend.Cpu;
        if (System.Threading.Interlocked.Exchange(ref s_backendChoiceLogged, 1) == 0 &&
            (logger ?? NativeLog.Global) is ILogger target)
        {
            string reason = backend == Backend.Cuda
                ? $"CUDA is available ({cuda.DeviceCount} device(s); device 0: {cuda.Devices[0].Name})"
                : !cuda.Compiled ? "CUDA is not available: this native library was built without the CUDA backend"
                : $"CUDA is not available: {cuda.UnavailableReason}";
            Log.BackendChosen(target, backend, 0, reason);
        }
        return CreateCore(backend, 0, logger);
    }

    private static unsafe LlmContext CreateCore(Backend backend, int device, ILogger? logger)
    {
        Argument.Defined(backend, nameof(backend));
        Argument.AtLeast(device, 0, nameof(device));
        if (backend == Backend.Cpu && device != 0)
            throw new ArgumentOutOfRangeException(nameof(device), device, $"device must be 0 for the CPU backend, got {device}");
        Native.EnsureLoaded();
        logger = NativeLog.Normalize(logger);

        var handle = new ContextHandle();
        try
        {
            ulong id;
            using (NativeLog.BeginCreation(logger))
            {
                IntPtr raw;
                Native.Check(llmn_context_create((int)backend, device, &raw));
                handle.Initialize(raw, parent: null);
                Native.Check(llmn_context_get_id(raw, &id));
                handle.ContextId = id;
                NativeLog.Register(id, logger);
            }
            return new LlmContext(handle, backend, device, id, logger);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Waits until all work queued on this context has finished.</summary>
    /// <exception cref="ObjectDisposedException">The context was disposed.</exception>
    /// <exception cref="LlmNativeException">The backend reported an error (for example a failed CUDA kernel).</exception>
    public void Synchronize()
    {
        using NativeHandle.Lease c = Handle.Acquire();
        Native.Check(llmn_context_synchronize(c.Pointer));
    }

    /// <summary>
    /// Keeps the context alive for one native call and returns its raw handle (for the internal kernel wrappers).
    /// </summary>
    /// <param name="paramName">The parameter this context came in as, for the <see cref="ObjectDisposedException"/>.</param>
    internal NativeHandle.Lease Acquire(string? paramName = null) => Handle.Acquire(paramName);

    /// <summary>Releases the context. Buffers made from it stay usable until they are disposed. Idempotent.</summary>
    public void Dispose()
    {
        Handle.Dispose();
        NativeLog.Unregister(Id);
    }

    /// <inheritdoc/>
    public override string ToString() => $"LlmContext({Backend}, device {Device}, id {Id}{(IsDisposed ? ", disposed" : "")})";
}
