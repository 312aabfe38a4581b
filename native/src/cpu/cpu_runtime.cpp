#include "cpu_runtime.hpp"

#include "../core/log.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif
#if defined(_WIN32)
#include "../core/win32.hpp"
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#define LLMN_X86 1
#endif

namespace llmn::cpu {

namespace {

#if LLMN_X86
uint64_t xgetbv0() {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
}
#endif

llmn_cpu_isa detect() {
#if LLMN_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return LLMN_CPU_ISA_SCALAR;
    bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
    if (!osxsave || !avx) return LLMN_CPU_ISA_SCALAR;
    uint64_t xcr0 = xgetbv0();
    bool ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return LLMN_CPU_ISA_SCALAR;
    bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    if (!(ymm && avx2 && fma && f16c)) return LLMN_CPU_ISA_SCALAR;
    // x86-64 builds compile every *_avx512.cpp (cmake/LlmNativeSources.cmake); their kernels need
    // F + BW + VL + DQ (the flags those files get).
    const bool avx512dq = b & (1u << 17);
    if (zmm && avx512f && avx512bw && avx512vl && avx512dq) return LLMN_CPU_ISA_AVX512;
    return LLMN_CPU_ISA_AVX2;
#elif defined(__aarch64__)
    return LLMN_CPU_ISA_NEON;
#else
    return LLMN_CPU_ISA_SCALAR;
#endif
}

std::atomic<int> g_active_isa{-1};

// Bounded spin before a pool thread sleeps on a condition variable (workers waiting for the next
// job, the caller waiting for the last item). Decode-time calls are 0.1-2 ms long and come back to
// back, and a futex wake-up costs tens of microseconds on a VM; but on a shared 2-core box an
// unbounded spin would take a core from whoever does the real work, hence the bound.
// LLMNATIVE_SPIN_US overrides it (0: sleep at once, the old behaviour).
std::chrono::microseconds spin_bound() {
    static const std::chrono::microseconds v = [] {
        if (const char* env = std::getenv("LLMNATIVE_SPIN_US")) {
            const int n = std::atoi(env);
            if (n >= 0 && n <= 100000) return std::chrono::microseconds(n);
            log(LLMN_LOG_WARNING, 0, "ignoring LLMNATIVE_SPIN_US=%s (expected 0..100000)", env);
        }
        return std::chrono::microseconds(100);
    }();
    return v;
}

// Spinning only pays while no other process wants the cores: on an oversubscribed machine the
// spinner takes the core that the thread it waits for needs (measured on the shared 2-core box at
// load ~6: 1 x 256 attention 61 us without spinning, 128 us with a 100 us spin-then-yield). So spin
// only while the number of running tasks (/proc/loadavg, 4th field; our own running threads
// included) is at most the core count, re-read at most every 100 ms. Not the load average: our own
// busy threads would raise it to the core count and switch spinning off.
bool machine_has_idle_cores() {
#if defined(__linux__)
    static std::atomic<int64_t> next_check_ns{0};
    static std::atomic<bool> idle{true};
    const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::steady_clock::now().time_since_epoch()).count();
    if (now >= next_check_ns.load(std::memory_order_relaxed)) {
        next_check_ns.store(now + 100000000, std::memory_order_relaxed);
        static const int cores = logical_cores();
        if (FILE* f = std::fopen("/proc/loadavg", "r")) {
            double l1, l5, l15;
            int running = 0, total = 0;
            if (std::fscanf(f, "%lf %lf %lf %d/%d", &l1, &l5, &l15, &running, &total) == 5)
                idle.store(running <= cores, std::memory_order_relaxed);
            std::fclose(f);
        }
    }
    return idle.load(std::memory_order_relaxed);
#else
    return true;
#endif
}

inline void cpu_relax() {
#if LLMN_X86
    _mm_pause();
#endif
}

class ThreadPool {
public:
    explicit ThreadPool(int threads) { start(threads); }
    ~ThreadPool() { stop(); }

    int size() const { return static_cast<int>(workers_.size()) + 1; }

    void resize(int threads) {
        std::lock_guard<std::mutex> call_lock(call_mutex_);
        stop();
        start(threads);
    }

