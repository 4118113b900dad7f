/* dataset.c — data files to packed rows (the formats and templates are in
 * dataset.h and docs/training.md).
 *
 * Every format becomes the same thing: a list of documents, each a run of
 * tokens with a loss flag per token. Text and JSONL documents are tokenized
 * into memory (tok, mask); a pre-tokenized corpus stays in its mapping and
 * its documents are read row by row. A split is a list of documents whose
 * concatenation is the split's stream; rows are windows of that stream. */
#include "data/dataset.h"

#include "model/chat/chat.h"
#include "model/model.h"
#include "model/tokenizer/tokcorpus.h"
#include "model/tokenizer/tokenizer.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/rng.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    size_t n_docs;
    size_t *docs;  /* (n_docs) document indices, in file order */
    uint64_t *cum; /* (n_docs + 1) stream offset where each document starts */
    size_t n_rows;
    uint64_t *rows; /* (n_rows) stream offset of each kept row */
    int64_t n_targets;
} dataset_part;

struct dataset {
    const char *format;
    int T, eos;
    size_t n_chats;
    const chat_template *chat; /* what chat records were rendered with */
    chat_template *own_chat;   /* the model's, when the dataset found it */
    /* Text and JSONL: every document's tokens and loss flags, in memory. */
    int32_t *tok;
    uint8_t *mask;
    size_t n_tok, cap_tok;
    /* Pre-tokenized: the mapped corpus (a document's EOS is not in it). */
    tokcorpus *corpus;
    size_t n_docs, cap_docs;
    uint64_t *doc_start, *doc_len; /* doc_len counts the EOS */
    dataset_part part[2];
    uint64_t fingerprint;
};

/* ---- generators and hashes -------------------------------------------------------- */

uint64_t dataset_fnv1a64(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Uniform in [0, bound): rejects the 2^64 mod bound lowest values, so every
 * residue is equally likely (the method of O'Neill's PCG library). */
static uint64_t uniform_below(uint64_t *state, uint64_t bound) {
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t r = rng_next(state);
        if (r >= threshold) return r % bound;
    }
}

/* Fisher–Yates (Knuth's Algorithm P), from the top down. */
static void shuffle(size_t *a, size_t n, uint64_t *state) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)uniform_below(state, i);
        size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* ---- building documents in memory ---------------------------------------------------- */

/* Appends n ids with loss flags: masks[i] when masks is given, else loss. */
static int push_tokens(dataset *d, const uint32_t *ids, size_t n, int loss, const uint8_t *masks,
                       int V, const char *where) {
    if (d->n_tok + n > d->cap_tok) {
        size_t nc = d->cap_tok ? d->cap_tok : 4096;
        while (nc < d->n_tok + n) nc *= 2;
        int32_t *nt = realloc(d->tok, nc * sizeof *nt);
        if (nt) d->tok = nt;
        uint8_t *nm = nt ? realloc(d->mask, nc) : NULL;
        if (!nm) return err_set("out of memory for %zu tokens of %s", nc, where);
        d->mask = nm;
        d->cap_tok = nc;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= (uint32_t)V)
            return err_set("%s: the tokenizer gives id %u but the model has %d token embeddings; "
                           "use the base model's own tokenizer",
                           where, ids[i], V);
        d->tok[d->n_tok + i] = (int32_t)ids[i];
        d->mask[d->n_tok + i] = (uint8_t)(masks ? masks[i] : loss);
    }
    d->n_tok += n;
    return 0;
}

static int push_doc(dataset *d, uint64_t start, uint64_t len) {
    if (d->n_docs == d->cap_docs) {
        size_t nc = d->cap_docs ? d->cap_docs * 2 : 256;
        uint64_t *ns = realloc(d->doc_start, nc * sizeof *ns);
        if (ns) d->doc_start = ns;
        uint64_t *nl = ns ? realloc(d->doc_len, nc * sizeof *nl) : NULL;
        if (!nl) return err_set("out of memory for %zu documents", nc);
        d->doc_len = nl;
        d->cap_docs = nc;
    }
    d->doc_start[d->n_docs] = start;
    d->doc_len[d->n_docs] = len;
    d->n_docs++;
    return 0;
}

/* Encodes and appends one template piece; `first` adds the tokenizer's
 * special tokens (BOS), once per document. */
typedef struct {
    dataset *d;
    tokenizer *tok;
    tokenizer_ids ids;
    int V;
    const dataset_options *o;
    int chat_looked; /* the model's template was looked for */
    int loss_all;
    char where[600]; /* "file:line" */
} builder;

