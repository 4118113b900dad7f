/* gpu_kernels.cu — the CUDA backend's kernels other than attention: copies,
 * embedding, biases, norms, activations, RoPE, cross-entropy, LoRA dropout,
 * and the optimizer's. Each mirrors the CPU function named in
 * gpu_kernels.h (the formulas are cited in model/cpu/); sums of a row are
 * taken in double where the CPU's are, so fp32 mode agrees with the CPU to
 * rounding. Memory-bound all of them: one warp per row for norms, one block
 * per row for the cross-entropy, grid-stride loops elsewhere. */
#include "gpu/gpu_device.cuh"

#include "lora/lora_dropout.h"

#include <math.h>

#define IGNORE_INDEX (-100) /* MODEL_IGNORE_INDEX (model/model.h) */

/* ---- copies ------------------------------------------------------------------ */

template <typename D, typename S> __global__ void convert_kernel(D *dst, const S *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        stf(dst, i, ldf(src, i));
}

extern "C" cudaError_t gpu_convert(void *dst, gpu_dtype dt, const void *src, gpu_dtype st,
                                   int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned g = gpu_grid(n, 256);
    if (dt == GPU_F32 && st == GPU_F32)
        convert_kernel<<<g, 256, 0, stream>>>((float *)dst, (const float *)src, n);
    else if (dt == GPU_F32)
        convert_kernel<<<g, 256, 0, stream>>>((float *)dst, (const bf16 *)src, n);
    else if (st == GPU_F32)
        convert_kernel<<<g, 256, 0, stream>>>((bf16 *)dst, (const float *)src, n);
    else
        convert_kernel<<<g, 256, 0, stream>>>((bf16 *)dst, (const bf16 *)src, n);
    return cudaGetLastError();
}

__global__ void scale_kernel(float *x, int64_t n, float c) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __fmul_rn(x[i], c);
}

extern "C" cudaError_t gpu_scale_f32(float *x, int64_t n, float c, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    scale_kernel<<<gpu_grid(n, 256), 256, 0, stream>>>(x, n, c);
    return cudaGetLastError();
}

/* ---- embedding, bias ------------------------------------------------------------ */

template <typename W>
__global__ void embed_kernel(float *x, const int32_t *tokens, const W *wte, const W *wpe, int N,
                             int T, int C) {
    int64_t total = (int64_t)N * C;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = i / C, c = i % C;
        float v = ldf(wte, (int64_t)tokens[n] * C + c);
        if (wpe) v += ldf(wpe, (n % T) * C + c);
        x[i] = v;
    }
}

extern "C" cudaError_t gpu_embed_forward(float *x, const int32_t *tokens, const void *wte,
                                         const void *wpe, gpu_dtype wt, int N, int T, int C,
                                         cudaStream_t stream) {
    unsigned g = gpu_grid((int64_t)N * C, 256);
    if (wt == GPU_BF16)
        embed_kernel<<<g, 256, 0, stream>>>(x, tokens, (const bf16 *)wte, (const bf16 *)wpe, N, T,
                                            C);
    else
        embed_kernel<<<g, 256, 0, stream>>>(x, tokens, (const float *)wte, (const float *)wpe, N, T,
                                            C);
    return cudaGetLastError();
}

template <typename Y>
__global__ void bias_kernel(Y *y, const float *b, int N, int out, int accumulate) {
    int64_t total = (int64_t)N * out;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = b[i % out];
        stf(y, i, accumulate ? ldf(y, i) + v : v);
    }
}

extern "C" cudaError_t gpu_add_bias(void *y, gpu_dtype yt, const float *b, int N, int out,
                                    int accumulate, cudaStream_t stream) {
    unsigned g = gpu_grid((int64_t)N * out, 256);
    if (yt == GPU_BF16)
        bias_kernel<<<g, 256, 0, stream>>>((bf16 *)y, b, N, out, accumulate);
    else
        bias_kernel<<<g, 256, 0, stream>>>((float *)y, b, N, out, accumulate);
    return cudaGetLastError();
}

