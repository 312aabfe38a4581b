// Decode attention on the CPU backend, Llama-3-8B attention shape (32 q heads, 8 kv heads,
// head_dim 128, q_len 1, f16 KV, one layer), against the machine's streaming-read bandwidth measured
// in the same binary with the same thread pool (BM_StreamRead: sum of a 1 GiB array).
//
// Counters (BM_DecodeAttention): us_per_call, KV_GBps = K+V bytes read / time, frac_of_stream =
// KV_GBps / streaming-read GB/s measured in the same round (see below). Every configuration rotates
// over enough independent copies of its batch that >= 256 MiB of KV is touched between two visits
// of the same copy, so no run is served from the (16-32 MiB) L3 cache.
// BM_DecodeAttentionQuant: the same with INT8 / FP8-E4M3 K and V (batch 1 x 4k / 32k).
// BM_AttentionCoreRoofline (x86 with AVX2): the compute ceiling of the AVX2 f16 kernel on this CPU, for
// comparison with BM_DecodeAttention's KV_GBps: every pool thread runs the kernel's inner-loop mix (two
// F16C conversions of 8 halves and 8 FMAs = 4 query rows x 2 keys x 8 channels of q.k, the same mix as
// p.v's 4 rows x 16 channels) on data in L1, so memory plays no part; each mix iteration covers 32
// bytes of f16 K or V at GQA group 4, hence KV_GBps = iterations/s x 32 B. The attention kernel also does
// softmax, reductions and pointer work, so it stays below this ceiling.
// Run: build/<dir>/native/bench/llmnative_bench --benchmark_filter='StreamRead|DecodeAttention'
#include <benchmark/benchmark.h>
#include <llmnative/llmnative.h>

#include "bench_util.hpp"
#include "cpu/cpu_runtime.hpp"
#include "kernels/kv_cache/kv_cache.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

using namespace llmn_bench;

// Sum of 64-bit words over fixed chunks handed to the pool; integer adds vectorise freely.
double stream_read_once(const uint64_t* a, size_t words, uint64_t* sink) {
    const int64_t chunks = 256;
    std::vector<uint64_t> part(chunks);
    auto t0 = std::chrono::steady_clock::now();
    llmn::cpu::parallel_for(chunks, [&](int64_t c) {
        const size_t b = words * size_t(c) / chunks, e = words * size_t(c + 1) / chunks;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = b;
        for (; i + 4 <= e; i += 4) {
            s0 += a[i];
            s1 += a[i + 1];
            s2 += a[i + 2];
            s3 += a[i + 3];
        }
        for (; i < e; ++i) s0 += a[i];
        part[size_t(c)] = s0 + s1 + s2 + s3;
    });
    auto t1 = std::chrono::steady_clock::now();
    for (uint64_t p : part) *sink += p;
    return std::chrono::duration<double>(t1 - t0).count();
}

struct StreamArray {
    size_t words;
    uint64_t* a = nullptr;
    explicit StreamArray(size_t n_words = (size_t(1) << 30) / 8) : words(n_words) {
        a = static_cast<uint64_t*>(std::aligned_alloc(64, words * 8));
        llmn::cpu::parallel_for(64, [&](int64_t c) {
            for (size_t i = words * size_t(c) / 64; i < words * size_t(c + 1) / 64; ++i) a[i] = i;
        });
    }
    ~StreamArray() { std::free(a); }
};

void BM_StreamRead(benchmark::State& state) {
    StreamArray s;
    uint64_t sink = 0;
    for (auto _ : state) {
        double secs = stream_read_once(s.a, s.words, &sink);
        state.SetIterationTime(secs);
    }
    benchmark::DoNotOptimize(sink);
    state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(s.words * 8));
    state.counters["threads"] = llmn::cpu::thread_count();
}

struct AttentionSetup {
    llmn_context ctx = nullptr;
    llmn_kv_cache cache = nullptr;
    llmn_buffer q = nullptr, out = nullptr;
    std::vector<std::vector<int64_t>> sets;  // rotated batches
    ~AttentionSetup() {
        llmn_buffer_destroy(q);
        llmn_buffer_destroy(out);
        llmn_kv_cache_destroy(cache);
        llmn_context_destroy(ctx);
    }
};

