// CPU backend of the INT4 weight: packing canonical -> the layout described in gemm_int4_cpu.hpp,
// unpacking back (dequantize reads the packed bytes, so the round trip is tested for real), the
// scalar reference GEMM and the ISA dispatch.
//
// The scalar path is the exact reference: every weight is dequantized to f32 as (q - zero) * scale
// (exact: a 5-bit integer times an 11-bit fp16 significand fits in f32) and each output is one f32
// sum over the packed rows in order. It reads the same packed layout as the SIMD kernels, so it also
// checks the layout. Work is split by 32-column panels: every output element is computed by exactly
// one thread in a fixed order, so results do not depend on the thread count.
#include "gemm_int4_cpu.hpp"

#include "../../core/numeric.hpp"
#include "../../core/log.hpp"
#include "../../cpu/cpu_runtime.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace llmn {

using namespace int4cpu;

namespace int4cpu {

namespace {
// Default Int8 (see gemm_int4_avx2.cpp for why); LLMNATIVE_INT4_CPU_COMPUTE=f32 selects the exact
// inner loop for the whole process (e.g. to rule out activation rounding when chasing accuracy).
int initial_compute() {
    const char* env = std::getenv("LLMNATIVE_INT4_CPU_COMPUTE");
    if (!env) return static_cast<int>(Compute::Int8);
    if (std::strcmp(env, "f32") == 0) return static_cast<int>(Compute::F32);
    if (std::strcmp(env, "int8") != 0)
        log(LLMN_LOG_WARNING, 0, "ignoring LLMNATIVE_INT4_CPU_COMPUTE=%s (expected int8 or f32)", env);
    return static_cast<int>(Compute::Int8);
}
std::atomic<int> g_compute{initial_compute()};
}


Compute compute_mode() { return static_cast<Compute>(g_compute.load(std::memory_order_relaxed)); }
void set_compute_mode(Compute c) { g_compute.store(static_cast<int>(c)); }

void gather_rows_f32(const Call& c, int64_t r0, int64_t r1, float* xf) {
    const Packed& P = *c.w;
    const int64_t kp = P.kp(), K = P.k;
    const int32_t* src = P.row_src.data();
    for (int64_t r = r0; r < r1; ++r) {
        float* out = xf + (r - r0) * kp;
        if (c.f16) {
            const uint16_t* x = static_cast<const uint16_t*>(c.x) + r * K;
            for (int64_t j = 0; j < kp; ++j) out[j] = src[j] < 0 ? 0.0f : f16_to_f32(x[src[j]]);
        } else {
            const float* x = static_cast<const float*>(c.x) + r * K;
            for (int64_t j = 0; j < kp; ++j) out[j] = src[j] < 0 ? 0.0f : x[src[j]];
        }
    }
}

void store_panel(const Call& c, int64_t r0, int64_t r1, int64_t n0, int cols, const float* acc) {
    const int64_t N = c.w->n;
    float bias[kPanelN] = {};
    if (c.bias) {
        for (int i = 0; i < cols; ++i)
            bias[i] = c.f16 ? f16_to_f32(static_cast<const uint16_t*>(c.bias)[n0 + i])
                            : static_cast<const float*>(c.bias)[n0 + i];
    }
    for (int64_t r = r0; r < r1; ++r) {
        const float* a = acc + (r - r0) * kPanelN;
        if (c.f16) {
            uint16_t* y = static_cast<uint16_t*>(c.y) + r * N + n0;
            for (int i = 0; i < cols; ++i) y[i] = f32_to_f16(a[i] + bias[i]);
        } else {
            float* y = static_cast<float*>(c.y) + r * N + n0;
            for (int i = 0; i < cols; ++i) y[i] = a[i] + bias[i];
        }
    }
}

namespace {

// Byte offset and shift of packed row r (0..31 in its block), column c (0..7) inside a 128-byte tile block.
inline void nibble_pos(int r, int c, int& byte, int& shift) {
    const int L = r / 8, j = r % 8;
    byte = L * 32 + 4 * c + (j & 3);
    shift = j < 4 ? 0 : 4;
}

}  // namespace

void gemm_scalar(const Call& c) {
    const Packed& P = *c.w;
    const int64_t M = c.m, kp = P.kp(), nb = P.nblocks, N = P.n;
    std::vector<float> xf(static_cast<size_t>(M * kp));
    gather_rows_f32(c, 0, M, xf.data());
    cpu::parallel_for(P.npanels, [&](int64_t p) {
        const int tp = P.tiles_in_panel(p);
        const int width = tp * kTileN;
        const uint8_t* data = P.panel_data(p);
        const uint16_t* sc = P.panel_scales(p);
        const uint8_t* zr = P.panel_zeros(p);
        std::vector<float> acc(static_cast<size_t>(M * kPanelN), 0.0f);
        float w[kBlockK][kPanelN];
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t g = P.block_group[static_cast<size_t>(b)];
            for (int t = 0; t < tp; ++t) {
                const uint8_t* blk = data + (b * tp + t) * kTileBlockBytes;
                for (int col = 0; col < kTileN; ++col) {
                    const int64_t si = (g * tp + t) * kTileN + col;
                    const float s = f16_to_f32(sc[si]);
                    const float z = zr ? float(zr[si]) : 8.0f;
                    for (int r = 0; r < kBlockK; ++r) {
                        int byte, shift;
                        nibble_pos(r, col, byte, shift);
                        w[r][t * kTileN + col] = (float((blk[byte] >> shift) & 0xF) - z) * s;
                    }
                }
            }
            for (int64_t m = 0; m < M; ++m) {
                const float* x = &xf[static_cast<size_t>(m * kp + b * kBlockK)];
                float* a = &acc[static_cast<size_t>(m * kPanelN)];
                for (int r = 0; r < kBlockK; ++r)
                    for (int col = 0; col < width; ++col) a[col] += x[r] * w[r][col];
            }
        }
        const int64_t n0 = p * kPanelN;
        store_panel(c, 0, M, n0, static_cast<int>(std::min<int64_t>(kPanelN, N - n0)), acc.data());
    });
}

}  // namespace int4cpu

