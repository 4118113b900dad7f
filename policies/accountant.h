/* accountant — Rényi-DP accounting for DP-FedAvg's rounds.
 *
 * Each round is one run of the sampled Gaussian mechanism: every member is
 * in the round with probability q (rounds.fraction, Poisson sampling), its
 * clipped update enters a sum of sensitivity C, and noise N(0, (zC)²) is
 * added (z = dp.noise_multiplier). The unit of privacy is a whole member
 * (a university's data set), not one example.
 *
 * RDP of one round at order α (Mironov 2017, "Rényi Differential Privacy";
 * Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled
 * Gaussian Mechanism", §3.3):  ε_α = log(A_α) / (α − 1), with
 *   integer α:    A_α = Σ_{i=0..α} C(α,i) (1−q)^{α−i} q^i exp((i² − i) / (2z²))
 *   fractional α: the two-sided series of MTZ19 §3.3 with erfc terms, each
 *                 term added by magnitude (|C(α,i)| from lgamma, as
 *                 dp-accounting 0.6 does: an upper bound), until both terms
 *                 decrease and fall e^30 below the total (1000 terms at
 *                 most, else the order is dropped as +inf),
 * q = 1 gives α / (2z²). Rounds compose by adding ε_α. The conversion to
 * (ε, δ) is Balle et al. 2020 (Theorem 21), as Google's dp-accounting and
 * Opacus compute it:  ε = min_α  ε_α + log1p(−1/α) − (log δ + log α)/(α − 1),
 * 0 when δ² + expm1(−ε_α) > 0. This code follows those libraries' formulas
 * (log-space sums, the same erfc asymptotics), and tests/policies checks it
 * against values dp-accounting computed (tests/fixtures/dp/). */
#ifndef FL_POLICIES_ACCOUNTANT_H
#define FL_POLICIES_ACCOUNTANT_H

#include <stdint.h>

#define DP_ORDERS_MAX 192

typedef struct {
    int n_orders;
    double orders[DP_ORDERS_MAX];
    double rdp[DP_ORDERS_MAX]; /* ε_α of everything accounted so far */
    int64_t rounds;
} dp_accountant;

/* Empty, with dp-accounting's default orders: 1.1, 1.2, …, 10.9, 11, 12, …,
 * 63, 128, 256, 512, 1024. */
void dp_accountant_init(dp_accountant *a);
/* Empty, with the given orders (each > 1, finite; at most DP_ORDERS_MAX). */
int dp_accountant_init_orders(dp_accountant *a, const double *orders, int n);

/* RDP of one sampled Gaussian step at order alpha (may be +inf). */
double dp_rdp_sgm(double q, double z, double alpha);
/* Accounts `steps` rounds of the sampled Gaussian with rate q and noise multiplier z. */
int dp_accountant_add(dp_accountant *a, double q, double z, int64_t steps);
/* ε at δ of what is accounted (0 when nothing is); *order (may be NULL) the best α. */
double dp_epsilon(const dp_accountant *a, double delta, double *order);
/* ε at δ of `steps` rounds with (q, z) alone, with the default orders. */
double dp_epsilon_for(double q, double z, int64_t steps, double delta);
/* 1 when one more round with (q, z) would take ε at δ above budget, else 0;
 * *eps_next (may be NULL) the ε that round would reach. */
int dp_would_exceed(const dp_accountant *a, double q, double z, double delta, double budget,
                    double *eps_next);

#endif
