/* peft.c — PEFT adapter directories (peft.h). */
#include "lora/peft.h"

#include "model/safetensors.h"
#include "util/err.h"
#include "util/fio.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- adapter_config.json, as Python's json.dumps(indent=2, sort_keys=True) ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->failed = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        b->failed = 1;
        return;
    }
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string with ensure_ascii escaping: control characters and every
 * non-ASCII code point as \uXXXX (UTF-16 surrogate pairs above U+FFFF);
 * bytes that are not UTF-8 become U+FFFD. */
static void sb_string(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
            p++;
        } else if (c >= 0x20 && c < 0x7f) {
            sb_put(b, (const char *)p, 1);
            p++;
        } else if (c < 0x80) {
            const char *named = c == '\n'   ? "\\n"
                                : c == '\r' ? "\\r"
                                : c == '\t' ? "\\t"
                                : c == '\b' ? "\\b"
                                : c == '\f' ? "\\f"
                                            : NULL;
            if (named)
                sb_put(b, named, 2);
            else
                sb_printf(b, "\\u%04x", c);
            p++;
        } else {
            int n = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : -1;
            uint32_t cp = n == 3 ? c & 7 : n == 2 ? c & 15 : c & 31;
            int ok = n > 0 && c < 0xf5;
            for (int i = 1; ok && i <= n; i++) {
                if ((p[i] & 0xc0) != 0x80)
                    ok = 0;
                else
                    cp = cp << 6 | (p[i] & 0x3f);
            }
            if (ok &&
                ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) ||
                 (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp < 0xe000)))
                ok = 0;
            if (!ok) {
                cp = 0xfffd;
                n = 0;
            }
            if (cp >= 0x10000) {
                cp -= 0x10000;
                sb_printf(b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
            } else {
                sb_printf(b, "\\u%04x", cp);
            }
            p += n + 1;
        }
    }
    sb_put(b, "\"", 1);
}

/* Python's repr(float): the shortest decimal that reads back as the same
 * double, with ".0" on integral values. */
static void sb_float(sbuf *b, double v) {
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    if (!strpbrk(tmp, ".en")) strcat(tmp, ".0");
    sb_put(b, tmp, strlen(tmp));
}

/* An int when v is integral (as PEFT's int fields), else a float. Negative
 * zero stays a float ("-0.0", as Python writes it): "-0" would read back as
 * the integer 0 and a second write would differ from the first. */
static void sb_number(sbuf *b, double v) {
    if (v == floor(v) && fabs(v) < 1e15 && !(v == 0 && signbit(v)))
        sb_printf(b, "%.0f", v);
    else
        sb_float(b, v);
}

static void sb_key(sbuf *b, int *first, const char *key) {
    sb_put(b, *first ? "\n  " : ",\n  ", *first ? 3 : 4);
    *first = 0;
    sb_string(b, key);
    sb_put(b, ": ", 2);
}

static void sb_string_list(sbuf *b, char *const *v, int n) {
    if (n == 0) {
        sb_put(b, "[]", 2);
        return;
    }
    sb_put(b, "[", 1);
    for (int i = 0; i < n; i++) {
        sb_put(b, i ? ",\n    " : "\n    ", i ? 6 : 5);
        sb_string(b, v[i]);
    }
    sb_put(b, "\n  ]", 4);
}

/* A pattern map: keys sorted (sort_keys applies to nested objects too). */
static int cmp_pattern(const void *a, const void *b) {
    return strcmp(((const lora_pattern *)a)->key, ((const lora_pattern *)b)->key);
}

static int sb_patterns(sbuf *b, const lora_pattern *p, int n) {
    if (n == 0) {
        sb_put(b, "{}", 2);
        return 0;
    }
    lora_pattern *sorted = malloc((size_t)n * sizeof *sorted);
    if (!sorted) return -1;
    memcpy(sorted, p, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_pattern);
    sb_put(b, "{", 1);
    for (int i = 0; i < n; i++) {
        sb_put(b, i ? ",\n    " : "\n    ", i ? 6 : 5);
        sb_string(b, sorted[i].key);
        sb_put(b, ": ", 2);
        sb_number(b, sorted[i].value);
    }
    sb_put(b, "\n  }", 4);
    free(sorted);
    return 0;
}

