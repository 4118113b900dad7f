/* merge — from decoded DELTA payloads to the next model version.
 *
 * A member's update is checked against the round's base and turned into a
 * LoRA set on that base (agg_update_build): the payload's round and base
 * version must be the round's, its targets must resolve on the base, every
 * lora_A / lora_B tensor must have exactly the shape the base needs, and no
 * value may be NaN or infinite. Then the round's updates are combined by a
 * policy (agg_policy): validate each, weigh them, merge. The default policy
 * is the exact product merge (docs/architecture.md, "The exact merge"),
 *
 *   W' = W + Σ_i p_i · s_i · B_i · A_i,   p_i ∝ tokens_i (Σ p_i = 1),
 *
 * with each member's p_i capped at its max_weight (the excess goes to the
 * others in proportion to their tokens), as the factored update of
 * lora/update.h: B = [p_1 s_1 B_1 | …], A = [A_1; …]. A policy's merge only
 * says what the round changes: a low-rank change as such factors, which the
 * aggregator applies with update_apply (the portable kernel every node can
 * repeat bit for bit) and publishes for low-rank sync, or a dense change it
 * made to the base itself. Updates are always given in member name order and
 * every step is deterministic, so the same updates give the same bytes. A
 * policy file plugs the policies library's weighting, validation, robust
 * rules, merge modes and DP in through agg_policy (hooks.h). */
#ifndef FL_AGGREGATOR_MERGE_H
#define FL_AGGREGATOR_MERGE_H

#include "lora/lora.h"
#include "lora/update.h"
#include "wire/keys.h"
#include "wire/payload.h"

#include <stddef.h>

#define AGG_WHY_MAX 256

typedef struct {
    char member[KEYS_NAME_MAX + 1];
    double max_weight; /* (0, 1] */
    uint64_t tokens, examples;
    double loss_before, loss_after;
    uint32_t rank;
    int has_start;     /* the DELTA names the start adapter it trained from: */
    uint8_t start[32]; /* its SHA-256 (aggregator/handout.h) */
    lora_set *set;     /* on the round's base; values copied from the payload */
} agg_update;

/* Decodes payload (len bytes, a DELTA) for `member` and builds its update on
 * base (the round's model, whose version hash is base_hash). Returns 0 with
 * *u filled, 1 when the delta is refused (why says what, for the member and
 * the log), -1 on an internal failure (err_msg). */
int agg_update_build(const model *base, const uint8_t base_hash[32], uint64_t round,
                     const char *member, double max_weight, const void *payload, size_t len,
                     agg_update *u, char why[AGG_WHY_MAX]);
void agg_update_free(agg_update *u);

/* ‖W‖_F of a base version's linear weights, computed once per weight and
 * kept: what agg_update_bound measures members' updates against. */
typedef struct agg_norms agg_norms;
/* An empty cache for base version base_hash (*out NULL on failure). */
int agg_norms_new(agg_norms **out, const uint8_t base_hash[32]);
/* 1 when the cache is for base_hash. */
int agg_norms_for(const agg_norms *n, const uint8_t base_hash[32]);
void agg_norms_free(agg_norms *n);

/* The default bound on a member's influence (docs/policies.md, "Default
 * bounds"), with or without a policy file: every module's update, at the
 * member's own scale, may be at most max_ratio times the base weight it
 * changes, ‖s·B·A‖_F <= max_ratio · ‖W‖_F (validate_module_norm, in
 * double: a delta scaled by 1e30 is measured, not overflowed). max_ratio 0:
 * no bound. 0 within, 1 refused (why names the module and both norms), -1
 * failure. cache (may be NULL) holds the base's norms between calls. */
int agg_update_bound(const agg_update *u, const model *base, agg_norms *cache, double max_ratio,
                     char why[AGG_WHY_MAX]);
/* 0 when every value of every tensor of m is finite, 1 (why names the
 * first bad one) when one is NaN or infinite. A round's new version is
 * checked with it (mapped, as written) before it is published: a merge that
 * made such a value publishes nothing. */
int agg_model_finite(const model *m, char why[AGG_WHY_MAX]);

/* What a round changes in its base: a low-rank update (factors, the
 * exact merge and every policy whose change is a product B·A), or a dense
 * change that dense_apply adds to each weight it touches, in the model's
 * parameter order, as the new version is written (the coordinate rules and
 * DP noise). Either way the base itself is only read: the version is
 * written a tensor at a time (agg_write_version, publish.c). */
typedef struct {
    update *factors;
    int (*dense_touches)(void *ctx, const char *name);
    int (*dense_apply)(void *ctx, const char *name, real *W);
    void (*dense_free)(void *ctx);
    void *dense_ctx;
} agg_change;

void agg_change_free(agg_change *c);

/* The pluggable steps of a round's aggregation. Each gets the updates in
 * member name order. */
typedef struct agg_policy {
    /* 0 keep, 1 drop (why says why), -1 failure. NULL: keep all. */
    int (*validate)(void *arg, const model *base, const agg_update *u, char why[AGG_WHY_MAX]);
    /* w[i] >= 0 for each of n updates. */
    int (*weights)(void *arg, const agg_update *u, int n, double *w);
    /* The round's change to base from the updates and their weights w
     * (agg_change above); base is read only. start: the adapter every
     * member started from (aggregator/handout.h), or NULL: with B0 != 0 a
     * member's update is s·(B_i A_i − B0 A0) (policies/handout.h). */
    int (*merge)(void *arg, const model *base, const lora_set *start, const agg_update *u, int n,
                 const double *w, agg_change *out);
    void *arg;
} agg_policy;

/* The default policy described above. */
const agg_policy *agg_policy_default(void);

/* p_i ∝ tokens_i with caps max_weight_i, Σ p_i = 1 (when the caps allow:
 * if they sum to less than 1, each gets its cap). */
int agg_weights_tokens(void *arg, const agg_update *u, int n, double *w);
/* W' = W + Σ_i w_i s_i B_i A_i as its factored update (update_build): always
 * low rank. With a start whose B0 != 0, the start's set is added once with
 * coefficient −Σ_i w_i: W' = W + Σ_i w_i s (B_i A_i − B0 A0). */
int agg_merge_exact(void *arg, const model *base, const lora_set *start, const agg_update *u, int n,
                    const double *w, agg_change *out);

#endif
