// The CUDA backend's runtime surface, free of CUDA types so plain C++ can call it. Implemented by
// cuda_runtime.cu when the backend is compiled and by cuda_runtime_none.cpp otherwise. Every
// function fails with LLMN_STATUS_BACKEND_ERROR / UNSUPPORTED and a message naming the CUDA error.
#pragma once
#include <llmnative/llmnative.h>

#include <cstddef>
#include <cstdint>

namespace llmn::cuda {

bool compiled();
// Queried once per process; the reason CUDA is unusable is logged once (INFO) on first query.
void get_info(llmn_cuda_info* info);
void get_device_info(int32_t device, llmn_cuda_device_info* info);
int32_t sm_count(int32_t device);

void* create_stream(int32_t device);
void destroy_stream(int32_t device, void* stream);
void synchronize(int32_t device, void* stream);

void* alloc_device(int32_t device, size_t bytes);
void free_device(int32_t device, void* p);
void* alloc_pinned(size_t bytes);
void free_pinned(void* p);

// Stream-ordered copies; host<->device variants return when the host side may be reused/read.
void copy_h2d(int32_t device, void* stream, void* dst, const void* src, size_t bytes);
void copy_d2h(int32_t device, void* stream, void* dst, const void* src, size_t bytes);
void copy_d2d(int32_t device, void* stream, void* dst, const void* src, size_t bytes);
// rows x width bytes, row i at dst + i * pitch from src + i * pitch (one cudaMemcpy2DAsync; one copy per row
// where pitch exceeds the device's cudaDevAttrMaxPitch).
void copy_d2d_rows(int32_t device, void* stream, void* dst, const void* src, size_t pitch, size_t width, size_t rows);
void fill(int32_t device, void* stream, void* dst, const void* value, int32_t elem_size, int64_t count);

}  // namespace llmn::cuda
