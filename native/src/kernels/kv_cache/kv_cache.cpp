// KvCache bookkeeping and the host-mediated data path (append converts and validates on the host,
// then writes whole rows into the pool with memcpy on CPU or stream-ordered copies on CUDA). On CUDA,
// append validates and writes on the device instead (kv_append_cuda.hpp; same checks, same bytes,
// KIVI block quantization included); read-back, copy-on-write, fork's residual copy and truncate's
// KIVI re-expansion stay on this path (KIVI tiles are staged through the host on CUDA: none of them
// is on the decode hot path).
#include "kv_cache.hpp"

#include "../../core/numeric.hpp"
#include "../../cuda/cuda_runtime.hpp"
#include "kv_kivi.hpp"
#include "kv_append_cuda.hpp"
#include "kv_quant.hpp"
#include "kv_kivi_stage.hpp"
#include "kv_stage.hpp"
#include "../../cpu/cpu_runtime.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

namespace llmn {

int64_t KvSequence::max_length() const {
    int64_t m = 0;
    for (int64_t l : length) m = std::max(m, l);
    return m;
}

namespace {

bool one_of(int32_t v, std::initializer_list<int32_t> set) {
    for (int32_t s : set)
        if (v == s) return true;
    return false;
}

void check_format(int32_t format, const char* field, const Context* ctx) {
    LLMN_CHECK_ARG(kv_format_is_valid(format), "desc->%s must be a llmn_kv_format (0..5), got %d", field, format);
    if (format == LLMN_KV_F16) return;
    if (format == LLMN_KV_BF16) {
        if (ctx && !ctx->is_cuda())
            fail(LLMN_STATUS_UNSUPPORTED,
                 "desc->%s = LLMN_KV_BF16 (1) is CUDA only; a CPU cache stores LLMN_KV_F16 (0)", field);
        return;
    }
    // INT8 / FP8-E4M3 and KIVI INT4 / INT2: every backend (CUDA: device quantize-on-append in
    // kv_append.cu; which format pairs decode attention reads is that kernel's own check).
}

// Host view of a buffer's first `bytes` bytes: the buffer itself when the host can read it,
// otherwise a staged copy.
const void* host_view(const Buffer& b, size_t bytes, std::vector<uint8_t>& staging) {
    const Context& c = *b.context();
    if (!c.is_cuda()) return b.data();
    staging.resize(bytes);
    if (b.memory() == LLMN_MEMORY_HOST) {
        c.synchronize();
        std::memcpy(staging.data(), b.data(), bytes);
    } else {
        copy_to_host(c, staging.data(), b.data(), bytes);
    }
    return staging.data();
}

void write_to_buffer(const Buffer& b, const void* src, size_t bytes) {
    const Context& c = *b.context();
    if (!c.is_cuda() || b.memory() == LLMN_MEMORY_HOST) {
        if (c.is_cuda()) c.synchronize();
        std::memcpy(b.data(), src, bytes);
    } else {
        copy_to_device(c, b.data(), src, bytes);
    }
}

float load_elem(const void* p, llmn_dtype dt, int64_t i) {
    switch (dt) {
        case LLMN_DTYPE_F32: return static_cast<const float*>(p)[i];
        case LLMN_DTYPE_F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
        case LLMN_DTYPE_BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
        default: return 0.0f;
    }
}

void check_kv_input(const Buffer& b, const Context& ctx, const char* param, int64_t needed, const char* shape) {
    check_buffer_for_kernel(b, ctx, param);
    bool ok = b.dtype() == LLMN_DTYPE_F32 || b.dtype() == LLMN_DTYPE_F16 || (ctx.is_cuda() && b.dtype() == LLMN_DTYPE_BF16);
    if (!ok)
        fail(LLMN_STATUS_INVALID_ARGUMENT, "%s has dtype %s; expected f32 or f16%s", param, dtype_name(b.dtype()),
             ctx.is_cuda() ? " or bf16" : "");
    check_buffer_count(b, needed, param, shape);
}

// Converts n*H*D input elements to the storage format, rejecting NaN, Inf and values the format
// cannot hold. Nothing is written to the cache before every element of K and V passed.
// out: n*H rows of kv_row_bytes(format, dim) bytes ([token][head] order); scales: n*H f32 scales
// for INT8/FP8 (one per (token, head), see kv_quant.hpp), empty otherwise.
void stage_rows(const Buffer& b, const char* param, int32_t format, int64_t n, int32_t heads, int32_t dim,
                std::vector<uint8_t>& out, std::vector<float>& scales) {
    const int64_t count = n * heads * dim;
    std::vector<uint8_t> staging;
    const void* src = host_view(b, size_t(count) * dtype_size(b.dtype()), staging);
    const bool q8 = kv_format_is_q8(format);
    out.resize(size_t(count) * (q8 ? 1 : 2));
#if defined(__x86_64__) || defined(_M_X64)
    if (q8 && b.dtype() == LLMN_DTYPE_F32 && cpu::active_isa() >= LLMN_CPU_ISA_AVX2) {  // same bytes
        scales.resize(size_t(n * heads));
        if (kv_stage_q8_avx2(format == LLMN_KV_FP8_E4M3, static_cast<const float*>(src), n * heads, dim, out.data(), scales.data()))
            return;
    }
#endif
    if (!q8 && format != LLMN_KV_BF16) {  // f16 rows (F16, KIVI residual): fast paths, same bytes
        uint16_t* dst = reinterpret_cast<uint16_t*>(out.data());
        if (b.dtype() == LLMN_DTYPE_F16) {  // finite halves are stored as they are
            const uint16_t* h = static_cast<const uint16_t*>(src);
            bool finite = true;
            for (int64_t i = 0; i < count; ++i) finite &= (h[i] & 0x7c00) != 0x7c00;
            if (finite) {
                std::memcpy(dst, h, size_t(count) * 2);
                return;
            }
        }
#if defined(__x86_64__) || defined(_M_X64)
        if (b.dtype() == LLMN_DTYPE_F32 && cpu::active_isa() >= LLMN_CPU_ISA_AVX2 &&
            kv_stage_f16_avx2(static_cast<const float*>(src), count, dst))
            return;
#endif
    }
    std::vector<float> row;
    if (q8) {
        scales.resize(size_t(n * heads));
        row.resize(size_t(dim));
    }
    for (int64_t i = 0; i < count; ++i) {
        const float x = load_elem(src, b.dtype(), i);
        uint16_t code = 0;
        bool ok;
        if (q8) {
            ok = std::isfinite(x);  // any finite value: the per-row scale absorbs the range
            row[size_t(i % dim)] = x;
        } else if (format == LLMN_KV_BF16) {  // (KIVI sides stage f16 residual rows: the else branch)
            code = f32_to_bf16(x);
            ok = std::isfinite(bf16_to_f32(code));
        } else {
            code = f32_to_f16(x);
            ok = std::fabs(x) < 65520.0f;  // false for NaN/Inf; >= 65520 rounds to f16 Inf
        }
        if (!ok) {
            int64_t t = i / (int64_t(heads) * dim), h = (i / dim) % heads, d = i % dim;
            if (std::isnan(x))
                fail(LLMN_STATUS_INVALID_ARGUMENT, "%s[token %lld, head %lld, channel %lld] is NaN; the KV cache stores finite values only",
                     param, (long long)t, (long long)h, (long long)d);
            if (std::isinf(x))
                fail(LLMN_STATUS_INVALID_ARGUMENT, "%s[token %lld, head %lld, channel %lld] is %sInf; the KV cache stores finite values only",
                     param, (long long)t, (long long)h, (long long)d, x < 0 ? "-" : "+");
            fail(LLMN_STATUS_INVALID_ARGUMENT, "%s[token %lld, head %lld, channel %lld] = %g overflows the cache's %s storage",
                 param, (long long)t, (long long)h, (long long)d, double(x), kv_format_name(format));
        }
        if (q8) {
            if (i % dim == dim - 1) {
                const int64_t r = i / dim;  // (token, head) row
                scales[size_t(r)] = kv_quantize_row(format, row.data(), dim, &out[size_t(r * dim)]);
            }
        } else {
            std::memcpy(&out[size_t(i) * 2], &code, 2);
        }
    }
}

}  // namespace

llmn_kv_cache_desc validate_kv_desc(const llmn_kv_cache_desc* desc, const Context* ctx, KvLayout* layout) {
    LLMN_CHECK_NOT_NULL(desc);
    llmn_kv_cache_desc d = *desc;
    LLMN_CHECK_ARG(d.num_layers >= 1 && d.num_layers <= 4096, "desc->num_layers must be in [1, 4096], got %d", d.num_layers);
    LLMN_CHECK_ARG(d.num_kv_heads >= 1 && d.num_kv_heads <= 1024, "desc->num_kv_heads must be in [1, 1024], got %d",
                   d.num_kv_heads);
    LLMN_CHECK_ARG(one_of(d.head_dim, {64, 80, 96, 128, 256}), "desc->head_dim must be 64, 80, 96, 128 or 256, got %d",
                   d.head_dim);
    LLMN_CHECK_ARG(one_of(d.block_size, {8, 16, 32, 64, 128, 256}),
                   "desc->block_size must be 8, 16, 32, 64, 128 or 256, got %d", d.block_size);
    check_format(d.k_format, "k_format", ctx);
    check_format(d.v_format, "v_format", ctx);
    LLMN_CHECK_ARG(d.value_group_size == 0 || one_of(d.value_group_size, {32, 64, 128}),
                   "desc->value_group_size must be 0, 32, 64 or 128, got %d", d.value_group_size);
    LLMN_CHECK_ARG(d.max_batch >= 0 && d.max_batch <= 65536, "desc->max_batch must be in [0, 65536] (0 = %d), got %d",
                   kKvDefaultMaxBatch, d.max_batch);
    if (d.max_batch == 0) d.max_batch = kKvDefaultMaxBatch;
    if (kv_format_is_kivi(d.v_format)) {
        LLMN_CHECK_ARG(d.value_group_size != 0,
                       "desc->value_group_size must be 32, 64 or 128 when desc->v_format = %s, got 0",
                       kv_format_name(d.v_format));
        LLMN_CHECK_ARG(d.head_dim % d.value_group_size == 0,
                       "desc->value_group_size = %d does not divide desc->head_dim = %d (v_format %s groups whole "
                       "channels of one token)",
                       d.value_group_size, d.head_dim, kv_format_name(d.v_format));
    }

    KvLayout L = kv_tile_layout(d);
    if (ctx) {
        LLMN_CHECK_ARG(d.capacity_tokens >= 0, "desc->capacity_tokens must be >= 0, got %lld", (long long)d.capacity_tokens);
        LLMN_CHECK_ARG(d.capacity_bytes >= 0, "desc->capacity_bytes must be >= 0, got %lld", (long long)d.capacity_bytes);
        LLMN_CHECK_ARG((d.capacity_tokens > 0) != (d.capacity_bytes > 0),
                       "exactly one of desc->capacity_tokens (%lld) and desc->capacity_bytes (%lld) must be > 0",
                       (long long)d.capacity_tokens, (long long)d.capacity_bytes);
        const int64_t per_block = checked_mul(checked_mul(L.tile_bytes, d.num_kv_heads, "bytes of one block of one layer"),
                                              d.num_layers, "bytes of one block over all layers");
        const int64_t residual = checked_mul(checked_mul(L.res_head_stride, int64_t(d.num_layers) * d.num_kv_heads,
                                                         "KIVI residual slot size"),
                                             d.max_batch, "KIVI residual region size");
        int64_t blocks = 0;
        if (d.capacity_tokens > 0) {
            blocks = d.capacity_tokens / d.block_size + (d.capacity_tokens % d.block_size != 0);
        } else {
            blocks = (d.capacity_bytes - std::min(residual, d.capacity_bytes)) / per_block;
            LLMN_CHECK_ARG(blocks >= 1,
                           "desc->capacity_bytes = %lld is smaller than one block (%lld bytes: %d tokens x %d layers)%s",
                           (long long)d.capacity_bytes, (long long)per_block, d.block_size, d.num_layers,
                           residual > 0 ? format(" plus the KIVI residual region (%lld bytes: %d slots = max_batch)",
                                                 (long long)residual, d.max_batch).c_str()
                                        : "");
        }
        LLMN_CHECK_ARG(blocks <= std::numeric_limits<int32_t>::max(),
                       "the cache would have %lld blocks; at most 2^31-1 are addressable (raise block_size)", (long long)blocks);
        // overflow check of what set_num_blocks computes: layer_stride = blocks x tile_bytes x num_kv_heads
        (void)checked_mul(checked_mul(blocks, L.tile_bytes, "KV pool size of one kv head"), d.num_kv_heads, "KV pool layer size");
        L.set_num_blocks(blocks);
        L.pool_bytes = checked_mul(L.layer_stride, d.num_layers, "KV pool size");
        L.res_region_off = L.pool_bytes;
        L.num_res_slots = L.has_residual() ? d.max_batch : 0;
        LLMN_CHECK_ARG(residual <= std::numeric_limits<int64_t>::max() - L.pool_bytes,
                       "KV pool size overflows int64 (reduce desc->max_batch or the capacity)");
        L.pool_bytes += residual;
        d.capacity_tokens = blocks * d.block_size;
        d.capacity_bytes = 0;
    }
    if (layout) *layout = L;
    return d;
}

KvCache::KvCache(std::shared_ptr<Context> ctx, const llmn_kv_cache_desc& desc, const KvLayout& layout)
    : Object(kType), ctx_(std::move(ctx)), desc_(desc), layout_(layout) {
    free_.resize(size_t(layout_.num_blocks));
    refcount_.assign(size_t(layout_.num_blocks), 0);
    // Back of the stack is taken first: blocks come out in increasing order unless shuffled.
    for (int64_t i = 0; i < layout_.num_blocks; ++i) free_[size_t(i)] = int32_t(layout_.num_blocks - 1 - i);
    for (int64_t i = layout_.num_res_slots - 1; i >= 0; --i) free_res_.push_back(int32_t(i));
    pool_ = alloc_bytes(*ctx_, LLMN_MEMORY_DEVICE, size_t(layout_.pool_bytes));
    // Decode streams 4-8 KiB head tiles from scattered blocks (see advise_huge_pages).
    if (!ctx_->is_cuda()) cpu::advise_huge_pages(pool_, size_t(layout_.pool_bytes));
}

KvCache::~KvCache() {
    backend_state_.reset();
    free_bytes(*ctx_, LLMN_MEMORY_DEVICE, pool_);
}

KvSequence& KvCache::find(int64_t id, const char* param) {
    auto it = seqs_.find(id);
    if (it == seqs_.end())
        fail(LLMN_STATUS_NOT_FOUND, "%s = %lld is not a live sequence of this KV cache (removed, or never added)", param,
             (long long)id);
    return it->second;
}

const KvSequence& KvCache::sequence(int64_t id, const char* param) const {
    return const_cast<KvCache*>(this)->find(id, param);
}

void KvCache::check_layer(int32_t layer, const char* param) const {
    LLMN_CHECK_ARG(layer >= 0 && layer < desc_.num_layers, "%s must be in [0, %d) (the cache's num_layers), got %d", param,
                   desc_.num_layers, layer);
}

int32_t KvCache::take_block() {
    int32_t b = free_.back();
    free_.pop_back();
    refcount_[size_t(b)] = 1;
    return b;
}

void KvCache::release_block(int32_t block) {
    if (--refcount_[size_t(block)] == 0) free_.push_back(block);
}

void KvCache::pool_write(int64_t offset, const void* src, size_t bytes) {
    if (ctx_->is_cuda()) copy_to_device(*ctx_, pool() + offset, src, bytes);
    else std::memcpy(pool() + offset, src, bytes);
}

void KvCache::pool_read(int64_t offset, void* dst, size_t bytes) const {
    if (ctx_->is_cuda()) copy_to_host(*ctx_, dst, pool() + offset, bytes);
    else std::memcpy(dst, pool() + offset, bytes);
}

void KvCache::copy_block(int32_t dst, int32_t src) {
    // A block is one tile per (layer, kv head). Since layer_stride = num_kv_heads * head_stride (kv_layout.hpp),
    // those tiles sit at (layer * num_kv_heads + head) * head_stride + block * block_stride: one progression of
    // pitch head_stride. On CUDA that is one 2-D copy per copy-on-write instead of layers x heads copies (each a
    // driver call of a few microseconds: 256 of them per block for 32 layers x 8 heads).
    const int64_t rows = int64_t(desc_.num_layers) * desc_.num_kv_heads;
    uint8_t* d = pool() + layout_.tile_offset(0, dst, 0);
    const uint8_t* s = pool() + layout_.tile_offset(0, src, 0);
    if (ctx_->is_cuda()) {
        cuda::copy_d2d_rows(ctx_->device(), ctx_->stream(), d, s, size_t(layout_.head_stride), size_t(layout_.tile_bytes),
                            size_t(rows));
        return;
    }
    for (int64_t i = 0; i < rows; ++i)
        std::memcpy(d + i * layout_.head_stride, s + i * layout_.head_stride, size_t(layout_.tile_bytes));
}

int32_t KvCache::take_res_slot(const char* what) {
    if (free_res_.empty())
        fail(LLMN_STATUS_CAPACITY_EXCEEDED,
             "%s would make %lld live sequences, but this KV cache stores K or V as %s and has residual tiles for "
             "desc->max_batch = %d live sequences; remove a sequence or create the cache with a larger max_batch",
             what, (long long)seqs_.size() + 1, kv_format_name(layout_.k_kivi() ? layout_.k_format : layout_.v_format),
             desc_.max_batch);
    const int32_t slot = free_res_.back();
    free_res_.pop_back();
    return slot;
}

void KvCache::kivi_flush(const KvSequence& s, int32_t layer, int32_t block) {
    const int32_t H = desc_.num_kv_heads, D = desc_.head_dim, bs = desc_.block_size;
    for (int32_t h = 0; h < H; ++h) {
        const uint8_t* res = pool() + layout_.res_tile_offset(s.res_slot, layer, h);
        uint8_t* tile = pool() + layout_.tile_offset(layer, block, h);
        const auto* krows = reinterpret_cast<const uint16_t*>(res + layout_.res_k_off);
        const auto* vrows = reinterpret_cast<const uint16_t*>(res + layout_.res_v_off);
        auto* kaux = reinterpret_cast<uint16_t*>(tile + layout_.k_aux_off);
        auto* vaux = reinterpret_cast<uint16_t*>(tile + layout_.v_aux_off);
#if defined(__x86_64__) || defined(_M_X64)
        if (cpu::active_isa() >= LLMN_CPU_ISA_AVX2) {  // same bytes (kv_kivi_avx2.cpp)
            if (layout_.k_kivi()) kivi_quantize_k_block_avx2(layout_.k_format, krows, bs, D, tile + layout_.k_data_off, kaux);
            if (layout_.v_kivi())
                kivi_quantize_v_block_avx2(layout_.v_format, vrows, bs, D, desc_.value_group_size, tile + layout_.v_data_off, vaux);
            continue;
        }
#endif
        if (layout_.k_kivi()) kivi_quantize_k_block(layout_.k_format, krows, bs, D, tile + layout_.k_data_off, kaux);
        if (layout_.v_kivi())
            kivi_quantize_v_block(layout_.v_format, vrows, bs, D, desc_.value_group_size, tile + layout_.v_data_off, vaux);
    }
}

int64_t KvCache::add_sequence() {
    int64_t id = next_id_;
    KvSequence s;
    s.length.assign(size_t(desc_.num_layers), 0);
    if (layout_.has_residual()) s.res_slot = take_res_slot("adding a sequence");
    seqs_.emplace(id, std::move(s));
    ++next_id_;
    ++tables_version_;
    return id;
}

void KvCache::remove_sequence(int64_t id) {
    KvSequence& s = find(id, "sequence_id");
    for (int32_t b : s.blocks) release_block(b);
    if (s.res_slot >= 0) free_res_.push_back(s.res_slot);
    seqs_.erase(id);
    ++tables_version_;
}

int64_t KvCache::fork_sequence(int64_t source_id) {
    const KvSequence& src = find(source_id, "source_id");
    int64_t min_len = std::numeric_limits<int64_t>::max();
    for (int64_t l : src.length) min_len = std::min(min_len, l);
    const size_t full = std::min(src.blocks.size(), size_t(min_len / desc_.block_size));
    const size_t ncopy = src.blocks.size() - full;
    if (ncopy > free_.size())
        fail(LLMN_STATUS_CAPACITY_EXCEEDED,
             "KV cache is full: forking sequence %lld copies its %zu partially filled block(s) but only %zu of %lld blocks "
             "are free; remove or truncate sequences, or create a larger cache",
             (long long)source_id, ncopy, free_.size(), (long long)layout_.num_blocks);
    KvSequence dst;
    dst.length = src.length;
    dst.blocks.reserve(src.blocks.size());
    if (layout_.has_residual() && free_res_.empty()) take_res_slot("forking a sequence");  // throws
    const int64_t id = next_id_;
    auto slot = seqs_.emplace(id, KvSequence{}).first;  // may throw: nothing changed yet
    if (layout_.has_residual()) {
        // The child's residual tiles start as a copy of the parent's (every layer's partial block).
        dst.res_slot = take_res_slot("forking a sequence");
        const int64_t per_slot = layout_.residual_bytes(1);
        uint8_t* to = pool() + layout_.res_tile_offset(dst.res_slot, 0, 0);
        const uint8_t* from = pool() + layout_.res_tile_offset(src.res_slot, 0, 0);
        if (ctx_->is_cuda()) cuda::copy_d2d(ctx_->device(), ctx_->stream(), to, from, size_t(per_slot));
        else std::memcpy(to, from, size_t(per_slot));
    }
    for (size_t j = 0; j < full; ++j) {
        ++refcount_[size_t(src.blocks[j])];
        dst.blocks.push_back(src.blocks[j]);
    }
    for (size_t j = full; j < src.blocks.size(); ++j) {
        int32_t nb = take_block();
        copy_block(nb, src.blocks[j]);
        dst.blocks.push_back(nb);
    }
    slot->second = std::move(dst);
    ++next_id_;
    ++tables_version_;
    return id;
}

void KvCache::truncate_sequence(int64_t id, int64_t length) {
    KvSequence& s = find(id, "sequence_id");
    LLMN_CHECK_ARG(length >= 0, "length must be >= 0, got %lld", (long long)length);
    const int64_t bs = desc_.block_size;
    if (layout_.has_residual()) {
        // Cutting into a block that was already quantized: its kept rows go back to the residual tile
        // as the f16 rounding of their dequantized values (so when the block refills it is quantized
        // a second time, from these already-rounded values: the double-quantization consequence
        // documented in docs/kv-quantization.md). Rows of a block still in the residual stay as they are.
        // The head tile is staged through pool_read (a copy on CUDA, where the pool is device memory)
        // and the f16 rows go back with pool_write: truncate is not a hot path.
        const int32_t H = desc_.num_kv_heads, D = desc_.head_dim;
        std::vector<float> row(static_cast<size_t>(D));
        std::vector<uint8_t> tile(static_cast<size_t>(layout_.tile_bytes));
        std::vector<uint16_t> rows;
        for (int32_t layer = 0; layer < desc_.num_layers; ++layer) {
            const int64_t old_len = s.length[size_t(layer)];
            if (length >= old_len || length % bs == 0) continue;
            const int64_t j = length / bs;
            if (old_len < (j + 1) * bs) continue;  // block j is the residual block: nothing quantized
            const int32_t block = s.blocks[size_t(j)];
            const int32_t kept = int32_t(length % bs);
            rows.resize(size_t(kept) * D);
            for (int32_t h = 0; h < H; ++h) {
                pool_read(layout_.tile_offset(layer, block, h), tile.data(), tile.size());
                for (int side = 0; side < 2; ++side) {
                    const int32_t fmt = side == 0 ? layout_.k_format : layout_.v_format;
                    if (!kv_format_is_kivi(fmt)) continue;
                    const uint16_t* aux =
                        reinterpret_cast<const uint16_t*>(tile.data() + (side == 0 ? layout_.k_aux_off : layout_.v_aux_off));
                    for (int32_t t = 0; t < kept; ++t) {
                        if (side == 0) kivi_dequant_k_row(fmt, tile.data() + layout_.k_data_off, aux, t, D, row.data());
                        else kivi_dequant_v_row(fmt, tile.data() + layout_.v_data_off, aux, int32_t(bs), t, D, desc_.value_group_size, row.data());
                        // clamp: the rounded-up scale can put code_max * scale + min a little past 65504
                        for (int32_t d = 0; d < D; ++d)
                            rows[size_t(t) * D + d] = f32_to_f16(std::clamp(row[size_t(d)], -65504.0f, 65504.0f));
                    }
                    pool_write(layout_.res_tile_offset(s.res_slot, layer, h) + (side == 0 ? layout_.res_k_off : layout_.res_v_off),
                               rows.data(), rows.size() * sizeof(uint16_t));
                }
            }
        }
    }
    for (int64_t& l : s.length) l = std::min(l, length);
    const size_t need = size_t((s.max_length() + bs - 1) / bs);
    if (s.blocks.size() > need) {
        while (s.blocks.size() > need) {
            release_block(s.blocks.back());
            s.blocks.pop_back();
        }
        ++tables_version_;
    }
}

void KvCache::append(int64_t id, int32_t layer, const Buffer& k, const Buffer& v, int32_t num_tokens) {
    KvSequence& s = find(id, "sequence_id");
    check_layer(layer, "layer");
    LLMN_CHECK_ARG(num_tokens >= 1, "num_tokens must be >= 1, got %d", num_tokens);
    const int32_t H = desc_.num_kv_heads, D = desc_.head_dim, bs = desc_.block_size;
    const int64_t needed = checked_mul(checked_mul(num_tokens, H, "k/v element count"), D, "k/v element count");
    std::string shape = format("[num_tokens=%d, num_kv_heads=%d, head_dim=%d]", num_tokens, H, D);
    check_kv_input(k, *ctx_, "k", needed, shape.c_str());
    check_kv_input(v, *ctx_, "v", needed, shape.c_str());
    const int64_t old_len = s.length[size_t(layer)];
    const int64_t new_len = old_len + num_tokens;
    LLMN_CHECK_ARG(new_len <= kKvMaxSequenceLength,
                   "appending %d tokens to sequence %lld (layer %d, length %lld) exceeds the longest sequence (2^31-1 tokens)",
                   num_tokens, (long long)id, layer, (long long)old_len);

    std::vector<uint8_t> kc, vc;
    std::vector<float> ks, vs;
    // CUDA: the values are validated (one device scan) and written (one kernel) on the device.
    const bool device_path = ctx_->is_cuda();
    if (device_path) {
        kv_cuda_validate_append(*ctx_, k, v, desc_.k_format, desc_.v_format, num_tokens, H, D);
    } else {
        stage_rows(k, "k", desc_.k_format, num_tokens, H, D, kc, ks);
        stage_rows(v, "v", desc_.v_format, num_tokens, H, D, vc, vs);
    }

    // Capacity: new blocks past the table plus copies of shared blocks this write touches.
    const size_t need_blocks = size_t((new_len + bs - 1) / bs);
    const size_t first_written = size_t(old_len / bs);
    const size_t new_blocks = need_blocks > s.blocks.size() ? need_blocks - s.blocks.size() : 0;
    size_t cow = 0;
    for (size_t j = first_written; j < std::min(need_blocks, s.blocks.size()); ++j)
        if (refcount_[size_t(s.blocks[j])] > 1) ++cow;
    if (new_blocks + cow > free_.size())
        fail(LLMN_STATUS_CAPACITY_EXCEEDED,
             "KV cache is full: appending %d tokens to sequence %lld (layer %d, length %lld) needs %zu free block(s) "
             "(%zu new + %zu copy-on-write) but only %zu of %lld blocks are free; remove or truncate sequences, or "
             "create a larger cache",
             num_tokens, (long long)id, layer, (long long)old_len, new_blocks + cow, new_blocks, cow, free_.size(),
             (long long)layout_.num_blocks);
    s.blocks.reserve(need_blocks);  // may throw: nothing changed yet

    // Commit.
    bool tables_changed = new_blocks > 0;
    for (size_t j = first_written; j < std::min(need_blocks, s.blocks.size()); ++j) {
        int32_t b = s.blocks[j];
        if (refcount_[size_t(b)] > 1) {
            int32_t nb = take_block();
            copy_block(nb, b);
            release_block(b);
            s.blocks[j] = nb;
            tables_changed = true;
        }
    }
    while (s.blocks.size() < need_blocks) s.blocks.push_back(take_block());
    if (tables_changed) ++tables_version_;
    if (device_path) {
        kv_cuda_write_append(*ctx_, layout_, pool(), layer, s.blocks.data(), s.res_slot, old_len, num_tokens, k, v);
        s.length[size_t(layer)] = new_len;
        return;
    }

    // Rows: one contiguous run per (block segment, head) for K and for V, plus the run of their
    // per-token scales in the tile's aux section for INT8/FP8.
    std::vector<uint8_t> run;
    std::vector<float> srun;
    for (int64_t pos = old_len; pos < new_len;) {
        const int64_t j = pos / bs;
        const int32_t row = int32_t(pos % bs);
        const int64_t cnt = std::min<int64_t>(bs - row, new_len - pos);
        const int32_t block = s.blocks[size_t(j)];
        for (int32_t h = 0; h < H; ++h) {
            for (int pass = 0; pass < 2; ++pass) {
                const std::vector<uint8_t>& src = pass == 0 ? kc : vc;
                const std::vector<float>& sc = pass == 0 ? ks : vs;
                const bool kivi = pass == 0 ? layout_.k_kivi() : layout_.v_kivi();
                // KIVI sides: f16 rows into the residual tile (quantized into the block when it fills)
                const int64_t rb = kivi ? int64_t(D) * 2 : (pass == 0 ? layout_.k_row_bytes : layout_.v_row_bytes);
                run.resize(size_t(cnt * rb));
                for (int64_t t = 0; t < cnt; ++t)
                    std::memcpy(&run[size_t(t * rb)], &src[size_t(((pos - old_len + t) * H + h) * rb)], size_t(rb));
                int64_t off = kivi ? layout_.res_tile_offset(s.res_slot, layer, h) +
                                         (pass == 0 ? layout_.res_k_off : layout_.res_v_off) + int64_t(row) * rb
                                   : pass == 0 ? layout_.k_row_offset(layer, block, h, row)
                                               : layout_.v_row_offset(layer, block, h, row);
                pool_write(off, run.data(), run.size());
                if (!sc.empty()) {
                    srun.resize(size_t(cnt));
                    for (int64_t t = 0; t < cnt; ++t) srun[size_t(t)] = sc[size_t((pos - old_len + t) * H + h)];
                    const int64_t aux = layout_.tile_offset(layer, block, h) + (pass == 0 ? layout_.k_aux_off : layout_.v_aux_off) +
                                        int64_t(row) * 4;
                    pool_write(aux, srun.data(), srun.size() * sizeof(float));
                }
            }
        }
        if (layout_.has_residual() && row + cnt == bs) kivi_flush(s, layer, block);
        pos += cnt;
    }
    s.length[size_t(layer)] = new_len;
}

void KvCache::read(int64_t id, int32_t layer, int64_t start, int64_t count, const Buffer& k, const Buffer& v) const {
    const KvSequence& s = sequence(id, "sequence_id");
    check_layer(layer, "layer");
    const int64_t len = s.length[size_t(layer)];
    LLMN_CHECK_ARG(start >= 0, "start must be >= 0, got %lld", (long long)start);
    LLMN_CHECK_ARG(count >= 0, "count must be >= 0, got %lld", (long long)count);
    LLMN_CHECK_ARG(start <= len && count <= len - start,
                   "tokens [%lld, %lld + %lld) are outside sequence %lld, which holds %lld tokens in layer %d",
                   (long long)start, (long long)start, (long long)count, (long long)id, (long long)len, layer);
    const int32_t H = desc_.num_kv_heads, D = desc_.head_dim, bs = desc_.block_size;
    const int64_t needed = checked_mul(checked_mul(count, H, "k/v element count"), D, "k/v element count");
    std::string shape = format("[count=%lld, num_kv_heads=%d, head_dim=%d]", (long long)count, H, D);
    for (const Buffer* b : {&k, &v}) {
        const char* param = b == &k ? "k" : "v";
        check_buffer_for_kernel(*b, *ctx_, param);
        if (b->dtype() != LLMN_DTYPE_F32 && b->dtype() != LLMN_DTYPE_F16)
            fail(LLMN_STATUS_INVALID_ARGUMENT, "%s has dtype %s; llmn_kv_cache_read writes f32 or f16", param,
                 dtype_name(b->dtype()));
        check_buffer_count(*b, needed, param, shape.c_str());
    }
    if (count == 0) return;
    std::vector<uint16_t> run(size_t(bs) * D);
    std::vector<float> srun(static_cast<size_t>(bs));
    std::vector<float> frow(static_cast<size_t>(D));
    std::vector<uint8_t> kivi_tile(layout_.has_residual() ? size_t(layout_.tile_bytes) : 0);
    for (int pass = 0; pass < 2; ++pass) {
        const Buffer& dst = pass == 0 ? k : v;
        const int32_t fmt = pass == 0 ? desc_.k_format : desc_.v_format;
        const bool q8 = kv_format_is_q8(fmt);
        const bool kivi = kv_format_is_kivi(fmt);
        const int64_t rb = pass == 0 ? layout_.k_row_bytes : layout_.v_row_bytes;
        std::vector<uint8_t> out(size_t(needed) * dtype_size(dst.dtype()));
        for (int64_t pos = start; pos < start + count;) {
            const int64_t j = pos / bs;
            const int32_t row = int32_t(pos % bs);
            const int64_t cnt = std::min<int64_t>(bs - row, start + count - pos);
            const int32_t block = s.blocks[size_t(j)];
            for (int32_t h = 0; h < H; ++h) {
                if (kivi) {  // staged through the host (pool_read: a copy on CUDA)
                    const bool residual = (j + 1) * bs > len;  // the partial block lives in the residual tile
                    const int64_t data_off = pass == 0 ? layout_.k_data_off : layout_.v_data_off;
                    const int64_t aux_off = pass == 0 ? layout_.k_aux_off : layout_.v_aux_off;
                    if (residual)
                        pool_read(layout_.res_tile_offset(s.res_slot, layer, h) + (pass == 0 ? layout_.res_k_off : layout_.res_v_off) +
                                      int64_t(row) * D * 2,
                                  run.data(), size_t(cnt) * D * 2);
                    else  // the side's code rows and its aux section (contiguous after the rows' padding)
                        pool_read(layout_.tile_offset(layer, block, h) + data_off, kivi_tile.data(),
                                  size_t(aux_off + kv_aux_bytes(fmt, pass == 1, bs, D, desc_.value_group_size) - data_off));
                    const uint8_t* codes = kivi_tile.data();
                    const uint16_t* aux = reinterpret_cast<const uint16_t*>(kivi_tile.data() + (aux_off - data_off));
                    for (int64_t t = 0; t < cnt; ++t) {
                        const int32_t r = int32_t(row + t);
                        if (residual) for (int32_t d = 0; d < D; ++d) frow[size_t(d)] = f16_to_f32(run[size_t(t) * D + d]);
                        else if (pass == 0) kivi_dequant_k_row(fmt, codes, aux, r, D, frow.data());
                        else kivi_dequant_v_row(fmt, codes, aux, bs, r, D, desc_.value_group_size, frow.data());
                        const int64_t o = ((pos - start + t) * H + h) * D;
                        for (int32_t d = 0; d < D; ++d) {
                            if (dst.dtype() == LLMN_DTYPE_F32) reinterpret_cast<float*>(out.data())[o + d] = frow[size_t(d)];
                            else reinterpret_cast<uint16_t*>(out.data())[o + d] = f32_to_f16(frow[size_t(d)]);
                        }
                    }
                    continue;
                }
                int64_t off = pass == 0 ? layout_.k_row_offset(layer, block, h, row) : layout_.v_row_offset(layer, block, h, row);
                pool_read(off, run.data(), size_t(cnt * rb));
                if (q8)
                    pool_read(layout_.tile_offset(layer, block, h) + (pass == 0 ? layout_.k_aux_off : layout_.v_aux_off) +
                                  int64_t(row) * 4,
                              srun.data(), size_t(cnt) * sizeof(float));
                const uint8_t* bytes = reinterpret_cast<const uint8_t*>(run.data());
                for (int64_t t = 0; t < cnt; ++t) {
                    const int64_t o = ((pos - start + t) * H + h) * D;
                    for (int32_t d = 0; d < D; ++d) {
                        float x;
                        if (q8) {
                            x = kv_code_value(fmt, bytes[t * D + d]) * srun[size_t(t)];
                        } else {
                            uint16_t c = run[size_t(t * D + d)];
                            x = fmt == LLMN_KV_BF16 ? bf16_to_f32(c) : f16_to_f32(c);
                        }
                        if (dst.dtype() == LLMN_DTYPE_F32) reinterpret_cast<float*>(out.data())[o + d] = x;
                        else reinterpret_cast<uint16_t*>(out.data())[o + d] = f32_to_f16(x);
                    }
                }
            }
            pos += cnt;
        }
        write_to_buffer(dst, out.data(), out.size());
    }
}

llmn_kv_cache_stats KvCache::stats() const {
    llmn_kv_cache_stats st{};
    st.total_blocks = layout_.num_blocks;
    st.free_blocks = int64_t(free_.size());
    st.num_sequences = int64_t(seqs_.size());
    st.pool_bytes = layout_.pool_bytes;
    return st;
}

void KvCache::debug_shuffle_free_list(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::shuffle(free_.begin(), free_.end(), rng);
}

}  // namespace llmn
