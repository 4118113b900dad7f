/* handout — round start adapters in the aggregator (handout.h). */
#include "aggregator/handout.h"

#include "aggregator/state.h"
#include "aggregator/store.h"
#include "lora/peft.h"
#include "model/safetensors.h"
#include "policies/handout.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"
#include "wire/version.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

policy_start agg_start_mode(const agg_config *c) {
    if (c->has_policy) return policy_start_of(&c->policy);
    return POLICY_START_DEFAULT_EXACT;
}

uint64_t agg_start_seed(const uint8_t consortium[32], uint64_t round) {
    static const char label[] = "fedlora-start-v1";
    uint8_t msg[sizeof label - 1 + 32 + 8], h[32];
    memcpy(msg, label, sizeof label - 1);
    memcpy(msg + sizeof label - 1, consortium, 32);
    for (int i = 0; i < 8; i++) msg[sizeof label - 1 + 32 + i] = (uint8_t)(round >> (56 - 8 * i));
    uint64_t seed = 0;
    if (crypto_sha256(msg, sizeof msg, h) != 0) return round; /* cannot fail for a buffer */
    for (int i = 7; i >= 0; i--) seed = seed << 8 | h[i];
    return seed;
}

int agg_start_config(const agg_config *c, uint64_t seed, lora_config *cfg) {
    char targets[MSG_TARGETS_MAX * (MSG_TARGET_MAX + 1) + 1] = "";
    for (uint32_t i = 0; i < c->train.ntargets; i++) {
        if (i) strcat(targets, ",");
        strcat(targets, c->train.targets[i]);
    }
    lora_config_init(cfg);
    cfg->rank = (int)c->train.rank;
    cfg->alpha = c->train.alpha;
    cfg->seed = seed;
    if (lora_config_set_targets(cfg, targets) != 0) {
        lora_config_free(cfg);
        return err_context("the round's targets %s", targets);
    }
    return 0;
}

static int pointer_path(const agg_config *c, uint64_t round, char *out, size_t n) {
    if (snprintf(out, n, "%s/starts/r%llu", c->state, (unsigned long long)round) >= (int)n)
        return err_set("state path %s is too long", c->state);
    return 0;
}

