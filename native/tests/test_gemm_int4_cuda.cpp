// INT4 weight-only GEMM, CUDA backend.
//
// Two halves:
//  * GemmInt4CudaLayout.* (CPU only, run everywhere): the packed device layout and every index the
//    kernel computes, checked without a GPU. Pack->unpack round trips on random canonical weights of
//    odd shapes (plain, GPTQ act-order, arbitrary g_idx with empty groups); padding dequantizes to 0;
//    a bit-level emulation of the kernel's lop3 dequantization (fp16 and bf16) applied to each lane's
//    16-byte load, compared with the mma.m16n8k16 B-fragment layout written here from the PTX ISA
//    (b0: k = 2*(lane%4) + {0,1}, b1: k + 8, n = lane/4); the scale/zero-point vectors; the A
//    swizzle + ldmatrix.x4 against the A-fragment layout and bank-conflict freedom; the striped
//    partition and the uniqueness of reduction slots; and a host emulation of the whole fast kernel
//    (fetch mapping, fragments, mma by the PTX definition, block and cross-block reduction with the
//    lock protocol, write-out), compared with a float64 reference.
//  * GemmInt4CudaGpu.* / GemmDenseCudaGpu.* (need a GPU; skip visibly here): the real kernels through
//    the C API, against float64 references of the weights dequantized by the library, the CPU
//    backend (scalar, exact f32), and the reference CUDA kernel; outputs poisoned with NaN and a
//    sentinel after y; CUDA-graph capture of a GEMM call.
//
// Error bounds (S = sum_k |x_k w_kn| + |bias_n|, Kp = packed rows, u = 2^-24):
//  * grouped weights are rounded to the activation type after scaling (unit roundoff 2^-11 for fp16,
//    2^-8 for bf16, where the fp16 scale is also rounded to bf16 first: 2^-8 + 2^-8 + 2^-16);
//    per-column weights stay exact (q - zero is an integer, the scale is applied in fp32);
//  * fp32 accumulation in any order: gamma(Kp + 2) * S;
//  * output rounding: |y| * 2^-11 (fp16) / 2^-8 (bf16), plus a tiny absolute term for subnormals.
#include "core/numeric.hpp"
#include "kernels/gemm_int4/gemm_int4_cuda_layout.hpp"
#include "kernels/gemm_int4/int4_weight.hpp"
#include "test_util.hpp"

#if defined(LLMNATIVE_WITH_CUDA)
#include "core/context.hpp"

#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

using namespace llmn_test;
using namespace llmn::int4cuda;
using llmn::Int4Canonical;

namespace {

// ------------------------------------------------------------------------------------------------
// Random canonical weights
// ------------------------------------------------------------------------------------------------
enum class GIdx { None, Gptq, Arbitrary, Monotone };

const char* gidx_name(GIdx g) {
    switch (g) {
        case GIdx::None: return "none";
        case GIdx::Gptq: return "gptq";
        case GIdx::Arbitrary: return "arbitrary";
        case GIdx::Monotone: return "monotone";
    }
    return "?";
}

float f16r(float v) { return llmn::f16_to_f32(llmn::f32_to_f16(v)); }
float bf16r(float v) { return llmn::bf16_to_f32(llmn::f32_to_bf16(v)); }

Int4Canonical random_canonical(std::mt19937_64& g, int64_t k, int64_t n, int32_t gs, bool sym, GIdx gi) {
    Int4Canonical c;
    c.k = k;
    c.n = n;
    c.group_size = gs;
    c.symmetric = sym;
    const int64_t G = c.groups();
    std::uniform_int_distribution<int> qd(0, 15);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    c.q.resize(size_t(k * n));
    for (auto& v : c.q) v = uint8_t(qd(g));
    c.scales.resize(size_t(G * n));
    for (auto& v : c.scales) {
        const float p = u(g);
        float s = (0.002f + 0.05f * u(g)) * (p < 0.05f ? 30.f : 1.f) * (p > 0.97f ? -1.f : 1.f);
        if (p > 0.995f) s = 0.f;
        v = llmn::f32_to_f16(s);
    }
    c.zeros.resize(size_t(G * n));
    for (auto& v : c.zeros) v = sym ? 8 : uint8_t(qd(g));
    if (gi != GIdx::None) {
        c.g_idx.resize(size_t(k));
        if (gs == 0) {
            std::fill(c.g_idx.begin(), c.g_idx.end(), 0);
        } else if (gi == GIdx::Gptq) {  // desc_act: a permutation, each group exactly gs rows
            std::vector<int32_t> perm(static_cast<size_t>(k));
            std::iota(perm.begin(), perm.end(), 0);
            std::shuffle(perm.begin(), perm.end(), g);
            for (int64_t i = 0; i < k; ++i) c.g_idx[size_t(perm[size_t(i)])] = int32_t(i / gs);
        } else if (gi == GIdx::Monotone) {  // g_idx[k] = k / gs: act-order tensors that are the identity
            for (int64_t i = 0; i < k; ++i) c.g_idx[size_t(i)] = int32_t(i / gs);
        } else {  // uneven groups, some empty
            std::uniform_int_distribution<int32_t> gd(0, int32_t(std::max<int64_t>(0, G / 2)));
            for (auto& v : c.g_idx) v = gd(g) * (G > 1 ? 2 : 1) % int32_t(G);
            c.g_idx[0] = int32_t(G - 1);
        }
    }
    return c;
}

double dequant(const Int4Canonical& c, int64_t k, int64_t n) {
    const int64_t g = c.group_of(k);
    return (double(c.q[size_t(k * c.n + n)]) - double(c.zeros[size_t(g * c.n + n)])) *
           double(llmn::f16_to_f32(c.scales[size_t(g * c.n + n)]));
}

// Activations with outliers, rounded to the activation type.
std::vector<float> random_x(std::mt19937_64& g, int64_t count, bool bf16) {
    std::normal_distribution<float> nd(0.f, 1.f);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    std::vector<float> v(static_cast<size_t>(count));
    for (auto& x : v) {
        const float p = u(g);
        x = nd(g);
        if (p < 0.02f) x *= 20.f + 60.f * u(g);
        else if (p < 0.03f) x = 0.f;
        x = bf16 ? bf16r(x) : f16r(x);
    }
    return v;
}

struct Reference {
    std::vector<double> y, s;  // float64 result and sum |x w| + |bias|
};

Reference reference(const Int4Canonical& c, const std::vector<float>& x, int64_t m, const std::vector<float>* bias) {
    Reference r;
    r.y.assign(size_t(m * c.n), 0.0);
    r.s.assign(size_t(m * c.n), 0.0);
    std::vector<double> w(static_cast<size_t>(c.k * c.n));
    for (int64_t k = 0; k < c.k; ++k)
        for (int64_t n = 0; n < c.n; ++n) w[size_t(k * c.n + n)] = dequant(c, k, n);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t k = 0; k < c.k; ++k) {
            const double xv = x[size_t(i * c.k + k)];
            if (xv == 0) continue;
            for (int64_t n = 0; n < c.n; ++n) {
                r.y[size_t(i * c.n + n)] += xv * w[size_t(k * c.n + n)];
                r.s[size_t(i * c.n + n)] += std::fabs(xv * w[size_t(k * c.n + n)]);
            }
        }
    if (bias)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t n = 0; n < c.n; ++n) {
                r.y[size_t(i * c.n + n)] += (*bias)[size_t(n)];
                r.s[size_t(i * c.n + n)] += std::fabs((*bias)[size_t(n)]);
            }
    return r;
}

// Bound of the fast kernel (see the file comment).
double fast_bound(double y, double s, int64_t kp, bool grouped, bool bf16) {
    const double u = 1.0 / 16777216.0;
    const double gam = (kp + 2) * u / (1 - (kp + 2) * u);
    const double ew = grouped ? (bf16 ? std::ldexp(1.0, -7) + std::ldexp(1.0, -16) : std::ldexp(1.0, -11)) : 4 * u;
    const double eo = bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    return s * (ew + gam) * (1 + eo) + std::fabs(y) * eo + 1e-6 * (1 + s * 1e-3) + std::ldexp(1.0, -24) * kp;
}

// ------------------------------------------------------------------------------------------------
// The PTX ISA fragment layouts of mma.m16n8k16 (.f16/.bf16 inputs, .f32 accumulators), written down
// independently of the library: groupID = lane / 4, tig = lane % 4.
//   A (16x16, row): register i (0..3), half e: row = groupID + 8*(i%2), col = 2*tig + e + 8*(i/2)
//   B (16x8, col):  register i (0..1), half e: k = 2*tig + e + 8*i, n = groupID
//   C (16x8, f32):  element i (0..3):           row = groupID + 8*(i/2), col = 2*tig + (i%2)
// ------------------------------------------------------------------------------------------------
int spec_a_row(int lane, int i) { return lane / 4 + 8 * (i % 2); }
int spec_a_col(int lane, int i, int e) { return 2 * (lane % 4) + e + 8 * (i / 2); }
int spec_b_k(int lane, int i, int e) { return 2 * (lane % 4) + e + 8 * i; }
int spec_b_n(int lane) { return lane / 4; }
int spec_c_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
int spec_c_col(int lane, int i) { return 2 * (lane % 4) + (i % 2); }

uint16_t half_of(uint32_t w, int e) { return uint16_t(w >> (16 * e)); }

uint32_t from_halves(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }
uint32_t prmt_splat(uint32_t v, int half) { return splat16(half_of(v, half)); }

// Bit-level emulation of gemm_int4.cu zero_consts(): the constants of weight word j from zero word zw.
void emulate_zero_consts(uint32_t zw, int j, bool bf16, bool zp, uint32_t zc[2][2]) {
    if (!zp) {
        zc[0][0] = zc[1][0] = bf16 ? bf16_neg_zero(8) : f16_lo_zero(8);
        zc[0][1] = zc[1][1] = bf16 ? bf16_neg_zero(8) : f16_hi_zero(8);
    } else if (bf16) {
        const uint32_t p = (((zw >> (4 * j)) & kLoMask) | splat16(kBf16Magic)) ^ kSignBits;
        zc[0][0] = zc[0][1] = prmt_splat(p, 0);
        zc[1][0] = zc[1][1] = prmt_splat(p, 1);
    } else {
        const uint32_t p = ((zw >> (4 * j)) & kLoMask) | splat16(kF16Magic);
        uint16_t q[2];
        for (int e = 0; e < 2; ++e)  // fma.rn.f16x2(p, -1, 960)
            q[e] = llmn::f32_to_f16(float(double(llmn::f16_to_f32(half_of(p, e))) * llmn::f16_to_f32(uint16_t(kF16MinusOne)) +
                                          llmn::f16_to_f32(uint16_t(kF16_960))));
        const uint32_t qq = from_halves(q[0], q[1]);
        zc[0][0] = prmt_splat(p, 0);
        zc[1][0] = prmt_splat(p, 1);
        zc[0][1] = prmt_splat(qq, 0);
        zc[1][1] = prmt_splat(qq, 1);
    }
}

