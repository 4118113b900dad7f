/* offset — a base offset by an adapter's product (offset.h). */
#include "lora/offset.h"

#include "lora/update.h"
#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>

static int module_nonzero(const lora_module *mod) {
    for (int64_t j = 0; j < mod->B.numel; j++)
        if (mod->B.data[j] != 0) return 1;
    return 0;
}

int lora_has_product(const lora_set *s) {
    for (int i = 0; s && i < s->n_modules; i++)
        if (module_nonzero(&s->modules[i])) return 1;
    return 0;
}

int lora_offset_base(model *m, const lora_set *s) {
    for (int i = 0; i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        if (!module_nonzero(mod)) continue;
        char name[MODEL_NAME_MAX];
        snprintf(name, sizeof name, "%s.weight", mod->path);
        model_param *p = model_find_param(m, name);
        if (!p || p->ndim != 2 || p->shape[0] != mod->out || p->shape[1] != mod->in)
            return err_set("the base has no weight %s of shape (%d, %d)", name, mod->out, mod->in);
        int64_t nb = mod->B.numel;
        float *Bneg = malloc((size_t)nb * sizeof *Bneg);
        if (!Bneg) return err_set("out of memory offsetting %s", name);
        for (int64_t j = 0; j < nb; j++) Bneg[j] = (float)(-mod->scale) * mod->B.data[j];
        int rc = model_param_writable(p) == 0 &&
                         update_apply_rows(p->data, mod->in, Bneg, mod->rank, mod->A.data, mod->in,
                                           mod->out, mod->rank, mod->in) == 0
                     ? 0
                     : -1;
        free(Bneg);
        if (rc != 0) return err_context("offsetting %s by the adapter's product", name);
    }
    return 0;
}
