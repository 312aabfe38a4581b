// AVX2 work-item kernel for KIVI caches (INT4/INT2 on K and/or V, the other side F16, INT4 or INT2),
// same contract and masking as run_item_scalar. Its own file because the per-channel key scales make
// the BLOCK, not the token, the unit of dequantization: a tile's scores run per block segment (each
// with its q folded by that block's scales), and the tuned f16 / INT8 kernels stay untouched.
// decode_attention_kivi_avx512.cpp is this design at zmm width.
// Dequantization is fused and never materialised:
//  - INT2: 8 codes -> 8 f32 in a register: the 2 packed bytes are broadcast to all lanes, shifted right
//    per lane by (2 * lane) (vpsrlvd), masked and converted (cvtdq2ps); INT4: 16 codes -> two registers
//    in pair order (load16_i4), with the folded q and the accumulator in the same order;
//  - keys: per block, q is folded with the channel scales, q'_d = q_d * scale_d, and the constant
//    c = sum_d q_d * min_d is added after the dot product: s_t = q' . code_t + c (one fold of R x D per
//    block, amortised over its block_size keys);
//  - values: per (token, group) weights p_t * s_tg multiply the code values, and sum_t p_t * m_tg is
//    added to the group's channels once per tile (so acc += p (s code + m) without a dequantized row);
//  - the partial (residual) block reads f16 rows from the residual tile with F16C.
#include "decode_attention_avx2_math.hpp"
#include "../../core/per_thread.hpp"
#include "decode_attention_cpu.hpp"

#include "../../core/numeric.hpp"
#include "../../cpu/avx_vnni.hpp"
#include "../../cpu/cpu_runtime.hpp"
#include "../kv_cache/kv_layout.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace llmn::attn_cpu {

namespace {

using namespace avx2_math;

enum RowFmt { kF16 = 0, kI4 = 4, kI2 = 2 };

template <int F>
__attribute__((always_inline)) inline __m256 load8(const uint8_t* row, int c) {
    if constexpr (F == kF16) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + size_t(c) * 2)));
    } else {  // INT2 (INT4 rows: load16_i4)
        static_assert(F == kI2, "INT4 rows are read by load16_i4");
        uint16_t w;
        std::memcpy(&w, row + c / 4, 2);
        const __m256i x = _mm256_srlv_epi32(_mm256_set1_epi32(int32_t(w)), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
        return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0x3)));
    }
}

// INT4 rows are read 16 channels (8 bytes) at a time in "pair order": one zero-extending byte load
// gives 8 dwords whose low nibbles are channels c, c+2, .., c+14 and high nibbles c+1, .., c+15
// (5 operations per 16 codes instead of 8). The folded query and the P.V accumulator use the same
// order inside every 16-channel chunk ([c, c+8) even channels, [c+8, c+16) odd ones; head_dim is
// always a multiple of 16); the accumulator returns to natural order before the residual pass.
__attribute__((always_inline)) inline void load16_i4(const uint8_t* row, int c, __m256& even, __m256& odd) {
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2)));
    even = _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0xF)));
    odd = _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4));
}
// natural [c, c+16) as two vectors -> pair order, and back
__attribute__((always_inline)) inline void to_pair_order(__m256 a, __m256 b, __m256& even, __m256& odd) {
    // shuffle_ps: [a0 a2 b0 b2 | a4 a6 b4 b6]; the 64-bit permute orders it a0 a2 a4 a6 b0 b2 b4 b6
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
}
__attribute__((always_inline)) inline void from_pair_order(__m256 even, __m256 odd, __m256& a, __m256& b) {
    const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);  // [a0..a3|b0..b3], [a4..a7|b4..b7]
    a = _mm256_permute2f128_ps(lo, hi, 0x20);
    b = _mm256_permute2f128_ps(lo, hi, 0x31);
}

constexpr int64_t row_bytes(int F, int D) { return F == kF16 ? int64_t(D) * 2 : int64_t(D) * F / 8; }

constexpr int kStride = kTileKeys + 8;  // score row pitch (floats)

