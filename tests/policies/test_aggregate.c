/* test_aggregate — a round's aggregation against direct computations:
 * the exact product merge (and its agreement with the BLAS oracle,
 * tests/support/blas_merge.h), FedIT's factor average and its error against the true average of
 * products, the rank-r SVD global adapter (exact when the rank allows, Eckart–Young optimal
 * otherwise), DP-FedAvg's clipping and noise, and which merges are low rank: their update (the
 * report's) is exactly what was applied. */
#include "lora/update.h"
#include "policies/aggregate.h"
#include "policies/svd.h"
#include "policies/validate.h"
#include "pol_test.h"
#include "tests/support/blas_merge.h"

#include <stdio.h>
#include <unistd.h>

#define TARGETS "q_proj,v_proj"

/* W − W_before of every adapted module, concatenated (doubles). */
static int64_t diff_of(const model *m, const lora_set *s, real *const *before, double *out) {
    int64_t n = 0;
    for (int i = 0; i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        const real *w = pt_weight(m, mod->path);
        for (int j = 0; j < mod->out * mod->in; j++) out[n++] = (double)w[j] - before[i][j];
    }
    return n;
}

static void save_before(const model *m, const lora_set *s, real **before) {
    for (int i = 0; i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        size_t bytes = (size_t)mod->out * mod->in * sizeof(real);
        before[i] = malloc(bytes);
        memcpy(before[i], pt_weight(m, mod->path), bytes);
    }
}

static void free_before(const lora_set *s, real **before) {
    for (int i = 0; i < s->n_modules; i++) free(before[i]);
}

/* Σ f_k s_k B_k A_k of every module, concatenated. */
static int64_t expected_of(lora_set *const *sets, const double *f, int K, double *out) {
    int64_t n = 0;
    for (int i = 0; i < sets[0]->n_modules; i++) {
        const lora_module *m0 = &sets[0]->modules[i];
        int size = m0->out * m0->in;
        memset(out + n, 0, (size_t)size * sizeof *out);
        for (int k = 0; k < K; k++) pt_dense_add(&sets[k]->modules[i], f[k], out + n);
        n += size;
    }
    return n;
}

static double rel_err(const double *a, const double *b, int64_t n) {
    double e = 0, s = 0;
    for (int64_t j = 0; j < n; j++) {
        e += (a[j] - b[j]) * (a[j] - b[j]);
        s += b[j] * b[j];
    }
    return sqrt(e / s);
}

static int same_model(const model *a, const model *b) {
    int same = 1;
    for (int i = 0; i < a->n_params; i++)
        same &= memcmp(a->params[i].data, b->params[i].data,
                       (size_t)a->params[i].numel * sizeof(real)) == 0;
    return same;
}

