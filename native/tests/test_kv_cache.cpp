// Paged KV cache: planner arithmetic, create-time validation, append/read round trips for every
// head_dim and block size, scattered (shuffled) blocks, capacity failures that leave everything
// unchanged, fork sharing with copy-on-write, and a random operation sequence checked against a
// host model after every step. Storage is f16, so the expected read-back is the f16 rounding of
// what was appended, bit for bit (no tolerance needed anywhere in this file).
#include "core/error.hpp"
#include "core/numeric.hpp"
#include "kernels/kv_cache/kv_cache.hpp"
#include "kv_test_util.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

using namespace llmn_test;

namespace {

// Cache descriptor: f16 K and V, max_batch 0 (the default).
llmn_kv_cache_desc make_desc(int32_t layers, int32_t heads, int32_t dim, int32_t bs, int64_t tokens) {
    return kv_desc(layers, heads, dim, bs, LLMN_KV_F16, LLMN_KV_F16, tokens, 0);
}

uint16_t f16(float x) { return llmn::f32_to_f16(x); }

// Host model of one sequence: per layer, the f16 codes of K and V rows [len][H][D].
struct ModelSeq {
    std::vector<std::vector<uint16_t>> k, v;
};

class Cache {
public:
    Cache(llmn_context ctx, const llmn_kv_cache_desc& d) : ctx_(ctx), d_(d) {
        llmn_status s = llmn_kv_cache_create(ctx, &d, &h);
        EXPECT_EQ(s, LLMN_STATUS_OK) << last_error();
    }
    ~Cache() { llmn_kv_cache_destroy(h); }
    llmn::KvCache& internal() { return *llmn::lookup<llmn::KvCache>(h, "cache"); }
    int64_t add() {
        int64_t id = -1;
        EXPECT_EQ(llmn_kv_cache_add_sequence(h, &id), LLMN_STATUS_OK) << last_error();
        return id;
    }
    // Appends f32 values (converted by the cache); returns the status.
    llmn_status append(int64_t id, int32_t layer, const std::vector<float>& k, const std::vector<float>& v, int32_t n,
                       int32_t dtype = LLMN_DTYPE_F32) {
        Buf kb(ctx_, dtype, int64_t(k.size())), vb(ctx_, dtype, int64_t(v.size()));
        if (dtype == LLMN_DTYPE_F32) {
            kb.upload(k);
            vb.upload(v);
        } else {
            std::vector<uint16_t> kh(k.size()), vh(v.size());
            for (size_t i = 0; i < k.size(); ++i) kh[i] = f16(k[i]);
            for (size_t i = 0; i < v.size(); ++i) vh[i] = f16(v[i]);
            kb.upload(kh);
            vb.upload(vh);
        }
        return llmn_kv_cache_append(h, id, layer, kb.h, vb.h, n);
    }
    int64_t length(int64_t id, int32_t layer) {
        int64_t n = -1;
        EXPECT_EQ(llmn_kv_cache_get_sequence_length(h, id, layer, &n), LLMN_STATUS_OK) << last_error();
        return n;
    }
    // Reads the whole layer back as f16 codes (via f32 read-back, exact for f16 storage); also checks
    // that the f16 read path agrees bit for bit.
    void read_codes(int64_t id, int32_t layer, std::vector<uint16_t>& k, std::vector<uint16_t>& v) {
        int64_t n = length(id, layer);
        int64_t cnt = n * d_.num_kv_heads * d_.head_dim;
        Buf kb(ctx_, LLMN_DTYPE_F32, cnt), vb(ctx_, LLMN_DTYPE_F32, cnt);
        Buf kh(ctx_, LLMN_DTYPE_F16, cnt), vh(ctx_, LLMN_DTYPE_F16, cnt);
        ASSERT_EQ(llmn_kv_cache_read(h, id, layer, 0, n, kb.h, vb.h), LLMN_STATUS_OK) << last_error();
        ASSERT_EQ(llmn_kv_cache_read(h, id, layer, 0, n, kh.h, vh.h), LLMN_STATUS_OK) << last_error();
        auto kf = kb.download<float>(cnt), vf = vb.download<float>(cnt);
        auto k16 = kh.download<uint16_t>(cnt), v16 = vh.download<uint16_t>(cnt);
        k.resize(size_t(cnt));
        v.resize(size_t(cnt));
        for (int64_t i = 0; i < cnt; ++i) {
            k[size_t(i)] = f16(kf[size_t(i)]);
            v[size_t(i)] = f16(vf[size_t(i)]);
            ASSERT_EQ(k[size_t(i)], k16[size_t(i)]);
            ASSERT_EQ(v[size_t(i)], v16[size_t(i)]);
        }
    }
    llmn_kv_cache_stats stats() {
        llmn_kv_cache_stats s{};
        EXPECT_EQ(llmn_kv_cache_get_stats(h, &s), LLMN_STATUS_OK);
        return s;
    }
    llmn_kv_cache h = nullptr;

private:
    llmn_context ctx_;
    llmn_kv_cache_desc d_;
};

void expect_matches_model(Cache& c, const std::map<int64_t, ModelSeq>& model, int32_t layers) {
    for (const auto& [id, m] : model) {
        for (int32_t l = 0; l < layers; ++l) {
            std::vector<uint16_t> k, v;
            c.read_codes(id, l, k, v);
            ASSERT_EQ(k, m.k[size_t(l)]) << "sequence " << id << " layer " << l << " K differs from the model";
            ASSERT_EQ(v, m.v[size_t(l)]) << "sequence " << id << " layer " << l << " V differs from the model";
        }
    }
}

// Refcounts equal the number of tables holding each block; free = total - distinct used blocks.
void expect_consistent_refcounts(Cache& c, const std::map<int64_t, ModelSeq>& model) {
    llmn::KvCache& kc = c.internal();
    std::map<int32_t, int32_t> holders;
    for (const auto& entry : model)
        for (int32_t b : kc.sequence(entry.first, "id").blocks) ++holders[b];
    for (const auto& [b, n] : holders) ASSERT_EQ(kc.debug_refcount(b), n) << "block " << b;
    auto st = c.stats();
    ASSERT_EQ(st.free_blocks, st.total_blocks - int64_t(holders.size()));
    ASSERT_EQ(st.num_sequences, int64_t(model.size()));
}

void model_append(ModelSeq& m, int32_t layer, const std::vector<float>& k, const std::vector<float>& v) {
    for (float x : k) m.k[size_t(layer)].push_back(f16(x));
    for (float x : v) m.v[size_t(layer)].push_back(f16(x));
}

}  // namespace

