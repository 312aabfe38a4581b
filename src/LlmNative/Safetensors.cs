// Reading Hugging Face safetensors checkpoints, so GPTQ / AWQ layers can be imported from the files users
// actually have (GptqTensors.FromSafetensors / AwqTensors.FromSafetensors) without a Python step.
//
// Why our own reader: the format is small (an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range relative to the data that follows, then the data), and the library
// targets netstandard2.0 with no JSON dependency. The file is treated as untrusted: the header length is
// checked against the file and a 100 MiB cap (the reference implementation's), every range against the data
// section, its length against dtype x shape (overflow-checked), the ranges against each other (no overlap),
// keys for duplicates; anything else is an InvalidDataException naming the file and the offending entry.
// Tensors are copied into managed arrays on demand (a layer at a time), so nothing handed out can outlive the
// file handle.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;

namespace LlmNative;

/// <summary>One tensor entry of a safetensors header.</summary>
public sealed class SafetensorsTensorInfo
{
    internal SafetensorsTensorInfo(string name, string dtype, long[] shape, long elementCount, long fileOffset, long byteLength)
    {
        Name = name;
        DType = dtype;
        Shape = shape;
        ElementCount = elementCount;
        FileOffset = fileOffset;
        ByteLength = byteLength;
    }

    /// <summary>The tensor's name in the header, e.g. <c>model.layers.0.self_attn.q_proj.qweight</c>.</summary>
    public string Name { get; }

    /// <summary>The dtype as the file spells it: <c>I32</c>, <c>F16</c>, <c>BF16</c>, <c>F32</c>, ...</summary>
    public string DType { get; }

    /// <summary>The shape, outermost dimension first (row-major, as PyTorch and NumPy).</summary>
    public IReadOnlyList<long> Shape { get; }

    /// <summary>The product of <see cref="Shape"/> (1 for a scalar).</summary>
    public long ElementCount { get; }

    /// <summary>Absolute byte offset of the data in the file.</summary>
    public long FileOffset { get; }

    /// <summary>Bytes of data: <see cref="ElementCount"/> × the dtype's size.</summary>
    public long ByteLength { get; }

    /// <summary>The shape as text, e.g. <c>[512, 4096]</c>.</summary>
    public string ShapeText => "[" + string.Join(", ", Shape.Select(d => d.ToString(CultureInfo.InvariantCulture))) + "]";

    /// <inheritdoc />
    public override string ToString() => $"{Name} {DType} {ShapeText}";
}

/// <summary>Tensors by name from safetensors data: one file (<see cref="SafetensorsFile"/>) or a sharded checkpoint (<see cref="SafetensorsCheckpoint"/>).</summary>
public interface ISafetensors
{
    /// <summary>Every tensor name.</summary>
    IReadOnlyCollection<string> Names { get; }

    /// <summary>Whether a tensor of this name exists.</summary>
    /// <param name="name">Tensor name.</param>
    bool Contains(string name);

    /// <summary>The header entry of a tensor.</summary>
    /// <param name="name">Tensor name.</param>
    /// <exception cref="ArgumentException">No tensor has this name (the message lists close names).</exception>
    SafetensorsTensorInfo GetTensor(string name);

    /// <summary>Copies a tensor's data into a new array. <typeparamref name="T"/> must match the dtype:
    /// <see cref="int"/> I32, <see cref="uint"/> U32, <see cref="short"/> I16, <see cref="ushort"/> U16 or the raw bits of F16 / BF16,
    /// <see cref="long"/> I64, <see cref="ulong"/> U64, <see cref="float"/> F32, <see cref="double"/> F64,
    /// <see cref="sbyte"/> I8, <see cref="byte"/> U8 / BOOL / F8_E4M3 / F8_E5M2 (raw bytes).</summary>
    /// <param name="name">Tensor name.</param>
    /// <exception cref="ArgumentException">No tensor has this name, or its dtype does not match <typeparamref name="T"/>.</exception>
    /// <exception cref="NotSupportedException">The tensor has more than <see cref="int.MaxValue"/> elements.</exception>
    /// <exception cref="IOException">The file could not be read.</exception>
    T[] Read<T>(string name) where T : unmanaged;
}

