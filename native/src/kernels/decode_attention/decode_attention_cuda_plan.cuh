// CUDA decode attention: everything that is index arithmetic or per-element math rather than data
// movement, written once as host+device inline functions so the kernels in decode_attention.cu and
// the CPU-only unit tests (native/tests/test_decode_attention_cuda.cpp, a plain .cpp) run the very
// same code. The tests can therefore check the split plan, the work-item numbering, the row
// chunking, the key ranges, the output/workspace addressing and the softmax/merge arithmetic on a
// machine without a GPU; only the memory movement (cp.async, shuffles, shared memory) is GPU-only.
//
// Nothing here includes a CUDA header: LLMN_HD expands to __host__ __device__ under nvcc and to
// plain `inline` elsewhere.
#pragma once
#include <math.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__CUDACC__)
#define LLMN_HD __host__ __device__ __forceinline__
#define LLMN_HDC __host__ __device__ constexpr
#else
#define LLMN_HD inline
#define LLMN_HDC constexpr
#endif

namespace llmn::attn_cuda {

// ---------------------------------------------------------------------------------------------
// CTA geometry (compile-time in the kernels, runtime in the tests)
// ---------------------------------------------------------------------------------------------

constexpr int kThreads = 128;       // one CTA = 4 warps
constexpr int kStages = 3;          // cp.async ring depth (tiles in flight while one is computed)
constexpr int kVec = 8;             // 16-byte vectors of 2-byte elements
constexpr int kMaxSplitsMerge = 256;  // == kMaxAttentionSplits (decode_attention.hpp), checked in the .cu

// Rows (query rows = GQA group x query positions) a CTA can hold: the largest row bucket.
LLMN_HDC int max_rows_bucket(int head_dim) { return head_dim >= 256 ? 16 : 32; }

// Smallest compiled row bucket >= rows (1, 4, 8, 16, 32).
LLMN_HDC int rows_bucket(int rows) { return rows <= 1 ? 1 : rows <= 4 ? 4 : rows <= 8 ? 8 : rows <= 16 ? 16 : 32; }

// Thread layout of one CTA: tid = x + lanes * (y + Y * z).
//   x in [0, lanes): the 16-byte chunk of a K/V row (head_dim / 8 chunks, padded to a power of 2 so
//                    a dot product is a butterfly over `lanes` lanes of one warp);
//   y in [0, Y):     the row slot; a thread owns rows y, y + Y, ... (rpt of them);
//   z in [0, Z):     the key slot; the Z groups share each tile's keys (key j*Z + z) and keep separate
//                    softmax states merged at the end (useful when there are fewer rows than slots).
struct Geometry {
    int head_dim, rows, chunks, lanes, slots, y, z, rpt, tile_keys, kpt, ksub;
    int stage_vec;   // uint4 per pipeline stage (K tile then V tile)
    int smem_bytes;  // dynamic shared memory of the split kernel
};

LLMN_HDC int lanes_for(int chunks) { return chunks <= 8 ? 8 : chunks <= 16 ? 16 : 32; }

LLMN_HDC Geometry geometry(int head_dim, int rows) {
    Geometry g{};
    g.head_dim = head_dim;
    g.rows = rows;
    g.chunks = head_dim / kVec;
    g.lanes = lanes_for(head_dim / kVec);
    g.slots = kThreads / g.lanes;
    g.y = rows < g.slots ? rows : g.slots;
    g.rpt = rows / g.y;
    g.z = g.slots / g.y;
    g.tile_keys = head_dim <= 128 ? 32 : 16;
    g.kpt = g.tile_keys / g.z;
    g.ksub = g.kpt < 8 ? g.kpt : 8;
    g.stage_vec = 2 * g.tile_keys * g.chunks;
    g.smem_bytes = kStages * g.stage_vec * 16;
    return g;
}

// Floats of the end-of-loop scratch that merges the Z key-slot states (reuses the stage buffers).
LLMN_HDC int zmerge_floats(const Geometry& g) { return g.z > 1 ? g.z * g.rows * (g.head_dim + 2) : 0; }

LLMN_HD int geo_row(const Geometry& g, int y, int k) { return y + g.y * k; }       // k < rpt
LLMN_HD int geo_tile_key(const Geometry& g, int z, int j) { return j * g.z + z; }  // j < kpt

// ---------------------------------------------------------------------------------------------
// Row chunking: a CTA holds whole query positions (all `group` heads of each), at most the
// largest bucket of rows. Rows beyond it go to further CTAs (chunks) that re-read the same K/V
// (mostly from L2: chunks of one (sequence, head, split) have adjacent CTA indices).
// ---------------------------------------------------------------------------------------------

struct RowPlan {
    int bucket;       // compiled row capacity used
    int q_per_chunk;  // query positions per CTA
    int chunks;       // CTAs per (sequence, kv head, split)
};

LLMN_HD RowPlan row_plan(int head_dim, int group, int q_len) {
    const int maxb = max_rows_bucket(head_dim);
    const int rows = group * q_len;
    if (rows <= maxb) return RowPlan{rows_bucket(rows), q_len, 1};
    const int qpc = maxb / group;  // >= 1 because group <= 16 <= maxb
    return RowPlan{rows_bucket(group * qpc), qpc, (q_len + qpc - 1) / qpc};
}

// ---------------------------------------------------------------------------------------------
// Masking and the split partition (identical to decode_attention.hpp, which is host-only)
// ---------------------------------------------------------------------------------------------

LLMN_HD int64_t query_pos(int64_t length, int q_len, int i) { return length - q_len + i; }
LLMN_HD int64_t first_key(int64_t pos, int window) {
    return window > 0 ? (pos - window + 1 > 0 ? pos - window + 1 : 0) : 0;
}

LLMN_HD void visible_blocks(int64_t length, int q_len, int window, int block_size, int64_t* first, int64_t* end) {
    *first = first_key(query_pos(length, q_len, 0), window) / block_size;
    *end = (length + block_size - 1) / block_size;
}

LLMN_HD void split_blocks(int64_t first, int64_t end, int n, int s, int64_t* b0, int64_t* b1) {
    const int64_t nb = end - first;
    *b0 = first + nb * s / n;
    *b1 = first + nb * (s + 1) / n;
}

// Keys [kb, ke) of split s of n (the CPU backend's rule: whole blocks, clipped to what query 0 of
// the sequence can see and to the length).
LLMN_HD void split_keys(int64_t length, int q_len, int window, int block_size, int n, int s, int64_t* kb, int64_t* ke) {
    int64_t first, end, b0, b1;
    visible_blocks(length, q_len, window, block_size, &first, &end);
    split_blocks(first, end, n, s, &b0, &b1);
    const int64_t lo = first_key(query_pos(length, q_len, 0), window);
    *kb = b0 * block_size > lo ? b0 * block_size : lo;
    *ke = b1 * block_size < length ? b1 * block_size : length;
}

// A row chunk (query positions [i0, i0 + nq)) further clips its split's keys to what its own
// queries can see; masked keys contribute nothing, so this only skips work.
LLMN_HD void chunk_keys(int64_t length, int q_len, int window, int i0, int nq, int64_t* kb, int64_t* ke) {
    const int64_t lo = first_key(query_pos(length, q_len, i0), window);
    const int64_t hi = query_pos(length, q_len, i0 + nq - 1) + 1;
    if (*kb < lo) *kb = lo;
    if (*ke > hi) *ke = hi;
}

// ---------------------------------------------------------------------------------------------
// Per-call work list: one entry per sequence, in schedule order (most splits / longest first)
// ---------------------------------------------------------------------------------------------

struct SeqWork {
    int32_t item_begin;   // first CTA index of this sequence (items: ((h * n + s) * chunks + c))
    int32_t batch_index;  // b: addresses q / out rows and the sequence's block-table slot
    int32_t length;       // tokens in the layer
    int32_t table_off;    // offset of its block table in the flattened device mirror
    int32_t n_splits;     // >= 1; 1 = written straight to out
    int32_t ws_row_base;  // first partial row in the workspace (n_splits > 1), else -1
    int32_t res_slot;     // KIVI caches: the sequence's residual slot (kv_layout.hpp), else unused
    int32_t reserved1;
};
static_assert(sizeof(SeqWork) == 32, "SeqWork is copied to the device as raw bytes");

struct Item {
    int pos;    // index into the SeqWork array
    int head;   // kv head
    int split;  // split index
    int chunk;  // row chunk
};

// Largest p with work[p].item_begin <= item (work[0].item_begin == 0, increasing).
LLMN_HD int find_seq(const SeqWork* work, int num_seqs, int item) {
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (work[mid].item_begin <= item) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

LLMN_HD Item decode_item(const SeqWork* work, int num_seqs, int chunks, int item) {
    Item it;
    it.pos = find_seq(work, num_seqs, item);
    int local = item - work[it.pos].item_begin;
    it.chunk = local % chunks;
    local /= chunks;
    const int n = work[it.pos].n_splits;
    it.split = local % n;
    it.head = local / n;
    return it;
}

// Element offset of q/out row (b, query i, q head hq): layout [batch, q_len, num_q_heads, head_dim].
LLMN_HD int64_t qo_offset(int64_t b, int i, int hq, int q_len, int num_q_heads, int head_dim) {
    return ((b * q_len + i) * num_q_heads + hq) * int64_t(head_dim);
}

// Byte offset, from the (layer, kv head) base, of 16-byte chunk c of K or V row `t` (token index in
// the sequence) of a sequence whose physical block for t is `block` (kv_layout.hpp: head tiles,
// token-major rows of head_dim 2-byte elements; section_off = k_data_off or v_data_off).
LLMN_HD int64_t kv_chunk_offset(int64_t block, int64_t block_stride, int64_t section_off, int64_t t, int block_mask,
                                int head_dim, int c) {
    return block * block_stride + section_off + (t & block_mask) * int64_t(head_dim * 2) + int64_t(c) * 16;
}

// The same for rows of any byte length (INT8 / E4M3 rows are head_dim bytes: head_dim / 16 chunks).
LLMN_HD int64_t kv_row_chunk_offset(int64_t block, int64_t block_stride, int64_t section_off, int64_t t, int block_mask,
                                    int64_t row_bytes, int c) {
    return block * block_stride + section_off + (t & block_mask) * row_bytes + int64_t(c) * 16;
}

// Byte offset of token t's f32 scale in an INT8 / E4M3 aux section (aux_off = k_aux_off or v_aux_off).
LLMN_HD int64_t kv_scale_offset(int64_t block, int64_t block_stride, int64_t aux_off, int64_t t, int block_mask) {
    return block * block_stride + aux_off + (t & block_mask) * 4;
}

// Workspace row of (kv head h, split s, row r) of a split sequence; R = group * q_len rows.
LLMN_HD int64_t ws_row(int32_t ws_row_base, int h, int n, int s, int R, int r) {
    return int64_t(ws_row_base) + (int64_t(h) * n + s) * R + r;
}

// ---------------------------------------------------------------------------------------------
// Scores, online softmax, state merges
// ---------------------------------------------------------------------------------------------

LLMN_HD float neg_inf() { return -INFINITY; }

// Soft-cap then ALiBi, in the CPU reference's order.
LLMN_HD float score_transform(float dot, float softcap, bool alibi, float slope, int64_t key, int64_t query_pos) {
    if (softcap > 0.0f) dot = softcap * tanhf(dot / softcap);
    if (alibi) dot += slope * float(key - query_pos);
    return dot;
}

// One thread's share of a query row: running max m, denominator l and kVec output channels.
struct State {
    float m, l;
    float o[kVec];
};

LLMN_HD void state_init(State& s) {
    s.m = neg_inf();
    s.l = 0.0f;
    for (int e = 0; e < kVec; ++e) s.o[e] = 0.0f;
}

// Called when a sub-tile's max exceeds m. First visible sub-tile: m = -inf, alpha = e^-inf = 0, and
// o, l are still 0.
LLMN_HD void state_raise_max(State& s, float new_max) {
    const float alpha = expf(s.m - new_max);
    for (int e = 0; e < kVec; ++e) s.o[e] *= alpha;
    s.l *= alpha;
    s.m = new_max;
}

LLMN_HD void state_add(State& s, float score, const float* v) {
    const float p = expf(score - s.m);
    s.l += p;
    for (int e = 0; e < kVec; ++e) s.o[e] = fmaf(p, v[e], s.o[e]);
}

// state_add for an 8-bit V row holding codes: v = code * vscale, with the per-token scale folded
// into the softmax weight (p * vscale, one multiply per key instead of one per element).
LLMN_HD void state_add_scaled(State& s, float score, float vscale, const float* codes) {
    const float p = expf(score - s.m);
    s.l += p;
    const float pv = p * vscale;
    for (int e = 0; e < kVec; ++e) s.o[e] = fmaf(pv, codes[e], s.o[e]);
}

// Merges the states of the Z key slots (fixed order z = 0..Z-1). m/l of slot z at ml[z * stride_ml],
// channels at o[z * stride_o + e].
LLMN_HD void merge_slots(int Z, const float* m, const float* l, int stride_ml, const float* o, int stride_o, State& out) {
    float M = neg_inf();
    for (int z = 0; z < Z; ++z) M = fmaxf(M, m[z * stride_ml]);
    out.m = M;
    out.l = 0.0f;
    for (int e = 0; e < kVec; ++e) out.o[e] = 0.0f;
    if (M == neg_inf()) return;
    for (int z = 0; z < Z; ++z) {
        const float mz = m[z * stride_ml];
        if (mz == neg_inf()) continue;
        const float a = expf(mz - M);
        out.l = fmaf(a, l[z * stride_ml], out.l);
        for (int e = 0; e < kVec; ++e) out.o[e] = fmaf(a, o[z * stride_o + e], out.o[e]);
    }
}

// Normalised output channels and the row's log-sum-exp (-inf and zeros when no key was visible).
LLMN_HD float state_finish(const State& s, float* out) {
    if (s.l > 0.0f) {
        for (int e = 0; e < kVec; ++e) out[e] = s.o[e] / s.l;
        return s.m + logf(s.l);
    }
    for (int e = 0; e < kVec; ++e) out[e] = 0.0f;
    return neg_inf();
}

// LSE merge weights exactly as merge_partials (decode_attention.hpp) forms them:
// w_s = e^{lse_s - M} / sum_t e^{lse_t - M}, 0 for empty partials. Returns false when every partial
// is empty (then the row is written as zeros). lse of split s at lse[s * stride].
LLMN_HD float merge_max(int n, const float* lse, int64_t stride) {
    float M = neg_inf();
    for (int s = 0; s < n; ++s) M = fmaxf(M, lse[s * stride]);
    return M;
}
LLMN_HD float merge_raw_weight(float lse, float M) { return expf(lse - M); }
LLMN_HD bool merge_weights(int n, const float* lse, int64_t stride, float* w) {
    const float M = merge_max(n, lse, stride);
    if (M == neg_inf()) return false;
    float sum = 0.0f;
    for (int s = 0; s < n; ++s) {
        w[s] = merge_raw_weight(lse[s * stride], M);
        sum += w[s];
    }
    for (int s = 0; s < n; ++s) w[s] = w[s] == 0.0f ? 0.0f : w[s] / sum;
    return true;
}
// One output channel: sum_s w_s o_s in split order, skipping empty partials.
LLMN_HD float merge_channel(int n, const float* w, const float* o, int64_t stride) {
    float acc = 0.0f;
    for (int s = 0; s < n; ++s)
        if (w[s] != 0.0f) acc += w[s] * o[s * stride];
    return acc;
}

// ---------------------------------------------------------------------------------------------
// 8-bit V in the tensor-core kernel: each row's o is kept in units of 2^ve, so that the weights
// p x scale x 2^-ve fed to its f16 hi + lo split stay in f16's normal range however small the values.
// ve = exponent of cb, a running bound of the row's largest weighted contribution p_t x scale_t
// (decayed by alpha like o), recomputed every tile in both directions. Why not the largest V scale
// seen (the first version): a masked or negligible key with a huge V scale then fixed the unit for
// good and every later weight lost precision (host emulation, one key with a 2^20 times larger scale
// and p ~ e^-30: relative error 0.27; with this rule 6e-7, as without it).
// ---------------------------------------------------------------------------------------------

constexpr int kQ8NoExp = -1000;  // no unit yet: o is still 0

struct Q8UnitStep {
    float r1, r2;  // o (in the old unit, already times alpha) times r1 x r2 = o in the new unit
    float unit;    // 2^-ve for this tile's weights (0 before the first visible weight)
};

// One tile of one row: cm = the tile's largest p x scale. The factor 2^(ve_old - ve) is exact but can
// pass 2^127: f32 / bf16 appends give INT8 / E4M3 scales up to ~2^121, so a tile's bound can be 2^117
// and, after a jump of the running max (alpha subnormal or 0), the next one 2^-17 (found by review on
// 2026-12-07: Inf, then 0 x Inf = NaN): hence two factors of at most 2^126 each.
LLMN_HD Q8UnitStep q8_unit_step(float& cb, int& ve, float alpha, float cm) {
    Q8UnitStep st{1.0f, 1.0f, 0.0f};
    cb = fmaxf(cb * alpha, cm);
    if (cb > 0.0f) {
        int e;
        frexpf(cb, &e);  // cb < 2^e: every weight of the tile is < 1 in the new unit
        // Floored at 2^-100: for bounds below 2^-128 (subnormal) 2^-e would overflow to Inf and 0 x Inf
        // turn masked keys into NaN; such values are far below anything the f32/f16 output can hold.
        e = e < -100 ? -100 : e;
        if (ve == kQ8NoExp) {
            st.r1 = 0.0f;  // o is still 0
        } else {
            const int k = ve - e;  // |k| <= 228 (e in [-100, 128])
            const int k1 = k < -126 ? -126 : (k > 126 ? 126 : k);
            st.r1 = ldexpf(1.0f, k1);
            st.r2 = ldexpf(1.0f, k - k1);
        }
        ve = e;
    }
    st.unit = ve == kQ8NoExp ? 0.0f : ldexpf(1.0f, -ve);
    return st;
}

// A key's weight in the row's unit: p x (scale x unit), an exact scaling of a normal scale; where
// scale x unit overflows (a huge scale, e.g. of a masked key: 0 x Inf = NaN, found by review)
// (p x scale) x unit, which is < 1 for visible keys (p x scale <= cb) and exactly 0 for masked ones.
LLMN_HD float q8_weight(float p, float scale, float unit) {
    const float su = scale * unit;
    return su <= 3.402823466e38f ? p * su : (p * scale) * unit;
}

// ---------------------------------------------------------------------------------------------
// Host-only: the per-call plan (split counts, schedule order, CTA numbering, workspace rows)
// ---------------------------------------------------------------------------------------------

constexpr int64_t kMinSplitKeys = 256;  // a split streams at least this many keys (auto policy)
constexpr int32_t kMaxAutoSplits = 128;  // auto policy cap per sequence

// Workspace rows (one row = head_dim f32 partial outputs + one f32 LSE) allocated per cache.
inline int64_t workspace_rows(int32_t max_batch, int32_t num_kv_heads) {
    const int64_t want = int64_t(max_batch) * num_kv_heads * 16;
    return std::clamp<int64_t>(want, 32768, 262144);
}

struct PlanInput {
    int32_t batch = 0;
    const int64_t* lengths = nullptr;    // [batch]
    const int32_t* table_off = nullptr;  // [batch] offsets into the flattened block tables
    int32_t q_len = 1, window = 0, block_size = 16, num_kv_heads = 1;
    int32_t rows = 1;      // R = group * q_len (workspace rows per (sequence, head, split))
    int32_t chunks = 1;    // row chunks per (sequence, head, split)
    int32_t num_splits = 0;  // params.num_splits: 0 = auto, n >= 1 forced (still <= visible blocks)
    int64_t wave_ctas = 1;   // CTAs the device runs at once (SMs x resident CTAs per SM)
    int64_t ws_rows = 0;     // workspace capacity in rows
};

struct Plan {
    std::vector<SeqWork> work;       // schedule order
    std::vector<int32_t> splits;     // [batch] split count per batch index
    int64_t num_items = 0;           // CTAs of the split kernel
    int32_t num_split_seqs = 0;      // work[0 .. num_split_seqs) have n_splits > 1 (merge grid)
    int64_t ws_rows_used = 0;
    int32_t split_cap = 0;           // cap applied because of the workspace (0 = none)
};

// Visible keys and blocks of a sequence (what query 0 can see).
inline int64_t visible_keys(int64_t length, int32_t q_len, int32_t window) {
    return length - first_key(query_pos(length, q_len, 0), window);
}
inline int64_t visible_block_count(int64_t length, int32_t q_len, int32_t window, int32_t block_size) {
    int64_t first, end;
    visible_blocks(length, q_len, window, block_size, &first, &end);
    return end - first;
}

// Automatic split count (num_splits = 0). Splitting pays only while the GPU is not already full:
// if the unsplit CTAs (batch x kv heads x row chunks) fill one wave, nothing is split. Otherwise the
// work (visible keys x heads x chunks) is cut into pieces sized so the total is about one wave of
// CTAs (the H200 sweep at batch 1 x 32k: 64 splits 75 us, 128 splits 87 us, 32 splits 95 us; more
// splits cost merge time and per-CTA start-up), never below kMinSplitKeys keys per split (a split costs one partial row write + merge per
// row, which is noise next to streaming 256 keys; the count rounds down so every split keeps at
// least a piece), so long sequences get many splits and those under 2 x 256 visible keys none.
inline void auto_splits(const PlanInput& in, std::vector<int32_t>& n) {
    const int64_t base = int64_t(in.batch) * in.num_kv_heads * in.chunks;
    for (int32_t b = 0; b < in.batch; ++b) n[size_t(b)] = 1;
    if (base >= in.wave_ctas) return;
    int64_t total = 0;
    for (int32_t b = 0; b < in.batch; ++b) total += visible_keys(in.lengths[b], in.q_len, in.window);
    const int64_t target = in.wave_ctas / (int64_t(in.num_kv_heads) * in.chunks);  // sequence-splits wanted
    const int64_t piece = std::max<int64_t>(kMinSplitKeys, (total + std::max<int64_t>(target, 1) - 1) / std::max<int64_t>(target, 1));
    for (int32_t b = 0; b < in.batch; ++b) {
        const int64_t v = visible_keys(in.lengths[b], in.q_len, in.window);
        const int64_t nblk = visible_block_count(in.lengths[b], in.q_len, in.window, in.block_size);
        const int64_t want = v / piece;
        n[size_t(b)] = int32_t(std::clamp<int64_t>(want, 1, std::min<int64_t>(nblk, kMaxAutoSplits)));
    }
}

inline int64_t split_rows_needed(const PlanInput& in, const std::vector<int32_t>& n, int32_t cap) {
    int64_t rows = 0;
    for (int32_t b = 0; b < in.batch; ++b) {
        const int32_t nb = std::min(n[size_t(b)], cap);
        if (nb > 1) rows += int64_t(in.num_kv_heads) * in.rows * nb;
    }
    return rows;
}

// The whole plan. Deterministic: a function of the inputs only. The partition of each sequence is
// split_keys(length, ..., n_b, s), so results depend on (lengths, n_b) and nothing else.
inline Plan make_plan(const PlanInput& in) {
    Plan p;
    const int32_t B = in.batch;
    std::vector<int32_t> n(size_t(B), 1);
    if (in.num_splits == 0) {
        auto_splits(in, n);
    } else {
        for (int32_t b = 0; b < B; ++b) {
            const int64_t nblk = visible_block_count(in.lengths[b], in.q_len, in.window, in.block_size);
            n[size_t(b)] = int32_t(std::clamp<int64_t>(in.num_splits, 1, std::max<int64_t>(nblk, 1)));
        }
    }
    // Workspace capacity: lower a common cap on the split counts until the partial rows fit.
    int32_t nmax = 1;
    for (int32_t v : n) nmax = std::max(nmax, v);
    if (split_rows_needed(in, n, nmax) > in.ws_rows) {
        int32_t lo = 1, hi = nmax;  // rows_needed(1) = 0 always fits
        while (lo < hi) {
            const int32_t mid = (lo + hi + 1) / 2;
            if (split_rows_needed(in, n, mid) <= in.ws_rows) lo = mid;
            else hi = mid - 1;
        }
        for (auto& v : n) v = std::min(v, lo);
        p.split_cap = lo;
    }
    p.splits = n;

    // Schedule order: split sequences first (the merge grid is work[0 .. num_split_seqs)), then by
    // visible keys descending so the longest CTAs start first; ties by batch index.
    std::vector<int32_t> order(static_cast<size_t>(B));
    for (int32_t b = 0; b < B; ++b) order[size_t(b)] = b;
    std::vector<int64_t> vis(static_cast<size_t>(B));
    for (int32_t b = 0; b < B; ++b) vis[size_t(b)] = visible_keys(in.lengths[b], in.q_len, in.window);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        if (n[size_t(a)] != n[size_t(b)]) return n[size_t(a)] > n[size_t(b)];
        if (vis[size_t(a)] != vis[size_t(b)]) return vis[size_t(a)] > vis[size_t(b)];
        return a < b;
    });
    p.work.resize(size_t(B));
    int64_t item = 0, ws = 0;
    for (int32_t i = 0; i < B; ++i) {
        const int32_t b = order[size_t(i)];
        SeqWork& w = p.work[size_t(i)];
        w = SeqWork{};
        w.item_begin = int32_t(std::min<int64_t>(item, std::numeric_limits<int32_t>::max()));
        w.batch_index = b;
        w.length = int32_t(in.lengths[b]);
        w.table_off = in.table_off ? in.table_off[b] : 0;
        w.n_splits = n[size_t(b)];
        if (w.n_splits > 1) {
            w.ws_row_base = int32_t(ws);
            ws += int64_t(in.num_kv_heads) * in.rows * w.n_splits;
            ++p.num_split_seqs;
        } else {
            w.ws_row_base = -1;
        }
        item += int64_t(in.num_kv_heads) * w.n_splits * in.chunks;
    }
    p.num_items = item;
    p.ws_rows_used = ws;
    return p;
}

