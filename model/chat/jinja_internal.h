/* jinja_internal — what the interpreter's files share (not a public API).
 *
 *   jinja_lex.c      template source → tokens (Jinja2's lexer.py rules,
 *                    whitespace control, trim_blocks, lstrip_blocks)
 *   jinja_parse.c    tokens → syntax tree (Jinja2's parser.py grammar)
 *   jinja_value.c    values: Python's str(), repr(), ==, <, truthiness
 *   jinja_json.c     JSON in (render variables) and out (tojson)
 *   jinja_iter.c     iteration and Jinja2's lazy generators (select, map, …)
 *   jinja_eval.c     expressions and statements, scopes, limits
 *   jinja_filters.c  filters and tests
 *   jinja_methods.c  Python methods of str, dict and list, and the globals
 *   jinja_str.c      UTF-8 helpers for Python's code-point string operations
 *
 * Memory: the syntax tree lives in the template's arena, every value of a
 * render in the render's arena, freed at once when the render ends. Values
 * are immutable once made (the sandbox forbids templates to modify lists and
 * dicts), so they are shared freely; only namespaces, generators and loop
 * objects change, and those are reached through pointers. */
#ifndef FL_MODEL_CHAT_JINJA_INTERNAL_H
#define FL_MODEL_CHAT_JINJA_INTERNAL_H

#include "model/chat/jinja.h"
#include "model/tokenizer/tokenizer.h" /* UTF-8 decoding and validation */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- arena --------------------------------------------------------------------- */
typedef struct jblock jblock;
typedef struct {
    jblock *head;
    size_t total, limit;
} jarena;
/* n bytes, zeroed, aligned for any value; NULL (with err_set) past the limit. */
void *jarena_alloc(jarena *a, size_t n);
void jarena_free(jarena *a);

