/* config_attn.c — config.json's attention options beyond the block's shape,
 * read and written as transformers does: RoPE in all its spellings
 * (rope_parameters, rope_scaling, rope_theta; llama3, linear and LongRoPE
 * scaling, partial rotation; Gemma 3's RoPE per layer type and its legacy
 * rope_local_base_freq), and Gemma's per-layer windows (layer_types,
 * sliding_window_pattern), score scale and soft-capping. config.c calls
 * these from its reader and writer. */
#include "model/config_json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- RoPE ---------------------------------------------------------------------------- */

/* A list of n positive numbers (LongRoPE's factors) into out. */
static int get_factors(const src *s, const char *key, int n, double *out) {
    json_t *v = get(s, key);
    if (!v) return err_set("%s: LongRoPE needs \"%s%s\"", s->where, s->prefix, key);
    if (!json_is_array(v) || json_array_size(v) != (size_t)n)
        return err_set("%s: \"%s%s\" must list %d numbers (one per rotated pair of dimensions)",
                       s->where, s->prefix, key, n);
    for (int i = 0; i < n; i++) {
        json_t *x = json_array_get(v, (size_t)i);
        if (!json_is_number(x) || !(json_number_value(x) > 0) || !isfinite(json_number_value(x)))
            return err_set("%s: \"%s%s\"[%d] must be a number > 0", s->where, s->prefix, key, i);
        out[i] = json_number_value(x);
    }
    return 0;
}

/* One RoPE object r (named name in messages; NULL = empty) into c: its
 * rope_theta (default theta) and its type with that type's parameters. */
static int rope_params(model_config *c, const src *s, json_t *r, const char *name, double theta) {
    char prefix[48];
    snprintf(prefix, sizeof prefix, "%s.", name);
    src rs = {r, s->where, prefix}; /* jansson reads a NULL object as empty */
    const char *type = "default";
    if (get_double(&rs, "rope_theta", 0, theta, &c->rope_theta) != 0 ||
        get_string(&rs, "type", "default", &type) != 0 ||
        get_string(&rs, "rope_type", type, &type) != 0)
        return -1;
    int phi3 = c->family == MODEL_FAMILY_PHI3;
    /* transformers' Phi3Config reads "su" and "yarn" as LongRoPE */
    int longrope = strcmp(type, "longrope") == 0 ||
                   (phi3 && (strcmp(type, "su") == 0 || strcmp(type, "yarn") == 0));
    if (strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "llama3") == 0) {
        c->rope_llama3 = 1;
        return get_double(&rs, "factor", 1, 0, &c->rope_factor) != 0 ||
                       get_double(&rs, "low_freq_factor", 1, 0, &c->rope_low_freq_factor) != 0 ||
                       get_double(&rs, "high_freq_factor", 1, 0, &c->rope_high_freq_factor) != 0 ||
                       get_int(&rs, "original_max_position_embeddings", 0, c->max_position, 1,
                               MAX_POSITIONS, &c->rope_original_max_position) != 0
                   ? -1
                   : 0;
    }
    if (strcmp(type, "linear") == 0) {
        c->rope_linear = 1;
        return get_double(&rs, "factor", 1, 0, &c->rope_factor);
    }
    if (longrope && phi3) {
        /* Phi3Config's own original_max_position_embeddings (default 4096)
         * wins over the one in the rope object (standardize_rope_params). */
        int n = model_config_rope_dim(c) / 2;
        if (n > MODEL_MAX_ROPE_FACTORS)
            return err_set("%s: LongRoPE over %d rotary dimensions: at most %d are supported",
                           s->where, 2 * n, 2 * MODEL_MAX_ROPE_FACTORS);
        c->rope_longrope = 1;
        return get_factors(&rs, "short_factor", n, c->rope_short) != 0 ||
                       get_factors(&rs, "long_factor", n, c->rope_long) != 0 ||
                       get_double(&rs, "factor", 0, 0, &c->rope_factor) != 0 ||
                       get_double(&rs, "attention_factor", 0, 0, &c->rope_attn_factor) != 0 ||
                       get_int(s, "original_max_position_embeddings", 0, 4096, 1, MAX_POSITIONS,
                               &c->rope_original_max_position) != 0
                   ? -1
                   : 0;
    }
    if (longrope) return err_set("%s: rope type '%s' is supported for phi3 only", s->where, type);
    return err_set("%s: rope type '%s' is not supported (supported: the default RoPE, 'llama3', "
                   "'linear'; 'longrope' for phi3)",
                   s->where, type);
}

/* The RoPE object transformers uses: a non-empty rope_scaling wins over
 * rope_parameters (transformers 5's order); NULL when neither is given. */
