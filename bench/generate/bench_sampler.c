/* bench_sampler — the time `fedlora generate` spends choosing a token with
 * nucleus sampling (generate/sampler.h: a heap over the vocabulary), against the
 * definition computed the direct way (a full sort of the candidates, what
 * generate did before), in the same run.
 *
 *   bench_sampler [--vocab V] [--temperature T] [--top-p P] [--draws N]
 *
 * Logit shapes: Zipf-like, logit = −a·ln(rank) with a = 1.1 and a = 2 (a
 * trained model's next-token distribution: few likely tokens, a long tail;
 * ids shuffled), and uniform noise in [−2, 2] (a random model's: the
 * nucleus holds most of the vocabulary, the heap's worst case). Prints
 * microseconds per token for both and their ratio, and checks that both
 * pick the same tokens. */
#include "bench/bench.h"
#include "data/dataset.h"
#include "generate/sampler.h"
#include "tests/decode/sampler_sort.h"
#include "util/err.h"
#include "util/rng.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    int V = 50257, draws = 200;
    double temperature = 0.7, top_p = 0.9;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--vocab"))
            V = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--temperature"))
            temperature = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--top-p"))
            top_p = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--draws"))
            draws = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_sampler: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (V < 1 || draws < 1 || !(temperature > 0)) {
        fprintf(stderr, "bench_sampler: needs --vocab >= 1, --draws >= 1, --temperature > 0\n");
        return 2;
    }
    real *l = malloc(sizeof *l * (size_t)V);
    sort_cand *c = malloc(sizeof *c * (size_t)V);
    if (!l || !c) return 1;
    static const char *names[] = {"zipf-1.1", "zipf-2", "noise"};
    for (int shape = 0; shape < 3; shape++) {
        uint64_t s = 99;
        for (int v = 0; v < V; v++)
            l[v] = shape < 2 ? (real)(-(shape ? 2.0 : 1.1) * log(1.0 + v))
                             : (real)(4.0 * (double)(rng_next(&s) >> 11) / 9007199254740992.0 - 2);
        for (int v = V - 1; v > 0; v--) {
            int j = (int)(rng_next(&s) % (uint64_t)(v + 1));
            real t = l[v];
            l[v] = l[j];
            l[j] = t;
        }
        sampler *smp = NULL;
        if (sampler_create(&smp, V, temperature, top_p, 7) != 0) {
            fprintf(stderr, "bench_sampler: %s\n", err_msg());
            return 1;
        }
        uint64_t rng = 7;
        int mismatches = 0;
        double t0 = bench_now();
        int *picks = malloc(sizeof *picks * (size_t)draws);
        for (int d = 0; d < draws; d++) picks[d] = sampler_next(smp, l);
        double t1 = bench_now();
        for (int d = 0; d < draws; d++)
            mismatches += sort_sampler_next(l, V, temperature, top_p, &rng, c) != picks[d];
        double t2 = bench_now();
        /* The nucleus size, for the record: tokens in the sorted prefix. */
        uint64_t r2 = 0;
        sort_sampler_next(l, V, temperature, top_p, &r2, c);
        double total = 0, mass = 0;
        for (int v = 0; v < V; v++) total += c[v].p;
        int n = 0;
        while (n < V && mass < top_p * total) mass += c[n++].p;
        printf("sampler %s V=%d T=%g top_p=%g nucleus=%d heap_us/token=%.1f "
               "sort_us/token=%.1f speedup=%.2fx same_picks=%s\n",
               names[shape], V, temperature, top_p, n, 1e6 * (t1 - t0) / draws,
               1e6 * (t2 - t1) / draws, (t2 - t1) / (t1 - t0), mismatches ? "NO" : "yes");
        free(picks);
        sampler_free(smp);
        if (mismatches) return 1;
    }
    free(l);
    free(c);
    return 0;
}