static int piece(builder *b, const char *text, size_t len, int loss, int first) {
    b->ids.n = 0;
    if (tokenizer_encode(b->tok, text, len, first, &b->ids) != 0)
        return err_context("%s", b->where);
    return push_tokens(b->d, b->ids.ids, b->ids.n, loss || b->loss_all, NULL, b->V, b->where);
}

static int piece_str(builder *b, const char *s, int loss, int first) {
    return piece(b, s, strlen(s), loss, first);
}

static int eos(builder *b, int loss) {
    if (b->d->eos < 0) return 0;
    uint32_t id = (uint32_t)b->d->eos;
    return push_tokens(b->d, &id, 1, loss || b->loss_all, NULL, b->V, b->where);
}

static const char *alpaca_input =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n";
static const char *alpaca_no_input =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
    "### Instruction:\n";

static const char *string_field(json_t *rec, const char *key, int required, const char *where) {
    json_t *v = json_object_get(rec, key);
    if (!v || json_is_null(v)) {
        if (required) err_set("%s: the record has no \"%s\" string", where, key);
        return required ? NULL : "";
    }
    if (!json_is_string(v)) {
        err_set("%s: \"%s\" must be a string", where, key);
        return NULL;
    }
    return json_string_value(v);
}

static int add_instruction(builder *b, json_t *rec) {
    const char *ins = string_field(rec, "instruction", 1, b->where);
    const char *inp = ins ? string_field(rec, "input", 0, b->where) : NULL;
    const char *outp = inp ? string_field(rec, "output", 1, b->where) : NULL;
    if (!outp) return -1;
    /* The prompt is one piece: Alpaca's header, the instruction, the input. */
    size_t n = strlen(alpaca_input) + strlen(ins) + strlen(inp) + 64;
    char *prompt = malloc(n);
    if (!prompt) return err_set("%s: out of memory for the prompt", b->where);
    if (*inp)
        snprintf(prompt, n, "%s%s\n\n### Input:\n%s\n\n### Response:\n", alpaca_input, ins, inp);
    else
        snprintf(prompt, n, "%s%s\n\n### Response:\n", alpaca_no_input, ins);
    int rc = piece_str(b, prompt, 0, 1);
    free(prompt);
    if (rc == 0) rc = piece_str(b, outp, 1, 0);
    if (rc == 0) rc = eos(b, 1);
    return rc;
}

static int no_assistant(builder *b) {
    return err_set("%s: the conversation has no \"assistant\" message, so none of its tokens "
                   "would be trained on",
                   b->where);
}

/* A conversation in the model's chat template (model/chat/chat.h). */
static int add_chat_template(builder *b, json_t *rec, json_t *msgs) {
    int assistant = 0;
    size_t i;
    json_t *msg;
    json_array_foreach(msgs, i, msg) {
        json_t *role = json_object_get(msg, "role");
        if (!json_is_string(role))
            return err_set("%s: message %zu needs a \"role\" string", b->where, i + 1);
        assistant |= !strcmp(json_string_value(role), "assistant");
    }
    if (!assistant && !b->loss_all) return no_assistant(b);
    json_t *tools = json_object_get(rec, "tools"), *docs = json_object_get(rec, "documents");
    if ((tools && !json_is_null(tools) && !json_is_array(tools)) ||
        (docs && !json_is_null(docs) && !json_is_array(docs)))
        return err_set("%s: \"tools\" and \"documents\" must be arrays", b->where);
    chat_request rq = {.messages = msgs,
                       .tools = json_is_array(tools) ? tools : NULL,
                       .documents = json_is_array(docs) ? docs : NULL};
    uint8_t *mask;
    if (chat_encode(b->d->chat, b->tok, &rq, b->loss_all ? CHAT_LOSS_ALL : CHAT_LOSS_ASSISTANT,
                    &b->ids, &mask) != 0)
        return err_context("%s", b->where);
    size_t carry = 0;
    for (size_t k = 0; k < b->ids.n; k++) carry += mask[k];
    int rc = carry ? push_tokens(b->d, b->ids.ids, b->ids.n, 0, mask, b->V, b->where)
                   : err_set("%s: no token of the conversation carries loss (are its assistant "
                             "messages empty?)",
                             b->where);
    free(mask);
    return rc;
}

