// KIVI INT4 / INT2 KV cache formats (CPU): the codec, the f16 residual block and its quantization when
// a block fills (every block size, lengths around block boundaries), bulk vs one-at-a-time appends
// (bitwise equal read-back AND attention), fork with a partial residual, truncate into a quantized
// block, all-or-nothing rejection of NaN/Inf, creation rules, planner sizes, and the fused attention
// (scalar and AVX2) against
//  (1) a float64 reference over the read-back (dequantized) cache within a derived fp32 bound
//      (FusedMatchesFloat64Reference), and
//  (2) the same attention on an f16 cache: the quantization error itself (AccuracyVsF16, bounds
//      stated in docs/kv-quantization.md), including per-channel vs per-token INT4 keys on keys with
//      outlier channels.
#include "core/error.hpp"
#include "core/numeric.hpp"
#include "cpu/cpu_runtime.hpp"
#include "kernels/kv_cache/kv_cache.hpp"
#include "kernels/kv_cache/kv_kivi.hpp"
#include "kernels/kv_cache/kv_kivi_stage.hpp"
#include "attention_reference.hpp"
#include "kv_test_util.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using namespace llmn_test;

namespace {

// Cache descriptor: max_batch 8 (one residual slot per live sequence), value groups of `group`.
llmn_kv_cache_desc make_desc(int32_t layers, int32_t heads, int32_t dim, int32_t bs, int32_t kf, int32_t vf,
                             int64_t tokens, int32_t group = 32) {
    return kv_desc(layers, heads, dim, bs, kf, vf, tokens, 8, group);
}

// The KIVI attention kernels: scalar, AVX2 and AVX-512 (each where the CPU has it).
std::vector<int32_t> kivi_isas() { return isas_to_test(); }

// Expected read-back of a sequence whose f16-rounded inputs are x ([len][H][D], one side): full blocks
// through the codec (kv_kivi.hpp, checked on its own by CodecErrorWithinHalfStep), the partial block as
// f16. Non-KIVI formats: f16 rounding (only F16 is modelled here).
std::vector<float> model_side(int32_t fmt, bool value, const std::vector<float>& x, int64_t len, int32_t H, int32_t D,
                              int32_t bs, int32_t group) {
    std::vector<float> out(size_t(len) * H * D);
    for (size_t i = 0; i < out.size(); ++i) out[i] = f16r(x[i]);
    if (!llmn::kv_format_is_kivi(fmt)) return out;
    const int64_t full = len / bs;
    const int32_t bits = llmn::kivi_bits(fmt), G = D / group;
    std::vector<uint16_t> rows(size_t(bs) * D), aux(size_t(2) * std::max(D, bs * G));
    std::vector<uint8_t> data(size_t(bs) * D * bits / 8);
    std::vector<float> r(static_cast<size_t>(D));
    for (int64_t j = 0; j < full; ++j)
        for (int32_t h = 0; h < H; ++h) {
            for (int32_t t = 0; t < bs; ++t)
                for (int32_t d = 0; d < D; ++d)
                    rows[size_t(t) * D + d] = llmn::f32_to_f16(x[size_t(((j * bs + t) * H + h) * D + d)]);
            if (value) llmn::kivi_quantize_v_block(fmt, rows.data(), bs, D, group, data.data(), aux.data());
            else llmn::kivi_quantize_k_block(fmt, rows.data(), bs, D, data.data(), aux.data());
            for (int32_t t = 0; t < bs; ++t) {
                if (value) llmn::kivi_dequant_v_row(fmt, data.data(), aux.data(), bs, t, D, group, r.data());
                else llmn::kivi_dequant_k_row(fmt, data.data(), aux.data(), t, D, r.data());
                std::copy(r.begin(), r.end(), out.begin() + ((j * bs + t) * H + h) * D);
            }
        }
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------- codec

// Per group: codes in [0, qmax]; min stored exactly; scale = the smallest f16 >= (max - min) / qmax;
// every element dequantizes within scale / 2 (+ f32 rounding of code * scale + min) of its f16 input.
// kivi_code's inline rounding equals clamp(std::round((x - mn) / scale), 0, qmax) (the definition in
// kv_kivi.hpp's header) on random inputs and on quotients next to every half-integer.
TEST(KvKivi, CodeRoundingIsRoundHalfAwayClamped) {
    auto reference = [](float x, float scale, float mn, int32_t qmax) -> int {
        if (scale == 0.0f) return 0;
        const double c = round_half_away_ref((x - mn) / scale);
        return c < 0.0 ? 0 : c > double(qmax) ? qmax : int(c);
    };
    std::mt19937_64 g(test_seed());
    std::uniform_real_distribution<float> u(-3.0f, 20.0f);
    int64_t checked = 0;
    for (int32_t qmax : {3, 15}) {
        for (int i = 0; i < 200000; ++i) {
            const float scale = std::ldexp(1.0f + float(g() % 1024) / 1024.0f, int(g() % 30) - 20);
            const float mn = u(g) * scale, x = mn + u(g) * scale;
            ASSERT_EQ(int(llmn::kivi_code(x, scale, mn, qmax)), reference(x, scale, mn, qmax)) << x << " " << scale << " " << mn;
            ++checked;
        }
        for (int k = -1; k <= qmax + 1; ++k)  // (x - mn) / scale = k + 0.5 and its neighbours (scale 1, mn 0)
            for (float v : {float(k) + 0.5f, std::nextafter(float(k) + 0.5f, -100.0f), std::nextafter(float(k) + 0.5f, 100.0f),
                            float(k), std::nextafter(float(k), -100.0f)}) {
                ASSERT_EQ(int(llmn::kivi_code(v, 1.0f, 0.0f, qmax)), reference(v, 1.0f, 0.0f, qmax)) << v;
                ++checked;
            }
    }
    EXPECT_GT(checked, 400000);
}

#if defined(__x86_64__) || defined(_M_X64)  // the AVX2 files exist in x86 builds only
// The AVX2 block quantizers (kv_kivi_avx2.cpp, used by CPU caches on AVX2 machines) write the scalar
// codec's bytes: every block size, head_dim and value group, INT4 and INT2, on Gaussian, outlier,
// constant, signed-zero, subnormal and f16-limit data.
TEST(KvKivi, Avx2BlockQuantizersMatchScalarBytes) {
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    if (info.detected_isa < LLMN_CPU_ISA_AVX2) GTEST_SKIP() << "this CPU has no AVX2/F16C: the scalar codec is the only one";
    std::mt19937_64 g(test_seed() + 5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    int64_t blocks = 0;
    for (int32_t fmt : {LLMN_KV_INT4, LLMN_KV_INT2})
        for (int32_t bs : {8, 16, 64, 256})
            for (int32_t D : {64, 80, 96, 128, 256})
                for (int kind = 0; kind < 6; ++kind) {
                    std::vector<uint16_t> rows(size_t(bs) * D);
                    for (size_t i = 0; i < rows.size(); ++i) {
                        float x = nd(g);
                        if (kind == 1 && i % size_t(D) < 3) x *= 20.0f;                      // outlier channels
                        if (kind == 2) x = float(int(i % size_t(D)) % 5) * 0.25f;             // constant channels / groups
                        if (kind == 3) x = (g() % 3 == 0) ? ((g() & 1) ? -0.0f : 0.0f) : std::fabs(x) * ((g() & 1) ? 1e-3f : -1e-3f);
                        if (kind == 4) x *= 3e-6f;                                            // f16 subnormals
                        if (kind == 5) x = (g() & 1) ? 65504.0f * ((g() & 1) ? 1.0f : -1.0f) : x;  // f16 limits
                        rows[i] = llmn::f32_to_f16(x);
                    }
                    const int64_t rb = int64_t(D) * llmn::kivi_bits(fmt) / 8;
                    std::vector<uint8_t> d0(size_t(rb * bs), 0xAB), d1(size_t(rb * bs), 0xCD);
                    std::vector<uint16_t> a0(size_t(2 * D), 0x7e00), a1(size_t(2 * D), 0x7e01);
                    llmn::kivi_quantize_k_block(fmt, rows.data(), bs, D, d0.data(), a0.data());
                    llmn::kivi_quantize_k_block_avx2(fmt, rows.data(), bs, D, d1.data(), a1.data());
                    ASSERT_EQ(d0, d1) << "K codes, fmt " << fmt << " bs " << bs << " D " << D << " kind " << kind;
                    ASSERT_EQ(a0, a1) << "K scales/minimums, fmt " << fmt << " bs " << bs << " D " << D << " kind " << kind;
                    for (int32_t group : {32, 64, 128}) {
                        if (D % group != 0) continue;
                        const size_t na = size_t(2) * bs * (D / group);
                        std::vector<uint16_t> v0(na, 0x7e00), v1(na, 0x7e01);
                        std::fill(d0.begin(), d0.end(), 0xAB);
                        std::fill(d1.begin(), d1.end(), 0xCD);
                        llmn::kivi_quantize_v_block(fmt, rows.data(), bs, D, group, d0.data(), v0.data());
                        llmn::kivi_quantize_v_block_avx2(fmt, rows.data(), bs, D, group, d1.data(), v1.data());
                        ASSERT_EQ(d0, d1) << "V codes, fmt " << fmt << " bs " << bs << " D " << D << " group " << group << " kind " << kind;
                        ASSERT_EQ(v0, v1) << "V scales/minimums, fmt " << fmt << " bs " << bs << " D " << D << " group " << group
                                          << " kind " << kind;
                    }
                    ++blocks;
                }
    EXPECT_EQ(blocks, 2 * 4 * 5 * 6);
}
#endif

TEST(KvKivi, CodecErrorWithinHalfStep) {
    auto g = rng(1);
    for (int32_t fmt : {LLMN_KV_INT4, LLMN_KV_INT2})
        for (int32_t bs : {8, 16, 256})
            for (int32_t D : {64, 128}) {
                std::vector<float> x = gaussian(g, size_t(bs) * D, 1.0f);
                for (int32_t t = 0; t < bs; ++t) x[size_t(t) * D + 3] *= 15.0f;  // an outlier channel
                x[5] = 0.0f;
                for (int32_t t = 0; t < bs; ++t) x[size_t(t) * D + 7] = 2.5f;  // constant channel: scale 0
                std::vector<uint16_t> rows(x.size());
                for (size_t i = 0; i < x.size(); ++i) rows[i] = llmn::f32_to_f16(x[i]);
                const int32_t bits = llmn::kivi_bits(fmt), qmax = llmn::kivi_qmax(fmt);
                std::vector<uint8_t> data(size_t(bs) * D * bits / 8);
                std::vector<uint16_t> aux(size_t(2) * std::max(D, bs * D / 32));
                std::vector<float> r(static_cast<size_t>(D));
                for (int side = 0; side < 2; ++side) {
                    const int32_t group = 32, G = D / group;
                    if (side == 0) llmn::kivi_quantize_k_block(fmt, rows.data(), bs, D, data.data(), aux.data());
                    else llmn::kivi_quantize_v_block(fmt, rows.data(), bs, D, group, data.data(), aux.data());
                    for (int32_t t = 0; t < bs; ++t) {
                        if (side == 0) llmn::kivi_dequant_k_row(fmt, data.data(), aux.data(), t, D, r.data());
                        else llmn::kivi_dequant_v_row(fmt, data.data(), aux.data(), bs, t, D, group, r.data());
                        for (int32_t d = 0; d < D; ++d) {
                            // the group's statistics, recomputed in double
                            double lo = 1e30, hi = -1e30;
                            if (side == 0)
                                for (int32_t u = 0; u < bs; ++u) {
                                    lo = std::min(lo, double(llmn::f16_to_f32(rows[size_t(u) * D + d])));
                                    hi = std::max(hi, double(llmn::f16_to_f32(rows[size_t(u) * D + d])));
                                }
                            else
                                for (int32_t i = 0; i < group; ++i) {
                                    const double y = llmn::f16_to_f32(rows[size_t(t) * D + (d / group) * group + i]);
                                    lo = std::min(lo, y);
                                    hi = std::max(hi, y);
                                }
                            const size_t si = side == 0 ? size_t(d) : size_t(t) * G + d / group;
                            const size_t mi = side == 0 ? size_t(D + d) : size_t(bs) * G + size_t(t) * G + d / group;
                            const double sc = llmn::f16_to_f32(aux[si]), mn = llmn::f16_to_f32(aux[mi]);
                            ASSERT_EQ(mn, lo);
                            const double need = (hi - lo) / qmax;
                            ASSERT_GE(sc, need);
                            if (need > 0) ASSERT_LT(llmn::f16_to_f32(uint16_t(aux[si] - 1)), need) << "scale is the smallest f16 >= range / qmax";
                            else ASSERT_EQ(sc, 0.0);
                            const uint8_t c = llmn::kivi_get(data.data() + int64_t(t) * D * bits / 8, d, bits);
                            ASSERT_LE(c, qmax);
                            const double xin = llmn::f16_to_f32(rows[size_t(t) * D + d]);
                            const double err = std::fabs(double(r[size_t(d)]) - xin);
                            ASSERT_LE(err, sc / 2 * (1 + 1e-6) + 4 * kU * (std::fabs(xin) + qmax * sc))
                                << fmt_name(fmt) << " side " << side << " bs " << bs << " t " << t << " d " << d;
                        }
                    }
                }
            }
}

// ---------------------------------------------------------------------------------------------- creation / planner

TEST(KvKivi, CreationRules) {
    Ctx ctx;
    llmn_kv_cache cache = nullptr;
    // V INT4/INT2 needs value_group_size 32/64/128 dividing head_dim; the message names field and value.
    llmn_kv_cache_desc d = make_desc(1, 2, 128, 16, LLMN_KV_F16, LLMN_KV_INT2, 64, 0);
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("value_group_size"), std::string::npos) << last_error();
    EXPECT_NE(last_error().find("got 0"), std::string::npos) << last_error();
    d = make_desc(1, 2, 96, 16, LLMN_KV_INT4, LLMN_KV_INT4, 64, 64);
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("value_group_size = 64"), std::string::npos) << last_error();
    EXPECT_NE(last_error().find("head_dim = 96"), std::string::npos) << last_error();
    d = make_desc(1, 2, 128, 16, LLMN_KV_INT4, LLMN_KV_INT4, 64, 48);
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("value_group_size"), std::string::npos) << last_error();
    EXPECT_EQ(cache, nullptr);
    // K INT4/INT2 has no group: every head_dim (incl. 80) and block size works.
    for (int32_t dim : {64, 80, 96, 128, 256})
        for (int32_t bs : {8, 16, 32, 64, 128, 256})
            for (int32_t kf : {LLMN_KV_INT4, LLMN_KV_INT2}) {
                d = make_desc(1, 1, dim, bs, kf, dim % 32 == 0 ? LLMN_KV_INT2 : LLMN_KV_F16, bs, 32);
                LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_OK);
                llmn_kv_cache_destroy(cache);
                cache = nullptr;
            }
    // Residual slots = max_batch live sequences: add and fork beyond it fail clearly, nothing changes.
    d = make_desc(1, 1, 64, 8, LLMN_KV_INT4, LLMN_KV_INT4, 64, 32);
    d.max_batch = 2;
    LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &cache));
    int64_t a = 0, b = 0, c = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(cache, &a));
    LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(cache, &b));
    LLMN_EXPECT_STATUS(llmn_kv_cache_add_sequence(cache, &c), LLMN_STATUS_CAPACITY_EXCEEDED);
    EXPECT_NE(last_error().find("max_batch = 2"), std::string::npos) << last_error();
    LLMN_EXPECT_STATUS(llmn_kv_cache_fork_sequence(cache, a, &c), LLMN_STATUS_CAPACITY_EXCEEDED);
    EXPECT_NE(last_error().find("max_batch = 2"), std::string::npos) << last_error();
    llmn_kv_cache_stats st{};
    LLMN_ASSERT_OK(llmn_kv_cache_get_stats(cache, &st));
    EXPECT_EQ(st.num_sequences, 2);
    LLMN_ASSERT_OK(llmn_kv_cache_remove_sequence(cache, b));
    LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(cache, a, &c));  // the freed slot is reused
    llmn_kv_cache_destroy(cache);
}

