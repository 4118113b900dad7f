/* wgemm.c — GEMMs with a model weight as the B operand, whatever dtype the
 * weight is held in.
 *
 * A linear layer's forward is y = x · Wᵀ and its backward to the input
 * dx = dy · W, with W (out, in) the frozen weight. At FP32 precision the
 * product goes through the tiled GEMM (gemm.c); a weight held in bf16 or
 * fp16 is widened one tile of op(W) at a time into a per-thread buffer, so
 * the model never needs an fp32 copy of itself and the bits are those of the
 * same tiles over an fp32 copy. At BF16 precision a bf16 weight goes to
 * oneDNN (bf16.c), which reads it as it is. */
#include "model/cpu/cpu.h"

#include "util/err.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

/* The last widened tile of this thread: reused while the same GEMM asks for
 * the same block again (its other row tiles), rebuilt otherwise. Kept per
 * thread for the life of the thread, sized for the largest tile seen (at
 * most CPU_TILE x CPU_KTILE values, 8 MiB), and freed when the thread ends
 * (a pthread key's destructor: OpenMP ends pool threads when a team
 * shrinks, and a _Thread_local pointer alone would leak their buffers). */
typedef struct {
    real *buf;
    size_t cap;
    uint64_t call;
    int64_t n0, n1, k0, k1;
} tile_cache;

static _Thread_local tile_cache wg_tile;
static _Atomic uint64_t wg_calls;
static pthread_key_t wg_key;
static pthread_once_t wg_key_once = PTHREAD_ONCE_INIT;
static int wg_key_ok;

static void wg_key_make(void) {
    wg_key_ok = pthread_key_create(&wg_key, free) == 0;
}

/* buf (k1 − k0, n1 − n0) or (n1 − n0, k1 − k0) = the block of W (out, in)
 * behind op(W)[k0:k1, n0:n1]: W's rows n0..n1, columns k0..k1 when op(W) =
 * Wᵀ; rows k0..k1, columns n0..n1 when op(W) = W. */
static void widen_block(const model_param *w, int transW, int64_t n0, int64_t n1, int64_t k0,
                        int64_t k1, real *buf) {
    int64_t in = w->shape[1];
    if (transW) {
        for (int64_t r = n0; r < n1; r++)
            model_param_read(w, r * in + k0, k1 - k0, buf + (r - n0) * (k1 - k0));
    } else {
        for (int64_t r = k0; r < k1; r++)
            model_param_read(w, r * in + n0, n1 - n0, buf + (r - k0) * (n1 - n0));
    }
}

const real *cpu_bsrc_tile(const cpu_bsrc *b, int64_t n0, int64_t n1, int64_t k0, int64_t k1,
                          int *ldb) {
    if (b->B) {
        *ldb = b->ldb;
        return b->transB ? b->B + n0 * b->ldb + k0 : b->B + k0 * b->ldb + n0;
    }
    tile_cache *t = &wg_tile;
    *ldb = (int)(b->transB ? k1 - k0 : n1 - n0);
    if (t->buf && t->call == b->call && t->n0 == n0 && t->n1 == n1 && t->k0 == k0 && t->k1 == k1)
        return t->buf;
    size_t need = (size_t)(n1 - n0) * (size_t)(k1 - k0);
    if (need > t->cap) {
        real *nb = realloc(t->buf, need * sizeof(real));
        if (!nb) return NULL;
        t->buf = nb;
        t->cap = need;
        /* the key's value is what its destructor frees at the thread's end */
        pthread_once(&wg_key_once, wg_key_make);
        if (!wg_key_ok || pthread_setspecific(wg_key, nb) != 0) {
            free(nb);
            t->buf = NULL;
            t->cap = 0;
            return NULL;
        }
    }
    widen_block(b->w, b->transB, n0, n1, k0, k1, t->buf);
    t->call = b->call;
    t->n0 = n0;
    t->n1 = n1;
    t->k0 = k0;
    t->k1 = k1;
    return t->buf;
}

int cpu_wgemm(model_precision prec, int transW, const model_param *w, int M, const real *A, int lda,
              real beta, real *C, int ldc) {
    int out = (int)w->shape[0], in = (int)w->shape[1];
    int N = transW ? out : in, K = transW ? in : out;
#ifndef FL_REAL_F64
    if (prec == MODEL_PRECISION_BF16 && w->dtype == MODEL_DTYPE_BF16 && M >= CPU_BF16_MIN_ROWS)
        return cpu_bf16_gemm(transW, M, N, K, A, lda, w->values, beta, C, ldc);
#endif
    cpu_bsrc b = {.transB = transW, .ldb = in};
    if (w->dtype == MODEL_DTYPE_REAL)
        b.B = w->values;
    else
        b.w = w;
    /* Starts at 1: a fresh thread's cache (call 0) never matches. */
    b.call = atomic_fetch_add(&wg_calls, 1) + 1;
    if (cpu_gemm_tiled(0, &b, M, N, K, 1, A, lda, beta, C, ldc) != 0)
        return err_context("multiplying by %s", w->name);
    return 0;
}