/* ---- norms: one warp per row, 8 rows per block ------------------------------------ */

#define NORM_ROWS 8

template <typename Y>
__global__ void rmsnorm_apply_kernel(Y *y, const float *x, const float *w, const float *rstd, int N,
                                     int C) {
    int n = blockIdx.x * NORM_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *xr = x + (int64_t)n * C;
    float r = rstd[n];
    /* (x · rstd) · w, HF's order of operations */
    for (int c = lane; c < C; c += 32) stf(y, (int64_t)n * C + c, __fmul_rn(xr[c] * r, w[c]));
}

__global__ void rmsnorm_stats_kernel(float *rstd, const float *x, int N, int C, double eps) {
    int n = blockIdx.x * NORM_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *xr = x + (int64_t)n * C;
    double ss = 0;
    for (int c = lane; c < C; c += 32) ss += (double)xr[c] * xr[c];
    ss = warp_sum_d(ss);
    if (lane == 0) rstd[n] = (float)(1.0 / sqrt(ss / C + eps));
}

extern "C" cudaError_t gpu_rmsnorm_apply(void *y, gpu_dtype yt, const float *x, const float *w,
                                         const float *rstd, int N, int C, cudaStream_t stream) {
    unsigned g = (unsigned)((N + NORM_ROWS - 1) / NORM_ROWS);
    if (N <= 0) return cudaSuccess;
    if (yt == GPU_BF16)
        rmsnorm_apply_kernel<<<g, 32 * NORM_ROWS, 0, stream>>>((bf16 *)y, x, w, rstd, N, C);
    else
        rmsnorm_apply_kernel<<<g, 32 * NORM_ROWS, 0, stream>>>((float *)y, x, w, rstd, N, C);
    return cudaGetLastError();
}

extern "C" cudaError_t gpu_rmsnorm_forward(void *y, gpu_dtype yt, float *rstd, const float *x,
                                           const float *w, int N, int C, double eps,
                                           cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    unsigned g = (unsigned)((N + NORM_ROWS - 1) / NORM_ROWS);
    rmsnorm_stats_kernel<<<g, 32 * NORM_ROWS, 0, stream>>>(rstd, x, N, C, eps);
    cudaError_t e = cudaGetLastError();
    return e != cudaSuccess ? e : gpu_rmsnorm_apply(y, yt, x, w, rstd, N, C, stream);
}

/* dx += rstd · (g − x̂ · mean(g·x̂)), g = dy·w, x̂ = x·rstd (norm.c). */
__global__ void rmsnorm_backward_kernel(float *dx, const float *dy, const float *x, const float *w,
                                        const float *rstd, int N, int C) {
    int n = blockIdx.x * NORM_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *xr = x + (int64_t)n * C, *dyr = dy + (int64_t)n * C;
    float *dxr = dx + (int64_t)n * C, r = rstd[n];
    double dot = 0;
    for (int c = lane; c < C; c += 32) dot += (double)(dyr[c] * w[c]) * (xr[c] * r);
    dot = warp_sum_d(dot);
    float m = (float)(dot / C);
    for (int c = lane; c < C; c += 32) dxr[c] += r * (dyr[c] * w[c] - xr[c] * r * m);
}

extern "C" cudaError_t gpu_rmsnorm_backward(float *dx, const float *dy, const float *x,
                                            const float *w, const float *rstd, int N, int C,
                                            cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    unsigned g = (unsigned)((N + NORM_ROWS - 1) / NORM_ROWS);
    rmsnorm_backward_kernel<<<g, 32 * NORM_ROWS, 0, stream>>>(dx, dy, x, w, rstd, N, C);
    return cudaGetLastError();
}

