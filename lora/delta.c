/* delta.c — dense LoRA updates and exact merges (delta.h). */
#include "lora/delta.h"

#include "model/cpu/cpu.h"
#include "util/err.h"

#include <stdlib.h>
#include <string.h>

void delta_dense(const lora_module *mod, real *dw, int transposed) {
    int out = mod->out, in = mod->in, r = mod->rank;
    real s = (real)mod->scale;
    if (transposed) /* (in, out) = s · Aᵀ (in, r) · Bᵀ (r, out) */
        cpu_gemm(1, 1, in, out, r, s, mod->A.data, in, mod->B.data, r, 0, dw, out);
    else /* (out, in) = s · B (out, r) · A (r, in) */
        cpu_gemm(0, 0, out, in, r, s, mod->B.data, r, mod->A.data, in, 0, dw, in);
}

int delta_product(real *W, int ldw, int out, int in, int K, const real *const *B,
                  const real *const *A, const int *rank, const double *coef) {
    if (K < 1) return err_set("delta_product: no adapters to merge");
    int64_t R = 0;
    for (int k = 0; k < K; k++) {
        if (rank[k] < 0) return err_set("delta_product: adapter %d has rank %d", k, rank[k]);
        R += rank[k];
    }
    if (R == 0) return 0;
    if (R > (1 << 30)) return err_set("delta_product: total rank %lld is too large", (long long)R);
    /* Bc (out, R) = [c_1 B_1 | … | c_K B_K];  Ac (R, in) = [A_1; …; A_K] */
    real *Bc = malloc((size_t)out * (size_t)R * sizeof(real));
    real *Ac = malloc((size_t)R * (size_t)in * sizeof(real));
    if (!Bc || !Ac) {
        free(Bc);
        free(Ac);
        return err_set("out of memory merging adapters (%d x %lld and %lld x %d)", out,
                       (long long)R, (long long)R, in);
    }
    int64_t col = 0;
    for (int k = 0; k < K; k++) {
        int r = rank[k];
        real c = (real)coef[k];
        for (int o = 0; o < out; o++)
            for (int j = 0; j < r; j++) Bc[(int64_t)o * R + col + j] = c * B[k][(int64_t)o * r + j];
        if (r) memcpy(Ac + col * in, A[k], (size_t)r * (size_t)in * sizeof(real));
        col += r;
    }
    cpu_gemm(0, 0, out, in, (int)R, 1, Bc, (int)R, Ac, in, 1, W, ldw);
    free(Bc);
    free(Ac);
    return 0;
}

/* The base weight a module folds into, checked against its shape. */
static int module_weight(const model *m, const lora_module *mod, model_param **w) {
    char name[MODEL_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", mod->path);
    *w = model_find_param(m, name);
    if (!*w || (*w)->ndim != 2 || (*w)->shape[0] != mod->out || (*w)->shape[1] != mod->in)
        return err_set("adapter module %s (out %d, in %d) has no weight of that shape in this "
                       "model: the adapter was made for another base",
                       mod->path, mod->out, mod->in);
    return 0;
}

static int fold_touches(void *ctx, const model_param *p) {
    const lora_set *s = ctx;
    size_t n = strlen(p->name);
    if (n <= 7 || strcmp(p->name + n - 7, ".weight") != 0 || n - 7 >= MODEL_NAME_MAX) return 0;
    char path[MODEL_NAME_MAX];
    memcpy(path, p->name, n - 7);
    path[n - 7] = '\0';
    return lora_find(s, path) != NULL;
}

static int fold_apply(void *ctx, const model_param *p, real *w) {
    const lora_set *s = ctx;
    char path[MODEL_NAME_MAX];
    size_t n = strlen(p->name) - 7; /* fold_touches saw ".weight" */
    memcpy(path, p->name, n);
    path[n] = '\0';
    const lora_module *mod = lora_find(s, path);
    if (!mod || p->ndim != 2 || p->shape[0] != mod->out || p->shape[1] != mod->in)
        return err_set("adapter module %s has no weight of its shape in this model", path);
    /* W (out, in) += s · B (out, r) · A (r, in): delta_merge's GEMM. */
    cpu_gemm(0, 0, mod->out, mod->in, mod->rank, (real)mod->scale, mod->B.data, mod->rank,
             mod->A.data, mod->in, 1, w, mod->in);
    return 0;
}

int delta_fold_edit(const model *m, const lora_set *s, checkpoint_edit *e) {
    for (int i = 0; i < s->n_modules; i++) {
        model_param *w;
        if (module_weight(m, &s->modules[i], &w) != 0) return -1;
    }
    *e = (checkpoint_edit){.touches = fold_touches, .apply = fold_apply, .ctx = (void *)s};
    return 0;
}

int delta_merge(model *m, const lora_set *s) {
    for (int i = 0; i < s->n_modules; i++) {
        model_param *w;
        if (module_weight(m, &s->modules[i], &w) != 0) return -1;
    }
    for (int i = 0; i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        model_param *w;
        module_weight(m, mod, &w);
        /* W (out, in) += s · B (out, r) · A (r, in) */
        cpu_gemm(0, 0, mod->out, mod->in, mod->rank, (real)mod->scale, mod->B.data, mod->rank,
                 mod->A.data, mod->in, 1, w->data, mod->in);
    }
    return 0;
}

int delta_merge_product(model *m, lora_set *const *sets, const double *weights, int K) {
    if (K < 1) return err_set("delta_merge_product: no adapters to merge");
    for (int k = 0; k < K; k++)
        for (int i = 0; i < sets[k]->n_modules; i++) {
            model_param *w;
            if (module_weight(m, &sets[k]->modules[i], &w) != 0)
                return err_context("adapter %d of %d", k + 1, K);
        }
    const real **A = malloc((size_t)K * sizeof *A);
    const real **B = malloc((size_t)K * sizeof *B);
    int *rank = malloc((size_t)K * sizeof *rank);
    double *coef = malloc((size_t)K * sizeof *coef);
    int rc = 0;
    if (!A || !B || !rank || !coef) rc = err_set("out of memory merging %d adapters", K);
    /* Each module path once, in the order the adapters first name it. */
    for (int k0 = 0; rc == 0 && k0 < K; k0++)
        for (int i = 0; rc == 0 && i < sets[k0]->n_modules; i++) {
            const lora_module *first = &sets[k0]->modules[i];
            int seen = 0;
            for (int k = 0; k < k0 && !seen; k++) seen = lora_find(sets[k], first->path) != NULL;
            if (seen) continue;
            int n = 0;
            for (int k = k0; k < K; k++) {
                const lora_module *mod = lora_find(sets[k], first->path);
                if (!mod) continue;
                A[n] = mod->A.data;
                B[n] = mod->B.data;
                rank[n] = mod->rank;
                coef[n] = weights[k] * mod->scale;
                n++;
            }
            model_param *w;
            module_weight(m, first, &w);
            rc = delta_product(w->data, first->in, first->out, first->in, n, B, A, rank, coef);
        }
    free(A);
    free(B);
    free(rank);
    free(coef);
    return rc;
}
