// Int4Weight: one quantized weight matrix, owned by one context, stored in a layout private to that
// context's backend. Every creation path (quantize, GPTQ import, AWQ import) first produces the
// backend-neutral Int4Canonical below, which fixes the semantics:
//
//     dequant(W)[k][n] = (float(q[k][n]) - float(zero[g][n])) * float(scale[g][n])   (in f32)
//     g = g_idx[k] when act-order is present, else k / group_size (group_size 0: g = 0)
//
// Scales are fp16 (what checkpoints store and what the tensor-core kernel consumes), zero points are
// integers 0..15 (symmetric weights: 8). Both backends implement pack (canonical -> private layout),
// unpack (private layout -> canonical, for dequantize) and gemm with exactly these semantics.
#pragma once
#include "../../core/context.hpp"

#include <cstdint>
#include <memory>
#include <vector>

namespace llmn {

struct Int4Canonical {
    int64_t k = 0, n = 0;
    int32_t group_size = 0;  // 32, 64, 128, or 0 = per-column (one group)
    bool symmetric = true;
    std::vector<uint8_t> q;        // [k][n], values 0..15
    std::vector<uint16_t> scales;  // [groups][n], fp16 bits, finite
    std::vector<uint8_t> zeros;    // [groups][n], 0..15 (all 8 when symmetric)
    std::vector<int32_t> g_idx;    // empty, or [k] with values in [0, groups)

    int64_t groups() const { return group_size == 0 ? 1 : (k + group_size - 1) / group_size; }
    int32_t group_of(int64_t row) const {
        if (!g_idx.empty()) return g_idx[row];
        return group_size == 0 ? 0 : static_cast<int32_t>(row / group_size);
    }
};

// Backend-private packed storage. Each backend derives its own.
struct Int4Packed {
    virtual ~Int4Packed() = default;
    virtual int64_t size_bytes() const = 0;
};

class Int4Weight : public Object {
public:
    static constexpr ObjectType kType = ObjectType::Int4Weight;
    Int4Weight(std::shared_ptr<Context> ctx, llmn_int4_weight_desc desc, std::unique_ptr<Int4Packed> packed)
        : Object(kType), ctx_(std::move(ctx)), desc_(desc), packed_(std::move(packed)) {}

    const std::shared_ptr<Context>& context() const { return ctx_; }
    const llmn_int4_weight_desc& desc() const { return desc_; }
    Int4Packed& packed() const { return *packed_; }

private:
    std::shared_ptr<Context> ctx_;
    llmn_int4_weight_desc desc_;
    std::unique_ptr<Int4Packed> packed_;
};

// ---- per-backend entry points (CPU: gemm_int4_cpu*.cpp; CUDA: gemm_int4.cu / gemm_int4_cuda_none.cpp) ----
// Arguments are validated by the API layer (api.cpp) before these are called.
struct GemmInt4Args {
    const Buffer* x;     // [m, k]
    const Buffer* bias;  // [n] or null
    const Buffer* y;     // [m, n]
    int64_t m;
};

// ---- canonical builders (int4_weight.cpp): validate fully, throw llmn::Error naming the parameter ----
// Round-to-nearest quantization of a dense host matrix [k][n] (f32 or f16); semantics in int4_weight.cpp.
Int4Canonical int4_quantize(const llmn_int4_weight_desc& desc, int32_t src_dtype, const void* weights);
// GPTQ / AWQ checkpoint tensors (host memory) -> canonical; conventions documented in int4_weight.cpp.
Int4Canonical int4_import_gptq(const llmn_gptq_tensors& t);
Int4Canonical int4_import_awq(const llmn_awq_tensors& t);
// Canonical -> row-major [k][n] host matrix of dst_dtype (f32 or f16), the formula above in f32.
void int4_dequantize(const Int4Canonical& c, int32_t dst_dtype, void* dst);
// The public description of a canonical weight (has_g_idx filled in).
llmn_int4_weight_desc int4_desc(const Int4Canonical& c);

std::unique_ptr<Int4Packed> int4_pack_cpu(const Int4Canonical& c);
Int4Canonical int4_unpack_cpu(const Int4Packed& p);
void gemm_int4_cpu(const Context& ctx, const Int4Weight& w, const GemmInt4Args& args);

std::unique_ptr<Int4Packed> int4_pack_cuda(const Context& ctx, const Int4Canonical& c);
Int4Canonical int4_unpack_cuda(const Context& ctx, const Int4Packed& p);
void gemm_int4_cuda(const Context& ctx, const Int4Weight& w, const GemmInt4Args& args);

}  // namespace llmn
