/* svd.c — randomized truncated SVD and a small Jacobi SVD (svd.h). */
#include "policies/svd.h"

#include "model/cpu/cpu.h"
#include "util/rng.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int svd_jacobi(int n, const double *M, double *U, double *s, double *V) {
    memcpy(U, M, (size_t)n * n * sizeof *U);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) V[i * n + j] = i == j;
    /* Rotate column pairs of U (and V alike) until every pair is orthogonal
     * to working precision; then U's column norms are the singular values. */
    for (int sweep = 0; sweep < 100; sweep++) {
        int rotated = 0;
        for (int p = 0; p < n - 1; p++)
            for (int q = p + 1; q < n; q++) {
                double a = 0, b = 0, g = 0;
                for (int i = 0; i < n; i++) {
                    double up = U[i * n + p], uq = U[i * n + q];
                    a += up * up;
                    b += uq * uq;
                    g += up * uq;
                }
                if (g == 0 || fabs(g) <= 1e-15 * sqrt(a * b)) continue;
                rotated = 1;
                double zeta = (b - a) / (2 * g);
                double t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                double c = 1 / sqrt(1 + t * t), sn = c * t;
                for (int i = 0; i < n; i++) {
                    double up = U[i * n + p], uq = U[i * n + q];
                    U[i * n + p] = c * up - sn * uq;
                    U[i * n + q] = sn * up + c * uq;
                    double vp = V[i * n + p], vq = V[i * n + q];
                    V[i * n + p] = c * vp - sn * vq;
                    V[i * n + q] = sn * vp + c * vq;
                }
            }
        if (!rotated) break;
    }
    for (int j = 0; j < n; j++) {
        double norm = 0;
        for (int i = 0; i < n; i++) norm += U[i * n + j] * U[i * n + j];
        s[j] = sqrt(norm);
        for (int i = 0; s[j] > 0 && i < n; i++) U[i * n + j] /= s[j];
    }
    /* Descending order (selection sort on columns; n is small). */
    for (int j = 0; j < n; j++) {
        int best = j;
        for (int k = j + 1; k < n; k++)
            if (s[k] > s[best]) best = k;
        if (best == j) continue;
        double t = s[j];
        s[j] = s[best];
        s[best] = t;
        for (int i = 0; i < n; i++) {
            t = U[i * n + j];
            U[i * n + j] = U[i * n + best];
            U[i * n + best] = t;
            t = V[i * n + j];
            V[i * n + j] = V[i * n + best];
            V[i * n + best] = t;
        }
    }
    return 0;
}

/* Y (n, l) ← an orthonormal basis of its columns (CGS2 in double); a column
 * that is (numerically) in the span of the earlier ones becomes zero. R (l,
 * l, may be NULL) gets the upper-triangular factor, Y_in = Y_out · R. */
static int orth(real *Y, int n, int l, double *R) {
    double *c = malloc((size_t)n * l * sizeof *c); /* column-major copy: column j at c + j·n */
    if (!c) return err_set("svd: out of memory (%d x %d)", n, l);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < l; j++) c[(int64_t)j * n + i] = Y[(int64_t)i * l + j];
    if (R) memset(R, 0, (size_t)l * l * sizeof *R);
    for (int j = 0; j < l; j++) {
        double *cj = c + (int64_t)j * n, before = 0, after = 0;
        for (int i = 0; i < n; i++) before += cj[i] * cj[i];
        for (int pass = 0; pass < 2; pass++)
            for (int k = 0; k < j; k++) {
                const double *ck = c + (int64_t)k * n;
                double d = 0;
                for (int i = 0; i < n; i++) d += ck[i] * cj[i];
                for (int i = 0; i < n; i++) cj[i] -= d * ck[i];
                if (R) R[k * l + j] += d;
            }
        for (int i = 0; i < n; i++) after += cj[i] * cj[i];
        after = sqrt(after);
        double scale = after > 1e-10 * sqrt(before) && after > 0 ? 1 / after : 0;
        for (int i = 0; i < n; i++) cj[i] *= scale;
        if (R) R[j * l + j] = scale ? after : 0;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < l; j++) Y[(int64_t)i * l + j] = (real)c[(int64_t)j * n + i];
    free(c);
    return 0;
}

/* Y (out, l) = M X (X (in, l)); tmp holds (R, l). */
static void apply(const svd_operator *op, const real *X, real *Y, int l, real *tmp) {
    if (op->D) {
        cpu_gemm(0, 0, op->out, l, op->in, 1, op->D, op->in, X, l, 0, Y, l);
        return;
    }
    cpu_gemm(0, 0, op->R, l, op->in, 1, op->A, op->in, X, l, 0, tmp, l);
    cpu_gemm(0, 0, op->out, l, op->R, 1, op->B, op->R, tmp, l, 0, Y, l);
}

