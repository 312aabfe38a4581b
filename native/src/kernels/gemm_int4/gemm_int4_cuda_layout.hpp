// The CUDA backend's private INT4 weight layout, as plain C++ so it is built (and tested) everywhere.
//
// Why a header of tiny constexpr functions: nothing here can run on a GPU in CI, so every index the
// kernel computes (where a thread's 16-byte weight load comes from, which nibble feeds which mma
// register, where a scale sits, how A is swizzled in shared memory, how the persistent grid is cut
// into stripes and which lock slot a shared slice uses) is one function below. gemm_int4.cu calls
// these functions (nvcc's --expt-relaxed-constexpr makes them device-callable), and
// test_gemm_int4_cuda.cpp checks the same functions against the PTX ISA fragment layouts and runs a
// host emulation of the whole tile loop. A change to the layout therefore changes kernel and tests
// together.
//
// Layout ("image") of one weight, built on the host by build_image():
//   * Rows may be reordered and padded (act-order): the device matrix has k_pad "virtual" rows; row_src
//     maps each to the canonical row (-1: padding). Without act-order the order is the identity and
//     k_pad is k rounded up to kPadK. Padded weights dequantize to exactly 0 and padded X is 0.
//   * Columns are padded to n_pad (multiple of kPadN); padded columns are never stored to Y.
//   * qweight: for every 16-row block kb and 64-column strip, 32 lanes x 4 words (one 16-byte load per
//     lane), ordered so that lane l's word j holds the mma.m16n8k16 B fragments of columns 16j..16j+15.
//   * scales: fp16 [groups_pad][n_pad], permuted inside each 64-column strip so one 16-byte load gives a
//     thread the scales of its 8 fragment columns. Per-column weights (group_size 0) have one row.
//   * zeros: asymmetric only, 4-bit zero points [groups_pad][n_pad/8 words], word per (strip, lane/4).
#pragma once
#include "int4_weight.hpp"

#include <cstdint>
#include <vector>

