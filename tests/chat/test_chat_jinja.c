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

int main(void) {
    test_semantics();
    return check_finish();
}
