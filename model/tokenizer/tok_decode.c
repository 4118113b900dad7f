/* tok_decode — ids → text, as Hugging Face tokenizers' Tokenizer::decode:
 * the ids become token strings, the decoder chain transforms the list
 * (the decode_chain of each decoder) and the result is concatenated. */
#include "model/tokenizer/tok_internal.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

/* A list of strings in one buffer: piece i is b.p[start[i] .. start[i]+len[i]). */
typedef struct {
    tok_buf b;
    size_t *start, *len;
    size_t n, cap;
} strlist;

static const char *piece(const strlist *l, size_t i) {
    return l->b.p ? l->b.p + l->start[i] : ""; /* all pieces empty: no buffer */
}

static void strlist_free(strlist *l) {
    tok_buf_free(&l->b);
    free(l->start);
    free(l->len);
    memset(l, 0, sizeof *l);
}

/* Starts a new (empty) piece; append to it with tok_buf_put(&l->b, ...) then
 * close it with piece_end. */
static int piece_begin(strlist *l) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        size_t *s = realloc(l->start, cap * sizeof *s);
        if (s) l->start = s;
        size_t *n = realloc(l->len, cap * sizeof *n);
        if (n) l->len = n;
        if (!s || !n) return err_set("tokenizer: out of memory decoding");
        l->cap = cap;
    }
    l->start[l->n] = l->b.len;
    return 0;
}

static void piece_end(strlist *l) {
    l->len[l->n] = l->b.len - l->start[l->n];
    l->n++;
}

static int piece_push(strlist *l, const char *s, size_t n) {
    if (piece_begin(l) || tok_buf_put(&l->b, s, n)) return -1;
    piece_end(l);
    return 0;
}

/* Appends s with invalid UTF-8 replaced by U+FFFD (String::from_utf8_lossy). */
static int put_lossy(tok_buf *b, const char *s, size_t n) {
    char *fixed;
    size_t fixed_len;
    if (tokenizer_utf8_repair(s, n, &fixed, &fixed_len, NULL)) return -1;
    int rc = tok_buf_put(b, fixed, fixed_len);
    free(fixed);
    return rc;
}

