/* gpu_block_kernels.cu — the kernels of the block options beyond Llama's and
 * GPT-2's (model/config.h, model_block): xIELU (model/cpu/act.c has the
 * formula), the residual add behind a post-norm, BLOOM's head-interleaved
 * query_key_value layout (alibi.c), GeGLU (Gemma; ops.c) and soft-capping
 * (Gemma 2's logits; softcap.c). QK-norm and the post-norms
 * themselves are gpu_rmsnorm_* over other rows (gpu_block.c); Gemma's
 * (1 + w) norms are those kernels over weights uploaded as 1 + w. */
#include "gpu/gpu_device.cuh"

/* y = x + (…): the residual add after a post-norm, fp32. */
__global__ void add_f32_kernel(float *y, const float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = y[i] + x[i];
}

extern "C" cudaError_t gpu_add_f32(float *y, const float *x, int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    add_f32_kernel<<<gpu_grid(n, 256), 256, 0, stream>>>(y, x, n);
    return cudaGetLastError();
}

/* BLOOM's query_key_value layout (cpu_qkv_heads): element (n, h, j, d) of
 * the (N, H, 3, D) view is element (n, j, h, d) of the fused (N, 3, H, D)
 * one. One thread per element of dst, a plain copy of the storage type. */
template <typename T>
__global__ void qkv_heads_kernel(T *dst, const T *src, int64_t n, int H, int D, int to_heads) {
    const int64_t W = (int64_t)3 * H * D;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = i / W;
        const int64_t w = i % W, d = w % D;
        int64_t h, j;
        if (to_heads) { /* dst (H, 3, D) */
            h = w / ((int64_t)3 * D);
            j = (w / D) % 3;
        } else { /* dst (3, H, D) */
            j = w / ((int64_t)H * D);
            h = (w / D) % H;
        }
        const int64_t from = to_heads ? (j * H + h) * D + d : (h * 3 + j) * D + d;
        dst[i] = src[row * W + from];
    }
}

extern "C" cudaError_t gpu_qkv_heads(void *dst, const void *src, gpu_dtype t, int N, int H, int D,
                                     int to_heads, cudaStream_t stream) {
    if (N < 0 || H < 1 || D < 1) return cudaErrorInvalidValue;
    const int64_t n = (int64_t)N * 3 * H * D;
    if (n == 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    /* a copy: bf16 values move as their 16 bits */
    if (t == GPU_BF16)
        qkv_heads_kernel<<<b, 256, 0, stream>>>((uint16_t *)dst, (const uint16_t *)src, n, H, D,
                                                to_heads);
    else
        qkv_heads_kernel<<<b, 256, 0, stream>>>((float *)dst, (const float *)src, n, H, D,
                                                to_heads);
    return cudaGetLastError();
}

/* xIELU with the layer's values (softplus already applied, as act.c's
 * xielu_scalars): ap·x² + beta·x for x > 0, (expm1(min(x, eps)) − x)·an +
 * beta·x otherwise. */
template <typename T> __global__ void xielu_fwd_kernel(T *y, const T *x, int64_t n, gpu_xielu k) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = ldf(x, i);
        float m = fminf(v, k.eps);
        stf(y, i, v > 0 ? k.ap * v * v + k.beta * v : (expm1f(m) - v) * k.an + k.beta * v);
    }
}

/* dx = dy · xielu'(x): 2·ap·x + beta (x > 0), (e − 1)·an + beta otherwise with
 * e = exp(x) below eps, ½ exp(eps) at eps (torch.minimum's tie), 0 above. */
template <typename T>
__global__ void xielu_bwd_kernel(T *dx, const T *dy, const T *x, int64_t n, gpu_xielu k) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = ldf(x, i), g = ldf(dy, i), d;
        if (v > 0) {
            d = 2 * k.ap * v + k.beta;
        } else {
            float e = v < k.eps ? expf(v) : v == k.eps ? 0.5f * expf(v) : 0.0f;
            d = (e - 1) * k.an + k.beta;
        }
        stf(dx, i, g * d);
    }
}

extern "C" cudaError_t gpu_xielu_forward(void *y, const void *x, gpu_dtype t, int64_t n,
                                         const gpu_xielu *k, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        xielu_fwd_kernel<<<b, 256, 0, stream>>>((bf16 *)y, (const bf16 *)x, n, *k);
    else
        xielu_fwd_kernel<<<b, 256, 0, stream>>>((float *)y, (const float *)x, n, *k);
    return cudaGetLastError();
}

