// Decode attention per KV cache format, all formats timed side by side in the SAME rounds on the SAME
// data (one random K/V chunk appended to every sequence of every cache), so the ratios between formats
// do not depend on how the load of the shared machine drifted between two benchmark runs. Llama-3-8B
// attention shape (32 q heads, 8 kv heads, head_dim 128, q_len 1, one layer, block 16, automatic
// splits). One benchmark iteration = one round: for each format in turn, `calls` attention calls
// rotating over that format's copies of the batch, timed; every format makes the same number of calls
// per round (enough for >= 128 MiB of f16 KV, >= ~5 ms here).
//
// BM_KvQuantFormats: f16, INT8, INT8 with the int8 query (LLMN_ATTN_FLAG_INT8_QUERY, "int8q"),
// FP8-E4M3, KIVI INT4, KIVI INT2 (K and V in the same format, value
// groups of 32 for INT4/INT2), batch 1 and 8, context 4k, 32k and 128k (8 x 128k holds all five caches
// at once, ~12 GiB; where that does not fit, the case reports the allocation error). Every format
// rotates over enough copies that >= LLMNATIVE_BENCH_ROTATE_MIB (default 64; the dev machine's L3 is
// 16 MiB) MiB of its own cache bytes are touched between two visits of a copy, and at least 2 copies
// unless one copy alone is already past that.
// Counters: {fmt}_us = median over rounds of the time per call; {fmt}_GBps = bytes the call reads from
// the cache (codes + scales/minimums, for KIVI the quantized blocks and the f16 residual rows counted
// as stored bytes per token x context, llmn_kv_cache_bytes_per_token) / median time; {fmt}_x = median
// of the per-round ratio f16 time / fmt time (> 1: faster than f16).
//
// BM_AttentionQuantVsF16: f16 vs INT8 (f32 and int8 query) vs FP8-E4M3 only, also at 1 x 1k, with the
// per-thread CPU time.
// Copies: >= LLMNATIVE_BENCH_ROTATE_MIB (default 64) MiB of each format's KV between two visits (one
// copy may do). Counters as above for f16/int8/fp8, plus {fmt}_min_us = the fastest round's time per
// call and {fmt}_cpu_us = median CPU time of the calling thread per call (with LLMNATIVE_NUM_THREADS=1
// the whole kernel's CPU time, not inflated by time slicing in the guest). The f16 cache runs the f16
// kernel of the active ISA (AVX-512 where detected), INT8/FP8 the quantized-KV kernel
// (decode_attention_quant_avx2.cpp, zmm loops under AVX-512).
// BM_KiviIsa: f16 (detected ISA's kernel) vs the KIVI INT4 / INT2 kernels at AVX2 and at AVX-512 width
// (llmn_set_cpu_isa before each format's calls), same rounds, as BM_KvQuantFormats; needs AVX-512.
// BM_Int8QueryHeadDim: the INT8 query (LLMN_ATTN_FLAG_INT8_QUERY) against the f32 query per head_dim (below).
// LLMNATIVE_BENCH_ROTATE_MIB=0: one copy (cache-resident for small sizes: the compute-bound rate).
// Run: build/<dir>/native/bench/llmnative_bench --benchmark_filter='KvQuantFormats|AttentionQuantVsF16'
#include <benchmark/benchmark.h>
#include <llmnative/llmnative.h>

#include "bench_util.hpp"
#include "cpu/cpu_runtime.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <time.h>
#include <vector>

