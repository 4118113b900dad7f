/* The aggregator driven through its request handler (agg_handle) and state
 * machine (agg_tick) with crafted sealed envelopes: the round's life, every
 * refusal the protocol promises, quorum and deadline rules, restarts from
 * the journal, determinism of the merge and the offline recomputation. */
#include "aggregator/agg.h"
#include "aggregator/journal.h"
#include "aggregator/store.h"
#include "lora/delta.h"
#include "tests/aggregator/agg_test.h"
#include "wire/crypto.h"

#include <dirent.h>
#include <jansson.h>
#include <sys/stat.h>

static struct fed F;
static const uint64_t T0 = 1800000000; /* "now" at the start of each scenario */

/* ---- driving the handler ------------------------------------------------- */

/* The connection requests come on: the node of the member that said HELLO
 * last (hello(), submit_as()). */
static agg_peer cur;

/* One request; the reply decoded into *r (no blob fields kept). */
static int ask(agg *a, const struct msg *req, uint64_t now, struct msg *r) {
    uint8_t *buf, *rep;
    size_t len, rlen;
    if (msg_encode(req, &buf, &len) < 0) fed_die("msg_encode");
    int rc = agg_handle(a, &cur, buf, len, now, &rep, &rlen);
    free(buf);
    if (rc < 0) return -1;
    if (msg_decode(rep, rlen, NULL, r) < 0) fed_die("decoding a reply");
    if (r->type == MSG_MODEL_CHUNK) r->model_chunk.data = NULL;
    free(rep);
    return 0;
}

/* A HELLO as member's node sends it: signed at `now`. */
static struct msg hello(agg *a, int member, uint64_t now) {
    struct msg m = {.type = MSG_HELLO}, r;
    cur = fed_peer(member);
    snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[member]);
    keys_fingerprint(&F.m[member].pub, m.hello.fingerprint);
    CHECK_OK(hello_sign(&m.hello, F.consortium, &F.m[member], now));
    CHECK_OK(ask(a, &m, now, &r));
    return r;
}

/* SUBMIT_BEGIN (announcing `round`), chunks of `chunk` bytes, SUBMIT_END;
 * returns the first ERROR, else END's reply. */
static struct msg submit_as(agg *a, const uint8_t *env, size_t len, const uint8_t id[16],
                            uint64_t round, size_t chunk, uint64_t now) {
    struct msg m = {.type = MSG_SUBMIT_BEGIN}, r;
    /* Uploads come on a connection with a verified HELLO: the sealer's
     * node's, or (an outsider's envelope) uni-b's, which uploads it. */
    int who = fed_sender(&F, env, len);
    hello(a, who >= 0 && who < FED_MEMBERS ? who : 1, now);
    m.submit_begin.round = round;
    memcpy(m.submit_begin.id, id, 16);
    m.submit_begin.size = len;
    m.submit_begin.chunks = (uint32_t)((len + chunk - 1) / chunk);
    CHECK_OK(ask(a, &m, now, &r));
    if (r.type == MSG_ERROR) return r;
    CHECK(r.type == MSG_ACK && r.ack.stored == 0 && !memcmp(r.ack.id, id, 16));
    for (size_t off = 0, i = 0; off < len; off += chunk, i++) {
        m = (struct msg){.type = MSG_SUBMIT_CHUNK};
        memcpy(m.submit_chunk.id, id, 16);
        m.submit_chunk.index = (uint32_t)i;
        m.submit_chunk.data = env + off;
        m.submit_chunk.data_len = (uint32_t)(len - off < chunk ? len - off : chunk);
        CHECK_OK(ask(a, &m, now, &r));
        if (r.type == MSG_ERROR) return r;
        /* "go on", with the bytes held so far; not a receipt */
        CHECK(r.type == MSG_ACK && r.ack.stored == off + m.submit_chunk.data_len);
    }
    m = (struct msg){.type = MSG_SUBMIT_END};
    memcpy(m.submit_end.id, id, 16);
    crypto_sha256(env, len, m.submit_end.digest);
    CHECK_OK(ask(a, &m, now, &r));
    return r;
}

static struct msg submit(agg *a, const uint8_t *env, size_t len, const uint8_t id[16],
                         uint64_t round, uint64_t now) {
    return submit_as(a, env, len, id, round, 1000, now);
}

/* member's delta for round r on the aggregator's current base, sealed. */
struct sealed {
    uint8_t *env;
    size_t len;
    uint8_t id[16];
};

static struct sealed seal_delta(agg *a, int member, uint64_t round, uint64_t seed,
                                const struct delta_opts *o) {
    uint8_t base[32];
    agg_current_base(a, base);
    size_t plen;
    uint8_t *p = fed_delta(&F, round, base, seed, o, &plen);
    struct sealed s;
    s.env = fed_seal(&F, &F.m[member], "test-consortium", round, p, plen, &s.len, s.id);
    free(p);
    return s;
}

static agg *open_agg(const char *sub, const char *rounds, const char *more, agg_config *c,
                     uint64_t now) {
    char path[600];
    fed_config(&F, sub, path, sizeof path, rounds, more);
    if (agg_config_load(c, path) < 0) fed_die("agg_config_load");
    agg *a;
    if (agg_open(&a, c, now) < 0) fed_die("agg_open");
    return a;
}

