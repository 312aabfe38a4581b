using System;
using System.Collections.Generic;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;
using static LlmNative.Tests.Int4TestData;

namespace LlmNative.Tests;

/// <summary>How <see cref="SafetensorsWriter.GptqLayer"/> stores g_idx.</summary>
internal enum GIdxStore
{
    None,
    I32,
    I64,
}

/// <summary>
/// Writes safetensors files byte by byte from the format's description (8-byte little-endian header length, JSON
/// header padded with spaces to 8 bytes as the Python writer does, then the data), independently of the reader.
/// </summary>
internal static class SafetensorsWriter
{
    /// <summary>A tensor for <see cref="Build"/>: its header fields and data bytes; Offsets overrides the packed offsets.</summary>
    internal sealed record Entry(string Name, string DType, long[] Shape, byte[] Data, string? Offsets = null, string? RawJson = null);

    internal static Entry E<T>(string name, string dtype, long[] shape, T[] values) where T : unmanaged =>
        new(name, dtype, shape, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    internal static string Quote(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char c in s)
        {
            if (c == '"' || c == '\\') sb.Append('\\').Append(c);
            else if (c < 0x20 || c > 0x7e) sb.Append($"\\u{(int)c:x4}");
            else sb.Append(c);
        }
        return sb.Append('"').ToString();
    }

    /// <summary>Header JSON (padded with spaces to 8 bytes, as the Python writer does) + data in entry order.</summary>
    internal static byte[] Build(IEnumerable<Entry> entries, IDictionary<string, string>? metadata = null, string? rawHeader = null)
    {
        var list = entries.ToList();
        string header;
        if (rawHeader != null)
        {
            header = rawHeader;
        }
        else
        {
            var parts = new List<string>();
            if (metadata != null)
                parts.Add("\"__metadata__\": {" + string.Join(", ", metadata.Select(m => Quote(m.Key) + ": " + Quote(m.Value))) + "}");
            long at = 0;
            foreach (Entry e in list)
            {
                string offsets = e.Offsets ?? $"[{at}, {at + e.Data.Length}]";
                at += e.Data.Length;
                parts.Add(Quote(e.Name) + ": " + (e.RawJson ??
                    $"{{\"dtype\": {Quote(e.DType)}, \"shape\": [{string.Join(", ", e.Shape)}], \"data_offsets\": {offsets}}}"));
            }
            header = "{" + string.Join(", ", parts) + "}";
        }
        byte[] h = Encoding.UTF8.GetBytes(header);
        int padded = (h.Length + 7) / 8 * 8;
        var file = new List<byte>();
        file.AddRange(BitConverter.GetBytes((ulong)padded));
        file.AddRange(h);
        file.AddRange(Enumerable.Repeat((byte)' ', padded - h.Length));
        foreach (Entry e in list) file.AddRange(e.Data);
        return file.ToArray();
    }

    /// <summary>
    /// A GPTQ v1 asymmetric layer (zero points 1..15, stored minus 1) as its values and as checkpoint entries
    /// (qweight, qzeros, F16 scales, and a shuffled g_idx unless <see cref="GIdxStore.None"/>); GIdx is each row's
    /// group either way. <paramref name="nanScaleAt"/> >= 0 stores a NaN scale there.
    /// </summary>
    internal static (byte[] Q, byte[] Zeros, ushort[] Scales, int[] GIdx, Entry[] Entries) GptqLayer(Random r, string prefix, int k, int n,
        int gs, GIdxStore gIdxStore = GIdxStore.I32, int nanScaleAt = -1)
    {
        int g = (k + gs - 1) / gs;
        byte[] q = RandomNibbles(r, k * n), zeros = RandomNibbles(r, g * n, 1, 16);
        ushort[] scales = Enumerable.Range(0, g * n).Select(i => i == nanScaleAt ? (ushort)0x7e00 : RandomScale(r)).ToArray();
        int[] gIdx = Enumerable.Range(0, k).Select(row => row / gs).ToArray();
        var entries = new List<Entry>
        {
            E(prefix + ".qweight", "I32", new long[] { k / 8, n }, PackGptqQWeight(q, k, n)),
            E(prefix + ".qzeros", "I32", new long[] { g, n / 8 }, PackGptqColumns(zeros.Select(z => (byte)(z - 1)).ToArray(), g, n)),
            E(prefix + ".scales", "F16", new long[] { g, n }, scales),
        };
        if (gIdxStore != GIdxStore.None)
        {
            gIdx = gIdx.OrderBy(_ => r.Next()).ToArray();
            entries.Add(gIdxStore == GIdxStore.I64 ? E(prefix + ".g_idx", "I64", new long[] { k }, gIdx.Select(x => (long)x).ToArray())
                : E(prefix + ".g_idx", "I32", new long[] { k }, gIdx));
        }
        return (q, zeros, scales, gIdx, entries.ToArray());
    }
}
