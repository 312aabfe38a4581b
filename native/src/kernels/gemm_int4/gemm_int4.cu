// W4A16 GEMM on CUDA: Y[m,N] = X[m,K] * dequant(W)[K,N] (+ bias), X/Y/bias fp16 or bf16, fp32 accumulation.
//
// Why it looks the way it does (a Marlin-style design, written for this library):
//
// The problem is memory bound for small m. At m = 1..32 the 4-bit weights are ~90% of all bytes moved,
// so the kernel's job is to stream W from DRAM at full bandwidth exactly once and hide everything else
// (dequantization, tensor-core math, reduction) under that stream. Every trick below serves that.
//
// 1. Pre-permuted weights (gemm_int4_cuda_layout.hpp). At pack time the nibbles are reordered so that
//    one lane's 16-byte load from shared memory is exactly its mma.m16n8k16 B fragments for 64
//    columns x 16 rows: no shuffles, no ldmatrix for B, no bank conflicts (a warp reads 512 consecutive
//    bytes). Inside each 32-bit word the nibble order is chosen for the dequantization below.
//
// 2. lop3 dequantization. OR-ing a nibble v into the mantissa of fp16 1024.0 gives the half 1024 + v;
//    one LOP3 ((w & mask) | magic) builds a whole half2 register, and one HSUB2 of (1024 + zero)
//    leaves the exact integer v - zero. The second nibble of each byte is used in place (1024 + 16v)
//    with an HFMA2 by 1/16 instead of a shift. For bf16 the magic is 128.0 (7 mantissa bits, so every
//    nibble is first shifted to bits 0..3). The zero point (8 for symmetric weights, a per-(group,
//    column) nibble otherwise) is folded into that subtraction, so asymmetric weights only add the
//    constants: one more lop3 on the zero-point word (nibbles ordered so it yields the pair for the two
//    fragments of a weight word), an HFMA2 and four byte permutes. Grouped scales then multiply the
//    half2 weights (HMUL2); the product is rounded to fp16/bf16, which is the only rounding of the
//    weights (and means grouped fp16 weights must stay below 65504 in magnitude). Per-column scales
//    are applied once to the fp32 accumulators at the end instead (exact and cheaper). bf16
//    activations use the fp16 scales converted to bf16 (the mma takes both operands in one type).
//
// 3. Tensor cores: mma.sync m16n8k16 with fp32 accumulators; A (activations) comes from shared memory
//    via ldmatrix.x4, whose per-lane addresses produce the A fragment directly. A is stored XOR-swizzled
//    (chunk ^ row%8) so those ldmatrix reads are conflict-free without padding.
//
// 4. Multi-stage cp.async pipeline (stages_of(): 7 stages for one-row-block tiles, else 4): global->shared
//    copies of A, B, scales and zero points for tile t+stages-1 are issued before tile t is computed, so
//    DRAM latency is hidden behind math. Weight
//    copies carry an L2 evict-first policy when each weight byte is read exactly once (one row problem
//    per launch, i.e. m <= 64 or the remainder): they should not push the re-read activations and
//    partial sums out of L2. Launches with several 64-row problems re-read the weights once per
//    problem, so there the default policy applies, and the tile order puts the problems of one n tile
//    next to each other so that those re-reads come from L2.
//
// 5. Persistent striped grid. One block per SM; the k x n tile space (times the row problems of this
//    launch) is numbered slice by slice (a slice = all k tiles of one output tile) and cut into equal
//    consecutive stripes, one per block. Every SM therefore streams the same number of weight bytes
//    whatever the shape, which matters most when n/tile is small compared with the SM count (small
//    layers or large SM counts): there split-k happens automatically, without a separate reduction
//    kernel.
//
// 6. Reductions. Inside a block the 8 warps split a k tile into k groups; their partial sums are added
//    through shared memory (reusing the pipeline stage just consumed). Across blocks, a slice shared by
//    several stripes is reduced serially through an fp32 slot in a workspace, ordered by a lock
//    (acquire/release at gpu scope), in REVERSE stripe order (slice_share: the stripe that meets the
//    slice at its start goes first, so no stripe waits for work that comes late in another stripe).
//    Stripe s runs on block gridDim.x - 1 - s, so every wait goes from a higher block index to a lower
//    one, i.e. to a block dispatched earlier: the kernel progresses even when only part of the grid is
//    resident (another kernel on the SMs). The last stripe adds bias and per-column scales and writes Y;
//    it also resets the lock, so the workspace is always zero between launches ("self-resetting") and
//    never needs a memset per call. The slot and lock are those of the slice's first stripe, which is
//    unique per shared slice (see slice_share), so the workspace is sized by the SM count only and is
//    allocated once per context (shared by the weights that run there) when a weight is packed: a gemm
//    call performs no allocation and no host synchronisation, which keeps it CUDA-graph capturable.
//    (Exception: the first call that runs a weight on a context other than the one it was packed on
//    creates that context's workspace; do it once before capturing.) Waiting on a lock assumes that
//    blocks with lower indices are resident or will be scheduled first, as in Marlin.
//    That chain is what limits small m (Nsight Compute on the H200, docs/perf/gpu-2026-12-04: a chain of
//    `count` L2 round trips at the end of every stripe, ~10 of 17 us at 4096^2, m = 1). The alternative,
//    opt-in until it has run on a GPU (LLMNATIVE_INT4_CUDA_REDUCE=last): every stripe writes its partial
//    to its own slot (2 per block, partial_slot), counts its arrival with one acq_rel atomic, and the
//    last to arrive sums the slots in stripe order (deterministic) and writes Y. One round trip, no
//    waiting, no residency assumption. The workspace holds 2 slots per SM for it. Only the m <= 16
//    kernels (kMB == 1) contain it: compiled into the others it made their serial path spill more.
//
// 7. Shapes. Any m: a launch handles up to kMaxProblems problems of 64 rows and one remainder problem
//    of 16/32/48/64 rows (rows past m are zero-filled by predicated cp.async and never stored). Any K and
//    N: pack time pads K to a multiple of 128 and N to a multiple of 64 with weights that dequantize to
//    exactly 0; A loads beyond K are predicated to zero; stores beyond N are skipped.
//
// 8. Act-order (g_idx). Rows are sorted by group at pack time (gemm_int4_cuda_layout.cpp), so the main
//    kernel never sees g_idx. The activations are gathered through the stored permutation into a
//    per-context staging buffer (16 MiB) by a small kernel before the GEMM, a chunk of rows at a time,
//    so the buffer has a fixed size allocated at pack time. The same path handles K % 8 != 0, where rows of X
//    are not 16-byte aligned for cp.async. We chose a separate gather over gathering in the load path
//    because cp.async cannot move single 2-byte elements: a gathered load path would lose the async
//    pipeline, while the gather kernel costs one extra pass over X (small next to W for typical m).
//
// 9. A reference kernel (one thread per output, dequantize and dot in fp32, reading the same packed
//    layout) serves GPUs below sm_80, and is the GPU-side cross-check of the fast kernel in the tests.
//
// The fast kernel needs sm_80 (cp.async, bf16 mma, createpolicy); the code is compiled only for
// __CUDA_ARCH__ >= 800 so builds with older architectures still compile, and the host picks the
// reference kernel on such devices.
#include "gemm_int4_cuda_layout.hpp"
#include "int4_weight.hpp"

