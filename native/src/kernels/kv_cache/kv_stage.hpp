// Vectorised staging of appended K/V rows (kv_cache.cpp's stage_rows keeps the scalar definition and
// the error reporting; these only take the fast path when every element is valid).
#pragma once
#include <cstdint>

namespace llmn {

// f32 -> f16 (round to nearest even) of count elements; false (dst partly written, caller falls back
// to the scalar path, which reports the first bad element) when any |x| >= 65520 or is NaN.
// Requires active_isa() >= AVX2 (F16C).
bool kv_stage_f16_avx2(const float* src, int64_t count, uint16_t* dst);

}  // namespace llmn