// s[r][t] = q[r] . k_t + kc[r] for RT rows x KT keys (8 accumulators).
template <int F, int RT, int KT>
__attribute__((always_inline)) inline void qk_block(const float* q, int D, const uint8_t* const* k, const float* kc, float* s, int t, int valid) {
    static_assert(RT * KT == 8, "8 accumulators");
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    if constexpr (F == kI4) {  // pair order (q is stored in it too)
        for (int c = 0; c < D; c += 16) {
            __m256 ke[KT], ko[KT];
            for (int j = 0; j < KT; ++j) load16_i4(k[j], c, ke[j], ko[j]);
            for (int r = 0; r < RT; ++r) {
                __m256 qe = _mm256_loadu_ps(q + size_t(r) * D + c), qo = _mm256_loadu_ps(q + size_t(r) * D + c + 8);
                __asm__("" : "+x"(qe), "+x"(qo));
                for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm256_fmadd_ps(qo, ko[j], _mm256_fmadd_ps(qe, ke[j], acc[r * KT + j]));
            }
        }
    } else {
        for (int c = 0; c < D; c += 8) {
            __m256 kv[KT];
            for (int j = 0; j < KT; ++j) kv[j] = load8<F>(k[j], c);
            for (int r = 0; r < RT; ++r) {
                __m256 qv = _mm256_loadu_ps(q + size_t(r) * D + c);
                __asm__("" : "+x"(qv));  // keep q in a register (see decode_attention_avx2.cpp)
                for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm256_fmadd_ps(qv, kv[j], acc[r * KT + j]);
            }
        }
    }
    store_score_rows8<RT, KT>(s, kStride, t, valid, _mm256_add_ps(reduce8(acc), row_lanes8<RT, KT>(kc)));
}

template <int F, int RT, int KT>
inline void qk_rows(const float* q, int D, const uint8_t* const* krows, const float* kc, int n, float* s) {
    for (int t = 0; t < n; t += KT) {
        const uint8_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block<F, RT, KT>(q, D, k, kc, s, t, std::min(KT, n - t));
    }
}

// ---- INT8 query (Item::q8_kivi): integer q.k -------------------------------------------------------
// Per 32 channels one ymm holds a key's 32 codes as bytes: INT4 [even channels | odd channels] (the 16
// bytes and the same shifted right by 4, masked), INT2 [phase 0 | 2 | 1 | 3] (channel 4i + phase; the 8
// bytes shifted by 0 / 4 / 2 / 6, masked): 4-5 operations, shared by the GQA rows. Per row one vpmaddubsw
// (unsigned codes x signed query codes, pairs <= 2 x 15 x 127 = 3810, summed in int16 over at most 8
// chunks: <= 30480) where the f32 path decodes (10 operations per 32 INT4 codes) and then needs 4 FMAs;
// with AVX-VNNI one vpdpbusd straight into int32 (the codes are unsigned already: no bias to correct).
// The query's codes are stored per 32 channels in the same order (q8_chunk).
template <int KF>
__attribute__((always_inline)) inline __m256i codes32(const uint8_t* row, int c, int D) {
    if constexpr (KF == kI4) {
        const __m128i x = D - c >= 32 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2))
                                      : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2));  // 16-channel tail
        const __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
        return _mm256_and_si256(y, _mm256_set1_epi8(0x0F));
    } else {
        __m128i x;
        if (D - c >= 32) {
            x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 4));
        } else {  // 16-channel tail: 4 bytes
            int32_t w;
            std::memcpy(&w, row + c / 4, 4);
            x = _mm_cvtsi32_si128(w);
        }
        const __m128i a = _mm_unpacklo_epi64(x, _mm_srli_epi16(x, 4));  // [x | x >> 4]
        const __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(a), _mm_srli_epi16(a, 2), 1);
        return _mm256_and_si256(y, _mm256_set1_epi8(0x03));
    }
}

