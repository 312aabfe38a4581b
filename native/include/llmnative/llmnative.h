/*
 * llmnative.h — the whole C ABI of LlmNative.
 *
 * Rules every function follows (so bindings can be generated mechanically):
 *   - plain C, `llmn_` prefix, fixed-width integer types only, opaque handles;
 *   - every function returns an llmn_status; on failure a thread-local message
 *     (llmn_get_last_error) names the argument and value that were wrong;
 *   - a failed call changes nothing the caller already stored (weights, cache contents, buffers);
 *   - handles are validated against a registry of live objects with a type tag, so a freed or
 *     wrong-type handle is reported as LLMN_STATUS_INVALID_HANDLE instead of crashing;
 *   - a child object keeps its parent alive (a buffer its context), so destruction order is free;
 *   - host pointers passed in are only read/written during the call.
 * Enum-typed parameters and fields are passed as int32_t so the ABI never depends on enum size.
 */
#ifndef LLMNATIVE_H
#define LLMNATIVE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  if defined(LLMNATIVE_BUILDING)
#    define LLMN_API __declspec(dllexport)
#  else
#    define LLMN_API __declspec(dllimport)
#  endif
#else
#  define LLMN_API __attribute__((visibility("default")))
#endif

/* Bumped on every incompatible change of this header; the C# layer refuses any other value. */
#define LLMN_ABI_VERSION 1

/* ------------------------------------------------------------------------------------------ */
/* Status, errors, versions                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef enum llmn_status {
    LLMN_STATUS_OK = 0,
    LLMN_STATUS_INVALID_ARGUMENT = 1, /* a value is out of range or inconsistent with another */
    LLMN_STATUS_INVALID_HANDLE = 2,   /* null, freed, or of the wrong type */
    LLMN_STATUS_OUT_OF_MEMORY = 3,    /* host or device allocation failed */
    LLMN_STATUS_UNSUPPORTED = 4,      /* valid request this build/backend/device cannot do */
    LLMN_STATUS_BACKEND_ERROR = 5,    /* the CUDA runtime (or another backend) reported an error */
    LLMN_STATUS_CAPACITY_EXCEEDED = 6,/* a KV cache has no free block left */
    LLMN_STATUS_NOT_FOUND = 7,        /* unknown sequence id */
    LLMN_STATUS_BUFFER_TOO_SMALL = 8, /* an output string/array capacity is too small */
    LLMN_STATUS_INTERNAL = 9          /* a bug in LlmNative; please report */
} llmn_status;

/* The calling thread's last error message (UTF-8). Copies at most capacity-1 bytes plus a NUL;
 * *length receives the full length without the NUL. Never fails for capacity >= 0. */
LLMN_API llmn_status llmn_get_last_error(char* buffer, int32_t capacity, int32_t* length);

LLMN_API llmn_status llmn_get_abi_version(int32_t* abi_version);

/* Library version ("major.minor.patch+build"), written like llmn_get_last_error. */
LLMN_API llmn_status llmn_get_version(char* buffer, int32_t capacity, int32_t* length);

/* Path of the loaded native library file, written like llmn_get_last_error. */
LLMN_API llmn_status llmn_get_library_path(char* buffer, int32_t capacity, int32_t* length);

/* Number of live native objects (contexts, buffers, weights, caches). For leak tests. */
LLMN_API llmn_status llmn_debug_live_objects(int64_t* count);

/* ------------------------------------------------------------------------------------------ */
/* Logging                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef enum llmn_log_level {
    LLMN_LOG_TRACE = 0,
    LLMN_LOG_DEBUG = 1,
    LLMN_LOG_INFO = 2,
    LLMN_LOG_WARNING = 3,
    LLMN_LOG_ERROR = 4,
    LLMN_LOG_NONE = 5
} llmn_log_level;

/* context_id is the id of the context the line concerns (llmn_context_get_id), 0 for none.
 * The message is only valid during the call. The callback may be invoked from any thread. */
typedef void (*llmn_log_callback)(int32_t level, uint64_t context_id, const char* message, void* user_data);