__global__ void layernorm_stats_kernel(float *mean, float *rstd, const float *x, int N, int C,
                                       double eps) {
    int n = blockIdx.x * NORM_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *xr = x + (int64_t)n * C;
    double s = 0, ss = 0;
    for (int c = lane; c < C; c += 32) s += xr[c];
    double mu = warp_sum_d(s) / C;
    for (int c = lane; c < C; c += 32) ss += (xr[c] - mu) * (xr[c] - mu);
    ss = warp_sum_d(ss);
    if (lane == 0) {
        mean[n] = (float)mu;
        rstd[n] = (float)(1.0 / sqrt(ss / C + eps));
    }
}

template <typename Y>
__global__ void layernorm_apply_kernel(Y *y, const float *x, const float *w, const float *b,
                                       const float *mean, const float *rstd, int N, int C) {
    int n = blockIdx.x * NORM_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *xr = x + (int64_t)n * C;
    float mu = mean[n], r = rstd[n];
    for (int c = lane; c < C; c += 32)
        stf(y, (int64_t)n * C + c, __fadd_rn(__fmul_rn(__fsub_rn(xr[c], mu) * r, w[c]), b[c]));
}

extern "C" cudaError_t gpu_layernorm_apply(void *y, gpu_dtype yt, const float *x, const float *w,
                                           const float *b, const float *mean, const float *rstd,
                                           int N, int C, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    unsigned g = (unsigned)((N + NORM_ROWS - 1) / NORM_ROWS);
    if (yt == GPU_BF16)
        layernorm_apply_kernel<<<g, 32 * NORM_ROWS, 0, stream>>>((bf16 *)y, x, w, b, mean, rstd, N,
                                                                 C);
    else
        layernorm_apply_kernel<<<g, 32 * NORM_ROWS, 0, stream>>>((float *)y, x, w, b, mean, rstd, N,
                                                                 C);
    return cudaGetLastError();
}

extern "C" cudaError_t gpu_layernorm_forward(void *y, gpu_dtype yt, float *mean, float *rstd,
                                             const float *x, const float *w, const float *b, int N,
                                             int C, double eps, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    unsigned g = (unsigned)((N + NORM_ROWS - 1) / NORM_ROWS);
    layernorm_stats_kernel<<<g, 32 * NORM_ROWS, 0, stream>>>(mean, rstd, x, N, C, eps);
    cudaError_t e = cudaGetLastError();
    return e != cudaSuccess ? e : gpu_layernorm_apply(y, yt, x, w, b, mean, rstd, N, C, stream);
}

/* dx += rstd · (g − mean(g) − x̂ · mean(g·x̂)) (norm.c). */
__global__ void layernorm_backward_kernel(float *dx, const float *dy, const float *x,
                                          const float *w, const float *mean, const float *rstd,
                                          int N, int C) {
    int n = blockIdx.x * NORM_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *xr = x + (int64_t)n * C, *dyr = dy + (int64_t)n * C;
    float *dxr = dx + (int64_t)n * C, mu = mean[n], r = rstd[n];
    double sg = 0, sgx = 0;
    for (int c = lane; c < C; c += 32) {
        double g = (double)dyr[c] * w[c];
        sg += g;
        sgx += g * __fsub_rn(xr[c], mu) * r;
    }
    sg = warp_sum_d(sg);
    sgx = warp_sum_d(sgx);
    float mg = (float)(sg / C), mgx = (float)(sgx / C);
    for (int c = lane; c < C; c += 32)
        dxr[c] += r * (dyr[c] * w[c] - mg - __fsub_rn(xr[c], mu) * r * mgx);
}

extern "C" cudaError_t gpu_layernorm_backward(float *dx, const float *dy, const float *x,
                                              const float *w, const float *mean, const float *rstd,
                                              int N, int C, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    unsigned g = (unsigned)((N + NORM_ROWS - 1) / NORM_ROWS);
    layernorm_backward_kernel<<<g, 32 * NORM_ROWS, 0, stream>>>(dx, dy, x, w, mean, rstd, N, C);
    return cudaGetLastError();
}

/* ---- activations ------------------------------------------------------------------ */

