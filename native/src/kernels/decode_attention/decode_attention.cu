// CUDA decode attention over the paged KV cache (split-KV / FlashDecoding family).
//
// WHY IT IS BUILT THIS WAY
//
// Decode attention reads every visible K/V row once and does a handful of FLOPs per byte, so the
// kernel exists to stream the pool at full bandwidth and keep everything else off that path.
//
// 1. Work item = one CTA = (sequence, kv head, split, row chunk). The CTA holds ALL query rows that
//    use its kv head: the GQA group (1..16 heads) times the sequence's new tokens (q_len 1..8), so a
//    K/V element crosses the memory bus once per group, not once per query head. Only when group x
//    q_len exceeds the largest compiled row bucket (32 rows, 16 for head_dim 256) are query
//    positions spread over several "row chunks"; those CTAs get adjacent indices, so they run
//    together and their repeated K/V reads mostly hit L2. (A tensor-core path would lift that cap;
//    the row counts of plain decode never reach it.)
//
// 2. Memory hierarchy. K and V rows of a tile of 32 keys (16 for head_dim 256) are copied
//    global -> shared with 16-byte cp.async (L2 only: the data is used once), in a 3-stage ring, so
//    two tiles are in flight while one is computed; physical block ids come from the device mirror
//    of the block table per 16-byte chunk (L1-resident). Queries (pre-multiplied by the softmax
//    scale, f32), the online-softmax state (m, l) and the output accumulators live in registers for
//    the whole CTA; only the few-KB merge of key slots reuses the stage buffers at the end.
//
// 3. Thread layout (see Geometry in decode_attention_cuda_plan.cuh). x = a 16-byte chunk of a row
//    (head_dim / 8 of them, padded to 8/16/32 lanes), y = a query row slot, z = a key slot. A q.k dot
//    product is 8 FMAs per lane plus a xor-butterfly over the lanes (every lane ends with the same
//    bits, so all lanes of a row run identical softmax updates). With few rows (plain decode,
//    small groups) the spare slots become key slots: Z groups take interleaved keys of every tile
//    with private softmax states, merged in a fixed order after the loop.
//
// 4. Stages as functions: load_tile (cp.async of K and V) -> score (dot, butterfly, soft-cap,
//    ALiBi, masks) -> online softmax (state_raise_max / state_add, per sub-tile of <= 8 keys) ->
//    slot merge -> finish (direct f16/bf16 output when the sequence has one split, else f32 partial
//    + LSE into the workspace) -> merge_kernel (the LSE combine of decode_attention.hpp:
//    w_s = e^{lse_s - M} / sum, empty partials weigh 0, all-empty rows become zeros, n = 1 never
//    reaches it). All the index math and per-element arithmetic are host+device functions in
//    decode_attention_cuda_plan.cuh, shared with the CPU-run unit tests.
//
// 5. Compile-time dispatch happens in ONE place (select_kernel): head_dim (64/80/96/128/256) x K/V
//    side pair x row bucket (1/4/8/16/32). Side pairs: f16/f16 and bf16/bf16 with fixed element
//    types, and the three pairs with an 8-bit side (8-bit/8-bit, 8-bit/16-bit, 16-bit/8-bit) whose
//    exact variant (INT8 or E4M3, f16 or bf16) is a warp-uniform runtime value (Params::k_code,
//    v_code): 125 kernels instead of 400 for every format pair; the three pairs with a KIVI side
//    (KIVI/KIVI, KIVI/16-bit, 16-bit/KIVI; bit width and 16-bit variant at run time) add 75.
//    Query/output dtype, group size,
//    q_len, soft-cap, window and ALiBi are runtime values: they cost nothing in the streaming loop.
//    The tensor-core kernel (mma_kernel, section below) adds 4 (head_dim 64/128 x f16 / 8-bit sides),
//    chosen next to select_kernel in decode_attention_cuda().
//
// 5b. INT8 / FP8-E4M3 sides (kv_quant.hpp semantics, one f32 scale per (token, head)) are dequantized
//    inside this kernel, never into memory: the 8-bit rows move global -> shared in 16-byte cp.async
//    chunks like 16-bit rows (half as many), the per-token scales of the tile's keys follow as 4-byte
//    cp.async into the tail of the stage buffer (the stage size is unchanged: 8-bit rows free more
//    than the scales take). A lane decodes its 8 codes from an 8-byte shared load with integer ops
//    (kv_quant_cuda.cuh: INT8 via the 2^23 magic number, E4M3 as f16 bit patterns of value * 2^-8,
//    exact, the 2^8 folded into the scale; no sm_89 cvt needed). K: the dot product runs on the raw
//    code values and the key's scale multiplies the reduced dot once; V: the scale is folded into
//    the softmax weight (state_add_scaled: o += (p * scale) * code), so per element the 8-bit path
//    costs the decode only.
//
// 5c. KIVI INT4 / INT2 sides (kv_kivi.hpp; layout and residual rule in kv_layout.hpp). A KIVI CTA
//    streams its keys in two passes through the same ring (stream_tiles): the quantized full blocks
//    below res_begin = floor(length / block) * block, then the sequence's partial block from its f16
//    residual tile (addressed by the per-sequence residual slot in SeqWork, not the block table) with
//    the f16 side type (ResSide). Pass 1 stages packed code rows (D * bits / 8 bytes, copied in the
//    widest of 16/8/4 bytes that divides a row) plus their metadata: K's per-channel scale and minimum
//    of every block the tile touches (a tile of 16-32 keys spans at most tile / 8 + 1 blocks), V's
//    per-token group scales and minimums. Decoding is fmaf(code, scale, min) per element, which equals
//    the CPU codec's code * scale + min bit for bit (the product is exact), so K and V enter the same
//    dot product and P.V update as 16-bit values. Why not fold K's scales into q per block (as the
//    CPU kernel does): a tile can straddle blocks, and the fold would re-scale q for every block;
//    the per-element fmaf costs one instruction, and the stage shrinks by 4x (INT4) / 8x (INT2).
//    KIVI is not mixed with an 8-bit side here (rejected with the formats; the CPU backend reads it).
//
// 6. Split policy (num_splits = 0, make_plan): no split when batch x kv heads x row chunks already
//    fills one wave (SMs x resident CTAs from the occupancy API); otherwise pieces of at least 256
//    keys sized so the batch becomes ~1 wave of CTAs: long sequences get many splits, short ones
//    none. Forced n is honoured up to the visible block count (like the CPU) and the workspace.
//    The partition of a sequence depends only on (length, n), each CTA's arithmetic only on its
//    item, and the merges run in fixed order: results are bitwise reproducible run to run.
//
// 7. No allocation and no host synchronisation per call (CUDA-graph friendly). Kept in the cache's
//    backend_state(), created on the first call and sized from desc().max_batch and num_kv_heads:
//    the f32 partial workspace, a device mirror of the batch's block tables (rebuilt only when
//    KvCache::tables_version() or the batch's sequences changed), and a ring of 16 pinned + device
//    metadata slots (the per-call work list, one cudaMemcpyAsync per call). A slot
//    is reused only after the event recorded behind its call's kernels fired, so the host blocks
//    only when it runs 16 calls ahead of the GPU.
//    Graph-capture caveat: a captured call records the copy FROM ITS PINNED SLOT; replaying the
//    graph re-reads whatever that slot holds at replay time (later calls overwrite it), and lengths
//    are captured as of the capture. Replays are therefore only valid for identical batches and
//    lengths (e.g. benchmarks). Warm up one call outside capture (first-call allocation) and
//    synchronise before capturing; during capture the ring does not wait on or record events, and a
//    block-table mirror that would have to grow fails with UNSUPPORTED.
//    ALiBi: the kernel reads the slopes straight from the caller's device buffer (Params::slopes),
//    so a captured call reads them at replay time. Their finiteness check needs the values on the
//    host, i.e. a synchronising copy of num_q_heads floats: it runs only when the stream is not
//    capturing (a capture cannot synchronise); captured calls take the slopes unchecked (documented
//    in llmnative.h). A device-side check could not report an error without a later host read.
//    Calls on one cache are assumed to come through one stream (the table mirror is updated in
//    stream order).
#include "decode_attention.hpp"
#include "decode_attention_cuda_plan.cuh"
#include "../kv_cache/kv_quant_cuda.cuh"

#include "../../core/error.hpp"
#include "../../core/log.hpp"
#include "../../cuda/cuda_runtime.hpp"
#include "../../cuda/ptx.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace llmn {

namespace {

using namespace attn_cuda;

static_assert(kMaxSplitsMerge == kMaxAttentionSplits, "merge scratch must hold every split");
static_assert(kMaxGqaGroup <= 16 && kMaxQueryLen <= 8, "row buckets assume group <= 16, q_len <= 8");

void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        cudaGetLastError();
        fail(err == cudaErrorMemoryAllocation ? LLMN_STATUS_OUT_OF_MEMORY : LLMN_STATUS_BACKEND_ERROR,
             "CUDA error in decode attention (%s): %s (%s, code %d)", what, cudaGetErrorString(err), cudaGetErrorName(err),
             int(err));
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel parameters (passed by value; everything a CTA needs)
// ---------------------------------------------------------------------------------------------

struct Params {
    const uint8_t* layer_base;  // pool + layer * layer_stride
    int64_t block_stride, head_stride, k_off, v_off;
    int64_t k_aux_off, v_aux_off;  // per-token f32 scales of INT8 / E4M3 sides, KIVI metadata
    int32_t k_code, v_code;     // runtime element variant of a side: KvX16 0 f16 / 1 bf16; KvQ8 0 INT8 / 1 E4M3;
                                // KvKivi: bits (4 or 2)
    int32_t v_group_shift;      // KIVI V: log2(value_group_size)
    // KIVI residual tiles (kv_layout.hpp): tile of (slot, this layer, head h) =
    // res_base + slot * res_slot_stride + h * res_head_stride; K rows at + res_k_off, V rows at + res_v_off.
    const uint8_t* res_base;
    int64_t res_slot_stride, res_head_stride, res_k_off, res_v_off;
    int32_t block_shift;        // log2(block_size)
    const int32_t* tables;      // flattened block tables of the batch
    const SeqWork* work;        // [num_seqs] schedule order
    int32_t num_seqs;
    int32_t q_len, group, num_q_heads, num_kv_heads, head_dim;
    int32_t rows;               // group * q_len
    int32_t q_per_chunk, chunks;
    int32_t window;
    float scale, softcap;
    const float* slopes;        // [num_q_heads] or null (no ALiBi)
    const void* q;
    void* out;
    int32_t io_bf16;            // q/out element type: 0 f16, 1 bf16
    float* ws_o;                // [ws_rows][head_dim]
    float* ws_lse;              // [ws_rows]
};

// ---------------------------------------------------------------------------------------------
// Device helpers: element conversion, 16-byte async copies, butterfly sums
// ---------------------------------------------------------------------------------------------

struct KvF16 {
    static __device__ __forceinline__ void to_float(const uint4& raw, float* f) {
        const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 v = __half22float2(h[i]);
            f[2 * i] = v.x;
            f[2 * i + 1] = v.y;
        }
    }
};

