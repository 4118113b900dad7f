/* handout — start adapters and difference updates (handout.h). */
#include "policies/handout.h"

#include "policies/svd.h"
#include "util/err.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int handout_set_like(const model *m, const lora_set *like, int rank, double alpha, lora_set **out) {
    size_t len = 1;
    for (int i = 0; i < like->n_modules; i++) len += strlen(like->modules[i].path) + 1;
    char *list = malloc(len);
    if (!list) return err_set("out of memory listing %d modules", like->n_modules);
    list[0] = '\0';
    for (int i = 0; i < like->n_modules; i++) {
        if (i) strcat(list, ",");
        strcat(list, like->modules[i].path);
    }
    lora_config cfg;
    lora_config_init(&cfg);
    int rc = lora_config_set_targets(&cfg, list);
    free(list);
    cfg.rank = rank;
    cfg.alpha = alpha;
    if (rc == 0) rc = lora_create(out, m, &cfg);
    lora_config_free(&cfg);
    return rc;
}

/* The member's modules must be the start's, at its rank and scale. */
static int same_shape(const lora_set *member, const lora_set *start) {
    if (member->n_modules != start->n_modules)
        return err_set("the member adapts %d modules, the round's start adapter %d",
                       member->n_modules, start->n_modules);
    for (int i = 0; i < start->n_modules; i++) {
        const lora_module *a = &member->modules[i], *g = &start->modules[i];
        if (strcmp(a->path, g->path) != 0 || a->rank != g->rank || a->scale != g->scale)
            return err_set("module %d is %s at rank %d (scale %g) in the member's adapter and %s "
                           "at rank %d (scale %g) in the round's start adapter: a member trains "
                           "the start it was given",
                           i, a->path, a->rank, a->scale, g->path, g->rank, g->scale);
    }
    return 0;
}

int handout_difference(const model *m, const lora_set *member, const lora_set *start,
                       lora_set **out) {
    *out = NULL;
    if (same_shape(member, start) != 0) return -1;
    int r = start->modules[0].rank;
    lora_set *d;
    if (handout_set_like(m, member, 2 * r, 2 * r, &d) != 0) return -1;
    for (int i = 0; i < d->n_modules; i++) {
        lora_module *dm = &d->modules[i];
        const lora_module *a = &member->modules[i], *g = &start->modules[i];
        int out_ = dm->out, in = dm->in, R = 2 * r;
        dm->scale = a->scale;
        dm->alpha = a->alpha;
        /* B (out, 2r) = [B_i | −B0], A (2r, in) = [A_i; A0] */
        for (int o = 0; o < out_; o++)
            for (int j = 0; j < r; j++) {
                dm->B.data[(int64_t)o * R + j] = a->B.data[(int64_t)o * r + j];
                dm->B.data[(int64_t)o * R + r + j] = -g->B.data[(int64_t)o * r + j];
            }
        memcpy(dm->A.data, a->A.data, (size_t)r * (size_t)in * sizeof(real));
        memcpy(dm->A.data + (int64_t)r * in, g->A.data, (size_t)r * (size_t)in * sizeof(real));
    }
    *out = d;
    return 0;
}

/* FedAvg of the factors: A' = Σ coef_k A_k, B' = Σ coef_k B_k, in member
 * order, in float (the same sums as the fedit merge's Ā and B̄). */
static int next_fedavg(const lora_set *start, const aggregate_member *mb, const double *coef, int K,
                       lora_set *next) {
    for (int k = 0; k < K; k++)
        if (same_shape(mb[k].set, start) != 0) return err_context("%s", mb[k].name);
    for (int i = 0; i < next->n_modules; i++) {
        lora_module *nm = &next->modules[i];
        memset(nm->A.data, 0, (size_t)nm->A.numel * sizeof(real));
        memset(nm->B.data, 0, (size_t)nm->B.numel * sizeof(real));
        for (int k = 0; k < K; k++) {
            const lora_module *mod = &mb[k].set->modules[i];
            for (int64_t j = 0; j < nm->A.numel; j++)
                nm->A.data[j] += (real)coef[k] * mod->A.data[j];
            for (int64_t j = 0; j < nm->B.numel; j++)
                nm->B.data[j] += (real)coef[k] * mod->B.data[j];
        }
    }
    return 0;
}

static const update_module *update_find(const update *u, const char *weight) {
    for (int i = 0; i < u->n_modules; i++)
        if (strcmp(u->modules[i].name, weight) == 0) return &u->modules[i];
    return NULL;
}

