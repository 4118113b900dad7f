/* demo_corpus — the private corpora `fedlora demo` hands its nodes, compiled
 * in from examples/corpus (node/embed_corpus.cmake): one domain per node,
 * each with training lines (examples/corpus/<domain>.txt) and held-out lines
 * (examples/corpus/heldout/<domain>.txt) that are disjoint from them; the
 * held-out lines of all the demo's domains together are its global eval set.
 * Every line is one document (plain-text data, data/dataset.h). */
#ifndef FL_NODE_DEMO_CORPUS_H
#define FL_NODE_DEMO_CORPUS_H

typedef struct {
    const char *name;    /* "astronomy", ... */
    const char *train;   /* NUL-terminated text */
    const char *heldout; /* NUL-terminated text */
} demo_domain;

/* In name order. */
extern const demo_domain demo_domains[];
extern const int demo_num_domains;

#endif
