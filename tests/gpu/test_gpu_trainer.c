/* test_gpu_trainer — trainer_run (train/trainer.c) on the GPU against the
 * CPU: the product's training loop, its files and its resume, with
 * --device cuda.
 *
 * One tiny Llama (tests/train's), LoRA r 4 on every linear with dropout 0.1,
 * 6 steps of K = 2 micro-batches of 2 × 32 tokens, warmup + cosine,
 * clipping, a held-out evaluation every 3 steps and a checkpoint every 3:
 *   - cuda fp32 against cpu: every step's loss and gradient norm, every
 *     held-out loss (relative 1e-4), the learning rates (exact), the final
 *     adapter (rel_l2 1e-4), the last checkpoint's files (the same names,
 *     adapter_config.json byte for byte, AdamW's moments within 2e-4,
 *     trainer_state.json naming its device and precision);
 *   - cuda bf16 against cpu: docs/gpu.md's bf16 trajectory bounds (each
 *     loss 5e-3, adapter 5e-2);
 *   - resume across devices: a cpu run stopped after step 4 (checkpoint of
 *     step 3) goes on with cuda fp32, and the reverse; steps 1–3 keep the
 *     first device's numbers exactly, the rest stay within fp32 bounds of
 *     the cpu run, metrics.jsonl holds each step once;
 *   - a cuda run stopped and resumed on cuda repeats the uninterrupted cuda
 *     run bit for bit (metrics and adapter file);
 *   - with NCCL: the same run as a data-parallel job of one rank
 *     (FEDLORA_WORLD_SIZE=1) is bit for bit the plain cuda run.
 * Each run is a child process (the parent never starts CUDA: a child of a
 * process that has cannot use it); "stopped" means the child exits from
 * inside the progress output of step 4, as if killed there. Skipped (77)
 * without a GPU.
 *
 * The backend is reached as the product reaches it: trainer_run loads the
 * module (gpu/gpu_load.h), here the libfedlora_cuda.so next to FEDLORA_BIN
 * (named in FEDLORA_CUDA_MODULE unless that is set); this program links no
 * CUDA library. */
#include "data/dataset.h"
#include "gpu/gpu_load.h"
#include "lora/adamw.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "tests/gpu/gpu_measure.h"
#include "tests/support/ts_model.h"
#include "train/trainer.h"

#include <jansson.h>
#include <math.h>

#define GPU_TEST_SKIP 77

enum { STEPS = 6, SAVE_EVERY = 3, STOP_AT = 4, STOPPED = 42 };

static const double FP32_TOL = 1e-4, FP32_MOMENTS = 2e-4;
static const double BF16_LOSS = 5e-3, BF16_NORM = 5e-2, BF16_ADAPTER = 5e-2;

static char model_dir[TS_PATH], data_path[TS_PATH], tok_path[TS_PATH];

typedef struct {
    const char *device, *precision;
    int resume;  /* go on from OUT/checkpoint */
    int stop_at; /* exit (STOPPED) when this step's progress line is written; 0: never */
    int dist;    /* as a data-parallel job of one rank */
} job;

/* ---- the child: one trainer_run --------------------------------------------------- */

static int stop_step;

/* The progress stream: "step N/6 ..." of step stop_at ends the process. The
 * checkpoint of the step before is complete by then, and step N's metrics
 * line written (a resume must drop it). */
static ssize_t progress_write(void *cookie, const char *buf, size_t n) {
    (void)cookie;
    char needle[32];
    snprintf(needle, sizeof needle, "step %d/", stop_step);
    if (stop_step && memmem(buf, n, needle, strlen(needle))) _exit(STOPPED);
    if (fwrite(buf, 1, n, stdout) != n) return -1;
    return (ssize_t)n;
}

