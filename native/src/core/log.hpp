// One log path: native code calls log(level, context_id, fmt, ...); lines below the threshold are
// never formatted; the process-wide callback (llmn_set_log_callback) receives the rest.
#pragma once
#include <llmnative/llmnative.h>

#include <cstdint>

namespace llmn {

bool log_enabled(llmn_log_level level);
void log(llmn_log_level level, uint64_t context_id, const char* fmt, ...)
#if defined(__MINGW32__)  // MinGW: C99 printf (__USE_MINGW_ANSI_STDIO), not msvcrt's
    __attribute__((format(gnu_printf, 3, 4)))
#elif defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

}  // namespace llmn
