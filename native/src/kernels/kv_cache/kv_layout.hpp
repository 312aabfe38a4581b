// Byte layout of the paged KV cache pool: the one contract between the cache bookkeeping (host),
// the CPU decode-attention kernels and the CUDA kernels. Everything here is plain integer
// arithmetic with no host-only types, so a .cu file can copy a KvLayout into kernel parameters.
//
// POOL = one allocation of the context's device memory (llmn::alloc_bytes(ctx, LLMN_MEMORY_DEVICE)),
// 64-byte aligned on CPU, 256-byte aligned on CUDA. Physical blocks are numbered 0..num_blocks-1;
// a block holds `block_size` consecutive token positions of ONE sequence for EVERY layer (one block
// table per sequence serves all layers; per-layer lengths say which rows are valid).
//
//   address(layer, block, kv_head) = pool + layer * layer_stride + kv_head * head_stride + block * block_stride
//   block_stride = tile_bytes     head_stride = num_blocks * tile_bytes     layer_stride = num_kv_heads * head_stride
//
// so each layer is one contiguous slab shaped [num_kv_heads][num_blocks][head tile]: one (block,
// kv_head) pair is one contiguous HEAD TILE, and the tiles of one kv head are contiguous over the
// physical block numbers. Why head-major rather than [num_blocks][num_kv_heads][tile] (FlashInfer's
// "HND"): one decode work item (sequence, kv_head, split) streams one head's tiles of consecutive
// logical blocks, and a sequence's blocks are often physically consecutive (the allocator hands out
// free blocks in order); then the item reads one long contiguous run instead of a tile-sized piece
// every num_kv_heads tiles, which the CPU's hardware prefetchers follow. On the 2-core Zen 5 dev box
// (BM_DecodeAttention, f16, Llama-3-8B shape, 16-token blocks, 2 threads, alternating old/new binaries)
// the AVX-512 kernel went from 49-53 % to 60-70 % of the streaming read, and the access pattern alone
// (BM_KvTileRead) from 28 to 48 GB/s (docs/perf/cpu-2026-12-06-zen5.md). Kernels
// only ever form block * block_stride + kv_head * head_stride, so they do not depend on the order;
// code that moves a whole block (fork's copy-on-write) copies num_layers x num_kv_heads tiles.
//
// HEAD TILE (byte offsets from the tile start; every section starts on a 64-byte boundary and the
// tile size is a multiple of 64):
//
//   [k_data_off] K data   block_size rows, token-major, row t = the head_dim channels of token t
//   [k_aux_off ] K aux    per-format metadata (scales), k_aux_bytes (0 for f16/bf16)
//   [v_data_off] V data   block_size rows, token-major, same row encoding for V's format
//   [v_aux_off ] V aux    v_aux_bytes (0 for f16/bf16)
//
// Row t of a tile holds token position (logical block index j) * block_size + t of the sequence
// whose block table has this physical block at index j. Rows at or beyond the layer's length are
// garbage (never NaN-checked, never read by a correct kernel).
//
// Per-format encodings (row_bytes = bytes of one token row, aux = metadata section size):
//   LLMN_KV_F16 / LLMN_KV_BF16   row = head_dim x 2 bytes, IEEE half / bfloat16, aux = 0.
//       For f16 every size is a multiple of 256 bytes (block_size >= 8, head_dim % 16 == 0), so there
//       is no padding at all: tile_bytes = 2 * block_size * head_dim * 2.
//   LLMN_KV_INT8 / LLMN_KV_FP8_E4M3 (every backend; codecs and scale rules in kv_quant.hpp)
//       row = head_dim bytes (int8 two's complement / OCP E4M3), aux = block_size f32 scales, one
//       per (token, head): x = float(code) * scale[t]. Quantized on append, token by token.
//   LLMN_KV_INT4 / LLMN_KV_INT2 (KIVI; codec and rounding rules in kv_kivi.hpp. Both backends keep
//   these bytes: CUDA quantizes a block on the device when it fills with the same codec as host+device
//   functions, kv_kivi_cuda.cuh, bit for bit; which caches CUDA decode attention reads is its own check)
//       K: per-channel over the block. row = head_dim * bits / 8 bytes, channel d in bits
//          [bits*(d % (8/bits)), ...) of byte d / (8/bits) (low bits first); aux = head_dim f16 scales
//          followed by head_dim f16 minimums: k[t][d] = code * scale[d] + min[d]. Because a channel's
//          scale needs the whole block, a block is quantized only when it fills: until then the
//          sequence's newest block lives as an f16 RESIDUAL tile (the f16 row layout above) in a
//          separate residual region of the same allocation, addressed by a per-sequence residual slot
//          rather than by the block table. q.k folds the scales into q per block (q'_d = q_d * scale_d,
//          plus a per-block constant sum_d q_d * min_d), so the token-major row layout still streams.
//       V: per token in groups of value_group_size channels. row as for K; aux = block_size x
//          (head_dim / group) f16 scales followed by as many f16 minimums: v[t][d] = code * s[t][g] + m[t][g].
//          V has no statistic spanning tokens, but it shares K's residual rule (KIVI keeps both in
//          full precision until the block fills), so one code path serves both sides.
//       Why f16 scale/min (unlike the f32 INT8 scales): here the metadata is a large fraction of the
//       data (INT2 V, group 32: 8 B of codes and 4 B of f16 metadata per group; f32 would make it 8 B),
//       while the f16 rounding of a scale (2^-11 relative) is far below the 1/3 .. 1/15 step of the
//       grid. The min is an f16 residual value, so it is stored exactly; the scale is rounded UP so
//       that code_max * scale still covers the range.
//       The physical block of the partial block stays allocated in the block table (capacity
//       accounting is unchanged); its KIVI sections hold garbage until the block fills. Residual rows at
//       or beyond the layer's length are garbage too (the CPU append leaves the rows of the block it
//       last quantized there, the CUDA append never writes rows of blocks it quantizes directly). Sides in other
//       formats (f16/INT8/FP8) are written to the block on append as usual (mixes work per side).
//
// RESIDUAL REGION (only when K or V is INT4/INT2): after the layer slabs, num_res_slots (= max_batch)
// slots; slot s holds, for every (layer, kv_head), a residual head tile: [K f16 rows block_size x
// head_dim] if K is KIVI, then [V f16 rows] if V is KIVI. The tile of (slot, layer, head) holds the
// rows of block floor(length[layer] / block_size) of the slot's sequence (per-layer lengths differ).
//   res_tile_offset(slot, layer, head) = res_region_off + ((slot * num_layers + layer) * num_kv_heads + head) * res_head_stride
//
// Block tables live on the host (KvCache); a change of any table bumps KvCache::tables_version()
// so a backend can keep a device mirror (int32 [batch][max_blocks] like FlashInfer/vLLM) and refresh
// it only when the version moved.
#pragma once
#include <llmnative/llmnative.h>

