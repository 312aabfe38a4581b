// AVX-512 (F/BW/VL/DQ, + VNNI where present) INT4 GEMM over the packed layout of gemm_int4_cpu.hpp.
//
// Why a separate kernel: the 2-core Zen 5 dev box streams 60-70 GB/s when quiet (BM_GemmStreamRead),
// and one core running the AVX2 kernel consumes at most ~35-38 GB/s of hot (cache-resident) weights at
// M = 1 (BM_Int4GemmIsaHot, 1 thread), so AVX2 cannot keep up with DRAM once a core is disturbed;
// at M = 16 the kernel is compute bound outright. Same outer structure as gemm_int4_avx2.cpp (work
// items = runs of whole panels, so every output is computed by one item in a fixed order: bitwise
// identical for any thread count; software prefetch inside a panel's contiguous byte stream; M
// processed in passes of 256 rows).
//
// Shape of the Int8 inner loop (the default; same activation quantization as AVX2):
//  * A zmm covers two 8-column tiles: the 128-byte tile blocks of tiles t and t+1 are loaded as 4
//    zmm and recombined with vshufi64x2 into W_L = [tile t chunk L | tile t+1 chunk L] (L = 0..3),
//    so each 32-bit lane is one column and, after & 0x0F / >> 4, holds 4 consecutive rows of it.
//    The 4 int8 activations of those rows are then the same for all 16 lanes: vpdpbusd (unsigned
//    codes x signed int8 activations, exactly its operand form) takes them as an embedded {1to16}
//    broadcast from memory, so the per-row cost is 8 vpdpbusd per 16 columns x 32 rows and nothing
//    else. The weight shuffles and nibble splits are paid once per block and shared by all rows.
//  * Weights stay in registers (16 zmm for a 4-tile panel block) while the block serves every row of
//    the slice (up to 32 rows; activations are stored block-major so a block's rows are one
//    contiguous 1 KiB run); the f32 accumulators live in a small L1 buffer, or in registers when
//    M <= 4, where the loop-carried store/load would otherwise be the critical path (M = 3-4 joined
//    on 2026-12-06: 3-15 % faster at M = 4, docs/perf/cpu-2026-12-06-zen5.md).
//  * Without VNNI (e.g. Skylake-X): vpmaddubsw into int16 (at most 8 x 2 x 15 x 127 = 30480 per
//    lane: no saturation) + vpmaddwd, as in AVX2.
//  * Per block and row: the integer dot product minus zero * sum(x codes), exactly as AVX2 computes
//    it, then the same f32 operations (cvt, scale_w * scale_x, one FMA into the same accumulator in
//    the same block order): the results are bitwise identical to the AVX2 Int8 path, VNNI or not,
//    because integer dot products are exact (tests check the identity).
// F32 (exact) path: the AVX2 F32 loop on two tiles per zmm, with the same FMA chains per column
// (same chunking, row groups and chain assignment), so it is bitwise identical to AVX2 F32 too.
//
// Measured 2026-12-04 on the 2-core Zen 5 dev box (AVX-512 F/BW/VL/DQ/VNNI), GPTQ g128 sym weights
// from DRAM, f16 activations, 2 threads, median of 3 (bench_gemm_int4_isa.cpp):
//   build/g512/native/bench/llmnative_bench --benchmark_repetitions=3 --benchmark_min_time=0.3
//     --benchmark_filter='GemmStreamRead|Int4GemmIsa/M:(1|16)/shape:(0|3)/isa:./f32path:0/vnni:1|Int4GemmIsa/M:(1|16)/shape:(0|3)/isa:1'
// The box was shared (load 2-5, other builds and benchmarks; the streaming read itself varied
// 27-70 GB/s between runs), so only same-run ratios mean much:
//   M = 16 (compute bound): AVX2 228 -> AVX-512 647 GFLOP/s at 4096^2, 104 -> 338 at 8192^2 (load
//     2.5); 279 -> 782 and 153 -> 492 in an earlier run at load 2.8 (1 KiB
//     prefetch then): 2.8-3.3x. One thread, best call:
//     440-510 GFLOP/s per core at both shapes (VNNI; vpmaddubsw ~10 % slower).
//   M = 1, % of the same run's streaming read (means): in a prefetch-comparison run with this
//     kernel (one series per case, not a median; stream 59 GB/s): AVX2 37 GB/s (63 %) / 46 (78 %),
//     AVX-512 49 (82 %) / 56 (95 %) at 4096^2 / 8192^2. At 4096^2 a call is ~150 us, so the fixed
//     cost of a call (pool wake-up, activation quantization, the last item) is a visible share;
//     fastest single calls reach 59-65 GB/s there.
//   Last run (14:53 UTC, load 2.0-2.1, stream 51.6 GB/s): M = 1 AVX2 35.3 (68 %) / 18.0 (35 %, a
//     disturbed case), AVX-512 44.3 (86 %) / 52.9 GB/s (102 %) at 4096^2 / 8192^2; M = 16 AVX2 142 / 289
//     -> AVX-512 456 / 928 GFLOP/s.
//   Hot weights (cache resident, 1 thread, M = 1): AVX2 35-38 GB/s, AVX-512 VNNI 67-78 GB/s.
//   Exact F32 path, 1 thread, 4096^2: M = 1 AVX2 5.0-5.2 -> AVX-512 12.6-13.2 GB/s; M = 16 37-49 ->
//     123 GFLOP/s.
// Since then (docs/perf/cpu-2026-12-06-zen5.md): f16 outputs stored with F16C and row-major activation
// scales, M = 16 at 4096^2 700-728 -> 595-617 us per call (0.97-1.00 TFLOP/s best calls); the inner loop
// runs at ~60 % of the core's vpdpbusd rate (BM_CoreProbe: 2 per cycle, on the pipes the f32 epilogue's
// vmulps / vfmadd231ps also need). ONNX Runtime ratios (BenchmarkDotNet): the same page.
//
// Only this file's functions get AVX-512 code; all have internal linkage and the file uses no
// std:: containers (no inline function shared with other files could get a zmm copy picked by the
// linker). VNNI is issued through inline asm so that the file needs no -mavx512vnni (cmake gives
// *_avx512.cpp F/BW/VL/DQ only) and the non-VNNI kernel cannot contain it; the caller decides with
// CPUID (int4cpu::avx512_vnni()).
#include "gemm_int4_cpu.hpp"
#include "../../core/per_thread.hpp"

