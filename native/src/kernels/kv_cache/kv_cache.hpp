// KvCache: one paged KV cache = one pool of fixed-size blocks in the context's device memory (byte
// layout in kv_layout.hpp) plus host-side bookkeeping: a free list, a refcount per block and one
// block table per sequence. Block tables are shared by all layers; each layer has its own length.
//
// Why host bookkeeping: every management call (add/append/fork/truncate/remove) is a handful of
// integer operations per block, and the decode kernels only need a snapshot of the tables per call.
// A backend that needs them on the device mirrors them lazily using tables_version().
//
// Semantics every mutating call keeps: validate everything (sequence, layer, shapes, values,
// capacity) first, then commit; a failed call leaves data, lengths, tables and stats unchanged.
// Sharing: fork shares the blocks that are full in every layer (refcount + 1) and copies the others;
// a write into a block whose refcount is > 1 first copies it (copy-on-write, all layers of the
// block), e.g. after truncate made a shared full block partial again.
//
// Thread safety: each public method expects mutex() held by the caller (the API layer locks), so
// one cache may be used from several threads; kernels hold the lock for their whole run.
#pragma once
#include "../../core/context.hpp"
#include "kv_layout.hpp"

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace llmn {

struct KvSequence {
    std::vector<int32_t> blocks;  // logical block j -> physical block id
    std::vector<int64_t> length;  // [num_layers] tokens stored per layer
    int32_t res_slot = -1;        // KIVI residual slot (kv_layout.hpp), -1 when the cache has none
    int64_t max_length() const;
};

// Backend-private state attached to a cache (CUDA: device mirror of the block tables keyed by
// tables_version(), and the split-KV partial-output workspace sized from desc().max_batch).
struct KvBackendState {
    virtual ~KvBackendState() = default;
};

class KvCache : public Object {
public:
    static constexpr ObjectType kType = ObjectType::KvCache;
    // desc must be validated and resolved (validate_kv_desc with a context).
    KvCache(std::shared_ptr<Context> ctx, const llmn_kv_cache_desc& desc, const KvLayout& layout);
    ~KvCache() override;

    const std::shared_ptr<Context>& context() const { return ctx_; }
    const llmn_kv_cache_desc& desc() const { return desc_; }
    const KvLayout& layout() const { return layout_; }
    uint8_t* pool() const { return static_cast<uint8_t*>(pool_); }
    std::mutex& mutex() const { return mutex_; }

    int64_t add_sequence();
    void remove_sequence(int64_t id);
    int64_t fork_sequence(int64_t source_id);
    void truncate_sequence(int64_t id, int64_t length);
    // Throws LLMN_STATUS_NOT_FOUND naming param when id is not a live sequence.
    const KvSequence& sequence(int64_t id, const char* param) const;
    void check_layer(int32_t layer, const char* param) const;

    // k, v: [num_tokens, num_kv_heads, head_dim] buffers (validated here).
    void append(int64_t id, int32_t layer, const Buffer& k, const Buffer& v, int32_t num_tokens);
    void read(int64_t id, int32_t layer, int64_t start, int64_t count, const Buffer& k, const Buffer& v) const;

    llmn_kv_cache_stats stats() const;
    // Bumped whenever any block table changes (allocation, copy-on-write, fork, truncate, remove).
    uint64_t tables_version() const { return tables_version_; }

    std::unique_ptr<KvBackendState>& backend_state() { return backend_state_; }

    // Test hooks: permute the free list (so tests see scattered, unordered blocks) and inspect sharing.
    void debug_shuffle_free_list(uint64_t seed);
    int32_t debug_refcount(int32_t block) const { return refcount_.at(static_cast<size_t>(block)); }

private:
    KvSequence& find(int64_t id, const char* param);
    int32_t take_block();
    void release_block(int32_t block);
    void copy_block(int32_t dst, int32_t src);  // all layers
    void pool_write(int64_t offset, const void* src, size_t bytes);
    void pool_read(int64_t offset, void* dst, size_t bytes) const;
    int32_t take_res_slot(const char* what);  // throws CAPACITY_EXCEEDED when all max_batch slots are live
    // KIVI, CPU backend (host pool): quantizes the residual tile of (seq, layer) into block `block` (the
    // block just filled). A CUDA cache quantizes on the device in its append (kv_append.cu).
    void kivi_flush(const KvSequence& s, int32_t layer, int32_t block);

    std::shared_ptr<Context> ctx_;
    llmn_kv_cache_desc desc_;
    KvLayout layout_;
    void* pool_ = nullptr;
    std::vector<int32_t> free_;      // stack of free block ids (back is taken next)
    std::vector<int32_t> refcount_;  // per block; 0 = free
    std::vector<int32_t> free_res_;  // free KIVI residual slots (back is taken next)
    std::unordered_map<int64_t, KvSequence> seqs_;
    int64_t next_id_ = 1;
    uint64_t tables_version_ = 0;
    std::unique_ptr<KvBackendState> backend_state_;
    mutable std::mutex mutex_;
};

// Validates a description (naming the field and value); returns it with defaults resolved
// (max_batch 0 -> 256). With an INT4/INT2 side the pool also holds max_batch residual slots (one per
// live sequence; kv_layout.hpp), counted in layout->pool_bytes and subtracted from capacity_bytes. ctx == nullptr: planner mode (no backend restrictions). Fills the layout
// (num_blocks/layer_stride/pool_bytes only when ctx != nullptr, i.e. for a cache to create).
llmn_kv_cache_desc validate_kv_desc(const llmn_kv_cache_desc* desc, const Context* ctx, KvLayout* layout);

constexpr int32_t kKvDefaultMaxBatch = 256;
constexpr int64_t kKvMaxSequenceLength = (int64_t(1) << 31) - 1;

}  // namespace llmn
