/* tok_load — tokenizer.json → struct tokenizer.
 *
 * Follows Hugging Face tokenizers' deserialisation (tokenizer/serialization.rs,
 * models/bpe/serialization.rs, added_vocabulary.rs); in particular added
 * tokens get their ids the way AddedVocabulary::add_tokens assigns them (the
 * "id" field of the file is not trusted, exactly as in tokenizers). */
#include "model/tokenizer/tok_internal.h"

#include "util/err.h"
#include "util/fio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small JSON helpers ---------------------------------------------------------- */

/* A boolean field; missing or null gives dflt. */
static int get_bool(json_t *obj, const char *key, int dflt, const char *where, int *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v)) return err_set("%s: \"%s\" must be true or false", where, key);
    *out = json_is_true(v);
    return 0;
}

/* A string field, or NULL when missing / not a string. */
static const char *get_str(json_t *obj, const char *key, size_t *len) {
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v)) return NULL;
    if (len) *len = json_string_length(v);
    return json_string_value(v);
}

static const char *get_type(json_t *obj, const char *where) {
    const char *type = json_is_object(obj) ? get_str(obj, "type", NULL) : NULL;
    if (!type) err_set("%s: expected an object with a \"type\" string", where);
    return type;
}

/* A string that holds exactly one character (Metaspace, Strip). */
static int get_char(json_t *obj, const char *key, const char *where, uint32_t *cp) {
    size_t len;
    const char *s = get_str(obj, key, &len);
    size_t n = 0;
    if (!s || len == 0 || (*cp = tok_utf8_decode(s, &n), n != len))
        return err_set("%s: \"%s\" must be a string of one character", where, key);
    return 0;
}

static char *dup_bytes(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ---- model: BPE ---------------------------------------------------------------------- */

static int vocab_id(tokenizer *t, const char *s, size_t n, const char *where, uint32_t *id) {
    if (!tok_strmap_get(&t->vocab, s, n, id))
        return err_set("%s: merge token '%.*s' is not in model.vocab", where,
                       (int)(n > 80 ? 80 : n), s);
    return 0;
}

static int add_merge(tokenizer *t, const char *a, size_t na, const char *b, size_t nb,
                     uint32_t rank, tok_buf *tmp) {
    char where[320];
    snprintf(where, sizeof where, "%s: model.merges[%u]", t->name, rank);
    uint32_t ia, ib, im;
    if (vocab_id(t, a, na, where, &ia) || vocab_id(t, b, nb, where, &ib)) return -1;
    tmp->len = 0;
    if (tok_buf_put(tmp, a, na) || tok_buf_put(tmp, b, nb)) return -1;
    if (vocab_id(t, tmp->p, tmp->len, where, &im)) return -1;
    /* a repeated pair keeps its last rank, as HF's HashMap collect does */
    return tok_map64_put(&t->merges, (uint64_t)ia << 32 | ib, (uint64_t)rank << 32 | im);
}

static int load_model(tokenizer *t, json_t *m, uint32_t *max_id) {
    char where[300];
    snprintf(where, sizeof where, "%s: model", t->name);
    if (!json_is_object(m)) return err_set("%s: missing or not an object", where);
    const char *type = get_str(m, "type", NULL);
    if (type && strcmp(type, "BPE") != 0)
        return err_set("%s: model type \"%s\" is not supported (fedlora supports BPE only)", where,
                       type);
    if (!type && !json_object_get(m, "merges"))
        return err_set("%s: no \"type\" field and no merges: only BPE is supported", where);
    json_t *drop = json_object_get(m, "dropout");
    if (drop && !json_is_null(drop) && !(json_is_number(drop) && json_number_value(drop) == 0.0))
        return err_set("%s: BPE dropout is not supported; set \"dropout\" to null", where);
    const char *fields[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(m, fields[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return err_set("%s: \"%s\" is not supported (only null)", where, fields[i]);
    }
    if (get_bool(m, "fuse_unk", 0, where, &t->fuse_unk) ||
        get_bool(m, "byte_fallback", 0, where, &t->byte_fallback) ||
        get_bool(m, "ignore_merges", 0, where, &t->ignore_merges))
        return -1;

    json_t *vocab = json_object_get(m, "vocab");
    if (!json_is_object(vocab)) return err_set("%s: \"vocab\" must be an object", where);
    tok_map64 seen = {0}; /* id → 1, to refuse two tokens with one id */
    const char *key;
    size_t klen; /* keys may hold NUL (\u0000) */
    json_t *val;
    int rc = 0;
    json_object_keylen_foreach(vocab, key, klen, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id >= (json_int_t)TOK_MAX_ID) {
            rc = err_set("%s.vocab[\"%.80s\"]: id must be an integer in [0, %u)", where, key,
                         TOK_MAX_ID);
            break;
        }
        uint64_t dummy;
        if (tok_map64_get(&seen, (uint64_t)id, &dummy)) {
            rc = err_set("%s.vocab: id %lld is given to two tokens (one is \"%.80s\")", where,
                         (long long)id, key);
            break;
        }
        if (tok_map64_put(&seen, (uint64_t)id, 1) ||
            tok_strmap_put(&t->vocab, key, klen, (uint32_t)id, NULL)) {
            rc = -1;
            break;
        }
        if ((uint32_t)id > *max_id || *max_id == TOK_NONE) *max_id = (uint32_t)id;
    }
    tok_map64_free(&seen);
    if (rc) return -1;

    json_t *merges = json_object_get(m, "merges");
    if (merges && !json_is_array(merges)) return err_set("%s: \"merges\" must be an array", where);
    tok_buf tmp = {0};
    uint32_t rank = 0;
    size_t i;
    json_array_foreach(merges, i, val) {
        if (json_is_string(val)) {
            /* legacy "a b" form: exactly two parts, "#version" lines skipped */
            const char *s = json_string_value(val);
            size_t n = json_string_length(val);
            if (n >= 8 && !memcmp(s, "#version", 8)) continue;
            const char *sp = memchr(s, ' ', n);
            if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s))) {
                rc = err_set("%s.merges[%zu]: \"%.80s\" is not two tokens separated by one space",
                             where, i, s);
                break;
            }
            rc = add_merge(t, s, (size_t)(sp - s), sp + 1, n - (size_t)(sp + 1 - s), rank, &tmp);
        } else if (json_is_array(val) && json_array_size(val) == 2 &&
                   json_is_string(json_array_get(val, 0)) &&
                   json_is_string(json_array_get(val, 1))) {
            json_t *a = json_array_get(val, 0), *b = json_array_get(val, 1);
            rc = add_merge(t, json_string_value(a), json_string_length(a), json_string_value(b),
                           json_string_length(b), rank, &tmp);
        } else {
            rc = err_set("%s.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", where, i);
        }
        if (rc) break;
        rank++;
    }
    tok_buf_free(&tmp);
    if (rc) return -1;

    t->unk_id = TOK_NONE;
    json_t *unk = json_object_get(m, "unk_token");
    if (unk && !json_is_null(unk)) {
        if (!json_is_string(unk)) return err_set("%s: \"unk_token\" must be a string", where);
        /* HF fails only when the unknown token is needed; fedlora refuses the file */
        if (!tok_strmap_get(&t->vocab, json_string_value(unk), json_string_length(unk), &t->unk_id))
            return err_set("%s: unk_token \"%.80s\" is not in model.vocab", where,
                           json_string_value(unk));
    }
    return 0;
}