static int child(const job *j, const char *out) {
    model *m = NULL;
    lora_set *s = NULL;
    dataset *d = NULL;
    lora_config lc;
    lora_config_init(&lc);
    lc.rank = 4;
    lc.alpha = 8;
    lc.seed = 11;
    lc.dropout = 0.1;
    dataset_options dopt = {.path = data_path,
                            .tokenizer = tok_path,
                            .seq = 32,
                            .eos_id = 256,
                            .vocab_size = 320,
                            .eval_fraction = 0.2,
                            .seed = 3};
    char ckpt[TS_PATH];
    trainer_options t;
    trainer_options_init(&t);
    t.batch = 2;
    t.grad_accum = 2;
    t.steps = STEPS;
    t.opt.lr = 5e-3;
    t.opt.warmup_steps = 2;
    t.opt.weight_decay = 0.01;
    t.opt.max_grad_norm = 1.0;
    t.seed = 3;
    t.save_every = SAVE_EVERY;
    t.eval_every = SAVE_EVERY;
    t.log_every = 1;
    t.out_dir = out;
    t.resume = j->resume ? ts_in(ckpt, out, "checkpoint") : NULL;
    t.device = j->device;
    t.precision = j->precision;
    stop_step = j->stop_at;
    cookie_io_functions_t io = {.write = progress_write};
    t.progress = fopencookie(NULL, "w", io);
    trainer_result res;
    int rc = t.progress ? 0 : -1;
    if (rc == 0) rc = checkpoint_load(&m, model_dir);
    if (rc == 0) rc = lora_config_set_targets(&lc, "all-linear");
    if (rc == 0) rc = lora_create(&s, m, &lc);
    if (rc == 0) rc = dataset_open(&d, &dopt);
    if (rc == 0) rc = trainer_run(m, s, d, &t, &res);
    if (rc != 0) fprintf(stderr, "%s (%s %s): %s\n", out, j->device, j->precision, err_msg());
    if (t.progress) fclose(t.progress);
    dataset_free(d);
    lora_free(s);
    lora_config_free(&lc);
    model_free(m);
    return rc == 0 ? 0 : 1;
}

/* Runs the job in a child process; its exit status (128 + signal if killed). */
static int run_job(const job *j, const char *out) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (j->dist) {
            char id[TS_PATH];
            setenv(GPU_DIST_ENV_WORLD, "1", 1);
            setenv(GPU_DIST_ENV_RANK, "0", 1);
            setenv(GPU_DIST_ENV_ID_FILE, ts_path(id, "nccl-id"), 1);
        }
        _exit(child(j, out));
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void run_ok(const job *j, const char *out, int want) {
    int rc = run_job(j, out);
    CHECK_MSG(rc == want, "%s: %s %s%s exited %d, wanted %d", out, j->device,
              j->precision ? j->precision : "", j->resume ? " (resumed)" : "", rc, want);
}

/* The module, loaded here (which starts nothing on a device); the device
 * count in a child, so this process never starts CUDA. */
static int have_gpu(const gpu_api *gpu) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) _exit(gpu->available() > 0 ? 0 : 1);
    int status;
    return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
           WEXITSTATUS(status) == 0;
}

/* ---- what the runs left ------------------------------------------------------------- */

typedef struct {
    double loss[STEPS + 1], lr[STEPS + 1], norm[STEPS + 1], eval[STEPS + 1];
    int seen[STEPS + 1], evals[STEPS + 1];
} metrics;

static void read_metrics(const char *out, metrics *mt) {
    memset(mt, 0, sizeof *mt);
    char path[TS_PATH];
    char *text = ts_read(ts_in(path, out, "metrics.jsonl"), NULL);
    CHECK_MSG(text != NULL, "%s: no metrics", out);
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *st = json_object_get(j, "step");
        int step = json_is_integer(st) ? (int)json_integer_value(st) : -1;
        CHECK_MSG(step >= 0 && step <= STEPS, "%s: metrics line '%s'", out, line);
        if (step >= 0 && step <= STEPS) {
            if (json_object_get(j, "loss")) {
                mt->seen[step]++;
                mt->loss[step] = json_number_value(json_object_get(j, "loss"));
                mt->lr[step] = json_number_value(json_object_get(j, "lr"));
                mt->norm[step] = json_number_value(json_object_get(j, "grad_norm"));
            } else if (json_object_get(j, "eval_loss")) {
                mt->evals[step]++;
                mt->eval[step] = json_number_value(json_object_get(j, "eval_loss"));
            }
        }
        json_decref(j);
    }
    free(text);
    for (int s = 1; s <= STEPS; s++)
        CHECK_MSG(mt->seen[s] == 1, "%s: step %d has %d metrics lines", out, s, mt->seen[s]);
    for (int s = 0; s <= STEPS; s += SAVE_EVERY)
        CHECK_MSG(mt->evals[s] == 1, "%s: step %d has %d eval lines", out, s, mt->evals[s]);
}

