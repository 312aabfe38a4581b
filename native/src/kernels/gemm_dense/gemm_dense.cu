// Dense f16/bf16 GEMM on CUDA: Y[m,N] = X[m,K] * W[K,N] (+ bias), fp32 accumulation.
//
// Why it exists and what it is: the honest baseline for the INT4 kernel on the same backend, with the
// same buffers and stream discipline (the real peer, cuBLAS via torch, is measured separately). It is
// a conventional tensor-core GEMM, not a BLAS:
//   * mma.sync m16n8k16 with fp32 accumulators; A fragments via ldmatrix.x4 from a row-major X tile,
//     B fragments via ldmatrix.x4.trans from a row-major W tile (the transposing load turns the [k][n]
//     tile into the column-major B fragment without any shuffle);
//   * a 3/4-stage cp.async pipeline, shared-memory rows padded by 16 bytes so the 8 rows one ldmatrix
//     phase reads land in 8 different bank groups;
//   * three tile shapes by m: 128x128 (compute-bound, m > 64), 64x64 (m <= 64) and a skinny 16-row tile
//     whose warps split each k tile (reduced through shared memory) and whose n tile shrinks to 16 when
//     that is what it takes to give every SM a block (at m <= 16 the product is a stream over W, and
//     the SMs must all be streaming);
//   * any shape: 16-byte async copies with zero-fill at the edges when K and N are multiples of 8,
//     otherwise plain element loads (bounds-checked) into the same pipeline (correct, slower).
// No allocation, no host synchronisation: a call is graph-capturable (the one-time shared-memory
// opt-in is done outside any capture on the first call per device).
#include "gemm_dense.hpp"

#include "../../core/error.hpp"
#include "../../cuda/cuda_runtime.hpp"
#include "../../cuda/ptx.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <mutex>
#include <set>
#include <utility>

