// Dense baseline, AVX2 + FMA (+ F16C for f16 weights). Meant to be a fair opponent for the INT4
// kernel, so it follows the same rules: one work item = one slab of columns over all of K, W read
// from memory once per call (M <= 256), fixed summation order (k ascending, one FMA per term)
// whatever the thread count.
//
// W is row-major [K, N], so a column slab is a strided walk: one row segment per k. Measured on the
// Zen 2 dev box, 1 KiB segments at an 8 KiB stride ran at 7 GB/s (M = 1) and 18 GFLOP/s (M = 16)
// against 31 GB/s / 52 GFLOP/s for the same code on a cache-resident W: every row is a new 4 KiB page
// (TLB miss, prefetchers restart) and the core waits on it. So:
//  * M <= 4: a slab is one page of a row (4 KiB: 2048 f16 or 1024 f32 columns); "axpy" form,
//    acc[r][slab] updated 4 rows of W at a time (4 FMAs per acc load/store). Whole pages are what the
//    hardware prefetchers handle well; software prefetch of rows ahead made it slower (8.3-9.3 vs
//    12.1-12.7 GB/s single-threaded, 4096 x 4096 f16);
//  * M > 4 (compute bound): 256-column slabs so acc (M x 1 KiB) stays in L1/L2; chunks of 128 rows are
//    copied row by row into an f32 panel [16-column strip][128][16] (128 KiB, L2), a 6 x 16
//    register-blocked kernel runs over it for every 6 rows of X, and the next chunk is prefetched a
//    little at a time meanwhile so its rows arrive while this one is computed (with the packing
//    loop's own prefetch 8 rows ahead: 30-36 GFLOP/s single-threaded at M = 16, 22 without either).
#include "gemm_dense_cpu.hpp"
#include "../../core/per_thread.hpp"

#include "../../cpu/cpu_runtime.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace llmn::densecpu {

namespace {

constexpr int64_t kSlabBytes = 4096;    // M <= 4: one page of a row per slab
constexpr int64_t kBlockedSlab = 256;   // M > 4: columns per slab (acc = M x 1 KiB)
constexpr int64_t kPanelBytes = 128 * 1024;  // packed f32 chunk: 128 rows of 256 columns
constexpr int64_t kMaxRowsPerPass = 256;
constexpr int64_t kAxpyMaxRows = 4;
constexpr int64_t kPrefetchRows = 8;

template <bool F16>
inline __m256 load8(const void* w, int64_t i) {
    if (F16) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i)));
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
}

template <bool F16>
inline float load1(const void* w, int64_t i) {
    if (F16) return _cvtsh_ss(static_cast<const uint16_t*>(w)[i]);
    return static_cast<const float*>(w)[i];
}

template <bool F16>
inline void prefetch_row(const Call& c, int64_t k, int64_t n0, int64_t cols) {
    const size_t esz = F16 ? 2 : 4;
    const char* row = static_cast<const char*>(c.w) + (k * c.n + n0) * esz;
    for (int64_t i = 0; i < int64_t(cols * esz); i += 64) _mm_prefetch(row + i, _MM_HINT_T0);
}

// ---- M <= 4: stream rows of W through acc[r][ld] -----------------------------------------------

// Rows of W are converted once per 8 columns and applied to all R rows of X (R <= 4).
template <bool F16, int R>
void axpy_slab(const Call& c, const float* xf, int64_t n0, int64_t cols, float* acc, int64_t ld) {
    const int64_t K = c.k, N = c.n;
    const int64_t vec = cols / 8 * 8;
    const void* w = c.w;
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const int64_t base = k * N + n0;
        __m256 x[R][4];
        for (int r = 0; r < R; ++r)
            for (int kk = 0; kk < 4; ++kk) x[r][kk] = _mm256_set1_ps(xf[r * K + k + kk]);
        for (int64_t i = 0; i < vec; i += 8) {
            const __m256 w0 = load8<F16>(w, base + i), w1 = load8<F16>(w, base + N + i),
                         w2 = load8<F16>(w, base + 2 * N + i), w3 = load8<F16>(w, base + 3 * N + i);
            for (int r = 0; r < R; ++r) {
                float* a = acc + r * ld + i;
                __m256 v = _mm256_loadu_ps(a);
                v = _mm256_fmadd_ps(x[r][0], w0, v);
                v = _mm256_fmadd_ps(x[r][1], w1, v);
                v = _mm256_fmadd_ps(x[r][2], w2, v);
                v = _mm256_fmadd_ps(x[r][3], w3, v);
                _mm256_storeu_ps(a, v);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int64_t i = vec; i < cols; ++i)
                for (int64_t kk = 0; kk < 4; ++kk)
                    acc[r * ld + i] = std::fma(xf[r * K + k + kk], load1<F16>(w, base + kk * N + i), acc[r * ld + i]);
    }
    for (; k < K; ++k) {
        for (int r = 0; r < R; ++r) {
            const __m256 x0 = _mm256_set1_ps(xf[r * K + k]);
            float* a = acc + r * ld;
            for (int64_t i = 0; i < vec; i += 8)
                _mm256_storeu_ps(a + i, _mm256_fmadd_ps(x0, load8<F16>(w, k * N + n0 + i), _mm256_loadu_ps(a + i)));
            for (int64_t i = vec; i < cols; ++i) a[i] = std::fma(xf[r * K + k], load1<F16>(w, k * N + n0 + i), a[i]);
        }
    }
}