/* ---- normalizers, pre-tokenizers, decoders, post-processor ------------------------------ */

static int load_normalizer(tokenizer *t, json_t *j, int depth) {
    char where[300];
    snprintf(where, sizeof where, "%s: normalizer", t->name);
    if (json_is_null(j) || !j) return 0;
    const char *type = get_type(j, where);
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(j, "normalizers"), *v;
        size_t i;
        if (!json_is_array(list) || depth > 4)
            return err_set("%s: Sequence needs a \"normalizers\" array (nesting at most 4)", where);
        json_array_foreach(list, i, v) if (load_normalizer(t, v, depth + 1)) return -1;
        return 0;
    }
    if (t->n_norms == TOK_MAX_STAGES)
        return err_set("%s: more than %d normalizers", where, TOK_MAX_STAGES);
    tok_norm *n = &t->norms[t->n_norms];
    memset(n, 0, sizeof *n);
    if (!strcmp(type, "Prepend")) {
        const char *s = get_str(j, "prepend", &n->str_len);
        if (!s) return err_set("%s: Prepend needs a \"prepend\" string", where);
        n->type = TOK_NORM_PREPEND;
        if (!(n->str = dup_bytes(s, n->str_len))) return err_set("%s: out of memory", where);
    } else if (!strcmp(type, "Replace")) {
        const char *s = get_str(j, "content", &n->str_len);
        if (!s) return err_set("%s: Replace needs a \"content\" string", where);
        n->type = TOK_NORM_REPLACE;
        if (!(n->str = dup_bytes(s, n->str_len))) return err_set("%s: out of memory", where);
        t->n_norms++; /* owned from here on, freed with the tokenizer */
        return tok_pattern_parse(json_object_get(j, "pattern"), where, &n->pat);
    } else if (!strcmp(type, "NFC")) {
        n->type = TOK_NORM_NFC;
    } else {
        return err_set("%s: normalizer type \"%s\" is not supported (fedlora supports Sequence, "
                       "Prepend, Replace, NFC)",
                       where, type);
    }
    t->n_norms++;
    return 0;
}

