// The CUDA KIVI block codec (kernels/kv_cache/kv_kivi_cuda.cuh), checked on the CPU: the host+device
// functions the append kernel runs are compiled here by the host compiler and composed exactly as the
// kernel composes them (pieces staged from the block's rows, phase 1 over every statistic, phase 2
// over every output byte, each work item writing only its own bytes). The result must be the bytes of
// kv_kivi.hpp's kivi_quantize_k_block / kivi_quantize_v_block: codes, f16 scales and f16 minimums,
// for every block size, head_dim and value group, INT4 and INT2, on Gaussian data with outlier
// channels, constant channels and groups (scale 0), subnormal-only ranges, signed zeros, values near
// the f16 limit and exact ties of the rounding.
// Also: the integer f32 -> f16 conversion equals numeric.hpp's f32_to_f16 on every exponent; and a
// whole launch of the append's quantize kernel, emulated serially on a host copy of a CPU cache's
// pool with the kernel's own CTA mapping and staging functions (kivi_cta, kivi_stage_elem) and its
// launch plan, writes the bytes the CPU cache's append wrote (QuantizeLaunchOnHostPoolMatchesCpuCache).
// What this cannot check: shared memory, synchronisation and the launches themselves on a device
// (test_kv_cache_cuda.cpp, GPU only).
#include "core/error.hpp"
#include "core/numeric.hpp"
#include "kernels/kv_cache/kv_cache.hpp"
#include "kernels/kv_cache/kv_kivi.hpp"
#include "kernels/kv_cache/kv_kivi_cuda.cuh"
#include "kv_test_util.hpp"
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

namespace {

// kivi_quantize_kernel's skeleton with the grid and the threads run serially (kv_append.cu): every
// CTA of the launch, each piece staged, then phase 1 and phase 2 over all their work items.
void run_quantize_launch(const kc::KiviQuantArgs& a, uint32_t grid_x, uint32_t grid_y) {
    std::vector<uint16_t> stage(kc::kKiviPieceElems);
    std::vector<float> sc(kc::kKiviPieceStats), mn(kc::kKiviPieceStats);
    for (uint32_t by = 0; by < grid_y; ++by)
        for (uint32_t bx = 0; bx < grid_x; ++bx) {
            const kc::KiviCta c = kc::kivi_cta(a, bx, by);
            for (int32_t pi = 0; pi < kc::kivi_num_pieces(c.value, a.block_size, a.dim); ++pi) {
                const kc::KiviPiece pc = kc::kivi_piece(c.value, a.block_size, a.dim, pi);
                for (int32_t e = 0; e < pc.rows * pc.cols; ++e) stage[size_t(e)] = kc::kivi_stage_elem(a, c, pc, e);
                for (int32_t s = 0; s < kc::kivi_piece_num_stats(c.value, pc, a.group); ++s)
                    kc::kivi_piece_stat(c.value, c.format, pc, stage.data(), s, a.block_size, a.dim, a.group, c.aux, sc.data(),
                                        mn.data());
                for (int32_t e = 0; e < kc::kivi_piece_num_bytes(c.format, pc); ++e)
                    kc::kivi_piece_byte(c.value, c.format, pc, stage.data(), e, a.dim, a.group, sc.data(), mn.data(), c.data);
            }
        }
}

}  // namespace

