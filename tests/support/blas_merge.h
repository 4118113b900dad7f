/* blas_merge.h — the exact merge of K adapters as BLAS GEMMs, the tests'
 * oracle for the product code's merge (lora/update.h's factored update and
 * its portable kernel, the policies library's exact mode).
 *
 *   W' = W + Σ_k c_k · B_k · A_k,   c_k = w_k · s_k,
 *
 * computed as ONE GEMM per module over the concatenated factors,
 *
 *   [c_1 B_1 | … | c_K B_K]  (out, Σ r_k)   ·   [A_1; …; A_K]  (Σ r_k, in),
 *
 * which is the sum of the products, not the product of averaged factors
 * (mean(B)·mean(A) ≠ mean(B·A)), and lets every adapter have its own rank.
 * A GEMM's summation order depends on the BLAS kernel the CPU gets, so this
 * agrees with update_apply up to rounding, not bit for bit: that is why the
 * product merges through update.h (docs/protocol.md, "Low-rank model sync").
 * Header-only, so it builds against fl_model_f32 or fl_model_f64 (`real`). */
#ifndef FL_TESTS_SUPPORT_BLAS_MERGE_H
#define FL_TESTS_SUPPORT_BLAS_MERGE_H

#include "lora/delta.h"
#include "lora/lora.h"
#include "model/cpu/cpu.h"
#include "util/err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* W (out, in, row stride ldw) += Σ_k coef[k] · B_k (out, r_k) · A_k (r_k, in),
 * as one GEMM over the concatenated factors. K >= 1; any rank may be 0. */
static inline int ts_blas_product(real *W, int ldw, int out, int in, int K, const real *const *B,
                                  const real *const *A, const int *rank, const double *coef) {
    if (K < 1) return err_set("ts_blas_product: no adapters to merge");
    int64_t R = 0;
    for (int k = 0; k < K; k++) {
        if (rank[k] < 0) return err_set("ts_blas_product: adapter %d has rank %d", k, rank[k]);
        R += rank[k];
    }
    if (R == 0) return 0;
    if (R > (1 << 30))
        return err_set("ts_blas_product: total rank %lld is too large", (long long)R);
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

/* W' = W + Σ_k weights[k] · s_k · B_k · A_k over K adapters made for m's
 * shapes, one GEMM per module path (a path absent from some adapters takes
 * only those that have it). */
static inline int ts_blas_merge(model *m, lora_set *const *sets, const double *weights, int K) {
    if (K < 1) return err_set("ts_blas_merge: no adapters to merge");
    for (int k = 0; k < K; k++)
        for (int i = 0; i < sets[k]->n_modules; i++) {
            model_param *w;
            if (delta_weight(m, &sets[k]->modules[i], &w) != 0)
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
            delta_weight(m, first, &w);
            rc = ts_blas_product(w->data, first->in, first->out, first->in, n, B, A, rank, coef);
        }
    free(A);
    free(B);
    free(rank);
    free(coef);
    return rc;
}

#endif
