/* config — what a Hugging Face config.json says about the network's shape.
 *
 * Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
 * Qwen3ForCausalLM, Olmo2ForCausalLM, ApertusForCausalLM, MixtralForCausalLM,
 * BloomForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM (gemma3_text),
 * Phi3ForCausalLM and GPT2LMHeadModel.
 * A family is a set of block options (model_block: which norm, where, QK-norm,
 * MLP kind, activation, positions) plus its tensor names (model.c); the
 * kernels read the options, never the family (docs/adding-a-family.md).
 * Anything else, or a value this code does not implement, is refused by name. */
#ifndef FL_MODEL_CONFIG_H
#define FL_MODEL_CONFIG_H

#include <stddef.h>

/* The layout of the tensors: LLAMA "model.layers.N.…" nn.Linear modules (every
 * family but GPT-2 and BLOOM), GPT2 "transformer.h.N.…" Conv1D modules stored
 * (in, out), BLOOM "transformer.h.N.self_attention.…" nn.Linear modules. */
typedef enum { MODEL_ARCH_LLAMA = 1, MODEL_ARCH_GPT2 = 2, MODEL_ARCH_BLOOM = 3 } model_arch;

/* Which config.json family it came from; decides names read and written. */
typedef enum {
    MODEL_FAMILY_LLAMA = 1,
    MODEL_FAMILY_MISTRAL = 2,
    MODEL_FAMILY_QWEN2 = 3,
    MODEL_FAMILY_GPT2 = 4,
    MODEL_FAMILY_QWEN3 = 5,
    MODEL_FAMILY_OLMO2 = 6,
    MODEL_FAMILY_APERTUS = 7,
    MODEL_FAMILY_GEMMA2 = 8,
    MODEL_FAMILY_GEMMA3 = 9, /* gemma3_text: Gemma 3's language model alone */
    MODEL_FAMILY_PHI3 = 10,
    /* Numbered apart from the families added beside them (Gemma, Phi-3), so
     * that merging both sets of rows cannot give two families one value. */
    MODEL_FAMILY_BLOOM = 20,
    MODEL_FAMILY_MIXTRAL = 21,
} model_family;

/* Bounds of the per-layer and per-frequency arrays of model_config. */
#define MODEL_MAX_LAYERS 1024
#define MODEL_MAX_ROPE_FACTORS 256 /* LongRoPE factors: rotary dims up to 512 */

/* ---- what a transformer block computes ----------------------------------------
 * A block is two sublayers, attention then MLP, each adding its output to the
 * residual stream x:  x += post(sublayer(pre(x))), pre/post a norm or nothing.
 * The options below say which; a family fixes all of them. */

/* RMSNorm y = w · x / sqrt(mean(x²) + eps), LayerNorm y = w · (x − mean) /
 * sqrt(var + eps) + b, or Gemma's RMSNorm y = x̂ · (1 + w), x̂ = x / sqrt(mean(x²)
 * + eps) (RMS_1P: the weight is stored as an offset from one, initialised to 0). */
typedef enum { MODEL_NORM_RMS = 1, MODEL_NORM_LAYER = 2, MODEL_NORM_RMS_1P = 3 } model_norm_kind;
/* Positions: rotary embeddings on q and k, a learned table added to the
 * embedding (GPT-2's wpe), or ALiBi (Press et al. 2022, BLOOM): a per-head
 * slope times the key's position added to the attention scores
 * (model/cpu/alibi.c). */
typedef enum { MODEL_POS_ROPE = 1, MODEL_POS_LEARNED = 2, MODEL_POS_ALIBI = 3 } model_pos_kind;
/* q, k, v from three linears (q_proj, k_proj, v_proj), from one whose output
 * columns are q (H·D) | k (KV·D) | v (KV·D) (GPT-2's c_attn, Phi-3's
 * qkv_proj), or from one whose output columns are, head by head,
 * q_h | k_h | v_h (BLOOM's query_key_value, viewed as (H, 3, D)). */
typedef enum { MODEL_QKV_SEPARATE = 1, MODEL_QKV_FUSED = 2, MODEL_QKV_HEADS = 3 } model_qkv_kind;
/* QK-norm, an RMSNorm of the projected q and k before RoPE: none; HEAD over
 * each head's D values with a (D) weight shared by the heads (Qwen3, Apertus,
 * Gemma 3); PROJ over the whole (H·D) q and (KV·D) k rows with (H·D) and
 * (KV·D) weights (OLMo 2). */
