/* lora/update_kernel.h: every path of the merge kernel gives the bits of
 * update.h's definition.
 *
 *   - each path this CPU runs (fma, muladd, avx2, avx512; auto) gives, bit
 *     for bit, what a scalar loop written here gives — acc = W, then
 *     acc = fma(b, a, acc) for k = 0..R-1, W' = (float)acc — on awkward
 *     shapes: one row or column, widths that are no multiple of any vector
 *     or tile, R = 1, odd R, R = 300 (several panels of A), rows apart by
 *     more than their length, unaligned, with 1, 2 and 3 threads; and never
 *     writes between rows or past the last one;
 *   - the same loop with a separate multiply and add (this file is compiled
 *     with -ffp-contract=off) gives the same bits, also on factors whose
 *     exponents span the whole float range, subnormals included: the
 *     product of two floats is exact in double (the argument of update.h);
 *   - against a double-double sum (error ~2⁻¹⁰⁰ of the terms), every
 *     element is within γ_R · (|W| + Σ|b·a|) + one rounding to float of the
 *     exact value, and is the correctly rounded float wherever that bound
 *     does not reach a rounding boundary — including sums that cancel to
 *     a thousandth of their terms;
 *   - refusals: a path the CPU lacks, bad sizes and strides (W unchanged). */
#include "lora/update.h"
#include "lora/update_kernel.h"
#include "tests/check.h"
#include "util/err.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double uniform(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0 - 0.5;
}

/* A float with a random sign, significand and binary exponent in [lo, hi]
 * (below -126: subnormal). */
static float wide(int lo, int hi) {
    int e = lo + (int)((uniform() + 0.5) * (hi - lo + 1));
    if (e > hi) e = hi;
    return ldexpf((float)(1 + uniform()), e);
}

typedef struct {
    int rows, in, R;
    int64_t ldw, ldb, lda;
    float *W, *B, *A; /* W and B with a gap after each row, A too */
    float *w_mem, *b_mem, *a_mem;
} problem;

enum { GAP_SENTINEL = 0x7fc0dead }; /* a NaN: never written by the kernel */

static float sentinel(void) {
    union {
        uint32_t u;
        float f;
    } x = {GAP_SENTINEL};
    return x.f;
}

/* Rows `pad` elements longer than the matrix, starting `shift` floats past
 * an aligned allocation; the gaps hold a sentinel. */
static int problem_make(problem *p, int rows, int in, int R, int pad, int shift) {
    p->rows = rows, p->in = in, p->R = R;
    p->ldw = in + pad, p->ldb = R + pad, p->lda = in + pad;
    size_t nw = (size_t)(rows + 1) * (size_t)p->ldw, nb = (size_t)rows * (size_t)p->ldb,
           na = (size_t)R * (size_t)p->lda;
    p->w_mem = malloc((nw + 16) * sizeof(float));
    p->b_mem = malloc((nb + 16) * sizeof(float));
    p->a_mem = malloc((na + 16) * sizeof(float));
    if (!p->w_mem || !p->b_mem || !p->a_mem) return -1;
    p->W = p->w_mem + shift, p->B = p->b_mem + shift, p->A = p->a_mem + shift;
    for (size_t i = 0; i < nw; i++) p->W[i] = sentinel();
    for (size_t i = 0; i < nb; i++) p->B[i] = sentinel();
    for (size_t i = 0; i < na; i++) p->A[i] = sentinel();
    return 0;
}

static void problem_free(problem *p) {
    free(p->w_mem);
    free(p->b_mem);
    free(p->a_mem);
}

#define WAT(p, i, j) (p)->W[(int64_t)(i) * (p)->ldw + (j)]
#define BAT(p, i, k) (p)->B[(int64_t)(i) * (p)->ldb + (k)]
#define AAT(p, k, j) (p)->A[(int64_t)(k) * (p)->lda + (j)]