struct KvBf16 {
    static __device__ __forceinline__ void to_float(const uint4& raw, float* f) {
        const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // element 2i in the low half (little endian); bf16 -> f32 is exact
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};

// K/V side types (template parameters of the split kernel): how one lane turns its 8 elements of
// row tt of a stage buffer into floats. 16-bit rows take D / 8 16-byte chunks, 8-bit rows D / 16; a
// lane always owns elements [8x, 8x + 8), i.e. 16 bytes of a 16-bit row or 8 bytes of an 8-bit one
// (rows still move global -> shared in 16-byte cp.async chunks). KvF16/KvBf16 are fixed types (the
// common same-format caches); KvX16 picks f16/bf16 at run time (uniform branch) and KvQ8 INT8/E4M3,
// which keeps mixed-format caches to a few instantiations. 8-bit sides leave the per-token scale
// out of the decoded values: K applies it to the dot product, V folds it into the softmax weight.
struct KvF16Side {
    static constexpr bool kQ8 = false;
    static constexpr bool kKivi = false;
    template <int D>
    static __device__ __forceinline__ void load(const uint4* rows, int tt, int x, int, float* f) {
        KvF16::to_float(rows[tt * (D / 8) + x], f);
    }
};
struct KvBf16Side {
    static constexpr bool kQ8 = false;
    static constexpr bool kKivi = false;
    template <int D>
    static __device__ __forceinline__ void load(const uint4* rows, int tt, int x, int, float* f) {
        KvBf16::to_float(rows[tt * (D / 8) + x], f);
    }
};
struct KvX16Side {
    static constexpr bool kQ8 = false;
    static constexpr bool kKivi = false;
    template <int D>
    static __device__ __forceinline__ void load(const uint4* rows, int tt, int x, int code, float* f) {
        const uint4 raw = rows[tt * (D / 8) + x];
        if (code) KvBf16::to_float(raw, f);
        else KvF16::to_float(raw, f);
    }
};
struct KvQ8Side {
    static constexpr bool kQ8 = true;
    static constexpr bool kKivi = false;
    template <int D>
    static __device__ __forceinline__ void load(const uint4* rows, int tt, int x, int code, float* f) {
        const uint2 raw = reinterpret_cast<const uint2*>(rows)[tt * (D / 8) + x];
        kvq_cuda::q8x8_to_f32(code != 0, raw.x, raw.y, f);
    }
};

// KIVI INT4 / INT2 side (kv_kivi.hpp semantics; the bit width is the warp-uniform Params code, 4 or
// 2). Quantized tiles hold packed codes (row = D * bits / 8 bytes, channel d in bits
// [bits * (d % (8 / bits)), ...) of byte d / (8 / bits)), so a lane's 8 channels [8x, 8x + 8) are one
// 4-byte (INT4) or 2-byte (INT2) word with channel 8x + i in bits [bits * i, ...). Their metadata is
// staged beside them (StageLayout): K's per-channel f16 scale and minimum of each block the tile
// touches, V's per-token f16 scale and minimum of each group. Decoding: float(code) * scale + min as
// one fmaf, bitwise the CPU codec's two operations because code * scale is exact (a 4-bit integer
// times an f16 value fits f32's mantissa). The sequence's newest, partial block is an f16 residual
// tile: split_kernel streams it in a second pass with KvF16Side (ResSide below).
struct KvKiviSide {
    static constexpr bool kQ8 = false;
    static constexpr bool kKivi = true;
};

// The side type that reads a side's rows in the residual pass: KIVI sides become their f16 residual
// rows, other sides are read from the block as in the first pass.
template <class S>
struct ResSideOf {
    using type = S;
};
template <>
struct ResSideOf<KvKiviSide> {
    using type = KvF16Side;
};
template <class S>
using ResSide = typename ResSideOf<S>::type;

// uint4 chunks of one row of a 16-bit or 8-bit side in a stage buffer (KIVI rows: StageLayout).
template <class S, int D>
constexpr int row_vec() {
    return S::kQ8 ? D / 16 : D / 8;
}

constexpr int kKiviMaxGroups = 8;  // head_dim / value_group_size <= 256 / 32

// 8 packed KIVI codes of channels [8x, 8x + 8) of a staged row (row_bytes = D * bits / 8).
__device__ __forceinline__ void kivi_codes(const uint8_t* row, int x, int bits, float* c) {
    if (bits == 4) {
        const uint32_t w = *reinterpret_cast<const uint32_t*>(row + 4 * x);
#pragma unroll
        for (int i = 0; i < 8; ++i) c[i] = float((w >> (4 * i)) & 15u);
    } else {
        const uint32_t w = *reinterpret_cast<const uint16_t*>(row + 2 * x);
#pragma unroll
        for (int i = 0; i < 8; ++i) c[i] = float((w >> (2 * i)) & 3u);
    }
}

__device__ __forceinline__ uint4 pack_out(const float* f, bool bf16) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (bf16) {
            const __nv_bfloat162 v = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
            w[i] = *reinterpret_cast<const uint32_t*>(&v);
        } else {
            const __half2 v = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
            w[i] = *reinterpret_cast<const uint32_t*>(&v);
        }
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ uint16_t out_elem(float v, bool bf16) {
    return bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v)) : __half_as_ushort(__float2half_rn(v));
}

// 16 bytes global -> shared; valid = false writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(uint4* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
#else
    *smem = valid ? *static_cast<const uint4*>(gmem) : make_uint4(0, 0, 0, 0);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// 4 bytes global -> shared (an INT8 / E4M3 per-token scale); valid = false writes zero.
__device__ __forceinline__ void cp_async4(float* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    const int bytes = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
#else
    *smem = valid ? *static_cast<const float*>(gmem) : 0.0f;
#endif
}

// N bytes (4, 8 or 16) global -> shared through L1 (KIVI code rows whose length is not a multiple
// of 16); valid = false writes zeros and reads nothing.
template <int N>
__device__ __forceinline__ void cp_async_n(void* smem, const void* gmem, bool valid) {
    static_assert(N == 4 || N == 8 || N == 16, "cp.async sizes");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    const int bytes = valid ? N : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gmem), "n"(N), "r"(bytes) : "memory");
#else
    for (int i = 0; i < N / 4; ++i)
        static_cast<uint32_t*>(smem)[i] = valid ? static_cast<const uint32_t*>(gmem)[i] : 0u;
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// ---------------------------------------------------------------------------------------------
// Split kernel stages
// ---------------------------------------------------------------------------------------------

// Per-CTA constants of the K/V stream.
struct Stream {
    const uint8_t* head_base;  // layer_base + kv_head * head_stride
    const int32_t* table;      // this sequence's physical block ids
    int64_t block_stride, k_off, v_off, k_aux_off, v_aux_off;
    int32_t block_shift, block_mask;
    int64_t key_end;
    const uint8_t* res_k;      // KIVI sides: f16 rows of the sequence's residual tile (else null)
    const uint8_t* res_v;
    int32_t k_code, v_code;    // Params::k_code / v_code (KIVI sides: bits)
    int32_t v_group_shift;     // KIVI V: log2(value_group_size)
};

// The K/V stream of a CTA's (sequence, kv head), keys below key_end.
__device__ __forceinline__ Stream make_stream(const Params& p, const SeqWork& w, int h, int64_t key_end) {
    Stream ss;
    ss.head_base = p.layer_base + int64_t(h) * p.head_stride;
    ss.table = p.tables + w.table_off;
    ss.block_stride = p.block_stride;
    ss.k_off = p.k_off;
    ss.v_off = p.v_off;
    ss.k_aux_off = p.k_aux_off;
    ss.v_aux_off = p.v_aux_off;
    ss.block_shift = p.block_shift;
    ss.block_mask = (1 << p.block_shift) - 1;
    ss.key_end = key_end;
    ss.res_k = ss.res_v = nullptr;
    if (p.res_base) {
        const uint8_t* res = p.res_base + int64_t(w.res_slot) * p.res_slot_stride + int64_t(h) * p.res_head_stride;
        ss.res_k = res + p.res_k_off;
        ss.res_v = res + p.res_v_off;
    }
    ss.k_code = p.k_code;
    ss.v_code = p.v_code;
    ss.v_group_shift = p.v_group_shift;
    return ss;
}

// Work item of this CTA -> (sequence, kv head, split, row chunk), its rows and its keys [kb, ke).
struct CtaWork {
    Item it;
    SeqWork w;
    int i0, rows;
    int64_t kb, ke;
};
__device__ __forceinline__ CtaWork cta_work(const Params& p) {
    CtaWork c;
    c.it = decode_item(p.work, p.num_seqs, p.chunks, int(blockIdx.x));
    c.w = p.work[c.it.pos];
    c.i0 = c.it.chunk * p.q_per_chunk;
    const int nq = min(p.q_per_chunk, p.q_len - c.i0);
    c.rows = nq * p.group;
    split_keys(c.w.length, p.q_len, p.window, 1 << p.block_shift, c.w.n_splits, c.it.split, &c.kb, &c.ke);
    chunk_keys(c.w.length, p.q_len, p.window, c.i0, nq, &c.kb, &c.ke);
    return c;
}

// Stage buffer layout (uint4 units): K rows [0, kKeyVec), V rows [kKeyVec, kKeyVec + kValVec), then
// the f32 scales of the 8-bit sides (K's tile_keys, then V's), then the KIVI metadata: K's per-channel
// f16 scales and minimums of each block the tile touches (kKiviKSlots slots of [D scales][D mins];
// slot b = block (t0 >> shift) + b), V's per-token f16 scales and minimums ([tile_keys][8] scales, then
// as many minimums; groups g < head_dim / value_group_size <= 8 used). KIVI rows get the room of INT4
// rows (D / 2 bytes; INT2 rows use half of it). Always within geometry().stage_vec: 16-bit rows fill it
// exactly, 8-bit rows take half of a side's share and their scales 1/4 uint4 per key, KIVI sides at
// most 1/4 plus metadata.
template <int D, int ROWS, class KT, class VT>
struct StageLayout {
    static constexpr Geometry g = geometry(D, ROWS);
    static constexpr int kRowK = row_vec<KT, D>(), kRowV = row_vec<VT, D>();
    static constexpr int kKeyVec = KT::kKivi ? g.tile_keys * D / 32 : g.tile_keys * kRowK;
    static constexpr int kValVec = VT::kKivi ? g.tile_keys * D / 32 : g.tile_keys * kRowV;
    static constexpr int kScales = (KT::kQ8 ? g.tile_keys : 0) + (VT::kQ8 ? g.tile_keys : 0);
    static constexpr int kKiviKSlots = g.tile_keys / 8 + 1;  // blocks of >= 8 keys a tile can touch
    static constexpr int kKMetaOff = (kKeyVec + kValVec) * 16 + kScales * 4;                 // bytes
    static constexpr int kVMetaOff = kKMetaOff + (KT::kKivi ? kKiviKSlots * 4 * D : 0);       // bytes
    static constexpr int kEnd = kVMetaOff + (VT::kKivi ? g.tile_keys * kKiviMaxGroups * 4 : 0);
    static_assert(kEnd <= g.stage_vec * 16, "stage buffer");
    static_assert(g.tile_keys % 4 == 0, "scales start 16-byte aligned");
    static_assert((g.tile_keys * D / 2) % 16 == 0 && kKMetaOff % 16 == 0 && kVMetaOff % 16 == 0, "KIVI sections 16-byte aligned");
};

// Stage 1: copy K and V rows of keys [t0, t0 + tile_keys) into stage buffer `dst` (K rows, then V
// rows, each row = chunks x 16 bytes). Keys at or past key_end are zero-filled, never read.
// Each copy's (key, chunk) comes from compile-time divisors and a predicated cp.async (no branch):
// the first H200 run's SASS spent ~100 instructions per 16-byte copy on a runtime division and
// divergent branches, about as much as the math of the tile. t0 < key_end always (only tiles that
// start inside the range are issued), so an invalid key reads the table entry of t0 instead.
template <int PER, int COUNT>
__device__ __forceinline__ void load_rows(uint4* dst, const Stream& st, int64_t t0, int64_t section_off, int64_t row_bytes) {
#pragma unroll
    for (int i = 0; i < (COUNT + kThreads - 1) / kThreads; ++i) {
        const int idx = int(threadIdx.x) + i * kThreads;
        if (COUNT % kThreads != 0 && idx >= COUNT) break;
        const int j = idx / PER, c = idx - j * PER;
        const int64_t t = t0 + j;
        const bool valid = t < st.key_end;
        const int64_t tc = valid ? t : t0;
        const int64_t blk = __ldg(st.table + (tc >> st.block_shift));
        cp_async16(dst + idx, st.head_base + kv_row_chunk_offset(blk, st.block_stride, section_off, tc, st.block_mask, row_bytes, c),
                   valid);
    }
}

