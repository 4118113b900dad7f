/* config — what a Hugging Face config.json says about the network's shape.
 *
 * Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (one graph:
 * RMSNorm, RoPE, SwiGLU, grouped-query attention) and GPT2LMHeadModel
 * (LayerNorm, learned positions, GELU-tanh, Conv1D weights). Anything else,
 * or a value this code does not implement, is refused by name. */
#ifndef FL_MODEL_CONFIG_H
#define FL_MODEL_CONFIG_H

#include <stddef.h>

typedef enum { MODEL_ARCH_LLAMA = 1, MODEL_ARCH_GPT2 = 2 } model_arch;

/* Which config.json family it came from; decides names written back. */
typedef enum {
    MODEL_FAMILY_LLAMA = 1,
    MODEL_FAMILY_MISTRAL = 2,
    MODEL_FAMILY_QWEN2 = 3,
    MODEL_FAMILY_GPT2 = 4,
} model_family;

typedef struct {
    model_arch arch;
    model_family family;
    int vocab_size;        /* V */
    int hidden_size;       /* C */
    int intermediate_size; /* F: SwiGLU width, or GPT-2 n_inner (default 4C) */
    int num_layers;        /* L */
    int num_heads;         /* H: query heads */
    int num_kv_heads;      /* KV: key/value heads, H % KV == 0 (GPT-2: KV = H) */
    int head_dim;          /* D: C / H unless config.json sets head_dim */
    int max_position;      /* max_position_embeddings / n_positions */
    double norm_eps;       /* rms_norm_eps / layer_norm_epsilon */
    double rope_theta;     /* Llama family only */
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

/* Parses config.json text; `where` names the source in error messages. */
int model_config_parse(model_config *cfg, const char *json, size_t len, const char *where);
/* Reads and parses DIR/config.json (path is the file). */
int model_config_load(model_config *cfg, const char *path);
/* Writes a config.json that transformers loads (architectures, model_type, …). */
int model_config_save(const model_config *cfg, const char *path);
/* Fills cfg for `fedlora init-model`: arch "llama"|"gpt2", preset "tiny"|"small"|"100m"|"124m". */
int model_config_preset(model_config *cfg, const char *arch, const char *preset);
/* Internal consistency (H % KV, C == H·D for GPT-2, positive sizes …). */
int model_config_check(const model_config *cfg, const char *where);
/* 0 when rows of seq tokens fit the model's context (max_position: the
 * positions it was trained for), else -1 with a message naming `what` (the
 * option or key that set seq) and the limit. */
int model_config_seq_check(const model_config *cfg, long long seq, const char *what);
/* Number of parameters (tied embeddings counted once). */
long long model_config_num_params(const model_config *cfg);

#endif
