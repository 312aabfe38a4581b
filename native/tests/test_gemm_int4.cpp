// INT4 weight-only GEMM and the dense baseline, CPU backend.
//
// What is checked, and against what:
//  * quantizer: per-element error <= half a step of the independently recomputed fp16 scale, exact
//    round trip for weights on the grid, all-zero groups, rejection of NaN/Inf/overflowing weights;
//  * importers: hand-packed GPTQ (v1 and v2, sym and asym, with and without g_idx, f16/f32 scales) and
//    AWQ tensors dequantize to exactly the matrix they encode; literal words pin the nibble orders;
//  * GEMM: against a float64 product of the DEQUANTIZED weight (llmn_int4_weight_dequantize) on fresh
//    random, outlier-heavy data, for the scalar reference, both AVX2 inner loops and (on AVX-512
//    machines) the AVX-512 ones, VNNI and not, M in
//    {1,3,16,17,64,200,300}, odd K and N, every group size, sym/asym, act-order, f16/f32, bias or not;
//    y is poisoned with NaN before every run and a sentinel after the last row must survive;
//  * bad input: status, a message naming the parameter, y untouched, no object created;
//  * dense baseline: same reference and bounds.
//
// Error bounds (u = 2^-24, gamma(n) = n u / (1 - n u), S = sum_k |x_k| |w_kn| + |bias_n|):
//  * AVX-512 Int8 / F32 must also be bitwise identical to AVX2 Int8 / F32 (same arithmetic per output), and
//    every Int8 kernel (AVX2, AVX-512, NEON) bitwise equal to a model of the Int8 arithmetic written here
//    (int8_path_model), which makes the x86 and arm64 kernels' bits comparable across machines.
//  * f32 paths (scalar, AVX2/AVX-512 F32): dequantized weights are exact in f32, each output is a sequential
//    f32 sum of <= Kp + 1 terms (Kp = packed rows incl. padding <= K + 32 * groups), so
//    |y - y_ref| <= gamma(Kp + 2) * S.
//  * AVX2 / AVX-512 Int8: activations are rounded to int8 per 32-row block with scale amax_b / 127, so
//    |dx_k| <= amax_b / 254 (times 1 + 2^-20 for the f32 rounding of the scale and its reciprocal);
//    the integer dot products and zero-point corrections are exact, the f32 part is bounded as above
//    with |x| replaced by |x| + |dx|. So |y - y_ref| <= E_q + gamma(Kp + 4) * (S + E_q), with
//    E_q = sum_k (amax_block(k) / 254) (1 + 2^-20) |w_kn|, blocks taken in the kernel's packed order.
//  * f16 outputs add the final rounding: (|y_ref| + bound) * 2^-11 + 2^-25.
//  * the float64 reference itself: 1e-12 * S.
#include "core/numeric.hpp"
#include "cpu/cpu_runtime.hpp"
#include "kernels/gemm_int4/gemm_int4_cpu.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

using namespace llmn_test;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

// Smaller problem sizes under sanitizers or when LLMNATIVE_TEST_QUICK is set.
bool quick() {
    static const bool q = kSanitized || std::getenv("LLMNATIVE_TEST_QUICK") != nullptr;
    return q;
}

constexpr double kU = 1.0 / 16777216.0;
double gamma_n(double n) { return n * kU / (1.0 - n * kU); }

float f16r(float v) { return llmn::f16_to_f32(llmn::f32_to_f16(v)); }

// Smallest fp16 value >= v (v >= 0), by binary search over the positive fp16 encodings: an
// implementation independent of the library's.
double f16_ceil(double v) {
    if (v <= 0) return 0;
    int lo = 0, hi = 0x7bff;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (double(llmn::f16_to_f32(uint16_t(mid))) >= v) hi = mid;
        else lo = mid + 1;
    }
    return llmn::f16_to_f32(uint16_t(lo));
}

std::string err() { return last_error(); }

struct Ctx {
    llmn_context h = nullptr;
    Ctx() { EXPECT_EQ(llmn_context_create(LLMN_BACKEND_CPU, 0, &h), LLMN_STATUS_OK); }
    ~Ctx() { llmn_context_destroy(h); }
};

struct Buf {
    llmn_buffer h = nullptr;
    int32_t dtype = LLMN_DTYPE_F32;
    int64_t count = 0;
    Buf() = default;
    Buf(llmn_context ctx, int32_t dt, int64_t n) : dtype(dt), count(n) {
        EXPECT_EQ(llmn_buffer_create(ctx, dt, n, LLMN_MEMORY_DEVICE, &h), LLMN_STATUS_OK) << err();
    }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    ~Buf() {
        if (h) llmn_buffer_destroy(h);
    }
    // Uploads floats, converting to the buffer's dtype (f16 rounds to nearest even).
    void put(const std::vector<float>& v) {
        ASSERT_LE(int64_t(v.size()), count);
        if (dtype == LLMN_DTYPE_F32) {
            ASSERT_EQ(llmn_buffer_upload(h, 0, v.data(), int64_t(v.size())), LLMN_STATUS_OK) << err();
        } else {
            std::vector<uint16_t> b(v.size());
            for (size_t i = 0; i < v.size(); ++i) b[i] = llmn::f32_to_f16(v[i]);
            ASSERT_EQ(llmn_buffer_upload(h, 0, b.data(), int64_t(b.size())), LLMN_STATUS_OK) << err();
        }
    }
    std::vector<float> get() const {
        std::vector<float> out(static_cast<size_t>(count));
        if (dtype == LLMN_DTYPE_F32) {
            EXPECT_EQ(llmn_buffer_download(h, 0, out.data(), count), LLMN_STATUS_OK) << err();
        } else {
            std::vector<uint16_t> b(static_cast<size_t>(count));
            EXPECT_EQ(llmn_buffer_download(h, 0, b.data(), count), LLMN_STATUS_OK) << err();
            for (size_t i = 0; i < b.size(); ++i) out[i] = llmn::f16_to_f32(b[i]);
        }
        return out;
    }
    std::vector<uint8_t> raw() const {
        int32_t es = 0;
        llmn_dtype_size(dtype, &es);
        std::vector<uint8_t> out(static_cast<size_t>(count * es));
        EXPECT_EQ(llmn_buffer_download(h, 0, out.data(), count), LLMN_STATUS_OK) << err();
        return out;
    }
    void poison() {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        if (dtype == LLMN_DTYPE_F32) {
            llmn_buffer_fill(h, 0, count, &nan);
        } else {
            uint16_t v = 0x7e00;
            llmn_buffer_fill(h, 0, count, &v);
        }
    }
};

struct Weight {
    llmn_int4_weight h = nullptr;
    ~Weight() {
        if (h) llmn_int4_weight_destroy(h);
    }
};

struct IsaScope {
    llmn_cpu_info info{};
    explicit IsaScope(int32_t isa) {
        llmn_get_cpu_info(&info);
        EXPECT_EQ(llmn_set_cpu_isa(isa), LLMN_STATUS_OK) << err();
    }
    ~IsaScope() { llmn_set_cpu_isa(info.detected_isa); }
};

struct ComputeScope {
    llmn::int4cpu::Compute prev;
    explicit ComputeScope(llmn::int4cpu::Compute c) : prev(llmn::int4cpu::compute_mode()) {
        llmn::int4cpu::set_compute_mode(c);
    }
    ~ComputeScope() { llmn::int4cpu::set_compute_mode(prev); }
};

bool have_avx2() {
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    return info.detected_isa == LLMN_CPU_ISA_AVX2 || info.detected_isa == LLMN_CPU_ISA_AVX512;
}

bool have_avx512() {
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    return info.detected_isa == LLMN_CPU_ISA_AVX512;
}

// arm64 with the ARMv8.2 dot product: the NEON Int8 kernel runs (else NEON falls back to the scalar path).
bool have_neon_dotprod() {
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    return info.detected_isa == LLMN_CPU_ISA_NEON && llmn::cpu::neon_dotprod();
}

// The SIMD ISAs this machine can run (AVX-512 machines test both the AVX2 and the AVX-512 kernels).
std::vector<int32_t> simd_isas() {
    std::vector<int32_t> v;
    if (have_avx2()) v.push_back(LLMN_CPU_ISA_AVX2);
    if (have_avx512()) v.push_back(LLMN_CPU_ISA_AVX512);
    if (have_neon_dotprod()) v.push_back(LLMN_CPU_ISA_NEON);
    return v;
}

#if defined(__x86_64__) || defined(_M_X64)
// Switches one VNNI flag (cpu::set_avx512_vnni or cpu::set_avx_vnni) off for its lifetime when asked:
// the AVX-512 or AVX2 Int8 kernel then runs its vpmaddubsw loop.
struct NoVnniScope {
    void (*set)(bool);
    bool on;
    NoVnniScope(void (*setter)(bool), bool disable) : set(setter), on(disable) {
        if (on) set(false);
    }
    ~NoVnniScope() {
        if (on) set(true);
    }
};
#endif

