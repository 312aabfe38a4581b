// Decode attention over the paged KV cache against a float64 softmax-attention reference computed
// from the K/V the cache hands back (f16 storage is part of the cache semantics, so the reference
// sees exactly the f16-rounded values the kernel reads). Blocks are scattered (shuffled free list,
// interleaved appends, a second layer written in between). Outputs are poisoned with NaN first.
//
// ERROR BOUND (per output row = one (sequence, query, q head); u = 2^-24, f32 unit roundoff;
// eps_exp = 2^-21 covers libm expf (<= 1 ulp) and the AVX2 polynomial exp (~1.5e-7 relative);
// Vmax = max |v| over the row's visible keys; N = visible keys; T = tiles of 64 keys + splits):
//  1. score s_t = fl(fl(scale*q) . k_t): the pre-scaling rounds each term once more than a plain
//     dot product, and any summation order (sequential, or 8 lanes + tree) is within gamma_{D}:
//         |ds_t| <= (D + 2) u A_t,   A_t = |scale| sum_d |q_d k_td|.
//     soft-cap c*tanh(s/c) is 1-Lipschitz; its evaluation (libm tanh, or (1-e)/(1+e) with
//     e = exp(-2|y|)) adds at most c (eps_exp + 4u) + 2u A_t.  ALiBi adds 2u(|bias| + A_t).
//  2. weights w_t = exp(s_t - m): a common error in m cancels after normalisation; per weight the
//     relative error is |ds_t| + eps_exp + 2u Smax (rounding of s_t - m_running, |.| <= 2 Smax).
//     A relative perturbation eta_t of normalised weights moves o by at most 2 max_t eta_t Vmax.
//     Online rescaling multiplies acc and l by the SAME rounded alpha, which cancels except for
//     one rounding each per tile.
//  3. accumulation acc = sum_t w_t v_t and l = sum_t w_t in f32 over N terms plus T rescales:
//     (N + T + 2) u Vmax each, plus u for the final division: 2 (N + T + 4) u Vmax.
//  4. split merge: lse_s = m_s + ln l_s rounds by u(|m_s| + ln N + 1) plus ln's 1 ulp, then
//     exp (eps_exp), w_s / sum (2u), and the n-term mixing sum (n u):
//         2 (2u (Smax + ln N + 2) + eps_exp + (n + 2) u) Vmax + n u Vmax.
//  5. f16 output: + 2^-11 |o|.
// The bound is first order, so it is multiplied by 1.25 and gets 8 u Vmax of slack. The same
// derivation without term 1 bounds |split - nosplit| (scores are bitwise identical across splits:
// same code per key, splits on block boundaries) -- see SplitMatchesNoSplitWithinRounding.
#include "core/error.hpp"
#include "core/numeric.hpp"
#include "kernels/decode_attention/decode_attention.hpp"
#include "kernels/kv_cache/kv_cache.hpp"
#include "attention_reference.hpp"
#include "kv_test_util.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <functional>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using namespace llmn_test;

namespace {

struct Problem {
    int32_t H = 2, D = 64, bs = 16, G = 2, q_len = 1;
    int32_t layers = 2, layer = 1;  // attention reads layer 1; layer 0 gets different data
    std::vector<int64_t> lengths;
    bool outliers = false;
};

struct Reference {
    std::vector<double> o;      // [batch, q_len, Hq, D]
    std::vector<double> bound;  // [batch, q_len, Hq] absolute bound for every element of the row
    std::vector<double> split_bound;  // [batch, q_len, Hq] bound on |split - nosplit|
};

class Attn {
public:
    Attn(llmn_context ctx, const Problem& pb, std::mt19937_64& g) : ctx_(ctx), pb_(pb) {
        int64_t total = 0;
        for (int64_t l : pb.lengths) total += (l + pb.bs - 1) / pb.bs * pb.bs + pb.bs;
        llmn_kv_cache_desc d{};
        d.num_layers = pb.layers;
        d.num_kv_heads = pb.H;
        d.head_dim = pb.D;
        d.block_size = pb.bs;
        d.k_format = d.v_format = LLMN_KV_F16;
        d.max_batch = 64;
        d.capacity_tokens = total + 8 * pb.bs;
        EXPECT_EQ(llmn_kv_cache_create(ctx, &d, &cache), LLMN_STATUS_OK) << last_error();
        llmn::lookup<llmn::KvCache>(cache, "cache")->debug_shuffle_free_list(g());
        for (size_t b = 0; b < pb.lengths.size(); ++b) {
            int64_t id = 0;
            EXPECT_EQ(llmn_kv_cache_add_sequence(cache, &id), LLMN_STATUS_OK);
            ids.push_back(id);
        }
        // Interleaved appends of random chunk sizes, both layers, so blocks of a sequence are scattered.
        std::vector<int64_t> done(pb.lengths.size(), 0);
        for (bool more = true; more;) {
            more = false;
            for (size_t b = 0; b < pb.lengths.size(); ++b) {
                int64_t left = pb.lengths[b] - done[b];
                if (left <= 0) continue;
                int32_t n = int32_t(std::min<int64_t>(left, 1 + int64_t(g() % (pb.lengths[b] > 1000 ? 700 : 2 * pb.bs))));
                for (int32_t layer = 0; layer < pb.layers; ++layer) append_random(g, b, layer, done[b], n);
                done[b] += n;
                more = true;
            }
        }
        refresh();
    }
    ~Attn() { llmn_kv_cache_destroy(cache); }
    Attn(const Attn&) = delete;
    Attn& operator=(const Attn&) = delete;