/* ---- a full round through the handler ------------------------------------ */

static void test_round_and_refusals(void) {
    agg_config c;
    agg *a = open_agg("round", "count = 2; quorum = 3; deadline = 100;",
                      "limits = { max_submission = 200000; };\n", &c, T0);
    CHECK(agg_get_state(a) == AGG_OPEN && agg_current_round(a) == 1);
    uint8_t base1[32];
    agg_current_base(a, base1);
    char mp[4300];
    CHECK_OK(store_model_path(c.state, base1, mp, sizeof mp));
    uint8_t h[32];
    CHECK_OK(crypto_sha256_file(mp, h, NULL));
    CHECK(memcmp(h, base1, 32) == 0); /* content-addressed */

    /* HELLO: a member gets the round; others are refused. */
    struct msg r = hello(a, 0, T0);
    CHECK(r.type == MSG_ROUND && r.round.round == 1 && !memcmp(r.round.base, base1, 32) &&
          r.round.deadline == T0 + 100 && r.round.train.rank == FED_RANK &&
          r.round.train.ntargets == 2);
    /* The base's size, which bounds a node's download of it (issue 17,
     * case 8: a fake aggregator made a node write 2 GB). */
    struct stat st;
    CHECK(stat(mp, &st) == 0 && r.round.has_base_size && r.round.base_size == (uint64_t)st.st_size);
    r = hello(a, 3, T0);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_MEMBER, "unknown node"));
    struct msg m = {.type = MSG_HELLO};
    snprintf(m.hello.name, sizeof m.hello.name, "uni-b"); /* uni-a's keys, uni-b's name */
    keys_fingerprint(&F.m[0].pub, m.hello.fingerprint);
    CHECK_OK(ask(a, &m, T0, &r));
    CHECK(fed_is_error(&r, MSG_ERR_NOT_MEMBER, "does not match"));
    /* HELLO must be signed by the identity it names, for this consortium,
     * at about the aggregator's time. */
    m = (struct msg){.type = MSG_HELLO};
    snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[0]);
    keys_fingerprint(&F.m[0].pub, m.hello.fingerprint);
    CHECK_OK(hello_sign(&m.hello, F.consortium, &F.m[0], T0));
    m.hello.sig[5] ^= 1;
    CHECK_OK(ask(a, &m, T0, &r));
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "signature does not verify"));
    uint8_t elsewhere[32];
    memcpy(elsewhere, F.consortium, 32);
    elsewhere[0] ^= 1;
    CHECK_OK(hello_sign(&m.hello, elsewhere, &F.m[0], T0));
    CHECK_OK(ask(a, &m, T0, &r));
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "signature does not verify"));
    CHECK_OK(hello_sign(&m.hello, F.consortium, &F.m[0], T0 - HELLO_SKEW_MAX_S - 1));
    CHECK_OK(ask(a, &m, T0, &r));
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "behind the aggregator's"));
    CHECK_FAILS_WITH(hello_sign(&m.hello, F.consortium, &F.m[1], T0), "another identity");

    /* GET_MODEL: the whole version in chunks, resumable at any offset. */
    uint64_t total = 0, off = 0;
    crypto_sha256_ctx *sha;
    crypto_sha256_new(&sha);
    do {
        uint8_t *buf, *rep;
        size_t len, rlen;
        m = (struct msg){.type = MSG_GET_MODEL};
        memcpy(m.get_model.version, base1, 32);
        m.get_model.offset = off;
        m.get_model.length = 100000;
        msg_encode(&m, &buf, &len);
        CHECK_OK(agg_handle(a, &cur, buf, len, T0, &rep, &rlen));
        free(buf);
        CHECK_OK(msg_decode(rep, rlen, NULL, &r));
        CHECK(r.type == MSG_MODEL_CHUNK);
        if (r.type != MSG_MODEL_CHUNK) {
            free(rep);
            break;
        }
        crypto_sha256_update(sha, r.model_chunk.data, r.model_chunk.data_len);
        off += r.model_chunk.data_len;
        total = r.model_chunk.total;
        int fin = r.model_chunk.final;
        free(rep);
        if (fin) break;
    } while (off < 100000000);
    crypto_sha256_final(sha, h);
    crypto_sha256_free(sha);
    CHECK(off == total && memcmp(h, base1, 32) == 0);
    m = (struct msg){.type = MSG_GET_MODEL};
    m.get_model.version[0] = 0xee;
    m.get_model.length = 10;
    CHECK_OK(ask(a, &m, T0, &r));
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "unknown model version"));

    /* A good delta gets a receipt; the same envelope again (a node that
     * lost the answer) gets the same receipt and counts once. */
    struct sealed s = seal_delta(a, 0, 1, 1, NULL);
    r = submit(a, s.env, s.len, s.id, 1, T0 + 1);
    uint8_t digest[32];
    crypto_sha256(s.env, s.len, digest);
    CHECK(r.type == MSG_RECEIPT && r.receipt.round == 1 && !memcmp(r.receipt.id, s.id, 16) &&
          !memcmp(r.receipt.digest, digest, 32) && r.receipt.time == T0 + 1);
    CHECK(agg_get_state(a) == AGG_COLLECTING && agg_accepted_count(a) == 1);
    r = submit_as(a, s.env, s.len, s.id, 1, 333, T0 + 5);
    CHECK(r.type == MSG_RECEIPT && r.receipt.time == T0 + 1 && agg_accepted_count(a) == 1);

    /* replay: the accepted message id with other bytes. */
    uint8_t *t = malloc(s.len);
    memcpy(t, s.env, s.len);
    t[s.len / 2] ^= 0x40;
    r = submit(a, t, s.len, s.id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "replay"));
    free(t);

    /* A second, different delta from the same member for the same round. */
    struct sealed s2 = seal_delta(a, 0, 1, 2, NULL);
    r = submit(a, s2.env, s2.len, s2.id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "already submitted"));

    /* tampered envelope: a flipped ciphertext byte breaks the signature. */
    struct sealed sb = seal_delta(a, 1, 1, 3, NULL);
    sb.env[sb.len / 2] ^= 1;
    r = submit(a, sb.env, sb.len, sb.id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "tampered envelope"));
    /* a flipped header byte (the round field lives at offset 40) */
    free(sb.env);
    sb = seal_delta(a, 1, 1, 3, NULL);
    sb.env[44] ^= 1;
    r = submit(a, sb.env, sb.len, sb.id, 1, T0 + 2);
    CHECK(r.type == MSG_ERROR && r.error.code != MSG_ERR_INTERNAL);
    free(sb.env);

    /* unknown node: an envelope signed by someone not on the member list. */
    struct sealed so = seal_delta(a, 3, 1, 4, NULL);
    r = submit(a, so.env, so.len, so.id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_MEMBER, "unknown node"));
    free(so.env);

    /* wrong consortium */
    uint8_t base[32];
    agg_current_base(a, base);
    size_t plen;
    uint8_t *p = fed_delta(&F, 1, base, 5, NULL, &plen);
    uint8_t id[16];
    size_t elen;
    uint8_t *e = fed_seal(&F, &F.m[1], "other-consortium", 1, p, plen, &elen, id);
    r = submit(a, e, elen, id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "wrong consortium"));
    free(e);
    /* stale round in the signed header while SUBMIT_BEGIN claims the open one */
    e = fed_seal(&F, &F.m[1], "test-consortium", 0, p, plen, &elen, id);
    r = submit(a, e, elen, id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_WRONG_ROUND, "stale round"));
    free(e);
    free(p);

    /* oversized submission: refused at SUBMIT_BEGIN, before any byte */
    m = (struct msg){.type = MSG_SUBMIT_BEGIN};
    m.submit_begin.round = 1;
    m.submit_begin.id[0] = 9;
    m.submit_begin.size = 200001;
    m.submit_begin.chunks = 1;
    CHECK_OK(ask(a, &m, T0 + 2, &r));
    CHECK(fed_is_error(&r, MSG_ERR_TOO_LARGE, "oversized submission"));
    /* ... and more bytes than announced */
    struct sealed sc = seal_delta(a, 1, 1, 6, NULL);
    m.submit_begin.size = 10;
    memcpy(m.submit_begin.id, sc.id, 16);
    CHECK_OK(ask(a, &m, T0 + 2, &r));
    m = (struct msg){.type = MSG_SUBMIT_CHUNK};
    memcpy(m.submit_chunk.id, sc.id, 16);
    m.submit_chunk.data = sc.env;
    m.submit_chunk.data_len = 11;
    CHECK_OK(ask(a, &m, T0 + 2, &r));
    CHECK(fed_is_error(&r, MSG_ERR_TOO_LARGE, "oversized submission"));

    /* NaN / Inf in a delta */
    struct delta_opts o = {.poison = NAN};
    struct sealed sn = seal_delta(a, 1, 1, 7, &o);
    r = submit(a, sn.env, sn.len, sn.id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "NaN or Inf"));
    free(sn.env);
    o.poison = INFINITY;
    sn = seal_delta(a, 1, 1, 7, &o);
    r = submit(a, sn.env, sn.len, sn.id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "NaN or Inf"));
    free(sn.env);

    /* shapes that do not match the base: an adapter made for a wider model */
    model_config wide;
    model *other;
    model_config_preset(&wide, "llama", "tiny");
    wide.hidden_size = 96;
    wide.head_dim = 24;
    CHECK_OK(model_create(&other, &wide));
    o = (struct delta_opts){.shapes = other};
    struct sealed sw = seal_delta(a, 1, 1, 8, &o);
    r = submit(a, sw.env, sw.len, sw.id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "shapes do not match the base"));
    free(sw.env);
    model_free(other);

    /* wrong base version */
    uint8_t wrong[32];
    memset(wrong, 0x5a, 32);
    p = fed_delta(&F, 1, wrong, 9, NULL, &plen);
    e = fed_seal(&F, &F.m[1], "test-consortium", 1, p, plen, &elen, id);
    r = submit(a, e, elen, id, 1, T0 + 2);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "wrong base version"));
    free(e);
    free(p);
    CHECK(agg_accepted_count(a) == 1); /* none of the refusals counted */

    /* The other two members; the round closes when all are in. */
    struct sealed sB = seal_delta(a, 1, 1, 10, NULL), sC = seal_delta(a, 2, 1, 11, NULL);
    r = submit(a, sB.env, sB.len, sB.id, 1, T0 + 3);
    CHECK(r.type == MSG_RECEIPT);
    CHECK_OK(agg_tick(a, T0 + 3));
    CHECK(agg_get_state(a) == AGG_COLLECTING); /* 2 of 3, deadline not reached */
    r = submit(a, sC.env, sC.len, sC.id, 1, T0 + 4);
    CHECK(r.type == MSG_RECEIPT);
    CHECK_OK(agg_tick(a, T0 + 4));
    CHECK(agg_get_state(a) == AGG_OPEN && agg_current_round(a) == 2);
    uint8_t base2[32];
    agg_current_base(a, base2);
    CHECK(memcmp(base1, base2, 32) != 0 && store_has(c.state, base2));

    /* The published model is W + Σ p_i s_i B_i A_i over the three deltas. */
    {
        char dir[4300];
        model *w0, *w1;
        store_version_dir(c.state, base1, dir, sizeof dir);
        CHECK_OK(checkpoint_load(&w0, dir));
        store_version_dir(c.state, base2, dir, sizeof dir);
        CHECK_OK(checkpoint_load(&w1, dir));
        double tok[3], sum = 0, max_err = 0;
        lora_set *sets[3];
        for (int i = 0; i < 3; i++) {
            uint8_t *pl;
            size_t pll;
            /* the same deltas as seal_delta made them (seeds 1, 10, 11) */
            pl = fed_delta(&F, 1, base1, (uint64_t)(i == 0 ? 1 : 9 + i), NULL, &pll);
            struct payload_delta d;
            CHECK_OK(payload_delta_decode(pl, pll, 0, &d));
            tok[i] = (double)d.tokens;
            sum += tok[i];
            agg_update u;
            char why[AGG_WHY_MAX];
            CHECK(agg_update_build(w0, base1, 1, fed_names[i], 1, pl, pll, &u, why) == 0);
            sets[i] = u.set;
            payload_delta_free(&d);
            free(pl);
        }
        /* Reference in double: W + Σ (tok_i/Σtok) s B A, element by element. */
        model_param *q0 = model_find_param(w0, "model.layers.1.self_attn.q_proj.weight");
        model_param *q1 = model_find_param(w1, "model.layers.1.self_attn.q_proj.weight");
        for (int64_t row = 0; row < q0->shape[0]; row++)
            for (int64_t col = 0; col < q0->shape[1]; col++) {
                double ref = q0->data[row * q0->shape[1] + col];
                for (int i = 0; i < 3; i++) {
                    lora_module *mod = lora_find(sets[i], "model.layers.1.self_attn.q_proj");
                    double acc = 0;
                    for (int k = 0; k < mod->rank; k++)
                        acc += (double)mod->B.data[row * mod->rank + k] *
                               mod->A.data[k * mod->in + col];
                    ref += tok[i] / sum * mod->scale * acc;
                }
                double err = fabs(ref - q1->data[row * q1->shape[1] + col]);
                if (err > max_err) max_err = err;
            }
        CHECK_MSG(max_err < 1e-6, "max error %g", max_err);
        /* Untargeted weights are untouched. */
        model_param *k0 = model_find_param(w0, "model.layers.0.self_attn.k_proj.weight");
        model_param *k1 = model_find_param(w1, "model.layers.0.self_attn.k_proj.weight");
        CHECK(memcmp(k0->data, k1->data, (size_t)k0->numel * sizeof(real)) == 0);
        for (int i = 0; i < 3; i++) lora_free(sets[i]);
        model_free(w0);
        model_free(w1);
    }

    /* The metrics line of round 1. */
    json_t *j = fed_metrics_of(&c, 1);
    CHECK(j != NULL);
    if (j) {
        CHECK(json_array_size(json_object_get(j, "members_accepted")) == 3);
        CHECK(!strcmp(json_string_value(json_object_get(j, "status")), "published"));
        char hex[65];
        hex_encode(base2, 32, hex);
        CHECK(!strcmp(json_string_value(json_object_get(j, "version")), hex));
        CHECK(json_object_get(json_object_get(j, "loss_after"), "uni-b") != NULL);
        CHECK(json_integer_value(json_object_get(j, "submissions_refused")) >= 10);
        json_decref(j);
    }

    /* stale round: round 1's envelope arrives in round 2 (never accepted). */
    struct sealed late = seal_delta(a, 1, 1, 12, NULL);
    r = submit(a, late.env, late.len, late.id, 1, T0 + 5);
    CHECK(fed_is_error(&r, MSG_ERR_WRONG_ROUND, "stale round"));
    free(late.env);
    /* an accepted envelope of round 1 again: still the same receipt */
    r = submit(a, s.env, s.len, s.id, 1, T0 + 5);
    CHECK(r.type == MSG_RECEIPT && r.receipt.round == 1);

    /* Round 2 with all three, then FINISHED. */
    struct sealed r2[3];
    for (int i = 0; i < 3; i++) {
        r2[i] = seal_delta(a, i, 2, 20 + (uint64_t)i, NULL);
        r = submit(a, r2[i].env, r2[i].len, r2[i].id, 2, T0 + 6);
        CHECK(r.type == MSG_RECEIPT);
    }
    CHECK_OK(agg_tick(a, T0 + 6));
    CHECK(agg_get_state(a) == AGG_FINISHED);
    r = hello(a, 2, T0 + 7);
    CHECK(fed_is_error(&r, MSG_ERR_WRONG_ROUND, "finished") && !r.error.has_retry_after);
    uint8_t final[32];
    agg_current_base(a, final);
    /* The end of the federation is in the reply's "final" field (the node
     * reads that, not the reason), with the final version. */
    CHECK(r.error.has_final && memcmp(r.error.final, final, 32) == 0);
    agg_close(a);

    /* Offline recomputation of both rounds gives the published bytes. */
    for (uint64_t round = 1; round <= 2; round++) {
        char out[600];
        fed_path(out, sizeof out, "round/recompute-%llu", (unsigned long long)round);
        uint8_t rh[32];
        CHECK_OK(agg_recompute(&c, round, out, rh));
        CHECK(memcmp(rh, round == 1 ? base2 : final, 32) == 0);
    }
    char out[600];
    fed_path(out, sizeof out, "round/recompute-3");
    uint8_t rh[32];
    CHECK_FAILS_WITH(agg_recompute(&c, 3, out, rh), "was not closed");

    /* Restart when finished: still finished, same final version. */
    CHECK_OK(agg_open(&a, &c, T0 + 100));
    CHECK(agg_get_state(a) == AGG_FINISHED);
    agg_current_base(a, rh);
    CHECK(memcmp(rh, final, 32) == 0);
    /* Two aggregators on one state directory: the second is refused. */
    agg *b;
    CHECK_FAILS_WITH(agg_open(&b, &c, T0 + 100), "in use by another aggregator");
    agg_close(a);

    free(s.env), free(s2.env), free(sB.env), free(sC.env), free(sc.env);
    for (int i = 0; i < 3; i++) free(r2[i].env);
    agg_config_free(&c);
}

