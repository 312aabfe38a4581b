// Decode attention with f16 vs INT8 vs FP8-E4M3 K/V caches side by side, Llama-3-8B attention shape
// (32 q heads, 8 kv heads, head_dim 128, q_len 1, one layer, automatic splits), on the SAME data
// (one random K/V chunk appended to all three caches) in the SAME rounds, so the speedups do not
// depend on how the machine's load drifted between two benchmark runs.
//
// One benchmark iteration = one round: for each format in turn (f16, int8, fp8), `calls` attention
// calls rotating over that format's copies of the batch, timed. Every format rotates over enough
// copies that >= LLMNATIVE_BENCH_ROTATE_MIB (default 64) MiB of its own KV is touched between two
// visits of a copy (L3 here is 16 MiB), and every format makes the same number of calls per round.
// Counters: {f16,int8,fp8}_us = median over rounds of the time per call; int8_x / fp8_x = median
// over rounds of the per-round ratio f16 time / quantized time (> 1: the quantized cache is faster);
// {f16,int8,fp8}_GBps = bytes stored (codes + scales) per call / median time; {..}_min_us = the
// fastest round's time per call; {..}_cpu_us = median CPU time of the calling thread per call (with
// LLMNATIVE_NUM_THREADS=1 the whole kernel's CPU time, not inflated by time slicing in the guest).
// The f16 cache runs the f16 kernel of the active ISA (AVX-512 where detected), INT8/FP8 the
// quantized-KV kernel (decode_attention_quant_avx2.cpp, zmm loops under AVX-512).
// LLMNATIVE_BENCH_ROTATE_MIB=0: one copy (cache-resident for small sizes: the compute-bound rate).
// Run: build/<dir>/native/bench/llmnative_bench --benchmark_filter=AttentionQuantVsF16
#include <benchmark/benchmark.h>
#include <llmnative/llmnative.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <time.h>
#include <vector>