    // Re-reads lengths and K/V (what the cache stores, f16-rounded) of `ids` for the reference.
    void refresh() {
        pb_.lengths.clear();
        kf.clear();
        vf.clear();
        for (int64_t id : ids) {
            int64_t n = 0;
            EXPECT_EQ(llmn_kv_cache_get_sequence_length(cache, id, pb_.layer, &n), LLMN_STATUS_OK) << last_error();
            pb_.lengths.push_back(n);
            const int64_t cnt = n * pb_.H * pb_.D;
            Buf kb(ctx_, LLMN_DTYPE_F32, cnt), vb(ctx_, LLMN_DTYPE_F32, cnt);
            EXPECT_EQ(llmn_kv_cache_read(cache, id, pb_.layer, 0, n, kb.h, vb.h), LLMN_STATUS_OK) << last_error();
            kf.emplace_back(static_cast<size_t>(cnt));
            vf.emplace_back(static_cast<size_t>(cnt));
            llmn_buffer_download(kb.h, 0, kf.back().data(), cnt);
            llmn_buffer_download(vb.h, 0, vf.back().data(), cnt);
        }
    }
    const std::vector<int64_t>& lengths() const { return pb_.lengths; }

    int32_t Hq() const { return pb_.H * pb_.G; }
    int64_t q_count() const { return int64_t(ids.size()) * pb_.q_len * Hq() * pb_.D; }

    // Random queries, already rounded to f16 when the run uses f16 inputs.
    std::vector<float> make_q(std::mt19937_64& g, bool f16) const {
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> q(static_cast<size_t>(q_count()));
        for (auto& x : q) x = f16 ? f16r(nd(g)) : nd(g);
        return q;
    }

    // Runs attention; returns the status, outputs in `out` (as f32). Out is NaN-poisoned first.
    llmn_status run(const std::vector<float>& q, bool f16, const llmn_attention_params& p, const std::vector<float>* slopes,
                    std::vector<float>& out) {
        const int32_t dt = f16 ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32;
        Buf qb(ctx_, dt, q_count()), ob(ctx_, dt, q_count());
        if (f16) {
            std::vector<uint16_t> qh(q.size());
            for (size_t i = 0; i < q.size(); ++i) qh[i] = llmn::f32_to_f16(q[i]);
            llmn_buffer_upload(qb.h, 0, qh.data(), int64_t(qh.size()));
            uint16_t nan16 = 0x7e00;
            llmn_buffer_fill(ob.h, 0, q_count(), &nan16);
        } else {
            llmn_buffer_upload(qb.h, 0, q.data(), int64_t(q.size()));
            float nan32 = std::nanf("");
            llmn_buffer_fill(ob.h, 0, q_count(), &nan32);
        }
        llmn_buffer sb = nullptr;
        if (slopes) {
            llmn_buffer_create(ctx_, LLMN_DTYPE_F32, int64_t(slopes->size()), LLMN_MEMORY_DEVICE, &sb);
            llmn_buffer_upload(sb, 0, slopes->data(), int64_t(slopes->size()));
        }
        llmn_status s = llmn_decode_attention(ctx_, cache, ids.data(), int32_t(ids.size()), qb.h, sb, ob.h, &p);
        std::string msg = last_error();
        if (sb) llmn_buffer_destroy(sb);
        out.assign(size_t(q_count()), 0.0f);
        if (f16) {
            std::vector<uint16_t> oh(out.size());
            llmn_buffer_download(ob.h, 0, oh.data(), int64_t(oh.size()));
            for (size_t i = 0; i < oh.size(); ++i) out[i] = llmn::f16_to_f32(oh[i]);
        } else {
            llmn_buffer_download(ob.h, 0, out.data(), int64_t(out.size()));
        }
        llmn::set_last_error(msg);
        return s;
    }

