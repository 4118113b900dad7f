/* tok_util — buffers, hash maps and UTF-8 for the tokenizer. */
#include "model/tokenizer/tok_internal.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

/* ---- buffers ------------------------------------------------------------------- */

int tok_buf_reserve(tok_buf *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len) return err_set("tokenizer: buffer size overflow");
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return err_set("tokenizer: out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok_buf_put(tok_buf *b, const void *data, size_t n) {
    if (tok_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

void tok_buf_free(tok_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int tokenizer_ids_push(tokenizer_ids *ids, uint32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 256;
        uint32_t *p = realloc(ids->ids, cap * sizeof *p);
        if (!p) return err_set("tokenizer: out of memory for %zu token ids", cap);
        ids->ids = p;
        ids->cap = cap;
    }
    ids->ids[ids->n++] = id;
    return 0;
}

void tokenizer_ids_free(tokenizer_ids *ids) {
    free(ids->ids);
    ids->ids = NULL;
    ids->n = ids->cap = 0;
}

/* ---- hashing ------------------------------------------------------------------- */

/* A multiply-xorshift hash over 8-byte words (the finaliser is splitmix64's);
 * pre-tokens are short, so this beats byte-at-a-time FNV. */
uint64_t tok_hash(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    if (n) memcpy(&v, p, n);
    h = (h ^ v) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return h;
}

/* ---- string map ----------------------------------------------------------------- */

static int strmap_grow(tok_strmap *m) {
    size_t size = m->mask ? (m->mask + 1) * 2 : 64;
    uint32_t *slots = calloc(size, sizeof *slots);
    if (!slots) return err_set("tokenizer: out of memory for a %zu-slot table", size);
    for (size_t i = 0; i < m->n; i++) {
        size_t h = tok_hash(m->arena.p + m->key_off[i], m->key_len[i]) & (size - 1);
        while (slots[h]) h = (h + 1) & (size - 1);
        slots[h] = (uint32_t)i + 1;
    }
    free(m->slots);
    m->slots = slots;
    m->mask = size - 1;
    return 0;
}

static size_t strmap_find(const tok_strmap *m, const char *k, size_t n) {
    if (!m->mask) return SIZE_MAX;
    size_t h = tok_hash(k, n) & m->mask;
    while (m->slots[h]) {
        size_t i = m->slots[h] - 1;
        if (m->key_len[i] == n && !memcmp(m->arena.p + m->key_off[i], k, n)) return i;
        h = (h + 1) & m->mask;
    }
    return SIZE_MAX;
}

int tok_strmap_put(tok_strmap *m, const char *k, size_t n, uint32_t val, size_t *index) {
    size_t i = strmap_find(m, k, n);
    if (i != SIZE_MAX) {
        m->val[i] = val;
        if (index) *index = i;
        return 0;
    }
    if (m->n >= UINT32_MAX / 2 || n > UINT32_MAX || m->arena.len > UINT32_MAX - n)
        return err_set("tokenizer: too many or too long strings");
    if ((m->n + 1) * 2 > m->mask + 1 && strmap_grow(m)) return -1;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        uint32_t *off = realloc(m->key_off, cap * sizeof *off);
        if (off) m->key_off = off;
        uint32_t *len = realloc(m->key_len, cap * sizeof *len);
        if (len) m->key_len = len;
        uint32_t *v = realloc(m->val, cap * sizeof *v);
        if (v) m->val = v;
        if (!off || !len || !v) return err_set("tokenizer: out of memory for %zu strings", cap);
        m->cap = cap;
    }
    i = m->n;
    m->key_off[i] = (uint32_t)m->arena.len;
    m->key_len[i] = (uint32_t)n;
    m->val[i] = val;
    /* reserve one byte more, so that the arena exists even for "" keys */
    if (tok_buf_reserve(&m->arena, n + 1) || tok_buf_put(&m->arena, k, n)) return -1;
    size_t h = tok_hash(k, n) & m->mask;
    while (m->slots[h]) h = (h + 1) & m->mask;
    m->slots[h] = (uint32_t)i + 1;
    m->n++;
    if (index) *index = i;
    return 0;
}

int tok_strmap_get(const tok_strmap *m, const char *k, size_t n, uint32_t *val) {
    size_t i = strmap_find(m, k, n);
    if (i == SIZE_MAX) return 0;
    *val = m->val[i];
    return 1;
}

const char *tok_strmap_key(const tok_strmap *m, size_t index, size_t *len) {
    *len = m->key_len[index];
    return m->arena.p + m->key_off[index];
}

void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    free(m->key_off);
    free(m->key_len);
    free(m->val);
    tok_buf_free(&m->arena);
    memset(m, 0, sizeof *m);
}

