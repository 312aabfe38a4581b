// The per-element math of the CUDA KV-cache paths (device append in kv_append.cu, fused 8-bit
// dequantization in decode_attention.cu), written once as host+device inline functions so that the
// CPU-only tests (native/tests/test_kv_quant_cuda.cpp, a plain .cpp) run the very same code against
// the CPU codecs of kv_quant.hpp and the CPU append validation of kv_cache.cpp.
//
// Why integer formulations: a CUDA cache must hold the same bytes as a CPU cache given the same
// input (the tests compare CUDA against CPU attention on identical contents, and a cache read back
// must not depend on the backend). Every step here is either exact (bit manipulation, power-of-two
// scaling, max) or a single IEEE round-to-nearest operation that both sides perform identically
// (the division x / scale is spelled __fdiv_rn on the device so --use_fast_math could never turn it
// into an approximate reciprocal). Rounding to the E4M3 grid is done on the f32 bits, not with
// frexp/ldexp, so it cannot depend on a libm.
//
// Decoding for attention (no pass ever writes dequantized rows to memory):
//   INT8:  f32(code) via the 2^23 magic number: bits 0x4B000000 | (byte ^ 0x80) is 2^23 + code + 128.
//   E4M3:  two codes at a time become two f16 values equal to value * 2^-8: the 7 magnitude bits
//          (4 exponent, 3 mantissa) are moved to bits 7..13 of the half, i.e. the E4M3 exponent field
//          becomes the low 4 bits of the f16 exponent field and the mantissa its top 3 bits; the sign
//          goes to bit 15. f16 has bias 15 = 7 + 8, so the half is the E4M3 value times 2^-8 exactly,
//          subnormals included (E4M3 subnormal m * 2^-9 -> f16 subnormal m * 2^-17). The factor 2^8
//          goes into the per-token scale (kE4M3HalfScale), so decoding is
//          exact and costs a few integer ops plus one f16x2 -> f32 conversion per pair. The same trick
//          as the AVX2 decoder (docs/kv-quantization.md).
// Nothing here includes a CUDA header.
#pragma once
#include <llmnative/llmnative.h>

#include <math.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

#if defined(__CUDACC__)
#define LLMN_HD __host__ __device__ __forceinline__
#else
#define LLMN_HD inline
#endif

namespace llmn::kvq_cuda {

constexpr float kInt8Max = 127.0f;
constexpr float kE4M3Max = 448.0f;
constexpr float kE4M3HalfScale = 256.0f;  // e4m3x2_to_f16x2 yields value * 2^-8

LLMN_HD uint32_t bits_of(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
#endif
}

LLMN_HD float float_of(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

// IEEE single division, round to nearest even, on both sides.
LLMN_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

// Round to the nearest integer, ties to even (finite |v| < 2^31).
LLMN_HD int rint_even(float v) {
#if defined(__CUDA_ARCH__)
    return __float2int_rn(v);
#else
    return int(nearbyintf(v));  // default rounding mode: to nearest, ties to even
#endif
}

// ---------------------------------------------------------------------------------------------
// Decoding (attention)
// ---------------------------------------------------------------------------------------------

// Byte i (0..3) of w as an INT8 code, exactly, in f32.
LLMN_HD float int8_byte_to_f32(uint32_t w, int i) {
    return float_of(0x4B000000u | (((w >> (8 * i)) & 0xFFu) ^ 0x80u)) - 8388736.0f;  // 2^23 + 128
}

// Bytes 0 and 1 of w (E4M3 codes) -> two f16 bit patterns (low half = byte 0) of value * 2^-8.
// Codes 0x7F / 0xFF (E4M3 NaN) are never stored (the encoder saturates at 0x7E); they would decode
// as +-480, the next step of the grid, not as NaN.
LLMN_HD uint32_t e4m3x2_to_f16x2(uint32_t w) {
    const uint32_t t = ((w & 0xFFu) << 8) | ((w & 0xFF00u) << 16);  // byte 0 -> bits 8..15, byte 1 -> 24..31
    return ((t >> 1) & 0x3F803F80u) | (t & 0x80008000u);
}

// IEEE half bits -> f32, exact (host emulation and tests; the kernels use the hardware conversion).
LLMN_HD float half_bits_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) {
        const float mag = float(m) * (1.0f / 16777216.0f);  // m * 2^-24, exact
        return float_of(bits_of(mag) | sign);
    }
    if (e == 31) return float_of(sign | 0x7F800000u | (m << 13));
    return float_of(sign | ((e + 112u) << 23) | (m << 13));
}

// Two f16 bit patterns (low half first) -> two f32, exactly.
LLMN_HD void f16x2_bits_to_f32(uint32_t h2, float* f) {
#if defined(__CUDA_ARCH__)
    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&h2));
    f[0] = v.x;
    f[1] = v.y;
#else
    f[0] = half_bits_to_f32(uint16_t(h2 & 0xFFFFu));
    f[1] = half_bits_to_f32(uint16_t(h2 >> 16));
#endif
}

