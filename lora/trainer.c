/* trainer.c — the LoRA training loop, checkpoints, resume and metrics
 * (the contract is in trainer.h; the file formats in docs/training.md), on
 * the CPU or on GPUs, through the CUDA backend module that lora/gpu_load.h
 * loads when --device cuda asks for it (docs/gpu.md). */
#include "lora/trainer.h"

#include "lora/gpu_load.h"
#include "lora/peft.h"
#include "model/checkpoint.h"
#include "model/cpu/cpu.h"
#include "util/err.h"
#include "util/fio.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATE_FORMAT "fedlora-train-checkpoint"
#define STATE_VERSION 1
#define STATE_MAX ((size_t)64 << 20)  /* bytes of trainer_state.json we read */
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

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
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
    double sum = 0, t0 = now(), last = t0;
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
        double t = now();
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

/* ---- the configuration a checkpoint belongs to ------------------------------------------ */

static json_t *hex64(uint64_t v) {
    char s[17];
    snprintf(s, sizeof s, "%016" PRIx64, v);
    return json_string(s);
}

/* Everything the arithmetic of a step depends on, besides the state a
 * checkpoint carries. Threads are left out: they only warn (trainer.h). */
static json_t *config_json(const model *m, const lora_set *s, const dataset *d,
                           const trainer_options *o) {
    const model_config *c = &m->cfg;
    uint64_t h = DATASET_FNV_OFFSET;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        h = dataset_fnv1a64(h, p->name, strlen(p->name) + 1);
        /* The values as held: a checkpoint's own bytes for a mapped base
         * (a bf16 copy when bf16 precision converted an fp32 one). */
        h = dataset_fnv1a64(h, p->values, (size_t)p->numel * model_dtype_size(p->dtype));
    }
    json_t *base = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o}", "arch",
                             c->arch == MODEL_ARCH_GPT2 ? "gpt2" : "llama", "vocab_size",
                             c->vocab_size, "hidden_size", c->hidden_size, "intermediate_size",
                             c->intermediate_size, "num_layers", c->num_layers, "num_heads",
                             c->num_heads, "num_kv_heads", c->num_kv_heads, "head_dim", c->head_dim,
                             "max_position", c->max_position, "weights_fnv1a64", hex64(h));
    json_t *mods = json_array();
    for (int i = 0; mods && i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        json_array_append_new(mods, json_pack("{s:s, s:i, s:f, s:f}", "path", mod->path, "rank",
                                              mod->rank, "alpha", mod->alpha, "scale", mod->scale));
    }
    json_t *lora =
        json_pack("{s:o, s:b, s:f, s:I}", "modules", mods, "use_rslora", s->cfg.use_rslora,
                  "dropout", s->cfg.dropout, "seed", (json_int_t)s->cfg.seed);
    json_t *data =
        json_pack("{s:o, s:s, s:i, s:I, s:I}", "content_fnv1a64", hex64(dataset_fingerprint(d)),
                  "format", dataset_format(d), "seq", dataset_seq(d), "train_rows",
                  (json_int_t)dataset_num_rows(d, DATASET_TRAIN), "eval_rows",
                  (json_int_t)dataset_num_rows(d, DATASET_EVAL));
    json_t *train =
        json_pack("{s:i, s:i, s:I, s:f, s:f, s:f, s:f, s:f, s:I, s:f, s:I}", "batch", o->batch,
                  "grad_accum", o->grad_accum, "steps", (json_int_t)o->steps, "lr", o->opt.lr,
                  "beta1", o->opt.beta1, "beta2", o->opt.beta2, "eps", o->opt.eps, "weight_decay",
                  o->opt.weight_decay, "warmup_steps", (json_int_t)o->opt.warmup_steps,
                  "max_grad_norm", o->opt.max_grad_norm, "seed", (json_int_t)o->seed);
    return json_pack("{s:o, s:o, s:o, s:o}", "base", base, "lora", lora, "data", data, "train",
                     train);
}

