// CUDA decode attention. Two groups of tests:
//
//  DecodeAttentionCudaPlan.*  run everywhere (no GPU needed). They exercise the host+device
//      functions of decode_attention_cuda_plan.cuh that the kernels use: split partition, row
//      chunking, CTA geometry, work-item numbering, the split policy, table flattening, the LSE merge
//      arithmetic, and a host EMULATION of the split and merge kernels (same geometry, same per-thread
//      loop order, same functions, reading a real paged pool with scattered blocks) checked against
//      a float64 reference and the CPU backend. What they cannot check: cp.async, shared-memory
//      indexing of the stage ring, warp shuffles and the CUDA launch/stream code.
//
//  DecodeAttentionCuda.*  need a device (LLMN_REQUIRE_CUDA: visible skip otherwise). One CPU cache
//      and one CUDA cache receive identical appends; CUDA results are compared with the float64
//      reference and with the CPU backend on the same contents. Outputs are NaN-poisoned first.
//
// ERROR BOUND (per output row; u = 2^-24; eps_exp = 2^-21 covers expf/tanhf/logf of glibc and CUDA,
// both <= 2 ulp; N visible keys, n splits, Vmax = max |v| over the row's keys, A_t = |scale| sum |q_d k_td|):
//   score   |ds_t| <= (D + 2) u A_t  (pre-scaled q: one rounding; 8-term FMA chain per lane, then a
//           butterfly of <= 5 additions: depth <= D + 2 for D >= 64); soft-cap adds c (eps_exp + 4u) + 2u A_t,
//           ALiBi 2u (|bias| + A_t);
//   weights 2 (max ds + eps_exp + 2u Smax) Vmax   (relative weight error -> output error);
//   accum   2 (N + T + 4) u Vmax with T = N/2 + n + 40 (sub-tile rescales, key-slot merge, chunks);
//   merge   2 (2u (Smax + ln N + 2) + eps_exp + (n + 2) u) Vmax + n u Vmax;
//   output  half an ulp of the output type: 2^-11 |o| (f16) or 2^-8 |o| (bf16), plus 2^-25 (f16 subnormals).
// First-order terms get a factor 1.25 and 8u Vmax of slack.
// SPLIT vs NO SPLIT (same device, f32 internals): scores are bitwise identical (same code per key),
// so the difference is bounded by 1.25 Vmax (2 (2 eps_exp + 4u Smax) + 2 accum + merge) + 8u Vmax,
// plus ONE output ulp (both results are rounded to the output type after differing by less than
// that bound, so they can land on adjacent representable values).
#include "core/error.hpp"
#include "core/numeric.hpp"
#include "kernels/decode_attention/decode_attention.hpp"
#include "kernels/decode_attention/decode_attention_cuda_plan.cuh"
#include "kernels/kv_cache/kv_cache.hpp"
#include "kernels/kv_cache/kv_kivi.hpp"
#include "kernels/kv_cache/kv_quant.hpp"
#include "kernels/kv_cache/kv_quant_cuda.cuh"
#include "attention_reference.hpp"
#include "kv_test_util.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

using namespace llmn_test;
namespace ac = llmn::attn_cuda;

namespace {

uint16_t to_bits(float x, int32_t dtype) { return dtype == LLMN_DTYPE_BF16 ? llmn::f32_to_bf16(x) : llmn::f32_to_f16(x); }
float from_bits(uint16_t b, int32_t dtype) { return dtype == LLMN_DTYPE_BF16 ? llmn::bf16_to_f32(b) : llmn::f16_to_f32(b); }
float round_to(float x, int32_t dtype) { return from_bits(to_bits(x, dtype), dtype); }
double half_ulp_rel(int32_t dtype) { return dtype == LLMN_DTYPE_BF16 ? 1.0 / 256.0 : 1.0 / 2048.0; }
const char* dtype_str(int32_t dtype) { return dtype == LLMN_DTYPE_BF16 ? "bf16" : dtype == LLMN_DTYPE_F16 ? "f16" : "f32"; }

// ------------------------------------------------------------------------------------------------
// Problems: one CUDA cache (and, for f16 storage, an identical CPU cache), float64 reference
// ------------------------------------------------------------------------------------------------

struct Problem {
    int32_t H = 2, D = 64, bs = 16, G = 2, q_len = 1;
    int32_t layers = 2, layer = 1;  // attention reads layer 1; layer 0 holds different data
    int32_t kv_format = LLMN_KV_F16;
    int32_t v_format = -1;  // -1: same as kv_format (which is then K's format)
    std::vector<int64_t> lengths;
    bool outliers = false;
    float v_scale = 1.0f;  // V values are multiplied by this (small V: the f16 range of the tensor-core path)
    float v_last = 1.0f;   // and the V row of each sequence's last token by this (large V of a key rows 0..q_len-2 mask)
    float k_scale = 1.0f;  // K values are multiplied by this (scores of std ~k_scale: large jumps of the running max)
    float big_v = 0.0f;    // nonzero: tokens 0..15 and the last token of a sequence get K = 0 (score 0) and V
                           // clamped to +-3 times this (v_scale not applied): huge per-token V scales
    int32_t max_batch = 64;
    int32_t value_group = 0;  // KIVI V: value_group_size (0: 32 when V is INT4/INT2)
};

struct Reference {
    std::vector<double> o;            // [batch, q_len, Hq, D]
    std::vector<double> bound;        // per row: |result - reference|
    std::vector<double> split_bound;  // per row: |split - nosplit| at f32 level (without output rounding)
    std::vector<double> omax;         // per row: max |o|
};

// Float64 attention of one problem from K/V as stored ([len][H][D] per sequence) and its error bound.
Reference reference(const Problem& pb, const std::vector<std::vector<float>>& kf, const std::vector<std::vector<float>>& vf,
                    const std::vector<float>& q, const llmn_attention_params& p, const std::vector<float>* slopes,
                    int32_t max_splits, int32_t out_dtype) {
    const int32_t H = pb.H, D = pb.D, G = pb.G, Q = pb.q_len, Hq = H * G;
    const size_t B = pb.lengths.size();
    Reference ref;
    ref.o.assign(B * Q * Hq * D, 0.0);
    ref.bound.assign(B * Q * Hq, 0.0);
    ref.split_bound.assign(B * Q * Hq, 0.0);
    ref.omax.assign(B * Q * Hq, 0.0);
    for (size_t b = 0; b < B; ++b) {
        const int64_t L = pb.lengths[b];
        for (int32_t i = 0; i < Q; ++i) {
            const int64_t pos = L - Q + i;
            const int64_t lo = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
            const int64_t N = pos - lo + 1;
            for (int32_t hq = 0; hq < Hq; ++hq) {
                const int32_t h = hq / G;
                const float* qr = &q[((b * Q + i) * Hq + hq) * D];
                const AttentionRow r = attention_row_f64(qr, kf[b].data(), vf[b].data(), H, h, D, lo, pos, p.scale, p.softcap,
                                                         slopes ? &(*slopes)[size_t(hq)] : nullptr);
                const double sabs = r.sabs, dmax = r.dmax, vmax = r.vmax, omax = r.omax;
                const size_t row = (b * Q + i) * Hq + hq;
                std::copy(r.o.begin(), r.o.end(), ref.o.begin() + ptrdiff_t(row * D));
                const double n = max_splits;
                const double T = double(N) / 2.0 + n + 40.0;
                const double weights = 2 * (dmax + kEpsExp + 2 * kU * sabs);
                const double accum = 2 * (N + T + 4) * kU;
                const double merge = 2 * (2 * kU * (sabs + std::log(double(N)) + 2) + kEpsExp + (n + 2) * kU) + n * kU;
                const double out_round = out_dtype == LLMN_DTYPE_F32 ? 0.0 : omax * half_ulp_rel(out_dtype) + 3e-8;
                ref.bound[row] = 1.25 * vmax * (weights + accum + merge) + 8 * kU * vmax + out_round;
                ref.split_bound[row] = 1.25 * vmax * (2 * (2 * kEpsExp + 4 * kU * sabs) + 2 * accum + merge) + 8 * kU * vmax;
                ref.omax[row] = omax;
            }
        }
    }
    return ref;
}

// |out - ref| <= bound per element (extra: added to every bound); reports the worst ratio.
void expect_close(const std::vector<float>& out, const Reference& ref, int32_t D, const std::string& what,
                  const std::vector<double>* extra = nullptr) {
    expect_within_bound(out, ref.o, ref.bound, D, what, extra);
}

// Random K/V appended identically to every cache in `caches` (interleaved chunks, both layers, so the
// blocks of a sequence are scattered; free lists shuffled with the same seed).
class Caches {
public:
    Caches(const Problem& pb, std::mt19937_64& g, const std::vector<llmn_context>& ctxs) : pb_(pb) {
        int64_t total = 0;
        for (int64_t l : pb.lengths) total += (l + pb.bs - 1) / pb.bs * pb.bs + pb.bs;
        llmn_kv_cache_desc d{};
        d.num_layers = pb.layers;
        d.num_kv_heads = pb.H;
        d.head_dim = pb.D;
        d.block_size = pb.bs;
        d.k_format = pb.kv_format;
        d.v_format = pb.v_format >= 0 ? pb.v_format : pb.kv_format;
        d.max_batch = pb.max_batch;
        if (llmn::kv_format_is_kivi(d.v_format)) d.value_group_size = pb.value_group > 0 ? pb.value_group : 32;
        d.capacity_tokens = total + 16 * pb.bs;
        const uint64_t shuffle_seed = g();
        for (llmn_context c : ctxs) {
            llmn_kv_cache kc = nullptr;
            EXPECT_EQ(llmn_kv_cache_create(c, &d, &kc), LLMN_STATUS_OK) << last_error();
            if (!kc) return;
            llmn::lookup<llmn::KvCache>(kc, "cache")->debug_shuffle_free_list(shuffle_seed);
            caches.push_back(kc);
            ctxs_.push_back(c);
            ids.emplace_back();
            for (size_t b = 0; b < pb.lengths.size(); ++b) {
                int64_t id = 0;
                EXPECT_EQ(llmn_kv_cache_add_sequence(kc, &id), LLMN_STATUS_OK);
                ids.back().push_back(id);
            }
        }
        std::vector<int64_t> done(pb.lengths.size(), 0);
        for (bool more = true; more;) {
            more = false;
            for (size_t b = 0; b < pb.lengths.size(); ++b) {
                const int64_t left = pb.lengths[b] - done[b];
                if (left <= 0) continue;
                const int32_t n = int32_t(std::min<int64_t>(left, 1 + int64_t(g() % (pb.lengths[b] > 1000 ? 700 : 2 * pb.bs))));
                for (int32_t layer = 0; layer < pb.layers; ++layer) append_random(g, b, layer, done[b], n);
                done[b] += n;
                more = true;
            }
        }
        refresh();
    }
    ~Caches() {
        for (llmn_kv_cache c : caches) llmn_kv_cache_destroy(c);
    }
    Caches(const Caches&) = delete;
    Caches& operator=(const Caches&) = delete;

    // Appends n random tokens to sequence b of every cache in layer pb.layer (and the other layers).
    void append_random(std::mt19937_64& g, size_t b, int32_t layer, int64_t start, int32_t n) {
        std::vector<float> k, v;
        random_kv_tokens(g, pb_.H, pb_.D, n, pb_.outliers, b < pb_.lengths.size() ? pb_.lengths[b] : -1, pb_.q_len, start,
                         k, v);
        if (pb_.v_scale != 1.0f)
            for (float& x : v) x *= pb_.v_scale;
        if (pb_.v_last != 1.0f && b < pb_.lengths.size() && start + n == pb_.lengths[b])
            for (size_t i = size_t(n - 1) * pb_.H * pb_.D; i < v.size(); ++i)  // |v| <= 3 x v_last: 2^14 stays finite in f16 out
                v[i] = std::clamp(v[i], -3.0f, 3.0f) * pb_.v_last;
        if (pb_.k_scale != 1.0f)
            for (float& x : k) x *= pb_.k_scale;
        if (pb_.big_v != 0.0f && b < pb_.lengths.size()) {
            const size_t row = size_t(pb_.H) * pb_.D;
            for (int32_t t = 0; t < n; ++t)
                if (start + t < 16 || start + t == pb_.lengths[b] - 1)
                    for (size_t i = size_t(t) * row; i < size_t(t + 1) * row; ++i) {
                        k[i] = 0.0f;
                        v[i] = std::clamp(v[i] / pb_.v_scale, -3.0f, 3.0f) * pb_.big_v;
                    }
        }
        for (size_t c = 0; c < caches.size(); ++c) {
            Buf kb(ctxs_[c], LLMN_DTYPE_F32, int64_t(k.size())), vb(ctxs_[c], LLMN_DTYPE_F32, int64_t(v.size()));
            llmn_buffer_upload(kb.h, 0, k.data(), int64_t(k.size()));
            llmn_buffer_upload(vb.h, 0, v.data(), int64_t(v.size()));
            ASSERT_EQ(llmn_kv_cache_append(caches[c], ids[c][b], layer, kb.h, vb.h, n), LLMN_STATUS_OK) << last_error();
        }
    }

