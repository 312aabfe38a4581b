// The KIVI INT4 / INT2 block codec of kv_kivi.hpp as host+device inline functions: what the CUDA
// append kernel (kv_append.cu) runs when a block fills, written so that the CPU-only test
// (native/tests/test_kv_kivi_cuda.cpp, a plain .cpp) runs the very same source and compares it with
// kivi_quantize_k_block / kivi_quantize_v_block byte for byte.
//
// Why the codec is cut into "stats" and "bytes": a CUDA thread must own whole output bytes (2 or 4
// codes share a byte; the CPU codec ORs them in, threads would race). So a block is quantized in two
// phases over a PIECE of the block staged as f16 in shared memory:
//   1. one work item per statistic: K one channel over the piece's rows (the piece holds all bs rows),
//      V one (token, group); it writes the f16 scale and minimum to the tile's aux section and leaves
//      the f32 scale and minimum for phase 2 (shared memory);
//   2. one work item per output byte (token, byte column): the 8/bits codes of that byte.
// Why pieces: a block is up to bs x D = 256 x 256 f16 = 128 KiB, beyond the 48 KiB of static shared
// memory; instead of opting in to large dynamic shared memory (arch dependent: 227 KiB on sm_90, 99 KiB
// on sm_86), a CTA walks the block in rectangles of at most kKiviPieceElems f16 values (32 KiB):
// K needs whole columns (a channel's statistic spans the block's rows), so K pieces are all bs rows x a
// slab of channels; V statistics live inside one row, so V pieces are a slab of rows x all channels
// (whole groups). A piece's column count is a multiple of 8/bits (a byte never straddles pieces).
//
// Bit-exactness with kv_kivi.hpp: min/max are comparisons (kivi_min/kivi_max, the same tie rule, so the
// stored minimum has the same sign of zero); the scale is computed in double with the same round-up
// step (device double arithmetic is IEEE round-to-nearest, as on the host); f32 -> f16 is an integer
// round-to-nearest-even (f32_to_f16_bits, checked against numeric.hpp's f32_to_f16 by the test); the
// code is (x - min) / scale in f32 (the division spelled __fdiv_rn on the device so --use_fast_math
// could not make it approximate; x - min of two f16 values never is subnormal in f32, so flushing
// denormals could not change it either) rounded half away from zero (roundf on both sides).
// No CUDA header of its own (kv_quant_cuda.cuh includes cuda_fp16.h only under nvcc), so a plain .cpp
// compiles it.
#pragma once
#include "kv_quant_cuda.cuh"

#include <llmnative/llmnative.h>

#include <math.h>

#include <cstdint>

namespace llmn::kivi_cuda {

using kvq_cuda::bits_of;
using kvq_cuda::div_rn;
using kvq_cuda::float_of;
using kvq_cuda::half_bits_to_f32;

// Elements of one staged piece (f16): 32 KiB of shared memory.
constexpr int32_t kKiviPieceElems = 16384;
// Statistics of one piece kept for phase 2: K <= 256 channels, V <= rows x groups = 16384 / group
// <= 512 (group >= 32).
constexpr int32_t kKiviPieceStats = 512;

LLMN_HD int32_t kivi_bits(int32_t format) { return format == LLMN_KV_INT4 ? 4 : 2; }
LLMN_HD int32_t kivi_qmax(int32_t format) { return format == LLMN_KV_INT4 ? 15 : 3; }

// f32 -> IEEE half bits, round to nearest even; overflow -> Inf, NaN -> quiet NaN (numeric.hpp's
// f32_to_f16 for every input). Integer only, so host and device agree by construction.
LLMN_HD uint16_t f32_to_f16_bits(float f) {
    const uint32_t u = bits_of(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) return uint16_t(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0u));
    if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // rounds to >= 65520: Inf
    if (a < 0x33000000u) return uint16_t(sign);             // < 2^-25: rounds to zero (2^-25 itself: tie to even 0)
    if (a < 0x38800000u) {                                  // f16 subnormal: m * 2^-24
        const uint32_t e = a >> 23;                         // 102..112
        const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;     // 24-bit significand: value = m * 2^(e - 150)
        const uint32_t shift = 126u - e;                    // value / 2^-24 = m >> (126 - e); shift in 14..24
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return uint16_t(sign | q);                          // q = 0x400 is the smallest normal: still right
    }
    uint32_t r = a - 0x38000000u;                           // rebias the exponent (127 - 15) << 23
    const uint32_t rem = r & 0x1FFFu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r; // a carry into the exponent is still right
    return uint16_t(sign | r);
}

