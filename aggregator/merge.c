/* merge — checked updates and the default (exact product) policy. */
#include "aggregator/merge.h"

#include "aggregator/store.h"
#include "model/safetensors.h"
#include "policies/handout.h"
#include "policies/validate.h"
#include "util/err.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int refuse(char why[AGG_WHY_MAX], const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int refuse(char why[AGG_WHY_MAX], const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, AGG_WHY_MAX, fmt, ap);
    va_end(ap);
    return 1;
}

static const struct msg_tensor *find_tensor(const struct payload_delta *d, const char *name) {
    size_t lo = 0, hi = d->ntensors; /* sorted by name (msg_tensors_decode checks) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(d->tensors[mid].name, name);
        if (c == 0) return &d->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Copies a (rows, cols) F32 tensor into p after checking its shape and that
 * every value is finite. 0, or 1 with why. */
static int take(const struct msg_tensor *t, model_param *p, char why[AGG_WHY_MAX]) {
    if (t->shape[0] != (uint64_t)p->shape[0] || t->shape[1] != (uint64_t)p->shape[1])
        return refuse(why,
                      "shapes do not match the base: '%s' is (%llu, %llu), the base needs "
                      "(%lld, %lld)",
                      t->name, (unsigned long long)t->shape[0], (unsigned long long)t->shape[1],
                      (long long)p->shape[0], (long long)p->shape[1]);
    for (int64_t i = 0; i < p->numel; i++) {
        float v;
        memcpy(&v, t->data + 4 * i, 4); /* unaligned, little-endian (the hosts we build for) */
        if (!isfinite(v))
            return refuse(why, "NaN or Inf in the delta: '%s' element %lld is %g", t->name,
                          (long long)i, (double)v);
        p->data[i] = (real)v;
    }
    return 0;
}

int agg_update_build(const model *base, const uint8_t base_hash[32], uint64_t round,
                     const char *member, double max_weight, const void *payload, size_t len,
                     agg_update *u, char why[AGG_WHY_MAX]) {
    memset(u, 0, sizeof *u);
    why[0] = '\0';
    struct payload_delta d;
    if (payload_delta_decode(payload, len, 0, &d) < 0)
        return refuse(why, "bad DELTA payload: %s", err_msg());
    int rc = 1;
    lora_config cfg;
    lora_config_init(&cfg);
    char hex_got[STORE_HEX_LEN + 1], hex_want[STORE_HEX_LEN + 1];
    if (d.round != round) {
        refuse(why, "stale round: the delta says round %llu, this is round %llu",
               (unsigned long long)d.round, (unsigned long long)round);
        goto done;
    }
    if (memcmp(d.base, base_hash, 32) != 0) {
        hex_encode(d.base, 32, hex_got);
        hex_encode(base_hash, 32, hex_want);
        refuse(why, "wrong base version: trained on %.16s..., round %llu's base is %.16s...",
               hex_got, (unsigned long long)round, hex_want);
        goto done;
    }
    /* The adapter the node trained, rebuilt on our base: lora_create resolves
     * the targets exactly as the trainer did and fixes every shape. */
    char targets[MSG_TARGETS_MAX * (MSG_TARGET_MAX + 1) + 1] = "";
    for (uint32_t i = 0; i < d.ntargets; i++) {
        if (i) strcat(targets, ",");
        strcat(targets, d.targets[i]);
    }
    cfg.rank = (int)d.rank;
    cfg.alpha = d.alpha;
    cfg.use_rslora = d.rslora;
    if (lora_config_set_targets(&cfg, targets) < 0 || lora_create(&u->set, base, &cfg) < 0) {
        refuse(why, "shapes do not match the base: %s", err_msg());
        goto done;
    }
    size_t matched = 0;
    for (int i = 0; i < u->set->n_modules; i++) {
        lora_module *m = &u->set->modules[i];
        const struct msg_tensor *a = find_tensor(&d, m->A.name), *b = find_tensor(&d, m->B.name);
        if (!a || !b) {
            refuse(why, "shapes do not match the base: no '%s' in the delta",
                   !a ? m->A.name : m->B.name);
            goto done;
        }
        if (take(a, &m->A, why) || take(b, &m->B, why)) goto done;
        matched += 2;
    }
    if (matched != d.ntensors) {
        for (size_t i = 0; i < d.ntensors; i++) {
            char path[MSG_TENSOR_NAME_MAX + 1];
            int is_b;
            if (payload_tensor_path(d.tensors[i].name, path, sizeof path, &is_b) < 0 ||
                !lora_find(u->set, path)) {
                refuse(why,
                       "shapes do not match the base: '%s' is not an adapted module of the "
                       "base for targets %s",
                       d.tensors[i].name, targets);
                goto done;
            }
        }
        refuse(why, "shapes do not match the base: %zu tensors for %d modules", d.ntensors,
               u->set->n_modules);
        goto done;
    }
    snprintf(u->member, sizeof u->member, "%s", member);
    u->max_weight = max_weight;
    u->tokens = d.tokens;
    u->examples = d.examples;
    u->loss_before = d.loss_before;
    u->loss_after = d.loss_after;
    u->rank = d.rank;
    u->has_start = d.has_start;
    memcpy(u->start, d.start, sizeof u->start);
    rc = 0;
done:
    payload_delta_free(&d);
    lora_config_free(&cfg);
    if (rc != 0) {
        lora_free(u->set);
        u->set = NULL;
    }
    return rc;
}

void agg_update_free(agg_update *u) {
    lora_free(u->set);
    u->set = NULL;
}

/* ---- the default bounds --------------------------------------------------------- */

struct agg_norms {
    uint8_t base[32];
    int n, cap;
    struct {
        char name[MODEL_NAME_MAX + 8];
        double norm;
    } * w;
};

int agg_norms_new(agg_norms **out, const uint8_t base_hash[32]) {
    *out = calloc(1, sizeof **out);
    if (!*out) return err_set("out of memory for the base's weight norms");
    memcpy((*out)->base, base_hash, 32);
    return 0;
}

int agg_norms_for(const agg_norms *n, const uint8_t base_hash[32]) {
    return n && memcmp(n->base, base_hash, 32) == 0;
}

void agg_norms_free(agg_norms *n) {
    if (!n) return;
    free(n->w);
    free(n);
}

/* ‖W‖_F of the base weight named `name`, from the cache or computed. */
static int weight_norm(agg_norms *c, const model *base, const char *name, double *out) {
    for (int i = 0; c && i < c->n; i++)
        if (!strcmp(c->w[i].name, name)) {
            *out = c->w[i].norm;
            return 0;
        }
    const model_param *p = model_find_param(base, name);
    if (!p) return err_set("the base has no weight '%s' for an adapted module", name);
    *out = sqrt(validate_sum_squares(p->dtype, p->values, p->numel));
    /* Read once: a mapped base's pages go back (they fault in again from
     * the file when the merge reads them), so the bound costs no memory. */
    safetensors_dir_release(base->mapped, p->values, (size_t)p->numel * model_dtype_size(p->dtype));
    if (!c) return 0;
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 64;
        void *w = realloc(c->w, (size_t)cap * sizeof *c->w);
        if (!w) return err_set("out of memory for the base's weight norms");
        c->w = w;
        c->cap = cap;
    }
    snprintf(c->w[c->n].name, sizeof c->w[c->n].name, "%s", name);
    c->w[c->n++].norm = *out;
    return 0;
}

