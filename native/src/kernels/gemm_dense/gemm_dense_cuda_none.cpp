// Stand-in for gemm_dense.cu in builds without the CUDA backend: keeps the API layer free of #ifdefs.
// Unreachable in practice (no CUDA context can be created without CUDA), but fails cleanly if reached.
#include "gemm_dense.hpp"

namespace llmn {

void gemm_dense_cuda(const Context&, const GemmDenseArgs&) {
    fail(LLMN_STATUS_UNSUPPORTED, "llmn_gemm_dense: this library was built without CUDA");
}

}  // namespace llmn
