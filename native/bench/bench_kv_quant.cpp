// Decode attention per KV cache format (f16, INT8, FP8-E4M3, KIVI INT4, KIVI INT2; K and V in the same
// format, value groups of 32 for INT4/INT2), Llama-3-8B attention shape (32 q heads, 8 kv heads,
// head_dim 128, q_len 1, one layer, block 16, automatic splits), batch 1 and 8, context 4k and 32k.
// All five caches hold the SAME K/V values (one random chunk appended to every sequence) and are timed
// in the SAME rounds, one format after the other, so their ratios do not depend on how the load of the
// shared machine drifted between two benchmark runs.
//
// Rotation: every format rotates over enough copies of its batch that >= LLMNATIVE_BENCH_ROTATE_MIB
// (default 64; the dev machine's L3 is 16 MiB) MiB of its own cache bytes are touched between two visits
// of a copy, and at least 2 copies unless one copy alone is already past that; every format makes the
// same number of calls per round (enough for >= 128 MiB of f16 KV).
// Counters: {fmt}_us = median over rounds of the time per call; {fmt}_GBps = bytes the call reads from
// the cache (codes + scales/minimums, for KIVI the quantized blocks and the f16 residual rows counted
// as stored bytes per token x context, llmn_kv_cache_bytes_per_token) / median time; {fmt}_x = median
// of the per-round ratio f16 time / fmt time (> 1: faster than f16).
// Run: build/<dir>/native/bench/llmnative_bench --benchmark_filter=KvQuantFormats
#include <benchmark/benchmark.h>
#include <llmnative/llmnative.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int32_t kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlock = 16, kGroup = 32;
constexpr int kNumFormats = 5;
constexpr int32_t kFormats[kNumFormats] = {LLMN_KV_F16, LLMN_KV_INT8, LLMN_KV_FP8_E4M3, LLMN_KV_INT4, LLMN_KV_INT2};
const char* const kNames[kNumFormats] = {"f16", "int8", "fp8", "int4", "int2"};

int64_t rotate_bytes() {
    const char* env = std::getenv("LLMNATIVE_BENCH_ROTATE_MIB");
    return (env ? std::atoll(env) : 64) << 20;
}

llmn_kv_cache_desc desc_for(int32_t fmt) {
    llmn_kv_cache_desc d{};
    d.num_layers = 1;
    d.num_kv_heads = kKvHeads;
    d.head_dim = kHeadDim;
    d.block_size = kBlock;
    d.k_format = d.v_format = fmt;
    d.value_group_size = kGroup;
    return d;
}

struct PerFormat {
    llmn_kv_cache cache = nullptr;
    std::vector<std::vector<int64_t>> sets;  // rotated copies of the batch
    int64_t call_bytes = 0;
};

struct Bench {
    llmn_context ctx = nullptr;
    llmn_buffer q = nullptr, out = nullptr;
    PerFormat f[kNumFormats];
    ~Bench() {
        llmn_buffer_destroy(q);
        llmn_buffer_destroy(out);
        for (auto& x : f) llmn_kv_cache_destroy(x.cache);
        llmn_context_destroy(ctx);
    }
};

bool build(Bench& s, int32_t batch, int64_t context, benchmark::State& state) {
    if (llmn_context_create(LLMN_BACKEND_CPU, 0, &s.ctx) != LLMN_STATUS_OK) {
        state.SkipWithError("context creation failed");
        return false;
    }
    const int32_t chunk = 512;
    std::mt19937 g(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> kv(size_t(chunk) * kKvHeads * kHeadDim);
    for (auto& x : kv) x = nd(g);
    llmn_buffer kb = nullptr;
    llmn_buffer_create(s.ctx, LLMN_DTYPE_F32, int64_t(kv.size()), LLMN_MEMORY_DEVICE, &kb);
    llmn_buffer_upload(kb, 0, kv.data(), int64_t(kv.size()));
    for (int i = 0; i < kNumFormats; ++i) {
        PerFormat& fs = s.f[i];
        llmn_kv_cache_desc d = desc_for(kFormats[i]);
        int64_t bpt = 0;
        llmn_kv_cache_bytes_per_token(&d, &bpt);
        fs.call_bytes = int64_t(batch) * context * bpt;
        const int64_t rot = rotate_bytes();
        const int64_t copies = rot > 0 ? std::max<int64_t>(fs.call_bytes >= rot ? 1 : 2, (rot + fs.call_bytes - 1) / fs.call_bytes) : 1;
        d.max_batch = int32_t(copies * batch);  // KIVI: one residual slot per live sequence
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
        // Interleaved appends scatter every sequence's blocks over the pool.
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

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Args: batch, context.
void BM_KvQuantFormats(benchmark::State& state) {
    const int32_t batch = int32_t(state.range(0));
    const int64_t context = state.range(1);
    Bench s;
    if (!build(s, batch, context, state)) return;
    llmn_attention_params p{};
    p.layer = 0;
    p.num_q_heads = kQHeads;
    p.q_len = 1;
    p.scale = 0.08838834764831845f;
    const int64_t calls = std::max<int64_t>(1, ((int64_t(128) << 20) + s.f[0].call_bytes - 1) / s.f[0].call_bytes);
    std::vector<double> us[kNumFormats], ratio[kNumFormats];
    size_t next[kNumFormats] = {};
    for (auto _ : state) {
        double secs[kNumFormats], total = 0.0;
        for (int i = 0; i < kNumFormats; ++i) {
            PerFormat& fs = s.f[i];
            const auto t0 = std::chrono::steady_clock::now();
            for (int64_t c = 0; c < calls; ++c) {
                const auto& ids = fs.sets[next[i]++ % fs.sets.size()];
                if (llmn_decode_attention(s.ctx, fs.cache, ids.data(), batch, s.q, nullptr, s.out, &p) != LLMN_STATUS_OK) {
                    state.SkipWithError("llmn_decode_attention failed");
                    return;
                }
            }
            secs[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            us[i].push_back(secs[i] / double(calls) * 1e6);
            total += secs[i];
        }
        for (int i = 1; i < kNumFormats; ++i) ratio[i].push_back(secs[0] / secs[i]);
        state.SetIterationTime(total);
    }
    for (int i = 0; i < kNumFormats; ++i) {
        const double m = median(us[i]);
        state.counters[std::string(kNames[i]) + "_us"] = m;
        state.counters[std::string(kNames[i]) + "_GBps"] = double(s.f[i].call_bytes) / m / 1e3;
        if (i > 0) state.counters[std::string(kNames[i]) + "_x"] = median(ratio[i]);
    }
}

}  // namespace

BENCHMARK(BM_KvQuantFormats)
    ->ArgNames({"batch", "ctx"})
    ->Args({1, 4096})
    ->Args({1, 32768})
    ->Args({8, 4096})
    ->Args({8, 32768})
    ->Iterations(7)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
