// Per-thread scratch objects (kernel work buffers, the last error message): per_thread<T>() is one T per
// thread, created on first use and destroyed when the thread exits.
//
// Why not plain `thread_local T`: MinGW-w64 (the win-x64 build) implements thread_local with emutls,
// which frees a thread's TLS block before libstdc++ runs that thread's thread_local destructors; they
// then read freed memory (seen as a crash in _aligned_free when the CPU pool's workers exited under
// Wine). There the object lives behind a Win32 fiber-local slot whose callback deletes it. Elsewhere
// it is plain thread_local. Give each call site its own T (a struct of its buffers): one T, one object.
#pragma once
#include <cstdint>

namespace llmn {

#if defined(__MINGW32__)
namespace detail {
uint32_t fls_slot(void (*destroy)(void*));  // FlsAlloc; fails (LLMN_STATUS_INTERNAL) when none is left
void* fls_get(uint32_t slot);
void fls_set(uint32_t slot, void* p);
}  // namespace detail

template <class T>
T& per_thread() {
    static const uint32_t slot = detail::fls_slot([](void* p) { delete static_cast<T*>(p); });
    void* p = detail::fls_get(slot);
    if (!p) {
        T* t = new T();
        try {
            detail::fls_set(slot, t);
        } catch (...) {
            delete t;
            throw;
        }
        p = t;
    }
    return *static_cast<T*>(p);
}
#else
template <class T>
T& per_thread() {
    thread_local T t;
    return t;
}
#endif

}  // namespace llmn
