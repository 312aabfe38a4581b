/* A C consumer of the shared library (libllmnative.so / llmnative.dll), through the public header only.
 *
 * Why beside the GoogleTest suite: that suite links the library's object files into its executable, so
 * it cannot see what only the shared library does: its exports, its process- and thread-lifetime code
 * (the CPU pool's workers start and exit inside the library; per-thread scratch is freed at thread
 * exit), and C callers. The win-x64 build runs this under Wine against llmnative.dll.
 * Checks, each against an independent float64 reference: INT4 quantize + GEMM, a KV cache append +
 * decode attention, both from several short-lived threads of the caller and across pool resizes; a
 * rejected call (status, message, output untouched); no live objects at the end. */
#include <llmnative/llmnative.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#include <windows.h>
#else
#include <pthread.h>
#endif

static int g_failures = 0;

#define CHECK(cond, ...)                                            \
    do {                                                            \
        if (!(cond)) {                                              \
            ++g_failures;                                           \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);  \
            fprintf(stderr, __VA_ARGS__);                           \
            fprintf(stderr, "\n");                                  \
        }                                                           \
    } while (0)

static const char* last_error(void) {
    static char buf[1024];
    int32_t len = 0;
    buf[0] = 0;
    llmn_get_last_error(buf, (int32_t)sizeof buf, &len);
    return buf;
}

#define OK(call)                                                                         \
    do {                                                                                 \
        llmn_status st_ = (call);                                                        \
        if (st_ != LLMN_STATUS_OK) {                                                     \
            fprintf(stderr, "FAILED %s:%d: %s -> %d (%s)\n", __FILE__, __LINE__, #call, \
                    (int)st_, last_error());                                             \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static double uniform(void) { /* xorshift64*, in [-1, 1) */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 2685821657736338717ull) >> 11) / 4503599627370496.0 - 1.0;
}

/* ---- INT4 GEMM: y = x dequant(W), checked against float64 on the dequantized weights ---------------- */

enum { GK = 200, GN = 40, GM = 3 };

typedef struct {
    llmn_context ctx;
    llmn_int4_weight w;
    float wd[GK * GN]; /* dequantized weights */
    float x[GM * GK];
    double ref[GM * GN], bound[GM * GN];
} GemmCase;

static void gemm_setup(GemmCase* c, llmn_context ctx) {
    float w[GK * GN];
    for (int i = 0; i < GK * GN; ++i) w[i] = (float)(0.05 * uniform());
    for (int i = 0; i < GM * GK; ++i) c->x[i] = (float)uniform();
    llmn_int4_weight_desc d = {GK, GN, 32, 1, 0, 0};
    c->ctx = ctx;
    OK(llmn_int4_weight_quantize(ctx, &d, LLMN_DTYPE_F32, w, &c->w));
    OK(llmn_int4_weight_dequantize(c->w, LLMN_DTYPE_F32, c->wd));
    /* The CPU backend rounds each 32-element block of x to int8 (error <= max|x_block| / 254 per
     * element), then accumulates in f32: bound = that rounding + a generous f32 term. */
    for (int m = 0; m < GM; ++m)
        for (int n = 0; n < GN; ++n) {
            double r = 0, s = 0, q = 0;
            for (int k = 0; k < GK; ++k) {
                double amax = 0;
                for (int j = k / 32 * 32; j < k / 32 * 32 + 32 && j < GK; ++j)
                    amax = fmax(amax, fabs((double)c->x[m * GK + j]));
                r += (double)c->x[m * GK + k] * c->wd[k * GN + n];
                s += fabs((double)c->x[m * GK + k] * c->wd[k * GN + n]);
                q += amax / 254.0 * fabs((double)c->wd[k * GN + n]);
            }
            c->ref[m * GN + n] = r;
            c->bound[m * GN + n] = q * 1.0001 + 1e-5 * s + 1e-30;
        }
}

static void gemm_check(GemmCase* c, const char* where) {
    llmn_buffer xb, yb;
    float y[GM * GN];
    OK(llmn_buffer_create(c->ctx, LLMN_DTYPE_F32, GM * GK, LLMN_MEMORY_DEVICE, &xb));
    OK(llmn_buffer_create(c->ctx, LLMN_DTYPE_F32, GM * GN, LLMN_MEMORY_DEVICE, &yb));
    OK(llmn_buffer_upload(xb, 0, c->x, GM * GK));
    const float nan = (float)NAN;
    OK(llmn_buffer_fill(yb, 0, GM * GN, &nan)); /* poison: unwritten outputs fail */
    OK(llmn_gemm_int4(c->ctx, xb, c->w, NULL, yb, GM));
    OK(llmn_buffer_download(yb, 0, y, GM * GN));
    int bad = 0;
    for (int i = 0; i < GM * GN; ++i)
        if (!(fabs((double)y[i] - c->ref[i]) <= c->bound[i]) && bad++ < 3)
            CHECK(0, "%s: gemm y[%d] = %g, reference %g, bound %g", where, i, y[i], c->ref[i], c->bound[i]);
    llmn_buffer_destroy(xb);
    llmn_buffer_destroy(yb);
}

