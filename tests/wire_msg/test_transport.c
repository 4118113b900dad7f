/* wire_transport: ROUTER/DEALER helpers over real sockets (tcp on 127.0.0.1
 * with an ephemeral port, and inproc): a request/reply of real messages,
 * retries after a lost request, a late reply to an earlier request dropped,
 * oversized frames refused (by libzmq's ZMQ_MAXMSGSIZE on tcp and by our own
 * check on inproc, which libzmq does not check), too many frames and too many
 * bytes refused with the socket left in step, malformed requests, unroutable
 * replies, and the backoff schedule. No timing is asserted: timeouts only
 * decide which branch runs. */
#include "tests/check.h"
#include "util/err.h"
#include "wire/msg.h"
#include "wire/transport.h"

#include <pthread.h>
#include <stdlib.h>

static struct transport_opts test_opts(void) {
    struct transport_opts o;
    transport_opts_default(&o);
    o.linger_ms = 0;
    o.recv_timeout_ms = 5000;
    return o;
}

/* A router on tcp://127.0.0.1:<free port> and a dealer connected to it. */
static int tcp_pair(const struct transport_opts *ro, transport **router, transport **dealer,
                    char *ep, size_t n) {
    struct transport_opts d = test_opts();
    if (transport_router(router, "tcp://127.0.0.1:*", ro) < 0) return -1;
    if (transport_endpoint(*router, ep, n) < 0) return -1;
    return transport_dealer(dealer, ep, &d);
}

/* ---- a scripted server thread --------------------------------------------------- */

enum script { ECHO_HELLO, DROP_FIRST, STALE_FIRST };

struct server {
    transport *router;
    enum script script;
    int requests;                     /* requests received */
    uint8_t ids[2][TRANSPORT_ID_LEN]; /* ids of the first two */
    char error[ERR_MSG_MAX];          /* first failure, "" if none */
};

static void *serve(void *arg) {
    struct server *s = arg;
    struct transport_opts o = test_opts();
    struct transport_msg req[2];
    int held = 0;
    for (;;) {
        struct transport_msg *m = &req[held];
        int rc = transport_serve_recv(s->router, &o.lim, m);
        if (rc != 0) {
            snprintf(s->error, sizeof s->error, "%s", rc > 0 ? "server timed out" : err_msg());
            break;
        }
        if (s->requests < 2) memcpy(s->ids[s->requests], transport_data(m, 1), TRANSPORT_ID_LEN);
        s->requests++;
        if (s->script == ECHO_HELLO) {
            /* Decode the HELLO and answer with a real message naming the
             * node (an ERROR of code BUSY: any type would do). */
            struct msg in, out = {.type = MSG_ERROR};
            uint8_t *buf;
            size_t len;
            if (msg_decode(transport_data(m, TRANSPORT_PAYLOAD),
                           transport_size(m, TRANSPORT_PAYLOAD), NULL, &in) < 0 ||
                in.type != MSG_HELLO) {
                snprintf(s->error, sizeof s->error, "server: %s", err_msg());
                transport_msg_close(m);
                break;
            }
            out.error.code = MSG_ERR_BUSY;
            snprintf(out.error.reason, sizeof out.error.reason, "hello %s", in.hello.name);
            if (msg_encode(&out, &buf, &len) == 0) {
                struct transport_frame f = {buf, len};
                if (transport_serve_reply(s->router, m, &f, 1) < 0)
                    snprintf(s->error, sizeof s->error, "%s", err_msg());
                free(buf);
            }
            transport_msg_close(m);
            break;
        }
        if (s->script == DROP_FIRST) {
            if (s->requests == 1) {
                transport_msg_close(m); /* lost on the way, as far as the client knows */
                continue;
            }
            struct transport_frame f = {"second", 6};
            if (transport_serve_reply(s->router, m, &f, 1) < 0)
                snprintf(s->error, sizeof s->error, "%s", err_msg());
            transport_msg_close(m);
            break;
        }
        /* STALE_FIRST: hold the first request; when the second comes, answer
         * the first (too late: the client gave up on it) and then the second. */
        if (++held < 2) continue;
        struct transport_frame stale = {"stale", 5}, fresh = {"fresh", 5};
        if (transport_serve_reply(s->router, &req[0], &stale, 1) < 0 ||
            transport_serve_reply(s->router, &req[1], &fresh, 1) < 0)
            snprintf(s->error, sizeof s->error, "%s", err_msg());
        transport_msg_close(&req[0]);
        transport_msg_close(&req[1]);
        break;
    }
    return NULL;
}

