/* config.c — config.json of the supported Hugging Face families, with the
 * defaults transformers applies when a field is absent (the configuration_*.py
 * of each model), and the config.json we write back. The families' table,
 * the consistency checks and the presets are config_family.c.
 *
 * Deliberate differences from transformers: the fields that decide tensor
 * shapes (vocabulary, widths, depth, heads, and GPT-2's n_positions) are
 * required rather than defaulted, since a checkpoint whose shapes come from
 * library defaults is almost certainly not the checkpoint meant; and a value
 * this code does not implement (another activation, another RoPE type,
 * untied GPT-2 heads, …) is refused by name instead of being ignored. */
#include "model/config.h"

#include "model/config_json.h"
#include "model/config_table.h"
#include "util/err.h"
#include "util/fio.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_JSON_MAX (4u << 20) /* bytes; real config.json files are a few KB */

/* Which family: model_type decides, as in AutoConfig; every architectures
 * entry must be a supported causal LM of the same graph. */
static int parse_family(model_config *c, const src *s) {
    const char *mt;
    if (get_string(s, "model_type", NULL, &mt) != 0) return -1;
    json_t *archs = get(s, "architectures");
    if (archs && !json_is_array(archs))
        return err_set("%s: \"architectures\" must be a list of class names", s->where);
    int fi = -1;
    if (mt) {
        for (int i = 0; i < model_config_n_families; i++)
            if (strcmp(mt, model_config_families[i].model_type) == 0) fi = i;
        if (fi < 0)
            return err_set("%s: unsupported model_type '%s' (supported: " MODEL_CONFIG_TYPES ")",
                           s->where, mt);
    }
    size_t i;
    json_t *a;
    json_array_foreach(archs, i, a) {
        const char *name = json_is_string(a) ? json_string_value(a) : "(not a string)";
        int ai = -1;
        for (int k = 0; k < model_config_n_families; k++)
            if (strcmp(name, model_config_families[k].architecture) == 0) ai = k;
        if (ai < 0)
            return err_set("%s: unsupported architecture '%s' (supported: " MODEL_CONFIG_ARCHS ")",
                           s->where, name);
        if (fi < 0) fi = ai;
        if (model_config_families[ai].arch != model_config_families[fi].arch ||
            !model_config_same_block(&model_config_families[ai].block,
                                     &model_config_families[fi].block))
            return err_set("%s: architecture '%s' does not match model_type '%s'", s->where, name,
                           model_config_families[fi].model_type);
    }
    if (fi < 0)
        return err_set("%s: neither \"model_type\" nor \"architectures\" says what model this is",
                       s->where);
    return model_config_family(c, model_config_families[fi].family);
}

/* Qwen2 decides per layer: "sliding_attention" for layers >= max_window_layers
 * when use_sliding_window, unless config.json lists "layer_types". One window
 * for every layer, or none, is what the model implements. */
static int parse_qwen2_window(model_config *c, const src *s) {
    int use, window, max_window_layers, given;
    unsigned char sliding[MAX_LAYERS];
    if (get_bool(s, "use_sliding_window", 0, &use) != 0 || get_window(s, 4096, &window) != 0 ||
        get_int(s, "max_window_layers", 0, 28, 0, MAX_LAYERS, &max_window_layers) != 0 ||
        model_config_layer_types(s, c->num_layers, sliding, &given) != 0)
        return -1;
    if (!use) window = 0;
    int n_sliding = 0;
    if (given) {
        for (int l = 0; l < c->num_layers; l++) n_sliding += sliding[l];
    } else if (window) {
        n_sliding = c->num_layers > max_window_layers ? c->num_layers - max_window_layers : 0;
    }
    if (n_sliding && !window)
        return err_set("%s: sliding_attention layers but no sliding_window", s->where);
    if (n_sliding != 0 && n_sliding != c->num_layers)
        return err_set("%s: %d of %d layers use a sliding window and the others full attention; "
                       "only one kind for all layers is supported",
                       s->where, n_sliding, c->num_layers);
    c->sliding_window = n_sliding ? window : 0;
    return 0;
}

/* The defaults of each family's configuration_*.py where they differ
 * between families (kv 0: num_attention_heads; head_dim 0: hidden_size /
 * num_attention_heads; bos/eos −1: none; theta 0: 10000). */
