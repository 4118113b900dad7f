/* bench_update — the merge kernel of lora/update.h (update_apply_rows, the
 * kernel of update_apply) against the kernel it replaced (legacy_kernel.c),
 * in the same process, on the same weights and factors.
 *
 * For each weight shape (out, in), rank R and thread count: W (out, in),
 * B (out, R) and A (R, in) random floats (W ~ ±0.05, B ~ ±0.01, A ~ ±0.05,
 * the sizes of a merged LoRA update), each kernel applied repeatedly to W
 * (the new one as update_apply runs it: its scratch made once per
 * application of the set, then update_kernel_ws_apply per weight), the
 * kernels taking turns, best of at least 3 runs and at least --min-time
 * seconds each (default 1); G multiply-adds/s
 * = out · in · R / seconds / 10^9. Before the timing, both kernels are run
 * once on copies of the same W and their results compared byte for byte
 * ("same bits": the FMA kernel's definition gives the old kernel's numbers,
 * lora/update.h).
 *
 * Shapes: the seven linear layers of one block of the llama-100m preset
 * (q, k, v, o, gate, up, down: (768, 768), (256, 768) ×2, (768, 768),
 * (2048, 768) ×2, (768, 2048)), timed as a block, and the 8B Llama's
 * (4096, 4096) (q, o), (14336, 4096) (gate, up) and (4096, 14336) (down).
 *
 * Usage: bench_update [--threads 1,2] [--ranks 16,48,256] [--shapes 100m,8b]
 *                     [--paths auto[,avx2,avx512,muladd,fma]] [--min-time S]
 *                     [--clock wall|cpu]
 * Prints one Markdown table row per (shape, R, threads).
 *
 * bench_update --accuracy [--ranks …]: not a timing, the numbers behind
 * keeping a double accumulator (lora/update.h). For a (768, 768) weight and
 * each R, the kernel against the same fixed-order loop with a float
 * accumulator (acc = W; acc = fmaf(b, a, acc); twice the vector lanes), both
 * against the exact result (double-double sum): how many elements differ,
 * the largest error in float ulps, the mean error relative to the update,
 * and how many elements of a visible update (at least one ulp of W) a
 * kernel leaves unchanged. Two updates: the bench's and one 1000 times
 * smaller (B ~ ±1e-5), like a round's update late in training. */
#include "bench/bench.h"
#include "bench/update/legacy_kernel.h"
#include "lora/update.h"
#include "lora/update_kernel.h"
#include "util/err.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int out, in;
} shape;

typedef struct {
    const char *name;
    int n;
    shape s[7];
} shape_set;

static const shape_set sets[] = {
    {"llama-100m block",
     7,
     {{768, 768}, {256, 768}, {256, 768}, {768, 768}, {2048, 768}, {2048, 768}, {768, 2048}}},
    {"8B q/o (4096, 4096)", 1, {{4096, 4096}}},
    {"8B gate/up (14336, 4096)", 1, {{14336, 4096}}},
    {"8B down (4096, 14336)", 1, {{4096, 14336}}},
};

static uint64_t rng = 0x243f6a8885a308d3ull;
static float uniform(float scale) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return scale * (float)((double)(rng >> 11) / 9007199254740992.0 - 0.5);
}

typedef struct {
    int n;
    float *W[7], *W0[7], *B[7], *A[7];
    const shape *s;
} operands;

static int make(operands *o, const shape_set *set, int R) {
    memset(o, 0, sizeof *o);
    o->n = set->n;
    o->s = set->s;
    for (int i = 0; i < set->n; i++) {
        size_t out = (size_t)set->s[i].out, in = (size_t)set->s[i].in;
        o->W[i] = malloc(out * in * sizeof(float));
        o->W0[i] = malloc(out * in * sizeof(float));
        o->B[i] = malloc(out * (size_t)R * sizeof(float));
        o->A[i] = malloc((size_t)R * in * sizeof(float));
        if (!o->W[i] || !o->W0[i] || !o->B[i] || !o->A[i]) return -1;
        for (size_t j = 0; j < out * in; j++) o->W0[i][j] = o->W[i][j] = uniform(0.1f);
        for (size_t j = 0; j < out * (size_t)R; j++) o->B[i][j] = uniform(0.02f);
        for (size_t j = 0; j < (size_t)R * in; j++) o->A[i][j] = uniform(0.1f);
    }
    return 0;
}

