/* jinja_eval — expressions: names, attributes and items as the sandboxed
 * environment looks them up (sandbox.py getattr / getitem: an attribute
 * first tries the Python attribute, then the item; an item first the item,
 * then the attribute; a miss is an undefined value, not an error), calls,
 * filters, tests and operators. Statements are in jinja_exec.c. */
#include "model/chat/jinja_internal.h"

#include "util/err.h"

#include <stdio.h>
#include <string.h>

int jerr_v(const char *name, int line, const char *fmt, va_list ap) {
    char msg[600];
    vsnprintf(msg, sizeof msg, fmt, ap);
    return err_set("%s:%d: %s", name, line, msg);
}

int jerr(jctx *c, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = jerr_v(c->t->name, line, fmt, ap);
    va_end(ap);
    return rc;
}

int jstep(jctx *c, int line) {
    if (++c->steps > c->t->lim.max_steps)
        return jerr(c, line, "the template ran more than %zu steps (the limit)",
                    c->t->lim.max_steps);
    return 0;
}

int jiter_tick(jctx *c, int line) {
    if (++c->iters > c->t->lim.max_iter)
        return jerr(c, line, "the template iterated more than %zu times (the limit)",
                    c->t->lim.max_iter);
    return 0;
}

static int undefined_error(jctx *c, int line, jv u) {
    return jerr(c, line, "'%s' is undefined", u.u.undef ? u.u.undef : "value");
}

/* ---- attribute and item lookup ----------------------------------------------------- */

int jloop_attr(jctx *c, int line, jloop *l, const char *name, jv *out);

int jgetattr(jctx *c, int line, jv obj, const char *name, size_t len, jv *out) {
    if (jstep(c, line) != 0) return -1;
    if (obj.kind == JV_UNDEF) return undefined_error(c, line, obj);
    if (len > 0 && name[0] == '_') { /* Python's private names: the sandbox refuses dunders */
        if (len > 1 && name[1] == '_')
            return jerr(c, line, "access to the attribute '%s' is unsafe (the sandbox refuses it)",
                        name);
        if (obj.kind == JV_DICT && jdict_get_str(obj.u.d, name, out)) return 0;
        *out = jv_undef(name);
        return 0;
    }
    switch (obj.kind) {
        case JV_NS:
            if (jdict_get_str(obj.u.d, name, out)) return 0;
            break;
        case JV_LOOP:
            return jloop_attr(c, line, obj.u.loop, name, out);
        case JV_ITER:
        case JV_MACRO:
        case JV_BUILTIN:
        case JV_METHOD:
            return jerr(c, line, "attributes of a %s ('%s') are not supported", jv_type_name(obj),
                        name);
        default: {
            int m = jmethod_lookup(c, line, obj, name, out);
            if (m != 0) return m < 0 ? -1 : 0;
            if (obj.kind == JV_DICT && jdict_get_str(obj.u.d, name, out)) return 0;
        }
    }
    *out = jv_undef(jctx_strdup(c, "%s object has no attribute '%s'", jv_type_name(obj), name));
    return out->u.undef ? 0 : -1;
}

int jgetitem(jctx *c, int line, jv obj, jv key, jv *out) {
    if (jstep(c, line) != 0) return -1;
    if (obj.kind == JV_UNDEF) return undefined_error(c, line, obj);
    if (obj.kind == JV_DICT) {
        int found = jdict_get(c, obj.u.d, key, out);
        if (found != 0) return found < 0 ? -1 : 0;
    } else if ((obj.kind == JV_LIST && obj.sub != JL_VIEW) || obj.kind == JV_STR) {
        if (key.kind == JV_INT || key.kind == JV_BOOL) {
            int64_t i = key.kind == JV_BOOL ? key.u.b : key.u.i;
            int64_t n = obj.kind == JV_STR ? (int64_t)jv_str_ncp(obj) : (int64_t)obj.u.l->n;
            if (i < 0) i += n;
            if (i >= 0 && i < n) {
                if (obj.kind == JV_LIST) {
                    *out = obj.u.l->v[i];
                    return 0;
                }
                size_t off = jstr_cp_offset(obj.u.s->s, obj.u.s->len, (size_t)i), k;
                tokenizer_utf8_decode(obj.u.s->s + off, &k);
                return jv_str(c, obj.u.s->s + off, k, out);
            }
        }
    }
    /* the item is missing: a string key falls back to the attribute */
    if (key.kind == JV_STR && obj.kind != JV_DICT)
        return jgetattr(c, line, obj, key.u.s->s, key.u.s->len, out);
    if (key.kind == JV_STR && obj.kind == JV_DICT) {
        int m = jmethod_lookup(c, line, obj, key.u.s->s, out);
        if (m != 0) return m < 0 ? -1 : 0;
    }
    *out = jv_undef("an item that does not exist");
    return 0;
}

