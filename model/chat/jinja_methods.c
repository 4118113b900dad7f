/* jinja_methods — the Python methods templates call on strings, dicts and
 * lists (content.strip(), message.get('x'), d.items(), …), and the global
 * functions: range (the sandbox's, at most 100000 items), dict, namespace
 * (transformers' TemplateNamespace), raise_exception and strftime_now.
 *
 * A method Python has but this interpreter does not is an error naming it
 * (never an undefined value, which would render differently); the methods
 * that modify a list or dict are refused as the immutable sandbox refuses
 * them. */
#include "model/chat/jinja_filters.h"

#include "util/err.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

enum {
    /* str */
    M_CAPITALIZE,
    M_COUNT,
    M_ENDSWITH,
    M_FIND,
    M_INDEX,
    M_ISALNUM,
    M_ISALPHA,
    M_ISDIGIT,
    M_ISLOWER,
    M_ISSPACE,
    M_ISUPPER,
    M_JOIN,
    M_LOWER,
    M_LSTRIP,
    M_REMOVEPREFIX,
    M_REMOVESUFFIX,
    M_REPLACE,
    M_RFIND,
    M_RSPLIT,
    M_RSTRIP,
    M_SPLIT,
    M_SPLITLINES,
    M_STARTSWITH,
    M_STRIP,
    M_TITLE,
    M_UPPER,
    /* dict */
    M_GET,
    M_ITEMS,
    M_KEYS,
    M_VALUES,
    M_COPY,
    /* list (count, index and copy are shared names) */
    M_LCOUNT,
    M_LINDEX
};

static const jname_id str_methods[] = {{"capitalize", M_CAPITALIZE},
                                       {"count", M_COUNT},
                                       {"endswith", M_ENDSWITH},
                                       {"find", M_FIND},
                                       {"index", M_INDEX},
                                       {"isalnum", M_ISALNUM},
                                       {"isalpha", M_ISALPHA},
                                       {"isdigit", M_ISDIGIT},
                                       {"islower", M_ISLOWER},
                                       {"isspace", M_ISSPACE},
                                       {"isupper", M_ISUPPER},
                                       {"join", M_JOIN},
                                       {"lower", M_LOWER},
                                       {"lstrip", M_LSTRIP},
                                       {"removeprefix", M_REMOVEPREFIX},
                                       {"removesuffix", M_REMOVESUFFIX},
                                       {"replace", M_REPLACE},
                                       {"rfind", M_RFIND},
                                       {"rsplit", M_RSPLIT},
                                       {"rstrip", M_RSTRIP},
                                       {"split", M_SPLIT},
                                       {"splitlines", M_SPLITLINES},
                                       {"startswith", M_STARTSWITH},
                                       {"strip", M_STRIP},
                                       {"title", M_TITLE},
                                       {"upper", M_UPPER},
                                       {NULL, 0}};
static const char *const str_other[] = {
    "casefold", "center",    "encode",       "expandtabs", "format",      "format_map",
    "isascii",  "isdecimal", "isidentifier", "isnumeric",  "isprintable", "istitle",
    "ljust",    "maketrans", "partition",    "rindex",     "rjust",       "rpartition",
    "swapcase", "translate", "zfill",        NULL};

static const jname_id dict_methods[] = {{"get", M_GET},       {"items", M_ITEMS}, {"keys", M_KEYS},
                                        {"values", M_VALUES}, {"copy", M_COPY},   {NULL, 0}};
static const char *const dict_other[] = {"clear",      "fromkeys", "pop", "popitem",
                                         "setdefault", "update",   NULL};

static const jname_id list_methods[] = {
    {"count", M_LCOUNT}, {"index", M_LINDEX}, {"copy", M_COPY}, {NULL, 0}};
static const char *const list_other[] = {"append", "clear",   "extend", "insert", "pop",
                                         "remove", "reverse", "sort",   NULL};

static const char *const num_other[] = {
    "as_integer_ratio", "bit_count", "bit_length", "conjugate", "denominator",
    "from_bytes",       "fromhex",   "hex",        "imag",      "is_integer",
    "numerator",        "real",      "to_bytes",   NULL};

static int in_list(const char *const *l, const char *name) {
    for (size_t i = 0; l[i]; i++)
        if (!strcmp(l[i], name)) return 1;
    return 0;
}

