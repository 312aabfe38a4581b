// AVX-512 (F) work-item kernel for KIVI caches: decode_attention_kivi_avx2.cpp's design (tiles of
// kTileKeys keys that may straddle blocks, q folded with each block's K channel scales, V's per-group
// scales folded into the softmax weights and its minimums added once per tile, f16 residual rows for
// the partial block, next-block prefetch) at twice the vector width. Why: the AVX2 KIVI kernel is
// compute-bound on the 2-core dev box (0.5-0.7x the f16 kernel, docs/kv-quantization.md), and per
// 16 codes zmm needs 5 decode operations where ymm needs 8 (two groups of broadcast/shift/mask/
// convert), plus half the FMAs.
//  - decode: INT4 32 codes at a time in "pair order" (load32_i4: one zero-extending load of 16 bytes,
//    mask -> even channels, shift -> odd channels, two converts: 5 operations per 32 codes), with the
//    folded q and the P.V accumulator kept in the same order inside each 32-channel chunk (the
//    accumulator returns to natural order before the residual pass); INT2 16 codes = one 4-byte
//    broadcast, per-lane shift (2 x lane), mask, convert; head_dim 80's 16-channel INT4 tail: one vpermd
//    spreads the 8 bytes' two dwords over lanes 0-7 / 8-15, then shift / mask / convert. AVX512F only.
//  - q.k: 4/2/1 rows x 4/8/16 keys = 16 zmm accumulators reduced by one transpose-and-add tree
//    (as decode_attention_avx512.cpp); p.v: 32-channel chunks (inside one value group: groups are
//    >= 32 channels) unrolled over keys to 16 accumulators; head_dim 80/96 end with a 16-channel chunk.
//  - head_dim 128 and 64 are template instances (compile-time loop bounds in scores / softmax_pv), as in
//    the f16 kernel: INT2 0.91-1.01x -> 1.07-1.28x the f16 kernel's speed, INT4 0.81-0.95x -> 0.86-1.14x
//    (BM_KvQuantFormats 1 x 4k / 1 x 32k, 2 threads, three alternating rounds, 2026-12-07).
// Arithmetic per element is the AVX2 kernel's (fold, code * folded q, p * s_g * code + p * m_g), in
// another summation order: results agree within f32 rounding, and are bitwise repeatable run to run.
// Only this file's functions are compiled with AVX-512 flags, and all of them have internal linkage
// (no inline function shared with the AVX2 files, which would let the linker pick a zmm copy).
#include "decode_attention_avx512_math.hpp"
#include "../../core/per_thread.hpp"
#include "decode_attention_cpu.hpp"

#include "../../cpu/cpu_runtime.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace llmn::attn_cpu {

namespace {

using namespace avx512_math;

enum RowFmt { kF16 = 0, kI4 = 4, kI2 = 2 };

constexpr int64_t row_bytes(int F, int D) { return F == kF16 ? int64_t(D) * 2 : int64_t(D) * F / 8; }

constexpr int kStride = kTileKeys + 16;  // score row pitch (floats)

// 16 channels [c, c + 16) of a row as f32 codes (KIVI) or values (f16).
template <int F>
inline __m512 load16(const uint8_t* row, int c) {
    if constexpr (F == kF16) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + size_t(c) * 2)));
    } else if constexpr (F == kI4) {
        const __m512i w = _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2)));
        const __m512i x = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), w);
        const __m512i sh = _mm512_srlv_epi32(x, _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28));
        return _mm512_cvtepi32_ps(_mm512_and_si512(sh, _mm512_set1_epi32(0xF)));
    } else {
        uint32_t w;
        std::memcpy(&w, row + c / 4, 4);
        const __m512i sh = _mm512_srlv_epi32(_mm512_set1_epi32(int32_t(w)),
                                             _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30));
        return _mm512_cvtepi32_ps(_mm512_and_si512(sh, _mm512_set1_epi32(0x3)));
    }
}

// INT4 rows are read 32 channels (16 bytes) at a time in "pair order": one zero-extending byte load
// gives 16 dwords, whose low nibbles are channels c, c+2, .., c+30 and high nibbles c+1, .., c+31
// (5 operations per 32 codes instead of 10). The query (folded with the scales) and the P.V
// accumulator use the same order inside every full 32-channel chunk: lanes [c, c+16) hold the even
// channels, [c+16, c+32) the odd ones; a 16-channel tail (head_dim 80) stays in natural order.
inline void load32_i4(const uint8_t* row, int c, __m512& even, __m512& odd) {
    const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2)));
    even = _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(0xF)));
    odd = _mm512_cvtepi32_ps(_mm512_srli_epi32(x, 4));
}
// natural [c, c+32) as two vectors -> pair order, and back
inline void to_pair_order(__m512 a, __m512 b, __m512& even, __m512& odd) {
    even = _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
    odd = _mm512_permutex2var_ps(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
}
inline void from_pair_order(__m512 even, __m512 odd, __m512& a, __m512& b) {
    a = _mm512_permutex2var_ps(even, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), odd);
    b = _mm512_permutex2var_ps(even, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), odd);
}

inline __m512 cvt_h16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

