/* lora.c — LoRA adapters: target resolution, PEFT initialisation, building,
 * attaching and detaching the set (see lora.h). The forward and backward
 * that model_linear's adapter hook calls are in lora_hook.c. */
#include "lora/lora.h"

#include "lora/lora_hook.h"

#include "model/cpu/cpu.h"
#include "util/err.h"
#include "util/rng.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LORA_DEFAULT_ROWS 256 /* chunk rows before lora_reserve */
#define LORA_LIST_MAX 100000  /* bound on names in one target list */

/* ---- config ---------------------------------------------------------------------- */

void lora_config_init(lora_config *c) {
    memset(c, 0, sizeof *c);
    c->rank = 8;
    c->alpha = 8;
}

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void free_patterns(lora_pattern *p, int n) {
    for (int i = 0; i < n; i++) free(p[i].key);
    free(p);
}

void lora_config_free(lora_config *c) {
    if (!c) return;
    free_list(c->targets, c->n_targets);
    free(c->target_regex);
    free_list(c->exclude, c->n_exclude);
    free(c->exclude_regex);
    free(c->layers);
    free_patterns(c->rank_pattern, c->n_rank_pattern);
    free_patterns(c->alpha_pattern, c->n_alpha_pattern);
    free(c->base_model);
    lora_config_init(c);
}

static int dup_str(char **dst, const char *src) {
    *dst = NULL;
    if (!src) return 0;
    *dst = strdup(src);
    return *dst ? 0 : err_set("out of memory copying the LoRA config");
}

static int dup_list(char ***dst, char *const *src, int n) {
    *dst = NULL;
    if (n == 0) return 0;
    *dst = calloc((size_t)n, sizeof **dst);
    if (!*dst) return err_set("out of memory copying the LoRA config");
    for (int i = 0; i < n; i++)
        if (dup_str(&(*dst)[i], src[i]) != 0) return -1;
    return 0;
}

static int dup_patterns(lora_pattern **dst, const lora_pattern *src, int n) {
    *dst = NULL;
    if (n == 0) return 0;
    *dst = calloc((size_t)n, sizeof **dst);
    if (!*dst) return err_set("out of memory copying the LoRA config");
    for (int i = 0; i < n; i++) {
        (*dst)[i].value = src[i].value;
        if (dup_str(&(*dst)[i].key, src[i].key) != 0) return -1;
    }
    return 0;
}

int lora_config_copy(lora_config *dst, const lora_config *src) {
    *dst = *src;
    /* Clear the borrowed pointers first, so a failure half way frees only copies. */
    dst->targets = dst->exclude = NULL;
    dst->target_regex = dst->exclude_regex = dst->base_model = NULL;
    dst->layers = NULL;
    dst->rank_pattern = dst->alpha_pattern = NULL;
    dst->n_targets = dst->n_exclude = dst->n_layers = 0;
    dst->n_rank_pattern = dst->n_alpha_pattern = 0;
    int rc = 0;
    if (dup_list(&dst->targets, src->targets, src->n_targets) == 0)
        dst->n_targets = src->n_targets;
    else
        rc = -1;
    if (rc == 0 && dup_list(&dst->exclude, src->exclude, src->n_exclude) == 0)
        dst->n_exclude = src->n_exclude;
    else
        rc = -1;
    if (rc == 0 && dup_patterns(&dst->rank_pattern, src->rank_pattern, src->n_rank_pattern) == 0)
        dst->n_rank_pattern = src->n_rank_pattern;
    else
        rc = -1;
    if (rc == 0 && dup_patterns(&dst->alpha_pattern, src->alpha_pattern, src->n_alpha_pattern) == 0)
        dst->n_alpha_pattern = src->n_alpha_pattern;
    else
        rc = -1;
    if (rc == 0 && (dup_str(&dst->target_regex, src->target_regex) != 0 ||
                    dup_str(&dst->exclude_regex, src->exclude_regex) != 0 ||
                    dup_str(&dst->base_model, src->base_model) != 0))
        rc = -1;
    if (rc == 0 && src->n_layers > 0) {
        dst->layers = malloc((size_t)src->n_layers * sizeof *dst->layers);
        if (!dst->layers)
            rc = err_set("out of memory copying the LoRA config");
        else {
            memcpy(dst->layers, src->layers, (size_t)src->n_layers * sizeof *dst->layers);
            dst->n_layers = src->n_layers;
        }
    }
    if (rc != 0) lora_config_free(dst);
    return rc;
}

