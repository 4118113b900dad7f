/* sampler_sort.h — the nucleus-sampling definition computed the direct way,
 * as the independent reference for generate/sampler.h (tests/decode/
 * test_sampler.c checks the picks, bench/generate/bench_sampler.c times
 * both): every candidate's probability exp((logit − max) / T) in double, a
 * full sort by probability then id, the shortest prefix whose mass reaches
 * top_p of the total, one SplitMix64 draw walked down it. This is what
 * `fedlora generate` computed before the heap. */
#ifndef FL_TESTS_DECODE_SAMPLER_SORT_H
#define FL_TESTS_DECODE_SAMPLER_SORT_H

#include "data/dataset.h"
#include "model/real.h"
#include "util/rng.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    double p;
    int id;
} sort_cand;

static int sort_cand_order(const void *a, const void *b) {
    const sort_cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

/* The next token for logits (V); c is (V) scratch. */
static int sort_sampler_next(const real *logits, int V, double temperature, double top_p,
                             uint64_t *rng, sort_cand *c) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    if (temperature <= 0) return best;
    double mx = logits[best], total = 0;
    for (int v = 0; v < V; v++) {
        c[v].id = v;
        c[v].p = exp(((double)logits[v] - mx) / temperature);
        total += c[v].p;
    }
    int n = V;
    if (top_p < 1) {
        qsort(c, (size_t)V, sizeof *c, sort_cand_order);
        double mass = 0;
        for (n = 0; n < V && mass < top_p * total;) mass += c[n++].p;
        total = mass;
    }
    double u = (double)(rng_next(rng) >> 11) * (1.0 / 9007199254740992.0) * total;
    for (int i = 0; i < n; i++) {
        u -= c[i].p;
        if (u < 0) return c[i].id;
    }
    return c[n - 1].id;
}

#endif
