/* jinja_parse — tokens → syntax tree: the statements chat templates use, as
 * Jinja2's parser.py (3.1) parses them (expressions are in
 * jinja_parse_expr.c). Statements Jinja2 has but this interpreter does not
 * (include, extends, block, import, from, with, filter, call, autoescape)
 * are refused with their name and line. */
#include "model/chat/jinja_parse.h"

#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const jtoken *jp_cur(const parser *p) {
    return &p->tk[p->pos];
}

const jtoken *jp_look(const parser *p) {
    return &p->tk[p->pos + 1 < p->n ? p->pos + 1 : p->pos];
}

void jp_next(parser *p) {
    if (p->pos + 1 < p->n) p->pos++;
}

int jp_fail(parser *p, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = jerr_v(p->t->name, line, fmt, ap);
    va_end(ap);
    return rc;
}

int jp_is_name(const jtoken *t, const char *name) {
    return t->type == JT_NAME && t->len == strlen(name) && !memcmp(t->s, name, t->len);
}

int jp_expect(parser *p, int type) {
    const jtoken *t = jp_cur(p);
    if (t->type != type) {
        if (t->type == JT_NAME)
            return jp_fail(p, t->line, "expected %s, got '%.*s'", jinja_tok_desc(type), (int)t->len,
                           t->s);
        return jp_fail(p, t->line, "expected %s, got %s", jinja_tok_desc(type),
                       jinja_tok_desc(t->type));
    }
    jp_next(p);
    return 0;
}

jnode *jp_node(parser *p, int kind, int line) {
    jnode *n = jarena_alloc(&p->t->arena, sizeof *n);
    if (n) {
        n->kind = (uint8_t)kind;
        n->line = line;
    }
    return n;
}

char *jp_dup(parser *p, const char *s, size_t len) {
    char *d = jarena_alloc(&p->t->arena, len + 1);
    if (d) memcpy(d, s, len);
    return d;
}

int jp_push(nvec *v, jnode *n) {
    if (!n) return -1;
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        jnode **nv = realloc(v->v, cap * sizeof *nv);
        if (!nv) return err_set("out of memory parsing a template");
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = n;
    return 0;
}

/* Moves the vector into the arena. */
int jp_done(parser *p, nvec *v, jnode ***out, size_t *n) {
    *out = NULL;
    *n = v->n;
    int rc = 0;
    if (v->n) {
        *out = jarena_alloc(&p->t->arena, v->n * sizeof **out);
        if (*out)
            memcpy(*out, v->v, v->n * sizeof **out);
        else
            rc = -1;
    }
    free(v->v);
    memset(v, 0, sizeof *v);
    return rc;
}

/* ---- statements -------------------------------------------------------------------- */

static int subparse(parser *p, const char *const *ends, nvec *body);

/* Tag end, the body up to one of ends (left as the current token), and the
 * tag name consumed when drop_needle. */
static int parse_statements(parser *p, const char *const *ends, int drop_needle, nvec *body) {
    if (jp_cur(p)->type == JT_COLON) jp_next(p);
    if (jp_expect(p, JT_BLOCK_END) != 0 || subparse(p, ends, body) != 0) return -1;
    if (jp_cur(p)->type == JT_EOF) {
        char want[200] = "";
        for (size_t i = 0; ends[i]; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s'%s'", i ? " or " : "",
                     ends[i]);
        return jp_fail(p, jp_cur(p)->line, "unexpected end of template: expected %s", want);
    }
    if (drop_needle) jp_next(p);
    return 0;
}

static int body_into(parser *p, const char *const *ends, int drop_needle, jnode ***out, size_t *n) {
    nvec b = {0};
    if (parse_statements(p, ends, drop_needle, &b) != 0) {
        free(b.v);
        return -1;
    }
    return jp_done(p, &b, out, n);
}

