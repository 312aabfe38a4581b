// Stand-in for gemm_int4.cu in builds without the CUDA backend: keeps api.cpp free of #ifdefs.
// Unreachable in practice (no CUDA context can be created without CUDA), but fails cleanly if reached.
#include "int4_weight.hpp"

namespace llmn {

std::unique_ptr<Int4Packed> int4_pack_cuda(const Context&, const Int4Canonical&) {
    fail(LLMN_STATUS_UNSUPPORTED, "INT4 weights on CUDA: this library was built without CUDA");
}

Int4Canonical int4_unpack_cuda(const Context&, const Int4Packed&) {
    fail(LLMN_STATUS_UNSUPPORTED, "INT4 weights on CUDA: this library was built without CUDA");
}

void gemm_int4_cuda(const Context&, const Int4Weight&, const GemmInt4Args&) {
    fail(LLMN_STATUS_UNSUPPORTED, "llmn_gemm_int4 on CUDA: this library was built without CUDA");
}

}  // namespace llmn
