/* transport — ZeroMQ helpers; the frame layout is described in transport.h.
 *
 * Socket options follow zmq_setsockopt(3) of libzmq 4.3: ZMQ_MAXMSGSIZE is an
 * int64_t in bytes and applies per frame on connection-oriented transports
 * (inproc never checks it, so transport_recv checks again); the heartbeat
 * options need libzmq >= 4.2; ZMQ_HEARTBEAT_TTL is kept in deciseconds on the
 * wire, so it must lie in [100, 6553599] ms to mean anything. */
#include "wire/transport.h"

#include "util/clock.h"
#include "util/err.h"
#include "util/rng.h"
#include "wire/msg.h"

#include <errno.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

_Static_assert(sizeof(zmq_msg_t) <= sizeof(struct transport_slot) &&
                   _Alignof(zmq_msg_t) <= _Alignof(struct transport_slot),
               "a libzmq message must fit a transport_slot");

/* Frame i of a received message, as libzmq's message. */
#define FRAME(m, i) ((zmq_msg_t *)(void *)(m)->f[(i)].opaque)

/* A connection a CURVE ROUTER received from: its ZAP User-Id, the fd
 * libzmq reads it from (ZMQ_SRCFD) and the peer's address then, so that a
 * later close hits that connection and no other that reused the fd. */
typedef struct {
    char user[TRANSPORT_ZAP_FIELD_MAX + 1];
    int fd;
    struct sockaddr_storage peer;
    socklen_t peer_len;
} seen_conn;

#define SEEN_MAX 4096 /* connections remembered; the oldest are forgotten first */

struct transport {
    void *ctx, *sock;
    int own_ctx; /* ctx is this transport's own, not the shared one */
    void *zap;   /* a CURVE ROUTER's ZAP handler socket (REP), or NULL */
    void *mon;   /* a CURVE DEALER's monitor (PAIR), or NULL */
    int hs_state, hs_detail;
    int hs_hangups;  /* handshakes in a row the server hung up on */
    seen_conn *seen; /* a CURVE ROUTER's connections, SEEN_MAX at most */
    int nseen;
};

static int zerr(const char *what) {
    return err_set("%s: %s", what, zmq_strerror(zmq_errno()));
}

/* One ZeroMQ context per process, shared by its transports (an inproc
 * endpoint is only reachable within one context), made by the first
 * transport and terminated with the last. opts.own_context gives a
 * transport a context of its own instead. */
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static void *shared_ctx;
static int shared_users;

static void *context_take(int own) {
    if (own) return zmq_ctx_new();
    pthread_mutex_lock(&shared_lock);
    if (!shared_ctx) shared_ctx = zmq_ctx_new();
    void *ctx = shared_ctx;
    if (ctx) shared_users++;
    pthread_mutex_unlock(&shared_lock);
    return ctx;
}

/* Gives the context back; the last user terminates it, which waits for the
 * sockets' linger time. 0, or -1 (err_msg) when zmq_ctx_term fails. */
static int context_give(void *ctx, int own) {
    int last = own;
    if (!own) {
        pthread_mutex_lock(&shared_lock);
        last = --shared_users == 0;
        if (last) shared_ctx = NULL;
        pthread_mutex_unlock(&shared_lock);
    }
    if (!last) return 0;
    /* A signal may cut the wait short (EINTR): ask again. */
    int r;
    while ((r = zmq_ctx_term(ctx)) != 0 && zmq_errno() == EINTR) {
    }
    return r == 0 ? 0 : zerr("zmq_ctx_term");
}

void transport_opts_default(struct transport_opts *o) {
    /* Peer identity (<= 255 bytes) + request id + one message frame. */
    o->curve = NULL;
    o->lim.max_frames = 4;
    o->lim.max_frame = MSG_FRAME_MAX;
    o->lim.max_total = MSG_FRAME_MAX + 1024;
    o->linger_ms = 1000;
    o->send_timeout_ms = 5000;
    o->recv_timeout_ms = 5000;
    o->heartbeat_ivl_ms = 5000;
    o->heartbeat_timeout_ms = 15000;
    o->heartbeat_ttl_ms = 15000;
    o->hwm = 64;
    o->own_context = 0;
}

void transport_retry_default(struct transport_retry *rt) {
    rt->timeout_ms = 5000;
    rt->attempts = 5;
    rt->backoff_ms = 200;
    rt->backoff_max_ms = 10000;
}

static int check_limits(const struct transport_limits *lim) {
    if (lim->max_frames < 1 || lim->max_frames > TRANSPORT_FRAMES_MAX || lim->max_frame < 1 ||
        lim->max_frame > INT64_MAX || lim->max_total < lim->max_frame)
        return err_set("transport limits: need 1 <= max_frames <= %d and 1 <= max_frame <= "
                       "max_total (got %zu, %zu, %zu)",
                       TRANSPORT_FRAMES_MAX, lim->max_frames, lim->max_frame, lim->max_total);
    return 0;
}

