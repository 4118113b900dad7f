/* model.c — the parameter table: names, shapes and storage for a config. */
#include "model/model.h"

#include "model/safetensors.h"
#include "util/err.h"
#include "util/rng.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    model *m;
} table;

static model_param *add(table *t, int conv1d, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Adds a param (d1 == 0 for a vector). Storage is assigned later, once the
 * total size is known. */
static model_param *add(table *t, int conv1d, int64_t d0, int64_t d1, const char *fmt, ...) {
    model_param *p = &t->m->params[t->m->n_params++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = d1 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->numel = d1 ? d0 * d1 : d0;
    p->conv1d = conv1d;
    return p;
}

/* A 0-dimensional buffer (one value, shape ()). */
static model_param *scalar_buffer(table *t, const char *fmt, const char *blk) {
    model_param *p = add(t, 0, 1, 0, fmt, blk);
    p->ndim = 0;
    p->shape[0] = 0;
    p->buffer = 1;
    return p;
}

static model_linear linear(table *t, int conv1d, int in, int out, int bias, const char *prefix) {
    model_linear l = {0};
    l.in = in;
    l.out = out;
    l.w = add(t, conv1d, out, in, "%s.weight", prefix);
    if (bias) l.b = add(t, 0, out, 0, "%s.bias", prefix);
    return l;
}

/* The block norms' module names of the families that name them otherwise
 * than Llama (input_layernorm before attention, post_attention_layernorm
 * before the MLP); NULL where the family has no such norm. */
typedef struct {
    model_family family;
    const char *attn_in, *attn_out, *mlp_in, *mlp_out;
} norm_names;

static const norm_names NORM_NAMES[] = {
    {MODEL_FAMILY_OLMO2, NULL, "post_attention_layernorm", NULL, "post_feedforward_layernorm"},
    {MODEL_FAMILY_APERTUS, "attention_layernorm", NULL, "feedforward_layernorm", NULL},
    {MODEL_FAMILY_GEMMA2, "input_layernorm", "post_attention_layernorm",
     "pre_feedforward_layernorm", "post_feedforward_layernorm"},
    {MODEL_FAMILY_GEMMA3, "input_layernorm", "post_attention_layernorm",
     "pre_feedforward_layernorm", "post_feedforward_layernorm"},
};

static norm_names block_norm_names(model_family f) {
    for (size_t i = 0; i < sizeof NORM_NAMES / sizeof NORM_NAMES[0]; i++)
        if (NORM_NAMES[i].family == f) return NORM_NAMES[i];
    return (norm_names){f, "input_layernorm", NULL, "post_attention_layernorm", NULL};
}

/* A norm of width C named "<prefix>.<name>" (weight, and bias for LayerNorm). */
static model_norm norm(table *t, const char *prefix, const char *name, int C) {
    model_norm n = {0};
    if (!name) return n;
    n.w = add(t, 0, C, 0, "%s.%s.weight", prefix, name);
    if (t->m->cfg.block.norm == MODEL_NORM_LAYER) n.b = add(t, 0, C, 0, "%s.%s.bias", prefix, name);
    return n;
}

/* Mixtral's block_sparse_moe: the router and E experts' w1, w2, w3, in the
 * order of the checkpoint's (transformers 4's) modules. */
static int build_moe(table *t, model_layer *L, const char *blk) {
    const model_config *c = &t->m->cfg;
    int C = c->hidden_size, F = c->intermediate_size, E = c->num_experts;
    char pre[128];
    L->moe.n_experts = E;
    L->moe.experts = calloc((size_t)3 * E, sizeof *L->moe.experts);
    if (!L->moe.experts) return -1;
    snprintf(pre, sizeof pre, "%s.block_sparse_moe.gate", blk);
    L->moe.router = linear(t, 0, C, E, 0, pre);
    for (int e = 0; e < E; e++) {
        static const char *const names[3] = {"w1", "w2", "w3"};
        for (int j = 0; j < 3; j++) {
            snprintf(pre, sizeof pre, "%s.block_sparse_moe.experts.%d.%s", blk, e, names[j]);
            L->moe.experts[3 * e + j] =
                j == 1 ? linear(t, 0, F, C, 0, pre) : linear(t, 0, C, F, 0, pre);
        }
    }
    return 0;
}

/* Every family but GPT-2 and BLOOM: "model.layers.N.…" with nn.Linear projections. */
static int build_llama(table *t) {
    model *m = t->m;
    const model_config *c = &m->cfg;
    const model_block *bk = &c->block;
    int C = c->hidden_size, F = c->intermediate_size, D = c->head_dim;
    int HD = c->num_heads * D, KVD = c->num_kv_heads * D;
    norm_names nn = block_norm_names(c->family);
    m->wte = add(t, 0, c->vocab_size, C, "model.embed_tokens.weight");
    for (int l = 0; l < c->num_layers; l++) {
        model_layer *L = &m->layers[l];
        char blk[64], pre[96];
        snprintf(blk, sizeof blk, "model.layers.%d", l);
        if (bk->pre_norm) L->attn_in = norm(t, blk, nn.attn_in, C);
        if (bk->qkv == MODEL_QKV_FUSED) {
            /* Phi-3's qkv_proj: rows q (H·D) | k (KV·D) | v (KV·D) */
            snprintf(pre, sizeof pre, "%s.self_attn.qkv_proj", blk);
            L->qkv = linear(t, 0, C, HD + 2 * KVD, c->qkv_bias, pre);
        } else {
            snprintf(pre, sizeof pre, "%s.self_attn.q_proj", blk);
            L->q = linear(t, 0, C, HD, c->qkv_bias, pre);
            snprintf(pre, sizeof pre, "%s.self_attn.k_proj", blk);
            L->k = linear(t, 0, C, KVD, c->qkv_bias, pre);
            snprintf(pre, sizeof pre, "%s.self_attn.v_proj", blk);
            L->v = linear(t, 0, C, KVD, c->qkv_bias, pre);
        }
        snprintf(pre, sizeof pre, "%s.self_attn.o_proj", blk);
        L->o = linear(t, 0, HD, C, c->o_bias, pre);
        if (bk->qk_norm != MODEL_QK_NORM_NONE) {
            int head = bk->qk_norm == MODEL_QK_NORM_HEAD;
            snprintf(pre, sizeof pre, "%s.self_attn", blk);
            L->q_norm = norm(t, pre, "q_norm", head ? D : HD);
            L->k_norm = norm(t, pre, "k_norm", head ? D : KVD);
        }
        if (bk->post_norm) L->attn_out = norm(t, blk, nn.attn_out, C);
        if (bk->pre_norm) L->mlp_in = norm(t, blk, nn.mlp_in, C);
        if (bk->mlp == MODEL_MLP_MOE) {
            if (build_moe(t, L, blk) != 0) return -1;
            continue;
        }
        if (bk->mlp == MODEL_MLP_GATED) {
            snprintf(pre, sizeof pre, "%s.mlp.gate_proj", blk);
            L->gate = linear(t, 0, C, F, c->mlp_bias, pre);
        }
        if (bk->mlp == MODEL_MLP_GATED_FUSED) {
            /* Phi-3's gate_up_proj: rows gate (F) | up (F) */
            snprintf(pre, sizeof pre, "%s.mlp.gate_up_proj", blk);
            L->up = linear(t, 0, C, 2 * F, c->mlp_bias, pre);
        } else {
            snprintf(pre, sizeof pre, "%s.mlp.up_proj", blk);
            L->up = linear(t, 0, C, F, c->mlp_bias, pre);
        }
        snprintf(pre, sizeof pre, "%s.mlp.down_proj", blk);
        L->down = linear(t, 0, F, C, c->mlp_bias, pre);
        if (bk->act == MODEL_ACT_XIELU) {
            /* XIELUActivation: parameters of shape (1), buffers of shape () */
            L->xielu.alpha_p = add(t, 0, 1, 0, "%s.mlp.act_fn.alpha_p", blk);
            L->xielu.alpha_n = add(t, 0, 1, 0, "%s.mlp.act_fn.alpha_n", blk);
            L->xielu.beta = scalar_buffer(t, "%s.mlp.act_fn.beta", blk);
            L->xielu.eps = scalar_buffer(t, "%s.mlp.act_fn.eps", blk);
        }
        if (bk->post_norm) L->mlp_out = norm(t, blk, nn.mlp_out, C);
    }
    m->norm_f = norm(t, "model", "norm", C);
    m->lm_head = c->tie_embeddings ? m->wte : add(t, 0, c->vocab_size, C, "lm_head.weight");
    return 0;
}

/* The "transformer.h.N.…" layout of GPT-2 (Conv1D modules, learned
 * positions, always tied) and BLOOM (nn.Linear modules, a LayerNorm on the
 * embedding, modeling_bloom.py), by their module names. */
typedef struct {
    const char *wte, *wpe, *embed_norm;                 /* under "transformer." (NULL: none) */
    const char *attn_in, *qkv, *o, *mlp_in, *up, *down; /* under "transformer.h.N." */
    int conv1d;
} h_names;

static const h_names GPT2_NAMES = {"wte",         "wpe",  NULL,       "ln_1",       "attn.c_attn",
                                   "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj", 1};
static const h_names BLOOM_NAMES = {"word_embeddings",
                                    NULL,
                                    "word_embeddings_layernorm",
                                    "input_layernorm",
                                    "self_attention.query_key_value",
                                    "self_attention.dense",
                                    "post_attention_layernorm",
                                    "mlp.dense_h_to_4h",
                                    "mlp.dense_4h_to_h",
                                    0};

static int build_h(table *t, const h_names *nm) {
    model *m = t->m;
    const model_config *c = &m->cfg;
    int C = c->hidden_size, F = c->intermediate_size, cv = nm->conv1d;
    m->wte = add(t, 0, c->vocab_size, C, "transformer.%s.weight", nm->wte);
    if (nm->wpe) m->wpe = add(t, 0, c->max_position, C, "transformer.%s.weight", nm->wpe);
    if (nm->embed_norm) m->embed_norm = norm(t, "transformer", nm->embed_norm, C);
    for (int l = 0; l < c->num_layers; l++) {
        model_layer *L = &m->layers[l];
        char blk[64], pre[128];
        snprintf(blk, sizeof blk, "transformer.h.%d", l);
        L->attn_in = norm(t, blk, nm->attn_in, C);
        snprintf(pre, sizeof pre, "%s.%s", blk, nm->qkv);
        L->qkv = linear(t, cv, C, 3 * C, 1, pre);
        snprintf(pre, sizeof pre, "%s.%s", blk, nm->o);
        L->o = linear(t, cv, C, C, 1, pre);
        L->mlp_in = norm(t, blk, nm->mlp_in, C);
        snprintf(pre, sizeof pre, "%s.%s", blk, nm->up);
        L->up = linear(t, cv, C, F, 1, pre);
        snprintf(pre, sizeof pre, "%s.%s", blk, nm->down);
        L->down = linear(t, cv, F, C, 1, pre);
    }
    m->norm_f = norm(t, "transformer", "ln_f", C);
    /* GPT2LMHeadModel always ties lm_head to wte (model_config_check). */
    m->lm_head = c->tie_embeddings ? m->wte : add(t, 0, c->vocab_size, C, "lm_head.weight");
    return 0;
}

/* The table for cfg, with no values. */
static int create_table(model **out, const model_config *cfg) {
    *out = NULL;
    if (model_config_check(cfg, "model") != 0) return -1;
    model *m = calloc(1, sizeof *m);
    if (!m) return err_set("out of memory creating the model");
    m->cfg = *cfg;
    /* params per layer: at most 32, plus a router and 3 per expert */
    int cap = 8 + cfg->num_layers * (32 + 1 + 3 * cfg->num_experts);
    m->params = calloc((size_t)cap, sizeof *m->params);
    m->layers = calloc((size_t)cfg->num_layers, sizeof *m->layers);
    if (!m->params || !m->layers) {
        model_free(m);
        return err_set("out of memory creating the model");
    }
    table t = {m};
    int rc = cfg->arch == MODEL_ARCH_GPT2    ? build_h(&t, &GPT2_NAMES)
             : cfg->arch == MODEL_ARCH_BLOOM ? build_h(&t, &BLOOM_NAMES)
                                             : build_llama(&t);
    if (rc != 0) {
        model_free(m);
        return err_set("out of memory creating the model");
    }
    *out = m;
    return 0;
}

int model_create_unfilled(model **out, const model_config *cfg) {
    return create_table(out, cfg);
}

int model_create(model **out, const model_config *cfg) {
    model *m;
    if (create_table(&m, cfg) != 0) return -1;
    int64_t total = 0;
    for (int i = 0; i < m->n_params; i++) total += m->params[i].numel;
    m->storage = calloc((size_t)total, sizeof(real));
    if (!m->storage) {
        model_free(m);
        return err_set("out of memory: the model needs %lld values (%.1f GB)", (long long)total,
                       (double)total * sizeof(real) / 1e9);
    }
    real *p = m->storage;
    for (int i = 0; i < m->n_params; i++) {
        m->params[i].data = p;
        m->params[i].values = p;
        m->params[i].dtype = MODEL_DTYPE_REAL;
        p += m->params[i].numel;
    }
    *out = m;
    return 0;
}

void model_free(model *m) {
    if (!m) return;
    if (m->params)
        for (int i = 0; i < m->n_params; i++) {
            free(m->params[i].grad);
            free(m->params[i].owned);
        }
    free(m->params);
    if (m->layers)
        for (int l = 0; l < m->cfg.num_layers; l++) free(m->layers[l].moe.experts);
    free(m->layers);
    free(m->storage);
    safetensors_dir_close(m->mapped);
    free(m);
}

int model_layer_n_linears(const model_layer *L) {
    return 8 + (L->moe.experts ? 1 + 3 * L->moe.n_experts : 0);
}

model_linear *model_layer_linear(model_layer *L, int j) {
    model_linear *fixed[] = {&L->q, &L->k, &L->v, &L->qkv, &L->o, &L->gate, &L->up, &L->down};
    if (j < 0 || j >= model_layer_n_linears(L)) return NULL;
    if (j < 8) return fixed[j];
    return j == 8 ? &L->moe.router : &L->moe.experts[j - 9];
}

model_param *model_find_param(const model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

/* Weight init: SplitMix64 (util/rng.h), nothing secret drawn; the uniform is
 * the midpoint of its 2^-53 cell, (k + 0.5) / 2^53, so never 0 for log(). */
static double uniform01(uint64_t *s) {
    return ((rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Box–Muller. */
static double normal(uint64_t *s) {
    double u1 = uniform01(s), u2 = uniform01(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

uint64_t model_init_state(uint64_t seed) {
    return seed ^ 0x66656c6f7261ull; /* "fedlora" */
}

/* XIELUActivation's constructor values (transformers' activations.py, as
 * ApertusMLP makes it, in the config's dtype): alpha_p = log(expm1(0.8)),
 * alpha_n = log(expm1(0.8 − beta)), beta = 0.5, eps = −1e-6, computed in
 * fp32 (the values below are torch's fp32 results). */
static const struct {
    const char *suffix;
    double value;
} XIELU_INIT[] = {
    {"act_fn.alpha_p", 0.20338237285614014},
    {"act_fn.alpha_n", -1.0502256155014038},
    {"act_fn.beta", 0.5},
    {"act_fn.eps", -9.999999974752427e-07},
};

void model_init_param(const model_config *cfg, const model_param *p, uint64_t *s, real *v) {
    double std = cfg->initializer_range > 0 ? cfg->initializer_range : 0.02;
    int is_norm = strstr(p->name, "norm") || strstr(p->name, "ln_");
    for (size_t i = 0; i < sizeof XIELU_INIT / sizeof XIELU_INIT[0]; i++)
        if (ends_with(p->name, XIELU_INIT[i].suffix)) {
            v[0] = (real)XIELU_INIT[i].value;
            return;
        }
    if (ends_with(p->name, ".bias")) {
        memset(v, 0, (size_t)p->numel * sizeof(real));
    } else if (is_norm) {
        /* Gemma's norms compute x̂ · (1 + w): their weights start at 0 */
        real one = cfg->block.norm == MODEL_NORM_RMS_1P ? 0 : 1;
        for (int64_t j = 0; j < p->numel; j++) v[j] = one;
    } else {
        double sd = std;
        /* GPT-2 paper §2.3: residual projections scaled by 1/sqrt(2L). */
        if (cfg->arch == MODEL_ARCH_GPT2 && ends_with(p->name, "c_proj.weight"))
            sd = std / sqrt(2.0 * cfg->num_layers);
        for (int64_t j = 0; j < p->numel; j++) v[j] = (real)(sd * normal(s));
    }
}

void model_init_random(model *m, uint64_t seed) {
    uint64_t s = model_init_state(seed);
    for (int i = 0; i < m->n_params; i++)
        model_init_param(&m->cfg, &m->params[i], &s, m->params[i].data);
}

int model_param_writable(model_param *p) {
    if (p->data) return 0;
    real *d = malloc((size_t)p->numel * sizeof(real));
    if (!d) return err_set("out of memory for the values of %s", p->name);
    model_param_read(p, 0, p->numel, d);
    free(p->owned);
    p->owned = d;
    p->data = d;
    p->values = d;
    p->dtype = MODEL_DTYPE_REAL;
    return 0;
}

int model_param_want_grad(model_param *p) {
    if (p->grad) return 0;
    /* A weight held in its checkpoint's dtype becomes trainable: it needs
     * writable `real` values (widened exactly). */
    if (model_param_writable(p) != 0) return -1;
    p->grad = calloc((size_t)p->numel, sizeof(real));
    if (!p->grad) return err_set("out of memory for the gradient of %s", p->name);
    return 0;
}

int model_want_all_grads(model *m) {
    for (int i = 0; i < m->n_params; i++)
        if (!m->params[i].buffer && model_param_want_grad(&m->params[i]) != 0) return -1;
    return 0;
}

void model_zero_grads(model *m) {
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].grad)
            memset(m->params[i].grad, 0, (size_t)m->params[i].numel * sizeof(real));
}
