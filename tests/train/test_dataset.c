/* test_dataset — data/dataset.c: formats and templates, loss only on the
 * response tokens of instruction and chat records, packing with EOS between
 * documents, the pre-tokenized corpus giving the same rows as its text, the
 * held-out split and the data order, and clear errors for bad files.
 *
 * The byte-level tokenizer makes expectations readable: id b is byte b,
 * 256 is EOS, so the targets that carry loss can be spelled out as text. */
#include "data/dataset.h"
#include "model/tokenizer/tokcorpus.h"
#include "tests/support/ts_model.h"

static char tok_path[TS_PATH];

static dataset *open_file(const char *name, const char *text, int T, double eval_fraction,
                          uint64_t seed) {
    char path[TS_PATH];
    ts_path(path, "%s", name);
    if (text) CHECK_OK(ts_write(path, text));
    dataset_options o = {.path = path,
                         .tokenizer = tok_path,
                         .seq = T,
                         .eos_id = 256,
                         .vocab_size = 320,
                         .eval_fraction = eval_fraction,
                         .seed = seed};
    dataset *d = NULL;
    CHECK_OK(dataset_open(&d, &o));
    return d;
}

/* The loss-carrying targets of the whole split, as bytes ('$' for EOS),
 * and the full token stream (inputs, then the last row's last target). */
static void spell(const dataset *d, dataset_split s, char *targets, char *stream, size_t cap) {
    int T = dataset_seq(d);
    int32_t in[512], tg[512];
    if (T > 512) return;
    size_t nt = 0, ns = 0;
    for (size_t r = 0; r < dataset_num_rows(d, s); r++) {
        CHECK_OK(dataset_row(d, s, r, in, tg));
        for (int t = 0; t < T && nt + 1 < cap && ns + 1 < cap; t++) {
            if (tg[t] != MODEL_IGNORE_INDEX) targets[nt++] = tg[t] == 256 ? '$' : (char)tg[t];
            stream[ns++] = in[t] == 256 ? '$' : (char)in[t];
        }
    }
    targets[nt] = stream[ns] = '\0';
}

static void test_text_packing(void) {
    /* Documents joined with EOS, rows of T sharing one token, last row padded. */
    dataset *d = open_file("docs.txt", "abc\n\nde\r\nfghij\n", 4, 0, 0);
    if (!d) return;
    CHECK(!strcmp(dataset_format(d), "text"));
    CHECK(dataset_num_docs(d, DATASET_TRAIN) == 3);
    /* stream: a b c $ d e $ f g h i j $ (13 tokens) -> rows at 0, 4, 8 (12 targets) */
    CHECK(dataset_num_rows(d, DATASET_TRAIN) == 3);
    CHECK(dataset_num_targets(d, DATASET_TRAIN) == 12);
    int32_t in[4], tg[4];
    CHECK_OK(dataset_row(d, DATASET_TRAIN, 1, in, tg));
    CHECK(in[0] == 'd' && in[1] == 'e' && in[2] == 256 && in[3] == 'f');
    CHECK(tg[0] == 'e' && tg[1] == 256 && tg[2] == 'f' && tg[3] == 'g');
    CHECK_OK(dataset_row(d, DATASET_TRAIN, 2, in, tg));
    CHECK(in[0] == 'g' && in[3] == 'j' && tg[3] == 256);
    char targets[256], stream[256];
    spell(d, DATASET_TRAIN, targets, stream, sizeof targets);
    CHECK_MSG(!strcmp(targets, "bc$de$fghij$"), "targets '%s'", targets);
    CHECK_FAILS_WITH(dataset_row(d, DATASET_TRAIN, 3, in, tg), "out of range");
    dataset_free(d);

    /* A short last row: padded with EOS inputs and ignored targets. */
    d = open_file("short.txt", "abcdef\n", 4, 0, 0);
    if (!d) return;
    CHECK(dataset_num_rows(d, DATASET_TRAIN) == 2); /* a b c d e f $ */
    CHECK_OK(dataset_row(d, DATASET_TRAIN, 1, in, tg));
    CHECK(in[0] == 'e' && in[1] == 'f' && in[2] == 256 && in[3] == 256);
    CHECK(tg[0] == 'f' && tg[1] == 256 && tg[2] == MODEL_IGNORE_INDEX &&
          tg[3] == MODEL_IGNORE_INDEX);
    dataset_free(d);
}

static void test_instruction_mask(void) {
    dataset *d = open_file("ins.jsonl",
                           "{\"instruction\": \"Add\", \"input\": \"1+1\", \"output\": \"2\"}\n"
                           "\n"
                           "{\"instruction\": \"Greet\", \"output\": \"Hi there\"}\n"
                           "{\"text\": \"plain\"}\n",
                           400, 0, 0);
    if (!d) return;
    CHECK(!strcmp(dataset_format(d), "jsonl"));
    CHECK(dataset_num_docs(d, DATASET_TRAIN) == 3);
    char targets[4096], stream[4096];
    spell(d, DATASET_TRAIN, targets, stream, sizeof targets);
    /* Only the outputs (and their EOS) and the plain text document carry loss. */
    CHECK_MSG(!strcmp(targets, "2$Hi there$plain$"), "targets '%s'", targets);
    CHECK(strstr(stream, "### Instruction:\nAdd\n\n### Input:\n1+1\n\n### Response:\n2$") != NULL);
    CHECK(strstr(stream, "Below is an instruction that describes a task. Write a response that "
                         "appropriately completes the request.\n\n### Instruction:\nGreet\n\n"
                         "### Response:\nHi there$") != NULL);
    dataset_free(d);
}

