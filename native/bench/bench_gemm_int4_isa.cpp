// INT4 GEMM per CPU ISA in one run: the AVX2 and AVX-512 kernels (VNNI or not) on the same data,
// so their difference is not hidden by the run-to-run noise of a shared box. Same data and
// counters as bench_gemm_int4.cpp (GPTQ g128 symmetric weights rotated through >= 96 MiB, f16
// activations; W_bytes/s to compare with BM_GemmStreamRead, *_best = fastest single call).
// Args: M, shape (4096x4096, 4096x14336, 14336x4096, 8192x8192), isa (1 AVX2, 2 AVX-512), inner
// loop (0 int8 dot, 1 exact f32), vnni (Int8 only: 1 vpdpbusd — AVX512-VNNI, or AVX-VNNI on AVX2 —, 0
// vpmaddubsw). Cases the CPU
// cannot run are skipped. Example:
//   build/g512/native/bench/llmnative_bench --benchmark_filter='GemmStreamRead|Int4GemmIsa/M:(1|16)/shape:0/'
#include "cpu/cpu_runtime.hpp"
#include "kernels/gemm_int4/gemm_int4_cpu.hpp"

#include <benchmark/benchmark.h>
#include <llmnative/llmnative.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <vector>

namespace {

struct IsaShape {
    int64_t k, n;
};
const IsaShape kIsaShapes[] = {{4096, 4096}, {4096, 14336}, {14336, 4096}, {8192, 8192}};
constexpr int64_t kIsaRotateBytes = int64_t(96) << 20;

llmn_context isa_context() {
    static llmn_context ctx = [] {
        llmn_context c = nullptr;
        if (llmn_context_create(LLMN_BACKEND_CPU, 0, &c) != LLMN_STATUS_OK) std::abort();
        return c;
    }();
    return ctx;
}

[[noreturn]] void isa_die(const char* what) {
    char buf[1024];
    int32_t len = 0;
    llmn_get_last_error(buf, sizeof(buf), &len);
    std::fprintf(stderr, "%s failed: %s\n", what, buf);
    std::abort();
}

// Distinct weights of one shape, >= 96 MiB in total (so they come from DRAM), built once.
const std::vector<llmn_int4_weight>& isa_weights(int shape, int64_t* bytes_each) {
    static std::map<int, std::pair<std::vector<llmn_int4_weight>, int64_t>> cache;
    auto it = cache.find(shape);
    if (it == cache.end()) {
        const IsaShape s = kIsaShapes[shape];
        const int32_t gs = 128;
        std::mt19937 g(1234 + shape);
        std::vector<int32_t> qweight(static_cast<size_t>(s.k / 8 * s.n));
        for (auto& v : qweight) v = int32_t(g());
        std::vector<uint16_t> scales(static_cast<size_t>(s.k / gs * s.n));
        for (auto& v : scales) v = uint16_t(0x1c00 + (g() & 0x3ff));
        llmn_gptq_tensors t{s.k, s.n, gs, 1, LLMN_GPTQ_V2, LLMN_DTYPE_F16, qweight.data(), nullptr, scales.data(), nullptr};
        std::vector<llmn_int4_weight> ws;
        int64_t each = 0;
        do {
            llmn_int4_weight w = nullptr;
            if (llmn_int4_weight_import_gptq(isa_context(), &t, &w) != LLMN_STATUS_OK) isa_die("import_gptq");
            llmn_int4_weight_get_size_bytes(w, &each);
            ws.push_back(w);
        } while (int64_t(ws.size()) * each < kIsaRotateBytes);
        it = cache.emplace(shape, std::make_pair(std::move(ws), each)).first;
    }
    *bytes_each = it->second.second;
    return it->second.first;
}

// vnni: 1 = the ISA's vpdpbusd loop (AVX512-VNNI, or AVX-VNNI for AVX2), 0 = forced vpmaddubsw.
bool use_vnni(benchmark::State& st, int32_t isa, bool vnni) {
#if defined(__x86_64__)
    const bool has = isa == LLMN_CPU_ISA_AVX512 ? llmn::cpu::avx512_vnni() : llmn::cpu::avx_vnni();
    if (vnni && !has) {
        st.SkipWithError(isa == LLMN_CPU_ISA_AVX512 ? "no AVX512-VNNI" : "no AVX-VNNI");
        return false;
    }
    llmn::cpu::set_avx512_vnni(vnni);
    llmn::cpu::set_avx_vnni(vnni);
    return true;
#else
    (void)isa;
    if (vnni) st.SkipWithError("no VNNI");
    return !vnni;
#endif
}
void restore_vnni() {
#if defined(__x86_64__)
    llmn::cpu::set_avx512_vnni(true);
    llmn::cpu::set_avx_vnni(true);
#endif
}

void BM_Int4GemmIsa(benchmark::State& st) {
    const int64_t m = st.range(0);
    const int shape = int(st.range(1));
    const int32_t isa = int32_t(st.range(2));
    const bool f32path = st.range(3) != 0, vnni = st.range(4) != 0;
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    if (isa > info.detected_isa) {
        st.SkipWithError("ISA not available on this CPU");
        return;
    }
    if (!use_vnni(st, isa, vnni)) return;
    if (llmn_set_cpu_isa(isa) != LLMN_STATUS_OK) isa_die("llmn_set_cpu_isa");
    llmn::int4cpu::set_compute_mode(f32path ? llmn::int4cpu::Compute::F32 : llmn::int4cpu::Compute::Int8);
    const IsaShape s = kIsaShapes[shape];
    int64_t wbytes = 0;
    const std::vector<llmn_int4_weight>& ws = isa_weights(shape, &wbytes);
    llmn_buffer x = nullptr, y = nullptr;
    if (llmn_buffer_create(isa_context(), LLMN_DTYPE_F16, m * s.k, LLMN_MEMORY_DEVICE, &x) != LLMN_STATUS_OK) isa_die("x");
    if (llmn_buffer_create(isa_context(), LLMN_DTYPE_F16, m * s.n, LLMN_MEMORY_DEVICE, &y) != LLMN_STATUS_OK) isa_die("y");
    {
        std::vector<uint16_t> xv(static_cast<size_t>(m * s.k));
        std::mt19937 g(7);
        for (auto& v : xv) v = uint16_t(0x3000 + (g() & 0x3ff) + ((g() & 1) << 15));  // +-0.125 .. 0.25
        llmn_buffer_upload(x, 0, xv.data(), m * s.k);
    }
    size_t i = 0;
    double best = 1e30;
    for (auto _ : st) {
        const auto t0 = std::chrono::steady_clock::now();
        if (llmn_gemm_int4(isa_context(), x, ws[i++ % ws.size()], nullptr, y, m) != LLMN_STATUS_OK) isa_die("gemm");
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const double it = double(st.iterations()), flop = 2.0 * double(m) * double(s.k) * double(s.n);
    st.counters["W_bytes/s"] = benchmark::Counter(double(wbytes) * it, benchmark::Counter::kIsRate);
    st.counters["FLOP/s"] = benchmark::Counter(flop * it, benchmark::Counter::kIsRate);
    st.counters["W_bytes/s_best"] = double(wbytes) / best;
    st.counters["FLOP/s_best"] = flop / best;
    llmn_buffer_destroy(x);
    llmn_buffer_destroy(y);
    llmn_set_cpu_isa(info.detected_isa);
    llmn::int4cpu::set_compute_mode(llmn::int4cpu::Compute::Int8);
    restore_vnni();
}

// Compute ceiling per ISA: one small weight (K 4096, N 256 x threads, about 512 KiB per thread,
// cache resident) used over and over, so memory bandwidth does not limit it. W_bytes/s at M = 1 says
// how fast the kernel could consume weights: it must be well above the streaming read.
void BM_Int4GemmIsaHot(benchmark::State& st) {
    const int64_t m = st.range(0);
    const int32_t isa = int32_t(st.range(1));
    const bool vnni = st.range(2) != 0;
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    if (isa > info.detected_isa) {
        st.SkipWithError("ISA not available on this CPU");
        return;
    }
    if (!use_vnni(st, isa, vnni)) return;
    if (llmn_set_cpu_isa(isa) != LLMN_STATUS_OK) isa_die("llmn_set_cpu_isa");
    const int64_t K = 4096, N = 256 * int64_t(llmn::cpu::thread_count());
    std::vector<int32_t> qweight(static_cast<size_t>(K / 8 * N));
    std::mt19937 g(99);
    for (auto& v : qweight) v = int32_t(g());
    std::vector<uint16_t> scales(static_cast<size_t>(K / 128 * N), 0x2000);
    llmn_gptq_tensors t{K, N, 128, 1, LLMN_GPTQ_V2, LLMN_DTYPE_F16, qweight.data(), nullptr, scales.data(), nullptr};
    llmn_int4_weight w = nullptr;
    if (llmn_int4_weight_import_gptq(isa_context(), &t, &w) != LLMN_STATUS_OK) isa_die("import_gptq");
    int64_t wbytes = 0;
    llmn_int4_weight_get_size_bytes(w, &wbytes);
    llmn_buffer x = nullptr, y = nullptr;
    if (llmn_buffer_create(isa_context(), LLMN_DTYPE_F16, m * K, LLMN_MEMORY_DEVICE, &x) != LLMN_STATUS_OK) isa_die("x");
    if (llmn_buffer_create(isa_context(), LLMN_DTYPE_F16, m * N, LLMN_MEMORY_DEVICE, &y) != LLMN_STATUS_OK) isa_die("y");
    {
        std::vector<uint16_t> xv(static_cast<size_t>(m * K));
        for (auto& v : xv) v = uint16_t(0x3000 + (g() & 0x3ff) + ((g() & 1) << 15));
        llmn_buffer_upload(x, 0, xv.data(), m * K);
    }
    double best = 1e30;
    for (auto _ : st) {
        const auto t0 = std::chrono::steady_clock::now();
        if (llmn_gemm_int4(isa_context(), x, w, nullptr, y, m) != LLMN_STATUS_OK) isa_die("gemm");
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const double it = double(st.iterations()), flop = 2.0 * double(m) * double(K) * double(N);
    st.counters["W_bytes/s"] = benchmark::Counter(double(wbytes) * it, benchmark::Counter::kIsRate);
    st.counters["W_bytes/s_best"] = double(wbytes) / best;
    st.counters["FLOP/s_best"] = flop / best;
    llmn_buffer_destroy(x);
    llmn_buffer_destroy(y);
    llmn_int4_weight_destroy(w);
    llmn_set_cpu_isa(info.detected_isa);
    restore_vnni();
}

void isa_args(benchmark::internal::Benchmark* b) {
    b->ArgNames({"M", "shape", "isa", "f32path", "vnni"});
    for (int shape = 0; shape < 4; ++shape)
        for (int64_t m : {1, 4, 16, 64})
            for (int64_t f32 : {0, 1}) {
                if (f32 && shape != 0) continue;
                b->Args({m, shape, LLMN_CPU_ISA_AVX2, f32, 0});
                if (!f32) b->Args({m, shape, LLMN_CPU_ISA_AVX2, 0, 1});
                b->Args({m, shape, LLMN_CPU_ISA_AVX512, f32, f32 ? 0 : 1});
                if (!f32) b->Args({m, shape, LLMN_CPU_ISA_AVX512, 0, 0});
            }
    b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_Int4GemmIsa)->Apply(isa_args);
BENCHMARK(BM_Int4GemmIsaHot)
    ->ArgNames({"M", "isa", "vnni"})
    ->Args({1, LLMN_CPU_ISA_AVX2, 0})->Args({1, LLMN_CPU_ISA_AVX2, 1})
    ->Args({1, LLMN_CPU_ISA_AVX512, 1})->Args({1, LLMN_CPU_ISA_AVX512, 0})
    ->Args({16, LLMN_CPU_ISA_AVX2, 0})->Args({16, LLMN_CPU_ISA_AVX2, 1})
    ->Args({16, LLMN_CPU_ISA_AVX512, 1})->Args({16, LLMN_CPU_ISA_AVX512, 0})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