/// <summary>
/// A safetensors file opened for reading. The header is parsed and validated when the file is opened; tensor data
/// is read on demand with <see cref="Read{T}"/>. Thread-safe; dispose to close the file.
/// </summary>
/// <example>
/// <code>
/// using var file = SafetensorsFile.Open("model.safetensors");
/// var t = GptqTensors.FromSafetensors(file, "model.layers.0.mlp.down_proj", symmetric: true, GptqFormat.V1);
/// using Int4Weight w = Int4Weight.ImportGptq(ctx, t);
/// </code>
/// </example>
public sealed class SafetensorsFile : ISafetensors, IDisposable
{
    /// <summary>Largest header accepted (the reference implementation's limit).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    private readonly FileStream _stream;
    private readonly Dictionary<string, SafetensorsTensorInfo> _byName;
    private readonly object _lock = new();
    private bool _disposed;

    private SafetensorsFile(string path, FileStream stream, List<SafetensorsTensorInfo> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        _stream = stream;
        Tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        Metadata = metadata;
    }

    /// <summary>Opens and validates a safetensors file.</summary>
    /// <param name="path">Path of a <c>.safetensors</c> file.</param>
    /// <exception cref="ArgumentException"><paramref name="path"/> is null or empty.</exception>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not valid safetensors (the message names the problem).</exception>
    public static SafetensorsFile Open(string path)
    {
        if (string.IsNullOrEmpty(path)) throw new ArgumentException("path must name a .safetensors file", nameof(path));
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.RandomAccess);
        try
        {
            (List<SafetensorsTensorInfo> tensors, Dictionary<string, string> metadata) = ReadHeader(stream, path);
            return new SafetensorsFile(path, stream, tensors, metadata);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>The path the file was opened from.</summary>
    public string Path { get; }

    /// <summary>The tensors in header order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The header's <c>__metadata__</c> (string to string; empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <inheritdoc />
    public IReadOnlyCollection<string> Names => _byName.Keys;

    /// <inheritdoc />
    public bool Contains(string name) => name != null && _byName.ContainsKey(name);

    /// <inheritdoc />
    public SafetensorsTensorInfo GetTensor(string name)
    {
        Argument.NotNull(name, nameof(name));
        if (_byName.TryGetValue(name, out SafetensorsTensorInfo? info)) return info;
        throw new ArgumentException($"no tensor named '{name}' in {Path}{Safetensors.Suggest(name, _byName.Keys)}", nameof(name));
    }

    /// <inheritdoc />
    public T[] Read<T>(string name) where T : unmanaged
    {
        SafetensorsTensorInfo info = GetTensor(name);
        Safetensors.CheckType<T>(info, nameof(name));
        if (info.ElementCount > int.MaxValue)
            throw new NotSupportedException($"tensor '{name}' has {info.ElementCount} elements; arrays hold at most {int.MaxValue}");
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("safetensors data is little-endian; this process is big-endian");
        var result = new T[info.ElementCount];
        // Element slices of at most 1 MiB: a byte view of the whole array would overflow int for tensors of
        // 2 GiB and more (a 70B model's embedding), which the array itself can hold.
        int size = Safetensors.DTypeSize(info.DType), per = (1 << 20) / size;
        byte[] chunk = new byte[(int)Math.Min(info.ByteLength, 1 << 20)];
        lock (_lock)
        {
            if (_disposed) throw new ObjectDisposedException(nameof(SafetensorsFile), $"{Path} was closed");
            _stream.Position = info.FileOffset;
            for (int start = 0; start < result.Length; start += per)
            {
                Span<byte> dst = MemoryMarshal.AsBytes(result.AsSpan(start, Math.Min(per, result.Length - start)));
                for (int done = 0; done < dst.Length;)
                {
                    int n = _stream.Read(chunk, 0, dst.Length - done);
                    if (n <= 0) throw new EndOfStreamException($"{Path} ended inside tensor '{name}' (the file changed after it was opened?)");
                    chunk.AsSpan(0, n).CopyTo(dst.Slice(done));
                    done += n;
                }
            }
        }
        return result;
    }

    /// <summary>Closes the file.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            _stream.Dispose();
        }
    }

    private static (List<SafetensorsTensorInfo>, Dictionary<string, string>) ReadHeader(FileStream stream, string path)
    {
        long fileLength = stream.Length;
        if (fileLength < 8) throw Bad(path, $"the file has {fileLength} bytes; a safetensors file starts with an 8-byte header length");
        byte[] lenBytes = ReadExactly(stream, 8, path);
        ulong headerLen = 0;
        for (int i = 7; i >= 0; i--) headerLen = (headerLen << 8) | lenBytes[i];
        if (headerLen < 2 || headerLen > (ulong)MaxHeaderBytes)
            throw Bad(path, $"header length {headerLen} is outside [2, {MaxHeaderBytes}]");
        if (headerLen > (ulong)(fileLength - 8))
            throw Bad(path, $"header length {headerLen} runs past the end of the file ({fileLength} bytes)");
        byte[] header = ReadExactly(stream, (int)headerLen, path);
        long dataStart = 8 + (long)headerLen, dataLength = fileLength - dataStart;

        if (header[0] != (byte)'{') throw Bad(path, "the header does not start with '{'");
        object? root;
        try
        {
            root = new MiniJson(header).ParseDocument();
        }
        catch (FormatException e)
        {
            throw Bad(path, "the header is not valid JSON: " + e.Message);
        }
        if (root is not Dictionary<string, object?> entries) throw Bad(path, "the header is not a JSON object");

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var tensors = new List<SafetensorsTensorInfo>(entries.Count);
        foreach (KeyValuePair<string, object?> e in entries)
        {
            if (e.Key == "__metadata__")
            {
                if (e.Value is not Dictionary<string, object?> meta) throw Bad(path, "__metadata__ is not an object");
                foreach (KeyValuePair<string, object?> m in meta)
                {
                    if (m.Value is not string s) throw Bad(path, $"__metadata__ value '{m.Key}' is not a string");
                    metadata[m.Key] = s;
                }
                continue;
            }
            tensors.Add(ParseEntry(e.Key, e.Value, dataStart, dataLength, path));
        }

        // No two tensors may share bytes (zero-length tensors share none).
        SafetensorsTensorInfo? prev = null;
        foreach (SafetensorsTensorInfo t in tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.FileOffset))
        {
            if (prev != null && t.FileOffset < prev.FileOffset + prev.ByteLength)
                throw Bad(path, $"tensors '{prev.Name}' and '{t.Name}' overlap");
            prev = t;
        }
        return (tensors, metadata);
    }

    private static SafetensorsTensorInfo ParseEntry(string name, object? value, long dataStart, long dataLength, string path)
    {
        if (value is not Dictionary<string, object?> fields) throw Bad(path, $"entry '{name}' is not an object");
        if (!fields.TryGetValue("dtype", out object? dt) || dt is not string dtype) throw Bad(path, $"entry '{name}' has no string 'dtype'");
        int size = Safetensors.DTypeSize(dtype);
        if (size == 0) throw Bad(path, $"tensor '{name}' has dtype '{dtype}', which this reader does not know");
        if (!fields.TryGetValue("shape", out object? sh) || sh is not List<object?> shapeList)
            throw Bad(path, $"tensor '{name}' has no array 'shape'");
        if (!fields.TryGetValue("data_offsets", out object? off) || off is not List<object?> offsets || offsets.Count != 2)
            throw Bad(path, $"tensor '{name}' has no 'data_offsets' pair");
        var shape = new long[shapeList.Count];
        long count = 1, bytes;
        try
        {
            for (int i = 0; i < shape.Length; i++)
            {
                shape[i] = Integer(shapeList[i], $"tensor '{name}' shape[{i}]", path);
                count = checked(count * shape[i]);
            }
            bytes = checked(count * size);
        }
        catch (OverflowException)
        {
            throw Bad(path, $"tensor '{name}' shape [{string.Join(", ", shapeList)}] overflows 64 bits");
        }
        long begin = Integer(offsets[0], $"tensor '{name}' data_offsets[0]", path);
        long end = Integer(offsets[1], $"tensor '{name}' data_offsets[1]", path);
        if (begin > end || end > dataLength)
            throw Bad(path, $"tensor '{name}' data_offsets [{begin}, {end}] lie outside the {dataLength}-byte data section");
        if (end - begin != bytes)
            throw Bad(path, $"tensor '{name}' has {end - begin} bytes; {dtype} x {count} elements needs {bytes}");
        return new SafetensorsTensorInfo(name, dtype, shape, count, dataStart + begin, bytes);
    }

    private static long Integer(object? v, string what, string path)
    {
        if (v is MiniJson.Number num && num.Text.All(c => c >= '0' && c <= '9') &&
            long.TryParse(num.Text, NumberStyles.None, CultureInfo.InvariantCulture, out long x))
            return x;
        throw Bad(path, $"{what} is not a non-negative integer");
    }

    private static byte[] ReadExactly(FileStream stream, int count, string path)
    {
        byte[] buf = new byte[count];
        for (int done = 0; done < count;)
        {
            int n = stream.Read(buf, done, count - done);
            if (n <= 0) throw Bad(path, "the file ended inside its header");
            done += n;
        }
        return buf;
    }

    private static InvalidDataException Bad(string path, string what) => new($"{path}: not a valid safetensors file: {what}");
}

