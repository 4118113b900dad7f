/* bf16.c — GEMMs in bf16 through oneDNN's matmul: frozen weights
 * (cpu_bf16_gemm) and attention's batched products (cpu_bf16_matmul).
 *
 * C (M, N) = bf16(A) · op(W) (+ C), with W a bf16 weight read in place and
 * the products summed in fp32 (oneDNN's matmul with bf16 sources and an f32
 * destination accumulates in f32: "Matrix Multiplication", data types). On
 * CPUs with AVX512-BF16 or AMX this runs at about twice the fp32 GEMM's
 * speed (docs/benchmarks.md); it is what PyTorch's CPU autocast computes
 * for a linear layer, except that our output stays fp32 instead of being
 * rounded to bf16.
 *
 * oneDNN builds a primitive per shape (milliseconds: it picks and JITs a
 * kernel), so primitives are cached by everything their creation depends
 * on: shape, layout of W, strides, accumulation, and the OpenMP thread
 * count of the moment (oneDNN partitions the work at creation). A training
 * run's linears use a handful of shapes, its attention 7 per query block;
 * generation one per prompt length. Both entry points are one 2- to
 * 5-dimensional matmul of strided operands, cached alike. The
 * cache, the stream and the activations' bf16 buffer are shared, so calls
 * are serialized by a mutex (they come from one thread in practice; oneDNN
 * parallelizes each one over the OpenMP team itself). */
#include "model/cpu/cpu.h"

#include "util/err.h"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef FL_REAL_F64
/* The fp64 twin exists for gradient checks; it has no bf16 path. */
int cpu_bf16_check(void) {
    return err_set("bf16 GEMMs are not available in the fp64 build");
}
int cpu_bf16_native(void) {
    return 0;
}
const char *cpu_bf16_isa(void) {
    return "none";
}
int cpu_bf16_gemm(int transW, int M, int N, int K, const real *A, int lda, const uint16_t *W,
                  real beta, real *C, int ldc) {
    return cpu_bf16_check();
}
int cpu_bf16_matmul(const cpu_bf16_md *a, const uint16_t *A, const cpu_bf16_md *b,
                    const uint16_t *B, const cpu_bf16_md *c, real *C, int accumulate) {
    return cpu_bf16_check();
}
uint64_t cpu_bf16_gemm_count(void) {
    return 0;
}
const char *cpu_bf16_last_impl(void) {
    return "";
}
#else

/* Primitives kept: a training run's linears use a handful of shapes, and
 * attention 7 per query block of CPU_ATTN_BLOCK rows (a 4096-token sequence
 * needs 448). */
#define BF16_CACHE 512

/* A cached matmul: its operands' descriptions are the key. */
typedef struct {
    cpu_bf16_md a, b, c;
    int accumulate, threads;
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
    char impl[64];
    uint64_t last_use;
} bf16_prim;

static struct {
    pthread_once_t once;
    pthread_mutex_t lock;
    int ok;
    char why[512];
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    dnnl_cpu_isa_t isa;
    bf16_prim *cache; /* BF16_CACHE entries, allocated at first use */
    int n_cached;
    uint64_t tick, count;
    uint16_t *abuf; /* cpu_bf16_gemm's A rounded to bf16, (M, K) */
    size_t abuf_cap;
    char last_impl[64];
} bf = {.once = PTHREAD_ONCE_INIT, .lock = PTHREAD_MUTEX_INITIALIZER};

/* One oneDNN call's status as this project's error: the call, and oneDNN's
 * name for what went wrong. */
