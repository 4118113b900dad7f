/* tiny.h — tiny model configs and deterministic batches shared by the CPU
 * backend's tests (compiled against fl_model_f32 or fl_model_f64). */
#ifndef FL_TESTS_CPU_TINY_H
#define FL_TESTS_CPU_TINY_H

#include "model/model.h"
#include "tests/check.h"
#include "util/err.h"
#include "util/rng.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    model_config cfg;
    int B, T;
} tiny_case;

static inline model_config tiny_llama(void) {
    model_config c;
    memset(&c, 0, sizeof c);
    model_config_family(&c, MODEL_FAMILY_LLAMA);
    c.vocab_size = 32;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.max_position = 64;
    c.norm_eps = 1e-5;
    c.rope_theta = 10000;
    c.tie_embeddings = 1;
    c.bos_token_id = c.eos_token_id = -1;
    c.initializer_range = 0.3;
    strcpy(c.torch_dtype, "float32");
    return c;
}

/* The graphs the tests cover: GQA with tied embeddings; every bias with an
 * untied head, one kv head and head_dim != C/H; llama3 rope scaling; a
 * Mistral sliding window shorter than T; GPT-2; Qwen3's per-head QK-norm;
 * OLMo 2's post-norms and projection QK-norm; Apertus's xIELU; Gemma 2's
 * soft-capping, GeGLU and per-layer windows; Gemma 3's local and global
 * RoPE; Phi-3's fused linears and partial LongRoPE; BLOOM's ALiBi (6 heads:
 * the slopes' non-power-of-two rule), head-interleaved query_key_value and
 * embedding LayerNorm; Mixtral's experts (top-2 of 4 with a sliding window;
 * top-1 of 4 with the load-balancing loss). */