static uint64_t config_fingerprint(const json_t *cfg) {
    char *s = json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS);
    uint64_t h = s ? dataset_fnv1a64(DATASET_FNV_OFFSET, s, strlen(s)) : 0;
    free(s);
    return h;
}

static void value_text(const json_t *v, char *out, size_t n) {
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    snprintf(out, n, "%.80s%s", s ? s : "(absent)", s && strlen(s) > 80 ? "..." : "");
    free(s);
}

/* The first leaf where a and b differ, as "lora.modules[2].rank". */
static int first_difference(const json_t *a, const json_t *b, char *path, size_t n) {
    if (json_is_object(a) && json_is_object(b)) {
        size_t len = strlen(path);
        const char *key;
        json_t *va;
        json_object_foreach((json_t *)a, key, va) {
            snprintf(path + len, n - len, "%s%s", len ? "." : "", key);
            if (first_difference(va, json_object_get(b, key), path, n)) return 1;
        }
        json_object_foreach((json_t *)b, key, va) {
            snprintf(path + len, n - len, "%s%s", len ? "." : "", key);
            if (!json_object_get(a, key)) return 1;
        }
        path[len] = '\0';
        return 0;
    }
    if (json_is_array(a) && json_is_array(b)) {
        size_t len = strlen(path), na = json_array_size(a), nb = json_array_size(b);
        for (size_t i = 0; i < na || i < nb; i++) {
            snprintf(path + len, n - len, "[%zu]", i);
            if (i >= na || i >= nb) return 1;
            if (first_difference(json_array_get(a, i), json_array_get(b, i), path, n)) return 1;
        }
        path[len] = '\0';
        return 0;
    }
    return !json_equal((json_t *)a, (json_t *)b);
}

static const json_t *lookup(const json_t *root, const char *path) {
    char key[256];
    const json_t *v = root;
    for (const char *p = path; v && *p;) {
        if (*p == '.') p++;
        if (*p == '[') {
            v = json_array_get(v, strtoul(p + 1, (char **)&p, 10));
            p++; /* ']' */
            continue;
        }
        size_t k = strcspn(p, ".[");
        snprintf(key, sizeof key, "%.*s", (int)k, p);
        v = json_object_get(v, key);
        p += k;
    }
    return v;
}

static int check_config(const json_t *saved, const json_t *now_cfg, const char *ckpt) {
    char path[512] = "";
    if (!first_difference(saved, now_cfg, path, sizeof path)) return 0;
    char was[128], is[128];
    value_text(lookup(saved, path), was, sizeof was);
    value_text(lookup(now_cfg, path), is, sizeof is);
    return err_set("checkpoint %s belongs to another configuration: %s is %s there and %s in this "
                   "run; resume with the base model, data and options of the run that wrote it, "
                   "or start afresh with a new --out",
                   ckpt, path, was, is);
}

/* ---- checkpoint files ----------------------------------------------------------------- */

static int join(char *out, const char *dir, const char *name) {
    return fio_join(out, PATH_LEN, dir, name);
}