// 32 folded query values (f32, natural order) times inv, rounded to nearest even, as bytes in codes32's
// order: the two packs leave channels {0-3, 8-11, 16-19, 24-27} in lane 0 and {4-7, .., 28-31} in lane 1;
// two in-lane byte shuffles around one cross-lane permute sort them.
template <int KF>
__attribute__((always_inline)) inline __m256i q8_chunk(const float* f, __m256 inv) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(f), inv));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(f + 8), inv));
    const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(f + 16), inv));
    const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(f + 24), inv));
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    if constexpr (KF == kI4) {
        const __m256i e = _mm256_shuffle_epi8(p, _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                                                  0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
        const __m256i g = _mm256_permute4x64_epi64(e, _MM_SHUFFLE(3, 1, 2, 0));  // [E0 E1 | O0 O1]
        return _mm256_shuffle_epi8(g, _mm256_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15,
                                                       0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15));
    } else {
        const __m256i e = _mm256_shuffle_epi8(p, _mm256_setr_epi8(0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15,
                                                                  0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15));
        const __m256i g = _mm256_permutevar8x32_epi32(e, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        return _mm256_shuffle_epi8(g, _mm256_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15,
                                                       0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15));
    }
}

// Scores of RT rows x KT keys: s = float(dot) * qs[r] + kc[r]; q8 rows of `pitch` bytes.
template <int KF, int RT, int KT, bool VNNI>
__attribute__((always_inline)) inline void qk_block_q8(const int8_t* q8, int pitch, int D, const uint8_t* const* k,
                                                       const float* qs, const float* kc, float* s, int t, int valid) {
    static_assert(RT * KT == 8, "8 accumulators");
    __m256i acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_si256();
    for (int c = 0; c < D; c += 32) {
        __m256i kv[KT];
        for (int j = 0; j < KT; ++j) kv[j] = codes32<KF>(k[j], c, D);
        for (int r = 0; r < RT; ++r) {
            __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + size_t(r) * pitch + c));
            __asm__("" : "+x"(qv));
            for (int j = 0; j < KT; ++j)
                acc[r * KT + j] = VNNI ? cpu::dpbusd_vex(acc[r * KT + j], kv[j], qv)
                                       : _mm256_add_epi16(acc[r * KT + j], _mm256_maddubs_epi16(kv[j], qv));
        }
    }
    if constexpr (!VNNI)
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_madd_epi16(acc[i], _mm256_set1_epi16(1));
    // One FMA per score, as GCC's default contraction made of the former scalar float(dot) * qs + kc
    // (the AVX-512 kernel rounds the product first).
    store_score_rows8<RT, KT>(s, kStride, t, valid,
                              _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8_epi32(acc)), row_lanes8<RT, KT>(qs), row_lanes8<RT, KT>(kc)));
}

template <int KF, int RT, int KT, bool VNNI>
inline void qk_rows_q8(const int8_t* q8, int pitch, int D, const uint8_t* const* krows, const float* qs, const float* kc, int n,
                       float* s) {
    for (int t = 0; t < n; t += KT) {
        const uint8_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block_q8<KF, RT, KT, VNNI>(q8, pitch, D, k, qs, kc, s, t, std::min(KT, n - t));
    }
}