    Reference reference(const std::vector<float>& q, bool f16_out, const llmn_attention_params& p,
                        const std::vector<float>* slopes, int32_t max_splits) const {
        const int32_t H = pb_.H, D = pb_.D, G = pb_.G, Q = pb_.q_len, Hq = H * G;
        Reference ref;
        ref.o.assign(size_t(q_count()), 0.0);
        ref.bound.assign(size_t(q_count() / D), 0.0);
        ref.split_bound.assign(size_t(q_count() / D), 0.0);
        for (size_t b = 0; b < ids.size(); ++b) {
            const int64_t L = pb_.lengths[b];
            for (int32_t i = 0; i < Q; ++i) {
                const int64_t pos = L - Q + i;
                const int64_t lo = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
                const int64_t N = pos - lo + 1;
                for (int32_t hq = 0; hq < Hq; ++hq) {
                    const int32_t h = hq / G;
                    const float* qr = &q[size_t(((int64_t(b) * Q + i) * Hq + hq) * D)];
                    const AttentionRow r = attention_row_f64(qr, kf[b].data(), vf[b].data(), H, h, D, lo, pos, p.scale,
                                                             p.softcap, slopes ? &(*slopes)[size_t(hq)] : nullptr);
                    const double sabs = r.sabs, dmax = r.dmax, vmax = r.vmax, omax = r.omax;
                    const size_t row = size_t((int64_t(b) * Q + i) * Hq + hq);
                    std::copy(r.o.begin(), r.o.end(), ref.o.begin() + ptrdiff_t(row * D));
                    const double n = max_splits;
                    const double T = double(N) / 64.0 + n + 2.0;
                    const double weights = 2 * (dmax + kEpsExp + 2 * kU * sabs);
                    const double accum = 2 * (N + T + 4) * kU;
                    const double merge = 2 * (2 * kU * (sabs + std::log(double(N)) + 2) + kEpsExp + (n + 2) * kU) + n * kU;
                    const double out_round = f16_out ? omax / 2048.0 : 0.0;
                    ref.bound[row] = 1.25 * vmax * (weights + accum + merge) + 8 * kU * vmax + out_round;
                    // split vs no-split: identical scores; exp and argument rounding of the two runs'
                    // different running maxima, both accumulations, the merge.
                    ref.split_bound[row] =
                        1.25 * vmax * (2 * (2 * kEpsExp + 4 * kU * sabs) + 2 * accum + merge) + 8 * kU * vmax + 2 * out_round;
                }
            }
        }
        return ref;
    }

    // Checks out against ref within the bound; reports the worst ratio error / bound.
    static void expect_close(const std::vector<float>& out, const Reference& ref, int32_t D, const std::string& what) {
        expect_within_bound(out, ref.o, ref.bound, D, what);
    }

    llmn_kv_cache cache = nullptr;
    std::vector<int64_t> ids;
    std::vector<std::vector<float>> kf, vf;  // read back, [len][H][D] per sequence (layer pb.layer)

private:
    void append_random(std::mt19937_64& g, size_t b, int32_t layer, int64_t start, int32_t n) {
        std::vector<float> k, v;
        random_kv_tokens(g, pb_.H, pb_.D, n, pb_.outliers, pb_.lengths[b], pb_.q_len, start, k, v);
        Buf kb(ctx_, LLMN_DTYPE_F32, int64_t(k.size())), vb(ctx_, LLMN_DTYPE_F32, int64_t(v.size()));
        llmn_buffer_upload(kb.h, 0, k.data(), int64_t(k.size()));
        llmn_buffer_upload(vb.h, 0, v.data(), int64_t(v.size()));
        ASSERT_EQ(llmn_kv_cache_append(cache, ids[b], layer, kb.h, vb.h, n), LLMN_STATUS_OK) << last_error();
    }

