/* fuzz_tokenizer_encode — encode and decode of untrusted text with the
 * fixture tokenizers (byte-level GPT-2, Llama 3 and Phi-4-mini (o200k split)
 * style, Qwen2 style with NFC, SentencePiece style). The first byte picks the
 * tokenizer and whether special tokens are added; the rest is the text.
 * Checked properties:
 *   valid UTF-8    encode and decode succeed; with the byte-level tokenizers
 *                  decode(encode(text)) == text
 *   invalid UTF-8  encode fails and appends nothing; after
 *                  tokenizer_utf8_repair it succeeds
 *   offsets        tokenizer_encode_offsets gives the same ids and, for each,
 *                  a range [start, end) within the text, on character
 *                  boundaries (the template's tokens: [0, 0)) */
#include "model/tokenizer/tokenizer.h"
#include "util/err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FL_FIXTURES_DIR
#define FL_FIXTURES_DIR "tests/fixtures"
#endif

static const char *names[] = {"gpt2.json",  "llama3.json", "spaces.json",
                              "qwen2.json", "spm.json",    "phi4.json"};
/* Byte-level without a normalizer: decode(encode(text)) == text. */
static const int roundtrip[] = {1, 1, 1, 0, 0, 1};
enum { N_TOK = 6 };
static tokenizer *toks[N_TOK];

static void load_all(void) {
    const char *dir = getenv("FEDLORA_FIXTURES");
    if (!dir) dir = FL_FIXTURES_DIR;
    for (int i = 0; i < N_TOK; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/tokenizer/%s", dir, names[i]);
        if (tokenizer_load(path, &toks[i]) != 0) {
            fprintf(stderr, "fuzz_tokenizer_encode: %s (set FEDLORA_FIXTURES)\n", err_msg());
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!toks[0]) load_all();
    if (size < 1 || size > (1u << 16)) return 0;
    int which = data[0] % N_TOK, special = (data[0] / N_TOK) & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    tokenizer *t = toks[which];
    tokenizer_ids ids = {0};
    if (tokenizer_utf8_valid_prefix(text, len) != len) {
        if (tokenizer_encode(t, text, len, special, &ids) == 0 || ids.n != 0) abort();
        char *fixed;
        size_t flen;
        if (tokenizer_utf8_repair(text, len, &fixed, &flen, NULL) != 0) abort();
        if (tokenizer_encode(t, fixed, flen, special, &ids) != 0) abort();
        free(fixed);
        tokenizer_ids_free(&ids);
        return 0;
    }
    if (tokenizer_encode(t, text, len, special, &ids) != 0) abort();
    for (size_t i = 0; i < ids.n; i++)
        if (ids.ids[i] >= tokenizer_vocab_size(t)) abort();
    char *out;
    size_t n;
    if (tokenizer_decode(t, ids.ids, ids.n, 0, &out, &n) != 0) abort();
    if (roundtrip[which] && !special && (n != len || memcmp(out, text, len) != 0)) abort();
    free(out);
    tokenizer_ids with = {0};
    tokenizer_offsets offs = {0};
    if (tokenizer_encode_offsets(t, text, len, special, &with, &offs) != 0 || with.n != ids.n ||
        offs.n != ids.n)
        abort();
    for (size_t i = 0; i < ids.n; i++) {
        uint32_t a = offs.r[i][0], b = offs.r[i][1];
        if (with.ids[i] != ids.ids[i] || a > b || b > len ||
            (a < len && ((unsigned char)text[a] & 0xC0) == 0x80) ||
            (b < len && ((unsigned char)text[b] & 0xC0) == 0x80))
            abort();
    }
    tokenizer_offsets_free(&offs);
    tokenizer_ids_free(&with);
    tokenizer_ids_free(&ids);
    return 0;
}