namespace llmn::int4cuda {

constexpr int kPadK = 128;  // rows are padded to a multiple of the largest k tile
constexpr int kPadN = 64;   // columns are padded to a multiple of one strip (the smallest n tile)
constexpr int kStrip = 64;  // columns one warp owns: 8 mma n8 fragments = 4 words per lane

// ---- weights ------------------------------------------------------------------------------------
// Word j of lane `lane` in (16-row block kb, strip) holds 8 nibbles: for fragment half h (columns
// 16j+8h .. +7 of the strip), register r (b0: k rows 0..7 of the block, b1: rows 8..15) and element e
// (the low/high half of the half2 register), nibble q_nibble(h, r, e). With this order
// (w & 0x000f000f) is {h0,r0,e0 | h0,r0,e1}: one lop3 builds the half2 register b0 of fragment 2j.
constexpr int q_nibble(int h, int r, int e) { return 4 * e + 2 * h + r; }

constexpr int64_t q_word_index(int64_t n_pad, int64_t kb, int64_t strip, int lane, int j) {
    return ((kb * (n_pad / kStrip) + strip) * 32 + lane) * 4 + j;
}

// B fragment of mma.m16n8k16 (PTX ISA): lane holds column lane/4 and rows 2*(lane%4) + e (+8 for b1).
struct QPos {
    int64_t word;
    int nibble;
};
constexpr QPos q_position(int64_t n_pad, int64_t k, int64_t n) {
    const int64_t kb = k / 16, strip = n / kStrip;
    const int kr = static_cast<int>(k % 16), nc = static_cast<int>(n % kStrip);
    const int j = nc / 16, h = (nc % 16) / 8, col = nc % 8;
    const int r = kr / 8, tig = (kr % 8) / 2, e = kr % 2;
    return {q_word_index(n_pad, kb, strip, col * 4 + tig, j), q_nibble(h, r, e)};
}

// Column of fragment f (0..7) that a lane feeds with its b registers, inside its strip.
constexpr int frag_col(int f, int lane) { return 8 * f + lane / 4; }

// ---- scales and zero points -----------------------------------------------------------------------
// Scale of (group g, column n): inside a strip, the 8 columns 8f + c (f = 0..7) of lane group c = lane/4
// are contiguous, so a thread's 8 scales are one 16-byte load at g*n_pad + strip*64 + 8c.
constexpr int64_t scale_index(int64_t n_pad, int64_t g, int64_t n) {
    const int64_t strip = n / kStrip;
    const int nc = static_cast<int>(n % kStrip);
    return g * n_pad + strip * kStrip + (nc % 8) * 8 + nc / 8;
}
// Zero point of (g, n): word g*(n_pad/8) + strip*8 + c (same c and f as the scales); fragment f's
// nibble sits at zero_slot(f) = {0,4,1,5,2,6,3,7}[f], so (word >> 4j) & 0x000f000f holds the zero
// points of fragments 2j and 2j+1 (the two fragments of weight word j) in its two halves: one lop3
// turns them into the half2 constants dequant_word subtracts.
constexpr int zero_slot(int f) { return (f % 2) * 4 + f / 2; }
constexpr int64_t zero_word_index(int64_t n_pad, int64_t g, int64_t n) {
    return g * (n_pad / 8) + (n / kStrip) * 8 + (n % kStrip) % 8;
}
constexpr int zero_nibble(int64_t n) { return zero_slot(static_cast<int>((n % kStrip) / 8)); }

// ---- dequantization constants (used by the kernel, emulated bit for bit by the tests) ---------------
// fp16: OR-ing a nibble v into the mantissa of 1024.0 (0x6400) gives 1024 + v exactly; a nibble in bits
// 4..7 gives 1024 + 16v. bf16 has only 7 mantissa bits, so it uses 128.0 (0x4300) and nibbles in bits
// 0..3 only (the word is shifted by 4 per register).
constexpr uint32_t kF16Magic = 0x6400;     // 1024.0
constexpr uint32_t kF16HiScale = 0x2c00;   // 1/16
constexpr uint32_t kBf16Magic = 0x4300;    // 128.0
constexpr uint32_t kLoMask = 0x000f000fu;  // nibbles 0 and 4 of a word -> the two halves of a half2
constexpr uint32_t kHiMask = 0x00f000f0u;  // nibbles 1 and 5, at bits 4..7 of each half
// Per-fragment zero-point constants (z = 0..15, 8 for symmetric weights), as half2 bit patterns:
constexpr uint32_t splat16(uint32_t h) { return h | (h << 16); }
constexpr uint32_t f16_lo_zero(uint32_t z) { return splat16(kF16Magic | z); }           // 1024 + z
constexpr uint32_t f16_hi_zero(uint32_t z) { return splat16(0xd400u | (z << 4)); }      // -(64 + z)
constexpr uint32_t bf16_neg_zero(uint32_t z) { return splat16(0xc300u | z); }           // -(128 + z)
// Asymmetric weights derive them from the zero-point pair P = ((zw >> 4j) & kLoMask) | magic:
// fp16: P = {1024 + z}, and fma(P, -1, 960) = {-(64 + z)}; bf16: P ^ sign = {-(128 + z)}; then each
// half is splatted (prmt).
constexpr uint32_t kF16MinusOne = 0xbc00;  // -1.0
constexpr uint32_t kF16_960 = 0x6380;      // 960.0
constexpr uint32_t kSignBits = 0x80008000u;

// ---- activations in shared memory -------------------------------------------------------------------
// A tile = rows x (chunks of 8 halves). Chunk c of row r is stored at c ^ (r & 7): the 8 rows one
// ldmatrix phase reads then fall into 8 different 16-byte bank groups (conflict-free); cp.async writes
// whole 16-byte chunks, so the swizzle costs nothing on the write side.
constexpr int a_smem_chunk(int row, int chunk, int chunks_per_row) {
    return row * chunks_per_row + (chunk ^ (row & 7));
}
// ldmatrix.x4 for the 16x16 A block (m block mb, k16 step kk): lanes 0..15 address rows 0..15 of the
// first 8 columns, lanes 16..31 the same rows of the next 8 columns, which yields registers a0..a3 in
// mma order (a0: rows 0-7/cols 0-7, a1: rows 8-15/cols 0-7, a2: rows 0-7/cols 8-15, a3: rows 8-15/cols 8-15).
constexpr int a_ldsm_row(int mb, int lane) { return mb * 16 + (lane & 15); }
constexpr int a_ldsm_chunk(int kk, int lane) { return kk * 2 + (lane >> 4); }

// ---- accumulators ---------------------------------------------------------------------------------
// C fragment (PTX ISA): c[i] of fragment f of m block mb is row mb*16 + lane/4 + 8*(i/2), column
// 8f + 2*(lane%4) + (i%2) inside the warp's strip.
constexpr int c_row(int mb, int lane, int i) { return mb * 16 + lane / 4 + 8 * (i / 2); }
constexpr int c_col(int f, int lane, int i) { return 8 * f + 2 * (lane % 4) + (i % 2); }

// ---- work partition ---------------------------------------------------------------------------------
// Tiles are numbered t = slice * k_tiles + kt with slice = nt * problems + problem (a "slice" is one
// column of k tiles producing one output tile; with several row problems per launch, neighbouring
// blocks then read the same weight tiles at about the same time, so the re-reads hit L2). Stripe b of
// the persistent grid is [b*iters, min((b+1)*iters, total)), walking down k and into the next slice;
// it runs on block gridDim.x - 1 - b. A slice shared by several stripes is reduced serially in REVERSE
// stripe order: the highest stripe meets the slice at the start of its range, the lowest at the end,
// so the highest goes first and nobody waits for work that comes later in another stripe. (Stripe
// order made every stripe wait at its start for its predecessor's end: a chain through the whole grid,
// which the first H200 run showed as 5-10 ms at m = 256, 50-100x the m = 64 time.) Waits only go from
// lower to higher stripes, i.e. from higher to lower block indices (blocks dispatched earlier): no
// cycle, and progress even when only part of the grid is resident. The slice's first stripe (the
// lowest) owns the reduction slot and lock and, being last, writes Y. That slot is unique: a stripe
// ends inside at most one slice, and a shared slice's first stripe is exactly the one ending inside it.
// (slice_share's `block` argument is the stripe index.)
struct Partition {
    int iters;   // tiles per block
    int blocks;  // blocks that get at least one tile
};
constexpr Partition make_partition(int64_t total_tiles, int max_blocks) {
    const int64_t b = total_tiles < max_blocks ? total_tiles : max_blocks;
    const int64_t iters = (total_tiles + b - 1) / b;
    return {static_cast<int>(iters), static_cast<int>((total_tiles + iters - 1) / iters)};
}
struct SliceShare {
    int first_block;  // owner of the reduction slot
    int count;        // blocks contributing to the slice
    int index;        // this block's turn in the reduction: 0 = the highest block, count-1 = first_block
};
constexpr SliceShare slice_share(int t, int k_tiles, int iters, int block) {
    const int s = t / k_tiles;
    const int first = s * k_tiles / iters;
    const int last = (s * k_tiles + k_tiles - 1) / iters;
    return {first, last - first + 1, last - block};
}
// The second cross-block reduction ("last arrival", ReduceMode::LastArrival): every stripe of a shared
// slice writes its partial tile to a slot of its own, then bumps the slice's counter (the lock word of
// slice_share's first_block); the stripe that brings the counter to `count` sums the partials of stripes
// first_block..first_block+count-1 in that order (so the result does not depend on who arrives last),
// writes Y and resets the counter. Nobody waits: one L2 round trip per shared slice instead of a chain of
// `count` of them, and no assumption about which blocks are resident. A stripe shares at most two slices
// (the one it starts in and the one it ends in), so its partials go to slot 2*stripe (the slice holding
// its first tile) or 2*stripe + 1 (any other, i.e. the slice holding its last tile): 2 slots per block.
constexpr int kSlotsPerBlock = 2;
constexpr int partial_slot(int slice, int k_tiles, int iters, int stripe) {
    return 2 * stripe + (slice == stripe * iters / k_tiles ? 0 : 1);
}

// Kernel tile configurations (units of 16 rows/columns). Every one uses 256 threads = 8 warps; a warp
// owns one 64-column strip, so the warps form 8/strips "k groups" that split each k tile between them.
struct TileConfig {
    int m_blocks;  // 16-row blocks of A per problem (1..4)
    int k_blocks;  // 16-row blocks of W per k tile (4 or 8)
    int n_blocks;  // 16-column blocks per n tile (4, 8 or 16)
};
constexpr int kThreads = 256;
// cp.async pipeline depth. One-row-block tiles (m <= 16: pure weight streaming) keep 6 tiles of weights
// in flight: on the H200 (132 SMs at ~4 TB/s) an SM must stream ~30 GB/s, and with ~1.5 us of memory
// latency that takes ~48 KB in flight per SM (Little's law); 4 stages (24 KB) capped the first H200 run
// at ~9 GB/s per SM (27 % of the copy bandwidth at m = 1). Larger m tiles carry more math per byte.
constexpr int stages_of(const TileConfig& c) { return c.m_blocks == 1 ? 7 : 4; }
constexpr int strips_of(const TileConfig& c) { return c.n_blocks / 4; }
constexpr int k_groups_of(const TileConfig& c) { return 8 / strips_of(c); }
// Picks the tile for a problem of m_blocks rows on a padded n_pad x k_pad matrix (k_pad % 128 == 0).
TileConfig choose_tile(int m_blocks, int64_t n_pad);
// One pipeline stage of the fast kernel, in bytes: the A tile, the B tile, and room for the scale and
// zero-point rows of the most groups a k tile can touch (group_size 32). The block reduction reuses the
// stage that was just consumed, so a stage must hold 8 KiB (true for every configuration above).
constexpr int stage_bytes(const TileConfig& c, bool grouped, bool zero_points) {
    return c.m_blocks * 16 * c.k_blocks * 16 * 2                                   // A, fp16/bf16
           + c.k_blocks * strips_of(c) * 32 * 16                                   // B, 16 bytes per lane
           + (grouped ? c.k_blocks / 2 : 0) * c.n_blocks * 16 * 2                  // scales
           + (zero_points ? (grouped ? c.k_blocks / 2 : 1) : 0) * c.n_blocks * 16 / 2;  // 4-bit zeros
}
constexpr int smem_bytes(const TileConfig& c, bool grouped, bool zero_points) {
    return stages_of(c) * stage_bytes(c, grouped, zero_points);
}
// Block reduction chunk: 4 fragments x float4 x (k groups / 2) x strips (always 4 warps) x 32 lanes.
constexpr int kReduceBytes = 4 * 16 * 4 * 32;
// Rows of scales (and zero points) one pipeline stage holds: all groups a k tile touches.
constexpr int scale_rows_per_stage(int k_blocks, int group_blocks) {
    return group_blocks > 0 && group_blocks < k_blocks ? k_blocks / group_blocks : 1;
}

// ---- host-side launch plan (shared by gemm_int4_cuda and the emulator in the tests) ---------------------
// A call is cut into chunks of rows (all of m, or what the X staging buffer holds), and each chunk into
// launches: up to kMaxProblems problems of 64 rows per launch, then one launch for the remaining
// 1..63 rows with the smallest m tile that covers them.
constexpr int kMaxProblems = 64;
constexpr bool needs_x_stage(bool act_order, int64_t k) { return act_order || k % 8 != 0; }
// Rows of X (k_pad columns, 2-byte elements) a staging buffer of `bytes` holds per chunk; 0 = too small.
constexpr int64_t stage_chunk_rows(int64_t bytes, int64_t k_pad) {
    return bytes / (k_pad * 2) >= 64 ? bytes / (k_pad * 2) / 64 * 64 : bytes / (k_pad * 2) / 16 * 16;
}
// Calls f(first_row, m_blocks, problems, valid_rows) for each launch covering `rows` rows.
template <class F>
void for_each_launch(int64_t rows, F&& f) {
    int64_t done = 0;
    while (rows - done >= 64) {
        const int problems = static_cast<int>((rows - done) / 64 < kMaxProblems ? (rows - done) / 64 : kMaxProblems);
        f(done, 4, problems, problems * 64);
        done += int64_t(problems) * 64;
    }
    if (rows > done) {
        const int rem = static_cast<int>(rows - done);
        f(done, (rem + 15) / 16, 1, rem);
    }
}

// ---- the host image ------------------------------------------------------------------------------
struct Int4CudaImage {
    int64_t k = 0, n = 0;          // logical shape
    int64_t k_pad = 0, n_pad = 0;  // packed shape (virtual rows, padded columns)
    int32_t group_size = 0;        // 0: per column
    bool symmetric = true;
    int64_t groups = 1;            // canonical groups
    int64_t groups_pad = 1;        // scale rows stored: k_pad / group_size, or 1 per column
    std::vector<uint32_t> qweight; // k_pad * n_pad / 8
    std::vector<uint16_t> scales;  // groups_pad * n_pad, permuted (scale_index)
    std::vector<uint32_t> zeros;   // groups_pad * n_pad / 8 (zero_word_index); empty when symmetric
    std::vector<int32_t> row_src;  // [k_pad] canonical row of each virtual row, -1 padding; empty = identity
    // Host-only bookkeeping so unpack restores the canonical weight exactly:
    std::vector<int32_t> g_idx;        // canonical g_idx (empty without act-order)
    std::vector<int32_t> group_vrow;   // act-order: virtual scale row holding canonical group g, -1 if unused
    std::vector<uint16_t> unused_scales;  // act-order: scales of groups no row refers to, [unused][n]
    std::vector<uint8_t> unused_zeros;    // [unused][n]

