#include "error.hpp"
#include "per_thread.hpp"

#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

namespace llmn {

namespace {
struct LastError {
    std::string message;
};
std::string& last_error() { return per_thread<LastError>().message; }  // per thread (per_thread.hpp)
}

std::string vformat(const char* fmt, va_list args) {
    va_list copy;
    va_copy(copy, args);
    int n = std::vsnprintf(nullptr, 0, fmt, copy);
    va_end(copy);
    if (n <= 0) return std::string();
    std::string out(static_cast<size_t>(n), '\0');
    std::vsnprintf(&out[0], static_cast<size_t>(n) + 1, fmt, args);
    return out;
}

std::string format(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::string s = vformat(fmt, args);
    va_end(args);
    return s;
}

void fail(llmn_status status, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::string s = vformat(fmt, args);
    va_end(args);
    throw Error(status, std::move(s));
}

void set_last_error(const std::string& message) { last_error() = message; }
void clear_last_error() { last_error().clear(); }

void copy_out_string(const std::string& s, char* buffer, int32_t capacity, int32_t* length) {
    LLMN_CHECK_ARG(capacity >= 0, "capacity must be >= 0 (got %d)", capacity);
    LLMN_CHECK_ARG(buffer != nullptr || capacity == 0, "buffer must not be NULL when capacity is %d", capacity);
    if (length) *length = static_cast<int32_t>(s.size());
    if (capacity > 0) {
        size_t n = std::min(s.size(), static_cast<size_t>(capacity - 1));
        std::memcpy(buffer, s.data(), n);
        buffer[n] = '\0';
    }
}

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
    if (a < 0 || b < 0) fail(LLMN_STATUS_INVALID_ARGUMENT, "%s: negative size (%lld x %lld)", what, (long long)a, (long long)b);
    if (a != 0 && b > std::numeric_limits<int64_t>::max() / a)
        fail(LLMN_STATUS_INVALID_ARGUMENT, "%s: size overflows (%lld x %lld)", what, (long long)a, (long long)b);
    return a * b;
}

}  // namespace llmn

extern "C" LLMN_API llmn_status llmn_get_last_error(char* buffer, int32_t capacity, int32_t* length) {
    // Deliberately not run through guard(): it must not clear the message it reports.
    if (capacity < 0 || (buffer == nullptr && capacity > 0)) return LLMN_STATUS_INVALID_ARGUMENT;
    const std::string& s = llmn::last_error();
    if (length) *length = static_cast<int32_t>(s.size());
    if (capacity > 0) {
        size_t n = std::min(s.size(), static_cast<size_t>(capacity - 1));
        std::memcpy(buffer, s.data(), n);
        buffer[n] = '\0';
    }
    return LLMN_STATUS_OK;
}
