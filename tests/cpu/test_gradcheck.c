/* test_gradcheck — the CPU backward against central finite differences, in
 * double precision (fl_model_f64), on tiny configs of both architectures.
 *
 * Objective J = loss_sum / n_targets (the mean loss, backward scale
 * 1/n_targets). For every parameter tensor, every element is checked; for the
 * residual stream, every element at every point (model_acts_set_probe
 * perturbs it inside the forward). Error of a tensor: max |g − fd| divided by
 * max(max |g|, max |fd|) over that tensor; it must stay below 1e-6. */
#include "model/cpu/cpu.h"
#include "model/model.h"
#include "tests/check.h"
#include "tests/cpu/tiny.h"
#include "util/err.h"

#include <stdlib.h>
#include <time.h>

#define FD_EPS 1e-5
#define FD_TOL 1e-6

typedef struct {
    model *m;
    model_acts *a;
    int N;
    int32_t *tokens, *targets;
    double scale;
} gc_run;

static double objective(gc_run *r) {
    double sum = 0;
    int64_t n = 0;
    if (model_forward(r->m, r->a, r->tokens, r->targets, &sum, &n) != 0) {
        CHECK_MSG(0, "forward failed: %s", err_msg());
        return 0;
    }
    return sum * r->scale;
}

/* Forward and backward once at the current weights (analytic gradients). */
static void analytic(gc_run *r) {
    model_zero_grads(r->m);
    double sum;
    int64_t n;
    CHECK_OK(model_forward(r->m, r->a, r->tokens, r->targets, &sum, &n));
    CHECK_OK(model_backward(r->m, r->a, r->scale));
}

typedef struct {
    double maxg, maxfd, maxdiff;
} gc_err;

static void err_add(gc_err *e, double g, double fd) {
    if (fabs(g) > e->maxg) e->maxg = fabs(g);
    if (fabs(fd) > e->maxfd) e->maxfd = fabs(fd);
    if (fabs(g - fd) > e->maxdiff) e->maxdiff = fabs(g - fd);
}

static double worst_rel;
static const model_acts *report_acts; /* the run being checked (experts' rows) */

static void report(const char *what, const char *name, const gc_err *e) {
    double den = e->maxg > e->maxfd ? e->maxg : e->maxfd;
    double rel = den > 0 ? e->maxdiff / den : 0;
    if (rel > worst_rel) worst_rel = rel;
    CHECK_MSG(rel < FD_TOL, "%s: %s: relative error %.3g (max |g| %.3g, max |g - fd| %.3g)", what,
              name, rel, e->maxg, e->maxdiff);
    /* An identically zero gradient would pass trivially: every tensor here
     * influences the loss, so refuse it, except an expert no row chose,
     * whose gradient must then be exactly zero, and so its differences. */
    if (ts_unused_expert(report_acts, name)) {
        CHECK_MSG(e->maxg == 0 && e->maxfd == 0, "%s: %s: an expert no row chose has a gradient",
                  what, name);
        return;
    }
    CHECK_MSG(e->maxg > 1e-6, "%s: %s: gradient is zero", what, name);
}

/* dJ/d data[j] by central differences. */
static double fd_at(gc_run *r, real *data, int64_t j) {
    real orig = data[j];
    data[j] = orig + FD_EPS;
    double fp = objective(r);
    data[j] = orig - FD_EPS;
    double fm = objective(r);
    data[j] = orig;
    return (fp - fm) / (2 * FD_EPS);
}

/* Every element of the gradient of every param whose grad is set; analytic()
 * must have run (finite-difference forwards do not touch grads). */
static void check_params(const char *what, gc_run *r) {
    model *m = r->m;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->grad) continue;
        gc_err e = {0};
        for (int64_t j = 0; j < p->numel; j++) err_add(&e, p->grad[j], fd_at(r, p->data, j));
        report(what, p->name, &e);
    }
}