    llmn_context ctx_;
    Problem pb_;
};

llmn_attention_params params_for(const Problem& pb, int32_t splits = 0) {
    llmn_attention_params p{};
    p.layer = pb.layer;
    p.num_q_heads = pb.H * pb.G;
    p.q_len = pb.q_len;
    p.num_splits = splits;
    p.scale = 1.0f / std::sqrt(float(pb.D));
    return p;
}

// Runs one problem on every ISA and the given split settings, checking each against the reference.
void check_problem(llmn_context ctx, const Problem& pb, std::mt19937_64& g, const std::string& name,
                   const std::vector<int32_t>& split_settings = {0}, bool f16 = false,
                   const llmn_attention_params* custom = nullptr, const std::vector<float>* slopes = nullptr) {
    CpuStateGuard cpu_guard;
    Attn a(ctx, pb, g);
    if (::testing::Test::HasFatalFailure()) return;
    auto q = a.make_q(g, f16);
    for (int32_t isa : isas_to_test()) {
        ASSERT_EQ(llmn_set_cpu_isa(isa), LLMN_STATUS_OK);
        for (int32_t splits : split_settings) {
            llmn_attention_params p = custom ? *custom : params_for(pb);
            p.num_splits = splits;
            std::vector<float> out;
            ASSERT_EQ(a.run(q, f16, p, slopes, out), LLMN_STATUS_OK) << last_error();
            Reference ref = a.reference(q, f16, p, slopes, splits == 0 ? 64 : splits);
            Attn::expect_close(out, ref, pb.D,
                               name + " [" + isa_name(isa) + ", splits " + (splits ? std::to_string(splits) : "auto") + "]");
        }
    }
}

}  // namespace

TEST(DecodeAttention, MergeHandlesEmptyPartialsWithoutNaN) {
    const float inf = INFINITY;
    float a[4] = {1.0f, -2.0f, 3.5f, 0.25f}, b[4] = {0, 0, 0, 0}, out[4];
    const float* parts[2] = {a, b};
    float lse1[2] = {0.7f, -inf};  // the second split saw no key of this row
    llmn::merge_partials(2, lse1, parts, 4, out);
    for (int d = 0; d < 4; ++d) EXPECT_EQ(out[d], a[d]);
    float lse2[2] = {-inf, -inf};  // impossible for a valid query, must still not produce NaN
    llmn::merge_partials(2, lse2, parts, 4, out);
    for (int d = 0; d < 4; ++d) EXPECT_EQ(out[d], 0.0f);
    llmn::merge_partials(1, lse1, parts, 4, out);  // one split is a bitwise copy
    EXPECT_EQ(std::memcmp(out, a, sizeof(a)), 0);
    // Two equal-LSE halves average; huge LSEs do not overflow.
    float lse3[2] = {80.0f, 80.0f};
    parts[1] = lse1;  // any finite values
    float c2[4] = {3.0f, 0.0f, 1.5f, 0.25f};
    parts[1] = c2;
    llmn::merge_partials(2, lse3, parts, 4, out);
    for (int d = 0; d < 4; ++d) EXPECT_FLOAT_EQ(out[d], 0.5f * (a[d] + c2[d]));
}

TEST(DecodeAttention, MixedLengthsInOneBatch) {
    Ctx ctx;
    auto g = rng(1);
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 128;
    pb.bs = 16;
    pb.lengths = {1, 2, 3, 15, 16, 17, 64, 65, 100, 513, 1000, 2049, quick() ? 1200 : 5000};
    std::shuffle(pb.lengths.begin(), pb.lengths.end(), g);
    check_problem(ctx.h, pb, g, "mixed lengths q_len 1", {0, 1, 5});
    pb.q_len = 4;
    pb.lengths = {4, 5, 31, 33, 700, quick() ? 900 : 3000};
    check_problem(ctx.h, pb, g, "mixed lengths q_len 4", {0, 1, 3});
}

TEST(DecodeAttention, EveryHeadDimAndBlockSize) {
    Ctx ctx;
    auto g = rng(2);
    const int32_t dims[] = {64, 80, 96, 128, 256, 80, 96};
    const int32_t sizes[] = {8, 16, 32, 64, 128, 256, 8};
    for (int i = 0; i < 7; ++i) {
        Problem pb;
        pb.D = dims[i];
        pb.bs = sizes[i];
        pb.H = 1 + i % 2;
        pb.G = 2;
        pb.q_len = i % 2 ? 3 : 1;
        pb.lengths = {1 + pb.q_len, 7, pb.bs + 1, 3 * pb.bs + 5, quick() ? 200 : 600};
        check_problem(ctx.h, pb, g, "head_dim " + std::to_string(pb.D) + " block " + std::to_string(pb.bs), {0, 2});
    }
}

TEST(DecodeAttention, GqaRatios) {
    Ctx ctx;
    auto g = rng(3);
    for (int32_t G : {1, 4, 5, 6, 7, 8, 16}) {
        for (int32_t q_len : {1, 4}) {
            Problem pb;
            pb.H = 2;
            pb.G = G;
            pb.D = G == 7 ? 96 : 64;
            pb.bs = 32;
            pb.q_len = q_len;
            pb.lengths = {q_len, 40, quick() ? 150 : 700};
            check_problem(ctx.h, pb, g, "group " + std::to_string(G) + " q_len " + std::to_string(q_len), {0, 3});
        }
    }
}

