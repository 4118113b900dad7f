/* tok_regex — the regexes and literal patterns of tokenizer.json, on PCRE2.
 *
 * Hugging Face tokenizers runs these regexes with Oniguruma. PCRE2 (UTF + UCP)
 * agrees on the constructs tokenizers use (\p{L}, \p{N}, lookahead, (?i:...),
 * possessive and lazy repeats); the escapes whose classes differ are rewritten
 * first so that they match what Oniguruma matches:
 *   \s  Oniguruma: Unicode White_Space. PCRE2 adds U+180E (Mongolian vowel
 *       separator) through \h, so \s becomes an explicit White_Space class.
 *   \w  Oniguruma: Letter | Mark | Decimal_Number | Connector_Punctuation;
 *       PCRE2 10.42: Letter | Number | '_'.
 *   \h  Oniguruma: a hexadecimal digit; PCRE2: horizontal white space.
 * Negated forms (\S \W \H) become negated classes outside a character class;
 * inside one, \S and \W keep PCRE2's meaning and \H is refused. */
#include "model/tokenizer/tok_internal.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

#define WS_BODY                                                                                    \
    "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}" \
    "\\x{3000}"
#define WORD_BODY "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"
#define HEX_BODY "0-9a-fA-F"

/* Rewrites an Oniguruma pattern into out (see the comment at the top). */
static int regex_rewrite(const char *pat, size_t len, const char *where, tok_buf *out) {
    int depth = 0; /* character class nesting (Oniguruma allows nested classes) */
    size_t i = 0;
    while (i < len) {
        char c = pat[i];
        if (c == '\\' && i + 1 < len) {
            char e = pat[i + 1];
            const char *body = e == 's' || e == 'S'   ? WS_BODY
                               : e == 'w' || e == 'W' ? WORD_BODY
                               : e == 'h' || e == 'H' ? HEX_BODY
                                                      : NULL;
            int negated = e == 'S' || e == 'W' || e == 'H';
            if (body && depth == 0) {
                if (tok_buf_put(out, negated ? "[^" : "[", negated ? 2 : 1) ||
                    tok_buf_put(out, body, strlen(body)) || tok_buf_put(out, "]", 1))
                    return -1;
            } else if (body && !negated) {
                if (tok_buf_put(out, body, strlen(body))) return -1;
            } else if (body && e == 'H') {
                return err_set("%s: \\H inside a character class is not supported", where);
            } else if (e == 'Q') { /* \Q...\E: copied untouched */
                const char *end = memmem(pat + i, len - i, "\\E", 2);
                size_t stop = end ? (size_t)(end - pat) + 2 : len;
                if (tok_buf_put(out, pat + i, stop - i)) return -1;
                i = stop;
                continue;
            } else if (tok_buf_put(out, pat + i, 2)) {
                return -1;
            }
            i += 2;
            continue;
        }
        if (c == '[') {
            if (depth > 0 && i + 1 < len && pat[i + 1] == ':') { /* POSIX [:alpha:] */
                const char *end = memmem(pat + i, len - i, ":]", 2);
                size_t stop = end ? (size_t)(end - pat) + 2 : len;
                if (tok_buf_put(out, pat + i, stop - i)) return -1;
                i = stop;
                continue;
            }
            depth++;
            if (tok_buf_put(out, "[", 1)) return -1;
            i++;
            if (i < len && pat[i] == '^') {
                if (tok_buf_put(out, "^", 1)) return -1;
                i++;
            }
            if (i < len && pat[i] == ']') { /* a leading ] is a literal */
                if (tok_buf_put(out, "]", 1)) return -1;
                i++;
            }
            continue;
        }
        if (c == ']' && depth > 0) depth--;
        if (tok_buf_put(out, &c, 1)) return -1;
        i++;
    }
    return 0;
}

