/* tok_encode — text → ids, stage by stage as Hugging Face tokenizers does it
 * (tokenizer/mod.rs encode_single_sequence; added_vocabulary.rs
 * extract_and_normalize; pre_tokenizers/{byte_level,split,metaspace}.rs;
 * normalizer.rs; processors/template.rs). See tok_internal.h for the shape. */
#include "model/tokenizer/tok_internal.h"

#include "util/err.h"

#include <string.h>

/* ---- normalizers --------------------------------------------------------------- */

/* With offsets on, every buffer also carries its alignment (cur_al, tmp_al):
 * a prefix comes from the first character, a replacement from the text it
 * replaced, an NFC composite from its first character. */
int tok_normalize(tokenizer *t, const char *s, size_t len, tok_buf *out) {
    tok_buf *cur = out, *tmp = &t->norm_tmp;
    tok_align *cur_al = &t->norm_al, *tmp_al = &t->norm_tmp_al;
    int track = t->offs != NULL;
    cur->len = 0;
    cur_al->n = 0;
    if (tok_buf_put(cur, s, len) || (track && tok_align_copy(t, cur_al, s, len))) return -1;
    for (size_t k = 0; k < t->n_norms; k++) {
        const tok_norm *n = &t->norms[k];
        tmp->len = 0;
        tmp_al->n = 0;
        if (n->type == TOK_NORM_PREPEND) {
            if (cur->len == 0) continue; /* HF prepends to non-empty strings only */
            if (tok_buf_put(tmp, n->str, n->str_len) || tok_buf_put(tmp, cur->p, cur->len))
                return -1;
            if (track && tok_align_push(tmp_al, cur_al->a[0], cur_al->a[1], n->str_len)) return -1;
            for (size_t i = 0; track && i < cur->len; i++)
                if (tok_align_push(tmp_al, cur_al->a[2 * i], cur_al->a[2 * i + 1], 1)) return -1;
        } else if (n->type == TOK_NORM_REPLACE) {
            tok_events *ev = &t->scratch_ev;
            if (tok_pattern_events(t, &n->pat, cur->p, cur->len, ev)) return -1;
            for (size_t i = 0; i < ev->n; i++) {
                const tok_event *e = &ev->ev[i];
                if (e->match ? tok_buf_put(tmp, n->str, n->str_len)
                             : tok_buf_put(tmp, cur->p + e->start, e->end - e->start))
                    return -1;
                if (!track) continue;
                if (!e->match) {
                    for (size_t b = e->start; b < e->end; b++)
                        if (tok_align_push(tmp_al, cur_al->a[2 * b], cur_al->a[2 * b + 1], 1))
                            return -1;
                } else if (e->end > e->start) {
                    if (tok_align_push(tmp_al, cur_al->a[2 * e->start], cur_al->a[2 * e->end - 1],
                                       n->str_len))
                        return -1;
                } else { /* an empty match: the content belongs to the next character */
                    size_t b = e->start < cur->len ? e->start : cur->len - 1;
                    if (cur->len &&
                        tok_align_push(tmp_al, cur_al->a[2 * b], cur_al->a[2 * b + 1], n->str_len))
                        return -1;
                }
            }
        } else if (tok_nfc(cur->p, cur->len, tmp, track ? cur_al->a : NULL, tmp_al)) {
            return -1;
        }
        tok_buf swap = *cur;
        *cur = *tmp;
        *tmp = swap;
        tok_align swap_al = *cur_al;
        *cur_al = *tmp_al;
        *tmp_al = swap_al;
    }
    return 0;
}

/* ---- pre-tokenizers ------------------------------------------------------------- */

static int pretok(tokenizer *t, size_t k, const char *s, size_t len, int at_origin,
                  tokenizer_ids *out);

/* SplitDelimiterBehavior (tokenizer/normalizer.rs NormalizedString::split),
 * from the (offsets, is_match) list to the pieces. */