#include "../../cpu/cpu_runtime.hpp"

// GCC 12 reports its own _mm512_undefined_* placeholders inside avx512fintrin.h as "may be used
// uninitialized" / "used uninitialized" (a known false positive of the header, not of this file).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace llmn::int4cpu {

namespace {

constexpr int64_t kChunkBlocks = 32;      // blocks per chunk (16 KiB of weights); F32: as AVX2, whose
                                          // FMA chains are summed per chunk
constexpr int64_t kMaxRowsPerPass = 256;  // as AVX2
constexpr int64_t kSliceRows = 32;        // Int8: rows served per weight block while it is in registers
constexpr int kMaxMR = 4;                 // F32 row groups, as AVX2
// Software prefetch distance in a panel's stream. Measured at M = 1, 4096^2 and 8192^2 (2 threads,
// fastest call in GB/s, builds alternated, 2026-12-04, box under load 3-7): one round none 22-30,
// 1 KiB (the AVX2 value) 26-46, 2 KiB 30-57, 4 KiB 35-51; a second round 2 KiB 33-79, 4 KiB 32-85,
// 8 KiB 41-80. 0-1 KiB are clearly worse; 2-8 KiB cannot be told apart in that noise.
constexpr int kPrefetchBytes = 2048;
constexpr int kItemsPerThread = 16;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

typedef int32_t __attribute__((may_alias, aligned(1))) i32u;

inline int32_t load_i32(const int8_t* p) { return *reinterpret_cast<const i32u*>(p); }

// acc += sum over 4 bytes of u8(w) * s8(x[0..3]) per 32-bit lane, x broadcast from memory.
inline __attribute__((always_inline)) __m512i dpbusd_bcast(__m512i acc, __m512i w, const int8_t* x) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const i32u*>(x)));
    return acc;
}

// ---- small owned buffers (no std::vector in this file, see the header comment) ---------------------

struct Mem {
    void* p = nullptr;
    size_t cap = 0;
    Mem() = default;
    Mem(const Mem&) = delete;
    Mem& operator=(const Mem&) = delete;
    ~Mem() { aligned_free(p); }
    void* get(size_t bytes) {
        if (bytes > cap) {
            aligned_free(p);
            cap = (bytes + 63) / 64 * 64;
            p = aligned_malloc(64, cap);
            if (!p) {
                cap = 0;
                throw std::bad_alloc();
            }
        }
        return p;
    }
};

