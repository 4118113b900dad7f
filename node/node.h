/* node — the university side of the federation (docs/architecture.md, "The
 * federation"; docs/federation.md): `fedlora node --config FILE`.
 *
 * The loop, one request and one reply at a time over a ZeroMQ DEALER:
 *
 *   HELLO ──▶ ROUND r (base version, train config, deadline)
 *         ──▶ sync the base version: when ROUND names a low-rank update
 *             from the version held, fetch that (small) update file and
 *             apply it (lora/update.h), keeping the result only if its
 *             SHA-256 is the base's; otherwise GET_MODEL chunks into
 *             STATE/versions/<hex>/model.safetensors.part, resumed from its
 *             size, SHA-256 checked, then renamed
 *         ──▶ train a fresh adapter on the local data (train/trainer.h; its
 *             checkpoints make a killed training go on where it was), local
 *             held-out loss before and after
 *         ──▶ DELTA payload (wire/payload.h), sealed to the aggregator
 *             (wire/envelope.h) into STATE/outbox/round-<r>.env, durably
 *         ──▶ SUBMIT_BEGIN / SUBMIT_CHUNK… / SUBMIT_END, retried with backoff
 *             until the RECEIPT ──▶ STATE/receipts/round-<r>.json, durably
 *         ──▶ HELLO again until the next round opens, or the aggregator says
 *             the federation is finished (node_run returns NODE_FINISHED).
 *
 * Crash safety: each stage's result is on disk (fsync'd, renamed into place)
 * before the next stage starts, and a restart looks at the stages from the
 * last one back: a receipt means the round is done (never submitted again);
 * a sealed envelope in the outbox is submitted as it is (same message id, so
 * the aggregator counts it once); otherwise the round's training resumes from
 * its last checkpoint. */
#ifndef FL_NODE_NODE_H
#define FL_NODE_NODE_H

#include "wire/envelope.h"
#include "wire/keys.h"
#include "wire/payload.h"

#include <stdint.h>

#define NODE_PATH_MAX 4096
#define NODE_ENDPOINT_MAX 256

/* What `fedlora node --config FILE` reads (every key in docs/federation.md).
 * Relative paths in the file are taken relative to the file's directory. */
typedef struct {
    char keys_dir[NODE_PATH_MAX];                /* "keys.dir" */
    char name[KEYS_NAME_MAX + 1];                /* "keys.name": DIR/NAME.{sign.pem,kx.pem,id} */
    uint8_t consortium[ENVELOPE_CONSORTIUM_LEN]; /* "consortium": payload_consortium_id of it */
    char endpoint[NODE_ENDPOINT_MAX];            /* "aggregator.endpoint": tcp://host:port */
    char aggregator_id[NODE_PATH_MAX];           /* "aggregator.identity": its public .id file */
    int curve; /* "aggregator.curve": CURVE, the aggregator proving aggregator.identity's key
                  and this node its own (1, the default), or in the clear (0) */
    char base_model[NODE_PATH_MAX]; /* "base_model": config.json + tokenizer.json */
    char data[NODE_PATH_MAX];       /* "data": the local training data */
    double eval_fraction;           /* "eval_fraction": local held-out share (0.1) */
    uint64_t seed;                  /* "seed": held-out split, adapters, data order (0) */
    int batch;                      /* "batch": micro-batch override, 0: the round's */
    int threads;                    /* "threads": OpenMP threads, 0: the default */
    char device[16];                /* "device": "cpu" */
    char precision[8];              /* "precision": "auto" (fp32, bf16; docs/federation.md) */
    char state_dir[NODE_PATH_MAX];  /* "state": where everything durable goes */
    int save_every;                 /* "save_every": trainer checkpoint interval (steps) */
    int poll_ms;                    /* "poll_ms": HELLO interval while waiting (1000) */
    int request_timeout_ms;         /* "request_timeout_ms": one attempt (5000) */
    int give_up_s;                  /* "give_up_s": no reply this long: fail (600) */
    uint64_t max_model_bytes;       /* "max_model_bytes": refuse larger versions (64 GiB) */
    /* "consortium" as written (the id above is derived from it). */
    char consortium_name[PAYLOAD_CONSORTIUM_NAME_MAX + 1];
    /* "admin": the consortium admin's identity fingerprint (64 hex digits,
     * spaces allowed), compared out of band: the only key this node trusts to
     * sign rosters (wire/roster.h). Optional: without it nothing is pinned. */
    int has_admin;
    uint8_t admin_fp[KEYS_FP_LEN];
} node_config;

/* Defaults for everything optional (the required keys are left empty). */
void node_config_init(node_config *c);
/* Reads a libconfig file; unknown keys, wrong types and missing required
 * keys are errors naming the key and the file. */
int node_config_load(node_config *c, const char *path);
/* 0 when `device` names one the node can train on ("cpu", "cuda"), else -1
 * saying why; the rule node_config_load applies to "device". Whether the
 * CUDA backend loads and sees a GPU is left to training and `fedlora doctor`. */
int node_config_check_device(const char *device);

enum {
    NODE_FINISHED = 0, /* the aggregator said all rounds are done */
    NODE_STOPPED = 1,  /* a stop was asked for (node_request_stop) */
};

/* Runs the loop until the federation is finished (returns NODE_FINISHED), a
 * stop is asked for (NODE_STOPPED; everything done so far is on disk), or an
 * error (-1, err_msg() says what; the state stays consistent for a restart).
 * Progress lines go to stderr, prefixed with the node's name. */
int node_run(const node_config *c);

/* Async-signal-safe: asks node_run to stop at its next safe point (between
 * requests, chunks or polls). A training in progress cannot be interrupted
 * midway; when `sig` arrives during one, the process exits at once with
 * status 128 + sig, which is safe because training resumes from its last
 * checkpoint and nothing else is half-written. */
void node_request_stop(int sig);
/* The signal that asked for the stop (0: none). */
int node_stop_signal_number(void);

#endif
