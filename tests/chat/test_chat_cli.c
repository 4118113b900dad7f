/* test_chat_cli — chat templates through the real fedlora binary.
 *
 * tests/fixtures/chat/make_chat_peft.py made a tiny random Llama with the
 * chat fixtures' tokenizer and template, a PEFT adapter for it, chat data,
 * and the loss PEFT computes on apply_chat_template's ids with the
 * assistant mask (or every token, or a template given with --chat-template
 * and masked by the prefix rule): fedlora eval with the adapter and without
 * it, and the first step of fedlora train (whose new adapter adds nothing
 * yet), must give those losses over the same number of targets. Then
 * fedlora generate --chat: the prompt is the template's render with the
 * generation prompt, and generation stops at generation_config.json's
 * end-of-turn ids. */
#include "model/chat/chat.h"
#include "tests/support/ts_model.h"

#include <jansson.h>
#include <math.h>

static char fx[512]; /* tests/fixtures/chat */

/* "loss X ... (N tokens predicted" from fedlora eval's stdout */
static int eval_loss(const char *tag, double *loss, long long *tokens) {
    char *out = ts_output(tag, "out");
    const char *line = out ? strstr(out, "\nloss ") : NULL; /* after the "chat: ..." line */
    int ok = line && sscanf(line + 1, "loss %lf", loss) == 1 && strstr(line, "(") &&
             sscanf(strstr(line, "("), "(%lld tokens predicted", tokens) == 1;
    free(out);
    return ok;
}