typedef enum {
    MODEL_QK_NORM_NONE = 0,
    MODEL_QK_NORM_HEAD = 1,
    MODEL_QK_NORM_PROJ = 2
} model_qk_norm;
/* MLP: down(act(gate(x)) · up(x)) (GATED), down(act(up(x))) (PLAIN), GATED
 * with gate and up as one linear whose output columns are gate (F) | up (F)
 * (GATED_FUSED: Phi-3's gate_up_proj, held in model_layer.up), or a sparse
 * mixture of gated experts (MOE, Mixtral): a router picks each token's top-k
 * experts, whose outputs are summed with the router's renormalized
 * probabilities (model/cpu/moe.c). */
typedef enum {
    MODEL_MLP_GATED = 1,
    MODEL_MLP_PLAIN = 2,
    MODEL_MLP_GATED_FUSED = 3,
    MODEL_MLP_MOE = 4
} model_mlp_kind;
/* SiLU x·sigmoid(x); GELU's tanh form (gelu_new, gelu_pytorch_tanh; gated:
 * GeGLU, Gemma); xIELU
 * (Huang 2024, Apertus) with per-layer trained alpha_p, alpha_n and stored
 * beta, eps (model/cpu/act.c has the formula). */
typedef enum { MODEL_ACT_SILU = 1, MODEL_ACT_GELU_TANH = 2, MODEL_ACT_XIELU = 3 } model_act_kind;

typedef struct {
    model_norm_kind norm;
    int pre_norm;  /* each sublayer normalizes its input (Llama, GPT-2, Apertus) */
    int post_norm; /* each sublayer normalizes its output before the residual add (OLMo 2) */
    model_pos_kind pos;
    model_qkv_kind qkv;
    model_qk_norm qk_norm;
    model_mlp_kind mlp;
    model_act_kind act;
    int embed_scale; /* the token embedding is multiplied by √C, rounded to fp32 (Gemma) */
    int embed_norm;  /* the embedding is normalized before the first block (BLOOM's
                        word_embeddings_layernorm) */
} model_block;

typedef struct {
    model_arch arch;
    model_family family;
    model_block block;     /* the family's (model_config_family) */
    int vocab_size;        /* V */
    int hidden_size;       /* C */
    int intermediate_size; /* F: the MLP's width (GPT-2 n_inner, default 4C) */
    int num_layers;        /* L */
    int num_heads;         /* H: query heads */
    int num_kv_heads;      /* KV: key/value heads, H % KV == 0 (GPT-2: KV = H) */
    int head_dim;          /* D: C / H unless config.json sets head_dim */
    int max_position;      /* max_position_embeddings / n_positions */
    double norm_eps;       /* rms_norm_eps / layer_norm_epsilon */
    double rope_theta;     /* block.pos == MODEL_POS_ROPE only */
    /* rope_scaling {"rope_type": "llama3", …}; rope_llama3 = 0 when absent. */
    int rope_llama3;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position;
    int sliding_window; /* Mistral/Qwen2 window, 0 = full causal attention */
    /* Per-layer attention (Gemma 2 and 3's layer_types): when layer_types is
     * set, layer l has the window only where layer_sliding[l] is (a
     * "sliding_attention" layer); otherwise every layer has it. Read through
     * model_config_window. */
    int layer_types;
    unsigned char layer_sliding[MODEL_MAX_LAYERS];
    /* Gemma 3: sliding layers rotate with the default RoPE of this base
     * (rope_local_base_freq), the others with rope_theta and its scaling;
     * 0 = one RoPE for every layer. */
    double rope_local_theta;
    /* RoPE over the first rope_dim dimensions of each head only (Phi-3's
     * partial_rotary_factor · D, even); 0 = all D. */
    int rope_dim;
    /* rope_scaling "linear" (Gemma 3's global layers): inv_freq / rope_factor. */
    int rope_linear;
    /* rope_scaling "longrope" (Phi-3, "su"): inv_freq[i] / short_factor[i]
     * for sequences up to rope_original_max_position, / long_factor[i]
     * beyond, and cos, sin times rope_attn_factor. rope_factor is the
     * config's factor (0: max_position / original). */
    int rope_longrope;
    double rope_attn_factor;
    double rope_short[MODEL_MAX_ROPE_FACTORS], rope_long[MODEL_MAX_ROPE_FACTORS];
    /* Attention scores scaled by query_pre_attn_scalar^(−½) (Gemma); 0 = head_dim. */
    double query_pre_attn_scalar;
    /* Soft-capping cap · tanh(x / cap), 0 = none: of the attention scores
     * before the mask (Gemma 2's attn_logit_softcapping) and of the logits
     * (final_logit_softcapping). */
    double attn_softcap, final_softcap;
    int tie_embeddings; /* lm_head shares the token embedding */
    int qkv_bias;       /* q/k/v projections have a bias (Qwen2; Llama attention_bias) */
    int o_bias;         /* o_proj has a bias (Llama attention_bias) */
    int mlp_bias;       /* Llama mlp_bias */
    int bos_token_id, eos_token_id; /* -1 when absent */
    /* MLP_MOE (Mixtral): E experts, k of them per token; with router_aux_loss
     * (output_router_logits) the loss adds router_aux_loss_coef times the
     * load-balancing loss of transformers' load_balancing_loss_func. */
    int num_experts;     /* E: num_local_experts */
    int experts_per_tok; /* k: num_experts_per_tok */
    int router_aux_loss;
    double router_aux_loss_coef;
    double initializer_range;
    char torch_dtype[16]; /* "float32", "bfloat16", "float16" ("float32" if absent) */
} model_config;