static int parse_prepend_scheme(json_t *j, const char *where, int *scheme) {
    const char *s = get_str(j, "prepend_scheme", NULL);
    if (s) {
        if (!strcmp(s, "always"))
            *scheme = TOK_PREPEND_ALWAYS;
        else if (!strcmp(s, "first"))
            *scheme = TOK_PREPEND_FIRST;
        else if (!strcmp(s, "never"))
            *scheme = TOK_PREPEND_NEVER;
        else
            return err_set("%s: unknown prepend_scheme \"%s\"", where, s);
        return 0;
    }
    /* files from tokenizers < 0.19 have add_prefix_space instead */
    int add = 1;
    if (get_bool(j, "add_prefix_space", 1, where, &add)) return -1;
    *scheme = add ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    return 0;
}

static int load_pretok(tokenizer *t, json_t *j, int depth) {
    char where[300];
    snprintf(where, sizeof where, "%s: pre_tokenizer", t->name);
    if (json_is_null(j) || !j) return 0;
    const char *type = get_type(j, where);
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(j, "pretokenizers"), *v;
        size_t i;
        if (!json_is_array(list) || depth > 4)
            return err_set("%s: Sequence needs a \"pretokenizers\" array (nesting at most 4)",
                           where);
        json_array_foreach(list, i, v) if (load_pretok(t, v, depth + 1)) return -1;
        return 0;
    }
    if (t->n_pretoks == TOK_MAX_STAGES)
        return err_set("%s: more than %d pre-tokenizers", where, TOK_MAX_STAGES);
    if (t->byte_level)
        return err_set("%s: %s after ByteLevel is not supported: ByteLevel must come last", where,
                       type);
    tok_pretok *p = &t->pretoks[t->n_pretoks];
    memset(p, 0, sizeof *p);
    if (!strcmp(type, "ByteLevel")) {
        p->type = TOK_PRE_BYTELEVEL;
        if (get_bool(j, "add_prefix_space", 1, where, &p->add_prefix_space) ||
            get_bool(j, "use_regex", 1, where, &p->use_regex))
            return -1;
        t->byte_level = 1;
    } else if (!strcmp(type, "Split")) {
        p->type = TOK_PRE_SPLIT;
        const char *b = get_str(j, "behavior", NULL);
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                      "Contiguous"};
        p->behavior = -1;
        for (int i = 0; b && i < 5; i++)
            if (!strcmp(b, names[i])) p->behavior = i;
        if (p->behavior < 0)
            return err_set("%s: Split behavior must be one of Removed, Isolated, "
                           "MergedWithPrevious, MergedWithNext, Contiguous",
                           where);
        if (get_bool(j, "invert", 0, where, &p->invert)) return -1;
        t->n_pretoks++;
        return tok_pattern_parse(json_object_get(j, "pattern"), where, &p->pat);
    } else if (!strcmp(type, "Metaspace")) {
        p->type = TOK_PRE_METASPACE;
        uint32_t cp;
        if (get_char(j, "replacement", where, &cp) ||
            parse_prepend_scheme(j, where, &p->prepend_scheme) ||
            get_bool(j, "split", 1, where, &p->split))
            return -1;
        p->repl_len = tok_utf8_encode(cp, p->repl);
    } else {
        return err_set("%s: pre-tokenizer type \"%s\" is not supported (fedlora supports "
                       "Sequence, ByteLevel, Split, Metaspace)",
                       where, type);
    }
    t->n_pretoks++;
    return 0;
}

