// AVX2 (+FMA, F16C) INT4 GEMM over the layout of gemm_int4_cpu.hpp.
//
// Why it is shaped like this: at decode sizes (M <= 16) the GEMM is a stream over the weights, so the
// only goal is to consume nibbles faster than DRAM delivers them, on every core at once. A 32-column
// panel over all of K is a contiguous byte range; a work item is a run of neighbouring panels (one
// long sequential stream, software-prefetched 2 KiB ahead; 16 items per thread so a late or
// descheduled thread does not hold up the call). Inside a panel K is walked in chunks of 32 blocks (16 KiB of
// weights, L1-resident) and every chunk serves all M rows before the next one is touched, so each
// weight byte comes from memory exactly once per call (M <= 256; larger M is processed in slices of
// 256 rows, each streaming the weights once: there the kernel is compute bound anyway). Every output
// is computed by one item in a fixed order: bitwise identical results for any thread count.
//
// Two inner loops (int4cpu::Compute):
//  * Int8 (default): activations are quantized per 32-row block to int8 with one f32 scale
//    (amax / 127, round to nearest), as llama.cpp's Q8_0 and ONNX Runtime's accuracy level 4 do.
//    Each 32-byte chunk of a tile block gives, after & 0x0F and >> 4, 8 columns x 4 rows of unsigned
//    codes; vpmaddubsw against 4 broadcast int8 activations yields per-column int16 partial sums,
//    accumulated in int16 over the block (at most 8 x 2 x 15 x 127 = 30480 < 32767: no saturation).
//    Per block: vpmaddwd to int32, zero-point correction dot - zero * sum(xq) (integer for symmetric
//    weights, one exact f32 fnmadd for asymmetric ones: block_dot), then one f32 FMA with
//    scale_w * scale_x. The only error beyond f32 rounding is the activation rounding,
//    |dx| <= amax_block / 254.
//  * F32: each code is dequantized exactly ((q - zero) * scale with one FMA) and multiplied with the
//    f32 activation; same numbers as the scalar reference up to FMA contraction.
// Measured on the 2-core Zen 2 dev box (bench_gemm_int4.cpp, f16 activations, 2 threads, quiet box):
//   4096 x 4096, M = 1:  Int8 0.38 ms (22.6 GB/s of weights, 88% of the 25.6 GB/s streaming read),
//                        F32 1.03 ms (8.4 GB/s: compute bound);
//   8192 x 8192, M = 1:  Int8 1.42 ms (24.4 GB/s, 95%), F32 4.07 ms;
//   M = 16:              Int8 198-207 GFLOP/s, F32 70-72 GFLOP/s.
// Int8 is within the error bound stated above and 2.7-2.9x faster, so it is the default.
// AVX-VNNI (Alder Lake and later Intel cores without AVX-512, Zen 5; cpu::avx_vnni()): vpdpbusd replaces
// vpmaddubsw + vpaddw + the per-block vpmaddwd, same integers, so the same bits (tests check it). On the
// Zen 5 dev box with the AVX2 kernels forced (BM_Int4GemmIsa / BM_Int4GemmIsaHot, isa:1, vnni:0 vs 1,
// same run, 2026-12-07): M = 1 hot weights 48 -> 62 GB/s, M = 64 +3-15 %, M = 16 +1-6 % (there the
// epilogue and the nibble unpacking, not the multiplies, bound the loop on that core).
// Non-finite activations: the block's int8 scale becomes NaN, so the affected outputs are NaN.
#include "gemm_int4_cpu.hpp"
#include "../../core/per_thread.hpp"