#include <cstdint>

namespace llmn {

constexpr int64_t kKvSectionAlign = 64;

inline int64_t kv_align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

inline bool kv_format_is_valid(int32_t f) { return f >= LLMN_KV_F16 && f <= LLMN_KV_INT2; }

inline const char* kv_format_name(int32_t f) {
    switch (f) {
        case LLMN_KV_F16: return "LLMN_KV_F16";
        case LLMN_KV_BF16: return "LLMN_KV_BF16";
        case LLMN_KV_INT8: return "LLMN_KV_INT8";
        case LLMN_KV_FP8_E4M3: return "LLMN_KV_FP8_E4M3";
        case LLMN_KV_INT4: return "LLMN_KV_INT4";
        case LLMN_KV_INT2: return "LLMN_KV_INT2";
    }
    return "unknown llmn_kv_format";
}

// Storage bits per element of the row encoding.
inline int32_t kv_format_bits(int32_t f) {
    switch (f) {
        case LLMN_KV_F16: case LLMN_KV_BF16: return 16;
        case LLMN_KV_INT8: case LLMN_KV_FP8_E4M3: return 8;
        case LLMN_KV_INT4: return 4;
        case LLMN_KV_INT2: return 2;
    }
    return 0;
}

inline bool kv_format_is_kivi(int32_t f) { return f == LLMN_KV_INT4 || f == LLMN_KV_INT2; }

inline int64_t kv_row_bytes(int32_t format, int32_t head_dim) { return int64_t(head_dim) * kv_format_bits(format) / 8; }

// Metadata bytes of one head tile's K (is_value = false) or V section for a format.
inline int64_t kv_aux_bytes(int32_t format, bool is_value, int32_t block_size, int32_t head_dim, int32_t value_group) {
    switch (format) {
        case LLMN_KV_INT8: case LLMN_KV_FP8_E4M3: return int64_t(block_size) * 4;  // f32 scale per token
        case LLMN_KV_INT4: case LLMN_KV_INT2:
            if (!is_value) return int64_t(head_dim) * 2 * 2;                      // f16 scale + min per channel
            return int64_t(block_size) * (head_dim / (value_group > 0 ? value_group : head_dim)) * 2 * 2;
        default: return 0;
    }
}

struct KvLayout {
    int32_t num_layers = 0, num_kv_heads = 0, head_dim = 0, block_size = 0;
    int32_t k_format = LLMN_KV_F16, v_format = LLMN_KV_F16, value_group_size = 0;
    int64_t num_blocks = 0;
    // within a head tile
    int64_t k_data_off = 0, k_aux_off = 0, v_data_off = 0, v_aux_off = 0;
    int64_t k_row_bytes = 0, v_row_bytes = 0;
    int64_t tile_bytes = 0;    // bytes of one (block, kv_head) head tile
    int64_t block_stride = 0;  // distance between the tiles of blocks b and b + 1 of one head (= tile_bytes)
    int64_t head_stride = 0;   // distance between kv heads h and h + 1 (= num_blocks * tile_bytes; 0 until num_blocks is known)
    int64_t layer_stride = 0;  // bytes of one layer slab
    int64_t pool_bytes = 0;
    // KIVI residual region (res_head_stride = 0 when neither side is INT4/INT2)
    int64_t res_k_off = 0, res_v_off = 0;  // within a residual head tile
    int64_t res_head_stride = 0;
    int64_t res_region_off = 0;            // = num_layers * layer_stride
    int64_t num_res_slots = 0;             // = max_batch

