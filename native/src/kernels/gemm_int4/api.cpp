// C entry points of the INT4 weight-only GEMM family and the dense baseline. Every function validates
// all of its arguments (handles, dtypes, shapes, buffer sizes, devices, overlap) before it touches
// anything, then dispatches on the context's backend; builders produce the canonical weight first
// (int4_weight.cpp), so a failed create never leaves an object behind and a failed GEMM never writes y.
#include "../../core/context.hpp"
#include "../../core/error.hpp"
#include "../../core/log.hpp"
#include "../gemm_dense/gemm_dense.hpp"
#include "int4_weight.hpp"

#include <cstring>

using namespace llmn;

namespace {

std::shared_ptr<Int4Weight> get_weight(llmn_int4_weight h) { return lookup<Int4Weight>(h, "weight"); }

llmn_int4_weight create_weight(const std::shared_ptr<Context>& ctx, const Int4Canonical& c, const char* how) {
    std::unique_ptr<Int4Packed> packed = ctx->is_cuda() ? int4_pack_cuda(*ctx, c) : int4_pack_cpu(c);
    auto w = std::make_shared<Int4Weight>(ctx, int4_desc(c), std::move(packed));
    log(LLMN_LOG_DEBUG, ctx->id(), "int4 weight %s: k %lld, n %lld, group_size %d, symmetric %d, act-order %d, %lld bytes",
        how, (long long)c.k, (long long)c.n, c.group_size, c.symmetric ? 1 : 0, c.g_idx.empty() ? 0 : 1,
        (long long)w->packed().size_bytes());
    return static_cast<llmn_int4_weight>(register_object(w));
}

// Activation dtypes each backend's GEMM kernels take.
void check_act_dtype(const Context& ctx, int32_t dtype, const char* param) {
    if (ctx.is_cuda())
        LLMN_CHECK_ARG(dtype == LLMN_DTYPE_F16 || dtype == LLMN_DTYPE_BF16,
                       "%s has dtype %s; CUDA GEMMs take f16 or bf16", param, dtype_name(dtype));
    else
        LLMN_CHECK_ARG(dtype == LLMN_DTYPE_F32 || dtype == LLMN_DTYPE_F16,
                       "%s has dtype %s; CPU GEMMs take f32 or f16", param, dtype_name(dtype));
}

bool overlaps(const Buffer& a, const Buffer& b) {
    const char* pa = static_cast<const char*>(a.data());
    const char* pb = static_cast<const char*>(b.data());
    return pa < pb + b.bytes() && pb < pa + a.bytes();
}

struct GemmBuffers {
    std::shared_ptr<Buffer> x, bias, y;
};

// Shared checks of llmn_gemm_int4 / llmn_gemm_dense: devices, dtypes, sizes, overlap.
GemmBuffers check_gemm_buffers(const Context& ctx, llmn_buffer xh, llmn_buffer biash, llmn_buffer yh, int64_t m,
                               int64_t k, int64_t n) {
    GemmBuffers g;
    g.x = get_buffer(xh, "x");
    g.y = get_buffer(yh, "y");
    if (biash) g.bias = get_buffer(biash, "bias");
    LLMN_CHECK_ARG(m >= 0, "m must be >= 0, got %lld", (long long)m);
    check_buffer_for_kernel(*g.x, ctx, "x");
    check_buffer_for_kernel(*g.y, ctx, "y");
    if (g.bias) check_buffer_for_kernel(*g.bias, ctx, "bias");
    check_act_dtype(ctx, g.x->dtype(), "x");
    LLMN_CHECK_ARG(g.y->dtype() == g.x->dtype(), "y has dtype %s but x has dtype %s; they must match",
                   dtype_name(g.y->dtype()), dtype_name(g.x->dtype()));
    if (g.bias)
        LLMN_CHECK_ARG(g.bias->dtype() == g.x->dtype(), "bias has dtype %s but x has dtype %s; they must match",
                       dtype_name(g.bias->dtype()), dtype_name(g.x->dtype()));
    check_buffer_count(*g.x, checked_mul(m, k, "x [m, K]"), "x", "[m, K]");
    check_buffer_count(*g.y, checked_mul(m, n, "y [m, N]"), "y", "[m, N]");
    if (g.bias) check_buffer_count(*g.bias, n, "bias", "[N]");
    LLMN_CHECK_ARG(!overlaps(*g.y, *g.x), "y must not overlap x (in-place GEMM is not supported)");
    if (g.bias) LLMN_CHECK_ARG(!overlaps(*g.y, *g.bias), "y must not overlap bias");
    return g;
}

}  // namespace

extern "C" {

LLMN_API llmn_status llmn_int4_weight_quantize(llmn_context context, const llmn_int4_weight_desc* desc,
                                               int32_t src_dtype, const void* weights, llmn_int4_weight* weight) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(weight);
        *weight = nullptr;
        auto ctx = get_context(context);
        LLMN_CHECK_NOT_NULL(desc);
        Int4Canonical c = int4_quantize(*desc, src_dtype, weights);
        *weight = create_weight(ctx, c, "quantized");
    });
}

