/* jinja_value — values as Python sees them: construction, dictionaries,
 * truthiness, == and <, str() and repr() (Objects/unicodeobject.c
 * unicode_repr, Python/pystrtod.c for floats). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "model/chat/jinja_internal.h"

#include "util/err.h"

#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int jv_str(jctx *c, const char *s, size_t n, jv *out) {
    jstr *str = jarena_alloc(&c->arena, sizeof *str + n + 1);
    if (!str) return -1;
    str->len = n;
    str->ncp = SIZE_MAX;
    if (n) memcpy(str->s, s, n);
    *out = jv_str_const(str);
    return 0;
}

int jv_from_buf(jctx *c, int rc, jbuf *b, jv *out) {
    if (rc == 0) rc = jv_str(c, b->p ? b->p : "", b->len, out);
    jbuf_free(b);
    return rc;
}

jv jv_str_const(jstr *s) {
    jv v = {.kind = JV_STR};
    v.u.s = s;
    return v;
}

int jv_list_new(jctx *c, size_t n, int sub, jv *out) {
    jlist *l = jarena_alloc(&c->arena, sizeof *l);
    jv *items = l ? jarena_alloc(&c->arena, (n ? n : 1) * sizeof *items) : NULL;
    if (!items) return -1;
    l->n = n;
    l->v = items;
    out->kind = JV_LIST;
    out->sub = (uint8_t)sub;
    out->u.l = l;
    return 0;
}

int jv_dict_new(jctx *c, jv *out) {
    jdict *d = jarena_alloc(&c->arena, sizeof *d);
    if (!d) return -1;
    out->kind = JV_DICT;
    out->sub = 0;
    out->u.d = d;
    return 0;
}

int jv_ns_new(jctx *c, jv *out) {
    if (jv_dict_new(c, out) != 0) return -1;
    out->kind = JV_NS;
    return 0;
}

int jv_method(jctx *c, jv self, int which, jv *out) {
    jmethod *m = jarena_alloc(&c->arena, sizeof *m);
    if (!m) return -1;
    m->self = self;
    m->which = which;
    out->kind = JV_METHOD;
    out->sub = 0;
    out->u.m = m;
    return 0;
}

const char *jctx_strdup(jctx *c, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    size_t n = strlen(tmp);
    char *d = jarena_alloc(&c->arena, n + 1);
    if (d) memcpy(d, tmp, n);
    return d;
}

/* ---- dictionaries ---------------------------------------------------------------- */

static int hashable(jv k) {
    switch (k.kind) {
        case JV_LIST:
            if (k.sub != JL_TUPLE) return 0;
            for (size_t i = 0; i < k.u.l->n; i++)
                if (!hashable(k.u.l->v[i])) return 0;
            return 1;
        case JV_DICT:
        case JV_ITER:
        case JV_NS:
            return 0;
        default:
            return 1;
    }
}

static long find_key(jctx *c, const jdict *d, jv key) {
    for (size_t i = 0; i < d->n; i++) {
        if (key.kind == JV_STR && d->k[i].kind == JV_STR) { /* the common case, quickly */
            if (key.u.s->len == d->k[i].u.s->len &&
                !memcmp(key.u.s->s, d->k[i].u.s->s, key.u.s->len))
                return (long)i;
            continue;
        }
        int eq = jv_equal(c, d->k[i], key);
        if (eq < 0) return -2;
        if (eq) return (long)i;
    }
    return -1;
}

int jdict_set(jctx *c, jdict *d, jv key, jv val) {
    if (!hashable(key)) return jerr(c, c->line, "unhashable type: '%s'", jv_type_name(key));
    if (jstep(c, c->line) != 0) return -1;
    long i = find_key(c, d, key);
    if (i == -2) return -1;
    if (i >= 0) {
        d->v[i] = val;
        return 0;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        jv *k = jarena_alloc(&c->arena, cap * sizeof *k),
           *v = jarena_alloc(&c->arena, cap * sizeof *v);
        if (!k || !v) return -1;
        if (d->n) {
            memcpy(k, d->k, d->n * sizeof *k);
            memcpy(v, d->v, d->n * sizeof *v);
        }
        d->k = k;
        d->v = v;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n] = val;
    d->n++;
    return 0;
}

int jdict_get(jctx *c, const jdict *d, jv key, jv *val) {
    if (!hashable(key)) return 0;
    if (jstep(c, c->line) != 0) return -1;
    long i = find_key(c, d, key);
    if (i == -2) return -1;
    if (i < 0) return 0;
    *val = d->v[i];
    return 1;
}

