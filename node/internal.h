/* node internals shared by node.c (loop, requests, submission), sync.c (model
 * versions), round.c (local training, sealing) and state.c (durable records).
 *
 * STATE layout (docs/federation.md):
 *   versions/<hex>/config.json, model.safetensors   a verified model version, or
 *   versions/<hex>/model-NNNNN-of-MMMMM.safetensors,
 *                 model.safetensors.index.json      a sharded one (wire/version.h)
 *   versions/<hex>/model.safetensors.part           a download in progress (or the
 *                 model.safetensors.index.json.part  index's, verified, while the
 *                 model-NNNNN-of-MMMMM.safetensors.part  shards come)
 *   versions/<hex>/update.safetensors.part          a low-rank update download in progress
 *   versions/<hex>/lowrank.tmp/                     the version made from it, unchecked
 *   current.json                                    {"round", "version"} last synced
 *   rounds/<r>/train/                               the round's trainer output
 *   outbox/round-<r>.json, round-<r>.env            a sealed, not yet receipted delta
 *   receipts/round-<r>.json                         the aggregator's receipt
 *   metrics.jsonl                                   one line per receipted round */
#ifndef FL_NODE_INTERNAL_H
#define FL_NODE_INTERNAL_H

#include "lora/lora.h"
#include "node/node.h"
#include "util/hex.h"
#include "wire/client.h"
#include "wire/msg.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define NODE_SYNC_MAX 8 /* bytes of a sync method name and its NUL */

/* What a round's sealed delta carries beside the envelope, and what the
 * receipt adds (the metrics of one round; docs/federation.md). */
typedef struct {
    uint64_t round;
    uint8_t base[MSG_HASH_LEN];
    uint8_t msgid[MSG_ID_LEN];
    uint8_t digest[MSG_HASH_LEN]; /* SHA-256 of the envelope file */
    uint64_t envelope_bytes;
    double loss_before, loss_after; /* local held-out loss */
    uint64_t tokens, examples;
    double train_s;
    uint64_t download_bytes;  /* model bytes fetched for this round */
    uint64_t upload_bytes;    /* envelope bytes sent (all attempts) */
    uint64_t receipt_time;    /* RECEIPT "time", 0 until then */
    char sync[NODE_SYNC_MAX]; /* how the base was synced (node_ctx.sync_method) */
} node_round_record;

typedef struct {
    const node_config *c;
    keys_secret me;
    keys_public agg;
    uint8_t fp[KEYS_FP_LEN]; /* our identity's fingerprint */
    client *cl;              /* to the aggregator */
    /* The newest version held (HELLO's have_round / have_version). */
    int have_model;
    uint64_t have_round;
    uint8_t have_version[MSG_HASH_LEN];
    /* The round whose download counter below is running. */
    uint64_t counting_round;
    uint64_t download_bytes;
    /* How round sync_round's base came (node_sync): "held" (it was here
     * already), "lowrank" (made from the previous version and the round's
     * low-rank update), "full" (downloaded). */
    uint64_t sync_round;
    char sync_method[NODE_SYNC_MAX];
} node_ctx;

/* Set by node_request_stop; checked at every safe point. */
extern volatile sig_atomic_t node_stop_signal;
/* Non-zero while the trainer runs (a stop then exits at once). */
extern volatile sig_atomic_t node_in_training;