// Flattens the block tables of the batch (by batch position) into one int32 array.
template <class GetBlocks>
inline int64_t flatten_tables(int32_t batch, GetBlocks get_blocks, std::vector<int32_t>& offsets, int32_t* flat,
                              int64_t capacity) {
    offsets.resize(size_t(batch));
    int64_t off = 0;
    for (int32_t b = 0; b < batch; ++b) {
        const std::vector<int32_t>& blocks = get_blocks(b);
        offsets[size_t(b)] = int32_t(off);
        if (flat && off + int64_t(blocks.size()) <= capacity)
            std::copy(blocks.begin(), blocks.end(), flat + off);
        off += int64_t(blocks.size());
    }
    return off;  // entries needed (nothing past capacity was written)
}

// Which split kernel a call uses. Auto: the tensor-core kernel (mma_kernel) for f16 caches where its
// shape applies (sm_80+, f16 q, head_dim 64 or 128, group x q_len <= 16), the SIMT kernel otherwise.
// LLMNATIVE_ATTN_CUDA_PATH=simt|mma overrides Auto (mma: the tensor-core kernel wherever it can serve
// the call, 8-bit K and V included — INT8 / E4M3 decoded to f16 in shared memory — and SIMT elsewhere);
// tests force a path with set_kernel_path (defined in decode_attention.cu: CUDA builds only), where a
// forced Mma fails on a call it cannot serve.
enum class KernelPath : int { Auto = 0, Simt = 1, Mma = 2 };
void set_kernel_path(KernelPath path);
inline bool mma_path_applies(int cc_major, int head_dim, bool io_f16, int rows) {
    return cc_major >= 8 && io_f16 && (head_dim == 64 || head_dim == 128) && rows <= 16;
}

}  // namespace llmn::attn_cuda