// CUDA caches take KIVI sides too (device quantize-on-append: kv_append.cu; byte equality with this
// CPU cache: test_kv_cache_cuda.cpp), alone and mixed with 16-bit and 8-bit sides; the value-group
// rules are the same as on the CPU.
TEST(KvKivi, CudaAcceptsKiviAtCreation) {
    LLMN_REQUIRE_CUDA();
    llmn_context gpu = nullptr;
    LLMN_ASSERT_OK(llmn_context_create(LLMN_BACKEND_CUDA, 0, &gpu));
    for (int32_t f : {LLMN_KV_INT4, LLMN_KV_INT2})
        for (int32_t other : std::initializer_list<int32_t>{LLMN_KV_F16, LLMN_KV_BF16, LLMN_KV_INT8, LLMN_KV_FP8_E4M3, f}) {
            for (bool k_side : {false, true}) {
                llmn_kv_cache cache = nullptr;
                llmn_kv_cache_desc d = k_side ? make_desc(1, 2, 128, 16, f, other, 64, 32) : make_desc(1, 2, 128, 16, other, f, 64, 32);
                LLMN_EXPECT_STATUS(llmn_kv_cache_create(gpu, &d, &cache), LLMN_STATUS_OK);
                EXPECT_NE(cache, nullptr);
                llmn_kv_cache_destroy(cache);
            }
        }
    llmn_kv_cache cache = nullptr;
    llmn_kv_cache_desc d = make_desc(1, 2, 96, 16, LLMN_KV_INT4, LLMN_KV_INT4, 64, 64);
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(gpu, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("value_group_size = 64"), std::string::npos) << last_error();
    EXPECT_EQ(cache, nullptr);
    llmn_context_destroy(gpu);
}

