// Vector math shared by the AVX2 decode-attention kernels (f16 and quantized KV): exp, soft-cap and
// horizontal reductions. Include only from *_avx2.cpp files (compiled with -mavx2 -mfma -mf16c).
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace llmn::attn_cpu::avx2_math {

// e^x with relative error ~1.5e-7 on [-87.3, 88.3] (Cody-Waite reduction by ln 2, degree-6
// polynomial). Inputs below -87.3 return ~1e-38 instead of smaller values or 0: callers zero masked
// lanes explicitly, and such weights are < 1e-38 of the row maximum's weight (1).
inline __m256 exp_ps(__m256 x) {
    // Below -87.34 e^x is under FLT_MIN: 0 there (the clamp alone returned FLT_MIN, which a softmax
    // weight times a V scale of ~1e36 turned into a visible error).
    const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3365447505531f), _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365447505531f)), _mm256_set1_ps(88.3762626647949f));
    const __m256 fx =
        _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

// c * tanh(s / c) via tanh|y| = (1 - e) / (1 + e), e = exp(-2|y|): no cancellation for large |y|,
// absolute error <= eps_exp/2 + 3u + u|y| (see the test's bound derivation).
inline __m256 softcap_ps(__m256 s, __m256 c) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 y = _mm256_div_ps(s, c);
    const __m256 a = _mm256_andnot_ps(sign, y);
    const __m256 e = exp_ps(_mm256_mul_ps(a, _mm256_set1_ps(-2.0f)));
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    return _mm256_mul_ps(c, _mm256_or_ps(t, _mm256_and_ps(sign, y)));
}

inline float hsum(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

inline float hmax(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

// [sum(a[0]), ..., sum(a[7])] in one hadd tree.
inline __m256 reduce8(const __m256* a) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// reduce8 on int32 lanes (exact): lane i of the result is the sum of a[i]'s lanes.
inline __m256i reduce8_epi32(const __m256i* a) {
    const __m256i t0 = _mm256_hadd_epi32(a[0], a[1]), t1 = _mm256_hadd_epi32(a[2], a[3]);
    const __m256i t2 = _mm256_hadd_epi32(a[4], a[5]), t3 = _mm256_hadd_epi32(a[6], a[7]);
    const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

// Lane order of a q.k block of RT rows x KT keys (RT * KT = 8) after reduce8: lane r * KT + j is row r,
// key j. The helpers below put per-key and per-row factors in that order and store whole rows from the
// register, so the epilogue of a block is a few vector ops instead of 8 scalar ones per block (the AVX2
// twins of key_lanes / row_lanes / store_score_rows in decode_attention_avx512_math.hpp).

// x[j] in lane r * KT + j, for a block whose KT keys are all valid (x[0, KT) is read).
template <int KT>
inline __m256 key_lanes8(const float* x) {
    static_assert(KT == 2 || KT == 4 || KT == 8, "RT * KT = 8");
    if constexpr (KT == 8) return _mm256_loadu_ps(x);
    else if constexpr (KT == 4) return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(x));
    else return _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(x)));
}

// x[r] in lane r * KT + j for every key j (x[0, RT) is read); bits are moved, never converted.
template <int RT, int KT>
inline __m256 row_lanes8(const float* x) {
    static_assert(RT * KT == 8, "RT * KT = 8");
    if constexpr (RT == 1) return _mm256_broadcast_ss(x);
    else if constexpr (RT == 2) return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(x)), _mm_broadcast_ss(x + 1), 1);
    else return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(x)), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
}