int jdict_get_str(const jdict *d, const char *key, jv *val) {
    size_t n = strlen(key);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].kind == JV_STR && d->k[i].u.s->len == n && !memcmp(d->k[i].u.s->s, key, n)) {
            *val = d->v[i];
            return 1;
        }
    return 0;
}

/* ---- truthiness, equality, order -------------------------------------------------- */

int jv_truthy(jv v) {
    switch (v.kind) {
        case JV_UNDEF:
        case JV_NONE:
            return 0;
        case JV_BOOL:
            return v.u.b;
        case JV_INT:
            return v.u.i != 0;
        case JV_FLOAT:
            return v.u.f != 0;
        case JV_STR:
            return v.u.s->len != 0;
        case JV_LIST:
            return v.u.l->n != 0;
        case JV_DICT:
            return v.u.d->n != 0;
        default: /* generators, namespaces, functions, loops */
            return 1;
    }
}

static int is_num(jv v) {
    return v.kind == JV_BOOL || v.kind == JV_INT || v.kind == JV_FLOAT;
}

static int64_t as_int(jv v) {
    return v.kind == JV_BOOL ? v.u.b : v.u.i;
}

/* Python's exact comparison of two numbers: -1, 0, 1, or 2 when a NaN is involved. */
static int num_cmp(jv a, jv b) {
    if (a.kind != JV_FLOAT && b.kind != JV_FLOAT) {
        int64_t x = as_int(a), y = as_int(b);
        return x < y ? -1 : x > y;
    }
    if (a.kind == JV_FLOAT && b.kind == JV_FLOAT) {
        double x = a.u.f, y = b.u.f;
        if (isnan(x) || isnan(y)) return 2;
        return x < y ? -1 : x > y;
    }
    /* int against float, exactly (a double holds any integer below 2^53 exactly; beyond, compare
     * the float's integral part as an integer) */
    int flip = a.kind == JV_FLOAT;
    int64_t i = flip ? as_int(b) : as_int(a);
    double f = flip ? a.u.f : b.u.f;
    int r;
    if (isnan(f)) return 2;
    if (f >= 9223372036854775808.0)
        r = -1;
    else if (f < -9223372036854775808.0)
        r = 1;
    else {
        double fl = floor(f);
        int64_t fi = (int64_t)fl;
        r = i < fi ? -1 : i > fi ? 1 : (f > fl ? -1 : 0);
    }
    return flip ? -r : r;
}

int jv_equal(jctx *c, jv a, jv b) {
    if (jstep(c, c->line) != 0) return -1;
    if (is_num(a) && is_num(b)) return num_cmp(a, b) == 0;
    if (a.kind != b.kind) return 0;
    switch (a.kind) {
        case JV_UNDEF:
        case JV_NONE:
            return 1;
        case JV_STR:
            return a.u.s->len == b.u.s->len && !memcmp(a.u.s->s, b.u.s->s, a.u.s->len);
        case JV_LIST:
            if (a.sub != b.sub || a.u.l->n != b.u.l->n) return 0;
            for (size_t i = 0; i < a.u.l->n; i++) {
                int eq = jv_equal(c, a.u.l->v[i], b.u.l->v[i]);
                if (eq != 1) return eq;
            }
            return 1;
        case JV_DICT:
            if (a.u.d->n != b.u.d->n) return 0;
            for (size_t i = 0; i < a.u.d->n; i++) {
                jv v;
                int found = jdict_get(c, b.u.d, a.u.d->k[i], &v);
                if (found <= 0) return found;
                int eq = jv_equal(c, a.u.d->v[i], v);
                if (eq != 1) return eq;
            }
            return 1;
        case JV_ITER:
            return a.u.it == b.u.it;
        case JV_NS:
            return a.u.d == b.u.d;
        case JV_MACRO:
            return a.u.macro == b.u.macro;
        case JV_BUILTIN:
            return a.sub == b.sub;
        case JV_METHOD:
            return a.u.m == b.u.m;
        case JV_LOOP:
            return a.u.loop == b.u.loop;
        default:
            return 0;
    }
}