// s[r][t + j] = q[r] . k_j + kc[r] for RT rows x KT keys (16 accumulators), j < valid.
template <int F, int RT, int KT>
inline void qk_block(const float* q, int D, const uint8_t* const* k, const float* kc, float* s, int t, int valid) {
    static_assert(RT * KT == 16, "16 accumulators");
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    int c = 0;
    if constexpr (F == kI4) {  // full 32-channel chunks in pair order (q is stored in it too)
        for (; c + 32 <= D; c += 32) {
            __m512 ke[KT], ko[KT];
            for (int j = 0; j < KT; ++j) load32_i4(k[j], c, ke[j], ko[j]);
            for (int r = 0; r < RT; ++r) {
                __m512 qe = _mm512_loadu_ps(q + size_t(r) * D + c), qo = _mm512_loadu_ps(q + size_t(r) * D + c + 16);
                __asm__("" : "+v"(qe), "+v"(qo));
                for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm512_fmadd_ps(qo, ko[j], _mm512_fmadd_ps(qe, ke[j], acc[r * KT + j]));
            }
        }
    }
    for (; c < D; c += 16) {
        __m512 kv[KT];
        for (int j = 0; j < KT; ++j) kv[j] = load16<F>(k[j], c);
        for (int r = 0; r < RT; ++r) {
            __m512 qv = _mm512_loadu_ps(q + size_t(r) * D + c);
            __asm__("" : "+v"(qv));  // one load per row, not one per FMA
            for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm512_fmadd_ps(qv, kv[j], acc[r * KT + j]);
        }
    }
    // As the f16 kernel, plus the row constants kc[r] in the same lanes (same values as the stack-array
    // copy it replaced).
    store_score_rows<RT, KT>(s, kStride, t, valid, _mm512_add_ps(score_lanes(acc), row_lanes<RT, KT>(kc)));
}

template <int F, int RT, int KT>
inline void qk_rows(const float* q, int D, const uint8_t* const* krows, const float* kc, int n, float* s) {
    for (int t = 0; t < n; t += KT) {
        const uint8_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block<F, RT, KT>(q, D, k, kc, s, t, std::min(KT, n - t));
    }
}

// acc[r][c, c + 16 CW) += sum_t P[g(c)][r][t] * v[t][...] for RT rows, U-way unroll over keys. P for
// the chunk's group is pg (the chunk lies in one value group).
// CW 16-channel vectors of channels [c, c + 16 CW) of a V row: INT4 pairs (CW == 2) in pair order.
template <int F, int CW>
inline void load_v(const uint8_t* row, int c, __m512* v) {
    if constexpr (F == kI4 && CW == 2) {
        load32_i4(row, c, v[0], v[1]);
    } else {
        for (int w = 0; w < CW; ++w) v[w] = load16<F>(row, c + 16 * w);
    }
}

template <int F, int RT, int CW>
inline void pv_chunk(const float* pg, const uint8_t* const* vrows, int n, int D, int c, float* acc) {
    constexpr int U = 16 / (RT * CW);
    __m512 a[U][RT][CW];
    for (int u = 0; u < U; ++u)
        for (int r = 0; r < RT; ++r)
            for (int w = 0; w < CW; ++w) a[u][r][w] = _mm512_setzero_ps();
    int t = 0;
    for (; t + U <= n; t += U)
        for (int u = 0; u < U; ++u) {
            __m512 v[CW];
            load_v<F, CW>(vrows[t + u], c, v);
            for (int r = 0; r < RT; ++r) {
                const __m512 pb = _mm512_set1_ps(pg[size_t(r) * kStride + t + u]);
                for (int w = 0; w < CW; ++w) a[u][r][w] = _mm512_fmadd_ps(pb, v[w], a[u][r][w]);
            }
        }
    for (; t < n; ++t) {
        __m512 v[CW];
        load_v<F, CW>(vrows[t], c, v);
        for (int r = 0; r < RT; ++r) {
            const __m512 pb = _mm512_set1_ps(pg[size_t(r) * kStride + t]);
            for (int w = 0; w < CW; ++w) a[0][r][w] = _mm512_fmadd_ps(pb, v[w], a[0][r][w]);
        }
    }
    for (int r = 0; r < RT; ++r)
        for (int w = 0; w < CW; ++w) {
            __m512 s = a[0][r][w];
            for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, a[u][r][w]);
            float* ar = acc + size_t(r) * D + c + 16 * w;
            _mm512_storeu_ps(ar, _mm512_add_ps(_mm512_loadu_ps(ar), s));
        }
}

// P for channel c is p + (c / group) * gstride (gstride = 0: one weight row for every channel).
template <int F, int RT>
inline void pv_rows(const float* p, int64_t gstride, int group, const uint8_t* const* vrows, int n, int D, float* acc) {
    int c = 0;
    for (; c + 32 <= D; c += 32) pv_chunk<F, RT, 2>(p + (c / group) * gstride, vrows, n, D, c, acc);
    if (c < D) pv_chunk<F, RT, 1>(p + (c / group) * gstride, vrows, n, D, c, acc);  // head_dim 80 / 96
}