/* ---- bounds on a member's influence (issue 17, case 1) ---------------------- */

/* Every value of every tensor of version v is finite. */
static int version_finite(const agg_config *c, const uint8_t v[32]) {
    char dir[4300];
    model *m = NULL;
    store_version_dir(c->state, v, dir, sizeof dir);
    if (checkpoint_load(&m, dir) < 0) return 0;
    int ok = 1;
    for (int i = 0; i < m->n_params && ok; i++)
        for (int64_t k = 0; k < m->params[i].numel && ok; k++) ok = isfinite(m->params[i].data[k]);
    model_free(m);
    return ok;
}

/* 1 when the metrics line of round r lists a refusal containing needle. */
static int refusal_listed(const agg_config *c, uint64_t round, const char *needle) {
    json_t *j = fed_metrics_of(c, round), *list = j ? json_object_get(j, "refusals") : NULL;
    int found = 0;
    for (size_t i = 0; i < json_array_size(list); i++)
        found |= strstr(json_string_value(json_array_get(list, i)), needle) != NULL;
    json_decref(j);
    return found;
}

static void test_influence_bounds(void) {
    /* Without a policy file a delta scaled by 1e30 (finite, every value)
     * used to be accepted, and the version published from it had every
     * adapted weight infinite. The default bound refuses it at SUBMIT_END,
     * saying why, and the round goes on with the others. */
    agg_config c;
    agg *a = open_agg("bounds", "count = 1; quorum = 3; deadline = 100;", NULL, &c, T0);
    uint8_t base1[32];
    agg_current_base(a, base1);
    struct delta_opts big = {.scale_b = 1e30f};
    struct sealed sp = seal_delta(a, 0, 1, 40, &big);
    struct msg r = submit(a, sp.env, sp.len, sp.id, 1, T0 + 1);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "uni-a's delta: norm: the update of model.layers."));
    CHECK(r.type == MSG_ERROR && strstr(r.error.reason, "limits.max_update_ratio = 4"));
    CHECK(agg_accepted_count(a) == 0);
    free(sp.env);
    struct sealed ok[3];
    for (int i = 0; i < 3; i++) {
        ok[i] = seal_delta(a, i, 1, 41 + (uint64_t)i, NULL);
        r = submit(a, ok[i].env, ok[i].len, ok[i].id, 1, T0 + 2);
        CHECK(r.type == MSG_RECEIPT);
        free(ok[i].env);
    }
    CHECK_OK(agg_tick(a, T0 + 3));
    uint8_t v[32];
    agg_current_base(a, v);
    CHECK(agg_get_state(a) == AGG_FINISHED && memcmp(v, base1, 32) != 0 && version_finite(&c, v));
    CHECK(refusal_listed(&c, 1, "uni-a's delta: norm: "));
    agg_close(a);
    agg_config_free(&c);

    /* The bound can be turned off (limits.max_update_ratio = 0); then a
     * delta whose product overflows float is accepted, and the merge's
     * check keeps its result from being published: the round fails, the
     * next one trains on the same base. */
    a = open_agg("bounds_off", "count = 2; quorum = 3; deadline = 100;",
                 "limits = { max_update_ratio = 0; };\n", &c, T0);
    agg_current_base(a, base1);
    struct delta_opts huge = {.scale_a = 1e25f, .scale_b = 1e25f};
    for (int i = 0; i < 3; i++) {
        struct sealed s = seal_delta(a, i, 1, 50 + (uint64_t)i, i == 0 ? &huge : NULL);
        r = submit(a, s.env, s.len, s.id, 1, T0 + 1);
        CHECK(r.type == MSG_RECEIPT);
        free(s.env);
    }
    CHECK_OK(agg_tick(a, T0 + 2));
    agg_current_base(a, v);
    CHECK_MSG(agg_current_round(a) == 2 && memcmp(v, base1, 32) == 0, "round %llu, base %s",
              (unsigned long long)agg_current_round(a), memcmp(v, base1, 32) ? "changed" : "kept");
    json_t *j = fed_metrics_of(&c, 1);
    CHECK(j && !strcmp(json_string_value(json_object_get(j, "status")), "non-finite-merge") &&
          json_is_null(json_object_get(j, "version")));
    json_decref(j);
    /* The version written was deleted: the store holds the imported base
     * only, and nothing is left in tmp/. */
    for (int k = 0; k < 2; k++) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/%s", c.state, k ? "tmp" : "versions");
        DIR *d = opendir(dir);
        struct dirent *e;
        int n = 0;
        while (d && (e = readdir(d)))
            n += e->d_name[0] != '.' && strcmp(e->d_name, STORE_LATEST) != 0;
        if (d) closedir(d);
        CHECK_MSG(d && n == 1 - k, "%s holds %d entries", dir, n);
    }
    agg_close(a);
    agg_config_free(&c);

    /* The key's values. */
    char path[600];
    const char *bad[] = {"limits = { max_update_ratio = -1; };\n",
                         "limits = { max_update_ratio = \"big\"; };\n"};
    for (int i = 0; i < 2; i++) {
        fed_config(&F, "bounds_cfg", path, sizeof path, "count = 1;", bad[i]);
        CHECK_FAILS_WITH(agg_config_load(&c, path), "max_update_ratio");
    }
}