int jv_less(jctx *c, int line, jv a, jv b, int *lt) {
    if (a.kind == JV_UNDEF || b.kind == JV_UNDEF)
        return jerr(c, line, "'%s' is undefined",
                    (a.kind == JV_UNDEF ? a : b).u.undef ? (a.kind == JV_UNDEF ? a : b).u.undef
                                                         : "value");
    if (is_num(a) && is_num(b)) {
        *lt = num_cmp(a, b) == -1;
        return 0;
    }
    if (a.kind == JV_STR && b.kind == JV_STR) { /* UTF-8 byte order is code point order */
        size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
        int r = memcmp(a.u.s->s, b.u.s->s, n);
        *lt = r < 0 || (r == 0 && a.u.s->len < b.u.s->len);
        return 0;
    }
    if (a.kind == JV_LIST && b.kind == JV_LIST && a.sub == b.sub &&
        (a.sub == JL_LIST || a.sub == JL_TUPLE)) {
        for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
            int eq = jv_equal(c, a.u.l->v[i], b.u.l->v[i]);
            if (eq < 0) return -1;
            if (!eq) return jv_less(c, line, a.u.l->v[i], b.u.l->v[i], lt);
        }
        *lt = a.u.l->n < b.u.l->n;
        return 0;
    }
    return jerr(c, line, "'<' not supported between instances of '%s' and '%s'", jv_type_name(a),
                jv_type_name(b));
}

const char *jv_type_name(jv v) {
    switch (v.kind) {
        case JV_UNDEF:
            return "Undefined";
        case JV_NONE:
            return "NoneType";
        case JV_BOOL:
            return "bool";
        case JV_INT:
            return "int";
        case JV_FLOAT:
            return "float";
        case JV_STR:
            return "str";
        case JV_LIST:
            return v.sub == JL_TUPLE   ? "tuple"
                   : v.sub == JL_VIEW  ? "dict_items"
                   : v.sub == JL_RANGE ? "range"
                                       : "list";
        case JV_DICT:
            return "dict";
        case JV_ITER:
            return "generator";
        case JV_NS:
            return "Namespace";
        case JV_MACRO:
            return "Macro";
        case JV_BUILTIN:
        case JV_METHOD:
            return "builtin_function_or_method";
        case JV_LOOP:
            return "LoopContext";
        default:
            return "object";
    }
}

/* ---- str() and repr() -------------------------------------------------------------- */

void jv_float_repr(double f, char *buf, size_t n) {
    if (isnan(f)) {
        snprintf(buf, n, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, n, f < 0 ? "-inf" : "inf");
        return;
    }
    /* the shortest digits that read back as f (repr's 'r' mode) */
    char e[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, f);
        if (strtod(e, NULL) == f) break;
    }
    const char *p = e;
    int neg = *p == '-';
    if (neg) p++;
    char digits[24];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    int decpt = atoi(p + 1) + 1; /* value = 0.DIGITS × 10^decpt */
    char out[64];
    size_t k = 0;
    if (neg) out[k++] = '-';
    if (decpt <= -4 || decpt > 16) { /* Python's repr switches to exponent notation here */
        out[k++] = digits[0];
        if (nd > 1) {
            out[k++] = '.';
            memcpy(out + k, digits + 1, nd - 1);
            k += nd - 1;
        }
        k += (size_t)snprintf(out + k, sizeof out - k, "e%c%02d", decpt - 1 < 0 ? '-' : '+',
                              abs(decpt - 1));
    } else if (decpt <= 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = 0; i < -decpt; i++) out[k++] = '0';
        memcpy(out + k, digits, nd);
        k += nd;
    } else if ((size_t)decpt < nd) {
        memcpy(out + k, digits, (size_t)decpt);
        k += (size_t)decpt;
        out[k++] = '.';
        memcpy(out + k, digits + decpt, nd - (size_t)decpt);
        k += nd - (size_t)decpt;
    } else {
        memcpy(out + k, digits, nd);
        k += nd;
        for (size_t i = nd; i < (size_t)decpt; i++) out[k++] = '0';
        out[k++] = '.';
        out[k++] = '0';
    }
    out[k] = '\0';
    snprintf(buf, n, "%s", out);
}

/* Python's Py_UNICODE_ISPRINTABLE for a non-ASCII code point: not in the
 * categories Cc, Cf, Cs, Co, Cn, Zl, Zp, Zs (PCRE2's Unicode tables). */
static int printable(jctx *c, const char *s, size_t n, int *out) {
    if (!c->nonprint_re) {
        int e;
        PCRE2_SIZE off;
        pcre2_code *re =
            pcre2_compile((PCRE2_SPTR) "[\\p{Cc}\\p{Cf}\\p{Cs}\\p{Co}\\p{Cn}\\p{Zl}"
                                       "\\p{Zp}\\p{Zs}]",
                          PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &e, &off, NULL);
        pcre2_match_data *md = re ? pcre2_match_data_create(1, NULL) : NULL;
        if (!md) {
            pcre2_code_free(re);
            return err_set("internal: cannot compile the Unicode category pattern");
        }
        c->nonprint_re = re;
        c->nonprint_md = md;
    }
    int rc = pcre2_match(c->nonprint_re, (PCRE2_SPTR)s, n, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK,
                         c->nonprint_md, NULL);
    *out = rc < 0;
    return 0;
}

