// Canonical builders for INT4 weights: every creation path (quantize, GPTQ import, AWQ import) ends in
// an Int4Canonical, so the semantics live in one place and each backend only packs/unpacks. All
// validation happens here, before any backend memory is touched, which is what makes "a failed call
// creates nothing" trivially true for the API layer.
//
// Conventions fixed here (and tested in native/tests/test_gemm_int4.cpp):
//
// Quantization (llmn_int4_weight_quantize), per (group, column), computed in double:
//   * scales are rounded UP to the next fp16 value, so |w / scale| never leaves the grid and the
//     per-element error stays <= scale / 2 (half a step) even after the scale's own rounding;
//   * symmetric (GPTQ sym=True, implicit zero 8): scale = max(-min / 8, max / 7),
//     q = clamp(round(w / scale) + 8, 0, 15). A group whose weights already lie on the grid
//     (q - 8) * s for an fp16 s and that contains an end point of the grid (-8s or 7s) round-trips
//     exactly (the scale formula then recovers s exactly);
//   * asymmetric (AWQ, GPTQ sym=False): lo = min(min, 0), hi = max(max, 0), scale = (hi - lo) / 15,
//     zero = clamp(round(-lo / scale), 0, 15), q = clamp(round(w / scale) + zero, 0, 15);
//   * round() is half away from zero (round_half_away: std::round's definition, not MinGW's libm); an all-zero group gets scale 0 (dequantizes to 0);
//   * NaN/Inf weights, and groups whose scale would exceed the fp16 maximum, are rejected.
//
// GPTQ checkpoints (AutoGPTQ / GPTQModel / Transformers, tensors exactly as in safetensors):
//   * qweight int32 [K/8, N]: row k of W is nibble k%8 (bits 4*(k%8)) of qweight[k/8][n];
//   * qzeros int32 [G, N/8]: column n is nibble n%8 of qzeros[g][n/8];
//   * the "v1" format (checkpoint_format "gptq", the default) stores zero - 1 (GPTQ's historical
//     off-by-one: its packer writes zeros - 1 and every v1 kernel adds the 1 back), so the real zero
//     point is stored + 1. A stored 15 therefore means zero point 16, which a 4-bit zero point
//     cannot hold (it is what v1 writers produce for a true zero point of 0): rejected with a clear
//     error rather than silently wrapped. "gptq_v2" (LLMN_GPTQ_V2) stores the real zero point.
//   * symmetric checkpoints have the implicit zero 8; their qzeros (v1: all 7s) are ignored;
//   * g_idx [K] (desc_act / act-order): group of every row. A g_idx equal to k / group_size for
//     every k (which many checkpoints ship even without act-order) is dropped: same semantics.
// AWQ checkpoints (AutoAWQ GEMM layout):
//   * qweight int32 [K, N/8] packs 8 neighbouring columns per int32 in AWQ's interleaved order:
//     nibble i (bits 4i) holds column 8j + {0,2,4,6,1,3,5,7}[i]; qzeros [G, N/8] uses the same order
//     and stores real zero points (no off-by-one); always asymmetric.
// Scales given as f32 are rounded to the nearest fp16 (the canonical scale type); values outside the
// fp16 range, NaN and Inf are rejected; 0 and negative scales are accepted.
#include "int4_weight.hpp"

#include "../../core/numeric.hpp"
#include "../../cpu/cpu_runtime.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace llmn {

