/* uploads — sessions, SUBMIT_BEGIN / SUBMIT_CHUNK / SUBMIT_END.
 *
 * Nothing is spent on a peer before it proved who it is: an upload begins
 * only on a connection whose member said a verified HELLO on it (its
 * session), each member holds at most AGG_UPLOADS_PER_MEMBER uploads (its
 * oldest goes when it begins another), and an upload's declared size must
 * fit the free disk (statvfs) with what the other uploads may still write.
 * A chunk that cannot be written (a full disk) refuses that upload and
 * nothing else.
 *
 * A submission is assembled in STATE/inbox/<msgid>.part and checked
 * streaming from there, never held whole: digest (hashed as it came), then
 * the envelope's header and signature (envelope_verify, one segment in
 * memory: garbage is refused on its first bytes), then it is opened (only
 * the plaintext of an envelope the member signed is held, to decode its
 * DELTA) and checked against the base (round, base version, shapes, finite
 * values, the default bound). Then it is renamed to
 * STATE/inbox/r<round>-<member>.env, the directory fsync'd, and journaled
 * (accept) BEFORE the RECEIPT goes out; the envelope stays sealed at rest. */
#include "aggregator/state.h"

#include "util/err.h"
#include "util/hex.h"
#include "util/fio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Bytes kept free beside the uploads for the journal, metrics and versions
 * written while they are under way: 64 MiB, or an eighth of a smaller file
 * system. */
#define DISK_MARGIN ((uint64_t)64 << 20)
#define RETRY_DISK_MS 30000 /* a node told the disk is full asks again after this */
#define WHY_MAX 640         /* a refusal's text before agg_reply_error cuts it to the wire's */

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

/* ---- sessions ------------------------------------------------------------------ */

const agg_session *agg_session_of(const agg *a, const agg_peer *peer) {
    if (!peer || !peer->id_len) return NULL;
    for (int i = 0; i < a->nsessions; i++)
        if (a->sessions[i].peer_len == peer->id_len &&
            !memcmp(a->sessions[i].peer, peer->id, peer->id_len))
            return &a->sessions[i];
    return NULL;
}

int agg_session_open(agg *a, const agg_peer *peer, const char *member) {
    if (!peer || !peer->id_len || peer->id_len > AGG_PEER_ID_MAX) return 0;
    /* A connection speaks for one member: the last that said a verified
     * HELLO on it. */
    for (int i = 0; i < a->nsessions;)
        if (a->sessions[i].peer_len == peer->id_len &&
            !memcmp(a->sessions[i].peer, peer->id, peer->id_len) &&
            strcmp(a->sessions[i].member, member) != 0)
            a->sessions[i] = a->sessions[--a->nsessions];
        else
            i++;
    agg_session *s = NULL;
    for (int i = 0; i < a->nsessions && !s; i++)
        if (!strcmp(a->sessions[i].member, member)) s = &a->sessions[i];
    if (!s) {
        if (a->nsessions == a->sessions_cap) {
            int cap = a->sessions_cap ? 2 * a->sessions_cap : 16;
            agg_session *v = realloc(a->sessions, (size_t)cap * sizeof *v);
            if (!v) return err_set("out of memory for %d sessions", cap);
            a->sessions = v;
            a->sessions_cap = cap;
        }
        s = &a->sessions[a->nsessions++];
        snprintf(s->member, sizeof s->member, "%s", member);
    }
    memcpy(s->peer, peer->id, peer->id_len);
    s->peer_len = peer->id_len;
    return 0;
}

void agg_sessions_prune(agg *a) {
    for (int i = 0; i < a->nsessions;) {
        agg_member m;
        if (agg_roster_find_name(a->roster, a->sessions[i].member, &m) == 1 && m.active) {
            i++;
            continue;
        }
        for (int k = 0; k < a->nup; k++)
            if (a->up[k].used && !strcmp(a->up[k].member, a->sessions[i].member) &&
                !a->up[k].accepted)
                agg_upload_drop(&a->up[k]);
        a->sessions[i] = a->sessions[--a->nsessions];
    }
}

/* ---- uploads ---------------------------------------------------------------------- */

/* The upload of message id `id` that member s began, or NULL: another
 * member's upload of the same id is no business of this connection. */
