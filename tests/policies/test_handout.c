/* Start adapters in the aggregation (policies/handout.h): at equal starts and
 * one local step, FedIT's factor average equals the exact update to first
 * order.
 *
 * Three members start from the same adapter (A0, B0), each trains one real
 * step (train/trainer.h, AdamW: the first step moves every factor by about
 * lr, whatever the gradient's scale) on its own text, on the base offset by
 * −s·B0·A0 as a node trains it (lora/offset.h). With δ_i = (A_i − A0, B_i −
 * B0) of order lr,
 *
 *   exact  Σ p_i s (B_i A_i − B0 A0) = s Σ p_i (δB_i A0 + B0 δA_i + δB_i δA_i)
 *   fedit  s (B̄ Ā − B0 A0)        = s (δB̄ A0 + B0 δĀ + δB̄ δĀ)
 *
 * differ by s (Σ p_i δB_i δA_i − δB̄ δĀ), of order lr², against an update of
 * order lr: their relative difference must shrink with lr (a quarter of lr,
 * about a quarter of the difference), and vanish (to rounding) from a fresh
 * start (B0 = 0), where one step cannot move A at all. The updates come from
 * aggregate_compute with the start in aggregate_round_info, as the
 * aggregator merges them. */
#include "data/dataset.h"
#include "lora/offset.h"
#include "model/checkpoint.h"
#include "policies/aggregate.h"
#include "policies/handout.h"
#include "tests/policies/pol_test.h"
#include "tests/support/ts.h"
#include "train/trainer.h"

#define K 3
#define TARGETS "q_proj,v_proj,down_proj"

static const char *const texts[K] = {"the orbit of the moon around the earth takes about a month\n"
                                     "jupiter has dozens of moons and a great red spot\n"
                                     "a light year is the distance light travels in one year\n",
                                     "the heart pumps blood through the arteries and veins\n"
                                     "antibiotics treat bacterial infections but not viral ones\n"
                                     "the liver filters toxins from the blood stream\n",
                                     "a contract needs an offer, an acceptance and consideration\n"
                                     "the court held that the statute did not apply\n"
                                     "an appeal asks a higher court to review a decision\n"};

static char model_dir[TS_PATH], data[K][TS_PATH];

/* Member k's adapter after one step of lr from start g. */
static lora_set *train_one(const lora_set *g, int k, double lr) {
    model *m = NULL;
    lora_set *s = NULL;
    dataset *d = NULL;
    char tok[TS_PATH], out[TS_PATH];
    CHECK_OK(checkpoint_load(&m, model_dir));
    lora_config c;
    lora_config_init(&c);
    c.rank = g->modules[0].rank;
    c.alpha = g->modules[0].alpha;
    CHECK_OK(lora_config_set_targets(&c, TARGETS));
    CHECK_OK(lora_create(&s, m, &c));
    lora_config_free(&c);
    CHECK_OK(lora_copy_values(s, g));
    CHECK_OK(lora_offset_base(m, g));
    dataset_options o = {.path = data[k],
                         .tokenizer = ts_in(tok, model_dir, "tokenizer.json"),
                         .seq = 16,
                         .eos_id = m->cfg.eos_token_id,
                         .vocab_size = m->cfg.vocab_size};
    CHECK_OK(dataset_open(&d, &o));
    trainer_options t;
    trainer_options_init(&t);
    t.batch = 4;
    t.steps = 1;
    t.opt.lr = lr;
    t.save_every = 0;
    t.progress = NULL;
    static int runs;
    t.out_dir = ts_path(out, "train-%d", runs++);
    trainer_result res;
    CHECK_OK(trainer_run(m, s, d, &t, &res));
    dataset_free(d);
    model_free(m);
    return s;
}

