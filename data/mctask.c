/* mctask — multiple-choice tasks, read and scored as lm-evaluation-harness
 * does (mctask.h says how, step by step). */
#include "data/mctask.h"

#include "util/err.h"
#include "util/fio.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct mctask {
    mctask_doc *docs;
    size_t n, cap;
    /* Every string of every doc, NUL-terminated, one after another; docs
     * point into it once it stops moving (the end of parsing). */
    char *text;
    size_t text_len, text_cap;
    const char **choice_ptrs;
    size_t n_ptrs, ptr_cap;
};

/* While parsing, doc strings are offsets into t->text (kept here, turned
 * into pointers at the end). */
typedef struct {
    size_t context, delimiter;
    size_t first_choice; /* index into offs */
} pending_doc;

typedef struct {
    mctask *t;
    pending_doc *pd;
    size_t *offs; /* choice offsets */
    size_t n_offs, offs_cap;
    char where[512];
} parser;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return err_set("out of memory reading a task file");
    *p = q;
    *cap = c;
    return 0;
}

/* Copies a string into the text buffer; its offset in *off. */
static int keep(parser *ps, const char *s, size_t len, size_t *off) {
    mctask *t = ps->t;
    if (grow((void **)&t->text, &t->text_cap, t->text_len + len + 1, 1) != 0) return -1;
    memcpy(t->text + t->text_len, s, len);
    t->text[t->text_len + len] = '\0';
    *off = t->text_len;
    t->text_len += len + 1;
    return 0;
}

static int string_field(parser *ps, json_t *v, const char *key, int allow_empty, size_t *off) {
    if (!json_is_string(v)) return err_set("%s: \"%s\" must be a string", ps->where, key);
    size_t len = json_string_length(v);
    if (len > MCTASK_TEXT_MAX)
        return err_set("%s: \"%s\" is %zu bytes, more than the %zu allowed", ps->where, key, len,
                       MCTASK_TEXT_MAX);
    if (!allow_empty && len == 0) return err_set("%s: \"%s\" is empty", ps->where, key);
    return keep(ps, json_string_value(v), len, off);
}

static int add_record(parser *ps, json_t *rec) {
    mctask *t = ps->t;
    if (!json_is_object(rec))
        return err_set("%s: a question must be a JSON object {\"context\", \"choices\", \"gold\"}",
                       ps->where);
    json_t *ctx = json_object_get(rec, "context"), *ch = json_object_get(rec, "choices"),
           *gold = json_object_get(rec, "gold"), *delim = json_object_get(rec, "delimiter");
    if (!ctx || !ch || !gold)
        return err_set("%s: missing \"%s\" (a question has \"context\", \"choices\" and \"gold\")",
                       ps->where,
                       !ctx  ? "context"
                       : !ch ? "choices"
                             : "gold");
    if (t->n >= MCTASK_DOCS_MAX)
        return err_set("%s: more than %d questions in one task file", ps->where, MCTASK_DOCS_MAX);
    if (grow((void **)&t->docs, &t->cap, t->n + 1, sizeof *t->docs) != 0) return -1;
    /* pd follows docs' capacity */
    pending_doc *pd = realloc(ps->pd, t->cap * sizeof *pd);
    if (!pd) return err_set("out of memory reading a task file");
    ps->pd = pd;
    pending_doc *p = &ps->pd[t->n];
    mctask_doc *d = &t->docs[t->n];
    memset(d, 0, sizeof *d);
    if (string_field(ps, ctx, "context", 1, &p->context) != 0) return -1;
    const char *c = json_string_value(ctx);
    size_t clen = json_string_length(ctx);
    /* lm-evaluation-harness moves a context's trailing whitespace into the
     * continuation and then needs a non-empty context (it asserts): a
     * context of whitespace only cannot be scored there either. */
    if (clen > 0 && mctask_rstrip(c, clen) == 0)
        return err_set("%s: \"context\" is only whitespace; give text, or \"\" for no context",
                       ps->where);
    if (delim) {
        if (string_field(ps, delim, "delimiter", 1, &p->delimiter) != 0) return -1;
    } else if (keep(ps, " ", 1, &p->delimiter) != 0) {
        return -1;
    }
    if (!json_is_array(ch) || json_array_size(ch) < 2 || json_array_size(ch) > MCTASK_CHOICES_MAX)
        return err_set("%s: \"choices\" must be an array of 2 to %d strings", ps->where,
                       MCTASK_CHOICES_MAX);
    p->first_choice = ps->n_offs;
    for (size_t i = 0; i < json_array_size(ch); i++) {
        char key[32];
        snprintf(key, sizeof key, "choices[%zu]", i);
        if (grow((void **)&ps->offs, &ps->offs_cap, ps->n_offs + 1, sizeof *ps->offs) != 0)
            return -1;
        /* An empty choice has length 0, which acc_norm would divide by. */
        if (string_field(ps, json_array_get(ch, i), key, 0, &ps->offs[ps->n_offs]) != 0) return -1;
        ps->n_offs++;
    }
    d->n_choices = (int)json_array_size(ch);
    if (!json_is_integer(gold) || json_integer_value(gold) < 0 ||
        json_integer_value(gold) >= d->n_choices)
        return err_set("%s: \"gold\" must be the index of the right choice, an integer from 0 to "
                       "%d",
                       ps->where, d->n_choices - 1);
    d->gold = (int)json_integer_value(gold);
    t->n++;
    return 0;
}

