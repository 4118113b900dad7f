/* recompute — agg_recompute (agg.h): a round re-derived offline from the
 * state directory, through the same replay and the same aggregation as the
 * live aggregator. */
#include "aggregator/state.h"

#include "model/checkpoint.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The replay, and what it notes about the wanted round on the way: its base
 * (as its open record says) and the roster in force when it closed. */
typedef struct {
    agg *a;
    uint64_t round;
    uint8_t base[32];
    int found;
    uint64_t roster;
} wanted;

static int replay_noting(void *arg, const char *text, size_t line) {
    wanted *w = arg;
    journal_record r;
    (void)line;
    if (journal_record_decode(text, &r) < 0 || agg_apply(w->a, &r) < 0) return -1;
    if (r.kind == JOURNAL_OPEN && r.round == w->round) {
        memcpy(w->base, w->a->base, 32);
        w->found = 1;
    }
    if (r.kind == JOURNAL_CLOSE && r.round == w->round) w->roster = w->a->close_roster;
    return 0;
}

int agg_recompute(const agg_config *c, uint64_t round, const char *out_dir, uint8_t hash[32]) {
    agg *a = calloc(1, sizeof *a);
    if (!a) return err_set("out of memory");
    a->cfg = *c;
    a->lock_fd = -1;
    int rc = -1;
    const accept_rec **acc = NULL;
    model *m = NULL;
    round_result r = {0};
    char p[AGG_PATH_MAX];
    wanted w = {.a = a, .round = round};
    if (keys_load_secret(c->keys_dir, c->keys_name, &a->keys) < 0 ||
        agg_roster_load(&a->roster, c, 1) < 0 || agg_state_path(a, "journal", p, sizeof p) < 0 ||
        journal_open(NULL, p, 1, replay_noting, &w) < 0)
        goto done;
    agg_roster *closed;
    if (agg_roster_at(a->roster, w.roster, &closed) < 0) goto done;
    agg_roster_free(a->roster);
    a->roster = closed;
    /* The whole journal was replayed (read-only): the round's accepts are in
     * a->acc, its base was noted when its open record went by. */
    if (!w.found || round < 1 || round > a->round ||
        (round == a->round && (a->state == AGG_OPEN || a->state == AGG_COLLECTING))) {
        err_set("round %llu was not closed in %s (the journal reaches round %llu, %s)",
                (unsigned long long)round, c->state, (unsigned long long)a->round,
                agg_state_name(a->state));
        goto done;
    }
    int n;
    const agg_policy *pol = agg_policy_default();
    if (c->has_policy) {
        agg_hooks_init(&a->hooks, &c->policy, &c->train);
        a->hooks.info = (aggregate_round_info){round, agg_roster_count(a->roster)};
        pol = &a->hooks.hooks;
        if (agg_dp_on(c) && agg_round_noise(c, round, 0, &a->hooks.noise) < 0) goto done;
    }
    if (agg_round_accepts(a, round, &acc, &n) < 0) goto done;
    if (agg_load_version(c, w.base, &m) < 0) goto done;
    if (agg_aggregate(c, a->roster, &a->keys, pol, m, w.base, round, (int)c->quorum, acc, n, &r,
                      NULL) < 0)
        goto done;
    if (!r.merged) {
        err_set("round %llu merged no delta (too many were dropped): it published no version",
                (unsigned long long)round);
        goto done;
    }
    if (agg_write_version(m, w.base, &r.change, out_dir) < 0 || version_seal(out_dir, hash) < 0)
        goto done;
    rc = 0;
done:
    agg_result_free(&r);
    free(acc);
    model_free(m);
    noise_free(a->hooks.noise);
    agg_hooks_free(&a->hooks);
    agg_roster_free(a->roster);
    keys_secret_wipe(&a->keys);
    free(a->acc);
    free(a);
    return rc;
}
