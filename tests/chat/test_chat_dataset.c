/* test_chat_dataset — chat records in training data (data/dataset.c) with the
 * model's chat template: the token stream is apply_chat_template's ids of
 * each conversation, one after the other (no EOS between: the template ends
 * its turns), and the targets that carry loss are exactly the tokens of
 * transformers' assistant mask (golden.json), or every token with loss_all.
 * Then the errors: a template the prefix rule cannot mask, a conversation
 * with no assistant message, tools in fedlora's own format, each naming the
 * file and line. */
#include "data/dataset.h"
#include "model/chat/chat.h"
#include "model/model.h"
#include "tests/check.h"
#include "util/err.h"
#include "util/fio.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *fixtures;
static char dir[64];
static json_t *golden;

static json_t *golden_case(const char *fam, const char *conv) {
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(golden, "cases"), i, c) {
        if (!strcmp(json_string_value(json_object_get(c, "family")), fam) &&
            !strcmp(json_string_value(json_object_get(c, "conversation")), conv) &&
            !strcmp(json_string_value(json_object_get(c, "mode")), "train"))
            return c;
    }
    return NULL;
}

/* A JSONL file of the named conversations (with their tools). */
static void write_jsonl(const char *path, const char *const *convs, size_t n) {
    json_t *all = json_object_get(golden, "conversations"),
           *tools = json_object_get(golden, "tools");
    FILE *f = fopen(path, "w");
    for (size_t i = 0; f && i < n; i++) {
        json_t *rec = json_pack("{s:O}", "messages", json_object_get(all, convs[i]));
        if (json_object_get(tools, convs[i]))
            json_object_set(rec, "tools", json_object_get(tools, convs[i]));
        char *line = json_dumps(rec, JSON_COMPACT);
        fprintf(f, "%s\n", line);
        free(line);
        json_decref(rec);
    }
    if (f) fclose(f);
}

static dataset *open_data(const char *path, const char *fam, const char *tok_kind, int loss_all,
                          chat_template **ct, int T) {
    char mdir[4096], tok[4096];
    snprintf(mdir, sizeof mdir, "%s/chat/models/%s", fixtures, fam);
    snprintf(tok, sizeof tok, "%s/chat/tok_%s/tokenizer.json", fixtures, tok_kind);
    *ct = NULL;
    if (fam) CHECK_OK(chat_template_find(mdir, ct));
    dataset_options o = {.path = path,
                         .tokenizer = tok,
                         .seq = T,
                         .eos_id = -1,
                         .vocab_size = 2048,
                         .chat = *ct,
                         .loss_all = loss_all};
    dataset *d = NULL;
    err_clear();
    dataset_open(&d, &o);
    return d;
}

/* The stream and targets of a dataset whose rows hold everything in one row. */
static void check_stream(const char *fam, const char *tok_kind, const char *const *convs, size_t n,
                         int loss_all) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, fam);
    write_jsonl(path, convs, n);
    /* the expected stream: each conversation's ids, and its mask shifted onto targets */
    int32_t want_tok[4096];
    uint8_t want_mask[4096];
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *c = golden_case(fam, convs[i]), *ids = json_object_get(c, "ids"),
               *mask = json_object_get(c, "mask");
        CHECK_MSG(c && mask, "%s/%s: no golden mask", fam, convs[i]);
        if (!c || !mask) return;
        for (size_t k = 0; k < json_array_size(ids) && len < 4096; k++, len++) {
            want_tok[len] = (int32_t)json_integer_value(json_array_get(ids, k));
            want_mask[len] = loss_all || json_integer_value(json_array_get(mask, k));
        }
    }
    chat_template *ct;
    int T = (int)len; /* one row: inputs [0, len), targets [1, len] */
    dataset *d = open_data(path, fam, tok_kind, loss_all, &ct, T);
    CHECK_MSG(d != NULL, "%s: %s", fam, err_msg());
    if (d) {
        CHECK(dataset_num_docs(d, DATASET_TRAIN) == n);
        CHECK(dataset_num_chats(d) == n);
        int32_t *in = malloc(sizeof(int32_t) * len), *tg = malloc(sizeof(int32_t) * len);
        CHECK_OK(dataset_row(d, DATASET_TRAIN, 0, in, tg));
        int ok = 1;
        int64_t count = 0;
        for (size_t t = 0; t < len; t++) {
            int32_t want_target =
                t + 1 < len && want_mask[t + 1] ? want_tok[t + 1] : MODEL_IGNORE_INDEX;
            ok &= in[t] == want_tok[t] && tg[t] == want_target;
            count += want_target != MODEL_IGNORE_INDEX;
        }
        CHECK_MSG(ok, "%s (loss_all %d): the row is not the golden ids and mask", fam, loss_all);
        CHECK(dataset_num_targets(d, DATASET_TRAIN) == count);
        free(in);
        free(tg);
        dataset_free(d);
    }
    chat_template_free(ct);
}

