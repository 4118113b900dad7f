/* tok_internal — what the tokenizer's source files share (not a public API).
 *
 * Internal names use the prefix tok_; the public API in tokenizer.h uses
 * tokenizer_. The pipeline mirrors Hugging Face tokenizers' encode:
 *   text → split on non-normalized added tokens → normalize each piece →
 *   split on normalized added tokens → pre-tokenizers (each one splits the
 *   pieces further) → BPE on each final piece → post-processor template.
 * Pieces are never materialised as a list for the whole text: each stage
 * hands its pieces to the next one as it finds them (depth-first), so memory
 * is bounded by the longest piece, not by the text. */
#ifndef FL_MODEL_TOK_INTERNAL_H
#define FL_MODEL_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer/tokenizer.h"

#define TOK_NONE UINT32_MAX
/* Ids and counts are bounded so that untrusted files cannot ask for huge
 * tables: 2^24 ids is 16.7 M, far above any real vocabulary (Gemma: 262 k). */
#define TOK_MAX_ID (1u << 24)
#define TOK_MAX_ADDED (1u << 20)
#define TOK_MAX_STAGES 16 /* pre-tokenizers, normalizers or decoders in a chain */

/* ---- growable byte buffer -------------------------------------------------- */
typedef struct {
    char *p;
    size_t len, cap;
} tok_buf;
int tok_buf_reserve(tok_buf *b, size_t extra);
int tok_buf_put(tok_buf *b, const void *data, size_t n);
void tok_buf_free(tok_buf *b);

/* ---- hashing and maps ---------------------------------------------------------- */
uint64_t tok_hash(const void *data, size_t n);

/* Strings → u32, keys copied into an arena. Open addressing, power-of-two size. */
typedef struct {
    uint32_t *slots; /* entry index + 1; 0 = empty */
    size_t mask;
    uint32_t *key_off, *key_len, *val;
    size_t n, cap;
    tok_buf arena;
} tok_strmap;
/* Inserts or overwrites; *index gets the entry index (may be NULL). */
int tok_strmap_put(tok_strmap *m, const char *k, size_t n, uint32_t val, size_t *index);
int tok_strmap_get(const tok_strmap *m, const char *k, size_t n, uint32_t *val);
const char *tok_strmap_key(const tok_strmap *m, size_t index, size_t *len);
void tok_strmap_free(tok_strmap *m);

/* u64 → u64; the key UINT64_MAX is reserved (ids never reach it). */
typedef struct {
    uint64_t *keys, *vals;
    size_t mask, n;
} tok_map64;
int tok_map64_put(tok_map64 *m, uint64_t key, uint64_t val);
static inline size_t tok_map64_slot(uint64_t key, size_t mask) {
    key ^= key >> 33;
    key *= 0xFF51AFD7ED558CCDull;
    key ^= key >> 33;
    return (size_t)key & mask;
}
/* Inline: BPE looks up every candidate pair here. */
static inline int tok_map64_get(const tok_map64 *m, uint64_t key, uint64_t *val) {
    if (!m->mask) return 0;
    size_t h = tok_map64_slot(key, m->mask);
    while (m->keys[h] != UINT64_MAX) {
        if (m->keys[h] == key) {
            *val = m->vals[h];
            return 1;
        }
        h = (h + 1) & m->mask;
    }
    return 0;
}
void tok_map64_free(tok_map64 *m);

/* ---- UTF-8 and Unicode helpers --------------------------------------------------- */
/* Length of the (valid) UTF-8 sequence starting with byte c. */
static inline size_t tok_utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}
/* Decodes one character of valid UTF-8; *n gets its length. */
uint32_t tok_utf8_decode(const char *s, size_t *n);
size_t tok_utf8_encode(uint32_t cp, char *out);
/* Unicode White_Space (Rust's char::is_whitespace, Oniguruma's \s). */
int tok_is_white_space(uint32_t cp);

/* GPT-2's byte <-> unicode alphabet (bytes_to_unicode in openai/gpt-2 encoder.py):
 * the 188 printable bytes map to themselves, the other 68 to U+0100 + n in
 * byte order (0..32 -> U+0100..U+0120, 127..160 -> U+0121..U+0142, 173 -> U+0143). */
