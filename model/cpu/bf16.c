/* bf16.c — frozen-weight GEMMs in bf16 through oneDNN's matmul.
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
 * run uses a handful of shapes; generation one per prompt length. The
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
uint64_t cpu_bf16_gemm_count(void) {
    return 0;
}
const char *cpu_bf16_last_impl(void) {
    return "";
}
#else

#define BF16_CACHE 64

typedef struct {
    int M, N, K, transW, accumulate, ldc, threads;
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
    bf16_prim cache[BF16_CACHE];
    int n_cached;
    uint64_t tick, count;
    uint16_t *abuf; /* A rounded to bf16, (M, K) */
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
    dnnl_dims_t sd = {p->M, p->K}, ss = {p->K, 1};
    dnnl_dims_t wd = {p->K, p->N};
    /* W (N, K) row-major read as op(W) = Wᵀ (K, N) has strides {1, K};
     * W (K, N) row-major, {N, 1}. */
    dnnl_dims_t ws_t = {1, p->K}, ws_n = {p->N, 1};
    dnnl_dims_t dd = {p->M, p->N}, ds = {p->ldc, 1};
    DN(dnnl_memory_desc_init_by_strides(&smd, 2, sd, dnnl_bf16, ss));
    DN(dnnl_memory_desc_init_by_strides(&wmd, 2, wd, dnnl_bf16, p->transW ? ws_t : ws_n));
    DN(dnnl_memory_desc_init_by_strides(&dmd, 2, dd, dnnl_f32, ds));
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

/* The cached primitive for a key, creating it (and evicting the least
 * recently used one when the cache is full). */
static bf16_prim *prim_get(int transW, int M, int N, int K, int accumulate, int ldc) {
    int threads = omp_get_max_threads();
    for (int i = 0; i < bf.n_cached; i++) {
        bf16_prim *p = &bf.cache[i];
        if (p->M == M && p->N == N && p->K == K && p->transW == transW &&
            p->accumulate == accumulate && p->ldc == ldc && p->threads == threads) {
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
    *p = (bf16_prim){.M = M,
                     .N = N,
                     .K = K,
                     .transW = transW,
                     .accumulate = accumulate,
                     .ldc = ldc,
                     .threads = threads};
    if (prim_create(p) != 0) {
        *p = bf.cache[--bf.n_cached]; /* drop the empty slot */
        return NULL;
    }
    p->last_use = ++bf.tick;
    return p;
}

static int exec_locked(int transW, int M, int N, int K, const real *A, int lda, const uint16_t *W,
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
    bf16_prim *p = prim_get(transW, M, N, K, beta != 0, ldc);
    if (!p) return -1;
    DN(dnnl_memory_set_data_handle(p->src, bf.abuf));
    DN(dnnl_memory_set_data_handle(p->wei, (void *)W));
    DN(dnnl_memory_set_data_handle(p->dst, C));
    dnnl_exec_arg_t args[3] = {
        {DNNL_ARG_SRC, p->src}, {DNNL_ARG_WEIGHTS, p->wei}, {DNNL_ARG_DST, p->dst}};
    DN(dnnl_primitive_execute(p->prim, bf.stream, 3, args));
    DN(dnnl_stream_wait(bf.stream));
    bf.count++;
    memcpy(bf.last_impl, p->impl, sizeof bf.last_impl);
    return 0;
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
    int rc = exec_locked(1, M, N, K, a, K, w, 0, c, N);
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
    int rc = exec_locked(transW, M, N, K, A, lda, W, beta, C, ldc);
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
