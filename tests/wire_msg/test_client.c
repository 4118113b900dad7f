/* wire_client: the node's client (wire/client.h) against a scripted server
 * thread on tcp loopback: a request retried until its reply (a log line for
 * each failed attempt), a stop asked for while retrying, give_up_s, a reply
 * that is not a fedlora message, and the chunked download: whole, resumed at
 * an offset, refused by the server (ERROR), and every way a MODEL_CHUNK can
 * fail to answer its request (another object, another offset, a total that
 * changes, another size than announced, over the caller's limit). */
#include "tests/check.h"
#include "util/err.h"
#include "wire/client.h"
#include "wire/crypto.h"
#include "wire/transport.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define OBJ_LEN (2 * MSG_CHUNK_MAX + 1000) /* three chunks */

/* How the server answers GET_MODEL (and the one other request it knows). */
enum behaviour {
    SERVE,         /* the object, as the aggregator does */
    DROP_TWO,      /* the first two requests get no answer, then SERVE */
    ERROR_REPLY,   /* ERROR NOT_FOUND */
    WRONG_HASH,    /* chunks of another object */
    WRONG_OFFSET,  /* a chunk from elsewhere */
    TOTAL_CHANGES, /* the total differs in the second chunk */
    TWO_FRAMES,    /* a reply of two frames */
    NOT_A_MESSAGE, /* one frame of garbage */
};

struct server {
    transport *router;
    enum behaviour how;
    uint8_t *obj;
    uint8_t hash[32];
    int requests; /* received */
    int stop;
    pthread_mutex_t lock;
};

static int reply_msg(struct server *s, struct transport_msg *req, const struct msg *m) {
    uint8_t *buf;
    size_t len;
    if (msg_encode(m, &buf, &len) != 0) return -1;
    struct transport_frame f = {buf, len};
    int rc = transport_serve_reply(s->router, req, &f, 1);
    free(buf);
    return rc;
}

static void *serve(void *arg) {
    struct server *s = arg;
    struct transport_opts o;
    transport_opts_default(&o);
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int stop = s->stop;
        pthread_mutex_unlock(&s->lock);
        if (stop) break;
        struct transport_msg req;
        if (transport_serve_recv(s->router, &o.lim, &req) != 0) continue; /* timeout */
        struct msg in, out;
        int n = ++s->requests;
        if (msg_decode(transport_data(&req, TRANSPORT_PAYLOAD),
                       transport_size(&req, TRANSPORT_PAYLOAD), NULL, &in) != 0 ||
            (s->how == DROP_TWO && n <= 2)) {
            transport_msg_close(&req);
            continue;
        }
        if (s->how == TWO_FRAMES || s->how == NOT_A_MESSAGE) {
            struct transport_frame f[2] = {{"\xc1", 1}, {"x", 1}};
            transport_serve_reply(s->router, &req, f, s->how == TWO_FRAMES ? 2 : 1);
            transport_msg_close(&req);
            continue;
        }
        if (in.type != MSG_GET_MODEL || s->how == ERROR_REPLY) {
            out = (struct msg){.type = MSG_ERROR};
            out.error.code = MSG_ERR_NOT_FOUND;
            snprintf(out.error.reason, sizeof out.error.reason, "no such object");
            reply_msg(s, &req, &out);
            transport_msg_close(&req);
            continue;
        }
        const struct msg_get_model *g = &in.get_model;
        uint64_t total = OBJ_LEN, off = g->offset;
        if (s->how == TOTAL_CHANGES && off > 0) total += 1;
        if (s->how == WRONG_OFFSET) off += 1;
        uint64_t left = off < total ? total - off : 0;
        uint64_t len = left < g->length ? left : g->length;
        out = (struct msg){.type = MSG_MODEL_CHUNK};
        memcpy(out.model_chunk.version, g->version, 32);
        if (s->how == WRONG_HASH) out.model_chunk.version[0] ^= 1;
        out.model_chunk.offset = off;
        out.model_chunk.total = total;
        out.model_chunk.data = s->obj + (off < OBJ_LEN ? off : 0);
        out.model_chunk.data_len = (uint32_t)(off + len <= OBJ_LEN ? len : 0);
        out.model_chunk.final = off + out.model_chunk.data_len == total;
        reply_msg(s, &req, &out);
        transport_msg_close(&req);
    }
    return NULL;
}

static struct server S;
static pthread_t th;
static char endpoint[256];

static void server_start(enum behaviour how) {
    S.how = how;
    S.requests = 0;
    S.stop = 0;
    struct transport_opts o;
    transport_opts_default(&o);
    o.recv_timeout_ms = 50;
    o.linger_ms = 0;
    CHECK_OK(transport_router(&S.router, "tcp://127.0.0.1:*", &o));
    CHECK_OK(transport_endpoint(S.router, endpoint, sizeof endpoint));
    CHECK(pthread_create(&th, NULL, serve, &S) == 0);
}

static void server_stop(void) {
    pthread_mutex_lock(&S.lock);
    S.stop = 1;
    pthread_mutex_unlock(&S.lock);
    pthread_join(th, NULL);
    transport_close(S.router);
    S.router = NULL;
}

/* ---- the caller's side ---------------------------------------------------------- */

struct got {
    uint8_t *buf;
    size_t len;
};

static int collect(void *arg, const uint8_t *data, size_t len) {
    struct got *g = arg;
    if (g->len + len > OBJ_LEN) return err_set("more bytes than the object has");
    memcpy(g->buf + g->len, data, len);
    g->len += len;
    return 0;
}

static int retries, stop_after = -1;