static void test_exact(void) {
    model *m = pt_model(), *m2 = pt_model();
    /* Different ranks and alphas per member. */
    lora_set *sets[3] = {pt_adapter(m, TARGETS, 2, 4, 1, 0.2),
                         pt_adapter(m, TARGETS, 4, 16, 2, 0.2),
                         pt_adapter(m, TARGETS, 3, 3, 3, 0.2)};
    aggregate_member mb[3] = {
        {"a", sets[0], 100, 1}, {"b", sets[1], 200, 1}, {"c", sets[2], 300, 1}};
    policy p;
    policy_defaults(&p);
    real *before[8];
    save_before(m, sets[0], before);
    aggregate_report rep;
    CHECK_OK(aggregate_round(&p, m, mb, 3, NULL, NULL, NULL, &rep));
    CHECK_NEAR(rep.coef[0], 1.0 / 6, 1e-15);
    CHECK_NEAR(rep.coef[2], 0.5, 1e-15);
    CHECK(rep.n_modules == 4 && rep.n_coords == 2 * (256 + 128));
    CHECK(rep.bytes_in == (int64_t)4 * (2 + 4 + 3) * ((16 + 16) * 2 + (16 + 8) * 2));
    double got[768], want[768];
    int64_t n = diff_of(m, sets[0], before, got);
    double f[3] = {1.0 / 6, 2.0 / 6, 3.0 / 6};
    expected_of(sets, f, 3, want);
    CHECK_MSG(rel_err(got, want, n) < 1e-6, "exact merge off by %g", rel_err(got, want, n));
    /* The same bytes as the default aggregator's merge (update_build with
     * the same coefficients, applied by the portable kernel), and the report
     * holds that update. */
    update *u = NULL;
    CHECK_OK(update_build(&u, m2, sets, rep.coef, 3));
    CHECK_OK(update_apply(m2, u));
    CHECK_MSG(same_model(m, m2), "aggregate_round and update_build + update_apply differ");
    CHECK(rep.factors && u && rep.factors->n_modules == u->n_modules);
    for (int i = 0; rep.factors && u && i < u->n_modules; i++) {
        const update_module *x = &rep.factors->modules[i], *y = &u->modules[i];
        CHECK(!strcmp(x->name, y->name) && x->rank == 9 && y->rank == 9);
        CHECK(!memcmp(x->B, y->B, (size_t)x->out * 9 * sizeof(float)) &&
              !memcmp(x->A, y->A, (size_t)x->in * 9 * sizeof(float)));
    }
    update_free(u);
    /* ... and what ts_blas_merge's BLAS GEMM gives, up to rounding. */
    model *m3 = pt_model();
    CHECK_OK(ts_blas_merge(m3, sets, f, 3));
    double blas[768];
    diff_of(m3, sets[0], before, blas);
    CHECK_MSG(rel_err(got, blas, n) < 1e-6, "exact vs ts_blas_merge: %g", rel_err(got, blas, n));
    model_free(m3);
    aggregate_report_free(&rep);

    /* A member over other modules is refused. */
    lora_set *other = pt_adapter(m, "q_proj", 2, 4, 5, 0.2);
    aggregate_member bad[2] = {{"a", sets[0], 1, 1}, {"x", other, 1, 1}};
    CHECK_FAILS_WITH(aggregate_round(&p, m, bad, 2, NULL, NULL, NULL, NULL), "x adapts 2 modules");
    lora_free(other);
    free_before(sets[0], before);
    for (int k = 0; k < 3; k++) lora_free(sets[k]);
    model_free(m);
    model_free(m2);
}

/* FedIT averages A and B separately: s·mean(B)·mean(A) ≠ mean(s·B·A). */
static void test_fedit(void) {
    model *m = pt_model(), *me = pt_model();
    lora_set *sets[3] = {pt_adapter(m, TARGETS, 4, 8, 21, 0.3),
                         pt_adapter(m, TARGETS, 4, 8, 22, 0.3),
                         pt_adapter(m, TARGETS, 4, 8, 23, 0.3)};
    aggregate_member mb[3] = {{"a", sets[0], 1, 1}, {"b", sets[1], 1, 1}, {"c", sets[2], 1, 1}};
    policy p;
    policy_defaults(&p);
    p.weighting.by = POLICY_WEIGHT_EQUAL;
    real *before[8];
    save_before(m, sets[0], before);
    CHECK_OK(aggregate_round(&p, me, mb, 3, NULL, NULL, NULL, NULL));
    p.merge.mode = POLICY_MERGE_FEDIT;
    CHECK_OK(aggregate_round(&p, m, mb, 3, NULL, NULL, NULL, NULL));
    double truth[768], fedit[768], exact[768], direct[768];
    double third[3] = {1.0 / 3, 1.0 / 3, 1.0 / 3};
    int64_t n = expected_of(sets, third, 3, truth);
    diff_of(m, sets[0], before, fedit);
    diff_of(me, sets[0], before, exact);
    /* FedIT's result computed directly: s · (mean B) · (mean A). */
    int64_t off = 0;
    for (int i = 0; i < sets[0]->n_modules; i++) {
        const lora_module *m0 = &sets[0]->modules[i];
        for (int o = 0; o < m0->out; o++)
            for (int c = 0; c < m0->in; c++) {
                double sum = 0;
                for (int r = 0; r < 4; r++) {
                    double b = 0, a = 0;
                    for (int k = 0; k < 3; k++) {
                        b += sets[k]->modules[i].B.data[o * 4 + r] / 3.0;
                        a += sets[k]->modules[i].A.data[r * m0->in + c] / 3.0;
                    }
                    sum += b * a;
                }
                direct[off + o * m0->in + c] = m0->scale * sum;
            }
        off += m0->out * m0->in;
    }
    double e_exact = rel_err(exact, truth, n), e_fedit = rel_err(fedit, truth, n);
    printf("relative error against mean(s·B·A): exact %.2e, fedit %.3f\n", e_exact, e_fedit);
    CHECK_MSG(e_exact < 1e-6, "exact %g", e_exact);
    CHECK_MSG(e_fedit > 0.3, "fedit unexpectedly close to the true average: %g", e_fedit);
    CHECK_MSG(rel_err(fedit, direct, n) < 1e-6, "fedit is not s·mean(B)·mean(A): %g",
              rel_err(fedit, direct, n));
    /* Different ranks cannot be averaged factor by factor. */
    lora_set *r2 = pt_adapter(m, TARGETS, 2, 8, 24, 0.3);
    mb[2].set = r2;
    CHECK_FAILS_WITH(aggregate_round(&p, m, mb, 3, NULL, NULL, NULL, NULL), "same rank and scale");
    lora_free(r2);
    free_before(sets[0], before);
    for (int k = 0; k < 3; k++) lora_free(sets[k]);
    model_free(m);
    model_free(me);
}

