/* jinja_json — JSON into values (the render's variables) and values into
 * JSON text as Python's json.dumps writes it, which is what transformers'
 * tojson filter calls (json/encoder.py: py_encode_basestring(_ascii),
 * _make_iterencode; floats by float.__repr__, NaN and Infinity allowed). */
#include "model/chat/jinja_internal.h"

#include "util/err.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int jv_from_json(jctx *c, json_t *j, jv *out) {
    if (jstep(c, c->line) != 0) return -1;
    switch (json_typeof(j)) {
        case JSON_OBJECT: {
            if (jv_dict_new(c, out) != 0) return -1;
            const char *k;
            json_t *v;
            json_object_foreach(j, k, v) {
                jv key, val;
                if (jv_str(c, k, strlen(k), &key) != 0 || jv_from_json(c, v, &val) != 0 ||
                    jdict_set(c, out->u.d, key, val) != 0)
                    return -1;
            }
            return 0;
        }
        case JSON_ARRAY: {
            size_t n = json_array_size(j);
            if (jv_list_new(c, n, JL_LIST, out) != 0) return -1;
            for (size_t i = 0; i < n; i++)
                if (jv_from_json(c, json_array_get(j, i), &out->u.l->v[i]) != 0) return -1;
            return 0;
        }
        case JSON_STRING:
            return jv_str(c, json_string_value(j), json_string_length(j), out);
        case JSON_INTEGER:
            *out = jv_int((int64_t)json_integer_value(j));
            return 0;
        case JSON_REAL:
            *out = jv_float(json_real_value(j));
            return 0;
        case JSON_TRUE:
            *out = jv_bool(1);
            return 0;
        case JSON_FALSE:
            *out = jv_bool(0);
            return 0;
        default:
            *out = jv_none();
            return 0;
    }
}

/* py_encode_basestring(_ascii): '"', '\\' and the control characters escaped;
 * with ensure_ascii every non-ASCII character as \uXXXX (surrogate pairs
 * above U+FFFF), lower-case hex as Python writes it. */
static int json_str(jbuf *b, const char *s, size_t n, int ascii) {
    if (jbuf_putc(b, '"') != 0) return -1;
    for (size_t i = 0; i < n;) {
        size_t k;
        uint32_t cp = tokenizer_utf8_decode(s + i, &k);
        int rc;
        switch (cp) {
            case '"':
                rc = jbuf_puts(b, "\\\"");
                break;
            case '\\':
                rc = jbuf_puts(b, "\\\\");
                break;
            case '\n':
                rc = jbuf_puts(b, "\\n");
                break;
            case '\r':
                rc = jbuf_puts(b, "\\r");
                break;
            case '\t':
                rc = jbuf_puts(b, "\\t");
                break;
            case '\b':
                rc = jbuf_puts(b, "\\b");
                break;
            case '\f':
                rc = jbuf_puts(b, "\\f");
                break;
            default:
                if (cp < 0x20 || (ascii && cp == 0x7f))
                    rc = jbuf_printf(b, "\\u%04x", cp);
                else if (cp < 0x80 || !ascii)
                    rc = jbuf_put(b, s + i, k);
                else if (cp < 0x10000)
                    rc = jbuf_printf(b, "\\u%04x", cp);
                else
                    rc = jbuf_printf(b, "\\u%04x\\u%04x", 0xd800 + ((cp - 0x10000) >> 10),
                                     0xdc00 + ((cp - 0x10000) & 0x3ff));
        }
        if (rc != 0) return -1;
        i += k;
    }
    return jbuf_putc(b, '"');
}

static int json_float(jbuf *b, double f) {
    if (isnan(f)) return jbuf_puts(b, "NaN");
    if (isinf(f)) return jbuf_puts(b, f < 0 ? "-Infinity" : "Infinity");
    char tmp[64];
    jv_float_repr(f, tmp, sizeof tmp);
    return jbuf_puts(b, tmp);
}

static int not_serializable(jctx *c, int line, jv v) {
    return jerr(c, line, "tojson: Object of type %s is not JSON serializable", jv_type_name(v));
}

static int newline_indent(jbuf *b, const jjson_opts *o, int level) {
    if (jbuf_putc(b, '\n') != 0) return -1;
    for (int i = 0; i < level; i++)
        if (jbuf_put(b, o->indent, o->indent_len) != 0) return -1;
    return 0;
}

/* A dict key as json.dumps converts it: str as is, float by repr, True /
 * False / None as true / false / null, int in decimal; others are refused. */