static int dnnl_fail(dnnl_status_t s, const char *call) {
    return err_set("oneDNN: %s failed (%s); run with DNNL_VERBOSE=1 for oneDNN's log, or use "
                   "--precision fp32",
                   call, dnnl_status2str(s));
}
#define DN(call)                                                                                   \
    do {                                                                                           \
        dnnl_status_t s_ = (call);                                                                 \
        if (s_ != dnnl_success) return dnnl_fail(s_, #call);                                       \
    } while (0)

static int md_init(dnnl_memory_desc_t *md, const cpu_bf16_md *d, dnnl_data_type_t dt) {
    dnnl_dims_t dims, strides;
    for (int i = 0; i < d->ndims; i++) dims[i] = d->dims[i], strides[i] = d->strides[i];
    DN(dnnl_memory_desc_init_by_strides(md, d->ndims, dims, dt, strides));
    return 0;
}

static void prim_free(bf16_prim *p) {
    dnnl_primitive_destroy(p->prim);
    dnnl_memory_destroy(p->src);
    dnnl_memory_destroy(p->wei);
    dnnl_memory_destroy(p->dst);
    memset(p, 0, sizeof *p);
}

/* The matmul for one key, with its memory objects (data handles set per
 * call). */
static int prim_create(bf16_prim *p) {
    dnnl_memory_desc_t smd, wmd, dmd;
    TRY(md_init(&smd, &p->a, dnnl_bf16));
    TRY(md_init(&wmd, &p->b, dnnl_bf16));
    TRY(md_init(&dmd, &p->c, dnnl_f32));
    dnnl_matmul_desc_t md;
    DN(dnnl_matmul_desc_init(&md, &smd, &wmd, NULL, &dmd));
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = dnnl_primitive_attr_create(&attr);
    if (s == dnnl_success && p->accumulate) {
        /* C += product: oneDNN's sum post-op adds the destination's old
         * values (scale 1). */
        s = dnnl_post_ops_create(&po);
        if (s == dnnl_success) s = dnnl_post_ops_append_sum(po, 1.0f);
        if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(attr, po);
    }
    if (s == dnnl_success) s = dnnl_primitive_desc_create(&pd, &md, attr, bf.engine, NULL);
    if (s == dnnl_success) {
        const char *impl = NULL;
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success &&
            impl)
            snprintf(p->impl, sizeof p->impl, "%s", impl);
        s = dnnl_primitive_create(&p->prim, pd);
    }
    dnnl_primitive_desc_destroy(pd);
    dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) return dnnl_fail(s, "creating a bf16 matmul");
    if ((s = dnnl_memory_create(&p->src, &smd, bf.engine, DNNL_MEMORY_NONE)) != dnnl_success ||
        (s = dnnl_memory_create(&p->wei, &wmd, bf.engine, DNNL_MEMORY_NONE)) != dnnl_success ||
        (s = dnnl_memory_create(&p->dst, &dmd, bf.engine, DNNL_MEMORY_NONE)) != dnnl_success) {
        prim_free(p);
        return dnnl_fail(s, "dnnl_memory_create");
    }
    return 0;
}

/* The cached primitive for these operands, creating it (and evicting the
 * least recently used one when the cache is full). The key includes the
 * OpenMP thread count of the moment: oneDNN partitions the work at
 * creation. Descriptions compare as bytes (cpu_bf16_md_make zeroes what
 * ndims leaves unused). */
static bf16_prim *prim_get(const cpu_bf16_md *a, const cpu_bf16_md *b, const cpu_bf16_md *c,
                           int accumulate) {
    if (!bf.cache && !(bf.cache = calloc(BF16_CACHE, sizeof *bf.cache))) {
        err_set("out of memory for the bf16 matmul cache");
        return NULL;
    }
    int threads = omp_get_max_threads();
    for (int i = 0; i < bf.n_cached; i++) {
        bf16_prim *p = &bf.cache[i];
        if (p->accumulate == accumulate && p->threads == threads && !memcmp(&p->a, a, sizeof *a) &&
            !memcmp(&p->b, b, sizeof *b) && !memcmp(&p->c, c, sizeof *c)) {
            p->last_use = ++bf.tick;
            return p;
        }
    }
    bf16_prim *p;
    if (bf.n_cached < BF16_CACHE) {
        p = &bf.cache[bf.n_cached++];
    } else {
        p = &bf.cache[0];
        for (int i = 1; i < BF16_CACHE; i++)
            if (bf.cache[i].last_use < p->last_use) p = &bf.cache[i];
        prim_free(p);
    }
    *p = (bf16_prim){.a = *a, .b = *b, .c = *c, .accumulate = accumulate, .threads = threads};
    if (prim_create(p) != 0) {
        *p = bf.cache[--bf.n_cached]; /* drop the empty slot */
        return NULL;
    }
    p->last_use = ++bf.tick;
    return p;
}

static int matmul_locked(const cpu_bf16_md *a, const uint16_t *A, const cpu_bf16_md *b,
                         const uint16_t *B, const cpu_bf16_md *c, real *C, int accumulate) {
    bf16_prim *p = prim_get(a, b, c, accumulate);
    if (!p) return -1;
    DN(dnnl_memory_set_data_handle(p->src, (void *)A));
    DN(dnnl_memory_set_data_handle(p->wei, (void *)B));
    DN(dnnl_memory_set_data_handle(p->dst, C));
    dnnl_exec_arg_t args[3] = {
        {DNNL_ARG_SRC, p->src}, {DNNL_ARG_WEIGHTS, p->wei}, {DNNL_ARG_DST, p->dst}};
    DN(dnnl_primitive_execute(p->prim, bf.stream, 3, args));
    DN(dnnl_stream_wait(bf.stream));
    bf.count++;
    memcpy(bf.last_impl, p->impl, sizeof bf.last_impl);
    return 0;
}

/* cpu_bf16_gemm as a 2-D matmul: A rounded into abuf (M, K), W (N, K) read
 * as op(W) = Wᵀ (K, N) with strides {1, K}, or W (K, N) with {N, 1}. */
