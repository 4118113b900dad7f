/* node init — everything a new university needs to run a node, made in one
 * directory (`fedlora node init`, docs/onboarding.md):
 *
 *   DIR/node.cfg                 the node config (node_config_load reads it),
 *                                every required key with a comment
 *   DIR/keys/NAME.sign.pem       private keys, mode 0600, in a 0700 directory
 *   DIR/keys/NAME.kx.pem         (as `fedlora keygen` makes them, wire/keys.h)
 *   DIR/keys/NAME.id             the public identity: sent to the admin
 *   DIR/aggregator.id            a copy of the aggregator's public identity
 *   DIR/state/                   the node's state directory, mode 0700
 *
 * Nothing existing is overwritten: when any of these files exists, nothing is
 * made. A failure halfway removes what this call made. The values are checked
 * first (one option at a time, so that a prompt can ask again), and the
 * written config is loaded with node_config_load before it is put in place. */
#ifndef FL_NODE_INIT_H
#define FL_NODE_INIT_H

#include "node/node.h"
#include "wire/keys.h"

#include <stddef.h>

/* The options, one per command-line flag (NULL: not given). */
typedef struct {
    const char *name;          /* --name: member name, keys_name_check rules */
    const char *out;           /* --out: the node's directory (made if missing) */
    const char *consortium;    /* --consortium: the consortium's name */
    const char *aggregator;    /* --aggregator: tcp://HOST:PORT (or ipc://PATH) */
    const char *aggregator_id; /* --aggregator-id: the aggregator's .id file */
    const char *admin;         /* --admin: the admin's fingerprint, 64 hex, spaces allowed */
    const char *base_model;    /* --base-model: directory with config.json, tokenizer.json */
    const char *data;          /* --data: the local training data file */
    const char *device;        /* --device: "cpu" (NULL: "cpu") */
} node_init_options;

/* One option: its flag (without "--"), whether it must be given, the
 * question a prompt asks, and where its value lives in node_init_options. */
typedef struct {
    const char *flag;
    int required;
    const char *prompt;
    size_t offset;
} node_init_field;

#define NODE_INIT_FIELDS 9
extern const node_init_field node_init_fields[NODE_INIT_FIELDS];

/* The value slot of field f in o. */
const char **node_init_slot(node_init_options *o, const node_init_field *f);

/* Checks one value of field f: the name's rules, a consortium name, an
 * endpoint, an .id file that loads, a fingerprint, a base model directory
 * holding config.json, a data file, a device. The error names the flag. */
int node_init_check(const node_init_field *f, const char *value);

/* Writes the flags of the required options that are missing (NULL or empty)
 * into list as "--name, --data" (truncated to n); returns how many. */
int node_init_missing(const node_init_options *o, char *list, size_t n);

/* What node_init_create made. */
typedef struct {
    char config[NODE_PATH_MAX];  /* DIR/node.cfg */
    char id_file[NODE_PATH_MAX]; /* DIR/keys/NAME.id */
    uint8_t fp[KEYS_FP_LEN];     /* this node's identity fingerprint */
    uint8_t agg_fp[KEYS_FP_LEN]; /* the aggregator's */
} node_init_result;

/* Checks every option (node_init_missing, node_init_check), then makes the
 * directory described at the top. Fails, making nothing, when any target
 * file exists. */
int node_init_create(const node_init_options *o, node_init_result *res);

#endif
