/* jinja_seq — the filters over sequences (Jinja2 filters.py): first, last,
 * list, join, sum, min, max, sort, dictsort, and the ones that return lazy
 * generators: select, reject, selectattr, rejectattr, map, items, unique,
 * reverse. */
#include "model/chat/jinja_filters.h"

#include "util/err.h"

#include <string.h>

/* Sort keys: the item itself or its attributes (comma-separated, as
 * make_multi_attrgetter), lowercased unless case_sensitive. */
static int sort_key(jctx *c, int line, jv item, jv attr, int case_sens, jv *key) {
    if (attr.kind != JV_STR || !memchr(attr.u.s->s, ',', attr.u.s->len)) {
        jv k = item;
        if (attr.kind != JV_UNDEF && attr.kind != JV_NONE &&
            jiter_attr(c, line, item, attr, &k) != 0)
            return -1;
        return case_sens ? (*key = k, 0) : jv_ignore_case(c, line, k, key);
    }
    size_t parts = 1;
    for (size_t i = 0; i < attr.u.s->len; i++) parts += attr.u.s->s[i] == ',';
    if (jv_list_new(c, parts, JL_LIST, key) != 0) return -1;
    for (size_t i = 0, a = 0; i < parts; i++) {
        const char *comma = memchr(attr.u.s->s + a, ',', attr.u.s->len - a);
        size_t b = comma ? (size_t)(comma - attr.u.s->s) : attr.u.s->len;
        jv name, k;
        if (jv_str(c, attr.u.s->s + a, b - a, &name) != 0 ||
            jiter_attr(c, line, item, name, &k) != 0 ||
            (case_sens ? (key->u.l->v[i] = k, 0) : jv_ignore_case(c, line, k, &key->u.l->v[i])))
            return -1;
        a = b + 1;
    }
    return 0;
}

/* Stable merge sort of items by keys, as Python's sorted(); reverse keeps
 * equal items in their order, as sorted(reverse=True) does. */
static int sort_items(jctx *c, int line, jv *items, jv *keys, size_t n, int reverse) {
    jv *ti = jarena_alloc(&c->arena, (n ? n : 1) * sizeof *ti);
    jv *tk = jarena_alloc(&c->arena, (n ? n : 1) * sizeof *tk);
    if (!ti || !tk) return -1;
    for (size_t w = 1; w < n; w *= 2)
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int take_right;
                if (reverse ? jv_less(c, line, keys[i], keys[j], &take_right)
                            : jv_less(c, line, keys[j], keys[i], &take_right))
                    return -1;
                if (take_right)
                    ti[k] = items[j], tk[k++] = keys[j++];
                else
                    ti[k] = items[i], tk[k++] = keys[i++];
            }
            while (i < mid) ti[k] = items[i], tk[k++] = keys[i++];
            while (j < hi) ti[k] = items[j], tk[k++] = keys[j++];
            memcpy(items + lo, ti + lo, (hi - lo) * sizeof *items);
            memcpy(keys + lo, tk + lo, (hi - lo) * sizeof *keys);
        }
    return 0;
}

static int f_sort(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                  jv *out) {
    BIND("sort", "reverse", "case_sensitive", "attribute");
    jv list, copy;
    if (jv_to_list(c, line, v, &list) != 0) return -1;
    size_t m = list.u.l->n;
    if (jv_list_new(c, m, JL_LIST, &copy) != 0) return -1;
    memcpy(copy.u.l->v, list.u.l->v, m * sizeof(jv));
    jv *keys = jarena_alloc(&c->arena, (m ? m : 1) * sizeof *keys);
    if (!keys) return -1;
    jv attr = g[2] ? p[2] : jv_none();
    for (size_t i = 0; i < m; i++)
        if (sort_key(c, line, copy.u.l->v[i], attr, g[1] && jv_truthy(p[1]), &keys[i]) != 0)
            return -1;
    if (sort_items(c, line, copy.u.l->v, keys, m, g[0] && jv_truthy(p[0])) != 0) return -1;
    *out = copy;
    return 0;
}

static int f_dictsort(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                      jv *out) {
    BIND("dictsort", "case_sensitive", "by", "reverse");
    if (v.kind != JV_DICT) return jerr(c, line, "dictsort: the value must be a dict");
    int by_value = 0;
    if (g[1]) {
        if (p[1].kind != JV_STR || (strcmp(p[1].u.s->s, "key") && strcmp(p[1].u.s->s, "value")))
            return jerr(c, line, "You can only sort by either 'key' or 'value'");
        by_value = !strcmp(p[1].u.s->s, "value");
    }
    size_t m = v.u.d->n;
    jv *keys = jarena_alloc(&c->arena, (m ? m : 1) * sizeof *keys);
    if (!keys || jv_list_new(c, m, JL_LIST, out) != 0) return -1;
    for (size_t i = 0; i < m; i++) {
        jv pair;
        if (jv_list_new(c, 2, JL_TUPLE, &pair) != 0) return -1;
        pair.u.l->v[0] = v.u.d->k[i];
        pair.u.l->v[1] = v.u.d->v[i];
        out->u.l->v[i] = pair;
        jv k = by_value ? v.u.d->v[i] : v.u.d->k[i];
        if (!(g[0] && jv_truthy(p[0])) && jv_ignore_case(c, line, k, &k) != 0) return -1;
        keys[i] = k;
    }
    return sort_items(c, line, out->u.l->v, keys, m, g[2] && jv_truthy(p[2]));
}

