// arm64 NEON work-item kernel for f16 K and V (same contract and masking as run_item_scalar): the AVX2
// kernel's design (decode_attention_avx2.cpp: tiles of 64 keys, q.k row tiles of 4/2/1 rows x 2/4/8 keys
// with 8 accumulators, online softmax with the same exp polynomial, p.v row tiles over 16 channels, the
// next tile's rows prefetched while this one computes) at NEON's 4 lanes. Why: linux-arm64 otherwise runs
// the scalar kernel, which converts every K/V element once per query row. NEON (ASIMD with the f16
// conversions) is part of every ARMv8-A core, so this kernel needs no run-time check beyond the ISA.
// Never run on arm64 hardware (only under qemu-user, where timings mean nothing): speed unmeasured.
// Results are bitwise repeatable (fixed reduction orders); they are not the AVX2 kernel's bits (4-lane
// partial sums), and the tests hold them to the float64 reference's bound like every kernel.
#include "../../core/per_thread.hpp"
#include "decode_attention_cpu.hpp"

#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace llmn::attn_cpu {

namespace {

constexpr int kStride = kTileKeys + 8;  // score row pitch (floats)

inline float32x4_t load_h4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

// e^x, the polynomial and range handling of avx2_math::exp_ps (0 below -87.3).
inline float32x4_t exp4(float32x4_t x) {
    const uint32x4_t under = vcltq_f32(x, vdupq_n_f32(-87.3365447505531f));
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3365447505531f)), vdupq_n_f32(88.3762626647949f));
    const float32x4_t fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    x = vfmsq_f32(x, fx, vdupq_n_f32(0.693359375f));
    x = vfmsq_f32(x, fx, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t y = vdupq_n_f32(1.9875691500e-4f);
    y = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), y, x);
    y = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), y, x);
    y = vfmaq_f32(x, y, vmulq_f32(x, x));
    y = vaddq_f32(y, vdupq_n_f32(1.0f));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(fx), vdupq_n_s32(127)), 23);
    const float32x4_t r = vmulq_f32(y, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(r), under));
}

// c * tanh(s / c) as avx2_math::softcap_ps.
inline float32x4_t softcap4(float32x4_t s, float32x4_t c) {
    const float32x4_t y = vdivq_f32(s, c);
    const float32x4_t e = exp4(vmulq_f32(vabsq_f32(y), vdupq_n_f32(-2.0f)));
    const float32x4_t one = vdupq_n_f32(1.0f);
    const float32x4_t t = vdivq_f32(vsubq_f32(one, e), vaddq_f32(one, e));
    const uint32x4_t sign = vandq_u32(vreinterpretq_u32_f32(y), vdupq_n_u32(0x80000000u));
    return vmulq_f32(c, vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(t), sign)));
}

// [sum(a[0]), sum(a[1]), sum(a[2]), sum(a[3])] by a fixed pairwise tree.
inline float32x4_t reduce4(const float32x4_t* a) {
    return vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
}

// Scores of RT rows x KT keys (RT * KT = 8) into s[r * kStride + t + j] for j < valid.
template <int RT, int KT, int DC>
inline void qk_block(const float* q, int d_rt, const uint16_t* const* k, float* s, int t, int valid) {
    static_assert(RT * KT == 8, "8 accumulators");
    const int D = DC > 0 ? DC : d_rt;
    float32x4_t acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = vdupq_n_f32(0.0f);
    for (int c = 0; c < D; c += 4) {
        float32x4_t kv[KT];
        for (int j = 0; j < KT; ++j) kv[j] = load_h4(k[j] + c);
        for (int r = 0; r < RT; ++r) {
            const float32x4_t qv = vld1q_f32(q + size_t(r) * D + c);
            for (int j = 0; j < KT; ++j) acc[r * KT + j] = vfmaq_f32(acc[r * KT + j], qv, kv[j]);
        }
    }
    float out[8];
    vst1q_f32(out, reduce4(acc));  // lane i = accumulator i = row i / KT, key i % KT
    vst1q_f32(out + 4, reduce4(acc + 4));
    for (int r = 0; r < RT; ++r)
        for (int j = 0; j < valid; ++j) s[size_t(r) * kStride + t + j] = out[r * KT + j];
}

