/* client — requests with retries and the chunked download (client.h). */
#include "wire/client.h"

#include "util/clock.h"
#include "util/err.h"
#include "wire/crypto.h"
#include "wire/transport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct client {
    client_options o;
    char endpoint[512];
    transport *t;
    struct transport_opts topts;
    transport_curve curve;
    struct transport_msg reply; /* the last reply; rep's blobs point into it */
    uint64_t rng;               /* backoff jitter */
};

void client_options_default(client_options *o) {
    memset(o, 0, sizeof *o);
    o->timeout_ms = 5000;
    o->give_up_s = 0;
    o->backoff_ms = 200;
    o->backoff_max_ms = 2000;
    o->linger_ms = 1000;
}

static int stopped(const client *c) {
    return c->o.stop && c->o.stop(c->o.arg);
}

/* Sleeps ms in short slices; 1 when a stop was asked meanwhile. */
static int pause_ms(const client *c, int ms) {
    while (ms > 0 && !stopped(c)) {
        int slice = ms < 50 ? ms : 50;
        clock_sleep_ms(slice);
        ms -= slice;
    }
    return stopped(c);
}

int client_open(client **out, const char *endpoint, const client_options *o) {
    *out = NULL;
    if (o->timeout_ms < 1 || o->give_up_s < 0)
        return err_set("client: a timeout of %d ms and give_up_s %d (want >= 1 and >= 0)",
                       o->timeout_ms, o->give_up_s);
    client *c = calloc(1, sizeof *c);
    if (!c) return err_set("out of memory for a client");
    c->o = *o;
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->rng = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32 ^ 0x9e3779b97f4a7c15ull;
    transport_opts_default(&c->topts);
    /* A DEALER with ZMQ_IMMEDIATE waits in send until the connection is up:
     * that wait is part of an attempt's timeout too. */
    c->topts.send_timeout_ms = o->timeout_ms;
    c->topts.recv_timeout_ms = o->timeout_ms;
    c->topts.linger_ms = o->linger_ms;
    if (o->curve_me) {
        memcpy(c->curve.secret_key, o->curve_me->kx_priv, 32);
        memcpy(c->curve.public_key, o->curve_me->pub.kx_pub, 32);
        memcpy(c->curve.server_key, o->curve_server, 32);
        c->topts.curve = &c->curve;
        c->o.curve_me = NULL; /* the keys are copied: nothing points at the caller's */
    }
    if (transport_dealer(&c->t, endpoint, &c->topts) != 0) {
        crypto_wipe(&c->curve, sizeof c->curve);
        free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void client_close(client *c) {
    if (!c) return;
    transport_msg_close(&c->reply);
    transport_close(c->t);
    crypto_wipe(&c->curve, sizeof c->curve);
    free(c);
}

int client_denial(client *c) {
    int hs = transport_handshake(c->t, NULL);
    return hs == TRANSPORT_HS_REFUSED  ? CLIENT_KEY_REFUSED
           : hs == TRANSPORT_HS_FAILED ? CLIENT_KEY_UNPROVEN
                                       : 0;
}

/* After a failed attempt: 1 (err_msg set) when the CURVE handshake has
 * settled it, so that waiting longer would not help. */
static int denied(client *c) {
    int detail = 0, hs = transport_handshake(c->t, &detail);
    if (hs == TRANSPORT_HS_REFUSED) {
        err_set("the aggregator at %s refused this node's key (CURVE, ZAP status %d): its roster "
                "does not list this identity as an active member or observer (not added yet, "
                "revoked, or rotated to new keys); fedlora doctor says which, the consortium "
                "admin decides",
                c->endpoint, detail);
        return 1;
    }
    if (hs == TRANSPORT_HS_FAILED) {
        err_set("no secure connection to %s: the CURVE handshake failed (%s): the aggregator "
                "there does not hold the key of aggregator.identity (a wrong .id file, or not "
                "the consortium's aggregator: compare fingerprints with its operator), or it "
                "runs without CURVE (set curve the same on both sides)",
                c->endpoint,
                detail == EPIPE || detail == ECONNRESET ? "it hung up on our HELLO"
                                                        : "the security mechanisms differ");
        return 1;
    }
    return 0;
}

int client_call(client *c, const struct msg *req, struct msg *rep) {
    transport_msg_close(&c->reply);
    uint8_t *buf;
    size_t len;
    if (msg_encode(req, &buf, &len) != 0) return CLIENT_FAILED;
    const char *what = msg_type_name(req->type);
    struct transport_retry one = {.timeout_ms = c->o.timeout_ms,
                                  .attempts = 1,
                                  .backoff_ms = c->o.backoff_ms,
                                  .backoff_max_ms = c->o.backoff_max_ms};
    double start = clock_now_s();
    int rc = CLIENT_FAILED;
    for (int attempt = 0;; attempt++) {
        if (stopped(c)) {
            rc = CLIENT_STOPPED;
            break;
        }
        struct transport_frame f = {buf, len};
        if (transport_request(c->t, &c->topts.lim, &one, &f, 1, &c->reply) == 0) {
            if (c->reply.n != 1) {
                err_set("the reply from %s to %s has %zu frames; a fedlora message has 1",
                        c->endpoint, what, c->reply.n);
                transport_msg_close(&c->reply);
                rc = CLIENT_GARBLED;
            } else if (msg_decode(transport_data(&c->reply, 0), transport_size(&c->reply, 0), NULL,
                                  rep) != 0) {
                err_context("the reply from %s to %s is not a fedlora message", c->endpoint, what);
                transport_msg_close(&c->reply);
                rc = CLIENT_GARBLED;
            } else {
                rc = CLIENT_OK;
            }
            break;
        }
        if (c->topts.curve && denied(c)) {
            rc = CLIENT_DENIED;
            break;
        }
        if (c->o.give_up_s == 0) break; /* one attempt: the transport's reason stands */
        if (stopped(c)) {
            rc = CLIENT_STOPPED;
            break;
        }
        if (clock_now_s() - start > c->o.give_up_s) {
            err_context("the aggregator at %s did not answer %s for %d s (give_up_s)", c->endpoint,
                        what, c->o.give_up_s);
            break;
        }
        if (c->o.retrying) c->o.retrying(c->o.arg, attempt, err_msg());
        if (pause_ms(c, transport_backoff_ms(&one, attempt < 8 ? attempt : 8, &c->rng))) {
            rc = CLIENT_STOPPED;
            break;
        }
    }
    free(buf);
    return rc;
}

int client_download(client *c, const uint8_t hash[MSG_HASH_LEN], uint64_t offset,
                    uint64_t want_total, uint64_t max_total, client_sink sink, void *arg,
                    uint64_t *total_out) {
    uint64_t total = UINT64_MAX;
    for (;;) {
        struct msg req = {.type = MSG_GET_MODEL}, rep;
        memcpy(req.get_model.version, hash, MSG_HASH_LEN);
        req.get_model.offset = offset;
        req.get_model.length = MSG_CHUNK_MAX;
        int k = client_call(c, &req, &rep);
        if (k != CLIENT_OK) return k;
        if (rep.type == MSG_ERROR) {
            err_set("the aggregator refused GET_MODEL at byte %llu: %s (code %d)",
                    (unsigned long long)offset, rep.error.reason, rep.error.code);
            return CLIENT_REFUSED;
        }
        /* msg_decode keeps a chunk within its total and sets final iff it
         * ends there; an empty chunk that is not final would make no
         * progress. */
        const struct msg_model_chunk *ch = &rep.model_chunk;
        if (rep.type != MSG_MODEL_CHUNK || memcmp(ch->version, hash, MSG_HASH_LEN) != 0 ||
            ch->offset != offset || (total != UINT64_MAX && ch->total != total) ||
            (ch->data_len == 0 && !ch->final)) {
            err_set("the aggregator answered GET_MODEL(offset %llu) with %s that does not match "
                    "the request",
                    (unsigned long long)offset, msg_type_name(rep.type));
            return CLIENT_REFUSED;
        }
        total = ch->total;
        if (want_total && total != want_total) {
            err_set("the aggregator serves %llu bytes for an object announced as %llu bytes",
                    (unsigned long long)total, (unsigned long long)want_total);
            return CLIENT_REFUSED;
        }
        if (total > max_total || offset > total) {
            err_set("the aggregator serves an object of %llu bytes (%llu are here already): over "
                    "the limit of %llu bytes, or shorter than what is here",
                    (unsigned long long)total, (unsigned long long)offset,
                    (unsigned long long)max_total);
            return CLIENT_REFUSED;
        }
        if (ch->data_len && sink(arg, ch->data, ch->data_len) != 0) return CLIENT_FAILED;
        offset += ch->data_len;
        if (ch->final) break;
        if (stopped(c)) return CLIENT_STOPPED;
    }
    if (total_out) *total_out = total;
    return CLIENT_OK;
}
