// CUDA KV-cache append (kv_append.cu): GPU tests, skipped visibly without a device (LLMN_REQUIRE_CUDA).
// A CPU cache and a CUDA cache receive identical appends (same free-list shuffle, so the same
// physical blocks); the CUDA cache must then hold exactly what the CPU cache holds (read back
// bit for bit, f16 / INT8 / E4M3, including the per-token scales, through scattered blocks, forks with
// copy-on-write and appends long enough to need several launches), and a rejected append (NaN,
// Inf, f16 overflow) must leave it unchanged with the CPU path's message. bf16 (CUDA only) is
// checked against the host rounding of the inputs. The per-element math itself is checked on the
// CPU in test_kv_quant_cuda.cpp.
#include "core/error.hpp"
#include "core/numeric.hpp"
#include "kernels/kv_cache/kv_cache.hpp"
#include "test_util.hpp"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using namespace llmn_test;

namespace {

struct Ctx {
    llmn_context h = nullptr;
    explicit Ctx(int32_t backend) { EXPECT_EQ(llmn_context_create(backend, 0, &h), LLMN_STATUS_OK) << last_error(); }
    ~Ctx() { llmn_context_destroy(h); }
    Ctx(const Ctx&) = delete;
    Ctx& operator=(const Ctx&) = delete;
};

struct Pair {
    Ctx gpu{LLMN_BACKEND_CUDA}, cpu{LLMN_BACKEND_CPU};
    llmn_kv_cache g = nullptr, c = nullptr;
    llmn_kv_cache_desc d{};
    Pair(int32_t kf, int32_t vf, int32_t H, int32_t D, int32_t bs, int64_t tokens, bool with_cpu = true) {
        d.num_layers = 2;
        d.num_kv_heads = H;
        d.head_dim = D;
        d.block_size = bs;
        d.k_format = kf;
        d.v_format = vf;
        d.capacity_tokens = tokens;
        EXPECT_EQ(llmn_kv_cache_create(gpu.h, &d, &g), LLMN_STATUS_OK) << last_error();
        if (with_cpu) EXPECT_EQ(llmn_kv_cache_create(cpu.h, &d, &c), LLMN_STATUS_OK) << last_error();
        if (g) llmn::lookup<llmn::KvCache>(g, "cache")->debug_shuffle_free_list(99);
        if (c) llmn::lookup<llmn::KvCache>(c, "cache")->debug_shuffle_free_list(99);
    }
    ~Pair() {
        if (g) llmn_kv_cache_destroy(g);
        if (c) llmn_kv_cache_destroy(c);
    }
};

// Appends values (given as f32, converted to `dtype` first) to one cache.
llmn_status append(llmn_context ctx, llmn_kv_cache kc, int64_t id, int32_t layer, const std::vector<float>& k,
                   const std::vector<float>& v, int32_t n, int32_t dtype) {
    llmn_buffer kb = nullptr, vb = nullptr;
    llmn_buffer_create(ctx, dtype, int64_t(k.size()), LLMN_MEMORY_DEVICE, &kb);
    llmn_buffer_create(ctx, dtype, int64_t(v.size()), LLMN_MEMORY_DEVICE, &vb);
    for (int side = 0; side < 2; ++side) {
        const std::vector<float>& x = side ? v : k;
        llmn_buffer b = side ? vb : kb;
        if (dtype == LLMN_DTYPE_F32) {
            llmn_buffer_upload(b, 0, x.data(), int64_t(x.size()));
        } else {
            std::vector<uint16_t> h(x.size());
            for (size_t i = 0; i < x.size(); ++i) h[i] = dtype == LLMN_DTYPE_BF16 ? llmn::f32_to_bf16(x[i]) : llmn::f32_to_f16(x[i]);
            llmn_buffer_upload(b, 0, h.data(), int64_t(h.size()));
        }
    }
    const llmn_status s = llmn_kv_cache_append(kc, id, layer, kb, vb, n);
    const std::string msg = last_error();
    llmn_buffer_destroy(kb);
    llmn_buffer_destroy(vb);
    llmn::set_last_error(msg);
    return s;
}

// Reads tokens [0, len) of one layer as f32 (poisoned first).
void read_all(llmn_context ctx, llmn_kv_cache kc, int64_t id, int32_t layer, int64_t n_elems_per_token, std::vector<float>& k,
              std::vector<float>& v) {
    int64_t len = 0;
    ASSERT_EQ(llmn_kv_cache_get_sequence_length(kc, id, layer, &len), LLMN_STATUS_OK) << last_error();
    const int64_t cnt = std::max<int64_t>(len * n_elems_per_token, 1);
    llmn_buffer kb = nullptr, vb = nullptr;
    llmn_buffer_create(ctx, LLMN_DTYPE_F32, cnt, LLMN_MEMORY_DEVICE, &kb);
    llmn_buffer_create(ctx, LLMN_DTYPE_F32, cnt, LLMN_MEMORY_DEVICE, &vb);
    const float nan = std::nanf("");
    llmn_buffer_fill(kb, 0, cnt, &nan);
    llmn_buffer_fill(vb, 0, cnt, &nan);
    EXPECT_EQ(llmn_kv_cache_read(kc, id, layer, 0, len, kb, vb), LLMN_STATUS_OK) << last_error();
    k.assign(size_t(len * n_elems_per_token), 0.0f);
    v.assign(k.size(), 0.0f);
    llmn_buffer_download(kb, 0, k.data(), int64_t(k.size()));
    llmn_buffer_download(vb, 0, v.data(), int64_t(v.size()));
    llmn_buffer_destroy(kb);
    llmn_buffer_destroy(vb);
}

std::vector<float> random_rows(std::mt19937_64& g, size_t n, bool outliers) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) {
        x[i] = nd(g);
        if (outliers && g() % 97 == 0) x[i] *= 500.0f;
        if (g() % 301 == 0) x[i] = 0.0f;
    }
    return x;
}

