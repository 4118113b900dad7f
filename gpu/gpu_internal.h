/* gpu_internal — the gpu_model's insides, shared by gpu_model.c, gpu_train.c
 * and gpu_dist.c. Not part of the API (gpu.h). */
#ifndef FL_GPU_GPU_INTERNAL_H
#define FL_GPU_GPU_INTERNAL_H

#include "gpu/gpu.h"
#include "gpu/gpu_gemm.h"
#include "gpu/gpu_kernels.h"

#include <cuda_runtime_api.h>

/* Turns a CUDA status into an err.h message naming the call and the place. */
int gpu_cuda_fail(cudaError_t e, const char *call, const char *file, int line);

/* Returns -1 from the calling function when a CUDA call fails. */
#define CU(call)                                                                                   \
    do {                                                                                           \
        cudaError_t cu_e_ = (call);                                                                \
        if (cu_e_ != cudaSuccess) return gpu_cuda_fail(cu_e_, #call, __FILE__, __LINE__);          \
    } while (0)

/* Returns -1 when a call returning an err.h status fails. */
#define OK(call)                                                                                   \
    do {                                                                                           \
        if ((call) != 0) return -1;                                                                \
    } while (0)

typedef struct {
    void *w;  /* (out, in), the weight type */
    float *b; /* (out) or NULL */
    int in, out;
    int lora; /* index of its LoRA module, or −1 */
} gpu_linear;

/* The linears of a block in lora.c's order. */
#define GPU_BLOCK_LINEARS 8

/* A norm's weight and bias, fp32 (b: LayerNorm only); w NULL: no such norm. */
typedef struct {
    float *w, *b;
} gpu_norm;

/* model_layer's pieces (model/model.h), uploaded. */
typedef struct {
    gpu_norm attn_in, attn_out, mlp_in, mlp_out; /* (C) */
    gpu_norm q_norm, k_norm;                     /* (D), or (H·D) and (KV·D) */
    gpu_linear q, k, v, qkv, o, gate, up, down;
    gpu_xielu xielu; /* ACT_XIELU */
    /* MLP_MOE (model_moe): the router (E, C) and experts[3e + 0, 1, 2],
     * expert e's w1, w2, w3 (host array, freed by gpu_model_free) */
    gpu_linear router;
    int n_experts;
    gpu_linear *experts;
} gpu_layer;

/* Norm slots per layer (model/cpu/acts.h's ACTS_NORM_*): the statistics of
 * layer l's norm k are slot GPU_NORMS · l + k, the final norm's GPU_NORMS · L,
 * the embedding norm's (block.embed_norm) GPU_NORMS · L + 1. */
#define GPU_NORMS 4

typedef struct {
    char path[LORA_PATH_MAX];
    int in, out, rank;
    float scale;
    int64_t off_a, off_b; /* A (rank, in) and B (out, rank) in the flat arrays */
    void *u;              /* (N, rank): x̃ Aᵀ of the last forward, activation type */
    int dropped;          /* the last forward applied dropout … */
    uint64_t key;         /* … with this mask key */
} gpu_lora;

struct gpu_model {
    model_config cfg;
    gpu_options opt;
    int B, T, N;
    int W;        /* a layer's q|k|v block width: H·D + 2·KV·D */
    gpu_dtype dt; /* weights and activations (GEMM operands): fp32 or bf16 */
    int device;
    cudaStream_t stream;
    gpu_blas *blas;
    void **allocs; /* every cudaMalloc, freed together */
    int n_allocs, cap_allocs;
    size_t bytes;

    /* frozen base */
    void *wte, *wpe, *lm_head; /* (V, C), (max_position, C) GPT-2 only, (V, C) maybe == wte */
    gpu_norm norm_f;
    gpu_norm embed_norm; /* block.embed_norm: BLOOM's word_embeddings_layernorm */
    gpu_layer *layers;
    float *rope_cos, *rope_sin;           /* (T, R/2): the global RoPE (LongRoPE: short) */
    float *rope_long_cos, *rope_long_sin; /* (T, R/2) LongRoPE's long factors, or NULL */
    float *rope_lcos, *rope_lsin;         /* (T, R/2) Gemma 3's local RoPE, or NULL */
    int rope_long; /* this pass rotates with the long factors (by its length) */
    float *alibi;  /* (H) ALiBi slopes (POS_ALIBI), cpu_alibi_slopes', or NULL */

    /* adapter: flat fp32 arrays in lora_tensor order (A0, B0, A1, B1, …) */
    int n_lora;
    gpu_lora *lora;
    int64_t lora_numel;
    int max_rank, max_in;
    float *lp, *lg, *lm, *lv; /* values, gradients, exp_avg, exp_avg_sq */
    void *lcast;              /* values in the GEMM type (bf16 copy, or lp itself) */
    double dropout;
    uint64_t lora_seed;
    int training;
    uint64_t counter; /* training forwards so far (lora_dropout_counter) */
    void *lora_x;     /* (N, max_in) dropout scratch */
    void *lora_du;    /* (N, max_rank) */

    /* activations (see gpu_model.c) */
    int32_t *d_tokens, *d_targets;
    float *resid;      /* (2L+1, N, C) */
    float *emb;        /* (N, C) the embedding before its norm (embed_norm), or NULL */
    float *norm_mean;  /* (GPU_NORMS·L+1+embed_norm, N), LayerNorm only */
    float *norm_rstd;  /* (GPU_NORMS·L+1+embed_norm, N) */
    void *qkv;         /* (L, N·W) */
    int QK, QKR;       /* QK-norm: q|k values and statistics per row (model/cpu/acts.h) */
    float *qk_raw;     /* (L, N·QK) q|k before QK-norm, fp32 */
    float *qk_rstd;    /* (L, N·QKR) */
    float *dqk32;      /* (N·QK) d(q|k) after RoPE's backward in fp32 (bf16 mode) */
    float *dqk_raw;    /* (N·QK) d(q|k before QK-norm) */
    void *dqk_t;       /* (N·QK) the same in the GEMM type (bf16 mode; else == dqk_raw) */
    float *sub_out;    /* (L, 2, N, C) sublayer outputs before a post-norm */
    float *dsub;       /* (N, C) d(sublayer output) through a post-norm */
    float *att_lse;    /* (L, B, H, T) */
    float *att_delta;  /* (B, H, T) backward scratch */
    void *att;         /* (L, N, H·D) */
    void *fc_a, *fc_b; /* (L, N, F); fc_b gated MLPs only */
    void *fc_fused;    /* (N, 2F) GATED_FUSED: gate_up's output, then its gradient */
    void *act;         /* (N, F) down's input */
    void *nbuf;        /* (N, C) a norm's output */
    void *xf;          /* (N, C) the final norm's output */
    int head_rows;
    float *logits;             /* (head_rows, V) */
    void *dlogits;             /* (head_rows, V), bf16 mode; == logits in fp32 mode */
    float *row_loss, *row_lse; /* (N) */
    float *dresid, *dnorm;     /* (N, C) */
    void *dy;                  /* (N, C) dresid in the GEMM type (bf16 mode; else == dresid) */
    void *datt;                /* (N, H·D) */
    void *dqkv;                /* (N·W) */
    void *dfa, *dfb;           /* (N, F) */
    float *h_row_loss;         /* host (N) */
    int kv_len; /* gpu_decode: positions whose keys and values qkv holds (0 after a pass) */

    /* mixture of experts (gpu_moe.c) */
    struct gpu_moe *moe;
    double aux_grad; /* d(backward's objective)/d(load-balancing loss), 0: not in it */

    /* optimizer */
    int adam_ready;
    adamw_config ocfg;
    int64_t step;
    double last_lr, last_norm;
    double *d_partials; /* (GPU_SUMSQ_BLOCKS) */
    double *h_partials;

    /* data parallelism */
    void *nccl; /* ncclComm_t */
    int rank, world;
};

/* ---- gpu_model.c, for gpu_block.c ---- */

/* y (N, out) of type yt = x Wᵀ + b, or += when accumulate; then the adapter. */
int gpu_linear_forward(gpu_model *g, const gpu_linear *l, const void *x, void *y, gpu_dtype yt,
                       int accumulate);
/* dx (N, in) of type dxt = dy W (+= when accumulate), plus the adapter's term
 * and gradients. The base weight is frozen: no dW, no db. */
int gpu_linear_backward(gpu_model *g, const gpu_linear *l, const void *x, const void *dy, void *dx,
                        gpu_dtype dxt, int accumulate);

/* The same over the first N rows of x and y (N may be 0: nothing to do),
 * for the experts' blocks of rows (gpu_moe.c). */
int gpu_linear_forward_rows(gpu_model *g, const gpu_linear *l, const void *x, void *y, gpu_dtype yt,
                            int accumulate, int N);
int gpu_linear_backward_rows(gpu_model *g, const gpu_linear *l, const void *x, const void *dy,
                             void *dx, gpu_dtype dxt, int accumulate, int N);

/* ---- gpu_moe.c: the mixture of experts' sublayer (model/cpu/moe.c) ---- */

/* Its buffers for g->N rows and every layer (gpu_alloc'd); host parts freed
 * by gpu_moe_free. */
int gpu_moe_create(gpu_model *g);
void gpu_moe_free(struct gpu_moe *mo);
/* y (N, C) fp32 = the experts' weighted sum for h (N, C) of type g->dt (+=
 * when accumulate); keeps layer l's routing and activations. Waits for the
 * stream once (the experts' row counts decide the GEMMs' shapes). */
int gpu_moe_forward(gpu_model *g, int l, const void *h, void *y, gpu_dtype yt, int accumulate);
/* dh (N, C) fp32 = d/dh given dy (N, C) of type g->dt (+= when
 * accumulate_dh), the adapters' gradients; the load-balancing loss's
 * gradient weighted by g->aux_grad. h is read when gpu_moe_needs_input. */
int gpu_moe_backward(gpu_model *g, int l, const void *h, const void *dy, float *dh,
                     int accumulate_dh);
int gpu_moe_needs_input(const gpu_layer *L);
/* transformers' load_balancing_loss_func over the layers of the last
 * forward (cpu_moe_aux_loss), from host copies: no device work. */
double gpu_moe_aux_loss(const gpu_model *g);

/* ---- gpu_block.c: the blocks (model/cpu/model_cpu.c's graph) ---- */

/* Element index of a buffer of the GEMM type. */
static inline void *gpu_elem(const gpu_model *g, void *base, size_t index) {
    return (char *)base + index * gpu_dtype_size(g->dt);
}
static inline float *gpu_resid(const gpu_model *g, int point) {
    return g->resid + (size_t)point * g->N * g->cfg.hidden_size;
}
/* Every block over g->N rows (point 0 already embedded) → point 2L. */
int gpu_blocks_forward(gpu_model *g);
/* dresid holds d/d(point 2L) and becomes d/d(point 0). */
int gpu_blocks_backward(gpu_model *g);
/* The final norm: xf = norm_f(point 2L); backward dresid += from dnorm. */
int gpu_final_norm_forward(gpu_model *g);
int gpu_final_norm_backward(gpu_model *g);
/* block.embed_norm: point 0 = embed_norm(emb) over g->N rows. No backward:
 * the embedding and this norm are frozen and nothing below point 0 takes a
 * gradient (gpu_model.c). */
int gpu_embed_norm_forward(gpu_model *g);
/* gpu_decode's blocks: the n = g->N new rows at positions pos … (B = 1),
 * their keys and values written into the cache rows of qkv (gpu_model.c's
 * "generation" section). */
int gpu_blocks_decode(gpu_model *g, int pos);

/* Makes g's device current. */
int gpu_use(gpu_model *g);
/* cudaMalloc recorded in g (freed by gpu_model_free), bytes > 0. */
int gpu_alloc(gpu_model *g, void **p, size_t bytes);

/* gpu_dist.c: in-place sums over every rank on g's stream; no-ops when not
 * distributed. */
int gpu_dist_sum_f32(gpu_model *g, float *d, int64_t n);
int gpu_dist_sum_host(gpu_model *g, double *v, int n); /* n <= GPU_SUMSQ_BLOCKS */
void gpu_dist_free(gpu_model *g);

#endif