// acc[r][c..c+16) += sum_t P[g(c)][r][t] * v[t][c..c+16); P for channel chunk c is p + (c / group) * gstride
// (gstride = 0: one weight row for every channel).
template <int F, int RT>
inline void pv_rows(const float* p, int64_t gstride, int group, const uint8_t* const* vrows, int n, int D, float* acc) {
    for (int c = 0; c < D; c += 16) {
        const float* pg = p + (c / group) * gstride;
        __m256 a[RT][2];
        for (int r = 0; r < RT; ++r) a[r][0] = a[r][1] = _mm256_setzero_ps();
        for (int t = 0; t < n; ++t) {
            __m256 v0, v1;
            if constexpr (F == kI4) {
                load16_i4(vrows[t], c, v0, v1);  // pair order
            } else {
                v0 = load8<F>(vrows[t], c);
                v1 = load8<F>(vrows[t], c + 8);
            }
            for (int r = 0; r < RT; ++r) {
                const __m256 pb = _mm256_broadcast_ss(pg + size_t(r) * kStride + t);
                a[r][0] = _mm256_fmadd_ps(pb, v0, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(pb, v1, a[r][1]);
            }
        }
        for (int r = 0; r < RT; ++r) {
            float* ar = acc + size_t(r) * D + c;
            _mm256_storeu_ps(ar, _mm256_add_ps(_mm256_loadu_ps(ar), a[r][0]));
            _mm256_storeu_ps(ar + 8, _mm256_add_ps(_mm256_loadu_ps(ar + 8), a[r][1]));
        }
    }
}

struct State {
    std::vector<float> acc, m, l, S, P, PM, qf, kc, zero, vsc, vmn, q8s;
    std::vector<int8_t> q8;  // INT8 query: [R][pitch] codes, 32-channel chunks in codes32's order
    bool avx_vnni = false;   // the INT8 query's q.k uses AVX-VNNI (cpu::avx_vnni(), read once per item)
};

// Scores of keys K[0..n) for all rows into S + offset (row pitch kStride): s = q . k + kc[r].
template <int KF>
void scores(const Item& it, State& st, const uint8_t* const* K, int n, const float* q, const float* kc, int offset) {
    const int D = it.head_dim, R = it.rows;
    float* S = st.S.data() + offset;
    int r = 0;
    for (; r + 4 <= R; r += 4) qk_rows<KF, 4, 2>(q + size_t(r) * D, D, K, kc + r, n, S + size_t(r) * kStride);
    for (; r + 2 <= R; r += 2) qk_rows<KF, 2, 4>(q + size_t(r) * D, D, K, kc + r, n, S + size_t(r) * kStride);
    for (; r < R; ++r) qk_rows<KF, 1, 8>(q + size_t(r) * D, D, K, kc + r, n, S + size_t(r) * kStride);
}

inline int q8_pitch(int D) { return (D + 31) / 32 * 32; }

// The same with the INT8 query (st.q8 / st.q8s / st.kc from fold_q8): s = float(codes . k) * qs[r] + kc[r].
template <int KF, bool VNNI>
void scores_q8_t(const Item& it, State& st, const uint8_t* const* K, int n, int offset) {
    const int D = it.head_dim, R = it.rows, P = q8_pitch(D);
    float* S = st.S.data() + offset;
    const int8_t* q8 = st.q8.data();
    const float *qs = st.q8s.data(), *kc = st.kc.data();
    int r = 0;
    for (; r + 4 <= R; r += 4) qk_rows_q8<KF, 4, 2, VNNI>(q8 + size_t(r) * P, P, D, K, qs + r, kc + r, n, S + size_t(r) * kStride);
    for (; r + 2 <= R; r += 2) qk_rows_q8<KF, 2, 4, VNNI>(q8 + size_t(r) * P, P, D, K, qs + r, kc + r, n, S + size_t(r) * kStride);
    for (; r < R; ++r) qk_rows_q8<KF, 1, 8, VNNI>(q8 + size_t(r) * P, P, D, K, qs + r, kc + r, n, S + size_t(r) * kStride);
}
template <int KF>
void scores_q8(const Item& it, State& st, const uint8_t* const* K, int n, int offset) {
    if (st.avx_vnni) scores_q8_t<KF, true>(it, st, K, n, offset);
    else scores_q8_t<KF, false>(it, st, K, n, offset);
}

// Softmax update and P.V for one tile of n <= kTileKeys keys [t0, t0 + n) whose scores are in st.S.
// VF: how V's rows are stored (F16 for a residual tile); for INT4/INT2 st.vsc / st.vmn hold the
// per (group, key) scales and minimums, lanes past n zero.
template <int VF>
void softmax_pv(const Item& it, State& st, int64_t t0, int n, const uint8_t* const* V) {
    const int D = it.head_dim, R = it.rows;
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    float* S = st.S.data();
    const int G = VF == kF16 ? 1 : D / it.value_group;
    const int group = VF == kF16 ? D : it.value_group;
    const int64_t gstride = VF == kF16 ? 0 : int64_t(R) * kStride;
    float* P = st.P.data();
    const int nv = (n + 7) & ~7;
    int r = 0;

    bool any = false;
    for (r = 0; r < R; ++r) {
        float* s = S + size_t(r) * kStride;
        const int64_t lo = std::max(it.row_lo[r], t0) - t0, hi = std::min(it.row_hi[r] + 1, t0 + n) - t0;
        float* pm = st.PM.data() + size_t(r) * G;
        if (VF != kF16) std::fill(pm, pm + G, 0.0f);
        if (lo >= hi) {
            for (int g = 0; g < G; ++g)
                for (int j = 0; j < nv; j += 8) _mm256_storeu_ps(P + g * gstride + size_t(r) * kStride + j, _mm256_setzero_ps());
            continue;
        }
        any = true;
        const float tile_max = mask_row(s, nv, t0, lo, hi, it.softcap, it.row_slope ? &it.row_slope[r] : nullptr, it.row_hi[r]);
        float* ar = st.acc.data() + size_t(r) * D;
        raise_row_max(tile_max, st.m[size_t(r)], st.l[size_t(r)], ar, D);
        const __m256 vm = _mm256_set1_ps(st.m[size_t(r)]);
        __m256 vsum = _mm256_setzero_ps();
        __m256 vpm[8];
        for (int g = 0; g < G; ++g) vpm[g] = _mm256_setzero_ps();
        for (int j = 0; j < nv; j += 8) {
            const __m256 x = _mm256_loadu_ps(s + j);
            const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(NEG_INF), _CMP_NEQ_OQ);
            const __m256 p = _mm256_and_ps(exp_ps(_mm256_sub_ps(x, vm)), keep);
            vsum = _mm256_add_ps(vsum, p);
            if constexpr (VF != kF16) {
                for (int g = 0; g < G; ++g) {
                    _mm256_storeu_ps(P + g * gstride + size_t(r) * kStride + j,
                                     _mm256_mul_ps(p, _mm256_loadu_ps(&st.vsc[size_t(g) * kStride + j])));
                    vpm[g] = _mm256_fmadd_ps(p, _mm256_loadu_ps(&st.vmn[size_t(g) * kStride + j]), vpm[g]);
                }
            } else {
                _mm256_storeu_ps(P + size_t(r) * kStride + j, p);
            }
        }
        st.l[size_t(r)] += hsum(vsum);
        if constexpr (VF != kF16)
            for (int g = 0; g < G; ++g) pm[g] = hsum(vpm[g]);
    }
    if (!any) return;

    for (r = 0; r + 4 <= R; r += 4)
        pv_rows<VF, 4>(P + size_t(r) * kStride, gstride, group, V, n, D, st.acc.data() + size_t(r) * D);
    for (; r + 2 <= R; r += 2)
        pv_rows<VF, 2>(P + size_t(r) * kStride, gstride, group, V, n, D, st.acc.data() + size_t(r) * D);
    for (; r < R; ++r) pv_rows<VF, 1>(P + size_t(r) * kStride, gstride, group, V, n, D, st.acc.data() + size_t(r) * D);
    if constexpr (VF != kF16) {
        for (r = 0; r < R; ++r) {
            float* ar = st.acc.data() + size_t(r) * D;
            const float* pm = st.PM.data() + size_t(r) * G;
            for (int g = 0; g < G; ++g) {
                const __m256 b = _mm256_set1_ps(pm[g]);
                for (int d = g * group; d < (g + 1) * group; d += 8)
                    _mm256_storeu_ps(ar + d, _mm256_add_ps(_mm256_loadu_ps(ar + d), b));
            }
        }
    }
}