/* Names to assign: a name, or names separated by commas (a tuple). */
static int parse_targets(parser *p, jnode *n, const char *extra_end) {
    int line = jp_cur(p)->line;
    jnode *t = jp_tuple(p, 1, 0, extra_end, 0);
    if (!t) return -1;
    jnode **items = t->kind == JN_TUPLE ? t->args : &t;
    size_t count = t->kind == JN_TUPLE ? t->n_args : 1;
    n->tuple_target = t->kind == JN_TUPLE;
    n->names = jarena_alloc(&p->t->arena, (count ? count : 1) * sizeof *n->names);
    if (!n->names) return -1;
    for (size_t i = 0; i < count; i++) {
        if (items[i]->kind != JN_NAME)
            return jp_fail(p, line, "can't assign to %s",
                           items[i]->kind == JN_TUPLE   ? "a nested tuple (not supported)"
                           : items[i]->kind == JN_CONST ? "a constant"
                                                        : "this expression");
        n->names[i] = items[i]->name;
    }
    n->n_names = count;
    return 0;
}

static jnode *parse_for(parser *p, int line) {
    jnode *n = jp_node(p, JN_FOR, line);
    if (!n || parse_targets(p, n, "in") != 0) return NULL;
    if (!jp_is_name(jp_cur(p), "in")) {
        jp_fail(p, jp_cur(p)->line, "expected 'in' in the for loop");
        return NULL;
    }
    jp_next(p);
    if (!(n->a = jp_tuple(p, 0, 0, "recursive", 0))) return NULL;
    if (jp_is_name(jp_cur(p), "if")) {
        jp_next(p);
        if (!(n->b = jp_expression(p, 1))) return NULL;
    }
    if (jp_is_name(jp_cur(p), "recursive")) {
        jp_fail(p, jp_cur(p)->line, "recursive for loops are not supported");
        return NULL;
    }
    static const char *const ends[] = {"endfor", "else", NULL};
    static const char *const end[] = {"endfor", NULL};
    p->loops++;
    int rc = body_into(p, ends, 0, &n->args, &n->n_args);
    p->loops--;
    if (rc != 0) return NULL;
    int has_else = jp_is_name(jp_cur(p), "else");
    jp_next(p);
    if (has_else && body_into(p, end, 1, &n->els, &n->n_els) != 0) return NULL;
    return n;
}

static jnode *parse_if(parser *p, int line) {
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const end[] = {"endif", NULL};
    jnode *top = jp_node(p, JN_IF, line), *n = top;
    while (n) {
        if (!(n->a = jp_tuple(p, 0, 0, NULL, 0))) return NULL;
        if (body_into(p, ends, 0, &n->args, &n->n_args) != 0) return NULL;
        const jtoken *t = jp_cur(p);
        jp_next(p);
        if (jp_is_name(t, "elif")) {
            jnode *e = jp_node(p, JN_IF, t->line);
            if (!e) return NULL;
            n->els = jarena_alloc(&p->t->arena, sizeof *n->els);
            if (!n->els) return NULL;
            n->els[0] = e;
            n->n_els = 1;
            n = e;
            continue;
        }
        if (jp_is_name(t, "else") && body_into(p, end, 1, &n->els, &n->n_els) != 0) return NULL;
        break;
    }
    return top;
}

static jnode *parse_set(parser *p, int line) {
    jnode *n = jp_node(p, JN_SET, line);
    if (!n) return NULL;
    if (jp_cur(p)->type == JT_NAME && jp_look(p)->type == JT_DOT) { /* ns.attr */
        n->kind = JN_SETNS;
        n->name = jp_dup(p, jp_cur(p)->s, jp_cur(p)->len);
        jp_next(p);
        jp_next(p);
        if (jp_cur(p)->type != JT_NAME) {
            jp_expect(p, JT_NAME);
            return NULL;
        }
        n->attr = jp_dup(p, jp_cur(p)->s, jp_cur(p)->len);
        jp_next(p);
    } else if (parse_targets(p, n, NULL) != 0) {
        return NULL;
    }
    if (jp_cur(p)->type == JT_ASSIGN) {
        jp_next(p);
        n->a = jp_tuple(p, 0, 1, NULL, 0);
        return n->a ? n : NULL;
    }
    if (n->kind == JN_SET && n->tuple_target) {
        jp_fail(p, line, "a {%% set %%} block assigns one name");
        return NULL;
    }
    if (jp_cur(p)->type == JT_PIPE) {
        jp_fail(p, line, "filters on a {%% set %%} block are not supported");
        return NULL;
    }
    n->op = n->kind == JN_SETNS; /* JN_SETBLOCK: op 1 assigns name.attr */
    n->kind = JN_SETBLOCK;
    static const char *const end[] = {"endset", NULL};
    return body_into(p, end, 1, &n->args, &n->n_args) == 0 ? n : NULL;
}