TEST(DecodeAttention, SlidingWindowSoftCapAlibi) {
    Ctx ctx;
    auto g = rng(4);
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 64;
    pb.bs = 16;
    pb.q_len = 4;
    pb.outliers = true;  // huge keys at mask boundaries make off-by-one masks visible
    pb.lengths = {4, 9, 64, 200, quick() ? 300 : 900};
    std::vector<float> slopes(static_cast<size_t>(pb.H * pb.G));
    for (size_t h = 0; h < slopes.size(); ++h) slopes[h] = std::pow(2.0f, -8.0f * float(h + 1) / float(slopes.size()));
    struct Case {
        int32_t window;
        float softcap;
        bool alibi;
    };
    for (Case cs : {Case{1, 0, false}, Case{3, 0, false}, Case{17, 0, false}, Case{100, 0, false}, Case{0, 5.0f, false},
                    Case{0, 30.0f, false}, Case{0, 0, true}, Case{50, 20.0f, true}, Case{2, 1.0f, true}}) {
        llmn_attention_params p = params_for(pb);
        p.window = cs.window;
        p.softcap = cs.softcap;
        check_problem(ctx.h, pb, g,
                      "window " + std::to_string(cs.window) + " softcap " + std::to_string(cs.softcap) +
                          (cs.alibi ? " alibi" : ""),
                      {0, 1, 4}, false, &p, cs.alibi ? &slopes : nullptr);
    }
}

TEST(DecodeAttention, OutlierHeavyKeysAndValues) {
    Ctx ctx;
    auto g = rng(5);
    Problem pb;
    pb.H = 2;
    pb.G = 8;
    pb.D = 128;
    pb.bs = 32;
    pb.q_len = 2;
    pb.outliers = true;
    pb.lengths = {2, 50, 333, quick() ? 700 : 2500};
    check_problem(ctx.h, pb, g, "outliers", {0, 1, 6});
}

TEST(DecodeAttention, F16QueriesAndOutputs) {
    Ctx ctx;
    auto g = rng(6);
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 80;
    pb.bs = 64;
    pb.q_len = 3;
    pb.lengths = {3, 70, quick() ? 400 : 1500};
    check_problem(ctx.h, pb, g, "f16 io", {0, 1, 4}, true);
}

TEST(DecodeAttention, ForkedSequencesAndCopyOnWrite) {
    Ctx ctx;
    auto g = rng(7);
    CpuStateGuard cpu_guard;
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 64;
    pb.bs = 16;
    pb.q_len = 2;
    pb.layers = 1;
    pb.layer = 0;
    pb.lengths = {200};
    Attn a(ctx.h, pb, g);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    // fork twice, diverge, truncate one fork into a shared block and write (copy-on-write)
    int64_t f1 = 0, f2 = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(a.cache, a.ids[0], &f1));
    LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(a.cache, a.ids[0], &f2));
    LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(a.cache, f2, 100));  // block 6 (96..111) shared, now partial
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto append = [&](int64_t id, int32_t n) {
        std::vector<float> k(static_cast<size_t>(n) * pb.H * pb.D), v(k.size());
        for (auto& x : k) x = nd(g);
        for (auto& x : v) x = nd(g);
        Buf kb(ctx.h, LLMN_DTYPE_F32, int64_t(k.size())), vb(ctx.h, LLMN_DTYPE_F32, int64_t(v.size()));
        llmn_buffer_upload(kb.h, 0, k.data(), int64_t(k.size()));
        llmn_buffer_upload(vb.h, 0, v.data(), int64_t(v.size()));
        ASSERT_EQ(llmn_kv_cache_append(a.cache, id, 0, kb.h, vb.h, n), LLMN_STATUS_OK) << last_error();
    };
    append(f1, 9);
    append(f2, 30);
    append(a.ids[0], 2);
    a.ids = {a.ids[0], f1, f2};
    a.refresh();
    EXPECT_EQ(a.lengths(), (std::vector<int64_t>{202, 209, 130}));
    // f2 got a private copy of the block it wrote into; f1 and the source still share early blocks.
    auto& kc = *llmn::lookup<llmn::KvCache>(a.cache, "cache");
    EXPECT_NE(kc.sequence(f2, "f2").blocks[6], kc.sequence(a.ids[0], "src").blocks[6]);
    EXPECT_EQ(kc.sequence(f1, "f1").blocks[6], kc.sequence(a.ids[0], "src").blocks[6]);
    EXPECT_EQ(kc.sequence(f2, "f2").blocks[0], kc.sequence(a.ids[0], "src").blocks[0]);
    pb.lengths = a.lengths();
    auto q = a.make_q(g, false);
    for (int32_t isa : isas_to_test()) {
        ASSERT_EQ(llmn_set_cpu_isa(isa), LLMN_STATUS_OK);
        for (int32_t splits : {0, 1, 3}) {
            llmn_attention_params p = params_for(pb, splits);
            std::vector<float> out;
            ASSERT_EQ(a.run(q, false, p, nullptr, out), LLMN_STATUS_OK) << last_error();
            Attn::expect_close(out, a.reference(q, false, p, nullptr, splits ? splits : 64), pb.D,
                               std::string("forks [") + isa_name(isa) + ", splits " + std::to_string(splits) + "]");
        }
    }
}