static struct transport_retry quick_retry(int timeout_ms, int attempts) {
    return (struct transport_retry){
        .timeout_ms = timeout_ms, .attempts = attempts, .backoff_ms = 20, .backoff_max_ms = 100};
}

static void test_request_reply(void) {
    struct transport_opts o = test_opts();
    transport *router, *dealer;
    char ep[256];
    CHECK_OK(tcp_pair(&o, &router, &dealer, ep, sizeof ep));
    CHECK(strncmp(ep, "tcp://127.0.0.1:", 16) == 0 && strcmp(ep, "tcp://127.0.0.1:*") != 0);

    struct server s = {.router = router, .script = ECHO_HELLO};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, serve, &s) == 0);
    struct msg hello = {.type = MSG_HELLO};
    strcpy(hello.hello.name, "uni-bern.ch");
    hello.hello.time = 1795000000; /* the signature's bytes do not matter here */
    uint8_t *buf;
    size_t len;
    CHECK_OK(msg_encode(&hello, &buf, &len));
    struct transport_frame f = {buf, len};
    struct transport_retry rt = quick_retry(5000, 1);
    struct transport_msg reply;
    CHECK_OK(transport_request(dealer, &o.lim, &rt, &f, 1, &reply));
    free(buf);
    pthread_join(th, NULL);
    CHECK_MSG(s.error[0] == '\0', "%s", s.error);
    CHECK(reply.n == 1);
    struct msg answer;
    if (reply.n == 1) {
        CHECK_OK(msg_decode(transport_data(&reply, 0), transport_size(&reply, 0), NULL, &answer));
        CHECK(answer.type == MSG_ERROR && strcmp(answer.error.reason, "hello uni-bern.ch") == 0);
    }
    transport_msg_close(&reply);
    CHECK_OK(transport_close(dealer));
    CHECK_OK(transport_close(router));
}

static void test_retry_after_lost_request(void) {
    struct transport_opts o = test_opts();
    transport *router, *dealer;
    char ep[256];
    CHECK_OK(tcp_pair(&o, &router, &dealer, ep, sizeof ep));
    struct server s = {.router = router, .script = DROP_FIRST};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, serve, &s) == 0);
    struct transport_frame f = {"question", 8};
    struct transport_retry rt = quick_retry(300, 4);
    struct transport_msg reply;
    CHECK_OK(transport_request(dealer, &o.lim, &rt, &f, 1, &reply));
    pthread_join(th, NULL);
    CHECK_MSG(s.error[0] == '\0', "%s", s.error);
    /* Two attempts reached the server, both with the same request id. */
    CHECK(s.requests == 2);
    CHECK(memcmp(s.ids[0], s.ids[1], TRANSPORT_ID_LEN) == 0);
    CHECK(reply.n == 1 && transport_size(&reply, 0) == 6 &&
          memcmp(transport_data(&reply, 0), "second", 6) == 0);
    transport_msg_close(&reply);

    /* Nobody answers at all: every attempt times out. */
    rt = quick_retry(100, 2);
    CHECK_FAILS_WITH(transport_request(dealer, &o.lim, &rt, &f, 1, &reply),
                     "no reply after 2 attempts (last: no reply within 100 ms)");
    CHECK(reply.n == 0);
    CHECK_OK(transport_close(dealer));
    CHECK_OK(transport_close(router));
}

static void test_late_reply_dropped(void) {
    struct transport_opts o = test_opts();
    transport *router, *dealer;
    char ep[256];
    CHECK_OK(tcp_pair(&o, &router, &dealer, ep, sizeof ep));
    struct server s = {.router = router, .script = STALE_FIRST};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, serve, &s) == 0);
    struct transport_frame q1 = {"first", 5}, q2 = {"again", 5};
    struct transport_retry once = quick_retry(200, 1);
    struct transport_msg reply;
    CHECK_FAILS_WITH(transport_request(dealer, &o.lim, &once, &q1, 1, &reply), "no reply");
    struct transport_retry patient = quick_retry(5000, 1);
    CHECK_OK(transport_request(dealer, &o.lim, &patient, &q2, 1, &reply));
    pthread_join(th, NULL);
    CHECK_MSG(s.error[0] == '\0', "%s", s.error);
    CHECK(s.requests == 2 && memcmp(s.ids[0], s.ids[1], TRANSPORT_ID_LEN) != 0);
    /* The reply to the first request arrived first and was dropped. */
    CHECK(reply.n == 1 && transport_size(&reply, 0) == 5 &&
          memcmp(transport_data(&reply, 0), "fresh", 5) == 0);
    transport_msg_close(&reply);
    CHECK_OK(transport_close(dealer));
    CHECK_OK(transport_close(router));
}

