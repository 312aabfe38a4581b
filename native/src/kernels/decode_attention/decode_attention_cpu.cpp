// CPU decode attention: the driver shared by every ISA (query preparation, split plan, work items on
// the thread pool, LSE merge) and the scalar reference kernel. The AVX2 kernel computes the same
// items in decode_attention_avx2.cpp; both are selected per call with cpu::active_isa().
//
// Determinism: the split plan is a function of (lengths, q_len, window, num_splits, thread count);
// each work item is computed by one thread with a fixed operation order and written to its own
// workspace slot, and the merge walks splits in order. Scheduling therefore never changes a bit;
// a different thread count changes results only through the automatic split count (num_splits = 0).
#include "decode_attention.hpp"
#include "../../core/per_thread.hpp"
#include "decode_attention_cpu.hpp"

#include "../../core/numeric.hpp"
#include "../../cpu/cpu_runtime.hpp"
#include "../kv_cache/kv_kivi.hpp"
#include "../kv_cache/kv_quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace llmn {

namespace attn_cpu {

// Scalar reference: converts each tile's K and V rows to f32 once (so all R rows reuse them from
// cache), computes every score with a sequential f32 dot product and runs the textbook online
// softmax with libm exp/tanh. Plain loops on purpose: this is the path the SIMD kernels are judged by.
// INT8/FP8 rows are converted to their code values only; the per-token scale is folded in after the
// dot product (s = scale_t * (q . code_t)) and into the weight for V (p_t * scale_t * code_t), the
// same operation order as the AVX2 kernel. f16 rows use scale 1.
namespace {
inline void load_row(int32_t fmt, const uint8_t* tile, int64_t data_off, int64_t aux_off, int64_t row, int32_t D,
                     float* dst, float* scale) {
    if (kv_format_is_q8(fmt)) {
        const uint8_t* c = tile + data_off + row * D;
        for (int32_t d = 0; d < D; ++d) dst[d] = kv_code_value(fmt, c[d]);
        std::memcpy(scale, tile + aux_off + row * 4, sizeof(float));
    } else {
        const uint16_t* h = reinterpret_cast<const uint16_t*>(tile + data_off) + row * D;
        for (int32_t d = 0; d < D; ++d) dst[d] = f16_to_f32(h[d]);
        *scale = 1.0f;
    }
}
}  // namespace

// One side's row of key t as f32 plus its per-token scale (KIVI rows are dequantized here in full,
// code * scale + min, per kv_kivi.hpp; the partial block's rows come from the residual tile as f16).
inline void load_any(const Item& it, bool value, int64_t t, float* dst, float* scale) {
    const int32_t D = it.head_dim, bs = it.block_size;
    const int32_t fmt = value ? it.v_format : it.k_format;
    const uint8_t* tile = it.layer_base + int64_t(it.blocks[t / bs]) * it.block_stride + it.head_off;
    const int32_t row = int32_t(t % bs);
    if (!kv_format_is_kivi(fmt)) {
        load_row(fmt, tile, value ? it.v_data_off : it.k_data_off, value ? it.v_aux_off : it.k_aux_off, row, D, dst, scale);
        return;
    }
    *scale = 1.0f;
    if ((t / bs + 1) * bs > it.length) {  // residual block
        const uint16_t* h = reinterpret_cast<const uint16_t*>(it.res + (value ? it.res_v_off : it.res_k_off)) + int64_t(row) * D;
        for (int32_t d = 0; d < D; ++d) dst[d] = f16_to_f32(h[d]);
    } else if (value) {
        kivi_dequant_v_row(fmt, tile + it.v_data_off, reinterpret_cast<const uint16_t*>(tile + it.v_aux_off), bs, row, D,
                           it.value_group, dst);
    } else {
        kivi_dequant_k_row(fmt, tile + it.k_data_off, reinterpret_cast<const uint16_t*>(tile + it.k_aux_off), row, D, dst);
    }
}

float quantize_query_row(const float* x, int32_t n, int8_t* codes) {
    float amax = 0.0f;
    for (int32_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float inv = 127.0f / amax;
    if (!(inv <= std::numeric_limits<float>::max())) {  // amax 0 (inv inf) or tiny
        for (int32_t i = 0; i < n; ++i) codes[i] = 0;
        return 0.0f;
    }
    for (int32_t i = 0; i < n; ++i) codes[i] = int8_t(std::nearbyint(x[i] * inv));  // |x inv| <= amax fl(127 / amax) rounds to <= 127
    return amax / 127.0f;
}

void run_item_scalar(const Item& it) {
    const int32_t D = it.head_dim, R = it.rows;
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    struct Scratch {  // per thread (core/per_thread.hpp)
        std::vector<float> kf, vf, acc, m, l, s, ksc, vsc;
        std::vector<int8_t> kq_codes;  // INT8 query on KIVI keys: per row, the rounded folded query of
        std::vector<float> kq_fold, kq_scale, kq_kc;  // the block last used
        std::vector<int64_t> kq_block;
    };
    Scratch& w_ = per_thread<Scratch>();
    auto &kf = w_.kf, &vf = w_.vf, &acc = w_.acc, &m = w_.m, &l = w_.l, &s = w_.s, &ksc = w_.ksc, &vsc = w_.vsc;
    auto &kq_codes = w_.kq_codes;
    auto &kq_fold = w_.kq_fold, &kq_scale = w_.kq_scale, &kq_kc = w_.kq_kc;
    auto &kq_block = w_.kq_block;
    ksc.resize(size_t(kTileKeys));
    vsc.resize(size_t(kTileKeys));
    kf.resize(size_t(kTileKeys) * D);
    vf.resize(size_t(kTileKeys) * D);
    acc.assign(size_t(R) * D, 0.0f);
    m.assign(size_t(R), NEG_INF);
    l.assign(size_t(R), 0.0f);
    s.resize(size_t(kTileKeys));
    const bool kq8 = it.q8_kivi && kv_format_is_kivi(it.k_format);
    if (kq8) {
        kq_codes.resize(size_t(R) * D);
        kq_fold.resize(size_t(D));
        kq_scale.resize(size_t(R));
        kq_kc.resize(size_t(R));
        kq_block.assign(size_t(R), -1);
    }
    for (int64_t t0 = it.key_begin; t0 < it.key_end; t0 += kTileKeys) {
        const int32_t n = int32_t(std::min<int64_t>(kTileKeys, it.key_end - t0));
        for (int32_t j = 0; j < n; ++j) {
            const int64_t t = t0 + j;
            load_any(it, false, t, &kf[size_t(j) * D], &ksc[size_t(j)]);
            load_any(it, true, t, &vf[size_t(j) * D], &vsc[size_t(j)]);
        }
        for (int32_t r = 0; r < R; ++r) {
            const int64_t lo = std::max(it.row_lo[r], t0), hi = std::min(it.row_hi[r] + 1, t0 + n);
            if (lo >= hi) continue;  // no visible key of this row in the tile
            const float* qr = it.q + size_t(r) * D;
            float tile_max = NEG_INF;
            for (int64_t t = lo; t < hi; ++t) {
                const float* kr = &kf[size_t(t - t0) * D];
                float dot = 0.0f;
                if (kq8 && (t / it.block_size + 1) * it.block_size <= it.length) {
                    // KIVI key of a full block, INT8 query: q folded with the block's channel scales and
                    // rounded (once per row and block), integer dot with the stored codes
                    const int64_t blk = t / it.block_size;
                    const uint8_t* tile = it.layer_base + int64_t(it.blocks[blk]) * it.block_stride + it.head_off;
                    const uint16_t* aux = reinterpret_cast<const uint16_t*>(tile + it.k_aux_off);
                    int8_t* qc = &kq_codes[size_t(r) * D];
                    if (kq_block[size_t(r)] != blk) {
                        float kc = 0.0f;
                        for (int32_t d = 0; d < D; ++d) {
                            kq_fold[size_t(d)] = qr[d] * f16_to_f32(aux[d]);
                            kc += qr[d] * f16_to_f32(aux[D + d]);
                        }
                        kq_scale[size_t(r)] = quantize_query_row(kq_fold.data(), D, qc);
                        kq_kc[size_t(r)] = kc;
                        kq_block[size_t(r)] = blk;
                    }
                    const int32_t bits = kivi_bits(it.k_format);
                    const uint8_t* row = tile + it.k_data_off + (t % it.block_size) * int64_t(D) * bits / 8;
                    int32_t idot = 0;
                    for (int32_t d = 0; d < D; ++d) idot += int32_t(qc[d]) * int32_t(kivi_get(row, d, bits));
                    dot = float(idot) * kq_scale[size_t(r)] + kq_kc[size_t(r)];
                } else if (it.q8) {  // INT8 keys: kr holds their codes as exact floats (load_row)
                    const int8_t* q8 = it.q8 + size_t(r) * size_t(it.q8_pitch);
                    int32_t idot = 0;
                    for (int32_t d = 0; d < D; ++d) idot += int32_t(q8[d]) * int32_t(kr[d]);
                    dot = float(idot) * (it.q8_scale[r] * ksc[size_t(t - t0)]);
                } else {
                    for (int32_t d = 0; d < D; ++d) dot += qr[d] * kr[d];
                    dot *= ksc[size_t(t - t0)];
                }
                if (it.softcap > 0.0f) dot = it.softcap * std::tanh(dot / it.softcap);
                if (it.row_slope) dot += it.row_slope[r] * float(t - it.row_hi[r]);
                s[size_t(t - t0)] = dot;
                tile_max = std::max(tile_max, dot);
            }
            float* ar = &acc[size_t(r) * D];
            if (tile_max > m[size_t(r)]) {
                // m = -inf on the first visible tile: alpha = e^-inf = 0 and acc, l are still 0.
                const float alpha = std::exp(m[size_t(r)] - tile_max);
                for (int32_t d = 0; d < D; ++d) ar[d] *= alpha;
                l[size_t(r)] *= alpha;
                m[size_t(r)] = tile_max;
            }
            for (int64_t t = lo; t < hi; ++t) {
                const float pw = std::exp(s[size_t(t - t0)] - m[size_t(r)]);
                l[size_t(r)] += pw;
                const float* vr = &vf[size_t(t - t0) * D];
                const float pv = pw * vsc[size_t(t - t0)];
                for (int32_t d = 0; d < D; ++d) ar[d] += pv * vr[d];
            }
        }
    }
    for (int32_t r = 0; r < R; ++r) {
        float* o = it.o + size_t(r) * D;
        if (l[size_t(r)] > 0.0f) {  // l >= 1 whenever a key was visible (its max term is e^0)
            for (int32_t d = 0; d < D; ++d) o[d] = acc[size_t(r) * D + d] / l[size_t(r)];
            it.lse[r] = m[size_t(r)] + std::log(l[size_t(r)]);
        } else {
            for (int32_t d = 0; d < D; ++d) o[d] = 0.0f;
            it.lse[r] = NEG_INF;
        }
    }
}

}  // namespace attn_cpu

namespace {

using attn_cpu::Item;

// Automatic split policy (num_splits = 0). Splitting only pays when there are fewer independent
// (sequence, kv_head) items than the pool can balance, or when lengths are so uneven that one long
// sequence would finish last. So: aim for ~4 work items per thread (dynamic scheduling then keeps
// every thread busy), cutting every sequence into pieces of about total_keys / target keys, but
// never smaller than kMinSplitKeys (each split costs one R x head_dim f32 partial write + merge,
// under 1% of streaming 512 keys). A full batch of equal lengths gets pieces >= its length: no
// split. One thread: no split (there is nothing to balance).
constexpr int64_t kMinSplitKeys = 512;
constexpr int32_t kMaxAutoSplits = 64;

int32_t auto_splits(int64_t visible_keys, int64_t total_keys, int32_t threads) {
    if (threads <= 1) return 1;
    const int64_t target_items = int64_t(threads) * 4;
    const int64_t piece = std::max(kMinSplitKeys, (total_keys + target_items - 1) / target_items);
    return int32_t(std::clamp<int64_t>((visible_keys + piece - 1) / piece, 1, kMaxAutoSplits));
}

using ItemFn = void (*)(const Item&);

ItemFn select_kernel(const KvLayout& L) {
#if defined(__x86_64__) || defined(_M_X64)
    llmn_cpu_isa isa = cpu::active_isa();
    if (isa == LLMN_CPU_ISA_AVX2 || isa == LLMN_CPU_ISA_AVX512) {
        if (L.has_residual()) {  // KIVI: fused AVX2 / AVX-512 unless mixed with an 8-bit side (scalar then)
            if (kv_format_is_q8(L.k_format) || kv_format_is_q8(L.v_format)) return attn_cpu::run_item_scalar;
            return isa == LLMN_CPU_ISA_AVX512 ? attn_cpu::run_item_kivi_avx512 : attn_cpu::run_item_kivi_avx2;
        }
        if (L.k_format == LLMN_KV_F16 && L.v_format == LLMN_KV_F16)
            return isa == LLMN_CPU_ISA_AVX512 ? attn_cpu::run_item_avx512 : attn_cpu::run_item_avx2;
        return attn_cpu::run_item_quant_avx2;
    }
#elif defined(__aarch64__)
    if (cpu::active_isa() == LLMN_CPU_ISA_NEON && !L.has_residual() && L.k_format == LLMN_KV_F16 && L.v_format == LLMN_KV_F16)
        return attn_cpu::run_item_neon;
#else
    (void)L;
#endif
    return attn_cpu::run_item_scalar;
}

}  // namespace

void decode_attention_cpu(const Context& ctx, const DecodeAttentionArgs& a) {
    (void)ctx;
    const KvLayout& L = a.cache->layout();
    const llmn_attention_params& p = a.params;
    const int32_t H = L.num_kv_heads, D = L.head_dim, G = a.group, Q = p.q_len, R = G * Q, Hq = p.num_q_heads;
    const int32_t bs = L.block_size, B = a.batch;
    const bool f16_io = a.q->dtype() == LLMN_DTYPE_F16;

    // Queries regrouped per kv head ([b][h][r][d], r = i * G + g) and pre-scaled, in f32. Done before
    // anything is written, so out may alias q.
    std::vector<float> qp(size_t(B) * H * R * D);
    cpu::parallel_for(B, [&](int64_t b) {
        for (int32_t i = 0; i < Q; ++i)
            for (int32_t hq = 0; hq < Hq; ++hq) {
                const int64_t src = ((b * Q + i) * Hq + hq) * int64_t(D);
                float* dst = &qp[size_t(((b * H + hq / G) * R + i * G + hq % G) * int64_t(D))];
                for (int32_t d = 0; d < D; ++d) {
                    float x = f16_io ? f16_to_f32(a.q->as<uint16_t>()[src + d]) : a.q->as<float>()[src + d];
                    dst[d] = x * p.scale;
                }
            }
    });

    // INT8 query (LLMN_ATTN_FLAG_INT8_QUERY with INT8 keys): every row of qp rounded by the INT8 KV
    // codec, rows padded with zero codes to a multiple of 64. A non-finite query keeps the f32 path for
    // the whole call (its NaN / Inf then propagates as without the flag).
    const int32_t q8_pitch = (D + 63) / 64 * 64;
    std::vector<int8_t> q8;
    std::vector<float> q8_scale;
    std::vector<int32_t> q8_sum;
    const bool int8_query = (p.flags & LLMN_ATTN_FLAG_INT8_QUERY) != 0 &&
                            (L.k_format == LLMN_KV_INT8 || kv_format_is_kivi(L.k_format)) &&
                            std::all_of(qp.begin(), qp.end(), [](float x) { return std::isfinite(x); });
    if (int8_query && L.k_format == LLMN_KV_INT8) {
        const int64_t rows = int64_t(B) * H * R;
        q8.assign(size_t(rows * q8_pitch), 0);
        q8_scale.resize(size_t(rows));
        q8_sum.resize(size_t(rows));
        for (int64_t i = 0; i < rows; ++i) {
            int8_t* c = &q8[size_t(i * q8_pitch)];
            q8_scale[size_t(i)] = attn_cpu::quantize_query_row(&qp[size_t(i * D)], D, c);
            int32_t sum = 0;
            for (int32_t d = 0; d < D; ++d) sum += c[d];
            q8_sum[size_t(i)] = sum;
        }
    }

    // Per-row masks ([b][r]) and ALiBi slopes ([h][r]).
    std::vector<int64_t> row_hi(size_t(B) * R), row_lo(size_t(B) * R);
    for (int32_t b = 0; b < B; ++b)
        for (int32_t r = 0; r < R; ++r) {
            const int64_t pos = attn_query_pos(a.lengths[size_t(b)], Q, r / G);
            row_hi[size_t(b) * R + r] = pos;
            row_lo[size_t(b) * R + r] = attn_first_key(pos, p.window);
        }
    std::vector<float> slopes;
    if (!a.alibi_slopes.empty()) {
        slopes.resize(size_t(H) * R);
        for (int32_t h = 0; h < H; ++h)
            for (int32_t r = 0; r < R; ++r) slopes[size_t(h) * R + r] = a.alibi_slopes[size_t(h * G + r % G)];
    }

    // Split plan.
    std::vector<int64_t> first_blk(static_cast<size_t>(B)), end_blk(static_cast<size_t>(B));
    int64_t total_keys = 0;
    for (int32_t b = 0; b < B; ++b) {
        attn_visible_blocks(a.lengths[size_t(b)], Q, p.window, bs, &first_blk[size_t(b)], &end_blk[size_t(b)]);
        total_keys += (a.lengths[size_t(b)] - attn_first_key(attn_query_pos(a.lengths[size_t(b)], Q, 0), p.window)) * H;
    }
    const int32_t threads = cpu::thread_count();
    std::vector<int32_t> splits(static_cast<size_t>(B));
    std::vector<int64_t> slot_base(size_t(B) + 1, 0);
    for (int32_t b = 0; b < B; ++b) {
        const int64_t nblk = end_blk[size_t(b)] - first_blk[size_t(b)];
        const int64_t visible = a.lengths[size_t(b)] - attn_first_key(attn_query_pos(a.lengths[size_t(b)], Q, 0), p.window);
        int32_t n = p.num_splits > 0 ? p.num_splits : auto_splits(visible, total_keys, threads);
        splits[size_t(b)] = int32_t(std::max<int64_t>(1, std::min<int64_t>(n, nblk)));  // no empty splits
        slot_base[size_t(b) + 1] = slot_base[size_t(b)] + int64_t(H) * splits[size_t(b)];
    }
    const int64_t n_items = slot_base[size_t(B)];

    std::vector<float> o_ws(size_t(n_items) * R * D), lse_ws(size_t(n_items) * R);
    std::vector<Item> items(static_cast<size_t>(n_items));
    for (int32_t b = 0; b < B; ++b) {
        const int64_t len = a.lengths[size_t(b)];
        const int64_t lo = attn_first_key(attn_query_pos(len, Q, 0), p.window);
        for (int32_t h = 0; h < H; ++h)
            for (int32_t s = 0; s < splits[size_t(b)]; ++s) {
                const int64_t slot = slot_base[size_t(b)] + int64_t(h) * splits[size_t(b)] + s;
                int64_t b0, b1;
                split_block_range(first_blk[size_t(b)], end_blk[size_t(b)], splits[size_t(b)], s, &b0, &b1);
                Item& it = items[size_t(slot)];
                it.layer_base = a.cache->pool() + int64_t(p.layer) * L.layer_stride;
                it.blocks = a.seqs[size_t(b)]->blocks.data();
                it.block_stride = L.block_stride;
                it.head_off = int64_t(h) * L.head_stride;
                it.k_data_off = L.k_data_off;
                it.v_data_off = L.v_data_off;
                it.block_size = bs;
                it.head_dim = D;
                it.key_begin = std::max(lo, b0 * bs);
                it.key_end = std::min(len, b1 * bs);
                it.rows = R;
                it.q = &qp[size_t((int64_t(b) * H + h) * R * D)];
                it.row_hi = &row_hi[size_t(b) * R];
                it.row_lo = &row_lo[size_t(b) * R];
                it.row_slope = slopes.empty() ? nullptr : &slopes[size_t(h) * R];
                it.softcap = p.softcap;
                it.o = &o_ws[size_t(slot) * R * D];
                it.lse = &lse_ws[size_t(slot) * R];
                it.k_format = L.k_format;
                it.v_format = L.v_format;
                it.k_aux_off = L.k_aux_off;
                it.v_aux_off = L.v_aux_off;
                it.length = len;
                it.q8_kivi = int8_query && kv_format_is_kivi(L.k_format);
                if (!q8.empty()) {
                    const size_t row0 = size_t((int64_t(b) * H + h) * R);
                    it.q8 = &q8[row0 * size_t(q8_pitch)];
                    it.q8_scale = &q8_scale[row0];
                    it.q8_sum = &q8_sum[row0];
                    it.q8_pitch = q8_pitch;
                }
                if (L.has_residual()) {
                    it.res = a.cache->pool() + L.res_tile_offset(a.seqs[size_t(b)]->res_slot, p.layer, h);
                    it.res_k_off = L.res_k_off;
                    it.res_v_off = L.res_v_off;
                    it.value_group = L.value_group_size;
                }
            }
    }
    // Longest items first (ties by index): the pool hands them out in this order, which keeps the
    // tail short for mixed lengths. Only the schedule depends on it, never a result.
    std::vector<int64_t> order(static_cast<size_t>(n_items));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
        return items[size_t(x)].key_end - items[size_t(x)].key_begin > items[size_t(y)].key_end - items[size_t(y)].key_begin;
    });
    const ItemFn kernel = select_kernel(L);
    cpu::parallel_for(n_items, [&](int64_t i) { kernel(items[size_t(order[size_t(i)])]); });

    // Merge the splits of every (sequence, kv head) row and write out[b][i][h * G + g][:].
    cpu::parallel_for(int64_t(B) * H, [&](int64_t bh) {
        const int64_t b = bh / H;
        const int32_t h = int32_t(bh % H), n = splits[size_t(b)];
        const int64_t base = slot_base[size_t(b)] + int64_t(h) * n;
        std::vector<float> row(static_cast<size_t>(D));
        float lse[kMaxAttentionSplits];
        const float* parts[kMaxAttentionSplits];
        for (int32_t r = 0; r < R; ++r) {
            for (int32_t s = 0; s < n; ++s) {
                lse[s] = lse_ws[size_t((base + s) * R + r)];
                parts[s] = &o_ws[size_t(((base + s) * R + r) * D)];
            }
            merge_partials(n, lse, parts, D, row.data());
            const int64_t dst = ((b * Q + r / G) * Hq + int64_t(h) * G + r % G) * D;
            if (f16_io) {
                uint16_t* o = a.out->as<uint16_t>() + dst;
                for (int32_t d = 0; d < D; ++d) o[d] = f32_to_f16(row[size_t(d)]);
            } else {
                std::memcpy(a.out->as<float>() + dst, row.data(), size_t(D) * sizeof(float));
            }
        }
    });
}

}  // namespace llmn