static void count_retry(void *arg, int attempt, const char *why) {
    (void)arg, (void)why;
    CHECK(attempt == retries); /* 0, 1, ... in order */
    retries++;
}

static int stop_now(void *arg) {
    (void)arg;
    return stop_after >= 0 && retries >= stop_after;
}

static client *open_client(int timeout_ms, int give_up_s) {
    client_options o;
    client_options_default(&o);
    o.timeout_ms = timeout_ms;
    o.give_up_s = give_up_s;
    o.backoff_ms = 10;
    o.backoff_max_ms = 20;
    o.linger_ms = 0;
    o.retrying = count_retry;
    o.stop = stop_now;
    client *c = NULL;
    CHECK_OK(client_open(&c, endpoint, &o));
    retries = 0;
    stop_after = -1;
    return c;
}

static int download(client *c, uint64_t offset, uint64_t want, uint64_t max, struct got *g,
                    uint64_t *total) {
    return client_download(c, S.hash, offset, want, max, collect, g, total);
}

static void test_download(void) {
    uint8_t *buf = malloc(OBJ_LEN);
    struct got g = {buf, 0};
    uint64_t total = 0;

    server_start(SERVE);
    client *c = open_client(2000, 0);
    CHECK(download(c, 0, 0, UINT64_MAX, &g, &total) == CLIENT_OK);
    CHECK(total == OBJ_LEN && g.len == OBJ_LEN && memcmp(buf, S.obj, OBJ_LEN) == 0);
    CHECK(S.requests == 3); /* one GET_MODEL per chunk */
    /* Resumed in the middle: only the rest comes, and it is the rest. */
    memset(buf, 0, OBJ_LEN);
    g.len = 1234567;
    CHECK(download(c, 1234567, OBJ_LEN, OBJ_LEN, &g, &total) == CLIENT_OK);
    CHECK(g.len == OBJ_LEN && memcmp(buf + 1234567, S.obj + 1234567, OBJ_LEN - 1234567) == 0);
    /* The object is not what the caller was told, or is over its limit. */
    g.len = 0;
    CHECK(download(c, 0, OBJ_LEN - 1, 0, &g, NULL) == CLIENT_REFUSED);
    CHECK(strstr(err_msg(), "announced as") != NULL);
    g.len = 0;
    CHECK(download(c, 0, 0, OBJ_LEN - 1, &g, NULL) == CLIENT_REFUSED);
    CHECK(strstr(err_msg(), "over the limit") != NULL);
    client_close(c);
    server_stop();

    /* A server that answers with something else is refused, not trusted. */
    const struct {
        enum behaviour how;
        int want;
        const char *needle;
    } bad[] = {
        {ERROR_REPLY, CLIENT_REFUSED, "refused GET_MODEL at byte 0: no such object (code 5)"},
        {WRONG_HASH, CLIENT_REFUSED, "does not match the request"},
        {WRONG_OFFSET, CLIENT_REFUSED, "does not match the request"},
        {TOTAL_CHANGES, CLIENT_REFUSED, "does not match the request"},
        {TWO_FRAMES, CLIENT_GARBLED, "has 2 frames"},
        {NOT_A_MESSAGE, CLIENT_GARBLED, "is not a fedlora message"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        server_start(bad[i].how);
        c = open_client(2000, 0);
        g.len = 0;
        err_clear();
        int k = download(c, 0, 0, UINT64_MAX, &g, NULL);
        CHECK_MSG(k == bad[i].want && strstr(err_msg(), bad[i].needle),
                  "case %zu: %d, '%s' (wanted %d, '%s')", i, k, err_msg(), bad[i].want,
                  bad[i].needle);
        client_close(c);
        server_stop();
    }
    free(buf);
}

static void test_retries(void) {
    struct msg req = {.type = MSG_STATUS}, rep;
    snprintf(req.status.name, sizeof req.status.name, "uni-a");

    /* Two requests lost: the third attempt is answered, after two
     * "retrying" calls. */
    server_start(DROP_TWO);
    client *c = open_client(200, 30);
    CHECK(client_call(c, &req, &rep) == CLIENT_OK && rep.type == MSG_ERROR &&
          rep.error.code == MSG_ERR_NOT_FOUND);
    CHECK(retries == 2 && S.requests == 3);
    client_close(c);

    /* One attempt only (give_up_s 0): the transport's reason stands. */
    S.requests = 0;
    c = open_client(200, 0);
    CHECK(client_call(c, &req, &rep) == CLIENT_FAILED && retries == 0);
    CHECK(strstr(err_msg(), "no reply") != NULL);
    /* A stop asked for while retrying ends the call at once. */
    client_close(c);
    c = open_client(100, 30);
    stop_after = 1;
    S.requests = -100; /* the server drops the next many */
    CHECK(client_call(c, &req, &rep) == CLIENT_STOPPED && retries == 1);
    client_close(c);
    server_stop();

    /* give_up_s passes without a reply. */
    server_start(DROP_TWO);
    S.requests = -1000;
    c = open_client(300, 1);
    CHECK(client_call(c, &req, &rep) == CLIENT_FAILED);
    CHECK(strstr(err_msg(), "did not answer STATUS for 1 s (give_up_s)") != NULL);
    CHECK(retries >= 2);
    client_close(c);
    server_stop();
}

int main(void) {
    pthread_mutex_init(&S.lock, NULL);
    S.obj = malloc(OBJ_LEN);
    for (size_t i = 0; i < OBJ_LEN; i++) S.obj[i] = (uint8_t)(i * 7 + i / 977);
    CHECK_OK(crypto_sha256(S.obj, OBJ_LEN, S.hash));
    test_download();
    test_retries();
    free(S.obj);
    return check_finish();
}
