// AVX2 work-item kernel for caches with INT8 or FP8-E4M3 K and/or V rows (any mix with f16), same
// contract and masking as run_item_scalar. Kept apart from the tuned f16 kernel
// (decode_attention_avx2.cpp) so that one stays untouched; the math helpers are repeated here.
// Dequantization is fused into the row loads and never materialised:
//  - a row chunk of 8 codes becomes 8 f32 in a register: INT8 by cvtepi8_epi32 + cvtepi32_ps, E4M3 by
//    re-packing the bits as f16 of value * 2^-8 (3 integer ops) + F16C, the 2^8 folded into the
//    per-token scale (exact), f16 by F16C;
//  - q.k runs on the code values and the per-token scale is applied once per score afterwards:
//    s_t = scale_t * (q . code_t);
//  - p.v uses the weights p_t * scale_t against the code values (the softmax denominator l sums the
//    unscaled p_t).
// Tiles: up to 64 keys; q.k in row tiles of 4/2/1 query rows x 2/4/8 keys (8 accumulators); p.v in
// row tiles of 4/2/1 rows x 16 channels. The next tile's K rows are prefetched to L2 spread over the
// first row tile's q.k, its V rows over the first row tile's p.v (with a single 4-row tile, GQA 4 and
// q_len 1, V used to get no prefetch at all), its scale lines when its row pointers are built; the
// scales are read one tile later.
// Where active_isa() == AVX512 the q.k and p.v loops run at zmm width (16 accumulators; see the
// "zmm variant" section): per key and GQA group of 4 this kernel does 2 x 4 x head_dim multiply-adds
// against 2 x head_dim bytes of INT8/FP8 K+V, so with ymm it is compute bound near the streaming
// bandwidth of the dev box (2-core Zen 5), i.e. no faster than the memory-bound f16 kernel. Measured
// (BM_AttentionQuantVsF16 in bench_kv_quant.cpp, same rounds): see docs/kv-quantization.md, "INT8/FP8 CPU speed".
// Since 2026-12-06 late the zmm q.k leaves its 16 sums through the f16 kernel's reduce16 tree and masked
// row stores with the per-key scales permuted into place: INT8 / FP8 1 x 32k and 8 x 32k ~10 % faster
// (three alternating rounds; same page). Since 2026-12-07 the zmm path also has the f16 kernel's
// compile-time head_dim 128 / 64 instances and its softmax at zmm width (exp16 per lane: the same
// weights) with no mask pass for fully visible rows: INT8 1 x 4k 510-527 -> 404-427 us, 1 x 32k
// 3.85-4.04 -> 3.25-3.44 ms, FP8 570-604 -> 501-514 us / 4.40-4.62 -> 3.78-3.98 ms (2 threads, KV from
// DRAM, three alternating rounds of BM_AttentionQuantVsF16): INT8 now 1.41-1.50x the f16 kernel's
// speed in the same rounds (was 1.06-1.20x), FP8 1.18-1.28x (was 0.95-1.06x).
// Since 2026-12-07 (fifth session) the ymm q.k blocks scale and store their 8 scores from the register
// (store_score_rows8 etc., as the f16 kernel) instead of 8 scalar expressions, and qk_block_q8 is
// forced inline (GCC had left the non-VNNI instance out of line: a call per block). AVX2 forced on the
// Zen 5 box, BM_Int8QueryHeadDim (INT8 K/V, 4k keys, GQA 4), old/new binaries alternated twice: the
// INT8 query with AVX-VNNI 1.19-1.29x faster at head_dim 64, ~1.09x at 128-256; without VNNI 1.17-1.23x
// at 64; f32 query 1.02-1.09x; the INT8 query is now faster than the f32 one at every head_dim
// (1.10-1.41x; it was 0.95-0.99x at 64-80).
#include "decode_attention_avx2_math.hpp"
#include "../../core/per_thread.hpp"
#include "decode_attention_cpu.hpp"

#include "../../cpu/avx_vnni.hpp"
#include "../../cpu/cpu_runtime.hpp"
#include "../kv_cache/kv_quant.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace llmn::attn_cpu {

namespace {

using namespace avx2_math;

enum RowFmt { kF16 = 0, kI8 = 1, kE4M3 = 2 };

template <int F>
inline __m256 load8(const uint8_t* row, int c) {
    if constexpr (F == kF16) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + size_t(c) * 2)));
    } else if constexpr (F == kI8) {
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c))));
    } else {
        // E4M3 -> f16 bits: sign-extend each byte to 16 bits and shift left by 7 (s s eeee mmm 0000000),
        // then clear bit 14: s 0 eeee mmm 0000000 is the f16 of value * 2^-8 exactly (exponent bias 15
        // vs 7; E4M3 subnormals become f16 subnormals, which F16C converts exactly). The 2^8 is folded
        // into the row's scale (kE4M3Unscale), so 3 integer ops (the first with the load) + cvtph.
        const __m128i w = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c)));
        const __m128i h = _mm_and_si128(_mm_slli_epi16(w, 7), _mm_set1_epi16(int16_t(0xBF80)));
        return _mm256_cvtph_ps(h);
    }
}