static int find_id(const jname_id *t, const char *name) {
    for (size_t i = 0; t[i].name; i++)
        if (!strcmp(t[i].name, name)) return t[i].id;
    return -1;
}

int jmethod_lookup(jctx *c, int line, jv obj, const char *name, jv *out) {
    const jname_id *t = NULL;
    const char *const *other = NULL;
    switch (obj.kind) {
        case JV_STR:
            t = str_methods, other = str_other;
            break;
        case JV_DICT:
            t = dict_methods, other = dict_other;
            break;
        case JV_LIST:
            if (obj.sub == JL_LIST || obj.sub == JL_TUPLE) t = list_methods, other = list_other;
            break;
        case JV_INT:
        case JV_BOOL:
        case JV_FLOAT:
            other = num_other;
            break;
        default:
            break;
    }
    int id = t ? find_id(t, name) : -1;
    if (id >= 0 && obj.kind == JV_LIST && obj.sub == JL_TUPLE && id == M_COPY) id = -1;
    if (id >= 0) return jv_method(c, obj, id, out) == 0 ? 1 : -1;
    if (other && in_list(other, name))
        return jerr(c, line, "the method %s.%s is not supported%s", jv_type_name(obj), name,
                    obj.kind == JV_LIST || obj.kind == JV_DICT
                        ? " (chat templates run in an immutable sandbox)"
                        : "");
    return 0;
}

/* ---- str methods ------------------------------------------------------------------ */

static int str_arg(jctx *c, int line, const char *m, jv v) {
    if (v.kind != JV_STR)
        return jerr(c, line, "%s() argument must be str, not %s", m, jv_type_name(v));
    return 0;
}

/* prefix / suffix test against a str or a tuple of str */
static int affix(jctx *c, int line, jv s, jv a, int suffix, int *res) {
    *res = 0;
    size_t n = a.kind == JV_LIST && a.sub == JL_TUPLE ? a.u.l->n : 1;
    for (size_t i = 0; i < n && !*res; i++) {
        jv x = a.kind == JV_LIST ? a.u.l->v[i] : a;
        if (str_arg(c, line, suffix ? "endswith" : "startswith", x) != 0) return -1;
        size_t k = x.u.s->len;
        *res = k <= s.u.s->len && !memcmp(s.u.s->s + (suffix ? s.u.s->len - k : 0), x.u.s->s, k);
    }
    return 0;
}

/* Python's str.split / rsplit (sep None: runs of white space). */
static int split(jctx *c, int line, jv s, jv sep, int64_t maxsplit, int right, jv *out) {
    const char *p = s.u.s->s;
    size_t n = s.u.s->len;
    jbuf parts = {0};
    int rc = 0;
    size_t count = 0;
#define PUSH(a, b)                                                                                 \
    do {                                                                                           \
        jv piece_;                                                                                 \
        if (rc == 0) rc = jv_str(c, p + (a), (b) - (a), &piece_);                                  \
        if (rc == 0) rc = jbuf_put(&parts, &piece_, sizeof piece_);                                \
        count++;                                                                                   \
    } while (0)
    if (sep.kind == JV_NONE) {
        /* collect the words, then join the tail beyond maxsplit back */
        size_t i = 0;
        size_t(*ws)[2] = NULL;
        size_t nw = 0, cap = 0;
        while (i < n && rc == 0) {
            size_t k;
            while (i < n && jstr_is_space(tokenizer_utf8_decode(p + i, &k))) i += k;
            if (i >= n) break;
            size_t a = i;
            while (i < n && !jstr_is_space(tokenizer_utf8_decode(p + i, &k))) i += k;
            if (nw == cap) {
                cap = cap ? cap * 2 : 16;
                size_t(*bigger)[2] = jarena_alloc(&c->arena, cap * sizeof *bigger);
                if (!bigger) return -1;
                if (nw) memcpy(bigger, ws, nw * sizeof *ws);
                ws = bigger;
            }
            ws[nw][0] = a;
            ws[nw][1] = i;
            nw++;
        }
        if (maxsplit < 0 || (size_t)maxsplit + 1 >= nw) {
            for (size_t w = 0; w < nw; w++) PUSH(ws[w][0], ws[w][1]);
        } else if (!right) { /* the rest keeps its trailing white space, as Python's */
            for (size_t w = 0; w < (size_t)maxsplit; w++) PUSH(ws[w][0], ws[w][1]);
            PUSH(ws[maxsplit][0], n);
        } else { /* the head keeps its leading white space */
            size_t head = nw - (size_t)maxsplit;
            PUSH(0, ws[head - 1][1]);
            for (size_t w = head; w < nw; w++) PUSH(ws[w][0], ws[w][1]);
        }
    } else {
        if (str_arg(c, line, right ? "rsplit" : "split", sep) != 0) return -1;
        size_t k = sep.u.s->len;
        if (k == 0) return jerr(c, line, "empty separator");
        /* the cut points, then the pieces */
        size_t *cuts = jarena_alloc(&c->arena, (n / k + 2) * sizeof *cuts), nc = 0;
        if (!cuts) return -1;
        for (size_t i = 0; i + k <= n;)
            if (!memcmp(p + i, sep.u.s->s, k))
                cuts[nc++] = i, i += k;
            else
                i++;
        size_t from = 0, to = nc;
        if (!right && maxsplit >= 0 && (size_t)maxsplit < nc) to = (size_t)maxsplit;
        if (right) { /* rsplit finds its separators from the right */
            nc = 0;
            for (size_t i = n; i >= k && (maxsplit < 0 || nc < (size_t)maxsplit);) {
                if (!memcmp(p + i - k, sep.u.s->s, k))
                    cuts[nc++] = i - k, i -= k;
                else
                    i--;
            }
            for (size_t a = 0, b = nc ? nc - 1 : 0; a < b; a++, b--) {
                size_t t = cuts[a];
                cuts[a] = cuts[b];
                cuts[b] = t;
            }
            from = 0;
            to = nc;
        }
        size_t start = 0;
        for (size_t i = from; i < to; i++) {
            PUSH(start, cuts[i]);
            start = cuts[i] + k;
        }
        PUSH(start, n);
    }
#undef PUSH
    if (rc == 0 && jv_list_new(c, count, JL_LIST, out) == 0) {
        if (count) memcpy(out->u.l->v, parts.p, count * sizeof(jv));
    } else
        rc = -1;
    jbuf_free(&parts);
    return rc;
}