static inline int tiny_cases(tiny_case *out) {
    int n = 0;
    tiny_case *t;

    t = &out[n++];
    t->name = "llama_gqa";
    t->cfg = tiny_llama();
    t->B = 2, t->T = 7;

    t = &out[n++];
    t->name = "llama_bias";
    t->cfg = tiny_llama();
    t->cfg.num_kv_heads = 1;
    t->cfg.head_dim = 8; /* H·D = 32 != C */
    t->cfg.qkv_bias = t->cfg.o_bias = t->cfg.mlp_bias = 1;
    t->cfg.tie_embeddings = 0;
    t->B = 2, t->T = 6;

    t = &out[n++];
    t->name = "llama3_rope";
    t->cfg = tiny_llama();
    t->cfg.num_heads = 2;
    t->cfg.head_dim = 8;
    t->cfg.rope_llama3 = 1;
    t->cfg.rope_factor = 8;
    t->cfg.rope_low_freq_factor = 1;
    t->cfg.rope_high_freq_factor = 4;
    t->cfg.rope_original_max_position = 32;
    /* wavelengths 6.3, 20, 63, 199 against 32/4 and 32/1: every llama3 branch */
    t->cfg.rope_theta = 100;
    t->B = 2, t->T = 8;

    t = &out[n++];
    t->name = "mistral_window";
    t->cfg = tiny_llama();
    t->cfg.family = MODEL_FAMILY_MISTRAL;
    t->cfg.sliding_window = 3;
    t->cfg.tie_embeddings = 0;
    t->B = 2, t->T = 8;

    t = &out[n++];
    t->name = "gpt2";
    memset(&t->cfg, 0, sizeof t->cfg);
    model_config_family(&t->cfg, MODEL_FAMILY_GPT2);
    t->cfg.vocab_size = 32;
    t->cfg.hidden_size = 16;
    t->cfg.intermediate_size = 32;
    t->cfg.num_layers = 2;
    t->cfg.num_heads = 2;
    t->cfg.num_kv_heads = 2;
    t->cfg.head_dim = 8;
    t->cfg.max_position = 16;
    t->cfg.norm_eps = 1e-5;
    t->cfg.tie_embeddings = 1;
    t->cfg.bos_token_id = t->cfg.eos_token_id = -1;
    t->cfg.initializer_range = 0.3;
    strcpy(t->cfg.torch_dtype, "float32");
    t->B = 2, t->T = 7;

    /* Qwen3: per-head QK-norm, H·D != C, q/k/v/o biases. */
    t = &out[n++];
    t->name = "qwen3_qk_norm";
    t->cfg = tiny_llama();
    model_config_family(&t->cfg, MODEL_FAMILY_QWEN3);
    t->cfg.head_dim = 8;
    t->cfg.qkv_bias = t->cfg.o_bias = 1;
    t->cfg.tie_embeddings = 0;
    t->B = 2, t->T = 6;

    /* OLMo 2: norms on the sublayers' outputs only, QK-norm over projections. */
    t = &out[n++];
    t->name = "olmo2_post_norm";
    t->cfg = tiny_llama();
    model_config_family(&t->cfg, MODEL_FAMILY_OLMO2);
    t->B = 2, t->T = 7;

    /* Apertus: xIELU in a plain MLP, per-head QK-norm, llama3 RoPE. */
    t = &out[n++];
    t->name = "apertus_xielu";
    t->cfg = out[2].cfg; /* llama3_rope's */
    model_config_family(&t->cfg, MODEL_FAMILY_APERTUS);
    t->cfg.intermediate_size = 32;
    t->cfg.tie_embeddings = 0;
    t->B = 2, t->T = 8;

    /* Gemma 2: (1 + w) norms before and after both sublayers, GeGLU, the
     * embedding times √C, a sliding layer (window 3) then a global one,
     * scores scaled by query_pre_attn_scalar 6 (not D = 8) and soft-capped
     * at 1, logits at 2 (small caps: the tiny values reach the tanh's bend),
     * q/k/v/o biases, tied. */
    t = &out[n++];
    t->name = "gemma2_softcap";
    t->cfg = tiny_llama();
    model_config_family(&t->cfg, MODEL_FAMILY_GEMMA2);
    t->cfg.head_dim = 8;
    t->cfg.qkv_bias = t->cfg.o_bias = 1;
    t->cfg.layer_types = 1;
    t->cfg.layer_sliding[0] = 1;
    t->cfg.sliding_window = 3;
    t->cfg.query_pre_attn_scalar = 6;
    t->cfg.attn_softcap = 1.0;
    t->cfg.final_softcap = 2.0;
    t->B = 2, t->T = 8;

    /* Gemma 3: Gemma 2's block with the (1 + w) QK-norm, the sliding layer
     * rotating with the local base 10, the global one with 100 and linear
     * scaling 4, logits soft-capped at 2, untied. */
    t = &out[n++];
    t->name = "gemma3_local_rope";
    t->cfg = tiny_llama();
    model_config_family(&t->cfg, MODEL_FAMILY_GEMMA3);
    t->cfg.head_dim = 8;
    t->cfg.tie_embeddings = 0;
    t->cfg.layer_types = 1;
    t->cfg.layer_sliding[0] = 1;
    t->cfg.sliding_window = 3;
    t->cfg.rope_theta = 100;
    t->cfg.rope_linear = 1;
    t->cfg.rope_factor = 4;
    t->cfg.rope_local_theta = 10;
    t->cfg.query_pre_attn_scalar = 5;
    t->cfg.final_softcap = 2.0;
    t->B = 2, t->T = 7;

    /* Phi-3: fused qkv_proj and gate_up_proj, LongRoPE over half of each
     * head (4 of 8 dimensions) with the long factors (T = 8 > original 6)
     * and the attention factor of max_position 64 / 6, a window of 5. */
    t = &out[n++];
    t->name = "phi3_longrope";
    t->cfg = tiny_llama();
    model_config_family(&t->cfg, MODEL_FAMILY_PHI3);
    t->cfg.head_dim = 8;
    t->cfg.rope_dim = 4;
    t->cfg.rope_longrope = 1;
    t->cfg.rope_original_max_position = 6;
    t->cfg.rope_short[0] = 1.2, t->cfg.rope_short[1] = 2.5;
    t->cfg.rope_long[0] = 3.5, t->cfg.rope_long[1] = 9.0;
    t->cfg.sliding_window = 5;
    t->cfg.tie_embeddings = 0;
    t->B = 2, t->T = 8;

    /* BLOOM: ALiBi over 6 heads (4 powers of 2^-2, then 2^-1, 2^-3),
     * query_key_value by head, LayerNorm on the embedding, biases. */
    t = &out[n++];
    t->name = "bloom_alibi";
    memset(&t->cfg, 0, sizeof t->cfg);
    model_config_family(&t->cfg, MODEL_FAMILY_BLOOM);
    t->cfg.vocab_size = 32;
    t->cfg.hidden_size = 24;
    t->cfg.intermediate_size = 96;
    t->cfg.num_layers = 2;
    t->cfg.num_heads = t->cfg.num_kv_heads = 6;
    t->cfg.head_dim = 4;
    t->cfg.max_position = 64;
    t->cfg.norm_eps = 1e-5;
    t->cfg.tie_embeddings = 1;
    t->cfg.qkv_bias = t->cfg.o_bias = t->cfg.mlp_bias = 1;
    t->cfg.bos_token_id = t->cfg.eos_token_id = -1;
    t->cfg.initializer_range = 0.3;
    strcpy(t->cfg.torch_dtype, "float32");
    t->B = 2, t->T = 7;

    /* Mixtral: top-2 of 4 experts, Mistral's window (3 < T). */
    t = &out[n++];
    t->name = "mixtral_moe";
    t->cfg = tiny_llama();
    model_config_family(&t->cfg, MODEL_FAMILY_MIXTRAL);
    t->cfg.num_experts = 4;
    t->cfg.experts_per_tok = 2;
    t->cfg.sliding_window = 3;
    t->cfg.tie_embeddings = 0;
    t->B = 2, t->T = 8;

    /* Mixtral with one expert per token: its weight is 1, so the router
     * learns only through the load-balancing loss, here in the objective. */
    t = &out[n++];
    t->name = "mixtral_top1";
    t->cfg = tiny_llama();
    model_config_family(&t->cfg, MODEL_FAMILY_MIXTRAL);
    t->cfg.num_experts = 4;
    t->cfg.experts_per_tok = 1;
    t->cfg.router_aux_loss = 1;
    t->cfg.router_aux_loss_coef = 0.1;
    t->B = 2, t->T = 12;
    return n;
}