static int parse_lines(parser *ps, const char *name, const char *buf, size_t len) {
    size_t line = 0;
    for (const char *p = buf, *end = buf + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *next = p + n + 1;
        line++;
        if (n > 0 && p[n - 1] == '\r') n--;
        size_t k = 0;
        while (k < n && (p[k] == ' ' || p[k] == '\t')) k++;
        if (k < n) {
            snprintf(ps->where, sizeof ps->where, "%s:%zu", name, line);
            json_error_t je;
            json_t *rec = json_loadb(p, n, JSON_REJECT_DUPLICATES, &je);
            if (!rec)
                return err_set("%s: not valid JSON (%s, column %d); each line must be one JSON "
                               "object such as {\"context\": \"...\", \"choices\": [\"...\", "
                               "\"...\"], \"gold\": 0}",
                               ps->where, je.text, je.column);
            size_t first = ps->t->n;
            int rc = add_record(ps, rec);
            json_decref(rec);
            if (rc != 0) return -1;
            if (ps->t->n > first) ps->t->docs[first].line = line;
        }
        p = next;
    }
    if (ps->t->n == 0)
        return err_set("%s has no question: a task file holds one JSON object per line, "
                       "{\"context\": \"...\", \"choices\": [\"...\", \"...\"], \"gold\": 0}",
                       name);
    return 0;
}

