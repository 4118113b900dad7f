/* gpu_kernels — the CUDA backend's kernels, behind launchers callable from C.
 *
 * Every launcher queues its work on the given stream and returns the launch
 * status (cudaSuccess, or the error of the launch itself; errors inside a
 * kernel show up at the next synchronizing call). Each mirrors one function
 * of model/cpu/cpu.h, whose comments give the formulas; the tests in
 * tests/gpu/ compare every one of them with its CPU counterpart.
 *
 * Storage types: activations and frozen weights are fp32 or bf16
 * (gpu_dtype); arithmetic is always fp32 in registers, with fp32 or wider
 * sums. Statistics (norm mean/rstd, log-sum-exps), norm weights, biases and
 * the residual stream are fp32 in both modes. Layouts are row-major, one
 * token per row (N = B·T rows), as on the CPU. */
#ifndef FL_GPU_GPU_KERNELS_H
#define FL_GPU_GPU_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { GPU_F32 = 0, GPU_BF16 = 1 } gpu_dtype;

static inline size_t gpu_dtype_size(gpu_dtype t) {
    return t == GPU_BF16 ? 2 : 4;
}

/* fp32 → bf16 bits, round to nearest even (NaN stays a quiet NaN), the
 * rounding of __float2bfloat16 and of torch's .to(torch.bfloat16). */
static inline uint16_t gpu_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float gpu_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* f rounded to the nearest bf16 value, as a float. */
static inline float gpu_bf16_round(float f) {
    return gpu_bf16_to_f32(gpu_f32_to_bf16(f));
}

/* ---- copies ------------------------------------------------------------------ */

/* dst[i] = src[i] converted (either type to either type), n values. */
cudaError_t gpu_convert(void *dst, gpu_dtype dt, const void *src, gpu_dtype st, int64_t n,
                        cudaStream_t stream);
/* x[i] *= c, fp32. */
cudaError_t gpu_scale_f32(float *x, int64_t n, float c, cudaStream_t stream);

/* ---- embedding, bias ------------------------------------------------------------ */

/* x (N, C) fp32 = wte[tokens] (+ wpe[row % T] when wpe). Ids must be valid. */
cudaError_t gpu_embed_forward(float *x, const int32_t *tokens, const void *wte, const void *wpe,
                              gpu_dtype wt, int N, int T, int C, cudaStream_t stream);
/* y (N, out) of type yt: y = b (broadcast over rows), or y += b when accumulate. */
cudaError_t gpu_add_bias(void *y, gpu_dtype yt, const float *b, int N, int out, int accumulate,
                         cudaStream_t stream);

/* ---- norms: x, dx, dy fp32 (N, C); y of type yt; dx += ------------------------- */

cudaError_t gpu_rmsnorm_forward(void *y, gpu_dtype yt, float *rstd, const float *x, const float *w,
                                int N, int C, double eps, cudaStream_t stream);
cudaError_t gpu_rmsnorm_apply(void *y, gpu_dtype yt, const float *x, const float *w,
                              const float *rstd, int N, int C, cudaStream_t stream);
cudaError_t gpu_rmsnorm_backward(float *dx, const float *dy, const float *x, const float *w,
                                 const float *rstd, int N, int C, cudaStream_t stream);
cudaError_t gpu_layernorm_forward(void *y, gpu_dtype yt, float *mean, float *rstd, const float *x,
                                  const float *w, const float *b, int N, int C, double eps,
                                  cudaStream_t stream);
cudaError_t gpu_layernorm_apply(void *y, gpu_dtype yt, const float *x, const float *w,
                                const float *b, const float *mean, const float *rstd, int N, int C,
                                cudaStream_t stream);
cudaError_t gpu_layernorm_backward(float *dx, const float *dy, const float *x, const float *w,
                                   const float *mean, const float *rstd, int N, int C,
                                   cudaStream_t stream);

/* ---- activations, n values of type t --------------------------------------------- */

cudaError_t gpu_swiglu_forward(void *act, const void *g, const void *u, gpu_dtype t, int64_t n,
                               cudaStream_t stream);
/* dg may be dact. */
cudaError_t gpu_swiglu_backward(void *dg, void *du, const void *dact, const void *g, const void *u,
                                gpu_dtype t, int64_t n, cudaStream_t stream);