/* Σ_{i >= r} σ_i² of a module's dense update (zero-padded to square). */
static double tail_energy(const double *d, int out, int in, int r) {
    int n = out > in ? out : in;
    double *M = calloc((size_t)n * n, sizeof *M), *U = malloc((size_t)n * n * sizeof *U);
    double *V = malloc((size_t)n * n * sizeof *V), *s = malloc((size_t)n * sizeof *s);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) M[o * n + i] = d[o * in + i];
    svd_jacobi(n, M, U, s, V);
    double e = 0;
    for (int i = r; i < n; i++) e += s[i] * s[i];
    free(M);
    free(U);
    free(V);
    free(s);
    return e;
}

static void test_svd_mode(void) {
    model *m = pt_model();
    lora_set *sets[3] = {pt_adapter(m, TARGETS, 2, 4, 31, 0.3),
                         pt_adapter(m, TARGETS, 2, 4, 32, 0.3),
                         pt_adapter(m, TARGETS, 2, 4, 33, 0.3)};
    aggregate_member mb[3] = {{"a", sets[0], 1, 1}, {"b", sets[1], 1, 1}, {"c", sets[2], 1, 1}};
    policy p;
    policy_defaults(&p);
    p.weighting.by = POLICY_WEIGHT_EQUAL;
    p.merge.mode = POLICY_MERGE_SVD;
    double third[3] = {1.0 / 3, 1.0 / 3, 1.0 / 3}, truth[768], got[768];
    int64_t n = expected_of(sets, third, 3, truth);
    real *before[8];
    save_before(m, sets[0], before);

    /* Rank 6 = Σ r_i: the truncation loses nothing. */
    p.merge.svd_rank = 6;
    lora_set *g = NULL;
    aggregate_round_info info = {.round = 3};
    CHECK_OK(aggregate_round(&p, m, mb, 3, &info, NULL, &g, NULL));
    diff_of(m, sets[0], before, got);
    CHECK_MSG(rel_err(got, truth, n) < 1e-5, "svd at full rank off by %g", rel_err(got, truth, n));
    /* The global adapter is what was added: s = 1, B·A. */
    CHECK(g && g->n_modules == 4 && g->modules[0].rank == 6 && g->modules[0].scale == 1);
    double gd[768];
    if (g) {
        int64_t off = 0;
        memset(gd, 0, sizeof gd);
        for (int i = 0; i < g->n_modules; i++) {
            pt_dense_add(&g->modules[i], 1, gd + off);
            off += g->modules[i].out * g->modules[i].in;
        }
        CHECK(rel_err(gd, got, n) < 1e-5);
    }
    lora_free(g);

    /* Rank 2 < 6: the error is Eckart–Young's optimum. */
    for (int i = 0; i < sets[0]->n_modules; i++) {
        const lora_module *mod = &sets[0]->modules[i];
        memcpy(pt_weight(m, mod->path), before[i], (size_t)mod->out * mod->in * sizeof(real));
    }
    p.merge.svd_rank = 2;
    CHECK_OK(aggregate_round(&p, m, mb, 3, &info, NULL, NULL, NULL));
    diff_of(m, sets[0], before, got);
    int64_t off = 0;
    for (int i = 0; i < sets[0]->n_modules; i++) {
        const lora_module *mod = &sets[0]->modules[i];
        int size = mod->out * mod->in;
        double err = 0;
        for (int j = 0; j < size; j++)
            err += (got[off + j] - truth[off + j]) * (got[off + j] - truth[off + j]);
        double opt = tail_energy(truth + off, mod->out, mod->in, 2);
        CHECK_MSG(fabs(err - opt) <= 1e-4 * opt, "module %s: error² %g, optimum %g", mod->path, err,
                  opt);
        off += size;
    }

    /* Dense path: the median, then its rank-2 SVD, near the optimum. */
    double med[768];
    for (int i = 0; i < sets[0]->n_modules; i++) {
        const lora_module *mod = &sets[0]->modules[i];
        memcpy(pt_weight(m, mod->path), before[i], (size_t)mod->out * mod->in * sizeof(real));
    }
    p.merge.mode = POLICY_MERGE_EXACT;
    p.robust.rule = POLICY_RULE_MEDIAN;
    CHECK_OK(aggregate_round(&p, m, mb, 3, &info, NULL, NULL, NULL));
    diff_of(m, sets[0], before, med);
    for (int i = 0; i < sets[0]->n_modules; i++) {
        const lora_module *mod = &sets[0]->modules[i];
        memcpy(pt_weight(m, mod->path), before[i], (size_t)mod->out * mod->in * sizeof(real));
    }
    p.merge.mode = POLICY_MERGE_SVD;
    CHECK_OK(aggregate_round(&p, m, mb, 3, &info, NULL, NULL, NULL));
    diff_of(m, sets[0], before, got);
    off = 0;
    for (int i = 0; i < sets[0]->n_modules; i++) {
        const lora_module *mod = &sets[0]->modules[i];
        int size = mod->out * mod->in;
        double err = 0;
        for (int j = 0; j < size; j++)
            err += (got[off + j] - med[off + j]) * (got[off + j] - med[off + j]);
        double opt = tail_energy(med + off, mod->out, mod->in, 2);
        CHECK_MSG(err <= 1.02 * opt + 1e-12, "median+svd %s: error² %g, optimum %g", mod->path, err,
                  opt);
        CHECK(tail_energy(got + off, mod->out, mod->in, 2) < 1e-8 * opt); /* rank <= 2 */
        off += size;
    }
    free_before(sets[0], before);
    for (int k = 0; k < 3; k++) lora_free(sets[k]);
    model_free(m);
}