// Folds q with block j's K channel scales into st.qf, and sum_d q_d min_d into st.kc.
// INT4 keys: st.qf in pair order (load16_i4).
template <int KF>
inline void fold_q(const Item& it, State& st, const uint8_t* tile) {
    const int D = it.head_dim, R = it.rows;
    const uint16_t* aux = reinterpret_cast<const uint16_t*>(tile + it.k_aux_off);
    float* qf = st.qf.data();
    for (int r = 0; r < R; ++r) {
        const float* qr = it.q + size_t(r) * D;
        float* qo = qf + size_t(r) * D;
        __m256 c = _mm256_setzero_ps();
        for (int d = 0; d < D; d += 8) {
            const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(aux + d)));
            const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(aux + D + d)));
            const __m256 qv = _mm256_loadu_ps(qr + d);
            _mm256_storeu_ps(qo + d, _mm256_mul_ps(qv, sc));
            c = _mm256_fmadd_ps(qv, mn, c);
        }
        if constexpr (KF == kI4)
            for (int d = 0; d < D; d += 16) {
                __m256 e, o;
                to_pair_order(_mm256_loadu_ps(qo + d), _mm256_loadu_ps(qo + d + 8), e, o);
                _mm256_storeu_ps(qo + d, e);
                _mm256_storeu_ps(qo + d + 8, o);
            }
        st.kc[size_t(r)] = hsum(c);
    }
}