/* Sets cfg->family, and the arch and block options that family fixes; other
 * fields are left as they are. -1 (message) for an unknown family. */
int model_config_family(model_config *cfg, model_family family);
/* Parses config.json text; `where` names the source in error messages. */
int model_config_parse(model_config *cfg, const char *json, size_t len, const char *where);
/* Reads and parses DIR/config.json (path is the file). */
int model_config_load(model_config *cfg, const char *path);
/* Writes a config.json that transformers loads (architectures, model_type, …). */
int model_config_save(const model_config *cfg, const char *path);
/* Fills cfg for `fedlora init-model`: arch "llama"|"gpt2" with preset
 * "tiny"|"small"|"100m"|"124m", "mixtral" with "tiny"|"400m", or
 * "mistral"|"qwen2"|"qwen3"|"olmo2"|"apertus"|"bloom" with preset "tiny". */
int model_config_preset(model_config *cfg, const char *arch, const char *preset);
/* Internal consistency (H % KV, C == H·D for GPT-2, positive sizes, the block
 * options the family fixes …). */
int model_config_check(const model_config *cfg, const char *where);
/* 0 when rows of seq tokens fit the model's context (max_position: the
 * positions it was trained for), else -1 with a message naming `what` (the
 * option or key that set seq) and the limit. */
int model_config_seq_check(const model_config *cfg, long long seq, const char *what);
/* Number of parameters (tied embeddings counted once). */
long long model_config_num_params(const model_config *cfg);

/* The MLP multiplies act(gate) by up (GATED, GATED_FUSED). */
static inline int model_block_gated(const model_block *b) {
    return b->mlp == MODEL_MLP_GATED || b->mlp == MODEL_MLP_GATED_FUSED;
}
/* Layer l is a sliding-window layer ("sliding_attention"). */
static inline int model_config_layer_sliding(const model_config *c, int l) {
    return c->layer_types ? c->layer_sliding[l] != 0 : c->sliding_window > 0;
}
/* Layer l's sliding window: key j is visible to query i iff i − window < j
 * <= i; 0 = full causal attention. */
static inline int model_config_window(const model_config *c, int l) {
    return model_config_layer_sliding(c, l) ? c->sliding_window : 0;
}
/* Layer l rotates q and k with the local RoPE table (Gemma 3). */
static inline int model_config_local_rope(const model_config *c, int l) {
    return c->rope_local_theta > 0 && model_config_layer_sliding(c, l);
}
/* The dimensions RoPE rotates in each head. */
static inline int model_config_rope_dim(const model_config *c) {
    return c->rope_dim > 0 ? c->rope_dim : c->head_dim;
}
/* LongRoPE: whether a sequence of seq_len positions rotates with the long
 * factors (transformers: seq_len > original_max_position_embeddings). */
static inline int model_config_rope_long(const model_config *c, int seq_len) {
    return c->rope_longrope && seq_len > c->rope_original_max_position;
}
/* The attention's score scale: query_pre_attn_scalar^(−½), or D^(−½). */
double model_config_attn_scale(const model_config *c);
/* LongRoPE's factor on cos and sin: attention_factor, or √(1 + ln s / ln
 * original) with s = factor (or max_position / original), 1 for s <= 1;
 * 1 without LongRoPE. */
double model_config_rope_attn_factor(const model_config *c);

#endif