#include "../../cpu/avx_vnni.hpp"
#include "../../cpu/cpu_runtime.hpp"

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace llmn::int4cpu {

namespace {

constexpr int64_t kChunkBlocks = 32;  // 32 blocks x 4 tiles x 128 B = 16 KiB of weights per chunk
constexpr int64_t kMaxRowsPerPass = 256;
constexpr int kMaxMR = 4;  // rows per register block
// Software prefetch distance inside a panel's byte stream. The hardware prefetchers alone left the
// M = 1 kernel at about half the streaming-read bandwidth (they restart at every 4 KiB page and the
// kernel issues few loads per byte). Measured single-threaded on 4096x4096 (best of 60 calls, CPU
// time): none 10.1-10.6 GB/s, 512 B 11.4, 1 KiB 13.3-13.8, 1.5 KiB 12.0-13.5, 4 KiB 12.0-13.0.
// Re-measured 2026-12-06 after the kernels stopped spilling (2 threads, all four shapes at M = 1, best of
// 6 interleaved runs on the AVX2 VM): 2 KiB +0-9 % over 1 KiB, 3 KiB +2-5 %.
constexpr int kPrefetchBytes = 2048;

// ---- activations -------------------------------------------------------------------------------

// One row of packed-order f32 activations -> int8 codes, per-block scale and per-block code sum.
void quantize_row(const float* xf, int64_t nb, int8_t* q, float* s, int32_t* sum) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    for (int64_t b = 0; b < nb; ++b) {
        const float* x = xf + b * kBlockK;
        __m256 v[4], amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm256_loadu_ps(x + 8 * i);
            __m256 a = _mm256_and_ps(v[i], absmask);
            amax = _mm256_max_ps(amax, a);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));  // NaN or Inf
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float am = _mm_cvtss_f32(m4);
        int8_t* qb = q + b * kBlockK;
        if (_mm256_movemask_ps(bad) != 0) {
            std::memset(qb, 0, kBlockK);
            s[b] = std::numeric_limits<float>::quiet_NaN();
            sum[b] = 0;
            continue;
        }
        if (am == 0.0f) {
            std::memset(qb, 0, kBlockK);
            s[b] = 0.0f;
            sum[b] = 0;
            continue;
        }
        const __m256 inv = _mm256_set1_ps(127.0f / am);
        __m256i i32[4];
        for (int i = 0; i < 4; ++i) i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));  // nearest-even
        __m256i tot = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(tot), _mm256_extracti128_si256(tot, 1));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4e));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xb1));
        // |x * 127 / amax| <= 127 (+ rounding of inv, which cannot reach 127.5): the packs never saturate.
        __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]), p16b = _mm256_packs_epi32(i32[2], i32[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        // packs interleave 128-bit lanes: restore the element order 0..31.
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb), p8);
        s[b] = am / 127.0f;
        sum[b] = _mm_cvtsi128_si32(t4);
    }
}

// gather_rows_f32 with F16C: without act-order the packed order is the natural one plus zero
// padding at the end, so this is a straight conversion.
void gather_row(const Call& c, int64_t r, float* out) {
    const Packed& P = *c.w;
    const int64_t kp = P.kp(), K = P.k;
    if (!P.g_idx.empty()) {
        gather_rows_f32(c, r, r + 1, out);
        return;
    }
    int64_t j = 0;
    if (c.f16) {
        const uint16_t* x = static_cast<const uint16_t*>(c.x) + r * K;
        for (; j + 8 <= K; j += 8)
            _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j))));
        for (; j < K; ++j) out[j] = _cvtsh_ss(x[j]);
    } else {
        std::memcpy(out, static_cast<const float*>(c.x) + r * K, static_cast<size_t>(K) * sizeof(float));
        j = K;
    }
    for (; j < kp; ++j) out[j] = 0.0f;
}

struct alignas(32) Bcast {  // one 32-bit group of int8 codes repeated over a ymm register
    int32_t v[8];
};