float* scratch(int64_t floats) {
    Mem& buf = per_thread<Mem>();  // per thread (core/per_thread.hpp)
    float* p = static_cast<float*>(buf.get(static_cast<size_t>(floats) * sizeof(float)));
    std::memset(p, 0, static_cast<size_t>(floats) * sizeof(float));
    return p;
}

// ---- panel geometry (plain arithmetic on Packed's fields) -------------------------------------------

struct Panel {
    const uint8_t* w;    // [block][tile][128]
    const uint16_t* s;   // [group][tile][8]
    const uint8_t* z;    // [group][tile][8] or null
    const int32_t* bgroup;
    int tp;
};

Panel panel(const Packed& P, int64_t p) {
    Panel r;
    r.tp = static_cast<int>(imin(kPanelTiles, P.ntiles - p * kPanelTiles));
    r.w = P.data.get() + p * kPanelTiles * P.nblocks * kTileBlockBytes;
    r.s = P.scales.data() + p * kPanelTiles * P.groups * kTileN;
    r.z = P.symmetric ? nullptr : P.zeros.data() + p * kPanelTiles * P.groups * kTileN;
    r.bgroup = P.block_group.data();
    return r;
}

// Scales (f32) and zero points (int32) of tiles 2j, 2j+1 of group g; a missing tile 2j+1 reads as 0.
template <int TP>
inline __m512 load_scales(const Panel& pn, int64_t g, int j) {
    const uint16_t* s = pn.s + (g * TP + 2 * j) * kTileN;
    if (2 * j + 1 < TP) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
    return _mm512_cvtph_ps(_mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))));
}
template <int TP>
inline __m512i load_zeros(const Panel& pn, int64_t g, int j) {
    const uint8_t* z = pn.z + (g * TP + 2 * j) * kTileN;
    if (2 * j + 1 < TP) return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(z)));
    return _mm512_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(z)));
}

// W[L] = [tile 2j chunk L | tile 2j+1 chunk L] for the block at wb (TP tiles of 128 bytes).
template <int TP>
inline __attribute__((always_inline)) void load_pair(const uint8_t* wb, int j, __m512i* W) {
    const __m512i a0 = _mm512_load_si512(wb + (2 * j) * kTileBlockBytes);
    const __m512i a1 = _mm512_load_si512(wb + (2 * j) * kTileBlockBytes + 64);
    __m512i b0 = _mm512_setzero_si512(), b1 = _mm512_setzero_si512();
    if (2 * j + 1 < TP) {
        b0 = _mm512_load_si512(wb + (2 * j + 1) * kTileBlockBytes);
        b1 = _mm512_load_si512(wb + (2 * j + 1) * kTileBlockBytes + 64);
    }
    W[0] = _mm512_shuffle_i64x2(a0, b0, 0x44);
    W[1] = _mm512_shuffle_i64x2(a0, b0, 0xEE);
    W[2] = _mm512_shuffle_i64x2(a1, b1, 0x44);
    W[3] = _mm512_shuffle_i64x2(a1, b1, 0xEE);
}

// Low / high nibbles of every pair: lo[j][L] lanes hold rows 8L..8L+3, hi[j][L] rows 8L+4..8L+7.
template <int TP>
inline __attribute__((always_inline)) void load_codes(const uint8_t* wb, __m512i (*lo)[4], __m512i (*hi)[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < (TP + 1) / 2; ++j) {
        __m512i W[4];
        load_pair<TP>(wb, j, W);
        for (int L = 0; L < 4; ++L) {
            lo[j][L] = _mm512_and_si512(W[L], m4);
            hi[j][L] = _mm512_and_si512(_mm512_srli_epi16(W[L], 4), m4);
        }
    }
}

template <int TP>
inline __attribute__((always_inline)) void prefetch_block(const uint8_t* wb) {
    for (int i = 0; i < TP * kTileBlockBytes; i += 64)
        _mm_prefetch(reinterpret_cast<const char*>(wb + kPrefetchBytes + i), _MM_HINT_T0);
}

// ---- activations --------------------------------------------------------------------------------

