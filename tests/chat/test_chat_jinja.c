/* test_chat_jinja — the template interpreter against Python's Jinja2.
 *
 * semantics.json (tests/fixtures/chat/make_chat_fixtures.py) holds small
 * templates, each pinning one rule (white-space control, scoping, a filter,
 * Python's str() of a float, …), rendered by transformers' own Jinja2
 * environment: the output must be byte for byte the same, and a template
 * Jinja2 refuses or fails on must fail here too. Then the things only this
 * interpreter decides: refusals that name the construct and the line, and
 * the limits. */
#include "model/chat/jinja.h"
#include "tests/check.h"
#include "util/err.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *load_fixture(const char *name) {
    const char *dir = getenv("FEDLORA_FIXTURES");
    char path[4096];
    snprintf(path, sizeof path, "%s/chat/%s", dir ? dir : "tests/fixtures", name);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j) fprintf(stderr, "%s: %s (line %d)\n", path, e.text, e.line);
    return j;
}

/* Renders src with vars: 0 and *out (malloc'd) on success. */
static int render(const char *src, json_t *vars, char **out, size_t *len) {
    jinja_template *t;
    if (jinja_compile(src, strlen(src), "t.jinja", NULL, &t) != 0) return -1;
    jinja_output o;
    int rc = jinja_render(t, vars, &o);
    jinja_template_free(t);
    if (rc != 0) return -1;
    *out = o.text;
    *len = o.len;
    free(o.spans);
    return 0;
}

static void test_semantics(void) {
    json_t *fx = load_fixture("semantics.json");
    CHECK(fx != NULL);
    if (!fx) return;
    json_t *vars = json_object_get(fx, "variables"), *cases = json_object_get(fx, "cases");
    size_t i;
    json_t *c;
    int checked = 0;
    json_array_foreach(cases, i, c) {
        const char *src = json_string_value(json_object_get(c, "template"));
        json_t *want = json_object_get(c, "output");
        char *got = NULL;
        size_t len = 0;
        err_clear();
        int rc = render(src, vars, &got, &len);
        if (json_is_true(json_object_get(c, "fedlora_refuses"))) {
            CHECK_MSG(rc != 0 && strstr(err_msg(), "not supported"),
                      "case %zu: %s\n  must be refused ('not supported'), got %s", i, src,
                      rc == 0 ? got : err_msg());
        } else if (want) {
            const char *w = json_string_value(want);
            size_t wn = json_string_length(want);
            CHECK_MSG(rc == 0 && len == wn && !memcmp(got, w, wn),
                      "case %zu: %s\n  want: '%s'\n  got:  '%s' %s", i, src, w,
                      rc == 0 ? got : "(error)", rc == 0 ? "" : err_msg());
        } else {
            CHECK_MSG(rc != 0, "case %zu: %s\n  Jinja2 raised %s (%s), but it rendered '%s'", i,
                      src, json_string_value(json_object_get(c, "error")),
                      json_string_value(json_object_get(c, "message")), got);
        }
        free(got);
        checked++;
    }
    printf("semantics: %d cases\n", checked);
    json_decref(fx);
}

/* Compiles (and renders, with {"n": 3}) src with the limits lim; the error
 * must contain needle. */
static void check_refused(const char *src, const jinja_limits *lim, const char *needle) {
    json_t *vars = json_pack("{s:i}", "n", 3);
    jinja_template *t = NULL;
    jinja_output o;
    err_clear();
    int rc = jinja_compile(src, strlen(src), "t.jinja", lim, &t);
    if (rc == 0) rc = jinja_render(t, vars, &o);
    if (rc == 0) jinja_output_free(&o);
    CHECK_MSG(rc != 0 && strstr(err_msg(), needle), "%s\n  wanted an error with '%s', got '%s'",
              src, needle, rc ? err_msg() : "(rendered)");
    jinja_template_free(t);
    json_decref(vars);
}