// Bit-level emulation of gemm_int4.cu dequant_word(): returns b[h][r][e] as floats.
void emulate_dequant(uint32_t w, const uint32_t zc[2][2], bool bf16, float out[2][2][2]) {
    if (!bf16) {
        const uint32_t magic = splat16(kF16Magic);
        const uint32_t lo0 = (w & kLoMask) | magic, hi0 = (w & kHiMask) | magic;
        const uint32_t w8 = w >> 8;
        const uint32_t lo1 = (w8 & kLoMask) | magic, hi1 = (w8 & kHiMask) | magic;
        const uint32_t lo[2] = {lo0, lo1}, hi[2] = {hi0, hi1};
        for (int h = 0; h < 2; ++h)
            for (int e = 0; e < 2; ++e) {
                const float l = llmn::f16_to_f32(half_of(lo[h], e));
                const float lz = llmn::f16_to_f32(half_of(zc[h][0], e));
                out[h][0][e] = f16r(l - lz);  // sub.rn.f16x2
                const double hv = llmn::f16_to_f32(half_of(hi[h], e));
                const double sc = llmn::f16_to_f32(uint16_t(kF16HiScale));
                const double hz = llmn::f16_to_f32(half_of(zc[h][1], e));
                out[h][1][e] = f16r(float(hv * sc + hz));  // fma.rn.f16x2 (exact here)
            }
    } else {
        const uint32_t magic = splat16(kBf16Magic);
        for (int i = 0; i < 4; ++i) {
            const uint32_t t = ((w >> (4 * i)) & kLoMask) | magic;
            const int h = i >> 1, r = i & 1;
            for (int e = 0; e < 2; ++e) {
                const double tv = llmn::bf16_to_f32(half_of(t, e));
                const double nz = llmn::bf16_to_f32(half_of(zc[h][r], e));
                out[h][r][e] = bf16r(float(tv * 1.0 + nz));  // fma.rn.bf16x2 by 1.0
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// CPU tests: layout
// ------------------------------------------------------------------------------------------------
struct Shape {
    int64_t k, n;
};
const Shape kOddShapes[] = {{1, 1}, {7, 72}, {200, 72}, {128, 64}, {130, 100}, {257, 129}, {33, 300}, {384, 256}, {77, 33}};
const int32_t kGroupSizes[] = {0, 32, 64, 128};
const GIdx kGIdxModes[] = {GIdx::None, GIdx::Gptq, GIdx::Arbitrary, GIdx::Monotone};

TEST(GemmInt4CudaLayout, PackUnpackRoundTripIsExact) {
    auto g = rng(101);
    int cases = 0;
    for (const Shape& sh : kOddShapes)
        for (int32_t gs : kGroupSizes)
            for (bool sym : {true, false})
                for (GIdx gi : kGIdxModes) {
                    SCOPED_TRACE(testing::Message() << "k=" << sh.k << " n=" << sh.n << " gs=" << gs << " sym=" << sym
                                                    << " g_idx=" << gidx_name(gi));
                    const Int4Canonical c = random_canonical(g, sh.k, sh.n, gs, sym, gi);
                    const Int4CudaImage im = build_image(c);
                    EXPECT_EQ(im.k_pad % kPadK, 0);
                    EXPECT_EQ(im.n_pad % kPadN, 0);
                    EXPECT_GE(im.n_pad, c.n);
                    EXPECT_GE(im.k_pad, c.k);
                    EXPECT_EQ(int64_t(im.qweight.size()), im.k_pad * im.n_pad / 8);
                    EXPECT_EQ(int64_t(im.scales.size()), im.groups_pad * im.n_pad);
                    EXPECT_EQ(int64_t(im.zeros.size()), sym ? 0 : im.groups_pad * im.n_pad / 8);
                    EXPECT_EQ(im.groups_pad, gs > 0 ? im.k_pad / gs : 1);
                    // Gathering X is needed exactly when the sorted order is not the identity.
                    const bool permuted = gi == GIdx::Gptq || gi == GIdx::Arbitrary;
                    if (gs > 0 && gi == GIdx::Monotone) EXPECT_FALSE(im.act_order());
                    if (gs == 0 || gi == GIdx::None) EXPECT_FALSE(im.act_order());
                    (void)permuted;  // a random permutation may still sort into the identity
                    if (im.act_order()) {
                        // every canonical row appears exactly once
                        std::vector<int> seen(size_t(c.k), 0);
                        for (int32_t s : im.row_src)
                            if (s >= 0) seen[size_t(s)]++;
                        for (int64_t k = 0; k < c.k; ++k) ASSERT_EQ(seen[size_t(k)], 1) << "row " << k;
                        // sorted by group, each group's rows in chunks of group_size aligned to groups
                        for (int64_t v = 0; v < im.k_pad; ++v) {
                            const int32_t s = im.row_src[size_t(v)];
                            if (s < 0) continue;
                            const int32_t cg = c.g_idx[size_t(s)];
                            ASSERT_GE(im.group_vrow[size_t(cg)], 0);
                            ASSERT_LE(im.group_vrow[size_t(cg)], v / gs);
                        }
                    }
                    const Int4Canonical u = unpack_image(im);
                    EXPECT_EQ(u.k, c.k);
                    EXPECT_EQ(u.n, c.n);
                    EXPECT_EQ(u.group_size, c.group_size);
                    EXPECT_EQ(u.symmetric, c.symmetric);
                    EXPECT_TRUE(u.q == c.q);
                    EXPECT_TRUE(u.scales == c.scales);
                    EXPECT_TRUE(u.zeros == c.zeros);
                    EXPECT_TRUE(u.g_idx == c.g_idx);
                    ++cases;
                }
    EXPECT_EQ(cases, int(std::size(kOddShapes) * std::size(kGroupSizes) * 2 * std::size(kGIdxModes)));
}

// Dequantized value of virtual row v, column n of the image, the way the reference kernel reads it.
double image_dequant(const Int4CudaImage& im, int64_t v, int64_t n) {
    const QPos p = q_position(im.n_pad, v, n);
    const double q = (im.qweight[size_t(p.word)] >> (4 * p.nibble)) & 0xf;
    const int64_t g = im.group_size > 0 ? v / im.group_size : 0;
    const double s = llmn::f16_to_f32(im.scales[size_t(scale_index(im.n_pad, g, n))]);
    const double z = im.symmetric ? 8 : (im.zeros[size_t(zero_word_index(im.n_pad, g, n))] >> (4 * zero_nibble(n))) & 0xf;
    return (q - z) * s;
}

TEST(GemmInt4CudaLayout, ImageDequantizesLikeCanonicalAndPaddingIsZero) {
    auto g = rng(102);
    for (const Shape& sh : kOddShapes)
        for (int32_t gs : kGroupSizes)
            for (bool sym : {true, false})
                for (GIdx gi : kGIdxModes) {
                    SCOPED_TRACE(testing::Message() << "k=" << sh.k << " n=" << sh.n << " gs=" << gs << " sym=" << sym
                                                    << " g_idx=" << gidx_name(gi));
                    const Int4Canonical c = random_canonical(g, sh.k, sh.n, gs, sym, gi);
                    const Int4CudaImage im = build_image(c);
                    int64_t bad = 0;
                    for (int64_t v = 0; v < im.k_pad; ++v) {
                        const int64_t src = im.act_order() ? im.row_src[size_t(v)] : (v < c.k ? v : -1);
                        for (int64_t n = 0; n < im.n_pad; ++n) {
                            const double d = image_dequant(im, v, n);
                            const double want = (src >= 0 && n < c.n) ? dequant(c, src, n) : 0.0;
                            if (d != want && ++bad < 5)
                                ADD_FAILURE() << "v=" << v << " n=" << n << " got " << d << " want " << want;
                        }
                    }
                    EXPECT_EQ(bad, 0);
                }
}

TEST(GemmInt4CudaLayout, WeightLoadsAreMmaBFragmentsAfterDequant) {
    // For every lane's 16-byte load (k16 block kb, strip, lane) the kernel's dequantization must yield
    // exactly the mma B fragments (b0, b1 of fragments 0..7) with the integer q - zero, in both fp16
    // and bf16, and the loads must cover every weight exactly once.
    auto g = rng(103);
    for (bool sym : {true, false}) {
        const Int4Canonical c = random_canonical(g, 256, 192, 64, sym, GIdx::None);
        const Int4CudaImage im = build_image(c);
        std::vector<int> covered(size_t(im.k_pad * im.n_pad), 0);
        for (bool bf16 : {false, true})
            for (int64_t kb = 0; kb < im.k_pad / 16; ++kb)
                for (int64_t strip = 0; strip < im.n_pad / kStrip; ++strip)
                    for (int lane = 0; lane < 32; ++lane)
                        for (int j = 0; j < 4; ++j) {
                            const uint32_t w = im.qweight[size_t(q_word_index(im.n_pad, kb, strip, lane, j))];
                            // zero points of this lane's fragments 2j, 2j+1 come from the zero word
                            uint32_t zw = 0;
                            const int64_t grp = kb * 16 / 64;
                            if (!sym) zw = im.zeros[size_t(zero_word_index(im.n_pad, grp, strip * kStrip + lane / 4))];
                            uint32_t zc[2][2];
                            emulate_zero_consts(zw, j, bf16, !sym, zc);
                            float b[2][2][2];
                            emulate_dequant(w, zc, bf16, b);
                            for (int h = 0; h < 2; ++h) {
                                const int f = 2 * j + h;
                                const int64_t n = strip * kStrip + 8 * f + spec_b_n(lane);
                                ASSERT_EQ(8 * f + lane / 4, frag_col(f, lane));
                                for (int r = 0; r < 2; ++r)
                                    for (int e = 0; e < 2; ++e) {
                                        const int64_t k = kb * 16 + spec_b_k(lane, r, e);
                                        const int want = int(c.q[size_t(k * c.n + n)]) - int(c.zeros[size_t(grp * c.n + n)]);
                                        ASSERT_EQ(b[h][r][e], float(want))
                                            << "bf16=" << bf16 << " kb=" << kb << " strip=" << strip << " lane=" << lane
                                            << " word=" << j << " h=" << h << " r=" << r << " e=" << e;
                                        if (!bf16) covered[size_t(k * im.n_pad + n)]++;
                                    }
                            }
                        }
        for (int64_t i = 0; i < im.k_pad * im.n_pad; ++i) ASSERT_EQ(covered[size_t(i)], 1) << "element " << i;
    }
}

TEST(GemmInt4CudaLayout, DequantIsExactForEveryNibbleAndZero) {
    // All 16 x 16 (q, zero) combinations through both conversions, in every nibble slot.
    for (bool bf16 : {false, true})
        for (uint32_t z = 0; z < 16; ++z)
            for (uint32_t q = 0; q < 16; ++q)
                for (int slot = 0; slot < 8; ++slot) {
                    const uint32_t w = 0x5a5a5a5au & ~(0xfu << (4 * slot)) | (q << (4 * slot));
                    for (bool zp : {false, true}) {
                        if (!zp && z != 8) continue;
                        uint32_t zc[2][2];
                        emulate_zero_consts(z * 0x11111111u, slot % 4 / 2, bf16, zp, zc);
                        float b[2][2][2];
                        emulate_dequant(w, zc, bf16, b);
                    const int e = slot / 4, h = (slot % 4) / 2, r = slot % 2;
                    ASSERT_EQ(q_nibble(h, r, e), slot);
                        ASSERT_EQ(b[h][r][e], float(int(q) - int(z))) << "bf16=" << bf16 << " q=" << q << " z=" << z;
                    }
                }
}

TEST(GemmInt4CudaLayout, ScaleAndZeroVectorsFollowFragmentColumns) {
    auto g = rng(104);
    const Int4Canonical c = random_canonical(g, 256, 320, 32, false, GIdx::None);
    const Int4CudaImage im = build_image(c);
    for (int64_t grp = 0; grp < c.groups(); ++grp)
        for (int64_t strip = 0; strip < im.n_pad / kStrip; ++strip)
            for (int lane = 0; lane < 32; ++lane) {
                // the kernel's 16-byte scale load: halves g*n_pad + strip*64 + 8*(lane/4) .. +7
                const int64_t base = grp * im.n_pad + strip * kStrip + 8 * (lane / 4);
                const uint32_t zw = im.zeros[size_t(grp * (im.n_pad / 8) + strip * 8 + lane / 4)];
                for (int f = 0; f < 8; ++f) {
                    const int64_t n = strip * kStrip + 8 * f + spec_b_n(lane);
                    ASSERT_EQ(im.scales[size_t(base + f)], c.scales[size_t(grp * c.n + n)]) << "lane " << lane << " f " << f;
                    ASSERT_EQ((zw >> (4 * zero_slot(f))) & 0xf, c.zeros[size_t(grp * c.n + n)]);
                }
                // the kernel's pair extraction for weight word j: halves hold fragments 2j, 2j+1
                for (int j = 0; j < 4; ++j) {
                    const uint32_t pair = (zw >> (4 * j)) & kLoMask;
                    ASSERT_EQ(pair & 0xf, c.zeros[size_t(grp * c.n + strip * kStrip + 8 * (2 * j) + lane / 4)]);
                    ASSERT_EQ(pair >> 16, c.zeros[size_t(grp * c.n + strip * kStrip + 8 * (2 * j + 1) + lane / 4)]);
                }
            }
}


TEST(GemmInt4CudaLayout, ActivationSwizzleFeedsLdmatrixAFragmentsWithoutBankConflicts) {
    for (int m_blocks = 1; m_blocks <= 4; ++m_blocks)
        for (int k_blocks : {4, 8}) {
            SCOPED_TRACE(testing::Message() << "m_blocks=" << m_blocks << " k_blocks=" << k_blocks);
            const int rows = m_blocks * 16, chunks = k_blocks * 2;
            // The fetch writes chunk (r, ch) of the tile at a_smem_chunk(r, ch): a bijection onto the tile.
            std::vector<int> owner(size_t(rows * chunks), -1);
            for (int c = 0; c < rows * chunks; ++c) {
                const int r = c / chunks, ch = c % chunks, at = a_smem_chunk(r, ch, chunks);
                ASSERT_GE(at, 0);
                ASSERT_LT(at, rows * chunks);
                ASSERT_EQ(owner[size_t(at)], -1);
                owner[size_t(at)] = r * 1000 + ch;
            }
            // ldmatrix.x4 (PTX): lanes 8i..8i+7 supply the row addresses of matrix i; lane l receives, in
            // register i, elements 2*(l%4) and 2*(l%4)+1 of row l/4 of matrix i.
            for (int mb = 0; mb < m_blocks; ++mb)
                for (int kk = 0; kk < k_blocks; ++kk) {
                    for (int i = 0; i < 4; ++i) {
                        std::set<int> bank_groups;
                        for (int j = 0; j < 8; ++j) {
                            const int src = 8 * i + j;
                            const int at = a_smem_chunk(a_ldsm_row(mb, src), a_ldsm_chunk(kk, src), chunks);
                            bank_groups.insert(at % 8);  // 16-byte chunk -> group of 4 banks
                        }
                        EXPECT_EQ(bank_groups.size(), 8u) << "matrix " << i << " of mb " << mb << " kk " << kk;
                    }
                    for (int lane = 0; lane < 32; ++lane)
                        for (int i = 0; i < 4; ++i)
                            for (int e = 0; e < 2; ++e) {
                                const int src = 8 * i + lane / 4;
                                const int at = a_smem_chunk(a_ldsm_row(mb, src), a_ldsm_chunk(kk, src), chunks);
                                const int r = owner[size_t(at)] / 1000, ch = owner[size_t(at)] % 1000;
                                const int col = ch * 8 + 2 * (lane % 4) + e;
                                ASSERT_EQ(r, mb * 16 + spec_a_row(lane, i)) << "lane " << lane << " reg " << i;
                                ASSERT_EQ(col, kk * 16 + spec_a_col(lane, i, e)) << "lane " << lane << " reg " << i;
                            }
                }
        }
}

TEST(GemmInt4CudaLayout, AccumulatorMappingIsTheCFragment) {
    for (int mb = 0; mb < 4; ++mb)
        for (int f = 0; f < 8; ++f)
            for (int lane = 0; lane < 32; ++lane)
                for (int i = 0; i < 4; ++i) {
                    EXPECT_EQ(c_row(mb, lane, i), mb * 16 + spec_c_row(lane, i));
                    EXPECT_EQ(c_col(f, lane, i), 8 * f + spec_c_col(lane, i));
                }
}

TEST(GemmInt4CudaLayout, StripedPartitionCoversEveryTileAndSlotsAreUnique) {
    int checked = 0;
    for (int k_tiles : {1, 2, 3, 5, 8, 32, 64})
        for (int n_tiles : {1, 2, 7, 16, 33})
            for (int problems : {1, 2, 5})
                for (int sms : {1, 3, 7, 46, 108, 132}) {
                    SCOPED_TRACE(testing::Message() << "k_tiles=" << k_tiles << " n_tiles=" << n_tiles
                                                    << " problems=" << problems << " sms=" << sms);
                    const int64_t total = int64_t(k_tiles) * n_tiles * problems;
                    const Partition part = make_partition(total, sms);
                    ASSERT_GE(part.blocks, 1);
                    ASSERT_LE(part.blocks, sms);
                    std::vector<int> owner(size_t(total), -1);
                    for (int b = 0; b < part.blocks; ++b) {
                        const int64_t t0 = int64_t(b) * part.iters, t1 = std::min<int64_t>(total, t0 + part.iters);
                        ASSERT_LT(t0, t1) << "block " << b << " has no tile";
                        for (int64_t t = t0; t < t1; ++t) {
                            ASSERT_EQ(owner[size_t(t)], -1);
                            owner[size_t(t)] = b;
                        }
                    }
                    for (int64_t t = 0; t < total; ++t) ASSERT_GE(owner[size_t(t)], 0);
                    std::map<int, int> slot_user;     // first block -> slice
                    std::map<int, int> partial_user;  // partial slot -> slice
                    const int slices = n_tiles * problems;
                    for (int s = 0; s < slices; ++s) {
                        // blocks contributing to slice s, from the ownership table
                        std::set<int> blocks;
                        for (int kt = 0; kt < k_tiles; ++kt) blocks.insert(owner[size_t(s * k_tiles + kt)]);
                        for (int kt = 0; kt < k_tiles; ++kt) {
                            const int t = s * k_tiles + kt;
                            const SliceShare sh = slice_share(t, k_tiles, part.iters, owner[size_t(t)]);
                            ASSERT_EQ(sh.first_block, *blocks.begin());
                            ASSERT_EQ(sh.count, int(blocks.size()));
                            ASSERT_EQ(sh.index, *blocks.rbegin() - owner[size_t(t)]);  // highest block first
                            // contributors are consecutive blocks
                            ASSERT_EQ(*blocks.rbegin() - *blocks.begin() + 1, int(blocks.size()));
                        }
                        if (blocks.size() > 1) {
                            ASSERT_EQ(slot_user.count(*blocks.begin()), 0u) << "slot " << *blocks.begin() << " shared";
                            slot_user[*blocks.begin()] = s;
                            // last arrival: each contributor's partial slot is in range and its own
                            for (const int b : blocks) {
                                const int ps = partial_slot(s, k_tiles, part.iters, b);
                                ASSERT_GE(ps, 0);
                                ASSERT_LT(ps, kSlotsPerBlock * part.blocks);
                                ASSERT_EQ(ps / kSlotsPerBlock, b) << "a block writes only its own slots";
                                ASSERT_EQ(partial_user.count(ps), 0u) << "partial slot " << ps << " shared";
                                partial_user[ps] = s;
                            }
                        }
                    }
                    ++checked;
                }
    EXPECT_GT(checked, 0);
}

TEST(GemmInt4CudaLayout, TileConfigurationsDivideAndFitSharedMemory) {
    // 99 KiB is the opt-in maximum per block on sm_86/sm_89, the smallest of the supported GPUs.
    for (int64_t n_pad = 64; n_pad <= 1024; n_pad += 64)
        for (int m_blocks = 1; m_blocks <= 4; ++m_blocks) {
            const TileConfig c = choose_tile(m_blocks, n_pad);
            EXPECT_EQ(c.m_blocks, m_blocks);
            EXPECT_EQ(n_pad % (c.n_blocks * 16), 0) << "n_pad " << n_pad;
            EXPECT_EQ(kPadK % (c.k_blocks * 16), 0);
            EXPECT_EQ(8 % strips_of(c), 0);
            EXPECT_GE(c.k_blocks / k_groups_of(c), 1);
            EXPECT_EQ(c.k_blocks % k_groups_of(c), 0);
            for (bool grouped : {false, true})
                for (bool zp : {false, true}) {
                    EXPECT_LE(smem_bytes(c, grouped, zp), 99 * 1024);
                    EXPECT_GE(stage_bytes(c, grouped, zp), kReduceBytes);
                    EXPECT_EQ(stage_bytes(c, grouped, zp) % 16, 0);
                }
            // scale rows of one stage never run past the padded groups
            for (int gs : {32, 64, 128}) {
                const int gb = gs / 16;
                EXPECT_LE(scale_rows_per_stage(c.k_blocks, gb) * gb, std::max(c.k_blocks, gb));
            }
        }
}

// ------------------------------------------------------------------------------------------------
// Host emulation of gemm_int4_fast_kernel and of the host launch plan of gemm_int4_cuda. It mirrors the
// kernel statement by statement (fetch mapping, per-warp k16 steps, fragments, reductions, write-out)
// and replaces each PTX instruction by its ISA definition. Protocol checks: block-reduction slots are
// written once and read by the right partner, a block finds its slice lock at its own index, locks end
// at 0, every output is written exactly once.
// ------------------------------------------------------------------------------------------------
class FastEmulator {
public:
    // reduce_last: the last-arrival cross-block reduction (partial_slot) instead of the serial lock chain.
    // order_seed: with reduce_last, blocks run in a random order drawn from it (nothing waits in that
    // protocol, so any order of whole blocks is a schedule the GPU may produce); 0 = highest block first.
    FastEmulator(const Int4CudaImage& im, bool bf16, int sms, bool reduce_last = false, uint64_t order_seed = 0)
        : im_(im), bf16_(bf16), sms_(sms), reduce_last_(reduce_last), order_seed_(order_seed) {}

    std::vector<float> run(const std::vector<float>& x, int64_t m, const std::vector<float>* bias, int64_t stage_rows) {
        std::vector<float> y(static_cast<size_t>(m * im_.n), std::numeric_limits<float>::quiet_NaN());
        writes_.assign(size_t(m * im_.n), 0);
        const bool staged = needs_x_stage(im_.act_order(), im_.k);
        const int64_t chunk = staged ? stage_rows : m;
        for (int64_t r0 = 0; r0 < m; r0 += chunk) {
            const int64_t rows = std::min(chunk, m - r0);
            std::vector<float> xs;
            const float* xp;
            int64_t x_stride, x_k;
            if (staged) {  // gather_x_kernel
                xs.assign(size_t(rows * im_.k_pad), 0.f);
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t v = 0; v < im_.k_pad; ++v) {
                        const int64_t src = im_.act_order() ? im_.row_src[size_t(v)] : (v < im_.k ? v : -1);
                        xs[size_t(r * im_.k_pad + v)] = src >= 0 ? x[size_t((r0 + r) * im_.k + src)] : 0.f;
                    }
                xp = xs.data();
                x_stride = im_.k_pad;
                x_k = im_.k_pad;
            } else {
                xp = x.data() + r0 * im_.k;
                x_stride = im_.k;
                x_k = im_.k;
            }
            for_each_launch(rows, [&](int64_t first, int m_blocks, int problems, int valid) {
                launch(choose_tile(m_blocks, im_.n_pad), problems, xp + first * x_stride, x_stride, x_k, valid,
                       y.data() + (r0 + first) * im_.n, r0 + first, bias);
            });
        }
        for (size_t i = 0; i < writes_.size(); ++i)
            if (writes_[i] != 1) {
                ADD_FAILURE() << "output " << i << " written " << writes_[i] << " times";
                break;
            }
        return y;
    }

    int launches() const { return launches_; }

private:
    float rd(double v) const { return bf16_ ? bf16r(float(v)) : f16r(float(v)); }

    void launch(const TileConfig& cfg, int problems, const float* x, int64_t x_stride, int64_t x_k, int m,
                float* y, int64_t y_row0, const std::vector<float>* bias) {
        ++launches_;
        const int kMB = cfg.m_blocks, kKB = cfg.k_blocks, kNB = cfg.n_blocks;
        const int kStrips = strips_of(cfg), kKGroups = k_groups_of(cfg), kSteps = kKB / kKGroups;
        const int kRows = kMB * 16, kTK = kKB * 16, kTN = kNB * 16, kAChunks = kTK / 8;
        const int kAVec = kRows * kAChunks, kBVec = kKB * kStrips * 32;
        const int kSRowVec = kTN / 8, kZRowVec = kTN / 32;
        const bool grouped = im_.group_size > 0, zp = !im_.symmetric;
        const int group_shift = grouped ? int(std::log2(im_.group_size / 16)) : 0;
        const int k_tiles = int(im_.k_pad / kTK), n_tiles = int(im_.n_pad / kTN);
        const int total = k_tiles * n_tiles * problems;
        const Partition part = make_partition(total, sms_);
        const int64_t strips_total = im_.n_pad / kStrip;
        const int s_rows = grouped ? scale_rows_per_stage(kKB, 1 << group_shift) : 1;
        const int n = int(im_.n);

        std::vector<float> red(size_t(part.blocks) * kSlotsPerBlock * 64 * 256, 0.f);  // kSlotFloats per slot
        std::vector<int> slot_slice(size_t(part.blocks) * kSlotsPerBlock, -1);  // last arrival: slice in each slot
        std::vector<int> locks(size_t(part.blocks), 0);
        std::vector<float> sA(size_t(kAVec) * 8);
        std::vector<uint32_t> sB(size_t(kBVec) * 4);
        std::vector<uint16_t> sS(size_t(kKB / 2 + 1) * kSRowVec * 8);
        std::vector<uint32_t> sZ(size_t(kKB / 2 + 1) * kZRowVec * 4);
        // acc[warp][lane][mb][f][i]
        std::vector<float> acc(static_cast<size_t>(8 * 32 * kMB * 8 * 4));
        auto A = [&](int warp, int lane, int mb, int f, int i) -> float& {
            return acc[size_t((((warp * 32 + lane) * kMB + mb) * 8 + f) * 4 + i)];
        };

        std::vector<int> order(size_t(part.blocks));
        for (int b = 0; b < part.blocks; ++b) order[size_t(b)] = part.blocks - 1 - b;  // highest first: the locks' order
        if (reduce_last_ && order_seed_ != 0) {
            std::mt19937_64 og(order_seed_ + uint64_t(launches_));
            std::shuffle(order.begin(), order.end(), og);
        }
        for (const int b : order) {
            const int t_begin = b * part.iters, t_end = std::min(total, t_begin + part.iters);
            std::fill(acc.begin(), acc.end(), 0.f);
            for (int t = t_begin; t < t_end; ++t) {
                const int slice = t / k_tiles, kt = t - slice * k_tiles;
                const int nt = slice / problems, prob = slice - nt * problems;
                // ---- fetch
                const int row0 = prob * kRows;
                for (int c = 0; c < kAVec; ++c) {
                    const int r = c / kAChunks, ch = c % kAChunks;
                    const int row = row0 + r, kc = kt * kTK + ch * 8;
                    const bool ok = row < m && kc < x_k;
                    const int at = a_smem_chunk(r, ch, kAChunks);
                    for (int e = 0; e < 8; ++e) sA[size_t(at * 8 + e)] = ok ? x[size_t(row * x_stride + kc + e)] : 0.f;
                }
                for (int c = 0; c < kBVec; ++c) {
                    const int kb = c / (kStrips * 32), rest = c % (kStrips * 32);
                    const int64_t src = (int64_t(kt) * kKB + kb) * strips_total * 32 + int64_t(nt) * kStrips * 32 + rest;
                    for (int e = 0; e < 4; ++e) sB[size_t(c * 4 + e)] = im_.qweight[size_t(src * 4 + e)];
                }
                const int g0 = grouped ? ((kt * kKB) >> group_shift) : 0;
                if (grouped)
                    for (int c = 0; c < s_rows * kSRowVec; ++c) {
                        const int r = c / kSRowVec, cc = c % kSRowVec;
                        const int64_t src = int64_t(g0 + r) * im_.n_pad + int64_t(nt) * kTN + cc * 8;
                        for (int e = 0; e < 8; ++e) sS[size_t(c * 8 + e)] = im_.scales[size_t(src + e)];
                    }
                if (zp)
                    for (int c = 0; c < s_rows * kZRowVec; ++c) {
                        const int r = c / kZRowVec, cc = c % kZRowVec;
                        const int64_t src = int64_t(g0 + r) * (im_.n_pad / 8) + int64_t(nt) * (kTN / 8) + cc * 4;
                        for (int e = 0; e < 4; ++e) sZ[size_t(c * 4 + e)] = im_.zeros[size_t(src + e)];
                    }
                // ---- compute
                for (int warp = 0; warp < 8; ++warp) {
                    const int strip = warp % kStrips, kgroup = warp / kStrips;
                    for (int j = 0; j < kSteps; ++j) {
                        const int kk = j * kKGroups + kgroup;
                        const int srow = grouped ? (kk >> group_shift) : 0;
                        // per lane: A registers (ldmatrix), dequantized + scaled B registers
                        float a[32][4][4][2];
                        float bv[32][8][2][2];
                        for (int lane = 0; lane < 32; ++lane) {
                            for (int mb = 0; mb < kMB; ++mb)
                                for (int i = 0; i < 4; ++i)
                                    for (int e = 0; e < 2; ++e) {
                                        const int src = 8 * i + lane / 4;
                                        const int at = a_smem_chunk(a_ldsm_row(mb, src), a_ldsm_chunk(kk, src), kAChunks);
                                        a[lane][mb][i][e] = sA[size_t(at * 8 + 2 * (lane % 4) + e)];
                                    }
                            const int bi = (kk * kStrips + strip) * 32 + lane;
                            uint32_t zw = 0x88888888u;
                            if (zp) zw = sZ[size_t(srow * (kTN / 8) + strip * 8 + (lane >> 2))];
                            for (int jw = 0; jw < 4; ++jw) {
                                uint32_t zc[2][2];
                                emulate_zero_consts(zw, jw, bf16_, zp, zc);
                                float d[2][2][2];
                                emulate_dequant(sB[size_t(bi * 4 + jw)], zc, bf16_, d);
                                for (int h = 0; h < 2; ++h) {
                                    float s = 1.f;
                                    if (grouped) {
                                        const int sv = srow * kSRowVec + strip * 8 + (lane >> 2);
                                        s = llmn::f16_to_f32(sS[size_t(sv * 8 + 2 * jw + h)]);
                                        if (bf16_) s = bf16r(s);
                                    }
                                    for (int r = 0; r < 2; ++r)
                                        for (int e = 0; e < 2; ++e)
                                            bv[lane][2 * jw + h][r][e] = grouped ? rd(double(d[h][r][e]) * s) : d[h][r][e];
                                }
                            }
                        }
                        // mma.m16n8k16 by its definition: D = A * B + C over the warp's fragments
                        for (int mb = 0; mb < kMB; ++mb)
                            for (int f = 0; f < 8; ++f) {
                                double Am[16][16], Bm[16][8];
                                for (int lane = 0; lane < 32; ++lane) {
                                    for (int i = 0; i < 4; ++i)
                                        for (int e = 0; e < 2; ++e)
                                            Am[spec_a_row(lane, i)][spec_a_col(lane, i, e)] = a[lane][mb][i][e];
                                    for (int i = 0; i < 2; ++i)
                                        for (int e = 0; e < 2; ++e)
                                            Bm[spec_b_k(lane, i, e)][spec_b_n(lane)] = bv[lane][f][i][e];
                                }
                                for (int lane = 0; lane < 32; ++lane)
                                    for (int i = 0; i < 4; ++i) {
                                        const int r = spec_c_row(lane, i), cc = spec_c_col(lane, i);
                                        double sum = A(warp, lane, mb, f, i);
                                        for (int kx = 0; kx < 16; ++kx) sum += Am[r][kx] * Bm[kx][cc];
                                        A(warp, lane, mb, f, i) = float(sum);
                                    }
                            }
                    }
                }
                if (!(kt == k_tiles - 1 || t == t_end - 1)) continue;
                // ---- finish: block reduction through kReduceBytes of shared memory
                const int rows_valid = std::min(kRows, m - prob * kRows);
                const int red_cells = kReduceBytes / 16;
                std::vector<float> cell(size_t(red_cells) * 4);
                std::vector<int> stamp(size_t(red_cells), -1), writer(size_t(red_cells), -1);
                int round = 0;
                for (int mb = 0; mb < kMB; ++mb) {
                    if (mb * 16 >= rows_valid) break;
                    for (int fh = 0; fh < 2; ++fh)
                        for (int half = kKGroups / 2; half >= 1; half /= 2, ++round) {
                            for (int warp = 0; warp < 8; ++warp) {
                                const int strip = warp % kStrips, kgroup = warp / kStrips;
                                if (!(kgroup >= half && kgroup < 2 * half)) continue;
                                for (int lane = 0; lane < 32; ++lane)
                                    for (int fi = 0; fi < 4; ++fi) {
                                        const int idx = ((fi * half + (kgroup - half)) * kStrips + strip) * 32 + lane;
                                        ASSERT_LT(idx, red_cells);
                                        ASSERT_NE(stamp[size_t(idx)], round) << "reduction cell written twice";
                                        stamp[size_t(idx)] = round;
                                        writer[size_t(idx)] = (warp * 32 + lane) * 4 + fi;
                                        for (int i = 0; i < 4; ++i) cell[size_t(idx * 4 + i)] = A(warp, lane, mb, fh * 4 + fi, i);
                                    }
                            }
                            for (int warp = 0; warp < 8; ++warp) {
                                const int strip = warp % kStrips, kgroup = warp / kStrips;
                                if (kgroup >= half) continue;
                                for (int lane = 0; lane < 32; ++lane)
                                    for (int fi = 0; fi < 4; ++fi) {
                                        const int idx = ((fi * half + kgroup) * kStrips + strip) * 32 + lane;
                                        ASSERT_EQ(stamp[size_t(idx)], round) << "reduction cell read before written";
                                        ASSERT_EQ(writer[size_t(idx)], ((warp + half * kStrips) * 32 + lane) * 4 + fi);
                                        for (int i = 0; i < 4; ++i) A(warp, lane, mb, fh * 4 + fi, i) += cell[size_t(idx * 4 + i)];
                                    }
                            }
                        }
                }
                // ---- cross-block reduction (blocks run highest first here, the order the locks enforce on the GPU)
                const SliceShare share = slice_share(t, k_tiles, part.iters, b);
                bool write = true;
                if (share.count > 1 && reduce_last_) {
                    // publish this stripe's partial (k group 0, rows below rows_valid), count the arrival
                    const int mine = partial_slot(slice, k_tiles, part.iters, b);
                    ASSERT_GE(mine, 0);
                    ASSERT_LT(mine, part.blocks * kSlotsPerBlock);
                    ASSERT_EQ(slot_slice[size_t(mine)], -1) << "partial slot " << mine << " written twice";
                    slot_slice[size_t(mine)] = slice;
                    // fn(accumulator, slot cell) for each value k group 0 publishes: rows below rows_valid
                    auto for_each_cell = [&](int slot, auto&& fn) {
                        for (int warp = 0; warp < kStrips; ++warp)
                            for (int lane = 0; lane < 32; ++lane)
                                for (int mb = 0; mb < kMB; ++mb) {
                                    if (c_row(mb, lane, 0) >= rows_valid) break;
                                    for (int f = 0; f < 8; ++f) {
                                        const size_t c = size_t(((mb * 8 + f) * kStrips + warp) * 32 + lane) * 4;
                                        EXPECT_LT(c + 3, size_t(64 * 256));
                                        float* cell = red.data() + size_t(slot) * 64 * 256 + c;
                                        for (int i = 0; i < 4; ++i) fn(A(warp, lane, mb, f, i), cell[i]);
                                    }
                                }
                    };
                    for_each_cell(mine, [](float a, float& cell) { cell = a; });
                    int& counter = locks[size_t(share.first_block)];
                    const int before = counter++;
                    ASSERT_LT(before, share.count) << "more arrivals than contributors";
                    write = before == share.count - 1;
                    if (write) {
                        counter = 0;
                        std::fill(acc.begin(), acc.end(), 0.f);
                        for (int sb = share.first_block; sb < share.first_block + share.count; ++sb) {
                            const int slot = partial_slot(slice, k_tiles, part.iters, sb);
                            ASSERT_EQ(slot_slice[size_t(slot)], slice) << "slot " << slot << " read before written";
                            slot_slice[size_t(slot)] = -1;  // consumed: free for a later launch
                            for_each_cell(slot, [](float& a, float cell) { a += cell; });
                        }
                    }
                } else if (share.count > 1) {
                    ASSERT_EQ(locks[size_t(share.first_block)], share.index) << "lock protocol";
                    const bool last = share.index == share.count - 1;
                    float* slot = red.data() + size_t(share.first_block) * 64 * 256;
                    for (int warp = 0; warp < kStrips; ++warp)  // k group 0
                        for (int lane = 0; lane < 32; ++lane)
                            for (int mb = 0; mb < kMB; ++mb) {
                                if (mb * 16 >= rows_valid) break;
                                for (int f = 0; f < 8; ++f) {
                                    float* c4 = slot + size_t((((mb * 8 + f) * kStrips + warp) * 32 + lane) * 4);
                                    ASSERT_LT(size_t((((mb * 8 + f) * kStrips + warp) * 32 + lane) * 4 + 3), size_t(64 * 256));
                                    for (int i = 0; i < 4; ++i) {
                                        if (share.index > 0) A(warp, lane, mb, f, i) += c4[i];
                                        if (!last) c4[i] = A(warp, lane, mb, f, i);
                                    }
                                }
                            }
                    if (!last) {
                        locks[size_t(share.first_block)] = share.index + 1;
                        write = false;
                    } else {
                        locks[size_t(share.first_block)] = 0;
                    }
                }
                if (write)
                    for (int warp = 0; warp < kStrips; ++warp)
                        for (int lane = 0; lane < 32; ++lane)
                            for (int mb = 0; mb < kMB; ++mb) {
                                if (mb * 16 >= rows_valid) break;
                                for (int f = 0; f < 8; ++f)
                                    for (int i = 0; i < 4; i += 2) {
                                        const int row = c_row(mb, lane, i);
                                        const int col = nt * kTN + warp * kStrip + c_col(f, lane, i);
                                        float v0 = A(warp, lane, mb, f, i), v1 = A(warp, lane, mb, f, i + 1);
                                        if (!grouped) {
                                            v0 *= llmn::f16_to_f32(im_.scales[size_t(scale_index(im_.n_pad, 0, col))]);
                                            v1 *= llmn::f16_to_f32(im_.scales[size_t(scale_index(im_.n_pad, 0, col + 1))]);
                                        }
                                        if (bias) {
                                            if (col < n) v0 += (*bias)[size_t(col)];
                                            if (col + 1 < n) v1 += (*bias)[size_t(col + 1)];
                                        }
                                        if (row >= rows_valid) continue;
                                        const int64_t out_row = prob * kRows + row;
                                        if (col < n) {
                                            y[size_t(out_row * n + col)] = rd(v0);
                                            writes_[size_t((y_row0 + out_row) * n + col)]++;
                                        }
                                        if (col + 1 < n) {
                                            y[size_t(out_row * n + col + 1)] = rd(v1);
                                            writes_[size_t((y_row0 + out_row) * n + col + 1)]++;
                                        }
                                    }
                            }
                std::fill(acc.begin(), acc.end(), 0.f);
            }
        }
        for (int b = 0; b < part.blocks; ++b) ASSERT_EQ(locks[size_t(b)], 0) << "lock " << b << " not reset";
        for (size_t i = 0; i < slot_slice.size(); ++i) ASSERT_EQ(slot_slice[i], -1) << "partial slot " << i << " never read";
    }

    const Int4CudaImage& im_;
    bool bf16_;
    int sms_;
    bool reduce_last_;
    uint64_t order_seed_;
    std::vector<int> writes_;
    int launches_ = 0;
};

struct EmuCase {
    int64_t k, n, m;
    int32_t gs;
    bool sym;
    GIdx gi;
    bool bf16;
    int sms;
    bool bias;
    int64_t stage_rows;
};

void run_emulation_case(const EmuCase& ec, std::mt19937_64& g) {
    SCOPED_TRACE(testing::Message() << "k=" << ec.k << " n=" << ec.n << " m=" << ec.m << " gs=" << ec.gs << " sym="
                                    << ec.sym << " g_idx=" << gidx_name(ec.gi) << " bf16=" << ec.bf16 << " sms=" << ec.sms
                                    << " bias=" << ec.bias << " stage_rows=" << ec.stage_rows);
    const Int4Canonical c = random_canonical(g, ec.k, ec.n, ec.gs, ec.sym, ec.gi);
    const Int4CudaImage im = build_image(c);
    const std::vector<float> x = random_x(g, ec.m * ec.k, ec.bf16);
    std::vector<float> bias;
    if (ec.bias) bias = random_x(g, ec.n, ec.bf16);
    const Reference ref = reference(c, x, ec.m, ec.bias ? &bias : nullptr);
    // Both cross-block reductions: the serial lock chain, and last arrival with blocks in a random order
    // and highest first, whose outputs must be bitwise equal (the sum order does not depend on arrival).
    std::vector<float> last_y;
    for (int mode = 0; mode < 3; ++mode) {
        SCOPED_TRACE(mode == 0 ? "serial reduction" : mode == 1 ? "last arrival, random block order"
                                                               : "last arrival, highest block first");
        FastEmulator emu(im, ec.bf16, ec.sms, mode > 0, mode == 1 ? g() | 1 : 0);
        const std::vector<float> y = emu.run(x, ec.m, ec.bias ? &bias : nullptr, ec.stage_rows);
        if (testing::Test::HasFatalFailure()) return;
        int64_t bad = 0;
        for (size_t i = 0; i < y.size(); ++i) {
            const double bound = fast_bound(ref.y[i], ref.s[i], im.k_pad, ec.gs > 0, ec.bf16);
            if (!(std::fabs(double(y[i]) - ref.y[i]) <= bound) && ++bad <= 5)
                ADD_FAILURE() << "y[" << i / ec.n << "][" << i % ec.n << "] = " << y[i] << ", float64 " << ref.y[i]
                              << ", bound " << bound;
        }
        EXPECT_EQ(bad, 0);
        if (mode == 1) last_y = y;
        if (mode == 2) {
            int64_t differ = 0;
            for (size_t i = 0; i < y.size(); ++i) differ += llmn::f32_bits(y[i]) != llmn::f32_bits(last_y[i]);
            EXPECT_EQ(differ, 0) << "last-arrival results depend on the block order";
        }
    }
}

TEST(GemmInt4CudaLayout, HostEmulationOfFastKernelMatchesFloat64) {
    auto g = rng(105);
    const Shape shapes[] = {{200, 72}, {130, 100}, {77, 33}, {256, 128}, {520, 264}, {384, 512}};
    const int64_t ms[] = {1, 17, 70, 3, 16, 200};
    const GIdx gis[] = {GIdx::None, GIdx::Gptq, GIdx::Arbitrary};
    const int sms[] = {132, 3, 7, 1};
    int idx = 0;
    for (const Shape& sh : shapes)
        for (int32_t gs : kGroupSizes)
            for (bool sym : {true, false}) {
                EmuCase ec{sh.k, sh.n, ms[idx % 6], gs, sym, gis[(idx / 2) % 3], (idx % 2) == 1, sms[(idx / 3) % 4],
                           (idx % 3) == 0, 64};
                if (ec.k * ec.n * ec.m > 30000000) ec.m = 17;  // keep the emulation fast
                run_emulation_case(ec, g);
                if (HasFatalFailure()) return;
                ++idx;
            }
}

TEST(GemmInt4CudaLayout, HostEmulationCoversLaunchPlanAndStagingChunks) {
    auto g = rng(106);
    // several 64-row problems per launch plus a remainder; staged X in chunks of 64 and of 16 rows
    run_emulation_case({200, 72, 150, 32, false, GIdx::Gptq, false, 5, true, 64}, g);
    run_emulation_case({136, 64, 45, 64, true, GIdx::None, true, 2, false, 16}, g);
    run_emulation_case({128, 64, 64 * kMaxProblems + 20, 128, true, GIdx::None, false, 132, true, 64}, g);
    int launches = 0;
    for_each_launch(64 * kMaxProblems + 20, [&](int64_t first, int m_blocks, int problems, int valid) {
        ++launches;
        EXPECT_EQ(first % 64, 0);
        EXPECT_EQ(valid <= m_blocks * 16 * problems, true);
        EXPECT_GT(valid, (m_blocks * 16) * (problems - 1));
    });
    EXPECT_EQ(launches, 2);
    EXPECT_EQ(stage_chunk_rows(int64_t(16) << 20, 4096), 2048);
    EXPECT_EQ(stage_chunk_rows(16 * 1024, 128) % 16, 0);
}


// ------------------------------------------------------------------------------------------------
// GPU tests (skip visibly without a device)
// ------------------------------------------------------------------------------------------------
struct Ctx {
    llmn_context h = nullptr;
    explicit Ctx(int32_t backend) { EXPECT_EQ(llmn_context_create(backend, 0, &h), LLMN_STATUS_OK) << last_error(); }
    ~Ctx() {
        if (h) llmn_context_destroy(h);
    }
};

struct Buf {
    llmn_buffer h = nullptr;
    int32_t dtype;
    int64_t count;
    Buf(llmn_context ctx, int32_t dt, int64_t n) : dtype(dt), count(n) {
        EXPECT_EQ(llmn_buffer_create(ctx, dt, n, LLMN_MEMORY_DEVICE, &h), LLMN_STATUS_OK) << last_error();
    }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    ~Buf() {
        if (h) llmn_buffer_destroy(h);
    }
    static uint16_t to16(int32_t dt, float v) { return dt == LLMN_DTYPE_BF16 ? llmn::f32_to_bf16(v) : llmn::f32_to_f16(v); }
    static float from16(int32_t dt, uint16_t v) { return dt == LLMN_DTYPE_BF16 ? llmn::bf16_to_f32(v) : llmn::f16_to_f32(v); }
    void put(const std::vector<float>& v, int64_t offset = 0) {
        if (dtype == LLMN_DTYPE_F32) {
            EXPECT_EQ(llmn_buffer_upload(h, offset, v.data(), int64_t(v.size())), LLMN_STATUS_OK) << last_error();
            return;
        }
        std::vector<uint16_t> b(v.size());
        for (size_t i = 0; i < v.size(); ++i) b[i] = to16(dtype, v[i]);
        EXPECT_EQ(llmn_buffer_upload(h, offset, b.data(), int64_t(b.size())), LLMN_STATUS_OK) << last_error();
    }
    std::vector<float> get() const {
        std::vector<float> out(static_cast<size_t>(count));
        if (dtype == LLMN_DTYPE_F32) {
            EXPECT_EQ(llmn_buffer_download(h, 0, out.data(), count), LLMN_STATUS_OK) << last_error();
            return out;
        }
        std::vector<uint16_t> b(static_cast<size_t>(count));
        EXPECT_EQ(llmn_buffer_download(h, 0, b.data(), count), LLMN_STATUS_OK) << last_error();
        for (size_t i = 0; i < b.size(); ++i) out[i] = from16(dtype, b[i]);
        return out;
    }
    // Sentinel written after the output; 1280 is exact in f16, bf16 and f32 (1234 is not in bf16: it
    // reads back as 1232, which the first GPU run reported as an overwrite).
    static constexpr float kSentinel = 1280.0f;
    // NaN everywhere, then the sentinel from element `used` on.
    void poison(int64_t used) {
        if (dtype == LLMN_DTYPE_F32) {
            const float nan = std::numeric_limits<float>::quiet_NaN();
            EXPECT_EQ(llmn_buffer_fill(h, 0, count, &nan), LLMN_STATUS_OK) << last_error();
        } else {
            const uint16_t nan = dtype == LLMN_DTYPE_BF16 ? 0x7fc0 : 0x7e00;
            EXPECT_EQ(llmn_buffer_fill(h, 0, count, &nan), LLMN_STATUS_OK) << last_error();
        }
        if (count > used) put(std::vector<float>(size_t(count - used), kSentinel), used);
    }
};

struct Weight {
    llmn_int4_weight h = nullptr;
    Weight() = default;
    Weight(const Weight&) = delete;
    Weight& operator=(const Weight&) = delete;
    ~Weight() {
        if (h) llmn_int4_weight_destroy(h);
    }
};

// GPTQ v2 tensors (real zero points) encoding a canonical weight; g_idx passed when present.
struct Gptq {
    std::vector<int32_t> qweight, qzeros;
    std::vector<uint16_t> scales;
    llmn_gptq_tensors t{};
};

void make_gptq(const Int4Canonical& c, Gptq& p) {
    const int64_t K = c.k, N = c.n, G = c.groups();
    p.qweight.assign(size_t(K / 8 * N), 0);
    for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n)
            p.qweight[size_t((k / 8) * N + n)] =
                int32_t(uint32_t(p.qweight[size_t((k / 8) * N + n)]) | (uint32_t(c.q[size_t(k * N + n)]) << (4 * (k % 8))));
    p.qzeros.assign(size_t(G * ((N + 7) / 8)), 0);
    for (int64_t gg = 0; gg < G; ++gg)
        for (int64_t n = 0; n < N; ++n) {
            int32_t& w = p.qzeros[size_t(gg * ((N + 7) / 8) + n / 8)];
            w = int32_t(uint32_t(w) | (uint32_t(c.zeros[size_t(gg * N + n)]) << (4 * (n % 8))));
        }
    p.scales = c.scales;
    p.t = llmn_gptq_tensors{};
    p.t.k = K;
    p.t.n = N;
    p.t.group_size = c.group_size;
    p.t.symmetric = c.symmetric ? 1 : 0;
    p.t.format = LLMN_GPTQ_V2;
    p.t.scales_dtype = LLMN_DTYPE_F16;
    p.t.qweight = p.qweight.data();
    p.t.qzeros = p.qzeros.data();
    p.t.scales = p.scales.data();
    p.t.g_idx = c.g_idx.empty() ? nullptr : c.g_idx.data();
}

struct CpuIsaScalar {
    llmn_cpu_info info{};
    CpuIsaScalar() {
        llmn_get_cpu_info(&info);
        EXPECT_EQ(llmn_set_cpu_isa(LLMN_CPU_ISA_SCALAR), LLMN_STATUS_OK) << last_error();
    }
    ~CpuIsaScalar() { llmn_set_cpu_isa(info.active_isa); }
};

// A weight created the same way on a CUDA and a CPU context, and its dequantized matrix.
struct WeightPair {
    Weight gpu, cpu;
    std::vector<float> w;  // [k][n] dequantized (the CPU weight's; the CUDA one must be identical)
    int64_t k = 0, n = 0;
    int32_t gs = 0;
};

void make_weight_pair(std::mt19937_64& g, llmn_context gctx, llmn_context cctx, int64_t k, int64_t n, int32_t gs,
                      bool sym, GIdx gi, WeightPair& wp) {
    wp.k = k;
    wp.n = n;
    wp.gs = gs;
    if (k % 8 == 0 && (sym || n % 8 == 0)) {
        const Int4Canonical c = random_canonical(g, k, n, gs, sym, gi);
        Gptq p;
        make_gptq(c, p);
        LLMN_ASSERT_OK(llmn_int4_weight_import_gptq(gctx, &p.t, &wp.gpu.h));
        LLMN_ASSERT_OK(llmn_int4_weight_import_gptq(cctx, &p.t, &wp.cpu.h));
    } else {
        std::vector<float> dense = random_x(g, k * n, false);
        for (auto& v : dense) v *= 0.02f;
        llmn_int4_weight_desc d{};
        d.k = k;
        d.n = n;
        d.group_size = gs;
        d.symmetric = sym ? 1 : 0;
        LLMN_ASSERT_OK(llmn_int4_weight_quantize(gctx, &d, LLMN_DTYPE_F32, dense.data(), &wp.gpu.h));
        LLMN_ASSERT_OK(llmn_int4_weight_quantize(cctx, &d, LLMN_DTYPE_F32, dense.data(), &wp.cpu.h));
    }
    wp.w.assign(size_t(k * n), 0.f);
    std::vector<float> wg(size_t(k * n), -1.f);
    LLMN_ASSERT_OK(llmn_int4_weight_dequantize(wp.cpu.h, LLMN_DTYPE_F32, wp.w.data()));
    LLMN_ASSERT_OK(llmn_int4_weight_dequantize(wp.gpu.h, LLMN_DTYPE_F32, wg.data()));
    ASSERT_EQ(std::memcmp(wg.data(), wp.w.data(), wg.size() * sizeof(float)), 0)
        << "CUDA weight dequantizes differently from the CPU weight";
    llmn_int4_weight_desc dg{}, dc{};
    LLMN_ASSERT_OK(llmn_int4_weight_get_desc(wp.gpu.h, &dg));
    LLMN_ASSERT_OK(llmn_int4_weight_get_desc(wp.cpu.h, &dc));
    EXPECT_EQ(std::memcmp(&dg, &dc, sizeof(dg)), 0);
    int64_t bytes = 0;
    LLMN_ASSERT_OK(llmn_int4_weight_get_size_bytes(wp.gpu.h, &bytes));
    EXPECT_GE(bytes, k * n / 2);
}

Reference dense_reference(const std::vector<float>& w, const std::vector<float>& x, int64_t m, int64_t k, int64_t n,
                          const std::vector<float>* bias) {
    Reference r;
    r.y.assign(size_t(m * n), 0.0);
    r.s.assign(size_t(m * n), 0.0);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t kk = 0; kk < k; ++kk) {
            const double xv = x[size_t(i * k + kk)];
            if (xv == 0) continue;
            for (int64_t j = 0; j < n; ++j) {
                const double p = xv * double(w[size_t(kk * n + j)]);
                r.y[size_t(i * n + j)] += p;
                r.s[size_t(i * n + j)] += std::fabs(p);
            }
        }
    if (bias)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
                r.y[size_t(i * n + j)] += (*bias)[size_t(j)];
                r.s[size_t(i * n + j)] += std::fabs((*bias)[size_t(j)]);
            }
    return r;
}