    void run(int64_t n, const std::function<void(int64_t)>& fn) {
        if (n <= 0) return;
        if (t_in_pool || n == 1 || workers_.empty()) {  // nested or trivial: inline
            for (int64_t i = 0; i < n; ++i) fn(i);
            return;
        }
        std::lock_guard<std::mutex> call_lock(call_mutex_);  // one parallel region at a time
        job_ = &fn;
        job_n_ = n;
        next_.store(0, std::memory_order_relaxed);
        error_ = nullptr;
        pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
        {
            // Under the mutex: a worker about to sleep re-checks generation_ under it (no lost wake-up).
            std::lock_guard<std::mutex> lock(mutex_);
            generation_.fetch_add(1, std::memory_order_release);
            if (sleepers_ > 0) cv_.notify_all();
        }
        work();
        if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
            std::unique_lock<std::mutex> lock(mutex_);
            done_cv_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
        }
        job_ = nullptr;
        if (error_) std::rethrow_exception(error_);
    }

private:
    template <class Pred>
    static bool spin_until(Pred pred) {
        const auto bound = spin_bound();
        if (bound.count() == 0 || !machine_has_idle_cores()) return pred();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 1;; ++i) {
            if (pred()) return true;
            // pause for the first few microseconds, then yield: on an oversubscribed machine the
            // thread we wait for may need this core
            if (i < 1024) cpu_relax();
            else std::this_thread::yield();
            if ((i & 15) == 0 && std::chrono::steady_clock::now() - t0 > bound) return pred();
        }
    }
    void start(int threads) {
        stopping_.store(false);
        // The generation a new worker has "seen" is fixed here, not when its thread gets to run:
        // a run() posted before that would otherwise be skipped and never complete.
        const uint64_t g0 = generation_.load();
        for (int i = 1; i < threads; ++i) workers_.emplace_back([this, g0] { loop(g0); });
    }
    void stop() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_.store(true);
        }
        cv_.notify_all();
        for (auto& w : workers_) w.join();
        workers_.clear();
    }
    void work() {
        bool was = t_in_pool;
        t_in_pool = true;
        for (;;) {
            int64_t i = next_.fetch_add(1);
            if (i >= job_n_) break;
            try {
                (*job_)(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex_);
                if (!error_) error_ = std::current_exception();
            }
        }
        t_in_pool = was;
    }
    void loop(uint64_t seen) {
        for (;;) {
            auto changed = [&] { return stopping_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen; };
            if (!spin_until(changed)) {
                std::unique_lock<std::mutex> lock(mutex_);
                ++sleepers_;
                cv_.wait(lock, changed);
                --sleepers_;
            }
            if (stopping_.load(std::memory_order_acquire)) return;
            seen = generation_.load(std::memory_order_acquire);
            work();
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lock(mutex_);  // the caller may be asleep in done_cv_
                done_cv_.notify_one();
            }
        }
    }

    static thread_local bool t_in_pool;
    std::vector<std::thread> workers_;
    std::mutex call_mutex_, mutex_;
    std::condition_variable cv_, done_cv_;
    const std::function<void(int64_t)>* job_ = nullptr;
    int64_t job_n_ = 0;
    std::atomic<int64_t> next_{0};
    std::atomic<int> pending_{0};
    std::atomic<uint64_t> generation_{0};
    std::atomic<bool> stopping_{false};
    int sleepers_ = 0;  // guarded by mutex_
    std::exception_ptr error_;
};

thread_local bool ThreadPool::t_in_pool = false;

int default_threads() {
    if (const char* env = std::getenv("LLMNATIVE_NUM_THREADS")) {
        int n = std::atoi(env);
        if (n > 0 && n <= 1024) return n;
        log(LLMN_LOG_WARNING, 0, "ignoring LLMNATIVE_NUM_THREADS=%s (expected 1..1024)", env);
    }
    return std::max(1, logical_cores());
}

std::mutex g_pool_mutex;
ThreadPool* g_pool = nullptr;

ThreadPool& pool() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (!g_pool) g_pool = new ThreadPool(default_threads());  // leaked on purpose: no join at exit
    return *g_pool;
}

}  // namespace

llmn_cpu_isa detected_isa() {
    static const llmn_cpu_isa isa = detect();
    return isa;
}

