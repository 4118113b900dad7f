/* jinja_iter — iterating values as Python's iter() does, len(), and the
 * lazy generators Jinja2's filters return (select, reject, selectattr,
 * rejectattr, map, items, reverse, unique: filters.py). A generator is
 * single-use and shared, as in Python: iterating it a second time yields
 * nothing, and it has no len(). */
#include "model/chat/jinja_internal.h"

#include "util/err.h"

#include <string.h>

int jcur_init(jctx *c, int line, jv v, jcursor *cur) {
    memset(cur, 0, sizeof *cur);
    switch (v.kind) {
        case JV_UNDEF:
        case JV_STR:
        case JV_LIST:
        case JV_DICT:
        case JV_ITER:
            cur->src = v;
            return 0;
        default:
            return jerr(c, line, "'%s' object is not iterable", jv_type_name(v));
    }
}

static int jiter_next(jctx *c, jiter *it, jv *out, int *has);

int jcur_next(jctx *c, int line, jcursor *cur, jv *out, int *has) {
    *has = 0;
    jv s = cur->src;
    switch (s.kind) {
        case JV_STR:
            if (cur->off >= s.u.s->len) return 0;
            {
                size_t k;
                tokenizer_utf8_decode(s.u.s->s + cur->off, &k);
                if (jv_str(c, s.u.s->s + cur->off, k, out) != 0) return -1;
                cur->off += k;
            }
            break;
        case JV_LIST:
            if (cur->i >= s.u.l->n) return 0;
            *out = s.u.l->v[cur->i++];
            break;
        case JV_DICT:
            if (cur->i >= s.u.d->n) return 0;
            *out = s.u.d->k[cur->i++];
            break;
        case JV_ITER:
            return jiter_next(c, s.u.it, out, has);
        default:
            return 0;
    }
    *has = 1;
    return jiter_tick(c, line);
}

int jv_to_list(jctx *c, int line, jv v, jv *out) {
    if (v.kind == JV_LIST && v.sub == JL_LIST) {
        *out = v;
        return 0;
    }
    jcursor cur;
    if (jcur_init(c, line, v, &cur) != 0) return -1;
    size_t n = 0, cap = 8;
    jv *items = jarena_alloc(&c->arena, cap * sizeof *items);
    if (!items) return -1;
    for (;;) {
        jv x;
        int has;
        if (jcur_next(c, line, &cur, &x, &has) != 0) return -1;
        if (!has) break;
        if (n == cap) {
            jv *bigger = jarena_alloc(&c->arena, 2 * cap * sizeof *bigger);
            if (!bigger) return -1;
            memcpy(bigger, items, n * sizeof *items);
            items = bigger;
            cap *= 2;
        }
        items[n++] = x;
    }
    if (jv_list_new(c, 0, JL_LIST, out) != 0) return -1;
    out->u.l->v = items;
    out->u.l->n = n;
    return 0;
}

int jv_len(jctx *c, int line, jv v, int64_t *n) {
    switch (v.kind) {
        case JV_UNDEF:
            *n = 0;
            return 0;
        case JV_STR:
            *n = (int64_t)jv_str_ncp(v);
            return 0;
        case JV_LIST:
            *n = (int64_t)v.u.l->n;
            return 0;
        case JV_DICT:
            *n = (int64_t)v.u.d->n;
            return 0;
        default:
            return jerr(c, line, "object of type '%s' has no len()", jv_type_name(v));
    }
}

int jiter_new(jctx *c, int kind, int line, jv src, jiter **out) {
    jiter *it = jarena_alloc(&c->arena, sizeof *it);
    if (!it) return -1;
    it->kind = kind;
    it->line = line;
    it->test = -1;
    if (jcur_init(c, line, src, &it->src) != 0) return -1;
    *out = it;
    return 0;
}

/* Jinja2's make_attrgetter: "a.b.0" is item a, then b, then 0 (digits as
 * integers), each through environment.getitem. */
static int attr_path(jctx *c, int line, jv item, jv attr, jv *out) {
    if (attr.kind != JV_STR) return jgetitem(c, line, item, attr, out);
    const char *s = attr.u.s->s;
    size_t n = attr.u.s->len;
    for (size_t a = 0;;) {
        const char *dot = memchr(s + a, '.', n - a);
        size_t b = dot ? (size_t)(dot - s) : n;
        jv key;
        int digits = b > a;
        for (size_t i = a; i < b; i++) digits &= s[i] >= '0' && s[i] <= '9';
        if (digits && b - a < 18) {
            int64_t v = 0;
            for (size_t i = a; i < b; i++) v = v * 10 + (s[i] - '0');
            key = jv_int(v);
        } else if (jv_str(c, s + a, b - a, &key) != 0) {
            return -1;
        }
        if (jgetitem(c, line, item, key, &item) != 0) return -1;
        if (!dot) break;
        a = b + 1;
    }
    *out = item;
    return 0;
}

