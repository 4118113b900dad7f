/* jinja_filters — the filters and tests chat templates use, with Jinja2's
 * signatures (filters.py, tests.py, 3.1) and transformers' tojson. Sequence
 * filters (sort, map, select, join, …) are in jinja_seq.c.
 *
 * Case mapping (upper, lower, capitalize, title) is Python's for ASCII
 * text; text with other characters is refused, since Python's full Unicode
 * case tables are not here and a different result must not be rendered. */
#include "model/chat/jinja_internal.h"

#include "model/chat/jinja_filters.h"
#include "util/err.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const jname_id filters[] = {{"abs", F_ABS},
                                   {"attr", F_ATTR},
                                   {"capitalize", F_CAPITALIZE},
                                   {"count", F_LENGTH},
                                   {"d", F_DEFAULT},
                                   {"default", F_DEFAULT},
                                   {"dictsort", F_DICTSORT},
                                   {"first", F_FIRST},
                                   {"float", F_FLOAT},
                                   {"indent", F_INDENT},
                                   {"int", F_INT},
                                   {"items", F_ITEMS},
                                   {"join", F_JOIN},
                                   {"last", F_LAST},
                                   {"length", F_LENGTH},
                                   {"list", F_LIST},
                                   {"lower", F_LOWER},
                                   {"map", F_MAP},
                                   {"max", F_MAX},
                                   {"min", F_MIN},
                                   {"reject", F_REJECT},
                                   {"rejectattr", F_REJECTATTR},
                                   {"replace", F_REPLACE},
                                   {"reverse", F_REVERSE},
                                   {"round", F_ROUND},
                                   {"safe", F_SAFE},
                                   {"select", F_SELECT},
                                   {"selectattr", F_SELECTATTR},
                                   {"sort", F_SORT},
                                   {"string", F_STRING},
                                   {"sum", F_SUM},
                                   {"title", F_TITLE},
                                   {"tojson", F_TOJSON},
                                   {"trim", F_TRIM},
                                   {"unique", F_UNIQUE},
                                   {"upper", F_UPPER},
                                   {NULL, 0}};

/* Jinja2's other built-in filters: refused as "not supported". */
static const char *const other_filters[] = {"batch",          "center",      "e",      "escape",
                                            "filesizeformat", "forceescape", "format", "groupby",
                                            "pprint",         "random",      "slice",  "striptags",
                                            "truncate",       "urlencode",   "urlize", "wordcount",
                                            "wordwrap",       "xmlattr",     NULL};

static int find(const jname_id *t, const char *name) {
    for (size_t i = 0; t[i].name; i++)
        if (!strcmp(t[i].name, name)) return t[i].id;
    return -1;
}

int jinja_filter_id(const char *name) {
    return find(filters, name);
}

int jinja_filter_known(const char *name) {
    for (size_t i = 0; other_filters[i]; i++)
        if (!strcmp(other_filters[i], name)) return 1;
    return find(filters, name) >= 0;
}

const char *jinja_filter_name(int id) {
    for (size_t i = 0; filters[i].name; i++)
        if (filters[i].id == id) return filters[i].name;
    return "?";
}

/* ---- argument binding --------------------------------------------------------------- */

int jbind(jctx *c, int line, const char *fname, const char *const *params, size_t np,
          const jv *args, size_t n, const jkw *kw, size_t n_kw, jv *out, int *given) {
    if (n > np)
        return jerr(c, line, "%s() takes at most %zu argument(s) (%zu given)", fname, np, n);
    for (size_t i = 0; i < np; i++) given[i] = i < n;
    for (size_t i = 0; i < n; i++) out[i] = args[i];
    for (size_t k = 0; k < n_kw; k++) {
        size_t i = 0;
        while (i < np && strcmp(params[i], kw[k].name) != 0) i++;
        if (i == np)
            return jerr(c, line, "%s() got an unexpected keyword argument '%s'", fname, kw[k].name);
        if (given[i])
            return jerr(c, line, "%s() got multiple values for argument '%s'", fname, kw[k].name);
        out[i] = kw[k].v;
        given[i] = 1;
    }
    return 0;
}

