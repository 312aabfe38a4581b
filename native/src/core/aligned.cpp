#include "aligned.hpp"

#include <cstdlib>
#if defined(_WIN32)
#include <malloc.h>
#endif

namespace llmn {

void* aligned_malloc(size_t align, size_t bytes) {
    const size_t rounded = (bytes + align - 1) / align * align;
    if (rounded < bytes) return nullptr;  // overflow
#if defined(_WIN32)
    return _aligned_malloc(rounded == 0 ? align : rounded, align);
#else
    return std::aligned_alloc(align, rounded == 0 ? align : rounded);
#endif
}

void aligned_free(void* p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    std::free(p);
#endif
}

}  // namespace llmn