// Llama-3-8B head (8 kv heads x 128), block 16, value groups of 32:
//   INT4 tile: K codes 16 x 64 = 1024 B + K aux 128 x 2 x 2 = 512 B; V codes 1024 B + V aux 16 x 4 x 2 x 2
//   = 256 B -> 2816 B per (block, head) -> 2816 x 8 / 16 = 1408 B per token per layer (0.34x f16's 4096).
//   INT2: 512 + 512 + 512 + 256 = 1792 -> 896 B (0.22x). K INT4 + V f16: 1536 + 4096 = 5632 -> 2816 B; K f16 + V INT2: 4096 + 768 -> 2432 B.
// Residual: one f16 tile per KIVI side per (slot, layer, head): 16 x 128 x 2 = 4096 B per side.
TEST(KvKivi, PlannerAndPoolSizes) {
    struct Case { int32_t kf, vf; int64_t bytes, res_per_slot_layer_head; };
    for (const Case& c : {Case{LLMN_KV_INT4, LLMN_KV_INT4, 1408, 8192}, Case{LLMN_KV_INT2, LLMN_KV_INT2, 896, 8192},
                          Case{LLMN_KV_INT4, LLMN_KV_F16, 2816, 4096}, Case{LLMN_KV_F16, LLMN_KV_INT2, 2432, 4096}}) {
        llmn_kv_cache_desc d = make_desc(32, 8, 128, 16, c.kf, c.vf, 0, 32);
        d.max_batch = 4;
        int64_t bytes = 0, tokens = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_bytes_per_token(&d, &bytes));
        EXPECT_EQ(bytes, c.bytes) << fmt_name(c.kf) << "/" << fmt_name(c.vf);
        const int64_t residual = 4 * 32 * 8 * c.res_per_slot_layer_head;
        const int64_t budget = int64_t(1) << 30;
        LLMN_ASSERT_OK(llmn_kv_cache_tokens_for_budget(&d, budget, &tokens));
        EXPECT_EQ(tokens, (budget - residual) / (c.bytes * 16 * 32) * 16) << fmt_name(c.kf) << "/" << fmt_name(c.vf);
        LLMN_ASSERT_OK(llmn_kv_cache_tokens_for_budget(&d, residual, &tokens));
        EXPECT_EQ(tokens, 0);
    }
    // The pool of a created cache = blocks + residual, and capacity_bytes pays the residual first.
    Ctx ctx;
    llmn_kv_cache_desc d = make_desc(2, 3, 64, 8, LLMN_KV_INT2, LLMN_KV_INT4, 0, 32);
    d.max_batch = 3;
    int64_t bytes = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_bytes_per_token(&d, &bytes));
    const int64_t residual = 3 * 2 * 3 * (2 * 8 * 64 * 2);
    d.capacity_bytes = residual + 5 * bytes * 8 * 2 + 100;  // room for 5 blocks
    int64_t tokens = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_tokens_for_budget(&d, d.capacity_bytes, &tokens));
    EXPECT_EQ(tokens, 40);
    llmn_kv_cache cache = nullptr;
    LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &cache));
    llmn_kv_cache_stats st{};
    LLMN_ASSERT_OK(llmn_kv_cache_get_stats(cache, &st));
    EXPECT_EQ(st.total_blocks, 5);
    EXPECT_EQ(st.pool_bytes, residual + 5 * bytes * 8 * 2);
    llmn_kv_cache_destroy(cache);
}

// ---------------------------------------------------------------------------------------------- cache data path

// Every block size; lengths just below, at and above block boundaries; one-at-a-time vs bulk (random
// chunks) appends into two caches: bitwise-equal read-back, equal to the model (codec per full block,
// f16 residual), and bitwise-equal attention (scalar and AVX2, splits 1 and 3).
TEST(KvKivi, OneByOneEqualsBulkEveryBlockSize) {
    CpuStateGuard guard;
    Ctx ctx;
    auto g = rng(3);
    const int32_t H = 2, L = 2, D = 64, HD = H * D, G = 2;
    const int32_t fm[][2] = {{LLMN_KV_INT4, LLMN_KV_INT4}, {LLMN_KV_INT2, LLMN_KV_INT2}, {LLMN_KV_INT4, LLMN_KV_F16},
                             {LLMN_KV_F16, LLMN_KV_INT2}, {LLMN_KV_INT2, LLMN_KV_INT8}};
    for (int32_t bs : {8, 16, 32, 64, 128, 256})
        for (const auto& f2 : fm) {
            if (quick() && bs > 32 && f2[0] != LLMN_KV_INT4) continue;
            SCOPED_TRACE(std::string(fmt_name(f2[0])) + "/" + fmt_name(f2[1]) + " bs " + std::to_string(bs));
            const int32_t group = f2[1] == LLMN_KV_INT2 ? 64 : 32;
            const std::vector<int64_t> lens = {bs - 1, bs, bs + 1, 2 * bs + 3};
            const int64_t T = lens.back();
            llmn_kv_cache_desc d = make_desc(L, H, D, bs, f2[0], f2[1], 2 * 4 * (T + bs), group);
            llmn_kv_cache one = nullptr, bulk = nullptr;
            LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &one));
            LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &bulk));
            std::vector<int64_t> ids1, ids2;
            std::vector<std::vector<float>> ks, vs;
            for (int64_t len : lens) {
                int64_t a = 0, b = 0;
                LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(one, &a));
                LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(bulk, &b));
                ids1.push_back(a);
                ids2.push_back(b);
                for (int32_t layer = 0; layer < L; ++layer) {
                    const int64_t n = len - layer;  // per-layer lengths differ
                    std::vector<float> k = gaussian(g, size_t(n) * HD, 1.0f), v = gaussian(g, size_t(n) * HD, 1.0f);
                    for (int64_t t = 0; t < n; ++t) append(ctx.h, one, a, layer, &k[size_t(t) * HD], &v[size_t(t) * HD], 1, HD);
                    for (int64_t t = 0; t < n;) {
                        const int32_t c = int32_t(std::min<int64_t>(n - t, 1 + int64_t(g() % uint64_t(bs + 5))));
                        append(ctx.h, bulk, b, layer, &k[size_t(t) * HD], &v[size_t(t) * HD], c, HD);
                        t += c;
                    }
                    if (layer == 1) {
                        ks.push_back(k);
                        vs.push_back(v);
                    }
                    std::vector<float> k1, v1, k2, v2;
                    read(ctx.h, one, a, layer, 0, n, HD, k1, v1);
                    read(ctx.h, bulk, b, layer, 0, n, HD, k2, v2);
                    ASSERT_TRUE(bitwise_equal(k1, k2) && bitwise_equal(v1, v2)) << "len " << len << " layer " << layer;
                    if (f2[1] == LLMN_KV_INT8) continue;  // INT8 read-back model: test_kv_quant.cpp
                    ASSERT_TRUE(bitwise_equal(k1, model_side(f2[0], false, k, n, H, D, bs, group))) << "K len " << len;
                    ASSERT_TRUE(bitwise_equal(v1, model_side(f2[1], true, v, n, H, D, bs, group))) << "V len " << len;
                }
            }
            const std::vector<float> q = gaussian(g, size_t(lens.size()) * H * G * D, 1.0f);
            for (int32_t isa : kivi_isas()) {
                LLMN_ASSERT_OK(llmn_set_cpu_isa(isa));
                for (int32_t splits : {1, 3}) {
                    const std::vector<float> o1 = attention(ctx.h, one, ids1, 1, H * G, D, 1, q, splits);
                    const std::vector<float> o2 = attention(ctx.h, bulk, ids2, 1, H * G, D, 1, q, splits);
                    ASSERT_TRUE(bitwise_equal(o1, o2)) << isa_name(isa) << " splits " << splits;
                    for (float x : o1) ASSERT_TRUE(std::isfinite(x));
                }
            }
            llmn_kv_cache_destroy(one);
            llmn_kv_cache_destroy(bulk);
        }
}

