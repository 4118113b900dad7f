/* update.c — factored model updates: build, apply (through the kernel of
 * update_kernel.c), and the update file (update.h). */
#include "lora/update.h"
#include "lora/update_kernel.h"

#include "model/safetensors.h"
#include "util/err.h"
#include "util/hex.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUFFIX_B ".update_B"
#define SUFFIX_A ".update_A"
#define TENSOR_NAME_MAX (MODEL_NAME_MAX + 16)

void update_free(update *u) {
    if (!u) return;
    for (int i = 0; i < u->n_modules; i++) {
        free(u->modules[i].B);
        free(u->modules[i].A);
    }
    free(u->modules);
    free(u);
}

/* The module path of a linear weight ("<path>.weight" of a 2-D param), into
 * path; 0 when p is not one. */
static int weight_path(const model_param *p, char path[MODEL_NAME_MAX]) {
    size_t n = strlen(p->name);
    if (p->ndim != 2 || n < 8 || strcmp(p->name + n - 7, ".weight") != 0) return 0;
    memcpy(path, p->name, n - 7);
    path[n - 7] = '\0';
    return 1;
}

static update *update_new(int cap) {
    update *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->modules = calloc((size_t)(cap > 0 ? cap : 1), sizeof *u->modules);
    if (!u->modules) {
        free(u);
        return NULL;
    }
    return u;
}

int update_build(update **out, const model *m, lora_set *const *sets, const double *coef, int K) {
    *out = NULL;
    if (K < 1) return err_set("update_build: no adapters");
    int total = 0, matched = 0;
    for (int k = 0; k < K; k++) total += sets[k]->n_modules;
    update *u = update_new(m->n_params);
    if (!u) return err_set("out of memory building an update");
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        char path[MODEL_NAME_MAX];
        if (!weight_path(p, path)) continue;
        int64_t R = 0;
        for (int k = 0; k < K; k++) {
            const lora_module *mod = lora_find(sets[k], path);
            if (!mod) continue;
            if (mod->out != p->shape[0] || mod->in != p->shape[1]) {
                update_free(u);
                return err_set("adapter %d's module %s is (out %d, in %d), the weight %s is "
                               "(%lld, %lld): the adapter was made for another base",
                               k + 1, path, mod->out, mod->in, p->name, (long long)p->shape[0],
                               (long long)p->shape[1]);
            }
            R += mod->rank;
            matched++;
        }
        if (R == 0) continue;
        if (R > INT_MAX / 2) {
            update_free(u);
            return err_set("update_build: total rank %lld of %s is too large", (long long)R,
                           p->name);
        }
        int o = (int)p->shape[0], in = (int)p->shape[1];
        update_module *um = &u->modules[u->n_modules++];
        snprintf(um->name, sizeof um->name, "%s", p->name);
        um->out = o;
        um->in = in;
        um->rank = (int)R;
        um->B = malloc((size_t)o * (size_t)R * sizeof *um->B);
        um->A = malloc((size_t)R * (size_t)in * sizeof *um->A);
        if (!um->B || !um->A) {
            update_free(u);
            return err_set("out of memory for the factors of %s (%d x %lld and %lld x %d)", p->name,
                           o, (long long)R, (long long)R, in);
        }
        /* B = [c_1 B_1 | … | c_K B_K], A = [A_1; …; A_K], c_k = p_k · s_k */
        int64_t col = 0;
        for (int k = 0; k < K; k++) {
            const lora_module *mod = lora_find(sets[k], path);
            if (!mod) continue;
            int r = mod->rank;
            float c = (float)(coef[k] * mod->scale);
            for (int64_t row = 0; row < o; row++)
                for (int j = 0; j < r; j++)
                    um->B[row * R + col + j] = c * (float)mod->B.data[row * r + j];
            for (int64_t x = 0; x < (int64_t)r * in; x++)
                um->A[col * in + x] = (float)mod->A.data[x];
            col += r;
        }
    }
    if (matched != total) {
        for (int k = 0; k < K; k++)
            for (int i = 0; i < sets[k]->n_modules; i++) {
                char name[MODEL_NAME_MAX + 8];
                snprintf(name, sizeof name, "%s.weight", sets[k]->modules[i].path);
                const model_param *p = model_find_param(m, name);
                if (!p || p->ndim != 2) {
                    update_free(u);
                    return err_set("adapter %d's module %s has no 2-D weight %s in this model: "
                                   "the adapter was made for another base",
                                   k + 1, sets[k]->modules[i].path, name);
                }
            }
        update_free(u);
        return err_set("update_build: %d adapter modules, %d matched", total, matched);
    }
    *out = u;
    return 0;
}

