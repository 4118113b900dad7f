/* bench_federated — the tables of the federated comparison (bench/federated/
 * run.sh, docs/benchmarks.md "Federated rules").
 *
 *   bench_federated RUN_DIR...
 *
 * Each RUN_DIR is one `fedlora demo` run: its metrics.jsonl (docs/
 * federation.md: per round the global and per-domain held-out loss where
 * evaluated, the bytes the nodes moved, the round's wall time) and a file
 * RUN of key=value lines written by run.sh (horizon, partition, nodes, rule,
 * seed). Runs that differ only in the seed form a group; per group the
 * tables give the mean and the sample standard deviation over seeds.
 * Markdown on stdout:
 *
 *   1. summary: per group, the global held-out loss of the base, at the last
 *      round and at its best evaluated round, the per-round bytes (round 1,
 *      and the mean of the later rounds) and wall time;
 *   2. curves: the global loss at every evaluated round (mean ± sd);
 *   3. domains: each domain's held-out loss at the last round;
 *   4. domain curves: each domain's held-out loss at every evaluated round
 *      (mean ± sd), one table per setting with a row per domain and rule.
 *
 * Every column is filled in every row ("-" only where a figure has no
 * meaning: the sd of one seed); run.sh --quick checks that. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RUNS 512
#define MAX_ROUNDS 1024
#define MAX_DOMAINS 32
#define KEY_MAX 64

typedef struct {
    char horizon[KEY_MAX], partition[KEY_MAX], rule[KEY_MAX], seed[KEY_MAX];
    int nodes;
    int n_rounds;               /* rounds + 1 (0 is the base) */
    double global[MAX_ROUNDS];  /* NaN: not evaluated */
    double bytes[MAX_ROUNDS];   /* moved by the nodes in the round */
    double elapsed[MAX_ROUNDS]; /* the round's wall time */
    int n_domains;
    char domain[MAX_DOMAINS][KEY_MAX];
    double last_domain[MAX_DOMAINS]; /* at the last evaluated round */
    double *dom;                     /* (MAX_ROUNDS, MAX_DOMAINS) per round, NaN: not evaluated */
} run;

static run runs[MAX_RUNS];
static int n_runs;

static int read_run_file(const char *dir, run *r) {
    char path[4096], line[256];
    snprintf(path, sizeof path, "%s/RUN", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_federated: %s: cannot open (run.sh writes it)\n", path);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char key[KEY_MAX], val[KEY_MAX];
        if (sscanf(line, "%63[^=]=%63s", key, val) != 2) continue;
        if (!strcmp(key, "horizon")) snprintf(r->horizon, KEY_MAX, "%s", val);
        if (!strcmp(key, "partition")) snprintf(r->partition, KEY_MAX, "%s", val);
        if (!strcmp(key, "rule")) snprintf(r->rule, KEY_MAX, "%s", val);
        if (!strcmp(key, "seed")) snprintf(r->seed, KEY_MAX, "%s", val);
        if (!strcmp(key, "nodes")) r->nodes = atoi(val);
    }
    fclose(f);
    if (!r->horizon[0] || !r->partition[0] || !r->rule[0] || r->nodes < 1) {
        fprintf(stderr, "bench_federated: %s: needs horizon, partition, rule and nodes\n", path);
        return -1;
    }
    return 0;
}

/* The column of domain `name` in r, added at its first sight; -1 past
 * MAX_DOMAINS. */
static int domain_index(run *r, const char *name) {
    for (int d = 0; d < r->n_domains; d++)
        if (!strcmp(r->domain[d], name)) return d;
    if (r->n_domains == MAX_DOMAINS) return -1;
    snprintf(r->domain[r->n_domains], KEY_MAX, "%s", name);
    return r->n_domains++;
}