/* Installs (or with callback NULL removes) the process-wide log callback. Lines below min_level are
 * not formatted at all. Default: no callback (silent). Safe to call at any time from any thread. */
LLMN_API llmn_status llmn_set_log_callback(llmn_log_callback callback, void* user_data, int32_t min_level);

/* ------------------------------------------------------------------------------------------ */
/* Backends and devices                                                                        */
/* ------------------------------------------------------------------------------------------ */

typedef enum llmn_backend {
    LLMN_BACKEND_CPU = 0,
    LLMN_BACKEND_CUDA = 1
} llmn_backend;

typedef enum llmn_cpu_isa {
    LLMN_CPU_ISA_SCALAR = 0,
    LLMN_CPU_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    LLMN_CPU_ISA_AVX512 = 2, /* AVX-512 F/BW/VL */
    LLMN_CPU_ISA_NEON = 3
} llmn_cpu_isa;

typedef struct llmn_cpu_info {
    int32_t detected_isa;   /* best ISA the CPU and this build support (llmn_cpu_isa) */
    int32_t active_isa;     /* ISA the kernels use now (<= detected; see llmn_set_cpu_isa) */
    int32_t threads;        /* worker threads of the CPU backend's pool */
    int32_t logical_cores;  /* hardware threads the OS reports */
    int64_t l3_cache_bytes; /* last-level cache size, 0 when unknown */
    char model_name[128];   /* NUL-terminated, may be empty */
} llmn_cpu_info;

LLMN_API llmn_status llmn_get_cpu_info(llmn_cpu_info* info);

/* Caps the ISA the CPU kernels use (e.g. LLMN_CPU_ISA_SCALAR to run the reference path).
 * An ISA above the detected one is an error. Process-wide. */
LLMN_API llmn_status llmn_set_cpu_isa(int32_t isa);

/* Resizes the CPU backend's thread pool; 0 means "size from the machine" (the default, or the
 * LLMNATIVE_NUM_THREADS environment variable when set). Process-wide. */
LLMN_API llmn_status llmn_set_cpu_threads(int32_t threads);

typedef struct llmn_cuda_info {
    int32_t compiled;        /* 1 when this library was built with the CUDA backend */
    int32_t available;       /* 1 when at least one usable device was found */
    int32_t device_count;
    int32_t driver_version;  /* e.g. 12040 for 12.4; 0 when no driver */
    int32_t runtime_version; /* version of the statically linked CUDA runtime; 0 when not compiled */
    char unavailable_reason[256]; /* NUL-terminated, empty when available */
} llmn_cuda_info;

LLMN_API llmn_status llmn_get_cuda_info(llmn_cuda_info* info);

typedef struct llmn_cuda_device_info {
    int32_t index;
    int32_t compute_major;
    int32_t compute_minor;
    int32_t sm_count;
    int64_t total_memory_bytes;
    int64_t free_memory_bytes;
    int32_t l2_cache_bytes;
    int32_t memory_bus_width_bits;
    int32_t memory_clock_khz;
    int32_t reserved;
    char name[256];
} llmn_cuda_device_info;

LLMN_API llmn_status llmn_get_cuda_device_info(int32_t device, llmn_cuda_device_info* info);

/* ------------------------------------------------------------------------------------------ */
/* Contexts and buffers                                                                        */
/* ------------------------------------------------------------------------------------------ */

typedef struct llmn_context_s* llmn_context;
typedef struct llmn_buffer_s* llmn_buffer;

/* A context is one backend + device + stream. All work on it is ordered; llmn_context_synchronize
 * waits for it. Operations of one context must not be called from two threads at once. */
LLMN_API llmn_status llmn_context_create(int32_t backend, int32_t device, llmn_context* context);
LLMN_API llmn_status llmn_context_destroy(llmn_context context);
LLMN_API llmn_status llmn_context_synchronize(llmn_context context);
LLMN_API llmn_status llmn_context_get_backend(llmn_context context, int32_t* backend, int32_t* device);
/* Process-unique id, used as context_id in log lines. */
LLMN_API llmn_status llmn_context_get_id(llmn_context context, uint64_t* id);