// Packed-order f32 activations of row r (gather_rows_f32 with F16C; act-order goes through it).
void gather_row(const Call& c, int64_t r, float* out) {
    const Packed& P = *c.w;
    const int64_t kp = P.nblocks * kBlockK, K = P.k;
    if (!P.g_idx.empty()) {
        gather_rows_f32(c, r, r + 1, out);
        return;
    }
    int64_t j = 0;
    if (c.f16) {
        const uint16_t* x = static_cast<const uint16_t*>(c.x) + r * K;
        for (; j + 16 <= K; j += 16)
            _mm512_storeu_ps(out + j, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j))));
        for (; j < K; ++j) out[j] = _cvtsh_ss(x[j]);
    } else {
        std::memcpy(out, static_cast<const float*>(c.x) + r * K, static_cast<size_t>(K) * sizeof(float));
        j = K;
    }
    for (; j < kp; ++j) out[j] = 0.0f;
}

// Int8 activations: q block-major, q[(b * rows + r) * 32] (a block's rows are one contiguous run for
// the kernel); s / n row-major, [r * nb + b]: block-major, the 16 rows of a block shared one cache line
// that the two threads quantizing rows bounced between them (M = 16: 642-649 -> 606-617 us at 4096^2,
// 2365-2380 -> 2257-2273 us at 8192^2). n = -(code sum) times 8 for symmetric weights (the zero point
// folded in), the value the dot product starts from.
struct ActQ {
    int8_t* q;
    float* s;
    int32_t* n;
    int64_t rows;
    int64_t nb;
};

// One row -> int8 per 32-row block: the same arithmetic as the AVX2 quantize_row (amax exact,
// 127 / amax and amax / 127 correctly rounded, round to nearest even), so the codes are identical.
void quantize_row(const float* xf, int64_t nb, int64_t r, bool sym, const ActQ& A) {
    const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    for (int64_t b = 0; b < nb; ++b) {
        const float* x = xf + b * kBlockK;
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
        const __mmask16 bad = _mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ);
        const float am = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        int8_t* qb = A.q + (b * A.rows + r) * kBlockK;
        const int64_t i = r * A.nb + b;
        if (bad != 0 || am == 0.0f) {
            std::memset(qb, 0, kBlockK);
            A.s[i] = bad != 0 ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
            A.n[i] = 0;
            continue;
        }
        const __m512 inv = _mm512_set1_ps(127.0f / am);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
        // |codes| <= 127: the truncating narrowing is exact.
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qb), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 16), _mm512_cvtepi32_epi8(q1));
        A.s[i] = am / 127.0f;
        const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        A.n[i] = -(sym ? 8 * sum : sum);
    }
}

// ---- Int8 kernel ----------------------------------------------------------------------------------

// d[j] += dot(codes of pair j, 32 int8 activations at x) for one row and one block.
template <int NP, bool VNNI>
inline __attribute__((always_inline)) void dot_row(const __m512i (*lo)[4], const __m512i (*hi)[4], const int8_t* x,
                                                   __m512i* d) {
    if constexpr (VNNI) {
        // One chain per pair: independent rows (and pairs) give the out-of-order core enough chains.
        for (int L = 0; L < 4; ++L)
            for (int j = 0; j < NP; ++j) {
                d[j] = dpbusd_bcast(d[j], lo[j][L], x + 8 * L);
                d[j] = dpbusd_bcast(d[j], hi[j][L], x + 8 * L + 4);
            }
    } else {
        __m512i a[NP];
        for (int j = 0; j < NP; ++j) a[j] = _mm512_setzero_si512();
        for (int L = 0; L < 4; ++L) {
            const __m512i x0 = _mm512_set1_epi32(load_i32(x + 8 * L)), x1 = _mm512_set1_epi32(load_i32(x + 8 * L + 4));
            for (int j = 0; j < NP; ++j) {
                a[j] = _mm512_add_epi16(a[j], _mm512_maddubs_epi16(lo[j][L], x0));
                a[j] = _mm512_add_epi16(a[j], _mm512_maddubs_epi16(hi[j][L], x1));
            }
        }
        const __m512i ones = _mm512_set1_epi16(1);
        for (int j = 0; j < NP; ++j) d[j] = _mm512_add_epi32(d[j], _mm512_madd_epi16(a[j], ones));
    }
}