// Runs llmn_gemm_int4 on ctx with poisoned y; returns y (m*n) and checks the sentinel after it.
std::vector<float> run_gemm(llmn_context ctx, llmn_int4_weight w, int32_t dtype, const std::vector<float>& x,
                            const std::vector<float>* bias, int64_t m, int64_t n) {
    const int64_t k = int64_t(x.size()) / m;
    Buf bx(ctx, dtype, m * k), by(ctx, dtype, m * n + 16);
    std::unique_ptr<Buf> bb;
    bx.put(x);
    if (bias) {
        bb = std::make_unique<Buf>(ctx, dtype, n);
        bb->put(*bias);
    }
    by.poison(m * n);
    const llmn_status st = llmn_gemm_int4(ctx, bx.h, w, bb ? bb->h : nullptr, by.h, m);
    EXPECT_EQ(st, LLMN_STATUS_OK) << last_error();
    std::vector<float> y = by.get();
    for (int64_t i = m * n; i < m * n + 16; ++i) EXPECT_EQ(y[size_t(i)], Buf::kSentinel) << "sentinel after y overwritten";
    y.resize(size_t(m * n));
    return y;
}

int64_t check_against(const std::vector<float>& y, const Reference& ref, int64_t n, const char* what,
                      const std::function<double(size_t)>& bound) {
    int64_t bad = 0;
    for (size_t i = 0; i < y.size(); ++i) {
        const double b = bound(i);
        if (!(std::fabs(double(y[i]) - ref.y[i]) <= b) && ++bad <= 5)
            ADD_FAILURE() << what << ": y[" << i / size_t(n) << "][" << i % size_t(n) << "] = " << y[i] << ", float64 "
                          << ref.y[i] << ", bound " << b;
    }
    return bad;
}

