// Checkpoint tensor bundles for Int4Weight.ImportGptq / ImportAwq. They are checked when constructed
// (shapes against K/N/groups, finite scales, g_idx range) so every exception names a constructor
// parameter; the native importer checks again for C callers. Memory is only read during the import.
using System;

namespace LlmNative;

/// <summary>How a GPTQ checkpoint stores its zero points (<c>llmn_gptq_format</c>).</summary>
/// <example>
/// <code>
/// // quantize_config.json: "checkpoint_format": "gptq" (or absent) -> V1; "gptq_v2" -> V2
/// var format = checkpointFormat == "gptq_v2" ? GptqFormat.V2 : GptqFormat.V1;
/// </code>
/// </example>
public enum GptqFormat
{
    /// <summary>
    /// The AutoGPTQ / Transformers default (<c>checkpoint_format</c> "gptq" or absent): <c>qzeros</c> holds
    /// zero point − 1 (GPTQ's historical off-by-one: the packer subtracts 1 and every v1 kernel adds it back).
    /// A stored nibble 15 would mean zero point 16, which 4 bits cannot hold; such checkpoints are refused.
    /// </summary>
    V1 = 0,

    /// <summary><c>checkpoint_format</c> "gptq_v2": <c>qzeros</c> holds the real zero point (0..15).</summary>
    V2 = 1,
}

/// <summary>
/// The tensors of one GPTQ-quantized linear layer, exactly as a Hugging Face safetensors checkpoint stores them
/// (AutoGPTQ, GPTQModel, Transformers). Dequantization: <c>w[k][n] = (q[k][n] − zero[g][n]) × scale[g][n]</c> with
/// <c>g = gIdx[k]</c> when act-order (<c>desc_act</c>) is present, else <c>k / groupSize</c>.
/// </summary>
/// <remarks>
/// <para>Layouts (G = ceil(K / groupSize), or 1 per-column):</para>
/// <list type="bullet">
/// <item><c>qweight</c> int32 [K/8, N]: row k of W is nibble k % 8 (bits 4·(k % 8)) of <c>qweight[k/8][n]</c>. K must be a multiple of 8.</item>
/// <item><c>qzeros</c> int32 [G, N/8]: column n is nibble n % 8 of <c>qzeros[g][n/8]</c>. Off by one in <see cref="GptqFormat.V1"/>
/// (stored = zero − 1), the real zero in <see cref="GptqFormat.V2"/>. Ignored for symmetric checkpoints (implicit zero 8; v1 files
/// hold all 7s there) and may then be empty.</item>
/// <item><c>scales</c> f16 bits (safetensors dtype F16, as <see cref="ushort"/>) or f32, [G, N]. f32 values are rounded to fp16.</item>
/// <item><c>g_idx</c> int32 [K] or empty: the group of every row (act-order). A g_idx equal to k / groupSize everywhere is dropped (same meaning).</item>
/// </list>
/// </remarks>
/// <example>
/// <code>
/// var t = new GptqTensors(k: 4096, n: 4096, groupSize: 128, symmetric: true, GptqFormat.V1,
///                         qweight, qzeros, scalesF16Bits, gIdx);   // arrays read from model.safetensors
/// using Int4Weight w = Int4Weight.ImportGptq(ctx, t);
/// </code>
/// </example>
public sealed class GptqTensors
{
    /// <summary>Creates a GPTQ tensor bundle with fp16 scales (their raw bits).</summary>
    /// <param name="k">Input features K (rows of W), a multiple of 8.</param>
    /// <param name="n">Output features N (columns of W); a multiple of 8 when asymmetric.</param>
    /// <param name="groupSize">32, 64 or 128; 0 (or GPTQ's −1) for one group per column.</param>
    /// <param name="symmetric">GPTQ's <c>sym</c>: implicit zero point 8, <paramref name="qZeros"/> ignored.</param>
    /// <param name="format">How <paramref name="qZeros"/> stores zero points.</param>
    /// <param name="qWeight">int32 [K/8, N].</param>
    /// <param name="qZeros">int32 [G, N/8]; may be empty when <paramref name="symmetric"/>.</param>
    /// <param name="scales">fp16 bits [G, N].</param>
    /// <param name="gIdx">int32 [K], or empty without act-order.</param>
    /// <exception cref="ArgumentException">A length does not match the shape, a dimension or group size is invalid, or a scale is NaN/Inf (the parameter is named).</exception>
    /// <exception cref="ArgumentOutOfRangeException">A <paramref name="gIdx"/> entry is outside [0, G), or <paramref name="format"/> is undefined.</exception>
    public GptqTensors(int k, int n, int groupSize, bool symmetric, GptqFormat format, ReadOnlyMemory<int> qWeight,
        ReadOnlyMemory<int> qZeros, ReadOnlyMemory<ushort> scales, ReadOnlyMemory<int> gIdx = default)
        : this(k, n, groupSize, symmetric, format, qWeight, qZeros, gIdx)
    {
        Int4Checks.Scales(scales.Span, Groups, n, nameof(scales));
        ScalesF16 = scales;
    }

