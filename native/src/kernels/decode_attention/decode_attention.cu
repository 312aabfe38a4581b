// CUDA decode attention: placeholder until the CUDA kernels land. The contract they implement is in
// decode_attention.hpp (semantics, split partition, LSE merge) and ../kv_cache/kv_layout.hpp (pool
// byte layout: per layer [num_blocks][num_kv_heads][head tile], K then V rows, f16/bf16 token-major
// rows of head_dim). Suggested shape, following the CPU design: one CTA per (sequence, kv_head,
// split) processing all group * q_len query rows so each K/V row is loaded once per group; block
// tables mirrored to the device when KvCache::tables_version() changes (keep the mirror and the
// split workspace, sized from desc().max_batch, in KvCache::backend_state()).
#include "decode_attention.hpp"

namespace llmn {

void decode_attention_cuda(const Context& ctx, const DecodeAttentionArgs& args) {
    (void)args;
    fail(LLMN_STATUS_UNSUPPORTED,
         "llmn_decode_attention is not implemented for CUDA yet (context device %d); use a CPU context", ctx.device());
}

}  // namespace llmn
