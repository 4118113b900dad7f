/* checkpoint_save.c — a model out to a Hugging Face directory, streamed
 * tensor by tensor, sharded as transformers shards, with optional edits of
 * tensors on the way out (merges, random initialisation).
 *
 * Memory: a tensor written as it is held (same dtype, not edited) goes from
 * its values to the file in chunks, and a mapped source's pages can be given
 * back behind the writer; an edited or converted tensor is one `real` buffer
 * of that tensor. So merging an adapter into an 8B bf16 base needs the
 * largest adapted tensor, not the model.
 *
 * Sharding follows transformers' save_pretrained (max_shard_size "5GB",
 * through huggingface_hub's split_torch_state_dict_into_shards): tensors in
 * order, a new shard when the next tensor would take the current one past
 * the limit (a tensor larger than the limit gets a shard of its own), files
 * model-00001-of-0000N.safetensors, and model.safetensors.index.json
 * {"metadata": {"total_size": bytes}, "weight_map": {name: file}} written
 * with sorted keys and an indent of 2, as json.dumps(..., indent=2,
 * sort_keys=True) writes it. One shard is written as model.safetensors. */
#include "model/checkpoint.h"

#include "model/cpu/cpu.h"
#include "model/safetensors.h"
#include "util/err.h"
#include "util/fio.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SAVE_CHUNK 65536            /* values converted per write */
#define RAW_CHUNK ((size_t)8 << 20) /* bytes copied per write when nothing changes */

static int dtype_from_name(const char *s, safetensors_dtype *out) {
    if (strcmp(s, "float32") == 0)
        *out = SAFETENSORS_F32;
    else if (strcmp(s, "bfloat16") == 0)
        *out = SAFETENSORS_BF16;
    else if (strcmp(s, "float16") == 0)
        *out = SAFETENSORS_F16;
    else
        return err_set("unknown dtype '%s' for saving (float32, bfloat16, float16)", s);
    return 0;
}

static int same_dtype(model_dtype m, safetensors_dtype s) {
    return (m == MODEL_DTYPE_F32 && s == SAFETENSORS_F32) ||
           (m == MODEL_DTYPE_BF16 && s == SAFETENSORS_BF16) ||
           (m == MODEL_DTYPE_F16 && s == SAFETENSORS_F16);
}

/* Streams n values as dtype dt, SAVE_CHUNK at a time; to bf16 rounded to
 * nearest, or stochastically with key when stochastic. (With real =
 * double, narrowing goes through fp32 first; that double rounding only
 * matters for the fp64 test build.) */
static int put_values(safetensors_writer *w, const real *v, int64_t n, safetensors_dtype dt,
                      unsigned char *buf, int stochastic, uint64_t key) {
    size_t es = safetensors_dtype_size(dt);
    if (dt == SAFETENSORS_F32 && sizeof(real) == 4)
        return safetensors_writer_put(w, v, (size_t)n * 4);
    for (int64_t i = 0; i < n; i += SAVE_CHUNK) {
        int64_t k = n - i < SAVE_CHUNK ? n - i : SAVE_CHUNK;
        if (dt == SAFETENSORS_BF16 && stochastic) {
            model_values_to_bf16_stochastic(v + i, k, key, i, (uint16_t *)buf);
        } else if (dt == SAFETENSORS_BF16) {
            model_values_to_bf16(v + i, k, (uint16_t *)buf);
        } else {
            for (int64_t j = 0; j < k; j++) {
                float f = (float)v[i + j];
                if (dt == SAFETENSORS_F32) {
                    memcpy(buf + 4 * j, &f, 4);
                } else {
                    uint16_t h = safetensors_f32_to_f16(f);
                    memcpy(buf + 2 * j, &h, 2);
                }
            }
        }
        if (safetensors_writer_put(w, buf, (size_t)k * es) != 0) return -1;
    }
    return 0;
}

typedef struct {
    const model *m;
    const checkpoint_save_options *o;
    safetensors_dtype dt;
    unsigned char *buf; /* SAVE_CHUNK values of any dtype */
    real *vals;         /* one tensor as real, grown as needed */
    int64_t vals_cap;
    void *raw; /* one Conv1D tensor transposed in its dtype */
    size_t raw_cap;
} saver;

static void *grow(void **buf, size_t *cap, size_t n) {
    if (n <= *cap) return *buf;
    void *b = realloc(*buf, n);
    if (!b) return NULL;
    *buf = b;
    *cap = n;
    return b;
}

