// One log path: native code calls log(level, context_id, fmt, ...); lines below the threshold are
// never formatted; the process-wide callback (llmn_set_log_callback) receives the rest.
#pragma once
#include <llmnative/llmnative.h>

#include <cstdint>

// Format checking for printf-style functions (here and in error.hpp). MinGW: C99 printf
// (__USE_MINGW_ANSI_STDIO, see CMakeLists.txt), not msvcrt's.
#if defined(__MINGW32__)
#define LLMN_PRINTF_FORMAT(fmt, args) __attribute__((format(gnu_printf, fmt, args)))
#elif defined(__GNUC__)
#define LLMN_PRINTF_FORMAT(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define LLMN_PRINTF_FORMAT(fmt, args)
#endif

namespace llmn {

bool log_enabled(llmn_log_level level);
void log(llmn_log_level level, uint64_t context_id, const char* fmt, ...) LLMN_PRINTF_FORMAT(3, 4);

}  // namespace llmn
