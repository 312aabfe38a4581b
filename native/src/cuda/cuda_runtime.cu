// CUDA runtime surface (see cuda_runtime.hpp). The runtime is linked statically, so this file is
// also what runs on machines with no driver: every entry checks availability first and reports why.
#include "cuda_runtime.hpp"

#include "../core/error.hpp"
#include "../core/log.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>

namespace llmn::cuda {

namespace {

void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        cudaGetLastError();  // clear the sticky-free error state
        fail(err == cudaErrorMemoryAllocation ? LLMN_STATUS_OUT_OF_MEMORY : LLMN_STATUS_BACKEND_ERROR,
             "CUDA error in %s: %s (%s, code %d)", what, cudaGetErrorString(err), cudaGetErrorName(err), int(err));
    }
}

struct Probe {
    llmn_cuda_info info{};
};

const Probe& probe() {
    static const Probe p = [] {
        Probe r;
        r.info.compiled = 1;
        int rt = 0;
        cudaRuntimeGetVersion(&rt);
        r.info.runtime_version = rt;
        int drv = 0;
        cudaDriverGetVersion(&drv);
        r.info.driver_version = drv;
        int count = 0;
        cudaError_t err = cudaGetDeviceCount(&count);
        std::string reason;
        if (err != cudaSuccess) {
            cudaGetLastError();
            if (err == cudaErrorNoDevice)
                reason = "no CUDA device found";
            else if (err == cudaErrorInsufficientDriver && drv == 0)
                reason = "no NVIDIA driver found (libcuda.so could not be loaded)";
            else if (err == cudaErrorInsufficientDriver)
                reason = format("the NVIDIA driver (CUDA %d.%d) is older than this build's CUDA runtime %d.%d; update the driver",
                                drv / 1000, (drv % 1000) / 10, rt / 1000, (rt % 1000) / 10);
            else
                reason = format("cudaGetDeviceCount failed: %s (%s, code %d)", cudaGetErrorString(err), cudaGetErrorName(err), int(err));
            count = 0;
        } else if (count == 0) {
            reason = "no CUDA device found";
        }
        r.info.device_count = count;
        r.info.available = count > 0 ? 1 : 0;
        std::strncpy(r.info.unavailable_reason, reason.c_str(), sizeof(r.info.unavailable_reason) - 1);
        if (!r.info.available)
            log(LLMN_LOG_INFO, 0, "CUDA backend unavailable, using the CPU backend: %s", reason.c_str());
        else
            log(LLMN_LOG_INFO, 0, "CUDA backend: %d device(s), driver %d, runtime %d", count, drv, rt);
        return r;
    }();
    return p;
}

void require_device(int32_t device) {
    const Probe& p = probe();
    if (!p.info.available) fail(LLMN_STATUS_UNSUPPORTED, "CUDA is unavailable: %s", p.info.unavailable_reason);
    if (device < 0 || device >= p.info.device_count)
        fail(LLMN_STATUS_INVALID_ARGUMENT, "device must be in [0, %d) (got %d)", p.info.device_count, device);
    check(cudaSetDevice(device), "cudaSetDevice");
}

}  // namespace

bool compiled() { return true; }

void get_info(llmn_cuda_info* info) { *info = probe().info; }

void get_device_info(int32_t device, llmn_cuda_device_info* info) {
    require_device(device);
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    std::memset(info, 0, sizeof(*info));
    info->index = device;
    info->compute_major = prop.major;
    info->compute_minor = prop.minor;
    info->sm_count = prop.multiProcessorCount;
    info->total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) info->free_memory_bytes = static_cast<int64_t>(free_b);
    else cudaGetLastError();
    info->l2_cache_bytes = prop.l2CacheSize;
    info->memory_bus_width_bits = prop.memoryBusWidth;
    int clock = 0;
    if (cudaDeviceGetAttribute(&clock, cudaDevAttrMemoryClockRate, device) == cudaSuccess) info->memory_clock_khz = clock;
    else cudaGetLastError();
    std::strncpy(info->name, prop.name, sizeof(info->name) - 1);
}