/* Removes a checkpoint directory: its plain files, then itself. */
static int remove_dir(const char *dir) {
    DIR *dp = opendir(dir);
    if (!dp) return errno == ENOENT ? 0 : err_errno("cannot open %s to remove it", dir);
    struct dirent *e;
    char path[PATH_LEN];
    int rc = 0;
    while (rc == 0 && (e = readdir(dp)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (join(path, dir, e->d_name) != 0)
            rc = -1;
        else if (unlink(path) != 0)
            rc = err_errno("cannot remove %s", path);
    }
    closedir(dp);
    if (rc == 0 && rmdir(dir) != 0) rc = err_errno("cannot remove %s", dir);
    return rc;
}

typedef struct {
    int64_t step;
    uint64_t position; /* rows of the data order consumed */
    uint64_t dropout_counter;
    int64_t tokens;
    double elapsed;
    const char *device;    /* where the run computes: "cpu" or "cuda" */
    const char *precision; /* "fp32" or "bf16" */
} train_state;

/* device and precision are recorded, not part of the configuration: a
 * checkpoint resumes on either device (with a warning, as for threads). */
static int write_state(const char *path, const train_state *st, json_t *cfg) {
    json_t *j =
        json_pack("{s:s, s:i, s:I, s:I, s:I, s:I, s:f, s:i, s:s, s:s, s:o, s:O}", "format",
                  STATE_FORMAT, "version", STATE_VERSION, "step", (json_int_t)st->step,
                  "data_position", (json_int_t)st->position, "dropout_counter",
                  (json_int_t)st->dropout_counter, "tokens", (json_int_t)st->tokens, "elapsed_s",
                  st->elapsed, "threads", omp_get_max_threads(), "device", st->device, "precision",
                  st->precision, "fingerprint", hex64(config_fingerprint(cfg)), "config", cfg);
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!text) return err_set("out of memory writing %s", path);
    int rc = fio_write_atomic(path, text, strlen(text), 0644);
    free(text);
    return rc;
}

static int write_checkpoint(const char *out_dir, const lora_set *s, const adamw *opt,
                            const train_state *st, json_t *cfg) {
    char ckdir[PATH_LEN], name[64], tmp[PATH_LEN], final[PATH_LEN], path[PATH_LEN];
    snprintf(name, sizeof name, "step-%08" PRId64, st->step);
    if (join(ckdir, out_dir, TRAINER_CHECKPOINT_DIR) != 0 || join(final, ckdir, name) != 0 ||
        snprintf(tmp, sizeof tmp, "%s.tmp", final) >= (int)sizeof tmp)
        return err_set("checkpoint path under %s is too long", out_dir);
    if (fio_mkdirs(ckdir, 0755) != 0 || remove_dir(tmp) != 0) return -1;
    if (mkdir(tmp, 0755) != 0) return err_errno("cannot create %s", tmp);
    if (peft_save(s, tmp) != 0) return -1;
    if (join(path, tmp, TRAINER_OPTIMIZER_FILE) != 0 || adamw_save(opt, path) != 0) return -1;
    if (join(path, tmp, TRAINER_STATE_FILE) != 0 || write_state(path, st, cfg) != 0) return -1;
    /* Complete and durable: make it appear under its name in one rename. */
    if (remove_dir(final) != 0) return -1;
    if (rename(tmp, final) != 0) return err_errno("cannot rename %s to %s", tmp, final);
    if (fio_fsync_dir_of(final) != 0) return -1;
    char latest[80];
    int n = snprintf(latest, sizeof latest, "%s\n", name);
    if (join(path, ckdir, TRAINER_LATEST_FILE) != 0 ||
        fio_write_atomic(path, latest, (size_t)n, 0644) != 0)
        return -1;
    /* Older checkpoints (and leftovers of interrupted saves) go. */
    DIR *dp = opendir(ckdir);
    if (!dp) return err_errno("cannot list %s", ckdir);
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(dp)) != NULL) {
        if (strncmp(e->d_name, "step-", 5) != 0 || !strcmp(e->d_name, name)) continue;
        if (join(path, ckdir, e->d_name) != 0 || remove_dir(path) != 0) rc = -1;
    }
    closedir(dp);
    return rc;
}

/* A checkpoint directory, or a checkpoint/ folder whose `latest` names one. */
static int resolve_checkpoint(const char *given, char *dir) {
    char path[PATH_LEN];
    if (join(path, given, TRAINER_STATE_FILE) != 0) return -1;
    if (fio_exists(path))
        return snprintf(dir, PATH_LEN, "%s", given) < PATH_LEN
                   ? 0
                   : err_set("path too long: %s", given);
    if (join(path, given, TRAINER_LATEST_FILE) != 0) return -1;
    if (!fio_exists(path))
        return err_set("%s is not a checkpoint: it holds neither %s nor %s (give OUT/checkpoint or "
                       "one of its step-N directories)",
                       given, TRAINER_STATE_FILE, TRAINER_LATEST_FILE);
    char *text;
    size_t len;
    if (fio_read_all(path, 256, &text, &len) != 0) return -1;
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r')) text[--len] = '\0';
    int ok = len > 5 && !strncmp(text, "step-", 5) && strspn(text + 5, "0123456789") == len - 5;
    int rc = ok ? join(dir, given, text) : err_set("%s does not name a step-N checkpoint", path);
    free(text);
    return rc;
}

