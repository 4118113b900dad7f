/* test_policy — the policy file, weighting with the cap, round decisions,
 * and validation of submitted updates, each against hand-computed cases. */
#include "policies/policy.h"
#include "policies/validate.h"
#include "policies/weights.h"
#include "pol_test.h"

#include <stdio.h>

static int parse(policy *p, const char *text) {
    return policy_parse(p, text, strlen(text), "test.cfg");
}

static void test_file(void) {
    policy p;
    char path[1024];
    snprintf(path, sizeof path, "%s/../../policies/example.policy.cfg", getenv("FEDLORA_FIXTURES"));
    CHECK_OK(policy_load(&p, path));
    CHECK(p.mode == POLICY_MODE_PRODUCTION);
    CHECK(p.weighting.by == POLICY_WEIGHT_TOKENS);
    CHECK_NEAR(p.weighting.cap, 0.4, 0);
    CHECK_NEAR(p.validation.max_norm, 50, 0);
    CHECK(p.validation.max_rank == 64);
    CHECK(p.robust.rule == POLICY_RULE_MEAN && p.robust.krum_f == 1);
    CHECK(p.merge.mode == POLICY_MERGE_EXACT && p.merge.svd_rank == 16);
    CHECK(p.merge.block_bytes == 268435456 && p.merge.start == POLICY_START_AUTO);
    CHECK(!p.dp.enabled && p.dp.delta == 1e-5);
    CHECK(p.rounds.quorum == 3 && p.rounds.below_quorum == POLICY_BELOW_QUORUM_WAIT);

    /* Defaults, and an empty file is the defaults. */
    policy d;
    policy_defaults(&d);
    CHECK_OK(policy_check(&d));
    CHECK_OK(parse(&p, ""));
    CHECK(memcmp(&p, &d, sizeof p) == 0);

    CHECK_OK(parse(&p, "mode = \"test\"; test_seed = 42;\n"
                       "robust = { rule = \"krum\"; krum_f = 1; krum_m = 2; };\n"
                       "rounds = { quorum = 5; fraction = 0.5; below_quorum = \"fail\"; };\n"
                       "dp = { enabled = false; delta = 1e-6; };\n"
                       "weighting = { by = \"equal\"; cap = 1; };\n"
                       "merge = { mode = \"svd\"; svd_rank = 4; };"));
    CHECK(p.mode == POLICY_MODE_TEST && p.test_seed == 42);
    CHECK(p.robust.rule == POLICY_RULE_KRUM && p.robust.krum_m == 2);
    CHECK(p.rounds.quorum == 5 && p.rounds.fraction == 0.5);
    CHECK(p.rounds.below_quorum == POLICY_BELOW_QUORUM_FAIL);
    CHECK(p.weighting.by == POLICY_WEIGHT_EQUAL && p.merge.mode == POLICY_MERGE_SVD);
    CHECK(p.merge.svd_rank == 4 && p.dp.delta == 1e-6);

    /* merge.start: auto resolves by the mode (FedIT's shared start for
     * fedit); a start that continues the global adapter needs a low-rank
     * merge. */
    CHECK(p.merge.start == POLICY_START_AUTO && policy_start_of(&p) == POLICY_START_DEFAULT_EXACT);
    CHECK_OK(parse(&p, "merge = { mode = \"fedit\"; };"));
    CHECK(policy_start_of(&p) == POLICY_START_SHARED);
    CHECK_OK(parse(&p, "merge = { mode = \"fedit\"; start = \"own\"; };"));
    CHECK(policy_start_of(&p) == POLICY_START_OWN);
    CHECK_OK(parse(&p, "merge = { start = \"global\"; };"));
    CHECK(policy_start_of(&p) == POLICY_START_GLOBAL &&
          !strcmp(policy_start_name(p.merge.start), "global"));
    CHECK_FAILS_WITH(parse(&p, "merge = { start = \"fresh\"; };"), "merge.start must be one of");
    CHECK_FAILS_WITH(
        parse(&p, "merge = { start = \"global\"; };\nrobust = { rule = \"median\"; };"),
        "needs a low-rank merge");
    CHECK_FAILS_WITH(parse(&p, "merge = { start = \"global\"; };\n"
                               "dp = { enabled = true; };\nweighting = { by = \"equal\"; };"),
                     "needs a low-rank merge");
    CHECK_OK(parse(&p, "merge = { mode = \"svd\"; start = \"global\"; };\n"
                       "dp = { enabled = true; };\nweighting = { by = \"equal\"; };"));

    /* Errors name the key (and the line). */
    CHECK_FAILS_WITH(parse(&p, "weighting = { cpa = 0.5; };"), "unknown key 'weighting.cpa'");
    CHECK_FAILS_WITH(parse(&p, "colour = 1;"), "unknown key 'colour'");
    CHECK_FAILS_WITH(parse(&p, "\nweighting = { cap = 1.5; };"), "line 2: weighting.cap");
    CHECK_FAILS_WITH(parse(&p, "weighting = { cap = \"half\"; };"), "must be a number");
    CHECK_FAILS_WITH(parse(&p, "robust = { rule = \"avg\"; };"), "robust.rule must be one of");
    CHECK_FAILS_WITH(parse(&p, "rounds = { quorum = 2.5; };"), "must be an integer");
    CHECK_FAILS_WITH(parse(&p, "dp = { enabled = 1; };"), "true or false");
    CHECK_FAILS_WITH(parse(&p, "weighting = { cap = 0.3; };"), "needs at least 4 members");
    CHECK_FAILS_WITH(parse(&p, "weighting = { cap = ; };"), "line 1: syntax error");
    CHECK_FAILS_WITH(parse(&p, "@include \"/etc/passwd\"\n"), "@include is not allowed");
    CHECK_FAILS_WITH(parse(&p, "merge = { mode = \"fedit\"; };\nrobust = { rule = \"median\"; };"),
                     "fedit");
    CHECK_FAILS_WITH(parse(&p, "dp = { enabled = true; };\nrobust = { rule = \"median\"; };"),
                     "dp needs robust.rule \"mean\"");
    CHECK_FAILS_WITH(parse(&p, "dp = { enabled = true; };"), "dp.weight_saturation");
    CHECK_FAILS_WITH(parse(&p, "robust = { rule = \"krum\"; };\nrounds = { quorum = 4; };"),
                     "needs rounds.quorum >= 2f + 3 = 5");
    CHECK_OK(parse(&p, "dp = { enabled = true; clip = 0.5; };\nweighting = { by = \"equal\"; };"));
    CHECK(p.dp.enabled && p.dp.clip == 0.5);
    CHECK_FAILS_WITH(policy_load(&p, "/nonexistent/policy.cfg"), "reading policy file");
}