#include "../../core/error.hpp"
#include "../../core/log.hpp"
#include "../../cuda/cuda_runtime.hpp"
#include "../../cuda/ptx.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace llmn {

namespace {

using namespace int4cuda;
using namespace ptx;  // PTX wrappers and element conversions (cuda/ptx.cuh)

constexpr int kSlotFloats = 64 * 256;       // one reduction slot: the largest output tile
constexpr size_t kStageBufferBytes = size_t(16) << 20;  // act-order / unaligned-K staging of X

void check_launch(const char* kernel) {
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        fail(LLMN_STATUS_BACKEND_ERROR, "CUDA kernel %s failed to launch: %s (%s)", kernel, cudaGetErrorString(err),
             cudaGetErrorName(err));
}

void check_cuda(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        cudaGetLastError();
        fail(err == cudaErrorMemoryAllocation ? LLMN_STATUS_OUT_OF_MEMORY : LLMN_STATUS_BACKEND_ERROR,
             "CUDA error in %s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
    }
}

__device__ __forceinline__ uint32_t splat_lo(uint32_t v) { return __byte_perm(v, 0, 0x1010); }
__device__ __forceinline__ uint32_t splat_hi(uint32_t v) { return __byte_perm(v, 0, 0x3232); }

// ------------------------------------------------------------------------------------------------
// Dequantization of one weight word j (fragments 2j and 2j+1, registers b0/b1 each) — see the header
// comment, item 2, q_nibble() for the nibble order and zero_slot() for the zero points.
// zc[h][r]: the constant register r of fragment 2j+h is combined with: fp16 {1024+z, -(64+z)}, bf16
// {-(128+z), -(128+z)}.
// ------------------------------------------------------------------------------------------------
template <bool kBf16, bool kZp>
__device__ __forceinline__ void zero_consts(uint32_t zw, int j, uint32_t (&zc)[2][2]) {
    if constexpr (!kZp) {  // symmetric: compile-time constants for zero point 8
        zc[0][0] = zc[1][0] = kBf16 ? bf16_neg_zero(8) : f16_lo_zero(8);
        zc[0][1] = zc[1][1] = kBf16 ? bf16_neg_zero(8) : f16_hi_zero(8);
    } else if constexpr (kBf16) {
        const uint32_t p = and_or(zw >> (4 * j), kLoMask, splat16(kBf16Magic)) ^ kSignBits;  // -(128 + z) pair
        zc[0][0] = zc[0][1] = splat_lo(p);
        zc[1][0] = zc[1][1] = splat_hi(p);
    } else {
        const uint32_t p = and_or(zw >> (4 * j), kLoMask, splat16(kF16Magic));             // 1024 + z pair
        const uint32_t q = f16x2_fma(p, splat16(kF16MinusOne), splat16(kF16_960));        // -(64 + z) pair
        zc[0][0] = splat_lo(p);
        zc[1][0] = splat_hi(p);
        zc[0][1] = splat_lo(q);
        zc[1][1] = splat_hi(q);
    }
}

template <bool kBf16>
__device__ __forceinline__ void dequant_word(uint32_t w, const uint32_t (&zc)[2][2], uint32_t (&b)[2][2]) {
    if constexpr (!kBf16) {
        const uint32_t magic = splat16(kF16Magic);
        const uint32_t lo0 = and_or(w, kLoMask, magic);  // {1024 + q(k), 1024 + q(k+1)} of fragment 2j, b0
        const uint32_t hi0 = and_or(w, kHiMask, magic);  // {1024 + 16 q(k+8), ...} of fragment 2j, b1
        w >>= 8;
        const uint32_t lo1 = and_or(w, kLoMask, magic);
        const uint32_t hi1 = and_or(w, kHiMask, magic);
        const uint32_t sixteenth = splat16(kF16HiScale);
        b[0][0] = f16x2_sub(lo0, zc[0][0]);
        b[0][1] = f16x2_fma(hi0, sixteenth, zc[0][1]);
        b[1][0] = f16x2_sub(lo1, zc[1][0]);
        b[1][1] = f16x2_fma(hi1, sixteenth, zc[1][1]);
    } else {
        const uint32_t magic = splat16(kBf16Magic);
        const uint32_t one = splat16(0x3f80u);
        b[0][0] = bf16x2_fma(and_or(w, kLoMask, magic), one, zc[0][0]);
        b[0][1] = bf16x2_fma(and_or(w >> 4, kLoMask, magic), one, zc[0][1]);
        b[1][0] = bf16x2_fma(and_or(w >> 8, kLoMask, magic), one, zc[1][0]);
        b[1][1] = bf16x2_fma(and_or(w >> 12, kLoMask, magic), one, zc[1][1]);
    }
}

// The two scales of word j's fragments (halves of one 32-bit word of the 16-byte scale load) as
// splatted half2 registers; bf16 activations convert them (both in one cvt.rn.bf16x2.f32).
template <bool kBf16>
__device__ __forceinline__ void scale_pairs(uint32_t word, uint32_t& s0, uint32_t& s1) {
    if constexpr (kBf16) {
        __half2 h;
        memcpy(&h, &word, 4);
        const float2 f = __half22float2(h);
        const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
        uint32_t bits;
        memcpy(&bits, &b, 4);
        s0 = splat_lo(bits);
        s1 = splat_hi(bits);
    } else {
        s0 = splat_lo(word);
        s1 = splat_hi(word);
    }
}

template <bool kBf16>
__device__ __forceinline__ uint32_t scale_mul(uint32_t w2, uint32_t s2) {
    if constexpr (kBf16) return bf16x2_fma(w2, s2, kSignBits);  // + (-0.0): exact product, sign kept
    else return f16x2_mul(w2, s2);
}

// ------------------------------------------------------------------------------------------------
// The fast kernel
// ------------------------------------------------------------------------------------------------
struct FastParams {
    const uint16_t* x;   // first row of this launch
    int64_t x_stride;    // elements between rows of x (multiple of 8)
    int32_t x_k;         // columns of x that exist; cp.async beyond are zero-filled
    int32_t m;           // valid rows from x / y
    const uint4* w;
    const uint16_t* scales;
    const uint32_t* zeros;
    const uint16_t* bias;  // [n] or null
    uint16_t* y;
    int64_t y_stride;
    int32_t n;             // valid columns of y
    int32_t k_pad, n_pad;
    int32_t problems;      // row problems of m_blocks*16 rows in this launch
    int32_t group_shift;   // log2(group_size / 16) when grouped
    int32_t iters;         // tiles per block (make_partition)
    float* red;            // [kSlotsPerBlock * gridDim.x][kSlotFloats]
    int* locks;            // [gridDim.x], zero between launches (locks or arrival counters)
    int32_t reduce_last;   // 1: last-arrival reduction (partial_slot), 0: serial lock chain
};

template <bool kBf16, int kMB, int kKB, int kNB, bool kGrouped, bool kZp>
__global__ void __launch_bounds__(kThreads, 1) gemm_int4_fast_kernel(FastParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr TileConfig cfg{kMB, kKB, kNB};
    constexpr int kStrips = strips_of(cfg);
    constexpr int kKGroups = k_groups_of(cfg);
    constexpr int kSteps = kKB / kKGroups;  // k16 steps per warp per tile
    static_assert(kSteps >= 1 && kKB % kKGroups == 0, "tile too shallow for its k groups");
    constexpr int kRows = kMB * 16, kTK = kKB * 16, kTN = kNB * 16;
    constexpr int kAChunks = kTK / 8;  // 16-byte chunks per A row
    static_assert(kAChunks >= 8, "the A swizzle needs at least 8 chunks per row");
    constexpr int kAVec = kRows * kAChunks;
    constexpr int kBVec = kKB * kStrips * 32;
    constexpr int kSRowVec = kTN / 8;   // uint4 of scales per row
    constexpr int kZRowVec = kTN / 32;  // uint4 of zero words per row
    constexpr int kSVec = (kGrouped ? kKB / 2 : 0) * kSRowVec;
    constexpr int kZVec = (kZp ? (kGrouped ? kKB / 2 : 1) : 0) * kZRowVec;
    constexpr int kStageVec = kAVec + kBVec + kSVec + kZVec;
    static_assert(kStageVec * 16 == stage_bytes(cfg, kGrouped, kZp), "stage layout and stage_bytes disagree");
    static_assert(kStageVec * 16 >= kReduceBytes, "a stage must hold one block-reduction chunk");

    extern __shared__ uint4 smem[];
    __shared__ int arrived;  // last-arrival reduction: the counter value thread 0 saw
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int strip = warp % kStrips, kgroup = warp / kStrips;

    const int k_tiles = p.k_pad / kTK, n_tiles = p.n_pad / kTN;
    const int problems = p.problems;
    const int total = k_tiles * n_tiles * problems;
    // Stripe of this block: reversed, so that the reduction waits go to lower block indices (item 6).
    const int stripe = int(gridDim.x) - 1 - int(blockIdx.x);
    const int t_begin = stripe * p.iters;
    const int t_end = min(total, t_begin + p.iters);
    const int s_rows = kGrouped ? scale_rows_per_stage(kKB, 1 << p.group_shift) : 1;
    const int64_t strips_total = p.n_pad / kStrip;
    // Weights are read once when this launch has one row problem: stream them with evict_first. With
    // several problems every weight tile is re-read once per problem, so it should stay in L2.
    const bool stream_weights = problems == 1;
    const uint64_t policy = evict_first_policy();

    float acc[kMB][8][4];
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb)
#pragma unroll
        for (int f = 0; f < 8; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mb][f][i] = 0.f;