static int get_int(json_t *j, const char *key, const char *where, int64_t *out) {
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return err_set("%s: \"%s\" must be a non-negative integer", where, key);
    *out = json_integer_value(v);
    return 0;
}

static const char *get_name(json_t *j, const char *key, const char *absent) {
    json_t *v = json_object_get(j, key);
    return json_is_string(v) ? json_string_value(v) : absent;
}

/* Reads dir/trainer_state.json; checks it belongs to cfg. st->device and
 * ->precision are this run's: a checkpoint of another device or thread count
 * is used, with a warning that the last bits may differ. */
static int read_state(const char *dir, json_t *cfg, train_state *st) {
    char path[PATH_LEN];
    if (join(path, dir, TRAINER_STATE_FILE) != 0) return -1;
    char *text;
    size_t len;
    if (fio_read_all(path, STATE_MAX, &text, &len) != 0) return -1;
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!j) return err_set("%s: not valid JSON (%s, line %d)", path, je.text, je.line);
    int64_t version = 0, pos = 0, counter = 0;
    json_t *format = json_object_get(j, "format"), *saved = json_object_get(j, "config");
    json_t *elapsed = json_object_get(j, "elapsed_s"), *threads = json_object_get(j, "threads");
    int rc = 0;
    if (!json_is_string(format) || strcmp(json_string_value(format), STATE_FORMAT) != 0)
        rc = err_set("%s is not a fedlora training checkpoint (\"format\" is not \"%s\")", path,
                     STATE_FORMAT);
    if (rc == 0 && (get_int(j, "version", path, &version) != 0 || version != STATE_VERSION))
        rc = err_set("%s: checkpoint version %lld, this build reads version %d", path,
                     (long long)version, STATE_VERSION);
    if (rc == 0 &&
        (get_int(j, "step", path, &st->step) != 0 || get_int(j, "data_position", path, &pos) != 0 ||
         get_int(j, "dropout_counter", path, &counter) != 0 ||
         get_int(j, "tokens", path, &st->tokens) != 0))
        rc = -1;
    if (rc == 0 && (!json_is_number(elapsed) || !json_is_object(saved)))
        rc = err_set("%s: \"elapsed_s\" or \"config\" missing", path);
    if (rc == 0) rc = check_config(saved, cfg, dir);
    if (rc == 0) {
        st->position = (uint64_t)pos;
        st->dropout_counter = (uint64_t)counter;
        st->elapsed = json_number_value(elapsed);
        /* Checkpoints from before devices existed were written on the CPU. */
        const char *dev = get_name(j, "device", "cpu"), *prec = get_name(j, "precision", "fp32");
        int cpu = strcmp(st->device, "cpu") == 0;
        if (strcmp(dev, st->device) != 0 || strcmp(prec, st->precision) != 0)
            fprintf(stderr,
                    "warning: %s was written by a run on %s (%s) and this run computes on %s "
                    "(%s): the run goes on correctly, but its numbers differ from an "
                    "uninterrupted run's within that precision's rounding\n",
                    dir, dev, prec, st->device, st->precision);
        else if (cpu && json_is_integer(threads) &&
                 json_integer_value(threads) != omp_get_max_threads())
            fprintf(stderr,
                    "warning: %s ran with %lld threads and this run has %d: the run goes on "
                    "correctly, but its last bits may differ from an uninterrupted run\n",
                    dir, (long long)json_integer_value(threads), omp_get_max_threads());
    }
    json_decref(j);
    return rc;
}

