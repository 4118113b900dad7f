/* tokenizer — Hugging Face tokenizer.json (BPE) in C, with identical ids.
 *
 * Supported, as Hugging Face `tokenizers` defines them (docs/tokenizer.md has
 * the full list and the few documented differences):
 *   model          BPE: vocab, merges ("a b" strings or ["a","b"] pairs),
 *                  unk_token, fuse_unk, byte_fallback (<0xNN>), ignore_merges
 *   added_tokens   special and normal, lstrip / rstrip / single_word / normalized
 *   normalizer     Sequence, Prepend, Replace, NFC
 *   pre_tokenizer  Sequence, ByteLevel, Split (String or Regex, every behavior),
 *                  Metaspace
 *   post_processor TemplateProcessing (single), ByteLevel, Sequence of those
 *   decoder        ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence
 * Anything else (Unigram, WordPiece, an unknown normalizer, ...) is refused at
 * load time with an error that names it.
 *
 * Text is UTF-8. tokenizer_encode refuses invalid UTF-8 (the error gives the
 * byte offset); tokenizer_utf8_repair replaces invalid bytes with U+FFFD the
 * way Python's errors="replace" does, for callers that prefer that.
 *
 * A tokenizer keeps scratch buffers and a cache of recent pre-tokens, so one
 * tokenizer must not encode from two threads at once: load one per thread. */
#ifndef FL_MODEL_TOKENIZER_H
#define FL_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* A growable list of token ids. Start from {0}; free with tokenizer_ids_free. */
typedef struct {
    uint32_t *ids;
    size_t n, cap;
} tokenizer_ids;

/* tokenizer.json files larger than this are refused (Llama 3's is ~9 MB). */
#define TOKENIZER_JSON_MAX ((size_t)256 << 20)

int tokenizer_load(const char *path, tokenizer **out);
/* As tokenizer_load, from bytes in memory; `name` appears in error messages. */
int tokenizer_load_json(const char *json, size_t len, const char *name, tokenizer **out);
void tokenizer_free(tokenizer *tok);

/* Appends the ids of text[0..len) to out. add_special applies the
 * post-processor template (e.g. Llama's BOS), as transformers'
 * tokenizer(text) does by default. */
int tokenizer_encode(tokenizer *tok, const char *text, size_t len, int add_special,
                     tokenizer_ids *out);
/* Where each id of an encoding came from: text bytes [r[i][0], r[i][1]).
 * These are Hugging Face's offsets (offset_mapping) in bytes rather than
 * characters: a token made from part of a character (a byte-level or
 * byte-fallback token) covers the whole character, a token the normalizer
 * made from several characters covers the first of them, and the tokens the
 * post-processor template adds (BOS) cover [0, 0). Start from {0}; free with
 * tokenizer_offsets_free. */
typedef struct {
    uint32_t (*r)[2];
    size_t n, cap;
} tokenizer_offsets;

/* As tokenizer_encode, and appends one offset pair per id to offs. */
int tokenizer_encode_offsets(tokenizer *tok, const char *text, size_t len, int add_special,
                             tokenizer_ids *out, tokenizer_offsets *offs);
void tokenizer_offsets_free(tokenizer_offsets *offs);

/* Decodes ids into a malloc'd NUL-terminated string (*len excludes the NUL).
 * skip_special drops special tokens. Ids the tokenizer does not know are
 * skipped, as Hugging Face does. */
int tokenizer_decode(tokenizer *tok, const uint32_t *ids, size_t n, int skip_special, char **text,
                     size_t *len);

/* One more than the largest id of the vocabulary and the added tokens: the
 * number of rows an embedding table needs. */
uint32_t tokenizer_vocab_size(const tokenizer *tok);
/* Id of a token string (added tokens first, then the model vocabulary). */
int tokenizer_token_to_id(const tokenizer *tok, const char *token, size_t len, uint32_t *id);
/* The token string of an id (NULL when unknown); not NUL-terminated. */
const char *tokenizer_id_to_token(const tokenizer *tok, uint32_t id, size_t *len);
int tokenizer_is_special(const tokenizer *tok, uint32_t id);

void tokenizer_ids_free(tokenizer_ids *ids);
int tokenizer_ids_push(tokenizer_ids *ids, uint32_t id);

/* One code point of valid UTF-8 at s; *n gets its length in bytes. */
uint32_t tokenizer_utf8_decode(const char *s, size_t *n);
/* cp (at most U+10FFFF) as UTF-8 into out (4 bytes of room); returns its length. */
size_t tokenizer_utf8_encode(uint32_t cp, char *out);
/* Length of the longest valid UTF-8 prefix of s (len when all of s is valid). */
size_t tokenizer_utf8_valid_prefix(const char *s, size_t len);
/* Copies s into a malloc'd string where each maximal invalid subpart is
 * replaced by U+FFFD (Unicode 15 §3.9, the policy of Python's
 * bytes.decode(errors="replace") and Rust's from_utf8_lossy). */
int tokenizer_utf8_repair(const char *s, size_t len, char **out, size_t *out_len,
                          size_t *n_replaced);

/* A special token for tokenizer_save_bytelevel. */
typedef struct {
    const char *content;
    uint32_t id;
} tokenizer_special_token;

/* Writes a minimal byte-level BPE tokenizer.json: the 256 byte tokens of the
 * GPT-2 alphabet (ids 0..255), no merges, the GPT-2 pre-tokenizer regex, and
 * the given special tokens (ids >= 256, distinct). bos, when not NULL, names
 * one of them to put in front of every sequence (TemplateProcessing). Hugging
 * Face tokenizers and transformers load the file as it is. */
int tokenizer_save_bytelevel(const char *path, const tokenizer_special_token *specials,
                             size_t n_specials, const char *bos);

#endif