static int apply_behavior(const tok_events *ev, int behavior, int invert, tok_events *out) {
    out->n = 0;
    int prev_match = 0;
    if (behavior == TOK_SPLIT_MERGED_NEXT) { /* HF folds from the right */
        for (size_t i = ev->n; i-- > 0;) {
            tok_event e = ev->ev[i];
            int m = (int)e.match ^ invert;
            if (m && !prev_match && out->n)
                out->ev[out->n - 1].start = e.start;
            else if (tok_events_push(out, e.start, e.end, 0))
                return -1;
            prev_match = m;
        }
        for (size_t i = 0; i < out->n / 2; i++) {
            tok_event x = out->ev[i];
            out->ev[i] = out->ev[out->n - 1 - i];
            out->ev[out->n - 1 - i] = x;
        }
        return 0;
    }
    for (size_t i = 0; i < ev->n; i++) {
        tok_event e = ev->ev[i];
        int m = (int)e.match ^ invert;
        switch (behavior) {
            case TOK_SPLIT_ISOLATED:
                if (tok_events_push(out, e.start, e.end, 0)) return -1;
                break;
            case TOK_SPLIT_REMOVED:
                if (!m && tok_events_push(out, e.start, e.end, 0)) return -1;
                break;
            case TOK_SPLIT_MERGED_PREV:
                if (m && !prev_match && out->n)
                    out->ev[out->n - 1].end = e.end;
                else if (tok_events_push(out, e.start, e.end, 0))
                    return -1;
                break;
            default: /* TOK_SPLIT_CONTIGUOUS */
                if (m == prev_match && out->n)
                    out->ev[out->n - 1].end = e.end;
                else if (tok_events_push(out, e.start, e.end, 0))
                    return -1;
                break;
        }
        prev_match = m;
    }
    return 0;
}

/* Hands each non-empty piece to the next stage; HF drops empty splits. */
static int emit_pieces(tokenizer *t, size_t k, const char *s, const tok_events *pieces,
                       int at_origin, tokenizer_ids *out) {
    for (size_t i = 0; i < pieces->n; i++) {
        const tok_event *e = &pieces->ev[i];
        if (e->end > e->start &&
            pretok(t, k + 1, s + e->start, e->end - e->start, at_origin && e->start == 0, out))
            return -1;
    }
    return 0;
}

/* Metaspace: spaces become the replacement, which is prepended by scheme;
 * with split, each replacement starts a new piece (MergedWithNext). */
static int pretok_metaspace(tokenizer *t, size_t k, const char *s, size_t len, int at_origin,
                            tokenizer_ids *out) {
    const tok_pretok *p = &t->pretoks[k];
    tok_stage *st = &t->stages[k];
    st->text.len = 0;
    /* HF replaces the spaces first, then prepends unless the result already
     * starts with the replacement (so a leading space counts as one) */
    int starts = s[0] == ' ' || (len >= p->repl_len && !memcmp(s, p->repl, p->repl_len));
    int prepend = p->prepend_scheme == TOK_PREPEND_ALWAYS ||
                  (p->prepend_scheme == TOK_PREPEND_FIRST && at_origin);
    tok_align *al = &t->stage_al[k];
    int track = t->offs != NULL;
    uint32_t a0, a1;
    al->n = 0;
    if (!starts && prepend) { /* the prefix comes from the first character */
        if (tok_buf_put(&st->text, p->repl, p->repl_len)) return -1;
        if (track) { /* off_text is only set when offsets are asked for */
            tok_align_of(t, s, &a0, &a1);
            if (tok_align_push(al, a0, a1, p->repl_len)) return -1;
        }
    }
    for (size_t i = 0; i < len; i++) {
        const char *sp = memchr(s + i, ' ', len - i);
        size_t stop = sp ? (size_t)(sp - s) : len;
        if (tok_buf_put(&st->text, s + i, stop - i) ||
            (track && tok_align_copy(t, al, s + i, stop - i)))
            return -1;
        if (!sp) break;
        if (tok_buf_put(&st->text, p->repl, p->repl_len)) return -1;
        if (track) {
            tok_align_of(t, sp, &a0, &a1);
            if (tok_align_push(al, a0, a1, p->repl_len)) return -1;
        }
        i = stop;
    }
    const char *m = st->text.p;
    size_t n = st->text.len;
    if (!p->split) return pretok(t, k + 1, m, n, at_origin, out);
    st->ev.n = 0;
    size_t prev = 0;
    for (size_t i = 0; i + p->repl_len <= n;) {
        if (!memcmp(m + i, p->repl, p->repl_len)) {
            if (prev < i && tok_events_push(&st->ev, prev, i, 0)) return -1;
            if (tok_events_push(&st->ev, i, i + p->repl_len, 1)) return -1;
            i += p->repl_len;
            prev = i;
        } else {
            i += tok_utf8_len((unsigned char)m[i]);
        }
    }
    if (prev < n && tok_events_push(&st->ev, prev, n, 0)) return -1;
    if (apply_behavior(&st->ev, TOK_SPLIT_MERGED_NEXT, 0, &st->pieces)) return -1;
    return emit_pieces(t, k, m, &st->pieces, at_origin, out);
}

