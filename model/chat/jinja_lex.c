/* jinja_lex — template source → tokens, rule for rule as Jinja2's lexer.py
 * (Lexer.tokeniter and wrap, Jinja2 3.1) with the options transformers sets:
 * trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False.
 *
 *   - "\r\n" and "\r" become "\n", and one final newline is dropped.
 *   - {%- / {{- / {#- strip all white space before the tag; -%} / -}} / -#}
 *     all white space after it (Python's \s: Unicode white space).
 *   - trim_blocks: one "\n" right after %} or #} is dropped.
 *   - lstrip_blocks: spaces and tabs (any white space but "\n") from the start
 *     of a line up to {% or {# are dropped, unless the tag starts with {%+.
 *   - {% raw %} … {% endraw %} is data.
 * Inside tags: white space, floats, integers, names, strings, operators; a
 * }} or %} ends the tag only when brackets are balanced. */
#include "model/chat/jinja_internal.h"

#include "util/err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s; /* the source with newlines normalized */
    size_t len, pos;
    const char *name;
    jarena *a;
    jtoken *toks;
    size_t n, cap;
    char bal[256]; /* expected closing brackets */
    size_t nbal;
    int line_starting; /* the previous match ended with "\n" */
    size_t line_pos;   /* line numbers: the line at line_pos, counted forward */
    int line;
} lexer;

static int line_at(lexer *L, size_t pos) {
    if (pos < L->line_pos) L->line_pos = 0, L->line = 1;
    for (; L->line_pos < pos && L->line_pos < L->len; L->line_pos++)
        L->line += L->s[L->line_pos] == '\n';
    return L->line;
}

static int lex_err(lexer *L, size_t pos, const char *fmt, const char *arg) {
    char msg[300];
    snprintf(msg, sizeof msg, fmt, arg);
    return err_set("%s:%d: %s", L->name, line_at(L, pos), msg);
}

static int push(lexer *L, int type, size_t pos, const char *s, size_t len) {
    if (L->n == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        jtoken *t = realloc(L->toks, cap * sizeof *t);
        if (!t) return err_set("out of memory lexing %s", L->name);
        L->toks = t;
        L->cap = cap;
    }
    jtoken *t = &L->toks[L->n++];
    memset(t, 0, sizeof *t);
    t->type = (uint8_t)type;
    t->line = line_at(L, pos);
    if (s) {
        char *copy = jarena_alloc(L->a, len + 1);
        if (!copy) return -1;
        memcpy(copy, s, len);
        t->s = copy;
        t->len = len;
    }
    return 0;
}

/* Length of the Python white space (\s) run at s[0..len). */
static size_t space_run(const char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t k;
        if (!jstr_is_space(tokenizer_utf8_decode(s + i, &k))) break;
        i += k;
    }
    return i;
}

static int at(const lexer *L, size_t pos, const char *lit) {
    size_t n = strlen(lit);
    return pos + n <= L->len && !memcmp(L->s + pos, lit, n);
}

/* The end of a block or comment tag at pos ("+%}", "-%}" and white space,
 * "%}" and one "\n"); returns its length, 0 when there is none. */
static size_t block_end(const lexer *L, size_t pos, char mark) {
    char plus[4] = {'+', mark, '}', 0}, minus[4] = {'-', mark, '}', 0}, bare[3] = {mark, '}', 0};
    if (at(L, pos, plus)) return 3;
    if (at(L, pos, minus)) return 3 + space_run(L->s + pos + 3, L->len - pos - 3);
    if (at(L, pos, bare)) return 2 + (pos + 2 < L->len && L->s[pos + 2] == '\n');
    return 0;
}

static size_t var_end(const lexer *L, size_t pos) {
    if (at(L, pos, "-}}")) return 3 + space_run(L->s + pos + 3, L->len - pos - 3);
    if (at(L, pos, "}}")) return 2;
    return 0;
}

/* Emits the data before a tag, applying the tag's white-space control:
 * sign '-' strips all trailing white space; otherwise lstrip_blocks strips
 * the white space between the last newline and a block or comment tag. */
