/* test_svd — the small Jacobi SVD on a hand case, and the randomized
 * truncated SVD on matrices with a known spectrum: exact when the rank fits
 * the samples, within 1 % of the Eckart–Young optimum otherwise, dense and
 * factored alike, and reproducible for a seed. */
#include "util/rng.h"
#include "policies/svd.h"
#include "tests/check.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* An orthonormal n×k basis (columns), row-major, from Gram–Schmidt on random vectors. */
static void random_orthonormal(int n, int k, uint64_t seed, double *Q) {
    for (int j = 0; j < k; j++) {
        for (int i = 0; i < n; i++) {
            double z0, z1;
            rng_box_muller(rng_at(seed, (uint64_t)j, 0, (uint64_t)i),
                           rng_at(seed, (uint64_t)j, 1, (uint64_t)i), &z0, &z1);
            Q[i * k + j] = z0;
        }
        for (int pass = 0; pass < 2; pass++)
            for (int p = 0; p < j; p++) {
                double d = 0;
                for (int i = 0; i < n; i++) d += Q[i * k + p] * Q[i * k + j];
                for (int i = 0; i < n; i++) Q[i * k + j] -= d * Q[i * k + p];
            }
        double norm = 0;
        for (int i = 0; i < n; i++) norm += Q[i * k + j] * Q[i * k + j];
        for (int i = 0; i < n; i++) Q[i * k + j] /= sqrt(norm);
    }
}

/* M (out, in) = U diag(s) Vᵀ with random orthonormal U (out, k), V (in, k). */
static void make_matrix(int out, int in, int k, const double *s, uint64_t seed, real *M) {
    double *U = malloc((size_t)out * k * sizeof *U), *V = malloc((size_t)in * k * sizeof *V);
    random_orthonormal(out, k, seed, U);
    random_orthonormal(in, k, seed + 1, V);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double sum = 0;
            for (int j = 0; j < k; j++) sum += U[o * k + j] * s[j] * V[i * k + j];
            M[o * in + i] = (real)sum;
        }
    free(U);
    free(V);
}

/* ‖M − B·A‖_F² */
static double residual(int out, int in, int r, const real *M, const real *B, const real *A) {
    double e = 0;
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double sum = 0;
            for (int j = 0; j < r; j++) sum += (double)B[o * r + j] * A[j * in + i];
            e += (M[o * in + i] - sum) * (M[o * in + i] - sum);
        }
    return e;
}

static void test_jacobi(void) {
    /* [[3, 0], [4, 5]]: singular values √45 and √5. */
    double M[4] = {3, 0, 4, 5}, U[4], s[2], V[4];
    CHECK_OK(svd_jacobi(2, M, U, s, V));
    CHECK_NEAR(s[0], sqrt(45), 1e-12);
    CHECK_NEAR(s[1], sqrt(5), 1e-12);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            double back = U[i * 2 + 0] * s[0] * V[j * 2 + 0] + U[i * 2 + 1] * s[1] * V[j * 2 + 1];
            CHECK_NEAR(back, M[i * 2 + j], 1e-12);
        }
}

