/* client — the node's side of the exchange with the aggregator
 * (docs/protocol.md, "Federation flow") over one DEALER (transport.h):
 *
 *   client_call      one request and its decoded reply, tried again with
 *                    jittered backoff until a reply comes, a stop is asked
 *                    for, or give_up_s have passed without one;
 *   client_download  the chunked, resumable download of a content-addressed
 *                    object (a model version, a low-rank update, a roster):
 *                    GET_MODEL from any offset, each MODEL_CHUNK checked
 *                    against its request.
 *
 * The node (node/node.c, node/sync.c), `fedlora doctor` (one attempt, a short
 * timeout), the benchmarks and the tests all speak to the aggregator through
 * it. Each attempt is one transport_request with its own timeout: retrying
 * here, not inside the transport, lets a stop be noticed between attempts and
 * lets a node wait out an aggregator that restarts from its journal. */
#ifndef FL_WIRE_CLIENT_H
#define FL_WIRE_CLIENT_H

#include "wire/keys.h"
#include "wire/msg.h"

#include <stddef.h>
#include <stdint.h>

typedef struct client client;

typedef struct {
    int timeout_ms;     /* one attempt: the send (the connection may not be up yet) and the reply */
    int give_up_s;      /* retry for this long without a reply; 0: one attempt only */
    int backoff_ms;     /* pause after the first failed attempt; doubles up to backoff_max_ms */
    int backoff_max_ms; /* (with jitter: transport_backoff_ms) */
    int linger_ms;      /* how long closing waits for unsent requests (ZMQ_LINGER) */
    /* CURVE (docs/threat-model.md): this node's identity (its X25519 key is
     * its CURVE key) and the aggregator's X25519 public key, which the
     * aggregator must prove it holds. NULL: the connection is in the clear. */
    const keys_secret *curve_me;
    const uint8_t *curve_server; /* 32 bytes */
    /* Asked between attempts and between chunks: non-zero stops the call
     * (it returns CLIENT_STOPPED). NULL: never. */
    int (*stop)(void *arg);
    /* Told about each failed attempt (0, 1, ...), with why (err_msg()), e.g.
     * for a log line. NULL: quiet. */
    void (*retrying)(void *arg, int attempt, const char *why);
    void *arg;
} client_options;

enum {
    CLIENT_OK = 0,
    CLIENT_STOPPED = 1,  /* opts.stop said so */
    CLIENT_FAILED = -1,  /* no reply (within give_up_s), or the connection failed */
    CLIENT_GARBLED = -2, /* a reply came, but it is not one fedlora message */
    CLIENT_REFUSED = -3, /* client_download: the aggregator answered, but not with the object */
    CLIENT_DENIED = -4,  /* CURVE: the aggregator refused this key, or did not prove its own */
};

/* 5 s per attempt, one attempt, pauses from 0.2 s up to 2 s, 1 s linger. */
void client_options_default(client_options *o);

/* Connects a DEALER to endpoint (the connection itself comes up in the
 * background; the first request waits for it within its timeout). */
int client_open(client **out, const char *endpoint, const client_options *o);
void client_close(client *c);

/* After CLIENT_DENIED: CLIENT_KEY_REFUSED when the aggregator proved its key
 * and refused ours (its roster does not admit it), CLIENT_KEY_UNPROVEN when
 * no secure channel came up (it does not hold curve_server's key, or speaks
 * no CURVE); 0 otherwise. */
enum { CLIENT_KEY_REFUSED = 1, CLIENT_KEY_UNPROVEN = 2 };
int client_denial(client *c);

/* Sends req and decodes the reply into *rep. Blobs in *rep (a chunk's data)
 * point into the client and stay valid until the next call or
 * client_close. Returns CLIENT_OK, CLIENT_STOPPED, CLIENT_FAILED (err_msg:
 * "the aggregator at ... did not answer ... (give_up_s)", or the transport's
 * reason after a single attempt), CLIENT_GARBLED (err_msg says what came) or,
 * with CURVE, CLIENT_DENIED at once when the handshake says the aggregator
 * refuses this key (its roster does not admit it) or does not hold the key
 * it was given (err_msg says which, and what to do). */
int client_call(client *c, const struct msg *req, struct msg *rep);

/* Where client_download puts the bytes: called with each chunk, in order.
 * Non-zero stops the download with CLIENT_FAILED (the sink's err_msg). */
typedef int (*client_sink)(void *arg, const uint8_t *data, size_t len);

/* Downloads the object named by hash from byte `offset` on, chunk by chunk,
 * until its final chunk: a download resumes wherever its bytes so far end.
 * Each MODEL_CHUNK must answer its request: the same hash and offset, the
 * same total every time, not empty unless final (else a server could keep
 * us here for ever), a total of want_total when that is not 0, at most
 * max_total and not below offset. *total (may be NULL) gets the object's
 * size. Returns CLIENT_OK, CLIENT_STOPPED (between chunks), CLIENT_REFUSED
 * ("the aggregator refused GET_MODEL at byte N: <reason> (code C)", or a
 * chunk that breaks the rules above), or what client_call returns. */
int client_download(client *c, const uint8_t hash[MSG_HASH_LEN], uint64_t offset,
                    uint64_t want_total, uint64_t max_total, client_sink sink, void *arg,
                    uint64_t *total);

#endif