static const struct {
    model_family family;
    int max_pos, bos, eos, kv, head_dim;
    double eps;
    const char *act;
    double theta;
} LLAMA_DEFAULTS[] = {
    {MODEL_FAMILY_LLAMA, 2048, 1, 2, 0, 0, 1e-6, "silu"},
    {MODEL_FAMILY_MISTRAL, 131072, 1, 2, 0, 0, 1e-6, "silu"},
    {MODEL_FAMILY_QWEN2, 32768, -1, -1, 0, 0, 1e-6, "silu"},
    {MODEL_FAMILY_QWEN3, 32768, -1, -1, 32, 128, 1e-6, "silu"},
    {MODEL_FAMILY_OLMO2, 2048, -1, 50279, 0, 0, 1e-5, "silu"},
    {MODEL_FAMILY_APERTUS, 65536, 1, 2, 0, 0, 1e-5, "xielu"},
    {MODEL_FAMILY_MIXTRAL, 131072, 1, 2, 8, 0, 1e-5, "silu", 1e6},
    {MODEL_FAMILY_GEMMA2, 8192, 2, 1, 4, 256, 1e-6, "gelu_pytorch_tanh"},
    {MODEL_FAMILY_GEMMA3, 131072, 2, 1, 4, 256, 1e-6, "gelu_pytorch_tanh"},
    {MODEL_FAMILY_PHI3, 4096, 1, 32000, 0, 0, 1e-5, "silu"},
};

static int is_gemma(model_family f) {
    return f == MODEL_FAMILY_GEMMA2 || f == MODEL_FAMILY_GEMMA3;
}

/* ApertusConfig's RoPE when config.json gives neither rope_scaling nor
 * rope_parameters: llama3 scaling, theta 1.2e7 (transformers 5 then ignores
 * a top-level rope_theta, where transformers 4 used it with that scaling; so
 * a rope_theta other than the default is refused as ambiguous). */
static int apertus_default_rope(model_config *c, const src *s, int *done) {
    json_t *r1 = get(s, "rope_scaling"), *r2 = get(s, "rope_parameters");
    *done = (!r1 || (json_is_object(r1) && json_object_size(r1) == 0)) &&
            (!r2 || (json_is_object(r2) && json_object_size(r2) == 0));
    if (!*done) return 0;
    double theta;
    if (get_double(s, "rope_theta", 0, 12000000.0, &theta) != 0) return -1;
    if (theta != 12000000.0)
        return err_set("%s: rope_theta %g without rope_scaling: transformers 4 and 5 read this "
                       "Apertus config differently; give \"rope_scaling\" (or "
                       "\"rope_parameters\") explicitly",
                       s->where, theta);
    model_config_apertus_rope(c);
    return 0;
}

/* An int that config.json may spell two ways (an attribute_map alias):
 * either name, both only when they agree. */
static int get_int_alias(const src *s, const char *key, const char *alias, int required, int def,
                         int lo, int hi, int *out) {
    int a, b;
    int has_a = get(s, key) != NULL, has_b = get(s, alias) != NULL;
    if (!has_b) return get_int(s, key, required, def, lo, hi, out);
    if (get_int(s, alias, 1, 0, lo, hi, &b) != 0) return -1;
    if (has_a) {
        if (get_int(s, key, 1, 0, lo, hi, &a) != 0) return -1;
        if (a != b)
            return err_set("%s: \"%s\" = %d and its alias \"%s\" = %d disagree", s->where, key, a,
                           alias, b);
    }
    *out = b;
    return 0;
}

/* MixtralConfig: the experts (num_local_experts decides tensor shapes, so
 * it is required), routing, the auxiliary loss, a window (absent: none). */