static jnode *parse_macro(parser *p, int line) {
    jnode *n = jp_node(p, JN_MACRO, line);
    if (!n) return NULL;
    if (jp_cur(p)->type != JT_NAME) {
        jp_expect(p, JT_NAME);
        return NULL;
    }
    n->name = jp_dup(p, jp_cur(p)->s, jp_cur(p)->len);
    jp_next(p);
    if (jp_expect(p, JT_LPAREN) != 0) return NULL;
    const char *names[64];
    jnode *defs[64];
    size_t k = 0;
    int any_default = 0;
    while (jp_cur(p)->type != JT_RPAREN) {
        if (k && jp_expect(p, JT_COMMA) != 0) return NULL;
        if (k == 64) {
            jp_fail(p, line, "too many macro parameters");
            return NULL;
        }
        if (jp_cur(p)->type != JT_NAME) {
            jp_expect(p, JT_NAME);
            return NULL;
        }
        names[k] = jp_dup(p, jp_cur(p)->s, jp_cur(p)->len);
        jp_next(p);
        defs[k] = NULL;
        if (jp_cur(p)->type == JT_ASSIGN) {
            jp_next(p);
            if (!(defs[k] = jp_expression(p, 1))) return NULL;
            any_default = 1;
        } else if (any_default) {
            jp_fail(p, line, "non-default argument follows default argument");
            return NULL;
        }
        k++;
    }
    jp_next(p);
    n->n_names = k;
    n->names = jarena_alloc(&p->t->arena, (k ? k : 1) * sizeof *n->names);
    n->defaults = jarena_alloc(&p->t->arena, (k ? k : 1) * sizeof *n->defaults);
    if (!n->names || !n->defaults) return NULL;
    memcpy(n->names, names, k * sizeof *names);
    memcpy(n->defaults, defs, k * sizeof *defs);
    static const char *const end[] = {"endmacro", NULL};
    int loops = p->loops;
    p->loops = 0; /* a macro body is a function: no break out of the caller's loop */
    int rc = body_into(p, end, 1, &n->args, &n->n_args);
    p->loops = loops;
    return rc == 0 ? n : NULL;
}

static jnode *parse_generation(parser *p, int line) {
    if (p->generation) {
        jp_fail(p, line, "nested {%% generation %%} blocks are not supported");
        return NULL;
    }
    jnode *n = jp_node(p, JN_GENERATION, line);
    if (!n) return NULL;
    static const char *const end[] = {"endgeneration", NULL};
    int loops = p->loops;
    p->loops = 0; /* transformers renders the block as a call: break cannot leave it */
    p->generation = 1;
    int rc = body_into(p, end, 1, &n->args, &n->n_args);
    p->generation = 0;
    p->loops = loops;
    p->t->has_generation = 1;
    return rc == 0 ? n : NULL;
}

static int walk_safe(parser *p, const jnode *n, int top);