// Split vs no split: the scores are bitwise the same (one code path per key, splits on block
// boundaries), so the difference is bounded by exp/rounding of the different running maxima, the two
// accumulations and the merge (Reference::split_bound, derived in the header comment).
TEST(DecodeAttention, SplitMatchesNoSplitWithinRounding) {
    Ctx ctx;
    auto g = rng(8);
    CpuStateGuard cpu_guard;
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 128;
    pb.bs = 16;
    pb.q_len = 1;
    pb.outliers = false;
    pb.lengths = {quick() ? 1000 : 3000, 700, 5};
    Attn a(ctx.h, pb, g);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    auto q = a.make_q(g, false);
    for (int32_t isa : isas_to_test()) {
        ASSERT_EQ(llmn_set_cpu_isa(isa), LLMN_STATUS_OK);
        std::vector<float> base;
        ASSERT_EQ(a.run(q, false, params_for(pb, 1), nullptr, base), LLMN_STATUS_OK) << last_error();
        for (int32_t splits : {2, 3, 7, 64, 256}) {
            std::vector<float> out;
            ASSERT_EQ(a.run(q, false, params_for(pb, splits), nullptr, out), LLMN_STATUS_OK) << last_error();
            Reference ref = a.reference(q, false, params_for(pb, splits), nullptr, splits);
            double worst = 0.0;
            size_t differ = 0;
            for (size_t i = 0; i < out.size(); ++i) {
                const double d = std::fabs(double(out[i]) - double(base[i]));
                differ += d != 0.0;
                ASSERT_LE(d, ref.split_bound[i / size_t(pb.D)])
                    << isa_name(isa) << " splits " << splits << " element " << i;
                worst = std::max(worst, d / ref.split_bound[i / size_t(pb.D)]);
            }
            std::printf("  split %3d vs none [%s]: %zu of %zu elements differ, worst %.4f of bound\n", splits,
                        isa_name(isa), differ, out.size(), worst);
        }
    }
}

// Bitwise reproducibility: repeated runs, and 1..3 threads with a fixed split count; automatic
// splits are reproducible for a fixed thread count (the split count depends on it by design).
TEST(DecodeAttention, BitwiseRepeatableAcrossRunsAndThreadCounts) {
    Ctx ctx;
    auto g = rng(9);
    CpuStateGuard cpu_guard;
    Problem pb;
    pb.H = 2;
    pb.G = 6;
    pb.D = 96;
    pb.bs = 8;
    pb.q_len = 2;
    pb.lengths = {2, 77, 300, quick() ? 600 : 2000};
    Attn a(ctx.h, pb, g);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    auto q = a.make_q(g, false);
    for (int32_t isa : isas_to_test()) {
        ASSERT_EQ(llmn_set_cpu_isa(isa), LLMN_STATUS_OK);
        for (int32_t splits : {1, 4, 0}) {
            std::vector<float> first;
            for (int32_t threads : {1, 2, 3}) {
                ASSERT_EQ(llmn_set_cpu_threads(threads), LLMN_STATUS_OK);
                for (int rep = 0; rep < 2; ++rep) {
                    std::vector<float> out;
                    ASSERT_EQ(a.run(q, false, params_for(pb, splits), nullptr, out), LLMN_STATUS_OK) << last_error();
                    if (first.empty() || (splits == 0 && rep == 0)) {
                        if (first.empty()) first = out;
                        if (splits == 0) first = out;  // auto: compare repeats at this thread count only
                        continue;
                    }
                    ASSERT_EQ(std::memcmp(out.data(), first.data(), out.size() * sizeof(float)), 0)
                        << isa_name(isa) << " splits " << splits << " threads " << threads << " repeat " << rep;
                }
            }
        }
    }
}

