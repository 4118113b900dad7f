/* agg_test.h — a small federation for the aggregator's tests: a tiny Llama
 * base model, identities for the aggregator and three universities (plus an
 * outsider), a config file, and helpers that make DELTA payloads, seal them
 * and drive the SUBMIT exchange. Everything lives in the test's scratch
 * directory (tests/support/ts.h). */
#ifndef FL_TESTS_AGGREGATOR_AGG_TEST_H
#define FL_TESTS_AGGREGATOR_AGG_TEST_H

#include "aggregator/agg.h"
#include "aggregator/config.h"
#include "aggregator/journal.h"
#include "cli/harness.h"
#include "lora/lora.h"
#include "model/checkpoint.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/hello.h"
#include "wire/crypto.h"
#include "wire/envelope.h"
#include "wire/keys.h"
#include "wire/msg.h"
#include "wire/payload.h"

#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FED_MEMBERS 3
#define FED_RANK 4

static const char *const fed_names[FED_MEMBERS + 1] = {"uni-a", "uni-b", "uni-c", "mallory"};

struct fed {
    char dir[512];
    keys_secret agg;
    keys_secret m[FED_MEMBERS + 1]; /* the three members, then the outsider */
    model *base;                    /* the base model as built (its shapes) */
    uint8_t consortium[32];         /* payload_consortium_id("test-consortium") */
};

static inline void fed_die(const char *what) {
    fprintf(stderr, "test setup failed: %s: %s\n", what, err_msg());
    exit(2);
}

