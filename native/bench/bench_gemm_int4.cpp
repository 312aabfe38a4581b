// INT4 weight-only GEMM vs the dense baseline on the CPU backend, plus the streaming-read roofline.
//
// Decode-sized GEMMs are bounds on memory bandwidth, so the numbers only mean something when the
// weights come from DRAM: every benchmark rotates through enough distinct weight matrices that
// their total (>= 96 MiB) is several times the last-level cache, and reports
//   W_bytes/s  bytes of packed weight (INT4: codes + scales + zeros) or dense W consumed per second,
//   FLOP/s     2 * M * K * N per second.
// Compare W_bytes/s at small M with BM_GemmStreamRead (all threads summing a 1 GiB array, one
// sequential stream per thread): the roofline for a weight-streaming kernel. (The dense f32 M = 1
// case, 4 row streams per thread, has been seen to exceed it by ~10-20%: DRAM likes several streams.)
// *_best counters: the fastest single call / pass, for a box shared with other jobs.
//
// Args: M, shape index (kShapes), f16 (1) or f32 (0) activations, and for INT4 the inner loop
// (0 int8 dot = default, 1 exact f32). The headline set:
//   build/gemm/native/bench/llmnative_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
//     --benchmark_filter='GemmStreamRead|Int4Gemm/M:(1|16)/shape:(0|3)/f16:1/f32path:(0|1)|DenseGemm/M:(1|16)/shape:(0|3)/f16:1'
#include "core/numeric.hpp"
#include "cpu/cpu_runtime.hpp"
#include "kernels/gemm_int4/gemm_int4_cpu.hpp"

#include <benchmark/benchmark.h>
#include <llmnative/llmnative.h>

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

namespace {

struct Shape {
    int64_t k, n;
};
const Shape kShapes[] = {{4096, 4096}, {4096, 14336}, {14336, 4096}, {8192, 8192}};
constexpr int64_t kRotateBytes = int64_t(96) << 20;

llmn_context cpu_context() {
    static llmn_context ctx = [] {
        llmn_context c = nullptr;
        if (llmn_context_create(LLMN_BACKEND_CPU, 0, &c) != LLMN_STATUS_OK) std::abort();
        return c;
    }();
    return ctx;
}

[[noreturn]] void die(const char* what) {
    char buf[1024];
    int32_t len = 0;
    llmn_get_last_error(buf, sizeof(buf), &len);
    std::fprintf(stderr, "%s failed: %s\n", what, buf);
    std::abort();
}

// A set of distinct INT4 weights of one shape (GPTQ g128 symmetric, random codes), built once.
struct Int4Set {
    std::vector<llmn_int4_weight> w;
    int64_t bytes_each = 0;
};

const Int4Set& int4_set(int shape) {
    static std::map<int, Int4Set> cache;
    auto it = cache.find(shape);
    if (it != cache.end()) return it->second;
    const Shape s = kShapes[shape];
    const int32_t gs = 128;
    const int64_t G = s.k / gs;
    std::mt19937 g(1234 + shape);
    std::vector<int32_t> qweight(static_cast<size_t>(s.k / 8 * s.n));
    for (auto& v : qweight) v = int32_t(g());
    std::vector<uint16_t> scales(static_cast<size_t>(G * s.n));
    for (auto& v : scales) v = uint16_t(0x1c00 + (g() & 0x3ff));  // ~0.004 .. 0.008
    llmn_gptq_tensors t{s.k, s.n, gs, 1, LLMN_GPTQ_V2, LLMN_DTYPE_F16, qweight.data(), nullptr, scales.data(), nullptr};
    Int4Set set;
    do {
        llmn_int4_weight w = nullptr;
        if (llmn_int4_weight_import_gptq(cpu_context(), &t, &w) != LLMN_STATUS_OK) die("llmn_int4_weight_import_gptq");
        llmn_int4_weight_get_size_bytes(w, &set.bytes_each);
        set.w.push_back(w);
    } while (int64_t(set.w.size()) * set.bytes_each < kRotateBytes);
    return cache.emplace(shape, std::move(set)).first->second;
}

// A set of distinct dense W buffers of one shape and dtype (at least 2, >= 96 MiB in total).
struct DenseSet {
    std::vector<llmn_buffer> w;
    int64_t bytes_each = 0;
};

const DenseSet& dense_set(int shape, int32_t dtype) {
    static std::map<std::pair<int, int32_t>, DenseSet> cache;
    auto key = std::make_pair(shape, dtype);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    const Shape s = kShapes[shape];
    const int64_t count = s.k * s.n;
    DenseSet set;
    set.bytes_each = count * (dtype == LLMN_DTYPE_F16 ? 2 : 4);
    do {
        llmn_buffer b = nullptr;
        if (llmn_buffer_create(cpu_context(), dtype, count, LLMN_MEMORY_DEVICE, &b) != LLMN_STATUS_OK) die("llmn_buffer_create");
        void* p = nullptr;
        llmn_buffer_get_data(b, &p);
        // small random-looking values (f16 0x2000.. / f32 bits) so nothing is denormal or zero
        if (dtype == LLMN_DTYPE_F16) {
            uint16_t* h = static_cast<uint16_t*>(p);
            for (int64_t i = 0; i < count; ++i) h[i] = uint16_t(0x2000 + ((i * 2654435761u) >> 20 & 0x3ff));
        } else {
            float* f = static_cast<float*>(p);
            for (int64_t i = 0; i < count; ++i) f[i] = 0.001f * float(int((i * 2654435761u) >> 22 & 0x3ff) - 512);
        }
        set.w.push_back(b);
    } while (set.w.size() < 2 || int64_t(set.w.size()) * set.bytes_each < kRotateBytes);
    return cache.emplace(key, std::move(set)).first->second;
}

struct Act {
    llmn_buffer x = nullptr, y = nullptr;
    Act(int64_t m, int64_t k, int64_t n, int32_t dtype) {
        if (llmn_buffer_create(cpu_context(), dtype, m * k, LLMN_MEMORY_DEVICE, &x) != LLMN_STATUS_OK) die("x");
        if (llmn_buffer_create(cpu_context(), dtype, m * n, LLMN_MEMORY_DEVICE, &y) != LLMN_STATUS_OK) die("y");
        void* p = nullptr;
        llmn_buffer_get_data(x, &p);
        std::mt19937 g(7);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        for (int64_t i = 0; i < m * k; ++i) {
            float v = nd(g);
            if (dtype == LLMN_DTYPE_F16) {
                static_cast<uint16_t*>(p)[i] = llmn::f32_to_f16(v);
            } else {
                static_cast<float*>(p)[i] = v;
            }
        }
    }
    ~Act() {
        llmn_buffer_destroy(x);
        llmn_buffer_destroy(y);
    }
};

// Per-call timer: the dev box is shared, so besides the usual mean rates every benchmark also reports
// the rate of its fastest single call (*_best), the estimate of what the kernel does uncontended.
struct BestTimer {
    double best = 1e30;
    std::chrono::steady_clock::time_point t0;
    void start() { t0 = std::chrono::steady_clock::now(); }
    void stop() { best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()); }
};

