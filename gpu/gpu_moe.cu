/* gpu_moe.cu — the mixture of experts' kernels (gpu_moe.h): routing, the
 * grouping by expert, gather, the weighted scatter-add, and the backward of
 * the weighting and of the router. The experts' products are GEMMs
 * (gpu_moe.c). All of it is memory-bound and small next to the GEMMs:
 *   - routing: one thread per row (E and k are small: 8 and 2 for Mixtral);
 *   - grouping: one block per expert, walking the Nk pairs in order with a
 *     block-wide prefix count (warp ballots), so each block lists its rows
 *     in row order with no atomics: the same permutation as the CPU's
 *     counting sort, every run;
 *   - scatter: one block per row, its k slots summed in a fixed order;
 *   - dw: one block per (row, slot), a double dot product reduced in a
 *     fixed tree. */
#include "gpu/gpu_device.cuh"
#include "gpu/gpu_moe.h"

#include <math.h>

/* ---- routing ------------------------------------------------------------------------- */

__global__ void route_kernel(const float *logits, int N, int E, int k, float *prob, int32_t *idx,
                             float *w) {
    int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *lg = logits + n * E;
    float *p = prob + n * E;
    /* softmax(router_logits.float()) */
    float mx = lg[0];
    for (int e = 1; e < E; e++) mx = fmaxf(mx, lg[e]);
    double sum = 0;
    for (int e = 0; e < E; e++) {
        float v = expf(lg[e] - mx);
        p[e] = v;
        sum += v;
    }
    for (int e = 0; e < E; e++) p[e] = (float)(p[e] / sum);
    /* torch.topk: the k largest, descending, the lower index first among equals */
    int32_t *ix = idx + n * k;
    float *wr = w + n * k, top = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int t = 0; t < j; t++) taken |= ix[t] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        ix[j] = best;
        wr[j] = p[best];
        top += p[best];
    }
    for (int j = 0; j < k; j++) wr[j] /= top;
}

extern "C" cudaError_t gpu_moe_route(const float *logits, int N, int E, int k, float *prob,
                                     int32_t *idx, float *w, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    if (E < 1 || k < 1 || k > E || k > GPU_MOE_MAX_K) return cudaErrorInvalidValue;
    route_kernel<<<(unsigned)((N + 127) / 128), 128, 0, stream>>>(logits, N, E, k, prob, idx, w);
    return cudaGetLastError();
}

/* ---- grouping ------------------------------------------------------------------------ */

#define GROUP_THREADS 256

/* cnt[e] = the pairs that chose expert e (block e). */
__global__ void group_count_kernel(const int32_t *idx, int64_t nk, int32_t *cnt) {
    int e = blockIdx.x, c = 0;
    for (int64_t i0 = 0; i0 < nk; i0 += blockDim.x) {
        int64_t i = i0 + threadIdx.x;
        c += __syncthreads_count(i < nk && idx[i] == e);
    }
    if (threadIdx.x == 0) cnt[e] = c;
}

/* Block e: its offset, then its pairs in order, each at the next row of its
 * block. The prefix count of a chunk: lanes before it in its warp (ballot),
 * then the warps before it (shared counts). */
__global__ void group_place_kernel(const int32_t *idx, int64_t nk, int k, int E, const int32_t *cnt,
                                   int32_t *off, int32_t *tok, int32_t *pos) {
    __shared__ int32_t warp_n[GROUP_THREADS / 32];
    __shared__ int32_t base;
    int e = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (threadIdx.x == 0) {
        int32_t b = 0;
        for (int j = 0; j < e; j++) b += cnt[j];
        base = b;
        off[e] = b;
        if (e == E - 1) off[E] = b + cnt[e];
    }
    __syncthreads();
    int32_t row = base;
    for (int64_t i0 = 0; i0 < nk; i0 += blockDim.x) {
        int64_t i = i0 + threadIdx.x;
        int hit = i < nk && idx[i] == e;
        unsigned mask = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) warp_n[warp] = __popc(mask);
        __syncthreads();
        int32_t before = 0, total = 0;
        for (int j = 0; j < (int)(blockDim.x / 32); j++) {
            if (j < warp) before += warp_n[j];
            total += warp_n[j];
        }
        if (hit) {
            int32_t r = row + before + __popc(mask & ((1u << lane) - 1u));
            tok[r] = (int32_t)(i / k);
            pos[i] = r;
        }
        row += total;
        __syncthreads(); /* warp_n is rewritten by the next chunk */
    }
}