static int pretok(tokenizer *t, size_t k, const char *s, size_t len, int at_origin,
                  tokenizer_ids *out) {
    if (len == 0) return 0;
    if (k == t->n_pretoks) return tok_bpe_encode(t, s, len, out);
    const tok_pretok *p = &t->pretoks[k];
    tok_stage *st = &t->stages[k];
    switch (p->type) {
        case TOK_PRE_BYTELEVEL:
            if (p->add_prefix_space && s[0] != ' ') {
                st->text.len = 0;
                if (tok_buf_put(&st->text, " ", 1) || tok_buf_put(&st->text, s, len)) return -1;
                if (t->offs) { /* the space comes from the first character */
                    uint32_t a0, a1;
                    tok_align_of(t, s, &a0, &a1);
                    t->stage_al[k].n = 0;
                    if (tok_align_push(&t->stage_al[k], a0, a1, 1) ||
                        tok_align_copy(t, &t->stage_al[k], s, len))
                        return -1;
                }
                s = st->text.p;
                len = st->text.len;
            }
            if (!p->use_regex) return pretok(t, k + 1, s, len, at_origin, out);
            {
                tok_pattern re = {.is_regex = 1, .re = t->bytelevel_re};
                if (tok_pattern_events(t, &re, s, len, &st->ev)) return -1;
            }
            return emit_pieces(t, k, s, &st->ev, at_origin, out);
        case TOK_PRE_SPLIT:
            if (tok_pattern_events(t, &p->pat, s, len, &st->ev) ||
                apply_behavior(&st->ev, p->behavior, p->invert, &st->pieces))
                return -1;
            return emit_pieces(t, k, s, &st->pieces, at_origin, out);
        default:
            return pretok_metaspace(t, k, s, len, at_origin, out);
    }
}

/* ---- added tokens ------------------------------------------------------------------ */

/* Leftmost-longest match of m in s at or after `from` (Aho-Corasick's
 * MatchKind::LeftmostLongest). Returns the pattern index or -1. */
static long matcher_find(const tok_matcher *m, const char *s, size_t len, size_t from,
                         size_t *pos) {
    for (size_t i = from; i < len; i++) {
        unsigned b = (unsigned char)s[i];
        uint32_t lo = m->bucket_start[b], hi = m->bucket_start[b + 1];
        long best = -1;
        for (uint32_t k = lo; k < hi; k++)
            if (m->len[k] <= len - i && !memcmp(s + i, m->s[k], m->len[k]) &&
                (best < 0 || m->len[k] > m->len[best]))
                best = (long)k;
        if (best >= 0) {
            *pos = i;
            return best;
        }
    }
    return -1;
}

static int is_word_char(tokenizer *t, const char *s, size_t n) {
    return pcre2_match(t->word_re, (PCRE2_SPTR)s, n, 0, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, t->md,
                       t->mctx) >= 0;
}

static int normalize_and_split(tokenizer *t, const char *s, size_t len, int at_origin,
                               tokenizer_ids *out);

/* AddedVocabulary::find_matches + split_with_indices: the added tokens of m
 * become ids, the text between them goes on (normalized=0: to the normalizer,
 * normalized=1: to the pre-tokenizers). */