/* ---- strings ----------------------------------------------------------------------- */

int jascii_only(jctx *c, int line, const char *what, jv s) {
    if (jstr_non_ascii(s.u.s->s, s.u.s->len))
        return jerr(c, line,
                    "%s of text with non-ASCII characters is not supported (Python's Unicode "
                    "case mapping is not implemented)",
                    what);
    return 0;
}

static int is_upper(char ch) {
    return ch >= 'A' && ch <= 'Z';
}
static int is_lower(char ch) {
    return ch >= 'a' && ch <= 'z';
}

/* mode: 'U' upper, 'L' lower, 'C' capitalize, 'T' Jinja's title filter, 't' str.title() */
int jcase(jctx *c, int line, jv v, int mode, jv *out) {
    jv s;
    if (jv_stringify(c, line, v, &s) != 0) return -1;
    const char *what = mode == 'U'   ? "upper"
                       : mode == 'L' ? "lower"
                       : mode == 'C' ? "capitalize"
                                     : "title";
    if (jascii_only(c, line, what, s) != 0 || jv_str(c, s.u.s->s, s.u.s->len, out) != 0) return -1;
    char *p = out->u.s->s;
    size_t len = out->u.s->len;
    for (size_t i = 0; i < len; i++) {
        int up;
        if (mode == 'U')
            up = 1;
        else if (mode == 'L')
            up = 0;
        else if (mode == 'C')
            up = i == 0;
        else if (mode == 't') /* after a character that is not a cased letter */
            up = i == 0 || !(is_upper(p[i - 1]) || is_lower(p[i - 1]));
        else { /* a run start: the runs are split at [-\s({\[<]+ */
            static const char seps[] = "-({[< \t\n\v\f\r\x1c\x1d\x1e\x1f";
            int sep = memchr(seps, p[i], sizeof seps - 1) != NULL;
            int prev = i > 0 && memchr(seps, p[i - 1], sizeof seps - 1) != NULL;
            up = i == 0 || sep != prev;
        }
        if (up && is_lower(p[i])) p[i] -= 'a' - 'A';
        if (!up && is_upper(p[i])) p[i] += 'a' - 'A';
    }
    return 0;
}

static int f_trim(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                  jv *out) {
    BIND("trim", "chars");
    jv s;
    if (jv_stringify(c, line, v, &s) != 0) return -1;
    int has_chars = g[0] && p[0].kind != JV_NONE;
    if (has_chars && p[0].kind != JV_STR) return jerr(c, line, "strip arg must be None or str");
    size_t a, b;
    jstr_strip(s.u.s->s, s.u.s->len, has_chars ? p[0].u.s->s : NULL, has_chars ? p[0].u.s->len : 0,
               3, &a, &b);
    return jv_str(c, s.u.s->s + a, b - a, out);
}

/* Python's str.replace(old, new, count): an empty old inserts new between
 * the code points. */
int jreplace(jctx *c, int line, jv s, jv old, jv new_, int64_t count, jv *out) {
    if (s.kind != JV_STR || old.kind != JV_STR || new_.kind != JV_STR)
        return jerr(c, line, "replace() arguments must be str");
    jbuf b = {.limit = c->out->limit};
    const char *p = s.u.s->s, *o = old.u.s->s;
    size_t n = s.u.s->len, on = old.u.s->len;
    int rc = 0;
    int64_t done = 0;
    size_t i = 0;
    if (on == 0) {
        while (rc == 0 && (count < 0 || done < count)) {
            rc = jbuf_put(&b, new_.u.s->s, new_.u.s->len);
            done++;
            if (i >= n) break;
            size_t k;
            tokenizer_utf8_decode(p + i, &k);
            if (rc == 0) rc = jbuf_put(&b, p + i, k);
            i += k;
        }
    } else {
        while (rc == 0 && i + on <= n && (count < 0 || done < count)) {
            const char *hit = NULL;
            for (size_t j = i; j + on <= n; j++)
                if (!memcmp(p + j, o, on)) {
                    hit = p + j;
                    break;
                }
            if (!hit) break;
            rc = jbuf_put(&b, p + i, (size_t)(hit - (p + i)));
            if (rc == 0) rc = jbuf_put(&b, new_.u.s->s, new_.u.s->len);
            i = (size_t)(hit - p) + on;
            done++;
        }
    }
    if (rc == 0) rc = jbuf_put(&b, p + i, n - i);
    if (rc == 0) rc = jstep(c, line);
    rc = jv_from_buf(c, rc, &b, out);
    return rc;
}