static void test_truncated(void) {
    enum { OUT = 48, IN = 40 };
    real *M = malloc(OUT * IN * sizeof *M), *B = malloc(OUT * 8 * sizeof *B),
         *A = malloc(8 * IN * sizeof *A), *B2 = malloc(OUT * 8 * sizeof *B2),
         *A2 = malloc(8 * IN * sizeof *A2);
    double sigma[8];
    /* Rank 5 with r = 3 + oversample 8: the range is sampled exactly. */
    const double s5[5] = {10, 6, 3, 1, 0.5};
    make_matrix(OUT, IN, 5, s5, 1, M);
    svd_operator dense = {.out = OUT, .in = IN, .D = M};
    CHECK_OK(svd_truncated(&dense, 3, 8, 0, 42, B, A, sigma));
    for (int j = 0; j < 3; j++) CHECK_NEAR(sigma[j], s5[j], 1e-5 * s5[0]);
    double opt = 1 * 1 + 0.5 * 0.5;
    CHECK_NEAR(residual(OUT, IN, 3, M, B, A), opt, 1e-4);
    /* r above the rank: exact reconstruction, the extra columns zero-ish. */
    CHECK_OK(svd_truncated(&dense, 8, 8, 0, 42, B, A, sigma));
    CHECK(residual(OUT, IN, 8, M, B, A) < 1e-8);
    CHECK(sigma[5] < 1e-5);

    /* Full rank, decaying spectrum: within 1 % of the optimum with power iterations. */
    double s40[40], tail = 0;
    for (int j = 0; j < 40; j++) s40[j] = pow(0.8, j);
    for (int j = 4; j < 40; j++) tail += s40[j] * s40[j];
    make_matrix(OUT, IN, 40, s40, 7, M);
    CHECK_OK(svd_truncated(&dense, 4, 8, 4, 42, B, A, sigma));
    double e = residual(OUT, IN, 4, M, B, A);
    CHECK_MSG(e <= 1.01 * tail, "rank-4 error² %g, optimum %g", e, tail);
    /* The same seed, the same bytes; and another seed still near-optimal. */
    CHECK_OK(svd_truncated(&dense, 4, 8, 4, 42, B2, A2, NULL));
    CHECK(memcmp(B, B2, OUT * 4 * sizeof *B) == 0 && memcmp(A, A2, 4 * IN * sizeof *A) == 0);
    CHECK_OK(svd_truncated(&dense, 4, 8, 4, 43, B2, A2, NULL));
    CHECK(residual(OUT, IN, 4, M, B2, A2) <= 1.01 * tail);

    /* Factored: M = Bf (out, 6) · Af (6, in), never formed by svd_truncated. */
    real *Bf = malloc(OUT * 6 * sizeof *Bf), *Af = malloc(6 * IN * sizeof *Af);
    for (int j = 0; j < OUT * 6; j++) Bf[j] = (real)(rng_unit(rng_at(9, 1, 0, (uint64_t)j)) - 0.5);
    for (int j = 0; j < 6 * IN; j++) Af[j] = (real)(rng_unit(rng_at(9, 2, 0, (uint64_t)j)) - 0.5);
    for (int o = 0; o < OUT; o++)
        for (int i = 0; i < IN; i++) {
            double sum = 0;
            for (int j = 0; j < 6; j++) sum += (double)Bf[o * 6 + j] * Af[j * IN + i];
            M[o * IN + i] = (real)sum;
        }
    svd_operator fac = {.out = OUT, .in = IN, .R = 6, .B = Bf, .A = Af};
    CHECK_OK(svd_truncated(&fac, 6, 8, 0, 1, B, A, sigma));
    double norm = residual(OUT, IN, 0, M, B, A);
    CHECK_MSG(residual(OUT, IN, 6, M, B, A) < 1e-10 * norm, "factored full rank: %g",
              residual(OUT, IN, 6, M, B, A));
    /* Truncated to 2: the optimum is σ_3² + … + σ_6² (σ from the dense SVD). */
    CHECK_OK(svd_truncated(&dense, 6, 8, 2, 1, B2, A2, sigma));
    double tail6 = 0;
    for (int j = 2; j < 6; j++) tail6 += sigma[j] * sigma[j];
    CHECK_OK(svd_truncated(&fac, 2, 8, 0, 1, B, A, NULL));
    CHECK_NEAR(residual(OUT, IN, 2, M, B, A), tail6, 1e-4 * tail6);
    CHECK_FAILS_WITH(svd_truncated(&fac, 0, 8, 0, 1, B, A, NULL), "bad sizes");
    free(M);
    free(B);
    free(A);
    free(B2);
    free(A2);
    free(Bf);
    free(Af);
}

int main(void) {
    test_jacobi();
    test_truncated();
    return check_finish();
}
