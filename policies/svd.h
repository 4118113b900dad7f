/* svd — rank-r truncated SVD of a merged update, for the global adapter.
 *
 * The merged update of a module is either dense, D (out, in), or a product
 * of factors, B (out, R) · A (R, in) (the exact merge: R = Σ r_i). Randomized
 * subspace iteration (Halko, Martinsson, Tropp 2011, "Finding Structure with
 * Randomness", Algorithms 4.4 and 5.1) with ℓ = min(r + p, out, in) samples:
 *
 *   Y = M Ω (Ω (in, ℓ) Gaussian), Q = orth(Y); q times: Q = orth(M orth(Mᵀ Q));
 *   Z = Mᵀ Q = P T (thin QR);  M ≈ Q Qᵀ M = Q Tᵀ Pᵀ;  Tᵀ = U Σ Vᵀ (one-sided
 *   Jacobi, ℓ × ℓ);  M ≈ (Q U) Σ (P V)ᵀ, truncated to the r largest σ.
 *
 * M is applied only as products (M·X, Mᵀ·X), so the factored form never
 * becomes dense. When rank(M) <= ℓ (e.g. R <= ℓ) the range is captured
 * exactly and the result is the exact truncated SVD; otherwise its error is
 * within a small factor of the optimum σ_{r+1} (Eckart–Young), shrinking
 * with each power iteration. Orthonormalisation is classical Gram–Schmidt
 * applied twice ("twice is enough", Giraud et al. 2005), in double. The
 * random Ω comes from a seeded generator: the same seed, the same result. */
#ifndef FL_POLICIES_SVD_H
#define FL_POLICIES_SVD_H

#include "model/real.h"

#include <stdint.h>

typedef struct {
    int out, in;
    const real *D; /* dense (out, in), or NULL for the factored form: */
    int R;
    const real *B; /* (out, R) */
    const real *A; /* (R, in) */
} svd_operator;

/* Bout (out, r) and Aout (r, in) with Bout·Aout ≈ M, the singular values
 * split evenly (Bout = U_r Σ_r^½, Aout = Σ_r^½ V_rᵀ); sigma (r, may be NULL)
 * the singular values, largest first. Columns beyond min(ℓ, rank) are zero. */
int svd_truncated(const svd_operator *op, int r, int oversample, int power_iters, uint64_t seed,
                  real *Bout, real *Aout, double *sigma);

/* The SVD of a small n×n matrix M (row-major, double), one-sided Jacobi
 * (Hestenes 1958): M = U diag(s) Vᵀ, s descending. U, V (n, n) row-major. */
int svd_jacobi(int n, const double *M, double *U, double *s, double *V);

#endif