struct ActInt8 {
    std::vector<int8_t> q;    // [rows][kp]
    std::vector<float> s;     // [rows][nb]
    std::vector<int32_t> sum; // [rows][nb]: sum of the block's codes (times 8 for symmetric weights)
    // For the MR >= 3 kernel (rows >= 3), the codes again as 32-bit groups (codes 4j..4j+3 of a block),
    // rows in groups of kMaxMR (the last group may hold fewer, mr): the group starting at row r0 is
    // [nb][8][mr] at index r0 * nb * 8, so the kernel walks one contiguous run per block through a single
    // pointer. qi holds the groups as int32 (broadcast in the loop); qv, used up to kMaxPreRows rows,
    // holds them already broadcast over a ymm register (a folded load in the loop, 8x the bytes).
    std::vector<int32_t> qi;
    std::vector<Bcast> qv;
};

// Up to this many rows the pre-broadcast activations pay (+5-7 % at M = 4-64 on the AVX2 VM); at M = 256
// their 8x footprint (8 MiB at K = 4096) no longer stays in L2 and they cost 8 % against qi.
constexpr int64_t kMaxPreRows = 64;

inline int32_t load_i32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// ---- Int8 kernel ------------------------------------------------------------------------------

// Keeps the int16 accumulators in registers at this point: without it GCC hoists the loads of later
// steps above it and runs out of the 16 ymm registers (spills cost ~5 % at M = 16).
template <int N>
inline void pin(__m256i (&a)[N]) {
    for (int i = 0; i < N; ++i) __asm__("" : "+x"(a[i]));
}

// One step of a block's dot product: 4 rows x 8 columns of codes (lo) and the next 4 rows (hi)
// against 4 broadcast activations each. VNNI: straight into the int32 accumulator. Otherwise int16
// partial sums (vpmaddubsw), widened once per block by block_dot.
template <bool VNNI>
__attribute__((always_inline)) inline __m256i dot_step(__m256i a, __m256i lo, __m256i x0, __m256i hi, __m256i x1) {
    if constexpr (VNNI) return cpu::dpbusd_vex(cpu::dpbusd_vex(a, lo, x0), hi, x1);
    a = _mm256_add_epi16(a, _mm256_maddubs_epi16(lo, x0));
    return _mm256_add_epi16(a, _mm256_maddubs_epi16(hi, x1));
}

// One block's partial sums (8 columns; int16 pairs, or int32 with VNNI) -> f32 dot(q - zero, xq), the
// epilogue of both kernels. The integer dot is exact either way, so both give the same bits.
// SYM: xsum already holds 8 * sum(xq), subtracted in int32. Otherwise zf holds the 8 zero points as
// f32 and dot - zero * sum(xq) is one fnmadd, exact: |dot| <= 32 * 15 * 127 and |zero * sum| <=
// 15 * 32 * 127 are integers far below 2^24.
template <bool SYM, bool VNNI>
__attribute__((always_inline)) inline __m256 block_dot(__m256i a, __m256 zf, int32_t xsum) {
    const __m256i dot = VNNI ? a : _mm256_madd_epi16(a, _mm256_set1_epi16(1));
    if constexpr (SYM) return _mm256_cvtepi32_ps(_mm256_sub_epi32(dot, _mm256_set1_epi32(xsum)));
    return _mm256_fnmadd_ps(zf, _mm256_set1_ps(float(xsum)), _mm256_cvtepi32_ps(dot));
}

