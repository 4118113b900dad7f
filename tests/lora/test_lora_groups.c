/* test_lora_groups.c — the shared A products of linears that take the same
 * input (lora/lora_hook.c, "Input groups"), against the same hooks with the
 * groups switched off (one product per module), on a tiny Llama's q, k, v:
 *   - in the model's order (forward q, k, v; backward q, k, v on one dx) the
 *     group is used (its backward waits for v) and y, dx, dA, dB agree;
 *   - in orders that break the contract (backward v, k, q; a backward left
 *     waiting by a forward or by another group's backward; a forward of k
 *     first) every result is still the per-module one;
 * and a whole training step of the model (every family block path that
 * groups: q, k, v and gate, up) gives the same loss and gradients.
 * (The finite-difference check, test_lora_gradcheck, runs the grouped path
 * too: its cases without dropout have uneven ranks within a group.) */
#include "lora/lora.h"
#include "lora/lora_hook.h"
#include "tests/check.h"
#include "tests/support/ts_model.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { N = 24, NQ = 3 };

static const char *const qkv_names[NQ] = {"model.layers.0.self_attn.q_proj",
                                          "model.layers.0.self_attn.k_proj",
                                          "model.layers.0.self_attn.v_proj"};

static void fill(real *p, int64_t n, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (real)((double)(seed >> 11) / 9007199254740992.0 - 0.5);
    }
}

typedef struct {
    lora_set *s;
    lora_module *mod[NQ];
    real *x, *dy[NQ], *y[NQ], *dx;
    int in;
} fixture;

/* A tiny Llama with LoRA on every linear, B random (PEFT starts it at zero,
 * which would hide every dx and dA term), k at another rank. */
