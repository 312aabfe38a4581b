// Float64 decode-attention references shared by the attention tests, and the element-wise check of
// an output against such a reference. The error BOUNDS stay in the test files (each kernel family
// derives its own); the helpers return the per-row quantities those bounds are built from.
#pragma once
#include "kv_test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace llmn_test {

// One query row of float64 softmax attention over keys lo..pos of kv head h, K and V as the cache
// hands them back ([len][H][D] of one sequence). Score s_t = scale (q . k_t), then the optional
// soft-cap c tanh(s/c) (softcap > 0) and ALiBi bias slope (t - pos) (slope != nullptr). Each score
// carries its first-order f32 error (u = kU, eps_exp = kEpsExp): (D + 2) u A_t with
// A_t = |scale| sum_d |q_d k_td|, + c (eps_exp + 4u) + 2u A_t for the soft-cap, + 2u (|bias| + A_t)
// for ALiBi (term 1 of the derivation in test_decode_attention.cpp).
struct AttentionRow {
    std::vector<double> o;  // [D], normalised output
    int64_t n = 0;          // visible keys
    double sabs = 0.0;      // max |s_t|
    double dmax = 0.0;      // max score error
    double vmax = 0.0;      // max |v| over the visible keys
    double omax = 0.0;      // max |o|
};

inline AttentionRow attention_row_f64(const float* qr, const float* k, const float* v, int32_t H, int32_t h, int32_t D,
                                      int64_t lo, int64_t pos, float scale, double softcap, const float* slope) {
    AttentionRow r;
    r.n = pos - lo + 1;
    const double c = softcap;
    std::vector<double> s(static_cast<size_t>(r.n));
    double smax = -INFINITY;
    for (int64_t t = lo; t <= pos; ++t) {
        const float* kr = &k[size_t((t * H + h) * D)];
        double dot = 0.0, a = 0.0;
        for (int32_t d = 0; d < D; ++d) {
            dot += double(qr[d]) * double(kr[d]);
            a += std::fabs(double(qr[d]) * double(kr[d]));
        }
        dot *= scale;
        a *= std::fabs(double(scale));
        double err = (D + 2) * kU * a;
        if (c > 0) {
            dot = c * std::tanh(dot / c);
            err += c * (kEpsExp + 4 * kU) + 2 * kU * a;
        }
        if (slope) {
            const double bias = double(*slope) * double(t - pos);
            dot += bias;
            err += 2 * kU * (std::fabs(bias) + a);
        }
        s[size_t(t - lo)] = dot;
        smax = std::max(smax, dot);
        r.sabs = std::max(r.sabs, std::fabs(dot));
        r.dmax = std::max(r.dmax, err);
    }
    double l = 0.0;
    std::vector<double> o(static_cast<size_t>(D), 0.0);
    for (int64_t t = lo; t <= pos; ++t) {
        const double w = std::exp(s[size_t(t - lo)] - smax);
        l += w;
        const float* vr = &v[size_t((t * H + h) * D)];
        for (int32_t d = 0; d < D; ++d) {
            o[size_t(d)] += w * vr[d];
            r.vmax = std::max(r.vmax, std::fabs(double(vr[d])));
        }
    }
    r.o.resize(size_t(D));
    for (int32_t d = 0; d < D; ++d) {
        r.o[size_t(d)] = o[size_t(d)] / l;
        r.omax = std::max(r.omax, std::fabs(r.o[size_t(d)]));
    }
    return r;
}

// One query row of float64 attention over keys 0..pos of kv head h as the quantized-cache tests
// (test_kv_quant.cpp, test_kv_kivi.cpp) state it: q pre-scaled in f32 (fl(q_d scale)), then exact
// products with the read-back (dequantized) K, no soft-cap or bias.
struct PrescaledRow {
    std::vector<double> o;  // [D], normalised output
    double smax = 0.0;      // max |s_t|
    double amax = 0.0;      // max_t sum_d |q'_d k_td|
    double vmax = 0.0;      // max |v| over the keys
};