// Heavy-tailed data: mostly N(0, sigma), ~2% outliers 30-100x larger, some exact zeros.
std::vector<float> outlier_data(std::mt19937_64& g, int64_t count, float sigma) {
    std::normal_distribution<float> nd(0.0f, sigma);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(count));
    for (auto& x : v) {
        float p = u(g);
        x = nd(g);
        if (p < 0.02f) x *= 30.0f + 70.0f * u(g);
        else if (p < 0.03f) x = 0.0f;
    }
    return v;
}

// ---- GPTQ / AWQ tensor builders (the checkpoint formats, written independently of the library) ----

struct Truth {
    int64_t K = 0, N = 0;
    int32_t gs = 0;
    std::vector<int> q;       // [K][N]
    std::vector<int> z;       // [G][N]
    std::vector<float> s;     // [G][N] (fp16 values)
    std::vector<int32_t> gidx;  // [K]
    int64_t groups() const { return gs == 0 ? 1 : (K + gs - 1) / gs; }
    std::vector<float> dequant() const {
        std::vector<float> w(static_cast<size_t>(K * N));
        for (int64_t k = 0; k < K; ++k)
            for (int64_t n = 0; n < N; ++n) {
                int64_t g = gidx[k];
                w[k * N + n] = (float(q[k * N + n]) - float(z[g * N + n])) * s[g * N + n];
            }
        return w;
    }
};

Truth random_truth(std::mt19937_64& g, int64_t K, int64_t N, int32_t gs, bool sym, int zmin, bool act) {
    Truth t;
    t.K = K;
    t.N = N;
    t.gs = gs;
    const int64_t G = t.groups();
    std::uniform_int_distribution<int> qd(0, 15), zd(zmin, 15);
    std::uniform_real_distribution<float> sd(0.002f, 0.05f), u(0.0f, 1.0f);
    t.q.resize(static_cast<size_t>(K * N));
    for (auto& v : t.q) v = qd(g);
    t.z.resize(static_cast<size_t>(G * N));
    for (auto& v : t.z) v = sym ? 8 : zd(g);
    t.s.resize(static_cast<size_t>(G * N));
    for (auto& v : t.s) {
        float p = u(g);
        v = f16r(sd(g) * (p < 0.05f ? 40.0f : 1.0f) * (p > 0.97f ? -1.0f : 1.0f));  // outlier and negative scales
        if (p > 0.995f) v = 0.0f;
    }
    t.gidx.resize(static_cast<size_t>(K));
    std::vector<int64_t> perm(static_cast<size_t>(K));
    std::iota(perm.begin(), perm.end(), 0);
    if (act && gs > 0) std::shuffle(perm.begin(), perm.end(), g);
    for (int64_t k = 0; k < K; ++k) t.gidx[k] = gs == 0 ? 0 : int32_t(perm[k] / gs);
    return t;
}

struct GptqPacked {
    std::vector<int32_t> qweight, qzeros, gidx;
    std::vector<uint16_t> scales16;
    std::vector<float> scales32;
    llmn_gptq_tensors t{};
};

void pack_gptq(const Truth& tr, bool sym, int32_t format, bool f32_scales, bool with_gidx, GptqPacked& P) {
    const int64_t K = tr.K, N = tr.N, G = tr.groups();
    P.qweight.assign(static_cast<size_t>(K / 8 * N), 0);
    for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n)
            P.qweight[(k / 8) * N + n] = int32_t(uint32_t(P.qweight[(k / 8) * N + n]) | (uint32_t(tr.q[k * N + n]) << (4 * (k % 8))));
    const int64_t N8 = (N + 7) / 8;
    P.qzeros.assign(static_cast<size_t>(G * N8), 0);
    for (int64_t g = 0; g < G; ++g)
        for (int64_t n = 0; n < N; ++n) {
            uint32_t stored = uint32_t(tr.z[g * N + n] - (format == LLMN_GPTQ_V1 ? 1 : 0)) & 0xF;
            P.qzeros[g * N8 + n / 8] = int32_t(uint32_t(P.qzeros[g * N8 + n / 8]) | (stored << (4 * (n % 8))));
        }
    P.scales16.resize(tr.s.size());
    P.scales32 = tr.s;
    for (size_t i = 0; i < tr.s.size(); ++i) P.scales16[i] = llmn::f32_to_f16(tr.s[i]);
    P.gidx = tr.gidx;
    P.t = llmn_gptq_tensors{};
    P.t.k = K;
    P.t.n = N;
    P.t.group_size = tr.gs;
    P.t.symmetric = sym ? 1 : 0;
    P.t.format = format;
    P.t.scales_dtype = f32_scales ? LLMN_DTYPE_F32 : LLMN_DTYPE_F16;
    P.t.qweight = P.qweight.data();
    P.t.qzeros = P.qzeros.data();
    P.t.scales = f32_scales ? static_cast<const void*>(P.scales32.data()) : static_cast<const void*>(P.scales16.data());
    P.t.g_idx = with_gidx ? P.gidx.data() : nullptr;
}

struct AwqPacked {
    std::vector<int32_t> qweight, qzeros;
    std::vector<uint16_t> scales16;
    llmn_awq_tensors t{};
};

void pack_awq(const Truth& tr, AwqPacked& P) {
    static const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    const int64_t K = tr.K, N = tr.N, G = tr.groups(), N8 = N / 8;
    P.qweight.assign(static_cast<size_t>(K * N8), 0);
    P.qzeros.assign(static_cast<size_t>(G * N8), 0);
    for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < N8; ++j)
            for (int i = 0; i < 8; ++i)
                P.qweight[k * N8 + j] = int32_t(uint32_t(P.qweight[k * N8 + j]) | (uint32_t(tr.q[k * N + 8 * j + order[i]]) << (4 * i)));
    for (int64_t g = 0; g < G; ++g)
        for (int64_t j = 0; j < N8; ++j)
            for (int i = 0; i < 8; ++i)
                P.qzeros[g * N8 + j] = int32_t(uint32_t(P.qzeros[g * N8 + j]) | (uint32_t(tr.z[g * N + 8 * j + order[i]]) << (4 * i)));
    P.scales16.resize(tr.s.size());
    for (size_t i = 0; i < tr.s.size(); ++i) P.scales16[i] = llmn::f32_to_f16(tr.s[i]);
    P.t = llmn_awq_tensors{};
    P.t.k = K;
    P.t.n = N;
    P.t.group_size = tr.gs;
    P.t.scales_dtype = LLMN_DTYPE_F16;
    P.t.qweight = P.qweight.data();
    P.t.qzeros = P.qzeros.data();
    P.t.scales = P.scales16.data();
}

std::vector<float> dequant(llmn_int4_weight w, int64_t K, int64_t N) {
    std::vector<float> out(static_cast<size_t>(K * N), std::numeric_limits<float>::quiet_NaN());
    EXPECT_EQ(llmn_int4_weight_dequantize(w, LLMN_DTYPE_F32, out.data()), LLMN_STATUS_OK) << err();
    return out;
}

int64_t live() {
    int64_t n = 0;
    llmn_debug_live_objects(&n);
    return n;
}

}  // namespace

// ================================================================================================
// Quantizer
// ================================================================================================

