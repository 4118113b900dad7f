/* model — the transformer's parameters, by their Hugging Face names, and the
 * CPU forward/backward over them.
 *
 * Every tensor is a model_param named as in the Hugging Face state dict, so a
 * checkpoint is loaded and saved by walking one table. In memory, every
 * linear weight is (out, in) row-major, PyTorch nn.Linear's layout; GPT-2's
 * Conv1D weights are (in, out) on disk and are transposed at load and save
 * (param->conv1d says so), which keeps one GEMM convention in the kernels.
 *
 * Shapes in comments: B batch, T sequence, C hidden, H query heads,
 * KV key/value heads, D head dim, F MLP width, V vocabulary, L layers. */
#ifndef FL_MODEL_MODEL_H
#define FL_MODEL_MODEL_H

#include "model/config.h"
#include "model/real.h"

#include <stdint.h>

#define MODEL_NAME_MAX 128
#define MODEL_IGNORE_INDEX (-100) /* targets equal to this carry no loss (HF convention) */

typedef struct {
    char name[MODEL_NAME_MAX]; /* Hugging Face state-dict name */
    int ndim;                  /* 1 or 2 */
    int64_t shape[2];          /* in-memory shape; linear weights are (out, in) */
    int64_t numel;
    int conv1d; /* stored transposed, (in, out), on disk (GPT-2 Conv1D) */
    real *data;
    real *grad; /* NULL: no gradient is computed for this tensor */
} model_param;

/* An adapter adds a learned term to a linear layer's output, y += f(x): LoRA's
 * s·B(A x). model/ calls it without knowing what it is; lora/ provides it.
 * The adapter keeps whatever its backward needs, per call site, in ctx. */
typedef struct model_adapter_ops {
    /* x (N, in), y (N, out): y += f(x). */
    void (*forward)(void *ctx, const real *x, real *y, int N);
    /* dy (N, out): dx (N, in) += df/dx · dy, and the adapter's own gradients. */
    void (*backward)(void *ctx, const real *x, const real *dy, real *dx, int N);
} model_adapter_ops;

typedef struct {
    model_param *w; /* (out, in) */
    model_param *b; /* (out) or NULL */
    int in, out;
    const model_adapter_ops *adapter; /* NULL: plain linear */
    void *adapter_ctx;
} model_linear;

typedef struct {
    model_param *norm1_w, *norm1_b; /* input_layernorm / ln_1 (b: LayerNorm only) */
    model_linear q, k, v;           /* Llama family: q (H·D, C), k and v (KV·D, C) */
    model_linear qkv;               /* GPT-2 c_attn: (3C, C) */
    model_linear o;                 /* o_proj (C, H·D) / attn.c_proj (C, C) */
    model_param *norm2_w, *norm2_b; /* post_attention_layernorm / ln_2 */
    model_linear gate;              /* Llama family: gate_proj (F, C) */
    model_linear up;                /* up_proj (F, C) / GPT-2 c_fc (F, C) */
    model_linear down;              /* down_proj (C, F) / mlp.c_proj (C, F) */
} model_layer;

typedef struct model {
    model_config cfg;
    int n_params;
    model_param *params;
    model_param *wte; /* (V, C) token embedding */
    model_param *wpe; /* (max_position, C), GPT-2 only */
    model_param *norm_f_w, *norm_f_b;
    model_param *lm_head; /* (V, C); the same param as wte when tied */
    model_layer *layers;  /* L of them */
    real *storage;        /* one block holding every param's data */
} model;

/* Builds the parameter table for cfg, all values zero. */
int model_create(model **out, const model_config *cfg);
void model_free(model *m);
/* The param with that Hugging Face name, or NULL. */
model_param *model_find_param(const model *m, const char *name);
/* Hugging Face's _init_weights: normal(0, initializer_range) for linear and
 * embedding weights (GPT-2's c_proj scaled by 1/sqrt(2L)), zeros for biases,
 * ones for norm weights. Deterministic for a seed. */
void model_init_random(model *m, uint64_t seed);
/* Asks for the gradient of p (allocates a zeroed grad buffer). */
int model_param_want_grad(model_param *p);
/* Asks for every parameter's gradient. */
int model_want_all_grads(model *m);
void model_zero_grads(model *m);

