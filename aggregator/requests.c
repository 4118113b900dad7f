/* requests — agg_handle: one request, one reply (docs/protocol.md,
 * "Federation flow"). HELLO (who may take part, and the round's ROUND),
 * STATUS (what `fedlora doctor` checks), ERROR replies; the submission
 * (uploads.c) and GET_MODEL (serve.c) have their own files. */
#include "aggregator/state.h"

#include "aggregator/store.h"
#include "util/err.h"
#include "wire/hello.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define RETRY_JOINING 2000 /* ms a member added mid-round waits between HELLOs */

int agg_encode(const struct msg *m, uint8_t **out, size_t *len) {
    if (msg_encode(m, out, len) < 0) return err_context("encoding the reply");
    return 0;
}

/* A reason as the wire's text rule wants it (docs/protocol.md: printable
 * ASCII): an ellipsis (U+2026, which messages from deeper layers may use)
 * becomes "...", any other byte outside 0x20..0x7e '?', cut to fit. */
static void ascii_reason(char *out, size_t cap, const char *in) {
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 1 < cap; p++) {
        if (p[0] == 0xe2 && p[1] == 0x80 && p[2] == 0xa6) {
            for (int k = 0; k < 3 && o + 1 < cap; k++) out[o++] = '.';
            p += 2;
        } else {
            out[o++] = *p < 0x20 || *p >= 0x7f ? '?' : (char)*p;
        }
    }
    out[o] = '\0';
}

/* An ERROR reply, logged. The reason is cut to MSG_REASON_MAX and stripped
 * of anything but printable ASCII (it may quote a peer's bytes). */
int agg_reply_error(agg *a, enum msg_error_code code, int retry_ms, uint8_t **out, size_t *len,
                    const char *fmt, ...) {
    struct msg m = {.type = MSG_ERROR};
    m.error.code = code;
    char raw[2 * MSG_REASON_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    ascii_reason(m.error.reason, sizeof m.error.reason, raw);
    if (!m.error.reason[0]) snprintf(m.error.reason, sizeof m.error.reason, "error");
    m.error.has_retry_after = retry_ms >= 0;
    m.error.retry_after_ms = retry_ms >= 0 ? (uint32_t)retry_ms : 0;
    if (code != MSG_ERR_BUSY && !(code == MSG_ERR_WRONG_ROUND && retry_ms >= 0)) {
        agg_say("refused: %s", m.error.reason);
        if (code != MSG_ERR_BAD_MESSAGE && a->refused++ < AGG_REFUSALS_KEPT)
            snprintf(a->refusals[a->nrefusals++], sizeof a->refusals[0], "%s", m.error.reason);
        agg_status_refusal(a, m.error.reason);
    }
    return agg_encode(&m, out, len);
}

static void mark_told(agg *a, const char *name) {
    for (int i = 0; i < a->ntold; i++)
        if (strcmp(a->told[i], name) == 0) return;
    if (a->ntold < a->told_cap) {
        snprintf(a->told[a->ntold++], sizeof a->told[0], "%s", name);
        agg_say("told %s that the federation is finished (%d of %d members)", name, a->ntold,
                agg_roster_count(a->roster));
        if (a->ntold >= agg_roster_count(a->roster)) a->all_told_at = (uint64_t)time(NULL);
    }
}

static int on_hello(agg *a, const agg_peer *peer, const struct msg_hello *h, uint64_t now,
                    uint8_t **out, size_t *len) {
    agg_member m;
    /* On an authenticated connection only the key the transport proved may
     * say HELLO: a HELLO captured elsewhere (it replays for HELLO_SKEW_MAX_S)
     * opens no session here. */
    if (peer && peer->authenticated && memcmp(peer->fp, h->fingerprint, KEYS_FP_LEN) != 0)
        return agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                               "HELLO names another identity than the key this connection "
                               "authenticated with");
    int found = agg_roster_find(a->roster, h->fingerprint, &m);
    if (found < 0) return -1;
    char fp[17];
    agg_short_hex(h->fingerprint, fp);
    if (!found) {
        const char *st = agg_roster_key_status(a->roster, h->fingerprint);
        if (!strcmp(st, "revoked"))
            return agg_reply_error(
                a, MSG_ERR_NOT_MEMBER, -1, out, len,
                "revoked: '%s' (identity %s...) was revoked from consortium '%s' "
                "(roster version %llu)",
                h->name, fp, a->cfg.consortium_name,
                (unsigned long long)agg_roster_version(a->roster));
        if (!strcmp(st, "rotated"))
            return agg_reply_error(a, MSG_ERR_NOT_MEMBER, -1, out, len,
                                   "rotated: identity %s... is an old key of '%s'; the roster now "
                                   "lists new keys for it: run the node with the new keys",
                                   fp, h->name);
        return agg_reply_error(
            a, MSG_ERR_NOT_MEMBER, -1, out, len,
            "unknown node: '%s' (identity %s...) is not a member of consortium '%s'", h->name, fp,
            a->cfg.consortium_name);
    }
    if (strcmp(m.name, h->name) != 0)
        return agg_reply_error(a, MSG_ERR_NOT_MEMBER, -1, out, len,
                               "unknown node: name '%s' does not match the identity's name '%s'",
                               h->name, m.name);
    /* The fingerprint is public: only the signature says the member asks. */
    if (hello_verify(h, a->cfg.consortium, &m.pub, now, HELLO_SKEW_MAX_S) < 0)
        return agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len, "%s", err_msg());
    /* Verified: this connection may upload for m from now on (and is the
     * status page's last contact). */
    if (agg_session_open(a, peer, m.name) < 0) return -1;
    agg_status_member_seen(a, m.name, 0);
    if (a->state == AGG_FINISHED) {
        /* "final" says it (docs/protocol.md): the node is done and exits 0.
         * The reason keeps the words nodes older than that field look for;
         * no retry_after. */
        char hex[STORE_HEX_LEN + 1];
        hex_encode(a->version, 32, hex);
        mark_told(a, m.name);
        struct msg e = {.type = MSG_ERROR};
        e.error.code = MSG_ERR_WRONG_ROUND;
        e.error.has_final = true;
        memcpy(e.error.final, a->version, 32);
        snprintf(e.error.reason, sizeof e.error.reason,
                 "finished: all %llu rounds are done; final version %s",
                 (unsigned long long)a->round, hex);
        return agg_encode(&e, out, len);
    }
    /* Between calls the round is at rest (agg.h): OPEN, COLLECTING or
     * FINISHED. A round being aggregated is never seen from here. */
    if (!agg_open_state(a))
        return err_set("HELLO in state %s of round %llu: the state machine is not at rest (a "
                       "bug)",
                       agg_state_name(a->state), (unsigned long long)a->round);
    int part = agg_takes_part(a, &m);
    if (part < 0) return -1;
    if (!part && !m.observer)
        return agg_reply_error(a, MSG_ERR_WRONG_ROUND, RETRY_JOINING, out, len,
                               "welcome: '%s' joined after round %llu opened and takes part from "
                               "round %llu on (rounds.join = next); ask again",
                               m.name, (unsigned long long)a->round,
                               (unsigned long long)a->round + 1);
    agg_status_member_seen(a, m.name, !m.observer);
    struct msg r = {.type = MSG_ROUND};
    r.round.round = a->round;
    memcpy(r.round.base, a->base, 32);
    r.round.train = a->cfg.train;
    r.round.deadline = a->deadline;
    r.round.base_sharded = store_is_sharded(a->cfg.state, a->base) == 1;
    /* Low-rank sync: a node that holds the previous version can make this
     * base from it and the update object (docs/protocol.md). */
    r.round.has_update = a->has_update && memcmp(a->update_to, a->base, 32) == 0;
    if (r.round.has_update) {
        memcpy(r.round.update_from, a->update_from, 32);
        memcpy(r.round.update_hash, a->update_hash, 32);
        r.round.update_size = a->update_size;
    }
    if (agg_start_round_fields(a, &r.round) < 0) return -1;
    return agg_encode(&r, out, len);
}

