// Shared helpers for the native tests: status assertions with the native message, seeded random
// data (fresh per run unless LLMNATIVE_TEST_SEED is set; the seed is printed so a failure can be
// replayed), and a CUDA-availability gate that skips visibly.
#pragma once
#include <gtest/gtest.h>
#include <llmnative/llmnative.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

namespace llmn_test {

inline std::string last_error() {
    char buf[2048];
    int32_t len = 0;
    llmn_get_last_error(buf, sizeof(buf), &len);
    return std::string(buf);
}

#define LLMN_ASSERT_OK(expr)                                                          \
    do {                                                                              \
        llmn_status _s = (expr);                                                      \
        ASSERT_EQ(_s, LLMN_STATUS_OK) << #expr << " failed: " << ::llmn_test::last_error(); \
    } while (0)

#define LLMN_EXPECT_STATUS(expr, status)                                                    \
    do {                                                                                    \
        llmn_status _s = (expr);                                                            \
        EXPECT_EQ(_s, status) << #expr << " -> " << ::llmn_test::last_error();              \
    } while (0)

inline uint64_t test_seed() {
    static const uint64_t seed = [] {
        const char* env = std::getenv("LLMNATIVE_TEST_SEED");
        uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
        std::printf("[llmnative] random seed %llu (set LLMNATIVE_TEST_SEED to replay)\n", (unsigned long long)s);
        return s;
    }();
    return seed;
}

// The tests' round-half-away-from-zero reference, in double (exact for every float below 2^52). Not
// std::round: MinGW-w64's returns 1 for the largest float below 0.5 (win-x64 tests run under Wine).
inline double round_half_away_ref(double y) { return std::copysign(std::floor(std::fabs(y) + 0.5), y); }

inline std::mt19937_64 rng(uint64_t salt = 0) { return std::mt19937_64(test_seed() * 0x9E3779B97F4A7C15ull + salt); }

// Skips the current test (visibly, with the reason) when no CUDA device can be used.
#define LLMN_REQUIRE_CUDA()                                                       \
    do {                                                                          \
        llmn_cuda_info _ci{};                                                     \
        llmn_get_cuda_info(&_ci);                                                 \
        if (!_ci.available) GTEST_SKIP() << "no CUDA device: " << _ci.unavailable_reason; \
    } while (0)

}  // namespace llmn_test
