/* uploads — SUBMIT_BEGIN / SUBMIT_CHUNK / SUBMIT_END.
 *
 * A submission is assembled in STATE/inbox/<msgid>.part, checked (digest,
 * envelope header and signature, then opened and its DELTA checked against
 * the base: round, base version, shapes, finite values), renamed to
 * STATE/inbox/r<round>-<member>.env, the directory fsync'd, and journaled
 * (accept) BEFORE the RECEIPT goes out; the envelope stays sealed at rest. */
#include "aggregator/state.h"

#include "util/err.h"
#include "util/hex.h"
#include "util/fio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int reply_receipt(const accept_rec *r, uint8_t **out, size_t *len) {
    struct msg m = {.type = MSG_RECEIPT};
    m.receipt.round = r->round;
    memcpy(m.receipt.id, r->msgid, MSG_ID_LEN);
    memcpy(m.receipt.digest, r->digest, MSG_HASH_LEN);
    m.receipt.time = r->time;
    return agg_encode(&m, out, len);
}

/* SUBMIT_BEGIN and SUBMIT_CHUNK are answered with an ACK: "go on", with the
 * bytes of the upload held so far. The one answer that means "stored" is the
 * RECEIPT of SUBMIT_END, carrying the envelope's digest. */
static int reply_ack(const uint8_t id[MSG_ID_LEN], uint64_t stored, uint8_t **out, size_t *len) {
    struct msg m = {.type = MSG_ACK};
    memcpy(m.ack.id, id, MSG_ID_LEN);
    m.ack.stored = stored;
    return agg_encode(&m, out, len);
}

void agg_upload_drop(upload *u) {
    if (!u->used) return;
    if (u->fd >= 0) {
        close(u->fd);
        unlink(u->part);
    }
    crypto_sha256_free(u->sha);
    memset(u, 0, sizeof *u);
    u->fd = -1;
}

static upload *upload_find(agg *a, const uint8_t id[MSG_ID_LEN]) {
    for (int i = 0; i < a->nup; i++)
        if (a->up[i].used && memcmp(a->up[i].msgid, id, MSG_ID_LEN) == 0) return &a->up[i];
    return NULL;
}

static upload *upload_slot(agg *a) {
    for (int i = 0; i < a->nup; i++)
        if (!a->up[i].used) return &a->up[i];
    return NULL;
}

/* Why a round number is not the one open now, for WRONG_ROUND replies. */
static void round_problem(const agg *a, uint64_t r, char *why, size_t n) {
    if (r < a->round)
        snprintf(why, n, "stale round: round %llu is over, round %llu is open",
                 (unsigned long long)r, (unsigned long long)a->round);
    else if (r > a->round)
        snprintf(why, n, "round %llu is not open (round %llu is)", (unsigned long long)r,
                 (unsigned long long)a->round);
    else if (a->state == AGG_FINISHED)
        snprintf(why, n, "finished: no round is open");
    else
        snprintf(why, n, "round %llu is closed: late submission refused", (unsigned long long)r);
}

