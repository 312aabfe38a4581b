// Backbone tests: versions, errors, handles, buffers, logging, thread pool, numeric conversions.
#include "core/numeric.hpp"
#include "cpu/cpu_runtime.hpp"
#include "test_util.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace llmn_test;

TEST(Core, AbiAndVersion) {
    int32_t abi = -1;
    LLMN_ASSERT_OK(llmn_get_abi_version(&abi));
    EXPECT_EQ(abi, LLMN_ABI_VERSION);
    char buf[64];
    int32_t len = 0;
    LLMN_ASSERT_OK(llmn_get_version(buf, sizeof(buf), &len));
    EXPECT_GT(len, 0);
    EXPECT_EQ(std::strlen(buf), size_t(len));
}

TEST(Core, StringOutTruncatesAndReportsLength) {
    char buf[3] = {'x', 'x', 'x'};
    int32_t len = 0;
    LLMN_ASSERT_OK(llmn_get_version(buf, sizeof(buf), &len));
    EXPECT_GT(len, 2);
    EXPECT_EQ(buf[2], '\0');
    LLMN_EXPECT_STATUS(llmn_get_version(nullptr, 5, &len), LLMN_STATUS_INVALID_ARGUMENT);
}

TEST(Core, LastErrorNamesArgumentAndValue) {
    llmn_context ctx = nullptr;
    LLMN_EXPECT_STATUS(llmn_context_create(7, 0, &ctx), LLMN_STATUS_INVALID_ARGUMENT);
    std::string msg = last_error();
    EXPECT_NE(msg.find("backend"), std::string::npos) << msg;
    EXPECT_NE(msg.find("7"), std::string::npos) << msg;
    EXPECT_EQ(ctx, nullptr);
    // a successful call clears it
    int32_t abi;
    LLMN_ASSERT_OK(llmn_get_abi_version(&abi));
    EXPECT_EQ(last_error(), "");
}

TEST(Core, CpuInfo) {
    llmn_cpu_info info{};
    LLMN_ASSERT_OK(llmn_get_cpu_info(&info));
    EXPECT_GE(info.threads, 1);
    EXPECT_GE(info.logical_cores, 1);
    EXPECT_LE(info.active_isa, info.detected_isa == LLMN_CPU_ISA_NEON ? 3 : info.detected_isa);
    LLMN_EXPECT_STATUS(llmn_get_cpu_info(nullptr), LLMN_STATUS_INVALID_ARGUMENT);
}

TEST(Core, CpuIsaCapCanForceScalar) {
    llmn_cpu_info info{};
    LLMN_ASSERT_OK(llmn_get_cpu_info(&info));
    LLMN_ASSERT_OK(llmn_set_cpu_isa(LLMN_CPU_ISA_SCALAR));
    llmn_cpu_info after{};
    LLMN_ASSERT_OK(llmn_get_cpu_info(&after));
    EXPECT_EQ(after.active_isa, LLMN_CPU_ISA_SCALAR);
    LLMN_ASSERT_OK(llmn_set_cpu_isa(info.detected_isa));
    LLMN_EXPECT_STATUS(llmn_set_cpu_isa(42), LLMN_STATUS_INVALID_ARGUMENT);
}

TEST(Core, CudaInfoExplainsAbsence) {
    llmn_cuda_info info{};
    LLMN_ASSERT_OK(llmn_get_cuda_info(&info));
    if (!info.available) {
        EXPECT_GT(std::strlen(info.unavailable_reason), 0u);
        llmn_context ctx = nullptr;
        llmn_status s = llmn_context_create(LLMN_BACKEND_CUDA, 0, &ctx);
        EXPECT_NE(s, LLMN_STATUS_OK);
        EXPECT_EQ(ctx, nullptr);
        EXPECT_FALSE(last_error().empty());
    } else {
        EXPECT_GE(info.device_count, 1);
        llmn_cuda_device_info dev{};
        LLMN_ASSERT_OK(llmn_get_cuda_device_info(0, &dev));
        EXPECT_GT(dev.sm_count, 0);
    }
}

