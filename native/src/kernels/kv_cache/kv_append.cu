// CUDA KV-cache append: the device-side validation scan and the convert/quantize + scatter kernel
// (contract and the reason for the one synchronising flag read: kv_append_cuda.hpp).
//
// Why one warp per (token, head, side) row: a row is 64..256 values, and the INT8/E4M3 formats need
// the row's max |x| before any code can be written. A warp holds a whole row in registers (<= 8
// values per lane), reduces the max with shuffles (max is exact, so the order cannot change the
// scale) and writes the codes and the scale; f16/bf16 rows skip the reduction. Appends are a few
// rows per decode step (or one prefill), far from bandwidth bound, so simplicity won over vector
// stores. All per-element arithmetic (codes, scale, acceptance rule) is kv_quant_cuda.cuh, shared
// with the CPU-run tests that check it against kv_quant.hpp and kv_cache.cpp bit for bit.
//
// KIVI INT4/INT2 sides (kv_layout.hpp: the newest, not yet full block of a sequence lives as f16 rows
// in the sequence's residual tile; a block is quantized with per-channel K / per-token-group V
// statistics when it fills). The CPU path writes every row to the residual and quantizes the tile
// each time it fills; here an append is split by destination instead:
//   * every block that is FULL after the append is quantized straight from its f16 rows by
//     kivi_quantize_kernel: one CTA per (full block, kv head, KIVI side), 256 threads. Its rows come
//     from the residual tile (rows below the old length: only the first touched block can have any)
//     and from the k/v input (converted to f16 round-to-nearest-even, as the CPU path converts; an
//     integer conversion shared with the host test rather than the hardware one, same result).
//     The CTA walks the block in pieces of at most 16384 f16 values staged in 32 KiB of STATIC shared
//     memory (K: all rows x a channel slab, since a channel's scale spans the block; V: a row slab x
//     all channels, since its groups lie within one token), then runs the codec of kv_kivi_cuda.cuh
//     in two phases: one thread per statistic (K channel / V (token, group)) writes the f16 scale and
//     minimum, then one thread per output byte writes 8/bits codes, so no two threads share a byte.
//     Pieces rather than one bs x D stage (up to 128 KiB) because that would need the dynamic shared
//     memory opt-in with a per-architecture ceiling, for a path that is not performance critical.
//   * the rows of the final partial block go, as f16, to the residual tile (write_kernel, with the
//     KIVI side treated as f16 and redirected there); rows of blocks that became full are not copied
//     into the residual at all (the CPU path leaves them there as stale rows; rows at or beyond the
//     length are garbage by contract).
//   Order: the quantize launches read the OLD residual rows; the residual writes of the same append
//   may overwrite those rows (the final partial block reuses the tile), so all quantize launches are
//   issued on the stream before any write launch. Bytes equal the CPU cache's, because a block's codes
//   depend only on its f16 rows, however the rows arrived (one at a time, in bulk, after a truncate).
#include "kv_append_cuda.hpp"
#include "kv_kivi_cuda.cuh"
#include "kv_quant_cuda.cuh"

#include "../../core/error.hpp"
#include "../../core/numeric.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>

namespace llmn {

namespace {

using namespace kvq_cuda;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned long long kNoError = ~0ull;

void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        cudaGetLastError();
        fail(err == cudaErrorMemoryAllocation ? LLMN_STATUS_OUT_OF_MEMORY : LLMN_STATUS_BACKEND_ERROR,
             "CUDA error in KV-cache append (%s): %s (%s, code %d)", what, cudaGetErrorString(err), cudaGetErrorName(err),
             int(err));
    }
}

__device__ __forceinline__ float load_input(const void* p, int32_t dtype, int64_t i) {
    if (dtype == LLMN_DTYPE_F32) return static_cast<const float*>(p)[i];
    const uint16_t h = static_cast<const uint16_t*>(p)[i];
    if (dtype == LLMN_DTYPE_F16) return __half2float(__ushort_as_half(h));
    return __uint_as_float(uint32_t(h) << 16);  // bf16
}

// ---------------------------------------------------------------------------------------------
// Validation scan: first offending element over k (indices [0, count)) then v ([count, 2 count)).
// ---------------------------------------------------------------------------------------------