struct State {
    std::vector<float> acc, m, l, S, P, PM, qf, kc, zero, vsc, vmn;
    std::vector<float> q8s;   // INT8 query: per row scale of the folded query
    std::vector<int8_t> q8;   // [R][row] codes in the byte order of q8_layout
    std::vector<int16_t> q8_order;  // channel of each of a row's code bytes' f32 values (q8_order)
    std::vector<uint16_t> q8_idx;   // the same, padding -> 0 (vpermt2w indices)
    std::vector<float> q8_qp;       // [R][row] queries in that order
    bool vnni = false;
};

// ---- INT8 query (Item::q8_kivi) --------------------------------------------------------------------
// A key row of D codes is read in 64-byte chunks; byte i of a chunk holds channels per * i + k in bits
// [bits k, bits (k + 1)) (kv_kivi.hpp), per = 8 / bits. "Phase" k of a chunk is then one mask (and
// shift) away from 64 unsigned codes, and the folded query's codes are stored per (chunk, phase) in the
// same byte order, so one vpdpbusd (4 channels per lane) or vpmaddubsw + vpmaddwd takes a phase against
// a row, where the f32 path decodes 16 codes per 5 operations and then needs one FMA per 16 channels.
// Rows of at most 32 bytes (INT4 at head_dim 64, INT2 at <= 128) would leave half of every vector
// empty; they are "doubled" instead: one zmm = [row | row >> 4], so a phase covers two phases of the
// plain layout (INT4: even channels below, odd above; INT2: k below, k + 2 above), and the query's
// codes are stored in that order (half the vpdpbusd of the plain layout).
// INT2 rows of at most 16 bytes (head_dim 64) are "quadrupled" the same way: [row | >> 2 | >> 4 | >> 6] is one
// phase covering all four (one 16-byte broadcast and a per-word variable shift); with the doubled layout
// INT2 at head_dim 64 ran 13 % slower with the INT8 query than without it (BM_Int8QueryHeadDim).
struct Q8Layout {
    int bits, per, rb, chunks, row;  // row: bytes of one row's codes in st.q8
    bool dbl, quad;
};
inline constexpr Q8Layout q8_layout(int KF, int D) {
    const int bits = KF == kI4 ? 4 : 2, per = 8 / bits, rb = D * bits / 8, chunks = (rb + 63) / 64;
    const bool quad = per == 4 && rb <= 16, dbl = !quad && rb <= 32;
    return Q8Layout{bits, per, rb, chunks, quad ? 64 : dbl ? per / 2 * 64 : chunks * per * 64, dbl, quad};
}

// vpdpbusd through inline asm (as gemm_int4_avx512.cpp): this file has no -mavx512vnni, and the caller
// checks CPUID (cpu::avx512_vnni()) before choosing the VNNI instance.
inline __attribute__((always_inline)) __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
    return acc;
}

// Channel of every byte of a row's query codes in st.q8 (-1: padding, code 0), and the order F the f32
// values are computed in so that vpackssdw + vpacksswb of 4 consecutive vectors produce those bytes
// directly: packing leaves, in 128-bit lane l, 4 elements of each of the 4 sources, so byte
// 64 g + 16 l + 4 m + e comes from element 4 l + e of vector 4 g + m. Built once per work item.
inline void q8_order(int KF, int D, std::vector<int16_t>& F) {
    const Q8Layout L = q8_layout(KF, D);
    std::vector<int16_t> T(size_t(L.row), int16_t(-1));
    if (L.quad) {
        for (int k = 0; k < 4; ++k)
            for (int i = 0; i < L.rb; ++i) T[size_t(16 * k + i)] = int16_t(4 * i + k);
    } else if (L.dbl) {
        for (int ph = 0; ph < L.per / 2; ++ph)
            for (int i = 0; i < L.rb; ++i) {
                T[size_t(64 * ph + i)] = int16_t(L.per * i + ph);
                T[size_t(64 * ph + 32 + i)] = int16_t(L.per * i + ph + L.per / 2);
            }
    } else {
        for (int ch = 0; ch < L.chunks; ++ch)
            for (int k = 0; k < L.per; ++k)
                for (int i = 0; i < 64 && 64 * ch + i < L.rb; ++i) T[size_t(ch * L.per * 64 + k * 64 + i)] = int16_t(L.per * (64 * ch + i) + k);
    }
    F.assign(size_t(L.row), int16_t(-1));
    for (int g = 0; g < L.row / 64; ++g)
        for (int l = 0; l < 4; ++l)
            for (int m = 0; m < 4; ++m)
                for (int e = 0; e < 4; ++e) F[size_t(16 * (4 * g + m) + 4 * l + e)] = T[size_t(64 * g + 16 * l + 4 * m + e)];
}

// Per work item: the order, the queries in it (0 at padding) and the vpermt2w indices that gather a
// block's f16 channel scales into it (padding reads channel 0: finite, times a zero query).
template <int KF>
void q8_prepare(const Item& it, State& st) {
    const int D = it.head_dim, R = it.rows;
    const Q8Layout L = q8_layout(KF, D);
    q8_order(KF, D, st.q8_order);
    st.q8_qp.resize(size_t(R) * L.row);
    for (int r = 0; r < R; ++r)
        for (int f = 0; f < L.row; ++f) {
            const int c = st.q8_order[size_t(f)];
            st.q8_qp[size_t(r) * L.row + f] = c < 0 ? 0.0f : it.q[size_t(r) * D + c];
        }
    st.q8_idx.resize(size_t(L.row));
    for (int f = 0; f < L.row; ++f) st.q8_idx[size_t(f)] = uint16_t(std::max<int16_t>(0, st.q8_order[size_t(f)]));
}

