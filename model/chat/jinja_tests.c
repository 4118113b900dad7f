/* jinja_tests — the tests of "x is name" (Jinja2 tests.py, 3.1), and the
 * test table for the parser. */
#include "model/chat/jinja_filters.h"

#include "util/err.h"

#include <string.h>

static int is_upper(char ch) {
    return ch >= 'A' && ch <= 'Z';
}
static int is_lower(char ch) {
    return ch >= 'a' && ch <= 'z';
}

static const jname_id tests[] = {{"boolean", T_BOOLEAN},
                                 {"callable", T_CALLABLE},
                                 {"defined", T_DEFINED},
                                 {"divisibleby", T_DIVISIBLEBY},
                                 {"eq", T_EQ},
                                 {"equalto", T_EQ},
                                 {"==", T_EQ},
                                 {"escaped", T_ESCAPED},
                                 {"even", T_EVEN},
                                 {"false", T_FALSE},
                                 {"filter", T_FILTER},
                                 {"float", T_FLOAT},
                                 {"ge", T_GE},
                                 {">=", T_GE},
                                 {"gt", T_GT},
                                 {"greaterthan", T_GT},
                                 {">", T_GT},
                                 {"in", T_IN},
                                 {"integer", T_INTEGER},
                                 {"iterable", T_ITERABLE},
                                 {"le", T_LE},
                                 {"<=", T_LE},
                                 {"lessthan", T_LT},
                                 {"lt", T_LT},
                                 {"<", T_LT},
                                 {"lower", T_LOWER},
                                 {"mapping", T_MAPPING},
                                 {"ne", T_NE},
                                 {"!=", T_NE},
                                 {"none", T_NONE},
                                 {"number", T_NUMBER},
                                 {"odd", T_ODD},
                                 {"sameas", T_SAMEAS},
                                 {"sequence", T_SEQUENCE},
                                 {"string", T_STRING},
                                 {"test", T_TEST},
                                 {"true", T_TRUE},
                                 {"undefined", T_UNDEFINED},
                                 {"upper", T_UPPER},
                                 {NULL, 0}};

int jinja_test_id(const char *name) {
    for (size_t i = 0; tests[i].name; i++)
        if (!strcmp(tests[i].name, name)) return tests[i].id;
    return -1;
}

int jinja_test_known(const char *name) {
    return jinja_test_id(name) >= 0;
}

/* ---- tests --------------------------------------------------------------------------- */

static int is_number(jv v) {
    return v.kind == JV_INT || v.kind == JV_FLOAT || v.kind == JV_BOOL;
}

int jtest(jctx *c, int line, int id, jv v, const jv *args, size_t n, const jkw *kw, size_t n_kw,
          int *out) {
    if (jstep(c, line) != 0) return -1;
    int needs = id == T_DIVISIBLEBY || id == T_EQ || id == T_NE || id == T_LT || id == T_LE ||
                id == T_GT || id == T_GE || id == T_IN || id == T_SAMEAS;
    if (n_kw) return jerr(c, line, "keyword arguments to tests are not supported");
    if (n != (size_t)needs)
        return jerr(c, line, "the test takes %d argument(s), %zu given", needs, n);
    jv a = needs ? args[0] : jv_none();
    switch (id) {
        case T_DEFINED:
            *out = v.kind != JV_UNDEF;
            return 0;
        case T_UNDEFINED:
            *out = v.kind == JV_UNDEF;
            return 0;
        case T_NONE:
            *out = v.kind == JV_NONE;
            return 0;
        case T_BOOLEAN:
            *out = v.kind == JV_BOOL;
            return 0;
        case T_TRUE:
            *out = v.kind == JV_BOOL && v.u.b;
            return 0;
        case T_FALSE:
            *out = v.kind == JV_BOOL && !v.u.b;
            return 0;
        case T_INTEGER:
            *out = v.kind == JV_INT;
            return 0;
        case T_FLOAT:
            *out = v.kind == JV_FLOAT;
            return 0;
        case T_NUMBER:
            *out = is_number(v);
            return 0;
        case T_STRING:
            *out = v.kind == JV_STR;
            return 0;
        case T_MAPPING:
            *out = v.kind == JV_DICT;
            return 0;
        case T_ESCAPED:
            *out = 0;
            return 0;
        case T_CALLABLE:
            *out = v.kind == JV_MACRO || v.kind == JV_BUILTIN || v.kind == JV_METHOD ||
                   v.kind == JV_LOOP;
            return 0;
        case T_ITERABLE:
            *out = v.kind == JV_UNDEF || v.kind == JV_STR || v.kind == JV_LIST ||
                   v.kind == JV_DICT || v.kind == JV_ITER;
            return 0;
        case T_SEQUENCE: /* len() and __getitem__ */
            *out = v.kind == JV_UNDEF || v.kind == JV_STR || v.kind == JV_DICT ||
                   (v.kind == JV_LIST && v.sub != JL_VIEW);
            return 0;
        case T_FILTER:
        case T_TEST:
            *out = v.kind == JV_STR &&
                   (id == T_FILTER ? jinja_filter_known(v.u.s->s) : jinja_test_known(v.u.s->s));
            return 0;
        case T_LOWER:
        case T_UPPER: {
            jv s;
            if (jv_stringify(c, line, v, &s) != 0 ||
                jascii_only(c, line, id == T_LOWER ? "islower" : "isupper", s) != 0)
                return -1;
            int cased = 0, ok = 1;
            for (size_t i = 0; i < s.u.s->len; i++) {
                char ch = s.u.s->s[i];
                if (is_upper(ch) || is_lower(ch)) cased = 1;
                if (id == T_LOWER ? is_upper(ch) : is_lower(ch)) ok = 0;
            }
            *out = cased && ok;
            return 0;
        }
        case T_ODD:
        case T_EVEN:
        case T_DIVISIBLEBY: {
            jv m, two = jv_int(2);
            if (jv_arith(c, line, JT_MOD, v, id == T_DIVISIBLEBY ? a : two, &m) != 0) return -1;
            int zero = m.kind == JV_FLOAT ? m.u.f == 0 : m.u.i == 0;
            *out = id == T_ODD ? !zero : zero;
            return 0;
        }
        case T_EQ:
            return jv_compare(c, line, JT_EQ, v, a, out);
        case T_NE:
            return jv_compare(c, line, JT_NE, v, a, out);
        case T_LT:
            return jv_compare(c, line, JT_LT, v, a, out);
        case T_LE:
            return jv_compare(c, line, JT_LTEQ, v, a, out);
        case T_GT:
            return jv_compare(c, line, JT_GT, v, a, out);
        case T_GE:
            return jv_compare(c, line, JT_GTEQ, v, a, out);
        case T_IN:
            return jv_contains(c, line, a, v, out);
        case T_SAMEAS: /* Python's "is": only the singletons are well defined */
            if (a.kind != JV_NONE && a.kind != JV_BOOL)
                return jerr(c, line, "sameas is supported against none, true and false only");
            *out = v.kind == a.kind && (a.kind == JV_NONE || v.u.b == a.u.b);
            return 0;
        default:
            return jerr(c, line, "internal: unknown test");
    }
}