// Rows [r0, r1) of the pass, blocks [b0, b1) of one panel; f32 accumulators in acc[row][32].
template <int TP, bool SYM, bool VNNI>
void int8_rows(const Panel& pn, int64_t b0, int64_t b1, int64_t r0, int64_t r1, const ActQ& A, float* acc) {
    constexpr int NP = (TP + 1) / 2;
    const int64_t R = A.rows;
    __m512 sv[NP];
    __m512i zv[NP];
    for (int j = 0; j < NP; ++j) {
        sv[j] = _mm512_setzero_ps();
        zv[j] = _mm512_setzero_si512();
    }
    int32_t cur = -1;
    for (int64_t b = b0; b < b1; ++b) {
        const int32_t g = pn.bgroup[b];
        if (g != cur) {
            for (int j = 0; j < NP; ++j) {
                sv[j] = load_scales<TP>(pn, g, j);
                if (!SYM) zv[j] = load_zeros<TP>(pn, g, j);
            }
            cur = g;
        }
        const uint8_t* wb = pn.w + b * TP * kTileBlockBytes;
        prefetch_block<TP>(wb);
        __m512i lo[NP][4], hi[NP][4];
        load_codes<TP>(wb, lo, hi);
        const int8_t* xq = A.q + b * R * kBlockK;
        const float* xs = A.s + b;
        const int32_t* xn = A.n + b;
        const int64_t nb = A.nb;
        auto row = [&](int64_t r) __attribute__((always_inline)) {
            __m512i d[NP];
            const __m512i n = _mm512_set1_epi32(xn[r * nb]);
            for (int j = 0; j < NP; ++j) d[j] = SYM ? n : _mm512_mullo_epi32(zv[j], n);
            dot_row<NP, VNNI>(lo, hi, xq + r * kBlockK, d);
            const __m512 x = _mm512_set1_ps(xs[r * nb]);
            for (int j = 0; j < NP; ++j) {
                float* f = acc + r * kPanelN + 16 * j;
                _mm512_store_ps(f, _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[j]), _mm512_mul_ps(sv[j], x), _mm512_load_ps(f)));
            }
        };
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) {
            row(r);
            row(r + 1);
        }
        if (r < r1) row(r);
    }
}

// M <= 4: the same arithmetic with the f32 accumulators in registers for the whole panel (MR x NP <= 8
// zmm beside the 16 of weights: no spills in the loop, checked with objdump).
template <int MR, int TP, bool SYM, bool VNNI>
void int8_few(const Panel& pn, int64_t nb, const ActQ& A, float* acc) {
    constexpr int NP = (TP + 1) / 2;
    const int64_t R = A.rows;
    __m512 sv[NP];
    __m512i zv[NP];
    __m512 f[MR][NP];
    for (int j = 0; j < NP; ++j) {
        sv[j] = _mm512_setzero_ps();
        zv[j] = _mm512_setzero_si512();
        for (int r = 0; r < MR; ++r) f[r][j] = _mm512_setzero_ps();
    }
    int32_t cur = -1;
    for (int64_t b = 0; b < nb; ++b) {
        const int32_t g = pn.bgroup[b];
        if (g != cur) {
            for (int j = 0; j < NP; ++j) {
                sv[j] = load_scales<TP>(pn, g, j);
                if (!SYM) zv[j] = load_zeros<TP>(pn, g, j);
            }
            cur = g;
        }
        const uint8_t* wb = pn.w + b * TP * kTileBlockBytes;
        prefetch_block<TP>(wb);
        __m512i lo[NP][4], hi[NP][4];
        load_codes<TP>(wb, lo, hi);
        for (int r = 0; r < MR; ++r) {
            const int64_t i = r * A.nb + b;
            __m512i d[NP];
            const __m512i n = _mm512_set1_epi32(A.n[i]);
            for (int j = 0; j < NP; ++j) d[j] = SYM ? n : _mm512_mullo_epi32(zv[j], n);
            dot_row<NP, VNNI>(lo, hi, A.q + (b * R + r) * kBlockK, d);
            const __m512 x = _mm512_set1_ps(A.s[i]);
            for (int j = 0; j < NP; ++j) f[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[j]), _mm512_mul_ps(sv[j], x), f[r][j]);
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NP; ++j) _mm512_store_ps(acc + r * kPanelN + 16 * j, f[r][j]);
}