static void test_refusals(void) {
    /* what is not implemented is refused with its name and line, at compile time when it can be */
    check_refused("a\nb\n{% include 'x.jinja' %}", NULL, "t.jinja:3: the {% include %} statement");
    check_refused("{{ x }}\n{{ x | wordwrap }}", NULL, "t.jinja:2: the filter 'wordwrap' is not");
    check_refused("\n{{ x | frobnicate }}", NULL, "t.jinja:2: no filter named 'frobnicate'");
    check_refused("{{ x is escaped_html }}", NULL, "no test named 'escaped_html'");
    check_refused("{% for x in y recursive %}{% endfor %}", NULL, "recursive for loops");
    check_refused("{% generation %}{% generation %}{% endgeneration %}{% endgeneration %}", NULL,
                  "nested {% generation %}");
    check_refused("{% macro m() %}{% generation %}x{% endgeneration %}{% endmacro %}{{ m() }}",
                  NULL, "inside a macro");
    check_refused("{{ 'x' | safe ~ 'y' }}", NULL, "supported only as the last filter");
    check_refused("\n\n{{ 'a'.swapcase() }}", NULL, "t.jinja:3: the method str.swapcase");
    check_refused("{{ joiner() }}", NULL, "'joiner' is not supported");
    check_refused("{{ '\\N{BULLET}' }}", NULL, "\\N{...}");
    check_refused("{{ \xc3\xa9t\xc3\xa9 }}", NULL, "non-ASCII");
    check_refused("{{ 'a' }}\xff", NULL, "not valid UTF-8");
    check_refused("{% macro m() %}{{ varargs }}{% endmacro %}{{ m() }}", NULL,
                  "'varargs' is not supported");
    check_refused("{{ 4611686018427387904 * 4 }}", NULL, "beyond 64 bits");
    check_refused("{{ raise_exception('Roles must alternate') }}", NULL,
                  "raised an error: Roles must alternate");
}

static void test_limits(void) {
    jinja_limits l;
    jinja_limits_default(&l);
    l.max_template = 16;
    check_refused("{{ 'this template is too long' }}", &l, "more than the limit of 16");
    jinja_limits_default(&l);
    l.max_iter = 1000;
    check_refused("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", &l,
                  "iterated more than 1000 times");
    jinja_limits_default(&l);
    l.max_output = 1000;
    check_refused("{% for i in range(200) %}0123456789{% endfor %}", &l, "output exceeds 1000");
    check_refused("{{ 'x' * 5000 }}", &l, "exceeds the output limit");
    jinja_limits_default(&l);
    check_refused("{% macro f(k) %}{{ f(k) }}{% endmacro %}{{ f(1) }}", &l,
                  "macro calls nested more than 64");
    l.max_steps = 5000;
    check_refused("{% for i in range(1000) %}{{ i + i + i }}{% endfor %}", &l,
                  "more than 5000 steps");
    jinja_limits_default(&l);
    l.max_memory = (size_t)1 << 20;
    check_refused(
        "{% set ns = namespace(s='x') %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s "
        "%}{% endfor %}",
        &l, "memory");
    char deep[1200];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof deep - k, "{{ ");
    for (int i = 0; i < 300; i++) deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 300; i++) deep[k++] = ')';
    snprintf(deep + k, sizeof deep - k, " }}");
    check_refused(deep, NULL, "nested too deeply");
}

static void test_spans(void) {
    /* generation spans: byte offsets of what the blocks wrote, in output order */
    const char *src = "{% for m in messages %}<{{ m }}>{% generation %}[{{ m | upper }}]"
                      "{% endgeneration %}{% endfor %}";
    json_t *vars = json_pack("{s:[s,s]}", "messages", "ab", "\xc3\xa9t\xc3\xa9");
    jinja_template *t;
    jinja_output o;
    CHECK_OK(jinja_compile(src, strlen(src), "t", NULL, &t));
    CHECK(jinja_has_generation(t));
    CHECK_FAILS_WITH(jinja_render(t, vars, &o), "non-ASCII"); /* upper of "été" is refused */
    json_decref(vars);
    vars = json_pack("{s:[s,s]}", "messages", "ab", "c");
    CHECK_OK(jinja_render(t, vars, &o));
    CHECK(!strcmp(o.text, "<ab>[AB]<c>[C]"));
    CHECK(o.n_spans == 2 && o.spans[0].start == 4 && o.spans[0].end == 8 &&
          o.spans[1].start == 11 && o.spans[1].end == 14);
    jinja_output_free(&o);
    jinja_template_free(t);
    json_decref(vars);
    json_t *notobj = json_array();
    CHECK_OK(jinja_compile("x", 1, "t", NULL, &t));
    CHECK_FAILS_WITH(jinja_render(t, notobj, &o), "must be a JSON object");
    jinja_template_free(t);
    json_decref(notobj);
}

int main(void) {
    test_semantics();
    test_refusals();
    test_limits();
    test_spans();
    return check_finish();
}