static upload *upload_find(agg *a, const agg_session *s, const uint8_t id[MSG_ID_LEN]) {
    for (int i = 0; i < a->nup; i++)
        if (a->up[i].used && !strcmp(a->up[i].member, s->member) &&
            memcmp(a->up[i].msgid, id, MSG_ID_LEN) == 0)
            return &a->up[i];
    return NULL;
}

/* A free slot for member s: when it holds its share already, its oldest
 * upload makes room (a node that restarted mid-upload left it), never
 * another member's. */
static upload *upload_slot(agg *a, const agg_session *s) {
    upload *oldest = NULL, *free_slot = NULL;
    int mine = 0;
    for (int i = 0; i < a->nup; i++) {
        upload *u = &a->up[i];
        if (!u->used) {
            if (!free_slot) free_slot = u;
        } else if (!strcmp(u->member, s->member)) {
            mine++;
            if (!oldest || u->begun < oldest->begun) oldest = u;
        }
    }
    if (mine >= AGG_UPLOADS_PER_MEMBER && oldest) {
        agg_upload_drop(oldest);
        return oldest;
    }
    return free_slot;
}

/* Whether `size` more bytes fit STATE/inbox's file system beside what the
 * uploads in progress may still write and DISK_MARGIN: 1 yes, 0 no (*avail
 * says what is free), -1 when statvfs fails. */
static int disk_room(const agg *a, uint64_t size, uint64_t *avail) {
    char dir[AGG_PATH_MAX];
    struct statvfs v;
    if (agg_state_path(a, "inbox", dir, sizeof dir) < 0) return -1;
    if (statvfs(dir, &v) != 0) return err_errno("statvfs of %s", dir);
    *avail = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
    uint64_t total = (uint64_t)v.f_blocks * (uint64_t)v.f_frsize;
    uint64_t owed = total / 8 < DISK_MARGIN ? total / 8 : DISK_MARGIN;
    for (int i = 0; i < a->nup; i++)
        if (a->up[i].used && a->up[i].fd >= 0) owed += a->up[i].size - a->up[i].received;
    return size <= *avail && owed <= *avail - size;
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

/* A refused upload, told to the node: the disk could not take it (full, or
 * failing), so it asks again later; the aggregator goes on. */
static int refuse_disk(agg *a, upload *u, const char *what, uint8_t **out, size_t *len) {
    char why[ERR_MSG_MAX];
    snprintf(why, sizeof why, "%s", err_msg());
    if (u) agg_upload_drop(u);
    agg_say("DISK: %s (%s); the upload is refused, free space in %s", what, why, a->cfg.state);
    return agg_reply_error(a, MSG_ERR_BUSY, RETRY_DISK_MS, out, len,
                           "the aggregator cannot store this upload now (%s); try again later",
                           why);
}

int agg_on_submit_begin(agg *a, const agg_session *s, const struct msg_submit_begin *b,
                        uint64_t now, uint8_t **out, size_t *len) {
    char idhex[2 * MSG_ID_LEN + 1];
    hex_encode(b->id, MSG_ID_LEN, idhex);
    if (!s)
        return agg_reply_error(a, MSG_ERR_BAD_MESSAGE, -1, out, len,
                               "no verified HELLO on this connection: say HELLO, then submit");
    agg_member mem;
    if (agg_roster_find_name(a->roster, s->member, &mem) != 1 || !mem.active)
        return agg_reply_error(a, MSG_ERR_NOT_MEMBER, -1, out, len,
                               "%s is no longer an active member", s->member);
    if (mem.observer)
        return agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                               "%s is an observer in the roster: observers do not submit",
                               s->member);
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
        /* Another member's message id: ids are random, so this is not a
         * node of that member starting over. */
        for (int i = 0; i < a->nup; i++)
            if (a->up[i].used && strcmp(a->up[i].member, s->member) != 0 &&
                memcmp(a->up[i].msgid, b->id, MSG_ID_LEN) == 0)
                return agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                                       "message id %s is another member's upload", idhex);
    }
    upload *u = upload_find(a, s, b->id);
    if (u) agg_upload_drop(u); /* the node starts over (it restarted, or gave up on a chunk) */
    if (!(u = upload_slot(a, s)))
        return agg_reply_error(a, MSG_ERR_BUSY, 2000, out, len,
                               "too many uploads in progress (%d); try again", a->nup);
    if (!prev) {
        uint64_t avail = 0;
        int room = disk_room(a, b->size, &avail);
        if (room < 0) return refuse_disk(a, NULL, "cannot tell the free disk space", out, len);
        if (!room) {
            err_set("%llu bytes free, an upload of %llu bytes and those under way need more",
                    (unsigned long long)avail, (unsigned long long)b->size);
            return refuse_disk(a, NULL, "the disk is too full for an upload", out, len);
        }
    }
    u->used = 1;
    u->fd = -1;
    snprintf(u->member, sizeof u->member, "%s", s->member);
    memcpy(u->msgid, b->id, MSG_ID_LEN);
    u->round = b->round;
    u->size = b->size;
    u->chunks = b->chunks;
    u->accepted = prev;
    u->last_seen = now;
    u->begun = ++a->uploads_begun;
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
            return refuse_disk(a, u, "cannot create an upload file", out, len);
        }
    }
    return reply_ack(b->id, 0, out, len);
}