/* A refusal's reason is printable ASCII as the wire wants it: an ellipsis
 * in a deeper layer's message is "...", not "???" (issue 17, case 10: a node
 * with the wrong aggregator.id got "... this receiver's key is 0a1b???"). */
static void test_ascii_reasons(void) {
    agg_config c;
    agg *a = open_agg("ascii", "count = 1; quorum = 3; deadline = 100;", NULL, &c, T0);
    uint8_t base[32];
    agg_current_base(a, base);
    size_t plen, elen;
    uint8_t *p = fed_delta(&F, 1, base, 60, NULL, &plen), *env;
    envelope_params ep = {.round = 1, .payload_type = PAYLOAD_TYPE_DELTA, .payload_size = plen};
    payload_consortium_id("test-consortium", ep.consortium);
    envelope_header h;
    /* sealed to another key than the aggregator's (mallory's, as a node
     * with the wrong aggregator.id would) */
    CHECK_OK(envelope_seal_mem(&ep, &F.m[0], F.m[3].pub.kx_pub, p, &env, &elen, &h));
    struct msg r = submit(a, env, elen, h.message_id, 1, T0 + 1);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "sealed for another aggregator"));
    CHECK_MSG(r.type == MSG_ERROR && !strchr(r.error.reason, '?') &&
                  strstr(r.error.reason, "..., this receiver's key is "),
              "reason '%s'", r.type == MSG_ERROR ? r.error.reason : "");
    free(env);
    free(p);
    agg_close(a);
    agg_config_free(&c);
}