/* ---- growable byte buffer (malloc'd) -------------------------------------------- */
typedef struct {
    char *p;
    size_t len, cap, limit; /* limit 0: none */
} jbuf;
int jbuf_put(jbuf *b, const void *s, size_t n);
int jbuf_puts(jbuf *b, const char *s);
int jbuf_putc(jbuf *b, char c);
int jbuf_printf(jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void jbuf_free(jbuf *b);

/* ---- tokens ---------------------------------------------------------------------- */
typedef enum {
    JT_EOF,
    JT_DATA,
    JT_VAR_BEGIN,
    JT_VAR_END,
    JT_BLOCK_BEGIN,
    JT_BLOCK_END,
    JT_NAME,
    JT_STRING,
    JT_INT,
    JT_FLOAT,
    /* operators */
    JT_ADD,
    JT_SUB,
    JT_DIV,
    JT_FLOORDIV,
    JT_MUL,
    JT_MOD,
    JT_POW,
    JT_TILDE,
    JT_LBRACKET,
    JT_RBRACKET,
    JT_LPAREN,
    JT_RPAREN,
    JT_LBRACE,
    JT_RBRACE,
    JT_EQ,
    JT_NE,
    JT_GT,
    JT_GTEQ,
    JT_LT,
    JT_LTEQ,
    JT_ASSIGN,
    JT_DOT,
    JT_COLON,
    JT_PIPE,
    JT_COMMA,
    JT_SEMICOLON
} jtok_type;

typedef struct {
    uint8_t type;
    int line;
    const char *s; /* DATA, NAME, STRING: the text (STRING: unescaped), in the arena */
    size_t len;
    int64_t i; /* INT */
    double f;  /* FLOAT */
} jtoken;

/* Lexes src into *toks (ending with JT_EOF), allocated in a. */
int jinja_lex(const char *src, size_t len, const char *name, jarena *a, jtoken **toks, size_t *n);
/* Text of a token type for messages ("'}}'", "name", "end of template"). */
const char *jinja_tok_desc(int type);

/* ---- values ---------------------------------------------------------------------- */
typedef enum {
    JV_UNDEF,
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST, /* sub: JL_LIST, JL_TUPLE, JL_VIEW (dict.items()/keys()/values()), JL_RANGE */
    JV_DICT,
    JV_ITER,    /* a Python generator (select, map, items, reverse, …): single use */
    JV_NS,      /* namespace() */
    JV_MACRO,   /* a {% macro %} */
    JV_BUILTIN, /* sub: a global function (range, namespace, …) */
    JV_METHOD,  /* a bound method: self + sub (which method) */
    JV_LOOP     /* the loop object of a for loop */
} jv_kind;

enum { JL_LIST, JL_TUPLE, JL_VIEW, JL_RANGE };

typedef struct jstr jstr;
typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jiter jiter;
typedef struct jloop jloop;
typedef struct jnode jnode;
typedef struct jmethod jmethod;
typedef struct jmacro jmacro;
typedef struct jframe jframe;

typedef struct jv {
    uint8_t kind, sub;
    union {
        int b;
        int64_t i;
        double f;
        jstr *s;
        jlist *l;
        jdict *d; /* JV_DICT and JV_NS */
        jiter *it;
        jmacro *macro;
        jmethod *m;
        jloop *loop;
        const char *undef; /* JV_UNDEF: why ("'x' is undefined"), or NULL */
    } u;
} jv;

struct jstr {
    size_t len;
    size_t ncp; /* code points, or SIZE_MAX until counted */
    char s[];   /* len bytes and a NUL */
};
struct jlist {
    size_t n;
    jv *v;
};
struct jdict {
    size_t n, cap;
    jv *k, *v; /* insertion order, as Python's dict */
};
struct jmethod {
    jv self;
    int which;
};
struct jmacro {
    const jnode *node;
    jframe *frame; /* where it was defined: names it does not bind resolve there */
};

/* ---- syntax tree ---------------------------------------------------------------- */
typedef enum {
    /* expressions */
    JN_CONST,   /* value */
    JN_NAME,    /* name */
    JN_GETATTR, /* a.name */
    JN_GETITEM, /* a[b] (b may be a JN_SLICE) */
    JN_SLICE,   /* a:b:c, each may be NULL */
    JN_CALL,    /* a(args, kw) */
    JN_FILTER,  /* a | op(args, kw); name is the filter's name */
    JN_TEST,    /* a is op(args, kw) */
    JN_NOT,
    JN_NEG,
    JN_POS,
    JN_BINOP, /* a op b: JT_ADD, JT_SUB, JT_MUL, JT_DIV, JT_FLOORDIV, JT_MOD, JT_POW */
    JN_AND,
    JN_OR,
    JN_CONCAT,  /* args joined with ~ */
    JN_COMPARE, /* a, then (cmp[i], args[i]) chained as Python does */
    JN_COND,    /* b if a else c (c may be NULL) */
    JN_LIST,
    JN_TUPLE,
    JN_DICT, /* args: key, value, key, value, … */
    /* statements */
    JN_DATA,   /* name: template text */
    JN_OUTPUT, /* {{ a }}; op 1: a "| safe" at the top was dropped */
    JN_IF,     /* if a: body else els */
    JN_FOR,    /* for names in a [if b]: body else els */
    JN_SET,    /* names = a */
    JN_SETNS,  /* name.attr = a */
    JN_SETBLOCK,
    JN_MACRO, /* name(names = defaults): body */
    JN_BREAK,
    JN_CONTINUE,
    JN_GENERATION
} jnode_kind;

/* Filters, tests, methods and globals by number (jinja_filters.c,
 * jinja_methods.c). */
typedef struct {
    const char *name;
    int id;
} jname_id;

struct jnode {
    uint8_t kind, op;
    int line;
    jnode *a, *b, *c;
    jnode **args; /* arguments, list items, body */
    size_t n_args;
    jnode **els; /* else body */
    size_t n_els;
    const char **kw_names; /* keyword arguments */
    jnode **kw_vals;
    size_t n_kw;
    const char *name; /* NUL-terminated, in the arena */
    size_t name_len;
    const char *attr;   /* JN_SETNS, JN_SETBLOCK on a namespace */
    const char **names; /* targets (JN_FOR, JN_SET, JN_SETBLOCK), parameters (JN_MACRO) */
    jnode **defaults;   /* JN_MACRO: one per parameter, NULL when none */
    size_t n_names;
    int tuple_target; /* targets were written as a tuple */
    uint8_t *cmp;     /* JN_COMPARE: JT_EQ … JT_LTEQ, or JN_IN / JN_NOTIN */
    jv value;         /* JN_CONST */
};
enum { JN_IN = 200, JN_NOTIN = 201 };

struct jinja_template {
    jarena arena;
    jinja_limits lim;
    char *name;
    jnode **body;
    size_t n_body;
    int has_generation;
};

/* Parses the tokens into t->body (in t->arena). */
int jinja_parse(jinja_template *t, const jtoken *toks, size_t n);

/* Filter and test lookup for the parser: the id, or -1 when not supported. */
int jinja_filter_id(const char *name);
int jinja_test_id(const char *name);
/* 1 when name is a Jinja2 filter / test that this interpreter does not
 * implement (the error then says "not supported" rather than "unknown"). */
int jinja_filter_known(const char *name);
int jinja_test_known(const char *name);

/* ---- render context ------------------------------------------------------------- */
struct jframe {
    jframe *parent;
    jdict vars;
};

typedef struct {
    const jinja_template *t;
    jarena arena;
    jbuf *out;    /* where output goes now */
    int buffered; /* > 0 inside a macro, set block or generation block */
    jbuf spans;   /* jinja_span array */
    jframe *globals;
    jframe *frame; /* the scope being run */
    size_t steps, iters, calls, depth;
    int line;                        /* the line being run, for messages */
    void *nonprint_re, *nonprint_md; /* repr(): PCRE2 code and match data, made when needed */
} jctx;

/* Error at line: "NAME:LINE: message". Returns -1. */
int jerr_v(const char *name, int line, const char *fmt, va_list ap);
int jerr(jctx *c, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Counts one evaluation step / one iteration against the limits. */
int jstep(jctx *c, int line);
int jiter_tick(jctx *c, int line);

/* values (jinja_value.c) */
static inline jv jv_undef(const char *why) {
    jv v = {.kind = JV_UNDEF};
    v.u.undef = why;
    return v;
}
static inline jv jv_none(void) {
    jv v = {.kind = JV_NONE};
    return v;
}
static inline jv jv_bool(int b) {
    jv v = {.kind = JV_BOOL};
    v.u.b = !!b;
    return v;
}
static inline jv jv_int(int64_t i) {
    jv v = {.kind = JV_INT};
    v.u.i = i;
    return v;
}
static inline jv jv_float(double f) {
    jv v = {.kind = JV_FLOAT};
    v.u.f = f;
    return v;
}
/* A string value copying s[0..n); -1 when out of memory. */
int jv_str(jctx *c, const char *s, size_t n, jv *out);
jv jv_str_const(jstr *s);
/* When rc is 0, a string value of b's bytes; frees b either way. Returns rc
 * or the conversion's status. */
int jv_from_buf(jctx *c, int rc, jbuf *b, jv *out);
int jv_list_new(jctx *c, size_t n, int sub, jv *out); /* n items, all undefined */
int jv_dict_new(jctx *c, jv *out);
int jv_ns_new(jctx *c, jv *out);
/* Dictionary operations (keys compared with Python's ==, so 1 and True are one key). */
int jdict_set(jctx *c, jdict *d, jv key, jv val);
int jdict_get(jctx *c, const jdict *d, jv key, jv *val); /* 1 found, 0 not, -1 error */
int jdict_get_str(const jdict *d, const char *key, jv *val);
int jv_method(jctx *c, jv self, int which, jv *out);
/* Python's bool(v). */
int jv_truthy(jv v);
/* Python's ==; 0 or 1, -1 on error (limits). */
int jv_equal(jctx *c, jv a, jv b);
/* Python's <: *lt = a < b; error (TypeError) for unorderable kinds. */
int jv_less(jctx *c, int line, jv a, jv b, int *lt);
/* Python's str(v) appended to b ("" for undefined); error for kinds that
 * would print an object address (generators, macros, …). */
int jv_to_str(jctx *c, int line, jv v, jbuf *b);
/* As jv_to_str, as a new string value. */
int jv_stringify(jctx *c, int line, jv v, jv *out);
/* Python's repr(v). */
int jv_repr(jctx *c, int line, jv v, jbuf *b);
/* Python's float repr (shortest round-trip, 'r' format). */
void jv_float_repr(double f, char *buf, size_t n);
/* Python's type name of v, for messages ("str", "dict", "generator", …). */
const char *jv_type_name(jv v);
/* A copy of a NUL-terminated string in the render arena. */
const char *jctx_strdup(jctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* JSON (jinja_json.c) */
int jv_from_json(jctx *c, json_t *j, jv *out);
typedef struct {
    int ensure_ascii, sort_keys;
    const char *indent; /* NULL: none */
    size_t indent_len;
    const char *item_sep, *key_sep;
    size_t item_sep_len, key_sep_len;
} jjson_opts;
int jv_to_json(jctx *c, int line, jv v, const jjson_opts *o, jbuf *b);

/* iteration (jinja_iter.c) */
typedef struct {
    jv src;
    size_t i, off; /* position (items or bytes) */
} jcursor;
int jcur_init(jctx *c, int line, jv v, jcursor *cur);
/* *has = 0 at the end. */
int jcur_next(jctx *c, int line, jcursor *cur, jv *out, int *has);
/* All remaining items into a list value. */
int jv_to_list(jctx *c, int line, jv v, jv *out);
/* Python's len(); error for kinds without one (generators, numbers). */
int jv_len(jctx *c, int line, jv v, int64_t *n);

enum {
    JG_SELECT,
    JG_REJECT,
    JG_SELECTATTR,
    JG_REJECTATTR,
    JG_MAP_ATTR,
    JG_MAP_FILTER,
    JG_ITEMS,
    JG_REVERSE,
    JG_UNIQUE
};
struct jiter {
    int kind, line;
    jcursor src;
    int test; /* select / reject: the test id; map: the filter id (-1: truthiness) */
    jv attr;  /* selectattr / map: the attribute (a dotted path as Jinja2 allows) */
    jv dflt;  /* map(attribute=, default=) */
    int has_dflt;
    jv *args; /* the test's / filter's extra arguments */
    size_t n_args;
    jv seen; /* unique: the list of keys seen so far */
    int case_sens;
    int started;
};
int jiter_new(jctx *c, int kind, int line, jv src, jiter **out);
/* Jinja2's make_attrgetter: "a.b.0" looks up a, then b, then item 0. */
int jiter_attr(jctx *c, int line, jv item, jv attr, jv *out);
/* Jinja2's ignore_case: str.lower() of a string (ASCII only: other text is
 * refused), other values as they are. */
int jv_ignore_case(jctx *c, int line, jv v, jv *out);

/* operators (jinja_ops.c): Python's arithmetic (JT_ADD … JT_POW, with
 * 64-bit integers: an overflow is an error), comparisons (JT_EQ … JT_LTEQ),
 * "in", slicing and unary minus */
int jv_arith(jctx *c, int line, int op, jv a, jv b, jv *out);
int jv_compare(jctx *c, int line, int op, jv a, jv b, int *res);
int jv_contains(jctx *c, int line, jv container, jv item, int *res);
int jv_slice(jctx *c, int line, jv obj, jv start, jv stop, jv step, jv *out);
int jv_negate(jctx *c, int line, jv a, int neg, jv *out);

/* evaluation (jinja_eval.c), in the scope c->frame */
int jeval(jctx *c, const jnode *n, jv *out);
/* Calls a callable value with evaluated arguments. */
typedef struct {
    const char *name;
    jv v;
} jkw;
int jcall(jctx *c, int line, jv fn, const jv *args, size_t n, const jkw *kw, size_t n_kw, jv *out);
/* Jinja2's environment.getattr / getitem as the sandbox does them. */
int jgetattr(jctx *c, int line, jv obj, const char *name, size_t len, jv *out);
int jgetitem(jctx *c, int line, jv obj, jv key, jv *out);

/* filters and tests (jinja_filters.c) */
int jfilter(jctx *c, int line, int id, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
            jv *out);
int jtest(jctx *c, int line, int id, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
          int *out);
const char *jinja_filter_name(int id);

void jinja_ctx_free_re(jctx *c);

/* methods and globals (jinja_methods.c) */
/* obj.name as a Python attribute of str / dict / list / numbers: 1 and *out
 * set when it is a method this interpreter has, 0 when Python has no such
 * attribute, -1 (error) when Python has it but it is not supported. */
int jmethod_lookup(jctx *c, int line, jv obj, const char *name, jv *out);
int jmethod_call(jctx *c, int line, jmethod *m, const jv *args, size_t n, const jkw *kw,
                 size_t n_kw, jv *out);
/* The global functions: range, namespace, dict, raise_exception, strftime_now. */
int jglobals_add(jctx *c, jdict *d);
int jbuiltin_call(jctx *c, int line, int which, const jv *args, size_t n, const jkw *kw,
                  size_t n_kw, jv *out);

/* strings (jinja_str.c) */
/* Python's str.isspace() for one code point. */
int jstr_is_space(uint32_t cp);
size_t jstr_count_cp(const char *s, size_t len);
/* Byte offset of code point index i (i <= code points). */
size_t jstr_cp_offset(const char *s, size_t len, size_t i);
size_t jv_str_ncp(jv s);
/* Python's strip / lstrip / rstrip: chars NULL strips white space. which: 1 left, 2 right, 3 both.
 */
void jstr_strip(const char *s, size_t len, const char *chars, size_t nchars, int which,
                size_t *from, size_t *to);
/* 1 when s has a byte >= 0x80. */
int jstr_non_ascii(const char *s, size_t len);

#endif
