// Context (backend + device + stream) and Buffer (typed memory of one context). Kernels receive
// these already validated by the API layer; a Buffer holds a shared_ptr to its Context so the
// context outlives every buffer made from it, whatever order the caller destroys them in.
#pragma once
#include "object.hpp"

#include <llmnative/llmnative.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace llmn {

class Context : public Object {
public:
    static constexpr ObjectType kType = ObjectType::Context;
    Context(llmn_backend backend, int32_t device);
    ~Context() override;

    llmn_backend backend() const { return backend_; }
    int32_t device() const { return device_; }
    uint64_t id() const { return id_; }
    void* stream() const { return stream_; }  // cudaStream_t on CUDA, null on CPU
    bool is_cuda() const { return backend_ == LLMN_BACKEND_CUDA; }
    void synchronize() const;

private:
    llmn_backend backend_;
    int32_t device_;
    uint64_t id_;
    void* stream_ = nullptr;
};

int32_t dtype_size(llmn_dtype dtype);
const char* dtype_name(int32_t dtype);
void check_dtype(int32_t dtype, const char* param);

class Buffer : public Object {
public:
    static constexpr ObjectType kType = ObjectType::Buffer;
    Buffer(std::shared_ptr<Context> ctx, llmn_dtype dtype, int64_t count, llmn_memory memory);
    Buffer(std::shared_ptr<Context> ctx, llmn_dtype dtype, int64_t count, void* external_host_data);
    ~Buffer() override;

    const std::shared_ptr<Context>& context() const { return ctx_; }
    llmn_dtype dtype() const { return dtype_; }
    int64_t count() const { return count_; }
    llmn_memory memory() const { return memory_; }
    size_t bytes() const { return static_cast<size_t>(count_) * dtype_size(dtype_); }
    void* data() const { return data_; }
    template <class T> T* as() const { return static_cast<T*>(data_); }
    // True when kernels of the context can read it directly (device memory, or any host memory on CPU).
    bool kernel_accessible() const { return !ctx_->is_cuda() || memory_ == LLMN_MEMORY_DEVICE; }

private:
    std::shared_ptr<Context> ctx_;
    llmn_dtype dtype_;
    int64_t count_;
    llmn_memory memory_;
    void* data_ = nullptr;
    bool owned_ = true;
};

// Validation helpers for kernel entry points: each names the parameter and the offending value.
std::shared_ptr<Context> get_context(llmn_context h, const char* param = "context");
std::shared_ptr<Buffer> get_buffer(llmn_buffer h, const char* param);
// The buffer must belong to ctx's device and be usable by its kernels, with the given dtype set.
void check_buffer_for_kernel(const Buffer& b, const Context& ctx, const char* param);
void check_buffer_count(const Buffer& b, int64_t needed, const char* param, const char* shape);

// Host/device memory helpers routed to the right backend.
void* alloc_bytes(const Context& ctx, llmn_memory memory, size_t bytes);
void free_bytes(const Context& ctx, llmn_memory memory, void* p);
void copy_to_device(const Context& ctx, void* dst_device, const void* src_host, size_t bytes);
void copy_to_host(const Context& ctx, void* dst_host, const void* src_device, size_t bytes);

}  // namespace llmn