static int repr_str(jctx *c, const char *s, size_t n, jbuf *b) {
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    if (jbuf_putc(b, q) != 0) return -1;
    for (size_t i = 0; i < n;) {
        size_t k;
        uint32_t cp = tokenizer_utf8_decode(s + i, &k);
        int rc;
        if (cp == (uint32_t)q || cp == '\\') {
            char e[2] = {'\\', (char)cp};
            rc = jbuf_put(b, e, 2);
        } else if (cp == '\t') {
            rc = jbuf_puts(b, "\\t");
        } else if (cp == '\n') {
            rc = jbuf_puts(b, "\\n");
        } else if (cp == '\r') {
            rc = jbuf_puts(b, "\\r");
        } else if (cp < 0x20 || cp == 0x7f) {
            rc = jbuf_printf(b, "\\x%02x", cp);
        } else if (cp < 0x80) {
            rc = jbuf_putc(b, (char)cp);
        } else {
            int ok = 0;
            if (printable(c, s + i, k, &ok) != 0) return -1;
            if (ok)
                rc = jbuf_put(b, s + i, k);
            else
                rc = jbuf_printf(b,
                                 cp <= 0xff     ? "\\x%02x"
                                 : cp <= 0xffff ? "\\u%04x"
                                                : "\\U%08x",
                                 cp);
        }
        if (rc != 0) return -1;
        i += k;
    }
    return jbuf_putc(b, q);
}

static int unprintable(jctx *c, int line, jv v) {
    return jerr(c, line,
                "printing a %s object is not supported (Python would print its type and memory "
                "address)",
                jv_type_name(v));
}

int jv_repr(jctx *c, int line, jv v, jbuf *b) {
    if (jstep(c, line) != 0) return -1;
    char tmp[64];
    switch (v.kind) {
        case JV_UNDEF:
            return jbuf_puts(b, "Undefined");
        case JV_STR:
            return repr_str(c, v.u.s->s, v.u.s->len, b);
        case JV_LIST: {
            if (v.sub == JL_VIEW || v.sub == JL_RANGE) return unprintable(c, line, v);
            int tuple = v.sub == JL_TUPLE;
            if (jbuf_putc(b, tuple ? '(' : '[') != 0) return -1;
            for (size_t i = 0; i < v.u.l->n; i++)
                if ((i && jbuf_puts(b, ", ") != 0) || jv_repr(c, line, v.u.l->v[i], b) != 0)
                    return -1;
            if (tuple && v.u.l->n == 1 && jbuf_putc(b, ',') != 0) return -1;
            return jbuf_putc(b, tuple ? ')' : ']');
        }
        case JV_DICT:
            if (jbuf_putc(b, '{') != 0) return -1;
            for (size_t i = 0; i < v.u.d->n; i++)
                if ((i && jbuf_puts(b, ", ") != 0) || jv_repr(c, line, v.u.d->k[i], b) != 0 ||
                    jbuf_puts(b, ": ") != 0 || jv_repr(c, line, v.u.d->v[i], b) != 0)
                    return -1;
            return jbuf_putc(b, '}');
        case JV_NONE:
            return jbuf_puts(b, "None");
        case JV_BOOL:
            return jbuf_puts(b, v.u.b ? "True" : "False");
        case JV_INT:
            snprintf(tmp, sizeof tmp, "%lld", (long long)v.u.i);
            return jbuf_puts(b, tmp);
        case JV_FLOAT:
            jv_float_repr(v.u.f, tmp, sizeof tmp);
            return jbuf_puts(b, tmp);
        default:
            return unprintable(c, line, v);
    }
}

int jv_to_str(jctx *c, int line, jv v, jbuf *b) {
    switch (v.kind) {
        case JV_UNDEF:
            return 0;
        case JV_STR:
            return jbuf_put(b, v.u.s->s, v.u.s->len);
        default:
            return jv_repr(c, line, v, b);
    }
}

int jv_stringify(jctx *c, int line, jv v, jv *out) {
    if (v.kind == JV_STR) {
        *out = v;
        return 0;
    }
    jbuf b = {.limit = c->out->limit};
    int rc = jv_to_str(c, line, v, &b);
    rc = jv_from_buf(c, rc, &b, out);
    return rc;
}

void jinja_ctx_free_re(jctx *c) {
    pcre2_match_data_free(c->nonprint_md);
    pcre2_code_free(c->nonprint_re);
    c->nonprint_md = c->nonprint_re = NULL;
}
