#include "log.hpp"

#include "error.hpp"

#include <atomic>
#include <mutex>
#include <string>

namespace llmn {

namespace {
std::atomic<int32_t> g_min_level{LLMN_LOG_NONE};
std::mutex g_mutex;  // serialises callback replacement against delivery
llmn_log_callback g_callback = nullptr;
void* g_user_data = nullptr;
}  // namespace

bool log_enabled(llmn_log_level level) { return level >= g_min_level.load(std::memory_order_relaxed); }

void log(llmn_log_level level, uint64_t context_id, const char* fmt, ...) {
    if (!log_enabled(level)) return;
    va_list args;
    va_start(args, fmt);
    std::string line = vformat(fmt, args);
    va_end(args);
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_callback && level >= g_min_level.load(std::memory_order_relaxed))
        g_callback(static_cast<int32_t>(level), context_id, line.c_str(), g_user_data);
}

}  // namespace llmn

extern "C" LLMN_API llmn_status llmn_set_log_callback(llmn_log_callback callback, void* user_data, int32_t min_level) {
    return llmn::guard([&] {
        LLMN_CHECK_ARG(min_level >= LLMN_LOG_TRACE && min_level <= LLMN_LOG_NONE,
                       "min_level must be 0..5 (llmn_log_level), got %d", min_level);
        std::lock_guard<std::mutex> lock(llmn::g_mutex);
        llmn::g_callback = callback;
        llmn::g_user_data = user_data;
        llmn::g_min_level.store(callback ? min_level : LLMN_LOG_NONE, std::memory_order_relaxed);
    });
}
