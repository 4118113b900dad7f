/* tok_nfc — Unicode Normalization Form C (UAX #15), for the NFC normalizer
 * (Qwen2 ships one). Canonical decomposition (Hangul algorithmically, §3.12
 * of the Unicode standard), canonical ordering by combining class, then
 * canonical composition of unblocked pairs into primary composites.
 * Text without any character that NFC can change is copied as it is. */
#include "model/tokenizer/tok_internal.h"
#include "model/tokenizer/tok_nfc_tables.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7 };
enum { L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = 11172 };

static int is_unsafe(uint32_t cp) {
    size_t lo = 0, hi = COUNT(nfc_unsafe);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < nfc_unsafe[mid][0])
            hi = mid;
        else if (cp > nfc_unsafe[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static unsigned ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = COUNT(nfc_ccc);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < nfc_ccc[mid].first)
            hi = mid;
        else if (cp > nfc_ccc[mid].last)
            lo = mid + 1;
        else
            return nfc_ccc[mid].ccc;
    }
    return 0;
}

/* The composite of (a, b), or 0 when they do not compose. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a - L_BASE < L_COUNT && b - V_BASE < V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a - S_BASE < S_COUNT && (a - S_BASE) % T_COUNT == 0 && b - T_BASE - 1 < T_COUNT - 1)
        return a + (b - T_BASE);
    uint64_t key = (uint64_t)a << 21 | b;
    size_t lo = 0, hi = COUNT(nfc_comp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (key < nfc_comp[mid].pair)
            hi = mid;
        else if (key > nfc_comp[mid].pair)
            lo = mid + 1;
        else
            return nfc_comp[mid].cp;
    }
    return 0;
}

/* Code points, each with the byte offset in the input of the character it
 * comes from (src: only kept when alignments are asked for). */
typedef struct {
    uint32_t *cp, *src;
    size_t n, cap;
    int track;
} cps;

static int cps_push(cps *c, uint32_t cp, uint32_t src) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        uint32_t *p = realloc(c->cp, cap * sizeof *p);
        if (p) c->cp = p;
        uint32_t *q = p && c->track ? realloc(c->src, cap * sizeof *q) : NULL;
        if (q) c->src = q;
        if (!p || (c->track && !q)) return err_set("NFC normalizer: out of memory");
        c->cap = cap;
    }
    if (c->track) c->src[c->n] = src;
    c->cp[c->n++] = cp;
    return 0;
}

static int decompose(uint32_t cp, uint32_t src, cps *out) {
    if (cp - S_BASE < S_COUNT) {
        uint32_t s = cp - S_BASE;
        if (cps_push(out, L_BASE + s / N_COUNT, src) ||
            cps_push(out, V_BASE + (s % N_COUNT) / T_COUNT, src))
            return -1;
        return s % T_COUNT ? cps_push(out, T_BASE + s % T_COUNT, src) : 0;
    }
    size_t lo = 0, hi = COUNT(nfc_decomp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < nfc_decomp[mid].cp)
            hi = mid;
        else if (cp > nfc_decomp[mid].cp)
            lo = mid + 1;
        else {
            for (size_t k = 0; k < nfc_decomp[mid].len; k++)
                if (cps_push(out, nfc_decomp_pool[nfc_decomp[mid].off + k], src)) return -1;
            return 0;
        }
    }
    return cps_push(out, cp, src);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void swap_at(cps *c, size_t i, size_t j) {
    uint32_t x = c->cp[i];
    c->cp[i] = c->cp[j];
    c->cp[j] = x;
    if (c->track) {
        x = c->src[i];
        c->src[i] = c->src[j];
        c->src[j] = x;
    }
}

/* Canonical ordering: each run of non-starters sorted stably by class. Long
 * runs are sorted by (class, index) so that crafted input stays O(n log n). */
static int reorder(cps *c) {
    for (size_t a = 0; a < c->n;) {
        if (ccc_of(c->cp[a]) == 0) {
            a++;
            continue;
        }
        size_t b = a;
        while (b < c->n && ccc_of(c->cp[b]) != 0) b++;
        size_t run = b - a;
        if (run <= 32) {
            for (size_t i = a + 1; i < b; i++)
                for (size_t j = i; j > a && ccc_of(c->cp[j - 1]) > ccc_of(c->cp[j]); j--)
                    swap_at(c, j, j - 1);
        } else {
            uint64_t *keys = malloc(run * sizeof *keys);
            uint32_t *tmp = malloc(2 * run * sizeof *tmp);
            if (!keys || !tmp) {
                free(keys);
                free(tmp);
                return err_set("NFC normalizer: out of memory");
            }
            for (size_t i = 0; i < run; i++) {
                keys[i] = (uint64_t)ccc_of(c->cp[a + i]) << 40 | i;
                tmp[i] = c->cp[a + i];
                tmp[run + i] = c->track ? c->src[a + i] : 0;
            }
            qsort(keys, run, sizeof *keys, cmp_u64);
            for (size_t i = 0; i < run; i++) {
                size_t k = keys[i] & 0xFFFFFFFFFFull;
                c->cp[a + i] = tmp[k];
                if (c->track) c->src[a + i] = tmp[run + k];
            }
            free(keys);
            free(tmp);
        }
        a = b;
    }
    return 0;
}

/* Canonical composition (after the reference algorithm of UAX #15): a
 * character composes with the last starter unless a character in between
 * has class 0 or a class >= its own. A composite keeps its starter's source,
 * as Hugging Face's alignments do. */
static void recompose(cps *c) {
    if (c->n == 0) return;
    size_t starter = 0, w = 1;
    unsigned last = ccc_of(c->cp[0]) ? 256 : 0;
    for (size_t i = 1; i < c->n; i++) {
        uint32_t ch = c->cp[i];
        unsigned k = ccc_of(ch);
        uint32_t comp = compose(c->cp[starter], ch);
        if (comp && (last < k || last == 0)) {
            c->cp[starter] = comp;
            continue;
        }
        if (k == 0) starter = w;
        last = k;
        if (c->track) c->src[w] = c->src[i];
        c->cp[w++] = ch;
    }
    c->n = w;
}

int tok_nfc(const char *s, size_t len, tok_buf *out, const uint32_t *in_al, tok_align *out_al) {
    size_t i = 0;
    while (i < len) {
        unsigned char b = (unsigned char)s[i];
        if (b < 0xCC) { /* every character below U+0300 is stable */
            i += tok_utf8_len(b);
            continue;
        }
        size_t n;
        if (is_unsafe(tok_utf8_decode(s + i, &n))) break;
        i += n;
    }
    if (i >= len) {
        for (size_t k = 0; in_al && k < len; k++)
            if (tok_align_push(out_al, in_al[2 * k], in_al[2 * k + 1], 1)) return -1;
        return tok_buf_put(out, s, len);
    }

    cps c = {.track = in_al != NULL};
    int rc = 0;
    for (i = 0; i < len && !rc;) {
        size_t n;
        rc = decompose(tok_utf8_decode(s + i, &n), (uint32_t)i, &c);
        i += n;
    }
    if (!rc) rc = reorder(&c);
    if (!rc) {
        recompose(&c);
        rc = tok_buf_reserve(out, c.n * 4);
    }
    for (size_t k = 0; k < c.n && !rc; k++) {
        size_t n = tok_utf8_encode(c.cp[k], out->p + out->len);
        out->len += n;
        if (in_al) rc = tok_align_push(out_al, in_al[2 * c.src[k]], in_al[2 * c.src[k] + 1], n);
    }
    free(c.cp);
    free(c.src);
    return rc;
}