cudaError_t gpu_gelu_forward(void *y, const void *x, gpu_dtype t, int64_t n, cudaStream_t stream);
/* dx may be dy. */
cudaError_t gpu_gelu_backward(void *dx, const void *dy, const void *x, gpu_dtype t, int64_t n,
                              cudaStream_t stream);

/* ---- the block options' kernels (gpu_block_kernels.cu) --------------------------- */

/* xIELU's values of one layer with softplus applied (model/cpu/act.c):
 * ap = softplus(alpha_p), an = beta + softplus(alpha_n). */
typedef struct {
    float ap, an, beta, eps;
} gpu_xielu;

/* y = xielu(x), n values of type t (y may be x). */
cudaError_t gpu_xielu_forward(void *y, const void *x, gpu_dtype t, int64_t n, const gpu_xielu *k,
                              cudaStream_t stream);
/* dx = dy · xielu'(x) (dx may be dy). No gradient for the frozen values. */
cudaError_t gpu_xielu_backward(void *dx, const void *dy, const void *x, gpu_dtype t, int64_t n,
                               const gpu_xielu *k, cudaStream_t stream);
/* y += x, n fp32 values (a post-norm's residual add). */
cudaError_t gpu_add_f32(float *y, const float *x, int64_t n, cudaStream_t stream);
/* BLOOM's query_key_value rows (N, 3·H·D) viewed (H, 3, D), moved to the
 * fused layout q | k | v of (3, H, D) that the attention reads, or back
 * (to_heads): cpu_qkv_heads, n rows of type t; dst and src do not overlap. */
cudaError_t gpu_qkv_heads(void *dst, const void *src, gpu_dtype t, int N, int H, int D,
                          int to_heads, cudaStream_t stream);
/* GeGLU (Gemma): act = gelu_tanh(g) · u, n values of type t; backward as
 * gpu_swiglu_backward's (dg may be dact). cpu_geglu_forward/backward. */
cudaError_t gpu_geglu_forward(void *act, const void *g, const void *u, gpu_dtype t, int64_t n,
                              cudaStream_t stream);
cudaError_t gpu_geglu_backward(void *dg, void *du, const void *dact, const void *g, const void *u,
                               gpu_dtype t, int64_t n, cudaStream_t stream);
/* Soft-capping (softcap.c): x = cap · tanh(x / cap) in place, n fp32 values;
 * its backward dx (type t) *= 1 − (y / cap)², y the capped values. */
cudaError_t gpu_softcap(float *x, int64_t n, float cap, cudaStream_t stream);
cudaError_t gpu_softcap_backward(void *dx, gpu_dtype t, const float *y, int64_t n, float cap,
                                 cudaStream_t stream);

/* ---- rotary embedding: in place on x of type t, cpu_rope_apply's contract
 * (the first R of each head's D dimensions); cos_t, sin_t (T, R/2) fp32 from
 * cpu_rope_table. ---- */
cudaError_t gpu_rope(void *x, gpu_dtype t, int ld, int N, int T, int nheads, int D, int R,
                     const float *cos_t, const float *sin_t, int inverse, cudaStream_t stream);

/* ---- cross-entropy over a chunk of rows ------------------------------------------
 * logits (N, V) fp32. Per row: lse[n] = log Σ exp(logits), row_loss[n] =
 * lse − logits[target] (0 for MODEL_IGNORE_INDEX). When dlogits is not NULL it
 * receives scale · (softmax − onehot) (0 on ignored rows), of type dt; it may
 * be logits itself when dt is GPU_F32. Targets must be valid. */
cudaError_t gpu_xent(const float *logits, const int32_t *targets, int N, int V, float *lse,
                     float *row_loss, void *dlogits, gpu_dtype dt, float scale,
                     cudaStream_t stream);

/* ---- causal attention with grouped-query heads (flash-style, gpu_attention.cu) ----
 * cpu_attention_forward/backward's contract and layouts: q (N, ·) of row
 * stride ldq with head h at column h·D, k and v likewise with kv heads;
 * query head h reads kv head h / (H / KV); out (N, H·D) contiguous; lse
 * (B, H, T). No (T, T) matrix is stored: forward keeps each row's
 * log-sum-exp and backward recomputes the probabilities from it. D <=
 * GPU_ATTN_MAX_D (256).
 *
 * Two implementations: fp32 arithmetic on CUDA cores (any D up to 256, either storage
 * type: the reference) and bf16 tensor cores (mma.sync, fp32 accumulation;
 * bf16 storage, D of 32, 64 or 128, 16-byte aligned q/k/v/out with row
 * strides a multiple of 8). GPU_ATTN_AUTO takes the tensor cores where they
 * apply. */
