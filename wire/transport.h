/* transport — ZeroMQ ROUTER/DEALER helpers with bounds on what comes in.
 *
 * The aggregator binds a ROUTER, each node connects a DEALER. Inbound data is
 * bounded twice: ZMQ_MAXMSGSIZE makes libzmq drop a TCP peer that sends one
 * frame over max_frame (the frame is never buffered whole), and
 * transport_recv() counts frames and bytes of every multipart message and
 * refuses (draining it, so the socket stays in step) one with too many frames
 * or too many bytes: libzmq itself has no limit on frames per message.
 *
 * Requests carry an 8-byte request id frame in front of the payload so that a
 * reply that arrives after its request timed out is recognised and dropped:
 *
 *   DEALER sends        [id][payload 1]...[payload k]
 *   ROUTER receives     [peer][id][payload 1]...[payload k]
 *   ROUTER replies      [peer][id][reply 1]...[reply j]
 *   DEALER receives     [id][reply 1]...[reply j]   (transport_request strips id)
 *
 * A retried request keeps its id, so a late reply to an earlier attempt is an
 * answer to the same question and is accepted. Every zmq call is checked.
 *
 * A transport is an opaque handle on one socket. Sockets and contexts are
 * made and closed here and nowhere else, so that libzmq's types and its
 * error texts stay in one file: the transports of a process share one
 * context (one I/O thread; inproc endpoints need that), made with the first
 * and terminated with the last, unless opts.own_context asks for one of its
 * own. A node talks to the aggregator through wire/client.h, built on this. */
#ifndef FL_WIRE_TRANSPORT_H
#define FL_WIRE_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#define TRANSPORT_FRAMES_MAX 8 /* hard ceiling on transport_limits.max_frames */
#define TRANSPORT_ID_LEN 8     /* request id frame, big-endian u64 */
#define TRANSPORT_PAYLOAD 2    /* index of the first payload frame at the ROUTER */

struct transport_limits {
    size_t max_frames; /* frames in one multipart message, <= TRANSPORT_FRAMES_MAX */
    size_t max_frame;  /* bytes of one frame; also set as ZMQ_MAXMSGSIZE */
    size_t max_total;  /* bytes of all frames of one message */
};

/* CURVE (RFC 26, zmq_curve(7)): the connection is authenticated and
 * encrypted with long-term Curve25519 keys. fedlora's are the identities'
 * X25519 keys (wire/keys.h): the same curve and the same 32-byte encoding,
 * so an identity's kx key IS its CURVE key pair (libsodium clamps the
 * secret as RFC 7748 does; transport_router/dealer check that the secret
 * gives the public key). docs/threat-model.md says what this adds. */
typedef struct {
    uint8_t secret_key[32]; /* this side's: the identity's X25519 private key */
    uint8_t public_key[32]; /* and its public key */
    uint8_t server_key[32]; /* a DEALER: the key the server must prove it holds */
} transport_curve;

struct transport_opts {
    struct transport_limits lim;
    /* NULL: the connection is in the clear. Else CURVE with these keys: a
     * ROUTER is the CURVE server and answers ZAP (RFC 27) requests itself
     * (transport_zap_next), so it gets a context of its own; a DEALER
     * connects only to a server holding server_key, and remembers how its
     * last handshake went (transport_handshake). */
    const transport_curve *curve;
    int linger_ms;            /* ZMQ_LINGER: how long close waits to flush */
    int send_timeout_ms;      /* ZMQ_SNDTIMEO: -1 blocks, 0 never waits */
    int recv_timeout_ms;      /* ZMQ_RCVTIMEO */
    int heartbeat_ivl_ms;     /* ZMQ_HEARTBEAT_IVL: PING every ivl (0: off) */
    int heartbeat_timeout_ms; /* ZMQ_HEARTBEAT_TIMEOUT: drop a peer silent this long after a PING */
    int heartbeat_ttl_ms;     /* ZMQ_HEARTBEAT_TTL: asks the peer to drop us after this */
    int hwm;                  /* ZMQ_SNDHWM and ZMQ_RCVHWM, messages per peer */
    int own_context;          /* 1: a ZeroMQ context of its own (its own I/O thread, as
                                 another process has); 0: the process's shared one */
};

