/* test_chat_golden — chat templates of many model families rendered and
 * tokenized as transformers' apply_chat_template does.
 *
 * golden.json (tests/fixtures/chat/make_chat_fixtures.py) holds, for every
 * template in tests/fixtures/chat/templates/ (Llama 2/3/3.1, Mistral v1 and
 * v3 with tools, the named-template form, Qwen2.5 and Qwen3, DeepSeek-R1,
 * Gemma 1/3, Phi-3, ChatML, Hermes tools, two with {% generation %}) and
 * every conversation (system prompts, several turns, tool calls, reasoning,
 * prefills, content parts, Unicode and white space), what transformers
 * gives: the text, the ids with the committed tokenizer, the assistant mask
 * (from {% generation %} or from the prefix rule), or that it raised. Every
 * string and id must be the same, byte for byte; the templates come from
 * the model directories the way transformers finds them (tokenizer_config
 * string or list, chat_template.jinja). */
#include "model/chat/chat.h"
#include "tests/check.h"
#include "util/err.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fixtures;

static int ids_equal(const tokenizer_ids *ids, json_t *want) {
    if (ids->n != json_array_size(want)) return 0;
    for (size_t i = 0; i < ids->n; i++)
        if (ids->ids[i] != json_integer_value(json_array_get(want, i))) return 0;
    return 1;
}

static int mask_equal(const uint8_t *mask, size_t n, json_t *want) {
    if (n != json_array_size(want)) return 0;
    for (size_t i = 0; i < n; i++)
        if (mask[i] != json_integer_value(json_array_get(want, i))) return 0;
    return 1;
}

static void check_case(size_t idx, json_t *c, json_t *root) {
    const char *fam = json_string_value(json_object_get(c, "family"));
    const char *conv = json_string_value(json_object_get(c, "conversation"));
    const char *mode = json_string_value(json_object_get(c, "mode"));
    json_t *famspec = json_object_get(json_object_get(root, "families"), fam);
    char dir[4096], tok_path[4096];
    snprintf(dir, sizeof dir, "%s/chat/models/%s", fixtures, fam);
    snprintf(tok_path, sizeof tok_path, "%s/chat/tok_%s/tokenizer.json", fixtures,
             json_string_value(json_object_get(famspec, "tokenizer")));
    chat_template *ct = NULL;
    tokenizer *tok = NULL;
    CHECK_OK(chat_template_find(dir, &ct));
    CHECK_OK(tokenizer_load(tok_path, &tok));
    CHECK_MSG(ct != NULL, "%s: no template found", fam);
    if (!ct || !tok) goto done;
    json_t *kwargs = json_object_get(c, "kwargs");
    chat_request rq = {.messages = json_object_get(json_object_get(root, "conversations"), conv),
                       .tools = json_object_get(json_object_get(root, "tools"), conv),
                       .vars = json_object_size(kwargs) ? kwargs : NULL,
                       .add_generation_prompt = !strcmp(mode, "prompt"),
                       .continue_final_message = !strcmp(mode, "continue")};
    char *text = NULL;
    size_t len = 0;
    err_clear();
    int rc = chat_render(ct, &rq, &text, &len);
    json_t *want = json_object_get(c, "text");
    if (!want) {
        CHECK_MSG(rc != 0, "case %zu %s/%s/%s: transformers raised %s (%s) but it rendered:\n%s",
                  idx, fam, conv, mode, json_string_value(json_object_get(c, "error")),
                  json_string_value(json_object_get(c, "message")), text);
        free(text);
        goto done;
    }
    CHECK_MSG(rc == 0 && len == json_string_length(want) &&
                  !memcmp(text, json_string_value(want), len),
              "case %zu %s/%s/%s:\n  want: %s\n  got:  %s", idx, fam, conv, mode,
              json_string_value(want), rc == 0 ? text : err_msg());
    tokenizer_ids ids = {0};
    if (rc == 0) {
        CHECK_OK(tokenizer_encode(tok, text, len, 0, &ids));
        CHECK_MSG(ids_equal(&ids, json_object_get(c, "ids")), "case %zu %s/%s/%s: ids differ", idx,
                  fam, conv, mode);
    }
    free(text);
    if (!strcmp(mode, "train")) {
        json_t *mask_want = json_object_get(c, "mask");
        uint8_t *mask = NULL;
        err_clear();
        int erc = chat_encode(ct, tok, &rq, CHAT_LOSS_ASSISTANT, &ids, &mask);
        if (mask_want) {
            CHECK_MSG(erc == 0 && ids_equal(&ids, json_object_get(c, "ids")) &&
                          mask_equal(mask, ids.n, mask_want),
                      "case %zu %s/%s: the assistant mask (%s) differs%s%s", idx, fam, conv,
                      json_string_value(json_object_get(c, "mask_method")), erc ? ": " : "",
                      erc ? err_msg() : "");
        } else if (json_object_get(c, "mask_error")) {
            CHECK_MSG(erc != 0 && strstr(err_msg(), "--loss-on all"),
                      "case %zu %s/%s: the prefix rule must refuse (%s), got %s", idx, fam, conv,
                      json_string_value(json_object_get(c, "mask_error")),
                      erc ? err_msg() : "a mask");
        }
        free(mask);
        /* every token, when asked */
        CHECK_OK(chat_encode(ct, tok, &rq, CHAT_LOSS_ALL, &ids, &mask));
        int all = mask != NULL && ids_equal(&ids, json_object_get(c, "ids"));
        for (size_t i = 0; all && i < ids.n; i++) all = mask[i] == 1;
        CHECK_MSG(all, "case %zu %s/%s: --loss-on all must give every token", idx, fam, conv);
        free(mask);
    }
    tokenizer_ids_free(&ids);
done:
    tokenizer_free(tok);
    chat_template_free(ct);
}

int main(void) {
    fixtures = getenv("FEDLORA_FIXTURES");
    if (!fixtures) fixtures = "tests/fixtures";
    char path[4096];
    snprintf(path, sizeof path, "%s/chat/golden.json", fixtures);
    json_error_t e;
    json_t *root = json_load_file(path, 0, &e);
    CHECK_MSG(root != NULL, "%s: %s", path, e.text);
    if (!root) return check_finish();
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "cases"), i, c) check_case(i, c, root);
    printf("golden: %zu renders\n", json_array_size(json_object_get(root, "cases")));
    json_decref(root);
    return check_finish();
}