double cpu_bound(double y, double s, int64_t kp, bool f16_out) {
    const double u = 1.0 / 16777216.0;
    const double gam = (kp + 4) * u / (1 - (kp + 4) * u);
    const double eo = f16_out ? std::ldexp(1.0, -11) : u;
    return s * gam * (1 + eo) + std::fabs(y) * eo + 1e-6;
}

const int64_t kGpuMs[] = {1, 3, 16, 17, 64, 200};

// Forces the fast kernel's cross-block reduction for a scope (the tests below run both where they matter).
#if defined(LLMNATIVE_WITH_CUDA)
struct ReduceScope {
    explicit ReduceScope(ReduceMode r) { set_reduce_mode(r); }
    ~ReduceScope() { set_reduce_mode(ReduceMode::Auto); }
};
#else
struct ReduceScope {  // no CUDA backend: the GPU tests skip before any launch
    explicit ReduceScope(ReduceMode) {}
};
#endif

TEST(GemmInt4CudaGpu, MatchesFloat64AndCpuBackend) {
    LLMN_REQUIRE_CUDA();
    CpuIsaScalar scalar;  // the CPU backend's exact f32 path
    Ctx gctx(LLMN_BACKEND_CUDA), cctx(LLMN_BACKEND_CPU);
    auto g = rng(201);
    const Shape shapes[] = {{200, 72}, {130, 100}, {77, 33}, {256, 128}, {520, 264}, {1024, 512}};
    for (const Shape& sh : shapes)
        for (int32_t gs : kGroupSizes)
            for (bool sym : {true, false})
                for (GIdx gi : {GIdx::None, GIdx::Gptq, GIdx::Arbitrary}) {
                    if (gi != GIdx::None && !(sh.k % 8 == 0 && (sym || sh.n % 8 == 0))) continue;
                    if (gi == GIdx::Arbitrary && gs == 0) continue;
                    SCOPED_TRACE(testing::Message() << "k=" << sh.k << " n=" << sh.n << " gs=" << gs << " sym=" << sym
                                                    << " g_idx=" << gidx_name(gi));
                    WeightPair wp;
                    make_weight_pair(g, gctx.h, cctx.h, sh.k, sh.n, gs, sym, gi, wp);
                    if (HasFatalFailure()) return;
                    const int64_t kp = 2 * sh.k + 256;
                    for (bool bf16 : {false, true})
                        for (int64_t m : kGpuMs) {
                            SCOPED_TRACE(testing::Message() << "m=" << m << " bf16=" << bf16);
                            const bool with_bias = (m % 2) == 1;
                            const std::vector<float> x = random_x(g, m * sh.k, bf16);
                            std::vector<float> bias = random_x(g, sh.n, bf16);
                            const int32_t dt = bf16 ? LLMN_DTYPE_BF16 : LLMN_DTYPE_F16;
                            const std::vector<float> yg = run_gemm(gctx.h, wp.gpu.h, dt, x, with_bias ? &bias : nullptr, m, sh.n);
                            // CPU backend: f16 for f16, f32 buffers holding the same bf16 values for bf16
                            const int32_t cdt = bf16 ? LLMN_DTYPE_F32 : LLMN_DTYPE_F16;
                            const std::vector<float> yc = run_gemm(cctx.h, wp.cpu.h, cdt, x, with_bias ? &bias : nullptr, m, sh.n);
                            const Reference ref = dense_reference(wp.w, x, m, sh.k, sh.n, with_bias ? &bias : nullptr);
                            EXPECT_EQ(check_against(yg, ref, sh.n, "CUDA", [&](size_t i) {
                                          return fast_bound(ref.y[i], ref.s[i], kp, gs > 0, bf16);
                                      }), 0);
                            EXPECT_EQ(check_against(yc, ref, sh.n, "CPU", [&](size_t i) {
                                          return cpu_bound(ref.y[i], ref.s[i], kp, !bf16);
                                      }), 0);
                            int64_t far = 0;
                            for (size_t i = 0; i < yg.size(); ++i) {
                                const double b = fast_bound(ref.y[i], ref.s[i], kp, gs > 0, bf16) +
                                                 cpu_bound(ref.y[i], ref.s[i], kp, !bf16);
                                if (!(std::fabs(double(yg[i]) - double(yc[i])) <= b)) ++far;
                            }
                            EXPECT_EQ(far, 0) << "CUDA and CPU backends disagree beyond their bounds";
                        }
                }
}

