/* node — the loop (node.h): HELLO, sync, train, seal, submit, receipt, and the
 * requests and retries underneath. docs/federation.md tells the whole flow;
 * docs/protocol.md the messages. */
#include "node/internal.h"

#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"
#include "wire/hello.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

volatile sig_atomic_t node_stop_signal;
volatile sig_atomic_t node_in_training;

void node_request_stop(int sig) {
    if (node_in_training) {
        /* Only async-signal-safe calls here: write(2) and _exit(2). */
        static const char msg[] = "node: stopping during training; a restart resumes it from "
                                  "its last checkpoint\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(128 + sig);
    }
    node_stop_signal = sig;
}

int node_stop_signal_number(void) {
    return (int)node_stop_signal;
}

void node_log(const node_ctx *n, const char *fmt, ...) {
    char when[32], line[2048];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s node %s: %s\n", when, n->c->name, line);
    fflush(stderr);
}

int node_sleep(int ms) {
    while (ms > 0 && !node_stop_signal) {
        int slice = ms < 50 ? ms : 50;
        clock_sleep_ms(slice);
        ms -= slice;
    }
    return node_stop_signal != 0;
}

static int stop_asked(void *arg) {
    (void)arg;
    return node_stop_signal != 0;
}

static void retrying(void *arg, int attempt, const char *why) {
    const node_ctx *n = arg;
    if (attempt == 0 || attempt % 10 == 0)
        node_log(n, "no answer from the aggregator at %s (%s); retrying", n->c->endpoint, why);
}

int node_call(node_ctx *n, const struct msg *req, struct msg *rep) {
    int k = client_call(n->cl, req, rep);
    return k == CLIENT_OK ? 0 : k == CLIENT_STOPPED ? 1 : -1;
}

/* ---- submission ---------------------------------------------------------------------- */

/* SUBMIT_AGAIN: the aggregator lost the upload, start over; SUBMIT_LATER:
 * it is busy or restarting, start over after its retry_after. */
enum { SUBMIT_RECEIPTED = 0, SUBMIT_STOP, SUBMIT_DROPPED, SUBMIT_AGAIN, SUBMIT_LATER };

const char *node_not_member_hint(const char *reason) {
    /* A revoked member's name and keys can never come back (docs/onboarding.md),
     * so asking to be added again would lead nowhere. */
    if (!strncmp(reason, "revoked", 7))
        return "the consortium revoked this membership; a revoked member's name and keys "
               "cannot rejoin: ask the consortium admin";
    if (!strncmp(reason, "rotated", 7))
        return "the roster lists new keys for this member: set keys.dir and keys.name to them";
    return "send this node's .id file to the consortium admin and compare the fingerprint by "
           "phone or video call; fedlora doctor checks the setup";
}

/* What an ERROR during a submission means for it. */
static int submit_refused(node_ctx *n, uint64_t round, const struct msg_error *e) {
    unsigned long long r = (unsigned long long)round;
    switch (e->code) {
        case MSG_ERR_WRONG_ROUND:
            node_log(n,
                     "round %llu: the aggregator no longer takes deltas for it (%s); the "
                     "sealed delta is dropped",
                     r, e->reason);
            return SUBMIT_DROPPED;
        case MSG_ERR_BUSY:
        case MSG_ERR_INTERNAL:    /* the aggregator failed and restarts from its journal */
        case MSG_ERR_NOT_FOUND:   /* e.g. it restarted and lost a partial upload */
        case MSG_ERR_BAD_MESSAGE: /* e.g. a chunk it did not expect: start over */
            node_log(n, "round %llu: submission interrupted (%s); starting it again", r, e->reason);
            if (node_sleep(e->has_retry_after ? (int)e->retry_after_ms : n->c->poll_ms))
                return SUBMIT_STOP;
            return SUBMIT_AGAIN;
        case MSG_ERR_NOT_MEMBER:
            return err_set("round %llu: the aggregator does not admit this node: %s (%s)", r,
                           e->reason, node_not_member_hint(e->reason));
        default:
            if (!strncmp(e->reason, "sealed for another aggregator", 29))
                return err_set("round %llu: the aggregator refused the submission: %s (code %d; "
                               "aggregator.identity is not this aggregator's .id: get the right "
                               "one from the consortium's operator, compare its fingerprint by "
                               "phone, and run fedlora doctor)",
                               r, e->reason, e->code);
            return err_set("round %llu: the aggregator refused the submission: %s (code %d)", r,
                           e->reason, e->code);
    }
}