typedef enum llmn_dtype {
    LLMN_DTYPE_F32 = 0,
    LLMN_DTYPE_F16 = 1,
    LLMN_DTYPE_BF16 = 2,
    LLMN_DTYPE_I8 = 3,
    LLMN_DTYPE_U8 = 4,
    LLMN_DTYPE_I32 = 5
} llmn_dtype;

typedef enum llmn_memory {
    LLMN_MEMORY_DEVICE = 0, /* the context's device memory (host memory for the CPU backend) */
    LLMN_MEMORY_HOST = 1    /* host memory (page-locked on CUDA) */
} llmn_memory;

/* Bytes per element of a dtype. */
LLMN_API llmn_status llmn_dtype_size(int32_t dtype, int32_t* bytes);

/* Allocates count elements (count >= 1). Contents are undefined until written. */
LLMN_API llmn_status llmn_buffer_create(llmn_context context, int32_t dtype, int64_t count, int32_t memory,
                                        llmn_buffer* buffer);
/* Wraps caller-owned host memory (CPU contexts only) without copying. The caller keeps the memory
 * valid and pinned until the buffer is destroyed. */
LLMN_API llmn_status llmn_buffer_wrap_host(llmn_context context, int32_t dtype, int64_t count, void* data,
                                           llmn_buffer* buffer);
LLMN_API llmn_status llmn_buffer_destroy(llmn_buffer buffer);
LLMN_API llmn_status llmn_buffer_get_info(llmn_buffer buffer, int32_t* dtype, int64_t* count, int32_t* memory);
/* Raw data pointer (device pointer for device memory). For interop with other libraries. */
LLMN_API llmn_status llmn_buffer_get_data(llmn_buffer buffer, void** data);

/* Host -> buffer: count elements from src into the buffer starting at element offset.
 * Returns when src may be reused. */
LLMN_API llmn_status llmn_buffer_upload(llmn_buffer buffer, int64_t offset, const void* src, int64_t count);
/* Buffer -> host: count elements from element offset into dst; waits for prior work on the context. */
LLMN_API llmn_status llmn_buffer_download(llmn_buffer buffer, int64_t offset, void* dst, int64_t count);
/* Buffer -> buffer of the same dtype, on the same device (contexts may differ). */
LLMN_API llmn_status llmn_buffer_copy(llmn_buffer dst, int64_t dst_offset, llmn_buffer src, int64_t src_offset,
                                      int64_t count);
/* Sets count elements from offset to *value (one element of the buffer's dtype, in host memory). */
LLMN_API llmn_status llmn_buffer_fill(llmn_buffer buffer, int64_t offset, int64_t count, const void* value);

/* ------------------------------------------------------------------------------------------ */
/* INT4 weight-only GEMM (W4A16):  Y[M,N] = X[M,K] * dequant(W)[K,N] (+ bias[N])               */
/* ------------------------------------------------------------------------------------------ */

typedef struct llmn_int4_weight_s* llmn_int4_weight;

/* Dequantization: w[k][n] = (q[k][n] - zero[g][n]) * scale[g][n], g = group of row k
 * (g = g_idx[k] with act-order, else k / group_size). Symmetric weights have zero = 8. */
typedef struct llmn_int4_weight_desc {
    int64_t k;          /* input features (rows of W) */
    int64_t n;          /* output features (columns of W) */
    int32_t group_size; /* 32, 64 or 128; 0 = per-column (one group spanning all of K) */
    int32_t symmetric;  /* 1: implicit zero point 8; 0: a zero point per (group, column) */
    int32_t has_g_idx;  /* output only (llmn_int4_weight_get_desc): act-order permutation present */
    int32_t reserved;
} llmn_int4_weight_desc;

/* Round-to-nearest quantization of a dense row-major host matrix w[K][N] (f32 or f16) per group.
 * Scales are rounded UP to fp16; round() is half away from zero; an all-zero group gets scale 0.
 * Symmetric (GPTQ sym=True): scale = max(-min/8, max/7), q = clamp(round(w/scale) + 8, 0, 15).
 * Asymmetric: scale = (max - min)/15 (min <= 0 <= max), zero = round(-min/scale), q = clamp(round(w/scale) + zero).
 * NaN/Inf weights are rejected. desc->has_g_idx must be 0. */