    // Issue the copies of tile t into pipeline stage `stage` (always commits a group, maybe empty, so
    // the wait_group arithmetic stays uniform).
    auto fetch = [&](int t, int stage) {
        if (t < t_end) {
            const int slice = t / k_tiles, kt = t - slice * k_tiles;
            const int nt = slice / problems, prob = slice - nt * problems;
            uint4* sa = smem + stage * kStageVec;
            uint4* sb = sa + kAVec;
            uint4* ss = sb + kBVec;
            uint4* sz = ss + kSVec;
            // A: rows of this problem, predicated on m and x_k (zero-fill).
            const int row0 = prob * kRows;
#pragma unroll
            for (int i = 0; i < (kAVec + kThreads - 1) / kThreads; ++i) {
                const int c = tid + i * kThreads;
                if (kAVec % kThreads == 0 || c < kAVec) {
                    const int r = c / kAChunks, ch = c % kAChunks;
                    const int row = row0 + r, kc = kt * kTK + ch * 8;
                    const bool ok = row < p.m && kc < p.x_k;
                    const uint16_t* src = ok ? p.x + int64_t(row) * p.x_stride + kc : p.x;
                    cp_async16_zfill(sa + a_smem_chunk(r, ch, kAChunks), src, ok);
                }
            }
            // B: k16 rows of the tile, each (strips x 32 lanes) contiguous in global memory.
#pragma unroll
            for (int i = 0; i < (kBVec + kThreads - 1) / kThreads; ++i) {
                const int c = tid + i * kThreads;
                if (kBVec % kThreads == 0 || c < kBVec) {
                    const int kb = c / (kStrips * 32), rest = c % (kStrips * 32);
                    const uint4* src = p.w + (int64_t(kt) * kKB + kb) * strips_total * 32 + int64_t(nt) * kStrips * 32 + rest;
                    if (stream_weights) cp_async16_policy(sb + c, src, policy);
                    else cp_async16(sb + c, src);
                }
            }
            const int g0 = kGrouped ? ((kt * kKB) >> p.group_shift) : 0;
            if constexpr (kGrouped) {
                if (tid < s_rows * kSRowVec) {
                    const int r = tid / kSRowVec, cc = tid % kSRowVec;
                    const uint16_t* src = p.scales + int64_t(g0 + r) * p.n_pad + int64_t(nt) * kTN + cc * 8;
                    cp_async16(ss + tid, src);
                }
            }
            if constexpr (kZp) {
                if (tid < s_rows * kZRowVec) {
                    const int r = tid / kZRowVec, cc = tid % kZRowVec;
                    const uint32_t* src = p.zeros + int64_t(g0 + r) * (p.n_pad / 8) + int64_t(nt) * (kTN / 8) + cc * 4;
                    cp_async16(sz + tid, src);
                }
            }
        }
        cp_async_commit();
    };