namespace {

constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;  // g_idx and row indices are int32
constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // nibble i of an AWQ int32 -> column offset

void check_dim(int64_t v, const char* param) {
    LLMN_CHECK_ARG(v >= 1 && v <= kMaxDim, "%s must be in [1, %lld], got %lld", param, (long long)kMaxDim,
                   (long long)v);
}

void check_group_size(int32_t gs, const char* param) {
    LLMN_CHECK_ARG(gs == 0 || gs == 32 || gs == 64 || gs == 128,
                   "%s must be 32, 64, 128 or 0 (per-column; GPTQ's -1), got %d", param, gs);
}

void check_bool(int32_t v, const char* param) {
    LLMN_CHECK_ARG(v == 0 || v == 1, "%s must be 0 or 1, got %d", param, v);
}

void check_float_dtype(int32_t dtype, const char* param) {
    LLMN_CHECK_ARG(dtype == LLMN_DTYPE_F32 || dtype == LLMN_DTYPE_F16,
                   "%s must be LLMN_DTYPE_F32 (0) or LLMN_DTYPE_F16 (1), got %d", param, dtype);
}

float load_float(const void* p, int32_t dtype, int64_t i) {
    if (dtype == LLMN_DTYPE_F32) return static_cast<const float*>(p)[i];
    return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

// Smallest fp16 value >= v (v >= 0, finite); 0x7c00 (inf) when v exceeds the fp16 maximum.
uint16_t f16_round_up(double v) {
    if (v <= 0) return 0;
    if (v > 65504.0) return 0x7c00;
    uint16_t h = f32_to_f16(static_cast<float>(v));
    while (h > 0 && double(f16_to_f32(uint16_t(h - 1))) >= v) --h;
    while (double(f16_to_f32(h)) < v) ++h;
    return h;
}

int clamp15(double v) { return static_cast<int>(std::min(15.0, std::max(0.0, v))); }

// Scales of a checkpoint: f16 or f32 [G, N] -> fp16 bits, rejecting NaN/Inf and f32 values that
// fp16 cannot represent.
void import_scales(Int4Canonical& c, int32_t dtype, const void* scales) {
    const int64_t G = c.groups(), N = c.n;
    c.scales.resize(static_cast<size_t>(G * N));
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t n = 0; n < N; ++n) {
            int64_t i = g * N + n;
            uint16_t h;
            if (dtype == LLMN_DTYPE_F16) {
                h = static_cast<const uint16_t*>(scales)[i];
                if ((h & 0x7c00) == 0x7c00)
                    fail(LLMN_STATUS_INVALID_ARGUMENT, "scales[%lld][%lld] is %g; scales must be finite", (long long)g,
                         (long long)n, double(f16_to_f32(h)));
            } else {
                float f = static_cast<const float*>(scales)[i];
                if (!std::isfinite(f))
                    fail(LLMN_STATUS_INVALID_ARGUMENT, "scales[%lld][%lld] is %g; scales must be finite", (long long)g,
                         (long long)n, double(f));
                h = f32_to_f16(f);
                if ((h & 0x7c00) == 0x7c00)
                    fail(LLMN_STATUS_INVALID_ARGUMENT,
                         "scales[%lld][%lld] = %g is outside the fp16 range (|scale| <= 65504)", (long long)g,
                         (long long)n, double(f));
            }
            c.scales[static_cast<size_t>(i)] = h;
        }
    }
}

}  // namespace

llmn_int4_weight_desc int4_desc(const Int4Canonical& c) {
    llmn_int4_weight_desc d{};
    d.k = c.k;
    d.n = c.n;
    d.group_size = c.group_size;
    d.symmetric = c.symmetric ? 1 : 0;
    d.has_g_idx = c.g_idx.empty() ? 0 : 1;
    d.reserved = 0;
    return d;
}