// MR >= 3 rows, one tile at a time. On the AVX2 dev VM (a Zen-1-like core: 256-bit ops split in two,
// vpmaddubsw/vpmaddwd on one pipe) this loop is bound by that multiplier pipe and by the total vector
// uops, so everything else is taken out of the loop: activations come pre-broadcast from memory up to
// kMaxPreRows rows (PRE: ActInt8::qv, a folded load instead of a vpbroadcastd), scales are read per tile
// instead of being held in registers, and the zero point of asymmetric weights is subtracted in f32
// (exact, see block_dot) instead of with vpmulld, which takes that pipe twice. The broadcast activations
// of a row group are interleaved by row, so one pointer walks one contiguous 1 KiB per block.
// Measured 2026-12-06 against the previous version (activations broadcast from the row-major int8
// codes, scales in registers): +16-19 % at M = 4, 16, 64 and +12 % at M = 256 (native bench, best of
// 4-6 interleaved runs); ~12.7 int8 MACs per cycle and thread at M = 16, ~89 % of what that pipe
// allows with one vpmaddwd per 8 vpmaddubsw.
template <int MR, bool SYM, bool PRE, bool VNNI>
__attribute__((noinline)) void kernel_int8(const Packed& P, int64_t p, int64_t b0, int64_t b1, const void* xg,
                                           const float* xs, const int32_t* xsum, float* acc) {
    const int tp = P.tiles_in_panel(p);
    const int64_t nb = P.nblocks;
    const uint8_t* wpanel = P.panel_data(p);
    const uint16_t* spanel = P.panel_scales(p);
    const uint8_t* zpanel = P.panel_zeros(p);
    const int32_t* bgroup = P.block_group.data();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t g = bgroup[b];
        const uint8_t* wb = wpanel + b * tp * kTileBlockBytes;
        const __m256i* xb = nullptr;  // PRE: qv
        const int32_t* xi = nullptr;  // else: qi
        if constexpr (PRE) xb = reinterpret_cast<const __m256i*>(static_cast<const Bcast*>(xg) + b * 8 * MR);
        else xi = static_cast<const int32_t*>(xg) + b * 8 * MR;
        for (int i = 0; i < tp * kTileBlockBytes; i += 64)
            _mm_prefetch(reinterpret_cast<const char*>(wb + kPrefetchBytes + i), _MM_HINT_T0);
        for (int t = 0; t < tp; ++t) {
            __m256i a[MR];
            for (int r = 0; r < MR; ++r) a[r] = _mm256_setzero_si256();
            for (int L = 0; L < 4; ++L) {
                const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + t * kTileBlockBytes + L * 32));
                const __m256i lo = _mm256_and_si256(v, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for (int r = 0; r < MR; ++r) {
                    const int j0 = 2 * L * MR + r, j1 = j0 + MR;
                    const __m256i x0 = PRE ? _mm256_load_si256(xb + j0) : _mm256_set1_epi32(xi[j0]);
                    const __m256i x1 = PRE ? _mm256_load_si256(xb + j1) : _mm256_set1_epi32(xi[j1]);
                    a[r] = dot_step<VNNI>(a[r], lo, x0, hi, x1);
                }
                pin(a);
            }
            const int64_t o = (g * tp + t) * kTileN;
            const __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(spanel + o)));
            __m256 zf = _mm256_setzero_ps();
            if (!SYM)
                zf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(zpanel + o))));
            for (int r = 0; r < MR; ++r) {
                const __m256 d = block_dot<SYM, VNNI>(a[r], zf, xsum[r * nb + b]);
                const __m256 sc = _mm256_mul_ps(sv, _mm256_set1_ps(xs[r * nb + b]));
                float* ap = acc + r * kPanelN + t * kTileN;
                _mm256_store_ps(ap, _mm256_fmadd_ps(d, sc, _mm256_load_ps(ap)));
            }
        }
    }
}