#if defined(LLMNATIVE_WITH_CUDA)
struct PathScope {
    explicit PathScope(KernelPath p) { set_kernel_path(p); }
    ~PathScope() { set_kernel_path(KernelPath::Auto); }
};

TEST(GemmInt4CudaGpu, FastKernelMatchesReferenceKernel) {
    LLMN_REQUIRE_CUDA();
    Ctx gctx(LLMN_BACKEND_CUDA), cctx(LLMN_BACKEND_CPU);
    auto g = rng(202);
    llmn_cuda_device_info di{};
    LLMN_ASSERT_OK(llmn_get_cuda_device_info(0, &di));
    if (di.compute_major < 8) GTEST_SKIP() << "the fast kernel needs sm_80+, device is sm_" << di.compute_major << di.compute_minor;
    // {4096, 512}: 32 stripes share each slice; {1000, 3000}: stripes straddle two slices
    const Shape shapes[] = {{200, 72}, {77, 33}, {520, 264}, {4096, 512}, {1000, 3000}};
    for (const Shape& sh : shapes)
        for (int32_t gs : kGroupSizes)
            for (bool sym : {true, false}) {
                const GIdx gi = (sh.k % 8 == 0 && sh.n % 8 == 0 && gs > 0) ? GIdx::Gptq : GIdx::None;
                SCOPED_TRACE(testing::Message() << "k=" << sh.k << " n=" << sh.n << " gs=" << gs << " sym=" << sym
                                                << " g_idx=" << gidx_name(gi));
                WeightPair wp;
                make_weight_pair(g, gctx.h, cctx.h, sh.k, sh.n, gs, sym, gi, wp);
                if (HasFatalFailure()) return;
                const int64_t kp = 2 * sh.k + 256;
                for (bool bf16 : {false, true})
                    for (int64_t m : {int64_t(1), int64_t(17), int64_t(130)}) {
                        SCOPED_TRACE(testing::Message() << "m=" << m << " bf16=" << bf16);
                        const int32_t dt = bf16 ? LLMN_DTYPE_BF16 : LLMN_DTYPE_F16;
                        const std::vector<float> x = random_x(g, m * sh.k, bf16);
                        const std::vector<float> bias = random_x(g, sh.n, bf16);
                        std::vector<float> yf, yl, yr;
                        {
                            PathScope ps(KernelPath::Fast);
                            yf = run_gemm(gctx.h, wp.gpu.h, dt, x, &bias, m, sh.n);
                            ReduceScope rs(ReduceMode::LastArrival);
                            yl = run_gemm(gctx.h, wp.gpu.h, dt, x, &bias, m, sh.n);
                            const std::vector<float> again = run_gemm(gctx.h, wp.gpu.h, dt, x, &bias, m, sh.n);
                            int64_t differ = 0;
                            for (size_t i = 0; i < yl.size(); ++i) differ += llmn::f32_bits(yl[i]) != llmn::f32_bits(again[i]);
                            EXPECT_EQ(differ, 0) << "last-arrival reduction not bitwise repeatable";
                        }
                        {
                            PathScope ps(KernelPath::Reference);
                            yr = run_gemm(gctx.h, wp.gpu.h, dt, x, &bias, m, sh.n);
                        }
                        const Reference ref = dense_reference(wp.w, x, m, sh.k, sh.n, &bias);
                        EXPECT_EQ(check_against(yf, ref, sh.n, "fast kernel", [&](size_t i) {
                                      return fast_bound(ref.y[i], ref.s[i], kp, gs > 0, bf16);
                                  }), 0);
                        EXPECT_EQ(check_against(yl, ref, sh.n, "fast kernel, last-arrival reduction", [&](size_t i) {
                                      return fast_bound(ref.y[i], ref.s[i], kp, gs > 0, bf16);
                                  }), 0);
                        EXPECT_EQ(check_against(yr, ref, sh.n, "reference kernel", [&](size_t i) {
                                      return cpu_bound(ref.y[i], ref.s[i], kp, true) +
                                             (bf16 ? std::fabs(ref.y[i]) * std::ldexp(1.0, -8) : 0.0);
                                  }), 0);
                    }
            }
}

