// Helpers shared by the KV cache and decode attention tests (test_kv_cache.cpp, test_kv_quant.cpp,
// test_kv_kivi.cpp, test_decode_attention.cpp, test_decode_attention_cuda.cpp): RAII wrappers over
// the C API, the CPU ISA loop, KV cache descriptors, appends and read-backs through the C API, and one
// attention call with NaN-poisoned outputs. Kept out of test_util.hpp because other test files define
// their own Ctx/Buf/quick() and use `using namespace llmn_test` too.
#pragma once
#include "core/error.hpp"
#include "core/numeric.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace llmn_test {

constexpr double kU = 1.0 / 16777216.0;      // 2^-24, f32 unit roundoff
constexpr double kEpsExp = 1.0 / 2097152.0;  // 2^-21, libm expf and the AVX2 polynomial (and CUDA's)

// True under AddressSanitizer or with LLMNATIVE_TEST_QUICK set: tests then use shorter sequences.
inline bool quick() {
#if defined(__SANITIZE_ADDRESS__)
    return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return true;
#endif
#endif
    return std::getenv("LLMNATIVE_TEST_QUICK") != nullptr;
}

// A context of one backend (CPU unless named), destroyed with the test.
struct Ctx {
    llmn_context h = nullptr;
    explicit Ctx(int32_t backend = LLMN_BACKEND_CPU) {
        EXPECT_EQ(llmn_context_create(backend, 0, &h), LLMN_STATUS_OK) << last_error();
    }
    ~Ctx() { llmn_context_destroy(h); }
    Ctx(const Ctx&) = delete;
    Ctx& operator=(const Ctx&) = delete;
};

// A device buffer of `count` elements (at least 1) with typed upload/download.
struct Buf {
    llmn_buffer h = nullptr;
    Buf(llmn_context c, int32_t dtype, int64_t count) {
        EXPECT_EQ(llmn_buffer_create(c, dtype, std::max<int64_t>(count, 1), LLMN_MEMORY_DEVICE, &h), LLMN_STATUS_OK)
            << last_error();
    }
    ~Buf() {  // keeps the message of the call under test readable after the buffer goes away
        std::string msg = last_error();
        llmn_buffer_destroy(h);
        llmn::set_last_error(msg);
    }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    template <class T> void upload(const std::vector<T>& v) {
        ASSERT_EQ(llmn_buffer_upload(h, 0, v.data(), int64_t(v.size())), LLMN_STATUS_OK) << last_error();
    }
    template <class T> std::vector<T> download(int64_t n) {
        std::vector<T> v(static_cast<size_t>(n));
        EXPECT_EQ(llmn_buffer_download(h, 0, v.data(), n), LLMN_STATUS_OK) << last_error();
        return v;
    }
};

// Restores the process-wide ISA cap and thread count whatever a test does.
struct CpuStateGuard {
    llmn_cpu_info info{};
    CpuStateGuard() { llmn_get_cpu_info(&info); }
    ~CpuStateGuard() {
        llmn_set_cpu_isa(info.active_isa);
        llmn_set_cpu_threads(0);
    }
};

// The ISA caps a CPU kernel test runs under: scalar, AVX2 where detected, and AVX-512 where detected
// unless the kernel has no AVX-512 path of its own (with_avx512 = false).
inline std::vector<int32_t> isas_to_test(bool with_avx512 = true) {
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    std::vector<int32_t> v{LLMN_CPU_ISA_SCALAR};
    if (info.detected_isa == LLMN_CPU_ISA_AVX2 || info.detected_isa == LLMN_CPU_ISA_AVX512) v.push_back(LLMN_CPU_ISA_AVX2);
    if (with_avx512 && info.detected_isa == LLMN_CPU_ISA_AVX512) v.push_back(LLMN_CPU_ISA_AVX512);
    if (info.detected_isa == LLMN_CPU_ISA_NEON) v.push_back(LLMN_CPU_ISA_NEON);  // arm64: f16 KV has a NEON kernel
    return v;
}
inline const char* isa_name(int32_t isa) {
    return isa == LLMN_CPU_ISA_SCALAR ? "scalar"
           : isa == LLMN_CPU_ISA_AVX2 ? "avx2"
           : isa == LLMN_CPU_ISA_NEON ? "neon"
                                      : "avx512";
}

// Short name of a KV storage format for messages.
inline const char* fmt_name(int32_t f) {
    switch (f) {
        case LLMN_KV_F16: return "f16";
        case LLMN_KV_INT8: return "int8";
        case LLMN_KV_FP8_E4M3: return "fp8";
        case LLMN_KV_INT4: return "int4";
        case LLMN_KV_INT2: return "int2";
    }
    return "?";
}

// A cache descriptor; the fields not named stay 0 (each test file wraps this with its own defaults).
inline llmn_kv_cache_desc kv_desc(int32_t layers, int32_t heads, int32_t dim, int32_t bs, int32_t kf, int32_t vf,
                                  int64_t tokens, int32_t max_batch, int32_t group = 0) {
    llmn_kv_cache_desc d{};
    d.num_layers = layers;
    d.num_kv_heads = heads;
    d.head_dim = dim;
    d.block_size = bs;
    d.k_format = kf;
    d.v_format = vf;
    d.value_group_size = group;
    d.max_batch = max_batch;
    d.capacity_tokens = tokens;
    return d;
}

