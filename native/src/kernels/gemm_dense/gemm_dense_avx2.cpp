// Dense baseline, AVX2 + FMA (+ F16C for f16 weights). Meant to be a fair opponent for the INT4
// kernel, so it follows the same rules: one work item = one 64-column slab over all of K, K walked
// in chunks of 256 rows that serve every row of X before the next chunk (W is read from memory once
// per call for M <= 256), f32 accumulators held in registers inside a chunk (6 rows x 16 columns, or
// 1 row x 64 columns at M = 1, where the kernel is a pure stream), fixed summation order (k
// ascending, one FMA per term) whatever the thread count.
#include "gemm_dense_cpu.hpp"

#include "../../cpu/cpu_runtime.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace llmn::densecpu {

namespace {

constexpr int64_t kChunkK = 256;
constexpr int64_t kMaxRowsPerPass = 256;

template <bool F16>
inline __m256 load8(const void* w, int64_t i) {
    if (F16) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i)));
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
}

// acc[r][0 .. 8*NV) += sum_{kk < kc} x[r][kk] * w[kk][0 .. 8*NV); acc row stride kSlabN.
template <int MR, int NV, bool F16>
void micro(const void* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc, float* acc) {
    __m256 c[MR][NV];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) c[r][v] = _mm256_loadu_ps(acc + r * kSlabN + 8 * v);
    for (int64_t kk = 0; kk < kc; ++kk) {
        __m256 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = load8<F16>(w, kk * ldw + 8 * v);
        for (int r = 0; r < MR; ++r) {
            const __m256 xb = _mm256_set1_ps(x[r * ldx + kk]);
            for (int v = 0; v < NV; ++v) c[r][v] = _mm256_fmadd_ps(xb, wv[v], c[r][v]);
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) _mm256_storeu_ps(acc + r * kSlabN + 8 * v, c[r][v]);
}

template <bool F16>
void run_chunk(const void* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t kc, float* acc) {
    if (rows == 1) {
        micro<1, 8, F16>(w, ldw, x, ldx, kc, acc);
        return;
    }
    const size_t esz = F16 ? 2 : 4;
    for (int64_t v0 = 0; v0 < kSlabN; v0 += 16) {
        const void* ws = static_cast<const char*>(w) + v0 * esz;
        for (int64_t r0 = 0; r0 < rows; r0 += 6) {
            const float* xr = x + r0 * ldx;
            float* a = acc + r0 * kSlabN + v0;
            switch (std::min<int64_t>(6, rows - r0)) {
                case 1: micro<1, 2, F16>(ws, ldw, xr, ldx, kc, a); break;
                case 2: micro<2, 2, F16>(ws, ldw, xr, ldx, kc, a); break;
                case 3: micro<3, 2, F16>(ws, ldw, xr, ldx, kc, a); break;
                case 4: micro<4, 2, F16>(ws, ldw, xr, ldx, kc, a); break;
                case 5: micro<5, 2, F16>(ws, ldw, xr, ldx, kc, a); break;
                default: micro<6, 2, F16>(ws, ldw, xr, ldx, kc, a); break;
            }
        }
    }
}

}  // namespace

void gemm_avx2(const Call& c) {
    const int64_t K = c.k, N = c.n;
    const int64_t slabs = (N + kSlabN - 1) / kSlabN;
    for (int64_t m0 = 0; m0 < c.m; m0 += kMaxRowsPerPass) {
        const int64_t rows = std::min(kMaxRowsPerPass, c.m - m0);
        Call sub = c;
        sub.y = c.f16 ? static_cast<void*>(static_cast<uint16_t*>(c.y) + m0 * N)
                      : static_cast<void*>(static_cast<float*>(c.y) + m0 * N);
        // Activations as f32 (a copy also for f32 input: keeps one code path and is O(M*K)).
        std::vector<float> xf(static_cast<size_t>(rows * K));
        for (int64_t i = 0; i < rows * K; ++i)
            xf[static_cast<size_t>(i)] = c.f16 ? _cvtsh_ss(static_cast<const uint16_t*>(c.x)[m0 * K + i])
                                               : static_cast<const float*>(c.x)[m0 * K + i];

        cpu::parallel_for(slabs, [&](int64_t s) {
            const int64_t n0 = s * kSlabN, cols = std::min(kSlabN, N - n0);
            thread_local std::vector<float> acc_buf, pad_buf;
            acc_buf.assign(static_cast<size_t>(rows * kSlabN), 0.0f);
            float* acc = acc_buf.data();
            for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
                const int64_t kc = std::min(kChunkK, K - k0);
                const float* x = xf.data() + k0;
                if (cols == kSlabN) {
                    if (c.f16) run_chunk<true>(static_cast<const uint16_t*>(c.w) + k0 * N + n0, N, rows, x, K, kc, acc);
                    else run_chunk<false>(static_cast<const float*>(c.w) + k0 * N + n0, N, rows, x, K, kc, acc);
                } else {  // ragged last slab: zero-padded f32 copy of the chunk
                    pad_buf.assign(static_cast<size_t>(kc * kSlabN), 0.0f);
                    for (int64_t kk = 0; kk < kc; ++kk)
                        for (int64_t i = 0; i < cols; ++i) {
                            const int64_t wi = (k0 + kk) * N + n0 + i;
                            pad_buf[static_cast<size_t>(kk * kSlabN + i)] =
                                c.f16 ? _cvtsh_ss(static_cast<const uint16_t*>(c.w)[wi]) : static_cast<const float*>(c.w)[wi];
                        }
                    run_chunk<false>(pad_buf.data(), kSlabN, rows, x, K, kc, acc);
                }
            }
            store_slab(sub, 0, rows, n0, cols, acc);
        });
    }
}

}  // namespace llmn::densecpu
