/* policy.c — defaults, consistency checks and round decisions (policy.h).
 * The libconfig reader is policy_file.c. */
#include "policies/policy.h"

#include "util/err.h"

#include <math.h>

void policy_defaults(policy *p) {
    *p = (policy){0};
    p->mode = POLICY_MODE_PRODUCTION;
    p->weighting.by = POLICY_WEIGHT_TOKENS;
    p->weighting.cap = 1.0;
    p->robust.rule = POLICY_RULE_MEAN;
    p->robust.trim_beta = 0.1;
    p->robust.krum_f = 1;
    p->merge.mode = POLICY_MERGE_EXACT;
    p->merge.svd_rank = 16;
    p->merge.svd_oversample = 8;
    p->merge.svd_power_iters = 4;
    p->merge.block_bytes = (int64_t)256 << 20;
    p->dp.clip = 1.0;
    p->dp.noise_multiplier = 1.0;
    p->dp.delta = 1e-5;
    p->dp.epsilon_budget = 8.0;
    p->rounds.quorum = 1;
    p->rounds.deadline_s = 3600;
    p->rounds.fraction = 1.0;
    p->rounds.below_quorum = POLICY_BELOW_QUORUM_WAIT;
}

const char *policy_rule_name(policy_rule r) {
    switch (r) {
        case POLICY_RULE_MEAN:
            return "mean";
        case POLICY_RULE_MEDIAN:
            return "median";
        case POLICY_RULE_TRIMMED_MEAN:
            return "trimmed_mean";
        case POLICY_RULE_KRUM:
            return "krum";
    }
    return "?";
}

const char *policy_merge_name(policy_merge m) {
    switch (m) {
        case POLICY_MERGE_EXACT:
            return "exact";
        case POLICY_MERGE_FEDIT:
            return "fedit";
        case POLICY_MERGE_SVD:
            return "svd";
    }
    return "?";
}

const char *policy_start_name(policy_start s) {
    switch (s) {
        case POLICY_START_AUTO:
            return "auto";
        case POLICY_START_OWN:
            return "own";
        case POLICY_START_SHARED:
            return "shared";
        case POLICY_START_GLOBAL:
            return "global";
    }
    return "?";
}

policy_start policy_start_of(const policy *p) {
    if (p->merge.start != POLICY_START_AUTO) return p->merge.start;
    return p->merge.mode == POLICY_MERGE_FEDIT ? POLICY_START_SHARED : POLICY_START_DEFAULT_EXACT;
}

const char *policy_weight_name(policy_weight_by w) {
    switch (w) {
        case POLICY_WEIGHT_TOKENS:
            return "tokens";
        case POLICY_WEIGHT_EXAMPLES:
            return "examples";
        case POLICY_WEIGHT_EQUAL:
            return "equal";
    }
    return "?";
}

static int finite_in(double v, double lo, double hi) {
    return isfinite(v) && v >= lo && v <= hi;
}