extern "C" cudaError_t gpu_moe_group(const int32_t *idx, int N, int k, int E, int32_t *cnt,
                                     int32_t *off, int32_t *tok, int32_t *pos,
                                     cudaStream_t stream) {
    if (E < 1 || k < 1) return cudaErrorInvalidValue;
    int64_t nk = (int64_t)N * k;
    group_count_kernel<<<(unsigned)E, GROUP_THREADS, 0, stream>>>(idx, nk, cnt);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    group_place_kernel<<<(unsigned)E, GROUP_THREADS, 0, stream>>>(idx, nk, k, E, cnt, off, tok,
                                                                  pos);
    return cudaGetLastError();
}

/* ---- the sums of p (the load-balancing loss) ---------------------------------------------- */

__global__ void psum_kernel(double *psum, const float *prob, int N, int E) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    double s = 0;
    for (int64_t n = 0; n < N; n++) s += prob[n * E + e];
    psum[e] = s;
}

extern "C" cudaError_t gpu_moe_psum(double *psum, const float *prob, int N, int E,
                                    cudaStream_t stream) {
    if (E < 1) return cudaErrorInvalidValue;
    psum_kernel<<<(unsigned)((E + 127) / 128), 128, 0, stream>>>(psum, prob, N, E);
    return cudaGetLastError();
}

/* ---- gather, scatter ------------------------------------------------------------------- */

template <typename T>
__global__ void gather_kernel(T *xg, const T *h, const int32_t *tok, int64_t rows, int C) {
    int64_t total = rows * C;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / C, c = i % C;
        xg[i] = h[(int64_t)tok[r] * C + c];
    }
}

extern "C" cudaError_t gpu_moe_gather(void *xg, const void *h, gpu_dtype t, const int32_t *tok,
                                      int64_t rows, int C, cudaStream_t stream) {
    if (rows <= 0 || C <= 0) return cudaSuccess;
    unsigned g = gpu_grid(rows * C, 256);
    if (t == GPU_BF16)
        gather_kernel<<<g, 256, 0, stream>>>((bf16 *)xg, (const bf16 *)h, tok, rows, C);
    else
        gather_kernel<<<g, 256, 0, stream>>>((float *)xg, (const float *)h, tok, rows, C);
    return cudaGetLastError();
}

/* Block n: its slots in ascending expert order (insertion sort, as moe.c's
 * expert_order), then the row's columns. */
__global__ void scatter_kernel(float *out, const float *rows, const float *coef, const int32_t *idx,
                               const int32_t *pos, int k, int C, int accumulate) {
    __shared__ int64_t src[GPU_MOE_MAX_K];
    __shared__ float cf[GPU_MOE_MAX_K];
    int64_t n = blockIdx.x;
    if (threadIdx.x == 0) {
        int order[GPU_MOE_MAX_K];
        const int32_t *ix = idx + n * k;
        for (int j = 0; j < k; j++) {
            int t = j;
            while (t > 0 && ix[order[t - 1]] > ix[j]) {
                order[t] = order[t - 1];
                t--;
            }
            order[t] = j;
        }
        for (int j = 0; j < k; j++) {
            int t = order[j];
            src[j] = (int64_t)pos[n * k + t] * C;
            cf[j] = coef ? coef[n * k + t] : 1.0f;
        }
    }
    __syncthreads();
    float *o = out + n * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0;
        for (int j = 0; j < k; j++) acc += cf[j] * rows[src[j] + c];
        o[c] = accumulate ? o[c] + acc : acc;
    }
}

extern "C" cudaError_t gpu_moe_scatter(float *out, const float *rows, const float *coef,
                                       const int32_t *idx, const int32_t *pos, int N, int k, int C,
                                       int accumulate, cudaStream_t stream) {
    if (N <= 0 || C <= 0) return cudaSuccess;
    if (k < 1 || k > GPU_MOE_MAX_K) return cudaErrorInvalidValue;
    scatter_kernel<<<(unsigned)N, 128, 0, stream>>>(out, rows, coef, idx, pos, k, C, accumulate);
    return cudaGetLastError();
}

