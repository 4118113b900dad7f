/* trainer.c — the LoRA training loop, checkpoints, resume and metrics
 * (the contract is in trainer.h; the file formats in docs/training.md), on
 * the CPU or on GPUs, through the CUDA backend module that gpu/gpu_load.h
 * loads when --device cuda asks for it (docs/gpu.md). */
#include "train/trainer.h"

#include "gpu/gpu_load.h"
#include "lora/peft.h"
#include "model/checkpoint.h"
#include "model/cpu/cpu.h"
#include "train/trainer_checkpoint.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define METRICS_MAX ((size_t)1 << 30) /* bytes of metrics.jsonl a resume rewrites */
#define PATH_LEN 4096
/* How long the ranks of a data-parallel run wait for each other to join:
 * each loads the model first, which can take minutes for large ones. */
#define DIST_TIMEOUT_S 600.0

void trainer_options_init(trainer_options *o) {
    memset(o, 0, sizeof *o);
    o->batch = 4;
    o->grad_accum = 1;
    o->steps = 100;
    adamw_config_init(&o->opt);
    o->opt.lr = 2e-4;
    o->opt.weight_decay = 0;
    o->save_every = 100;
    o->log_every = 10;
    o->progress = stderr;
    o->device = "cpu";
}

int trainer_device_is_cuda(const char *device) {
    return device && strcmp(device, "cuda") == 0;
}

int trainer_device_bf16(const char *device, const char *precision) {
    return trainer_device_is_cuda(device) && (!precision || strcmp(precision, "bf16") == 0);
}

int trainer_precision_of(const char *device, const char *precision, model_precision *out) {
    if (precision && strcmp(precision, "fp32") != 0 && strcmp(precision, "bf16") != 0 &&
        strcmp(precision, "auto") != 0)
        return err_set("--precision must be fp32, bf16 or auto, got '%s'", precision);
    int given = precision && strcmp(precision, "auto") != 0;
    if (trainer_device_is_cuda(device)) {
        *out =
            given && strcmp(precision, "fp32") == 0 ? MODEL_PRECISION_FP32 : MODEL_PRECISION_BF16;
        return 0;
    }
    if (!given) {
        /* bf16 where the CPU has bf16 instructions (about twice fp32's
         * speed); where oneDNN would only emulate them, fp32 is faster. */
        *out = cpu_bf16_native() ? MODEL_PRECISION_BF16 : MODEL_PRECISION_FP32;
        return 0;
    }
    if (strcmp(precision, "fp32") == 0) {
        *out = MODEL_PRECISION_FP32;
        return 0;
    }
    if (cpu_bf16_check() != 0) return err_context("--precision bf16 on the CPU");
    *out = MODEL_PRECISION_BF16;
    return 0;
}

int trainer_cpu_precision(model *m, const char *device, const char *precision,
                          model_precision *out) {
    if (trainer_precision_of(device, precision, out) != 0) return -1;
    if (trainer_device_is_cuda(device)) return 0;
    if (!precision || strcmp(precision, "auto") == 0) {
        *out = m->precision; /* as the model was loaded */
        return 0;
    }
    return model_set_precision(m, *out);
}

void trainer_precision_describe(const char *device, model_precision p, char *buf, size_t len) {
    if (trainer_device_is_cuda(device) || p == MODEL_PRECISION_FP32)
        snprintf(buf, len, "%s", model_precision_name(p));
    else
        snprintf(buf, len, "bf16 (oneDNN, %s)", cpu_bf16_isa());
}

int trainer_load_base(model **out, const char *dir, const char *device, const char *precision,
                      char *how, size_t how_len) {
    model_precision p;
    if (trainer_precision_of(device, precision, &p) != 0) return -1;
    if (how) trainer_precision_describe(device, p, how, how_len);
    /* A GPU takes the weights in their stored dtype and converts them on
     * upload; the CPU multiplies them at the run's precision. */
    if (trainer_device_is_cuda(device)) p = MODEL_PRECISION_FP32;
    if (checkpoint_map(out, dir, p) != 0) return err_context("loading model %s", dir);
    return 0;
}

