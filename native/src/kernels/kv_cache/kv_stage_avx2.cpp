// AVX2 + F16C staging of appended K/V rows for f16 storage (F16 caches and the f16 residual rows of
// KIVI sides): the common case of kv_cache.cpp's stage_rows, f32 input, 8 elements per step. Why:
// the scalar loop (element load by dtype switch, software f32 -> f16, per-element range check) cost
// ~1.8 ns per element, a third of an append into a KIVI cache. vcvtps2ph with round-to-nearest-even
// gives the same bits as numeric.hpp's f32_to_f16 for every value the cache accepts (|x| < 65520,
// subnormal results included); the range check is the scalar one (NaN compares false).
#include "kv_stage.hpp"

#include <immintrin.h>

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

}  // namespace llmn
