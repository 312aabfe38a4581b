using System;
using static LlmNative.Interop.NativeMethods;

namespace LlmNative;

/// <summary>
/// A 4-bit quantized weight matrix W [K, N] (K input features, N output features) in a context's memory, in the
/// layout that context's GEMM kernel reads. Dequantization: <c>w[k][n] = (q[k][n] − zero[g][n]) × scale[g][n]</c>
/// with fp16 scales, integer zero points 0..15 (8 when <see cref="Symmetric"/>) and g = k / <see cref="GroupSize"/>
/// (or the act-order group of row k). Use it with <see cref="Gemm.Int4(LlmBuffer, Int4Weight, LlmBuffer, int, LlmBuffer?)"/>.
/// The weight keeps its context alive: it stays usable after the context is disposed, until it is disposed itself.
/// </summary>
/// <example>
/// <code>
/// using var ctx = LlmContext.Create(Backend.Cpu);
/// using Int4Weight w = Int4Weight.Quantize(ctx, dense, k: 4096, n: 4096, groupSize: 128, symmetric: true);
/// float[] x = new float[4096], y = new float[4096];
/// Gemm.Int4(x, w, y, m: 1);                  // y = x · dequant(W)
/// float[] back = new float[4096 * 4096];
/// w.Dequantize(back);                        // what the kernel multiplies with
/// </code>
/// </example>
public sealed class Int4Weight : IDisposable
{
    private Int4Weight(Int4WeightHandle handle, LlmContext context)
    {
        Handle = handle;
        Context = context;
        using NativeHandle.Lease l = handle.Acquire();
        unsafe
        {
            llmn_int4_weight_desc d;
            long bytes;
            Native.Check(llmn_int4_weight_get_desc(l.Pointer, &d));
            Native.Check(llmn_int4_weight_get_size_bytes(l.Pointer, &bytes));
            K = checked((int)d.k);
            N = checked((int)d.n);
            GroupSize = d.group_size;
            Symmetric = d.symmetric != 0;
            HasActOrder = d.has_g_idx != 0;
            SizeInBytes = bytes;
        }
    }

    /// <summary>The context whose memory holds the weight and whose kernels use it.</summary>
    public LlmContext Context { get; }

    /// <summary>Input features: rows of W, columns of the activations.</summary>
    public int K { get; }

    /// <summary>Output features: columns of W and of the output.</summary>
    public int N { get; }

    /// <summary>Rows per quantization group: 32, 64 or 128; 0 means one group spanning all of K per column.</summary>
    public int GroupSize { get; }

    /// <summary>True when the zero point is the implicit 8 (GPTQ <c>sym=True</c>); false with a zero point per (group, column).</summary>
    public bool Symmetric { get; }

    /// <summary>True when rows are assigned to groups by a permutation (GPTQ act-order / <c>desc_act</c> g_idx).</summary>
    public bool HasActOrder { get; }

    /// <summary>Bytes of context memory the packed weight takes (codes, scales, zero points, g_idx, padding).</summary>
    public long SizeInBytes { get; }

    /// <summary>True after <see cref="Dispose"/>.</summary>
    public bool IsDisposed => Handle.IsDisposeRequested;

    internal Int4WeightHandle Handle { get; }

