/* validate.c — checking a member's update and building its adapter (validate.h). */
#include "policies/validate.h"

#include "model/cpu/cpu.h"
#include "util/err.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PEFT_PREFIX "base_model.model."

_Static_assert(sizeof(real) == 4, "submitted tensors are F32: the policies need the fp32 build");

static int reject(char *reason, size_t cap, const char *fmt, ...) ERR_PRINTF(3, 4);
static int reject(char *reason, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (cap) vsnprintf(reason, cap, fmt, ap);
    va_end(ap);
    return 1;
}

double validate_update_norm(const lora_set *s) {
    double total = 0;
    for (int i = 0; i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        int r = mod->rank;
        real *g = malloc(2 * (size_t)r * (size_t)r * sizeof *g);
        if (!g) return NAN;
        /* gb (r, r) = Bᵀ B,  ga (r, r) = A Aᵀ;  ‖B A‖² = Σ gb ∘ ga */
        cpu_gemm(1, 0, r, r, mod->out, 1, mod->B.data, r, mod->B.data, r, 0, g, r);
        cpu_gemm(0, 1, r, r, mod->in, 1, mod->A.data, mod->in, mod->A.data, mod->in, 0, g + r * r,
                 r);
        double sum = 0;
        for (int j = 0; j < r * r; j++) sum += (double)g[j] * (double)g[r * r + j];
        free(g);
        total += mod->scale * mod->scale * fmax(sum, 0);
    }
    return sqrt(total);
}

double validate_module_norm(const lora_module *mod) {
    int r = mod->rank;
    double *g = calloc(2 * (size_t)r * (size_t)r, sizeof *g);
    if (!g) return NAN;
    double *gb = g, *ga = g + (size_t)r * r;
    /* gb (r, r) = Bᵀ B over B (out, r); ga (r, r) = A Aᵀ over A (r, in). */
    for (int o = 0; o < mod->out; o++) {
        const real *row = mod->B.data + (size_t)o * r;
        for (int a = 0; a < r; a++)
            for (int b = 0; b < r; b++) gb[a * r + b] += (double)row[a] * (double)row[b];
    }
    for (int a = 0; a < r; a++)
        for (int b = a; b < r; b++) {
            const real *x = mod->A.data + (size_t)a * mod->in,
                       *y = mod->A.data + (size_t)b * mod->in;
            double sum = 0;
            for (int j = 0; j < mod->in; j++) sum += (double)x[j] * (double)y[j];
            ga[a * r + b] = ga[b * r + a] = sum;
        }
    double sum = 0;
    for (size_t j = 0; j < (size_t)r * r; j++) sum += gb[j] * ga[j];
    free(g);
    /* fmax(NaN, 0) would hide a NaN: keep it. */
    return isnan(sum) ? NAN : fabs(mod->scale) * sqrt(fmax(sum, 0));
}

double validate_sum_squares(model_dtype t, const void *values, int64_t n) {
    real buf[1024];
    size_t es = model_dtype_size(t);
    double sum = 0;
    for (int64_t off = 0; off < n; off += 1024) {
        int64_t k = n - off < 1024 ? n - off : 1024;
        model_values_widen(t, (const unsigned char *)values + (size_t)off * es, k, buf);
        for (int64_t i = 0; i < k; i++) sum += (double)buf[i] * (double)buf[i];
    }
    return sum;
}

int validate_finite(const char *name, model_dtype t, const void *values, int64_t first, int64_t n,
                    char *reason, size_t reason_cap) {
    real buf[1024];
    size_t es = model_dtype_size(t);
    for (int64_t off = 0; off < n; off += 1024) {
        int64_t k = n - off < 1024 ? n - off : 1024;
        model_values_widen(t, (const unsigned char *)values + (size_t)off * es, k, buf);
        for (int64_t i = 0; i < k; i++)
            if (!isfinite(buf[i]))
                return reject(reason, reason_cap, "finite: '%s' element %lld is %g after the merge",
                              name, (long long)(first + off + i), (double)buf[i]);
    }
    return 0;
}

int validate_check(const policy *pol, int round_rank, const lora_set *s, const char *member,
                   char *reason, size_t reason_cap) {
    int max_rank = pol->validation.max_rank ? pol->validation.max_rank : round_rank;
    for (int i = 0; i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        if (mod->rank > max_rank)
            return reject(reason, reason_cap, "rank: %s's module %s has rank %d, accepted 1..%d",
                          member, mod->path, mod->rank, max_rank);
        for (int64_t j = 0; j < mod->A.numel; j++)
            if (!isfinite(mod->A.data[j]))
                return reject(reason, reason_cap, "finite: %s's %s has a non-finite value", member,
                              mod->A.name);
        for (int64_t j = 0; j < mod->B.numel; j++)
            if (!isfinite(mod->B.data[j]))
                return reject(reason, reason_cap, "finite: %s's %s has a non-finite value", member,
                              mod->B.name);
    }
    if (pol->validation.max_norm > 0) {
        double norm = validate_update_norm(s);
        if (!(norm <= pol->validation.max_norm))
            return reject(reason, reason_cap,
                          "norm: %s's update has norm %.6g, above validation.max_norm %g", member,
                          norm, pol->validation.max_norm);
    }
    return 0;
}