    /// <summary>Creates a GPTQ tensor bundle with f32 scales (rounded to fp16 on import).</summary>
    /// <param name="k">Input features K (rows of W), a multiple of 8.</param>
    /// <param name="n">Output features N (columns of W); a multiple of 8 when asymmetric.</param>
    /// <param name="groupSize">32, 64 or 128; 0 (or GPTQ's −1) for one group per column.</param>
    /// <param name="symmetric">GPTQ's <c>sym</c>: implicit zero point 8, <paramref name="qZeros"/> ignored.</param>
    /// <param name="format">How <paramref name="qZeros"/> stores zero points.</param>
    /// <param name="qWeight">int32 [K/8, N].</param>
    /// <param name="qZeros">int32 [G, N/8]; may be empty when <paramref name="symmetric"/>.</param>
    /// <param name="scales">f32 [G, N], finite and within the fp16 range.</param>
    /// <param name="gIdx">int32 [K], or empty without act-order.</param>
    /// <exception cref="ArgumentException">A length does not match the shape, a dimension or group size is invalid, or a scale is NaN/Inf or outside the fp16 range.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A <paramref name="gIdx"/> entry is outside [0, G), or <paramref name="format"/> is undefined.</exception>
    public GptqTensors(int k, int n, int groupSize, bool symmetric, GptqFormat format, ReadOnlyMemory<int> qWeight,
        ReadOnlyMemory<int> qZeros, ReadOnlyMemory<float> scales, ReadOnlyMemory<int> gIdx = default)
        : this(k, n, groupSize, symmetric, format, qWeight, qZeros, gIdx)
    {
        Int4Checks.Scales(scales.Span, Groups, n, nameof(scales));
        ScalesF32 = scales;
    }

    private GptqTensors(int k, int n, int groupSize, bool symmetric, GptqFormat format, ReadOnlyMemory<int> qWeight,
        ReadOnlyMemory<int> qZeros, ReadOnlyMemory<int> gIdx)
    {
        Int4Checks.Dimension(k, nameof(k));
        Int4Checks.Dimension(n, nameof(n));
        if (k % 8 != 0)
            throw new ArgumentException($"k must be a multiple of 8 (GPTQ qweight packs 8 rows of K per int32), got {k}", nameof(k));
        if (groupSize == -1) groupSize = 0;
        Int4Checks.GroupSize(groupSize, nameof(groupSize));
        Argument.Defined(format, nameof(format));
        if (!symmetric && n % 8 != 0)
            throw new ArgumentException(
                $"n must be a multiple of 8 for asymmetric GPTQ (qzeros packs 8 columns per int32), got {n}", nameof(n));
        int groups = Int4Checks.Groups(k, groupSize);
        Int4Checks.Length(qWeight.Length, (long)(k / 8) * n, nameof(qWeight), $"[K/8, N] = [{k / 8}, {n}]");
        long zerosCount = (long)groups * ((n + 7) / 8);
        if (!symmetric || !qZeros.IsEmpty)
            Int4Checks.Length(qZeros.Length, zerosCount, nameof(qZeros),
                $"[G, N/8] = [{groups}, {(n + 7) / 8}]" + (symmetric ? " (or empty: symmetric checkpoints ignore it)" : ""));
        if (!gIdx.IsEmpty) Int4Checks.GIdx(gIdx.Span, k, groups, groupSize, nameof(gIdx));

        K = k;
        N = n;
        GroupSize = groupSize;
        Symmetric = symmetric;
        Format = format;
        QWeight = qWeight;
        QZeros = qZeros;
        GIdx = gIdx;
        Groups = groups;
    }

    /// <summary>Input features K (rows of W).</summary>
    public int K { get; }

    /// <summary>Output features N (columns of W).</summary>
    public int N { get; }

    /// <summary>32, 64, 128, or 0 for one group per column (a −1 given to the constructor reads back as 0).</summary>
    public int GroupSize { get; }

    /// <summary>Number of groups G: ceil(K / GroupSize), or 1 per-column.</summary>
    public int Groups { get; }

    /// <summary>True for GPTQ <c>sym=True</c> checkpoints (implicit zero point 8).</summary>
    public bool Symmetric { get; }

    /// <summary>How <see cref="QZeros"/> stores zero points (v1: off by one).</summary>
    public GptqFormat Format { get; }