static void release(operands *o) {
    for (int i = 0; i < o->n; i++) free(o->W[i]), free(o->W0[i]), free(o->B[i]), free(o->A[i]);
}

/* One application of the whole set by kernel `path` (-1: the legacy one),
 * as update_apply does it: one workspace for all the set's weights. */
static int apply(const operands *o, int path, int R) {
    update_kernel_ws *ws = NULL;
    if (path >= 0 && update_kernel_ws_create(&ws, (update_kernel_path)path, R) != 0) return -1;
    int rc = 0;
    for (int i = 0; i < o->n && rc == 0; i++) {
        const int out = o->s[i].out, in = o->s[i].in;
        rc = path < 0
                 ? legacy_apply(o->W[i], o->B[i], o->A[i], out, R, in)
                 : update_kernel_ws_apply(ws, o->W[i], in, o->B[i], R, o->A[i], in, out, R, in);
    }
    update_kernel_ws_free(ws);
    return rc;
}

/* Wall-clock seconds, or with --clock cpu the process's CPU seconds: with
 * one thread, the time the kernel actually ran, whatever else shares the
 * cores (a machine busy with other jobs gives wall times that say more
 * about them). */
static int use_cpu_clock;
static double now(void) {
    if (!use_cpu_clock) return bench_now();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best seconds of one application for each kernel of kernels[0..n): the
 * kernels take turns (so that, on a shared machine, each gets the same
 * chances at a quiet moment), each at least 3 runs and min_time in all. */
static int best_times(const operands *o, const int *kernels, int n, int R, double min_time,
                      double *best) {
    double spent[1 + UPDATE_KERNEL_COUNT] = {0};
    for (int k = 0; k < n; k++) best[k] = 1e30;
    for (int run = 0;; run++) {
        int more = 0;
        for (int k = 0; k < n; k++) {
            if (run >= 3 && spent[k] >= min_time) continue;
            more = 1;
            double t0 = now();
            if (apply(o, kernels[k], R) != 0) return -1;
            double t = now() - t0;
            spent[k] += t;
            if (t < best[k]) best[k] = t;
        }
        if (!more) return 0;
    }
}

/* 1 when kernels p and q give the same bytes from the same W. */
static int same_bits(operands *o, int p, int q, int R) {
    int same = 1;
    float *keep[7];
    for (int i = 0; i < o->n; i++) {
        size_t n = (size_t)o->s[i].out * (size_t)o->s[i].in;
        keep[i] = malloc(n * sizeof(float));
        if (!keep[i]) return 0;
        memcpy(o->W[i], o->W0[i], n * sizeof(float));
    }
    apply(o, p, R);
    for (int i = 0; i < o->n; i++) {
        size_t n = (size_t)o->s[i].out * (size_t)o->s[i].in;
        memcpy(keep[i], o->W[i], n * sizeof(float));
        memcpy(o->W[i], o->W0[i], n * sizeof(float));
    }
    apply(o, q, R);
    for (int i = 0; i < o->n; i++) {
        size_t n = (size_t)o->s[i].out * (size_t)o->s[i].in;
        same &= memcmp(keep[i], o->W[i], n * sizeof(float)) == 0;
        free(keep[i]);
    }
    return same;
}

/* ---- --accuracy ---------------------------------------------------------------- */

/* x = s + t exactly as hi + lo (Knuth's TwoSum; this file has no FMA
 * contraction: see CMakeLists.txt). */
static void two_sum(double s, double t, double *hi, double *lo) {
    double x = s + t, z = x - s;
    *hi = x;
    *lo = (s - (x - z)) + (t - z);
}

static void accuracy(const int *ranks, int n_ranks) {
    const int out = 768, in = 768;
    printf(
        "| R | Σ|B·A| / Σ|W| | float ≠ double | not correctly rounded, double / float | max error "
        "(ulps), double / float | mean error / update, double / float | visible updates "
        "lost, double / float |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (int ri = 0; ri < n_ranks; ri++)
        for (int small = 0; small < 2; small++) {
            const int R = ranks[ri];
            float *W = malloc((size_t)out * in * sizeof *W), *B = malloc((size_t)out * R * 4),
                  *A = malloc((size_t)R * in * 4), *Wd = malloc((size_t)out * in * sizeof *W);
            if (!W || !B || !A || !Wd) return;
            for (size_t j = 0; j < (size_t)out * in; j++) Wd[j] = W[j] = uniform(0.1f);
            for (size_t j = 0; j < (size_t)out * R; j++) B[j] = uniform(small ? 2e-5f : 0.02f);
            for (size_t j = 0; j < (size_t)R * in; j++) A[j] = uniform(0.1f);
            if (update_apply_rows(Wd, in, B, R, A, in, out, R, in) != 0) return;
            int64_t differ = 0, visible = 0, lost_d = 0, lost_f = 0, wrong_d = 0, wrong_f = 0;
            double max_d = 0, max_f = 0, rel_d = 0, rel_f = 0, sum_w = 0, sum_update = 0;
            for (int i = 0; i < out; i++)
                for (int j = 0; j < in; j++) {
                    const float w = W[(size_t)i * in + j];
                    double hi = w, lo = 0, e;
                    float f = w;
                    for (int k = 0; k < R; k++) {
                        const float b = B[(size_t)i * R + k], a = A[(size_t)k * in + j];
                        two_sum(hi, (double)b * (double)a, &hi, &e);
                        lo += e;
                        f = fmaf(b, a, f);
                    }
                    two_sum(hi, lo, &hi, &lo);
                    const float d = Wd[(size_t)i * in + j];
                    /* the correctly rounded result, when hi + lo is no tie (lo breaks it) */
                    const float x = (float)hi, xa = fabsf(x);
                    const double ulp = (double)nextafterf(xa, INFINITY) - (double)xa;
                    const double ed = fabs(((double)d - hi) - lo), ef = fabs(((double)f - hi) - lo);
                    const double update = fabs((hi - (double)w) + lo);
                    sum_w += fabsf(w);
                    sum_update += update;
                    differ += d != f;
                    wrong_d += d != x;
                    wrong_f += f != x;
                    max_d = fmax(max_d, ed / ulp);
                    max_f = fmax(max_f, ef / ulp);
                    rel_d += ed / update;
                    rel_f += ef / update;
                    if (update >= (double)nextafterf(fabsf(w), INFINITY) - fabsf(w)) {
                        visible++;
                        lost_d += d == w;
                        lost_f += f == w;
                    }
                }
            const double n = (double)out * in;
            printf("| %d | %.0e | %.1f %% | %.3f %% / %.1f %% | %.2f / %.1f | %.1e / %.1e | %lld / "
                   "%lld of %lld |\n",
                   R, sum_update / sum_w, 100.0 * differ / n, 100.0 * wrong_d / n,
                   100.0 * wrong_f / n, max_d, max_f, rel_d / n, rel_f / n, (long long)lost_d,
                   (long long)lost_f, (long long)visible);
            free(W), free(B), free(A), free(Wd);
        }
}

/* Comma-separated integers into v (at most max); the count, or -1. */
static int parse_ints(const char *s, int *v, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < 1 || x > 1 << 20) return -1;
        v[n++] = (int)x;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

static int parse_paths(const char *s, int *v, int max) {
    int n = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok && n < max; tok = strtok(NULL, ",")) {
        int found = -1;
        for (int p = 0; p < UPDATE_KERNEL_COUNT; p++)
            if (!strcmp(tok, update_kernel_name((update_kernel_path)p))) found = p;
        if (found < 0) return -1;
        v[n++] = found;
    }
    return n;
}

int main(int argc, char **argv) {
    int threads[4] = {1, 2}, n_threads = 2, ranks[8] = {16, 48, 256}, n_ranks = 3;
    int paths[UPDATE_KERNEL_COUNT] = {UPDATE_KERNEL_AUTO}, n_paths = 1;
    int want_100m = 1, want_8b = 1, want_accuracy = 0;
    double min_time = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--accuracy")) {
            want_accuracy = 1;
            continue;
        }
        int ok = v != NULL;
        if (ok && !strcmp(a, "--threads"))
            ok = (n_threads = parse_ints(v, threads, 4)) > 0;
        else if (ok && !strcmp(a, "--ranks"))
            ok = (n_ranks = parse_ints(v, ranks, 8)) > 0;
        else if (ok && !strcmp(a, "--paths"))
            ok = (n_paths = parse_paths(v, paths, UPDATE_KERNEL_COUNT)) > 0;
        else if (ok && !strcmp(a, "--shapes")) {
            want_100m = strstr(v, "100m") != NULL;
            want_8b = strstr(v, "8b") != NULL;
            ok = want_100m || want_8b;
        } else if (ok && !strcmp(a, "--min-time"))
            ok = (min_time = atof(v)) >= 0;
        else if (ok && !strcmp(a, "--clock"))
            ok = (use_cpu_clock = !strcmp(v, "cpu")) || !strcmp(v, "wall");
        else
            ok = 0;
        if (!ok) {
            fprintf(stderr,
                    "usage: bench_update [--threads 1,2] [--ranks 16,48,256] [--shapes 100m,8b] "
                    "[--paths auto,avx2,avx512,muladd,fma] [--min-time S] [--clock wall|cpu]\n"
                    "       bench_update --accuracy [--ranks 16,48,256]\n");
            return 2;
        }
        i++;
    }
    if (want_accuracy) {
        accuracy(ranks, n_ranks);
        return 0;
    }
    for (int p = 0; p < n_paths; p++)
        if (!update_kernel_available((update_kernel_path)paths[p])) {
            fprintf(stderr, "bench_update: the %s path does not run on this CPU\n",
                    update_kernel_name((update_kernel_path)paths[p]));
            return 1;
        }
    printf("# update kernel: auto = %s; %s time\n", update_kernel_name(update_kernel_auto()),
           use_cpu_clock ? "CPU" : "wall-clock");
    printf("| shape | R | threads | old G madds/s |");
    for (int p = 0; p < n_paths; p++)
        printf(" %s G madds/s | ratio |", update_kernel_name((update_kernel_path)paths[p]));
    printf(" same bits |\n| --- | ---: | ---: | ---: |");
    for (int p = 0; p < n_paths; p++) printf(" ---: | ---: |");
    printf(" --- |\n");
    for (size_t si = 0; si < sizeof sets / sizeof sets[0]; si++) {
        if (si == 0 ? !want_100m : !want_8b) continue;
        for (int ri = 0; ri < n_ranks; ri++) {
            const int R = ranks[ri];
            operands o;
            if (make(&o, &sets[si], R) != 0) {
                fprintf(stderr, "bench_update: out of memory for %s, R = %d\n", sets[si].name, R);
                release(&o);
                return 1;
            }
            double madds = 0;
            for (int i = 0; i < o.n; i++) madds += (double)o.s[i].out * o.s[i].in * R;
            for (int ti = 0; ti < n_threads; ti++) {
                omp_set_num_threads(threads[ti]);
                int same = 1;
                for (int p = 0; p < n_paths; p++) same &= same_bits(&o, -1, paths[p], R);
                int kernels[1 + UPDATE_KERNEL_COUNT] = {-1};
                double t[1 + UPDATE_KERNEL_COUNT];
                for (int p = 0; p < n_paths; p++) kernels[1 + p] = paths[p];
                if (best_times(&o, kernels, 1 + n_paths, R, min_time, t) != 0) {
                    fprintf(stderr, "bench_update: %s\n", err_msg());
                    return 1;
                }
                printf("| %s | %d | %d | %.2f |", sets[si].name, R, threads[ti],
                       madds / t[0] / 1e9);
                for (int p = 0; p < n_paths; p++)
                    printf(" %.2f | %.2f |", madds / t[1 + p] / 1e9, t[0] / t[1 + p]);
                printf(" %s |\n", same ? "yes" : "NO");
                fflush(stdout);
            }
            release(&o);
        }
    }
    return 0;
}