    // Re-reads lengths and stored K/V (layer pb.layer) from cache 0 for the reference.
    void refresh() {
        pb_.lengths.clear();
        kf.clear();
        vf.clear();
        for (int64_t id : ids[0]) {
            int64_t n = 0;
            EXPECT_EQ(llmn_kv_cache_get_sequence_length(caches[0], id, pb_.layer, &n), LLMN_STATUS_OK) << last_error();
            pb_.lengths.push_back(n);
            const int64_t cnt = n * pb_.H * pb_.D;
            Buf kb(ctxs_[0], LLMN_DTYPE_F32, cnt), vb(ctxs_[0], LLMN_DTYPE_F32, cnt);
            EXPECT_EQ(llmn_kv_cache_read(caches[0], id, pb_.layer, 0, n, kb.h, vb.h), LLMN_STATUS_OK) << last_error();
            kf.emplace_back(size_t(cnt));
            vf.emplace_back(size_t(cnt));
            llmn_buffer_download(kb.h, 0, kf.back().data(), cnt);
            llmn_buffer_download(vb.h, 0, vf.back().data(), cnt);
        }
    }

    const Problem& problem() const { return pb_; }
    int64_t q_count() const { return int64_t(pb_.lengths.size()) * pb_.q_len * pb_.H * pb_.G * pb_.D; }

    // Random queries, exactly representable in `dtype`.
    std::vector<float> make_q(std::mt19937_64& g, int32_t dtype) const {
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> q(static_cast<size_t>(q_count()));
        for (auto& x : q) x = dtype == LLMN_DTYPE_F32 ? nd(g) : round_to(nd(g), dtype);
        return q;
    }

    // Runs attention on cache c with q/out of `dtype`; out is NaN-poisoned first. bits (optional)
    // receives the raw output bytes for bitwise comparisons. alias: out is the q buffer itself.
    llmn_status run(size_t c, const std::vector<float>& q, int32_t dtype, const llmn_attention_params& p,
                    const std::vector<float>* slopes, std::vector<float>& out, std::vector<uint8_t>* bits = nullptr,
                    const std::vector<int64_t>* seq_ids = nullptr, bool alias = false) {
        const llmn_context ctx = ctxs_[c];
        const std::vector<int64_t>& sid = seq_ids ? *seq_ids : ids[c];
        const int64_t n = int64_t(sid.size()) * pb_.q_len * pb_.H * pb_.G * pb_.D;
        EXPECT_EQ(int64_t(q.size()), n);
        Buf qb(ctx, dtype, n), ob(ctx, dtype, n);
        llmn_buffer outb = alias ? qb.h : ob.h;
        if (dtype == LLMN_DTYPE_F32) {
            llmn_buffer_upload(qb.h, 0, q.data(), n);
            if (!alias) {
                const float nan32 = std::nanf("");
                llmn_buffer_fill(ob.h, 0, n, &nan32);
            }
        } else {
            std::vector<uint16_t> qh(q.size());
            for (size_t i = 0; i < q.size(); ++i) qh[i] = to_bits(q[i], dtype);
            llmn_buffer_upload(qb.h, 0, qh.data(), n);
            if (!alias) {
                const uint16_t nan16 = dtype == LLMN_DTYPE_BF16 ? 0x7fc0 : 0x7e00;
                llmn_buffer_fill(ob.h, 0, n, &nan16);
            }
        }
        llmn_buffer sb = nullptr;
        if (slopes) {
            llmn_buffer_create(ctx, LLMN_DTYPE_F32, int64_t(slopes->size()), LLMN_MEMORY_DEVICE, &sb);
            llmn_buffer_upload(sb, 0, slopes->data(), int64_t(slopes->size()));
        }
        const llmn_status s = llmn_decode_attention(ctx, caches[c], sid.data(), int32_t(sid.size()), qb.h, sb, outb, &p);
        const std::string msg = last_error();
        if (sb) llmn_buffer_destroy(sb);
        const int64_t outn = n;
        out.assign(size_t(outn), 0.0f);
        if (dtype == LLMN_DTYPE_F32) {
            llmn_buffer_download(outb, 0, out.data(), outn);
            if (bits) {
                bits->resize(out.size() * 4);
                std::memcpy(bits->data(), out.data(), bits->size());
            }
        } else {
            std::vector<uint16_t> oh(static_cast<size_t>(outn));
            llmn_buffer_download(outb, 0, oh.data(), outn);
            for (size_t i = 0; i < oh.size(); ++i) out[i] = from_bits(oh[i], dtype);
            if (bits) {
                bits->resize(oh.size() * 2);
                std::memcpy(bits->data(), oh.data(), bits->size());
            }
        }
        llmn::set_last_error(msg);
        return s;
    }

