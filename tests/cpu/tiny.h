/* tiny.h — tiny model configs and deterministic batches shared by the CPU
 * backend's tests (compiled against fl_model_f32 or fl_model_f64). */
#ifndef FL_TESTS_CPU_TINY_H
#define FL_TESTS_CPU_TINY_H

#include "model/model.h"
#include "tests/check.h"
#include "util/err.h"

#include <stdint.h>
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
 * OLMo 2's post-norms and projection QK-norm; Apertus's xIELU. */
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
    return n;
}

#define TINY_MAX_CASES 12

static inline uint64_t tiny_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline double tiny_uniform(uint64_t *s) {
    return (double)(tiny_rng(s) >> 11) / 4503599627370496.0 - 1.0;
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

/* Random tokens; targets random too, with every third one ignored. */
static inline void tiny_batch(int32_t *tokens, int32_t *targets, int N, int V, uint64_t seed) {
    uint64_t s = seed;
    for (int n = 0; n < N; n++) {
        tokens[n] = (int32_t)(tiny_rng(&s) % (uint64_t)V);
        targets[n] = n % 3 == 1 ? MODEL_IGNORE_INDEX : (int32_t)(tiny_rng(&s) % (uint64_t)V);
    }
}

#endif