void expect_bitwise(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    size_t bad = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        uint32_t x, y;
        std::memcpy(&x, &a[i], 4);
        std::memcpy(&y, &b[i], 4);
        if (x != y && bad++ < 5) ADD_FAILURE() << what << ": element " << i << " cuda " << a[i] << " cpu " << b[i];
    }
    EXPECT_EQ(bad, 0u) << what;
}

}  // namespace

TEST(KvCacheCuda, AppendMatchesCpuCacheBitForBit) {
    LLMN_REQUIRE_CUDA();
    auto g = rng(8101);
    struct Case {
        int32_t kf, vf, H, D, bs, in_dtype;
    };
    for (Case cs : {Case{LLMN_KV_F16, LLMN_KV_F16, 2, 64, 16, LLMN_DTYPE_F32}, Case{LLMN_KV_INT8, LLMN_KV_INT8, 3, 80, 8, LLMN_DTYPE_F32},
                    Case{LLMN_KV_FP8_E4M3, LLMN_KV_FP8_E4M3, 2, 128, 32, LLMN_DTYPE_F16},
                    Case{LLMN_KV_INT8, LLMN_KV_F16, 1, 256, 16, LLMN_DTYPE_F16},
                    Case{LLMN_KV_F16, LLMN_KV_FP8_E4M3, 2, 96, 64, LLMN_DTYPE_F32}}) {
        const std::string name = std::string(llmn::kv_format_name(cs.kf)) + "/" + llmn::kv_format_name(cs.vf) + " D " +
                                 std::to_string(cs.D) + " bs " + std::to_string(cs.bs);
        Pair p(cs.kf, cs.vf, cs.H, cs.D, cs.bs, 4096);
        ASSERT_TRUE(p.g && p.c) << name;
        int64_t ig = 0, ic = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(p.g, &ig));
        LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(p.c, &ic));
        const int64_t per_tok = int64_t(cs.H) * cs.D;
        // short appends, a long one (> 128 blocks for bs 8: several launches), a fork with copy-on-write
        for (int32_t n : {1, 3, cs.bs, 2 * cs.bs + 5, cs.bs == 8 ? 1100 : 300, 1}) {
            for (int32_t layer = 0; layer < 2; ++layer) {
                auto k = random_rows(g, size_t(n * per_tok), true), v = random_rows(g, size_t(n * per_tok), true);
                ASSERT_EQ(append(p.gpu.h, p.g, ig, layer, k, v, n, cs.in_dtype), LLMN_STATUS_OK) << name << ": " << last_error();
                ASSERT_EQ(append(p.cpu.h, p.c, ic, layer, k, v, n, cs.in_dtype), LLMN_STATUS_OK) << name << ": " << last_error();
            }
        }
        // fork (full blocks shared), then cut the parent into a shared full block: its next append
        // must copy that block first (copy-on-write) and leave the child's rows alone
        int64_t fg = 0, fc = 0, len = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(p.g, ig, &fg));
        LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(p.c, ic, &fc));
        LLMN_ASSERT_OK(llmn_kv_cache_get_sequence_length(p.g, ig, 0, &len));
        const int64_t cut = (len / cs.bs - 1) * cs.bs - 3;
        ASSERT_GT(cut, 0);
        LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(p.g, ig, cut));
        LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(p.c, ic, cut));
        for (int32_t layer = 0; layer < 2; ++layer) {
            auto k = random_rows(g, size_t(7 * per_tok), false), v = random_rows(g, size_t(7 * per_tok), false);
            ASSERT_EQ(append(p.gpu.h, p.g, ig, layer, k, v, 7, cs.in_dtype), LLMN_STATUS_OK) << last_error();
            ASSERT_EQ(append(p.cpu.h, p.c, ic, layer, k, v, 7, cs.in_dtype), LLMN_STATUS_OK) << last_error();
        }
        for (int32_t layer = 0; layer < 2; ++layer)
            for (auto ids : {std::pair<int64_t, int64_t>{ig, ic}, std::pair<int64_t, int64_t>{fg, fc}}) {
                std::vector<float> kg, vg, kc, vc;
                read_all(p.gpu.h, p.g, ids.first, layer, per_tok, kg, vg);
                read_all(p.cpu.h, p.c, ids.second, layer, per_tok, kc, vc);
                expect_bitwise(kg, kc, name + " K layer " + std::to_string(layer));
                expect_bitwise(vg, vc, name + " V layer " + std::to_string(layer));
            }
    }
}