/* Typical LoRA magnitudes: W ~ 0.05, B·A ~ 1e-3. */
static void fill_typical(problem *p) {
    for (int i = 0; i < p->rows; i++)
        for (int j = 0; j < p->in; j++) WAT(p, i, j) = (float)(0.1 * uniform());
    for (int i = 0; i < p->rows; i++)
        for (int k = 0; k < p->R; k++) BAT(p, i, k) = (float)(0.02 * uniform());
    for (int k = 0; k < p->R; k++)
        for (int j = 0; j < p->in; j++) AAT(p, k, j) = (float)(0.1 * uniform());
}

/* Exponents across the float range (products from 2^-298 to 2^250 would
 * not all be exact in a float: they are in double). */
static void fill_wide(problem *p) {
    for (int i = 0; i < p->rows; i++)
        for (int j = 0; j < p->in; j++) WAT(p, i, j) = wide(-140, 100);
    for (int i = 0; i < p->rows; i++)
        for (int k = 0; k < p->R; k++) BAT(p, i, k) = wide(-149, 60);
    for (int k = 0; k < p->R; k++)
        for (int j = 0; j < p->in; j++) AAT(p, k, j) = wide(-149, 60);
}

/* Terms of 2^36 to 2^42 whose second half cancels the first exactly
 * (B[i][h + k] = -B[i][k], A[h + k] = A[k], h = R/2; an odd R's last term
 * ~1e-3), W ~ 0.1: the exact result is about W, and what a double sum makes
 * of it is W plus the rounding errors of its partial sums, up to ~2^-10,
 * which depend on the order of every operation (the terms are of one size,
 * so no single one sets the grid the sum is rounded to). Any other order,
 * pairing or partial sum shows in most elements' bits. */
static void fill_order_sensitive(problem *p) {
    const int h = p->R / 2;
    for (int i = 0; i < p->rows; i++)
        for (int j = 0; j < p->in; j++) WAT(p, i, j) = (float)(0.2 * uniform());
    for (int i = 0; i < p->rows; i++)
        for (int k = 0; k < p->R; k++)
            BAT(p, i, k) = k < h ? wide(18, 20) : k < 2 * h ? -BAT(p, i, k - h) : (float)uniform();
    for (int k = 0; k < p->R; k++)
        for (int j = 0; j < p->in; j++)
            AAT(p, k, j) = k < h ? wide(18, 20) : k < 2 * h ? AAT(p, k - h, j) : 0.01f;
}

/* W = -(Σ_k b·a) rounded to float plus a small remainder: the result is
 * about a thousandth of the terms, so the final rounding's relative error
 * would be large if anything before it had been lost. */
static void fill_cancelling(problem *p) {
    fill_typical(p);
    for (int i = 0; i < p->rows; i++)
        for (int j = 0; j < p->in; j++) {
            double s = 0;
            for (int k = 0; k < p->R; k++) s += (double)BAT(p, i, k) * (double)AAT(p, k, j);
            WAT(p, i, j) = (float)(-s * (1 + 1e-3 * uniform()));
        }
}

/* The definition, one element at a time: fused (1), a multiply then an add
 * (0), or fused with k from R-1 down to 0 (-1: another order, which must
 * give other bits on order-sensitive data). */
static float *reference(const problem *p, int fused) {
    float *out = malloc((size_t)p->rows * (size_t)(p->in ? p->in : 1) * sizeof *out);
    if (!out) return NULL;
    for (int i = 0; i < p->rows; i++)
        for (int j = 0; j < p->in; j++) {
            double acc = (double)WAT(p, i, j);
            for (int kk = 0; kk < p->R; kk++) {
                const int k = fused < 0 ? p->R - 1 - kk : kk;
                double b = (double)BAT(p, i, k), a = (double)AAT(p, k, j);
                acc = fused ? fma(b, a, acc) : acc + b * a;
            }
            out[(int64_t)i * p->in + j] = (float)acc;
        }
    return out;
}

/* Applies path `path` to a copy of p's W and compares with want; checks
 * that the gaps between and after the rows keep their sentinel. */