int mctask_parse(mctask **out, const char *data, size_t len, const char *name) {
    *out = NULL;
    mctask *t = calloc(1, sizeof *t);
    if (!t) return err_set("out of memory reading %s", name);
    parser ps = {.t = t};
    int rc = parse_lines(&ps, name, data, len);
    /* The text stops moving: turn offsets into pointers. */
    if (rc == 0 && !(t->choice_ptrs = malloc((ps.n_offs ? ps.n_offs : 1) * sizeof(char *))))
        rc = err_set("out of memory reading %s", name);
    if (rc == 0) {
        for (size_t i = 0; i < ps.n_offs; i++) t->choice_ptrs[i] = t->text + ps.offs[i];
        t->n_ptrs = ps.n_offs;
        for (size_t i = 0; i < t->n; i++) {
            t->docs[i].context = t->text + ps.pd[i].context;
            t->docs[i].delimiter = t->text + ps.pd[i].delimiter;
            t->docs[i].choices = t->choice_ptrs + ps.pd[i].first_choice;
        }
    }
    free(ps.pd);
    free(ps.offs);
    if (rc != 0) {
        mctask_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int mctask_load(mctask **out, const char *path) {
    char *buf;
    size_t len;
    if (fio_read_all(path, MCTASK_MAX_BYTES, &buf, &len) != 0)
        return err_context("reading task file %s", path);
    int rc = mctask_parse(out, buf, len, path);
    free(buf);
    return rc;
}

void mctask_free(mctask *t) {
    if (!t) return;
    free(t->docs);
    free(t->text);
    free(t->choice_ptrs);
    free(t);
}

size_t mctask_count(const mctask *t) {
    return t->n;
}

const mctask_doc *mctask_get(const mctask *t, size_t i) {
    return i < t->n ? &t->docs[i] : NULL;
}

/* ---- text ------------------------------------------------------------------------------ */

static int py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

size_t mctask_rstrip(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    while (len > 0) {
        /* The last code point: back over continuation bytes to its lead. */
        size_t start = len - 1;
        while (start > 0 && (u[start] & 0xc0) == 0x80) start--;
        uint32_t c = u[start];
        size_t n = len - start;
        if (n == 2)
            c = (uint32_t)(u[start] & 0x1f) << 6 | (u[start + 1] & 0x3f);
        else if (n == 3)
            c = (uint32_t)(u[start] & 0x0f) << 12 | (uint32_t)(u[start + 1] & 0x3f) << 6 |
                (u[start + 2] & 0x3f);
        else if (n == 4)
            c = (uint32_t)(u[start] & 0x07) << 18 | (uint32_t)(u[start + 1] & 0x3f) << 12 |
                (uint32_t)(u[start + 2] & 0x3f) << 6 | (u[start + 3] & 0x3f);
        if (!py_space(c)) break;
        len = start;
    }
    return len;
}

size_t mctask_codepoints(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += ((unsigned char)s[i] & 0xc0) != 0x80;
    return n;
}

/* ---- requests ---------------------------------------------------------------------------- */

static int encode(tokenizer *tok, const char *s, size_t len, tokenizer_ids *out) {
    out->n = 0;
    return tokenizer_encode(tok, s, len, 0, out);
}

int mctask_request_build(const mctask_doc *d, int c, tokenizer *tok, int prefix_token,
                         int max_length, int vocab_size, mctask_request *r) {
    memset(r, 0, sizeof *r);
    size_t clen = strlen(d->context), dlen = strlen(d->delimiter), chlen = strlen(d->choices[c]);
    char *all = malloc(clen + dlen + chlen + 1);
    if (!all) return err_set("out of memory");
    memcpy(all, d->context, clen);
    memcpy(all + clen, d->delimiter, dlen);
    memcpy(all + clen + dlen, d->choices[c], chlen);
    /* seq = ctx + cont, n_ctx of them the context's. */
    tokenizer_ids seq = {0}, ctx = {0};
    size_t n_ctx;
    int rc = -1;
    if (clen == 0) {
        /* TemplateLM.loglikelihood: an empty context is the prefix token,
         * the continuation encoded on its own. */
        if (prefix_token < 0 || prefix_token >= vocab_size) {
            err_set("the context is empty, and the model has no BOS or EOS token to put there "
                    "instead (bos_token_id, eos_token_id in config.json)");
            goto done;
        }
        if (tokenizer_ids_push(&seq, (uint32_t)prefix_token) != 0 ||
            encode(tok, all, dlen + chlen, &ctx) != 0)
            goto done;
        for (size_t i = 0; i < ctx.n; i++)
            if (tokenizer_ids_push(&seq, ctx.ids[i]) != 0) goto done;
        n_ctx = 1;
    } else {
        /* _encode_pair: the context's trailing whitespace goes with the
         * continuation (word-initial spaces belong to the following
         * token); cont = encode(context + continuation)[len(encode(context)):],
         * sliced as lm-evaluation-harness slices it. */
        if (encode(tok, all, clen + dlen + chlen, &seq) != 0 ||
            encode(tok, all, mctask_rstrip(all, clen), &ctx) != 0)
            goto done;
        n_ctx = ctx.n < seq.n ? ctx.n : seq.n;
        if (n_ctx == 0) {
            /* lm-evaluation-harness asserts a non-empty context here. */
            err_set("the context encodes to no token; lm-evaluation-harness cannot score it "
                    "either");
            goto done;
        }
    }
    size_t total = seq.n, n_cont = total - n_ctx;
    if (n_cont == 0) {
        err_set("choice %d has no token of its own after the context (the tokenizer merged it "
                "into the context); lm-evaluation-harness cannot score it either",
                c);
        goto done;
    }
    if (n_cont > (size_t)max_length) {
        err_set("choice %d is %zu tokens, more than the %d the model reads", c, n_cont, max_length);
        goto done;
    }
    /* inp = (ctx + cont)[-(max_length + 1):][:-1]; the last token, which
     * the input leaves out, is kept after it: the scorer reads the target
     * of input position p at p + 1. */
    size_t from = total > (size_t)max_length + 1 ? total - (size_t)max_length - 1 : 0;
    r->ids = malloc((total - from) * sizeof *r->ids);
    if (!r->ids) {
        err_set("out of memory");
        goto done;
    }
    for (size_t i = from; i < total; i++) {
        if (seq.ids[i] >= (uint32_t)vocab_size) {
            err_set("token id %u is not below the model's vocabulary size %d: the tokenizer "
                    "does not belong to this model",
                    seq.ids[i], vocab_size);
            goto done;
        }
        r->ids[i - from] = (int32_t)seq.ids[i];
    }
    r->n = (int)(total - from - 1);
    r->cont = (int)n_cont;
    rc = 0;
done:
    if (rc != 0) {
        free(r->ids);
        memset(r, 0, sizeof *r);
    }
    free(all);
    tokenizer_ids_free(&seq);
    tokenizer_ids_free(&ctx);
    return rc;
}

/* ---- scoring ------------------------------------------------------------------------------ */

void mctask_result_free(mctask_result *r) {
    free(r->ll);
    free(r->greedy);
    free(r->cont_len);
    free(r->first);
    free(r->pred);
    free(r->pred_norm);
    memset(r, 0, sizeof *r);
}

/* logits (V) at one position: log_softmax[target] in double, and whether
 * target is the first argmax (torch.argmax's choice on ties). */
static double log_prob(const real *logits, int V, int target, int *is_argmax) {
    double mx = logits[0];
    int arg = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > mx) mx = logits[v], arg = v;
    double sum = 0;
    for (int v = 0; v < V; v++) sum += exp((double)logits[v] - mx);
    *is_argmax = arg == target;
    return (double)logits[target] - mx - log(sum);
}

/* Scores n requests (n <= B) in one forward of acts' (B, T) rows. */
static int score_batch(const model *m, model_acts *acts, int B, int T, int32_t *tokens,
                       mctask_request *req, int n, double *ll, int *greedy) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            tokens[(size_t)b * T + t] = b < n && t < req[b].n ? req[b].ids[t] : 0;
    if (model_forward(m, acts, tokens, NULL, NULL, NULL) != 0) return -1;
    const real *logits = model_acts_logits(acts);
    int V = m->cfg.vocab_size;
    for (int b = 0; b < n; b++) {
        double sum = 0;
        int all = 1;
        /* Input position p predicts the token at p + 1 (ids[n] is the last). */
        for (int p = req[b].n - req[b].cont; p < req[b].n; p++) {
            int am;
            sum += log_prob(logits + ((size_t)b * T + p) * V, V, req[b].ids[p + 1], &am);
            all &= am;
        }
        ll[b] = sum;
        greedy[b] = all;
    }
    return 0;
}

