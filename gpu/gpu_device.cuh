/* gpu_device.cuh — device helpers shared by the .cu files: loads and stores
 * that convert between the storage type and fp32, and warp reductions. */
#ifndef FL_GPU_GPU_DEVICE_CUH
#define FL_GPU_GPU_DEVICE_CUH

#include "gpu/gpu_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ldf(const float *p, int64_t i) {
    return p[i];
}
__device__ __forceinline__ float ldf(const bf16 *p, int64_t i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void stf(float *p, int64_t i, float v) {
    p[i] = v;
}
/* Round to nearest even, as gpu_f32_to_bf16. */
__device__ __forceinline__ void stf(bf16 *p, int64_t i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Blocks for a grid-stride loop over n items with `threads` per block. */
static inline unsigned gpu_grid(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 8192) b = 8192;
    return (unsigned)b;
}

/* ---- attention's masks, soft-capping and ALiBi (gpu_attention*.cu) ---- */

/* The first key row i sees under a sliding window of `window` (0: none). */
__device__ __forceinline__ int first_key(int i, int window) {
    return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

__device__ __forceinline__ bool visible(int i, int j, int T, int window) {
    return i < T && j <= i && (window == 0 || j > i - window);
}

/* Soft-capping of a scaled score (Gemma 2; model/cpu/softcap.c): cap ·
 * tanh(x / cap), or x when cap is 0. */
__device__ __forceinline__ float cap_score(float x, float cap) {
    return cap > 0 ? tanhf(x / cap) * cap : x;
}

/* d cap_score / dx at the capped value y: 1 − (y / cap)², or 1. */
__device__ __forceinline__ float cap_grad(float y, float cap) {
    float t = cap > 0 ? y / cap : 0.0f;
    return 1.0f - t * t;
}

/* ALiBi (BLOOM; model/cpu/alibi.c): head h's slope, 0 without ALiBi. */
__device__ __forceinline__ float alibi_slope(const gpu_attn_shape &s, int h) {
    return s.alibi ? s.alibi[h] : 0.0f;
}

/* ALiBi's bias of a score against key position j: slope · j rounded to
 * fp32 (transformers' fp32 alibi tensor); 0 for a slope of 0. */
__device__ __forceinline__ float alibi_bias(float slope, int j) {
    return __fmul_rn(slope, (float)j);
}

/* A scaled score plus its bias, as the CPU's row[j] += bias: the _rn
 * intrinsics keep nvcc from fusing the product and the sum into one
 * multiply-add, which would round differently. A bias of 0 leaves the score
 * as it is. */
__device__ __forceinline__ float alibi_add(float x, float bias) {
    return __fadd_rn(x, bias);
}

/* Launches kernel with `smem` bytes of dynamic shared memory, raising the
 * kernel's limit first where it needs more than the default 48 KiB. */
template <typename K, typename... Args>
static inline cudaError_t gpu_launch(K kernel, dim3 grid, int threads, size_t smem,
                                     cudaStream_t stream, Args... args) {
    if (smem > 48 * 1024) {
        cudaError_t e =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    kernel<<<grid, threads, smem, stream>>>(args...);
    return cudaGetLastError();
}

#endif
