// CPU-private packed INT4 layout, shared by the scalar reference (gemm_int4_cpu.cpp) and the AVX2
// kernels (gemm_int4_avx2.cpp). Design goals: (1) at small M the kernel must be a pure stream over
// the weights, so one thread's work (a 32-column panel over all of K) is one contiguous run of bytes;
// (2) the AVX2 inner loop must need no shuffles and no horizontal sums.
//
// K is cut into blocks of 32 rows. Rows are stored in "packed order": grouped by quantization group
// (ascending group id; inside a group ascending k), each group padded with zero rows to a multiple of
// 32, so every block lies in exactly one group and act-order (g_idx) costs nothing in the inner loop:
// the activations are gathered through row_src once per call instead. Without act-order this is the
// natural order, padded only at the end of K (group_size 32/64/128 are multiples of 32).
//
// N is cut into tiles of 8 columns and panels of 4 tiles (32 columns; the last panel may hold fewer
// tiles, the last tile may hold fewer than 8 real columns: the rest have code 0 and scale 0).
//   data:   [panel][block][tile in panel][128 bytes]
//           128 bytes = 32 rows x 8 columns of nibbles, as 4 chunks of 32 bytes; chunk L, byte 4c + j:
//           low nibble = row 8L + j, high nibble = row 8L + 4 + j, both of column c (j = 0..3).
//           So (chunk & 0x0F) is, per 32-bit lane c, the 4 consecutive rows 8L..8L+3 of column c: one
//           vpmaddubsw against 4 broadcast int8 activations gives per-column partial dot products.
//   scales: [panel][group][tile in panel][8] fp16 bits
//   zeros:  [panel][group][tile in panel][8] uint8 (asymmetric weights only)
#pragma once
#include "../../core/aligned.hpp"
#include "int4_weight.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace llmn::int4cpu {

constexpr int kBlockK = 32;      // rows per block
constexpr int kTileN = 8;        // columns per tile
constexpr int kPanelTiles = 4;   // tiles per panel
constexpr int kPanelN = kTileN * kPanelTiles;
constexpr int kTileBlockBytes = kBlockK * kTileN / 2;  // 128

struct FreeDeleter {
    void operator()(void* p) const { aligned_free(p); }
};

struct Packed final : Int4Packed {
    int64_t k = 0, n = 0;
    int32_t group_size = 0;
    bool symmetric = true;
    int64_t groups = 0;   // canonical group count
    int64_t nblocks = 0;  // blocks of 32 packed rows
    int64_t ntiles = 0;   // ceil(n / 8)
    int64_t npanels = 0;  // ceil(ntiles / 4)
    std::vector<int32_t> block_group;  // [nblocks]
    std::vector<int32_t> row_src;      // [nblocks * 32]: source row k of each packed row, -1 = padding
    std::vector<int32_t> g_idx;        // the canonical g_idx (empty without act-order), for unpack
    std::unique_ptr<uint8_t[], FreeDeleter> data;  // 64-byte aligned
    int64_t data_bytes = 0;
    std::vector<uint16_t> scales;
    std::vector<uint8_t> zeros;  // empty when symmetric

    int64_t kp() const { return nblocks * kBlockK; }
    int tiles_in_panel(int64_t p) const {
        return static_cast<int>(std::min<int64_t>(kPanelTiles, ntiles - p * kPanelTiles));
    }
    const uint8_t* panel_data(int64_t p) const { return data.get() + p * kPanelTiles * nblocks * kTileBlockBytes; }
    const uint16_t* panel_scales(int64_t p) const { return scales.data() + p * kPanelTiles * groups * kTileN; }
    const uint8_t* panel_zeros(int64_t p) const {
        return symmetric ? nullptr : zeros.data() + p * kPanelTiles * groups * kTileN;
    }
    int64_t size_bytes() const override {
        return data_bytes + int64_t(scales.size() * 2 + zeros.size() + block_group.size() * 4 + row_src.size() * 4 +
                                    g_idx.size() * 4);
    }
};

// Which AVX2 inner loop gemm_int4_cpu uses (the scalar ISA always runs the exact f32 reference).
enum class Compute {
    Int8 = 0,  // activations quantized per 32-row block to int8 + f32 scale, vpmaddubsw dot products
    F32 = 1,   // exact: dequantize to f32, FMA with f32 activations
};
Compute compute_mode();
void set_compute_mode(Compute c);  // process-wide; for benchmarks and tests

// Call arguments after validation, in plain pointers.
struct Call {
    const Packed* w;
    const void* x;     // [m, k]
    const void* bias;  // [n] or null
    void* y;           // [m, n]
    int64_t m;
    bool f16;          // x/bias/y are f16 (else f32)
};

// Gathers activations into packed-row order as f32: xf[r][j] = x[r][row_src[j]] (0 for padding rows).
void gather_rows_f32(const Call& c, int64_t r0, int64_t r1, float* xf);
// Writes y[r][n0 + i] = acc[(r - r0) * kPanelN + i] (+ bias) for i < cols, converting to the output dtype.
void store_panel(const Call& c, int64_t r0, int64_t r1, int64_t n0, int cols, const float* acc);

void gemm_scalar(const Call& c);
#if defined(__x86_64__) || defined(_M_X64)
// store_panel with F16C for f16 outputs (gemm_int4_avx2.cpp; used by the AVX2 and AVX-512 kernels).
// The scalar f32_to_f16 cost ~1.6 ns per output, 9 % of an M = 16 call at 4096^2. Same halves for every
// non-NaN value (test Numeric.HalfConversionMatchesF16C); a NaN keeps its top payload bits here.
void store_panel_f16c(const Call& c, int64_t r0, int64_t r1, int64_t n0, int cols, const float* acc);
void gemm_avx2(const Call& c, Compute mode, bool avx_vnni);
// gemm_int4_avx512.cpp: requires active_isa() == AVX512; vnni: the CPU has AVX512-VNNI.
void gemm_avx512(const Call& c, Compute mode, bool vnni);
#endif
#if defined(__aarch64__)
// gemm_int4_neon.cpp: the Int8 mode with the ARMv8.2 dot product; requires cpu::neon_dotprod().
void gemm_neon(const Call& c);
#endif

}  // namespace llmn::int4cpu