static int emit_data(lexer *L, size_t from, size_t to, char sign, int lstrip_ok) {
    const char *text = L->s + from;
    size_t n = to - from;
    if (sign == '-') {
        size_t end = n;
        while (end > 0) { /* Python's str.rstrip() */
            size_t c = end - 1, k;
            while (c > 0 && ((unsigned char)text[c] & 0xc0) == 0x80) c--;
            if (!jstr_is_space(tokenizer_utf8_decode(text + c, &k))) break;
            end = c;
        }
        n = end;
    } else if (sign != '+' && lstrip_ok) {
        size_t l_pos = 0;
        for (size_t i = n; i > 0; i--)
            if (text[i - 1] == '\n') {
                l_pos = i;
                break;
            }
        /* whitespace_re.fullmatch(text, l_pos): at least one white-space character */
        if ((l_pos > 0 || L->line_starting) && l_pos < n &&
            space_run(text + l_pos, n - l_pos) == n - l_pos)
            n = l_pos;
    }
    return n ? push(L, JT_DATA, from, text, n) : 0;
}

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* (\d+_)*\d+ at s: its length, 0 when none. */
static size_t digits_(const char *s, size_t len) {
    size_t i = 0;
    for (;;) {
        size_t k = i;
        while (k < len && is_digit(s[k])) k++;
        if (k == i) return i == 0 ? 0 : i - 1; /* a trailing "_" is not part of it */
        i = k;
        if (i < len && s[i] == '_' && i + 1 < len && is_digit(s[i + 1]))
            i++;
        else
            return i;
    }
}

/* float_re: (?<!\.)(\d+_)*\d+((\.(\d+_)*\d+)?e[+-]?(\d+_)*\d+|\.(\d+_)*\d+) */
static size_t match_float(const lexer *L, size_t pos) {
    if (pos > 0 && L->s[pos - 1] == '.') return 0;
    const char *s = L->s + pos;
    size_t len = L->len - pos, i = digits_(s, len);
    if (!i) return 0;
    size_t frac = 0;
    if (i < len && s[i] == '.') frac = digits_(s + i + 1, len - i - 1);
    size_t j = frac ? i + 1 + frac : i;
    if (j < len && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < len && (s[k] == '+' || s[k] == '-')) k++;
        size_t e = digits_(s + k, len - k);
        if (e) return k + e;
    }
    return frac ? i + 1 + frac : 0;
}