// Fork a sequence whose newest block is a partial residual (plus, in layer 1, a quantized full
// block shared with the child), then append different data to parent and child across the block
// boundary: each reads back as its own model, the shared prefix unchanged.
TEST(KvKivi, ForkWithPartialResidualThenIndependentAppends) {
    Ctx ctx;
    auto g = rng(4);
    const int32_t H = 2, D = 128, HD = H * D, bs = 16, group = 64;
    for (int32_t kf : {LLMN_KV_INT4, LLMN_KV_INT2}) {
        llmn_kv_cache_desc d = make_desc(2, H, D, bs, kf, kf, 16 * bs, group);
        llmn_kv_cache cache = nullptr;
        LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &cache));
        int64_t p = 0, c = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(cache, &p));
        std::vector<float> k[2], v[2];
        for (int32_t layer = 0; layer < 2; ++layer) {
            const int64_t n = layer == 0 ? 5 : bs + 7;
            k[layer] = gaussian(g, size_t(n) * HD, 1.0f);
            v[layer] = gaussian(g, size_t(n) * HD, 1.0f);
            append(ctx.h, cache, p, layer, k[layer].data(), v[layer].data(), int32_t(n), HD);
        }
        LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(cache, p, &c));
        std::vector<float> kp[2] = {k[0], k[1]}, vp[2] = {v[0], v[1]}, kc[2] = {k[0], k[1]}, vc[2] = {v[0], v[1]};
        for (int32_t layer = 0; layer < 2; ++layer) {
            const int32_t n = 20;  // crosses the boundary of the residual block in both layers
            std::vector<float> a = gaussian(g, size_t(n) * HD, 1.0f), b = gaussian(g, size_t(n) * HD, 1.0f);
            std::vector<float> a2 = gaussian(g, size_t(n) * HD, 2.0f), b2 = gaussian(g, size_t(n) * HD, 2.0f);
            append(ctx.h, cache, p, layer, a.data(), b.data(), n, HD);
            append(ctx.h, cache, c, layer, a2.data(), b2.data(), n, HD);
            kp[layer].insert(kp[layer].end(), a.begin(), a.end());
            vp[layer].insert(vp[layer].end(), b.begin(), b.end());
            kc[layer].insert(kc[layer].end(), a2.begin(), a2.end());
            vc[layer].insert(vc[layer].end(), b2.begin(), b2.end());
        }
        for (int32_t layer = 0; layer < 2; ++layer) {
            const int64_t n = int64_t(kp[layer].size()) / HD;
            std::vector<float> rk, rv;
            read(ctx.h, cache, p, layer, 0, n, HD, rk, rv);
            EXPECT_TRUE(bitwise_equal(rk, model_side(kf, false, kp[layer], n, H, D, bs, group))) << "parent K layer " << layer;
            EXPECT_TRUE(bitwise_equal(rv, model_side(kf, true, vp[layer], n, H, D, bs, group))) << "parent V layer " << layer;
            read(ctx.h, cache, c, layer, 0, n, HD, rk, rv);
            EXPECT_TRUE(bitwise_equal(rk, model_side(kf, false, kc[layer], n, H, D, bs, group))) << "child K layer " << layer;
            EXPECT_TRUE(bitwise_equal(rv, model_side(kf, true, vc[layer], n, H, D, bs, group))) << "child V layer " << layer;
        }
        llmn_kv_cache_destroy(cache);
    }
}

// Truncate into an already-quantized block: its kept rows come back into the residual as the f16
// rounding of their dequantized values (read-back unchanged for kept rows); when the block refills it
// is quantized again FROM THOSE VALUES (double quantization: the model quantizes the dequantized rows).
TEST(KvKivi, TruncateIntoQuantizedBlock) {
    Ctx ctx;
    auto g = rng(5);
    const int32_t H = 1, D = 64, HD = H * D, group = 32;
    for (int32_t bs : {8, 16, 64})
        for (int32_t kf : {LLMN_KV_INT4, LLMN_KV_INT2}) {
            SCOPED_TRACE(std::string(fmt_name(kf)) + " bs " + std::to_string(bs));
            llmn_kv_cache_desc d = make_desc(1, H, D, bs, kf, kf, 8 * bs, group);
            llmn_kv_cache cache = nullptr;
            LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &cache));
            int64_t id = 0, fork = 0;
            LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(cache, &id));
            const int64_t n = 2 * bs + bs / 2, cut = bs + bs / 2 - 1;
            std::vector<float> k = gaussian(g, size_t(n) * HD, 1.0f), v = gaussian(g, size_t(n) * HD, 1.0f);
            append(ctx.h, cache, id, 0, k.data(), v.data(), int32_t(n), HD);
            LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(cache, id, &fork));  // shares the quantized blocks
            std::vector<float> k0, v0;
            read(ctx.h, cache, id, 0, 0, n, HD, k0, v0);
            LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(cache, id, cut));
            std::vector<float> k1, v1;
            read(ctx.h, cache, id, 0, 0, cut, HD, k1, v1);
            // kept rows: the dequantized values, f16-rounded for the rows now in the residual
            for (int64_t i = 0; i < cut * HD; ++i) {
                const bool res = i / HD >= bs;
                ASSERT_EQ(k1[size_t(i)], res ? f16r(k0[size_t(i)]) : k0[size_t(i)]) << "K row " << i / HD;
                ASSERT_EQ(v1[size_t(i)], res ? f16r(v0[size_t(i)]) : v0[size_t(i)]) << "V row " << i / HD;
            }
            // refill past the boundary: block 1 is quantized from the (dequantized) residual rows
            std::vector<float> k2 = gaussian(g, size_t(bs) * HD, 1.0f), v2 = gaussian(g, size_t(bs) * HD, 1.0f);
            append(ctx.h, cache, id, 0, k2.data(), v2.data(), bs, HD);
            std::vector<float> mk(k1), mv(v1);
            mk.insert(mk.end(), k2.begin(), k2.end());
            mv.insert(mv.end(), v2.begin(), v2.end());
            const int64_t n2 = cut + bs;
            std::vector<float> k3, v3;
            read(ctx.h, cache, id, 0, 0, n2, HD, k3, v3);
            const std::vector<float> ek = model_side(kf, false, mk, n2, H, D, bs, group);
            const std::vector<float> ev = model_side(kf, true, mv, n2, H, D, bs, group);
            for (int64_t i = 0; i < n2 * HD; ++i) {
                // block 0 (never re-quantized: the model would quantize its dequantized values again)
                if (i / HD < bs) {
                    ASSERT_EQ(k3[size_t(i)], k0[size_t(i)]);
                    ASSERT_EQ(v3[size_t(i)], v0[size_t(i)]);
                } else {
                    ASSERT_EQ(k3[size_t(i)], ek[size_t(i)]) << "K row " << i / HD;
                    ASSERT_EQ(v3[size_t(i)], ev[size_t(i)]) << "V row " << i / HD;
                }
            }
            // the fork still reads its original (copy-on-write kept the shared quantized block)
            std::vector<float> kf2, vf2;
            read(ctx.h, cache, fork, 0, 0, n, HD, kf2, vf2);
            EXPECT_TRUE(bitwise_equal(kf2, k0) && bitwise_equal(vf2, v0));
            llmn_kv_cache_destroy(cache);
        }
}