// Folds q with a block's K channel scales (qf_d = q_d * scale_d), rounds qf per row by the INT8 query
// rule (quantize_query_row: the same products, maximum, reciprocal and round-to-nearest-even
// conversion, in another order) straight into the byte order of st.q8, and sum_d q_d min_d into st.kc
// (as fold_q). Per block: the scales gathered into the q8 order once (vpermt2w over pairs of 32-half
// vectors, blended); per row: multiply, maximum, scale, convert, two packs per 64 codes.
template <int KF>
void fold_q8(const Item& it, State& st, const uint8_t* tile) {
    const int D = it.head_dim, R = it.rows;
    const Q8Layout L = q8_layout(KF, D);
    const int NV = L.row / 16;  // f32 vectors per row (<= 16)
    const uint16_t* aux = reinterpret_cast<const uint16_t*>(tile + it.k_aux_off);
    __m512i sh[8];  // the D scales as f16, 32 per vector, zero past D
    const int ns = (D + 31) / 32;
    for (int v = 0; v < ns; ++v) {
        const int cnt = std::min(32, D - 32 * v);
        sh[v] = _mm512_maskz_loadu_epi16(cnt == 32 ? ~__mmask32(0) : (__mmask32(1) << cnt) - 1, aux + 32 * v);
    }
    alignas(64) float sp[256], mn[256];
    for (int o = 0; o < L.row / 32; ++o) {
        const __m512i idx = _mm512_loadu_si512(st.q8_idx.data() + 32 * o);
        __m512i x = _mm512_permutex2var_epi16(sh[0], idx, ns > 1 ? sh[1] : sh[0]);
        for (int v = 2; v < ns; v += 2) {  // indices >= 64 v: from sources v, v + 1
            const __mmask32 take = _mm512_cmpge_epu16_mask(idx, _mm512_set1_epi16(int16_t(32 * v)));
            x = _mm512_mask_mov_epi16(x, take, _mm512_permutex2var_epi16(sh[v], idx, v + 1 < ns ? sh[v + 1] : sh[v]));
        }
        _mm512_store_ps(sp + 32 * o, _mm512_cvtph_ps(_mm512_castsi512_si256(x)));
        _mm512_store_ps(sp + 32 * o + 16, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(x, 1)));
    }
    for (int d = 0; d < D; d += 16) _mm512_store_ps(mn + d, cvt_h16(aux + D + d));
    for (int r = 0; r < R; ++r) {
        const float* qr = it.q + size_t(r) * D;
        __m512 c = _mm512_setzero_ps();
        for (int d = 0; d < D; d += 16) c = _mm512_fmadd_ps(_mm512_loadu_ps(qr + d), _mm512_load_ps(mn + d), c);
        st.kc[size_t(r)] = _mm512_reduce_add_ps(c);
        const float* qp = st.q8_qp.data() + size_t(r) * L.row;
        __m512 f[16], mx = _mm512_setzero_ps();
        for (int v = 0; v < NV; ++v) {
            f[v] = _mm512_mul_ps(_mm512_loadu_ps(qp + 16 * v), _mm512_load_ps(sp + 16 * v));
            mx = _mm512_max_ps(mx, _mm512_abs_ps(f[v]));
        }
        const float amax = _mm512_reduce_max_ps(mx);
        const float inv = 127.0f / amax;
        int8_t* dst = st.q8.data() + size_t(r) * L.row;
        if (!(inv <= std::numeric_limits<float>::max())) {
            std::memset(dst, 0, size_t(L.row));
            st.q8s[size_t(r)] = 0.0f;
            continue;
        }
        const __m512 vi = _mm512_set1_ps(inv);
        for (int g = 0; g < NV / 4; ++g) {  // cvtps_epi32: round to nearest even (default MXCSR); |codes| <= 127
            const __m512i a = _mm512_cvtps_epi32(_mm512_mul_ps(f[4 * g], vi)), b = _mm512_cvtps_epi32(_mm512_mul_ps(f[4 * g + 1], vi));
            const __m512i c2 = _mm512_cvtps_epi32(_mm512_mul_ps(f[4 * g + 2], vi)), d2 = _mm512_cvtps_epi32(_mm512_mul_ps(f[4 * g + 3], vi));
            _mm512_storeu_si512(dst + 64 * g, _mm512_packs_epi16(_mm512_packs_epi32(a, b), _mm512_packs_epi32(c2, d2)));
        }
        st.q8s[size_t(r)] = amax / 127.0f;
    }
}

