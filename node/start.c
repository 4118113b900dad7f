/* node start: the adapter a round's training starts from, when the ROUND
 * hands one out (docs/protocol.md, "Start adapters"; aggregator/handout.h
 * is the other side).
 *
 * The start G = (A0, B0) is a PEFT adapter_model.safetensors at the round's
 * rank, alpha and targets, named by its SHA-256 (start_hash). A fresh one
 * (start_seed) is made here with lora_create from the seed, as the
 * aggregator made it; any other is fetched with GET_MODEL like a model
 * version. Either way the bytes must hash to start_hash, or nothing is
 * trained: a member that trained another start would send an update the
 * aggregator reads wrongly (it drops such a delta).
 *
 * Training from G on the round's base W would start from W + s·B0·A0, the
 * consortium's adapter counted twice (W already holds it). So the adapted
 * weights are offset first, W − s·B0·A0 (lora/offset.h): the trained model
 * starts at W (to rounding) and ends at W + s·(B_i A_i − B0 A0), the update
 * the aggregator merges. The offset weights are held as fp32 copies for the
 * round's training: the adapted weights' size in fp32 on top of the mapped
 * base. A start with B0 = 0 (a fresh one) needs no offset. */
#include "node/internal.h"

#include "lora/peft.h"
#include "lora/offset.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The round's adapter config (as the aggregator's agg_start_config). */
static int start_config(const struct msg_round *r, uint64_t seed, lora_config *cfg) {
    char targets[MSG_TARGETS_MAX * (MSG_TARGET_MAX + 1) + 1] = "";
    for (uint32_t i = 0; i < r->train.ntargets; i++) {
        if (i) strcat(targets, ",");
        strcat(targets, r->train.targets[i]);
    }
    lora_config_init(cfg);
    cfg->rank = (int)r->train.rank;
    cfg->alpha = r->train.alpha;
    cfg->seed = seed;
    return lora_config_set_targets(cfg, targets);
}

/* 1 when the file at path hashes to want, 0 when not (or missing). */
static int hashes_to(const char *path, const uint8_t want[MSG_HASH_LEN]) {
    uint8_t got[MSG_HASH_LEN];
    if (!fio_exists(path) || crypto_sha256_file(path, got, NULL) != 0) return 0;
    return memcmp(got, want, MSG_HASH_LEN) == 0;
}

/* The fresh adapter of start_seed, written to path: 1 when its bytes are
 * the round's start, 0 when they are not (path removed), -1 error. */
static int make_fresh(const struct msg_round *r, const model *m, const char *path) {
    lora_config cfg;
    lora_set *g = NULL;
    int rc = start_config(r, r->start_seed, &cfg) == 0 && lora_create(&g, m, &cfg) == 0 &&
                     peft_save_weights(g, path) == 0
                 ? 0
                 : -1;
    lora_config_free(&cfg);
    lora_free(g);
    if (rc != 0) return err_context("making the round's start adapter from its seed");
    if (hashes_to(path, r->start_hash)) return 1;
    if (unlink(path) != 0) return err_errno("cannot remove %s", path);
    return 0;
}

/* Fetches the start object into path (through path.part), hash checked. */
static int fetch(node_ctx *n, const struct msg_round *r, const char *path) {
    char part[NODE_PATH_MAX];
    if (snprintf(part, sizeof part, "%s.part", path) >= (int)sizeof part)
        return err_set("path %s is too long", path);
    char what[64];
    snprintf(what, sizeof what, "round %llu's start adapter", (unsigned long long)r->round);
    int k = node_fetch_object(n, r->start_hash, part, r->start_size, what);
    if (k != 0) return k;
    if (rename(part, path) != 0) return err_errno("cannot rename %s to %s", part, path);
    return fio_fsync_dir_of(path);
}

/* STATE/rounds/<r>/start.safetensors */
static int start_path(const node_ctx *n, uint64_t round, char *path) {
    char dir[NODE_PATH_MAX];
    if (node_path(n, path, "rounds/%llu/start.safetensors", (unsigned long long)round) != 0 ||
        fio_dirname(dir, sizeof dir, path) != 0 || fio_mkdirs(dir, 0755) != 0)
        return -1;
    return 0;
}

int node_start_fetch(node_ctx *n, const struct msg_round *r) {
    if (!r->has_start) return 0;
    char path[NODE_PATH_MAX], vdir[NODE_PATH_MAX], hex[2 * MSG_HASH_LEN + 1];
    hex_encode(r->start_hash, MSG_HASH_LEN, hex);
    if (start_path(n, r->round, path) != 0) return -1;
    if (hashes_to(path, r->start_hash)) return 0;
    if (r->has_start_seed) {
        /* The round's base, mapped: lora_create needs its shapes only. */
        model *m = NULL;
        int made = node_version_dir(n, r->base, vdir) == 0 &&
                           checkpoint_map(&m, vdir, MODEL_PRECISION_FP32) == 0
                       ? make_fresh(r, m, path)
                       : -1;
        model_free(m);
        if (made < 0)
            return err_context("round %llu's start adapter", (unsigned long long)r->round);
        if (made) return 0;
        node_log(n,
                 "round %llu: the adapter made from start_seed does not hash to the round's "
                 "start %.16s…; fetching it",
                 (unsigned long long)r->round, hex);
    }
    return fetch(n, r, path);
}

int node_start_apply(node_ctx *n, const struct msg_round *r, model *m, lora_set *s) {
    if (!r->has_start) return 0;
    unsigned long long rn = (unsigned long long)r->round;
    char path[NODE_PATH_MAX], hex[2 * MSG_HASH_LEN + 1];
    hex_encode(r->start_hash, MSG_HASH_LEN, hex);
    if (start_path(n, r->round, path) != 0) return -1;
    if (!hashes_to(path, r->start_hash))
        return err_set("round %llu's start adapter %s is missing or damaged (it must hash to "
                       "%.16s…)",
                       rn, path, hex);
    lora_config cfg;
    lora_set *g = NULL;
    safetensors_file *f = NULL;
    int rc = -1;
    if (start_config(r, 0, &cfg) != 0 || lora_create(&g, m, &cfg) != 0 ||
        safetensors_open(&f, path) != 0 || peft_load_weights(g, f, path) != 0)
        goto done;
    for (int i = 0; i < g->n_modules; i++) {
        const lora_module *gm = &g->modules[i];
        for (int k = 0; k < 2; k++) {
            const model_param *p = k ? &gm->B : &gm->A;
            for (int64_t j = 0; j < p->numel; j++)
                if (!isfinite(p->data[j])) {
                    err_set("%s: %s holds a value that is not finite", path, p->name);
                    goto done;
                }
        }
    }
    if (lora_copy_values(s, g) != 0 || lora_offset_base(m, g) != 0) goto done;
    node_log(n, "round %llu: training starts from the round's adapter %.16s… (%s)", rn, hex,
             r->has_start_seed ? "fresh, from its seed" : "continued");
    rc = 0;
done:
    if (rc != 0) err_context("round %llu's start adapter", rn);
    safetensors_close(f);
    lora_free(g);
    lora_config_free(&cfg);
    return rc;
}
