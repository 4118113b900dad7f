/* delta.c — dense LoRA updates, and one adapter folded in (delta.h). */
#include "lora/delta.h"

#include "model/cpu/cpu.h"
#include "util/err.h"

#include <stdio.h>

void delta_dense(const lora_module *mod, real *dw, int transposed) {
    int out = mod->out, in = mod->in, r = mod->rank;
    real s = (real)mod->scale;
    if (transposed) /* (in, out) = s · Aᵀ (in, r) · Bᵀ (r, out) */
        cpu_gemm(1, 1, in, out, r, s, mod->A.data, in, mod->B.data, r, 0, dw, out);
    else /* (out, in) = s · B (out, r) · A (r, in) */
        cpu_gemm(0, 0, out, in, r, s, mod->B.data, r, mod->A.data, in, 0, dw, in);
}

int delta_weight(const model *m, const lora_module *mod, model_param **w) {
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
        if (delta_weight(m, &s->modules[i], &w) != 0) return -1;
    }
    *e = (checkpoint_edit){.touches = fold_touches, .apply = fold_apply, .ctx = (void *)s};
    return 0;
}

int delta_merge(model *m, const lora_set *s) {
    for (int i = 0; i < s->n_modules; i++) {
        model_param *w;
        if (delta_weight(m, &s->modules[i], &w) != 0) return -1;
    }
    for (int i = 0; i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        model_param *w;
        delta_weight(m, mod, &w);
        /* W (out, in) += s · B (out, r) · A (r, in) */
        cpu_gemm(0, 0, mod->out, mod->in, mod->rank, (real)mod->scale, mod->B.data, mod->rank,
                 mod->A.data, mod->in, 1, w->data, mod->in);
    }
    return 0;
}
