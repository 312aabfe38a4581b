// AVX2 + F16C block quantizers for KIVI INT4 / INT2 (quantize-on-fill of the CPU cache): the bytes of
// kv_kivi.hpp's kivi_quantize_k_block / kivi_quantize_v_block, 8 elements per step. Why: the scalar
// codec (software f16 conversions, a division and a rounding per element) made an append into a KIVI
// cache 4-7x slower than into an f16 cache. Every step is the scalar arithmetic on 8 lanes:
//  - min / max: vminps(lo, x) = lo < x ? lo : x and vmaxps(hi, x) = hi > x ? hi : x are kivi_min /
//    kivi_max. K reduces each channel over the tokens in token order (lanes = channels), exactly as
//    the scalar loop. V reduces a token's group across lanes, a different order: it only matters when
//    the extreme is a zero (+0 and -0 compare equal; the scalar rule keeps the later one), so a group
//    whose minimum or maximum is zero is redone by the scalar loop.
//  - scale: kivi_scale_f16 itself (one per group); the stored minimum is the f16 of an f16 value.
//  - codes: v = (x - mn) / scale in f32 (same IEEE operations), clamped to [0, qmax] before the
//    truncation, plus one when the exact fraction is >= 0.5 (kivi_code's rounding); scale 0 -> 0.
// Only this file's functions get AVX2 flags, and all helpers have internal linkage: kv_kivi.hpp's
// inline functions are not called here (an AVX2-compiled copy of them could be the one the linker
// keeps for every file); its definitions are restated below with F16C conversions.
#include "kv_kivi_stage.hpp"

#include <llmnative/llmnative.h>

#include <immintrin.h>

#include <cstring>

namespace llmn {

namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
inline uint16_t f2h(float f) { return uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }
inline float kmin(float lo, float x) { return lo < x ? lo : x; }
inline float kmax(float hi, float x) { return hi > x ? hi : x; }
// kv_kivi.hpp: kivi_scale_f16 (f16 of (hi - lo) / qmax rounded up)
inline uint16_t scale_f16(float lo, float hi, int32_t qmax) {
    const double s = (double(hi) - double(lo)) / double(qmax);
    if (s <= 0.0) return 0;
    uint16_t h = f2h(float(s));
    if (double(h2f(h)) < s) ++h;
    return h;
}

inline __m256 h8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// kivi_code on 8 lanes (scale > 0 lanes; lanes with scale 0 give 0).
inline __m256i codes8(__m256 x, __m256 sc, __m256 mn, float qmax) {
    const __m256 v = _mm256_div_ps(_mm256_sub_ps(x, mn), sc);
    const __m256 pos = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ),
                                     _mm256_cmp_ps(sc, _mm256_setzero_ps(), _CMP_NEQ_OQ));
    const __m256 vc = _mm256_min_ps(v, _mm256_set1_ps(qmax));  // v > 0 lanes: in (0, qmax]
    const __m256i i = _mm256_cvttps_epi32(vc);
    const __m256 frac = _mm256_sub_ps(vc, _mm256_cvtepi32_ps(i));
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ));  // -1 where rounding up
    const __m256i c = _mm256_sub_epi32(i, up);
    return _mm256_and_si256(c, _mm256_castps_si256(pos));
}

