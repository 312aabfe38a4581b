// arm64 NEON INT4 GEMM, the Int8 compute mode, over the packed layout of gemm_int4_cpu.hpp.
//
// Why: linux-arm64 (Graviton, Ampere, Apple under Linux) otherwise runs the scalar reference, which
// dequantizes every weight to f32 per call. The packed layout was designed for x86's vpmaddubsw, and it
// suits the ARMv8.2 dot product just as well: in a chunk of a tile block, the 4 bytes of column c hold
// rows 8L..8L+3 (low nibbles) and 8L+4..8L+7 (high nibbles), so after & 0x0F or >> 4 each 32-bit lane of
// a 128-bit register is 4 consecutive rows of one column, and one sdot against 4 int8 activations
// replicated to every lane (ld1r) adds 4 rows x 4 columns. The codes 0..15 are valid signed bytes, so the
// plain signed sdot needs no offset (x86's vpdpbusd is unsigned x signed).
//
// Same arithmetic as the AVX2 Int8 path (gemm_int4_avx2.cpp), output by output: activations rounded to
// int8 per 32-row block (amax exact, 127 / amax and amax / 127 rounded to f32, round to nearest even),
// the exact integer dot product started from -(code sum) x zero, then per block one f32 FMA
// acc = fma(float(dot), scale_w * scale_x, acc) in block order; bias and the output conversion are the
// shared store_panel. So it gives the AVX2 kernel's bits: test Int4Gemm.Int8KernelsComputeTheDocumentedArithmeticBitForBit
// compares every Int8 kernel (x86 and this one, under qemu-aarch64) bit for bit with a model of that arithmetic
// written in the test; and on 2026-12-07 a C program that builds its inputs with integer arithmetic only gave
// the same FNV-1a digest of 12 outputs from AVX2, AVX-512 and this kernel. (The scalar reference's bits
// differ between x86-64 and arm64: GCC contracts its multiply-adds to FMA on arm64.) The other GEMM tests
// hold it to the Int8 error bound against float64.
// Work items are runs of whole panels, as on x86: results do not depend on the thread count. The F32
// compute mode runs the scalar reference on arm64.
//
// Never run on arm64 hardware (only under qemu-user, where timings mean nothing): speed unmeasured.
//
// The dot product is enabled for this file's own code only (the target pragma after the includes); its
// functions have internal linkage and it uses no std:: containers, so no inline function compiled with
// sdot can be picked by the linker for code that runs on a core without it. The caller checks
// cpu::neon_dotprod().
#include "gemm_int4_cpu.hpp"

#include "../../core/per_thread.hpp"
#include "../../cpu/cpu_runtime.hpp"

#include <arm_neon.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#pragma GCC target("arch=armv8.2-a+dotprod")

namespace llmn::int4cpu {

namespace {

constexpr int64_t kMaxRowsPerPass = 256;  // as AVX2
constexpr int kItemsPerThread = 16;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

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

// Int8 activations of one pass: q row-major [r][kp] int8, s / n [r][nb] (scale amax / 127, and the
// dot product's start value -(code sum), times 8 for symmetric weights: the zero point folded in).
struct ActQ {
    int8_t* q;
    float* s;
    int32_t* n;
    int64_t kp, nb;
};

// One packed-order f32 row -> int8 per 32-value block, as the AVX2 quantize_row: NaN/Inf in a block
// gives codes 0 and scale NaN (the output row becomes NaN), an all-zero block scale 0.
void quantize_row(const float* xf, int64_t r, bool sym, const ActQ& A) {
    for (int64_t b = 0; b < A.nb; ++b) {
        const float* x = xf + b * kBlockK;
        int8_t* q = A.q + r * A.kp + b * kBlockK;
        const int64_t i = r * A.nb + b;
        float am = 0.0f;
        bool bad = false;
        for (int j = 0; j < kBlockK; ++j) {
            const float a = std::fabs(x[j]);
            bad |= !(a < std::numeric_limits<float>::infinity());  // NaN or Inf
            am = a > am ? a : am;
        }
        if (bad || am == 0.0f) {
            std::memset(q, 0, kBlockK);
            A.s[i] = bad ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
            A.n[i] = 0;
            continue;
        }
        const float32x4_t inv = vdupq_n_f32(127.0f / am);
        int32x4_t sum = vdupq_n_s32(0);
        for (int j = 0; j < kBlockK; j += 8) {
            // round to nearest even (fcvtns), |code| <= 127: the narrowing is exact
            const int32x4_t c0 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + j), inv));
            const int32x4_t c1 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + j + 4), inv));
            sum = vaddq_s32(sum, vaddq_s32(c0, c1));
            const int16x8_t h = vcombine_s16(vmovn_s32(c0), vmovn_s32(c1));
            vst1_s8(q + j, vmovn_s16(h));
        }
        A.s[i] = am / 127.0f;
        const int32_t total = vaddvq_s32(sum);
        A.n[i] = -(sym ? 8 * total : total);
    }
}