static int parse_mixtral(model_config *c, const src *s) {
    double jitter;
    json_t *w = json_object_get(s->obj, "sliding_window");
    if (get_int_alias(s, "num_local_experts", "num_experts", 1, 0, 1, MAX_EXPERTS,
                      &c->num_experts) != 0 ||
        get_int(s, "num_experts_per_tok", 0, 2, 1, MAX_EXPERTS_PER_TOK, &c->experts_per_tok) != 0 ||
        get_bool(s, "output_router_logits", 0, &c->router_aux_loss) != 0 ||
        get_double(s, "router_aux_loss_coef", 0, 0.001, &c->router_aux_loss_coef) != 0 ||
        get_double(s, "router_jitter_noise", 0, 0.0, &jitter) != 0 ||
        get_int(s, "sliding_window", 0, 0, 0, MAX_POSITIONS, &c->sliding_window) != 0)
        return -1;
    if (json_is_null(w)) c->sliding_window = 0;
    if (c->experts_per_tok > c->num_experts)
        return err_set("%s: num_experts_per_tok %d is more than num_local_experts %d", s->where,
                       c->experts_per_tok, c->num_experts);
    /* transformers multiplies the MoE input by U(1 - j, 1 + j) noise in training */
    if (jitter != 0.0)
        return err_set("%s: router_jitter_noise %g is not supported (random noise on the "
                       "experts' input in training); set it to 0",
                       s->where, jitter);
    return 0;
}

static int parse_llama(model_config *c, const src *s) {
    int d = 0;
    for (int i = 0; i < (int)(sizeof LLAMA_DEFAULTS / sizeof LLAMA_DEFAULTS[0]); i++)
        if (LLAMA_DEFAULTS[i].family == c->family) d = i;
    const char *want_act = LLAMA_DEFAULTS[d].act;
    if (get_int(s, "vocab_size", 1, 0, 1, MAX_VOCAB, &c->vocab_size) != 0 ||
        get_int(s, "hidden_size", 1, 0, 1, MAX_HIDDEN, &c->hidden_size) != 0 ||
        get_int(s, "intermediate_size", 1, 0, 1, MAX_FFN, &c->intermediate_size) != 0 ||
        get_int(s, "num_hidden_layers", 1, 0, 1, MAX_LAYERS, &c->num_layers) != 0 ||
        get_int(s, "num_attention_heads", 1, 0, 1, MAX_HEADS, &c->num_heads) != 0 ||
        get_int(s, "num_key_value_heads", 0,
                LLAMA_DEFAULTS[d].kv ? LLAMA_DEFAULTS[d].kv : c->num_heads, 1, MAX_HEADS,
                &c->num_kv_heads) != 0 ||
        get_int(s, "max_position_embeddings", 0, LLAMA_DEFAULTS[d].max_pos, 1, MAX_POSITIONS,
                &c->max_position) != 0 ||
        get_double(s, "rms_norm_eps", 0, LLAMA_DEFAULTS[d].eps, &c->norm_eps) != 0 ||
        get_bool(s, "tie_word_embeddings", is_gemma(c->family), &c->tie_embeddings) != 0 ||
        get_double(s, "initializer_range", 0, 0.02, &c->initializer_range) != 0 ||
        get_token(s, "bos_token_id", LLAMA_DEFAULTS[d].bos, &c->bos_token_id) != 0 ||
        get_token(s, "eos_token_id", LLAMA_DEFAULTS[d].eos, &c->eos_token_id) != 0)
        return -1;
    if (get(s, "head_dim") == NULL && !LLAMA_DEFAULTS[d].head_dim &&
        c->hidden_size % c->num_heads != 0)
        return err_set("%s: hidden_size %d is not a multiple of num_attention_heads %d and "
                       "head_dim is not given",
                       s->where, c->hidden_size, c->num_heads);
    int head_dim =
        LLAMA_DEFAULTS[d].head_dim ? LLAMA_DEFAULTS[d].head_dim : c->hidden_size / c->num_heads;
    if (get_int(s, "head_dim", 0, head_dim, 1, MAX_HEAD_DIM, &c->head_dim) != 0) return -1;
    /* Gemma's configs name it hidden_activation (transformers ignores a
     * hidden_act there); gelu_new is the same tanh GELU. */
    const char *act, *act_key = is_gemma(c->family) ? "hidden_activation" : "hidden_act";
    if (get_string(s, act_key, want_act, &act) != 0) return -1;
    if (strcmp(act, want_act) != 0 && !(is_gemma(c->family) && strcmp(act, "gelu_new") == 0))
        return err_set("%s: %s '%s' is not supported for %s (only '%s')", s->where, act_key, act,
                       model_config_families[model_config_family_index(c->family)].model_type,
                       want_act);
    int rope_done = 0;
    if (c->family == MODEL_FAMILY_APERTUS && apertus_default_rope(c, s, &rope_done) != 0) return -1;
    double theta = LLAMA_DEFAULTS[d].theta > 0 ? LLAMA_DEFAULTS[d].theta : 10000.0;
    if (!rope_done && model_config_parse_rope(c, s, theta) != 0) return -1;
    switch (c->family) {
        case MODEL_FAMILY_LLAMA:
            if (get_bool(s, "attention_bias", 0, &c->qkv_bias) != 0 ||
                get_bool(s, "mlp_bias", 0, &c->mlp_bias) != 0)
                return -1;
            c->o_bias = c->qkv_bias;
            break;
        case MODEL_FAMILY_MISTRAL:
            if (get_window(s, 4096, &c->sliding_window) != 0) return -1;
            break;
        case MODEL_FAMILY_QWEN2:
            c->qkv_bias = 1;
            if (parse_qwen2_window(c, s) != 0) return -1;
            break;
        case MODEL_FAMILY_QWEN3:
            /* attention_bias on q, k, v and o; layers' windows as Qwen2's */
            if (get_bool(s, "attention_bias", 0, &c->qkv_bias) != 0) return -1;
            c->o_bias = c->qkv_bias;
            if (parse_qwen2_window(c, s) != 0) return -1;
            break;
        case MODEL_FAMILY_OLMO2:
        case MODEL_FAMILY_APERTUS:
            if (get_bool(s, "attention_bias", 0, &c->qkv_bias) != 0) return -1;
            c->o_bias = c->qkv_bias;
            break;
        case MODEL_FAMILY_MIXTRAL:
            if (parse_mixtral(c, s) != 0) return -1;
            break;
        case MODEL_FAMILY_GEMMA2:
        case MODEL_FAMILY_GEMMA3:
            if (model_config_parse_gemma(c, s) != 0) return -1;
            break;
        case MODEL_FAMILY_PHI3:
            /* one window for every layer (Phi3Model's mask), none by default */
            if (get_window(s, 0, &c->sliding_window) != 0) return -1;
            break;
        default:
            break;
    }
    return 0;
}