// One cache of the format with >= 2 copies of the batch (rotation: >= 256 MiB of KV between two visits
// of a copy; LLMNATIVE_BENCH_ROTATE_MIB overrides, 0: one copy, cache-resident for small sizes, which
// shows the kernel's compute-bound rate).
bool build(AttentionSetup& s, int32_t batch, int64_t context, benchmark::State& state, int32_t fmt = LLMN_KV_F16) {
    const int64_t batch_bytes = int64_t(batch) * context * bytes_per_token(fmt);
    const int64_t rot = rotate_bytes(256);
    const int64_t copies = std::max<int64_t>(rot > 0 ? 2 : 1, (rot + batch_bytes - 1) / batch_bytes);
    if (llmn_context_create(LLMN_BACKEND_CPU, 0, &s.ctx) != LLMN_STATUS_OK) return false;
    llmn_kv_cache_desc d = bench_desc(fmt);
    d.max_batch = std::max(batch, 1);
    d.capacity_tokens = copies * batch * (context + kBlock);
    if (llmn_kv_cache_create(s.ctx, &d, &s.cache) != LLMN_STATUS_OK) {
        state.SkipWithError("KV cache allocation failed");
        return false;
    }
    // LLMNATIVE_BENCH_SHUFFLE=1: a shuffled free list, so no two consecutive blocks of a sequence are
    // neighbours in the pool (a long-running server's pool); default: the fresh free list's order.
    if (const char* sh = std::getenv("LLMNATIVE_BENCH_SHUFFLE"); sh && std::strcmp(sh, "1") == 0)
        llmn::lookup<llmn::KvCache>(s.cache, "cache")->debug_shuffle_free_list(7);
    std::mt19937 g(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    llmn_buffer kb = random_buffer(s.ctx, g, nd, int64_t(kChunk) * kKvHeads * kHeadDim);
    s.sets = fill_rotated(s.cache, copies, batch, context, kb);
    llmn_buffer_destroy(kb);
    const int64_t qn = int64_t(batch) * kQHeads * kHeadDim;
    s.q = random_buffer(s.ctx, g, nd, qn);
    llmn_buffer_create(s.ctx, LLMN_DTYPE_F32, qn, LLMN_MEMORY_DEVICE, &s.out);
    return true;
}

// Args: batch, context, num_splits (0 = automatic). One benchmark iteration = one ROUND: enough
// attention calls (rotating over the copies) to stream >= 256 MiB of KV, timed (manual time), then one
// timed streaming-read pass over a 256 MiB array. The per-round ratio of the two bandwidths is
// robust to the load of a shared machine (both halves of a round see nearly the same conditions);
// frac_of_stream is its median over the rounds, frac_best its maximum.
void run_decode_attention(benchmark::State& state, int32_t batch, int64_t context, int32_t splits, int32_t fmt) {
    // LLMNATIVE_BENCH_ISA=scalar|avx2|avx512 caps the kernels (default: the best detected).
    if (const char* isa = std::getenv("LLMNATIVE_BENCH_ISA")) {
        const int32_t v = std::strcmp(isa, "scalar") == 0 ? LLMN_CPU_ISA_SCALAR
                          : std::strcmp(isa, "avx2") == 0 ? LLMN_CPU_ISA_AVX2 : LLMN_CPU_ISA_AVX512;
        if (llmn_set_cpu_isa(v) != LLMN_STATUS_OK) {
            state.SkipWithError("LLMNATIVE_BENCH_ISA: not available on this CPU");
            return;
        }
    }
    AttentionSetup s;
    if (!build(s, batch, context, state, fmt)) return;
    llmn_attention_params p{};
    p.layer = 0;
    p.num_q_heads = kQHeads;
    p.q_len = 1;
    p.num_splits = splits;
    p.scale = kScale;
    const double kv_bytes = double(batch) * double(context) * double(bytes_per_token(fmt));
    const int64_t calls = std::max<int64_t>(1, int64_t(std::ceil(double(int64_t(256) << 20) / kv_bytes)));
    const size_t stream_words = (size_t(256) << 20) / 8;
    StreamArray sa(stream_words);
    uint64_t sink = 0;
    std::vector<double> ratios, att_gbps, str_gbps;
    double att_seconds = 0.0;
    size_t i = 0;
    for (auto _ : state) {
        auto t0 = std::chrono::steady_clock::now();
        for (int64_t c = 0; c < calls; ++c) {
            const auto& ids = s.sets[i++ % s.sets.size()];
            if (llmn_decode_attention(s.ctx, s.cache, ids.data(), batch, s.q, nullptr, s.out, &p) != LLMN_STATUS_OK) {
                state.SkipWithError("llmn_decode_attention failed");
                return;
            }
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        state.SetIterationTime(secs);
        att_seconds += secs;
        const double st = stream_read_once(sa.a, sa.words, &sink);
        att_gbps.push_back(kv_bytes * double(calls) / secs / 1e9);
        str_gbps.push_back(double(sa.words * 8) / st / 1e9);
        ratios.push_back(att_gbps.back() / str_gbps.back());
    }
    benchmark::DoNotOptimize(sink);
    const double total_calls = double(state.iterations()) * double(calls);
    state.SetBytesProcessed(int64_t(total_calls * kv_bytes));
    state.counters["us_per_call"] = att_seconds / total_calls * 1e6;
    state.counters["KV_GBps"] = median(att_gbps);
    state.counters["stream_GBps"] = median(str_gbps);
    state.counters["frac_of_stream"] = median(ratios);
    state.counters["frac_best"] = *std::max_element(ratios.begin(), ratios.end());
    state.counters["rotated_copies"] = double(s.sets.size());
}

#if defined(__x86_64__)
// One thread's share: `iters` mix iterations over a 4 KiB L1-resident f16 buffer; returns a checksum.
__attribute__((target("avx2,fma,f16c"))) float core_mix(const uint16_t* buf, int64_t iters) {
    __m256 a[8];
    for (auto& x : a) x = _mm256_setzero_ps();
    __m256 q[4];
    for (int r = 0; r < 4; ++r) q[r] = _mm256_set1_ps(0.01f * float(r + 1));
    for (int64_t i = 0; i < iters; ++i) {
        const uint16_t* p = buf + ((i * 16) & 2047);
        const __m256 k0 = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
        const __m256 k1 = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p + 8)));
        for (int r = 0; r < 4; ++r) {
            a[2 * r] = _mm256_fmadd_ps(q[r], k0, a[2 * r]);
            a[2 * r + 1] = _mm256_fmadd_ps(q[r], k1, a[2 * r + 1]);
        }
    }
    __m256 t = a[0];
    for (int j = 1; j < 8; ++j) t = _mm256_add_ps(t, a[j]);
    alignas(32) float o[8];
    _mm256_store_ps(o, t);
    return o[0] + o[7];
}