int jiter_attr(jctx *c, int line, jv item, jv attr, jv *out) {
    return attr_path(c, line, item, attr, out);
}

/* Python's str.lower() for the case-insensitive comparisons of unique, sort
 * and friends (ASCII only: other letters are refused rather than compared
 * differently). */
int jv_ignore_case(jctx *c, int line, jv v, jv *out) {
    if (v.kind != JV_STR) {
        *out = v;
        return 0;
    }
    if (jstr_non_ascii(v.u.s->s, v.u.s->len))
        return jerr(c, line,
                    "case-insensitive comparison of non-ASCII text is not supported (pass "
                    "case_sensitive=true)");
    if (jv_str(c, v.u.s->s, v.u.s->len, out) != 0) return -1;
    for (size_t i = 0; i < out->u.s->len; i++)
        if (out->u.s->s[i] >= 'A' && out->u.s->s[i] <= 'Z') out->u.s->s[i] += 'a' - 'A';
    return 0;
}

static int jiter_next(jctx *c, jiter *it, jv *out, int *has) {
    for (;;) {
        jv x;
        if (it->kind == JG_REVERSE) { /* a list or a dict's keys, backwards */
            jv s = it->src.src;
            size_t n = s.kind == JV_LIST ? s.u.l->n : s.kind == JV_DICT ? s.u.d->n : 0;
            if (it->src.i >= n) {
                *has = 0;
                return 0;
            }
            size_t k = n - 1 - it->src.i++;
            *out = s.kind == JV_LIST ? s.u.l->v[k] : s.u.d->k[k];
            *has = 1;
            return jiter_tick(c, it->line);
        }
        if (it->kind == JG_ITEMS && it->test == -2)
            return jerr(c, it->line, "Can only get item pairs from a mapping.");
        if (jcur_next(c, it->line, &it->src, &x, has) != 0) return -1;
        if (!*has) return 0;
        int keep = 1;
        switch (it->kind) {
            case JG_SELECT:
            case JG_REJECT:
            case JG_SELECTATTR:
            case JG_REJECTATTR: {
                jv subject = x;
                if ((it->kind == JG_SELECTATTR || it->kind == JG_REJECTATTR) &&
                    attr_path(c, it->line, x, it->attr, &subject) != 0)
                    return -1;
                if (it->test < 0)
                    keep = jv_truthy(subject);
                else if (jtest(c, it->line, it->test, subject, it->args, it->n_args, NULL, 0,
                               &keep) != 0)
                    return -1;
                if (it->kind == JG_REJECT || it->kind == JG_REJECTATTR) keep = !keep;
                *out = x;
                break;
            }
            case JG_MAP_ATTR:
                if (attr_path(c, it->line, x, it->attr, out) != 0) return -1;
                if (out->kind == JV_UNDEF && it->has_dflt) *out = it->dflt;
                break;
            case JG_MAP_FILTER:
                if (jfilter(c, it->line, it->test, x, it->args, it->n_args, NULL, 0, out) != 0)
                    return -1;
                break;
            case JG_ITEMS: { /* (key, value) of a dict */
                jv pair;
                if (jv_list_new(c, 2, JL_TUPLE, &pair) != 0) return -1;
                pair.u.l->v[0] = x;
                pair.u.l->v[1] = it->src.src.u.d->v[it->src.i - 1];
                *out = pair;
                break;
            }
            case JG_UNIQUE: {
                jv key = x;
                if (it->attr.kind != JV_UNDEF && attr_path(c, it->line, x, it->attr, &key) != 0)
                    return -1;
                if (!it->case_sens && jv_ignore_case(c, it->line, key, &key) != 0) return -1;
                if (it->seen.kind != JV_DICT && jv_dict_new(c, &it->seen) != 0) return -1;
                jv dummy;
                int found = jdict_get(c, it->seen.u.d, key, &dummy);
                if (found < 0) return -1;
                keep = !found;
                if (keep && jdict_set(c, it->seen.u.d, key, jv_none()) != 0) return -1;
                *out = x;
                break;
            }
            default:
                *out = x;
        }
        if (keep) return 0;
    }
}
