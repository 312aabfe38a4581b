// AVX-512 (F + F16C conversions on zmm) work-item kernel for f16 K and V: the AVX2 kernel's design
// (decode_attention_avx2.cpp: same tiles, masking, online softmax, prefetch schedule) at twice the
// vector width, for machines that have it. Why a separate kernel: decode attention does 2 x head_dim
// multiply-adds per key and query row, which for a GQA group of 4 is 128 ymm FMAs per 512 bytes of
// K+V. On the 2-core Zen 5 dev box (about 55-60 GB/s streaming read) that kept the AVX2 kernel
// compute bound at well under the streaming bandwidth; zmm halves the instruction count.
//  - q.k: row tiles of 4/2/1 rows x 4/8/16 keys = 16 independent zmm accumulators (FMA latency x
//    throughput is 8 on Zen 4/5, so 16 leaves slack for the loads and conversions), reduced together
//    by one transpose-and-add tree (reduce16: 45 shuffles/adds for 16 scores; folding each to ymm
//    and using the AVX2 hadd tree was 12% slower on L2-resident data).
//  - p.v: 64-channel chunks (32/16-channel tails for head_dim 80/96) x 4/2/1 rows, unrolled over keys
//    to 16 accumulators (one p broadcast per 4 FMAs; 32-channel chunks were ~10% slower in L2),
//    partial sums added in a fixed order: bitwise reproducible.
//  - prefetch (T1) of the next tile's rows, spread: K lines inside the q.k loop, V lines inside p.v.
//  - head_dim 64 and 128 are template instances with compile-time loop bounds, and a row whose tile is
//    fully visible with no soft-cap / ALiBi skips the mask pass of the softmax (same values): one thread,
//    KV cache-resident, 1 x 4k, three alternating rounds: 613-677 -> 567-588 us (2026-12-06 late).
// Measured single-threaded (thread CPU time, same process, 1 x 4k Llama-3-8B shape): L2-resident
// 1 x 256: AVX2 61 us, this kernel 36 us; from DRAM (16 rotated copies) AVX2 1.0-1.2 ms, this
// kernel 0.76-0.81 ms.
// Only this file's functions are compiled with AVX-512 flags, and all of them have internal linkage
// (no inline function shared with the AVX2 files, which would let the linker pick a zmm copy).
#include "decode_attention_cpu.hpp"
#include "../../core/per_thread.hpp"

#include "decode_attention_avx512_math.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace llmn::attn_cpu {