TEST(KvCache, PlannerBytesPerTokenAndBudget) {
    for (int32_t dim : {64, 80, 96, 128, 256}) {
        for (int32_t bs : {8, 16, 32, 64, 128, 256}) {
            llmn_kv_cache_desc d = make_desc(32, 8, dim, bs, 0);
            int64_t bytes = 0;
            LLMN_ASSERT_OK(llmn_kv_cache_bytes_per_token(&d, &bytes));
            EXPECT_EQ(bytes, int64_t(2) * 8 * dim * 2) << "f16 K+V has no padding";  // K and V, 2 bytes each
            int64_t tokens = -1;
            const int64_t block_all_layers = int64_t(32) * bs * bytes;
            LLMN_ASSERT_OK(llmn_kv_cache_tokens_for_budget(&d, 5 * block_all_layers + block_all_layers / 2, &tokens));
            EXPECT_EQ(tokens, 5 * bs) << "whole blocks only";
            LLMN_ASSERT_OK(llmn_kv_cache_tokens_for_budget(&d, block_all_layers - 1, &tokens));
            EXPECT_EQ(tokens, 0);
        }
    }
    // Llama-3-8B: 32 layers x 8 kv heads x 128 dims x (K+V) x 2 bytes = 128 KiB per token over all layers.
    llmn_kv_cache_desc d = make_desc(32, 8, 128, 16, 0);
    int64_t tokens = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_tokens_for_budget(&d, int64_t(1) << 30, &tokens));
    EXPECT_EQ(tokens, 8192);
    d.head_dim = 100;
    int64_t bytes = 0;
    LLMN_EXPECT_STATUS(llmn_kv_cache_bytes_per_token(&d, &bytes), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("head_dim"), std::string::npos) << last_error();
    EXPECT_NE(last_error().find("100"), std::string::npos) << last_error();
    d = make_desc(32, 8, 128, 12, 0);
    LLMN_EXPECT_STATUS(llmn_kv_cache_bytes_per_token(&d, &bytes), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("block_size"), std::string::npos) << last_error();
    d = make_desc(32, 8, 128, 16, 0);
    d.v_format = LLMN_KV_INT4;  // INT8/FP8/INT4/INT2 planner sizes: test_kv_quant.cpp, test_kv_kivi.cpp
    LLMN_EXPECT_STATUS(llmn_kv_cache_bytes_per_token(&d, &bytes), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("value_group_size"), std::string::npos) << last_error();
    d.v_format = LLMN_KV_F16;
    d.k_format = 9;
    LLMN_EXPECT_STATUS(llmn_kv_cache_bytes_per_token(&d, &bytes), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("k_format"), std::string::npos) << last_error();
    d.k_format = LLMN_KV_BF16;  // the planner has no backend: bf16's layout equals f16's
    LLMN_ASSERT_OK(llmn_kv_cache_bytes_per_token(&d, &bytes));
    EXPECT_EQ(bytes, 4096);
    d = make_desc(32, 8, 128, 16, 0);
    LLMN_EXPECT_STATUS(llmn_kv_cache_tokens_for_budget(&d, -1, &tokens), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("budget_bytes"), std::string::npos) << last_error();
    LLMN_EXPECT_STATUS(llmn_kv_cache_bytes_per_token(nullptr, &bytes), LLMN_STATUS_INVALID_ARGUMENT);
}