/* "all-linear" resolves to the distinct last components of the modules. */
static int resolved_targets(const lora_set *s, char ***out, int *n) {
    *out = NULL;
    *n = 0;
    char **v = calloc((size_t)s->n_modules + 1, sizeof *v);
    if (!v) return -1;
    for (int i = 0; i < s->n_modules; i++) {
        const char *d = strrchr(s->modules[i].path, '.');
        char *name = (char *)(d ? d + 1 : s->modules[i].path);
        int seen = 0;
        for (int j = 0; j < *n; j++) seen |= strcmp(v[j], name) == 0;
        if (!seen) v[(*n)++] = name;
    }
    *out = v;
    return 0;
}

int peft_config_json(const lora_set *s, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    const lora_config *c = &s->cfg;
    sbuf b = {0};
    int first = 1, bad = 0;
    char **all = NULL;
    int n_all = 0;
    int all_linear = c->n_targets == 1 && strcasecmp(c->targets[0], "all-linear") == 0;
    if (all_linear && resolved_targets(s, &all, &n_all) != 0) bad = 1;
    sb_put(&b, "{", 1);
    sb_key(&b, &first, "alpha_pattern");
    bad |= sb_patterns(&b, c->alpha_pattern, c->n_alpha_pattern);
    sb_key(&b, &first, "base_model_name_or_path");
    if (c->base_model)
        sb_string(&b, c->base_model);
    else
        sb_put(&b, "null", 4);
    sb_key(&b, &first, "bias");
    sb_string(&b, "none");
    sb_key(&b, &first, "exclude_modules");
    if (c->exclude_regex)
        sb_string(&b, c->exclude_regex);
    else if (c->n_exclude)
        sb_string_list(&b, c->exclude, c->n_exclude);
    else
        sb_put(&b, "null", 4);
    sb_key(&b, &first, "fan_in_fan_out");
    sb_put(&b, s->arch == MODEL_ARCH_GPT2 ? "true" : "false", s->arch == MODEL_ARCH_GPT2 ? 4 : 5);
    sb_key(&b, &first, "inference_mode");
    sb_put(&b, "true", 4);
    sb_key(&b, &first, "init_lora_weights");
    sb_put(&b, "true", 4);
    sb_key(&b, &first, "layers_pattern");
    sb_put(&b, "null", 4);
    sb_key(&b, &first, "layers_to_transform");
    if (c->layers) {
        sb_put(&b, "[", 1);
        for (int i = 0; i < c->n_layers; i++)
            sb_printf(&b, "%s\n    %d", i ? "," : "", c->layers[i]);
        sb_put(&b, "\n  ]", 4);
    } else {
        sb_put(&b, "null", 4);
    }
    sb_key(&b, &first, "lora_alpha");
    sb_number(&b, c->alpha);
    sb_key(&b, &first, "lora_dropout");
    sb_float(&b, c->dropout);
    sb_key(&b, &first, "modules_to_save");
    sb_put(&b, "null", 4);
    sb_key(&b, &first, "peft_type");
    sb_string(&b, "LORA");
    sb_key(&b, &first, "r");
    sb_printf(&b, "%d", c->rank);
    sb_key(&b, &first, "rank_pattern");
    bad |= sb_patterns(&b, c->rank_pattern, c->n_rank_pattern);
    sb_key(&b, &first, "revision");
    sb_put(&b, "null", 4);
    sb_key(&b, &first, "target_modules");
    if (c->target_regex)
        sb_string(&b, c->target_regex);
    else if (all_linear)
        sb_string_list(&b, all, n_all);
    else
        sb_string_list(&b, c->targets, c->n_targets);
    sb_key(&b, &first, "task_type");
    sb_string(&b, "CAUSAL_LM");
    sb_key(&b, &first, "use_dora");
    sb_put(&b, "false", 5);
    sb_key(&b, &first, "use_rslora");
    sb_put(&b, c->use_rslora ? "true" : "false", c->use_rslora ? 4 : 5);
    sb_put(&b, "\n}", 2);
    free(all);
    if (bad || b.failed) {
        free(b.buf);
        return err_set("out of memory writing adapter_config.json");
    }
    *out = b.buf;
    *len = b.len;
    return 0;
}

/* ---- adapter_model.safetensors ------------------------------------------------------ */

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const safetensors_entry *)a)->name, ((const safetensors_entry *)b)->name);
}

