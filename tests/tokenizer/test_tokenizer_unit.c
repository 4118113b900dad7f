/* test_tokenizer_unit — loader errors, UTF-8 handling, the public accessors,
 * long inputs and tokenizer_save_bytelevel. (Equality with Hugging Face on
 * real tokenizers is test_tokenizer_hf.) */
#include "model/tokenizer/tokenizer.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A hand-made SentencePiece-style BPE: a b c ab abc ▁ plus <unk> <s> and two
 * byte tokens, with the given parts spliced in. */
static char *spm_json(const char *model_extra, const char *rest) {
    static char buf[8192];
    snprintf(buf, sizeof buf,
             "{\"version\":\"1.0\",\"added_tokens\":["
             "{\"id\":0,\"content\":\"<unk>\",\"special\":true,\"normalized\":false},"
             "{\"id\":1,\"content\":\"<s>\",\"special\":true,\"normalized\":false}],"
             "%s"
             "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
             "\"byte_fallback\":true,%s"
             "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"<0x41>\":2,\"<0xC3>\":3,\"a\":4,\"b\":5,\"c\":6,"
             "\"ab\":7,\"abc\":8,\"\\u2581\":9,\"\\u2581a\":10},"
             "\"merges\":[\"a b\",[\"ab\",\"c\"],\"\\u2581 a\"]}}",
             rest, model_extra);
    return buf;
}

static const char *SPM_PIPELINE =
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":"
    "\"\\u2581\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},"
    "\"pre_tokenizer\":null,"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":"
    "\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":"
    "{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{"
    "\"String\":\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
    "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},";

static int load(const char *json, tokenizer **t) {
    return tokenizer_load_json(json, strlen(json), "test.json", t);
}

static void expect_ids(tokenizer *t, const char *text, int special, const uint32_t *want,
                       size_t n) {
    tokenizer_ids ids = {0};
    CHECK_OK(tokenizer_encode(t, text, strlen(text), special, &ids));
    int same = ids.n == n && (n == 0 || !memcmp(ids.ids, want, n * sizeof *want));
    CHECK_MSG(same, "ids of \"%s\" (got %zu ids)", text, ids.n);
    tokenizer_ids_free(&ids);
}

static void test_hand_made(void) {
    tokenizer *t = NULL;
    CHECK_OK(load(spm_json("", SPM_PIPELINE), &t));
    if (!t) return;
    /* "abc ab" → ▁abc▁ab: merges a+b (rank 0), ab+c (1), ▁+a (2) */
    expect_ids(t, "abc ab", 0, (uint32_t[]){9, 8, 9, 7}, 4);
    expect_ids(t, "abc ab", 1, (uint32_t[]){1, 9, 8, 9, 7}, 5);
    /* "A": <0x41> by byte fallback; "é" = C3 A9: <0xA9> is missing, so <unk> */
    expect_ids(t, "A", 0, (uint32_t[]){9, 2}, 2);
    expect_ids(t, "\xC3\xA9\xC3\xA9", 0, (uint32_t[]){9, 0}, 2); /* fused */
    expect_ids(t, "", 0, NULL, 0);
    expect_ids(t, "", 1, (uint32_t[]){1}, 1);
    CHECK(tokenizer_vocab_size(t) == 11);
    uint32_t id = 99;
    CHECK_OK(tokenizer_token_to_id(t, "abc", 3, &id));
    CHECK(id == 8);
    CHECK_FAILS_WITH(tokenizer_token_to_id(t, "zzz", 3, &id), "no token");
    size_t len = 0;
    const char *s = tokenizer_id_to_token(t, 7, &len);
    CHECK(s && len == 2 && !memcmp(s, "ab", 2));
    CHECK(tokenizer_id_to_token(t, 11, &len) == NULL);
    CHECK(tokenizer_is_special(t, 1) && !tokenizer_is_special(t, 7));
    /* decode: ▁ → ' ', <0x41> → 'A', first space stripped; unknown ids skipped */
    char *out;
    CHECK_OK(tokenizer_decode(t, (uint32_t[]){1, 9, 8, 9, 2, 12345}, 6, 1, &out, &len));
    CHECK(!strcmp(out, "abc A") && len == 5);
    free(out);
    CHECK_OK(tokenizer_decode(t, (uint32_t[]){1, 9, 8}, 3, 0, &out, &len));
    CHECK(!strcmp(out, "<s> abc"));
    free(out);
    tokenizer_free(t);
}

static void expect_load_error(const char *json, const char *needle) {
    tokenizer *t = NULL;
    CHECK_FAILS_WITH(load(json, &t), needle);
    CHECK(t == NULL);
}

