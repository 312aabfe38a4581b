// KIVI INT4 / INT2 KV quantization (asymmetric: scale + minimum), the exact scalar codec shared by
// the cache (quantize a block when it fills, read back, truncate into a quantized block) and the
// scalar attention reference. Layout and the residual rule: kv_layout.hpp.
//
// Input is always the block's f16 RESIDUAL rows (never the caller's f32 values), so a block's codes
// depend only on the f16 values of its rows: appending one token at a time and in bulk give identical
// bytes. Per group (K: one channel over the block's tokens; V: one token's group of channels):
//   min   = the group's minimum (an f16 value, stored exactly)
//   scale = (max - min) / qmax rounded UP to f16 (qmax = 15 or 3), so qmax * scale >= max - min and
//           every value maps inside [0, qmax] before clamping; max == min gives scale 0, codes 0.
//   code  = clamp(round_half_away((x - min) / scale), 0, qmax), computed in f32 with the stored scale.
//   x'    = float(code) * scale + min  (f32: two roundings)
// Error per element: |x - x'| <= scale / 2 + f32 rounding, with scale <= (max - min) / qmax * (1 + 2^-10)
// (the f16 round-up; ~2^-24 absolute for subnormal scales).
#pragma once
#include "../../core/numeric.hpp"

#include <llmnative/llmnative.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace llmn {

inline int32_t kivi_bits(int32_t format) { return format == LLMN_KV_INT4 ? 4 : 2; }
inline int32_t kivi_qmax(int32_t format) { return format == LLMN_KV_INT4 ? 15 : 3; }

// f16 of (hi - lo) / qmax, rounded up (hi >= lo, both f16 values; the quotient fits f16 since
// hi - lo <= 131008 and qmax >= 3).
inline uint16_t kivi_scale_f16(float lo, float hi, int32_t qmax) {
    const double s = (double(hi) - double(lo)) / double(qmax);
    if (s <= 0.0) return 0;
    uint16_t h = f32_to_f16(float(s));
    if (double(f16_to_f32(h)) < s) ++h;  // next f16 up (positive: bit pattern + 1)
    return h;
}

// Group minimum / maximum of finite values. Spelled as comparisons rather than std::fmin/fmax so the
// result is defined for +0 / -0 (the later operand wins on equality, which is what glibc's x86-64
// fminf/fmaxf return): the minimum is stored, sign of zero included, and the CUDA codec
// (kv_kivi_cuda.cuh) must produce the same bytes on every host.
inline float kivi_min(float lo, float x) { return lo < x ? lo : x; }
inline float kivi_max(float hi, float x) { return hi > x ? hi : x; }

// clamp(round_half_away((x - mn) / scale), 0, qmax), written without the libm call (std::round is not
// inlined; it was 15 % of an append into a KIVI cache): for v in (0, qmax) the truncation i and the
// fraction v - i are exact (v < 16), so i + (fraction >= 0.5) is round-half-away's result; v <= 0
// (or NaN) clamps to 0 and v >= qmax to qmax either way.
inline uint8_t kivi_code(float x, float scale, float mn, int32_t qmax) {
    if (scale == 0.0f) return 0;
    const float v = (x - mn) / scale;
    if (!(v > 0.0f)) return 0;
    if (v >= float(qmax)) return uint8_t(qmax);
    int32_t i = int32_t(v);
    i += int32_t(v - float(i) >= 0.5f);  // branch-free: random data mispredicts
    return uint8_t(i);
}

inline uint8_t kivi_get(const uint8_t* row, int32_t d, int32_t bits) {
    const int32_t per = 8 / bits;
    return uint8_t((row[d / per] >> (bits * (d % per))) & ((1 << bits) - 1));
}
inline void kivi_put(uint8_t* row, int32_t d, int32_t bits, uint8_t code) {
    const int32_t per = 8 / bits;
    row[d / per] = uint8_t(row[d / per] | (code << (bits * (d % per))));
}

inline float kivi_dequant(uint8_t code, float scale, float mn) { return float(code) * scale + mn; }

