// AVX2 + F16C staging of appended K/V rows for f16 storage (F16 caches and the f16 residual rows of
// KIVI sides): the common case of kv_cache.cpp's stage_rows, f32 input, 8 elements per step. Why:
// the scalar loop (element load by dtype switch, software f32 -> f16, per-element range check) cost
// ~1.8 ns per element, a third of an append into a KIVI cache. vcvtps2ph with round-to-nearest-even
// gives the same bits as numeric.hpp's f32_to_f16 for every value the cache accepts (|x| < 65520,
// subnormal results included); the range check is the scalar one (NaN compares false).
#include "kv_stage.hpp"

#include <immintrin.h>

#include <cstring>

namespace llmn {

bool kv_stage_f16_avx2(const float* src, int64_t count, uint16_t* dst) {
    const __m256 limit = _mm256_set1_ps(65520.0f);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const __m256 x = _mm256_loadu_ps(src + i);
        const __m256 ok = _mm256_cmp_ps(_mm256_and_ps(x, abs_mask), limit, _CMP_LT_OQ);
        if (_mm256_movemask_ps(ok) != 0xff) return false;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < count; ++i) {
        const __m128 x = _mm_set_ss(src[i]);
        if (!(_mm_cvtss_f32(_mm_and_ps(x, _mm256_castps256_ps128(abs_mask))) < 65520.0f)) return false;
        dst[i] = uint16_t(_mm_extract_epi16(_mm_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0));
    }
    return true;
}

namespace {

// kv_quant.hpp's f32_to_e4m3 on 8 lanes of finite y (|y| <= ~448): the same integer rounding on the
// f32 bits. Normal results: adding 0x7FFFF plus the kept mantissa's lowest bit to the bits rounds the
// 20 dropped mantissa bits to nearest-even, a carry moving into the exponent, and (bits >> 20) -
// (120 << 3) is the E4M3 code (f32 bias 127 -> E4M3 bias 7); subnormal results (|y| < 2^-6): |y| * 512
// is exact and vcvtps2dq rounds it to nearest-even (default MXCSR); >= 448 saturates to 0x7E.
inline __m256i e4m3_8(__m256 y) {
    const __m256i u = _mm256_castps_si256(y);
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
    const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(a, _mm256_add_epi32(_mm256_set1_epi32(0x7FFFF), lsb));
    __m256i normal = _mm256_sub_epi32(_mm256_srli_epi32(r, 20), _mm256_set1_epi32(120 << 3));
    normal = _mm256_min_epi32(normal, _mm256_set1_epi32(0x7E));
    const __m256 af = _mm256_castsi256_ps(a);
    const __m256i sub = _mm256_cvtps_epi32(_mm256_mul_ps(af, _mm256_set1_ps(512.0f)));
    const __m256i is_sub = _mm256_castps_si256(_mm256_cmp_ps(af, _mm256_set1_ps(0.015625f), _CMP_LT_OQ));
    const __m256i sat = _mm256_castps_si256(_mm256_cmp_ps(af, _mm256_set1_ps(448.0f), _CMP_GE_OQ));
    __m256i code = _mm256_blendv_epi8(normal, sub, is_sub);
    code = _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7E), sat);
    return _mm256_or_si256(code, sign);
}

// kv_quant.hpp's f32_to_int8_code on 8 lanes (|y| <= ~127): truncation, exact fraction, half away.
inline __m256i int8_8(__m256 y) {
    const __m256i t = _mm256_cvttps_epi32(y);
    const __m256 frac = _mm256_sub_ps(y, _mm256_cvtepi32_ps(t));
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ));     // -1 / 0
    const __m256i down = _mm256_castps_si256(_mm256_cmp_ps(frac, _mm256_set1_ps(-0.5f), _CMP_LE_OQ));  // -1 / 0
    const __m256i c = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
    return _mm256_max_epi32(_mm256_min_epi32(c, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
}

}  // namespace

bool kv_stage_q8_avx2(bool fp8, const float* src, int64_t rows, int32_t dim, uint8_t* out, float* scales) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 inf = _mm256_set1_ps(__builtin_inff());
    for (int64_t r = 0; r < rows; ++r) {
        const float* x = src + r * dim;
        uint8_t* o = out + r * dim;
        __m256 amax = _mm256_setzero_ps();
        for (int32_t i = 0; i < dim; i += 8) {
            const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
            if (_mm256_movemask_ps(_mm256_cmp_ps(a, inf, _CMP_LT_OQ)) != 0xff) return false;  // NaN / Inf
            amax = _mm256_max_ps(amax, a);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float scale = _mm_cvtss_f32(m4) / (fp8 ? 448.0f : 127.0f);
        scales[r] = scale;
        if (scale == 0.0f) {  // all-zero row (or a subnormal maximum whose scale underflows): exact zeros
            std::memset(o, 0, size_t(dim));
            continue;
        }
        const __m256 vs = _mm256_set1_ps(scale);
        for (int32_t i = 0; i < dim; i += 8) {
            const __m256 y = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
            const __m256i c = fp8 ? e4m3_8(y) : int8_8(y);
            // low byte of each dword -> 8 bytes
            const __m256i b = _mm256_shuffle_epi8(c, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                      0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
            const uint32_t lo = uint32_t(_mm256_extract_epi32(b, 0)), hi = uint32_t(_mm256_extract_epi32(b, 4));
            std::memcpy(o + i, &lo, 4);
            std::memcpy(o + i + 4, &hi, 4);
        }
    }
    return true;
}

}  // namespace llmn
