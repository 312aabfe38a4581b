// Stand-in for the CUDA runtime surface when LlmNative is built without the CUDA backend.
#include "cuda_runtime.hpp"

#include "../core/error.hpp"

#include <cstring>

namespace llmn::cuda {

namespace {
[[noreturn]] void not_compiled() {
    fail(LLMN_STATUS_UNSUPPORTED, "this build of LlmNative has no CUDA backend (configured with LLMNATIVE_CUDA=OFF or no CUDA toolkit found)");
}
}  // namespace

bool compiled() { return false; }

void get_info(llmn_cuda_info* info) {
    std::memset(info, 0, sizeof(*info));
    std::strncpy(info->unavailable_reason, "LlmNative was built without the CUDA backend",
                 sizeof(info->unavailable_reason) - 1);
}

void get_device_info(int32_t, llmn_cuda_device_info*) { not_compiled(); }
int32_t sm_count(int32_t) { not_compiled(); }
void* create_stream(int32_t) { not_compiled(); }
void destroy_stream(int32_t, void*) {}
void synchronize(int32_t, void*) { not_compiled(); }
void* alloc_device(int32_t, size_t) { not_compiled(); }
void free_device(int32_t, void*) {}
void* alloc_pinned(size_t) { not_compiled(); }
void free_pinned(void*) {}
void copy_h2d(int32_t, void*, void*, const void*, size_t) { not_compiled(); }
void copy_d2h(int32_t, void*, void*, const void*, size_t) { not_compiled(); }
void copy_d2d(int32_t, void*, void*, const void*, size_t) { not_compiled(); }
void copy_d2d_rows(int32_t, void*, void*, const void*, size_t, size_t, size_t) { not_compiled(); }
void fill(int32_t, void*, void*, const void*, int32_t, int64_t) { not_compiled(); }

}  // namespace llmn::cuda
