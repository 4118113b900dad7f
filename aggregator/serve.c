/* serve — agg_run: the ROUTER loop that hands each request to agg_handle
 * and ticks the state machine between requests (and the evaluations and the
 * status page's snapshot), and GET_MODEL, which serves from the store in
 * chunks whatever is named by its SHA-256: a version (its model.safetensors,
 * or a sharded version's index), a shard of a sharded version, a low-rank
 * update, a roster (store_read). */
#include "aggregator/state.h"

#include "aggregator/store.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"
#include "wire/crypto.h"
#include "wire/transport.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FINISH_GRACE_S 2 /* seconds served after every member heard "finished" */

volatile sig_atomic_t agg_stop_requested;
volatile sig_atomic_t agg_reload_requested;

void agg_request_stop(void) {
    agg_stop_requested = 1;
}

static void on_signal(int sig) {
    (void)sig;
    agg_stop_requested = 1;
}

static void on_hup(int sig) {
    (void)sig;
    agg_reload_requested = 1;
}

static int done_serving(const agg *a, uint64_t now) {
    if (a->state != AGG_FINISHED || a->cfg.linger_s < 0) return 0;
    /* The last versions' evaluations finish before the aggregator leaves. */
    if (!agg_eval_idle(a)) return 0;
    /* rounds.linger is how long the final version is served after the last
     * round (observers and late nodes download it then): honoured whatever
     * the members heard (issue 17: it used to end 2 s after they all heard
     * "finished"). Once every member heard it, a moment more before the
     * socket closes: a DEALER with ZMQ_IMMEDIATE drops a reply still in
     * flight when the connection goes away. */
    return now >= a->finished_at + (uint64_t)a->cfg.linger_s &&
           (!a->all_told_at || now >= a->all_told_at + FINISH_GRACE_S);
}

int agg_on_get_model(agg *a, const struct msg_get_model *g, uint8_t **out, size_t *len) {
    char sh[17];
    agg_short_hex(g->version, sh);
    if (!store_has_any(a->cfg.state, g->version))
        return agg_reply_error(a, MSG_ERR_NOT_FOUND, -1, out, len,
                               "unknown model version or object %s...", sh);
    /* Never serve bytes that are not what they are named: hashed once per
     * process before the first chunk (what this process stored or checked
     * at start is not hashed again). */
    if (agg_verify_stored(a, g->version) < 0) {
        agg_say("NOT SERVED: %s", err_msg());
        return agg_reply_error(a, MSG_ERR_INTERNAL, -1, out, len,
                               "the aggregator's copy of %s... is damaged; its operator must "
                               "restore it (the aggregator's log says how)",
                               sh);
    }
    uint8_t *buf = malloc(g->length);
    if (!buf) return err_set("out of memory for a %llu-byte chunk", (unsigned long long)g->length);
    size_t got;
    uint64_t total;
    int r = store_read(a->cfg.state, g->version, g->offset, buf, g->length, &got, &total);
    if (r != 0) {
        free(buf);
        if (r < 0) return -1;
        return agg_reply_error(
            a, MSG_ERR_BAD_MESSAGE, -1, out, len,
            "GET_MODEL: offset %llu is past the end of version %s... (%llu bytes)",
            (unsigned long long)g->offset, sh, (unsigned long long)total);
    }
    struct msg m = {.type = MSG_MODEL_CHUNK};
    memcpy(m.model_chunk.version, g->version, 32);
    m.model_chunk.offset = g->offset;
    m.model_chunk.total = total;
    m.model_chunk.data = buf;
    m.model_chunk.data_len = (uint32_t)got;
    m.model_chunk.final = g->offset + got == total;
    a->bytes_served += got;
    agg_status_bytes(a, 0, got);
    int rc = agg_encode(&m, out, len);
    free(buf);
    return rc;
}

struct agg_listener {
    transport *sock;
    struct transport_opts o;
    transport_curve curve;
};