// Scalar, AVX2 (and AVX-512, or NEON on arm64) kernels all meet the reference bound (checked everywhere above); here
// also each SIMD kernel against the scalar one, within the sum of their bounds, on the Llama-3-8B
// head shape.
TEST(DecodeAttention, ScalarAndSimdKernelsAgree) {
    auto isas = isas_to_test();
    if (isas.size() < 2) GTEST_SKIP() << "this CPU/build has no SIMD attention kernel";
    Ctx ctx;
    auto g = rng(10);
    CpuStateGuard cpu_guard;
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 128;
    pb.bs = 16;
    pb.lengths = {1, 129, quick() ? 700 : 4000};
    Attn a(ctx.h, pb, g);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    auto q = a.make_q(g, false);
    std::vector<std::vector<float>> outs(isas.size());
    for (size_t k = 0; k < isas.size(); ++k) {
        ASSERT_EQ(llmn_set_cpu_isa(isas[k]), LLMN_STATUS_OK);
        ASSERT_EQ(a.run(q, false, params_for(pb, 1), nullptr, outs[k]), LLMN_STATUS_OK) << last_error();
    }
    Reference ref = a.reference(q, false, params_for(pb, 1), nullptr, 1);
    for (size_t k = 1; k < isas.size(); ++k)
        for (size_t i = 0; i < outs[0].size(); ++i)
            ASSERT_LE(std::fabs(outs[0][i] - outs[k][i]), 2 * ref.bound[i / size_t(pb.D)])
                << isa_name(isas[k]) << " element " << i;
}

