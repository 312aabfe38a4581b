// C entry points of the paged KV cache (llmn_kv_cache_*). Each looks up and validates handles,
// takes the cache's lock and forwards to KvCache, whose methods validate before they change anything.
#include "../../core/error.hpp"
#include "../../core/log.hpp"
#include "kv_cache.hpp"

#include <algorithm>
#include <mutex>

using namespace llmn;

namespace {
std::shared_ptr<KvCache> get_cache(llmn_kv_cache h) { return lookup<KvCache>(h, "cache"); }
}  // namespace

extern "C" {

LLMN_API llmn_status llmn_kv_cache_bytes_per_token(const llmn_kv_cache_desc* desc, int64_t* bytes) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(bytes);
        KvLayout L;
        validate_kv_desc(desc, nullptr, &L);
        // Exact for f16/bf16; rounded up when a block's padding does not divide evenly. KIVI: the
        // quantized blocks only (the partial block keeps its pool block, so this is the steady-state
        // cost); the f16 residual tiles are a fixed max_batch-sized region, counted by
        // llmn_kv_cache_tokens_for_budget and the pool, not per token.
        *bytes = (L.block_bytes_one_layer() + L.block_size - 1) / L.block_size;
    });
}

LLMN_API llmn_status llmn_kv_cache_tokens_for_budget(const llmn_kv_cache_desc* desc, int64_t budget_bytes,
                                                     int64_t* tokens) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(tokens);
        KvLayout L;
        const llmn_kv_cache_desc d = validate_kv_desc(desc, nullptr, &L);
        LLMN_CHECK_ARG(budget_bytes >= 0, "budget_bytes must be >= 0, got %lld", (long long)budget_bytes);
        // Whole blocks of all layers only: what llmn_kv_cache_create with capacity_bytes would hold
        // (after the KIVI residual region of max_batch slots, which comes off the budget first).
        const int64_t residual = L.residual_bytes(d.max_batch);
        *tokens = (budget_bytes - std::min(budget_bytes, residual)) / L.block_bytes_all_layers() * L.block_size;
    });
}

LLMN_API llmn_status llmn_kv_cache_create(llmn_context context, const llmn_kv_cache_desc* desc, llmn_kv_cache* cache) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(cache);
        *cache = nullptr;
        auto ctx = get_context(context);
        KvLayout L;
        llmn_kv_cache_desc d = validate_kv_desc(desc, ctx.get(), &L);
        auto c = std::make_shared<KvCache>(ctx, d, L);
        log(LLMN_LOG_DEBUG, ctx->id(),
            "kv cache created: %d layers, %d kv heads, head_dim %d, block_size %d, %lld blocks (%lld tokens), %lld bytes",
            d.num_layers, d.num_kv_heads, d.head_dim, d.block_size, (long long)L.num_blocks, (long long)d.capacity_tokens,
            (long long)L.pool_bytes);
        *cache = reinterpret_cast<llmn_kv_cache>(register_object(c));
    });
}

LLMN_API llmn_status llmn_kv_cache_destroy(llmn_kv_cache cache) {
    return guard([&] { destroy_handle<KvCache>(cache, "cache"); });
}

LLMN_API llmn_status llmn_kv_cache_get_desc(llmn_kv_cache cache, llmn_kv_cache_desc* desc) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(desc);
        auto c = get_cache(cache);
        *desc = c->desc();  // max_batch resolved; capacity as capacity_tokens (whole blocks)
    });
}

LLMN_API llmn_status llmn_kv_cache_get_stats(llmn_kv_cache cache, llmn_kv_cache_stats* stats) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(stats);
        auto c = get_cache(cache);
        std::lock_guard<std::mutex> lock(c->mutex());
        *stats = c->stats();
    });
}

LLMN_API llmn_status llmn_kv_cache_add_sequence(llmn_kv_cache cache, int64_t* sequence_id) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(sequence_id);
        auto c = get_cache(cache);
        std::lock_guard<std::mutex> lock(c->mutex());
        *sequence_id = c->add_sequence();
    });
}

LLMN_API llmn_status llmn_kv_cache_remove_sequence(llmn_kv_cache cache, int64_t sequence_id) {
    return guard([&] {
        auto c = get_cache(cache);
        std::lock_guard<std::mutex> lock(c->mutex());
        c->remove_sequence(sequence_id);
    });
}

LLMN_API llmn_status llmn_kv_cache_fork_sequence(llmn_kv_cache cache, int64_t source_id, int64_t* sequence_id) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(sequence_id);
        auto c = get_cache(cache);
        std::lock_guard<std::mutex> lock(c->mutex());
        *sequence_id = c->fork_sequence(source_id);
    });
}

LLMN_API llmn_status llmn_kv_cache_truncate_sequence(llmn_kv_cache cache, int64_t sequence_id, int64_t length) {
    return guard([&] {
        auto c = get_cache(cache);
        std::lock_guard<std::mutex> lock(c->mutex());
        c->truncate_sequence(sequence_id, length);
    });
}

LLMN_API llmn_status llmn_kv_cache_get_sequence_length(llmn_kv_cache cache, int64_t sequence_id, int32_t layer,
                                                       int64_t* length) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(length);
        auto c = get_cache(cache);
        std::lock_guard<std::mutex> lock(c->mutex());
        const KvSequence& s = c->sequence(sequence_id, "sequence_id");
        c->check_layer(layer, "layer");
        *length = s.length[size_t(layer)];
    });
}

LLMN_API llmn_status llmn_kv_cache_append(llmn_kv_cache cache, int64_t sequence_id, int32_t layer, llmn_buffer k,
                                          llmn_buffer v, int32_t num_tokens) {
    return guard([&] {
        auto c = get_cache(cache);
        auto kb = get_buffer(k, "k");
        auto vb = get_buffer(v, "v");
        std::lock_guard<std::mutex> lock(c->mutex());
        c->append(sequence_id, layer, *kb, *vb, num_tokens);
    });
}

LLMN_API llmn_status llmn_kv_cache_read(llmn_kv_cache cache, int64_t sequence_id, int32_t layer, int64_t start,
                                        int64_t count, llmn_buffer k, llmn_buffer v) {
    return guard([&] {
        auto c = get_cache(cache);
        auto kb = get_buffer(k, "k");
        auto vb = get_buffer(v, "v");
        std::lock_guard<std::mutex> lock(c->mutex());
        c->read(sequence_id, layer, start, count, *kb, *vb);
    });
}

}  // extern "C"
