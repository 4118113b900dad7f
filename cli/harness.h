/* harness — a federation of real processes on loopback, as `fedlora demo`
 * runs one and the federation tests (tests/federation/) drive one: the
 * scratch federation's files (a tiny base model made on the spot, keys, the
 * aggregator's and each node's config and data), `fedlora aggregator` and
 * `fedlora node` started as child processes with their logs, waiting on them
 * and on their files, and reading the JSON Lines they write.
 *
 * Layout under the root (docs/federation.md, "fedlora demo"):
 *
 *   base/                      the base model (config.json, model.safetensors,
 *                              tokenizer.json: the byte-level tokenizer), or
 *                              a symbolic link to the one given
 *   keys/                      aggregator.* and <node>.* identities
 *   aggregator/aggregator.cfg, aggregator/state/, aggregator/aggregator.log
 *   nodes/<name>/data.txt, node.cfg, state/, node.log
 *
 * One prefix, harness_. Errors are status codes with err_msg(), as
 * everywhere; nothing here prints except harness_show_tail. */
#ifndef FL_CLI_HARNESS_H
#define FL_CLI_HARNESS_H

#include "node/demo_corpus.h"
#include "wire/keys.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HARNESS_PATH 4096
#define HARNESS_NODES_MAX 16 /* universities of one federation (the demo corpus has eight) */

/* ---- processes ------------------------------------------------------------------ */

typedef struct {
    pid_t pid;  /* > 0 while it may run; 0 once reaped (or never started) */
    int status; /* its wait status once reaped */
} harness_proc;

/* Starts `bin argv[0] argv[1] ...` (argv NULL-terminated; argv[0] is the
 * subcommand, e.g. "node") with stdout and stderr to log, truncated or
 * appended to, and stdin from /dev/null. bin NULL: this very executable
 * (/proc/self/exe). The child gets one OpenMP and one BLAS thread: the
 * processes share the machine. */
int harness_spawn(harness_proc *p, const char *bin, const char *log, int append,
                  const char *const *argv);
/* 1 while the child runs; an exited child is reaped (its status kept). */
int harness_running(harness_proc *p);
/* Waits up to timeout_s for the child to exit: its exit code (128 + N after
 * signal N), or -1 when it still ran (it is then SIGKILLed and reaped). */
int harness_wait(harness_proc *p, double timeout_s);
/* SIGTERM, and SIGKILL when it has not exited within grace_s; reaped. */
void harness_stop(harness_proc *p, double grace_s);
/* 0..255 for an exit, 128 + N for signal N. */
int harness_exit_code(int status);

/* ---- files and time --------------------------------------------------------------- */

double harness_now(void); /* monotonic seconds */
void harness_sleep_ms(int ms);
/* dir/name into out (HARNESS_PATH bytes). */
int harness_join(char *out, const char *dir, const char *name);
int harness_write_text(const char *path, const char *text);
/* The whole file, NUL-terminated (free() it); NULL when it is missing or
 * cannot be read. */
char *harness_read(const char *path);
int harness_copy_file(const char *from, const char *to);
/* rm -r; a missing tree is fine. */
int harness_remove_tree(const char *path);
/* 0 once path exists, -1 after timeout_s. */
int harness_wait_file(const char *path, double timeout_s);
/* SHA-256 of a file in hex (a version's name). */
int harness_hash_file(const char *path, char hex[65]);
/* The last `lines` lines of a log on stderr, under a header naming who. */
void harness_show_tail(const char *who, const char *log, int lines);

/* ---- JSON Lines ------------------------------------------------------------------- */

/* Calls fn for each complete line of path that is a JSON object (a line
 * still being written is left for later; a missing file has none). fn's
 * non-zero stops the walk and is returned. */
int harness_jsonl_each(const char *path, int (*fn)(void *arg, json_t *line), void *arg);
/* The aggregator's metrics line for a round (STATE/metrics.jsonl), or NULL
 * when there is none yet; json_decref it. */
json_t *harness_round_metrics(const char *agg_state, uint64_t round);

