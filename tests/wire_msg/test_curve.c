/* test_curve — the CURVE transport (wire/transport.h) keyed by fedlora
 * identities, over TCP on loopback, a server thread answering ZAP as the
 * aggregator does (issue 17, case 8):
 *   - an identity's X25519 key pair is its CURVE key pair: a client whose
 *     key the ZAP handler admits gets its answers, and every request it
 *     makes carries the User-Id the handler gave it;
 *   - a client whose key the handler refuses never gets a request through,
 *     and its handshake says REFUSED (ZAP status 400);
 *   - a client that pins another server key never gets one through either
 *     (the server cannot open its HELLO), and its handshake says FAILED; so
 *     does a client in the clear against a CURVE server;
 *   - transport_drop_users closes an admitted client's open connection
 *     once the handler stops admitting it (a revocation): its reconnection
 *     is refused;
 *   - transport_zap_parse takes libzmq's frames and refuses malformed ones. */
#include "tests/check.h"
#include "util/err.h"
#include "wire/keys.h"
#include "wire/msg.h"
#include "wire/transport.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static keys_secret server_id, alice, bob;

/* The server: admits the keys in `allowed` (alice's and, while bob_ok,
 * bob's), answers each request with "<User-Id>:<payload>"; with
 * drop_bob set, closes bob's connections once and stops admitting him. */
struct server {
    transport *router;
    char endpoint[256];
    atomic_int stop, bob_ok, drop_bob, dropped;
};

static int keep_not_bob(void *arg, const char *user) {
    (void)arg;
    return strcmp(user, "bob") != 0;
}

static void *serve(void *arg) {
    struct server *s = arg;
    struct transport_limits lim = {4, MSG_FRAME_MAX, MSG_FRAME_MAX + 1024};
    while (!atomic_load(&s->stop)) {
        if (atomic_load(&s->drop_bob)) {
            atomic_store(&s->bob_ok, 0);
            atomic_fetch_add(&s->dropped, transport_drop_users(s->router, keep_not_bob, NULL));
            atomic_store(&s->drop_bob, 0);
        }
        int req = 0, zap = 0;
        if (transport_serve_wait(s->router, 20, &req, &zap) < 0) break;
        struct transport_zap_request q;
        while (zap && transport_zap_next(s->router, &q) == 0) {
            const char *who = !memcmp(q.client_key, alice.pub.kx_pub, 32) ? "alice"
                              : !memcmp(q.client_key, bob.pub.kx_pub, 32) && atomic_load(&s->bob_ok)
                                  ? "bob"
                                  : NULL;
            transport_zap_reply(s->router, &q, who != NULL, who, who ? "OK" : "no");
        }
        struct transport_msg m;
        if (!req || transport_serve_recv(s->router, &lim, &m) != 0) continue;
        char user[300] = "?", out[400];
        transport_msg_user(&m, user, sizeof user);
        snprintf(out, sizeof out, "%s:%.*s", user, (int)transport_size(&m, 2),
                 (const char *)transport_data(&m, 2));
        struct transport_frame f = {out, strlen(out)};
        transport_serve_reply(s->router, &m, &f, 1);
        transport_msg_close(&m);
    }
    return NULL;
}

static transport_curve client_keys(const keys_secret *me, const keys_secret *server) {
    transport_curve c;
    memcpy(c.secret_key, me->kx_priv, 32);
    memcpy(c.public_key, me->pub.kx_pub, 32);
    memcpy(c.server_key, server->pub.kx_pub, 32);
    return c;
}

/* One request "hi" from a client with keys c (NULL: in the clear): 0 and
 * the answer in out, or -1 after `attempts` attempts of 300 ms. */
static int ask(const char *ep, const transport_curve *c, char *out, size_t n, int attempts,
               int *hs) {
    struct transport_opts o;
    transport_opts_default(&o);
    o.curve = c;
    o.send_timeout_ms = o.recv_timeout_ms = 300;
    o.linger_ms = 0;
    transport *d;
    if (transport_dealer(&d, ep, &o) != 0) return -1;
    struct transport_retry rt = {300, attempts, 50, 50};
    struct transport_frame f = {"hi", 2};
    struct transport_msg rep;
    int rc = transport_request(d, &o.lim, &rt, &f, 1, &rep);
    if (rc == 0) {
        snprintf(out, n, "%.*s", (int)transport_size(&rep, 0),
                 (const char *)transport_data(&rep, 0));
        transport_msg_close(&rep);
    }
    if (hs) *hs = transport_handshake(d, NULL);
    transport_close(d);
    return rc;
}

