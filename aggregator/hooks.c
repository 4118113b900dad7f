/* hooks — the policies library behind agg_policy. */
#include "aggregator/hooks.h"

#include "policies/validate.h"
#include "policies/weights.h"
#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The modules the round's targets resolve to on base, as a rank-1 set
 * (only its module paths are used). */
static int round_modules(const agg_hooks *h, const model *base, lora_set **out) {
    char targets[MSG_TARGETS_MAX * (MSG_TARGET_MAX + 1) + 1] = "";
    for (uint32_t i = 0; i < h->train->ntargets; i++) {
        if (i) strcat(targets, ",");
        strcat(targets, h->train->targets[i]);
    }
    lora_config cfg;
    lora_config_init(&cfg);
    cfg.rank = 1;
    int rc = lora_config_set_targets(&cfg, targets) < 0 || lora_create(out, base, &cfg) < 0
                 ? err_context("resolving the round's targets %s on the base", targets)
                 : 0;
    lora_config_free(&cfg);
    return rc;
}

static int hook_validate(void *arg, const model *base, const agg_update *u, char why[AGG_WHY_MAX]) {
    const agg_hooks *h = arg;
    lora_set *want;
    if (round_modules(h, base, &want) < 0) return -1;
    int bad = want->n_modules != u->set->n_modules;
    for (int i = 0; !bad && i < want->n_modules; i++)
        bad = strcmp(want->modules[i].path, u->set->modules[i].path) != 0;
    if (bad)
        snprintf(why, AGG_WHY_MAX,
                 "tensors: %s adapts %d modules, the round's targets resolve to %d (first: %s)",
                 u->member, u->set->n_modules, want->n_modules, want->modules[0].path);
    lora_free(want);
    if (bad) return 1;
    const policy *p = h->pol;
    int by_tokens = p->weighting.by == POLICY_WEIGHT_TOKENS,
        by_examples = p->weighting.by == POLICY_WEIGHT_EXAMPLES;
    if ((by_tokens && u->tokens == 0) || (by_examples && u->examples == 0)) {
        snprintf(why, AGG_WHY_MAX, "weight: %s reports 0 %s, and the policy weighs by them",
                 u->member, by_tokens ? "tokens" : "examples");
        return 1;
    }
    return validate_check(p, (int)h->train->rank, u->set, u->member, why, AGG_WHY_MAX);
}

static int counts(const agg_update *u, int n, uint64_t **tokens, uint64_t **examples) {
    *tokens = malloc((size_t)n * sizeof **tokens);
    *examples = malloc((size_t)n * sizeof **examples);
    if (!*tokens || !*examples) {
        free(*tokens), free(*examples);
        return err_set("out of memory weighing %d updates", n);
    }
    for (int i = 0; i < n; i++) (*tokens)[i] = u[i].tokens, (*examples)[i] = u[i].examples;
    return 0;
}

/* What aggregate_round's plan computes: p_i, or DP's w_i / E. */
static int hook_weights(void *arg, const agg_update *u, int n, double *w) {
    const agg_hooks *h = arg;
    const policy *p = h->pol;
    uint64_t *tokens, *examples;
    if (counts(u, n, &tokens, &examples) < 0) return -1;
    int rc;
    if (p->dp.enabled) {
        double E = p->dp.expected_weight > 0 ? p->dp.expected_weight
                                             : p->rounds.fraction * h->info.roster_size;
        rc = dp_weights(p, n, tokens, examples, w);
        for (int i = 0; rc == 0 && i < n; i++) w[i] /= E;
    } else {
        rc = weights_compute(p, n, tokens, examples, w);
    }
    free(tokens), free(examples);
    return rc;
}

/* A dense change's weights are the members' modules. */
static int dense_touches(void *ctx, const char *name) {
    const agg_hooks *h = ctx;
    const lora_set *s0 = h->members[0].set;
    size_t n = strlen(name);
    if (n <= 7 || strcmp(name + n - 7, ".weight") != 0) return 0;
    for (int i = 0; i < s0->n_modules; i++)
        if (strlen(s0->modules[i].path) == n - 7 && !strncmp(s0->modules[i].path, name, n - 7))
            return 1;
    return 0;
}

static int dense_apply(void *ctx, const char *name, real *W) {
    agg_hooks *h = ctx;
    return aggregate_dense_apply(h->dense, name, W);
}

static void dense_free(void *ctx) {
    agg_hooks *h = ctx;
    aggregate_dense_free(h->dense);
    h->dense = NULL;
}

/* w is what hook_weights gave; aggregate_prepare derives the same from the
 * members' counts (and zeroes those multi-Krum leaves out). A dense change
 * keeps the members (and the noise source) until the version is written. */
static int hook_merge(void *arg, const model *base, const lora_set *start, const agg_update *u,
                      int n, const double *w, agg_change *out) {
    agg_hooks *h = arg;
    h->info.start = start;
    (void)w;
    memset(out, 0, sizeof *out);
    aggregate_dense_free(h->dense);
    h->dense = NULL;
    free(h->members);
    h->members = malloc((size_t)n * sizeof *h->members);
    if (!h->members) return err_set("out of memory aggregating %d updates", n);
    for (int i = 0; i < n; i++)
        h->members[i] = (aggregate_member){u[i].member, u[i].set, u[i].tokens, u[i].examples};
    aggregate_report_free(&h->rep);
    int rc = aggregate_prepare(h->pol, base, h->members, n, &h->info, h->noise, NULL, &h->rep,
                               &out->factors, &h->dense);
    h->info.start = NULL; /* the caller's, for this merge only */
    if (rc != 0) return -1;
    if (h->dense) {
        out->dense_touches = dense_touches;
        out->dense_apply = dense_apply;
        out->dense_free = dense_free;
        out->dense_ctx = h;
    }
    return 0;
}

void agg_hooks_init(agg_hooks *h, const policy *pol, const struct msg_train *train) {
    memset(h, 0, sizeof *h);
    h->hooks = (agg_policy){hook_validate, hook_weights, hook_merge, h};
    h->pol = pol;
    h->train = train;
}

void agg_hooks_free(agg_hooks *h) {
    aggregate_report_free(&h->rep);
    aggregate_dense_free(h->dense);
    free(h->members);
}