    bool k_kivi() const { return kv_format_is_kivi(k_format); }
    bool v_kivi() const { return kv_format_is_kivi(v_format); }
    bool has_residual() const { return res_head_stride > 0; }
    int64_t res_tile_offset(int64_t slot, int32_t layer, int32_t kv_head) const {
        return res_region_off + ((slot * num_layers + layer) * int64_t(num_kv_heads) + kv_head) * res_head_stride;
    }
    // Residual bytes of every slot (fixed overhead of a KIVI cache, independent of the token count).
    int64_t residual_bytes(int64_t slots) const { return slots * num_layers * int64_t(num_kv_heads) * res_head_stride; }

    int64_t tile_offset(int32_t layer, int64_t block, int32_t kv_head) const {
        return int64_t(layer) * layer_stride + int64_t(kv_head) * head_stride + block * block_stride;
    }
    int64_t k_row_offset(int32_t layer, int64_t block, int32_t kv_head, int32_t row) const {
        return tile_offset(layer, block, kv_head) + k_data_off + int64_t(row) * k_row_bytes;
    }
    int64_t v_row_offset(int32_t layer, int64_t block, int32_t kv_head, int32_t row) const {
        return tile_offset(layer, block, kv_head) + v_data_off + int64_t(row) * v_row_bytes;
    }
    // Bytes one block takes in one layer (all kv heads), and across all layers (the unit of capacity).
    int64_t block_bytes_one_layer() const { return tile_bytes * num_kv_heads; }
    int64_t block_bytes_all_layers() const { return block_bytes_one_layer() * num_layers; }
    // Sets num_blocks and the strides that depend on it.
    void set_num_blocks(int64_t blocks) {
        num_blocks = blocks;
        head_stride = blocks * tile_bytes;
        layer_stride = head_stride * num_kv_heads;
    }
};

// Fills the per-tile geometry (everything but num_blocks / head_stride / layer_stride / pool_bytes) from a
// validated description.
inline KvLayout kv_tile_layout(const llmn_kv_cache_desc& d) {
    KvLayout L;
    L.num_layers = d.num_layers;
    L.num_kv_heads = d.num_kv_heads;
    L.head_dim = d.head_dim;
    L.block_size = d.block_size;
    L.k_format = d.k_format;
    L.v_format = d.v_format;
    L.value_group_size = d.value_group_size;
    L.k_row_bytes = kv_row_bytes(d.k_format, d.head_dim);
    L.v_row_bytes = kv_row_bytes(d.v_format, d.head_dim);
    int64_t off = 0;
    L.k_data_off = off;
    off = kv_align_up(off + L.k_row_bytes * d.block_size, kKvSectionAlign);
    L.k_aux_off = off;
    off = kv_align_up(off + kv_aux_bytes(d.k_format, false, d.block_size, d.head_dim, d.value_group_size), kKvSectionAlign);
    L.v_data_off = off;
    off = kv_align_up(off + L.v_row_bytes * d.block_size, kKvSectionAlign);
    L.v_aux_off = off;
    off = kv_align_up(off + kv_aux_bytes(d.v_format, true, d.block_size, d.head_dim, d.value_group_size), kKvSectionAlign);
    L.tile_bytes = off;
    L.block_stride = off;
    const int64_t f16_tile = int64_t(d.block_size) * d.head_dim * 2;  // a multiple of 256 (bs >= 8, D % 16 == 0)
    int64_t r = 0;
    L.res_k_off = r;
    if (kv_format_is_kivi(d.k_format)) r += f16_tile;
    L.res_v_off = r;
    if (kv_format_is_kivi(d.v_format)) r += f16_tile;
    L.res_head_stride = r;
    return L;
}

}  // namespace llmn