Int4Canonical int4_quantize(const llmn_int4_weight_desc& desc, int32_t src_dtype, const void* weights) {
    check_dim(desc.k, "desc->k");
    check_dim(desc.n, "desc->n");
    check_group_size(desc.group_size, "desc->group_size");
    check_bool(desc.symmetric, "desc->symmetric");
    LLMN_CHECK_ARG(desc.has_g_idx == 0,
                   "desc->has_g_idx must be 0 for quantize (act-order weights come from a GPTQ import), got %d",
                   desc.has_g_idx);
    check_float_dtype(src_dtype, "src_dtype");
    LLMN_CHECK_NOT_NULL(weights);
    const int64_t K = desc.k, N = desc.n;
    checked_mul(K, N, "weights [k, n]");

    Int4Canonical c;
    c.k = K;
    c.n = N;
    c.group_size = desc.group_size;
    c.symmetric = desc.symmetric != 0;
    const int64_t G = c.groups();
    const int64_t gs = c.group_size == 0 ? K : c.group_size;

    // Finiteness first, serially, so the reported element is always the first bad one in row order.
    for (int64_t i = 0; i < K * N; ++i) {
        float w = load_float(weights, src_dtype, i);
        if (!std::isfinite(w))
            fail(LLMN_STATUS_INVALID_ARGUMENT, "weights[%lld][%lld] is %g; weights must be finite", (long long)(i / N),
                 (long long)(i % N), double(w));
    }

    // The two passes below run over independent column ranges on the CPU pool (each element is
    // computed the same way whatever the split: the result does not depend on the thread count).
    const int64_t col_chunk = 256, chunks = (N + col_chunk - 1) / col_chunk;

    // Pass 1: per-(group, column) range.
    std::vector<float> mn(static_cast<size_t>(G * N), std::numeric_limits<float>::infinity());
    std::vector<float> mx(static_cast<size_t>(G * N), -std::numeric_limits<float>::infinity());
    cpu::parallel_for(chunks, [&](int64_t ch) {
        const int64_t n0 = ch * col_chunk, n1 = std::min(N, n0 + col_chunk);
        for (int64_t k = 0; k < K; ++k) {
            float* gmn = &mn[static_cast<size_t>((k / gs) * N)];
            float* gmx = &mx[static_cast<size_t>((k / gs) * N)];
            for (int64_t n = n0; n < n1; ++n) {
                float w = load_float(weights, src_dtype, k * N + n);
                gmn[n] = std::min(gmn[n], w);
                gmx[n] = std::max(gmx[n], w);
            }
        }
    });

    // Scales (rounded up to fp16) and zero points.
    c.scales.resize(static_cast<size_t>(G * N));
    c.zeros.resize(static_cast<size_t>(G * N));
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t n = 0; n < N; ++n) {
            size_t i = static_cast<size_t>(g * N + n);
            double lo = mn[i], hi = mx[i];
            double sd;
            if (c.symmetric) {
                sd = std::max(-lo / 8.0, hi / 7.0);
            } else {
                lo = std::min(lo, 0.0);
                hi = std::max(hi, 0.0);
                sd = (hi - lo) / 15.0;
            }
            uint16_t h = f16_round_up(std::max(sd, 0.0));
            if (h == 0x7c00)
                fail(LLMN_STATUS_INVALID_ARGUMENT,
                     "weights: group %lld of column %lld spans [%g, %g], which needs scale %g above the fp16 maximum "
                     "65504",
                     (long long)g, (long long)n, double(mn[i]), double(mx[i]), sd);
            c.scales[i] = h;
            if (c.symmetric) {
                c.zeros[i] = 8;
            } else {
                double s = f16_to_f32(h);
                c.zeros[i] = s == 0 ? 0 : static_cast<uint8_t>(clamp15(round_half_away(-lo / s)));
            }
        }
    }

    // Pass 2: codes.
    c.q.resize(static_cast<size_t>(K * N));
    cpu::parallel_for(chunks, [&](int64_t ch) {
        const int64_t n0 = ch * col_chunk, n1 = std::min(N, n0 + col_chunk);
        for (int64_t k = 0; k < K; ++k) {
            const int64_t g = k / gs;
            for (int64_t n = n0; n < n1; ++n) {
                size_t gi = static_cast<size_t>(g * N + n);
                double s = f16_to_f32(c.scales[gi]);
                int z = c.zeros[gi];
                double w = load_float(weights, src_dtype, k * N + n);
                c.q[static_cast<size_t>(k * N + n)] = s == 0 ? static_cast<uint8_t>(z)
                                                             : static_cast<uint8_t>(clamp15(round_half_away(w / s) + z));
            }
        }
    });
    return c;
}

Int4Canonical int4_import_gptq(const llmn_gptq_tensors& t) {
    check_dim(t.k, "tensors->k");
    check_dim(t.n, "tensors->n");
    LLMN_CHECK_ARG(t.k % 8 == 0,
                   "tensors->k must be a multiple of 8 (GPTQ qweight packs 8 rows of K per int32), got %lld",
                   (long long)t.k);
    check_group_size(t.group_size, "tensors->group_size");
    check_bool(t.symmetric, "tensors->symmetric");
    LLMN_CHECK_ARG(t.format == LLMN_GPTQ_V1 || t.format == LLMN_GPTQ_V2,
                   "tensors->format must be LLMN_GPTQ_V1 (0) or LLMN_GPTQ_V2 (1), got %d", t.format);
    check_float_dtype(t.scales_dtype, "tensors->scales_dtype");
    LLMN_CHECK_ARG(t.qweight != nullptr, "tensors->qweight must not be NULL");
    LLMN_CHECK_ARG(t.scales != nullptr, "tensors->scales must not be NULL");
    if (!t.symmetric) {
        LLMN_CHECK_ARG(t.qzeros != nullptr, "tensors->qzeros must not be NULL for asymmetric weights");
        LLMN_CHECK_ARG(t.n % 8 == 0,
                       "tensors->n must be a multiple of 8 for asymmetric GPTQ (qzeros packs 8 columns per int32), "
                       "got %lld",
                       (long long)t.n);
    }
    const int64_t K = t.k, N = t.n;
    checked_mul(K, N, "qweight [k, n]");

    Int4Canonical c;
    c.k = K;
    c.n = N;
    c.group_size = t.group_size;
    c.symmetric = t.symmetric != 0;
    const int64_t G = c.groups();

    if (t.g_idx) {
        bool trivial = true;
        for (int64_t k = 0; k < K; ++k) {
            int32_t g = t.g_idx[k];
            if (g < 0 || g >= G)
                fail(LLMN_STATUS_INVALID_ARGUMENT, "g_idx[%lld] = %d is out of range [0, %lld) (K %lld, group_size %d)",
                     (long long)k, g, (long long)G, (long long)K, t.group_size);
            int64_t natural = t.group_size == 0 ? 0 : k / t.group_size;
            trivial = trivial && g == natural;
        }
        if (!trivial) c.g_idx.assign(t.g_idx, t.g_idx + K);
    }

    import_scales(c, t.scales_dtype, t.scales);

    c.zeros.assign(static_cast<size_t>(G * N), 8);
    if (!c.symmetric) {
        for (int64_t g = 0; g < G; ++g) {
            for (int64_t n = 0; n < N; ++n) {
                uint32_t word = static_cast<uint32_t>(t.qzeros[g * (N / 8) + n / 8]);
                int stored = static_cast<int>((word >> (4 * (n % 8))) & 0xF);
                int zero = stored;
                if (t.format == LLMN_GPTQ_V1) {
                    if (stored == 15)
                        fail(LLMN_STATUS_INVALID_ARGUMENT,
                             "qzeros[%lld][%lld] holds 15 for column %lld: in the GPTQ v1 format that is zero point "
                             "16, outside 0..15 (v1 cannot store a zero point of 0; use a gptq_v2 checkpoint)",
                             (long long)g, (long long)(n / 8), (long long)n);
                    zero = stored + 1;
                }
                c.zeros[static_cast<size_t>(g * N + n)] = static_cast<uint8_t>(zero);
            }
        }
    }

    c.q.resize(static_cast<size_t>(K * N));
    for (int64_t k = 0; k < K; ++k) {
        const int32_t* row = t.qweight + (k / 8) * N;
        const int shift = 4 * static_cast<int>(k % 8);
        uint8_t* dst = &c.q[static_cast<size_t>(k * N)];
        for (int64_t n = 0; n < N; ++n) dst[n] = static_cast<uint8_t>((static_cast<uint32_t>(row[n]) >> shift) & 0xF);
    }
    return c;
}