    std::vector<llmn_kv_cache> caches;
    std::vector<std::vector<int64_t>> ids;  // [cache][batch]
    std::vector<std::vector<float>> kf, vf;

private:
    Problem pb_;
    std::vector<llmn_context> ctxs_;
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

// ------------------------------------------------------------------------------------------------
// Host emulation of split_kernel + merge_kernel (decode_attention.cu), built from the same
// functions. Threads are visited one (z, y, row) group at a time; per thread the operation order
// is the kernel's. Reads the pool of a CPU cache (same byte layout as a CUDA cache).
// ------------------------------------------------------------------------------------------------

struct EmuInput {
    const llmn::KvCache* cache = nullptr;
    std::vector<const llmn::KvSequence*> seqs;
    std::vector<int64_t> lengths;
    llmn_attention_params p{};
    int32_t group = 1;
    std::vector<uint16_t> q;  // bits of io dtype, [batch, q_len, Hq, D]
    int32_t io_dtype = LLMN_DTYPE_F16;
    std::vector<float> slopes;  // empty: no ALiBi
    int64_t wave_ctas = 528;
};

float load_elem(const uint8_t* p, int32_t fmt) {
    uint16_t b;
    std::memcpy(&b, p, 2);
    return fmt == LLMN_KV_BF16 ? llmn::bf16_to_f32(b) : llmn::f16_to_f32(b);
}

// Sum of `lanes` values the way the xor butterfly forms it in lane 0 (every lane gets the same bits).
float butterfly(std::vector<float> v) {
    const int lanes = int(v.size());
    for (int off = lanes / 2; off > 0; off >>= 1) {
        std::vector<float> nv(v.size());
        for (int i = 0; i < lanes; ++i) nv[size_t(i)] = v[size_t(i)] + v[size_t(i ^ off)];
        v = nv;
    }
    return v[0];
}

struct EmuResult {
    std::vector<float> out;  // f32 values of the io-dtype output
    ac::Plan plan;
    ac::RowPlan rows;
};

EmuResult emulate(const EmuInput& in) {
    const llmn::KvLayout& L = in.cache->layout();
    const llmn_attention_params& P = in.p;
    const int32_t D = L.head_dim, H = L.num_kv_heads, G = in.group, Q = P.q_len, Hq = P.num_q_heads;
    const int32_t B = int32_t(in.seqs.size());
    EmuResult res;
    res.rows = ac::row_plan(D, G, Q);
    const ac::Geometry g = ac::geometry(D, res.rows.bucket);
    const int ROWS = res.rows.bucket;

    std::vector<int32_t> offs;
    std::vector<int32_t> flat(size_t(ac::flatten_tables(B, [&](int32_t b) -> const std::vector<int32_t>& { return in.seqs[size_t(b)]->blocks; }, offs, nullptr, 0)));
    ac::flatten_tables(B, [&](int32_t b) -> const std::vector<int32_t>& { return in.seqs[size_t(b)]->blocks; }, offs, flat.data(),
                       int64_t(flat.size()));

    ac::PlanInput pi;
    pi.batch = B;
    pi.lengths = in.lengths.data();
    pi.table_off = offs.data();
    pi.q_len = Q;
    pi.window = P.window;
    pi.block_size = L.block_size;
    pi.num_kv_heads = H;
    pi.rows = G * Q;
    pi.chunks = res.rows.chunks;
    pi.num_splits = P.num_splits;
    pi.wave_ctas = in.wave_ctas;
    pi.ws_rows = ac::workspace_rows(in.cache->desc().max_batch, H);
    res.plan = ac::make_plan(pi);
    const ac::Plan& plan = res.plan;
    const int32_t R = G * Q;

    std::vector<float> ws_o(static_cast<size_t>(std::max<int64_t>(plan.ws_rows_used, 1)) * D, std::nanf(""));
    std::vector<float> ws_lse(static_cast<size_t>(std::max<int64_t>(plan.ws_rows_used, 1)), std::nanf(""));
    std::vector<uint16_t> out(static_cast<size_t>(B) * Q * Hq * D, uint16_t(in.io_dtype == LLMN_DTYPE_BF16 ? 0x7fc0 : 0x7e00));
    const uint8_t* layer_base = in.cache->pool() + int64_t(P.layer) * L.layer_stride;
    int shift = 0;
    while ((1 << shift) < L.block_size) ++shift;
    const int mask = L.block_size - 1;
    const bool alibi = !in.slopes.empty();

    for (int64_t item = 0; item < plan.num_items; ++item) {
        const ac::Item it = ac::decode_item(plan.work.data(), B, res.rows.chunks, int(item));
        const ac::SeqWork w = plan.work[size_t(it.pos)];
        const int64_t len = w.length;
        const int h = it.head, i0 = it.chunk * res.rows.q_per_chunk;
        const int nq = std::min(res.rows.q_per_chunk, Q - i0), rows = nq * G;
        int64_t kb, ke;
        ac::split_keys(len, Q, P.window, L.block_size, w.n_splits, it.split, &kb, &ke);
        ac::chunk_keys(len, Q, P.window, i0, nq, &kb, &ke);
        const uint8_t* head_base = layer_base + int64_t(h) * L.head_stride;
        const int32_t* table = flat.data() + w.table_off;

        // thread state, indexed [z][y][k][x]
        auto sidx = [&](int z, int y, int k, int x) { return ((size_t(z) * g.y + y) * g.rpt + k) * g.lanes + x; };
        std::vector<ac::State> st(size_t(g.z) * g.y * g.rpt * g.lanes);
        for (auto& s : st) ac::state_init(s);
        // rows
        std::vector<float> qr(size_t(g.y) * g.rpt * g.lanes * ac::kVec, 0.0f);
        std::vector<int64_t> hi(size_t(g.y) * g.rpt, -1), lo(size_t(g.y) * g.rpt, 0);
        std::vector<float> slope(size_t(g.y) * g.rpt, 0.0f);
        for (int y = 0; y < g.y; ++y)
            for (int k = 0; k < g.rpt; ++k) {
                const int r = ac::geo_row(g, y, k);
                const size_t rk = size_t(y) * g.rpt + k;
                if (r >= rows) continue;
                const int qi = i0 + r / G, hq = h * G + r % G;
                hi[rk] = ac::query_pos(len, Q, qi);
                lo[rk] = ac::first_key(hi[rk], P.window);
                if (alibi) slope[rk] = in.slopes[size_t(hq)];
                for (int x = 0; x < g.chunks; ++x)
                    for (int e = 0; e < ac::kVec; ++e) {
                        const uint16_t bits = in.q[size_t(ac::qo_offset(w.batch_index, qi, hq, Q, Hq, D) + x * ac::kVec + e)];
                        qr[(rk * g.lanes + x) * ac::kVec + e] = from_bits(bits, in.io_dtype) * P.scale;
                    }
            }
        std::vector<float> kt(size_t(g.tile_keys) * D), vt(size_t(g.tile_keys) * D);
        // 8-bit sides: codes in kt/vt, per-token scale x q8_scale_factor in ksc/vsc (as compute_tile forms it)
        const bool kq8 = llmn::kv_format_is_q8(L.k_format), vq8 = llmn::kv_format_is_q8(L.v_format);
        std::vector<float> ksc(size_t(g.tile_keys)), vsc(size_t(g.tile_keys));
        // KIVI caches: split_kernel's two passes, quantized full blocks [kb, min(ke, res_begin)) and then
        // the f16 residual tile's keys [max(kb, res_begin), ke); one pass [kb, ke) otherwise.
        const bool kivi = L.has_residual();
        const int64_t res_begin = (len >> shift) << shift;
        const uint8_t* res_tile = kivi ? in.cache->pool() + L.res_tile_offset(in.seqs[size_t(w.batch_index)]->res_slot, P.layer, h)
                                       : nullptr;
        for (int pass = 0; pass < (kivi ? 2 : 1); ++pass) {
            const bool res_pass = pass == 1;
            const int64_t pass_b = !kivi ? kb : res_pass ? std::max(kb, res_begin) : kb;
            const int64_t pass_e = !kivi ? ke : res_pass ? ke : std::min(ke, res_begin);
            const int64_t span = pass_e > pass_b ? pass_e - pass_b : 0;
            const int ntiles = int((span + g.tile_keys - 1) / g.tile_keys);
            for (int i = 0; i < ntiles; ++i) {
                const int64_t t0 = pass_b + int64_t(i) * g.tile_keys;
                for (int j = 0; j < g.tile_keys; ++j) {  // load_tile
                    const int64_t t = t0 + j;
                    const int64_t blk = t < pass_e ? table[t >> shift] : 0;
                    for (int side = 0; side < 2; ++side) {
                        const int32_t fmt = side ? L.v_format : L.k_format;
                        const int64_t off = side ? L.v_data_off : L.k_data_off;
                        float* dst = (side ? vt.data() : kt.data()) + size_t(j) * D;
                        if (llmn::kv_format_is_kivi(fmt) && res_pass) {  // f16 residual rows (load_res_rows)
                            const uint8_t* row = res_tile + (side ? L.res_v_off : L.res_k_off) + (t & mask) * 2 * D;
                            for (int d = 0; d < D; ++d) dst[d] = t < pass_e ? load_elem(row + 2 * d, LLMN_KV_F16) : 0.0f;
                            continue;
                        }
                        if (llmn::kv_format_is_kivi(fmt)) {  // fmaf(code, scale, min): K per channel of the block, V per token group
                            const int32_t bits = llmn::kv_format_bits(fmt);
                            const uint8_t* tile = head_base + blk * L.block_stride;
                            const uint8_t* row = tile + off + (t & mask) * (D * bits / 8);
                            const uint8_t* aux = tile + (side ? L.v_aux_off : L.k_aux_off);
                            const int32_t VG = L.value_group_size, NG = side ? D / VG : 0;
                            for (int d = 0; d < D; ++d) {
                                if (t >= pass_e) {
                                    dst[d] = 0.0f;
                                    continue;
                                }
                                const size_t si = side ? size_t((t & mask) * NG + d / VG) : size_t(d);
                                const size_t mi = side ? size_t((int64_t(L.block_size) * NG) + (t & mask) * NG + d / VG) : size_t(D + d);
                                const float sc = load_elem(aux + 2 * si, LLMN_KV_F16), mn = load_elem(aux + 2 * mi, LLMN_KV_F16);
                                dst[d] = std::fma(float(llmn::kivi_get(row, d, bits)), sc, mn);
                            }
                            continue;
                        }
                        if (!llmn::kv_format_is_q8(fmt)) {
                            for (int c = 0; c < g.chunks; ++c)
                                for (int e = 0; e < ac::kVec; ++e)
                                    dst[c * ac::kVec + e] =
                                        t < pass_e ? load_elem(head_base + ac::kv_chunk_offset(blk, L.block_stride, off, t, mask, D, c) + 2 * e, fmt)
                                               : 0.0f;
                            continue;
                        }
                        const bool fp8 = fmt == LLMN_KV_FP8_E4M3;
                        for (int x = 0; x < g.chunks; ++x) {  // lane x: bytes [8x, 8x + 8) = half of 16-byte chunk x / 2
                            uint32_t w[2] = {0, 0};
                            if (t < pass_e) std::memcpy(w, head_base + ac::kv_row_chunk_offset(blk, L.block_stride, off, t, mask, D, x / 2) + (x % 2) * 8, 8);
                            llmn::kvq_cuda::q8x8_to_f32(fp8, w[0], w[1], dst + x * ac::kVec);
                        }
                        float sc = 0.0f;
                        if (t < pass_e)
                            std::memcpy(&sc, head_base + ac::kv_scale_offset(blk, L.block_stride, side ? L.v_aux_off : L.k_aux_off, t, mask), 4);
                        (side ? vsc : ksc)[size_t(j)] = sc * llmn::kvq_cuda::q8_scale_factor(fp8);
                    }
                }
                for (int z = 0; z < g.z; ++z)  // compute_tile
                    for (int y = 0; y < g.y; ++y)
                        for (int k = 0; k < g.rpt; ++k) {
                            const size_t rk = size_t(y) * g.rpt + k;
                            for (int sb = 0; sb < g.kpt / g.ksub; ++sb) {
                                std::vector<float> sc(static_cast<size_t>(g.ksub));
                                uint32_t vis = 0;
                                float tmax = ac::neg_inf();
                                for (int jj = 0; jj < g.ksub; ++jj) {
                                    const int tt = ac::geo_tile_key(g, z, sb * g.ksub + jj);
                                    const int64_t t = t0 + tt;
                                    std::vector<float> part(size_t(g.lanes), 0.0f);
                                    for (int x = 0; x < g.chunks; ++x)
                                        for (int e = 0; e < ac::kVec; ++e)
                                            part[size_t(x)] = std::fma(qr[(rk * g.lanes + x) * ac::kVec + e],
                                                                       kt[size_t(tt) * D + x * ac::kVec + e], part[size_t(x)]);
                                    float dot = butterfly(part);
                                    if (kq8) dot *= ksc[size_t(tt)];
                                    const float s = ac::score_transform(dot, P.softcap, alibi, slope[rk], t, hi[rk]);
                                    sc[size_t(jj)] = s;
                                    if (t < pass_e && t >= lo[rk] && t <= hi[rk]) {
                                        vis |= 1u << jj;
                                        tmax = std::max(tmax, s);
                                    }
                                }
                                for (int x = 0; x < g.lanes; ++x) {
                                    ac::State& s = st[sidx(z, y, k, x)];
                                    if (tmax > s.m) ac::state_raise_max(s, tmax);
                                    for (int jj = 0; jj < g.ksub; ++jj) {
                                        if (!((vis >> jj) & 1u)) continue;
                                        const int tt = ac::geo_tile_key(g, z, sb * g.ksub + jj);
                                        float vv[ac::kVec] = {};
                                        if (x < g.chunks)
                                            for (int e = 0; e < ac::kVec; ++e) vv[e] = vt[size_t(tt) * D + x * ac::kVec + e];
                                        if (vq8) ac::state_add_scaled(s, sc[size_t(jj)], vsc[size_t(tt)], vv);
                                        else ac::state_add(s, sc[size_t(jj)], vv);
                                    }
                                }
                            }
                        }
            }
        }
        // key-slot merge
        if (g.z > 1) {
            std::vector<float> ms(size_t(g.z) * ROWS), ls(size_t(g.z) * ROWS), os(size_t(g.z) * ROWS * D);
            for (int z = 0; z < g.z; ++z)
                for (int y = 0; y < g.y; ++y) {
                    const int r = ac::geo_row(g, y, 0);
                    const size_t idx = size_t(z) * ROWS + r;
                    ms[idx] = st[sidx(z, y, 0, 0)].m;
                    ls[idx] = st[sidx(z, y, 0, 0)].l;
                    for (int x = 0; x < g.chunks; ++x)
                        for (int e = 0; e < ac::kVec; ++e) os[idx * D + x * ac::kVec + e] = st[sidx(z, y, 0, x)].o[e];
                }
            for (int y = 0; y < g.y; ++y) {
                const int r = ac::geo_row(g, y, 0);
                for (int x = 0; x < g.chunks; ++x)
                    ac::merge_slots(g.z, &ms[size_t(r)], &ls[size_t(r)], ROWS, &os[size_t(r) * D + x * ac::kVec], ROWS * D,
                                    st[sidx(0, y, 0, x)]);
            }
        }
        // finish
        for (int y = 0; y < g.y; ++y)
            for (int k = 0; k < g.rpt; ++k) {
                const int r = ac::geo_row(g, y, k);
                if (r >= rows) continue;
                const int qi = i0 + r / G, hq = h * G + r % G;
                for (int x = 0; x < g.chunks; ++x) {
                    float o[ac::kVec];
                    const float lse = ac::state_finish(st[sidx(0, y, k, x)], o);
                    if (w.n_splits == 1) {
                        for (int e = 0; e < ac::kVec; ++e)
                            out[size_t(ac::qo_offset(w.batch_index, qi, hq, Q, Hq, D) + x * ac::kVec + e)] = to_bits(o[e], in.io_dtype);
                    } else {
                        const int64_t row = ac::ws_row(w.ws_row_base, h, w.n_splits, it.split, R, i0 * G + r);
                        for (int e = 0; e < ac::kVec; ++e) ws_o[size_t(row * D + x * ac::kVec + e)] = o[e];
                        if (x == 0) ws_lse[size_t(row)] = lse;
                    }
                }
            }
    }
    // merge kernel
    for (int pos = 0; pos < plan.num_split_seqs; ++pos)
        for (int h = 0; h < H; ++h) {
            const ac::SeqWork w = plan.work[size_t(pos)];
            const int n = w.n_splits;
            std::vector<float> wt(static_cast<size_t>(n));
            for (int r = 0; r < R; ++r) {
                const int64_t base = ac::ws_row(w.ws_row_base, h, n, 0, R, r);
                const bool any = ac::merge_weights(n, &ws_lse[size_t(base)], R, wt.data());
                const int qi = r / G, hq = h * G + r % G;
                for (int d = 0; d < D; ++d) {
                    const float v = any ? ac::merge_channel(n, wt.data(), &ws_o[size_t(base * D + d)], int64_t(R) * D) : 0.0f;
                    out[size_t(ac::qo_offset(w.batch_index, qi, hq, Q, Hq, D) + d)] = to_bits(v, in.io_dtype);
                }
            }
        }
    res.out.resize(out.size());
    for (size_t i = 0; i < out.size(); ++i) res.out[i] = from_bits(out[i], in.io_dtype);
    return res;
}

// Builds the emulator input from a CPU cache of `Caches`.
EmuInput emu_input(const Caches& cs, size_t c, const std::vector<float>& q, int32_t io_dtype, const llmn_attention_params& p,
                   const std::vector<float>* slopes, int64_t wave_ctas) {
    const Problem& pb = cs.problem();
    EmuInput in;
    auto kc = llmn::lookup<llmn::KvCache>(cs.caches[c], "cache");
    in.cache = kc.get();
    for (int64_t id : cs.ids[c]) {
        const llmn::KvSequence& s = kc->sequence(id, "id");
        in.seqs.push_back(&s);
        in.lengths.push_back(s.length[size_t(p.layer)]);
    }
    in.p = p;
    in.group = pb.G;
    in.io_dtype = io_dtype;
    in.q.resize(q.size());
    for (size_t i = 0; i < q.size(); ++i) in.q[i] = to_bits(q[i], io_dtype);
    if (slopes) in.slopes = *slopes;
    in.wave_ctas = wave_ctas;
    return in;
}

}  // namespace

// ================================================================================================
// CPU-run tests of the planning and arithmetic shared with the kernels
// ================================================================================================

TEST(DecodeAttentionCudaPlan, SplitPartitionMatchesCpuBackend) {
    auto g = rng(101);
    for (int iter = 0; iter < 3000; ++iter) {
        const int32_t bs = 8 << (g() % 6);
        const int32_t q_len = 1 + int32_t(g() % 8);
        const int64_t L = q_len + int64_t(g() % (iter % 10 == 0 ? 40000 : 700));
        const int32_t window = g() % 3 == 0 ? int32_t(1 + g() % 900) : 0;
        const int32_t n = 1 + int32_t(g() % 40);
        int64_t first, end, cf, ce;
        ac::visible_blocks(L, q_len, window, bs, &first, &end);
        llmn::attn_visible_blocks(L, q_len, window, bs, &cf, &ce);
        ASSERT_EQ(first, cf);
        ASSERT_EQ(end, ce);
        const int64_t lo = llmn::attn_first_key(llmn::attn_query_pos(L, q_len, 0), window);
        int64_t expect_begin = lo;
        for (int32_t s = 0; s < n; ++s) {
            int64_t b0, b1, c0, c1, kb, ke;
            ac::split_blocks(first, end, n, s, &b0, &b1);
            llmn::split_block_range(first, end, n, s, &c0, &c1);
            ASSERT_EQ(b0, c0);
            ASSERT_EQ(b1, c1);
            ac::split_keys(L, q_len, window, bs, n, s, &kb, &ke);
            // the CPU driver's item range
            ASSERT_EQ(kb, std::max(lo, c0 * bs));
            ASSERT_EQ(ke, std::min(L, c1 * bs));
            if (ke > kb) {  // non-empty splits tile [lo, L) in order
                ASSERT_EQ(kb, expect_begin) << "L " << L << " n " << n << " s " << s;
                expect_begin = ke;
            }
        }
        ASSERT_EQ(expect_begin, L);
    }
}

TEST(DecodeAttentionCudaPlan, GeometryAndRowChunksCoverEveryRowAndKeyOnce) {
    for (int D : {64, 80, 96, 128, 256}) {
        for (int bucket : {1, 4, 8, 16, 32}) {
            if (bucket > ac::max_rows_bucket(D)) continue;
            const ac::Geometry g = ac::geometry(D, bucket);
            SCOPED_TRACE("D " + std::to_string(D) + " rows " + std::to_string(bucket));
            EXPECT_EQ(g.lanes * g.y * g.z, ac::kThreads);
            EXPECT_GE(g.lanes, g.chunks);
            EXPECT_EQ(32 % g.lanes, 0);  // a row group never straddles a warp
            EXPECT_EQ(g.y * g.rpt, bucket);
            EXPECT_EQ(g.kpt * g.z, g.tile_keys);
            EXPECT_EQ(g.kpt % g.ksub, 0);
            EXPECT_TRUE(g.z == 1 || g.rpt == 1);
            EXPECT_LE(g.smem_bytes, 48 * 1024);
            EXPECT_LE(ac::zmerge_floats(g) * 4, g.smem_bytes);
            EXPECT_LE(g.rpt * 2 * ac::kVec, 64) << "register budget of q + o";
            std::vector<int> seen_rows(size_t(bucket), 0), seen_keys(size_t(g.tile_keys), 0);
            for (int y = 0; y < g.y; ++y)
                for (int k = 0; k < g.rpt; ++k) ++seen_rows[size_t(ac::geo_row(g, y, k))];
            for (int z = 0; z < g.z; ++z)
                for (int j = 0; j < g.kpt; ++j) ++seen_keys[size_t(ac::geo_tile_key(g, z, j))];
            for (int v : seen_rows) EXPECT_EQ(v, 1);
            for (int v : seen_keys) EXPECT_EQ(v, 1);
        }
        for (int G = 1; G <= 16; ++G)
            for (int Q = 1; Q <= 8; ++Q) {
                const ac::RowPlan rp = ac::row_plan(D, G, Q);
                SCOPED_TRACE("D " + std::to_string(D) + " G " + std::to_string(G) + " Q " + std::to_string(Q));
                EXPECT_LE(rp.bucket, ac::max_rows_bucket(D));
                EXPECT_EQ(rp.bucket, ac::rows_bucket(rp.bucket));
                EXPECT_LE(G * rp.q_per_chunk, rp.bucket);  // whole GQA groups per CTA
                EXPECT_GE(rp.chunks * rp.q_per_chunk, Q);
                EXPECT_LT((rp.chunks - 1) * rp.q_per_chunk, Q);
                if (G * Q <= ac::max_rows_bucket(D)) EXPECT_EQ(rp.chunks, 1);
            }
    }
}

TEST(DecodeAttentionCudaPlan, WorkItemsDecodeToEveryTupleOnce) {
    auto g = rng(102);
    for (int iter = 0; iter < 60; ++iter) {
        ac::PlanInput in;
        in.batch = 1 + int32_t(g() % 40);
        std::vector<int64_t> len(static_cast<size_t>(in.batch));
        for (auto& l : len) l = 1 + int64_t(g() % (iter % 3 == 0 ? 20000 : 900));
        int64_t qmax = 8;
        for (auto l : len) qmax = std::min(qmax, l);
        in.q_len = 1 + int32_t(g() % uint64_t(qmax));
        in.lengths = len.data();
        in.block_size = 8 << (g() % 4);
        in.num_kv_heads = 1 + int32_t(g() % 8);
        in.rows = in.q_len * (1 + int32_t(g() % 16));
        in.chunks = 1 + int32_t(g() % 3);
        in.num_splits = g() % 2 ? 0 : 1 + int32_t(g() % 12);
        in.wave_ctas = 132 * (1 + int64_t(g() % 6));
        in.ws_rows = g() % 4 == 0 ? 4096 : ac::workspace_rows(64, in.num_kv_heads);
        const ac::Plan p = ac::make_plan(in);
        std::set<std::tuple<int, int, int, int>> seen;
        for (int64_t item = 0; item < p.num_items; ++item) {
            const ac::Item it = ac::decode_item(p.work.data(), in.batch, in.chunks, int(item));
            ASSERT_GE(it.pos, 0);
            ASSERT_LT(it.pos, in.batch);
            const ac::SeqWork& w = p.work[size_t(it.pos)];
            ASSERT_GE(item, w.item_begin);
            ASSERT_LT(it.head, in.num_kv_heads);
            ASSERT_LT(it.split, w.n_splits);
            ASSERT_LT(it.chunk, in.chunks);
            ASSERT_TRUE(seen.insert({w.batch_index, it.head, it.split, it.chunk}).second);
        }
        int64_t expect = 0;
        for (int32_t b = 0; b < in.batch; ++b) expect += int64_t(in.num_kv_heads) * p.splits[size_t(b)] * in.chunks;
        EXPECT_EQ(int64_t(seen.size()), expect);
        EXPECT_EQ(p.num_items, expect);
    }
}

TEST(DecodeAttentionCudaPlan, SplitPolicy) {
    auto plan = [](std::vector<int64_t> len, int32_t H, int32_t splits, int64_t wave, int32_t q_len = 1, int32_t window = 0,
                   int64_t ws = 1 << 20, int32_t rows = 4) {
        ac::PlanInput in;
        in.batch = int32_t(len.size());
        in.lengths = len.data();
        in.q_len = q_len;
        in.window = window;
        in.block_size = 16;
        in.num_kv_heads = H;
        in.rows = rows;
        in.chunks = 1;
        in.num_splits = splits;
        in.wave_ctas = wave;
        in.ws_rows = ws;
        return ac::make_plan(in);
    };
    const int64_t wave = 132 * 4;
    // A full batch (B x H >= one wave) is never split, whatever the lengths.
    {
        std::vector<int64_t> len(66, 300);
        len[3] = 100000;
        const ac::Plan p = plan(len, 8, 0, wave);
        for (int32_t n : p.splits) EXPECT_EQ(n, 1);
        EXPECT_EQ(p.num_split_seqs, 0);
        EXPECT_EQ(p.ws_rows_used, 0);
    }
    // One long sequence: about one wave of CTAs (rounded down to whole splits); short ones: no split.
    {
        const ac::Plan p = plan({32768}, 8, 0, wave);
        const int64_t ctas = p.num_items;
        EXPECT_GT(p.splits[0], 1);
        EXPECT_LE(p.splits[0], ac::kMaxAutoSplits);
        EXPECT_GE(ctas, wave * 9 / 10) << "fills about a wave";
        EXPECT_LE(ctas, wave + 8);
        EXPECT_GE(32768 / p.splits[0], ac::kMinSplitKeys);
        EXPECT_EQ(plan({300}, 8, 0, wave).splits[0], 1) << "under 2 x kMinSplitKeys keys";
        EXPECT_EQ(plan({511}, 1, 0, wave).splits[0], 1);
        EXPECT_EQ(plan({512}, 1, 0, wave).splits[0], 2);
        EXPECT_EQ(plan({512}, 1, 0, wave, 1, 0, 1 << 20, 4).splits[0], 2);
    }
    // Mixed lengths: longer never gets fewer splits; split sequences come first; ws ranges disjoint.
    {
        std::vector<int64_t> len = {5000, 1, 17, 700, 4096, 2, 1500, 64, 3000, 250};
        const ac::Plan p = plan(len, 2, 0, wave);
        for (size_t a = 0; a < len.size(); ++a)
            for (size_t b = 0; b < len.size(); ++b)
                if (len[a] > len[b]) EXPECT_GE(p.splits[a], p.splits[b]);
        for (int32_t i = 0; i < int32_t(len.size()); ++i) {
            const ac::SeqWork& w = p.work[size_t(i)];
            EXPECT_EQ(w.n_splits > 1, i < p.num_split_seqs);
            EXPECT_EQ(w.length, len[size_t(w.batch_index)]);
            EXPECT_EQ(w.n_splits, p.splits[size_t(w.batch_index)]);
            if (i > 0) EXPECT_GT(w.item_begin, p.work[size_t(i) - 1].item_begin);
            if (w.n_splits > 1) {
                EXPECT_EQ(w.ws_row_base, i == 0 ? 0 : p.work[size_t(i) - 1].ws_row_base + 2 * 4 * p.work[size_t(i) - 1].n_splits);
            } else {
                EXPECT_EQ(w.ws_row_base, -1);
            }
        }
        // deterministic
        const ac::Plan p2 = plan(len, 2, 0, wave);
        EXPECT_EQ(p2.splits, p.splits);
        EXPECT_EQ(0, std::memcmp(p2.work.data(), p.work.data(), p.work.size() * sizeof(ac::SeqWork)));
    }
    // Forced n: min(n, visible blocks), even for a full batch; the window limits visible blocks.
    {
        const ac::Plan p = plan({1, 16, 17, 1000}, 8, 5, wave);
        EXPECT_EQ(p.splits, (std::vector<int32_t>{1, 1, 2, 5}));
        const ac::Plan pw = plan({1000, 1000}, 8, 7, wave, 1, 20);  // 20 keys = blocks 61..62
        EXPECT_EQ(pw.splits, (std::vector<int32_t>{2, 2}));
        EXPECT_EQ(plan({1000}, 8, 1, wave).splits[0], 1);
    }
    // The workspace caps the split counts: rows used never exceed the capacity.
    {
        const ac::Plan p = plan({4000, 4000, 4000}, 8, 200, wave, 4, 0, 1000, 32);
        EXPECT_LE(p.ws_rows_used, 1000);
        EXPECT_EQ(p.splits[0], p.splits[1]);
        EXPECT_GT(p.split_cap, 0);
        // 3 x 8 x 32 x n <= 1000 -> n <= 1: no split possible at all
        EXPECT_EQ(p.splits[0], 1);
        const ac::Plan q = plan({4000, 4000}, 2, 64, wave, 1, 0, 256, 4);  // 2 x 2 x 4 x n <= 256 -> n = 16
        EXPECT_EQ(q.splits, (std::vector<int32_t>{16, 16}));
        EXPECT_LE(q.ws_rows_used, 256);
    }
    EXPECT_EQ(ac::workspace_rows(256, 8), 32768);
    EXPECT_EQ(ac::workspace_rows(1, 1), 32768);
    EXPECT_EQ(ac::workspace_rows(65536, 1024), 262144);
}

TEST(DecodeAttentionCudaPlan, TableFlattening) {
    std::vector<std::vector<int32_t>> tables = {{5, 3, 9}, {7}, {}, {1, 2, 3, 4, 8}};
    auto get = [&](int32_t b) -> const std::vector<int32_t>& { return tables[size_t(b)]; };
    std::vector<int32_t> offs;
    const int64_t need = ac::flatten_tables(4, get, offs, nullptr, 0);
    EXPECT_EQ(need, 9);
    std::vector<int32_t> flat(9, -1);
    EXPECT_EQ(ac::flatten_tables(4, get, offs, flat.data(), 9), 9);
    EXPECT_EQ(offs, (std::vector<int32_t>{0, 3, 4, 4}));
    EXPECT_EQ(flat, (std::vector<int32_t>{5, 3, 9, 7, 1, 2, 3, 4, 8}));
    std::vector<int32_t> small(4, -1);  // too small: never written past capacity
    EXPECT_EQ(ac::flatten_tables(4, get, offs, small.data(), 4), 9);
    EXPECT_EQ(small, (std::vector<int32_t>{5, 3, 9, 7}));
}

// The tensor-core kernel's per-row unit for 8-bit V (q8_unit_step / q8_weight, the kernel's own code):
// o in units of 2^ve stays exact and finite across extreme scale changes.
TEST(DecodeAttentionCudaPlan, Q8UnitStepStaysExactAndFinite) {
    using ac::kQ8NoExp;
    float cb = 0.0f;
    int ve = kQ8NoExp;
    // nothing visible yet: no unit, weights 0
    ac::Q8UnitStep st = ac::q8_unit_step(cb, ve, 1.0f, 0.0f);
    EXPECT_EQ(ve, kQ8NoExp);
    EXPECT_EQ(st.unit, 0.0f);
    // a tile whose largest p x scale is 2^120 (INT8 scale of a ~1e38 f32 row): unit 2^-121, o was 0
    st = ac::q8_unit_step(cb, ve, 1.0f, std::ldexp(1.0f, 120));
    EXPECT_EQ(ve, 121);
    EXPECT_EQ(st.r1, 0.0f);
    EXPECT_EQ(st.unit, std::ldexp(1.0f, -121));
    EXPECT_LT(ac::q8_weight(1.0f, std::ldexp(1.0f, 120), st.unit), 1.0f);
    // o = 0.75 in that unit; the running max jumps by ~97: alpha = 2^-140 (subnormal), next tile's
    // bound 2^-30. The rescale 2^(121 + 19) = 2^140 is past f32: two factors, o exact.
    float o = 0.75f * std::ldexp(1.0f, -140);  // o x alpha, exact (3 x 2^-142)
    st = ac::q8_unit_step(cb, ve, std::ldexp(1.0f, -140), std::ldexp(1.0f, -30));
    EXPECT_EQ(ve, -19);  // cb = max(2^120 x 2^-140, 2^-30) = 2^-20
    ASSERT_TRUE(std::isfinite(st.r1) && std::isfinite(st.r2));
    o = o * st.r1 * st.r2;
    EXPECT_EQ(o, 0.75f);  // the same value, 0.75 x 2^121 x 2^-140 = 0.75 x 2^-19, in the new unit
    // alpha underflowed to 0 (jump > ~104): o is 0 and must stay 0, not 0 x Inf
    st = ac::q8_unit_step(cb, ve, 0.0f, std::ldexp(1.0f, 100));
    EXPECT_EQ(ve, 101);
    st = ac::q8_unit_step(cb, ve, 0.0f, std::ldexp(1.0f, -40));
    EXPECT_EQ(ve, -39);
    EXPECT_EQ(0.0f * st.r1 * st.r2, 0.0f);
    // a masked key (p = 0) with a huge scale against a small unit: 0, not 0 x Inf
    EXPECT_EQ(ac::q8_weight(0.0f, std::ldexp(1.0f, 120), st.unit), 0.0f);
    // a visible key with a huge scale (x unit = 2^139: past f32) and a tiny weight, p x scale = 2^-41
    // <= the bound 2^-40: the exact product, below 1
    const float w = ac::q8_weight(std::ldexp(1.0f, -141), std::ldexp(1.0f, 100), st.unit);
    EXPECT_EQ(w, std::ldexp(1.0f, -2));
    // subnormal bounds: the unit is floored at 2^-100 (2^128 would overflow)
    float cb2 = 0.0f;
    int ve2 = kQ8NoExp;
    st = ac::q8_unit_step(cb2, ve2, 1.0f, std::ldexp(1.0f, -140));
    EXPECT_EQ(ve2, -100);
    EXPECT_EQ(st.unit, std::ldexp(1.0f, 100));
    EXPECT_EQ(ac::q8_weight(0.0f, std::ldexp(1.0f, -140), st.unit), 0.0f);
}

TEST(DecodeAttentionCudaPlan, LseMergeMatchesMergePartialsBitwise) {
    auto g = rng(103);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (int iter = 0; iter < 2000; ++iter) {
        const int n = 1 + int(g() % 40), D = 8;
        const int64_t stride = 3;  // lse of split s at lse[s * stride], like the workspace
        std::vector<float> lse(size_t(n) * stride, 0.0f), o(size_t(n) * D * stride);
        std::vector<const float*> parts(static_cast<size_t>(n));
        std::vector<float> plain(static_cast<size_t>(n));
        for (int s = 0; s < n; ++s) {
            const bool empty = iter % 7 == 0 ? true : g() % 4 == 0;
            lse[size_t(s) * stride] = empty ? -INFINITY : nd(g) * (iter % 5 == 0 ? 30.0f : 1.0f);
            plain[size_t(s)] = lse[size_t(s) * stride];
            for (int d = 0; d < D; ++d) o[size_t(s) * D * stride + d] = empty ? 0.0f : nd(g);
            parts[size_t(s)] = &o[size_t(s) * D * stride];
        }
        std::vector<float> want(static_cast<size_t>(D)), got(static_cast<size_t>(D)), w(static_cast<size_t>(n));
        llmn::merge_partials(n, plain.data(), parts.data(), D, want.data());
        const bool any = ac::merge_weights(n, lse.data(), stride, w.data());
        for (int d = 0; d < D; ++d) got[size_t(d)] = any ? ac::merge_channel(n, w.data(), &o[size_t(d)], int64_t(D) * stride) : 0.0f;
        for (int d = 0; d < D; ++d) {
            ASSERT_FALSE(std::isnan(got[size_t(d)]));
            ASSERT_EQ(got[size_t(d)], want[size_t(d)]) << "n " << n << " d " << d;  // == also equates +0/-0
        }
        if (n == 1 && any)
            for (int d = 0; d < D; ++d) ASSERT_EQ(llmn::f32_bits(got[size_t(d)]), llmn::f32_bits(parts[0][d]));
    }
}

TEST(DecodeAttentionCudaPlan, OnlineSoftmaxStateAndSlotMerge) {
    // Two slots seeing disjoint halves of 6 keys, merged, equal one state seeing all of them.
    const float s[6] = {0.5f, -3.0f, 2.25f, 7.0f, -1.0f, 1.5f};
    float v[6][ac::kVec];
    for (int t = 0; t < 6; ++t)
        for (int e = 0; e < ac::kVec; ++e) v[t][e] = float(t * 10 + e) * 0.125f - 2.0f;
    ac::State all, a, b;
    ac::state_init(all);
    ac::state_init(a);
    ac::state_init(b);
    ac::State empty;
    ac::state_init(empty);
    auto feed = [&](ac::State& st, int t) {
        if (s[t] > st.m) ac::state_raise_max(st, s[t]);
        ac::state_add(st, s[t], v[t]);
    };
    for (int t = 0; t < 6; ++t) feed(all, t);
    for (int t = 0; t < 6; t += 2) feed(a, t);
    for (int t = 1; t < 6; t += 2) feed(b, t);
    const float ms[3] = {a.m, b.m, empty.m}, ls[3] = {a.l, b.l, empty.l};
    float os[3][ac::kVec];
    for (int e = 0; e < ac::kVec; ++e) {
        os[0][e] = a.o[e];
        os[1][e] = b.o[e];
        os[2][e] = 0.0f;
    }
    ac::State m;
    ac::merge_slots(3, ms, ls, 1, &os[0][0], ac::kVec, m);
    float o_all[ac::kVec], o_m[ac::kVec];
    const float lse_all = ac::state_finish(all, o_all), lse_m = ac::state_finish(m, o_m);
    EXPECT_NEAR(lse_all, lse_m, 1e-6);
    double l = 0.0;
    for (int t = 0; t < 6; ++t) l += std::exp(double(s[t]));
    EXPECT_NEAR(lse_all, std::log(l), 1e-5);
    for (int e = 0; e < ac::kVec; ++e) {
        double ref = 0.0;
        for (int t = 0; t < 6; ++t) ref += std::exp(double(s[t])) / l * v[t][e];
        EXPECT_NEAR(o_all[e], ref, 1e-5);
        EXPECT_NEAR(o_m[e], ref, 1e-5);
    }
    // all slots empty -> empty state, lse -inf, zeros (no NaN)
    const float me[2] = {-INFINITY, -INFINITY}, le[2] = {0.0f, 0.0f};
    float oe[2][ac::kVec] = {};
    ac::State z;
    ac::merge_slots(2, me, le, 1, &oe[0][0], ac::kVec, z);
    float oz[ac::kVec];
    EXPECT_EQ(ac::state_finish(z, oz), -INFINITY);
    for (float x : oz) EXPECT_EQ(x, 0.0f);
    // score transform: soft-cap then ALiBi
    EXPECT_FLOAT_EQ(ac::score_transform(3.0f, 0.0f, false, 0.5f, 4, 10), 3.0f);
    EXPECT_FLOAT_EQ(ac::score_transform(3.0f, 0.0f, true, 0.5f, 4, 10), 0.0f);
    EXPECT_FLOAT_EQ(ac::score_transform(30.0f, 5.0f, true, 0.25f, 9, 10), 5.0f * std::tanh(6.0f) - 0.25f);
}

// The emulated kernels (split + merge, every plan shape) against float64 and the CPU backend.
TEST(DecodeAttentionCudaPlan, EmulatedKernelsMatchReferenceAndCpuBackend) {
    Ctx cpu(LLMN_BACKEND_CPU);
    auto g = rng(104);
    struct Case {
        int32_t D, bs, H, G, q_len, window, splits;
        float softcap;
        bool alibi;
        int64_t wave;
        std::vector<int64_t> lengths;
        int32_t io;
        int32_t kf = LLMN_KV_F16, vf = LLMN_KV_F16;  // CPU caches: f16, INT8, E4M3, KIVI INT4/INT2 (mixed)
        int32_t vg = 0;                               // KIVI V: value_group_size (0: 32)
    };
    std::vector<Case> cases = {
        {64, 16, 2, 1, 1, 0, 0, 0.0f, false, 528, {1, 2, 17, 300, quick() ? 900 : 2100}, LLMN_DTYPE_F16},
        {128, 16, 2, 4, 1, 0, 0, 0.0f, false, 528, {1, 15, 16, 33, 700, 1200}, LLMN_DTYPE_F16},
        {128, 32, 1, 4, 4, 0, 3, 0.0f, false, 528, {4, 5, 90, 500}, LLMN_DTYPE_BF16},
        {80, 8, 2, 7, 1, 0, 0, 0.0f, false, 132, {1, 40, 1200}, LLMN_DTYPE_F16},
        {96, 64, 1, 8, 2, 0, 4, 0.0f, false, 528, {2, 130, 400}, LLMN_DTYPE_F16},
        {256, 16, 2, 16, 2, 0, 0, 0.0f, false, 132, {2, 77, 900}, LLMN_DTYPE_F16},   // 32 rows: 2 chunks
        {128, 16, 1, 16, 8, 0, 3, 0.0f, false, 528, {8, 9, 260}, LLMN_DTYPE_F16},    // 128 rows: 4 chunks
        {64, 16, 2, 4, 4, 17, 4, 0.0f, false, 528, {4, 9, 64, 300}, LLMN_DTYPE_F16}, // window
        {64, 32, 2, 2, 3, 0, 2, 20.0f, true, 528, {3, 50, 310}, LLMN_DTYPE_F16},     // soft-cap + ALiBi
        {128, 128, 1, 5, 1, 3, 5, 5.0f, true, 528, {1, 2, 3, 700}, LLMN_DTYPE_F16},  // window 3 + both
        {64, 16, 3, 1, 1, 0, 0, 0.0f, false, 1, {1, 300, 2000}, LLMN_DTYPE_F16},     // "full" device: no split
        {128, 16, 1, 16, 8, 5, 6, 0.0f, false, 528, {8, 40, 700}, LLMN_DTYPE_F16},   // chunks + window: empty chunk ranges
        {64, 8, 2, 7, 8, 12, 1, 10.0f, true, 528, {8, 13, 300}, LLMN_DTYPE_BF16},    // chunks + window, direct output
        // fused 8-bit dequantization (scales per token, K after the dot product, V folded into p)
        {64, 16, 2, 4, 1, 0, 0, 0.0f, false, 528, {1, 17, 300, 1100}, LLMN_DTYPE_F16, LLMN_KV_INT8, LLMN_KV_INT8},
        {128, 16, 2, 4, 2, 0, 3, 0.0f, false, 528, {2, 33, 700}, LLMN_DTYPE_F16, LLMN_KV_FP8_E4M3, LLMN_KV_FP8_E4M3},
        {80, 8, 2, 7, 1, 0, 0, 0.0f, false, 132, {1, 40, 900}, LLMN_DTYPE_BF16, LLMN_KV_INT8, LLMN_KV_F16},
        {96, 32, 1, 8, 2, 0, 4, 0.0f, false, 528, {2, 130, 400}, LLMN_DTYPE_F16, LLMN_KV_F16, LLMN_KV_FP8_E4M3},
        {256, 16, 2, 16, 2, 0, 0, 0.0f, false, 132, {2, 77, 900}, LLMN_DTYPE_F16, LLMN_KV_FP8_E4M3, LLMN_KV_INT8},
        {64, 32, 2, 2, 3, 9, 2, 20.0f, true, 528, {3, 50, 310}, LLMN_DTYPE_F16, LLMN_KV_INT8, LLMN_KV_FP8_E4M3},
        // KIVI INT4/INT2: quantized full blocks, then the f16 residual tile (lengths on and off block edges)
        {64, 16, 2, 4, 1, 0, 0, 0.0f, false, 528, {1, 15, 16, 17, 300, 1100}, LLMN_DTYPE_F16, LLMN_KV_INT4, LLMN_KV_INT4},
        {128, 8, 2, 4, 4, 0, 3, 0.0f, false, 528, {4, 8, 9, 33, 700}, LLMN_DTYPE_F16, LLMN_KV_INT2, LLMN_KV_INT2, 64},
        {80, 32, 2, 7, 1, 0, 0, 0.0f, false, 132, {1, 40, 900}, LLMN_DTYPE_BF16, LLMN_KV_INT4, LLMN_KV_F16},
        {96, 64, 1, 8, 2, 0, 4, 0.0f, false, 528, {2, 130, 400}, LLMN_DTYPE_F16, LLMN_KV_F16, LLMN_KV_INT2, 32},  // 3 groups
        {256, 256, 2, 2, 1, 0, 0, 0.0f, false, 528, {2, 256, 257, 900}, LLMN_DTYPE_F16, LLMN_KV_INT4, LLMN_KV_INT2, 128},
        {64, 16, 2, 2, 3, 9, 2, 20.0f, true, 528, {3, 50, 310}, LLMN_DTYPE_F16, LLMN_KV_INT2, LLMN_KV_INT4},  // window, soft-cap, ALiBi
        {128, 16, 1, 16, 8, 5, 6, 0.0f, false, 528, {8, 40, 700}, LLMN_DTYPE_F16, LLMN_KV_INT4, LLMN_KV_INT4},    // row chunks + window
        {256, 8, 2, 4, 1, 0, 0, 0.0f, false, 528, {1, 8, 9, 1500}, LLMN_DTYPE_F16, LLMN_KV_INT4, LLMN_KV_INT4, 32},  // 8 V groups, bs 8
    };
    for (const Case& cs : cases) {
        Problem pb;
        pb.D = cs.D;
        pb.bs = cs.bs;
        pb.H = cs.H;
        pb.G = cs.G;
        pb.q_len = cs.q_len;
        pb.lengths = cs.lengths;
        pb.outliers = cs.window > 0 || cs.alibi;
        pb.kv_format = cs.kf;
        pb.v_format = cs.vf;
        pb.value_group = cs.vg;
        Caches c(pb, g, {cpu.h});
        ASSERT_FALSE(::testing::Test::HasFatalFailure());
        llmn_attention_params p = params_for(pb, cs.splits);
        p.window = cs.window;
        p.softcap = cs.softcap;
        std::vector<float> slopes(static_cast<size_t>(pb.H * pb.G));
        for (size_t h = 0; h < slopes.size(); ++h) slopes[h] = std::pow(2.0f, -8.0f * float(h + 1) / float(slopes.size()));
        const std::vector<float>* sl = cs.alibi ? &slopes : nullptr;
        const auto q = c.make_q(g, cs.io);
        const EmuResult emu = emulate(emu_input(c, 0, q, cs.io, p, sl, cs.wave));
        int32_t nmax = 1;
        for (int32_t n : emu.plan.splits) nmax = std::max(nmax, n);
        const std::string name = "emulated D " + std::to_string(cs.D) + " G " + std::to_string(cs.G) + " q_len " +
                                 std::to_string(cs.q_len) + " splits " + std::to_string(nmax) + " chunks " +
                                 std::to_string(emu.rows.chunks) + " " + dtype_str(cs.io) +
                                 (cs.kf != LLMN_KV_F16 || cs.vf != LLMN_KV_F16
                                      ? std::string(" ") + llmn::kv_format_name(cs.kf) + "/" + llmn::kv_format_name(cs.vf)
                                      : std::string());
        if (cs.splits == 0 && cs.wave > 1) EXPECT_GT(nmax, 1) << name << ": auto policy should split these";
        const Reference ref = reference(pb, c.kf, c.vf, q, p, sl, nmax, cs.io);
        expect_close(emu.out, ref, pb.D, name);
        // CPU backend on the same cache (f32 q with the same values), then the two against each other.
        std::vector<float> cpu_out;
        ASSERT_EQ(c.run(0, q, LLMN_DTYPE_F32, p, sl, cpu_out), LLMN_STATUS_OK) << last_error();
        const Reference cref = reference(pb, c.kf, c.vf, q, p, sl, 64, LLMN_DTYPE_F32);
        double worst = 0.0;
        for (size_t i = 0; i < cpu_out.size(); ++i) {
            const double bound = ref.bound[i / size_t(pb.D)] + cref.bound[i / size_t(pb.D)];
            ASSERT_LE(std::fabs(double(emu.out[i]) - double(cpu_out[i])), bound) << name << " vs CPU, element " << i;
            worst = std::max(worst, std::fabs(double(emu.out[i]) - double(cpu_out[i])) / bound);
        }
        std::printf("  %-64s vs CPU backend: %.4f of bound\n", name.c_str(), worst);
    }
}

// ================================================================================================
// GPU tests
// ================================================================================================

namespace {

// One CUDA context (+ a CPU context for f16 caches); runs a problem on CUDA with each split setting
// and checks against the float64 reference and, where a CPU cache exists, the CPU backend.
struct GpuHarness {
    Ctx gpu{LLMN_BACKEND_CUDA};
    Ctx cpu{LLMN_BACKEND_CPU};
};

// Keys with huge V (x 1e36, K = 0: score 0) among keys with scores of std ~200 and small V (x 1e-4):
// their weights are below e^-100, so the output is that of the small-V keys. 16 such rows sum to
// < 5e37 (finite in f32 where a kernel adds them before the running max rises); >= 80 random keys
// per sequence keep the max score far above 0.
Problem huge_v_problem(Problem pb) {
    pb.outliers = false;
    pb.k_scale = 200.0f;
    pb.v_scale = 1e-4f;
    pb.big_v = 1e36f;
    pb.lengths = {100, 300, 129};
    return pb;
}

// For problems whose reference bound is loose because a few keys have huge V but negligible weight
// (Problem::big_v): |out - ref| <= 2^-10 max|o| + 1e-7 per row (f16 output rounding and f32 sums over
// the keys that matter).
std::vector<double> tight_bound(const Reference& ref) {
    std::vector<double> b(ref.omax.size());
    for (size_t i = 0; i < b.size(); ++i) b[i] = ref.omax[i] * 0x1p-10 + 1e-7;
    return b;
}

void check_gpu(GpuHarness& hx, const Problem& pb, std::mt19937_64& g, const std::string& name, const std::vector<int32_t>& splits,
               int32_t io_dtype, const llmn_attention_params* custom = nullptr, const std::vector<float>* slopes = nullptr,
               bool tight = false) {
    // a CPU cache exists for f16 / INT8 / E4M3 sides (bf16 caches are CUDA only)
    const int32_t vfmt = pb.v_format >= 0 ? pb.v_format : pb.kv_format;
    const bool with_cpu = pb.kv_format != LLMN_KV_BF16 && vfmt != LLMN_KV_BF16;
    std::vector<llmn_context> ctxs = {hx.gpu.h};
    if (with_cpu) ctxs.push_back(hx.cpu.h);
    Caches c(pb, g, ctxs);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    ASSERT_EQ(c.caches.size(), ctxs.size());
    const auto q = c.make_q(g, io_dtype);
    std::vector<float> cpu_out;
    Reference cref;
    for (int32_t n : splits) {
        llmn_attention_params p = custom ? *custom : params_for(pb);
        p.num_splits = n;
        std::vector<float> out;
        ASSERT_EQ(c.run(0, q, io_dtype, p, slopes, out), LLMN_STATUS_OK) << name << ": " << last_error();
        const Reference ref = reference(pb, c.kf, c.vf, q, p, slopes, n == 0 ? 64 : n, io_dtype);
        const std::string what = name + " [cuda " + dtype_str(io_dtype) + " cache " + llmn::kv_format_name(pb.kv_format) + "/" +
                                 llmn::kv_format_name(vfmt) + ", splits " + (n ? std::to_string(n) : "auto") + "]";
        expect_close(out, ref, pb.D, what);
        if (tight) expect_within_bound(out, ref.o, tight_bound(ref), pb.D, what + " (tight bound)");
        if (with_cpu) {
            if (cpu_out.empty()) {
                llmn_attention_params pc = p;
                pc.num_splits = 0;
                ASSERT_EQ(c.run(1, q, LLMN_DTYPE_F32, pc, slopes, cpu_out), LLMN_STATUS_OK) << last_error();
                cref = reference(pb, c.kf, c.vf, q, pc, slopes, 64, LLMN_DTYPE_F32);
            }
            size_t bad = 0;
            for (size_t i = 0; i < out.size(); ++i) {
                const double bound = ref.bound[i / size_t(pb.D)] + cref.bound[i / size_t(pb.D)];
                if (std::fabs(double(out[i]) - double(cpu_out[i])) > bound && bad++ < 5)
                    ADD_FAILURE() << what << " vs CPU backend: element " << i << " cuda " << out[i] << " cpu " << cpu_out[i]
                                  << " bound " << bound;
            }
            EXPECT_EQ(bad, 0u) << what << " vs CPU backend";
        }
    }
}

}  // namespace

// The CPU backend on huge_v_problem, every ISA, 8-bit caches (f16 / KIVI sides cannot hold 1e36): its
// softmax once floored e^x at FLT_MIN (exp_ps / exp16 clamp the argument at -87.3), and FLT_MIN times
// scales of ~1e34 gave errors of ~500x the output (found while writing the GPU case, 2026-12-07).
TEST(DecodeAttentionCudaPlan, CpuBackendHugeVOnNegligibleKeys) {
    CpuStateGuard guard;
    llmn_context cpu = nullptr;
    ASSERT_EQ(llmn_context_create(LLMN_BACKEND_CPU, 0, &cpu), LLMN_STATUS_OK);
    auto g = rng(230);
    for (int32_t fmt : {int32_t(LLMN_KV_INT8), int32_t(LLMN_KV_FP8_E4M3)})
        for (int32_t q_len : {1, 4}) {
            Problem base;
            base.kv_format = fmt;
            base.H = 2;
            base.G = 4;
            base.D = 128;
            base.q_len = q_len;
            const Problem pb = huge_v_problem(base);
            Caches c(pb, g, {cpu});
            ASSERT_FALSE(::testing::Test::HasFatalFailure());
            const auto q = c.make_q(g, LLMN_DTYPE_F16);
            for (int32_t isa : isas_to_test()) {
                ASSERT_EQ(llmn_set_cpu_isa(isa), LLMN_STATUS_OK);
                for (int32_t splits : {0, 1, 3}) {
                    llmn_attention_params p = params_for(pb, splits);
                    std::vector<float> out;
                    ASSERT_EQ(c.run(0, q, LLMN_DTYPE_F16, p, nullptr, out), LLMN_STATUS_OK) << last_error();
                    const Reference ref = reference(pb, c.kf, c.vf, q, p, nullptr, splits == 0 ? 64 : splits, LLMN_DTYPE_F16);
                    const std::string what = std::string(llmn::kv_format_name(fmt)) + " q_len " + std::to_string(q_len) + " " +
                                             isa_name(isa) + " splits " + std::to_string(splits);
                    expect_close(out, ref, pb.D, what);
                    expect_within_bound(out, ref.o, tight_bound(ref), pb.D, what + " (tight bound)");
                }
            }
        }
    llmn_context_destroy(cpu);
}

TEST(DecodeAttentionCuda, MixedLengthsMatchCpu) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(201);
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 128;
    pb.bs = 16;
    pb.lengths = {1, 2, 3, 15, 16, 17, 64, 65, 100, 513, 1000, 2049, 5000};
    std::shuffle(pb.lengths.begin(), pb.lengths.end(), g);
    check_gpu(hx, pb, g, "mixed lengths q_len 1", {0, 1, 5}, LLMN_DTYPE_F16);
    pb.q_len = 4;
    pb.lengths = {4, 5, 31, 33, 700, 3000};
    check_gpu(hx, pb, g, "mixed lengths q_len 4", {0, 1, 3}, LLMN_DTYPE_F16);
}