    /// <summary>
    /// Quantizes a dense row-major matrix <c>weights[k][n]</c> to 4 bits per group with round-to-nearest
    /// (half away from zero). Scales are rounded up to fp16, so every element is within half a step
    /// (scale / 2) of its input. Symmetric: <c>scale = max(−min / 8, max / 7)</c>, zero 8. Asymmetric:
    /// <c>scale = (max − min) / 15</c> over the range widened to include 0, <c>zero = round(−min / scale)</c>.
    /// An all-zero group gets scale 0.
    /// </summary>
    /// <param name="context">The context whose memory receives the weight.</param>
    /// <param name="weights">K × N finite values, row-major (row k holds the N outputs' weights for input k).</param>
    /// <param name="k">Input features K (rows).</param>
    /// <param name="n">Output features N (columns).</param>
    /// <param name="groupSize">32, 64 or 128 rows per group; 0 for one group per column.</param>
    /// <param name="symmetric">Implicit zero point 8 (true) or a zero point per group and column (false).</param>
    /// <returns>The weight; dispose it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="k"/> or <paramref name="n"/> is below 1.</exception>
    /// <exception cref="ArgumentException"><paramref name="weights"/> does not hold K × N values, or holds NaN/Inf; <paramref name="groupSize"/> is not 0/32/64/128.</exception>
    /// <exception cref="LlmNativeException">The native quantizer refused (for example a group needing a scale above the fp16 maximum).</exception>
    public static unsafe Int4Weight Quantize(LlmContext context, ReadOnlySpan<float> weights, int k, int n, int groupSize,
        bool symmetric)
    {
        CheckQuantize(context, weights.Length, k, n, groupSize, nameof(weights));
        for (int i = 0; i < weights.Length; i++)
        {
            float v = weights[i];
            if (float.IsNaN(v) || float.IsInfinity(v))
                throw new ArgumentException($"weights[{i / n}][{i % n}] is {v}; weights must be finite", nameof(weights));
        }
        fixed (float* p = weights)
            return QuantizeCore(context, p, DType.F32, k, n, groupSize, symmetric);
    }

    /// <summary>Quantizes a dense row-major matrix given as fp16 bits; otherwise like the <see cref="float"/> overload.</summary>
    /// <param name="context">The context whose memory receives the weight.</param>
    /// <param name="weights">K × N fp16 values (their bits), row-major.</param>
    /// <param name="k">Input features K (rows).</param>
    /// <param name="n">Output features N (columns).</param>
    /// <param name="groupSize">32, 64 or 128 rows per group; 0 for one group per column.</param>
    /// <param name="symmetric">Implicit zero point 8 (true) or a zero point per group and column (false).</param>
    /// <returns>The weight; dispose it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="k"/> or <paramref name="n"/> is below 1.</exception>
    /// <exception cref="ArgumentException"><paramref name="weights"/> does not hold K × N values, or holds NaN/Inf; <paramref name="groupSize"/> is not 0/32/64/128.</exception>
    /// <exception cref="LlmNativeException">The native quantizer refused.</exception>
    public static unsafe Int4Weight Quantize(LlmContext context, ReadOnlySpan<ushort> weights, int k, int n, int groupSize,
        bool symmetric)
    {
        CheckQuantize(context, weights.Length, k, n, groupSize, nameof(weights));
        for (int i = 0; i < weights.Length; i++)
        {
            if ((weights[i] & 0x7c00) == 0x7c00)
                throw new ArgumentException(
                    $"weights[{i / n}][{i % n}] is {HalfBits.ToSingle(weights[i])}; weights must be finite", nameof(weights));
        }
        fixed (ushort* p = weights)
            return QuantizeCore(context, p, DType.F16, k, n, groupSize, symmetric);
    }

#if NET5_0_OR_GREATER
    /// <summary>Quantizes a dense row-major <see cref="Half"/> matrix; otherwise like the <see cref="float"/> overload.</summary>
    /// <param name="context">The context whose memory receives the weight.</param>
    /// <param name="weights">K × N finite values, row-major.</param>
    /// <param name="k">Input features K (rows).</param>
    /// <param name="n">Output features N (columns).</param>
    /// <param name="groupSize">32, 64 or 128 rows per group; 0 for one group per column.</param>
    /// <param name="symmetric">Implicit zero point 8 (true) or a zero point per group and column (false).</param>
    /// <returns>The weight; dispose it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="k"/> or <paramref name="n"/> is below 1.</exception>
    /// <exception cref="ArgumentException"><paramref name="weights"/> does not hold K × N values, or holds NaN/Inf; <paramref name="groupSize"/> is not 0/32/64/128.</exception>
    /// <exception cref="LlmNativeException">The native quantizer refused.</exception>
    public static Int4Weight Quantize(LlmContext context, ReadOnlySpan<Half> weights, int k, int n, int groupSize, bool symmetric) =>
        Quantize(context, System.Runtime.InteropServices.MemoryMarshal.Cast<Half, ushort>(weights), k, n, groupSize, symmetric);
#endif