struct ScanParams {
    const void* src[2];
    int32_t dtype[2];
    int32_t format[2];
    int64_t count;
    unsigned long long* first_bad;
};

__global__ void __launch_bounds__(kThreads) scan_kernel(const ScanParams p) {
    const int64_t total = 2 * p.count;
    for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += int64_t(gridDim.x) * kThreads) {
        const int side = i >= p.count ? 1 : 0;
        const float x = load_input(p.src[side], p.dtype[side], i - side * p.count);
        if (append_value_status(p.format[side], x) != 0) atomicMin(p.first_bad, static_cast<unsigned long long>(i));
    }
}

// ---------------------------------------------------------------------------------------------
// Write kernel: one warp per (side, token, head) row of this launch.
// ---------------------------------------------------------------------------------------------

struct WriteParams {
    uint8_t* layer_base;  // pool + layer * layer_stride
    int64_t block_stride, head_stride;
    int64_t data_off[2], aux_off[2], row_bytes[2];
    int32_t format[2];
    const void* src[2];
    int32_t dtype[2];
    int32_t heads, dim, block_size;
    int64_t pos0;         // sequence position of this launch's first token
    int64_t src_token0;   // its index in the k/v buffers
    int32_t num_tokens;   // tokens of this launch
    int64_t block0;       // logical block index of blocks[0]
    // KIVI sides: rows at positions >= full_end (the final partial block) go to the residual tile
    // res_layer + h * res_head_stride + res_off[side] as f16; rows below it belong to blocks that
    // kivi_quantize_kernel quantizes and are skipped.
    uint8_t* res_layer;   // pool + res_tile_offset(slot, layer, 0), null without a KIVI side
    int64_t res_head_stride, res_off[2];
    int64_t full_end;
    int32_t blocks[kAppendBlocksPerLaunch];
};

__global__ void __launch_bounds__(kThreads) write_kernel(const WriteParams p) {
    const int lane = int(threadIdx.x) & 31;
    const int64_t rows = int64_t(p.num_tokens) * p.heads;
    const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
    if (r >= 2 * rows) return;  // whole warps only: the shuffles below see full warps
    const int side = r >= rows ? 1 : 0;
    const int64_t rr = r - side * rows;
    const int32_t tok = int32_t(rr / p.heads), h = int32_t(rr % p.heads);
    const RowPos rp = row_pos(p.pos0 + tok, p.block_size);
    const int64_t blk = p.blocks[rp.block_index - p.block0];
    uint8_t* tile = p.layer_base + blk * p.block_stride + int64_t(h) * p.head_stride;
    uint8_t* dst = tile + p.data_off[side] + int64_t(rp.row) * p.row_bytes[side];
    const int64_t src0 = ((p.src_token0 + tok) * p.heads + h) * int64_t(p.dim);
    int32_t fmt = p.format[side];
    if (fmt == LLMN_KV_INT4 || fmt == LLMN_KV_INT2) {  // warp-uniform
        if (p.pos0 + tok < p.full_end) return;      // quantized by kivi_quantize_kernel
        fmt = LLMN_KV_F16;
        dst = p.res_layer + int64_t(h) * p.res_head_stride + p.res_off[side] + int64_t(rp.row) * p.dim * 2;
    }
    constexpr int kPer = 8;  // head_dim <= 256 = 8 x 32
    float x[kPer];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int d = lane + 32 * i;
        x[i] = d < p.dim ? load_input(p.src[side], p.dtype[side], src0 + d) : 0.0f;
        amax = fmaxf(amax, fabsf(x[i]));
    }
    if (fmt == LLMN_KV_F16 || fmt == LLMN_KV_BF16) {
        uint16_t* out = reinterpret_cast<uint16_t*>(dst);
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int d = lane + 32 * i;
            if (d < p.dim)
                out[d] = fmt == LLMN_KV_F16 ? __half_as_ushort(__float2half_rn(x[i]))
                                            : __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
        }
        return;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    const float scale = row_scale(fmt, amax);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int d = lane + 32 * i;
        if (d < p.dim) dst[d] = scale == 0.0f ? uint8_t(0) : quantize_value(fmt, x[i], scale);
    }
    if (lane == 0) *reinterpret_cast<float*>(tile + p.aux_off[side] + int64_t(rp.row) * 4) = scale;
}