    // Tensor-core work of one stage: this warp's k16 steps of the tile, all m blocks, its 64 columns.
    auto compute = [&](int stage) {
        const uint4* sa = smem + stage * kStageVec;
        const uint4* sb = sa + kAVec;
        const uint4* ss = sb + kBVec;
        const uint32_t* sz = reinterpret_cast<const uint32_t*>(ss + kSVec);
#pragma unroll
        for (int j = 0; j < kSteps; ++j) {
            const int kk = j * kKGroups + kgroup;
            uint32_t a[kMB][4];
#pragma unroll
            for (int mb = 0; mb < kMB; ++mb)
                ldmatrix_x4(a[mb], sa + a_smem_chunk(a_ldsm_row(mb, lane), a_ldsm_chunk(kk, lane), kAChunks));
            const uint4 bq = sb[(kk * kStrips + strip) * 32 + lane];
            const uint32_t words[4] = {bq.x, bq.y, bq.z, bq.w};
            const int srow = kGrouped ? (kk >> p.group_shift) : 0;
            uint32_t swords[4] = {0, 0, 0, 0};
            if constexpr (kGrouped) {
                const uint4 sv = ss[srow * kSRowVec + strip * 8 + (lane >> 2)];
                swords[0] = sv.x; swords[1] = sv.y; swords[2] = sv.z; swords[3] = sv.w;
            }
            uint32_t zw = 0x88888888u;
            if constexpr (kZp) zw = sz[srow * (kTN / 8) + strip * 8 + (lane >> 2)];
#pragma unroll
            for (int jw = 0; jw < 4; ++jw) {
                uint32_t zc[2][2], b[2][2];
                zero_consts<kBf16, kZp>(zw, jw, zc);
                dequant_word<kBf16>(words[jw], zc, b);
                if constexpr (kGrouped) {
                    uint32_t s_lo, s_hi;  // fragments 2jw and 2jw + 1
                    scale_pairs<kBf16>(swords[jw], s_lo, s_hi);
                    b[0][0] = scale_mul<kBf16>(b[0][0], s_lo);
                    b[0][1] = scale_mul<kBf16>(b[0][1], s_lo);
                    b[1][0] = scale_mul<kBf16>(b[1][0], s_hi);
                    b[1][1] = scale_mul<kBf16>(b[1][1], s_hi);
                }
#pragma unroll
                for (int mb = 0; mb < kMB; ++mb) {
                    mma_16816<kBf16>(acc[mb][2 * jw], a[mb], b[0][0], b[0][1]);
                    mma_16816<kBf16>(acc[mb][2 * jw + 1], a[mb], b[1][0], b[1][1]);
                }
            }
        }
    };

