// AVX2 + FMA + F16C work-item kernel (same contract and masking as run_item_scalar). Design, per
// tile of up to 64 keys of one (sequence, kv head, split):
//  - q.k: row tiles of 4/2/1 query rows x 2/4/8 keys, always 8 independent ymm accumulators over
//    head_dim/8 steps, reduced by one hadd tree into 8 scores. K chunks are converted by F16C as
//    they are loaded and reused from registers by every row of the row tile; the tile's K rows stay
//    in L1 across row tiles, so memory delivers each K row once per GQA group.
//  - softmax: soft-cap, ALiBi and the causal/window mask vectorised per row; masked scores become
//    -inf and their weights exactly 0; the accumulator is rescaled only when the row max grows.
//  - p.v: row tiles of 4/2/1 rows x 16 channels with 8 accumulators (short row tiles unroll over
//    keys instead), V chunks converted once per row tile and broadcast weights from L1.
//  - next tile's K/V rows are prefetched (to L2, hint T1) while this tile computes, spread over the
//    q.k and p.v loops: blocks are scattered in the pool, so the hardware prefetcher restarts at
//    every block boundary, and a burst of hundreds of prefetches would stall on the miss queues.
//    (Measured on Zen 2, single thread, 8x4k: no prefetch 19.7 ms, T0 burst 20+ ms, T0 spread
//    16.3 ms, T1 spread 15.5 ms, NTA 29 ms.)
//  - head_dim 64 / 128 instantiated with compile-time loop bounds, and no mask pass for rows whose tile
//    is fully visible without soft-cap / ALiBi, as in the AVX-512 kernel (same values). On the Zen 5 dev
//    box running this kernel (one thread, cache-resident KV, four alternating rounds) the change was
//    within noise (1 x 4k 985-1138 -> 941-1140 us); never measured on an AVX2-only CPU.
#include "decode_attention_avx2_math.hpp"
#include "../../core/per_thread.hpp"
#include "decode_attention_cpu.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace llmn::attn_cpu {

namespace {

using namespace avx2_math;

inline __m256 load_h8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

constexpr int kStride = kTileKeys + 8;  // score row pitch (floats)

// Scores of RT rows x KT keys (RT * KT = 8) into s[r * kStride + t + j] for j < valid.
template <int RT, int KT, int DC>
inline void qk_block(const float* q, int d_rt, const uint16_t* const* k, float* s, int t, int valid) {
    static_assert(RT * KT == 8, "8 accumulators");
    const int D = DC > 0 ? DC : d_rt;
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int c = 0; c < D; c += 8) {
        if constexpr (RT == 1) {
            const __m256 qv = _mm256_loadu_ps(q + c);
            for (int j = 0; j < KT; ++j) acc[j] = _mm256_fmadd_ps(qv, load_h8(k[j] + c), acc[j]);
        } else {
            __m256 kv[KT];
            for (int j = 0; j < KT; ++j) kv[j] = load_h8(k[j] + c);
            for (int r = 0; r < RT; ++r) {
                __m256 qv = _mm256_loadu_ps(q + size_t(r) * D + c);
                // Keep q in a register: folded into each FMA it would be loaded KT times, and the
                // loop would be bound by the two load ports instead of the FMA units.
                __asm__("" : "+x"(qv));
                for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm256_fmadd_ps(qv, kv[j], acc[r * KT + j]);
            }
        }
    }
    // Whole rows straight from the register (store_score_rows8). Measured with this kernel on the Zen 5
    // box (not on an AVX2-only CPU): one thread, hot KV, 509 keys, 25.0-26.4 -> 24.2-24.5 ns per key; the
    // AVX-512 kernel got the same change.
    store_score_rows8<RT, KT>(s, kStride, t, valid, reduce8(acc));  // lane r * KT + j = row r, key j
}

inline void prefetch_row(const uint16_t* row, int bytes) {
    const char* p = reinterpret_cast<const char*>(row);
    for (int b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T1);
}

// pf/npf: rows of the next tile to prefetch, spread over this loop (a burst of hundreds of
// prefetches would stall on the miss queue and serialise memory and compute).
template <int RT, int KT, int DC>
inline void qk_rows(const float* q, int d_rt, const uint16_t* const* krows, int n, float* s,
                    const uint16_t* const* pf = nullptr, int npf = 0) {
    const int D = DC > 0 ? DC : d_rt;
    for (int t = 0; t < n; t += KT) {
        for (int j = t; j < std::min(t + KT, npf); ++j) prefetch_row(pf[j], D * 2);
        const uint16_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block<RT, KT, DC>(q, D, k, s, t, std::min(KT, n - t));
    }
}