static int f_replace(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                     jv *out) {
    BIND("replace", "old", "new", "count");
    if (!g[0] || !g[1]) return jerr(c, line, "replace() needs the old and the new text");
    jv s, o, w;
    if (jv_stringify(c, line, v, &s) != 0 || jv_stringify(c, line, p[0], &o) != 0 ||
        jv_stringify(c, line, p[1], &w) != 0)
        return -1;
    int64_t count = -1;
    if (g[2] && p[2].kind != JV_NONE) {
        if (p[2].kind != JV_INT) return jerr(c, line, "replace(): count must be an integer");
        count = p[2].u.i;
    }
    return jreplace(c, line, s, o, w, count, out);
}

/* Python's str.splitlines() boundaries. */
static size_t line_break(const char *s, size_t n, size_t i) {
    size_t k;
    uint32_t cp = tokenizer_utf8_decode(s + i, &k);
    if (cp == '\r') return i + 1 < n && s[i + 1] == '\n' ? 2 : 1;
    if (cp == '\n' || cp == 0x0b || cp == 0x0c || (cp >= 0x1c && cp <= 0x1e) || cp == 0x85 ||
        cp == 0x2028 || cp == 0x2029)
        return k;
    return 0;
}

/* Python's str.splitlines() into a list of strings. */
int jsplitlines(jctx *c, int line, jv s, int keepends, jv *out) {
    const char *p = s.u.s->s;
    size_t n = s.u.s->len, start = 0, count = 0;
    jv parts[2];
    if (jv_list_new(c, 0, JL_LIST, &parts[0]) != 0) return -1;
    jbuf items = {0};
    int rc = 0;
    for (size_t i = 0; i <= n && rc == 0;) {
        size_t br = i < n ? line_break(p, n, i) : 0;
        if (i == n && start == n) break;
        if (i < n && !br) {
            size_t k;
            tokenizer_utf8_decode(p + i, &k);
            i += k;
            continue;
        }
        jv piece;
        rc = jv_str(c, p + start, (keepends ? i + br : i) - start, &piece);
        if (rc == 0) rc = jbuf_put(&items, &piece, sizeof piece);
        count++;
        i += br ? br : 1;
        start = i;
        if (!br) break;
    }
    if (rc == 0 && jv_list_new(c, count, JL_LIST, out) == 0) {
        if (count) memcpy(out->u.l->v, items.p, count * sizeof(jv));
    } else
        rc = -1;
    jbuf_free(&items);
    (void)line;
    return rc;
}

/* An indentation given as a string (itself) or an integer n (n spaces). */
static int indent_text(jctx *c, int line, const char *who, jv w, jbuf *out) {
    if (w.kind == JV_STR) return jbuf_put(out, w.u.s->s, w.u.s->len);
    if (w.kind != JV_INT && w.kind != JV_BOOL)
        return jerr(c, line, "%s: the indent must be an integer or a string", who);
    for (int64_t i = 0, n = w.kind == JV_BOOL ? w.u.b : w.u.i; i < n; i++)
        if (jbuf_putc(out, ' ') != 0) return -1;
    return 0;
}

