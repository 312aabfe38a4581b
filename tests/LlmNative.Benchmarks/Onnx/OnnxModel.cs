// The slice of onnx.proto (proto2) needed for a one-node model, encoded with ProtoWriter. Field numbers
// are those of onnx/onnx.proto: ModelProto, OperatorSetIdProto, GraphProto, NodeProto, AttributeProto,
// TensorProto (raw_data only), ValueInfoProto / TypeProto.Tensor / TensorShapeProto.
using System;
using System.Collections.Generic;

namespace LlmNative.Benchmarks.Onnx;

/// <summary>TensorProto.DataType values.</summary>
internal enum OnnxType
{
    Float = 1,
    UInt8 = 2,
    Int8 = 3,
    Int32 = 6,
    Int64 = 7,
    Float16 = 10,
    Double = 11,
}

/// <summary>One tensor dimension: a fixed size or a symbolic name.</summary>
internal readonly record struct OnnxDim(long Value, string? Param)
{
    public static implicit operator OnnxDim(long value) => new(value, null);
    public static implicit operator OnnxDim(string param) => new(0, param);
}

/// <summary>A graph input or output: name, element type, shape.</summary>
internal sealed record OnnxValueInfo(string Name, OnnxType Type, params OnnxDim[] Shape);

/// <summary>An initializer (constant tensor) stored as raw little-endian bytes.</summary>
internal sealed record OnnxInitializer(string Name, OnnxType Type, long[] Dims, byte[] RawData);

/// <summary>A node attribute (INT, FLOAT or STRING).</summary>
internal sealed record OnnxAttribute(string Name, long? Int = null, float? Float = null, string? Text = null)
{
    public static OnnxAttribute Of(string name, long value) => new(name, Int: value);
    public static OnnxAttribute Of(string name, float value) => new(name, Float: value);
    public static OnnxAttribute Of(string name, string value) => new(name, Text: value);
}

internal sealed record OnnxNode(string OpType, string Domain, string[] Inputs, string[] Outputs, OnnxAttribute[] Attributes,
                                string Name = "node0");

/// <summary>A single-graph model; <see cref="Encode"/> gives the bytes ORT's InferenceSession takes.</summary>
internal sealed class OnnxModel
{
    // AttributeProto.AttributeType
    private const int AttrFloat = 1, AttrInt = 2, AttrString = 3;

    public long IrVersion { get; init; } = 8;
    public List<(string Domain, long Version)> Opsets { get; } = new() { ("", 17), ("com.microsoft", 1) };
    public List<OnnxNode> Nodes { get; } = new();
    public List<OnnxInitializer> Initializers { get; } = new();
    public List<OnnxValueInfo> Inputs { get; } = new();
    public List<OnnxValueInfo> Outputs { get; } = new();
    public string GraphName { get; init; } = "g";

    public byte[] Encode()
    {
        var graph = new ProtoWriter(1024 + TotalInitializerBytes());
        foreach (OnnxNode n in Nodes) graph.Message(1, EncodeNode(n));            // node
        graph.String(2, GraphName);                                                // name
        foreach (OnnxInitializer t in Initializers) graph.Message(5, EncodeTensor(t)); // initializer
        foreach (OnnxValueInfo v in Inputs) graph.Message(11, EncodeValueInfo(v)); // input
        foreach (OnnxValueInfo v in Outputs) graph.Message(12, EncodeValueInfo(v)); // output

        var model = new ProtoWriter(graph.Length + 256);
        model.Int64(1, IrVersion);                                                 // ir_version
        model.String(2, "LlmNative.Benchmarks");                                   // producer_name
        model.String(3, "1");                                                      // producer_version
        model.Message(7, graph);                                                   // graph
        foreach ((string domain, long version) in Opsets)                          // opset_import
            model.Message(8, new ProtoWriter().String(1, domain).Int64(2, version));
        return model.ToArray();
    }

    private int TotalInitializerBytes()
    {
        long total = 0;
        foreach (OnnxInitializer t in Initializers) total += t.RawData.Length + 64;
        return (int)Math.Min(total, Array.MaxLength - 4096);
    }

    private static ProtoWriter EncodeNode(OnnxNode n)
    {
        var w = new ProtoWriter();
        foreach (string i in n.Inputs) w.String(1, i);   // input ("" = absent optional input)
        foreach (string o in n.Outputs) w.String(2, o);  // output
        w.String(3, n.Name);                             // name
        w.String(4, n.OpType);                           // op_type
        foreach (OnnxAttribute a in n.Attributes)        // attribute
        {
            var aw = new ProtoWriter().String(1, a.Name);
            if (a.Int is long i) aw.Int64(3, i).Int64(20, AttrInt);
            else if (a.Float is float f) aw.Float(2, f).Int64(20, AttrFloat);
            else if (a.Text is string s) aw.String(4, s).Int64(20, AttrString);
            else throw new ArgumentException($"attribute {a.Name} has no value");
            w.Message(5, aw);
        }
        if (n.Domain.Length > 0) w.String(7, n.Domain);  // domain
        return w;
    }

    private static ProtoWriter EncodeTensor(OnnxInitializer t)
    {
        var w = new ProtoWriter(t.RawData.Length + 64);
        foreach (long d in t.Dims) w.Int64(1, d);        // dims
        w.Int64(2, (int)t.Type);                         // data_type
        w.String(8, t.Name);                             // name
        w.Bytes(9, t.RawData);                           // raw_data
        return w;
    }

    private static ProtoWriter EncodeValueInfo(OnnxValueInfo v)
    {
        var shape = new ProtoWriter();
        foreach (OnnxDim d in v.Shape)                   // TensorShapeProto.dim
        {
            var dw = new ProtoWriter();
            if (d.Param is string p) dw.String(2, p); else dw.Int64(1, d.Value);
            shape.Message(1, dw);
        }
        var tensorType = new ProtoWriter().Int64(1, (int)v.Type).Message(2, shape); // elem_type, shape
        var type = new ProtoWriter().Message(1, tensorType);                         // TypeProto.tensor_type
        return new ProtoWriter().String(1, v.Name).Message(2, type);                 // name, type
    }
}
