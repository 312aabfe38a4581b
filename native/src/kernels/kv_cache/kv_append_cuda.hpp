// Device-side KV-cache append for CUDA caches (kv_append.cu; kv_append_cuda_none.cpp in builds
// without CUDA). KvCache::append keeps the bookkeeping (block tables, refcounts, copy-on-write) on
// the host and calls these two steps around its commit:
//
//   1. kv_cuda_validate_append, BEFORE anything is committed: one kernel scans every element of k and
//      v with the CPU path's acceptance rule (kv_quant_cuda.cuh append_value_status: NaN, Inf and
//      values the storage format cannot hold are rejected) and records the first offending element;
//      the host reads back that one 8-byte flag (a stream synchronisation) and, if it is set, fails
//      with the CPU path's message (element position and value). So a failed append leaves the cache
//      unchanged, exactly as on the CPU. The synchronisation is why append is not CUDA-graph
//      capturable (a capturing stream is refused up front with UNSUPPORTED). Append is not the
//      attention hot path: one small read-back per call was judged acceptable for keeping the
//      all-or-nothing contract.
//      KIVI INT4/INT2 sides follow the f16 rule (their rows are f16 residual rows until a block fills).
//   2. kv_cuda_write_append, AFTER the commit: converts (f16/bf16) or quantizes (INT8/E4M3, one f32
//      scale per (token, head), the CPU codecs bit for bit) the rows on the device and scatters them
//      into the pool at the addresses of kv_layout.hpp. The physical block ids of the touched blocks
//      travel in the kernel parameters (no device copy of the block table, no host sync); an append
//      touching more than kAppendBlocksPerLaunch blocks is split into several launches.
//      KIVI sides: every block that is full after the append is quantized on the device from its f16
//      rows (old residual rows + converted input rows; kv_kivi_cuda.cuh, the bytes of kv_kivi.hpp),
//      and the rows of the final partial block are written as f16 into the sequence's residual tile
//      (res_slot). All quantize launches precede the residual writes on the stream (the former read
//      the old residual rows the latter may overwrite). Design: kv_append.cu's header.
#pragma once
#include "../../core/context.hpp"
#include "kv_layout.hpp"

#include <cstdint>

namespace llmn {

constexpr int32_t kAppendBlocksPerLaunch = 128;

void kv_cuda_validate_append(const Context& ctx, const Buffer& k, const Buffer& v, int32_t k_format, int32_t v_format,
                             int32_t num_tokens, int32_t heads, int32_t dim);

// blocks: the sequence's block table (host), already covering positions [old_len, old_len + num_tokens).
// res_slot: the sequence's KIVI residual slot (ignored when the layout has no residual region).
void kv_cuda_write_append(const Context& ctx, const KvLayout& layout, uint8_t* pool, int32_t layer, const int32_t* blocks,
                          int32_t res_slot, int64_t old_len, int32_t num_tokens, const Buffer& k, const Buffer& v);

}  // namespace llmn