/// <summary>
/// A checkpoint sharded over several safetensors files (<c>model-00001-of-00004.safetensors</c>, ...) with the
/// Hugging Face index <c>model.safetensors.index.json</c> (<c>"weight_map": {tensor: file}</c>), or a single
/// <c>model.safetensors</c>. Shards are opened when first used. Thread-safe; dispose to close them.
/// </summary>
/// <example>
/// <code>
/// using var ckpt = SafetensorsCheckpoint.Open("/models/Llama-3-8B-GPTQ");   // directory, index or file
/// var t = GptqTensors.FromSafetensors(ckpt, "model.layers.31.mlp.up_proj", symmetric: true, GptqFormat.V1);
/// </code>
/// </example>
public sealed class SafetensorsCheckpoint : ISafetensors, IDisposable
{
    private readonly Dictionary<string, string> _weightMap; // tensor -> shard path
    private readonly Dictionary<string, SafetensorsFile> _open = new(StringComparer.Ordinal);
    private readonly object _lock = new();
    private bool _disposed;

    private SafetensorsCheckpoint(Dictionary<string, string> weightMap, IReadOnlyList<string> shards)
    {
        _weightMap = weightMap;
        Shards = shards;
    }

    /// <summary>
    /// Opens a checkpoint: a directory (its <c>model.safetensors.index.json</c>, else its only <c>*.safetensors</c> file),
    /// an index file, or one <c>.safetensors</c> file.
    /// </summary>
    /// <param name="path">Directory, <c>*.index.json</c> or <c>*.safetensors</c>.</param>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty, or a directory holds no index and not exactly one safetensors file.</exception>
    /// <exception cref="FileNotFoundException">The path, or a shard the index names, does not exist.</exception>
    /// <exception cref="InvalidDataException">The index or a shard is malformed, or a shard lacks a tensor the index assigns to it.</exception>
    public static SafetensorsCheckpoint Open(string path)
    {
        if (string.IsNullOrEmpty(path)) throw new ArgumentException("path must name a directory, an index or a .safetensors file", nameof(path));
        if (Directory.Exists(path))
        {
            string index = System.IO.Path.Combine(path, "model.safetensors.index.json");
            if (File.Exists(index)) return OpenIndex(index);
            string[] files = Directory.GetFiles(path, "*.safetensors");
            if (files.Length != 1)
                throw new ArgumentException(
                    $"{path} has no model.safetensors.index.json and {files.Length} .safetensors files; name the index or one file", nameof(path));
            path = files[0];
        }
        if (!File.Exists(path)) throw new FileNotFoundException($"no such file: {path}", path);
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return OpenIndex(path);
        var file = SafetensorsFile.Open(path);
        var ckpt = new SafetensorsCheckpoint(file.Tensors.ToDictionary(t => t.Name, _ => file.Path, StringComparer.Ordinal), new[] { file.Path });
        ckpt._open[file.Path] = file;
        return ckpt;
    }

