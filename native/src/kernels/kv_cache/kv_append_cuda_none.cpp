// Stand-in for the CUDA KV-cache append in builds without the CUDA backend. A CUDA context cannot
// exist in such a build, so this only runs if that invariant breaks; it fails cleanly anyway.
#include "kv_append_cuda.hpp"

#include "../../core/error.hpp"

namespace llmn {

void kv_cuda_validate_append(const Context&, const Buffer&, const Buffer&, int32_t, int32_t, int32_t, int32_t, int32_t) {
    fail(LLMN_STATUS_UNSUPPORTED, "llmn_kv_cache_append on a CUDA cache needs the CUDA backend; this build has none");
}

void kv_cuda_write_append(const Context&, const KvLayout&, uint8_t*, int32_t, const int32_t*, int32_t, int64_t, int32_t, const Buffer&,
                          const Buffer&) {
    fail(LLMN_STATUS_UNSUPPORTED, "llmn_kv_cache_append on a CUDA cache needs the CUDA backend; this build has none");
}

}  // namespace llmn