// kivi_scale_f16: f16 of (hi - lo) / qmax rounded UP (the f16 grid step of the group).
LLMN_HD uint16_t kivi_scale_bits(float lo, float hi, int32_t qmax) {
    const double s = (double(hi) - double(lo)) / double(qmax);
    if (s <= 0.0) return 0;
    uint16_t h = f32_to_f16_bits(float(s));
    if (double(half_bits_to_f32(h)) < s) ++h;
    return h;
}

// kivi_code: clamp(round_half_away((x - mn) / scale), 0, qmax); scale 0 -> 0.
LLMN_HD uint32_t kivi_code(float x, float scale, float mn, int32_t qmax) {
    if (scale == 0.0f) return 0;
    // as kv_kivi.hpp's kivi_code (not roundf: MinGW-w64's host roundf returns 1 for 0.49999997f, and the
    // tests run this codec on the host): for v in (0, qmax) truncation and fraction are exact
    const float v = div_rn(x - mn, scale);
    if (!(v > 0.0f)) return 0;  // also NaN (never from validated input): no float->uint UB
    if (v >= float(qmax)) return uint32_t(qmax);
    const uint32_t i = uint32_t(v);
    return i + uint32_t(v - float(i) >= 0.5f);
}

// One group's statistics: the stored f16 scale and minimum, and the f32 values the codes use.
struct KiviStat {
    uint16_t scale_bits, min_bits;
    float scale, mn;
};

// Statistic of n f16 values x[0], x[stride], ... (kivi_quantize_*_block's min/max loop and scale).
LLMN_HD KiviStat kivi_stat(const uint16_t* x, int32_t n, int32_t stride, int32_t qmax) {
    uint16_t lob = x[0];
    float lo = half_bits_to_f32(lob), hi = lo;
    for (int32_t i = 1; i < n; ++i) {
        const uint16_t b = x[int64_t(i) * stride];
        const float v = half_bits_to_f32(b);
        if (!(lo < v)) {  // kivi_min: the later operand wins on equality
            lo = v;
            lob = b;
        }
        hi = hi > v ? hi : v;
    }
    KiviStat s;
    s.scale_bits = kivi_scale_bits(lo, hi, qmax);
    s.min_bits = lob;
    s.scale = half_bits_to_f32(s.scale_bits);
    s.mn = lo;
    return s;
}

// ---------------------------------------------------------------------------------------------
// Pieces of a block (see the header comment) and the work items of each phase
// ---------------------------------------------------------------------------------------------

struct KiviPiece {
    int32_t t0, rows;  // token rows [t0, t0 + rows) of the block
    int32_t c0, cols;  // channels [c0, c0 + cols); the staged piece is [rows][cols] f16
};