static void test_weights(void) {
    policy p;
    policy_defaults(&p);
    uint64_t tok[4] = {1, 1, 2, 0}, ex[4] = {3, 1, 0, 0};
    double w[4];
    CHECK_OK(weights_compute(&p, 3, tok, ex, w));
    CHECK_NEAR(w[0], 0.25, 1e-15);
    CHECK_NEAR(w[1], 0.25, 1e-15);
    CHECK_NEAR(w[2], 0.5, 1e-15);
    p.weighting.by = POLICY_WEIGHT_EXAMPLES;
    CHECK_OK(weights_compute(&p, 2, tok, ex, w));
    CHECK_NEAR(w[0], 0.75, 1e-15);
    CHECK_FAILS_WITH(weights_compute(&p, 3, tok, ex, w), "reports 0 examples");
    p.weighting.by = POLICY_WEIGHT_EQUAL;
    CHECK_OK(weights_compute(&p, 4, NULL, NULL, w));
    CHECK_NEAR(w[3], 0.25, 0);

    /* Cap 0.4 on (1, 1, 8): 0.8 → 0.4, the others share 0.6 equally. */
    double c1[3] = {1, 1, 8};
    CHECK_OK(weights_cap(3, c1, 0.4));
    CHECK_NEAR(c1[0], 0.3, 1e-15);
    CHECK_NEAR(c1[2], 0.4, 1e-15);
    /* Two passes: (10, 6, 2, 2) cap 0.35 → .5 capped; .65 over 6:2:2 gives .39,
     * capped too; .30 over 2:2 → (.35, .35, .15, .15). */
    double c2[4] = {10, 6, 2, 2};
    CHECK_OK(weights_cap(4, c2, 0.35));
    CHECK_NEAR(c2[0], 0.35, 1e-15);
    CHECK_NEAR(c2[1], 0.35, 1e-15);
    CHECK_NEAR(c2[2], 0.15, 1e-15);
    CHECK_NEAR(c2[3], 0.15, 1e-15);
    double c3[2] = {1, 1};
    CHECK_FAILS_WITH(weights_cap(2, c3, 0.4), "cannot be met by 2 members");
    /* Exactly feasible: every member at the cap. */
    double c4[4] = {9, 1, 1, 1};
    CHECK_OK(weights_cap(4, c4, 0.25));
    CHECK_NEAR(c4[0] + c4[1] + c4[2] + c4[3], 1, 1e-12);
    CHECK_NEAR(c4[0], 0.25, 1e-12);

    /* DP weights: min(n / saturation, 1), not normalised. */
    p.weighting.by = POLICY_WEIGHT_TOKENS;
    p.dp.weight_saturation = 2;
    uint64_t t2[3] = {1, 2, 5};
    CHECK_OK(dp_weights(&p, 3, t2, NULL, w));
    CHECK_NEAR(w[0], 0.5, 0);
    CHECK_NEAR(w[1], 1, 0);
    CHECK_NEAR(w[2], 1, 0);
}