static void test_dp(void) {
    model *m = pt_model();
    policy p;
    policy_defaults(&p);
    p.mode = POLICY_MODE_TEST;
    p.test_seed = 5;
    p.weighting.by = POLICY_WEIGHT_EQUAL;
    p.dp.enabled = 1;
    p.dp.clip = 0.5;
    p.dp.noise_multiplier = 1.0;
    p.rounds.fraction = 0.5;
    CHECK_OK(policy_check(&p));
    aggregate_round_info info = {.round = 1, .roster_size = 10}; /* E = 0.5 · 10 = 5 */
    /* Zero updates: what is added is the noise alone, N(0, (zC/E)²) = N(0, 0.01). */
    lora_set *zero[4];
    aggregate_member mb[4];
    for (int k = 0; k < 4; k++) {
        zero[k] = pt_adapter(m, TARGETS, 2, 4, 40 + (uint64_t)k, 0.3);
        for (int i = 0; i < zero[k]->n_modules; i++)
            memset(zero[k]->modules[i].B.data, 0,
                   (size_t)zero[k]->modules[i].B.numel * sizeof(real));
        mb[k] = (aggregate_member){"z", zero[k], 1, 1};
    }
    CHECK_FAILS_WITH(aggregate_round(&p, m, mb, 4, &info, NULL, NULL, NULL), "no noise source");
    noise_source *ns;
    CHECK_OK(noise_open(&ns, &p, NULL));
    double sum = 0, sq = 0, got[768];
    int64_t count = 0;
    real *before[8];
    aggregate_report rep = {0};
    for (int round = 0; round < 40; round++) {
        save_before(m, zero[0], before);
        aggregate_report_free(&rep);
        CHECK_OK(aggregate_round(&p, m, mb, 4, &info, ns, NULL, &rep));
        int64_t n = diff_of(m, zero[0], before, got);
        for (int64_t j = 0; j < n; j++) {
            sum += got[j];
            sq += got[j] * got[j];
        }
        count += n;
        free_before(zero[0], before);
    }
    CHECK_NEAR(rep.noise_sigma, 0.1, 1e-15);
    CHECK_NEAR(rep.coef[0], 0.2, 1e-15); /* w_i / E = 1/5 */
    aggregate_report_free(&rep);
    double mean = sum / count, var = sq / count - mean * mean;
    printf("DP noise over %lld coordinates: mean %.5f (want 0 ± %.5f), variance %.6f (want 0.01 "
           "± %.6f)\n",
           (long long)count, mean, 5 * 0.1 / sqrt(count), var, 6 * 0.01 * sqrt(2.0 / count));
    CHECK(fabs(mean) <= 5 * 0.1 / sqrt((double)count));
    CHECK(fabs(var - 0.01) <= 6 * 0.01 * sqrt(2.0 / count));
    noise_free(ns);

    /* Clipping: with negligible noise the update is Σ w_i c_i Δ_i / E. */
    lora_set *big[3] = {pt_adapter(m, TARGETS, 2, 4, 51, 1.0),
                        pt_adapter(m, TARGETS, 2, 4, 52, 0.01),
                        pt_adapter(m, TARGETS, 2, 4, 53, 2.0)};
    aggregate_member bm[3] = {{"a", big[0], 1, 1}, {"b", big[1], 1, 1}, {"c", big[2], 1, 1}};
    p.dp.noise_multiplier = 1e-9;
    CHECK_OK(noise_open(&ns, &p, NULL));
    save_before(m, big[0], before);
    CHECK_OK(aggregate_round(&p, m, bm, 3, &info, ns, NULL, &rep));
    double f[3], want[768];
    for (int k = 0; k < 3; k++) {
        double norm = validate_update_norm(big[k]);
        double c = norm > 0.5 ? 0.5 / norm : 1;
        CHECK_NEAR(rep.clip[k], c, 1e-12);
        CHECK_NEAR(rep.norm[k], norm, 1e-9 * norm);
        f[k] = c / 5;
    }
    CHECK(rep.clip[0] < 1 && rep.clip[1] == 1 && rep.clip[2] < 1);
    int64_t n = expected_of(big, f, 3, want);
    diff_of(m, big[0], before, got);
    CHECK_MSG(rel_err(got, want, n) < 1e-5, "clipped DP sum off by %g", rel_err(got, want, n));
    aggregate_report_free(&rep);
    free_before(big[0], before);
    noise_free(ns);

    /* Production: the CSPRNG, and a replay with the round's key gives the same bytes. */
    model *m1 = pt_model(), *m2 = pt_model();
    p.mode = POLICY_MODE_PRODUCTION;
    p.dp.noise_multiplier = 1.0;
    noise_source *n1, *n2;
    unsigned char key[NOISE_KEY_LEN];
    CHECK_OK(noise_open(&n1, &p, NULL));
    CHECK(noise_is_cryptographic(n1));
    CHECK_OK(noise_key(n1, key));
    CHECK_OK(noise_open(&n2, &p, key));
    CHECK_OK(aggregate_round(&p, m1, bm, 3, &info, n1, NULL, NULL));
    CHECK_OK(aggregate_round(&p, m2, bm, 3, &info, n2, NULL, NULL));
    CHECK_MSG(same_model(m1, m2), "a replay with the round's noise key gave other bytes");
    noise_free(n1);
    noise_free(n2);
    for (int k = 0; k < 3; k++) lora_free(big[k]);
    for (int k = 0; k < 4; k++) lora_free(zero[k]);
    model_free(m);
    model_free(m1);
    model_free(m2);
}