// MR <= 2 rows: the activation broadcasts of a 4-row step are shared by all tiles of the panel and
// (MR = 1) the f32 accumulators stay in registers for the whole chunk. Same register discipline as
// kernel_int8: a function of its own, the group's scales (and zero points) converted to f32 once per
// group into a stack array that the epilogue reads as a folded memory operand, the int16 accumulators
// pinned: 16 ymm registers hold the loop without spills.
template <int MR, int TP, bool SYM, bool VNNI>
__attribute__((noinline)) void kernel_int8_wide(const Packed& P, int64_t p, int64_t b0, int64_t b1, const int8_t* xq,
                                                const float* xs, const int32_t* xsum, float* acc) {
    const int64_t kp = P.kp(), nb = P.nblocks;
    const uint8_t* wpanel = P.panel_data(p);
    const uint16_t* spanel = P.panel_scales(p);
    const uint8_t* zpanel = P.panel_zeros(p);
    const int32_t* bgroup = P.block_group.data();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    alignas(32) float sf[TP * kTileN] = {};
    alignas(32) float zf[TP * kTileN] = {};
    __m256 f[MR == 1 ? TP : 1];
    if (MR == 1)
        for (int t = 0; t < TP; ++t) f[t] = _mm256_load_ps(acc + t * kTileN);
    int32_t cur = -1;
    for (int64_t b = b0; b < b1; ++b) {
        const int32_t g = bgroup[b];
        if (g != cur) {
            for (int t = 0; t < TP; ++t) {
                const int64_t o = (int64_t(g) * TP + t) * kTileN;
                _mm256_store_ps(sf + t * kTileN,
                                _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(spanel + o))));
                if (!SYM)
                    _mm256_store_ps(zf + t * kTileN, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                                          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(zpanel + o)))));
            }
            cur = g;
        }
        const uint8_t* wb = wpanel + b * TP * kTileBlockBytes;
        const int8_t* xb = xq + b * kBlockK;
        for (int i = 0; i < TP * kTileBlockBytes; i += 64)
            _mm_prefetch(reinterpret_cast<const char*>(wb + kPrefetchBytes + i), _MM_HINT_T0);
        __m256i a[MR * TP];
        for (int i = 0; i < MR * TP; ++i) a[i] = _mm256_setzero_si256();
        for (int L = 0; L < 4; ++L) {
            __m256i x0[MR], x1[MR];
            for (int r = 0; r < MR; ++r) {
                x0[r] = _mm256_set1_epi32(load_i32(xb + r * kp + 8 * L));
                x1[r] = _mm256_set1_epi32(load_i32(xb + r * kp + 8 * L + 4));
            }
            for (int t = 0; t < TP; ++t) {
                const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + t * kTileBlockBytes + L * 32));
                const __m256i lo = _mm256_and_si256(v, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for (int r = 0; r < MR; ++r) {
                    a[r * TP + t] = dot_step<VNNI>(a[r * TP + t], lo, x0[r], hi, x1[r]);
                }
            }
            pin(a);
        }
        for (int r = 0; r < MR; ++r) {
            const __m256 xsc = _mm256_set1_ps(xs[r * nb + b]);
            for (int t = 0; t < TP; ++t) {
                const __m256 zt = SYM ? _mm256_setzero_ps() : _mm256_load_ps(zf + t * kTileN);
                const __m256 d = block_dot<SYM, VNNI>(a[r * TP + t], zt, xsum[r * nb + b]);
                const __m256 sc = _mm256_mul_ps(xsc, _mm256_load_ps(sf + t * kTileN));
                if (MR == 1) {
                    f[t] = _mm256_fmadd_ps(d, sc, f[t]);
                } else {
                    float* ap = acc + r * kPanelN + t * kTileN;
                    _mm256_store_ps(ap, _mm256_fmadd_ps(d, sc, _mm256_load_ps(ap)));
                }
            }
        }
    }
    if (MR == 1)
        for (int t = 0; t < TP; ++t) _mm256_store_ps(acc + t * kTileN, f[t]);
}

template <int MR, bool SYM, bool VNNI>
void wide_dispatch(int tp, const Packed& P, int64_t p, int64_t b0, int64_t b1, const int8_t* xq, const float* xs,
                   const int32_t* xsum, float* acc) {
    switch (tp) {
        case 1: kernel_int8_wide<MR, 1, SYM, VNNI>(P, p, b0, b1, xq, xs, xsum, acc); break;
        case 2: kernel_int8_wide<MR, 2, SYM, VNNI>(P, p, b0, b1, xq, xs, xsum, acc); break;
        case 3: kernel_int8_wide<MR, 3, SYM, VNNI>(P, p, b0, b1, xq, xs, xsum, acc); break;
        default: kernel_int8_wide<MR, 4, SYM, VNNI>(P, p, b0, b1, xq, xs, xsum, acc); break;
    }
}