int trainer_device_check(const char *device, const char *precision) {
    if (device && strcmp(device, "cpu") != 0 && !trainer_device_is_cuda(device))
        return err_set("--device must be cpu or cuda, got '%s'", device);
    model_precision p;
    if (trainer_precision_of(device, precision, &p) != 0) return -1;
    if (!trainer_device_is_cuda(device)) return 0;
    /* The backend is there when its module loads (it says why not). */
    const gpu_api *gpu = gpu_load_api();
    if (!gpu) return err_context("--device cuda");
    if (gpu->available() > 0) return 0;
    char why[256];
    gpu->why_unavailable(why, sizeof why);
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    return err_set("no CUDA device found (%s%s%.64s%s) — use --device cpu", why,
                   visible ? "; CUDA_VISIBLE_DEVICES is '" : "", visible ? visible : "",
                   visible ? "'" : "");
}

/* ---- evaluation -------------------------------------------------------------------- */

/* The forward of one batch of B rows (model_forward's contract). */
typedef int (*eval_forward)(void *ctx, const int32_t *in, const int32_t *tg, double *loss_sum,
                            int64_t *n_targets);

static int eval_rows(eval_forward forward, void *ctx, int B, const dataset *d, dataset_split split,
                     FILE *progress, double *loss, int64_t *n_targets) {
    int T = dataset_seq(d);
    size_t rows = dataset_num_rows(d, split);
    *loss = NAN;
    *n_targets = 0;
    if (rows == 0) return 0;
    int32_t *in = malloc(sizeof(int32_t) * (size_t)B * T);
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)B * T);
    int rc = in && tg ? 0 : err_set("out of memory for an eval batch of %d x %d", B, T);
    double sum = 0, t0 = clock_now_s(), last = t0;
    int64_t count = 0;
    int tty = progress && isatty(fileno(progress));
    for (size_t r = 0; r < rows && rc == 0; r += (size_t)B) {
        for (int b = 0; b < B && rc == 0; b++) {
            int32_t *ib = in + (size_t)b * T, *tb = tg + (size_t)b * T;
            if (r + (size_t)b < rows) {
                rc = dataset_row(d, split, r + (size_t)b, ib, tb);
            } else { /* padding: a row with no loss keeps the batch shape */
                for (int t = 0; t < T; t++) ib[t] = 0, tb[t] = MODEL_IGNORE_INDEX;
            }
        }
        double ls = 0;
        int64_t nt = 0;
        if (rc == 0) rc = forward(ctx, in, tg, &ls, &nt);
        sum += ls;
        count += nt;
        double t = clock_now_s();
        if (rc == 0 && tty && t - last > 0.5) {
            size_t done = r + (size_t)B < rows ? r + (size_t)B : rows;
            fprintf(progress, "\r\033[Keval %zu/%zu rows  loss %.4f  %.0f tokens/s", done, rows,
                    sum / (double)count, (double)done * T / (t - t0));
            last = t;
        }
    }
    if (tty && last > t0) fputs("\r\033[K", progress);
    free(in);
    free(tg);
    if (rc != 0) return -1;
    *loss = count ? sum / (double)count : NAN;
    *n_targets = count;
    return 0;
}

typedef struct {
    const model *m;
    model_acts *acts;
} cpu_eval;

static int cpu_forward(void *ctx, const int32_t *in, const int32_t *tg, double *loss_sum,
                       int64_t *n_targets) {
    cpu_eval *c = ctx;
    return model_forward(c->m, c->acts, in, tg, loss_sum, n_targets);
}

int trainer_eval(const model *m, model_acts *acts, int B, const dataset *d, dataset_split split,
                 FILE *progress, double *loss, int64_t *n_targets) {
    cpu_eval c = {m, acts};
    return eval_rows(cpu_forward, &c, B, d, split, progress, loss, n_targets);
}

typedef struct {
    const gpu_api *gpu;
    gpu_model *g;
} gpu_eval;

/* gpu_forward without logits: the LM head runs in chunks and only the loss
 * comes back. */