static int parse_statement(parser *p, nvec *body) {
    const jtoken *t = jp_cur(p);
    int line = t->line;
    if (t->type != JT_NAME) return jp_fail(p, line, "tag name expected");
    static const char *const refused[] = {"block", "extends",    "include", "from", "import",
                                          "with",  "autoescape", "filter",  "call", NULL};
    for (size_t i = 0; refused[i]; i++)
        if (jp_is_name(t, refused[i]))
            return jp_fail(p, line, "the {%% %s %%} statement is not supported", refused[i]);
    jp_next(p);
    jnode *n = NULL;
    if (jp_is_name(t, "for")) {
        n = parse_for(p, line);
    } else if (jp_is_name(t, "if")) {
        n = parse_if(p, line);
    } else if (jp_is_name(t, "set")) {
        n = parse_set(p, line);
    } else if (jp_is_name(t, "macro")) {
        n = parse_macro(p, line);
    } else if (jp_is_name(t, "generation")) {
        n = parse_generation(p, line);
    } else if (jp_is_name(t, "print")) {
        n = jp_node(p, JN_OUTPUT, line);
        if (n && !(n->a = jp_tuple(p, 0, 1, NULL, 0))) n = NULL;
        if (n && walk_safe(p, n->a, 1) != 0) n = NULL;
    } else if (jp_is_name(t, "break") || jp_is_name(t, "continue")) {
        if (!p->loops) return jp_fail(p, line, "'%.*s' outside loop", (int)t->len, t->s);
        n = jp_node(p, jp_is_name(t, "break") ? JN_BREAK : JN_CONTINUE, line);
    } else {
        return jp_fail(p, line, "unknown tag '%.*s'", (int)t->len, t->s);
    }
    return jp_push(body, n);
}

/* "| safe" returns Markup, which changes what + and ~ do next to it; it is
 * accepted only as the last filter of {{ ... }}, where it changes nothing. */
static int walk_safe(parser *p, const jnode *n, int top) {
    if (!n) return 0;
    if (n->kind == JN_FILTER && !strcmp(n->name, "safe") && !top)
        return jp_fail(p, n->line,
                       "the filter 'safe' is supported only as the last filter of {{ ... }}");
    if (n->kind == JN_MACRO || n->kind >= JN_DATA) return 0;
    if (walk_safe(p, n->a, 0) || walk_safe(p, n->b, 0) || walk_safe(p, n->c, 0)) return -1;
    for (size_t i = 0; i < n->n_args; i++)
        if (walk_safe(p, n->args[i], 0)) return -1;
    for (size_t i = 0; i < n->n_kw; i++)
        if (walk_safe(p, n->kw_vals[i], 0)) return -1;
    return 0;
}

static int subparse(parser *p, const char *const *ends, nvec *body) {
    while (jp_cur(p)->type != JT_EOF) {
        const jtoken *t = jp_cur(p);
        if (t->type == JT_DATA) {
            jnode *n = jp_node(p, JN_DATA, t->line);
            if (!n) return -1;
            n->name = t->s;
            n->name_len = t->len;
            if (jp_push(body, n) != 0) return -1;
            jp_next(p);
        } else if (t->type == JT_VAR_BEGIN) {
            jp_next(p);
            jnode *n = jp_node(p, JN_OUTPUT, t->line);
            if (!n || !(n->a = jp_tuple(p, 0, 1, NULL, 0))) return -1;
            if (n->a->kind == JN_FILTER && !strcmp(n->a->name, "safe") && n->a->n_args == 0 &&
                n->a->n_kw == 0) {
                n->a = n->a->a; /* str(Markup(x)) == str(x) */
                n->op = 1;
            }
            if (walk_safe(p, n->a, 0) != 0 || jp_push(body, n) != 0 ||
                jp_expect(p, JT_VAR_END) != 0)
                return -1;
        } else if (t->type == JT_BLOCK_BEGIN) {
            jp_next(p);
            if (ends)
                for (size_t i = 0; ends[i]; i++)
                    if (jp_is_name(jp_cur(p), ends[i])) return 0;
            if (parse_statement(p, body) != 0 || jp_expect(p, JT_BLOCK_END) != 0) return -1;
        } else {
            return jp_fail(p, t->line, "unexpected %s", jinja_tok_desc(t->type));
        }
    }
    return 0;
}

int jinja_parse(jinja_template *t, const jtoken *toks, size_t n) {
    parser p = {.t = t, .tk = toks, .n = n};
    nvec body = {0};
    if (subparse(&p, NULL, &body) != 0) {
        free(body.v);
        return -1;
    }
    return jp_done(&p, &body, &t->body, &t->n_body);
}