int update_create(update **out) {
    *out = update_new(0);
    return *out ? 0 : err_set("out of memory creating an update");
}

/* The index of weight `name` in m's parameters, or -1. */
static int param_index(const model *m, const char *name) {
    const model_param *p = model_find_param(m, name);
    return p ? (int)(p - m->params) : -1;
}

int update_add(update *u, const model *m, const char *name, int rank, const float *B,
               const float *A) {
    const model_param *p = model_find_param(m, name);
    if (!p || p->ndim != 2)
        return err_set("update_add: %s is not a 2-D weight of this model", name);
    if (rank < 1 || rank > INT_MAX / 2)
        return err_set("update_add: rank %d for %s, an update's rank is 1 to %d", rank, name,
                       INT_MAX / 2);
    int at = (int)(p - m->params), pos = u->n_modules;
    for (int i = 0; i < u->n_modules; i++)
        if (strcmp(u->modules[i].name, name) == 0)
            return err_set("update_add: %s is already in the update", name);
    /* Insertion in parameter order: the modules before `pos` come earlier in m. */
    while (pos > 0 && param_index(m, u->modules[pos - 1].name) > at) pos--;
    int64_t out = p->shape[0], in = p->shape[1];
    float *b = malloc((size_t)out * (size_t)rank * sizeof *b);
    float *a = malloc((size_t)rank * (size_t)in * sizeof *a);
    update_module *grown = realloc(u->modules, (size_t)(u->n_modules + 1) * sizeof *grown);
    if (grown) u->modules = grown;
    if (!b || !a || !grown) {
        free(b);
        free(a);
        return err_set("out of memory for the factors of %s (%lld x %d and %d x %lld)", name,
                       (long long)out, rank, rank, (long long)in);
    }
    memcpy(b, B, (size_t)out * (size_t)rank * sizeof *b);
    memcpy(a, A, (size_t)rank * (size_t)in * sizeof *a);
    memmove(&u->modules[pos + 1], &u->modules[pos],
            (size_t)(u->n_modules - pos) * sizeof *u->modules);
    update_module *um = &u->modules[pos];
    snprintf(um->name, sizeof um->name, "%s", p->name);
    um->out = (int)out;
    um->in = (int)in;
    um->rank = rank;
    um->B = b;
    um->A = a;
    u->n_modules++;
    return 0;
}

uint64_t update_data_bytes(const update *u) {
    uint64_t n = 0;
    for (int i = 0; i < u->n_modules; i++) {
        const update_module *um = &u->modules[i];
        n += (uint64_t)um->rank * ((uint64_t)um->out + (uint64_t)um->in) * sizeof(float);
    }
    return n;
}

int update_apply(model *m, const update *u) {
    model_param **w = malloc((size_t)(u->n_modules ? u->n_modules : 1) * sizeof *w);
    if (!w) return err_set("out of memory applying an update");
    for (int i = 0; i < u->n_modules; i++) {
        const update_module *um = &u->modules[i];
        w[i] = model_find_param(m, um->name);
        if (!w[i] || w[i]->ndim != 2 || w[i]->shape[0] != um->out || w[i]->shape[1] != um->in) {
            free(w);
            return err_set("update module %s (out %d, in %d) has no weight of that shape in this "
                           "model: the update was made for another base",
                           um->name, um->out, um->in);
        }
        if (!w[i]->data) {
            free(w);
            return err_set("update_apply: %s is held read-only (a mapped checkpoint); write the "
                           "new version with update_write_version instead",
                           um->name);
        }
    }
    /* One scratch for every module, made before the first weight changes. */
    int max_R = 1;
    for (int i = 0; i < u->n_modules; i++)
        if (u->modules[i].rank > max_R) max_R = u->modules[i].rank;
    update_kernel_ws *ws;
    if (update_kernel_ws_create(&ws, UPDATE_KERNEL_AUTO, max_R) != 0) {
        free(w);
        return err_context("applying an update");
    }
    int rc = 0;
    for (int i = 0; i < u->n_modules && rc == 0; i++) {
        const update_module *um = &u->modules[i];
        rc = update_kernel_ws_apply(ws, w[i]->data, um->in, um->B, um->rank, um->A, um->in, um->out,
                                    um->rank, um->in);
    }
    update_kernel_ws_free(ws);
    free(w);
    return rc;
}