static int gemm_locked(int transW, int M, int N, int K, const real *A, int lda, const uint16_t *W,
                       real beta, real *C, int ldc) {
    size_t need = (size_t)M * (size_t)K;
    if (need > bf.abuf_cap) {
        uint16_t *nb = realloc(bf.abuf, need * sizeof *nb);
        if (!nb)
            return err_set("out of memory for the bf16 copy of a %d x %d activation matrix", M, K);
        bf.abuf = nb;
        bf.abuf_cap = need;
    }
    /* A rounded to bf16, row by row (autocast rounds the activation too). */
#pragma omp parallel for if (need > 65536)
    for (int i = 0; i < M; i++)
        model_values_to_bf16(A + (size_t)i * lda, K, bf.abuf + (size_t)i * K);
    cpu_bf16_md a = cpu_bf16_md_make(2, (int64_t[]){M, K}, (int64_t[]){K, 1});
    cpu_bf16_md b =
        cpu_bf16_md_make(2, (int64_t[]){K, N}, transW ? (int64_t[]){1, K} : (int64_t[]){N, 1});
    cpu_bf16_md c = cpu_bf16_md_make(2, (int64_t[]){M, N}, (int64_t[]){ldc, 1});
    return matmul_locked(&a, bf.abuf, &b, W, &c, C, beta != 0);
}

/* The engine and stream, and one small product to learn whether oneDNN
 * multiplies bf16 on this CPU at all (it refuses on CPUs without
 * AVX-512). */
static void bf16_init(void) {
    dnnl_status_t s = dnnl_engine_create(&bf.engine, dnnl_cpu, 0);
    if (s == dnnl_success) s = dnnl_stream_create(&bf.stream, bf.engine, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        snprintf(bf.why, sizeof bf.why, "oneDNN could not start a CPU engine (%s)",
                 dnnl_status2str(s));
        return;
    }
    bf.isa = dnnl_get_effective_cpu_isa();
    enum { M = 16, K = 32, N = 32 };
    static real a[M * K], c[M * N];
    static uint16_t w[K * N];
    pthread_mutex_lock(&bf.lock);
    int rc = gemm_locked(1, M, N, K, a, K, w, 0, c, N);
    bf.count = 0;
    pthread_mutex_unlock(&bf.lock);
    if (rc != 0) {
        snprintf(bf.why, sizeof bf.why, "this CPU cannot multiply bf16 matrices: %s", err_msg());
        return;
    }
    bf.ok = 1;
}

int cpu_bf16_check(void) {
    pthread_once(&bf.once, bf16_init);
    if (!bf.ok) return err_set("%s; use --precision fp32", bf.why);
    return 0;
}

int cpu_bf16_native(void) {
    if (cpu_bf16_check() != 0) return 0;
    return (bf.isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
}

const char *cpu_bf16_isa(void) {
    if (cpu_bf16_check() != 0) return "none";
    if ((bf.isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx)
        return "avx512_core_amx";
    if ((bf.isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16)
        return "avx512_core_bf16";
    return "emulated (no bf16 instructions)";
}

int cpu_bf16_gemm(int transW, int M, int N, int K, const real *A, int lda, const uint16_t *W,
                  real beta, real *C, int ldc) {
    if (cpu_bf16_check() != 0) return -1;
    if (beta != 0 && beta != 1) return err_set("cpu_bf16_gemm: beta must be 0 or 1 (got %g)", beta);
    if (M <= 0 || N <= 0) return 0;
    pthread_mutex_lock(&bf.lock);
    int rc = gemm_locked(transW, M, N, K, A, lda, W, beta, C, ldc);
    pthread_mutex_unlock(&bf.lock);
    return rc;
}

int cpu_bf16_matmul(const cpu_bf16_md *a, const uint16_t *A, const cpu_bf16_md *b,
                    const uint16_t *B, const cpu_bf16_md *c, real *C, int accumulate) {
    if (cpu_bf16_check() != 0) return -1;
    if (a->ndims < 2 || a->ndims > CPU_BF16_MD_MAX || b->ndims != a->ndims || c->ndims != a->ndims)
        return err_set("cpu_bf16_matmul: operands of %d, %d and %d dimensions (2 to %d, all equal)",
                       a->ndims, b->ndims, c->ndims, CPU_BF16_MD_MAX);
    for (int i = 0; i < c->ndims; i++)
        if (c->dims[i] <= 0) return 0;
    pthread_mutex_lock(&bf.lock);
    int rc = matmul_locked(a, A, b, B, c, C, accumulate);
    pthread_mutex_unlock(&bf.lock);
    return rc;
}

uint64_t cpu_bf16_gemm_count(void) {
    pthread_mutex_lock(&bf.lock);
    uint64_t n = bf.count;
    pthread_mutex_unlock(&bf.lock);
    return n;
}

const char *cpu_bf16_last_impl(void) {
    return bf.last_impl;
}
#endif
