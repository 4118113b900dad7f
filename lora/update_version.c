/* update_version.c — the version an update makes, written from a mapped base
 * a tensor at a time (update.h: update_edit, update_write_version).
 *
 * The aggregator publishes a version with this and a node that syncs
 * low-rank rebuilds it with this, so both make the same bytes from the same
 * base and update: each weight the update changes is read as float (a bf16
 * base's values widen exactly), goes through update_apply's kernel, and is
 * written back in the base's dtype; for a bf16 base the rounding is
 * stochastic, keyed by the base version's hash (update_version_key), so an
 * update smaller than half an ulp of a weight still moves it in expectation
 * (docs/formats.md, "Versions of a bf16 base"). Every other tensor is copied as it is.
 * Memory: the largest changed tensor as float, not the model. */
#include "lora/update.h"
#include "lora/update_kernel.h"
#include "util/err.h"

#include <string.h>

typedef struct {
    const update *u;
    update_kernel_ws *ws;
} version_edit;

/* The module of u that changes p, or NULL (u's modules are few: a scan). */
static const update_module *module_of(const update *u, const model_param *p) {
    for (int i = 0; i < u->n_modules; i++)
        if (strcmp(u->modules[i].name, p->name) == 0) return &u->modules[i];
    return NULL;
}

static int edit_touches(void *ctx, const model_param *p) {
    const version_edit *e = ctx;
    return module_of(e->u, p) != NULL;
}

static int edit_apply(void *ctx, const model_param *p, real *w) {
    const version_edit *e = ctx;
    const update_module *um = module_of(e->u, p);
    if (!um || p->ndim != 2 || p->shape[0] != um->out || p->shape[1] != um->in)
        return err_set("update module %s has no weight of its shape in the base", p->name);
    /* W (out, in) += B (out, R) · A (R, in), update_apply's element by element */
    return update_kernel_ws_apply(e->ws, w, um->in, um->B, um->rank, um->A, um->in, um->out,
                                  um->rank, um->in);
}

uint64_t update_version_key(const uint8_t from[UPDATE_HASH_LEN]) {
    uint64_t k = 0;
    for (int i = 7; i >= 0; i--) k = k << 8 | from[i];
    return k;
}

int update_write_version(const model *base, const update *u, const char *dir, int release) {
    int max_R = 1;
    for (int i = 0; i < u->n_modules; i++) {
        const update_module *um = &u->modules[i];
        const model_param *p = model_find_param(base, um->name);
        if (!p || p->ndim != 2 || p->shape[0] != um->out || p->shape[1] != um->in)
            return err_set("update module %s (out %d, in %d) has no weight of that shape in this "
                           "model: the update was made for another base",
                           um->name, um->out, um->in);
        if (um->rank > max_R) max_R = um->rank;
    }
    version_edit ve = {.u = u};
    if (update_kernel_ws_create(&ve.ws, UPDATE_KERNEL_AUTO, max_R) != 0)
        return err_context("writing the version an update makes");
    checkpoint_edit e = {.touches = edit_touches, .apply = edit_apply, .ctx = &ve};
    checkpoint_save_options o = {.dtype = base->cfg.torch_dtype,
                                 .edit = &e,
                                 .release = release,
                                 .stochastic = strcmp(base->cfg.torch_dtype, "bfloat16") == 0,
                                 .sr_key = update_version_key(u->from)};
    int rc = checkpoint_write(base, dir, &o);
    update_kernel_ws_free(ve.ws);
    return rc;
}
