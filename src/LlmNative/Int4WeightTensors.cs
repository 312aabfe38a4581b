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

    /// <summary>
    /// Reads one GPTQ layer from a safetensors checkpoint: <c>{prefix}.qweight</c> (I32 [K/8, N]), <c>{prefix}.scales</c>
    /// (F16 or F32 [G, N]), <c>{prefix}.qzeros</c> (I32 [G, N/8]; optional when <paramref name="symmetric"/>) and, when
    /// present, <c>{prefix}.g_idx</c> (I32 or I64 [K]). K and N come from the shapes. The arrays are copies: the file
    /// may be closed afterwards.
    /// </summary>
    /// <param name="source">A <see cref="SafetensorsFile"/> or <see cref="SafetensorsCheckpoint"/>.</param>
    /// <param name="prefix">The layer's name, e.g. <c>model.layers.0.self_attn.q_proj</c> (a trailing '.' is ignored).</param>
    /// <param name="symmetric"><c>quantize_config.json</c> "sym".</param>
    /// <param name="format"><c>quantize_config.json</c> "checkpoint_format": "gptq" or absent → <see cref="GptqFormat.V1"/>, "gptq_v2" → <see cref="GptqFormat.V2"/>.</param>
    /// <param name="groupSize"><c>quantize_config.json</c> "group_size" (−1: per column); null infers it from the shapes:
    /// one scale row is per-column, otherwise the one of 32 / 64 / 128 with ceil(K / group) = G.</param>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> or <paramref name="prefix"/> is null.</exception>
    /// <exception cref="ArgumentException">A tensor is missing, has the wrong dtype or shape, the group size cannot be
    /// inferred, or a value fails the constructor's checks (the message names the tensor).</exception>
    /// <example>
    /// <code>
    /// using var ckpt = SafetensorsCheckpoint.Open("/models/Llama-3-8B-Instruct-GPTQ");
    /// var t = GptqTensors.FromSafetensors(ckpt, "model.layers.0.mlp.down_proj", symmetric: true, GptqFormat.V1);
    /// using Int4Weight w = Int4Weight.ImportGptq(ctx, t);
    /// </code>
    /// </example>
    public static GptqTensors FromSafetensors(ISafetensors source, string prefix, bool symmetric, GptqFormat format,
        int? groupSize = null)
    {
        string p = Int4Checkpoint.Prefix(source, prefix);
        SafetensorsTensorInfo qw = Int4Checkpoint.Need(source, p, "qweight", nameof(prefix));
        SafetensorsTensorInfo sc = Int4Checkpoint.Need(source, p, "scales", nameof(prefix));
        (long rows8, long nCols) = Safetensors.Matrix(qw, "qweight", nameof(prefix));
        int k = Safetensors.Dim(rows8 * 8, $"K (8 x {qw.Name} rows)", nameof(prefix));
        int n = Safetensors.Dim(nCols, $"N ({qw.Name} columns)", nameof(prefix));
        (long g, long scCols) = Safetensors.Matrix(sc, "scales", nameof(prefix));
        if (scCols != n)
            throw new ArgumentException($"{sc.Name} has shape {sc.ShapeText}; GPTQ scales are [G, N] with N = {n} from {qw.Name} {qw.ShapeText}", nameof(prefix));
        int gs = Int4Checkpoint.GroupSize(groupSize, k, g, sc, nameof(prefix), nameof(groupSize));
        Int4Checkpoint.ScaleType(sc, nameof(prefix));
        int[] qweight = Int4Checkpoint.ReadI32(source, qw, nameof(prefix));
        int[] qzeros = source.Contains(p + ".qzeros") ? Int4Checkpoint.ReadI32(source, source.GetTensor(p + ".qzeros"), nameof(prefix))
            : symmetric ? Array.Empty<int>()
            : throw new ArgumentException($"no tensor '{p}.qzeros': an asymmetric GPTQ layer needs its zero points", nameof(prefix));
        int[] gIdx = source.Contains(p + ".g_idx") ? Int4Checkpoint.ReadIndex(source, source.GetTensor(p + ".g_idx"), nameof(prefix)) : Array.Empty<int>();
        return Int4Checkpoint.Build(p, nameof(prefix), () => sc.DType switch
        {
            "F16" => new GptqTensors(k, n, gs, symmetric, format, qweight, qzeros, source.Read<ushort>(sc.Name), gIdx),
            _ => new GptqTensors(k, n, gs, symmetric, format, qweight, qzeros, source.Read<float>(sc.Name), gIdx),
        });
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

    /// <summary>
    /// Reads one AWQ (GEMM version) layer from a safetensors checkpoint: <c>{prefix}.qweight</c> (I32 [K, N/8]),
    /// <c>{prefix}.qzeros</c> (I32 [G, N/8]) and <c>{prefix}.scales</c> (F16 or F32 [G, N]). K and N come from the
    /// shapes. The arrays are copies: the file may be closed afterwards.
    /// </summary>
    /// <param name="source">A <see cref="SafetensorsFile"/> or <see cref="SafetensorsCheckpoint"/>.</param>
    /// <param name="prefix">The layer's name, e.g. <c>model.layers.0.self_attn.q_proj</c> (a trailing '.' is ignored).</param>
    /// <param name="groupSize">The checkpoint's "q_group_size" / "group_size"; null infers it from the shapes as
    /// <see cref="GptqTensors.FromSafetensors"/> does.</param>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> or <paramref name="prefix"/> is null.</exception>
    /// <exception cref="ArgumentException">A tensor is missing, has the wrong dtype or shape, the group size cannot be
    /// inferred, or a value fails the constructor's checks (the message names the tensor).</exception>
    public static AwqTensors FromSafetensors(ISafetensors source, string prefix, int? groupSize = null)
    {
        string p = Int4Checkpoint.Prefix(source, prefix);
        SafetensorsTensorInfo qw = Int4Checkpoint.Need(source, p, "qweight", nameof(prefix));
        SafetensorsTensorInfo qz = Int4Checkpoint.Need(source, p, "qzeros", nameof(prefix));
        SafetensorsTensorInfo sc = Int4Checkpoint.Need(source, p, "scales", nameof(prefix));
        (long kRows, long packedCols) = Safetensors.Matrix(qw, "qweight", nameof(prefix));
        (long g, long nCols) = Safetensors.Matrix(sc, "scales", nameof(prefix));
        int k = Safetensors.Dim(kRows, $"K ({qw.Name} rows)", nameof(prefix));
        int n = Safetensors.Dim(nCols, $"N ({sc.Name} columns)", nameof(prefix));
        if (packedCols * 8 != n)
            throw new ArgumentException(
                $"{qw.Name} has shape {qw.ShapeText}; AWQ qweight is [K, N/8] with N = {n} from {sc.Name} {sc.ShapeText} (a GPTQ layer? its qweight is [K/8, N])",
                nameof(prefix));
        int gs = Int4Checkpoint.GroupSize(groupSize, k, g, sc, nameof(prefix), nameof(groupSize));
        Int4Checkpoint.ScaleType(sc, nameof(prefix));
        int[] qweight = Int4Checkpoint.ReadI32(source, qw, nameof(prefix)), qzeros = Int4Checkpoint.ReadI32(source, qz, nameof(prefix));
        return Int4Checkpoint.Build(p, nameof(prefix), () => sc.DType switch
        {
            "F16" => new AwqTensors(k, n, gs, qweight, qzeros, source.Read<ushort>(sc.Name)),
            _ => new AwqTensors(k, n, gs, qweight, qzeros, source.Read<float>(sc.Name)),
        });
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

/// <summary>Tensor lookup for the checkpoint importers (GptqTensors / AwqTensors.FromSafetensors).</summary>
internal static class Int4Checkpoint
{
    public static string Prefix(ISafetensors source, string prefix)
    {
        Argument.NotNull(source, nameof(source));
        Argument.NotNull(prefix, nameof(prefix));
        string p = prefix.EndsWith(".", StringComparison.Ordinal) ? prefix.Substring(0, prefix.Length - 1) : prefix;
        if (p.Length == 0) throw new ArgumentException("prefix must name a layer, e.g. model.layers.0.mlp.down_proj", nameof(prefix));
        return p;
    }

    public static SafetensorsTensorInfo Need(ISafetensors source, string prefix, string suffix, string paramName)
    {
        string name = prefix + "." + suffix;
        if (!source.Contains(name))
            throw new ArgumentException($"no tensor '{name}' (prefix '{prefix}'){Safetensors.Suggest(name, source.Names)}", paramName);
        return source.GetTensor(name);
    }

    public static int[] ReadI32(ISafetensors source, SafetensorsTensorInfo t, string paramName)
    {
        if (t.DType != "I32") throw new ArgumentException($"{t.Name} has dtype {t.DType}; expected I32 (packed nibbles)", paramName);
        return source.Read<int>(t.Name);
    }

    // g_idx: I32 as written by AutoGPTQ / GPTQModel; I64 (a torch.long saved as is) converted, range-checked.
    public static int[] ReadIndex(ISafetensors source, SafetensorsTensorInfo t, string paramName)
    {
        if (t.Shape.Count != 1) throw new ArgumentException($"{t.Name} has shape {t.ShapeText}; g_idx is 1-D [K]", paramName);
        if (t.DType == "I32") return source.Read<int>(t.Name);
        if (t.DType != "I64") throw new ArgumentException($"{t.Name} has dtype {t.DType}; g_idx must be I32 or I64", paramName);
        long[] wide = source.Read<long>(t.Name);
        var r = new int[wide.Length];
        for (int i = 0; i < wide.Length; i++)
            r[i] = wide[i] is >= int.MinValue and <= int.MaxValue ? (int)wide[i]
                : throw new ArgumentOutOfRangeException(paramName, wide[i], $"{t.Name}[{i}] = {wide[i]} is not a group index");
        return r;
    }

    // The group size given (checked against the scales' G) or inferred from G.
    public static int GroupSize(int? given, int k, long groups, SafetensorsTensorInfo scales, string prefixParam, string groupParam)
    {
        if (given is not int gs) return InferGroupSize(k, groups, scales, prefixParam);
        if (gs == -1) gs = 0;
        Int4Checks.GroupSize(gs, groupParam);
        if (Int4Checks.Groups(k, gs) != groups)
            throw new ArgumentException(
                $"{groupParam} {given} gives {Int4Checks.Groups(k, gs)} groups for K = {k}, but {scales.Name} {scales.ShapeText} has {groups}",
                groupParam);
        return gs;
    }

    // Scales are read as fp16 bits or f32; checked before any tensor is read.
    public static void ScaleType(SafetensorsTensorInfo scales, string paramName)
    {
        if (scales.DType is not ("F16" or "F32"))
            throw new ArgumentException($"{scales.Name} has dtype {scales.DType}; scales must be F16 or F32", paramName);
    }

    // The bundle's constructor, its value checks (finite scales, zero points, g_idx range) reported with the layer.
    public static T Build<T>(string prefix, string paramName, Func<T> make)
    {
        try
        {
            return make();
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"layer '{prefix}': {e.Message}", paramName, e);
        }
    }

    public static int InferGroupSize(int k, long groups, SafetensorsTensorInfo scales, string paramName)
    {
        if (groups == 1) return 0;
        foreach (int gs in new[] { 32, 64, 128 })
            if ((k + gs - 1) / gs == groups) return gs;
        throw new ArgumentException(
            $"{scales.Name} has {groups} rows; no group size of 32 / 64 / 128 gives ceil(K / group) = {groups} for K = {k} (pass groupSize)",
            paramName);
    }
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