static int hex_val(char c) {
    if (is_digit(c)) return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* integer_re: 0b(_?[01])+ | 0o(_?[0-7])+ | 0x(_?[0-9a-f])+ | [1-9](_?\d)* | 0(_?0)* */
static size_t match_int(const lexer *L, size_t pos, int *base) {
    const char *s = L->s + pos;
    size_t len = L->len - pos;
    if (len >= 2 && s[0] == '0' && strchr("bBoOxX", s[1]) && s[1]) {
        *base = s[1] == 'b' || s[1] == 'B' ? 2 : s[1] == 'o' || s[1] == 'O' ? 8 : 16;
        size_t i = 2, groups = 0;
        for (;;) {
            size_t k = i + (i < len && s[i] == '_');
            if (k >= len || hex_val(s[k]) < 0 || hex_val(s[k]) >= *base) break;
            i = k + 1;
            groups++;
        }
        if (groups) return i;
    }
    *base = 10;
    if (len == 0 || !is_digit(s[0])) return 0;
    char allowed = s[0] == '0' ? '0' : 0;
    size_t i = 1;
    for (;;) {
        size_t k = i + (i < len && s[i] == '_');
        if (k >= len || !is_digit(s[k]) || (allowed && s[k] != allowed)) break;
        i = k + 1;
    }
    return i;
}

static int add_number(lexer *L, size_t pos, size_t n, int is_float, int base) {
    char buf[128];
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (L->s[pos + i] != '_') {
            if (k + 1 >= sizeof buf) return lex_err(L, pos, "number literal too long", "");
            buf[k++] = L->s[pos + i];
        }
    buf[k] = '\0';
    if (push(L, is_float ? JT_FLOAT : JT_INT, pos, NULL, 0) != 0) return -1;
    jtoken *t = &L->toks[L->n - 1];
    errno = 0;
    if (is_float) {
        t->f = strtod(buf, NULL);
    } else {
        const char *digits = base == 10 ? buf : buf + 2;
        unsigned long long v = strtoull(digits, NULL, base);
        if (errno == ERANGE || v > INT64_MAX)
            return lex_err(L, pos, "the integer %s is too large (64-bit integers only)", buf);
        t->i = (int64_t)v;
    }
    return 0;
}

/* Python's "unicode-escape" decoding of a literal, after Jinja2 has replaced
 * every non-ASCII character by its \x / \u / \U escape (lexer.py wrap():
 * .encode("ascii", "backslashreplace").decode("unicode-escape")). The
 * replacement matters: a backslash before a non-ASCII character escapes the
 * backslash of its \x.. form, as in Python. */
static int unescape(lexer *L, size_t pos, const char *s, size_t n, jbuf *out) {
    jbuf ascii = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        size_t k;
        uint32_t cp = tokenizer_utf8_decode(s + i, &k);
        if (cp < 0x80)
            rc = jbuf_putc(&ascii, (char)cp);
        else
            rc = jbuf_printf(&ascii,
                             cp < 0x100     ? "\\x%02x"
                             : cp < 0x10000 ? "\\u%04x"
                                            : "\\U%08x",
                             cp);
        i += k;
    }
    const char *a = ascii.p ? ascii.p : "";
    size_t an = ascii.len;
    for (size_t i = 0; i < an && rc == 0;) {
        if (a[i] != '\\') {
            rc = jbuf_putc(out, a[i++]);
            continue;
        }
        if (i + 1 >= an) {
            rc = lex_err(L, pos, "\\ at end of string", "");
            break;
        }
        char e = a[i + 1];
        i += 2;
        const char *simple = strchr("\\'\"abfnrtv", e);
        if (e && simple) {
            static const char map[] = "\\'\"\a\b\f\n\r\t\v";
            rc = jbuf_putc(out, map[simple - "\\'\"abfnrtv"]);
        } else if (e == '\n') {
            /* a backslash and a newline: both dropped */
        } else if (e >= '0' && e <= '7') {
            uint32_t v = (uint32_t)(e - '0');
            for (int d = 0; d < 2 && i < an && a[i] >= '0' && a[i] <= '7'; d++, i++)
                v = v * 8 + (uint32_t)(a[i] - '0');
            char u[4];
            rc = jbuf_put(out, u, tokenizer_utf8_encode(v, u));
        } else if (e == 'x' || e == 'u' || e == 'U') {
            int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t v = 0;
            for (int d = 0; d < digits; d++, i++) {
                if (i >= an || hex_val(a[i]) < 0) {
                    rc = lex_err(L, pos, "truncated \\%sXX escape in a string",
                                 e == 'x'   ? "x"
                                 : e == 'u' ? "u"
                                            : "U");
                    break;
                }
                v = v * 16 + (uint32_t)hex_val(a[i]);
            }
            if (rc) break;
            if (v > 0x10ffff) {
                rc = lex_err(L, pos, "illegal Unicode character in a string escape%s", "");
                break;
            }
            if (v >= 0xd800 && v <= 0xdfff) {
                rc = lex_err(L, pos,
                             "a string escape makes a lone surrogate (U+D800..U+DFFF), which "
                             "is not valid UTF-8%s",
                             "");
                break;
            }
            char u[4];
            rc = jbuf_put(out, u, tokenizer_utf8_encode(v, u));
        } else if (e == 'N') {
            rc = lex_err(L, pos, "\\N{...} escapes (characters by name) are not supported%s", "");
        } else { /* an unknown escape keeps its backslash */
            char two[2] = {'\\', e};
            rc = jbuf_put(out, two, 2);
        }
    }
    jbuf_free(&ascii);
    return rc;
}

/* '...' or "..." with backslash escapes (string_re): its length, 0 if none. */
static size_t match_string(const lexer *L, size_t pos) {
    char q = L->s[pos];
    if (q != '\'' && q != '"') return 0;
    for (size_t i = pos + 1; i < L->len; i++) {
        if (L->s[i] == '\\') {
            i++;
            continue;
        }
        if (L->s[i] == q) return i + 1 - pos;
    }
    return 0;
}

static const struct {
    const char *op;
    int type;
} ops[] = {{"//", JT_FLOORDIV}, {"**", JT_POW},     {"==", JT_EQ},    {"!=", JT_NE},
           {">=", JT_GTEQ},     {"<=", JT_LTEQ},    {"+", JT_ADD},    {"-", JT_SUB},
           {"/", JT_DIV},       {"*", JT_MUL},      {"%", JT_MOD},    {"~", JT_TILDE},
           {"[", JT_LBRACKET},  {"]", JT_RBRACKET}, {"(", JT_LPAREN}, {")", JT_RPAREN},
           {"{", JT_LBRACE},    {"}", JT_RBRACE},   {">", JT_GT},     {"<", JT_LT},
           {"=", JT_ASSIGN},    {".", JT_DOT},      {":", JT_COLON},  {"|", JT_PIPE},
           {",", JT_COMMA},     {";", JT_SEMICOLON}};

