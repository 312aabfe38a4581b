// AVX-512 helpers shared by the zmm attention kernels: f16 (decode_attention_avx512.cpp), KIVI
// (decode_attention_kivi_avx512.cpp) and the zmm section of the INT8/FP8 kernel
// (decode_attention_quant_avx2.cpp). Everything here has internal linkage (an anonymous namespace) and
// the AVX-512 target attribute, so each including file gets its own zmm copy: no inline function with
// zmm code can be merged with an AVX2 caller's by the linker.
#pragma once

// GCC 12 reports its own _mm512_undefined_* placeholders inside avx512fintrin.h as "may be used
// uninitialized" / "used uninitialized" (a known false positive of the header, not of the kernels).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>

#define LLMN_AVX512_MATH __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

namespace llmn::attn_cpu::avx512_math {
namespace {

// e^x with the reduction and polynomial of avx2_math::exp_ps (relative error ~1.5e-7), 16 lanes.
LLMN_AVX512_MATH inline __m512 exp16(__m512 x) {
    const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3365447505531f), _CMP_LT_OQ);  // 0 there, as exp_ps
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3365447505531f)), _mm512_set1_ps(88.3762626647949f));
    const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mask_mov_ps(_mm512_mul_ps(y, _mm512_castsi512_ps(e)), under, _mm512_setzero_ps());
}

// c * tanh(s / c), as avx2_math::softcap_ps.
LLMN_AVX512_MATH inline __m512 softcap16(__m512 s, __m512 c) {
    const __m512i sign = _mm512_set1_epi32(int32_t(0x80000000u));
    const __m512 y = _mm512_div_ps(s, c);
    const __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(y)));
    const __m512 e = exp16(_mm512_mul_ps(a, _mm512_set1_ps(-2.0f)));
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
    const __m512i ys = _mm512_and_si512(sign, _mm512_castps_si512(y));
    return _mm512_mul_ps(c, _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), ys)));
}

// Sums of 16 vectors by a transpose-and-add tree (45 single-uop shuffles and adds): lane 4k + m of
// the result is sum(a[4m + k]).
LLMN_AVX512_MATH inline __m512 reduce16(const __m512* a) {
    __m512 b[8], c[4], d[2];
    for (int p = 0; p < 8; ++p)  // [x.q0 + x.q2, x.q1 + x.q3, y.q0 + y.q2, y.q1 + y.q3]
        b[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int p = 0; p < 4; ++p)  // quarter k: the 4 partial sums of a[4p + k]
        c[p] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * p], b[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(b[2 * p], b[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int p = 0; p < 2; ++p)  // quarter k: [u02, v02, u13, v13], u = a[8p + k], v = a[8p + 4 + k]
        d[p] = _mm512_add_ps(_mm512_unpacklo_ps(c[2 * p], c[2 * p + 1]), _mm512_unpackhi_ps(c[2 * p], c[2 * p + 1]));
    const __m512d e = _mm512_castps_pd(d[0]), f = _mm512_castps_pd(d[1]);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(e, f)), _mm512_castpd_ps(_mm512_unpackhi_pd(e, f)));
}

