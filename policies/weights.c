/* weights.c — per-member weights and the cap (weights.h). */
#include "policies/weights.h"

#include "util/err.h"

#include <math.h>
#include <stdlib.h>

int weights_cap(int K, double *p, double cap) {
    if (K < 1) return err_set("weights: no members");
    if (!(cap > 0 && cap <= 1)) return err_set("weights: cap must be in (0, 1], got %g", cap);
    if (K * cap < 1 - 1e-12)
        return err_set("weights: cap %g cannot be met by %d members (needs at least %.0f)", cap, K,
                       ceil(1 / cap - 1e-12));
    char *fixed = calloc((size_t)K, 1);
    if (!fixed) return err_set("weights: out of memory");
    double *raw = malloc((size_t)K * sizeof *raw);
    if (!raw) {
        free(fixed);
        return err_set("weights: out of memory");
    }
    for (int i = 0; i < K; i++) {
        if (!(isfinite(p[i]) && p[i] > 0)) {
            free(fixed);
            free(raw);
            return err_set("weights: member %d has weight %g; weights must be > 0", i, p[i]);
        }
        raw[i] = p[i];
    }
    int n_fixed = 0;
    for (;;) {
        /* The free members share what the capped ones leave, in proportion to n_i. */
        double left = 1.0 - n_fixed * cap, sum = 0;
        for (int i = 0; i < K; i++)
            if (!fixed[i]) sum += raw[i];
        int changed = 0;
        for (int i = 0; i < K; i++) {
            if (fixed[i]) continue;
            p[i] = left * raw[i] / sum;
            if (p[i] > cap * (1 + 1e-12)) {
                fixed[i] = 1;
                n_fixed++;
                changed = 1;
            }
        }
        if (!changed || n_fixed == K) break;
    }
    for (int i = 0; i < K; i++)
        if (fixed[i]) p[i] = cap;
    free(fixed);
    free(raw);
    return 0;
}

static int raw_count(const policy *pol, int i, const uint64_t *tokens, const uint64_t *examples,
                     double *n) {
    switch (pol->weighting.by) {
        case POLICY_WEIGHT_EQUAL:
            *n = 1;
            return 0;
        case POLICY_WEIGHT_TOKENS:
            if (!tokens) return err_set("weights: weighting by tokens, but no token counts given");
            *n = (double)tokens[i];
            break;
        case POLICY_WEIGHT_EXAMPLES:
            if (!examples)
                return err_set("weights: weighting by examples, but no example counts given");
            *n = (double)examples[i];
            break;
    }
    if (*n <= 0)
        return err_set("weights: member %d reports 0 %s; it cannot be weighted by them", i,
                       policy_weight_name(pol->weighting.by));
    return 0;
}

int weights_compute(const policy *pol, int K, const uint64_t *tokens, const uint64_t *examples,
                    double *p) {
    for (int i = 0; i < K; i++)
        if (raw_count(pol, i, tokens, examples, &p[i]) != 0) return -1;
    return weights_cap(K, p, pol->weighting.cap);
}

int dp_weights(const policy *pol, int K, const uint64_t *tokens, const uint64_t *examples,
               double *w) {
    for (int i = 0; i < K; i++) {
        if (raw_count(pol, i, tokens, examples, &w[i]) != 0) return -1;
        if (pol->weighting.by != POLICY_WEIGHT_EQUAL) {
            if (!(pol->dp.weight_saturation > 0))
                return err_set("dp weights: dp.weight_saturation must be > 0");
            w[i] = fmin(w[i] / pol->dp.weight_saturation, 1.0);
        }
    }
    return 0;
}