llmn_cpu_isa active_isa() {
    int a = g_active_isa.load(std::memory_order_relaxed);
    return a < 0 ? detected_isa() : static_cast<llmn_cpu_isa>(a);
}

void set_active_isa(llmn_cpu_isa isa) { g_active_isa.store(static_cast<int>(isa)); }

namespace {
std::atomic<bool> g_vnni_allowed{true};
}
bool avx512_vnni() {
#if defined(__x86_64__) || defined(_M_X64)
    static const bool has = __builtin_cpu_supports("avx512vnni");
    return has && g_vnni_allowed.load(std::memory_order_relaxed);
#else
    return false;
#endif
}
void set_avx512_vnni(bool allowed) { g_vnni_allowed.store(allowed); }

namespace {
std::atomic<bool> g_avx_vnni_allowed{true};
}
bool avx_vnni() {
#if defined(__x86_64__) || defined(_M_X64)
    static const bool has = __builtin_cpu_supports("avxvnni");
    return has && g_avx_vnni_allowed.load(std::memory_order_relaxed);
#else
    return false;
#endif
}
void set_avx_vnni(bool allowed) { g_avx_vnni_allowed.store(allowed); }

bool neon_dotprod() {
#if defined(__aarch64__) && defined(__linux__)
    static const bool has = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    return has;
#elif defined(__aarch64__) && defined(__APPLE__)
    return true;  // every Apple arm64 core (M1 and later) has the dot product instructions
#else
    return false;
#endif
}

void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__)
    if (!p || bytes < kHugePageMinBytes) return;
    const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + kHugePageBytes - 1) & ~uintptr_t(kHugePageBytes - 1);
    const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~uintptr_t(kHugePageBytes - 1);
    if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

int logical_cores() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
}

int64_t l3_cache_bytes() {
#if defined(__linux__)
    for (int idx = 0; idx < 8; ++idx) {
        std::string base = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(idx) + "/";
        std::ifstream level(base + "level"), size(base + "size");
        int lv = 0;
        std::string sz;
        if (!(level >> lv) || !(size >> sz)) continue;
        if (lv != 3) continue;
        int64_t v = std::atoll(sz.c_str());
        char unit = sz.empty() ? 0 : sz.back();
        if (unit == 'K') v *= 1024;
        if (unit == 'M') v *= 1024 * 1024;
        return v;
    }
#elif defined(_WIN32)
    DWORD len = 0;
    GetLogicalProcessorInformation(nullptr, &len);
    if (len > 0) {
        std::vector<SYSTEM_LOGICAL_PROCESSOR_INFORMATION> info(len / sizeof(SYSTEM_LOGICAL_PROCESSOR_INFORMATION) + 1);
        len = DWORD(info.size() * sizeof(SYSTEM_LOGICAL_PROCESSOR_INFORMATION));
        if (GetLogicalProcessorInformation(info.data(), &len))
            for (size_t i = 0; i < len / sizeof(SYSTEM_LOGICAL_PROCESSOR_INFORMATION); ++i)
                if (info[i].Relationship == RelationCache && info[i].Cache.Level == 3) return int64_t(info[i].Cache.Size);
    }
#endif
    return 0;
}

std::string model_name() {
#if defined(__linux__)
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("model name", 0) == 0) {
            auto p = line.find(':');
            if (p != std::string::npos) return line.substr(p + 2);
        }
    }
#elif LLMN_X86
    // Elsewhere (Windows, macOS on x86): the CPUID brand string, leaves 0x80000002..4.
    unsigned a, b, c, d;
    if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u) {
        char brand[49] = {};
        for (unsigned leaf = 0; leaf < 3; ++leaf) {
            __get_cpuid(0x80000002u + leaf, &a, &b, &c, &d);
            const unsigned r[4] = {a, b, c, d};
            std::memcpy(brand + 16 * leaf, r, 16);
        }
        std::string s(brand);
        const size_t first = s.find_first_not_of(' '), last = s.find_last_not_of(' ');
        return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
    }
#endif
    return std::string();
}

int thread_count() { return pool().size(); }

void set_thread_count(int threads) {
    int n = threads > 0 ? threads : default_threads();
    pool().resize(n);
    log(LLMN_LOG_INFO, 0, "CPU thread pool resized to %d threads", n);
}

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) { pool().run(n, fn); }


}  // namespace llmn::cpu
