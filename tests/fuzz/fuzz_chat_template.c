/* fuzz_chat_template — chat templates from untrusted bytes (model/chat/):
 * the Jinja2 lexer, parser and interpreter, then the chat layer's rendering,
 * tokenization with offsets and assistant mask.
 *
 * Input: the template, then optionally a NUL byte and a JSON object of
 * extra template variables. Compiling must succeed or fail with a message;
 * a compiled template renders a fixed set of conversations (or fails with a
 * message) within small limits, never crashing, leaking or hanging, with
 * generation spans inside the output in order. Then the template, as a
 * model's chat_template.jinja, gives each conversation's ids and mask: one
 * flag per id, every id below the tokenizer's vocabulary, and loss on every
 * token with CHAT_LOSS_ALL. */
#include "model/chat/chat.h"
#include "model/chat/jinja.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef FL_FIXTURES_DIR
#define FL_FIXTURES_DIR "tests/fixtures"
#endif

static tokenizer *tok;
static json_t *convs;
static char dir[64], jinja_path[128];

static void setup(void) {
    const char *fx = getenv("FEDLORA_FIXTURES");
    if (!fx) fx = FL_FIXTURES_DIR;
    char path[1024];
    snprintf(path, sizeof path, "%s/chat/tok_bytelevel/tokenizer.json", fx);
    if (tokenizer_load(path, &tok) != 0) {
        fprintf(stderr, "fuzz_chat_template: %s (set FEDLORA_FIXTURES)\n", err_msg());
        abort();
    }
    convs = json_loads(
        "[[{\"role\":\"user\",\"content\":\"Hi \\u00e9\"},{\"role\":\"assistant\",\"content\":"
        "\" Hello\"}],"
        "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"a\"},"
        "{\"role\":\"assistant\",\"content\":\"b\",\"tool_calls\":[{\"function\":{\"name\":\"f\","
        "\"arguments\":{\"x\":[1,2.5,null,true]}}}]},{\"role\":\"tool\",\"content\":\"r\"},"
        "{\"role\":\"assistant\",\"reasoning_content\":\"t\",\"content\":[{\"type\":\"text\","
        "\"text\":\"c\"}]}]]",
        0, NULL);
    snprintf(dir, sizeof dir, "/tmp/fuzz_chat_%d", (int)getpid());
    snprintf(jinja_path, sizeof jinja_path, "%s/chat_template.jinja", dir);
    if (!convs || fio_mkdirs(dir, 0700) != 0) abort();
}

static void render_all(const jinja_template *t, json_t *extra) {
    size_t i;
    json_t *msgs;
    json_array_foreach(convs, i, msgs) {
        json_t *vars = json_pack("{s:O,s:b,s:s,s:n}", "messages", msgs, "add_generation_prompt",
                                 (int)(i & 1), "bos_token", "<s>", "tools");
        if (extra) json_object_update(vars, extra);
        jinja_output o;
        if (jinja_render(t, vars, &o) == 0) {
            size_t prev = 0;
            for (size_t k = 0; k < o.n_spans; k++) {
                if (o.spans[k].start < prev || o.spans[k].end < o.spans[k].start ||
                    o.spans[k].end > o.len)
                    abort();
                prev = o.spans[k].end;
            }
            if (strlen(o.text) > o.len) abort();
            jinja_output_free(&o);
        }
        json_decref(vars);
    }
}

static void encode_all(void) {
    chat_template *ct;
    if (chat_template_find(dir, &ct) != 0 || !ct) return;
    size_t i;
    json_t *msgs;
    json_array_foreach(convs, i, msgs) {
        chat_request rq = {.messages = msgs};
        for (int loss = 0; loss < 2; loss++) {
            tokenizer_ids ids = {0};
            uint8_t *mask;
            if (chat_encode(ct, tok, &rq, loss ? CHAT_LOSS_ALL : CHAT_LOSS_ASSISTANT, &ids,
                            &mask) == 0) {
                for (size_t k = 0; k < ids.n; k++)
                    if (ids.ids[k] >= tokenizer_vocab_size(tok) || mask[k] > 1 ||
                        (loss && !mask[k]))
                        abort();
                free(mask);
            }
            tokenizer_ids_free(&ids);
        }
    }
    chat_template_free(ct);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) setup();
    if (size > (1u << 16)) return 0;
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    json_t *extra = nul ? json_loadb((const char *)nul + 1, size - tlen - 1, 0, NULL) : NULL;
    if (extra && !json_is_object(extra)) {
        json_decref(extra);
        extra = NULL;
    }
    jinja_limits lim;
    jinja_limits_default(&lim);
    lim.max_output = 1 << 20;
    lim.max_iter = 100000;
    lim.max_steps = 1000000;
    lim.max_memory = (size_t)64 << 20;
    jinja_template *t;
    if (jinja_compile((const char *)data, tlen, "fuzz.jinja", &lim, &t) == 0) {
        render_all(t, extra);
        jinja_template_free(t);
        /* through the chat layer, as a model directory's template (default limits, so only
         * templates that stay small under the limits above go this far) */
        FILE *f = fopen(jinja_path, "wb");
        if (!f || fwrite(data, 1, tlen, f) != tlen || fclose(f) != 0) abort();
        encode_all();
    } else if (!err_msg()[0]) {
        abort(); /* a failure must say why */
    }
    json_decref(extra);
    return 0;
}
