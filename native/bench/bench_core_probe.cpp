// What one core of the benchmark machine can issue, measured instead of looked up: the CPU model a VM
// reports (QEMU's generic "EPYC" on our dev box) does not say which core runs underneath, and the
// kernels' ceilings depend on it. Each case runs a fixed instruction sequence in inline asm, so the
// compiler cannot fold or hoist it, on one thread:
//   BM_CoreProbe/clock:          8 dependent imul (3 cycles each): counter GHz = the core clock;
//   BM_CoreProbe/<instr>_ymm|xmm: 8 independent copies, counter Ginstr/s = throughput. Divided by the
//                                clock: instructions per cycle (e.g. 0.5 for a ymm op a Zen-1-like core
//                                splits into two 128-bit halves on a single pipe). The FMA case is 8
//                                accumulating chains: it cannot show more than 8 / latency per cycle.
//   BM_CoreProbe/<instr>_zmm:    AVX-512, 16 independent copies (16 chains, so latency does not cap
//                                accumulating instructions); skipped without AVX-512 F + VNNI.
//   BM_CoreProbe/<a>+<b>_zmm:    8 + 8 interleaved (Ginstr/s counts all 16): about the sum of the two
//                                pure rates means the kinds issue on different pipes, about the slower
//                                pure rate means they share them.
// Cited by docs/perf/cpu-2026-12-06.md for the INT4 GEMM and attention ceilings. x86-64 only.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>