static int load_decoder(tokenizer *t, json_t *j, int depth) {
    char where[300];
    snprintf(where, sizeof where, "%s: decoder", t->name);
    if (json_is_null(j) || !j) return 0;
    t->has_decoder = 1;
    const char *type = get_type(j, where);
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(j, "decoders"), *v;
        size_t i;
        if (!json_is_array(list) || depth > 4)
            return err_set("%s: Sequence needs a \"decoders\" array (nesting at most 4)", where);
        json_array_foreach(list, i, v) if (load_decoder(t, v, depth + 1)) return -1;
        return 0;
    }
    if (t->n_decs == TOK_MAX_STAGES)
        return err_set("%s: more than %d decoders", where, TOK_MAX_STAGES);
    tok_dec *d = &t->decs[t->n_decs];
    memset(d, 0, sizeof *d);
    if (!strcmp(type, "ByteLevel")) {
        d->type = TOK_DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        d->type = TOK_DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d->type = TOK_DEC_FUSE;
    } else if (!strcmp(type, "Metaspace")) {
        d->type = TOK_DEC_METASPACE;
        if (get_char(j, "replacement", where, &d->ch) ||
            parse_prepend_scheme(j, where, &d->prepend_scheme))
            return -1;
    } else if (!strcmp(type, "Strip")) {
        d->type = TOK_DEC_STRIP;
        json_t *a = json_object_get(j, "start"), *b = json_object_get(j, "stop");
        if (get_char(j, "content", where, &d->ch) || !json_is_integer(a) || !json_is_integer(b) ||
            json_integer_value(a) < 0 || json_integer_value(b) < 0)
            return err_set("%s: Strip needs \"content\" (one character), \"start\" and \"stop\" "
                           "(integers >= 0)",
                           where);
        d->start = (size_t)json_integer_value(a);
        d->stop = (size_t)json_integer_value(b);
    } else if (!strcmp(type, "Replace")) {
        const char *s = get_str(j, "content", &d->str_len);
        if (!s) return err_set("%s: Replace needs a \"content\" string", where);
        d->type = TOK_DEC_REPLACE;
        if (!(d->str = dup_bytes(s, d->str_len))) return err_set("%s: out of memory", where);
        t->n_decs++;
        return tok_pattern_parse(json_object_get(j, "pattern"), where, &d->pat);
    } else {
        return err_set("%s: decoder type \"%s\" is not supported (fedlora supports Sequence, "
                       "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip)",
                       where, type);
    }
    t->n_decs++;
    return 0;
}

static int push_ids(uint32_t **arr, size_t *n, json_t *ids, const char *where) {
    json_t *v;
    size_t i;
    if (!json_is_array(ids)) return err_set("%s: special token \"ids\" must be an array", where);
    json_array_foreach(ids, i, v) {
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (id < 0 || id >= (json_int_t)TOK_MAX_ID)
            return err_set("%s: special token id must be an integer in [0, %u)", where, TOK_MAX_ID);
        uint32_t *p = realloc(*arr, (*n + 1) * sizeof *p);
        if (!p) return err_set("%s: out of memory", where);
        *arr = p;
        p[(*n)++] = (uint32_t)id;
    }
    return 0;
}

static int load_template(tokenizer *t, json_t *j, const char *where) {
    if (t->tpl_prefix || t->tpl_suffix || t->n_prefix || t->n_suffix)
        return err_set("%s: more than one TemplateProcessing is not supported", where);
    json_t *single = json_object_get(j, "single"), *specials = json_object_get(j, "special_tokens");
    if (!json_is_array(single) || !json_is_object(specials))
        return err_set("%s: TemplateProcessing needs \"single\" and \"special_tokens\"", where);
    int seen_a = 0;
    json_t *item;
    size_t i;
    json_array_foreach(single, i, item) {
        json_t *sp = json_object_get(item, "SpecialToken"),
               *seq = json_object_get(item, "Sequence");
        if (json_is_object(seq)) {
            const char *id = get_str(seq, "id", NULL);
            if (!id || strcmp(id, "A") != 0 || seen_a)
                return err_set("%s: the single template must hold $A exactly once (and no $B)",
                               where);
            seen_a = 1;
        } else if (json_is_object(sp)) {
            size_t len;
            const char *id = get_str(sp, "id", &len);
            json_t *tok = id ? json_object_getn(specials, id, len) : NULL;
            if (!json_is_object(tok))
                return err_set("%s: template special token \"%s\" is missing from "
                               "special_tokens",
                               where, id ? id : "?");
            if (seen_a ? push_ids(&t->tpl_suffix, &t->n_suffix, json_object_get(tok, "ids"), where)
                       : push_ids(&t->tpl_prefix, &t->n_prefix, json_object_get(tok, "ids"), where))
                return -1;
        } else {
            return err_set("%s: template item %zu is neither SpecialToken nor Sequence", where, i);
        }
    }
    if (!seen_a) return err_set("%s: the single template has no $A", where);
    return 0;
}

static int load_post(tokenizer *t, json_t *j, int depth) {
    char where[300];
    snprintf(where, sizeof where, "%s: post_processor", t->name);
    if (json_is_null(j) || !j) return 0;
    const char *type = get_type(j, where);
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(j, "processors"), *v;
        size_t i;
        if (!json_is_array(list) || depth > 4)
            return err_set("%s: Sequence needs a \"processors\" array (nesting at most 4)", where);
        json_array_foreach(list, i, v) if (load_post(t, v, depth + 1)) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) { /* changes offsets only, never ids */
        t->trim_offsets = json_is_true(json_object_get(j, "trim_offsets"));
        t->trim_prefix_space = json_is_true(json_object_get(j, "add_prefix_space"));
        return 0;
    }
    if (!strcmp(type, "TemplateProcessing")) return load_template(t, j, where);
    return err_set("%s: post-processor type \"%s\" is not supported (fedlora supports "
                   "TemplateProcessing, ByteLevel, Sequence)",
                   where, type);
}