// Rows / channels of a full piece of one side.
LLMN_HD int32_t kivi_piece_cols(bool value, int32_t bs, int32_t D) {
    if (value) return D;
    // 64..2048: a multiple of 4 (whole bytes of INT2 / INT4 codes, so no two pieces write one byte) only
    // because bs is a power of two (8..256, checked at cache creation in kv_cache.cpp; noted by review).
    // Keep this in step if other block sizes are ever accepted.
    const int32_t c = kKiviPieceElems / bs;
    return c < D ? c : D;
}
LLMN_HD int32_t kivi_piece_rows(bool value, int32_t bs, int32_t D) {
    if (!value) return bs;
    const int32_t r = kKiviPieceElems / D;  // D in {64, 80, 96, 128, 256}: 64..256 rows
    return r < bs ? r : bs;
}
LLMN_HD int32_t kivi_num_pieces(bool value, int32_t bs, int32_t D) {
    return value ? (bs + kivi_piece_rows(true, bs, D) - 1) / kivi_piece_rows(true, bs, D)
                 : (D + kivi_piece_cols(false, bs, D) - 1) / kivi_piece_cols(false, bs, D);
}
LLMN_HD KiviPiece kivi_piece(bool value, int32_t bs, int32_t D, int32_t i) {
    KiviPiece p;
    if (value) {
        const int32_t r = kivi_piece_rows(true, bs, D);
        p.t0 = i * r;
        p.rows = bs - p.t0 < r ? bs - p.t0 : r;
        p.c0 = 0;
        p.cols = D;
    } else {
        const int32_t c = kivi_piece_cols(false, bs, D);
        p.t0 = 0;
        p.rows = bs;
        p.c0 = i * c;
        p.cols = D - p.c0 < c ? D - p.c0 : c;
    }
    return p;
}

// Phase 1: number of statistics of a piece, and statistic s of it. stage = the piece's f16 values
// [rows][cols]; aux = the side's aux section of the tile (K: D scales then D minimums; V: bs*G
// scales then bs*G minimums); sh_scale / sh_min[s] receive the f32 scale and minimum for phase 2.
LLMN_HD int32_t kivi_piece_num_stats(bool value, const KiviPiece& p, int32_t group) {
    return value ? p.rows * (p.cols / group) : p.cols;
}
LLMN_HD void kivi_piece_stat(bool value, int32_t format, const KiviPiece& p, const uint16_t* stage, int32_t s,
                             int32_t bs, int32_t D, int32_t group, uint16_t* aux, float* sh_scale, float* sh_min) {
    const int32_t qmax = kivi_qmax(format);
    KiviStat st;
    if (value) {
        const int32_t G = D / group, t = s / G, g = s % G;
        st = kivi_stat(stage + int64_t(t) * p.cols + int64_t(g) * group, group, 1, qmax);
        const int64_t a = int64_t(p.t0 + t) * G + g;
        aux[a] = st.scale_bits;
        aux[int64_t(bs) * G + a] = st.min_bits;
    } else {
        st = kivi_stat(stage + s, p.rows, p.cols, qmax);
        aux[p.c0 + s] = st.scale_bits;
        aux[D + p.c0 + s] = st.min_bits;
    }
    sh_scale[s] = st.scale;
    sh_min[s] = st.mn;
}

// Phase 2: number of output bytes of a piece, and byte e of it (row e / (cols * bits / 8)), written to
// data = the side's code rows of the tile (row stride D * bits / 8).
LLMN_HD int32_t kivi_piece_num_bytes(int32_t format, const KiviPiece& p) {
    return p.rows * (p.cols * kivi_bits(format) / 8);
}
LLMN_HD void kivi_piece_byte(bool value, int32_t format, const KiviPiece& p, const uint16_t* stage, int32_t e,
                             int32_t D, int32_t group, const float* sh_scale, const float* sh_min, uint8_t* data) {
    const int32_t bits = kivi_bits(format), qmax = kivi_qmax(format), per = 8 / bits;
    const int32_t nb = p.cols / per, t = e / nb, b = e % nb;
    const uint16_t* x = stage + int64_t(t) * p.cols + int64_t(b) * per;
    uint32_t byte = 0;
    for (int32_t i = 0; i < per; ++i) {
        const int32_t c = b * per + i;                            // channel within the piece
        const int32_t s = value ? t * (p.cols / group) + c / group : c;  // its statistic
        byte |= kivi_code(half_bits_to_f32(x[i]), sh_scale[s], sh_min[s], qmax) << (bits * i);
    }
    data[int64_t(p.t0 + t) * (int64_t(D) * bits / 8) + (p.c0 + b * per) / per] = uint8_t(byte);
}