TEST(Int4Quantize, PerElementErrorIsAtMostHalfAStep) {
    Ctx ctx;
    auto g = rng(101);
    struct Shape { int64_t k, n; };
    const Shape shapes[] = {{96, 72}, {203, 33}, {1000, 8}, {37, 5}};
    for (const Shape& sh : shapes)
        for (int32_t gs : {0, 32, 64, 128})
            for (int sym : {1, 0})
                for (int32_t dt : {LLMN_DTYPE_F32, LLMN_DTYPE_F16}) {
                    SCOPED_TRACE(testing::Message() << "K " << sh.k << " N " << sh.n << " gs " << gs << " sym " << sym
                                                    << " dtype " << dt);
                    std::vector<float> w = outlier_data(g, sh.k * sh.n, 0.05f);
                    // an all-zero column, an all-positive and an all-negative one
                    for (int64_t k = 0; k < sh.k; ++k) {
                        w[k * sh.n + 0] = 0.0f;
                        if (sh.n > 2) w[k * sh.n + 1] = std::fabs(w[k * sh.n + 1]) + 0.01f;
                        if (sh.n > 3) w[k * sh.n + 2] = -std::fabs(w[k * sh.n + 2]) - 0.01f;
                    }
                    std::vector<uint16_t> w16(w.size());
                    for (size_t i = 0; i < w.size(); ++i) {
                        w16[i] = llmn::f32_to_f16(w[i]);
                        if (dt == LLMN_DTYPE_F16) w[i] = llmn::f16_to_f32(w16[i]);
                    }
                    llmn_int4_weight_desc d{sh.k, sh.n, gs, sym, 0, 0};
                    Weight W;
                    LLMN_ASSERT_OK(llmn_int4_weight_quantize(ctx.h, &d, dt,
                                                             dt == LLMN_DTYPE_F32 ? static_cast<const void*>(w.data()) : w16.data(), &W.h));
                    llmn_int4_weight_desc got{};
                    LLMN_ASSERT_OK(llmn_int4_weight_get_desc(W.h, &got));
                    EXPECT_EQ(got.k, sh.k);
                    EXPECT_EQ(got.n, sh.n);
                    EXPECT_EQ(got.group_size, gs);
                    EXPECT_EQ(got.symmetric, sym);
                    EXPECT_EQ(got.has_g_idx, 0);
                    std::vector<float> dq = dequant(W.h, sh.k, sh.n);
                    std::vector<uint16_t> dq16(dq.size());
                    LLMN_ASSERT_OK(llmn_int4_weight_dequantize(W.h, LLMN_DTYPE_F16, dq16.data()));
                    const int64_t gsz = gs == 0 ? sh.k : gs;
                    int bad = 0;
                    for (int64_t n = 0; n < sh.n; ++n)
                        for (int64_t k0 = 0; k0 < sh.k; k0 += gsz) {
                            const int64_t k1 = std::min(sh.k, k0 + gsz);
                            double mn = 1e30, mx = -1e30;
                            for (int64_t k = k0; k < k1; ++k) {
                                mn = std::min(mn, double(w[k * sh.n + n]));
                                mx = std::max(mx, double(w[k * sh.n + n]));
                            }
                            double s = sym ? f16_ceil(std::max(std::max(-mn / 8.0, mx / 7.0), 0.0))
                                           : f16_ceil((std::max(mx, 0.0) - std::min(mn, 0.0)) / 15.0);
                            for (int64_t k = k0; k < k1; ++k) {
                                const size_t i = static_cast<size_t>(k * sh.n + n);
                                const double e = std::fabs(double(w[i]) - double(dq[i]));
                                if (e > s / 2 * (1 + 1e-12) && bad++ < 5)
                                    ADD_FAILURE() << "w[" << k << "][" << n << "] = " << w[i] << " dequantized to "
                                                  << dq[i] << ", error " << e << " > half step " << s / 2;
                                if (s == 0 && dq[i] != 0.0f && bad++ < 5) ADD_FAILURE() << "all-zero group not zero";
                                if (dq16[i] != llmn::f32_to_f16(dq[i]) && bad++ < 5) ADD_FAILURE() << "f16 dequantize differs";
                            }
                        }
                    EXPECT_EQ(bad, 0);
                }
}

TEST(Int4Quantize, GridWeightsRoundTripExactly) {
    Ctx ctx;
    auto g = rng(102);
    for (int32_t gs : {0, 32, 64, 128})
        for (int sym : {1, 0}) {
            SCOPED_TRACE(testing::Message() << "gs " << gs << " sym " << sym);
            const int64_t K = 300, N = 19;
            Truth t = random_truth(g, K, N, gs, sym != 0, 0, false);
            for (auto& s : t.s) s = std::fabs(s) == 0 ? 0.0078125f : std::fabs(s);  // positive fp16 scales
            // Every (group, column) must contain a grid end point (sym: 0 or 15; asym: both 0 and 15).
            const int64_t gsz = gs == 0 ? K : gs;
            for (int64_t k0 = 0; k0 < K; k0 += gsz)
                for (int64_t n = 0; n < N; ++n) {
                    t.q[k0 * N + n] = (n % 2) ? 15 : 0;
                    if (!sym && k0 + 1 < K) t.q[(k0 + 1) * N + n] = (n % 2) ? 0 : 15;
                }
            std::vector<float> w = t.dequant();
            llmn_int4_weight_desc d{K, N, gs, sym, 0, 0};
            Weight W;
            LLMN_ASSERT_OK(llmn_int4_weight_quantize(ctx.h, &d, LLMN_DTYPE_F32, w.data(), &W.h));
            std::vector<float> dq = dequant(W.h, K, N);
            int bad = 0;
            for (size_t i = 0; i < w.size(); ++i)
                if (dq[i] != w[i] && bad++ < 5) ADD_FAILURE() << "element " << i << ": " << w[i] << " -> " << dq[i];
            EXPECT_EQ(bad, 0);
        }
}

