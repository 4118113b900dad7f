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

#include "model/config_table.h"
#include "util/err.h"
#include "util/fio.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_JSON_MAX (4u << 20) /* bytes; real config.json files are a few KB */

/* ---- reading fields ------------------------------------------------------------ */

/* A JSON object being read, and how to name it in messages. */
typedef struct {
    json_t *obj;
    const char *where;  /* the file */
    const char *prefix; /* "" or "rope_scaling." for a nested object */
} src;

/* The member, or NULL when absent or null: transformers treats both as "use
 * the default" for every field read through here. */
static json_t *get(const src *s, const char *key) {
    json_t *v = json_object_get(s->obj, key);
    return json_is_null(v) ? NULL : v;
}

static int get_int(const src *s, const char *key, int required, int def, int lo, int hi, int *out) {
    json_t *v = get(s, key);
    if (!v) {
        if (required)
            return err_set("%s: required field \"%s%s\" is missing", s->where, s->prefix, key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return err_set("%s: \"%s%s\" must be an integer", s->where, s->prefix, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return err_set("%s: \"%s%s\" = %lld is out of the supported range [%d, %d]", s->where,
                       s->prefix, key, (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

static int get_double(const src *s, const char *key, int required, double def, double *out) {
    json_t *v = get(s, key);
    if (!v) {
        if (required)
            return err_set("%s: required field \"%s%s\" is missing", s->where, s->prefix, key);
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return err_set("%s: \"%s%s\" must be a number", s->where, s->prefix, key);
    *out = json_number_value(v);
    return 0;
}

static int get_bool(const src *s, const char *key, int def, int *out) {
    json_t *v = get(s, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return err_set("%s: \"%s%s\" must be true or false", s->where, s->prefix, key);
    *out = json_is_true(v);
    return 0;
}

static int get_string(const src *s, const char *key, const char *def, const char **out) {
    json_t *v = get(s, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_string(v))
        return err_set("%s: \"%s%s\" must be a string", s->where, s->prefix, key);
    *out = json_string_value(v);
    return 0;
}

/* bos/eos: absent -> the family default, null -> none (-1), a list (Llama 3
 * lists several end tokens) -> its first entry. */
static int get_token(const src *s, const char *key, int def, int *out) {
    json_t *v = json_object_get(s->obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (json_is_array(v)) v = json_array_size(v) ? json_array_get(v, 0) : json_null();
    if (json_is_null(v)) {
        *out = -1;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > MAX_VOCAB)
        return err_set("%s: \"%s\" must be a token id, a list of them, or null", s->where, key);
    *out = (int)json_integer_value(v);
    return 0;
}

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

/* RoPE: transformers >= 5 writes "rope_parameters" {"rope_type", "rope_theta",
 * …}; older versions "rope_theta" and "rope_scaling" {"rope_type" or "type",
 * …}. As transformers 5 does, a non-empty rope_scaling wins and rope_theta
 * fills in a missing one. Only the default RoPE and Llama 3.1's "llama3"
 * frequency scaling are implemented. */
static int parse_rope(model_config *c, const src *s) {
    json_t *r = get(s, "rope_scaling");
    const char *name = "rope_scaling";
    if (!r || (json_is_object(r) && json_object_size(r) == 0)) {
        r = get(s, "rope_parameters");
        name = "rope_parameters";
    }
    if (r && !json_is_object(r))
        return err_set("%s: \"%s\" must be an object or null", s->where, name);
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%s.", name);
    src rs = {r, s->where, prefix}; /* jansson reads a NULL object as empty */
    const char *key;
    json_t *v;
    json_object_foreach(r, key, v) {
        if (json_is_object(v))
            return err_set("%s: per-layer-type \"%s\" ('%s') is not supported", s->where, name,
                           key);
    }
    double top_theta, partial;
    const char *type;
    if (get_double(s, "rope_theta", 0, 10000.0, &top_theta) != 0 ||
        get_double(&rs, "rope_theta", 0, top_theta, &c->rope_theta) != 0 ||
        get_string(&rs, "type", "default", &type) != 0 ||
        get_string(&rs, "rope_type", type, &type) != 0)
        return -1;
    if (get_double(s, "partial_rotary_factor", 0, 1.0, &partial) != 0 ||
        get_double(&rs, "partial_rotary_factor", 0, partial, &partial) != 0)
        return -1;
    if (partial != 1.0) {
        return err_set("%s: partial_rotary_factor %g is not supported (RoPE over the whole head "
                       "only)",
                       s->where, partial);
    }
    if (strcmp(type, "default") == 0) {
        c->rope_llama3 = 0;
    } else if (strcmp(type, "llama3") == 0) {
        c->rope_llama3 = 1;
        if (get_double(&rs, "factor", 1, 0, &c->rope_factor) != 0 ||
            get_double(&rs, "low_freq_factor", 1, 0, &c->rope_low_freq_factor) != 0 ||
            get_double(&rs, "high_freq_factor", 1, 0, &c->rope_high_freq_factor) != 0 ||
            get_int(&rs, "original_max_position_embeddings", 0, c->max_position, 1, MAX_POSITIONS,
                    &c->rope_original_max_position) != 0)
            return -1;
    } else {
        return err_set("%s: rope type '%s' is not supported (supported: the default RoPE, "
                       "'llama3')",
                       s->where, type);
    }
    return 0;
}

/* Qwen2 decides per layer: "sliding_attention" for layers >= max_window_layers
 * when use_sliding_window, unless config.json lists "layer_types". One window
 * for every layer, or none, is what the model implements. */
static int parse_qwen2_window(model_config *c, const src *s) {
    int use, window, max_window_layers;
    json_t *w = json_object_get(s->obj, "sliding_window");
    if (get_bool(s, "use_sliding_window", 0, &use) != 0 ||
        get_int(s, "sliding_window", 0, 4096, 0, MAX_POSITIONS, &window) != 0 ||
        get_int(s, "max_window_layers", 0, 28, 0, MAX_LAYERS, &max_window_layers) != 0)
        return -1;
    if (!use || json_is_null(w)) window = 0;
    int n_sliding = 0;
    json_t *types = get(s, "layer_types");
    if (types) {
        if (!json_is_array(types) || json_array_size(types) != (size_t)c->num_layers)
            return err_set("%s: \"layer_types\" must list one type per layer (%d)", s->where,
                           c->num_layers);
        for (int l = 0; l < c->num_layers; l++) {
            const char *t = json_string_value(json_array_get(types, (size_t)l));
            if (t && strcmp(t, "sliding_attention") == 0)
                n_sliding++;
            else if (!t || strcmp(t, "full_attention") != 0)
                return err_set("%s: layer_types[%d] is not 'full_attention' or "
                               "'sliding_attention'",
                               s->where, l);
        }
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
 * num_attention_heads; bos/eos −1: none). */
static const struct {
    model_family family;
    int max_pos, bos, eos, kv, head_dim;
    double eps;
    const char *act;
} LLAMA_DEFAULTS[] = {
    {MODEL_FAMILY_LLAMA, 2048, 1, 2, 0, 0, 1e-6, "silu"},
    {MODEL_FAMILY_MISTRAL, 131072, 1, 2, 0, 0, 1e-6, "silu"},
    {MODEL_FAMILY_QWEN2, 32768, -1, -1, 0, 0, 1e-6, "silu"},
    {MODEL_FAMILY_QWEN3, 32768, -1, -1, 32, 128, 1e-6, "silu"},
    {MODEL_FAMILY_OLMO2, 2048, -1, 50279, 0, 0, 1e-5, "silu"},
    {MODEL_FAMILY_APERTUS, 65536, 1, 2, 0, 0, 1e-5, "xielu"},
};

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
        get_bool(s, "tie_word_embeddings", 0, &c->tie_embeddings) != 0 ||
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
    const char *act;
    if (get_string(s, "hidden_act", want_act, &act) != 0) return -1;
    if (strcmp(act, want_act) != 0)
        return err_set("%s: hidden_act '%s' is not supported for %s (only '%s')", s->where, act,
                       model_config_families[model_config_family_index(c->family)].model_type,
                       want_act);
    int rope_done = 0;
    if (c->family == MODEL_FAMILY_APERTUS && apertus_default_rope(c, s, &rope_done) != 0) return -1;
    if (!rope_done && parse_rope(c, s) != 0) return -1;
    switch (c->family) {
        case MODEL_FAMILY_LLAMA:
            if (get_bool(s, "attention_bias", 0, &c->qkv_bias) != 0 ||
                get_bool(s, "mlp_bias", 0, &c->mlp_bias) != 0)
                return -1;
            c->o_bias = c->qkv_bias;
            break;
        case MODEL_FAMILY_MISTRAL: {
            json_t *w = json_object_get(s->obj, "sliding_window");
            if (get_int(s, "sliding_window", 0, 4096, 0, MAX_POSITIONS, &c->sliding_window) != 0)
                return -1;
            if (json_is_null(w)) c->sliding_window = 0;
            break;
        }
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
    if ((cfg->arch == MODEL_ARCH_GPT2 ? parse_gpt2(cfg, &s) : parse_llama(cfg, &s)) != 0) goto out;
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
    double reals[8];
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
    } else if (!bad) {
        SET(o, "hidden_size", json_integer(c->hidden_size));
        SET(o, "intermediate_size", json_integer(c->intermediate_size));
        SET(o, "num_hidden_layers", json_integer(c->num_layers));
        SET(o, "num_attention_heads", json_integer(c->num_heads));
        SET(o, "num_key_value_heads", json_integer(c->num_kv_heads));
        SET(o, "head_dim", json_integer(c->head_dim));
        SET(o, "max_position_embeddings", json_integer(c->max_position));
        SET(o, "rms_norm_eps", json_real(c->norm_eps));
        SET(o, "hidden_act", json_string(c->block.act == MODEL_ACT_XIELU ? "xielu" : "silu"));
        SET(o, "attention_dropout", json_real(0.0));
        /* The legacy spelling (rope_theta + rope_scaling) is read by
         * transformers 4 and converted by transformers 5. */
        SET(o, "rope_theta", json_real(c->rope_theta));
        reals[n_reals++] = c->rope_theta;
        if (c->rope_llama3) {
            json_t *r = json_object();
            if (!r) bad = 1;
            SET(o, "rope_scaling", r);
            if (r) {
                SET(r, "rope_type", json_string("llama3"));
                SET(r, "factor", json_real(c->rope_factor));
                SET(r, "low_freq_factor", json_real(c->rope_low_freq_factor));
                SET(r, "high_freq_factor", json_real(c->rope_high_freq_factor));
                SET(r, "original_max_position_embeddings",
                    json_integer(c->rope_original_max_position));
            }
            reals[n_reals++] = c->rope_factor;
            reals[n_reals++] = c->rope_low_freq_factor;
            reals[n_reals++] = c->rope_high_freq_factor;
        } else if (c->family == MODEL_FAMILY_APERTUS) {
            /* null would mean Apertus's llama3 default (apertus_default_rope) */
            json_t *r = json_pack("{s:s}", "rope_type", "default");
            if (!r) bad = 1;
            SET(o, "rope_scaling", r);
        } else {
            SET(o, "rope_scaling", json_null());
        }
        model_family f = c->family;
        if (f == MODEL_FAMILY_LLAMA || f == MODEL_FAMILY_QWEN3 || f == MODEL_FAMILY_OLMO2 ||
            f == MODEL_FAMILY_APERTUS)
            SET(o, "attention_bias", json_boolean(c->qkv_bias));
        if (f == MODEL_FAMILY_LLAMA) SET(o, "mlp_bias", json_boolean(c->mlp_bias));
        if (f == MODEL_FAMILY_MISTRAL || f == MODEL_FAMILY_QWEN2 || f == MODEL_FAMILY_QWEN3)
            SET(o, "sliding_window",
                c->sliding_window ? json_integer(c->sliding_window) : json_null());
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