static int hex_digit(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* "<0xNN>" → byte; the two characters parse as Rust's u8::from_str_radix(_, 16),
 * which also takes a leading '+'. */
static int fallback_byte(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    if (s[3] == '+') return hex_digit(s[4]);
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static int apply(tokenizer *t, const tok_dec *d, const strlist *in, strlist *out) {
    out->n = 0;
    out->b.len = 0;
    char u8[4];
    size_t ulen = d->ch ? tok_utf8_encode(d->ch, u8) : 0;
    switch (d->type) {
        case TOK_DEC_BYTELEVEL: { /* every token's alphabet chars back to bytes */
            tok_buf raw = {0};
            int rc = 0;
            for (size_t i = 0; i < in->n && !rc; i++) {
                const char *s = piece(in, i);
                size_t n = in->len[i], at = raw.len, k = 0;
                rc = tok_buf_reserve(&raw, n);
                while (!rc && k < n) {
                    size_t cl;
                    int byte = tok_cp_to_byte(tok_utf8_decode(s + k, &cl));
                    if (byte < 0) break;
                    raw.p[raw.len++] = (char)byte;
                    k += cl;
                }
                if (!rc && k < n) { /* a char outside the alphabet: the token as it is */
                    raw.len = at;
                    rc = tok_buf_put(&raw, s, n);
                }
            }
            if (!rc) rc = piece_begin(out) || put_lossy(&out->b, raw.p, raw.len);
            if (!rc) piece_end(out);
            tok_buf_free(&raw);
            return rc;
        }
        case TOK_DEC_BYTEFALLBACK: {
            tok_buf bytes = {0};
            int rc = 0;
            for (size_t i = 0; i <= in->n && !rc; i++) {
                int byte = i < in->n ? fallback_byte(piece(in, i), in->len[i]) : -1;
                if (byte >= 0) {
                    char c = (char)byte;
                    rc = tok_buf_put(&bytes, &c, 1);
                    continue;
                }
                if (bytes.len) { /* valid UTF-8 as one piece, else U+FFFD per byte */
                    if (tokenizer_utf8_valid_prefix(bytes.p, bytes.len) == bytes.len) {
                        rc = piece_push(out, bytes.p, bytes.len);
                    } else {
                        for (size_t k = 0; k < bytes.len && !rc; k++)
                            rc = piece_push(out, "\xEF\xBF\xBD", 3);
                    }
                    bytes.len = 0;
                }
                if (!rc && i < in->n) rc = piece_push(out, piece(in, i), in->len[i]);
            }
            tok_buf_free(&bytes);
            return rc;
        }
        case TOK_DEC_FUSE:
            if (piece_begin(out)) return -1;
            for (size_t i = 0; i < in->n; i++)
                if (tok_buf_put(&out->b, piece(in, i), in->len[i])) return -1;
            piece_end(out);
            return 0;
        case TOK_DEC_REPLACE:
            for (size_t i = 0; i < in->n; i++) {
                tok_events *ev = &t->scratch_ev;
                const char *s = piece(in, i);
                if (tok_pattern_events(t, &d->pat, s, in->len[i], ev) || piece_begin(out))
                    return -1;
                for (size_t k = 0; k < ev->n; k++)
                    if (ev->ev[k].match ? tok_buf_put(&out->b, d->str, d->str_len)
                                        : tok_buf_put(&out->b, s + ev->ev[k].start,
                                                      ev->ev[k].end - ev->ev[k].start))
                        return -1;
                piece_end(out);
            }
            return 0;
        case TOK_DEC_STRIP:
            for (size_t i = 0; i < in->n; i++) {
                const char *s = piece(in, i);
                size_t n = in->len[i], a = 0, z = n;
                for (size_t k = 0; k < d->start && a < n && !memcmp(s + a, u8, ulen); k++)
                    a += ulen;
                for (size_t k = 0; k < d->stop && z >= a + ulen && !memcmp(s + z - ulen, u8, ulen);
                     k++)
                    z -= ulen;
                if (piece_push(out, s + a, z - a)) return -1;
            }
            return 0;
        default: /* TOK_DEC_METASPACE: replacement → ' ', dropped in the first token */
            for (size_t i = 0; i < in->n; i++) {
                const char *s = piece(in, i);
                size_t n = in->len[i];
                if (piece_begin(out)) return -1;
                for (size_t k = 0; k < n;) {
                    size_t cl = tok_utf8_len((unsigned char)s[k]);
                    if (cl == ulen && !memcmp(s + k, u8, ulen)) {
                        if ((i > 0 || d->prepend_scheme == TOK_PREPEND_NEVER) &&
                            tok_buf_put(&out->b, " ", 1))
                            return -1;
                    } else if (tok_buf_put(&out->b, s + k, cl)) {
                        return -1;
                    }
                    k += cl;
                }
                piece_end(out);
            }
            return 0;
    }
}

int tokenizer_decode(tokenizer *tok, const uint32_t *ids, size_t n, int skip_special, char **text,
                     size_t *len) {
    tokenizer *t = tok; /* shares the pattern scratch with encode */
    *text = NULL;
    *len = 0;
    strlist a = {0}, b = {0};
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (ids[i] >= t->n_ids || !t->id_str[ids[i]]) continue;
        if (skip_special && t->id_special[ids[i]]) continue;
        rc = piece_push(&a, t->id_str[ids[i]], t->id_len[ids[i]]);
    }
    for (size_t k = 0; k < t->n_decs && !rc; k++) {
        rc = apply(t, &t->decs[k], &a, &b);
        strlist swap = a;
        a = b;
        b = swap;
    }
    tok_buf res = {0};
    for (size_t i = 0; i < a.n && !rc; i++) {
        if (!t->has_decoder && i > 0) rc = tok_buf_put(&res, " ", 1); /* HF: join(" ") */
        if (!rc) rc = tok_buf_put(&res, piece(&a, i), a.len[i]);
    }
    if (!rc) rc = tok_buf_put(&res, "", 1);
    strlist_free(&a);
    strlist_free(&b);
    if (rc) {
        tok_buf_free(&res);
        return err_context("%s: decoding %zu ids", t->name, n);
    }
    *text = res.p;
    *len = res.len - 1;
    return 0;
}