static int set_int(void *s, int opt, const char *name, int v) {
    if (zmq_setsockopt(s, opt, &v, sizeof v) != 0) {
        char what[64];
        snprintf(what, sizeof what, "zmq_setsockopt(%s=%d)", name, v);
        return zerr(what);
    }
    return 0;
}
#define SET_INT(s, opt, v) set_int(s, opt, #opt, v)

static int configure(void *s, const struct transport_opts *o) {
    if (check_limits(&o->lim) < 0) return -1;
    if (o->heartbeat_ttl_ms != 0 && (o->heartbeat_ttl_ms < 100 || o->heartbeat_ttl_ms > 6553599))
        return err_set("transport: heartbeat TTL %d ms is outside [100, 6553599]",
                       o->heartbeat_ttl_ms);
    int64_t maxmsg = (int64_t)o->lim.max_frame;
    if (zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0)
        return zerr("zmq_setsockopt(ZMQ_MAXMSGSIZE)");
    if (SET_INT(s, ZMQ_LINGER, o->linger_ms) < 0 ||
        SET_INT(s, ZMQ_SNDTIMEO, o->send_timeout_ms) < 0 ||
        SET_INT(s, ZMQ_RCVTIMEO, o->recv_timeout_ms) < 0 || SET_INT(s, ZMQ_SNDHWM, o->hwm) < 0 ||
        SET_INT(s, ZMQ_RCVHWM, o->hwm) < 0 ||
        SET_INT(s, ZMQ_HEARTBEAT_IVL, o->heartbeat_ivl_ms) < 0 ||
        SET_INT(s, ZMQ_HEARTBEAT_TIMEOUT, o->heartbeat_timeout_ms) < 0 ||
        SET_INT(s, ZMQ_HEARTBEAT_TTL, o->heartbeat_ttl_ms) < 0)
        return -1;
    return 0;
}

/* ---- CURVE ---------------------------------------------------------------- */

static void remember(transport *t, struct transport_msg *m);

#define ZAP_ENDPOINT "inproc://zeromq.zap.01" /* RFC 27: where libzmq asks */

static int set_key(void *s, int opt, const char *name, const uint8_t key[32]) {
    if (zmq_setsockopt(s, opt, key, 32) != 0) {
        char what[64];
        snprintf(what, sizeof what, "zmq_setsockopt(%s)", name);
        return zerr(what);
    }
    return 0;
}

/* The keys a side brings: CURVE must be in this libzmq, and the secret must
 * give the public key (an X25519 key pair is a Curve25519 one: libzmq's
 * own derivation says so, or the identity is not what it claims). */