/* Module i of the next start: the rank-r SVD of s·B0·A0 + B_u·A_u,
 * re-balanced as A' = c·V_rᵀ, B' = U_r Σ_r / (c s). */
static int next_refactor_module(const policy *pol, const lora_module *g, const update_module *um,
                                const lora_module *fresh, uint64_t seed, lora_module *nm) {
    int out = g->out, in = g->in, r = g->rank, Ru = um ? um->rank : 0, R = r + Ru;
    real *B = malloc((size_t)out * (size_t)R * sizeof *B), *A = malloc((size_t)R * in * sizeof *A);
    real *Bt = malloc((size_t)out * r * sizeof *Bt), *At = malloc((size_t)r * in * sizeof *At);
    double *sigma = malloc((size_t)r * sizeof *sigma);
    int rc = 0;
    if (!B || !A || !Bt || !At || !sigma)
        rc = err_set("out of memory for module %s's next start (%d x %d, rank %d)", g->path, out,
                     in, R);
    for (int o = 0; rc == 0 && o < out; o++) {
        for (int j = 0; j < r; j++)
            B[(int64_t)o * R + j] = (real)g->scale * g->B.data[(int64_t)o * r + j];
        for (int j = 0; j < Ru; j++) B[(int64_t)o * R + r + j] = um->B[(int64_t)o * Ru + j];
    }
    if (rc == 0) {
        memcpy(A, g->A.data, (size_t)r * in * sizeof *A);
        if (Ru) memcpy(A + (int64_t)r * in, um->A, (size_t)Ru * in * sizeof *A);
        svd_operator op = {.out = out, .in = in, .R = R, .B = B, .A = A};
        rc = svd_truncated(&op, r, pol->merge.svd_oversample, pol->merge.svd_power_iters, seed, Bt,
                           At, sigma);
    }
    for (int k = 0; rc == 0 && k < r; k++) {
        double norm = 0;
        for (int j = 0; j < in; j++)
            norm += (double)At[(int64_t)k * in + j] * At[(int64_t)k * in + j];
        norm = sqrt(norm);
        real *a = nm->A.data + (int64_t)k * in;
        if (!(sigma[k] > 1e-9 * sigma[0]) || !(norm > 0)) {
            /* A direction the product does not use: a fresh row, so that
             * training can still move it (B's column 0, A's row 0 would
             * leave both gradients 0). */
            memcpy(a, fresh->A.data + (int64_t)k * in, (size_t)in * sizeof *a);
            for (int o = 0; o < out; o++) nm->B.data[(int64_t)o * r + k] = 0;
            continue;
        }
        double fa = HANDOUT_ROW_NORM / norm, fb = norm / (HANDOUT_ROW_NORM * g->scale);
        for (int j = 0; j < in; j++) a[j] = (real)(At[(int64_t)k * in + j] * fa);
        for (int o = 0; o < out; o++)
            nm->B.data[(int64_t)o * r + k] = (real)(Bt[(int64_t)o * r + k] * fb);
    }
    free(B);
    free(A);
    free(Bt);
    free(At);
    free(sigma);
    return rc;
}

int handout_next(const policy *pol, const model *m, const lora_set *start,
                 const aggregate_member *members, const double *coef, int K, const update *u,
                 const lora_set *fresh, uint64_t round, lora_set **next) {
    *next = NULL;
    lora_set *n;
    if (lora_create(&n, m, &start->cfg) != 0) return err_context("the next round's start");
    int rc = 0;
    if (pol->merge.mode == POLICY_MERGE_FEDIT) {
        rc = next_fedavg(start, members, coef, K, n);
    } else if (!u) {
        rc = err_set("the next round's start needs the round's low-rank update (merge.start "
                     "\"global\" with a dense rule)");
    } else {
        if (same_shape(fresh, start) != 0) rc = err_context("the fresh adapter");
        for (int i = 0; rc == 0 && i < start->n_modules; i++) {
            char weight[MODEL_NAME_MAX];
            snprintf(weight, sizeof weight, "%s.weight", start->modules[i].path);
            uint64_t seed = (round ^ 0x5bd1e995u) * 1000003u + (uint64_t)i;
            rc = next_refactor_module(pol, &start->modules[i], update_find(u, weight),
                                      &fresh->modules[i], seed, &n->modules[i]);
        }
    }
    if (rc != 0) {
        lora_free(n);
        return err_context("making round %llu's start adapter", (unsigned long long)round + 1);
    }
    *next = n;
    return 0;
}
