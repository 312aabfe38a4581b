// Consumer smoke test: tests/consumer-smoke/run.sh copies this file into a fresh console project, outside the
// repository, that references the LlmNative package from artifacts/. One INT4 GEMM and one decode attention on a
// CPU context, each against a float64 reference, and a GPTQ layer imported from a safetensors file against its
// known values; exit code 0 and "consumer smoke: OK" when all agree.
using LlmNative;

var rng = new Random(20261124);
float R() => (float)(rng.NextDouble() * 2 - 1);
int failures = 0;
void Check(string what, double error, double limit)
{
    bool ok = error <= limit;   // false for NaN too
    Console.WriteLine($"{what}: max error {error:G3} (limit {limit:G3}) {(ok ? "ok" : "MISMATCH")}");
    if (!ok) failures++;
}

LlmNativeLibrary.Load();
string loadedFrom = LlmNativeLibrary.LoadedFrom!;
Console.WriteLine($"native library {loadedFrom} ({LlmNativeLibrary.Source}), native {LlmNativeInfo.Version}, managed {LlmNativeInfo.ManagedVersion}");
if (!loadedFrom.StartsWith(AppContext.BaseDirectory, StringComparison.Ordinal))
{
    Console.WriteLine($"MISMATCH: the native library was not deployed with the application ({AppContext.BaseDirectory})");
    failures++;
}
using var ctx = LlmContext.Create(Backend.Cpu);

// INT4 GEMM y[m, n] = x[m, k] · dequant(w) against Dequantize. Bound: the CPU kernel rounds activations to int8
// per 32 values of k (error <= amax/254 per value), then accumulates in f32.
const int m = 3, k = 256, n = 80;
float[] dense = new float[k * n], x = new float[m * k], y = new float[m * n], deq = new float[k * n];
for (int i = 0; i < dense.Length; i++) dense[i] = R();
for (int i = 0; i < x.Length; i++) x[i] = R();
using (var w = Int4Weight.Quantize(ctx, dense, k, n, groupSize: 64, symmetric: false))
{
    w.Dequantize(deq);
    Array.Fill(y, float.NaN);
    Gemm.Int4(x, w, y, m);
}
double gemmWorst = 0;
for (int r = 0; r < m; r++)
    for (int c = 0; c < n; c++)
    {
        double acc = 0, bound = 1e-6;
        for (int i = 0; i < k; i++)
        {
            double amax = 0;
            for (int j = i / 32 * 32; j < i / 32 * 32 + 32; j++) amax = Math.Max(amax, Math.Abs(x[r * k + j]));
            double xv = x[r * k + i], wv = deq[i * n + c];
            acc += xv * wv;
            bound += 1.01 * amax / 254 * Math.Abs(wv) + 1e-5 * Math.Abs(xv * wv);
        }
        gemmWorst = Math.Max(gemmWorst, double.IsNaN(y[r * n + c]) ? double.NaN : Math.Abs(y[r * n + c] - acc) / bound);
    }
Check("Gemm.Int4 (error / bound)", gemmWorst, 1.0);

// Decode attention: 7 tokens of 2 KV heads, 4 query heads (GQA), head_dim 64, against softmax(q·k/8)·v over
// the keys and values as the cache stores them (f16, read back).
const int tokens = 7, kvHeads = 2, qHeads = 4, d = 64;
using var cache = KvCache.Create(ctx, new KvCacheOptions { NumLayers = 1, NumKvHeads = kvHeads, HeadDim = d, CapacityTokens = 64 });
long seq = cache.AddSequence();
float[] keys = new float[tokens * kvHeads * d], values = new float[keys.Length], q = new float[qHeads * d], o = new float[q.Length];
for (int i = 0; i < keys.Length; i++) { keys[i] = R(); values[i] = R(); }
for (int i = 0; i < q.Length; i++) q[i] = R();
cache.Append(seq, 0, keys, values);
Array.Fill(o, float.NaN);
cache.DecodeAttention(new[] { seq }, q, o, new AttentionOptions { Layer = 0, NumQHeads = qHeads });
float[] ks = new float[keys.Length], vs = new float[values.Length];
cache.Read(seq, 0, 0, ks, vs);
double attnWorst = 0;
for (int h = 0; h < qHeads; h++)
{
    int kvh = h / (qHeads / kvHeads);
    var s = new double[tokens];
    for (int t = 0; t < tokens; t++)
    {
        for (int e = 0; e < d; e++) s[t] += (double)q[h * d + e] * ks[(t * kvHeads + kvh) * d + e];
        s[t] /= Math.Sqrt(d);
    }
    double max = s.Max(), sum = s.Sum(v => Math.Exp(v - max));
    for (int e = 0; e < d; e++)
    {
        double reference = 0;
        for (int t = 0; t < tokens; t++) reference += Math.Exp(s[t] - max) / sum * vs[(t * kvHeads + kvh) * d + e];
        double got = o[h * d + e];
        attnWorst = Math.Max(attnWorst, double.IsNaN(got) ? double.NaN : Math.Abs(got - reference));
    }
}
Check("KvCache.DecodeAttention (absolute)", attnWorst, 1e-4);

// A GPTQ layer (K 16, N 8, per-column, v2 zero points) written as a safetensors file, read back with
// SafetensorsFile + GptqTensors.FromSafetensors: row k of column c dequantizes to (k % 16 - zero_c) * 0.5.
string stPath = Path.Combine(Path.GetTempPath(), $"consumer-smoke-{Environment.ProcessId}.safetensors");
int[] qweight = new int[2 * 8], qzeros = { 0x76543210 };
for (int c = 0; c < 8; c++) { qweight[c] = 0x76543210; qweight[8 + c] = unchecked((int)0xFEDCBA98); }
ushort[] half = Enumerable.Repeat(BitConverter.HalfToUInt16Bits((Half)0.5), 8).ToArray();
string header = "{\"l.qweight\":{\"dtype\":\"I32\",\"shape\":[2,8],\"data_offsets\":[0,64]}," +
                "\"l.qzeros\":{\"dtype\":\"I32\",\"shape\":[1,1],\"data_offsets\":[64,68]}," +
                "\"l.scales\":{\"dtype\":\"F16\",\"shape\":[1,8],\"data_offsets\":[68,84]}}";
using (var f = File.Create(stPath))
{
    f.Write(BitConverter.GetBytes((ulong)header.Length));
    f.Write(System.Text.Encoding.ASCII.GetBytes(header));
    f.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(qweight.AsSpan()));
    f.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(qzeros.AsSpan()));
    f.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(half.AsSpan()));
}
double stWorst = 0;
using (var file = SafetensorsFile.Open(stPath))
using (var lw = Int4Weight.ImportGptq(ctx, GptqTensors.FromSafetensors(file, "l", symmetric: false, GptqFormat.V2)))
{
    float[] back = new float[16 * 8];
    lw.Dequantize(back);
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 8; c++) stWorst = Math.Max(stWorst, Math.Abs(back[r * 8 + c] - (r - c) * 0.5));
}
File.Delete(stPath);
Check("GptqTensors.FromSafetensors (absolute)", stWorst, 0);

Console.WriteLine(failures == 0 ? "consumer smoke: OK" : $"consumer smoke: FAILED ({failures} check(s))");
return failures == 0 ? 0 : 1;