// Factor the E4M3 loader's values are short by (applied to the per-token scales once per row).
constexpr float kE4M3Unscale = 256.0f;
template <int F>
constexpr float scale_factor() { return F == kE4M3 ? kE4M3Unscale : 1.0f; }

constexpr int row_bytes_per_elem(int F) { return F == kF16 ? 2 : 1; }

constexpr int kStride = kTileKeys + 8;  // score row pitch (floats)

template <int F, int RT, int KT>
__attribute__((always_inline)) inline void qk_block(const float* q, int D, const uint8_t* const* k, const float* ks, float* s, int t, int valid) {
    static_assert(RT * KT == 8, "8 accumulators");
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int c = 0; c < D; c += 8) {
        __m256 kv[KT];
        for (int j = 0; j < KT; ++j) kv[j] = load8<F>(k[j], c);
        for (int r = 0; r < RT; ++r) {
            __m256 qv = _mm256_loadu_ps(q + size_t(r) * D + c);
            __asm__("" : "+x"(qv));  // keep q in a register (see decode_attention_avx2.cpp)
            for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm256_fmadd_ps(qv, kv[j], acc[r * KT + j]);
        }
    }
    const __m256 dot = reduce8(acc);  // lane r * KT + j = row r, key j
    if (valid == KT) {
        store_score_rows8<RT, KT>(s, kStride, t, KT, _mm256_mul_ps(dot, key_lanes8<KT>(ks + t)));
        return;
    }
    alignas(32) float out[8];
    _mm256_store_ps(out, dot);
    for (int r = 0; r < RT; ++r)
        for (int j = 0; j < valid; ++j) s[size_t(r) * kStride + t + j] = out[r * KT + j] * ks[t + j];
}

template <int F, int RT, int KT>
inline void qk_rows(const float* q, int D, const uint8_t* const* krows, const float* ks, int n, float* s,
                    const uint8_t* const* pf, int npf) {
    for (int t = 0; t < n; t += KT) {
        for (int j = t; j < std::min(t + KT, npf); ++j)
            for (int b = 0; b < D * row_bytes_per_elem(F); b += 64)
                _mm_prefetch(reinterpret_cast<const char*>(pf[j] + b), _MM_HINT_T1);
        const uint8_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block<F, RT, KT>(q, D, k, ks, s, t, std::min(KT, n - t));
    }
}

// INT8 query against INT8 keys (Item::q8): per 32 channels and key one vpabsb, per row vpsignb +
// vpmaddubsw (|k| <= 128 times |q| <= 127, pairs <= 32512: no saturation) + vpmaddwd + add, against
// 2 converts and 4 FMAs per row in f32. With AVX-VNNI (VNNI): per key one vpxor (k + 128 as unsigned
// bytes), per row one vpdpbusd; dot(k + 128, q) = dot(k, q) + 128 * sum(q) is corrected once per score,
// as in the AVX512-VNNI loop below. Exact integers either way; the score is the scalar kernel's
// float(dot) * (q_scale * k_scale).
template <int RT, int KT, bool VNNI>
__attribute__((always_inline)) inline void qk_block_q8(const Item& it, int r0, int D, const uint8_t* const* k, const float* ks, float* s, int t,
                        int valid) {
    static_assert(RT * KT == 8, "8 accumulators");
    const int8_t* q8 = it.q8 + size_t(r0) * it.q8_pitch;
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(int8_t(0x80));
    __m256i acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_si256();
    for (int c = 0; c < D; c += 32) {
        __m256i kk[KT], ka[KT];
        for (int j = 0; j < KT; ++j) {  // head_dim % 32 == 16: the last 16 bytes, zero-extended (-> 128
                                        // with VNNI, against zero query codes)
            kk[j] = c + 32 <= D ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k[j] + c))
                                : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k[j] + c)));
            ka[j] = VNNI ? _mm256_xor_si256(kk[j], flip) : _mm256_abs_epi8(kk[j]);
        }
        for (int r = 0; r < RT; ++r) {
            __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + size_t(r) * it.q8_pitch + c));
            __asm__("" : "+x"(qv));
            for (int j = 0; j < KT; ++j) {
                if constexpr (VNNI) acc[r * KT + j] = cpu::dpbusd_vex(acc[r * KT + j], ka[j], qv);
                else
                    acc[r * KT + j] = _mm256_add_epi32(
                        acc[r * KT + j], _mm256_madd_epi16(_mm256_maddubs_epi16(ka[j], _mm256_sign_epi8(qv, kk[j])), ones));
            }
        }
    }
    __m256i dot = reduce8_epi32(acc);  // lane r * KT + j = row r, key j
    if constexpr (VNNI)  // 128 * sum(q) of the row in its lanes
        dot = _mm256_sub_epi32(dot, _mm256_slli_epi32(_mm256_castps_si256(row_lanes8<RT, KT>(
                                                          reinterpret_cast<const float*>(it.q8_sum + r0))), 7));
    const float* qs = it.q8_scale + r0;
    if (valid == KT) {  // the scalar expression below, lane by lane
        const __m256 sc = _mm256_mul_ps(row_lanes8<RT, KT>(qs), key_lanes8<KT>(ks + t));
        store_score_rows8<RT, KT>(s, kStride, t, KT, _mm256_mul_ps(_mm256_cvtepi32_ps(dot), sc));
        return;
    }
    alignas(32) int32_t out[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), dot);
    for (int r = 0; r < RT; ++r)
        for (int j = 0; j < valid; ++j) s[size_t(r) * kStride + t + j] = float(out[r * KT + j]) * (qs[r] * ks[t + j]);
}