class ContextTest : public ::testing::Test {
protected:
    void SetUp() override { LLMN_ASSERT_OK(llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx_)); }
    void TearDown() override {
        if (ctx_) llmn_context_destroy(ctx_);
    }
    llmn_context ctx_ = nullptr;
};

TEST_F(ContextTest, BufferRoundTrip) {
    llmn_buffer b = nullptr;
    LLMN_ASSERT_OK(llmn_buffer_create(ctx_, LLMN_DTYPE_F32, 100, LLMN_MEMORY_DEVICE, &b));
    std::vector<float> src(100), dst(100, -1.f);
    for (int i = 0; i < 100; ++i) src[i] = float(i) * 0.5f;
    LLMN_ASSERT_OK(llmn_buffer_upload(b, 0, src.data(), 100));
    LLMN_ASSERT_OK(llmn_buffer_download(b, 0, dst.data(), 100));
    EXPECT_EQ(src, dst);
    float seven = 7.f;
    LLMN_ASSERT_OK(llmn_buffer_fill(b, 10, 5, &seven));
    LLMN_ASSERT_OK(llmn_buffer_download(b, 0, dst.data(), 100));
    for (int i = 0; i < 100; ++i) EXPECT_EQ(dst[i], (i >= 10 && i < 15) ? 7.f : src[i]);
    int32_t dtype, mem;
    int64_t count;
    LLMN_ASSERT_OK(llmn_buffer_get_info(b, &dtype, &count, &mem));
    EXPECT_EQ(dtype, LLMN_DTYPE_F32);
    EXPECT_EQ(count, 100);
    LLMN_ASSERT_OK(llmn_buffer_destroy(b));
}