static void test_rounds(void) {
    policy p;
    policy_defaults(&p);
    p.rounds.quorum = 3;
    p.rounds.deadline_s = 100;
    CHECK(policy_round_decide(&p, 2, 5, 10) == POLICY_ROUND_WAIT);
    CHECK(policy_round_decide(&p, 3, 5, 10) == POLICY_ROUND_WAIT); /* others may still answer */
    CHECK(policy_round_decide(&p, 5, 5, 10) == POLICY_ROUND_AGGREGATE);
    CHECK(policy_round_decide(&p, 3, 5, 100) == POLICY_ROUND_AGGREGATE);
    CHECK(policy_round_decide(&p, 2, 5, 100) == POLICY_ROUND_WAIT);
    p.rounds.below_quorum = POLICY_BELOW_QUORUM_FAIL;
    CHECK(policy_round_decide(&p, 2, 5, 100) == POLICY_ROUND_FAIL);
    CHECK(policy_round_decide(&p, 2, 2, 10) == POLICY_ROUND_WAIT); /* all answered, below quorum */
}

/* The tensors of adapter s as a submission (names and data point into s). */
static void submission_of(const lora_set *s, validate_tensor *t, validate_submission *sub,
                          const unsigned char *base) {
    int n = lora_num_tensors((lora_set *)s);
    for (int i = 0; i < n; i++) {
        model_param *p = lora_tensor((lora_set *)s, i);
        t[i] = (validate_tensor){p->name, p->shape[0], p->shape[1], p->data};
    }
    *sub = (validate_submission){"uni-a", base, s->cfg.rank, s->cfg.alpha, 0, t, (size_t)n};
}