static int rope_object(const src *s, json_t **r, const char **name) {
    *r = get(s, "rope_scaling");
    *name = "rope_scaling";
    if (!*r || (json_is_object(*r) && json_object_size(*r) == 0)) {
        *r = get(s, "rope_parameters");
        *name = "rope_parameters";
    }
    if (*r && !json_is_object(*r))
        return err_set("%s: \"%s\" must be an object or null", s->where, *name);
    return 0;
}

/* partial_rotary_factor (top level or in the RoPE object): Phi-3 rotates the
 * first int(D · factor) dimensions of each head; others rotate all. */
static int rope_partial(model_config *c, const src *s, json_t *r, const char *name) {
    char prefix[48];
    snprintf(prefix, sizeof prefix, "%s.", name);
    src rs = {r, s->where, prefix};
    double partial;
    if (get_double(s, "partial_rotary_factor", 0, 1.0, &partial) != 0 ||
        get_double(&rs, "partial_rotary_factor", 0, partial, &partial) != 0)
        return -1;
    if (partial == 1.0) return 0;
    if (c->family != MODEL_FAMILY_PHI3)
        return err_set("%s: partial_rotary_factor %g is not supported for this family (RoPE over "
                       "the whole head only)",
                       s->where, partial);
    double dims = c->head_dim * partial;
    if (!(partial > 0 && partial < 1) || (int)dims < 2 || (int)dims % 2 != 0)
        return err_set("%s: partial_rotary_factor %g rotates %g of %d dimensions; it must rotate "
                       "an even number of them, at least 2",
                       s->where, partial, dims, c->head_dim);
    c->rope_dim = (int)dims; /* transformers: int(head_dim * partial_rotary_factor) */
    return 0;
}

/* Gemma 3: "rope_parameters" {"sliding_attention": {…}, "full_attention": {…}}
 * (transformers 5), or rope_theta (global, default 1e6), rope_local_base_freq
 * (default 1e4) and rope_scaling (the global layers'). As
 * Gemma3TextConfig.convert_rope_params_to_dict, rope_scaling updates the
 * full_attention entry; the sliding layers' RoPE must be the default one. */
static int gemma3_rope(model_config *c, const src *s) {
    json_t *rp = get(s, "rope_parameters"), *rs = get(s, "rope_scaling");
    if ((rp && !json_is_object(rp)) || (rs && !json_is_object(rs)))
        return err_set("%s: \"rope_parameters\" and \"rope_scaling\" must be objects or null",
                       s->where);
    json_t *full = json_object_get(rp, "full_attention");
    json_t *sliding = json_object_get(rp, "sliding_attention");
    if (rp && json_object_size(rp) > 0 && !full && !sliding)
        return err_set("%s: Gemma 3's \"rope_parameters\" must be given per layer type "
                       "(\"full_attention\", \"sliding_attention\")",
                       s->where);
    const char *key;
    json_t *v;
    json_object_foreach(rp, key, v) {
        if (strcmp(key, "full_attention") != 0 && strcmp(key, "sliding_attention") != 0)
            return err_set("%s: \"rope_parameters\": unknown layer type '%s'", s->where, key);
        if (!json_is_object(v) && !json_is_null(v))
            return err_set("%s: \"rope_parameters.%s\" must be an object or null", s->where, key);
    }
    double theta, local;
    if (get_double(s, "rope_theta", 0, 1000000.0, &theta) != 0 ||
        get_double(s, "rope_local_base_freq", 0, 10000.0, &local) != 0)
        return -1;
    json_t *merged = json_is_object(full) ? json_copy(full) : json_object();
    if (!merged || (rs && json_object_update(merged, rs) != 0)) {
        json_decref(merged);
        return err_set("out of memory reading %s", s->where);
    }
    int rc = rope_params(c, s, merged, "rope_parameters.full_attention", theta);
    json_decref(merged);
    if (rc != 0) return -1;
    model_config local_cfg = *c;
    local_cfg.rope_llama3 = local_cfg.rope_linear = 0;
    if (rope_params(&local_cfg, s, json_is_object(sliding) ? sliding : NULL,
                    "rope_parameters.sliding_attention", local) != 0)
        return -1;
    if (local_cfg.rope_llama3 || local_cfg.rope_linear)
        return err_set("%s: a scaled RoPE on Gemma 3's sliding layers is not supported (the "
                       "default RoPE only)",
                       s->where);
    c->rope_local_theta = local_cfg.rope_theta;
    return 0;
}