// Rows [r0, r0 + RT) of the INT8-query q.k for one tile (prefetching like qk_rows).
template <int RT, int KT, bool VNNI>
inline void qk_rows_q8(const Item& it, int r0, int D, const uint8_t* const* krows, const float* ks, int n, float* s,
                       const uint8_t* const* pf, int npf) {
    for (int t = 0; t < n; t += KT) {
        for (int j = t; j < std::min(t + KT, npf); ++j)
            for (int b = 0; b < D; b += 64) _mm_prefetch(reinterpret_cast<const char*>(pf[j] + b), _MM_HINT_T1);
        const uint8_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];
        qk_block_q8<RT, KT, VNNI>(it, r0, D, k, ks, s, t, std::min(KT, n - t));
    }
}

// All rows of one tile's INT8-query q.k (ymm).
template <bool VNNI>
void qk_tile_q8(const Item& it, int R, int D, const uint8_t* const* K, const float* KS, int n, float* S,
                const uint8_t* const* KN, int n_next) {
    int r = 0;
    for (; r + 4 <= R; r += 4) qk_rows_q8<4, 2, VNNI>(it, r, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_next : 0);
    for (; r + 2 <= R; r += 2) qk_rows_q8<2, 4, VNNI>(it, r, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_next : 0);
    for (; r < R; ++r) qk_rows_q8<1, 8, VNNI>(it, r, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_next : 0);
}

// acc[r][c..c+16) += sum_t p[r][t] * v[t][c..c+16) (p already carries V's per-token scale).
// pf/npf: next tile's V rows, one 64-byte line of each per 64 bytes of channels, spread over the loop.
template <int F, int RT>
inline void pv_rows(const float* p, const uint8_t* const* vrows, int n, int D, float* acc,
                    const uint8_t* const* pf, int npf) {
    constexpr int U = RT == 4 ? 1 : (RT == 2 ? 2 : 4);
    for (int c = 0; c < D; c += 16) {
        __m256 a[U][RT][2];
        for (int u = 0; u < U; ++u)
            for (int r = 0; r < RT; ++r) a[u][r][0] = a[u][r][1] = _mm256_setzero_ps();
        int t = 0;
        const int cb = c * row_bytes_per_elem(F);
        const int npf_c = (cb & 63) == 0 ? npf : 0;
        for (; t + U <= n; t += U) {
            for (int j = t; j < std::min(t + U, npf_c); ++j)
                _mm_prefetch(reinterpret_cast<const char*>(pf[j] + cb), _MM_HINT_T1);
            for (int u = 0; u < U; ++u) {
                const __m256 v0 = load8<F>(vrows[t + u], c), v1 = load8<F>(vrows[t + u], c + 8);
                for (int r = 0; r < RT; ++r) {
                    const __m256 pb = _mm256_broadcast_ss(p + size_t(r) * kStride + t + u);
                    a[u][r][0] = _mm256_fmadd_ps(pb, v0, a[u][r][0]);
                    a[u][r][1] = _mm256_fmadd_ps(pb, v1, a[u][r][1]);
                }
            }
        }
        for (; t < n; ++t) {
            const __m256 v0 = load8<F>(vrows[t], c), v1 = load8<F>(vrows[t], c + 8);
            for (int r = 0; r < RT; ++r) {
                const __m256 pb = _mm256_broadcast_ss(p + size_t(r) * kStride + t);
                a[0][r][0] = _mm256_fmadd_ps(pb, v0, a[0][r][0]);
                a[0][r][1] = _mm256_fmadd_ps(pb, v1, a[0][r][1]);
            }
        }
        for (int r = 0; r < RT; ++r) {
            __m256 s0 = a[0][r][0], s1 = a[0][r][1];
            for (int u = 1; u < U; ++u) {
                s0 = _mm256_add_ps(s0, a[u][r][0]);
                s1 = _mm256_add_ps(s1, a[u][r][1]);
            }
            float* ar = acc + size_t(r) * D + c;
            _mm256_storeu_ps(ar, _mm256_add_ps(_mm256_loadu_ps(ar), s0));
            _mm256_storeu_ps(ar + 8, _mm256_add_ps(_mm256_loadu_ps(ar + 8), s1));
        }
    }
}