#if defined(LLMNATIVE_WITH_CUDA)
// Auto picks the tensor-core kernel for f16 caches at head_dim 64/128 with <= 16 rows, so the other
// tests run it there and the SIMT kernel elsewhere; this one runs BOTH kernels on the same problems
// (including q_len 4 x group 4 = 16 rows, masks, soft-cap, ALiBi, outliers) against the float64
// reference and the CPU backend, and checks that a forced tensor-core path refuses what it cannot do.
struct AttnPathScope {
    explicit AttnPathScope(ac::KernelPath p) { ac::set_kernel_path(p); }
    ~AttnPathScope() { ac::set_kernel_path(ac::KernelPath::Auto); }
};

TEST(DecodeAttentionCuda, SimtAndTensorCoreKernelsBothMatch) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    llmn_cuda_device_info di{};
    LLMN_ASSERT_OK(llmn_get_cuda_device_info(0, &di));
    for (ac::KernelPath path : {ac::KernelPath::Simt, ac::KernelPath::Mma}) {
        if (path == ac::KernelPath::Mma && di.compute_major < 8) {
            std::printf("  tensor-core kernel not checked: it needs sm_80+, the device is sm_%d%d\n", di.compute_major,
                        di.compute_minor);
            continue;
        }
        AttnPathScope scope(path);
        const std::string tag = path == ac::KernelPath::Mma ? "[mma] " : "[simt] ";
        auto g = rng(path == ac::KernelPath::Mma ? 221 : 220);
        // f16 caches: Auto's tensor-core case. INT8 / E4M3 (and one mix) run the tensor-core kernel only when
        // forced: that variant decodes the codes to f16 in shared memory.
        for (int32_t fmt : {int32_t(LLMN_KV_F16), int32_t(LLMN_KV_INT8), int32_t(LLMN_KV_FP8_E4M3)})
        for (int32_t D : {64, 128})
            for (int32_t q_len : {1, 4}) {
                Problem pb;
                pb.kv_format = fmt;
                if (fmt == LLMN_KV_FP8_E4M3 && D == 64) pb.v_format = LLMN_KV_INT8;  // mixed 8-bit sides
                pb.H = 2;
                pb.G = 4;
                pb.D = D;
                pb.bs = D == 64 ? 32 : 16;
                pb.q_len = q_len;
                pb.outliers = q_len == 4;
                pb.lengths = {q_len, 5, 63, 64, 65, 129, 1000, 4097};
                std::shuffle(pb.lengths.begin(), pb.lengths.end(), g);
                const std::string name = tag + "D " + std::to_string(D) + " q_len " + std::to_string(q_len) + " " +
                                         llmn::kv_format_name(fmt);
                check_gpu(hx, pb, g, name, {0, 1, 7}, LLMN_DTYPE_F16);
                if (fmt != LLMN_KV_F16 && q_len == 1) {  // tiny V: per-token scales ~1e-5, p x scale below f16's normals
                    Problem small = pb;
                    small.v_scale = 1e-3f;
                    small.outliers = false;
                    check_gpu(hx, small, g, name + " V x 1e-3", {0, 3}, LLMN_DTYPE_F16);
                    // V ~1e-37: per-token scales are f32 subnormals (< 2^-128); the tensor-core kernel's
                    // power-of-two unit once overflowed to Inf there and 0 x Inf made masked keys NaN.
                    small.v_scale = 1e-37f;
                    check_gpu(hx, small, g, name + " V x 1e-37", {0, 3}, LLMN_DTYPE_F16);
                }
                if (fmt != LLMN_KV_F16 && q_len == 4) {
                    // One large V row (x 2^14) in the last key, which causal masking hides from rows 0..2 of
                    // each token group: the tensor-core kernel once took its f16 unit from the largest V
                    // scale of a warp's 16 keys, masked or not, and rows 0..2 lost precision (host emulation
                    // of the old rule: ~1e-3 relative on sequences of <= 16 keys, over the f16-output bound).
                    Problem big = pb;
                    big.v_last = 16384.0f;
                    big.outliers = false;
                    big.lengths = {4, 5, 9, 16, 17, 33};
                    check_gpu(hx, big, g, name + " last V x 2^14", {0, 1}, LLMN_DTYPE_F16);
                }
                if (fmt != LLMN_KV_F16) {
                    // Huge V (x 1e36, per-token scales ~2^114) on keys whose score is 0 (tokens 0..15 and
                    // the last one) among keys with scores of std ~200 and V x 1e-4: in the tensor-core
                    // kernel one tile's unit bound is ~2^115 and, once the running max has jumped by >~100
                    // (alpha underflows to 0), the next one ~2^-18: the rescale factor ~2^133 was Inf and
                    // 0 x Inf made the output NaN; with q_len 4 the last key is masked for rows 0..2, whose
                    // small unit times its huge scale overflowed too (both found by review, 2026-12-07).
                    // The reference bound scales with max |v| here, so the tight bound checks accuracy.
                    check_gpu(hx, huge_v_problem(pb), g, name + " V x 1e36 on zero-score keys", {0, 1}, LLMN_DTYPE_F16,
                              nullptr, nullptr, true);
                }
                std::vector<float> slopes(size_t(pb.H * pb.G));
                for (size_t h = 0; h < slopes.size(); ++h) slopes[h] = std::pow(2.0f, -8.0f * float(h + 1) / float(slopes.size()));
                llmn_attention_params p = params_for(pb);
                p.window = 70;
                p.softcap = 20.0f;
                check_gpu(hx, pb, g, name + " window 70 softcap 20 alibi", {0, 1, 3}, LLMN_DTYPE_F16, &p, &slopes);
            }
        if (path == ac::KernelPath::Mma) {  // a forced tensor-core path refuses bf16 queries with a clear error
            Problem pb;
            pb.H = 1;
            pb.G = 2;
            pb.D = 128;
            pb.lengths = {40};
            Caches c(pb, g, {hx.gpu.h});
            ASSERT_FALSE(::testing::Test::HasFatalFailure());
            std::vector<float> out;
            EXPECT_EQ(c.run(0, c.make_q(g, LLMN_DTYPE_BF16), LLMN_DTYPE_BF16, params_for(pb), nullptr, out),
                      LLMN_STATUS_UNSUPPORTED);
            EXPECT_NE(last_error().find("tensor-core"), std::string::npos) << last_error();
        }
    }
}
#endif