// ---------------------------------------------------------------------------------------------
// KIVI block quantization: one CTA per (full block of this launch, kv head, KIVI side).
// ---------------------------------------------------------------------------------------------

static_assert(kivi_cuda::kKiviBlocksPerLaunch == kAppendBlocksPerLaunch, "one launch plan for both kernels");

// The skeleton only: CTA mapping, staging source and the codec phases are kv_kivi_cuda.cuh's
// host+device functions (run on the CPU by test_kv_kivi_cuda.cpp).
__global__ void __launch_bounds__(kThreads) kivi_quantize_kernel(const kivi_cuda::KiviQuantArgs a) {
    using namespace kivi_cuda;
    __shared__ uint16_t stage[kKiviPieceElems];
    __shared__ float sh_scale[kKiviPieceStats], sh_min[kKiviPieceStats];
    const KiviCta c = kivi_cta(a, blockIdx.x, blockIdx.y);
    const int32_t n_pieces = kivi_num_pieces(c.value, a.block_size, a.dim);
    for (int32_t pi = 0; pi < n_pieces; ++pi) {
        const KiviPiece pc = kivi_piece(c.value, a.block_size, a.dim, pi);
        if (pi > 0) __syncthreads();  // the previous piece's codes are written: stage and stats are free
        const int32_t n = pc.rows * pc.cols;
        for (int32_t e = int32_t(threadIdx.x); e < n; e += kThreads) stage[e] = kivi_stage_elem(a, c, pc, e);
        __syncthreads();
        const int32_t ns = kivi_piece_num_stats(c.value, pc, a.group);
        for (int32_t s = int32_t(threadIdx.x); s < ns; s += kThreads)
            kivi_piece_stat(c.value, c.format, pc, stage, s, a.block_size, a.dim, a.group, c.aux, sh_scale, sh_min);
        __syncthreads();
        const int32_t nb = kivi_piece_num_bytes(c.format, pc);
        for (int32_t e = int32_t(threadIdx.x); e < nb; e += kThreads)
            kivi_piece_byte(c.value, c.format, pc, stage, e, a.dim, a.group, sh_scale, sh_min, c.data);
    }
}

// One 8-byte flag per device (pinned read-back slot + device word), kept for the process: appends
// on a device take turns on it (each holds it for its scan and read-back only).
struct Scratch {
    std::mutex mu;
    unsigned long long* d_flag = nullptr;
    unsigned long long* h_flag = nullptr;
};

Scratch& scratch_for(int32_t device) {
    constexpr int32_t kMaxDevices = 256;
    static std::mutex map_mu;
    static Scratch* table[kMaxDevices] = {};  // never freed: process-lifetime CUDA objects
    if (device < 0 || device >= kMaxDevices)
        fail(LLMN_STATUS_UNSUPPORTED, "KV-cache append (CUDA): device ordinal %d is out of range", device);
    std::lock_guard<std::mutex> lock(map_mu);
    Scratch*& s = table[device];
    if (!s) {
        auto* n = new Scratch;
        if (cudaMalloc(reinterpret_cast<void**>(&n->d_flag), sizeof(unsigned long long)) != cudaSuccess ||
            cudaMallocHost(reinterpret_cast<void**>(&n->h_flag), sizeof(unsigned long long)) != cudaSuccess) {
            cudaGetLastError();
            if (n->d_flag) cudaFree(n->d_flag);
            delete n;
            fail(LLMN_STATUS_OUT_OF_MEMORY, "KV-cache append (CUDA): could not allocate the 8-byte validation flag");
        }
        s = n;
    }
    return *s;
}

float host_value(const Context& ctx, const Buffer& b, int64_t i) {
    const size_t es = size_t(dtype_size(b.dtype()));
    uint32_t raw = 0;
    copy_to_host(ctx, &raw, static_cast<const uint8_t*>(b.data()) + size_t(i) * es, es);
    if (b.dtype() == LLMN_DTYPE_F32) return float_of(raw);
    if (b.dtype() == LLMN_DTYPE_F16) return f16_to_f32(uint16_t(raw));
    return bf16_to_f32(uint16_t(raw));
}

}  // namespace