int lora_config_set_targets(lora_config *c, const char *comma_list) {
    free_list(c->targets, c->n_targets);
    c->targets = NULL;
    c->n_targets = 0;
    free(c->target_regex);
    c->target_regex = NULL;
    int n = 1;
    for (const char *p = comma_list; *p; p++) n += *p == ',';
    if (n > LORA_LIST_MAX) return err_set("target_modules: more than %d names", LORA_LIST_MAX);
    char **v = calloc((size_t)n, sizeof *v);
    if (!v) return err_set("out of memory for target_modules");
    const char *p = comma_list;
    for (int i = 0; i < n; i++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0) {
            free_list(v, i);
            return err_set("target_modules \"%s\": empty module name (names are comma-separated, "
                           "e.g. q_proj,v_proj)",
                           comma_list);
        }
        v[i] = strndup(p, len);
        if (!v[i]) {
            free_list(v, i);
            return err_set("out of memory for target_modules");
        }
        p = e ? e + 1 : p + len;
    }
    c->targets = v;
    c->n_targets = n;
    return 0;
}

int lora_config_set_target_regex(lora_config *c, const char *regex) {
    free_list(c->targets, c->n_targets);
    c->targets = NULL;
    c->n_targets = 0;
    free(c->target_regex);
    return dup_str(&c->target_regex, regex);
}

static int add_pattern(lora_pattern **v, int *n, const char *key, double value, const char *what) {
    for (int i = 0; i < *n; i++)
        if (strcmp((*v)[i].key, key) == 0) return err_set("%s: key \"%s\" given twice", what, key);
    lora_pattern *nv = realloc(*v, (size_t)(*n + 1) * sizeof *nv);
    if (!nv) return err_set("out of memory for %s", what);
    *v = nv;
    if (dup_str(&nv[*n].key, key) != 0) return -1;
    nv[*n].value = value;
    (*n)++;
    return 0;
}

int lora_config_add_rank_pattern(lora_config *c, const char *key, int rank) {
    return add_pattern(&c->rank_pattern, &c->n_rank_pattern, key, rank, "rank_pattern");
}

int lora_config_add_alpha_pattern(lora_config *c, const char *key, double alpha) {
    return add_pattern(&c->alpha_pattern, &c->n_alpha_pattern, key, alpha, "alpha_pattern");
}

int lora_config_set_base_model(lora_config *c, const char *name) {
    free(c->base_model);
    return dup_str(&c->base_model, name);
}

/* ---- matching module paths as PEFT does --------------------------------------------- */

/* Python's re on subject, through PCRE2: full (re.fullmatch) or as
 * get_pattern_key's re.match(r"(.*\.)?(KEY)$"). *hit is 1 on a match. */
static int regex_match(const char *pattern, const char *subject, int full, const char *what,
                       int *hit) {
    char *wrapped = NULL;
    const char *pat = pattern;
    uint32_t opts = PCRE2_ANCHORED;
    if (full) {
        opts |= PCRE2_ENDANCHORED;
    } else {
        size_t len = strlen(pattern) + 16;
        wrapped = malloc(len);
        if (!wrapped) return err_set("out of memory matching %s", what);
        snprintf(wrapped, len, "(.*\\.)?(%s)$", pattern);
        pat = wrapped;
    }
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &code, &off, NULL);
    free(wrapped);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return err_set("%s \"%s\" is not a valid regular expression: %s", what, pattern,
                       (const char *)msg);
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) {
        pcre2_code_free(re);
        return err_set("out of memory matching %s", what);
    }
    int rc = pcre2_match(re, (PCRE2_SPTR)subject, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
        return err_set("%s \"%s\": matching \"%s\" failed (PCRE2 error %d)", what, pattern, subject,
                       rc);
    *hit = rc >= 0;
    return 0;
}

/* PEFT's suffix rule for lists: key == name or key ends with "." + name. */
static int suffix_match(const char *path, const char *name) {
    size_t lp = strlen(path), ln = strlen(name);
    if (lp == ln) return strcmp(path, name) == 0;
    return lp > ln && path[lp - ln - 1] == '.' && strcmp(path + lp - ln, name) == 0;
}

static int is_all_linear(const lora_config *c) {
    return c->n_targets == 1 && strcasecmp(c->targets[0], "all-linear") == 0;
}

/* Does the module at path (in block layer) take an adapter? Follows
 * check_target_module_exists: exclusions first, then the targets, then
 * layers_to_transform (suffix matches of a list only). */