// ---- zmm variant (run when active_isa() == AVX512) -----------------------------------------------
// Same tiles, masking, softmax and operation order per score as above, at twice the width: the AVX2
// path does 128 ymm FMAs per key per GQA group of 4 and is compute bound below the streaming
// bandwidth, zmm halves that. Only the q.k and p.v loops are zmm (target attribute, internal linkage,
// so no zmm copy of a shared inline function can reach the AVX2 paths); softmax stays ymm.
}  // namespace
}  // namespace llmn::attn_cpu
#include "decode_attention_avx512_math.hpp"  // here: its GCC 12 warning pragmas need not cover the AVX2 code above
namespace llmn::attn_cpu {
namespace {
using namespace avx512_math;

#define LLMN_QZ __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

template <int F>
LLMN_QZ inline __m512 load16(const uint8_t* row, int c) {
    if constexpr (F == kF16) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + size_t(c) * 2)));
    } else if constexpr (F == kI8) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c))));
    } else {  // the bit re-packing of load8, 16 lanes
        const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
        return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(w, 7), _mm256_set1_epi16(int16_t(0xBF80))));
    }
}

// RT rows x KT keys, RT * KT = 16 accumulators (FMA latency x throughput is 8 on Zen 4/5).
template <int F, int RT, int KT, int DC>
LLMN_QZ inline void qk_block16(const float* q, int d_rt, const uint8_t* const* k, const float* ks, float* s, int t,
                               int valid) {
    static_assert(RT * KT == 16, "16 accumulators");
    const int D = DC > 0 ? DC : d_rt;
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    for (int c = 0; c < D; c += 16) {
        __m512 kv[KT];
        for (int j = 0; j < KT; ++j) kv[j] = load16<F>(k[j], c);
        for (int r = 0; r < RT; ++r) {
            __m512 qv = _mm512_loadu_ps(q + size_t(r) * D + c);
            __asm__("" : "+v"(qv));
            for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm512_fmadd_ps(qv, kv[j], acc[r * KT + j]);
        }
    }
    // The f16 kernel's reduction and row stores (avx512_math), times the per-key scales in the same
    // lanes. Replaced folding each sum to ymm + two AVX2 hadd trees + a stack array and scalar copies;
    // same products, sums in another order.
    store_score_rows<RT, KT>(s, kStride, t, valid, _mm512_mul_ps(score_lanes(acc), key_lanes<KT>(ks + t, valid)));
}

template <int F, int RT, int KT, int DC>
LLMN_QZ void qk_rows16(const float* q, int d_rt, const uint8_t* const* krows, const float* ks, int n, float* s,
                       const uint8_t* const* pf, int npf) {
    const int D = DC > 0 ? DC : d_rt;
    for (int t = 0; t < n; t += KT) {
        for (int j = t; j < std::min(t + KT, npf); ++j)
            for (int b = 0; b < D * row_bytes_per_elem(F); b += 64)
                _mm_prefetch(reinterpret_cast<const char*>(pf[j] + b), _MM_HINT_T1);
        const uint8_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block16<F, RT, KT, DC>(q, D, k, ks, s, t, std::min(KT, n - t));
    }
}

// INT8 query against INT8 keys with AVX512-VNNI: per 64 channels and key one load + vpxord (k + 128
// as unsigned bytes), per row one vpdpbusd (4 channels per lane) where f32 needs 4 converts and 4 FMAs;
// dot(k + 128, q) = dot(k, q) + 128 * sum(q) is corrected once per score. Exact integers reduced by
// the integer reduce16; the score is float(dot) * (q_scale * k_scale) as in the scalar kernel.
#define LLMN_QZV __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

template <int RT, int KT, int DC>
LLMN_QZV inline void qk_block16_q8(const Item& it, int r0, int d_rt, const uint8_t* const* k, const float* ks, float* s,
                                   int t, int valid) {
    static_assert(RT * KT == 16, "16 accumulators");
    const int D = DC > 0 ? DC : d_rt;
    const int8_t* q8 = it.q8 + size_t(r0) * it.q8_pitch;
    const __m512i flip = _mm512_set1_epi8(int8_t(0x80));
    __m512i acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_si512();
    for (int c = 0; c < D; c += 64) {
        // head_dim 80 / 96: the tail's missing bytes load as 0 -> 128, against zero query codes
        const __mmask64 m = D - c >= 64 ? ~__mmask64(0) : (__mmask64(1) << (D - c)) - 1;
        __m512i kv[KT];
        for (int j = 0; j < KT; ++j) kv[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, k[j] + c), flip);
        for (int r = 0; r < RT; ++r) {
            __m512i qv = _mm512_loadu_si512(q8 + size_t(r) * it.q8_pitch + c);
            __asm__("" : "+v"(qv));
            for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm512_dpbusd_epi32(acc[r * KT + j], kv[j], qv);
        }
    }
    const __m512i bias = _mm512_slli_epi32(_mm512_castps_si512(row_lanes<RT, KT>(reinterpret_cast<const float*>(it.q8_sum + r0))), 7);
    const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(score_lanes_epi32(acc), bias));
    const __m512 sc = _mm512_mul_ps(row_lanes<RT, KT>(it.q8_scale + r0), key_lanes<KT>(ks + t, valid));
    store_score_rows<RT, KT>(s, kStride, t, valid, _mm512_mul_ps(dot, sc));
}