// reduce16 on int32 lanes (the same shuffles, integer adds): exact, for the INT8-query dot products.
LLMN_AVX512_MATH inline __m512i reduce16_epi32(const __m512i* a) {
    __m512i b[8], c[4], d[2];
    for (int p = 0; p < 8; ++p)
        b[p] = _mm512_add_epi32(_mm512_shuffle_i32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_i32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int p = 0; p < 4; ++p)
        c[p] = _mm512_add_epi32(_mm512_shuffle_i32x4(b[2 * p], b[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i32x4(b[2 * p], b[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int p = 0; p < 2; ++p)
        d[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(c[2 * p], c[2 * p + 1]), _mm512_unpackhi_epi32(c[2 * p], c[2 * p + 1]));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(d[0], d[1]), _mm512_unpackhi_epi64(d[0], d[1]));
}

// q.k of RT rows x KT keys (RT * KT = 16 accumulators, acc[r * KT + j]): lane r * KT + j of the result
// is the sum of acc[r * KT + j] (reduce16 leaves it in lane 4 (i % 4) + i / 4; one permute moves it).
LLMN_AVX512_MATH inline __m512 score_lanes(const __m512* acc) {
    const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(perm, reduce16(acc));
}

LLMN_AVX512_MATH inline __m512i score_lanes_epi32(const __m512i* acc) {
    const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_epi32(perm, reduce16_epi32(acc));
}

// x[j] in lane r * KT + j for every row r (a per-key factor in score_lanes' order); x[j], j >= valid,
// is not read (those lanes are 0).
template <int KT>
LLMN_AVX512_MATH inline __m512 key_lanes(const float* x, int valid) {
    const __m512i key = _mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(KT - 1));
    return _mm512_permutexvar_ps(key, _mm512_maskz_loadu_ps(__mmask16((1u << valid) - 1), x));
}

// x[r] in lane r * KT + j for every key j (a per-row constant in score_lanes' order).
template <int RT, int KT>
LLMN_AVX512_MATH inline __m512 row_lanes(const float* x) {
    static_assert(KT == 4 || KT == 8 || KT == 16, "KT is a power of two");
    const __m512i row = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          KT == 4 ? 2 : KT == 8 ? 3 : 4);
    return _mm512_permutexvar_ps(row, _mm512_maskz_loadu_ps(__mmask16((1u << RT) - 1), x));
}

// Scores in score_lanes' order to s[r * stride + t + j], j < valid: one masked store per row (the pointer
// is offset by -r KT so that lane r KT lands on key t; it stays inside S since stride > KT).
template <int RT, int KT>
LLMN_AVX512_MATH inline void store_score_rows(float* s, int64_t stride, int t, int valid, __m512 sc) {
    const __mmask16 vm = __mmask16((1u << valid) - 1);
    for (int r = 0; r < RT; ++r) _mm512_mask_storeu_ps(s + r * stride + t - r * KT, __mmask16(vm << (r * KT)), sc);
}

// Soft-cap, ALiBi (slope * (key - qpos)) and the visible range [lo, hi) applied to a row's scores
// s[0, nv) of the tile starting at key t0 (masked keys become -inf); returns their maximum. A row
// with every key visible and no transform (most tiles) only takes the maximum: the general loop
// would store s unchanged.
LLMN_AVX512_MATH inline float mask_row16(float* s, int nv, int64_t t0, int64_t lo, int64_t hi, float softcap,
                                         const float* slope, int64_t qpos) {
    const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 vmax = ninf;
    if (softcap <= 0.0f && !slope && lo == 0 && hi == nv) {
        for (int j = 0; j < nv; j += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
        return _mm512_reduce_max_ps(vmax);
    }
    const __m512 lane = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 cap = _mm512_set1_ps(softcap);
    const __m512 vlo = _mm512_set1_ps(float(lo)), vhi = _mm512_set1_ps(float(hi));
    for (int j = 0; j < nv; j += 16) {
        __m512 x = _mm512_loadu_ps(s + j);
        if (softcap > 0.0f) x = softcap16(x, cap);
        if (slope) {  // key - query is exact in f32 (|.| < 2^24 here)
            const __m512 rel = _mm512_add_ps(_mm512_set1_ps(float(t0 + j - qpos)), lane);
            x = _mm512_fmadd_ps(_mm512_set1_ps(*slope), rel, x);
        }
        const __m512 idx = _mm512_add_ps(_mm512_set1_ps(float(j)), lane);
        const __mmask16 valid = _mm512_cmp_ps_mask(idx, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(idx, vhi, _CMP_LT_OQ);
        x = _mm512_mask_blend_ps(valid, ninf, x);
        _mm512_storeu_ps(s + j, x);
        vmax = _mm512_max_ps(vmax, x);
    }
    return _mm512_reduce_max_ps(vmax);
}

// Online-softmax step for one row: when the tile maximum exceeds the running max m, rescale the
// row's accumulator (D floats, D % 16 == 0) and l by e^(m - tile_max) (not on the first visible tile,
// where both are still 0) and raise m.
LLMN_AVX512_MATH inline void raise_row_max16(float tile_max, float& m, float& l, float* acc_row, int D) {
    if (!(tile_max > m)) return;
    if (m != -std::numeric_limits<float>::infinity()) {
        const float alpha = std::exp(m - tile_max);
        const __m512 va = _mm512_set1_ps(alpha);
        for (int d = 0; d < D; d += 16) _mm512_storeu_ps(acc_row + d, _mm512_mul_ps(_mm512_loadu_ps(acc_row + d), va));
        l *= alpha;
    }
    m = tile_max;
}

}  // namespace
}  // namespace llmn::attn_cpu::avx512_math
