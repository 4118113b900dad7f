/* test_tokenizer_offsets — tokenizer_encode_offsets against Hugging Face's
 * offsets (offset_mapping), recorded in bytes by
 * tests/fixtures/chat/make_chat_fixtures.py for the tokenizer fixtures'
 * base files (byte-level with and without NFC, SentencePiece-style with
 * byte fallback, white-space runs), the chat fixtures' tokenizers and three
 * variants (trim_offsets, added tokens that strip white space or are
 * normalized). The ids must be tokenizer_encode's, and every offset pair
 * Hugging Face's. */
#include "model/tokenizer/tokenizer.h"
#include "tests/check.h"
#include "util/err.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_tokenizer(const char *name, json_t *spec, const char *fixtures) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", fixtures,
             json_string_value(json_object_get(spec, "file")));
    tokenizer *t;
    CHECK_OK(tokenizer_load(path, &t));
    if (!t) return;
    size_t i;
    json_t *c;
    int bad = 0;
    json_array_foreach(json_object_get(spec, "cases"), i, c) {
        json_t *text = json_object_get(c, "text"), *ids = json_object_get(c, "ids"),
               *offs = json_object_get(c, "offsets");
        tokenizer_ids got = {0}, plain = {0};
        tokenizer_offsets o = {0};
        CHECK_OK(tokenizer_encode_offsets(t, json_string_value(text), json_string_length(text), 0,
                                          &got, &o));
        CHECK_OK(tokenizer_encode(t, json_string_value(text), json_string_length(text), 0, &plain));
        int same = got.n == json_array_size(ids) && o.n == got.n && plain.n == got.n;
        for (size_t k = 0; same && k < got.n; k++) {
            json_t *pair = json_array_get(offs, k);
            same = got.ids[k] == json_integer_value(json_array_get(ids, k)) &&
                   plain.ids[k] == got.ids[k] &&
                   o.r[k][0] == json_integer_value(json_array_get(pair, 0)) &&
                   o.r[k][1] == json_integer_value(json_array_get(pair, 1));
            if (!same && bad < 5)
                fprintf(stderr,
                        "%s, text %zu, token %zu (id %u): offsets [%u, %u), want [%lld, %lld)\n",
                        name, i, k, got.ids[k], o.r[k][0], o.r[k][1],
                        (long long)json_integer_value(json_array_get(pair, 0)),
                        (long long)json_integer_value(json_array_get(pair, 1)));
        }
        bad += !same;
        CHECK_MSG(same, "%s: text %zu (%zu ids, %zu offsets, want %zu)", name, i, got.n, o.n,
                  json_array_size(ids));
        tokenizer_ids_free(&got);
        tokenizer_ids_free(&plain);
        tokenizer_offsets_free(&o);
    }
    tokenizer_free(t);
}

int main(void) {
    const char *fixtures = getenv("FEDLORA_FIXTURES");
    if (!fixtures) fixtures = "tests/fixtures";
    char path[4096];
    snprintf(path, sizeof path, "%s/chat/offsets.json", fixtures);
    json_error_t e;
    json_t *all = json_load_file(path, JSON_ALLOW_NUL, &e);
    CHECK_MSG(all != NULL, "%s: %s", path, e.text);
    const char *name;
    json_t *spec;
    json_object_foreach(all, name, spec) check_tokenizer(name, spec, fixtures);
    json_decref(all);

    /* the template's BOS covers [0, 0); a failed encode leaves both lists as they were */
    snprintf(path, sizeof path, "%s/tokenizer/llama3.json", fixtures);
    tokenizer *t;
    CHECK_OK(tokenizer_load(path, &t));
    tokenizer_ids ids = {0};
    tokenizer_offsets o = {0};
    CHECK_OK(tokenizer_encode_offsets(t, "Hi there", 8, 1, &ids, &o));
    CHECK(ids.n >= 2 && o.n == ids.n && o.r[0][0] == 0 && o.r[0][1] == 0 && o.r[ids.n - 1][1] == 8);
    size_t n = ids.n;
    CHECK_FAILS_WITH(tokenizer_encode_offsets(t, "bad \xff", 5, 1, &ids, &o), "UTF-8");
    CHECK(ids.n == n && o.n == n);
    tokenizer_ids_free(&ids);
    tokenizer_offsets_free(&o);
    tokenizer_free(t);
    return check_finish();
}
