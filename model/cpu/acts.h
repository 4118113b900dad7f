/* acts — what a forward keeps for its backward (struct model_acts), shared by
 * the files of the training graph: acts.c (buffers), model_cpu.c (the model
 * and its blocks), block_attn.c and block_mlp.c (the two sublayers). Private
 * to model/cpu/.
 *
 * The residual stream is kept at 2L + 1 points: point 2l enters block l,
 * point 2l + 1 is after its attention sublayer, point 2L enters the final
 * norm. A block has up to four norms (model_layer's attn_in, attn_out,
 * mlp_in, mlp_out); norm slot 4l + k (ACTS_NORM_*) keeps the row statistics
 * of block l's norm k, slot 4L the final norm's, slot 4L + 1 the embedding
 * norm's (block.embed_norm). */
#ifndef FL_MODEL_CPU_ACTS_H
#define FL_MODEL_CPU_ACTS_H

#include "model/cpu/cpu.h"
#include "model/cpu/moe.h"

/* What the activations hold: nothing yet, a forward's, or a finished backward's. */
enum { ACTS_FRESH, ACTS_FORWARD, ACTS_BACKWARD };

/* A block's norms, in the order they compute. */
enum { ACTS_NORM_ATTN_IN, ACTS_NORM_ATTN_OUT, ACTS_NORM_MLP_IN, ACTS_NORM_MLP_OUT, ACTS_NORMS };

struct model_acts {
    const model *m;
    int B, T, N;
    int W;   /* width of a layer's q|k|v block: H·D + 2·KV·D */
    int QK;  /* QK-norm: (H + KV)·D pre-norm values of q|k per row, else 0 */
    int QKR; /* QK-norm: statistics per row (H + KV per head, 2 over projections), else 0 */
    int state, has_targets;
    int32_t *tokens, *targets; /* (N) copies of the last forward's inputs */
    double *lse, *row_loss;    /* (N) loss log-sum-exp and per-row loss */
    double *act_sums;          /* (2N) xIELU: per-row sums for its parameters' gradients */
    cpu_attn attn;
    void *attn_bf16;             /* cpu_attention_bf16_bytes for the bf16 path, or NULL */
    real *block;                 /* one allocation holding every buffer below */
    real *rope_cos, *rope_sin;   /* (T, R/2), RoPE positions (R: the rotated dims) */
    real *rope_lcos, *rope_lsin; /* (T, R/2) Gemma 3's local RoPE (sliding layers), or NULL */
    real *resid;                 /* (2L+1, N, C) the stream at each point */
    real *norm_mean;             /* (4L+1, N) LayerNorm means (NORM_LAYER only) */
    real *norm_rstd;             /* (4L+1, N) per norm slot */
    real *qkv;                   /* (L, N·W) per layer: q | k | v, after QK-norm and RoPE */
    real *qk_raw;                /* (L, N·QK) q | k before QK-norm (QK-norm only) */
    real *qk_rstd;               /* (L, N·QKR) QK-norm statistics */
    real *att_lse;               /* (L, B, H, T) */
    real *att;                   /* (L, N, H·D) attention output, o's input */
    real *sub_out;               /* (L, 2, N, C) the sublayers' outputs before their post-norm */
    real *fc_a;                  /* (L, N, F) gate_proj (GATED) or up_proj / c_fc (PLAIN) output */
    real *fc_b;                  /* (L, N, F) up_proj output, gated only */
    real *fc_fused;              /* (N, 2F) GATED_FUSED: gate_up's output or gradient, scratch */
    real *act;                   /* (N, F) down's input, scratch: recomputed in backward */
    real *xf;                    /* (N, C) final norm output */
    real *logits;                /* (N, V) */
    real *nbuf;                  /* (N, C) a norm's output, scratch */
    real *dresid, *dnorm;        /* (N, C) backward scratch */
    real *dsub;                  /* (N, C) d(sublayer output) through a post-norm */
    real *dqkv;                  /* (N·W) */
    real *dqk_raw;               /* (N·QK) */
    real *datt;                  /* (N, H·D) */
    real *dfa, *dfb;             /* (N, F) */
    real *resid_grads;           /* (2L+1, N, C) when kept, else NULL */
    real *alibi;                 /* (H) ALiBi slopes (POS_ALIBI) */
    real *emb;                   /* (N, C) the embedding before its norm (embed_norm) */
    cpu_moe *moe;                /* MLP_MOE: the routing and experts' buffers (moe.h) */
    int64_t n_targets;           /* the last forward's, for the router's auxiliary loss */
    double aux_grad;             /* backward: d(objective)/d(aux loss), 0 without it */
    int probe_point;             /* −1: none */
    int64_t probe_index;
    double probe_delta;
};

static inline real *acts_resid(const model_acts *a, int point) {
    return a->resid + (size_t)point * a->N * a->m->cfg.hidden_size;
}

static inline size_t acts_layer_off(const model_acts *a, int l, size_t per_row) {
    return (size_t)l * a->N * per_row;
}

/* Layer l's attention: the batch's shape with the layer's window. */
static inline cpu_attn acts_attn(const model_acts *a, int l) {
    cpu_attn at = a->attn;
    at.window = model_config_window(&a->m->cfg, l);
    return at;
}

/* Points at->bf16 at the bf16 attention's buffers, allocated at the first
 * bf16 forward (a model's precision may be set after its activations). */
int acts_attn_bf16(model_acts *a, cpu_attn *at);

/* The row statistics of norm slot s. */
static inline real *acts_norm_mean(const model_acts *a, int s) {
    return a->norm_mean ? a->norm_mean + (size_t)s * a->N : NULL;
}
static inline real *acts_norm_rstd(const model_acts *a, int s) {
    return a->norm_rstd + (size_t)s * a->N;
}

/* The attention sublayer of block l (block_attn.c): y (N, C) = o(attn(q, k,
 * v of h)), or y += that when accumulate; h (N, C) is its input (normalized
 * or not). Backward: dh (N, C) = d/dh of the sublayer given dy (or += when
 * accumulate_dh), and the parameters' gradients; h is needed only when
 * block_attn_needs_input says so (the caller may then pass anything). */
int block_attn_forward(model_acts *a, int l, const real *h, real *y, int accumulate);
int block_attn_backward(model_acts *a, int l, const real *h, const real *dy, real *dh,
                        int accumulate_dh);
int block_attn_needs_input(const model_layer *L);

/* The MLP sublayer of block l (block_mlp.c), the same contract. */
int block_mlp_forward(model_acts *a, int l, const real *h, real *y, int accumulate);
int block_mlp_backward(model_acts *a, int l, const real *h, const real *dy, real *dh,
                       int accumulate_dh);
int block_mlp_needs_input(const model_layer *L);

#endif