inline void prefetch_row(const uint16_t* row, int bytes) {
    const char* p = reinterpret_cast<const char*>(row);
    for (int b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 2);
}

template <int RT, int KT, int DC>
inline void qk_rows(const float* q, int d_rt, const uint16_t* const* krows, int n, float* s, const uint16_t* const* pf,
                    int npf) {
    const int D = DC > 0 ? DC : d_rt;
    for (int t = 0; t < n; t += KT) {
        for (int j = t; j < std::min(t + KT, npf); ++j) prefetch_row(pf[j], D * 2);
        const uint16_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block<RT, KT, DC>(q, D, k, s, t, std::min(KT, n - t));
    }
}

// acc[r][c..c+16) += sum_t p[r][t] * v[t][c..c+16) for RT rows; U-way unroll over keys keeps 16
// accumulators for every RT (partial sums added in a fixed order at the end).
template <int RT, int DC>
inline void pv_rows(const float* p, const uint16_t* const* vrows, int n, int d_rt, float* acc, const uint16_t* const* pf,
                    int npf) {
    const int D = DC > 0 ? DC : d_rt;
    constexpr int U = RT == 4 ? 1 : (RT == 2 ? 2 : 4);
    for (int c = 0; c < D; c += 16) {
        float32x4_t a[U][RT][4];
        for (int u = 0; u < U; ++u)
            for (int r = 0; r < RT; ++r)
                for (int w = 0; w < 4; ++w) a[u][r][w] = vdupq_n_f32(0.0f);
        int t = 0;
        for (; t + U <= n; t += U) {
            if ((c & 31) == 0)  // one 64-byte line of each next-tile V row per 32 channels
                for (int j = t; j < std::min(t + U, npf); ++j) __builtin_prefetch(pf[j] + c, 0, 2);
            for (int u = 0; u < U; ++u) {
                float32x4_t v[4];
                for (int w = 0; w < 4; ++w) v[w] = load_h4(vrows[t + u] + c + 4 * w);
                for (int r = 0; r < RT; ++r) {
                    const float32x4_t pb = vdupq_n_f32(p[size_t(r) * kStride + t + u]);
                    for (int w = 0; w < 4; ++w) a[u][r][w] = vfmaq_f32(a[u][r][w], pb, v[w]);
                }
            }
        }
        for (; t < n; ++t) {
            float32x4_t v[4];
            for (int w = 0; w < 4; ++w) v[w] = load_h4(vrows[t] + c + 4 * w);
            for (int r = 0; r < RT; ++r) {
                const float32x4_t pb = vdupq_n_f32(p[size_t(r) * kStride + t]);
                for (int w = 0; w < 4; ++w) a[0][r][w] = vfmaq_f32(a[0][r][w], pb, v[w]);
            }
        }
        for (int r = 0; r < RT; ++r) {
            float* ar = acc + size_t(r) * D + c;
            for (int w = 0; w < 4; ++w) {
                float32x4_t sum = a[0][r][w];
                for (int u = 1; u < U; ++u) sum = vaddq_f32(sum, a[u][r][w]);
                vst1q_f32(ar + 4 * w, vaddq_f32(vld1q_f32(ar + 4 * w), sum));
            }
        }
    }
}