TEST(DecodeAttentionCuda, EveryHeadDimAndBlockSize) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(202);
    const int32_t dims[] = {64, 80, 96, 128, 256, 80, 96, 256};
    const int32_t sizes[] = {8, 16, 32, 64, 128, 256, 8, 16};
    for (int i = 0; i < 8; ++i) {
        Problem pb;
        pb.D = dims[i];
        pb.bs = sizes[i];
        pb.H = 1 + i % 2;
        pb.G = 2;
        pb.q_len = i % 2 ? 4 : 1;
        pb.lengths = {pb.q_len, 7, pb.bs + 1, 3 * pb.bs + 5, 1200};
        check_gpu(hx, pb, g, "head_dim " + std::to_string(pb.D) + " block " + std::to_string(pb.bs), {0, 1, 3},
                  i % 3 == 2 ? LLMN_DTYPE_BF16 : LLMN_DTYPE_F16);
    }
}

TEST(DecodeAttentionCuda, GqaRatiosAndRowChunks) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(203);
    for (int32_t G : {1, 4, 7, 8, 16}) {
        for (int32_t q_len : {1, 4}) {
            Problem pb;
            pb.H = 2;
            pb.G = G;
            pb.D = G == 7 ? 96 : 128;
            pb.bs = 32;
            pb.q_len = q_len;
            pb.lengths = {q_len, 40, 700, 2500};
            check_gpu(hx, pb, g, "group " + std::to_string(G) + " q_len " + std::to_string(q_len), {0, 1, 3}, LLMN_DTYPE_F16);
        }
    }
    // Rows beyond one CTA (row chunks): 16 x 8 = 128 rows at head_dim 128, 16 x 2 = 32 at 256, 7 x 8 = 56.
    struct C { int32_t D, G, q_len; };
    for (C cs : {C{128, 16, 8}, C{256, 16, 2}, C{64, 7, 8}, C{256, 8, 3}}) {
        Problem pb;
        pb.H = 2;
        pb.G = cs.G;
        pb.D = cs.D;
        pb.bs = 16;
        pb.q_len = cs.q_len;
        pb.lengths = {cs.q_len, 100, 900};
        const std::string name =
            "row chunks D " + std::to_string(cs.D) + " G " + std::to_string(cs.G) + " q_len " + std::to_string(cs.q_len);
        check_gpu(hx, pb, g, name, {0, 1, 4}, LLMN_DTYPE_F16);
        llmn_attention_params p = params_for(pb);  // a window smaller than q_len leaves some split x chunk CTAs empty
        p.window = 5;
        pb.outliers = true;
        check_gpu(hx, pb, g, name + " window 5", {0, 1, 6}, LLMN_DTYPE_F16, &p);
    }
}