// Scores of RT rows x KT keys from the rounded folded query: s = float(dot) * q8s[r] + kc[r].
// VNNI: int32 accumulators, one vpdpbusd per (phase, row, key). Without: vpmaddubsw pairs into int16
// (at most 2 x 15 x 127 = 3810 per INT4 step, 4 steps at head_dim 256; INT2 762 x 4), one vpmaddwd at
// the end. DC > 0: compile-time head_dim, so the chunk / phase loops unroll and the accumulators stay
// in registers (with run-time bounds GCC kept them on the stack: slower than the f32 path).
template <int KF, int RT, int KT, bool VNNI, int DC>
inline void qk_block_q8(const int8_t* q8, const Q8Layout& Lr, const uint8_t* const* k, const float* qs, const float* kc,
                        float* s, int t, int valid) {
    static_assert(RT * KT == 16, "16 accumulators");
    constexpr int bits = KF == kI4 ? 4 : 2, per = 8 / bits;
    constexpr Q8Layout CL = q8_layout(KF, DC);
    const int rb = DC > 0 ? CL.rb : Lr.rb, chunks = DC > 0 ? CL.chunks : Lr.chunks, row = DC > 0 ? CL.row : Lr.row;
    const bool dbl = DC > 0 ? CL.dbl : Lr.dbl, quad = DC > 0 ? CL.quad : Lr.quad;
    const __m512i cm = _mm512_set1_epi8(int8_t((1 << bits) - 1));
    __m512i acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_si512();
    if (quad) {
        const __mmask16 m = rb == 16 ? __mmask16(0xFFFF) : __mmask16((1u << rb) - 1);
        const __m512i sh = _mm512_set_epi64(0x0006000600060006LL, 0x0006000600060006LL, 0x0004000400040004LL, 0x0004000400040004LL,
                                            0x0002000200020002LL, 0x0002000200020002LL, 0, 0);
        __m512i raw[KT];
        for (int j = 0; j < KT; ++j)
            raw[j] = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(m, k[j])), sh), cm);
        for (int r = 0; r < RT; ++r) {
            __m512i qv = _mm512_loadu_si512(q8 + size_t(r) * row);
            __asm__("" : "+v"(qv));
            for (int j = 0; j < KT; ++j) {
                if constexpr (VNNI) acc[r * KT + j] = dpbusd(acc[r * KT + j], raw[j], qv);
                else acc[r * KT + j] = _mm512_add_epi16(acc[r * KT + j], _mm512_maddubs_epi16(raw[j], qv));
            }
        }
    }
    if (dbl) {
        const __mmask32 m = rb == 32 ? ~__mmask32(0) : (__mmask32(1) << rb) - 1;
        __m512i raw[KT];
        for (int j = 0; j < KT; ++j) {
            const __m256i x = _mm256_maskz_loadu_epi8(m, k[j]);
            raw[j] = _mm512_inserti64x4(_mm512_castsi256_si512(x), _mm256_srli_epi16(x, 4), 1);
        }
        for (int ph = 0; ph < per / 2; ++ph)
            for (int r = 0; r < RT; ++r) {
                __m512i qv = _mm512_loadu_si512(q8 + size_t(r) * row + ph * 64);
                __asm__("" : "+v"(qv));
                for (int j = 0; j < KT; ++j) {
                    const __m512i cj = _mm512_and_si512(ph == 0 ? raw[j] : _mm512_srli_epi16(raw[j], bits * ph), cm);
                    if constexpr (VNNI) acc[r * KT + j] = dpbusd(acc[r * KT + j], cj, qv);
                    else acc[r * KT + j] = _mm512_add_epi16(acc[r * KT + j], _mm512_maddubs_epi16(cj, qv));
                }
            }
    }
    for (int ch = 0; ch < (dbl || quad ? 0 : chunks); ++ch) {
        const int bytes = std::min(64, rb - 64 * ch);
        const __mmask64 m = bytes == 64 ? ~__mmask64(0) : (__mmask64(1) << bytes) - 1;
        __m512i raw[KT];
        for (int j = 0; j < KT; ++j) raw[j] = _mm512_maskz_loadu_epi8(m, k[j] + 64 * ch);
        for (int ph = 0; ph < per; ++ph)
            for (int r = 0; r < RT; ++r) {
                __m512i qv = _mm512_loadu_si512(q8 + size_t(r) * row + (ch * per + ph) * 64);
                __asm__("" : "+v"(qv));  // one load per row and phase
                for (int j = 0; j < KT; ++j) {
                    const __m512i cj = _mm512_and_si512(ph == 0 ? raw[j] : _mm512_srli_epi16(raw[j], bits * ph), cm);
                    if constexpr (VNNI) acc[r * KT + j] = dpbusd(acc[r * KT + j], cj, qv);
                    else acc[r * KT + j] = _mm512_add_epi16(acc[r * KT + j], _mm512_maddubs_epi16(cj, qv));
                }
            }
    }
    if constexpr (!VNNI)
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_madd_epi16(acc[i], _mm512_set1_epi16(1));
    const __m512 dot = _mm512_cvtepi32_ps(score_lanes_epi32(acc));
    store_score_rows<RT, KT>(s, kStride, t, valid, _mm512_add_ps(_mm512_mul_ps(dot, row_lanes<RT, KT>(qs)), row_lanes<RT, KT>(kc)));
}