static const char *chat_jsonl =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
    "\"content\": \"Hello?\"}, {\"role\": \"assistant\", \"content\": \"Hi.\"}, {\"role\": "
    "\"user\", \"content\": \"Bye\"}, {\"role\": \"assistant\", \"content\": \"Ciao\"}]}\n";

static void test_chat_mask(void) {
    dataset *d = open_file("chat.jsonl", chat_jsonl, 128, 0, 0);
    if (!d) return;
    char targets[4096], stream[4096];
    spell(d, DATASET_TRAIN, targets, stream, sizeof targets);
    CHECK_MSG(!strcmp(targets, "Hi.$Ciao$"), "targets '%s'", targets);
    const char *want = "<|system|>\nBe brief.$<|user|>\nHello?$<|assistant|>\nHi.$"
                       "<|user|>\nBye$<|assistant|>\nCiao$";
    CHECK_MSG(!strncmp(stream, want, strlen(want)), "stream '%s'", stream);
    dataset_free(d);

    /* Short rows: the rows with no response token are dropped, no target is lost. */
    d = open_file("chat.jsonl", NULL, 8, 0, 0);
    if (!d) return;
    size_t len = strlen(want); /* tokens of the conversation: one per byte or EOS */
    CHECK(dataset_num_rows(d, DATASET_TRAIN) < (len - 2) / 8 + 1);
    CHECK(dataset_num_targets(d, DATASET_TRAIN) == 9);
    spell(d, DATASET_TRAIN, targets, stream, sizeof targets);
    CHECK_MSG(!strcmp(targets, "Hi.$Ciao$"), "targets '%s'", targets);
    dataset_free(d);
}

/* A corpus from `fedlora tokenize` gives exactly the rows of its text. */
static void test_corpus_same_rows(void) {
    const char *docs[] = {"first document", "second one, a little longer", "x"};
    char text[256] = "", path[TS_PATH];
    tokenizer *tok = NULL;
    CHECK_OK(tokenizer_load(tok_path, &tok));
    tokcorpus_writer *w = NULL;
    CHECK_OK(tokcorpus_writer_open(ts_path(path, "corpus.tok"), 257, TOKCORPUS_FLAG_SPECIAL, &w));
    if (!tok || !w) return;
    for (int i = 0; i < 3; i++) {
        tokenizer_ids ids = {0};
        CHECK_OK(tokenizer_encode(tok, docs[i], strlen(docs[i]), 1, &ids));
        CHECK_OK(tokcorpus_writer_add(w, ids.ids, ids.n));
        tokenizer_ids_free(&ids);
        strcat(text, docs[i]);
        strcat(text, "\n");
    }
    CHECK_OK(tokcorpus_writer_finish(w));
    tokenizer_free(tok);
    dataset *a = open_file("corpus.tok", NULL, 8, 0.3, 5);
    dataset *b = open_file("corpus.txt", text, 8, 0.3, 5);
    if (!a || !b) return;
    CHECK(!strcmp(dataset_format(a), "tokens"));
    for (int s = 0; s < 2; s++) {
        CHECK(dataset_num_rows(a, s) == dataset_num_rows(b, s));
        CHECK(dataset_num_targets(a, s) == dataset_num_targets(b, s));
        for (size_t r = 0; r < dataset_num_rows(a, s) && r < dataset_num_rows(b, s); r++) {
            int32_t ia[8], ta[8], ib[8], tb[8];
            CHECK_OK(dataset_row(a, s, r, ia, ta));
            CHECK_OK(dataset_row(b, s, r, ib, tb));
            CHECK(!memcmp(ia, ib, sizeof ia) && !memcmp(ta, tb, sizeof ta));
        }
    }
    CHECK(dataset_fingerprint(a) == dataset_fingerprint(b));
    dataset_free(a);
    dataset_free(b);

    /* A corpus for a larger vocabulary than the model's is refused. */
    CHECK_OK(tokcorpus_writer_open(path, 1000, 0, &w));
    uint32_t big = 999;
    CHECK_OK(tokcorpus_writer_add(w, &big, 1));
    CHECK_OK(tokcorpus_writer_finish(w));
    dataset_options o = {.path = path, .seq = 8, .eos_id = 256, .vocab_size = 320};
    dataset *d = NULL;
    CHECK_FAILS_WITH(dataset_open(&d, &o), "vocabulary of 1000 ids");
}

