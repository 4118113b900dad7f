/* Start adapters with real processes (docs/protocol.md, "Start adapters";
 * docs/policies.md, "Where a round starts"):
 *
 *   fedit (shared starts)  every member of a round starts from the same
 *        adapter, bit for bit: the fresh one of the round's public seed,
 *        with B = 0. With one local step A cannot move (its gradient is
 *        s·Bᵀ·…, zero while B is), so every member's trained A must equal
 *        that start's A bit for bit — and with own starts (merge.start
 *        "own", today's independent variant) the members' A differ;
 *   fedit + global (FedAvg of A and B, continued)  from round 2 every
 *        member is handed the same adapter, and it is Σ p_i (A_i, B_i) of
 *        the previous round's members (p_i the round's weights), and the
 *        version moved by s·(B'A' − B0A0);
 *   exact + global  the next start is the rank-r truncated SVD of
 *        s·B0·A0 + ΔW (ΔW the round's version minus its base), re-balanced:
 *        A's rows orthogonal with norm 1/√3, the residual orthogonal to both
 *        factors' spaces and no larger than the smallest kept singular
 *        value (checked with an independent power iteration, in double). */
#include "aggregator/handout.h"
#include "lora/peft.h"
#include "model/safetensors.h"
#include "tests/federation/fed_test.h"

#define RANK 4
#define NODES 3

/* The adapter at path (a PEFT weights file) on m with the federation's
 * targets, rank and alpha. */
static lora_set *load_weights(const model *m, const char *path) {
    lora_config c;
    lora_config_init(&c);
    c.rank = RANK;
    c.alpha = 2 * RANK;
    lora_set *s = NULL;
    safetensors_file *f = NULL;
    int ok = lora_config_set_targets(&c, "q_proj,v_proj,down_proj") == 0 &&
             lora_create(&s, m, &c) == 0 && safetensors_open(&f, path) == 0 &&
             peft_load_weights(s, f, path) == 0;
    safetensors_close(f);
    lora_config_free(&c);
    CHECK_MSG(ok, "%s: %s", path, err_msg());
    if (!ok) {
        lora_free(s);
        return NULL;
    }
    return s;
}

static void node_file(const ft_fed *f, int i, const char *rel, char *out) {
    ts_in(out, f->node[i].state, rel);
}

static model *load_version(const ft_fed *f, int round, int base) {
    json_t *j = ft_round_metrics(f, round);
    json_t *v = j ? json_object_get(j, base ? "base" : "version") : NULL;
    char dir[TS_PATH], rel[128];
    snprintf(rel, sizeof rel, "versions/%s", json_is_string(v) ? json_string_value(v) : "none");
    json_decref(j);
    model *m = NULL;
    CHECK_OK(checkpoint_load(&m, ts_in(dir, f->agg_state, rel)));
    return m;
}

static int run_federation(ft_fed *f, const char *tag, const char *policy_text, int rounds,
                          int steps) {
    char pol[TS_PATH];
    ts_path(pol, "%s.policy.cfg", tag);
    CHECK_OK(ts_write(pol, policy_text));
    ft_options o;
    ft_options_init(&o);
    o.rounds = rounds;
    o.steps = steps;
    o.rank = RANK;
    o.policy = pol;
    if (ft_setup(f, tag, NODES, &o) != 0 || ft_start_aggregator(f) != 0) {
        CHECK_MSG(0, "%s: %s", tag, err_msg());
        return -1;
    }
    ft_run_nodes(f, f->endpoint, 180);
    for (int r = 1; r <= rounds; r++)
        CHECK_MSG(ft_count_accepted(f, r) == NODES, "%s round %d: %d deltas merged", tag, r,
                  ft_count_accepted(f, r));
    return 0;
}

/* Every node's start file of round r holds the same bytes; 1 when so. */
static int same_start_files(const ft_fed *f, int r) {
    char p0[TS_PATH], pi[TS_PATH], rel[64];
    snprintf(rel, sizeof rel, "rounds/%d/start.safetensors", r);
    node_file(f, 0, rel, p0);
    char *a = NULL;
    size_t la;
    int same = fio_read_all(p0, 1u << 26, &a, &la) == 0;
    for (int i = 1; same && i < f->n; i++) {
        node_file(f, i, rel, pi);
        char *b = NULL;
        size_t lb;
        same = fio_read_all(pi, 1u << 26, &b, &lb) == 0 && la == lb && memcmp(a, b, la) == 0;
        free(b);
    }
    free(a);
    return same;
}

static int tensors_equal(const model_param *x, const model_param *y) {
    return x->numel == y->numel && memcmp(x->data, y->data, (size_t)x->numel * sizeof(real)) == 0;
}