    // End of a slice segment: block reduction over k groups, cross-block reduction, write-out.
    auto finish = [&](int t, int stage) {
        const int slice = t / k_tiles;
        const int nt = slice / problems, prob = slice - nt * problems;
        const int rows_valid = min(kRows, p.m - prob * kRows);  // >= 1: problems never start past m
        // (1) k groups -> k group 0, through the stage just consumed, 4 fragments per round.
        float4* red_sh = reinterpret_cast<float4*>(smem + stage * kStageVec);
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb) {
            if (mb * 16 >= rows_valid) break;  // block-uniform
#pragma unroll
            for (int fh = 0; fh < 2; ++fh) {
#pragma unroll
                for (int half = kKGroups / 2; half >= 1; half /= 2) {
                    __syncthreads();
                    if (kgroup >= half && kgroup < 2 * half) {
#pragma unroll
                        for (int fi = 0; fi < 4; ++fi) {
                            const float* v = acc[mb][fh * 4 + fi];
                            red_sh[((fi * half + (kgroup - half)) * kStrips + strip) * 32 + lane] =
                                make_float4(v[0], v[1], v[2], v[3]);
                        }
                    }
                    __syncthreads();
                    if (kgroup < half) {
#pragma unroll
                        for (int fi = 0; fi < 4; ++fi) {
                            const float4 v = red_sh[((fi * half + kgroup) * kStrips + strip) * 32 + lane];
                            float* d = acc[mb][fh * 4 + fi];
                            d[0] += v.x; d[1] += v.y; d[2] += v.z; d[3] += v.w;
                        }
                    }
                }
            }
        }
        // (2) blocks sharing the slice.
        const SliceShare share = slice_share(t, k_tiles, p.iters, stripe);
        bool write = true;
        if (kMB == 1 && share.count > 1 && p.reduce_last) {
            // Last arrival: publish this stripe's partial, count arrivals; the last one sums all partials in
            // stripe order (cells of rows past m are neither written nor read: at m = 1, 1/8 of the tile is).
            // Compiled into the m <= 16 kernels only (kMB == 1: the small-m latency it is for); in the others
            // its registers made the serial path spill more (nvcc 11.8 sm_90, kMB = 4: 384 -> 574 bytes stored
            // per column-scaled kernel), so they always take the serial chain below.
            if (kgroup == 0) {
                float4* mine = reinterpret_cast<float4*>(p.red + int64_t(partial_slot(slice, k_tiles, p.iters, stripe)) * kSlotFloats);
#pragma unroll
                for (int mb = 0; mb < kMB; ++mb) {
                    if (c_row(mb, lane, 0) >= rows_valid) break;
#pragma unroll
                    for (int f = 0; f < 8; ++f)
                        __stcg(mine + ((mb * 8 + f) * kStrips + strip) * 32 + lane,
                               make_float4(acc[mb][f][0], acc[mb][f][1], acc[mb][f][2], acc[mb][f][3]));
                }
                __threadfence();  // the partial is visible at gpu scope before the arrival is counted
            }
            __syncthreads();
            int* counter = p.locks + share.first_block;
            if (tid == 0) {
                const int before = atomic_add_acq_rel(counter, 1);
                if (before == share.count - 1) *counter = 0;  // everyone has arrived: reset for the next launch
                arrived = before;
            }
            __syncthreads();
            write = arrived == share.count - 1;
            if (write && kgroup == 0) {
                __threadfence();
#pragma unroll
                for (int mb = 0; mb < kMB; ++mb) {
                    if (c_row(mb, lane, 0) >= rows_valid) break;
#pragma unroll
                    for (int f = 0; f < 8; ++f)
#pragma unroll
                        for (int i = 0; i < 4; ++i) acc[mb][f][i] = 0.f;
                }
                const int b_end = share.first_block + share.count;
                auto part_of = [&](int b) {
                    return reinterpret_cast<const float4*>(p.red + int64_t(partial_slot(slice, k_tiles, p.iters, b)) * kSlotFloats);
                };
                // Small m: the next partial's loads are issued before the current one is added, so two L2
                // round trips overlap (32 more registers; the m <= 16 kernels have ~110 of 255).
                if (c_row(0, lane, 0) < rows_valid) {
                    float4 cur[8], nxt[8] = {};
#pragma unroll
                    for (int f = 0; f < 8; ++f) cur[f] = __ldcg(part_of(share.first_block) + (f * kStrips + strip) * 32 + lane);
#pragma unroll 1
                    for (int b = share.first_block; b < b_end; ++b) {
                        if (b + 1 < b_end) {
#pragma unroll
                            for (int f = 0; f < 8; ++f) nxt[f] = __ldcg(part_of(b + 1) + (f * kStrips + strip) * 32 + lane);
                        }
#pragma unroll
                        for (int f = 0; f < 8; ++f) {
                            acc[0][f][0] += cur[f].x; acc[0][f][1] += cur[f].y;
                            acc[0][f][2] += cur[f].z; acc[0][f][3] += cur[f].w;
                            cur[f] = nxt[f];
                        }
                    }
                }
            }
        } else if (share.count > 1) {
            // Serial, in reverse stripe order, through the first block's fp32 slot (slice_share).
            float4* slot = reinterpret_cast<float4*>(p.red + int64_t(share.first_block) * kSlotFloats);
            int* lock = p.locks + share.first_block;
            if (tid == 0) lock_wait(lock, share.index);
            __syncthreads();
            const bool last = share.index == share.count - 1;
            if (kgroup == 0) {
#pragma unroll
                for (int mb = 0; mb < kMB; ++mb) {
                    if (mb * 16 >= rows_valid) break;
#pragma unroll
                    for (int f = 0; f < 8; ++f) {
                        float4* cell = slot + ((mb * 8 + f) * kStrips + strip) * 32 + lane;
                        float* d = acc[mb][f];
                        if (share.index > 0) {
                            const float4 v = __ldcg(cell);
                            d[0] += v.x; d[1] += v.y; d[2] += v.z; d[3] += v.w;
                        }
                        if (!last) __stcg(cell, make_float4(d[0], d[1], d[2], d[3]));
                    }
                }
            }
            if (!last) {
                __threadfence();
                __syncthreads();
                if (tid == 0) lock_release(lock, share.index + 1);
                write = false;
            } else {
                __syncthreads();
                if (tid == 0) *reinterpret_cast<volatile int*>(lock) = 0;  // self-reset for the next launch
            }
        }
        // (3) write-out by k group 0: per-column scales, bias, conversion, bounds.
        if (write && kgroup == 0) {
#pragma unroll
            for (int mb = 0; mb < kMB; ++mb) {
                if (mb * 16 >= rows_valid) break;
#pragma unroll
                for (int f = 0; f < 8; ++f) {
#pragma unroll
                    for (int i = 0; i < 4; i += 2) {
                        const int row = c_row(mb, lane, i);
                        const int col = nt * kTN + strip * kStrip + c_col(f, lane, i);
                        float v0 = acc[mb][f][i], v1 = acc[mb][f][i + 1];
                        if constexpr (!kGrouped) {
                            v0 *= __half2float(__ushort_as_half(p.scales[scale_index(p.n_pad, 0, col)]));
                            v1 *= __half2float(__ushort_as_half(p.scales[scale_index(p.n_pad, 0, col + 1)]));
                        }
                        if (p.bias) {
                            if (col < p.n) v0 += to_f32<kBf16>(p.bias[col]);
                            if (col + 1 < p.n) v1 += to_f32<kBf16>(p.bias[col + 1]);
                        }
                        if (row >= rows_valid) continue;
                        uint16_t* out = p.y + int64_t(prob * kRows + row) * p.y_stride + col;
                        const uint16_t h0 = from_f32<kBf16>(v0), h1 = from_f32<kBf16>(v1);
                        if (col + 1 < p.n && (p.y_stride % 2) == 0) {
                            *reinterpret_cast<uint32_t*>(out) = uint32_t(h0) | (uint32_t(h1) << 16);
                        } else {
                            if (col < p.n) out[0] = h0;
                            if (col + 1 < p.n) out[1] = h1;
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb)
#pragma unroll
            for (int f = 0; f < 8; ++f)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[mb][f][i] = 0.f;
    };

    constexpr int kStages = stages_of(cfg);
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) fetch(t_begin + s, s);
    for (int t = t_begin; t < t_end; ++t) {
        const int i = t - t_begin;
        cp_async_wait<kStages - 2>();  // tile t has landed (for this thread's copies)...
        __syncthreads();               // ...and for everyone's; stage (i-1) is free again
        fetch(t + kStages - 1, (i + kStages - 1) % kStages);
        compute(i % kStages);
        const int kt = t % k_tiles;
        if (kt == k_tiles - 1 || t == t_end - 1) finish(t, i % kStages);
    }
    cp_async_wait<0>();
#endif
}

// ------------------------------------------------------------------------------------------------
// X gather for act-order and K % 8 != 0: out[r][v] = x[r][row_src[v]] (0 for padding), [rows][k_pad].
// ------------------------------------------------------------------------------------------------
__global__ void gather_x_kernel(const uint16_t* __restrict__ x, int64_t k, const int32_t* __restrict__ row_src,
                                int64_t k_pad, int64_t rows, uint16_t* __restrict__ out) {
    const int64_t total = rows * k_pad;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = idx / k_pad, v = idx - r * k_pad;
        const int64_t src = row_src ? row_src[v] : (v < k ? v : -1);
        out[idx] = src >= 0 ? x[r * k + src] : uint16_t(0);
    }
}

// ------------------------------------------------------------------------------------------------
// Reference kernel: one thread per output, the canonical formula in fp32, on the packed layout.
// Slow and obviously correct; used below sm_80 and as the fast kernel's cross-check.
// ------------------------------------------------------------------------------------------------
struct RefParams {
    const uint16_t* x;  // [m][k]
    const uint32_t* qweight;
    const uint16_t* scales;
    const uint32_t* zeros;     // null when symmetric
    const int32_t* row_src;    // null when the identity
    const uint16_t* bias;
    uint16_t* y;               // [m][n]
    int64_t m, k, n, k_pad, n_pad;
    int32_t group_size;
};

template <bool kBf16>
__global__ void gemm_int4_reference_kernel(RefParams p) {
    const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (idx >= p.m * p.n) return;
    const int64_t row = idx / p.n, col = idx - row * p.n;
    float acc = 0.f;
    for (int64_t v = 0; v < p.k_pad; ++v) {
        const int64_t src = p.row_src ? p.row_src[v] : (v < p.k ? v : -1);
        if (src < 0) continue;
        const QPos qp = q_position(p.n_pad, v, col);
        const float q = float((p.qweight[qp.word] >> (4 * qp.nibble)) & 0xfu);
        const int64_t g = p.group_size > 0 ? v / p.group_size : 0;
        const float s = __half2float(__ushort_as_half(p.scales[scale_index(p.n_pad, g, col)]));
        const float z = p.zeros ? float((p.zeros[zero_word_index(p.n_pad, g, col)] >> (4 * zero_nibble(col))) & 0xfu)
                                : 8.f;
        acc += to_f32<kBf16>(p.x[row * p.k + src]) * ((q - z) * s);
    }
    if (p.bias) acc += to_f32<kBf16>(p.bias[col]);
    p.y[idx] = from_f32<kBf16>(acc);
}

// ------------------------------------------------------------------------------------------------
// Kernel table
// ------------------------------------------------------------------------------------------------
using FastKernel = void (*)(FastParams);

// The configurations choose_tile() can return, in one list so the attribute setup covers them all.
constexpr TileConfig kConfigs[] = {
    {1, 8, 8}, {1, 8, 4},
    {2, 4, 16}, {2, 4, 8}, {2, 8, 4},
    {3, 4, 16}, {3, 4, 8}, {3, 8, 4},
    {4, 4, 16}, {4, 4, 8}, {4, 8, 4},
};

template <bool B, bool G, bool Z>
FastKernel pick_kernel(const TileConfig& c) {
#define LLMN_INT4_CFG(MB, KB, NB) \
    if (c.m_blocks == MB && c.k_blocks == KB && c.n_blocks == NB) return &gemm_int4_fast_kernel<B, MB, KB, NB, G, Z>;
    LLMN_INT4_CFG(1, 8, 8) LLMN_INT4_CFG(1, 8, 4)
    LLMN_INT4_CFG(2, 4, 16) LLMN_INT4_CFG(2, 4, 8) LLMN_INT4_CFG(2, 8, 4)
    LLMN_INT4_CFG(3, 4, 16) LLMN_INT4_CFG(3, 4, 8) LLMN_INT4_CFG(3, 8, 4)
    LLMN_INT4_CFG(4, 4, 16) LLMN_INT4_CFG(4, 4, 8) LLMN_INT4_CFG(4, 8, 4)
#undef LLMN_INT4_CFG
    return nullptr;
}

FastKernel pick_kernel(bool bf16, bool grouped, bool zp, const TileConfig& c) {
    if (bf16) {
        if (grouped) return zp ? pick_kernel<true, true, true>(c) : pick_kernel<true, true, false>(c);
        return zp ? pick_kernel<true, false, true>(c) : pick_kernel<true, false, false>(c);
    }
    if (grouped) return zp ? pick_kernel<false, true, true>(c) : pick_kernel<false, true, false>(c);
    return zp ? pick_kernel<false, false, true>(c) : pick_kernel<false, false, false>(c);
}

// ------------------------------------------------------------------------------------------------
// Per-context workspace: reduction slots + locks (sized by the SM count) and the X staging buffer.
// Shared by every weight of the context (operations of one context never run concurrently), created
// and grown at pack time only.
// ------------------------------------------------------------------------------------------------
struct Workspace {
    int32_t device = 0;
    int32_t sm_count = 0;
    bool fast_ok = false;          // sm_80+ and enough opt-in shared memory
    std::string fast_reason;       // why not, for the log
    float* red = nullptr;
    int* locks = nullptr;
    uint16_t* stage = nullptr;
    size_t stage_bytes = 0;

