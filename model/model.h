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

struct safetensors_dir;

#define MODEL_NAME_MAX 128
#define MODEL_IGNORE_INDEX (-100) /* targets equal to this carry no loss (HF convention) */

/* The element type a parameter's values are held in. A frozen base is kept
 * in its checkpoint's dtype (a bf16 checkpoint stays bf16 in memory: 2 bytes
 * per weight instead of 4); what is trained, and every vector, is `real`. */
typedef enum {
    MODEL_DTYPE_F32 = 0,
    MODEL_DTYPE_F64 = 1, /* only in the fp64 twin, where real is double */
    MODEL_DTYPE_BF16 = 2,
    MODEL_DTYPE_F16 = 3,
} model_dtype;

#ifdef FL_REAL_F64
#define MODEL_DTYPE_REAL MODEL_DTYPE_F64
#else
#define MODEL_DTYPE_REAL MODEL_DTYPE_F32
#endif

/* How the frozen weights' GEMMs are computed (docs/cpu-backend.md,
 * "Precision"): FP32 multiplies in fp32 whatever the weights are stored in
 * (bf16/fp16 weights are widened tile by tile, exactly as if the whole model
 * had been widened); BF16 multiplies bf16 weights by bf16-rounded
 * activations with fp32 accumulation (oneDNN), as PyTorch's CPU autocast
 * does. Everything else (norms, attention, softmax, the loss, LoRA) is fp32
 * in both. */
typedef enum { MODEL_PRECISION_FP32 = 0, MODEL_PRECISION_BF16 = 1 } model_precision;