TEST(KvCacheCuda, Bf16AppendStoresRoundedInputs) {
    LLMN_REQUIRE_CUDA();
    auto g = rng(8102);
    Pair p(LLMN_KV_BF16, LLMN_KV_BF16, 2, 64, 16, 512, false);
    ASSERT_TRUE(p.g);
    int64_t id = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(p.g, &id));
    for (int32_t dtype : {LLMN_DTYPE_F32, LLMN_DTYPE_F16, LLMN_DTYPE_BF16}) {
        const int32_t n = 21;
        auto k = random_rows(g, size_t(n) * 128, true), v = random_rows(g, size_t(n) * 128, true);
        if (dtype == LLMN_DTYPE_BF16)
            for (auto* x : {&k, &v})
                for (auto& e : *x) e = llmn::bf16_to_f32(llmn::f32_to_bf16(e));
        if (dtype == LLMN_DTYPE_F16)
            for (auto* x : {&k, &v})
                for (auto& e : *x) e = llmn::f16_to_f32(llmn::f32_to_f16(e));
        int64_t before = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_get_sequence_length(p.g, id, 0, &before));
        LLMN_ASSERT_OK(append(p.gpu.h, p.g, id, 0, k, v, n, dtype));
        std::vector<float> kr, vr;
        read_all(p.gpu.h, p.g, id, 0, 128, kr, vr);
        ASSERT_EQ(kr.size(), size_t(before + n) * 128);
        // read-back of a bf16 cache goes through f32, exact: element == bf16 rounding of the input
        for (size_t i = 0; i < k.size(); ++i) {
            ASSERT_EQ(kr[size_t(before) * 128 + i], llmn::bf16_to_f32(llmn::f32_to_bf16(k[i]))) << "k " << i;
            ASSERT_EQ(vr[size_t(before) * 128 + i], llmn::bf16_to_f32(llmn::f32_to_bf16(v[i]))) << "v " << i;
        }
    }
}

TEST(KvCacheCuda, RejectedAppendLeavesCacheUnchanged) {
    LLMN_REQUIRE_CUDA();
    auto g = rng(8103);
    struct Case {
        int32_t fmt;
        int side;  // 0: k, 1: v
        float bad;
        const char* expect;
    };
    for (Case cs : {Case{LLMN_KV_F16, 1, std::nanf(""), "v[token 2, head 1, channel 5] is NaN"},
                    Case{LLMN_KV_INT8, 0, INFINITY, "k[token 2, head 1, channel 5] is +Inf"},
                    Case{LLMN_KV_FP8_E4M3, 1, -INFINITY, "v[token 2, head 1, channel 5] is -Inf"},
                    Case{LLMN_KV_F16, 0, 70000.0f, "k[token 2, head 1, channel 5] = 70000 overflows"},
                    Case{LLMN_KV_BF16, 0, 3.4e38f, "k[token 2, head 1, channel 5] = 3.4e+38 overflows"}}) {
        Pair p(cs.fmt, cs.fmt, 2, 64, 16, 256, false);
        ASSERT_TRUE(p.g);
        int64_t id = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(p.g, &id));
        auto k = random_rows(g, 13 * 128, false), v = random_rows(g, 13 * 128, false);
        LLMN_ASSERT_OK(append(p.gpu.h, p.g, id, 0, k, v, 13, LLMN_DTYPE_F32));
        std::vector<float> k0, v0;
        read_all(p.gpu.h, p.g, id, 0, 128, k0, v0);
        llmn_kv_cache_stats s0{}, s1{};
        LLMN_ASSERT_OK(llmn_kv_cache_get_stats(p.g, &s0));
        auto k2 = random_rows(g, 9 * 128, false), v2 = random_rows(g, 9 * 128, false);
        (cs.side ? v2 : k2)[(2 * 2 + 1) * 64 + 5] = cs.bad;
        (cs.side ? v2 : k2)[(7 * 2 + 0) * 64 + 9] = cs.bad;  // a later offender: the first one is reported
        LLMN_EXPECT_STATUS(append(p.gpu.h, p.g, id, 0, k2, v2, 9, LLMN_DTYPE_F32), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find(cs.expect), std::string::npos) << last_error();
        LLMN_ASSERT_OK(llmn_kv_cache_get_stats(p.g, &s1));
        EXPECT_EQ(s1.free_blocks, s0.free_blocks);
        int64_t len = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_get_sequence_length(p.g, id, 0, &len));
        EXPECT_EQ(len, 13);
        std::vector<float> k1, v1;
        read_all(p.gpu.h, p.g, id, 0, 128, k1, v1);
        expect_bitwise(k1, k0, "K after rejected append");
        expect_bitwise(v1, v0, "V after rejected append");
    }
}