/* ---- quorum, deadline, below-quorum policy -------------------------------- */

static void test_quorum_deadline(void) {
    agg_config c;
    agg *a = open_agg("quorum", "count = 2; quorum = 2; deadline = 50;", NULL, &c, T0);
    struct sealed s0 = seal_delta(a, 0, 1, 1, NULL), s1 = seal_delta(a, 1, 1, 2, NULL),
                  s2 = seal_delta(a, 2, 1, 3, NULL);
    struct msg r = submit(a, s0.env, s0.len, s0.id, 1, T0 + 1);
    CHECK(r.type == MSG_RECEIPT);
    /* Below quorum at the deadline, policy "wait": the round stays open. */
    CHECK_OK(agg_tick(a, T0 + 60));
    CHECK(agg_get_state(a) == AGG_COLLECTING && agg_current_round(a) == 1);
    r = submit(a, s1.env, s1.len, s1.id, 1, T0 + 61);
    CHECK(r.type == MSG_RECEIPT);
    /* Quorum met after the deadline: it closes at once. */
    CHECK_OK(agg_tick(a, T0 + 61));
    CHECK(agg_current_round(a) == 2);
    /* The late member is refused with a clear reply. */
    r = submit(a, s2.env, s2.len, s2.id, 1, T0 + 62);
    CHECK(fed_is_error(&r, MSG_ERR_WRONG_ROUND, "stale round"));
    json_t *j = fed_metrics_of(&c, 1);
    CHECK(j && json_array_size(json_object_get(j, "members_accepted")) == 2);
    json_decref(j);

    /* Round 2: quorum met before the deadline closes only at the deadline. */
    free(s0.env), free(s1.env), free(s2.env);
    s0 = seal_delta(a, 0, 2, 4, NULL);
    s1 = seal_delta(a, 1, 2, 5, NULL);
    s2 = seal_delta(a, 2, 2, 6, NULL);
    CHECK(submit(a, s0.env, s0.len, s0.id, 2, T0 + 62).type == MSG_RECEIPT);
    CHECK(submit(a, s1.env, s1.len, s1.id, 2, T0 + 63).type == MSG_RECEIPT);
    CHECK_OK(agg_tick(a, T0 + 64));
    CHECK(agg_get_state(a) == AGG_COLLECTING);
    /* A node mid-upload when the deadline closes the round. */
    struct msg m = {.type = MSG_SUBMIT_BEGIN};
    m.submit_begin.round = 2;
    memcpy(m.submit_begin.id, s2.id, 16);
    m.submit_begin.size = s2.len;
    m.submit_begin.chunks = 1;
    CHECK_OK(ask(a, &m, T0 + 65, &r));
    CHECK(r.type == MSG_ACK && r.ack.stored == 0);
    CHECK_OK(agg_tick(a, T0 + 61 + 50));
    CHECK(agg_get_state(a) == AGG_FINISHED);
    m = (struct msg){.type = MSG_SUBMIT_CHUNK};
    memcpy(m.submit_chunk.id, s2.id, 16);
    m.submit_chunk.data = s2.env;
    m.submit_chunk.data_len = (uint32_t)s2.len;
    CHECK_OK(ask(a, &m, T0 + 112, &r));
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload"));
    r = submit(a, s2.env, s2.len, s2.id, 2, T0 + 112);
    CHECK(fed_is_error(&r, MSG_ERR_WRONG_ROUND, "finished"));
    CHECK(!r.error.has_final); /* only HELLO's answer ends a node's run */
    agg_close(a);
    free(s0.env), free(s1.env), free(s2.env);
    agg_config_free(&c);

    /* Policy "fail": the round fails, and the next trains on the same base. */
    a = open_agg("quorum-fail", "count = 2; quorum = 2; deadline = 50; below_quorum = \"fail\";",
                 NULL, &c, T0);
    uint8_t b1[32], b2[32];
    agg_current_base(a, b1);
    s0 = seal_delta(a, 0, 1, 1, NULL);
    CHECK(submit(a, s0.env, s0.len, s0.id, 1, T0 + 1).type == MSG_RECEIPT);
    CHECK_OK(agg_tick(a, T0 + 51));
    CHECK(agg_current_round(a) == 2 && agg_get_state(a) == AGG_OPEN);
    agg_current_base(a, b2);
    CHECK(memcmp(b1, b2, 32) == 0);
    j = fed_metrics_of(&c, 1);
    CHECK(j && !strcmp(json_string_value(json_object_get(j, "status")), "below-quorum"));
    json_decref(j);
    agg_close(a);
    free(s0.env);

    /* A crash between "fail 1" and "open 2": the journal replays to a
     * FAILED round 1, and the restart opens round 2 on the same base. */
    char jp[4300], *text;
    size_t len;
    snprintf(jp, sizeof jp, "%s/journal", c.state);
    CHECK_OK(fio_read_all(jp, 1 << 20, &text, &len));
    char *last = len > 1 ? memrchr(text, '\n', len - 1) : NULL;
    CHECK(last && !strncmp(last + 1, "open 2 ", 7) && strstr(text, "\nfail 1 below-quorum #"));
    if (last) CHECK_OK(fio_write_atomic(jp, text, (size_t)(last + 1 - text), 0644));
    CHECK_OK(agg_open(&a, &c, T0 + 52));
    CHECK(agg_current_round(a) == 2 && agg_get_state(a) == AGG_OPEN);
    agg_current_base(a, b2);
    CHECK(memcmp(b1, b2, 32) == 0);
    agg_close(a);
    /* A failed round takes no second ending. */
    agg_journal *jr;
    if (last) CHECK_OK(fio_write_atomic(jp, text, (size_t)(last + 1 - text), 0644));
    CHECK_OK(journal_open(&jr, jp, 0, NULL, NULL));
    CHECK_OK(journal_append(jr, "fail 1 again"));
    journal_close(jr);
    CHECK_FAILS_WITH(agg_open(&a, &c, T0 + 53), "'fail 1' in state FAILED of round 1");
    free(text);
    agg_config_free(&c);
}

