/* jinja_parse_expr — expressions, following Jinja2's parser.py (3.1): the
 * same precedence (or < and < not < comparisons < + - < ~ < * / // % < ** <
 * unary - + < postfix . [] () < | filter / is test), and the same tuple,
 * subscript, slice and call-argument rules. Unknown filters and tests are
 * refused with their name and line. */
#include "model/chat/jinja_parse.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

static jnode *const_node(parser *p, int line, jv v) {
    jnode *n = jp_node(p, JN_CONST, line);
    if (n) n->value = v;
    return n;
}

static jnode *const_str(parser *p, int line, const char *s, size_t len) {
    jstr *str = jarena_alloc(&p->t->arena, sizeof *str + len + 1);
    if (!str) return NULL;
    str->len = len;
    str->ncp = SIZE_MAX;
    memcpy(str->s, s, len);
    return const_node(p, line, jv_str_const(str));
}

/* ---- expressions ----------------------------------------------------------------- */

static jnode *parse_unary(parser *p, int with_filter);
static jnode *parse_primary(parser *p);
static jnode *parse_postfix(parser *p, jnode *n);

/* ( args, name=kw ) into n->args / n->kw_*. */
static int parse_call_args(parser *p, jnode *n) {
    int line = jp_cur(p)->line;
    if (jp_expect(p, JT_LPAREN) != 0) return -1;
    nvec args = {0}, kwv = {0};
    const char *kwn[64];
    size_t nk = 0;
    int rc = 0, need_comma = 0;
    while (rc == 0 && jp_cur(p)->type != JT_RPAREN) {
        if (need_comma) {
            if ((rc = jp_expect(p, JT_COMMA)) != 0) break;
            if (jp_cur(p)->type == JT_RPAREN) break; /* a trailing comma */
        }
        if (jp_cur(p)->type == JT_MUL || jp_cur(p)->type == JT_POW) {
            rc = jp_fail(p, jp_cur(p)->line, "*args and **kwargs in calls are not supported");
        } else if (jp_cur(p)->type == JT_NAME && jp_look(p)->type == JT_ASSIGN) {
            if (nk == sizeof kwn / sizeof kwn[0]) {
                rc = jp_fail(p, line, "too many keyword arguments");
                break;
            }
            kwn[nk] = jp_dup(p, jp_cur(p)->s, jp_cur(p)->len);
            jp_next(p);
            jp_next(p);
            jnode *v = jp_expression(p, 1);
            if (!kwn[nk] || jp_push(&kwv, v) != 0) rc = -1;
            nk++;
        } else if (nk) {
            rc = jp_fail(p, line,
                         "invalid syntax for function call expression (a positional "
                         "argument after a keyword argument)");
        } else {
            rc = jp_push(&args, jp_expression(p, 1));
        }
        need_comma = 1;
    }
    if (rc == 0) rc = jp_expect(p, JT_RPAREN);
    if (rc == 0) rc = jp_done(p, &args, &n->args, &n->n_args);
    if (rc == 0) {
        n->n_kw = nk;
        n->kw_names = jarena_alloc(&p->t->arena, (nk ? nk : 1) * sizeof *n->kw_names);
        if (!n->kw_names) rc = -1;
        if (rc == 0) memcpy(n->kw_names, kwn, nk * sizeof *kwn);
        size_t cnt;
        if (rc == 0) rc = jp_done(p, &kwv, &n->kw_vals, &cnt);
    }
    free(args.v);
    free(kwv.v);
    return rc;
}

/* name(.name)* after | or is */
static int dotted_name(parser *p, char *buf, size_t cap) {
    if (jp_cur(p)->type != JT_NAME) return jp_expect(p, JT_NAME);
    size_t n = 0;
    for (;;) {
        const jtoken *t = jp_cur(p);
        if (n + t->len + 2 > cap) return jp_fail(p, t->line, "name too long");
        memcpy(buf + n, t->s, t->len);
        n += t->len;
        buf[n] = '\0';
        jp_next(p);
        if (jp_cur(p)->type != JT_DOT) return 0;
        jp_next(p);
        if (jp_cur(p)->type != JT_NAME) return jp_expect(p, JT_NAME);
        buf[n++] = '.';
    }
}

/* The filter or test named after | or is, as a node on operand; an unknown
 * name or one this interpreter does not implement is an error naming it. */
