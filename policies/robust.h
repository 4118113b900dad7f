/* robust — aggregation rules that a few bad updates cannot drag far.
 *
 * They act on the dense per-module updates Δ_i = s_i·B_i·A_i (as if every
 * member's update were the full weight change), one coordinate or one
 * member-to-member distance at a time:
 *
 *   median        coordinate-wise median (Yin et al. 2018, "Byzantine-Robust
 *                 Distributed Learning: Towards Optimal Statistical Rates");
 *                 for an even K, the mean of the two middle values;
 *   trimmed mean  coordinate-wise: drop the ⌊βK⌋ largest and ⌊βK⌋ smallest
 *                 values, average the rest (Yin et al. 2018);
 *   multi-Krum    Blanchard et al. 2017, "Machine Learning with Adversaries:
 *                 Byzantine Tolerant Gradient Descent": member i's score is
 *                 Σ of its K − f − 2 smallest squared distances ‖Δ_i − Δ_j‖²
 *                 (whole update, all modules); the m lowest scores are
 *                 selected (El Mhamdi et al. 2018's multi-Krum), ties to the
 *                 lower index;
 *   clipping      Δ_i · min(1, C / ‖Δ_i‖) (whole update), before any rule.
 *
 * The coordinate rules are unweighted (the estimators' guarantees are for
 * unweighted order statistics); the mean and the average of the Krum
 * selection use the policy weights. */
#ifndef FL_POLICIES_ROBUST_H
#define FL_POLICIES_ROBUST_H

#include "model/real.h"

#include <stdint.h>

/* out[j] = rule over the K values x[k·stride + j], for j < n (OpenMP over
 * j). The values are not changed. */
void robust_median(int K, int64_t n, const real *x, int64_t stride, real *out);
/* trim = ⌊βK⌋ values dropped from each end (2·trim < K). */
void robust_trimmed_mean(int K, int64_t n, const real *x, int64_t stride, int trim, real *out);

/* Multi-Krum selection from the K×K matrix of squared distances d2
 * (row-major, symmetric): selected[i] = 1 for the m members with the lowest
 * scores, score[i] (may be NULL) their Krum scores. Needs K >= 2f + 3 and
 * 1 <= m <= K. */
int robust_krum_select(int K, const double *d2, int f, int m, int *selected, double *score);

/* The clipping factor min(1, C / norm); 1 when C is 0 (off). */
double robust_clip_factor(double norm, double C);

#endif
