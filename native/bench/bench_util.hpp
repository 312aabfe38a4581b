// Helpers shared by the decode attention benchmarks (bench_decode_attention.cpp, bench_kv_quant.cpp):
// the Llama-3-8B attention shape, cache descriptors of that shape, the rotation size, and building a
// cache whose sequences are filled from one random chunk with interleaved appends.
#pragma once
#include <llmnative/llmnative.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

namespace llmn_bench {

// Llama-3-8B attention: 32 q heads, 8 kv heads, head_dim 128; block 16; scale 1/sqrt(128).
constexpr int32_t kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlock = 16;
constexpr float kScale = 0.08838834764831845f;

// Bytes of KV every configuration touches between two visits of the same copy of its batch:
// LLMNATIVE_BENCH_ROTATE_MIB MiB (0: one copy, cache-resident for small sizes), default_mib otherwise.
inline int64_t rotate_bytes(int64_t default_mib) {
    const char* env = std::getenv("LLMNATIVE_BENCH_ROTATE_MIB");
    return (env ? std::atoll(env) : default_mib) << 20;
}

// One layer of the benchmark shape, K and V in the same format (value groups: KIVI only).
inline llmn_kv_cache_desc bench_desc(int32_t fmt, int32_t value_group_size = 0) {
    llmn_kv_cache_desc d{};
    d.num_layers = 1;
    d.num_kv_heads = kKvHeads;
    d.head_dim = kHeadDim;
    d.block_size = kBlock;
    d.k_format = d.v_format = fmt;
    d.value_group_size = value_group_size;
    return d;
}

// Bytes one token of one layer occupies in a format (the planner: codes + scales/minimums).
inline int64_t bytes_per_token(int32_t fmt, int32_t value_group_size = 0) {
    llmn_kv_cache_desc d = bench_desc(fmt, value_group_size);
    int64_t b = 0;
    llmn_kv_cache_bytes_per_token(&d, &b);
    return b;
}

// A device f32 buffer of n values drawn from nd (the caller owns it).
inline llmn_buffer random_buffer(llmn_context ctx, std::mt19937& g, std::normal_distribution<float>& nd, int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = nd(g);
    llmn_buffer b = nullptr;
    llmn_buffer_create(ctx, LLMN_DTYPE_F32, n, LLMN_MEMORY_DEVICE, &b);
    llmn_buffer_upload(b, 0, v.data(), n);
    return b;
}

// Tokens in the random K/V chunk every benchmark appends repeatedly (values do not matter for timing).
constexpr int32_t kChunk = 512;

// Adds `copies` sets of `batch` sequences to cache and appends `context` tokens of `chunk` (used as
// both K and V, kChunk tokens) to each, interleaved chunk by chunk so the blocks of every sequence
// are scattered over the pool. Returns the sequence ids per copy (the benchmarks rotate over them).
inline std::vector<std::vector<int64_t>> fill_rotated(llmn_kv_cache cache, int64_t copies, int32_t batch, int64_t context,
                                                      llmn_buffer chunk) {
    std::vector<std::vector<int64_t>> sets(static_cast<size_t>(copies));
    for (auto& set : sets)
        for (int32_t b = 0; b < batch; ++b) {
            int64_t id = 0;
            llmn_kv_cache_add_sequence(cache, &id);
            set.push_back(id);
        }
    for (int64_t done = 0; done < context; done += kChunk) {
        const int32_t n = int32_t(std::min<int64_t>(kChunk, context - done));
        for (auto& set : sets)
            for (int64_t id : set) llmn_kv_cache_append(cache, id, 0, chunk, chunk, n);
    }
    return sets;
}

// Median (upper middle for an even count) of per-round values.
inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace llmn_bench