/* "<UTC time> node NAME: " + the message, a line on stderr. */
void node_log(const node_ctx *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sleeps ms milliseconds in short slices; returns 1 when a stop was asked. */
int node_sleep(int ms);

/* What a member refused with NOT_MEMBER should do, from the reason's first
 * word ("revoked", "rotated", or not on the roster at all). */
const char *node_not_member_hint(const char *reason);

/* One request, one reply, through the client (wire/client.h): retried with
 * jittered backoff until a reply comes, a log line on the first failed
 * attempt and every tenth. *rep's blobs stay valid until the next call.
 * Returns 0 with a reply, 1 when a stop was asked, -1 on failure (also after
 * give_up_s without any reply, or a reply that is not a fedlora message).
 * The callers count the bytes they move. */
int node_call(node_ctx *n, const struct msg *req, struct msg *rep);

/* ---- sync.c ---------------------------------------------------------------- */
/* STATE/versions/<hex of version> into dir (NODE_PATH_MAX). */
int node_version_dir(const node_ctx *n, const uint8_t version[MSG_HASH_LEN], char *dir);
/* Makes round r's base version a verified directory under STATE/versions.
 * When the ROUND offers a low-rank update and the node holds its
 * update_from version, the base is made from that and the update (fetched
 * into a resumable .part file, SHA-256 checked, written with
 * update_write_version, sealed, its hash checked); otherwise, or when any of
 * that fails (one log line says why), it is downloaded: GET_MODEL chunks
 * into .part files, resumed from their size, each SHA-256 checked (a
 * sharded version: its index, then each shard by the hash the index gives,
 * the index renamed into place last). config.json comes from the base model
 * dir. 0 ok, 1 stop, -1 error. */
int node_sync(node_ctx *n, const struct msg_round *r);
/* Reads current.json (if any) into have_*. */
int node_load_current(node_ctx *n);
/* Fetches the object named hash (exactly `size` bytes) into the file part,
 * GET_MODEL from part's size on (the bytes count as the round's download),
 * and checks that the whole file hashes to it; a .part that holds something
 * else is fetched again once. `what` names the object in messages. 0 part
 * holds exactly the object, 1 stop asked, -1 error. */
int node_fetch_object(node_ctx *n, const uint8_t hash[MSG_HASH_LEN], const char *part,
                      uint64_t size, const char *what);

/* ---- sync_choice.c --------------------------------------------------------- */
/* Whether round r's base is cheaper to make from the low-rank update than to
 * download: 1 unless the ROUND says both sizes and the update is not
 * smaller than the version (an exact merge of many members has rank Σ r_i,
 * and (out + in)·Σ r_i can pass out·in: docs/federation.md). A 0 is
 * logged. */
int node_sync_prefer_update(const node_ctx *n, const struct msg_round *r);

/* ---- start.c --------------------------------------------------------------- */
/* Round r's start adapter, when the ROUND hands one out: made from
 * start_seed with lora_create on the round's base (synced already: its
 * shapes) or fetched with GET_MODEL, its SHA-256 checked against start_hash
 * either way, kept as rounds/<r>/start.safetensors. 0 ok (or none handed
 * out), 1 stop asked, -1 error. */
int node_start_fetch(node_ctx *n, const struct msg_round *r);
/* Copies the fetched start into s (made by lora_create for the round on m)
 * and offsets m's adapted weights by −s·B0·A0 where B0 != 0, so training
 * starts from the round's base itself (docs/protocol.md, "Start
 * adapters"). Nothing when the ROUND hands no start out (s keeps its own
 * fresh values). 0 ok, -1 error. */
int node_start_apply(node_ctx *n, const struct msg_round *r, model *m, lora_set *s);

/* ---- round.c --------------------------------------------------------------- */
/* Trains round r's adapter on its base (already synced), builds and seals the
 * DELTA, and writes outbox/round-<r>.json then outbox/round-<r>.env.
 * 0 ok, -1 error. */
int node_train_and_seal(node_ctx *n, const struct msg_round *r);
/* 1 when round r's outbox envelope is signed with this node's current
 * keys, 0 when with other keys (a rotation since), -1 on failure. */
int node_outbox_signed_by_me(node_ctx *n, uint64_t round);
/* Seals round r's kept payload again with the current keys (a new message
 * id) and rewrites its outbox files. */
int node_reseal(node_ctx *n, uint64_t round);

/* ---- state.c --------------------------------------------------------------- */
/* Paths of a round's records, into out (NODE_PATH_MAX). */
int node_path(const node_ctx *n, char *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Writes / reads a round record as JSON, atomically. */
int node_record_write(const char *path, const node_round_record *r);
int node_record_read(const char *path, node_round_record *r);
/* Appends one line to STATE/metrics.jsonl and fsyncs it. */
int node_metrics_append(const node_ctx *n, const node_round_record *r);

#endif