int agg_update_bound(const agg_update *u, const model *base, agg_norms *cache, double max_ratio,
                     char why[AGG_WHY_MAX]) {
    if (max_ratio <= 0) return 0;
    for (int i = 0; i < u->set->n_modules; i++) {
        const lora_module *m = &u->set->modules[i];
        char name[MODEL_NAME_MAX + 8];
        snprintf(name, sizeof name, "%s.weight", m->path);
        double w = 0, d = validate_module_norm(m);
        if (weight_norm(cache, base, name, &w) < 0) return -1;
        /* NaN compares false: a norm that is not a number is refused too. */
        if (!(d <= max_ratio * w))
            return refuse(why,
                          "norm: the update of %s has norm %.4g, %.4g times the norm %.4g of the "
                          "weight it changes; the limit is limits.max_update_ratio = %g",
                          m->path, d, w > 0 ? d / w : INFINITY, w, max_ratio);
    }
    return 0;
}

int agg_model_finite(const model *m, char why[AGG_WHY_MAX]) {
    /* 8 MiB at a time, and a mapped model's pages given back behind: a
     * version read once takes no more memory than a chunk. */
    const int64_t chunk_bytes = (int64_t)8 << 20;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        size_t es = model_dtype_size(p->dtype);
        int64_t step = chunk_bytes / (int64_t)es;
        for (int64_t off = 0; p->values && off < p->numel; off += step) {
            int64_t k = p->numel - off < step ? p->numel - off : step;
            const unsigned char *v = (const unsigned char *)p->values + (size_t)off * es;
            int bad = validate_finite(p->name, p->dtype, v, off, k, why, AGG_WHY_MAX);
            safetensors_dir_release(m->mapped, v, (size_t)k * es);
            if (bad) return 1;
        }
    }
    return 0;
}

