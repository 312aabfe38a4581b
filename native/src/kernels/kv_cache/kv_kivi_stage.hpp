// AVX2 + F16C versions of kv_kivi.hpp's block quantizers (kv_kivi_avx2.cpp), byte for byte the
// scalar ones; callers choose them when active_isa() >= AVX2 (x86 builds).
#pragma once
#include <cstdint>

namespace llmn {

void kivi_quantize_k_block_avx2(int32_t format, const uint16_t* rows, int32_t bs, int32_t D, uint8_t* data, uint16_t* aux);
void kivi_quantize_v_block_avx2(int32_t format, const uint16_t* rows, int32_t bs, int32_t D, int32_t group, uint8_t* data,
                                uint16_t* aux);

}  // namespace llmn