static void run_case(json_t *c, const char *base, const char *adapter) {
    const char *name = json_string_value(json_object_get(c, "name"));
    char data[TS_PATH], tpl[TS_PATH + 600], tag[128];
    snprintf(data, sizeof data, "%s/peft/%s", fx, json_string_value(json_object_get(c, "data")));
    json_t *opts = json_object_get(c, "options");
    const char *extra[4] = {NULL, NULL, NULL, NULL};
    for (size_t i = 0; i < json_array_size(opts) && i < 2; i++)
        extra[i] = json_string_value(json_array_get(opts, i));
    if (extra[0] && !strcmp(extra[0], "--chat-template")) { /* relative to the fixtures */
        snprintf(tpl, sizeof tpl, "%s/%s", fx, extra[1]);
        extra[1] = tpl;
    }
    double want = json_real_value(json_object_get(c, "loss")),
           want_base = json_real_value(json_object_get(c, "base_loss")), loss;
    long long targets = json_integer_value(json_object_get(c, "targets")), n;
    for (int with_adapter = 1; with_adapter >= 0; with_adapter--) {
        snprintf(tag, sizeof tag, "eval_%s_%d", name, with_adapter);
        /* fp32: PEFT's numbers are fp32 ones (bf16 would differ by ~1e-4) */
        const char *args[24] = {ts_bin(), "eval", "--model", base, "--data",      data,
                                "--seq",  "1024", "--batch", "1",  "--precision", "fp32"};
        int na = 12;
        if (extra[0]) args[na++] = extra[0], args[na++] = extra[1];
        if (with_adapter) args[na++] = "--adapter", args[na++] = adapter;
        args[na] = NULL;
        int rc = ts_run_v(tag, args);
        CHECK_RUN_OK(rc, tag);
        double w = with_adapter ? want : want_base;
        CHECK_MSG(rc == 0 && eval_loss(tag, &loss, &n) && fabs(loss - w) < 1e-5 && n == targets,
                  "%s: fedlora eval's loss %.7f over %lld targets, PEFT's %.7f over %lld", tag,
                  loss, n, w, targets);
        if (rc == 0) printf("%-22s loss %.6f  PEFT %.6f  (%lld targets)\n", tag, loss, w, n);
    }
    /* the first training step's loss is the base model's: a new adapter's B
     * is 0, and the loss is taken before the step's update (any --lr; 0 is
     * refused since it trains nothing) */
    char out[TS_PATH], metrics[TS_PATH];
    snprintf(tag, sizeof tag, "train_%s", name);
    ts_path(out, tag);
    int rc = ts_run(tag, "train", "--model", base, "--data", data, "--out", out, "--steps", "1",
                    "--lr", "1e-3", "--batch", "1", "--seq", "1024", "--eval-fraction", "0",
                    "--save-every", "0", "--precision", "fp32", extra[0], extra[1], NULL);
    CHECK_RUN_OK(rc, tag);
    char *m = ts_read(ts_in(metrics, out, "metrics.jsonl"), NULL);
    json_t *first = m ? json_loads(m, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
    double l = json_real_value(json_object_get(first, "loss"));
    CHECK_MSG(first && fabs(l - want_base) < 1e-5, "%s: the first step's loss %.7f, PEFT's %.7f",
              tag, l, want_base);
    char *log = ts_output(tag, "out");
    CHECK_MSG(log && strstr(log, "chat: 2 conversations in the model's chat template"),
              "%s: the log does not say how chat records were rendered: %s", tag, log);
    json_decref(first);
    free(m);
    free(log);
}

/* The prompt generate --chat must build: the render with the generation prompt. */
static size_t prompt_tokens(const char *model_dir, const char *user) {
    chat_template *ct;
    tokenizer *tok;
    char path[TS_PATH];
    if (chat_template_find(model_dir, &ct) != 0 || !ct ||
        tokenizer_load(ts_in(path, model_dir, "tokenizer.json"), &tok) != 0)
        return 0;
    json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", user);
    chat_request rq = {.messages = msgs, .add_generation_prompt = 1};
    char *text;
    size_t len, n = 0;
    tokenizer_ids ids = {0};
    if (chat_render(ct, &rq, &text, &len) == 0) {
        if (tokenizer_encode(tok, text, len, 0, &ids) == 0) n = ids.n;
        free(text);
    }
    tokenizer_ids_free(&ids);
    json_decref(msgs);
    tokenizer_free(tok);
    chat_template_free(ct);
    return n;
}

static void test_generate(const char *base) {
    char zero[TS_PATH], want[64];
    snprintf(zero, sizeof zero, "%s/peft/zero_head", fx);
    snprintf(want, sizeof want, "prompt %zu tokens", prompt_tokens(base, "Hello there"));
    int rc = ts_run("gen_chat", "generate", "--model", base, "--chat", "--prompt", "Hello there",
                    "--max-tokens", "5", NULL);
    CHECK_RUN_OK(rc, "gen_chat");
    char *err = ts_output("gen_chat", "err");
    CHECK_MSG(err && strstr(err, want) && strstr(err, "5 tokens in"), "gen_chat: '%s', want %s",
              err, want);
    free(err);
    /* all logits 0: greedy picks id 0, which generation_config.json lists as an end */
    rc = ts_run("gen_stop", "generate", "--model", zero, "--chat", "--prompt", "Hello there",
                "--max-tokens", "5", NULL);
    CHECK_RUN_OK(rc, "gen_stop");
    err = ts_output("gen_stop", "err");
    CHECK_MSG(err && strstr(err, "0 tokens in"), "gen_stop: '%s'", err);
    free(err);
    /* a prefill (last message from the assistant) is continued; a bad file is an error */
    char msgs[TS_PATH];
    ts_path(msgs, "msgs.json");
    CHECK_OK(ts_write(msgs, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": "
                            "\"assistant\", \"content\": \"Well,\"}]}"));
    rc = ts_run("gen_prefill", "generate", "--model", base, "--chat", "--messages", msgs,
                "--max-tokens", "2", NULL);
    CHECK_RUN_OK(rc, "gen_prefill");
    CHECK_OK(ts_write(msgs, "[]"));
    rc = ts_run("gen_bad", "generate", "--model", base, "--chat", "--messages", msgs, NULL);
    CHECK_RUN_FAILS(rc, "gen_bad", "array of messages");
    rc = ts_run("gen_nochat", "generate", "--model", base, "--messages", msgs, NULL);
    CHECK(rc == 2);
}

int main(void) {
    const char *f = getenv("FEDLORA_FIXTURES");
    snprintf(fx, sizeof fx, "%s/chat", f ? f : "tests/fixtures");
    char path[TS_PATH], base[TS_PATH], adapter[TS_PATH];
    snprintf(path, sizeof path, "%s/peft/expected.json", fx);
    snprintf(base, sizeof base, "%s/peft/base", fx);
    snprintf(adapter, sizeof adapter, "%s/peft/adapter", fx);
    json_error_t e;
    json_t *exp = json_load_file(path, 0, &e);
    CHECK_MSG(exp != NULL, "%s: %s", path, e.text);
    size_t i;
    json_t *c;
    if (exp) json_array_foreach(json_object_get(exp, "cases"), i, c) run_case(c, base, adapter);
    json_decref(exp);

    /* options: a model without a template and --chat-format template is an error */
    char nodir[TS_PATH];
    ts_path(nodir, "no_template");
    CHECK_OK(ts_model_dir(nodir, "llama", 0.02, 1, NULL));
    snprintf(path, sizeof path, "%s/peft/chat.jsonl", fx);
    int rc = ts_run("no_tpl", "eval", "--model", nodir, "--data", path, "--chat-format", "template",
                    NULL);
    CHECK_RUN_FAILS(rc, "no_tpl", "has no chat template");
    rc = ts_run("bad_loss", "eval", "--model", base, "--data", path, "--loss-on", "some", NULL);
    CHECK_RUN_FAILS(rc, "bad_loss", "--loss-on is assistant or all");
    test_generate(base);
    return check_finish();
}