template <int TP, bool SYM, bool VNNI>
void int8_panel(const Panel& pn, int64_t nb, const ActQ& A, float* acc) {
    const int64_t rows = A.rows;
    if (rows == 1) return int8_few<1, TP, SYM, VNNI>(pn, nb, A, acc);
    if (rows == 2) return int8_few<2, TP, SYM, VNNI>(pn, nb, A, acc);
    if (rows == 3) return int8_few<3, TP, SYM, VNNI>(pn, nb, A, acc);
    if (rows == 4) return int8_few<4, TP, SYM, VNNI>(pn, nb, A, acc);
    // Slices of rows: the weights of a chunk are loaded once per slice; within a slice each block is
    // loaded once and serves all of its rows from registers.
    for (int64_t b0 = 0; b0 < nb; b0 += kChunkBlocks) {
        const int64_t b1 = imin(nb, b0 + kChunkBlocks);
        for (int64_t r0 = 0; r0 < rows; r0 += kSliceRows)
            int8_rows<TP, SYM, VNNI>(pn, b0, b1, r0, imin(rows, r0 + kSliceRows), A, acc);
    }
}

template <bool SYM, bool VNNI>
void int8_dispatch(const Panel& pn, int64_t nb, const ActQ& A, float* acc) {
    switch (pn.tp) {
        case 1: int8_panel<1, SYM, VNNI>(pn, nb, A, acc); break;
        case 2: int8_panel<2, SYM, VNNI>(pn, nb, A, acc); break;
        case 3: int8_panel<3, SYM, VNNI>(pn, nb, A, acc); break;
        default: int8_panel<4, SYM, VNNI>(pn, nb, A, acc); break;
    }
}

// ---- F32 kernel -------------------------------------------------------------------------------

// The AVX2 kernel_f32 per pair of tiles: per column the same FMA chains in the same order.
template <int MR, int TP>
void f32_rows(const Panel& pn, int64_t b0, int64_t b1, int64_t kp, const float* xf, float* acc) {
    constexpr int NP = (TP + 1) / 2;
    constexpr int C = MR == 1 ? 8 : MR == 2 ? 4 : 2;
    const __m512i m4 = _mm512_set1_epi8(0x0F), ff = _mm512_set1_epi32(0xFF);
    for (int j = 0; j < NP; ++j) {
        __m512 f[MR][C];
        for (int r = 0; r < MR; ++r) {
            f[r][0] = _mm512_load_ps(acc + r * kPanelN + 16 * j);
            for (int i = 1; i < C; ++i) f[r][i] = _mm512_setzero_ps();
        }
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t g = pn.bgroup[b];
            const __m512 s = load_scales<TP>(pn, g, j);
            const __m512 z = pn.z ? _mm512_cvtepi32_ps(load_zeros<TP>(pn, g, j)) : _mm512_set1_ps(8.0f);
            const __m512 zs = _mm512_mul_ps(z, s);
            const uint8_t* wb = pn.w + b * TP * kTileBlockBytes;
            if (j == 0) prefetch_block<TP>(wb);
            __m512i W[4];
            load_pair<TP>(wb, j, W);
            const float* xb = xf + b * kBlockK;
            for (int L = 0; L < 4; ++L) {
                for (int h = 0; h < 2; ++h) {
                    const __m512i hv = h == 0 ? _mm512_and_si512(W[L], m4)
                                              : _mm512_and_si512(_mm512_srli_epi16(W[L], 4), m4);
                    for (int jj = 0; jj < 4; ++jj) {
                        const __m512i qi = jj == 3 ? _mm512_srli_epi32(hv, 24)
                                                   : _mm512_and_si512(jj == 0 ? hv : _mm512_srli_epi32(hv, 8 * jj), ff);
                        const __m512 w = _mm512_fmsub_ps(_mm512_cvtepi32_ps(qi), s, zs);  // exact
                        const int row = 8 * L + 4 * h + jj, ch = (4 * h + jj) % C;
                        for (int r = 0; r < MR; ++r)
                            f[r][ch] = _mm512_fmadd_ps(_mm512_set1_ps(xb[r * kp + row]), w, f[r][ch]);
                    }
                }
            }
        }
        for (int r = 0; r < MR; ++r) {
            __m512 sum = f[r][0];
            for (int i = 1; i < C; ++i) sum = _mm512_add_ps(sum, f[r][i]);
            _mm512_store_ps(acc + r * kPanelN + 16 * j, sum);
        }
    }
}

