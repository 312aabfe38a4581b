// CUDA KV-cache codecs and append math, checked on the CPU. The functions of
// kernels/kv_cache/kv_quant_cuda.cuh are the ones the CUDA kernels run (append: kv_append.cu; fused
// 8-bit dequantization: decode_attention.cu); here the same source is compiled by the host compiler
// and compared with the CPU codecs (kv_quant.hpp) and the CPU append rule (kv_cache.cpp) bit for bit:
//   * E4M3 decoding (f16 pair trick, x 2^8) equals e4m3_to_f32 for all 254 non-NaN codes;
//   * INT8 decoding (2^23 magic number) equals the int8 value for all 256 bytes and byte positions;
//   * E4M3 / INT8 encoding equal f32_to_e4m3 / f32_to_int8_code on every grid point, every midpoint
//     (ties), their neighbours, specials and random values over the whole exponent range;
//   * whole-row quantization composed as the append kernel composes it (max, scale, codes) equals
//     kv_quantize_row (codes and scale), including zero rows, subnormal maxima and outliers;
//   * the acceptance rule equals the CPU path's (NaN/Inf, f16 65520 and bf16 rounding overflow; KIVI
//     INT4/INT2 follow the f16 rule).
// What this cannot check: the kernels' memory movement (warp shuffles, cp.async, addressing of the
// pool); GPU tests for that are in test_kv_cache_cuda.cpp (they skip here, no GPU).
#include "core/numeric.hpp"
#include "kernels/kv_cache/kv_quant.hpp"
#include "kernels/kv_cache/kv_quant_cuda.cuh"
#include "test_util.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

using namespace llmn_test;
namespace kq = llmn::kvq_cuda;

namespace {

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Decoded E4M3 through the device formulation: f16 bits of value * 2^-8, then x 2^8.
float e4m3_via_half(uint8_t c, int lane) {
    const uint32_t w = lane == 0 ? uint32_t(c) | 0x3A00u : (uint32_t(c) << 8) | 0x11u;  // other byte: any code
    const uint32_t h2 = kq::e4m3x2_to_f16x2(w);
    const uint16_t h = uint16_t(lane == 0 ? h2 & 0xFFFFu : h2 >> 16);
    return kq::half_bits_to_f32(h) * kq::kE4M3HalfScale;
}

}  // namespace

TEST(KvQuantCuda, HalfBitsToF32MatchesNumeric) {
    for (uint32_t h = 0; h < 65536; ++h) {
        const float a = kq::half_bits_to_f32(uint16_t(h)), b = llmn::f16_to_f32(uint16_t(h));
        if (std::isnan(b)) {
            EXPECT_TRUE(std::isnan(a)) << h;
            continue;
        }
        ASSERT_EQ(bits(a), bits(b)) << "half 0x" << std::hex << h;
    }
}

TEST(KvQuantCuda, E4M3DecodeIsExactForEveryCode) {
    int checked = 0;
    for (int c = 0; c < 256; ++c) {
        const float ref = llmn::e4m3_to_f32(uint8_t(c));
        for (int lane = 0; lane < 2; ++lane) {
            const float got = e4m3_via_half(uint8_t(c), lane);
            if (std::isnan(ref)) {  // never stored (the encoder saturates); decodes to the next grid step
                EXPECT_EQ(std::fabs(got), 480.0f) << "code " << c;
                continue;
            }
            ASSERT_EQ(bits(got), bits(ref)) << "code 0x" << std::hex << c << " lane " << lane << ": " << got << " vs " << ref;
            ++checked;
        }
    }
    EXPECT_EQ(checked, 2 * 254);
}

TEST(KvQuantCuda, Int8DecodeIsExactForEveryByteAndPosition) {
    for (int b = 0; b < 256; ++b)
        for (int i = 0; i < 4; ++i) {
            const uint32_t w = (0xA5A5A5A5u & ~(0xFFu << (8 * i))) | (uint32_t(b) << (8 * i));
            ASSERT_EQ(kq::int8_byte_to_f32(w, i), float(int8_t(uint8_t(b)))) << "byte " << b << " position " << i;
        }
}

TEST(KvQuantCuda, E4M3EncodeMatchesCpuCodec) {
    std::vector<float> xs = {0.0f, -0.0f, 448.0f, -448.0f, 447.99f, 464.0f, 470.0f, 480.0f, 1e30f, -1e30f,
                             std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                             std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::min(),
                             0.015625f, 0.0156249f, 1.0f / 1024.0f, 1.0f / 1025.0f};
    // every grid value, every midpoint between neighbours, and the floats next to both
    for (int c = 0; c < 0x7F; ++c) {
        const float a = llmn::e4m3_to_f32(uint8_t(c));
        const float b = c + 1 < 0x7F ? llmn::e4m3_to_f32(uint8_t(c + 1)) : 480.0f;
        const float mid = 0.5f * (a + b);  // exact: both are short binary fractions
        for (float v : {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1000.0f), std::nextafter(a, 1000.0f)}) {
            xs.push_back(v);
            xs.push_back(-v);
        }
    }
    auto g = rng(7101);
    std::uniform_real_distribution<float> mant(1.0f, 2.0f);
    std::uniform_int_distribution<int> ex(-140, 12);
    for (int i = 0; i < 200000; ++i) {
        const float v = std::ldexp(mant(g), ex(g));
        xs.push_back(i % 2 ? v : -v);
    }
    for (float x : xs)
        ASSERT_EQ(kq::f32_to_e4m3_bits(x), llmn::f32_to_e4m3(x)) << "x = " << x << " (0x" << std::hex << bits(x) << ")";
    EXPECT_EQ(kq::f32_to_e4m3_bits(std::numeric_limits<float>::quiet_NaN()), llmn::f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()));
}