/* Module and factor of a PEFT tensor name; -1 when it names none of s's. */
static int locate(const lora_set *s, const char *name, int *is_b) {
    size_t n = strlen(name), plen = strlen(PEFT_PREFIX), slen = strlen(".lora_A.weight");
    if (n <= plen + slen || strncmp(name, PEFT_PREFIX, plen) != 0) return -1;
    const char *suffix = name + n - slen;
    if (!strcmp(suffix, ".lora_A.weight"))
        *is_b = 0;
    else if (!strcmp(suffix, ".lora_B.weight"))
        *is_b = 1;
    else
        return -1;
    size_t path_len = n - plen - slen;
    if (path_len >= LORA_PATH_MAX) return -1;
    char path[LORA_PATH_MAX];
    memcpy(path, name + plen, path_len);
    path[path_len] = '\0';
    const lora_module *mod = lora_find(s, path);
    return mod ? (int)(mod - s->modules) : -1;
}

int validate_build(const policy *pol, const model *m, const lora_config *round_cfg,
                   const unsigned char *round_base, const validate_submission *sub, lora_set **out,
                   char *reason, size_t reason_cap) {
    *out = NULL;
    if (!sub->base || !round_base || memcmp(sub->base, round_base, VALIDATE_HASH_LEN) != 0)
        return reject(reason, reason_cap,
                      "base: %s trained on another base version than this round's", sub->member);
    int max_rank = pol->validation.max_rank ? pol->validation.max_rank : round_cfg->rank;
    if (sub->rank < 1 || sub->rank > max_rank)
        return reject(reason, reason_cap, "rank: %s declares rank %d, accepted 1..%d", sub->member,
                      sub->rank, max_rank);
    if (!(isfinite(sub->alpha) && sub->alpha > 0))
        return reject(reason, reason_cap, "rank: %s declares lora_alpha %g", sub->member,
                      sub->alpha);
    lora_config cfg;
    if (lora_config_copy(&cfg, round_cfg) != 0) return -1;
    cfg.rank = sub->rank;
    cfg.alpha = sub->alpha;
    cfg.use_rslora = sub->rslora;
    lora_set *s = NULL;
    int rc = lora_create(&s, m, &cfg);
    lora_config_free(&cfg);
    if (rc != 0)
        return reject(reason, reason_cap, "rank: %s's adapter does not fit the base: %s",
                      sub->member, err_msg());
    char *seen = calloc(2 * (size_t)s->n_modules, 1);
    if (!seen) {
        lora_free(s);
        return err_set("validate: out of memory");
    }
    rc = 0;
    for (size_t t = 0; rc == 0 && t < sub->n_tensors; t++) {
        const validate_tensor *vt = &sub->tensors[t];
        int is_b, i = locate(s, vt->name, &is_b);
        if (i < 0) {
            rc = reject(reason, reason_cap,
                        "tensors: %s sent '%.120s', which the round's targets "
                        "do not include",
                        sub->member, vt->name);
            break;
        }
        if (seen[2 * i + is_b]++) {
            rc = reject(reason, reason_cap, "tensors: %s sent '%.120s' twice", sub->member,
                        vt->name);
            break;
        }
        lora_module *mod = &s->modules[i];
        model_param *p = is_b ? &mod->B : &mod->A;
        if (vt->rows != p->shape[0] || vt->cols != p->shape[1]) {
            rc = reject(reason, reason_cap,
                        "tensors: %s's '%.120s' is (%lld, %lld), the base "
                        "needs (%lld, %lld)",
                        sub->member, vt->name, (long long)vt->rows, (long long)vt->cols,
                        (long long)p->shape[0], (long long)p->shape[1]);
            break;
        }
        memcpy(p->data, vt->data, (size_t)p->numel * sizeof(real));
    }
    for (int i = 0; rc == 0 && i < 2 * s->n_modules; i++)
        if (!seen[i])
            rc = reject(reason, reason_cap, "tensors: %s sent no %s for module %s", sub->member,
                        i % 2 ? "lora_B" : "lora_A", s->modules[i / 2].path);
    free(seen);
    if (rc == 0) rc = validate_check(pol, round_cfg->rank, s, sub->member, reason, reason_cap);
    if (rc != 0) {
        lora_free(s);
        return rc;
    }
    *out = s;
    return 0;
}