static void test_validate(void) {
    model *m = pt_model();
    policy p;
    policy_defaults(&p);
    lora_config round;
    lora_config_init(&round);
    CHECK_OK(lora_config_set_targets(&round, "q_proj,v_proj"));
    round.rank = 4;
    unsigned char base[32] = {1, 2, 3}, other[32] = {9};
    lora_set *good = pt_adapter(m, "q_proj,v_proj", 4, 8, 11, 0.1);
    validate_tensor t[16];
    validate_submission sub;
    submission_of(good, t, &sub, base);
    char why[VALIDATE_REASON_MAX];
    lora_set *out = NULL;
    CHECK(validate_build(&p, m, &round, base, &sub, &out, why, sizeof why) == 0);
    CHECK(out && out->n_modules == 4);
    if (out) {
        lora_module *a = &out->modules[0], *b = &good->modules[0];
        CHECK(memcmp(a->B.data, b->B.data, (size_t)a->B.numel * sizeof(real)) == 0);
        CHECK_NEAR(a->scale, 2.0, 0);
        CHECK_NEAR(validate_update_norm(out), validate_update_norm(good), 1e-6);
    }
    /* The norm from Gram products equals the dense Frobenius norm. */
    double dense_sq = 0;
    for (int i = 0; i < good->n_modules; i++) {
        lora_module *mod = &good->modules[i];
        double *d = calloc((size_t)mod->out * mod->in, sizeof *d);
        pt_dense_add(mod, 1, d);
        for (int j = 0; j < mod->out * mod->in; j++) dense_sq += d[j] * d[j];
        free(d);
    }
    CHECK_NEAR(validate_update_norm(good), sqrt(dense_sq), 1e-5 * sqrt(dense_sq));
    lora_free(out);

#define REJECTS(code)                                                                              \
    do {                                                                                           \
        out = NULL;                                                                                \
        why[0] = 0;                                                                                \
        CHECK(validate_build(&p, m, &round, base, &sub, &out, why, sizeof why) == 1);              \
        CHECK_MSG(strncmp(why, code, strlen(code)) == 0, "reason '%s', wanted '%s'", why, code);   \
        CHECK(out == NULL);                                                                        \
    } while (0)

    sub.base = other;
    REJECTS("base:");
    sub.base = base;
    sub.rank = 5;
    REJECTS("rank:");
    sub.rank = 4;
    sub.n_tensors--; /* the last tensor missing */
    REJECTS("tensors: uni-a sent no");
    sub.n_tensors++;
    t[sub.n_tensors] = t[0]; /* a duplicate */
    sub.n_tensors++;
    REJECTS("tensors: uni-a sent 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' "
            "twice");
    sub.n_tensors--;
    validate_tensor keep = t[0];
    t[0].name = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
    REJECTS("tensors: uni-a sent 'base_model.model.model.layers.0.self_attn.k_proj");
    t[0] = keep;
    t[0].cols = 8;
    REJECTS("tensors:");
    t[0] = keep;
    float *bad = malloc((size_t)(keep.rows * keep.cols) * sizeof *bad);
    memcpy(bad, keep.data, (size_t)(keep.rows * keep.cols) * sizeof *bad);
    bad[3] = NAN;
    t[0].data = bad;
    REJECTS("finite:");
    bad[3] = INFINITY;
    REJECTS("finite:");
    t[0] = keep;
    p.validation.max_norm = 0.5 * validate_update_norm(good);
    REJECTS("norm:");
    p.validation.max_norm = 2 * validate_update_norm(good);
    CHECK(validate_build(&p, m, &round, base, &sub, &out, why, sizeof why) == 0);
    lora_free(out);
    /* A higher rank with validation.max_rank allows it. */
    lora_set *r8 = pt_adapter(m, "q_proj,v_proj", 8, 8, 12, 0.1);
    submission_of(r8, t, &sub, base);
    REJECTS("rank:");
    p.validation.max_rank = 8;
    CHECK(validate_build(&p, m, &round, base, &sub, &out, why, sizeof why) == 0);
    CHECK(validate_check(&p, 4, out, "uni-a", why, sizeof why) == 0);
    p.validation.max_rank = 0;
    CHECK(validate_check(&p, 4, out, "uni-a", why, sizeof why) == 1);
    lora_free(out);
    free(bad);
    lora_free(r8);
    lora_free(good);
    lora_config_free(&round);
    model_free(m);
}

int main(void) {
    test_file();
    test_weights();
    test_rounds();
    test_validate();
    return check_finish();
}
