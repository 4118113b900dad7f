/* test_cmd_tokenize — `fedlora tokenize` (cli/cmd_tokenize.c, linked in):
 * text and JSONL input become the documents that tokenizer_encode gives,
 * with their boundaries; malformed input is an error naming file and line. */
#include "model/tokenizer/tokcorpus.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cmd_tokenize(int argc, char **argv);

static char tok_path[TS_PATH];

static int run(const char *data, const char *out, const char *extra1, const char *extra2) {
    char *argv[12] = {"tokenize",   "--tokenizer", tok_path,   "--data",
                      (char *)data, "--out",       (char *)out};
    int argc = 7;
    if (extra1) argv[argc++] = (char *)extra1;
    if (extra2) argv[argc++] = (char *)extra2;
    argv[argc] = NULL;
    return cmd_tokenize(argc, argv);
}

/* The file at out must hold exactly these documents, encoded with BOS. */
static void expect_docs(const char *out, const char **docs, size_t n, int special) {
    tokenizer *t = NULL;
    CHECK_OK(tokenizer_load(tok_path, &t));
    tokcorpus *c = NULL;
    CHECK_OK(tokcorpus_open(out, &c));
    if (!t || !c) {
        tokenizer_free(t);
        tokcorpus_close(c);
        return;
    }
    CHECK(tokcorpus_n_docs(c) == n);
    CHECK(tokcorpus_vocab_size(c) == tokenizer_vocab_size(t));
    CHECK(tokcorpus_flags(c) == (special ? TOKCORPUS_FLAG_SPECIAL : 0u));
    for (size_t i = 0; i < n && i < tokcorpus_n_docs(c); i++) {
        tokenizer_ids want = {0};
        CHECK_OK(tokenizer_encode(t, docs[i], strlen(docs[i]), special, &want));
        uint64_t start, len;
        CHECK_OK(tokcorpus_doc(c, i, &start, &len));
        uint32_t *got = malloc((len + 1) * sizeof *got);
        CHECK_OK(tokcorpus_read(c, start, len, got));
        CHECK_MSG(len == want.n && !memcmp(got, want.ids, len * sizeof *got),
                  "document %zu (\"%.40s\"): %llu tokens, want %zu", i, docs[i],
                  (unsigned long long)len, want.n);
        free(got);
        tokenizer_ids_free(&want);
    }
    tokcorpus_close(c);
    tokenizer_free(t);
}

int main(void) {
    ts_fixture(tok_path, "tokenizer/llama3.json");
    char data[TS_PATH], out[TS_PATH], tmp[TS_PATH + 16];
    ts_path(out, "out.tok");

    /* text: each non-blank line (CRLF too) is one document */
    ts_path(data, "corpus.txt");
    CHECK_OK(ts_write(data, "First line.\nsecond line of doc one.\n\n\n  \t\nDoc two: Grüße 😀\r\n"
                            "\r\nDoc three\nends without newline"));
    CHECK(run(data, out, NULL, NULL) == 0);
    const char *text_docs[] = {"First line.", "second line of doc one.", "Doc two: Grüße 😀",
                               "Doc three", "ends without newline"};
    expect_docs(out, text_docs, 5, 1);
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    CHECK(!fio_exists(tmp));
    CHECK(run(data, out, "--no-special", NULL) == 0);
    expect_docs(out, text_docs, 5, 0);

    /* JSONL: one record per line, blank lines skipped, empty text allowed */
    ts_path(data, "corpus.jsonl");
    CHECK_OK(ts_write(data, "{\"text\": \"Hello <|eot_id|> world\", \"id\": 1}\n\n"
                            "{\"text\": \"\"}\n{\"text\": \"tab\\there\\nnewline \\u00e4\"}\n"));
    CHECK(run(data, out, NULL, NULL) == 0);
    const char *json_docs[] = {"Hello <|eot_id|> world", "", "tab\there\nnewline \xC3\xA4"};
    expect_docs(out, json_docs, 3, 1);

    /* errors name the file and the line, and leave no output behind */
    unlink(out);
    CHECK_OK(ts_write(data, "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": oops}\n"));
    CHECK(run(data, out, NULL, NULL) == 1);
    CHECK_MSG(strstr(err_msg(), "corpus.jsonl:3: malformed JSON") != NULL, "%s", err_msg());
    CHECK(!fio_exists(out) && !fio_exists(tmp));
    CHECK_OK(ts_write(data, "{\"body\": \"no text field\"}\n"));
    CHECK(run(data, out, NULL, NULL) == 1);
    CHECK_MSG(strstr(err_msg(), "corpus.jsonl:1: the record has no \"text\"") != NULL, "%s",
              err_msg());

    /* invalid UTF-8: an error by default, U+FFFD with --invalid-utf8 replace */
    ts_path(data, "bad.txt");
    CHECK_OK(ts_write(data, "good document\n\nbad \xFF byte\n"));
    CHECK(run(data, out, NULL, NULL) == 1);
    CHECK_MSG(strstr(err_msg(), "line 3: invalid UTF-8 at byte 4") != NULL, "%s", err_msg());
    CHECK(run(data, out, "--invalid-utf8", "replace") == 0);
    const char *fixed_docs[] = {"good document", "bad \xEF\xBF\xBD byte"};
    expect_docs(out, fixed_docs, 2, 1);
    ts_path(data, "bad.jsonl");
    CHECK_OK(ts_write(data, "{\"text\": \"x \xC3\"}\n"));
    CHECK(run(data, out, NULL, NULL) == 1);
    CHECK(run(data, out, "--invalid-utf8", "replace") == 0);

    /* usage errors */
    char *no_out[] = {"tokenize", "--tokenizer", tok_path, "--data", data, NULL};
    CHECK(cmd_tokenize(5, no_out) == 2);
    CHECK(run(data, out, "--format", "xml") == 2);
    CHECK(run(data, out, "--frobnicate", NULL) == 2);
    char *help[] = {"tokenize", "--help", NULL};
    CHECK(cmd_tokenize(2, help) == 0);
    ts_path(data, "missing.txt");
    CHECK(run(data, out, NULL, NULL) == 1);
    CHECK(strstr(err_msg(), "cannot open") != NULL);
    return check_finish();
}