// Scores in reduce8's lane order to s[r * stride + t + j], j < valid: whole rows straight from the
// register; a tile's last block may be partial and goes through a copy.
template <int RT, int KT>
inline void store_score_rows8(float* s, int64_t stride, int t, int valid, __m256 sc) {
    if (valid == KT) {
        if constexpr (KT == 8) {
            _mm256_storeu_ps(s + t, sc);
        } else if constexpr (KT == 4) {
            _mm_storeu_ps(s + t, _mm256_castps256_ps128(sc));
            _mm_storeu_ps(s + stride + t, _mm256_extractf128_ps(sc, 1));
        } else {
            const __m128 lo = _mm256_castps256_ps128(sc), hi = _mm256_extractf128_ps(sc, 1);
            _mm_storel_pi(reinterpret_cast<__m64*>(s + t), lo);
            _mm_storeh_pi(reinterpret_cast<__m64*>(s + stride + t), lo);
            _mm_storel_pi(reinterpret_cast<__m64*>(s + 2 * stride + t), hi);
            _mm_storeh_pi(reinterpret_cast<__m64*>(s + 3 * stride + t), hi);
        }
        return;
    }
    alignas(32) float out[8];
    _mm256_store_ps(out, sc);
    for (int r = 0; r < RT; ++r)
        for (int j = 0; j < valid; ++j) s[r * stride + t + j] = out[r * KT + j];
}

// Online-softmax step 1 for one query row over a tile: scores s[0, nv) of keys t0 + j get the soft-cap
// (softcap > 0) and the ALiBi bias slope * (key - qpos) (slope non-null), and -inf outside the visible
// [lo, hi) (tile-relative, lo < hi); written back, and their maximum returned. Shared by the f16,
// quantized and KIVI AVX2 kernels so the masking is one piece of code.
__attribute__((always_inline)) inline float mask_row(float* s, int nv, int64_t t0, int64_t lo, int64_t hi, float softcap,
                                                     const float* slope, int64_t qpos) {
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    __m256 vmax = _mm256_set1_ps(NEG_INF);
    if (softcap <= 0.0f && !slope && lo == 0 && hi == nv) {
        // every key visible, no transform (most tiles): the loop below would store s unchanged
        for (int j = 0; j < nv; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
        return hmax(vmax);
    }
    const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 cap = _mm256_set1_ps(softcap);
    const __m256 vlo = _mm256_set1_ps(float(lo)), vhi = _mm256_set1_ps(float(hi));
    for (int j = 0; j < nv; j += 8) {
        __m256 x = _mm256_loadu_ps(s + j);
        if (softcap > 0.0f) x = softcap_ps(x, cap);
        if (slope) {
            // bias = slope * (key - query), key - query exact in f32 (|.| < 2^24 here)
            const __m256 rel = _mm256_add_ps(_mm256_set1_ps(float(t0 + j - qpos)), lane);
            x = _mm256_fmadd_ps(_mm256_set1_ps(*slope), rel, x);
        }
        const __m256 idx = _mm256_add_ps(_mm256_set1_ps(float(j)), lane);
        const __m256 valid = _mm256_and_ps(_mm256_cmp_ps(idx, vlo, _CMP_GE_OQ), _mm256_cmp_ps(idx, vhi, _CMP_LT_OQ));
        x = _mm256_blendv_ps(_mm256_set1_ps(NEG_INF), x, valid);
        _mm256_storeu_ps(s + j, x);
        vmax = _mm256_max_ps(vmax, x);
    }
    return hmax(vmax);
}

// Online-softmax step 2: when the tile's maximum exceeds the running max m, rescale the row's
// accumulator (D floats) and l by e^(m - tile_max) (skipped on the first visible tile, where both are
// still 0) and raise m.
__attribute__((always_inline)) inline void raise_row_max(float tile_max, float& m, float& l, float* acc_row, int D) {
    if (!(tile_max > m)) return;
    if (m != -std::numeric_limits<float>::infinity()) {
        const float alpha = std::exp(m - tile_max);
        const __m256 va = _mm256_set1_ps(alpha);
        for (int d = 0; d < D; d += 8) _mm256_storeu_ps(acc_row + d, _mm256_mul_ps(_mm256_loadu_ps(acc_row + d), va));
        l *= alpha;
    }
    m = tile_max;
}

}  // namespace llmn::attn_cpu::avx2_math
