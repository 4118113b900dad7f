/* aggregate — one round's aggregation under a policy: W' = W + ΔW.
 *
 * Input: the base model (updated in place) and the K accepted members'
 * adapters (validate_build), all over the same modules. Per member i, with
 * Δ_i = s_i·B_i·A_i its dense update (out, in) per module:
 *
 *   norms      n_i = ‖Δ_i‖_F over all modules (from r×r Gram products,
 *              never forming Δ_i);
 *   clipping   c_i = min(1, C / n_i): C = dp.clip with DP, robust.clip_norm
 *              otherwise (0: c_i = 1);
 *   weights    p_i (weights.h; capped, Σ p = 1), or with DP w_i / E;
 *   rule       mean:          ΔW = Σ p_i c_i Δ_i
 *              krum:          the same over the multi-Krum selection, p
 *                             renormalised over it (distances from Gram
 *                             products of the factors, whole update)
 *              median, trimmed_mean: coordinate-wise over the c_i Δ_i,
 *                             unweighted (robust.h)
 *              DP-FedAvg:     ΔW = Σ w_i c_i Δ_i / E + N(0, σ²), σ = z·C / E
 *                             (McMahan et al. 2018, fixed denominator)
 *   merge      exact: the mean/krum sum over the concatenated factors,
 *              B = [f_1 B_1 | …] (f_i = p_i c_i s_i), A = [A_1; …]
 *              (with a start adapter: and −(Σ p_i c_i) s B0 | A0, handout.h);
 *              fedit: ΔW = s·(Σ p_i B_i)(Σ p_i A_i) — FedIT's factor
 *              average, NOT the average of the products (kept to measure
 *              that error); needs one rank and one scale;
 *              svd: the rule's ΔW replaced by its rank-r truncated SVD
 *              (svd.h), which is also returned as a PEFT-shaped adapter.
 *
 * Low rank and dense results. Where every module's ΔW is a product B·A —
 * the mean and multi-Krum without DP in exact mode, fedit, and svd after
 * any rule — the factors are collected as a model update (lora/update.h),
 * which the caller applies with update_apply, the portable kernel a node
 * repeats bit for bit (aggregate_compute), or which aggregate_round applies
 * and keeps in the report; the aggregator publishes it for low-rank sync.
 * The exact merge's factors are update_build's with coefficients p_i c_i:
 * B = [f_1 B_1 | …] with f_i = (float)(p_i c_i s_i), members whose p_i is 0
 * (left out by multi-Krum) left out. The coordinate rules and DP noise
 * (without svd) are dense: added to W module by module in fp32 (BLAS for
 * the products), no update.
 *
 * Memory stays bounded: modules are processed one at a time; the factored
 * rules need (out + in)·Σr_i values per module and keep the update, whose
 * size is that of the update file ((out + in)·R per adapted weight); the
 * coordinate rules need K·rows·in for a block of rows sized by
 * merge.block_bytes, svd and DP+svd one dense (out, in) module. */
#ifndef FL_POLICIES_AGGREGATE_H
#define FL_POLICIES_AGGREGATE_H

#include "lora/lora.h"
#include "lora/update.h"
#include "policies/noise.h"
#include "policies/policy.h"

#include <stdint.h>

typedef struct {
    const char *name;    /* for messages */
    const lora_set *set; /* the member's validated adapter */
    uint64_t tokens;     /* trained-on tokens (weighting "tokens") */
    uint64_t examples;   /* examples (weighting "examples") */
} aggregate_member;

typedef struct {
    uint64_t round;  /* seeds the randomized SVD, so a replay gives the same bytes */
    int roster_size; /* DP: E = rounds.fraction × roster_size when dp.expected_weight is 0 */
    /* The adapter every member started the round from (handout.h), or NULL
     * (each started from B = 0). With a start whose B is not zero, member
     * i's update is Δ_i = s·(B_i A_i − B0 A0), and every rule acts on that:
     * norms, clipping and Krum on the difference adapters, fedit on their
     * factors ([B̄ | −B0], [Ā; A0]), exact and svd on the concatenated
     * factors with the start's block added once, coefficient −Σ_k f_k. */
    const lora_set *start;
} aggregate_round_info;

typedef struct {
    int K;
    double *coef;       /* K: the member's factor in the sum (p_i; DP: w_i / E; 0 when
                           not selected); the coordinate rules report p_i but do not use it */
    double *norm;       /* K: ‖Δ_i‖_F before clipping */
    double *clip;       /* K: clipping factor c_i */
    int *selected;      /* K: 1 when the member's update entered the aggregate */
    double *krum_score; /* K: multi-Krum scores (0 for other rules) */
    double noise_sigma; /* per-coordinate noise std (DP), else 0 */
    int n_modules;
    int64_t n_coords; /* base weights changed */
    int64_t bytes_in; /* bytes of factors (A and B of every member) aggregated */
    update *factors;  /* aggregate_round of a low-rank merge: the update it applied to m
                         (from, to and round zero); NULL for a dense one */
} aggregate_report;

/* The round's change to m. A low-rank one comes back as *factors (from, to
 * and round zero) and m is untouched: apply it with update_apply. A dense
 * one is added to m in place and *factors is NULL. noise: the DP noise
 * source (noise_open) when dp is enabled, else unused (may be NULL).
 * global: with merge.mode "svd", if non-NULL, receives the rank-r global
 * adapter (alpha = r, so s = 1) whose B·A is exactly the update's for each
 * module. rep (may be NULL): filled (rep->factors stays NULL); free with
 * aggregate_report_free. On failure m may be partly updated (a low-rank
 * merge leaves it unchanged): aggregate on a copy of the base, as the
 * aggregator's version store does. */
int aggregate_compute(const policy *pol, model *m, const aggregate_member *members, int K,
                      const aggregate_round_info *info, noise_source *noise, lora_set **global,
                      aggregate_report *rep, update **factors);
/* The same in two steps, for a base that is only read (mapped) and written
 * out a tensor at a time: aggregate_prepare plans the round (norms,
 * clipping, weights, selection) and computes a low-rank change as *factors,
 * or, for a dense one, returns *dense, with which aggregate_dense_apply adds
 * each module's ΔW to that weight's values (out, in) as they are written —
 * the modules in the members' order (the order of the model's parameters),
 * since DP noise is drawn module after module. members and noise must live
 * until the last aggregate_dense_apply; free *dense with
 * aggregate_dense_free. The same inputs give the same bits either way. */
typedef struct aggregate_dense aggregate_dense;
int aggregate_prepare(const policy *pol, const model *m, const aggregate_member *members, int K,
                      const aggregate_round_info *info, noise_source *noise, lora_set **global,
                      aggregate_report *rep, update **factors, aggregate_dense **dense);
/* W (out, in) += the dense ΔW of weight `name`, the next module in order
 * (another name is refused). */
int aggregate_dense_apply(aggregate_dense *d, const char *name, real *W);
void aggregate_dense_free(aggregate_dense *d);

/* aggregate_compute, then a low-rank update applied: W' is in m either way,
 * and the update (NULL for a dense merge) in rep->factors when rep is given
 * (take it and set the field to NULL to keep it). */
int aggregate_round(const policy *pol, model *m, const aggregate_member *members, int K,
                    const aggregate_round_info *info, noise_source *noise, lora_set **global,
                    aggregate_report *rep);
void aggregate_report_free(aggregate_report *rep);

#endif