static int parse_gpt2(model_config *c, const src *s) {
    int scale_weights, inverse_layer_idx, cross;
    const char *act;
    if (get_int(s, "vocab_size", 1, 0, 1, MAX_VOCAB, &c->vocab_size) != 0 ||
        get_int(s, "n_embd", 1, 0, 1, MAX_HIDDEN, &c->hidden_size) != 0 ||
        get_int(s, "n_layer", 1, 0, 1, MAX_LAYERS, &c->num_layers) != 0 ||
        get_int(s, "n_head", 1, 0, 1, MAX_HEADS, &c->num_heads) != 0 ||
        get_int(s, "n_positions", 1, 0, 1, MAX_POSITIONS, &c->max_position) != 0 ||
        get_double(s, "layer_norm_epsilon", 0, 1e-5, &c->norm_eps) != 0 ||
        get_double(s, "initializer_range", 0, 0.02, &c->initializer_range) != 0 ||
        get_bool(s, "tie_word_embeddings", 1, &c->tie_embeddings) != 0 ||
        get_bool(s, "scale_attn_weights", 1, &scale_weights) != 0 ||
        get_bool(s, "scale_attn_by_inverse_layer_idx", 0, &inverse_layer_idx) != 0 ||
        get_bool(s, "add_cross_attention", 0, &cross) != 0 ||
        get_string(s, "activation_function", "gelu_new", &act) != 0 ||
        get_token(s, "bos_token_id", 50256, &c->bos_token_id) != 0 ||
        get_token(s, "eos_token_id", 50256, &c->eos_token_id) != 0)
        return -1;
    if (c->hidden_size % c->num_heads != 0)
        return err_set("%s: n_embd %d is not a multiple of n_head %d", s->where, c->hidden_size,
                       c->num_heads);
    if (get_int(s, "n_inner", 0, 4 * c->hidden_size, 1, MAX_FFN, &c->intermediate_size) != 0)
        return -1;
    /* Both are GELU's tanh approximation (transformers' NewGELU and
     * nn.GELU(approximate="tanh")). */
    if (strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0)
        return err_set("%s: activation_function '%s' is not supported ('gelu_new' or "
                       "'gelu_pytorch_tanh')",
                       s->where, act);
    if (!c->tie_embeddings)
        return err_set("%s: tie_word_embeddings false is not supported for GPT-2 (lm_head is "
                       "always transformer.wte)",
                       s->where);
    if (!scale_weights) return err_set("%s: scale_attn_weights false is not supported", s->where);
    if (inverse_layer_idx)
        return err_set("%s: scale_attn_by_inverse_layer_idx true is not supported", s->where);
    if (cross) return err_set("%s: add_cross_attention true is not supported", s->where);
    c->num_kv_heads = c->num_heads;
    c->head_dim = c->hidden_size / c->num_heads;
    c->qkv_bias = c->o_bias = c->mlp_bias = 1; /* Conv1D layers always have a bias */
    return 0;
}

