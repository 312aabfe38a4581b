// Thin helpers over ORT's C# API for running one-node sessions on caller-owned unmanaged memory through
// IOBinding (no per-call allocation, no copies, outputs written in place).
using System;
using LlmNative.Benchmarks.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace LlmNative.Benchmarks.Ort;

internal static class OrtTensors
{
    public static OrtValue Over(NativeArray memory, TensorElementType type, params long[] shape) =>
        Over(memory.Address, memory.Bytes, type, shape);

    public static OrtValue Over(IntPtr data, long bytes, TensorElementType type, params long[] shape)
    {
        long elems = 1;
        foreach (long d in shape) elems *= d;
        long needed = elems * ElementSize(type);
        if (needed > bytes) throw new ArgumentException($"tensor [{string.Join(", ", shape)}] of {type} needs {needed} bytes, memory has {bytes}");
        return OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, type, shape, data, needed);
    }

    public static int ElementSize(TensorElementType type) => type switch
    {
        TensorElementType.Float => 4,
        TensorElementType.Float16 => 2,
        TensorElementType.Int32 => 4,
        TensorElementType.Int64 => 8,
        TensorElementType.UInt8 => 1,
        TensorElementType.Int8 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unsupported element type"),
    };
}

/// <summary>One session plus an IOBinding whose OrtValues (caller memory) it keeps alive and disposes.</summary>
internal sealed class BoundSession : IDisposable
{
    private readonly System.Collections.Generic.List<OrtValue> _values = new();
    private readonly bool _ownsSession;
    private OrtIoBinding? _binding;

    public BoundSession(InferenceSession session, bool ownsSession)
    {
        Session = session;
        _ownsSession = ownsSession;
        RunOptions = new RunOptions();
    }

    public InferenceSession Session { get; }
    public RunOptions RunOptions { get; }

    /// <summary>Replaces the binding (e.g. for a new M or batch); the previous values are disposed.</summary>
    public void Bind(Action<OrtIoBinding, Func<OrtValue, OrtValue>> bind)
    {
        ClearBinding();
        _binding = Session.CreateIoBinding();
        bind(_binding, v => { _values.Add(v); return v; });
        _binding.SynchronizeBoundInputs();
    }

    public void Run()
    {
        if (_binding is null) throw new InvalidOperationException("nothing bound");
        Session.RunWithBinding(RunOptions, _binding);
    }

    private void ClearBinding()
    {
        _binding?.ClearBoundInputs();
        _binding?.ClearBoundOutputs();
        _binding?.Dispose();
        _binding = null;
        foreach (OrtValue v in _values) v.Dispose();
        _values.Clear();
    }

    public void Dispose()
    {
        ClearBinding();
        RunOptions.Dispose();
        if (_ownsSession) Session.Dispose();
    }
}