    private static SafetensorsCheckpoint OpenIndex(string indexPath)
    {
        object? root;
        try
        {
            root = new MiniJson(File.ReadAllBytes(indexPath)).ParseDocument();
        }
        catch (FormatException e)
        {
            throw new InvalidDataException($"{indexPath}: not valid JSON: {e.Message}");
        }
        if (root is not Dictionary<string, object?> obj || !obj.TryGetValue("weight_map", out object? wm) ||
            wm is not Dictionary<string, object?> map)
            throw new InvalidDataException($"{indexPath}: no \"weight_map\" object (tensor name -> shard file)");
        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (KeyValuePair<string, object?> e in map)
        {
            if (e.Value is not string file || file.Length == 0 || System.IO.Path.IsPathRooted(file) || file.Contains(".."))
                throw new InvalidDataException($"{indexPath}: weight_map entry '{e.Key}' is not a file name inside the checkpoint directory");
            weightMap[e.Key] = System.IO.Path.Combine(dir, file);
        }
        string[] shards = weightMap.Values.Distinct(StringComparer.Ordinal).OrderBy(s => s, StringComparer.Ordinal).ToArray();
        foreach (string s in shards)
            if (!File.Exists(s)) throw new FileNotFoundException($"{indexPath} names shard {s}, which does not exist", s);
        return new SafetensorsCheckpoint(weightMap, shards);
    }