#if defined(__x86_64__)
namespace {

constexpr long kIters = 20000000;

// The timed loop around a body: init zeroes the source registers, the clobbers name what the body writes.
#define LLMN_PROBE_ASM(init, body, ...)                                                                \
    long n = kIters;                                                                                   \
    __asm__ volatile(init "1:\n\t" body "dec %0\n\tjnz 1b\n\tvzeroupper\n" : "+r"(n) : : __VA_ARGS__)

#define LLMN_PROBE_LOOP(body)                                                                          \
    [] {                                                                                               \
        LLMN_PROBE_ASM("vpxor %%xmm0, %%xmm0, %%xmm0\n\tvpxor %%xmm1, %%xmm1, %%xmm1\n\tmov $1, %%rax\n", \
                       body, "rax", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", \
                       "xmm9", "memory");                                                              \
    }

// The same for AVX-512 bodies, which may use all 32 vector registers.
#define LLMN_PROBE_LOOP512(body)                                                                       \
    []() __attribute__((target("avx512f,avx512bw,avx512vnni"))) {                                      \
        LLMN_PROBE_ASM("vpxord %%zmm0, %%zmm0, %%zmm0\n\tvpxord %%zmm1, %%zmm1, %%zmm1\n", body, "xmm0", \
                       "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm16",  \
                       "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "memory");        \
    }

// Eight independent instructions writing ymm2..ymm9 (or xmm2..xmm9) from ymm0/ymm1.
#define LLMN_INDEP8(ins, w)                                                                                   \
    ins " %%" w "0, %%" w "1, %%" w "2\n\t" ins " %%" w "0, %%" w "1, %%" w "3\n\t" ins " %%" w "0, %%" w    \
        "1, %%" w "4\n\t" ins " %%" w "0, %%" w "1, %%" w "5\n\t" ins " %%" w "0, %%" w "1, %%" w "6\n\t" ins \
        " %%" w "0, %%" w "1, %%" w "7\n\t" ins " %%" w "0, %%" w "1, %%" w "8\n\t" ins " %%" w "0, %%" w     \
        "1, %%" w "9\n\t"

// AVX-512: one instruction "ins src, %zmmR" (src: its source operands and comma), and the 16 accumulator
// registers zmm2-9, zmm16-23.
#define LLMN_Z(ins, src, r) ins " " src " %%zmm" #r "\n\t"
#define LLMN_INDEP16_ZMM(ins, src)                                                                      \
    LLMN_Z(ins, src, 2) LLMN_Z(ins, src, 3) LLMN_Z(ins, src, 4) LLMN_Z(ins, src, 5) LLMN_Z(ins, src, 6) \
    LLMN_Z(ins, src, 7) LLMN_Z(ins, src, 8) LLMN_Z(ins, src, 9) LLMN_Z(ins, src, 16) LLMN_Z(ins, src, 17) \
    LLMN_Z(ins, src, 18) LLMN_Z(ins, src, 19) LLMN_Z(ins, src, 20) LLMN_Z(ins, src, 21)                  \
    LLMN_Z(ins, src, 22) LLMN_Z(ins, src, 23)
// 8 + 8 interleaved: instruction a into zmm2-9, instruction b into zmm16-23.
#define LLMN_MIX8_ZMM(a, asrc, b, bsrc)                                                                   \
    LLMN_Z(a, asrc, 2) LLMN_Z(b, bsrc, 16) LLMN_Z(a, asrc, 3) LLMN_Z(b, bsrc, 17) LLMN_Z(a, asrc, 4)     \
    LLMN_Z(b, bsrc, 18) LLMN_Z(a, asrc, 5) LLMN_Z(b, bsrc, 19) LLMN_Z(a, asrc, 6) LLMN_Z(b, bsrc, 20)    \
    LLMN_Z(a, asrc, 7) LLMN_Z(b, bsrc, 21) LLMN_Z(a, asrc, 8) LLMN_Z(b, bsrc, 22) LLMN_Z(a, asrc, 9)     \
    LLMN_Z(b, bsrc, 23)

struct Probe {
    const char* name;
    void (*run)();
    double cycles_per_iter;  // clock case only: dependent latency per loop iteration
    bool avx512 = false;     // needs AVX-512 F + VNNI: skipped (with the reason) where absent
    int instrs = 8;          // instructions per loop iteration
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
    // AVX-512 (the INT4 GEMM's and attention's AVX-512 kernels): 16 instructions per loop, see the header.
    {"vpdpbusd_zmm", LLMN_PROBE_LOOP512(LLMN_INDEP16_ZMM("vpdpbusd", "%%zmm0, %%zmm1,")), 0, true, 16},
    {"vpdpbusd_zmm_bcast",
     LLMN_PROBE_LOOP512("vpdpbusd 0(%%rsp)%{1to16%}, %%zmm1, %%zmm2\n\tvpdpbusd 4(%%rsp)%{1to16%}, %%zmm1, %%zmm3\n\t"
                     "vpdpbusd 8(%%rsp)%{1to16%}, %%zmm1, %%zmm4\n\tvpdpbusd 12(%%rsp)%{1to16%}, %%zmm1, %%zmm5\n\t"
                     "vpdpbusd 16(%%rsp)%{1to16%}, %%zmm1, %%zmm6\n\tvpdpbusd 20(%%rsp)%{1to16%}, %%zmm1, %%zmm7\n\t"
                     "vpdpbusd 24(%%rsp)%{1to16%}, %%zmm1, %%zmm8\n\tvpdpbusd 28(%%rsp)%{1to16%}, %%zmm1, %%zmm9\n\t"
                     "vpdpbusd 0(%%rsp)%{1to16%}, %%zmm1, %%zmm16\n\tvpdpbusd 4(%%rsp)%{1to16%}, %%zmm1, %%zmm17\n\t"
                     "vpdpbusd 8(%%rsp)%{1to16%}, %%zmm1, %%zmm18\n\tvpdpbusd 12(%%rsp)%{1to16%}, %%zmm1, %%zmm19\n\t"
                     "vpdpbusd 16(%%rsp)%{1to16%}, %%zmm1, %%zmm20\n\tvpdpbusd 20(%%rsp)%{1to16%}, %%zmm1, %%zmm21\n\t"
                     "vpdpbusd 24(%%rsp)%{1to16%}, %%zmm1, %%zmm22\n\tvpdpbusd 28(%%rsp)%{1to16%}, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vpmaddubsw_zmm", LLMN_PROBE_LOOP512(LLMN_INDEP16_ZMM("vpmaddubsw", "%%zmm0, %%zmm1,")), 0, true, 16},
    {"vfmadd231ps_zmm", LLMN_PROBE_LOOP512(LLMN_INDEP16_ZMM("vfmadd231ps", "%%zmm0, %%zmm1,")), 0, true, 16},
    {"vpdpbusd+vfmadd231ps_zmm",
     LLMN_PROBE_LOOP512(LLMN_MIX8_ZMM("vpdpbusd", "%%zmm0, %%zmm1,", "vfmadd231ps", "%%zmm0, %%zmm1,")),
     0, true, 16},
    {"vpdpbusd+vcvtdq2ps_zmm",
     LLMN_PROBE_LOOP512(LLMN_MIX8_ZMM("vpdpbusd", "%%zmm0, %%zmm1,", "vcvtdq2ps", "%%zmm0,")),
     0, true, 16},
    {"vpdpbusd+vpandd_zmm",
     LLMN_PROBE_LOOP512(LLMN_MIX8_ZMM("vpdpbusd", "%%zmm0, %%zmm1,", "vpandd", "%%zmm0, %%zmm1,")),
     0, true, 16},
    {"vpdpbusd+vshufi64x2_zmm",
     LLMN_PROBE_LOOP512(LLMN_MIX8_ZMM("vpdpbusd", "%%zmm0, %%zmm1,", "vshufi64x2", "$0x44, %%zmm0, %%zmm1,")),
     0, true, 16},
    {"vpdpbusd+vpshufb_zmm",
     LLMN_PROBE_LOOP512(LLMN_MIX8_ZMM("vpdpbusd", "%%zmm0, %%zmm1,", "vpshufb", "%%zmm0, %%zmm1,")),
     0, true, 16},
    {"vpdpbusd+vpsrlw_zmm",
     LLMN_PROBE_LOOP512(LLMN_MIX8_ZMM("vpdpbusd", "%%zmm0, %%zmm1,", "vpsrlw", "$4, %%zmm0,")),
     0, true, 16},
    {"vcvtph2ps_zmm", LLMN_PROBE_LOOP512(LLMN_INDEP16_ZMM("vcvtph2ps", "%%ymm0,")), 0, true, 16},
    {"vfmadd231ps+vcvtph2ps_zmm",
     LLMN_PROBE_LOOP512(LLMN_MIX8_ZMM("vfmadd231ps", "%%zmm0, %%zmm1,", "vcvtph2ps", "%%ymm0,")),
     0, true, 16},
};

void BM_CoreProbe(benchmark::State& st) {
    const Probe& p = kProbes[st.range(0)];
    st.SetLabel(p.name);
    if (p.avx512 && !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni"))) {
        st.SkipWithError("this CPU has no AVX-512 F + VNNI");
        return;
    }
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
        st.counters["Ginstr/s"] = double(kIters) * p.instrs / best / 1e9;
}

}  // namespace

BENCHMARK(BM_CoreProbe)->DenseRange(0, int(sizeof(kProbes) / sizeof(kProbes[0])) - 1)->UseManualTime()->Iterations(5);
#endif