static int first_item(jctx *c, int line, jv v, jv *out) {
    jcursor cur;
    int has;
    if (jcur_init(c, line, v, &cur) != 0 || jcur_next(c, line, &cur, out, &has) != 0) return -1;
    if (!has) *out = jv_undef("No first item, sequence was empty.");
    return 0;
}

static int last_item(jctx *c, int line, jv v, jv *out) {
    switch (v.kind) {
        case JV_UNDEF:
            break;
        case JV_STR:
            if (v.u.s->len) {
                size_t i = v.u.s->len - 1;
                while (i > 0 && ((unsigned char)v.u.s->s[i] & 0xc0) == 0x80) i--;
                return jv_str(c, v.u.s->s + i, v.u.s->len - i, out);
            }
            break;
        case JV_LIST:
            if (v.u.l->n) {
                *out = v.u.l->v[v.u.l->n - 1];
                return 0;
            }
            break;
        case JV_DICT:
            if (v.u.d->n) {
                *out = v.u.d->k[v.u.d->n - 1];
                return 0;
            }
            break;
        default:
            return jerr(c, line, "'%s' object is not reversible", jv_type_name(v));
    }
    *out = jv_undef("No last item, sequence was empty.");
    return 0;
}

static int f_join(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                  jv *out) {
    BIND("join", "d", "attribute");
    jbuf sep = {0}, b = {.limit = c->out->limit};
    int rc = g[0] ? jv_to_str(c, line, p[0], &sep) : 0;
    jcursor cur;
    if (rc == 0) rc = jcur_init(c, line, v, &cur);
    for (size_t i = 0; rc == 0; i++) {
        jv x;
        int has;
        if ((rc = jcur_next(c, line, &cur, &x, &has)) != 0 || !has) break;
        if (g[1] && p[1].kind != JV_NONE) rc = jiter_attr(c, line, x, p[1], &x);
        if (rc == 0 && i) rc = jbuf_put(&b, sep.p, sep.len);
        if (rc == 0) rc = jv_to_str(c, line, x, &b);
    }
    rc = jv_from_buf(c, rc, &b, out);
    jbuf_free(&sep);
    return rc;
}

static int f_sum(jctx *c, int line, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                 jv *out) {
    BIND("sum", "attribute", "start");
    jv total = g[1] ? p[1] : jv_int(0);
    if (total.kind == JV_STR) return jerr(c, line, "sum() can't sum strings [use ''.join(seq)]");
    jcursor cur;
    if (jcur_init(c, line, v, &cur) != 0) return -1;
    for (;;) {
        jv x;
        int has;
        if (jcur_next(c, line, &cur, &x, &has) != 0) return -1;
        if (!has) break;
        if (g[0] && p[0].kind != JV_NONE && jiter_attr(c, line, x, p[0], &x) != 0) return -1;
        if (jv_arith(c, line, JT_ADD, total, x, &total) != 0) return -1;
    }
    *out = total;
    return 0;
}

static int f_minmax(jctx *c, int line, int is_max, jv v, const jv *args, size_t n, const jkw *kw,
                    size_t n_kw, jv *out) {
    BIND(is_max ? "max" : "min", "case_sensitive", "attribute");
    jcursor cur;
    if (jcur_init(c, line, v, &cur) != 0) return -1;
    int any = 0;
    jv best = jv_none(), best_key = jv_none();
    jv attr = g[1] ? p[1] : jv_none();
    for (;;) {
        jv x, k;
        int has, better;
        if (jcur_next(c, line, &cur, &x, &has) != 0) return -1;
        if (!has) break;
        if (sort_key(c, line, x, attr, g[0] && jv_truthy(p[0]), &k) != 0) return -1;
        if (!any) {
            better = 1;
        } else if (is_max ? jv_less(c, line, best_key, k, &better)
                          : jv_less(c, line, k, best_key, &better)) {
            return -1;
        }
        if (better) best = x, best_key = k;
        any = 1;
    }
    *out = any ? best : jv_undef("No aggregated item, sequence was empty.");
    return 0;
}