static void check_path(const problem *p, const float *w0, const float *want, int path, int threads,
                       const char *what) {
    size_t nw = (size_t)(p->rows + 1) * (size_t)p->ldw;
    memcpy(p->W, w0, nw * sizeof(float));
    omp_set_num_threads(threads);
    int rc = update_kernel_apply((update_kernel_path)path, p->W, p->ldw, p->B, p->ldb, p->A, p->lda,
                                 p->rows, p->R, p->in);
    CHECK_MSG(rc == 0, "%s: %s", what, err_msg());
    int64_t diff = 0, first = -1, gaps = 0;
    for (int i = 0; i <= p->rows; i++)
        for (int64_t j = 0; j < p->ldw; j++) {
            const float *got = &WAT(p, i, j);
            if (i < p->rows && j < p->in) {
                if (memcmp(got, &want[(int64_t)i * p->in + j], sizeof *got) != 0) {
                    if (first < 0) first = (int64_t)i * p->in + j;
                    diff++;
                }
            } else {
                gaps += memcmp(got, &w0[(int64_t)i * p->ldw + j], sizeof *got) != 0;
            }
        }
    CHECK_MSG(diff == 0,
              "%s, path %s, %d thread(s): %lld of %lld elements differ from the scalar fma() loop "
              "(first: %lld, %.9g vs %.9g)",
              what, update_kernel_name((update_kernel_path)path), threads, (long long)diff,
              (long long)p->rows * p->in, (long long)first,
              first >= 0 ? (double)WAT(p, first / p->in, first % p->in) : 0.0,
              first >= 0 ? (double)want[first] : 0.0);
    CHECK_MSG(gaps == 0, "%s, path %s: %lld elements written outside W", what,
              update_kernel_name((update_kernel_path)path), (long long)gaps);
}

/* ---- every path, every shape, every thread count -------------------------------- */

typedef struct {
    int rows, in, R, pad, shift;
} case_shape;

static const case_shape shapes[] = {
    {1, 1, 1, 0, 0},       /* the smallest */
    {6, 32, 1, 0, 0},      /* exactly one AVX-512 tile, R = 1 */
    {4, 8, 3, 0, 1},       /* one portable tile, unaligned */
    {7, 13, 5, 3, 1},      /* rows and columns past a tile, odd R, strided, unaligned */
    {13, 37, 2, 1, 3},     /* the same, R even */
    {25, 100, 300, 0, 0},  /* R = 300 */
    {50, 257, 17, 5, 2},   /* one column past whole vectors */
    {64, 64, 48, 0, 0},    /* whole tiles, a typical rank */
    {3, 1000, 7, 0, 1},    /* fewer rows than one tile */
    {101, 3, 9, 2, 0},     /* fewer columns than one vector */
    {31, 529, 300, 11, 1}, /* several panels of A, every edge */
    {9, 3000, 40, 1, 1},   /* several panels at a small rank */
};

static void check_paths(void) {
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const case_shape *s = &shapes[c];
        for (int fill = 0; fill < 3; fill++) {
            problem p;
            CHECK(problem_make(&p, s->rows, s->in, s->R, s->pad, s->shift) == 0);
            static const char *const fills[3] = {"typical", "wide exponents", "order-sensitive"};
            if (fill == 0)
                fill_typical(&p);
            else if (fill == 1)
                fill_wide(&p);
            else
                fill_order_sensitive(&p);
            size_t nw = (size_t)(p.rows + 1) * (size_t)p.ldw;
            float *w0 = malloc(nw * sizeof *w0), *want = reference(&p, 1),
                  *separate = reference(&p, 0);
            CHECK(w0 && want && separate);
            if (!w0 || !want || !separate) return;
            memcpy(w0, p.W, nw * sizeof *w0);
            char what[128];
            snprintf(what, sizeof what, "(%d rows, %d in, R %d, pad %d, shift %d, %s)", s->rows,
                     s->in, s->R, s->pad, s->shift, fills[fill]);
            /* The fused and the separate loop agree: the products are exact. */
            CHECK_MSG(memcmp(want, separate, (size_t)p.rows * p.in * sizeof *want) == 0,
                      "%s: fma() and multiply-then-add differ", what);
            if (fill == 2 && s->R >= 5) {
                /* The data tells orders apart: reversed k differs in most elements. */
                float *reversed = reference(&p, -1);
                int64_t n = (int64_t)p.rows * p.in, differ = 0;
                for (int64_t i = 0; reversed && i < n; i++) differ += reversed[i] != want[i];
                CHECK_MSG(differ > n / 2, "%s: another order changes only %lld of %lld", what,
                          (long long)differ, (long long)n);
                free(reversed);
            }
            int tested = 0;
            for (int path = 0; path < UPDATE_KERNEL_COUNT; path++) {
                if (!update_kernel_available((update_kernel_path)path)) continue;
                tested++;
                for (int t = 1; t <= 3; t++) check_path(&p, w0, want, path, t, what);
            }
            CHECK(tested >= 3);
            free(w0);
            free(want);
            free(separate);
            problem_free(&p);
        }
    }
    omp_set_num_threads(2);
}