int model_config_parse_rope(model_config *c, const src *s, double default_theta) {
    if (c->family == MODEL_FAMILY_GEMMA3)
        return rope_partial(c, s, NULL, "rope_parameters") != 0 ? -1 : gemma3_rope(c, s);
    json_t *r;
    const char *name;
    if (rope_object(s, &r, &name) != 0) return -1;
    const char *key;
    json_t *v;
    json_object_foreach(r, key, v) {
        if (json_is_object(v))
            return err_set("%s: per-layer-type \"%s\" ('%s') is not supported", s->where, name,
                           key);
    }
    double top_theta;
    if (get_double(s, "rope_theta", 0, default_theta, &top_theta) != 0 ||
        rope_partial(c, s, r, name) != 0)
        return -1;
    return rope_params(c, s, r, name, top_theta);
}

double model_config_rope_attn_factor(const model_config *c) {
    if (!c->rope_longrope) return 1.0;
    if (c->rope_attn_factor > 0) return c->rope_attn_factor;
    /* _compute_longrope_parameters: factor defaults to max_position / original */
    double f = c->rope_factor > 0 ? c->rope_factor
                                  : (double)c->max_position / c->rope_original_max_position;
    return f <= 1.0 ? 1.0 : sqrt(1 + log(f) / log((double)c->rope_original_max_position));
}

/* ---- Gemma's attention ------------------------------------------------------------------- */

/* A number that config.json may set to null for "none": absent → def, null → 0. */
static int get_optional(const src *s, const char *key, double def, double *out) {
    json_t *v = json_object_get(s->obj, key);
    if (json_is_null(v)) {
        *out = 0;
        return 0;
    }
    return get_double(s, key, 0, def, out);
}

int model_config_layer_types(const src *s, int L, unsigned char *sliding, int *given) {
    json_t *types = get(s, "layer_types");
    *given = types != NULL;
    if (!types) return 0;
    if (!json_is_array(types) || json_array_size(types) != (size_t)L)
        return err_set("%s: \"layer_types\" must list one type per layer (%d)", s->where, L);
    for (int l = 0; l < L; l++) {
        const char *t = json_string_value(json_array_get(types, (size_t)l));
        if (t && strcmp(t, "sliding_attention") == 0)
            sliding[l] = 1;
        else if (t && strcmp(t, "full_attention") == 0)
            sliding[l] = 0;
        else
            return err_set("%s: layer_types[%d] is not 'full_attention' or 'sliding_attention'",
                           s->where, l);
    }
    return 0;
}

/* layer_types, or the default pattern: every `pattern`-th layer global
 * ((l + 1) % pattern == 0), the others sliding. */
static int gemma_layer_types(model_config *c, const src *s, int pattern) {
    int given;
    c->layer_types = 1;
    if (model_config_layer_types(s, c->num_layers, c->layer_sliding, &given) != 0) return -1;
    if (!given)
        for (int l = 0; l < c->num_layers; l++) c->layer_sliding[l] = (l + 1) % pattern != 0;
    return 0;
}

int model_config_parse_gemma(model_config *c, const src *s) {
    int gemma2 = c->family == MODEL_FAMILY_GEMMA2, bidir = 0, pattern = 2;
    if (get_bool(s, "attention_bias", 0, &c->qkv_bias) != 0 ||
        get_double(s, "query_pre_attn_scalar", 0, 256, &c->query_pre_attn_scalar) != 0 ||
        get_optional(s, "attn_logit_softcapping", gemma2 ? 50.0 : 0, &c->attn_softcap) != 0 ||
        get_optional(s, "final_logit_softcapping", gemma2 ? 30.0 : 0, &c->final_softcap) != 0 ||
        get_window(s, 4096, &c->sliding_window) != 0 ||
        get_bool(s, "use_bidirectional_attention", 0, &bidir) != 0 ||
        (!gemma2 && get_int(s, "sliding_window_pattern", 0, 6, 1, MAX_LAYERS, &pattern) != 0))
        return -1;
    c->o_bias = c->qkv_bias;
    if (bidir)
        return err_set("%s: use_bidirectional_attention true is not supported (causal language "
                       "models only)",
                       s->where);
    if (!gemma2 && c->attn_softcap)
        return err_set("%s: attn_logit_softcapping %g: transformers' Gemma 3 does not apply it, "
                       "so fedlora does not guess; set it to null",
                       s->where, c->attn_softcap);
    return gemma_layer_types(c, s, pattern);
}

/* ---- writing ------------------------------------------------------------------------------ */

#define SET(obj, key, val) bad |= json_object_set_new(obj, key, val)

/* A number transformers types as int when it is one (query_pre_attn_scalar). */
static json_t *number_json(double v, double *reals, int *n) {
    if (v == floor(v) && fabs(v) < 1e15) return json_integer((json_int_t)v);
    reals[(*n)++] = v;
    return json_real(v);
}

