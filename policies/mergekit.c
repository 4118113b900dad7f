/* mergekit.c — linear, task arithmetic, TIES and DARE merges of LoRA task
 * vectors (mergekit.h). */
#include "policies/mergekit.h"

#include "lora/delta.h"
#include "util/rng.h"
#include "policies/select.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const method_names[] = {"linear", "task_arithmetic", "ties", "dare_linear",
                                           "dare_ties"};

int mergekit_parse_method(const char *name, mergekit_method *out) {
    for (int i = 0; i < (int)(sizeof method_names / sizeof method_names[0]); i++)
        if (!strcmp(name, method_names[i])) {
            *out = (mergekit_method)i;
            return 0;
        }
    return -1;
}

const char *mergekit_method_name(mergekit_method m) {
    return method_names[m];
}

/* mergekit sparsify.magnitude: keep the k = ⌊density·n⌋ largest |τ|, zero the rest. */
static int magnitude_topk(real *tau, int64_t n, double density, real *mag, const char *name) {
    if (density >= 1) return 0;
    int64_t k = (int64_t)(density * (double)n);
    if (k < 1)
        return err_set("density %g keeps no value of %s's %lld: raise --density", density, name,
                       (long long)n);
    for (int64_t j = 0; j < n; j++) mag[j] = fabsf(tau[j]);
    select_kth(mag, n, n - k);
    real thr = mag[n - k];
    int64_t above = 0;
    for (int64_t j = 0; j < n; j++) above += fabsf(tau[j]) > thr;
    int64_t ties_left =
        k - above; /* values equal to the threshold still kept, lowest index first */
    for (int64_t j = 0; j < n; j++) {
        real a = fabsf(tau[j]);
        if (a > thr) continue;
        if (a == thr && ties_left > 0) {
            ties_left--;
            continue;
        }
        tau[j] = 0;
    }
    return 0;
}

/* mergekit sparsify.bernoulli with rescale: keep with probability density, ×1/density. */
static void dare_drop(real *tau, int64_t n, double density, uint64_t seed, int adapter,
                      int module) {
    if (density >= 1) return;
    real scale = (real)(1.0 / density);
    for (int64_t j = 0; j < n; j++) {
        double u = rng_unit(rng_at(seed, (uint64_t)adapter, (uint64_t)module, (uint64_t)j));
        tau[j] = u <= density ? tau[j] * scale : 0;
    }
}

static int sign_of(double x) {
    return (x > 0) - (x < 0);
}

int mergekit_module(const mergekit_options *o, int K, int64_t n, real *tau, int module_index,
                    const char *name, real *delta) {
    mergekit_method m = o->method;
    int sparsify_top = m == MERGEKIT_TIES;
    int sparsify_dare = m == MERGEKIT_DARE_LINEAR || m == MERGEKIT_DARE_TIES;
    int consensus = m == MERGEKIT_TIES || m == MERGEKIT_DARE_TIES;
    int normalize = m == MERGEKIT_LINEAR || m == MERGEKIT_TIES; /* mergekit's defaults */
    double lambda = m == MERGEKIT_LINEAR ? 1.0 : o->lambda;
    if (sparsify_top) {
        real *mag = malloc((size_t)n * sizeof *mag);
        if (!mag) return err_set("merge: out of memory for %s", name);
        int rc = 0;
        for (int k = 0; rc == 0 && k < K; k++)
            rc = magnitude_topk(tau + k * n, n, o->density[k], mag, name);
        free(mag);
        if (rc != 0) return -1;
    }
    if (sparsify_dare)
        for (int k = 0; k < K; k++)
            dare_drop(tau + k * n, n, o->density[k], o->seed, k, module_index);
    double wsum = 0;
    for (int k = 0; k < K; k++) wsum += o->weights[k];
    if (m == MERGEKIT_LINEAR && wsum == 0)
        return err_set("merge: linear divides by the sum of the weights, which is 0");
    for (int64_t j = 0; j < n; j++) {
        double mixed = 0, divisor;
        if (consensus) {
            double total = 0;
            for (int k = 0; k < K; k++) total += o->weights[k] * tau[k * n + j];
            int elected = total >= 0 ? 1 : -1;
            divisor = 0;
            for (int k = 0; k < K; k++) {
                double wt = o->weights[k] * tau[k * n + j];
                if (sign_of(wt) == elected) {
                    mixed += wt;
                    divisor += o->weights[k];
                }
            }
            if (divisor == 0) divisor = 1;
        } else {
            for (int k = 0; k < K; k++) mixed += o->weights[k] * tau[k * n + j];
            divisor = wsum;
        }
        if (normalize) mixed /= divisor;
        delta[j] = (real)(lambda * mixed);
    }
    return 0;
}

static int check_options(int K, const mergekit_options *o) {
    if (K < 1) return err_set("merge: no adapters");
    for (int k = 0; k < K; k++)
        if ((o->method == MERGEKIT_TIES || o->method == MERGEKIT_DARE_LINEAR ||
             o->method == MERGEKIT_DARE_TIES) &&
            !(o->density[k] > 0 && o->density[k] <= 1))
            return err_set("merge: density %g of adapter %d is not in (0, 1]", o->density[k],
                           k + 1);
    return 0;
}