    Workspace() = default;
    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;
    ~Workspace() {
        cuda::free_device(device, red);
        cuda::free_device(device, locks);
        cuda::free_device(device, stage);
    }
};

std::mutex g_ws_mutex;
std::unordered_map<uint64_t, std::weak_ptr<Workspace>> g_workspaces;  // by context id

// Returns the workspace of ctx, creating it (or its staging buffer) when missing. Called at pack time
// for the weight's context; a gemm call only allocates here when it runs a weight on another context
// of the same device for the first time (see CudaInt4Packed::keep).
std::shared_ptr<Workspace> context_workspace(const Context& ctx, bool need_stage) {
    std::lock_guard<std::mutex> lock(g_ws_mutex);
    std::shared_ptr<Workspace> ws;
    auto found = g_workspaces.find(ctx.id());
    if (found != g_workspaces.end()) ws = found->second.lock();
    if (!ws) {
        for (auto it = g_workspaces.begin(); it != g_workspaces.end();) {
            if (it->second.expired()) it = g_workspaces.erase(it);
            else ++it;
        }
        ws = std::make_shared<Workspace>();
        ws->device = ctx.device();
        check_cuda(cudaSetDevice(ctx.device()), "cudaSetDevice");
        ws->sm_count = cuda::sm_count(ctx.device());
        int major = 0, optin = 0;
        check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx.device()),
                   "cudaDeviceGetAttribute(compute capability)");
        check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device()),
                   "cudaDeviceGetAttribute(max shared memory per block)");
        int need = 0;
        for (const TileConfig& c : kConfigs) need = std::max(need, smem_bytes(c, true, true));
        if (major < 8) ws->fast_reason = format("compute capability %d.x < 8.0", major);
        else if (optin < need) ws->fast_reason = format("%d bytes of shared memory per block < %d", optin, need);
        ws->fast_ok = ws->fast_reason.empty();
        if (ws->fast_ok) {
            // Opt in to the dynamic shared memory of every instantiation once, here, so gemm calls
            // (and CUDA graph captures of them) never touch function attributes.
            for (const TileConfig& c : kConfigs)
                for (int bits = 0; bits < 8; ++bits) {
                    const bool bf16 = bits & 1, grouped = bits & 2, zp = bits & 4;
                    FastKernel k = pick_kernel(bf16, grouped, zp, c);
                    check_cuda(cudaFuncSetAttribute(reinterpret_cast<const void*>(k),
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    smem_bytes(c, grouped, zp)),
                               "cudaFuncSetAttribute(gemm_int4_fast_kernel)");
                }
            const size_t red_bytes = size_t(ws->sm_count) * kSlotsPerBlock * kSlotFloats * sizeof(float);
            ws->red = static_cast<float*>(cuda::alloc_device(ctx.device(), red_bytes));
            ws->locks = static_cast<int*>(cuda::alloc_device(ctx.device(), size_t(ws->sm_count) * sizeof(int)));
            auto stream = static_cast<cudaStream_t>(ctx.stream());
            check_cuda(cudaMemsetAsync(ws->locks, 0, size_t(ws->sm_count) * sizeof(int), stream), "cudaMemsetAsync(locks)");
            check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        } else {
            log(LLMN_LOG_INFO, ctx.id(), "gemm_int4 CUDA: using the reference kernel (%s)", ws->fast_reason.c_str());
        }
        g_workspaces[ctx.id()] = ws;
    }
    if (need_stage && ws->fast_ok && ws->stage_bytes < kStageBufferBytes) {
        ws->stage = static_cast<uint16_t*>(cuda::alloc_device(ctx.device(), kStageBufferBytes));
        ws->stage_bytes = kStageBufferBytes;
    }
    return ws;
}

// ------------------------------------------------------------------------------------------------
// The packed weight
// ------------------------------------------------------------------------------------------------
struct CudaInt4Packed final : Int4Packed {
    int32_t device = 0;
    Int4CudaImage meta;  // shape and host-side bookkeeping; qweight/scales/zeros vectors left empty
    int64_t bytes = 0;
    uint32_t* qweight = nullptr;
    uint16_t* scales = nullptr;
    uint32_t* zeros = nullptr;
    int32_t* row_src = nullptr;
    // Workspaces of the contexts this weight was packed on or ran on. The API lets any context of the
    // weight's device run it, and each context needs its own workspace (contexts run concurrently on
    // their own streams); the weights that use a workspace keep it alive.
    mutable std::mutex ws_mutex;
    mutable std::vector<std::shared_ptr<Workspace>> workspaces;