static json_t *factors_json(const double *f, int n, double *reals, int *nr) {
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++) {
        reals[(*nr)++] = f[i];
        if (json_array_append_new(a, json_real(f[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* The rope_scaling object of c's global RoPE, or json null for the default. */
static json_t *scaling_json(const model_config *c, double *reals, int *n) {
    int bad = 0;
    json_t *r;
    if (c->rope_llama3) {
        r = json_pack("{s:s,s:f,s:f,s:f,s:i}", "rope_type", "llama3", "factor", c->rope_factor,
                      "low_freq_factor", c->rope_low_freq_factor, "high_freq_factor",
                      c->rope_high_freq_factor, "original_max_position_embeddings",
                      c->rope_original_max_position);
        reals[(*n)++] = c->rope_factor;
        reals[(*n)++] = c->rope_low_freq_factor;
        reals[(*n)++] = c->rope_high_freq_factor;
    } else if (c->rope_linear) {
        r = json_pack("{s:s,s:f}", "rope_type", "linear", "factor", c->rope_factor);
        reals[(*n)++] = c->rope_factor;
    } else if (c->rope_longrope) {
        /* "type": what transformers 4's Phi3Config checks; 5 reads it too */
        int nf = model_config_rope_dim(c) / 2;
        r = json_pack("{s:s}", "type", "longrope");
        if (r) {
            SET(r, "short_factor", factors_json(c->rope_short, nf, reals, n));
            SET(r, "long_factor", factors_json(c->rope_long, nf, reals, n));
            if (c->rope_factor > 0) SET(r, "factor", json_real(c->rope_factor));
            if (c->rope_attn_factor > 0) SET(r, "attention_factor", json_real(c->rope_attn_factor));
            reals[(*n)++] = c->rope_factor;
            reals[(*n)++] = c->rope_attn_factor;
        }
    } else if (c->family == MODEL_FAMILY_APERTUS) {
        /* null would mean Apertus's llama3 default (apertus_default_rope) */
        r = json_pack("{s:s}", "rope_type", "default");
    } else {
        return json_null();
    }
    if (bad) {
        json_decref(r);
        return NULL;
    }
    return r;
}

/* The smallest partial_rotary_factor p with int(D · p) == rope_dim. */
static double partial_factor(const model_config *c) {
    double p = (double)c->rope_dim / c->head_dim;
    while ((int)(c->head_dim * p) < c->rope_dim) p = nextafter(p, 1.0);
    return p;
}

int model_config_write_rope(json_t *o, const model_config *c, double *reals, int *n) {
    int bad = 0;
    /* The legacy spelling (rope_theta + rope_scaling) is read by
     * transformers 4 and converted by transformers 5. */
    SET(o, "rope_theta", json_real(c->rope_theta));
    reals[(*n)++] = c->rope_theta;
    SET(o, "rope_scaling", scaling_json(c, reals, n));
    if (c->family == MODEL_FAMILY_GEMMA3) {
        SET(o, "rope_local_base_freq", json_real(c->rope_local_theta));
        reals[(*n)++] = c->rope_local_theta;
    }
    if (c->family == MODEL_FAMILY_PHI3) {
        SET(o, "original_max_position_embeddings",
            json_integer(c->rope_longrope ? c->rope_original_max_position : c->max_position));
        if (c->rope_dim) {
            double p = partial_factor(c);
            SET(o, "partial_rotary_factor", json_real(p));
            reals[(*n)++] = p;
        }
    }
    return bad ? -1 : 0;
}

int model_config_write_gemma(json_t *o, const model_config *c, double *reals, int *n) {
    int bad = 0;
    SET(o, "query_pre_attn_scalar", number_json(c->query_pre_attn_scalar, reals, n));
    SET(o, "attn_logit_softcapping", c->attn_softcap ? json_real(c->attn_softcap) : json_null());
    SET(o, "final_logit_softcapping", c->final_softcap ? json_real(c->final_softcap) : json_null());
    reals[(*n)++] = c->attn_softcap;
    reals[(*n)++] = c->final_softcap;
    SET(o, "sliding_window", c->sliding_window ? json_integer(c->sliding_window) : json_null());
    SET(o, "attention_bias", json_boolean(c->qkv_bias));
    json_t *types = json_array();
    for (int l = 0; types && l < c->num_layers; l++)
        bad |= json_array_append_new(
            types, json_string(c->layer_sliding[l] ? "sliding_attention" : "full_attention"));
    SET(o, "layer_types", types);
    return bad ? -1 : 0;
}
