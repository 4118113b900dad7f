/* adamw.c — AdamW, warmup + cosine schedule, global-norm clipping (adamw.h). */
#include "lora/adamw.h"

#include "model/safetensors.h"
#include "util/err.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FL_REAL_F64
#define ADAMW_DTYPE SAFETENSORS_F64
#define adamw_sqrt sqrt
#else
#define ADAMW_DTYPE SAFETENSORS_F32
#define adamw_sqrt sqrtf
#endif

#define ADAMW_NAME_MAX (MODEL_NAME_MAX + 16)

void adamw_config_init(adamw_config *c) {
    memset(c, 0, sizeof *c);
    c->lr = 1e-3;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->eps = 1e-8;
    c->weight_decay = 1e-2;
    c->max_grad_norm = 1.0;
}

int adamw_create(adamw **out, model_param *const *params, int n, const adamw_config *cfg) {
    *out = NULL;
    if (n <= 0) return err_set("AdamW: nothing to optimize (no trainable tensors)");
    if (!(cfg->lr >= 0) || !(cfg->beta1 >= 0 && cfg->beta1 < 1) ||
        !(cfg->beta2 >= 0 && cfg->beta2 < 1) || !(cfg->eps >= 0) || !(cfg->weight_decay >= 0) ||
        !(cfg->max_grad_norm >= 0) || cfg->warmup_steps < 0 || cfg->total_steps < 0)
        return err_set("AdamW: invalid hyper-parameters (lr %g, betas (%g, %g), eps %g, weight "
                       "decay %g, max grad norm %g, warmup %" PRId64 ", total %" PRId64
                       "): each must be >= 0, betas < 1",
                       cfg->lr, cfg->beta1, cfg->beta2, cfg->eps, cfg->weight_decay,
                       cfg->max_grad_norm, cfg->warmup_steps, cfg->total_steps);
    int64_t numel = 0;
    for (int i = 0; i < n; i++) {
        if (!params[i]->grad)
            return err_set("AdamW: tensor %s has no gradient buffer", params[i]->name);
        numel += params[i]->numel;
    }
    adamw *o = calloc(1, sizeof *o);
    if (!o) return err_set("out of memory creating AdamW");
    o->cfg = *cfg;
    o->n = n;
    o->numel = numel;
    o->params = malloc((size_t)n * sizeof *o->params);
    o->exp_avg = calloc((size_t)numel, sizeof(real));
    o->exp_avg_sq = calloc((size_t)numel, sizeof(real));
    if (!o->params || !o->exp_avg || !o->exp_avg_sq) {
        adamw_free(o);
        return err_set("out of memory for AdamW's moments (%lld values)", (long long)numel);
    }
    memcpy(o->params, params, (size_t)n * sizeof *o->params);
    *out = o;
    return 0;
}

void adamw_free(adamw *o) {
    if (!o) return;
    free(o->params);
    free(o->exp_avg);
    free(o->exp_avg_sq);
    free(o);
}

/* transformers' _get_cosine_schedule_with_warmup_lr_lambda with num_cycles 0.5. */
double adamw_schedule(int64_t k, int64_t warmup, int64_t total) {
    if (k < warmup) return (double)k / (double)(warmup > 1 ? warmup : 1);
    if (total <= 0) return 1.0;
    int64_t span = total - warmup > 1 ? total - warmup : 1;
    double progress = (double)(k - warmup) / (double)span;
    double f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
    return f > 0 ? f : 0.0;
}

double adamw_next_lr(const adamw *o) {
    return o->cfg.lr * adamw_schedule(o->step, o->cfg.warmup_steps, o->cfg.total_steps);
}

double adamw_clip_grad_norm(model_param *const *params, int n, double max_norm) {
    double sum = 0;
    for (int i = 0; i < n; i++) {
        const real *g = params[i]->grad;
        double t = 0;
        for (int64_t j = 0; j < params[i]->numel; j++) t += (double)g[j] * g[j];
        sum += t;
    }
    double norm = sqrt(sum);
    if (max_norm > 0 && isfinite(norm)) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1) {
            real c = (real)coef;
            for (int i = 0; i < n; i++) {
                real *g = params[i]->grad;
                for (int64_t j = 0; j < params[i]->numel; j++) g[j] *= c;
            }
        }
    }
    return norm;
}

