/* tok_offsets — where each token of an encoding came from in the text, as
 * Hugging Face's Encoding.offsets (tokenizer/normalizer.rs alignments,
 * models/bpe/word.rs, processors/byte_level.rs process_offsets), in bytes.
 *
 * The text's pieces flow through the pipeline as pointers into the text or
 * into a derived buffer (the normalized text, a stage's text with a prefix
 * space or Metaspace's replacements). Each derived buffer carries an
 * alignment: for every byte, the text range of the character it came from.
 * A token's offsets are then the range from its first byte's start to its
 * last byte's end. Recording is off (and costs nothing) for tokenizer_encode. */
#include "model/tokenizer/tok_internal.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

int tok_align_push(tok_align *al, uint32_t start, uint32_t end, size_t count) {
    if (al->n + count > al->cap) {
        size_t cap = al->cap ? al->cap : 256;
        while (cap < al->n + count) cap *= 2;
        uint32_t *a = realloc(al->a, 2 * cap * sizeof *a);
        if (!a) return err_set("tokenizer: out of memory for offsets");
        al->a = a;
        al->cap = cap;
    }
    for (size_t i = 0; i < count; i++) {
        al->a[2 * (al->n + i)] = start;
        al->a[2 * (al->n + i) + 1] = end;
    }
    al->n += count;
    return 0;
}

static int within(const char *p, const tok_buf *b) {
    uintptr_t x = (uintptr_t)p, lo = (uintptr_t)b->p;
    return b->p && x >= lo && x < lo + b->len;
}

void tok_align_of(const tokenizer *t, const char *p, uint32_t *start, uint32_t *end) {
    const tok_align *al = NULL;
    size_t i = 0;
    if (within(p, &t->norm_buf)) {
        al = &t->norm_al;
        i = (size_t)(p - t->norm_buf.p);
    } else {
        for (size_t k = 0; k < t->n_pretoks && !al; k++)
            if (within(p, &t->stages[k].text)) {
                al = &t->stage_al[k];
                i = (size_t)(p - t->stages[k].text.p);
            }
    }
    if (al) {
        *start = al->a[2 * i];
        *end = al->a[2 * i + 1];
        return;
    }
    /* a byte of the text itself: the character around it */
    size_t a = (size_t)(p - t->off_text), b = a + 1;
    while (a > 0 && ((unsigned char)t->off_text[a] & 0xC0) == 0x80) a--;
    while (b < t->off_len && ((unsigned char)t->off_text[b] & 0xC0) == 0x80) b++;
    *start = (uint32_t)a;
    *end = (uint32_t)b;
}

int tok_align_copy(const tokenizer *t, tok_align *dst, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t a, b;
        tok_align_of(t, p + i, &a, &b);
        if (tok_align_push(dst, a, b, 1)) return -1;
    }
    return 0;
}

int tok_offsets_emit(tokenizer *t, const char *p, size_t n) {
    tokenizer_offsets *o = t->offs;
    if (!o) return 0;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 256;
        uint32_t(*r)[2] = realloc(o->r, cap * sizeof *r);
        if (!r) return err_set("tokenizer: out of memory for offsets");
        o->r = r;
        o->cap = cap;
    }
    uint32_t a = 0, b = 0, x;
    if (n) {
        tok_align_of(t, p, &a, &x);
        tok_align_of(t, p + n - 1, &x, &b);
    }
    o->r[o->n][0] = a;
    o->r[o->n][1] = b;
    o->n++;
    return 0;
}

/* processors/byte_level.rs process_offsets, for trim_offsets: a token's
 * leading and trailing spaces (U+0120 'Ġ' in the byte alphabet, or white
 * space) are not part of its offsets, except the one space add_prefix_space
 * put before the first token. */
static void trim(const tokenizer *t, const uint32_t *ids, size_t n, uint32_t (*r)[2]) {
    for (size_t i = 0; i < n; i++) {
        size_t len, lead = 0, trail = 0;
        const char *s = tokenizer_id_to_token(t, ids[i], &len);
        if (!s) continue;
        for (size_t k = 0; k < len;) {
            size_t m;
            uint32_t cp = tok_utf8_decode(s + k, &m);
            if (cp != 0x120 && !tok_is_white_space(cp)) break;
            lead++;
            k += m;
        }
        for (size_t k = len; k > 0;) {
            size_t c = k - 1, m;
            while (c > 0 && ((unsigned char)s[c] & 0xC0) == 0x80) c--;
            uint32_t cp = tok_utf8_decode(s + c, &m);
            if (cp != 0x120 && !tok_is_white_space(cp)) break;
            trail++;
            k = c;
        }
        if (lead && (i == 0 || r[i][0] == 0) && t->trim_prefix_space && lead == 1) lead = 0;
        if (lead) r[i][0] = r[i][0] + lead < r[i][1] ? r[i][0] + (uint32_t)lead : r[i][1];
        if (trail && r[i][1] >= trail)
            r[i][1] = r[i][1] - trail > r[i][0] ? r[i][1] - (uint32_t)trail : r[i][0];
    }
}

int tokenizer_encode_offsets(tokenizer *t, const char *text, size_t len, int add_special,
                             tokenizer_ids *out, tokenizer_offsets *offs) {
    size_t n0 = out->n, o0 = offs->n;
    t->offs = offs;
    t->off_text = text;
    t->off_len = len;
    int rc = tokenizer_encode(t, text, len, add_special, out);
    t->offs = NULL;
    if (rc == 0 && offs->n - o0 != out->n - n0)
        rc = err_set("%s: internal: %zu offsets for %zu ids", t->name, offs->n - o0, out->n - n0);
    if (rc != 0) {
        offs->n = o0;
        out->n = n0;
        return -1;
    }
    if (t->trim_offsets) trim(t, out->ids + n0, out->n - n0, offs->r + o0);
    return 0;
}

void tokenizer_offsets_free(tokenizer_offsets *offs) {
    free(offs->r);
    memset(offs, 0, sizeof *offs);
}
