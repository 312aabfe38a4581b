// CPU backend runtime: ISA detection (with a process-wide cap so tests can force the scalar
// reference), and one thread pool shared by every CPU kernel. parallel_for hands out fixed chunks
// by index, so a kernel whose per-chunk work is deterministic gives bitwise-identical results
// whatever the thread count or scheduling.
#pragma once
#include <llmnative/llmnative.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace llmn::cpu {

llmn_cpu_isa detected_isa();
llmn_cpu_isa active_isa();
void set_active_isa(llmn_cpu_isa isa);  // validated by the caller
// AVX-512 VNNI (vpdpbusd) present (CPUID) and not disabled; the int8 loops of the INT4 GEMM and of the
// INT8-query attention use it when active_isa() is AVX512. set_avx512_vnni(false) forces their non-VNNI
// loops (tests, benchmarks); process-wide.
bool avx512_vnni();
void set_avx512_vnni(bool allowed);
// AVX-VNNI (the VEX-encoded ymm vpdpbusd of Alder Lake and later Intel cores without AVX-512, and of
// Zen 5) present (CPUID) and not disabled; the same int8 loops use it when active_isa() is AVX2.
// set_avx_vnni(false) forces their vpmaddubsw loops (tests, benchmarks); process-wide.
bool avx_vnni();
void set_avx_vnni(bool allowed);
// arm64: the ARMv8.2 dot product instructions (sdot/udot, HWCAP_ASIMDDP) are present; the NEON INT4 GEMM
// (gemm_int4_neon.cpp) needs them. false elsewhere.
bool neon_dotprod();
int64_t l3_cache_bytes();
std::string model_name();
int logical_cores();

// Large buffers streamed by the kernels (packed INT4 weights, the KV pool) are read in 4-8 KiB
// pieces from all over the buffer; with 4 KiB pages nearly every piece costs a TLB miss and a page
// walk. Asks for transparent huge pages on the 2 MiB-aligned interior of [p, p + bytes) when the
// buffer is at least kHugePageMinBytes. A hint only (pages not yet touched are not copied; failure is
// harmless).
constexpr size_t kHugePageBytes = size_t(2) << 20;
constexpr size_t kHugePageMinBytes = size_t(8) << 20;
void advise_huge_pages(void* p, size_t bytes);

int thread_count();
void set_thread_count(int threads);  // 0 = from the machine / LLMNATIVE_NUM_THREADS

// Runs fn(i) for i in [0, n) on the pool (the calling thread takes part). Blocks until done.
// Exceptions from fn are rethrown on the calling thread (the first one). Nested calls run inline.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

}  // namespace llmn::cpu