/* ---- the file --------------------------------------------------------------------- */

int update_write(const update *u, const char *path) {
    if (u->n_modules < 1) return err_set("%s: an update without modules is not written", path);
    safetensors_entry *e = calloc((size_t)u->n_modules * 2, sizeof *e);
    char(*names)[TENSOR_NAME_MAX] = calloc((size_t)u->n_modules * 2, sizeof *names);
    if (!e || !names) {
        free(e);
        free(names);
        return err_set("out of memory writing %s", path);
    }
    for (int i = 0; i < u->n_modules; i++) {
        const update_module *um = &u->modules[i];
        snprintf(names[2 * i], TENSOR_NAME_MAX, "%s" SUFFIX_B, um->name);
        snprintf(names[2 * i + 1], TENSOR_NAME_MAX, "%s" SUFFIX_A, um->name);
        e[2 * i] =
            (safetensors_entry){names[2 * i], SAFETENSORS_F32, 2, {um->out, um->rank}, um->B};
        e[2 * i + 1] =
            (safetensors_entry){names[2 * i + 1], SAFETENSORS_F32, 2, {um->rank, um->in}, um->A};
    }
    char from[2 * UPDATE_HASH_LEN + 1], to[2 * UPDATE_HASH_LEN + 1], round[24];
    hex_encode(u->from, UPDATE_HASH_LEN, from);
    hex_encode(u->to, UPDATE_HASH_LEN, to);
    snprintf(round, sizeof round, "%llu", (unsigned long long)u->round);
    const char *meta[] = {"format", UPDATE_FORMAT, "from", from, "to", to, "round", round, NULL};
    int rc = safetensors_write(path, e, u->n_modules * 2, meta);
    free(e);
    free(names);
    return rc == 0 ? 0 : err_context("writing the update file %s", path);
}

static int meta_hash(const safetensors_file *f, const char *where, const char *key,
                     uint8_t out[UPDATE_HASH_LEN]) {
    const char *v = safetensors_metadata(f, key);
    if (!v || hex_decode(v, out, UPDATE_HASH_LEN) != 0)
        return err_set("%s: __metadata__ \"%s\" must be a version hash, 64 lowercase hex digits",
                       where, key);
    return 0;
}

static int meta_round(const safetensors_file *f, const char *where, uint64_t *round) {
    const char *v = safetensors_metadata(f, "round");
    size_t n = v ? strlen(v) : 0;
    int ok = n >= 1 && n <= 19 && strspn(v, "0123456789") == n;
    if (!ok)
        return err_set("%s: __metadata__ \"round\" must be a decimal round number (1 to 19 "
                       "digits)",
                       where);
    *round = strtoull(v, NULL, 10);
    return 0;
}

/* Copies an F32 tensor of exactly (rows, cols) into a new array, checking
 * that every value is finite. */
static int take(const safetensors_tensor *t, const char *where, int64_t rows, int64_t cols,
                float **out) {
    if (t->dtype != SAFETENSORS_F32)
        return err_set("%s: tensor '%s' is %s, an update is F32", where, t->name,
                       safetensors_dtype_name(t->dtype));
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return err_set("%s: tensor '%s' must be (%lld, %lld) for this model, it is %s(%lld, %lld)",
                       where, t->name, (long long)rows, (long long)cols,
                       t->ndim == 2 ? "" : "not 2-D: ", (long long)(t->ndim > 0 ? t->shape[0] : 0),
                       (long long)(t->ndim > 1 ? t->shape[1] : 0));
    float *v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *v);
    if (!v) return err_set("%s: out of memory reading tensor '%s'", where, t->name);
    if (safetensors_to_float(t, v) != 0) {
        free(v);
        return -1;
    }
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(v[i])) {
            err_set("%s: tensor '%s' element %lld is %g: an update must be finite", where, t->name,
                    (long long)i, (double)v[i]);
            free(v);
            return -1;
        }
    *out = v;
    return 0;
}

/* The pair of weight p, when f has one: 0 (none of the two), 1 (module
 * filled), -1 (refused). */