// NaN / Inf / f16 overflow anywhere in K or V: INVALID_ARGUMENT naming the element, nothing written
// (read-back bitwise unchanged, length unchanged), including an append that would have filled and
// quantized the residual block.
TEST(KvKivi, NonFiniteRejectedCacheUnchanged) {
    Ctx ctx;
    auto g = rng(6);
    const int32_t H = 2, D = 64, HD = H * D, bs = 8;
    llmn_kv_cache_desc d = make_desc(1, H, D, bs, LLMN_KV_INT4, LLMN_KV_INT2, 64, 32);
    llmn_kv_cache cache = nullptr;
    LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &cache));
    int64_t id = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(cache, &id));
    std::vector<float> k = gaussian(g, size_t(13) * HD, 1.0f), v = gaussian(g, size_t(13) * HD, 1.0f);
    append(ctx.h, cache, id, 0, k.data(), v.data(), 13, HD);  // one quantized block + 5 residual rows
    std::vector<float> k0, v0;
    read(ctx.h, cache, id, 0, 0, 13, HD, k0, v0);
    struct Bad { bool value; int64_t at; float x; const char* what; };
    for (const Bad& b : {Bad{false, 2 * HD + 5, std::nanf(""), "NaN"}, Bad{true, 3 * HD + 70, INFINITY, "Inf"},
                         Bad{false, 0, -INFINITY, "-Inf"}, Bad{true, 1, 1e6f, "overflows"}}) {
        std::vector<float> nk = gaussian(g, size_t(4) * HD, 1.0f), nv = gaussian(g, size_t(4) * HD, 1.0f);
        (b.value ? nv : nk)[size_t(b.at)] = b.x;
        Buf kb(ctx.h, LLMN_DTYPE_F32, 4 * HD), vb(ctx.h, LLMN_DTYPE_F32, 4 * HD);
        kb.upload(nk);
        vb.upload(nv);
        LLMN_EXPECT_STATUS(llmn_kv_cache_append(cache, id, 0, kb.h, vb.h, 4), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find(b.what), std::string::npos) << last_error();
        EXPECT_NE(last_error().find(b.value ? "v[" : "k["), std::string::npos) << last_error();
        int64_t len = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_get_sequence_length(cache, id, 0, &len));
        EXPECT_EQ(len, 13);
        std::vector<float> k1, v1;
        read(ctx.h, cache, id, 0, 0, 13, HD, k1, v1);
        EXPECT_TRUE(bitwise_equal(k0, k1) && bitwise_equal(v0, v1)) << b.what;
    }
    // and a clean append afterwards still matches the model
    std::vector<float> nk = gaussian(g, size_t(4) * HD, 1.0f), nv = gaussian(g, size_t(4) * HD, 1.0f);
    append(ctx.h, cache, id, 0, nk.data(), nv.data(), 4, HD);
    k.insert(k.end(), nk.begin(), nk.end());
    v.insert(v.end(), nv.begin(), nv.end());
    std::vector<float> k1, v1;
    read(ctx.h, cache, id, 0, 0, 17, HD, k1, v1);
    EXPECT_TRUE(bitwise_equal(k1, model_side(LLMN_KV_INT4, false, k, 17, H, D, bs, 32)));
    EXPECT_TRUE(bitwise_equal(v1, model_side(LLMN_KV_INT2, true, v, 17, H, D, bs, 32)));
    llmn_kv_cache_destroy(cache);
}

// ---------------------------------------------------------------------------------------------- attention

namespace {

struct KiviSetup {
    int32_t H = 2, G = 4, D = 128, bs = 16, q_len = 1, group = 32;
    std::vector<int64_t> lengths;
    bool outliers = false;
};

// Keys: N(0,1), with "outliers" 4 fixed channels scaled by 10, 13.3, 16.7, 20 in every token; V N(0,1).
// keymap (optional) transforms the f32 keys before the append (the per-token INT4 comparison).
template <class KeyMap>
void fill(llmn_context ctx, const KiviSetup& s, int32_t kf, int32_t vf, uint64_t seed, Filled& f, KeyMap keymap) {
    int64_t total = 0;
    for (int64_t l : s.lengths) total += (l + s.bs - 1) / s.bs * s.bs;
    llmn_kv_cache_desc d = make_desc(1, s.H, s.D, s.bs, kf, vf, total, s.group);
    ASSERT_EQ(llmn_kv_cache_create(ctx, &d, &f.cache), LLMN_STATUS_OK) << last_error();
    std::mt19937_64 g(seed);
    const int32_t HD = s.H * s.D;
    const int32_t och[4] = {5, 37, 64, 101};
    for (int64_t len : s.lengths) {
        int64_t id = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(f.cache, &id));
        f.ids.push_back(id);
        std::vector<float> k = gaussian(g, size_t(len) * HD, 1.0f), v = gaussian(g, size_t(len) * HD, 1.0f);
        if (s.outliers)
            for (int64_t t = 0; t < len; ++t)
                for (int32_t h = 0; h < s.H; ++h)
                    for (int i = 0; i < 4; ++i) k[size_t((t * s.H + h) * s.D + och[i] % s.D)] *= 10.0f + 10.0f * i / 3.0f;
        keymap(k, s.D);
        for (int64_t t = 0; t < len;) {
            const int32_t n = int32_t(std::min<int64_t>(len - t, 700));
            append(ctx, f.cache, id, 0, &k[size_t(t) * HD], &v[size_t(t) * HD], n, HD);
            t += n;
        }
    }
}
void fill(llmn_context ctx, const KiviSetup& s, int32_t kf, int32_t vf, uint64_t seed, Filled& f) {
    fill(ctx, s, kf, vf, seed, f, [](std::vector<float>&, int32_t) {});
}

// The comparison quantizer: per-TOKEN asymmetric INT4 keys (scale/min over one token's head_dim
// channels, same rounding rules as the codec), dequantized in place.
void per_token_int4(std::vector<float>& k, int32_t D) {
    for (size_t r = 0; r < k.size() / size_t(D); ++r) {
        float* x = &k[r * D];
        float lo = f16r(x[0]), hi = lo;
        for (int32_t d = 1; d < D; ++d) {
            lo = std::min(lo, f16r(x[d]));
            hi = std::max(hi, f16r(x[d]));
        }
        const float sc = llmn::f16_to_f32(llmn::kivi_scale_f16(lo, hi, 15));
        for (int32_t d = 0; d < D; ++d) x[d] = llmn::kivi_dequant(llmn::kivi_code(f16r(x[d]), sc, lo, 15), sc, lo);
    }
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        den += double(b[i]) * b[i];
    }
    return std::sqrt(num / den);
}

}  // namespace

// Fused kernels vs float64 attention over the read-back (dequantized) cache.
// BOUND, per output element (u = 2^-24). The kernels differ from the reference k = fl(fl(c s) + m),
// v likewise, by the order of operations: scalar dequantizes exactly like the read-back (same values,
// so only the f16-path rounding of test_decode_attention.cpp applies); AVX2 folds K (q'_d = fl(q_d s_d),
// c = sum_d q_d m_d, s = q'.code + c) and V (p s code + p m). Every term of those sums is bounded by
// |q_d| (|c s_d| + |m_d|) <= |q_d| 3 Kabs_d, where Kabs_d = max_t |k_td| over the sequence (the min is
// a dequantized value of the block, code 0, so |m| <= Kabs and c s = k - m <= 2 Kabs). Hence
//   |ds_t| <= (2D + 8) u A*,   A* = 3 sum_d |q_d| Kabs_d
// and the V-side roundings scale with 3 Vmax instead of Vmax. The rest is the f16 derivation:
//   eta = |ds| + eps_exp + 2u Smax + 2u
//   |do| <= 1.25 (2 eta 3Vmax + 2 (N + T + 4) u 3Vmax + merge) + 8u 3Vmax, merge as in test_kv_quant.cpp.
TEST(KvKivi, FusedMatchesFloat64Reference) {
    CpuStateGuard guard;
    Ctx ctx;
    KiviSetup s;
    s.lengths = quick() ? std::vector<int64_t>{3, 37, 300} : std::vector<int64_t>{3, 37, 300, 1500};
    const int32_t fm[][2] = {{LLMN_KV_INT4, LLMN_KV_INT4}, {LLMN_KV_INT2, LLMN_KV_INT2}, {LLMN_KV_INT4, LLMN_KV_F16},
                             {LLMN_KV_F16, LLMN_KV_INT2}, {LLMN_KV_INT4, LLMN_KV_INT8}, {LLMN_KV_FP8_E4M3, LLMN_KV_INT4}};
    for (int32_t D : {64, 80, 96, 128, 256})  // value groups: 1 (64/64), 3 (96/32), 4 (128/32), 8 (256/32); 80: K only
        for (int32_t q_len : {1, 3})
            for (bool outliers : {false, true})
                for (const auto& f2 : fm) {
                    if ((D == 96 || D == 80 || D == 256) && q_len == 3) continue;
                    if (D == 80 && llmn::kv_format_is_kivi(f2[1])) continue;  // no value group divides 80
                    s.D = D;
                    s.q_len = q_len;
                    s.outliers = outliers;
                    s.G = q_len == 1 ? 4 : 2;
                    s.bs = D == 64 ? 8 : 16;
                    s.group = D == 64 ? 64 : 32;
                    const uint64_t seed = test_seed() + uint64_t(D * 31 + q_len * 7 + outliers);
                    Filled f;
                    fill(ctx.h, s, f2[0], f2[1], seed, f);
                    const int32_t Hq = s.H * s.G, HD = s.H * s.D, B = int32_t(s.lengths.size());
                    std::mt19937_64 g(seed + 99);
                    const std::vector<float> q = gaussian(g, size_t(B) * q_len * Hq * D, 1.0f);
                    const float scf = 1.0f / std::sqrt(float(D));
                    for (int32_t isa : kivi_isas()) {
                        LLMN_ASSERT_OK(llmn_set_cpu_isa(isa));
                        for (int32_t splits : {1, 3}) {
                            const std::vector<float> o = attention(ctx.h, f.cache, f.ids, 0, Hq, D, q_len, q, splits);
                            double worst = 0.0;
                            for (int32_t b = 0; b < B; ++b) {
                                const int64_t len = s.lengths[size_t(b)];
                                std::vector<float> k, v;
                                read(ctx.h, f.cache, f.ids[size_t(b)], 0, 0, len, HD, k, v);
                                for (int32_t i = 0; i < q_len; ++i) {
                                    const int64_t pos = len - q_len + i;
                                    if (pos < 0) continue;
                                    for (int32_t hq = 0; hq < Hq; ++hq) {
                                        const int32_t h = hq / s.G;
                                        const float* qr = &q[size_t(((b * q_len + i) * Hq + hq) * D)];
                                        std::vector<double> kabs(size_t(D), 0.0);
                                        for (int64_t t = 0; t <= pos; ++t)
                                            for (int32_t dd = 0; dd < D; ++dd)
                                                kabs[size_t(dd)] = std::max(kabs[size_t(dd)], double(std::fabs(k[size_t((t * s.H + h) * D + dd)])));
                                        double Astar = 0;
                                        for (int32_t dd = 0; dd < D; ++dd) Astar += 3 * std::fabs(double(qr[dd] * scf)) * kabs[size_t(dd)];
                                        const PrescaledRow r = prescaled_attention_row_f64(qr, scf, k, v, s.H, h, D, pos);
                                        const double Smax = r.smax, Vmax = r.vmax;
                                        const double N = double(pos + 1), T = std::ceil(N / 8.0) + splits, V3 = 3 * Vmax;
                                        const double eta = (2 * D + 8) * kU * Astar + kEpsExp + 2 * kU * Smax + 2 * kU;
                                        const double merge = 2 * (2 * kU * (Smax + std::log(N) + 2) + kEpsExp + (splits + 2) * kU) * V3 +
                                                             splits * kU * V3;
                                        const double bound = 1.25 * (2 * eta * V3 + 2 * (N + T + 4) * kU * V3 + merge) + 8 * kU * V3;
                                        for (int32_t dd = 0; dd < D; ++dd) {
                                            const double got = o[size_t(((b * q_len + i) * Hq + hq) * D + dd)];
                                            const double err = std::fabs(got - r.o[size_t(dd)]);
                                            ASSERT_LE(err, bound)
                                                << fmt_name(f2[0]) << "/" << fmt_name(f2[1]) << " " << isa_name(isa) << " D " << D
                                                << " q_len " << q_len << " splits " << splits << " outliers " << outliers
                                                << " seq " << b << " head " << hq << " ch " << dd;
                                            worst = std::max(worst, err / bound);
                                        }
                                    }
                                }
                            }
                            if (D == 128 && q_len == 1)
                                std::printf("  %s/%s %-6s splits %d outliers %d: max error %.3g of bound\n", fmt_name(f2[0]),
                                            fmt_name(f2[1]), isa_name(isa), splits, int(outliers), worst);
                        }
                    }
                }
}

