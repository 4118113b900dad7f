/* test_mctask — multiple-choice tasks (data/mctask.h) against
 * lm-evaluation-harness itself: tests/fixtures/mc/ holds a tiny GPT-2, its
 * BPE tokenizer, a task file and what the harness computed for it
 * (tests/fixtures/make_mc_fixtures.py): every choice's context and
 * continuation token ids, log-likelihood (float32 and float64 models),
 * greediness, each question's prediction and the task's acc and acc_norm.
 * Also: the task file's rules (each refusal names the line and the field),
 * Python's whitespace and code points, and `fedlora eval --task/--json`. */
#include "data/mctask.h"
#include "model/checkpoint.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static char model_dir[TS_PATH], task_path[TS_PATH], tok_path[TS_PATH];

static json_t *expected(void) {
    char path[TS_PATH];
    json_error_t je;
    json_t *j = json_load_file(ts_fixture(path, "mc/expected.json"), 0, &je);
    CHECK_MSG(j != NULL, "%s: %s", path, je.text);
    return j;
}

/* The request ids of every choice equal the harness's context +
 * continuation (before truncation: the fixture's long context is checked
 * for its last max_length + 1 tokens). */
static void test_requests(const mctask *t, tokenizer *tok, const model *m, json_t *ref) {
    json_t *qs = json_object_get(ref, "questions");
    CHECK(json_array_size(qs) == mctask_count(t));
    int ml = m->cfg.max_position, checked = 0;
    for (size_t i = 0; i < mctask_count(t) && i < json_array_size(qs); i++) {
        const mctask_doc *d = mctask_get(t, i);
        json_t *reqs = json_object_get(json_array_get(qs, i), "requests");
        for (int c = 0; c < d->n_choices; c++) {
            json_t *rq = json_array_get(reqs, (size_t)c);
            json_t *ctx = json_object_get(rq, "context"),
                   *cont = json_object_get(rq, "continuation");
            size_t nc = json_array_size(ctx), nt = json_array_size(cont), total = nc + nt;
            mctask_request r;
            if (mctask_request_build(d, c, tok, m->cfg.bos_token_id, ml, m->cfg.vocab_size, &r) !=
                0) {
                CHECK_MSG(0, "question %zu choice %d: %s", i, c, err_msg());
                continue;
            }
            CHECK_MSG(r.cont == (int)nt,
                      "question %zu choice %d: %d continuation tokens, harness %zu", i, c, r.cont,
                      nt);
            size_t from = total > (size_t)ml + 1 ? total - (size_t)ml - 1 : 0;
            CHECK_MSG(r.n == (int)(total - from - 1), "question %zu choice %d: input of %d", i, c,
                      r.n);
            int same = 1;
            for (size_t k = from; k < total && (int)(k - from) <= r.n; k++) {
                json_t *want = k < nc ? json_array_get(ctx, k) : json_array_get(cont, k - nc);
                same &= r.ids[k - from] == json_integer_value(want);
            }
            CHECK_MSG(same, "question %zu choice %d: token ids differ from the harness's", i, c);
            checked++;
            free(r.ids);
        }
    }
    printf("requests: %d choices with the harness's token ids\n", checked);
}