namespace llmn {

namespace {

using namespace ptx;  // PTX wrappers and element conversions (cuda/ptx.cuh)

struct DenseParams {
    const uint16_t* x;  // [m][k]
    const uint16_t* w;  // [k][n]
    const uint16_t* bias;
    uint16_t* y;        // [m][n]
    int m, n, k;
};

// Tile shape: BM x BN output tile, BK deep k tile, 8 warps as WM x WN x WK (WK warps split each k tile).
template <int BM_, int BN_, int BK_, int WM_, int WN_, int WK_, int STAGES_>
struct DenseTile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, WK = WK_, STAGES = STAGES_;
    static_assert(WM * WN * WK == 8, "8 warps");
    static constexpr int TM = BM / WM, TN = BN / WN;  // warp tile
    static_assert(TM % 16 == 0 && TN % 16 == 0 && BK % (16 * WK) == 0, "warp tile");
    static constexpr int MB = TM / 16, NF = TN / 8;   // m blocks and n8 fragments per warp
    static constexpr int A_LD = BK + 8, B_LD = BN + 8;  // padded rows (halves)
    static constexpr int A_ELEMS = BM * A_LD, B_ELEMS = BK * B_LD;
    static constexpr int STAGE_BYTES = (A_ELEMS + B_ELEMS) * 2;
    static constexpr int RED_BYTES = (WK - 1) * WM * WN * 32 * MB * NF * 4 * 4;
    static constexpr int SMEM = STAGE_BYTES * STAGES > RED_BYTES ? STAGE_BYTES * STAGES : RED_BYTES;
};

using TileLarge = DenseTile<128, 128, 32, 2, 4, 1, 4>;
using TileMedium = DenseTile<64, 64, 32, 2, 2, 2, 4>;
using TileSmall64 = DenseTile<16, 64, 64, 1, 2, 4, 4>;
using TileSmall32 = DenseTile<16, 32, 64, 1, 2, 4, 4>;
using TileSmall16 = DenseTile<16, 16, 128, 1, 1, 8, 4>;

template <bool kBf16, class T, bool kAligned>
__global__ void __launch_bounds__(256) gemm_dense_kernel(DenseParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    extern __shared__ uint4 smem_raw[];
    uint16_t* smem = reinterpret_cast<uint16_t*>(smem_raw);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp % T::WM, wn = (warp / T::WM) % T::WN, wk = warp / (T::WM * T::WN);
    const int m0 = blockIdx.y * T::BM, n0 = blockIdx.x * T::BN;
    const int k_tiles = (p.k + T::BK - 1) / T::BK;

    float acc[T::MB][T::NF][4];
#pragma unroll
    for (int i = 0; i < T::MB; ++i)
#pragma unroll
        for (int j = 0; j < T::NF; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    auto fetch = [&](int kt, int stage) {
        if (kt < k_tiles) {
            uint16_t* sa = smem + stage * (T::A_ELEMS + T::B_ELEMS);
            uint16_t* sb = sa + T::A_ELEMS;
            const int k0 = kt * T::BK;
            if constexpr (kAligned) {
                constexpr int A_CHUNKS = T::BM * T::BK / 8, B_CHUNKS = T::BK * T::BN / 8;
#pragma unroll
                for (int i = 0; i < (A_CHUNKS + 255) / 256; ++i) {
                    const int c = tid + i * 256;
                    if (A_CHUNKS % 256 == 0 || c < A_CHUNKS) {
                        const int r = c / (T::BK / 8), kc = (c % (T::BK / 8)) * 8;
                        const bool ok = m0 + r < p.m && k0 + kc < p.k;
                        const uint16_t* src = ok ? p.x + int64_t(m0 + r) * p.k + k0 + kc : p.x;
                        cp_async16_zfill(sa + r * T::A_LD + kc, src, ok);
                    }
                }
#pragma unroll
                for (int i = 0; i < (B_CHUNKS + 255) / 256; ++i) {
                    const int c = tid + i * 256;
                    if (B_CHUNKS % 256 == 0 || c < B_CHUNKS) {
                        const int r = c / (T::BN / 8), nc = (c % (T::BN / 8)) * 8;
                        const bool ok = k0 + r < p.k && n0 + nc < p.n;
                        const uint16_t* src = ok ? p.w + int64_t(k0 + r) * p.n + n0 + nc : p.w;
                        cp_async16_zfill(sb + r * T::B_LD + nc, src, ok);
                    }
                }
            } else {
                for (int i = tid; i < T::BM * T::BK; i += 256) {
                    const int r = i / T::BK, kc = i % T::BK;
                    const bool ok = m0 + r < p.m && k0 + kc < p.k;
                    sa[r * T::A_LD + kc] = ok ? p.x[int64_t(m0 + r) * p.k + k0 + kc] : uint16_t(0);
                }
                for (int i = tid; i < T::BK * T::BN; i += 256) {
                    const int r = i / T::BN, nc = i % T::BN;
                    const bool ok = k0 + r < p.k && n0 + nc < p.n;
                    sb[r * T::B_LD + nc] = ok ? p.w[int64_t(k0 + r) * p.n + n0 + nc] : uint16_t(0);
                }
            }
        }
        cp_async_commit();
    };

    auto compute = [&](int stage) {
        const uint16_t* sa = smem + stage * (T::A_ELEMS + T::B_ELEMS);
        const uint16_t* sb = sa + T::A_ELEMS;
#pragma unroll
        for (int s = 0; s < T::BK / 16 / T::WK; ++s) {
            const int kk = s * T::WK + wk;
            uint32_t a[T::MB][4];
#pragma unroll
            for (int i = 0; i < T::MB; ++i)
                ldmatrix_x4(a[i], sa + (wm * T::TM + i * 16 + (lane & 15)) * T::A_LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int j = 0; j < T::NF / 2; ++j) {
                uint32_t b[4];  // b0/b1 of n8 fragment 2j, then of 2j+1
                ldmatrix_x4_trans(b, sb + (kk * 16 + (lane & 15)) * T::B_LD + wn * T::TN + j * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int i = 0; i < T::MB; ++i) {
                    mma_16816<kBf16>(acc[i][2 * j], a[i], b[0], b[1]);
                    mma_16816<kBf16>(acc[i][2 * j + 1], a[i], b[2], b[3]);
                }
            }
        }
    };

#pragma unroll
    for (int s = 0; s < T::STAGES - 1; ++s) fetch(s, s);
    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<T::STAGES - 2>();
        __syncthreads();
        fetch(kt + T::STAGES - 1, (kt + T::STAGES - 1) % T::STAGES);
        compute(kt % T::STAGES);
    }
    cp_async_wait<0>();

    if constexpr (T::WK > 1) {  // k groups -> k group 0 through shared memory
        __syncthreads();
        float* red = reinterpret_cast<float*>(smem_raw);
        constexpr int PER = T::MB * T::NF * 4;
        constexpr int kSlots = T::WM * T::WN * 32;  // lanes adjacent: conflict-free
        const int slot = (wn * T::WM + wm) * 32 + lane;
        if (wk > 0) {
#pragma unroll
            for (int i = 0; i < T::MB; ++i)
#pragma unroll
                for (int j = 0; j < T::NF; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        red[((wk - 1) * PER + (i * T::NF + j) * 4 + e) * kSlots + slot] = acc[i][j][e];
        }
        __syncthreads();
        if (wk == 0) {
            for (int g = 1; g < T::WK; ++g)
#pragma unroll
                for (int i = 0; i < T::MB; ++i)
#pragma unroll
                    for (int j = 0; j < T::NF; ++j)
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            acc[i][j][e] += red[((g - 1) * PER + (i * T::NF + j) * 4 + e) * kSlots + slot];
        }
    }
    if (wk != 0) return;
    // C fragment: element e of fragment (i, j) is row lane/4 + 8*(e/2), column 2*(lane%4) + e%2.
#pragma unroll
    for (int i = 0; i < T::MB; ++i)
#pragma unroll
        for (int j = 0; j < T::NF; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + wm * T::TM + i * 16 + lane / 4 + 8 * h;
                const int col = n0 + wn * T::TN + j * 8 + 2 * (lane % 4);
                if (row >= p.m) continue;
                float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (p.bias) {
                    if (col < p.n) v0 += to_f32<kBf16>(p.bias[col]);
                    if (col + 1 < p.n) v1 += to_f32<kBf16>(p.bias[col + 1]);
                }
                uint16_t* out = p.y + int64_t(row) * p.n + col;
                const uint16_t h0 = from_f32<kBf16>(v0), h1 = from_f32<kBf16>(v1);
                if (col + 1 < p.n && (p.n % 2) == 0) {
                    *reinterpret_cast<uint32_t*>(out) = uint32_t(h0) | (uint32_t(h1) << 16);
                } else {
                    if (col < p.n) out[0] = h0;
                    if (col + 1 < p.n) out[1] = h1;
                }
            }
#endif
}

// One-time (per device and kernel) opt-in to more than 48 KiB of dynamic shared memory.
void ensure_smem(const void* kernel, int bytes, int device) {
    if (bytes <= 48 * 1024) return;
    static std::mutex mu;
    static std::set<std::pair<const void*, int>> done;
    std::lock_guard<std::mutex> lock(mu);
    if (done.count({kernel, device})) return;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err != cudaSuccess) {
        cudaGetLastError();
        fail(LLMN_STATUS_BACKEND_ERROR, "gemm_dense_kernel: cudaFuncSetAttribute(%d bytes of shared memory) failed: %s",
             bytes, cudaGetErrorString(err));
    }
    done.insert({kernel, device});
}

template <bool kBf16, class T>
void launch(const Context& ctx, const DenseParams& p, bool aligned) {
    auto kernel = aligned ? &gemm_dense_kernel<kBf16, T, true> : &gemm_dense_kernel<kBf16, T, false>;
    ensure_smem(reinterpret_cast<const void*>(kernel), T::SMEM, ctx.device());
    const dim3 grid(unsigned((p.n + T::BN - 1) / T::BN), unsigned((p.m + T::BM - 1) / T::BM));
    if (grid.y > 65535u)
        fail(LLMN_STATUS_UNSUPPORTED, "llmn_gemm_dense: m = %d needs more than 65535 row blocks", p.m);
    kernel<<<grid, 256, T::SMEM, static_cast<cudaStream_t>(ctx.stream())>>>(p);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        fail(LLMN_STATUS_BACKEND_ERROR, "CUDA kernel gemm_dense_kernel failed to launch: %s (%s)", cudaGetErrorString(err),
             cudaGetErrorName(err));
}

int sm_count_cached(int device) {
    static std::mutex mu;
    static int counts[64] = {};
    std::lock_guard<std::mutex> lock(mu);
    if (device < 0 || device >= 64) return cuda::sm_count(device);
    if (!counts[device]) counts[device] = cuda::sm_count(device);
    return counts[device];
}

template <bool kBf16>
void dispatch(const Context& ctx, const DenseParams& p, bool aligned) {
    if (p.m > 64) return launch<kBf16, TileLarge>(ctx, p, aligned);
    if (p.m > 16) return launch<kBf16, TileMedium>(ctx, p, aligned);
    const int64_t sms = sm_count_cached(ctx.device());
    if ((p.n + 63) / 64 >= sms) return launch<kBf16, TileSmall64>(ctx, p, aligned);
    if ((p.n + 31) / 32 >= sms) return launch<kBf16, TileSmall32>(ctx, p, aligned);
    return launch<kBf16, TileSmall16>(ctx, p, aligned);
}

}  // namespace

