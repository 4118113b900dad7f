/* gpu_block_kernels.cu — the kernels of the block options beyond Llama's and
 * GPT-2's (model/config.h, model_block): xIELU (model/cpu/act.c has the
 * formula), and the residual add behind a post-norm. QK-norm and the
 * post-norms themselves are gpu_rmsnorm_* over other rows (gpu_block.c). */
#include "model/cuda/gpu_device.cuh"

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