/* SwiGLU (ops.c): act = g · sigmoid(g) · u. */
template <typename T> __global__ void swiglu_fwd_kernel(T *act, const T *g, const T *u, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float gv = ldf(g, i), s = 1.0f / (1.0f + expf(-gv));
        stf(act, i, gv * s * ldf(u, i));
    }
}

/* d silu(g)/dg = s (1 + g (1 − s)). */
template <typename T>
__global__ void swiglu_bwd_kernel(T *dg, T *du, const T *dact, const T *g, const T *u, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float gv = ldf(g, i), uv = ldf(u, i), d = ldf(dact, i);
        float s = 1.0f / (1.0f + expf(-gv));
        stf(du, i, d * gv * s);
        stf(dg, i, d * uv * s * (1.0f + gv * (1.0f - s)));
    }
}

extern "C" cudaError_t gpu_swiglu_forward(void *act, const void *g, const void *u, gpu_dtype t,
                                          int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        swiglu_fwd_kernel<<<b, 256, 0, stream>>>((bf16 *)act, (const bf16 *)g, (const bf16 *)u, n);
    else
        swiglu_fwd_kernel<<<b, 256, 0, stream>>>((float *)act, (const float *)g, (const float *)u,
                                                 n);
    return cudaGetLastError();
}

extern "C" cudaError_t gpu_swiglu_backward(void *dg, void *du, const void *dact, const void *g,
                                           const void *u, gpu_dtype t, int64_t n,
                                           cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        swiglu_bwd_kernel<<<b, 256, 0, stream>>>((bf16 *)dg, (bf16 *)du, (const bf16 *)dact,
                                                 (const bf16 *)g, (const bf16 *)u, n);
    else
        swiglu_bwd_kernel<<<b, 256, 0, stream>>>((float *)dg, (float *)du, (const float *)dact,
                                                 (const float *)g, (const float *)u, n);
    return cudaGetLastError();
}

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f

/* GPT-2's gelu_new (ops.c). */
template <typename T> __global__ void gelu_fwd_kernel(T *y, const T *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = ldf(x, i);
        stf(y, i, 0.5f * v * (1.0f + tanhf(GELU_K * (v + GELU_C * v * v * v))));
    }
}

template <typename T> __global__ void gelu_bwd_kernel(T *dx, const T *dy, const T *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = ldf(x, i);
        float t = tanhf(GELU_K * (v + GELU_C * v * v * v));
        float d =
            0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_C * v * v);
        stf(dx, i, ldf(dy, i) * d);
    }
}

extern "C" cudaError_t gpu_gelu_forward(void *y, const void *x, gpu_dtype t, int64_t n,
                                        cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        gelu_fwd_kernel<<<b, 256, 0, stream>>>((bf16 *)y, (const bf16 *)x, n);
    else
        gelu_fwd_kernel<<<b, 256, 0, stream>>>((float *)y, (const float *)x, n);
    return cudaGetLastError();
}

extern "C" cudaError_t gpu_gelu_backward(void *dx, const void *dy, const void *x, gpu_dtype t,
                                         int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        gelu_bwd_kernel<<<b, 256, 0, stream>>>((bf16 *)dx, (const bf16 *)dy, (const bf16 *)x, n);
    else
        gelu_bwd_kernel<<<b, 256, 0, stream>>>((float *)dx, (const float *)dy, (const float *)x, n);
    return cudaGetLastError();
}

/* ---- rotary embedding (rope.c): pairs (i, i + R/2) of each head's first R dims ---------- */