Int4Canonical int4_import_awq(const llmn_awq_tensors& t) {
    check_dim(t.k, "tensors->k");
    check_dim(t.n, "tensors->n");
    LLMN_CHECK_ARG(t.n % 8 == 0,
                   "tensors->n must be a multiple of 8 (AWQ qweight and qzeros pack 8 columns per int32), got %lld",
                   (long long)t.n);
    check_group_size(t.group_size, "tensors->group_size");
    check_float_dtype(t.scales_dtype, "tensors->scales_dtype");
    LLMN_CHECK_ARG(t.qweight != nullptr, "tensors->qweight must not be NULL");
    LLMN_CHECK_ARG(t.qzeros != nullptr, "tensors->qzeros must not be NULL");
    LLMN_CHECK_ARG(t.scales != nullptr, "tensors->scales must not be NULL");
    const int64_t K = t.k, N = t.n, N8 = t.n / 8;
    checked_mul(K, N, "qweight [k, n]");

    Int4Canonical c;
    c.k = K;
    c.n = N;
    c.group_size = t.group_size;
    c.symmetric = false;
    const int64_t G = c.groups();

    import_scales(c, t.scales_dtype, t.scales);

    c.zeros.resize(static_cast<size_t>(G * N));
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t j = 0; j < N8; ++j) {
            uint32_t word = static_cast<uint32_t>(t.qzeros[g * N8 + j]);
            for (int i = 0; i < 8; ++i)
                c.zeros[static_cast<size_t>(g * N + 8 * j + kAwqOrder[i])] = static_cast<uint8_t>((word >> (4 * i)) & 0xF);
        }
    }
    c.q.resize(static_cast<size_t>(K * N));
    for (int64_t k = 0; k < K; ++k) {
        for (int64_t j = 0; j < N8; ++j) {
            uint32_t word = static_cast<uint32_t>(t.qweight[k * N8 + j]);
            for (int i = 0; i < 8; ++i)
                c.q[static_cast<size_t>(k * N + 8 * j + kAwqOrder[i])] = static_cast<uint8_t>((word >> (4 * i)) & 0xF);
        }
    }
    return c;
}

void int4_dequantize(const Int4Canonical& c, int32_t dst_dtype, void* dst) {
    const int64_t K = c.k, N = c.n;
    for (int64_t k = 0; k < K; ++k) {
        const int64_t g = c.group_of(k);
        const uint16_t* s = &c.scales[static_cast<size_t>(g * N)];
        const uint8_t* z = &c.zeros[static_cast<size_t>(g * N)];
        const uint8_t* q = &c.q[static_cast<size_t>(k * N)];
        for (int64_t n = 0; n < N; ++n) {
            float w = (float(q[n]) - float(z[n])) * f16_to_f32(s[n]);
            if (dst_dtype == LLMN_DTYPE_F32) static_cast<float*>(dst)[k * N + n] = w;
            else static_cast<uint16_t*>(dst)[k * N + n] = f32_to_f16(w);
        }
    }
}

}  // namespace llmn
