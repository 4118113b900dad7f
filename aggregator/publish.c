/* publish — a closed round aggregated and its version published.
 *
 * Aggregation reads the accepted envelopes in member name order, checks
 * each again, lets the policy validate, weigh and merge them (merge.h) and
 * writes the new version into the store, then its low-rank update as an
 * object, and only then the publish record: a crash anywhere ends in the
 * same bytes.
 *
 * With a policy file (config "policy", hooks.h) that enables DP-FedAvg, the
 * noise of round r comes from a ChaCha20 key written to STATE/noise/r<r>.key
 * (mode 0600, fsync'd) before the aggregation starts: a crash and restart
 * reopen the same key, add the same noise and publish the same bytes. The
 * key is deleted once the round's publish (or fail) record is written; a
 * restart deletes any key left by a crash after that record. The privacy
 * accountant is rebuilt from the journal (one sampled Gaussian round per
 * publish record) and no round opens that would take ε above the budget. */
#include "aggregator/state.h"

#include "aggregator/store.h"
#include "model/checkpoint.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int agg_load_version(const agg_config *c, const uint8_t hash[32], model **out) {
    char dir[AGG_PATH_MAX];
    if (store_version_dir(c->state, hash, dir, sizeof dir) < 0) return -1;
    /* Re-hashed whenever it is loaded: what is merged on, and what a
     * delta is checked against, is the version its name says (a flipped
     * byte on disk would otherwise be built on and published). */
    if (store_verify(c->state, hash) < 0) return -1;
    if (checkpoint_map(out, dir, MODEL_PRECISION_FP32) < 0)
        return err_context("loading model version %s", dir);
    return 0;
}

/* The model of version hash in a->model (loaded unless it already is). */
int agg_ensure_model(agg *a, const uint8_t hash[32]) {
    if (a->model && memcmp(a->model_version, hash, 32) == 0) return 0;
    model_free(a->model);
    a->model = NULL;
    if (agg_load_version(&a->cfg, hash, &a->model) < 0) return -1;
    memcpy(a->model_version, hash, 32);
    return agg_mark_verified(a, hash);
}

static int is_verified(const agg *a, const uint8_t hash[32]) {
    for (int i = 0; i < a->nverified; i++)
        if (memcmp(a->verified[i], hash, 32) == 0) return 1;
    return 0;
}

int agg_is_verified(const agg *a, const uint8_t hash[32]) {
    return is_verified(a, hash);
}

static int add_verified(agg *a, const uint8_t hash[32]) {
    if (is_verified(a, hash)) return 0;
    if (a->nverified == a->verified_cap) {
        int cap = a->verified_cap ? 2 * a->verified_cap : 16;
        void *v = realloc(a->verified, (size_t)cap * sizeof *a->verified);
        if (!v) return err_set("out of memory");
        a->verified = v;
        a->verified_cap = cap;
    }
    memcpy(a->verified[a->nverified++], hash, 32);
    return 0;
}

/* A sharded version's shards are served as objects under their own
 * SHA-256s (GET_MODEL names each one), so when the version counts as
 * checked its shards do too: the index lists their hashes, and the index is
 * part of what the version's hash covers. Without this the first download
 * of each shard hashed it again, inside the request: 5 GB shards of an 8B
 * model took longer than a node's request timeout, and the node retried
 * (bench/scale/federation.sh, 2026-12-07). */
static int add_shards(agg *a, const uint8_t hash[32]) {
    version_index *x = NULL;
    int rc = store_version_index(a->cfg.state, hash, &x);
    for (int i = 0; rc == 0 && x && i < x->n_shards; i++) rc = add_verified(a, x->shards[i].hash);
    version_index_free(x);
    return rc;
}

int agg_mark_verified(agg *a, const uint8_t hash[32]) {
    if (is_verified(a, hash)) return 0;
    if (add_verified(a, hash) < 0) return -1;
    return add_shards(a, hash);
}