    void keep(const std::shared_ptr<Workspace>& ws) const {
        std::lock_guard<std::mutex> lock(ws_mutex);
        for (const auto& w : workspaces)
            if (w == ws) return;
        workspaces.push_back(ws);
    }

    ~CudaInt4Packed() override {
        cuda::free_device(device, qweight);
        cuda::free_device(device, scales);
        cuda::free_device(device, zeros);
        cuda::free_device(device, row_src);
    }
    int64_t size_bytes() const override { return bytes; }
    bool needs_stage() const { return needs_x_stage(row_src != nullptr, meta.k); }
};

const CudaInt4Packed& as_cuda(const Int4Packed& p) {
    auto* c = dynamic_cast<const CudaInt4Packed*>(&p);
    if (!c) fail(LLMN_STATUS_INTERNAL, "int4 weight is not packed for the CUDA backend");
    return *c;
}

KernelPath env_path() {
    static const KernelPath path = [] {
        const char* e = std::getenv("LLMNATIVE_INT4_CUDA_PATH");
        if (e && std::strcmp(e, "reference") == 0) return KernelPath::Reference;
        if (e && std::strcmp(e, "fast") == 0) return KernelPath::Fast;
        return KernelPath::Auto;
    }();
    return path;
}
std::atomic<int> g_forced_path{static_cast<int>(KernelPath::Auto)};
std::atomic<int> g_forced_reduce{static_cast<int>(ReduceMode::Auto)};

bool reduce_last() {
    static const ReduceMode env = [] {
        const char* e = std::getenv("LLMNATIVE_INT4_CUDA_REDUCE");
        if (e && std::strcmp(e, "last") == 0) return ReduceMode::LastArrival;
        if (e && std::strcmp(e, "serial") == 0) return ReduceMode::Serial;
        return ReduceMode::Auto;
    }();
    ReduceMode mode = static_cast<ReduceMode>(g_forced_reduce.load());
    if (mode == ReduceMode::Auto) mode = env;
    return mode == ReduceMode::LastArrival;  // Auto = Serial until LastArrival has passed on a GPU
}

template <class T>
T* upload(const Context& ctx, const std::vector<T>& v) {
    if (v.empty()) return nullptr;
    void* d = alloc_bytes(ctx, LLMN_MEMORY_DEVICE, v.size() * sizeof(T));
    try {
        copy_to_device(ctx, d, v.data(), v.size() * sizeof(T));
    } catch (...) {
        free_bytes(ctx, LLMN_MEMORY_DEVICE, d);
        throw;
    }
    return static_cast<T*>(d);
}

int log2_int(int v) {
    int s = 0;
    while ((1 << s) < v) ++s;
    return s;
}

void launch_reference(const Context& ctx, const CudaInt4Packed& pk, const GemmInt4Args& a, bool bf16) {
    RefParams rp{};
    rp.x = static_cast<const uint16_t*>(a.x->data());
    rp.qweight = pk.qweight;
    rp.scales = pk.scales;
    rp.zeros = pk.zeros;
    rp.row_src = pk.row_src;
    rp.bias = a.bias ? static_cast<const uint16_t*>(a.bias->data()) : nullptr;
    rp.y = static_cast<uint16_t*>(a.y->data());
    rp.m = a.m;
    rp.k = pk.meta.k;
    rp.n = pk.meta.n;
    rp.k_pad = pk.meta.k_pad;
    rp.n_pad = pk.meta.n_pad;
    rp.group_size = pk.meta.group_size;
    const int64_t outputs = a.m * pk.meta.n;
    const int threads = 128;
    const int64_t blocks = (outputs + threads - 1) / threads;
    if (blocks > 0x7fffffff) fail(LLMN_STATUS_UNSUPPORTED, "gemm_int4 reference kernel: m*n = %lld is too large", (long long)outputs);
    auto stream = static_cast<cudaStream_t>(ctx.stream());
    if (bf16) gemm_int4_reference_kernel<true><<<unsigned(blocks), threads, 0, stream>>>(rp);
    else gemm_int4_reference_kernel<false><<<unsigned(blocks), threads, 0, stream>>>(rp);
    check_launch("gemm_int4_reference_kernel");
}

// Grid-size cap for experiments (LLMNATIVE_INT4_CUDA_BLOCKS=N: at most N blocks instead of one per SM;
// fewer blocks mean longer stripes and fewer slices shared between blocks). Unset: one block per SM.
int grid_cap(int sm_count) {
    static const int cap = [] {
        const char* e = std::getenv("LLMNATIVE_INT4_CUDA_BLOCKS");
        const int v = e ? std::atoi(e) : 0;
        return v > 0 ? v : 0;
    }();
    return cap > 0 && cap < sm_count ? cap : sm_count;
}

// One launch of the fast kernel over `problems` problems of cfg.m_blocks*16 rows (valid rows: m).
void launch_fast(const CudaInt4Packed& pk, const Workspace& ws, cudaStream_t stream, bool bf16, const TileConfig& cfg,
                 int problems, FastParams fp) {
    const bool grouped = pk.meta.group_size > 0;
    const bool zp = !pk.meta.symmetric;
    FastKernel kernel = pick_kernel(bf16, grouped, zp, cfg);
    if (!kernel) fail(LLMN_STATUS_INTERNAL, "gemm_int4: no kernel for tile %dx%dx%d", cfg.m_blocks, cfg.k_blocks, cfg.n_blocks);
    const int64_t tiles = int64_t(pk.meta.k_pad / (cfg.k_blocks * 16)) * (pk.meta.n_pad / (cfg.n_blocks * 16)) * problems;
    if (tiles > 0x7fffffff) fail(LLMN_STATUS_UNSUPPORTED, "gemm_int4: %lld tiles exceed the kernel's index range", (long long)tiles);
    const Partition part = make_partition(tiles, grid_cap(ws.sm_count));
    fp.problems = problems;
    fp.iters = part.iters;
    fp.reduce_last = reduce_last() ? 1 : 0;
    kernel<<<part.blocks, kThreads, smem_bytes(cfg, grouped, zp), stream>>>(fp);
    check_launch("gemm_int4_fast_kernel");
}

}  // namespace

namespace int4cuda {
void set_kernel_path(KernelPath path) { g_forced_path.store(static_cast<int>(path)); }
void set_reduce_mode(ReduceMode mode) { g_forced_reduce.store(static_cast<int>(mode)); }
}  // namespace int4cuda