template <int TP>
void f32_panel(const Panel& pn, int64_t nb, int64_t kp, int64_t rows, const float* xf, float* acc) {
    for (int64_t b0 = 0; b0 < nb; b0 += kChunkBlocks) {
        const int64_t b1 = imin(nb, b0 + kChunkBlocks);
        for (int64_t r0 = 0; r0 < rows; r0 += kMaxMR) {
            const int64_t mr = imin(kMaxMR, rows - r0);
            const float* x = xf + r0 * kp;
            float* a = acc + r0 * kPanelN;
            switch (mr) {
                case 1: f32_rows<1, TP>(pn, b0, b1, kp, x, a); break;
                case 2: f32_rows<2, TP>(pn, b0, b1, kp, x, a); break;
                case 3: f32_rows<3, TP>(pn, b0, b1, kp, x, a); break;
                default: f32_rows<4, TP>(pn, b0, b1, kp, x, a); break;
            }
        }
    }
}

void f32_dispatch(const Panel& pn, int64_t nb, int64_t kp, int64_t rows, const float* xf, float* acc) {
    switch (pn.tp) {
        case 1: f32_panel<1>(pn, nb, kp, rows, xf, acc); break;
        case 2: f32_panel<2>(pn, nb, kp, rows, xf, acc); break;
        case 3: f32_panel<3>(pn, nb, kp, rows, xf, acc); break;
        default: f32_panel<4>(pn, nb, kp, rows, xf, acc); break;
    }
}

}  // namespace

void gemm_avx512(const Call& c, Compute mode, bool vnni) {
    const Packed& P = *c.w;
    const int64_t kp = P.nblocks * kBlockK, nb = P.nblocks, N = P.n;
    Mem xf_mem, q_mem, s_mem, n_mem;
    for (int64_t m0 = 0; m0 < c.m; m0 += kMaxRowsPerPass) {
        const int64_t rows = imin(kMaxRowsPerPass, c.m - m0);
        Call sub = c;
        sub.x = c.f16 ? static_cast<const void*>(static_cast<const uint16_t*>(c.x) + m0 * P.k)
                      : static_cast<const void*>(static_cast<const float*>(c.x) + m0 * P.k);
        sub.y = c.f16 ? static_cast<void*>(static_cast<uint16_t*>(c.y) + m0 * N)
                      : static_cast<void*>(static_cast<float*>(c.y) + m0 * N);
        sub.m = rows;

        float* xf = static_cast<float*>(xf_mem.get(static_cast<size_t>(rows * kp) * sizeof(float)));
        ActQ A{nullptr, nullptr, nullptr, rows, nb};
        if (mode == Compute::Int8) {
            A.q = static_cast<int8_t*>(q_mem.get(static_cast<size_t>(rows * kp)));
            A.s = static_cast<float*>(s_mem.get(static_cast<size_t>(rows * nb) * sizeof(float)));
            A.n = static_cast<int32_t*>(n_mem.get(static_cast<size_t>(rows * nb) * sizeof(int32_t)));
        }
        auto prep = [&](int64_t r) {
            gather_row(sub, r, xf + r * kp);
            if (mode == Compute::Int8) quantize_row(xf + r * kp, nb, r, P.symmetric, A);
        };
        if (rows * kp >= (int64_t(1) << 16)) cpu::parallel_for(rows, prep);
        else for (int64_t r = 0; r < rows; ++r) prep(r);

        // Work items as in AVX2: runs of whole panels, 16 per thread.
        const int64_t items = imin(P.npanels, int64_t(cpu::thread_count()) * kItemsPerThread);
        cpu::parallel_for(items, [&](int64_t item) {
            const int64_t p0 = P.npanels * item / items, p1 = P.npanels * (item + 1) / items;
            for (int64_t p = p0; p < p1; ++p) {
                float* acc = scratch(rows * kPanelN);
                const Panel pn = panel(P, p);
                if (mode == Compute::Int8) {
                    if (P.symmetric) vnni ? int8_dispatch<true, true>(pn, nb, A, acc) : int8_dispatch<true, false>(pn, nb, A, acc);
                    else vnni ? int8_dispatch<false, true>(pn, nb, A, acc) : int8_dispatch<false, false>(pn, nb, A, acc);
                } else {
                    f32_dispatch(pn, nb, kp, rows, xf, acc);
                }
                const int64_t n0 = p * kPanelN;
                store_panel_f16c(sub, 0, rows, n0, static_cast<int>(imin(kPanelN, N - n0)), acc);
            }
        });
    }
}

}  // namespace llmn::int4cpu