static int split_added(tokenizer *t, const tok_matcher *m, int normalized, const char *s,
                       size_t len, int at_origin, tokenizer_ids *out) {
    size_t start_offset = 0, from = 0, ms;
    long k;
    while (m->n && (k = matcher_find(m, s, len, from, &ms)) >= 0) {
        size_t start = ms, stop = ms + m->len[k];
        uint32_t id = m->id[k];
        from = stop; /* the automaton goes on after the match, whatever is kept */
        uint64_t idx = 0;
        tok_map64_get(&t->added_r, id, &idx);
        const tok_added *a = &t->added[idx];
        if (a->single_word) {
            /* a word character just before or after means "not a single word" */
            int word_before = 0;
            if (start > 0) {
                size_t c = start - 1;
                while (c > 0 && ((unsigned char)s[c] & 0xC0) == 0x80) c--;
                word_before = is_word_char(t, s + c, start - c);
            }
            int word_after =
                stop < len && is_word_char(t, s + stop, tok_utf8_len((unsigned char)s[stop]));
            if (word_before || word_after) continue;
        }
        if (a->lstrip) { /* take the white space before it, down to the last split */
            size_t b = start;
            while (b > 0) {
                size_t c = b - 1;
                while (c > 0 && ((unsigned char)s[c] & 0xC0) == 0x80) c--;
                size_t n;
                if (!tok_is_white_space(tok_utf8_decode(s + c, &n))) break;
                b = c;
            }
            start = b > start_offset ? b : start_offset;
        }
        if (a->rstrip) {
            while (stop < len) {
                size_t n;
                if (!tok_is_white_space(tok_utf8_decode(s + stop, &n))) break;
                stop += n;
            }
        }
        if (start_offset < start) {
            const char *piece = s + start_offset;
            size_t plen = start - start_offset;
            int origin = at_origin && start_offset == 0;
            if (normalized ? pretok(t, 0, piece, plen, origin, out)
                           : normalize_and_split(t, piece, plen, origin, out))
                return -1;
        }
        if (tokenizer_ids_push(out, id) || tok_offsets_emit(t, s + start, stop - start)) return -1;
        start_offset = stop;
    }
    if (start_offset < len) {
        const char *piece = s + start_offset;
        size_t plen = len - start_offset;
        int origin = at_origin && start_offset == 0;
        return normalized ? pretok(t, 0, piece, plen, origin, out)
                          : normalize_and_split(t, piece, plen, origin, out);
    }
    return 0;
}

static int normalize_and_split(tokenizer *t, const char *s, size_t len, int at_origin,
                               tokenizer_ids *out) {
    if (t->n_norms) {
        if (tok_normalize(t, s, len, &t->norm_buf)) return -1;
        s = t->norm_buf.p;
        len = t->norm_buf.len;
    }
    return split_added(t, &t->match_norm, 1, s, len, at_origin, out);
}

/* ---- public ------------------------------------------------------------------------- */

int tokenizer_encode(tokenizer *t, const char *text, size_t len, int add_special,
                     tokenizer_ids *out) {
    size_t valid = tokenizer_utf8_valid_prefix(text, len);
    if (valid != len)
        return err_set("%s: text is not valid UTF-8 (byte %zu of %zu); fix the data or repair it "
                       "with tokenizer_utf8_repair",
                       t->name, valid, len);
    if (len > UINT32_MAX / 4)
        return err_set("%s: text of %zu bytes is too long for one encode call (max %u)", t->name,
                       len, UINT32_MAX / 4);
    size_t n0 = out->n;
    int rc = 0;
    for (size_t i = 0; add_special && i < t->n_prefix && !rc; i++)
        rc = tokenizer_ids_push(out, t->tpl_prefix[i]) || tok_offsets_emit(t, NULL, 0);
    if (!rc && len) rc = split_added(t, &t->match_raw, 0, text, len, 1, out);
    for (size_t i = 0; add_special && i < t->n_suffix && !rc; i++)
        rc = tokenizer_ids_push(out, t->tpl_suffix[i]) || tok_offsets_emit(t, NULL, 0);
    if (rc) {
        out->n = n0;
        return err_context("%s: encoding %zu bytes", t->name, len);
    }
    return 0;
}