static int add_chat(builder *b, json_t *rec, json_t *msgs) {
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return err_set("%s: \"messages\" must be a non-empty array of {\"role\", \"content\"}",
                       b->where);
    dataset *d = b->d;
    d->n_chats++;
    if (!b->chat_looked) { /* the template is read only when there is chat data */
        b->chat_looked = 1;
        d->chat = b->o->chat;
        if (!d->chat && b->o->chat_format != DATASET_CHAT_FEDLORA) {
            char dir[4096];
            if (fio_dirname(dir, sizeof dir, b->o->tokenizer) != 0 ||
                chat_template_find(dir, &d->own_chat) != 0)
                return err_context("%s: the model's chat template", b->where);
            d->chat = d->own_chat;
            if (!d->chat && b->o->chat_format == DATASET_CHAT_TEMPLATE)
                return err_set("%s: the model (%s) has no chat template: give one with "
                               "--chat-template FILE or use fedlora's own format with "
                               "--chat-format fedlora",
                               b->where, dir);
        }
    }
    if (d->chat) return add_chat_template(b, rec, msgs);
    if (json_object_get(rec, "tools"))
        return err_set("%s: a conversation with \"tools\" needs the model's chat template "
                       "(fedlora's own chat format has no tool calls)",
                       b->where);
    int assistant = 0;
    size_t i;
    json_t *msg;
    json_array_foreach(msgs, i, msg) {
        json_t *role = json_is_object(msg) ? json_object_get(msg, "role") : NULL;
        json_t *content = json_is_object(msg) ? json_object_get(msg, "content") : NULL;
        if (!json_is_string(role) || !json_is_string(content))
            return err_set("%s: message %zu needs a \"role\" string and a \"content\" string",
                           b->where, i + 1);
        const char *r = json_string_value(role);
        int is_assistant = !strcmp(r, "assistant");
        if (!is_assistant && strcmp(r, "user") != 0 && strcmp(r, "system") != 0)
            return err_set("%s: message %zu has role \"%s\"; the roles are system, user and "
                           "assistant",
                           b->where, i + 1, r);
        assistant |= is_assistant;
        char header[32];
        snprintf(header, sizeof header, "<|%s|>\n", r);
        if (piece_str(b, header, 0, i == 0) != 0 ||
            piece(b, json_string_value(content), json_string_length(content), is_assistant, 0) !=
                0 ||
            eos(b, is_assistant) != 0)
            return -1;
    }
    return assistant || b->loss_all ? 0 : no_assistant(b);
}

static int add_record(builder *b, json_t *rec) {
    if (!json_is_object(rec))
        return err_set("%s: each line must be a JSON object such as {\"text\": \"...\"}", b->where);
    json_t *text = json_object_get(rec, "text"), *msgs = json_object_get(rec, "messages");
    int has_ins = json_object_get(rec, "instruction") != NULL;
    if (!!text + !!msgs + has_ins != 1)
        return err_set("%s: a record has exactly one of \"text\", \"instruction\" (with "
                       "\"output\") or \"messages\" (docs/training.md)",
                       b->where);
    if (msgs) return add_chat(b, rec, msgs);
    if (has_ins) return add_instruction(b, rec);
    if (!json_is_string(text)) return err_set("%s: \"text\" must be a string", b->where);
    if (piece(b, json_string_value(text), json_string_length(text), 1, 1) != 0) return -1;
    return eos(b, 1);
}