TEST_F(ContextTest, BufferCopyChecksDtypeAndRange) {
    llmn_buffer a = nullptr, b = nullptr, h = nullptr;
    LLMN_ASSERT_OK(llmn_buffer_create(ctx_, LLMN_DTYPE_I32, 10, LLMN_MEMORY_DEVICE, &a));
    LLMN_ASSERT_OK(llmn_buffer_create(ctx_, LLMN_DTYPE_I32, 10, LLMN_MEMORY_HOST, &b));
    LLMN_ASSERT_OK(llmn_buffer_create(ctx_, LLMN_DTYPE_F16, 10, LLMN_MEMORY_DEVICE, &h));
    std::vector<int32_t> v{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, out(10, 0);
    LLMN_ASSERT_OK(llmn_buffer_upload(a, 0, v.data(), 10));
    LLMN_ASSERT_OK(llmn_buffer_copy(b, 2, a, 0, 8));
    LLMN_ASSERT_OK(llmn_buffer_download(b, 2, out.data(), 8));
    for (int i = 0; i < 8; ++i) EXPECT_EQ(out[i], v[i]);
    LLMN_EXPECT_STATUS(llmn_buffer_copy(h, 0, a, 0, 1), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("dtype"), std::string::npos);
    LLMN_EXPECT_STATUS(llmn_buffer_copy(b, 3, a, 0, 8), LLMN_STATUS_INVALID_ARGUMENT);
    LLMN_EXPECT_STATUS(llmn_buffer_upload(a, -1, v.data(), 1), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("offset"), std::string::npos);
    LLMN_EXPECT_STATUS(llmn_buffer_upload(a, 5, v.data(), 6), LLMN_STATUS_INVALID_ARGUMENT);
    LLMN_EXPECT_STATUS(llmn_buffer_download(a, INT64_MAX, out.data(), 2), LLMN_STATUS_INVALID_ARGUMENT);
    // nothing changed by the failed calls
    LLMN_ASSERT_OK(llmn_buffer_download(a, 0, out.data(), 10));
    EXPECT_EQ(out, v);
    llmn_buffer_destroy(a);
    llmn_buffer_destroy(b);
    llmn_buffer_destroy(h);
}

TEST_F(ContextTest, BadSizesAndDtypes) {
    llmn_buffer b = nullptr;
    LLMN_EXPECT_STATUS(llmn_buffer_create(ctx_, LLMN_DTYPE_F32, 0, LLMN_MEMORY_DEVICE, &b), LLMN_STATUS_INVALID_ARGUMENT);
    LLMN_EXPECT_STATUS(llmn_buffer_create(ctx_, LLMN_DTYPE_F32, -5, LLMN_MEMORY_DEVICE, &b), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("-5"), std::string::npos);
    LLMN_EXPECT_STATUS(llmn_buffer_create(ctx_, LLMN_DTYPE_F32, INT64_MAX, LLMN_MEMORY_DEVICE, &b),
                       LLMN_STATUS_INVALID_ARGUMENT);
    LLMN_EXPECT_STATUS(llmn_buffer_create(ctx_, 99, 4, LLMN_MEMORY_DEVICE, &b), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("dtype"), std::string::npos);
    LLMN_EXPECT_STATUS(llmn_buffer_create(ctx_, LLMN_DTYPE_F32, 4, 3, &b), LLMN_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(b, nullptr);
}

TEST_F(ContextTest, InvalidHandlesAreReportedNotCrashing) {
    llmn_buffer b = nullptr;
    LLMN_ASSERT_OK(llmn_buffer_create(ctx_, LLMN_DTYPE_U8, 8, LLMN_MEMORY_DEVICE, &b));
    // wrong type: a context passed as a buffer
    LLMN_EXPECT_STATUS(llmn_buffer_destroy(reinterpret_cast<llmn_buffer>(ctx_)), LLMN_STATUS_INVALID_HANDLE);
    EXPECT_NE(last_error().find("context"), std::string::npos);
    LLMN_ASSERT_OK(llmn_buffer_destroy(b));
    // freed
    uint8_t x = 1;
    LLMN_EXPECT_STATUS(llmn_buffer_upload(b, 0, &x, 1), LLMN_STATUS_INVALID_HANDLE);
    LLMN_EXPECT_STATUS(llmn_buffer_destroy(b), LLMN_STATUS_INVALID_HANDLE);
    // null and garbage
    LLMN_EXPECT_STATUS(llmn_context_synchronize(nullptr), LLMN_STATUS_INVALID_HANDLE);
    int garbage = 0;
    LLMN_EXPECT_STATUS(llmn_context_synchronize(reinterpret_cast<llmn_context>(&garbage)), LLMN_STATUS_INVALID_HANDLE);
}

TEST(Core, ChildKeepsParentAlive) {
    int64_t before = 0, after = 0;
    LLMN_ASSERT_OK(llmn_debug_live_objects(&before));
    llmn_context ctx = nullptr;
    llmn_buffer b = nullptr;
    LLMN_ASSERT_OK(llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx));
    LLMN_ASSERT_OK(llmn_buffer_create(ctx, LLMN_DTYPE_F32, 16, LLMN_MEMORY_DEVICE, &b));
    LLMN_ASSERT_OK(llmn_context_destroy(ctx));
    float v = 3.f, r = 0.f;
    LLMN_ASSERT_OK(llmn_buffer_fill(b, 0, 16, &v));  // context handle gone, object alive
    LLMN_ASSERT_OK(llmn_buffer_download(b, 15, &r, 1));
    EXPECT_EQ(r, 3.f);
    LLMN_ASSERT_OK(llmn_buffer_destroy(b));
    LLMN_ASSERT_OK(llmn_debug_live_objects(&after));
    EXPECT_EQ(before, after);
}

TEST(Core, CreateDestroyCyclesLeaveNoLiveObjects) {
    int64_t before = 0, after = 0;
    LLMN_ASSERT_OK(llmn_debug_live_objects(&before));
    for (int i = 0; i < 100000; ++i) {
        llmn_context ctx = nullptr;
        llmn_buffer b = nullptr;
        ASSERT_EQ(llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx), LLMN_STATUS_OK);
        ASSERT_EQ(llmn_buffer_create(ctx, LLMN_DTYPE_F16, 1 + (i % 64), LLMN_MEMORY_DEVICE, &b), LLMN_STATUS_OK);
        if (i & 1) {
            llmn_context_destroy(ctx);
            llmn_buffer_destroy(b);
        } else {
            llmn_buffer_destroy(b);
            llmn_context_destroy(ctx);
        }
    }
    LLMN_ASSERT_OK(llmn_debug_live_objects(&after));
    EXPECT_EQ(before, after);
}

