/* gpu_moe — the mixture of experts' kernels (gpu_moe.cu), behind launchers
 * callable from C, in gpu_kernels.h's conventions (each queues its work on
 * stream and returns the launch status). They are the steps of
 * model/cpu/moe.c, whose header gives the formulas; gpu_moe.c strings them
 * together with the experts' GEMMs. N rows, E experts, k of them per row,
 * Nk = N·k (row, slot) pairs. Every sum runs in a fixed order (no atomics),
 * so a result does not change from run to run. */
#ifndef FL_GPU_GPU_MOE_H
#define FL_GPU_GPU_MOE_H

#include "gpu/gpu_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GPU_MOE_MAX_K 64 /* MAX_EXPERTS_PER_TOK (model/config_table.h) */

/* Per row: prob (N, E) = softmax(logits (N, E)); idx (N, k) the k largest,
 * descending, the lower expert first among equals (moe.c's route); w (N, k)
 * their probabilities renormalized to sum 1. */
cudaError_t gpu_moe_route(const float *logits, int N, int E, int k, float *prob, int32_t *idx,
                          float *w, cudaStream_t stream);

/* The grouping by expert, a stable counting sort of the Nk pairs: expert
 * e's block is rows [off[e], off[e + 1]) of off (E + 1), holding the rows
 * that chose it in row order; tok (Nk) block row → row, pos (Nk) pair
 * (n·k + slot) → block row. cnt: scratch of E ints. */
cudaError_t gpu_moe_group(const int32_t *idx, int N, int k, int E, int32_t *cnt, int32_t *off,
                          int32_t *tok, int32_t *pos, cudaStream_t stream);

/* psum (E) = Σ_n prob[n, e] in double, in row order (the load-balancing
 * loss's P_e of one layer). */
cudaError_t gpu_moe_psum(double *psum, const float *prob, int N, int E, cudaStream_t stream);

/* xg (rows, C) = h[tok[r]], both of type t. */
cudaError_t gpu_moe_gather(void *xg, const void *h, gpu_dtype t, const int32_t *tok, int64_t rows,
                           int C, cudaStream_t stream);

/* out (N, C) = Σ_s coef[n, s] · rows[pos[n, s]] (coef NULL: 1), or += that
 * when accumulate; rows (Nk, C). Each row's sum starts from 0 and adds its
 * k slots in ascending expert order (transformers' index_add_ order), then
 * goes into out: moe.c's scatter. */
cudaError_t gpu_moe_scatter(float *out, const float *rows, const float *coef, const int32_t *idx,
                            const int32_t *pos, int N, int k, int C, int accumulate,
                            cudaStream_t stream);

/* The weighting's backward, for dy (N, C) of type t and the experts'
 * outputs Y (Nk, C) fp32 in block rows: dY[pos[n, s]] = w[n, s] · dy[n]
 * (type t), dw[n, s] = dy[n] · Y[pos[n, s]] (double sums). */
cudaError_t gpu_moe_combine_backward(void *dY, double *dw, const void *dy, gpu_dtype t,
                                     const float *Y, const float *w, const int32_t *pos, int N,
                                     int k, int C, cudaStream_t stream);

/* d/d(router logits) (N, E) of type t, from dw (N, k): through the
 * renormalization and the softmax; aux_c (E) (NULL: none) adds the
 * load-balancing loss's d/dp_e (moe.c's router_backward). */
cudaError_t gpu_moe_router_backward(void *dlogits, gpu_dtype t, const float *prob, const float *w,
                                    const int32_t *idx, const double *dw, const double *aux_c,
                                    int N, int E, int k, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