static void test_scores(void) {
    model *m = NULL;
    tokenizer *tok = NULL;
    mctask *t = NULL;
    json_t *ref = expected();
    CHECK_OK(checkpoint_load(&m, model_dir));
    CHECK_OK(tokenizer_load(tok_path, &tok));
    CHECK_OK(mctask_load(&t, task_path));
    if (!m || !tok || !t || !ref) goto done;
    test_requests(t, tok, m, ref);
    for (int batch = 1; batch <= 3; batch += 2) {
        mctask_options o = {
            .batch = batch, .max_length = m->cfg.max_position, .prefix_token = m->cfg.bos_token_id};
        mctask_result r;
        if (mctask_score(t, m, tok, &o, &r) != 0) {
            CHECK_MSG(0, "%s", err_msg());
            continue;
        }
        json_t *qs = json_object_get(ref, "questions");
        double worst32 = 0, worst64 = 0;
        int greedy_same = 1, greedy_seen = 0;
        for (size_t i = 0; i < r.docs; i++) {
            json_t *q = json_array_get(qs, i);
            const mctask_doc *d = mctask_get(t, i);
            for (int c = 0; c < d->n_choices; c++) {
                double got = r.ll[r.first[i] + (size_t)c];
                double w32 = json_real_value(json_array_get(json_object_get(q, "ll"), (size_t)c));
                double w64 =
                    json_real_value(json_array_get(json_object_get(q, "ll_f64"), (size_t)c));
                worst32 = fmax(worst32, fabs(got - w32));
                worst64 = fmax(worst64, fabs(got - w64));
                int g = json_is_true(json_array_get(json_object_get(q, "greedy"), (size_t)c));
                greedy_same &= g == r.greedy[r.first[i] + (size_t)c];
                greedy_seen += g;
            }
            CHECK_MSG(r.pred[i] == json_integer_value(json_object_get(q, "pred")),
                      "question %zu: pred %d", i, r.pred[i]);
            CHECK_MSG(r.pred_norm[i] == json_integer_value(json_object_get(q, "pred_norm")),
                      "question %zu: pred_norm %d", i, r.pred_norm[i]);
        }
        printf("batch %d: log-likelihoods within %.2e of the harness (float32 model), %.2e of "
               "the float64 model; acc %.4f acc_norm %.4f\n",
               batch, worst32, worst64, r.acc, r.acc_norm);
        CHECK_MSG(worst32 <= 1e-5, "%g", worst32);
        CHECK_MSG(worst64 <= 1e-5, "%g", worst64);
        CHECK(greedy_same);
        CHECK_MSG(greedy_seen > 0, "the fixture has no greedy choice to check");
        CHECK(r.acc == json_real_value(json_object_get(ref, "acc")));
        CHECK(r.acc_norm == json_real_value(json_object_get(ref, "acc_norm")));
        CHECK(r.docs == mctask_count(t));
        mctask_result_free(&r);
    }
done:
    json_decref(ref);
    mctask_free(t);
    tokenizer_free(tok);
    model_free(m);
}

static void test_text(void) {
    /* Python's whitespace: ASCII separators and the Unicode spaces. */
    CHECK(mctask_rstrip("ab \t\n", 5) == 2);
    CHECK(mctask_rstrip("ab\x1c\x1f", 4) == 2);
    CHECK(mctask_rstrip("ab\xc2\xa0", 4) == 2);     /* U+00A0 */
    CHECK(mctask_rstrip("ab\xe3\x80\x80", 5) == 2); /* U+3000 */
    CHECK(mctask_rstrip("ab\xe2\x80\x8b", 5) == 5); /* U+200B is not whitespace */
    CHECK(mctask_rstrip("\xc3\xa9", 2) == 2);       /* é */
    CHECK(mctask_rstrip(" \n", 2) == 0);
    CHECK(mctask_codepoints("caf\xc3\xa9", 5) == 4);
    CHECK(mctask_codepoints("\xe6\x97\xa5\xf0\x9f\x98\x80", 7) == 2);
}