/* ---- bounds ------------------------------------------------------------------------- */

static void test_oversized_frame_tcp(void) {
    struct transport_opts ro = test_opts();
    ro.lim = (struct transport_limits){.max_frames = 4, .max_frame = 4096, .max_total = 8192};
    ro.recv_timeout_ms = 500;
    transport *router, *dealer, *dealer2;
    char ep[256];
    CHECK_OK(tcp_pair(&ro, &router, &dealer, ep, sizeof ep));
    int64_t maxmsg = 0;
    CHECK(transport_option(router, "ZMQ_MAXMSGSIZE", &maxmsg) == 0 && maxmsg == 4096);

    /* libzmq disconnects the peer on the first oversized frame: nothing is
     * delivered, the receive times out. */
    uint8_t *big = calloc(1, 8192);
    struct transport_frame f = {big, 8192};
    CHECK_OK(transport_send(dealer, &f, 1));
    struct transport_msg m;
    CHECK(transport_recv(router, &ro.lim, &m) == 1);
    CHECK(m.n == 0);

    /* The router goes on serving others. */
    struct transport_opts d = test_opts();
    CHECK_OK(transport_dealer(&dealer2, ep, &d));
    f.len = 100;
    CHECK_OK(transport_send(dealer2, &f, 1));
    CHECK(transport_recv(router, &ro.lim, &m) == 0);
    CHECK(m.n == 2 && transport_size(&m, 1) == 100);
    transport_msg_close(&m);
    free(big);
    CHECK_OK(transport_close(dealer));
    CHECK_OK(transport_close(dealer2));
    CHECK_OK(transport_close(router));
}

static void test_bounds_inproc(void) {
    struct transport_opts ro = test_opts();
    ro.lim = (struct transport_limits){.max_frames = 4, .max_frame = 4096, .max_total = 8192};
    struct transport_opts d = test_opts();
    transport *router, *dealer;
    CHECK_OK(transport_router(&router, "inproc://bounds", &ro));
    CHECK_OK(transport_dealer(&dealer, "inproc://bounds", &d));
    uint8_t *buf = calloc(1, 8192);
    struct transport_msg m;

    /* An oversized frame: inproc skips ZMQ_MAXMSGSIZE, our check does not. */
    struct transport_frame big = {buf, 8192};
    CHECK_OK(transport_send(dealer, &big, 1));
    CHECK_FAILS_WITH(transport_recv(router, &ro.lim, &m),
                     "refused a message with a frame over the size limit: 2 frames");
    CHECK(m.n == 0);

    /* Too many frames: 10 from the dealer, 11 with the peer frame. */
    struct transport_frame ten[TRANSPORT_FRAMES_MAX];
    for (int i = 0; i < TRANSPORT_FRAMES_MAX; i++) ten[i] = (struct transport_frame){"x", 1};
    CHECK_OK(transport_send(dealer, ten, TRANSPORT_FRAMES_MAX));
    CHECK_FAILS_WITH(transport_recv(router, &ro.lim, &m),
                     "refused a message with too many frames: 9 frames");

    /* Too many bytes in all, though each frame is within its limit. */
    struct transport_frame three[3] = {{buf, 3000}, {buf, 3000}, {buf, 3000}};
    CHECK_OK(transport_send(dealer, three, 3));
    CHECK_FAILS_WITH(transport_recv(router, &ro.lim, &m), "refused a message with too many bytes");

    /* Each refused message was drained whole: the next one arrives intact. */
    struct transport_frame two[2] = {{"ab", 2}, {"cde", 3}};
    CHECK_OK(transport_send(dealer, two, 2));
    CHECK(transport_recv(router, &ro.lim, &m) == 0);
    CHECK(m.n == 3 && transport_size(&m, 1) == 2 && transport_size(&m, 2) == 3 &&
          memcmp(transport_data(&m, 2), "cde", 3) == 0);
    transport_msg_close(&m);

    /* A request without the id frame is refused by the server helper. */
    struct transport_frame bare = {"hello", 5};
    CHECK_OK(transport_send(dealer, &bare, 1));
    CHECK_FAILS_WITH(transport_serve_recv(router, &ro.lim, &m),
                     "refused a request of 2 frames: want [peer][8-byte id][payload...]");

    /* A given frame goes out without a copy and arrives intact; libzmq
     * frees it (the sanitizer build would report a leak otherwise). */
    char *owned = malloc(5000);
    memset(owned, 'g', 5000);
    owned[0] = 'G';
    struct transport_frame given = {owned, 4000};
    CHECK_OK(transport_send_give(dealer, &given, 1));
    CHECK(transport_recv(router, &ro.lim, &m) == 0);
    CHECK(m.n == 2 && transport_size(&m, 1) == 4000 && transport_data(&m, 1)[0] == 'G');
    transport_msg_close(&m);

    /* A reply to a peer that is not connected fails (ZMQ_ROUTER_MANDATORY);
     * a given last frame is freed all the same (failing at the last frame
     * itself: see test_no_server). */
    struct transport_frame lost[2] = {{"nobody", 6}, {"x", 1}};
    CHECK_FAILS_WITH(transport_send(router, lost, 2), "that peer is not connected");
    struct transport_frame lost_given[2] = {{"nobody", 6}, {malloc(10), 10}};
    CHECK_FAILS_WITH(transport_send_give(router, lost_given, 2), "that peer is not connected");

    /* Limits the helpers cannot honour are refused. */
    struct transport_limits silly = {.max_frames = 99, .max_frame = 1, .max_total = 1};
    CHECK_FAILS_WITH(transport_recv(router, &silly, &m), "need 1 <= max_frames <= 8");
    free(buf);
    CHECK_OK(transport_close(dealer));
    CHECK_OK(transport_close(router));
}