/* select / reject / selectattr / rejectattr / map into a generator. */
static int f_generator(jctx *c, int line, int id, jv v, const jv *args, size_t n, const jkw *kw,
                       size_t n_kw, jv *out) {
    int kind = id == F_SELECT       ? JG_SELECT
               : id == F_REJECT     ? JG_REJECT
               : id == F_SELECTATTR ? JG_SELECTATTR
               : id == F_REJECTATTR ? JG_REJECTATTR
                                    : JG_MAP_ATTR;
    jiter *it;
    if (jiter_new(c, kind, line, v, &it) != 0) return -1;
    size_t off = 0;
    if (id == F_MAP) {
        if (n == 0) { /* map(attribute=..., default=...) */
            for (size_t k = 0; k < n_kw; k++) {
                if (!strcmp(kw[k].name, "attribute"))
                    it->attr = kw[k].v, off = 1;
                else if (!strcmp(kw[k].name, "default"))
                    it->dflt = kw[k].v, it->has_dflt = 1;
                else
                    return jerr(c, line, "map: unexpected keyword argument '%s'", kw[k].name);
            }
            if (!off) return jerr(c, line, "map: give a filter name or attribute=");
        } else {
            if (args[0].kind != JV_STR)
                return jerr(c, line, "map: the filter name must be a string");
            if (n_kw)
                return jerr(c, line, "map: keyword arguments for the filter are not supported");
            it->kind = JG_MAP_FILTER;
            it->test = jinja_filter_id(args[0].u.s->s);
            if (it->test < 0) return jerr(c, line, "map: no filter named '%s'", args[0].u.s->s);
            it->args = (jv *)args + 1;
            it->n_args = n - 1;
        }
    } else {
        if (n_kw)
            return jerr(c, line, "keyword arguments to %s are not supported",
                        jinja_filter_name(id));
        if (kind == JG_SELECTATTR || kind == JG_REJECTATTR) {
            if (n == 0) return jerr(c, line, "%s: missing the attribute", jinja_filter_name(id));
            it->attr = args[0];
            off = 1;
        }
        if (n > off) {
            if (args[off].kind != JV_STR)
                return jerr(c, line, "%s: the test name must be a string", jinja_filter_name(id));
            it->test = jinja_test_id(args[off].u.s->s);
            if (it->test < 0) return jerr(c, line, "no test named '%s'", args[off].u.s->s);
            it->args = (jv *)args + off + 1;
            it->n_args = n - off - 1;
        }
    }
    out->kind = JV_ITER;
    out->sub = 0;
    out->u.it = it;
    return 0;
}

int jfilter_seq(jctx *c, int line, int id, jv v, const jv *args, size_t n, const jkw *kw,
                size_t n_kw, jv *out) {
    switch (id) {
        case F_FIRST:
        case F_LAST:
        case F_LIST:
        case F_ITEMS:
        case F_REVERSE:
            if (n + n_kw) return jerr(c, line, "%s() takes no arguments", jinja_filter_name(id));
            break;
        default:
            break;
    }
    jiter *it;
    switch (id) {
        case F_FIRST:
            return first_item(c, line, v, out);
        case F_LAST:
            return last_item(c, line, v, out);
        case F_LIST:
            return jv_to_list(c, line, v, out);
        case F_JOIN:
            return f_join(c, line, v, args, n, kw, n_kw, out);
        case F_SUM:
            return f_sum(c, line, v, args, n, kw, n_kw, out);
        case F_MIN:
        case F_MAX:
            return f_minmax(c, line, id == F_MAX, v, args, n, kw, n_kw, out);
        case F_SORT:
            return f_sort(c, line, v, args, n, kw, n_kw, out);
        case F_DICTSORT:
            return f_dictsort(c, line, v, args, n, kw, n_kw, out);
        case F_SELECT:
        case F_REJECT:
        case F_SELECTATTR:
        case F_REJECTATTR:
        case F_MAP:
            return f_generator(c, line, id, v, args, n, kw, n_kw, out);
        case F_ITEMS: /* a generator: a non-mapping fails when it is iterated */
            if (v.kind != JV_DICT && v.kind != JV_UNDEF) {
                if (jiter_new(c, JG_ITEMS, line, jv_undef(NULL), &it) != 0) return -1;
                it->test = -2;
            } else if (jiter_new(c, JG_ITEMS, line, v, &it) != 0) {
                return -1;
            }
            break;
        case F_REVERSE:
            if (v.kind == JV_STR) {
                jv none = jv_none(), step = jv_int(-1);
                return jv_slice(c, line, v, none, none, step, out);
            }
            if (v.kind == JV_ITER) { /* reversed() fails; Jinja2 reverses a list of it */
                jv list;
                if (jv_to_list(c, line, v, &list) != 0 ||
                    jv_list_new(c, list.u.l->n, JL_LIST, out) != 0)
                    return -1;
                for (size_t i = 0; i < list.u.l->n; i++)
                    out->u.l->v[i] = list.u.l->v[list.u.l->n - 1 - i];
                return 0;
            }
            if (v.kind != JV_LIST && v.kind != JV_DICT && v.kind != JV_UNDEF)
                return jerr(c, line, "reverse: argument must be iterable");
            if (jiter_new(c, JG_REVERSE, line, v, &it) != 0) return -1;
            break;
        case F_UNIQUE: {
            BIND("unique", "case_sensitive", "attribute");
            if (jiter_new(c, JG_UNIQUE, line, v, &it) != 0) return -1;
            it->case_sens = g[0] && jv_truthy(p[0]);
            it->attr = g[1] && p[1].kind != JV_NONE ? p[1] : jv_undef(NULL);
            break;
        }
        default:
            return jerr(c, line, "internal: unknown filter %d", id);
    }
    out->kind = JV_ITER;
    out->sub = 0;
    out->u.it = it;
    return 0;
}
