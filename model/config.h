/* config — what a Hugging Face config.json says about the network's shape.
 *
 * Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
 * Qwen3ForCausalLM, Olmo2ForCausalLM, ApertusForCausalLM and GPT2LMHeadModel.
 * A family is a set of block options (model_block: which norm, where, QK-norm,
 * MLP kind, activation, positions) plus its tensor names (model.c); the
 * kernels read the options, never the family (docs/adding-a-family.md).
 * Anything else, or a value this code does not implement, is refused by name. */
#ifndef FL_MODEL_CONFIG_H
#define FL_MODEL_CONFIG_H

#include <stddef.h>

/* The layout of the tensors: LLAMA "model.layers.N.…" nn.Linear modules (every
 * family but GPT-2), GPT2 "transformer.h.N.…" Conv1D modules stored (in, out). */
typedef enum { MODEL_ARCH_LLAMA = 1, MODEL_ARCH_GPT2 = 2 } model_arch;

/* Which config.json family it came from; decides names read and written. */
typedef enum {
    MODEL_FAMILY_LLAMA = 1,
    MODEL_FAMILY_MISTRAL = 2,
    MODEL_FAMILY_QWEN2 = 3,
    MODEL_FAMILY_GPT2 = 4,
    MODEL_FAMILY_QWEN3 = 5,
    MODEL_FAMILY_OLMO2 = 6,
    MODEL_FAMILY_APERTUS = 7,
} model_family;

/* ---- what a transformer block computes ----------------------------------------
 * A block is two sublayers, attention then MLP, each adding its output to the
 * residual stream x:  x += post(sublayer(pre(x))), pre/post a norm or nothing.
 * The options below say which; a family fixes all of them. */

/* RMSNorm y = w · x / sqrt(mean(x²) + eps), or LayerNorm y = w · (x − mean) /
 * sqrt(var + eps) + b. (Gemma's y = (1 + w) · x̂ would be a third kind.) */
typedef enum { MODEL_NORM_RMS = 1, MODEL_NORM_LAYER = 2 } model_norm_kind;
/* Positions: rotary embeddings on q and k, or a learned table added to the
 * embedding (GPT-2's wpe). */
typedef enum { MODEL_POS_ROPE = 1, MODEL_POS_LEARNED = 2 } model_pos_kind;
/* q, k, v from three linears (q_proj, k_proj, v_proj), or from one whose
 * output columns are q | k | v (GPT-2's c_attn). */
typedef enum { MODEL_QKV_SEPARATE = 1, MODEL_QKV_FUSED = 2 } model_qkv_kind;
/* QK-norm, an RMSNorm of the projected q and k before RoPE: none; HEAD over
 * each head's D values with a (D) weight shared by the heads (Qwen3, Apertus,
 * Gemma 3); PROJ over the whole (H·D) q and (KV·D) k rows with (H·D) and
 * (KV·D) weights (OLMo 2). */
typedef enum {
    MODEL_QK_NORM_NONE = 0,
    MODEL_QK_NORM_HEAD = 1,
    MODEL_QK_NORM_PROJ = 2
} model_qk_norm;
/* MLP: down(act(gate(x)) · up(x)) (GATED), or down(act(up(x))) (PLAIN). */
typedef enum { MODEL_MLP_GATED = 1, MODEL_MLP_PLAIN = 2 } model_mlp_kind;
/* SiLU x·sigmoid(x); GELU's tanh form (gelu_new, gelu_pytorch_tanh); xIELU
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
    int tie_embeddings; /* lm_head shares the token embedding */
    int qkv_bias;       /* q/k/v projections have a bias (Qwen2; Llama attention_bias) */
    int o_bias;         /* o_proj has a bias (Llama attention_bias) */
    int mlp_bias;       /* Llama mlp_bias */
    int bos_token_id, eos_token_id; /* -1 when absent */
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
 * "tiny"|"small"|"100m"|"124m", or "mistral"|"qwen2"|"qwen3"|"olmo2"|"apertus"
 * with preset "tiny". */
int model_config_preset(model_config *cfg, const char *arch, const char *preset);
/* Internal consistency (H % KV, C == H·D for GPT-2, positive sizes, the block
 * options the family fixes …). */
int model_config_check(const model_config *cfg, const char *where);
/* Number of parameters (tied embeddings counted once). */
long long model_config_num_params(const model_config *cfg);

#endif