template <int RT, int KT, int DC>
LLMN_QZV void qk_rows16_q8(const Item& it, int r0, int d_rt, const uint8_t* const* krows, const float* ks, int n, float* s,
                           const uint8_t* const* pf, int npf) {
    const int D = DC > 0 ? DC : d_rt;
    for (int t = 0; t < n; t += KT) {
        for (int j = t; j < std::min(t + KT, npf); ++j)
            for (int b = 0; b < D; b += 64) _mm_prefetch(reinterpret_cast<const char*>(pf[j] + b), _MM_HINT_T1);
        const uint8_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];
        qk_block16_q8<RT, KT, DC>(it, r0, D, k, ks, s, t, std::min(KT, n - t));
    }
}

template <int DC>
LLMN_QZV void qk_tile16_q8(const Item& it, int R, int D, const uint8_t* const* K, const float* KS, int n, float* S,
                           const uint8_t* const* KN, int n_next) {
    int r = 0;
    for (; r + 4 <= R; r += 4) qk_rows16_q8<4, 4, DC>(it, r, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_next : 0);
    for (; r + 2 <= R; r += 2) qk_rows16_q8<2, 8, DC>(it, r, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_next : 0);
    for (; r < R; ++r) qk_rows16_q8<1, 16, DC>(it, r, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_next : 0);
}

// Compile-time head_dim for the integer q.k also where the rest of the kernel runs the generic instance:
// with run-time loop bounds the 16 accumulators spill (41 zmm stack accesses, checked with objdump).
template <int DC>
void qk_tile16_q8_any(const Item& it, int R, int D, const uint8_t* const* K, const float* KS, int n, float* S,
                      const uint8_t* const* KN, int n_next) {
    if (DC > 0) return qk_tile16_q8<DC>(it, R, D, K, KS, n, S, KN, n_next);
    switch (D) {
        case 64: return qk_tile16_q8<64>(it, R, D, K, KS, n, S, KN, n_next);
        case 80: return qk_tile16_q8<80>(it, R, D, K, KS, n, S, KN, n_next);
        case 96: return qk_tile16_q8<96>(it, R, D, K, KS, n, S, KN, n_next);
        case 128: return qk_tile16_q8<128>(it, R, D, K, KS, n, S, KN, n_next);
        case 256: return qk_tile16_q8<256>(it, R, D, K, KS, n, S, KN, n_next);
        default: return qk_tile16_q8<0>(it, R, D, K, KS, n, S, KN, n_next);
    }
}

// acc[r][c .. c + 16 * CW) += sum_t p[r][t] * v[t][...]: U = 16 / (RT * CW) keys unrolled, partial
// sums added in a fixed order.
template <int F, int RT, int CW, int DC>
LLMN_QZ inline void pv_chunk16(const float* p, const uint8_t* const* vrows, int n, int c, int d_rt, float* acc,
                               const uint8_t* const* pf, int npf) {
    const int D = DC > 0 ? DC : d_rt;
    constexpr int U = 16 / (RT * CW);
    __m512 a[U][RT][CW];
    for (int u = 0; u < U; ++u)
        for (int r = 0; r < RT; ++r)
            for (int w = 0; w < CW; ++w) a[u][r][w] = _mm512_setzero_ps();
    // the 64-byte lines of each next-tile V row that start inside this chunk's bytes [cb, ce)
    const int cb = c * row_bytes_per_elem(F), ce = cb + 16 * CW * row_bytes_per_elem(F), lb = (cb + 63) & ~63;
    const int npf_c = lb < ce ? npf : 0;
    int t = 0;
    for (; t + U <= n; t += U) {
        for (int j = t; j < std::min(t + U, npf_c); ++j)
            for (int b = lb; b < ce; b += 64) _mm_prefetch(reinterpret_cast<const char*>(pf[j] + b), _MM_HINT_T1);
        for (int u = 0; u < U; ++u) {
            __m512 v[CW];
            for (int w = 0; w < CW; ++w) v[w] = load16<F>(vrows[t + u], c + 16 * w);
            for (int r = 0; r < RT; ++r) {
                const __m512 pb = _mm512_set1_ps(p[size_t(r) * kStride + t + u]);
                for (int w = 0; w < CW; ++w) a[u][r][w] = _mm512_fmadd_ps(pb, v[w], a[u][r][w]);
            }
        }
    }
    for (; t < n; ++t) {
        __m512 v[CW];
        for (int w = 0; w < CW; ++w) v[w] = load16<F>(vrows[t], c + 16 * w);
        for (int r = 0; r < RT; ++r) {
            const __m512 pb = _mm512_set1_ps(p[size_t(r) * kStride + t]);
            for (int w = 0; w < CW; ++w) a[0][r][w] = _mm512_fmadd_ps(pb, v[w], a[0][r][w]);
        }
    }
    for (int r = 0; r < RT; ++r)
        for (int w = 0; w < CW; ++w) {
            __m512 sum = a[0][r][w];
            for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, a[u][r][w]);
            float* ar = acc + size_t(r) * D + c + 16 * w;
            _mm512_storeu_ps(ar, _mm512_add_ps(_mm512_loadu_ps(ar), sum));
        }
}

