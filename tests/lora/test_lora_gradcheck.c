/* test_lora_gradcheck — the LoRA backward against central finite
 * differences, in double precision (fl_lora_f64 on fl_model_f64).
 *
 * Every tiny config of the CPU backend's tests (tests/cpu/tiny.h: Llama with
 * GQA, with every bias, llama3 RoPE, a Mistral window, GPT-2, Qwen3, OLMo 2,
 * Apertus, BLOOM, Mixtral's experts and router) gets adapters
 * on all of its linear layers, with B drawn at random (PEFT's B = 0 would
 * hide A's gradient), per-module ranks and alphas (rank_pattern,
 * alpha_pattern), rsLoRA on some cases and dropout 0.25 in training mode on
 * others (the mask is replayed for each finite-difference forward by
 * resetting the dropout counter). Objective J = loss_sum / n_targets.
 * Checked, every element: dJ/dA and dJ/dB of every module (the adapter's own
 * gradients) and dJ/d(residual stream) at every point (which flows through
 * the adapters' dx). Error of a tensor: max |g − fd| / max(max |g|, max |fd|)
 * < 1e-6. Base weights keep grad == NULL throughout. */
#include "lora/lora.h"
#include "tests/check.h"
#include "tests/cpu/tiny.h"
#include "util/err.h"

#include <stdlib.h>

#define FD_EPS 1e-5
#define FD_TOL 1e-6

typedef struct {
    model *m;
    model_acts *a;
    lora_set *s;
    int32_t *tokens, *targets;
    double scale;
} gc_run;

static double objective(gc_run *r) {
    double sum = 0;
    int64_t n = 0;
    lora_set_dropout_counter(r->s, 0); /* the same masks in every forward */
    if (model_forward(r->m, r->a, r->tokens, r->targets, &sum, &n) != 0) {
        CHECK_MSG(0, "forward failed: %s", err_msg());
        return 0;
    }
    return sum * r->scale;
}

typedef struct {
    double maxg, maxfd, maxdiff;
} gc_err;

static void err_add(gc_err *e, double g, double fd) {
    e->maxg = fmax(e->maxg, fabs(g));
    e->maxfd = fmax(e->maxfd, fabs(fd));
    e->maxdiff = fmax(e->maxdiff, fabs(g - fd));
}

static double worst_rel;
static const model_acts *report_acts; /* the run being checked (experts' rows) */

static void report(const char *what, const char *name, const gc_err *e) {
    double den = fmax(e->maxg, e->maxfd);
    double rel = den > 0 ? e->maxdiff / den : 0;
    worst_rel = fmax(worst_rel, rel);
    CHECK_MSG(rel < FD_TOL, "%s: %s: relative error %.3g (max |g| %.3g, max |g - fd| %.3g)", what,
              name, rel, e->maxg, e->maxdiff);
    if (ts_unused_expert(report_acts, name)) { /* no row reached it: exactly zero */
        CHECK_MSG(e->maxg == 0 && e->maxfd == 0, "%s: %s: an expert no row chose has a gradient",
                  what, name);
        return;
    }
    CHECK_MSG(e->maxg > 1e-8, "%s: %s: gradient is zero", what, name);
}

static double fd_at(gc_run *r, real *data, int64_t j) {
    real orig = data[j];
    data[j] = orig + FD_EPS;
    double fp = objective(r);
    data[j] = orig - FD_EPS;
    double fm = objective(r);
    data[j] = orig;
    return (fp - fm) / (2 * FD_EPS);
}

static double fd_probe(gc_run *r, int point, int64_t j) {
    CHECK_OK(model_acts_set_probe(r->a, point, j, FD_EPS));
    double fp = objective(r);
    CHECK_OK(model_acts_set_probe(r->a, point, j, -FD_EPS));
    double fm = objective(r);
    CHECK_OK(model_acts_set_probe(r->a, -1, 0, 0));
    return (fp - fm) / (2 * FD_EPS);
}

/* A case's seed, from its name (FNV-1a) rather than its index, so that
 * cases added to tiny_cases do not reseed the others (a reseeded MoE case may
 * route a row within FD_EPS of a tie). */
static uint64_t case_seed(const tiny_case *tc) {
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = tc->name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h % 1000;
}

/* The adapter config of case i: all targets, and a variation per case. */
static void case_config(lora_config *c, const tiny_case *tc, int i) {
    lora_config_init(c);
    c->seed = 100 + case_seed(tc);
    c->rank = 2;
    c->alpha = 3;
    int gpt2 = tc->cfg.arch == MODEL_ARCH_GPT2, gated = tc->cfg.block.mlp == MODEL_MLP_GATED;
    int bloom = tc->cfg.arch == MODEL_ARCH_BLOOM, moe = tc->cfg.block.mlp == MODEL_MLP_MOE;
    int phi3 = tc->cfg.family == MODEL_FAMILY_PHI3; /* fused qkv_proj, gate_up_proj */
    CHECK_OK(lora_config_set_targets(
        c, gpt2    ? "c_attn,c_proj,c_fc"
           : bloom ? "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"
           : moe   ? "q_proj,k_proj,v_proj,o_proj,gate,w1,w2,w3"
           : phi3  ? "qkv_proj,o_proj,gate_up_proj,down_proj"
           : gated ? "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
                   : "q_proj,k_proj,v_proj,o_proj,up_proj,down_proj"));
    CHECK_OK(lora_config_add_rank_pattern(c,
                                          gpt2    ? "c_fc"
                                          : bloom ? "dense"
                                          : phi3  ? "qkv_proj"
                                                  : "k_proj",
                                          1));
    CHECK_OK(lora_config_add_rank_pattern(c,
                                          gpt2    ? "h\\.1\\.attn\\.c_attn"
                                          : bloom ? "h.1.mlp.dense_h_to_4h"
                                          : moe   ? "layers.1.block_sparse_moe.experts.1.w1"
                                          : phi3  ? "layers.1.mlp.gate_up_proj"
                                                  : "layers.1.mlp.up_proj",
                                          3));
    CHECK_OK(lora_config_add_alpha_pattern(c,
                                           gpt2    ? "mlp.c_proj"
                                           : bloom ? "dense_4h_to_h"
                                           : moe   ? "w2"
                                                   : "down_proj",
                                           5));
    c->use_rslora = i % 2;
    c->dropout = i % 2 == 0 ? 0.25 : 0;
}