/* The dense updates of the round (Σ over modules of B·A of the update). */
static double *dense(const update *u, int64_t *n) {
    int64_t total = 0;
    for (int i = 0; i < u->n_modules; i++) total += (int64_t)u->modules[i].out * u->modules[i].in;
    double *D = calloc((size_t)total, sizeof *D);
    int64_t off = 0;
    for (int i = 0; i < u->n_modules; i++) {
        const update_module *um = &u->modules[i];
        for (int o = 0; o < um->out; o++)
            for (int c = 0; c < um->in; c++) {
                double v = 0;
                for (int r = 0; r < um->rank; r++)
                    v += (double)um->B[(int64_t)o * um->rank + r] * um->A[(int64_t)r * um->in + c];
                D[off + (int64_t)o * um->in + c] = v;
            }
        off += (int64_t)um->out * um->in;
    }
    *n = total;
    return D;
}

static double *merged(policy_merge mode, lora_set *const *a, const lora_set *g, int64_t *n) {
    policy p;
    policy_defaults(&p);
    p.merge.mode = mode;
    model *base = NULL;
    CHECK_OK(checkpoint_load(&base, model_dir));
    aggregate_member mb[K];
    static const char *names[K] = {"uni-a", "uni-b", "uni-c"};
    for (int k = 0; k < K; k++) mb[k] = (aggregate_member){names[k], a[k], 100 + 50 * k, 1};
    aggregate_round_info info = {.round = 1, .roster_size = K, .start = g};
    update *u = NULL;
    CHECK_OK(aggregate_compute(&p, base, mb, K, &info, NULL, NULL, NULL, &u));
    double *D = u ? dense(u, n) : NULL;
    update_free(u);
    model_free(base);
    return D;
}

/* ‖fedit − exact‖ / ‖exact‖ after one step of lr from g. */
static double relative_gap(const lora_set *g, double lr) {
    lora_set *a[K];
    for (int k = 0; k < K; k++) a[k] = train_one(g, k, lr);
    int64_t ne = 0, nf = 0;
    double *E = merged(POLICY_MERGE_EXACT, a, g, &ne), *F = merged(POLICY_MERGE_FEDIT, a, g, &nf);
    double diff = 0, norm = 0;
    CHECK(E && F && ne == nf && ne > 0);
    for (int64_t j = 0; E && F && j < ne; j++) {
        diff += (F[j] - E[j]) * (F[j] - E[j]);
        norm += E[j] * E[j];
    }
    free(E);
    free(F);
    for (int k = 0; k < K; k++) lora_free(a[k]);
    return norm > 0 ? sqrt(diff / norm) : INFINITY;
}

int main(void) {
    ts_path(model_dir, "base");
    CHECK_OK(ts_model_dir(model_dir, "llama", 0.1, 3, NULL));
    for (int k = 0; k < K; k++) CHECK_OK(ts_write(ts_path(data[k], "data-%d.txt", k), texts[k]));
    model *m = NULL;
    CHECK_OK(checkpoint_load(&m, model_dir));
    /* A continued start (B0 != 0) and a fresh one (B0 = 0), the same A0. */
    lora_set *cont = pt_adapter(m, TARGETS, 4, 8, 11, 0.2),
             *fresh = pt_adapter(m, TARGETS, 4, 8, 11, 0.2);
    for (int i = 0; cont && i < cont->n_modules; i++)
        for (int64_t j = 0; j < cont->modules[i].B.numel; j++) {
            cont->modules[i].B.data[j] *= 0.25f;
            fresh->modules[i].B.data[j] = 0;
        }
    double lr = 2e-3;
    double g1 = relative_gap(cont, lr), g4 = relative_gap(cont, lr / 4);
    printf("continued start: relative gap %.3g at lr %g, %.3g at lr %g (ratio %.3f)\n", g1, lr, g4,
           lr / 4, g4 / g1);
    CHECK_MSG(g1 > 0 && g1 < 0.05, "the gap at lr %g is %g", lr, g1);
    CHECK_MSG(g4 / g1 > 0.18 && g4 / g1 < 0.32,
              "a quarter of the lr gives %g of the gap, not about a quarter: not first order",
              g4 / g1);
    double g0 = relative_gap(fresh, lr);
    printf("fresh start: relative gap %.3g\n", g0);
    CHECK_MSG(g0 < 1e-5, "from a fresh shared start one step of fedit is not exact: %g", g0);
    lora_free(cont);
    lora_free(fresh);
    model_free(m);
    return check_finish();
}