namespace {
struct LogSink {
    std::mutex m;
    std::vector<std::pair<int, std::string>> lines;
    static void callback(int32_t level, uint64_t, const char* msg, void* user) {
        auto* self = static_cast<LogSink*>(user);
        std::lock_guard<std::mutex> lock(self->m);
        self->lines.emplace_back(level, msg);
    }
};
}  // namespace

TEST(Core, LogCallbackReceivesLinesAtOrAboveLevel) {
    LogSink sink;
    LLMN_ASSERT_OK(llmn_set_log_callback(&LogSink::callback, &sink, LLMN_LOG_DEBUG));
    llmn_context ctx = nullptr;
    LLMN_ASSERT_OK(llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx));
    llmn_context_destroy(ctx);
    LLMN_ASSERT_OK(llmn_set_log_callback(nullptr, nullptr, LLMN_LOG_NONE));
    size_t n = sink.lines.size();
    EXPECT_GE(n, 1u);
    for (auto& l : sink.lines) EXPECT_GE(l.first, LLMN_LOG_DEBUG);
    LLMN_ASSERT_OK(llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx));
    llmn_context_destroy(ctx);
    EXPECT_EQ(sink.lines.size(), n);  // removed: silent
    LLMN_EXPECT_STATUS(llmn_set_log_callback(&LogSink::callback, &sink, 9), LLMN_STATUS_INVALID_ARGUMENT);
}

TEST(Core, ThreadPoolCoversEveryIndexOnceAndPropagatesErrors) {
    std::vector<std::atomic<int>> hits(1000);
    llmn::cpu::parallel_for(1000, [&](int64_t i) { hits[i].fetch_add(1); });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
    EXPECT_THROW(llmn::cpu::parallel_for(10, [](int64_t i) { if (i == 7) throw std::runtime_error("boom"); }),
                 std::runtime_error);
    LLMN_ASSERT_OK(llmn_set_cpu_threads(3));
    llmn_cpu_info info{};
    LLMN_ASSERT_OK(llmn_get_cpu_info(&info));
    EXPECT_EQ(info.threads, 3);
    LLMN_ASSERT_OK(llmn_set_cpu_threads(0));
    LLMN_EXPECT_STATUS(llmn_set_cpu_threads(-1), LLMN_STATUS_INVALID_ARGUMENT);
}

TEST(Core, EightThreadsWithOwnContextsAgree) {
    std::vector<std::vector<float>> results(8);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([t, &results] {
            llmn_context ctx = nullptr;
            llmn_buffer a = nullptr, b = nullptr;
            if (llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx) != LLMN_STATUS_OK) return;
            llmn_buffer_create(ctx, LLMN_DTYPE_F32, 4096, LLMN_MEMORY_DEVICE, &a);
            llmn_buffer_create(ctx, LLMN_DTYPE_F32, 4096, LLMN_MEMORY_HOST, &b);
            std::vector<float> v(4096);
            for (int i = 0; i < 4096; ++i) v[i] = std::sin(float(i));
            for (int rep = 0; rep < 200; ++rep) {
                llmn_buffer_upload(a, 0, v.data(), 4096);
                llmn_buffer_copy(b, 0, a, 0, 4096);
            }
            results[t].resize(4096);
            llmn_buffer_download(b, 0, results[t].data(), 4096);
            llmn_buffer_destroy(a);
            llmn_buffer_destroy(b);
            llmn_context_destroy(ctx);
        });
    }
    for (auto& th : threads) th.join();
    for (int t = 1; t < 8; ++t) EXPECT_EQ(results[t], results[0]);
    EXPECT_EQ(results[0].size(), 4096u);
}