TEST(GemmInt4CudaGpu, CudaGraphCaptureReplaysTheGemm) {
    LLMN_REQUIRE_CUDA();
    Ctx gctx(LLMN_BACKEND_CUDA), cctx(LLMN_BACKEND_CPU);
    auto g = rng(203);
    WeightPair wp;
    make_weight_pair(g, gctx.h, cctx.h, 520, 264, 128, false, GIdx::Gptq, wp);  // act-order: gather kernel too
    if (HasFatalFailure()) return;
    for (ReduceMode rm : {ReduceMode::Serial, ReduceMode::LastArrival}) {  // both reset their counters
        SCOPED_TRACE(rm == ReduceMode::Serial ? "serial reduction" : "last-arrival reduction");
        ReduceScope rs(rm);
        const int64_t m = 70, k = 520, n = 264;
        const std::vector<float> x = random_x(g, m * k, false);
        const std::vector<float> bias = random_x(g, n, false);
        const std::vector<float> direct = run_gemm(gctx.h, wp.gpu.h, LLMN_DTYPE_F16, x, &bias, m, n);

        Buf bx(gctx.h, LLMN_DTYPE_F16, m * k), bb(gctx.h, LLMN_DTYPE_F16, n), by(gctx.h, LLMN_DTYPE_F16, m * n);
        bx.put(x);
        bb.put(bias);
        by.poison(m * n);
        LLMN_ASSERT_OK(llmn_context_synchronize(gctx.h));
        auto stream = static_cast<cudaStream_t>(llmn::get_context(gctx.h)->stream());
        ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
        const llmn_status st = llmn_gemm_int4(gctx.h, bx.h, wp.gpu.h, bb.h, by.h, m);
        cudaGraph_t graph = nullptr;
        const cudaError_t end = cudaStreamEndCapture(stream, &graph);
        ASSERT_EQ(st, LLMN_STATUS_OK) << last_error();
        ASSERT_EQ(end, cudaSuccess) << cudaGetErrorString(end) << ": the gemm call is not capturable";
        cudaGraphExec_t exec = nullptr;
        ASSERT_EQ(cudaGraphInstantiateWithFlags(&exec, graph, 0), cudaSuccess);
        for (int rep = 0; rep < 3; ++rep) {  // replays must also find the locks reset
            by.poison(m * n);
            LLMN_ASSERT_OK(llmn_context_synchronize(gctx.h));
            ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
            ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
            const std::vector<float> y = by.get();
            for (size_t i = 0; i < y.size(); ++i)
                ASSERT_EQ(llmn::f32_bits(y[i]), llmn::f32_bits(direct[i])) << "replay " << rep << ", element " << i;
        }
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
    }
}

