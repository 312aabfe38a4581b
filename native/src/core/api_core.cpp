// C entry points of the backbone: versions, discovery, contexts and buffers. Kernel families keep
// their entry points beside their kernels (kernels/<name>/api.cpp); all go through guard().
#include "../cpu/cpu_runtime.hpp"
#include "../cuda/cuda_runtime.hpp"
#include "context.hpp"
#include "error.hpp"
#include "log.hpp"

#include <cstring>
#include <string>

#if defined(_WIN32)
#include "win32.hpp"
#else
#include <dlfcn.h>
#endif

#ifndef LLMNATIVE_VERSION_STRING
#define LLMNATIVE_VERSION_STRING "0.0.0-dev"
#endif

using namespace llmn;

extern "C" {

LLMN_API llmn_status llmn_get_abi_version(int32_t* abi_version) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(abi_version);
        *abi_version = LLMN_ABI_VERSION;
    });
}

LLMN_API llmn_status llmn_get_version(char* buffer, int32_t capacity, int32_t* length) {
    return guard([&] { copy_out_string(LLMNATIVE_VERSION_STRING, buffer, capacity, length); });
}

LLMN_API llmn_status llmn_get_library_path(char* buffer, int32_t capacity, int32_t* length) {
    return guard([&] {
        std::string path;
#if defined(_WIN32)
        // The module (DLL, or the executable when linked statically) holding this function, as UTF-8.
        HMODULE mod = nullptr;
        if (GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                               reinterpret_cast<LPCWSTR>(&llmn_get_library_path), &mod)) {
            std::wstring w(32768, L'\0');
            const DWORD n = GetModuleFileNameW(mod, &w[0], DWORD(w.size()));
            if (n > 0 && n < w.size()) {
                const int u = WideCharToMultiByte(CP_UTF8, 0, w.data(), int(n), nullptr, 0, nullptr, nullptr);
                if (u > 0) {
                    path.resize(size_t(u));
                    WideCharToMultiByte(CP_UTF8, 0, w.data(), int(n), &path[0], u, nullptr, nullptr);
                }
            }
        }
#else
        Dl_info info{};
        if (dladdr(reinterpret_cast<void*>(&llmn_get_library_path), &info) && info.dli_fname) path = info.dli_fname;
#endif
        copy_out_string(path, buffer, capacity, length);
    });
}

LLMN_API llmn_status llmn_debug_live_objects(int64_t* count) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(count);
        *count = live_object_count();
    });
}

LLMN_API llmn_status llmn_get_cpu_info(llmn_cpu_info* info) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(info);
        std::memset(info, 0, sizeof(*info));
        info->detected_isa = cpu::detected_isa();
        info->active_isa = cpu::active_isa();
        info->threads = cpu::thread_count();
        info->logical_cores = cpu::logical_cores();
        info->l3_cache_bytes = cpu::l3_cache_bytes();
        std::strncpy(info->model_name, cpu::model_name().c_str(), sizeof(info->model_name) - 1);
    });
}

LLMN_API llmn_status llmn_set_cpu_isa(int32_t isa) {
    return guard([&] {
        LLMN_CHECK_ARG(isa >= LLMN_CPU_ISA_SCALAR && isa <= LLMN_CPU_ISA_NEON, "isa must be a llmn_cpu_isa (0..3), got %d", isa);
        llmn_cpu_isa detected = cpu::detected_isa();
        bool ok = isa == LLMN_CPU_ISA_SCALAR || isa == detected ||
                  (detected == LLMN_CPU_ISA_AVX512 && isa == LLMN_CPU_ISA_AVX2);
        if (!ok)
            fail(LLMN_STATUS_UNSUPPORTED, "isa %d is not available on this CPU/build (detected isa %d)", isa, int(detected));
        cpu::set_active_isa(static_cast<llmn_cpu_isa>(isa));
        log(LLMN_LOG_INFO, 0, "CPU kernels now use isa %d", isa);
    });
}

LLMN_API llmn_status llmn_set_cpu_threads(int32_t threads) {
    return guard([&] {
        LLMN_CHECK_ARG(threads >= 0 && threads <= 1024, "threads must be in [0, 1024] (0 = auto), got %d", threads);
        cpu::set_thread_count(threads);
    });
}

LLMN_API llmn_status llmn_get_cuda_info(llmn_cuda_info* info) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(info);
        cuda::get_info(info);
    });
}

LLMN_API llmn_status llmn_get_cuda_device_info(int32_t device, llmn_cuda_device_info* info) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(info);
        cuda::get_device_info(device, info);
    });
}