static int read_metrics(const char *dir, run *r) {
    char path[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_federated: %s: cannot open\n", path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    for (int k = 0; k < MAX_ROUNDS; k++) r->global[k] = NAN;
    r->dom = malloc(sizeof(double) * MAX_ROUNDS * MAX_DOMAINS);
    if (!r->dom) {
        fprintf(stderr, "bench_federated: out of memory\n");
        fclose(f);
        return -1;
    }
    for (size_t k = 0; k < (size_t)MAX_ROUNDS * MAX_DOMAINS; k++) r->dom[k] = NAN;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *rd = json_object_get(j, "round");
        if (!json_is_integer(rd) || json_integer_value(rd) < 0 ||
            json_integer_value(rd) >= MAX_ROUNDS) {
            json_decref(j);
            continue;
        }
        int k = (int)json_integer_value(rd);
        json_t *g = json_object_get(j, "global_loss");
        r->global[k] = json_is_number(g) ? json_number_value(g) : NAN;
        r->bytes[k] = json_number_value(json_object_get(j, "bytes"));
        r->elapsed[k] = json_number_value(json_object_get(j, "elapsed_s"));
        json_t *doms = json_object_get(j, "domains");
        if (json_is_number(g) && json_object_size(doms) > 0) {
            const char *name;
            json_t *v;
            json_object_foreach(doms, name, v) {
                int d = domain_index(r, name);
                if (d < 0) continue;
                r->last_domain[d] = json_number_value(v);
                r->dom[(size_t)k * MAX_DOMAINS + d] = json_number_value(v);
            }
        }
        if (k + 1 > r->n_rounds) r->n_rounds = k + 1;
        json_decref(j);
    }
    free(line);
    fclose(f);
    if (r->n_rounds < 2 || !isfinite(r->global[0]) || !isfinite(r->global[r->n_rounds - 1])) {
        fprintf(stderr, "bench_federated: %s: want the base and at least one round, evaluated\n",
                path);
        return -1;
    }
    return 0;
}

static int same_group(const run *a, const run *b) {
    return !strcmp(a->horizon, b->horizon) && !strcmp(a->partition, b->partition) &&
           a->nodes == b->nodes && !strcmp(a->rule, b->rule) && a->n_rounds == b->n_rounds;
}

/* Mean and sample sd of n values (sd NaN for one). */
static void stats(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : NAN;
}

static void print_ms(const double *v, int n, int digits) {
    double m, sd;
    stats(v, n, &m, &sd);
    if (isfinite(sd))
        printf(" %.*f ± %.*f |", digits, m, digits, sd);
    else
        printf(" %.*f ± - |", digits, m);
}

/* The members of run i's group (i its first), into idx; their count. */
static int group_of(int i, int *idx) {
    int n = 0;
    for (int j = 0; j < n_runs; j++)
        if (same_group(&runs[i], &runs[j])) idx[n++] = j;
    return n;
}

static int first_of_group(int i) {
    for (int j = 0; j < i; j++)
        if (same_group(&runs[i], &runs[j])) return 0;
    return 1;
}