/* Writes s as an object into the store (via STATE/tmp): its hash and size. */
static int put_adapter(const agg_config *c, const lora_set *s, const char *name, uint8_t hash[32],
                       uint64_t *size) {
    char tmp[AGG_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s/tmp/%s", c->state, name) >= (int)sizeof tmp)
        return err_set("state path %s is too long", c->state);
    if (peft_save_weights(s, tmp) != 0 || store_put_object(c->state, tmp, hash, size) != 0)
        return err_context("storing the start adapter %s", name);
    return 0;
}

/* The fresh adapter of round's seed, into the store. */
static int fresh_start(const agg_config *c, const model *m, uint64_t round, agg_start *info,
                       lora_set **out) {
    lora_config cfg;
    lora_set *s = NULL;
    info->from_seed = 1;
    info->seed = agg_start_seed(c->consortium, round);
    if (agg_start_config(c, info->seed, &cfg) != 0) return -1;
    int rc = lora_create(&s, m, &cfg);
    lora_config_free(&cfg);
    char name[64];
    snprintf(name, sizeof name, "start-r%llu.safetensors", (unsigned long long)round);
    if (rc == 0) rc = put_adapter(c, s, name, info->hash, &info->size);
    if (rc == 0 && out)
        *out = s;
    else
        lora_free(s);
    return rc;
}

/* The continued start named by STATE/starts/r<k>, the newest k <= round
 * (k >= 2); 0 found, 1 none. */
static int named_start(const agg_config *c, const model *m, uint64_t round, agg_start *info,
                       lora_set **out) {
    char path[AGG_PATH_MAX], obj[AGG_PATH_MAX];
    uint64_t k = round;
    for (; k >= 2; k--) {
        if (pointer_path(c, k, path, sizeof path) != 0) return -1;
        if (fio_exists(path)) break;
    }
    if (k < 2) return 1;
    char *text;
    size_t len;
    if (fio_read_all(path, 256, &text, &len) != 0) return -1;
    char hex[STORE_HEX_LEN + 1] = "";
    if (len >= STORE_HEX_LEN) memcpy(hex, text, STORE_HEX_LEN);
    free(text);
    int bad = hex_decode(hex, info->hash, 32) != 0;
    if (bad)
        return err_set("%s: want the start adapter's SHA-256 in hex; the state directory was "
                       "damaged",
                       path);
    struct stat st;
    if (store_object_path(c->state, info->hash, obj, sizeof obj) != 0) return -1;
    if (stat(obj, &st) != 0)
        return err_errno("round %llu's start adapter %s (named by %s)", (unsigned long long)round,
                         obj, path);
    info->size = (uint64_t)st.st_size;
    info->from_seed = 0;
    if (!out) return 0;
    lora_config cfg;
    lora_set *s = NULL;
    safetensors_file *f = NULL;
    if (agg_start_config(c, 0, &cfg) != 0) return -1;
    int rc = lora_create(&s, m, &cfg);
    lora_config_free(&cfg);
    if (rc == 0) rc = safetensors_open(&f, obj) == 0 && peft_load_weights(s, f, obj) == 0 ? 0 : -1;
    safetensors_close(f);
    if (rc != 0) {
        lora_free(s);
        return err_context("round %llu's start adapter", (unsigned long long)round);
    }
    *out = s;
    return 0;
}

int agg_start_of(const agg_config *c, const model *m, uint64_t round, agg_start *info,
                 lora_set **set) {
    memset(info, 0, sizeof *info);
    info->round = round;
    if (set) *set = NULL;
    policy_start mode = agg_start_mode(c);
    if (mode == POLICY_START_OWN) return 0;
    info->has = 1;
    if (mode == POLICY_START_GLOBAL) {
        int k = named_start(c, m, round, info, set);
        if (k <= 0) return k;
        /* No round published a start yet: round 1's fresh one. */
        return fresh_start(c, m, 1, info, set);
    }
    return fresh_start(c, m, round, info, set);
}

int agg_start_check(const agg_start *info, const agg_update *u, char why[AGG_WHY_MAX]) {
    if (!info->has) return 0;
    if (!u->has_start) {
        snprintf(why, AGG_WHY_MAX,
                 "start: %s trained from an adapter of its own, the round handed out one (the "
                 "node predates start adapters: update it)",
                 u->member);
        return 1;
    }
    if (memcmp(u->start, info->hash, 32) != 0) {
        char got[STORE_HEX_LEN + 1], want[STORE_HEX_LEN + 1];
        hex_encode(u->start, 32, got);
        hex_encode(info->hash, 32, want);
        snprintf(why, AGG_WHY_MAX,
                 "start: %s trained from start adapter %.16s..., the round's is %.16s...",
                 u->member, got, want);
        return 1;
    }
    return 0;
}

int agg_start_publish_next(const agg_config *c, const model *m, uint64_t round,
                           const lora_set *start, const agg_update *u, int n, const double *w,
                           const agg_change *change) {
    if (agg_start_mode(c) != POLICY_START_GLOBAL) return 0;
    if (!start)
        return err_set("round %llu has no start adapter to continue", (unsigned long long)round);
    policy defaults;
    policy_defaults(&defaults);
    const policy *pol = c->has_policy ? &c->policy : &defaults;
    aggregate_member *mb = calloc((size_t)(n ? n : 1), sizeof *mb);
    lora_set *fresh = NULL, *next = NULL;
    lora_config cfg;
    int rc = mb ? 0 : err_set("out of memory");
    for (int i = 0; rc == 0 && i < n; i++)
        mb[i] = (aggregate_member){u[i].member, u[i].set, u[i].tokens, u[i].examples};
    if (rc == 0 &&
        (rc = agg_start_config(c, agg_start_seed(c->consortium, round + 1), &cfg)) == 0) {
        rc = lora_create(&fresh, m, &cfg);
        lora_config_free(&cfg);
    }
    if (rc == 0) rc = handout_next(pol, m, start, mb, w, n, change->factors, fresh, round, &next);
    char name[64], path[AGG_PATH_MAX], dir[AGG_PATH_MAX], line[STORE_HEX_LEN + 2];
    uint8_t hash[32];
    uint64_t size;
    snprintf(name, sizeof name, "start-r%llu.safetensors", (unsigned long long)round + 1);
    if (rc == 0) rc = put_adapter(c, next, name, hash, &size);
    if (rc == 0 && (snprintf(dir, sizeof dir, "%s/starts", c->state) >= (int)sizeof dir ||
                    pointer_path(c, round + 1, path, sizeof path) != 0))
        rc = err_set("state path %s is too long", c->state);
    if (rc == 0) {
        hex_encode(hash, 32, line);
        line[STORE_HEX_LEN] = '\n';
        line[STORE_HEX_LEN + 1] = '\0';
        rc =
            fio_mkdirs(dir, 0700) == 0 && fio_write_atomic(path, line, STORE_HEX_LEN + 1, 0644) == 0
                ? 0
                : -1;
    }
    free(mb);
    lora_free(fresh);
    lora_free(next);
    return rc == 0 ? 0
                   : err_context("round %llu: the next round's start adapter",
                                 (unsigned long long)round);
}

/* The bytes a full download of the version `hash` moves: its one
 * model.safetensors, or its shards summed (the index's fedlora_shards).
 * 0 when it cannot be told; ROUND then carries no base_size. */
static uint64_t version_bytes(const char *state, const uint8_t hash[32]) {
    char path[AGG_PATH_MAX];
    struct stat st;
    if (store_is_sharded(state, hash) == 1) {
        version_index *x = NULL;
        uint64_t bytes = store_version_index(state, hash, &x) == 0 && x ? x->bytes : 0;
        version_index_free(x);
        return bytes;
    }
    if (store_model_path(state, hash, path, sizeof path) == 0 && stat(path, &st) == 0 &&
        st.st_size > 0)
        return (uint64_t)st.st_size;
    return 0;
}

int agg_start_round_fields(agg *a, struct msg_round *r) {
    uint64_t bytes = version_bytes(a->cfg.state, a->base);
    r->has_base_size = bytes > 0 && bytes <= MSG_BASE_SIZE_MAX;
    r->base_size = bytes;
    agg_start *cache = &a->start;
    if (cache->round != a->round) {
        /* The start's adapter is made on the round's base (its shapes). */
        int own = agg_start_mode(&a->cfg) == POLICY_START_OWN;
        if ((!own && agg_ensure_model(a, a->base) != 0) ||
            agg_start_of(&a->cfg, a->model, a->round, cache, NULL) != 0) {
            cache->round = 0;
            return err_context("round %llu's start adapter", (unsigned long long)a->round);
        }
    }
    r->has_start = cache->has;
    memcpy(r->start_hash, cache->hash, 32);
    r->start_size = cache->size;
    r->has_start_seed = cache->has && cache->from_seed;
    r->start_seed = cache->seed;
    return 0;
}