/* What `fedlora doctor` needs to check a node's setup from the outside; no
 * state changes. Everything in it is public: the clock, the round, and the
 * roster, which holds names and public keys only (docs/threat-model.md). */
static int on_status(agg *a, const struct msg_status *q, uint64_t now, uint8_t **out, size_t *len) {
    struct msg m = {.type = MSG_STATUS_INFO};
    struct msg_status_info *i = &m.status_info;
    i->time = now;
    snprintf(i->consortium, sizeof i->consortium, "%s", a->cfg.consortium_name);
    i->round = a->round;
    snprintf(i->state, sizeof i->state, "%s", agg_state_name(a->state));
    memcpy(i->version, agg_open_state(a) ? a->base : a->version, 32);
    agg_member mem;
    const char *st = agg_roster_key_status(a->roster, q->fingerprint);
    if (agg_roster_key_owner(a->roster, q->fingerprint, &mem) == 1 && strcmp(mem.name, q->name))
        st = "unknown"; /* the key is someone else's */
    snprintf(i->member, sizeof i->member, "%s", st);
    i->has_roster = agg_roster_hash(a->roster, i->roster_hash, &i->roster_size) == 1;
    i->has_aggregator = keys_fingerprint(&a->keys.pub, i->aggregator) == 0;
    i->roster_version = agg_roster_version(a->roster);
    return agg_encode(&m, out, len);
}

int agg_handle(agg *a, const agg_peer *peer, const void *req, size_t len, uint64_t now,
               uint8_t **reply, size_t *reply_len) {
    /* A roster written a moment ago is in force for this request already
     * (a stat when nothing changed): a member added is answered, a member
     * revoked is refused, from the very next message on. */
    if (agg_roster_tick(a) < 0) return -1;
    struct msg m;
    if (msg_decode(req, len, NULL, &m) < 0)
        return agg_reply_error(a, MSG_ERR_BAD_MESSAGE, -1, reply, reply_len, "%s", err_msg());
    int rc;
    switch (m.type) {
        case MSG_HELLO:
            rc = on_hello(a, peer, &m.hello, now, reply, reply_len);
            break;
        case MSG_GET_MODEL:
            rc = agg_on_get_model(a, &m.get_model, reply, reply_len);
            break;
        case MSG_SUBMIT_BEGIN:
            rc = agg_on_submit_begin(a, agg_session_of(a, peer), &m.submit_begin, now, reply,
                                     reply_len);
            break;
        case MSG_SUBMIT_CHUNK:
            rc = agg_on_submit_chunk(a, agg_session_of(a, peer), &m.submit_chunk, now, reply,
                                     reply_len);
            break;
        case MSG_SUBMIT_END:
            rc =
                agg_on_submit_end(a, agg_session_of(a, peer), &m.submit_end, now, reply, reply_len);
            break;
        case MSG_STATUS:
            rc = on_status(a, &m.status, now, reply, reply_len);
            break;
        default:
            return agg_reply_error(a, MSG_ERR_BAD_MESSAGE, -1, reply, reply_len,
                                   "%s is not a request the aggregator answers",
                                   msg_type_name(m.type));
    }
    return rc;
}