static int json_key(jctx *c, int line, jv k, const jjson_opts *o, jbuf *b) {
    char tmp[64];
    switch (k.kind) {
        case JV_STR:
            return json_str(b, k.u.s->s, k.u.s->len, o->ensure_ascii);
        case JV_FLOAT:
            if (isnan(k.u.f)) return json_str(b, "NaN", 3, 0);
            if (isinf(k.u.f))
                return json_str(b, k.u.f < 0 ? "-Infinity" : "Infinity", k.u.f < 0 ? 9 : 8, 0);
            jv_float_repr(k.u.f, tmp, sizeof tmp);
            return json_str(b, tmp, strlen(tmp), 0);
        case JV_BOOL:
            return json_str(b, k.u.b ? "true" : "false", k.u.b ? 4 : 5, 0);
        case JV_NONE:
            return json_str(b, "null", 4, 0);
        case JV_INT:
            snprintf(tmp, sizeof tmp, "%lld", (long long)k.u.i);
            return json_str(b, tmp, strlen(tmp), 0);
        default:
            return jerr(c, line, "tojson: keys must be str, int, float, bool or None, not %s",
                        jv_type_name(k));
    }
}

/* Indices of d's items sorted by key (a stable merge sort; Python sorts the items). */
static int sorted_keys(jctx *c, int line, const jdict *d, size_t *idx) {
    size_t *tmp = jarena_alloc(&c->arena, (d->n ? d->n : 1) * sizeof *tmp);
    if (!tmp) return -1;
    for (size_t i = 0; i < d->n; i++) idx[i] = i;
    for (size_t w = 1; w < d->n; w *= 2)
        for (size_t lo = 0; lo < d->n; lo += 2 * w) {
            size_t mid = lo + w < d->n ? lo + w : d->n, hi = lo + 2 * w < d->n ? lo + 2 * w : d->n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int lt;
                if (jv_less(c, line, d->k[idx[j]], d->k[idx[i]], &lt) != 0) return -1;
                tmp[k++] = lt ? idx[j++] : idx[i++];
            }
            while (i < mid) tmp[k++] = idx[i++];
            while (j < hi) tmp[k++] = idx[j++];
            memcpy(idx + lo, tmp + lo, (hi - lo) * sizeof *idx);
        }
    return 0;
}

static int to_json(jctx *c, int line, jv v, const jjson_opts *o, int level, jbuf *b) {
    if (jstep(c, line) != 0) return -1;
    if (level > 200) return jerr(c, line, "tojson: values nested more than 200 deep");
    char tmp[64];
    switch (v.kind) {
        case JV_NONE:
            return jbuf_puts(b, "null");
        case JV_BOOL:
            return jbuf_puts(b, v.u.b ? "true" : "false");
        case JV_INT:
            snprintf(tmp, sizeof tmp, "%lld", (long long)v.u.i);
            return jbuf_puts(b, tmp);
        case JV_FLOAT:
            return json_float(b, v.u.f);
        case JV_STR:
            return json_str(b, v.u.s->s, v.u.s->len, o->ensure_ascii);
        case JV_LIST:
            if (v.sub == JL_VIEW || v.sub == JL_RANGE) return not_serializable(c, line, v);
            if (v.u.l->n == 0) return jbuf_puts(b, "[]");
            if (jbuf_putc(b, '[') != 0) return -1;
            for (size_t i = 0; i < v.u.l->n; i++) {
                if (i && jbuf_put(b, o->item_sep, o->item_sep_len) != 0) return -1;
                if (o->indent && newline_indent(b, o, level + 1) != 0) return -1;
                if (to_json(c, line, v.u.l->v[i], o, level + 1, b) != 0) return -1;
            }
            if (o->indent && newline_indent(b, o, level) != 0) return -1;
            return jbuf_putc(b, ']');
        case JV_DICT: {
            const jdict *d = v.u.d;
            if (d->n == 0) return jbuf_puts(b, "{}");
            size_t *idx = jarena_alloc(&c->arena, d->n * sizeof *idx);
            if (!idx) return -1;
            for (size_t i = 0; i < d->n; i++) idx[i] = i;
            if (o->sort_keys && sorted_keys(c, line, d, idx) != 0) return -1;
            if (jbuf_putc(b, '{') != 0) return -1;
            for (size_t i = 0; i < d->n; i++) {
                if (i && jbuf_put(b, o->item_sep, o->item_sep_len) != 0) return -1;
                if (o->indent && newline_indent(b, o, level + 1) != 0) return -1;
                if (json_key(c, line, d->k[idx[i]], o, b) != 0 ||
                    jbuf_put(b, o->key_sep, o->key_sep_len) != 0 ||
                    to_json(c, line, d->v[idx[i]], o, level + 1, b) != 0)
                    return -1;
            }
            if (o->indent && newline_indent(b, o, level) != 0) return -1;
            return jbuf_putc(b, '}');
        }
        default:
            return not_serializable(c, line, v);
    }
}

int jv_to_json(jctx *c, int line, jv v, const jjson_opts *o, jbuf *b) {
    return to_json(c, line, v, o, 0, b);
}