static int target_match(const lora_config *c, const char *path, int layer, int *hit) {
    *hit = 0;
    int which = -1;
    if (c->exclude_regex) {
        int ex;
        if (regex_match(c->exclude_regex, path, 1, "exclude_modules", &ex) != 0) return -1;
        if (ex) return 0;
    }
    for (int i = 0; i < c->n_exclude; i++)
        if (suffix_match(path, c->exclude[i])) return 0;
    if (c->target_regex) return regex_match(c->target_regex, path, 1, "target_modules", hit);
    if (is_all_linear(c)) {
        *hit = 1;
        return 0;
    }
    /* A name equal to the whole path is taken as is; layers_to_transform
     * filters only suffix matches (PEFT's order of tests). */
    for (int i = 0; i < c->n_targets; i++)
        if (strcmp(path, c->targets[i]) == 0) {
            *hit = 1;
            return 0;
        }
    for (int i = 0; i < c->n_targets; i++)
        if (suffix_match(path, c->targets[i])) {
            which = i;
            break;
        }
    if (which < 0) return 0;
    if (c->layers) {
        int in_list = 0;
        for (int i = 0; i < c->n_layers; i++) in_list |= c->layers[i] == layer;
        if (!in_list) return 0;
    }
    *hit = 1;
    return 0;
}

static int cmp_pattern_key(const void *a, const void *b) {
    return strcmp(((const lora_pattern *)a)->key, ((const lora_pattern *)b)->key);
}

/* The value of the first pattern that matches path, as get_pattern_key. */
static int pattern_value(const lora_pattern *p, int n, const char *path, const char *what,
                         double dflt, double *out) {
    *out = dflt;
    for (int i = 0; i < n; i++) {
        int hit;
        if (regex_match(p[i].key, path, 0, what, &hit) != 0) return -1;
        if (hit) {
            *out = p[i].value;
            return 0;
        }
    }
    return 0;
}

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

/* Checks the config's own values, before any module is looked at. */
static int check_config(const lora_config *c) {
    if (c->rank < 1)
        return err_set("LoRA rank r = %d: the rank must be at least 1 (e.g. --rank 8)", c->rank);
    if (!isfinite(c->alpha)) return err_set("lora_alpha must be a finite number");
    if (!(c->dropout >= 0 && c->dropout < 1))
        return err_set("lora_dropout = %g: it must be in [0, 1)", c->dropout);
    if (c->n_targets == 0 && !c->target_regex)
        return err_set("no LoRA target modules given (e.g. --targets q_proj,v_proj)");
    if (c->layers && (c->target_regex || is_all_linear(c)))
        return err_set("layers_to_transform cannot be used when target_modules is a string (a "
                       "regular expression or all-linear); list the module names instead");
    for (int i = 0; i < c->n_rank_pattern; i++)
        if (!(c->rank_pattern[i].value >= 1 && c->rank_pattern[i].value <= 1e9 &&
              c->rank_pattern[i].value == floor(c->rank_pattern[i].value)))
            return err_set("rank_pattern \"%s\": rank %g must be a whole number of at least 1",
                           c->rank_pattern[i].key, c->rank_pattern[i].value);
    for (int i = 0; i < c->n_alpha_pattern; i++)
        if (!isfinite(c->alpha_pattern[i].value))
            return err_set("alpha_pattern \"%s\": alpha must be a finite number",
                           c->alpha_pattern[i].key);
    return 0;
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
    if (pattern_value(c->rank_pattern, c->n_rank_pattern, mod->path, "rank_pattern", c->rank,
                      &rank) != 0 ||
        pattern_value(c->alpha_pattern, c->n_alpha_pattern, mod->path, "alpha_pattern", c->alpha,
                      &alpha) != 0)
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
    if (check_config(cfg) != 0) return -1;
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
    if (s->cfg.n_rank_pattern)
        qsort(s->cfg.rank_pattern, (size_t)s->cfg.n_rank_pattern, sizeof *s->cfg.rank_pattern,
              cmp_pattern_key);
    if (s->cfg.n_alpha_pattern)
        qsort(s->cfg.alpha_pattern, (size_t)s->cfg.n_alpha_pattern, sizeof *s->cfg.alpha_pattern,
              cmp_pattern_key);
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
            if (linear_path(lin, path, sizeof path) != 0 || target_match(cfg, path, l, &hit) != 0)
                goto fail;
            /* A name is in use when it names some linear, even one that
             * exclude_modules or layers_to_transform then leave out. */
            for (int i = 0; i < cfg->n_targets; i++) used[i] |= suffix_match(path, cfg->targets[i]);
            int router = lin == &m->layers[l].moe.router;
            /* A mixture of experts' router stays frozen unless named (by
             * "gate", its path or a regular expression): all-linear means
             * the layers that compute, not the routing decision. */
            if (!hit || (router && is_all_linear(cfg))) continue;
            lora_module *mod = &s->modules[s->n_modules];
            if (setup_module(mod, &s->cfg, lin, l, router) != 0) goto fail;
            mod->index = s->n_modules++;
            mod->set = s;
            mod->u_rows = -1;
            mod->group = -1;
        }
    char names[256];
    module_names(m, names, sizeof names);
    if (!is_all_linear(cfg))
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