LLMN_API llmn_status llmn_int4_weight_quantize(llmn_context context, const llmn_int4_weight_desc* desc,
                                               int32_t src_dtype, const void* weights, llmn_int4_weight* weight);

typedef enum llmn_gptq_format {
    LLMN_GPTQ_V1 = 0, /* AutoGPTQ / Transformers default: qzeros stored as (zero - 1) */
    LLMN_GPTQ_V2 = 1  /* checkpoint_format "gptq_v2": qzeros stored as the real zero */
} llmn_gptq_format;

/* GPTQ tensors exactly as in a Hugging Face safetensors checkpoint (host memory):
 *   qweight int32 [K/8, N]: 8 consecutive k rows per int32, row k%8 in bits 4*(k%8).
 *   qzeros  int32 [G, N/8]: 8 consecutive columns per int32, column n%8 in bits 4*(n%8);
 *           ignored when symmetric (zero 8). G = ceil(K / group_size) or 1 per-column.
 *   scales  f16 or f32 [G, N].
 *   g_idx   int32 [K] or NULL: group of each k row (act-order / desc_act). */
typedef struct llmn_gptq_tensors {
    int64_t k;
    int64_t n;
    int32_t group_size;
    int32_t symmetric;
    int32_t format;       /* llmn_gptq_format */
    int32_t scales_dtype; /* LLMN_DTYPE_F16 or LLMN_DTYPE_F32 */
    const int32_t* qweight;
    const int32_t* qzeros;
    const void* scales;
    const int32_t* g_idx;
} llmn_gptq_tensors;

LLMN_API llmn_status llmn_int4_weight_import_gptq(llmn_context context, const llmn_gptq_tensors* tensors,
                                                  llmn_int4_weight* weight);

/* AWQ tensors as stored by AutoAWQ (GEMM version), host memory, always asymmetric:
 *   qweight int32 [K, N/8]: 8 columns per int32 in AWQ's interleaved nibble order
 *           (nibble i holds column 8j + {0,2,4,6,1,3,5,7}[i]);
 *   qzeros  int32 [G, N/8], same nibble order, real zero points (no off-by-one);
 *   scales  f16 or f32 [G, N]. */
typedef struct llmn_awq_tensors {
    int64_t k;
    int64_t n;
    int32_t group_size;
    int32_t scales_dtype;
    const int32_t* qweight;
    const int32_t* qzeros;
    const void* scales;
} llmn_awq_tensors;

LLMN_API llmn_status llmn_int4_weight_import_awq(llmn_context context, const llmn_awq_tensors* tensors,
                                                 llmn_int4_weight* weight);

LLMN_API llmn_status llmn_int4_weight_destroy(llmn_int4_weight weight);
LLMN_API llmn_status llmn_int4_weight_get_desc(llmn_int4_weight weight, llmn_int4_weight_desc* desc);
/* Bytes of device/host memory the packed weight occupies (data + scales + zeros + g_idx). */
LLMN_API llmn_status llmn_int4_weight_get_size_bytes(llmn_int4_weight weight, int64_t* bytes);
/* Writes dequant(W) as a row-major [K, N] host matrix of dtype f32 or f16. */
LLMN_API llmn_status llmn_int4_weight_dequantize(llmn_int4_weight weight, int32_t dst_dtype, void* dst);

/* Y = X * dequant(W) (+ bias). x: [m, K], y: [m, N], bias: [N] or NULL; all buffers of the weight's
 * context, x/y/bias of one dtype: f32 or f16 on CPU, f16 or bf16 on CUDA. Accumulates in f32. */
LLMN_API llmn_status llmn_gemm_int4(llmn_context context, llmn_buffer x, llmn_int4_weight weight,
                                    llmn_buffer bias, llmn_buffer y, int64_t m);

