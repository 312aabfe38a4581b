// The CUDA KIVI block codec (kernels/kv_cache/kv_kivi_cuda.cuh), checked on the CPU: the host+device
// functions the append kernel runs are compiled here by the host compiler and composed exactly as the
// kernel composes them (pieces staged from the block's rows, phase 1 over every statistic, phase 2
// over every output byte, each work item writing only its own bytes). The result must be the bytes of
// kv_kivi.hpp's kivi_quantize_k_block / kivi_quantize_v_block: codes, f16 scales and f16 minimums,
// for every block size, head_dim and value group, INT4 and INT2, on Gaussian data with outlier
// channels, constant channels and groups (scale 0), subnormal-only ranges, signed zeros, values near
// the f16 limit and exact ties of the rounding.
// Also: the integer f32 -> f16 conversion equals numeric.hpp's f32_to_f16 on every exponent.
// What this cannot check: the kernel's staging and addressing on a device (test_kv_cache_cuda.cpp).
#include "core/numeric.hpp"
#include "kernels/kv_cache/kv_kivi.hpp"
#include "kernels/kv_cache/kv_kivi_cuda.cuh"
#include "test_util.hpp"

#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace llmn_test;
namespace kc = llmn::kivi_cuda;

namespace {

// The kernel's composition, serially: every piece, phase 1 then phase 2.
void quantize_like_kernel(bool value, int32_t fmt, const std::vector<uint16_t>& rows, int32_t bs, int32_t D, int32_t group,
                          std::vector<uint8_t>& data, std::vector<uint16_t>& aux) {
    std::vector<uint16_t> stage(kc::kKiviPieceElems);
    std::vector<float> sc(kc::kKiviPieceStats), mn(kc::kKiviPieceStats);
    const int32_t n = kc::kivi_num_pieces(value, bs, D);
    for (int32_t i = 0; i < n; ++i) {
        const kc::KiviPiece p = kc::kivi_piece(value, bs, D, i);
        ASSERT_LE(p.rows * p.cols, kc::kKiviPieceElems);
        ASSERT_EQ(p.cols % (8 / kc::kivi_bits(fmt)), 0);
        std::fill(stage.begin(), stage.end(), uint16_t(0x7E00));  // NaN poison outside the piece
        for (int32_t t = 0; t < p.rows; ++t)
            for (int32_t c = 0; c < p.cols; ++c) stage[size_t(t) * p.cols + c] = rows[size_t(p.t0 + t) * D + p.c0 + c];
        const int32_t ns = kc::kivi_piece_num_stats(value, p, group);
        ASSERT_LE(ns, kc::kKiviPieceStats);
        for (int32_t s = 0; s < ns; ++s)
            kc::kivi_piece_stat(value, fmt, p, stage.data(), s, bs, D, group, aux.data(), sc.data(), mn.data());
        for (int32_t e = 0; e < kc::kivi_piece_num_bytes(fmt, p); ++e)
            kc::kivi_piece_byte(value, fmt, p, stage.data(), e, D, group, sc.data(), mn.data(), data.data());
    }
}

// One block's f16 rows of a chosen character.
std::vector<uint16_t> make_rows(std::mt19937_64& g, int32_t bs, int32_t D, int kind) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<uint16_t> r(size_t(bs) * D);
    for (int32_t t = 0; t < bs; ++t)
        for (int32_t d = 0; d < D; ++d) {
            float x = nd(g);
            switch (kind) {
                case 0: break;                                            // Gaussian
                case 1: if (d % 13 == 5) x *= 300.0f; break;              // outlier channels
                case 2: x = d % 3 == 0 ? 0.75f : x; break;                // constant channels (K scale 0)
                case 3: x *= 3e-7f; break;                                // f16 subnormals only
                case 4: x = float(int(x * 4.0f)) * 0.5f; break;           // few distinct values: ties
                case 5: x = (g() & 1) ? 0.0f : -0.0f; break;              // signed zeros only
                case 6: x = x > 0 ? 65504.0f : -65504.0f; break;          // f16 range limits
                case 7: x = t % 5 == 0 ? 2.0f : x * 1e-3f; break;         // constant tokens (V scale 0)
            }
            if (kind != 5 && g() % 53 == 0) x = -0.0f;
            r[size_t(t) * D + d] = llmn::f32_to_f16(x);
        }
    return r;
}

}  // namespace

TEST(KvKiviCuda, F32ToF16MatchesHostConversion) {
    auto g = rng(7301);
    std::uniform_int_distribution<uint32_t> any;
    std::vector<uint32_t> xs;
    // every f32 exponent, with the mantissa patterns around the f16 rounding points
    for (uint32_t e = 0; e < 256; ++e)
        for (uint32_t m : {0u, 1u, 0xFFFu, 0x1000u, 0x1001u, 0x2000u, 0x3000u, 0x7FFFFFu, 0x400000u, 0x401000u, 0x7FF000u,
                           0x7FE000u, 0x7FEFFFu})
            for (uint32_t s : {0u, 0x80000000u}) xs.push_back(s | (e << 23) | m);
    for (int i = 0; i < 400000; ++i) xs.push_back(any(g));
    // dense over the subnormal / small-normal f16 range, where the rounding position moves
    for (uint32_t u = 0x32F00000u; u < 0x38900000u; u += 0x777u) xs.push_back(u);
    for (uint32_t u : xs) {
        float f;
        std::memcpy(&f, &u, 4);
        ASSERT_EQ(kc::f32_to_f16_bits(f), llmn::f32_to_f16(f)) << "x bits 0x" << std::hex << u;
    }
}