int tok_regex_compile(const char *pat, size_t len, const char *where, pcre2_code **out) {
    *out = NULL;
    tok_buf rw = {0};
    if (regex_rewrite(pat, len, where, &rw)) {
        tok_buf_free(&rw);
        return -1;
    }
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(rw.p ? rw.p : ""), rw.len, PCRE2_UTF | PCRE2_UCP,
                                   &code, &off, NULL);
    tok_buf_free(&rw);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return err_set("%s: regex '%.*s' does not compile with PCRE2: %s (at offset %zu)", where,
                       (int)(len > 200 ? 200 : len), pat, (const char *)msg, (size_t)off);
    }
    /* JIT makes matching several times faster; where it is unavailable
     * (some architectures, hardened kernels) the interpreter is used. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return 0;
}

int tok_pattern_parse(json_t *j, const char *where, tok_pattern *p) {
    memset(p, 0, sizeof *p);
    json_t *s = json_is_object(j) ? json_object_get(j, "String") : NULL;
    json_t *r = json_is_object(j) ? json_object_get(j, "Regex") : NULL;
    if (json_is_string(s)) {
        if (json_string_length(s) == 0)
            return err_set("%s: empty String pattern; use a non-empty string", where);
        p->lit_len = json_string_length(s);
        p->lit = malloc(p->lit_len);
        if (!p->lit) return err_set("%s: out of memory", where);
        memcpy(p->lit, json_string_value(s), p->lit_len);
        return 0;
    }
    if (json_is_string(r)) {
        p->is_regex = 1;
        return tok_regex_compile(json_string_value(r), json_string_length(r), where, &p->re);
    }
    return err_set("%s: pattern must be {\"String\": ...} or {\"Regex\": ...}", where);
}

void tok_pattern_free(tok_pattern *p) {
    free(p->lit);
    pcre2_code_free(p->re);
    memset(p, 0, sizeof *p);
}

int tok_events_push(tok_events *e, size_t start, size_t end, int match) {
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 64;
        tok_event *p = realloc(e->ev, cap * sizeof *p);
        if (!p) return err_set("tokenizer: out of memory for %zu splits", cap);
        e->ev = p;
        e->cap = cap;
    }
    e->ev[e->n++] = (tok_event){(uint32_t)start, (uint32_t)end, (uint32_t)match};
    return 0;
}

int tok_pattern_events(struct tokenizer *t, const tok_pattern *p, const char *s, size_t len,
                       tok_events *out) {
    out->n = 0;
    if (len == 0) return tok_events_push(out, 0, 0, 0);
    size_t prev = 0;
    if (!p->is_regex) {
        size_t pos = 0;
        const char *hit;
        while (pos < len && (hit = memmem(s + pos, len - pos, p->lit, p->lit_len))) {
            size_t ms = (size_t)(hit - s);
            if (prev != ms && tok_events_push(out, prev, ms, 0)) return -1;
            if (tok_events_push(out, ms, ms + p->lit_len, 1)) return -1;
            prev = pos = ms + p->lit_len;
        }
    } else {
        /* Oniguruma's find_iter (Rust onig crate, FindMatches): an empty match
         * right where the previous match ended is skipped by one character. */
        size_t last_end = 0, last_match_end = SIZE_MAX;
        while (last_end <= len) {
            int rc = pcre2_match(p->re, (PCRE2_SPTR)s, len, last_end, PCRE2_NO_UTF_CHECK, t->md,
                                 t->mctx);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return err_set("%s: regex match failed on a %zu-byte piece: %s", t->name, len,
                               (const char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
            size_t ms = ov[0], me = ov[1];
            if (me < ms || ms < prev || me > len)
                return err_set("%s: regex produced an unusable match (\\K?)", t->name);
            if (ms == me && last_match_end == me) {
                last_end += last_end < len ? tok_utf8_len((unsigned char)s[last_end]) : 1;
                continue;
            }
            last_end = last_match_end = me;
            if (prev != ms && tok_events_push(out, prev, ms, 0)) return -1;
            if (tok_events_push(out, ms, me, 1)) return -1;
            prev = me;
        }
    }
    if (prev != len && tok_events_push(out, prev, len, 0)) return -1;
    return 0;
}
