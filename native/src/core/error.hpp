// One error path: internal code throws llmn::Error (via fail()); every C entry point runs its body
// through guard(), which turns the exception into a status and the thread-local last-error message.
#pragma once
#include <llmnative/llmnative.h>

#include "log.hpp"  // LLMN_PRINTF_FORMAT

#include <cstdarg>
#include <exception>
#include <string>

namespace llmn {

class Error : public std::exception {
public:
    Error(llmn_status status, std::string message) : status_(status), message_(std::move(message)) {}
    llmn_status status() const noexcept { return status_; }
    const char* what() const noexcept override { return message_.c_str(); }

private:
    llmn_status status_;
    std::string message_;
};

std::string format(const char* fmt, ...) LLMN_PRINTF_FORMAT(1, 2);
std::string vformat(const char* fmt, va_list args);

[[noreturn]] void fail(llmn_status status, const char* fmt, ...) LLMN_PRINTF_FORMAT(2, 3);

// Shorthand for the most common failure: an argument with a bad value.
#define LLMN_CHECK_ARG(cond, ...)                                   \
    do {                                                            \
        if (!(cond)) ::llmn::fail(LLMN_STATUS_INVALID_ARGUMENT, __VA_ARGS__); \
    } while (0)

#define LLMN_CHECK_NOT_NULL(ptr)                                                          \
    do {                                                                                  \
        if ((ptr) == nullptr) ::llmn::fail(LLMN_STATUS_INVALID_ARGUMENT, "%s must not be NULL", #ptr); \
    } while (0)

void set_last_error(const std::string& message);
void clear_last_error();

// Runs body; maps llmn::Error / std::bad_alloc / anything else to a status and last-error message.
template <class Body>
llmn_status guard(Body&& body) noexcept {
    try {
        clear_last_error();
        body();
        return LLMN_STATUS_OK;
    } catch (const Error& e) {
        set_last_error(e.what());
        return e.status();
    } catch (const std::bad_alloc&) {
        set_last_error("host memory allocation failed");
        return LLMN_STATUS_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        set_last_error(std::string("internal error: ") + e.what());
        return LLMN_STATUS_INTERNAL;
    } catch (...) {
        set_last_error("internal error: unknown exception");
        return LLMN_STATUS_INTERNAL;
    }
}

// Writes a string into a caller's (buffer, capacity, length) triple, the ABI's one string convention.
void copy_out_string(const std::string& s, char* buffer, int32_t capacity, int32_t* length);

// Safe size arithmetic: a*b with overflow reported against the named parameter.
int64_t checked_mul(int64_t a, int64_t b, const char* what);

}  // namespace llmn