LLMN_API llmn_status llmn_context_create(int32_t backend, int32_t device, llmn_context* context) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(context);
        *context = nullptr;
        LLMN_CHECK_ARG(backend == LLMN_BACKEND_CPU || backend == LLMN_BACKEND_CUDA,
                       "backend must be LLMN_BACKEND_CPU (0) or LLMN_BACKEND_CUDA (1), got %d", backend);
        if (backend == LLMN_BACKEND_CPU)
            LLMN_CHECK_ARG(device == 0, "device must be 0 for the CPU backend, got %d", device);
        auto ctx = std::make_shared<Context>(static_cast<llmn_backend>(backend), device);
        log(LLMN_LOG_DEBUG, ctx->id(), "context %llu created (backend %d, device %d)", (unsigned long long)ctx->id(),
            backend, device);
        *context = static_cast<llmn_context>(register_object(ctx));
    });
}

LLMN_API llmn_status llmn_context_destroy(llmn_context context) {
    return guard([&] { destroy_handle<Context>(context, "context"); });
}

LLMN_API llmn_status llmn_context_synchronize(llmn_context context) {
    return guard([&] { get_context(context)->synchronize(); });
}

LLMN_API llmn_status llmn_context_get_backend(llmn_context context, int32_t* backend, int32_t* device) {
    return guard([&] {
        auto ctx = get_context(context);
        if (backend) *backend = ctx->backend();
        if (device) *device = ctx->device();
    });
}

LLMN_API llmn_status llmn_context_get_id(llmn_context context, uint64_t* id) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(id);
        *id = get_context(context)->id();
    });
}

LLMN_API llmn_status llmn_dtype_size(int32_t dtype, int32_t* bytes) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(bytes);
        check_dtype(dtype, "dtype");
        *bytes = dtype_size(static_cast<llmn_dtype>(dtype));
    });
}

namespace {
// Largest element count accepted for a buffer: keeps byte sizes far from int64 overflow.
constexpr int64_t kMaxCount = int64_t(1) << 50;

void check_count(int64_t count, const char* param) {
    LLMN_CHECK_ARG(count >= 1 && count <= kMaxCount, "%s must be in [1, 2^50], got %lld", param, (long long)count);
}

void check_range(const Buffer& b, int64_t offset, int64_t count, const char* offset_param, const char* buffer_param) {
    LLMN_CHECK_ARG(offset >= 0, "%s must be >= 0, got %lld", offset_param, (long long)offset);
    LLMN_CHECK_ARG(count >= 0, "count must be >= 0, got %lld", (long long)count);
    if (offset > b.count() || count > b.count() - offset)
        fail(LLMN_STATUS_INVALID_ARGUMENT, "range [%lld, %lld + %lld) is outside %s of %lld elements", (long long)offset,
             (long long)offset, (long long)count, buffer_param, (long long)b.count());
}

char* at(const Buffer& b, int64_t offset) { return static_cast<char*>(b.data()) + offset * dtype_size(b.dtype()); }
}  // namespace

LLMN_API llmn_status llmn_buffer_create(llmn_context context, int32_t dtype, int64_t count, int32_t memory,
                                        llmn_buffer* buffer) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(buffer);
        *buffer = nullptr;
        auto ctx = get_context(context);
        check_dtype(dtype, "dtype");
        check_count(count, "count");
        LLMN_CHECK_ARG(memory == LLMN_MEMORY_DEVICE || memory == LLMN_MEMORY_HOST,
                       "memory must be LLMN_MEMORY_DEVICE (0) or LLMN_MEMORY_HOST (1), got %d", memory);
        auto b = std::make_shared<Buffer>(ctx, static_cast<llmn_dtype>(dtype), count, static_cast<llmn_memory>(memory));
        *buffer = static_cast<llmn_buffer>(register_object(b));
    });
}

LLMN_API llmn_status llmn_buffer_wrap_host(llmn_context context, int32_t dtype, int64_t count, void* data,
                                           llmn_buffer* buffer) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(buffer);
        *buffer = nullptr;
        auto ctx = get_context(context);
        LLMN_CHECK_ARG(!ctx->is_cuda(), "llmn_buffer_wrap_host needs a CPU context; context is CUDA device %d",
                       ctx->device());
        check_dtype(dtype, "dtype");
        check_count(count, "count");
        LLMN_CHECK_NOT_NULL(data);
        auto b = std::make_shared<Buffer>(ctx, static_cast<llmn_dtype>(dtype), count, data);
        *buffer = static_cast<llmn_buffer>(register_object(b));
    });
}

