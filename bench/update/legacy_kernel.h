/* legacy_kernel.h — update_apply's kernel before FMA, for bench_update only
 * (see legacy_kernel.c). */
#ifndef FL_BENCH_UPDATE_LEGACY_KERNEL_H
#define FL_BENCH_UPDATE_LEGACY_KERNEL_H

/* W (out, in) += B (out, R) · A (R, in), rows contiguous; -1 when out of
 * memory. */
int legacy_apply(float *W, const float *B, const float *A, int out, int R, int in);

#endif