static jnode *named(parser *p, int kind, int line, jnode *operand) {
    char name[128];
    if (dotted_name(p, name, sizeof name) != 0) return NULL;
    int filter = kind == JN_FILTER;
    int id = filter ? jinja_filter_id(name) : jinja_test_id(name);
    if (id < 0) {
        const char *what = filter ? "filter" : "test";
        if (filter ? jinja_filter_known(name) : jinja_test_known(name))
            jp_fail(p, line, "the %s '%s' is not supported", what, name);
        else
            jp_fail(p, line, "no %s named '%s'", what, name);
        return NULL;
    }
    jnode *n = jp_node(p, kind, line);
    if (!n) return NULL;
    n->a = operand;
    n->op = (uint8_t)id;
    n->name = jp_dup(p, name, strlen(name));
    return n->name ? n : NULL;
}

static jnode *parse_filter(parser *p, jnode *operand) {
    while (jp_cur(p)->type == JT_PIPE) {
        jp_next(p);
        jnode *f = named(p, JN_FILTER, jp_cur(p)->line, operand);
        if (!f) return NULL;
        if (jp_cur(p)->type == JT_LPAREN && parse_call_args(p, f) != 0) return NULL;
        operand = f;
    }
    return operand;
}

static jnode *parse_test(parser *p, jnode *operand) {
    int line = jp_cur(p)->line;
    jp_next(p); /* is */
    int negated = 0;
    if (jp_is_name(jp_cur(p), "not")) {
        jp_next(p);
        negated = 1;
    }
    jnode *t = named(p, JN_TEST, line, operand);
    if (!t) return NULL;
    const jtoken *c = jp_cur(p);
    if (c->type == JT_LPAREN) {
        if (parse_call_args(p, t) != 0) return NULL;
    } else if ((c->type == JT_NAME || c->type == JT_STRING || c->type == JT_INT ||
                c->type == JT_FLOAT || c->type == JT_LBRACKET || c->type == JT_LBRACE) &&
               !jp_is_name(c, "else") && !jp_is_name(c, "or") && !jp_is_name(c, "and")) {
        if (jp_is_name(c, "is")) {
            jp_fail(p, c->line, "you cannot chain multiple tests with is");
            return NULL;
        }
        jnode *arg = parse_postfix(p, parse_primary(p));
        if (!arg) return NULL;
        t->args = jarena_alloc(&p->t->arena, sizeof *t->args);
        if (!t->args) return NULL;
        t->args[0] = arg;
        t->n_args = 1;
    }
    if (!negated) return t;
    jnode *n = jp_node(p, JN_NOT, line);
    if (n) n->a = t;
    return n;
}

/* x[...] slices: start:stop:step, each part optional */
static jnode *parse_subscribed(parser *p) {
    int line = jp_cur(p)->line;
    jnode *parts[3] = {NULL, NULL, NULL};
    if (jp_cur(p)->type == JT_COLON) {
        jp_next(p);
    } else {
        jnode *e = jp_expression(p, 1);
        if (!e || jp_cur(p)->type != JT_COLON) return e;
        jp_next(p);
        parts[0] = e;
    }
    if (jp_cur(p)->type != JT_COLON && jp_cur(p)->type != JT_RBRACKET &&
        jp_cur(p)->type != JT_COMMA && !(parts[1] = jp_expression(p, 1)))
        return NULL;
    if (jp_cur(p)->type == JT_COLON) {
        jp_next(p);
        if (jp_cur(p)->type != JT_RBRACKET && jp_cur(p)->type != JT_COMMA &&
            !(parts[2] = jp_expression(p, 1)))
            return NULL;
    }
    jnode *s = jp_node(p, JN_SLICE, line);
    if (s) s->a = parts[0], s->b = parts[1], s->c = parts[2];
    return s;
}