LLMN_API llmn_status llmn_buffer_destroy(llmn_buffer buffer) {
    return guard([&] { destroy_handle<Buffer>(buffer, "buffer"); });
}

LLMN_API llmn_status llmn_buffer_get_info(llmn_buffer buffer, int32_t* dtype, int64_t* count, int32_t* memory) {
    return guard([&] {
        auto b = get_buffer(buffer, "buffer");
        if (dtype) *dtype = b->dtype();
        if (count) *count = b->count();
        if (memory) *memory = b->memory();
    });
}

LLMN_API llmn_status llmn_buffer_get_data(llmn_buffer buffer, void** data) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(data);
        *data = get_buffer(buffer, "buffer")->data();
    });
}

LLMN_API llmn_status llmn_buffer_upload(llmn_buffer buffer, int64_t offset, const void* src, int64_t count) {
    return guard([&] {
        auto b = get_buffer(buffer, "buffer");
        check_range(*b, offset, count, "offset", "buffer");
        if (count == 0) return;
        LLMN_CHECK_NOT_NULL(src);
        size_t bytes = size_t(count) * dtype_size(b->dtype());
        if (b->memory() == LLMN_MEMORY_HOST) std::memcpy(at(*b, offset), src, bytes);
        else copy_to_device(*b->context(), at(*b, offset), src, bytes);
    });
}

LLMN_API llmn_status llmn_buffer_download(llmn_buffer buffer, int64_t offset, void* dst, int64_t count) {
    return guard([&] {
        auto b = get_buffer(buffer, "buffer");
        check_range(*b, offset, count, "offset", "buffer");
        if (count == 0) return;
        LLMN_CHECK_NOT_NULL(dst);
        size_t bytes = size_t(count) * dtype_size(b->dtype());
        if (b->memory() == LLMN_MEMORY_HOST) {
            b->context()->synchronize();  // pending kernels may still write host-visible memory
            std::memcpy(dst, at(*b, offset), bytes);
        } else {
            copy_to_host(*b->context(), dst, at(*b, offset), bytes);
        }
    });
}

LLMN_API llmn_status llmn_buffer_copy(llmn_buffer dst, int64_t dst_offset, llmn_buffer src, int64_t src_offset,
                                      int64_t count) {
    return guard([&] {
        auto d = get_buffer(dst, "dst");
        auto s = get_buffer(src, "src");
        if (d->dtype() != s->dtype())
            fail(LLMN_STATUS_INVALID_ARGUMENT, "dtype mismatch: dst is %s, src is %s", dtype_name(d->dtype()),
                 dtype_name(s->dtype()));
        const Context& dc = *d->context();
        const Context& sc = *s->context();
        if (dc.backend() != sc.backend() || dc.device() != sc.device())
            fail(LLMN_STATUS_INVALID_ARGUMENT,
                 "src (backend %d, device %d) and dst (backend %d, device %d) are on different devices; download and upload instead",
                 sc.backend(), sc.device(), dc.backend(), dc.device());
        check_range(*d, dst_offset, count, "dst_offset", "dst");
        check_range(*s, src_offset, count, "src_offset", "src");
        if (count == 0) return;
        size_t bytes = size_t(count) * dtype_size(d->dtype());
        if (!dc.is_cuda()) {
            std::memmove(at(*d, dst_offset), at(*s, src_offset), bytes);
        } else {
            if (&sc != &dc) sc.synchronize();  // src's producer runs on another stream
            cuda::copy_d2d(dc.device(), dc.stream(), at(*d, dst_offset), at(*s, src_offset), bytes);
        }
    });
}

LLMN_API llmn_status llmn_buffer_fill(llmn_buffer buffer, int64_t offset, int64_t count, const void* value) {
    return guard([&] {
        auto b = get_buffer(buffer, "buffer");
        check_range(*b, offset, count, "offset", "buffer");
        LLMN_CHECK_NOT_NULL(value);
        if (count == 0) return;
        int32_t es = dtype_size(b->dtype());
        const Context& c = *b->context();
        if (!c.is_cuda() || b->memory() == LLMN_MEMORY_HOST) {
            if (c.is_cuda()) c.synchronize();
            char* p = at(*b, offset);
            for (int64_t i = 0; i < count; ++i) std::memcpy(p + i * es, value, es);
        } else {
            cuda::fill(c.device(), c.stream(), at(*b, offset), value, es, count);
        }
    });
}

}  // extern "C"