// INT8 query (Item::q8_kivi): as fold_q, then each folded row is rounded by the INT8 query rule
// (quantize_query_row: the same products, maximum, reciprocal and round-to-nearest-even conversion)
// into st.q8 (q8_chunk order), scale in st.q8s.
template <int KF>
inline void fold_q8(const Item& it, State& st, const uint8_t* tile) {
    const int D = it.head_dim, R = it.rows, P = q8_pitch(D);
    const uint16_t* aux = reinterpret_cast<const uint16_t*>(tile + it.k_aux_off);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    alignas(32) float f[256], scf[256], mnf[256];
    for (int d = D; d < P; ++d) f[d] = 0.0f;  // head_dim 80: the last chunk's second half
    for (int d = 0; d < D; d += 8) {  // the block's scales and minimums, converted once for all rows
        _mm256_store_ps(scf + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(aux + d))));
        _mm256_store_ps(mnf + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(aux + D + d))));
    }
    for (int r = 0; r < R; ++r) {
        const float* qr = it.q + size_t(r) * D;
        __m256 c = _mm256_setzero_ps(), mx = _mm256_setzero_ps();
        for (int d = 0; d < D; d += 8) {
            const __m256 sc = _mm256_load_ps(scf + d), mn = _mm256_load_ps(mnf + d);
            const __m256 qv = _mm256_loadu_ps(qr + d);
            const __m256 x = _mm256_mul_ps(qv, sc);
            _mm256_store_ps(f + d, x);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, x));
            c = _mm256_fmadd_ps(qv, mn, c);
        }
        st.kc[size_t(r)] = hsum(c);
        const float amax = hmax(mx), inv = 127.0f / amax;
        int8_t* dst = st.q8.data() + size_t(r) * P;
        if (!(inv <= std::numeric_limits<float>::max())) {
            std::memset(dst, 0, size_t(P));
            st.q8s[size_t(r)] = 0.0f;
            continue;
        }
        const __m256 vi = _mm256_set1_ps(inv);
        for (int d = 0; d < P; d += 32) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d), q8_chunk<KF>(f + d, vi));
        st.q8s[size_t(r)] = amax / 127.0f;
    }
}