template <int KF, int RT, int KT, bool VNNI, int DC>
void qk_rows_q8(const int8_t* q8, const Q8Layout& L, const uint8_t* const* krows, const float* qs, const float* kc, int n,
                float* s) {
    for (int t = 0; t < n; t += KT) {
        const uint8_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block_q8<KF, RT, KT, VNNI, DC>(q8, L, k, qs, kc, s, t, std::min(KT, n - t));
    }
}

template <int KF, bool VNNI, int DC>
void scores_q8(const Item& it, State& st, const uint8_t* const* K, int n, int offset) {
    const int R = it.rows;
    const Q8Layout L = q8_layout(KF, it.head_dim);
    float* S = st.S.data() + offset;
    const int8_t* q8 = st.q8.data();
    int r = 0;
    for (; r + 4 <= R; r += 4)
        qk_rows_q8<KF, 4, 4, VNNI, DC>(q8 + size_t(r) * L.row, L, K, st.q8s.data() + r, st.kc.data() + r, n, S + size_t(r) * kStride);
    for (; r + 2 <= R; r += 2)
        qk_rows_q8<KF, 2, 8, VNNI, DC>(q8 + size_t(r) * L.row, L, K, st.q8s.data() + r, st.kc.data() + r, n, S + size_t(r) * kStride);
    for (; r < R; ++r)
        qk_rows_q8<KF, 1, 16, VNNI, DC>(q8 + size_t(r) * L.row, L, K, st.q8s.data() + r, st.kc.data() + r, n, S + size_t(r) * kStride);
}

// Scores of keys K[0..n) for all rows into S + offset: s = q . k + kc[r].
template <int KF, int DC>
void scores(const Item& it, State& st, const uint8_t* const* K, int n, const float* q, const float* kc, int offset) {
    const int D = DC > 0 ? DC : it.head_dim, R = it.rows;
    float* S = st.S.data() + offset;
    int r = 0;
    for (; r + 4 <= R; r += 4) qk_rows<KF, 4, 4>(q + size_t(r) * D, D, K, kc + r, n, S + size_t(r) * kStride);
    for (; r + 2 <= R; r += 2) qk_rows<KF, 2, 8>(q + size_t(r) * D, D, K, kc + r, n, S + size_t(r) * kStride);
    for (; r < R; ++r) qk_rows<KF, 1, 16>(q + size_t(r) * D, D, K, kc + r, n, S + size_t(r) * kStride);
}

// Softmax update and P.V for one tile of n <= kTileKeys keys [t0, t0 + n) whose scores are in st.S.
// VF: how V's rows are stored (F16 for a residual tile); for INT4/INT2 st.vsc / st.vmn hold the
// per (group, key) scales and minimums, lanes past n zero.
template <int VF, int DC>
void softmax_pv(const Item& it, State& st, int64_t t0, int n, const uint8_t* const* V) {
    const int D = DC > 0 ? DC : it.head_dim, R = it.rows;
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    const __m512 ninf = _mm512_set1_ps(NEG_INF);
    float* S = st.S.data();
    const int G = VF == kF16 ? 1 : D / it.value_group;
    const int group = VF == kF16 ? D : it.value_group;
    const int64_t gstride = VF == kF16 ? 0 : int64_t(R) * kStride;
    float* P = st.P.data();
    const int nv = (n + 15) & ~15;
    int r = 0;

    bool any = false;
    for (r = 0; r < R; ++r) {
        float* s = S + size_t(r) * kStride;
        const int64_t lo = std::max(it.row_lo[r], t0) - t0, hi = std::min(it.row_hi[r] + 1, t0 + n) - t0;
        float* pm = st.PM.data() + size_t(r) * G;
        if (VF != kF16) std::fill(pm, pm + G, 0.0f);
        if (lo >= hi) {
            for (int g = 0; g < G; ++g)
                for (int j = 0; j < nv; j += 16) _mm512_storeu_ps(P + g * gstride + size_t(r) * kStride + j, _mm512_setzero_ps());
            continue;
        }
        any = true;
        const float tile_max = mask_row16(s, nv, t0, lo, hi, it.softcap, it.row_slope ? &it.row_slope[r] : nullptr, it.row_hi[r]);
        float* ar = st.acc.data() + size_t(r) * D;
        float& m = st.m[size_t(r)];
        raise_row_max16(tile_max, m, st.l[size_t(r)], ar, D);
        const __m512 vm = _mm512_set1_ps(m);
        __m512 vsum = _mm512_setzero_ps();
        __m512 vpm[8];
        for (int g = 0; g < G; ++g) vpm[g] = _mm512_setzero_ps();
        for (int j = 0; j < nv; j += 16) {
            const __m512 x = _mm512_loadu_ps(s + j);
            const __mmask16 keep = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_OQ);
            const __m512 p = _mm512_maskz_mov_ps(keep, exp16(_mm512_sub_ps(x, vm)));
            vsum = _mm512_add_ps(vsum, p);
            if constexpr (VF != kF16) {
                for (int g = 0; g < G; ++g) {
                    _mm512_storeu_ps(P + g * gstride + size_t(r) * kStride + j,
                                     _mm512_mul_ps(p, _mm512_loadu_ps(&st.vsc[size_t(g) * kStride + j])));
                    vpm[g] = _mm512_fmadd_ps(p, _mm512_loadu_ps(&st.vmn[size_t(g) * kStride + j]), vpm[g]);
                }
            } else {
                _mm512_storeu_ps(P + size_t(r) * kStride + j, p);
            }
        }
        st.l[size_t(r)] += _mm512_reduce_add_ps(vsum);
        if constexpr (VF != kF16)
            for (int g = 0; g < G; ++g) pm[g] = _mm512_reduce_add_ps(vpm[g]);
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
                const __m512 b = _mm512_set1_ps(pm[g]);
                for (int d = g * group; d < (g + 1) * group; d += 16)
                    _mm512_storeu_ps(ar + d, _mm512_add_ps(_mm512_loadu_ps(ar + d), b));
            }
        }
    }
}