TEST(KvCache, LayoutSectionsAreAlignedForEveryFormat) {
    // The quantized formats are not creatable yet, but their tile geometry is fixed now.
    for (int32_t kf = LLMN_KV_F16; kf <= LLMN_KV_INT2; ++kf) {
        for (int32_t dim : {64, 80, 96, 128, 256}) {
            for (int32_t bs : {8, 16, 32, 64, 128, 256}) {
                llmn_kv_cache_desc d = make_desc(2, 3, dim, bs, 0);
                d.k_format = d.v_format = kf;
                d.value_group_size = dim % 64 == 0 ? 64 : 32;
                llmn::KvLayout L = llmn::kv_tile_layout(d);
                for (int64_t off : {L.k_data_off, L.k_aux_off, L.v_data_off, L.v_aux_off, L.tile_bytes})
                    EXPECT_EQ(off % 64, 0) << "format " << kf << " dim " << dim << " bs " << bs;
                EXPECT_GE(L.k_aux_off, L.k_data_off + L.k_row_bytes * bs);
                EXPECT_GE(L.v_data_off, L.k_aux_off + llmn::kv_aux_bytes(kf, false, bs, dim, d.value_group_size));
                EXPECT_GE(L.tile_bytes, L.v_aux_off + llmn::kv_aux_bytes(kf, true, bs, dim, d.value_group_size));
                EXPECT_EQ(L.block_stride, L.tile_bytes);
                if (kf == LLMN_KV_F16) EXPECT_EQ(L.tile_bytes, int64_t(2) * bs * dim * 2);
            }
        }
    }
}

// The pool of a created cache is [layer][kv_head][block][tile] (kv_layout.hpp): the tiles of one
// kv head are back to back over the physical block numbers, and all tiles together cover the layer
// slabs exactly once (INT8 included: its tiles have aux sections).
TEST(KvCache, PoolIsHeadMajorAndTilesCoverItOnce) {
    Ctx ctx;
    for (int32_t fmt : {int32_t(LLMN_KV_F16), int32_t(LLMN_KV_INT8)}) {
        llmn_kv_cache_desc d = make_desc(2, 3, 64, 8, 40);
        d.k_format = d.v_format = fmt;
        llmn_kv_cache cache = nullptr;
        LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &cache));
        const llmn::KvLayout& L = llmn::lookup<llmn::KvCache>(cache, "cache")->layout();
        ASSERT_EQ(L.num_blocks, 5);
        std::vector<int64_t> offs;
        for (int32_t l = 0; l < 2; ++l)
            for (int32_t h = 0; h < 3; ++h)
                for (int64_t b = 0; b < L.num_blocks; ++b) {
                    offs.push_back(L.tile_offset(l, b, h));
                    if (b > 0) EXPECT_EQ(offs.back() - L.tile_offset(l, b - 1, h), L.tile_bytes) << "layer " << l << " head " << h;
                }
        std::sort(offs.begin(), offs.end());
        EXPECT_EQ(offs.front(), 0);
        for (size_t i = 1; i < offs.size(); ++i) EXPECT_EQ(offs[i] - offs[i - 1], L.tile_bytes) << "tile " << i;
        EXPECT_EQ(offs.back() + L.tile_bytes, 2 * L.layer_stride);
        EXPECT_EQ(L.res_region_off, 2 * L.layer_stride);
        llmn_kv_cache_stats st{};
        LLMN_ASSERT_OK(llmn_kv_cache_get_stats(cache, &st));
        EXPECT_EQ(st.pool_bytes, 2 * L.layer_stride);
        LLMN_ASSERT_OK(llmn_kv_cache_destroy(cache));
    }
}

TEST(KvCache, CreateValidatesDescription) {
    Ctx ctx;
    int64_t live_before = 0, live_after = 0;
    LLMN_ASSERT_OK(llmn_debug_live_objects(&live_before));
    llmn_kv_cache cache = nullptr;
    llmn_kv_cache_desc d = make_desc(2, 4, 64, 16, 100);
    d.capacity_bytes = 1 << 20;
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("exactly one"), std::string::npos) << last_error();
    d.capacity_tokens = 0;
    d.capacity_bytes = 0;
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    d.capacity_bytes = 100;  // one block of 2 layers is 2*16*4*64*2*2 = 32 KiB
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("capacity_bytes = 100"), std::string::npos) << last_error();
    d = make_desc(2, 4, 64, 16, 100);
    d.v_format = LLMN_KV_BF16;
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_UNSUPPORTED);
    EXPECT_NE(last_error().find("LLMN_KV_BF16"), std::string::npos) << last_error();
    for (int32_t f : {LLMN_KV_INT4, LLMN_KV_INT2}) {  // creatable on CPU (test_kv_kivi.cpp) but values need a group
        d = make_desc(2, 4, 64, 16, 100);
        d.v_format = f;
        LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("value_group_size"), std::string::npos) << last_error();
    }
    d = make_desc(0, 4, 64, 16, 100);
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("num_layers"), std::string::npos) << last_error();
    d = make_desc(2, 4, 64, 16, 100);
    d.max_batch = -3;
    LLMN_EXPECT_STATUS(llmn_kv_cache_create(ctx.h, &d, &cache), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("max_batch"), std::string::npos) << last_error();
    EXPECT_EQ(cache, nullptr);

    // Byte budget: 3.5 blocks -> 3 blocks; the description comes back resolved.
    d = make_desc(2, 4, 64, 16, 0);
    d.capacity_bytes = 3 * 32768 + 16384;
    LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &cache));
    llmn_kv_cache_desc got{};
    LLMN_ASSERT_OK(llmn_kv_cache_get_desc(cache, &got));
    EXPECT_EQ(got.capacity_tokens, 48);
    EXPECT_EQ(got.max_batch, 256);
    llmn_kv_cache_stats st{};
    LLMN_ASSERT_OK(llmn_kv_cache_get_stats(cache, &st));
    EXPECT_EQ(st.total_blocks, 3);
    EXPECT_EQ(st.free_blocks, 3);
    EXPECT_EQ(st.num_sequences, 0);
    EXPECT_EQ(st.pool_bytes, 3 * 32768);
    LLMN_ASSERT_OK(llmn_kv_cache_destroy(cache));
    LLMN_EXPECT_STATUS(llmn_kv_cache_get_stats(cache, &st), LLMN_STATUS_INVALID_HANDLE);
    // Token capacity rounds up to whole blocks.
    d = make_desc(1, 1, 64, 32, 33);
    LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &cache));
    LLMN_ASSERT_OK(llmn_kv_cache_get_stats(cache, &st));
    EXPECT_EQ(st.total_blocks, 2);
    LLMN_ASSERT_OK(llmn_kv_cache_destroy(cache));
    LLMN_ASSERT_OK(llmn_debug_live_objects(&live_after));
    EXPECT_EQ(live_after, live_before);
}

