/* test_mergekit — mergekit's methods on hand-computed task vectors, DARE's
 * drop statistics, and `fedlora merge` end to end on two PEFT adapters of
 * the llama, apertus, phi3, bloom and mixtral fixture bases
 * (tests/fixtures/peft/<case> and a changed copy),
 * each method's output model checked against a direct computation. */
#include "lora/delta.h"
#include "lora/peft.h"
#include "policies/mergekit.h"
#include "tests/support/ts_model.h"

/* Two task vectors τ_1 = (4, −2, 1, 0.5), τ_2 = (−1, 3, 2, −0.5), weights (1, 0.5). */
static void run_hand(mergekit_method m, double density, double lambda, const double *want) {
    real tau[8] = {4, -2, 1, 0.5f, -1, 3, 2, -0.5f}, delta[4];
    double w[2] = {1, 0.5}, d[2] = {density, density};
    mergekit_options o = {m, w, d, lambda, 0};
    CHECK_OK(mergekit_module(&o, 2, 4, tau, 0, "hand", delta));
    for (int j = 0; j < 4; j++)
        CHECK_MSG(fabs(delta[j] - want[j]) < 1e-6, "%s [%d]: %g, want %g", mergekit_method_name(m),
                  j, delta[j], want[j]);
}

static void test_hand(void) {
    /* linear: Σ w τ / Σ w = (3.5, −0.5, 2, 0.25) / 1.5 */
    const double lin[4] = {3.5 / 1.5, -0.5 / 1.5, 2 / 1.5, 0.25 / 1.5};
    run_hand(MERGEKIT_LINEAR, 1, 1, lin);
    /* task arithmetic, λ = 2: 2 · Σ w τ */
    const double ta[4] = {7, -1, 4, 0.5};
    run_hand(MERGEKIT_TASK_ARITHMETIC, 1, 2, ta);
    /* TIES, density 0.5: τ_1 → (4, −2, 0, 0), τ_2 → (0, 3, 2, 0); weighted
     * (4, −2, 0, 0) and (0, 1.5, 1, 0); elected signs of the sum (4, −.5, 1, 0):
     * + − + +; agreeing values over their weights: 4/1, −2/1, 1/0.5, 0. */
    const double ties[4] = {4, -2, 2, 0};
    run_hand(MERGEKIT_TIES, 0.5, 1, ties);
    const double ties3[4] = {12, -6, 6, 0};
    run_hand(MERGEKIT_TIES, 0.5, 3, ties3);
    /* density 1 drops nothing: dare_linear is Σ w τ; dare_ties elects signs
     * (+ − + +) on the full vectors and sums the agreeing ones undivided:
     * 4, −2, 1 + 1, 0.5. */
    const double dl[4] = {3.5, -0.5, 2, 0.25};
    run_hand(MERGEKIT_DARE_LINEAR, 1, 1, dl);
    const double dt[4] = {4, -2, 2, 0.5};
    run_hand(MERGEKIT_DARE_TIES, 1, 1, dt);

    mergekit_method m;
    CHECK(mergekit_parse_method("dare_ties", &m) == 0 && m == MERGEKIT_DARE_TIES);
    CHECK(mergekit_parse_method("slerp", &m) == -1);
    real tau[8] = {1, 2, 3, 4, 5, 6, 7, 8}, delta[4];
    double w[2] = {1, 1}, d[2] = {0.2, 0.2};
    mergekit_options o = {MERGEKIT_TIES, w, d, 1, 0};
    CHECK_FAILS_WITH(mergekit_module(&o, 2, 4, tau, 0, "q", delta), "keeps no value of q");
}