int agg_listen(agg_listener **out, const agg_config *c) {
    *out = calloc(1, sizeof **out);
    agg_listener *l = *out;
    if (!l) return err_set("out of memory");
    transport_opts_default(&l->o);
    l->o.recv_timeout_ms = 200; /* how often deadlines and signals are looked at */
    if (c->curve) {
        keys_secret k;
        if (keys_load_secret(c->keys_dir, c->keys_name, &k) < 0) {
            agg_listener_close(l);
            *out = NULL;
            return err_context("the aggregator's keys (CURVE)");
        }
        memcpy(l->curve.secret_key, k.kx_priv, 32);
        memcpy(l->curve.public_key, k.pub.kx_pub, 32);
        keys_secret_wipe(&k);
        l->o.curve = &l->curve;
    }
    if (transport_router(&l->sock, c->bind, &l->o) < 0) {
        agg_listener_close(l);
        *out = NULL;
        return err_context("the aggregator's address (bind = \"%s\")", c->bind);
    }
    return 0;
}

void agg_listener_close(agg_listener *l) {
    if (!l) return;
    transport_close(l->sock);
    crypto_wipe(&l->curve, sizeof l->curve);
    free(l);
}

/* ZAP (RFC 27): a CURVE key may connect when it is the current key of an
 * active member or observer of the roster in force; its User-Id is then
 * that identity's fingerprint in hex, which every request on the
 * connection carries. */
static void answer_zap(agg *a, transport *sock) {
    struct transport_zap_request q;
    while (transport_zap_next(sock, &q) == 0) {
        agg_member m;
        char user[2 * KEYS_FP_LEN + 1], key[17];
        agg_short_hex(q.client_key, key);
        int ok = !strcmp(q.mechanism, "CURVE") && agg_roster_find_kx(a->roster, q.client_key, &m);
        if (ok)
            hex_encode(m.fp, KEYS_FP_LEN, user);
        else if (strcmp(q.mechanism, "CURVE") != 0)
            agg_say("refused a connection from %s: mechanism %s, not CURVE", q.address,
                    q.mechanism);
        else
            agg_say("refused a connection from %s: CURVE key %s... is %s on the roster", q.address,
                    key, agg_roster_kx_status(a->roster, q.client_key));
        if (transport_zap_reply(sock, &q, ok, ok ? user : NULL, ok ? "OK" : "not a member") < 0)
            agg_say("%s", err_msg());
    }
}

/* transport_drop_users's test: a User-Id that is still an active key. */
static int still_member(void *arg, const char *user) {
    agg *a = arg;
    uint8_t fp[KEYS_FP_LEN];
    agg_member m;
    return hex_decode(user, fp, KEYS_FP_LEN) == 0 && agg_roster_find(a->roster, fp, &m) == 1;
}