// LLMN_ATTN_FLAG_INT8_QUERY on KIVI keys vs a float64 reference of what the flag promises: for a key of a
// full block, s = qs * sum_d c_d code_d + sum_d q'_d min_d, where q' = fl(q / sqrt(D)), c / qs the INT8
// query rule (int8_query_row, written from llmnative.h) applied to fl(q'_d scale_d), and code / scale / min
// read from the block itself (cache internals); residual-block keys score q' . k over the read-back rows;
// V = the read-back rows. BOUND: FusedMatchesFloat64Reference's (its (2D + 8) u A* score term covers the
// kernels' f32 sum of q'_d min_d and the two roundings of qs * dot + kc; the integer dot is exact). Also
// asserted: the flag changed more than a tenth of the outputs (not all: rows whose keys are all in the
// residual block keep f32, and with outlier keys a peaked softmax can return one V row bit for bit; ~46 %
// changed in the lowest case seen). Every ISA; AVX-512 with and without VNNI, AVX2 with and without
// AVX-VNNI (bitwise the same output).
TEST(KvKivi, Int8QueryMatchesFloat64ReferenceOfRoundedQuery) {
    CpuStateGuard guard;
    Ctx ctx;
    KiviSetup s;
    s.lengths = quick() ? std::vector<int64_t>{3, 37, 300} : std::vector<int64_t>{3, 37, 300, 1500};
    struct Variant { int32_t isa; bool vnni; };
    std::vector<Variant> variants;
    for (int32_t isa : kivi_isas()) {
        if (isa == LLMN_CPU_ISA_AVX512 && llmn::cpu::avx512_vnni()) variants.push_back({isa, true});
        if (isa == LLMN_CPU_ISA_AVX2 && llmn::cpu::avx_vnni()) variants.push_back({isa, true});  // AVX-VNNI
        variants.push_back({isa, false});
    }
    // The integer q.k is exact: with and without VNNI an ISA gives the same bits (outputs by splits).
    std::vector<float> same_isa[2];
    int32_t same_isa_of = -1;
    const int32_t fm[][2] = {{LLMN_KV_INT4, LLMN_KV_INT4}, {LLMN_KV_INT2, LLMN_KV_INT2}, {LLMN_KV_INT4, LLMN_KV_F16},
                             {LLMN_KV_INT2, LLMN_KV_INT8}};
    for (int32_t D : {64, 80, 96, 128, 256})
        for (int32_t q_len : {1, 3})
            for (bool outliers : {false, true})
                for (const auto& f2 : fm) {
                    if ((D == 96 || D == 80 || D == 256) && q_len == 3) continue;
                    if (D == 80 && llmn::kv_format_is_kivi(f2[1])) continue;
                    s.D = D;
                    s.q_len = q_len;
                    s.outliers = outliers;
                    s.G = q_len == 1 ? (outliers ? 7 : 4) : 2;  // 7 rows: the 4-, 2- and 1-row tiles
                    s.bs = D == 64 ? 8 : 16;
                    s.group = D == 64 ? 64 : 32;
                    const uint64_t seed = test_seed() + uint64_t(D * 41 + q_len * 3 + outliers) + 5000;
                    Filled f;
                    fill(ctx.h, s, f2[0], f2[1], seed, f);
                    const int32_t Hq = s.H * s.G, HD = s.H * s.D, B = int32_t(s.lengths.size());
                    std::mt19937_64 g(seed + 99);
                    const std::vector<float> q = gaussian(g, size_t(B) * q_len * Hq * D, 1.0f);
                    const float scf = 1.0f / std::sqrt(float(D));
                    const std::shared_ptr<llmn::KvCache> cache = llmn::lookup<llmn::KvCache>(f.cache, "cache");
                    const llmn::KvLayout& L = cache->layout();
                    const int32_t bits = llmn::kivi_bits(f2[0]);
                    // reference outputs and bounds, per output row
                    std::vector<double> ref(q.size(), 0.0), bound(q.size() / size_t(D), 0.0);
                    for (int32_t b = 0; b < B; ++b) {
                        const int64_t len = s.lengths[size_t(b)];
                        std::vector<float> k, v;
                        read(ctx.h, f.cache, f.ids[size_t(b)], 0, 0, len, HD, k, v);
                        const std::vector<int32_t>& blocks = cache->sequence(f.ids[size_t(b)], "id").blocks;
                        for (int32_t i = 0; i < q_len; ++i) {
                            const int64_t pos = len - q_len + i;
                            if (pos < 0) continue;
                            for (int32_t hq = 0; hq < Hq; ++hq) {
                                const int32_t h = hq / s.G;
                                const size_t row = size_t((b * q_len + i) * Hq + hq);
                                std::vector<double> qp(static_cast<size_t>(D));
                                std::vector<float> fold(static_cast<size_t>(D));
                                std::vector<uint8_t> codes(static_cast<size_t>(D));
                                for (int32_t dd = 0; dd < D; ++dd) qp[size_t(dd)] = double(q[row * D + size_t(dd)] * scf);
                                std::vector<double> sc(size_t(pos + 1));
                                int64_t cur = -1;
                                double qs = 0, kc = 0;
                                for (int64_t t = 0; t <= pos; ++t) {
                                    if ((t / s.bs + 1) * s.bs <= len) {
                                        const uint8_t* tile = cache->pool() + int64_t(blocks[size_t(t / s.bs)]) * L.block_stride + h * L.head_stride;
                                        const uint16_t* aux = reinterpret_cast<const uint16_t*>(tile + L.k_aux_off);
                                        if (t / s.bs != cur) {
                                            cur = t / s.bs;
                                            kc = 0;
                                            for (int32_t dd = 0; dd < D; ++dd) {
                                                fold[size_t(dd)] = float(qp[size_t(dd)]) * llmn::f16_to_f32(aux[dd]);
                                                kc += qp[size_t(dd)] * double(llmn::f16_to_f32(aux[D + dd]));
                                            }
                                            qs = int8_query_row(fold.data(), D, codes.data());
                                        }
                                        const uint8_t* krow = tile + L.k_data_off + (t % s.bs) * int64_t(D) * bits / 8;
                                        double dot = 0;
                                        for (int32_t dd = 0; dd < D; ++dd)
                                            dot += double(int8_t(codes[size_t(dd)])) * double(llmn::kivi_get(krow, dd, bits));
                                        sc[size_t(t)] = qs * dot + kc;
                                    } else {
                                        double dot = 0;
                                        for (int32_t dd = 0; dd < D; ++dd) dot += qp[size_t(dd)] * double(k[size_t((t * s.H + h) * D + dd)]);
                                        sc[size_t(t)] = dot;
                                    }
                                }
                                double m = -INFINITY, l = 0, Smax = 0, Vmax = 0;
                                for (double x : sc) {
                                    m = std::max(m, x);
                                    Smax = std::max(Smax, std::fabs(x));
                                }
                                std::vector<double> acc(static_cast<size_t>(D), 0.0), kabs(static_cast<size_t>(D), 0.0);
                                for (int64_t t = 0; t <= pos; ++t) {
                                    const double w = std::exp(sc[size_t(t)] - m);
                                    l += w;
                                    for (int32_t dd = 0; dd < D; ++dd) {
                                        const double vv = v[size_t((t * s.H + h) * D + dd)];
                                        acc[size_t(dd)] += w * vv;
                                        Vmax = std::max(Vmax, std::fabs(vv));
                                        kabs[size_t(dd)] = std::max(kabs[size_t(dd)], double(std::fabs(k[size_t((t * s.H + h) * D + dd)])));
                                    }
                                }
                                double Astar = 0;
                                for (int32_t dd = 0; dd < D; ++dd) {
                                    ref[row * D + size_t(dd)] = acc[size_t(dd)] / l;
                                    Astar += 3 * std::fabs(qp[size_t(dd)]) * kabs[size_t(dd)];
                                }
                                const int32_t splits = 3;  // the larger of the two split counts run below
                                const double N = double(pos + 1), T = std::ceil(N / 8.0) + splits, V3 = 3 * Vmax;
                                const double eta = (2 * D + 8) * kU * Astar + kEpsExp + 2 * kU * Smax + 2 * kU;
                                const double merge = 2 * (2 * kU * (Smax + std::log(N) + 2) + kEpsExp + (splits + 2) * kU) * V3 +
                                                     splits * kU * V3;
                                bound[row] = 1.25 * (2 * eta * V3 + 2 * (N + T + 4) * kU * V3 + merge) + 8 * kU * V3;
                            }
                        }
                    }
                    for (const Variant& var : variants) {
                        LLMN_ASSERT_OK(llmn_set_cpu_isa(var.isa));
                        llmn::cpu::set_avx512_vnni(var.vnni);
                        llmn::cpu::set_avx_vnni(var.vnni);
                        const std::string what = std::string(fmt_name(f2[0])) + "/" + fmt_name(f2[1]) + " " + isa_name(var.isa) +
                                                 (var.vnni ? "+vnni" : "") + " D " + std::to_string(D) + " q_len " +
                                                 std::to_string(q_len) + " outliers " + std::to_string(int(outliers));
                        const std::vector<float> exact = attention(ctx.h, f.cache, f.ids, 0, Hq, D, q_len, q, 1);
                        for (int32_t splits : {1, 3}) {
                            const std::vector<float> o =
                                attention(ctx.h, f.cache, f.ids, 0, Hq, D, q_len, q, splits, LLMN_ATTN_FLAG_INT8_QUERY);
                            std::vector<float>& twin = same_isa[splits == 1 ? 0 : 1];
                            if (same_isa_of == var.isa)
                                EXPECT_TRUE(std::memcmp(twin.data(), o.data(), o.size() * sizeof(float)) == 0)
                                    << what << " splits " << splits << ": differs from the same ISA with VNNI";
                            twin = o;
                            size_t changed = 0, checked = 0;
                            double worst = 0.0;
                            for (size_t e = 0; e < o.size(); ++e) {
                                const size_t row = e / size_t(D);
                                const int64_t pos = s.lengths[row / size_t(q_len * Hq)] - q_len + int64_t(row / size_t(Hq) % size_t(q_len));
                                if (pos < 0) continue;
                                ++checked;
                                changed += o[e] != exact[e];
                                const double err = std::fabs(double(o[e]) - ref[e]);
                                ASSERT_LE(err, bound[row]) << what << " splits " << splits << " row " << row << " ch " << e % size_t(D);
                                worst = std::max(worst, err / bound[row]);
                            }
                            EXPECT_GT(changed, checked / 10) << what << ": the flag did not change the output";
                            if (D == 128 && q_len == 1 && f2[0] == f2[1])
                                std::printf("  int8 query, %s splits %d: max error %.3g of bound\n", what.c_str(), splits, worst);
                        }
                        same_isa_of = var.isa;
                    }
                    same_isa_of = -1;
                    llmn::cpu::set_avx512_vnni(true);
                    llmn::cpu::set_avx_vnni(true);
                }
}

