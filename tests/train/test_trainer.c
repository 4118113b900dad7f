/* test_trainer — train/trainer.c in process:
 *   - gradient accumulation: B=4 K=1, B=2 K=2 and B=1 K=4 take the same rows
 *     and give the same losses, gradient norms and adapter, on instruction
 *     data whose micro-batches have very different numbers of response
 *     tokens (so a mean of per-micro-batch means would differ; checked);
 *   - metrics.jsonl: every field, the warmup + cosine learning rate;
 *   - checkpoints: the files, `latest`, one step directory kept; a resume
 *     from the last checkpoint redoes only the final eval; a resume with
 *     another configuration is refused, naming the difference. */
#include "data/dataset.h"
#include "lora/adamw.h"
#include "lora/lora.h"
#include "tests/support/ts_model.h"
#include "train/trainer.h"

#include <jansson.h>
#include <math.h>

static char model_dir[TS_PATH], data_path[TS_PATH], tok_path[TS_PATH];

typedef struct {
    model *m;
    lora_set *s;
    dataset *d;
} setup;

static int make_setup(setup *st, int T) {
    memset(st, 0, sizeof *st);
    lora_config lc;
    lora_config_init(&lc);
    lc.rank = 4;
    lc.alpha = 8;
    lc.seed = 11;
    dataset_options o = {.path = data_path,
                         .tokenizer = tok_path,
                         .seq = T,
                         .eos_id = 256,
                         .vocab_size = 320,
                         .eval_fraction = 0.2,
                         .seed = 11};
    int rc = checkpoint_load(&st->m, model_dir);
    if (rc == 0) rc = lora_config_set_targets(&lc, "all-linear");
    if (rc == 0) rc = lora_create(&st->s, st->m, &lc);
    if (rc == 0) rc = dataset_open(&st->d, &o);
    lora_config_free(&lc);
    return rc;
}

static void free_setup(setup *st) {
    dataset_free(st->d);
    lora_free(st->s);
    model_free(st->m);
}

static void base_options(trainer_options *o, const char *out) {
    trainer_options_init(o);
    o->steps = 3;
    o->opt.lr = 1e-2;
    o->opt.max_grad_norm = 0; /* the raw norms are compared */
    o->save_every = 0;
    o->seed = 5;
    o->out_dir = out;
    o->progress = NULL;
}

/* Field `key` of each JSON line of a metrics file that has it, in order. */
static int metric(const char *out_dir, const char *key, double *v, int max) {
    char path[TS_PATH];
    ts_in(path, out_dir, "metrics.jsonl");
    char *text = ts_read(path, NULL);
    int n = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line && n < max;
         line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        CHECK_MSG(j != NULL, "metrics line '%s' is not JSON", line);
        json_t *x = j ? json_object_get(j, key) : NULL;
        if (x) v[n++] = json_number_value(x);
        json_decref(j);
    }
    free(text);
    return n;
}