static int is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/* One token inside {{ }} or {% %}; *done set when the tag ended. */
static int lex_tag(lexer *L, int block, int *done) {
    size_t pos = L->pos, n;
    *done = 0;
    if (L->nbal == 0 && (n = block ? block_end(L, pos, '%') : var_end(L, pos))) {
        if (push(L, block ? JT_BLOCK_END : JT_VAR_END, pos, NULL, 0) != 0) return -1;
        L->pos += n;
        L->line_starting = L->s[L->pos - 1] == '\n';
        *done = 1;
        return 0;
    }
    if ((n = space_run(L->s + pos, L->len - pos))) {
        L->pos += n;
        L->line_starting = L->s[L->pos - 1] == '\n';
        return 0;
    }
    int base;
    if ((n = match_float(L, pos))) {
        if (add_number(L, pos, n, 1, 10) != 0) return -1;
    } else if ((n = match_int(L, pos, &base))) {
        if (add_number(L, pos, n, 0, base) != 0) return -1;
    } else if (is_name_start(L->s[pos])) {
        n = 1;
        while (pos + n < L->len && (is_name_start(L->s[pos + n]) || is_digit(L->s[pos + n]))) n++;
        if (pos + n < L->len && (unsigned char)L->s[pos + n] >= 0x80)
            return lex_err(L, pos, "names with non-ASCII characters are not supported%s", "");
        if (push(L, JT_NAME, pos, L->s + pos, n) != 0) return -1;
    } else if ((n = match_string(L, pos))) {
        jbuf b = {0};
        int rc = unescape(L, pos, L->s + pos + 1, n - 2, &b);
        if (rc == 0) rc = push(L, JT_STRING, pos, b.p ? b.p : "", b.len);
        jbuf_free(&b);
        if (rc != 0) return -1;
    } else {
        size_t k = 0;
        while (k < sizeof ops / sizeof ops[0] && !at(L, pos, ops[k].op)) k++;
        if (k == sizeof ops / sizeof ops[0]) {
            char c[8] = {0};
            if ((unsigned char)L->s[pos] >= 0x80)
                return lex_err(L, pos,
                               "a non-ASCII character in a tag (names with non-ASCII characters "
                               "are not supported)%s",
                               "");
            c[0] = L->s[pos];
            return lex_err(L, pos, "unexpected character '%s' in a tag", c);
        }
        n = strlen(ops[k].op);
        int type = ops[k].type;
        if (type == JT_LBRACE || type == JT_LPAREN || type == JT_LBRACKET) {
            if (L->nbal == sizeof L->bal)
                return lex_err(L, pos, "brackets nested too deeply%s", "");
            L->bal[L->nbal++] = type == JT_LBRACE ? '}' : type == JT_LPAREN ? ')' : ']';
        } else if (type == JT_RBRACE || type == JT_RPAREN || type == JT_RBRACKET) {
            char c[2] = {L->s[pos], 0};
            if (L->nbal == 0) return lex_err(L, pos, "unexpected '%s'", c);
            if (L->bal[--L->nbal] != c[0]) return lex_err(L, pos, "unexpected '%s'", c);
        }
        if (push(L, type, pos, NULL, 0) != 0) return -1;
    }
    L->pos += n;
    L->line_starting = L->s[L->pos - 1] == '\n';
    return 0;
}

/* {% raw %} … {% endraw %}: everything up to the end tag is data. */
static int lex_raw(lexer *L) {
    for (size_t i = L->pos; i + 1 < L->len; i++) {
        if (L->s[i] != '{' || L->s[i + 1] != '%') continue;
        size_t p = i + 2;
        char sign = 0;
        if (p < L->len && (L->s[p] == '-' || L->s[p] == '+')) sign = L->s[p++];
        p += space_run(L->s + p, L->len - p);
        if (!at(L, p, "endraw")) continue;
        p += 6;
        p += space_run(L->s + p, L->len - p);
        size_t e = block_end(L, p, '%');
        if (!e) continue;
        if (emit_data(L, L->pos, i, sign, 1) != 0) return -1;
        L->pos = p + e;
        L->line_starting = L->s[L->pos - 1] == '\n';
        return 0;
    }
    return lex_err(L, L->pos, "missing end of raw directive ({%% endraw %%})%s", "");
}

