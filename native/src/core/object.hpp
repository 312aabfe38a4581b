// Every native object handed out through the ABI derives from Object and is registered in one
// process-wide registry keyed by its address. Lookups check liveness and the type tag, so a freed,
// foreign or wrong-type handle becomes LLMN_STATUS_INVALID_HANDLE instead of undefined behaviour.
// The registry holds shared_ptrs: destroying a handle unregisters it, but the object lives on while
// children (a buffer's context, a weight's context) still reference it.
#pragma once
#include "error.hpp"

#include <cstdint>
#include <memory>

namespace llmn {

enum class ObjectType : uint32_t {
    Context = 0x43545831,  // 'CTX1'
    Buffer = 0x42554631,   // 'BUF1'
    Int4Weight = 0x49345731,
    KvCache = 0x4b564331,
};

const char* object_type_name(ObjectType t);

class Object {
public:
    explicit Object(ObjectType type);
    virtual ~Object();
    Object(const Object&) = delete;
    Object& operator=(const Object&) = delete;
    ObjectType type() const { return type_; }

private:
    ObjectType type_;
};

// Registers obj and returns the opaque handle value (its address).
void* register_object(std::shared_ptr<Object> obj);
// Unregisters; the object is destroyed once no other shared_ptr holds it.
void unregister_object(void* handle, ObjectType type, const char* param);
// Looks up a live handle of the given type or fails naming param.
std::shared_ptr<Object> lookup_object(const void* handle, ObjectType type, const char* param);

template <class T>
std::shared_ptr<T> lookup(const void* handle, const char* param) {
    return std::static_pointer_cast<T>(lookup_object(handle, T::kType, param));
}

template <class T>
void destroy_handle(void* handle, const char* param) {
    unregister_object(handle, T::kType, param);
}

int64_t live_object_count();

}  // namespace llmn
