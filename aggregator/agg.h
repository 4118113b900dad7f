/* agg — the consortium side of the federation: `fedlora aggregator`.
 *
 * One process, one thread, one ZeroMQ ROUTER. Each request from a node gets
 * exactly one reply (docs/protocol.md, "Federation flow"). Rounds move
 * through a state machine, every transition of which is a journal record
 * (journal.h) written (fsync'd) before anything depends on it, then applied
 * to the state by the same function that replays the journal at start:
 *
 *   OPEN ──first accepted delta──▶ COLLECTING ──quorum and (all members, or
 *   the deadline)──▶ AGGREGATING ──new version in the store──▶ PUBLISHED ──▶
 *   OPEN (round r+1), or FINISHED after the last round.
 *
 *   A round that ends without a new version (below the quorum at the
 *   deadline with below_quorum = "fail", or too many deltas dropped by the
 *   policy) goes to FAILED instead of PUBLISHED, and on the same way: the
 *   next round trains on the same base.
 *
 * Between calls the machine is at rest: agg_open and agg_tick return with
 * the round OPEN, COLLECTING or FINISHED (they carry a closed round through
 * its aggregation and open the next one before returning), and agg_handle
 * only moves OPEN to COLLECTING. So no request ever finds a round being
 * aggregated.
 *
 * Durability: a submission is assembled in STATE/inbox/<msgid>.part, checked
 * (digest, envelope header and signature, then opened and its DELTA checked
 * against the base: round, base version, shapes, finite values), renamed to
 * STATE/inbox/r<round>-<member>.env, the directory fsync'd, and journaled
 * ("accept") BEFORE the RECEIPT goes out; the envelope stays sealed at rest.
 * On restart the journal is replayed and the round goes on where it was.
 * Aggregation reads the accepted envelopes in member name order and merges
 * deterministically (merge.h), so a crash anywhere ends in the same bytes.
 *
 * Memory: the round's base model (O(model)) plus the accepted adapters
 * (rank r each, small next to the model); never a dense delta per member. */
#ifndef FL_AGGREGATOR_AGG_H
#define FL_AGGREGATOR_AGG_H

#include "aggregator/config.h"
#include "aggregator/merge.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    AGG_OPEN = 1,    /* round r open, nothing accepted yet */
    AGG_COLLECTING,  /* at least one delta accepted */
    AGG_AGGREGATING, /* closed: no more submissions; merging */
    AGG_PUBLISHED,   /* version of round r in the store; next round not open yet */
    AGG_FINISHED,    /* the last configured round is over */
    AGG_FAILED,      /* round r ended without a new version; next round not open yet */
} agg_state;

const char *agg_state_name(agg_state s);

typedef struct agg agg;

/* Loads keys and members, takes the state directory's lock, replays the
 * journal (or starts a new one: the base model is imported into the store and
 * round 1 opens) and brings the round to rest: an aggregation that a crash
 * interrupted is done again (the same bytes) and the next round opened. `now`
 * is unix time in seconds (deadlines are set from it). */
int agg_open(agg **out, const agg_config *c, uint64_t now);
void agg_close(agg *a);

/* Replaces the aggregation policy (default: the config's policy file through
 * hooks.h, or agg_policy_default() without one). */
void agg_set_policy(agg *a, const agg_policy *p);

/* Who sent a request, as the transport knows it: the connection it came on
 * (the ROUTER's routing id), and, when the transport authenticated the
 * connection's key (CURVE, docs/threat-model.md), whose key that is. A
 * member's HELLO, verified, opens a session for its connection; only a
 * session may upload (docs/protocol.md, "Uploads"). */
typedef struct {
    const void *id; /* the connection: 1..255 bytes */
    size_t id_len;
    int authenticated;       /* the key below was proven by the transport */
    uint8_t fp[KEYS_FP_LEN]; /* its owner's identity fingerprint */
} agg_peer;

/* Handles one request (an encoded message) from peer (NULL: a connection
 * with no id, which can ask but never upload) and makes the encoded reply
 * (*reply malloc'd). Bad input from a node never fails this call: it gets an
 * ERROR reply and a log line; a full disk refuses the upload it hits. -1
 * only when the aggregator cannot go on (the journal cannot be written):
 * the caller stops. */
int agg_handle(agg *a, const agg_peer *peer, const void *req, size_t len, uint64_t now,
               uint8_t **reply, size_t *reply_len);

/* Moves the state machine on at time now: closes a round that is due,
 * aggregates, publishes, opens the next round. -1 on a failure that stops
 * the aggregator (the journal keeps the state for a restart). */
int agg_tick(agg *a, uint64_t now);

agg_state agg_get_state(const agg *a);
uint64_t agg_current_round(const agg *a);
/* The version the current round trains on (in FINISHED: the final one). */
void agg_current_base(const agg *a, uint8_t hash[32]);
/* Deltas accepted for the current round. */
int agg_accepted_count(const agg *a);

/* The aggregator's socket, bound to the config's address: with CURVE (the
 * default) keyed by the aggregator's identity, its ZAP handler (served by
 * agg_run) admitting only the active members and observers of the roster
 * in force. Bound before agg_open writes anything, so that a port in use
 * fails before a new federation is journaled. */
typedef struct agg_listener agg_listener;
int agg_listen(agg_listener **out, const agg_config *c);
void agg_listener_close(agg_listener *l);

/* Serves on l until the federation is finished (and its linger time has
 * passed, or 2 s after every member was told), or SIGTERM/SIGINT arrive:
 * then the current request is finished and it returns 0. The bound
 * endpoint (with the real port) is written to STATE/endpoint. With CURVE,
 * a ZAP request is answered from the roster in force, each request carries
 * its connection's proven key (agg_peer), and a roster change closes the
 * connections of keys it no longer admits. */
int agg_run(agg *a, agg_listener *l);
/* Async-signal-safe: asks agg_run to stop after the current request. */
void agg_request_stop(void);

/* Re-derives round `round`'s model offline from the stored base version and
 * the sealed deltas the journal accepted for it, exactly as the live
 * aggregation did: under the config's policy file when it names one
 * (hooks.h), else agg_policy_default(); into out_dir (config.json +
 * model.safetensors); hash gets the SHA-256 of the model file. Reads the
 * state directory only. With DP in production mode it needs the round's
 * stored noise key, which exists only until the round is published: a
 * published DP round is refused with a message that says so. */
int agg_recompute(const agg_config *c, uint64_t round, const char *out_dir, uint8_t hash[32]);

#endif