std::unique_ptr<Int4Packed> int4_pack_cuda(const Context& ctx, const Int4Canonical& c) {
    Int4CudaImage im = build_image(c);
    auto pk = std::make_unique<CudaInt4Packed>();
    pk->device = ctx.device();
    pk->bytes = im.device_bytes();
    pk->qweight = upload(ctx, im.qweight);
    pk->scales = upload(ctx, im.scales);
    pk->zeros = upload(ctx, im.zeros);
    pk->row_src = upload(ctx, im.row_src);
    im.qweight = {};
    im.scales = {};
    im.zeros = {};
    const bool has_row_src = !im.row_src.empty();
    im.row_src = {};
    pk->meta = std::move(im);
    pk->keep(context_workspace(ctx, needs_x_stage(has_row_src, c.k)));
    log(LLMN_LOG_DEBUG, ctx.id(), "int4 weight packed for CUDA: k=%lld n=%lld -> %lld x %lld%s, %lld bytes",
        (long long)c.k, (long long)c.n, (long long)pk->meta.k_pad, (long long)pk->meta.n_pad,
        has_row_src ? " (act-order: rows sorted by group)" : "", (long long)pk->bytes);
    return pk;
}

Int4Canonical int4_unpack_cuda(const Context& ctx, const Int4Packed& packed) {
    const CudaInt4Packed& pk = as_cuda(packed);
    Int4CudaImage im = pk.meta;
    im.qweight.resize(static_cast<size_t>(im.k_pad * im.n_pad / 8));
    im.scales.resize(static_cast<size_t>(im.groups_pad * im.n_pad));
    if (!im.symmetric) im.zeros.resize(static_cast<size_t>(im.groups_pad * im.n_pad / 8));
    copy_to_host(ctx, im.qweight.data(), pk.qweight, im.qweight.size() * 4);
    copy_to_host(ctx, im.scales.data(), pk.scales, im.scales.size() * 2);
    if (!im.symmetric) copy_to_host(ctx, im.zeros.data(), pk.zeros, im.zeros.size() * 4);
    if (pk.row_src) {
        im.row_src.resize(static_cast<size_t>(im.k_pad));
        copy_to_host(ctx, im.row_src.data(), pk.row_src, im.row_src.size() * 4);
    }
    return unpack_image(im);
}

void gemm_int4_cuda(const Context& ctx, const Int4Weight& w, const GemmInt4Args& a) {
    const CudaInt4Packed& pk = as_cuda(w.packed());
    const llmn_dtype dt = a.x->dtype();
    if (dt != LLMN_DTYPE_F16 && dt != LLMN_DTYPE_BF16)
        fail(LLMN_STATUS_UNSUPPORTED, "llmn_gemm_int4 on CUDA supports f16 and bf16 activations, not %s", dtype_name(dt));
    if (a.y->dtype() != dt || (a.bias && a.bias->dtype() != dt))
        fail(LLMN_STATUS_INVALID_ARGUMENT, "llmn_gemm_int4: x, y and bias must share one dtype (x is %s, y is %s%s%s)",
             dtype_name(dt), dtype_name(a.y->dtype()), a.bias ? ", bias is " : "", a.bias ? dtype_name(a.bias->dtype()) : "");
    if (a.m <= 0) return;
    const bool bf16 = dt == LLMN_DTYPE_BF16;
    check_cuda(cudaSetDevice(ctx.device()), "cudaSetDevice");

    const std::shared_ptr<Workspace> ws = context_workspace(ctx, pk.needs_stage());
    pk.keep(ws);
    KernelPath path = static_cast<KernelPath>(g_forced_path.load());
    if (path == KernelPath::Auto) path = env_path();
    const Int4CudaImage& meta = pk.meta;
    const bool staged = pk.needs_stage();
    const int64_t chunk = staged ? stage_chunk_rows(int64_t(ws->stage_bytes), meta.k_pad) : a.m;
    // Shapes the fast kernel cannot index (the tile count of a launch must fit in int) or stage (rows of
    // K beyond the staging buffer) go to the reference kernel, as does any device below sm_80.
    std::string why_not;
    if (!ws->fast_ok) why_not = ws->fast_reason;
    else if (staged && chunk < 16) why_not = format("K = %lld is too large for the activation staging buffer", (long long)meta.k);
    else if ((meta.k_pad / 64) * (meta.n_pad / 64) * kMaxProblems > 0x7fffffffLL)
        why_not = format("K x N = %lld x %lld is too large for the tile index", (long long)meta.k, (long long)meta.n);
    if (path == KernelPath::Fast && !why_not.empty())
        fail(LLMN_STATUS_UNSUPPORTED, "gemm_int4: the fast CUDA kernel cannot run this call (%s)", why_not.c_str());
    if (path == KernelPath::Reference || !why_not.empty()) {
        launch_reference(ctx, pk, a, bf16);
        return;
    }

    auto stream = static_cast<cudaStream_t>(ctx.stream());
    const auto* x = static_cast<const uint16_t*>(a.x->data());
    auto* y = static_cast<uint16_t*>(a.y->data());
    if (staged && !ws->stage) fail(LLMN_STATUS_INTERNAL, "gemm_int4: staging buffer missing");

    FastParams base{};
    base.w = reinterpret_cast<const uint4*>(pk.qweight);
    base.scales = pk.scales;
    base.zeros = pk.zeros;
    base.bias = a.bias ? static_cast<const uint16_t*>(a.bias->data()) : nullptr;
    base.y_stride = meta.n;
    base.n = static_cast<int32_t>(meta.n);
    base.k_pad = static_cast<int32_t>(meta.k_pad);
    base.n_pad = static_cast<int32_t>(meta.n_pad);
    base.group_shift = meta.group_size > 0 ? log2_int(meta.group_size / 16) : 0;
    base.red = ws->red;
    base.locks = ws->locks;

    for (int64_t r0 = 0; r0 < a.m; r0 += chunk) {
        const int64_t rows = std::min(chunk, a.m - r0);
        FastParams fp = base;
        if (staged) {
            const int64_t total = rows * meta.k_pad;
            const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, int64_t(ws->sm_count) * 16));
            gather_x_kernel<<<blocks, 256, 0, stream>>>(x + r0 * meta.k, meta.k, pk.row_src, meta.k_pad, rows, ws->stage);
            check_launch("gather_x_kernel");
            fp.x = ws->stage;
            fp.x_stride = meta.k_pad;
            fp.x_k = static_cast<int32_t>(meta.k_pad);
        } else {
            fp.x = x + r0 * meta.k;
            fp.x_stride = meta.k;
            fp.x_k = static_cast<int32_t>(meta.k);
        }
        fp.y = y + r0 * meta.n;
        for_each_launch(rows, [&](int64_t first, int m_blocks, int problems, int valid) {
            FastParams q = fp;
            q.x = fp.x + first * fp.x_stride;
            q.y = fp.y + first * meta.n;
            q.m = valid;
            launch_fast(pk, *ws, stream, bf16, choose_tile(m_blocks, meta.n_pad), problems, q);
        });
    }
}

}  // namespace llmn