// A tile of quantized (full) blocks: keys [t0, t1), at most kTileKeys, may straddle blocks. Scores run
// per block segment (each with its own folded q); softmax and P.V run once over the tile.
template <int KF, int VF>
void quant_tile(const Item& it, State& st, int64_t t0, int64_t t1) {
    const int D = it.head_dim, bs = it.block_size;
    const int n = int(t1 - t0);
    const int G = VF == kF16 ? 1 : D / it.value_group;
    const uint8_t* K[kTileKeys];
    const uint8_t* V[kTileKeys];
    for (int64_t s0 = t0; s0 < t1;) {
        const int64_t j = s0 / bs;
        const int64_t s1 = std::min(t1, (j + 1) * bs);
        const uint8_t* tile = it.layer_base + int64_t(it.blocks[j]) * it.block_stride + it.head_off;
        const int row0 = int(s0 - j * bs), cnt = int(s1 - s0), off = int(s0 - t0);
        if (row0 == 0 || s0 == it.key_begin) {
            // Blocks are scattered, so the hardware prefetcher cannot run ahead across them: pull the
            // next block's whole head tile (codes and scale/min sections) into L2 while this one runs.
            const int64_t jn = j + 1;
            if (jn * bs < it.key_end) {
                const uint8_t* nt = it.layer_base + int64_t(it.blocks[jn]) * it.block_stride + it.head_off;
                const int64_t tile_bytes = it.v_aux_off + (VF != kF16 ? int64_t(bs) * G * 4 : 0);
                for (int64_t b = 0; b < tile_bytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(nt + b), _MM_HINT_T1);
            }
        }
        for (int i = 0; i < cnt; ++i) {
            K[off + i] = tile + it.k_data_off + (row0 + i) * row_bytes(KF, D);
            V[off + i] = tile + it.v_data_off + (row0 + i) * row_bytes(VF, D);
        }
        if constexpr (VF != kF16) {
            // the segment's [t][g] f16 scales and minimums are contiguous: convert 8 at a time, then
            // transpose to [g][key] for the softmax loop
            const uint16_t* aux = reinterpret_cast<const uint16_t*>(tile + it.v_aux_off);
            alignas(32) float cs[kTileKeys * 8 + 8], cm[kTileKeys * 8 + 8];
            const uint16_t* sp = aux + size_t(row0) * G;
            const uint16_t* mp = aux + size_t(bs) * G + size_t(row0) * G;
            const int m = cnt * G;
            int k = 0;
            for (; k + 8 <= m; k += 8) {
                _mm256_store_ps(cs + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + k))));
                _mm256_store_ps(cm + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mp + k))));
            }
            for (; k < m; ++k) {
                cs[k] = _cvtsh_ss(sp[k]);
                cm[k] = _cvtsh_ss(mp[k]);
            }
            for (int g = 0; g < G; ++g) {
                float* ds = &st.vsc[size_t(g) * kStride + off];
                float* dm = &st.vmn[size_t(g) * kStride + off];
                for (int i = 0; i < cnt; ++i) {
                    ds[i] = cs[i * G + g];
                    dm[i] = cm[i * G + g];
                }
            }
        }
        if constexpr (KF != kF16) {
            if (it.q8_kivi) {
                fold_q8<KF>(it, st, tile);
                scores_q8<KF>(it, st, K + off, cnt, off);
            } else {
                fold_q<KF>(it, st, tile);
                scores<KF>(it, st, K + off, cnt, st.qf.data(), st.kc.data(), off);
            }
        } else {
            scores<KF>(it, st, K + off, cnt, it.q, st.zero.data(), off);
        }
        s0 = s1;
    }
    if constexpr (VF != kF16)
        for (int g = 0; g < G; ++g)
            for (int i = n; i < ((n + 7) & ~7); ++i) st.vsc[size_t(g) * kStride + i] = st.vmn[size_t(g) * kStride + i] = 0.0f;
    softmax_pv<VF>(it, st, t0, n, V);
}

// The residual (partial) block: KIVI sides read f16 rows from the residual tile, f16 sides from the block.
template <int KF, int VF>
void residual_range(const Item& it, State& st, int64_t j, int64_t b0, int64_t b1) {
    const int D = it.head_dim, bs = it.block_size;
    const uint8_t* tile = it.layer_base + int64_t(it.blocks[j]) * it.block_stride + it.head_off;
    const uint8_t* kb = KF == kF16 ? tile + it.k_data_off : it.res + it.res_k_off;
    const uint8_t* vb = VF == kF16 ? tile + it.v_data_off : it.res + it.res_v_off;
    const uint8_t* K[kTileKeys];
    const uint8_t* V[kTileKeys];
    for (int64_t t0 = b0; t0 < b1; t0 += kTileKeys) {
        const int n = int(std::min<int64_t>(kTileKeys, b1 - t0));
        const int row0 = int(t0 - j * bs);
        for (int i = 0; i < n; ++i) {
            K[i] = kb + int64_t(row0 + i) * D * 2;
            V[i] = vb + int64_t(row0 + i) * D * 2;
        }
        scores<kF16>(it, st, K, n, it.q, st.zero.data(), 0);
        softmax_pv<kF16>(it, st, t0, n, V);
    }
}

