// Vectorised staging of appended K/V rows (kv_cache.cpp's stage_rows keeps the scalar definition and
// the error reporting; these only take the fast path when every element is valid).
#pragma once
#include <cstdint>

namespace llmn {

// f32 -> f16 (round to nearest even) of count elements; false (dst partly written, caller falls back
// to the scalar path, which reports the first bad element) when any |x| >= 65520 or is NaN.
// Requires active_isa() >= AVX2 (F16C).
bool kv_stage_f16_avx2(const float* src, int64_t count, uint16_t* dst);

// INT8 (fp8 = false) or E4M3 rows of dim f32 values (dim a multiple of 8): per row the scale of
// kv_quant.hpp's kv_quantize_row (max |x| / 127 or / 448) and its codes, byte for byte; false when
// any value is NaN or Inf. Requires active_isa() >= AVX2.
bool kv_stage_q8_avx2(bool fp8, const float* src, int64_t rows, int32_t dim, uint8_t* out, float* scales);

}  // namespace llmn