/* The values of one tensor as little-endian F32 bytes. */
static int put_f32(safetensors_writer *w, const real *v, int64_t n) {
#ifdef FL_REAL_F64
    float tmp[1024];
    for (int64_t i = 0; i < n; i += 1024) {
        int64_t k = n - i < 1024 ? n - i : 1024;
        for (int64_t j = 0; j < k; j++) tmp[j] = (float)v[i + j];
        if (safetensors_writer_put(w, tmp, (size_t)k * sizeof(float)) != 0) return -1;
    }
    return 0;
#else
    return safetensors_writer_put(w, v, (size_t)n * sizeof(float));
#endif
}

int peft_save_weights(const lora_set *s, const char *path) {
    int n = 2 * s->n_modules;
    safetensors_entry *e = calloc((size_t)n, sizeof *e);
    if (!e) return err_set("out of memory writing %s", path);
    for (int i = 0; i < s->n_modules; i++)
        for (int k = 0; k < 2; k++) {
            const model_param *p = k ? &s->modules[i].B : &s->modules[i].A;
            safetensors_entry *t = &e[2 * i + k];
            t->name = p->name;
            t->dtype = SAFETENSORS_F32;
            t->ndim = 2;
            t->shape[0] = p->shape[0];
            t->shape[1] = p->shape[1];
            t->data = p->data;
        }
    qsort(e, (size_t)n, sizeof *e, cmp_entry);
    const char *meta[] = {"format", "pt", NULL};
    safetensors_writer *w;
    int rc = safetensors_writer_open(&w, path, e, n, meta);
    for (int i = 0; rc == 0 && i < n; i++) {
        if (put_f32(w, e[i].data, e[i].shape[0] * e[i].shape[1]) != 0) {
            safetensors_writer_abort(w);
            rc = -1;
        }
    }
    if (rc == 0) rc = safetensors_writer_finish(w);
    free(e);
    return rc;
}

int peft_save(const lora_set *s, const char *dir) {
    char wpath[4096], cpath[4096];
    if (fio_mkdirs(dir, 0755) != 0 || fio_join(wpath, sizeof wpath, dir, PEFT_WEIGHTS_FILE) != 0 ||
        fio_join(cpath, sizeof cpath, dir, PEFT_CONFIG_FILE) != 0)
        return err_context("saving the adapter to %s", dir);
    if (peft_save_weights(s, wpath) != 0) return err_context("saving the adapter to %s", dir);
    char *json;
    size_t len;
    if (peft_config_json(s, &json, &len) != 0) return -1;
    int rc = fio_write_atomic(cpath, json, len, 0644);
    free(json);
    return rc == 0 ? 0 : err_context("saving the adapter to %s", dir);
}

/* ---- reading adapter_config.json ---------------------------------------------------- */

static int is_unset(const json_t *v) {
    return !v || json_is_null(v) || json_is_false(v) ||
           ((json_is_array(v) && json_array_size(v) == 0) ||
            (json_is_object(v) && json_object_size(v) == 0));
}

/* Reads a list-or-string field (target_modules, exclude_modules). */
static int read_names(const json_t *v, const char *field, const char *where, char ***list, int *n,
                      char **regex) {
    *list = NULL;
    *n = 0;
    *regex = NULL;
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        *regex = strdup(json_string_value(v));
        return *regex ? 0 : err_set("out of memory reading %s", where);
    }
    if (!json_is_array(v))
        return err_set("%s: \"%s\" must be a list of names or a string", where, field);
    size_t cnt = json_array_size(v);
    if (cnt == 0) return 0;
    char **out = calloc(cnt, sizeof *out);
    if (!out) return err_set("out of memory reading %s", where);
    for (size_t i = 0; i < cnt; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_string(e) || json_string_length(e) == 0) {
            for (size_t j = 0; j < i; j++) free(out[j]);
            free(out);
            return err_set("%s: \"%s\" item %zu is not a non-empty string", where, field, i);
        }
        out[i] = strdup(json_string_value(e));
        if (!out[i]) {
            for (size_t j = 0; j < i; j++) free(out[j]);
            free(out);
            return err_set("out of memory reading %s", where);
        }
    }
    *list = out;
    *n = (int)cnt;
    return 0;
}