namespace {

using namespace avx512_math;

inline __m512 load_h16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

constexpr int kStride = kTileKeys + 16;  // score row pitch (floats)

// Prefetch to L2 (T1): measured single-threaded on 1 x 4k from DRAM, T1 / T2 / NTA within noise of
// each other, T0 about 10% slower, none 2.4x slower.
inline void pfx(const void* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }

// Scores of RT rows x KT keys (RT * KT = 16) into s[r * kStride + t + j] for j < valid; also
// prefetches pf[0 .. npf) (rows of the next tile).
template <int RT, int KT, int DC>
inline void qk_block(const float* q, int d_rt, const uint16_t* const* k, float* s, int t, int valid,
                     const uint16_t* const* pf, int npf) {
    static_assert(RT * KT == 16, "16 accumulators");
    const int D = DC > 0 ? DC : d_rt;
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    for (int c = 0; c < D; c += 16) {
        // one 64-byte line of each of the next tile's K rows per 32 channels, spread over the loop
        if ((c & 31) == 0)
            for (int j = 0; j < npf; ++j) pfx(pf[j] + c);
        __m512 kv[KT];
        for (int j = 0; j < KT; ++j) kv[j] = load_h16(k[j] + c);
        for (int r = 0; r < RT; ++r) {
            __m512 qv = _mm512_loadu_ps(q + size_t(r) * D + c);
            __asm__("" : "+v"(qv));  // one load per row, not one per FMA
            for (int j = 0; j < KT; ++j) acc[r * KT + j] = _mm512_fmadd_ps(qv, kv[j], acc[r * KT + j]);
        }
    }
    // Scores leave from the register, one masked store per row (avx512_math). Replaced a round trip
    // through a stack array and 16 scalar copies: q.k 8.7 -> 8.1-8.2 ns per key, single thread, hot KV.
    store_score_rows<RT, KT>(s, kStride, t, valid, score_lanes(acc));
}

template <int RT, int KT, int DC>
inline void qk_rows(const float* q, int D, const uint16_t* const* krows, int n, float* s,
                    const uint16_t* const* pf = nullptr, int npf = 0) {
    for (int t = 0; t < n; t += KT) {
        const uint16_t* k[KT];
        for (int j = 0; j < KT; ++j) k[j] = krows[std::min(t + j, n - 1)];  // tail: recompute the last key
        qk_block<RT, KT, DC>(q, D, k, s, t, std::min(KT, n - t), npf > t ? pf + t : nullptr, std::max(0, std::min(KT, npf - t)));
    }
}

// acc[r][c .. c + 16 * CW) += sum_t p[r][t] * v[t][...] for RT rows, U-way unroll over keys.
template <int RT, int CW, int DC>
inline void pv_chunk(const float* p, const uint16_t* const* vrows, int n, int d_rt, int c, float* acc,
                     const uint16_t* const* pf, int npf) {
    const int D = DC > 0 ? DC : d_rt;
    constexpr int U = 16 / (RT * CW);
    __m512 a[U][RT][CW];
    for (int u = 0; u < U; ++u)
        for (int r = 0; r < RT; ++r)
            for (int w = 0; w < CW; ++w) a[u][r][w] = _mm512_setzero_ps();
    int t = 0;
    for (; t + U <= n; t += U) {
        for (int j = t; j < std::min(t + U, npf); ++j)  // the 64-byte lines of each next-tile V row this chunk covers
            for (int w = 0; w < CW; w += 2) pfx(pf[j] + c + 16 * w);
        for (int u = 0; u < U; ++u) {
            __m512 v[CW];
            for (int w = 0; w < CW; ++w) v[w] = load_h16(vrows[t + u] + c + 16 * w);
            for (int r = 0; r < RT; ++r) {
                const __m512 pb = _mm512_set1_ps(p[size_t(r) * kStride + t + u]);
                for (int w = 0; w < CW; ++w) a[u][r][w] = _mm512_fmadd_ps(pb, v[w], a[u][r][w]);
            }
        }
    }
    for (; t < n; ++t) {
        if (t < npf)
            for (int w = 0; w < CW; w += 2) pfx(pf[t] + c + 16 * w);
        __m512 v[CW];
        for (int w = 0; w < CW; ++w) v[w] = load_h16(vrows[t] + c + 16 * w);
        for (int r = 0; r < RT; ++r) {
            const __m512 pb = _mm512_set1_ps(p[size_t(r) * kStride + t]);
            for (int w = 0; w < CW; ++w) a[0][r][w] = _mm512_fmadd_ps(pb, v[w], a[0][r][w]);
        }
    }
    for (int r = 0; r < RT; ++r)
        for (int w = 0; w < CW; ++w) {
            __m512 s = a[0][r][w];
            for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, a[u][r][w]);
            float* ar = acc + size_t(r) * D + c + 16 * w;
            _mm512_storeu_ps(ar, _mm512_add_ps(_mm512_loadu_ps(ar), s));
        }
}