template <bool F16>
void axpy_rows(const Call& c, const float* xf, int64_t rows, int64_t n0, int64_t cols, float* acc, int64_t ld) {
    switch (rows) {
        case 1: axpy_slab<F16, 1>(c, xf, n0, cols, acc, ld); break;
        case 2: axpy_slab<F16, 2>(c, xf, n0, cols, acc, ld); break;
        case 3: axpy_slab<F16, 3>(c, xf, n0, cols, acc, ld); break;
        default: axpy_slab<F16, 4>(c, xf, n0, cols, acc, ld); break;
    }
}

// ---- M > 4: packed row chunks, 6 x 16 register blocks ------------------------------------------

// acc[r][0..16) (row stride ld) += sum_{kk < kc} x[r][kk] * p[kk][0..16)
template <int MR>
void micro(const float* p, const float* x, int64_t ldx, int64_t kc, float* acc, int64_t ld) {
    __m256 c0[MR], c1[MR];
    for (int r = 0; r < MR; ++r) {
        c0[r] = _mm256_loadu_ps(acc + r * ld);
        c1[r] = _mm256_loadu_ps(acc + r * ld + 8);
    }
    for (int64_t kk = 0; kk < kc; ++kk) {
        const __m256 w0 = _mm256_load_ps(p + kk * 16), w1 = _mm256_load_ps(p + kk * 16 + 8);
        for (int r = 0; r < MR; ++r) {
            const __m256 xb = _mm256_set1_ps(x[r * ldx + kk]);
            c0[r] = _mm256_fmadd_ps(xb, w0, c0[r]);
            c1[r] = _mm256_fmadd_ps(xb, w1, c1[r]);
        }
    }
    for (int r = 0; r < MR; ++r) {
        _mm256_storeu_ps(acc + r * ld, c0[r]);
        _mm256_storeu_ps(acc + r * ld + 8, c1[r]);
    }
}

// Copies W[k0 .. k0+kc)[n0 .. n0+cols) into p[strip][kk][16] as f32, zero-padding the last strip.
template <bool F16>
void pack_chunk(const Call& c, int64_t k0, int64_t kc, int64_t n0, int64_t cols, float* p) {
    const int64_t strips = (cols + 15) / 16, full = cols / 8 * 8;
    for (int64_t kk = 0; kk < kc; ++kk) {
        const int64_t base = (k0 + kk) * c.n + n0;
        if (k0 + kk + kPrefetchRows < c.k) prefetch_row<F16>(c, k0 + kk + kPrefetchRows, n0, cols);
        for (int64_t i = 0; i < full; i += 8)
            _mm256_store_ps(p + (i / 16) * kc * 16 + kk * 16 + (i % 16), load8<F16>(c.w, base + i));
        for (int64_t i = full; i < strips * 16; ++i)
            p[(i / 16) * kc * 16 + kk * 16 + (i % 16)] = i < cols ? load1<F16>(c.w, base + i) : 0.0f;
    }
}