/* Defaults sized for MSG_FRAME_MAX frames: 4 frames, 64 queued messages per
 * peer (so at most ~64 MiB queued per peer and direction), heartbeats every
 * 5 s with a 15 s timeout, 5 s send/receive timeouts, 1 s linger. */
void transport_opts_default(struct transport_opts *o);

typedef struct transport transport;

/* A ROUTER bound to endpoint ("tcp://127.0.0.1:*" picks a free port; see
 * transport_endpoint), with ZMQ_ROUTER_MANDATORY so that sending to a peer
 * that is gone fails instead of vanishing. */
int transport_router(transport **out, const char *endpoint, const struct transport_opts *o);
/* A DEALER connected to endpoint, with ZMQ_IMMEDIATE so that messages are not
 * queued for a connection that is not up (a send then times out instead). */
int transport_dealer(transport **out, const char *endpoint, const struct transport_opts *o);
/* The endpoint a socket last bound to, with the real port. */
int transport_endpoint(transport *t, char *buf, size_t n);
/* Closes the socket; closing the last one of a context terminates it,
 * which waits up to the linger time for messages still queued. NULL is fine. */
int transport_close(transport *t);
/* One of the socket options this file sets, as libzmq reports it
 * ("ZMQ_MAXMSGSIZE", "ZMQ_SNDTIMEO", "ZMQ_HEARTBEAT_IVL", ...): for checks
 * and diagnostics. */
int transport_option(transport *t, const char *name, int64_t *value);

/* Waits up to timeout_ms (-1: for ever) until one of the n transports has a
 * message to receive; ready[i] is set to 1 for those that have one, 0 for the
 * others. Returns how many are ready (0 on timeout), -1 on error. */
int transport_poll(transport *const *t, size_t n, int timeout_ms, int *ready);

struct transport_frame {
    const void *data;
    size_t len;
};

/* Room for one received frame; what it holds is transport.c's business (a
 * libzmq message, checked there to fit). */
struct transport_slot {
    _Alignas(8) unsigned char opaque[64];
};

/* A received multipart message; frames are owned until transport_msg_close. */
struct transport_msg {
    size_t n;     /* frames */
    size_t total; /* bytes in all frames */
    struct transport_slot f[TRANSPORT_FRAMES_MAX];
};

const uint8_t *transport_data(struct transport_msg *m, size_t i);
size_t transport_size(struct transport_msg *m, size_t i);
void transport_msg_close(struct transport_msg *m);

/* Sends n frames as one multipart message, copying them. A send that cannot
 * be queued within ZMQ_SNDTIMEO fails (libzmq decides on the first frame; the
 * rest of an accepted message always follows). */
int transport_send(transport *t, const struct transport_frame *f, size_t n);
/* As transport_send, but the last frame's data, malloc'd by the caller, is
 * handed to libzmq, which sends it without a copy and free()s it once sent.
 * It is freed whatever happens, also when the send fails. */
int transport_send_give(transport *t, const struct transport_frame *f, size_t n);
/* Receives one message within lim. Returns 0 with a message in *m, 1 when
 * ZMQ_RCVTIMEO passed with none (nothing to close), -1 on error or refusal
 * (the refused message has been drained and freed). */
int transport_recv(transport *t, const struct transport_limits *lim, struct transport_msg *m);

/* ---- CURVE: ZAP, peers, handshakes ----------------------------------------- */

/* A ZAP request (RFC 27) as libzmq sends it for a connection in its CURVE
 * handshake: the handler (the aggregator) decides whether the client's key
 * may connect. */
#define TRANSPORT_ZAP_FIELD_MAX 255
struct transport_zap_request {
    uint8_t request_id[TRANSPORT_ZAP_FIELD_MAX]; /* opaque, echoed in the reply */
    size_t request_id_len;
    char address[TRANSPORT_ZAP_FIELD_MAX + 1]; /* the peer's IP address, for the log */
    char mechanism[32];                        /* "CURVE"; anything else is refused */
    uint8_t client_key[32];                    /* the client's long-term public key */
};

/* Parses the n frames of a ZAP request (the REP socket has taken the
 * delimiter): version "1.0", request id, domain, address, routing id,
 * mechanism, and for CURVE exactly one credential of 32 bytes. Every
 * length is checked; -1 with a message naming the frame otherwise. */
int transport_zap_parse(const struct transport_frame *f, size_t n, struct transport_zap_request *q);
/* Takes one pending ZAP request of a CURVE ROUTER without waiting: 0 with
 * *q, 1 when none is pending, -1 on error. A malformed request is answered
 * (status 500) here, and 1 returned. */