// One panel (TP tiles) for rows [0, rows): acc[r][32] += the panel's outputs.
template <int TP, bool SYM>
void panel_int8(const Packed& P, int64_t p, int64_t rows, const ActQ& A, float* acc) {
    const uint8_t* data = P.panel_data(p);
    const uint16_t* sc = P.panel_scales(p);
    const uint8_t* zr = P.panel_zeros(p);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float32x4_t sw[TP][2];
    int32x4_t zw[TP][2];
    for (int t = 0; t < TP; ++t) {  // set with the first block's group below
        sw[t][0] = sw[t][1] = vdupq_n_f32(0.0f);
        zw[t][0] = zw[t][1] = vdupq_n_s32(0);
    }
    int32_t cur = -1;
    for (int64_t b = 0; b < P.nblocks; ++b) {
        const int32_t g = P.block_group[static_cast<size_t>(b)];
        if (g != cur) {
            for (int t = 0; t < TP; ++t) {
                const uint16_t* s = sc + (int64_t(g) * TP + t) * kTileN;
                const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(s));
                sw[t][0] = vcvt_f32_f16(vget_low_f16(h));
                sw[t][1] = vcvt_f32_f16(vget_high_f16(h));
                if (!SYM) {
                    const uint16x8_t z = vmovl_u8(vld1_u8(zr + (int64_t(g) * TP + t) * kTileN));
                    zw[t][0] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(z)));
                    zw[t][1] = vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(z)));
                }
            }
            cur = g;
        }
        const uint8_t* wb = data + b * TP * kTileBlockBytes;
        __builtin_prefetch(wb + 2048);
        for (int t = 0; t < TP; ++t) {
            // The tile block's 32 rows x 8 columns as 16 registers of 4 columns x 4 rows.
            int8x16_t lo[4][2], hi[4][2];
            for (int L = 0; L < 4; ++L)
                for (int h = 0; h < 2; ++h) {
                    const uint8x16_t w = vld1q_u8(wb + t * kTileBlockBytes + L * 32 + h * 16);
                    lo[L][h] = vreinterpretq_s8_u8(vandq_u8(w, m4));
                    hi[L][h] = vreinterpretq_s8_u8(vshrq_n_u8(w, 4));
                }
            for (int64_t r = 0; r < rows; ++r) {
                const int8_t* x = A.q + r * A.kp + b * kBlockK;
                const int64_t i = r * A.nb + b;
                const int32x4_t n = vdupq_n_s32(A.n[i]);
                int32x4_t d0 = SYM ? n : vmulq_s32(zw[t][0], n), d1 = SYM ? n : vmulq_s32(zw[t][1], n);
                for (int L = 0; L < 4; ++L) {
                    int32_t xl, xh;
                    std::memcpy(&xl, x + 8 * L, 4);
                    std::memcpy(&xh, x + 8 * L + 4, 4);
                    const int8x16_t vl = vreinterpretq_s8_s32(vdupq_n_s32(xl)), vh = vreinterpretq_s8_s32(vdupq_n_s32(xh));
                    d0 = vdotq_s32(d0, lo[L][0], vl);
                    d1 = vdotq_s32(d1, lo[L][1], vl);
                    d0 = vdotq_s32(d0, hi[L][0], vh);
                    d1 = vdotq_s32(d1, hi[L][1], vh);
                }
                const float32x4_t xs = vdupq_n_f32(A.s[i]);
                float* f = acc + r * kPanelN + t * kTileN;
                vst1q_f32(f, vfmaq_f32(vld1q_f32(f), vcvtq_f32_s32(d0), vmulq_f32(sw[t][0], xs)));
                vst1q_f32(f + 4, vfmaq_f32(vld1q_f32(f + 4), vcvtq_f32_s32(d1), vmulq_f32(sw[t][1], xs)));
            }
        }
    }
}

template <bool SYM>
void panel_dispatch(const Packed& P, int64_t p, int64_t rows, const ActQ& A, float* acc) {
    switch (P.tiles_in_panel(p)) {
        case 1: panel_int8<1, SYM>(P, p, rows, A, acc); break;
        case 2: panel_int8<2, SYM>(P, p, rows, A, acc); break;
        case 3: panel_int8<3, SYM>(P, p, rows, A, acc); break;
        default: panel_int8<4, SYM>(P, p, rows, A, acc); break;
    }
}

}  // namespace

void gemm_neon(const Call& c) {
    const Packed& P = *c.w;
    const int64_t kp = P.kp(), nb = P.nblocks, N = P.n;
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
        const ActQ A{static_cast<int8_t*>(q_mem.get(static_cast<size_t>(rows * kp))),
                     static_cast<float*>(s_mem.get(static_cast<size_t>(rows * nb) * sizeof(float))),
                     static_cast<int32_t*>(n_mem.get(static_cast<size_t>(rows * nb) * sizeof(int32_t))), kp, nb};
        auto prep = [&](int64_t r) {
            gather_rows_f32(sub, r, r + 1, xf + r * kp);
            quantize_row(xf + r * kp, r, P.symmetric, A);
        };
        if (rows * kp >= (int64_t(1) << 16)) cpu::parallel_for(rows, prep);
        else for (int64_t r = 0; r < rows; ++r) prep(r);

        const int64_t items = imin(P.npanels, int64_t(cpu::thread_count()) * kItemsPerThread);
        cpu::parallel_for(items, [&](int64_t item) {
            Mem& buf = per_thread<Mem>();
            float* acc = static_cast<float*>(buf.get(static_cast<size_t>(rows * kPanelN) * sizeof(float)));
            const int64_t p0 = P.npanels * item / items, p1 = P.npanels * (item + 1) / items;
            for (int64_t p = p0; p < p1; ++p) {
                std::memset(acc, 0, static_cast<size_t>(rows * kPanelN) * sizeof(float));
                if (P.symmetric) panel_dispatch<true>(P, p, rows, A, acc);
                else panel_dispatch<false>(P, p, rows, A, acc);
                const int64_t n0 = p * kPanelN;
                store_panel(sub, 0, rows, n0, static_cast<int>(imin(kPanelN, N - n0)), acc);
            }
        });
    }
}

}  // namespace llmn::int4cpu
