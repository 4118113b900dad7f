/* gpu_attention_mma — the attention's tensor-core kernels (bf16 mma.sync,
 * FlashAttention-2's structure) for head dims 32, 64 and 128, which
 * gpu_attention.cu's launchers choose when the shapes and alignment allow
 * (docs/gpu.md); their fp32 CUDA-core kernels are the reference the GPU
 * tests hold these to. */
#ifndef FL_GPU_GPU_ATTENTION_MMA_CUH
#define FL_GPU_GPU_ATTENTION_MMA_CUH

#include "gpu/gpu_kernels.h"

/* As gpu_attention_forward, bf16 only, s->D in {32, 64, 128}. */
cudaError_t gpu_attention_forward_mma(const gpu_attn_shape *s, const void *q, int ldq,
                                      const void *k, int ldk, const void *v, int ldv, void *out,
                                      float *lse, cudaStream_t stream);
/* As gpu_attention_backward after δ, bf16 only, s->D in {32, 64, 128}. */
cudaError_t gpu_attention_backward_mma(const gpu_attn_shape *s, const void *q, int ldq,
                                       const void *k, int ldk, const void *v, int ldv,
                                       const void *dout, const float *lse, const float *delta,
                                       void *dq, void *dk, void *dv, cudaStream_t stream);

#endif