static int parse_lines(builder *b, const char *path, char *buf, size_t len, int jsonl) {
    dataset *d = b->d;
    size_t line = 0;
    for (char *p = buf, *end = buf + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char *next = p + n + 1;
        line++;
        if (n > 0 && p[n - 1] == '\r') n--;
        /* One rule for train, eval and tokenize (docs/training.md): a line
         * of nothing but spaces and tabs is blank, not a document. */
        size_t k = 0;
        while (k < n && (p[k] == ' ' || p[k] == '\t')) k++;
        if (k == n) { /* blank */
            p = next;
            continue;
        }
        snprintf(b->where, sizeof b->where, "%s:%zu", path, line);
        uint64_t start = d->n_tok;
        int rc;
        if (jsonl) {
            json_error_t je;
            json_t *rec = json_loadb(p, n, JSON_REJECT_DUPLICATES, &je);
            if (!rec)
                return err_set("%s: not valid JSON (%s, column %d); each line must be one JSON "
                               "object such as {\"text\": \"...\"}",
                               b->where, je.text, je.column);
            rc = add_record(b, rec);
            json_decref(rec);
        } else {
            rc = piece(b, p, n, 1, 1);
            if (rc == 0) rc = eos(b, 1);
        }
        if (rc != 0 || push_doc(d, start, d->n_tok - start) != 0) return -1;
        p = next;
    }
    return 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int load_text(dataset *d, const dataset_options *o) {
    int jsonl = ends_with(o->path, ".jsonl") || ends_with(o->path, ".json");
    d->format = jsonl ? "jsonl" : "text";
    if (!o->tokenizer)
        return err_set("%s is text, so it needs a tokenizer: pass --tokenizer FILE (the base "
                       "model's tokenizer.json)",
                       o->path);
    builder b = {.d = d, .V = o->vocab_size, .o = o, .loss_all = o->loss_all};
    if (tokenizer_load(o->tokenizer, &b.tok) != 0) return -1;
    char *buf;
    size_t len;
    int rc = fio_read_all(o->path, o->max_bytes ? o->max_bytes : DATASET_MAX_BYTES, &buf, &len);
    if (rc == 0) {
        rc = parse_lines(&b, o->path, buf, len, jsonl);
        free(buf);
    }
    tokenizer_ids_free(&b.ids);
    tokenizer_free(b.tok);
    return rc;
}

static int load_corpus(dataset *d, const dataset_options *o) {
    d->format = "tokens";
    if (tokcorpus_open(o->path, &d->corpus) != 0) return -1;
    if (tokcorpus_vocab_size(d->corpus) > (uint32_t)o->vocab_size)
        return err_set("%s was tokenized for a vocabulary of %u ids, but the model has %d token "
                       "embeddings; tokenize with the base model's tokenizer",
                       o->path, tokcorpus_vocab_size(d->corpus), o->vocab_size);
    uint64_t n = tokcorpus_n_docs(d->corpus);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t start, len;
        if (tokcorpus_doc(d->corpus, i, &start, &len) != 0) return -1;
        if (len == 0) continue; /* nothing to learn from an empty document */
        if (push_doc(d, start, len + (d->eos >= 0)) != 0) return -1;
    }
    return 0;
}

/* Is path a pre-tokenized corpus? (its first 8 bytes are the magic) */
static int is_corpus(const char *path, int *yes) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_errno("cannot open data file %s", path);
    char magic[8];
    size_t got = fread(magic, 1, sizeof magic, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) return err_set("cannot read data file %s", path);
    *yes = got == sizeof magic && !memcmp(magic, TOKCORPUS_MAGIC, sizeof magic);
    return 0;
}

/* ---- the stream of a split -------------------------------------------------------------- */

/* Tokens [within, within + n) of document doc. */
static int read_doc(const dataset *d, size_t doc, uint64_t within, size_t n, int32_t *tok,
                    uint8_t *mask) {
    if (!d->corpus) {
        memcpy(tok, d->tok + d->doc_start[doc] + within, n * sizeof *tok);
        memcpy(mask, d->mask + d->doc_start[doc] + within, n);
        return 0;
    }
    uint64_t stored = d->doc_len[doc] - (d->eos >= 0); /* the EOS is not in the file */
    size_t from_file = within < stored ? (size_t)(stored - within < n ? stored - within : n) : 0;
    /* int32_t and uint32_t may alias; every id is < vocab_size <= INT32_MAX. */
    if (from_file &&
        tokcorpus_read(d->corpus, d->doc_start[doc] + within, from_file, (uint32_t *)tok) != 0)
        return -1;
    for (size_t i = from_file; i < n; i++) tok[i] = d->eos;
    memset(mask, 1, n);
    return 0;
}

/* Stream tokens [off, off + n) of a split; the caller keeps them inside it. */
static int read_stream(const dataset *d, const dataset_part *p, uint64_t off, size_t n,
                       int32_t *tok, uint8_t *mask) {
    /* The last document that starts at or before off. */
    size_t lo = 0, hi = p->n_docs;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->cum[mid] <= off)
            lo = mid;
        else
            hi = mid;
    }
    for (size_t i = lo; n > 0; i++) {
        uint64_t within = off - p->cum[i], left = d->doc_len[p->docs[i]] - within;
        size_t take = left < n ? (size_t)left : n;
        if (read_doc(d, p->docs[i], within, take, tok, mask) != 0) return -1;
        tok += take, mask += take, off += take, n -= take;
    }
    return 0;
}