// Every head_dim and every block size, three layers of different lengths, three interleaved
// sequences over a shuffled free list, f32 and f16 inputs, chunked appends crossing blocks.
TEST(KvCache, AppendReadRoundTripEveryShape) {
    Ctx ctx;
    auto g = rng(101);
    const int32_t dims[] = {64, 80, 96, 128, 256, 80};
    const int32_t sizes[] = {8, 16, 32, 64, 128, 256};
    for (int combo = 0; combo < 6; ++combo) {
        const int32_t D = dims[combo], bs = sizes[combo], H = 2, layers = 3;
        SCOPED_TRACE("head_dim " + std::to_string(D) + " block_size " + std::to_string(bs));
        Cache c(ctx.h, make_desc(layers, H, D, bs, 3 * 3 * 300 + 9 * bs));
        c.internal().debug_shuffle_free_list(g());
        std::map<int64_t, ModelSeq> model;
        std::vector<int64_t> ids;
        for (int s = 0; s < 3; ++s) {
            ids.push_back(c.add());
            model[ids.back()].k.resize(layers);
            model[ids.back()].v.resize(layers);
        }
        for (int step = 0; step < 12; ++step) {
            for (int64_t id : ids) {
                for (int32_t l = 0; l < layers; ++l) {
                    int32_t n = int32_t(g() % (2 * bs + 3)) + 1;
                    if (int64_t(model[id].k[size_t(l)].size()) / (H * D) + n > 300 - l * 40) continue;
                    auto k = gaussian(g, size_t(n) * H * D, 3.0f), v = gaussian(g, size_t(n) * H * D, 1.0f);
                    int32_t dtype = (step + l) % 2 ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32;
                    ASSERT_EQ(c.append(id, l, k, v, n, dtype), LLMN_STATUS_OK) << last_error();
                    model_append(model[id], l, k, v);
                }
            }
        }
        expect_matches_model(c, model, layers);
        expect_consistent_refcounts(c, model);
        // Partial read of a middle range crossing block boundaries.
        int64_t id = ids[1];
        int64_t n = c.length(id, 2);
        ASSERT_GT(n, 12);
        int64_t start = std::min<int64_t>(bs / 2 + 1, n / 3), count = n - start - 3;
        Buf kb(ctx.h, LLMN_DTYPE_F32, count * H * D), vb(ctx.h, LLMN_DTYPE_F32, count * H * D);
        LLMN_ASSERT_OK(llmn_kv_cache_read(c.h, id, 2, start, count, kb.h, vb.h));
        auto kf = kb.download<float>(count * H * D);
        for (int64_t i = 0; i < count * H * D; ++i)
            ASSERT_EQ(f16(kf[size_t(i)]), model[id].k[2][size_t(start * H * D + i)]);
        // Blocks are scattered: some table is not a run of consecutive increasing ids. Checked for
        // block sizes <= 64 only: there every sequence spans several blocks, so an unscattered pool has
        // a vanishing probability; with 128/256 a sequence of <= 300 tokens may hold one or two blocks,
        // and a shuffled pool can hand out consecutive ids by chance (seen: seed 141670090).
        bool scattered = false;
        for (int64_t sid : ids) {
            const auto& t = c.internal().sequence(sid, "id").blocks;
            for (size_t j = 1; j < t.size(); ++j) scattered |= t[j] != t[j - 1] + 1;
        }
        if (bs <= 64) EXPECT_TRUE(scattered);
    }
}