/* One request of the submission. 0 acknowledged (rep holds the reply), else
 * a SUBMIT_* outcome or -1. BEGIN and each CHUNK are
 * answered with an ACK for this message id saying how many bytes the
 * aggregator holds, which must be the `stored` bytes sent so far; END with
 * the RECEIPT (docs/protocol.md, "Federation flow"). */
static int submit_step(node_ctx *n, uint64_t round, const uint8_t msgid[MSG_ID_LEN],
                       const struct msg *req, uint64_t stored, struct msg *rep) {
    int k = node_call(n, req, rep);
    if (k != 0) return k < 0 ? -1 : SUBMIT_STOP;
    enum msg_type want = req->type == MSG_SUBMIT_END ? MSG_RECEIPT : MSG_ACK;
    if (want == MSG_RECEIPT && rep->type == MSG_RECEIPT &&
        memcmp(rep->receipt.id, msgid, MSG_ID_LEN) == 0)
        return 0;
    if (want == MSG_ACK && rep->type == MSG_ACK && memcmp(rep->ack.id, msgid, MSG_ID_LEN) == 0) {
        if (rep->ack.stored == stored) return 0;
        /* Out of step with the aggregator (it lost or doubled a chunk):
         * the upload starts over. */
        node_log(n,
                 "round %llu: the aggregator holds %llu bytes of the envelope, %llu were sent; "
                 "starting the submission again",
                 (unsigned long long)round, (unsigned long long)rep->ack.stored,
                 (unsigned long long)stored);
        return SUBMIT_AGAIN;
    }
    if (rep->type != MSG_ERROR)
        return err_set("round %llu: the aggregator answered %s with %s, not %s %s for this "
                       "envelope",
                       (unsigned long long)round, msg_type_name(req->type),
                       msg_type_name(rep->type), want == MSG_ACK ? "an" : "a", msg_type_name(want));
    return submit_refused(n, round, &rep->error);
}

static int hello(node_ctx *n, struct msg *rep);

/* The aggregator takes an upload only on a connection that said a verified
 * HELLO (docs/protocol.md, "Uploads"), so each attempt starts with one; its
 * answer also says whether the round still takes deltas. 0, or a SUBMIT_*
 * outcome, or -1. */
static int hello_before_upload(node_ctx *n, uint64_t round) {
    struct msg rep;
    int k = hello(n, &rep);
    if (k != 0) return k < 0 ? -1 : SUBMIT_STOP;
    if (rep.type == MSG_ERROR) return submit_refused(n, round, &rep.error);
    if (rep.round.round == round) return 0;
    node_log(n,
             "round %llu: the aggregator has moved on to round %llu; the sealed delta is dropped",
             (unsigned long long)round, (unsigned long long)rep.round.round);
    return SUBMIT_DROPPED;
}

/* Sends outbox/round-<r>.env in chunks until the RECEIPT, checking that it
 * acknowledges exactly this envelope. */