/* ---- low-rank merges as updates ---------------------------------------------------- */

/* One round on a fresh base: the report's update is there exactly when the
 * merge is low rank (want_rank > 0: every module at that rank), and the
 * merged model is the base plus that update through the portable kernel,
 * also after the file round trip. Returns the rounds' model (model_free). */
static model *check_factors(const char *what, const policy *p, aggregate_member *mb, int K,
                            int want_rank, noise_source *ns) {
    model *m = pt_model(), *n = pt_model();
    aggregate_round_info info = {.round = 2, .roster_size = 10};
    aggregate_report rep;
    CHECK_OK(aggregate_round(p, m, mb, K, &info, ns, NULL, &rep));
    update *u = rep.factors;
    if (want_rank == 0) {
        CHECK_MSG(u == NULL, "%s: a dense merge reports an update", what);
    } else {
        CHECK_MSG(u && u->n_modules == mb[0].set->n_modules, "%s: no update for every module",
                  what);
        for (int i = 0; u && i < u->n_modules; i++) {
            char name[MODEL_NAME_MAX];
            snprintf(name, sizeof name, "%s.weight", mb[0].set->modules[i].path);
            CHECK_MSG(!strcmp(u->modules[i].name, name) && u->modules[i].rank == want_rank,
                      "%s: module %d is %s at rank %d, want %s at rank %d", what, i,
                      u->modules[i].name, u->modules[i].rank, name, want_rank);
        }
        if (u) CHECK_OK(update_apply(n, u));
        CHECK_MSG(same_model(m, n), "%s: the merge is not base + its update", what);
        char path[TS_PATH];
        update *v = NULL;
        model *o = pt_model();
        ts_path(path, "%s.safetensors", what);
        if (u) CHECK_OK(update_write(u, path));
        CHECK_OK(update_read(&v, path, o));
        if (v) CHECK_OK(update_apply(o, v));
        CHECK_MSG(v && same_model(m, o), "%s: the update file does not make the merge", what);
        update_free(v);
        model_free(o);
    }
    aggregate_report_free(&rep);
    model_free(n);
    return m;
}

