/* tok_bpe — the BPE model on one pre-token, as Hugging Face tokenizers'
 * models/bpe (model.rs merge_word, word.rs merge_all).
 *
 * Merging uses a binary min-heap of candidate pairs keyed by (merge rank,
 * position): O(n log n) for a pre-token of n units instead of the O(n^2) of
 * rescanning for the best pair. Stale heap entries are recognised exactly as
 * HF does (the pair at that position must still merge into the same id), so
 * the result is HF's even for pathological merge tables.
 *
 * Units: with a ByteLevel pre-tokenizer every byte is one unit (HF maps each
 * byte to one character of the GPT-2 alphabet, and the vocabulary is written
 * in that alphabet); otherwise every UTF-8 character is one. */
#include "model/tokenizer/tok_internal.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

typedef tok_heap_ent heap_ent;

static int heap_less(heap_ent a, heap_ent b) {
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(e, h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
    heap_ent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static int reserve_symbols(tokenizer *t, size_t n) {
    if (n <= t->sym_cap) return 0;
    size_t cap = t->sym_cap ? t->sym_cap : 64;
    while (cap < n) cap *= 2;
    uint32_t *id = realloc(t->sym_id, cap * sizeof *id);
    if (id) t->sym_id = id;
    int32_t *prev = realloc(t->sym_prev, cap * sizeof *prev);
    if (prev) t->sym_prev = prev;
    int32_t *next = realloc(t->sym_next, cap * sizeof *next);
    if (next) t->sym_next = next;
    uint32_t *start = realloc(t->sym_start, cap * sizeof *start);
    if (start) t->sym_start = start;
    uint32_t *end = realloc(t->sym_end, cap * sizeof *end);
    if (end) t->sym_end = end;
    if (!id || !prev || !next || !start || !end)
        return err_set("tokenizer: out of memory for %zu symbols", cap);
    t->sym_cap = cap;
    return 0;
}

static int reserve_heap(tokenizer *t, size_t n) {
    if (n <= t->heap_cap) return 0;
    size_t cap = t->heap_cap ? t->heap_cap : 64;
    while (cap < n) cap *= 2;
    heap_ent *h = realloc(t->heap, cap * sizeof *h);
    if (!h) return err_set("tokenizer: out of memory for %zu merge candidates", cap);
    t->heap = h;
    t->heap_cap = cap;
    return 0;
}

/* Is (left, right) a merge? Gives its rank and result. */
static int merge_of(const tokenizer *t, uint32_t left, uint32_t right, uint32_t *rank,
                    uint32_t *id) {
    uint64_t v;
    if (!tok_map64_get(&t->merges, (uint64_t)left << 32 | right, &v)) return 0;
    *rank = (uint32_t)(v >> 32);
    *id = (uint32_t)v;
    return 1;
}

/* Word::merge_all. Symbols 0..n-1 form a linked list; merged-away symbols get
 * id TOK_NONE. Heap entries for a position may outlive the pair they were
 * made for: one is used only if that position still holds a pair that merges
 * into the same id. */
static int merge_all(tokenizer *t, size_t n) {
    uint32_t *sym = t->sym_id;
    int32_t *prev = t->sym_prev, *next = t->sym_next;
    /* each merge removes one symbol and pushes at most two entries */
    if (reserve_heap(t, 3 * n + 1)) return -1;
    heap_ent *h = t->heap;
    size_t hn = 0;
    uint32_t rank, id;
    for (size_t i = 0; i + 1 < n; i++)
        if (merge_of(t, sym[i], sym[i + 1], &rank, &id))
            heap_push(h, &hn, (heap_ent){rank, (uint32_t)i, id});
    while (hn) {
        heap_ent top = heap_pop(h, &hn);
        uint32_t pos = top.pos;
        if (sym[pos] == TOK_NONE || next[pos] < 0) continue;
        int32_t right = next[pos];
        if (!merge_of(t, sym[pos], sym[right], &rank, &id) || id != top.id) continue;
        sym[pos] = top.id;
        sym[right] = TOK_NONE;
        t->sym_end[pos] = t->sym_end[right];
        next[pos] = next[right];
        if (next[pos] >= 0) prev[next[pos]] = (int32_t)pos;
        if (prev[pos] >= 0 && merge_of(t, sym[prev[pos]], sym[pos], &rank, &id))
            heap_push(h, &hn, (heap_ent){rank, (uint32_t)prev[pos], id});
        if (next[pos] >= 0 && merge_of(t, sym[pos], sym[next[pos]], &rank, &id))
            heap_push(h, &hn, (heap_ent){rank, pos, id});
    }
    return 0;
}

/* BPE::merge_word from the units to the merged symbols, then appends them.
 * Each symbol also keeps the bytes of s it covers (sym_start, sym_end), for
 * offsets: a byte-fallback token covers its whole unit, a fused unknown
 * token all the units fused into it. */
static int bpe_word(tokenizer *t, const char *s, size_t len, tokenizer_ids *out) {
    /* symbols <= units, except byte fallback in byte mode: a byte's alphabet
     * character has up to 2 bytes, each one <0xNN> token */
    if (reserve_symbols(t, len * 2 + 1)) return -1;
    uint32_t *sym = t->sym_id, *s0 = t->sym_start, *s1 = t->sym_end;
    size_t n = 0;
    int unk_pending = 0;
    uint32_t unk_start = 0, unk_end = 0;
#define SYM(id_, a_, b_) (s0[n] = (uint32_t)(a_), s1[n] = (uint32_t)(b_), sym[n++] = (id_))
    for (size_t i = 0; i < len;) {
        size_t ul = t->byte_level ? 1 : tok_utf8_len((unsigned char)s[i]);
        uint32_t id = TOK_NONE;
        if (ul == 1)
            id = t->unit_id[(unsigned char)s[i]];
        else
            tok_strmap_get(&t->vocab, s + i, ul, &id);
        if (id != TOK_NONE) {
            if (unk_pending) SYM(t->unk_id, unk_start, unk_end);
            unk_pending = 0;
            SYM(id, i, i + ul);
            i += ul;
            continue;
        }
        if (t->byte_fallback) {
            /* the unit's own bytes: in byte mode, those of its alphabet character */
            char buf[4];
            const char *u = s + i;
            size_t un = ul;
            if (t->byte_level) {
                un = tok_utf8_encode(tok_byte_to_cp((unsigned char)s[i]), buf);
                u = buf;
            }
            size_t k = 0;
            while (k < un && t->fallback[(unsigned char)u[k]] != TOK_NONE) k++;
            if (k == un) {
                /* HF adds these without flushing a pending unk (model.rs) */
                for (k = 0; k < un; k++) SYM(t->fallback[(unsigned char)u[k]], i, i + ul);
                i += ul;
                continue;
            }
        }
        if (t->unk_id != TOK_NONE) {
            if (unk_pending && !t->fuse_unk) SYM(t->unk_id, unk_start, unk_end);
            if (!unk_pending || !t->fuse_unk) unk_start = (uint32_t)i;
            unk_end = (uint32_t)(i + ul);
            unk_pending = 1;
        }
        i += ul; /* no unk token: the unit is dropped, as in HF */
    }
    if (unk_pending) SYM(t->unk_id, unk_start, unk_end);
#undef SYM
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        t->sym_prev[i] = (int32_t)i - 1;
        t->sym_next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    if (n > 1 && merge_all(t, n)) return -1;
    for (int32_t i = 0; i >= 0; i = t->sym_next[i])
        if (tokenizer_ids_push(out, sym[i]) || tok_offsets_emit(t, s + s0[i], s1[i] - s0[i]))
            return -1;
    return 0;
}

/* BPE::tokenize_with_cache (ignore_merges first, then the cache). */
int tok_bpe_encode(tokenizer *t, const char *s, size_t len, tokenizer_ids *out) {
    if (len > INT32_MAX / 4) return err_set("tokenizer: a %zu-byte pre-token is too long", len);
    if (t->ignore_merges) {
        const char *key = s;
        size_t klen = len;
        if (t->byte_level) { /* the vocabulary is written in the byte alphabet */
            t->word_key.len = 0;
            if (tok_buf_reserve(&t->word_key, len * 2)) return -1;
            for (size_t i = 0; i < len; i++)
                t->word_key.len += tok_utf8_encode(tok_byte_to_cp((unsigned char)s[i]),
                                                   t->word_key.p + t->word_key.len);
            key = t->word_key.p;
            klen = t->word_key.len;
        }
        uint32_t id;
        if (tok_strmap_get(&t->vocab, key, klen, &id))
            return tokenizer_ids_push(out, id) || tok_offsets_emit(t, s, len) ? -1 : 0;
    }
    tok_cache_slot *slot = NULL;
    uint64_t h = 0;
    if (len <= TOK_CACHE_KEY_MAX && !t->offs) { /* cached ids have no offsets */
        h = tok_hash(s, len);
        slot = &t->cache[h & (TOK_CACHE_SLOTS - 1)];
        if (slot->key_len == len && slot->hash == h && !memcmp(slot->key, s, len)) {
            for (size_t i = 0; i < slot->n_ids; i++)
                if (tokenizer_ids_push(out, slot->ids[i])) return -1;
            return 0;
        }
    }
    size_t n0 = out->n;
    if (bpe_word(t, s, len, out)) return -1;
    size_t n = out->n - n0;
    if (slot && n <= TOK_CACHE_IDS_MAX) { /* direct-mapped: the newest entry wins */
        slot->hash = h;
        slot->key_len = (uint8_t)len;
        slot->n_ids = (uint8_t)n;
        memcpy(slot->key, s, len);
        if (n) memcpy(slot->ids, out->ids + n0, n * sizeof *slot->ids);
    }
    return 0;
}
