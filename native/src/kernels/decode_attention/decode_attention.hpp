// Decode attention over the paged KV cache (FlashDecoding-style split-KV), backend-neutral part:
// the validated argument bundle, the masking rules, the split partition and the LSE merge that every
// backend implements identically, and the per-backend entry points.
//
// Semantics (for a sequence of length L in params.layer, q_len new tokens already appended):
//   query i (0 <= i < q_len) sits at position p_i = L - q_len + i and sees keys lo_i .. p_i with
//   lo_i = window > 0 ? max(0, p_i - window + 1) : 0;
//   s = scale * (q . k);  s = softcap * tanh(s / softcap) when softcap > 0;  s += slope_h * (key - p_i)
//   with ALiBi;  out = sum_k softmax(s)_k v_k, accumulated in f32.
// GQA: query head hq uses kv head hq / group (group = num_q_heads / num_kv_heads). A work item owns
// one (sequence, kv_head, split) and processes the R = group * q_len query rows of that kv head
// together (row r = query r / group, head kv_head * group + r % group), so each K/V row is read from
// memory once per group.
//
// Split-KV: a sequence's visible blocks [lo_0 / block_size, ceil(L / block_size)) are cut into
// n contiguous ranges of whole blocks (split_block_range). Each split writes a partial output
// normalized by its own softmax denominator plus its log-sum-exp; merge_partials combines them.
// The partition depends only on (lengths, n), never on thread scheduling, so results are bitwise
// reproducible for a given n. Choosing n (num_splits = 0) is backend policy (see each backend); a
// forced n is capped per sequence at its number of visible blocks (a split is at least one block).
// Split results differ from unsplit ones only by f32 rounding (bound in test_decode_attention.cpp).
#pragma once
#include "../../core/context.hpp"
#include "../kv_cache/kv_cache.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace llmn {

struct DecodeAttentionArgs {
    const KvCache* cache = nullptr;       // its mutex is held for the whole call
    int32_t batch = 0;
    std::vector<const KvSequence*> seqs;  // [batch]
    std::vector<int64_t> lengths;         // [batch] tokens in params.layer (>= q_len)
    const Buffer* q = nullptr;            // [batch, q_len, num_q_heads, head_dim]
    const Buffer* out = nullptr;          // same shape and dtype; may be the same buffer as q
    std::vector<float> alibi_slopes;      // CPU: [num_q_heads] validated copy, empty without ALiBi
    const float* alibi_device = nullptr;  // CUDA: the caller's device buffer [num_q_heads], null without ALiBi
    llmn_attention_params params{};       // validated
    int32_t group = 1;                    // num_q_heads / num_kv_heads, 1..16
};

// Validated by the API layer (api.cpp). CPU: decode_attention_cpu.cpp; CUDA: decode_attention.cu
// (or decode_attention_cuda_none.cpp in builds without CUDA, which fails with UNSUPPORTED).
void decode_attention_cpu(const Context& ctx, const DecodeAttentionArgs& args);
void decode_attention_cuda(const Context& ctx, const DecodeAttentionArgs& args);

constexpr int32_t kMaxAttentionSplits = 256;  // bound of params.num_splits
constexpr int32_t kMaxQueryLen = 8;
constexpr int32_t kMaxGqaGroup = 16;

inline int64_t attn_query_pos(int64_t length, int32_t q_len, int32_t i) { return length - q_len + i; }
inline int64_t attn_first_key(int64_t pos, int32_t window) {
    return window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
}

// Blocks [first, end) a sequence's queries can see at all.
inline void attn_visible_blocks(int64_t length, int32_t q_len, int32_t window, int32_t block_size, int64_t* first,
                                int64_t* end) {
    *first = attn_first_key(attn_query_pos(length, q_len, 0), window) / block_size;
    *end = (length + block_size - 1) / block_size;
}

// Split s of n over blocks [first, end): contiguous, balanced, in order; empty when n > blocks.
inline void split_block_range(int64_t first, int64_t end, int32_t n, int32_t s, int64_t* b0, int64_t* b1) {
    const int64_t nb = end - first;
    *b0 = first + nb * s / n;
    *b1 = first + nb * (s + 1) / n;
}

// The LSE merge, written once. Partial s of a query row holds o_s = (sum_k e^{s_k - m_s} v_k) / l_s
// and lse_s = m_s + ln l_s over its keys, or lse_s = -inf when none of its keys was visible to the
// row (then o_s is all zeros). With M = max_s lse_s:
//     out = sum_s w_s o_s / sum_s w_s,   w_s = e^{lse_s - M}.
// Dividing by the sum of the weights (rather than using e^{lse_s - LSE}) keeps the rounding of the
// total LSE out of every weight (the FA2 combine does the same). Empty partials get w_s = e^{-inf} = 0
// exactly, the largest gets w = 1, so the sum is >= 1: no 0/0 and no NaN. If every partial is empty
// (impossible for a valid query, which always sees its own key) M = -inf and e^{-inf - -inf} would
// be NaN, so that case writes zeros instead. n = 1 returns o_0 bit for bit (w = 1, sum = 1).
inline void merge_partials(int32_t n, const float* lse, const float* const* o, int32_t head_dim, float* out) {
    float m = -std::numeric_limits<float>::infinity();
    for (int32_t s = 0; s < n; ++s) m = std::max(m, lse[s]);
    if (m == -std::numeric_limits<float>::infinity()) {
        for (int32_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
        return;
    }
    float w[kMaxAttentionSplits];
    float sum = 0.0f;
    for (int32_t s = 0; s < n; ++s) {
        w[s] = std::exp(lse[s] - m);
        sum += w[s];
    }
    for (int32_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
    for (int32_t s = 0; s < n; ++s) {
        if (w[s] == 0.0f) continue;
        const float ws = w[s] / sum;
        for (int32_t d = 0; d < head_dim; ++d) out[d] += ws * o[s][d];
    }
}

}  // namespace llmn
