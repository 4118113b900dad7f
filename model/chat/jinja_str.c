/* jinja_str — UTF-8 helpers for Python's string operations, which count and
 * index code points, not bytes. Every string a render sees is valid UTF-8
 * (JSON strings are checked by jansson, template literals by the lexer). */
#include "model/chat/jinja_internal.h"

#include <string.h>

/* Python's str.isspace(): characters whose bidirectional class is WS, B or S,
 * or whose category is Zs (Objects/unicodetype_db.h). The same set is what
 * str.strip(), str.split() and the re module's \s use for str patterns. */
int jstr_is_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x1f);
    switch (cp) {
        case 0x85:
        case 0xa0:
        case 0x1680:
        case 0x2028:
        case 0x2029:
        case 0x202f:
        case 0x205f:
        case 0x3000:
            return 1;
        default:
            return cp >= 0x2000 && cp <= 0x200a;
    }
}

size_t jstr_count_cp(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += ((unsigned char)s[i] & 0xc0) != 0x80;
    return n;
}

size_t jstr_cp_offset(const char *s, size_t len, size_t i) {
    size_t off = 0;
    for (size_t k = 0; k < i && off < len; k++) {
        off++;
        while (off < len && ((unsigned char)s[off] & 0xc0) == 0x80) off++;
    }
    return off;
}

size_t jv_str_ncp(jv s) {
    if (s.u.s->ncp == SIZE_MAX) s.u.s->ncp = jstr_count_cp(s.u.s->s, s.u.s->len);
    return s.u.s->ncp;
}

/* Is code point cp one of chars (a UTF-8 string of n bytes)? */
static int in_chars(uint32_t cp, const char *chars, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t k;
        if (tokenizer_utf8_decode(chars + i, &k) == cp) return 1;
        i += k;
    }
    return 0;
}

static int strippable(uint32_t cp, const char *chars, size_t nchars) {
    return chars ? in_chars(cp, chars, nchars) : jstr_is_space(cp);
}

void jstr_strip(const char *s, size_t len, const char *chars, size_t nchars, int which,
                size_t *from, size_t *to) {
    size_t a = 0, b = len;
    if (which & 1)
        while (a < b) {
            size_t k;
            if (!strippable(tokenizer_utf8_decode(s + a, &k), chars, nchars)) break;
            a += k;
        }
    if (which & 2)
        while (b > a) {
            size_t c = b - 1, k;
            while (c > a && ((unsigned char)s[c] & 0xc0) == 0x80) c--;
            if (!strippable(tokenizer_utf8_decode(s + c, &k), chars, nchars)) break;
            b = c;
        }
    *from = a;
    *to = b;
}

int jstr_non_ascii(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] >= 0x80) return 1;
    return 0;
}

void jinja_py_strip(const char *s, size_t len, int which, size_t *from, size_t *to) {
    jstr_strip(s, len, NULL, 0, which, from, to);
}