std::unique_ptr<Int4Packed> int4_pack_cpu(const Int4Canonical& c) {
    auto P = std::make_unique<Packed>();
    const int64_t K = c.k, N = c.n, G = c.groups();
    P->k = K;
    P->n = N;
    P->group_size = c.group_size;
    P->symmetric = c.symmetric;
    P->groups = G;
    P->g_idx = c.g_idx;

    // Packed row order: rows grouped by group id (stable), each group padded to a multiple of 32.
    std::vector<int64_t> count(static_cast<size_t>(G), 0);
    for (int64_t k = 0; k < K; ++k) ++count[static_cast<size_t>(c.group_of(k))];
    std::vector<int64_t> start(static_cast<size_t>(G), 0);
    int64_t rows = 0;
    for (int64_t g = 0; g < G; ++g) {
        start[static_cast<size_t>(g)] = rows;
        rows += (count[static_cast<size_t>(g)] + kBlockK - 1) / kBlockK * kBlockK;
    }
    P->row_src.assign(static_cast<size_t>(rows), -1);
    std::vector<int64_t> fill = start;
    for (int64_t k = 0; k < K; ++k) P->row_src[static_cast<size_t>(fill[static_cast<size_t>(c.group_of(k))]++)] = int32_t(k);
    P->nblocks = rows / kBlockK;
    P->block_group.resize(static_cast<size_t>(P->nblocks));
    for (int64_t g = 0; g < G; ++g)
        for (int64_t r = start[static_cast<size_t>(g)]; r < start[static_cast<size_t>(g)] + count[static_cast<size_t>(g)];
             r += kBlockK)
            P->block_group[static_cast<size_t>(r / kBlockK)] = int32_t(g);

    P->ntiles = (N + kTileN - 1) / kTileN;
    P->npanels = (P->ntiles + kPanelTiles - 1) / kPanelTiles;
    P->data_bytes = checked_mul(checked_mul(P->ntiles, P->nblocks, "packed weight"), kTileBlockBytes, "packed weight");
    {
        // Whole 2 MiB pages for big weights so advise_huge_pages covers all of it: at M = 1 the call
        // is one stream over this buffer, and 4 KiB pages cost it ~10 % in page walks (native
        // BM_Int4Gemm at M = 1 on a Zen 5 VM, mean weight bytes/s: 54-58 -> 62-69 GB/s).
        const size_t align = size_t(P->data_bytes) >= cpu::kHugePageMinBytes ? cpu::kHugePageBytes : 64;
        const size_t bytes = (static_cast<size_t>(P->data_bytes) + align - 1) / align * align;
        P->data.reset(static_cast<uint8_t*>(aligned_malloc(align, bytes)));
        cpu::advise_huge_pages(P->data.get(), bytes);
    }
    if (!P->data) fail(LLMN_STATUS_OUT_OF_MEMORY, "allocating %lld bytes for the packed INT4 weight failed",
                       (long long)P->data_bytes);
    P->scales.assign(static_cast<size_t>(P->ntiles * G * kTileN), 0);
    if (!c.symmetric) P->zeros.assign(static_cast<size_t>(P->ntiles * G * kTileN), 0);

    Packed& R = *P;
    cpu::parallel_for(R.npanels, [&](int64_t p) {
        const int tp = R.tiles_in_panel(p);
        uint8_t* data = const_cast<uint8_t*>(R.panel_data(p));
        for (int64_t b = 0; b < R.nblocks; ++b) {
            for (int t = 0; t < tp; ++t) {
                uint8_t* blk = data + (b * tp + t) * kTileBlockBytes;
                std::memset(blk, 0, kTileBlockBytes);
                for (int col = 0; col < kTileN; ++col) {
                    const int64_t n = (p * kPanelTiles + t) * kTileN + col;
                    if (n >= N) continue;
                    for (int r = 0; r < kBlockK; ++r) {
                        const int32_t k = R.row_src[static_cast<size_t>(b * kBlockK + r)];
                        if (k < 0) continue;
                        int byte, shift;
                        nibble_pos(r, col, byte, shift);
                        blk[byte] = uint8_t(blk[byte] | (c.q[static_cast<size_t>(k * N + n)] << shift));
                    }
                }
            }
        }
        const int64_t sbase = p * kPanelTiles * G * kTileN;
        for (int64_t g = 0; g < G; ++g)
            for (int t = 0; t < tp; ++t)
                for (int col = 0; col < kTileN; ++col) {
                    const int64_t n = (p * kPanelTiles + t) * kTileN + col;
                    if (n >= N) continue;
                    const size_t di = static_cast<size_t>(sbase + (g * tp + t) * kTileN + col);
                    R.scales[di] = c.scales[static_cast<size_t>(g * N + n)];
                    if (!c.symmetric) R.zeros[di] = c.zeros[static_cast<size_t>(g * N + n)];
                }
    });
    return P;
}