/* A {% raw %} opening tag at pos: its length, 0 when the tag is another. */
static size_t raw_begin(const lexer *L, size_t pos) {
    size_t p = pos + 2;
    if (p < L->len && (L->s[p] == '-' || L->s[p] == '+')) p++;
    p += space_run(L->s + p, L->len - p);
    if (!at(L, p, "raw")) return 0;
    p += 3;
    p += space_run(L->s + p, L->len - p);
    if (at(L, p, "-%}")) return p + 3 + space_run(L->s + p + 3, L->len - p - 3) - pos;
    if (at(L, p, "%}")) return p + 2 - pos;
    return 0;
}

static int lex_all(lexer *L) {
    while (L->pos < L->len) {
        size_t i = L->pos;
        while (i + 1 < L->len && !(L->s[i] == '{' && strchr("{%#", L->s[i + 1]) && L->s[i + 1]))
            i++;
        if (i + 1 >= L->len) { /* the rest is data */
            if (push(L, JT_DATA, L->pos, L->s + L->pos, L->len - L->pos) != 0) return -1;
            L->pos = L->len;
            break;
        }
        char kind = L->s[i + 1];
        char sign = i + 2 < L->len && (L->s[i + 2] == '-' || L->s[i + 2] == '+') ? L->s[i + 2] : 0;
        size_t raw = kind == '%' ? raw_begin(L, i) : 0;
        if (emit_data(L, L->pos, i, sign, kind != '{') != 0) return -1;
        if (raw) {
            L->pos = i + raw;
            L->line_starting = L->s[L->pos - 1] == '\n';
            if (lex_raw(L) != 0) return -1;
            continue;
        }
        L->pos = i + 2 + (sign != 0);
        L->line_starting = 0;
        if (kind == '#') {
            size_t j = L->pos, e = 0;
            for (; j < L->len; j++)
                if ((e = block_end(L, j, '#'))) break;
            if (!e) return lex_err(L, i, "missing end of comment tag%s", "");
            L->pos = j + e;
            L->line_starting = L->s[L->pos - 1] == '\n';
            continue;
        }
        int block = kind == '%';
        if (push(L, block ? JT_BLOCK_BEGIN : JT_VAR_BEGIN, i, NULL, 0) != 0) return -1;
        L->nbal = 0;
        for (int done = 0; !done;) {
            if (L->pos >= L->len)
                return lex_err(L, i, "unexpected end of template: the tag is not closed (%s)",
                               block ? "%}" : "}}");
            if (lex_tag(L, block, &done) != 0) return -1;
        }
    }
    return push(L, JT_EOF, L->len, NULL, 0);
}

int jinja_lex(const char *src, size_t len, const char *name, jarena *a, jtoken **toks, size_t *n) {
    /* lines = newline_re.split(source)[::2]; drop one empty last line; join with "\n" */
    char *s = jarena_alloc(a, len + 1);
    if (!s) return -1;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[k++] = src[i];
        }
    }
    if (k > 0 && s[k - 1] == '\n') k--;
    lexer L = {.s = s, .len = k, .name = name, .a = a, .line_starting = 1, .line = 1};
    int rc = lex_all(&L);
    if (rc == 0) {
        *toks = jarena_alloc(a, L.n * sizeof **toks);
        if (*toks) {
            memcpy(*toks, L.toks, L.n * sizeof **toks);
            *n = L.n;
        } else {
            rc = -1;
        }
    }
    free(L.toks);
    return rc;
}

const char *jinja_tok_desc(int type) {
    switch (type) {
        case JT_EOF:
            return "end of template";
        case JT_DATA:
            return "template data";
        case JT_VAR_BEGIN:
            return "'{{'";
        case JT_VAR_END:
            return "'}}'";
        case JT_BLOCK_BEGIN:
            return "'{%'";
        case JT_BLOCK_END:
            return "'%}'";
        case JT_NAME:
            return "name";
        case JT_STRING:
            return "string";
        case JT_INT:
            return "integer";
        case JT_FLOAT:
            return "float";
        default:
            for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
                if (ops[k].type == type) return ops[k].op;
            return "token";
    }
}