template <int RT, int DC>
inline void pv_rows(const float* p, const uint16_t* const* vrows, int n, int d_rt, float* acc,
                    const uint16_t* const* pf = nullptr, int npf = 0) {
    const int D = DC > 0 ? DC : d_rt;
    int c = 0;
    for (; c + 64 <= D; c += 64) pv_chunk<RT, 4, DC>(p, vrows, n, D, c, acc, pf, npf);
    for (; c + 32 <= D; c += 32) pv_chunk<RT, 2, DC>(p, vrows, n, D, c, acc, pf, npf);
    if (c < D) pv_chunk<RT, 1, DC>(p, vrows, n, D, c, acc, pf, npf);  // head_dim 80 / 96: 16-channel tail
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
    // Row pointers of a ring of PD + 1 tiles: the current one and the next PD ones (the prefetch
    // target is PD tiles ahead). PD = 2 measured no better than 1 (single thread, 1 x 4k, DRAM).
    constexpr int PD = 1, kRing = PD + 1;
    const uint16_t* kr[kRing][kTileKeys];
    const uint16_t* vr[kRing][kTileKeys];
    int nk[kRing] = {};
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
    const __m512 ninf = _mm512_set1_ps(NEG_INF);
    auto tile_n = [&](int64_t t0) { return int(std::min<int64_t>(kTileKeys, std::max<int64_t>(0, it.key_end - t0))); };
    for (int i = 0; i < PD; ++i) {
        nk[i] = tile_n(it.key_begin + int64_t(i) * kTileKeys);
        if (nk[i] > 0) rows_of(it.key_begin + int64_t(i) * kTileKeys, nk[i], kr[i], vr[i]);
        if (i > 0)  // nobody prefetched these tiles during a previous tile
            for (int j = 0; j < nk[i]; ++j)
                for (int c = 0; c < D; c += 32) {
                    pfx(kr[i][j] + c);
                    pfx(vr[i][j] + c);
                }
    }
    int cur = 0;
    for (int64_t t0 = it.key_begin; t0 < it.key_end; t0 += kTileKeys) {
        const int n = nk[cur];
        const uint16_t* const* K = kr[cur];
        const uint16_t* const* V = vr[cur];
        const int ps = (cur + PD) % kRing;
        const int n_cur = nk[ps] = tile_n(t0 + int64_t(PD) * kTileKeys);
        if (n_cur > 0) rows_of(t0 + int64_t(PD) * kTileKeys, n_cur, kr[ps], vr[ps]);
        const uint16_t* const* KN = kr[ps];
        const uint16_t* const* VN = vr[ps];

        // 1. scores (the first row tile also prefetches the next tile's K rows)
        int r = 0;
        for (; r + 4 <= R; r += 4)
            qk_rows<4, 4, DC>(it.q + size_t(r) * D, D, K, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
        for (; r + 2 <= R; r += 2)
            qk_rows<2, 8, DC>(it.q + size_t(r) * D, D, K, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);
        for (; r < R; ++r) qk_rows<1, 16, DC>(it.q + size_t(r) * D, D, K, n, S + size_t(r) * kStride, KN, r == 0 ? n_cur : 0);

        // 2. online softmax per row; S becomes the weights P (0 for masked keys)
        const int nv = (n + 15) & ~15;
        for (r = 0; r < R; ++r) {
            float* s = S + size_t(r) * kStride;
            const int64_t lo = std::max(it.row_lo[r], t0) - t0, hi = std::min(it.row_hi[r] + 1, t0 + n) - t0;
            if (lo >= hi) {
                for (int j = 0; j < nv; j += 16) _mm512_storeu_ps(s + j, _mm512_setzero_ps());
                continue;
            }
            const float tile_max = mask_row16(s, nv, t0, lo, hi, it.softcap, it.row_slope ? &it.row_slope[r] : nullptr, it.row_hi[r]);
            raise_row_max16(tile_max, m[size_t(r)], l[size_t(r)], acc.data() + size_t(r) * D, D);
            const __m512 vm = _mm512_set1_ps(m[size_t(r)]);
            __m512 vsum = _mm512_setzero_ps();
            for (int j = 0; j < nv; j += 16) {
                const __m512 x = _mm512_loadu_ps(s + j);
                const __mmask16 keep = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_OQ);
                const __m512 p = _mm512_maskz_mov_ps(keep, exp16(_mm512_sub_ps(x, vm)));
                _mm512_storeu_ps(s + j, p);
                vsum = _mm512_add_ps(vsum, p);
            }
            l[size_t(r)] += _mm512_reduce_add_ps(vsum);
        }

        // 3. acc += P V
        for (r = 0; r + 4 <= R; r += 4)
            pv_rows<4, DC>(S + size_t(r) * kStride, V, n, D, acc.data() + size_t(r) * D, VN, r == 0 ? n_cur : 0);
        for (; r + 2 <= R; r += 2)
            pv_rows<2, DC>(S + size_t(r) * kStride, V, n, D, acc.data() + size_t(r) * D, VN, r == 0 ? n_cur : 0);
        for (; r < R; ++r) pv_rows<1, DC>(S + size_t(r) * kStride, V, n, D, acc.data() + size_t(r) * D, VN, r == 0 ? n_cur : 0);
        cur = (cur + 1) % kRing;
    }

    for (int r = 0; r < R; ++r) {
        float* o = it.o + size_t(r) * D;
        const float* ar = acc.data() + size_t(r) * D;
        if (l[size_t(r)] > 0.0f) {  // >= 1 once any key was visible
            const __m512 vl = _mm512_set1_ps(l[size_t(r)]);
            for (int d = 0; d < D; d += 16) _mm512_storeu_ps(o + d, _mm512_div_ps(_mm512_loadu_ps(ar + d), vl));
            it.lse[r] = m[size_t(r)] + std::log(l[size_t(r)]);
        } else {
            std::memset(o, 0, size_t(D) * sizeof(float));
            it.lse[r] = NEG_INF;
        }
    }
}

}  // namespace

void run_item_avx512(const Item& it) {
    // head_dim 64 and 128 (most models) get loops with compile-time trip counts; the others run the
    // same code with a runtime head_dim.
    if (it.head_dim % 16 != 0) {  // every head_dim the cache accepts is a multiple of 16; keep the kernel total
        run_item_avx2(it);
        return;
    }
    if (it.head_dim == 128) run_item_impl<128>(it);
    else if (it.head_dim == 64) run_item_impl<64>(it);
    else run_item_impl<0>(it);
}

}  // namespace llmn::attn_cpu