template <bool SYM, bool VNNI>
void run_int8(const Packed& P, int64_t p, int64_t b0, int64_t b1, int64_t rows, const ActInt8& A, float* acc) {
    const int64_t kp = P.kp(), nb = P.nblocks;
    const bool pre = !A.qv.empty();
    for (int64_t r0 = 0; r0 < rows; r0 += kMaxMR) {
        const int64_t mr = std::min<int64_t>(kMaxMR, rows - r0);
        const int8_t* xq = A.q.data() + r0 * kp;
        const float* xs = A.s.data() + r0 * nb;
        const int32_t* xsum = A.sum.data() + r0 * nb;
        float* a = acc + r0 * kPanelN;
        // The row group in the MR >= 3 kernel's layout (qv or qi; unused when mr <= 2).
        const void* xg = pre ? static_cast<const void*>(A.qv.data() + r0 * nb * 8)
                             : static_cast<const void*>(A.qi.data() + r0 * nb * 8);
        switch (mr) {
            case 1: wide_dispatch<1, SYM, VNNI>(P.tiles_in_panel(p), P, p, b0, b1, xq, xs, xsum, a); break;
            case 2: wide_dispatch<2, SYM, VNNI>(P.tiles_in_panel(p), P, p, b0, b1, xq, xs, xsum, a); break;
            case 3:
                if (pre) kernel_int8<3, SYM, true, VNNI>(P, p, b0, b1, xg, xs, xsum, a);
                else kernel_int8<3, SYM, false, VNNI>(P, p, b0, b1, xg, xs, xsum, a);
                break;
            default:
                if (pre) kernel_int8<4, SYM, true, VNNI>(P, p, b0, b1, xg, xs, xsum, a);
                else kernel_int8<4, SYM, false, VNNI>(P, p, b0, b1, xg, xs, xsum, a);
                break;
        }
    }
}

// ---- F32 kernel -------------------------------------------------------------------------------

template <int MR>
void kernel_f32(const Packed& P, int64_t p, int64_t b0, int64_t b1, const float* xf, float* acc) {
    const int tp = P.tiles_in_panel(p);
    const int64_t kp = P.kp();
    const uint8_t* wpanel = P.panel_data(p);
    const uint16_t* spanel = P.panel_scales(p);
    const uint8_t* zpanel = P.panel_zeros(p);
    const int32_t* bgroup = P.block_group.data();
    const __m256i m4 = _mm256_set1_epi8(0x0F), ff = _mm256_set1_epi32(0xFF);
    // C independent FMA chains per row (8 / MR), summed at the end of the chunk: one chain per row
    // would be bound by FMA latency, not throughput.
    constexpr int C = MR == 1 ? 8 : MR == 2 ? 4 : 2;
    for (int t = 0; t < tp; ++t) {
        __m256 f[MR][C];
        for (int r = 0; r < MR; ++r) {
            f[r][0] = _mm256_load_ps(acc + r * kPanelN + t * kTileN);
            for (int i = 1; i < C; ++i) f[r][i] = _mm256_setzero_ps();
        }
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t o = (int64_t(bgroup[b]) * tp + t) * kTileN;
            const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(spanel + o)));
            const __m256 z = zpanel ? _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(zpanel + o))))
                                    : _mm256_set1_ps(8.0f);
            const __m256 zs = _mm256_mul_ps(z, s);  // exact: 4-bit integer times an fp16 value
            const uint8_t* wb = wpanel + (b * tp + t) * kTileBlockBytes;
            const float* xb = xf + b * kBlockK;
            for (int L = 0; L < 4; ++L) {
                const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + L * 32));
                for (int h = 0; h < 2; ++h) {
                    const __m256i hv = h == 0 ? _mm256_and_si256(v, m4) : _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    for (int j = 0; j < 4; ++j) {
                        __m256i qi = j == 3 ? _mm256_srli_epi32(hv, 24)
                                            : _mm256_and_si256(j == 0 ? hv : _mm256_srli_epi32(hv, 8 * j), ff);
                        const __m256 w = _mm256_fmsub_ps(_mm256_cvtepi32_ps(qi), s, zs);  // exact
                        const int row = 8 * L + 4 * h + j, ch = (4 * h + j) % C;
                        for (int r = 0; r < MR; ++r)
                            f[r][ch] = _mm256_fmadd_ps(_mm256_set1_ps(xb[r * kp + row]), w, f[r][ch]);
                    }
                }
            }
        }
        for (int r = 0; r < MR; ++r) {
            __m256 sum = f[r][0];
            for (int i = 1; i < C; ++i) sum = _mm256_add_ps(sum, f[r][i]);
            _mm256_store_ps(acc + r * kPanelN + t * kTileN, sum);
        }
    }
}