#endif

TEST(GemmInt4CudaGpu, LargeMSpansSeveralLaunches) {
    LLMN_REQUIRE_CUDA();
    Ctx gctx(LLMN_BACKEND_CUDA), cctx(LLMN_BACKEND_CPU);
    auto g = rng(204);
    for (const Shape sh : {Shape{128, 64}, Shape{136, 72}}) {
        WeightPair wp;
        make_weight_pair(g, gctx.h, cctx.h, sh.k, sh.n, 64, false, GIdx::None, wp);
        if (HasFatalFailure()) return;
        const int64_t m = 64 * kMaxProblems + 37;
        const std::vector<float> x = random_x(g, m * sh.k, false);
        const Reference ref = dense_reference(wp.w, x, m, sh.k, sh.n, nullptr);
        for (ReduceMode rm : {ReduceMode::Auto, ReduceMode::LastArrival}) {
            SCOPED_TRACE(rm == ReduceMode::Auto ? "default reduction" : "last-arrival reduction");
            ReduceScope rs(rm);
            const std::vector<float> y = run_gemm(gctx.h, wp.gpu.h, LLMN_DTYPE_F16, x, nullptr, m, sh.n);
            EXPECT_EQ(check_against(y, ref, sh.n, "CUDA", [&](size_t i) {
                          return fast_bound(ref.y[i], ref.s[i], 2 * sh.k + 256, true, false);
                      }), 0);
        }
    }
}