static int read_patterns(lora_config *c, const json_t *v, int rank, const char *where) {
    const char *field = rank ? "rank_pattern" : "alpha_pattern";
    if (!v || json_is_null(v)) return 0;
    if (!json_is_object(v)) return err_set("%s: \"%s\" must be an object", where, field);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        if (!json_is_number(val))
            return err_set("%s: \"%s\" value of \"%s\" is not a number", where, field, key);
        double x = json_number_value(val);
        if (rank) {
            if (!json_is_integer(val) || x < 1 || x > 1e9)
                return err_set("%s: rank_pattern \"%s\": rank must be a whole number >= 1", where,
                               key);
            if (lora_config_add_rank_pattern(c, key, (int)x) != 0) return err_context("%s", where);
        } else if (lora_config_add_alpha_pattern(c, key, x) != 0) {
            return err_context("%s", where);
        }
    }
    return 0;
}

static int parse_config(lora_config *c, json_t *root, const char *where) {
    if (!json_is_object(root)) return err_set("%s: not a JSON object", where);
    json_t *v = json_object_get(root, "peft_type");
    if (!json_is_string(v))
        return err_set("%s: no \"peft_type\" (is this a PEFT adapter directory?)", where);
    if (strcmp(json_string_value(v), "LORA") != 0)
        return err_set("%s: unknown peft_type \"%s\": fedlora reads LoRA adapters (\"LORA\") only",
                       where, json_string_value(v));
    /* LoRA variants that change the computation: refuse rather than ignore. */
    static const char *const unsupported[] = {
        "use_dora",          "lora_bias",         "modules_to_save", "trainable_token_indices",
        "layer_replication", "target_parameters", "use_qalora",      "alora_invocation_tokens",
        "use_bdlora"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        if (!is_unset(json_object_get(root, unsupported[i])))
            return err_set("%s: \"%s\" is set; fedlora computes plain LoRA only", where,
                           unsupported[i]);
    v = json_object_get(root, "bias");
    if (v && !json_is_null(v) && (!json_is_string(v) || strcmp(json_string_value(v), "none") != 0))
        return err_set("%s: bias must be \"none\" (trained biases are not supported)", where);

    v = json_object_get(root, "r");
    if (!json_is_integer(v)) return err_set("%s: \"r\" must be an integer", where);
    if (json_integer_value(v) < 1 || json_integer_value(v) > 1000000000)
        return err_set("%s: LoRA rank r = %lld: the rank must be at least 1", where,
                       (long long)json_integer_value(v));
    c->rank = (int)json_integer_value(v);
    v = json_object_get(root, "lora_alpha");
    if (!json_is_number(v)) return err_set("%s: \"lora_alpha\" must be a number", where);
    c->alpha = json_number_value(v);
    v = json_object_get(root, "lora_dropout");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v)) return err_set("%s: \"lora_dropout\" must be a number", where);
        c->dropout = json_number_value(v);
    }
    v = json_object_get(root, "use_rslora");
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) return err_set("%s: \"use_rslora\" must be true or false", where);
        c->use_rslora = json_is_true(v);
    }

    v = json_object_get(root, "target_modules");
    if (!v || json_is_null(v))
        return err_set("%s: no \"target_modules\": say which modules the adapter targets", where);
    char *regex;
    if (read_names(v, "target_modules", where, &c->targets, &c->n_targets, &regex) != 0) return -1;
    if (regex) {
        int rc = strcasecmp(regex, "all-linear") == 0 ? lora_config_set_targets(c, "all-linear")
                                                      : lora_config_set_target_regex(c, regex);
        free(regex);
        if (rc != 0) return -1;
    } else if (c->n_targets == 0) {
        return err_set("%s: \"target_modules\" is empty", where);
    }
    if (read_names(json_object_get(root, "exclude_modules"), "exclude_modules", where, &c->exclude,
                   &c->n_exclude, &c->exclude_regex) != 0)
        return -1;

    v = json_object_get(root, "layers_to_transform");
    if (v && !json_is_null(v)) {
        size_t cnt = json_is_integer(v) ? 1 : json_is_array(v) ? json_array_size(v) : 0;
        if (cnt == 0)
            return err_set("%s: \"layers_to_transform\" must be an integer or a list of them",
                           where);
        c->layers = malloc(cnt * sizeof *c->layers);
        if (!c->layers) return err_set("out of memory reading %s", where);
        for (size_t i = 0; i < cnt; i++) {
            const json_t *e = json_is_integer(v) ? v : json_array_get(v, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > 1000000)
                return err_set("%s: \"layers_to_transform\" item %zu is not a layer index", where,
                               i);
            c->layers[i] = (int)json_integer_value(e);
        }
        c->n_layers = (int)cnt;
    }
    if (read_patterns(c, json_object_get(root, "rank_pattern"), 1, where) != 0 ||
        read_patterns(c, json_object_get(root, "alpha_pattern"), 0, where) != 0)
        return -1;
    v = json_object_get(root, "base_model_name_or_path");
    if (json_is_string(v) && lora_config_set_base_model(c, json_string_value(v)) != 0) return -1;
    return 0;
}