static void test_load_errors(void) {
    char buf[8192];
    expect_load_error("{not json", "not valid JSON");
    expect_load_error("[1,2]", "top level must be a JSON object");
    expect_load_error("{\"version\":\"2.0\",\"model\":{}}", "unknown tokenizer.json version");
    expect_load_error("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}",
                      "\"Unigram\" is not supported");
    expect_load_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "\"WordPiece\"");
    expect_load_error("{\"model\":{\"type\":\"WordLevel\",\"vocab\":{}}}", "\"WordLevel\"");
    expect_load_error("{}", "model: missing");
    expect_load_error(spm_json("\"dropout\":0.1,", SPM_PIPELINE), "dropout");
    expect_load_error(spm_json("\"continuing_subword_prefix\":\"##\",", SPM_PIPELINE),
                      "continuing_subword_prefix");
    snprintf(buf, sizeof buf, "%s", spm_json("", "\"normalizer\":{\"type\":\"Lowercase\"},"));
    expect_load_error(buf, "normalizer type \"Lowercase\" is not supported");
    snprintf(buf, sizeof buf, "%s", spm_json("", "\"normalizer\":{\"type\":\"NFKC\"},"));
    expect_load_error(buf, "\"NFKC\"");
    expect_load_error(spm_json("", "\"pre_tokenizer\":{\"type\":\"Whitespace\"},"),
                      "pre-tokenizer type \"Whitespace\"");
    expect_load_error(spm_json("", "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
                                   "{\"type\":\"ByteLevel\"},{\"type\":\"Metaspace\","
                                   "\"replacement\":\"_\"}]},"),
                      "ByteLevel must come last");
    expect_load_error(spm_json("", "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":"
                                   "\"(\"},\"behavior\":\"Isolated\"},"),
                      "does not compile");
    expect_load_error(spm_json("", "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":"
                                   "\"x\"},\"behavior\":\"Sideways\"},"),
                      "Split behavior");
    expect_load_error(spm_json("", "\"decoder\":{\"type\":\"WordPiece\"},"),
                      "decoder type \"WordPiece\"");
    expect_load_error(spm_json("", "\"post_processor\":{\"type\":\"RobertaProcessing\"},"),
                      "post-processor type \"RobertaProcessing\"");
    expect_load_error(spm_json("", "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
                                   "[{\"SpecialToken\":{\"id\":\"<x>\"}}],\"special_tokens\":{}},"),
                      "\"<x>\" is missing");
    expect_load_error(spm_json("", "\"added_tokens\":[{\"id\":5}],"), "\"content\" string");
    /* vocabulary and merges */
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}",
                      "id must be an integer");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}",
                      "is given to two tokens");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}",
                      "merge token 'b' is not in model.vocab");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a a a\"]}}",
                      "not two tokens");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a a\"]}}",
                      "merge token 'aa'");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"unk_token\":\"<unk>\","
                      "\"merges\":[]}}",
                      "unk_token \"<unk>\" is not in model.vocab");
}