static void test_grad_accum(void) {
    const int BK[3][2] = {{4, 1}, {2, 2}, {1, 4}};
    double loss[3][3], norm[3][3];
    real *adapter[3] = {0};
    int64_t n_params = 0;
    for (int c = 0; c < 3; c++) {
        setup st;
        char out[TS_PATH], name[64];
        snprintf(name, sizeof name, "accum_%d", c);
        CHECK_OK(make_setup(&st, 32));
        trainer_options o;
        base_options(&o, ts_path(out, "%s", name));
        o.batch = BK[c][0];
        o.grad_accum = BK[c][1];
        trainer_result res;
        if (st.d) CHECK_OK(trainer_run(st.m, st.s, st.d, &o, &res));
        CHECK(metric(out, "loss", loss[c], 3) == 3);
        CHECK(metric(out, "grad_norm", norm[c], 3) == 3);
        n_params = st.s ? lora_num_params(st.s) : 0;
        adapter[c] = malloc(sizeof(real) * (size_t)(n_params ? n_params : 1));
        for (int i = 0, k = 0; st.s && i < lora_num_tensors(st.s); i++) {
            model_param *p = lora_tensor(st.s, i);
            memcpy(adapter[c] + k, p->data, sizeof(real) * (size_t)p->numel);
            k += (int)p->numel;
        }
        free_setup(&st);
    }
    for (int c = 1; c < 3; c++) {
        for (int s = 0; s < 3; s++) {
            CHECK_NEAR(loss[c][s], loss[0][s], 1e-5 * loss[0][s]);
            CHECK_NEAR(norm[c][s], norm[0][s], 1e-4 * norm[0][s]);
        }
        double worst = 0;
        for (int64_t i = 0; i < n_params; i++) {
            double d = fabs((double)adapter[c][i] - adapter[0][i]);
            if (d > worst) worst = d;
        }
        CHECK_MSG(worst < 1e-5, "B,K = %d,%d: adapter differs by %g", BK[c][0], BK[c][1], worst);
    }
    for (int c = 0; c < 3; c++) free(adapter[c]);

    /* The case discriminates: the two micro-batches of B=2 K=2 have different
     * target counts, so averaging their means would weight tokens
     * differently; recompute both gradients here from the fresh adapter. */
    setup st;
    CHECK_OK(make_setup(&st, 32));
    model_acts *acts = NULL;
    dataset_order ord = {0};
    if (st.d && model_acts_create(&acts, st.m, 2, 32) == 0 &&
        dataset_order_init(&ord, dataset_num_rows(st.d, DATASET_TRAIN), 5) == 0 &&
        lora_want_grads(st.s) == 0 && lora_attach(st.s, st.m) == 0) {
        int32_t in[2][64], tg[2][64];
        int64_t counts[2] = {0, 0};
        for (int k = 0; k < 2; k++) {
            for (int b = 0; b < 2; b++) {
                size_t row = dataset_order_row(&ord, (uint64_t)(2 * k + b));
                CHECK_OK(dataset_row(st.d, DATASET_TRAIN, row, in[k] + 32 * b, tg[k] + 32 * b));
            }
            for (int i = 0; i < 64; i++) counts[k] += tg[k][i] != MODEL_IGNORE_INDEX;
        }
        CHECK_MSG(counts[0] != counts[1], "micro-batch targets %lld and %lld", (long long)counts[0],
                  (long long)counts[1]);
        model_param *params[64];
        int n = lora_num_tensors(st.s);
        for (int i = 0; i < n && i < 64; i++) params[i] = lora_tensor(st.s, i);
        double norms[2], sum = 0;
        for (int scheme = 0; scheme < 2;
             scheme++) { /* 0: mean over all targets; 1: mean of means */
            lora_zero_grads(st.s);
            for (int k = 0; k < 2; k++) {
                double ls, scale = scheme == 0 ? 1.0 / (double)(counts[0] + counts[1])
                                               : 0.5 / (double)counts[k];
                int64_t nt;
                CHECK_OK(model_forward(st.m, acts, in[k], tg[k], &ls, &nt));
                CHECK_OK(model_backward(st.m, acts, scale));
                if (scheme == 0) sum += ls;
            }
            norms[scheme] = adamw_clip_grad_norm(params, n, 0);
        }
        CHECK_NEAR(sum / (double)(counts[0] + counts[1]), loss[0][0], 1e-5 * loss[0][0]);
        CHECK_NEAR(norms[0], norm[0][0], 1e-4 * norm[0][0]);
        CHECK_MSG(fabs(norms[1] - norm[0][0]) > 3e-3 * norm[0][0], "mean of means: norm %g vs %g",
                  norms[1], norm[0][0]);
    } else {
        CHECK_MSG(0, "setup: %s", err_msg());
    }
    dataset_order_free(&ord);
    model_acts_free(acts);
    free_setup(&st);
}

static void test_metrics_and_schedule(void) {
    setup st;
    CHECK_OK(make_setup(&st, 32));
    if (!st.d) return;
    char out[TS_PATH];
    trainer_options o;
    base_options(&o, ts_path(out, "sched"));
    o.steps = 6;
    o.opt.warmup_steps = 2;
    o.eval_every = 3;
    trainer_result res;
    CHECK_OK(trainer_run(st.m, st.s, st.d, &o, &res));
    CHECK(res.steps == 6 && isfinite(res.loss) && res.eval_tokens > 0);
    double lr[6], step[16], tokens[6], tps[6], el[6], ev[4];
    CHECK(metric(out, "lr", lr, 6) == 6);
    CHECK(metric(out, "tokens", tokens, 6) == 6);
    CHECK(metric(out, "tokens_per_s", tps, 6) == 6);
    CHECK(metric(out, "elapsed_s", el, 6) == 6);
    CHECK(metric(out, "eval_loss", ev, 4) == 3); /* before step 1, after step 3, at the end */
    CHECK(metric(out, "step", step, 16) == 9);
    CHECK(step[0] == 0 && step[1] == 1 && step[4] == 3 && step[5] == 4 && step[8] == 6);
    CHECK_NEAR(ev[2], res.eval_loss, 0);
    /* transformers' get_cosine_schedule_with_warmup: 0, lr/2, then the cosine. */
    for (int k = 0; k < 6; k++) {
        double want = 1e-2 * adamw_schedule(k, 2, 6);
        CHECK_NEAR(lr[k], want, 1e-15);
        CHECK(tokens[k] == 4.0 * 32 * (k + 1));
        CHECK(tps[k] >= 0 && el[k] >= 0);
    }
    CHECK(lr[0] == 0 && fabs(lr[1] - 5e-3) < 1e-15);

    /* The adapter directory is what PEFT reads. */
    char path[TS_PATH];
    ts_in(path, out, "adapter_model.safetensors");
    CHECK(fio_exists(path));
    ts_in(path, out, "adapter_config.json");
    CHECK(fio_exists(path));
    /* A second fresh run into the same directory is refused. */
    CHECK_FAILS_WITH(trainer_run(st.m, st.s, st.d, &o, &res), "already holds a training run");
    free_setup(&st);
}