TEST(DecodeAttentionCuda, SlidingWindowSoftCapAlibi) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(204);
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 64;
    pb.bs = 16;
    pb.q_len = 4;
    pb.outliers = true;  // huge keys at mask boundaries expose off-by-one masks
    pb.lengths = {4, 9, 64, 200, 900};
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
        for (int32_t q_len : {1, 4}) {
            pb.q_len = q_len;
            p.q_len = q_len;
            check_gpu(hx, pb, g,
                      "window " + std::to_string(cs.window) + " softcap " + std::to_string(cs.softcap) + (cs.alibi ? " alibi" : "") +
                          " q_len " + std::to_string(q_len),
                      {0, 1, 4}, LLMN_DTYPE_F16, &p, cs.alibi ? &slopes : nullptr);
        }
    }
}

TEST(DecodeAttentionCuda, Bf16CachesAndQueries) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(205);
    for (int32_t fmt : {LLMN_KV_F16, LLMN_KV_BF16})
        for (int32_t io : {LLMN_DTYPE_F16, LLMN_DTYPE_BF16}) {
            Problem pb;
            pb.kv_format = fmt;
            pb.H = 2;
            pb.G = 4;
            pb.D = 128;
            pb.bs = 16;
            pb.q_len = 2;
            pb.outliers = true;
            pb.lengths = {2, 70, 1500};
            check_gpu(hx, pb, g, std::string("cache ") + (fmt == LLMN_KV_BF16 ? "bf16" : "f16"), {0, 1, 4}, io);
        }
}

