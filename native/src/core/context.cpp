#include "context.hpp"

#include "../cuda/cuda_runtime.hpp"
#include "aligned.hpp"
#include "log.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

namespace llmn {

namespace {
std::atomic<uint64_t> g_next_context_id{1};
}

Context::Context(llmn_backend backend, int32_t device)
    : Object(kType), backend_(backend), device_(device), id_(g_next_context_id.fetch_add(1)) {
    if (backend_ == LLMN_BACKEND_CUDA) stream_ = cuda::create_stream(device_);
}

Context::~Context() {
    if (stream_) {
        try {
            cuda::synchronize(device_, stream_);
        } catch (...) {
        }
        cuda::destroy_stream(device_, stream_);
    }
}

void Context::synchronize() const {
    if (backend_ == LLMN_BACKEND_CUDA) cuda::synchronize(device_, stream_);
}

int32_t dtype_size(llmn_dtype dtype) {
    switch (dtype) {
        case LLMN_DTYPE_F32: case LLMN_DTYPE_I32: return 4;
        case LLMN_DTYPE_F16: case LLMN_DTYPE_BF16: return 2;
        case LLMN_DTYPE_I8: case LLMN_DTYPE_U8: return 1;
    }
    return 0;
}

const char* dtype_name(int32_t dtype) {
    switch (dtype) {
        case LLMN_DTYPE_F32: return "f32";
        case LLMN_DTYPE_F16: return "f16";
        case LLMN_DTYPE_BF16: return "bf16";
        case LLMN_DTYPE_I8: return "i8";
        case LLMN_DTYPE_U8: return "u8";
        case LLMN_DTYPE_I32: return "i32";
    }
    return "unknown";
}

void check_dtype(int32_t dtype, const char* param) {
    LLMN_CHECK_ARG(dtype >= LLMN_DTYPE_F32 && dtype <= LLMN_DTYPE_I32, "%s must be a llmn_dtype (0..5), got %d", param,
                   dtype);
}

void* alloc_bytes(const Context& ctx, llmn_memory memory, size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (!ctx.is_cuda()) {
        // 64-byte alignment (the size rounded up to it): full cache lines and aligned AVX-512 loads.
        void* p = aligned_malloc(64, bytes);
        if (!p) fail(LLMN_STATUS_OUT_OF_MEMORY, "host allocation of %zu bytes failed", bytes);
        return p;
    }
    return memory == LLMN_MEMORY_HOST ? cuda::alloc_pinned(bytes) : cuda::alloc_device(ctx.device(), bytes);
}

void free_bytes(const Context& ctx, llmn_memory memory, void* p) {
    if (!p) return;
    if (!ctx.is_cuda()) aligned_free(p);
    else if (memory == LLMN_MEMORY_HOST) cuda::free_pinned(p);
    else cuda::free_device(ctx.device(), p);
}

void copy_to_device(const Context& ctx, void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    if (ctx.is_cuda()) cuda::copy_h2d(ctx.device(), ctx.stream(), dst, src, bytes);
    else std::memcpy(dst, src, bytes);
}

void copy_to_host(const Context& ctx, void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    if (ctx.is_cuda()) cuda::copy_d2h(ctx.device(), ctx.stream(), dst, src, bytes);
    else std::memcpy(dst, src, bytes);
}

Buffer::Buffer(std::shared_ptr<Context> ctx, llmn_dtype dtype, int64_t count, llmn_memory memory)
    : Object(kType), ctx_(std::move(ctx)), dtype_(dtype), count_(count), memory_(memory) {
    data_ = alloc_bytes(*ctx_, memory_, bytes());
}

Buffer::Buffer(std::shared_ptr<Context> ctx, llmn_dtype dtype, int64_t count, void* external)
    : Object(kType), ctx_(std::move(ctx)), dtype_(dtype), count_(count), memory_(LLMN_MEMORY_HOST), data_(external),
      owned_(false) {}

Buffer::~Buffer() {
    if (owned_) free_bytes(*ctx_, memory_, data_);
}

std::shared_ptr<Context> get_context(llmn_context h, const char* param) { return lookup<Context>(h, param); }

std::shared_ptr<Buffer> get_buffer(llmn_buffer h, const char* param) { return lookup<Buffer>(h, param); }

void check_buffer_for_kernel(const Buffer& b, const Context& ctx, const char* param) {
    if (b.context()->backend() != ctx.backend() || b.context()->device() != ctx.device())
        fail(LLMN_STATUS_INVALID_ARGUMENT, "%s belongs to another device (backend %d, device %d) than the context (backend %d, device %d)",
             param, b.context()->backend(), b.context()->device(), ctx.backend(), ctx.device());
    if (!b.kernel_accessible())
        fail(LLMN_STATUS_INVALID_ARGUMENT, "%s is host memory; CUDA kernels need a LLMN_MEMORY_DEVICE buffer", param);
}

void check_buffer_count(const Buffer& b, int64_t needed, const char* param, const char* shape) {
    if (b.count() < needed)
        fail(LLMN_STATUS_INVALID_ARGUMENT, "%s holds %lld elements but %s needs %lld", param, (long long)b.count(), shape,
             (long long)needed);
}

}  // namespace llmn