/* ---- backward -------------------------------------------------------------------------- */

#define DW_THREADS 128

/* Block (n, s): dY's row, and dw as a double sum reduced in a fixed tree. */
template <typename T>
__global__ void combine_bwd_kernel(T *dY, double *dw, const T *dy, const float *Y, const float *w,
                                   const int32_t *pos, int k, int C) {
    __shared__ double part[DW_THREADS / 32];
    int64_t ns = blockIdx.x, n = ns / k, r = pos[ns];
    float wt = w[ns];
    double dot = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float g = ldf(dy, n * C + c);
        dot += (double)g * Y[r * C + c];
        stf(dY, r * C + c, wt * g);
    }
    dot = warp_sum_d(dot);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = dot;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int j = 0; j < DW_THREADS / 32; j++) s += part[j];
        dw[ns] = s;
    }
}

extern "C" cudaError_t gpu_moe_combine_backward(void *dY, double *dw, const void *dy, gpu_dtype t,
                                                const float *Y, const float *w, const int32_t *pos,
                                                int N, int k, int C, cudaStream_t stream) {
    int64_t nk = (int64_t)N * k;
    if (nk <= 0) return cudaSuccess;
    if (nk > 0x7fffffff) return cudaErrorInvalidValue;
    if (t == GPU_BF16)
        combine_bwd_kernel<<<(unsigned)nk, DW_THREADS, 0, stream>>>(
            (bf16 *)dY, dw, (const bf16 *)dy, Y, w, pos, k, C);
    else
        combine_bwd_kernel<<<(unsigned)nk, DW_THREADS, 0, stream>>>(
            (float *)dY, dw, (const float *)dy, Y, w, pos, k, C);
    return cudaGetLastError();
}

/* d/dp_e before the softmax's backward: the load-balancing term, plus the
 * renormalization's (dw_s − Σ dw w) / Σ top for a chosen e (moe.c, in its
 * roundings). */
__device__ __forceinline__ float router_dp(int e, const int32_t *ix, const double *dw, int k,
                                           const double *aux_c, double dww, double top) {
    float d = aux_c ? (float)aux_c[e] : 0.0f;
    for (int j = 0; j < k; j++)
        if (ix[j] == e) d += (float)((dw[j] - dww) / top);
    return d;
}

template <typename T>
__global__ void router_bwd_kernel(T *dlogits, const float *prob, const float *w, const int32_t *idx,
                                  const double *dw, const double *aux_c, int N, int E, int k) {
    int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *p = prob + n * E, *wr = w + n * k;
    const int32_t *ix = idx + n * k;
    const double *dwr = dw + n * k;
    double top = 0, dww = 0;
    for (int j = 0; j < k; j++) {
        top += p[ix[j]];
        dww += dwr[j] * wr[j];
    }
    /* softmax: dlogit_e = p_e (dp_e − Σ_j p_j dp_j) */
    double dot = 0;
    for (int e = 0; e < E; e++) dot += (double)p[e] * router_dp(e, ix, dwr, k, aux_c, dww, top);
    for (int e = 0; e < E; e++)
        stf(dlogits, n * E + e, (float)(p[e] * (router_dp(e, ix, dwr, k, aux_c, dww, top) - dot)));
}

extern "C" cudaError_t gpu_moe_router_backward(void *dlogits, gpu_dtype t, const float *prob,
                                               const float *w, const int32_t *idx, const double *dw,
                                               const double *aux_c, int N, int E, int k,
                                               cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    unsigned b = (unsigned)((N + 127) / 128);
    if (t == GPU_BF16)
        router_bwd_kernel<<<b, 128, 0, stream>>>((bf16 *)dlogits, prob, w, idx, dw, aux_c, N, E, k);
    else
        router_bwd_kernel<<<b, 128, 0, stream>>>((float *)dlogits, prob, w, idx, dw, aux_c, N, E,
                                                 k);
    return cudaGetLastError();
}