template <int COUNT>
__device__ __forceinline__ void load_scales(float* dst, const Stream& st, int64_t t0, int64_t aux_off) {
    for (int idx = int(threadIdx.x); idx < COUNT; idx += kThreads) {
        const int64_t t = t0 + idx;
        const bool valid = t < st.key_end;
        const int64_t tc = valid ? t : t0;
        const int64_t blk = __ldg(st.table + (tc >> st.block_shift));
        cp_async4(dst + idx, st.head_base + kv_scale_offset(blk, st.block_stride, aux_off, tc, st.block_mask), valid);
    }
}

// f16 rows of a KIVI side's residual tile (the sequence's partial block: row = key & block_mask).
template <int PER, int COUNT>
__device__ __forceinline__ void load_res_rows(uint4* dst, const uint8_t* res, const Stream& st, int64_t t0) {
#pragma unroll
    for (int i = 0; i < (COUNT + kThreads - 1) / kThreads; ++i) {
        const int idx = int(threadIdx.x) + i * kThreads;
        if (COUNT % kThreads != 0 && idx >= COUNT) break;
        const int j = idx / PER, c = idx - j * PER;
        const int64_t t = t0 + j;
        const bool valid = t < st.key_end;
        const int64_t tc = valid ? t : t0;
        cp_async16(dst + idx, res + (tc & st.block_mask) * (PER * 16) + c * 16, valid);
    }
}

// Packed KIVI code rows (D * BITS / 8 bytes each), in the widest copy size dividing a row.
template <int D, int BITS, int TK>
__device__ __forceinline__ void load_kivi_rows(uint4* dst, const Stream& st, int64_t t0, int64_t section_off) {
    constexpr int RB = D * BITS / 8;
    constexpr int CH = RB % 16 == 0 ? 16 : RB % 8 == 0 ? 8 : 4;
    constexpr int PER = RB / CH, COUNT = TK * PER;
    uint8_t* d8 = reinterpret_cast<uint8_t*>(dst);
#pragma unroll
    for (int i = 0; i < (COUNT + kThreads - 1) / kThreads; ++i) {
        const int idx = int(threadIdx.x) + i * kThreads;
        if (COUNT % kThreads != 0 && idx >= COUNT) break;
        const int j = idx / PER, c = idx - j * PER;
        const int64_t t = t0 + j;
        const bool valid = t < st.key_end;
        const int64_t tc = valid ? t : t0;
        const int64_t blk = __ldg(st.table + (tc >> st.block_shift));
        cp_async_n<CH>(d8 + j * RB + c * CH,
                       st.head_base + blk * st.block_stride + section_off + (tc & st.block_mask) * RB + c * CH, valid);
    }
}

// K metadata ([D f16 scales][D f16 mins], 4 D bytes) of the blocks that keys [t0, t0 + TK) touch, in
// SLOTS slots starting at t0's block (slots past the tile's last block or the sequence are zero-filled
// without a read: with 32-key tiles and 16-key blocks that is 2-3 of the 5 slots, not all 5).
template <int D, int SLOTS, int TK>
__device__ __forceinline__ void load_kivi_kmeta(uint4* dst, const Stream& st, int64_t t0) {
    constexpr int PER = D / 4, COUNT = SLOTS * PER;  // 16-byte chunks
    const int64_t j0 = t0 >> st.block_shift;
    const int64_t j_last = (t0 + TK - 1) >> st.block_shift;
    for (int idx = int(threadIdx.x); idx < COUNT; idx += kThreads) {
        const int b = idx / PER, c = idx - b * PER;
        const bool valid = j0 + b <= j_last && ((j0 + b) << st.block_shift) < st.key_end;
        const int64_t blk = __ldg(st.table + (valid ? j0 + b : j0));
        cp_async16(dst + idx, st.head_base + blk * st.block_stride + st.k_aux_off + c * 16, valid);
    }
}

// V metadata of the tile's keys: stage [TK][8] f16 scales then [TK][8] f16 mins from the block's
// [bs][G] scales and [bs][G] mins. Even G: 4-byte cp.async of scale / min pairs; odd G (1 or 3:
// head_dim = value_group_size, or 96 with groups of 32): plain 2-byte loads.
template <int D, int TK>
__device__ __forceinline__ void load_kivi_vmeta(uint4* dst, const Stream& st, int64_t t0) {
    const int G = D >> st.v_group_shift;
    const int64_t mins_off = (int64_t(2) << st.block_shift) * G;  // bytes of the scales
    uint16_t* d16 = reinterpret_cast<uint16_t*>(dst);
    for (int idx = int(threadIdx.x); idx < TK * kKiviMaxGroups; idx += kThreads) {
        const int j = idx / kKiviMaxGroups, w = idx - j * kKiviMaxGroups;
        const int64_t t = t0 + j;
        const bool valid = t < st.key_end;
        const int64_t tc = valid ? t : t0;
        const int64_t blk = __ldg(st.table + (tc >> st.block_shift));
        const uint8_t* aux = st.head_base + blk * st.block_stride + st.v_aux_off + (tc & st.block_mask) * G * 2;
        if ((G & 1) == 0) {
            if (w >= G) continue;
            const bool mins = w >= G / 2;
            const int ww = mins ? w - G / 2 : w;
            cp_async_n<4>(d16 + (mins ? TK * kKiviMaxGroups : 0) + j * kKiviMaxGroups + 2 * ww,
                          aux + (mins ? mins_off : 0) + 4 * ww, valid);
        } else {
            if (w >= 2 * G) continue;
            const bool mins = w >= G;
            const int gi = mins ? w - G : w;
            d16[(mins ? TK * kKiviMaxGroups : 0) + j * kKiviMaxGroups + gi] =
                valid ? __ldg(reinterpret_cast<const unsigned short*>(aux + (mins ? mins_off : 0) + 2 * gi)) : uint16_t(0);
        }
    }
}

// Rows of one side into its stage section. RES: the residual pass (KIVI sides read f16 residual rows).
template <int D, int TK, class S, bool RES>
__device__ __forceinline__ void load_side(uint4* dst, const Stream& st, int64_t t0, int64_t section_off, const uint8_t* res,
                                          int bits) {
    if constexpr (S::kKivi && RES) {
        load_res_rows<D / 8, TK * D / 8>(dst, res, st, t0);
    } else if constexpr (S::kKivi) {
        if (bits == 4) load_kivi_rows<D, 4, TK>(dst, st, t0, section_off);
        else load_kivi_rows<D, 2, TK>(dst, st, t0, section_off);
    } else {
        load_rows<row_vec<S, D>(), TK * row_vec<S, D>()>(dst, st, t0, section_off, S::kQ8 ? D : 2 * D);
    }
}

template <class S, bool RES>
using StageSide = typename std::conditional<RES, ResSide<S>, S>::type;

template <int D, int ROWS, class KT, class VT, bool RES = false>
__device__ __forceinline__ void load_tile(uint4* dst, const Stream& st, int64_t t0) {
    using SL = StageLayout<D, ROWS, StageSide<KT, RES>, StageSide<VT, RES>>;
    constexpr Geometry g = SL::g;
    load_side<D, g.tile_keys, KT, RES>(dst, st, t0, st.k_off, st.res_k, st.k_code);
    load_side<D, g.tile_keys, VT, RES>(dst + SL::kKeyVec, st, t0, st.v_off, st.res_v, st.v_code);
    float* scales = reinterpret_cast<float*>(dst + SL::kKeyVec + SL::kValVec);
    if constexpr (KT::kQ8) load_scales<g.tile_keys>(scales, st, t0, st.k_aux_off);
    if constexpr (VT::kQ8) load_scales<g.tile_keys>(scales + (KT::kQ8 ? g.tile_keys : 0), st, t0, st.v_aux_off);
    if constexpr (KT::kKivi && !RES) load_kivi_kmeta<D, SL::kKiviKSlots, g.tile_keys>(dst + SL::kKMetaOff / 16, st, t0);
    if constexpr (VT::kKivi && !RES) load_kivi_vmeta<D, g.tile_keys>(dst + SL::kVMetaOff / 16, st, t0);
}

// Per-thread query rows: scaled queries, masks, ALiBi slopes.
template <int RPT>
struct Rows {
    float q[RPT][kVec];
    int64_t hi[RPT], lo[RPT];  // visible keys [lo, hi]; hi = -1 for padding rows
    float slope[RPT];
};