static int str_method(jctx *c, int line, jmethod *m, const jv *args, size_t n, const jkw *kw,
                      size_t n_kw, jv *out) {
    jv s = m->self;
    const char *sp = s.u.s->s;
    size_t len = s.u.s->len;
    switch (m->which) {
        case M_STRIP:
        case M_LSTRIP:
        case M_RSTRIP: {
            BIND("strip", "chars");
            int has = g[0] && p[0].kind != JV_NONE;
            if (has && str_arg(c, line, "strip", p[0]) != 0) return -1;
            size_t a, b;
            jstr_strip(sp, len, has ? p[0].u.s->s : NULL, has ? p[0].u.s->len : 0,
                       m->which == M_STRIP    ? 3
                       : m->which == M_LSTRIP ? 1
                                              : 2,
                       &a, &b);
            return jv_str(c, sp + a, b - a, out);
        }
        case M_SPLIT:
        case M_RSPLIT: {
            BIND("split", "sep", "maxsplit");
            int64_t max = -1;
            if (g[1]) {
                if (p[1].kind != JV_INT)
                    return jerr(c, line, "split(): maxsplit must be an integer");
                max = p[1].u.i;
            }
            return split(c, line, s, g[0] ? p[0] : jv_none(), max, m->which == M_RSPLIT, out);
        }
        case M_SPLITLINES: {
            BIND("splitlines", "keepends");
            return jsplitlines(c, line, s, g[0] && jv_truthy(p[0]), out);
        }
        case M_STARTSWITH:
        case M_ENDSWITH: {
            if (n != 1 || n_kw) return jerr(c, line, "startswith/endswith take one argument here");
            int res;
            if (affix(c, line, s, args[0], m->which == M_ENDSWITH, &res) != 0) return -1;
            *out = jv_bool(res);
            return 0;
        }
        case M_REMOVEPREFIX:
        case M_REMOVESUFFIX: {
            if (n != 1 || n_kw) return jerr(c, line, "removeprefix/removesuffix take one argument");
            if (str_arg(c, line, "removeprefix", args[0]) != 0) return -1;
            int res;
            if (affix(c, line, s, args[0], m->which == M_REMOVESUFFIX, &res) != 0) return -1;
            size_t k = res ? args[0].u.s->len : 0;
            return jv_str(c, sp + (m->which == M_REMOVEPREFIX ? k : 0), len - k, out);
        }
        case M_UPPER:
        case M_LOWER:
        case M_CAPITALIZE:
        case M_TITLE:
            if (n + n_kw) return jerr(c, line, "the method takes no arguments");
            return jcase(c, line, s,
                         m->which == M_UPPER        ? 'U'
                         : m->which == M_LOWER      ? 'L'
                         : m->which == M_CAPITALIZE ? 'C'
                                                    : 't',
                         out);
        case M_REPLACE: {
            BIND("replace", "old", "new", "count");
            if (!g[0] || !g[1]) return jerr(c, line, "replace() needs old and new");
            int64_t count = -1;
            if (g[2]) {
                if (p[2].kind != JV_INT)
                    return jerr(c, line, "replace(): count must be an integer");
                count = p[2].u.i;
            }
            return jreplace(c, line, s, p[0], p[1], count, out);
        }
        case M_FIND:
        case M_RFIND:
        case M_INDEX:
        case M_COUNT: {
            if (n != 1 || n_kw)
                return jerr(
                    c, line,
                    "find/rfind/index/count with start and end arguments are not supported");
            if (str_arg(c, line, "find", args[0]) != 0) return -1;
            const char *needle = args[0].u.s->s;
            size_t k = args[0].u.s->len;
            int64_t found = -1, count = 0;
            for (size_t i = 0; i + k <= len;) {
                if (!memcmp(sp + i, needle, k)) {
                    if (found < 0 || m->which == M_RFIND) found = (int64_t)i;
                    count++;
                    if (m->which == M_COUNT) {
                        i += k ? k : 1;
                        continue;
                    }
                    if (m->which != M_RFIND) break;
                }
                i++;
            }
            if (m->which == M_COUNT) {
                *out = jv_int(k ? count : (int64_t)jv_str_ncp(s) + 1);
                return 0;
            }
            if (found < 0 && m->which == M_INDEX) return jerr(c, line, "substring not found");
            *out = jv_int(found < 0 ? -1 : (int64_t)jstr_count_cp(sp, (size_t)found));
            return 0;
        }
        case M_JOIN: {
            if (n != 1 || n_kw) return jerr(c, line, "join() takes one argument");
            jbuf b = {.limit = c->out->limit};
            jcursor cur;
            int rc = jcur_init(c, line, args[0], &cur);
            for (size_t i = 0; rc == 0; i++) {
                jv x;
                int has;
                if ((rc = jcur_next(c, line, &cur, &x, &has)) != 0 || !has) break;
                if (x.kind != JV_STR)
                    rc = jerr(c, line, "sequence item %zu: expected str instance, %s found", i,
                              jv_type_name(x));
                if (rc == 0 && i) rc = jbuf_put(&b, sp, len);
                if (rc == 0) rc = jbuf_put(&b, x.u.s->s, x.u.s->len);
            }
            rc = jv_from_buf(c, rc, &b, out);
            return rc;
        }
        case M_ISSPACE: {
            if (n + n_kw) return jerr(c, line, "isspace() takes no arguments");
            int all = len > 0;
            for (size_t i = 0; i < len && all;) {
                size_t k;
                all = jstr_is_space(tokenizer_utf8_decode(sp + i, &k));
                i += k;
            }
            *out = jv_bool(all);
            return 0;
        }
        default: { /* isalnum, isalpha, isdigit, islower, isupper: ASCII */
            if (n + n_kw) return jerr(c, line, "the method takes no arguments");
            if (jstr_non_ascii(sp, len))
                return jerr(c, line,
                            "str.isalpha() and friends on non-ASCII text are not supported");
            int all = len > 0, cased = 0, lower = 1, upper = 1;
            for (size_t i = 0; i < len; i++) {
                char ch = sp[i];
                int digit = ch >= '0' && ch <= '9', lo = ch >= 'a' && ch <= 'z',
                    up = ch >= 'A' && ch <= 'Z';
                cased |= lo || up;
                lower &= !up;
                upper &= !lo;
                if (m->which == M_ISDIGIT) all &= digit;
                if (m->which == M_ISALPHA) all &= lo || up;
                if (m->which == M_ISALNUM) all &= lo || up || digit;
            }
            if (m->which == M_ISLOWER) all = cased && lower;
            if (m->which == M_ISUPPER) all = cased && upper;
            *out = jv_bool(all);
            return 0;
        }
    }
}