static int submit_once(node_ctx *n, uint64_t round, node_round_record *rec, const char *env) {
    int said = hello_before_upload(n, round);
    if (said != 0) return said;
    int fd = open(env, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno("cannot open %s", env);
    uint8_t *chunk = malloc(MSG_CHUNK_MAX);
    crypto_sha256_ctx *h = NULL;
    int rc = -1;
    struct stat st;
    if (!chunk) {
        err_set("out of memory for a submission chunk");
        goto done;
    }
    if (fstat(fd, &st) != 0) {
        err_errno("cannot stat %s", env);
        goto done;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size != rec->envelope_bytes) {
        err_set("%s has %llu bytes but its record says %llu; the outbox was altered", env,
                (unsigned long long)size, (unsigned long long)rec->envelope_bytes);
        goto done;
    }
    uint32_t chunks = (uint32_t)((size + MSG_CHUNK_MAX - 1) / MSG_CHUNK_MAX);
    struct msg req = {.type = MSG_SUBMIT_BEGIN}, rep;
    req.submit_begin.round = round;
    memcpy(req.submit_begin.id, rec->msgid, MSG_ID_LEN);
    req.submit_begin.size = size;
    req.submit_begin.chunks = chunks;
    if ((rc = submit_step(n, round, rec->msgid, &req, 0, &rep)) != 0) goto done;
    if (crypto_sha256_new(&h) != 0) {
        rc = -1;
        goto done;
    }
    for (uint32_t i = 0; i < chunks; i++) {
        size_t len = i + 1 < chunks ? MSG_CHUNK_MAX : (size_t)(size - (uint64_t)i * MSG_CHUNK_MAX);
        ssize_t got = pread(fd, chunk, len, (off_t)i * MSG_CHUNK_MAX);
        if (got != (ssize_t)len) {
            rc = got < 0 ? err_errno("cannot read %s", env)
                         : err_set("%s: short read at chunk %u", env, i);
            break;
        }
        if (crypto_sha256_update(h, chunk, len) != 0) {
            rc = -1;
            break;
        }
        req = (struct msg){.type = MSG_SUBMIT_CHUNK};
        memcpy(req.submit_chunk.id, rec->msgid, MSG_ID_LEN);
        req.submit_chunk.index = i;
        req.submit_chunk.data = chunk;
        req.submit_chunk.data_len = (uint32_t)len;
        uint64_t sent = (uint64_t)i * MSG_CHUNK_MAX + len;
        if ((rc = submit_step(n, round, rec->msgid, &req, sent, &rep)) != 0) break;
        rec->upload_bytes += len;
    }
    uint8_t digest[MSG_HASH_LEN];
    if (rc == 0 && crypto_sha256_final(h, digest) != 0) rc = -1;
    if (rc != 0) goto done;
    if (memcmp(digest, rec->digest, MSG_HASH_LEN) != 0) {
        rc = err_set("%s does not hash to the digest recorded when it was sealed; the outbox was "
                     "altered",
                     env);
        goto done;
    }
    req = (struct msg){.type = MSG_SUBMIT_END};
    memcpy(req.submit_end.id, rec->msgid, MSG_ID_LEN);
    memcpy(req.submit_end.digest, digest, MSG_HASH_LEN);
    if ((rc = submit_step(n, round, rec->msgid, &req, 0, &rep)) != 0) goto done;
    if (rep.receipt.round != round || memcmp(rep.receipt.digest, digest, MSG_HASH_LEN) != 0) {
        rc = err_set("round %llu: the aggregator's receipt (for round %llu) does not carry this "
                     "envelope's round and digest",
                     (unsigned long long)round, (unsigned long long)rep.receipt.round);
    } else {
        rec->receipt_time = rep.receipt.time;
    }
done:
    crypto_sha256_free(h);
    free(chunk);
    close(fd);
    return rc;
}

/* Removes round r's outbox files (after its receipt, or when it is dropped). */
static int clear_outbox(node_ctx *n, uint64_t round) {
    char env[NODE_PATH_MAX], json[NODE_PATH_MAX], plain[NODE_PATH_MAX];
    unsigned long long r = (unsigned long long)round;
    if (node_path(n, env, "outbox/round-%llu.env", r) != 0 ||
        node_path(n, json, "outbox/round-%llu.json", r) != 0 ||
        node_path(n, plain, "outbox/round-%llu.payload", r) != 0)
        return -1;
    /* The envelope goes first: its presence is what means "to submit". */
    if (unlink(env) != 0 && errno != ENOENT) return err_errno("cannot remove %s", env);
    if (unlink(json) != 0 && errno != ENOENT) return err_errno("cannot remove %s", json);
    if (unlink(plain) != 0 && errno != ENOENT) return err_errno("cannot remove %s", plain);
    return fio_fsync_dir_of(env);
}

static int submit(node_ctx *n, uint64_t round) {
    char env[NODE_PATH_MAX], json[NODE_PATH_MAX], receipt[NODE_PATH_MAX], dir[NODE_PATH_MAX];
    unsigned long long r = (unsigned long long)round;
    node_round_record rec;
    if (node_path(n, env, "outbox/round-%llu.env", r) != 0 ||
        node_path(n, json, "outbox/round-%llu.json", r) != 0 ||
        node_path(n, dir, "receipts") != 0 ||
        node_path(n, receipt, "receipts/round-%llu.json", r) != 0)
        return -1;
    if (node_record_read(json, &rec) != 0) return err_context("round %llu's sealed delta", r);
    /* An upload the aggregator lost is started over, a few times in a row;
     * one that keeps failing is an error to look at. Busy is only waited out. */
    int k = SUBMIT_AGAIN;
    for (int lost = 0; k == SUBMIT_AGAIN || k == SUBMIT_LATER; lost += k == SUBMIT_AGAIN) {
        if (lost == 5)
            return err_set("round %llu: the submission was interrupted 5 times in a row; see "
                           "the lines above",
                           r);
        node_log(n, "round %llu: submitting %llu bytes", r, (unsigned long long)rec.envelope_bytes);
        k = submit_once(n, round, &rec, env);
    }
    if (k == SUBMIT_DROPPED) return clear_outbox(n, round) == 0 ? SUBMIT_DROPPED : -1;
    if (k != SUBMIT_RECEIPTED) return k;
    /* The receipt is recorded durably before the outbox is cleared: from here
     * on a restart never submits this round again. */
    if (fio_mkdirs(dir, 0755) != 0 || node_record_write(receipt, &rec) != 0 ||
        clear_outbox(n, round) != 0 || node_metrics_append(n, &rec) != 0)
        return -1;
    node_log(n, "round %llu: receipt for %llu bytes; local held-out loss %.4f -> %.4f", r,
             (unsigned long long)rec.envelope_bytes, rec.loss_before, rec.loss_after);
    return SUBMIT_RECEIPTED;
}

/* Sealed deltas of rounds before `current` that never got a receipt: their
 * round is over. Either it closed without them, or the aggregator took one
 * and its receipt was lost on the way (its metrics say which); there is
 * nothing left to send either way, so the sealed copy is dropped. */
static int drop_stale(node_ctx *n, uint64_t current) {
    char dir[NODE_PATH_MAX];
    if (node_path(n, dir, "outbox") != 0) return -1;
    DIR *d = opendir(dir);
    if (!d) return err_errno("cannot list %s", dir);
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d));) {
        unsigned long long r;
        int end = 0;
        if (sscanf(e->d_name, "round-%llu.env%n", &r, &end) != 1 || e->d_name[end] != 0 ||
            r >= current)
            continue;
        node_log(n,
                 "round %llu is over and no receipt for this node's delta came back; dropping "
                 "the sealed copy",
                 r);
        rc = clear_outbox(n, r);
    }
    closedir(d);
    return rc;
}