namespace {

constexpr int32_t kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlock = 16;
constexpr int32_t kFormats[3] = {LLMN_KV_F16, LLMN_KV_INT8, LLMN_KV_FP8_E4M3};

int64_t rotate_mib() {
    const char* env = std::getenv("LLMNATIVE_BENCH_ROTATE_MIB");
    return env ? std::atoll(env) : 64;
}

int64_t bytes_per_token(int32_t fmt) {
    llmn_kv_cache_desc d{};
    d.num_layers = 1;
    d.num_kv_heads = kKvHeads;
    d.head_dim = kHeadDim;
    d.block_size = kBlock;
    d.k_format = d.v_format = fmt;
    int64_t b = 0;
    llmn_kv_cache_bytes_per_token(&d, &b);
    return b;
}

struct FormatSetup {
    llmn_kv_cache cache = nullptr;
    std::vector<std::vector<int64_t>> sets;  // rotated copies of the batch
    int64_t call_bytes = 0;
};

struct Setup {
    llmn_context ctx = nullptr;
    llmn_buffer q = nullptr, out = nullptr;
    FormatSetup f[3];
    ~Setup() {
        llmn_buffer_destroy(q);
        llmn_buffer_destroy(out);
        for (auto& x : f) llmn_kv_cache_destroy(x.cache);
        llmn_context_destroy(ctx);
    }
};

bool build(Setup& s, int32_t batch, int64_t context, benchmark::State& state) {
    if (llmn_context_create(LLMN_BACKEND_CPU, 0, &s.ctx) != LLMN_STATUS_OK) {
        state.SkipWithError("context creation failed");
        return false;
    }
    const int32_t chunk = 512;
    std::mt19937 g(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> kv(size_t(chunk) * kKvHeads * kHeadDim);
    for (auto& x : kv) x = nd(g);
    llmn_buffer kb = nullptr;
    llmn_buffer_create(s.ctx, LLMN_DTYPE_F32, int64_t(kv.size()), LLMN_MEMORY_DEVICE, &kb);
    llmn_buffer_upload(kb, 0, kv.data(), int64_t(kv.size()));
    for (int i = 0; i < 3; ++i) {
        FormatSetup& fs = s.f[i];
        fs.call_bytes = int64_t(batch) * context * bytes_per_token(kFormats[i]);
        const int64_t copies = rotate_mib() > 0 ? std::max<int64_t>(1, ((rotate_mib() << 20) + fs.call_bytes - 1) / fs.call_bytes) : 1;
        llmn_kv_cache_desc d{};
        d.num_layers = 1;
        d.num_kv_heads = kKvHeads;
        d.head_dim = kHeadDim;
        d.block_size = kBlock;
        d.k_format = d.v_format = kFormats[i];
        d.max_batch = batch;
        d.capacity_tokens = copies * batch * (context + kBlock);
        if (llmn_kv_cache_create(s.ctx, &d, &fs.cache) != LLMN_STATUS_OK) {
            state.SkipWithError("KV cache allocation failed");
            llmn_buffer_destroy(kb);
            return false;
        }
        fs.sets.assign(size_t(copies), {});
        for (auto& set : fs.sets)
            for (int32_t b = 0; b < batch; ++b) {
                int64_t id = 0;
                llmn_kv_cache_add_sequence(fs.cache, &id);
                set.push_back(id);
            }
        // Interleaved appends: the blocks of all sequences are scattered over the pool.
        for (int64_t done = 0; done < context; done += chunk) {
            const int32_t n = int32_t(std::min<int64_t>(chunk, context - done));
            for (auto& set : fs.sets)
                for (int64_t id : set) llmn_kv_cache_append(fs.cache, id, 0, kb, kb, n);
        }
    }
    llmn_buffer_destroy(kb);
    const int64_t qn = int64_t(batch) * kQHeads * kHeadDim;
    std::vector<float> qv(static_cast<size_t>(qn));
    for (auto& x : qv) x = nd(g);
    llmn_buffer_create(s.ctx, LLMN_DTYPE_F32, qn, LLMN_MEMORY_DEVICE, &s.q);
    llmn_buffer_create(s.ctx, LLMN_DTYPE_F32, qn, LLMN_MEMORY_DEVICE, &s.out);
    llmn_buffer_upload(s.q, 0, qv.data(), qn);
    return true;
}

double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Args: batch, context.
void BM_AttentionQuantVsF16(benchmark::State& state) {
    const int32_t batch = int32_t(state.range(0));
    const int64_t context = state.range(1);
    Setup s;
    if (!build(s, batch, context, state)) return;
    llmn_attention_params p{};
    p.layer = 0;
    p.num_q_heads = kQHeads;
    p.q_len = 1;
    p.num_splits = 0;
    p.scale = 0.08838834764831845f;
    // >= 128 MiB of f16 KV per format and round (>= ~5 ms here), the same call count for all formats.
    const int64_t calls = std::max<int64_t>(1, ((int64_t(128) << 20) + s.f[0].call_bytes - 1) / s.f[0].call_bytes);
    std::vector<double> us[3], cpu_us[3], ratio[2];
    size_t next[3] = {0, 0, 0};
    for (auto _ : state) {
        double secs[3];
        double total = 0.0;
        for (int i = 0; i < 3; ++i) {
            FormatSetup& fs = s.f[i];
            const auto t0 = std::chrono::steady_clock::now();
            const double c0 = thread_cpu_seconds();
            for (int64_t c = 0; c < calls; ++c) {
                const auto& ids = fs.sets[next[i]++ % fs.sets.size()];
                if (llmn_decode_attention(s.ctx, fs.cache, ids.data(), batch, s.q, nullptr, s.out, &p) != LLMN_STATUS_OK) {
                    state.SkipWithError("llmn_decode_attention failed");
                    return;
                }
            }
            secs[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            us[i].push_back(secs[i] / double(calls) * 1e6);
            cpu_us[i].push_back((thread_cpu_seconds() - c0) / double(calls) * 1e6);
            total += secs[i];
        }
        ratio[0].push_back(secs[0] / secs[1]);
        ratio[1].push_back(secs[0] / secs[2]);
        state.SetIterationTime(total);
    }
    const char* names[3] = {"f16", "int8", "fp8"};
    for (int i = 0; i < 3; ++i) {
        const double m = median(us[i]);
        state.counters[std::string(names[i]) + "_us"] = m;
        state.counters[std::string(names[i]) + "_GBps"] = double(s.f[i].call_bytes) / m / 1e3;
        state.counters[std::string(names[i]) + "_cpu_us"] = median(cpu_us[i]);
        state.counters[std::string(names[i]) + "_min_us"] = *std::min_element(us[i].begin(), us[i].end());
    }
    state.counters["int8_x"] = median(ratio[0]);
    state.counters["fp8_x"] = median(ratio[1]);
}

}  // namespace

BENCHMARK(BM_AttentionQuantVsF16)
    ->ArgNames({"batch", "ctx"})
    ->Args({1, 1024})
    ->Args({1, 4096})
    ->Args({1, 32768})
    ->Args({8, 4096})
    ->Args({8, 32768})
    ->Iterations(9)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