static real *grow_vals(saver *sv, int64_t n) {
    size_t cap = (size_t)sv->vals_cap * sizeof(real);
    real *v = grow((void **)&sv->vals, &cap, (size_t)n * sizeof(real));
    sv->vals_cap = (int64_t)(cap / sizeof(real));
    return v;
}

/* The bytes of a tensor held as it will be written: copied through in
 * chunks (a mapped source's pages given back behind, when asked). */
static int put_raw(saver *sv, safetensors_writer *w, const model_param *p) {
    size_t n = (size_t)p->numel * model_dtype_size(p->dtype);
    const unsigned char *v = p->values;
    if (p->conv1d) { /* (out, in) in memory, (in, out) in the file */
        void *t = grow(&sv->raw, &sv->raw_cap, n);
        if (!t) return err_set("out of memory writing %s", p->name);
        model_values_transpose(t, v, p->shape[0], p->shape[1], model_dtype_size(p->dtype));
        v = t;
    }
    for (size_t off = 0; off < n; off += RAW_CHUNK) {
        size_t k = n - off < RAW_CHUNK ? n - off : RAW_CHUNK;
        if (safetensors_writer_put(w, v + off, k) != 0) return -1;
        if (sv->o->release && !p->conv1d)
            safetensors_dir_release(sv->m->mapped, (const unsigned char *)p->values + off, k);
    }
    return 0;
}

static int put_param(saver *sv, safetensors_writer *w, int index) {
    const model_param *p = &sv->m->params[index];
    const checkpoint_edit *e = sv->o->edit;
    int edited = e && e->touches(e->ctx, p);
    if (!edited && p->values && same_dtype(p->dtype, sv->dt)) return put_raw(sv, w, p);
    /* Converted or edited: the tensor as real, in memory layout. */
    real *v = grow_vals(sv, p->numel);
    if (!v) return err_set("out of memory for %s as %lld values", p->name, (long long)p->numel);
    if (p->values)
        model_param_read(p, 0, p->numel, v);
    else
        memset(v, 0, (size_t)p->numel * sizeof(real));
    if (edited && e->apply(e->ctx, p, v) != 0) return err_context("writing %s", p->name);
    if (sv->o->release && p->values)
        safetensors_dir_release(sv->m->mapped, p->values,
                                (size_t)p->numel * model_dtype_size(p->dtype));
    if (p->conv1d) { /* (out, in) -> (in, out) through the spare buffer */
        void *t = grow(&sv->raw, &sv->raw_cap, (size_t)p->numel * sizeof(real));
        if (!t) return err_set("out of memory writing %s", p->name);
        model_values_transpose(t, v, p->shape[0], p->shape[1], sizeof(real));
        memcpy(v, t, (size_t)p->numel * sizeof(real));
    }
    return put_values(w, v, p->numel, sv->dt, sv->buf, sv->o->stochastic,
                      CHECKPOINT_SR_KEY(sv->o->sr_key, index));
}

/* The shard each param goes to (shard[i]), and how many there are. */
static int plan_shards(const model *m, size_t es, int64_t max_bytes, int *shard) {
    int n = 0;
    int64_t used = 0;
    for (int i = 0; i < m->n_params; i++) {
        int64_t b = m->params[i].numel * (int64_t)es;
        if (i == 0 || (used > 0 && used + b > max_bytes)) {
            n++;
            used = 0;
        }
        shard[i] = n - 1;
        used += b;
    }
    return n;
}

static int write_shard(saver *sv, const char *path, int first, int last) {
    const model *m = sv->m;
    safetensors_entry *e = calloc((size_t)(last - first), sizeof *e);
    if (!e) return err_set("out of memory saving %s", path);
    for (int i = first; i < last; i++) {
        const model_param *p = &m->params[i];
        e[i - first].name = p->name;
        e[i - first].dtype = sv->dt;
        e[i - first].ndim = p->ndim;
        model_param_disk_shape(p, e[i - first].shape);
    }
    static const char *const meta[] = {"format", "pt", NULL};
    safetensors_writer *w;
    int rc = safetensors_writer_open(&w, path, e, last - first, meta);
    free(e);
    if (rc != 0) return -1;
    for (int i = first; i < last; i++)
        if (put_param(sv, w, i) != 0) {
            safetensors_writer_abort(w);
            return -1;
        }
    return safetensors_writer_finish(w);
}