static void test_no_server(void) {
    /* Bind to get a free port, close, then talk to nobody there. */
    struct transport_opts o = test_opts();
    transport *router, *dealer;
    char ep[256];
    CHECK_OK(transport_router(&router, "tcp://127.0.0.1:*", &o));
    CHECK_OK(transport_endpoint(router, ep, sizeof ep));
    CHECK_OK(transport_close(router));
    o.send_timeout_ms = 50;
    CHECK_OK(transport_dealer(&dealer, ep, &o));
    int64_t v = 0;
    CHECK(transport_option(dealer, "ZMQ_HEARTBEAT_IVL", &v) == 0 && v == 5000);
    CHECK(transport_option(dealer, "ZMQ_SNDTIMEO", &v) == 0 && v == 50);
    CHECK_FAILS_WITH(transport_option(dealer, "ZMQ_NOPE", &v), "no option ZMQ_NOPE");
    struct transport_frame f = {"anyone?", 7};
    struct transport_retry rt = quick_retry(100, 2);
    struct transport_msg reply;
    CHECK_FAILS_WITH(transport_request(dealer, &o.lim, &rt, &f, 1, &reply),
                     "no reply after 2 attempts (last: sending frame 1 of 2: timed out");
    struct transport_frame given = {malloc(10), 10}; /* freed though never sent */
    CHECK_FAILS_WITH(transport_send_give(dealer, &given, 1), "sending frame 1 of 1: timed out");
    CHECK_OK(transport_close(dealer));

    struct transport_opts bad = test_opts();
    bad.heartbeat_ttl_ms = 50;
    CHECK_FAILS_WITH(transport_dealer(&dealer, ep, &bad), "heartbeat TTL 50 ms is outside");
    CHECK_FAILS_WITH(transport_router(&router, "nonsense://x", &o), "binding nonsense://x");
}

static void test_backoff(void) {
    struct transport_retry rt = {
        .timeout_ms = 1, .attempts = 9, .backoff_ms = 200, .backoff_max_ms = 1000};
    uint64_t rng = 12345;
    /* d = 200, 400, 800, 1000, 1000 ...; each pause in [d/2, d]. */
    const int d[] = {200, 400, 800, 1000, 1000, 1000};
    for (int a = 0; a < 6; a++) {
        int lo = 1 << 30, hi = 0;
        for (int i = 0; i < 1000; i++) {
            int p = transport_backoff_ms(&rt, a, &rng);
            if (p < lo) lo = p;
            if (p > hi) hi = p;
        }
        CHECK_MSG(lo >= d[a] / 2 && hi <= d[a], "attempt %d: pauses in [%d, %d]", a, lo, hi);
        CHECK_MSG(hi - lo > d[a] / 4, "attempt %d: no jitter ([%d, %d])", a, lo, hi);
    }
    rt.backoff_ms = 0;
    CHECK(transport_backoff_ms(&rt, 3, &rng) == 0);
}

int main(void) {
    test_request_reply();
    test_retry_after_lost_request();
    test_late_reply_dropped();
    test_oversized_frame_tcp();
    test_bounds_inproc();
    test_no_server();
    test_backoff();
    return check_finish();
}