static inline int tok_byte_printable(unsigned b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}
static inline uint32_t tok_byte_to_cp(unsigned b) {
    return tok_byte_printable(b) ? b : b <= 32 ? 256 + b : b <= 160 ? b + 162 : 323;
}
/* The byte of an alphabet code point, or -1. */
static inline int tok_cp_to_byte(uint32_t cp) {
    if (cp < 256) return tok_byte_printable(cp) ? (int)cp : -1;
    if (cp <= 288) return (int)(cp - 256);
    if (cp <= 322) return (int)(cp - 162);
    return cp == 323 ? 173 : -1;
}

/* ---- patterns (HF SplitPattern: {"String": ...} or {"Regex": ...}) ---------------- */
typedef struct {
    int is_regex;
    char *lit; /* String pattern (never empty) */
    size_t lit_len;
    pcre2_code *re;
} tok_pattern;

/* One (start, end, is_match) slice of a piece, as HF's Pattern::find_matches. */
typedef struct {
    uint32_t start, end;
    uint32_t match;
} tok_event;

typedef struct {
    tok_event *ev;
    size_t n, cap;
} tok_events;

struct tokenizer;
/* Compiles an Oniguruma-syntax regex (as tokenizer.json has it) with PCRE2
 * UTF + UCP, after rewriting the escapes whose meaning differs (\s \S \w \W \h). */
int tok_regex_compile(const char *pat, size_t len, const char *where, pcre2_code **out);
int tok_pattern_parse(json_t *j, const char *where, tok_pattern *p);
void tok_pattern_free(tok_pattern *p);
/* Covers s[0..len) with events: the gaps (match 0) and matches (match 1),
 * exactly as HF does (Oniguruma's find_iter rules for empty matches). */
int tok_pattern_events(struct tokenizer *t, const tok_pattern *p, const char *s, size_t len,
                       tok_events *out);
int tok_events_push(tok_events *e, size_t start, size_t end, int match);

/* ---- offsets (tokenizer_encode_offsets, tok_offsets.c) ---------------------------- */
/* Alignment of a buffer derived from the text (normalized, with a prefix
 * space, Metaspace's): its byte i came from text bytes [a[2i], a[2i + 1]). */
typedef struct {
    uint32_t *a;
    size_t n, cap;
} tok_align;

struct tokenizer;
int tok_align_push(tok_align *al, uint32_t start, uint32_t end, size_t count);
/* The text range byte p came from (p is in the text or in a derived buffer). */
void tok_align_of(const struct tokenizer *t, const char *p, uint32_t *start, uint32_t *end);
/* Appends the alignment of the n bytes at p. */
int tok_align_copy(const struct tokenizer *t, tok_align *dst, const char *p, size_t n);
/* While offsets are recorded: the offsets of a token made of bytes [p, p + n)
 * of a piece, or of one with no text (n 0). */
int tok_offsets_emit(struct tokenizer *t, const char *p, size_t n);

/* ---- components ----------------------------------------------------------------- */
enum { TOK_NORM_PREPEND, TOK_NORM_REPLACE, TOK_NORM_NFC };
typedef struct {
    int type;
    char *str; /* Prepend: the prefix; Replace: the content */
    size_t str_len;
    tok_pattern pat; /* Replace */
} tok_norm;

enum { TOK_PRE_BYTELEVEL, TOK_PRE_SPLIT, TOK_PRE_METASPACE };
enum {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS
};
enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };
typedef struct {
    int type;
    int add_prefix_space, use_regex; /* ByteLevel */
    tok_pattern pat;                 /* Split */
    int behavior, invert;            /* Split */
    char repl[4];                    /* Metaspace replacement character, UTF-8 */
    size_t repl_len;
    int prepend_scheme, split; /* Metaspace */
} tok_pretok;

enum {
    TOK_DEC_BYTELEVEL,
    TOK_DEC_METASPACE,
    TOK_DEC_REPLACE,
    TOK_DEC_BYTEFALLBACK,
    TOK_DEC_FUSE,
    TOK_DEC_STRIP
};
typedef struct {
    int type;
    tok_pattern pat; /* Replace */
    char *str;       /* Replace: content */
    size_t str_len;
    uint32_t ch; /* Strip: content; Metaspace: replacement */
    size_t start, stop;
    int prepend_scheme;
} tok_dec;

typedef struct {
    char *content;
    size_t len;
    char *shown; /* id_to_token: for a normalized token, its normalized content */
    size_t shown_len;
    uint8_t single_word, lstrip, rstrip, normalized, special;
} tok_added;

/* Added-token patterns for one of the two passes (raw text, normalized text),
 * bucketed by first byte: leftmost-longest matching as Aho-Corasick does. */