void run_f32(const Packed& P, int64_t p, int64_t b0, int64_t b1, int64_t rows, const float* xf, float* acc) {
    const int64_t kp = P.kp();
    for (int64_t r0 = 0; r0 < rows; r0 += kMaxMR) {
        const int64_t mr = std::min<int64_t>(kMaxMR, rows - r0);
        const float* x = xf + r0 * kp;
        float* a = acc + r0 * kPanelN;
        switch (mr) {
            case 1: kernel_f32<1>(P, p, b0, b1, x, a); break;
            case 2: kernel_f32<2>(P, p, b0, b1, x, a); break;
            case 3: kernel_f32<3>(P, p, b0, b1, x, a); break;
            default: kernel_f32<4>(P, p, b0, b1, x, a); break;
        }
    }
}

float* scratch(int64_t floats) {
    struct Scratch {
        std::vector<float> buf;
    };  // per thread (core/per_thread.hpp)
    std::vector<float>& buf = per_thread<Scratch>().buf;
    // 32-byte alignment for _mm256_load_ps: over-allocate and align by hand.
    const size_t need = static_cast<size_t>(floats) + 8;
    if (buf.size() < need) buf.assign(need, 0.0f);
    float* p = buf.data();
    p = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 31) & ~uintptr_t(31));
    std::memset(p, 0, static_cast<size_t>(floats) * sizeof(float));
    return p;
}

}  // namespace