TEST(GemmInt4CudaGpu, SeveralContextsAndWeightsInterleaved) {
    LLMN_REQUIRE_CUDA();
    Ctx a(LLMN_BACKEND_CUDA), b(LLMN_BACKEND_CUDA), cctx(LLMN_BACKEND_CPU);
    auto g = rng(205);
    WeightPair w[4];
    make_weight_pair(g, a.h, cctx.h, 256, 128, 128, true, GIdx::None, w[0]);
    make_weight_pair(g, a.h, cctx.h, 200, 72, 32, false, GIdx::Gptq, w[1]);
    make_weight_pair(g, b.h, cctx.h, 77, 33, 0, false, GIdx::None, w[2]);
    make_weight_pair(g, b.h, cctx.h, 1024, 512, 64, true, GIdx::None, w[3]);
    if (HasFatalFailure()) return;
    llmn_context owner[4] = {a.h, a.h, b.h, b.h};
    for (int rep = 0; rep < 2; ++rep)
        for (int i = 0; i < 4; ++i) {
            const int64_t m = 5 + 40 * rep;
            const std::vector<float> x = random_x(g, m * w[i].k, true);
            const std::vector<float> y = run_gemm(owner[i], w[i].gpu.h, LLMN_DTYPE_BF16, x, nullptr, m, w[i].n);
            const Reference ref = dense_reference(w[i].w, x, m, w[i].k, w[i].n, nullptr);
            EXPECT_EQ(check_against(y, ref, w[i].n, "CUDA", [&](size_t j) {
                          return fast_bound(ref.y[j], ref.s[j], 2 * w[i].k + 256, w[i].gs > 0, true);
                      }), 0) << "weight " << i << " rep " << rep;
        }
    // A weight may run on any context of its device: each context uses its own workspace.
    for (int i = 0; i < 4; ++i) {
        const int64_t m = 33;
        llmn_context other = owner[i] == a.h ? b.h : a.h;
        const std::vector<float> x = random_x(g, m * w[i].k, false);
        const std::vector<float> y = run_gemm(other, w[i].gpu.h, LLMN_DTYPE_F16, x, nullptr, m, w[i].n);
        const Reference ref = dense_reference(w[i].w, x, m, w[i].k, w[i].n, nullptr);
        EXPECT_EQ(check_against(y, ref, w[i].n, "CUDA, other context", [&](size_t j) {
                      return fast_bound(ref.y[j], ref.s[j], 2 * w[i].k + 256, w[i].gs > 0, false);
                  }), 0) << "weight " << i;
    }
}

TEST(GemmInt4CudaGpu, RejectsF32Activations) {
    LLMN_REQUIRE_CUDA();
    Ctx gctx(LLMN_BACKEND_CUDA), cctx(LLMN_BACKEND_CPU);
    auto g = rng(206);
    WeightPair wp;
    make_weight_pair(g, gctx.h, cctx.h, 64, 64, 32, true, GIdx::None, wp);
    if (HasFatalFailure()) return;
    Buf bx(gctx.h, LLMN_DTYPE_F32, 64), by(gctx.h, LLMN_DTYPE_F32, 64);
    by.poison(64);
    const llmn_status st = llmn_gemm_int4(gctx.h, bx.h, wp.gpu.h, nullptr, by.h, 1);
    EXPECT_NE(st, LLMN_STATUS_OK);
    EXPECT_NE(last_error().find("f32"), std::string::npos) << last_error();
    for (float v : by.get()) EXPECT_TRUE(std::isnan(v)) << "y was written by a rejected call";
}


// ---- dense baseline (gemm_dense.cu) ----
TEST(GemmDenseCudaGpu, MatchesFloat64) {
    LLMN_REQUIRE_CUDA();
    Ctx gctx(LLMN_BACKEND_CUDA);
    auto g = rng(301);
    const Shape shapes[] = {{64, 64}, {200, 72}, {77, 33}, {130, 100}, {520, 264}, {1024, 4096}};
    for (const Shape& sh : shapes)
        for (bool bf16 : {false, true})
            for (int64_t m : {int64_t(1), int64_t(3), int64_t(16), int64_t(17), int64_t(64), int64_t(65), int64_t(200)}) {
                if (sh.k * sh.n * m > 300000000) continue;
                SCOPED_TRACE(testing::Message() << "k=" << sh.k << " n=" << sh.n << " m=" << m << " bf16=" << bf16);
                const int32_t dt = bf16 ? LLMN_DTYPE_BF16 : LLMN_DTYPE_F16;
                const std::vector<float> x = random_x(g, m * sh.k, bf16);
                std::vector<float> w = random_x(g, sh.k * sh.n, bf16);
                for (auto& v : w) v = bf16 ? bf16r(v * 0.03f) : f16r(v * 0.03f);
                const std::vector<float> bias = random_x(g, sh.n, bf16);
                const bool with_bias = m % 2 == 1;
                Buf bx(gctx.h, dt, m * sh.k), bw(gctx.h, dt, sh.k * sh.n), bb(gctx.h, dt, sh.n), by(gctx.h, dt, m * sh.n + 16);
                bx.put(x);
                bw.put(w);
                bb.put(bias);
                by.poison(m * sh.n);
                LLMN_ASSERT_OK(llmn_gemm_dense(gctx.h, bx.h, bw.h, with_bias ? bb.h : nullptr, by.h, m, sh.k, sh.n));
                std::vector<float> y = by.get();
                for (int64_t i = m * sh.n; i < m * sh.n + 16; ++i) EXPECT_EQ(y[size_t(i)], Buf::kSentinel) << "sentinel";
                y.resize(size_t(m * sh.n));
                const Reference ref = dense_reference(w, x, m, sh.k, sh.n, with_bias ? &bias : nullptr);
                EXPECT_EQ(check_against(y, ref, sh.n, "dense CUDA", [&](size_t i) {
                              return fast_bound(ref.y[i], ref.s[i], sh.k + 16, false, bf16);
                          }), 0);
            }
}
}  // namespace