/* BloomConfig (configuration_bloom.py); its attribute_map lets config.json
 * say n_layer or num_hidden_layers, n_head or num_attention_heads, and old
 * checkpoints say n_embed for hidden_size. ALiBi sets no context limit;
 * max_position_embeddings (not a BloomConfig field, kept by transformers
 * and written by model_config_save) bounds generation, by default BLOOM's
 * and Poro's training length, 2048. */
static int parse_bloom(model_config *c, const src *s) {
    int post_ln;
    if (get_int(s, "vocab_size", 1, 0, 1, MAX_VOCAB, &c->vocab_size) != 0 ||
        get_int_alias(s, "hidden_size", "n_embed", 1, 0, 1, MAX_HIDDEN, &c->hidden_size) != 0 ||
        get_int_alias(s, "n_layer", "num_hidden_layers", 1, 0, 1, MAX_LAYERS, &c->num_layers) !=
            0 ||
        get_int_alias(s, "n_head", "num_attention_heads", 1, 0, 1, MAX_HEADS, &c->num_heads) != 0 ||
        get_int(s, "max_position_embeddings", 0, 2048, 1, MAX_POSITIONS, &c->max_position) != 0 ||
        get_double(s, "layer_norm_epsilon", 0, 1e-5, &c->norm_eps) != 0 ||
        get_double(s, "initializer_range", 0, 0.02, &c->initializer_range) != 0 ||
        get_bool(s, "tie_word_embeddings", 1, &c->tie_embeddings) != 0 ||
        get_bool(s, "apply_residual_connection_post_layernorm", 0, &post_ln) != 0 ||
        get_token(s, "bos_token_id", 1, &c->bos_token_id) != 0 ||
        get_token(s, "eos_token_id", 2, &c->eos_token_id) != 0)
        return -1;
    if (c->hidden_size % c->num_heads != 0)
        return err_set("%s: hidden_size %d is not a multiple of n_head %d", s->where,
                       c->hidden_size, c->num_heads);
    if (post_ln)
        return err_set("%s: apply_residual_connection_post_layernorm true is not supported (the "
                       "residual taken after the norm)",
                       s->where);
    if (c->hidden_size > MAX_FFN / 4)
        return err_set("%s: hidden_size %d is too large (its MLP, 4 * hidden_size, exceeds %d)",
                       s->where, c->hidden_size, MAX_FFN);
    /* pretraining_tp and slow_but_exact change only the order of one sum
     * (dense and dense_4h_to_h summed in tp slices): accepted as is. */
    c->num_kv_heads = c->num_heads;
    c->head_dim = c->hidden_size / c->num_heads;
    c->intermediate_size = 4 * c->hidden_size;
    c->qkv_bias = c->o_bias = c->mlp_bias = 1;
    return 0;
}

/* "dtype" (transformers >= 5) or "torch_dtype" (older). */
static int parse_dtype(model_config *c, const src *s) {
    const char *d;
    if (get_string(s, "torch_dtype", "float32", &d) != 0 || get_string(s, "dtype", d, &d) != 0)
        return -1;
    if (strcmp(d, "float32") != 0 && strcmp(d, "bfloat16") != 0 && strcmp(d, "float16") != 0)
        return err_set("%s: dtype '%s' is not supported (float32, bfloat16, float16)", s->where, d);
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", d);
    return 0;
}