// A CPU cache appends (its path: f16 rows into the residual, quantized when a block fills); before
// each append a copy of its pool plays the device pool, and the CUDA append's quantize launches
// (kv_append.cu's plan: blocks [old_len / bs, new_len / bs) in launches of 128, grid x = blocks x
// heads, grid y = KIVI sides, the arguments filled as kv_cuda_write_append fills them) run on the copy.
// Every block the append filled must then hold the CPU cache's bytes. Covers the first block's rows
// coming from the residual, appends crossing several launches, f32 and f16 inputs, two layers, mixed
// caches, scattered physical blocks.
TEST(KvKiviCuda, QuantizeLaunchOnHostPoolMatchesCpuCache) {
    auto g = rng(7304);
    struct Case {
        int32_t kf, vf, H, D, bs, group;
    };
    int blocks_checked = 0;
    for (Case cs : {Case{LLMN_KV_INT4, LLMN_KV_INT4, 2, 128, 16, 32}, Case{LLMN_KV_INT2, LLMN_KV_INT2, 3, 64, 8, 64},
                    Case{LLMN_KV_INT4, LLMN_KV_F16, 2, 80, 32, 0}, Case{LLMN_KV_F16, LLMN_KV_INT2, 1, 256, 64, 128},
                    Case{LLMN_KV_INT2, LLMN_KV_INT4, 2, 96, 256, 32}, Case{LLMN_KV_INT8, LLMN_KV_INT4, 1, 256, 128, 32}}) {
        const std::string name = std::string(fmt_name(cs.kf)) + "/" + fmt_name(cs.vf) + " D " + std::to_string(cs.D) + " bs " +
                                 std::to_string(cs.bs);
        SCOPED_TRACE(name);
        Ctx ctx;
        llmn_kv_cache_desc d = kv_desc(2, cs.H, cs.D, cs.bs, cs.kf, cs.vf, 4096, 2, cs.group);
        llmn_kv_cache h = nullptr;
        LLMN_ASSERT_OK(llmn_kv_cache_create(ctx.h, &d, &h));
        auto cache = llmn::lookup<llmn::KvCache>(h, "cache");
        cache->debug_shuffle_free_list(5);
        const llmn::KvLayout& L = cache->layout();
        int64_t id = 0;
        LLMN_ASSERT_OK(llmn_kv_cache_add_sequence(h, &id));
        const int32_t bs = cs.bs, HD = cs.H * cs.D;
        const std::vector<int32_t> chunks = {bs - 3, 5, 1, bs == 8 ? 1030 : 2 * bs + 7, bs, 3, bs == 256 ? 700 : 9 * bs - 1};
        for (size_t ci = 0; ci < chunks.size(); ++ci)
            for (int32_t layer = 0; layer < 2; ++layer) {
                const int32_t n = layer == 0 ? chunks[ci] : chunks[chunks.size() - 1 - ci];
                const int32_t dtype = (ci + size_t(layer)) % 2 ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32;
                const llmn::KvSequence& s = cache->sequence(id, "id");
                const int64_t old_len = s.length[size_t(layer)], new_len = old_len + n;
                std::vector<uint8_t> pool(cache->pool(), cache->pool() + L.pool_bytes);  // "device" pool before the append
                std::vector<float> kf = gaussian(g, size_t(n) * HD, 1.0f), vf = gaussian(g, size_t(n) * HD, 1.0f);
                for (size_t i = 0; i < kf.size(); i += 41) kf[i] *= 200.0f;  // outliers
                std::vector<uint16_t> kh(kf.size()), vh(vf.size());
                for (size_t i = 0; i < kf.size(); ++i) {
                    kh[i] = llmn::f32_to_f16(kf[i]);
                    vh[i] = llmn::f32_to_f16(vf[i]);
                }
                {
                    Buf kb(ctx.h, dtype, int64_t(n) * HD), vb(ctx.h, dtype, int64_t(n) * HD);
                    if (dtype == LLMN_DTYPE_F32) {
                        kb.upload(kf);
                        vb.upload(vf);
                    } else {
                        kb.upload(kh);
                        vb.upload(vh);
                    }
                    LLMN_ASSERT_OK(llmn_kv_cache_append(h, id, layer, kb.h, vb.h, n));
                }
                // the launches kv_cuda_write_append issues, on the copy
                const int64_t full_end = new_len / bs * bs;
                kc::KiviQuantArgs q{};
                q.layer_base = pool.data() + int64_t(layer) * L.layer_stride;
                q.block_stride = L.block_stride;
                q.head_stride = L.head_stride;
                q.data_off[0] = L.k_data_off;
                q.data_off[1] = L.v_data_off;
                q.aux_off[0] = L.k_aux_off;
                q.aux_off[1] = L.v_aux_off;
                q.format[0] = L.k_format;
                q.format[1] = L.v_format;
                q.res_layer = pool.data() + L.res_tile_offset(s.res_slot, layer, 0);
                q.res_head_stride = L.res_head_stride;
                q.res_off[0] = L.res_k_off;
                q.res_off[1] = L.res_v_off;
                q.src[0] = dtype == LLMN_DTYPE_F32 ? static_cast<const void*>(kf.data()) : kh.data();
                q.src[1] = dtype == LLMN_DTYPE_F32 ? static_cast<const void*>(vf.data()) : vh.data();
                q.dtype[0] = q.dtype[1] = dtype;
                q.heads = cs.H;
                q.dim = cs.D;
                q.block_size = bs;
                q.group = cs.group;
                q.old_len = old_len;
                uint32_t sides = 0;
                if (L.k_kivi()) q.side_of[sides++] = 0;
                if (L.v_kivi()) q.side_of[sides++] = 1;
                for (int64_t j0 = old_len / bs, j_end = full_end / bs; j0 < j_end; j0 += kc::kKiviBlocksPerLaunch) {
                    const int64_t nb = std::min<int64_t>(kc::kKiviBlocksPerLaunch, j_end - j0);
                    for (int64_t j = 0; j < nb; ++j) q.blocks[j] = s.blocks[size_t(j0 + j)];
                    q.block0 = j0;
                    run_quantize_launch(q, uint32_t(nb * cs.H), sides);
                }
                for (int64_t j = old_len / bs; j < full_end / bs; ++j)
                    for (int32_t hh = 0; hh < cs.H; ++hh)
                        for (int side = 0; side < 2; ++side) {
                            const int32_t fmt = side ? L.v_format : L.k_format;
                            if (!llmn::kv_format_is_kivi(fmt)) continue;
                            const int64_t tile = L.tile_offset(layer, s.blocks[size_t(j)], hh);
                            const int64_t data = side ? L.v_data_off : L.k_data_off, aux = side ? L.v_aux_off : L.k_aux_off;
                            const int64_t rb = side ? L.v_row_bytes : L.k_row_bytes;
                            const int64_t ab = llmn::kv_aux_bytes(fmt, side == 1, bs, cs.D, cs.group);
                            ASSERT_EQ(0, std::memcmp(pool.data() + tile + data, cache->pool() + tile + data, size_t(rb * bs)))
                                << "codes: layer " << layer << " block " << j << " head " << hh << " side " << side;
                            ASSERT_EQ(0, std::memcmp(pool.data() + tile + aux, cache->pool() + tile + aux, size_t(ab)))
                                << "aux: layer " << layer << " block " << j << " head " << hh << " side " << side;
                            ++blocks_checked;
                        }
            }
        llmn_kv_cache_destroy(h);
    }
    EXPECT_GT(blocks_checked, 1000);
}
