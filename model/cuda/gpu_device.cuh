/* gpu_device.cuh — device helpers shared by the .cu files: loads and stores
 * that convert between the storage type and fp32, and warp reductions. */
#ifndef FL_MODEL_CUDA_GPU_DEVICE_CUH
#define FL_MODEL_CUDA_GPU_DEVICE_CUH

#include "model/cuda/gpu_kernels.h"

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

#endif