int agg_on_submit_begin(agg *a, const struct msg_submit_begin *b, uint64_t now, uint8_t **out,
                        size_t *len) {
    char idhex[2 * MSG_ID_LEN + 1];
    hex_encode(b->id, MSG_ID_LEN, idhex);
    const accept_rec *prev = agg_find_msgid(a, b->id);
    if (!prev) {
        char why[160];
        if (b->round != a->round || !agg_open_state(a)) {
            round_problem(a, b->round, why, sizeof why);
            return agg_reply_error(a, MSG_ERR_WRONG_ROUND, -1, out, len, "%s", why);
        }
        if (b->size > a->cfg.max_submission)
            return agg_reply_error(a, MSG_ERR_TOO_LARGE, -1, out, len,
                                   "oversized submission: %llu bytes, the limit is %llu",
                                   (unsigned long long)b->size,
                                   (unsigned long long)a->cfg.max_submission);
    }
    upload *u = upload_find(a, b->id);
    if (u) agg_upload_drop(u); /* the node starts over (it restarted, or gave up on a chunk) */
    if (!(u = upload_slot(a)))
        return agg_reply_error(a, MSG_ERR_BUSY, 2000, out, len,
                               "too many uploads in progress (%d); try again", a->nup);
    u->used = 1;
    u->fd = -1;
    memcpy(u->msgid, b->id, MSG_ID_LEN);
    u->round = b->round;
    u->size = b->size;
    u->chunks = b->chunks;
    u->accepted = prev;
    u->last_seen = now;
    if (crypto_sha256_new(&u->sha) < 0) {
        agg_upload_drop(u);
        return -1;
    }
    /* An already accepted msgid (prev) is only hashed, to answer END with the
     * same receipt when it is the same envelope; nothing is written. */
    if (!prev) {
        if (snprintf(u->part, sizeof u->part, "%s/inbox/%s.part", a->cfg.state, idhex) >=
            (int)sizeof u->part) {
            agg_upload_drop(u);
            return err_set("state path too long");
        }
        u->fd = open(u->part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (u->fd < 0) {
            err_errno("creating %s", u->part);
            agg_upload_drop(u);
            return -1;
        }
    }
    return reply_ack(b->id, 0, out, len);
}

int agg_on_submit_chunk(agg *a, const struct msg_submit_chunk *c, uint64_t now, uint8_t **out,
                        size_t *len) {
    upload *u = upload_find(a, c->id);
    if (!u)
        return agg_reply_error(a, MSG_ERR_NOT_FOUND, -1, out, len,
                               "no upload in progress for this msgid; start with SUBMIT_BEGIN");
    u->last_seen = now;
    if (c->index + 1 == u->next) /* a retried chunk whose answer was lost */
        return reply_ack(c->id, u->received, out, len);
    if (c->index != u->next) {
        uint32_t want = u->next;
        agg_upload_drop(u);
        return agg_reply_error(a, MSG_ERR_BAD_MESSAGE, -1, out, len,
                               "SUBMIT_CHUNK %u out of order: expected chunk %u; start over with "
                               "SUBMIT_BEGIN",
                               c->index, want);
    }
    if (c->index >= u->chunks || c->data_len > u->size - u->received) {
        uint64_t size = u->size;
        agg_upload_drop(u);
        return agg_reply_error(
            a, MSG_ERR_TOO_LARGE, -1, out, len,
            "oversized submission: more bytes or chunks than the %llu bytes SUBMIT_BEGIN "
            "declared",
            (unsigned long long)size);
    }
    if (crypto_sha256_update(u->sha, c->data, c->data_len) < 0) return -1;
    if (u->fd >= 0 && fio_write_full(u->fd, c->data, c->data_len, u->part) < 0) {
        agg_upload_drop(u);
        return -1;
    }
    u->received += c->data_len;
    u->next++;
    a->bytes_received += c->data_len;
    agg_status_bytes(a, c->data_len, 0);
    agg_crash_point(a, "collect");
    return reply_ack(c->id, u->received, out, len);
}

/* A new submission must be signed with the member's current key. */
static int lookup_member(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out) {
    agg_member m;
    int r = agg_roster_find(arg, fp, &m);
    if (r == 1) *out = m.pub;
    return r;
}

/* An accepted one opens under any key its member ever had (a rotation after
 * the acceptance loses nothing); whether the member is still active is
 * decided by the caller. */
int agg_lookup_any_key(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out) {
    agg_member m;
    int r = agg_roster_key_owner(arg, fp, &m);
    if (r == 1) *out = m.pub;
    return r;
}

static int seen_msgid(void *arg, const uint8_t id[ENVELOPE_MSGID_LEN]) {
    return agg_find_msgid(arg, id) != NULL;
}

void agg_envelope_expect(const agg_config *c, agg_roster *roster, uint64_t round,
                         envelope_lookup_fn lookup, envelope_expect *x) {
    memset(x, 0, sizeof *x);
    memcpy(x->consortium, c->consortium, 32);
    x->round_min = x->round_max = round;
    x->check_payload_type = 1;
    x->payload_type = PAYLOAD_TYPE_DELTA;
    x->max_payload = c->max_submission;
    x->lookup = lookup;
    x->lookup_arg = roster;
}

/* The envelope refusal as an ERROR code and a reason prefix. */
static enum msg_error_code refusal(envelope_status st, const char **what) {
    switch (st) {
        case ENVELOPE_ECONSORTIUM:
            *what = "wrong consortium";
            return MSG_ERR_REJECTED;
        case ENVELOPE_EROUND:
            *what = "stale round";
            return MSG_ERR_WRONG_ROUND;
        case ENVELOPE_EUNKNOWN_SENDER:
            *what = "unknown node";
            return MSG_ERR_NOT_MEMBER;
        case ENVELOPE_EREPLAY:
            *what = "replay";
            return MSG_ERR_REJECTED;
        case ENVELOPE_ETOOBIG:
            *what = "oversized submission";
            return MSG_ERR_TOO_LARGE;
        case ENVELOPE_ERECIPIENT:
            *what = "sealed for another aggregator";
            return MSG_ERR_REJECTED;
        case ENVELOPE_ETYPE:
            *what = "not a DELTA envelope";
            return MSG_ERR_REJECTED;
        case ENVELOPE_EIO:
        case ENVELOPE_OK:
            *what = "internal error";
            return MSG_ERR_INTERNAL;
        default:
            *what = "tampered envelope";
            return MSG_ERR_REJECTED;
    }
}

/* Opens and checks a sealed envelope of the open round held in memory:
 * returns 0 with the payload (malloc'd) and the sender, 1 after replying with
 * the refusal, -1 on an internal failure. */
static int open_envelope(agg *a, const uint8_t *env, size_t env_len, uint8_t **payload,
                         size_t *plen, agg_member *sender, uint8_t **out, size_t *len) {
    envelope_expect x;
    agg_envelope_expect(&a->cfg, a->roster, a->round, lookup_member, &x);
    x.seen = seen_msgid;
    x.seen_arg = a;
    envelope_status st = ENVELOPE_OK;
    keys_public pub;
    envelope_header hdr;
    if (envelope_open_mem(&x, &a->keys, env, env_len, payload, plen, &hdr, &pub, &st) < 0) {
        const char *what;
        enum msg_error_code code = refusal(st, &what);
        if (code == MSG_ERR_INTERNAL) return -1;
        if (agg_reply_error(a, code, -1, out, len, "%s: %s", what, err_msg()) < 0) return -1;
        return 1;
    }
    uint8_t fp[KEYS_FP_LEN];
    if (keys_fingerprint(&pub, fp) < 0 || agg_roster_find(a->roster, fp, sender) != 1) {
        free(*payload);
        return err_set("sender of a verified envelope is not on the member list");
    }
    int part = sender->observer ? 0 : agg_takes_part(a, sender);
    if (part <= 0) {
        free(*payload);
        *payload = NULL;
        if (part < 0) return -1;
        if (sender->observer)
            return agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                                   "%s is an observer in the roster: observers do not submit",
                                   sender->name) < 0
                       ? -1
                       : 1;
        return agg_reply_error(
                   a, MSG_ERR_WRONG_ROUND, -1, out, len,
                   "%s joined after round %llu opened and takes part from round %llu on "
                   "(rounds.join = next)",
                   sender->name, (unsigned long long)a->round, (unsigned long long)a->round + 1) < 0
                   ? -1
                   : 1;
    }
    return 0;
}