    /// <summary>
    /// Quantizes a linear layer's weight read from a safetensors checkpoint, stored as PyTorch's <c>nn.Linear</c> keeps it:
    /// [out_features N, in_features K], dtype F32, F16 or BF16. It is transposed to the [K, N] this library uses
    /// (F16 kept as fp16 bits, BF16 widened to f32 exactly), then quantized as by
    /// <see cref="Quantize(LlmContext, ReadOnlySpan{float}, int, int, int, bool)"/>.
    /// </summary>
    /// <param name="context">The context whose memory receives the weight.</param>
    /// <param name="source">A <see cref="SafetensorsFile"/> or <see cref="SafetensorsCheckpoint"/>.</param>
    /// <param name="name">The weight tensor, e.g. <c>model.layers.0.mlp.down_proj.weight</c>.</param>
    /// <param name="groupSize">32, 64 or 128 rows (input features) per group; 0 for one group per column.</param>
    /// <param name="symmetric">Implicit zero point 8 (true) or a zero point per group and column (false).</param>
    /// <returns>The weight; dispose it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/>, <paramref name="source"/> or <paramref name="name"/> is null.</exception>
    /// <exception cref="ArgumentException">No such tensor, not 2-D, a dtype other than F32 / F16 / BF16, a NaN/Inf value
    /// (named by its [k][n] position after the transpose), or <paramref name="groupSize"/> is not 0/32/64/128.</exception>
    /// <exception cref="NotSupportedException">The tensor has more than <see cref="int.MaxValue"/> elements.</exception>
    /// <example>
    /// <code>
    /// using var ckpt = SafetensorsCheckpoint.Open("/models/Llama-3-8B-Instruct");           // an fp16 / bf16 model
    /// using var w = Int4Weight.QuantizeLinear(ctx, ckpt, "model.layers.0.mlp.down_proj.weight", 128, symmetric: false);
    /// </code>
    /// </example>
    public static Int4Weight QuantizeLinear(LlmContext context, ISafetensors source, string name, int groupSize, bool symmetric)
    {
        Argument.NotNull(context, nameof(context));
        Argument.NotNull(source, nameof(source));
        Argument.NotNull(name, nameof(name));
        SafetensorsTensorInfo t = source.GetTensor(name);
        (long rows, long cols) = Safetensors.Matrix(t, "weight", nameof(name));
        int n = Safetensors.Dim(rows, $"N ({name} rows: out_features)", nameof(name));
        int k = Safetensors.Dim(cols, $"K ({name} columns: in_features)", nameof(name));
        Int4Checks.GroupSize(groupSize, nameof(groupSize));
        if (t.DType is not ("F32" or "F16" or "BF16"))
            throw new ArgumentException($"tensor '{name}' has dtype {t.DType}; a linear weight to quantize is F32, F16 or BF16", nameof(name));
        try
        {
            switch (t.DType)
            {
                case "F16":
                    return Quantize(context, Transpose(source.Read<ushort>(name), n, k, h => h), k, n, groupSize, symmetric);
                case "BF16":
                    return Quantize(context, Transpose(source.Read<ushort>(name), n, k, Bf16ToSingle), k, n, groupSize, symmetric);
                default:
                    return Quantize(context, Transpose(source.Read<float>(name), n, k, f => f), k, n, groupSize, symmetric);
            }
        }
        catch (ArgumentException e) when (e.ParamName == "weights")
        {
            throw new ArgumentException($"tensor '{name}' (transposed to [K, N] = [{k}, {n}]): {e.Message}", nameof(name), e);
        }
    }

    private static unsafe float Bf16ToSingle(ushort bits)
    {
        uint w = (uint)bits << 16;
        return *(float*)&w;
    }

    // [rows, cols] -> [cols, rows] in 32 x 32 tiles (both sides stay in cache), converting each element.
    private static TOut[] Transpose<TIn, TOut>(TIn[] a, int rows, int cols, Func<TIn, TOut> convert)
    {
        var r = new TOut[(long)rows * cols];
        const int B = 32;
        for (int i0 = 0; i0 < rows; i0 += B)
            for (int j0 = 0; j0 < cols; j0 += B)
                for (int i = i0, ie = Math.Min(rows, i0 + B); i < ie; i++)
                    for (int j = j0, je = Math.Min(cols, j0 + B); j < je; j++)
                        r[(long)j * rows + i] = convert(a[(long)i * cols + j]);
        return r;
    }

