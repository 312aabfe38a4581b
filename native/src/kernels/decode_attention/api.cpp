// llmn_decode_attention: validates everything (handles, devices, shapes, dtypes, parameters,
// sequences, lengths) before any backend runs, so a failing call writes nothing; then holds the
// cache's lock for the whole computation and dispatches on the context's backend.
#include "../../core/error.hpp"
#include "decode_attention.hpp"

#include <cmath>
#include <mutex>
#include <string>

using namespace llmn;

extern "C" LLMN_API llmn_status llmn_decode_attention(llmn_context context, llmn_kv_cache cache,
                                                      const int64_t* sequence_ids, int32_t batch, llmn_buffer q,
                                                      llmn_buffer alibi_slopes, llmn_buffer out,
                                                      const llmn_attention_params* params) {
    return guard([&] {
        auto ctx = get_context(context);
        auto kv = lookup<KvCache>(cache, "cache");
        LLMN_CHECK_NOT_NULL(params);
        const llmn_kv_cache_desc& cd = kv->desc();
        const Context& cc = *kv->context();
        if (cc.backend() != ctx->backend() || cc.device() != ctx->device())
            fail(LLMN_STATUS_INVALID_ARGUMENT,
                 "cache belongs to another device (backend %d, device %d) than the context (backend %d, device %d)",
                 cc.backend(), cc.device(), ctx->backend(), ctx->device());
        LLMN_CHECK_ARG(batch >= 1 && batch <= cd.max_batch, "batch must be in [1, %d] (the cache's max_batch), got %d",
                       cd.max_batch, batch);
        LLMN_CHECK_NOT_NULL(sequence_ids);

        const llmn_attention_params p = *params;
        kv->check_layer(p.layer, "params->layer");
        const int32_t H = cd.num_kv_heads, D = cd.head_dim;
        LLMN_CHECK_ARG(p.num_q_heads >= 1, "params->num_q_heads must be >= 1, got %d", p.num_q_heads);
        LLMN_CHECK_ARG(p.num_q_heads % H == 0, "params->num_q_heads = %d is not a multiple of the cache's num_kv_heads = %d",
                       p.num_q_heads, H);
        const int32_t group = p.num_q_heads / H;
        LLMN_CHECK_ARG(group <= kMaxGqaGroup,
                       "params->num_q_heads / num_kv_heads = %d / %d = %d; at most %d query heads may share a kv head",
                       p.num_q_heads, H, group, kMaxGqaGroup);
        LLMN_CHECK_ARG(p.q_len >= 1 && p.q_len <= kMaxQueryLen, "params->q_len must be in [1, %d], got %d", kMaxQueryLen,
                       p.q_len);
        LLMN_CHECK_ARG(p.num_splits >= 0 && p.num_splits <= kMaxAttentionSplits,
                       "params->num_splits must be in [0, %d] (0 = automatic, 1 = no split), got %d", kMaxAttentionSplits,
                       p.num_splits);
        LLMN_CHECK_ARG(std::isfinite(p.scale), "params->scale must be finite, got %g", double(p.scale));
        LLMN_CHECK_ARG(std::isfinite(p.softcap) && p.softcap >= 0.0f,
                       "params->softcap must be finite and >= 0 (0 disables), got %g", double(p.softcap));
        LLMN_CHECK_ARG(p.window >= 0, "params->window must be >= 0 (0 disables), got %d", p.window);
        LLMN_CHECK_ARG((p.flags & ~int32_t(LLMN_ATTN_FLAG_INT8_QUERY)) == 0,
                       "params->flags = 0x%x has unknown bits (known: LLMN_ATTN_FLAG_INT8_QUERY = 1)", unsigned(p.flags));

        auto qb = get_buffer(q, "q");
        auto ob = get_buffer(out, "out");
        check_buffer_for_kernel(*qb, *ctx, "q");
        check_buffer_for_kernel(*ob, *ctx, "out");
        const bool dtype_ok = ctx->is_cuda() ? (qb->dtype() == LLMN_DTYPE_F16 || qb->dtype() == LLMN_DTYPE_BF16)
                                             : (qb->dtype() == LLMN_DTYPE_F32 || qb->dtype() == LLMN_DTYPE_F16);
        if (!dtype_ok)
            fail(LLMN_STATUS_INVALID_ARGUMENT, "q has dtype %s; the %s backend takes %s", dtype_name(qb->dtype()),
                 ctx->is_cuda() ? "CUDA" : "CPU", ctx->is_cuda() ? "f16 or bf16" : "f32 or f16");
        if (ob->dtype() != qb->dtype())
            fail(LLMN_STATUS_INVALID_ARGUMENT, "out has dtype %s but q has dtype %s; they must match", dtype_name(ob->dtype()),
                 dtype_name(qb->dtype()));
        const int64_t elems = checked_mul(checked_mul(checked_mul(batch, p.q_len, "q shape"), p.num_q_heads, "q shape"), D,
                                          "q shape");
        const std::string shape = format("[batch=%d, q_len=%d, num_q_heads=%d, head_dim=%d]", batch, p.q_len,
                                         p.num_q_heads, D);
        check_buffer_count(*qb, elems, "q", shape.c_str());
        check_buffer_count(*ob, elems, "out", shape.c_str());

        DecodeAttentionArgs a;
        a.cache = kv.get();
        a.batch = batch;
        a.q = qb.get();
        a.out = ob.get();
        a.params = p;
        a.group = group;
        if (alibi_slopes) {
            auto ab = get_buffer(alibi_slopes, "alibi_slopes");
            check_buffer_for_kernel(*ab, *ctx, "alibi_slopes");
            if (ab->dtype() != LLMN_DTYPE_F32)
                fail(LLMN_STATUS_INVALID_ARGUMENT, "alibi_slopes has dtype %s; expected f32", dtype_name(ab->dtype()));
            check_buffer_count(*ab, p.num_q_heads, "alibi_slopes", "[num_q_heads]");
            if (ctx->is_cuda()) {
                // The kernel reads the slopes from the caller's device buffer; decode_attention.cu checks
                // them for finiteness unless the stream is capturing (see the public header).
                a.alibi_device = ab->as<float>();
            } else {
                a.alibi_slopes.assign(ab->as<float>(), ab->as<float>() + p.num_q_heads);
                for (int32_t h = 0; h < p.num_q_heads; ++h)
                    LLMN_CHECK_ARG(std::isfinite(a.alibi_slopes[size_t(h)]), "alibi_slopes[%d] must be finite, got %g", h,
                                   double(a.alibi_slopes[size_t(h)]));
            }
        }

        std::lock_guard<std::mutex> lock(kv->mutex());
        a.seqs.resize(size_t(batch));
        a.lengths.resize(size_t(batch));
        for (int32_t b = 0; b < batch; ++b) {
            const std::string param = format("sequence_ids[%d]", b);
            const KvSequence& s = kv->sequence(sequence_ids[b], param.c_str());
            const int64_t len = s.length[size_t(p.layer)];
            if (len < p.q_len)
                fail(LLMN_STATUS_INVALID_ARGUMENT,
                     "params->q_len = %d exceeds the length of %s = %lld (%lld tokens in layer %d); append the new "
                     "tokens' K/V before attention",
                     p.q_len, param.c_str(), (long long)sequence_ids[b], (long long)len, p.layer);
            a.seqs[size_t(b)] = &s;
            a.lengths[size_t(b)] = len;
        }
        if (ctx->is_cuda()) decode_attention_cuda(*ctx, a);
        else decode_attention_cpu(*ctx, a);
    });
}
