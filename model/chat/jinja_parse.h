/* jinja_parse — the parser's shared state and helpers (internal to
 * jinja_parse.c, statements, and jinja_parse_expr.c, expressions). */
#ifndef FL_MODEL_CHAT_JINJA_PARSE_H
#define FL_MODEL_CHAT_JINJA_PARSE_H

#include "model/chat/jinja_internal.h"

#define JP_MAX_NESTING 200

typedef struct {
    jinja_template *t;
    const jtoken *tk;
    size_t n, pos;
    int depth;      /* expression nesting */
    int loops;      /* enclosing for loops (break / continue are allowed) */
    int generation; /* inside {% generation %} */
} parser;

typedef struct {
    jnode **v;
    size_t n, cap;
} nvec;

const jtoken *jp_cur(const parser *p);
const jtoken *jp_look(const parser *p);
void jp_next(parser *p);
/* "NAME:LINE: message"; returns -1. */
int jp_fail(parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int jp_is_name(const jtoken *t, const char *name);
int jp_expect(parser *p, int type);
jnode *jp_node(parser *p, int kind, int line);
char *jp_dup(parser *p, const char *s, size_t len);
int jp_push(nvec *v, jnode *n);
/* Moves the vector into the template's arena. */
int jp_done(parser *p, nvec *v, jnode ***out, size_t *n);

/* Expressions (jinja_parse_expr.c), as Jinja2's parser.py: */
jnode *jp_expression(parser *p, int with_condexpr);
jnode *jp_tuple(parser *p, int simplified, int with_condexpr, const char *extra_end,
                int explicit_parens);

#endif