/* ---- calls ------------------------------------------------------------------------- */

int jmacro_call(jctx *c, int line, jmacro *m, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                jv *out);

int jcall(jctx *c, int line, jv fn, const jv *args, size_t n, const jkw *kw, size_t n_kw, jv *out) {
    switch (fn.kind) {
        case JV_MACRO:
            return jmacro_call(c, line, fn.u.macro, args, n, kw, n_kw, out);
        case JV_BUILTIN:
            return jbuiltin_call(c, line, fn.sub, args, n, kw, n_kw, out);
        case JV_METHOD:
            return jmethod_call(c, line, fn.u.m, args, n, kw, n_kw, out);
        case JV_UNDEF:
            return undefined_error(c, line, fn);
        default:
            return jerr(c, line, "'%s' object is not callable", jv_type_name(fn));
    }
}

/* Evaluates a node's arguments into arena arrays. */
static int eval_args(jctx *c, const jnode *n, jv **args, jkw **kw) {
    *args = jarena_alloc(&c->arena, (n->n_args ? n->n_args : 1) * sizeof **args);
    *kw = jarena_alloc(&c->arena, (n->n_kw ? n->n_kw : 1) * sizeof **kw);
    if (!*args || !*kw) return -1;
    for (size_t i = 0; i < n->n_args; i++)
        if (jeval(c, n->args[i], &(*args)[i]) != 0) return -1;
    for (size_t i = 0; i < n->n_kw; i++) {
        (*kw)[i].name = n->kw_names[i];
        if (jeval(c, n->kw_vals[i], &(*kw)[i].v) != 0) return -1;
    }
    return 0;
}

/* ---- expressions ------------------------------------------------------------------- */

static int lookup(jctx *c, const jnode *n, jv *out) {
    for (jframe *f = c->frame; f; f = f->parent)
        if (jdict_get_str(&f->vars, n->name, out)) return 0;
    if (c->calls > 0 &&
        (!strcmp(n->name, "varargs") || !strcmp(n->name, "kwargs") || !strcmp(n->name, "caller")))
        return jerr(c, n->line, "the macro variable '%s' is not supported", n->name);
    *out = jv_undef(n->name);
    return 0;
}

static int eval_list(jctx *c, const jnode *n, int sub, jv *out) {
    if (jv_list_new(c, n->n_args, sub, out) != 0) return -1;
    for (size_t i = 0; i < n->n_args; i++)
        if (jeval(c, n->args[i], &out->u.l->v[i]) != 0) return -1;
    return 0;
}

static int eval_dict(jctx *c, const jnode *n, jv *out) {
    if (jv_dict_new(c, out) != 0) return -1;
    for (size_t i = 0; i + 1 < n->n_args; i += 2) {
        jv k, v;
        if (jeval(c, n->args[i], &k) != 0 || jeval(c, n->args[i + 1], &v) != 0) return -1;
        c->line = n->line;
        if (jdict_set(c, out->u.d, k, v) != 0) return -1;
    }
    return 0;
}

static int eval_compare(jctx *c, const jnode *n, jv *out) {
    jv left;
    if (jeval(c, n->a, &left) != 0) return -1;
    for (size_t i = 0; i < n->n_args; i++) {
        jv right;
        int res;
        if (jeval(c, n->args[i], &right) != 0) return -1;
        int op = n->cmp[i];
        if (op == JN_IN || op == JN_NOTIN) {
            if (jv_contains(c, n->line, right, left, &res) != 0) return -1;
            if (op == JN_NOTIN) res = !res;
        } else if (jv_compare(c, n->line, op, left, right, &res) != 0) {
            return -1;
        }
        if (!res) {
            *out = jv_bool(0);
            return 0;
        }
        left = right;
    }
    *out = jv_bool(1);
    return 0;
}