// Keys: rows [bs][D] f16 -> data [bs][D*bits/8], aux = D f16 scales then D f16 minimums.
inline void kivi_quantize_k_block(int32_t format, const uint16_t* rows, int32_t bs, int32_t D, uint8_t* data,
                                  uint16_t* aux) {
    const int32_t bits = kivi_bits(format), qmax = kivi_qmax(format);
    const int64_t rb = int64_t(D) * bits / 8;
    std::memset(data, 0, size_t(rb * bs));
    for (int32_t d = 0; d < D; ++d) {
        float lo = f16_to_f32(rows[d]), hi = lo;
        for (int32_t t = 1; t < bs; ++t) {
            const float x = f16_to_f32(rows[size_t(t) * D + d]);
            lo = kivi_min(lo, x);
            hi = kivi_max(hi, x);
        }
        const uint16_t sh = kivi_scale_f16(lo, hi, qmax);
        aux[d] = sh;
        aux[D + d] = f32_to_f16(lo);  // exact: lo is an f16 value
        const float sc = f16_to_f32(sh);
        for (int32_t t = 0; t < bs; ++t)
            kivi_put(data + t * rb, d, bits, kivi_code(f16_to_f32(rows[size_t(t) * D + d]), sc, lo, qmax));
    }
}

// Values: rows [bs][D] f16 -> data [bs][D*bits/8], aux = bs*G f16 scales ([t][g]) then bs*G minimums.
inline void kivi_quantize_v_block(int32_t format, const uint16_t* rows, int32_t bs, int32_t D, int32_t group,
                                  uint8_t* data, uint16_t* aux) {
    const int32_t bits = kivi_bits(format), qmax = kivi_qmax(format), G = D / group;
    const int64_t rb = int64_t(D) * bits / 8;
    std::memset(data, 0, size_t(rb * bs));
    for (int32_t t = 0; t < bs; ++t)
        for (int32_t g = 0; g < G; ++g) {
            const uint16_t* x = rows + size_t(t) * D + size_t(g) * group;
            float lo = f16_to_f32(x[0]), hi = lo;
            for (int32_t i = 1; i < group; ++i) {
                lo = kivi_min(lo, f16_to_f32(x[i]));
                hi = kivi_max(hi, f16_to_f32(x[i]));
            }
            const uint16_t sh = kivi_scale_f16(lo, hi, qmax);
            aux[size_t(t) * G + g] = sh;
            aux[size_t(bs) * G + size_t(t) * G + g] = f32_to_f16(lo);
            const float sc = f16_to_f32(sh);
            for (int32_t i = 0; i < group; ++i)
                kivi_put(data + t * rb, g * group + i, bits, kivi_code(f16_to_f32(x[i]), sc, lo, qmax));
        }
}

// Dequantized row t of a quantized block (f32), for read-back, truncate and the scalar kernel.
inline void kivi_dequant_k_row(int32_t format, const uint8_t* data, const uint16_t* aux, int32_t t, int32_t D,
                               float* out) {
    const int32_t bits = kivi_bits(format);
    const uint8_t* row = data + int64_t(t) * D * bits / 8;
    for (int32_t d = 0; d < D; ++d) out[d] = kivi_dequant(kivi_get(row, d, bits), f16_to_f32(aux[d]), f16_to_f32(aux[D + d]));
}
inline void kivi_dequant_v_row(int32_t format, const uint8_t* data, const uint16_t* aux, int32_t bs, int32_t t,
                               int32_t D, int32_t group, float* out) {
    const int32_t bits = kivi_bits(format), G = D / group;
    const uint8_t* row = data + int64_t(t) * D * bits / 8;
    for (int32_t d = 0; d < D; ++d) {
        const int32_t g = d / group;
        out[d] = kivi_dequant(kivi_get(row, d, bits), f16_to_f32(aux[size_t(t) * G + g]),
                              f16_to_f32(aux[size_t(bs) * G + size_t(t) * G + g]));
    }
}

}  // namespace llmn