    /// <summary>Imports a GPTQ-quantized layer (see <see cref="GptqTensors"/> for the layouts and the v1/v2 zero-point conventions).</summary>
    /// <param name="context">The context whose memory receives the weight.</param>
    /// <param name="tensors">The checkpoint's tensors (checked when the bundle was created).</param>
    /// <returns>The weight; dispose it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> or <paramref name="tensors"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="LlmNativeException">The native importer refused (for example a v1 zero nibble of 15, which means zero point 16).</exception>
    public static unsafe Int4Weight ImportGptq(LlmContext context, GptqTensors tensors)
    {
        Argument.NotNull(context, nameof(context));
        Argument.NotNull(tensors, nameof(tensors));
        using NativeHandle.Lease ctx = context.Acquire(nameof(context));
        bool f16 = tensors.ScalesF32.IsEmpty;
        fixed (int* qw = tensors.QWeight.Span)
        fixed (int* qz = tensors.QZeros.Span)
        fixed (ushort* s16 = tensors.ScalesF16.Span)
        fixed (float* s32 = tensors.ScalesF32.Span)
        fixed (int* gi = tensors.GIdx.Span)
        {
            var t = new llmn_gptq_tensors
            {
                k = tensors.K,
                n = tensors.N,
                group_size = tensors.GroupSize,
                symmetric = tensors.Symmetric ? 1 : 0,
                format = (int)tensors.Format,
                scales_dtype = (int)(f16 ? DType.F16 : DType.F32),
                qweight = qw,
                qzeros = qz,
                scales = f16 ? s16 : s32,
                g_idx = tensors.GIdx.IsEmpty ? null : gi,
            };
            var handle = new Int4WeightHandle();
            try
            {
                IntPtr raw;
                Native.Check(llmn_int4_weight_import_gptq(ctx.Pointer, &t, &raw));
                return Adopt(handle, raw, context);
            }
            catch
            {
                handle.Dispose();
                throw;
            }
        }
    }

    /// <summary>Imports an AWQ-quantized layer (see <see cref="AwqTensors"/> for the layout).</summary>
    /// <param name="context">The context whose memory receives the weight.</param>
    /// <param name="tensors">The checkpoint's tensors (checked when the bundle was created).</param>
    /// <returns>The weight; dispose it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> or <paramref name="tensors"/> is null.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="context"/> was disposed.</exception>
    /// <exception cref="LlmNativeException">The native importer refused.</exception>
    public static unsafe Int4Weight ImportAwq(LlmContext context, AwqTensors tensors)
    {
        Argument.NotNull(context, nameof(context));
        Argument.NotNull(tensors, nameof(tensors));
        using NativeHandle.Lease ctx = context.Acquire(nameof(context));
        bool f16 = tensors.ScalesF32.IsEmpty;
        fixed (int* qw = tensors.QWeight.Span)
        fixed (int* qz = tensors.QZeros.Span)
        fixed (ushort* s16 = tensors.ScalesF16.Span)
        fixed (float* s32 = tensors.ScalesF32.Span)
        {
            var t = new llmn_awq_tensors
            {
                k = tensors.K,
                n = tensors.N,
                group_size = tensors.GroupSize,
                scales_dtype = (int)(f16 ? DType.F16 : DType.F32),
                qweight = qw,
                qzeros = qz,
                scales = f16 ? s16 : s32,
            };
            var handle = new Int4WeightHandle();
            try
            {
                IntPtr raw;
                Native.Check(llmn_int4_weight_import_awq(ctx.Pointer, &t, &raw));
                return Adopt(handle, raw, context);
            }
            catch
            {
                handle.Dispose();
                throw;
            }
        }
    }