void gemm_avx2(const Call& c, Compute mode, bool avx_vnni) {
    const Packed& P = *c.w;
    const int64_t kp = P.kp(), nb = P.nblocks, N = P.n;
    for (int64_t m0 = 0; m0 < c.m; m0 += kMaxRowsPerPass) {
        const int64_t rows = std::min<int64_t>(kMaxRowsPerPass, c.m - m0);
        Call sub = c;
        sub.x = c.f16 ? static_cast<const void*>(static_cast<const uint16_t*>(c.x) + m0 * P.k)
                      : static_cast<const void*>(static_cast<const float*>(c.x) + m0 * P.k);
        sub.y = c.f16 ? static_cast<void*>(static_cast<uint16_t*>(c.y) + m0 * N)
                      : static_cast<void*>(static_cast<float*>(c.y) + m0 * N);
        sub.m = rows;

        std::vector<float> xf(static_cast<size_t>(rows * kp));
        ActInt8 A;
        if (mode == Compute::Int8) {
            A.q.resize(static_cast<size_t>(rows * kp));
            A.s.resize(static_cast<size_t>(rows * nb));
            A.sum.resize(static_cast<size_t>(rows * nb));
            if (rows >= 3 && rows <= kMaxPreRows) A.qv.resize(static_cast<size_t>(rows * nb * 8));
            else if (rows >= 3) A.qi.resize(static_cast<size_t>(rows * nb * 8));
        }
        auto prep = [&](int64_t r) {
            gather_row(sub, r, xf.data() + r * kp);
            if (mode == Compute::Int8) {
                int32_t* sum = A.sum.data() + r * nb;
                quantize_row(xf.data() + r * kp, nb, A.q.data() + r * kp, A.s.data() + r * nb, sum);
                if (P.symmetric)
                    for (int64_t b = 0; b < nb; ++b) sum[b] *= 8;  // the zero point folded in once
                const int8_t* q = A.q.data() + r * kp;
                const int64_t r0 = r / kMaxMR * kMaxMR, mr = std::min<int64_t>(kMaxMR, rows - r0);
                const int64_t at = r0 * nb * 8 + (r - r0);
                if (!A.qv.empty()) {
                    for (int64_t j = 0; j < nb * 8; ++j)
                        _mm256_store_si256(reinterpret_cast<__m256i*>(&A.qv[size_t(at + j * mr)]),
                                           _mm256_set1_epi32(load_i32(q + 4 * j)));
                } else if (!A.qi.empty()) {
                    for (int64_t j = 0; j < nb * 8; ++j) A.qi[size_t(at + j * mr)] = load_i32(q + 4 * j);
                }
            }
        };
        if (rows * kp >= (int64_t(1) << 16)) cpu::parallel_for(rows, prep);
        else for (int64_t r = 0; r < rows; ++r) prep(r);

        // Work items: contiguous runs of panels (one long sequential stream each, which is what the
        // prefetchers need), 16 per thread so the wait for the last item stays short (measured at
        // M = 1, 4096 x 4096, 2 threads: 16 per thread beat 4 and 1).
        const int64_t items = std::min<int64_t>(P.npanels, int64_t(cpu::thread_count()) * 16);
        cpu::parallel_for(items, [&](int64_t item) {
            const int64_t p0 = P.npanels * item / items, p1 = P.npanels * (item + 1) / items;
            float* acc = scratch(rows * kPanelN);
            for (int64_t p = p0; p < p1; ++p) {
                if (p > p0) std::memset(acc, 0, static_cast<size_t>(rows * kPanelN) * sizeof(float));
                for (int64_t b0 = 0; b0 < nb; b0 += kChunkBlocks) {
                    const int64_t b1 = std::min(nb, b0 + kChunkBlocks);
                    if (mode == Compute::Int8) {
                        if (avx_vnni) {
                            if (P.symmetric) run_int8<true, true>(P, p, b0, b1, rows, A, acc);
                            else run_int8<false, true>(P, p, b0, b1, rows, A, acc);
                        } else {
                            if (P.symmetric) run_int8<true, false>(P, p, b0, b1, rows, A, acc);
                            else run_int8<false, false>(P, p, b0, b1, rows, A, acc);
                        }
                    } else {
                        run_f32(P, p, b0, b1, rows, xf.data(), acc);
                    }
                }
                const int64_t n0 = p * kPanelN;
                store_panel_f16c(sub, 0, rows, n0, static_cast<int>(std::min<int64_t>(kPanelN, N - n0)), acc);
            }
        });
    }
}

void store_panel_f16c(const Call& c, int64_t r0, int64_t r1, int64_t n0, int cols, const float* acc) {
    if (!c.f16) return store_panel(c, r0, r1, n0, cols, acc);
    alignas(32) float bias[kPanelN] = {};
    if (c.bias)
        for (int i = 0; i < cols; ++i) bias[i] = _cvtsh_ss(static_cast<const uint16_t*>(c.bias)[n0 + i]);
    for (int64_t r = r0; r < r1; ++r) {
        const float* a = acc + (r - r0) * kPanelN;
        alignas(16) uint16_t h[kPanelN];
        for (int i = 0; i < kPanelN; i += 8)
            _mm_store_si128(reinterpret_cast<__m128i*>(h + i),
                            _mm256_cvtps_ph(_mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_load_ps(bias + i)),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        std::memcpy(static_cast<uint16_t*>(c.y) + r * c.w->n + n0, h, static_cast<size_t>(cols) * sizeof(uint16_t));
    }
}

}  // namespace llmn::int4cpu