/* Every element of the residual stream's gradient at every point. */
static void check_stream(const char *what, gc_run *r) {
    const model_config *c = &r->m->cfg;
    int64_t len = (int64_t)r->N * c->hidden_size;
    CHECK_OK(model_acts_keep_resid_grads(r->a));
    analytic(r);
    for (int p = 0; p < MODEL_RESID_POINTS(c); p++) {
        const real *g = model_acts_resid_grad(r->a, p);
        CHECK(g != NULL);
        if (!g) return;
        gc_err e = {0};
        for (int64_t j = 0; j < len; j++) {
            CHECK_OK(model_acts_set_probe(r->a, p, j, FD_EPS));
            double fp = objective(r);
            CHECK_OK(model_acts_set_probe(r->a, p, j, -FD_EPS));
            double fm = objective(r);
            err_add(&e, g[j], (fp - fm) / (2 * FD_EPS));
        }
        CHECK_OK(model_acts_set_probe(r->a, -1, 0, 0));
        char name[64];
        snprintf(name, sizeof name, "residual stream point %d", p);
        report(what, name, &e);
    }
}

/* ---- a test adapter: y += x Mᵀ, M (out, in) ----------------------------------- */

typedef struct {
    int in, out;
    real *M, *dM;
} test_adapter;

static void ta_forward(void *ctx, const real *x, real *y, int N) {
    test_adapter *t = ctx;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < t->out; o++) {
            double s = 0;
            for (int i = 0; i < t->in; i++) s += x[(int64_t)n * t->in + i] * t->M[o * t->in + i];
            y[(int64_t)n * t->out + o] += (real)s;
        }
}

static void ta_backward(void *ctx, const real *x, const real *dy, real *dx, int N) {
    test_adapter *t = ctx;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < t->out; o++) {
            real g = dy[(int64_t)n * t->out + o];
            for (int i = 0; i < t->in; i++) {
                dx[(int64_t)n * t->in + i] += g * t->M[o * t->in + i];
                t->dM[o * t->in + i] += g * x[(int64_t)n * t->in + i];
            }
        }
}

static const model_adapter_ops ta_ops = {ta_forward, ta_backward};

/* ---- the cases --------------------------------------------------------------- */

static int setup(gc_run *r, const tiny_case *tc, uint64_t seed) {
    memset(r, 0, sizeof *r);
    report_acts = NULL;
    if (model_create(&r->m, &tc->cfg) != 0) return -1;
    tiny_weights(r->m, seed);
    r->N = tc->B * tc->T;
    r->tokens = malloc((size_t)r->N * sizeof *r->tokens);
    r->targets = malloc((size_t)r->N * sizeof *r->targets);
    if (!r->tokens || !r->targets) return err_set("out of memory");
    tiny_batch(r->tokens, r->targets, r->N, tc->cfg.vocab_size, seed + 1);
    if (model_acts_create(&r->a, r->m, tc->B, tc->T) != 0) return -1;
    double sum;
    int64_t n;
    if (model_forward(r->m, r->a, r->tokens, r->targets, &sum, &n) != 0) return -1;
    r->scale = 1.0 / (double)n;
    /* Routing is piecewise constant: the steps below move a router
     * probability by ~1e-5 at most, which must not change any choice. */
    double margin = model_acts_router_margin(r->a);
    CHECK_MSG(margin > 1e-4, "%s: seed %llu routes a row within %.3g of a tie; pick another seed",
              tc->name, (unsigned long long)seed, margin);
    report_acts = r->a;
    return 0;
}

static void teardown(gc_run *r) {
    model_acts_free(r->a);
    model_free(r->m);
    free(r->tokens);
    free(r->targets);
}

/* Every weight gradient and every residual-stream gradient. */
static void case_full(const tiny_case *tc) {
    gc_run r;
    CHECK_OK(setup(&r, tc, 11));
    if (r.a) {
        CHECK_OK(model_want_all_grads(r.m));
        analytic(&r);
        check_params(tc->name, &r);
        check_stream(tc->name, &r);
    }
    teardown(&r);
}

static int is_selected(const char *name, const char *const *sel) {
    for (; *sel; sel++)
        if (strcmp(name, *sel) == 0) return 1;
    return 0;
}