static int gpu_eval_forward(void *ctx, const int32_t *in, const int32_t *tg, double *loss_sum,
                            int64_t *n_targets) {
    const gpu_eval *c = ctx;
    return c->gpu->forward(c->g, in, tg, loss_sum, n_targets, NULL);
}

int trainer_gpu_upload(const gpu_api *gpu, gpu_model **g, const model *m, const lora_set *s, int B,
                       int T, int bf16) {
    gpu_options go;
    gpu->options_init(&go);
    go.precision = bf16 ? GPU_PRECISION_BF16 : GPU_PRECISION_FP32;
    go.batch = B;
    go.seq = T;
    return gpu->model_upload(g, m, s, &go);
}

int trainer_eval_on(model *m, lora_set *s, int B, const dataset *d, dataset_split split,
                    const char *device, const char *precision, FILE *progress, double *loss,
                    int64_t *n_targets) {
    *loss = NAN;
    *n_targets = 0;
    if (trainer_device_check(device, precision) != 0) return -1;
    int rc = -1;
    if (trainer_device_is_cuda(device)) {
        gpu_eval c = {gpu_load_api(), NULL}; /* loaded by trainer_device_check */
        if (!c.gpu) return -1;
        if (trainer_gpu_upload(c.gpu, &c.g, m, s, B, dataset_seq(d),
                               trainer_device_bf16(device, precision)) == 0)
            rc = eval_rows(gpu_eval_forward, &c, B, d, split, progress, loss, n_targets);
        c.gpu->model_free(c.g);
        return rc;
    }
    model_acts *acts = NULL;
    if (s && lora_attach(s, m) != 0) return -1;
    if (model_acts_create(&acts, m, B, dataset_seq(d)) == 0)
        rc = trainer_eval(m, acts, B, d, split, progress, loss, n_targets);
    model_acts_free(acts);
    if (s) lora_detach(s);
    return rc;
}

static int join(char *out, const char *dir, const char *name) {
    return fio_join(out, PATH_LEN, dir, name);
}

/* ---- metrics ---------------------------------------------------------------------------- */

/* Keeps the metrics of steps up to `step` (what the checkpoint's run had
 * written by then) and drops the rest: a resumed run then writes the same
 * records as an uninterrupted one. The final evaluation comes after the last
 * checkpoint, so it is always redone. A torn last line is dropped too. */
static int truncate_metrics(const char *path, int64_t step, int64_t last_step) {
    if (!fio_exists(path)) return 0;
    char *text;
    size_t len, kept = 0;
    if (fio_read_all(path, METRICS_MAX, &text, &len) != 0) return -1;
    char *out = malloc(len + 1);
    if (!out) {
        free(text);
        return err_set("out of memory rewriting %s", path);
    }
    for (char *p = text, *end = text + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) break; /* torn */
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
        json_t *s = j ? json_object_get(j, "step") : NULL;
        int keep = json_is_integer(s) && json_integer_value(s) <= step &&
                   !(json_integer_value(s) == last_step && json_object_get(j, "eval_loss"));
        json_decref(j);
        if (keep) {
            memcpy(out + kept, p, (size_t)(nl - p) + 1);
            kept += (size_t)(nl - p) + 1;
        }
        p = nl + 1;
    }
    int rc = fio_write_atomic(path, out, kept, 0644);
    free(out);
    free(text);
    return rc;
}

static int metrics_line(FILE *f, const char *path, const char *fmt, ...) ERR_PRINTF(3, 4);
static int metrics_line(FILE *f, const char *path, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int bad = vfprintf(f, fmt, ap) < 0;
    va_end(ap);
    if (bad || fflush(f) != 0) return err_errno("cannot write %s", path);
    return 0;
}