TEST(KvQuantCuda, Int8EncodeMatchesCpuCodec) {
    std::vector<float> ys;
    for (int k = -260; k <= 260; ++k) {
        const float h = 0.5f * float(k);  // integers and halves (ties away from zero)
        ys.insert(ys.end(), {h, std::nextafter(h, -1000.0f), std::nextafter(h, 1000.0f)});
    }
    auto g = rng(7102);
    std::uniform_real_distribution<float> u(-130.0f, 130.0f);
    for (int i = 0; i < 100000; ++i) ys.push_back(u(g));
    for (float y : ys) {
        const int8_t ref = llmn::f32_to_int8_code(y);
        ASSERT_EQ(kq::f32_to_int8_bits(y), uint8_t(ref)) << "y = " << y;
    }
}

TEST(KvQuantCuda, RowQuantizationMatchesKvQuantizeRow) {
    auto g = rng(7103);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_int_distribution<int> ex(-30, 30);
    int rows = 0;
    for (int32_t fmt : {LLMN_KV_INT8, LLMN_KV_FP8_E4M3}) {
        for (int32_t D : {64, 80, 96, 128, 256}) {
            for (int trial = 0; trial < 60; ++trial) {
                std::vector<float> x(static_cast<size_t>(D));
                const float mag = std::ldexp(1.0f, ex(g));
                for (auto& v : x) v = nd(g) * mag;
                if (trial == 0) std::fill(x.begin(), x.end(), 0.0f);                          // zero row
                if (trial == 1) for (auto& v : x) v = std::numeric_limits<float>::denorm_min();  // scale underflows
                if (trial == 2) x[size_t(D / 3)] = 3e38f;                                        // huge outlier
                if (trial == 3) for (auto& v : x) v *= 1e-38f;                                   // subnormal values
                if (trial % 5 == 4) x[size_t(trial % D)] *= 1000.0f;                             // outlier
                std::vector<uint8_t> ref(static_cast<size_t>(D)), got(static_cast<size_t>(D));
                const float ref_scale = llmn::kv_quantize_row(fmt, x.data(), D, ref.data());
                // as write_kernel: max |x| (any order), scale, codes
                float amax = 0.0f;
                for (int32_t d = D - 1; d >= 0; --d) amax = std::fmax(amax, std::fabs(x[size_t(d)]));
                const float scale = kq::row_scale(fmt, amax);
                for (int32_t d = 0; d < D; ++d) got[size_t(d)] = scale == 0.0f ? 0 : kq::quantize_value(fmt, x[size_t(d)], scale);
                ASSERT_EQ(bits(scale), bits(ref_scale)) << "format " << fmt << " D " << D << " trial " << trial;
                ASSERT_EQ(got, ref) << "format " << fmt << " D " << D << " trial " << trial;
                ++rows;
            }
        }
    }
    EXPECT_EQ(rows, 2 * 5 * 60);
}

TEST(KvQuantCuda, AppendAcceptanceMatchesCpuRule) {
    // The CPU rule (kv_cache.cpp stage_rows): q8 any finite; bf16 finite after rounding; f16 and KIVI
    // (staged as f16 residual rows) |x| < 65520.
    auto cpu_ok = [](int32_t fmt, float x) {
        if (llmn::kv_format_is_q8(fmt)) return std::isfinite(x);
        if (fmt == LLMN_KV_BF16) return std::isfinite(llmn::bf16_to_f32(llmn::f32_to_bf16(x)));
        return std::fabs(x) < 65520.0f;
    };
    std::vector<float> xs = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.996f, 65520.0f, -65520.0f, std::nextafter(65520.0f, 0.0f),
                             3.38e38f, std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                             from_bits(0x7F7F7FFFu), from_bits(0x7F7F8000u), from_bits(0xFF7F8000u), from_bits(0x7F7F0000u),
                             std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                             std::numeric_limits<float>::quiet_NaN(), from_bits(0xFFC00001u), from_bits(0x7F800001u),
                             std::numeric_limits<float>::denorm_min()};
    auto g = rng(7104);
    std::uniform_int_distribution<uint32_t> any;
    for (int i = 0; i < 100000; ++i) xs.push_back(from_bits(any(g)));
    for (int32_t fmt : {LLMN_KV_F16, LLMN_KV_BF16, LLMN_KV_INT8, LLMN_KV_FP8_E4M3, LLMN_KV_INT4, LLMN_KV_INT2}) {
        for (float x : xs) {
            const int st = kq::append_value_status(fmt, x);
            ASSERT_EQ(st == 0, cpu_ok(fmt, x)) << "format " << fmt << " x 0x" << std::hex << bits(x);
            if (std::isnan(x)) {
                EXPECT_EQ(st, 1);
            } else if (std::isinf(x)) {
                EXPECT_EQ(st, 2);
            } else if (st != 0) {
                EXPECT_EQ(st, 3);
            }
        }
    }
}

TEST(KvQuantCuda, RowPositions) {
    for (int32_t bs : {8, 16, 256})
        for (int64_t pos : {int64_t(0), int64_t(7), int64_t(8), int64_t(255), int64_t(256), int64_t(1) << 31}) {
            const kq::RowPos rp = kq::row_pos(pos, bs);
            EXPECT_EQ(rp.block_index * bs + rp.row, pos);
            EXPECT_TRUE(rp.row >= 0 && rp.row < bs);
        }
}