static int write_index(const model *m, const char *dir, const int *shard, int n_shards,
                       int64_t total) {
    json_t *map = json_object(), *root = NULL;
    char name[64], path[4096];
    char *text = NULL;
    int rc = -1;
    for (int i = 0; map && i < m->n_params; i++) {
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", shard[i] + 1, n_shards);
        if (json_object_set_new(map, m->params[i].name, json_string(name)) != 0) break;
    }
    if (map && json_object_size(map) == (size_t)m->n_params)
        root = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)total,
                         "weight_map", map);
    /* Python's json.dumps ends without a newline; save_pretrained adds one. */
    if (root) text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    size_t len = text ? strlen(text) : 0;
    char *line = text ? realloc(text, len + 2) : NULL;
    if (!line) {
        free(text);
        err_set("out of memory writing the index of %s", dir);
    } else {
        line[len] = '\n';
        line[len + 1] = '\0';
        rc = fio_join(path, sizeof path, dir, "model.safetensors.index.json") == 0
                 ? fio_write_atomic(path, line, len + 1, 0644)
                 : -1;
        free(line);
    }
    json_decref(root);
    json_decref(map);
    return rc;
}

/* The shard limit when the caller sets none: transformers' 5 GB, or the
 * test knob FEDLORA_SHARD_BYTES (docs/formats.md), which lets tests shard
 * small models the way real ones are sharded. Aggregator and nodes must
 * agree on it (a node's low-rank sync rewrites the version), so a value
 * that is not a whole number of bytes in 1..5e9 is an error, not ignored. */
static int shard_limit(int64_t *out) {
    const char *s = getenv("FEDLORA_SHARD_BYTES");
    *out = CHECKPOINT_SHARD_BYTES;
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || s[0] < '0' || s[0] > '9' || v < 1 || v > CHECKPOINT_SHARD_BYTES)
        return err_set("FEDLORA_SHARD_BYTES='%s': want a whole number of bytes from 1 to %lld "
                       "(a test knob; unset it for transformers' 5 GB shards)",
                       s, (long long)CHECKPOINT_SHARD_BYTES);
    *out = v;
    return 0;
}

/* The layout not written must not stay behind: transformers (and fedlora)
 * would load a stale model.safetensors before an index. */
static int remove_other_layout(const char *dir, int sharded) {
    char path[4096];
    if (fio_join(path, sizeof path, dir,
                 sharded ? "model.safetensors" : "model.safetensors.index.json") != 0)
        return -1;
    if (unlink(path) != 0 && errno != ENOENT) return err_errno("cannot remove %s", path);
    return 0;
}

int checkpoint_write(const model *m, const char *dir, const checkpoint_save_options *o) {
    saver sv = {.m = m, .o = o};
    char path[4096], config[4096];
    int *shard = NULL, rc = -1;
    if (dtype_from_name(o->dtype, &sv.dt) != 0 || fio_mkdirs(dir, 0755) != 0 ||
        fio_join(config, sizeof config, dir, "config.json") != 0)
        goto out;
    sv.buf = malloc(SAVE_CHUNK * 4);
    shard = malloc(sizeof *shard * (size_t)(m->n_params ? m->n_params : 1));
    if (!sv.buf || !shard) {
        err_set("out of memory");
        goto out;
    }
    size_t es = safetensors_dtype_size(sv.dt);
    int64_t max = o->max_shard_bytes, total = 0;
    if (max <= 0 && shard_limit(&max) != 0) goto out;
    int n = plan_shards(m, es, max, shard);
    for (int i = 0; i < m->n_params; i++) total += m->params[i].numel * (int64_t)es;
    /* The weights go first, config.json last, so that a directory without
     * config.json is visibly unfinished; each file is replaced atomically. */
    for (int s = 0, first = 0; s < n; s++) {
        int last = first;
        while (last < m->n_params && shard[last] == s) last++;
        if (n == 1)
            snprintf(path, sizeof path, "%s/model.safetensors", dir);
        else
            snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, s + 1, n);
        if (write_shard(&sv, path, first, last) != 0) goto out;
        first = last;
    }
    if ((n > 1 && write_index(m, dir, shard, n, total) != 0) ||
        remove_other_layout(dir, n > 1) != 0)
        goto out;
    model_config cfg = m->cfg;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s", o->dtype);
    if (model_config_save(&cfg, config) != 0) goto out;
    rc = 0;
out:
    free(sv.buf);
    free(sv.vals);
    free(sv.raw);
    free(shard);
    if (rc != 0) err_context("saving model to %s", dir);
    return rc;
}

int checkpoint_save(const model *m, const char *dir, const char *dtype) {
    checkpoint_save_options o = {.dtype = dtype};
    return checkpoint_write(m, dir, &o);
}