TEST(KvKiviCuda, ScaleAndCodeMatchCpuCodec) {
    auto g = rng(7302);
    std::uniform_int_distribution<uint32_t> h16(0, 0x7BFF);  // finite non-negative halves
    for (int i = 0; i < 200000; ++i) {
        uint16_t a = uint16_t(h16(g)), b = uint16_t(h16(g));
        float lo = llmn::f16_to_f32(a), hi = llmn::f16_to_f32(b);
        if (g() & 1) lo = -lo;
        if (lo > hi) std::swap(lo, hi);
        for (int32_t qmax : {15, 3}) {
            const uint16_t s = kc::kivi_scale_bits(lo, hi, qmax);
            ASSERT_EQ(s, llmn::kivi_scale_f16(lo, hi, qmax)) << lo << " " << hi;
            const float sc = llmn::f16_to_f32(s);
            const float x = llmn::f16_to_f32(llmn::f32_to_f16(lo + (hi - lo) * float(g() % 1000) / 999.0f));
            ASSERT_EQ(kc::kivi_code(x, sc, lo, qmax), llmn::kivi_code(x, sc, lo, qmax)) << x << " " << sc << " " << lo;
        }
    }
}

TEST(KvKiviCuda, BlockQuantizationMatchesCpuCodecBytes) {
    auto g = rng(7303);
    int checked = 0;
    for (int32_t fmt : {LLMN_KV_INT4, LLMN_KV_INT2})
        for (int32_t bs : {8, 16, 32, 64, 128, 256})
            for (int32_t D : {64, 80, 96, 128, 256})
                for (int kind = 0; kind < 8; ++kind) {
                    if (bs >= 128 && kind % 2 == 1 && D != 96) continue;  // keep the run short; every kind still meets bs 256
                    const std::vector<uint16_t> rows = make_rows(g, bs, D, kind);
                    const size_t rb = size_t(D) * llmn::kivi_bits(fmt) / 8;
                    const std::string what = std::string(fmt == LLMN_KV_INT4 ? "INT4" : "INT2") + " bs " + std::to_string(bs) +
                                             " D " + std::to_string(D) + " kind " + std::to_string(kind);
                    // K: per channel over the block
                    {
                        std::vector<uint8_t> d0(rb * bs, 0xAB), d1(rb * bs, 0xCD);
                        std::vector<uint16_t> a0(size_t(2) * D, 0xEEEE), a1(size_t(2) * D, 0x1111);
                        llmn::kivi_quantize_k_block(fmt, rows.data(), bs, D, d0.data(), a0.data());
                        quantize_like_kernel(false, fmt, rows, bs, D, 0, d1, a1);
                        ASSERT_EQ(d1, d0) << "K codes " << what;
                        ASSERT_EQ(a1, a0) << "K scales/minimums " << what;
                        ++checked;
                    }
                    // V: per token in groups
                    for (int32_t group : {32, 64, 128}) {
                        if (D % group != 0) continue;
                        const size_t G = size_t(D / group);
                        std::vector<uint8_t> d0(rb * bs, 0xAB), d1(rb * bs, 0xCD);
                        std::vector<uint16_t> a0(2 * bs * G, 0xEEEE), a1(2 * bs * G, 0x1111);
                        llmn::kivi_quantize_v_block(fmt, rows.data(), bs, D, group, d0.data(), a0.data());
                        quantize_like_kernel(true, fmt, rows, bs, D, group, d1, a1);
                        ASSERT_EQ(d1, d0) << "V codes " << what << " group " << group;
                        ASSERT_EQ(a1, a0) << "V scales/minimums " << what << " group " << group;
                        ++checked;
                    }
                }
    EXPECT_GT(checked, 500);
}

// The pieces tile the block exactly once (every statistic and byte has one owner) and fit the
// kernel's shared-memory arrays, for every geometry.
TEST(KvKiviCuda, PiecesCoverBlockOnce) {
    for (int32_t fmt : {LLMN_KV_INT4, LLMN_KV_INT2})
        for (int32_t bs : {8, 16, 32, 64, 128, 256})
            for (int32_t D : {64, 80, 96, 128, 256})
                for (bool value : {false, true}) {
                    std::vector<int> seen(size_t(bs) * D, 0);
                    for (int32_t i = 0; i < kc::kivi_num_pieces(value, bs, D); ++i) {
                        const kc::KiviPiece p = kc::kivi_piece(value, bs, D, i);
                        EXPECT_LE(p.rows * p.cols, kc::kKiviPieceElems);
                        EXPECT_EQ(p.cols % (8 / kc::kivi_bits(fmt)), 0);
                        for (int32_t group : {32, 64, 128})
                            if (value && D % group == 0) EXPECT_LE(kc::kivi_piece_num_stats(true, p, group), kc::kKiviPieceStats);
                        if (!value) EXPECT_LE(kc::kivi_piece_num_stats(false, p, 0), kc::kKiviPieceStats);
                        for (int32_t t = 0; t < p.rows; ++t)
                            for (int32_t c = 0; c < p.cols; ++c) ++seen[size_t(p.t0 + t) * D + p.c0 + c];
                    }
                    for (int s : seen) ASSERT_EQ(s, 1) << "bs " << bs << " D " << D << " value " << value;
                }
}
