/* lora.c — LoRA adapters: building the set for a model (its modules, their
 * ranks and PEFT initialisation), attaching and detaching it, gradients and
 * tensors (see lora.h). The config and which modules it targets are in
 * lora_target.c, the forward and backward that model_linear's adapter hook
 * calls in lora_hook.c. */
#include "lora/lora.h"

#include "lora/lora_hook.h"
#include "lora/lora_target.h"

#include "model/cpu/cpu.h"
#include "util/err.h"
#include "util/rng.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LORA_DEFAULT_ROWS 256 /* chunk rows before lora_reserve */

/* ---- the model's linear layers -------------------------------------------------- */

/* The module path of a linear: its weight's name without ".weight". */
static int linear_path(const model_linear *l, char *path, size_t n) {
    const char *name = l->w->name;
    size_t len = strlen(name);
    if (len < 8 || strcmp(name + len - 7, ".weight") != 0 || len - 7 >= n)
        return err_set("linear weight \"%s\" has no module path", name);
    memcpy(path, name, len - 7);
    path[len - 7] = '\0';
    return 0;
}

static const char *last_component(const char *path) {
    const char *d = strrchr(path, '.');
    return d ? d + 1 : path;
}

/* "q_proj, k_proj, …": the module names this architecture offers, for errors
 * (a block's linears in model order, model_layer_linear). */
static void module_names(const model *m, char *out, size_t n) {
    out[0] = '\0';
    if (m->cfg.num_layers == 0) return;
    model_layer *L = &m->layers[0];
    size_t used = 0;
    for (int j = 0; j < model_layer_n_linears(L); j++) {
        model_linear *l = model_layer_linear(L, j);
        char path[LORA_PATH_MAX];
        if (!l->w || linear_path(l, path, sizeof path) != 0) continue;
        const char *name = last_component(path);
        if (strstr(out, name)) continue; /* GPT-2's c_proj twice */
        int w = snprintf(out + used, n - used, "%s%s", used ? ", " : "", name);
        if (w < 0 || (size_t)w >= n - used) return;
        used += (size_t)w;
    }
}

/* ---- deterministic random numbers --------------------------------------------------- */

/* FNV-1a of the module path: a module's stream depends on its name, not on
 * which other modules are targeted. */
static uint64_t path_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* PEFT's reset_lora_parameters for init_lora_weights=True:
 * nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5)) and zeros for lora_B.
 * kaiming_uniform_ bound = gain·√(3/fan_in), gain = √(2/(1+a²)) = √(1/3), so
 * bound = 1/√fan_in with fan_in = in (the weight is (r, in)). */
static void init_module(lora_module *mod, uint64_t seed) {
    double bound = 1.0 / sqrt((double)mod->in);
    uint64_t state = rng_mix64(seed ^ path_hash(mod->path));
    for (int64_t i = 0; i < mod->A.numel; i++) {
        state += 0x9E3779B97F4A7C15ull;
        mod->A.data[i] = (real)((2 * rng_unit0(rng_mix64(state)) - 1) * bound);
    }
    memset(mod->B.data, 0, (size_t)mod->B.numel * sizeof(real));
}

/* ---- building the set ---------------------------------------------------------- */

int lora_reserve(lora_set *s, int rows) {
    if (rows <= 0) return err_set("lora_reserve: rows must be positive, got %d", rows);
    if (rows <= s->cap_rows) return 0;
    return lora_hook_alloc_rows(s, rows);
}

/* Fills one module for linear l (its shapes, rank, alpha, names). A rank
 * above min(in, out) is refused (it adds nothing), except on a mixture of
 * experts' router, whose E outputs are fewer than a usual rank: transformers
 * 4's PEFT adapts it with the config's rank under all-linear, and such
 * adapters (which list "gate" by name) must load. */
static int setup_module(lora_module *mod, const lora_config *c, const model_linear *l, int layer,
                        int router) {
    if (linear_path(l, mod->path, sizeof mod->path) != 0) return -1;
    mod->layer = layer;
    mod->in = l->in;
    mod->out = l->out;
    mod->conv1d = l->w->conv1d;
    double rank, alpha;
    if (lora_target_pattern(c->rank_pattern, c->n_rank_pattern, mod->path, "rank_pattern", c->rank,
                            &rank) != 0 ||
        lora_target_pattern(c->alpha_pattern, c->n_alpha_pattern, mod->path, "alpha_pattern",
                            c->alpha, &alpha) != 0)
        return -1;
    int lim = l->in < l->out ? l->in : l->out;
    if (rank > lim && !router)
        return err_set("LoRA rank %g for %s is above min(in %d, out %d) = %d: a larger rank adds "
                       "nothing; use a rank <= %d",
                       rank, mod->path, l->in, l->out, lim, lim);
    mod->rank = (int)rank;
    mod->alpha = alpha;
    /* PEFT update_layer: scaling = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r */
    mod->scale = c->use_rslora ? alpha / sqrt(rank) : alpha / rank;
    model_param *A = &mod->A, *B = &mod->B;
    int na = snprintf(A->name, sizeof A->name, "base_model.model.%s.lora_A.weight", mod->path);
    int nb = snprintf(B->name, sizeof B->name, "base_model.model.%s.lora_B.weight", mod->path);
    if (na < 0 || (size_t)na >= sizeof A->name || nb < 0 || (size_t)nb >= sizeof B->name)
        return err_set("module path %s is too long for a tensor name", mod->path);
    A->ndim = B->ndim = 2;
    A->shape[0] = mod->rank;
    A->shape[1] = mod->in;
    B->shape[0] = mod->out;
    B->shape[1] = mod->rank;
    A->numel = (int64_t)mod->rank * mod->in;
    B->numel = (int64_t)mod->out * mod->rank;
    return 0;
}

