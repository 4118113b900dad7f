/* update_kernel — the merge kernel of lora/update.h by instruction set.
 *
 * update_apply and update_apply_rows run the path this CPU does best
 * (UPDATE_KERNEL_AUTO). Every path computes the one definition of
 * lora/update.h, element by element:
 *
 *   acc = (double)W[i][j]
 *   acc = fma((double)B[i][k], (double)A[k][j], acc)    k = 0, 1, …, R-1
 *   W'[i][j] = (float)acc
 *
 * so they give the same bits; tests/update/test_update_kernel.c holds each
 * path available on the test machine to the others and to a scalar loop.
 * This header is for those tests and for bench/update: the product calls
 * update_apply or update_apply_rows. */
#ifndef FL_LORA_UPDATE_KERNEL_H
#define FL_LORA_UPDATE_KERNEL_H

#include <stdint.h>

typedef enum {
    UPDATE_KERNEL_AUTO = 0, /* the fastest path this CPU runs (below) */
    UPDATE_KERNEL_FMA,      /* portable C through fma(): AArch64 and every other target */
    UPDATE_KERNEL_MULADD,   /* portable C, a double multiply then an add: x86-64 without FMA */
    UPDATE_KERNEL_AVX2,     /* x86-64 AVX2 + FMA3, 6 rows × 8 columns per register tile */
    UPDATE_KERNEL_AVX512,   /* x86-64 AVX-512F, 6 rows × 32 columns per register tile */
    UPDATE_KERNEL_COUNT
} update_kernel_path;

/* What AUTO runs here: AVX512 if the CPU (and OS) has AVX-512F, else AVX2
 * with AVX2 and FMA, else MULADD on x86-64; FMA on any other target. */
update_kernel_path update_kernel_auto(void);

/* 1 when path p can run on this CPU (AUTO, FMA and MULADD always can). */
int update_kernel_available(update_kernel_path p);

/* "auto", "fma", "muladd", "avx2", "avx512" (NULL for anything else). */
const char *update_kernel_name(update_kernel_path p);

/* Scratch for applying weights of rank up to max_R through path p with the
 * thread count of this moment (omp_get_max_threads()): made once, so that
 * nothing can fail once an update has begun to change a model. AUTO picks
 * update_kernel_auto(). Refused: a path this CPU cannot run, a rank below
 * 1, out of memory. */
typedef struct update_kernel_ws update_kernel_ws;
int update_kernel_ws_create(update_kernel_ws **out, update_kernel_path p, int max_R);
void update_kernel_ws_free(update_kernel_ws *ws);

/* update_apply_rows's work with ws's path, threads and scratch. Refused (W
 * unchanged): sizes that break its rules or a rank above ws's. */
int update_kernel_ws_apply(update_kernel_ws *ws, float *W, int64_t ldw, const float *B, int64_t ldb,
                           const float *A, int64_t lda, int rows, int R, int in);

/* update_apply_rows (lora/update.h) through path p. Refused (W unchanged):
 * a path this CPU cannot run, bad sizes, out of memory. */
int update_kernel_apply(update_kernel_path p, float *W, int64_t ldw, const float *B, int64_t ldb,
                        const float *A, int64_t lda, int rows, int R, int in);

#endif
