/* weights — how much each member counts in a round.
 *
 * p_i = n_i / Σ_j n_j with n_i the member's training tokens, examples, or 1
 * (policy weighting.by), then the per-member cap: no p_i above `cap`, the
 * excess spread over the others in proportion to their n_i, repeated until
 * no member exceeds the cap (water-filling: members at the cap are fixed at
 * it, the rest share 1 − (fixed)·cap in proportion to n_i; each pass fixes
 * at least one more member, so at most K passes). This is the unique vector
 * with Σ p = 1, p_i <= cap that is proportional to n on the uncapped members.
 *
 * With DP (policy dp.enabled) the weights are not normalised at all: member
 * i gets w_i = 1 (equal) or min(n_i / saturation, 1), and the sum is divided
 * by the fixed expected total weight (McMahan et al. 2018), see dp_weights. */
#ifndef FL_POLICIES_WEIGHTS_H
#define FL_POLICIES_WEIGHTS_H

#include "policies/policy.h"

#include <stdint.h>

/* p (K) from tokens and examples (K each; either may be NULL when the
 * policy does not use it). Every counted n_i must be > 0. Fails when
 * K·cap < 1 (the cap cannot be met). */
int weights_compute(const policy *pol, int K, const uint64_t *tokens, const uint64_t *examples,
                    double *p);

/* The cap alone: p (K, positive raw weights in, normalised capped weights out). */
int weights_cap(int K, double *p, double cap);

/* DP-FedAvg's per-member weights w_i in [0, 1] (not normalised). */
int dp_weights(const policy *pol, int K, const uint64_t *tokens, const uint64_t *examples,
               double *w);

#endif