static double rel(double a, double b) {
    return fabs(a - b) / fmax(fabs(b), 1e-30);
}

/* Steps first … last of a against ref: losses and held-out losses within
 * tol_loss, gradient norms within tol_norm, learning rates exact (0 for
 * tolerances: bit for bit). */
static void compare_metrics(const char *what, const metrics *a, const metrics *ref, int first,
                            int last, double tol_loss, double tol_norm) {
    double e_loss = 0, e_norm = 0, e_eval = 0;
    for (int s = first; s <= last; s++) {
        e_loss = fmax(e_loss, rel(a->loss[s], ref->loss[s]));
        e_norm = fmax(e_norm, rel(a->norm[s], ref->norm[s]));
        CHECK_MSG(a->lr[s] == ref->lr[s], "%s: step %d lr %.17g vs %.17g", what, s, a->lr[s],
                  ref->lr[s]);
    }
    for (int s = first - 1; s <= last; s++)
        if (s % SAVE_EVERY == 0) e_eval = fmax(e_eval, rel(a->eval[s], ref->eval[s]));
    printf("  %-34s steps %d-%d: loss %.2e  grad_norm %.2e  eval_loss %.2e  (tol %.0e, %.0e)\n",
           what, first, last, e_loss, e_norm, e_eval, tol_loss, tol_norm);
    CHECK_MSG(e_loss <= tol_loss, "%s: loss %.3e > %.0e", what, e_loss, tol_loss);
    CHECK_MSG(e_eval <= tol_loss, "%s: eval_loss %.3e > %.0e", what, e_eval, tol_loss);
    CHECK_MSG(e_norm <= tol_norm, "%s: grad_norm %.3e > %.0e", what, e_norm, tol_norm);
}

/* Every A and B of the PEFT adapter in dir, in lora_tensor order. */
static float *adapter_values(const model *m, const char *dir, int64_t *n) {
    lora_set *s = NULL;
    CHECK_OK(peft_load(&s, m, dir));
    if (!s) return NULL;
    *n = lora_num_params(s);
    float *v = malloc(sizeof(float) * (size_t)*n), *p = v;
    for (int i = 0; i < lora_num_tensors(s); i++) {
        model_param *t = lora_tensor(s, i);
        memcpy(p, t->data, sizeof(float) * (size_t)t->numel);
        p += t->numel;
    }
    lora_free(s);
    return v;
}

static void compare_adapters(const char *what, const model *m, const char *dir, const char *ref,
                             double tol) {
    int64_t n = 0, nr = 0;
    float *a = adapter_values(m, dir, &n), *b = adapter_values(m, ref, &nr);
    double e = a && b && n == nr ? gt_rel_l2(a, b, (size_t)n, 1e-30) : INFINITY;
    printf("  %-34s adapter rel_l2 %.2e (tol %.0e)\n", what, e, tol);
    CHECK_MSG(e <= tol, "%s: adapter rel_l2 %.3e > %.0e", what, e, tol);
    free(a);
    free(b);
}

/* AdamW's state in dir/optimizer.safetensors, through a CPU optimizer as a
 * resume reads it. */
static adamw *load_optimizer(const model *m, const char *dir, lora_set **s) {
    char path[TS_PATH];
    *s = NULL;
    CHECK_OK(peft_load(s, m, dir));
    if (!*s || lora_want_grads(*s) != 0) return NULL;
    model_param *params[512];
    int n = lora_num_tensors(*s);
    for (int i = 0; i < n && i < 512; i++) params[i] = lora_tensor(*s, i);
    adamw_config oc;
    adamw_config_init(&oc);
    adamw *o = NULL;
    CHECK_OK(adamw_create(&o, params, n, &oc));
    if (o) CHECK_OK(adamw_load(o, ts_in(path, dir, TRAINER_OPTIMIZER_FILE)));
    return o;
}

/* The state file names the device and precision that wrote it. */
static void check_state(const char *dir, const char *device, const char *precision) {
    char path[TS_PATH];
    json_t *j = json_load_file(ts_in(path, dir, TRAINER_STATE_FILE), 0, NULL);
    const char *d = json_string_value(json_object_get(j, "device"));
    const char *p = json_string_value(json_object_get(j, "precision"));
    CHECK_MSG(d && p && !strcmp(d, device) && !strcmp(p, precision),
              "%s: device %s precision %s, wanted %s %s", path, d ? d : "-", p ? p : "-", device,
              precision);
    json_decref(j);
}