void set_counters(benchmark::State& st, int64_t m, const Shape& s, int64_t wbytes, const BestTimer& bt) {
    const double it = double(st.iterations());
    const double flop = 2.0 * double(m) * double(s.k) * double(s.n);
    st.counters["W_bytes/s"] = benchmark::Counter(double(wbytes) * it, benchmark::Counter::kIsRate);
    st.counters["FLOP/s"] = benchmark::Counter(flop * it, benchmark::Counter::kIsRate);
    st.counters["W_bytes/s_best"] = double(wbytes) / bt.best;
    st.counters["FLOP/s_best"] = flop / bt.best;
}

void BM_Int4Gemm(benchmark::State& st) {
    const int64_t m = st.range(0);
    const int shape = int(st.range(1));
    const int32_t dtype = st.range(2) ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32;
    llmn::int4cpu::set_compute_mode(st.range(3) ? llmn::int4cpu::Compute::F32 : llmn::int4cpu::Compute::Int8);
    const Shape s = kShapes[shape];
    const Int4Set& set = int4_set(shape);
    Act a(m, s.k, s.n, dtype);
    size_t i = 0;
    BestTimer bt;
    for (auto _ : st) {
        bt.start();
        if (llmn_gemm_int4(cpu_context(), a.x, set.w[i++ % set.w.size()], nullptr, a.y, m) != LLMN_STATUS_OK)
            die("llmn_gemm_int4");
        bt.stop();
    }
    set_counters(st, m, s, set.bytes_each, bt);
    st.counters["rotating"] = double(set.w.size());
    llmn::int4cpu::set_compute_mode(llmn::int4cpu::Compute::Int8);
}

void BM_DenseGemm(benchmark::State& st) {
    const int64_t m = st.range(0);
    const int shape = int(st.range(1));
    const int32_t dtype = st.range(2) ? LLMN_DTYPE_F16 : LLMN_DTYPE_F32;
    const Shape s = kShapes[shape];
    const DenseSet& set = dense_set(shape, dtype);
    Act a(m, s.k, s.n, dtype);
    size_t i = 0;
    BestTimer bt;
    for (auto _ : st) {
        bt.start();
        if (llmn_gemm_dense(cpu_context(), a.x, set.w[i++ % set.w.size()], nullptr, a.y, m, s.k, s.n) != LLMN_STATUS_OK)
            die("llmn_gemm_dense");
        bt.stop();
    }
    set_counters(st, m, s, set.bytes_each, bt);
    st.counters["rotating"] = double(set.w.size());
}