static int first_argmax(const double *v, int n) {
    int k = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[k] || (isnan(v[i]) && !isnan(v[k]))) k = i;
    return k;
}

int mctask_score(const mctask *t, const model *m, tokenizer *tok, const mctask_options *o,
                 mctask_result *res) {
    memset(res, 0, sizeof *res);
    int B = o->batch > 0 ? o->batch : 1, V = m->cfg.vocab_size;
    size_t total = 0;
    for (size_t i = 0; i < t->n; i++) total += (size_t)t->docs[i].n_choices;
    mctask_request *req = calloc(total, sizeof *req);
    res->ll = calloc(total, sizeof *res->ll);
    res->greedy = calloc(total, sizeof *res->greedy);
    res->cont_len = calloc(total, sizeof *res->cont_len);
    res->first = calloc(t->n, sizeof *res->first);
    res->pred = calloc(t->n, sizeof *res->pred);
    res->pred_norm = calloc(t->n, sizeof *res->pred_norm);
    model_acts *acts = NULL;
    int32_t *tokens = NULL;
    int rc = -1;
    if (!req || !res->ll || !res->greedy || !res->cont_len || !res->first || !res->pred ||
        !res->pred_norm) {
        err_set("out of memory for %zu choices", total);
        goto done;
    }
    /* Every request first: the longest decides the rows' length. */
    int T = 1;
    for (size_t i = 0, k = 0; i < t->n; i++) {
        const mctask_doc *d = &t->docs[i];
        res->first[i] = k;
        for (int c = 0; c < d->n_choices; c++, k++) {
            if (mctask_request_build(d, c, tok, o->prefix_token, o->max_length, V, &req[k]) != 0) {
                err_context("line %zu", d->line);
                goto done;
            }
            res->cont_len[k] = req[k].cont;
            if (req[k].n > T) T = req[k].n;
        }
    }
    tokens = malloc((size_t)B * T * sizeof *tokens);
    if (!tokens) {
        err_set("out of memory");
        goto done;
    }
    if (model_acts_create(&acts, m, B, T) != 0) goto done;
    int tty = o->progress && isatty(fileno(o->progress));
    for (size_t k = 0; k < total; k += (size_t)B) {
        int n = total - k < (size_t)B ? (int)(total - k) : B;
        if (score_batch(m, acts, B, T, tokens, req + k, n, res->ll + k, res->greedy + k) != 0)
            goto done;
        if (tty) fprintf(o->progress, "\rscoring choice %zu/%zu", k + (size_t)n, total);
    }
    if (tty) fprintf(o->progress, "\n");
    size_t right = 0, right_norm = 0;
    for (size_t i = 0; i < t->n; i++) {
        const mctask_doc *d = &t->docs[i];
        const double *ll = res->ll + res->first[i];
        double norm[MCTASK_CHOICES_MAX];
        for (int c = 0; c < d->n_choices; c++)
            norm[c] = ll[c] / (double)mctask_codepoints(d->choices[c], strlen(d->choices[c]));
        res->pred[i] = first_argmax(ll, d->n_choices);
        res->pred_norm[i] = first_argmax(norm, d->n_choices);
        right += res->pred[i] == d->gold;
        right_norm += res->pred_norm[i] == d->gold;
    }
    res->docs = t->n;
    res->choices = total;
    res->acc = (double)right / (double)t->n;
    res->acc_norm = (double)right_norm / (double)t->n;
    rc = 0;
done:
    for (size_t k = 0; req && k < total; k++) free(req[k].ids);
    free(req);
    free(tokens);
    model_acts_free(acts);
    if (rc != 0) mctask_result_free(res);
    return rc;
}