/* ---- dict and list methods ----------------------------------------------------------- */

static int view(jctx *c, const jdict *d, int which, jv *out) {
    if (jv_list_new(c, d->n, JL_VIEW, out) != 0) return -1;
    for (size_t i = 0; i < d->n; i++) {
        if (which == M_KEYS) {
            out->u.l->v[i] = d->k[i];
        } else if (which == M_VALUES) {
            out->u.l->v[i] = d->v[i];
        } else {
            jv pair;
            if (jv_list_new(c, 2, JL_TUPLE, &pair) != 0) return -1;
            pair.u.l->v[0] = d->k[i];
            pair.u.l->v[1] = d->v[i];
            out->u.l->v[i] = pair;
        }
    }
    return 0;
}

int jmethod_call(jctx *c, int line, jmethod *m, const jv *args, size_t n, const jkw *kw,
                 size_t n_kw, jv *out) {
    if (jstep(c, line) != 0) return -1;
    jv self = m->self;
    if (self.kind == JV_LOOP) {
        if (n_kw) return jerr(c, line, "loop methods take no keyword arguments");
        return jloop_method(c, line, m, args, n, out);
    }
    if (self.kind == JV_STR) return str_method(c, line, m, args, n, kw, n_kw, out);
    if (m->which == M_COPY) {
        *out = self; /* values are never modified: a copy can share them */
        return 0;
    }
    if (self.kind == JV_DICT) {
        if (m->which == M_GET) {
            if (n_kw || n < 1 || n > 2) return jerr(c, line, "get() takes 1 or 2 arguments");
            int found = jdict_get(c, self.u.d, args[0], out);
            if (found < 0) return -1;
            if (!found) *out = n == 2 ? args[1] : jv_none();
            return 0;
        }
        if (n + n_kw) return jerr(c, line, "the method takes no arguments");
        return view(c, self.u.d, m->which, out);
    }
    /* list / tuple: count, index */
    if (n != 1 || n_kw) return jerr(c, line, "count() and index() take one argument here");
    int64_t count = 0, first = -1;
    for (size_t i = 0; i < self.u.l->n; i++) {
        int eq = jv_equal(c, self.u.l->v[i], args[0]);
        if (eq < 0) return -1;
        if (eq && first < 0) first = (int64_t)i;
        count += eq;
    }
    if (m->which == M_LINDEX && first < 0) return jerr(c, line, "the value is not in the list");
    *out = jv_int(m->which == M_LINDEX ? first : count);
    return 0;
}