// Compute ceiling of the INT4 kernel: one small weight (K 4096, N 256 x threads: 512 KiB per core,
// L2/L3-resident) used over and over, so memory bandwidth does not limit it.
void BM_Int4GemmHot(benchmark::State& st) {
    const int64_t m = st.range(0);
    llmn::int4cpu::set_compute_mode(st.range(1) ? llmn::int4cpu::Compute::F32 : llmn::int4cpu::Compute::Int8);
    const Shape s{4096, 256 * int64_t(llmn::cpu::thread_count())};
    std::vector<int32_t> qweight(static_cast<size_t>(s.k / 8 * s.n), 0x12345678);
    std::vector<uint16_t> scales(static_cast<size_t>(s.k / 128 * s.n), 0x2000);
    llmn_gptq_tensors t{s.k, s.n, 128, 1, LLMN_GPTQ_V2, LLMN_DTYPE_F16, qweight.data(), nullptr, scales.data(), nullptr};
    llmn_int4_weight w = nullptr;
    if (llmn_int4_weight_import_gptq(cpu_context(), &t, &w) != LLMN_STATUS_OK) die("llmn_int4_weight_import_gptq");
    int64_t bytes = 0;
    llmn_int4_weight_get_size_bytes(w, &bytes);
    Act a(m, s.k, s.n, LLMN_DTYPE_F16);
    BestTimer bt;
    for (auto _ : st) {
        bt.start();
        if (llmn_gemm_int4(cpu_context(), a.x, w, nullptr, a.y, m) != LLMN_STATUS_OK) die("llmn_gemm_int4");
        bt.stop();
    }
    set_counters(st, m, s, bytes, bt);
    llmn_int4_weight_destroy(w);
    llmn::int4cpu::set_compute_mode(llmn::int4cpu::Compute::Int8);
}

// The roofline: every pool thread sums its contiguous share of a 1 GiB array with 256-bit loads
// (4 independent accumulators), one parallel_for per pass; _best is the fastest pass.
#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t sum_range(const uint64_t* p, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), a0);
    uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < n; ++i) s += p[i];
    return s;
}
#else
uint64_t sum_range(const uint64_t* p, int64_t n) {
    uint64_t s = 0;
    for (int64_t i = 0; i < n; ++i) s += p[i];
    return s;
}
#endif

void BM_GemmStreamRead(benchmark::State& st) {
    const int64_t bytes = int64_t(1) << 30;
    static uint64_t* data = [&] {
        uint64_t* d = static_cast<uint64_t*>(std::aligned_alloc(64, size_t(bytes)));
        for (int64_t i = 0; i < bytes / 8; ++i) d[i] = uint64_t(i);
        return d;
    }();
    const int threads = llmn::cpu::thread_count();
    std::vector<uint64_t> sums(static_cast<size_t>(threads) * 8);
    BestTimer bt;
    for (auto _ : st) {
        bt.start();
        llmn::cpu::parallel_for(threads, [&](int64_t t) {
            const int64_t n = bytes / 8, b = n * t / threads / 16 * 16, e = t + 1 == threads ? n : n * (t + 1) / threads / 16 * 16;
            sums[static_cast<size_t>(t) * 8] += sum_range(data + b, e - b);
        });
        bt.stop();
        benchmark::DoNotOptimize(sums.data());
    }
    st.counters["bytes/s"] = benchmark::Counter(double(bytes) * double(st.iterations()), benchmark::Counter::kIsRate);
    st.counters["bytes/s_best"] = double(bytes) / bt.best;
    st.counters["threads"] = threads;
}

void shapes_and_m(benchmark::internal::Benchmark* b, bool with_modes) {
    b->ArgNames({"M", "shape", "f16", "f32path"});
    for (int shape = 0; shape < 4; ++shape)
        for (int64_t m : {1, 4, 16, 64, 256}) b->Args({m, shape, 1, 0});
    // f32 activations, and (INT4) the exact f32 inner loop, at the two square shapes
    for (int shape : {0, 3})
        for (int64_t m : {1, 16}) {
            b->Args({m, shape, 0, 0});
            if (with_modes) b->Args({m, shape, 1, 1});
        }
    b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_GemmStreamRead)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Int4Gemm)->Apply([](benchmark::internal::Benchmark* b) { shapes_and_m(b, true); });
BENCHMARK(BM_Int4GemmHot)->ArgNames({"M", "f32path"})->ArgsProduct({{1, 4, 16, 64}, {0, 1}})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DenseGemm)->Apply([](benchmark::internal::Benchmark* b) { shapes_and_m(b, false); });