/* Asking for a few gradients computes exactly those, with the same values as
 * asking for all of them; the other params' grads stay NULL. */
static void case_partial(const tiny_case *tc, const char *const *sel) {
    gc_run r;
    CHECK_OK(setup(&r, tc, 12));
    if (!r.a) {
        teardown(&r);
        return;
    }
    CHECK_OK(model_want_all_grads(r.m));
    analytic(&r);
    real *saved[64] = {0};
    CHECK(r.m->n_params <= 64);
    if (r.m->n_params > 64) return;
    for (int i = 0; i < r.m->n_params; i++) {
        model_param *p = &r.m->params[i];
        if (is_selected(p->name, sel)) {
            saved[i] = malloc((size_t)p->numel * sizeof(real));
            memcpy(saved[i], p->grad, (size_t)p->numel * sizeof(real));
        }
        free(p->grad);
        p->grad = NULL;
    }
    for (int i = 0; i < r.m->n_params; i++)
        if (saved[i]) CHECK_OK(model_param_want_grad(&r.m->params[i]));
    analytic(&r);
    int found = 0;
    for (int i = 0; i < r.m->n_params; i++) {
        model_param *p = &r.m->params[i];
        if (!saved[i]) {
            CHECK_MSG(p->grad == NULL, "%s: %s got a gradient it did not ask for", tc->name,
                      p->name);
            continue;
        }
        found++;
        double maxdiff = 0;
        for (int64_t j = 0; j < p->numel; j++)
            if (fabs(p->grad[j] - saved[i][j]) > maxdiff) maxdiff = fabs(p->grad[j] - saved[i][j]);
        CHECK_MSG(maxdiff == 0, "%s: %s differs by %g when asked for alone", tc->name, p->name,
                  maxdiff);
        free(saved[i]);
    }
    int want = 0;
    while (sel[want]) want++;
    CHECK_MSG(found == want, "%s: %d of the %d selected params exist", tc->name, found, want);
    teardown(&r);
}

/* A frozen base (no param grads) with test adapters on some linears, as LoRA
 * uses the hook: the adapters' gradients and the residual-stream gradients by
 * finite differences. */
static void case_adapter(const tiny_case *tc) {
    gc_run r;
    CHECK_OK(setup(&r, tc, 13));
    if (!r.a) {
        teardown(&r);
        return;
    }
    /* the first projection, a second linear of the block, the last layer's
     * down projection; for experts the router and an expert's w2 */
    model_layer *L0 = &r.m->layers[0], *L1 = &r.m->layers[1];
    model_linear *sites[3] = {L0->qkv.w ? &L0->qkv : &L0->q,
                              L0->moe.experts ? &L0->moe.router
                              : L0->v.w       ? &L0->v
                                              : &L1->up,
                              L1->moe.experts ? &L1->moe.experts[3 * 1 + 1] : &L1->down};
    test_adapter ad[3];
    uint64_t s = 99;
    for (int i = 0; i < 3; i++) {
        model_linear *l = sites[i];
        ad[i].in = l->in;
        ad[i].out = l->out;
        ad[i].M = malloc((size_t)l->in * l->out * sizeof(real));
        ad[i].dM = calloc((size_t)l->in * l->out, sizeof(real));
        for (int j = 0; j < l->in * l->out; j++) ad[i].M[j] = (real)(0.2 * tiny_uniform(&s));
        l->adapter = &ta_ops;
        l->adapter_ctx = &ad[i];
    }
    analytic(&r);
    for (int i = 0; i < 3; i++) {
        gc_err e = {0};
        for (int j = 0; j < ad[i].in * ad[i].out; j++)
            err_add(&e, ad[i].dM[j], fd_at(&r, ad[i].M, j));
        char name[64];
        snprintf(name, sizeof name, "adapter %d", i);
        report(tc->name, name, &e);
    }
    for (int i = 0; i < r.m->n_params; i++) CHECK(r.m->params[i].grad == NULL);
    check_stream(tc->name, &r);
    for (int i = 0; i < 3; i++) {
        sites[i]->adapter = NULL;
        free(ad[i].M);
        free(ad[i].dM);
    }
    teardown(&r);
}

