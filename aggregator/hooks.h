/* hooks — the consortium's policy file (policies/) behind the aggregator's
 * agg_policy seam (merge.h).
 *
 * With a policy file (config "policy"), a round's accepted updates go
 * through the policies library exactly as docs/policies.md ("For the
 * aggregator: calling the library") describes:
 *
 *   validate  the update adapts exactly the modules the round's targets
 *             resolve to, counts (tokens or examples, as weighted) > 0,
 *             then validate_check: rank <= validation.max_rank (or the
 *             round's rank), finite values, ‖Σ s·B·A‖_F <= max_norm;
 *   weights   weights_compute (p_i, capped) or, with DP, w_i / E: the
 *             coefficients the library will use, for the metrics;
 *   merge     aggregate_prepare: clipping, the robust rule (mean, median,
 *             trimmed mean, multi-Krum), DP-FedAvg's noise, and the merge
 *             mode (exact, fedit, svd). A low-rank result
 *             (policies/aggregate.h: the mean or multi-Krum without DP,
 *             fedit, svd) comes back as its update, from which the
 *             aggregator writes and publishes the version as it does the
 *             default policy's; a dense one (median, trimmed mean, DP
 *             noise) is added module by module to the weights as the new
 *             version is written (aggregate_dense_apply).
 *
 * Base-version, shape and finiteness checks of the submitted tensors stay in
 * agg_update_build, which every update passes first. The aggregator sets the
 * round's info and (DP) noise source before each aggregation; the report of
 * the last merge stays here for the round's metrics line. */
#ifndef FL_AGGREGATOR_HOOKS_H
#define FL_AGGREGATOR_HOOKS_H

#include "aggregator/merge.h"
#include "policies/aggregate.h"
#include "policies/noise.h"
#include "policies/policy.h"
#include "wire/msg.h"

typedef struct {
    agg_policy hooks; /* hooks.arg points at this struct */
    const policy *pol;
    const struct msg_train *train; /* the round's targets and rank */
    /* Set by the aggregator before each round's aggregation: */
    aggregate_round_info info;
    noise_source *noise; /* DP: the round's noise source, else NULL */
    /* Filled by the last merge (K members in name order); rep.K == 0 before. */
    aggregate_report rep;
    /* A dense merge's pending change, applied as the version is written, and
     * the members it reads (their sets are the round's updates'). */
    aggregate_dense *dense;
    aggregate_member *members;
} agg_hooks;

/* pol and train are borrowed and must outlive h. */
void agg_hooks_init(agg_hooks *h, const policy *pol, const struct msg_train *train);
void agg_hooks_free(agg_hooks *h);

#endif