/* ---- globals ------------------------------------------------------------------------- */

enum { G_RANGE, G_DICT, G_NAMESPACE, G_RAISE, G_STRFTIME, G_LIPSUM, G_CYCLER, G_JOINER };
static const jname_id globals[] = {{"range", G_RANGE},
                                   {"dict", G_DICT},
                                   {"namespace", G_NAMESPACE},
                                   {"raise_exception", G_RAISE},
                                   {"strftime_now", G_STRFTIME},
                                   {"lipsum", G_LIPSUM},
                                   {"cycler", G_CYCLER},
                                   {"joiner", G_JOINER},
                                   {NULL, 0}};

int jglobals_add(jctx *c, jdict *d) {
    for (size_t i = 0; globals[i].name; i++) {
        jv key, fn = {.kind = JV_BUILTIN, .sub = (uint8_t)globals[i].id};
        if (jv_str(c, globals[i].name, strlen(globals[i].name), &key) != 0 ||
            jdict_set(c, d, key, fn) != 0)
            return -1;
    }
    return 0;
}

/* dict(*args, **kwargs): a mapping or a list of pairs, then the keywords. */
static int make_dict(jctx *c, int line, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                     jv *out, int ns) {
    if (n > 1) return jerr(c, line, "dict expected at most 1 argument, got %zu", n);
    if ((ns ? jv_ns_new(c, out) : jv_dict_new(c, out)) != 0) return -1;
    if (n == 1) {
        jv src = args[0];
        if (src.kind == JV_DICT) {
            for (size_t i = 0; i < src.u.d->n; i++)
                if (jdict_set(c, out->u.d, src.u.d->k[i], src.u.d->v[i]) != 0) return -1;
        } else {
            jcursor cur;
            if (jcur_init(c, line, src, &cur) != 0) return -1;
            for (;;) {
                jv pair;
                int has;
                if (jcur_next(c, line, &cur, &pair, &has) != 0) return -1;
                if (!has) break;
                if (pair.kind != JV_LIST || pair.u.l->n != 2)
                    return jerr(c, line, "dictionary update sequence element has the wrong length");
                if (jdict_set(c, out->u.d, pair.u.l->v[0], pair.u.l->v[1]) != 0) return -1;
            }
        }
    }
    for (size_t k = 0; k < n_kw; k++) {
        jv key;
        if (jv_str(c, kw[k].name, strlen(kw[k].name), &key) != 0 ||
            jdict_set(c, out->u.d, key, kw[k].v) != 0)
            return -1;
    }
    if (ns)
        for (size_t i = 0; i < out->u.d->n; i++)
            if (out->u.d->k[i].kind == JV_STR && out->u.d->k[i].u.s->s[0] == '_')
                return jerr(c, line,
                            "chat templates cannot store underscore-prefixed "
                            "attributes on a namespace ('%s')",
                            out->u.d->k[i].u.s->s);
    return 0;
}