int adamw_step(adamw *o) {
    const adamw_config *c = &o->cfg;
    double norm = adamw_clip_grad_norm(o->params, o->n, c->max_grad_norm);
    if (!isfinite(norm))
        return err_set("AdamW step %" PRId64 ": the gradient norm is %g; the update was skipped "
                       "(lower the learning rate or check the data)",
                       o->step + 1, norm);
    double lr = adamw_next_lr(o);
    int64_t t = o->step + 1;
    double bc1 = 1 - pow(c->beta1, (double)t);
    double bc2_sqrt = sqrt(1 - pow(c->beta2, (double)t));
    double step_size = lr / bc1;
    /* The scalars as torch hands them to fp32 kernels. */
    real decay = (real)(1 - lr * c->weight_decay);
    real w1 = (real)(1 - c->beta1), b2 = (real)c->beta2, w2 = (real)(1 - c->beta2);
    real bc2s = (real)bc2_sqrt, eps = (real)c->eps, neg_step = (real)(-step_size);
    real b1 = 1 - w1; /* (1 - weight) at the tensor precision, as torch's lerp */
    int lerp_low = fabs((double)w1) < 0.5;
    int64_t off = 0;
    for (int i = 0; i < o->n; i++) {
        model_param *p = o->params[i];
        real *x = p->data, *m = o->exp_avg + off, *v = o->exp_avg_sq + off;
        const real *g = p->grad;
#pragma omp parallel for if (p->numel > 65536)
        for (int64_t j = 0; j < p->numel; j++) {
            x[j] = x[j] * decay;
            /* torch's lerp: the form depends on which side the weight is */
            m[j] = lerp_low ? m[j] + w1 * (g[j] - m[j]) : g[j] - (g[j] - m[j]) * b1;
            v[j] = v[j] * b2;
            v[j] = v[j] + w2 * g[j] * g[j];
            real denom = adamw_sqrt(v[j]) / bc2s + eps;
            x[j] = x[j] + neg_step * m[j] / denom;
        }
        off += p->numel;
    }
    o->step = t;
    o->last_lr = lr;
    o->last_grad_norm = norm;
    return 0;
}

/* ---- state files ------------------------------------------------------------------- */

static int state_name(char *out, const char *kind, const char *name) {
    int w = snprintf(out, ADAMW_NAME_MAX, "%s.%s", kind, name);
    return w > 0 && w < ADAMW_NAME_MAX ? 0 : err_set("AdamW: tensor name %s is too long", name);
}

int adamw_save(const adamw *o, const char *path) {
    int n = 2 * o->n;
    safetensors_entry *e = calloc((size_t)n, sizeof *e);
    char(*names)[ADAMW_NAME_MAX] = calloc((size_t)n, sizeof *names);
    int rc = -1;
    if (!e || !names) {
        err_set("out of memory saving AdamW state to %s", path);
        goto out;
    }
    int64_t off = 0;
    for (int i = 0; i < o->n; i++) {
        const model_param *p = o->params[i];
        for (int k = 0; k < 2; k++) {
            safetensors_entry *t = &e[2 * i + k];
            if (state_name(names[2 * i + k], k ? "exp_avg_sq" : "exp_avg", p->name) != 0) goto out;
            t->name = names[2 * i + k];
            t->dtype = ADAMW_DTYPE;
            t->ndim = p->ndim;
            t->shape[0] = p->shape[0];
            t->shape[1] = p->shape[1];
            t->data = (k ? o->exp_avg_sq : o->exp_avg) + off;
        }
        off += p->numel;
    }
    char step[32];
    snprintf(step, sizeof step, "%" PRId64, o->step);
    const char *meta[] = {"format", "fedlora-adamw", "step", step, NULL};
    rc = safetensors_write(path, e, n, meta);
out:
    free(e);
    free(names);
    return rc;
}

int adamw_load(adamw *o, const char *path) {
    safetensors_file *f;
    if (safetensors_open(&f, path) != 0) return err_context("loading the AdamW state");
    int rc = -1;
    const char *fmt = safetensors_metadata(f, "format");
    const char *step_s = safetensors_metadata(f, "step");
    if (!fmt || strcmp(fmt, "fedlora-adamw") != 0 || !step_s) {
        err_set("%s is not a fedlora AdamW state (metadata format \"fedlora-adamw\" and step "
                "expected)",
                path);
        goto out;
    }
    char *end;
    errno = 0;
    long long step = strtoll(step_s, &end, 10);
    if (errno || *end || end == step_s || step < 0) {
        err_set("%s: metadata step \"%s\" is not a step count", path, step_s);
        goto out;
    }
    if (safetensors_count(f) != 2 * o->n) {
        err_set("%s holds %d moment tensors, this run has %d: a checkpoint from another "
                "configuration",
                path, safetensors_count(f), 2 * o->n);
        goto out;
    }
    /* Check everything before touching the live state. */
    for (int pass = 0; pass < 2; pass++) {
        int64_t off = 0;
        for (int i = 0; i < o->n; i++) {
            const model_param *p = o->params[i];
            for (int k = 0; k < 2; k++) {
                char name[ADAMW_NAME_MAX];
                if (state_name(name, k ? "exp_avg_sq" : "exp_avg", p->name) != 0) goto out;
                const safetensors_tensor *t = safetensors_find(f, name);
                if (!t || t->dtype != ADAMW_DTYPE || t->ndim != p->ndim ||
                    t->shape[0] != p->shape[0] || (p->ndim == 2 && t->shape[1] != p->shape[1])) {
                    err_set("%s: moment %s is missing or has another dtype or shape than this "
                            "run's %s: a checkpoint from another configuration",
                            path, name, p->name);
                    goto out;
                }
                if (pass == 1) {
                    real *dst = (k ? o->exp_avg_sq : o->exp_avg) + off;
                    memcpy(dst, t->data, (size_t)p->numel * sizeof(real));
                }
            }
            off += p->numel;
        }
    }
    o->step = step;
    rc = 0;
out:
    safetensors_close(f);
    return rc;
}
