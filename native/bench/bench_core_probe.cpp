// What one core of the benchmark machine can issue, measured instead of looked up: the CPU model a VM
// reports (QEMU's generic "EPYC" on our dev box) does not say which core runs underneath, and the
// kernels' ceilings depend on it. Each case runs a fixed instruction sequence in inline asm, so the
// compiler cannot fold or hoist it, on one thread:
//   BM_CoreProbe/clock:          8 dependent imul (3 cycles each): counter GHz = the core clock;
//   BM_CoreProbe/<instr>_ymm|xmm: 8 independent copies, counter Ginstr/s = throughput. Divided by the
//                                clock: instructions per cycle (e.g. 0.5 for a ymm op a Zen-1-like core
//                                splits into two 128-bit halves on a single pipe). The FMA case is 8
//                                accumulating chains: it cannot show more than 8 / latency per cycle.
//   BM_CoreProbe/<a>+<b>_zmm:    4 + 4 interleaved (Ginstr/s counts all 8): about twice a pure case's
//                                rate means the two kinds issue on different pipes, about the same
//                                rate means they share them.
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

// The same for AVX-512 bodies, which may use all 32 vector registers.
#define LLMN_PROBE_LOOP512(body)                                                                          \
    []() __attribute__((target("avx512f,avx512bw,avx512vnni"))) {                                         \
        long n = kIters;                                                                                  \
        __asm__ volatile("vpxord %%zmm0, %%zmm0, %%zmm0\n\tvpxord %%zmm1, %%zmm1, %%zmm1\n"             \
                         "1:\n\t" body "dec %0\n\tjnz 1b\n\tvzeroupper\n"                                \
                         : "+r"(n)                                                                        \
                         :                                                                                \
                         : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", \
                           "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",        \
                           "memory");                                                                     \
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
    // AVX-512 (the INT4 GEMM's AVX-512 kernel); skipped without AVX-512 F + VNNI. 16 instructions per
    // loop into zmm2-9 and zmm16-23: accumulating ops get 16 chains, so their latency (4-5 cycles) does
    // not cap the rate below 2-3 per cycle. Mixes interleave 8 + 8: a total of about the sum of the two
    // pure rates means different pipes, about the slower pure rate means shared ones.
    {"vpdpbusd_zmm",
     LLMN_PROBE_LOOP512(
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm2\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm3\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm4\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm5\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm6\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm7\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm8\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm9\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm16\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm17\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm18\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm19\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm20\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm21\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm22\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vpdpbusd_zmm_bcast",
     LLMN_PROBE_LOOP512(
                        "vpdpbusd 0(%%rsp)%{1to16%}, %%zmm1, %%zmm2\n\tvpdpbusd 4(%%rsp)%{1to16%}, %%zmm1, %%zmm3\n\t"
                        "vpdpbusd 8(%%rsp)%{1to16%}, %%zmm1, %%zmm4\n\tvpdpbusd 12(%%rsp)%{1to16%}, %%zmm1, %%zmm5\n\t"
                        "vpdpbusd 16(%%rsp)%{1to16%}, %%zmm1, %%zmm6\n\tvpdpbusd 20(%%rsp)%{1to16%}, %%zmm1, %%zmm7\n\t"
                        "vpdpbusd 24(%%rsp)%{1to16%}, %%zmm1, %%zmm8\n\tvpdpbusd 28(%%rsp)%{1to16%}, %%zmm1, %%zmm9\n\t"
                        "vpdpbusd 0(%%rsp)%{1to16%}, %%zmm1, %%zmm16\n\tvpdpbusd 4(%%rsp)%{1to16%}, %%zmm1, %%zmm17\n\t"
                        "vpdpbusd 8(%%rsp)%{1to16%}, %%zmm1, %%zmm18\n\tvpdpbusd 12(%%rsp)%{1to16%}, %%zmm1, %%zmm19\n\t"
                        "vpdpbusd 16(%%rsp)%{1to16%}, %%zmm1, %%zmm20\n\tvpdpbusd 20(%%rsp)%{1to16%}, %%zmm1, %%zmm21\n\t"
                        "vpdpbusd 24(%%rsp)%{1to16%}, %%zmm1, %%zmm22\n\tvpdpbusd 28(%%rsp)%{1to16%}, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vpmaddubsw_zmm",
     LLMN_PROBE_LOOP512(
                        "vpmaddubsw %%zmm0, %%zmm1, %%zmm2\n\tvpmaddubsw %%zmm0, %%zmm1, %%zmm3\n\t"
                        "vpmaddubsw %%zmm0, %%zmm1, %%zmm4\n\tvpmaddubsw %%zmm0, %%zmm1, %%zmm5\n\t"
                        "vpmaddubsw %%zmm0, %%zmm1, %%zmm6\n\tvpmaddubsw %%zmm0, %%zmm1, %%zmm7\n\t"
                        "vpmaddubsw %%zmm0, %%zmm1, %%zmm8\n\tvpmaddubsw %%zmm0, %%zmm1, %%zmm9\n\t"
                        "vpmaddubsw %%zmm0, %%zmm1, %%zmm16\n\tvpmaddubsw %%zmm0, %%zmm1, %%zmm17\n\t"
                        "vpmaddubsw %%zmm0, %%zmm1, %%zmm18\n\tvpmaddubsw %%zmm0, %%zmm1, %%zmm19\n\t"
                        "vpmaddubsw %%zmm0, %%zmm1, %%zmm20\n\tvpmaddubsw %%zmm0, %%zmm1, %%zmm21\n\t"
                        "vpmaddubsw %%zmm0, %%zmm1, %%zmm22\n\tvpmaddubsw %%zmm0, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vfmadd231ps_zmm",
     LLMN_PROBE_LOOP512(
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm2\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm3\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm4\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm5\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm6\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm7\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm8\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm9\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm16\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm17\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm18\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm19\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm20\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm21\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm22\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vpdpbusd+vfmadd231ps_zmm",
     LLMN_PROBE_LOOP512(
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm2\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm16\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm3\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm17\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm4\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm18\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm5\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm19\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm6\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm20\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm7\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm21\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm8\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm22\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm9\n\tvfmadd231ps %%zmm0, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vpdpbusd+vcvtdq2ps_zmm",
     LLMN_PROBE_LOOP512(
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm2\n\tvcvtdq2ps %%zmm0, %%zmm16\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm3\n\tvcvtdq2ps %%zmm0, %%zmm17\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm4\n\tvcvtdq2ps %%zmm0, %%zmm18\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm5\n\tvcvtdq2ps %%zmm0, %%zmm19\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm6\n\tvcvtdq2ps %%zmm0, %%zmm20\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm7\n\tvcvtdq2ps %%zmm0, %%zmm21\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm8\n\tvcvtdq2ps %%zmm0, %%zmm22\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm9\n\tvcvtdq2ps %%zmm0, %%zmm23\n\t"),
     0, true, 16},
    {"vpdpbusd+vpandd_zmm",
     LLMN_PROBE_LOOP512(
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm2\n\tvpandd %%zmm0, %%zmm1, %%zmm16\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm3\n\tvpandd %%zmm0, %%zmm1, %%zmm17\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm4\n\tvpandd %%zmm0, %%zmm1, %%zmm18\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm5\n\tvpandd %%zmm0, %%zmm1, %%zmm19\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm6\n\tvpandd %%zmm0, %%zmm1, %%zmm20\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm7\n\tvpandd %%zmm0, %%zmm1, %%zmm21\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm8\n\tvpandd %%zmm0, %%zmm1, %%zmm22\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm9\n\tvpandd %%zmm0, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vpdpbusd+vshufi64x2_zmm",
     LLMN_PROBE_LOOP512(
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm2\n\tvshufi64x2 $0x44, %%zmm0, %%zmm1, %%zmm16\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm3\n\tvshufi64x2 $0x44, %%zmm0, %%zmm1, %%zmm17\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm4\n\tvshufi64x2 $0x44, %%zmm0, %%zmm1, %%zmm18\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm5\n\tvshufi64x2 $0x44, %%zmm0, %%zmm1, %%zmm19\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm6\n\tvshufi64x2 $0x44, %%zmm0, %%zmm1, %%zmm20\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm7\n\tvshufi64x2 $0x44, %%zmm0, %%zmm1, %%zmm21\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm8\n\tvshufi64x2 $0x44, %%zmm0, %%zmm1, %%zmm22\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm9\n\tvshufi64x2 $0x44, %%zmm0, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vpdpbusd+vpshufb_zmm",
     LLMN_PROBE_LOOP512(
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm2\n\tvpshufb %%zmm0, %%zmm1, %%zmm16\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm3\n\tvpshufb %%zmm0, %%zmm1, %%zmm17\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm4\n\tvpshufb %%zmm0, %%zmm1, %%zmm18\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm5\n\tvpshufb %%zmm0, %%zmm1, %%zmm19\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm6\n\tvpshufb %%zmm0, %%zmm1, %%zmm20\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm7\n\tvpshufb %%zmm0, %%zmm1, %%zmm21\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm8\n\tvpshufb %%zmm0, %%zmm1, %%zmm22\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm9\n\tvpshufb %%zmm0, %%zmm1, %%zmm23\n\t"),
     0, true, 16},
    {"vpdpbusd+vpsrlw_zmm",
     LLMN_PROBE_LOOP512(
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm2\n\tvpsrlw $4, %%zmm0, %%zmm16\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm3\n\tvpsrlw $4, %%zmm0, %%zmm17\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm4\n\tvpsrlw $4, %%zmm0, %%zmm18\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm5\n\tvpsrlw $4, %%zmm0, %%zmm19\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm6\n\tvpsrlw $4, %%zmm0, %%zmm20\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm7\n\tvpsrlw $4, %%zmm0, %%zmm21\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm8\n\tvpsrlw $4, %%zmm0, %%zmm22\n\t"
                        "vpdpbusd %%zmm0, %%zmm1, %%zmm9\n\tvpsrlw $4, %%zmm0, %%zmm23\n\t"),
     0, true, 16},
    {"vcvtph2ps_zmm",
     LLMN_PROBE_LOOP512(
                        "vcvtph2ps %%ymm0, %%zmm2\n\tvcvtph2ps %%ymm0, %%zmm3\n\t"
                        "vcvtph2ps %%ymm0, %%zmm4\n\tvcvtph2ps %%ymm0, %%zmm5\n\t"
                        "vcvtph2ps %%ymm0, %%zmm6\n\tvcvtph2ps %%ymm0, %%zmm7\n\t"
                        "vcvtph2ps %%ymm0, %%zmm8\n\tvcvtph2ps %%ymm0, %%zmm9\n\t"
                        "vcvtph2ps %%ymm0, %%zmm16\n\tvcvtph2ps %%ymm0, %%zmm17\n\t"
                        "vcvtph2ps %%ymm0, %%zmm18\n\tvcvtph2ps %%ymm0, %%zmm19\n\t"
                        "vcvtph2ps %%ymm0, %%zmm20\n\tvcvtph2ps %%ymm0, %%zmm21\n\t"
                        "vcvtph2ps %%ymm0, %%zmm22\n\tvcvtph2ps %%ymm0, %%zmm23\n\t"),
     0, true, 16},
    {"vfmadd231ps+vcvtph2ps_zmm",
     LLMN_PROBE_LOOP512(
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm2\n\tvcvtph2ps %%ymm0, %%zmm16\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm3\n\tvcvtph2ps %%ymm0, %%zmm17\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm4\n\tvcvtph2ps %%ymm0, %%zmm18\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm5\n\tvcvtph2ps %%ymm0, %%zmm19\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm6\n\tvcvtph2ps %%ymm0, %%zmm20\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm7\n\tvcvtph2ps %%ymm0, %%zmm21\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm8\n\tvcvtph2ps %%ymm0, %%zmm22\n\t"
                        "vfmadd231ps %%zmm0, %%zmm1, %%zmm9\n\tvcvtph2ps %%ymm0, %%zmm23\n\t"),
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