namespace {

using namespace llmn_bench;

// What differs between the two benchmarks of this file.
struct Variant {
    std::vector<int32_t> formats;  // formats[0] is f16: the reference of the ratios
    std::vector<const char*> names;
    uint32_t seed;              // of the K/V chunk and the queries
    int32_t value_group_size;   // 0: not set (no KIVI format)
    bool at_least_two_copies;   // 2 copies unless one alone already covers the rotation bytes
    bool slot_per_sequence;     // max_batch = all live sequences (KIVI: one residual slot each), else batch
    bool cpu_counters;          // report {fmt}_cpu_us and {fmt}_min_us
    std::vector<int32_t> isas = {};  // per format: llmn_set_cpu_isa before its calls (empty: detected ISA)
    std::vector<int32_t> flags = {}; // per format: llmn_attention_params.flags (empty: 0)
};

// "int8q": the INT8 cache attended with LLMN_ATTN_FLAG_INT8_QUERY (a cache of its own, same data).
const Variant kFormats5{{LLMN_KV_F16, LLMN_KV_INT8, LLMN_KV_INT8, LLMN_KV_FP8_E4M3, LLMN_KV_INT4, LLMN_KV_INT4, LLMN_KV_INT2, LLMN_KV_INT2},
                        {"f16", "int8", "int8q", "fp8", "int4", "int4q", "int2", "int2q"},
                        7, 32, true, true, false, {},
                        {0, 0, LLMN_ATTN_FLAG_INT8_QUERY, 0, 0, LLMN_ATTN_FLAG_INT8_QUERY, 0, LLMN_ATTN_FLAG_INT8_QUERY}};
const Variant kFormats3{{LLMN_KV_F16, LLMN_KV_INT8, LLMN_KV_INT8, LLMN_KV_FP8_E4M3},
                        {"f16", "int8", "int8q", "fp8"},
                        11, 0, false, false, true, {},
                        {0, 0, LLMN_ATTN_FLAG_INT8_QUERY, 0}};
// The KIVI kernels of both vector widths against the f16 kernel of the detected ISA, same rounds.
const Variant kKiviIsas{{LLMN_KV_F16, LLMN_KV_INT4, LLMN_KV_INT4, LLMN_KV_INT2, LLMN_KV_INT2},
                        {"f16", "int4_avx2", "int4_avx512", "int2_avx2", "int2_avx512"},
                        7, 32, true, true, false,
                        {-1, LLMN_CPU_ISA_AVX2, LLMN_CPU_ISA_AVX512, LLMN_CPU_ISA_AVX2, LLMN_CPU_ISA_AVX512}};

struct PerFormat {
    llmn_kv_cache cache = nullptr;
    std::vector<std::vector<int64_t>> sets;  // rotated copies of the batch
    int64_t call_bytes = 0;
};

struct Bench {
    llmn_context ctx = nullptr;
    llmn_buffer q = nullptr, out = nullptr;
    std::vector<PerFormat> f;
    ~Bench() {
        llmn_buffer_destroy(q);
        llmn_buffer_destroy(out);
        for (auto& x : f) llmn_kv_cache_destroy(x.cache);
        llmn_context_destroy(ctx);
    }
};

bool build(Bench& s, const Variant& var, int32_t batch, int64_t context, benchmark::State& state) {
    if (llmn_context_create(LLMN_BACKEND_CPU, 0, &s.ctx) != LLMN_STATUS_OK) {
        state.SkipWithError("context creation failed");
        return false;
    }
    std::mt19937 g(var.seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    llmn_buffer kb = random_buffer(s.ctx, g, nd, int64_t(kChunk) * kKvHeads * kHeadDim);
    s.f.resize(var.formats.size());
    for (size_t i = 0; i < var.formats.size(); ++i) {
        PerFormat& fs = s.f[i];
        llmn_kv_cache_desc d = bench_desc(var.formats[i], var.value_group_size);
        fs.call_bytes = int64_t(batch) * context * bytes_per_token(var.formats[i], var.value_group_size);
        const int64_t rot = rotate_bytes(64);
        const int64_t min_copies = var.at_least_two_copies && fs.call_bytes < rot ? 2 : 1;
        const int64_t copies = rot > 0 ? std::max<int64_t>(min_copies, (rot + fs.call_bytes - 1) / fs.call_bytes) : 1;
        d.max_batch = var.slot_per_sequence ? int32_t(copies * batch) : batch;
        d.capacity_tokens = copies * batch * (context + kBlock);
        if (llmn_kv_cache_create(s.ctx, &d, &fs.cache) != LLMN_STATUS_OK) {
            state.SkipWithError("KV cache allocation failed");
            llmn_buffer_destroy(kb);
            return false;
        }
        fs.sets = fill_rotated(fs.cache, copies, batch, context, kb);
    }
    llmn_buffer_destroy(kb);
    const int64_t qn = int64_t(batch) * kQHeads * kHeadDim;
    s.q = random_buffer(s.ctx, g, nd, qn);
    llmn_buffer_create(s.ctx, LLMN_DTYPE_F32, qn, LLMN_MEMORY_DEVICE, &s.out);
    return true;
}

double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// Args: batch, context.
void run_formats(benchmark::State& state, const Variant& var) {
    const int32_t batch = int32_t(state.range(0));
    const int64_t context = state.range(1);
    Bench s;
    if (!build(s, var, batch, context, state)) return;
    llmn_attention_params p{};
    p.layer = 0;
    p.num_q_heads = kQHeads;
    p.q_len = 1;
    p.num_splits = 0;
    p.scale = kScale;
    const size_t nf = var.formats.size();
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    for (int32_t isa : var.isas)
        if (isa > info.detected_isa) {
            state.SkipWithError("this CPU lacks an ISA the benchmark compares (BM_KiviIsa needs AVX-512)");
            return;
        }
    // LLMNATIVE_BENCH_ISA=scalar|avx2|avx512 caps the kernels of every format (not with BM_KiviIsa, which
    // sets the ISA per format), as in BM_DecodeAttention: e.g. the AVX2 paths on an AVX-512 machine.
    if (const char* isa = std::getenv("LLMNATIVE_BENCH_ISA"); isa && var.isas.empty()) {
        const int32_t v = std::strcmp(isa, "scalar") == 0 ? LLMN_CPU_ISA_SCALAR
                          : std::strcmp(isa, "avx2") == 0 ? LLMN_CPU_ISA_AVX2 : LLMN_CPU_ISA_AVX512;
        if (llmn_set_cpu_isa(v) != LLMN_STATUS_OK) {
            state.SkipWithError("LLMNATIVE_BENCH_ISA: not available on this CPU");
            return;
        }
    }
    const int64_t calls = std::max<int64_t>(1, ((int64_t(128) << 20) + s.f[0].call_bytes - 1) / s.f[0].call_bytes);
    std::vector<std::vector<double>> us(nf), cpu_us(nf), ratio(nf);
    std::vector<size_t> next(nf, 0);
    std::vector<double> secs(nf);
    for (auto _ : state) {
        double total = 0.0;
        for (size_t i = 0; i < nf; ++i) {
            PerFormat& fs = s.f[i];
            if (!var.isas.empty()) llmn_set_cpu_isa(var.isas[i] >= 0 ? var.isas[i] : info.detected_isa);
            p.flags = var.flags.empty() ? 0 : var.flags[i];
            const auto t0 = std::chrono::steady_clock::now();
            const double c0 = var.cpu_counters ? thread_cpu_seconds() : 0.0;
            for (int64_t c = 0; c < calls; ++c) {
                const auto& ids = fs.sets[next[i]++ % fs.sets.size()];
                if (llmn_decode_attention(s.ctx, fs.cache, ids.data(), batch, s.q, nullptr, s.out, &p) != LLMN_STATUS_OK) {
                    state.SkipWithError("llmn_decode_attention failed");
                    return;
                }
            }
            secs[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            us[i].push_back(secs[i] / double(calls) * 1e6);
            if (var.cpu_counters) cpu_us[i].push_back((thread_cpu_seconds() - c0) / double(calls) * 1e6);
            total += secs[i];
        }
        for (size_t i = 1; i < nf; ++i) ratio[i].push_back(secs[0] / secs[i]);
        state.SetIterationTime(total);
    }
    for (size_t i = 0; i < nf; ++i) {
        const std::string name = var.names[i];
        const double m = median(us[i]);
        state.counters[name + "_us"] = m;
        state.counters[name + "_GBps"] = double(s.f[i].call_bytes) / m / 1e3;
        if (var.cpu_counters) {
            state.counters[name + "_cpu_us"] = median(cpu_us[i]);
            state.counters[name + "_min_us"] = *std::min_element(us[i].begin(), us[i].end());
        }
        if (i > 0) state.counters[name + "_x"] = median(ratio[i]);
    }
}

void BM_KvQuantFormats(benchmark::State& state) { run_formats(state, kFormats5); }
void BM_AttentionQuantVsF16(benchmark::State& state) { run_formats(state, kFormats3); }
void BM_KiviIsa(benchmark::State& state) {
    run_formats(state, kKiviIsas);
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    llmn_set_cpu_isa(info.detected_isa);
}

// BM_Int8QueryHeadDim: one format (INT8, or KIVI INT4 / INT2 with value groups of 32; K and V alike) at
// head_dim 64 / 80 / 96 / 128 / 256, 8 kv heads x GQA 4, batch 1, context 8k, block 16: the same cache
// attended without and with LLMN_ATTN_FLAG_INT8_QUERY, alternating in the same rounds, rotating over
// >= LLMNATIVE_BENCH_ROTATE_MIB (default 64) MiB; LLMNATIVE_BENCH_ISA caps the kernels. Counters: f32_us / q8_us (medians per call) and x =
// median of the per-round ratios f32 time / int8-query time; where the active ISA has VNNI
// (AVX512-VNNI, or AVX-VNNI under AVX2) also q8novnni_us (the int8 query with it off, same rounds) and
// vnni_x = median of novnni time / VNNI time. Args: head_dim, format.
void BM_Int8QueryHeadDim(benchmark::State& state) {
    const int32_t D = int32_t(state.range(0)), fmt = int32_t(state.range(1));
    const bool kivi = fmt == LLMN_KV_INT4 || fmt == LLMN_KV_INT2;
    const int64_t context = 8192;
    if (kivi && D % 32 != 0) {
        state.SkipWithError("no KIVI value group (32 / 64 / 128) divides this head_dim");
        return;
    }
    if (const char* isa = std::getenv("LLMNATIVE_BENCH_ISA")) {  // as run_formats: e.g. avx2 on an AVX-512 machine
        const int32_t v = std::strcmp(isa, "scalar") == 0 ? LLMN_CPU_ISA_SCALAR
                          : std::strcmp(isa, "avx2") == 0 ? LLMN_CPU_ISA_AVX2 : LLMN_CPU_ISA_AVX512;
        if (llmn_set_cpu_isa(v) != LLMN_STATUS_OK) {
            state.SkipWithError("LLMNATIVE_BENCH_ISA: not available on this CPU");
            return;
        }
    }
    Bench s;
    if (llmn_context_create(LLMN_BACKEND_CPU, 0, &s.ctx) != LLMN_STATUS_OK) {
        state.SkipWithError("context creation failed");
        return;
    }
    llmn_kv_cache_desc d = bench_desc(fmt, kivi ? 32 : 0);
    d.head_dim = D;
    int64_t per_token = 0;
    llmn_kv_cache_bytes_per_token(&d, &per_token);
    const int64_t call_bytes = context * per_token, rot = rotate_bytes(64);
    const int64_t copies = rot > 0 ? std::max<int64_t>(2, (rot + call_bytes - 1) / call_bytes) : 1;
    d.max_batch = int32_t(copies);
    d.capacity_tokens = copies * (context + kBlock);
    s.f.resize(1);
    if (llmn_kv_cache_create(s.ctx, &d, &s.f[0].cache) != LLMN_STATUS_OK) {
        state.SkipWithError("KV cache allocation failed");
        return;
    }
    std::mt19937 g(13);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    llmn_buffer kb = random_buffer(s.ctx, g, nd, int64_t(kChunk) * kKvHeads * D);
    s.f[0].sets = fill_rotated(s.f[0].cache, copies, 1, context, kb);
    llmn_buffer_destroy(kb);
    const int64_t qn = int64_t(kKvHeads) * 4 * D;
    s.q = random_buffer(s.ctx, g, nd, qn);
    llmn_buffer_create(s.ctx, LLMN_DTYPE_F32, qn, LLMN_MEMORY_DEVICE, &s.out);
    llmn_attention_params p{};
    p.layer = 0;
    p.num_q_heads = kKvHeads * 4;
    p.q_len = 1;
    p.scale = 1.0f / std::sqrt(float(D));
    const int64_t calls = std::max<int64_t>(16, ((int64_t(64) << 20) + call_bytes - 1) / call_bytes);
    // Third column where the CPU has the ISA's VNNI (AVX512-VNNI, or AVX-VNNI under AVX2): the int8 query
    // with it turned off (vpmaddubsw), same rounds.
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    const bool has_vnni = info.active_isa == LLMN_CPU_ISA_AVX512 ? llmn::cpu::avx512_vnni()
                          : info.active_isa == LLMN_CPU_ISA_AVX2 ? llmn::cpu::avx_vnni()
                                                                 : false;
    const int nf = has_vnni ? 3 : 2;
    std::vector<double> us[3], ratio, ratio_nv;
    size_t next = 0;
    for (auto _ : state) {
        double secs[3];
        for (int f = 0; f < nf; ++f) {
            p.flags = f ? LLMN_ATTN_FLAG_INT8_QUERY : 0;
            llmn::cpu::set_avx512_vnni(f != 2);
            llmn::cpu::set_avx_vnni(f != 2);
            const auto t0 = std::chrono::steady_clock::now();
            for (int64_t c = 0; c < calls; ++c) {
                const auto& ids = s.f[0].sets[next++ % s.f[0].sets.size()];
                if (llmn_decode_attention(s.ctx, s.f[0].cache, ids.data(), 1, s.q, nullptr, s.out, &p) != LLMN_STATUS_OK) {
                    state.SkipWithError("llmn_decode_attention failed");
                    return;
                }
            }
            secs[f] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            us[f].push_back(secs[f] / double(calls) * 1e6);
        }
        llmn::cpu::set_avx512_vnni(true);
        llmn::cpu::set_avx_vnni(true);
        ratio.push_back(secs[0] / secs[1]);
        if (nf == 3) ratio_nv.push_back(secs[2] / secs[1]);
        state.SetIterationTime(secs[0] + secs[1] + (nf == 3 ? secs[2] : 0.0));
    }
    state.counters["f32_us"] = median(us[0]);
    state.counters["q8_us"] = median(us[1]);
    state.counters["x"] = median(ratio);
    if (nf == 3) {
        state.counters["q8novnni_us"] = median(us[2]);
        state.counters["vnni_x"] = median(ratio_nv);
    }
}

}  // namespace

BENCHMARK(BM_Int8QueryHeadDim)
    ->ArgNames({"head_dim", "kv"})
    ->ArgsProduct({{64, 80, 96, 128, 256}, {LLMN_KV_INT8, LLMN_KV_INT4, LLMN_KV_INT2}})
    ->Iterations(7)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_KvQuantFormats)
    ->ArgNames({"batch", "ctx"})
    ->Args({1, 4096})
    ->Args({1, 32768})
    ->Args({1, 131072})
    ->Args({8, 4096})
    ->Args({8, 32768})
    ->Args({8, 131072})
    ->Iterations(7)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

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

BENCHMARK(BM_KiviIsa)
    ->ArgNames({"batch", "ctx"})
    ->Args({1, 4096})
    ->Args({1, 32768})
    ->Args({8, 4096})
    ->Args({8, 32768})
    ->Iterations(7)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

namespace {

// BM_KvAppend: time of llmn_kv_cache_append per token for each storage format, Llama-3-8B shape (8 kv
// heads x 128, one layer, block 16), f32 input. Args: tokens per append call (1: decode step; 512:
// a prefill chunk). One iteration = one sequence filled to 4096 tokens by calls of that size, then
// removed (the pool is reused, so page faults are not timed after the first iteration).
// Counters: {fmt}_ns_per_token (median over iterations) and {fmt}_MBps of f32 K+V input consumed.
void BM_KvAppend(benchmark::State& state) {
    const int32_t per_call = int32_t(state.range(0));
    constexpr int64_t kTokens = 4096;
    const std::vector<int32_t> formats = {LLMN_KV_F16, LLMN_KV_INT8, LLMN_KV_FP8_E4M3, LLMN_KV_INT4, LLMN_KV_INT2};
    const std::vector<const char*> names = {"f16", "int8", "fp8", "int4", "int2"};
    llmn_context ctx = nullptr;
    if (llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx) != LLMN_STATUS_OK) {
        state.SkipWithError("context creation failed");
        return;
    }
    std::mt19937 g(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    llmn_buffer kb = random_buffer(ctx, g, nd, int64_t(per_call) * kKvHeads * kHeadDim);
    llmn_buffer vb = random_buffer(ctx, g, nd, int64_t(per_call) * kKvHeads * kHeadDim);
    std::vector<llmn_kv_cache> caches(formats.size(), nullptr);
    for (size_t i = 0; i < formats.size(); ++i) {
        llmn_kv_cache_desc d = bench_desc(formats[i], 32);
        d.max_batch = 1;
        d.capacity_tokens = kTokens + kBlock;
        if (llmn_kv_cache_create(ctx, &d, &caches[i]) != LLMN_STATUS_OK) state.SkipWithError("KV cache allocation failed");
    }
    std::vector<std::vector<double>> ns(formats.size());
    for (auto _ : state) {
        double total = 0.0;
        for (size_t i = 0; i < formats.size() && caches[i]; ++i) {
            int64_t id = 0;
            llmn_kv_cache_add_sequence(caches[i], &id);
            const auto t0 = std::chrono::steady_clock::now();
            for (int64_t done = 0; done < kTokens; done += per_call)
                if (llmn_kv_cache_append(caches[i], id, 0, kb, vb, per_call) != LLMN_STATUS_OK) {
                    state.SkipWithError("append failed");
                    break;
                }
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            llmn_kv_cache_remove_sequence(caches[i], id);
            ns[i].push_back(s / double(kTokens) * 1e9);
            total += s;
        }
        state.SetIterationTime(total);
    }
    for (size_t i = 0; i < formats.size(); ++i) {
        if (ns[i].empty()) continue;
        const double m = median(ns[i]);
        state.counters[std::string(names[i]) + "_ns_per_token"] = m;
        state.counters[std::string(names[i]) + "_MBps"] = 2.0 * kKvHeads * kHeadDim * 4 / m * 1e3;
    }
    for (llmn_kv_cache c : caches) llmn_kv_cache_destroy(c);
    llmn_buffer_destroy(kb);
    llmn_buffer_destroy(vb);
    llmn_context_destroy(ctx);
}

}  // namespace

BENCHMARK(BM_KvAppend)->ArgNames({"tokens_per_call"})->Arg(1)->Arg(512)->Iterations(5)->UseManualTime()->Unit(benchmark::kMillisecond);