TEST(KvCache, CapacityExceededLeavesEverythingUnchanged) {
    Ctx ctx;
    auto g = rng(202);
    const int32_t H = 2, D = 64, bs = 8;
    Cache c(ctx.h, make_desc(2, H, D, bs, 4 * bs));
    std::map<int64_t, ModelSeq> model;
    int64_t a = c.add(), b = c.add();
    for (int64_t id : {a, b}) {
        model[id].k.resize(2);
        model[id].v.resize(2);
    }
    auto fill = [&](int64_t id, int32_t l, int32_t n) {
        auto k = gaussian(g, size_t(n) * H * D, 1.0f), v = gaussian(g, size_t(n) * H * D, 1.0f);
        ASSERT_EQ(c.append(id, l, k, v, n), LLMN_STATUS_OK) << last_error();
        model_append(model[id], l, k, v);
    };
    fill(a, 0, 20);  // 3 blocks
    fill(a, 1, 17);
    fill(b, 0, 8);  // 1 block: the cache is now full
    auto before = c.stats();
    EXPECT_EQ(before.free_blocks, 0);
    auto k = gaussian(g, size_t(9) * H * D, 1.0f), v = gaussian(g, size_t(9) * H * D, 1.0f);
    LLMN_EXPECT_STATUS(c.append(b, 0, k, v, 1), LLMN_STATUS_CAPACITY_EXCEEDED);  // needs a second block
    std::string msg = last_error();
    EXPECT_NE(msg.find("full"), std::string::npos) << msg;
    EXPECT_NE(msg.find("sequence " + std::to_string(b)), std::string::npos) << msg;
    LLMN_EXPECT_STATUS(c.append(a, 0, k, v, 9), LLMN_STATUS_CAPACITY_EXCEEDED);  // 4 fit, 5 would not
    LLMN_EXPECT_STATUS(c.append(a, 1, k, v, 9), LLMN_STATUS_CAPACITY_EXCEEDED);
    auto after = c.stats();
    EXPECT_EQ(after.free_blocks, before.free_blocks);
    EXPECT_EQ(c.length(a, 0), 20);
    EXPECT_EQ(c.length(a, 1), 17);
    EXPECT_EQ(c.length(b, 0), 8);
    expect_matches_model(c, model, 2);
    // What does fit still works: 4 more tokens in a's last block, 7 more in layer 1.
    fill(a, 0, 4);
    fill(a, 1, 7);
    // Fork copies partial blocks: a is full in both layers now (24 tokens = 3 blocks), b (8, 0) has one
    // partial block (layer 1 is empty) and no free block is left for it.
    int64_t f = -1;
    LLMN_EXPECT_STATUS(llmn_kv_cache_fork_sequence(c.h, b, &f), LLMN_STATUS_CAPACITY_EXCEEDED);
    EXPECT_NE(last_error().find("fork"), std::string::npos) << last_error();
    LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(c.h, a, &f));  // all shared, nothing copied
    model[f] = model[a];
    EXPECT_EQ(c.stats().free_blocks, 0);
    expect_matches_model(c, model, 2);
    expect_consistent_refcounts(c, model);
    // Truncating the fork makes a shared block partial: a write into it needs a copy and fails.
    LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(c.h, f, 10));
    for (auto& lane : {&model[f].k, &model[f].v})
        for (auto& layer : *lane) layer.resize(size_t(10) * H * D);
    LLMN_EXPECT_STATUS(c.append(f, 0, k, v, 1), LLMN_STATUS_CAPACITY_EXCEEDED);
    EXPECT_NE(last_error().find("copy-on-write"), std::string::npos) << last_error();
    expect_matches_model(c, model, 2);
    expect_consistent_refcounts(c, model);
}

TEST(KvCache, RejectsNonFiniteValuesWithoutWriting) {
    Ctx ctx;
    auto g = rng(303);
    const int32_t H = 2, D = 64;
    Cache c(ctx.h, make_desc(1, H, D, 16, 64));
    int64_t id = c.add();
    std::map<int64_t, ModelSeq> model;
    model[id].k.resize(1);
    model[id].v.resize(1);
    auto k = gaussian(g, size_t(3) * H * D, 1.0f), v = gaussian(g, size_t(3) * H * D, 1.0f);
    ASSERT_EQ(c.append(id, 0, k, v, 3), LLMN_STATUS_OK);
    model_append(model[id], 0, k, v);
    auto k2 = gaussian(g, size_t(4) * H * D, 1.0f), v2 = gaussian(g, size_t(4) * H * D, 1.0f);
    auto bad = k2;
    bad[size_t((1 * H + 1) * D + 5)] = std::nanf("");
    LLMN_EXPECT_STATUS(c.append(id, 0, bad, v2, 4), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("k[token 1, head 1, channel 5] is NaN"), std::string::npos) << last_error();
    bad = v2;
    bad[size_t(3 * H * D)] = -INFINITY;
    LLMN_EXPECT_STATUS(c.append(id, 0, k2, bad, 4), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("v[token 3, head 0, channel 0] is -Inf"), std::string::npos) << last_error();
    bad = v2;
    bad[7] = 1.0e6f;  // finite in f32, overflows f16
    LLMN_EXPECT_STATUS(c.append(id, 0, k2, bad, 4), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("overflows"), std::string::npos) << last_error();
    bad = k2;
    bad[9] = INFINITY;
    LLMN_EXPECT_STATUS(c.append(id, 0, bad, v2, 4, LLMN_DTYPE_F16), LLMN_STATUS_INVALID_ARGUMENT);
    bad[9] = 65504.0f;  // the largest f16 is fine
    ASSERT_EQ(c.append(id, 0, bad, v2, 4), LLMN_STATUS_OK) << last_error();
    model_append(model[id], 0, bad, v2);
    expect_matches_model(c, model, 1);
}