Int4Canonical int4_unpack_cpu(const Int4Packed& packed) {
    const Packed* P = dynamic_cast<const Packed*>(&packed);
    if (!P) fail(LLMN_STATUS_INTERNAL, "INT4 weight: packed storage is not the CPU layout");
    Int4Canonical c;
    const int64_t K = P->k, N = P->n, G = P->groups;
    c.k = K;
    c.n = N;
    c.group_size = P->group_size;
    c.symmetric = P->symmetric;
    c.g_idx = P->g_idx;
    c.q.assign(static_cast<size_t>(K * N), 0);
    c.scales.assign(static_cast<size_t>(G * N), 0);
    c.zeros.assign(static_cast<size_t>(G * N), 8);
    for (int64_t p = 0; p < P->npanels; ++p) {
        const int tp = P->tiles_in_panel(p);
        const uint8_t* data = P->panel_data(p);
        const uint16_t* sc = P->panel_scales(p);
        const uint8_t* zr = P->panel_zeros(p);
        for (int t = 0; t < tp; ++t) {
            for (int col = 0; col < kTileN; ++col) {
                const int64_t n = (p * kPanelTiles + t) * kTileN + col;
                if (n >= N) continue;
                for (int64_t b = 0; b < P->nblocks; ++b) {
                    const uint8_t* blk = data + (b * tp + t) * kTileBlockBytes;
                    for (int r = 0; r < kBlockK; ++r) {
                        const int32_t k = P->row_src[static_cast<size_t>(b * kBlockK + r)];
                        if (k < 0) continue;
                        int byte, shift;
                        nibble_pos(r, col, byte, shift);
                        c.q[static_cast<size_t>(k * N + n)] = uint8_t((blk[byte] >> shift) & 0xF);
                    }
                }
                for (int64_t g = 0; g < G; ++g) {
                    const int64_t si = (g * tp + t) * kTileN + col;
                    c.scales[static_cast<size_t>(g * N + n)] = sc[si];
                    if (zr) c.zeros[static_cast<size_t>(g * N + n)] = zr[si];
                }
            }
        }
    }
    return c;
}

void gemm_int4_cpu(const Context&, const Int4Weight& w, const GemmInt4Args& a) {
    const Packed* P = dynamic_cast<const Packed*>(&w.packed());
    if (!P) fail(LLMN_STATUS_INTERNAL, "llmn_gemm_int4: packed storage is not the CPU layout");
    Call c{P, a.x->data(), a.bias ? a.bias->data() : nullptr, a.y->data(), a.m, a.x->dtype() == LLMN_DTYPE_F16};
    if (c.m <= 0) return;
#if defined(__x86_64__) || defined(_M_X64)
    const llmn_cpu_isa isa = cpu::active_isa();
    if (isa == LLMN_CPU_ISA_AVX512) {
        gemm_avx512(c, compute_mode(), cpu::avx512_vnni());
        return;
    }
    if (isa == LLMN_CPU_ISA_AVX2) {
        gemm_avx2(c, compute_mode(), cpu::avx_vnni());
        return;
    }
#elif defined(__aarch64__)
    if (cpu::active_isa() == LLMN_CPU_ISA_NEON && cpu::neon_dotprod() && compute_mode() == Compute::Int8) {
        gemm_neon(c);
        return;
    }
#endif
    gemm_scalar(c);
}

}  // namespace llmn
