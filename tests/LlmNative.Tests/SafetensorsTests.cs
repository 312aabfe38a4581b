using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;
using Xunit;
using static LlmNative.Tests.Int4TestData;
using static LlmNative.Tests.SafetensorsWriter;

namespace LlmNative.Tests;

/// <summary>
/// The safetensors reader and the GPTQ / AWQ checkpoint importers on files written here byte by byte from the
/// format's description (8-byte little-endian header length, JSON header, data), independently of the reader.
/// </summary>
public sealed class SafetensorsTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "llmn-st-" + Guid.NewGuid().ToString("N"));

    public SafetensorsTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, byte[] bytes)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Fact]
    public void Reads_the_header_the_metadata_and_every_dtype_back()
    {
        var r = TestSetup.Random(out int seed);
        int[] i32 = Enumerable.Range(0, 6).Select(_ => r.Next(int.MinValue, int.MaxValue)).ToArray();
        ushort[] f16 = Enumerable.Range(0, 5).Select(_ => RandomScale(r)).ToArray();
        float[] f32 = Enumerable.Range(0, 4).Select(_ => (float)r.NextDouble() - 0.5f).ToArray();
        long[] i64 = { long.MinValue, -1, long.MaxValue };
        byte[] u8 = { 0, 1, 127, 128, 255 };
        double[] f64 = { Math.PI };
        const string odd = "blk.0.\u00e9\"q\\";
        byte[] bytes = Build(new[]
        {
            E("a.i32", "I32", new long[] { 2, 3 }, i32),
            E("b.f16", "F16", new long[] { 5 }, f16),
            E("empty", "I32", new long[] { 0, 4 }, Array.Empty<int>()),
            E("c.f32", "F32", new long[] { 1, 2, 2 }, f32),
            E("d.i64", "I64", new long[] { 3 }, i64),
            E(odd, "U8", new long[] { 5 }, u8),
            E("scalar", "F64", Array.Empty<long>(), f64),
            E("bf", "BF16", new long[] { 2 }, new ushort[] { 0x3f80, 0xc000 }),
        }, new Dictionary<string, string> { ["format"] = "pt", ["note"] = "tab\there" });

        using var file = SafetensorsFile.Open(Write("all.safetensors", bytes));
        Assert.Equal(new[] { "a.i32", "b.f16", "empty", "c.f32", "d.i64", odd, "scalar", "bf" }, file.Tensors.Select(t => t.Name));
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal("tab\there", file.Metadata["note"]);
        SafetensorsTensorInfo a = file.GetTensor("a.i32");
        Assert.Equal(("I32", 6L, 24L), (a.DType, a.ElementCount, a.ByteLength));
        Assert.Equal(new long[] { 2, 3 }, a.Shape);
        Assert.Equal("[2, 3]", a.ShapeText);
        Assert.Equal(1, file.GetTensor("scalar").ElementCount);
        Assert.Equal(0, file.GetTensor("empty").ElementCount);

        Assert.True(i32.SequenceEqual(file.Read<int>("a.i32")), $"seed {seed}");
        Assert.Equal(f16, file.Read<ushort>("b.f16"));
        Assert.Equal(f32, file.Read<float>("c.f32"));
        Assert.Equal(i64, file.Read<long>("d.i64"));
        Assert.Equal(u8, file.Read<byte>(odd));
        Assert.Equal(f64, file.Read<double>("scalar"));
        Assert.Equal(new ushort[] { 0x3f80, 0xc000 }, file.Read<ushort>("bf"));
        Assert.Empty(file.Read<int>("empty"));
        Assert.True(file.Contains("c.f32") && !file.Contains("c.f3"));

        var wrongType = Assert.Throws<ArgumentException>(() => file.Read<float>("a.i32"));
        Assert.Equal("name", wrongType.ParamName);
        Assert.Contains("I32", wrongType.Message);
        var missing = Assert.Throws<ArgumentException>(() => file.GetTensor("c.f33"));
        Assert.Equal("name", missing.ParamName);
        Assert.Contains("closest: c.f32", missing.Message);
        Assert.True(i32.SequenceEqual(file.Read<int>("a.i32")), $"seed {seed}: still readable after the errors");

        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.Read<int>("a.i32"));
    }

    [Fact]
    public void Tensors_larger_than_the_read_slice_come_back_whole()
    {
        // Read<T> copies in slices of 1 MiB: 1.2 MB of I32 and 2.5 MB of F16 bits cross several slice ends.
        var r = TestSetup.Random(out int seed);
        int[] big = Enumerable.Range(0, 300_001).Select(_ => r.Next(int.MinValue, int.MaxValue)).ToArray();
        ushort[] half = Enumerable.Range(0, 1_250_003).Select(_ => (ushort)r.Next(0, 0x7c00)).ToArray();
        using var file = SafetensorsFile.Open(Write("big.safetensors", Build(new[]
        {
            E("small", "U8", new long[] { 3 }, new byte[] { 1, 2, 3 }), // the big tensors start at an odd offset
            E("big", "I32", new long[] { 300_001 }, big),
            E("half", "F16", new long[] { 1_250_003 }, half),
        })));
        Assert.True(big.SequenceEqual(file.Read<int>("big")), $"seed {seed}");
        Assert.True(half.SequenceEqual(file.Read<ushort>("half")), $"seed {seed}");
        Assert.Equal(new byte[] { 1, 2, 3 }, file.Read<byte>("small"));
    }

    public static IEnumerable<object[]> MalformedFiles()
    {
        byte[] ok = MemoryMarshal.AsBytes(new int[] { 1, 2, 3, 4 }.AsSpan()).ToArray();
        Entry Good(string n = "t") => new(n, "I32", new long[] { 4 }, ok);
        yield return new object[] { "short", new byte[] { 1, 2, 3 }, "8-byte header length" };
        yield return new object[] { "length past end", BitConverter.GetBytes(1000UL).Concat(Encoding.ASCII.GetBytes("{}      ")).ToArray(), "past the end" };
        yield return new object[] { "length over cap", BitConverter.GetBytes(200UL << 20).Concat(new byte[16]).ToArray(), "outside [2," };
        yield return new object[] { "not an object", Build(new[] { Good() }, rawHeader: "[1, 2]"), "does not start with '{'" };
        yield return new object[] { "trailing comma", Build(new[] { Good() }, rawHeader: "{\"t\": {\"dtype\": \"I32\", \"shape\": [4], \"data_offsets\": [0, 16]},}"), "not valid JSON" };
        yield return new object[] { "text after", Build(new[] { Good() }, rawHeader: "{} x"), "text after the JSON value" };
        yield return new object[] { "duplicate key", Build(new[] { Good("t"), Good("t") }), "duplicate key 't'" };
        yield return new object[] { "unknown dtype", Build(new[] { Good() with { DType = "Q4_K" } }), "dtype 'Q4_K'" };
        yield return new object[] { "negative dim", Build(new[] { Good() with { Shape = new long[] { -4 } } }), "shape[0] is not a non-negative integer" };
        yield return new object[] { "fractional dim", Build(new[] { Good() with { RawJson = "{\"dtype\": \"I32\", \"shape\": [4.0], \"data_offsets\": [0, 16]}" } }), "shape[0] is not a non-negative integer" };
        yield return new object[] { "huge shape", Build(new[] { Good() with { Shape = new long[] { 1L << 40, 1L << 40 } } }), "overflows 64 bits" };
        yield return new object[] { "reversed offsets", Build(new[] { Good() with { Offsets = "[16, 0]" } }), "lie outside" };
        yield return new object[] { "offsets past data", Build(new[] { Good() with { Offsets = "[8, 24]" } }), "lie outside" };
        yield return new object[] { "size mismatch", Build(new[] { Good() with { Shape = new long[] { 3 } } }), "needs 12" };
        yield return new object[] { "overlap", Build(new[] { Good("a"), Good("b") with { Offsets = "[8, 24]" } }), "overlap" };
        yield return new object[] { "no dtype", Build(new[] { Good() with { RawJson = "{\"shape\": [4], \"data_offsets\": [0, 16]}" } }), "no string 'dtype'" };
        yield return new object[] { "metadata number", Build(new[] { Good() }, rawHeader: "{\"__metadata__\": {\"n\": 1}, \"t\": {\"dtype\": \"I32\", \"shape\": [4], \"data_offsets\": [0, 16]}}"), "is not a string" };
        yield return new object[] { "control char", Build(new[] { Good() }, rawHeader: "{\"t\n\": 1}"), "control character" };
        yield return new object[] { "bad utf8", BitConverter.GetBytes(8UL).Concat(new byte[] { (byte)'{', (byte)'"', 0xff, (byte)'"', (byte)':', (byte)'1', (byte)'}', (byte)' ' }).ToArray(), "invalid UTF-8" };
    }

    [Theory]
    [MemberData(nameof(MalformedFiles))]
    public void Malformed_files_are_rejected_with_the_reason(string what, byte[] bytes, string expected)
    {
        string path = Write(what.Replace(' ', '_') + ".safetensors", bytes);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(expected, e.Message);
        Assert.Contains(path, e.Message);
        File.Delete(path); // the handle was closed on failure (Windows would refuse the delete otherwise)
    }

    [Fact]
    public void Mutated_headers_open_cleanly_or_fail_with_invalid_data_never_otherwise()
    {
        // Random byte edits (in the 8-byte length and the JSON) and truncations of a valid file: Open either
        // succeeds, and then every tensor reads or is refused with an ArgumentException, or it throws
        // InvalidDataException. Anything else (IndexOutOfRange, Overflow, a hang) is a reader bug.
        var r = TestSetup.Random(out int seed);
        byte[] good = Build(new[]
        {
            E("a", "I32", new long[] { 3, 2 }, new int[6]),
            E("b.scales", "F16", new long[] { 4 }, new ushort[4]),
            E("c", "F64", new long[] { 1 }, new double[1]),
        }, new Dictionary<string, string> { ["k"] = "v\u00e9" });
        int headerEnd = 8 + (int)BitConverter.ToUInt64(good, 0);
        string path = Path.Combine(_dir, "fuzz.safetensors");
        const string Alphabet = "{}[]\",:0123456789-+.eE \\u\"tfnIF";
        int opened = 0;
        for (int trial = 0; trial < 3000; trial++)
        {
            byte[] bytes = (byte[])good.Clone();
            int edits = 1 + r.Next(3);
            for (int e = 0; e < edits; e++)
            {
                int at = r.Next(8) == 0 ? r.Next(8) : 8 + r.Next(headerEnd - 8);
                bytes[at] = r.Next(3) == 0 ? (byte)r.Next(256) : (byte)Alphabet[r.Next(Alphabet.Length)];
            }
            if (r.Next(10) == 0) Array.Resize(ref bytes, r.Next(bytes.Length));
            File.WriteAllBytes(path, bytes);
            try
            {
                using var f = SafetensorsFile.Open(path);
                opened++;
                foreach (SafetensorsTensorInfo t in f.Tensors)
                {
                    try
                    {
                        _ = t.DType == "F64" ? f.Read<double>(t.Name).Length : t.DType == "I32" ? f.Read<int>(t.Name).Length : f.Read<byte>(t.Name).Length;
                    }
                    catch (ArgumentException)
                    {
                        // a dtype the probe's type does not read
                    }
                    catch (NotSupportedException)
                    {
                        // more elements than an array holds
                    }
                }
            }
            catch (InvalidDataException)
            {
            }
            catch (Exception ex)
            {
                Assert.Fail($"seed {seed}, trial {trial}: {ex.GetType().Name}: {ex.Message}\nbytes: {Convert.ToBase64String(bytes)}");
            }
        }
        Assert.InRange(opened, 1, 2999); // some edits keep the file valid (spaces, digits), most do not
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Gptq_layer_read_from_a_file_imports_exactly_the_encoded_matrix(bool gIdxI64)
    {
        var r = TestSetup.Random(out int seed);
        const int K = 200, N = 24, GS = 64; // K not a multiple of the group: G = 4, the last group short
        const string P = "model.layers.3.mlp.up_proj";
        var (q, zeros, scales, gIdx, entries) = GptqLayer(r, P, K, N, GS, gIdxI64 ? GIdxStore.I64 : GIdxStore.I32);
        byte[] bytes = Build(entries.Prepend(E("model.embed_tokens.weight", "F32", new long[] { 3 }, new float[] { 1, 2, 3 })),
            new Dictionary<string, string> { ["format"] = "pt" });
        using var file = SafetensorsFile.Open(Write("gptq.safetensors", bytes));

        GptqTensors t = GptqTensors.FromSafetensors(file, P + ".", symmetric: false, GptqFormat.V1); // group size inferred
        Assert.Equal((K, N, GS, 4), (t.K, t.N, t.GroupSize, t.Groups));
        using var ctx = LlmContext.Create(Backend.Cpu);
        using Int4Weight fromFile = Int4Weight.ImportGptq(ctx, t);
        Assert.True(fromFile.HasActOrder);
        float[] got = new float[K * N];
        fromFile.Dequantize(got);
        Assert.True(Dequant(q, zeros, scales, K, N, row => gIdx[row]).SequenceEqual(got), $"seed {seed}");

        // The same layer from arrays gives the same weight; an explicit group size agrees with the inferred one.
        using Int4Weight fromArrays = Int4Weight.ImportGptq(ctx, new GptqTensors(K, N, GS, false, GptqFormat.V1, PackGptqQWeight(q, K, N),
            PackGptqColumns(zeros.Select(z => (byte)(z - 1)).ToArray(), 4, N), scales, gIdx));
        float[] want = new float[K * N];
        fromArrays.Dequantize(want);
        Assert.True(want.SequenceEqual(got), $"seed {seed}");
        Assert.Equal(GS, GptqTensors.FromSafetensors(file, P, false, GptqFormat.V1, groupSize: GS).GroupSize);
    }

    [Fact]
    public void Symmetric_gptq_without_qzeros_and_awq_layers_import_from_files()
    {
        var r = TestSetup.Random(out int seed);
        using var ctx = LlmContext.Create(Backend.Cpu);

        // GPTQ sym=True, per-column (one scale row), f32 scales, no qzeros tensor at all.
        const int K = 64, N = 20;
        byte[] q = RandomNibbles(r, K * N);
        float[] s32 = Enumerable.Range(0, N).Select(_ => F16(RandomScale(r))).ToArray();
        using (var file = SafetensorsFile.Open(Write("sym.safetensors", Build(new[]
               {
                   E("l.qweight", "I32", new long[] { K / 8, N }, PackGptqQWeight(q, K, N)),
                   E("l.scales", "F32", new long[] { 1, N }, s32),
               }))))
        {
            GptqTensors t = GptqTensors.FromSafetensors(file, "l", symmetric: true, GptqFormat.V1);
            Assert.Equal(0, t.GroupSize);
            using Int4Weight w = Int4Weight.ImportGptq(ctx, t);
            float[] got = new float[K * N];
            w.Dequantize(got);
            byte[] eights = Enumerable.Repeat((byte)8, N).ToArray();
            Assert.True(Dequant(q, eights, s32.Select(x => Bits((Half)x)).ToArray(), K, N, _ => 0).SequenceEqual(got), $"seed {seed}");
            var asym = Assert.Throws<ArgumentException>(() => GptqTensors.FromSafetensors(file, "l", symmetric: false, GptqFormat.V1));
            Assert.Equal("prefix", asym.ParamName);
            Assert.Contains("l.qzeros", asym.Message);
        }

        // AWQ, group 32, K = 96 (G = 3), N = 16.
        const int KA = 96, NA = 16, GA = 3;
        byte[] qa = RandomNibbles(r, KA * NA), za = RandomNibbles(r, GA * NA);
        ushort[] sa = Enumerable.Range(0, GA * NA).Select(_ => RandomScale(r)).ToArray();
        using (var file = SafetensorsFile.Open(Write("awq.safetensors", Build(new[]
               {
                   E("m.scales", "F16", new long[] { GA, NA }, sa),
                   E("m.qzeros", "I32", new long[] { GA, NA / 8 }, PackAwq(za, GA, NA)),
                   E("m.qweight", "I32", new long[] { KA, NA / 8 }, PackAwq(qa, KA, NA)),
               }))))
        {
            AwqTensors t = AwqTensors.FromSafetensors(file, "m");
            Assert.Equal((KA, NA, 32), (t.K, t.N, t.GroupSize));
            using Int4Weight w = Int4Weight.ImportAwq(ctx, t);
            float[] got = new float[KA * NA];
            w.Dequantize(got);
            Assert.True(Dequant(qa, za, sa, KA, NA, row => row / 32).SequenceEqual(got), $"seed {seed}");
            // The GPTQ reader on an AWQ layer: the shapes disagree, and the message says so.
            var wrong = Assert.Throws<ArgumentException>(() => GptqTensors.FromSafetensors(file, "m", false, GptqFormat.V2));
            Assert.Equal("prefix", wrong.ParamName);
        }
    }

    [Fact]
    public void Importer_errors_name_the_prefix_and_the_tensor()
    {
        var r = TestSetup.Random(out _);
        var (_, _, _, _, entries) = GptqLayer(r, "x", 96, 16, 32);
        using var file = SafetensorsFile.Open(Write("e.safetensors", Build(entries
            .Append(E("y.qweight", "F32", new long[] { 12, 16 }, new float[12 * 16]))
            .Append(E("y.scales", "F16", new long[] { 3, 16 }, Enumerable.Repeat(Bits((Half)1), 48).ToArray()))
            .Append(E("z.qweight", "I32", new long[] { 12, 16 }, new int[12 * 16]))
            .Append(E("z.scales", "F16", new long[] { 5, 16 }, Enumerable.Repeat(Bits((Half)1), 80).ToArray()))
            .Append(E("w.qweight", "I32", new long[] { 12, 16 }, new int[12 * 16]))
            .Append(E("w.scales", "F16", new long[] { 1, 16 }, Enumerable.Range(0, 16).Select(i => i == 5 ? (ushort)0x7e00 : Bits((Half)1)).ToArray())))));

        var missing = Assert.Throws<ArgumentException>(() => GptqTensors.FromSafetensors(file, "x.proj", false, GptqFormat.V1));
        Assert.Equal("prefix", missing.ParamName);
        Assert.Contains("'x.proj.qweight'", missing.Message);
        Assert.Contains("closest: x.qweight", missing.Message);

        var dtype = Assert.Throws<ArgumentException>(() => GptqTensors.FromSafetensors(file, "y", true, GptqFormat.V1));
        Assert.Contains("y.qweight has dtype F32", dtype.Message);

        var groups = Assert.Throws<ArgumentException>(() => GptqTensors.FromSafetensors(file, "z", true, GptqFormat.V1));
        Assert.Contains("z.scales has 5 rows", groups.Message);

        var nan = Assert.Throws<ArgumentException>(() => GptqTensors.FromSafetensors(file, "w", true, GptqFormat.V1));
        Assert.Equal("prefix", nan.ParamName); // the bundle's check, reported with the layer
        Assert.Contains("layer 'w'", nan.Message);
        Assert.Contains("scales[0][5] is NaN", nan.Message);

        var awq = Assert.Throws<ArgumentException>(() => AwqTensors.FromSafetensors(file, "x"));
        Assert.Contains("a GPTQ layer?", awq.Message);

        var badGroup = Assert.Throws<ArgumentException>(() => GptqTensors.FromSafetensors(file, "x", false, GptqFormat.V1, groupSize: 64));
        Assert.Equal("groupSize", badGroup.ParamName); // group 64 gives G = 2; the file has 3
        Assert.Contains("x.scales [3, 16] has 3", badGroup.Message);
        Assert.Throws<ArgumentNullException>(() => GptqTensors.FromSafetensors(null!, "x", false, GptqFormat.V1));
        Assert.Throws<ArgumentException>(() => AwqTensors.FromSafetensors(file, "."));
    }

    [Theory]
    [InlineData("F32", true)]
    [InlineData("F16", false)]
    [InlineData("BF16", false)]
    public void Linear_weights_quantize_like_their_transpose(string dtype, bool symmetric)
    {
        var r = TestSetup.Random(out int seed);
        const int N = 40, K = 96; // stored [out_features, in_features] as nn.Linear keeps it
        float[] w = Enumerable.Range(0, N * K).Select(i => (float)(r.NextDouble() - 0.5) * (i % 37 == 0 ? 4 : 1)).ToArray();
        ushort[] bits = dtype == "F16" ? w.Select(x => Bits((Half)x)).ToArray()
            : w.Select(x => (ushort)(BitConverter.SingleToUInt32Bits(x) >> 16)).ToArray(); // BF16 by truncation
        float[] stored = dtype == "F32" ? w : dtype == "F16" ? bits.Select(F16).ToArray()
            : bits.Select(b => BitConverter.UInt32BitsToSingle((uint)b << 16)).ToArray();
        Entry e = dtype == "F32" ? E("fc.weight", "F32", new long[] { N, K }, w) : E("fc.weight", dtype, new long[] { N, K }, bits);
        using var file = SafetensorsFile.Open(Write("linear.safetensors", Build(new[]
        {
            e,
            E("fc.bias", "F32", new long[] { N }, new float[N]),
            E("fc.ids", "I32", new long[] { 2, 2 }, new int[4]),
            E("bad.weight", "F32", new long[] { 2, 32 }, Enumerable.Range(0, 64).Select(i => i == 33 ? float.NaN : 1f).ToArray()),
        })));

        float[] kn = new float[K * N];
        for (int o = 0; o < N; o++)
            for (int i = 0; i < K; i++) kn[i * N + o] = stored[o * K + i];
        using var ctx = LlmContext.Create(Backend.Cpu);
        using Int4Weight a = Int4Weight.QuantizeLinear(ctx, file, "fc.weight", 32, symmetric);
        using Int4Weight b = Int4Weight.Quantize(ctx, kn, K, N, 32, symmetric);
        Assert.Equal((K, N, 32, symmetric), (a.K, a.N, a.GroupSize, a.Symmetric));
        float[] da = new float[K * N], db = new float[K * N];
        a.Dequantize(da);
        b.Dequantize(db);
        Assert.True(da.SequenceEqual(db), $"seed {seed}");

        Assert.Equal("name", Assert.Throws<ArgumentException>(() => Int4Weight.QuantizeLinear(ctx, file, "fc.bias", 32, true)).ParamName);
        Assert.Contains("dtype I32", Assert.Throws<ArgumentException>(() => Int4Weight.QuantizeLinear(ctx, file, "fc.ids", 32, true)).Message);
        var nan = Assert.Throws<ArgumentException>(() => Int4Weight.QuantizeLinear(ctx, file, "bad.weight", 32, true));
        Assert.Equal("name", nan.ParamName);
        Assert.Contains("weights[1][1] is NaN", nan.Message); // stored [1][1] = element 33, the same after the transpose
        Assert.Equal("groupSize", Assert.Throws<ArgumentException>(() => Int4Weight.QuantizeLinear(ctx, file, "fc.weight", 48, true)).ParamName);
    }

    [Fact]
    public void A_sharded_checkpoint_reads_a_layer_split_over_two_files()
    {
        var r = TestSetup.Random(out int seed);
        const int K = 128, N = 32, GS = 128;
        var (q, zeros, scales, gIdx, entries) = GptqLayer(r, "model.layers.0.self_attn.o_proj", K, N, GS);
        Write("model-00001-of-00002.safetensors", Build(entries.Take(2)));
        Write("model-00002-of-00002.safetensors", Build(entries.Skip(2)));
        string map = string.Join(", ", entries.Select((e, i) => $"{Quote(e.Name)}: \"model-0000{(i < 2 ? 1 : 2)}-of-00002.safetensors\""));
        Write("model.safetensors.index.json", Encoding.UTF8.GetBytes($"{{\"metadata\": {{\"total_size\": 12345}}, \"weight_map\": {{{map}}}}}"));

        using var ckpt = SafetensorsCheckpoint.Open(_dir); // the directory: its index
        Assert.Equal(2, ckpt.Shards.Count);
        Assert.Equal(4, ckpt.Names.Count);
        using var ctx = LlmContext.Create(Backend.Cpu);
        using Int4Weight w = Int4Weight.ImportGptq(ctx, GptqTensors.FromSafetensors(ckpt, "model.layers.0.self_attn.o_proj", false, GptqFormat.V1));
        float[] got = new float[K * N];
        w.Dequantize(got);
        Assert.True(Dequant(q, zeros, scales, K, N, row => gIdx[row]).SequenceEqual(got), $"seed {seed}");

        // One file opens as a one-shard checkpoint.
        using (var single = SafetensorsCheckpoint.Open(Path.Combine(_dir, "model-00002-of-00002.safetensors")))
            Assert.Equal(2, single.Names.Count);

        // An index that points outside the directory, or at a missing shard, is refused.
        string bad = Write("bad.index.json", Encoding.UTF8.GetBytes("{\"weight_map\": {\"a\": \"../model.safetensors\"}}"));
        Assert.Throws<InvalidDataException>(() => SafetensorsCheckpoint.Open(bad));
        string gone = Write("gone.index.json", Encoding.UTF8.GetBytes("{\"weight_map\": {\"a\": \"nope.safetensors\"}}"));
        Assert.Throws<FileNotFoundException>(() => SafetensorsCheckpoint.Open(gone));
        // An index that assigns a tensor to a shard without it.
        string lying = Write("lying.index.json", Encoding.UTF8.GetBytes(
            "{\"weight_map\": {\"model.layers.0.self_attn.o_proj.scales\": \"model-00001-of-00002.safetensors\"}}"));
        using var liar = SafetensorsCheckpoint.Open(lying);
        Assert.Throws<InvalidDataException>(() => liar.GetTensor("model.layers.0.self_attn.o_proj.scales"));
    }
}