#define TINY_MAX_CASES 14

/* Uniform in [-1, 1). */
static inline double tiny_uniform(uint64_t *s) {
    return (double)(rng_next(s) >> 11) / 4503599627370496.0 - 1.0;
}

/* Random weights, then every value moved by up to ±0.2 so that norm weights
 * and biases are not the ones and zeros of the init (a wrong formula cannot
 * hide behind them). Values are rounded through float, so the fp32 and fp64
 * builds hold the same weights. xIELU's eps (−1e-6 at init) goes to
 * [−0.07, −0.02], so that inputs in (eps, 0] exist. */
static inline void tiny_weights(model *m, uint64_t seed) {
    model_init_random(m, seed);
    uint64_t s = seed * 7 + 1;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        for (int64_t j = 0; j < p->numel; j++)
            p->data[j] = (real)(float)((float)p->data[j] + 0.2 * tiny_uniform(&s));
        size_t len = strlen(p->name);
        if (len >= 10 && strcmp(p->name + len - 10, "act_fn.eps") == 0)
            p->data[0] = (real)(float)(-0.045 + 0.025 * tiny_uniform(&s));
    }
}

/* A model of cfg with tiny_weights(seed); NULL after a failed CHECK (the
 * includer has tests/check.h). */
static inline model *tiny_model(const model_config *cfg, uint64_t seed) {
    model *m = NULL;
    CHECK_MSG(model_create(&m, cfg) == 0, "tiny_model: %s", err_msg());
    if (m) tiny_weights(m, seed);
    return m;
}

/* Whether the tensor named `name` (a model param, or a LoRA tensor of one)
 * belongs to an expert that the last forward of a sent no row to: its
 * gradient is then exactly zero. */
static inline int ts_unused_expert(const model_acts *a, const char *name) {
    const char *p = a ? strstr(name, "model.layers.") : NULL;
    int l, e, used;
    if (!p || sscanf(p, "model.layers.%d.block_sparse_moe.experts.%d.%n", &l, &e, &used) != 2)
        return 0;
    return model_acts_expert_rows(a, l, e) == 0;
}

/* Random tokens; targets random too, with every third one ignored. */
static inline void tiny_batch(int32_t *tokens, int32_t *targets, int N, int V, uint64_t seed) {
    uint64_t s = seed;
    for (int n = 0; n < N; n++) {
        tokens[n] = (int32_t)(rng_next(&s) % (uint64_t)V);
        targets[n] = n % 3 == 1 ? MODEL_IGNORE_INDEX : (int32_t)(rng_next(&s) % (uint64_t)V);
    }
}

#endif