TEST(KvCache, ForkSharesFullBlocksAndCopiesOnWrite) {
    Ctx ctx;
    auto g = rng(404);
    const int32_t H = 1, D = 64, bs = 8, layers = 2;
    Cache c(ctx.h, make_desc(layers, H, D, bs, 40 * bs));
    c.internal().debug_shuffle_free_list(g());
    std::map<int64_t, ModelSeq> model;
    auto add = [&] {
        int64_t id = c.add();
        model[id].k.resize(layers);
        model[id].v.resize(layers);
        return id;
    };
    auto fill = [&](int64_t id, int32_t l, int32_t n) {
        auto k = gaussian(g, size_t(n) * H * D, 1.0f), v = gaussian(g, size_t(n) * H * D, 1.0f);
        ASSERT_EQ(c.append(id, l, k, v, n), LLMN_STATUS_OK) << last_error();
        model_append(model[id], l, k, v);
    };
    int64_t a = add();
    fill(a, 0, 20);
    fill(a, 1, 17);  // blocks 0,1 full in both layers, block 2 partial
    const auto free0 = c.stats().free_blocks;
    int64_t b = -1;
    LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(c.h, a, &b));
    model[b] = model[a];
    EXPECT_EQ(c.stats().free_blocks, free0 - 1) << "only the partial block is copied";
    const auto ta = c.internal().sequence(a, "a").blocks, tb = c.internal().sequence(b, "b").blocks;
    ASSERT_EQ(ta.size(), 3u);
    ASSERT_EQ(tb.size(), 3u);
    EXPECT_EQ(ta[0], tb[0]);
    EXPECT_EQ(ta[1], tb[1]);
    EXPECT_NE(ta[2], tb[2]);
    EXPECT_EQ(c.internal().debug_refcount(ta[0]), 2);
    EXPECT_EQ(c.internal().debug_refcount(ta[2]), 1);
    expect_matches_model(c, model, layers);
    // Diverge: each side appends its own tokens into its own partial block.
    fill(a, 0, 3);
    fill(b, 0, 4);
    fill(b, 1, 9);
    expect_matches_model(c, model, layers);
    // Truncate b into the shared block 1, then write: b gets a private copy, a is untouched.
    LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(c.h, b, 11));
    for (auto& lane : {&model[b].k, &model[b].v})
        for (auto& layer : *lane) layer.resize(size_t(11) * H * D);
    EXPECT_EQ(c.internal().sequence(b, "b").blocks.size(), 2u);
    EXPECT_EQ(c.internal().debug_refcount(ta[1]), 2);
    uint64_t version = c.internal().tables_version();
    fill(b, 1, 2);
    EXPECT_NE(c.internal().tables_version(), version) << "copy-on-write changes b's table";
    EXPECT_NE(c.internal().sequence(b, "b").blocks[1], ta[1]);
    EXPECT_EQ(c.internal().debug_refcount(ta[1]), 1);
    EXPECT_EQ(c.internal().sequence(b, "b").blocks[0], ta[0]) << "block 0 is still shared";
    expect_matches_model(c, model, layers);
    expect_consistent_refcounts(c, model);
    // Fork of a fork, then remove the middle one: the survivors keep their data.
    int64_t d = -1;
    LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(c.h, b, &d));
    model[d] = model[b];
    LLMN_ASSERT_OK(llmn_kv_cache_remove_sequence(c.h, b));
    model.erase(b);
    expect_matches_model(c, model, layers);
    expect_consistent_refcounts(c, model);
    // Truncate to 0 keeps the sequence, frees its blocks.
    LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(c.h, d, 0));
    for (auto& lane : {&model[d].k, &model[d].v})
        for (auto& layer : *lane) layer.clear();
    expect_matches_model(c, model, layers);
    expect_consistent_refcounts(c, model);
    fill(d, 1, 5);
    expect_matches_model(c, model, layers);
}