// |split - nosplit| <= split_bound (f32 level, see the header) + one output ulp.
TEST(DecodeAttentionCuda, SplitMatchesNoSplitWithinRounding) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(206);
    for (int32_t io : {LLMN_DTYPE_F16, LLMN_DTYPE_BF16}) {
        Problem pb;
        pb.H = 2;
        pb.G = 8;
        pb.D = 128;
        pb.bs = 16;
        pb.q_len = 1;
        pb.outliers = true;
        pb.lengths = {1, 300, 4000};
        Caches c(pb, g, {hx.gpu.h});
        ASSERT_FALSE(::testing::Test::HasFatalFailure());
        const auto q = c.make_q(g, io);
        std::vector<float> base;
        ASSERT_EQ(c.run(0, q, io, params_for(pb, 1), nullptr, base), LLMN_STATUS_OK) << last_error();
        for (int32_t n : {2, 3, 8, 64, 250}) {
            std::vector<float> out;
            ASSERT_EQ(c.run(0, q, io, params_for(pb, n), nullptr, out), LLMN_STATUS_OK) << last_error();
            const Reference ref = reference(pb, c.kf, c.vf, q, params_for(pb, n), nullptr, n, io);
            double worst = 0.0;
            for (size_t i = 0; i < out.size(); ++i) {
                const size_t row = i / size_t(pb.D);
                const double bound = ref.split_bound[row] + 2.0 * half_ulp_rel(io) * ref.omax[row] + 6e-8;
                const double diff = std::fabs(double(out[i]) - double(base[i]));
                ASSERT_LE(diff, bound) << "splits " << n << " element " << i;
                worst = std::max(worst, diff / bound);
            }
            std::printf("  split %3d vs 1 (%s): %.4f of bound\n", n, dtype_str(io), worst);
        }
    }
}

TEST(DecodeAttentionCuda, BitwiseRepeatableAndAliasedOutput) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(207);
    Problem pb;
    pb.H = 4;
    pb.G = 4;
    pb.D = 128;
    pb.bs = 16;
    pb.q_len = 2;
    pb.lengths = {2, 33, 777, 3001, 5000};
    Caches c(pb, g, {hx.gpu.h});
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    const auto q = c.make_q(g, LLMN_DTYPE_F16);
    for (int32_t n : {0, 1, 7}) {
        std::vector<float> o1, o2, o3;
        std::vector<uint8_t> b1, b2, b3;
        ASSERT_EQ(c.run(0, q, LLMN_DTYPE_F16, params_for(pb, n), nullptr, o1, &b1), LLMN_STATUS_OK) << last_error();
        for (int rep = 0; rep < 3; ++rep) {
            ASSERT_EQ(c.run(0, q, LLMN_DTYPE_F16, params_for(pb, n), nullptr, o2, &b2), LLMN_STATUS_OK) << last_error();
            EXPECT_EQ(b1, b2) << "splits " << n << " repetition " << rep;
        }
        // out == q: every CTA reads its queries before anything is written (and merges run after)
        ASSERT_EQ(c.run(0, q, LLMN_DTYPE_F16, params_for(pb, n), nullptr, o3, &b3, nullptr, true), LLMN_STATUS_OK)
            << last_error();
        EXPECT_EQ(b1, b3) << "splits " << n << " with out aliasing q";
    }
}