static int f_indent(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                    jv *out) {
    BIND("indent", "width", "first", "blank");
    if (v.kind != JV_STR) return jerr(c, line, "indent: the value must be a string");
    jbuf ind = {0}, b = {.limit = c->out->limit};
    int rc = g[0] ? indent_text(c, line, "indent", p[0], &ind) : jbuf_puts(&ind, "    ");
    jv withnl, lines;
    if (rc == 0) {
        jv nl;
        rc = jv_str(c, "\n", 1, &nl);
        if (rc == 0) rc = jv_arith(c, line, JT_ADD, v, nl, &withnl);
    }
    if (rc == 0) rc = jsplitlines(c, line, withnl, 0, &lines);
    int first = g[1] && jv_truthy(p[1]), blank = g[2] && jv_truthy(p[2]);
    if (rc == 0 && first) rc = jbuf_put(&b, ind.p, ind.len);
    for (size_t i = 0; rc == 0 && i < lines.u.l->n; i++) {
        jstr *ln = lines.u.l->v[i].u.s;
        if (i) {
            rc = jbuf_putc(&b, '\n');
            if (rc == 0 && (blank || ln->len)) rc = jbuf_put(&b, ind.p, ind.len);
        }
        if (rc == 0) rc = jbuf_put(&b, ln->s, ln->len);
    }
    rc = jv_from_buf(c, rc, &b, out);
    jbuf_free(&ind);
    return rc;
}

static int f_tojson(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                    jv *out) {
    BIND("tojson", "ensure_ascii", "indent", "separators", "sort_keys");
    jjson_opts o = {.ensure_ascii = g[0] && jv_truthy(p[0]), .sort_keys = g[3] && jv_truthy(p[3])};
    jbuf ind = {0};
    int rc = 0;
    if (g[1] && p[1].kind != JV_NONE) { /* an int n is n spaces, as json.dumps */
        rc = indent_text(c, line, "tojson", p[1], &ind);
        if (rc == 0 && jbuf_put(&ind, "", 0) != 0) rc = -1;
        o.indent = ind.p;
        o.indent_len = ind.len;
    }
    o.item_sep = o.indent ? "," : ", ";
    o.key_sep = ": ";
    if (rc == 0 && g[2] && p[2].kind != JV_NONE) {
        jv s = p[2];
        if (s.kind != JV_LIST || s.u.l->n != 2 || s.u.l->v[0].kind != JV_STR ||
            s.u.l->v[1].kind != JV_STR)
            rc = jerr(c, line, "tojson: separators must be a pair of strings");
        else
            o.item_sep = s.u.l->v[0].u.s->s, o.key_sep = s.u.l->v[1].u.s->s;
    }
    o.item_sep_len = strlen(o.item_sep);
    o.key_sep_len = strlen(o.key_sep);
    jbuf b = {.limit = c->out->limit};
    if (rc == 0) rc = jv_to_json(c, line, v, &o, &b);
    rc = jv_from_buf(c, rc, &b, out);
    jbuf_free(&ind);
    return rc;
}