void kv_cuda_validate_append(const Context& ctx, const Buffer& k, const Buffer& v, int32_t k_format, int32_t v_format,
                             int32_t num_tokens, int32_t heads, int32_t dim) {
    for (int32_t f : {k_format, v_format})
        if (!kv_format_is_valid(f))
            fail(LLMN_STATUS_UNSUPPORTED, "llmn_kv_cache_append (CUDA): unknown llmn_kv_format %d", int(f));
    check(cudaSetDevice(ctx.device()), "cudaSetDevice");
    auto stream = static_cast<cudaStream_t>(ctx.stream());
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    check(cudaStreamIsCapturing(stream, &cap), "cudaStreamIsCapturing");
    if (cap != cudaStreamCaptureStatusNone)
        fail(LLMN_STATUS_UNSUPPORTED,
             "llmn_kv_cache_append (CUDA) validates the appended values with a synchronising read-back and cannot run "
             "while the context's stream is capturing a CUDA graph");
    const int64_t count = int64_t(num_tokens) * heads * dim;
    Scratch& s = scratch_for(ctx.device());
    unsigned long long first_bad = kNoError;
    {
        std::lock_guard<std::mutex> lock(s.mu);
        check(cudaMemsetAsync(s.d_flag, 0xFF, sizeof(unsigned long long), stream), "cudaMemsetAsync(flag)");
        ScanParams p{};
        p.src[0] = k.data();
        p.src[1] = v.data();
        p.dtype[0] = k.dtype();
        p.dtype[1] = v.dtype();
        p.format[0] = k_format;
        p.format[1] = v_format;
        p.count = count;
        p.first_bad = s.d_flag;
        const int64_t want = (2 * count + kThreads - 1) / kThreads;
        const unsigned grid = unsigned(std::min<int64_t>(want, 4096));
        scan_kernel<<<grid, kThreads, 0, stream>>>(p);
        check(cudaGetLastError(), "scan kernel launch");
        check(cudaMemcpyAsync(s.h_flag, s.d_flag, sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync(flag)");
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize(flag)");
        first_bad = *s.h_flag;
    }
    if (first_bad == kNoError) return;
    const int side = first_bad >= static_cast<unsigned long long>(count) ? 1 : 0;
    const int64_t i = int64_t(first_bad) - side * count;
    const char* param = side ? "v" : "k";
    const int32_t fmt = side ? v_format : k_format;
    const float x = host_value(ctx, side ? v : k, i);
    const long long t = i / (int64_t(heads) * dim), h = (i / dim) % heads, d = i % dim;
    switch (append_value_status(fmt, x)) {
        case 1:
            fail(LLMN_STATUS_INVALID_ARGUMENT, "%s[token %lld, head %lld, channel %lld] is NaN; the KV cache stores finite values only",
                 param, t, h, d);
        case 2:
            fail(LLMN_STATUS_INVALID_ARGUMENT, "%s[token %lld, head %lld, channel %lld] is %sInf; the KV cache stores finite values only",
                 param, t, h, d, x < 0 ? "-" : "+");
        default:
            fail(LLMN_STATUS_INVALID_ARGUMENT, "%s[token %lld, head %lld, channel %lld] = %g overflows the cache's %s storage",
                 param, t, h, d, double(x), kv_format_name(fmt));
    }
}

void kv_cuda_write_append(const Context& ctx, const KvLayout& L, uint8_t* pool, int32_t layer, const int32_t* blocks,
                          int32_t res_slot, int64_t old_len, int32_t num_tokens, const Buffer& k, const Buffer& v) {
    check(cudaSetDevice(ctx.device()), "cudaSetDevice");
    auto stream = static_cast<cudaStream_t>(ctx.stream());
    const int64_t bs = L.block_size, new_len = old_len + num_tokens;
    const int64_t full_end = new_len / bs * bs;  // blocks below it are full after this append
    uint8_t* res_layer = L.has_residual() ? pool + L.res_tile_offset(res_slot, layer, 0) : nullptr;

    // 1. KIVI: quantize every block this append fills (reads the old residual rows: before step 2).
    if (L.has_residual() && full_end > old_len) {
        kivi_cuda::KiviQuantArgs q{};
        q.layer_base = pool + int64_t(layer) * L.layer_stride;
        q.block_stride = L.block_stride;
        q.head_stride = L.head_stride;
        q.data_off[0] = L.k_data_off;
        q.data_off[1] = L.v_data_off;
        q.aux_off[0] = L.k_aux_off;
        q.aux_off[1] = L.v_aux_off;
        q.format[0] = L.k_format;
        q.format[1] = L.v_format;
        q.res_layer = res_layer;
        q.res_head_stride = L.res_head_stride;
        q.res_off[0] = L.res_k_off;
        q.res_off[1] = L.res_v_off;
        q.src[0] = k.data();
        q.src[1] = v.data();
        q.dtype[0] = k.dtype();
        q.dtype[1] = v.dtype();
        q.heads = L.num_kv_heads;
        q.dim = L.head_dim;
        q.block_size = L.block_size;
        q.group = L.value_group_size;
        q.old_len = old_len;
        unsigned sides = 0;
        if (L.k_kivi()) q.side_of[sides++] = 0;
        if (L.v_kivi()) q.side_of[sides++] = 1;
        for (int64_t j0 = old_len / bs, j_end = full_end / bs; j0 < j_end; j0 += kAppendBlocksPerLaunch) {
            const int64_t nb = std::min<int64_t>(kAppendBlocksPerLaunch, j_end - j0);
            for (int64_t j = 0; j < nb; ++j) q.blocks[j] = blocks[j0 + j];
            q.block0 = j0;
            kivi_quantize_kernel<<<dim3(unsigned(nb * L.num_kv_heads), sides), kThreads, 0, stream>>>(q);
            check(cudaGetLastError(), "KIVI quantize kernel launch");
        }
    }

    // 2. Rows: non-KIVI sides into their blocks, KIVI sides' final partial block into the residual.
    WriteParams p{};
    p.layer_base = pool + int64_t(layer) * L.layer_stride;
    p.block_stride = L.block_stride;
    p.head_stride = L.head_stride;
    p.data_off[0] = L.k_data_off;
    p.data_off[1] = L.v_data_off;
    p.aux_off[0] = L.k_aux_off;
    p.aux_off[1] = L.v_aux_off;
    p.row_bytes[0] = L.k_row_bytes;
    p.row_bytes[1] = L.v_row_bytes;
    p.format[0] = L.k_format;
    p.format[1] = L.v_format;
    p.src[0] = k.data();
    p.src[1] = v.data();
    p.dtype[0] = k.dtype();
    p.dtype[1] = v.dtype();
    p.heads = L.num_kv_heads;
    p.dim = L.head_dim;
    p.block_size = L.block_size;
    p.res_layer = res_layer;
    p.res_head_stride = L.res_head_stride;
    p.res_off[0] = L.res_k_off;
    p.res_off[1] = L.res_v_off;
    p.full_end = full_end;
    // Both sides KIVI: only the final partial block has rows to write.
    const int64_t first = L.k_kivi() && L.v_kivi() ? std::max(old_len, full_end) : old_len;
    // Launches cover whole runs of at most kAppendBlocksPerLaunch logical blocks.
    for (int64_t pos = first; pos < new_len;) {
        const int64_t j0 = pos / bs;
        const int64_t end = std::min(new_len, (j0 + kAppendBlocksPerLaunch) * bs);
        const int64_t j1 = (end - 1) / bs;  // last block touched
        for (int64_t j = j0; j <= j1; ++j) p.blocks[j - j0] = blocks[j];
        p.block0 = j0;
        p.pos0 = pos;
        p.src_token0 = pos - old_len;
        p.num_tokens = int32_t(end - pos);
        const int64_t warps = 2 * int64_t(p.num_tokens) * p.heads;
        const unsigned grid = unsigned((warps + kWarps - 1) / kWarps);
        write_kernel<<<grid, kThreads, 0, stream>>>(p);
        check(cudaGetLastError(), "write kernel launch");
        pos = end;
    }
}

}  // namespace llmn