typedef struct {
    char name[MODEL_NAME_MAX]; /* Hugging Face state-dict name */
    int ndim;                  /* 0 (a scalar), 1 or 2 */
    int64_t shape[2];          /* in-memory shape; linear weights are (out, in) */
    int64_t numel;
    int conv1d; /* stored transposed, (in, out), on disk (GPT-2 Conv1D) */
    /* A buffer in transformers' sense (register_buffer): saved with the
     * weights and used by the forward, but not a parameter, so it never gets
     * a gradient (model_want_all_grads skips it). xIELU's beta and eps. */
    int buffer;
    /* The numel values in `dtype`, in-memory layout: mapped from the
     * checkpoint file, or a buffer the model owns. Always set. */
    model_dtype dtype;
    const void *values;
    /* The same values as writable `real`s, or NULL when the param is held
     * only in another dtype (a frozen weight of a mapped checkpoint). When
     * set, values == data. */
    real *data;
    real *grad;  /* NULL: no gradient is computed for this tensor */
    void *owned; /* a buffer of values this param owns (freed with the model), or NULL */
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

/* A norm's weight and bias (b: LayerNorm only); w == NULL where the block
 * has no norm (cfg.block says which it has). */
typedef struct {
    model_param *w, *b;
} model_norm;

/* xIELU's per-layer values (mlp.act_fn.*): alpha_p, alpha_n trained (1),
 * beta, eps buffers (scalars). */
typedef struct {
    model_param *alpha_p, *alpha_n, *beta, *eps;
} model_xielu;

/* MLP_MOE's sublayer (Mixtral's block_sparse_moe): the router gate (E, C)
 * and E experts, each a gated MLP w2(silu(w1 x) · w3 x) with w1, w3 (F, C)
 * and w2 (C, F); experts[3e + 0, 1, 2] are expert e's w1, w2, w3. */
typedef struct {
    model_linear router;
    int n_experts;
    model_linear *experts;
} model_moe;

/* One block, in the order it computes (model/config.h's model_block says
 * which pieces a family has). */
/* Linears that share an input. A block's q, k and v, and its gate and up,
 * read the same input. Every CPU path (model/cpu: training, evaluation,
 * decoding) runs each such set one after another, forward (q, k, v; gate,
 * up) on the same x and N, and backward in the same order on the same x, N
 * and dx, with no other linear in between; an adapter may rely on that to
 * share work between them (LoRA's A products, lora/lora_hook.c). */
typedef struct {
    model_norm attn_in;   /* pre_norm: input_layernorm / ln_1 / attention_layernorm */
    model_linear q, k, v; /* QKV_SEPARATE: q (H·D, C), k and v (KV·D, C) */
    model_linear qkv;     /* QKV_FUSED: GPT-2 c_attn (3C, C), Phi-3 qkv_proj ((H + 2KV)·D, C);
                             QKV_HEADS, BLOOM's query_key_value: (3C, C) with rows (H, 3, D) */
    model_norm q_norm;    /* QK-norm: (D) per head, or (H·D) over the projection */
    model_norm k_norm;    /*          (D), or (KV·D) */
    model_linear o;       /* o_proj (C, H·D) / attn.c_proj (C, C) */
    model_norm attn_out;  /* post_norm: OLMo 2 post_attention_layernorm */
    model_norm mlp_in;    /* pre_norm: post_attention_layernorm / ln_2 / feedforward_layernorm */
    model_linear gate;    /* MLP_GATED: gate_proj (F, C) */
    model_linear up;      /* up_proj (F, C) / GPT-2 c_fc (F, C) / Phi-3 gate_up_proj (2F, C) */
    model_linear down;    /* down_proj (C, F) / mlp.c_proj (C, F) */
    model_xielu xielu;    /* ACT_XIELU */
    model_moe moe;        /* MLP_MOE (then gate, up, down are absent) */
    model_norm mlp_out;   /* post_norm: OLMo 2 post_feedforward_layernorm */
} model_layer;

/* The linears of a block in module order, the ones lora/ and the CUDA
 * backend walk: q, k, v, qkv, o, gate, up, down (w == NULL where the family
 * has none), then for MLP_MOE the router and each expert's w1, w2, w3. */
int model_layer_n_linears(const model_layer *L);
model_linear *model_layer_linear(model_layer *L, int j);

typedef struct model {
    model_config cfg;
    int n_params;
    model_param *params;
    model_param *wte;      /* (V, C) token embedding */
    model_param *wpe;      /* (max_position, C), GPT-2 only */
    model_norm embed_norm; /* block.embed_norm: BLOOM's word_embeddings_layernorm */
    model_norm norm_f;     /* model.norm / transformer.ln_f */
    model_param *lm_head;  /* (V, C); the same param as wte when tied */
    model_layer *layers;   /* L of them */
    real *storage;         /* one block holding every `real` param's data, or NULL */
    model_precision precision;
    struct safetensors_dir *mapped; /* the checkpoint the values point into, or NULL */
} model;

/* Builds the parameter table for cfg, every value a zero `real`. */
int model_create(model **out, const model_config *cfg);
/* The same table with no values yet (values NULL): the loader of a frozen
 * base (checkpoint_map) gives each param its values. */
int model_create_unfilled(model **out, const model_config *cfg);
void model_free(model *m);

/* Bytes per value of a dtype, and its name as safetensors spells it. */
size_t model_dtype_size(model_dtype t);
const char *model_dtype_name(model_dtype t);
/* out[0 .. n) = values [off, off + n) of p widened to real (exact for every
 * dtype but F64 → fp32). The one place that reads another dtype's bits. */
void model_param_read(const model_param *p, int64_t off, int64_t n, real *out);
/* dst[0 .. n) = src rounded to bf16 stochastically: each value goes to one
 * of its two bf16 neighbours with probabilities that make the expected
 * result the value itself (unbiased), the draw for element first + i a
 * public function of (key, first + i), the same on every machine. Used for
 * versions of a bf16 base, where nearest rounding would drop every update
 * below half an ulp (docs/formats.md, "Versions of a bf16 base"). NaN stays NaN. */
void model_values_to_bf16_stochastic(const real *src, int64_t n, uint64_t key, int64_t first,
                                     uint16_t *dst);
/* acc[0 .. n) += values [off, off + n) of p. */
void model_param_add(const model_param *p, int64_t off, int64_t n, real *acc);
/* dst[0 .. n) = src's n values of dtype t, widened to real (exact). */
void model_values_widen(model_dtype t, const void *src, int64_t n, real *dst);
/* dst[0 .. n) = src rounded to bf16 (nearest, ties to even; NaN stays NaN). */
void model_values_to_bf16(const real *src, int64_t n, uint16_t *dst);
/* dst (cols, rows) = src (rows, cols)ᵀ, elements of es bytes (src may be
 * unaligned). */
void model_values_transpose(void *dst, const void *src, int64_t rows, int64_t cols, size_t es);
/* p's shape in a checkpoint file: Conv1D weights (in, out), others as in
 * memory. */
void model_param_disk_shape(const model_param *p, int64_t shape[2]);
/* Bytes of parameter values the model holds in memory (mapped or owned). */
int64_t model_values_bytes(const model *m);

/* Chooses how the frozen GEMMs are computed. BF16 converts every frozen
 * (gradient-free) weight matrix not already bf16 into a bf16 copy the model
 * owns, and fails with a message when this CPU cannot multiply bf16 (no
 * oneDNN bf16 kernel for it). FP32 needs nothing. */
int model_set_precision(model *m, model_precision p);
/* "fp32" / "bf16". */
const char *model_precision_name(model_precision p);
/* The param with that Hugging Face name, or NULL. */
model_param *model_find_param(const model *m, const char *name);
/* Hugging Face's _init_weights: normal(0, initializer_range) for linear and
 * embedding weights (GPT-2's c_proj scaled by 1/sqrt(2L)), zeros for biases,
 * ones for norm weights. Deterministic for a seed. */
void model_init_random(model *m, uint64_t seed);
/* The same, one param at a time, for writing a model too large to hold
 * (init-model streams it): the draws continue the state *s, which starts at
 * model_init_state(seed); params in table order give model_init_random's
 * values. v holds p's numel values, in memory layout. */
uint64_t model_init_state(uint64_t seed);
void model_init_param(const model_config *cfg, const model_param *p, uint64_t *s, real *v);
/* Gives p writable `real` values (p->data): a param held only in another
 * dtype (a frozen weight of a mapped checkpoint) gets a copy, widened
 * exactly, which the model owns from then on. */
int model_param_writable(model_param *p);
/* Asks for the gradient of p (allocates a zeroed grad buffer). A param held
 * in another dtype first gets a writable `real` copy of its values. */
int model_param_want_grad(model_param *p);
/* Asks for every parameter's gradient (not for buffers). */
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
/* Mixture of experts: the smallest gap, over the rows of every layer of the
 * last forward, between the k-th and the (k+1)-th router probability (+inf
 * without experts, or when every expert is chosen). The routing is
 * piecewise constant: a finite-difference step that moves no probability
 * by more than half this gap measures the derivative of one piece. */
double model_acts_router_margin(const model_acts *a);
/* The rows the last forward sent to expert e of layer l (0 without experts). */
int model_acts_expert_rows(const model_acts *a, int l, int e);

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
