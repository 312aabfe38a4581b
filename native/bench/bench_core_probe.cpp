// What one core of the benchmark machine can issue, measured instead of looked up: the CPU model a VM
// reports (QEMU's generic "EPYC" on our dev box) does not say which core runs underneath, and the
// kernels' ceilings depend on it. Each case runs a fixed instruction sequence in inline asm, so the
// compiler cannot fold or hoist it, on one thread:
//   BM_CoreProbe/clock:          8 dependent imul (3 cycles each): counter GHz = the core clock;
//   BM_CoreProbe/<instr>_ymm|xmm: 8 independent copies, counter Ginstr/s = throughput. Divided by the
//                                clock: instructions per cycle (e.g. 0.5 for a ymm op a Zen-1-like core
//                                splits into two 128-bit halves on a single pipe). The FMA case is 8
//                                accumulating chains: it cannot show more than 8 / latency per cycle.
// Cited by docs/perf/cpu-2026-12-06.md for the INT4 GEMM and attention ceilings. x86-64 only.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>

#if defined(__x86_64__)
namespace {

constexpr long kIters = 20000000;

#define LLMN_PROBE_LOOP(body)                                                                              \
    [] {                                                                                                   \
        long n = kIters;                                                                                   \
        __asm__ volatile("vpxor %%xmm0, %%xmm0, %%xmm0\n\tvpxor %%xmm1, %%xmm1, %%xmm1\n\tmov $1, %%rax\n" \
                         "1:\n\t" body "dec %0\n\tjnz 1b\n\tvzeroupper\n"                                               \
                         : "+r"(n)                                                                         \
                         :                                                                                 \
                         : "rax", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",  \
                           "xmm9", "memory");                                                              \
    }

// Eight independent instructions writing ymm2..ymm9 (or xmm2..xmm9) from ymm0/ymm1.
#define LLMN_INDEP8(ins, w)                                                                                   \
    ins " %%" w "0, %%" w "1, %%" w "2\n\t" ins " %%" w "0, %%" w "1, %%" w "3\n\t" ins " %%" w "0, %%" w    \
        "1, %%" w "4\n\t" ins " %%" w "0, %%" w "1, %%" w "5\n\t" ins " %%" w "0, %%" w "1, %%" w "6\n\t" ins \
        " %%" w "0, %%" w "1, %%" w "7\n\t" ins " %%" w "0, %%" w "1, %%" w "8\n\t" ins " %%" w "0, %%" w     \
        "1, %%" w "9\n\t"

struct Probe {
    const char* name;
    void (*run)();
    double cycles_per_iter;  // clock case only: dependent latency per loop iteration
};

const Probe kProbes[] = {
    {"clock", LLMN_PROBE_LOOP("imul %%rax, %%rax\n\timul %%rax, %%rax\n\timul %%rax, %%rax\n\timul %%rax, %%rax\n\t"
                              "imul %%rax, %%rax\n\timul %%rax, %%rax\n\timul %%rax, %%rax\n\timul %%rax, %%rax\n\t"),
     24.0},
    {"vpmaddubsw_ymm", LLMN_PROBE_LOOP(LLMN_INDEP8("vpmaddubsw", "ymm")), 0},
    {"vpmaddubsw_xmm", LLMN_PROBE_LOOP(LLMN_INDEP8("vpmaddubsw", "xmm")), 0},
    {"vpmaddwd_ymm", LLMN_PROBE_LOOP(LLMN_INDEP8("vpmaddwd", "ymm")), 0},
    {"vfmadd231ps_ymm", LLMN_PROBE_LOOP(LLMN_INDEP8("vfmadd231ps", "ymm")), 0},
    {"vpaddw_ymm", LLMN_PROBE_LOOP(LLMN_INDEP8("vpaddw", "ymm")), 0},
    {"vcvtph2ps_ymm",
     LLMN_PROBE_LOOP("vcvtph2ps %%xmm0, %%ymm2\n\tvcvtph2ps %%xmm0, %%ymm3\n\tvcvtph2ps %%xmm0, %%ymm4\n\t"
                     "vcvtph2ps %%xmm0, %%ymm5\n\tvcvtph2ps %%xmm0, %%ymm6\n\tvcvtph2ps %%xmm0, %%ymm7\n\t"
                     "vcvtph2ps %%xmm0, %%ymm8\n\tvcvtph2ps %%xmm0, %%ymm9\n\t"),
     0},
};

void BM_CoreProbe(benchmark::State& st) {
    const Probe& p = kProbes[st.range(0)];
    st.SetLabel(p.name);
    double best = 1e30;
    for (auto _ : st) {
        const auto t0 = std::chrono::steady_clock::now();
        p.run();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        st.SetIterationTime(s);
        if (s < best) best = s;
    }
    if (p.cycles_per_iter > 0)
        st.counters["GHz"] = double(kIters) * p.cycles_per_iter / best / 1e9;
    else
        st.counters["Ginstr/s"] = double(kIters) * 8 / best / 1e9;
}

}  // namespace

BENCHMARK(BM_CoreProbe)->DenseRange(0, int(sizeof(kProbes) / sizeof(kProbes[0])) - 1)->UseManualTime()->Iterations(5);
#endif