/* The final checkpoints of a cpu and a cuda fp32 run: the same files, the
 * same adapter config, moments within fp32 bounds. */
static void compare_checkpoints(const model *m, const char *cpu_out, const char *gpu_out) {
    char a[TS_PATH], b[TS_PATH], pa[TS_PATH], pb[TS_PATH], ck[TS_PATH];
    snprintf(ck, sizeof ck, "checkpoint/step-%08d", STEPS);
    ts_in(a, cpu_out, ck);
    ts_in(b, gpu_out, ck);
    const char *files[] = {"adapter_config.json", "adapter_model.safetensors",
                           TRAINER_OPTIMIZER_FILE, TRAINER_STATE_FILE};
    for (int i = 0; i < 4; i++)
        CHECK_MSG(fio_exists(ts_in(pa, a, files[i])) && fio_exists(ts_in(pb, b, files[i])),
                  "%s missing in %s or %s", files[i], a, b);
    CHECK(ts_same_file(ts_in(pa, a, "adapter_config.json"), ts_in(pb, b, "adapter_config.json")));
    CHECK(ts_same_file(ts_in(pa, cpu_out, "adapter_config.json"),
                       ts_in(pb, gpu_out, "adapter_config.json")));
    check_state(a, "cpu", "fp32");
    check_state(b, "cuda", "fp32");
    lora_set *sa = NULL, *sb = NULL;
    adamw *oa = load_optimizer(m, a, &sa), *ob = load_optimizer(m, b, &sb);
    if (oa && ob) {
        CHECK(oa->step == STEPS && ob->step == STEPS);
        double em = gt_rel_l2(ob->exp_avg, oa->exp_avg, (size_t)oa->numel, 1e-30);
        double ev = gt_rel_l2(ob->exp_avg_sq, oa->exp_avg_sq, (size_t)oa->numel, 1e-30);
        printf("  %-34s exp_avg rel_l2 %.2e, exp_avg_sq %.2e (tol %.0e)\n",
               "checkpoint: AdamW moments", em, ev, FP32_MOMENTS);
        CHECK_MSG(em <= FP32_MOMENTS && ev <= FP32_MOMENTS, "moments %.3e %.3e", em, ev);
    }
    adamw_free(oa);
    adamw_free(ob);
    lora_free(sa);
    lora_free(sb);
}

static void check_identical(const char *what, const char *out, const metrics *a, const char *ref,
                            const metrics *b) {
    char pa[TS_PATH], pb[TS_PATH];
    int same = 1;
    for (int s = 1; s <= STEPS; s++)
        same &= a->loss[s] == b->loss[s] && a->lr[s] == b->lr[s] && a->norm[s] == b->norm[s];
    for (int s = 0; s <= STEPS; s += SAVE_EVERY) same &= a->eval[s] == b->eval[s];
    int files = ts_same_file(ts_in(pa, out, "adapter_model.safetensors"),
                             ts_in(pb, ref, "adapter_model.safetensors"));
    printf("  %-34s metrics %s, adapter file %s\n", what, same ? "identical" : "DIFFER",
           files ? "identical" : "DIFFERS");
    CHECK_MSG(same && files, "%s: not bit for bit", what);
}