// acc[r][c..c+16) += sum_t p[r][t] * v[t][c..c+16) for RT rows; U-way unroll over keys keeps
// 8 independent accumulators for every RT (partial sums added in a fixed order at the end).
template <int RT, int DC>
inline void pv_rows(const float* p, const uint16_t* const* vrows, int n, int d_rt, float* acc,
                    const uint16_t* const* pf = nullptr, int npf = 0) {
    const int D = DC > 0 ? DC : d_rt;
    constexpr int U = RT == 4 ? 1 : (RT == 2 ? 2 : 4);
    for (int c = 0; c < D; c += 16) {
        __m256 a[U][RT][2];
        for (int u = 0; u < U; ++u)
            for (int r = 0; r < RT; ++r) a[u][r][0] = a[u][r][1] = _mm256_setzero_ps();
        int t = 0;
        for (; t + U <= n; t += U) {
            if ((c & 31) == 0)  // one 64-byte line of each next-tile V row per 32 channels
                for (int j = t; j < std::min(t + U, npf); ++j)
                    _mm_prefetch(reinterpret_cast<const char*>(pf[j] + c), _MM_HINT_T1);
            for (int u = 0; u < U; ++u) {
                const __m256 v0 = load_h8(vrows[t + u] + c), v1 = load_h8(vrows[t + u] + c + 8);
                for (int r = 0; r < RT; ++r) {
                    const __m256 pb = _mm256_broadcast_ss(p + size_t(r) * kStride + t + u);
                    a[u][r][0] = _mm256_fmadd_ps(pb, v0, a[u][r][0]);
                    a[u][r][1] = _mm256_fmadd_ps(pb, v1, a[u][r][1]);
                }
            }
        }
        for (; t < n; ++t) {
            const __m256 v0 = load_h8(vrows[t] + c), v1 = load_h8(vrows[t] + c + 8);
            for (int r = 0; r < RT; ++r) {
                const __m256 pb = _mm256_broadcast_ss(p + size_t(r) * kStride + t);
                a[0][r][0] = _mm256_fmadd_ps(pb, v0, a[0][r][0]);
                a[0][r][1] = _mm256_fmadd_ps(pb, v1, a[0][r][1]);
            }
        }
        for (int r = 0; r < RT; ++r) {
            __m256 s0 = a[0][r][0], s1 = a[0][r][1];
            for (int u = 1; u < U; ++u) {
                s0 = _mm256_add_ps(s0, a[u][r][0]);
                s1 = _mm256_add_ps(s1, a[u][r][1]);
            }
            float* ar = acc + size_t(r) * D + c;
            _mm256_storeu_ps(ar, _mm256_add_ps(_mm256_loadu_ps(ar), s0));
            _mm256_storeu_ps(ar + 8, _mm256_add_ps(_mm256_loadu_ps(ar + 8), s1));
        }
    }
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
        // Next tile's row pointers + prefetch, overlapping this tile's compute.
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
        const int nv = (n + 7) & ~7;
        for (r = 0; r < R; ++r) {
            float* s = S + size_t(r) * kStride;
            const int64_t lo = std::max(it.row_lo[r], t0) - t0, hi = std::min(it.row_hi[r] + 1, t0 + n) - t0;
            if (lo >= hi) {
                for (int j = 0; j < nv; j += 8) _mm256_storeu_ps(s + j, _mm256_setzero_ps());
                continue;
            }
            const float tile_max = mask_row(s, nv, t0, lo, hi, it.softcap, it.row_slope ? &it.row_slope[r] : nullptr, it.row_hi[r]);
            float* ar = acc.data() + size_t(r) * D;
            raise_row_max(tile_max, m[size_t(r)], l[size_t(r)], ar, D);
            const __m256 vm = _mm256_set1_ps(m[size_t(r)]);
            __m256 vsum = _mm256_setzero_ps();
            for (int j = 0; j < nv; j += 8) {
                const __m256 x = _mm256_loadu_ps(s + j);
                const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(NEG_INF), _CMP_NEQ_OQ);
                const __m256 p = _mm256_and_ps(exp_ps(_mm256_sub_ps(x, vm)), keep);
                _mm256_storeu_ps(s + j, p);
                vsum = _mm256_add_ps(vsum, p);
            }
            l[size_t(r)] += hsum(vsum);
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
            const __m256 vl = _mm256_set1_ps(l[size_t(r)]);
            for (int d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_div_ps(_mm256_loadu_ps(ar + d), vl));
            it.lse[r] = m[size_t(r)] + std::log(l[size_t(r)]);
        } else {
            std::memset(o, 0, size_t(D) * sizeof(float));
            it.lse[r] = NEG_INF;
        }
    }
}

}  // namespace

// head_dim 64 and 128 (most models) get loops with compile-time trip counts; the others run the same
// code with a runtime head_dim.
void run_item_avx2(const Item& it) {
    if (it.head_dim == 128) run_item_impl<128>(it);
    else if (it.head_dim == 64) run_item_impl<64>(it);
    else run_item_impl<0>(it);
}

}  // namespace llmn::attn_cpu