int peft_parse_config(lora_config *cfg, const char *json, size_t len, const char *where) {
    lora_config_init(cfg);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return err_set("%s: invalid JSON at line %d, column %d: %s", where, jerr.line, jerr.column,
                       jerr.text);
    int rc = parse_config(cfg, root, where);
    json_decref(root);
    if (rc != 0) lora_config_free(cfg);
    return rc;
}

int peft_read_config(lora_config *cfg, const char *dir) {
    lora_config_init(cfg);
    char path[4096];
    if (fio_join(path, sizeof path, dir, PEFT_CONFIG_FILE) != 0) return -1;
    char *text;
    size_t len;
    if (fio_read_all(path, PEFT_CONFIG_MAX, &text, &len) != 0)
        return err_context("reading the adapter in %s", dir);
    int rc = peft_parse_config(cfg, text, len, path);
    free(text);
    return rc;
}

/* ---- reading the tensors ----------------------------------------------------------- */

static int load_tensor(model_param *p, const safetensors_tensor *t, const char *path) {
    if (t->ndim != 2 || t->shape[0] != p->shape[0] || t->shape[1] != p->shape[1]) {
        char shape[64] = "";
        size_t used = 0;
        for (int d = 0; d < t->ndim && used < sizeof shape; d++)
            used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%lld", d ? ", " : "",
                                     (long long)t->shape[d]);
        return err_set("%s: tensor %s has shape (%s), this base model needs (%lld, %lld): the "
                       "adapter was made for another base",
                       path, p->name, shape, (long long)p->shape[0], (long long)p->shape[1]);
    }
#ifdef FL_REAL_F64
    return safetensors_to_double(t, p->data);
#else
    return safetensors_to_float(t, p->data);
#endif
}

int peft_load_weights(lora_set *s, const safetensors_file *f, const char *where) {
    for (int i = 0; i < s->n_modules; i++)
        for (int k = 0; k < 2; k++) {
            model_param *p = k ? &s->modules[i].B : &s->modules[i].A;
            const safetensors_tensor *t = safetensors_find(f, p->name);
            if (!t)
                return err_set("%s has no tensor %s, which the adapter's config targets on this "
                               "base: the adapter was made for another base or is incomplete",
                               where, p->name);
            if (load_tensor(p, t, where) != 0) return -1;
        }
    if (safetensors_count(f) != 2 * s->n_modules) {
        for (int i = 0; i < safetensors_count(f); i++) {
            const char *name = safetensors_tensor_at(f, i)->name;
            int known = 0;
            for (int j = 0; j < s->n_modules && !known; j++)
                known = strcmp(name, s->modules[j].A.name) == 0 ||
                        strcmp(name, s->modules[j].B.name) == 0;
            if (!known)
                return err_set("%s: tensor %s belongs to no module the config targets on this "
                               "base model: the adapter was made for another base (or is not "
                               "plain LoRA)",
                               where, name);
        }
    }
    return 0;
}

int peft_load(lora_set **out, const model *m, const char *dir) {
    *out = NULL;
    lora_config cfg;
    if (peft_read_config(&cfg, dir) != 0) return -1;
    lora_set *s;
    int rc = lora_create(&s, m, &cfg);
    lora_config_free(&cfg);
    if (rc != 0) return err_context("adapter %s on this base model", dir);
    char path[4096];
    safetensors_file *f = NULL;
    if (fio_join(path, sizeof path, dir, PEFT_WEIGHTS_FILE) != 0) goto fail;
    if (!fio_exists(path)) {
        char bin[4096];
        int has_bin = fio_join(bin, sizeof bin, dir, "adapter_model.bin") == 0 && fio_exists(bin);
        err_set("%s has no " PEFT_WEIGHTS_FILE "%s", dir,
                has_bin ? " (adapter_model.bin, a pickle, is not read: save the adapter with "
                          "safe_serialization=True)"
                        : "");
        goto fail;
    }
    if (safetensors_open(&f, path) != 0 || peft_load_weights(s, f, path) != 0) goto fail;
    safetensors_close(f);
    *out = s;
    return 0;
fail:
    safetensors_close(f);
    lora_free(s);
    return -1;
}