static int range_(jctx *c, int line, const jv *args, size_t n, jv *out) {
    int64_t v[3] = {0, 0, 1};
    if (n < 1 || n > 3) return jerr(c, line, "range expected 1 to 3 arguments, got %zu", n);
    for (size_t i = 0; i < n; i++) {
        if (args[i].kind != JV_INT && args[i].kind != JV_BOOL)
            return jerr(c, line, "'%s' object cannot be interpreted as an integer",
                        jv_type_name(args[i]));
        v[n == 1 ? 1 : i] = args[i].kind == JV_BOOL ? args[i].u.b : args[i].u.i;
    }
    int64_t start = v[0], stop = v[1], step = v[2], count = 0;
    if (step == 0) return jerr(c, line, "range() arg 3 must not be zero");
    if (step > 0 && start < stop)
        count = (int64_t)(((uint64_t)stop - (uint64_t)start - 1) / (uint64_t)step) + 1;
    if (step < 0 && start > stop)
        count = (int64_t)(((uint64_t)start - (uint64_t)stop - 1) / (uint64_t)(-(step + 1) + 1)) + 1;
    if (count > 100000)
        return jerr(c, line,
                    "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    if (jv_list_new(c, (size_t)count, JL_RANGE, out) != 0) return -1;
    for (int64_t i = 0; i < count; i++) out->u.l->v[i] = jv_int(start + i * step);
    return 0;
}

int jbuiltin_call(jctx *c, int line, int which, const jv *args, size_t n, const jkw *kw,
                  size_t n_kw, jv *out) {
    if (jstep(c, line) != 0) return -1;
    switch (which) {
        case G_RANGE:
            if (n_kw) return jerr(c, line, "range() takes no keyword arguments");
            return range_(c, line, args, n, out);
        case G_DICT:
        case G_NAMESPACE:
            return make_dict(c, line, args, n, kw, n_kw, out, which == G_NAMESPACE);
        case G_RAISE: {
            jbuf b = {0};
            int rc = n == 1 && !n_kw ? jv_to_str(c, line, args[0], &b)
                                     : jerr(c, line, "raise_exception takes one message");
            if (rc == 0) rc = jerr(c, line, "the template raised an error: %s", b.p ? b.p : "");
            jbuf_free(&b);
            return rc;
        }
        case G_STRFTIME: {
            if (n != 1 || n_kw || args[0].kind != JV_STR)
                return jerr(c, line, "strftime_now takes one format string");
            const char *fmt = args[0].u.s->s;
            for (const char *q = fmt; *q; q++)
                if (*q == '%' && q[1] && strchr("fzZ:", q[1]))
                    return jerr(c, line, "strftime_now: the directive %%%c is not supported", q[1]);
                else if (*q == '%' && q[1])
                    q++;
            time_t now = time(NULL);
            struct tm tm;
            char buf[256];
            if (!localtime_r(&now, &tm)) return jerr(c, line, "strftime_now: no local time");
            size_t len = strftime(buf, sizeof buf, fmt, &tm);
            if (len == 0 && fmt[0]) return jerr(c, line, "strftime_now: the result is too long");
            return jv_str(c, buf, len, out);
        }
        default:
            return jerr(c, line, "the global function '%s' is not supported",
                        which == G_LIPSUM   ? "lipsum"
                        : which == G_CYCLER ? "cycler"
                                            : "joiner");
    }
}