template <bool F16>
void blocked_slab(const Call& c, const float* xf, int64_t rows, int64_t n0, int64_t cols, float* acc, int64_t ld,
                  int64_t chunk, float* p) {
    const int64_t K = c.k, strips = (cols + 15) / 16;
    const int64_t esz = F16 ? 2 : 4, row_lines = (cols * esz + 63) / 64;
    for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        const int64_t kc = std::min(chunk, K - k0);
        pack_chunk<F16>(c, k0, kc, n0, cols, p);
        // The next chunk's rows are prefetched a little at a time while this one is computed, so
        // the memory system works during the (compute-bound) strip loop instead of only in packing.
        const int64_t next_rows = std::max<int64_t>(0, std::min(chunk, K - (k0 + kc)));
        const int64_t next_lines = next_rows * row_lines;
        for (int64_t s = 0; s < strips; ++s) {
            for (int64_t l = next_lines * s / strips; l < next_lines * (s + 1) / strips; ++l)
                _mm_prefetch(static_cast<const char*>(c.w) + ((k0 + kc + l / row_lines) * c.n + n0) * esz + (l % row_lines) * 64,
                             _MM_HINT_T0);
            const float* ps = p + s * kc * 16;
            for (int64_t r0 = 0; r0 < rows; r0 += 6) {
                const float* x = xf + r0 * K + k0;
                float* a = acc + r0 * ld + s * 16;
                switch (std::min<int64_t>(6, rows - r0)) {
                    case 1: micro<1>(ps, x, K, kc, a, ld); break;
                    case 2: micro<2>(ps, x, K, kc, a, ld); break;
                    case 3: micro<3>(ps, x, K, kc, a, ld); break;
                    case 4: micro<4>(ps, x, K, kc, a, ld); break;
                    case 5: micro<5>(ps, x, K, kc, a, ld); break;
                    default: micro<6>(ps, x, K, kc, a, ld); break;
                }
            }
        }
    }
}

template <class T>
T* aligned_scratch(std::vector<T>& buf, size_t count) {
    if (buf.size() < count + 16) buf.resize(count + 16);
    return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
}

}  // namespace

void gemm_avx2(const Call& c) {
    const int64_t K = c.k, N = c.n;
    const int64_t esz = c.f16 ? 2 : 4;
    for (int64_t m0 = 0; m0 < c.m; m0 += kMaxRowsPerPass) {
        const int64_t rows = std::min(kMaxRowsPerPass, c.m - m0);
        const bool axpy = rows <= kAxpyMaxRows;
        const int64_t slab = axpy ? kSlabBytes / esz : kBlockedSlab;
        const int64_t chunk = kPanelBytes / (slab * 4);
        const int64_t slabs = (N + slab - 1) / slab;
        Call sub = c;
        sub.y = c.f16 ? static_cast<void*>(static_cast<uint16_t*>(c.y) + m0 * N)
                      : static_cast<void*>(static_cast<float*>(c.y) + m0 * N);
        std::vector<float> xf(static_cast<size_t>(rows * K));
        for (int64_t i = 0; i < rows * K; ++i)
            xf[static_cast<size_t>(i)] = c.f16 ? _cvtsh_ss(static_cast<const uint16_t*>(c.x)[m0 * K + i])
                                               : static_cast<const float*>(c.x)[m0 * K + i];

        cpu::parallel_for(slabs, [&](int64_t s) {
            const int64_t n0 = s * slab, cols = std::min(slab, N - n0);
            struct Scratch {
                std::vector<float> acc_buf, pack_buf;
            };  // per thread (core/per_thread.hpp)
            Scratch& w_ = per_thread<Scratch>();
            auto &acc_buf = w_.acc_buf, &pack_buf = w_.pack_buf;
            float* acc = aligned_scratch(acc_buf, static_cast<size_t>(rows * slab));
            std::memset(acc, 0, static_cast<size_t>(rows * slab) * sizeof(float));
            if (axpy) {
                if (c.f16) axpy_rows<true>(c, xf.data(), rows, n0, cols, acc, slab);
                else axpy_rows<false>(c, xf.data(), rows, n0, cols, acc, slab);
            } else {
                float* p = aligned_scratch(pack_buf, static_cast<size_t>(chunk * (slab + 16)));
                if (c.f16) blocked_slab<true>(c, xf.data(), rows, n0, cols, acc, slab, chunk, p);
                else blocked_slab<false>(c, xf.data(), rows, n0, cols, acc, slab, chunk, p);
            }
            store_slab(sub, 0, rows, n0, cols, acc, slab);
        });
    }
}

}  // namespace llmn::densecpu