// Random add/append/fork/truncate/remove over a small cache (so capacity failures happen), with the
// free list reshuffled now and then; after every step data, lengths, refcounts and stats must match
// the model, and a failed step must have changed nothing.
TEST(KvCache, RandomOperationsMatchModel) {
    Ctx ctx;
    auto g = rng(505);
    const int32_t H = 2, D = 64, bs = 8, layers = 2;
    const int steps = std::getenv("LLMNATIVE_TEST_QUICK") ? 150 : 600;
    Cache c(ctx.h, make_desc(layers, H, D, bs, 24 * bs));
    std::map<int64_t, ModelSeq> model;
    std::set<int64_t> ever;
    int failures = 0;
    for (int step = 0; step < steps; ++step) {
        if (step % 37 == 0) c.internal().debug_shuffle_free_list(g());
        int op = int(g() % 10);
        std::vector<int64_t> ids;
        for (auto& e : model) ids.push_back(e.first);
        int64_t id = ids.empty() ? -1 : ids[g() % ids.size()];
        auto before = c.stats();
        if (op == 0 || ids.empty()) {
            int64_t nid = c.add();
            ASSERT_TRUE(ever.insert(nid).second) << "sequence ids are never reused";
            model[nid].k.resize(layers);
            model[nid].v.resize(layers);
        } else if (op <= 5) {
            int32_t l = int32_t(g() % layers);
            int32_t n = int32_t(g() % (2 * bs)) + 1;
            auto k = gaussian(g, size_t(n) * H * D, 1.0f), v = gaussian(g, size_t(n) * H * D, 1.0f);
            int64_t old_len = int64_t(model[id].k[size_t(l)].size()) / (H * D);
            int64_t touched = (old_len + n + bs - 1) / bs - old_len / bs;  // upper bound on blocks needed
            llmn_status s = c.append(id, l, k, v, n);
            if (s == LLMN_STATUS_OK) {
                model_append(model[id], l, k, v);
            } else {
                ASSERT_EQ(s, LLMN_STATUS_CAPACITY_EXCEEDED) << last_error();
                ASSERT_LT(before.free_blocks, touched) << "failed although enough blocks were free";
                ++failures;
            }
        } else if (op == 6) {
            int64_t nid = -1;
            llmn_status s = llmn_kv_cache_fork_sequence(c.h, id, &nid);
            if (s == LLMN_STATUS_OK) {
                ASSERT_TRUE(ever.insert(nid).second);
                model[nid] = model[id];
            } else {
                ASSERT_EQ(s, LLMN_STATUS_CAPACITY_EXCEEDED) << last_error();
                ++failures;
            }
        } else if (op <= 8) {
            int64_t len = int64_t(g() % 40);
            LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(c.h, id, len));
            for (auto* lane : {&model[id].k, &model[id].v})
                for (auto& layer : *lane) layer.resize(std::min(layer.size(), size_t(len) * H * D));
        } else {
            LLMN_ASSERT_OK(llmn_kv_cache_remove_sequence(c.h, id));
            model.erase(id);
        }
        for (const auto& [sid, m] : model)
            for (int32_t l = 0; l < layers; ++l)
                ASSERT_EQ(c.length(sid, l), int64_t(m.k[size_t(l)].size()) / (H * D));
        expect_consistent_refcounts(c, model);
        if (step % 10 == 0 || step == steps - 1) expect_matches_model(c, model, layers);
        if (HasFatalFailure()) return;
    }
    // Short (quick-mode) random walks do not always reach capacity: end by filling the cache on purpose,
    // so the capacity path is covered for every seed, and check the failed append changed nothing.
    if (failures == 0) {
        int64_t fid = c.add();
        model[fid].k.resize(layers);
        model[fid].v.resize(layers);
        for (int i = 0; i < 4 * 24 && failures == 0; ++i) {
            auto k = gaussian(g, size_t(bs) * H * D, 1.0f), v = gaussian(g, size_t(bs) * H * D, 1.0f);
            llmn_status s = c.append(fid, 0, k, v, bs);
            if (s == LLMN_STATUS_OK) {
                model_append(model[fid], 0, k, v);
            } else {
                ASSERT_EQ(s, LLMN_STATUS_CAPACITY_EXCEEDED) << last_error();
                ++failures;
            }
        }
        expect_matches_model(c, model, layers);
        expect_consistent_refcounts(c, model);
    }
    EXPECT_GT(failures, 0) << "the cache should have filled up at least once";
}