static jnode *parse_subscript(parser *p, jnode *obj) {
    const jtoken *t = jp_cur(p);
    int line = t->line;
    jp_next(p);
    if (t->type == JT_DOT) {
        const jtoken *a = jp_cur(p);
        jp_next(p);
        if (a->type == JT_NAME) {
            jnode *g = jp_node(p, JN_GETATTR, line);
            if (!g) return NULL;
            g->a = obj;
            g->name = jp_dup(p, a->s, a->len);
            g->name_len = a->len;
            return g->name ? g : NULL;
        }
        if (a->type != JT_INT) {
            jp_fail(p, a->line, "expected name or number after '.'");
            return NULL;
        }
        jnode *g = jp_node(p, JN_GETITEM, line);
        if (!g) return NULL;
        g->a = obj;
        g->b = const_node(p, line, jv_int(a->i));
        return g->b ? g : NULL;
    }
    nvec idx = {0};
    int rc = 0;
    while (rc == 0 && jp_cur(p)->type != JT_RBRACKET) {
        if (idx.n && (rc = jp_expect(p, JT_COMMA)) != 0) break;
        rc = jp_push(&idx, parse_subscribed(p));
    }
    if (rc == 0) rc = jp_expect(p, JT_RBRACKET);
    jnode *g = rc == 0 ? jp_node(p, JN_GETITEM, line) : NULL;
    if (g) {
        g->a = obj;
        if (idx.n == 1) {
            g->b = idx.v[0];
        } else {
            g->b = jp_node(p, JN_TUPLE, line);
            if (!g->b || jp_done(p, &idx, &g->b->args, &g->b->n_args) != 0) g = NULL;
        }
    }
    free(idx.v);
    return g;
}

/* fn( args ) */
static jnode *parse_call(parser *p, jnode *fn) {
    jnode *c = jp_node(p, JN_CALL, jp_cur(p)->line);
    if (!c) return NULL;
    c->a = fn;
    return parse_call_args(p, c) == 0 ? c : NULL;
}

static jnode *parse_postfix(parser *p, jnode *n) {
    while (n) {
        int type = jp_cur(p)->type;
        if (type == JT_DOT || type == JT_LBRACKET) {
            n = parse_subscript(p, n);
        } else if (type == JT_LPAREN) {
            n = parse_call(p, n);
        } else {
            break;
        }
    }
    return n;
}

static jnode *parse_filter_expr(parser *p, jnode *n) {
    while (n) {
        const jtoken *t = jp_cur(p);
        if (t->type == JT_PIPE) {
            n = parse_filter(p, n);
        } else if (jp_is_name(t, "is")) {
            n = parse_test(p, n);
        } else if (t->type == JT_LPAREN) {
            n = parse_call(p, n);
        } else {
            break;
        }
    }
    return n;
}

static jnode *parse_list_like(parser *p, int kind, int close) {
    int line = jp_cur(p)->line;
    jp_next(p);
    nvec items = {0};
    int rc = 0;
    while (rc == 0 && jp_cur(p)->type != close) {
        if (items.n && (rc = jp_expect(p, JT_COMMA)) != 0) break;
        if (jp_cur(p)->type == close) break;
        if (kind == JN_DICT) {
            rc = jp_push(&items, jp_expression(p, 1));
            if (rc == 0) rc = jp_expect(p, JT_COLON);
        }
        if (rc == 0) rc = jp_push(&items, jp_expression(p, 1));
    }
    if (rc == 0) rc = jp_expect(p, close);
    jnode *n = rc == 0 ? jp_node(p, kind, line) : NULL;
    if (n && jp_done(p, &items, &n->args, &n->n_args) != 0) n = NULL;
    free(items.v);
    return n;
}

static jnode *parse_primary(parser *p) {
    const jtoken *t = jp_cur(p);
    int line = t->line;
    if (t->type == JT_NAME) {
        jp_next(p);
        if (jp_is_name(t, "true") || jp_is_name(t, "True")) return const_node(p, line, jv_bool(1));
        if (jp_is_name(t, "false") || jp_is_name(t, "False"))
            return const_node(p, line, jv_bool(0));
        if (jp_is_name(t, "none") || jp_is_name(t, "None")) return const_node(p, line, jv_none());
        jnode *n = jp_node(p, JN_NAME, line);
        if (!n) return NULL;
        n->name = jp_dup(p, t->s, t->len);
        n->name_len = t->len;
        return n->name ? n : NULL;
    }
    if (t->type == JT_STRING) { /* adjacent strings are one */
        jbuf b = {0};
        int rc = 0;
        while (rc == 0 && jp_cur(p)->type == JT_STRING) {
            rc = jbuf_put(&b, jp_cur(p)->s, jp_cur(p)->len);
            jp_next(p);
        }
        jnode *n = rc == 0 ? const_str(p, line, b.p ? b.p : "", b.len) : NULL;
        jbuf_free(&b);
        return n;
    }
    if (t->type == JT_INT) {
        jp_next(p);
        return const_node(p, line, jv_int(t->i));
    }
    if (t->type == JT_FLOAT) {
        jp_next(p);
        return const_node(p, line, jv_float(t->f));
    }
    if (t->type == JT_LPAREN) {
        jp_next(p);
        jnode *n = jp_tuple(p, 0, 1, NULL, 1);
        if (n && jp_expect(p, JT_RPAREN) != 0) return NULL;
        return n;
    }
    if (t->type == JT_LBRACKET) return parse_list_like(p, JN_LIST, JT_RBRACKET);
    if (t->type == JT_LBRACE) return parse_list_like(p, JN_DICT, JT_RBRACE);
    if (t->type == JT_NAME || t->type == JT_STRING)
        jp_fail(p, line, "unexpected '%.*s'", (int)t->len, t->s);
    else
        jp_fail(p, line, "unexpected %s", jinja_tok_desc(t->type));
    return NULL;
}