static void test_dare_stats(void) {
    enum { N = 200000 };
    real *tau = malloc(2 * N * sizeof *tau), *delta = malloc(N * sizeof *delta);
    real *again = malloc(N * sizeof *again);
    double w[1] = {1}, d[1] = {0.3};
    mergekit_options o = {MERGEKIT_DARE_LINEAR, w, d, 1, 1234};
    for (int j = 0; j < N; j++) tau[j] = 1;
    CHECK_OK(mergekit_module(&o, 1, N, tau, 5, "m", delta));
    int kept = 0, bad = 0;
    for (int j = 0; j < N; j++) {
        kept += delta[j] != 0;
        bad += delta[j] != 0 && fabsf(delta[j] - (real)(1 / 0.3)) > 1e-6f;
    }
    double sd = sqrt(N * 0.3 * 0.7);
    printf("DARE kept %d of %d at density 0.3 (want %.0f ± %.0f), each rescaled by 1/0.3\n", kept,
           N, N * 0.3, 5 * sd);
    CHECK(fabs(kept - N * 0.3) <= 5 * sd);
    CHECK(bad == 0);
    for (int j = 0; j < N; j++) tau[j] = 1;
    CHECK_OK(mergekit_module(&o, 1, N, tau, 5, "m", again));
    CHECK(memcmp(delta, again, N * sizeof *delta) == 0); /* the same seed, the same masks */
    o.seed = 1235;
    for (int j = 0; j < N; j++) tau[j] = 1;
    CHECK_OK(mergekit_module(&o, 1, N, tau, 5, "m", again));
    CHECK(memcmp(delta, again, N * sizeof *delta) != 0);
    free(tau);
    free(delta);
    free(again);
}

/* `fedlora merge` on the PEFT fixture adapter `peft` of the hf fixture
 * `hf` (and a changed copy); usage errors once. */