// Stages 2 + 3 for one tile in shared memory: scores of this thread's keys, then the online softmax
// and the P.V accumulation, per row and per sub-tile of ksub keys. Written stage by stage across the
// sub-tile's keys (all partial dot products, then each butterfly level for all keys, then transforms,
// weights, P.V) so that the ksub keys are independent chains the scheduler interleaves: written key by
// key, the first H200 run's SASS ran one dot -> butterfly -> softmax chain at a time (~150 cycles of
// latency per key). The arithmetic per key and its order are unchanged (score_transform, state_add).
template <int D, int ROWS, class KT, class VT>
__device__ __forceinline__ void compute_tile(const uint4* tile, int64_t t0, const Stream& ss, const Rows<geometry(D, ROWS).rpt>& rw,
                                             State* st, int x, int z, float softcap, bool alibi) {
    using SL = StageLayout<D, ROWS, KT, VT>;
    constexpr Geometry g = SL::g;
    const int64_t key_end = ss.key_end;
    const int k_code = ss.k_code, v_code = ss.v_code;
    const uint4* ks = tile;
    const uint4* vs = tile + SL::kKeyVec;
    const float* k_scales = reinterpret_cast<const float*>(tile + SL::kKeyVec + SL::kValVec);
    const float* v_scales = k_scales + (KT::kQ8 ? g.tile_keys : 0);
    const float k_factor = kvq_cuda::q8_scale_factor(k_code != 0), v_factor = kvq_cuda::q8_scale_factor(v_code != 0);
    const bool lane_on = x < g.chunks;
    // KIVI: staged metadata (StageLayout) and the block slot of the tile's first key
    const uint4* k_meta = tile + SL::kKMetaOff / 16;
    const uint16_t* v_meta = reinterpret_cast<const uint16_t*>(tile + SL::kVMetaOff / 16);
    const int64_t blk0 = t0 >> ss.block_shift;
    const int v_gi = (kVec * x) >> ss.v_group_shift;
#pragma unroll
    for (int k = 0; k < g.rpt; ++k) {
        // visible tile keys of this row: lo_rel <= tt <= hi_rel (32-bit, once per tile)
        const int64_t last = (rw.hi[k] < key_end - 1 ? rw.hi[k] : key_end - 1) - t0;
        const int64_t first = rw.lo[k] - t0;
        const int hi_rel = last < -1 ? -1 : last > g.tile_keys ? g.tile_keys : int(last);
        const int lo_rel = first < 0 ? 0 : first > g.tile_keys ? g.tile_keys : int(first);
#pragma unroll 1
        for (int sb = 0; sb < g.kpt / g.ksub; ++sb) {  // not unrolled: keeps register pressure flat
            float sc[g.ksub];
#pragma unroll
            for (int jj = 0; jj < g.ksub; ++jj) {
                const int tt = geo_tile_key(g, z, sb * g.ksub + jj);
                float part = 0.0f;
                if (lane_on) {
                    float kf[kVec];
                    if constexpr (KT::kKivi) {
                        // code * scale[d] + min[d] with the per-channel statistics of the key's block
                        const int slot = int(((t0 + tt) >> ss.block_shift) - blk0);
                        float ksc[kVec], kmn[kVec];
                        KvF16::to_float(k_meta[slot * (D / 4) + x], ksc);
                        KvF16::to_float(k_meta[slot * (D / 4) + D / 8 + x], kmn);
                        kivi_codes(reinterpret_cast<const uint8_t*>(ks) + tt * (D * k_code / 8), x, k_code, kf);
#pragma unroll
                        for (int e = 0; e < kVec; ++e) kf[e] = fmaf(kf[e], ksc[e], kmn[e]);
                    } else {
                        KT::template load<D>(ks, tt, x, k_code, kf);
                    }
#pragma unroll
                    for (int e = 0; e < kVec; ++e) part = fmaf(rw.q[k][e], kf[e], part);
                }
                sc[jj] = part;
            }
#pragma unroll
            for (int off = g.lanes / 2; off > 0; off >>= 1)  // lanes_sum, one level for all keys at a time
#pragma unroll
                for (int jj = 0; jj < g.ksub; ++jj) sc[jj] += __shfl_xor_sync(0xffffffffu, sc[jj], off);
            uint32_t vis = 0;
            float tmax = neg_inf();
#pragma unroll
            for (int jj = 0; jj < g.ksub; ++jj) {
                const int tt = geo_tile_key(g, z, sb * g.ksub + jj);
                float dot = sc[jj];
                if constexpr (KT::kQ8) dot *= k_scales[tt] * k_factor;  // per-token scale after the dot product
                sc[jj] = dot;
                if (tt >= lo_rel && tt <= hi_rel) vis |= 1u << jj;
            }
            if (softcap > 0.0f || alibi) {  // uniform: the transforms stay off the plain path
#pragma unroll
                for (int jj = 0; jj < g.ksub; ++jj)
                    sc[jj] = score_transform(sc[jj], softcap, alibi, rw.slope[k], t0 + geo_tile_key(g, z, sb * g.ksub + jj), rw.hi[k]);
            }
#pragma unroll
            for (int jj = 0; jj < g.ksub; ++jj)
                if ((vis >> jj) & 1u) tmax = fmaxf(tmax, sc[jj]);
            if (tmax > st[k].m) state_raise_max(st[k], tmax);
            float pw[g.ksub];  // softmax weights (state_add's p), 0 for masked keys
#pragma unroll
            for (int jj = 0; jj < g.ksub; ++jj) pw[jj] = ((vis >> jj) & 1u) ? expf(sc[jj] - st[k].m) : 0.0f;
#pragma unroll
            for (int jj = 0; jj < g.ksub; ++jj) st[k].l += pw[jj];  // + 0 for masked keys: exact
#pragma unroll
            for (int jj = 0; jj < g.ksub; ++jj) {
                if (!((vis >> jj) & 1u)) continue;
                const int tt = geo_tile_key(g, z, sb * g.ksub + jj);
                float vf[kVec];
                if (lane_on) {
                    if constexpr (VT::kKivi) {
                        // code * scale[t][g] + min[t][g]: a lane's 8 channels lie in one group
                        const float vsc = __half2float(__ushort_as_half(v_meta[tt * kKiviMaxGroups + v_gi]));
                        const float vmn = __half2float(__ushort_as_half(v_meta[(g.tile_keys + tt) * kKiviMaxGroups + v_gi]));
                        kivi_codes(reinterpret_cast<const uint8_t*>(vs) + tt * (D * v_code / 8), x, v_code, vf);
#pragma unroll
                        for (int e = 0; e < kVec; ++e) vf[e] = fmaf(vf[e], vsc, vmn);
                    } else {
                        VT::template load<D>(vs, tt, x, v_code, vf);
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < kVec; ++e) vf[e] = 0.0f;
                }
                // state_add / state_add_scaled with p already computed (scale folded into p for 8-bit V)
                const float pv = VT::kQ8 ? pw[jj] * (v_scales[tt] * v_factor) : pw[jj];
#pragma unroll
                for (int e = 0; e < kVec; ++e) st[k].o[e] = fmaf(pv, vf[e], st[k].o[e]);
            }
        }
    }
}

// Finish of one (row, 8-channel chunk x): the final output when the sequence has one split, else the
// f32 partial and (chunk 0) its LSE in the workspace for merge_kernel.
template <int D>
__device__ __forceinline__ void store_row(const Params& p, const SeqWork& w, int h, int split, int i0, int r, int x, const State& st) {
    float o[kVec];
    const float lse = state_finish(st, o);
    const int qi = i0 + r / p.group, hq = h * p.group + r % p.group;
    if (w.n_splits == 1) {
        uint16_t* dst = static_cast<uint16_t*>(p.out) + qo_offset(w.batch_index, qi, hq, p.q_len, p.num_q_heads, D) + x * kVec;
        *reinterpret_cast<uint4*>(dst) = pack_out(o, p.io_bf16 != 0);
    } else {
        const int64_t row = ws_row(w.ws_row_base, h, w.n_splits, split, p.rows, i0 * p.group + r);
        float4* dst = reinterpret_cast<float4*>(p.ws_o + row * D + x * kVec);
        dst[0] = make_float4(o[0], o[1], o[2], o[3]);
        dst[1] = make_float4(o[4], o[5], o[6], o[7]);
        if (x == 0) p.ws_lse[row] = lse;
    }
}

// Keys [kb, ke) of one stream through the cp.async ring: tiles i+1 .. i+kStages-1 are in flight while
// tile i is computed. RES: the KIVI residual pass (KIVI sides read as their f16 residual rows).
// Returns with every copy landed and the stage buffers free.
template <int D, int ROWS, class KT, class VT, bool RES>
__device__ __forceinline__ void stream_tiles(const Stream& ss, int64_t kb, int64_t ke, const Rows<geometry(D, ROWS).rpt>& rw,
                                             State* st, int x, int z, float softcap, bool alibi, uint4* smem) {
    using CK = StageSide<KT, RES>;
    using CV = StageSide<VT, RES>;
    constexpr Geometry g = geometry(D, ROWS);
    const int64_t span = ke > kb ? ke - kb : 0;
    const int ntiles = int((span + g.tile_keys - 1) / g.tile_keys);
    if (ntiles == 0) return;  // CTA-uniform
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < ntiles) load_tile<D, ROWS, KT, VT, RES>(smem + s * g.stage_vec, ss, kb + int64_t(s) * g.tile_keys);
        cp_async_commit();
    }
    for (int i = 0; i < ntiles; ++i) {
        const int nxt = i + kStages - 1;
        if (nxt < ntiles) load_tile<D, ROWS, KT, VT, RES>(smem + (nxt % kStages) * g.stage_vec, ss, kb + int64_t(nxt) * g.tile_keys);
        cp_async_commit();
        cp_async_wait<kStages - 1>();
        __syncthreads();
        compute_tile<D, ROWS, CK, CV>(smem + (i % kStages) * g.stage_vec, kb + int64_t(i) * g.tile_keys, ss, rw, st, x, z, softcap,
                                      alibi);
        __syncthreads();  // the next iteration's copies overwrite this stage
    }
    cp_async_wait<0>();
    __syncthreads();
}

template <int D, int ROWS, class KT, class VT>
__global__ void __launch_bounds__(kThreads) split_kernel(const Params p) {
    constexpr Geometry g = geometry(D, ROWS);
    static_assert(g.y * g.rpt == ROWS && g.y * g.z == g.slots && g.kpt * g.z == g.tile_keys, "geometry");
    static_assert(g.kpt % g.ksub == 0 && g.ksub <= 32, "sub-tiles");
    static_assert(zmerge_floats(g) * 4 <= g.smem_bytes, "slot merge scratch must fit in the stage buffers");
    static_assert(g.smem_bytes <= 48 * 1024, "no opt-in shared memory needed");
    extern __shared__ uint4 smem[];

    const int tid = threadIdx.x;
    const int x = tid % g.lanes;
    const int y = (tid / g.lanes) % g.y;
    const int z = tid / (g.lanes * g.y);
    const bool lane_on = x < g.chunks;

    // Work item -> (sequence, kv head, split, row chunk).
    const CtaWork cw = cta_work(p);
    const SeqWork& w = cw.w;
    const Item& it = cw.it;
    const int64_t L = w.length, kb = cw.kb, ke = cw.ke;
    const int h = it.head, i0 = cw.i0, rows = cw.rows;

    // Query rows owned by this thread (row r = query i0 + r / group, head h * group + r % group).
    Rows<g.rpt> rw;
#pragma unroll
    for (int k = 0; k < g.rpt; ++k) {
        const int r = geo_row(g, y, k);
        rw.hi[k] = -1;
        rw.lo[k] = 0;
        rw.slope[k] = 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) rw.q[k][e] = 0.0f;
        if (r < rows) {
            const int qi = i0 + r / p.group, hq = h * p.group + r % p.group;
            rw.hi[k] = query_pos(L, p.q_len, qi);
            rw.lo[k] = first_key(rw.hi[k], p.window);
            if (p.slopes) rw.slope[k] = p.slopes[hq];
            if (lane_on) {
                const uint16_t* src = static_cast<const uint16_t*>(p.q) +
                                      qo_offset(w.batch_index, qi, hq, p.q_len, p.num_q_heads, D) + x * kVec;
                const uint4 raw = *reinterpret_cast<const uint4*>(src);
                if (p.io_bf16) KvBf16::to_float(raw, rw.q[k]);
                else KvF16::to_float(raw, rw.q[k]);
#pragma unroll
                for (int e = 0; e < kVec; ++e) rw.q[k][e] *= p.scale;
            }
        }
    }

    State st[g.rpt];
#pragma unroll
    for (int k = 0; k < g.rpt; ++k) state_init(st[k]);

    const bool alibi = p.slopes != nullptr;
    if constexpr (KT::kKivi || VT::kKivi) {
        // KIVI: quantized full blocks below res_begin, then the f16 residual tile of the partial block
        // (both passes keep the key order of one pass, so the online softmax sees the same sequence).
        const int64_t res_begin = (L >> p.block_shift) << p.block_shift;
        const int64_t e1 = ke < res_begin ? ke : res_begin;
        stream_tiles<D, ROWS, KT, VT, false>(make_stream(p, w, h, e1), kb, e1, rw, st, x, z, p.softcap, alibi, smem);
        const int64_t b2 = kb > res_begin ? kb : res_begin;
        stream_tiles<D, ROWS, KT, VT, true>(make_stream(p, w, h, ke), b2, ke, rw, st, x, z, p.softcap, alibi, smem);
    } else {
        stream_tiles<D, ROWS, KT, VT, false>(make_stream(p, w, h, ke), kb, ke, rw, st, x, z, p.softcap, alibi, smem);
    }

    // Merge the key slots' states (fixed order), reusing the stage buffers as scratch:
    // m[z][row], l[z][row], o[z][row][head_dim].
    if constexpr (g.z > 1) {
        float* ms = reinterpret_cast<float*>(smem);
        float* ls = ms + g.z * ROWS;
        float* os = ls + g.z * ROWS;
        const int r = geo_row(g, y, 0);  // rpt == 1 whenever z > 1
        const int idx = z * ROWS + r;
        if (x == 0) {
            ms[idx] = st[0].m;
            ls[idx] = st[0].l;
        }
        if (lane_on) {
#pragma unroll
            for (int e = 0; e < kVec; ++e) os[idx * D + x * kVec + e] = st[0].o[e];
        }
        __syncthreads();
        if (z == 0 && lane_on) merge_slots(g.z, ms + r, ls + r, ROWS, os + r * D + x * kVec, ROWS * D, st[0]);
    }

    // Finish: final output for unsplit sequences, f32 partial + LSE otherwise.
    if (z != 0 || !lane_on) return;
#pragma unroll
    for (int k = 0; k < g.rpt; ++k) {
        const int r = geo_row(g, y, k);
        if (r < rows) store_row<D>(p, w, h, it.split, i0, r, x, st[k]);
    }
}

