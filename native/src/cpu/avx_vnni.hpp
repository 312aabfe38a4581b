// AVX-VNNI's vpdpbusd (VEX-encoded, ymm) for the AVX2 kernels' int8 dot products.
//
// Why inline asm: the *_avx2.cpp files are compiled with -mavx2 -mfma -mf16c only, so no other code in
// them can pick up an AVX-VNNI instruction, and the loops without it stay runnable on every AVX2 CPU.
// Callers choose the instances that use this with cpu::avx_vnni() (CPUID). "x": VEX encodes ymm0-15.
// Include only from files compiled for AVX2.
#pragma once
#include <immintrin.h>

namespace llmn::cpu {

// acc += sum over each 32-bit lane's 4 bytes of u8(u) * s8(s). Exact (no saturation).
__attribute__((always_inline)) inline __m256i dpbusd_vex(__m256i acc, __m256i u, __m256i s) {
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "xm"(s));
    return acc;
}

}  // namespace llmn::cpu