// Every rejected input: status, a message naming the parameter and value, nothing written to out,
// nothing changed in the cache.
TEST(DecodeAttention, BadInputsFailWithoutWritingAnything) {
    Ctx ctx;
    auto g = rng(11);
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 64;
    pb.bs = 16;
    pb.q_len = 2;
    pb.lengths = {5, 40};
    Attn a(ctx.h, pb, g);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    auto kf0 = a.kf, vf0 = a.vf;
    llmn_kv_cache_stats st0{};
    LLMN_ASSERT_OK(llmn_kv_cache_get_stats(a.cache, &st0));
    const int64_t n = a.q_count();
    // q and out are oversized (q_len up to 8 fits) so each case fails for the reason it tests.
    Buf q(ctx.h, LLMN_DTYPE_F32, 4 * n), out(ctx.h, LLMN_DTYPE_F32, 4 * n), small(ctx.h, LLMN_DTYPE_F32, n - 1);
    Buf q16(ctx.h, LLMN_DTYPE_F16, n), qi(ctx.h, LLMN_DTYPE_I32, n), slopes_short(ctx.h, LLMN_DTYPE_F32, 7);
    Buf slopes_nan(ctx.h, LLMN_DTYPE_F32, 8);
    std::vector<float> qv(static_cast<size_t>(4 * n), 0.5f), sn(8, 0.1f);
    sn[3] = std::nanf("");
    llmn_buffer_upload(q.h, 0, qv.data(), 4 * n);
    llmn_buffer_upload(slopes_nan.h, 0, sn.data(), 8);
    const float marker = 1234.5f;
    llmn_buffer_fill(out.h, 0, 4 * n, &marker);

    struct Case {
        std::string what;
        llmn_status status;
        std::vector<std::string> message;
        std::function<llmn_status()> call;
    };
    const llmn_attention_params good = params_for(pb);
    auto with = [&](auto edit) {
        llmn_attention_params p = good;
        edit(p);
        return p;
    };
    std::vector<int64_t> ids = a.ids, unknown = {a.ids[0], a.ids[1] + 100};
    auto call = [&](const std::vector<int64_t>& seqs, llmn_buffer qb, llmn_buffer sb, llmn_buffer ob,
                    llmn_attention_params p) {
        return [&, seqs, qb, sb, ob, p] {
            return llmn_decode_attention(ctx.h, a.cache, seqs.data(), int32_t(seqs.size()), qb, sb, ob, &p);
        };
    };
    std::vector<int64_t> too_many(65, a.ids[0]);
    std::vector<Case> cases = {
        {"unknown sequence", LLMN_STATUS_NOT_FOUND, {"sequence_ids[1] = " + std::to_string(a.ids[1] + 100)},
         call(unknown, q.h, nullptr, out.h, good)},
        {"layer out of range", LLMN_STATUS_INVALID_ARGUMENT, {"params->layer", "got 2"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.layer = 2; }))},
        {"negative layer", LLMN_STATUS_INVALID_ARGUMENT, {"params->layer", "got -1"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.layer = -1; }))},
        {"q too small", LLMN_STATUS_INVALID_ARGUMENT, {"q holds", "num_q_heads=8"},
         call(ids, small.h, nullptr, out.h, good)},
        {"out too small", LLMN_STATUS_INVALID_ARGUMENT, {"out holds"}, call(ids, q.h, nullptr, small.h, good)},
        {"q dtype", LLMN_STATUS_INVALID_ARGUMENT, {"q has dtype i32"}, call(ids, qi.h, nullptr, out.h, good)},
        {"q/out dtype mismatch", LLMN_STATUS_INVALID_ARGUMENT, {"out has dtype f32", "f16"},
         call(ids, q16.h, nullptr, out.h, good)},
        {"q heads not a multiple", LLMN_STATUS_INVALID_ARGUMENT, {"num_q_heads = 7", "num_kv_heads = 2"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.num_q_heads = 7; }))},
        {"group > 16", LLMN_STATUS_INVALID_ARGUMENT, {"34 / 2 = 17"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.num_q_heads = 34; }))},
        {"q_len 9", LLMN_STATUS_INVALID_ARGUMENT, {"params->q_len", "got 9"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.q_len = 9; }))},
        {"q_len 0", LLMN_STATUS_INVALID_ARGUMENT, {"params->q_len", "got 0"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.q_len = 0; }))},
        {"q_len > length", LLMN_STATUS_INVALID_ARGUMENT, {"q_len = 6", "sequence_ids[0]", "5 tokens"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.q_len = 6; }))},
        {"negative window", LLMN_STATUS_INVALID_ARGUMENT, {"params->window", "got -3"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.window = -3; }))},
        {"NaN scale", LLMN_STATUS_INVALID_ARGUMENT, {"params->scale", "nan"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.scale = std::nanf(""); }))},
        {"negative softcap", LLMN_STATUS_INVALID_ARGUMENT, {"params->softcap", "got -1"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.softcap = -1.0f; }))},
        {"splits > 256", LLMN_STATUS_INVALID_ARGUMENT, {"params->num_splits", "got 300"},
         call(ids, q.h, nullptr, out.h, with([](auto& p) { p.num_splits = 300; }))},
        {"alibi too short", LLMN_STATUS_INVALID_ARGUMENT, {"alibi_slopes holds 7"},
         call(ids, q.h, slopes_short.h, out.h, good)},
        {"alibi NaN", LLMN_STATUS_INVALID_ARGUMENT, {"alibi_slopes[3]"}, call(ids, q.h, slopes_nan.h, out.h, good)},
        {"batch > max_batch", LLMN_STATUS_INVALID_ARGUMENT, {"batch must be in [1, 64]", "got 65"},
         call(too_many, q.h, nullptr, out.h, good)},
        {"null params", LLMN_STATUS_INVALID_ARGUMENT, {"params"},
         [&] { return llmn_decode_attention(ctx.h, a.cache, ids.data(), 2, q.h, nullptr, out.h, nullptr); }},
        {"null sequence ids", LLMN_STATUS_INVALID_ARGUMENT, {"sequence_ids"},
         [&] { return llmn_decode_attention(ctx.h, a.cache, nullptr, 2, q.h, nullptr, out.h, &good); }},
        {"batch 0", LLMN_STATUS_INVALID_ARGUMENT, {"batch", "got 0"},
         [&] { return llmn_decode_attention(ctx.h, a.cache, ids.data(), 0, q.h, nullptr, out.h, &good); }},
        {"destroyed cache handle", LLMN_STATUS_INVALID_HANDLE, {"cache"},
         [&] { return llmn_decode_attention(ctx.h, nullptr, ids.data(), 2, q.h, nullptr, out.h, &good); }},
        {"bad q handle", LLMN_STATUS_INVALID_HANDLE, {"q"},
         [&] { return llmn_decode_attention(ctx.h, a.cache, ids.data(), 2, nullptr, nullptr, out.h, &good); }},
    };
    for (auto& c : cases) {
        llmn_status s = c.call();
        std::string msg = last_error();
        EXPECT_EQ(s, c.status) << c.what << ": " << msg;
        for (const auto& part : c.message) EXPECT_NE(msg.find(part), std::string::npos) << c.what << ": " << msg;
        std::vector<float> o(static_cast<size_t>(4 * n));
        llmn_buffer_download(out.h, 0, o.data(), 4 * n);
        for (size_t i = 0; i < o.size(); ++i) ASSERT_EQ(o[i], marker) << c.what << ": out was written";
    }
    // The cache is unchanged (data, lengths, stats), and a good call still works afterwards.
    a.refresh();
    EXPECT_EQ(a.kf, kf0);
    EXPECT_EQ(a.vf, vf0);
    llmn_kv_cache_stats st1{};
    LLMN_ASSERT_OK(llmn_kv_cache_get_stats(a.cache, &st1));
    EXPECT_EQ(std::memcmp(&st0, &st1, sizeof(st0)), 0);
    LLMN_ASSERT_OK(llmn_decode_attention(ctx.h, a.cache, ids.data(), 2, q.h, nullptr, out.h, &good));
}