    /// <summary>The shard files, sorted.</summary>
    public IReadOnlyList<string> Shards { get; }

    /// <inheritdoc />
    public IReadOnlyCollection<string> Names => _weightMap.Keys;

    /// <inheritdoc />
    public bool Contains(string name) => name != null && _weightMap.ContainsKey(name);

    /// <inheritdoc />
    public SafetensorsTensorInfo GetTensor(string name) => Holding(name).GetTensor(name);

    /// <inheritdoc />
    public T[] Read<T>(string name) where T : unmanaged => Holding(name).Read<T>(name);

    /// <summary>Closes every shard opened so far.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            foreach (SafetensorsFile f in _open.Values) f.Dispose();
            _open.Clear();
        }
    }

    // The shard the index assigns the tensor to, checked to hold it.
    private SafetensorsFile Holding(string name)
    {
        SafetensorsFile file = ShardOf(name);
        if (!file.Contains(name))
            throw new InvalidDataException($"the index assigns tensor '{name}' to {file.Path}, which does not hold it");
        return file;
    }

    private SafetensorsFile ShardOf(string name)
    {
        Argument.NotNull(name, nameof(name));
        if (!_weightMap.TryGetValue(name, out string? shard))
            throw new ArgumentException($"no tensor named '{name}' in the checkpoint{Safetensors.Suggest(name, _weightMap.Keys)}", nameof(name));
        lock (_lock)
        {
            if (_disposed) throw new ObjectDisposedException(nameof(SafetensorsCheckpoint));
            if (!_open.TryGetValue(shard, out SafetensorsFile? file))
            {
                file = SafetensorsFile.Open(shard);
                _open[shard] = file;
            }
            return file;
        }
    }
}

/// <summary>Shared pieces of the safetensors readers and the checkpoint importers.</summary>
internal static class Safetensors
{
    /// <summary>Bytes per element of a dtype, 0 for one this reader does not know.</summary>
    public static int DTypeSize(string dtype) => dtype switch
    {
        "BOOL" or "U8" or "I8" or "F8_E4M3" or "F8_E5M2" => 1,
        "U16" or "I16" or "F16" or "BF16" => 2,
        "U32" or "I32" or "F32" => 4,
        "U64" or "I64" or "F64" => 8,
        _ => 0,
    };

