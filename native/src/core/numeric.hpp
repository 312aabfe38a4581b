// Scalar conversions shared by every CPU path and the tests: IEEE fp16 and bfloat16 <-> float with
// round-to-nearest-even, bit-exact with hardware (F16C / CUDA __float2half_rn). SIMD paths convert
// with F16C; these are the reference they are checked against.
#pragma once
#include <cstdint>
#include <cstring>

namespace llmn {

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Round half away from zero (std::round's definition, up to the sign of a zero result), without libm:
// MinGW-w64's round() returns 1 for the largest double below 0.5 (it adds 0.5 and truncates), so the
// same weights would quantize differently in the win-x64 build. The truncation and the fraction x - t
// are exact. |x| >= 2^52, inf and NaN come back unchanged.
inline double round_half_away(double x) {
    if (!(x < 4503599627370496.0 && x > -4503599627370496.0)) return x;
    const double t = double(int64_t(x)), f = x - t;
    return f >= 0.5 ? t + 1.0 : f <= -0.5 ? t - 1.0 : t;
}

inline float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));  // inf / nan
    if (exp == 0) {
        if (mant == 0) return f32_from_bits(sign);
        // subnormal: value = mant * 2^-24
        float v = float(mant) * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

inline uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return uint16_t(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0));  // inf/nan
    if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00);  // rounds to >= 65520: inf
    if (a < 0x38800000u) {                                 // below the smallest normal half: subnormal
        // add 0.5 (as float) so the FPU's round-to-nearest-even does the rounding in the right place
        float v = f32_from_bits(a) + 0.5f;
        return uint16_t(sign | (f32_bits(v) - 0x3f000000u));
    }
    uint32_t mant_odd = (a >> 13) & 1;
    a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    return uint16_t(sign | (a >> 13));
}

inline float bf16_to_f32(uint16_t h) { return f32_from_bits(uint32_t(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet nan
    u += 0x7fff + ((u >> 16) & 1);
    return uint16_t(u >> 16);
}

}  // namespace llmn
