/* test_robust — coordinate-wise median, trimmed mean, multi-Krum and
 * clipping against hand-computed cases, then one poisoned member among five
 * (its update ×100, sign-flipped, or random noise): median, trimmed mean and
 * multi-Krum keep the aggregate within 0.25·‖H‖ of the honest aggregate H
 * (the mean of the four honest updates), plain averaging does not. */
#include "policies/aggregate.h"
#include "policies/robust.h"
#include "pol_test.h"

#include <stdio.h>

static void test_hand(void) {
    /* 5 members × 3 coordinates: member k's values at x[k·3 + j]. */
    const real x[15] = {1, -4, 7, 9, 0, 7, 3, 2, 7, -2, 5, 7, 4, 1, 100};
    real out[3];
    robust_median(5, 3, x, 3, out);
    CHECK_NEAR(out[0], 3, 0);       /* sorted -2 1 3 4 9 */
    CHECK_NEAR(out[1], 1, 0);       /* -4 0 1 2 5 */
    CHECK_NEAR(out[2], 7, 0);       /* 7 7 7 7 100 */
    robust_median(4, 3, x, 3, out); /* the first four: mean of the middle two */
    CHECK_NEAR(out[0], 2, 0);       /* -2 1 3 9 → (1 + 3)/2 */
    CHECK_NEAR(out[1], 1, 0);       /* -4 0 2 5 → 1 */
    robust_trimmed_mean(5, 3, x, 3, 1, out);
    CHECK_NEAR(out[0], (1 + 3 + 4) / 3.0, 1e-6);
    CHECK_NEAR(out[1], (0 + 1 + 2) / 3.0, 1e-6);
    CHECK_NEAR(out[2], 7, 1e-6);
    robust_trimmed_mean(5, 3, x, 3, 0, out); /* β = 0: the plain mean */
    CHECK_NEAR(out[2], (4 * 7 + 100) / 5.0, 1e-5);

    /* Krum on 1-D points 0 1 2 3 100 (d² = (x_i − x_j)²), f = 1: each score
     * sums the K − f − 2 = 2 smallest d²: 5, 2, 2, 5, 97² + 98². */
    const double pts[5] = {0, 1, 2, 3, 100};
    double d2[25], score[5];
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 5; j++) d2[i * 5 + j] = (pts[i] - pts[j]) * (pts[i] - pts[j]);
    int sel[5];
    CHECK_OK(robust_krum_select(5, d2, 1, 3, sel, score));
    CHECK_NEAR(score[0], 5, 0);
    CHECK_NEAR(score[1], 2, 0);
    CHECK_NEAR(score[3], 5, 0);
    CHECK_NEAR(score[4], 97 * 97 + 98 * 98, 0);
    CHECK(sel[0] == 1 && sel[1] == 1 && sel[2] == 1 && sel[3] == 0 && sel[4] == 0);
    CHECK_OK(robust_krum_select(5, d2, 1, 4, sel, NULL));
    CHECK(sel[4] == 0 && sel[3] == 1);
    CHECK_FAILS_WITH(robust_krum_select(4, d2, 1, 2, sel, NULL), "at least 2f + 3 = 5");

    CHECK_NEAR(robust_clip_factor(4, 2), 0.5, 0);
    CHECK_NEAR(robust_clip_factor(1, 2), 1, 0);
    CHECK_NEAR(robust_clip_factor(4, 0), 1, 0);
}

#define TARGETS "q_proj,v_proj"
#define K 5

enum { ATTACK_SCALE, ATTACK_FLIP, ATTACK_NOISE };
static const char *attack_names[] = {"x100", "sign-flip", "noise"};

/* Five members: four honest (a shared update plus small individual parts),
 * member 4 attacking. */
static void make_members(const model *m, int attack, lora_set **sets) {
    lora_set *common = pt_adapter(m, TARGETS, 4, 8, 100, 0.3);
    for (int k = 0; k < K; k++) {
        sets[k] = pt_adapter(m, TARGETS, 4, 8, 200 + (uint64_t)k, 0.03);
        for (int t = 0; t < lora_num_tensors(sets[k]); t++) {
            model_param *p = lora_tensor(sets[k], t), *c = lora_tensor(common, t);
            for (int64_t j = 0; j < p->numel; j++) p->data[j] += c->data[j];
        }
    }
    lora_set *bad = sets[K - 1];
    for (int i = 0; i < bad->n_modules; i++) {
        lora_module *mod = &bad->modules[i];
        for (int64_t j = 0; j < mod->B.numel; j++) {
            if (attack == ATTACK_SCALE) mod->B.data[j] *= 100;
            if (attack == ATTACK_FLIP) mod->B.data[j] = -mod->B.data[j];
        }
    }
    if (attack == ATTACK_NOISE) {
        lora_free(sets[K - 1]);
        sets[K - 1] = pt_adapter(m, TARGETS, 4, 8, 999, 3.0);
    }
    lora_free(common);
}

