// Dense GEMM baseline: Y[m,N] = X[m,K] * W[K,N] (+ bias[N]), W row-major, one dtype for x/w/bias/y,
// f32 accumulation. It exists so the INT4 kernels have an honest baseline measured with the same
// conventions (same buffers, same threading, same streaming discipline), not as a general BLAS.
// The API layer (kernels/gemm_int4/api.cpp, llmn_gemm_dense) validates everything before these run:
// backends may assume shapes, dtypes, buffer sizes and devices are consistent.
#pragma once
#include "../../core/context.hpp"

#include <cstdint>

namespace llmn {

struct GemmDenseArgs {
    const Buffer* x;     // [m, k]
    const Buffer* w;     // [k, n] row-major
    const Buffer* bias;  // [n] or null
    const Buffer* y;     // [m, n]
    int64_t m = 0, k = 0, n = 0;
};

// CPU: x/w/bias/y all f32 or all f16 (gemm_dense_cpu.cpp, gemm_dense_avx2.cpp).
void gemm_dense_cpu(const Context& ctx, const GemmDenseArgs& args);
// CUDA: all f16 or all bf16 (gemm_dense.cu; gemm_dense_cuda_none.cpp without CUDA).
void gemm_dense_cuda(const Context& ctx, const GemmDenseArgs& args);

}  // namespace llmn