int agg_on_submit_chunk(agg *a, const agg_session *s, const struct msg_submit_chunk *c,
                        uint64_t now, uint8_t **out, size_t *len) {
    upload *u = s ? upload_find(a, s, c->id) : NULL;
    if (!u)
        return agg_reply_error(a, MSG_ERR_NOT_FOUND, -1, out, len,
                               "no upload in progress for this msgid on this connection; say "
                               "HELLO and start with SUBMIT_BEGIN");
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
    if (u->fd >= 0 && fio_write_full(u->fd, c->data, c->data_len, u->part) < 0)
        return refuse_disk(a, u, "cannot write an upload chunk", out, len);
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

/* Where an envelope's plaintext goes when it is opened: a buffer of the
 * payload size its (already verified) header declares. */
typedef struct {
    const envelope_header *hdr;
    uint8_t *buf;
    size_t len, cap;
} plain_sink;

static int to_plain(void *arg, const void *data, size_t n) {
    plain_sink *p = arg;
    if (!p->buf) {
        p->cap = (size_t)p->hdr->payload_size;
        if (!(p->buf = malloc(p->cap ? p->cap : 1)))
            return err_set("out of memory for a %zu-byte DELTA", p->cap);
    }
    if (n > p->cap - p->len) return err_set("an envelope's plaintext runs past its header's size");
    memcpy(p->buf + p->len, data, n);
    p->len += n;
    return 0;
}

/* Checks the sealed envelope in `path` as a submission for the open round
 * by `expected` (NULL: any active member), streaming: the header and the
 * signature first (envelope_verify reads one segment at a time, no key
 * needed), then it is opened (the plaintext of a signed envelope, the only
 * thing held) and its DELTA checked against the round's base and the
 * default bound. 0: *sender, *hdr and *tokens set; 1: refused, *code and
 * why say so; -1: an internal failure. */
static int check_envelope_file(agg *a, const char *path, const uint8_t *expected,
                               agg_member *sender, envelope_header *hdr, uint64_t *tokens,
                               enum msg_error_code *code, char why[WHY_MAX]) {
    envelope_expect x;
    agg_envelope_expect(&a->cfg, a->roster, a->round, lookup_member, &x);
    x.seen = seen_msgid;
    x.seen_arg = a;
    x.expected_sender = expected;
    envelope_status st = ENVELOPE_OK;
    keys_public pub;
    plain_sink plain = {.hdr = hdr};
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = -1;
    if (fd < 0) return err_errno("opening %s", path);
    int ok = envelope_verify(&x, a->keys.pub.kx_pub, envelope_fd_read, &fd, hdr, &pub, &st) == 0;
    if (ok && lseek(fd, 0, SEEK_SET) != 0) {
        err_errno("rewinding %s", path);
        goto done;
    }
    /* Opened only once its sender's signature is known good: nothing is
     * decrypted, nothing allocated, for bytes no member signed. */
    ok = ok &&
         envelope_open(&x, &a->keys, envelope_fd_read, &fd, to_plain, &plain, hdr, &pub, &st) == 0;
    if (!ok) {
        const char *what;
        *code = refusal(st, &what);
        if (*code == MSG_ERR_INTERNAL) goto done;
        snprintf(why, WHY_MAX, "%s: %s", what, err_msg());
        rc = 1;
        goto done;
    }
    uint8_t fp[KEYS_FP_LEN];
    if (keys_fingerprint(&pub, fp) < 0 || agg_roster_find(a->roster, fp, sender) != 1) {
        err_set("sender of a verified envelope is not on the member list");
        goto done;
    }
    rc = 1;
    int part = sender->observer ? 0 : agg_takes_part(a, sender);
    if (part < 0) {
        rc = -1;
    } else if (sender->observer) {
        *code = MSG_ERR_REJECTED;
        snprintf(why, WHY_MAX, "%s is an observer in the roster: observers do not submit",
                 sender->name);
    } else if (!part) {
        *code = MSG_ERR_WRONG_ROUND;
        snprintf(why, WHY_MAX,
                 "%s joined after round %llu opened and takes part from round %llu on "
                 "(rounds.join = next)",
                 sender->name, (unsigned long long)a->round, (unsigned long long)a->round + 1);
    } else if (agg_find_member(a, a->round, sender->name)) {
        *code = MSG_ERR_REJECTED;
        snprintf(why, WHY_MAX,
                 "already submitted: %s's delta for round %llu was accepted (another message "
                 "id); one delta per member and round",
                 sender->name, (unsigned long long)a->round);
    } else if (agg_ensure_model(a, a->base) < 0) {
        rc = -1;
    } else {
        agg_update up;
        char bad[AGG_WHY_MAX];
        int b = agg_update_build(a->model, a->base, a->round, sender->name, sender->max_weight,
                                 plain.buf, plain.len, &up, bad);
        if (b == 0) {
            /* The default bound on a member's influence (merge.h), measured
             * against this round's base: its norms are kept for the round. */
            if (!agg_norms_for(a->norms, a->base)) {
                agg_norms_free(a->norms);
                a->norms = NULL;
                if (agg_norms_new(&a->norms, a->base) < 0) b = -1;
            }
            if (b == 0) b = agg_update_bound(&up, a->model, a->norms, a->cfg.max_update_ratio, bad);
            *tokens = up.tokens;
            agg_update_free(&up);
        }
        if (b > 0) {
            *code = MSG_ERR_REJECTED;
            snprintf(why, WHY_MAX, "%s's delta: %s", sender->name, bad);
        }
        rc = b < 0 ? -1 : b;
    }
done:
    close(fd);
    free(plain.buf);
    return rc;
}

int agg_on_submit_end(agg *a, const agg_session *s, const struct msg_submit_end *e, uint64_t now,
                      uint8_t **out, size_t *len) {
    upload *u = s ? upload_find(a, s, e->id) : NULL;
    if (!u) {
        /* SUBMIT_END again after the first was accepted: the node's request
         * timed out while the first was being checked (on a new base that
         * takes a re-hash of the whole base: 20 s for 16 GB, against a 5 s
         * request timeout), so it sent END again and lost the receipt. The
         * same member and the same digest get the same receipt; before,
         * they were refused and the node uploaded the whole envelope once
         * more (bench/scale/federation.sh, 2026-12-07). */
        const accept_rec *prev = s ? agg_find_msgid(a, e->id) : NULL;
        if (prev && strcmp(prev->member, s->member) == 0 &&
            crypto_equal(prev->digest, e->digest, 32))
            return reply_receipt(prev, out, len);
        return agg_reply_error(a, MSG_ERR_NOT_FOUND, -1, out, len,
                               "no upload in progress for this msgid on this connection; say "
                               "HELLO and start with SUBMIT_BEGIN");
    }
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
        return refuse_disk(a, NULL, "cannot make an upload durable", out, len);
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
    agg_member m, me;
    envelope_header hdr;
    uint64_t tokens = 0;
    enum msg_error_code code = MSG_ERR_INTERNAL;
    char why[WHY_MAX];
    int rc = -1;
    if (agg_roster_find_name(a->roster, s->member, &me) != 1) {
        rc = agg_reply_error(a, MSG_ERR_NOT_MEMBER, -1, out, len, "%s is no longer a member",
                             s->member);
        goto done;
    }
    int c = check_envelope_file(a, part, me.fp, &m, &hdr, &tokens, &code, why);
    if (c != 0) {
        if (c > 0) rc = agg_reply_error(a, code, -1, out, len, "%s", why);
        goto done;
    }
    agg_status_member_seen(a, m.name, 0); /* the signature says whose connection this is */
    if (memcmp(hdr.message_id, e->id, MSG_ID_LEN) != 0) {
        rc = agg_reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                             "tampered envelope: its message id is not the one SUBMIT_BEGIN "
                             "announced");
        goto done;
    }

    /* Durable before the receipt: rename into place, fsync the directory,
     * journal it. */
    char final[AGG_PATH_MAX];
    if (agg_inbox_path(&a->cfg, round, m.name, final, sizeof final) < 0) goto done;
    if (rename(part, final) != 0) {
        err_errno("renaming %s to %s", part, final);
        rc = refuse_disk(a, NULL, "cannot store an accepted envelope", out, len);
        goto done;
    }
    if (fio_fsync_dir_of(final) < 0) {
        unlink(final);
        rc = refuse_disk(a, NULL, "cannot make an accepted envelope durable", out, len);
        goto done;
    }
    journal_record ar = {.kind = JOURNAL_ACCEPT, .round = round, .size = size, .time = now};
    snprintf(ar.member, sizeof ar.member, "%s", m.name);
    memcpy(ar.msgid, e->id, MSG_ID_LEN);
    memcpy(ar.digest, digest, 32);
    int w = agg_commit_try(a, &ar);
    if (w != 0) {
        /* The record did not make it (a full disk) and the journal is cut
         * back to its good records: refuse this upload, go on. A journal
         * that could not be cut back stops the aggregator. */
        if (w > 0) {
            unlink(final);
            rc = refuse_disk(a, NULL, "cannot journal an accepted envelope", out, len);
        }
        goto done;
    }
    agg_say("round %llu: accepted %s's delta (%llu bytes, %llu tokens), %d accepted so far",
            (unsigned long long)round, ar.member, (unsigned long long)size,
            (unsigned long long)tokens, agg_accepted_count(a));
    agg_crash_point(a, "receipt");
    rc = reply_receipt(&a->acc[a->nacc - 1], out, len);
done:
    unlink(part); /* gone already when accepted (renamed) */
    return rc;
}