/* Calls f for each module path once, in the order the adapters first name
 * it (which is also the module index DARE's masks are keyed by), until f
 * returns non-zero. */
static int each_module(lora_set *const *sets, int K,
                       int (*f)(void *ctx, const lora_module *first, int index), void *ctx) {
    int index = 0;
    for (int k0 = 0; k0 < K; k0++)
        for (int i = 0; i < sets[k0]->n_modules; i++) {
            const lora_module *first = &sets[k0]->modules[i];
            int seen = 0;
            for (int k = 0; k < k0 && !seen; k++) seen = lora_find(sets[k], first->path) != NULL;
            if (seen) continue;
            int rc = f(ctx, first, index++);
            if (rc != 0) return rc;
        }
    return 0;
}

/* w (out, in) += Δ of the module at path `first` (index: its DARE key). */
static int add_module_delta(lora_set *const *sets, int K, const mergekit_options *o,
                            const lora_module *first, int index, real *w) {
    int64_t n = (int64_t)first->out * first->in;
    real *tau = malloc((size_t)(K + 1) * (size_t)n * sizeof *tau);
    if (!tau)
        return err_set("merge: out of memory for %d task vectors of %s (%d x %d)", K, first->path,
                       first->out, first->in);
    real *delta = tau + (int64_t)K * n;
    for (int k = 0; k < K; k++) {
        const lora_module *mod = lora_find(sets[k], first->path);
        if (mod)
            delta_dense(mod, tau + k * n, 0); /* τ_k = s_k B_k A_k (out, in) */
        else
            memset(tau + k * n, 0, (size_t)n * sizeof *tau);
    }
    int rc = mergekit_module(o, K, n, tau, index, first->path, delta);
    for (int64_t j = 0; rc == 0 && j < n; j++) w[j] += delta[j];
    free(tau);
    return rc;
}

typedef mergekit_fold merge_ctx;

/* The base weight of module `first`, checked against its shape. */
static int module_param(const model *m, const lora_module *first, model_param **w) {
    char wname[MODEL_NAME_MAX];
    snprintf(wname, sizeof wname, "%s.weight", first->path);
    *w = model_find_param(m, wname);
    if (!*w || (*w)->ndim != 2 || (*w)->shape[0] != first->out || (*w)->shape[1] != first->in)
        return err_set("merge: module %s (out %d, in %d) has no weight of that shape in the "
                       "base: the adapters were made for another base",
                       first->path, first->out, first->in);
    return 0;
}

static int check_one(void *ctx, const lora_module *first, int index) {
    merge_ctx *c = ctx;
    return module_param(c->m, first, &c->w);
}

static int merge_in_place(void *ctx, const lora_module *first, int index) {
    merge_ctx *c = ctx;
    if (module_param(c->m, first, &c->w) != 0) return -1;
    if (!c->w->data)
        return err_set("merge: %s is held read-only (a mapped base): use mergekit_edit",
                       c->w->name);
    return add_module_delta(c->sets, c->K, c->o, first, index, c->w->data);
}

int mergekit_merge(model *m, lora_set *const *sets, int K, const mergekit_options *o) {
    merge_ctx c = {.m = m, .sets = sets, .K = K, .o = o};
    if (check_options(K, o) != 0 || each_module(sets, K, check_one, &c) != 0) return -1;
    return each_module(sets, K, merge_in_place, &c);
}

/* ---- as an edit of checkpoint_write ---- */

static int edit_find(void *ctx, const lora_module *first, int index) {
    merge_ctx *c = ctx;
    if (strcmp(first->path, c->want) != 0) return 0;
    c->found = 1;
    if (!c->values) return 1;
    return add_module_delta(c->sets, c->K, c->o, first, index, c->values) == 0 ? 1 : -1;
}

/* p's module path (its name without ".weight") into path, or 0. */
static int path_of(const model_param *p, char *path) {
    size_t n = strlen(p->name);
    if (n <= 7 || strcmp(p->name + n - 7, ".weight") != 0) return 0;
    memcpy(path, p->name, n - 7);
    path[n - 7] = '\0';
    return 1;
}

static int edit_touches(void *ctx, const model_param *p) {
    merge_ctx *c = ctx;
    char path[MODEL_NAME_MAX];
    if (!path_of(p, path)) return 0;
    c->want = path;
    c->values = NULL;
    c->found = 0;
    each_module(c->sets, c->K, edit_find, c);
    return c->found;
}

static int edit_apply(void *ctx, const model_param *p, real *values) {
    merge_ctx *c = ctx;
    char path[MODEL_NAME_MAX];
    if (!path_of(p, path)) return 0;
    c->want = path;
    c->values = values;
    return each_module(c->sets, c->K, edit_find, c) < 0 ? -1 : 0;
}

int mergekit_edit(const model *m, lora_set *const *sets, int K, const mergekit_options *o,
                  mergekit_fold *f, checkpoint_edit *e) {
    *f = (mergekit_fold){.m = m, .sets = sets, .K = K, .o = o};
    if (check_options(K, o) != 0 || each_module(sets, K, check_one, f) != 0) return -1;
    *e = (checkpoint_edit){.touches = edit_touches, .apply = edit_apply, .ctx = f};
    return 0;
}
