#include "per_thread.hpp"

#if defined(__MINGW32__)
#include "error.hpp"

#include "win32.hpp"

namespace llmn::detail {

uint32_t fls_slot(void (*destroy)(void*)) {
    // x64 has one calling convention: a plain function pointer is a PFLS_CALLBACK_FUNCTION.
    const DWORD slot = FlsAlloc(reinterpret_cast<PFLS_CALLBACK_FUNCTION>(destroy));
    if (slot == FLS_OUT_OF_INDEXES) fail(LLMN_STATUS_INTERNAL, "FlsAlloc: no fiber-local slot left");
    return slot;
}

void* fls_get(uint32_t slot) { return FlsGetValue(slot); }

void fls_set(uint32_t slot, void* p) {
    if (!FlsSetValue(slot, p)) fail(LLMN_STATUS_INTERNAL, "FlsSetValue failed (error %lu)", (unsigned long)GetLastError());
}

}  // namespace llmn::detail
#endif
