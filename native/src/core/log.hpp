// One log path: native code calls log(level, context_id, fmt, ...); lines below the threshold are
// never formatted; the process-wide callback (llmn_set_log_callback) receives the rest.
#pragma once
#include <llmnative/llmnative.h>

#include <cstdint>

namespace llmn {

bool log_enabled(llmn_log_level level);
void log(llmn_log_level level, uint64_t context_id, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

}  // namespace llmn