int lora_create(lora_set **out, const model *m, const lora_config *cfg) {
    *out = NULL;
    if (lora_target_check(cfg) != 0) return -1;
    lora_set *s = calloc(1, sizeof *s);
    if (!s) return err_set("out of memory creating the LoRA adapter");
    if (lora_config_copy(&s->cfg, cfg) != 0) {
        free(s);
        return -1;
    }
    s->arch = m->cfg.arch;
    /* Patterns are tried in key order: adapter_config.json is written with
     * sorted keys (by PEFT too), so this is the order a reloaded adapter
     * uses, and training and reloading resolve the same ranks. */
    lora_target_sort_patterns(&s->cfg);
    int *used = cfg->n_targets ? calloc((size_t)cfg->n_targets, sizeof *used) : NULL;
    int cap = 0;
    for (int l = 0; l < m->cfg.num_layers; l++) cap += model_layer_n_linears(&m->layers[l]);
    s->modules = calloc(cap > 0 ? (size_t)cap : 1, sizeof *s->modules);
    if (!s->modules || (cfg->n_targets && !used)) {
        free(used);
        lora_free(s);
        return err_set("out of memory creating the LoRA adapter");
    }
    for (int l = 0; l < m->cfg.num_layers; l++)
        for (int j = 0; j < model_layer_n_linears(&m->layers[l]); j++) {
            model_linear *lin = model_layer_linear(&m->layers[l], j);
            if (!lin->w) continue;
            char path[LORA_PATH_MAX];
            int hit;
            if (linear_path(lin, path, sizeof path) != 0 ||
                lora_target_match(cfg, path, l, &hit) != 0)
                goto fail;
            /* A name is in use when it names some linear, even one that
             * exclude_modules or layers_to_transform then leave out. */
            for (int i = 0; i < cfg->n_targets; i++)
                used[i] |= lora_target_suffix(path, cfg->targets[i]);
            int router = lin == &m->layers[l].moe.router;
            /* A mixture of experts' router stays frozen unless named (by
             * "gate", its path or a regular expression): all-linear means
             * the layers that compute, not the routing decision. */
            if (!hit || (router && lora_target_all_linear(cfg))) continue;
            lora_module *mod = &s->modules[s->n_modules];
            if (setup_module(mod, &s->cfg, lin, l, router) != 0) goto fail;
            mod->index = s->n_modules++;
            mod->set = s;
            mod->u_rows = -1;
            mod->group = -1;
        }
    char names[256];
    module_names(m, names, sizeof names);
    if (!lora_target_all_linear(cfg))
        for (int i = 0; i < cfg->n_targets; i++)
            if (!used[i]) {
                err_set("LoRA target module \"%s\" matches no linear layer of this %s model "
                        "(its targetable modules: %s)",
                        cfg->targets[i],
                        m->cfg.arch == MODEL_ARCH_GPT2    ? "GPT-2"
                        : m->cfg.arch == MODEL_ARCH_BLOOM ? "BLOOM"
                                                          : "Llama-family",
                        names);
                goto fail;
            }
    if (s->n_modules == 0) {
        err_set("LoRA target_modules match no linear layer of this model, after "
                "exclude_modules and layers_to_transform (its targetable modules: %s)",
                names);
        goto fail;
    }
    free(used);
    used = NULL;

    int64_t total = 0;
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        total += mod->A.numel + mod->B.numel;
        if (mod->in > s->max_in) s->max_in = mod->in;
        if (mod->rank > s->max_rank) s->max_rank = mod->rank;
    }
    s->storage = malloc((size_t)total * sizeof(real));
    if (!s->storage) {
        err_set("out of memory for the LoRA parameters (%lld values)", (long long)total);
        goto fail;
    }
    real *p = s->storage;
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        mod->A.data = p;
        p += mod->A.numel;
        mod->B.data = p;
        p += mod->B.numel;
        init_module(mod, cfg->seed);
    }
    if (lora_hook_alloc_rows(s, LORA_DEFAULT_ROWS) != 0) goto fail;
    *out = s;
    return 0;
fail:
    free(used);
    lora_free(s);
    return -1;
}