/* Row at stream offset off; returns the number of targets that carry loss,
 * or −1 on error. tok/mask are (T + 1) scratch. */
static int64_t make_row(const dataset *d, const dataset_part *p, uint64_t off, int32_t *inputs,
                        int32_t *targets, int32_t *tok, uint8_t *mask) {
    int T = d->T;
    uint64_t len = p->cum[p->n_docs];
    size_t avail = len - off < (uint64_t)T + 1 ? (size_t)(len - off) : (size_t)T + 1;
    if (read_stream(d, p, off, avail, tok, mask) != 0) return -1;
    int64_t count = 0;
    for (int t = 0; t < T; t++) {
        inputs[t] = (size_t)t < avail ? tok[t] : (d->eos >= 0 ? d->eos : 0);
        int has = (size_t)t + 1 < avail && mask[t + 1];
        targets[t] = has ? tok[t + 1] : MODEL_IGNORE_INDEX;
        count += has;
    }
    return count;
}

/* Lays out a split's stream, keeps the rows that have a target, counts
 * targets, and feeds every kept row to the fingerprint. */
static int build_part(dataset *d, dataset_part *p, const uint8_t *held_out, int want) {
    for (size_t i = 0; i < d->n_docs; i++) p->n_docs += held_out[i] == want;
    p->docs = malloc((p->n_docs ? p->n_docs : 1) * sizeof *p->docs);
    p->cum = malloc((p->n_docs + 1) * sizeof *p->cum);
    if (!p->docs || !p->cum) return err_set("out of memory for %zu documents", p->n_docs);
    size_t k = 0;
    p->cum[0] = 0;
    for (size_t i = 0; i < d->n_docs; i++)
        if (held_out[i] == want) {
            p->docs[k] = i;
            p->cum[k + 1] = p->cum[k] + d->doc_len[i];
            k++;
        }
    uint64_t len = p->cum[p->n_docs], T = (uint64_t)d->T;
    size_t max_rows = len >= 2 ? (size_t)((len - 2) / T + 1) : 0;
    p->rows = malloc((max_rows ? max_rows : 1) * sizeof *p->rows);
    int32_t *io = malloc(sizeof(int32_t) * (3 * T + 1));
    uint8_t *mask = malloc(T + 1);
    int rc = 0;
    if (!p->rows || !io || !mask) rc = err_set("out of memory for %zu rows", max_rows);
    for (size_t r = 0; r < max_rows && rc == 0; r++) {
        int32_t *in = io, *tg = io + T, *tok = io + 2 * T;
        int64_t n = make_row(d, p, r * T, in, tg, tok, mask);
        if (n < 0) rc = -1;
        if (n > 0) {
            p->rows[p->n_rows++] = r * T;
            p->n_targets += n;
            d->fingerprint = dataset_fnv1a64(d->fingerprint, io, 2 * T * sizeof *io);
        }
    }
    uint64_t count = p->n_rows; /* closes the split: the same rows split differently differ */
    d->fingerprint = dataset_fnv1a64(d->fingerprint, &count, sizeof count);
    free(io);
    free(mask);
    return rc;
}

static int split_docs(dataset *d, const dataset_options *o) {
    uint8_t *held_out = calloc(d->n_docs, 1);
    size_t *idx = malloc(d->n_docs * sizeof *idx);
    if (!held_out || !idx) {
        free(held_out);
        free(idx);
        return err_set("out of memory for %zu documents", d->n_docs);
    }
    int rc = 0;
    if (o->eval_fraction > 0 && d->n_docs >= 2) {
        double want = floor(o->eval_fraction * (double)d->n_docs + 0.5);
        size_t n_eval = want < 1 ? 1 : (size_t)want;
        if (n_eval > d->n_docs - 1) n_eval = d->n_docs - 1;
        uint64_t state = o->seed ^ 0x686f6c646f757421ull; /* "holdout!": its own stream */
        for (size_t i = 0; i < d->n_docs; i++) idx[i] = i;
        shuffle(idx, d->n_docs, &state);
        for (size_t i = 0; i < n_eval; i++) held_out[idx[i]] = 1;
    }
    free(idx);
    uint64_t head[4] = {(uint64_t)d->T, (uint64_t)(int64_t)d->eos, d->n_docs, 0};
    d->fingerprint = dataset_fnv1a64(DATASET_FNV_OFFSET, head, sizeof head);
    if (rc == 0) rc = build_part(d, &d->part[DATASET_TRAIN], held_out, 0);
    if (rc == 0) rc = build_part(d, &d->part[DATASET_EVAL], held_out, 1);
    free(held_out);
    return rc;
}