/* ---- u64 map ------------------------------------------------------------------------ */

static int map64_grow(tok_map64 *m) {
    size_t size = m->mask ? (m->mask + 1) * 2 : 64;
    uint64_t *keys = malloc(size * sizeof *keys);
    uint64_t *vals = malloc(size * sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return err_set("tokenizer: out of memory for a %zu-slot table", size);
    }
    memset(keys, 0xFF, size * sizeof *keys);
    for (size_t i = 0; m->mask && i <= m->mask; i++) {
        if (m->keys[i] == UINT64_MAX) continue;
        size_t h = tok_map64_slot(m->keys[i], size - 1);
        while (keys[h] != UINT64_MAX) h = (h + 1) & (size - 1);
        keys[h] = m->keys[i];
        vals[h] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->mask = size - 1;
    return 0;
}

int tok_map64_put(tok_map64 *m, uint64_t key, uint64_t val) {
    if ((m->n + 1) * 2 > m->mask + 1 && map64_grow(m)) return -1;
    size_t h = tok_map64_slot(key, m->mask);
    while (m->keys[h] != UINT64_MAX && m->keys[h] != key) h = (h + 1) & m->mask;
    if (m->keys[h] == UINT64_MAX) m->n++;
    m->keys[h] = key;
    m->vals[h] = val;
    return 0;
}

void tok_map64_free(tok_map64 *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---- UTF-8 ------------------------------------------------------------------------------ */

uint32_t tok_utf8_decode(const char *s, size_t *n) {
    const unsigned char *p = (const unsigned char *)s;
    if (p[0] < 0x80) {
        *n = 1;
        return p[0];
    }
    if (p[0] < 0xE0) {
        *n = 2;
        return ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (p[0] < 0xF0) {
        *n = 3;
        return ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *n = 4;
    return ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) |
           ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

size_t tok_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int tok_is_white_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return 0;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* One UTF-8 sequence at p (n > 0 bytes left), by Table 3-7 of the Unicode
 * standard. Returns its length when it is well-formed (*ok = 1); otherwise
 * the length of its maximal subpart, at least 1 (*ok = 0). */
static size_t utf8_sequence(const unsigned char *p, size_t n, int *ok) {
    unsigned c = p[0];
    *ok = 1;
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *ok = 0;
        return 1;
    }
    size_t i = 1;
    for (; i < need && i < n; i++) {
        unsigned b = p[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
    }
    if (i < need) *ok = 0;
    return i;
}

uint32_t tokenizer_utf8_decode(const char *s, size_t *n) {
    return tok_utf8_decode(s, n);
}

size_t tokenizer_utf8_encode(uint32_t cp, char *out) {
    return tok_utf8_encode(cp, out);
}

size_t tokenizer_utf8_valid_prefix(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path, 8 bytes at a time */
        while (i + 8 <= len) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            if (v & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= len) break;
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int ok;
        size_t n = utf8_sequence(p + i, len - i, &ok);
        if (!ok) return i;
        i += n;
    }
    return len;
}

int tokenizer_utf8_repair(const char *s, size_t len, char **out, size_t *out_len,
                          size_t *n_replaced) {
    *out = NULL;
    *out_len = 0;
    if (n_replaced) *n_replaced = 0;
    if (len > (SIZE_MAX - 1) / 3) return err_set("tokenizer_utf8_repair: input too large");
    char *o = malloc(len * 3 + 1); /* each invalid byte may become 3 bytes */
    if (!o) return err_set("tokenizer_utf8_repair: out of memory for %zu bytes", len * 3 + 1);
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, w = 0, bad = 0;
    while (i < len) {
        int ok;
        size_t n = utf8_sequence(p + i, len - i, &ok);
        if (ok) {
            memcpy(o + w, p + i, n);
            w += n;
        } else {
            memcpy(o + w, "\xEF\xBF\xBD", 3);
            w += 3;
            bad++;
        }
        i += n;
    }
    o[w] = '\0';
    *out = o;
    *out_len = w;
    if (n_replaced) *n_replaced = bad;
    return 0;
}