// n values from N(0, sigma^2).
inline std::vector<float> gaussian(std::mt19937_64& g, size_t n, float sigma) {
    std::normal_distribution<float> nd(0.0f, sigma);
    std::vector<float> v(n);
    for (float& x : v) x = nd(g);
    return v;
}

// x rounded to f16 and back.
inline float f16r(float x) { return llmn::f16_to_f32(llmn::f32_to_f16(x)); }

// Appends n tokens of f32 K/V ([n][HD]) to one sequence and layer; the append must succeed.
inline void append(llmn_context ctx, llmn_kv_cache cache, int64_t id, int32_t layer, const float* k, const float* v,
                   int32_t n, int32_t HD) {
    Buf kb(ctx, LLMN_DTYPE_F32, int64_t(n) * HD), vb(ctx, LLMN_DTYPE_F32, int64_t(n) * HD);
    kb.upload(std::vector<float>(k, k + size_t(n) * HD));
    vb.upload(std::vector<float>(v, v + size_t(n) * HD));
    LLMN_ASSERT_OK(llmn_kv_cache_append(cache, id, layer, kb.h, vb.h, n));
}

// Reads tokens [start, start + count) of one sequence and layer as f32 (dtype F16: read as f16, widened).
inline void read(llmn_context ctx, llmn_kv_cache cache, int64_t id, int32_t layer, int64_t start, int64_t count,
                 int32_t HD, std::vector<float>& k, std::vector<float>& v, int32_t dtype = LLMN_DTYPE_F32) {
    Buf kb(ctx, dtype, count * HD), vb(ctx, dtype, count * HD);
    LLMN_ASSERT_OK(llmn_kv_cache_read(cache, id, layer, start, count, kb.h, vb.h));
    if (dtype == LLMN_DTYPE_F32) {
        k = kb.download<float>(count * HD);
        v = vb.download<float>(count * HD);
    } else {
        k.clear();
        v.clear();
        for (uint16_t x : kb.download<uint16_t>(count * HD)) k.push_back(llmn::f16_to_f32(x));
        for (uint16_t x : vb.download<uint16_t>(count * HD)) v.push_back(llmn::f16_to_f32(x));
    }
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// A cache and the sequences a test filled it with; destroyed with the test.
struct Filled {
    llmn_kv_cache cache = nullptr;
    std::vector<int64_t> ids;
    Filled() = default;
    Filled(const Filled&) = delete;
    Filled& operator=(const Filled&) = delete;
    ~Filled() {
        if (cache) llmn_kv_cache_destroy(cache);
    }
};

// The INT8 query's rounding as llmnative.h states it (LLMN_ATTN_FLAG_INT8_QUERY), written here from the
// documentation: codes = round-to-nearest-even(x * fl(127 / max|x|)), scale fl(max|x| / 127); zero codes
// and scale 0 when 127 / max|x| is not a finite float. Returns the scale.
inline float int8_query_row(const float* x, int32_t n, uint8_t* codes) {
    float amax = 0.0f;
    for (int32_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float inv = 127.0f / amax;
    const bool zero = !std::isfinite(inv);
    for (int32_t i = 0; i < n; ++i) {
        const double y = zero ? 0.0 : double(x[i] * inv);  // the product in f32, then rounded half to even
        double c = std::floor(y);
        if (y - c > 0.5 || (y - c == 0.5 && std::fmod(c, 2.0) != 0.0)) c += 1.0;
        const int8_t b = int8_t(c);
        std::memcpy(&codes[i], &b, 1);
    }
    return zero ? 0.0f : amax / 127.0f;
}

// One decode attention call (f32 q and output, no ALiBi, scale 1/sqrt(D), q_len queries per
// sequence); the output is NaN-poisoned before the call.
inline std::vector<float> attention(llmn_context ctx, llmn_kv_cache cache, const std::vector<int64_t>& ids,
                                    int32_t layer, int32_t Hq, int32_t D, int32_t q_len, const std::vector<float>& q,
                                    int32_t splits, int32_t flags = 0) {
    const int32_t B = int32_t(ids.size());
    const int64_t n = int64_t(B) * q_len * Hq * D;
    Buf qb(ctx, LLMN_DTYPE_F32, n), ob(ctx, LLMN_DTYPE_F32, n);
    qb.upload(q);
    ob.upload(std::vector<float>(size_t(n), std::nanf("")));
    llmn_attention_params p{};
    p.layer = layer;
    p.num_q_heads = Hq;
    p.q_len = q_len;
    p.num_splits = splits;
    p.scale = 1.0f / std::sqrt(float(D));
    p.flags = flags;
    EXPECT_EQ(llmn_decode_attention(ctx, cache, ids.data(), B, qb.h, nullptr, ob.h, &p), LLMN_STATUS_OK) << last_error();
    return ob.download<float>(n);
}

}  // namespace llmn_test