static void test_checkpoints(void) {
    char full[TS_PATH], part[TS_PATH], path[TS_PATH];
    trainer_options o;
    trainer_result res;
    setup st;
    /* Uninterrupted: 6 steps. */
    CHECK_OK(make_setup(&st, 32));
    if (!st.d) return;
    base_options(&o, ts_path(full, "ck_full"));
    o.steps = 6;
    o.save_every = 2;
    o.grad_accum = 2;
    o.batch = 2;
    CHECK_OK(trainer_run(st.m, st.s, st.d, &o, &res));
    free_setup(&st);
    ts_in(path, full, "checkpoint/latest");
    char *latest = ts_read(path, NULL);
    CHECK(latest && !strcmp(latest, "step-00000006\n"));
    free(latest);
    const char *files[] = {"adapter_config.json", "adapter_model.safetensors",
                           "optimizer.safetensors", "trainer_state.json"};
    for (int i = 0; i < 4; i++) {
        char step_dir[TS_PATH];
        ts_in(path, ts_in(step_dir, full, "checkpoint/step-00000006"), files[i]);
        CHECK_MSG(fio_exists(path), "%s", path);
    }
    ts_in(path, full, "checkpoint/step-00000004");
    CHECK(!fio_exists(path)); /* only the latest is kept */

    /* The same run again, whose checkpoint of the last step then serves a
     * resume (mid-run resumes of a killed process: test_resume). */
    CHECK_OK(make_setup(&st, 32));
    base_options(&o, ts_path(part, "ck_part"));
    o.steps = 6;
    o.save_every = 3;
    o.grad_accum = 2;
    o.batch = 2;
    CHECK_OK(trainer_run(st.m, st.s, st.d, &o, &res));
    free_setup(&st);
    ts_in(path, part, "checkpoint/step-00000006");
    CHECK(fio_exists(path));

    /* Resuming from the final checkpoint only redoes the final eval. */
    CHECK_OK(make_setup(&st, 32));
    o.resume = ts_path(path, "ck_part/checkpoint");
    CHECK_OK(trainer_run(st.m, st.s, st.d, &o, &res));
    CHECK(res.steps == 6);
    free_setup(&st);
    char a[TS_PATH], b[TS_PATH];
    ts_in(a, full, "adapter_model.safetensors");
    ts_in(b, part, "adapter_model.safetensors");
    CHECK(ts_same_file(a, b));
    double ea[8], eb[8];
    CHECK(metric(full, "eval_loss", ea, 8) == 1 && metric(part, "eval_loss", eb, 8) == 1);
    CHECK(ea[0] == eb[0]);

    /* Another configuration is refused, naming what differs. */
    CHECK_OK(make_setup(&st, 32));
    o.opt.lr = 2e-2;
    CHECK_FAILS_WITH(trainer_run(st.m, st.s, st.d, &o, &res), "train.lr is 0.01 there and 0.02");
    o.opt.lr = 1e-2;
    o.resume = ts_path(path, "sched");
    CHECK_FAILS_WITH(trainer_run(st.m, st.s, st.d, &o, &res), "is not a checkpoint");
    free_setup(&st);
}

int main(void) {
    ts_path(model_dir, "model");
    CHECK_OK(ts_model_dir(model_dir, "llama", 0.1, 3, NULL));
    ts_in(tok_path, model_dir, "tokenizer.json");
    /* Instruction records with outputs from 1 to 60 bytes. */
    char text[16384] = "";
    for (int i = 0; i < 24; i++) {
        char out[64];
        int n = 1 + (i * 37) % 60;
        for (int k = 0; k < n; k++) out[k] = (char)('a' + (i + k) % 26);
        out[n] = '\0';
        snprintf(text + strlen(text), sizeof text - strlen(text),
                 "{\"instruction\": \"Spell %d\", \"output\": \"%s\"}\n", i, out);
    }
    CHECK_OK(ts_write(ts_path(data_path, "ins.jsonl"), text));
    test_grad_accum();
    test_metrics_and_schedule();
    test_checkpoints();
    return check_finish();
}
