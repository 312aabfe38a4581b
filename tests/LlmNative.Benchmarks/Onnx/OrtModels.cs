// One-node ONNX Runtime models (com.microsoft MatMulNBits and GroupQueryAttention) and the process-wide ORT
// environment. ORT runs on ONE global intra-op pool of the same thread count as LlmNative's pool: the
// benchmarks rotate over many sessions, and per-session pools would leave the previous session's spinning
// workers competing with the current one for the 2 cores.
using System;
using Microsoft.ML.OnnxRuntime;

namespace LlmNative.Benchmarks.Onnx;

internal static class OrtModels
{
    private static readonly object s_lock = new();
    private static int s_threads;

    /// <summary>Creates the ORT environment with a global intra-op pool of <paramref name="threads"/> (once per process).</summary>
    public static void InitEnvironment(int threads)
    {
        lock (s_lock)
        {
            if (s_threads != 0)
            {
                if (s_threads != threads)
                    throw new InvalidOperationException($"ORT environment already created with {s_threads} threads, asked for {threads}");
                return;
            }
            using var threading = new OrtThreadingOptions
            {
                GlobalIntraOpNumThreads = threads,
                GlobalInterOpNumThreads = 1,
                GlobalSpinControl = true,
            };
            var options = new EnvironmentCreationOptions
            {
                logId = "llmnative-bench",
                logLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
                threadOptions = threading,
            };
            OrtEnv.CreateInstanceWithOptions(ref options);
            s_threads = threads;
        }
    }

    public static int Threads => s_threads;

    /// <summary>Session options for the global pool: sequential, all graph optimizations, no per-session threads.</summary>
    public static SessionOptions NewSessionOptions()
    {
        if (s_threads == 0) throw new InvalidOperationException("call OrtModels.InitEnvironment first");
        var o = new SessionOptions
        {
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
        };
        o.DisablePerSessionThreads();
        return o;
    }

    /// <summary>
    /// Y[M, N] = A[M, K] (f32) * dequant(B): MatMulNBits with bits 4, symmetric (no zero_points input: ORT's
    /// default zero point 8, the same as GPTQ sym), B an initializer so ORT pre-packs it at session creation.
    /// </summary>
    /// <param name="packedB">uint8 [N, K/blockSize, blockSize/2]: element k of a block in nibble k%2 (low first) of byte k/2.</param>
    /// <param name="scales">f32 [N, K/blockSize].</param>
    public static byte[] MatMulNBits(long k, long n, int blockSize, int accuracyLevel, byte[] packedB, float[] scales)
    {
        long blocks = k / blockSize;
        if (k % blockSize != 0) throw new ArgumentException($"K {k} is not a multiple of block_size {blockSize}");
        if (packedB.LongLength != n * blocks * (blockSize / 2)) throw new ArgumentException($"B has {packedB.LongLength} bytes, expected {n * blocks * (blockSize / 2)}");
        if (scales.LongLength != n * blocks) throw new ArgumentException($"scales has {scales.LongLength} values, expected {n * blocks}");
        var model = new OnnxModel();
        model.Inputs.Add(new OnnxValueInfo("A", OnnxType.Float, "M", k));
        model.Outputs.Add(new OnnxValueInfo("Y", OnnxType.Float, "M", n));
        model.Initializers.Add(new OnnxInitializer("B", OnnxType.UInt8, new[] { n, blocks, blockSize / 2 }, packedB));
        model.Initializers.Add(new OnnxInitializer("scales", OnnxType.Float, new[] { n, blocks }, ToBytes(scales)));
        model.Nodes.Add(new OnnxNode("MatMulNBits", "com.microsoft", new[] { "A", "B", "scales" }, new[] { "Y" },
            new[]
            {
                OnnxAttribute.Of("K", k), OnnxAttribute.Of("N", n), OnnxAttribute.Of("bits", 4L),
                OnnxAttribute.Of("block_size", (long)blockSize), OnnxAttribute.Of("accuracy_level", (long)accuracyLevel),
            }));
        return model.Encode();
    }

    /// <summary>
    /// GroupQueryAttention for decode (sequence length 1), all shapes symbolic: query [B, 1, qHeads*headDim],
    /// key/value [B, 1, kvHeads*headDim] (the new token), past_key/past_value [B, kvHeads, P, headDim] (BNSH;
    /// bound to the same memory as present_key/present_value, so ORT shares the buffer and copies nothing),
    /// seqlens_k int32 [B] (total length - 1), total_sequence_length int32 scalar. No rotary.
    /// </summary>
    public static byte[] GroupQueryAttention(OnnxType type, int qHeads, int kvHeads, int headDim)
    {
        var model = new OnnxModel();
        model.Inputs.Add(new OnnxValueInfo("query", type, "B", 1, (long)qHeads * headDim));
        model.Inputs.Add(new OnnxValueInfo("key", type, "B", 1, (long)kvHeads * headDim));
        model.Inputs.Add(new OnnxValueInfo("value", type, "B", 1, (long)kvHeads * headDim));
        model.Inputs.Add(new OnnxValueInfo("past_key", type, "B", kvHeads, "P", headDim));
        model.Inputs.Add(new OnnxValueInfo("past_value", type, "B", kvHeads, "P", headDim));
        model.Inputs.Add(new OnnxValueInfo("seqlens_k", OnnxType.Int32, "B"));
        model.Inputs.Add(new OnnxValueInfo("total_sequence_length", OnnxType.Int32));
        model.Outputs.Add(new OnnxValueInfo("output", type, "B", 1, (long)qHeads * headDim));
        model.Outputs.Add(new OnnxValueInfo("present_key", type, "B", kvHeads, "P", headDim));
        model.Outputs.Add(new OnnxValueInfo("present_value", type, "B", kvHeads, "P", headDim));
        model.Nodes.Add(new OnnxNode("GroupQueryAttention", "com.microsoft",
            new[] { "query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length" },
            new[] { "output", "present_key", "present_value" },
            new[] { OnnxAttribute.Of("num_heads", (long)qHeads), OnnxAttribute.Of("kv_num_heads", (long)kvHeads) }));
        return model.Encode();
    }

    private static byte[] ToBytes(float[] values)
    {
        var bytes = new byte[values.LongLength * 4];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        return bytes;
    }
}