// Soft-cap, ALiBi (slope * (key - qpos)) and the visible range [lo, hi) applied to a row's scores s[0, nv)
// of the tile starting at key t0 (masked keys become -inf); returns their maximum (avx2_math::mask_row).
inline float mask_row(float* s, int nv, int64_t t0, int64_t lo, int64_t hi, float softcap, const float* slope, int64_t qpos) {
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    float32x4_t vmax = vdupq_n_f32(NEG_INF);
    if (softcap <= 0.0f && !slope && lo == 0 && hi == nv) {
        for (int j = 0; j < nv; j += 4) vmax = vmaxq_f32(vmax, vld1q_f32(s + j));
        return vmaxvq_f32(vmax);
    }
    const float lane_init[4] = {0, 1, 2, 3};
    const float32x4_t lane = vld1q_f32(lane_init);
    const float32x4_t cap = vdupq_n_f32(softcap);
    const float32x4_t vlo = vdupq_n_f32(float(lo)), vhi = vdupq_n_f32(float(hi));
    for (int j = 0; j < nv; j += 4) {
        float32x4_t x = vld1q_f32(s + j);
        if (softcap > 0.0f) x = softcap4(x, cap);
        if (slope) {
            const float32x4_t rel = vaddq_f32(vdupq_n_f32(float(t0 + j - qpos)), lane);  // exact: |.| < 2^24
            x = vfmaq_f32(x, vdupq_n_f32(*slope), rel);
        }
        const float32x4_t idx = vaddq_f32(vdupq_n_f32(float(j)), lane);
        const uint32x4_t valid = vandq_u32(vcgeq_f32(idx, vlo), vcltq_f32(idx, vhi));
        x = vbslq_f32(valid, x, vdupq_n_f32(NEG_INF));
        vst1q_f32(s + j, x);
        vmax = vmaxq_f32(vmax, x);
    }
    return vmaxvq_f32(vmax);
}