static void test_factors(void) {
    model *base = pt_model();
    real *before[8];
    /* Five members; ranks 2, 4, 3, 2, 2. */
    const int ranks[5] = {2, 4, 3, 2, 2};
    lora_set *sets[5];
    aggregate_member mb[5];
    for (int k = 0; k < 5; k++) {
        sets[k] = pt_adapter(base, TARGETS, ranks[k], 2.0 * ranks[k], 60 + (uint64_t)k, 0.2);
        mb[k] = (aggregate_member){"m", sets[k], 100 * (uint64_t)(k + 1), 1};
    }
    save_before(base, sets[0], before);
    policy p;
    policy_defaults(&p);

    /* The mean: rank Σ r_i = 13. */
    model_free(check_factors("mean", &p, mb, 5, 13, NULL));

    /* Clipping only scales a member's coefficient: still rank 13, and the
     * sum Σ p_i c_i s_i B_i A_i (double reference). */
    p.robust.clip_norm = 0.05;
    aggregate_report rep;
    model *r = pt_model();
    CHECK_OK(aggregate_round(&p, r, mb, 5, NULL, NULL, NULL, &rep));
    double f[5], want[768];
    int clipped = 0;
    for (int k = 0; k < 5; k++) {
        f[k] = rep.coef[k] * rep.clip[k];
        clipped += rep.clip[k] < 1;
    }
    CHECK_MSG(clipped >= 3, "clip_norm 0.05 clipped %d of 5", clipped);
    expected_of(sets, f, 5, want);
    /* The clipped update is small against W: compare W' with W + ΔW rounded
     * once to float, to 1 ulp. */
    int64_t off = 0, bad = 0;
    for (int i = 0; i < sets[0]->n_modules; i++) {
        const lora_module *mod = &sets[0]->modules[i];
        const real *w = pt_weight(r, mod->path);
        for (int j = 0; j < mod->out * mod->in; j++) {
            float ref = (float)((double)before[i][j] + want[off + j]);
            bad += fabsf(w[j] - ref) > fabsf(nextafterf(ref, INFINITY) - ref);
        }
        off += mod->out * mod->in;
    }
    CHECK_MSG(bad == 0, "clipped mean: %lld weights off by more than 1 ulp", (long long)bad);
    aggregate_report_free(&rep);
    model_free(r);
    model_free(check_factors("clipped mean", &p, mb, 5, 13, NULL));
    p.robust.clip_norm = 0;

    /* Multi-Krum (f = 1, m = 3): the selected members' ranks. */
    p.robust.rule = POLICY_RULE_KRUM;
    p.robust.krum_f = 1;
    p.robust.krum_m = 3;
    r = pt_model();
    CHECK_OK(aggregate_round(&p, r, mb, 5, NULL, NULL, NULL, &rep));
    int R = 0;
    for (int k = 0; k < 5; k++) R += rep.selected[k] ? ranks[k] : 0;
    CHECK(R > 0 && R < 13);
    aggregate_report_free(&rep);
    model_free(r);
    model_free(check_factors("krum", &p, mb, 5, R, NULL));
    p.robust.rule = POLICY_RULE_MEAN;

    /* The coordinate rules are dense; after them, the svd is rank 3. */
    p.robust.rule = POLICY_RULE_MEDIAN;
    model_free(check_factors("median", &p, mb, 5, 0, NULL));
    p.robust.rule = POLICY_RULE_TRIMMED_MEAN;
    p.robust.trim_beta = 0.2;
    model_free(check_factors("trimmed mean", &p, mb, 5, 0, NULL));
    p.merge.mode = POLICY_MERGE_SVD;
    p.merge.svd_rank = 3;
    model_free(check_factors("trimmed mean + svd", &p, mb, 5, 3, NULL));
    p.robust.rule = POLICY_RULE_MEAN;
    model_free(check_factors("svd", &p, mb, 5, 3, NULL));

    /* FedIT: one rank (2) and scale among the members it averages. */
    p.merge.mode = POLICY_MERGE_FEDIT;
    aggregate_member same_rank[3] = {mb[0], mb[3], mb[4]};
    model_free(check_factors("fedit", &p, same_rank, 3, 2, NULL));

    /* DP: the noise is dense; the svd of the noisy sum is rank 3. */
    p.merge.mode = POLICY_MERGE_EXACT;
    p.mode = POLICY_MODE_TEST;
    p.weighting.by = POLICY_WEIGHT_EQUAL;
    p.dp.enabled = 1;
    noise_source *ns;
    CHECK_OK(noise_open_seeded(&ns, &p, 3));
    model_free(check_factors("dp", &p, mb, 5, 0, ns));
    noise_free(ns);
    p.merge.mode = POLICY_MERGE_SVD;
    CHECK_OK(noise_open_seeded(&ns, &p, 3));
    model_free(check_factors("dp + svd", &p, mb, 5, 3, ns));
    noise_free(ns);

    free_before(sets[0], before);
    for (int k = 0; k < 5; k++) lora_free(sets[k]);
    model_free(base);
}

int main(void) {
    test_exact();
    test_fedit();
    test_svd_mode();
    test_dp();
    test_factors();
    return check_finish();
}