// ---------------------------------------------------------------------------------------------
// Merge kernel: one CTA per (split sequence, kv head); each warp combines whole rows.
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Tensor-core split kernel (f16 K/V/q/out, head_dim 64 or 128, group x q_len <= 16 rows)
// ---------------------------------------------------------------------------------------------
//
// Why: the SIMT kernel above spends ~110 warp instructions per key (a dequant and an FMA per element
// and query row, a butterfly per key and row), which held the first H200 runs at 37-55 % of the copy
// bandwidth, below torch SDPA. Here the CTA's query rows (<= 16: one m16 tile, zero-padded) meet the
// keys in mma.sync m16n8k16 (fp32 accumulation): S = Q K^T and O += P V take ~2 mma per key and warp,
// and the softmax runs on the accumulator fragments, ~10 instructions per key in all.
//  - Work item, split policy, pipeline and finish are those of split_kernel (same Params, same
//    workspace rows, same merge): only the tile computation differs.
//  - Tile = 64 keys, one 16-key slice per warp, each warp with its own online-softmax state (m, l and
//    O fragments), the 4 states merged in warp order at the end (merge_slots, as the key slots above).
//  - Shared rows are XOR-swizzled in 16-byte chunks (chunk c of key row j at c ^ (j % 8)), so the
//    ldmatrix reads (8 rows at one chunk column) hit 8 different bank groups; needs >= 8 chunks a row,
//    hence head_dim 64 or 128 (the other head dims use the SIMT kernel).
//  - K fragments come from ldmatrix on the key rows (a row's 8 halves are one B-fragment column of
//    K^T); V fragments from ldmatrix.trans; the S accumulator fragments are the P operand's A fragments
//    (FlashAttention-2's register reuse), so P never touches shared memory.
//  - Precision: q and K are f16 as stored, products exact, fp32 accumulation; the scale is applied to
//    S in fp32. P is split into two f16 terms (p = hi + lo, |lo| <= 2^-11 |p|) and both multiply V,
//    so the weights keep ~22 bits: the same error bounds as the fp32 SIMT path, not f16's 2^-11.
constexpr int kMmaTileKeys = 64;
constexpr int kMmaStages = 3;
constexpr int kMmaRows = 16;

template <int D, bool kQ8>
struct MmaShape {
    static constexpr int kChunks = D / 8;  // 16-byte chunks per f16 row (ldmatrix operand tiles)
    // uint4 per stage. f16: K rows then V rows (swizzled). 8-bit: K codes, V codes (D / 16 chunks a row,
    // linear), then the tile's K and V per-token f32 scales (2 x 64 floats).
    static constexpr int kStageVec = kQ8 ? 2 * kMmaTileKeys * (D / 16) + 2 * kMmaTileKeys / 4 : 2 * kMmaTileKeys * kChunks;
    static constexpr int kWorkVec = kQ8 ? 2 * kMmaTileKeys * kChunks : 0;  // 8-bit: the tile decoded to f16
    static constexpr int kSmemBytes = (kMmaStages * kStageVec + kWorkVec) * 16;
    static constexpr int kScratchFloats = 4 * kMmaRows * (D + 2);  // per-warp m, l, O for the final merge
    static_assert(kChunks >= 8, "the XOR swizzle needs >= 8 chunks per row");
    static_assert(kScratchFloats * 4 <= kSmemBytes, "merge scratch fits in the stage buffers");
};

__device__ __forceinline__ int swz(int j, int c, int chunks) { return j * chunks + (c ^ (j & 7)); }

template <int D>
__device__ __forceinline__ void mma_load_tile(uint4* dst, const Stream& st, int64_t t0) {
    constexpr int kC = MmaShape<D, false>::kChunks;
    constexpr int kCount = kMmaTileKeys * kC;
#pragma unroll
    for (int i = 0; i < kCount / kThreads; ++i) {
        const int idx = int(threadIdx.x) + i * kThreads;
        const int j = idx / kC, c = idx - j * kC;
        const int64_t t = t0 + j;
        const bool valid = t < st.key_end;
        const int64_t tc = valid ? t : t0;
        const int64_t blk = __ldg(st.table + (tc >> st.block_shift));
        const int64_t off = kv_row_chunk_offset(blk, st.block_stride, 0, tc, st.block_mask, 2 * D, c);
        cp_async16(dst + swz(j, c, kC), st.head_base + st.k_off + off, valid);
        cp_async16(dst + kMmaTileKeys * kC + swz(j, c, kC), st.head_base + st.v_off + off, valid);
    }
}

// 8-bit sides: codes and per-token scales are copied as they are stored (the SIMT kernel's helpers),
// then decoded to exact f16 values in a work tile laid out like the f16 stage, which the f16 code path
// reads unchanged. INT8 codes and E4M3 values are exact in f16, so q.k and p.v lose nothing; the
// per-token scales multiply S (K) and P (V) in fp32 as in the SIMT kernel.
template <int D>
__device__ __forceinline__ void mma_load_tile_q8(uint4* dst, const Stream& st, int64_t t0) {
    constexpr int kRow = D / 16, kCount = kMmaTileKeys * kRow;
    load_rows<kRow, kCount>(dst, st, t0, st.k_off, D);
    load_rows<kRow, kCount>(dst + kCount, st, t0, st.v_off, D);
    float* scales = reinterpret_cast<float*>(dst + 2 * kCount);
    load_scales<kMmaTileKeys>(scales, st, t0, st.k_aux_off);
    load_scales<kMmaTileKeys>(scales + kMmaTileKeys, st, t0, st.v_aux_off);
}

// Bytes 0 and 1 of w -> two exact f16 (low half = byte 0): INT8 through the 1024 + (x + 128) magic, E4M3
// through kvq_cuda's bit move (value x 2^-8) and an exact x 256.
__device__ __forceinline__ uint32_t q8x2_to_f16x2(uint32_t w, bool fp8) {
    __half2 h;
    if (fp8) {
        const uint32_t b = kvq_cuda::e4m3x2_to_f16x2(w);
        h = __hmul2(*reinterpret_cast<const __half2*>(&b), __float2half2_rn(256.0f));
    } else {
        const uint32_t u = __byte_perm(w ^ 0x8080u, 0x64u, 0x4140);  // halves 0x64xx: 1024 + (x + 128)
        h = __hsub2(*reinterpret_cast<const __half2*>(&u), __float2half2_rn(1152.0f));
    }
    return *reinterpret_cast<const uint32_t*>(&h);
}

// Stage codes (K rows, then V rows) -> the swizzled f16 work tile (K rows, then V rows).
template <int D>
__device__ __forceinline__ void mma_decode_tile_q8(const uint4* stage, uint4* work, bool k_fp8, bool v_fp8) {
    constexpr int kRow = D / 16, kCount = kMmaTileKeys * kRow, kC = D / 8;
    for (int idx = int(threadIdx.x); idx < 2 * kCount; idx += kThreads) {
        const int side = idx / kCount, rem = idx - side * kCount;
        const int j = rem / kRow, c16 = rem - j * kRow;
        const bool fp8 = side ? v_fp8 : k_fp8;
        const uint4 raw = stage[idx];
        const uint4 lo = make_uint4(q8x2_to_f16x2(raw.x, fp8), q8x2_to_f16x2(raw.x >> 16, fp8), q8x2_to_f16x2(raw.y, fp8),
                                    q8x2_to_f16x2(raw.y >> 16, fp8));
        const uint4 hi = make_uint4(q8x2_to_f16x2(raw.z, fp8), q8x2_to_f16x2(raw.z >> 16, fp8), q8x2_to_f16x2(raw.w, fp8),
                                    q8x2_to_f16x2(raw.w >> 16, fp8));
        uint4* rows = work + side * kMmaTileKeys * kC;
        // A 16-byte store is served per quarter-warp (8 threads). At D = 128 those 8 threads are c16 = 0..7
        // of one row, and lo then hi would hit chunks 2 c16 (^ row swizzle): only 4 distinct 16-byte bank
        // groups, a 2-way conflict per store (found by review). Threads c16 >= 4 store hi first: each
        // store then covers 8 distinct groups. D = 64 (two rows per quarter-warp) is unaffected.
        const bool hi_first = (c16 & 4) != 0;
        rows[swz(j, 2 * c16 + (hi_first ? 1 : 0), kC)] = hi_first ? hi : lo;
        rows[swz(j, 2 * c16 + (hi_first ? 0 : 1), kC)] = hi_first ? lo : hi;
    }
}

__device__ __forceinline__ uint32_t pack_half2(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
}

// O accumulator fragments (NT n8 tiles of m16n8 C fragments): this thread's row g times a, row g + 8 times b.
template <int NT>
__device__ __forceinline__ void scale_rows(float (&o)[NT][4], float a, float b) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        o[nt][0] *= a;
        o[nt][1] *= a;
        o[nt][2] *= b;
        o[nt][3] *= b;
    }
}

