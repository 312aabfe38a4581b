using System;
using System.Collections.Generic;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;

namespace LlmNative.Tests;

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
}