static void test_shared(void) {
    ft_fed f;
    if (run_federation(&f, "shared",
                       "merge = { mode = \"fedit\"; };\n"
                       "rounds = { quorum = 3; deadline_s = 120; };\n",
                       2, 1) != 0)
        return;
    model *m = load_version(&f, 1, 1);
    uint8_t consortium[32];
    CHECK_OK(payload_consortium_id("fed-test", consortium));
    for (int r = 1; m && r <= 2; r++) {
        CHECK_MSG(same_start_files(&f, r), "round %d: the nodes' start adapters differ", r);
        char path[TS_PATH], rel[64];
        snprintf(rel, sizeof rel, "rounds/%d/start.safetensors", r);
        node_file(&f, 0, rel, path);
        lora_set *g = load_weights(m, path);
        /* The round's public fresh adapter, made here independently. */
        lora_config c;
        lora_config_init(&c);
        c.rank = RANK;
        c.alpha = 2 * RANK;
        c.seed = agg_start_seed(consortium, (uint64_t)r);
        lora_set *fresh = NULL;
        CHECK_OK(lora_config_set_targets(&c, "q_proj,v_proj,down_proj"));
        CHECK_OK(lora_create(&fresh, m, &c));
        lora_config_free(&c);
        for (int k = 0; g && fresh && k < g->n_modules; k++) {
            CHECK(tensors_equal(&g->modules[k].A, &fresh->modules[k].A));
            int zero = 1;
            for (int64_t j = 0; j < g->modules[k].B.numel; j++)
                zero &= g->modules[k].B.data[j] == 0;
            CHECK_MSG(zero, "round %d: the start's B of %s is not zero", r, g->modules[k].path);
        }
        /* One step: each member's trained A is the start's, bit for bit. */
        for (int i = 0; g && i < f.n; i++) {
            char dir[TS_PATH];
            snprintf(rel, sizeof rel, "rounds/%d/train", r);
            node_file(&f, i, rel, dir);
            lora_set *a = NULL;
            CHECK_OK(peft_load(&a, m, dir));
            for (int k = 0; a && k < a->n_modules; k++)
                CHECK_MSG(tensors_equal(&a->modules[k].A, &g->modules[k].A),
                          "round %d: %s's A of %s is not the start's", r, f.node[i].name,
                          a->modules[k].path);
            lora_free(a);
        }
        lora_free(fresh);
        lora_free(g);
    }
    model_free(m);
    ft_teardown(&f);
}

/* The independent variant: the members' A differ (so the check above can fail). */
static void test_own(void) {
    ft_fed f;
    if (run_federation(&f, "own",
                       "merge = { mode = \"fedit\"; start = \"own\"; };\n"
                       "rounds = { quorum = 3; deadline_s = 120; };\n",
                       1, 1) != 0)
        return;
    model *m = load_version(&f, 1, 1);
    lora_set *a[NODES] = {0};
    for (int i = 0; m && i < f.n; i++) {
        char dir[TS_PATH];
        node_file(&f, i, "rounds/1/train", dir);
        CHECK_OK(peft_load(&a[i], m, dir));
        char start[TS_PATH];
        node_file(&f, i, "rounds/1/start.safetensors", start);
        CHECK_MSG(!fio_exists(start), "no start is handed out, yet %s has one", f.node[i].name);
    }
    for (int i = 1; i < f.n && a[0] && a[i]; i++)
        CHECK(!tensors_equal(&a[0]->modules[0].A, &a[i]->modules[0].A));
    for (int i = 0; i < NODES; i++) lora_free(a[i]);
    model_free(m);
    ft_teardown(&f);
}

static double weight_of(const ft_fed *f, int r, const char *name) {
    json_t *j = ft_round_metrics(f, r);
    json_t *w = j ? json_object_get(json_object_get(j, "weights"), name) : NULL;
    double v = json_is_number(w) ? json_number_value(w) : NAN;
    json_decref(j);
    return v;
}

/* max |(W_after − W_before) − s(B'A' − B0A0)| over the module, relative to
 * the largest |s(B'A' − B0A0)|. */