TEST(KvCache, ErrorsNameParameterAndValueAndChangeNothing) {
    Ctx ctx;
    auto g = rng(606);
    const int32_t H = 2, D = 64;
    Cache c(ctx.h, make_desc(2, H, D, 16, 64));
    int64_t id = c.add();
    auto k = gaussian(g, size_t(5) * H * D, 1.0f), v = gaussian(g, size_t(5) * H * D, 1.0f);
    ASSERT_EQ(c.append(id, 0, k, v, 5), LLMN_STATUS_OK);
    std::map<int64_t, ModelSeq> model;
    model[id].k.resize(2);
    model[id].v.resize(2);
    model_append(model[id], 0, k, v);

    const int64_t unknown = id + 1000;
    LLMN_EXPECT_STATUS(c.append(unknown, 0, k, v, 5), LLMN_STATUS_NOT_FOUND);
    EXPECT_NE(last_error().find("sequence_id = " + std::to_string(unknown)), std::string::npos) << last_error();
    int64_t n = 0, f = 0;
    LLMN_EXPECT_STATUS(llmn_kv_cache_get_sequence_length(c.h, unknown, 0, &n), LLMN_STATUS_NOT_FOUND);
    LLMN_EXPECT_STATUS(llmn_kv_cache_truncate_sequence(c.h, unknown, 0), LLMN_STATUS_NOT_FOUND);
    LLMN_EXPECT_STATUS(llmn_kv_cache_remove_sequence(c.h, unknown), LLMN_STATUS_NOT_FOUND);
    LLMN_EXPECT_STATUS(llmn_kv_cache_fork_sequence(c.h, unknown, &f), LLMN_STATUS_NOT_FOUND);
    EXPECT_NE(last_error().find("source_id"), std::string::npos) << last_error();

    LLMN_EXPECT_STATUS(c.append(id, 2, k, v, 5), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("layer must be in [0, 2)"), std::string::npos) << last_error();
    EXPECT_NE(last_error().find("got 2"), std::string::npos) << last_error();
    LLMN_EXPECT_STATUS(c.append(id, -1, k, v, 5), LLMN_STATUS_INVALID_ARGUMENT);
    LLMN_EXPECT_STATUS(llmn_kv_cache_get_sequence_length(c.h, id, 7, &n), LLMN_STATUS_INVALID_ARGUMENT);
    LLMN_EXPECT_STATUS(c.append(id, 0, k, v, 6), LLMN_STATUS_INVALID_ARGUMENT);  // buffers hold 5 tokens
    EXPECT_NE(last_error().find("k holds"), std::string::npos) << last_error();
    EXPECT_NE(last_error().find("num_tokens=6"), std::string::npos) << last_error();
    LLMN_EXPECT_STATUS(c.append(id, 0, k, v, 0), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("num_tokens"), std::string::npos) << last_error();
    LLMN_EXPECT_STATUS(llmn_kv_cache_truncate_sequence(c.h, id, -2), LLMN_STATUS_INVALID_ARGUMENT);
    {
        Buf ki(ctx.h, LLMN_DTYPE_I32, 5 * H * D), vf(ctx.h, LLMN_DTYPE_F32, 5 * H * D);
        LLMN_EXPECT_STATUS(llmn_kv_cache_append(c.h, id, 0, ki.h, vf.h, 5), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("k has dtype i32"), std::string::npos) << last_error();
        LLMN_EXPECT_STATUS(llmn_kv_cache_read(c.h, id, 0, 0, 5, vf.h, ki.h), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("v has dtype i32"), std::string::npos) << last_error();
        LLMN_EXPECT_STATUS(llmn_kv_cache_read(c.h, id, 0, 3, 3, vf.h, vf.h), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("outside sequence"), std::string::npos) << last_error();
        LLMN_EXPECT_STATUS(llmn_kv_cache_read(c.h, id, 1, 0, 1, vf.h, vf.h), LLMN_STATUS_INVALID_ARGUMENT);
        LLMN_EXPECT_STATUS(llmn_kv_cache_read(c.h, id, 0, -1, 1, vf.h, vf.h), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("start"), std::string::npos) << last_error();
        LLMN_ASSERT_OK(llmn_kv_cache_read(c.h, id, 0, 5, 0, vf.h, vf.h));  // empty range at the end is fine
        llmn_buffer dead = nullptr;
        LLMN_ASSERT_OK(llmn_buffer_create(ctx.h, LLMN_DTYPE_F32, 5 * H * D, LLMN_MEMORY_DEVICE, &dead));
        LLMN_ASSERT_OK(llmn_buffer_destroy(dead));
        LLMN_EXPECT_STATUS(llmn_kv_cache_append(c.h, id, 0, dead, vf.h, 5), LLMN_STATUS_INVALID_HANDLE);
        LLMN_EXPECT_STATUS(llmn_kv_cache_append(c.h, id, 0, vf.h, nullptr, 5), LLMN_STATUS_INVALID_HANDLE);
    }
    LLMN_EXPECT_STATUS(llmn_kv_cache_append(nullptr, id, 0, nullptr, nullptr, 5), LLMN_STATUS_INVALID_HANDLE);
    {
        // Buffers of another context on the same device are accepted (only the device must match;
        // a CUDA buffer given to a CPU cache fails the same check, which needs a GPU to exercise).
        Ctx other;
        Buf kb(other.h, LLMN_DTYPE_F32, 2 * H * D), vb(other.h, LLMN_DTYPE_F32, 2 * H * D);
        auto k2 = gaussian(g, size_t(2) * H * D, 1.0f), v2 = gaussian(g, size_t(2) * H * D, 1.0f);
        kb.upload(k2);
        vb.upload(v2);
        LLMN_ASSERT_OK(llmn_kv_cache_append(c.h, id, 1, kb.h, vb.h, 2));
        model_append(model[id], 1, k2, v2);
    }
    // Removed ids stay dead; new ids are fresh.
    int64_t tmp = c.add();
    LLMN_ASSERT_OK(llmn_kv_cache_remove_sequence(c.h, tmp));
    LLMN_EXPECT_STATUS(llmn_kv_cache_remove_sequence(c.h, tmp), LLMN_STATUS_NOT_FOUND);
    EXPECT_GT(c.add(), tmp);
    EXPECT_EQ(c.length(id, 0), 5);
    EXPECT_EQ(c.length(id, 1), 2);
    expect_matches_model(c, model, 2);
}