TEST(Numeric, HalfRoundTripIsExactForEveryHalf) {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        float f = llmn::f16_to_f32(uint16_t(h));
        if (std::isnan(f)) continue;
        EXPECT_EQ(llmn::f32_to_f16(f), h) << std::hex << h;
    }
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return uint16_t(_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0));
}
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

TEST(Numeric, HalfConversionMatchesF16C) {
    llmn_cpu_info info{};
    llmn_get_cpu_info(&info);
    if (info.detected_isa < LLMN_CPU_ISA_AVX2) GTEST_SKIP() << "CPU has no F16C";
    for (uint32_t h = 0; h < 0x10000; ++h) {
        float a = llmn::f16_to_f32(uint16_t(h)), b = hw_f16_to_f32(uint16_t(h));
        if (std::isnan(a)) { EXPECT_TRUE(std::isnan(b)); continue; }
        ASSERT_EQ(std::memcmp(&a, &b, 4), 0) << std::hex << h;
    }
    auto r = rng(1);
    std::uniform_int_distribution<uint32_t> bits;
    for (int i = 0; i < 2000000; ++i) {
        float f = llmn::f32_from_bits(bits(r));
        if (std::isnan(f)) continue;
        ASSERT_EQ(llmn::f32_to_f16(f), hw_f32_to_f16(f)) << f;
    }
}
#endif

TEST(Numeric, Bf16RoundsToNearestEven) {
    EXPECT_EQ(llmn::f32_to_bf16(1.0f), 0x3f80);
    EXPECT_EQ(llmn::f32_to_bf16(llmn::f32_from_bits(0x3f808000u)), 0x3f80);  // tie -> even
    EXPECT_EQ(llmn::f32_to_bf16(llmn::f32_from_bits(0x3f818000u)), 0x3f82);  // tie -> even (up)
    EXPECT_EQ(llmn::f32_to_bf16(llmn::f32_from_bits(0x3f808001u)), 0x3f81);
    EXPECT_EQ(llmn::bf16_to_f32(0x3f80), 1.0f);
}

// round_half_away (the INT4 quantizer's rounding) at every half-integer k + 0.5 in [-300, 300] and its two
// neighbours, where MinGW-w64's round() fails; the expected values follow from k alone (no libm involved).
TEST(Numeric, RoundHalfAwayNextToHalfIntegers) {
    for (int k = -300; k <= 300; ++k) {
        const double h = double(k) + 0.5;  // exact
        const double away = k >= 0 ? double(k) + 1.0 : double(k);  // round-half-away of h
        EXPECT_EQ(llmn::round_half_away(h), away) << h;
        EXPECT_EQ(llmn::round_half_away(std::nextafter(h, 0.0)), k >= 0 ? double(k) : double(k) + 1.0) << h;
        EXPECT_EQ(llmn::round_half_away(std::nextafter(h, h > 0 ? 1e9 : -1e9)), away) << h;
        EXPECT_EQ(llmn::round_half_away(double(k)), double(k));
    }
    EXPECT_EQ(llmn::round_half_away(0.49999999999999994), 0.0);  // MinGW's round() gives 1
    EXPECT_EQ(llmn::round_half_away(-0.49999999999999994), 0.0);
    EXPECT_EQ(llmn::round_half_away(4503599627370497.0), 4503599627370497.0);  // >= 2^52: already an integer
    EXPECT_EQ(llmn::round_half_away(1e300), 1e300);
    EXPECT_TRUE(std::isinf(llmn::round_half_away(HUGE_VAL)));
    EXPECT_TRUE(std::isnan(llmn::round_half_away(std::nan(""))));
}