// ---------------------------------------------------------------------------------------------
// One launch of the append's block-quantize kernel (kv_append.cu): its parameters, the CTA -> (block,
// head, side) mapping and where each staged value comes from. Host+device so the CPU test can run a
// launch on a host copy of a pool (test_kv_kivi_cuda.cpp) with the kernel's own addressing.
// ---------------------------------------------------------------------------------------------

constexpr int32_t kKiviBlocksPerLaunch = 128;  // == kAppendBlocksPerLaunch (static_assert in kv_append.cu)

struct KiviQuantArgs {
    uint8_t* layer_base;  // pool + layer * layer_stride
    int64_t block_stride, head_stride;
    int64_t data_off[2], aux_off[2];
    int32_t format[2];
    uint8_t* res_layer;   // pool + res_tile_offset(slot, layer, 0)
    int64_t res_head_stride, res_off[2];
    const void* src[2];   // k, v input [num_tokens][heads][dim]
    int32_t dtype[2];     // LLMN_DTYPE_F32 / F16 / BF16
    int32_t heads, dim, block_size, group;
    int64_t old_len;      // sequence position of input token 0; rows below it are in the residual tile
    int64_t block0;       // logical block index of blocks[0]
    int32_t side_of[2];   // grid y -> side (0 = K, 1 = V): only the KIVI sides get CTAs
    int32_t blocks[kKiviBlocksPerLaunch];  // physical ids of logical blocks block0, block0 + 1, ...
};

// What one CTA (grid x = local block * heads + head, grid y = KIVI side index) quantizes.
struct KiviCta {
    bool value;
    int32_t format, side, head;
    uint8_t* data;         // the side's code rows in the block's head tile
    uint16_t* aux;         // the side's f16 scales then minimums
    const uint16_t* res;   // the side's f16 residual rows of this head
    int64_t pos_base;      // sequence position of the block's row 0
};
LLMN_HD KiviCta kivi_cta(const KiviQuantArgs& a, uint32_t bx, uint32_t by) {
    KiviCta c;
    c.side = a.side_of[by];
    c.value = c.side == 1;
    c.format = a.format[c.side];
    const int32_t i = int32_t(bx) / a.heads;
    c.head = int32_t(bx) % a.heads;
    uint8_t* tile = a.layer_base + int64_t(a.blocks[i]) * a.block_stride + int64_t(c.head) * a.head_stride;
    c.data = tile + a.data_off[c.side];
    c.aux = reinterpret_cast<uint16_t*>(tile + a.aux_off[c.side]);
    c.res = reinterpret_cast<const uint16_t*>(a.res_layer + int64_t(c.head) * a.res_head_stride + a.res_off[c.side]);
    c.pos_base = (a.block0 + i) * a.block_size;
    return c;
}

// Input element i as f32 (exact for every dtype), then the f16 the CPU append stores for it.
LLMN_HD float kivi_input(const void* p, int32_t dtype, int64_t i) {
    if (dtype == LLMN_DTYPE_F32) return static_cast<const float*>(p)[i];
    const uint16_t h = static_cast<const uint16_t*>(p)[i];
    if (dtype == LLMN_DTYPE_F16) return half_bits_to_f32(h);
    return float_of(uint32_t(h) << 16);  // bf16
}

// Staged value e (row-major in the piece) of a CTA's block: rows below old_len come from the
// residual tile (only the first block of an append can have any), the others from the input.
LLMN_HD uint16_t kivi_stage_elem(const KiviQuantArgs& a, const KiviCta& c, const KiviPiece& pc, int32_t e) {
    const int32_t t = pc.t0 + e / pc.cols, ch = pc.c0 + e % pc.cols;  // row in the block, channel
    const int64_t pos = c.pos_base + t;
    if (pos < a.old_len) return c.res[int64_t(t) * a.dim + ch];
    const int64_t si = ((pos - a.old_len) * a.heads + c.head) * int64_t(a.dim) + ch;
    return f32_to_f16_bits(kivi_input(a.src[c.side], a.dtype[c.side], si));
}

}  // namespace llmn::kivi_cuda