// Packs 8 codes (channels d0 .. d0 + 7, d0 a multiple of 8) into their 4 (INT4) or 2 (INT2) bytes of
// the row, low bits first (kivi_put's layout); the bytes are written whole.
inline void put_codes(uint8_t* row, int32_t d0, int32_t bits, __m256i c) {
    if (bits == 4) {
        // per qword: low dword | high dword << 4 -> byte 0 of the qword = c_even | c_odd << 4
        const __m256i p = _mm256_or_si256(c, _mm256_srli_epi64(c, 28));
        const __m256i b = _mm256_shuffle_epi8(p, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                  0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
        const uint16_t lo = uint16_t(_mm256_extract_epi16(b, 0)), hi = uint16_t(_mm256_extract_epi16(b, 8));
        std::memcpy(row + d0 / 2, &lo, 2);
        std::memcpy(row + d0 / 2 + 2, &hi, 2);
    } else {
        // codes << (2 * (lane % 4)), then the 4 lanes of each 128-bit half summed (disjoint bits: = OR)
        const __m256i sh = _mm256_sllv_epi32(c, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
        const __m256i h = _mm256_hadd_epi32(sh, sh);
        const __m256i h2 = _mm256_hadd_epi32(h, h);
        row[d0 / 4] = uint8_t(_mm256_extract_epi32(h2, 0));
        row[d0 / 4 + 1] = uint8_t(_mm256_extract_epi32(h2, 4));
    }
}

}  // namespace

void kivi_quantize_k_block_avx2(int32_t format, const uint16_t* rows, int32_t bs, int32_t D, uint8_t* data, uint16_t* aux) {
    const int32_t bits = format == LLMN_KV_INT4 ? 4 : 2, qmax = format == LLMN_KV_INT4 ? 15 : 3;
    const int64_t rb = int64_t(D) * bits / 8;
    for (int32_t d = 0; d < D; d += 8) {  // head_dim is a multiple of 16
        __m256 lo = h8(rows + d), hi = lo;
        for (int32_t t = 1; t < bs; ++t) {
            const __m256 x = h8(rows + size_t(t) * D + d);
            lo = _mm256_min_ps(lo, x);
            hi = _mm256_max_ps(hi, x);
        }
        alignas(32) float l[8], h[8], s[8];
        _mm256_store_ps(l, lo);
        _mm256_store_ps(h, hi);
        for (int i = 0; i < 8; ++i) {
            const uint16_t sh = scale_f16(l[i], h[i], qmax);
            aux[d + i] = sh;
            aux[D + d + i] = f2h(l[i]);  // exact: an f16 value
            s[i] = h2f(sh);
        }
        const __m256 sc = _mm256_load_ps(s);
        for (int32_t t = 0; t < bs; ++t)
            put_codes(data + t * rb, d, bits, codes8(h8(rows + size_t(t) * D + d), sc, lo, float(qmax)));
    }
}

void kivi_quantize_v_block_avx2(int32_t format, const uint16_t* rows, int32_t bs, int32_t D, int32_t group, uint8_t* data,
                                uint16_t* aux) {
    const int32_t bits = format == LLMN_KV_INT4 ? 4 : 2, qmax = format == LLMN_KV_INT4 ? 15 : 3, G = D / group;
    const int64_t rb = int64_t(D) * bits / 8;
    for (int32_t t = 0; t < bs; ++t)
        for (int32_t g = 0; g < G; ++g) {
            const uint16_t* x = rows + size_t(t) * D + size_t(g) * group;
            __m256 vlo = h8(x), vhi = vlo;
            for (int32_t i = 8; i < group; i += 8) {
                const __m256 v = h8(x + i);
                vlo = _mm256_min_ps(vlo, v);
                vhi = _mm256_max_ps(vhi, v);
            }
            alignas(32) float l[8], h[8];
            _mm256_store_ps(l, vlo);
            _mm256_store_ps(h, vhi);
            float lo = l[0], hi = h[0];
            for (int i = 1; i < 8; ++i) {
                lo = kmin(lo, l[i]);
                hi = kmax(hi, h[i]);
            }
            if (lo == 0.0f || hi == 0.0f) {  // the sign of a zero extreme follows the scalar order
                lo = h2f(x[0]);
                hi = lo;
                for (int32_t i = 1; i < group; ++i) {
                    lo = kmin(lo, h2f(x[i]));
                    hi = kmax(hi, h2f(x[i]));
                }
            }
            const uint16_t sh = scale_f16(lo, hi, qmax);
            aux[size_t(t) * G + g] = sh;
            aux[size_t(bs) * G + size_t(t) * G + g] = f2h(lo);
            const __m256 sc = _mm256_set1_ps(h2f(sh)), mn = _mm256_set1_ps(lo);
            for (int32_t i = 0; i < group; i += 8)
                put_codes(data + t * rb, g * group + i, bits, codes8(h8(x + i), sc, mn, float(qmax)));
        }
}

}  // namespace llmn