static void test_zap_parse(void) {
    uint8_t key[32] = {1, 2, 3};
    struct transport_frame f[7] = {{"1.0", 3}, {"id", 2},    {"", 0},  {"127.0.0.1", 9},
                                   {"rid", 3}, {"CURVE", 5}, {key, 32}};
    struct transport_zap_request q;
    CHECK_OK(transport_zap_parse(f, 7, &q));
    CHECK(q.request_id_len == 2 && !memcmp(q.request_id, "id", 2) &&
          !strcmp(q.address, "127.0.0.1") && !strcmp(q.mechanism, "CURVE") &&
          !memcmp(q.client_key, key, 32));
    CHECK_FAILS_WITH(transport_zap_parse(f, 5, &q), "at least 6");
    f[6].len = 31;
    CHECK_FAILS_WITH(transport_zap_parse(f, 7, &q), "one 32-byte key");
    f[6].len = 32;
    CHECK_FAILS_WITH(transport_zap_parse(f, 6, &q), "one 32-byte key");
    f[0] = (struct transport_frame){"2.0", 3};
    CHECK_FAILS_WITH(transport_zap_parse(f, 7, &q), "version");
    f[0] = (struct transport_frame){"1.0", 3};
    static uint8_t big[300];
    f[3] = (struct transport_frame){big, sizeof big};
    CHECK_FAILS_WITH(transport_zap_parse(f, 7, &q), "address");
    /* Another mechanism parses (the handler refuses it). */
    struct transport_frame g[6] = {{"1.0", 3}, {"i", 1}, {"", 0}, {"a", 1}, {"", 0}, {"NULL", 4}};
    CHECK_OK(transport_zap_parse(g, 6, &q));
    CHECK(!strcmp(q.mechanism, "NULL"));
}

int main(void) {
    CHECK_OK(keys_generate("aggregator", &server_id));
    CHECK_OK(keys_generate("alice", &alice));
    CHECK_OK(keys_generate("bob", &bob));
    test_zap_parse();

    struct server s;
    memset(&s, 0, sizeof s);
    atomic_store(&s.bob_ok, 1);
    transport_curve sc;
    memcpy(sc.secret_key, server_id.kx_priv, 32);
    memcpy(sc.public_key, server_id.pub.kx_pub, 32);
    struct transport_opts o;
    transport_opts_default(&o);
    o.curve = &sc;
    CHECK_OK(transport_router(&s.router, "tcp://127.0.0.1:*", &o));
    CHECK_OK(transport_endpoint(s.router, s.endpoint, sizeof s.endpoint));
    pthread_t th;
    CHECK(pthread_create(&th, NULL, serve, &s) == 0);

    char out[400];
    int hs;
    transport_curve ca = client_keys(&alice, &server_id);
    CHECK_OK(ask(s.endpoint, &ca, out, sizeof out, 5, &hs));
    CHECK_MSG(!strcmp(out, "alice:hi") && hs == TRANSPORT_HS_OK, "'%s', handshake %d", out, hs);

    /* A key the handler does not admit. */
    keys_secret eve;
    CHECK_OK(keys_generate("eve", &eve));
    transport_curve ce = client_keys(&eve, &server_id);
    CHECK(ask(s.endpoint, &ce, out, sizeof out, 3, &hs) != 0);
    CHECK_MSG(hs == TRANSPORT_HS_REFUSED, "handshake %d", hs);

    /* A client that pins another server key (a fake aggregator would have
     * to hold the real one's private key). */
    transport_curve cw = client_keys(&alice, &eve);
    CHECK(ask(s.endpoint, &cw, out, sizeof out, 4, &hs) != 0);
    CHECK_MSG(hs == TRANSPORT_HS_FAILED, "handshake %d", hs);
    /* A client in the clear. */
    CHECK(ask(s.endpoint, NULL, out, sizeof out, 2, NULL) != 0);

    /* bob connects and is answered; then he is revoked: his open
     * connection is closed and his next request does not get through. */
    struct transport_opts bo;
    transport_opts_default(&bo);
    transport_curve cb = client_keys(&bob, &server_id);
    bo.curve = &cb;
    bo.linger_ms = 0;
    bo.send_timeout_ms = bo.recv_timeout_ms = 300;
    transport *bd;
    CHECK_OK(transport_dealer(&bd, s.endpoint, &bo));
    struct transport_retry rt = {500, 4, 50, 50};
    struct transport_frame f = {"hi", 2};
    struct transport_msg rep;
    CHECK_OK(transport_request(bd, &bo.lim, &rt, &f, 1, &rep));
    CHECK(rep.n == 1 && transport_size(&rep, 0) == 6 &&
          !memcmp(transport_data(&rep, 0), "bob:hi", 6));
    transport_msg_close(&rep);
    atomic_store(&s.drop_bob, 1);
    for (int i = 0; i < 100 && atomic_load(&s.drop_bob); i++) usleep(10000);
    CHECK_MSG(atomic_load(&s.dropped) == 1, "%d connections closed", atomic_load(&s.dropped));
    CHECK(transport_request(bd, &bo.lim, &rt, &f, 1, &rep) != 0);
    CHECK_MSG(transport_handshake(bd, NULL) == TRANSPORT_HS_REFUSED, "bob's handshake: %d",
              transport_handshake(bd, NULL));
    transport_close(bd);
    /* alice is not touched by it. */
    CHECK_OK(ask(s.endpoint, &ca, out, sizeof out, 5, &hs));
    CHECK(!strcmp(out, "alice:hi"));

    atomic_store(&s.stop, 1);
    pthread_join(th, NULL);
    CHECK_OK(transport_close(s.router));
    keys_secret_wipe(&eve);
    return check_finish();
}
