// Per-(token, head) 8-bit KV quantization (LLMN_KV_INT8 and LLMN_KV_FP8_E4M3): the exact scalar
// codecs shared by append (encode), read (decode) and the scalar attention reference, and the
// constants the SIMD kernels decode with. Layout: kv_layout.hpp (row = head_dim codes, aux =
// block_size f32 scales, x = float(code) * scale[t]).
//
// Why f32 scales: one scale per (token, head) is 1/head_dim of the row's data (4 bytes against
// 64..256), so f16 would save at most 1.5% of the cache while adding a second rounding (and an
// f16 range limit) to every element of the row; f32 keeps dequantization a single multiply of
// exact operands.
//
// Scales: INT8 scale = max|x| / 127, codes round(x / scale) half away from zero, clamped to +-127;
// E4M3 scale = max|x| / 448, codes are x / scale rounded to nearest-even on the E4M3 grid and
// saturated to +-448 (never NaN: code 0x7F/0xFF is not produced). An all-zero row gets scale 0
// and all-zero codes (so dequantization gives exact zeros, no 0/0).
#pragma once
#include <llmnative/llmnative.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace llmn {

constexpr float kInt8QMax = 127.0f;
constexpr float kE4M3Max = 448.0f;

inline bool kv_format_is_q8(int32_t f) { return f == LLMN_KV_INT8 || f == LLMN_KV_FP8_E4M3; }

// Exact OCP E4M3 (bias 7, no infinities, 0x7F/0xFF = NaN) to f32.
inline float e4m3_to_f32(uint8_t c) {
    const int e = (c >> 3) & 0xF, m = c & 7;
    float mag;
    if (e == 15 && m == 7) mag = NAN;
    else if (e == 0) mag = std::ldexp(float(m), -9);          // subnormal: m/8 * 2^-6
    else mag = std::ldexp(float(8 + m), e - 7 - 3);            // (1 + m/8) * 2^(e-7)
    return (c & 0x80) ? -mag : mag;
}

// Exact f32 to E4M3, round to nearest, ties to even, saturating to +-448 (finite inputs; NaN gives
// 0x7F, never reached by the cache, which rejects NaN before encoding). Integer arithmetic on the f32
// bits (no libm calls: frexp / ldexp / nearbyint were most of an append into an FP8 cache):
//   normal results (a >= 2^-6): the f32 mantissa's top 3 bits, rounded to nearest-even on the 20
//   bits below them; a carry into the 4th bit bumps the exponent (mantissa 0);
//   subnormal results (a < 2^-6): the grid m * 2^-9; a * 512 is exact and < 8, so its integer part
//   and exact fraction give the nearest-even m (8 = the smallest normal, code 0x08).
inline uint8_t f32_to_e4m3(float x) {
    if (std::isnan(x)) return 0x7F;
    const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
    const float a = std::fabs(x);
    if (!(a < kE4M3Max)) return uint8_t(sign | 0x7E);  // >= 448 (incl. Inf): saturate
    if (a < 0.015625f) {                               // below 2^-6: subnormal grid m * 2^-9
        const float v = a * 512.0f;
        int q = int(v);
        const float frac = v - float(q);
        q += int(frac > 0.5f) | (int(frac == 0.5f) & (q & 1));  // branch-free: random data mispredicts
        return uint8_t(sign | q);
    }
    uint32_t u;
    std::memcpy(&u, &a, 4);
    int e = int(u >> 23) - 127;  // a is a normal f32 here
    const uint32_t m = u & 0x7FFFFFu;
    uint32_t mq = m >> 20;        // 3 mantissa bits
    const uint32_t rest = m & 0xFFFFFu, half = 0x80000u;
    mq += uint32_t(rest > half) | (uint32_t(rest == half) & (mq & 1u));
    if (mq == 8) {
        mq = 0;
        ++e;
    }
    int code = ((e + 7) << 3) | int(mq);
    if (code > 0x7E) code = 0x7E;  // 464 would round up to 480 (past the saturation bound)
    return uint8_t(sign | code);
}

// round half away from zero of y = x / scale (|y| <= ~127), clamped to +-127; the truncation and the
// fraction y - trunc(y) are exact for |y| < 2^23 (no libm call).
inline int8_t f32_to_int8_code(float y) {
    if (!(y < kInt8QMax + 1.0f)) return int8_t(kInt8QMax);
    if (!(y > -kInt8QMax - 1.0f)) return int8_t(-kInt8QMax);
    int t = int(y);
    const float frac = y - float(t);
    t += int(frac >= 0.5f) - int(frac <= -0.5f);  // branch-free: random data mispredicts
    t = t > 127 ? 127 : t;
    t = t < -127 ? -127 : t;
    return int8_t(t);
}

// Quantizes one row of n finite values into codes; returns the scale.
inline float kv_quantize_row(int32_t format, const float* x, int32_t n, uint8_t* codes) {
    float amax = 0.0f;
    for (int32_t i = 0; i < n; ++i) {  // finite inputs: a comparison is fmax (no libm call)
        const float a = std::fabs(x[i]);
        amax = a > amax ? a : amax;
    }
    const float scale = amax / (format == LLMN_KV_INT8 ? kInt8QMax : kE4M3Max);
    if (scale == 0.0f) {  // all-zero row (or a subnormal maximum whose scale underflows): exact zeros
        for (int32_t i = 0; i < n; ++i) codes[i] = 0;
        return 0.0f;
    }
    if (format == LLMN_KV_INT8) {
        for (int32_t i = 0; i < n; ++i) {
            const int8_t c = f32_to_int8_code(x[i] / scale);
            std::memcpy(&codes[i], &c, 1);
        }
    } else {
        for (int32_t i = 0; i < n; ++i) codes[i] = f32_to_e4m3(x[i] / scale);
    }
    return scale;
}

// float(code) for one stored byte (scale not applied).
inline float kv_code_value(int32_t format, uint8_t c) {
    if (format == LLMN_KV_INT8) return float(int8_t(c));
    return e4m3_to_f32(c);
}

}  // namespace llmn