static double version_step_error(const model *before, const model *after, const lora_module *g0,
                                 const lora_module *g1) {
    char name[MODEL_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", g0->path);
    const real *w0 = model_find_param(before, name)->data,
               *w1 = model_find_param(after, name)->data;
    double worst = 0, scale = 0;
    int r = g0->rank;
    for (int o = 0; o < g0->out; o++)
        for (int c = 0; c < g0->in; c++) {
            double p = 0;
            for (int k = 0; k < r; k++)
                p += (double)g1->B.data[o * r + k] * g1->A.data[k * g0->in + c] -
                     (double)g0->B.data[o * r + k] * g0->A.data[k * g0->in + c];
            p *= g0->scale;
            scale = fmax(scale, fabs(p));
            worst = fmax(worst, fabs((double)w1[o * g0->in + c] - w0[o * g0->in + c] - p));
        }
    return scale > 0 ? worst / scale : worst;
}

/* Round r of a continued federation as the checks see it: its start g, the
 * next round's start (the same file at every node, checked), and the
 * round's base and version. */
typedef struct {
    lora_set *g, *next;
    model *before, *after;
} round_view;

static int round_view_load(const ft_fed *f, const model *m, int r, round_view *v) {
    CHECK_MSG(same_start_files(f, r + 1), "round %d: the nodes' start adapters differ", r + 1);
    char path[TS_PATH], rel[64];
    snprintf(rel, sizeof rel, "rounds/%d/start.safetensors", r + 1);
    node_file(f, 0, rel, path);
    v->next = load_weights(m, path);
    snprintf(rel, sizeof rel, "rounds/%d/start.safetensors", r);
    node_file(f, 0, rel, path);
    v->g = load_weights(m, path);
    v->before = load_version(f, r, 1);
    v->after = load_version(f, r, 0);
    return v->g && v->next && v->before && v->after ? 0 : -1;
}

static void round_view_free(round_view *v) {
    lora_free(v->g);
    lora_free(v->next);
    model_free(v->before);
    model_free(v->after);
}

/* A 3-round continued federation under `policy`; check(f, m, r, v) for
 * rounds 1 and 2, each with the next round's start (m: round 1's base, for
 * the adapters' shapes). */
typedef void (*round_check)(const ft_fed *f, const model *m, int r, const round_view *v);

static void continued_rounds(const char *tag, const char *policy, round_check check) {
    ft_fed f;
    if (run_federation(&f, tag, policy, 3, 2) != 0) return;
    model *m = load_version(&f, 1, 1);
    for (int r = 1; m && r < 3; r++) {
        round_view v;
        if (round_view_load(&f, m, r, &v) == 0) check(&f, m, r, &v);
        round_view_free(&v);
    }
    model_free(m);
    ft_teardown(&f);
}

/* FedAvg continued: the next start is Σ p_i (A_i, B_i). */
static void check_fedavg_round(const ft_fed *f, const model *m, int r, const round_view *v) {
    lora_set *next = v->next, *g = v->g, *a[NODES] = {0};
    char rel[64];
    double p[NODES], psum = 0;
    for (int i = 0; i < f->n; i++) {
        char dir[TS_PATH];
        snprintf(rel, sizeof rel, "rounds/%d/train", r);
        node_file(f, i, rel, dir);
        CHECK_OK(peft_load(&a[i], m, dir));
        psum += p[i] = weight_of(f, r, f->node[i].name);
    }
    CHECK_NEAR(psum, 1, 1e-9);
    /* A' = Σ p_i A_i and B' = Σ p_i B_i, in double here. */
    double worst = 0;
    for (int k = 0; next && a[NODES - 1] && k < next->n_modules; k++)
        for (int t = 0; t < 2; t++) {
            const model_param *got = t ? &next->modules[k].B : &next->modules[k].A;
            for (int64_t j = 0; j < got->numel; j++) {
                double want = 0, mag = 0;
                for (int i = 0; i < f->n; i++) {
                    const model_param *x = t ? &a[i]->modules[k].B : &a[i]->modules[k].A;
                    want += p[i] * x->data[j];
                    mag += fabs(p[i] * x->data[j]);
                }
                worst = fmax(worst, fabs(got->data[j] - want) / (mag + 1e-30));
            }
        }
    CHECK_MSG(worst < 1e-6, "round %d's start is not Σ p_i (A_i, B_i): worst relative %g", r + 1,
              worst);
    /* The version moved by s(B'A' − B0A0). */
    for (int k = 0; k < g->n_modules; k++) {
        double e = version_step_error(v->before, v->after, &g->modules[k], &next->modules[k]);
        CHECK_MSG(e < 1e-4,
                  "round %d, %s: the version moved by other than s(B'A' - B0A0) "
                  "(relative %g)",
                  r, g->modules[k].path, e);
    }
    for (int i = 0; i < NODES; i++) lora_free(a[i]);
}

static void test_fedavg(void) {
    continued_rounds("fedavg",
                     "merge = { mode = \"fedit\"; start = \"global\"; };\n"
                     "rounds = { quorum = 3; deadline_s = 120; };\n",
                     check_fedavg_round);
}

/* The largest singular value of E (out, in), by power iteration on EᵀE. */
static double sigma_max(const double *E, int out, int in) {
    double *v = malloc((size_t)in * sizeof *v), *u = malloc((size_t)out * sizeof *u), s = 0;
    for (int c = 0; c < in; c++) v[c] = 1.0 + 0.01 * c;
    for (int it = 0; it < 500; it++) {
        double nv = 0;
        for (int o = 0; o < out; o++) {
            u[o] = 0;
            for (int c = 0; c < in; c++) u[o] += E[(int64_t)o * in + c] * v[c];
        }
        for (int c = 0; c < in; c++) {
            v[c] = 0;
            for (int o = 0; o < out; o++) v[c] += E[(int64_t)o * in + c] * u[o];
            nv += v[c] * v[c];
        }
        nv = sqrt(nv);
        if (nv == 0) break;
        s = sqrt(nv);
        for (int c = 0; c < in; c++) v[c] /= nv;
    }
    free(v);
    free(u);
    return s;
}

static void check_refactor(const lora_module *g0, const lora_module *g1, const model *before,
                           const model *after, int round) {
    int out = g0->out, in = g0->in, r = g0->rank;
    double s = g0->scale, c = 0.57735026918962576;
    char name[MODEL_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", g0->path);
    const real *w0 = model_find_param(before, name)->data,
               *w1 = model_find_param(after, name)->data;
    double *M = calloc((size_t)out * in, sizeof *M), mnorm = 0;
    for (int o = 0; o < out; o++)
        for (int k = 0; k < in; k++) {
            double v = (double)w1[o * in + k] - w0[o * in + k];
            for (int j = 0; j < r; j++)
                v += s * (double)g0->B.data[o * r + j] * g0->A.data[j * in + k];
            /* E = M − s B'A' */
            double p = 0;
            for (int j = 0; j < r; j++) p += (double)g1->B.data[o * r + j] * g1->A.data[j * in + k];
            M[o * in + k] = v - s * p;
            mnorm = fmax(mnorm, fabs(v));
        }
    /* A' rows orthogonal with norm c. */
    double gram = 0;
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) {
            double d = 0;
            for (int k = 0; k < in; k++)
                d += (double)g1->A.data[a * in + k] * g1->A.data[b * in + k];
            gram = fmax(gram, fabs(d - (a == b ? c * c : 0)));
        }
    CHECK_MSG(gram < 1e-5, "round %d, %s: A'A'ᵀ is not I/3 (%g)", round, g0->path, gram);
    /* The residual E is orthogonal to A' (E·A'ᵀ = 0) and to B' (B'ᵀE = 0). */
    double ea = 0, be = 0, bmax = 0;
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) {
            double d = 0;
            for (int k = 0; k < in; k++) d += M[o * in + k] * g1->A.data[j * in + k];
            ea = fmax(ea, fabs(d));
            bmax = fmax(bmax, fabs(g1->B.data[o * r + j]));
        }
    for (int j = 0; j < r; j++)
        for (int k = 0; k < in; k++) {
            double d = 0;
            for (int o = 0; o < out; o++) d += (double)g1->B.data[o * r + j] * M[o * in + k];
            be = fmax(be, fabs(d));
        }
    CHECK_MSG(ea < 1e-4 * mnorm * c * in && be < 1e-4 * mnorm * bmax * out,
              "round %d, %s: the residual is not orthogonal to the start (%g, %g; |M| %g)", round,
              g0->path, ea, be, mnorm);
    /* The kept singular values s·c·‖B'_j‖ are the largest: none below σ_max(E). */
    double kept = INFINITY;
    for (int j = 0; j < r; j++) {
        double n2 = 0;
        for (int o = 0; o < out; o++) n2 += (double)g1->B.data[o * r + j] * g1->B.data[o * r + j];
        kept = fmin(kept, s * c * sqrt(n2));
    }
    double rest = sigma_max(M, out, in);
    CHECK_MSG(kept >= rest * (1 - 1e-3),
              "round %d, %s: a kept singular value %g is below the "
              "residual's %g",
              round, g0->path, kept, rest);
    free(M);
}

/* exact continued: the next start is the truncated SVD of s·B0·A0 + ΔW. */
static void check_exact_round(const ft_fed *f, const model *m, int r, const round_view *v) {
    (void)f;
    (void)m;
    for (int k = 0; k < v->g->n_modules; k++)
        check_refactor(&v->g->modules[k], &v->next->modules[k], v->before, v->after, r);
}

static void test_exact_global(void) {
    continued_rounds("exactg",
                     "merge = { mode = \"exact\"; start = \"global\"; svd_oversample = 64; };\n"
                     "rounds = { quorum = 3; deadline_s = 120; };\n",
                     check_exact_round);
}

int main(void) {
    test_shared();
    test_own();
    test_fedavg();
    test_exact_global();
    return check_finish();
}