/* ---- forward / backward (model/cpu/) ----------------------------------------- */

typedef struct model_acts model_acts; /* activations saved for backward, sized (B, T) */

/* Allocates every buffer forward and backward use, once, for batches of B
 * sequences of T tokens (GPT-2: T <= n_positions) of model m; attention
 * scratch is sized for the OpenMP thread count of the moment (later calls use
 * at most that many threads there). */
int model_acts_create(model_acts **out, const model *m, int B, int T);
void model_acts_free(model_acts *a);

/* tokens (B, T) ids in [0, V). targets (B, T) already shifted (targets[b,t]
 * is the token after position t) with MODEL_IGNORE_INDEX where no loss is
 * wanted; NULL computes logits only. On return *loss_sum is the sum of the
 * cross-entropies over the *n_targets counted positions (mean = ratio, as
 * PyTorch's reduction="mean"). Ids out of range are an error, not a crash. */
int model_forward(const model *m, model_acts *a, const int32_t *tokens, const int32_t *targets,
                  double *loss_sum, int64_t *n_targets);
/* (B, T, V) logits of the last forward; model_backward overwrites them with
 * their gradient (the buffer is reused, as in llm.c, since it is the largest). */
const real *model_acts_logits(const model_acts *a);

/* Backward of scale · loss_sum from the last forward (scale = 1/n_targets
 * gives the gradient of the mean loss). Accumulates (+=) into every param's
 * grad that is non-NULL; computes no weight gradient for the others. Needs a
 * forward with targets, and one backward per forward. */
int model_backward(model *m, model_acts *a, double scale);

/* ---- residual-stream access, for gradient checks --------------------------------
 * The residual stream is observed at 2L + 1 points, each (B, T, C): point 2l
 * enters layer l, point 2l + 1 is layer l's stream after its attention block,
 * point 2L enters the final norm. */
#define MODEL_RESID_POINTS(cfg) (2 * (cfg)->num_layers + 1)

/* Makes later backwards keep d(scale · loss_sum)/d(stream) at every point. */
int model_acts_keep_resid_grads(model_acts *a);
/* The kept gradient at a point from the last backward, or NULL. */
const real *model_acts_resid_grad(const model_acts *a, int point);
/* Makes every later forward add delta to element index (of B·T·C) of the
 * stream at that point, right after it is computed; point −1 stops it.
 * A finite-difference probe of model_acts_resid_grad. */
int model_acts_set_probe(model_acts *a, int point, int64_t index, double delta);

/* ---- incremental decoding (model/cpu/decode.c) -----------------------------------
 * Generation appends tokens one step at a time. model_decode runs only the new
 * tokens through the layers; attention reads every earlier position's keys and
 * values from a cache: per layer, keys (after RoPE) and values of (max_T,
 * KV·D), for one sequence (batch 1). Its logits are model_forward's logits at
 * the same positions, up to rounding. Adapters attached to the model's linears
 * apply as in model_forward (turn a LoRA set's dropout off first:
 * lora_set_training(s, 0)). */

typedef struct model_kv_cache model_kv_cache;

/* A cache for up to max_T positions of model m (GPT-2: max_T <= n_positions),
 * empty. Memory: 2·L·max_T·KV·D values, plus scratch for 64 rows at a time
 * and the attention's (64, max_T) probabilities per OpenMP thread of the
 * moment (later calls use at most that many threads there). */
int model_kv_cache_create(model_kv_cache **out, const model *m, int max_T);
void model_kv_cache_free(model_kv_cache *c);
/* Empties the cache (a new sequence starts at position 0). */
void model_kv_cache_reset(model_kv_cache *c);
/* Positions held, and the most it can hold. */
int model_kv_cache_len(const model_kv_cache *c);
int model_kv_cache_capacity(const model_kv_cache *c);

/* Appends tokens (n >= 1) at positions len … len + n − 1 of the cache (a
 * prompt's prefill when n > 1, one generation step when n == 1) and writes
 * the logits (V) of the last of them to logits_out. Refused, with the cache
 * unchanged, when the n tokens do not fit in max_T or an id is outside the
 * vocabulary. */
int model_decode(const model *m, model_kv_cache *c, const int32_t *tokens, int n, real *logits_out);

#endif