int model_config_parse(model_config *cfg, const char *json, size_t len, const char *where) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return err_set("%s: not valid JSON: %s (line %d, column %d)", where, je.text, je.line,
                       je.column);
    int rc = -1;
    src s = {root, where, ""};
    if (!json_is_object(root)) {
        err_set("%s: not a JSON object", where);
        goto out;
    }
    if (parse_family(cfg, &s) != 0 || parse_dtype(cfg, &s) != 0) goto out;
    if ((cfg->arch == MODEL_ARCH_GPT2    ? parse_gpt2(cfg, &s)
         : cfg->arch == MODEL_ARCH_BLOOM ? parse_bloom(cfg, &s)
                                         : parse_llama(cfg, &s)) != 0)
        goto out;
    rc = model_config_check(cfg, where);
out:
    json_decref(root);
    return rc;
}

int model_config_load(model_config *cfg, const char *path) {
    char *text;
    size_t len;
    if (fio_read_all(path, CONFIG_JSON_MAX, &text, &len) != 0) return -1;
    int rc = model_config_parse(cfg, text, len, path);
    free(text);
    return rc;
}

/* ---- writing ---------------------------------------------------------------------- */

/* The fewest significant digits (6 to 17) that print every value back
 * exactly, so 1e-05 is written "1e-05" and not "1.0000000000000001e-05". */
static int real_precision(const double *v, int n) {
    for (int p = 6; p < 17; p++) {
        int ok = 1;
        for (int i = 0; i < n && ok; i++) {
            char buf[64];
            snprintf(buf, sizeof buf, "%.*g", p, v[i]);
            ok = strtod(buf, NULL) == v[i];
        }
        if (ok) return p;
    }
    return 17;
}

static json_t *token_json(int id) {
    return id >= 0 ? json_integer(id) : json_null();
}

/* Sets key to a new value; a NULL value (allocation failure) is reported by
 * json_object_set_new's status. */
#define SET(obj, key, val) bad |= json_object_set_new(obj, key, val)

