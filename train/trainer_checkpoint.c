/* trainer_checkpoint.c — see trainer_checkpoint.h. */
#include "train/trainer_checkpoint.h"

#include "lora/peft.h"
#include "util/err.h"
#include "util/fio.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_FORMAT "fedlora-train-checkpoint"
#define STATE_VERSION 1
#define STATE_MAX ((size_t)64 << 20) /* bytes of trainer_state.json we read */
#define PATH_LEN 4096

/* ---- the configuration a checkpoint belongs to ------------------------------------------ */

static json_t *hex64(uint64_t v) {
    char s[17];
    snprintf(s, sizeof s, "%016" PRIx64, v);
    return json_string(s);
}

/* Everything the arithmetic of a step depends on, besides the state a
 * checkpoint carries. Threads are left out: they only warn (trainer.h). */
json_t *trainer_config_json(const model *m, const lora_set *s, const dataset *d,
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
    json_t *base =
        json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o}", "arch",
                  c->arch == MODEL_ARCH_GPT2    ? "gpt2"
                  : c->arch == MODEL_ARCH_BLOOM ? "bloom"
                                                : "llama",
                  "vocab_size", c->vocab_size, "hidden_size", c->hidden_size, "intermediate_size",
                  c->intermediate_size, "num_layers", c->num_layers, "num_heads", c->num_heads,
                  "num_kv_heads", c->num_kv_heads, "head_dim", c->head_dim, "max_position",
                  c->max_position, "weights_fnv1a64", hex64(h));
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

/* In a checkpoint/ directory: every step-N directory but `keep` (NULL: all
 * complete ones stay), the step-N.tmp directories of interrupted saves, and
 * the latest.tmp.<pid> files of an interrupted fio_write_atomic. */
int trainer_remove_leftovers(const char *ckdir, const char *keep) {
    DIR *dp = opendir(ckdir);
    if (!dp) return errno == ENOENT ? 0 : err_errno("cannot list %s", ckdir);
    struct dirent *e;
    char path[PATH_LEN];
    int rc = 0;
    while (rc == 0 && (e = readdir(dp)) != NULL) {
        const char *d = e->d_name;
        size_t n = strlen(d);
        int tmp_dir = !strncmp(d, "step-", 5) && n > 4 && !strcmp(d + n - 4, ".tmp");
        int old_step = !strncmp(d, "step-", 5) && keep && strcmp(d, keep) != 0;
        int tmp_latest =
            !strncmp(d, TRAINER_LATEST_FILE ".tmp.", strlen(TRAINER_LATEST_FILE ".tmp."));
        if (!tmp_dir && !old_step && !tmp_latest) continue;
        if (join(path, ckdir, d) != 0)
            rc = -1;
        else if (tmp_latest ? unlink(path) != 0 && errno != ENOENT : remove_dir(path) != 0)
            rc = tmp_latest ? err_errno("cannot remove %s", path) : -1;
    }
    closedir(dp);
    return rc;
}

int trainer_write_checkpoint(const char *out_dir, const lora_set *s, const adamw *opt,
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
    return trainer_remove_leftovers(ckdir, name);
}

/* A checkpoint directory, or a checkpoint/ folder whose `latest` names one. */
int trainer_resolve_checkpoint(const char *given, char *dir) {
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
int trainer_load_checkpoint(const char *dir, const model *m, lora_set *s, adamw *opt,
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