/* This CPU's paths: the test machine has AVX-512F, so all of them run;
 * on another machine the AVX ones are skipped, and said so. */
static void check_dispatch(void) {
    update_kernel_path a = update_kernel_auto();
    CHECK(a != UPDATE_KERNEL_AUTO && update_kernel_available(a));
    CHECK(!strcmp(update_kernel_name(UPDATE_KERNEL_AVX512), "avx512") &&
          !strcmp(update_kernel_name(UPDATE_KERNEL_FMA), "fma") &&
          update_kernel_name(UPDATE_KERNEL_COUNT) == NULL);
    for (int path = 1; path < UPDATE_KERNEL_COUNT; path++)
        if (!update_kernel_available((update_kernel_path)path))
            printf("path %s does not run on this CPU: not tested\n",
                   update_kernel_name((update_kernel_path)path));
#if defined(__x86_64__)
    if (update_kernel_available(UPDATE_KERNEL_AVX512))
        CHECK(a == UPDATE_KERNEL_AVX512);
    else if (update_kernel_available(UPDATE_KERNEL_AVX2))
        CHECK(a == UPDATE_KERNEL_AVX2);
    else
        CHECK(a == UPDATE_KERNEL_MULADD);
#else
    CHECK(a == UPDATE_KERNEL_FMA);
#endif
    printf("auto = %s\n", update_kernel_name(a));
}

/* ---- accuracy against a double-double sum ---------------------------------------- */

/* s + t exactly as hi + lo (Knuth's TwoSum). */
static void two_sum(double s, double t, double *hi, double *lo) {
    double x = s + t, z = x - s;
    *hi = x;
    *lo = (s - (x - z)) + (t - z);
}