int model_config_save(const model_config *c, const char *path) {
    if (model_config_check(c, path) != 0) return -1;
    const int fi = model_config_family_index(c->family);
    json_t *o = json_object(), *archs = json_array();
    int bad = !o || !archs;
    double reals[CONFIG_MAX_REALS];
    int n_reals = 0;
    if (!bad) {
        bad |= json_array_append_new(archs, json_string(model_config_families[fi].architecture));
        SET(o, "architectures", archs);
        SET(o, "model_type", json_string(model_config_families[fi].model_type));
        SET(o, "vocab_size", json_integer(c->vocab_size));
        SET(o, "initializer_range", json_real(c->initializer_range));
        SET(o, "bos_token_id", token_json(c->bos_token_id));
        SET(o, "eos_token_id", token_json(c->eos_token_id));
        SET(o, "tie_word_embeddings", json_boolean(c->tie_embeddings));
        SET(o, "torch_dtype", json_string(c->torch_dtype));
        SET(o, "use_cache", json_true());
        reals[n_reals++] = c->initializer_range;
        reals[n_reals++] = c->norm_eps;
    }
    if (!bad && c->arch == MODEL_ARCH_GPT2) {
        SET(o, "n_embd", json_integer(c->hidden_size));
        SET(o, "n_layer", json_integer(c->num_layers));
        SET(o, "n_head", json_integer(c->num_heads));
        SET(o, "n_positions", json_integer(c->max_position));
        SET(o, "n_inner",
            c->intermediate_size == 4 * c->hidden_size ? json_null()
                                                       : json_integer(c->intermediate_size));
        SET(o, "activation_function", json_string("gelu_new"));
        SET(o, "layer_norm_epsilon", json_real(c->norm_eps));
        SET(o, "scale_attn_weights", json_true());
        SET(o, "scale_attn_by_inverse_layer_idx", json_false());
        SET(o, "reorder_and_upcast_attn", json_false());
    } else if (!bad && c->arch == MODEL_ARCH_BLOOM) {
        SET(o, "hidden_size", json_integer(c->hidden_size));
        SET(o, "n_layer", json_integer(c->num_layers));
        SET(o, "n_head", json_integer(c->num_heads));
        SET(o, "max_position_embeddings", json_integer(c->max_position));
        SET(o, "layer_norm_epsilon", json_real(c->norm_eps));
        SET(o, "apply_residual_connection_post_layernorm", json_false());
        SET(o, "hidden_dropout", json_real(0.0));
        SET(o, "attention_dropout", json_real(0.0));
        SET(o, "pretraining_tp", json_integer(1));
        SET(o, "slow_but_exact", json_false());
    } else if (!bad) {
        SET(o, "hidden_size", json_integer(c->hidden_size));
        SET(o, "intermediate_size", json_integer(c->intermediate_size));
        SET(o, "num_hidden_layers", json_integer(c->num_layers));
        SET(o, "num_attention_heads", json_integer(c->num_heads));
        SET(o, "num_key_value_heads", json_integer(c->num_kv_heads));
        SET(o, "head_dim", json_integer(c->head_dim));
        SET(o, "max_position_embeddings", json_integer(c->max_position));
        SET(o, "rms_norm_eps", json_real(c->norm_eps));
        if (is_gemma(c->family))
            SET(o, "hidden_activation", json_string("gelu_pytorch_tanh"));
        else
            SET(o, "hidden_act", json_string(c->block.act == MODEL_ACT_XIELU ? "xielu" : "silu"));
        SET(o, "attention_dropout", json_real(0.0));
        if (model_config_write_rope(o, c, reals, &n_reals) != 0) bad = 1;
        model_family f = c->family;
        if (f == MODEL_FAMILY_LLAMA || f == MODEL_FAMILY_QWEN3 || f == MODEL_FAMILY_OLMO2 ||
            f == MODEL_FAMILY_APERTUS)
            SET(o, "attention_bias", json_boolean(c->qkv_bias));
        if (f == MODEL_FAMILY_LLAMA) SET(o, "mlp_bias", json_boolean(c->mlp_bias));
        if (f == MODEL_FAMILY_MIXTRAL) {
            SET(o, "num_local_experts", json_integer(c->num_experts));
            SET(o, "num_experts_per_tok", json_integer(c->experts_per_tok));
            SET(o, "output_router_logits", json_boolean(c->router_aux_loss));
            SET(o, "router_aux_loss_coef", json_real(c->router_aux_loss_coef));
            SET(o, "router_jitter_noise", json_real(0.0));
            reals[n_reals++] = c->router_aux_loss_coef;
        }
        if (f == MODEL_FAMILY_MISTRAL || f == MODEL_FAMILY_QWEN2 || f == MODEL_FAMILY_QWEN3 ||
            f == MODEL_FAMILY_MIXTRAL)
            SET(o, "sliding_window",
                c->sliding_window ? json_integer(c->sliding_window) : json_null());
        if (f == MODEL_FAMILY_PHI3)
            SET(o, "sliding_window",
                c->sliding_window ? json_integer(c->sliding_window) : json_null());
        if (is_gemma(f) && model_config_write_gemma(o, c, reals, &n_reals) != 0) bad = 1;
        if (f == MODEL_FAMILY_QWEN2 || f == MODEL_FAMILY_QWEN3) {
            /* Qwen2's sliding layers are those >= max_window_layers: 0 is all. */
            SET(o, "use_sliding_window", json_boolean(c->sliding_window > 0));
            SET(o, "max_window_layers", json_integer(c->sliding_window ? 0 : c->num_layers));
        }
    }
    char *text = NULL;
    if (!bad)
        text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS |
                                 JSON_REAL_PRECISION(real_precision(reals, n_reals)));
    json_decref(o);
    if (!text) return err_set("out of memory writing %s", path);
    size_t len = strlen(text);
    char *withnl = realloc(text, len + 2);
    if (!withnl) {
        free(text);
        return err_set("out of memory writing %s", path);
    }
    withnl[len] = '\n';
    int rc = fio_write_atomic(path, withnl, len + 1, 0644);
    free(withnl);
    return rc;
}