template <int D, bool kQ8>
__global__ void __launch_bounds__(kThreads) mma_kernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using MS = MmaShape<D, kQ8>;
    constexpr int kC = MS::kChunks;
    constexpr int kKSteps = D / 16;  // k16 steps of S = Q K^T
    constexpr int kNT = D / 8;       // n8 tiles of O
    extern __shared__ uint4 smem[];
    const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, c4 = lane % 4;

    const CtaWork cw = cta_work(p);
    const SeqWork& w = cw.w;
    const Item& it = cw.it;
    const int64_t L = w.length, kb = cw.kb, ke = cw.ke;
    const int h = it.head, i0 = cw.i0, rows = cw.rows;

    // This thread's two rows (g, g + 8): Q as m16n8k16 A fragments (f16 as stored), masks, slopes.
    uint32_t qa[kKSteps][4];
    int64_t hi[2], lo[2];
    float slope[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int r = g + 8 * ri;
        hi[ri] = -1;
        lo[ri] = 0;
        slope[ri] = 0.0f;
        const uint16_t* qrow = nullptr;
        if (r < rows) {
            const int qi = i0 + r / p.group, hq = h * p.group + r % p.group;
            hi[ri] = query_pos(L, p.q_len, qi);
            lo[ri] = first_key(hi[ri], p.window);
            if (p.slopes) slope[ri] = p.slopes[hq];
            qrow = static_cast<const uint16_t*>(p.q) + qo_offset(w.batch_index, qi, hq, p.q_len, p.num_q_heads, D);
        }
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
            qa[ks][ri] = qrow ? *reinterpret_cast<const uint32_t*>(qrow + 16 * ks + 2 * c4) : 0u;
            qa[ks][2 + ri] = qrow ? *reinterpret_cast<const uint32_t*>(qrow + 16 * ks + 8 + 2 * c4) : 0u;
        }
    }

    const Stream ss = make_stream(p, w, h, ke);

    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
    // 8-bit V: each row's o is kept in units of 2^ve[ri] (q8_unit_step in decode_attention_cuda_plan.cuh,
    // host-tested; kQ8NoExp: none yet), cb[ri] the running bound of the row's largest p x scale.
    int ve[2] = {kQ8NoExp, kQ8NoExp};
    float cb[2] = {0.0f, 0.0f};
    float o[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;

    const int64_t span = ke > kb ? ke - kb : 0;
    const int ntiles = int((span + kMmaTileKeys - 1) / kMmaTileKeys);
    auto load = [&](int tile, int stage) {
        uint4* dst = smem + stage * MS::kStageVec;
        if constexpr (kQ8) mma_load_tile_q8<D>(dst, ss, kb + int64_t(tile) * kMmaTileKeys);
        else mma_load_tile<D>(dst, ss, kb + int64_t(tile) * kMmaTileKeys);
    };
#pragma unroll
    for (int s = 0; s < kMmaStages - 1; ++s) {
        if (s < ntiles) load(s, s);
        cp_async_commit();
    }
    const bool transform = p.softcap > 0.0f || p.slopes != nullptr;
    const int key0 = 16 * warp;  // this warp's keys in a tile: [key0, key0 + 16)
    for (int i = 0; i < ntiles; ++i) {
        const int nxt = i + kMmaStages - 1;
        if (nxt < ntiles) load(nxt, nxt % kMmaStages);
        cp_async_commit();
        cp_async_wait<kMmaStages - 1>();
        __syncthreads();
        const uint4* stage = smem + (i % kMmaStages) * MS::kStageVec;
        const float* k_scales = nullptr;
        const float* v_scales = nullptr;
        const uint4* ks_ = stage;
        if constexpr (kQ8) {
            uint4* work = smem + kMmaStages * MS::kStageVec;
            mma_decode_tile_q8<D>(stage, work, p.k_code != 0, p.v_code != 0);
            k_scales = reinterpret_cast<const float*>(stage + 2 * kMmaTileKeys * (D / 16));
            v_scales = k_scales + kMmaTileKeys;
            ks_ = work;
            __syncthreads();  // the decoded tile is complete
        }
        const uint4* vs_ = ks_ + kMmaTileKeys * kC;
        const int64_t t0 = kb + int64_t(i) * kMmaTileKeys;

        // S (16 rows x 16 keys) = Q K^T: two n8 key tiles per k16 step.
        float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        {
            const int mi = lane / 8, rr = lane % 8;
            const int j = key0 + 8 * (mi >> 1) + rr;
#pragma unroll
            for (int kk = 0; kk < kKSteps; ++kk) {
                uint32_t kf[4];
                ptx::ldmatrix_x4(kf, ks_ + swz(j, 2 * kk + (mi & 1), kC));
                ptx::mma_16816<false>(sc[0], qa[kk], kf[0], kf[1]);
                ptx::mma_16816<false>(sc[1], qa[kk], kf[2], kf[3]);
            }
        }
        // Scores: scale, transforms, masks (row ri = g + 8 ri; key = key0 + 8 jt + 2 c4 + e).
        float pr[2][4];
        float mnew[2], alpha[2];
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            const int64_t last = (hi[ri] < ke - 1 ? hi[ri] : ke - 1) - t0;
            const int64_t first = lo[ri] - t0;
            float mx = neg_inf();
#pragma unroll
            for (int jt = 0; jt < 2; ++jt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int tt = key0 + 8 * jt + 2 * c4 + e;
                    float v = sc[jt][2 * ri + e];
                    if constexpr (kQ8) v *= k_scales[tt];  // per-token K scale after the dot product
                    v *= p.scale;
                    if (transform) v = score_transform(v, p.softcap, p.slopes != nullptr, slope[ri], t0 + tt, hi[ri]);
                    const bool vis = tt >= first && tt <= last;
                    pr[jt][2 * ri + e] = vis ? v : neg_inf();
                    mx = fmaxf(mx, pr[jt][2 * ri + e]);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a row
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mnew[ri] = fmaxf(m[ri], mx);
            alpha[ri] = mnew[ri] == neg_inf() ? 1.0f : expf(m[ri] - mnew[ri]);  // m = -inf: alpha = 0
            float sum = 0.0f;
#pragma unroll
            for (int jt = 0; jt < 2; ++jt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float& v = pr[jt][2 * ri + e];
                    v = v == neg_inf() ? 0.0f : expf(v - mnew[ri]);
                    sum += v;
                }
            l[ri] = l[ri] * alpha[ri] + sum;  // this lane's share; the 4 lanes are added at the end
            m[ri] = mnew[ri];
        }
        scale_rows(o, alpha[0], alpha[1]);
        if constexpr (kQ8) {  // V's per-token scale folded into the weights (l above used p itself)
            float r[2] = {1.0f, 1.0f}, r2[2] = {1.0f, 1.0f}, unit[2];
#pragma unroll
            for (int ri = 0; ri < 2; ++ri) {
                float cm = 0.0f;  // this tile's largest p x scale of row ri (the 4 lanes of the row)
#pragma unroll
                for (int jt = 0; jt < 2; ++jt)
#pragma unroll
                    for (int e = 0; e < 2; ++e) cm = fmaxf(cm, pr[jt][2 * ri + e] * v_scales[key0 + 8 * jt + 2 * c4 + e]);
                cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 1));
                cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, 2));
                const Q8UnitStep st = q8_unit_step(cb[ri], ve[ri], alpha[ri], cm);
                r[ri] = st.r1;
                r2[ri] = st.r2;
                unit[ri] = st.unit;
            }
            scale_rows(o, r[0], r[1]);
            if (r2[0] != 1.0f || r2[1] != 1.0f) scale_rows(o, r2[0], r2[1]);
#pragma unroll
            for (int jt = 0; jt < 2; ++jt)
#pragma unroll
                for (int e = 0; e < 4; ++e) pr[jt][e] = q8_weight(pr[jt][e], v_scales[key0 + 8 * jt + 2 * c4 + (e & 1)], unit[e >> 1]);
        }
        // P as A fragments, split p = hi + lo in f16.
        uint32_t ph[4], pl[4];
        {
            const float* q0 = pr[0];
            const float* q1 = pr[1];
            const float src[8] = {q0[0], q0[1], q0[2], q0[3], q1[0], q1[1], q1[2], q1[3]};
#pragma unroll
            for (int rg = 0; rg < 4; ++rg) {  // rg: (row g | g+8) x (keys 2c4 | 8 + 2c4)
                const float a = src[2 * rg], b = src[2 * rg + 1];
                const __half2 hh = __floats2half2_rn(a, b);
                const float2 hf = __half22float2(hh);
                ph[rg] = *reinterpret_cast<const uint32_t*>(&hh);
                pl[rg] = pack_half2(a - hf.x, b - hf.y);
            }
        }
        // O += P V: per pair of n8 dim tiles, one ldmatrix.trans of 16 keys x 16 dims.
        {
            const int mi = lane / 8, rr = lane % 8;
            const int j = key0 + 8 * (mi & 1) + rr;
#pragma unroll
            for (int pp = 0; pp < kNT / 2; ++pp) {
                uint32_t vf[4];
                ptx::ldmatrix_x4_trans(vf, vs_ + swz(j, 2 * pp + (mi >> 1), kC));
                ptx::mma_16816<false>(o[2 * pp], ph, vf[0], vf[1]);
                ptx::mma_16816<false>(o[2 * pp], pl, vf[0], vf[1]);
                ptx::mma_16816<false>(o[2 * pp + 1], ph, vf[2], vf[3]);
                ptx::mma_16816<false>(o[2 * pp + 1], pl, vf[2], vf[3]);
            }
        }
        __syncthreads();  // the next iteration's copies overwrite this stage
    }
    cp_async_wait<0>();
    __syncthreads();

    if constexpr (kQ8)  // back from units of 2^ve (exact)
        scale_rows(o, ve[0] == kQ8NoExp ? 1.0f : ldexpf(1.0f, ve[0]), ve[1] == kQ8NoExp ? 1.0f : ldexpf(1.0f, ve[1]));
    // Warp states -> shared scratch (m, l per row; O), then merged in warp order per (row, chunk).
    float* ms = reinterpret_cast<float*>(smem);
    float* ls = ms + 4 * kMmaRows;
    float* os = ls + 4 * kMmaRows;
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        float lr = l[ri];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const int r = g + 8 * ri;
        if (c4 == 0) {
            ms[warp * kMmaRows + r] = m[ri];
            ls[warp * kMmaRows + r] = lr;
        }
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
            os[(warp * kMmaRows + r) * D + 8 * nt + 2 * c4] = o[nt][2 * ri];
            os[(warp * kMmaRows + r) * D + 8 * nt + 2 * c4 + 1] = o[nt][2 * ri + 1];
        }
    }
    __syncthreads();
    for (int item = tid; item < kMmaRows * kC; item += kThreads) {
        const int r = item / kC, x = item % kC;
        if (r >= rows) continue;
        State st;
        merge_slots(4, ms + r, ls + r, kMmaRows, os + r * D + x * kVec, kMmaRows * D, st);
        store_row<D>(p, w, h, it.split, i0, r, x, st);
    }
#endif
}

// One CTA per (split sequence, kv head, row): the first H200 run showed the merge latency-bound (one
// warp per row walking the splits one dependent load at a time: ~150 us of a 295 us call at batch 1 x
// 32k with 128 splits). Now warp 0 computes the row's split weights into shared memory, then the 8 warps
// take splits s = warp, warp + 8, ... with every lane holding its channels' partial sums in registers
// (kMergeCh independent loads in flight per lane and step), and the 8 warp sums of a channel are added
// in warp order. Deterministic: the summation order depends on n only.
constexpr int kMergeThreads = 256;
constexpr int kMergeWarps = kMergeThreads / 32;
constexpr int kMergeCh = 8;  // channels per lane: head_dim <= 256