static int eval_concat(jctx *c, const jnode *n, jv *out) {
    jbuf b = {.limit = c->out->limit};
    int rc = 0;
    for (size_t i = 0; i < n->n_args && rc == 0; i++) {
        jv v;
        rc = jeval(c, n->args[i], &v);
        if (rc == 0) rc = jv_to_str(c, n->line, v, &b);
    }
    rc = jv_from_buf(c, rc, &b, out);
    return rc;
}

static int eval_node(jctx *c, const jnode *n, jv *out) {
    jv a, b, *args;
    jkw *kw;
    switch (n->kind) {
        case JN_CONST:
            *out = n->value;
            return 0;
        case JN_NAME:
            return lookup(c, n, out);
        case JN_GETATTR:
            if (jeval(c, n->a, &a) != 0) return -1;
            return jgetattr(c, n->line, a, n->name, n->name_len, out);
        case JN_GETITEM:
            if (jeval(c, n->a, &a) != 0) return -1;
            if (n->b->kind == JN_SLICE) {
                jv parts[3] = {jv_none(), jv_none(), jv_none()};
                const jnode *p[3] = {n->b->a, n->b->b, n->b->c};
                for (int i = 0; i < 3; i++)
                    if (p[i] && jeval(c, p[i], &parts[i]) != 0) return -1;
                return jv_slice(c, n->line, a, parts[0], parts[1], parts[2], out);
            }
            if (jeval(c, n->b, &b) != 0) return -1;
            return jgetitem(c, n->line, a, b, out);
        case JN_CALL:
            if (jeval(c, n->a, &a) != 0 || eval_args(c, n, &args, &kw) != 0) return -1;
            return jcall(c, n->line, a, args, n->n_args, kw, n->n_kw, out);
        case JN_FILTER:
            if (jeval(c, n->a, &a) != 0 || eval_args(c, n, &args, &kw) != 0) return -1;
            return jfilter(c, n->line, n->op, a, args, n->n_args, kw, n->n_kw, out);
        case JN_TEST: {
            int res;
            if (jeval(c, n->a, &a) != 0 || eval_args(c, n, &args, &kw) != 0 ||
                jtest(c, n->line, n->op, a, args, n->n_args, kw, n->n_kw, &res) != 0)
                return -1;
            *out = jv_bool(res);
            return 0;
        }
        case JN_NOT:
            if (jeval(c, n->a, &a) != 0) return -1;
            *out = jv_bool(!jv_truthy(a));
            return 0;
        case JN_NEG:
        case JN_POS:
            if (jeval(c, n->a, &a) != 0) return -1;
            return jv_negate(c, n->line, a, n->kind == JN_NEG, out);
        case JN_BINOP:
            if (jeval(c, n->a, &a) != 0 || jeval(c, n->b, &b) != 0) return -1;
            return jv_arith(c, n->line, n->op, a, b, out);
        case JN_AND:
        case JN_OR: /* Python's and / or give an operand, not a bool */
            if (jeval(c, n->a, &a) != 0) return -1;
            if (jv_truthy(a) == (n->kind == JN_OR)) {
                *out = a;
                return 0;
            }
            return jeval(c, n->b, out);
        case JN_CONCAT:
            return eval_concat(c, n, out);
        case JN_COMPARE:
            return eval_compare(c, n, out);
        case JN_COND:
            if (jeval(c, n->a, &a) != 0) return -1;
            if (jv_truthy(a)) return jeval(c, n->b, out);
            if (n->c) return jeval(c, n->c, out);
            *out = jv_undef("the conditional expression's missing else");
            return 0;
        case JN_LIST:
        case JN_TUPLE:
            return eval_list(c, n, n->kind == JN_LIST ? JL_LIST : JL_TUPLE, out);
        case JN_DICT:
            return eval_dict(c, n, out);
        default:
            return jerr(c, n->line, "internal: not an expression");
    }
}

int jeval(jctx *c, const jnode *n, jv *out) {
    c->line = n->line;
    if (jstep(c, n->line) != 0) return -1;
    if (++c->depth > 4 * c->t->lim.max_depth + 400)
        return jerr(c, n->line, "expressions nested too deeply while rendering");
    int rc = eval_node(c, n, out);
    c->depth--;
    return rc;
}
