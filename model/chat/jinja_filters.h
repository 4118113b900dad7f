/* jinja_filters — filter and test numbers, and the helpers the filter and
 * method files share (internal to the interpreter). */
#ifndef FL_MODEL_CHAT_JINJA_FILTERS_H
#define FL_MODEL_CHAT_JINJA_FILTERS_H

#include "model/chat/jinja_internal.h"

enum {
    F_ABS,
    F_ATTR,
    F_CAPITALIZE,
    F_DEFAULT,
    F_DICTSORT,
    F_FIRST,
    F_FLOAT,
    F_INDENT,
    F_INT,
    F_ITEMS,
    F_JOIN,
    F_LAST,
    F_LENGTH,
    F_LIST,
    F_LOWER,
    F_MAP,
    F_MAX,
    F_MIN,
    F_REJECT,
    F_REJECTATTR,
    F_REPLACE,
    F_REVERSE,
    F_ROUND,
    F_SAFE,
    F_SELECT,
    F_SELECTATTR,
    F_SORT,
    F_STRING,
    F_SUM,
    F_TITLE,
    F_TOJSON,
    F_TRIM,
    F_UNIQUE,
    F_UPPER
};

enum {
    T_BOOLEAN,
    T_CALLABLE,
    T_DEFINED,
    T_DIVISIBLEBY,
    T_EQ,
    T_ESCAPED,
    T_EVEN,
    T_FALSE,
    T_FILTER,
    T_FLOAT,
    T_GE,
    T_GT,
    T_IN,
    T_INTEGER,
    T_ITERABLE,
    T_LE,
    T_LOWER,
    T_LT,
    T_MAPPING,
    T_NE,
    T_NONE,
    T_NUMBER,
    T_ODD,
    T_SAMEAS,
    T_SEQUENCE,
    T_STRING,
    T_TEST,
    T_TRUE,
    T_UNDEFINED,
    T_UPPER
};

/* Binds positional and keyword arguments to the np parameters of fname:
 * out[i] and given[i] for each. Unknown or repeated keywords are errors. */
int jbind(jctx *c, int line, const char *fname, const char *const *params, size_t np,
          const jv *args, size_t n, const jkw *kw, size_t n_kw, jv *out, int *given);

/* Declares p[] and g[] bound to the listed parameter names (in a filter or
 * method with the arguments c, line, args, n, kw, n_kw). */
#define BIND(name, ...)                                                                            \
    static const char *const params_[] = {__VA_ARGS__};                                            \
    enum { NP_ = sizeof params_ / sizeof params_[0] };                                             \
    jv p[NP_];                                                                                     \
    int g[NP_];                                                                                    \
    if (jbind(c, line, name, params_, NP_, args, n, kw, n_kw, p, g) != 0) return -1

/* An error ("… is not supported") when the string s has non-ASCII text. */
int jascii_only(jctx *c, int line, const char *what, jv s);
/* Case mapping of str(v), ASCII only: 'U' upper, 'L' lower, 'C' capitalize,
 * 'T' Jinja2's title filter, 't' Python's str.title(). */
int jcase(jctx *c, int line, jv v, int mode, jv *out);
/* Python's str.replace (count < 0: all). */
int jreplace(jctx *c, int line, jv s, jv old, jv new_, int64_t count, jv *out);
/* Python's str.splitlines(keepends). */
int jsplitlines(jctx *c, int line, jv s, int keepends, jv *out);
/* loop.cycle / loop.changed (jinja_exec.c). */
int jloop_method(jctx *c, int line, jmethod *m, const jv *args, size_t n, jv *out);

#endif