static void test_split_and_order(void) {
    char text[4096] = "";
    for (int i = 0; i < 20; i++) sprintf(text + strlen(text), "document number %d\n", i);
    dataset *a = open_file("twenty.txt", text, 8, 0.25, 7);
    dataset *b = open_file("twenty.txt", NULL, 8, 0.25, 7);
    dataset *c = open_file("twenty.txt", NULL, 8, 0.25, 8);
    dataset *z = open_file("twenty.txt", NULL, 8, 0, 7);
    if (!a || !b || !c || !z) return;
    CHECK(dataset_num_docs(a, DATASET_EVAL) == 5 && dataset_num_docs(a, DATASET_TRAIN) == 15);
    CHECK(dataset_num_docs(z, DATASET_EVAL) == 0 && dataset_num_rows(z, DATASET_EVAL) == 0);
    /* Deterministic for a seed; another seed holds out other documents. */
    CHECK(dataset_fingerprint(a) == dataset_fingerprint(b));
    CHECK(dataset_fingerprint(a) != dataset_fingerprint(c));
    CHECK(dataset_fingerprint(a) != dataset_fingerprint(z));
    /* Every token of the file is in exactly one split (each split's first
     * token is no one's target). */
    CHECK(dataset_num_targets(a, DATASET_TRAIN) + dataset_num_targets(a, DATASET_EVAL) ==
          dataset_num_targets(z, DATASET_TRAIN) - 1);
    dataset_free(a);
    dataset_free(b);
    dataset_free(c);
    dataset_free(z);

    /* The order: each epoch a permutation, a function of (seed, position). */
    dataset_order o1, o2;
    CHECK_OK(dataset_order_init(&o1, 10, 3));
    CHECK_OK(dataset_order_init(&o2, 10, 3));
    int seen[3][10] = {{0}};
    size_t at25 = dataset_order_row(&o2, 25);
    int differs = 0;
    for (uint64_t p = 0; p < 30; p++) {
        size_t r = dataset_order_row(&o1, p);
        CHECK(r < 10);
        if (r < 10) seen[p / 10][r]++;
        if (p == 25) CHECK(r == at25); /* random access agrees with a sequential walk */
        if (p < 10) differs |= r != dataset_order_row(&o1, p + 10);
    }
    for (int e = 0; e < 3; e++)
        for (int r = 0; r < 10; r++) CHECK(seen[e][r] == 1);
    CHECK(differs); /* epochs are shuffled anew */
    dataset_order_free(&o1);
    dataset_order_free(&o2);
}

static void expect_error(const char *name, const char *text, const char *needle) {
    char path[TS_PATH];
    CHECK_OK(ts_write(ts_path(path, "%s", name), text));
    dataset_options o = {
        .path = path, .tokenizer = tok_path, .seq = 8, .eos_id = 256, .vocab_size = 320};
    dataset *d = NULL;
    CHECK_FAILS_WITH(dataset_open(&d, &o), needle);
    CHECK(d == NULL);
}

static void test_errors(void) {
    char want[TS_PATH + 32], path[TS_PATH];
    snprintf(want, sizeof want, "%s:3: not valid JSON", ts_path(path, "bad.jsonl"));
    expect_error("bad.jsonl", "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n{\"text\": \"c\"}\n", want);
    snprintf(want, sizeof want, "%s:2: a record has exactly one of", ts_path(path, "kind.jsonl"));
    expect_error("kind.jsonl", "{\"text\": \"a\"}\n{\"prompt\": \"b\"}\n", want);
    expect_error("both.jsonl", "{\"text\": \"a\", \"messages\": []}\n", "exactly one of");
    expect_error("notobj.jsonl", "[1, 2]\n", "must be a JSON object");
    expect_error("textnum.jsonl", "{\"text\": 3}\n", "\"text\" must be a string");
    expect_error("noout.jsonl", "{\"instruction\": \"x\"}\n", "no \"output\" string");
    expect_error("role.jsonl", "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n",
                 "message 1 has role \"robot\"");
    expect_error("noasst.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n",
                 "no \"assistant\" message");
    expect_error("empty.jsonl", "\n  \n", "holds no documents");
    expect_error("empty.txt", "", "holds no documents");
    expect_error("utf8.txt", "ok\nbad \xff byte\n", "utf8.txt:2");

    dataset_options o = {.path = "/nonexistent/data.txt",
                         .tokenizer = tok_path,
                         .seq = 8,
                         .eos_id = 256,
                         .vocab_size = 320};
    dataset *d = NULL;
    CHECK_FAILS_WITH(dataset_open(&d, &o), "/nonexistent/data.txt");
    o.path = ts_path(path, "docs.txt");
    o.tokenizer = NULL;
    CHECK_FAILS_WITH(dataset_open(&d, &o), "needs a tokenizer");
    o.tokenizer = tok_path;
    o.vocab_size = 100; /* the tokenizer's bytes reach beyond this model */
    CHECK_FAILS_WITH(dataset_open(&d, &o), "token embeddings");
}

int main(void) {
    ts_path(tok_path, "tokenizer.json");
    tokenizer_special_token eot = {"<|endoftext|>", 256};
    CHECK_OK(tokenizer_save_bytelevel(tok_path, &eot, 1, NULL));
    test_text_packing();
    test_instruction_mask();
    test_chat_mask();
    test_corpus_same_rows();
    test_split_and_order();
    test_errors();
    return check_finish();
}