// Folds q with a block's K channel scales into st.qf, and sum_d q_d min_d into st.kc.
// INT4 keys: st.qf in pair order (load32_i4).
template <int KF>
inline void fold_q(const Item& it, State& st, const uint8_t* tile) {
    const int D = it.head_dim, R = it.rows;
    const uint16_t* aux = reinterpret_cast<const uint16_t*>(tile + it.k_aux_off);
    float* qf = st.qf.data();
    for (int r = 0; r < R; ++r) {
        const float* qr = it.q + size_t(r) * D;
        float* qo = qf + size_t(r) * D;
        __m512 c = _mm512_setzero_ps();
        int d = 0;
        if constexpr (KF == kI4) {
            for (; d + 32 <= D; d += 32) {
                const __m512 q0 = _mm512_loadu_ps(qr + d), q1 = _mm512_loadu_ps(qr + d + 16);
                __m512 e, o;
                to_pair_order(_mm512_mul_ps(q0, cvt_h16(aux + d)), _mm512_mul_ps(q1, cvt_h16(aux + d + 16)), e, o);
                _mm512_storeu_ps(qo + d, e);
                _mm512_storeu_ps(qo + d + 16, o);
                c = _mm512_fmadd_ps(q0, cvt_h16(aux + D + d), c);
                c = _mm512_fmadd_ps(q1, cvt_h16(aux + D + d + 16), c);
            }
        }
        for (; d < D; d += 16) {
            const __m512 qv = _mm512_loadu_ps(qr + d);
            _mm512_storeu_ps(qo + d, _mm512_mul_ps(qv, cvt_h16(aux + d)));
            c = _mm512_fmadd_ps(qv, cvt_h16(aux + D + d), c);
        }
        st.kc[size_t(r)] = _mm512_reduce_add_ps(c);
    }
}

// The integer q.k needs compile-time head_dim (with run-time bounds the accumulators spill: 42 zmm stack
// accesses in the loop, checked with objdump), also where the rest of the kernel runs the generic instance.
template <int KF, int DC>
void scores_q8_any(const Item& it, State& st, const uint8_t* const* K, int n, int offset) {
    const int D = DC > 0 ? DC : it.head_dim;
    auto run = [&](auto dc) {
        if (st.vnni) scores_q8<KF, true, decltype(dc)::value>(it, st, K, n, offset);
        else scores_q8<KF, false, decltype(dc)::value>(it, st, K, n, offset);
    };
    switch (D) {
        case 64: run(std::integral_constant<int, 64>{}); break;
        case 80: run(std::integral_constant<int, 80>{}); break;
        case 96: run(std::integral_constant<int, 96>{}); break;
        case 128: run(std::integral_constant<int, 128>{}); break;
        case 256: run(std::integral_constant<int, 256>{}); break;
        default: run(std::integral_constant<int, 0>{}); break;
    }
}

// A tile of quantized (full) blocks: keys [t0, t1), at most kTileKeys, may straddle blocks. Scores run
// per block segment (each with its own folded q); softmax and P.V run once over the tile.
template <int KF, int VF, int DC>
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
            // scattered blocks: pull the next block's head tile (codes and scale/min sections) into L2
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
            // the segment's [t][g] f16 scales and minimums, transposed to [g][key] for the softmax loop
            const uint16_t* aux = reinterpret_cast<const uint16_t*>(tile + it.v_aux_off);
            alignas(64) float cs[kTileKeys * 8 + 16], cm[kTileKeys * 8 + 16];
            const uint16_t* sp = aux + size_t(row0) * G;
            const uint16_t* mp = aux + size_t(bs) * G + size_t(row0) * G;
            const int m = cnt * G;
            int k = 0;
            for (; k + 16 <= m; k += 16) {
                _mm512_store_ps(cs + k, cvt_h16(sp + k));
                _mm512_store_ps(cm + k, cvt_h16(mp + k));
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
                scores_q8_any<KF, DC>(it, st, K + off, cnt, off);
            } else {
                fold_q<KF>(it, st, tile);
                scores<KF, DC>(it, st, K + off, cnt, st.qf.data(), st.kc.data(), off);
            }
        } else {
            scores<KF, DC>(it, st, K + off, cnt, it.q, st.zero.data(), off);
        }
        s0 = s1;
    }
    if constexpr (VF != kF16)
        for (int g = 0; g < G; ++g)
            for (int i = n; i < ((n + 15) & ~15); ++i) st.vsc[size_t(g) * kStride + i] = st.vmn[size_t(g) * kStride + i] = 0.0f;
    softmax_pv<VF, DC>(it, st, t0, n, V);
}