// 32-channel chunks, 16-channel tail (head_dim % 32 == 16). The f16 kernel's 64-channel chunks (U = 1
// at 4 rows) made this kernel ~25 % slower on the Zen 5 box (INT8 and FP8, 1 x 4k, one thread, KV
// cache-resident), so it keeps 32.
template <int F, int RT, int DC>
LLMN_QZ void pv_rows16(const float* p, const uint8_t* const* vrows, int n, int d_rt, float* acc,
                       const uint8_t* const* pf, int npf) {
    const int D = DC > 0 ? DC : d_rt;
    int c = 0;
    for (; c + 32 <= D; c += 32) pv_chunk16<F, RT, 2, DC>(p, vrows, n, c, D, acc, pf, npf);
    if (c < D) pv_chunk16<F, RT, 1, DC>(p, vrows, n, c, D, acc, pf, npf);
}

// Online softmax of one tile at zmm width (exp16 is exp_ps per lane: same weights as the ymm loop):
// S's visible scores become the weights in P (0 for masked keys) times V's per-token scale.
template <int VF>
LLMN_QZ void softmax_rows16(const Item& it, int R, int D, int64_t t0, int n, float* S, float* P, const float* VS,
                            float* acc, float* m, float* l) {
    const int nv = (n + 15) & ~15;  // <= kTileKeys, a multiple of 16: inside every row's kStride
    const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int r = 0; r < R; ++r) {
        float* s = S + size_t(r) * kStride;
        float* pr = P + size_t(r) * kStride;
        const int64_t lo = std::max(it.row_lo[r], t0) - t0, hi = std::min(it.row_hi[r] + 1, t0 + n) - t0;
        if (lo >= hi) {
            for (int j = 0; j < nv; j += 16) _mm512_storeu_ps(pr + j, _mm512_setzero_ps());
            continue;
        }
        const float tile_max = mask_row16(s, nv, t0, lo, hi, it.softcap, it.row_slope ? &it.row_slope[r] : nullptr, it.row_hi[r]);
        raise_row_max16(tile_max, m[r], l[r], acc + size_t(r) * D, D);
        const __m512 vm = _mm512_set1_ps(m[r]);
        __m512 vsum = _mm512_setzero_ps();
        for (int j = 0; j < nv; j += 16) {
            const __m512 x = _mm512_loadu_ps(s + j);
            const __mmask16 keep = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_OQ);
            const __m512 p = _mm512_maskz_mov_ps(keep, exp16(_mm512_sub_ps(x, vm)));
            vsum = _mm512_add_ps(vsum, p);
            // lanes past n hold stale or unset scales: not loaded (their p is 0)
            if constexpr (VF != kF16) _mm512_storeu_ps(pr + j, _mm512_mul_ps(p, _mm512_maskz_loadu_ps(keep, VS + j)));
            else _mm512_storeu_ps(pr + j, p);
        }
        l[r] += _mm512_reduce_add_ps(vsum);
    }
}