    /// <summary>Throws unless an element of type T is how the tensor's dtype is read.</summary>
    public static void CheckType<T>(SafetensorsTensorInfo info, string paramName) where T : unmanaged
    {
        string[] ok = typeof(T) == typeof(int) ? new[] { "I32" }
            : typeof(T) == typeof(uint) ? new[] { "U32" }
            : typeof(T) == typeof(short) ? new[] { "I16" }
            : typeof(T) == typeof(ushort) ? new[] { "U16", "F16", "BF16" }
            : typeof(T) == typeof(long) ? new[] { "I64" }
            : typeof(T) == typeof(ulong) ? new[] { "U64" }
            : typeof(T) == typeof(float) ? new[] { "F32" }
            : typeof(T) == typeof(double) ? new[] { "F64" }
            : typeof(T) == typeof(sbyte) ? new[] { "I8" }
            : typeof(T) == typeof(byte) ? new[] { "U8", "BOOL", "F8_E4M3", "F8_E5M2" }
            : Array.Empty<string>();
        if (Array.IndexOf(ok, info.DType) < 0)
            throw new ArgumentException(
                $"tensor '{info.Name}' has dtype {info.DType}; Read<{typeof(T).Name}> reads " +
                (ok.Length == 0 ? "no dtype" : string.Join(" / ", ok)), paramName);
    }

    /// <summary>"; closest: ..." with up to three names sharing the longest prefix with <paramref name="name"/>, then the
    /// longest suffix (so a wrong layer path still points at the tensor of the same kind).</summary>
    public static string Suggest(string name, IEnumerable<string> names)
    {
        static int Prefix(string a, string b)
        {
            int i = 0;
            while (i < a.Length && i < b.Length && a[i] == b[i]) i++;
            return i;
        }
        static int Suffix(string a, string b)
        {
            int i = 0;
            while (i < a.Length && i < b.Length && a[a.Length - 1 - i] == b[b.Length - 1 - i]) i++;
            return i;
        }
        string[] best = names.Select(n => (n, p: Prefix(n, name), s: Suffix(n, name))).Where(x => x.p > 0)
            .OrderByDescending(x => x.p).ThenByDescending(x => x.s).ThenBy(x => x.n, StringComparer.Ordinal)
            .Take(3).Select(x => x.n).ToArray();
        return best.Length == 0 ? "" : "; closest: " + string.Join(", ", best);
    }

    /// <summary>The 2-D shape of a tensor that must have one, as (rows, columns).</summary>
    public static (long Rows, long Cols) Matrix(SafetensorsTensorInfo t, string what, string paramName)
    {
        if (t.Shape.Count != 2) throw new ArgumentException($"{what} '{t.Name}' has shape {t.ShapeText}; expected 2-D", paramName);
        return (t.Shape[0], t.Shape[1]);
    }

    /// <summary>The int value of a dimension that the importers pass on as int.</summary>
    public static int Dim(long value, string what, string paramName) =>
        value is >= 1 and <= int.MaxValue ? (int)value : throw new ArgumentException($"{what} = {value} is outside [1, {int.MaxValue}]", paramName);
}

/// <summary>
/// A strict JSON reader for safetensors headers and index files: objects (duplicate keys rejected), arrays,
/// strings (all escapes, surrogate pairs), numbers (kept as text), true / false / null. Depth capped at 64.
/// </summary>
internal sealed class MiniJson
{
    public sealed class Number
    {
        public Number(string text) => Text = text;

        public string Text { get; }

        public override string ToString() => Text;
    }

    private readonly byte[] _s;
    private int _i;
    private int _depth;

    public MiniJson(byte[] s) => _s = s;

    /// <summary>One value, then only whitespace (safetensors pads headers with spaces).</summary>
    public object? ParseDocument()
    {
        object? v = Value();
        Ws();
        if (_i != _s.Length) throw Err("text after the JSON value");
        return v;
    }

    private object? Value()
    {
        Ws();
        if (_i >= _s.Length) throw Err("unexpected end");
        byte c = _s[_i];
        switch (c)
        {
            case (byte)'{': return Obj();
            case (byte)'[': return Arr();
            case (byte)'"': return Str();
            case (byte)'t': Lit("true"); return true;
            case (byte)'f': Lit("false"); return false;
            case (byte)'n': Lit("null"); return null;
            default:
                if (c == '-' || (c >= '0' && c <= '9')) return Num();
                throw Err($"unexpected character '{(char)c}'");
        }
    }

