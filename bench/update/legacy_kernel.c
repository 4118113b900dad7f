/* legacy_kernel.c — update_apply's kernel before it used FMA (commit
 * 8425b12, lora/update.c), kept so that bench_update measures the old and
 * the new kernel in the same process on the same update:
 *
 *   acc = (double)W[i][j];  acc = acc + (double)B[i][k] · (double)A[k][j], k = 0..R-1;
 *   W'[i][j] = (float)acc
 *
 * with a separate double multiply and add (-ffp-contract=off), 4 rows × 256
 * columns of accumulators in memory, "omp simd" over the columns, and the
 * row loop compiled for AVX2 and the x86-64 baseline (GCC's target_clones).
 * Not part of the product. */
#include "bench/update/legacy_kernel.h"

#include <omp.h>
#include <stdlib.h>

#define ROWS 4
#define COLS 256
#define SCRATCH (ROWS * COLS) /* doubles per thread */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                             \
    !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx2", "default")))
#endif
static void
legacy_rows(float *W, const float *B, const float *A, int out, int R, int in, double *acc, int i0) {
    const int nr = out - i0 < ROWS ? out - i0 : ROWS;
    for (int j0 = 0; j0 < in; j0 += COLS) {
        const int nj = in - j0 < COLS ? in - j0 : COLS;
        for (int r = 0; r < nr; r++)
            for (int j = 0; j < nj; j++)
                acc[r * COLS + j] = (double)W[(int64_t)(i0 + r) * in + j0 + j];
        for (int k = 0; k < R; k++) {
            const float *a = A + (int64_t)k * in + j0;
            if (nr == ROWS) {
                const float *b = B + (int64_t)i0 * R + k;
                const double b0 = b[0], b1 = b[R], b2 = b[2 * R], b3 = b[3 * R];
                double *c0 = acc, *c1 = acc + COLS, *c2 = acc + 2 * COLS, *c3 = acc + 3 * COLS;
#pragma omp simd
                for (int j = 0; j < nj; j++) {
                    const double x = (double)a[j];
                    c0[j] += b0 * x;
                    c1[j] += b1 * x;
                    c2[j] += b2 * x;
                    c3[j] += b3 * x;
                }
            } else {
                for (int r = 0; r < nr; r++) {
                    const double br = (double)B[(int64_t)(i0 + r) * R + k];
                    double *c = acc + r * COLS;
#pragma omp simd
                    for (int j = 0; j < nj; j++) c[j] += br * (double)a[j];
                }
            }
        }
        for (int r = 0; r < nr; r++)
            for (int j = 0; j < nj; j++)
                W[(int64_t)(i0 + r) * in + j0 + j] = (float)acc[r * COLS + j];
    }
}

int legacy_apply(float *W, const float *B, const float *A, int out, int R, int in) {
    double *scratch = malloc((size_t)omp_get_max_threads() * SCRATCH * sizeof *scratch);
    if (!scratch) return -1;
#pragma omp parallel for schedule(static)
    for (int i0 = 0; i0 < out; i0 += ROWS)
        legacy_rows(W, B, A, out, R, in, scratch + (size_t)omp_get_thread_num() * SCRATCH, i0);
    free(scratch);
    return 0;
}