/* ts_dir()/<sub>/... (tests/support/ts.h: one scratch directory per test). */
static inline void fed_path(char *out, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void fed_path(char *out, size_t n, const char *fmt, ...) {
    char rel[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    if (snprintf(out, n, "%s/%s", ts_dir(), rel) >= (int)n) fed_die("path too long");
}

/* Keys and the tiny base model, made once in fed_root/common. */
static inline void fed_init(struct fed *f) {
    memset(f, 0, sizeof *f);
    char keys[600], base[600];
    fed_path(f->dir, sizeof f->dir, "common");
    snprintf(keys, sizeof keys, "%s/keys", f->dir);
    snprintf(base, sizeof base, "%s/base", f->dir);
    if (keys_generate("agg", &f->agg) < 0 || keys_write(&f->agg, keys) < 0) fed_die("keys");
    if (payload_consortium_id("test-consortium", f->consortium) < 0) fed_die("consortium id");
    for (int i = 0; i <= FED_MEMBERS; i++)
        if (keys_generate(fed_names[i], &f->m[i]) < 0 || keys_write(&f->m[i], keys) < 0)
            fed_die("keys");
    model_config cfg;
    if (model_config_preset(&cfg, "llama", "tiny") < 0 || model_create(&f->base, &cfg) < 0)
        fed_die("model");
    model_init_random(f->base, 7);
    if (checkpoint_save(f->base, base, "float32") < 0) fed_die("saving the base model");
}

/* The metrics line of a round, parsed (NULL when missing; json_decref it). */
static inline json_t *fed_metrics_of(const agg_config *c, uint64_t round) {
    return harness_round_metrics(c->state, round);
}

struct fed_find_open {
    uint64_t round;
    uint8_t *base;
    int found;
};

static inline int fed_find_open_record(void *arg, const char *text, size_t line) {
    struct fed_find_open *x = arg;
    journal_record r;
    (void)line;
    if (journal_record_decode(text, &r) < 0) return -1;
    if (r.kind == JOURNAL_OPEN && r.round == x->round) {
        memcpy(x->base, r.hash, 32);
        x->found = 1;
    }
    return 0;
}

/* The base version a round trained on, from its open record in the journal. */
static inline int fed_round_base(const agg_config *c, uint64_t round, uint8_t base[32]) {
    char p[4200];
    struct fed_find_open x = {round, base, 0};
    snprintf(p, sizeof p, "%s/journal", c->state);
    if (journal_open(NULL, p, 1, fed_find_open_record, &x) < 0) return -1;
    return x.found ? 0 : err_set("no 'open %llu' record in %s", (unsigned long long)round, p);
}

/* Writes <sub>/aggregator.cfg for a state directory <sub>/state. */
static inline void fed_config(const struct fed *f, const char *sub, char *cfg_path, size_t n,
                              const char *rounds_extra, const char *more) {
    char dir[600];
    fed_path(dir, sizeof dir, "%s", sub);
    if (fio_mkdirs(dir, 0700) < 0) fed_die("mkdir");
    if (snprintf(cfg_path, n, "%s/aggregator.cfg", dir) >= (int)n) fed_die("path too long");
    char text[4096];
    snprintf(text, sizeof text,
             "bind = \"tcp://127.0.0.1:*\";\n"
             "keys = { dir = \"%s/keys\"; name = \"agg\"; };\n"
             "consortium = \"test-consortium\";\n"
             "members = ( { id = \"%s/keys/uni-a.id\"; }, \"%s/keys/uni-b.id\",\n"
             "            { id = \"%s/keys/uni-c.id\"; max_weight = 1.0; } );\n"
             "base_model = \"%s/base\";\n"
             "state = \"state\";\n"
             "rounds = { %s };\n"
             "train = { steps = 2; lr = 0.001; rank = %d; alpha = 8; targets = [\"q_proj\", "
             "\"v_proj\"];\n"
             "          batch = 2; seq = 16; };\n"
             "%s",
             f->dir, f->dir, f->dir, f->dir, f->dir, rounds_extra, FED_RANK, more ? more : "");
    if (fio_write_atomic(cfg_path, text, strlen(text), 0644) < 0) fed_die("config");
}

/* Options of a test delta; zero values mean the defaults. */
struct delta_opts {
    const model *shapes; /* build for these shapes (default: the base) */
    int rank;
    uint64_t tokens;
    float poison; /* when non-zero, written into one element of B */
    const char *targets;
    float scale_a, scale_b; /* when non-zero, every value of A, of B, is multiplied by it */
};

/* A DELTA payload for member i, round r, trained "on" base version hash:
 * a fresh adapter (A as PEFT initialises it from seed) with B filled with
 * deterministic values, so that B·A != 0. */
static inline uint8_t *fed_delta(const struct fed *f, uint64_t round, const uint8_t base[32],
                                 uint64_t seed, const struct delta_opts *o, size_t *len) {
    const model *shapes = o && o->shapes ? o->shapes : f->base;
    lora_config cfg;
    lora_config_init(&cfg);
    cfg.rank = o && o->rank ? o->rank : FED_RANK;
    cfg.alpha = 8;
    cfg.seed = seed;
    lora_set *s = NULL;
    if (lora_config_set_targets(&cfg, o && o->targets ? o->targets : "q_proj,v_proj") < 0 ||
        lora_create(&s, shapes, &cfg) < 0)
        fed_die("lora_create");
    uint64_t x = seed * 2654435761u + 1;
    struct msg_tensor *t = calloc((size_t)(2 * s->n_modules), sizeof *t);
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *m = &s->modules[i];
        for (int64_t k = 0; k < m->B.numel; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            m->B.data[k] = (float)((double)(x % 2001) / 1000.0 - 1.0) * 0.01f;
        }
        if (o && o->poison != 0 && i == s->n_modules - 1) m->B.data[m->B.numel / 2] = o->poison;
        for (int64_t k = 0; o && o->scale_b != 0 && k < m->B.numel; k++) m->B.data[k] *= o->scale_b;
        for (int64_t k = 0; o && o->scale_a != 0 && k < m->A.numel; k++) m->A.data[k] *= o->scale_a;
        model_param *p[2] = {&m->A, &m->B};
        for (int j = 0; j < 2; j++) {
            struct msg_tensor *e = &t[2 * i + j];
            snprintf(e->name, sizeof e->name, "%s", p[j]->name);
            e->dtype = MSG_F32;
            e->ndim = 2;
            e->shape[0] = (uint64_t)p[j]->shape[0];
            e->shape[1] = (uint64_t)p[j]->shape[1];
            e->data = (const uint8_t *)p[j]->data;
            e->size = (uint64_t)p[j]->numel * 4;
        }
    }
    struct payload_delta d = {.round = round,
                              .tokens = o && o->tokens ? o->tokens : 1000 + seed % 7 * 100,
                              .examples = 10,
                              .loss_before = 5.5,
                              .loss_after = 5.0,
                              .rank = (uint32_t)cfg.rank,
                              .alpha = cfg.alpha,
                              .rslora = false,
                              .tensors = t,
                              .ntensors = (size_t)(2 * s->n_modules)};
    memcpy(d.base, base, 32);
    d.ntargets = (uint32_t)cfg.n_targets;
    for (int i = 0; i < cfg.n_targets; i++)
        snprintf(d.targets[i], sizeof d.targets[i], "%s", cfg.targets[i]);
    uint8_t *out;
    if (payload_delta_encode(&d, &out, len) < 0) fed_die("payload_delta_encode");
    free(t);
    lora_free(s);
    lora_config_free(&cfg);
    return out;
}

/* The connection member i's node talks on (a routing id of its own), as
 * agg_handle sees it; i == FED_MEMBERS + 1 and beyond: strangers. */
static inline agg_peer fed_peer(int i) {
    static uint8_t ids[16][8];
    snprintf((char *)ids[i & 15], sizeof ids[0], "peer-%d", i & 15);
    return (agg_peer){ids[i & 15], strlen((char *)ids[i & 15]), 0, {0}};
}

/* The member (index into fed_names) that sealed an envelope, from the
 * sender fingerprint at bytes 48..79 of its header (docs/envelope.md);
 * FED_MEMBERS (mallory) or -1 when none of ours. */
static inline int fed_sender(const struct fed *f, const uint8_t *env, size_t len) {
    for (int i = 0; len >= 80 && i <= FED_MEMBERS; i++) {
        uint8_t fp[32];
        keys_fingerprint(&f->m[i].pub, fp);
        if (!memcmp(env + 48, fp, 32)) return i;
    }
    return -1;
}

/* 1 when r is an ERROR of code whose reason contains needle; else 0, and a
 * line says what came instead. */
static inline int fed_is_error(const struct msg *r, enum msg_error_code code, const char *needle) {
    int ok = r->type == MSG_ERROR && r->error.code == code && strstr(r->error.reason, needle);
    if (!ok)
        fprintf(stderr, "  wanted ERROR %d containing '%s', got %s%s%s\n", code, needle,
                msg_type_name(r->type), r->type == MSG_ERROR ? ": " : "",
                r->type == MSG_ERROR ? r->error.reason : "");
    return ok;
}

/* Seals payload from sender for the aggregator; *msgid gets its id. */
static inline uint8_t *fed_seal(const struct fed *f, const keys_secret *sender,
                                const char *consortium, uint64_t round, const uint8_t *payload,
                                size_t plen, size_t *len, uint8_t msgid[16]) {
    envelope_params p = {.round = round,
                         .payload_type = PAYLOAD_TYPE_DELTA,
                         .segment_size = 4096,
                         .payload_size = plen};
    if (payload_consortium_id(consortium, p.consortium) < 0) fed_die("consortium id");
    envelope_header h;
    uint8_t *env;
    if (envelope_seal_mem(&p, sender, f->agg.pub.kx_pub, payload, &env, len, &h) < 0)
        fed_die("envelope_seal_mem");
    memcpy(msgid, h.message_id, 16);
    return env;
}

#endif

#ifndef FL_TESTS_AGG_TEST_SUBMIT
#define FL_TESTS_AGG_TEST_SUBMIT
/* One request on connection p, the reply decoded into the returned msg
 * (type 0 when agg_handle failed; blobs not kept). */
static inline struct msg fed_ask(agg *a, agg_peer p, const struct msg *req, uint64_t now) {
    uint8_t *buf, *rep;
    size_t len, rlen;
    struct msg r = {0};
    if (msg_encode(req, &buf, &len) < 0) fed_die("msg_encode");
    int rc = agg_handle(a, &p, buf, len, now, &rep, &rlen);
    free(buf);
    if (rc == 0 && msg_decode(rep, rlen, NULL, &r) < 0) r.type = 0;
    if (r.type == MSG_MODEL_CHUNK) r.model_chunk.data = NULL;
    if (rc == 0) free(rep);
    return r;
}

/* Member i's node on its own connection: a signed HELLO, then its delta
 * (seed) for the open round in one chunk. Returns the last reply (END's
 * RECEIPT when all went well); the envelope is kept in *env_out (when not
 * NULL; free() it). */
static inline struct msg fed_submit(const struct fed *f, agg *a, int i, uint64_t seed, uint64_t now,
                                    uint8_t **env_out, size_t *len_out) {
    agg_peer p = fed_peer(i);
    struct msg m = {.type = MSG_HELLO}, r;
    snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[i]);
    keys_fingerprint(&f->m[i].pub, m.hello.fingerprint);
    if (hello_sign(&m.hello, f->consortium, &f->m[i], now) < 0) fed_die("hello_sign");
    r = fed_ask(a, p, &m, now);
    uint8_t base[32], id[16];
    agg_current_base(a, base);
    size_t plen, len;
    uint8_t *pl = fed_delta(f, agg_current_round(a), base, seed, NULL, &plen);
    uint8_t *env =
        fed_seal(f, &f->m[i], "test-consortium", agg_current_round(a), pl, plen, &len, id);
    free(pl);
    if (r.type == MSG_ROUND) {
        m = (struct msg){.type = MSG_SUBMIT_BEGIN};
        m.submit_begin.round = agg_current_round(a);
        memcpy(m.submit_begin.id, id, 16);
        m.submit_begin.size = len;
        m.submit_begin.chunks = 1;
        r = fed_ask(a, p, &m, now);
    }
    if (r.type == MSG_ACK) {
        m = (struct msg){.type = MSG_SUBMIT_CHUNK};
        memcpy(m.submit_chunk.id, id, 16);
        m.submit_chunk.data = env;
        m.submit_chunk.data_len = (uint32_t)len;
        r = fed_ask(a, p, &m, now);
    }
    if (r.type == MSG_ACK) {
        m = (struct msg){.type = MSG_SUBMIT_END};
        memcpy(m.submit_end.id, id, 16);
        crypto_sha256(env, len, m.submit_end.digest);
        r = fed_ask(a, p, &m, now);
    }
    if (env_out) {
        *env_out = env;
        *len_out = len;
    } else {
        free(env);
    }
    return r;
}
#endif
