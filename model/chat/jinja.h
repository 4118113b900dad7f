/* jinja — a Jinja2 interpreter for the subset that chat templates use, with
 * Jinja2's own semantics for everything it accepts (docs/chat.md).
 *
 * The environment is the one transformers' apply_chat_template builds
 * (utils/chat_template_utils.py, _compile_jinja_template):
 * ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with
 * the loopcontrols extension ({% break %}, {% continue %}) and transformers'
 * {% generation %} tag, its tojson filter (json.dumps with ensure_ascii=False,
 * indent, separators, sort_keys), and the globals raise_exception,
 * strftime_now, namespace, dict and range.
 *
 * What the interpreter does not implement is refused with an error naming
 * the construct and its line ("template.jinja:12: the filter 'wordwrap' is
 * not supported"): a template either renders exactly as Jinja2 renders it,
 * or not at all. Statements, filters and tests are checked when the template
 * is compiled; methods, globals and value kinds (printing a generator, upper
 * of non-ASCII text, ...) when the render reaches them.
 *
 * Every render is bounded (jinja_limits): template size, output size, loop
 * iterations, macro recursion, expression nesting, memory and evaluation
 * steps, so an untrusted template cannot hang or exhaust the process. */
#ifndef FL_MODEL_CHAT_JINJA_H
#define FL_MODEL_CHAT_JINJA_H

#include <jansson.h>
#include <stddef.h>

typedef struct {
    size_t max_template; /* template bytes (default 1 MiB) */
    size_t max_output;   /* bytes one render may write (default 64 MiB) */
    size_t max_iter;     /* loop iterations and items pulled from iterables, per render (10^7) */
    size_t max_depth;    /* macro calls and expression nesting (64 calls, 200 levels) */
    size_t max_memory;   /* bytes of values one render may allocate (512 MiB) */
    size_t max_steps;    /* expression evaluations per render (10^8) */
} jinja_limits;

/* The defaults above. */
void jinja_limits_default(jinja_limits *l);

typedef struct jinja_template jinja_template;

/* Compiles src (UTF-8). name appears in error messages. lim may be NULL. */
int jinja_compile(const char *src, size_t len, const char *name, const jinja_limits *lim,
                  jinja_template **out);
void jinja_template_free(jinja_template *t);
/* 1 when the template has a {% generation %} block. */
int jinja_has_generation(const jinja_template *t);
/* The template's name, as given to jinja_compile. */
const char *jinja_name(const jinja_template *t);

/* [start, end) byte range of the output that a {% generation %} block wrote. */
typedef struct {
    size_t start, end;
} jinja_span;

typedef struct {
    char *text; /* malloc'd, NUL-terminated */
    size_t len;
    jinja_span *spans; /* malloc'd, in output order */
    size_t n_spans;
} jinja_output;

/* Renders with the variables of the JSON object vars (a name with a JSON
 * null value is Python's None). On success *out holds the text and the
 * generation spans; free with jinja_output_free. On failure nothing is left
 * in *out and err_msg() says what failed and on which line (a
 * raise_exception call gives its message). */
int jinja_render(const jinja_template *t, json_t *vars, jinja_output *out);
void jinja_output_free(jinja_output *o);

/* Python's str.strip() (which 3), lstrip() (1), rstrip() (2): [*from, *to)
 * is s without that white space (str.isspace()). */
void jinja_py_strip(const char *s, size_t len, int which, size_t *from, size_t *to);

#endif
