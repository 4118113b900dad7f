/* test_sampler — generate/sampler.h against an independent reference: the
 * definition written the direct way (tests/decode/sampler_sort.h: every
 * candidate's probability, a full sort by probability then id, the shortest
 * prefix reaching top_p of the total, one SplitMix64 draw walked down it),
 * which is also what `fedlora generate` did before the heap.
 *
 * For vocabularies from 1 to 50257 tokens; logits that are uniform noise,
 * Zipf-like (a trained model's shape: few likely tokens), full of ties, or
 * all equal; temperatures 0 to 2.5 and top_p from 1e-9 to 1: the sampler
 * picks the same ids as the reference with the same seed, draw after draw.
 * Greedy takes the lowest id on ties. Sampling frequencies over a small
 * vocabulary match the nucleus's renormalised probabilities. Bad settings
 * and non-finite logits are refused. */
#include "data/dataset.h"
#include "generate/sampler.h"
#include "tests/check.h"
#include "tests/decode/sampler_sort.h"
#include "util/err.h"
#include "util/rng.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static double uniform(uint64_t *s) {
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* Logits of one of four shapes, the same for a given (kind, seed). */
static void make_logits(real *l, int V, int kind, uint64_t seed) {
    uint64_t s = seed;
    for (int v = 0; v < V; v++) {
        switch (kind) {
            case 0:
                l[v] = (real)(4 * uniform(&s) - 2);
                break; /* noise */
            case 1:
                l[v] = (real)(-1.1 * log(1 + v) * 3);
                break; /* Zipf, ranked by id */
            case 2:
                l[v] = (real)(int)(4 * uniform(&s));
                break; /* four values: ties */
            default:
                l[v] = 0.5f;
                break; /* all equal */
        }
    }
    if (kind == 1) /* shuffle, so that rank and id differ */
        for (int v = V - 1; v > 0; v--) {
            int j = (int)(uniform(&s) * (v + 1));
            real t = l[v];
            l[v] = l[j];
            l[j] = t;
        }
}

static void check_against_reference(void) {
    static const int sizes[] = {1, 2, 7, 1000, 50257};
    static const double temps[] = {0, 0.3, 1, 2.5}, tops[] = {1e-9, 0.3, 0.9, 0.999, 1};
    real *l = malloc(sizeof *l * 50257);
    sort_cand *c = malloc(sizeof *c * 50257);
    int compared = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (int kind = 0; kind < 4; kind++)
            for (size_t t = 0; t < sizeof temps / sizeof *temps; t++)
                for (size_t q = 0; q < sizeof tops / sizeof *tops; q++) {
                    int V = sizes[a], draws = V > 1000 ? 3 : 40, same = 1;
                    sampler *smp = NULL;
                    CHECK_OK(sampler_create(&smp, V, temps[t], tops[q], 77 + a));
                    if (!smp) continue;
                    uint64_t rng = 77 + a;
                    for (int d = 0; d < draws && same; d++) {
                        make_logits(l, V, kind, 1000 * a + 10 * kind + d % 2);
                        int got = sampler_next(smp, l);
                        int want = sort_sampler_next(l, V, temps[t], tops[q], &rng, c);
                        same = got == want && got >= 0 && got < V;
                        CHECK_MSG(same, "V=%d shape %d T=%g top_p=%g draw %d: %d, reference %d", V,
                                  kind, temps[t], tops[q], d, got, want);
                        compared++;
                    }
                    sampler_free(smp);
                }
    printf("sampler = sort-based reference on %d draws\n", compared);
    free(l);
    free(c);
}

/* Greedy ties go to the lowest id; the nucleus of a tiny top_p is the most
 * likely token alone. */
static void check_edges(void) {
    real l[5] = {1, 3, 3, -2, 3};
    sampler *g = NULL, *t = NULL;
    CHECK_OK(sampler_create(&g, 5, 0, 1, 1));
    CHECK_OK(sampler_create(&t, 5, 1, 1e-9, 1));
    if (g) CHECK(sampler_next(g, l) == 1);
    l[1] = 2;
    for (int i = 0; t && i < 20; i++) CHECK(sampler_next(t, l) == 2);
    sampler_free(g);
    sampler_free(t);
}

/* Logits log(0.5), log(0.3), log(0.15), log(0.05) at temperature 1 with
 * top_p 0.75: the nucleus is {0, 1} (0.5 < 0.75 <= 0.8), renormalised to
 * 5/8 and 3/8. 40000 draws: frequencies within 4.5 standard deviations. */
static void check_frequencies(void) {
    real l[4] = {(real)log(0.5), (real)log(0.3), (real)log(0.15), (real)log(0.05)};
    sampler *s = NULL;
    CHECK_OK(sampler_create(&s, 4, 1, 0.75, 2024));
    if (!s) return;
    int count[4] = {0}, n = 40000;
    for (int i = 0; i < n; i++) count[sampler_next(s, l)]++;
    double p0 = 5.0 / 8, sd = sqrt(n * p0 * (1 - p0));
    CHECK_MSG(fabs(count[0] - n * p0) < 4.5 * sd && count[0] + count[1] == n,
              "counts %d %d %d %d, expected about %.0f %.0f 0 0", count[0], count[1], count[2],
              count[3], n * p0, n * (1 - p0));
    sampler_free(s);
}

static void check_refusals(void) {
    sampler *s = NULL;
    /* A broken model's logits: refused on every path, greedy included. */
    for (int t = 0; t < 2; t++) {
        CHECK_OK(sampler_create(&s, 3, t ? 0.8 : 0, t ? 0.9 : 1, 0));
        real nan_l[3] = {1, NAN, 0}, inf_l[3] = {1, 0, INFINITY};
        if (s) {
            CHECK_FAILS_WITH(sampler_next(s, nan_l), "NaN or infinite logit");
            CHECK_FAILS_WITH(sampler_next(s, inf_l), "NaN or infinite logit");
        }
        sampler_free(s);
        s = NULL;
    }
    CHECK_FAILS_WITH(sampler_create(&s, 0, 1, 1, 0), "at least one");
    CHECK_FAILS_WITH(sampler_create(&s, 10, -1, 1, 0), "temperature -1");
    CHECK_FAILS_WITH(sampler_create(&s, 10, 1, 0, 0), "top_p 0");
    CHECK_FAILS_WITH(sampler_create(&s, 10, 1, 1.5, 0), "top_p 1.5");
    CHECK(s == NULL);
}

int main(void) {
    check_against_reference();
    check_edges();
    check_frequencies();
    check_refusals();
    return check_finish();
}