typedef enum { GPU_ATTN_AUTO = 0, GPU_ATTN_SIMT = 1, GPU_ATTN_MMA = 2 } gpu_attn_impl;

typedef struct {
    int B, T, H, KV, D;
    int window; /* 0: full causal; else key j is visible to query i iff i − window < j ≤ i */
    float scale;
    float softcap;      /* scores s become softcap · tanh(s / softcap) before the mask; 0: none */
    gpu_attn_impl impl; /* GPU_ATTN_MMA where it does not apply: cudaErrorInvalidValue */
    /* ALiBi (BLOOM): (H) slopes in device memory (cpu_alibi_slopes' values);
     * the scaled score of query head h against key position j gets
     * slope_h · j (rounded to fp32) added before soft-capping and the
     * softmax, as cpu_attention_forward. NULL: none. */
    const float *alibi;
} gpu_attn_shape;

#define GPU_ATTN_MAX_D 256 /* tensor cores: 32, 64, 128; CUDA cores: up to 256 (Gemma) */

/* The dynamic shared memory the CUDA-core kernels need per block at head
 * dim D, bytes (over 48 KB they opt in: a device must allow that much). */
size_t gpu_attention_smem(int D);

cudaError_t gpu_attention_forward(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                                  int ldk, const void *v, int ldv, void *out, float *lse,
                                  gpu_dtype t, cudaStream_t stream);
/* delta: scratch of B·H·T floats. dq, dk, dv are overwritten, with the
 * layouts (and strides) of q, k, v. */
cudaError_t gpu_attention_backward(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                                   int ldk, const void *v, int ldv, const void *out,
                                   const void *dout, const float *lse, float *delta, void *dq,
                                   void *dk, void *dv, gpu_dtype t, cudaStream_t stream);

/* Generation's attention (gpu_decode): n new query rows at absolute positions
 * pos … pos + n − 1 against the keys and values of positions 0 … pos + n − 1
 * held in a cache. q: the n new rows (stride ldq); k, v: the cache from
 * position 0 (strides ldk, ldv), the new rows already written at pos …;
 * out (n, H·D) contiguous. s->B must be 1; s->T is unused; causal mask and
 * window as gpu_attention_forward's, fp32 arithmetic on CUDA cores, no lse. */
cudaError_t gpu_attention_decode(const gpu_attn_shape *s, int n, int pos, const void *q, int ldq,
                                 const void *k, int ldk, const void *v, int ldv, void *out,
                                 gpu_dtype t, cudaStream_t stream);

/* ---- LoRA dropout: lora_dropout.h's mask, bit for bit ---------------------------------------
 * Element (row0 + i, j) is kept iff unit(mix64(key + e · 0x9E3779B97F4A7C15))
 * >= p, e = (row0 + i) · in + j. out (n, in) of type ot = x (type xt) · mask ·
 * keep_scale, or out += that when accumulate. */
cudaError_t gpu_dropout(void *out, gpu_dtype ot, const void *x, gpu_dtype xt, int n, int in,
                        int64_t row0, uint64_t key, double p, float keep_scale, int accumulate,
                        cudaStream_t stream);

/* ---- optimizer ------------------------------------------------------------------------ */

#define GPU_SUMSQ_BLOCKS 256
/* partials[GPU_SUMSQ_BLOCKS] = per-block Σ x² in double, in a fixed order
 * (deterministic); the caller adds them up in order. */
cudaError_t gpu_sumsq(const float *x, int64_t n, double *partials, cudaStream_t stream);

/* AdamW's per-element update, adamw_step's loop with its scalars. */
typedef struct {
    float decay, w1, b1, b2, w2, bc2s, eps, neg_step;
    int lerp_low;
} gpu_adamw_scalars;

cudaError_t gpu_adamw_update(float *p, const float *g, float *m, float *v, int64_t n,
                             const gpu_adamw_scalars *s, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