/* Z (in, l) = Mᵀ X (X (out, l)). */
static void apply_t(const svd_operator *op, const real *X, real *Z, int l, real *tmp) {
    if (op->D) {
        cpu_gemm(1, 0, op->in, l, op->out, 1, op->D, op->in, X, l, 0, Z, l);
        return;
    }
    cpu_gemm(1, 0, op->R, l, op->out, 1, op->B, op->R, X, l, 0, tmp, l);
    cpu_gemm(1, 0, op->in, l, op->R, 1, op->A, op->in, tmp, l, 0, Z, l);
}

int svd_truncated(const svd_operator *op, int r, int oversample, int power_iters, uint64_t seed,
                  real *Bout, real *Aout, double *sigma) {
    int out = op->out, in = op->in;
    if (r < 1 || out < 1 || in < 1 || oversample < 0 || power_iters < 0)
        return err_set("svd: bad sizes (out %d, in %d, rank %d)", out, in, r);
    memset(Bout, 0, (size_t)out * r * sizeof *Bout);
    memset(Aout, 0, (size_t)r * in * sizeof *Aout);
    if (sigma)
        for (int k = 0; k < r; k++) sigma[k] = 0;
    int64_t l64 = (int64_t)r + oversample;
    if (l64 > out) l64 = out;
    if (l64 > in) l64 = in;
    if (!op->D && l64 > op->R) l64 = op->R; /* rank <= R: R samples capture it exactly */
    int l = (int)l64;
    if (l == 0) return 0;
    int tmp_rows = op->D ? 1 : op->R;
    real *Om = malloc((size_t)in * l * sizeof *Om); /* Ω, then Z = Mᵀ Q, then P */
    real *Y = malloc((size_t)out * l * sizeof *Y);  /* Y, then Q */
    real *tmp = malloc((size_t)tmp_rows * l * sizeof *tmp);
    double *T = malloc((size_t)l * l * sizeof *T), *Mt = malloc((size_t)l * l * sizeof *Mt);
    double *U = malloc((size_t)l * l * sizeof *U), *V = malloc((size_t)l * l * sizeof *V);
    double *s = malloc((size_t)l * sizeof *s);
    real *Us = malloc((size_t)l * r * sizeof *Us), *Vs = malloc((size_t)r * l * sizeof *Vs);
    int rc = 0;
    if (!Om || !Y || !tmp || !T || !Mt || !U || !V || !s || !Us || !Vs)
        rc = err_set("svd: out of memory (%d x %d, %d samples)", out, in, l);
    for (int64_t j = 0; rc == 0 && j < (int64_t)in * l; j += 2) {
        double z0, z1;
        rng_box_muller(rng_at(seed, 1, 0, (uint64_t)j), rng_at(seed, 2, 0, (uint64_t)j), &z0, &z1);
        Om[j] = (real)z0;
        if (j + 1 < (int64_t)in * l) Om[j + 1] = (real)z1;
    }
    if (rc == 0) {
        apply(op, Om, Y, l, tmp);
        rc = orth(Y, out, l, NULL);
    }
    for (int it = 0; rc == 0 && it < power_iters; it++) {
        apply_t(op, Y, Om, l, tmp);
        rc = orth(Om, in, l, NULL);
        if (rc == 0) {
            apply(op, Om, Y, l, tmp);
            rc = orth(Y, out, l, NULL);
        }
    }
    if (rc == 0) {
        apply_t(op, Y, Om, l, tmp); /* Z = Mᵀ Q = P T */
        rc = orth(Om, in, l, T);
    }
    if (rc == 0) {
        /* M ≈ Q Tᵀ Pᵀ and Tᵀ = U Σ Vᵀ */
        for (int i = 0; i < l; i++)
            for (int j = 0; j < l; j++) Mt[i * l + j] = T[j * l + i];
        svd_jacobi(l, Mt, U, s, V);
        int k_max = r < l ? r : l;
        memset(Us, 0, (size_t)l * r * sizeof *Us);
        memset(Vs, 0, (size_t)r * l * sizeof *Vs);
        for (int k = 0; k < k_max; k++) {
            double h = sqrt(s[k]);
            for (int i = 0; i < l; i++) {
                Us[i * r + k] = (real)(U[i * l + k] * h); /* (ℓ, r) */
                Vs[k * l + i] = (real)(V[i * l + k] * h); /* (r, ℓ) */
            }
            if (sigma) sigma[k] = s[k];
        }
        cpu_gemm(0, 0, out, r, l, 1, Y, l, Us, r, 0, Bout, r);  /* Q U Σ^½ */
        cpu_gemm(0, 1, r, in, l, 1, Vs, l, Om, l, 0, Aout, in); /* Σ^½ Vᵀ Pᵀ */
    }
    free(Om);
    free(Y);
    free(tmp);
    free(T);
    free(Mt);
    free(U);
    free(V);
    free(s);
    free(Us);
    free(Vs);
    return rc;
}
