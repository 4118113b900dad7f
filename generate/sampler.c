/* sampler — greedy and nucleus sampling (see sampler.h). */
#include "generate/sampler.h"

#include "data/dataset.h"
#include "util/err.h"
#include "util/rng.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

typedef struct {
    double p;
    int id;
} cand;

struct sampler {
    int V;
    double temperature, top_p;
    uint64_t rng;
    cand *c; /* (V) scratch: the heap, then the nucleus at its end */
};

int sampler_create(sampler **out, int V, double temperature, double top_p, uint64_t seed) {
    *out = NULL;
    if (V < 1) return err_set("sampler for %d logits: there must be at least one", V);
    if (!(temperature >= 0) || !(top_p > 0 && top_p <= 1))
        return err_set("sampler: temperature %g must be >= 0 and top_p %g in (0, 1]", temperature,
                       top_p);
    sampler *s = calloc(1, sizeof *s);
    if (s) s->c = malloc(sizeof *s->c * (size_t)V);
    if (!s || !s->c) {
        sampler_free(s);
        return err_set("out of memory for a sampler over %d tokens", V);
    }
    s->V = V;
    s->temperature = temperature;
    s->top_p = top_p;
    s->rng = seed;
    *out = s;
    return 0;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->c);
    free(s);
}

/* The order of the nucleus: higher probability first, then lower id. */
static int before(const cand *a, const cand *b) {
    return a->p > b->p || (a->p == b->p && a->id < b->id);
}

/* Restores the heap property below node i of the heap c[0, n). */
static void sift_down(cand *c, int n, int i) {
    cand x = c[i];
    for (;;) {
        int k = 2 * i + 1;
        if (k >= n) break;
        if (k + 1 < n && before(&c[k + 1], &c[k])) k++;
        if (!before(&c[k], &x)) break;
        c[i] = c[k];
        i = k;
    }
    c[i] = x;
}

int sampler_next(sampler *s, const real *logits) {
    int V = s->V, best = 0, bad = !isfinite(logits[0]);
    for (int v = 1; v < V; v++) {
        bad |= !isfinite(logits[v]);
        if (logits[v] > logits[best]) best = v;
    }
    /* NaN or ±inf would make the argmax arbitrary and the probabilities NaN
     * (an empty nucleus): a broken model, not something to sample from. */
    if (bad)
        return err_set("the model gave a NaN or infinite logit; its weights (or the adapter's) "
                       "are broken: check them with fedlora eval");
    if (s->temperature <= 0) return best;
    cand *c = s->c;
    double mx = logits[best], total = 0;
    for (int v = 0; v < V; v++) {
        c[v].id = v;
        c[v].p = exp(((double)logits[v] - mx) / s->temperature);
        total += c[v].p;
    }
    /* Candidates in walking order: walk[0], walk[step], … walk[(n − 1)·step].
     * Without a cut, the whole vocabulary in id order. With one, each pop
     * moves the heap's first candidate to just past the shrinking heap, so
     * the nucleus is c[V − 1], c[V − 2], … c[V − n]. */
    int n = V, step = 1;
    const cand *walk = c;
    if (s->top_p < 1) {
        for (int i = V / 2 - 1; i >= 0; i--) sift_down(c, V, i);
        double mass = 0, want = s->top_p * total;
        for (n = 0; n < V && mass < want; n++) {
            int h = V - n; /* heap size */
            cand top = c[0];
            c[0] = c[h - 1];
            c[h - 1] = top;
            sift_down(c, h - 1, 0);
            mass += top.p;
        }
        total = mass;
        walk = c + V - 1;
        step = -1;
    }
    double u = rng_unit0(rng_next(&s->rng)) * total;
    for (int i = 0; i < n; i++) {
        const cand *x = walk + (ptrdiff_t)i * step;
        u -= x->p;
        if (u < 0) return x->id;
    }
    return walk[(ptrdiff_t)(n - 1) * step].id; /* rounding left u at about 0 */
}
