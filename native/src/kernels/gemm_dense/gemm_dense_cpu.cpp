// Dense baseline, CPU: ISA dispatch and the scalar reference. Work is split by 64-column slabs and
// every output is one f32 sum over k in ascending order computed by one thread, so results do not
// depend on the thread count (the AVX2 kernel keeps the same order, with FMA).
#include "gemm_dense_cpu.hpp"

#include "../../core/numeric.hpp"
#include "../../cpu/cpu_runtime.hpp"

#include <algorithm>
#include <vector>

namespace llmn {

namespace densecpu {

void store_slab(const Call& c, int64_t r0, int64_t r1, int64_t n0, int64_t cols, const float* acc, int64_t ld) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* a = acc + (r - r0) * ld;
        for (int64_t i = 0; i < cols; ++i) {
            const int64_t n = n0 + i;
            float b = 0.0f;
            if (c.bias) b = c.f16 ? f16_to_f32(static_cast<const uint16_t*>(c.bias)[n]) : static_cast<const float*>(c.bias)[n];
            if (c.f16) static_cast<uint16_t*>(c.y)[r * c.n + n] = f32_to_f16(a[i] + b);
            else static_cast<float*>(c.y)[r * c.n + n] = a[i] + b;
        }
    }
}

namespace {

void gemm_scalar(const Call& c) {
    const int64_t slabs = (c.n + kSlabN - 1) / kSlabN;
    cpu::parallel_for(slabs, [&](int64_t s) {
        const int64_t n0 = s * kSlabN, cols = std::min(kSlabN, c.n - n0);
        std::vector<float> acc(static_cast<size_t>(c.m * kSlabN), 0.0f);
        for (int64_t r = 0; r < c.m; ++r) {
            float* a = &acc[static_cast<size_t>(r * kSlabN)];
            for (int64_t k = 0; k < c.k; ++k) {
                const int64_t xi = r * c.k + k;
                const float xv = c.f16 ? f16_to_f32(static_cast<const uint16_t*>(c.x)[xi]) : static_cast<const float*>(c.x)[xi];
                for (int64_t i = 0; i < cols; ++i) {
                    const int64_t wi = k * c.n + n0 + i;
                    const float wv = c.f16 ? f16_to_f32(static_cast<const uint16_t*>(c.w)[wi]) : static_cast<const float*>(c.w)[wi];
                    a[i] += xv * wv;
                }
            }
        }
        store_slab(c, 0, c.m, n0, cols, acc.data(), kSlabN);
    });
}

}  // namespace

}  // namespace densecpu

void gemm_dense_cpu(const Context&, const GemmDenseArgs& a) {
    densecpu::Call c{a.x->data(), a.w->data(), a.bias ? a.bias->data() : nullptr, a.y->data(),
                     a.m, a.k, a.n, a.x->dtype() == LLMN_DTYPE_F16};
    if (c.m <= 0) return;
#if defined(__x86_64__) || defined(_M_X64)
    const llmn_cpu_isa isa = cpu::active_isa();
    if (isa == LLMN_CPU_ISA_AVX2 || isa == LLMN_CPU_ISA_AVX512) {
        densecpu::gemm_avx2(c);
        return;
    }
#endif
    densecpu::gemm_scalar(c);
}

}  // namespace llmn