// The same for a query given in float64 (already scaled): e.g. the INT8 query's codes x scale.
inline PrescaledRow attention_row_f64(const double* qd_row, const std::vector<float>& k, const std::vector<float>& v,
                                      int32_t H, int32_t h, int32_t D, int64_t pos) {
    PrescaledRow r;
    std::vector<double> sco(size_t(pos + 1));
    double m = -INFINITY;
    for (int64_t t = 0; t <= pos; ++t) {
        double dot = 0, a = 0;
        for (int32_t dd = 0; dd < D; ++dd) {
            const double qd = qd_row[dd], kd = k[size_t((t * H + h) * D + dd)];
            dot += qd * kd;
            a += std::fabs(qd * kd);
        }
        sco[size_t(t)] = dot;
        m = std::max(m, dot);
        r.smax = std::max(r.smax, std::fabs(dot));
        r.amax = std::max(r.amax, a);
        for (int32_t dd = 0; dd < D; ++dd) r.vmax = std::max(r.vmax, double(std::fabs(v[size_t((t * H + h) * D + dd)])));
    }
    double l = 0;
    std::vector<double> acc(size_t(D), 0.0);
    for (int64_t t = 0; t <= pos; ++t) {
        const double w = std::exp(sco[size_t(t)] - m);
        l += w;
        for (int32_t dd = 0; dd < D; ++dd) acc[size_t(dd)] += w * v[size_t((t * H + h) * D + dd)];
    }
    r.o.resize(size_t(D));
    for (int32_t dd = 0; dd < D; ++dd) r.o[size_t(dd)] = acc[size_t(dd)] / l;
    return r;
}

inline PrescaledRow prescaled_attention_row_f64(const float* qr, float scale, const std::vector<float>& k,
                                                const std::vector<float>& v, int32_t H, int32_t h, int32_t D,
                                                int64_t pos) {
    std::vector<double> qd(static_cast<size_t>(D));
    for (int32_t dd = 0; dd < D; ++dd) qd[size_t(dd)] = double(qr[dd] * scale);
    return attention_row_f64(qd.data(), k, v, H, h, D, pos);
}

// |out_i - ref_i| <= bound[row] (+ extra[row]) for every element (row = i / D), outputs finite (the
// NaN poison overwritten); at most five failures are itemised. Prints the worst error / bound.
inline void expect_within_bound(const std::vector<float>& out, const std::vector<double>& ref,
                                const std::vector<double>& bound_per_row, int32_t D, const std::string& what,
                                const std::vector<double>* extra = nullptr) {
    ASSERT_EQ(out.size(), ref.size()) << what;
    double worst = 0.0, worst_err = 0.0;
    size_t bad = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_TRUE(std::isfinite(out[i])) << what << ": output " << i << " is " << out[i] << " (poison not overwritten?)";
        const double bound = bound_per_row[i / size_t(D)] + (extra ? (*extra)[i / size_t(D)] : 0.0);
        const double err = std::fabs(double(out[i]) - ref[i]);
        if (err > bound && bad++ < 5)
            ADD_FAILURE() << what << ": element " << i << " (row " << i / D << ", channel " << i % D << ") = " << out[i]
                          << ", reference " << ref[i] << ", error " << err << " > bound " << bound;
        worst = std::max(worst, err / bound);
        worst_err = std::max(worst_err, err);
    }
    EXPECT_EQ(bad, 0u) << what;
    std::printf("  %-64s max error %.3g (%.4f of bound)\n", what.c_str(), worst_err, worst);
}

// n tokens of random K/V ([n][H][D], N(0,1)) for sequence positions start.. of a sequence of final
// length len. With outliers: every 17th channel of K x20, one V entry in 500 x300 (the draw order is
// part of the tests' data), and, when len >= 0, keys of huge norm (x8) where masks must be right:
// the newest q_len + 1 positions and every 97th.
inline void random_kv_tokens(std::mt19937_64& g, int32_t H, int32_t D, int32_t n, bool outliers, int64_t len,
                             int32_t q_len, int64_t start, std::vector<float>& k, std::vector<float>& v) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    k.assign(static_cast<size_t>(n) * H * D, 0.0f);
    v.assign(k.size(), 0.0f);
    for (int32_t t = 0; t < n; ++t)
        for (int32_t h = 0; h < H; ++h)
            for (int32_t d = 0; d < D; ++d) {
                const size_t i = size_t((int64_t(t) * H + h) * D + d);
                k[i] = nd(g);
                v[i] = nd(g);
                if (outliers) {
                    if (d % 17 == 3) k[i] *= 20.0f;     // outlier channels in K
                    if (g() % 500 == 0) v[i] *= 300.0f;  // rare huge V entries
                }
            }
    if (outliers && len >= 0)
        for (int32_t t = 0; t < n; ++t) {
            const int64_t pos = start + t;
            if (pos >= len - q_len - 1 || pos % 97 == 5)
                for (int32_t j = 0; j < H * D; ++j) k[size_t(t) * H * D + j] *= 8.0f;
        }
}

}  // namespace llmn_test
