// Minimal protobuf wire-format writer: just what an ONNX ModelProto needs (varints, fixed32 floats,
// length-delimited bytes/strings/sub-messages). The ORT C# package has no model builder, and a one-node
// model is all the benchmarks need, so a dependency on a protobuf runtime plus generated onnx.proto
// classes would be more code to carry than this.
using System;
using System.Buffers.Binary;
using System.Text;

namespace LlmNative.Benchmarks.Onnx;

/// <summary>Appends protobuf fields to a growable byte array. Field order is the caller's.</summary>
internal sealed class ProtoWriter
{
    private const int WireVarint = 0;
    private const int WireLengthDelimited = 2;
    private const int WireFixed32 = 5;

    private byte[] _buffer;
    private int _length;

    public ProtoWriter(int capacity = 256) => _buffer = new byte[Math.Max(capacity, 16)];

    public int Length => _length;

    public ReadOnlySpan<byte> WrittenSpan => _buffer.AsSpan(0, _length);

    public byte[] ToArray() => _buffer.AsSpan(0, _length).ToArray();

    /// <summary>int64/int32/enum/bool field (varint; negative values take 10 bytes, as protobuf says).</summary>
    public ProtoWriter Int64(int field, long value)
    {
        Tag(field, WireVarint);
        Varint(unchecked((ulong)value));
        return this;
    }

    public ProtoWriter Float(int field, float value)
    {
        Tag(field, WireFixed32);
        Span<byte> b = Reserve(4);
        BinaryPrimitives.WriteSingleLittleEndian(b, value);
        return this;
    }

    public ProtoWriter String(int field, string value)
    {
        int n = Encoding.UTF8.GetByteCount(value);
        Tag(field, WireLengthDelimited);
        Varint((ulong)n);
        Encoding.UTF8.GetBytes(value, Reserve(n));
        return this;
    }

    public ProtoWriter Bytes(int field, ReadOnlySpan<byte> value)
    {
        Tag(field, WireLengthDelimited);
        Varint((ulong)value.Length);
        value.CopyTo(Reserve(value.Length));
        return this;
    }

    /// <summary>Embedded message field: the inner writer's bytes, length-prefixed.</summary>
    public ProtoWriter Message(int field, ProtoWriter inner) => Bytes(field, inner.WrittenSpan);

    private void Tag(int field, int wireType)
    {
        if (field < 1) throw new ArgumentOutOfRangeException(nameof(field), field, "protobuf field numbers start at 1");
        Varint(((ulong)(uint)field << 3) | (uint)wireType);
    }

    private void Varint(ulong value)
    {
        Span<byte> b = Reserve(10);
        int i = 0;
        while (value >= 0x80)
        {
            b[i++] = (byte)(value | 0x80);
            value >>= 7;
        }
        b[i++] = (byte)value;
        _length -= 10 - i;
    }

    private Span<byte> Reserve(int count)
    {
        if (_length + count > _buffer.Length)
        {
            long want = Math.Max((long)_buffer.Length * 2, (long)_length + count);
            if (want > Array.MaxLength) want = Array.MaxLength;
            if (want < (long)_length + count) throw new InvalidOperationException("protobuf message exceeds the largest array");
            Array.Resize(ref _buffer, (int)want);
        }
        Span<byte> s = _buffer.AsSpan(_length, count);
        _length += count;
        return s;
    }
}