template <int KF, int VF, bool Z, int DC>
void run_item_t(const Item& it) {
    const int D = DC > 0 ? DC : it.head_dim, R = it.rows, bs = it.block_size;
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    struct Scratch {
        std::vector<float> acc, m, l, sbuf, pbuf;
    };  // per thread (core/per_thread.hpp)
    Scratch& w_ = per_thread<Scratch>();
    auto &acc = w_.acc, &m = w_.m, &l = w_.l, &sbuf = w_.sbuf, &pbuf = w_.pbuf;
    acc.assign(size_t(R) * D, 0.0f);
    m.assign(size_t(R), NEG_INF);
    l.assign(size_t(R), 0.0f);
    sbuf.assign(size_t(R) * kStride, 0.0f);
    pbuf.assign(size_t(R) * kStride, 0.0f);
    float* S = sbuf.data();
    float* P = VF == kF16 ? S : pbuf.data();
    const bool vnni = Z && cpu::avx512_vnni();
    const bool avx_vnni = !Z && cpu::avx_vnni();  // AVX-512 CPUs without AVX512-VNNI lack AVX-VNNI too
    const uint8_t* kr[2][kTileKeys];
    const uint8_t* vr[2][kTileKeys];
    alignas(32) float ks[2][kTileKeys + 8], vs[2][kTileKeys + 8];
    const int64_t krb = int64_t(D) * row_bytes_per_elem(KF), vrb = int64_t(D) * row_bytes_per_elem(VF);
    // Row pointers of a tile and where its per-token scales are; the scales are read one tile later
    // (load_scales), their lines are prefetched here, so the read does not stall on memory.
    struct Seg {
        int j, cnt;
        const uint8_t *kaux, *vaux;
    };
    Seg seg[2][kTileKeys];
    int nseg[2] = {0, 0};
    auto prefetch_span = [](const uint8_t* p, int bytes) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63), e = reinterpret_cast<uintptr_t>(p) + bytes;
        for (uintptr_t x = a; x < e; x += 64) _mm_prefetch(reinterpret_cast<const char*>(x), _MM_HINT_T1);
    };
    auto rows_of = [&](int64_t t0, int n, int slot) {
        nseg[slot] = 0;
        for (int j = 0; j < n;) {
            const int64_t t = t0 + j;
            const int row = int(t % bs);
            const int cnt = std::min(n - j, bs - row);
            const uint8_t* tile = it.layer_base + int64_t(it.blocks[t / bs]) * it.block_stride + it.head_off;
            for (int i = 0; i < cnt; ++i) {
                kr[slot][j + i] = tile + it.k_data_off + size_t(row + i) * krb;
                vr[slot][j + i] = tile + it.v_data_off + size_t(row + i) * vrb;
            }
            Seg& sg = seg[slot][nseg[slot]++];
            sg.j = j;
            sg.cnt = cnt;
            sg.kaux = tile + it.k_aux_off + size_t(row) * 4;
            sg.vaux = tile + it.v_aux_off + size_t(row) * 4;
            if constexpr (KF != kF16) prefetch_span(sg.kaux, cnt * 4);
            if constexpr (VF != kF16) prefetch_span(sg.vaux, cnt * 4);
            j += cnt;
        }
    };
    auto load_scales = [&](int slot) {
        for (int g = 0; g < nseg[slot]; ++g) {
            const Seg& sg = seg[slot][g];
            if constexpr (KF != kF16) std::memcpy(&ks[slot][sg.j], sg.kaux, size_t(sg.cnt) * 4);
            else for (int i = 0; i < sg.cnt; ++i) ks[slot][sg.j + i] = 1.0f;
            if constexpr (VF != kF16) std::memcpy(&vs[slot][sg.j], sg.vaux, size_t(sg.cnt) * 4);
            // exact: a power of two, and scale <= FLT_MAX / 448 leaves room for 2^8
            if constexpr (KF == kE4M3) for (int i = 0; i < sg.cnt; ++i) ks[slot][sg.j + i] *= scale_factor<KF>();
            if constexpr (VF == kE4M3) for (int i = 0; i < sg.cnt; ++i) vs[slot][sg.j + i] *= scale_factor<VF>();
        }
    };
    int cur = 0;
    int n_cur = int(std::min<int64_t>(kTileKeys, it.key_end - it.key_begin));
    if (n_cur > 0) rows_of(it.key_begin, n_cur, 0);
    for (int64_t t0 = it.key_begin; t0 < it.key_end; t0 += kTileKeys) {
        const int n = n_cur;
        load_scales(cur);
        const uint8_t* const* K = kr[cur];
        const uint8_t* const* V = vr[cur];
        const float* KS = ks[cur];
        const float* VS = vs[cur];
        const int64_t t1 = t0 + kTileKeys;
        n_cur = int(std::min<int64_t>(kTileKeys, std::max<int64_t>(0, it.key_end - t1)));
        if (n_cur > 0) rows_of(t1, n_cur, cur ^ 1);
        const uint8_t* const* KN = kr[cur ^ 1];
        const uint8_t* const* VN = vr[cur ^ 1];

        // 1. scores (the first row tile prefetches the next tile's K rows; its p.v the V rows)
        int r = 0;
        if (KF == kI8 && it.q8) {  // INT8 query: zmm with VNNI, else the ymm integer loop
            if (Z && vnni) qk_tile16_q8_any<DC>(it, R, D, K, KS, n, S, KN, n_cur);
            else if (avx_vnni) qk_tile_q8<true>(it, R, D, K, KS, n, S, KN, n_cur);
            else qk_tile_q8<false>(it, R, D, K, KS, n, S, KN, n_cur);
        } else if constexpr (Z) {
            for (; r + 4 <= R; r += 4)
                qk_rows16<KF, 4, 4, DC>(it.q + size_t(r) * D, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
            for (; r + 2 <= R; r += 2)
                qk_rows16<KF, 2, 8, DC>(it.q + size_t(r) * D, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
            for (; r < R; ++r)
                qk_rows16<KF, 1, 16, DC>(it.q + size_t(r) * D, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
        } else {
            for (; r + 4 <= R; r += 4)
                qk_rows<KF, 4, 2>(it.q + size_t(r) * D, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
            for (; r + 2 <= R; r += 2)
                qk_rows<KF, 2, 4>(it.q + size_t(r) * D, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
            for (; r < R; ++r)
                qk_rows<KF, 1, 8>(it.q + size_t(r) * D, D, K, KS, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
        }

        // 2. online softmax per row; P = weights (0 for masked keys) times V's per-token scale
        const int nv = (n + 7) & ~7;
        if constexpr (Z) softmax_rows16<VF>(it, R, D, t0, n, S, P, VS, acc.data(), m.data(), l.data());
        else for (r = 0; r < R; ++r) {
            float* s = S + size_t(r) * kStride;
            float* pr = P + size_t(r) * kStride;
            const int64_t lo = std::max(it.row_lo[r], t0) - t0, hi = std::min(it.row_hi[r] + 1, t0 + n) - t0;
            if (lo >= hi) {
                for (int j = 0; j < nv; j += 8) _mm256_storeu_ps(pr + j, _mm256_setzero_ps());
                continue;
            }
            const float tile_max = mask_row(s, nv, t0, lo, hi, it.softcap, it.row_slope ? &it.row_slope[r] : nullptr, it.row_hi[r]);
            float* ar = acc.data() + size_t(r) * D;
            raise_row_max(tile_max, m[size_t(r)], l[size_t(r)], ar, D);
            const __m256 vm = _mm256_set1_ps(m[size_t(r)]);
            __m256 vsum = _mm256_setzero_ps();
            for (int j = 0; j < nv; j += 8) {
                const __m256 x = _mm256_loadu_ps(s + j);
                const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(NEG_INF), _CMP_NEQ_OQ);
                const __m256 p = _mm256_and_ps(exp_ps(_mm256_sub_ps(x, vm)), keep);
                vsum = _mm256_add_ps(vsum, p);
                if constexpr (VF != kF16) {
                    // lanes past n hold stale scales: their p is 0 (masked), and 0 * finite = 0
                    const __m256 sc = _mm256_and_ps(_mm256_loadu_ps(VS + j), keep);
                    _mm256_storeu_ps(pr + j, _mm256_mul_ps(p, sc));
                } else {
                    _mm256_storeu_ps(pr + j, p);
                }
            }
            l[size_t(r)] += hsum(vsum);
        }

        // 3. acc += P V
        for (r = 0; r + 4 <= R; r += 4) {
            float* a4 = acc.data() + size_t(r) * D;
            if constexpr (Z) pv_rows16<VF, 4, DC>(P + size_t(r) * kStride, V, n, D, a4, VN, r == 0 ? n_cur : 0);
            else pv_rows<VF, 4>(P + size_t(r) * kStride, V, n, D, a4, VN, r == 0 ? n_cur : 0);
        }
        for (; r + 2 <= R; r += 2) {
            float* a2 = acc.data() + size_t(r) * D;
            if constexpr (Z) pv_rows16<VF, 2, DC>(P + size_t(r) * kStride, V, n, D, a2, VN, r == 0 ? n_cur : 0);
            else pv_rows<VF, 2>(P + size_t(r) * kStride, V, n, D, a2, VN, r == 0 ? n_cur : 0);
        }
        for (; r < R; ++r) {
            float* a1 = acc.data() + size_t(r) * D;
            if constexpr (Z) pv_rows16<VF, 1, DC>(P + size_t(r) * kStride, V, n, D, a1, VN, r == 0 ? n_cur : 0);
            else pv_rows<VF, 1>(P + size_t(r) * kStride, V, n, D, a1, VN, r == 0 ? n_cur : 0);
        }
        cur ^= 1;
    }

    for (int r = 0; r < R; ++r) {
        float* o = it.o + size_t(r) * D;
        const float* ar = acc.data() + size_t(r) * D;
        if (l[size_t(r)] > 0.0f) {
            const __m256 vl = _mm256_set1_ps(l[size_t(r)]);
            for (int d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_div_ps(_mm256_loadu_ps(ar + d), vl));
            it.lse[r] = m[size_t(r)] + std::log(l[size_t(r)]);
        } else {
            std::memset(o, 0, size_t(D) * sizeof(float));
            it.lse[r] = NEG_INF;
        }
    }
}

int row_fmt(int32_t f) { return f == LLMN_KV_INT8 ? kI8 : (f == LLMN_KV_FP8_E4M3 ? kE4M3 : kF16); }

template <int KF, int VF, bool Z>
void dispatch_d(const Item& it) {
    // zmm: head_dim 128 and 64 (most models) get compile-time loop bounds, as in the f16 kernel
    if constexpr (Z) {
        if (it.head_dim == 128) return run_item_t<KF, VF, Z, 128>(it);
        if (it.head_dim == 64) return run_item_t<KF, VF, Z, 64>(it);
    }
    run_item_t<KF, VF, Z, 0>(it);
}

template <int KF, bool Z>
void dispatch_v(const Item& it) {
    switch (row_fmt(it.v_format)) {
        case kI8: dispatch_d<KF, kI8, Z>(it); break;
        case kE4M3: dispatch_d<KF, kE4M3, Z>(it); break;
        default: dispatch_d<KF, kF16, Z>(it); break;
    }
}

template <bool Z>
void dispatch_k(const Item& it) {
    switch (row_fmt(it.k_format)) {
        case kI8: dispatch_v<kI8, Z>(it); break;
        case kE4M3: dispatch_v<kE4M3, Z>(it); break;
        default: dispatch_v<kF16, Z>(it); break;
    }
}

}  // namespace

// The zmm loops are chosen here rather than in select_kernel (decode_attention_cpu.cpp), so that the
// quantized-KV kernel stays one entry point.
void run_item_quant_avx2(const Item& it) {
    if (cpu::active_isa() == LLMN_CPU_ISA_AVX512) dispatch_k<true>(it);
    else dispatch_k<false>(it);
}

}  // namespace llmn::attn_cpu