TEST(Int4Quantize, RejectsBadInputAndCreatesNothing) {
    Ctx ctx;
    const int64_t K = 64, N = 16;
    std::vector<float> w(K * N, 0.25f);
    const int64_t before = live();
    auto expect_fail = [&](const llmn_int4_weight_desc& d, int32_t dt, const void* data, const char* needle) {
        llmn_int4_weight h = reinterpret_cast<llmn_int4_weight>(uintptr_t(1));
        LLMN_EXPECT_STATUS(llmn_int4_weight_quantize(ctx.h, &d, dt, data, &h), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(err().find(needle), std::string::npos) << err();
        EXPECT_EQ(h, nullptr);
        EXPECT_EQ(live(), before);
    };
    llmn_int4_weight_desc d{K, N, 32, 1, 0, 0};
    w[5 * N + 7] = std::numeric_limits<float>::quiet_NaN();
    expect_fail(d, LLMN_DTYPE_F32, w.data(), "weights[5][7]");
    w[5 * N + 7] = -std::numeric_limits<float>::infinity();
    expect_fail(d, LLMN_DTYPE_F32, w.data(), "-inf");
    w[5 * N + 7] = 1e9f;  // needs a scale far above 65504
    expect_fail(d, LLMN_DTYPE_F32, w.data(), "fp16 maximum");
    w[5 * N + 7] = 0.5f;
    std::vector<uint16_t> w16(K * N, 0x3c00);
    w16[3] = 0x7c00;  // +inf in f16
    expect_fail(d, LLMN_DTYPE_F16, w16.data(), "weights[0][3]");
    llmn_int4_weight_desc bad = d;
    bad.group_size = 100;
    expect_fail(bad, LLMN_DTYPE_F32, w.data(), "group_size");
    bad = d;
    bad.has_g_idx = 1;
    expect_fail(bad, LLMN_DTYPE_F32, w.data(), "has_g_idx");
    bad = d;
    bad.k = 0;
    expect_fail(bad, LLMN_DTYPE_F32, w.data(), "desc->k");
    bad = d;
    bad.symmetric = 2;
    expect_fail(bad, LLMN_DTYPE_F32, w.data(), "symmetric");
    expect_fail(d, LLMN_DTYPE_BF16, w.data(), "src_dtype");
    expect_fail(d, LLMN_DTYPE_F32, nullptr, "weights");
    llmn_int4_weight h = nullptr;
    LLMN_EXPECT_STATUS(llmn_int4_weight_quantize(ctx.h, nullptr, LLMN_DTYPE_F32, w.data(), &h), LLMN_STATUS_INVALID_ARGUMENT);
    LLMN_EXPECT_STATUS(llmn_int4_weight_quantize(nullptr, &d, LLMN_DTYPE_F32, w.data(), &h), LLMN_STATUS_INVALID_HANDLE);
    EXPECT_EQ(live(), before);
}

// ================================================================================================
// Importers
// ================================================================================================

TEST(Int4Import, GptqLiteralNibbleOrder) {
    Ctx ctx;
    // K = 8, N = 8, one group; qweight[0][n] = 0x76543210 + n (row k in bits 4k); v1 zeros stored as z - 1.
    std::vector<int32_t> qweight(8);
    for (int n = 0; n < 8; ++n) qweight[n] = int32_t(0x76543210u + uint32_t(n));
    std::vector<int32_t> qzeros = {int32_t(0x01234567u)};  // column n stores 7 - n -> zero 8 - n (v1)
    std::vector<uint16_t> scales(8, 0x3c00);                // 1.0
    llmn_gptq_tensors t{8, 8, 0, 0, LLMN_GPTQ_V1, LLMN_DTYPE_F16, qweight.data(), qzeros.data(), scales.data(), nullptr};
    Weight W;
    LLMN_ASSERT_OK(llmn_int4_weight_import_gptq(ctx.h, &t, &W.h));
    std::vector<float> dq = dequant(W.h, 8, 8);
    for (int k = 0; k < 8; ++k)
        for (int n = 0; n < 8; ++n) {
            const int q = k + (k == 0 ? n : 0);
            EXPECT_EQ(dq[k * 8 + n], float(q - (8 - n))) << k << "," << n;
        }
    t.format = LLMN_GPTQ_V2;  // the same bits read as real zero points: zero = 7 - n
    Weight W2;
    LLMN_ASSERT_OK(llmn_int4_weight_import_gptq(ctx.h, &t, &W2.h));
    dq = dequant(W2.h, 8, 8);
    EXPECT_EQ(dq[1 * 8 + 3], float(1 - 4));
}

TEST(Int4Import, AwqLiteralNibbleOrder) {
    Ctx ctx;
    // K = 1, N = 8: nibble i holds column {0,2,4,6,1,3,5,7}[i].
    std::vector<int32_t> qweight = {int32_t(0x76543210u)};
    std::vector<int32_t> qzeros = {0};
    std::vector<uint16_t> scales(8, 0x3c00);
    llmn_awq_tensors t{1, 8, 0, LLMN_DTYPE_F16, qweight.data(), qzeros.data(), scales.data()};
    Weight W;
    LLMN_ASSERT_OK(llmn_int4_weight_import_awq(ctx.h, &t, &W.h));
    std::vector<float> dq = dequant(W.h, 1, 8);
    const float expect[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    for (int n = 0; n < 8; ++n) EXPECT_EQ(dq[n], expect[n]) << n;
    llmn_int4_weight_desc d{};
    LLMN_ASSERT_OK(llmn_int4_weight_get_desc(W.h, &d));
    EXPECT_EQ(d.symmetric, 0);
}

TEST(Int4Import, GptqAllVariantsDequantizeExactly) {
    Ctx ctx;
    auto g = rng(201);
    for (int32_t format : {LLMN_GPTQ_V1, LLMN_GPTQ_V2})
        for (int sym : {1, 0})
            for (int act : {0, 1})
                for (int32_t gs : {0, 32, 128})
                    for (int f32s : {0, 1}) {
                        SCOPED_TRACE(testing::Message() << "format " << format << " sym " << sym << " act " << act
                                                        << " gs " << gs << " f32 scales " << f32s);
                        const int64_t K = 200, N = sym ? 20 : 24;  // K % 8 == 0; asym needs N % 8 == 0
                        Truth tr = random_truth(g, K, N, gs, sym != 0, format == LLMN_GPTQ_V1 ? 1 : 0, act != 0);
                        GptqPacked P;
                        pack_gptq(tr, sym != 0, format, f32s != 0, act != 0 || gs == 32, P);
                        Weight W;
                        LLMN_ASSERT_OK(llmn_int4_weight_import_gptq(ctx.h, &P.t, &W.h));
                        llmn_int4_weight_desc d{};
                        LLMN_ASSERT_OK(llmn_int4_weight_get_desc(W.h, &d));
                        EXPECT_EQ(d.has_g_idx, (act && gs > 0) ? 1 : 0);  // a trivial g_idx is dropped
                        EXPECT_EQ(d.symmetric, sym);
                        std::vector<float> want = tr.dequant(), got = dequant(W.h, K, N);
                        int bad = 0;
                        for (size_t i = 0; i < want.size(); ++i)
                            if (want[i] != got[i] && bad++ < 5)
                                ADD_FAILURE() << "element " << i << ": want " << want[i] << " got " << got[i];
                        EXPECT_EQ(bad, 0);
                        int64_t bytes = 0;
                        LLMN_ASSERT_OK(llmn_int4_weight_get_size_bytes(W.h, &bytes));
                        EXPECT_GE(bytes, K * N / 2);
                    }
}

TEST(Int4Import, AwqDequantizesExactly) {
    Ctx ctx;
    auto g = rng(202);
    for (int32_t gs : {0, 32, 64, 128}) {
        SCOPED_TRACE(testing::Message() << "gs " << gs);
        const int64_t K = 150, N = 40;  // ragged last group
        Truth tr = random_truth(g, K, N, gs, false, 0, false);
        AwqPacked P;
        pack_awq(tr, P);
        Weight W;
        LLMN_ASSERT_OK(llmn_int4_weight_import_awq(ctx.h, &P.t, &W.h));
        std::vector<float> want = tr.dequant(), got = dequant(W.h, K, N);
        EXPECT_EQ(want, got);
    }
}

TEST(Int4Import, RejectsBadTensorsAndCreatesNothing) {
    Ctx ctx;
    auto g = rng(203);
    Truth tr = random_truth(g, 64, 16, 32, false, 1, true);
    const int64_t before = live();
    auto gptq_fail = [&](const llmn_gptq_tensors& t, const char* needle) {
        llmn_int4_weight h = reinterpret_cast<llmn_int4_weight>(uintptr_t(1));
        LLMN_EXPECT_STATUS(llmn_int4_weight_import_gptq(ctx.h, &t, &h), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(err().find(needle), std::string::npos) << "expected '" << needle << "' in: " << err();
        EXPECT_EQ(h, nullptr);
        EXPECT_EQ(live(), before);
    };
    {
        GptqPacked P;
        pack_gptq(tr, false, LLMN_GPTQ_V2, false, true, P);
        llmn_gptq_tensors t = P.t;
        t.k = 60;
        gptq_fail(t, "multiple of 8");
        t = P.t;
        t.group_size = -1;
        gptq_fail(t, "group_size");
        t = P.t;
        t.n = 12;
        gptq_fail(t, "tensors->n");
        t = P.t;
        t.qzeros = nullptr;
        gptq_fail(t, "qzeros");
        t = P.t;
        t.format = 5;
        gptq_fail(t, "format");
        t = P.t;
        t.scales_dtype = LLMN_DTYPE_BF16;
        gptq_fail(t, "scales_dtype");
        P.gidx[17] = 2;  // G = 2
        gptq_fail(P.t, "g_idx[17] = 2");
        P.gidx[17] = -1;
        gptq_fail(P.t, "g_idx[17] = -1");
        P.gidx[17] = 0;
        P.scales16[1 * 16 + 3] = 0x7e00;  // NaN
        gptq_fail(P.t, "scales[1][3]");
        P.scales16[1 * 16 + 3] = 0xfc00;  // -inf
        gptq_fail(P.t, "scales[1][3]");
    }
    {
        GptqPacked P;
        pack_gptq(tr, false, LLMN_GPTQ_V2, true, false, P);
        P.scales32[5] = 1e6f;  // outside fp16
        gptq_fail(P.t, "scales[0][5]");
        P.scales32[5] = std::numeric_limits<float>::infinity();
        gptq_fail(P.t, "scales[0][5]");
    }
    {
        // v1 cannot encode zero point 0: a stored 15 is rejected.
        Truth t0 = tr;
        t0.z[1 * 16 + 9] = 0;
        GptqPacked P;
        pack_gptq(t0, false, LLMN_GPTQ_V1, false, false, P);
        gptq_fail(P.t, "qzeros[1][1]");
        P.t.format = LLMN_GPTQ_V2;  // the same bits as v2 are a real zero point of 15
        Weight W;
        LLMN_EXPECT_STATUS(llmn_int4_weight_import_gptq(ctx.h, &P.t, &W.h), LLMN_STATUS_OK);
    }
    {
        Truth ta = random_truth(g, 40, 16, 32, false, 0, false);
        AwqPacked P;
        pack_awq(ta, P);
        auto awq_fail = [&](const llmn_awq_tensors& t, const char* needle) {
            llmn_int4_weight h = reinterpret_cast<llmn_int4_weight>(uintptr_t(1));
            LLMN_EXPECT_STATUS(llmn_int4_weight_import_awq(ctx.h, &t, &h), LLMN_STATUS_INVALID_ARGUMENT);
            EXPECT_NE(err().find(needle), std::string::npos) << "expected '" << needle << "' in: " << err();
            EXPECT_EQ(h, nullptr);
            EXPECT_EQ(live(), before);
        };
        llmn_awq_tensors t = P.t;
        t.n = 20;
        awq_fail(t, "multiple of 8");
        t = P.t;
        t.qzeros = nullptr;
        awq_fail(t, "qzeros");
        t = P.t;
        t.group_size = 256;
        awq_fail(t, "group_size");
        P.scales16[0] = 0x7c00;
        awq_fail(P.t, "scales[0][0]");
    }
    EXPECT_EQ(live(), before);
}

// ================================================================================================
// GEMM
// ================================================================================================

namespace {

// Avx2Int8 uses AVX-VNNI where the CPU has it; Avx2Int8NoVnni forces vpmaddubsw (run only where they differ).
// NeonInt8: the arm64 dot-product kernel (gemm_int4_neon.cpp), run where the core has it.
enum class Path { Scalar, Avx2Int8, Avx2Int8NoVnni, Avx2F32, Avx512Int8, Avx512Int8NoVnni, Avx512F32, NeonInt8 };
const char* path_name(Path p) {
    switch (p) {
        case Path::Scalar: return "scalar";
        case Path::Avx2Int8: return "avx2-int8";
        case Path::Avx2Int8NoVnni: return "avx2-int8-novnni";
        case Path::Avx2F32: return "avx2-f32";
        case Path::Avx512Int8: return "avx512-int8";
        case Path::Avx512Int8NoVnni: return "avx512-int8-novnni";
        case Path::NeonInt8: return "neon-int8";
        default: return "avx512-f32";
    }
}
bool is_int8(Path p) {
    return p == Path::Avx2Int8 || p == Path::Avx2Int8NoVnni || p == Path::Avx512Int8 || p == Path::Avx512Int8NoVnni ||
           p == Path::NeonInt8;
}

// The paths this machine can run, in the order run_case compares them (each AVX2 path before its AVX-512 twin).
std::vector<Path> available_paths() {
    std::vector<Path> paths = {Path::Scalar};
    if (have_avx2()) {
        paths.push_back(Path::Avx2Int8);
#if defined(__x86_64__) || defined(_M_X64)
        if (llmn::cpu::avx_vnni()) paths.push_back(Path::Avx2Int8NoVnni);
#endif
        paths.push_back(Path::Avx2F32);
    }
    if (have_avx512()) {
        paths.push_back(Path::Avx512Int8);
        paths.push_back(Path::Avx512Int8NoVnni);
        paths.push_back(Path::Avx512F32);
    }
    if (have_neon_dotprod()) paths.push_back(Path::NeonInt8);
    return paths;
}

// For its lifetime, the library runs path p: its ISA cap, compute mode and VNNI switches.
struct PathScope {
    static int32_t isa_of(Path p) {
        switch (p) {
            case Path::Scalar: return LLMN_CPU_ISA_SCALAR;
            case Path::NeonInt8: return LLMN_CPU_ISA_NEON;
            case Path::Avx512Int8:
            case Path::Avx512Int8NoVnni:
            case Path::Avx512F32: return LLMN_CPU_ISA_AVX512;
            default: return LLMN_CPU_ISA_AVX2;
        }
    }
    IsaScope isa;
    ComputeScope cm;
#if defined(__x86_64__) || defined(_M_X64)
    NoVnniScope nv, nav;
#endif
    explicit PathScope(Path p)
        : isa(isa_of(p)),
          cm(p == Path::Avx2F32 || p == Path::Avx512F32 ? llmn::int4cpu::Compute::F32 : llmn::int4cpu::Compute::Int8)
#if defined(__x86_64__) || defined(_M_X64)
          ,
          nv(llmn::cpu::set_avx512_vnni, p == Path::Avx512Int8NoVnni),
          nav(llmn::cpu::set_avx_vnni, p == Path::Avx2Int8NoVnni)
#endif
    {
    }
};

struct GemmCase {
    int64_t m, k, n;
    int32_t gs;
    bool sym, act, f16, bias;
};

std::string describe(const GemmCase& c) {
    return testing::PrintToString(c.m) + "x" + std::to_string(c.k) + "x" + std::to_string(c.n) + " gs " +
           std::to_string(c.gs) + (c.sym ? " sym" : " asym") + (c.act ? " act-order" : "") + (c.f16 ? " f16" : " f32") +
           (c.bias ? " bias" : "");
}

// Runs one case on every available path and checks each against the float64 reference.
void run_case(llmn_context ctx, const GemmCase& c, std::mt19937_64& g) {
    SCOPED_TRACE(describe(c));
    const int64_t M = c.m, K = c.k, N = c.n;
    // Weight: act-order ones come from a GPTQ import (only importers carry g_idx), the rest from the quantizer.
    Weight W;
    std::vector<int32_t> group(static_cast<size_t>(K));
    if (c.act) {
        Truth tr = random_truth(g, K, N, c.gs, c.sym, 0, true);
        GptqPacked P;
        pack_gptq(tr, c.sym, LLMN_GPTQ_V2, false, true, P);
        LLMN_ASSERT_OK(llmn_int4_weight_import_gptq(ctx, &P.t, &W.h));
        group = tr.gidx;
    } else {
        std::vector<float> w = outlier_data(g, K * N, 0.04f);
        llmn_int4_weight_desc d{K, N, c.gs, c.sym ? 1 : 0, 0, 0};
        LLMN_ASSERT_OK(llmn_int4_weight_quantize(ctx, &d, LLMN_DTYPE_F32, w.data(), &W.h));
        for (int64_t k = 0; k < K; ++k) group[k] = c.gs == 0 ? 0 : int32_t(k / c.gs);
    }
    const std::vector<float> wd = dequant(W.h, K, N);
    const int64_t G = c.gs == 0 ? 1 : (K + c.gs - 1) / c.gs;

    std::vector<float> x = outlier_data(g, M * K, 1.0f);
    for (int64_t k = 0; k < K; ++k) x[(M / 2) * K + k] *= 1e-3f;  // a row of small values next to large ones
    if (M > 2)
        for (int64_t k = 0; k < K; ++k) x[1 * K + k] = 0.0f;  // an all-zero row
    std::vector<float> bias = outlier_data(g, N, 0.5f);
    if (c.f16) {
        for (auto& v : x) v = f16r(v);
        for (auto& v : bias) v = f16r(v);
    }
    const int32_t dt = c.f16 ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32;
    Buf xb(ctx, dt, M * K), yb(ctx, dt, M * N + 5), bb(ctx, dt, N);
    xb.put(x);
    bb.put(bias);

    // Packed-order block of every row (the CPU layout: rows sorted by group, groups padded to 32).
    std::vector<int64_t> count(static_cast<size_t>(G), 0), start(static_cast<size_t>(G), 0), fill;
    for (int64_t k = 0; k < K; ++k) ++count[group[k]];
    int64_t rows = 0;
    for (int64_t q = 0; q < G; ++q) {
        start[q] = rows;
        rows += (count[q] + 31) / 32 * 32;
    }
    fill = start;
    std::vector<int64_t> block(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) block[k] = fill[group[k]]++ / 32;
    const int64_t nblocks = rows / 32;

    // float64 reference, |x||w| sums and the int8 activation-rounding term.
    std::vector<double> ref(static_cast<size_t>(M * N)), sabs(ref.size()), eq(ref.size());
    {
        std::vector<double> amax(static_cast<size_t>(nblocks)), cq(static_cast<size_t>(K)), ax(static_cast<size_t>(K));
        std::vector<double> wabs(wd.size());
        for (size_t i = 0; i < wd.size(); ++i) wabs[i] = std::fabs(double(wd[i]));
        for (int64_t m = 0; m < M; ++m) {
            std::fill(amax.begin(), amax.end(), 0.0);
            for (int64_t k = 0; k < K; ++k) amax[block[k]] = std::max(amax[block[k]], std::fabs(double(x[m * K + k])));
            for (int64_t k = 0; k < K; ++k) {
                cq[k] = amax[block[k]] / 254.0 * (1.0 + 1.0 / 1048576.0);
                ax[k] = std::fabs(double(x[m * K + k]));
            }
            double* r = &ref[m * N];
            double* s = &sabs[m * N];
            double* e = &eq[m * N];
            for (int64_t n = 0; n < N; ++n) {
                r[n] = c.bias ? double(bias[n]) : 0.0;
                s[n] = c.bias ? std::fabs(double(bias[n])) : 0.0;
                e[n] = 0.0;
            }
            for (int64_t k = 0; k < K; ++k) {
                const double xv = x[m * K + k];
                const float* wr = &wd[k * N];
                const double* war = &wabs[k * N];
                for (int64_t n = 0; n < N; ++n) {
                    r[n] += xv * double(wr[n]);
                    s[n] += ax[k] * war[n];
                    e[n] += cq[k] * war[n];
                }
            }
        }
    }

    const double kp_terms = double(nblocks) * 32.0 + 4.0;
    std::vector<uint8_t> avx2_int8, avx2_f32;  // raw outputs of the AVX2 paths
    for (Path p : available_paths()) {
        SCOPED_TRACE(path_name(p));
        PathScope run(p);
        yb.poison();
        LLMN_ASSERT_OK(llmn_gemm_int4(ctx, xb.h, W.h, c.bias ? bb.h : nullptr, yb.h, M));
        const std::vector<float> y = yb.get();
        // The AVX-512 kernels do the AVX2 kernels' arithmetic per output (exact integer dot products,
        // then the same f32 operations in the same order): bitwise identical results.
        if (p == Path::Avx2Int8) avx2_int8 = yb.raw();
        if (p == Path::Avx2F32) avx2_f32 = yb.raw();
        if (p == Path::Avx2Int8NoVnni || p == Path::Avx512Int8 || p == Path::Avx512Int8NoVnni)
            EXPECT_TRUE(yb.raw() == avx2_int8) << "differs from avx2-int8";
        if (p == Path::Avx512F32) EXPECT_TRUE(yb.raw() == avx2_f32) << "differs from avx2-f32";
        int bad = 0;
        double worst = 0;
        for (int64_t i = 0; i < M * N; ++i) {
            const double eqi = is_int8(p) ? eq[i] : 0.0;
            double bound = eqi + gamma_n(kp_terms) * (sabs[i] + eqi) + 1e-12 * sabs[i];
            if (c.f16) bound += (std::fabs(ref[i]) + bound) / 2048.0 + 1.0 / 33554432.0;
            const double e = std::fabs(double(y[i]) - ref[i]);
            worst = std::max(worst, bound > 0 ? e / bound : (e > 0 ? 1e30 : 0));
            if (!(e <= bound) && bad++ < 5)
                ADD_FAILURE() << "y[" << i / N << "][" << i % N << "] = " << y[i] << ", reference " << ref[i]
                              << ", error " << e << " > bound " << bound;
        }
        for (int64_t i = M * N; i < M * N + 5; ++i) EXPECT_TRUE(std::isnan(y[i])) << "wrote past y[m, N]";
        EXPECT_EQ(bad, 0) << "worst error / bound " << worst;
        if (std::getenv("LLMNATIVE_TEST_VERBOSE")) std::printf("  %-40s %-10s worst error/bound %.3g\n", describe(c).c_str(), path_name(p), worst);
    }
}

}  // namespace

TEST(Int4Gemm, SelectedShapesAllPaths) {
    Ctx ctx;
    auto g = rng(301);
    const bool q = quick();
    const GemmCase cases[] = {
        {1, q ? 520 : 4104, q ? 257 : 1000, 128, true, false, true, true},
        {1, q ? 520 : 4104, 72, 32, false, true, false, false},
        {3, 1000, 257, 32, false, false, false, true},
        {16, 200, q ? 257 : 1000, 64, true, true, false, true},
        {17, 96, 257, 0, false, false, true, false},
        {64, q ? 200 : 1000, 72, 128, false, true, true, true},
        {200, 200, 72, 32, true, false, false, true},
        {300, 96, 8, 64, false, false, true, true},  // more rows than one AVX2 pass (256)
        {67, 200, 72, 64, false, false, false, true},  // > 64 rows, a 3-row tail group (AVX2 int32 activation groups)
        {99, 96, 40, 32, true, true, true, false},     // the same, symmetric, act-order
        {7, 200, 40, 64, false, false, true, true},    // <= 64 rows, a 3-row group after a 4-row one
        {4, 1000, 72, 128, false, true, true, true},  // AVX-512: the largest M with accumulators in registers
        {5, 31, 3, 32, true, false, false, true},    // K, N below one block / tile
        {2, 33, 9, 0, false, false, true, false},
    };
    for (const GemmCase& c : cases) run_case(ctx.h, c, g);
    if (!q) run_case(ctx.h, GemmCase{16, 4096, 4096, 128, true, false, true, true}, g);  // a real layer
}

TEST(Int4Gemm, EveryFormatCombination) {
    Ctx ctx;
    auto g = rng(302);
    const int64_t Ms[] = {1, 3, 16, 17, 64, 200};
    const int64_t Ks[] = {96, 200, 1000, 4104};
    const int64_t Ns[] = {8, 72, 257, 1000};
    int i = 0;
    for (int32_t gs : {0, 32, 64, 128})
        for (int sym : {1, 0})
            for (int act : {0, 1})
                for (int f16 : {0, 1}) {
                    GemmCase c;
                    c.gs = gs;
                    c.sym = sym;
                    c.act = act;
                    c.f16 = f16;
                    c.bias = (i % 3) != 0;
                    c.m = Ms[i % 6];
                    c.k = Ks[(i / 2 + i / 7) % 4];
                    c.n = Ns[(i + i / 4) % 4];
                    if (!c.act) c.k += (i % 2 ? 1 : -3);          // odd K (quantize takes any K)
                    if (c.act && !c.sym && c.n % 8) c.n = 264;    // asym GPTQ needs N % 8 == 0
                    const int64_t cap = quick() ? 600000 : 12000000;
                    while (c.m * c.k * c.n > cap && c.m > 1) c.m = std::max<int64_t>(1, c.m / 4);
                    while (c.m * c.k * c.n > cap && c.k > 256) c.k = c.k / 2 / 8 * 8;
                    ++i;
                    run_case(ctx.h, c, g);
                }
}

// The Int8 path's arithmetic, written out from gemm_int4_cpu.hpp / gemm_int4_avx2.cpp's description
// (independently of the kernels): rows in packed order (grouped, each group padded with zero rows to a multiple
// of 32), per row and 32-row block amax, inv = 127 / amax and scale = amax / 127 in f32, codes = x * inv rounded
// to nearest even, d = sum codes * (q - zero) exactly, then per output acc = fma(float(d), w_scale * scale, acc)
// block by block from +0, y = acc + bias (0 without) rounded to the output dtype.
namespace {
// The model's two roundings without libm: MinGW-w64's fmaf / nearbyint are not dependable (its round() is
// not, see numeric.hpp), and this test needs them exact. The FMA instruction itself (the test runs only where
// an Int8 kernel runs: x86 with AVX2 + FMA, or arm64), and round-to-nearest-even of |t| < 2^22 by adding and
// subtracting 1.5 * 2^23.
#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("fma")))
#endif
float fma_insn(float a, float b, float c) {
    return __builtin_fmaf(a, b, c);
}
int round_even(float t) {
    volatile float big = 12582912.0f;
    return int((t + big) - big);
}

std::vector<uint8_t> int8_path_model(const Truth& tr, const std::vector<float>& x, int64_t M, const std::vector<float>* bias,
                                     bool f16) {
    const int64_t K = tr.K, N = tr.N, G = tr.groups();
    std::vector<int64_t> rows;  // packed order: source row, -1 for padding
    for (int64_t q = 0; q < G; ++q) {
        for (int64_t k = 0; k < K; ++k)
            if (tr.gidx[k] == q) rows.push_back(k);
        while (rows.size() % 32) rows.push_back(-1);
    }
    const int64_t nb = int64_t(rows.size()) / 32;
    std::vector<uint8_t> out(static_cast<size_t>(M * N * (f16 ? 2 : 4)));
    std::vector<float> acc(static_cast<size_t>(N));
    for (int64_t m = 0; m < M; ++m) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t b = 0; b < nb; ++b) {
            float xb[32], am = 0.0f;
            for (int j = 0; j < 32; ++j) {
                const int64_t k = rows[b * 32 + j];
                xb[j] = k < 0 ? 0.0f : x[m * K + k];
                am = std::max(am, std::fabs(xb[j]));
            }
            int code[32] = {};
            float sx = 0.0f;
            if (am > 0.0f) {
                const float inv = 127.0f / am;
                for (int j = 0; j < 32; ++j) {
                    const float t = xb[j] * inv;  // one f32 product (no multiply-add to contract)
                    code[j] = round_even(t);
                }
                sx = am / 127.0f;
            }
            int64_t g = -1;
            for (int j = 0; j < 32 && g < 0; ++j)
                if (rows[b * 32 + j] >= 0) g = tr.gidx[rows[b * 32 + j]];
            if (g < 0) continue;  // an all-padding block: d = 0 adds nothing
            for (int64_t n = 0; n < N; ++n) {
                int64_t d = 0;
                for (int j = 0; j < 32; ++j) {
                    const int64_t k = rows[b * 32 + j];
                    if (k >= 0) d += int64_t(code[j]) * (tr.q[k * N + n] - tr.z[g * N + n]);
                }
                const float ws = tr.s[g * N + n];
                const float f = ws * sx;
                acc[n] = fma_insn(float(d), f, acc[n]);
            }
        }
        for (int64_t n = 0; n < N; ++n) {
            const float y = acc[n] + (bias ? (*bias)[n] : 0.0f);
            if (f16) {
                const uint16_t h = llmn::f32_to_f16(y);
                std::memcpy(&out[size_t((m * N + n) * 2)], &h, 2);
            } else {
                std::memcpy(&out[size_t((m * N + n) * 4)], &y, 4);
            }
        }
    }
    return out;
}

}  // namespace

// Every Int8 kernel (AVX2 with and without AVX-VNNI, AVX-512 with and without VNNI, NEON with the dot product)
// against the model above, bit for bit: so the x86 and arm64 kernels give the same bits as each other, which no
// single machine could compare directly.
TEST(Int4Gemm, Int8KernelsComputeTheDocumentedArithmeticBitForBit) {
    std::vector<Path> paths;
    for (Path p : available_paths())
        if (is_int8(p)) paths.push_back(p);
    if (paths.empty()) GTEST_SKIP() << "no Int8 INT4 kernel on this CPU (AVX2, AVX-512 or the arm64 dot product)";
    Ctx ctx;
    auto g = rng(311);
    struct Shape {
        int64_t m, k, n;
        int32_t gs;
        bool sym, act, f16, bias;
    };
    const Shape shapes[] = {{1, 256, 40, 128, true, false, false, false}, {5, 200, 72, 64, false, true, true, true},
                            {17, 96, 257, 32, true, false, false, true}, {3, 136, 33, 0, true, false, true, false},
                            {40, 512, 64, 128, false, true, false, false}, {2, 64, 8, 32, true, true, true, true}};
    for (const Shape& sh : shapes) {
        SCOPED_TRACE(testing::Message() << sh.m << "x" << sh.k << "x" << sh.n << " gs " << sh.gs << (sh.sym ? " sym" : " asym")
                                        << (sh.act ? " act-order" : "") << (sh.f16 ? " f16" : " f32") << (sh.bias ? " bias" : ""));
        Truth tr = random_truth(g, sh.k, sh.n, sh.gs, sh.sym, 0, sh.act);
        GptqPacked P;
        pack_gptq(tr, sh.sym, LLMN_GPTQ_V2, false, sh.act, P);
        Weight W;
        LLMN_ASSERT_OK(llmn_int4_weight_import_gptq(ctx.h, &P.t, &W.h));
        std::vector<float> x = outlier_data(g, sh.m * sh.k, 1.0f), bias = outlier_data(g, sh.n, 0.5f);
        if (sh.f16) {
            for (auto& v : x) v = f16r(v);
            for (auto& v : bias) v = f16r(v);
        }
        if (sh.m > 2)
            for (int64_t k = 0; k < sh.k; ++k) x[1 * sh.k + k] = 0.0f;  // all-zero blocks: scale 0
        const int32_t dt = sh.f16 ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32;
        Buf xb(ctx.h, dt, sh.m * sh.k), yb(ctx.h, dt, sh.m * sh.n), bb(ctx.h, dt, sh.n);
        xb.put(x);
        bb.put(bias);
        const std::vector<uint8_t> want = int8_path_model(tr, x, sh.m, sh.bias ? &bias : nullptr, sh.f16);
        for (Path p : paths) {
            SCOPED_TRACE(path_name(p));
            PathScope run(p);
            yb.poison();
            LLMN_ASSERT_OK(llmn_gemm_int4(ctx.h, xb.h, W.h, sh.bias ? bb.h : nullptr, yb.h, sh.m));
            const std::vector<uint8_t> got = yb.raw();
            size_t first = got.size();
            for (size_t i = 0; i < got.size() && first == got.size(); ++i)
                if (got[i] != want[i]) first = i;
            EXPECT_EQ(first, got.size()) << "first differing byte " << first << " (output " << first / (sh.f16 ? 2 : 4) << ")";
        }
    }
}

TEST(Int4Gemm, DeterministicAcrossThreadCounts) {
    if (simd_isas().empty()) GTEST_SKIP() << "no SIMD INT4 kernel on this CPU (the scalar path has its own test)";
    Ctx ctx;
    auto g = rng(303);
    const int64_t M = 17, K = 1000, N = 300;
    std::vector<float> w = outlier_data(g, K * N, 0.05f), x = outlier_data(g, M * K, 1.0f);
    llmn_int4_weight_desc d{K, N, 64, 0, 0, 0};
    Weight W;
    LLMN_ASSERT_OK(llmn_int4_weight_quantize(ctx.h, &d, LLMN_DTYPE_F32, w.data(), &W.h));
    Buf xb(ctx.h, LLMN_DTYPE_F32, M * K), yb(ctx.h, LLMN_DTYPE_F32, M * N);
    xb.put(x);
    for (int32_t isa : simd_isas())
    for (auto mode : {llmn::int4cpu::Compute::Int8, llmn::int4cpu::Compute::F32}) {
        SCOPED_TRACE(testing::Message() << "isa " << isa << " mode " << int(mode));
        IsaScope is(isa);
        ComputeScope cm(mode);
        std::vector<std::vector<uint8_t>> outs;
        for (int threads : {1, 2, 3}) {
            LLMN_ASSERT_OK(llmn_set_cpu_threads(threads));
            yb.poison();
            LLMN_ASSERT_OK(llmn_gemm_int4(ctx.h, xb.h, W.h, nullptr, yb.h, M));
            outs.push_back(yb.raw());
        }
        LLMN_ASSERT_OK(llmn_set_cpu_threads(0));
        EXPECT_EQ(outs[0], outs[1]);
        EXPECT_EQ(outs[0], outs[2]);
    }
}

TEST(Int4Gemm, NonFiniteActivationsPoisonTheirRow) {
    Ctx ctx;
    auto g = rng(304);
    const int64_t M = 3, K = 100, N = 40;
    std::vector<float> w = outlier_data(g, K * N, 0.05f), x = outlier_data(g, M * K, 1.0f);
    x[1 * K + 50] = std::numeric_limits<float>::quiet_NaN();
    llmn_int4_weight_desc d{K, N, 32, 1, 0, 0};
    Weight W;
    LLMN_ASSERT_OK(llmn_int4_weight_quantize(ctx.h, &d, LLMN_DTYPE_F32, w.data(), &W.h));
    Buf xb(ctx.h, LLMN_DTYPE_F32, M * K), yb(ctx.h, LLMN_DTYPE_F32, M * N);
    xb.put(x);
    std::vector<int32_t> isas = simd_isas();
    isas.insert(isas.begin(), LLMN_CPU_ISA_SCALAR);
    for (int32_t isa : isas) {
        IsaScope s(isa);
        yb.poison();
        LLMN_ASSERT_OK(llmn_gemm_int4(ctx.h, xb.h, W.h, nullptr, yb.h, M));
        std::vector<float> y = yb.get();
        for (int64_t n = 0; n < N; ++n) {
            EXPECT_TRUE(std::isfinite(y[0 * N + n]));
            EXPECT_TRUE(std::isnan(y[1 * N + n])) << "isa " << isa << " column " << n;
            EXPECT_TRUE(std::isfinite(y[2 * N + n]));
        }
    }
}

TEST(Int4Gemm, BadInputIsRejectedAndYIsUntouched) {
    Ctx ctx;
    auto g = rng(305);
    const int64_t M = 4, K = 64, N = 24;
    std::vector<float> w = outlier_data(g, K * N, 0.05f);
    llmn_int4_weight_desc d{K, N, 32, 1, 0, 0};
    Weight W;
    LLMN_ASSERT_OK(llmn_int4_weight_quantize(ctx.h, &d, LLMN_DTYPE_F32, w.data(), &W.h));
    Buf x(ctx.h, LLMN_DTYPE_F32, M * K), y(ctx.h, LLMN_DTYPE_F32, M * N), bias(ctx.h, LLMN_DTYPE_F32, N);
    Buf x_small(ctx.h, LLMN_DTYPE_F32, M * K - 1), y16(ctx.h, LLMN_DTYPE_F16, M * N), bias_small(ctx.h, LLMN_DTYPE_F32, N - 1);
    Buf x_i8(ctx.h, LLMN_DTYPE_I8, M * K), y_i8(ctx.h, LLMN_DTYPE_I8, M * N), bias16(ctx.h, LLMN_DTYPE_F16, N);
    x.put(outlier_data(g, M * K, 1.0f));
    std::vector<float> sentinel(M * N, 123.0f);
    y.put(sentinel);
    const std::vector<uint8_t> y_before = y.raw();
    auto expect = [&](llmn_status st, llmn_status want, const char* needle) {
        EXPECT_EQ(st, want) << err();
        EXPECT_NE(err().find(needle), std::string::npos) << "expected '" << needle << "' in: " << err();
        EXPECT_EQ(y.raw(), y_before) << "y changed by a failed call";
    };
    expect(llmn_gemm_int4(ctx.h, x_small.h, W.h, bias.h, y.h, M), LLMN_STATUS_INVALID_ARGUMENT, "x holds");
    expect(llmn_gemm_int4(ctx.h, x.h, W.h, bias.h, y.h, M + 1), LLMN_STATUS_INVALID_ARGUMENT, "[m, K]");
    expect(llmn_gemm_int4(ctx.h, x.h, W.h, bias.h, y.h, -1), LLMN_STATUS_INVALID_ARGUMENT, "m must be");
    expect(llmn_gemm_int4(ctx.h, x.h, W.h, bias_small.h, y.h, M), LLMN_STATUS_INVALID_ARGUMENT, "bias holds");
    expect(llmn_gemm_int4(ctx.h, x.h, W.h, bias16.h, y.h, M), LLMN_STATUS_INVALID_ARGUMENT, "bias has dtype f16");
    expect(llmn_gemm_int4(ctx.h, x_i8.h, W.h, nullptr, y_i8.h, M), LLMN_STATUS_INVALID_ARGUMENT, "x has dtype i8");
    expect(llmn_gemm_int4(ctx.h, y.h, W.h, nullptr, y.h, 1), LLMN_STATUS_INVALID_ARGUMENT, "overlap");
    expect(llmn_gemm_int4(ctx.h, x.h, reinterpret_cast<llmn_int4_weight>(x.h), nullptr, y.h, M),
           LLMN_STATUS_INVALID_HANDLE, "weight");
    expect(llmn_gemm_int4(ctx.h, x.h, W.h, nullptr, nullptr, M), LLMN_STATUS_INVALID_HANDLE, "y");
    // y16 vs x f32: the dtype mismatch is reported and y16 is untouched too
    y16.put(std::vector<float>(M * N, 2.0f));
    const std::vector<uint8_t> y16_before = y16.raw();
    EXPECT_EQ(llmn_gemm_int4(ctx.h, x.h, W.h, nullptr, y16.h, M), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(err().find("y has dtype f16"), std::string::npos) << err();
    EXPECT_EQ(y16.raw(), y16_before);
    // a destroyed weight is an invalid handle
    llmn_int4_weight dead = W.h;
    LLMN_ASSERT_OK(llmn_int4_weight_destroy(dead));
    W.h = nullptr;
    expect(llmn_gemm_int4(ctx.h, x.h, dead, nullptr, y.h, M), LLMN_STATUS_INVALID_HANDLE, "weight");
    expect(llmn_gemm_int4(ctx.h, x.h, nullptr, nullptr, y.h, 0), LLMN_STATUS_INVALID_HANDLE, "weight");
}

TEST(Int4Gemm, EmptyProductWritesNothing) {
    Ctx ctx;
    std::vector<float> w(64 * 8, 0.5f);
    llmn_int4_weight_desc d{64, 8, 32, 1, 0, 0};
    Weight W;
    LLMN_ASSERT_OK(llmn_int4_weight_quantize(ctx.h, &d, LLMN_DTYPE_F32, w.data(), &W.h));
    Buf x(ctx.h, LLMN_DTYPE_F32, 64), y(ctx.h, LLMN_DTYPE_F32, 8);
    y.put(std::vector<float>(8, 3.0f));
    LLMN_ASSERT_OK(llmn_gemm_int4(ctx.h, x.h, W.h, nullptr, y.h, 0));
    EXPECT_EQ(y.get(), std::vector<float>(8, 3.0f));
}

TEST(Int4Gemm, WeightOutlivesItsContextHandle) {
    llmn_context ctx = nullptr;
    LLMN_ASSERT_OK(llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx));
    std::vector<float> w(64 * 8, 0.4375f);  // 7 * 0.0625: on the grid
    llmn_int4_weight_desc d{64, 8, 32, 1, 0, 0};
    llmn_int4_weight W = nullptr;
    LLMN_ASSERT_OK(llmn_int4_weight_quantize(ctx, &d, LLMN_DTYPE_F32, w.data(), &W));
    LLMN_ASSERT_OK(llmn_context_destroy(ctx));
    std::vector<float> dq(64 * 8);
    LLMN_ASSERT_OK(llmn_int4_weight_dequantize(W, LLMN_DTYPE_F32, dq.data()));
    EXPECT_EQ(dq[0], 0.4375f);
    LLMN_ASSERT_OK(llmn_int4_weight_destroy(W));
    LLMN_EXPECT_STATUS(llmn_int4_weight_destroy(W), LLMN_STATUS_INVALID_HANDLE);
}

// ================================================================================================
// Dense baseline
// ================================================================================================

TEST(DenseGemm, MatchesFloat64Reference) {
    Ctx ctx;
    auto g = rng(401);
    struct C { int64_t m, k, n; bool f16, bias; };
    const C cases[] = {{1, 1000, 1000, true, true}, {1, 333, 72, false, false}, {3, 200, 257, false, true},
                       {7, 96, 8, true, false},     {17, 257, 130, true, true},  {64, 100, 64, false, true},
                       {300, 50, 70, true, true},   {2, 130, 1030, false, true}, {4, 67, 2100, true, false},
                       {4, 40, 1100, false, true}};
    for (const C& c : cases) {
        for (int32_t isa : {int32_t(LLMN_CPU_ISA_SCALAR), int32_t(LLMN_CPU_ISA_AVX2)}) {
            if (isa == LLMN_CPU_ISA_AVX2 && !have_avx2()) continue;
            SCOPED_TRACE(testing::Message() << c.m << "x" << c.k << "x" << c.n << (c.f16 ? " f16" : " f32") << " isa " << isa);
            IsaScope s(isa);
            const int32_t dt = c.f16 ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32;
            std::vector<float> x = outlier_data(g, c.m * c.k, 1.0f), w = outlier_data(g, c.k * c.n, 0.05f),
                               b = outlier_data(g, c.n, 0.5f);
            if (c.f16) {
                for (auto& v : x) v = f16r(v);
                for (auto& v : w) v = f16r(v);
                for (auto& v : b) v = f16r(v);
            }
            Buf xb(ctx.h, dt, c.m * c.k), wb(ctx.h, dt, c.k * c.n), bb(ctx.h, dt, c.n), yb(ctx.h, dt, c.m * c.n + 3);
            xb.put(x);
            wb.put(w);
            bb.put(b);
            yb.poison();
            LLMN_ASSERT_OK(llmn_gemm_dense(ctx.h, xb.h, wb.h, c.bias ? bb.h : nullptr, yb.h, c.m, c.k, c.n));
            std::vector<float> y = yb.get();
            int bad = 0;
            for (int64_t m = 0; m < c.m; ++m)
                for (int64_t n = 0; n < c.n; ++n) {
                    double r = c.bias ? b[n] : 0.0, sa = c.bias ? std::fabs(b[n]) : 0.0;
                    for (int64_t k = 0; k < c.k; ++k) {
                        r += double(x[m * c.k + k]) * double(w[k * c.n + n]);
                        sa += std::fabs(double(x[m * c.k + k]) * double(w[k * c.n + n]));
                    }
                    double bound = gamma_n(double(c.k) + 2) * sa + 1e-12 * sa;
                    if (c.f16) bound += (std::fabs(r) + bound) / 2048.0 + 1.0 / 33554432.0;
                    const double e = std::fabs(double(y[m * c.n + n]) - r);
                    if (!(e <= bound) && bad++ < 5)
                        ADD_FAILURE() << "y[" << m << "][" << n << "] = " << y[m * c.n + n] << " ref " << r << " bound " << bound;
                }
            EXPECT_EQ(bad, 0);
            for (int64_t i = c.m * c.n; i < c.m * c.n + 3; ++i) EXPECT_TRUE(std::isnan(y[i]));
        }
    }
}

TEST(DenseGemm, BadInputIsRejectedAndYIsUntouched) {
    Ctx ctx;
    const int64_t M = 2, K = 16, N = 8;
    Buf x(ctx.h, LLMN_DTYPE_F32, M * K), w(ctx.h, LLMN_DTYPE_F32, K * N), w_small(ctx.h, LLMN_DTYPE_F32, K * N - 1),
        w16(ctx.h, LLMN_DTYPE_F16, K * N), y(ctx.h, LLMN_DTYPE_F32, M * N);
    y.put(std::vector<float>(M * N, 7.0f));
    const auto before = y.raw();
    auto expect = [&](llmn_status st, const char* needle) {
        EXPECT_EQ(st, LLMN_STATUS_INVALID_ARGUMENT) << err();
        EXPECT_NE(err().find(needle), std::string::npos) << "expected '" << needle << "' in: " << err();
        EXPECT_EQ(y.raw(), before);
    };
    expect(llmn_gemm_dense(ctx.h, x.h, w_small.h, nullptr, y.h, M, K, N), "w holds");
    expect(llmn_gemm_dense(ctx.h, x.h, w16.h, nullptr, y.h, M, K, N), "w has dtype f16");
    expect(llmn_gemm_dense(ctx.h, x.h, w.h, nullptr, y.h, M, K + 1, N), "x holds");
    expect(llmn_gemm_dense(ctx.h, x.h, w.h, nullptr, y.h, M, K, 0), "n must be");
    expect(llmn_gemm_dense(ctx.h, x.h, w.h, nullptr, x.h, 1, K, N), "overlap");
}
