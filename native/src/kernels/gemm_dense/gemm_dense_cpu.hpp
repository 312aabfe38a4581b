// CPU-private pieces of the dense baseline shared by the scalar reference and the AVX2 kernel.
#pragma once
#include "gemm_dense.hpp"

namespace llmn::densecpu {

constexpr int64_t kSlabN = 512;  // columns per work item of the scalar path

struct Call {
    const void* x;     // [m, k]
    const void* w;     // [k, n]
    const void* bias;  // [n] or null
    void* y;           // [m, n]
    int64_t m, k, n;
    bool f16;
};

// y[r][n0 + i] = acc[(r - r0) * ld + i] (+ bias) for i < cols, rounded to the output dtype.
void store_slab(const Call& c, int64_t r0, int64_t r1, int64_t n0, int64_t cols, const float* acc, int64_t ld);

#if defined(__x86_64__) || defined(_M_X64)
void gemm_avx2(const Call& c);
#endif

}  // namespace llmn::densecpu