// Quantization error of the attention output vs the same attention on an f16 cache fed the same f32
// K/V (AVX2 where available). rel = ||o_q - o_f16||_F / ||o_f16||_F over every output row. KiviSetup: 2 kv
// heads x 128, GQA 4, q_len 1, block 16, value groups of 32, lengths {64, 1000, 4000} (quick: {64, 700}),
// scale 1/sqrt(128). Bounds: MEASURED with margin (max over seeds 1..12 x ~1.3-1.8, rounded up; the table
// is in docs/kv-quantization.md), not derived. Also asserted: per-channel (KIVI) INT4 keys beat
// per-token INT4 keys on keys with outlier channels (V f16 in both, so only the key quantizer differs).
TEST(KvKivi, AccuracyVsF16) {
    Ctx ctx;
    KiviSetup s;
    s.lengths = quick() ? std::vector<int64_t>{64, 700} : std::vector<int64_t>{64, 1000, 4000};
    struct Case { int32_t kf, vf; bool outliers; double bound; int32_t flags = 0; };
    const int32_t Q8 = LLMN_ATTN_FLAG_INT8_QUERY;
    const Case cases[] = {
        {LLMN_KV_INT4, LLMN_KV_INT4, false, 0.2}, {LLMN_KV_INT4, LLMN_KV_INT4, true, 0.25},
        {LLMN_KV_INT2, LLMN_KV_INT2, false, 0.8}, {LLMN_KV_INT2, LLMN_KV_INT2, true, 1.1},
        {LLMN_KV_INT4, LLMN_KV_F16, false, 0.12}, {LLMN_KV_INT4, LLMN_KV_F16, true, 0.2},
        {LLMN_KV_F16, LLMN_KV_INT4, false, 0.12}, {LLMN_KV_F16, LLMN_KV_INT2, false, 0.6},
        {LLMN_KV_INT2, LLMN_KV_F16, true, 0.9},   {LLMN_KV_INT4, LLMN_KV_INT8, true, 0.2},
        // the INT8 query (LLMN_ATTN_FLAG_INT8_QUERY) on top of the cache's own error. Seeds 1..12: as without
        // it on Gaussian keys (INT4/INT4 0.093-0.112, INT2/INT2 0.475-0.559, INT4/f16 0.053-0.077), but up to
        // ~2x the error with outlier channels (INT4/INT4 0.100-0.259 vs 0.088-0.139, INT4/f16 0.070-0.245 vs
        // 0.052-0.112): the outlier channels' large scales set the folded query's int8 step, and the other
        // channels keep few levels. INT2/INT2 outliers 0.510-0.808 (0.513-0.811 without).
        {LLMN_KV_INT4, LLMN_KV_INT4, false, 0.2, Q8}, {LLMN_KV_INT4, LLMN_KV_INT4, true, 0.35, Q8},
        {LLMN_KV_INT2, LLMN_KV_INT2, false, 0.8, Q8}, {LLMN_KV_INT2, LLMN_KV_INT2, true, 1.1, Q8},
        {LLMN_KV_INT4, LLMN_KV_F16, false, 0.12, Q8}, {LLMN_KV_INT4, LLMN_KV_F16, true, 0.35, Q8},
    };
    const uint64_t seed = test_seed() + 17;
    for (const Case& c : cases) {
        s.outliers = c.outliers;
        Filled fq, ff;
        fill(ctx.h, s, c.kf, c.vf, seed, fq);
        fill(ctx.h, s, LLMN_KV_F16, LLMN_KV_F16, seed, ff);
        const int32_t Hq = s.H * s.G, B = int32_t(s.lengths.size());
        std::mt19937_64 g(seed + 5);
        const std::vector<float> q = gaussian(g, size_t(B) * Hq * s.D, 1.0f);
        const double e = rel_error(attention(ctx.h, fq.cache, fq.ids, 0, Hq, s.D, 1, q, 0, c.flags),
                                   attention(ctx.h, ff.cache, ff.ids, 0, Hq, s.D, 1, q, 0));
        std::printf("  K %-4s V %-4s %-9s%s rel error %.4f (bound %.3f)\n", fmt_name(c.kf), fmt_name(c.vf),
                    c.outliers ? "outliers" : "gaussian", c.flags ? " int8 q" : "", e, c.bound);
        EXPECT_LE(e, c.bound) << fmt_name(c.kf) << "/" << fmt_name(c.vf) << " outliers " << c.outliers;
    }
    // Per-channel vs per-token INT4 keys on outlier keys.
    s.outliers = true;
    Filled fc, ft, ff;
    fill(ctx.h, s, LLMN_KV_INT4, LLMN_KV_F16, seed, fc);
    fill(ctx.h, s, LLMN_KV_F16, LLMN_KV_F16, seed, ft, per_token_int4);
    fill(ctx.h, s, LLMN_KV_F16, LLMN_KV_F16, seed, ff);
    const int32_t Hq = s.H * s.G, B = int32_t(s.lengths.size());
    std::mt19937_64 g(seed + 5);
    const std::vector<float> q = gaussian(g, size_t(B) * Hq * s.D, 1.0f);
    const std::vector<float> of = attention(ctx.h, ff.cache, ff.ids, 0, Hq, s.D, 1, q, 0);
    const double ec = rel_error(attention(ctx.h, fc.cache, fc.ids, 0, Hq, s.D, 1, q, 0), of);
    const double et = rel_error(attention(ctx.h, ft.cache, ft.ids, 0, Hq, s.D, 1, q, 0), of);
    std::printf("  outlier keys, V f16: per-channel INT4 K rel error %.4f, per-token INT4 K %.4f (%.1fx)\n", ec, et, et / ec);
    EXPECT_LT(2 * ec, et) << "per-channel INT4 keys should be well ahead (4.8x .. 9x over seeds 1..12)";
}