static void test_refusals(void) {
    static const struct {
        const char *text, *needle;
    } bad[] = {
        {"", "has no question"},
        {"\n\n  \n", "has no question"},
        {"{\"context\": \"a\", \"choices\": [\"x\", \"y\"]}\n", "t:1: missing \"gold\""},
        {"{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0}\n[1]\n",
         "t:2: a question must be a JSON object"},
        {"{\"context\": \"a\", \"choices\": [\"x\"], \"gold\": 0}", "2 to 64 strings"},
        {"{\"context\": \"a\", \"choices\": \"xy\", \"gold\": 0}", "2 to 64 strings"},
        {"{\"context\": \"a\", \"choices\": [\"x\", 3], \"gold\": 0}",
         "\"choices[1]\" must be a string"},
        {"{\"context\": \"a\", \"choices\": [\"x\", \"\"], \"gold\": 0}",
         "\"choices[1]\" is empty"},
        {"{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 2}", "from 0 to 1"},
        {"{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": -1}", "from 0 to 1"},
        {"{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0.5}", "\"gold\" must be"},
        {"{\"context\": 1, \"choices\": [\"x\", \"y\"], \"gold\": 0}",
         "\"context\" must be a string"},
        {"{\"context\": \" \\n\", \"choices\": [\"x\", \"y\"], \"gold\": 0}", "only whitespace"},
        {"{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0, \"delimiter\": 1}",
         "\"delimiter\" must be a string"},
        {"{\"context\": \"a\", \"context\": \"b\", \"choices\": [\"x\", \"y\"], \"gold\": 0}",
         "not valid JSON"},
        {"{\"context\": \"a\\u0000\", \"choices\": [\"x\", \"y\"], \"gold\": 0}", "not valid JSON"},
        {"{\"context\": \"\xff\", \"choices\": [\"x\", \"y\"], \"gold\": 0}", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mctask *t = NULL;
        CHECK_FAILS_WITH(mctask_parse(&t, bad[i].text, strlen(bad[i].text), "t"), bad[i].needle);
        CHECK(t == NULL);
    }
    /* Extra fields are ignored, blank lines skipped, CRLF read, the default
     * delimiter is a space. */
    const char *ok =
        "\r\n{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 1, \"id\": 7}\r\n"
        "\n{\"context\": \"\", \"choices\": [\"p\", \"q\", \"r\"], \"gold\": 2, "
        "\"delimiter\": \"\"}";
    mctask *t = NULL;
    CHECK_OK(mctask_parse(&t, ok, strlen(ok), "ok"));
    if (t) {
        CHECK(mctask_count(t) == 2);
        const mctask_doc *a = mctask_get(t, 0), *b = mctask_get(t, 1);
        CHECK(a->line == 2 && !strcmp(a->delimiter, " ") && a->gold == 1 && a->n_choices == 2);
        CHECK(b->line == 4 && !strcmp(b->delimiter, "") && !strcmp(b->choices[2], "r"));
        CHECK(mctask_get(t, 2) == NULL);
        mctask_free(t);
    }
}

static double number_after(const char *text, const char *key) {
    const char *p = text ? strstr(text, key) : NULL;
    return p ? strtod(p + strlen(key), NULL) : NAN;
}

static void test_cli(void) {
    json_t *ref = expected();
    char data[TS_PATH], out[TS_PATH];
    ts_path(data, "heldout.txt");
    CHECK_OK(
        ts_write(data, "The capital of France is Paris.\nOnce upon a time there was a king.\n"));
    int rc = ts_run("eval_task", "eval", "--model", model_dir, "--task", task_path, "--data", data,
                    "--json", ts_path(out, "scores.json"), NULL);
    CHECK_RUN_OK(rc, "eval_task");
    char *o = ts_output("eval_task", "out");
    CHECK_MSG(o && strstr(o, "task.jsonl: acc ") && strstr(o, "heldout.txt: loss "), "%s",
              o ? o : "(none)");
    CHECK_NEAR(number_after(o, "task.jsonl: acc "), json_real_value(json_object_get(ref, "acc")),
               1e-4);
    CHECK_NEAR(number_after(o, "acc_norm "), json_real_value(json_object_get(ref, "acc_norm")),
               1e-4);
    free(o);
    json_error_t je;
    json_t *j = json_load_file(out, 0, &je);
    json_t *sets = json_object_get(j, "sets");
    CHECK_MSG(json_array_size(sets) == 2, "%s", je.text);
    json_t *text = json_array_get(sets, 0), *task = json_array_get(sets, 1);
    CHECK(!strcmp(json_string_value(json_object_get(text, "kind")), "text"));
    CHECK(!strcmp(json_string_value(json_object_get(text, "name")), "heldout.txt"));
    CHECK(json_real_value(json_object_get(text, "loss")) > 0);
    CHECK_NEAR(json_real_value(json_object_get(text, "perplexity")),
               exp(json_real_value(json_object_get(text, "loss"))), 1e-9);
    CHECK(!strcmp(json_string_value(json_object_get(task, "kind")), "choice"));
    CHECK(json_real_value(json_object_get(task, "acc")) ==
          json_real_value(json_object_get(ref, "acc")));
    CHECK(json_real_value(json_object_get(task, "acc_norm")) ==
          json_real_value(json_object_get(ref, "acc_norm")));
    CHECK(json_integer_value(json_object_get(task, "questions")) == 11);
    json_decref(j);

    /* A bad task file: exit 1, the line and field named. */
    char bad[TS_PATH];
    ts_path(bad, "bad.jsonl");
    CHECK_OK(ts_write(bad, "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0}\n"
                           "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 5}\n"));
    rc = ts_run("eval_bad", "eval", "--model", model_dir, "--task", bad, NULL);
    CHECK_RUN_FAILS(rc, "eval_bad", "bad.jsonl:2: \"gold\"");
    rc = ts_run("eval_gpu_task", "eval", "--model", model_dir, "--task", task_path, "--device",
                "cuda", NULL);
    CHECK(rc != 0);
    json_decref(ref);
}

int main(void) {
    ts_fixture(model_dir, "mc/model");
    ts_fixture(task_path, "mc/task.jsonl");
    ts_fixture(tok_path, "mc/model/tokenizer.json");
    test_text();
    test_refusals();
    test_scores();
    test_cli();
    return check_finish();
}