int agg_run(agg *a, agg_listener *l) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return err_errno("installing signal handlers");
    sa.sa_handler = on_hup;
    if (sigaction(SIGHUP, &sa, NULL) != 0) return err_errno("installing the SIGHUP handler");
    signal(SIGPIPE, SIG_IGN);

    struct transport_opts o = l->o;
    transport *sock = l->sock;
    int rc = -1;
    char endpoint[AGG_ENDPOINT_MAX + 32], p[AGG_PATH_MAX];
    if (transport_endpoint(sock, endpoint, sizeof endpoint) < 0) goto out;
    size_t el = strlen(endpoint);
    endpoint[el] = '\n';
    if (agg_state_path(a, "endpoint", p, sizeof p) < 0 ||
        fio_write_atomic(p, endpoint, el + 1, 0644) < 0)
        goto out;
    endpoint[el] = '\0';
    agg_say("listening on %s (consortium '%s', %d members, %llu rounds; %s)", endpoint,
            a->cfg.consortium_name, agg_roster_count(a->roster), (unsigned long long)a->cfg.rounds,
            a->cfg.curve ? "CURVE: only the roster's keys connect"
                         : "curve = false: connections are NOT authenticated");
    if (agg_status_serve(a) < 0) goto out;

    uint64_t roster_seen = agg_roster_version(a->roster);
    while (!agg_stop_requested) {
        uint64_t now = (uint64_t)time(NULL);
        if (agg_tick(a, now) < 0 || agg_eval_tick(a) < 0) goto out;
        agg_status_tick(a);
        if (done_serving(a, now)) break;
        /* A roster change closes the connections of the keys it no longer
         * admits (revoked, rotated away): they meet the ZAP handler again. */
        if (a->cfg.curve && agg_roster_version(a->roster) != roster_seen) {
            roster_seen = agg_roster_version(a->roster);
            int n = transport_drop_users(sock, still_member, a);
            if (n) agg_say("closed %d connection(s) of keys the roster no longer admits", n);
        }
        int has_req = 0, has_zap = 0;
        if (transport_serve_wait(sock, o.recv_timeout_ms, &has_req, &has_zap) < 0) goto out;
        if (has_zap) answer_zap(a, sock);
        if (!has_req) continue;
        struct transport_msg req;
        int r = transport_serve_recv(sock, &o.lim, &req);
        if (r == 1) continue;
        if (r < 0) {
            agg_say("dropped a message: %s", err_msg());
            continue;
        }
        uint8_t *reply = NULL;
        size_t rlen = 0;
        agg_peer peer = {transport_data(&req, 0), transport_size(&req, 0), 0, {0}};
        char user[2 * KEYS_FP_LEN + 8];
        if (a->cfg.curve) {
            /* The key the handshake proved; one the roster dropped since
             * (a revocation between two ticks) gets its connection closed. */
            agg_member m;
            if (agg_roster_tick(a) < 0) goto out;
            peer.authenticated = transport_msg_user(&req, user, sizeof user) &&
                                 hex_decode(user, peer.fp, KEYS_FP_LEN) == 0;
            if (!peer.authenticated || agg_roster_find(a->roster, peer.fp, &m) != 1) {
                transport_drop_sender(sock, &req);
                agg_say("closed a connection whose key the roster no longer admits");
                transport_msg_close(&req);
                continue;
            }
        }
        agg_status_peer(a, transport_data(&req, 0), transport_size(&req, 0));
        int h = req.n == TRANSPORT_PAYLOAD + 1
                    ? agg_handle(a, &peer, transport_data(&req, TRANSPORT_PAYLOAD),
                                 transport_size(&req, TRANSPORT_PAYLOAD), (uint64_t)time(NULL),
                                 &reply, &rlen)
                    : agg_reply_error(a, MSG_ERR_BAD_MESSAGE, -1, &reply, &rlen,
                                      "a request is one message frame, got %zu",
                                      req.n - TRANSPORT_PAYLOAD);
        if (h < 0) {
            /* Tell the node it is not its fault, then stop: the journal has
             * everything a restart needs. */
            char why[MSG_REASON_MAX + 1];
            snprintf(why, sizeof why, "%s", err_msg());
            free(reply);
            reply = NULL;
            if (agg_reply_error(a, MSG_ERR_INTERNAL, 5000, &reply, &rlen,
                                "aggregator failure; retry later") == 0) {
                struct transport_frame f = {reply, rlen};
                transport_serve_reply(sock, &req, &f, 1);
            }
            free(reply);
            transport_msg_close(&req);
            err_set("%s", why);
            goto out;
        }
        struct transport_frame f = {reply, rlen};
        if (transport_serve_reply(sock, &req, &f, 1) < 0)
            agg_say("could not answer a node (it went away?): %s", err_msg());
        free(reply);
        transport_msg_close(&req);
        agg_status_peer(a, NULL, 0);
        agg_status_tick(a);
    }
    if (agg_stop_requested)
        agg_say("stopping on a signal; the journal holds the state for a restart");
    rc = 0;
out:
    return rc;
}