int main(void) {
    /* The module the build put next to the fedlora binary. */
    char module[TS_PATH];
    setenv(GPU_LOAD_ENV, ts_next_to_bin(module, GPU_MODULE_FILE), 0);
    const gpu_api *gpu = gpu_load_api();
    if (!gpu) {
        fprintf(stderr, "%s\n", err_msg()); /* this build made the module: it must load */
        return 1;
    }
    if (!have_gpu(gpu)) {
        printf("skipped: no CUDA device\n");
        return GPU_TEST_SKIP;
    }
    CHECK_OK(ts_model_dir(ts_path(model_dir, "base"), "llama", 0.1, 4, NULL));
    ts_in(tok_path, model_dir, "tokenizer.json");
    char path[TS_PATH];
    char *text = ts_read(ts_example(path, "corpus/mixed.txt"), NULL);
    CHECK_MSG(text != NULL, "cannot read %s", path);
    CHECK_OK(ts_write(ts_path(data_path, "mixed.txt"), text ? text : ""));
    free(text);
    model *m = NULL;
    CHECK_OK(checkpoint_load(&m, model_dir));
    if (!m) return check_finish();

    char cpu[TS_PATH], g32[TS_PATH], g16[TS_PATH], c2g[TS_PATH], g2c[TS_PATH], g2g[TS_PATH],
        gd[TS_PATH];
    const job cpu_job = {"cpu", NULL, 0, 0, 0}, g32_job = {"cuda", "fp32", 0, 0, 0};
    run_ok(&cpu_job, ts_path(cpu, "cpu"), 0);
    run_ok(&g32_job, ts_path(g32, "cuda_fp32"), 0);
    run_ok(&(job){"cuda", "bf16", 0, 0, 0}, ts_path(g16, "cuda_bf16"), 0);
    /* interrupted after step 4, resumed from the checkpoint of step 3 */
    run_ok(&(job){"cpu", NULL, 0, STOP_AT, 0}, ts_path(c2g, "cpu_then_cuda"), STOPPED);
    run_ok(&(job){"cuda", "fp32", 1, 0, 0}, c2g, 0);
    run_ok(&(job){"cuda", "fp32", 0, STOP_AT, 0}, ts_path(g2c, "cuda_then_cpu"), STOPPED);
    run_ok(&(job){"cpu", NULL, 1, 0, 0}, g2c, 0);
    run_ok(&(job){"cuda", "fp32", 0, STOP_AT, 0}, ts_path(g2g, "cuda_then_cuda"), STOPPED);
    run_ok(&(job){"cuda", "fp32", 1, 0, 0}, g2g, 0);

    metrics mc, m32, m16, mc2g, mg2c, mg2g;
    read_metrics(cpu, &mc);
    read_metrics(g32, &m32);
    read_metrics(g16, &m16);
    read_metrics(c2g, &mc2g);
    read_metrics(g2c, &mg2c);
    read_metrics(g2g, &mg2g);
    printf("cpu: loss %.4f -> %.4f, held-out %.4f -> %.4f\n", mc.loss[1], mc.loss[STEPS],
           mc.eval[0], mc.eval[STEPS]);
    CHECK(mc.loss[STEPS] < mc.loss[1]);

    printf("cuda against cpu (docs/gpu.md bounds)\n");
    compare_metrics("cuda fp32", &m32, &mc, 1, STEPS, FP32_TOL, FP32_TOL);
    compare_adapters("cuda fp32", m, g32, cpu, FP32_TOL);
    compare_checkpoints(m, cpu, g32);
    compare_metrics("cuda bf16", &m16, &mc, 1, STEPS, BF16_LOSS, BF16_NORM);
    compare_adapters("cuda bf16", m, g16, cpu, BF16_ADAPTER);

    printf("resume across devices (checkpoint of step %d)\n", SAVE_EVERY);
    compare_metrics("cpu, then cuda: cpu's steps", &mc2g, &mc, 1, SAVE_EVERY, 0, 0);
    compare_metrics("cpu, then cuda: cuda's steps", &mc2g, &mc, SAVE_EVERY + 1, STEPS, FP32_TOL,
                    FP32_TOL);
    compare_adapters("cpu, then cuda", m, c2g, cpu, FP32_TOL);
    compare_metrics("cuda, then cpu: cuda's steps", &mg2c, &m32, 1, SAVE_EVERY, 0, 0);
    compare_metrics("cuda, then cpu: against cpu", &mg2c, &mc, 1, STEPS, FP32_TOL, FP32_TOL);
    compare_adapters("cuda, then cpu", m, g2c, cpu, FP32_TOL);
    check_identical("cuda, then cuda: same as unbroken", g2g, &mg2g, g32, &m32);

    if (gpu->dist_supported()) {
        metrics md;
        run_ok(&(job){"cuda", "fp32", 0, 0, 1}, ts_path(gd, "cuda_dist1"), 0);
        read_metrics(gd, &md);
        check_identical("data parallel, 1 rank", gd, &md, g32, &m32);
        CHECK_MSG(!fio_exists(ts_path(path, "nccl-id")), "the NCCL id file was left behind");
    } else {
        printf("  (no NCCL in this build: the data-parallel run is not checked)\n");
    }
    model_free(m);
    return check_finish();
}