template <typename T>
__global__ void rope_kernel(T *x, int ld, int N, int T_, int nheads, int D, int R,
                            const float *cos_t, const float *sin_t, float sign) {
    int half = R / 2;
    int64_t total = (int64_t)N * nheads * half;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        int64_t nh = idx / half;
        int h = (int)(nh % nheads);
        int64_t n = nh / nheads;
        int64_t t = n % T_;
        int64_t o0 = n * ld + (int64_t)h * D + i, o1 = o0 + half;
        float a = ldf(x, o0), b = ldf(x, o1);
        float c = cos_t[t * half + i], s = sign * sin_t[t * half + i];
        stf(x, o0, __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
        stf(x, o1, __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
    }
}

extern "C" cudaError_t gpu_rope(void *x, gpu_dtype t, int ld, int N, int T, int nheads, int D,
                                int R, const float *cos_t, const float *sin_t, int inverse,
                                cudaStream_t stream) {
    int64_t total = (int64_t)N * nheads * (R / 2);
    if (total <= 0) return cudaSuccess;
    unsigned b = gpu_grid(total, 256);
    float sign = inverse ? -1.0f : 1.0f;
    if (t == GPU_BF16)
        rope_kernel<<<b, 256, 0, stream>>>((bf16 *)x, ld, N, T, nheads, D, R, cos_t, sin_t, sign);
    else
        rope_kernel<<<b, 256, 0, stream>>>((float *)x, ld, N, T, nheads, D, R, cos_t, sin_t, sign);
    return cudaGetLastError();
}

/* ---- cross-entropy: one block per row ------------------------------------------------- */

#define XENT_THREADS 512

/* Online (max, Σ exp) pairs, merged as in the online softmax (Milakov &
 * Gimelshein 2018). */
__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) {
        m = m2;
        s = s2;
        return;
    }
    float mx = fmaxf(m, m2);
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}

template <typename D>
__global__ void xent_kernel(const float *logits, const int32_t *targets, int V, float *lse_out,
                            float *row_loss, D *dlogits, float scale) {
    __shared__ float sm[XENT_THREADS / 32], ss[XENT_THREADS / 32];
    __shared__ float row_lse;
    int n = blockIdx.x, tid = threadIdx.x, lane = tid % 32, wid = tid / 32;
    const float *l = logits + (int64_t)n * V;
    float m = -INFINITY, s = 0;
    for (int i = tid; i < V; i += XENT_THREADS) {
        float v = l[i];
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    if (lane == 0) sm[wid] = m, ss[wid] = s;
    __syncthreads();
    if (tid == 0) {
        float M = sm[0], S = ss[0];
        for (int w = 1; w < XENT_THREADS / 32; w++) lse_merge(M, S, sm[w], ss[w]);
        float lse = M + logf(S);
        int32_t t = targets[n];
        row_lse = lse;
        lse_out[n] = lse;
        row_loss[n] = t == IGNORE_INDEX ? 0.0f : lse - l[t];
    }
    __syncthreads();
    if (!dlogits) return;
    int32_t t = targets[n];
    float lse = row_lse;
    D *d = dlogits + (int64_t)n * V;
    for (int i = tid; i < V; i += XENT_THREADS) {
        float g = 0;
        if (t != IGNORE_INDEX) {
            g = scale * expf(l[i] - lse);
            if (i == t) g -= scale;
        }
        stf(d, i, g);
    }
}

extern "C" cudaError_t gpu_xent(const float *logits, const int32_t *targets, int N, int V,
                                float *lse, float *row_loss, void *dlogits, gpu_dtype dt,
                                float scale, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    if (dt == GPU_BF16)
        xent_kernel<<<N, XENT_THREADS, 0, stream>>>(logits, targets, V, lse, row_loss,
                                                    (bf16 *)dlogits, scale);
    else
        xent_kernel<<<N, XENT_THREADS, 0, stream>>>(logits, targets, V, lse, row_loss,
                                                    (float *)dlogits, scale);
    return cudaGetLastError();
}

/* ---- LoRA dropout (lora/lora_dropout.h's mask) ---------------------------------------- */

template <typename O, typename X>
__global__ void dropout_kernel(O *out, const X *x, int n, int in, int64_t row0, uint64_t key,
                               double p, float keep_scale, int accumulate) {
    int64_t total = (int64_t)n * in;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t e = row0 * in + i;
        int keep = lora_dropout_keep(key, e, p);
        float v = keep ? __fmul_rn(ldf(x, i), keep_scale) : 0.0f;
        if (accumulate) {
            if (keep) stf(out, i, ldf(out, i) + v);
        } else {
            stf(out, i, v);
        }
    }
}