/* ---- added vocabulary ------------------------------------------------------------------ */

static int token_to_id(const tokenizer *t, const char *s, size_t n, uint32_t *id) {
    return tok_strmap_get(&t->added_map, s, n, id) || tok_strmap_get(&t->vocab, s, n, id);
}

static int added_equal(const tok_added *a, const tok_added *b) {
    return a->len == b->len && !memcmp(a->content, b->content, a->len) &&
           a->single_word == b->single_word && a->lstrip == b->lstrip && a->rstrip == b->rstrip &&
           a->normalized == b->normalized && a->special == b->special;
}

/* Order of the trie patterns: special tokens first, then the others. */
typedef struct {
    size_t *idx;
    size_t n, cap;
} idx_list;

static int idx_push(idx_list *l, size_t i) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        size_t *p = realloc(l->idx, cap * sizeof *p);
        if (!p) return err_set("tokenizer: out of memory");
        l->idx = p;
        l->cap = cap;
    }
    l->idx[l->n++] = i;
    return 0;
}

/* AddedVocabulary::add_tokens for one token (tok owns its content). */
static int added_add(tokenizer *t, tok_added *tok, uint32_t *max_added, int *have_max,
                     idx_list *specials, idx_list *classic) {
    if (tok->len == 0) {
        free(tok->content);
        return 0;
    }
    uint32_t dummy, id;
    int was_special = tok_strmap_get(&t->special_set, tok->content, tok->len, &dummy);
    if (tok->special && !was_special) {
        if (tok_strmap_put(&t->special_set, tok->content, tok->len, 1, NULL)) goto fail;
    }
    uint64_t idx;
    if (tok_strmap_get(&t->added_map, tok->content, tok->len, &id) &&
        tok_map64_get(&t->added_r, id, &idx) && added_equal(&t->added[idx], tok)) {
        free(tok->content);
        return 0;
    }
    if (!token_to_id(t, tok->content, tok->len, &id)) {
        size_t vocab_len = t->vocab.n;
        if (!*have_max)
            id = (uint32_t)vocab_len;
        else if (*max_added >= vocab_len || vocab_len == 0)
            id = *max_added + 1;
        else
            id = (uint32_t)vocab_len;
    }
    if (id >= TOK_MAX_ID) {
        err_set("%s: added tokens: id %u is too large", t->name, id);
        goto fail;
    }
    if (!*have_max || id > *max_added) *max_added = id;
    *have_max = 1;
    if (t->n_added == t->cap_added) {
        size_t cap = t->cap_added ? t->cap_added * 2 : 16;
        tok_added *p = realloc(t->added, cap * sizeof *p);
        if (!p) {
            err_set("%s: out of memory for added tokens", t->name);
            goto fail;
        }
        t->added = p;
        t->cap_added = cap;
    }
    size_t at = t->n_added++;
    t->added[at] = *tok;
    if (tok_strmap_put(&t->added_map, tok->content, tok->len, id, NULL) ||
        tok_map64_put(&t->added_r, id, at))
        return -1;
    if (tok->special && !was_special && idx_push(specials, at)) return -1;
    if (!tok_strmap_get(&t->special_set, tok->content, tok->len, &dummy) && idx_push(classic, at))
        return -1;
    return 0;
fail:
    free(tok->content);
    return -1;
}