static void check_accuracy(void) {
    for (int cancel = 0; cancel < 2; cancel++) {
        problem p;
        const int rows = 40, in = 75, R = 300;
        CHECK(problem_make(&p, rows, in, R, 0, 0) == 0);
        if (cancel)
            fill_cancelling(&p);
        else
            fill_typical(&p);
        float *w0 = malloc((size_t)rows * in * sizeof *w0);
        if (!w0) return;
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < in; j++) w0[i * in + j] = WAT(&p, i, j);
        CHECK_OK(update_apply_rows(p.W, p.ldw, p.B, p.ldb, p.A, p.lda, rows, R, in));
        const double u = ldexp(1, -53), gamma = R * u / (1 - R * u);
        int64_t bound_failures = 0, decided = 0, rounded_wrong = 0;
        double worst = 0, max_rel_result = 0;
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < in; j++) {
                /* exact ≈ hi + lo: each product exact, the sum compensated */
                double hi = (double)w0[i * in + j], lo = 0, S = fabs(hi);
                for (int k = 0; k < R; k++) {
                    double prod = (double)BAT(&p, i, k) * (double)AAT(&p, k, j), e;
                    two_sum(hi, prod, &hi, &e);
                    lo += e;
                    S += fabs(prod);
                }
                two_sum(hi, lo, &hi, &lo);
                const double got = (double)WAT(&p, i, j), err = fabs((got - hi) - lo);
                const double margin = gamma * S * (1 + 1e-10) + ldexp(S, -100);
                /* |float(D) - x| <= 2^-24 |D| + |D - x|, |D - x| <= γ_R S */
                const double bound = ldexp(fabs(hi) + margin, -24) + margin;
                bound_failures += err > bound;
                worst = fmax(worst, err / bound);
                max_rel_result = fmax(max_rel_result, S / fabs(hi));
                /* Correct rounding wherever [x - margin, x + margin] holds
                 * no midpoint between two floats. */
                const float f = (float)hi;
                const double below = 0.5 * ((double)f + (double)nextafterf(f, -INFINITY)),
                             above = 0.5 * ((double)f + (double)nextafterf(f, INFINITY));
                const double d_below = (hi - below) + lo, d_above = (above - hi) - lo;
                if (d_below > margin && d_above > margin) {
                    decided++;
                    rounded_wrong += got != (double)f;
                }
            }
        const char *what = cancel ? "cancelling sums" : "typical sums";
        CHECK_MSG(bound_failures == 0, "%s: %lld elements beyond the error bound (worst %.3g×)",
                  what, (long long)bound_failures, worst);
        CHECK_MSG(rounded_wrong == 0,
                  "%s: %lld of %lld elements away from a rounding boundary are not the correctly "
                  "rounded float",
                  what, (long long)rounded_wrong, (long long)decided);
        /* The check decides nearly every typical element (cancelling sums
         * have a bound that is large next to their result: fewer), and the
         * cancelling case really cancels. */
        CHECK_MSG(decided > rows * in * (cancel ? 50 : 99) / 100,
                  "%s: only %lld of %d elements decided", what, (long long)decided, rows * in);
        if (cancel) CHECK_MSG(max_rel_result > 500, "the sums do not cancel (%g)", max_rel_result);
        printf("%s (R = %d, terms up to %.3g times the result): worst error %.3g of the bound, "
               "%lld of %d elements provably correctly rounded, all of them are\n",
               what, R, max_rel_result, worst, (long long)decided, rows * in);
        free(w0);
        problem_free(&p);
    }
}

/* ---- refusals ----------------------------------------------------------------- */

static void check_refusals(void) {
    float W[4 * 8] = {1, 2, 3}, B[4 * 2] = {1}, A[2 * 8] = {1}, keep[4 * 8];
    memcpy(keep, W, sizeof W);
    CHECK_FAILS_WITH(update_apply_rows(W, 8, B, 2, A, 8, 4, 0, 8), "rank 0");
    CHECK_FAILS_WITH(update_apply_rows(W, 7, B, 2, A, 8, 4, 2, 8), "bad sizes");
    CHECK_FAILS_WITH(update_apply_rows(W, 8, B, 1, A, 8, 4, 2, 8), "bad sizes");
    CHECK_FAILS_WITH(update_apply_rows(W, 8, B, 2, A, 7, 4, 2, 8), "bad sizes");
    CHECK_FAILS_WITH(update_apply_rows(W, 8, B, 2, A, 8, -1, 2, 8), "bad sizes");
    CHECK(memcmp(W, keep, sizeof W) == 0);
    for (int path = 1; path < UPDATE_KERNEL_COUNT; path++)
        if (!update_kernel_available((update_kernel_path)path))
            CHECK_FAILS_WITH(
                update_kernel_apply((update_kernel_path)path, W, 8, B, 2, A, 8, 4, 2, 8),
                "does not run on this CPU");
    CHECK_FAILS_WITH(update_kernel_apply(UPDATE_KERNEL_COUNT, W, 8, B, 2, A, 8, 4, 2, 8),
                     "does not run on this CPU");
    /* Nothing to do is no error. */
    CHECK_OK(update_apply_rows(W, 8, B, 2, A, 8, 0, 2, 8));
    CHECK_OK(update_apply_rows(W, 8, B, 2, A, 8, 4, 2, 0));
    CHECK(memcmp(W, keep, sizeof W) == 0);
}

int main(void) {
    check_dispatch();
    check_paths();
    check_accuracy();
    check_refusals();
    return check_finish();
}