/* ---- restart from the journal and determinism ----------------------------- */

static void run_rounds(const char *sub, int restart_each_step, uint8_t final[32]) {
    agg_config c;
    agg *a = open_agg(sub, "count = 2; quorum = 3; deadline = 1000;", NULL, &c, T0);
    for (uint64_t round = 1; round <= 2; round++)
        for (int i = 0; i < 3; i++) {
            struct sealed s = seal_delta(a, i, round, 100 * round + (uint64_t)i, NULL);
            struct msg r = submit(a, s.env, s.len, s.id, round, T0 + round);
            CHECK(r.type == MSG_RECEIPT);
            if (restart_each_step) {
                agg_close(a);
                CHECK_OK(agg_open(&a, &c, T0 + round));
                CHECK(agg_accepted_count(a) == i + 1);
                /* After the restart the same envelope is still known. */
                r = submit(a, s.env, s.len, s.id, round, T0 + round);
                CHECK(r.type == MSG_RECEIPT && r.receipt.time == T0 + round);
            }
            free(s.env);
            CHECK_OK(agg_tick(a, T0 + round));
        }
    CHECK(agg_get_state(a) == AGG_FINISHED);
    agg_current_base(a, final);
    agg_close(a);
    agg_config_free(&c);
}

static void test_restart_determinism(void) {
    uint8_t f1[32], f2[32], f3[32];
    run_rounds("det-1", 0, f1);
    run_rounds("det-2", 0, f2);
    run_rounds("det-3", 1, f3);
    CHECK(memcmp(f1, f2, 32) == 0); /* fresh keys and msgids, same deltas: same bytes */
    CHECK(memcmp(f1, f3, 32) == 0); /* restarts after every receipt change nothing */

    /* A journal cut after "close" (crash during aggregation) resumes there. */
    agg_config c;
    agg *a = open_agg("det-4", "count = 1; quorum = 3; deadline = 1000;", NULL, &c, T0);
    for (int i = 0; i < 3; i++) {
        struct sealed s = seal_delta(a, i, 1, 100 + (uint64_t)i, NULL);
        CHECK(submit(a, s.env, s.len, s.id, 1, T0 + 1).type == MSG_RECEIPT);
        free(s.env);
    }
    agg_close(a);
    char jp[4300];
    snprintf(jp, sizeof jp, "%s/journal", c.state);
    agg_journal *j;
    CHECK_OK(journal_open(&j, jp, 0, NULL, NULL));
    CHECK_OK(journal_append(j, "close 1 3"));
    journal_close(j);
    CHECK_OK(agg_open(&a, &c, T0 + 2));
    CHECK(agg_get_state(a) == AGG_FINISHED); /* the aggregation is done before agg_open returns */
    uint8_t f4[32];
    agg_current_base(a, f4);
    agg_close(a);
    agg_config_free(&c);

    /* The same three round-1 deltas as det-1: its round-1 version. */
    a = open_agg("det-1", "count = 2; quorum = 3; deadline = 1000;", NULL, &c, T0);
    agg_close(a);
    char out[600];
    uint8_t r1[32];
    fed_path(out, sizeof out, "det-1/recompute-1");
    CHECK_OK(agg_recompute(&c, 1, out, r1));
    CHECK(memcmp(r1, f4, 32) == 0);
    agg_config_free(&c);
}

