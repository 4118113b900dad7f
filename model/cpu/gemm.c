/* gemm.c — one threading model for the CPU backend: OpenMP, with OpenBLAS
 * single-threaded underneath (the measurements are in cpu.h). */
#include "model/cpu/cpu.h"

#include <omp.h>
#include <pthread.h>

static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void cpu_init_once(void) {
    openblas_set_num_threads(1);
}

void cpu_init(void) {
    pthread_once(&cpu_once, cpu_init_once);
}

void cpu_thread_range(int64_t n, int64_t *lo, int64_t *hi) {
    int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    *lo = n * id / nt;
    *hi = n * (id + 1) / nt;
}

/* Below this many multiply-adds a GEMM is not worth a parallel region. */
#define CPU_GEMM_SPLIT_MIN (1 << 18)

static void gemm1(int transA, int transB, int M, int N, int K, real alpha, const real *A, int lda,
                  const real *B, int ldb, real beta, real *C, int ldc) {
    real_gemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
              M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* C (1, N) = alpha · a (1, K) · B (N, K)ᵀ + beta · C: one row times a weight
 * matrix stored (out, in), as in every step of token-by-token generation.
 * OpenBLAS 0.3.21's sgemm packs all of B even for a single row (a copy of
 * each weight matrix per token), so such a product goes to gemv, which
 * streams B once: decoding 1.2-2.0x faster (docs/benchmarks.md,
 * "Generation"). Threads take blocks of B's rows whose edges are multiples of
 * 16, and only when K >= 64: then every output gets the same bits whatever
 * the thread count (tests/cpu/test_forward_precision.c). Measured on
 * OpenBLAS's kernels: unaligned edges changed 2-16 of GPT-2's 50257 logits;
 * with K = 7 or 8 and packed rows, a three-way 16-aligned split changed
 * about half of 40000 outputs; and the transposed gemv (B stored (K, N))
 * blocks its outputs by 4096, so a column split changes bits even at K = 768
 * and that case stays with sgemm. a's elements are A's first row,
 * or its first column (stride lda) when transposed. */
static void gemv_row(int transA, int N, int K, real alpha, const real *A, int lda, const real *B,
                     int ldb, real beta, real *C) {
    int inca = transA ? lda : 1;
    int nt = omp_in_parallel() || K < 64 || (int64_t)N * K < CPU_GEMM_SPLIT_MIN
                 ? 1
                 : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
    {
        int64_t t = omp_get_num_threads(), id = omp_get_thread_num(), chunks = (N + 15) / 16;
        int64_t lo = chunks * id / t * 16, hi = chunks * (id + 1) / t * 16;
        if (hi > N) hi = N;
        if (hi > lo)
            real_gemv(CblasRowMajor, CblasNoTrans, (int)(hi - lo), K, alpha, B + lo * ldb, ldb, A,
                      inca, beta, C + lo, 1);
    }
}

void cpu_gemm(int transA, int transB, int M, int N, int K, real alpha, const real *A, int lda,
              const real *B, int ldb, real beta, real *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cpu_init();
    if (M == 1 && transB && K > 0) {
        gemv_row(transA, N, K, alpha, A, lda, B, ldb, beta, C);
        return;
    }
    if (omp_in_parallel() || omp_get_max_threads() == 1 ||
        (int64_t)M * N * K < CPU_GEMM_SPLIT_MIN) {
        gemm1(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* Each thread computes a block of C's rows (op(A)'s rows) or of its
     * columns (op(B)'s columns), whichever dimension is larger; block edges
     * are multiples of 16 so the BLAS kernels keep full-width tiles. */
    int split_rows = M >= N;
    int64_t len = split_rows ? M : N;
#pragma omp parallel
    {
        int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t chunks = (len + 15) / 16;
        int64_t lo = chunks * id / nt * 16, hi = chunks * (id + 1) / nt * 16;
        if (hi > len) hi = len;
        if (hi > lo) {
            if (split_rows) {
                const real *a = transA ? A + lo : A + lo * lda;
                gemm1(transA, transB, (int)(hi - lo), N, K, alpha, a, lda, B, ldb, beta,
                      C + lo * ldc, ldc);
            } else {
                const real *b = transB ? B + lo * ldb : B + lo;
                gemm1(transA, transB, M, (int)(hi - lo), K, alpha, A, lda, b, ldb, beta, C + lo,
                      ldc);
            }
        }
    }
}