extern "C" cudaError_t gpu_dropout(void *out, gpu_dtype ot, const void *x, gpu_dtype xt, int n,
                                   int in, int64_t row0, uint64_t key, double p, float keep_scale,
                                   int accumulate, cudaStream_t stream) {
    int64_t total = (int64_t)n * in;
    if (total <= 0) return cudaSuccess;
    unsigned b = gpu_grid(total, 256);
    if (ot == GPU_F32 && xt == GPU_F32)
        dropout_kernel<<<b, 256, 0, stream>>>((float *)out, (const float *)x, n, in, row0, key, p,
                                              keep_scale, accumulate);
    else if (ot == GPU_F32)
        dropout_kernel<<<b, 256, 0, stream>>>((float *)out, (const bf16 *)x, n, in, row0, key, p,
                                              keep_scale, accumulate);
    else if (xt == GPU_F32)
        dropout_kernel<<<b, 256, 0, stream>>>((bf16 *)out, (const float *)x, n, in, row0, key, p,
                                              keep_scale, accumulate);
    else
        dropout_kernel<<<b, 256, 0, stream>>>((bf16 *)out, (const bf16 *)x, n, in, row0, key, p,
                                              keep_scale, accumulate);
    return cudaGetLastError();
}

/* ---- optimizer -------------------------------------------------------------------------- */

#define SUMSQ_THREADS 256

/* Fixed grid and a fixed reduction tree: the same inputs give the same bits. */
__global__ void sumsq_kernel(const float *x, int64_t n, double *partials) {
    __shared__ double sh[SUMSQ_THREADS / 32];
    double s = 0;
    for (int64_t i = blockIdx.x * (int64_t)SUMSQ_THREADS + threadIdx.x; i < n;
         i += (int64_t)GPU_SUMSQ_BLOCKS * SUMSQ_THREADS)
        s += (double)x[i] * x[i];
    s = warp_sum_d(s);
    if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0;
        for (int w = 0; w < SUMSQ_THREADS / 32; w++) t += sh[w];
        partials[blockIdx.x] = t;
    }
}

extern "C" cudaError_t gpu_sumsq(const float *x, int64_t n, double *partials, cudaStream_t stream) {
    sumsq_kernel<<<GPU_SUMSQ_BLOCKS, SUMSQ_THREADS, 0, stream>>>(x, n, partials);
    return cudaGetLastError();
}

/* adamw.c's loop with explicit IEEE roundings (no contraction into FMAs),
 * so that the same gradients give the CPU's values bit for bit. */
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, int64_t n,
                             gpu_adamw_scalars s) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n;
         j += (int64_t)gridDim.x * blockDim.x) {
        float x = __fmul_rn(p[j], s.decay), gj = g[j], mj = m[j], vj = v[j];
        mj = s.lerp_low ? __fadd_rn(mj, __fmul_rn(s.w1, __fsub_rn(gj, mj)))
                        : __fsub_rn(gj, __fmul_rn(__fsub_rn(gj, mj), s.b1));
        vj = __fmul_rn(vj, s.b2);
        vj = __fadd_rn(vj, __fmul_rn(__fmul_rn(s.w2, gj), gj));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vj), s.bc2s), s.eps);
        p[j] = __fadd_rn(x, __fdiv_rn(__fmul_rn(s.neg_step, mj), denom));
        m[j] = mj;
        v[j] = vj;
    }
}

extern "C" cudaError_t gpu_adamw_update(float *p, const float *g, float *m, float *v, int64_t n,
                                        const gpu_adamw_scalars *s, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    adamw_kernel<<<gpu_grid(n, 256), 256, 0, stream>>>(p, g, m, v, n, *s);
    return cudaGetLastError();
}