/* Water-filling: give every uncapped member its token share of what the
 * capped ones left; whoever then exceeds its cap is capped; repeat (at most
 * n times, since each pass caps at least one more member or stops). */
int agg_weights_tokens(void *arg, const agg_update *u, int n, double *w) {
    (void)arg;
    char *capped = calloc((size_t)n, 1);
    if (!capped) return err_set("out of memory weighing %d updates", n);
    for (;;) {
        double left = 1.0, tokens = 0;
        for (int i = 0; i < n; i++) {
            if (capped[i])
                left -= u[i].max_weight;
            else
                tokens += (double)u[i].tokens;
        }
        int more = 0;
        for (int i = 0; i < n; i++) {
            if (capped[i]) {
                w[i] = u[i].max_weight;
                continue;
            }
            w[i] = left > 0 && tokens > 0 ? left * (double)u[i].tokens / tokens : 0;
            if (w[i] > u[i].max_weight) capped[i] = 1, more = 1;
        }
        if (!more) break;
    }
    free(capped);
    return 0;
}

void agg_change_free(agg_change *c) {
    update_free(c->factors);
    if (c->dense_free) c->dense_free(c->dense_ctx);
    memset(c, 0, sizeof *c);
}

/* The factors only: the version is written from them (update_write_version),
 * the one way the aggregator changes a base by a low-rank update. */
int agg_merge_exact(void *arg, const model *base, const lora_set *start, const agg_update *u, int n,
                    const double *w, agg_change *out) {
    (void)arg;
    memset(out, 0, sizeof *out);
    int with_start = start && lora_has_product(start);
    lora_set **sets = malloc((size_t)(n + 1) * sizeof *sets);
    double *coef = malloc((size_t)(n + 1) * sizeof *coef);
    if (!sets || !coef) {
        free(sets);
        free(coef);
        return err_set("out of memory merging %d updates", n);
    }
    double sum = 0;
    for (int i = 0; i < n; i++) sets[i] = u[i].set, coef[i] = w[i], sum += w[i];
    sets[n] = (lora_set *)start;
    coef[n] = -sum;
    int rc = update_build(&out->factors, base, sets, coef, n + with_start);
    free(sets);
    free(coef);
    return rc;
}

static const agg_policy default_policy = {
    .validate = NULL,
    .weights = agg_weights_tokens,
    .merge = agg_merge_exact,
    .arg = NULL,
};

const agg_policy *agg_policy_default(void) {
    return &default_policy;
}
