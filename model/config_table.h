/* config_table — the families and their block options, shared by the
 * config.json reader and writer (config.c) and by the checks, counts and
 * presets (config_family.c). Private to model/. */
#ifndef FL_MODEL_CONFIG_TABLE_H
#define FL_MODEL_CONFIG_TABLE_H

#include "model/config.h"

/* Bounds that keep every derived size (H·D, 3C, V·C, …) far from overflow. */
#define MAX_VOCAB (1 << 22)
#define MAX_HIDDEN (1 << 16)
#define MAX_FFN (1 << 18)
#define MAX_LAYERS MODEL_MAX_LAYERS
#define MAX_HEADS 1024
#define MAX_HEAD_DIM 1024
#define MAX_POSITIONS (1 << 24)
#define MAX_EXPERTS 1024       /* Mixtral has 8; the largest published MoEs a few hundred */
#define MAX_EXPERTS_PER_TOK 64 /* Mixtral 2, the largest published MoEs 8 */

/* One supported family: its names in config.json, its tensor layout and
 * the block options it fixes. */
typedef struct {
    const char *model_type, *architecture;
    model_family family;
    model_arch arch;
    model_block block;
} model_config_family_info;

extern const model_config_family_info model_config_families[];
extern const int model_config_n_families;

#define MODEL_CONFIG_TYPES                                                                         \
    "llama, mistral, qwen2, qwen3, olmo2, apertus, gemma2, gemma3_text, phi3, mixtral, bloom, "    \
    "gpt2"
#define MODEL_CONFIG_ARCHS                                                                         \
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "                   \
    "Olmo2ForCausalLM, ApertusForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, "                 \
    "Phi3ForCausalLM, MixtralForCausalLM, BloomForCausalLM, GPT2LMHeadModel"

/* The family's row, or -1. */
int model_config_family_index(model_family f);
int model_config_same_block(const model_block *a, const model_block *b);
/* ApertusConfig's default RoPE: llama3 scaling of theta 1.2e7. */
void model_config_apertus_rope(model_config *c);

#endif