static model *setup(fixture *f) {
    memset(f, 0, sizeof *f);
    model *m = ts_preset_model("llama", 7);
    if (!m) return NULL;
    lora_config c;
    lora_config_init(&c);
    c.rank = 4;
    c.alpha = 8;
    CHECK_OK(
        lora_config_set_targets(&c, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"));
    CHECK_OK(lora_config_add_rank_pattern(&c, "k_proj", 2));
    CHECK_OK(lora_create(&f->s, m, &c));
    lora_config_free(&c);
    if (!f->s) return m;
    for (int i = 0; i < f->s->n_modules; i++)
        fill(f->s->modules[i].B.data, f->s->modules[i].B.numel, 1000 + (uint64_t)i);
    CHECK_OK(lora_attach(f->s, m));
    CHECK_OK(lora_want_grads(f->s));
    CHECK_OK(lora_reserve(f->s, N));
    for (int i = 0; i < NQ; i++) f->mod[i] = lora_find(f->s, qkv_names[i]);
    CHECK(f->mod[0] && f->mod[1] && f->mod[2]);
    f->in = f->mod[0]->in;
    f->x = malloc((size_t)N * f->in * sizeof(real));
    f->dx = malloc((size_t)N * f->in * sizeof(real));
    fill(f->x, (int64_t)N * f->in, 1);
    for (int i = 0; i < NQ; i++) {
        int out = f->mod[i]->out;
        f->dy[i] = malloc((size_t)N * out * sizeof(real));
        f->y[i] = malloc((size_t)N * out * sizeof(real));
        fill(f->dy[i], (int64_t)N * out, 10 + (uint64_t)i);
    }
    return m;
}

static void teardown(fixture *f, model *m) {
    free(f->x);
    free(f->dx);
    for (int i = 0; i < NQ; i++) {
        free(f->dy[i]);
        free(f->y[i]);
    }
    lora_free(f->s);
    model_free(m);
}

static void fwd(fixture *f, int i) {
    const model_linear *l = f->mod[i]->linear;
    l->adapter->forward(l->adapter_ctx, f->x, f->y[i], N);
}

static void bwd(fixture *f, int i) {
    const model_linear *l = f->mod[i]->linear;
    l->adapter->backward(l->adapter_ctx, f->x, f->dy[i], f->dx, N);
}

/* What the hooks produced: y of q, k, v, dx, and their dA, dB. */
typedef struct {
    real *v;
    int64_t n;
} result;

static result collect(const fixture *f) {
    int64_t n = (int64_t)N * f->in;
    for (int i = 0; i < NQ; i++)
        n += (int64_t)N * f->mod[i]->out + f->mod[i]->A.numel + f->mod[i]->B.numel;
    result r = {malloc((size_t)n * sizeof(real)), n};
    real *p = r.v;
    memcpy(p, f->dx, (size_t)N * f->in * sizeof(real));
    p += (int64_t)N * f->in;
    for (int i = 0; i < NQ; i++) {
        const lora_module *m = f->mod[i];
        memcpy(p, f->y[i], (size_t)N * m->out * sizeof(real));
        p += (int64_t)N * m->out;
        memcpy(p, m->A.grad, (size_t)m->A.numel * sizeof(real));
        p += m->A.numel;
        memcpy(p, m->B.grad, (size_t)m->B.numel * sizeof(real));
        p += m->B.numel;
    }
    return r;
}

static void reset(fixture *f) {
    lora_zero_grads(f->s);
    memset(f->dx, 0, (size_t)N * f->in * sizeof(real));
    for (int i = 0; i < NQ; i++) memset(f->y[i], 0, (size_t)N * f->mod[i]->out * sizeof(real));
}

/* |got − want| ≤ 1e-5 · (1 + |want|) everywhere: the same sums, rounded
 * in another order. */
static void check_same(const result *got, const result *want, const char *what) {
    double worst = 0;
    for (int64_t i = 0; i < want->n; i++) {
        double d = fabs((double)got->v[i] - want->v[i]) / (1 + fabs((double)want->v[i]));
        if (!(d <= worst)) worst = d; /* NaN too */
    }
    CHECK_MSG(worst <= 1e-5, "%s: worst relative difference %g from one product per module", what,
              worst);
}

/* The order a block runs them, optionally with the group switched off. */
static result run_model_order(fixture *f, model *m, int grouped) {
    if (!grouped) lora_hook_detach(f->s);
    reset(f);
    for (int i = 0; i < NQ; i++) fwd(f, i);
    for (int i = 0; i < NQ; i++) {
        bwd(f, i);
        if (grouped && i < NQ - 1)
            CHECK_MSG(f->s->pending != NULL, "backward of member %d: the group does not wait", i);
    }
    CHECK(f->s->pending == NULL);
    result r = collect(f);
    if (!grouped) CHECK_OK(lora_hook_attach(f->s, m));
    return r;
}

static void test_hook_orders(void) {
    fixture f;
    model *m = setup(&f);
    if (!f.s) {
        teardown(&f, m);
        return;
    }
    /* one group per layer for q, k, v and one for gate, up */
    CHECK(f.s->n_groups == 2 * m->cfg.num_layers);
    CHECK(f.mod[0]->group >= 0 && f.mod[0]->group == f.mod[2]->group && f.mod[1]->group_pos == 1);
    result want = run_model_order(&f, m, 0);
    result got = run_model_order(&f, m, 1);
    check_same(&got, &want, "model order");
    free(got.v);

    /* backward v, k, q: v and k alone; q waits for members that ran
     * already, until the next backward call (another group's) finishes it */
    lora_module *gate = lora_find(f.s, "model.layers.0.mlp.gate_proj");
    CHECK(gate != NULL);
    real *gx = calloc((size_t)N * f.in, sizeof(real)),
         *gdx = calloc((size_t)N * f.in, sizeof(real));
    real *gdy = NULL, *gy = NULL;
    if (gate) {
        gdy = calloc((size_t)N * gate->out, sizeof(real));
        gy = calloc((size_t)N * gate->out, sizeof(real));
    }
    if (!gate || !gx || !gdx || !gdy || !gy) {
        CHECK_MSG(0, "out of memory or no gate_proj");
        goto done;
    }
    reset(&f);
    for (int i = 0; i < NQ; i++) fwd(&f, i);
    gate->linear->adapter->forward(gate, gx, gy, N);
    for (int i = NQ - 1; i >= 0; i--) bwd(&f, i);
    CHECK(f.s->pending == &f.s->groups[f.mod[0]->group]);
    gate->linear->adapter->backward(gate, gx, gdy, gdx, N); /* dy 0: adds nothing here */
    got = collect(&f);
    check_same(&got, &want, "backward v, k, q");
    free(got.v);

    /* q, k wait; gate's backward finishes them alone before it reuses the
     * scratch, then v runs alone: all counted */
    reset(&f);
    for (int i = 0; i < NQ; i++) fwd(&f, i);
    gate->linear->adapter->forward(gate, gx, gy, N);
    bwd(&f, 0);
    bwd(&f, 1);
    CHECK(f.s->pending == &f.s->groups[f.mod[0]->group]);
    gate->linear->adapter->backward(gate, gx, gdy, gdx, N);
    CHECK(f.s->pending == &f.s->groups[gate->group]);
    bwd(&f, 2);
    got = collect(&f);
    check_same(&got, &want, "q, k finished by gate's backward, v alone");
    free(got.v);

    /* a forward while q, k wait (their backward abandoned by an error):
     * what waits is dropped, nothing written later */
    bwd(&f, 0);
    bwd(&f, 1);
    gate->linear->adapter->forward(gate, gx, gy, N);
    CHECK(f.s->pending == NULL);

    /* forward k first: it computes its own u; q's forward then makes all
     * three, v follows q; the model-order backward gives the same */
    reset(&f);
    fwd(&f, 1);
    memset(f.y[1], 0, (size_t)N * f.mod[1]->out * sizeof(real));
    fwd(&f, 0);
    fwd(&f, 2);
    fwd(&f, 1); /* out of turn: its own u again */
    for (int i = 0; i < NQ; i++) bwd(&f, i);
    got = collect(&f);
    check_same(&got, &want, "forward k, q, v, k");
    free(got.v);
done:
    free(gx);
    free(gdx);
    free(gdy);
    free(gy);
    free(want.v);
    teardown(&f, m);
}

/* A training step of the whole model: loss and every LoRA gradient with
 * groups as without. */
static void test_model_step(void) {
    const char *archs[] = {"llama", "qwen3"};
    for (size_t k = 0; k < sizeof archs / sizeof *archs; k++) {
        model *m = ts_preset_model(archs[k], 11);
        if (!m) continue;
        lora_config c;
        lora_config_init(&c);
        c.rank = 3;
        c.alpha = 6;
        CHECK_OK(lora_config_set_targets(&c, "all-linear"));
        lora_set *s = NULL;
        CHECK_OK(lora_create(&s, m, &c));
        lora_config_free(&c);
        model_acts *a = NULL;
        int B = 2, T = 9;
        int32_t tok[18], tgt[18];
        for (int i = 0; i < B * T; i++) {
            tok[i] = (i * 37 + 5) % m->cfg.vocab_size;
            tgt[i] = (i * 53 + 11) % m->cfg.vocab_size;
        }
        double loss[2] = {0, 0};
        real *grads[2] = {NULL, NULL};
        int64_t np = s ? lora_num_params(s) : 0;
        if (s) {
            for (int i = 0; i < s->n_modules; i++)
                fill(s->modules[i].B.data, s->modules[i].B.numel, 500 + (uint64_t)i);
            CHECK_OK(lora_attach(s, m));
            CHECK_OK(lora_want_grads(s));
            CHECK_OK(model_acts_create(&a, m, B, T));
        }
        for (int grouped = 0; a && grouped < 2; grouped++) {
            if (!grouped) lora_hook_detach(s);
            lora_zero_grads(s);
            double sum;
            int64_t n;
            CHECK_OK(model_forward(m, a, tok, tgt, &sum, &n));
            CHECK_OK(model_backward(m, a, 1.0f / (real)n));
            loss[grouped] = sum / (double)n;
            grads[grouped] = malloc((size_t)np * sizeof(real));
            for (int i = 0, off = 0; i < lora_num_tensors(s); i++) {
                model_param *p = lora_tensor(s, i);
                memcpy(grads[grouped] + off, p->grad, (size_t)p->numel * sizeof(real));
                off += (int)p->numel;
            }
            if (!grouped) CHECK_OK(lora_hook_attach(s, m));
        }
        if (a) {
            CHECK_MSG(s->n_groups > 0, "%s: no input group", archs[k]);
            CHECK_MSG(fabs(loss[0] - loss[1]) <= 1e-6 * fabs(loss[0]), "%s: loss %.9g vs %.9g",
                      archs[k], loss[1], loss[0]);
            result g = {grads[1], np}, w = {grads[0], np};
            check_same(&g, &w, archs[k]);
        }
        free(grads[0]);
        free(grads[1]);
        model_acts_free(a);
        lora_free(s);
        model_free(m);
    }
}

int main(void) {
    test_hook_orders();
    test_model_step();
    return check_finish();
}