typedef struct {
    char **s;
    size_t *len;
    uint32_t *id;
    size_t n;
    uint32_t bucket_start[257]; /* patterns sorted by first byte */
} tok_matcher;

/* Scratch of one pre-tokenizer stage (see the comment at the top). */
typedef struct {
    tok_buf text;
    tok_events ev;
    tok_events pieces;
} tok_stage;

/* Direct-mapped cache of pre-token → ids, for short and frequent pre-tokens. */
#define TOK_CACHE_SLOTS 32768
#define TOK_CACHE_KEY_MAX 46
#define TOK_CACHE_IDS_MAX 12
typedef struct {
    uint64_t hash;
    uint8_t key_len, n_ids;
    char key[TOK_CACHE_KEY_MAX];
    uint32_t ids[TOK_CACHE_IDS_MAX];
} tok_cache_slot;

/* A candidate merge in the BPE heap: the pair at pos would merge into id. */
typedef struct {
    uint32_t rank, pos, id;
} tok_heap_ent;

struct tokenizer {
    char name[256];

    /* model (BPE) */
    tok_strmap vocab; /* model.vocab: token string → id */
    tok_map64 merges; /* (left id << 32 | right id) → (rank << 32 | merged id) */
    int byte_level;   /* a ByteLevel pre-tokenizer maps bytes into the GPT-2 alphabet */
    int fuse_unk, byte_fallback, ignore_merges;
    uint32_t unk_id;        /* TOK_NONE: no unk_token */
    uint32_t fallback[256]; /* byte_fallback: id of "<0xNN>", TOK_NONE if missing */
    uint32_t unit_id[256];  /* byte mode: id of each byte's alphabet character;
                               char mode: id of each ASCII character */

    /* added vocabulary, in HF's AddedVocabulary terms */
    tok_strmap added_map; /* content → id */
    tok_map64 added_r;    /* id → index in added[] */
    tok_added *added;
    size_t n_added, cap_added;
    tok_strmap special_set; /* contents of special tokens */
    tok_matcher match_raw, match_norm;
    pcre2_code *word_re; /* Rust regex \w, for single_word tokens */

    /* pipeline */
    tok_norm norms[TOK_MAX_STAGES];
    size_t n_norms;
    tok_pretok pretoks[TOK_MAX_STAGES];
    size_t n_pretoks;
    tok_dec decs[TOK_MAX_STAGES];
    size_t n_decs;
    int has_decoder;
    uint32_t *tpl_prefix, *tpl_suffix; /* TemplateProcessing single: ids around $A */
    size_t n_prefix, n_suffix;
    pcre2_code *bytelevel_re; /* the GPT-2 regex of the ByteLevel pre-tokenizer */

    /* id → token string (added vocabulary first, as HF's id_to_token) */
    uint32_t n_ids;
    const char **id_str;
    uint32_t *id_len;
    uint8_t *id_special;

    /* scratch for encode */
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    tok_buf norm_buf, norm_tmp, word_key;
    tok_stage stages[TOK_MAX_STAGES];
    tok_events scratch_ev; /* matches of a Replace pattern (normalizer, decoder) */
    uint32_t *sym_id;
    int32_t *sym_prev, *sym_next;
    tok_heap_ent *heap;
    size_t sym_cap, heap_cap;
    tok_cache_slot *cache;

    /* offsets: recorded while tokenizer_encode_offsets runs (offs != NULL) */
    tokenizer_offsets *offs;
    const char *off_text;
    size_t off_len;
    tok_align norm_al, norm_tmp_al, stage_al[TOK_MAX_STAGES];
    uint32_t *sym_start, *sym_end;       /* BPE: each symbol's bytes in the piece */
    int trim_offsets, trim_prefix_space; /* a ByteLevel post-processor's trim_offsets */
};

/* tok_bpe.c */
int tok_bpe_encode(struct tokenizer *t, const char *s, size_t len, tokenizer_ids *out);
/* tok_encode.c */
int tok_normalize(struct tokenizer *t, const char *s, size_t len, tok_buf *out);
/* tok_nfc.c: appends the NFC form of valid UTF-8 s to out. With in_al (the
 * alignment of s, 2 per byte) also appends out's alignment to out_al: a
 * composed character comes from the first character composed into it. */
int tok_nfc(const char *s, size_t len, tok_buf *out, const uint32_t *in_al, tok_align *out_al);

#endif