int agg_verify_stored(agg *a, const uint8_t hash[32]) {
    if (is_verified(a, hash)) return 0;
    if (store_verify(a->cfg.state, hash) < 0) return -1;
    return agg_mark_verified(a, hash);
}

int agg_publish_dir(const agg_card *card, const char *name, uint8_t hash[32]) {
    const agg_config *c = &card->a->cfg;
    char tmp[AGG_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s/tmp/%s", c->state, name) >= (int)sizeof tmp)
        return err_set("state path too long");
    if (store_publish(c->state, tmp, agg_complete_version, (void *)card, hash) < 0)
        return err_context("publishing a model version");
    return 0;
}

/* A dense change as an edit of checkpoint_write. */
static int dense_touches(void *ctx, const model_param *p) {
    const agg_change *ch = ctx;
    return ch->dense_touches(ch->dense_ctx, p->name);
}

static int dense_apply(void *ctx, const model_param *p, real *values) {
    const agg_change *ch = ctx;
    return ch->dense_apply(ch->dense_ctx, p->name, values);
}

int agg_write_version(const model *base, const uint8_t base_hash[32], const agg_change *change,
                      const char *dir) {
    if (fio_remove_tree(dir) < 0) return -1;
    if (change->factors) {
        memcpy(change->factors->from, base_hash, 32);
        return update_write_version(base, change->factors, dir, 1);
    }
    checkpoint_edit e = {.touches = dense_touches, .apply = dense_apply, .ctx = (void *)change};
    checkpoint_save_options o = {.dtype = base->cfg.torch_dtype,
                                 .edit = &e,
                                 .release = 1,
                                 .stochastic = strcmp(base->cfg.torch_dtype, "bfloat16") == 0,
                                 .sr_key = update_version_key(base_hash)};
    return checkpoint_write(base, dir, &o);
}

/* Writes round's update u (from → to) as an update file (lora/update.h) in
 * STATE/tmp/update-r<round>/, durably, then moves it into the store as an
 * object named by its SHA-256 (hash; *size its bytes). The same update gives
 * the same bytes, so a repeat after a crash finds the object there. */
static int publish_update(const agg_config *c, update *u, uint64_t round, const uint8_t from[32],
                          const uint8_t to[32], uint8_t hash[32], uint64_t *size) {
    char dir[AGG_PATH_MAX], file[AGG_PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/tmp/update-r%llu", c->state, (unsigned long long)round) >=
            (int)sizeof dir ||
        fio_join(file, sizeof file, dir, "update.safetensors") < 0)
        return err_set("state path too long");
    memcpy(u->from, from, 32);
    memcpy(u->to, to, 32);
    u->round = round;
    if (fio_remove_tree(dir) < 0 || fio_mkdirs(dir, 0700) < 0 || update_write(u, file) < 0 ||
        store_put_object(c->state, file, hash, size) < 0 || fio_remove_tree(dir) < 0)
        return err_context("publishing round %llu's low-rank update", (unsigned long long)round);
    return 0;
}

int agg_dp_on(const agg_config *c) {
    return c->has_policy && c->policy.dp.enabled;
}

static int key_path(const agg_config *c, uint64_t round, char *out, size_t n) {
    if (snprintf(out, n, "%s/noise/r%llu.key", c->state, (unsigned long long)round) >= (int)n)
        return err_set("state path %s is too long", c->state);
    return 0;
}

/* The noise source of round `round` under a DP policy. Production: the
 * ChaCha20 key stored for the round, or (create, and none stored yet) a fresh
 * one from the CSPRNG, written durably with mode 0600 before it is used.
 * Test mode: the seeded generator at test_seed + round, no key. */
int agg_round_noise(const agg_config *c, uint64_t round, int create, noise_source **out) {
    const policy *pol = &c->policy;
    if (pol->mode == POLICY_MODE_TEST) return noise_open_seeded(out, pol, pol->test_seed + round);
    char p[AGG_PATH_MAX];
    if (key_path(c, round, p, sizeof p) < 0) return -1;
    if (fio_exists(p)) {
        char *key;
        size_t len;
        if (fio_read_all(p, NOISE_KEY_LEN, &key, &len) < 0)
            return err_context("reading round %llu's DP noise key", (unsigned long long)round);
        int rc = len == NOISE_KEY_LEN
                     ? noise_open(out, pol, (const unsigned char *)key)
                     : err_set("%s: a DP noise key is %d bytes, this file has %zu; the state "
                               "directory was damaged",
                               p, NOISE_KEY_LEN, len);
        OPENSSL_cleanse(key, len);
        free(key);
        return rc;
    }
    if (!create)
        return err_set("round %llu's DP noise key %s is gone: it is deleted when the round's "
                       "version is published (the noise protects members only while it stays "
                       "secret), so this round cannot be recomputed",
                       (unsigned long long)round, p);
    unsigned char key[NOISE_KEY_LEN];
    if (noise_open(out, pol, NULL) < 0) return -1;
    int rc = noise_key(*out, key) < 0 || fio_write_atomic(p, key, sizeof key, 0600) < 0
                 ? err_context("storing round %llu's DP noise key", (unsigned long long)round)
                 : 0;
    OPENSSL_cleanse(key, sizeof key);
    if (rc < 0) {
        noise_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Deletes round's key (once its publish or fail record is written). */
int agg_forget_key(const agg_config *c, uint64_t round) {
    char p[AGG_PATH_MAX];
    if (!agg_dp_on(c)) return 0;
    if (key_path(c, round, p, sizeof p) < 0) return -1;
    if (unlink(p) != 0) return errno == ENOENT ? 0 : err_errno("deleting %s", p);
    return fio_fsync_dir_of(p);
}

void agg_result_free(round_result *r) {
    agg_change_free(&r->change);
    lora_free(r->start);
    for (int i = 0; i < r->n; i++) agg_update_free(&r->u[i]);
    free(r->u);
    free(r->w);
    free(r->drop);
    memset(r, 0, sizeof *r);
}

static int by_member(const void *x, const void *y) {
    return strcmp((*(const accept_rec *const *)x)->member, (*(const accept_rec *const *)y)->member);
}

static void drop(round_result *r, uint64_t round, const char *member, const char *why) {
    dropped *d = &r->drop[r->ndrop++];
    snprintf(d->member, sizeof d->member, "%s", member);
    snprintf(d->why, sizeof d->why, "%s", why);
    agg_say("round %llu: dropped %s's delta: %s", (unsigned long long)round, member, why);
}

/* The heart of a round, shared by the live aggregator and agg_recompute:
 * reads the n accepted envelopes in member name order, checks each again
 * (the same checks as at submission, so a delta that passed then passes
 * now), lets the policy validate and weigh them, and merges them into m
 * when at least `quorum` (and one) are kept. r->merged == 0 means nothing
 * was merged (m is untouched): the policy rejected too many.
 *
 * The policy's merge says what the round changes (merge.h), in r->change:
 * a low-rank change — the default policy's exact merge, and a policy file's
 * mean or multi-Krum without DP, fedit and svd — as its update, from which
 * the version is written with update_write_version, the portable kernel a
 * node repeats bit for bit, and which is published for low-rank sync; the
 * median, trimmed mean and DP noise as a dense change applied weight by
 * weight as the version is written. m (mapped) is only read. */
int agg_aggregate(const agg_config *c, agg_roster *roster, const keys_secret *keys,
                  const agg_policy *pol, const model *m, const uint8_t base[32], uint64_t round,
                  int quorum, const accept_rec *const *acc, int n, round_result *r, agg *crash) {
    memset(r, 0, sizeof *r);
    const accept_rec **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    r->u = calloc((size_t)(n ? n : 1), sizeof *r->u);
    r->w = calloc((size_t)(n ? n : 1), sizeof *r->w);
    r->drop = calloc((size_t)(n ? n : 1), sizeof *r->drop);
    if (!order || !r->u || !r->w || !r->drop) {
        free(order);
        agg_result_free(r);
        return err_set("out of memory aggregating %d deltas", n);
    }
    memcpy(order, acc, (size_t)n * sizeof *order);
    qsort(order, (size_t)n, sizeof *order, by_member);
    envelope_expect x;
    agg_envelope_expect(c, roster, round, agg_lookup_any_key, &x);
    int rc = -1;
    agg_norms *norms = NULL; /* the base's weight norms, for the default bound */
    if (agg_norms_new(&norms, base) < 0) goto done;
    agg_start started; /* where the round's members started (handout.h) */
    if (agg_start_of(c, m, round, &started, &r->start) < 0) goto done;
    for (int i = 0; i < n; i++) {
        const accept_rec *a = order[i];
        char path[AGG_PATH_MAX], why[AGG_WHY_MAX];
        char *env = NULL;
        size_t env_len;
        uint8_t digest[32], *payload = NULL;
        size_t plen;
        if (agg_inbox_path(c, round, a->member, path, sizeof path) < 0) goto done;
        /* The journal says this file was stored durably: not finding it, or
         * finding other bytes, means the state directory was damaged. */
        if (fio_read_all(path, (size_t)a->size, &env, &env_len) < 0 ||
            crypto_sha256(env, env_len, digest) < 0) {
            err_context("round %llu: the accepted delta of %s is gone (%s); the state directory "
                        "was damaged",
                        (unsigned long long)round, a->member, path);
            free(env);
            goto done;
        }
        if (env_len != a->size || memcmp(digest, a->digest, 32) != 0) {
            free(env);
            err_set("round %llu: %s no longer has the bytes that were receipted (digest "
                    "differs); the state directory was damaged",
                    (unsigned long long)round, path);
            goto done;
        }
        envelope_status st;
        keys_public pub;
        agg_member mem;
        int ok = envelope_open_mem(&x, keys, env, env_len, &payload, &plen, NULL, &pub, &st) == 0;
        free(env);
        uint8_t fp[KEYS_FP_LEN];
        if (!ok || keys_fingerprint(&pub, fp) < 0 || agg_roster_key_owner(roster, fp, &mem) != 1 ||
            strcmp(mem.name, a->member) != 0) {
            snprintf(why, sizeof why, "envelope no longer opens for this member: %s", err_msg());
            drop(r, round, a->member, why);
            free(payload);
            continue;
        }
        if (!mem.active) {
            snprintf(why, sizeof why,
                     "revoked: %s was revoked (roster version %llu) before its delta was merged",
                     a->member, (unsigned long long)agg_roster_version(roster));
            drop(r, round, a->member, why);
            free(payload);
            continue;
        }
        int b = agg_update_build(m, base, round, a->member, mem.max_weight, payload, plen,
                                 &r->u[r->n], why);
        free(payload);
        if (b == 0 && (b = agg_update_bound(&r->u[r->n], m, norms, c->max_update_ratio, why)))
            agg_update_free(&r->u[r->n]);
        if (b < 0) goto done;
        if (b > 0) {
            drop(r, round, a->member, why);
            continue;
        }
        if (agg_start_check(&started, &r->u[r->n], why)) {
            drop(r, round, a->member, why);
            agg_update_free(&r->u[r->n]);
            continue;
        }
        if (pol->validate) {
            int v = pol->validate(pol->arg, m, &r->u[r->n], why);
            if (v < 0) goto done;
            if (v > 0) {
                drop(r, round, a->member, why);
                agg_update_free(&r->u[r->n]);
                continue;
            }
        }
        r->tokens += r->u[r->n].tokens;
        r->examples += r->u[r->n].examples;
        r->bytes += a->size;
        r->n++;
        if (crash) agg_crash_point(crash, "aggregate");
    }
    if (r->n > 0 && r->n >= quorum) {
        if (pol->weights(pol->arg, r->u, r->n, r->w) < 0 ||
            pol->merge(pol->arg, m, r->start, r->u, r->n, r->w, &r->change) < 0)
            goto done;
        r->merged = 1;
    }
    rc = 0;
done:
    agg_norms_free(norms);
    free(order);
    if (rc < 0) agg_result_free(r);
    return rc;
}

/* 0 when every value of the version written in dir is finite, 1 (why
 * names the first that is not) when one is not, -1 failure. The version is
 * mapped, not loaded: its pages are read once, a tensor at a time. */
static int version_finite(const char *dir, char why[AGG_WHY_MAX]) {
    model *m;
    if (checkpoint_map(&m, dir, MODEL_PRECISION_FP32) < 0)
        return err_context("reading back the version written in %s", dir);
    int rc = agg_model_finite(m, why);
    model_free(m);
    return rc;
}

/* A closed round that publishes nothing (status: why): its metrics name
 * the rejections only, and the round fails. */
static int unmerged(agg *a, round_result *r, const char *why, uint64_t now, double aggregate_s) {
    double open_t = (double)(a->deadline - a->cfg.deadline_s);
    int kept = r->n;
    r->n = 0; /* nothing was merged: the metrics list the rejections only */
    int f = agg_metrics_round(a, why, NULL, r, (double)now - open_t, aggregate_s, 0);
    r->n = kept;
    agg_result_free(r);
    if (f < 0) return -1;
    return agg_fail_round(a, why, now);
}

int agg_aggregate_and_publish(agg *a, uint64_t now) {
    const accept_rec **acc;
    int n;
    if (agg_round_accepts(a, a->round, &acc, &n) < 0) return -1;
    double t0 = clock_now_s();
    round_result r;
    noise_source *noise = NULL;
    int rc = agg_ensure_model(a, a->base);
    if (rc == 0 && agg_dp_on(&a->cfg)) rc = agg_round_noise(&a->cfg, a->round, 1, &noise);
    /* The members as they were when the round closed (the journal says
     * which version), so a restart, or a roster change since, merges the
     * same deltas. */
    agg_roster *closed = NULL;
    if (rc == 0) rc = agg_roster_at(a->roster, a->close_roster, &closed);
    if (rc == 0) {
        a->hooks.info = (aggregate_round_info){a->round, agg_roster_count(closed)};
        a->hooks.noise = noise;
        rc = agg_aggregate(&a->cfg, closed, &a->keys, a->policy, a->model, a->base, a->round,
                           (int)a->cfg.quorum, acc, n, &r, a);
        a->hooks.noise = NULL;
    }
    agg_roster_free(closed);
    free(acc);
    if (rc < 0) {
        noise_free(noise);
        return -1;
    }
    double t1 = clock_now_s(), open_t = (double)(a->deadline - a->cfg.deadline_s);
    if (!r.merged) {
        noise_free(noise);
        /* The policy rejected so many that the quorum is no longer met. */
        return unmerged(a, &r, r.n ? "below-quorum-after-validation" : "no-valid-delta", now,
                        t1 - t0);
    }
    /* The next round's start (merge.start "global"), named before the
     * publish record like the version and its update. */
    if (agg_start_publish_next(&a->cfg, a->model, a->round, r.start, r.u, r.n, r.w, &r.change) <
        0) {
        noise_free(noise);
        agg_result_free(&r);
        return -1;
    }
    char name[64], hex[STORE_HEX_LEN + 1];
    snprintf(name, sizeof name, "r%llu", (unsigned long long)a->round);
    uint8_t v[32], uh[32] = {0};
    uint64_t usize = 0;
    /* The version, written a tensor at a time from the mapped base (a dense
     * change draws its DP noise as it goes), then its update as an object:
     * both in the store before the publish record names them. */
    char tmp[AGG_PATH_MAX];
    rc = snprintf(tmp, sizeof tmp, "%s/tmp/%s", a->cfg.state, name) >= (int)sizeof tmp
             ? err_set("state path %s is too long", a->cfg.state)
             : agg_write_version(a->model, a->base, &r.change, tmp);
    noise_free(noise);
    /* The base's pages were given back as they were written: forget it. */
    model_free(a->model);
    a->model = NULL;
    /* Nothing that is not a number is ever published: the version as
     * written, mapped and read once more (issue 17, case 1). */
    int fin = rc < 0 ? -1 : version_finite(tmp, r.nonfinite);
    if (fin > 0) {
        agg_say("round %llu: %s", (unsigned long long)a->round, r.nonfinite);
        if (fio_remove_tree(tmp) < 0) {
            agg_result_free(&r);
            return -1;
        }
        return unmerged(a, &r, "non-finite-merge", now, clock_now_s() - t0);
    }
    if (fin < 0) rc = -1;
    update *f = r.change.factors;
    agg_card card = {.a = a, .round = a->round, .parent = a->base, .r = &r};
    if (rc < 0 || agg_publish_dir(&card, name, v) < 0 ||
        (f && publish_update(&a->cfg, f, a->round, a->base, v, uh, &usize) < 0)) {
        agg_result_free(&r);
        return err_context("round %llu: publishing", (unsigned long long)a->round);
    }
    /* Hashed as they were stored: served without hashing them again. */
    if (agg_mark_verified(a, v) < 0 || (f && agg_mark_verified(a, uh) < 0)) {
        agg_result_free(&r);
        return -1;
    }
    agg_crash_point(a, "publish");
    double t2 = clock_now_s();
    char uhex[STORE_HEX_LEN + 1];
    hex_encode(v, 32, hex);
    hex_encode(uh, 32, uhex);
    unsigned long long rn = (unsigned long long)a->round;
    journal_record pr = {
        .kind = JOURNAL_PUBLISH, .round = a->round, .has_update = f != NULL, .update_size = usize};
    memcpy(pr.hash, v, 32);
    memcpy(pr.update_hash, uh, 32);
    if (agg_metrics_round(a, "published", v, &r, (double)now - open_t, t1 - t0, t2 - t1) < 0 ||
        agg_commit(a, &pr) < 0 || store_set_latest(a->cfg.state, v) < 0 ||
        agg_eval_queue(a, a->round, v) < 0) {
        agg_result_free(&r);
        return -1;
    }
    if (a->has_update)
        agg_say("round %llu: low-rank update %.16s... of %llu bytes (%d weights, rank %d) makes "
                "this version from the round's base",
                rn, uhex, (unsigned long long)usize, f->n_modules, f->modules[0].rank);
    if (agg_dp_on(&a->cfg)) {
        const policy *pol = &a->cfg.policy;
        if (dp_accountant_add(&a->dp, pol->rounds.fraction, pol->dp.noise_multiplier, 1) < 0 ||
            agg_forget_key(&a->cfg, a->round) < 0) {
            agg_result_free(&r);
            return -1;
        }
        agg_say("round %llu: DP epsilon %.4g this round, %.4g over %llu round(s) at delta %g "
                "(budget %g)",
                (unsigned long long)a->round,
                dp_epsilon_for(pol->rounds.fraction, pol->dp.noise_multiplier, 1, pol->dp.delta),
                dp_epsilon(&a->dp, pol->dp.delta, NULL), (unsigned long long)a->published,
                pol->dp.delta, pol->dp.epsilon_budget);
    }
    agg_say("round %llu published version %.16s... from %d delta(s) (%d dropped, %llu tokens): "
            "aggregate %.2f s, publish %.2f s",
            (unsigned long long)a->round, hex, r.n, r.ndrop, (unsigned long long)r.tokens, t1 - t0,
            t2 - t1);
    agg_result_free(&r);
    return 0;
}