static jnode *parse_unary(parser *p, int with_filter) {
    const jtoken *t = jp_cur(p);
    int line = t->line;
    if (++p->depth > JP_MAX_NESTING) {
        jp_fail(p, line, "expression nested too deeply (more than %d levels)", JP_MAX_NESTING);
        return NULL;
    }
    jnode *n;
    if (t->type == JT_SUB || t->type == JT_ADD) {
        jp_next(p);
        jnode *operand = parse_unary(p, 0);
        n = operand ? jp_node(p, t->type == JT_SUB ? JN_NEG : JN_POS, line) : NULL;
        if (n) n->a = operand;
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    p->depth--;
    return n;
}

static jnode *binop(parser *p, int kind, int op, int line, jnode *a, jnode *b) {
    if (!a || !b) return NULL;
    jnode *n = jp_node(p, kind, line);
    if (n) n->op = (uint8_t)op, n->a = a, n->b = b;
    return n;
}

static jnode *parse_pow(parser *p) {
    jnode *left = parse_unary(p, 1);
    while (left && jp_cur(p)->type == JT_POW) {
        int line = jp_cur(p)->line;
        jp_next(p);
        left = binop(p, JN_BINOP, JT_POW, line, left, parse_unary(p, 1));
    }
    return left;
}

static jnode *parse_math2(parser *p) {
    jnode *left = parse_pow(p);
    for (;;) {
        int type = jp_cur(p)->type, line = jp_cur(p)->line;
        if (!left || (type != JT_MUL && type != JT_DIV && type != JT_FLOORDIV && type != JT_MOD))
            return left;
        jp_next(p);
        left = binop(p, JN_BINOP, type, line, left, parse_pow(p));
    }
}

static jnode *parse_concat(parser *p) {
    int line = jp_cur(p)->line;
    jnode *first = parse_math2(p);
    if (!first || jp_cur(p)->type != JT_TILDE) return first;
    nvec parts = {0};
    int rc = jp_push(&parts, first);
    while (rc == 0 && jp_cur(p)->type == JT_TILDE) {
        jp_next(p);
        rc = jp_push(&parts, parse_math2(p));
    }
    jnode *n = rc == 0 ? jp_node(p, JN_CONCAT, line) : NULL;
    if (n && jp_done(p, &parts, &n->args, &n->n_args) != 0) n = NULL;
    free(parts.v);
    return n;
}

static jnode *parse_math1(parser *p) {
    jnode *left = parse_concat(p);
    for (;;) {
        int type = jp_cur(p)->type, line = jp_cur(p)->line;
        if (!left || (type != JT_ADD && type != JT_SUB)) return left;
        jp_next(p);
        left = binop(p, JN_BINOP, type, line, left, parse_concat(p));
    }
}

static jnode *parse_compare(parser *p) {
    int line = jp_cur(p)->line;
    jnode *first = parse_math1(p);
    if (!first) return NULL;
    nvec ops = {0};
    uint8_t kinds[64];
    int rc = 0;
    for (;;) {
        int type = jp_cur(p)->type, op;
        if (type == JT_EQ || type == JT_NE || type == JT_LT || type == JT_LTEQ || type == JT_GT ||
            type == JT_GTEQ) {
            op = type;
            jp_next(p);
        } else if (jp_is_name(jp_cur(p), "in")) {
            op = JN_IN;
            jp_next(p);
        } else if (jp_is_name(jp_cur(p), "not") && jp_is_name(jp_look(p), "in")) {
            op = JN_NOTIN;
            jp_next(p);
            jp_next(p);
        } else {
            break;
        }
        if (ops.n == sizeof kinds) {
            rc = jp_fail(p, line, "too many chained comparisons");
            break;
        }
        kinds[ops.n] = (uint8_t)op;
        if ((rc = jp_push(&ops, parse_math1(p))) != 0) break;
    }
    if (rc != 0 || ops.n == 0) {
        free(ops.v);
        return rc == 0 ? first : NULL;
    }
    jnode *n = jp_node(p, JN_COMPARE, line);
    if (n) {
        n->a = first;
        n->cmp = jarena_alloc(&p->t->arena, ops.n);
        if (n->cmp) memcpy(n->cmp, kinds, ops.n);
        if (!n->cmp || jp_done(p, &ops, &n->args, &n->n_args) != 0) n = NULL;
    }
    free(ops.v);
    return n;
}

static jnode *parse_not(parser *p) {
    if (jp_is_name(jp_cur(p), "not")) {
        int line = jp_cur(p)->line;
        jp_next(p);
        if (++p->depth > JP_MAX_NESTING) {
            jp_fail(p, line, "expression nested too deeply (more than %d levels)", JP_MAX_NESTING);
            return NULL;
        }
        jnode *operand = parse_not(p);
        p->depth--;
        jnode *n = operand ? jp_node(p, JN_NOT, line) : NULL;
        if (n) n->a = operand;
        return n;
    }
    return parse_compare(p);
}

/* a and b and … (or_ 0) over parse_not; a or b or … (or_ 1) over that */
static jnode *parse_logic(parser *p, int or_) {
    jnode *left = or_ ? parse_logic(p, 0) : parse_not(p);
    while (left && jp_is_name(jp_cur(p), or_ ? "or" : "and")) {
        int line = jp_cur(p)->line;
        jp_next(p);
        left =
            binop(p, or_ ? JN_OR : JN_AND, 0, line, left, or_ ? parse_logic(p, 0) : parse_not(p));
    }
    return left;
}

static jnode *parse_condexpr(parser *p) {
    jnode *expr1 = parse_logic(p, 1);
    while (expr1 && jp_is_name(jp_cur(p), "if")) {
        int line = jp_cur(p)->line;
        jp_next(p);
        jnode *test = parse_logic(p, 1), *expr3 = NULL;
        if (!test) return NULL;
        if (jp_is_name(jp_cur(p), "else")) {
            jp_next(p);
            if (!(expr3 = parse_condexpr(p))) return NULL;
        }
        jnode *n = jp_node(p, JN_COND, line);
        if (!n) return NULL;
        n->a = test;
        n->b = expr1;
        n->c = expr3;
        expr1 = n;
    }
    return expr1;
}

jnode *jp_expression(parser *p, int with_condexpr) {
    if (++p->depth > JP_MAX_NESTING) {
        jp_fail(p, jp_cur(p)->line, "expression nested too deeply (more than %d levels)",
                JP_MAX_NESTING);
        return NULL;
    }
    jnode *n = with_condexpr ? parse_condexpr(p) : parse_logic(p, 1);
    p->depth--;
    return n;
}

static int is_tuple_end(const parser *p, const char *extra_end) {
    int type = jp_cur(p)->type;
    return type == JT_VAR_END || type == JT_BLOCK_END || type == JT_RPAREN ||
           (extra_end && jp_is_name(jp_cur(p), extra_end));
}

jnode *jp_tuple(parser *p, int simplified, int with_condexpr, const char *extra_end,
                int explicit_parens) {
    int line = jp_cur(p)->line, is_tuple = 0, rc = 0;
    nvec items = {0};
    for (;;) {
        if (items.n && (rc = jp_expect(p, JT_COMMA)) != 0) break;
        if (is_tuple_end(p, extra_end)) break;
        jnode *e = simplified ? parse_primary(p) : jp_expression(p, with_condexpr);
        if ((rc = jp_push(&items, e)) != 0) break;
        if (jp_cur(p)->type != JT_COMMA) break;
        is_tuple = 1;
    }
    if (rc != 0) {
        free(items.v);
        return NULL;
    }
    if (!is_tuple && items.n) {
        jnode *only = items.v[0];
        free(items.v);
        return only;
    }
    if (!is_tuple && !explicit_parens) {
        free(items.v);
        jp_fail(p, jp_cur(p)->line, "expected an expression, got %s",
                jinja_tok_desc(jp_cur(p)->type));
        return NULL;
    }
    jnode *n = jp_node(p, JN_TUPLE, line);
    if (n && jp_done(p, &items, &n->args, &n->n_args) != 0) n = NULL;
    free(items.v);
    return n;
}
