/* gemm.c — one threading model for the CPU backend: OpenMP, with OpenBLAS
 * single-threaded underneath (the measurements are in cpu.h), and GEMMs cut
 * into tiles that depend on the shape only.
 *
 * Why fixed tiles: a GEMM's bits depend on how it is cut. OpenBLAS's kernels
 * for Haswell-class cores (which it also picks on AMD Zen 4) give different
 * bits for an element when the same product is computed as one call or as
 * two calls over halves of the rows or columns (measured: 14 000 of 65 536
 * elements of a 256x256x128 sgemm differ); its SkylakeX kernels do not. So
 * a split that follows the thread count would make results depend on it.
 * Here every GEMM above a size is cut into CPU_TILE x CPU_TILE blocks of C,
 * and each block is one BLAS call (or one per CPU_KTILE slice of a long K,
 * summed in order) whatever thread computes it: 1, 2 or 16 threads give the
 * same bits, on every kernel OpenBLAS may choose. (Tiles of 256 cost ~1 % in
 * packing against one call: each tile packs its panels of A and B once.) The same tiles serve
 * weights held in bf16 or fp16 (wgemm.c), which are widened a tile at a time; so an fp32-precision
 * product with a bf16 checkpoint has exactly the bits of the same product with the checkpoint
 * widened to fp32 first. */
#include "model/cpu/cpu.h"

#include "util/err.h"

#include <omp.h>
#include <pthread.h>
#include <stdlib.h>

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

/* Below this many multiply-adds a GEMM is one call, not tiles. */
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
 * "Generation"). B's rows are cut into fixed blocks of CPU_GEMV_ROWS, one
 * gemv each (the transposed gemv, B stored (K, N), blocks its outputs
 * internally by 4096, so that case stays with the tiled sgemm). a's
 * elements are A's first row, or its first column (stride lda) when
 * transposed. */
static int gemv_rows(const cpu_bsrc *b, int transA, int N, int K, real alpha, const real *A,
                     int lda, real beta, real *C) {
    int inca = transA ? lda : 1;
    int64_t blocks = (N + CPU_GEMV_ROWS - 1) / CPU_GEMV_ROWS;
    int nt = omp_in_parallel() || (int64_t)N * K < CPU_GEMM_SPLIT_MIN ? 1 : omp_get_max_threads();
    int failed = 0;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(| : failed)
    for (int64_t i = 0; i < blocks; i++) {
        int64_t lo = i * CPU_GEMV_ROWS, hi = lo + CPU_GEMV_ROWS < N ? lo + CPU_GEMV_ROWS : N;
        int ldb;
        const real *Bt = cpu_bsrc_tile(b, lo, hi, 0, K, &ldb);
        if (!Bt) {
            failed = 1;
            continue;
        }
        real_gemv(CblasRowMajor, CblasNoTrans, (int)(hi - lo), K, alpha, Bt, ldb, A, inca, beta,
                  C + lo, 1);
    }
    return failed ? -1 : 0;
}

int cpu_gemm_tiled(int transA, const cpu_bsrc *b, int M, int N, int K, real alpha, const real *A,
                   int lda, real beta, real *C, int ldc) {
    if (M <= 0 || N <= 0) return 0;
    cpu_init();
    if (K <= 0) { /* an empty sum: C = beta · C, as BLAS defines it */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j];
        return 0;
    }
    if (M == 1 && b->transB && K > 0 && K <= CPU_KTILE)
        return gemv_rows(b, transA, N, K, alpha, A, lda, beta, C);
    int64_t tm = (M + CPU_TILE - 1) / CPU_TILE, tn = (N + CPU_TILE - 1) / CPU_TILE;
    if ((int64_t)M * N * K < CPU_GEMM_SPLIT_MIN) tm = tn = 1;
    int64_t rows = tm == 1 ? M : CPU_TILE, cols = tn == 1 ? N : CPU_TILE;
    int nt = omp_in_parallel() || tm * tn == 1 ? 1 : omp_get_max_threads();
    int failed = 0;
    /* Tiles in column-major order: a thread's consecutive tiles share a
     * column block of op(B), which a widening source then converts once. */
#pragma omp parallel for schedule(static) num_threads(nt) reduction(| : failed)
    for (int64_t t = 0; t < tm * tn; t++) {
        int64_t i = t % tm, j = t / tm;
        int64_t m0 = i * rows, m1 = m0 + rows < M ? m0 + rows : M;
        int64_t n0 = j * cols, n1 = n0 + cols < N ? n0 + cols : N;
        const real *a = transA ? A + m0 : A + m0 * lda;
        real *c = C + m0 * ldc + n0;
        /* A long K is summed in slices, in order, into C. */
        for (int64_t k0 = 0; k0 < K && !failed; k0 += CPU_KTILE) {
            int64_t k1 = k0 + CPU_KTILE < K ? k0 + CPU_KTILE : K;
            int ldb;
            const real *Bt = cpu_bsrc_tile(b, n0, n1, k0, k1, &ldb);
            if (!Bt) {
                failed = 1;
                break;
            }
            const real *ak = transA ? a + k0 * lda : a + k0;
            gemm1(transA, b->transB, (int)(m1 - m0), (int)(n1 - n0), (int)(k1 - k0), alpha, ak, lda,
                  Bt, ldb, k0 ? 1 : beta, c, ldc);
        }
    }
    if (failed) return err_set("out of memory for a GEMM tile's widened weights");
    return 0;
}

void cpu_gemm(int transA, int transB, int M, int N, int K, real alpha, const real *A, int lda,
              const real *B, int ldb, real beta, real *C, int ldc) {
    cpu_bsrc b = {.transB = transB, .B = B, .ldb = ldb};
    /* A plain source never allocates, so this cannot fail. */
    (void)cpu_gemm_tiled(transA, &b, M, N, K, alpha, A, lda, beta, C, ldc);
}