int32_t sm_count(int32_t device) {
    require_device(device);
    int v = 0;
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    return v;
}

void* create_stream(int32_t device) {
    require_device(device);
    cudaStream_t s = nullptr;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    return s;
}

void destroy_stream(int32_t device, void* stream) {
    if (!stream) return;
    cudaSetDevice(device);
    cudaStreamDestroy(static_cast<cudaStream_t>(stream));
    cudaGetLastError();
}

void synchronize(int32_t device, void* stream) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

void* alloc_device(int32_t device, size_t bytes) {
    require_device(device);
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "cudaMalloc");
    return p;
}

void free_device(int32_t device, void* p) {
    if (!p) return;
    cudaSetDevice(device);
    cudaFree(p);
    cudaGetLastError();
}

void* alloc_pinned(size_t bytes) {
    void* p = nullptr;
    check(cudaMallocHost(&p, bytes), "cudaMallocHost");
    return p;
}

void free_pinned(void* p) {
    if (p) cudaFreeHost(p);
    cudaGetLastError();
}

void copy_h2d(int32_t device, void* stream, void* dst, const void* src, size_t bytes) {
    check(cudaSetDevice(device), "cudaSetDevice");
    auto s = static_cast<cudaStream_t>(stream);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync(host to device)");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");  // src may be reused when we return
}

void copy_d2h(int32_t device, void* stream, void* dst, const void* src, size_t bytes) {
    check(cudaSetDevice(device), "cudaSetDevice");
    auto s = static_cast<cudaStream_t>(stream);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync(device to host)");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

void copy_d2d(int32_t device, void* stream, void* dst, const void* src, size_t bytes) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)),
          "cudaMemcpyAsync(device to device)");
}

void copy_d2d_rows(int32_t device, void* stream, void* dst, const void* src, size_t pitch, size_t width, size_t rows) {
    check(cudaSetDevice(device), "cudaSetDevice");
    auto s = static_cast<cudaStream_t>(stream);
    int max_pitch = 0;
    check(cudaDeviceGetAttribute(&max_pitch, cudaDevAttrMaxPitch, device), "cudaDeviceGetAttribute(MaxPitch)");
    if (rows > 1 && pitch <= size_t(max_pitch)) {
        check(cudaMemcpy2DAsync(dst, pitch, src, pitch, width, rows, cudaMemcpyDefault, s), "cudaMemcpy2DAsync(device to device)");
        return;
    }
    for (size_t i = 0; i < rows; ++i)
        check(cudaMemcpyAsync(static_cast<char*>(dst) + i * pitch, static_cast<const char*>(src) + i * pitch, width,
                              cudaMemcpyDefault, s),
              "cudaMemcpyAsync(device to device)");
}

namespace {
template <class T>
__global__ void fill_kernel(T* dst, T value, int64_t count) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = value;
}
}  // namespace

void fill(int32_t device, void* stream, void* dst, const void* value, int32_t elem_size, int64_t count) {
    check(cudaSetDevice(device), "cudaSetDevice");
    auto s = static_cast<cudaStream_t>(stream);
    if (count <= 0) return;
    int blocks = static_cast<int>(std::min<int64_t>((count + 255) / 256, 65535));
    switch (elem_size) {
        case 1: fill_kernel<<<blocks, 256, 0, s>>>(static_cast<uint8_t*>(dst), *static_cast<const uint8_t*>(value), count); break;
        case 2: fill_kernel<<<blocks, 256, 0, s>>>(static_cast<uint16_t*>(dst), *static_cast<const uint16_t*>(value), count); break;
        case 4: fill_kernel<<<blocks, 256, 0, s>>>(static_cast<uint32_t*>(dst), *static_cast<const uint32_t*>(value), count); break;
        default: fail(LLMN_STATUS_INTERNAL, "fill: unsupported element size %d", elem_size);
    }
    check(cudaGetLastError(), "fill kernel launch");
}

}  // namespace llmn::cuda