// BM_KvTileRead (x86 with AVX-512 F): the memory side of a decode work item without the attention
// math, for the pool layouts of kv_layout.hpp. A 1 GiB pool of 8 KiB head tiles (f16, block 16,
// head_dim 128) of 8 kv heads; the pool threads take one kv head at a time and read its tiles of every
// block in block order, with T1 software prefetch 128 lines (8 KiB) ahead and ~8 cycles of dependent
// FMA work per 64-byte line (about the f16 kernel's compute per line at GQA 4). Arg 0: block-major
// slabs [block][kv_head][tile] (a head's tiles 64 KiB apart), the layout before 2026-12-06; 1: head-major
// [kv_head][block][tile] (a head's tiles back to back: the layout since). GB/s = bytes read / time.
__attribute__((target("avx512f"))) double tile_read_head(const char* pool, size_t head, size_t blocks, bool head_major) {
    constexpr size_t kTile = 8192, kHeads = 8, kLines = kTile / 64;
    auto line = [&](size_t i) {  // address of line i of this head's stream
        const size_t b = i / kLines, l = i % kLines;
        return pool + (head_major ? (head * blocks + b) * kTile : (b * kHeads + head) * kTile) + l * 64;
    };
    const size_t n = blocks * kLines;
    __m512i s = _mm512_setzero_si512();
    __m512 a = _mm512_setzero_ps(), c = _mm512_setzero_ps();
    const __m512 m = _mm512_set1_ps(1.0001f);
    for (size_t i = 0; i < n; ++i) {
        if (i + 128 < n) _mm_prefetch(line(i + 128), _MM_HINT_T1);
        s = _mm512_add_epi64(s, _mm512_load_si512(reinterpret_cast<const void*>(line(i))));
        a = _mm512_fmadd_ps(a, m, m);
        c = _mm512_fmadd_ps(c, m, m);
        a = _mm512_fmadd_ps(a, m, m);
        c = _mm512_fmadd_ps(c, m, m);
    }
    alignas(64) int64_t o[8];
    _mm512_store_si512(o, s);
    alignas(64) float f[16];
    _mm512_store_ps(f, _mm512_add_ps(a, c));
    return double(o[0]) + double(f[0]);
}