// The residual (partial) block: KIVI sides read f16 rows from the residual tile, f16 sides from the block.
template <int KF, int VF, int DC>
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
        scores<kF16, DC>(it, st, K, n, it.q, st.zero.data(), 0);
        softmax_pv<kF16, DC>(it, st, t0, n, V);
    }
}

template <int KF, int VF, int DC>
void run_item_t(const Item& it) {
    const int D = it.head_dim, R = it.rows, bs = it.block_size;
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    State& st = per_thread<State>();  // per thread (core/per_thread.hpp)
    const int G = D / (it.value_group > 0 ? it.value_group : D);
    st.acc.assign(size_t(R) * D, 0.0f);
    st.m.assign(size_t(R), NEG_INF);
    st.l.assign(size_t(R), 0.0f);
    st.S.assign(size_t(R) * kStride, 0.0f);
    st.P.assign(size_t(std::max(G, 1)) * R * kStride, 0.0f);
    st.PM.assign(size_t(std::max(G, 1)) * R, 0.0f);
    st.qf.resize(size_t(R) * D);
    st.kc.assign(size_t(R), 0.0f);
    st.zero.assign(size_t(R), 0.0f);
    st.vsc.assign(size_t(std::max(G, 1)) * kStride, 0.0f);
    st.vmn.assign(size_t(std::max(G, 1)) * kStride, 0.0f);
    if constexpr (KF != kF16)
        if (it.q8_kivi) {
            st.q8.resize(size_t(R) * size_t(q8_layout(KF, D).row));
            st.q8s.resize(size_t(R));
            st.vnni = cpu::avx512_vnni();
            q8_prepare<KF>(it, st);
        }
    const int64_t res_block = it.length / bs;  // == number of full blocks; a block >= it is partial
    const int64_t q_end = std::min(it.key_end, res_block * bs);  // keys in quantized blocks
    for (int64_t t = it.key_begin; t < q_end; t += kTileKeys) quant_tile<KF, VF, DC>(it, st, t, std::min(q_end, t + kTileKeys));
    if constexpr (VF == kI4)  // the accumulator back to natural channel order (V has no tail: groups of >= 32)
        for (int r = 0; r < R; ++r)
            for (int d = 0; d + 32 <= D; d += 32) {
                float* ar = st.acc.data() + size_t(r) * D + d;
                __m512 a, b;
                from_pair_order(_mm512_loadu_ps(ar), _mm512_loadu_ps(ar + 16), a, b);
                _mm512_storeu_ps(ar, a);
                _mm512_storeu_ps(ar + 16, b);
            }
    if (it.key_end > q_end) residual_range<KF, VF, DC>(it, st, res_block, std::max(it.key_begin, q_end), it.key_end);
    for (int r = 0; r < R; ++r) {
        float* o = it.o + size_t(r) * D;
        const float* ar = st.acc.data() + size_t(r) * D;
        if (st.l[size_t(r)] > 0.0f) {
            const __m512 vl = _mm512_set1_ps(st.l[size_t(r)]);
            for (int d = 0; d < D; d += 16) _mm512_storeu_ps(o + d, _mm512_div_ps(_mm512_loadu_ps(ar + d), vl));
            it.lse[r] = st.m[size_t(r)] + std::log(st.l[size_t(r)]);
        } else {
            std::memset(o, 0, size_t(D) * sizeof(float));
            it.lse[r] = NEG_INF;
        }
    }
}

int row_fmt(int32_t f) { return f == LLMN_KV_INT4 ? kI4 : (f == LLMN_KV_INT2 ? kI2 : kF16); }

// head_dim 128 and 64 (most models) with compile-time loop bounds in the score and P.V loops, as in the
// f16 kernel; other head_dims at run time.
template <int KF, int VF>
void dispatch_d(const Item& it) {
    if (it.head_dim == 128) run_item_t<KF, VF, 128>(it);
    else if (it.head_dim == 64) run_item_t<KF, VF, 64>(it);
    else run_item_t<KF, VF, 0>(it);
}

template <int KF>
void dispatch_v(const Item& it) {
    switch (row_fmt(it.v_format)) {
        case kI4: dispatch_d<KF, kI4>(it); break;
        case kI2: dispatch_d<KF, kI2>(it); break;
        default: dispatch_d<KF, kF16>(it); break;
    }
}

}  // namespace

void run_item_kivi_avx512(const Item& it) {
    if (it.head_dim % 16 != 0) {  // every head_dim the cache accepts is a multiple of 16; keep the kernel total
        run_item_kivi_avx2(it);
        return;
    }
    switch (row_fmt(it.k_format)) {
        case kI4: dispatch_v<kI4>(it); break;
        case kI2: dispatch_v<kI2>(it); break;
        default: dispatch_v<kF16>(it); break;
    }
}

}  // namespace llmn::attn_cpu