// 8 consecutive stored codes (lo = bytes 0..3, hi = bytes 4..7, little endian) -> 8 f32 code values
// for the attention dot products. INT8: the codes; E4M3: the values times 2^-8 (the caller multiplies
// the per-token scale by q8_scale_factor()).
LLMN_HD void int8x8_to_f32(uint32_t lo, uint32_t hi, float* f) {
    for (int i = 0; i < 4; ++i) {
        f[i] = int8_byte_to_f32(lo, i);
        f[4 + i] = int8_byte_to_f32(hi, i);
    }
}
LLMN_HD void e4m3x8_to_f32(uint32_t lo, uint32_t hi, float* f) {
    f16x2_bits_to_f32(e4m3x2_to_f16x2(lo), f);
    f16x2_bits_to_f32(e4m3x2_to_f16x2(lo >> 16), f + 2);
    f16x2_bits_to_f32(e4m3x2_to_f16x2(hi), f + 4);
    f16x2_bits_to_f32(e4m3x2_to_f16x2(hi >> 16), f + 6);
}
LLMN_HD void q8x8_to_f32(bool fp8, uint32_t lo, uint32_t hi, float* f) {
    if (fp8) e4m3x8_to_f32(lo, hi, f);
    else int8x8_to_f32(lo, hi, f);
}
// Factor applied to the stored per-token scale with the values of q8x8_to_f32.
LLMN_HD float q8_scale_factor(bool fp8) { return fp8 ? kE4M3HalfScale : 1.0f; }

// ---------------------------------------------------------------------------------------------
// Encoding (append): the codecs of kv_quant.hpp, bit for bit
// ---------------------------------------------------------------------------------------------

// f32 -> E4M3, round to nearest even, saturating to +-448; NaN -> 0x7F (as f32_to_e4m3).
LLMN_HD uint8_t f32_to_e4m3_bits(float x) {
    const uint32_t u = bits_of(x);
    const uint32_t sign = (u >> 24) & 0x80u;
    const uint32_t mag = u & 0x7FFFFFFFu;
    if (mag > 0x7F800000u) return 0x7F;               // NaN
    if (mag >= 0x43E00000u) return uint8_t(sign | 0x7Eu);  // >= 448 (incl. Inf): saturate
    if (mag < 0x3C800000u) {                            // below 2^-6: subnormal grid m * 2^-9
        const int q = rint_even(float_of(mag) * 512.0f);  // exact scaling; 0..8 (8 = smallest normal)
        return uint8_t(sign | uint32_t(q));
    }
    // normal: a = (1 + f / 2^23) * 2^E, E = exp - 127 in [-6, 8]; keep 3 mantissa bits, RNE on the rest
    int e = int(mag >> 23) - 127;
    const uint32_t frac = mag & 0x7FFFFFu;
    uint32_t q = frac >> 20;
    const uint32_t rem = frac & 0xFFFFFu;
    if (rem > 0x80000u || (rem == 0x80000u && (q & 1u))) ++q;
    if (q == 8) {
        q = 0;
        ++e;
    }
    uint32_t code = (uint32_t(e + 7) << 3) | q;
    if (code > 0x7Eu) code = 0x7Eu;  // 464 would round up to 480 (past the saturation bound)
    return uint8_t(sign | code);
}

// y = x / scale -> INT8 code: round half away from zero, clamp to +-127. The CPU codec's formulation
// (kv_quant.hpp f32_to_int8_code: exact truncation and fraction), not roundf, whose MinGW-w64 host
// version returns 1 for 0.49999997f (the tests run this codec on the host).
LLMN_HD uint8_t f32_to_int8_bits(float y) {
    if (!(y < kInt8Max + 1.0f)) return uint8_t(int8_t(127));
    if (!(y > -kInt8Max - 1.0f)) return uint8_t(int8_t(-127));
    int t = int(y);
    const float frac = y - float(t);
    t += int(frac >= 0.5f) - int(frac <= -0.5f);
    t = t > 127 ? 127 : t;
    t = t < -127 ? -127 : t;
    return uint8_t(int8_t(t));
}

// Scale of a row from its max |x| (kv_quantize_row): 0 means "all codes 0".
LLMN_HD float row_scale(int32_t format, float amax) {
    return div_rn(amax, format == LLMN_KV_INT8 ? kInt8Max : kE4M3Max);
}

// One element's code given its row's nonzero scale.
LLMN_HD uint8_t quantize_value(int32_t format, float x, float scale) {
    const float y = div_rn(x, scale);
    return format == LLMN_KV_INT8 ? f32_to_int8_bits(y) : f32_to_e4m3_bits(y);
}

// ---------------------------------------------------------------------------------------------
// Append validation (kv_cache.cpp stage_rows): which input values a format accepts
// ---------------------------------------------------------------------------------------------

// 0 = ok, 1 = NaN, 2 = Inf, 3 = finite but overflows the storage format.
LLMN_HD int append_value_status(int32_t format, float x) {
    const uint32_t mag = bits_of(x) & 0x7FFFFFFFu;
    if (mag > 0x7F800000u) return 1;
    if (mag == 0x7F800000u) return 2;
    // f16, and KIVI INT4/INT2 sides (their rows are staged as f16 residual rows first): |x| >= 65520
    // rounds to f16 Inf
    if (format == LLMN_KV_F16 || format == LLMN_KV_INT4 || format == LLMN_KV_INT2) return mag >= 0x477FF000u ? 3 : 0;
    if (format == LLMN_KV_BF16) return mag >= 0x7F7F8000u ? 3 : 0;  // rounds (ties to even) to bf16 Inf
    return 0;                                                       // INT8 / E4M3: any finite value
}

// Where token position `pos` of a sequence lives: logical block and row.
struct RowPos {
    int64_t block_index;
    int32_t row;
};
LLMN_HD RowPos row_pos(int64_t pos, int32_t block_size) { return RowPos{pos / block_size, int32_t(pos % block_size)}; }

}  // namespace llmn::kvq_cuda