/* Dense baseline with the same conventions: w is a [K, N] row-major buffer of the activations' dtype. */
LLMN_API llmn_status llmn_gemm_dense(llmn_context context, llmn_buffer x, llmn_buffer w, llmn_buffer bias,
                                     llmn_buffer y, int64_t m, int64_t k, int64_t n);

/* ------------------------------------------------------------------------------------------ */
/* Paged KV cache and split-KV decode attention (FlashDecoding)                                */
/* ------------------------------------------------------------------------------------------ */

typedef struct llmn_kv_cache_s* llmn_kv_cache;

typedef enum llmn_kv_format {
    LLMN_KV_F16 = 0,
    LLMN_KV_BF16 = 1,      /* CUDA only */
    LLMN_KV_INT8 = 2,      /* symmetric, one scale per (token, head) */
    LLMN_KV_FP8_E4M3 = 3,  /* OCP E4M3, one scale per (token, head) */
    LLMN_KV_INT4 = 4,      /* KIVI: keys per channel over a block, values per token in groups */
    LLMN_KV_INT2 = 5
} llmn_kv_format;

typedef struct llmn_kv_cache_desc {
    int32_t num_layers;
    int32_t num_kv_heads;
    int32_t head_dim;          /* 64, 80, 96, 128 or 256 */
    int32_t block_size;        /* tokens per block: 8, 16, 32, 64, 128 or 256 */
    int32_t k_format;          /* llmn_kv_format */
    int32_t v_format;          /* llmn_kv_format */
    int32_t value_group_size;  /* channels per value group for INT4/INT2 values: 32, 64 or 128 */
    int32_t max_batch;         /* largest batch of a decode call; sizes the workspace (0 = 256) */
    int64_t capacity_tokens;   /* pool size in tokens (rounded up to blocks), or 0 ... */
    int64_t capacity_bytes;    /* ... pool size from a byte budget (exactly one of the two > 0) */
} llmn_kv_cache_desc;

/* Memory planner: bytes one token takes in one layer (K and V, with scales) for a description,
 * and how many tokens (all layers) fit in a byte budget. No context needed. */
LLMN_API llmn_status llmn_kv_cache_bytes_per_token(const llmn_kv_cache_desc* desc, int64_t* bytes);
LLMN_API llmn_status llmn_kv_cache_tokens_for_budget(const llmn_kv_cache_desc* desc, int64_t budget_bytes,
                                                     int64_t* tokens);

LLMN_API llmn_status llmn_kv_cache_create(llmn_context context, const llmn_kv_cache_desc* desc,
                                          llmn_kv_cache* cache);
LLMN_API llmn_status llmn_kv_cache_destroy(llmn_kv_cache cache);

typedef struct llmn_kv_cache_stats {
    int64_t total_blocks;
    int64_t free_blocks;
    int64_t num_sequences;
    int64_t pool_bytes;
} llmn_kv_cache_stats;

LLMN_API llmn_status llmn_kv_cache_get_desc(llmn_kv_cache cache, llmn_kv_cache_desc* desc);
LLMN_API llmn_status llmn_kv_cache_get_stats(llmn_kv_cache cache, llmn_kv_cache_stats* stats);

/* Sequence management. Ids are assigned by the cache, unique for its lifetime, never reused. */
LLMN_API llmn_status llmn_kv_cache_add_sequence(llmn_kv_cache cache, int64_t* sequence_id);
LLMN_API llmn_status llmn_kv_cache_remove_sequence(llmn_kv_cache cache, int64_t sequence_id);
/* New sequence with the same contents; full blocks are shared (copy-on-write), the partial one copied. */
LLMN_API llmn_status llmn_kv_cache_fork_sequence(llmn_kv_cache cache, int64_t source_id, int64_t* sequence_id);
/* Shortens the sequence to length tokens in every layer (no-op where already shorter). */
LLMN_API llmn_status llmn_kv_cache_truncate_sequence(llmn_kv_cache cache, int64_t sequence_id, int64_t length);
/* Tokens stored for the sequence in a layer. */
LLMN_API llmn_status llmn_kv_cache_get_sequence_length(llmn_kv_cache cache, int64_t sequence_id, int32_t layer,
                                                       int64_t* length);