/* Python's int(str): white space around, a sign, digits with single underscores. */
static int parse_int(const char *s, size_t n, int64_t *out) {
    size_t a, b;
    jstr_strip(s, n, NULL, 0, 3, &a, &b);
    int neg = 0;
    if (a < b && (s[a] == '+' || s[a] == '-')) neg = s[a++] == '-';
    if (a == b || s[a] == '_' || s[b - 1] == '_') return -1;
    uint64_t v = 0;
    for (size_t i = a; i < b; i++) {
        if (s[i] == '_' && s[i - 1] != '_') continue;
        if (s[i] < '0' || s[i] > '9') return -1;
        if (v > (UINT64_MAX - 9) / 10) return -2;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > (uint64_t)INT64_MAX + neg) return -2;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

/* Python's float(str), for the forms the int and float filters meet. */
static int parse_float(const char *s, size_t n, double *out) {
    size_t a, b;
    jstr_strip(s, n, NULL, 0, 3, &a, &b);
    char buf[128];
    size_t k = 0;
    for (size_t i = a; i < b; i++) {
        if (k + 1 >= sizeof buf) return -1;
        if (s[i] == '_') {
            if (i == a || i + 1 == b || !(s[i - 1] >= '0' && s[i - 1] <= '9') ||
                !(s[i + 1] >= '0' && s[i + 1] <= '9'))
                return -1;
            continue;
        }
        if (!strchr("0123456789+-.eEinfatyINFATY", s[i])) return -1;
        buf[k++] = s[i];
    }
    buf[k] = '\0';
    if (k == 0) return -1;
    char *end;
    *out = strtod(buf, &end);
    return *end ? -1 : 0;
}

static int f_int(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                 jv *out) {
    BIND("int", "default", "base");
    *out = g[0] ? p[0] : jv_int(0);
    if (g[1] && !(p[1].kind == JV_INT && p[1].u.i == 10))
        return jerr(c, line, "int: bases other than 10 are not supported");
    double f;
    switch (v.kind) {
        case JV_INT:
        case JV_BOOL:
            *out = jv_int(v.kind == JV_BOOL ? v.u.b : v.u.i);
            return 0;
        case JV_FLOAT:
            f = v.u.f;
            break;
        case JV_STR: {
            int64_t i;
            int r = parse_int(v.u.s->s, v.u.s->len, &i);
            if (r == -2) return jerr(c, line, "int: the number does not fit in 64 bits");
            if (r == 0) {
                *out = jv_int(i);
                return 0;
            }
            if (parse_float(v.u.s->s, v.u.s->len, &f) != 0) return 0; /* the default */
            break;
        }
        case JV_UNDEF:
            return jerr(c, line, "'%s' is undefined", v.u.undef ? v.u.undef : "value");
        default:
            return 0;
    }
    if (isnan(f)) return 0;
    if (isinf(f) || f >= 9223372036854775808.0 || f < -9223372036854775808.0)
        return jerr(c, line, "int: cannot convert %g to a 64-bit integer", f);
    *out = jv_int((int64_t)f);
    return 0;
}

static int f_float(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                   jv *out) {
    BIND("float", "default");
    *out = g[0] ? p[0] : jv_float(0.0);
    double f;
    if (v.kind == JV_INT || v.kind == JV_BOOL)
        *out = jv_float((double)(v.kind == JV_BOOL ? v.u.b : v.u.i));
    else if (v.kind == JV_FLOAT)
        *out = v;
    else if (v.kind == JV_STR && parse_float(v.u.s->s, v.u.s->len, &f) == 0)
        *out = jv_float(f);
    else if (v.kind == JV_UNDEF)
        return jerr(c, line, "'%s' is undefined", v.u.undef ? v.u.undef : "value");
    return 0;
}

static int f_round(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                   jv *out) {
    BIND("round", "precision", "method");
    int64_t prec = 0;
    if (g[0]) {
        if (p[0].kind != JV_INT) return jerr(c, line, "round: precision must be an integer");
        prec = p[0].u.i;
    }
    const char *method = g[1] && p[1].kind == JV_STR ? p[1].u.s->s : "common";
    if (strcmp(method, "common") && strcmp(method, "ceil") && strcmp(method, "floor"))
        return jerr(c, line, "round: method must be common, ceil or floor");
    if (prec < 0 || prec > 15)
        return jerr(c, line, "round: precision %lld is not supported", (long long)prec);
    if (v.kind != JV_INT && v.kind != JV_BOOL && v.kind != JV_FLOAT)
        return jerr(c, line, "round: type %s doesn't define __round__", jv_type_name(v));
    if (v.kind != JV_FLOAT && !strcmp(method, "common")) {
        *out = jv_int(v.kind == JV_BOOL ? v.u.b : v.u.i);
        return 0;
    }
    double x = v.kind == JV_FLOAT ? v.u.f : (double)(v.kind == JV_BOOL ? v.u.b : v.u.i);
    if (!strcmp(method, "common")) {
        /* Python rounds the exact binary value half to even, as printf does */
        char buf[400];
        if (!isfinite(x)) {
            *out = jv_float(x);
            return 0;
        }
        snprintf(buf, sizeof buf, "%.*f", (int)prec, x);
        *out = jv_float(strtod(buf, NULL));
        return 0;
    }
    double scale = pow(10.0, (double)prec),
           r = method[0] == 'c' ? ceil(x * scale) : floor(x * scale);
    *out = jv_float(r / scale);
    return 0;
}

/* ---- filters ------------------------------------------------------------------------ */

int jfilter_seq(jctx *c, int line, int id, jv v, const jv *args, size_t n, const jkw *kw,
                size_t n_kw, jv *out);

int jfilter(jctx *c, int line, int id, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
            jv *out) {
    if (jstep(c, line) != 0) return -1;
    switch (id) {
        case F_TRIM:
            return f_trim(c, line, v, args, n, kw, n_kw, out);
        case F_REPLACE:
            return f_replace(c, line, v, args, n, kw, n_kw, out);
        case F_INDENT:
            return f_indent(c, line, v, args, n, kw, n_kw, out);
        case F_TOJSON:
            return f_tojson(c, line, v, args, n, kw, n_kw, out);
        case F_INT:
            return f_int(c, line, v, args, n, kw, n_kw, out);
        case F_FLOAT:
            return f_float(c, line, v, args, n, kw, n_kw, out);
        case F_ROUND:
            return f_round(c, line, v, args, n, kw, n_kw, out);
        case F_UPPER:
        case F_LOWER:
        case F_CAPITALIZE:
        case F_TITLE:
        case F_STRING:
        case F_SAFE: {
            if (n + n_kw > 0)
                return jerr(c, line, "%s() takes no arguments", jinja_filter_name(id));
            if (id == F_STRING || id == F_SAFE) return jv_stringify(c, line, v, out);
            return jcase(c, line, v,
                         id == F_UPPER        ? 'U'
                         : id == F_LOWER      ? 'L'
                         : id == F_CAPITALIZE ? 'C'
                                              : 'T',
                         out);
        }
        case F_DEFAULT: {
            BIND("default", "default_value", "boolean");
            jv dflt = p[0];
            if (!g[0] && jv_str(c, "", 0, &dflt) != 0) return -1;
            int use = v.kind == JV_UNDEF || (g[1] && jv_truthy(p[1]) && !jv_truthy(v));
            *out = use ? dflt : v;
            return 0;
        }
        case F_LENGTH: {
            int64_t len;
            if (n + n_kw) return jerr(c, line, "length() takes no arguments");
            if (jv_len(c, line, v, &len) != 0) return -1;
            *out = jv_int(len);
            return 0;
        }
        case F_ABS:
            if (n + n_kw) return jerr(c, line, "abs() takes no arguments");
            if (v.kind == JV_FLOAT) {
                *out = jv_float(fabs(v.u.f));
                return 0;
            }
            if (v.kind == JV_INT || v.kind == JV_BOOL) {
                int64_t x = v.kind == JV_BOOL ? v.u.b : v.u.i;
                return x < 0 ? jv_negate(c, line, v, 1, out) : (*out = jv_int(x), 0);
            }
            return jerr(c, line, "bad operand type for abs(): '%s'", jv_type_name(v));
        case F_ATTR: { /* Python's getattr only: a dict's items are not attributes */
            BIND("attr", "name");
            if (!g[0] || p[0].kind != JV_STR) return jerr(c, line, "attr() needs a name string");
            if (v.kind == JV_DICT) {
                int m = jmethod_lookup(c, line, v, p[0].u.s->s, out);
                if (m == 0) *out = jv_undef(p[0].u.s->s);
                return m < 0 ? -1 : 0;
            }
            if (v.kind == JV_UNDEF) {
                *out = jv_undef(p[0].u.s->s);
                return 0;
            }
            return jgetattr(c, line, v, p[0].u.s->s, p[0].u.s->len, out);
        }
        default:
            return jfilter_seq(c, line, id, v, args, n, kw, n_kw, out);
    }
}