/* ---- config errors ----------------------------------------------------------- */

static void test_config(void) {
    char p[600];
    agg_config c;
    fed_config(&F, "cfg", p, sizeof p, "count = 2; quorum = 4;", NULL);
    CHECK_FAILS_WITH(agg_config_load(&c, p), "'rounds.quorum' must be from 1 to 3");
    fed_config(&F, "cfg", p, sizeof p, "count = 2; quorom = 2;", NULL);
    CHECK_FAILS_WITH(agg_config_load(&c, p), "unknown key 'rounds.quorom'");
    fed_config(&F, "cfg", p, sizeof p, "count = 2; below_quorum = \"maybe\";", NULL);
    CHECK_FAILS_WITH(agg_config_load(&c, p), "\"wait\" or \"fail\"");
    fed_config(&F, "cfg", p, sizeof p, "count = 2;", "limits = { max_submission = 10; };\n");
    CHECK_FAILS_WITH(agg_config_load(&c, p), "'limits.max_submission' must be from 1024");
    fed_config(&F, "cfg", p, sizeof p, "count = 2; join = \"later\";", NULL);
    CHECK_FAILS_WITH(agg_config_load(&c, p), "'rounds.join' must be \"next\" or \"current\"");
    /* A roster replaces the member list: not both; it needs a pinned admin
     * and an explicit quorum. */
    fed_config(&F, "cfg", p, sizeof p, "count = 2;",
               "roster = { file = \"roster.txt\"; admin = \"00\"; };\n");
    CHECK_FAILS_WITH(agg_config_load(&c, p), "both 'members' and 'roster' are set");
    fed_config(&F, "cfg", p, sizeof p, "count = 2; join = \"current\";", NULL);
    CHECK_OK(agg_config_load(&c, p));
    CHECK(c.join_current == 1 && !c.has_roster);
    agg_config_free(&c);
    fed_config(&F, "cfg", p, sizeof p, "count = 2;", NULL);
    CHECK_OK(agg_config_load(&c, p));
    CHECK(c.quorum == 3 && c.deadline_s == 600 && c.n_members == 3 && c.train.rank == FED_RANK);
    CHECK(c.join_current == 0);
    CHECK(strstr(c.state, "/cfg/state") != NULL);     /* relative to the config file */
    CHECK(c.curve == 1 && c.max_update_ratio == 4.0); /* the defaults */
    agg_config_free(&c);
    fed_config(&F, "cfg", p, sizeof p, "count = 2;", "curve = false;\n");
    CHECK_OK(agg_config_load(&c, p));
    CHECK(c.curve == 0);
    agg_config_free(&c);
    fed_config(&F, "cfg", p, sizeof p, "count = 2;", "curve = \"yes\";\n");
    CHECK_FAILS_WITH(agg_config_load(&c, p), "'curve' must be true or false");
}

int main(void) {
    fed_init(&F);
    test_config();
    test_round_and_refusals();
    test_quorum_deadline();
    test_restart_determinism();
    test_influence_bounds();
    test_ascii_reasons();
    model_free(F.base);
    return check_finish();
}