/* Puts the checkpoint's adapter, optimizer and counters into the run. */
static int load_checkpoint(const char *dir, const model *m, lora_set *s, adamw *opt,
                           train_state *st, json_t *cfg) {
    if (read_state(dir, cfg, st) != 0) return -1;
    lora_set *saved = NULL;
    if (peft_load(&saved, m, dir) != 0) return err_context("resuming from %s", dir);
    int rc = lora_copy_values(s, saved);
    lora_free(saved);
    if (rc != 0) return err_context("resuming from %s", dir);
    char path[PATH_LEN];
    if (join(path, dir, TRAINER_OPTIMIZER_FILE) != 0 || adamw_load(opt, path) != 0)
        return err_context("resuming from %s", dir);
    if (opt->step != st->step)
        return err_set("%s: the optimizer is at step %lld but the trainer state at %lld; the "
                       "checkpoint is inconsistent",
                       dir, (long long)opt->step, (long long)st->step);
    lora_set_dropout_counter(s, st->dropout_counter);
    return 0;
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
    const gpu_api *gpu; /* the CUDA backend, when the run is on a GPU */
    gpu_model *g;       /* NULL: the CPU trains */
} run;

/* Held-out loss, dropout off; rank 0 evaluates for every rank. */
static int evaluate(run *r, trainer_result *res) {
    if (r->rank != 0) return 0;
    double loss;
    int64_t n;
    int rc;
    if (r->g) {
        gpu_eval c = {r->gpu, r->g};
        r->gpu->lora_set_training(r->g, 0);
        rc = eval_rows(gpu_eval_forward, &c, r->o->batch, r->d, DATASET_EVAL, NULL, &loss, &n);
        r->gpu->lora_set_training(r->g, 1);
    } else {
        lora_set_training(r->s, 0);
        rc = trainer_eval(r->m, r->acts, r->o->batch, r->d, DATASET_EVAL, NULL, &loss, &n);
        lora_set_training(r->s, 1);
    }
    if (rc != 0 || n == 0) return rc;
    if (res) res->eval_loss = loss, res->eval_tokens = n;
    if (r->progress)
        fprintf(r->progress, "%sstep %lld: held-out loss %.4f over %lld tokens\n",
                r->tty ? "\r\033[K" : "", (long long)r->st.step, loss, (long long)n);
    return metrics_line(r->metrics, r->metrics_path,
                        "{\"step\": %lld, \"eval_loss\": %.17g, \"eval_tokens\": %lld}\n",
                        (long long)r->st.step, loss, (long long)n);
}

/* The CPU's step: each micro-batch's forward and backward, then AdamW. */
static int cpu_step(run *r, double *loss) {
    int B = r->o->batch, K = r->o->grad_accum, T = dataset_seq(r->d);
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
    return 0;
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
    if (r->g) {
        /* Dropout masks by the micro-batch's place in the step: those the
         * CPU (or one GPU) would draw for it. */
        r->gpu->lora_set_dropout_counter(r->g, r->st.dropout_counter + (uint64_t)k0);
        gpu_step_result sr;
        if (r->gpu->train_step(r->g, r->in, r->tg, k_share, &sr) != 0) return -1;
        r->lr = sr.lr;
        r->grad_norm = sr.grad_norm;
        *loss = sr.loss;
        r->st.dropout_counter += (uint64_t)K;
    } else {
        if (cpu_step(r, loss) != 0) return -1;
        r->st.dropout_counter = lora_dropout_counter(r->s);
    }
    r->st.step++;
    r->st.position += (uint64_t)B * K;
    r->st.tokens += (int64_t)B * K * T;
    return 0;
}

/* The GPU's adapter and AdamW state into r->s and r->opt (what checkpoints
 * and the adapter files are written from). */
static int sync_to_host(run *r) {
    if (r->g &&
        (r->gpu->lora_download(r->g, r->s) != 0 || r->gpu->adamw_download(r->g, r->opt) != 0))
        return err_context("copying the adapter from the GPU");
    return 0;
}