template <int KF, int VF>
void run_item_t(const Item& it) {
    const int D = it.head_dim, R = it.rows, bs = it.block_size;
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    State& st = per_thread<State>();  // per thread (core/per_thread.hpp)
    st.avx_vnni = cpu::avx_vnni();
    const int G = D / (it.value_group > 0 ? it.value_group : D);
    st.acc.assign(size_t(R) * D, 0.0f);
    st.m.assign(size_t(R), NEG_INF);
    st.l.assign(size_t(R), 0.0f);
    st.S.assign(size_t(R) * kStride, 0.0f);
    st.P.assign(size_t(std::max(G, 1)) * R * kStride, 0.0f);
    st.PM.assign(size_t(std::max(G, 1)) * R, 0.0f);
    st.qf.resize(size_t(R) * D);
    st.q8s.resize(size_t(R));
    st.q8.resize(size_t(R) * q8_pitch(D));
    st.kc.assign(size_t(R), 0.0f);
    st.zero.assign(size_t(R), 0.0f);
    st.vsc.assign(size_t(std::max(G, 1)) * kStride, 0.0f);
    st.vmn.assign(size_t(std::max(G, 1)) * kStride, 0.0f);
    const int64_t res_block = it.length / bs;  // == number of full blocks; a block >= it is partial
    const int64_t q_end = std::min(it.key_end, res_block * bs);  // keys in quantized blocks
    for (int64_t t = it.key_begin; t < q_end; t += kTileKeys) quant_tile<KF, VF>(it, st, t, std::min(q_end, t + kTileKeys));
    if constexpr (VF == kI4)  // the accumulator back to natural channel order
        for (int r = 0; r < R; ++r)
            for (int d = 0; d < D; d += 16) {
                float* ar = st.acc.data() + size_t(r) * D + d;
                __m256 a, b;
                from_pair_order(_mm256_loadu_ps(ar), _mm256_loadu_ps(ar + 8), a, b);
                _mm256_storeu_ps(ar, a);
                _mm256_storeu_ps(ar + 8, b);
            }
    if (it.key_end > q_end) residual_range<KF, VF>(it, st, res_block, std::max(it.key_begin, q_end), it.key_end);
    for (int r = 0; r < R; ++r) {
        float* o = it.o + size_t(r) * D;
        const float* ar = st.acc.data() + size_t(r) * D;
        if (st.l[size_t(r)] > 0.0f) {
            const __m256 vl = _mm256_set1_ps(st.l[size_t(r)]);
            for (int d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_div_ps(_mm256_loadu_ps(ar + d), vl));
            it.lse[r] = st.m[size_t(r)] + std::log(st.l[size_t(r)]);
        } else {
            std::memset(o, 0, size_t(D) * sizeof(float));
            it.lse[r] = NEG_INF;
        }
    }
}

int row_fmt(int32_t f) { return f == LLMN_KV_INT4 ? kI4 : (f == LLMN_KV_INT2 ? kI2 : kF16); }

template <int KF>
void dispatch_v(const Item& it) {
    switch (row_fmt(it.v_format)) {
        case kI4: run_item_t<KF, kI4>(it); break;
        case kI2: run_item_t<KF, kI2>(it); break;
        default: run_item_t<KF, kF16>(it); break;
    }
}

}  // namespace

void run_item_kivi_avx2(const Item& it) {
    switch (row_fmt(it.k_format)) {
        case kI4: dispatch_v<kI4>(it); break;
        case kI2: dispatch_v<kI2>(it); break;
        default: dispatch_v<kF16>(it); break;
    }
}

}  // namespace llmn::attn_cpu