__global__ void __launch_bounds__(kMergeThreads) merge_kernel(const Params p) {
    __shared__ float wt[kMaxSplitsMerge];
    __shared__ float part[kMergeWarps][kMergeCh * 32];
    __shared__ int any_s;
    const int H = p.num_kv_heads;
    const int pos = int(blockIdx.x) / H, h = int(blockIdx.x) % H, r = int(blockIdx.y);
    const SeqWork w = p.work[pos];
    const int n = w.n_splits, R = p.rows, D = p.head_dim;
    const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    const int64_t base = ws_row(w.ws_row_base, h, n, 0, R, r);  // split s at base + s * R
    if (warp == 0) {
        const float* lse = p.ws_lse + base;
        float M = neg_inf();
        for (int s = lane; s < n; s += 32) M = fmaxf(M, lse[int64_t(s) * R]);
        M = warp_max(M);  // max is exact in any order
        const bool any = M != neg_inf();
        if (any)
            for (int s = lane; s < n; s += 32) wt[s] = merge_raw_weight(lse[int64_t(s) * R], M);
        __syncwarp();
        // denominator: each lane sums its splits in order, then a butterfly (fixed order: deterministic)
        float sum = 0.0f;
        if (any)
            for (int s = lane; s < n; s += 32) sum += wt[s];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        if (any)
            for (int s = lane; s < n; s += 32) wt[s] = wt[s] == 0.0f ? 0.0f : wt[s] / sum;
        if (lane == 0) any_s = any ? 1 : 0;
    }
    __syncthreads();
    const float* o = p.ws_o + base * D;
    const int64_t stride = int64_t(R) * D;
    constexpr int kU = 4;  // splits per step and warp: kU x kMergeCh loads in flight per lane
    float acc[kMergeCh];
#pragma unroll
    for (int c = 0; c < kMergeCh; ++c) acc[c] = 0.0f;
    if (any_s) {
        for (int s0 = warp; s0 < n; s0 += kU * kMergeWarps) {
            float v[kU][kMergeCh], wv[kU];
#pragma unroll
            for (int u = 0; u < kU; ++u) {
                const int s = s0 + u * kMergeWarps;
                wv[u] = s < n ? wt[s] : 0.0f;
#pragma unroll
                for (int c = 0; c < kMergeCh; ++c) {
                    const int d = lane + 32 * c;
                    v[u][c] = s < n && d < D ? __ldcg(o + int64_t(s) * stride + d) : 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < kU; ++u)  // splits in increasing order
#pragma unroll
                for (int c = 0; c < kMergeCh; ++c)
                    // empty partials (weight 0) are skipped, never multiplied (0 x a non-finite row would poison the sum)
                    if (wv[u] != 0.0f) acc[c] = fmaf(wv[u], v[u][c], acc[c]);
        }
    }
#pragma unroll
    for (int c = 0; c < kMergeCh; ++c) part[warp][lane + 32 * c] = acc[c];
    __syncthreads();
    const bool bf16 = p.io_bf16 != 0;
    const int qi = r / p.group, hq = h * p.group + r % p.group;
    uint16_t* dst = static_cast<uint16_t*>(p.out) + qo_offset(w.batch_index, qi, hq, p.q_len, p.num_q_heads, D);
    for (int d = int(threadIdx.x); d < D; d += kMergeThreads) {
        float v = 0.0f;
#pragma unroll
        for (int k = 0; k < kMergeWarps; ++k) v += part[k][d];  // warp order
        dst[d] = out_elem(v, bf16);
    }
}

// ---------------------------------------------------------------------------------------------
// Compile-time dispatch, in one place
// ---------------------------------------------------------------------------------------------

struct KernelInfo {
    void (*launch)(unsigned grid, int smem, cudaStream_t stream, const Params& p);
    const void* fn;
    int smem;
    int rows;
};

template <int D, int ROWS, class KT, class VT>
void launch_split(unsigned grid, int smem, cudaStream_t stream, const Params& p) {
    split_kernel<D, ROWS, KT, VT><<<grid, kThreads, smem, stream>>>(p);
}

template <int D, int ROWS, class KT, class VT>
KernelInfo kernel_info() {
    return KernelInfo{&launch_split<D, ROWS, KT, VT>, reinterpret_cast<const void*>(&split_kernel<D, ROWS, KT, VT>),
                      geometry(D, ROWS).smem_bytes, ROWS};
}

template <int D, class KT, class VT>
KernelInfo by_rows(int bucket) {
    switch (bucket) {
        case 1: return kernel_info<D, 1, KT, VT>();
        case 4: return kernel_info<D, 4, KT, VT>();
        case 8: return kernel_info<D, 8, KT, VT>();
        case 16: return kernel_info<D, 16, KT, VT>();
        case 32:
            if constexpr (max_rows_bucket(D) >= 32) return kernel_info<D, 32, KT, VT>();
            break;
    }
    fail(LLMN_STATUS_INTERNAL, "decode attention: no kernel for head_dim %d with %d rows", D, bucket);
}

template <class KT, class VT>
KernelInfo by_head_dim(int head_dim, int bucket) {
    switch (head_dim) {
        case 64: return by_rows<64, KT, VT>(bucket);
        case 80: return by_rows<80, KT, VT>(bucket);
        case 96: return by_rows<96, KT, VT>(bucket);
        case 128: return by_rows<128, KT, VT>(bucket);
        case 256: return by_rows<256, KT, VT>(bucket);
    }
    fail(LLMN_STATUS_UNSUPPORTED, "decode attention (CUDA): head_dim %d is not compiled (64, 80, 96, 128, 256)", head_dim);
}

bool is_q8(int32_t f) { return f == LLMN_KV_INT8 || f == LLMN_KV_FP8_E4M3; }
bool is_16bit(int32_t f) { return f == LLMN_KV_F16 || f == LLMN_KV_BF16; }

// Five side pairs x 5 head dims x 5 row buckets: same-format f16 and bf16 caches get fixed types,
// every pair with an 8-bit side resolves the element variant at run time (Params::k_code/v_code).
template <int D, bool kQ8>
void launch_mma(unsigned grid, int smem, cudaStream_t stream, const Params& p) {
    mma_kernel<D, kQ8><<<grid, kThreads, smem, stream>>>(p);
}

template <int D, bool kQ8>
KernelInfo mma_info() {
    return KernelInfo{&launch_mma<D, kQ8>, reinterpret_cast<const void*>(&mma_kernel<D, kQ8>), MmaShape<D, kQ8>::kSmemBytes,
                      kMmaRows};
}

KernelInfo mma_kernel_for(int head_dim, bool q8) {
    if (head_dim == 64) return q8 ? mma_info<64, true>() : mma_info<64, false>();
    return q8 ? mma_info<128, true>() : mma_info<128, false>();
}

std::atomic<int> g_forced_path{static_cast<int>(KernelPath::Auto)};

// The kernel path asked for: set_kernel_path (tests; strict: a forced Mma that cannot serve the call
// fails) or LLMNATIVE_ATTN_CUDA_PATH (not strict: mma means the tensor-core kernel wherever it applies,
// 8-bit caches included, and the SIMT kernel elsewhere, so a whole model keeps running).
struct PathChoice {
    KernelPath path;
    bool strict;
};
PathChoice requested_path() {
    const auto forced = static_cast<KernelPath>(g_forced_path.load());
    if (forced != KernelPath::Auto) return {forced, true};
    static const KernelPath env = [] {
        const char* e = std::getenv("LLMNATIVE_ATTN_CUDA_PATH");
        if (e && std::strcmp(e, "simt") == 0) return KernelPath::Simt;
        if (e && std::strcmp(e, "mma") == 0) return KernelPath::Mma;
        return KernelPath::Auto;
    }();
    return {env, false};
}

KernelInfo select_kernel(int head_dim, int32_t k_format, int32_t v_format, int bucket) {
    if (kv_format_is_kivi(k_format) && kv_format_is_kivi(v_format)) return by_head_dim<KvKiviSide, KvKiviSide>(head_dim, bucket);
    if (kv_format_is_kivi(k_format)) return by_head_dim<KvKiviSide, KvX16Side>(head_dim, bucket);
    if (kv_format_is_kivi(v_format)) return by_head_dim<KvX16Side, KvKiviSide>(head_dim, bucket);
    if (is_q8(k_format) && is_q8(v_format)) return by_head_dim<KvQ8Side, KvQ8Side>(head_dim, bucket);
    if (is_q8(k_format)) return by_head_dim<KvQ8Side, KvX16Side>(head_dim, bucket);
    if (is_q8(v_format)) return by_head_dim<KvX16Side, KvQ8Side>(head_dim, bucket);
    return k_format == LLMN_KV_BF16 ? by_head_dim<KvBf16Side, KvBf16Side>(head_dim, bucket)
                                    : by_head_dim<KvF16Side, KvF16Side>(head_dim, bucket);
}

// ---------------------------------------------------------------------------------------------
// Per-cache device state (KvCache::backend_state())
// ---------------------------------------------------------------------------------------------

constexpr int kRingSlots = 16;

size_t align256(size_t v) { return (v + 255) / 256 * 256; }

class CudaAttnState final : public KvBackendState {
public:
    explicit CudaAttnState(int32_t device) : device_(device) {}
    ~CudaAttnState() override {
        cudaSetDevice(device_);
        for (int i = 0; i < kRingSlots; ++i) {
            if (ring_event[i]) {
                if (ring_pending[i]) cudaEventSynchronize(ring_event[i]);
                cudaEventDestroy(ring_event[i]);
            }
        }
        if (table_event) {
            if (table_pending) cudaEventSynchronize(table_event);
            cudaEventDestroy(table_event);
        }
        cudaGetLastError();
        cuda::free_device(device_, ws_o);
        cuda::free_device(device_, ws_lse);
        cuda::free_device(device_, d_tables);
        cuda::free_pinned(h_tables);
        cuda::free_device(device_, d_ring);
        cuda::free_pinned(h_ring);
    }

    int32_t device_;
    int32_t sm_count = 0;
    int32_t cc_major = 0;
    int32_t head_dim = 0;
    // split workspace
    float* ws_o = nullptr;
    float* ws_lse = nullptr;
    int64_t ws_rows = 0;
    // block-table mirror of the last batch
    int32_t* d_tables = nullptr;
    int32_t* h_tables = nullptr;
    int64_t table_cap = 0;
    cudaEvent_t table_event = nullptr;
    bool table_pending = false;
    bool tables_valid = false;
    uint64_t tables_version = 0;
    std::vector<const KvSequence*> table_seqs;
    std::vector<int32_t> table_off;
    // per-call metadata ring
    uint8_t* h_ring = nullptr;
    uint8_t* d_ring = nullptr;
    size_t slot_bytes = 0;
    cudaEvent_t ring_event[kRingSlots] = {};
    bool ring_pending[kRingSlots] = {};
    int ring_next = 0;
    // occupancy per kernel
    std::vector<std::pair<const void*, int>> occupancy;
};

CudaAttnState& state_for(KvCache& cache, const Context& ctx) {
    std::unique_ptr<KvBackendState>& slot = cache.backend_state();
    if (slot) {
        auto* s = dynamic_cast<CudaAttnState*>(slot.get());
        if (!s)
            fail(LLMN_STATUS_INTERNAL,
                 "decode attention (CUDA): the KV cache's backend state belongs to another component");
        return *s;
    }
    const llmn_kv_cache_desc& d = cache.desc();
    const KvLayout& L = cache.layout();
    auto s = std::make_unique<CudaAttnState>(ctx.device());
    s->sm_count = cuda::sm_count(ctx.device());
    check(cudaDeviceGetAttribute(&s->cc_major, cudaDevAttrComputeCapabilityMajor, ctx.device()),
          "cudaDeviceGetAttribute(ComputeCapabilityMajor)");
    s->head_dim = L.head_dim;
    s->ws_rows = workspace_rows(d.max_batch, d.num_kv_heads);
    s->ws_o = static_cast<float*>(cuda::alloc_device(ctx.device(), size_t(s->ws_rows) * L.head_dim * sizeof(float)));
    s->ws_lse = static_cast<float*>(cuda::alloc_device(ctx.device(), size_t(s->ws_rows) * sizeof(float)));
    // Without sharing, the tables of any batch hold at most num_blocks entries; forks that share
    // blocks can exceed that, and the mirror then grows (once, outside the steady state).
    s->table_cap = L.num_blocks + 64;
    s->d_tables = static_cast<int32_t*>(cuda::alloc_device(ctx.device(), size_t(s->table_cap) * sizeof(int32_t)));
    s->h_tables = static_cast<int32_t*>(cuda::alloc_pinned(size_t(s->table_cap) * sizeof(int32_t)));
    check(cudaEventCreateWithFlags(&s->table_event, cudaEventDisableTiming), "cudaEventCreate");
    s->slot_bytes = align256(size_t(d.max_batch) * sizeof(SeqWork));
    s->h_ring = static_cast<uint8_t*>(cuda::alloc_pinned(s->slot_bytes * kRingSlots));
    s->d_ring = static_cast<uint8_t*>(cuda::alloc_device(ctx.device(), s->slot_bytes * kRingSlots));
    for (int i = 0; i < kRingSlots; ++i)
        check(cudaEventCreateWithFlags(&s->ring_event[i], cudaEventDisableTiming), "cudaEventCreate");
    log(LLMN_LOG_DEBUG, ctx.id(),
        "decode attention (CUDA): allocated per-cache state on first use: workspace %lld rows x %d (%.1f MiB), "
        "block-table mirror %lld entries, metadata ring %d x %zu bytes",
        (long long)s->ws_rows, L.head_dim, double(s->ws_rows) * (L.head_dim + 1) * 4 / 1048576.0, (long long)s->table_cap,
        kRingSlots, s->slot_bytes);
    slot = std::move(s);
    return *static_cast<CudaAttnState*>(slot.get());
}

int occupancy_for(CudaAttnState& s, const KernelInfo& k) {
    for (const auto& e : s.occupancy)
        if (e.first == k.fn) return e.second;
    // Opt in to the kernel's dynamic shared memory explicitly: 48 KiB is at the default limit, and
    // sm_90 also reserves 1 KiB of static shared memory per CTA.
    check(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, k.smem),
          "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    int blocks = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, k.fn, kThreads, size_t(k.smem)),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    blocks = std::max(blocks, 1);
    s.occupancy.emplace_back(k.fn, blocks);
    return blocks;
}

// Uploads the batch's block tables when they (or the batch) changed since the last upload.
void refresh_tables(CudaAttnState& s, const KvCache& cache, const DecodeAttentionArgs& a, const Context& ctx,
                    cudaStream_t stream, bool capturing) {
    const int32_t B = a.batch;
    if (s.tables_valid && s.tables_version == cache.tables_version() && s.table_seqs == a.seqs) return;
    auto get = [&](int32_t b) -> const std::vector<int32_t>& { return a.seqs[size_t(b)]->blocks; };
    std::vector<int32_t> offs;
    const int64_t need = flatten_tables(B, get, offs, nullptr, 0);
    if (need > std::numeric_limits<int32_t>::max())
        fail(LLMN_STATUS_UNSUPPORTED, "decode attention (CUDA): the batch's block tables hold %lld entries (more than 2^31-1)",
             (long long)need);
    if (need > s.table_cap) {
        if (capturing)
            fail(LLMN_STATUS_UNSUPPORTED,
                 "decode attention (CUDA): the block-table mirror must grow to %lld entries, which allocates; run this "
                 "batch once outside CUDA graph capture first",
                 (long long)need);
        const int64_t cap = std::max<int64_t>(need, 2 * s.table_cap);
        log(LLMN_LOG_DEBUG, ctx.id(), "decode attention (CUDA): block-table mirror grows from %lld to %lld entries (shared blocks)",
            (long long)s.table_cap, (long long)cap);
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");  // in-flight kernels may read the old mirror
        if (s.table_pending) check(cudaEventSynchronize(s.table_event), "cudaEventSynchronize");
        s.table_pending = false;
        s.tables_valid = false;
        cuda::free_device(s.device_, s.d_tables);
        s.d_tables = nullptr;
        cuda::free_pinned(s.h_tables);
        s.h_tables = nullptr;
        s.table_cap = 0;
        s.d_tables = static_cast<int32_t*>(cuda::alloc_device(s.device_, size_t(cap) * sizeof(int32_t)));
        s.h_tables = static_cast<int32_t*>(cuda::alloc_pinned(size_t(cap) * sizeof(int32_t)));
        s.table_cap = cap;
    }
    if (s.table_pending && !capturing) check(cudaEventSynchronize(s.table_event), "cudaEventSynchronize");
    s.table_pending = false;
    s.tables_valid = false;
    flatten_tables(B, get, offs, s.h_tables, s.table_cap);
    check(cudaMemcpyAsync(s.d_tables, s.h_tables, size_t(need) * sizeof(int32_t), cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync(block tables)");
    if (!capturing) {
        check(cudaEventRecord(s.table_event, stream), "cudaEventRecord");
        s.table_pending = true;
    }
    s.table_off = std::move(offs);
    s.table_seqs = a.seqs;
    s.tables_version = cache.tables_version();
    s.tables_valid = true;
}

int log2_exact(int v) {
    int s = 0;
    while ((1 << s) < v) ++s;
    return s;
}

}  // namespace

namespace attn_cuda {
void set_kernel_path(KernelPath path) { g_forced_path.store(static_cast<int>(path)); }
}  // namespace attn_cuda

void decode_attention_cuda(const Context& ctx, const DecodeAttentionArgs& a) {
    const KvCache& cache = *a.cache;
    const KvLayout& L = cache.layout();
    const llmn_attention_params& P = a.params;
    const bool k_kivi = kv_format_is_kivi(L.k_format), v_kivi = kv_format_is_kivi(L.v_format);
    const bool formats_ok = (is_16bit(L.k_format) && L.v_format == L.k_format) ||
                            (is_q8(L.k_format) && (is_q8(L.v_format) || is_16bit(L.v_format))) ||
                            (is_16bit(L.k_format) && is_q8(L.v_format)) ||
                            (k_kivi && (v_kivi || is_16bit(L.v_format))) || (is_16bit(L.k_format) && v_kivi);
    if (!formats_ok)
        fail(LLMN_STATUS_UNSUPPORTED,
             "llmn_decode_attention (CUDA) reads caches whose k_format and v_format are each LLMN_KV_F16, LLMN_KV_BF16, "
             "LLMN_KV_INT8, LLMN_KV_FP8_E4M3, LLMN_KV_INT4 or LLMN_KV_INT2 (f16 and bf16 are not mixed with each other, "
             "INT4/INT2 not with INT8/FP8: the CPU backend reads those mixes); this cache has k_format %s and v_format %s",
             kv_format_name(L.k_format), kv_format_name(L.v_format));
    const int32_t D = L.head_dim, H = L.num_kv_heads, G = a.group, Q = P.q_len, B = a.batch;
    LLMN_CHECK_ARG(a.q->dtype() == LLMN_DTYPE_F16 || a.q->dtype() == LLMN_DTYPE_BF16, "q must be f16 or bf16 on CUDA, got %s",
                   dtype_name(a.q->dtype()));
    check(cudaSetDevice(ctx.device()), "cudaSetDevice");
    auto stream = static_cast<cudaStream_t>(ctx.stream());
    cudaStreamCaptureStatus cap_status = cudaStreamCaptureStatusNone;
    check(cudaStreamIsCapturing(stream, &cap_status), "cudaStreamIsCapturing");
    const bool capturing = cap_status != cudaStreamCaptureStatusNone;
    const bool alibi = a.alibi_device != nullptr;
    if (alibi && !capturing) {  // validation before anything is launched (see the header comment, item 7)
        std::vector<float> slopes(size_t(P.num_q_heads));
        check(cudaMemcpyAsync(slopes.data(), a.alibi_device, slopes.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync(alibi_slopes)");
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize(alibi_slopes)");
        for (int32_t h = 0; h < P.num_q_heads; ++h)
            LLMN_CHECK_ARG(std::isfinite(slopes[size_t(h)]), "alibi_slopes[%d] must be finite, got %g", h,
                           double(slopes[size_t(h)]));
    }

    KvCache& mutable_cache = const_cast<KvCache&>(cache);  // the API layer holds the cache's mutex
    if (!mutable_cache.backend_state() && capturing)
        fail(LLMN_STATUS_UNSUPPORTED,
             "decode attention (CUDA): the first call on a cache allocates its device state; make one call outside "
             "CUDA graph capture first");
    CudaAttnState& s = state_for(mutable_cache, ctx);
    if (B > cache.desc().max_batch)
        fail(LLMN_STATUS_INTERNAL, "decode attention (CUDA): batch %d exceeds max_batch %d", B, cache.desc().max_batch);
    refresh_tables(s, cache, a, ctx, stream, capturing);

    const RowPlan rp = row_plan(D, G, Q);
    // Tensor-core kernel: automatic for f16 caches (run on the H200, 2026-12-04); for 8-bit K and V only
    // when asked for (LLMNATIVE_ATTN_CUDA_PATH=mma / set_kernel_path): that variant has not run on a GPU yet.
    const bool kv_f16 = L.k_format == LLMN_KV_F16 && L.v_format == LLMN_KV_F16;
    const bool kv_q8 = is_q8(L.k_format) && is_q8(L.v_format);
    const bool mma_shape = mma_path_applies(s.cc_major, D, a.q->dtype() == LLMN_DTYPE_F16, G * Q);
    const PathChoice pc = requested_path();
    const bool mma_serves = mma_shape && (kv_f16 || kv_q8);
    if (pc.path == KernelPath::Mma && pc.strict && !mma_serves)
        fail(LLMN_STATUS_UNSUPPORTED,
             "decode attention (CUDA): the tensor-core kernel was forced but needs sm_80+, f16 q, f16 or 8-bit K and V, "
             "head_dim 64 or 128 and group x q_len <= 16 (this call: sm_%d, head_dim %d, %d rows, k_format %s, v_format %s)",
             s.cc_major, D, G * Q, kv_format_name(L.k_format), kv_format_name(L.v_format));
    const bool use_mma = (pc.path == KernelPath::Mma && mma_serves) || (pc.path == KernelPath::Auto && mma_shape && kv_f16);
    const KernelInfo ki = use_mma ? mma_kernel_for(D, kv_q8) : select_kernel(D, L.k_format, L.v_format, rp.bucket);

    PlanInput in;
    in.batch = B;
    in.lengths = a.lengths.data();
    in.table_off = s.table_off.data();
    in.q_len = Q;
    in.window = P.window;
    in.block_size = L.block_size;
    in.num_kv_heads = H;
    in.rows = G * Q;
    in.chunks = rp.chunks;
    in.num_splits = P.num_splits;
    in.wave_ctas = int64_t(s.sm_count) * occupancy_for(s, ki);
    in.ws_rows = s.ws_rows;
    const Plan plan = make_plan(in);
    if (plan.num_items > std::numeric_limits<int32_t>::max())
        fail(LLMN_STATUS_UNSUPPORTED, "decode attention (CUDA): %lld work items exceed the grid limit",
             (long long)plan.num_items);
    if (plan.split_cap > 0 && log_enabled(LLMN_LOG_DEBUG))
        log(LLMN_LOG_DEBUG, ctx.id(), "decode attention (CUDA): split counts capped at %d by the workspace (%lld rows)",
            plan.split_cap, (long long)s.ws_rows);

    // Per-call metadata through the next ring slot.
    const int slot = s.ring_next;
    s.ring_next = (slot + 1) % kRingSlots;
    if (s.ring_pending[slot] && !capturing) check(cudaEventSynchronize(s.ring_event[slot]), "cudaEventSynchronize");
    s.ring_pending[slot] = false;
    uint8_t* h_slot = s.h_ring + size_t(slot) * s.slot_bytes;
    uint8_t* d_slot = s.d_ring + size_t(slot) * s.slot_bytes;
    std::memcpy(h_slot, plan.work.data(), plan.work.size() * sizeof(SeqWork));
    if (L.has_residual()) {  // KIVI: each sequence's residual slot (kv_layout.hpp)
        SeqWork* hw = reinterpret_cast<SeqWork*>(h_slot);
        for (size_t i = 0; i < plan.work.size(); ++i) hw[i].res_slot = a.seqs[size_t(hw[i].batch_index)]->res_slot;
    }
    const size_t bytes = plan.work.size() * sizeof(SeqWork);
    check(cudaMemcpyAsync(d_slot, h_slot, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync(call metadata)");

    Params prm{};
    prm.layer_base = cache.pool() + int64_t(P.layer) * L.layer_stride;
    prm.block_stride = L.block_stride;
    prm.head_stride = L.head_stride;
    prm.k_off = L.k_data_off;
    prm.v_off = L.v_data_off;
    prm.k_aux_off = L.k_aux_off;
    prm.v_aux_off = L.v_aux_off;
    prm.k_code = k_kivi ? kv_format_bits(L.k_format) : (L.k_format == LLMN_KV_BF16 || L.k_format == LLMN_KV_FP8_E4M3) ? 1 : 0;
    prm.v_code = v_kivi ? kv_format_bits(L.v_format) : (L.v_format == LLMN_KV_BF16 || L.v_format == LLMN_KV_FP8_E4M3) ? 1 : 0;
    prm.v_group_shift = v_kivi ? log2_exact(L.value_group_size) : 0;
    if (L.has_residual()) {
        prm.res_base = cache.pool() + L.res_tile_offset(0, P.layer, 0);
        prm.res_slot_stride = int64_t(L.num_layers) * H * L.res_head_stride;
        prm.res_head_stride = L.res_head_stride;
        prm.res_k_off = L.res_k_off;
        prm.res_v_off = L.res_v_off;
    }
    prm.block_shift = log2_exact(L.block_size);
    prm.tables = s.d_tables;
    prm.work = reinterpret_cast<const SeqWork*>(d_slot);
    prm.num_seqs = B;
    prm.q_len = Q;
    prm.group = G;
    prm.num_q_heads = P.num_q_heads;
    prm.num_kv_heads = H;
    prm.head_dim = D;
    prm.rows = G * Q;
    prm.q_per_chunk = rp.q_per_chunk;
    prm.chunks = rp.chunks;
    prm.window = P.window;
    prm.scale = P.scale;
    prm.softcap = P.softcap;
    prm.slopes = a.alibi_device;  // the caller's buffer, read by the kernel (null without ALiBi)
    prm.q = a.q->data();
    prm.out = a.out->data();
    prm.io_bf16 = a.q->dtype() == LLMN_DTYPE_BF16 ? 1 : 0;
    prm.ws_o = s.ws_o;
    prm.ws_lse = s.ws_lse;

    ki.launch(unsigned(plan.num_items), ki.smem, stream, prm);
    check(cudaGetLastError(), "split kernel launch");
    if (plan.num_split_seqs > 0) {
        merge_kernel<<<dim3(unsigned(plan.num_split_seqs) * unsigned(H), unsigned(prm.rows)),
                       kMergeThreads, 0, stream>>>(prm);
        check(cudaGetLastError(), "merge kernel launch");
    }
    if (!capturing) {
        check(cudaEventRecord(s.ring_event[slot], stream), "cudaEventRecord");
        s.ring_pending[slot] = true;
    }
}

}  // namespace llmn