void lora_free(lora_set *s) {
    if (!s) return;
    lora_detach(s);
    lora_hook_free(s);
    free(s->modules);
    free(s->storage);
    free(s->grad_storage);
    lora_config_free(&s->cfg);
    free(s);
}

/* The linear of m at a module's path, or NULL. */
static model_linear *find_linear(model *m, const lora_module *mod) {
    if (mod->layer >= m->cfg.num_layers) return NULL;
    model_layer *L = &m->layers[mod->layer];
    for (int j = 0; j < model_layer_n_linears(L); j++) {
        model_linear *l = model_layer_linear(L, j);
        char path[LORA_PATH_MAX];
        if (l->w && linear_path(l, path, sizeof path) == 0 && strcmp(path, mod->path) == 0)
            return l;
    }
    return NULL;
}

int lora_attach(lora_set *s, model *m) {
    if (s->attached) return err_set("the LoRA adapter is already attached to a model");
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        model_linear *l = find_linear(m, mod);
        if (!l || l->in != mod->in || l->out != mod->out)
            return err_set("LoRA module %s (in %d, out %d) has no matching linear layer in this "
                           "model: the adapter was made for another base",
                           mod->path, mod->in, mod->out);
        if (l->adapter) return err_set("linear %s already carries an adapter", mod->path);
    }
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        mod->linear = find_linear(m, mod);
        mod->linear->adapter = &lora_hook_ops;
        mod->linear->adapter_ctx = mod;
        mod->u_rows = -1;
    }
    s->attached = m;
    if (lora_hook_attach(s, m) != 0) {
        lora_detach(s);
        return -1;
    }
    return 0;
}

void lora_detach(lora_set *s) {
    if (!s->attached) return;
    lora_hook_detach(s);
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        if (mod->linear && mod->linear->adapter_ctx == mod) {
            mod->linear->adapter = NULL;
            mod->linear->adapter_ctx = NULL;
        }
        mod->linear = NULL;
    }
    s->attached = NULL;
}

int lora_want_grads(lora_set *s) {
    if (s->grad_storage) return 0;
    int64_t total = lora_num_params(s);
    s->grad_storage = calloc((size_t)total, sizeof(real));
    if (!s->grad_storage)
        return err_set("out of memory for the LoRA gradients (%lld values)", (long long)total);
    real *p = s->grad_storage;
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        mod->A.grad = p;
        p += mod->A.numel;
        mod->B.grad = p;
        p += mod->B.numel;
    }
    return 0;
}

void lora_zero_grads(lora_set *s) {
    if (s->grad_storage) memset(s->grad_storage, 0, (size_t)lora_num_params(s) * sizeof(real));
}

void lora_set_training(lora_set *s, int on) {
    s->training = on != 0;
}

uint64_t lora_dropout_counter(const lora_set *s) {
    return s->n_modules ? s->modules[0].counter : 0;
}

void lora_set_dropout_counter(lora_set *s, uint64_t counter) {
    for (int i = 0; i < s->n_modules; i++) s->modules[i].counter = counter;
}

int lora_num_tensors(const lora_set *s) {
    return 2 * s->n_modules;
}

model_param *lora_tensor(lora_set *s, int i) {
    if (i < 0 || i >= 2 * s->n_modules) return NULL;
    return i % 2 ? &s->modules[i / 2].B : &s->modules[i / 2].A;
}

int64_t lora_num_params(const lora_set *s) {
    int64_t n = 0;
    for (int i = 0; i < s->n_modules; i++) n += s->modules[i].A.numel + s->modules[i].B.numel;
    return n;
}

lora_module *lora_find(const lora_set *s, const char *path) {
    for (int i = 0; i < s->n_modules; i++)
        if (strcmp(s->modules[i].path, path) == 0) return &s->modules[i];
    return NULL;
}

int lora_copy_values(lora_set *dst, const lora_set *src) {
    if (dst->n_modules != src->n_modules)
        return err_set("LoRA adapters differ: %d modules against %d", dst->n_modules,
                       src->n_modules);
    for (int i = 0; i < dst->n_modules; i++) {
        lora_module *d = &dst->modules[i];
        const lora_module *s = &src->modules[i];
        if (strcmp(d->path, s->path) != 0 || d->rank != s->rank || d->in != s->in ||
            d->out != s->out)
            return err_set("LoRA adapters differ at module %d: %s (r %d, %dx%d) against %s "
                           "(r %d, %dx%d)",
                           i, d->path, d->rank, d->out, d->in, s->path, s->rank, s->out, s->in);
    }
    for (int i = 0; i < dst->n_modules; i++) {
        lora_module *d = &dst->modules[i];
        const lora_module *s = &src->modules[i];
        memcpy(d->A.data, s->A.data, (size_t)d->A.numel * sizeof(real));
        memcpy(d->B.data, s->B.data, (size_t)d->B.numel * sizeof(real));
    }
    return 0;
}