/* ---- the loop ---------------------------------------------------------------------------- */

static int setup(node_ctx *n, const node_config *c) {
    memset(n, 0, sizeof *n);
    n->c = c;
    char path[NODE_PATH_MAX];
    if (keys_load_secret(c->keys_dir, c->name, &n->me) != 0)
        return err_context("loading this node's keys (keys = %s, name = %s)", c->keys_dir, c->name);
    if (keys_load_public(c->aggregator_id, &n->agg) != 0)
        return err_context("loading the aggregator's identity (aggregator.identity)");
    if (keys_fingerprint(&n->me.pub, n->fp) != 0) return -1;
    const char *dirs[] = {"versions", "outbox", "receipts", "rounds"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if (node_path(n, path, "%s", dirs[i]) != 0 || fio_mkdirs(path, 0700) != 0) return -1;
    if (node_load_current(n) != 0) return -1;
    if (c->threads > 0) omp_set_num_threads(c->threads);
    /* One attempt is one request_timeout_ms; the client retries for up to
     * give_up_s, so that the node waits out an aggregator restart. */
    client_options o;
    client_options_default(&o);
    o.timeout_ms = c->request_timeout_ms;
    o.give_up_s = c->give_up_s;
    o.stop = stop_asked;
    o.retrying = retrying;
    o.arg = n;
    if (c->curve) {
        o.curve_me = &n->me;
        o.curve_server = n->agg.kx_pub;
    }
    return client_open(&n->cl, c->endpoint, &o);
}

static void teardown(node_ctx *n) {
    client_close(n->cl);
    keys_secret_wipe(&n->me);
}

static int hello(node_ctx *n, struct msg *rep) {
    struct msg req = {.type = MSG_HELLO};
    snprintf(req.hello.name, sizeof req.hello.name, "%s", n->c->name);
    memcpy(req.hello.fingerprint, n->fp, MSG_HASH_LEN);
    snprintf(req.hello.caps[0], sizeof req.hello.caps[0], "%s", n->c->device);
    req.hello.ncaps = 1;
    if (n->have_model) {
        req.hello.has_model = true;
        req.hello.have_round = n->have_round;
        memcpy(req.hello.have_version, n->have_version, MSG_HASH_LEN);
    }
    if (hello_sign(&req.hello, n->c->consortium, &n->me, (uint64_t)time(NULL)) != 0) return -1;
    int k = node_call(n, &req, rep);
    if (k != 0) return k;
    /* Every field of ROUND and ERROR is held in the struct itself. */
    if (rep->type != MSG_ROUND && rep->type != MSG_ERROR)
        return err_set("the aggregator answered HELLO with %s", msg_type_name(rep->type));
    return 0;
}

/* What was last said about the rounds, so that polling does not repeat it. */
typedef enum { SAID_NOTHING, SAID_WAITING, SAID_OPEN, SAID_RECEIPTED } said_kind;
typedef struct {
    said_kind kind;
    uint64_t round;
} said;

/* 1 when (kind, round) was the last thing said; otherwise records it, 0. */
static int already_said(said *s, said_kind kind, uint64_t round) {
    if (s->kind == kind && s->round == round) return 1;
    s->kind = kind;
    s->round = round;
    return 0;
}

enum { STEP_GO = 0, STEP_STOP = 1, STEP_FINISHED = 2 };

/* One HELLO and what follows from its answer: a STEP_* outcome or -1. */
static int step(node_ctx *n, said *s) {
    struct msg rep;
    int k = hello(n, &rep);
    if (k != 0) return k < 0 ? -1 : STEP_STOP;
    if (rep.type == MSG_ERROR) {
        const struct msg_error *e = &rep.error;
        if (e->code == MSG_ERR_NOT_MEMBER)
            return err_set("the aggregator does not admit this node: %s (%s)", e->reason,
                           node_not_member_hint(e->reason));
        if (e->code == MSG_ERR_WRONG_ROUND && e->has_final) { /* the federation is over */
            node_log(n, "the federation is finished (%s)", e->reason);
            return drop_stale(n, UINT64_MAX) == 0 ? STEP_FINISHED : -1;
        }
        if (e->code == MSG_ERR_WRONG_ROUND || e->code == MSG_ERR_BUSY ||
            (e->code == MSG_ERR_INTERNAL && e->has_retry_after)) {
            if (!already_said(s, SAID_WAITING, 0))
                node_log(n, "no round open (%s); waiting", e->reason);
            return node_sleep(e->has_retry_after ? (int)e->retry_after_ms : n->c->poll_ms);
        }
        return err_set("the aggregator refused HELLO: %s (code %d)", e->reason, e->code);
    }
    const struct msg_round *r = &rep.round;
    unsigned long long rn = (unsigned long long)r->round;
    if (n->counting_round != r->round) {
        n->counting_round = r->round;
        n->download_bytes = 0;
    }
    char receipt[NODE_PATH_MAX], env[NODE_PATH_MAX];
    if (node_path(n, receipt, "receipts/round-%llu.json", rn) != 0 ||
        node_path(n, env, "outbox/round-%llu.env", rn) != 0 || drop_stale(n, r->round) != 0)
        return -1;
    if (fio_exists(receipt)) {
        if (fio_exists(env) && clear_outbox(n, r->round) != 0) return -1;
        if (!already_said(s, SAID_RECEIPTED, r->round))
            node_log(n, "round %llu: delta receipted; waiting for the round to close", rn);
        return node_sleep(n->c->poll_ms);
    }
    if (!already_said(s, SAID_OPEN, r->round))
        node_log(n, "round %llu is open (deadline in %lld s)", rn,
                 (long long)r->deadline - (long long)time(NULL));
    if (fio_exists(env)) {
        /* Sealed before a key rotation: the aggregator takes only the
         * current keys' signature, so seal the same delta again. */
        k = node_outbox_signed_by_me(n, r->round);
        if (k < 0 || (k == 0 && node_reseal(n, r->round) != 0)) return -1;
        k = submit(n, r->round);
        return k == SUBMIT_STOP ? STEP_STOP : k < 0 ? -1 : STEP_GO;
    }
    k = node_sync(n, r);
    if (k == 0) k = node_start_fetch(n, r);
    if (k != 0) return k < 0 ? -1 : STEP_STOP;
    return node_train_and_seal(n, r);
}

int node_run(const node_config *c) {
    node_ctx n;
    int rc = -1;
    if (setup(&n, c) != 0) {
        teardown(&n);
        return -1;
    }
    char fp[KEYS_FP_TEXT_LEN];
    keys_fingerprint_text(n.fp, fp);
    node_log(&n, "joining %s (fingerprint %s)", c->endpoint, fp);
    said s = {SAID_NOTHING, 0};
    for (;;) {
        if (node_stop_signal) {
            node_log(&n, "stopping on signal %d; the state in %s is kept for a restart",
                     (int)node_stop_signal, c->state_dir);
            rc = NODE_STOPPED;
            break;
        }
        int k = step(&n, &s);
        if (k == STEP_FINISHED) {
            rc = NODE_FINISHED;
            break;
        }
        if (k < 0) break;
    }
    teardown(&n);
    return rc;
}
