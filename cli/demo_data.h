/* demo_data — what a `fedlora demo` federation trains on and is judged on:
 * the built-in toy corpora (node/demo_corpus.h), or a partition made by
 * bench/data/partition (docs/corpora.md):
 *
 *   DIR/uni-<name>/train.txt     one university's training text
 *   DIR/heldout/<domain>.txt     each domain's held-out text
 *   DIR/PARTITION                who holds what (read for each university's
 *                                domain: the one it holds documents of, or
 *                                "mixed")
 *
 * The demo evaluates every version on each domain's held-out text; the
 * global loss is the token-weighted mean of the domains' losses. */
#ifndef FL_CLI_DEMO_DATA_H
#define FL_CLI_DEMO_DATA_H

#include "cli/harness.h"

#define DEMO_DOMAINS_MAX 32
#define DEMO_LABEL_MAX 64

typedef struct {
    int n; /* universities, in name order */
    char name[HARNESS_NODES_MAX][KEYS_NAME_MAX + 1];
    char label[HARNESS_NODES_MAX][DEMO_LABEL_MAX]; /* its domain, or "mixed" */
    char train[HARNESS_NODES_MAX][HARNESS_PATH];
    int n_domains; /* held-out domains, in name order */
    char domain[DEMO_DOMAINS_MAX][DEMO_LABEL_MAX];
    char heldout[DEMO_DOMAINS_MAX][HARNESS_PATH];
} demo_data;

/* Reads the partition in dir: every uni-* directory with a train.txt, every
 * heldout/<domain>.txt. Refuses (naming what is wrong and how to make a
 * partition) a directory without universities or held-out files, more than
 * HARNESS_NODES_MAX universities, names that are not node names. */
int demo_data_partition(demo_data *d, const char *dir);

#endif