static void summary(void) {
    printf("| horizon | partition | universities | rule | seeds | base | last round | best "
           "round (at) | MB round 1 | MB later rounds | s per round |\n");
    printf("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    int idx[MAX_RUNS];
    for (int i = 0; i < n_runs; i++) {
        if (!first_of_group(i)) continue;
        int n = group_of(i, idx), R = runs[i].n_rounds - 1;
        double v[MAX_RUNS], best_at[MAX_RUNS];
        printf("| %s | %s | %d | %s | %d |", runs[i].horizon, runs[i].partition, runs[i].nodes,
               runs[i].rule, n);
        for (int k = 0; k < n; k++) v[k] = runs[idx[k]].global[0];
        print_ms(v, n, 4);
        for (int k = 0; k < n; k++) v[k] = runs[idx[k]].global[R];
        print_ms(v, n, 4);
        /* The best evaluated round of the mean curve. */
        int best = 0;
        double best_mean = INFINITY;
        for (int t = 0; t <= R; t++) {
            double s = 0;
            int ok = 1;
            for (int k = 0; k < n; k++)
                ok &= isfinite(runs[idx[k]].global[t]), s += runs[idx[k]].global[t];
            if (ok && s / n < best_mean) best_mean = s / n, best = t;
        }
        for (int k = 0; k < n; k++) best_at[k] = runs[idx[k]].global[best];
        double m, sd;
        stats(best_at, n, &m, &sd);
        printf(" %.4f (%d) |", m, best);
        for (int k = 0; k < n; k++) v[k] = runs[idx[k]].bytes[1] / 1e6;
        print_ms(v, n, 2);
        for (int k = 0; k < n; k++) {
            double s = 0;
            for (int t = 2; t <= R; t++) s += runs[idx[k]].bytes[t];
            v[k] = R >= 2 ? s / (R - 1) / 1e6 : runs[idx[k]].bytes[1] / 1e6;
        }
        print_ms(v, n, 2);
        for (int k = 0; k < n; k++) {
            double s = 0;
            for (int t = 1; t <= R; t++) s += runs[idx[k]].elapsed[t];
            v[k] = s / R;
        }
        print_ms(v, n, 2);
        printf("\n");
    }
}

/* The rounds at which every run of group i was evaluated. */
static int eval_rounds(int i, const int *idx, int n, int *at) {
    int m = 0;
    for (int t = 0; t < runs[i].n_rounds; t++) {
        int ok = 1;
        for (int k = 0; k < n; k++) ok &= isfinite(runs[idx[k]].global[t]);
        if (ok) at[m++] = t;
    }
    return m;
}

/* Whether groups i and g are of the same setting (a table's rows). */
static int same_setting(int i, int g) {
    return !strcmp(runs[g].horizon, runs[i].horizon) &&
           !strcmp(runs[g].partition, runs[i].partition) && runs[g].nodes == runs[i].nodes &&
           runs[g].n_rounds == runs[i].n_rounds;
}

/* Run r's held-out loss after round t: the global one (domain NULL) or the
 * named domain's; NaN where not evaluated. */
static double loss_at(run *r, int t, const char *domain) {
    if (!domain) return r->global[t];
    int c = domain_index(r, domain);
    return c < 0 ? NAN : r->dom[(size_t)t * MAX_DOMAINS + c];
}

/* One table per setting (horizon, partition, universities), a column per
 * evaluated round: with per_domain, a row per domain and rule, else a row
 * per rule with the global loss. */
static void curve_tables(int per_domain) {
    int idx[MAX_RUNS], at[MAX_ROUNDS];
    for (int i = 0; i < n_runs; i++) {
        if (!first_of_group(i)) continue;
        int head = 1;
        for (int j = 0; j < i && head; j++) head = !same_setting(j, i);
        if (!head) continue;
        int n = group_of(i, idx), m = eval_rounds(i, idx, n, at);
        printf("\n%s, %s, %d universities: %s held-out loss after round (mean ± sd over "
               "seeds)\n\n|%s rule |",
               runs[i].horizon, runs[i].partition, runs[i].nodes,
               per_domain ? "each domain's" : "global", per_domain ? " domain |" : "");
        for (int t = 0; t < m; t++) printf(" %d |", at[t]);
        printf("\n|%s --- |", per_domain ? " --- |" : "");
        for (int t = 0; t < m; t++) printf(" ---: |");
        printf("\n");
        int rows = per_domain ? runs[i].n_domains : 1;
        for (int d = 0; d < rows; d++)
            for (int g = i; g < n_runs; g++) {
                if (!first_of_group(g) || !same_setting(i, g)) continue;
                const char *domain = per_domain ? runs[i].domain[d] : NULL;
                int gi[MAX_RUNS], gn = group_of(g, gi);
                if (domain) printf("| %s ", domain);
                printf("| %s |", runs[g].rule);
                for (int t = 0; t < m; t++) {
                    double v[MAX_RUNS];
                    int ok = 1;
                    for (int k = 0; k < gn; k++)
                        ok &= isfinite(v[k] = loss_at(&runs[gi[k]], at[t], domain));
                    if (ok)
                        print_ms(v, gn, 3);
                    else
                        printf(" - |");
                }
                printf("\n");
            }
    }
}

static void domains(void) {
    printf("\n| horizon | partition | universities | rule | held-out loss per domain at the last "
           "round (mean over seeds) |\n| --- | --- | ---: | --- | --- |\n");
    int idx[MAX_RUNS];
    for (int i = 0; i < n_runs; i++) {
        if (!first_of_group(i)) continue;
        int n = group_of(i, idx);
        printf("| %s | %s | %d | %s |", runs[i].horizon, runs[i].partition, runs[i].nodes,
               runs[i].rule);
        for (int d = 0; d < runs[i].n_domains; d++) {
            double s = 0;
            for (int k = 0; k < n; k++)
                s += runs[idx[k]].last_domain[domain_index(&runs[idx[k]], runs[i].domain[d])];
            printf("%s %s %.3f", d ? "," : "", runs[i].domain[d], s / n);
        }
        printf(" |\n");
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        fprintf(stderr,
                "usage: bench_federated RUN_DIR...\n"
                "Tables (markdown) of `fedlora demo` runs made by bench/federated/run.sh.\n");
        return argc < 2 ? 2 : 0;
    }
    for (int i = 1; i < argc; i++) {
        if (n_runs == MAX_RUNS) {
            fprintf(stderr, "bench_federated: more than %d runs\n", MAX_RUNS);
            return 1;
        }
        run *r = &runs[n_runs];
        memset(r, 0, sizeof *r);
        if (read_run_file(argv[i], r) != 0 || read_metrics(argv[i], r) != 0) return 1;
        n_runs++;
    }
    summary();
    curve_tables(0);
    domains();
    curve_tables(1);
    for (int i = 0; i < n_runs; i++) free(runs[i].dom);
    return 0;
}