static void test_utf8(void) {
    CHECK(tokenizer_utf8_valid_prefix("abc", 3) == 3);
    CHECK(tokenizer_utf8_valid_prefix("a\xC3\xA4z", 4) == 4);
    CHECK(tokenizer_utf8_valid_prefix("ab\xC3", 3) == 2);           /* truncated */
    CHECK(tokenizer_utf8_valid_prefix("\xED\xA0\x80", 3) == 0);     /* surrogate */
    CHECK(tokenizer_utf8_valid_prefix("\xC0\xAF", 2) == 0);         /* overlong */
    CHECK(tokenizer_utf8_valid_prefix("\xF4\x90\x80\x80", 4) == 0); /* > U+10FFFF */
    CHECK(tokenizer_utf8_valid_prefix("12345678\xF0\x9F\x98\x80", 12) == 12);
    struct {
        const char *in;
        size_t n;
        const char *out;
        size_t bad;
    } cases[] = {
        {"ok", 2, "ok", 0},
        {"\xF0\x9F\x98", 3, "\xEF\xBF\xBD", 1},                         /* one subpart */
        {"\xED\xA0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", 3}, /* surrogate */
        {"\xC0\xAF!", 3, "\xEF\xBF\xBD\xEF\xBF\xBD!", 2},               /* overlong */
        {"a\xE2\x82 b", 5, "a\xEF\xBF\xBD b", 1},
        {"\xFF\xFE", 2, "\xEF\xBF\xBD\xEF\xBF\xBD", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out;
        size_t len, bad;
        CHECK_OK(tokenizer_utf8_repair(cases[i].in, cases[i].n, &out, &len, &bad));
        CHECK_MSG(len == strlen(cases[i].out) && !memcmp(out, cases[i].out, len) &&
                      bad == cases[i].bad,
                  "repair case %zu", i);
        free(out);
    }
}

/* A GPT-2 style byte-level tokenizer written by tokenizer_save_bytelevel. */
static void test_save_bytelevel(void) {
    char path[TS_PATH];
    ts_path(path, "bytelevel.json");
    tokenizer_special_token sp[] = {{"<|begin_of_text|>", 256}, {"<|end_of_text|>", 257}};
    CHECK_OK(tokenizer_save_bytelevel(path, sp, 2, "<|begin_of_text|>"));
    tokenizer *t = NULL;
    CHECK_OK(tokenizer_load(path, &t));
    if (t) {
        CHECK(tokenizer_vocab_size(t) == 258);
        const char *text = "Hi <|end_of_text|>\xC3\xA4";
        /* H=72 i=105 ' '=32 are bytes 72, 105, 32; ä = C3 A4 */
        expect_ids(t, text, 1, (uint32_t[]){256, 72, 105, 32, 257, 0xC3, 0xA4}, 7);
        tokenizer_ids ids = {0};
        CHECK_OK(tokenizer_encode(t, text, strlen(text), 0, &ids));
        char *back;
        size_t len;
        CHECK_OK(tokenizer_decode(t, ids.ids, ids.n, 0, &back, &len));
        CHECK(!strcmp(back, text));
        free(back);
        CHECK_OK(tokenizer_decode(t, ids.ids, ids.n, 1, &back, &len));
        CHECK(!strcmp(back, "Hi \xC3\xA4"));
        free(back);
        tokenizer_ids_free(&ids);
        tokenizer_free(t);
    }
    /* sparse ids are allowed: they stay as given */
    tokenizer_special_token eos[] = {{"<|endoftext|>", 50256}};
    CHECK_OK(tokenizer_save_bytelevel(path, eos, 1, NULL));
    CHECK_OK(tokenizer_load(path, &t));
    if (t) {
        CHECK(tokenizer_vocab_size(t) == 50257);
        expect_ids(t, "a<|endoftext|>", 1, (uint32_t[]){97, 50256}, 2);
        tokenizer_free(t);
    }
    tokenizer_special_token low[] = {{"<x>", 10}};
    CHECK_FAILS_WITH(tokenizer_save_bytelevel(path, low, 1, NULL), "must be in [256");
    tokenizer_special_token dup[] = {{"<x>", 300}, {"<y>", 300}};
    CHECK_FAILS_WITH(tokenizer_save_bytelevel(path, dup, 2, NULL), "share an id");
    tokenizer_special_token byte[] = {{"a", 300}};
    CHECK_FAILS_WITH(tokenizer_save_bytelevel(path, byte, 1, NULL), "byte tokens");
    CHECK_FAILS_WITH(tokenizer_save_bytelevel(path, sp, 2, "<nope>"), "not one of the special");
}

/* Long pieces: one 1 MB pre-token (the merge heap), a long white-space run
 * (regex backtracking), and invalid UTF-8 in the middle of valid text. */
static void test_long_and_invalid(void) {
    char path[TS_PATH];
    ts_path(path, "plain.json");
    CHECK_OK(tokenizer_save_bytelevel(path, NULL, 0, NULL));
    tokenizer *t = NULL;
    CHECK_OK(tokenizer_load(path, &t));
    if (!t) return;
    size_t n = 1 << 20;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    memset(big + n / 2, ' ', 100000);
    tokenizer_ids ids = {0};
    CHECK_OK(tokenizer_encode(t, big, n, 0, &ids));
    CHECK(ids.n == n); /* no merges: one token per byte */
    char *back;
    size_t len;
    CHECK_OK(tokenizer_decode(t, ids.ids, ids.n, 0, &back, &len));
    CHECK(len == n && !memcmp(back, big, n));
    free(back);
    size_t before = ids.n;
    big[12345] = (char)0xFF;
    CHECK_FAILS_WITH(tokenizer_encode(t, big, n, 0, &ids), "byte 12345");
    CHECK(ids.n == before); /* nothing appended on failure */
    free(big);
    tokenizer_ids_free(&ids);
    tokenizer_free(t);
}

int main(void) {
    test_hand_made();
    test_load_errors();
    test_utf8();
    test_save_bytelevel();
    test_long_and_invalid();
    return check_finish();
}