static void check_fails(const char *name, const char *jsonl, const char *fam, const char *kind,
                        const char *needle) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, name);
    fio_write_atomic(path, jsonl, strlen(jsonl), 0644);
    chat_template *ct;
    dataset *d = open_data(path, fam, kind, 0, &ct, 64);
    CHECK_MSG(!d && strstr(err_msg(), needle) && strstr(err_msg(), ".jsonl:"),
              "%s: wanted an error with '%s' and the file's line, got '%s'", name, needle,
              d ? "(opened)" : err_msg());
    dataset_free(d);
    chat_template_free(ct);
}

/* The dataset finds the model's template next to the tokenizer, and only
 * when it meets a chat record: text data trains even when the model's
 * template is one fedlora refuses, and chat data then fails naming it. */
static void test_lazy_template(void) {
    char mdir[128], src[4096], dst[256], cfg[256], data[256];
    snprintf(mdir, sizeof mdir, "%s/lazy", dir);
    snprintf(src, sizeof src, "%s/chat/tok_bytelevel/tokenizer.json", fixtures);
    snprintf(dst, sizeof dst, "%s/tokenizer.json", mdir);
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", mdir);
    char *tok;
    size_t len;
    CHECK_OK(fio_mkdirs(mdir, 0700));
    CHECK_OK(fio_read_all(src, (size_t)1 << 26, &tok, &len));
    CHECK_OK(fio_write_atomic(dst, tok, len, 0644));
    free(tok);
    const char *c = "{\"chat_template\": \"{{ bos_token }}\\n{% include 'other.jinja' %}\"}";
    CHECK_OK(fio_write_atomic(cfg, c, strlen(c), 0644));
    dataset_options o = {
        .path = data, .tokenizer = dst, .seq = 16, .eos_id = -1, .vocab_size = 2048};
    dataset *d = NULL;
    snprintf(data, sizeof data, "%s/text.jsonl", mdir);
    const char *text = "{\"text\": \"plain text trains without a template\"}\n";
    CHECK_OK(fio_write_atomic(data, text, strlen(text), 0644));
    CHECK_OK(dataset_open(&d, &o));
    CHECK(d && dataset_num_chats(d) == 0 && !dataset_chat_template(d));
    dataset_free(d);
    snprintf(data, sizeof data, "%s/chat.jsonl", mdir);
    const char *chat = "{\"text\": \"x\"}\n{\"messages\": [{\"role\": \"user\", \"content\": "
                       "\"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n";
    CHECK_OK(fio_write_atomic(data, chat, strlen(chat), 0644));
    CHECK_FAILS_WITH(dataset_open(&d, &o), "chat.jsonl:2: the model's chat template");
    CHECK(strstr(err_msg(), "tokenizer_config.json (chat_template):2: the {% include %}") != NULL);
    o.chat_format = DATASET_CHAT_FEDLORA; /* its own format still works */
    CHECK_OK(dataset_open(&d, &o));
    CHECK(d && dataset_num_chats(d) == 1 && !dataset_chat_template(d));
    dataset_free(d);
}

int main(void) {
    fixtures = getenv("FEDLORA_FIXTURES");
    if (!fixtures) fixtures = "tests/fixtures";
    snprintf(dir, sizeof dir, "/tmp/fl_chat_dataset_%d", (int)getpid());
    fio_mkdirs(dir, 0700);
    char path[4096];
    snprintf(path, sizeof path, "%s/chat/golden.json", fixtures);
    json_error_t e;
    golden = json_load_file(path, 0, &e);
    CHECK_MSG(golden != NULL, "%s: %s", path, e.text);
    if (!golden) return check_finish();

    /* {% generation %} masks, and the prefix rule (byte-level and SentencePiece-style) */
    const char *const gen[] = {"single", "multiturn", "reasoning", "whitespace_unicode"};
    check_stream("chatml_generation", "bytelevel", gen, 4, 0);
    check_stream("chatml_generation", "bytelevel", gen, 4, 1);
    const char *const pre[] = {"system_multiturn", "tool_call", "single"};
    check_stream("llama3_1_tools", "bytelevel", pre, 3, 0);
    const char *const spm[] = {"multiturn", "single"};
    check_stream("mistral_v1", "spm", spm, 2, 0);
    check_stream("phi3", "spm", spm, 2, 0); /* the template's closing EOS is not the assistant's */

    check_fails("qwen3_multiturn",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": "
                "\"assistant\", \"content\": \"b\"}, {\"role\": \"user\", \"content\": \"c\"}, "
                "{\"role\": \"assistant\", \"content\": \"d\"}]}\n",
                "qwen3", "bytelevel", "--loss-on all");
    check_fails("no_assistant", "\n{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n",
                "llama3", "bytelevel", "no \"assistant\" message");
    check_fails("gemma_system",
                "{\"messages\": [{\"role\": \"system\", \"content\": \"a\"}, {\"role\": "
                "\"assistant\", \"content\": \"b\"}]}\n",
                "gemma", "bytelevel", "System role not supported");
    check_fails("tools_fedlora",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": "
                "\"assistant\", \"content\": \"b\"}], \"tools\": []}\n",
                NULL, "bytelevel", "needs the model's chat template");
    test_lazy_template();
    json_decref(golden);
    return check_finish();
}