/* ---- decode attention over a paged f16 cache, checked against float64 softmax attention ----------- */

enum { AH = 2, AG = 2, AD = 64, AL = 37 };

typedef struct {
    llmn_context ctx;
    llmn_kv_cache cache;
    int64_t seq;
    float q[AH * AG * AD];
    double ref[AH * AG * AD];
} AttnCase;

static void attn_setup(AttnCase* a, llmn_context ctx) {
    llmn_kv_cache_desc d;
    memset(&d, 0, sizeof d);
    d.num_layers = 1;
    d.num_kv_heads = AH;
    d.head_dim = AD;
    d.block_size = 16;
    d.k_format = LLMN_KV_F16;
    d.v_format = LLMN_KV_F16;
    d.max_batch = 4;
    d.capacity_tokens = 256;
    a->ctx = ctx;
    OK(llmn_kv_cache_create(ctx, &d, &a->cache));
    OK(llmn_kv_cache_add_sequence(a->cache, &a->seq));
    static float k[AL * AH * AD], v[AL * AH * AD];
    for (int i = 0; i < AL * AH * AD; ++i) {
        k[i] = (float)uniform();
        v[i] = (float)uniform();
    }
    llmn_buffer kb, vb;
    OK(llmn_buffer_create(ctx, LLMN_DTYPE_F32, AL * AH * AD, LLMN_MEMORY_DEVICE, &kb));
    OK(llmn_buffer_create(ctx, LLMN_DTYPE_F32, AL * AH * AD, LLMN_MEMORY_DEVICE, &vb));
    OK(llmn_buffer_upload(kb, 0, k, AL * AH * AD));
    OK(llmn_buffer_upload(vb, 0, v, AL * AH * AD));
    OK(llmn_kv_cache_append(a->cache, a->seq, 0, kb, vb, AL));
    /* the reference uses what the cache stores (f16-rounded), read back */
    OK(llmn_kv_cache_read(a->cache, a->seq, 0, 0, AL, kb, vb));
    OK(llmn_buffer_download(kb, 0, k, AL * AH * AD));
    OK(llmn_buffer_download(vb, 0, v, AL * AH * AD));
    llmn_buffer_destroy(kb);
    llmn_buffer_destroy(vb);
    for (int i = 0; i < AH * AG * AD; ++i) a->q[i] = (float)uniform();
    const double scale = 1.0 / sqrt((double)AD);
    for (int hq = 0; hq < AH * AG; ++hq) {
        const int h = hq / AG;
        double s[AL], mx = -1e300, l = 0;
        for (int t = 0; t < AL; ++t) {
            double dot = 0;
            for (int c = 0; c < AD; ++c) dot += (double)a->q[hq * AD + c] * k[(t * AH + h) * AD + c];
            s[t] = dot * scale;
            mx = fmax(mx, s[t]);
        }
        for (int t = 0; t < AL; ++t) l += (s[t] = exp(s[t] - mx));
        for (int c = 0; c < AD; ++c) {
            double o = 0;
            for (int t = 0; t < AL; ++t) o += s[t] * v[(t * AH + h) * AD + c];
            a->ref[hq * AD + c] = o / l;
        }
    }
}

static void attn_check(AttnCase* a, const char* where) {
    llmn_buffer qb, ob;
    float o[AH * AG * AD];
    OK(llmn_buffer_create(a->ctx, LLMN_DTYPE_F32, AH * AG * AD, LLMN_MEMORY_DEVICE, &qb));
    OK(llmn_buffer_create(a->ctx, LLMN_DTYPE_F32, AH * AG * AD, LLMN_MEMORY_DEVICE, &ob));
    OK(llmn_buffer_upload(qb, 0, a->q, AH * AG * AD));
    const float nan = (float)NAN;
    OK(llmn_buffer_fill(ob, 0, AH * AG * AD, &nan));
    llmn_attention_params p;
    memset(&p, 0, sizeof p);
    p.num_q_heads = AH * AG;
    p.q_len = 1;
    p.scale = 1.0f / sqrtf((float)AD);
    OK(llmn_decode_attention(a->ctx, a->cache, &a->seq, 1, qb, NULL, ob, &p));
    OK(llmn_buffer_download(ob, 0, o, AH * AG * AD));
    int bad = 0;
    /* |v| < 1 and f32 accumulation over 37 keys and 64 channels: 1e-5 is over 10x the f32 error */
    for (int i = 0; i < AH * AG * AD; ++i)
        if (!(fabs((double)o[i] - a->ref[i]) <= 1e-5) && bad++ < 3)
            CHECK(0, "%s: attention out[%d] = %g, reference %g", where, i, o[i], a->ref[i]);
    llmn_buffer_destroy(qb);
    llmn_buffer_destroy(ob);
}