void gemm_dense_cuda(const Context& ctx, const GemmDenseArgs& a) {
    const llmn_dtype dt = a.x->dtype();
    if (dt != LLMN_DTYPE_F16 && dt != LLMN_DTYPE_BF16)
        fail(LLMN_STATUS_UNSUPPORTED, "llmn_gemm_dense on CUDA supports f16 and bf16, not %s", dtype_name(dt));
    if (a.m <= 0) return;
    if (a.m > 0x7fffffff || a.n > 0x7fffffff || a.k > 0x7fffffff)
        fail(LLMN_STATUS_UNSUPPORTED, "llmn_gemm_dense on CUDA: m, k and n must each be below 2^31");
    int major = 0;
    cudaError_t err = cudaSetDevice(ctx.device());
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx.device());
    if (err != cudaSuccess) {
        cudaGetLastError();
        fail(LLMN_STATUS_BACKEND_ERROR, "llmn_gemm_dense: %s", cudaGetErrorString(err));
    }
    if (major < 8) fail(LLMN_STATUS_UNSUPPORTED, "llmn_gemm_dense on CUDA needs compute capability 8.0 or newer");
    DenseParams p{};
    p.x = static_cast<const uint16_t*>(a.x->data());
    p.w = static_cast<const uint16_t*>(a.w->data());
    p.bias = a.bias ? static_cast<const uint16_t*>(a.bias->data()) : nullptr;
    p.y = static_cast<uint16_t*>(a.y->data());
    p.m = static_cast<int>(a.m);
    p.n = static_cast<int>(a.n);
    p.k = static_cast<int>(a.k);
    const bool aligned = a.k % 8 == 0 && a.n % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(p.w) % 16 == 0;
    if (dt == LLMN_DTYPE_BF16) dispatch<true>(ctx, p, aligned);
    else dispatch<false>(ctx, p, aligned);
}

}  // namespace llmn
