/* doctor — checks a node's setup before it joins (`fedlora doctor`,
 * docs/onboarding.md): its config, keys, files, disk, GPU, and what the
 * aggregator says about it. Each check ends in findings; the CLI prints one
 * line per finding,
 *
 *   ok|warn|FAIL  <check>: <what was found> — <what to do>
 *
 * and fails when any finding is FAIL. The checks, in order (a check may give
 * several findings, e.g. one per key file):
 *
 *   config         node_config_load; when it fails nothing else is checked
 *   keys           the private key files: regular, owned by this user, no
 *                  group/other permission bits; the .id matches them
 *   aggregator-id  the aggregator's public identity loads (and its fingerprint)
 *   base-model     config.json parses, tokenizer.json is there
 *   data           the training data is a readable, non-empty file
 *   state          the state directory exists (or can be made) and is writable
 *   disk           free space there >= 3 × the base model (warn below)
 *   gpu            what the device setting and this machine's GPUs allow
 *   reachability   STATUS → STATUS_INFO from aggregator.endpoint within the timeout
 *                  (with CURVE, over a connection keyed by this node's identity)
 *   aggregator-key CURVE: the aggregator proved it holds aggregator.identity's
 *                  key (FAIL when it cannot); in the clear: the identity its
 *                  STATUS_INFO reports is aggregator.identity's (warn: unproven)
 *   consortium     the aggregator's consortium is the config's
 *   membership     the aggregator knows this identity as active (with CURVE a
 *                  key it refuses at the handshake FAILs here, and the checks
 *                  after it are not made)
 *   clock          |aggregator time − local time|: warn > 30 s, FAIL > 300 s
 *   roster         the roster it serves (GET_MODEL by its hash): size, SHA-256,
 *                  format, signed by the admin the config pins, lists this
 *                  identity as active
 *
 * The checks never change anything (the state probe file is removed again),
 * and the aggregator's STATUS changes nothing on its side either. */
#ifndef FL_NODE_DOCTOR_H
#define FL_NODE_DOCTOR_H

#include <stddef.h>

typedef enum { DOCTOR_OK = 0, DOCTOR_WARN = 1, DOCTOR_FAIL = 2 } doctor_status;

#define DOCTOR_CHECK_MAX 24
#define DOCTOR_TEXT_MAX 768

typedef struct {
    doctor_status status;
    char check[DOCTOR_CHECK_MAX]; /* one of the names above */
    char found[DOCTOR_TEXT_MAX];  /* what was found */
    char todo[DOCTOR_TEXT_MAX];   /* what to do about it ("" when nothing) */
} doctor_finding;

typedef struct {
    doctor_finding *v;
    size_t n, cap;
} doctor_report;

typedef struct {
    const char *config; /* the node config file */
    int timeout_ms;     /* how long each request to the aggregator may take */
    /* Called with each finding as soon as it is made (the CLI prints it then,
     * so a slow network check does not hold back the others); may be NULL. */
    void (*on_finding)(const doctor_finding *f, void *arg);
    void *arg;
} doctor_options;

/* Runs every check into r (initialise it to {0}; doctor_report_free after).
 * Returns 0 whatever the findings are; -1 only when memory runs out. */
int doctor_run(const doctor_options *o, doctor_report *r);
void doctor_report_free(doctor_report *r);

/* The worst status among the findings of `check`, or -1 when it has none. */
int doctor_status_of(const doctor_report *r, const char *check);
/* The number of findings with status s. */
size_t doctor_count(const doctor_report *r, doctor_status s);
/* "ok", "warn" or "FAIL". */
const char *doctor_status_name(doctor_status s);
/* The finding's line, as the CLI prints it (without a newline). */
void doctor_format(const doctor_finding *f, char *buf, size_t n);

#endif