// Sliding window (starting mid-block and inside the residual block), soft-cap and ALiBi on KIVI
// caches, scalar and AVX2, q_len 3, splits 1 and 3, against float64 over the read-back cache. Bound:
// the FusedMatchesFloat64Reference bound with two more score terms: the soft-cap evaluation
// (|c tanh(s/c) - exact| <= c (eps_exp/2 + 3u) + u |s|, as derived in test_decode_attention.cpp; the
// map is 1-Lipschitz so earlier score errors do not grow) and the ALiBi product/add (2u |slope| N + u Smax).
TEST(KvKivi, WindowSoftcapAlibiMatchFloat64) {
    CpuStateGuard guard;
    Ctx ctx;
    KiviSetup s;
    s.D = 128;
    s.G = 2;
    s.q_len = 3;
    s.outliers = true;
    s.lengths = {45, 300, 1001};
    const float softcap = 7.0f;
    for (const auto& f2 : {std::array<int32_t, 2>{LLMN_KV_INT4, LLMN_KV_INT2}, std::array<int32_t, 2>{LLMN_KV_INT2, LLMN_KV_F16}})
        for (int32_t window : {0, 37, 200}) {
            Filled f;
            fill(ctx.h, s, f2[0], f2[1], test_seed() + 7 + uint64_t(window), f);
            const int32_t Hq = s.H * s.G, HD = s.H * s.D, D = s.D, B = int32_t(s.lengths.size()), Q = s.q_len;
            std::mt19937_64 g(test_seed() + 11);
            const std::vector<float> q = gaussian(g, size_t(B) * Q * Hq * D, 1.0f);
            std::vector<float> slopes(static_cast<size_t>(Hq));
            for (int32_t h = 0; h < Hq; ++h) slopes[size_t(h)] = std::ldexp(1.0f, -(h + 1));
            const float scf = 1.0f / std::sqrt(float(D));
            for (int32_t isa : kivi_isas()) {
                LLMN_ASSERT_OK(llmn_set_cpu_isa(isa));
                for (int32_t splits : {1, 3}) {
                    const int64_t n = int64_t(B) * Q * Hq * D;
                    Buf qb(ctx.h, LLMN_DTYPE_F32, n), ob(ctx.h, LLMN_DTYPE_F32, n), ab(ctx.h, LLMN_DTYPE_F32, Hq);
                    qb.upload(q);
                    ab.upload(slopes);
                    ob.upload(std::vector<float>(size_t(n), std::nanf("")));
                    llmn_attention_params p{};
                    p.num_q_heads = Hq;
                    p.q_len = Q;
                    p.num_splits = splits;
                    p.scale = scf;
                    p.softcap = softcap;
                    p.window = window;
                    LLMN_ASSERT_OK(llmn_decode_attention(ctx.h, f.cache, f.ids.data(), B, qb.h, ab.h, ob.h, &p));
                    const std::vector<float> o = ob.download<float>(n);
                    for (int32_t b = 0; b < B; ++b) {
                        const int64_t len = s.lengths[size_t(b)];
                        std::vector<float> k, v;
                        read(ctx.h, f.cache, f.ids[size_t(b)], 0, 0, len, HD, k, v);
                        for (int32_t i = 0; i < Q; ++i)
                            for (int32_t hq = 0; hq < Hq; ++hq) {
                                const int32_t h = hq / s.G;
                                const int64_t pos = len - Q + i, lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
                                const float* qr = &q[size_t(((b * Q + i) * Hq + hq) * D)];
                                std::vector<double> kabs(size_t(D), 0.0), sc(size_t(pos + 1));
                                double m = -INFINITY, Smax = 0, Vmax = 0, Astar = 0;
                                for (int64_t t = lo; t <= pos; ++t)
                                    for (int32_t d = 0; d < D; ++d) {
                                        kabs[size_t(d)] = std::max(kabs[size_t(d)], double(std::fabs(k[size_t((t * s.H + h) * D + d)])));
                                        Vmax = std::max(Vmax, double(std::fabs(v[size_t((t * s.H + h) * D + d)])));
                                    }
                                for (int32_t d = 0; d < D; ++d) Astar += 3 * std::fabs(double(qr[d] * scf)) * kabs[size_t(d)];
                                for (int64_t t = lo; t <= pos; ++t) {
                                    double dot = 0;
                                    for (int32_t d = 0; d < D; ++d) dot += double(qr[d] * scf) * k[size_t((t * s.H + h) * D + d)];
                                    Smax = std::max(Smax, std::fabs(dot));
                                    dot = softcap * std::tanh(dot / softcap) + double(slopes[size_t(hq)]) * double(t - pos);
                                    sc[size_t(t)] = dot;
                                    m = std::max(m, dot);
                                }
                                double l = 0;
                                std::vector<double> ref(size_t(D), 0.0);
                                for (int64_t t = lo; t <= pos; ++t) {
                                    const double w = std::exp(sc[size_t(t)] - m);
                                    l += w;
                                    for (int32_t d = 0; d < D; ++d) ref[size_t(d)] += w * v[size_t((t * s.H + h) * D + d)];
                                }
                                const double N = double(pos - lo + 1), T = std::ceil(N / 8.0) + splits, V3 = 3 * Vmax;
                                const double S2 = softcap + std::fabs(slopes[size_t(hq)]) * N;  // |score| after cap + bias
                                const double eta = (2 * D + 8) * kU * Astar + softcap * (kEpsExp / 2 + 3 * kU) + kU * Smax +
                                                   2 * kU * std::fabs(slopes[size_t(hq)]) * N + kU * S2 + kEpsExp + 2 * kU * S2 + 2 * kU;
                                const double merge = 2 * (2 * kU * (S2 + std::log(N) + 2) + kEpsExp + (splits + 2) * kU) * V3 + splits * kU * V3;
                                const double bound = 1.25 * (2 * eta * V3 + 2 * (N + T + 4) * kU * V3 + merge) + 8 * kU * V3;
                                for (int32_t d = 0; d < D; ++d) {
                                    const double err = std::fabs(double(o[size_t(((b * Q + i) * Hq + hq) * D + d)]) - ref[size_t(d)] / l);
                                    ASSERT_LE(err, bound) << fmt_name(f2[0]) << "/" << fmt_name(f2[1]) << " " << isa_name(isa)
                                                          << " window " << window << " splits " << splits << " seq " << b
                                                          << " query " << i << " head " << hq << " ch " << d;
                                }
                            }
                    }
                }
            }
        }
}
