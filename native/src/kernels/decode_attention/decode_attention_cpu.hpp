// CPU decode attention, internal interface between the driver (decode_attention_cpu.cpp: queries,
// split plan, threads, merge) and the per-ISA work-item kernels (scalar in decode_attention_cpu.cpp,
// AVX2 in decode_attention_avx2.cpp). A work item is one (sequence, kv_head, split): it streams the
// f16 K/V rows of keys [key_begin, key_end) once and updates the online softmax of all R query rows
// of that kv head, tile by tile (kTileKeys keys per tile, tiles may straddle blocks).
#pragma once
#include <llmnative/llmnative.h>

#include <cstdint>

namespace llmn::attn_cpu {

constexpr int32_t kTileKeys = 64;

struct Item {
    // K/V rows of key t: layer_base + blocks[t / block_size] * block_stride + head_off
    //                    + {k,v}_data_off + (t % block_size) * head_dim * 2   (f16, head_dim contiguous)
    const uint8_t* layer_base = nullptr;
    const int32_t* blocks = nullptr;
    int64_t block_stride = 0, head_off = 0, k_data_off = 0, v_data_off = 0;
    int32_t block_size = 0, head_dim = 0;
    int64_t key_begin = 0, key_end = 0;  // this split's keys
    int32_t rows = 0;                    // R = group * q_len
    const float* q = nullptr;            // [R][head_dim], already multiplied by the softmax scale
    const int64_t* row_hi = nullptr;     // [R] last visible key = the query's position
    const int64_t* row_lo = nullptr;     // [R] first visible key (sliding window)
    const float* row_slope = nullptr;    // [R] ALiBi slope, or null
    float softcap = 0.0f;                // 0 = off
    float* o = nullptr;                  // [R][head_dim] out: partial output / own denominator (0 if no key)
    float* lse = nullptr;                // [R] out: m + ln(l), -inf if no key was visible to the row
    // Row formats (llmn_kv_format). INT8/FP8 rows are head_dim bytes; their per-token f32 scales sit
    // at tile + {k,v}_aux_off + (t % block_size) * 4 (kv_layout.hpp, kv_quant.hpp).
    int32_t k_format = LLMN_KV_F16, v_format = LLMN_KV_F16;
    int64_t k_aux_off = 0, v_aux_off = 0;
    // KIVI INT4/INT2 sides (kv_layout.hpp, kv_kivi.hpp): full blocks hold codes + f16 scale/min; the
    // block containing key `length` (the partial one, index length / block_size) is read as f16 rows
    // from the residual tile res + res_{k,v}_off instead.
    int64_t length = 0;              // the sequence's length in this layer
    const uint8_t* res = nullptr;    // residual head tile of (sequence, layer, kv_head), null without KIVI
    int64_t res_k_off = 0, res_v_off = 0;
    int32_t value_group = 0;
    // INT8 query (LLMN_ATTN_FLAG_INT8_QUERY), rounded by quantize_query_row.
    //  INT8 keys: row r's codes at q8 + r * q8_pitch (zero from head_dim to q8_pitch, a multiple of 64,
    //  so a kernel may read whole 64-byte chunks), its scale q8_scale[r] and code sum q8_sum[r]. The
    //  score of key t is float(dot(q8 row, k codes)) * (q8_scale[r] * k_scale[t]): an exact integer dot
    //  product and two roundings, so every ISA gives the same score bits.
    //  KIVI INT4 / INT2 keys (q8_kivi): the kernel rounds q folded with each full block's channel scales,
    //  qf_d = q_d * scale_d, and scores s = float(dot(codes of qf, k codes)) * scale(qf) + sum_d q_d min_d
    //  (the last in f32, as without the flag); the residual f16 rows use q.
    // Null / false: the f32 query q.
    const int8_t* q8 = nullptr;
    const float* q8_scale = nullptr;
    const int32_t* q8_sum = nullptr;
    int32_t q8_pitch = 0;
    bool q8_kivi = false;
};

// The INT8 query's rounding (one rule for every ISA and key format; the INT4 GEMM's activation rule):
// codes[i] = round-to-nearest-even(x[i] * (127 / max|x|)), returns the scale max|x| / 127. A row whose
// max|x| is 0, or so small that 127 / max|x| overflows, gets zero codes and scale 0. Finite x only.
// Defined in decode_attention_cpu.cpp (no inline copy in the AVX files); the SIMD kernels repeat it.
float quantize_query_row(const float* x, int32_t n, int8_t* codes);

void run_item_scalar(const Item& it);
void run_item_avx2(const Item& it);  // only called when active_isa() >= AVX2 (x86 builds); f16 K and V
void run_item_avx512(const Item& it);  // the same at zmm width, when active_isa() == AVX512 (x86 builds)
void run_item_neon(const Item& it);  // arm64 builds, when active_isa() == NEON; f16 K and V
// Any mix of F16 / INT8 / FP8_E4M3 K and V rows with dequantization fused into the row loads
// (decode_attention_quant_avx2.cpp); same AVX2 requirement.
void run_item_quant_avx2(const Item& it);
// Caches with an INT4/INT2 side whose other side is F16, INT4 or INT2 (decode_attention_kivi_avx2.cpp);
// KIVI mixed with INT8/FP8 runs the scalar kernel.
void run_item_kivi_avx2(const Item& it);
void run_item_kivi_avx512(const Item& it);  // the same at zmm width, when active_isa() == AVX512 (x86 builds)

}  // namespace llmn::attn_cpu