/* ---- a scratch federation --------------------------------------------------------- */

/* A fresh identity `name` (keygen's files) in dir. */
int harness_keys(const char *dir, const char *name);

typedef struct {
    const char *consortium;
    const char *header;       /* a comment line for the configs, or NULL */
    int rounds, quorum;       /* quorum 0: every member */
    int deadline_s, linger_s; /* rounds.deadline, rounds.linger */
    const char *below_quorum; /* "wait" or "fail" */
    int steps, rank, batch, seq;
    double lr;
    const char *targets;  /* libconfig list items, e.g. "\"q_proj\", \"v_proj\"" */
    const char *policy;   /* a policy file for the aggregator (docs/policies.md), or NULL */
    const char *arch;     /* the base model's family: init-model's tiny preset of it ("llama") */
    uint64_t model_seed;  /* the base model's weights */
    double init_range;    /* the base model's initializer_range */
    const char *base_dir; /* a base model directory to use instead (config.json,
                             model.safetensors, tokenizer.json), or NULL */
    double eval_fraction; /* the nodes' eval_fraction (0.2) */
    int has_node_seed;    /* write `seed = node_seed;` into every node's config */
    uint64_t node_seed;   /* (node/node.h: held-out split, adapters, data order) */
    int node_poll_ms;     /* the nodes' poll_ms */
    char node_extra[512]; /* more text for every node's config ("" by default) */
    char agg_extra[3 * HARNESS_PATH]; /* more text for the aggregator's config, e.g. its status
                             and eval sections ("" by default) */
} harness_options;

typedef struct {
    char name[KEYS_NAME_MAX + 1];
    const demo_domain *domain; /* NULL when its data is a file (harness_setup_files) */
    char dir[HARNESS_PATH], config[HARNESS_PATH], state[HARNESS_PATH], log[HARNESS_PATH],
        data[HARNESS_PATH];
    harness_proc proc;
} harness_node;

typedef struct {
    harness_options o;
    char root[HARNESS_PATH], base[HARNESS_PATH], keys[HARNESS_PATH];
    char agg_dir[HARNESS_PATH], agg_config[HARNESS_PATH], agg_state[HARNESS_PATH],
        agg_log[HARNESS_PATH];
    char endpoint[512]; /* where the aggregator listens, once started */
    harness_proc agg;
    int n;
    harness_node node[HARNESS_NODES_MAX];
} harness_fed;

/* The demo's settings: a tiny Llama made with initializer_range 0.1 and
 * seed 1 (so that LoRA can move the loss: docs/federation.md), 3 rounds,
 * quorum all, no policy. Callers change what they need. */
void harness_options_default(harness_options *o);

/* Makes the federation under root (created if missing): the base model, an
 * identity for "aggregator" and for each of the n nodes (named uni-<domain>),
 * each node's directory with its domain's training lines as data.txt, and
 * the aggregator's config. The nodes' configs come later
 * (harness_node_config), once the aggregator's endpoint is known. */
int harness_setup(harness_fed *f, const char *root, int n, const demo_domain *const *domains,
                  const harness_options *o);
/* The same with each node's data a file of its own: node i is named
 * names[i] and its data.txt is a symbolic link to data[i] (made absolute). */
int harness_setup_files(harness_fed *f, const char *root, int n, const char *const *names,
                        const char *const *data, const harness_options *o);
/* Starts `fedlora aggregator` (bin as in harness_spawn) and waits up to 30 s
 * for the endpoint it writes (STATE/endpoint) into f->endpoint. */
int harness_start_aggregator(harness_fed *f, const char *bin);
/* Writes node i's config, pointing at endpoint (the aggregator's, or a
 * proxy's); extra: more config text, or NULL. */
int harness_node_config(harness_fed *f, int i, const char *endpoint, const char *extra);
int harness_start_node(harness_fed *f, int i, const char *bin);
/* SIGTERM to every process still running, SIGKILL after grace_s; reaped. */
void harness_stop_all(harness_fed *f, double grace_s);

#endif