extern "C" cudaError_t gpu_xielu_backward(void *dx, const void *dy, const void *x, gpu_dtype t,
                                          int64_t n, const gpu_xielu *k, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        xielu_bwd_kernel<<<b, 256, 0, stream>>>((bf16 *)dx, (const bf16 *)dy, (const bf16 *)x, n,
                                                *k);
    else
        xielu_bwd_kernel<<<b, 256, 0, stream>>>((float *)dx, (const float *)dy, (const float *)x, n,
                                                *k);
    return cudaGetLastError();
}

/* GeGLU: act = gelu_tanh(g) · u (cpu_geglu_forward), the GELU rounded to fp32
 * before the product. */
#define GEGLU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GEGLU_C 0.044715f

template <typename T> __global__ void geglu_fwd_kernel(T *act, const T *g, const T *u, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = ldf(g, i);
        float a = 0.5f * v * (1.0f + tanhf(GEGLU_K * (v + GEGLU_C * v * v * v)));
        stf(act, i, a * ldf(u, i));
    }
}

/* du = dact · gelu(g), dg = dact · u · gelu'(g) (cpu_geglu_backward). */
template <typename T>
__global__ void geglu_bwd_kernel(T *dg, T *du, const T *dact, const T *g, const T *u, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = ldf(g, i), d = ldf(dact, i), uu = ldf(u, i);
        float t = tanhf(GEGLU_K * (v + GEGLU_C * v * v * v));
        float a = 0.5f * v * (1.0f + t);
        float da = 0.5f * (1.0f + t) +
                   0.5f * v * (1.0f - t * t) * GEGLU_K * (1.0f + 3.0f * GEGLU_C * v * v);
        stf(du, i, d * a);
        stf(dg, i, d * uu * da);
    }
}

extern "C" cudaError_t gpu_geglu_forward(void *act, const void *g, const void *u, gpu_dtype t,
                                         int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        geglu_fwd_kernel<<<b, 256, 0, stream>>>((bf16 *)act, (const bf16 *)g, (const bf16 *)u, n);
    else
        geglu_fwd_kernel<<<b, 256, 0, stream>>>((float *)act, (const float *)g, (const float *)u,
                                                n);
    return cudaGetLastError();
}

extern "C" cudaError_t gpu_geglu_backward(void *dg, void *du, const void *dact, const void *g,
                                          const void *u, gpu_dtype t, int64_t n,
                                          cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        geglu_bwd_kernel<<<b, 256, 0, stream>>>((bf16 *)dg, (bf16 *)du, (const bf16 *)dact,
                                                (const bf16 *)g, (const bf16 *)u, n);
    else
        geglu_bwd_kernel<<<b, 256, 0, stream>>>((float *)dg, (float *)du, (const float *)dact,
                                                (const float *)g, (const float *)u, n);
    return cudaGetLastError();
}

/* x = cap · tanh(x / cap): the logits' soft-capping (cpu_softcap_forward). */
__global__ void softcap_kernel(float *x, int64_t n, float cap) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] = tanhf(x[i] / cap) * cap;
}

/* dx *= 1 − (y / cap)², y the capped values: d cap·tanh(z / cap) / dz. */
template <typename T>
__global__ void softcap_bwd_kernel(T *dx, const float *y, int64_t n, float cap) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float t = y[i] / cap;
        stf(dx, i, ldf(dx, i) * (1.0f - t * t));
    }
}

extern "C" cudaError_t gpu_softcap(float *x, int64_t n, float cap, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    softcap_kernel<<<gpu_grid(n, 256), 256, 0, stream>>>(x, n, cap);
    return cudaGetLastError();
}

extern "C" cudaError_t gpu_softcap_backward(void *dx, gpu_dtype t, const float *y, int64_t n,
                                            float cap, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    unsigned b = gpu_grid(n, 256);
    if (t == GPU_BF16)
        softcap_bwd_kernel<<<b, 256, 0, stream>>>((bf16 *)dx, y, n, cap);
    else
        softcap_bwd_kernel<<<b, 256, 0, stream>>>((float *)dx, y, n, cap);
    return cudaGetLastError();
}