static int curve_keys(void *s, const transport_curve *c, int server) {
    char z_secret[41], z_public[41], z_derived[41];
    if (!zmq_has("curve"))
        return err_set("this libzmq was built without CURVE (zmq_has(\"curve\") is 0): install "
                       "libzmq with libsodium, as scripts/install-deps.sh does");
    if (!zmq_z85_encode(z_secret, c->secret_key, 32) ||
        !zmq_z85_encode(z_public, c->public_key, 32) || zmq_curve_public(z_derived, z_secret) != 0)
        return zerr("deriving the CURVE public key");
    int same = memcmp(z_derived, z_public, 40) == 0;
    memset(z_secret, 0, sizeof z_secret);
    if (!same)
        return err_set("CURVE: the X25519 private key does not give the identity's public key "
                       "under libzmq's Curve25519; the identity's files do not belong together");
    if (server)
        return SET_INT(s, ZMQ_CURVE_SERVER, 1) < 0 ||
                       set_key(s, ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", c->secret_key) < 0 ||
                       set_key(s, ZMQ_CURVE_PUBLICKEY, "ZMQ_CURVE_PUBLICKEY", c->public_key) < 0
                   ? -1
                   : 0;
    return set_key(s, ZMQ_CURVE_SERVERKEY, "ZMQ_CURVE_SERVERKEY", c->server_key) < 0 ||
                   set_key(s, ZMQ_CURVE_PUBLICKEY, "ZMQ_CURVE_PUBLICKEY", c->public_key) < 0 ||
                   set_key(s, ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", c->secret_key) < 0
               ? -1
               : 0;
}

/* The ZAP handler's socket, bound before the ROUTER binds: libzmq 4.3
 * (without the draft ZMQ_ZAP_ENFORCE_DOMAIN) lets every CURVE client in
 * when no handler is bound, so there must never be a moment without one. */
static int zap_open(transport *t) {
    t->zap = zmq_socket(t->ctx, ZMQ_REP);
    if (!t->zap) return zerr("zmq_socket(ZAP handler)");
    if (SET_INT(t->zap, ZMQ_LINGER, 0) < 0 || SET_INT(t->zap, ZMQ_RCVTIMEO, 0) < 0 ||
        SET_INT(t->zap, ZMQ_SNDTIMEO, 1000) < 0)
        return -1;
    if (zmq_bind(t->zap, ZAP_ENDPOINT) != 0) return zerr("binding the ZAP handler " ZAP_ENDPOINT);
    return 0;
}

/* A DEALER's handshake events (zmq_socket_monitor(3)) go to a PAIR socket
 * transport_handshake reads. */
static int monitor_open(transport *t) {
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://fedlora-monitor-%p", (void *)t);
    int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
    if (zmq_socket_monitor(t->sock, ep, events) != 0) return zerr("zmq_socket_monitor");
    t->mon = zmq_socket(t->ctx, ZMQ_PAIR);
    if (!t->mon) return zerr("zmq_socket(monitor)");
    if (SET_INT(t->mon, ZMQ_LINGER, 0) < 0) return -1;
    if (zmq_connect(t->mon, ep) != 0) return zerr("connecting the socket monitor");
    return 0;
}

/* Closes a transport's sockets (linger 0 for the helpers). */
static void close_all(transport *t, int *rc) {
    if (t->mon) {
        zmq_socket_monitor(t->sock, NULL, 0);
        zmq_close(t->mon);
    }
    if (t->zap) zmq_close(t->zap);
    if (t->sock && zmq_close(t->sock) != 0 && rc && *rc == 0) *rc = zerr("zmq_close");
    free(t->seen);
}

/* Creates a context with a socket of `type`, configures it, then binds or
 * connects: options other than a few (see zmq_setsockopt(3)) only apply to
 * later binds and connects. On failure everything is closed again. */
static int open_socket(int type, const char *endpoint, const struct transport_opts *o,
                       transport **out) {
    *out = NULL;
    transport *t = calloc(1, sizeof *t);
    if (!t) return err_set("out of memory for a transport");
    /* One ZAP handler per context: a CURVE server has a context of its own. */
    t->own_ctx = o->own_context || (o->curve && type == ZMQ_ROUTER);
    t->ctx = context_take(t->own_ctx);
    if (!t->ctx) {
        free(t);
        return zerr("zmq_ctx_new");
    }
    t->sock = zmq_socket(t->ctx, type);
    int rc = t->sock ? configure(t->sock, o) : zerr("zmq_socket");
    if (rc == 0 && type == ZMQ_ROUTER) rc = SET_INT(t->sock, ZMQ_ROUTER_MANDATORY, 1);
    if (rc == 0 && type == ZMQ_DEALER) rc = SET_INT(t->sock, ZMQ_IMMEDIATE, 1);
    if (rc == 0 && o->curve) rc = curve_keys(t->sock, o->curve, type == ZMQ_ROUTER);
    if (rc == 0 && o->curve && type == ZMQ_ROUTER) rc = zap_open(t);
    if (rc == 0 && o->curve && type == ZMQ_DEALER) rc = monitor_open(t);
    if (rc == 0) {
        rc = type == ZMQ_ROUTER ? zmq_bind(t->sock, endpoint) : zmq_connect(t->sock, endpoint);
        if (rc != 0)
            err_set("%s %s: %s", type == ZMQ_ROUTER ? "binding" : "connecting to", endpoint,
                    zmq_strerror(zmq_errno()));
    }
    if (rc != 0) {
        /* The error above is the one worth reporting; nothing was sent, so
         * nothing lingers. */
        char why[ERR_MSG_MAX];
        snprintf(why, sizeof why, "%s", err_msg());
        if (t->sock) {
            int zero = 0;
            zmq_setsockopt(t->sock, ZMQ_LINGER, &zero, sizeof zero);
        }
        close_all(t, NULL);
        context_give(t->ctx, t->own_ctx);
        free(t);
        return err_set("%s", why);
    }
    *out = t;
    return 0;
}

int transport_router(transport **out, const char *endpoint, const struct transport_opts *o) {
    return open_socket(ZMQ_ROUTER, endpoint, o, out);
}

int transport_dealer(transport **out, const char *endpoint, const struct transport_opts *o) {
    return open_socket(ZMQ_DEALER, endpoint, o, out);
}

int transport_endpoint(transport *t, char *buf, size_t n) {
    size_t len = n;
    if (zmq_getsockopt(t->sock, ZMQ_LAST_ENDPOINT, buf, &len) != 0)
        return zerr("zmq_getsockopt(ZMQ_LAST_ENDPOINT)");
    return 0;
}

int transport_close(transport *t) {
    if (!t) return 0;
    int rc = 0;
    close_all(t, &rc);
    if (context_give(t->ctx, t->own_ctx) != 0 && rc == 0) rc = -1;
    free(t);
    return rc;
}

/* The integer options configure() sets, by name, for transport_option. */
static const struct {
    const char *name;
    int opt;
} int_options[] = {
    {"ZMQ_LINGER", ZMQ_LINGER},
    {"ZMQ_SNDTIMEO", ZMQ_SNDTIMEO},
    {"ZMQ_RCVTIMEO", ZMQ_RCVTIMEO},
    {"ZMQ_SNDHWM", ZMQ_SNDHWM},
    {"ZMQ_RCVHWM", ZMQ_RCVHWM},
    {"ZMQ_HEARTBEAT_IVL", ZMQ_HEARTBEAT_IVL},
    {"ZMQ_HEARTBEAT_TIMEOUT", ZMQ_HEARTBEAT_TIMEOUT},
    {"ZMQ_HEARTBEAT_TTL", ZMQ_HEARTBEAT_TTL},
    {"ZMQ_IMMEDIATE", ZMQ_IMMEDIATE},
};

int transport_option(transport *t, const char *name, int64_t *value) {
    if (!strcmp(name, "ZMQ_MAXMSGSIZE")) {
        size_t len = sizeof *value;
        if (zmq_getsockopt(t->sock, ZMQ_MAXMSGSIZE, value, &len) != 0)
            return zerr("zmq_getsockopt(ZMQ_MAXMSGSIZE)");
        return 0;
    }
    for (size_t i = 0; i < sizeof int_options / sizeof int_options[0]; i++) {
        if (strcmp(name, int_options[i].name) != 0) continue;
        int v;
        size_t len = sizeof v;
        if (zmq_getsockopt(t->sock, int_options[i].opt, &v, &len) != 0) {
            char what[64];
            snprintf(what, sizeof what, "zmq_getsockopt(%s)", name);
            return zerr(what);
        }
        *value = v;
        return 0;
    }
    return err_set("transport_option: no option %s", name);
}

int transport_poll(transport *const *t, size_t n, int timeout_ms, int *ready) {
    zmq_pollitem_t items[64];
    if (n > sizeof items / sizeof items[0])
        return err_set("transport_poll: %zu sockets (at most %zu)", n,
                       sizeof items / sizeof items[0]);
    for (size_t i = 0; i < n; i++) items[i] = (zmq_pollitem_t){t[i]->sock, 0, ZMQ_POLLIN, 0};
    int rc;
    do rc = zmq_poll(items, (int)n, timeout_ms);
    while (rc < 0 && zmq_errno() == EINTR);
    if (rc < 0) return zerr("zmq_poll");
    for (size_t i = 0; i < n; i++) ready[i] = (items[i].revents & ZMQ_POLLIN) != 0;
    return rc;
}

const uint8_t *transport_data(struct transport_msg *m, size_t i) {
    return zmq_msg_data(FRAME(m, i));
}

size_t transport_size(struct transport_msg *m, size_t i) {
    return zmq_msg_size(FRAME(m, i));
}

void transport_msg_close(struct transport_msg *m) {
    /* zmq_msg_close only fails (EFAULT) on a message that was never
     * initialised; these all were. */
    for (size_t i = 0; i < m->n; i++) zmq_msg_close(FRAME(m, i));
    m->n = 0;
    m->total = 0;
}

static void free_given(void *data, void *hint) {
    free(data);
}

/* One frame; a given frame's data is freed whatever happens. */
static int send_frame(void *sock, const struct transport_frame *f, int flags, bool give) {
    int rc;
    if (!give) {
        const void *data = f->len ? f->data : "";
        do rc = zmq_send(sock, data, f->len, flags);
        while (rc < 0 && zmq_errno() == EINTR);
        return rc < 0 ? -1 : 0;
    }
    zmq_msg_t m;
    if (zmq_msg_init_data(&m, (void *)f->data, f->len, free_given, NULL) != 0) {
        int e = zmq_errno();
        free((void *)f->data);
        errno = e;
        return -1;
    }
    do rc = zmq_msg_send(&m, sock, flags);
    while (rc < 0 && zmq_errno() == EINTR);
    if (rc < 0) {
        int e = zmq_errno();
        zmq_msg_close(&m); /* frees the data */
        errno = e;
        return -1;
    }
    return 0;
}

static int send_frames(void *sock, const struct transport_frame *f, size_t n, bool give_last) {
    if (n == 0 || n > TRANSPORT_FRAMES_MAX) {
        if (give_last && n > 0) free((void *)f[n - 1].data);
        return err_set("transport_send: %zu frames (1 to %d allowed)", n, TRANSPORT_FRAMES_MAX);
    }
    for (size_t i = 0; i < n; i++) {
        bool last = i + 1 == n;
        if (send_frame(sock, &f[i], last ? 0 : ZMQ_SNDMORE, last && give_last) == 0) continue;
        int e = zmq_errno();
        if (give_last && !last) free((void *)f[n - 1].data); /* never reached libzmq */
        if (e == EAGAIN)
            return err_set("sending frame %zu of %zu: timed out (peer not connected, or its "
                           "queue is full)",
                           i + 1, n);
        if (e == EHOSTUNREACH)
            return err_set("sending frame %zu of %zu: that peer is not connected", i + 1, n);
        return err_set("sending frame %zu of %zu: %s", i + 1, n, zmq_strerror(e));
    }
    return 0;
}

int transport_send(transport *t, const struct transport_frame *f, size_t n) {
    return send_frames(t->sock, f, n, false);
}

int transport_send_give(transport *t, const struct transport_frame *f, size_t n) {
    return send_frames(t->sock, f, n, true);
}

int transport_recv(transport *t, const struct transport_limits *lim, struct transport_msg *m) {
    m->n = 0;
    m->total = 0;
    if (check_limits(lim) < 0) return -1;
    /* Once the first frame is in, libzmq has the whole message (multipart
     * delivery is atomic), so the later receives do not wait. Frames beyond
     * a limit are received and dropped at once: the socket stays in step and
     * nothing piles up here. */
    const char *refusal = NULL;
    size_t frames = 0, bytes = 0;
    for (;;) {
        bool keep = !refusal && m->n < lim->max_frames;
        zmq_msg_t scratch;
        zmq_msg_t *f = keep ? FRAME(m, m->n) : &scratch;
        if (zmq_msg_init(f) != 0) {
            transport_msg_close(m);
            return zerr("zmq_msg_init");
        }
        int rc;
        do rc = zmq_msg_recv(f, t->sock, 0);
        while (rc < 0 && zmq_errno() == EINTR);
        if (rc < 0) {
            int e = zmq_errno();
            zmq_msg_close(f);
            transport_msg_close(m);
            if (e == EAGAIN && frames == 0) return 1;
            return err_set("receiving frame %zu: %s", frames + 1, zmq_strerror(e));
        }
        size_t len = zmq_msg_size(f);
        int more = zmq_msg_more(f);
        frames++;
        bytes += len;
        if (keep) {
            m->n++;
            m->total = bytes;
            if (len > lim->max_frame)
                refusal = "a frame over the size limit";
            else if (bytes > lim->max_total)
                refusal = "too many bytes";
        } else {
            zmq_msg_close(f);
            if (!refusal) refusal = "too many frames";
        }
        if (refusal) transport_msg_close(m);
        if (!more) break;
    }
    if (refusal)
        return err_set("refused a message with %s: %zu frames, %zu bytes (limits: %zu frames, "
                       "%zu bytes per frame, %zu in all)",
                       refusal, frames, bytes, lim->max_frames, lim->max_frame, lim->max_total);
    return 0;
}

/* ---- request/reply --------------------------------------------------------- */

int transport_backoff_ms(const struct transport_retry *rt, int attempt, uint64_t *rng) {
    int64_t d = rt->backoff_ms;
    for (int i = 0; i < attempt && d < rt->backoff_max_ms; i++) d *= 2;
    if (d > rt->backoff_max_ms) d = rt->backoff_max_ms;
    if (d <= 0) return 0;
    int64_t half = d / 2;
    return (int)(d - half + (int64_t)(rng_next(rng) % (uint64_t)(half + 1)));
}

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* Waits up to ms for the reply carrying id. 0: got it (id frame stripped);
 * 1: timed out; -1: a socket error. Dropped replies leave their reason in
 * `dropped` for the final error message. */
static int await_reply(transport *dealer, const struct transport_limits *lim, const uint8_t *id,
                       int ms, struct transport_msg *reply, char *dropped, size_t dn) {
    int64_t deadline = clock_now_ms() + ms;
    for (;;) {
        int64_t left = deadline - clock_now_ms();
        if (left <= 0) return 1;
        zmq_pollitem_t item = {.socket = dealer->sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&item, 1, (long)left);
        if (rc < 0 && zmq_errno() == EINTR) continue;
        if (rc < 0) return zerr("zmq_poll");
        if (rc == 0) return 1;
        rc = transport_recv(dealer, lim, reply);
        if (rc < 0) {
            snprintf(dropped, dn, "%s", err_msg());
            continue;
        }
        if (rc == 1) continue;
        if (reply->n < 2 || transport_size(reply, 0) != TRANSPORT_ID_LEN) {
            snprintf(dropped, dn, "dropped a reply without a request id frame");
            transport_msg_close(reply);
            continue;
        }
        if (memcmp(transport_data(reply, 0), id, TRANSPORT_ID_LEN) != 0) {
            snprintf(dropped, dn, "dropped a late reply to an earlier request");
            transport_msg_close(reply);
            continue;
        }
        /* Strip the id frame: move the payload frames down by one. A move
         * releases the destination's content and leaves the source empty
         * but valid, so every slot stays closable. */
        for (size_t i = 1; i < reply->n; i++) {
            if (zmq_msg_move(FRAME(reply, i - 1), FRAME(reply, i)) != 0) {
                transport_msg_close(reply);
                return zerr("zmq_msg_move");
            }
        }
        zmq_msg_close(FRAME(reply, reply->n - 1)); /* emptied by the last move */
        reply->n--;
        reply->total -= TRANSPORT_ID_LEN;
        return 0;
    }
}

int transport_request(transport *dealer, const struct transport_limits *lim,
                      const struct transport_retry *rt, const struct transport_frame *f, size_t n,
                      struct transport_msg *reply) {
    reply->n = 0;
    reply->total = 0;
    if (n == 0 || n > TRANSPORT_FRAMES_MAX - 1)
        return err_set("transport_request: %zu payload frames (1 to %d allowed)", n,
                       TRANSPORT_FRAMES_MAX - 1);
    if (rt->attempts < 1 || rt->timeout_ms < 1)
        return err_set("transport_request: need at least 1 attempt of at least 1 ms");
    static _Thread_local uint64_t rng;
    if (rng == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rng = ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^
              (uint64_t)(uintptr_t)&rng;
    }
    uint8_t id[TRANSPORT_ID_LEN];
    put_be64(id, rng_next(&rng));
    struct transport_frame frames[TRANSPORT_FRAMES_MAX];
    frames[0] = (struct transport_frame){id, sizeof id};
    memcpy(frames + 1, f, n * sizeof *f);

    char last[ERR_MSG_MAX] = "";
    char dropped[ERR_MSG_MAX] = "";
    for (int attempt = 0; attempt < rt->attempts; attempt++) {
        if (attempt > 0) clock_sleep_ms(transport_backoff_ms(rt, attempt - 1, &rng));
        if (transport_send(dealer, frames, n + 1) < 0) {
            snprintf(last, sizeof last, "%s", err_msg());
            continue;
        }
        int rc = await_reply(dealer, lim, id, rt->timeout_ms, reply, dropped, sizeof dropped);
        if (rc <= 0) return rc;
        snprintf(last, sizeof last, "no reply within %d ms", rt->timeout_ms);
    }
    return err_set("no reply after %d attempts (last: %s%s%s)", rt->attempts, last,
                   *dropped ? "; " : "", dropped);
}

int transport_serve_recv(transport *router, const struct transport_limits *lim,
                         struct transport_msg *req) {
    int rc = transport_recv(router, lim, req);
    if (rc != 0) return rc;
    if (router->zap) remember(router, req);
    if (req->n < TRANSPORT_PAYLOAD + 1 || transport_size(req, 1) != TRANSPORT_ID_LEN) {
        size_t n = req->n;
        transport_msg_close(req);
        return err_set("refused a request of %zu frames: want [peer][%d-byte id][payload...]", n,
                       TRANSPORT_ID_LEN);
    }
    return 0;
}

int transport_serve_reply(transport *router, struct transport_msg *req,
                          const struct transport_frame *f, size_t n) {
    if (n == 0 || n > TRANSPORT_FRAMES_MAX - TRANSPORT_PAYLOAD)
        return err_set("transport_serve_reply: %zu payload frames (1 to %d allowed)", n,
                       TRANSPORT_FRAMES_MAX - TRANSPORT_PAYLOAD);
    if (req->n < TRANSPORT_PAYLOAD)
        return err_set("transport_serve_reply: the request has no peer and id frames");
    struct transport_frame frames[TRANSPORT_FRAMES_MAX];
    frames[0] = (struct transport_frame){transport_data(req, 0), transport_size(req, 0)};
    frames[1] = (struct transport_frame){transport_data(req, 1), transport_size(req, 1)};
    memcpy(frames + TRANSPORT_PAYLOAD, f, n * sizeof *f);
    return transport_send(router, frames, n + TRANSPORT_PAYLOAD);
}

/* ---- CURVE: ZAP, peers, handshakes ------------------------------------------ */

/* Frame i as a string of at most max bytes, NUL-terminated into out. */
static int zap_text(const struct transport_frame *f, size_t i, char *out, size_t max,
                    const char *what) {
    if (f[i].len > max)
        return err_set("ZAP request: frame %zu (%s) has %zu bytes, at most %zu", i, what, f[i].len,
                       max);
    memcpy(out, f[i].data, f[i].len);
    out[f[i].len] = '\0';
    return 0;
}

int transport_zap_parse(const struct transport_frame *f, size_t n,
                        struct transport_zap_request *q) {
    memset(q, 0, sizeof *q);
    /* RFC 27: version, request id, domain, address, identity, mechanism,
     * credentials... (the delimiter is the REP socket's). */
    if (n < 6) return err_set("ZAP request: %zu frames, at least 6 expected", n);
    if (f[0].len != 3 || memcmp(f[0].data, "1.0", 3) != 0)
        return err_set("ZAP request: version frame is not \"1.0\"");
    if (f[1].len > TRANSPORT_ZAP_FIELD_MAX)
        return err_set("ZAP request: a request id of %zu bytes", f[1].len);
    memcpy(q->request_id, f[1].data, f[1].len);
    q->request_id_len = f[1].len;
    char domain[TRANSPORT_ZAP_FIELD_MAX + 1], identity[TRANSPORT_ZAP_FIELD_MAX + 1];
    if (zap_text(f, 2, domain, TRANSPORT_ZAP_FIELD_MAX, "domain") < 0 ||
        zap_text(f, 3, q->address, TRANSPORT_ZAP_FIELD_MAX, "address") < 0 ||
        zap_text(f, 4, identity, TRANSPORT_ZAP_FIELD_MAX, "identity") < 0 ||
        zap_text(f, 5, q->mechanism, sizeof q->mechanism - 1, "mechanism") < 0)
        return -1;
    for (char *c = q->address; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?'; /* for the log */
    if (strcmp(q->mechanism, "CURVE") != 0) return 0; /* refused by the handler, not here */
    if (n != 7 || f[6].len != 32)
        return err_set("ZAP request: CURVE wants one 32-byte key as its credentials, got %zu "
                       "frame(s)%s",
                       n - 6, n == 7 ? " of another size" : "");
    memcpy(q->client_key, f[6].data, 32);
    return 0;
}

static int zap_send(transport *router, const uint8_t *id, size_t id_len, const char *code,
                    const char *text, const char *user) {
    struct transport_frame f[6] = {{"1.0", 3},           {id, id_len},         {code, strlen(code)},
                                   {text, strlen(text)}, {user, strlen(user)}, {"", 0}};
    return send_frames(router->zap, f, 6, false) < 0 ? err_context("answering a ZAP request") : 0;
}

int transport_zap_next(transport *router, struct transport_zap_request *q) {
    if (!router->zap) return err_set("transport_zap_next: not a CURVE ROUTER");
    struct transport_limits lim = {8, 512, 4096};
    struct transport_msg m;
    transport z = {.ctx = router->ctx, .sock = router->zap};
    int rc = transport_recv(&z, &lim, &m);
    if (rc != 0) {
        /* An oversized request was drained; REP still owes an answer. */
        if (rc < 0) zap_send(router, (const uint8_t *)"", 0, "500", "malformed request", "");
        return rc < 0 ? 1 : 1;
    }
    struct transport_frame f[TRANSPORT_FRAMES_MAX];
    for (size_t i = 0; i < m.n; i++)
        f[i] = (struct transport_frame){transport_data(&m, i), transport_size(&m, i)};
    rc = transport_zap_parse(f, m.n, q);
    if (rc < 0) {
        size_t idn = m.n > 1 && f[1].len <= TRANSPORT_ZAP_FIELD_MAX ? f[1].len : 0;
        uint8_t id[TRANSPORT_ZAP_FIELD_MAX];
        if (idn) memcpy(id, f[1].data, idn);
        transport_msg_close(&m);
        zap_send(router, id, idn, "500", "malformed request", "");
        return 1;
    }
    transport_msg_close(&m);
    return 0;
}

int transport_zap_reply(transport *router, const struct transport_zap_request *q, int ok,
                        const char *user_id, const char *text) {
    return zap_send(router, q->request_id, q->request_id_len, ok ? "200" : "400", text ? text : "",
                    ok && user_id ? user_id : "");
}

int transport_serve_wait(transport *router, int timeout_ms, int *request, int *zap) {
    zmq_pollitem_t items[2] = {{router->sock, 0, ZMQ_POLLIN, 0}, {router->zap, 0, ZMQ_POLLIN, 0}};
    int n = router->zap ? 2 : 1, rc;
    do rc = zmq_poll(items, n, timeout_ms);
    while (rc < 0 && zmq_errno() == EINTR);
    if (rc < 0) return zerr("zmq_poll");
    *request = (items[0].revents & ZMQ_POLLIN) != 0;
    *zap = n == 2 && (items[1].revents & ZMQ_POLLIN) != 0;
    return 0;
}

int transport_msg_user(struct transport_msg *m, char *out, size_t n) {
    /* Frame 1 came from the peer (frame 0 is the ROUTER's own prefix), so it
     * carries the connection's metadata. */
    const char *u = m->n > 1 ? zmq_msg_gets(FRAME(m, 1), "User-Id") : NULL;
    if (!u || !*u || strlen(u) >= n) return 0;
    memcpy(out, u, strlen(u) + 1);
    return 1;
}

/* Remembers the connection m came on, with its User-Id (a CURVE ROUTER). */
static void remember(transport *t, struct transport_msg *m) {
    char user[TRANSPORT_ZAP_FIELD_MAX + 1];
    int fd = m->n > 1 ? zmq_msg_get(FRAME(m, 1), ZMQ_SRCFD) : -1;
    if (fd < 0 || !transport_msg_user(m, user, sizeof user)) return;
    for (int i = 0; i < t->nseen; i++)
        if (t->seen[i].fd == fd && !strcmp(t->seen[i].user, user)) return;
    if (!t->seen && !(t->seen = calloc(SEEN_MAX, sizeof *t->seen))) return;
    if (t->nseen == SEEN_MAX) memmove(t->seen, t->seen + 1, --t->nseen * sizeof *t->seen);
    seen_conn *c = &t->seen[t->nseen];
    c->peer_len = sizeof c->peer;
    if (getpeername(fd, (struct sockaddr *)&c->peer, &c->peer_len) != 0) return;
    snprintf(c->user, sizeof c->user, "%s", user);
    c->fd = fd;
    t->nseen++;
}

/* shutdown(2) of connection c, if fd c->fd is still that connection (the
 * same peer address): libzmq's I/O thread sees the end and drops it. */
static int close_conn(const seen_conn *c) {
    struct sockaddr_storage now;
    socklen_t len = sizeof now;
    if (getpeername(c->fd, (struct sockaddr *)&now, &len) != 0 || len != c->peer_len ||
        memcmp(&now, &c->peer, len) != 0)
        return 0; /* gone already */
    return shutdown(c->fd, SHUT_RDWR) == 0;
}

int transport_drop_users(transport *router, int (*keep)(void *arg, const char *user), void *arg) {
    int dropped = 0;
    for (int i = 0; i < router->nseen;) {
        if (keep(arg, router->seen[i].user)) {
            i++;
            continue;
        }
        dropped += close_conn(&router->seen[i]);
        router->seen[i] = router->seen[--router->nseen];
    }
    return dropped;
}

int transport_drop_sender(transport *router, struct transport_msg *m) {
    int fd = m->n > 1 ? zmq_msg_get(FRAME(m, 1), ZMQ_SRCFD) : -1;
    if (fd < 0) return 0;
    seen_conn c = {.fd = fd, .peer_len = sizeof c.peer};
    if (getpeername(fd, (struct sockaddr *)&c.peer, &c.peer_len) != 0) return 0;
    for (int i = 0; i < router->nseen;)
        if (router->seen[i].fd == fd)
            router->seen[i] = router->seen[--router->nseen];
        else
            i++;
    return close_conn(&c);
}

int transport_handshake(transport *t, int *detail) {
    /* Each event is two frames: 6 bytes (u16 event, u32 value, host
     * order) and the endpoint (zmq_socket_monitor(3)). */
    while (t->mon) {
        zmq_msg_t ev, ep;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, t->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            break;
        }
        int more = zmq_msg_more(&ev);
        if (zmq_msg_size(&ev) == 6) {
            uint16_t event;
            uint32_t value;
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (uint8_t *)zmq_msg_data(&ev) + 2, 4);
            /* What a client sees (libzmq 4.3.4, measured): ZAP's refusal
             * arrives as FAILED_AUTH with the status (400); a server that
             * cannot open our HELLO (it does not hold server_key) just hangs
             * up: FAILED_NO_DETAIL with EPIPE or ECONNRESET; a server
             * without CURVE: FAILED_PROTOCOL (mechanism mismatch). A hang-up
             * also comes from a server killed mid-handshake, so only two in
             * a row count; a timeout (a busy server) never does. */
            if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
                t->hs_state = TRANSPORT_HS_OK;
                t->hs_hangups = 0;
            } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
                t->hs_state = TRANSPORT_HS_REFUSED;
                t->hs_detail = (int)value;
            } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
                t->hs_state = TRANSPORT_HS_FAILED;
                t->hs_detail = (int)value;
            } else if ((value == EPIPE || value == ECONNRESET) && ++t->hs_hangups >= 2) {
                t->hs_state = TRANSPORT_HS_FAILED;
                t->hs_detail = (int)value;
            }
        }
        zmq_msg_close(&ev);
        while (more) { /* the endpoint frame */
            zmq_msg_init(&ep);
            if (zmq_msg_recv(&ep, t->mon, ZMQ_DONTWAIT) < 0)
                more = 0;
            else
                more = zmq_msg_more(&ep);
            zmq_msg_close(&ep);
        }
    }
    if (detail) *detail = t->hs_detail;
    return t->hs_state;
}