int transport_zap_next(transport *router, struct transport_zap_request *q);
/* Answers q: ok (status 200, the connection's User-Id is user_id, which each
 * message from it then carries: transport_msg_user), or not (status 400;
 * the client's handshake fails with ZMQ_EVENT_HANDSHAKE_FAILED_AUTH). */
int transport_zap_reply(transport *router, const struct transport_zap_request *q, int ok,
                        const char *user_id, const char *text);
/* Waits up to timeout_ms (-1: for ever) until the ROUTER has a request
 * (*request = 1) or, for a CURVE ROUTER, a ZAP request (*zap = 1); 0 on
 * timeout or either, -1 on error. */
int transport_serve_wait(transport *router, int timeout_ms, int *request, int *zap);
/* The User-Id the ZAP handler gave the connection a ROUTER received m on,
 * into out: 1 when it has one, 0 when not (no CURVE). */
int transport_msg_user(struct transport_msg *m, char *out, size_t n);
/* Closes the TCP connections of a CURVE ROUTER whose User-Id keep() refuses
 * (a member revoked): those seen carrying a message so far. Closing makes
 * libzmq drop the connection; the client's reconnection meets the ZAP
 * handler again. Returns how many were closed. */
int transport_drop_users(transport *router, int (*keep)(void *arg, const char *user), void *arg);
/* Closes the TCP connection message m came on (a ROUTER's). */
int transport_drop_sender(transport *router, struct transport_msg *m);

/* How a CURVE DEALER's last handshake went. */
enum {
    TRANSPORT_HS_NONE = 0, /* none finished yet (or no CURVE) */
    TRANSPORT_HS_OK,       /* the server proved its key, and took ours */
    TRANSPORT_HS_REFUSED,  /* the server proved its key, and its ZAP handler refused ours */
    TRANSPORT_HS_FAILED,   /* no secure channel: the server does not hold server_key, or
                              speaks no CURVE */
};
/* The state (TRANSPORT_HS_*), and in *detail (may be NULL) libzmq's code:
 * the ZAP status (400) or the ZMTP protocol error. */
int transport_handshake(transport *dealer, int *detail);

/* ---- request/reply with retries ------------------------------------------ */

struct transport_retry {
    int timeout_ms;     /* wait for the reply to one attempt */
    int attempts;       /* attempts in all, >= 1 */
    int backoff_ms;     /* pause before the 2nd attempt; doubles for each next one */
    int backoff_max_ms; /* ceiling on the pause */
};

/* 5 s per attempt, 5 attempts, pauses 0.2, 0.4, 0.8, 1.6 s (before jitter). */
void transport_retry_default(struct transport_retry *rt);
/* The pause after failed attempt `attempt` (0-based): d = min(backoff_max,
 * backoff << attempt), then "equal jitter", uniform in [d/2, d], so that nodes
 * cut off together do not all come back in the same millisecond. rng is
 * util/rng.h's SplitMix64 state (any seed). */
int transport_backoff_ms(const struct transport_retry *rt, int attempt, uint64_t *rng);

/* Sends payload frames f (n <= TRANSPORT_FRAMES_MAX - 1) on a DEALER and
 * waits for the reply with the same request id, retrying as rt says. The
 * reply in *reply holds the payload frames only. Replies to other requests
 * are dropped; a reply over lim is refused and waiting goes on. Fails with
 * "no reply ... after N attempts" when all attempts time out. */
int transport_request(transport *dealer, const struct transport_limits *lim,
                      const struct transport_retry *rt, const struct transport_frame *f, size_t n,
                      struct transport_msg *reply);

/* ROUTER side: receives one request (0, 1 on timeout, -1 as transport_recv)
 * and checks its layout: a peer frame, an id frame of TRANSPORT_ID_LEN bytes,
 * at least one payload frame from index TRANSPORT_PAYLOAD on. */
int transport_serve_recv(transport *router, const struct transport_limits *lim,
                         struct transport_msg *req);
/* Replies to req (which stays owned by the caller) with n payload frames,
 * n <= TRANSPORT_FRAMES_MAX - 2. */
int transport_serve_reply(transport *router, struct transport_msg *req,
                          const struct transport_frame *f, size_t n);

#endif