int dataset_open(dataset **out, const dataset_options *o) {
    *out = NULL;
    if (o->seq < 1) return err_set("the sequence length must be at least 1, got %d", o->seq);
    if (!(o->eval_fraction >= 0 && o->eval_fraction < 1))
        return err_set("the held-out fraction must be in [0, 1), got %g", o->eval_fraction);
    dataset *d = calloc(1, sizeof *d);
    if (!d) return err_set("out of memory for the dataset");
    d->T = o->seq;
    d->eos = o->eos_id;
    int corpus, rc = is_corpus(o->path, &corpus);
    if (rc == 0) rc = corpus ? load_corpus(d, o) : load_text(d, o);
    if (rc == 0 && d->n_docs == 0)
        rc = err_set("%s holds no documents: give a text file with at least one non-empty line, "
                     "JSON Lines of records (docs/training.md) or a non-empty pre-tokenized corpus",
                     o->path);
    if (rc == 0) rc = split_docs(d, o);
    if (rc == 0 && d->part[DATASET_TRAIN].n_rows == 0)
        rc = err_set("%s gives no training row with a target: every document is too short or "
                     "carries no loss",
                     o->path);
    if (rc != 0) {
        dataset_free(d);
        return -1;
    }
    *out = d;
    return 0;
}

void dataset_free(dataset *d) {
    if (!d) return;
    for (int s = 0; s < 2; s++) {
        free(d->part[s].docs);
        free(d->part[s].cum);
        free(d->part[s].rows);
    }
    free(d->tok);
    free(d->mask);
    free(d->doc_start);
    free(d->doc_len);
    chat_template_free(d->own_chat);
    tokcorpus_close(d->corpus);
    free(d);
}

const char *dataset_format(const dataset *d) {
    return d->format;
}

size_t dataset_num_chats(const dataset *d) {
    return d->n_chats;
}

const chat_template *dataset_chat_template(const dataset *d) {
    return d->chat;
}

int dataset_seq(const dataset *d) {
    return d->T;
}

size_t dataset_num_docs(const dataset *d, dataset_split s) {
    return d->part[s].n_docs;
}

size_t dataset_num_rows(const dataset *d, dataset_split s) {
    return d->part[s].n_rows;
}

int64_t dataset_num_targets(const dataset *d, dataset_split s) {
    return d->part[s].n_targets;
}

uint64_t dataset_fingerprint(const dataset *d) {
    return d->fingerprint;
}

int dataset_row(const dataset *d, dataset_split s, size_t i, int32_t *inputs, int32_t *targets) {
    const dataset_part *p = &d->part[s];
    if (i >= p->n_rows)
        return err_set("row %zu of a split of %zu rows: out of range", i, p->n_rows);
    int32_t *tok = malloc(sizeof(int32_t) * ((size_t)d->T + 1));
    uint8_t *mask = malloc((size_t)d->T + 1);
    int64_t n = tok && mask ? make_row(d, p, p->rows[i], inputs, targets, tok, mask)
                            : err_set("out of memory for a row of %d tokens", d->T);
    free(tok);
    free(mask);
    return n < 0 ? -1 : 0;
}

/* ---- the training order ------------------------------------------------------------- */

static void order_fill(dataset_order *o, uint64_t epoch) {
    uint64_t state = o->seed;
    state = rng_next(&state) ^ epoch;
    for (size_t i = 0; i < o->n; i++) o->perm[i] = i;
    shuffle(o->perm, o->n, &state);
    o->epoch = epoch;
}

int dataset_order_init(dataset_order *o, size_t n_rows, uint64_t seed) {
    memset(o, 0, sizeof *o);
    if (n_rows == 0) return err_set("a data order over no rows");
    o->perm = malloc(n_rows * sizeof *o->perm);
    if (!o->perm) return err_set("out of memory for the order of %zu rows", n_rows);
    o->seed = seed;
    o->n = n_rows;
    order_fill(o, 0);
    return 0;
}

size_t dataset_order_row(dataset_order *o, uint64_t pos) {
    uint64_t epoch = pos / o->n;
    if (epoch != o->epoch) order_fill(o, epoch);
    return o->perm[pos % o->n];
}

void dataset_order_free(dataset_order *o) {
    free(o->perm);
    memset(o, 0, sizeof *o);
}