// The device block-table mirror follows appends that allocate blocks, forks, copy-on-write,
// truncation and changes of the batch (same tables version, different sequences).
TEST(DecodeAttentionCuda, BlockTableMirrorFollowsTheCache) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(208);
    Problem pb;
    pb.H = 2;
    pb.G = 4;
    pb.D = 64;
    pb.bs = 16;
    pb.q_len = 1;
    pb.layers = 1;
    pb.layer = 0;
    pb.lengths = {200, 37};
    Caches c(pb, g, {hx.gpu.h});
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    auto check_now = [&](const std::string& what, const std::vector<int64_t>* subset = nullptr) {
        c.refresh();
        Problem cur = c.problem();
        std::vector<std::vector<float>> kf = c.kf, vf = c.vf;
        if (subset) {  // reorder the reference to the subset's order
            std::vector<int64_t> len;
            std::vector<std::vector<float>> k2, v2;
            for (int64_t id : *subset) {
                const size_t b = size_t(std::find(c.ids[0].begin(), c.ids[0].end(), id) - c.ids[0].begin());
                len.push_back(cur.lengths[b]);
                k2.push_back(kf[b]);
                v2.push_back(vf[b]);
            }
            cur.lengths = len;
            kf = k2;
            vf = v2;
        }
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> q(size_t(cur.lengths.size()) * cur.q_len * cur.H * cur.G * cur.D);
        for (auto& x : q) x = round_to(nd(g), LLMN_DTYPE_F16);
        for (int32_t n : {0, 1, 3}) {
            std::vector<float> out;
            ASSERT_EQ(c.run(0, q, LLMN_DTYPE_F16, params_for(cur, n), nullptr, out, nullptr, subset), LLMN_STATUS_OK)
                << last_error();
            expect_close(out, reference(cur, kf, vf, q, params_for(cur, n), nullptr, n ? n : 64, LLMN_DTYPE_F16), cur.D,
                         what + " splits " + std::to_string(n));
        }
    };
    check_now("initial");
    c.append_random(g, 0, 0, 200, 30);  // crosses into new blocks (tables version moves)
    c.append_random(g, 1, 0, 37, 2);    // same block (version unchanged for this one)
    check_now("after appends");
    int64_t f1 = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_fork_sequence(c.caches[0], c.ids[0][0], &f1));
    LLMN_ASSERT_OK(llmn_kv_cache_truncate_sequence(c.caches[0], f1, 100));  // shared block 6 becomes partial
    c.ids[0].push_back(f1);
    c.append_random(g, 2, 0, 100, 45);  // copy-on-write of the shared block, then new blocks
    check_now("after fork + truncate + copy-on-write");
    const std::vector<int64_t> subset = {f1, c.ids[0][0]};  // different batch, same tables version
    check_now("subset batch", &subset);
    check_now("full batch again");
}

TEST(DecodeAttentionCuda, LargeBatchWritesDirectly) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(209);
    Problem pb;
    pb.H = 8;
    pb.G = 4;
    pb.D = 128;
    pb.bs = 16;
    pb.q_len = 1;
    pb.layers = 1;
    pb.layer = 0;
    pb.max_batch = 256;
    for (int i = 0; i < (quick() ? 64 : 256); ++i) pb.lengths.push_back(1 + int64_t(g() % 600));
    check_gpu(hx, pb, g, "batch " + std::to_string(pb.lengths.size()), {0, 2}, LLMN_DTYPE_F16);
}

TEST(DecodeAttentionCuda, RejectsMixedKvFormats) {
    LLMN_REQUIRE_CUDA();
    Ctx gpu(LLMN_BACKEND_CUDA);
    llmn_kv_cache_desc d{};
    d.num_layers = 1;
    d.num_kv_heads = 1;
    d.head_dim = 64;
    d.block_size = 16;
    d.k_format = LLMN_KV_F16;
    d.v_format = LLMN_KV_BF16;
    d.capacity_tokens = 64;
    llmn_kv_cache kc = nullptr;
    LLMN_ASSERT_OK(llmn_kv_cache_create(gpu.h, &d, &kc));
    int64_t id = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(kc, &id));
    {
        Buf k(gpu.h, LLMN_DTYPE_F32, 64), v(gpu.h, LLMN_DTYPE_F32, 64);
        std::vector<float> ones(64, 1.0f);
        llmn_buffer_upload(k.h, 0, ones.data(), 64);
        llmn_buffer_upload(v.h, 0, ones.data(), 64);
        LLMN_ASSERT_OK(llmn_kv_cache_append(kc, id, 0, k.h, v.h, 1));
        Buf q(gpu.h, LLMN_DTYPE_F16, 64), o(gpu.h, LLMN_DTYPE_F16, 64);
        llmn_attention_params p{};
        p.num_q_heads = 1;
        p.q_len = 1;
        p.scale = 0.125f;
        LLMN_EXPECT_STATUS(llmn_decode_attention(gpu.h, kc, &id, 1, q.h, nullptr, o.h, &p), LLMN_STATUS_UNSUPPORTED);
        EXPECT_NE(last_error().find("k_format"), std::string::npos) << last_error();
    }
    llmn_kv_cache_destroy(kc);
}

TEST(DecodeAttentionCuda, Quantized8BitCachesMatchReferenceAndCpu) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(212);
    struct Case {
        int32_t kf, vf, D, bs, G, q_len;
    };
    // same-format, mixed 8-bit, and 8-bit with a 16-bit side (bf16 sides have no CPU twin)
    for (Case cs : {Case{LLMN_KV_INT8, LLMN_KV_INT8, 128, 16, 4, 1}, Case{LLMN_KV_FP8_E4M3, LLMN_KV_FP8_E4M3, 64, 8, 2, 4},
                    Case{LLMN_KV_INT8, LLMN_KV_FP8_E4M3, 80, 32, 8, 1}, Case{LLMN_KV_FP8_E4M3, LLMN_KV_INT8, 96, 16, 1, 2},
                    Case{LLMN_KV_INT8, LLMN_KV_F16, 256, 16, 16, 1}, Case{LLMN_KV_F16, LLMN_KV_FP8_E4M3, 128, 64, 4, 8},
                    Case{LLMN_KV_FP8_E4M3, LLMN_KV_BF16, 64, 16, 4, 1}, Case{LLMN_KV_BF16, LLMN_KV_INT8, 128, 16, 2, 2}}) {
        Problem pb;
        pb.H = 2;
        pb.G = cs.G;
        pb.D = cs.D;
        pb.bs = cs.bs;
        pb.q_len = cs.q_len;
        pb.kv_format = cs.kf;
        pb.v_format = cs.vf;
        pb.outliers = true;
        pb.lengths = {std::max(1, cs.q_len), 17, 130, 900, 2500};
        for (int32_t io : {LLMN_DTYPE_F16, LLMN_DTYPE_BF16})
            check_gpu(hx, pb, g, std::string("8-bit ") + llmn::kv_format_name(cs.kf) + "/" + llmn::kv_format_name(cs.vf), {0, 1, 4}, io);
    }
}

// KIVI INT4/INT2 sides (alone and mixed with f16/bf16): quantized full blocks and the f16 residual
// tile in one call, against the float64 reference on the cache's dequantized read-back and against the
// CPU backend on a CPU cache with the same appends (same bytes: KvCacheCuda.KiviAppendTruncateForkMatchCpuCacheBytes).
// The dequantization is code * scale + min in both backends (the product is exact), so the f16 bounds hold.
TEST(DecodeAttentionCuda, KiviCachesMatchReferenceAndCpu) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(214);
    struct Case {
        int32_t kf, vf, D, bs, G, q_len, vg;
    };
    for (Case cs : {Case{LLMN_KV_INT4, LLMN_KV_INT4, 128, 16, 4, 1, 32}, Case{LLMN_KV_INT2, LLMN_KV_INT2, 64, 8, 2, 4, 64},
                    Case{LLMN_KV_INT4, LLMN_KV_F16, 80, 32, 8, 1, 0},  // head_dim 80: K only (no V group divides it)
                    Case{LLMN_KV_INT2, LLMN_KV_INT4, 96, 16, 1, 2, 32}, Case{LLMN_KV_INT4, LLMN_KV_F16, 256, 256, 16, 1, 0},
                    Case{LLMN_KV_F16, LLMN_KV_INT2, 128, 64, 4, 8, 128}, Case{LLMN_KV_INT4, LLMN_KV_BF16, 64, 16, 4, 1, 0},
                    Case{LLMN_KV_BF16, LLMN_KV_INT4, 128, 16, 7, 1, 64},
                    // 8 V groups (head_dim 256, group 32) and 16-key tiles over blocks of 8 (review, 2026-12-07)
                    Case{LLMN_KV_INT4, LLMN_KV_INT4, 256, 8, 4, 1, 32}}) {
        Problem pb;
        pb.H = 2;
        pb.G = cs.G;
        pb.D = cs.D;
        pb.bs = cs.bs;
        pb.q_len = cs.q_len;
        pb.kv_format = cs.kf;
        pb.v_format = cs.vf;
        pb.value_group = cs.vg;
        pb.outliers = true;
        // lengths on a block edge (no residual rows), one past it, and long sequences that split
        pb.lengths = {std::max(1, cs.q_len), int64_t(cs.bs), int64_t(cs.bs) + 1, 130, 900, 2500};
        for (int32_t io : {LLMN_DTYPE_F16, LLMN_DTYPE_BF16})
            check_gpu(hx, pb, g, std::string("KIVI ") + llmn::kv_format_name(pb.kv_format) + "/" + llmn::kv_format_name(pb.v_format),
                      {0, 1, 4}, io);
        // window + soft-cap on the same shapes
        llmn_attention_params p = params_for(pb);
        p.window = 3 * cs.bs / 2 + 1;
        p.softcap = 30.0f;
        check_gpu(hx, pb, g, "KIVI window + soft-cap", {0, 3}, LLMN_DTYPE_F16, &p);
    }
}

// KIVI and 8-bit sides are not mixed on CUDA (the CPU backend reads those caches).
TEST(DecodeAttentionCuda, RejectsKiviWith8BitSide) {
    LLMN_REQUIRE_CUDA();
    Ctx gpu(LLMN_BACKEND_CUDA);
    llmn_kv_cache_desc d{};
    d.num_layers = 1;
    d.num_kv_heads = 1;
    d.head_dim = 64;
    d.block_size = 16;
    d.k_format = LLMN_KV_INT4;
    d.v_format = LLMN_KV_INT8;
    d.capacity_tokens = 64;
    llmn_kv_cache kc = nullptr;
    LLMN_ASSERT_OK(llmn_kv_cache_create(gpu.h, &d, &kc));
    int64_t id = 0;
    LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(kc, &id));
    {
        Buf k(gpu.h, LLMN_DTYPE_F32, 64), v(gpu.h, LLMN_DTYPE_F32, 64);
        std::vector<float> ones(64, 1.0f);
        llmn_buffer_upload(k.h, 0, ones.data(), 64);
        llmn_buffer_upload(v.h, 0, ones.data(), 64);
        LLMN_ASSERT_OK(llmn_kv_cache_append(kc, id, 0, k.h, v.h, 1));
        Buf q(gpu.h, LLMN_DTYPE_F16, 64), o(gpu.h, LLMN_DTYPE_F16, 64);
        llmn_attention_params p{};
        p.num_q_heads = 1;
        p.q_len = 1;
        p.scale = 0.125f;
        LLMN_EXPECT_STATUS(llmn_decode_attention(gpu.h, kc, &id, 1, q.h, nullptr, o.h, &p), LLMN_STATUS_UNSUPPORTED);
        EXPECT_NE(last_error().find("k_format LLMN_KV_INT4 and v_format LLMN_KV_INT8"), std::string::npos) << last_error();
    }
    llmn_kv_cache_destroy(kc);
}

TEST(DecodeAttentionCuda, AlibiSlopesAreReadFromTheDeviceBufferAndValidated) {
    LLMN_REQUIRE_CUDA();
    GpuHarness hx;
    auto g = rng(213);
    Problem pb;
    pb.H = 2;
    pb.G = 2;
    pb.D = 64;
    pb.lengths = {5, 300};
    Caches c(pb, g, {hx.gpu.h});
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    const auto q = c.make_q(g, LLMN_DTYPE_F16);
    const llmn_attention_params p = params_for(pb);
    // two different slope sets through the same call path give their own references
    for (float base : {-8.0f, -2.0f}) {
        std::vector<float> slopes(4);
        for (size_t h = 0; h < slopes.size(); ++h) slopes[h] = std::pow(2.0f, base * float(h + 1) / 4.0f);
        std::vector<float> out;
        ASSERT_EQ(c.run(0, q, LLMN_DTYPE_F16, p, &slopes, out), LLMN_STATUS_OK) << last_error();
        expect_close(out, reference(pb, c.kf, c.vf, q, p, &slopes, 64, LLMN_DTYPE_F16), pb.D, "alibi base " + std::to_string(base));
    }
    // a non-finite slope is rejected (the stream is not capturing) and nothing is written
    for (float bad : {std::nanf(""), INFINITY}) {
        std::vector<float> slopes = {0.5f, 0.25f, bad, 0.125f};
        std::vector<float> out;
        EXPECT_EQ(c.run(0, q, LLMN_DTYPE_F16, p, &slopes, out), LLMN_STATUS_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("alibi_slopes[2] must be finite"), std::string::npos) << last_error();
        for (float o : out) ASSERT_TRUE(std::isnan(o)) << "output written by a rejected call";
    }
}