    /// <summary>int32 [K/8, N].</summary>
    public ReadOnlyMemory<int> QWeight { get; }

    /// <summary>int32 [G, N/8] (may be empty when symmetric).</summary>
    public ReadOnlyMemory<int> QZeros { get; }

    /// <summary>fp16 scale bits [G, N], or empty when the scales are f32.</summary>
    public ReadOnlyMemory<ushort> ScalesF16 { get; }

    /// <summary>f32 scales [G, N], or empty when the scales are fp16.</summary>
    public ReadOnlyMemory<float> ScalesF32 { get; }

    /// <summary>int32 [K] group of every row (act-order), or empty.</summary>
    public ReadOnlyMemory<int> GIdx { get; }
}

/// <summary>
/// The tensors of one AWQ-quantized linear layer as AutoAWQ (GEMM version) stores them in safetensors. Always
/// asymmetric. Dequantization: <c>w[k][n] = (q[k][n] − zero[k / groupSize][n]) × scale[k / groupSize][n]</c>.
/// </summary>
/// <remarks>
/// <para>Layouts (G = ceil(K / groupSize), or 1 per-column; N must be a multiple of 8):</para>
/// <list type="bullet">
/// <item><c>qweight</c> int32 [K, N/8]: 8 neighbouring columns per int32 in AWQ's interleaved order: nibble i
/// (bits 4i) holds column 8j + {0, 2, 4, 6, 1, 3, 5, 7}[i].</item>
/// <item><c>qzeros</c> int32 [G, N/8], the same nibble order, real zero points (no off-by-one, unlike GPTQ v1).</item>
/// <item><c>scales</c> f16 bits or f32 [G, N].</item>
/// </list>
/// </remarks>
/// <example>
/// <code>
/// var t = new AwqTensors(k: 4096, n: 11008, groupSize: 128, qweight, qzeros, scalesF16Bits);
/// using Int4Weight w = Int4Weight.ImportAwq(ctx, t);
/// </code>
/// </example>
public sealed class AwqTensors
{
    /// <summary>Creates an AWQ tensor bundle with fp16 scales (their raw bits).</summary>
    /// <param name="k">Input features K (rows of W).</param>
    /// <param name="n">Output features N (columns of W), a multiple of 8.</param>
    /// <param name="groupSize">32, 64 or 128; 0 for one group per column.</param>
    /// <param name="qWeight">int32 [K, N/8].</param>
    /// <param name="qZeros">int32 [G, N/8].</param>
    /// <param name="scales">fp16 bits [G, N].</param>
    /// <exception cref="ArgumentException">A length does not match the shape, a dimension or group size is invalid, or a scale is NaN/Inf.</exception>
    public AwqTensors(int k, int n, int groupSize, ReadOnlyMemory<int> qWeight, ReadOnlyMemory<int> qZeros,
        ReadOnlyMemory<ushort> scales)
        : this(k, n, groupSize, qWeight, qZeros)
    {
        Int4Checks.Scales(scales.Span, Groups, n, nameof(scales));
        ScalesF16 = scales;
    }

    /// <summary>Creates an AWQ tensor bundle with f32 scales (rounded to fp16 on import).</summary>
    /// <param name="k">Input features K (rows of W).</param>
    /// <param name="n">Output features N (columns of W), a multiple of 8.</param>
    /// <param name="groupSize">32, 64 or 128; 0 for one group per column.</param>
    /// <param name="qWeight">int32 [K, N/8].</param>
    /// <param name="qZeros">int32 [G, N/8].</param>
    /// <param name="scales">f32 [G, N], finite and within the fp16 range.</param>
    /// <exception cref="ArgumentException">A length does not match the shape, a dimension or group size is invalid, or a scale is NaN/Inf or outside the fp16 range.</exception>
    public AwqTensors(int k, int n, int groupSize, ReadOnlyMemory<int> qWeight, ReadOnlyMemory<int> qZeros,
        ReadOnlyMemory<float> scales)
        : this(k, n, groupSize, qWeight, qZeros)
    {
        Int4Checks.Scales(scales.Span, Groups, n, nameof(scales));
        ScalesF32 = scales;
    }

    private AwqTensors(int k, int n, int groupSize, ReadOnlyMemory<int> qWeight, ReadOnlyMemory<int> qZeros)
    {
        Int4Checks.Dimension(k, nameof(k));
        Int4Checks.Dimension(n, nameof(n));
        if (n % 8 != 0)
            throw new ArgumentException($"n must be a multiple of 8 (AWQ packs 8 columns per int32), got {n}", nameof(n));
        Int4Checks.GroupSize(groupSize, nameof(groupSize));
        int groups = Int4Checks.Groups(k, groupSize);
        Int4Checks.Length(qWeight.Length, (long)k * (n / 8), nameof(qWeight), $"[K, N/8] = [{k}, {n / 8}]");
        Int4Checks.Length(qZeros.Length, (long)groups * (n / 8), nameof(qZeros), $"[G, N/8] = [{groups}, {n / 8}]");
        K = k;
        N = n;
        GroupSize = groupSize;
        Groups = groups;
        QWeight = qWeight;
        QZeros = qZeros;
    }