static void fmt_duration(char *out, size_t n, double s) {
    long long t = s > 0 && s < 1e9 ? (long long)(s + 0.5) : 0;
    if (t >= 3600)
        snprintf(out, n, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(out, n, "%lld:%02lld", t / 60, t % 60);
}

/* ---- the loop ---------------------------------------------------------------------------- */

typedef struct {
    model *m;
    lora_set *s;
    const dataset *d;
    const trainer_options *o;
    model_acts *acts; /* CPU only */
    adamw *opt;       /* on the GPU: the host copy checkpoints are written from */
    dataset_order order;
    int32_t *in, *tg; /* (K·B, T) the step's rows (this rank's share of them) */
    json_t *cfg;
    FILE *metrics;  /* rank 0 only */
    FILE *progress; /* o->progress on rank 0, else NULL */
    char metrics_path[PATH_LEN];
    train_state st;
    double lr, grad_norm; /* of the last step */
    int rank, world;      /* data parallelism over GPUs; 0 and 1 otherwise */
    int tty;
    const struct trainer_backend *dev; /* the device it trains on (below) */
    const gpu_api *gpu;                /* the CUDA backend, when the run is on a GPU */
    gpu_model *g;
    int attached; /* CPU: the adapter is attached to m */
} run;

/* The device a run trains on. The loop reaches it only through these, so
 * that the CPU and the GPU are two tables, not branches in every step:
 *   setup      after a resumed checkpoint is read: the model and adapter
 *              ready to train (dropout on), a line saying where and how;
 *   step       micro-batches k0 … k0 + k − 1 of the step in r->in / r->tg
 *              (the first k·B rows), forward, backward, AdamW; the step's
 *              mean loss, lr and gradient norm; the dropout counter moved
 *              on as the CPU's would;
 *   eval       the held-out loss, dropout off;
 *   sync       the adapter and AdamW state into r->s and r->opt, which
 *              checkpoints and the adapter files are written from;
 *   teardown   undoes setup (also after a failed one). */
typedef struct trainer_backend {
    int (*setup)(run *r, const adamw_config *oc, char *line, size_t line_len);
    int (*step)(run *r, int k0, int k, double *loss);
    int (*eval)(run *r, double *loss, int64_t *n);
    int (*sync)(run *r);
    void (*teardown)(run *r);
} trainer_backend;

/* Held-out loss, dropout off; rank 0 evaluates for every rank. */
static int evaluate(run *r, trainer_result *res) {
    if (r->rank != 0) return 0;
    double loss;
    int64_t n;
    int rc = r->dev->eval(r, &loss, &n);
    if (rc != 0 || n == 0) return rc;
    if (res) res->eval_loss = loss, res->eval_tokens = n;
    if (r->progress)
        fprintf(r->progress, "%sstep %lld: held-out loss %.4f over %lld tokens\n",
                r->tty ? "\r\033[K" : "", (long long)r->st.step, loss, (long long)n);
    return metrics_line(r->metrics, r->metrics_path,
                        "{\"step\": %lld, \"eval_loss\": %.17g, \"eval_tokens\": %lld}\n",
                        (long long)r->st.step, loss, (long long)n);
}

/* ---- the CPU ------------------------------------------------------------------------ */

static int cpu_setup(run *r, const adamw_config *oc, char *line, size_t line_len) {
    (void)oc; /* the run's AdamW (r->opt) is the CPU's */
    const trainer_options *o = r->o;
    int B = o->batch, T = dataset_seq(r->d);
    model_precision prec = r->m->precision;
    if (lora_reserve(r->s, B * T) != 0 || model_acts_create(&r->acts, r->m, B, T) != 0 ||
        lora_attach(r->s, r->m) != 0)
        return -1;
    r->attached = 1;
    lora_set_training(r->s, 1);
    char how[96];
    trainer_precision_describe(o->device, prec, how, sizeof how);
    snprintf(line, line_len, "training on the CPU (%d threads) in %s", omp_get_max_threads(), how);
    return 0;
}

/* Each micro-batch's forward and backward, then AdamW. */
static int cpu_step(run *r, int k0, int K, double *loss) {
    (void)k0; /* one process: every micro-batch of the step */
    int B = r->o->batch, T = dataset_seq(r->d);
    size_t rows = (size_t)B * K;
    /* The mean is over every target of the step, so scale by their count. */
    int64_t n_targets = 0;
    for (size_t i = 0; i < rows * T; i++) n_targets += r->tg[i] != MODEL_IGNORE_INDEX;
    lora_zero_grads(r->s);
    double sum = 0;
    for (int k = 0; k < K; k++) {
        double ls;
        int64_t nt;
        const int32_t *in = r->in + (size_t)k * B * T, *tg = r->tg + (size_t)k * B * T;
        if (model_forward(r->m, r->acts, in, tg, &ls, &nt) != 0 ||
            model_backward(r->m, r->acts, 1.0 / (double)n_targets) != 0)
            return -1;
        sum += ls;
    }
    if (adamw_step(r->opt) != 0)
        return err_context("step %lld (loss %g; a lower --lr or --clip may help)",
                           (long long)r->st.step + 1, sum / (double)n_targets);
    r->lr = r->opt->last_lr;
    r->grad_norm = r->opt->last_grad_norm;
    *loss = sum / (double)n_targets;
    r->st.dropout_counter = lora_dropout_counter(r->s);
    return 0;
}

static int cpu_run_eval(run *r, double *loss, int64_t *n) {
    lora_set_training(r->s, 0);
    int rc = trainer_eval(r->m, r->acts, r->o->batch, r->d, DATASET_EVAL, NULL, loss, n);
    lora_set_training(r->s, 1);
    return rc;
}

static int cpu_sync(run *r) {
    (void)r; /* the adapter and AdamW are r->s and r->opt already */
    return 0;
}

static void cpu_teardown(run *r) {
    if (r->attached) {
        lora_set_training(r->s, 0);
        lora_detach(r->s);
        r->attached = 0;
    }
    model_acts_free(r->acts);
    r->acts = NULL;
}

static const trainer_backend cpu_backend = {cpu_setup, cpu_step, cpu_run_eval, cpu_sync,
                                            cpu_teardown};

/* ---- the GPU ------------------------------------------------------------------------ */

static int gpu_step(run *r, int k0, int k, double *loss) {
    /* Dropout masks by the micro-batch's place in the step: those the CPU
     * (or one GPU) would draw for it. */
    r->gpu->lora_set_dropout_counter(r->g, r->st.dropout_counter + (uint64_t)k0);
    gpu_step_result sr;
    if (r->gpu->train_step(r->g, r->in, r->tg, k, &sr) != 0) return -1;
    r->lr = sr.lr;
    r->grad_norm = sr.grad_norm;
    *loss = sr.loss;
    r->st.dropout_counter += (uint64_t)r->o->grad_accum;
    return 0;
}

static int gpu_run_eval(run *r, double *loss, int64_t *n) {
    gpu_eval c = {r->gpu, r->g};
    r->gpu->lora_set_training(r->g, 0);
    int rc = eval_rows(gpu_eval_forward, &c, r->o->batch, r->d, DATASET_EVAL, NULL, loss, n);
    r->gpu->lora_set_training(r->g, 1);
    return rc;
}

static int gpu_sync(run *r) {
    if (r->gpu->lora_download(r->g, r->s) != 0 || r->gpu->adamw_download(r->g, r->opt) != 0)
        return err_context("copying the adapter from the GPU");
    return 0;
}

static void gpu_teardown(run *r) {
    if (r->g) r->gpu->model_free(r->g);
    r->g = NULL;
}

/* One optimizer step: K micro-batches, then AdamW. With `world` ranks, this
 * one runs micro-batches rank·K/world … (rank+1)·K/world − 1 of the step. */
static int step_once(run *r, double *loss) {
    int B = r->o->batch, K = r->o->grad_accum, T = dataset_seq(r->d);
    int k_share = K / r->world, k0 = r->rank * k_share;
    size_t rows = (size_t)B * k_share, first = (size_t)B * k0;
    for (size_t i = 0; i < rows; i++) {
        size_t row = dataset_order_row(&r->order, r->st.position + first + i);
        if (dataset_row(r->d, DATASET_TRAIN, row, r->in + i * T, r->tg + i * T) != 0) return -1;
    }
    if (r->dev->step(r, k0, k_share, loss) != 0) return -1;
    r->st.step++;
    r->st.position += (uint64_t)B * K;
    r->st.tokens += (int64_t)B * K * T;
    return 0;
}

static void progress(run *r, double loss, int64_t first_step, double t0, int64_t tokens0,
                     double *last_print) {
    const trainer_options *o = r->o;
    if (!r->progress) return;
    double t = clock_now_s(), dt = t - t0;
    int last = r->st.step == o->steps;
    if (r->tty ? (t - *last_print < 0.1 && !last)
               : (r->st.step % o->log_every != 0 && r->st.step != first_step + 1 && !last))
        return;
    *last_print = t;
    double tps = dt > 0 ? (double)(r->st.tokens - tokens0) / dt : 0;
    char eta[32];
    fmt_duration(eta, sizeof eta,
                 dt / (double)(r->st.step - first_step) * (double)(o->steps - r->st.step));
    fprintf(r->progress,
            "%sstep %lld/%lld  loss %.4f  lr %.3e  grad_norm %.3f  %.0f tokens/s  ETA %s%s",
            r->tty ? "\r\033[K" : "", (long long)r->st.step, (long long)o->steps, loss, r->lr,
            r->grad_norm, tps, eta, r->tty && !last ? "" : "\n");
    fflush(r->progress);
}

static volatile sig_atomic_t stop_signal;

void trainer_request_stop(int sig) {
    stop_signal = sig;
}

int trainer_stop_requested(void) {
    return (int)stop_signal;
}

/* A stop asked for (trainer_request_stop): the steps since the last
 * checkpoint are saved as one (rank 0), then the run ends with res->stopped
 * set and a message that says how to go on. */
static int stop_here(run *r, trainer_result *res, int64_t saved_step) {
    const trainer_options *o = r->o;
    res->stopped = (int)stop_signal;
    if (r->rank == 0 && r->st.step > saved_step &&
        (r->dev->sync(r) != 0 ||
         trainer_write_checkpoint(o->out_dir, r->s, r->opt, &r->st, r->cfg) != 0))
        return err_context("saving the checkpoint of step %lld on signal %d", (long long)r->st.step,
                           res->stopped);
    return err_set("stopped by signal %d after step %lld of %lld; %s: go on with --resume "
                   "%s/%s",
                   res->stopped, (long long)r->st.step, (long long)o->steps,
                   r->st.step > saved_step ? "its checkpoint is saved"
                                           : "the last checkpoint holds every step done",
                   o->out_dir, TRAINER_CHECKPOINT_DIR);
}

static int train_loop(run *r, trainer_result *res) {
    const trainer_options *o = r->o;
    int64_t first_step = r->st.step, tokens0 = r->st.tokens, saved_step = r->st.step;
    double t0 = clock_now_s(), last_print = 0, elapsed0 = r->st.elapsed;
    if (o->eval_every > 0 && r->st.step == 0 && evaluate(r, NULL) != 0) return -1;
    while (r->st.step < o->steps) {
        if (stop_signal) return stop_here(r, res, saved_step);
        double loss = 0;
        if (step_once(r, &loss) != 0) return -1;
        double t = clock_now_s();
        r->st.elapsed = elapsed0 + (t - t0);
        res->steps = r->st.step;
        res->loss = loss;
        if (r->metrics &&
            metrics_line(r->metrics, r->metrics_path,
                         "{\"step\": %lld, \"loss\": %.17g, \"lr\": %.17g, \"grad_norm\": %.17g, "
                         "\"tokens\": %lld, \"tokens_per_s\": %.1f, \"elapsed_s\": %.3f}\n",
                         (long long)r->st.step, loss, r->lr, r->grad_norm, (long long)r->st.tokens,
                         t > t0 ? (double)(r->st.tokens - tokens0) / (t - t0) : 0.0,
                         r->st.elapsed) != 0)
            return -1;
        progress(r, loss, first_step, t0, tokens0, &last_print);
        if (o->eval_every > 0 && r->st.step % o->eval_every == 0 && r->st.step < o->steps &&
            evaluate(r, NULL) != 0)
            return -1;
        if (r->rank == 0 && o->save_every > 0 &&
            (r->st.step % o->save_every == 0 || r->st.step == o->steps) &&
            (r->dev->sync(r) != 0 ||
             trainer_write_checkpoint(o->out_dir, r->s, r->opt, &r->st, r->cfg) != 0))
            return err_context("saving the checkpoint of step %lld", (long long)r->st.step);
        if (o->save_every > 0 && r->st.step % o->save_every == 0) saved_step = r->st.step;
    }
    return 0;
}

static int check_options(const trainer_options *o, const dataset *d) {
    if (o->batch < 1 || o->grad_accum < 1 || o->steps < 0 || o->save_every < 0 ||
        o->eval_every < 0 || o->log_every < 1)
        return err_set("training options: batch, grad_accum and log_every must be at least 1, "
                       "steps, save_every and eval_every not negative");
    if (!o->out_dir) return err_set("training needs an output directory");
    if ((int64_t)o->batch * o->grad_accum * dataset_seq(d) > INT32_MAX / 4)
        return err_set("batch %d x grad_accum %d x seq %d tokens per step is too many", o->batch,
                       o->grad_accum, dataset_seq(d));
    return trainer_device_check(o->device, o->precision);
}

/* A fresh run must not mix its files with an earlier run's. */
static int check_fresh(const char *out_dir) {
    char path[PATH_LEN];
    const char *names[] = {TRAINER_METRICS_FILE, TRAINER_CHECKPOINT_DIR};
    for (int i = 0; i < 2; i++) {
        if (join(path, out_dir, names[i]) != 0) return -1;
        if (fio_exists(path))
            return err_set("%s already holds a training run (%s); resume it with --resume "
                           "%s/%s, or choose a new --out",
                           out_dir, names[i], out_dir, TRAINER_CHECKPOINT_DIR);
    }
    return 0;
}

/* Moves the run to the GPU: the model and the adapter as they are now (a
 * resumed checkpoint's values and dropout counter included), AdamW with the
 * same configuration and state, dropout on; then, when FEDLORA_WORLD_SIZE
 * asks for it, joins the other ranks. */
static int gpu_setup(run *r, const adamw_config *oc, char *device_line, size_t line_len) {
    const trainer_options *o = r->o;
    int bf16 = trainer_device_bf16(o->device, o->precision), dist = 0;
    const gpu_api *gpu = r->gpu = gpu_load_api(); /* loaded by trainer_device_check */
    if (!gpu ||
        trainer_gpu_upload(gpu, &r->g, r->m, r->s, o->batch, dataset_seq(r->d), bf16) != 0 ||
        gpu->adamw_init(r->g, oc) != 0 || (o->resume && gpu->adamw_upload(r->g, r->opt) != 0))
        return -1;
    if (gpu->dist_init_env(r->g, DIST_TIMEOUT_S, &dist) != 0)
        return err_context("joining the other GPUs of this run (%s)", GPU_DIST_ENV_WORLD);
    r->rank = gpu->dist_rank(r->g);
    r->world = gpu->dist_world(r->g);
    if (o->grad_accum % r->world != 0)
        return err_set("--grad-accum %d is not a multiple of %s=%d: each GPU takes an equal share "
                       "of every step's micro-batches",
                       o->grad_accum, GPU_DIST_ENV_WORLD, r->world);
    gpu->lora_set_training(r->g, 1);
    char name[128] = "?";
    double gib = 0;
    int major = 0, minor = 0;
    gpu->device_info(0, name, sizeof name, &gib, &major, &minor);
    int n =
        snprintf(device_line, line_len, "training on CUDA device 0 (%s, %.0f GiB, sm_%d%d) in %s",
                 name, gib, major, minor, bf16 ? "bf16" : "fp32");
    if (dist && n > 0 && (size_t)n < line_len)
        snprintf(device_line + n, line_len - (size_t)n,
                 ", rank %d of %d (%d of the %d micro-batches of each step)", r->rank, r->world,
                 o->grad_accum / r->world, o->grad_accum);
    return 0;
}

static const trainer_backend gpu_backend = {gpu_setup, gpu_step, gpu_run_eval, gpu_sync,
                                            gpu_teardown};

int trainer_run(model *m, lora_set *s, const dataset *d, const trainer_options *o,
                trainer_result *res) {
    memset(res, 0, sizeof *res);
    res->loss = res->eval_loss = NAN;
    if (check_options(o, d) != 0) return -1;
    int cuda = trainer_device_is_cuda(o->device);
    run r = {.m = m, .s = s, .d = d, .o = o, .world = 1, .dev = cuda ? &gpu_backend : &cpu_backend};
    model_precision prec;
    if (trainer_cpu_precision(m, o->device, o->precision, &prec) != 0) return -1;
    r.st.device = cuda ? "cuda" : "cpu";
    r.st.precision = model_precision_name(prec);
    int B = o->batch, K = o->grad_accum, T = dataset_seq(d), rc = -1;
    int n = lora_num_tensors(s);
    char device_line[256] = "";
    model_param **params = malloc(sizeof *params * (size_t)(n ? n : 1));
    r.in = malloc(sizeof(int32_t) * (size_t)K * B * T);
    r.tg = malloc(sizeof(int32_t) * (size_t)K * B * T);
    r.cfg = trainer_config_json(m, s, d, o);
    if (!params || !r.in || !r.tg || !r.cfg) {
        err_set("out of memory setting up training");
        goto done;
    }
    for (int i = 0; i < n; i++) params[i] = lora_tensor(s, i);
    adamw_config oc = o->opt;
    oc.total_steps = o->steps;
    /* On the GPU the host keeps the adapter and an AdamW over it only as
     * what checkpoints are read into and written from. */
    if (lora_want_grads(s) != 0 || adamw_create(&r.opt, params, n, &oc) != 0 ||
        dataset_order_init(&r.order, dataset_num_rows(d, DATASET_TRAIN), o->seed) != 0)
        goto done;
    char ckpt[PATH_LEN], ckdir[PATH_LEN];
    if (o->resume && (trainer_resolve_checkpoint(o->resume, ckpt) != 0 ||
                      trainer_load_checkpoint(ckpt, m, s, r.opt, &r.st, r.cfg) != 0))
        goto done;
    /* What a run killed while saving left in OUT/checkpoint (docs/training.md). */
    if (o->resume && (join(ckdir, o->out_dir, TRAINER_CHECKPOINT_DIR) != 0 ||
                      trainer_remove_leftovers(ckdir, NULL) != 0))
        goto done;
    if (r.dev->setup(&r, &oc, device_line, sizeof device_line) != 0) goto done;
    /* Files: rank 0 writes them all; the other ranks only train. */
    r.progress = r.rank == 0 ? o->progress : NULL;
    r.tty = r.progress && isatty(fileno(r.progress));
    if (r.rank == 0) {
        if (fio_mkdirs(o->out_dir, 0755) != 0 ||
            join(r.metrics_path, o->out_dir, TRAINER_METRICS_FILE) != 0)
            goto done;
        if (o->resume ? truncate_metrics(r.metrics_path, r.st.step, o->steps) != 0
                      : check_fresh(o->out_dir) != 0)
            goto done;
        r.metrics = fopen(r.metrics_path, "a");
        if (!r.metrics) {
            err_errno("cannot open %s", r.metrics_path);
            goto done;
        }
    }
    if (r.progress && o->resume)
        fprintf(r.progress, "resuming from %s at step %lld\n", ckpt, (long long)r.st.step);
    if (r.progress && device_line[0]) fprintf(r.progress, "%s\n", device_line);
    res->steps = r.st.step;
    res->rank = r.rank;
    rc = train_loop(&r, res);
    if (rc == 0) rc = evaluate(&r, res);
    /* The caller's s ends with the trained adapter, on every rank. */
    if (rc == 0 && r.dev->sync(&r) != 0) rc = -1;
    if (rc == 0 && r.rank == 0 && peft_save(s, o->out_dir) != 0)
        rc = err_context("writing the adapter");
done:
    r.dev->teardown(&r);
    if (r.metrics && fclose(r.metrics) != 0 && rc == 0)
        rc = err_errno("cannot close %s", r.metrics_path);
    dataset_order_free(&r.order);
    adamw_free(r.opt);
    json_decref(r.cfg);
    free(params);
    free(r.in);
    free(r.tg);
    return rc;
}