void BM_KvTileRead(benchmark::State& state) {
    if (!__builtin_cpu_supports("avx512f")) {
        state.SkipWithError("needs AVX-512 F");
        return;
    }
    const bool head_major = state.range(0) != 0;
    const size_t bytes = size_t(1) << 30, blocks = bytes / (8 * 8192);
    char* pool = static_cast<char*>(std::aligned_alloc(size_t(2) << 20, bytes));
    llmn::cpu::advise_huge_pages(pool, bytes);
    std::memset(pool, 1, bytes);
    std::vector<double> sink(8, 0.0), gbps;
    for (auto _ : state) {
        const auto t0 = std::chrono::steady_clock::now();
        llmn::cpu::parallel_for(8, [&](int64_t h) { sink[size_t(h)] += tile_read_head(pool, size_t(h), blocks, head_major); });
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        state.SetIterationTime(secs);
        gbps.push_back(double(bytes) / secs / 1e9);
    }
    benchmark::DoNotOptimize(sink.data());
    std::free(pool);
    state.counters["GBps"] = median(gbps);
    state.counters["threads"] = llmn::cpu::thread_count();
}

void BM_AttentionCoreRoofline(benchmark::State& state) {
    if (llmn::cpu::detected_isa() < LLMN_CPU_ISA_AVX2) {
        state.SkipWithError("needs AVX2 + FMA + F16C");
        return;
    }
    const int threads = llmn::cpu::thread_count();
    std::vector<std::vector<uint16_t>> bufs(size_t(threads), std::vector<uint16_t>(2048 + 64));
    std::mt19937 g(7);
    for (auto& b : bufs)
        for (auto& h : b) h = uint16_t(0x3800 + (g() & 0x3ff));  // halves in [0.5, 1)
    const int64_t iters = 20000000;
    std::vector<float> sink(static_cast<size_t>(threads), 0.0f);
    std::vector<double> gbps;
    for (auto _ : state) {
        const auto t0 = std::chrono::steady_clock::now();
        llmn::cpu::parallel_for(threads, [&](int64_t t) {
            const uint16_t* b = bufs[size_t(t)].data();
            const uint16_t* aligned = b + ((32 - (reinterpret_cast<uintptr_t>(b) & 31)) & 31) / 2;
            sink[size_t(t)] += core_mix(aligned, iters);
        });
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        state.SetIterationTime(secs);
        gbps.push_back(double(iters) * threads * 32.0 / secs / 1e9);
    }
    benchmark::DoNotOptimize(sink.data());
    state.counters["KV_GBps"] = median(gbps);
    state.counters["threads"] = threads;
}
#endif

void BM_DecodeAttention(benchmark::State& state) {
    run_decode_attention(state, int32_t(state.range(0)), state.range(1), int32_t(state.range(2)), LLMN_KV_F16);
}

// Same rounds with an INT8 (kv 2) or FP8-E4M3 (kv 3) cache for K and V, automatic splits. KV_GBps
// counts the bytes actually stored (codes + f32 scales), so frac_of_stream compares like with like;
// compare us_per_call with the f16 rows for the speedup.
void BM_DecodeAttentionQuant(benchmark::State& state) {
    run_decode_attention(state, int32_t(state.range(0)), state.range(1), 0, int32_t(state.range(2)));
}

}  // namespace

BENCHMARK(BM_StreamRead)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(8);
#if defined(__x86_64__)
BENCHMARK(BM_AttentionCoreRoofline)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5);
BENCHMARK(BM_KvTileRead)->ArgName("head_major")->Arg(0)->Arg(1)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5);
#endif

// batch x context; 32 x 32k (4 GiB of KV per layer, 8 GiB with the rotation) is left out on purpose.
BENCHMARK(BM_DecodeAttention)
    ->ArgNames({"batch", "ctx", "splits"})
    ->Args({1, 1024, 0})
    ->Args({1, 4096, 0})
    ->Args({1, 32768, 0})
    ->Args({8, 1024, 0})
    ->Args({8, 4096, 0})
    ->Args({8, 32768, 0})
    ->Args({32, 1024, 0})
    ->Args({32, 4096, 0})
    ->Args({1, 32768, 1})
    ->Args({1, 32768, 2})
    ->Args({1, 32768, 8})
    ->Iterations(9)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_DecodeAttentionQuant)
    ->ArgNames({"batch", "ctx", "kv"})
    ->Args({1, 4096, LLMN_KV_INT8})
    ->Args({1, 4096, LLMN_KV_FP8_E4M3})
    ->Args({1, 32768, LLMN_KV_INT8})
    ->Args({1, 32768, LLMN_KV_FP8_E4M3})
    ->Iterations(9)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