static void progress(run *r, double loss, int64_t first_step, double t0, int64_t tokens0,
                     double *last_print) {
    const trainer_options *o = r->o;
    if (!r->progress) return;
    double t = now(), dt = t - t0;
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

static int train_loop(run *r, trainer_result *res) {
    const trainer_options *o = r->o;
    int64_t first_step = r->st.step, tokens0 = r->st.tokens;
    double t0 = now(), last_print = 0, elapsed0 = r->st.elapsed;
    if (o->eval_every > 0 && r->st.step == 0 && evaluate(r, NULL) != 0) return -1;
    while (r->st.step < o->steps) {
        double loss = 0;
        if (step_once(r, &loss) != 0) return -1;
        double t = now();
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
            (sync_to_host(r) != 0 ||
             write_checkpoint(o->out_dir, r->s, r->opt, &r->st, r->cfg) != 0))
            return err_context("saving the checkpoint of step %lld", (long long)r->st.step);
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

int trainer_run(model *m, lora_set *s, const dataset *d, const trainer_options *o,
                trainer_result *res) {
    memset(res, 0, sizeof *res);
    res->loss = res->eval_loss = NAN;
    if (check_options(o, d) != 0) return -1;
    int cuda = trainer_device_is_cuda(o->device);
    run r = {.m = m, .s = s, .d = d, .o = o, .world = 1};
    model_precision prec;
    if (trainer_cpu_precision(m, o->device, o->precision, &prec) != 0) return -1;
    r.st.device = cuda ? "cuda" : "cpu";
    r.st.precision = model_precision_name(prec);
    int B = o->batch, K = o->grad_accum, T = dataset_seq(d), rc = -1, attached = 0;
    int n = lora_num_tensors(s);
    char device_line[256] = "";
    model_param **params = malloc(sizeof *params * (size_t)(n ? n : 1));
    r.in = malloc(sizeof(int32_t) * (size_t)K * B * T);
    r.tg = malloc(sizeof(int32_t) * (size_t)K * B * T);
    r.cfg = config_json(m, s, d, o);
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
        (!cuda && (lora_reserve(s, B * T) != 0 || model_acts_create(&r.acts, m, B, T) != 0)) ||
        dataset_order_init(&r.order, dataset_num_rows(d, DATASET_TRAIN), o->seed) != 0)
        goto done;
    char ckpt[PATH_LEN];
    if (o->resume && (resolve_checkpoint(o->resume, ckpt) != 0 ||
                      load_checkpoint(ckpt, m, s, r.opt, &r.st, r.cfg) != 0))
        goto done;
    if (cuda && gpu_setup(&r, &oc, device_line, sizeof device_line) != 0) goto done;
    if (!cuda) {
        char how[96];
        trainer_precision_describe(o->device, prec, how, sizeof how);
        snprintf(device_line, sizeof device_line, "training on the CPU (%d threads) in %s",
                 omp_get_max_threads(), how);
    }
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
    if (!cuda) {
        if (lora_attach(s, m) != 0) goto done;
        attached = 1;
        lora_set_training(s, 1);
    }
    res->rank = r.rank;
    rc = train_loop(&r, res);
    if (rc == 0) rc = evaluate(&r, res);
    /* The caller's s ends with the trained adapter, on every rank. */
    if (rc == 0 && sync_to_host(&r) != 0) rc = -1;
    if (rc == 0 && r.rank == 0 && peft_save(s, o->out_dir) != 0)
        rc = err_context("writing the adapter");
done:
    if (attached) {
        lora_set_training(s, 0);
        lora_detach(s);
    }
    if (r.g) r.gpu->model_free(r.g);
    if (r.metrics && fclose(r.metrics) != 0 && rc == 0)
        rc = err_errno("cannot close %s", r.metrics_path);
    dataset_order_free(&r.order);
    model_acts_free(r.acts);
    adamw_free(r.opt);
    json_decref(r.cfg);
    free(params);
    free(r.in);
    free(r.tg);
    return rc;
}
