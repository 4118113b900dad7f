/* demo_report — what `fedlora demo` saw in each round, and its SVG report. */
#ifndef FL_CLI_DEMO_REPORT_H
#define FL_CLI_DEMO_REPORT_H

#include "cli/demo_data.h"
#include "cli/harness.h"

#include <stdint.h>

/* One round as the demo watched it (round 0: the base model). */
typedef struct {
    uint64_t round;
    char version[65];   /* the version's SHA-256, hex */
    double global_loss; /* NaN: not evaluated this round (--eval-every) */
    int n_domains;      /* evaluated: the held-out domains' losses */
    double domain_loss[DEMO_DOMAINS_MAX];
    double loss_before[HARNESS_NODES_MAX], loss_after[HARNESS_NODES_MAX]; /* NaN: no receipt */
    uint64_t bytes;                                                       /* moved by the nodes */
    double elapsed;                                                       /* seconds */
} demo_round;

typedef struct {
    const demo_round *hist; /* n_hist rounds, 0 first */
    int n_hist;
    int n_nodes;
    const char *names[HARNESS_NODES_MAX], *domains[HARNESS_NODES_MAX];
    int rounds; /* configured */
} demo_report;

/* Writes the self-contained SVG report (docs/federation.md) to path. */
int demo_report_svg(const char *path, const demo_report *d);

#endif
