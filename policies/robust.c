/* robust.c — coordinate-wise median and trimmed mean, multi-Krum, clipping
 * (robust.h). */
#include "policies/robust.h"

#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* GCC if-converts (and so vectorizes) the compare-exchange only when it may
 * assume float comparisons do not trap; nothing here enables FP traps. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#define ROBUST_TILE 64 /* coordinates sorted together, one vector lane each */

/* Rows i and l of a tile (L values each) put in order: row i gets the
 * smaller value of every column, row l the larger. Branch-free, so it runs
 * at vector speed whatever the data (a selection with data-dependent
 * branches ran 4x slower on random updates: mispredictions). */
static void compare_exchange(real *lo, real *hi, int L) {
#pragma omp simd
    for (int c = 0; c < L; c++) {
        real x = lo[c], y = hi[c];
        real mn = y < x ? y : x, mx = x < y ? y : x; /* this form if-converts; stores last */
        lo[c] = mn;
        hi[c] = mx;
    }
}

/* Sorts every column of an N×L tile (N a power of two) ascending: Batcher's
 * bitonic network (1968), N·log²N/4 compare-exchanges, each on whole rows. */
static void sort_columns(real *t, int N, int L) {
    for (int k = 2; k <= N; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1)
            for (int i = 0; i < N; i++) {
                int l = i ^ j;
                if (l <= i) continue;
                if ((i & k) == 0)
                    compare_exchange(t + i * ROBUST_TILE, t + l * ROBUST_TILE, L);
                else
                    compare_exchange(t + l * ROBUST_TILE, t + i * ROBUST_TILE, L);
            }
}

/* The order statistics of each coordinate, a tile of coordinates at a time:
 * the K values are copied into a tile padded with +inf up to a power of two,
 * sorted column-wise, and reduced (median, or the mean of ranks
 * [trim, K − trim)). */
static void coordinate_rule(int K, int64_t n, const real *x, int64_t stride, int trim, int median,
                            real *out) {
    int N = 1;
    while (N < K) N <<= 1;
#pragma omp parallel
    {
        real *t = malloc((size_t)N * ROBUST_TILE * sizeof *t);
#pragma omp for schedule(static)
        for (int64_t j0 = 0; j0 < n; j0 += ROBUST_TILE) {
            if (!t) continue;
            int L = n - j0 < ROBUST_TILE ? (int)(n - j0) : ROBUST_TILE;
            for (int k = 0; k < K; k++)
                memcpy(t + k * ROBUST_TILE, x + k * stride + j0, (size_t)L * sizeof *t);
            for (int k = K; k < N; k++)
                for (int c = 0; c < L; c++) t[k * ROBUST_TILE + c] = INFINITY;
            sort_columns(t, N, L);
            for (int c = 0; c < L; c++) {
                double v;
                if (median) {
                    v = t[(K / 2) * ROBUST_TILE + c];
                    if (K % 2 == 0) v = 0.5 * ((double)t[(K / 2 - 1) * ROBUST_TILE + c] + v);
                } else {
                    double sum = 0;
                    for (int k = trim; k < K - trim; k++) sum += t[k * ROBUST_TILE + c];
                    v = sum / (K - 2 * trim);
                }
                out[j0 + c] = (real)v;
            }
        }
        free(t);
    }
}

void robust_median(int K, int64_t n, const real *x, int64_t stride, real *out) {
    coordinate_rule(K, n, x, stride, 0, 1, out);
}

void robust_trimmed_mean(int K, int64_t n, const real *x, int64_t stride, int trim, real *out) {
    coordinate_rule(K, n, x, stride, trim, 0, out);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int robust_krum_select(int K, const double *d2, int f, int m, int *selected, double *score) {
    if (f < 0 || K < 2 * f + 3)
        return err_set("multi-Krum with f = %d needs at least 2f + 3 = %d members, got %d", f,
                       2 * f + 3, K);
    if (m < 1 || m > K) return err_set("multi-Krum: m = %d must be in [1, %d]", m, K);
    double *row = malloc((size_t)K * sizeof *row);
    double *s = malloc((size_t)K * sizeof *s);
    if (!row || !s) {
        free(row);
        free(s);
        return err_set("multi-Krum: out of memory");
    }
    int nn = K - f - 2; /* neighbours counted per member */
    for (int i = 0; i < K; i++) {
        int c = 0;
        for (int j = 0; j < K; j++)
            if (j != i) row[c++] = d2[(int64_t)i * K + j];
        qsort(row, (size_t)c, sizeof *row, cmp_double);
        double sum = 0;
        for (int j = 0; j < nn; j++) sum += row[j];
        s[i] = sum;
        if (score) score[i] = sum;
        selected[i] = 0;
    }
    for (int pick = 0; pick < m; pick++) {
        int best = -1;
        for (int i = 0; i < K; i++)
            if (!selected[i] && (best < 0 || s[i] < s[best])) best = i;
        selected[best] = 1;
    }
    free(row);
    free(s);
    return 0;
}

double robust_clip_factor(double norm, double C) {
    if (C <= 0 || norm <= C) return 1.0;
    return C / norm;
}