/* Appends num_tokens tokens of K and V for one layer; k and v are [num_tokens, num_kv_heads, head_dim]
 * buffers of the cache's context (f32 or f16; bf16 on CUDA). All-or-nothing: on any error (full cache,
 * NaN/Inf values) the cache is unchanged. */
LLMN_API llmn_status llmn_kv_cache_append(llmn_kv_cache cache, int64_t sequence_id, int32_t layer, llmn_buffer k,
                                          llmn_buffer v, int32_t num_tokens);

/* Reads back tokens [start, start+count) of one layer, dequantized, into k and v buffers
 * [count, num_kv_heads, head_dim] of dtype f32 or f16. */
LLMN_API llmn_status llmn_kv_cache_read(llmn_kv_cache cache, int64_t sequence_id, int32_t layer, int64_t start,
                                        int64_t count, llmn_buffer k, llmn_buffer v);

typedef struct llmn_attention_params {
    int32_t layer;
    int32_t num_q_heads;   /* a multiple of the cache's num_kv_heads, ratio 1..16 */
    int32_t q_len;         /* new tokens per sequence, 1..8, already appended; causal among them */
    int32_t num_splits;    /* 0: chosen per call from device and lengths; 1: no split; n: force n */
    float scale;           /* softmax scale, usually 1/sqrt(head_dim) */
    float softcap;         /* logit soft-cap c: s = c * tanh(s / c); 0 disables */
    int32_t window;        /* sliding window: attend to the last `window` positions; 0 disables */
    int32_t flags;         /* LLMN_ATTN_FLAG_* bits; 0 for exact f32 queries (unknown bits: INVALID_ARGUMENT) */
} llmn_attention_params;

/* Bits of llmn_attention_params.flags. */
typedef enum llmn_attention_flags {
    /* Lets the backend compute q.k against quantized keys as exact integer dot products of an int8
     * query. A row x is rounded as codes = round-to-nearest-even(x * (127 / max|x|)), scale max|x| / 127
     * (f32 arithmetic; zero codes and scale 0 when 127 / max|x| overflows), which adds at most half a
     * step, max|x| / 254, per element to the query. The CPU backend does so
     *  - for INT8 keys: x = the query row after the softmax scale; score = (x_scale * k_scale) * dot;
     *  - for KIVI INT4 / INT2 keys, per full block: x = that row times the block's per-channel key
     *    scales; score = x_scale * dot + sum_d q_d * min_d (the f16 residual block keeps f32 queries);
     * (an integer multiply-add instruction covers 4 channels where f32 covers 1). Other key formats and
     * the CUDA backend ignore the flag. Measured output error: docs/kv-quantization.md. */
    LLMN_ATTN_FLAG_INT8_QUERY = 1
} llmn_attention_flags;

/* Decode attention for a batch of sequences of different lengths.
 *   sequence_ids: host array [batch];
 *   q:   [batch, q_len, num_q_heads, head_dim] buffer (f32 or f16 on CPU; f16 or bf16 on CUDA);
 *   out: same shape and dtype as q;
 *   alibi_slopes: f32 buffer [num_q_heads] or NULL (bias slope * (key_pos - query_pos)); every slope must be
 *     finite. The CPU backend checks that on every call. On CUDA the kernel reads the slopes from the buffer
 *     itself (so a call captured into a CUDA graph reads them at replay time); a call on a stream that is not
 *     capturing checks them first with a small synchronising copy (INVALID_ARGUMENT, nothing written), a
 *     captured call cannot check them, and a non-finite slope there makes that head's output undefined.
 * Query i of a sequence of length L (including its q_len new tokens) sees keys 0 .. L - q_len + i. */
LLMN_API llmn_status llmn_decode_attention(llmn_context context, llmn_kv_cache cache, const int64_t* sequence_ids,
                                           int32_t batch, llmn_buffer q, llmn_buffer alibi_slopes, llmn_buffer out,
                                           const llmn_attention_params* params);

#ifdef __cplusplus
}
#endif

#endif /* LLMNATIVE_H */
