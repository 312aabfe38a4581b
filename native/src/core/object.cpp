#include "object.hpp"

#include <atomic>
#include <mutex>
#include <unordered_map>

namespace llmn {

namespace {
std::atomic<int64_t> g_live{0};

struct Registry {
    std::mutex mutex;
    std::unordered_map<const void*, std::shared_ptr<Object>> objects;
};

Registry& registry() {
    static Registry* r = new Registry();  // never destroyed: handles may be released during exit
    return *r;
}
}  // namespace

const char* object_type_name(ObjectType t) {
    switch (t) {
        case ObjectType::Context: return "context";
        case ObjectType::Buffer: return "buffer";
        case ObjectType::Int4Weight: return "int4 weight";
        case ObjectType::KvCache: return "kv cache";
    }
    return "unknown";
}

Object::Object(ObjectType type) : type_(type) { g_live.fetch_add(1, std::memory_order_relaxed); }
Object::~Object() { g_live.fetch_sub(1, std::memory_order_relaxed); }

void* register_object(std::shared_ptr<Object> obj) {
    void* h = obj.get();
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    r.objects.emplace(h, std::move(obj));
    return h;
}

static std::shared_ptr<Object> find_locked(Registry& r, const void* handle, ObjectType type, const char* param) {
    if (handle == nullptr) fail(LLMN_STATUS_INVALID_HANDLE, "%s is NULL (expected a %s handle)", param, object_type_name(type));
    auto it = r.objects.find(handle);
    if (it == r.objects.end())
        fail(LLMN_STATUS_INVALID_HANDLE, "%s (%p) is not a live %s handle: it was destroyed or never created", param,
             handle, object_type_name(type));
    if (it->second->type() != type)
        fail(LLMN_STATUS_INVALID_HANDLE, "%s (%p) is a %s handle, expected a %s handle", param, handle,
             object_type_name(it->second->type()), object_type_name(type));
    return it->second;
}

void unregister_object(void* handle, ObjectType type, const char* param) {
    std::shared_ptr<Object> keep;  // released after the lock, so destructors may use the registry
    Registry& r = registry();
    {
        std::lock_guard<std::mutex> lock(r.mutex);
        keep = find_locked(r, handle, type, param);
        r.objects.erase(handle);
    }
}

std::shared_ptr<Object> lookup_object(const void* handle, ObjectType type, const char* param) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    return find_locked(r, handle, type, param);
}

int64_t live_object_count() { return g_live.load(std::memory_order_relaxed); }

}  // namespace llmn