static int matcher_build(tok_matcher *m, char **s, size_t *len, uint32_t *id, size_t n) {
    m->s = s;
    m->len = len;
    m->id = id;
    m->n = n;
    /* counting sort by first byte, stable so that earlier patterns win ties */
    uint32_t count[257] = {0};
    for (size_t i = 0; i < n; i++) count[(unsigned char)s[i][0] + 1]++;
    for (int b = 0; b < 256; b++) count[b + 1] += count[b];
    memcpy(m->bucket_start, count, sizeof count);
    char **s2 = malloc((n ? n : 1) * sizeof *s2);
    size_t *l2 = malloc((n ? n : 1) * sizeof *l2);
    uint32_t *i2 = malloc((n ? n : 1) * sizeof *i2);
    if (!s2 || !l2 || !i2) {
        free(s2);
        free(l2);
        free(i2);
        return err_set("tokenizer: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t at = count[(unsigned char)s[i][0]]++;
        s2[at] = s[i];
        l2[at] = len[i];
        i2[at] = id[i];
    }
    memcpy(s, s2, n * sizeof *s);
    memcpy(len, l2, n * sizeof *len);
    memcpy(id, i2, n * sizeof *id);
    free(s2);
    free(l2);
    free(i2);
    return 0;
}

static void matcher_free(tok_matcher *m) {
    for (size_t i = 0; i < m->n; i++) free(m->s[i]);
    free(m->s);
    free(m->len);
    free(m->id);
    memset(m, 0, sizeof *m);
}

/* Rust regex's Unicode \w (Alphabetic | Mark | Decimal_Number |
 * Connector_Punctuation | Join_Control), which HF uses to decide whether a
 * single_word token stands alone; Alphabetic is Letter | Nl | Other_Alphabetic,
 * whose members outside Mark are the circled and squared Latin letters. */
static const char WORD_CHAR_REGEX[] =
    "[\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200c}\\x{200d}\\x{24b6}-\\x{24e9}"
    "\\x{1f130}-\\x{1f149}\\x{1f150}-\\x{1f169}\\x{1f170}-\\x{1f189}]";

/* AddedVocabulary::refresh_added_tokens: one pattern list for the raw text,
 * one (contents normalized) for the normalized text. */
static int build_matchers(tokenizer *t, const idx_list *specials, const idx_list *classic) {
    size_t total = specials->n + classic->n;
    int rc = -1;
    char **s[2] = {calloc(total + 1, sizeof(char *)), calloc(total + 1, sizeof(char *))};
    size_t *len[2] = {calloc(total + 1, sizeof(size_t)), calloc(total + 1, sizeof(size_t))};
    uint32_t *ids[2] = {calloc(total + 1, sizeof(uint32_t)), calloc(total + 1, sizeof(uint32_t))};
    size_t n[2] = {0, 0};
    tok_buf norm = {0};
    if (!s[0] || !s[1] || !len[0] || !len[1] || !ids[0] || !ids[1]) {
        err_set("%s: out of memory for added tokens", t->name);
        goto done;
    }
    for (size_t k = 0; k < total; k++) {
        const tok_added *a =
            &t->added[k < specials->n ? specials->idx[k] : classic->idx[k - specials->n]];
        uint32_t id;
        token_to_id(t, a->content, a->len, &id);
        const char *pat = a->content;
        size_t plen = a->len;
        if (a->normalized && t->n_norms) {
            norm.len = 0;
            if (tok_normalize(t, a->content, a->len, &norm)) goto done;
            pat = norm.p;
            plen = norm.len;
        }
        if (plen == 0) continue; /* an empty pattern would match everywhere */
        int w = a->normalized;
        if (!(s[w][n[w]] = dup_bytes(pat, plen))) {
            err_set("%s: out of memory for added tokens", t->name);
            goto done;
        }
        len[w][n[w]] = plen;
        ids[w][n[w]++] = id;
        if (a->single_word && !t->word_re &&
            tok_regex_compile(WORD_CHAR_REGEX, sizeof WORD_CHAR_REGEX - 1, "single_word",
                              &t->word_re))
            goto done;
    }
    if (matcher_build(&t->match_raw, s[0], len[0], ids[0], n[0])) goto done;
    s[0] = NULL;
    len[0] = NULL;
    ids[0] = NULL;
    if (matcher_build(&t->match_norm, s[1], len[1], ids[1], n[1])) goto done;
    s[1] = NULL;
    len[1] = NULL;
    ids[1] = NULL;
    rc = 0;
done:
    for (int w = 0; w < 2; w++) {
        for (size_t k = 0; s[w] && k < n[w]; k++) free(s[w][k]);
        free(s[w]);
        free(len[w]);
        free(ids[w]);
    }
    tok_buf_free(&norm);
    return rc;
}

static int load_added(tokenizer *t, json_t *list, uint32_t *max_id) {
    char where[300];
    snprintf(where, sizeof where, "%s: added_tokens", t->name);
    if (!list || json_is_null(list)) return build_matchers(t, &(idx_list){0}, &(idx_list){0});
    if (!json_is_array(list)) return err_set("%s: must be an array", where);
    if (json_array_size(list) > TOK_MAX_ADDED)
        return err_set("%s: more than %u added tokens", where, TOK_MAX_ADDED);
    idx_list specials = {0}, classic = {0};
    uint32_t max_added = 0;
    int have_max = 0, rc = 0;
    json_t *v;
    size_t i;
    json_array_foreach(list, i, v) {
        size_t len;
        const char *content = json_is_object(v) ? get_str(v, "content", &len) : NULL;
        if (!content) {
            rc = err_set("%s[%zu]: expected an object with a \"content\" string", where, i);
            break;
        }
        tok_added a = {0};
        int sw = 0, ls = 0, rs = 0, norm = 0, sp = 0;
        if (get_bool(v, "special", 0, where, &sp) || get_bool(v, "single_word", 0, where, &sw) ||
            get_bool(v, "lstrip", 0, where, &ls) || get_bool(v, "rstrip", 0, where, &rs) ||
            get_bool(v, "normalized", !sp, where, &norm)) {
            rc = -1;
            break;
        }
        a.special = (uint8_t)sp;
        a.single_word = (uint8_t)sw;
        a.lstrip = (uint8_t)ls;
        a.rstrip = (uint8_t)rs;
        a.normalized = (uint8_t)norm;
        a.len = len;
        if (!(a.content = dup_bytes(content, len))) {
            rc = err_set("%s: out of memory", where);
            break;
        }
        if (added_add(t, &a, &max_added, &have_max, &specials, &classic)) {
            rc = -1;
            break;
        }
    }
    if (!rc) rc = build_matchers(t, &specials, &classic);
    if (!rc && have_max && (max_added > *max_id || *max_id == TOK_NONE)) *max_id = max_added;
    free(specials.idx);
    free(classic.idx);
    return rc;
}

/* ---- id tables and scratch ----------------------------------------------------------------- */

static int build_id_tables(tokenizer *t, uint32_t max_id) {
    t->n_ids = max_id == TOK_NONE ? 0 : max_id + 1;
    size_t n = t->n_ids ? t->n_ids : 1;
    t->id_str = calloc(n, sizeof *t->id_str);
    t->id_len = calloc(n, sizeof *t->id_len);
    t->id_special = calloc(n, 1);
    if (!t->id_str || !t->id_len || !t->id_special)
        return err_set("%s: out of memory for %u ids", t->name, t->n_ids);
    for (size_t i = 0; i < t->vocab.n; i++) {
        size_t len;
        const char *s = tok_strmap_key(&t->vocab, i, &len);
        t->id_str[t->vocab.val[i]] = s;
        t->id_len[t->vocab.val[i]] = (uint32_t)len;
    }
    for (uint32_t id = 0; id < t->n_ids; id++) {
        uint64_t idx;
        if (tok_map64_get(&t->added_r, id, &idx)) {
            /* HF shows a normalized added token in its normalized form, which
             * is what the decoder then sees (tokenizers 0.23) */
            tok_added *a = &t->added[idx];
            if (a->normalized && t->n_norms && !a->shown) {
                tok_buf norm = {0};
                if (tok_normalize(t, a->content, a->len, &norm) || tok_buf_put(&norm, "", 1)) {
                    tok_buf_free(&norm);
                    return -1;
                }
                a->shown = norm.p;
                a->shown_len = norm.len - 1;
            }
            t->id_str[id] = a->shown ? a->shown : a->content;
            t->id_len[id] = (uint32_t)(a->shown ? a->shown_len : a->len);
        }
        uint32_t dummy;
        t->id_special[id] =
            t->id_str[id] && tok_strmap_get(&t->special_set, t->id_str[id], t->id_len[id], &dummy);
    }
    /* the ids of single units (bytes or ASCII characters), and of <0xNN> */
    char key[8];
    for (unsigned b = 0; b < 256; b++) {
        t->unit_id[b] = t->fallback[b] = TOK_NONE;
        size_t kn = 0;
        if (t->byte_level)
            kn = tok_utf8_encode(tok_byte_to_cp(b), key);
        else if (b < 0x80)
            key[kn++] = (char)b;
        if (kn) tok_strmap_get(&t->vocab, key, kn, &t->unit_id[b]);
        snprintf(key, sizeof key, "<0x%02X>", b);
        tok_strmap_get(&t->vocab, key, 6, &t->fallback[b]);
    }
    return 0;
}

static int init_scratch(tokenizer *t) {
    t->md = pcre2_match_data_create(1, NULL);
    t->mctx = pcre2_match_context_create(NULL);
    /* deep backtracking (long whitespace runs) needs more than the 32 KiB default */
    t->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    t->cache = calloc(TOK_CACHE_SLOTS, sizeof *t->cache);
    if (!t->md || !t->mctx || !t->jit_stack || !t->cache)
        return err_set("%s: out of memory for encoder scratch", t->name);
    pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
    return 0;
}

/* The pre-tokenizer regex of GPT-2, hard-wired in HF's ByteLevel. */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

int tokenizer_load_json(const char *json, size_t len, const char *name, tokenizer **out) {
    *out = NULL;
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) return err_set("%s: out of memory", name);
    snprintf(t->name, sizeof t->name, "%s", name);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        err_set("%s: not valid JSON (line %d, column %d): %s", name, jerr.line, jerr.column,
                jerr.text);
        tokenizer_free(t);
        return -1;
    }
    uint32_t max_id = TOK_NONE;
    int rc = -1;
    const char *version = json_is_object(root) ? get_str(root, "version", NULL) : NULL;
    if (!json_is_object(root)) {
        err_set("%s: the top level must be a JSON object", name);
    } else if (version && strcmp(version, "1.0") != 0) {
        err_set("%s: unknown tokenizer.json version \"%s\" (expected \"1.0\")", name, version);
    } else if (!init_scratch(t) && !load_model(t, json_object_get(root, "model"), &max_id) &&
               !load_normalizer(t, json_object_get(root, "normalizer"), 0) &&
               !load_pretok(t, json_object_get(root, "pre_tokenizer"), 0) &&
               !load_post(t, json_object_get(root, "post_processor"), 0) &&
               !load_decoder(t, json_object_get(root, "decoder"), 0) &&
               !load_added(t, json_object_get(root, "added_tokens"), &max_id) &&
               !build_id_tables(t, max_id)) {
        rc = 0;
        for (size_t i = 0; i < t->n_pretoks && !rc; i++)
            if (t->pretoks[i].type == TOK_PRE_BYTELEVEL && t->pretoks[i].use_regex &&
                !t->bytelevel_re)
                rc = tok_regex_compile(GPT2_REGEX, sizeof GPT2_REGEX - 1, name, &t->bytelevel_re);
    }
    json_decref(root);
    if (rc) {
        tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int tokenizer_load(const char *path, tokenizer **out) {
    *out = NULL;
    char *data;
    size_t len;
    if (fio_read_all(path, TOKENIZER_JSON_MAX, &data, &len))
        return err_context("loading tokenizer");
    int rc = tokenizer_load_json(data, len, path, out);
    free(data);
    return rc;
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    tok_strmap_free(&t->vocab);
    tok_map64_free(&t->merges);
    tok_strmap_free(&t->added_map);
    tok_map64_free(&t->added_r);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].shown);
    }
    free(t->added);
    tok_strmap_free(&t->special_set);
    matcher_free(&t->match_raw);
    matcher_free(&t->match_norm);
    pcre2_code_free(t->word_re);
    for (size_t i = 0; i < t->n_norms; i++) {
        free(t->norms[i].str);
        tok_pattern_free(&t->norms[i].pat);
    }
    for (size_t i = 0; i < t->n_pretoks; i++) tok_pattern_free(&t->pretoks[i].pat);
    for (size_t i = 0; i < t->n_decs; i++) {
        free(t->decs[i].str);
        tok_pattern_free(&t->decs[i].pat);
    }
    free(t->tpl_prefix);
    free(t->tpl_suffix);
    pcre2_code_free(t->bytelevel_re);
    free(t->id_str);
    free(t->id_len);
    free(t->id_special);
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mctx);
    pcre2_jit_stack_free(t->jit_stack);
    tok_buf_free(&t->norm_buf);
    tok_buf_free(&t->norm_tmp);
    tok_buf_free(&t->word_key);
    for (int i = 0; i < TOK_MAX_STAGES; i++) {
        tok_buf_free(&t->stages[i].text);
        free(t->stages[i].ev.ev);
        free(t->stages[i].pieces.ev);
    }
    free(t->scratch_ev.ev);
    free(t->norm_al.a);
    free(t->norm_tmp_al.a);
    for (int i = 0; i < TOK_MAX_STAGES; i++) free(t->stage_al[i].a);
    free(t->sym_start);
    free(t->sym_end);
    free(t->sym_id);
    free(t->sym_prev);
    free(t->sym_next);
    free(t->heap);
    free(t->cache);
    free(t);
}

/* ---- accessors ---------------------------------------------------------------------------- */

uint32_t tokenizer_vocab_size(const tokenizer *t) {
    return t->n_ids;
}

int tokenizer_token_to_id(const tokenizer *t, const char *token, size_t len, uint32_t *id) {
    if (token_to_id(t, token, len, id)) return 0;
    return err_set("%s: no token '%.*s'", t->name, (int)(len > 80 ? 80 : len), token);
}

const char *tokenizer_id_to_token(const tokenizer *t, uint32_t id, size_t *len) {
    if (id >= t->n_ids || !t->id_str[id]) return NULL;
    if (len) *len = t->id_len[id];
    return t->id_str[id];
}

int tokenizer_is_special(const tokenizer *t, uint32_t id) {
    return id < t->n_ids && t->id_special[id];
}
