// CUDA KV-cache append (kv_append.cu): GPU tests, skipped visibly without a device (LLMN_REQUIRE_CUDA).
// A CPU cache and a CUDA cache receive identical appends (same free-list shuffle, so the same
// physical blocks); the CUDA cache must then hold exactly what the CPU cache holds (read back
// bit for bit, f16 / INT8 / E4M3, including the per-token scales, through scattered blocks, forks with
// copy-on-write and appends long enough to need several launches), and a rejected append (NaN,
// Inf, f16 overflow) must leave it unchanged with the CPU path's message. bf16 (CUDA only) is
// checked against the host rounding of the inputs. The per-element math itself is checked on the
// CPU in test_kv_quant_cuda.cpp.
// KIVI INT4/INT2 (device block quantization when a block fills, f16 residual tiles): a CPU and a CUDA
// cache get identical appends (one at a time, bulk, chunks crossing several blocks, f32 and f16
// input, bf16 input on CUDA vs its exact f32 values on the CPU, per-layer different chunkings),
// forks with a partial residual, truncates into a quantized block, rejected appends; after each step
// the RAW bytes must be equal: every quantized tile's codes and f16 scales/minimums, the valid rows
// of every residual tile and of every non-KIVI side, and the dequantized read-back bit for bit. The
// codec itself is checked on the CPU in test_kv_kivi_cuda.cpp.
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
    Pair(int32_t kf, int32_t vf, int32_t H, int32_t D, int32_t bs, int64_t tokens, bool with_cpu = true, int32_t group = 0) {
        d.num_layers = 2;
        d.value_group_size = group;
        d.max_batch = 8;
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

// ------------------------------------------------------------------------------------------------ KIVI

namespace {

// The bytes [off, off + n) of a cache's pool (device pool: copied to the host).
std::vector<uint8_t> pool_bytes(llmn_kv_cache h, int64_t off, int64_t n) {
    auto c = llmn::lookup<llmn::KvCache>(h, "cache");
    std::vector<uint8_t> out(static_cast<size_t>(n));
    if (c->context()->is_cuda()) llmn::copy_to_host(*c->context(), out.data(), c->pool() + off, size_t(n));
    else std::memcpy(out.data(), c->pool() + off, size_t(n));
    return out;
}

// Raw bytes of one sequence in a CUDA and a CPU cache with identical descs: per layer and head, the
// KIVI sections of every full block, the valid residual rows of the partial block, the valid rows
// (and INT8/E4M3 scales) of non-KIVI sides; then the dequantized read-back, bit for bit.
void expect_same_sequence(const Pair& p, int64_t ig, int64_t ic, const std::string& what) {
    auto gc = llmn::lookup<llmn::KvCache>(p.g, "cache");
    auto cc = llmn::lookup<llmn::KvCache>(p.c, "cache");
    const llmn::KvLayout& L = gc->layout();
    const int32_t H = p.d.num_kv_heads, D = p.d.head_dim, bs = p.d.block_size;
    const llmn::KvSequence& sg = gc->sequence(ig, "gpu id");
    const llmn::KvSequence& sc = cc->sequence(ic, "cpu id");
    size_t compared = 0;
    for (int32_t layer = 0; layer < p.d.num_layers; ++layer) {
        const int64_t len = sg.length[size_t(layer)];
        ASSERT_EQ(len, sc.length[size_t(layer)]) << what << " layer " << layer;
        const int64_t nblk = (len + bs - 1) / bs;
        for (int64_t j = 0; j < nblk; ++j) {
            const bool full = (j + 1) * bs <= len;
            const int64_t rows = full ? bs : len - j * bs;
            for (int32_t h = 0; h < H; ++h)
                for (int side = 0; side < 2; ++side) {
                    const int32_t fmt = side ? L.v_format : L.k_format;
                    const std::string where = what + " layer " + std::to_string(layer) + " block " + std::to_string(j) +
                                              " head " + std::to_string(h) + (side ? " V" : " K");
                    std::vector<std::pair<int64_t, int64_t>> g_ranges, c_ranges;  // (offset, bytes)
                    if (llmn::kv_format_is_kivi(fmt) && !full) {
                        const int64_t ro = side ? L.res_v_off : L.res_k_off;
                        g_ranges.push_back({L.res_tile_offset(sg.res_slot, layer, h) + ro, rows * D * 2});
                        c_ranges.push_back({L.res_tile_offset(sc.res_slot, layer, h) + ro, rows * D * 2});
                    } else {
                        const int64_t data = side ? L.v_data_off : L.k_data_off, aux = side ? L.v_aux_off : L.k_aux_off;
                        const int64_t rb = side ? L.v_row_bytes : L.k_row_bytes;
                        const int64_t aux_bytes = llmn::kv_format_is_kivi(fmt)
                                                      ? llmn::kv_aux_bytes(fmt, side == 1, bs, D, p.d.value_group_size)
                                                      : llmn::kv_aux_bytes(fmt, side == 1, bs, D, 0) / bs * rows;
                        for (auto* r : {&g_ranges, &c_ranges}) {
                            const llmn::KvSequence& s = r == &g_ranges ? sg : sc;
                            const int64_t tile = L.tile_offset(layer, s.blocks[size_t(j)], h);
                            r->push_back({tile + data, rb * rows});
                            if (aux_bytes > 0) r->push_back({tile + aux, aux_bytes});
                        }
                    }
                    for (size_t i = 0; i < g_ranges.size(); ++i) {
                        const std::vector<uint8_t> a = pool_bytes(p.g, g_ranges[i].first, g_ranges[i].second);
                        const std::vector<uint8_t> b = pool_bytes(p.c, c_ranges[i].first, c_ranges[i].second);
                        size_t bad = 0;
                        for (size_t x = 0; x < a.size(); ++x)
                            if (a[x] != b[x] && bad++ < 3)
                                ADD_FAILURE() << where << (i ? " aux" : "") << " byte " << x << ": cuda 0x" << std::hex << int(a[x])
                                              << " cpu 0x" << int(b[x]);
                        ASSERT_EQ(bad, 0u) << where;
                        compared += a.size();
                    }
                }
        }
        std::vector<float> kg, vg, kc, vc;
        read_all(p.gpu.h, p.g, ig, layer, int64_t(H) * D, kg, vg);
        read_all(p.cpu.h, p.c, ic, layer, int64_t(H) * D, kc, vc);
        expect_bitwise(kg, kc, what + " read-back K layer " + std::to_string(layer));
        expect_bitwise(vg, vc, what + " read-back V layer " + std::to_string(layer));
    }
    EXPECT_GT(compared, 0u) << what;
}

// The same append on both caches; both must succeed. bf16 (CUDA-only input): the values are made
// bf16-exact first and the CPU cache gets them as f32 (bf16 -> f32 is exact, so both round the same
// values to f16).
void append_both(Pair& p, std::mt19937_64& g, int64_t ig, int64_t ic, int32_t layer, int32_t n, int32_t dtype) {
    const size_t count = size_t(n) * p.d.num_kv_heads * p.d.head_dim;
    auto k = random_rows(g, count, true), v = random_rows(g, count, true);
    if (dtype == LLMN_DTYPE_BF16)
        for (auto* x : {&k, &v})
            for (float& e : *x) e = llmn::bf16_to_f32(llmn::f32_to_bf16(e));
    ASSERT_EQ(append(p.gpu.h, p.g, ig, layer, k, v, n, dtype), LLMN_STATUS_OK) << last_error();
    ASSERT_EQ(append(p.cpu.h, p.c, ic, layer, k, v, n, dtype == LLMN_DTYPE_BF16 ? LLMN_DTYPE_F32 : dtype), LLMN_STATUS_OK)
        << last_error();
}

}  // namespace

TEST(KvCacheCuda, KiviAppendTruncateForkMatchCpuCacheBytes) {
    LLMN_REQUIRE_CUDA();
    auto g = rng(8104);
    struct Case {
        int32_t kf, vf, H, D, bs, group;
    };
    for (Case cs : {Case{LLMN_KV_INT4, LLMN_KV_INT4, 2, 128, 16, 32}, Case{LLMN_KV_INT2, LLMN_KV_INT2, 3, 64, 8, 32},
                    Case{LLMN_KV_INT4, LLMN_KV_F16, 2, 80, 32, 0}, Case{LLMN_KV_F16, LLMN_KV_INT2, 1, 256, 64, 128},
                    Case{LLMN_KV_INT2, LLMN_KV_INT4, 2, 96, 256, 32}, Case{LLMN_KV_INT4, LLMN_KV_INT2, 1, 256, 256, 64},
                    Case{LLMN_KV_INT4, LLMN_KV_INT8, 2, 64, 128, 0}, Case{LLMN_KV_FP8_E4M3, LLMN_KV_INT4, 1, 128, 8, 64}}) {
        const std::string name = std::string(llmn::kv_format_name(cs.kf)) + "/" + llmn::kv_format_name(cs.vf) + " H " +
                                 std::to_string(cs.H) + " D " + std::to_string(cs.D) + " bs " + std::to_string(cs.bs) +
                                 " group " + std::to_string(cs.group);
        SCOPED_TRACE(name);
        Pair p(cs.kf, cs.vf, cs.H, cs.D, cs.bs, 8192, true, cs.group);
        ASSERT_TRUE(p.g && p.c);
        int64_t ig = 0, ic = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(p.g, &ig));
        LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(p.c, &ic));
        const int32_t bs = cs.bs;
        // one token at a time across a block boundary (layer 0), then bulk chunks that start mid-block,
        // fill blocks exactly, cross several (bs 8: > kAppendBlocksPerLaunch = 128 blocks in one call);
        // layer 1 gets the chunks in another order (its residual and lengths differ from layer 0's)
        std::vector<int32_t> chunks = {3, bs - 3, 2 * bs + 5, bs, bs == 8 ? 1100 : 300, 1};
        for (int32_t t = 0; t < bs + 2; ++t) append_both(p, g, ig, ic, 0, 1, t % 2 ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32);
        append_both(p, g, ig, ic, 1, bs + 2, LLMN_DTYPE_F32);
        for (size_t i = 0; i < chunks.size(); ++i) {
            append_both(p, g, ig, ic, 0, chunks[i], i % 2 ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32);
            append_both(p, g, ig, ic, 1, chunks[chunks.size() - 1 - i], i % 2 ? LLMN_DTYPE_F32 : LLMN_DTYPE_F16);
        }
        expect_same_sequence(p, ig, ic, "after appends");

        // fork with a partial residual (every layer's partial block), then different appends to both
        int64_t fg = 0, fc = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(p.g, ig, &fg));
        LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(p.c, ic, &fc));
        expect_same_sequence(p, fg, fc, "fork before appends");
        for (int32_t layer = 0; layer < 2; ++layer) {
            append_both(p, g, ig, ic, layer, bs + 2, LLMN_DTYPE_F32);
            append_both(p, g, fg, fc, layer, 3, LLMN_DTYPE_F16);
            append_both(p, g, fg, fc, layer, bs, LLMN_DTYPE_F32);
        }
        expect_same_sequence(p, ig, ic, "parent after fork");
        expect_same_sequence(p, fg, fc, "child after fork");

        // truncate the parent into a quantized block shared with the child: the kept rows go back to
        // the residual as f16 of their dequantized values; refill (copy-on-write of that block) and more
        int64_t len = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_get_sequence_length(p.g, ig, 0, &len));
        const int64_t cut = (len / bs - 3) * bs + bs / 2 + 1;
        ASSERT_GT(cut, bs);
        LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(p.g, ig, cut));
        LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(p.c, ic, cut));
        expect_same_sequence(p, ig, ic, "after truncate into a quantized block");
        for (int32_t layer = 0; layer < 2; ++layer) {
            append_both(p, g, ig, ic, layer, 7, LLMN_DTYPE_F32);
            append_both(p, g, ig, ic, layer, 2 * bs + 1, LLMN_DTYPE_F16);
            append_both(p, g, ig, ic, layer, bs + 3, LLMN_DTYPE_BF16);
        }
        expect_same_sequence(p, ig, ic, "refilled after truncate");
        expect_same_sequence(p, fg, fc, "child after the parent's truncate");
        // truncate to a block boundary (empty residual), append again
        LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(p.g, fg, 2 * bs));
        LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(p.c, fc, 2 * bs));
        for (int32_t layer = 0; layer < 2; ++layer) append_both(p, g, fg, fc, layer, bs + 1, LLMN_DTYPE_F32);
        expect_same_sequence(p, fg, fc, "child after a block-boundary truncate");

        // rejected appends (NaN in V, f16 overflow in K) that would have filled and quantized a block:
        // same status and message on both backends, both caches unchanged
        int64_t before = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_get_sequence_length(p.g, ig, 0, &before));
        llmn_kv_cache_stats s0{}, s1{};
        LLMN_ASSERT_OK(llmn_kv_cache_get_stats(p.g, &s0));
        for (int bad = 0; bad < 2; ++bad) {
            const int32_t n = 2 * bs;
            const size_t count = size_t(n) * cs.H * cs.D;
            auto k = random_rows(g, count, false), v = random_rows(g, count, false);
            // NaN: last elements of V; overflow: element D + 3 of the first KIVI side (8-bit sides take
            // any finite value), i.e. token (D + 3) / (H D), head ((D + 3) / D) % H, channel 3
            const bool on_k = bad == 0 ? false : llmn::kv_format_is_kivi(cs.kf);
            std::string expect;
            if (bad == 0) {
                v[count - 5] = std::nanf("");
                expect = "is NaN";
            } else {
                (on_k ? k : v)[size_t(cs.D) + 3] = 70000.0f;
                expect = std::string(on_k ? "k" : "v") + "[token " + std::to_string((cs.D + 3) / (cs.H * cs.D)) + ", head " +
                         std::to_string(((cs.D + 3) / cs.D) % cs.H) + ", channel 3] = 70000 overflows the cache's " +
                         llmn::kv_format_name(on_k ? cs.kf : cs.vf) + " storage";
            }
            LLMN_EXPECT_STATUS(append(p.gpu.h, p.g, ig, 0, k, v, n, LLMN_DTYPE_F32), LLMN_STATUS_INVALID_ARGUMENT);
            const std::string gpu_msg = last_error();
            LLMN_EXPECT_STATUS(append(p.cpu.h, p.c, ic, 0, k, v, n, LLMN_DTYPE_F32), LLMN_STATUS_INVALID_ARGUMENT);
            EXPECT_EQ(gpu_msg, last_error());
            EXPECT_NE(gpu_msg.find(expect), std::string::npos) << gpu_msg;
        }
        int64_t after = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_get_sequence_length(p.g, ig, 0, &after));
        EXPECT_EQ(after, before);
        LLMN_ASSERT_OK(llmn_kv_cache_get_stats(p.g, &s1));
        EXPECT_EQ(s1.free_blocks, s0.free_blocks);
        expect_same_sequence(p, ig, ic, "after rejected appends");
        append_both(p, g, ig, ic, 0, bs + 3, LLMN_DTYPE_F16);
        expect_same_sequence(p, ig, ic, "append after rejected appends");
        LLMN_ASSERT_OK(llmn_kv_cache_remove_sequence(p.g, fg));
        LLMN_ASSERT_OK(llmn_kv_cache_remove_sequence(p.c, fc));
    }
}