int agg_recover_inbox(agg *a, uint64_t now) {
    char dir[AGG_PATH_MAX], path[AGG_PATH_MAX], prefix[32];
    if (agg_state_path(a, "inbox", dir, sizeof dir) < 0) return -1;
    snprintf(prefix, sizeof prefix, "r%llu-", (unsigned long long)a->round);
    DIR *d = opendir(dir);
    if (!d) return err_errno("opening %s", dir);
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d));) {
        size_t n = strlen(e->d_name), p = strlen(prefix);
        if (n <= p + 4 || strncmp(e->d_name, prefix, p) != 0 || strcmp(e->d_name + n - 4, ".env"))
            continue;
        char member[KEYS_NAME_MAX + 1];
        snprintf(member, sizeof member, "%.*s", (int)(n - p - 4), e->d_name + p);
        if (keys_name_check(member) < 0 || agg_find_member(a, a->round, member)) continue;
        if (fio_join(path, sizeof path, dir, e->d_name) < 0) {
            rc = -1;
            break;
        }
        agg_member m;
        envelope_header hdr;
        uint64_t tokens = 0, size = 0;
        enum msg_error_code code;
        char why[WHY_MAX];
        int c = check_envelope_file(a, path, NULL, &m, &hdr, &tokens, &code, why);
        if (c < 0) {
            rc = -1;
        } else if (c > 0 || strcmp(m.name, member) != 0) {
            agg_say("inbox: %s has no acceptance in the journal and is not taken again: %s", path,
                    c > 0 ? why : "sealed by another member than its name says");
        } else {
            journal_record ar = {.kind = JOURNAL_ACCEPT, .round = a->round, .time = now};
            snprintf(ar.member, sizeof ar.member, "%s", member);
            memcpy(ar.msgid, hdr.message_id, MSG_ID_LEN);
            if (crypto_sha256_file(path, ar.digest, &size) < 0) {
                rc = -1;
                break;
            }
            ar.size = size;
            if ((rc = agg_commit(a, &ar)) == 0)
                agg_say("round %llu: recovered %s's delta from %s: checked again and journaled "
                        "(its acceptance record was lost with the damaged line)",
                        (unsigned long long)a->round, member, path);
        }
    }
    closedir(d);
    return rc;
}