static void test_cli(const char *hf, const char *peft, int usage) {
    const char *fx = getenv("FEDLORA_FIXTURES");
    char base[TS_PATH], a1[TS_PATH], a2[TS_PATH], out[TS_PATH];
    snprintf(base, sizeof base, "%s/hf/%s", fx, hf);
    snprintf(a1, sizeof a1, "%s/peft/%s/adapter", fx, peft);
    ts_path(a2, "adapter2_%s", peft);
    model *m = NULL;
    lora_set *s1 = NULL, *s2 = NULL;
    CHECK_OK(checkpoint_load(&m, base));
    CHECK_OK(peft_load(&s1, m, a1));
    /* The second adapter: the first one changed (B scaled by −0.7, A shifted). */
    CHECK_OK(peft_load(&s2, m, a1));
    if (!m || !s1 || !s2) return;
    for (int i = 0; i < s2->n_modules; i++) {
        lora_module *mod = &s2->modules[i];
        for (int64_t j = 0; j < mod->B.numel; j++) mod->B.data[j] *= -0.7f;
        for (int64_t j = 0; j < mod->A.numel; j++) mod->A.data[j] += 0.05f * (real)((j % 7) - 3);
    }
    CHECK_OK(peft_save(s2, a2));

    struct {
        const char *method, *weights, *density, *lambda;
        mergekit_method m;
        double w[2], d, l;
    } cases[] = {
        {"linear", "0.75,0.25", NULL, NULL, MERGEKIT_LINEAR, {0.75, 0.25}, 1, 1},
        {"task_arithmetic", "1,0.5", NULL, "0.8", MERGEKIT_TASK_ARITHMETIC, {1, 0.5}, 1, 0.8},
        {"ties", "1,1", "0.4", "1.5", MERGEKIT_TIES, {1, 1}, 0.4, 1.5},
        {"dare_linear", "0.6,0.4", "0.5", NULL, MERGEKIT_DARE_LINEAR, {0.6, 0.4}, 0.5, 1},
        {"dare_ties", NULL, "0.7", NULL, MERGEKIT_DARE_TIES, {1, 1}, 0.7, 1},
    };
    lora_set *sets[2] = {s1, s2};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char name[96];
        snprintf(name, sizeof name, "merged_%s_%s", peft, cases[c].method);
        ts_path(out, "%s", name);
        const char *args[32];
        int n = 0;
        args[n++] = ts_bin();
        args[n++] = "merge";
        args[n++] = "--method";
        args[n++] = cases[c].method;
        if (cases[c].weights) args[n++] = "--weights", args[n++] = cases[c].weights;
        if (cases[c].density) args[n++] = "--density", args[n++] = cases[c].density;
        if (cases[c].lambda) args[n++] = "--lambda", args[n++] = cases[c].lambda;
        if (cases[c].m == MERGEKIT_DARE_LINEAR || cases[c].m == MERGEKIT_DARE_TIES)
            args[n++] = "--seed", args[n++] = "7";
        args[n++] = "--model";
        args[n++] = base;
        args[n++] = "--out";
        args[n++] = out;
        args[n++] = a1;
        args[n++] = a2;
        args[n] = NULL;
        int rc = ts_run_v(name, args);
        CHECK_RUN_OK(rc, name);
        model *got = NULL, *want = NULL;
        CHECK_OK(checkpoint_load(&got, out));
        CHECK_OK(checkpoint_load(&want, base));
        if (!got || !want) continue;
        double dens[2] = {cases[c].d, cases[c].d};
        mergekit_options o = {cases[c].m, cases[c].w, dens, cases[c].l, 7};
        CHECK_OK(mergekit_merge(want, sets, 2, &o));
        double diff = ts_worst_model(got, want, NULL).diff;
        CHECK_MSG(diff == 0, "%s %s: fedlora merge differs from mergekit_merge by %g", peft,
                  cases[c].method, diff);
        if (cases[c].m == MERGEKIT_LINEAR || cases[c].m == MERGEKIT_TASK_ARITHMETIC) {
            /* Independently: W + f_1 τ_1 + f_2 τ_2, τ_k = s B_k A_k in double. */
            double sw = cases[c].w[0] + cases[c].w[1];
            double f1 =
                cases[c].m == MERGEKIT_LINEAR ? cases[c].w[0] / sw : cases[c].l * cases[c].w[0];
            double f2 =
                cases[c].m == MERGEKIT_LINEAR ? cases[c].w[1] / sw : cases[c].l * cases[c].w[1];
            double worst = 0;
            for (int i = 0; i < s1->n_modules; i++) {
                const lora_module *m1 = &s1->modules[i], *m2 = lora_find(s2, m1->path);
                char wname[MODEL_NAME_MAX];
                snprintf(wname, sizeof wname, "%s.weight", m1->path);
                const real *w0 = model_find_param(m, wname)->data;
                const real *wg = model_find_param(got, wname)->data;
                for (int o2 = 0; o2 < m1->out; o2++)
                    for (int j = 0; j < m1->in; j++) {
                        double t1 = 0, t2 = 0;
                        for (int k = 0; k < m1->rank; k++) {
                            t1 +=
                                (double)m1->B.data[o2 * m1->rank + k] * m1->A.data[k * m1->in + j];
                            t2 +=
                                (double)m2->B.data[o2 * m2->rank + k] * m2->A.data[k * m2->in + j];
                        }
                        double e = w0[o2 * m1->in + j] + f1 * m1->scale * t1 + f2 * m2->scale * t2;
                        worst = fmax(worst, fabs(e - wg[o2 * m1->in + j]));
                    }
            }
            CHECK_MSG(worst < 1e-5, "%s %s: off the direct computation by %g", peft,
                      cases[c].method, worst);
        }
        /* The merge changed the adapted weights and nothing else. */
        model_param *emb = model_find_param(got, m->wte->name);
        CHECK(emb && memcmp(emb->data, m->wte->data, (size_t)emb->numel * sizeof(real)) == 0);
        CHECK(ts_worst_model(got, m, NULL).diff > 1e-4);
        model_free(got);
        model_free(want);
    }

    if (!usage) goto done;
    /* Usage errors. */
    ts_path(out, "merged_bad");
    int rc = ts_run("bad1", "merge", "--method", "linear", "--density", "0.5", "--model", base,
                    "--out", out, a1, a2, NULL);
    CHECK_RUN_FAILS(rc, "bad1", "--density applies to ties");
    rc = ts_run("bad2", "merge", "--method", "slerp", "--model", base, "--out", out, a1, NULL);
    CHECK_RUN_FAILS(rc, "bad2", "unknown --method 'slerp'");
    rc = ts_run("bad3", "merge", "--method", "ties", "--weights", "1,2,3", "--model", base, "--out",
                out, a1, a2, NULL);
    CHECK_RUN_FAILS(rc, "bad3", "--weights gives more than the 2 values");
    rc = ts_run("bad4", "merge", "--method", "ties", "--model", base, "--out", out, NULL);
    CHECK(rc == 2);
done:
    lora_free(s1);
    lora_free(s2);
    model_free(m);
}

int main(void) {
    test_hand();
    test_dare_stats();
    test_cli("llama_gqa", "llama", 1);
    /* Apertus: QK-norm weights and xIELU's scalars (0-dimensional buffers)
     * stream through the merge unchanged */
    test_cli("apertus", "apertus", 0);
    /* BLOOM's fused query_key_value; Mixtral's router and experts */
    test_cli("bloom", "bloom", 0);
    test_cli("mixtral", "mixtral", 0);
    /* Phi-3: the fused qkv_proj and gate_up_proj merged as one module each */
    test_cli("phi3", "phi3", 0);
    return check_finish();
}