    /// <summary>Writes dequant(W) as a row-major K × N matrix: exactly the values the GEMM multiplies with.</summary>
    /// <param name="destination">At least K × N elements; the first K × N are written.</param>
    /// <exception cref="ObjectDisposedException">The weight was disposed.</exception>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than K × N.</exception>
    public unsafe void Dequantize(Span<float> destination)
    {
        CheckDestination(destination.Length, nameof(destination));
        using NativeHandle.Lease w = Handle.Acquire();
        fixed (float* p = destination)
            Native.Check(llmn_int4_weight_dequantize(w.Pointer, (int)DType.F32, p));
    }

    /// <summary>Writes dequant(W) rounded to fp16 (as bits), row-major K × N.</summary>
    /// <param name="destination">At least K × N elements; the first K × N are written.</param>
    /// <exception cref="ObjectDisposedException">The weight was disposed.</exception>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than K × N.</exception>
    public unsafe void Dequantize(Span<ushort> destination)
    {
        CheckDestination(destination.Length, nameof(destination));
        using NativeHandle.Lease w = Handle.Acquire();
        fixed (ushort* p = destination)
            Native.Check(llmn_int4_weight_dequantize(w.Pointer, (int)DType.F16, p));
    }

#if NET5_0_OR_GREATER
    /// <summary>Writes dequant(W) rounded to <see cref="Half"/>, row-major K × N.</summary>
    /// <param name="destination">At least K × N elements; the first K × N are written.</param>
    /// <exception cref="ObjectDisposedException">The weight was disposed.</exception>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than K × N.</exception>
    public void Dequantize(Span<Half> destination) =>
        Dequantize(System.Runtime.InteropServices.MemoryMarshal.Cast<Half, ushort>(destination));
#endif

    /// <summary>Releases the weight (its context memory is freed once no call uses it). Idempotent.</summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc/>
    public override string ToString() =>
        $"Int4Weight(K {K}, N {N}, group size {(GroupSize == 0 ? "per-column" : GroupSize.ToString(System.Globalization.CultureInfo.InvariantCulture))}, " +
        $"{(Symmetric ? "symmetric" : "asymmetric")}{(HasActOrder ? ", act-order" : "")}, {SizeInBytes} bytes, " +
        $"{Context.Backend} device {Context.Device}{(IsDisposed ? ", disposed" : "")})";

    /// <summary>
    /// The raw context handle for a kernel call on this weight. The weight holds a reference on its context's
    /// handle, so while the caller holds a lease on the weight this pointer is valid even after the context was disposed.
    /// </summary>
    internal IntPtr ContextPointer => Context.Handle.DangerousGetHandle();

    private void CheckDestination(int length, string paramName)
    {
        long needed = (long)K * N;
        if (length < needed)
            throw new ArgumentException(
                $"{paramName} has {length} elements but the weight is [K, N] = [{K}, {N}] = {needed} elements", paramName);
    }

    private static void CheckQuantize(LlmContext context, int length, int k, int n, int groupSize, string paramName)
    {
        Argument.NotNull(context, nameof(context));
        Int4Checks.Dimension(k, nameof(k));
        Int4Checks.Dimension(n, nameof(n));
        Int4Checks.GroupSize(groupSize, nameof(groupSize));
        long needed = (long)k * n;
        if (length != needed)
            throw new ArgumentException($"{paramName} has {length} elements; [k, n] = [{k}, {n}] needs {needed}", paramName);
    }

    private static unsafe Int4Weight QuantizeCore(LlmContext context, void* weights, DType dtype, int k, int n, int groupSize,
        bool symmetric)
    {
        using NativeHandle.Lease ctx = context.Acquire(nameof(context));
        var desc = new llmn_int4_weight_desc { k = k, n = n, group_size = groupSize, symmetric = symmetric ? 1 : 0 };
        var handle = new Int4WeightHandle();
        try
        {
            IntPtr raw;
            Native.Check(llmn_int4_weight_quantize(ctx.Pointer, &desc, (int)dtype, weights, &raw));
            return Adopt(handle, raw, context);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Takes ownership of a freshly built native weight (the caller disposes the handle if this throws).</summary>
    private static Int4Weight Adopt(Int4WeightHandle handle, IntPtr raw, LlmContext context)
    {
        handle.Initialize(raw, context.Handle); // the weight keeps its context alive
        return new Int4Weight(handle, context);
    }
}
