/* test_accountant — the RDP accountant against hand formulas and against
 * the values Google's dp-accounting computed (tests/fixtures/dp/
 * accountant.json, from tests/fixtures/make_dp_fixtures.py), including the
 * Abadi et al. 2016 anchor (q = 0.01, σ = 4, 10,000 steps, δ = 1e-5: they
 * report ε ≈ 1.26 with the moments accountant; RDP gives less), and the
 * budget check. */
#include "policies/accountant.h"
#include "tests/check.h"
#include "util/err.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static void test_hand(void) {
    /* No sampling: the Gaussian mechanism, ε_α = α / (2z²). */
    CHECK_NEAR(dp_rdp_sgm(1, 2, 3), 3.0 / 8, 1e-15);
    CHECK_NEAR(dp_rdp_sgm(0, 2, 3), 0, 0);
    CHECK(isinf(dp_rdp_sgm(0.1, 0, 3)));
    /* α = 2: A_2 = (1−q)² + 2q(1−q) + q² e^{1/z²}. */
    double q = 0.1, z = 1.5;
    double a2 = (1 - q) * (1 - q) + 2 * q * (1 - q) + q * q * exp(1 / (z * z));
    CHECK_NEAR(dp_rdp_sgm(q, z, 2), log(a2), 1e-14);
    /* α = 3: Σ_i C(3,i) (1−q)^{3−i} q^i e^{(i²−i)/(2z²)}, over α − 1 = 2. */
    double a3 = pow(1 - q, 3) + 3 * q * pow(1 - q, 2) + 3 * q * q * (1 - q) * exp(1 / (z * z)) +
                pow(q, 3) * exp(3 / (z * z));
    CHECK_NEAR(dp_rdp_sgm(q, z, 3), log(a3) / 2, 1e-14);
    /* Fractional orders lie between their integer neighbours. */
    double r2 = dp_rdp_sgm(q, z, 2), r25 = dp_rdp_sgm(q, z, 2.5), r3 = dp_rdp_sgm(q, z, 3);
    CHECK(r2 < r25 && r25 < r3);
}

static void test_fixtures(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/dp/accountant.json", getenv("FEDLORA_FIXTURES"));
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    CHECK_MSG(root != NULL, "%s: %s", path, jerr.text);
    if (!root) return;
    json_t *orders = json_object_get(root, "orders"), *cases = json_object_get(root, "cases");
    dp_accountant def;
    dp_accountant_init(&def);
    CHECK((int)json_array_size(orders) == def.n_orders);
    for (int i = 0; i < def.n_orders; i++)
        CHECK_NEAR(def.orders[i], json_number_value(json_array_get(orders, (size_t)i)), 1e-12);
    size_t n = json_array_size(cases);
    CHECK(n >= 8);
    for (size_t c = 0; c < n; c++) {
        json_t *jc = json_array_get(cases, c);
        double q = json_number_value(json_object_get(jc, "q"));
        double z = json_number_value(json_object_get(jc, "z"));
        int64_t steps = json_integer_value(json_object_get(jc, "steps"));
        double delta = json_number_value(json_object_get(jc, "delta"));
        double want = json_number_value(json_object_get(jc, "epsilon"));
        double want_order = json_number_value(json_object_get(jc, "order"));
        dp_accountant a;
        dp_accountant_init(&a);
        CHECK_OK(dp_accountant_add(&a, q, z, steps));
        double order, eps = dp_epsilon(&a, delta, &order);
        printf("q=%-6g z=%-4g steps=%-6lld delta=%-6g  eps %.6f  dp-accounting %.6f  (order %g)\n",
               q, z, (long long)steps, delta, eps, want, order);
        CHECK_MSG(fabs(eps - want) <= 1e-9 * want + 1e-12, "eps %.12g, dp-accounting %.12g", eps,
                  want);
        CHECK_NEAR(order, want_order, 1e-12);
        json_t *po = json_object_get(jc, "rdp_orders"), *pr = json_object_get(jc, "rdp_one_step");
        for (size_t i = 0; i < json_array_size(po); i++) {
            double alpha = json_number_value(json_array_get(po, i));
            json_t *v = json_array_get(pr, i);
            double got = dp_rdp_sgm(q, z, alpha);
            if (json_is_null(v)) {
                CHECK_MSG(isinf(got), "alpha %g: dp-accounting drops the order, got %g", alpha,
                          got);
                continue;
            }
            double r = json_number_value(v);
            CHECK_MSG(fabs(got - r) <= 1e-9 * fabs(r) + 1e-15, "q %g z %g alpha %g: %.15g vs %.15g",
                      q, z, alpha, got, r);
        }
        if (q == 0.01 && z == 4.0 && steps == 10000) {
            printf("Abadi et al. 2016 anchor: eps %.4f by RDP (they report 1.26 with the moments "
                   "accountant)\n",
                   eps);
            CHECK(eps < 1.26 && eps > 0.9);
        }
    }
    json_decref(root);
}

static void test_budget(void) {
    dp_accountant a;
    dp_accountant_init(&a);
    double q = 0.1, z = 1.2, delta = 1e-5;
    CHECK_NEAR(dp_epsilon(&a, delta, NULL), 0, 0);
    double prev = 0;
    for (int r = 1; r <= 20; r++) {
        double next;
        dp_would_exceed(&a, q, z, delta, 1e9, &next);
        CHECK_OK(dp_accountant_add(&a, q, z, 1));
        double eps = dp_epsilon(&a, delta, NULL);
        CHECK_NEAR(next, eps, 1e-12); /* the prediction is what the round then costs */
        CHECK(eps > prev);
        prev = eps;
    }
    CHECK(a.rounds == 20);
    CHECK_NEAR(prev, dp_epsilon_for(q, z, 20, delta), 1e-12);
    /* A budget between ε(20) and ε(21): the 21st round would exceed it. */
    double eps21;
    dp_would_exceed(&a, q, z, delta, 1e9, &eps21);
    double budget = 0.5 * (prev + eps21);
    CHECK(dp_would_exceed(&a, q, z, delta, budget, NULL) == 1);
    CHECK(dp_would_exceed(&a, q, z, delta, eps21 + 1e-9, NULL) == 0);
    /* More noise costs less; a smaller δ costs more. */
    CHECK(dp_epsilon_for(q, 2 * z, 20, delta) < prev);
    CHECK(dp_epsilon_for(q, z, 20, 1e-8) > prev);
    CHECK_FAILS_WITH(dp_accountant_add(&a, 1.5, z, 1), "sampling rate");
    double bad = 0.5;
    CHECK_FAILS_WITH(dp_accountant_init_orders(&a, &bad, 1), "order 0.5");
}

int main(void) {
    test_hand();
    test_fixtures();
    test_budget();
    return check_finish();
}
