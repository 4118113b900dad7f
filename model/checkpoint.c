/* checkpoint.c — Hugging Face model directories <-> model parameters. Compiled
 * once per `real` (fp32 product, fp64 gradient checks). */
#include "model/checkpoint.h"

#include "model/cpu/cpu.h"
#include "model/safetensors.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FL_REAL_F64
#define to_real safetensors_to_double
#else
#define to_real safetensors_to_float
#endif

/* GPT-2 and BLOOM checkpoints saved from the base model (GPT2Model,
 * BloomModel: bigscience's own BLOOM files) name their tensors without the
 * causal LM's "transformer." prefix. */
#define GPT2_PREFIX "transformer."

static int bare_names_allowed(const model *m) {
    return m->cfg.arch == MODEL_ARCH_GPT2 || m->cfg.arch == MODEL_ARCH_BLOOM;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int has_gpt2_prefix(const char *name) {
    return strncmp(name, GPT2_PREFIX, strlen(GPT2_PREFIX)) == 0;
}

static void format_shape(char *buf, size_t n, const int64_t *shape, int ndim) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used +=
            (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

/* ---- loading ------------------------------------------------------------------------ */

/* The parameter a file tensor holds, or NULL. GPT-2 and BLOOM names may
 * lack the "transformer." prefix. */
static model_param *param_for(const model *m, const char *name) {
    model_param *p = model_find_param(m, name);
    if (p || !bare_names_allowed(m) || has_gpt2_prefix(name)) return p;
    char full[MODEL_NAME_MAX];
    if (snprintf(full, sizeof full, GPT2_PREFIX "%s", name) >= (int)sizeof full) return NULL;
    return model_find_param(m, full);
}

/* Tensors a checkpoint may carry that are not parameters: GPT-2's causal-mask
 * buffers (attn.bias, attn.masked_bias, saved by transformers < 4.36), Llama's
 * rotary_emb.inv_freq (saved by some old conversions), and lm_head.weight
 * when it is tied to the embedding (transformers then uses the embedding). */
static int skippable(const model *m, const char *name) {
    if (m->cfg.tie_embeddings && strcmp(name, "lm_head.weight") == 0) return 1;
    if (m->cfg.arch == MODEL_ARCH_GPT2)
        return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias");
    return ends_with(name, ".rotary_emb.inv_freq");
}

static int find_tensor(const model *m, const safetensors_dir *d, const model_param *p,
                       const char *dir, const safetensors_tensor **out) {
    const safetensors_tensor *t = safetensors_dir_find(d, p->name), *bare = NULL;
    if (bare_names_allowed(m) && has_gpt2_prefix(p->name))
        bare = safetensors_dir_find(d, p->name + strlen(GPT2_PREFIX));
    if (t && bare)
        return err_set("%s: both '%s' and '%s' are present; keep one of them", dir, t->name,
                       bare->name);
    *out = t ? t : bare;
    if (!*out)
        return err_set("%s: tensor '%s' is missing from the weights (config.json says the model "
                       "has it)",
                       dir, p->name);
    return 0;
}

static int check_shape(const model_param *p, const safetensors_tensor *t) {
    int64_t want[2];
    model_param_disk_shape(p, want);
    int ok = t->ndim == p->ndim;
    for (int i = 0; ok && i < p->ndim; i++) ok = t->shape[i] == want[i];
    if (ok) return 0;
    char got[256], exp[64];
    format_shape(got, sizeof got, t->shape, t->ndim);
    format_shape(exp, sizeof exp, want, p->ndim);
    return err_set("%s: tensor '%s' has shape %s, but config.json implies %s", t->file, t->name,
                   got, exp);
}

static int load_param(model_param *p, const safetensors_tensor *t, real **scratch, int64_t *cap) {
    if (!p->conv1d) return to_real(t, p->data);
    if (p->numel > *cap) {
        real *b = realloc(*scratch, (size_t)p->numel * sizeof(real));
        if (!b)
            return err_set("out of memory for a %lld-element conversion buffer",
                           (long long)p->numel);
        *scratch = b;
        *cap = p->numel;
    }
    if (to_real(t, *scratch) != 0) return -1;
    /* (in, out) -> (out, in) */
    model_values_transpose(p->data, *scratch, p->shape[1], p->shape[0], sizeof(real));
    return 0;
}

/* Refuses a tensor that matches no parameter: that usually means config.json
 * and the weights disagree (attention_bias, tie_word_embeddings, …), and
 * running a different network than the one saved is worse than stopping. */
static int check_no_strangers(const model *m, const safetensors_dir *d) {
    for (int i = 0; i < safetensors_dir_count(d); i++) {
        const char *name = safetensors_dir_tensor_at(d, i)->name;
        if (!param_for(m, name) && !skippable(m, name))
            return err_set("%s: tensor '%s' is not a parameter of the model config.json "
                           "describes (config and weights disagree?)",
                           safetensors_dir_tensor_at(d, i)->file, name);
    }
    return 0;
}

int checkpoint_load_weights(model *m, const char *dir) {
    safetensors_dir *d;
    if (safetensors_dir_open(&d, dir) != 0) return -1;
    int rc = -1;
    real *scratch = NULL;
    int64_t cap = 0;
    if (check_no_strangers(m, d) != 0) goto out;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        const safetensors_tensor *t;
        if (find_tensor(m, d, p, dir, &t) != 0 || check_shape(p, t) != 0 ||
            load_param(p, t, &scratch, &cap) != 0)
            goto out;
    }
    rc = 0;
out:
    free(scratch);
    safetensors_dir_close(d);
    return rc;
}

int checkpoint_load(model **out, const char *dir) {
    *out = NULL;
    char path[4096];
    model_config cfg;
    if (fio_join(path, sizeof path, dir, "config.json") != 0 || model_config_load(&cfg, path) != 0)
        return err_context("loading model directory %s", dir);
    model *m;
    if (model_create(&m, &cfg) != 0) return err_context("loading model directory %s", dir);
    if (checkpoint_load_weights(m, dir) != 0) {
        model_free(m);
        return err_context("loading model directory %s", dir);
    }
    *out = m;
    return 0;
}

/* ---- mapping a frozen base ------------------------------------------------------------ */

#ifndef FL_REAL_F64
static int model_dtype_of(safetensors_dtype t, model_dtype *out) {
    switch (t) {
        case SAFETENSORS_F32:
            *out = MODEL_DTYPE_F32;
            return 0;
        case SAFETENSORS_BF16:
            *out = MODEL_DTYPE_BF16;
            return 0;
        case SAFETENSORS_F16:
            *out = MODEL_DTYPE_F16;
            return 0;
        default:
            return -1;
    }
}

/* Tensor t converted into a buffer of dtype `to` that p then owns: another
 * dtype (F64; anything but bf16 at BF16 precision) or unaligned bytes. In
 * chunks of values, so that only the result is held whole; a Conv1D weight
 * (GPT-2's, small) is converted whole and transposed. */
static int convert_matrix(model_param *p, const safetensors_tensor *t, model_dtype to) {
    enum { CHUNK = 1 << 16 };
    int64_t n = p->numel, chunk = p->conv1d ? n : CHUNK;
    void *buf = malloc((size_t)n * model_dtype_size(to));
    real *tmp = malloc((size_t)(n < chunk ? n : chunk) * sizeof(real) * (p->conv1d ? 2 : 1));
    int rc = buf && tmp ? 0 : err_set("out of memory for %s (%lld values)", p->name, (long long)n);
    size_t es = safetensors_dtype_size(t->dtype);
    for (int64_t i = 0; rc == 0 && i < n; i += chunk) {
        int64_t k = n - i < chunk ? n - i : chunk;
        safetensors_tensor part = *t; /* the values [i, i + k) as a tensor of their own */
        part.data = t->data + (size_t)i * es;
        part.numel = k;
        real *v = tmp;
        if (safetensors_to_float(&part, v) != 0) {
            rc = -1;
            break;
        }
        if (p->conv1d) { /* (in, out) -> (out, in) */
            model_values_transpose(tmp + n, tmp, p->shape[1], p->shape[0], sizeof(real));
            v = tmp + n;
        }
        if (to == MODEL_DTYPE_BF16)
            model_values_to_bf16(v, k, (uint16_t *)buf + i);
        else
            memcpy((float *)buf + i, v, (size_t)k * sizeof(real));
    }
    free(tmp);
    if (rc != 0) {
        free(buf);
        return -1;
    }
    p->owned = buf;
    p->values = buf;
    p->dtype = to;
    return 0;
}

/* A frozen weight matrix from tensor t, in its dtype: the mapped bytes
 * themselves when they can be used as they are (little-endian host, the
 * element alignment, not a Conv1D weight to transpose, the dtype the
 * precision multiplies), else one copy in the dtype wanted, after which the
 * file's pages are given back. */
static int map_matrix(model_param *p, const safetensors_tensor *t, model_precision prec) {
    model_dtype dt;
    int known = model_dtype_of(t->dtype, &dt) == 0;
    int want_bf16 = prec == MODEL_PRECISION_BF16;
    size_t es = safetensors_dtype_size(t->dtype);
    int aligned = ((uintptr_t)t->data % es) == 0;
    int le = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
    if (known && aligned && le && !p->conv1d && (!want_bf16 || dt == MODEL_DTYPE_BF16)) {
        p->values = t->data;
        p->dtype = dt;
        safetensors_tensor_keep(t);
        return 0;
    }
    if (known && le && p->conv1d && (!want_bf16 || dt == MODEL_DTYPE_BF16)) {
        /* The one copy, transposed to (out, in), in the file's dtype. */
        void *buf = malloc((size_t)p->numel * es);
        if (!buf)
            return err_set("out of memory for %s (%lld values)", p->name, (long long)p->numel);
        model_values_transpose(buf, t->data, p->shape[1], p->shape[0], es);
        p->owned = buf;
        p->values = buf;
        p->dtype = dt;
    } else if (convert_matrix(p, t, want_bf16 ? MODEL_DTYPE_BF16 : MODEL_DTYPE_F32) != 0) {
        return -1;
    }
    safetensors_tensor_drop(t);
    return 0;
}
#endif

int checkpoint_map(model **out, const char *dir, model_precision prec) {
#ifdef FL_REAL_F64
    /* The fp64 twin (gradient checks) holds everything in double. */
    if (prec != MODEL_PRECISION_FP32) return err_set("bf16 precision needs the fp32 build");
    return checkpoint_load(out, dir);
#else
    *out = NULL;
    char path[4096];
    model_config cfg;
    model *m = NULL;
    safetensors_dir *d = NULL;
    if (fio_join(path, sizeof path, dir, "config.json") != 0 ||
        model_config_load(&cfg, path) != 0 || model_create_unfilled(&m, &cfg) != 0 ||
        (prec == MODEL_PRECISION_BF16 && cpu_bf16_check() != 0) ||
        safetensors_dir_open(&d, dir) != 0 || check_no_strangers(m, d) != 0)
        goto fail;
    m->mapped = d;
    m->precision = prec;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        const safetensors_tensor *t;
        if (find_tensor(m, d, p, dir, &t) != 0 || check_shape(p, t) != 0) goto fail;
        if (p->ndim == 2) {
            if (map_matrix(p, t, prec) != 0) goto fail;
            continue;
        }
        /* Vectors (norms, biases) are small and read elementwise: real. */
        real *v = malloc((size_t)p->numel * sizeof(real));
        if (!v) {
            err_set("out of memory for %s", p->name);
            goto fail;
        }
        p->owned = v;
        p->data = v;
        p->values = v;
        p->dtype = MODEL_DTYPE_REAL;
        if (to_real(t, v) != 0) goto fail;
        safetensors_tensor_drop(t);
    }
    *out = m;
    return 0;
fail:
    if (m && !m->mapped) safetensors_dir_close(d);
    model_free(m);
    return err_context("loading model directory %s", dir);
#endif
}