int agg_on_submit_end(agg *a, const struct msg_submit_end *e, uint64_t now, uint8_t **out,
                      size_t *len) {
    upload *u = upload_find(a, e->id);
    if (!u)
        return agg_reply_error(a, MSG_ERR_NOT_FOUND, -1, out, len,
                               "no upload in progress for this msgid; start with SUBMIT_BEGIN");
    if (u->received != u->size || u->next != u->chunks) {
        uint64_t got = u->received, size = u->size;
        agg_upload_drop(u);
        return agg_reply_error(a, MSG_ERR_BAD_MESSAGE, -1, out, len,
                               "SUBMIT_END before the whole envelope arrived: %llu of %llu bytes; "
                               "start over with SUBMIT_BEGIN",
                               (unsigned long long)got, (unsigned long long)size);
    }
    uint8_t digest[32];
    if (crypto_sha256_final(u->sha, digest) < 0) return -1;
    crypto_sha256_free(u->sha);
    u->sha = NULL;
    if (!crypto_equal(digest, e->digest, 32)) {
        agg_upload_drop(u);
        return agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                               "digest mismatch: the bytes received do not hash to SUBMIT_END's "
                               "digest; submit again");
    }
    if (u->accepted) {
        /* The same msgid once more: the same receipt when it is the same
         * envelope (a node that lost the first answer), else a replay. */
        const accept_rec *prev = u->accepted;
        agg_upload_drop(u);
        if (memcmp(prev->digest, digest, 32) == 0) return reply_receipt(prev, out, len);
        return agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                               "replay: message id already accepted in round %llu (from %s) with "
                               "other bytes",
                               (unsigned long long)prev->round, prev->member);
    }
    uint64_t round = u->round, size = u->size;
    char part[AGG_PATH_MAX];
    snprintf(part, sizeof part, "%s", u->part);
    int synced = fsync(u->fd) == 0;
    if (!synced) err_errno("fsync of %s", part);
    if (close(u->fd) != 0 && synced) synced = 0, err_errno("closing %s", part);
    u->fd = -1; /* closed here; the file is ours now */
    agg_upload_drop(u);
    if (!synced) {
        unlink(part);
        return -1;
    }
    if (round != a->round || !agg_open_state(a)) {
        char why[160];
        unlink(part);
        round_problem(a, round, why, sizeof why);
        return agg_reply_error(a, MSG_ERR_WRONG_ROUND, -1, out, len, "%s", why);
    }

    /* Check everything now, so that the node hears about a bad delta while
     * it can still do something about it: the envelope (header, signature,
     * segments), then the DELTA against the round's base. */
    char *env = NULL;
    size_t env_len = 0;
    uint8_t *payload = NULL;
    size_t plen = 0;
    agg_member m;
    int rc = -1;
    if (fio_read_all(part, (size_t)size, &env, &env_len) < 0) goto done;
    rc = open_envelope(a, (const uint8_t *)env, env_len, &payload, &plen, &m, out, len);
    if (rc != 0) goto done;
    rc = -1;
    agg_status_member_seen(a, m.name, 0); /* the signature says whose connection this is */
    const accept_rec *mine = agg_find_member(a, round, m.name);
    if (mine) {
        rc = agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                             "already submitted: %s's delta for round %llu was accepted (another "
                             "message id); one delta per member and round",
                             m.name, (unsigned long long)round);
        goto done;
    }
    if (agg_ensure_model(a, a->base) < 0) goto done;
    agg_update up;
    char why[AGG_WHY_MAX];
    int b =
        agg_update_build(a->model, a->base, round, m.name, m.max_weight, payload, plen, &up, why);
    if (b < 0) goto done;
    if (b > 0) {
        rc = agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len, "%s's delta: %s", m.name, why);
        goto done;
    }
    uint64_t tokens = up.tokens;
    agg_update_free(&up);

    /* Durable before the receipt: rename into place, fsync the directory,
     * journal it. */
    char final[AGG_PATH_MAX];
    if (agg_inbox_path(&a->cfg, round, m.name, final, sizeof final) < 0) goto done;
    if (rename(part, final) != 0) {
        err_errno("renaming %s to %s", part, final);
        goto done;
    }
    if (fio_fsync_dir_of(final) < 0) goto done;
    journal_record ar = {.kind = JOURNAL_ACCEPT, .round = round, .size = size, .time = now};
    snprintf(ar.member, sizeof ar.member, "%s", m.name);
    memcpy(ar.msgid, e->id, MSG_ID_LEN);
    memcpy(ar.digest, digest, 32);
    if (agg_commit(a, &ar) < 0) goto done;
    agg_say("round %llu: accepted %s's delta (%llu bytes, %llu tokens), %d accepted so far",
            (unsigned long long)round, ar.member, (unsigned long long)size,
            (unsigned long long)tokens, agg_accepted_count(a));
    agg_crash_point(a, "receipt");
    rc = reply_receipt(&a->acc[a->nacc - 1], out, len);
done:
    unlink(part); /* gone already when accepted (renamed) */
    free(env);
    free(payload);
    return rc;
}
