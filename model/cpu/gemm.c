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

void cpu_gemm(int transA, int transB, int M, int N, int K, real alpha, const real *A, int lda,
              const real *B, int ldb, real beta, real *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cpu_init();
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