int policy_check(const policy *p) {
    if (!(p->weighting.cap > 0 && p->weighting.cap <= 1))
        return err_set("weighting.cap must be in (0, 1], got %g", p->weighting.cap);
    if (!finite_in(p->validation.max_norm, 0, INFINITY))
        return err_set("validation.max_norm must be a finite number >= 0 (0: no bound), got %g",
                       p->validation.max_norm);
    if (p->validation.max_rank < 0)
        return err_set("validation.max_rank must be >= 0 (0: the round's rank), got %d",
                       p->validation.max_rank);
    if (!(p->robust.trim_beta >= 0 && p->robust.trim_beta < 0.5))
        return err_set("robust.trim_beta must be in [0, 0.5), got %g", p->robust.trim_beta);
    if (p->robust.krum_f < 0 || p->robust.krum_m < 0)
        return err_set("robust.krum_f and robust.krum_m must be >= 0, got %d and %d",
                       p->robust.krum_f, p->robust.krum_m);
    if (!finite_in(p->robust.clip_norm, 0, INFINITY))
        return err_set("robust.clip_norm must be a finite number >= 0 (0: off), got %g",
                       p->robust.clip_norm);
    if (p->merge.svd_rank < 1 || p->merge.svd_oversample < 0 || p->merge.svd_power_iters < 0)
        return err_set("merge.svd_rank must be >= 1, merge.svd_oversample and "
                       "merge.svd_power_iters >= 0 (got %d, %d, %d)",
                       p->merge.svd_rank, p->merge.svd_oversample, p->merge.svd_power_iters);
    if (p->merge.block_bytes < ((int64_t)1 << 20))
        return err_set("merge.block_bytes must be at least 1 MiB (1048576), got %lld",
                       (long long)p->merge.block_bytes);
    if (p->merge.mode == POLICY_MERGE_FEDIT &&
        (p->robust.rule != POLICY_RULE_MEAN || p->robust.clip_norm > 0 || p->dp.enabled))
        return err_set("merge.mode \"fedit\" averages A and B separately and only exists to be "
                       "compared with the exact merge: it takes robust.rule \"mean\" without "
                       "robust.clip_norm or dp");
    if (policy_start_of(p) == POLICY_START_GLOBAL &&
        (p->robust.rule == POLICY_RULE_MEDIAN || p->robust.rule == POLICY_RULE_TRIMMED_MEAN ||
         (p->dp.enabled && p->merge.mode == POLICY_MERGE_EXACT)))
        return err_set("merge.start \"global\" continues the global adapter, which is made from "
                       "the round's low-rank update: it needs a low-rank merge (robust.rule "
                       "\"mean\" or \"krum\", or merge.mode \"svd\"; with dp, merge.mode "
                       "\"svd\"), not %s%s",
                       policy_rule_name(p->robust.rule), p->dp.enabled ? " with dp" : "");
    if (p->rounds.quorum < 1)
        return err_set("rounds.quorum must be >= 1, got %d", p->rounds.quorum);
    if (!(isfinite(p->rounds.deadline_s) && p->rounds.deadline_s > 0))
        return err_set("rounds.deadline_s must be a number of seconds > 0, got %g",
                       p->rounds.deadline_s);
    if (!(p->rounds.fraction > 0 && p->rounds.fraction <= 1))
        return err_set("rounds.fraction must be in (0, 1], got %g", p->rounds.fraction);
    if (p->rounds.max_rounds < 0)
        return err_set("rounds.max_rounds must be >= 0 (0: no limit), got %d",
                       p->rounds.max_rounds);
    /* Σ p_i = 1 with every p_i <= cap needs at least ⌈1/cap⌉ members. */
    double need = ceil(1.0 / p->weighting.cap - 1e-12);
    if (p->rounds.quorum < need)
        return err_set("weighting.cap %g needs at least %.0f members in a round to sum to 1, but "
                       "rounds.quorum is %d: raise the quorum or the cap",
                       p->weighting.cap, need, p->rounds.quorum);
    if (p->robust.rule == POLICY_RULE_KRUM) {
        /* Blanchard et al. 2017: Krum needs n > 2f + 2. */
        if (p->rounds.quorum < 2 * p->robust.krum_f + 3)
            return err_set("robust.rule \"krum\" with krum_f = %d needs rounds.quorum >= 2f + 3 "
                           "= %d, got %d",
                           p->robust.krum_f, 2 * p->robust.krum_f + 3, p->rounds.quorum);
        if (p->robust.krum_m > p->rounds.quorum - p->robust.krum_f)
            return err_set("robust.krum_m = %d is above rounds.quorum - krum_f = %d",
                           p->robust.krum_m, p->rounds.quorum - p->robust.krum_f);
    }
    if (p->dp.enabled) {
        if (!(isfinite(p->dp.clip) && p->dp.clip > 0))
            return err_set("dp.clip must be > 0, got %g", p->dp.clip);
        if (!(isfinite(p->dp.noise_multiplier) && p->dp.noise_multiplier > 0))
            return err_set("dp.noise_multiplier must be > 0, got %g", p->dp.noise_multiplier);
        if (!(p->dp.delta > 0 && p->dp.delta < 1))
            return err_set("dp.delta must be in (0, 1), got %g", p->dp.delta);
        if (!(isfinite(p->dp.epsilon_budget) && p->dp.epsilon_budget > 0))
            return err_set("dp.epsilon_budget must be > 0, got %g", p->dp.epsilon_budget);
        if (!finite_in(p->dp.expected_weight, 0, INFINITY) ||
            !finite_in(p->dp.weight_saturation, 0, INFINITY))
            return err_set("dp.expected_weight and dp.weight_saturation must be finite and >= 0");
        /* DP-FedAvg's sensitivity bound holds for the clipped weighted sum
         * over a fixed denominator; a robust rule, a cap renormalisation or a
         * second clip change that sum. */
        if (p->robust.rule != POLICY_RULE_MEAN)
            return err_set("dp needs robust.rule \"mean\" (the noise is calibrated to the clipped "
                           "weighted sum; %s changes its sensitivity)",
                           policy_rule_name(p->robust.rule));
        if (p->robust.clip_norm > 0)
            return err_set("dp clips each update to dp.clip already: leave robust.clip_norm at 0");
        if (p->weighting.cap < 1)
            return err_set("dp bounds each member's weight by 1 (dp.weight_saturation): leave "
                           "weighting.cap at 1");
        if (p->weighting.by != POLICY_WEIGHT_EQUAL &&
            (p->dp.weight_saturation <= 0 || p->dp.expected_weight <= 0))
            return err_set("dp with weighting.by \"%s\" needs dp.weight_saturation > 0 (w_i = "
                           "min(n_i / saturation, 1)) and dp.expected_weight > 0 (q times the "
                           "roster's total weight)",
                           policy_weight_name(p->weighting.by));
    }
    return 0;
}

policy_round_action policy_round_decide(const policy *p, int accepted, int sampled,
                                        double elapsed_s) {
    int quorum = p->rounds.quorum;
    if (accepted >= quorum && accepted >= sampled) return POLICY_ROUND_AGGREGATE;
    if (elapsed_s < p->rounds.deadline_s) return POLICY_ROUND_WAIT;
    if (accepted >= quorum) return POLICY_ROUND_AGGREGATE;
    return p->rounds.below_quorum == POLICY_BELOW_QUORUM_FAIL ? POLICY_ROUND_FAIL
                                                              : POLICY_ROUND_WAIT;
}