    private Dictionary<string, object?> Obj()
    {
        if (++_depth > 64) throw Err("nesting deeper than 64");
        _i++;
        var d = new Dictionary<string, object?>(StringComparer.Ordinal);
        Ws();
        if (Peek() == '}')
        {
            _i++;
            _depth--;
            return d;
        }
        while (true)
        {
            Ws();
            if (Peek() != '"') throw Err("expected a string key");
            string key = Str();
            Ws();
            Expect(':');
            object? v = Value();
            if (d.ContainsKey(key)) throw Err($"duplicate key '{key}'");
            d[key] = v;
            Ws();
            if (Peek() == ',')
            {
                _i++;
                continue;
            }
            Expect('}');
            _depth--;
            return d;
        }
    }

    private List<object?> Arr()
    {
        if (++_depth > 64) throw Err("nesting deeper than 64");
        _i++;
        var a = new List<object?>();
        Ws();
        if (Peek() == ']')
        {
            _i++;
            _depth--;
            return a;
        }
        while (true)
        {
            a.Add(Value());
            Ws();
            if (Peek() == ',')
            {
                _i++;
                continue;
            }
            Expect(']');
            _depth--;
            return a;
        }
    }

    private string Str()
    {
        _i++; // opening quote
        var sb = new StringBuilder();
        int runStart = _i;
        while (true)
        {
            if (_i >= _s.Length) throw Err("unterminated string");
            byte c = _s[_i];
            if (c == '"')
            {
                sb.Append(Utf8(runStart, _i));
                _i++;
                return sb.ToString();
            }
            if (c < 0x20) throw Err("control character in a string");
            if (c != '\\')
            {
                _i++;
                continue;
            }
            sb.Append(Utf8(runStart, _i));
            _i++;
            if (_i >= _s.Length) throw Err("unterminated escape");
            byte e = _s[_i++];
            switch (e)
            {
                case (byte)'"': sb.Append('"'); break;
                case (byte)'\\': sb.Append('\\'); break;
                case (byte)'/': sb.Append('/'); break;
                case (byte)'b': sb.Append('\b'); break;
                case (byte)'f': sb.Append('\f'); break;
                case (byte)'n': sb.Append('\n'); break;
                case (byte)'r': sb.Append('\r'); break;
                case (byte)'t': sb.Append('\t'); break;
                case (byte)'u': sb.Append(Hex4()); break; // surrogate halves append in turn and pair up
                default: throw Err($"invalid escape '\\{(char)e}'");
            }
            runStart = _i;
        }
    }

    private string Utf8(int from, int to)
    {
        try
        {
            return new UTF8Encoding(false, true).GetString(_s, from, to - from);
        }
        catch (DecoderFallbackException)
        {
            throw Err("invalid UTF-8 in a string");
        }
    }

    private char Hex4()
    {
        if (_i + 4 > _s.Length) throw Err("short \\u escape");
        int v = 0;
        for (int k = 0; k < 4; k++)
        {
            int c = _s[_i++];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) throw Err("invalid \\u escape");
            v = v * 16 + d;
        }
        return (char)v;
    }

    private Number Num()
    {
        int start = _i;
        if (Peek() == '-') _i++;
        if (Peek() == '0') _i++;
        else if (Digits() == 0) throw Err("invalid number");
        if (Peek() == '.')
        {
            _i++;
            if (Digits() == 0) throw Err("invalid number");
        }
        if (Peek() is 'e' or 'E')
        {
            _i++;
            if (Peek() is '+' or '-') _i++;
            if (Digits() == 0) throw Err("invalid number");
        }
        return new Number(Encoding.ASCII.GetString(_s, start, _i - start));
    }

    private int Digits()
    {
        int n = 0;
        while (_i < _s.Length && _s[_i] >= '0' && _s[_i] <= '9')
        {
            _i++;
            n++;
        }
        return n;
    }

    private void Lit(string word)
    {
        for (int k = 0; k < word.Length; k++)
            if (_i + k >= _s.Length || _s[_i + k] != word[k]) throw Err("invalid literal");
        _i += word.Length;
    }

    private void Ws()
    {
        while (_i < _s.Length && _s[_i] is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r') _i++;
    }

    private char Peek() => _i < _s.Length ? (char)_s[_i] : '\0';

    private void Expect(char c)
    {
        if (Peek() != c) throw Err($"expected '{c}'");
        _i++;
    }

    private FormatException Err(string what) => new($"{what} at byte {_i}");
}