/* ---- caller threads ---------------------------------------------------------------------------- */

static GemmCase g_gemm;
static AttnCase g_attn;

static void thread_body(void) {
    gemm_check(&g_gemm, "caller thread");
    attn_check(&g_attn, "caller thread");
}

#if defined(_WIN32)
static DWORD WINAPI thread_main(LPVOID arg) {
    (void)arg;
    thread_body();
    return 0;
}
static void run_threads(int n) {
    HANDLE h[8];
    for (int i = 0; i < n; ++i) h[i] = CreateThread(NULL, 0, thread_main, NULL, 0, NULL);
    for (int i = 0; i < n; ++i) {
        WaitForSingleObject(h[i], INFINITE);
        CloseHandle(h[i]);
    }
}
#else
static void* thread_main(void* arg) {
    (void)arg;
    thread_body();
    return NULL;
}
static void run_threads(int n) {
    pthread_t t[8];
    for (int i = 0; i < n; ++i) pthread_create(&t[i], NULL, thread_main, NULL);
    for (int i = 0; i < n; ++i) pthread_join(t[i], NULL);
}
#endif

int main(void) {
    int32_t abi = 0;
    OK(llmn_get_abi_version(&abi));
    CHECK(abi == LLMN_ABI_VERSION, "ABI version %d, header %d", (int)abi, (int)LLMN_ABI_VERSION);
    char path[4096], version[64];
    int32_t len = 0;
    OK(llmn_get_library_path(path, (int32_t)sizeof path, &len));
    CHECK(len > 0 && strstr(path, "llmnative") != NULL, "library path '%s' does not name the library", path);
    OK(llmn_get_version(version, (int32_t)sizeof version, &len));
    llmn_cpu_info info;
    OK(llmn_get_cpu_info(&info));
    printf("abi smoke: LlmNative %s from %s; CPU '%s', ISA %d, %d threads\n", version, path, info.model_name,
           (int)info.detected_isa, (int)info.threads);

    llmn_context ctx;
    OK(llmn_context_create(LLMN_BACKEND_CPU, 0, &ctx));
    gemm_setup(&g_gemm, ctx);
    attn_setup(&g_attn, ctx);
    thread_body();

    /* The pool's workers exit and restart on each resize; caller threads start and exit. */
    for (int threads = 1; threads <= 3; ++threads) {
        OK(llmn_set_cpu_threads(threads));
        run_threads(3);
    }
    OK(llmn_set_cpu_threads(0));
    thread_body();

    /* A rejected call: INVALID_ARGUMENT naming the parameter, output untouched. */
    llmn_buffer xb, yb;
    OK(llmn_buffer_create(ctx, LLMN_DTYPE_F32, GM * GK, LLMN_MEMORY_DEVICE, &xb));
    OK(llmn_buffer_create(ctx, LLMN_DTYPE_F32, GM * GN, LLMN_MEMORY_DEVICE, &yb));
    const float sentinel = 123.0f;
    OK(llmn_buffer_fill(yb, 0, GM * GN, &sentinel));
    const llmn_status st = llmn_gemm_int4(ctx, xb, g_gemm.w, NULL, yb, -1);
    CHECK(st == LLMN_STATUS_INVALID_ARGUMENT, "m = -1 gave status %d", (int)st);
    CHECK(strstr(last_error(), "m must be") != NULL, "message '%s' does not name m", last_error());
    float y[GM * GN];
    OK(llmn_buffer_download(yb, 0, y, GM * GN));
    for (int i = 0; i < GM * GN; ++i) CHECK(y[i] == sentinel, "y[%d] changed by a rejected call", i);
    llmn_buffer_destroy(xb);
    llmn_buffer_destroy(yb);

    llmn_kv_cache_destroy(g_attn.cache);
    llmn_int4_weight_destroy(g_gemm.w);
    llmn_context_destroy(ctx);
    int64_t live = -1;
    OK(llmn_debug_live_objects(&live));
    CHECK(live == 0, "%lld objects still alive", (long long)live);
    if (g_failures) {
        fprintf(stderr, "abi smoke: %d failure(s)\n", g_failures);
        return 1;
    }
    printf("abi smoke: ok\n");
    return 0;
}
