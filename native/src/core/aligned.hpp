// Aligned host allocations. One pair for the whole library because the C runtimes disagree: C11's
// aligned_alloc / free on Linux and macOS, _aligned_malloc / _aligned_free on Windows (whose free()
// cannot release an over-aligned block). Out of line on purpose: the *_avx512.cpp files call them,
// and no inline function may be shared with those files (see gemm_int4_avx512.cpp).
#pragma once
#include <cstddef>

namespace llmn {

// bytes is rounded up to a multiple of align (C11 requires it); align is a power of two. Null on failure.
void* aligned_malloc(size_t align, size_t bytes);
void aligned_free(void* p);

}  // namespace llmn