LLMN_API llmn_status llmn_int4_weight_import_gptq(llmn_context context, const llmn_gptq_tensors* tensors,
                                                  llmn_int4_weight* weight) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(weight);
        *weight = nullptr;
        auto ctx = get_context(context);
        LLMN_CHECK_NOT_NULL(tensors);
        Int4Canonical c = int4_import_gptq(*tensors);
        *weight = create_weight(ctx, c, "imported (GPTQ)");
    });
}

LLMN_API llmn_status llmn_int4_weight_import_awq(llmn_context context, const llmn_awq_tensors* tensors,
                                                 llmn_int4_weight* weight) {
    return guard([&] {
        LLMN_CHECK_NOT_NULL(weight);
        *weight = nullptr;
        auto ctx = get_context(context);
        LLMN_CHECK_NOT_NULL(tensors);
        Int4Canonical c = int4_import_awq(*tensors);
        *weight = create_weight(ctx, c, "imported (AWQ)");
    });
}

LLMN_API llmn_status llmn_int4_weight_destroy(llmn_int4_weight weight) {
    return guard([&] { destroy_handle<Int4Weight>(weight, "weight"); });
}

LLMN_API llmn_status llmn_int4_weight_get_desc(llmn_int4_weight weight, llmn_int4_weight_desc* desc) {
    return guard([&] {
        auto w = get_weight(weight);
        LLMN_CHECK_NOT_NULL(desc);
        *desc = w->desc();
    });
}

LLMN_API llmn_status llmn_int4_weight_get_size_bytes(llmn_int4_weight weight, int64_t* bytes) {
    return guard([&] {
        auto w = get_weight(weight);
        LLMN_CHECK_NOT_NULL(bytes);
        *bytes = w->packed().size_bytes();
    });
}

LLMN_API llmn_status llmn_int4_weight_dequantize(llmn_int4_weight weight, int32_t dst_dtype, void* dst) {
    return guard([&] {
        auto w = get_weight(weight);
        LLMN_CHECK_ARG(dst_dtype == LLMN_DTYPE_F32 || dst_dtype == LLMN_DTYPE_F16,
                       "dst_dtype must be LLMN_DTYPE_F32 (0) or LLMN_DTYPE_F16 (1), got %d", dst_dtype);
        LLMN_CHECK_NOT_NULL(dst);
        const Context& ctx = *w->context();
        Int4Canonical c = ctx.is_cuda() ? int4_unpack_cuda(ctx, w->packed()) : int4_unpack_cpu(w->packed());
        int4_dequantize(c, dst_dtype, dst);
    });
}

LLMN_API llmn_status llmn_gemm_int4(llmn_context context, llmn_buffer x, llmn_int4_weight weight, llmn_buffer bias,
                                    llmn_buffer y, int64_t m) {
    return guard([&] {
        auto ctx = get_context(context);
        auto w = get_weight(weight);
        const Context& wctx = *w->context();
        LLMN_CHECK_ARG(wctx.backend() == ctx->backend() && wctx.device() == ctx->device(),
                       "weight belongs to backend %d device %d, but context is backend %d device %d", wctx.backend(),
                       wctx.device(), ctx->backend(), ctx->device());
        const llmn_int4_weight_desc& d = w->desc();
        GemmBuffers g = check_gemm_buffers(*ctx, x, bias, y, m, d.k, d.n);
        if (m == 0) return;
        GemmInt4Args args{g.x.get(), g.bias.get(), g.y.get(), m};
        if (ctx->is_cuda()) gemm_int4_cuda(*ctx, *w, args);
        else gemm_int4_cpu(*ctx, *w, args);
    });
}

LLMN_API llmn_status llmn_gemm_dense(llmn_context context, llmn_buffer x, llmn_buffer w, llmn_buffer bias,
                                     llmn_buffer y, int64_t m, int64_t k, int64_t n) {
    return guard([&] {
        auto ctx = get_context(context);
        LLMN_CHECK_ARG(k >= 1, "k must be >= 1, got %lld", (long long)k);
        LLMN_CHECK_ARG(n >= 1, "n must be >= 1, got %lld", (long long)n);
        auto wb = get_buffer(w, "w");
        check_buffer_for_kernel(*wb, *ctx, "w");
        GemmBuffers g = check_gemm_buffers(*ctx, x, bias, y, m, k, n);
        LLMN_CHECK_ARG(wb->dtype() == g.x->dtype(), "w has dtype %s but x has dtype %s; they must match",
                       dtype_name(wb->dtype()), dtype_name(g.x->dtype()));
        check_buffer_count(*wb, checked_mul(k, n, "w [k, n]"), "w", "[k, n]");
        LLMN_CHECK_ARG(!overlaps(*g.y, *wb), "y must not overlap w");
        if (m == 0) return;
        GemmDenseArgs args{g.x.get(), wb.get(), g.bias.get(), g.y.get(), m, k, n};
        if (ctx->is_cuda()) gemm_dense_cuda(*ctx, args);
        else gemm_dense_cpu(*ctx, args);
    });
}

}  // extern "C"