    /// <summary>Input features K (rows of W).</summary>
    public int K { get; }

    /// <summary>Output features N (columns of W).</summary>
    public int N { get; }

    /// <summary>32, 64, 128, or 0 for one group per column.</summary>
    public int GroupSize { get; }

    /// <summary>Number of groups G: ceil(K / GroupSize), or 1 per-column.</summary>
    public int Groups { get; }

    /// <summary>int32 [K, N/8], AWQ nibble order.</summary>
    public ReadOnlyMemory<int> QWeight { get; }

    /// <summary>int32 [G, N/8], AWQ nibble order, real zero points.</summary>
    public ReadOnlyMemory<int> QZeros { get; }

    /// <summary>fp16 scale bits [G, N], or empty when the scales are f32.</summary>
    public ReadOnlyMemory<ushort> ScalesF16 { get; }

    /// <summary>f32 scales [G, N], or empty when the scales are fp16.</summary>
    public ReadOnlyMemory<float> ScalesF32 { get; }
}

/// <summary>The C#-side shape and value checks of the INT4 weight builders (each names its parameter).</summary>
internal static class Int4Checks
{
    public static void Dimension(int value, string paramName)
    {
        if (value < 1) throw new ArgumentOutOfRangeException(paramName, value, $"{paramName} must be >= 1, got {value}");
    }

    public static void GroupSize(int groupSize, string paramName)
    {
        if (groupSize is not (0 or 32 or 64 or 128))
            throw new ArgumentException($"{paramName} must be 32, 64, 128 or 0 (one group per column), got {groupSize}", paramName);
    }

    public static int Groups(int k, int groupSize) => groupSize == 0 ? 1 : (k + groupSize - 1) / groupSize;

    public static void Length(long actual, long expected, string paramName, string shape)
    {
        if (actual != expected)
            throw new ArgumentException($"{paramName} has {actual} elements; {shape} needs {expected}", paramName);
    }

    public static void Scales(ReadOnlySpan<ushort> scales, int groups, int n, string paramName)
    {
        Length(scales.Length, (long)groups * n, paramName, $"[G, N] = [{groups}, {n}]");
        for (int i = 0; i < scales.Length; i++)
        {
            if ((scales[i] & 0x7c00) == 0x7c00)
                throw new ArgumentException(
                    $"{paramName}[{i / n}][{i % n}] is {HalfBits.ToSingle(scales[i])} (fp16 bits 0x{scales[i]:x4}); scales must be finite",
                    paramName);
        }
    }

    public static void Scales(ReadOnlySpan<float> scales, int groups, int n, string paramName)
    {
        Length(scales.Length, (long)groups * n, paramName, $"[G, N] = [{groups}, {n}]");
        for (int i = 0; i < scales.Length; i++)
        {
            float s = scales[i];
            if (float.IsNaN(s) || float.IsInfinity(s))
                throw new ArgumentException($"{paramName}[{i / n}][{i % n}] is {s}; scales must be finite", paramName);
            if (Math.Abs(s) >= 65520f) // rounds to fp16 infinity
                throw new ArgumentException(
                    $"{paramName}[{i / n}][{i % n}] = {s} is outside the fp16 range (|scale| <= 65504)", paramName);
        }
    }

    public static void GIdx(ReadOnlySpan<int> gIdx, int k, int groups, int groupSize, string paramName)
    {
        Length(gIdx.Length, k, paramName, $"[K] = [{k}]");
        for (int i = 0; i < gIdx.Length; i++)
        {
            if ((uint)gIdx[i] >= (uint)groups)
                throw new ArgumentOutOfRangeException(paramName, gIdx[i],
                    $"{paramName}[{i}] = {gIdx[i]} is out of range [0, {groups}) (K {k}, group size {groupSize})");
        }
    }
}

/// <summary>fp16 bits to float without System.Half (netstandard2.0 has none).</summary>
internal static class HalfBits
{
    public static float ToSingle(ushort h)
    {
        int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
        float v = exp switch
        {
            0 => mant * (1f / 16777216f), // subnormal: mant * 2^-24
            0x1f => mant == 0 ? float.PositiveInfinity : float.NaN,
            _ => (float)((1 + mant / 1024.0) * Math.Pow(2, exp - 15)),
        };
        return sign == 1 ? -v : v;
    }
}