static void run_case(const tiny_case *tc, int i) {
    gc_run r = {0};
    int N = tc->B * tc->T;
    lora_config cfg;
    case_config(&cfg, tc, i);
    CHECK_OK(model_create(&r.m, &tc->cfg));
    r.tokens = malloc((size_t)N * sizeof *r.tokens);
    r.targets = malloc((size_t)N * sizeof *r.targets);
    if (!r.m || !r.tokens || !r.targets) goto done;
    uint64_t sd = case_seed(tc);
    tiny_weights(r.m, 7 + sd);
    tiny_batch(r.tokens, r.targets, N, tc->cfg.vocab_size, 99 + sd);
    int64_t n_targets = 0;
    for (int n = 0; n < N; n++) n_targets += r.targets[n] != MODEL_IGNORE_INDEX;
    r.scale = 1.0 / (double)n_targets;

    CHECK_OK(lora_create(&r.s, r.m, &cfg));
    if (!r.s) goto done;
    uint64_t seed = 1234 + sd;
    for (int k = 0; k < r.s->n_modules; k++) {
        lora_module *mod = &r.s->modules[k];
        for (int64_t j = 0; j < mod->B.numel; j++) mod->B.data[j] = 0.5 * tiny_uniform(&seed);
    }
    /* The patterns took: k_proj / c_fc / qkv_proj at rank 1, one module at rank 3. */
    int r1 = 0, r3 = 0;
    for (int k = 0; k < r.s->n_modules; k++) {
        r1 += r.s->modules[k].rank == 1;
        r3 += r.s->modules[k].rank == 3;
    }
    CHECK(r1 == tc->cfg.num_layers && r3 == 1);
    CHECK_OK(lora_attach(r.s, r.m));
    CHECK_OK(lora_want_grads(r.s));
    lora_set_training(r.s, cfg.dropout > 0);
    CHECK_OK(model_acts_create(&r.a, r.m, tc->B, tc->T));
    if (!r.a) goto done;
    CHECK_OK(model_acts_keep_resid_grads(r.a));

    lora_zero_grads(r.s);
    objective(&r);
    /* Finite differences of size FD_EPS must not change the routing. */
    double margin = model_acts_router_margin(r.a);
    CHECK_MSG(margin > 1e-4, "%s: a row is routed within %.3g of a tie; pick another seed",
              tc->name, margin);
    report_acts = r.a;
    CHECK_OK(model_backward(r.m, r.a, r.scale));
    int base_grads = 0;
    for (int k = 0; k < r.m->n_params; k++) base_grads += r.m->params[k].grad != NULL;
    CHECK_MSG(base_grads == 0, "%s: %d base parameters have gradients", tc->name, base_grads);

    /* Keep the analytic values: the finite-difference forwards reuse the acts. */
    int P = MODEL_RESID_POINTS(&tc->cfg), C = tc->cfg.hidden_size;
    int64_t per_point = (int64_t)N * C;
    real *resid = malloc((size_t)(P * per_point) * sizeof *resid);
    if (!resid) goto done;
    for (int p = 0; p < P; p++)
        memcpy(resid + p * per_point, model_acts_resid_grad(r.a, p),
               (size_t)per_point * sizeof *resid);

    for (int t = 0; t < lora_num_tensors(r.s); t++) {
        model_param *p = lora_tensor(r.s, t);
        gc_err e = {0};
        for (int64_t j = 0; j < p->numel; j++) err_add(&e, p->grad[j], fd_at(&r, p->data, j));
        report(tc->name, p->name, &e);
    }
    for (int p = 0; p < P; p++) {
        gc_err e = {0};
        for (int64_t j = 0; j < per_point; j++)
            err_add(&e, resid[p * per_point + j], fd_probe(&r, p, j));
        char name[64];
        snprintf(name, sizeof name, "residual stream point %d", p);
        report(tc->name, name, &e);
    }
    printf("%-15s %d modules (dropout %.2f, rslora %d): gradients of every A, B and residual "
           "point checked\n",
           tc->name, r.s->n_modules, cfg.dropout, cfg.use_rslora);
    free(resid);
done:
    lora_config_free(&cfg);
    model_acts_free(r.a);
    lora_free(r.s);
    model_free(r.m);
    free(r.tokens);
    free(r.targets);
}

int main(void) {
    tiny_case cases[TINY_MAX_CASES];
    int n = tiny_cases(cases);
    for (int i = 0; i < n; i++) run_case(&cases[i], i);
    printf("worst relative error %.3g (bound %g)\n", worst_rel, FD_TOL);
    return check_finish();
}