static int read_pair(const safetensors_file *f, const char *where, const model_param *p,
                     update_module *um) {
    char nb[TENSOR_NAME_MAX], na[TENSOR_NAME_MAX];
    snprintf(nb, sizeof nb, "%s" SUFFIX_B, p->name);
    snprintf(na, sizeof na, "%s" SUFFIX_A, p->name);
    const safetensors_tensor *b = safetensors_find(f, nb), *a = safetensors_find(f, na);
    if (!b && !a) return 0;
    if (!b || !a)
        return err_set("%s: '%s' has no partner '%s': factors come in pairs", where, b ? nb : na,
                       b ? na : nb);
    if (p->ndim != 2) return err_set("%s: '%s' is not a 2-D weight of this model", where, p->name);
    if (b->ndim != 2)
        return err_set("%s: tensor '%s' is not 2-D: a factor B is (%lld, R)", where, nb,
                       (long long)p->shape[0]);
    int64_t R = b->shape[1];
    if (R < 1 || R > INT_MAX / 2)
        return err_set("%s: tensor '%s' must be (%lld, R) with a rank R of 1 to %d", where, nb,
                       (long long)p->shape[0], INT_MAX / 2);
    snprintf(um->name, sizeof um->name, "%s", p->name);
    um->out = (int)p->shape[0];
    um->in = (int)p->shape[1];
    um->rank = (int)R;
    if (take(b, where, p->shape[0], R, &um->B) != 0 || take(a, where, R, p->shape[1], &um->A) != 0)
        return -1;
    return 1;
}

static int from_file(update **out, const safetensors_file *f, const char *where, const model *m) {
    *out = NULL;
    const char *format = safetensors_metadata(f, "format");
    if (!format || strcmp(format, UPDATE_FORMAT) != 0)
        return err_set("%s: not an update file: __metadata__ \"format\" must be \"%s\"", where,
                       UPDATE_FORMAT);
    update *u = update_new(m->n_params);
    if (!u) return err_set("%s: out of memory", where);
    if (meta_hash(f, where, "from", u->from) != 0 || meta_hash(f, where, "to", u->to) != 0 ||
        meta_round(f, where, &u->round) != 0)
        goto fail;
    for (int i = 0; i < m->n_params; i++) {
        int k = read_pair(f, where, &m->params[i], &u->modules[u->n_modules]);
        if (k < 0) {
            update_module *um = &u->modules[u->n_modules];
            free(um->B);
            free(um->A);
            goto fail;
        }
        u->n_modules += k;
    }
    int count = safetensors_count(f);
    if (u->n_modules == 0 && count == 0) {
        err_set("%s: an update file without tensors", where);
        goto fail;
    }
    if (count != 2 * u->n_modules) {
        /* Something that is no factor of a weight of m: name it. */
        for (int i = 0; i < count; i++) {
            const char *name = safetensors_tensor_at(f, i)->name;
            size_t n = strlen(name), s = strlen(SUFFIX_B);
            char weight[TENSOR_NAME_MAX];
            int factor = n > s && n - s < sizeof weight &&
                         (!strcmp(name + n - s, SUFFIX_B) || !strcmp(name + n - s, SUFFIX_A));
            if (factor) {
                memcpy(weight, name, n - s);
                weight[n - s] = '\0';
            }
            if (!factor || !model_find_param(m, weight)) {
                err_set("%s: tensor '%s' is not \"<weight>%s\" or \"<weight>%s\" of a weight of "
                        "this model",
                        where, name, SUFFIX_B, SUFFIX_A);
                goto fail;
            }
        }
        err_set("%s: %d tensors for %d factor pairs", where, count, u->n_modules);
        goto fail;
    }
    *out = u;
    return 0;
fail:
    update_free(u);
    return -1;
}

int update_read(update **out, const char *path, const model *m) {
    safetensors_file *f;
    *out = NULL;
    if (safetensors_open(&f, path) != 0) return err_context("reading the update file");
    int rc = from_file(out, f, path, m);
    safetensors_close(f);
    return rc;
}

int update_parse(update **out, const void *buf, size_t len, const char *where, const model *m) {
    safetensors_file *f;
    *out = NULL;
    if (safetensors_parse(&f, buf, len, where) != 0) return err_context("reading an update");
    int rc = from_file(out, f, where, m);
    safetensors_close(f);
    return rc;
}
