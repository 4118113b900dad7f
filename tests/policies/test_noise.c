/* test_noise — DP noise: production draws from the CSPRNG (never the seeded
 * generator), the seeded generator exists only in test mode, a key replays
 * its stream, the normals have mean 0 and variance σ² within statistical
 * bounds (for both sources), and Poisson sampling keeps members at rate q. */
#include "policies/noise.h"
#include "tests/check.h"
#include "util/err.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 1000000

static void check_stats(noise_source *n, const char *what) {
    const double sigma = 2.5;
    real *x = calloc(N, sizeof *x);
    CHECK_OK(noise_add(n, x, N, sigma));
    double sum = 0, sq = 0, q4 = 0;
    for (int i = 0; i < N; i++) sum += x[i];
    double mean = sum / N;
    for (int i = 0; i < N; i++) {
        double d = x[i] - mean;
        sq += d * d;
        q4 += d * d * d * d;
    }
    double var = sq / (N - 1), kurt = q4 / N / (var * var);
    /* 5-sigma bounds: mean ± 5σ/√N; sample variance ± 5σ²√(2/N); kurtosis 3 ± 5√(24/N). */
    printf("%s: mean %.5f (± %.5f), variance %.4f (want %.4f ± %.4f), kurtosis %.3f\n", what, mean,
           5 * sigma / sqrt(N), var, sigma * sigma, 5 * sigma * sigma * sqrt(2.0 / N), kurt);
    CHECK(fabs(mean) <= 5 * sigma / sqrt(N));
    CHECK(fabs(var - sigma * sigma) <= 5 * sigma * sigma * sqrt(2.0 / N));
    CHECK(fabs(kurt - 3) <= 5 * sqrt(24.0 / N));
    free(x);
}

int main(void) {
    policy prod, test;
    policy_defaults(&prod);
    policy_defaults(&test);
    test.mode = POLICY_MODE_TEST;
    test.test_seed = 77;

    /* Production never hands out the seeded generator. */
    noise_source *n = NULL;
    CHECK_FAILS_WITH(noise_open_seeded(&n, &prod, 1), "only available in the policy's test mode");
    CHECK(n == NULL);
    CHECK_OK(noise_open(&n, &prod, NULL));
    CHECK(noise_is_cryptographic(n) == 1);
    check_stats(n, "CSPRNG (ChaCha20)");
    unsigned char key[NOISE_KEY_LEN];
    CHECK_OK(noise_key(n, key));
    noise_free(n);

    /* Two fresh production sources differ; one reopened with a key repeats it. */
    noise_source *a, *b, *c;
    CHECK_OK(noise_open(&a, &prod, NULL));
    CHECK_OK(noise_open(&b, &prod, NULL));
    CHECK_OK(noise_open(&c, &prod, key));
    unsigned char ka[NOISE_KEY_LEN], kb[NOISE_KEY_LEN];
    noise_key(a, ka);
    noise_key(b, kb);
    CHECK(memcmp(ka, kb, NOISE_KEY_LEN) != 0);
    double za[64], zb[64], zc[64], zd[64];
    CHECK_OK(noise_gaussian(a, za, 64));
    CHECK_OK(noise_gaussian(b, zb, 64));
    CHECK(memcmp(za, zb, sizeof za) != 0);
    noise_source *d;
    CHECK_OK(noise_open(&d, &prod, key));
    CHECK_OK(noise_gaussian(c, zc, 63)); /* odd counts keep the pair's second value */
    CHECK_OK(noise_gaussian(c, zc + 63, 1));
    CHECK_OK(noise_gaussian(d, zd, 64));
    CHECK(memcmp(zc, zd, sizeof zc) == 0);
    noise_free(a);
    noise_free(b);
    noise_free(c);
    noise_free(d);

    /* Test mode: the seeded generator, reproducible, not cryptographic. */
    CHECK_OK(noise_open(&a, &test, NULL));
    CHECK(noise_is_cryptographic(a) == 0);
    CHECK_FAILS_WITH(noise_key(a, key), "no key");
    CHECK_OK(noise_open_seeded(&b, &test, 77));
    CHECK_OK(noise_gaussian(a, za, 64));
    CHECK_OK(noise_gaussian(b, zb, 64));
    CHECK(memcmp(za, zb, sizeof za) == 0);
    check_stats(a, "test generator");
    noise_free(a);
    noise_free(b);

    /* Poisson sampling at rate q. */
    CHECK_OK(noise_open(&a, &prod, NULL));
    enum { M = 200000 };
    unsigned char *chosen = malloc(M);
    CHECK_OK(noise_sample(a, 0.3, M, chosen));
    int k = 0;
    for (int i = 0; i < M; i++) k += chosen[i];
    double sd = sqrt(M * 0.3 * 0.7);
    printf("sampled %d of %d at q = 0.3 (want %.0f ± %.0f)\n", k, M, M * 0.3, 5 * sd);
    CHECK(fabs(k - M * 0.3) <= 5 * sd);
    CHECK_OK(noise_sample(a, 1.0, 100, chosen));
    k = 0;
    for (int i = 0; i < 100; i++) k += chosen[i];
    CHECK(k == 100);
    CHECK_FAILS_WITH(noise_sample(a, 0, 10, chosen), "sampling rate");
    free(chosen);
    noise_free(a);
    return check_finish();
}
