/* config_json — reading config.json's fields with transformers' rules
 * (absent or null: the default; a wrong type or a value out of range: a
 * message naming the field), shared by config.c and config_attn.c. Private
 * to model/. */
#ifndef FL_MODEL_CONFIG_JSON_H
#define FL_MODEL_CONFIG_JSON_H

#include "model/config_table.h"
#include "util/err.h"

#include <jansson.h>

/* ---- reading fields ------------------------------------------------------------ */

/* Static in each file that includes this header; not `inline`, which made
 * gcc inline them and lose track of which outputs an error leaves unset. */
#define CONFIG_JSON_FN static __attribute__((unused))

/* A JSON object being read, and how to name it in messages. */
typedef struct {
    json_t *obj;
    const char *where;  /* the file */
    const char *prefix; /* "" or "rope_scaling." for a nested object */
} src;

/* The member, or NULL when absent or null: transformers treats both as "use
 * the default" for every field read through here. */
CONFIG_JSON_FN json_t *get(const src *s, const char *key) {
    json_t *v = json_object_get(s->obj, key);
    return json_is_null(v) ? NULL : v;
}

CONFIG_JSON_FN int get_int(const src *s, const char *key, int required, int def, int lo, int hi,
                           int *out) {
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

CONFIG_JSON_FN int get_double(const src *s, const char *key, int required, double def,
                              double *out) {
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

CONFIG_JSON_FN int get_bool(const src *s, const char *key, int def, int *out) {
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

CONFIG_JSON_FN int get_string(const src *s, const char *key, const char *def, const char **out) {
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
CONFIG_JSON_FN int get_token(const src *s, const char *key, int def, int *out) {
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

/* sliding_window: absent → def, null → 0 (no window). */
CONFIG_JSON_FN int get_window(const src *s, int def, int *out) {
    if (get_int(s, "sliding_window", 0, def, 0, MAX_POSITIONS, out) != 0) return -1;
    if (json_is_null(json_object_get(s->obj, "sliding_window"))) *out = 0;
    return 0;
}

/* ---- config_attn.c: RoPE and Gemma's attention, read and written ---- */

/* "layer_types" (one "full_attention" or "sliding_attention" per layer) into
 * sliding[0 … L) as 0 or 1; *given = 0 (and sliding untouched) when
 * config.json has none. */
int model_config_layer_types(const src *s, int L, unsigned char *sliding, int *given);

/* The RoPE of a Llama-layout config (every spelling transformers reads);
 * default_theta is the family's rope_theta when config.json gives none
 * (default_theta in its configuration_*.py: 1e4, Mixtral's 1e6). Gemma 3's
 * own default (1e6) is applied inside. */
int model_config_parse_rope(model_config *c, const src *s, double default_theta);
/* Gemma 2 and 3: attention_bias, query_pre_attn_scalar, soft-capping, the
 * sliding window and the layers' types. */
int model_config_parse_gemma(model_config *c, const src *s);
/* Into o: rope_theta, rope_scaling and the family's other RoPE fields; each
 * real written is appended to reals (*n of them), for the writer's
 * precision. 0, or -1 when out of memory. */
int model_config_write_rope(json_t *o, const model_config *c, double *reals, int *n);
/* Into o: Gemma's fields of model_config_parse_gemma. */
int model_config_write_gemma(json_t *o, const model_config *c, double *reals, int *n);
/* Room for the reals a config writes (its LongRoPE factors included). */
#define CONFIG_MAX_REALS (16 + 2 * MODEL_MAX_ROPE_FACTORS)

#endif