/* The attention alone with ALiBi under soft-capped scores, by finite
 * differences of L = Σ dO ⊙ O in q, k and v. No family has both (a model
 * with the cap outside Gemma 2 is refused), but the attention function
 * takes any combination, and its backward must add the bias before the cap
 * as its forward does. */
static void attention_alibi_softcap(void) {
    enum { B = 1, T = 70, H = 2, KV = 1, D = 4, W = (H + 2 * KV) * D };
    real qkv[B * T * W], dout[B * T * H * D], out[B * T * H * D], lse[B * H * T];
    real dqkv[B * T * W], slopes[H];
    static real scratch[CPU_ATTN_SCRATCH(T)];
    uint64_t s = 5;
    for (int i = 0; i < B * T * W; i++) qkv[i] = (real)(2 * tiny_uniform(&s));
    for (int i = 0; i < B * T * H * D; i++) dout[i] = (real)tiny_uniform(&s);
    cpu_alibi_slopes(slopes, H);
    cpu_attn at = {.B = B,
                   .T = T,
                   .H = H,
                   .KV = KV,
                   .D = D,
                   .alibi = slopes,
                   .scale = (real)0.5,
                   .softcap = (real)3.0,
                   .threads = 1,
                   .scratch = scratch};
    const real *q = qkv, *k = qkv + H * D, *v = qkv + (H + KV) * D;
    cpu_attention_forward(&at, q, W, k, W, v, W, out, lse);
    cpu_attention_backward(&at, q, W, k, W, v, W, out, dout, lse, dqkv, dqkv + H * D,
                           dqkv + (H + KV) * D);
    gc_err e = {0};
    for (int i = 0; i < B * T * W; i += 7) {
        real keep = qkv[i], eps = (real)1e-5;
        double l[2];
        for (int side = 0; side < 2; side++) {
            qkv[i] = keep + (side ? -eps : eps);
            cpu_attention_forward(&at, q, W, k, W, v, W, out, lse);
            l[side] = 0;
            for (int j = 0; j < B * T * H * D; j++) l[side] += (double)dout[j] * out[j];
        }
        qkv[i] = keep;
        err_add(&e, dqkv[i], (l[0] - l[1]) / (2 * (double)eps));
    }
    report_acts = NULL;
    report("attention", "alibi+softcap dq, dk, dv", &e);
}

int main(void) {
    clock_t t0 = clock();
    tiny_case cases[TINY_MAX_CASES];
    int n = tiny_cases(cases);
    for (int i = 0; i < n; i++) case_full(&cases[i]);

    const char *llama_sel[] = {"model.layers.1.self_attn.q_proj.weight",
                               "model.layers.0.self_attn.v_proj.bias",
                               "model.layers.0.mlp.up_proj.bias",
                               "model.layers.1.post_attention_layernorm.weight",
                               "lm_head.weight",
                               NULL};
    case_partial(&cases[1], llama_sel);
    const char *gpt2_sel[] = {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.ln_2.bias",
                              "transformer.wpe.weight", NULL};
    case_partial(&cases[4], gpt2_sel);
    const char *mixtral_sel[] = {"model.layers.0.block_sparse_moe.gate.weight",
                                 "model.layers.1.block_sparse_moe.experts.2.w3.weight",
                                 "model.layers.0.input_layernorm.weight", NULL};
    case_partial(&cases[12], mixtral_sel);

    attention_alibi_softcap();

    case_adapter(&cases[0]);
    case_adapter(&cases[4]);
    case_adapter(&cases[11]); /* BLOOM: query_key_value, dense_h_to_4h */
    case_adapter(&cases[12]); /* Mixtral: the router, an expert */

    printf("worst relative error %.3g over %d cases (%.2f s CPU)\n", worst_rel, n,
           (double)(clock() - t0) / CLOCKS_PER_SEC);
    return check_finish();
}