    bool act_order() const { return !row_src.empty(); }
    int64_t device_bytes() const {
        return int64_t(qweight.size()) * 4 + int64_t(scales.size()) * 2 + int64_t(zeros.size()) * 4 +
               int64_t(row_src.size()) * 4;
    }
};

// Canonical -> image (row sort by group, padding, permutations). Pure host code.
Int4CudaImage build_image(const Int4Canonical& c);
// Image -> canonical, exactly the input of build_image (unpack for dequantize).
Int4Canonical unpack_image(const Int4CudaImage& im);

// ---- CUDA-only hooks (defined in gemm_int4.cu; call only when LLMNATIVE_WITH_CUDA) ----------------------
enum class KernelPath { Auto = 0, Reference = 1, Fast = 2 };
// Process-wide override for tests and debugging (also LLMNATIVE_INT4_CUDA_PATH=reference|fast).
void set_kernel_path(KernelPath path);
// Cross-block reduction of the fast kernel (see partial_slot). Auto = Serial, the protocol that has run
// on a GPU; LastArrival is opt-in (LLMNATIVE_INT4_CUDA_REDUCE=last|serial, or this override) until its
// GPU tests have passed, and it applies to the m <= 16 kernels (1 m-block) only: the others always reduce
// serially (this host model covers any m-block count).
enum class ReduceMode { Auto = 0, Serial = 1, LastArrival = 2 };
void set_reduce_mode(ReduceMode mode);

}  // namespace llmn::int4cuda