template <int DC>
void run_item_impl(const Item& it) {
    const int D = DC > 0 ? DC : it.head_dim, R = it.rows, bs = it.block_size;
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    struct Scratch {
        std::vector<float> acc, m, l, sbuf;
    };  // per thread (core/per_thread.hpp)
    Scratch& w_ = per_thread<Scratch>();
    auto &acc = w_.acc, &m = w_.m, &l = w_.l, &sbuf = w_.sbuf;
    acc.assign(size_t(R) * D, 0.0f);
    m.assign(size_t(R), NEG_INF);
    l.assign(size_t(R), 0.0f);
    sbuf.assign(size_t(R) * kStride, 0.0f);
    float* S = sbuf.data();
    const uint16_t* kr[2][kTileKeys];
    const uint16_t* vr[2][kTileKeys];
    auto rows_of = [&](int64_t t0, int n, const uint16_t** kp, const uint16_t** vp) {
        for (int j = 0; j < n;) {
            const int64_t t = t0 + j;
            const int row = int(t % bs);
            const int cnt = std::min(n - j, bs - row);
            const uint8_t* tile = it.layer_base + int64_t(it.blocks[t / bs]) * it.block_stride + it.head_off;
            const uint16_t* k = reinterpret_cast<const uint16_t*>(tile + it.k_data_off) + size_t(row) * D;
            const uint16_t* v = reinterpret_cast<const uint16_t*>(tile + it.v_data_off) + size_t(row) * D;
            for (int i = 0; i < cnt; ++i) {
                kp[j + i] = k + size_t(i) * D;
                vp[j + i] = v + size_t(i) * D;
            }
            j += cnt;
        }
    };
    int cur = 0;
    int n_cur = int(std::min<int64_t>(kTileKeys, it.key_end - it.key_begin));
    if (n_cur > 0) rows_of(it.key_begin, n_cur, kr[0], vr[0]);
    for (int64_t t0 = it.key_begin; t0 < it.key_end; t0 += kTileKeys) {
        const int n = n_cur;
        const uint16_t* const* K = kr[cur];
        const uint16_t* const* V = vr[cur];
        const int64_t t1 = t0 + kTileKeys;
        n_cur = int(std::min<int64_t>(kTileKeys, std::max<int64_t>(0, it.key_end - t1)));
        if (n_cur > 0) rows_of(t1, n_cur, kr[cur ^ 1], vr[cur ^ 1]);
        const uint16_t* const* KN = kr[cur ^ 1];
        const uint16_t* const* VN = vr[cur ^ 1];

        // 1. scores (the first row tile also prefetches the next tile's K rows)
        int r = 0;
        for (; r + 4 <= R; r += 4)
            qk_rows<4, 2, DC>(it.q + size_t(r) * D, D, K, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
        for (; r + 2 <= R; r += 2)
            qk_rows<2, 4, DC>(it.q + size_t(r) * D, D, K, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
        for (; r < R; ++r) qk_rows<1, 8, DC>(it.q + size_t(r) * D, D, K, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);

        // 2. online softmax per row; S becomes the weights P (0 for masked keys)
        const int nv = (n + 3) & ~3;
        for (r = 0; r < R; ++r) {
            float* s = S + size_t(r) * kStride;
            const int64_t lo = std::max(it.row_lo[r], t0) - t0, hi = std::min(it.row_hi[r] + 1, t0 + n) - t0;
            if (lo >= hi) {
                for (int j = 0; j < nv; j += 4) vst1q_f32(s + j, vdupq_n_f32(0.0f));
                continue;
            }
            const float tile_max = mask_row(s, nv, t0, lo, hi, it.softcap, it.row_slope ? &it.row_slope[r] : nullptr, it.row_hi[r]);
            float* ar = acc.data() + size_t(r) * D;
            float& mr = m[size_t(r)];
            float& lr = l[size_t(r)];
            if (tile_max > mr) {  // rescale the row when its maximum grows (not on its first visible tile)
                if (mr != NEG_INF) {
                    const float alpha = std::exp(mr - tile_max);
                    const float32x4_t va = vdupq_n_f32(alpha);
                    for (int d = 0; d < D; d += 4) vst1q_f32(ar + d, vmulq_f32(vld1q_f32(ar + d), va));
                    lr *= alpha;
                }
                mr = tile_max;
            }
            const float32x4_t vm = vdupq_n_f32(mr);
            float32x4_t vsum = vdupq_n_f32(0.0f);
            for (int j = 0; j < nv; j += 4) {
                const float32x4_t x = vld1q_f32(s + j);
                const uint32x4_t keep = vcgtq_f32(x, vdupq_n_f32(NEG_INF));  // false for -inf and NaN, as AVX2's NEQ_OQ
                const float32x4_t p = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(exp4(vsubq_f32(x, vm))), keep));
                vst1q_f32(s + j, p);
                vsum = vaddq_f32(vsum, p);
            }
            lr += vaddvq_f32(vsum);
        }

        // 3. acc += P V
        for (r = 0; r + 4 <= R; r += 4)
            pv_rows<4, DC>(S + size_t(r) * kStride, V, n, D, acc.data() + size_t(r) * D, VN, r == 0 ? n_cur : 0);
        for (; r + 2 <= R; r += 2)
            pv_rows<2, DC>(S + size_t(r) * kStride, V, n, D, acc.data() + size_t(r) * D, VN, r == 0 ? n_cur : 0);
        for (; r < R; ++r) pv_rows<1, DC>(S + size_t(r) * kStride, V, n, D, acc.data() + size_t(r) * D, VN, r == 0 ? n_cur : 0);
        cur ^= 1;
    }

    for (int r = 0; r < R; ++r) {
        float* o = it.o + size_t(r) * D;
        const float* ar = acc.data() + size_t(r) * D;
        if (l[size_t(r)] > 0.0f) {  // >= 1 once any key was visible
            const float32x4_t vl = vdupq_n_f32(l[size_t(r)]);
            for (int d = 0; d < D; d += 4) vst1q_f32(o + d, vdivq_f32(vld1q_f32(ar + d), vl));
            it.lse[r] = m[size_t(r)] + std::log(l[size_t(r)]);
        } else {
            std::memset(o, 0, size_t(D) * sizeof(float));
            it.lse[r] = NEG_INF;
        }
    }
}

}  // namespace

void run_item_neon(const Item& it) {
    if (it.head_dim == 128) run_item_impl<128>(it);
    else if (it.head_dim == 64) run_item_impl<64>(it);
    else run_item_impl<0>(it);
}

}  // namespace llmn::attn_cpu