/* ‖aggregate − H‖ / ‖H‖ over all adapted modules, H the honest mean. */
static double run_rule(policy_rule rule, int attack, int64_t block_bytes, double *agg_out) {
    model *m = pt_model();
    lora_set *sets[K];
    make_members(m, attack, sets);
    policy p;
    policy_defaults(&p);
    p.weighting.by = POLICY_WEIGHT_EQUAL;
    p.robust.rule = rule;
    p.robust.trim_beta = 0.2;
    p.robust.krum_f = 1;
    p.merge.block_bytes = block_bytes;
    aggregate_member mb[K];
    for (int k = 0; k < K; k++) mb[k] = (aggregate_member){"member", sets[k], 100, 10};
    double err = 0, norm = 0;
    int n_agg = 0;
    const lora_set *s0 = sets[0];
    real *before[8];
    for (int i = 0; i < s0->n_modules; i++) {
        const lora_module *mod = &s0->modules[i];
        before[i] = malloc((size_t)mod->out * mod->in * sizeof(real));
        memcpy(before[i], pt_weight(m, mod->path), (size_t)mod->out * mod->in * sizeof(real));
    }
    aggregate_report rep;
    CHECK_OK(aggregate_round(&p, m, mb, K, NULL, NULL, NULL, &rep));
    if (rule == POLICY_RULE_KRUM) CHECK_MSG(rep.selected[K - 1] == 0, "Krum kept the attacker");
    for (int i = 0; i < s0->n_modules; i++) {
        const lora_module *mod = &s0->modules[i];
        int n = mod->out * mod->in;
        double *h = calloc((size_t)n, sizeof *h);
        for (int k = 0; k < K - 1; k++) pt_dense_add(&sets[k]->modules[i], 1.0 / (K - 1), h);
        const real *w = pt_weight(m, mod->path);
        for (int j = 0; j < n; j++) {
            double agg = (double)w[j] - before[i][j];
            if (agg_out) agg_out[n_agg++] = agg;
            err += (agg - h[j]) * (agg - h[j]);
            norm += h[j] * h[j];
        }
        free(h);
        free(before[i]);
    }
    aggregate_report_free(&rep);
    for (int k = 0; k < K; k++) lora_free(sets[k]);
    model_free(m);
    return sqrt(err / norm);
}

static void test_poisoned(void) {
    const double bound = 0.25;
    for (int attack = 0; attack < 3; attack++) {
        double mean = run_rule(POLICY_RULE_MEAN, attack, 1 << 20, NULL);
        double med = run_rule(POLICY_RULE_MEDIAN, attack, 1 << 20, NULL);
        double trim = run_rule(POLICY_RULE_TRIMMED_MEAN, attack, 1 << 20, NULL);
        double krum = run_rule(POLICY_RULE_KRUM, attack, 1 << 20, NULL);
        printf("%-9s relative distance to the honest aggregate: mean %.3f, median %.3f, "
               "trimmed mean %.3f, multi-Krum %.3f\n",
               attack_names[attack], mean, med, trim, krum);
        CHECK_MSG(mean > bound, "%s: plain averaging stayed within %.2f (%.3f)",
                  attack_names[attack], bound, mean);
        CHECK_MSG(med <= bound, "%s: median %.3f", attack_names[attack], med);
        CHECK_MSG(trim <= bound, "%s: trimmed mean %.3f", attack_names[attack], trim);
        CHECK_MSG(krum <= bound, "%s: multi-Krum %.3f", attack_names[attack], krum);
        /* Krum leaves out the attacker and averages the four honest: exactly H. */
        CHECK_MSG(krum < 1e-5, "%s: multi-Krum %.3g", attack_names[attack], krum);
    }
    /* Rows processed one block at a time give the same numbers as one block. */
    double a[1024] = {0}, b[1024] = {0};
    run_rule(POLICY_RULE_MEDIAN, ATTACK_NOISE, 1 << 20, a);
    run_rule(POLICY_RULE_MEDIAN, ATTACK_NOISE, 64, b); /* one row per block */
    CHECK(memcmp(a, b, sizeof a) == 0);
    run_rule(POLICY_RULE_TRIMMED_MEAN, ATTACK_FLIP, 1 << 20, a);
    run_rule(POLICY_RULE_TRIMMED_MEAN, ATTACK_FLIP, 2000, b);
    CHECK(memcmp(a, b, sizeof a) == 0);
}

int main(void) {
    test_hand();
    test_poisoned();
    return check_finish();
}
