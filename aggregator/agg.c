/* agg — round state machine, journal replay, request handling, serving loop.
 *
 * The journal (journal.h lists its records) is the one source of the round's
 * state: every transition is a journal_record, appended (and fsync'd) and
 * then applied to the in-memory state by apply(), the same function that
 * replays the journal at start, as Redis replays its append-only file
 * through the code that serves live commands. So a transition is written
 * once, and a restart rebuilds exactly the state the live process had.
 *
 * With a policy file (config "policy", hooks.h) that enables DP-FedAvg, the
 * noise of round r comes from a ChaCha20 key written to STATE/noise/r<r>.key
 * (mode 0600, fsync'd) before the aggregation starts: a crash and restart
 * reopen the same key, add the same noise and publish the same bytes. The
 * key is deleted once the round's publish (or fail) record is written; a
 * restart deletes any key left by a crash after that record. The privacy
 * accountant is rebuilt from the journal (one sampled Gaussian round per
 * publish record) and no round opens that would take ε above the budget.
 *
 * Each record is written (and fsync'd) before the step that depends on it
 * becomes visible: a RECEIPT after its accept, the next open after its
 * publish. A crash between a step and its record repeats the step after the
 * restart, and every step is idempotent or deterministic (an inbox file
 * renamed again over itself, a version published again under the same
 * hash). */
#include "aggregator/agg.h"

#include "aggregator/hooks.h"
#include "aggregator/journal.h"
#include "aggregator/members.h"
#include "aggregator/store.h"
#include "lora/update.h"
#include "model/checkpoint.h"
#include "policies/accountant.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"
#include "wire/envelope.h"
#include "wire/hello.h"
#include "wire/transport.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#define UPLOAD_IDLE_S 600  /* an upload silent this long is dropped */
#define RETRY_JOINING 2000 /* ms a member added mid-round waits between HELLOs */
#define METRICS_MAX (64u << 20)
#define FINISH_GRACE_S 2 /* seconds served after every member heard "finished" */

typedef struct {
    uint64_t round;
    char member[KEYS_NAME_MAX + 1];
    uint8_t msgid[MSG_ID_LEN];
    uint8_t digest[MSG_HASH_LEN];
    uint64_t size;
    uint64_t time;
} accept_rec;

typedef struct {
    int used;
    uint8_t msgid[MSG_ID_LEN];
    uint64_t round;
    uint64_t size, received;
    uint32_t chunks, next;
    int fd;                     /* -1 when discarding (already accepted) */
    const accept_rec *accepted; /* the earlier acceptance of this msgid, or NULL */
    crypto_sha256_ctx *sha;
    uint64_t last_seen;
    char part[AGG_PATH_MAX];
} upload;

struct agg {
    agg_config cfg; /* members borrowed from the caller's config */
    keys_secret keys;
    agg_roster *roster;
    agg_journal *journal;
    const agg_policy *policy;
    agg_hooks hooks;  /* the policy file's hooks (cfg.has_policy) */
    dp_accountant dp; /* DP: the rounds published so far */
    int lock_fd;

    /* Replayed state. */
    int initialized;
    agg_state state;
    uint64_t round;
    uint8_t base[32];    /* the current round's base version */
    uint8_t version[32]; /* the newest version (= base while a round is open) */
    uint64_t deadline;
    uint64_t published; /* publish records replayed or written */
    accept_rec *acc;    /* every acceptance of every round, in journal order */
    size_t nacc, capacc;

    model *model; /* the model of version model_version, loaded on demand */
    uint8_t model_version[32];

    /* The newest publish record's low-rank update, when it has one: the
     * object update_hash (update_size bytes) makes update_to from
     * update_from. ROUND offers it while update_to is the round's base. */
    int has_update;
    uint8_t update_from[32], update_to[32], update_hash[32];
    uint64_t update_size;

    upload *up;
    int nup;

    /* Metrics of the current round as this process saw it. */
    uint64_t bytes_received, bytes_served;
    int refused;
    int below_quorum_logged;
    uint64_t metrics_round; /* newest round with a line in metrics.jsonl */

    /* After the last round: members told "finished", and since when. */
    char (*told)[KEYS_NAME_MAX + 1];
    int ntold, told_cap;
    uint64_t finished_at, all_told_at;

    /* Roster versions (0: the config's member list): the newest journaled,
     * the one in force when the current round opened (rounds.join = next:
     * who takes part), when it closed (whose deltas count), and when the
     * round agg_recompute wants closed. */
    uint64_t journal_roster, open_roster, close_roster, want_roster;
    agg_roster *open_view; /* the roster of open_roster, when it is not the one in force */

    /* agg_recompute: the base of this round, as its open record says. */
    uint64_t want_round;
    uint8_t want_base[32];
    int want_found;

    /* Test hook FEDLORA_CRASH_AT=<point>[:<n>]: SIGKILL at the n-th time. */
    char crash_point[32];
    long crash_left;
};

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t reload_requested; /* SIGHUP: look at the roster file now */

static int advance(agg *a, uint64_t now);
static int aggregate_and_publish(agg *a, uint64_t now);
static int roster_journal(agg *a);
static void upload_drop(upload *u);

void agg_request_stop(void) {
    stop_requested = 1;
}

const char *agg_state_name(agg_state s) {
    switch (s) {
        case AGG_OPEN:
            return "OPEN";
        case AGG_COLLECTING:
            return "COLLECTING";
        case AGG_AGGREGATING:
            return "AGGREGATING";
        case AGG_PUBLISHED:
            return "PUBLISHED";
        case AGG_FAILED:
            return "FAILED";
        case AGG_FINISHED:
            return "FINISHED";
    }
    return "?";
}

/* ---- small helpers ------------------------------------------------------- */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    char when[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s aggregator: %s\n", when, msg);
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void crash_point(agg *a, const char *point) {
    if (!a->crash_point[0] || strcmp(a->crash_point, point) != 0) return;
    if (--a->crash_left > 0) return;
    say("FEDLORA_CRASH_AT=%s: killing myself (test hook)", point);
    kill(getpid(), SIGKILL);
}

static void short_hex(const uint8_t *h, char out[17]) {
    char full[STORE_HEX_LEN + 1];
    hex_encode(h, 32, full);
    memcpy(out, full, 16);
    out[16] = '\0';
}

static int state_path(const agg *a, const char *name, char *out, size_t n) {
    return fio_join(out, n, a->cfg.state, name);
}

static int inbox_path(const agg_config *c, uint64_t round, const char *member, char *out,
                      size_t n) {
    if (snprintf(out, n, "%s/inbox/r%llu-%s.env", c->state, (unsigned long long)round, member) >=
        (int)n)
        return err_set("state path %s is too long", c->state);
    return 0;
}

static int add_accept(agg *a, const accept_rec *r) {
    if (a->nacc == a->capacc) {
        size_t cap = a->capacc ? 2 * a->capacc : 64;
        accept_rec *p = realloc(a->acc, cap * sizeof *p);
        if (!p) return err_set("out of memory for the acceptance list");
        a->acc = p;
        a->capacc = cap;
    }
    a->acc[a->nacc++] = *r;
    return 0;
}

static const accept_rec *find_msgid(const agg *a, const uint8_t id[MSG_ID_LEN]) {
    for (size_t i = 0; i < a->nacc; i++)
        if (memcmp(a->acc[i].msgid, id, MSG_ID_LEN) == 0) return &a->acc[i];
    return NULL;
}

/* acc is in journal order, so its rounds never go down: a round's
 * acceptances are the tail from the newest back to the first older round
 * (all_in runs this every tick; the list holds every round's). */
static const accept_rec *find_member(const agg *a, uint64_t round, const char *member) {
    for (size_t i = a->nacc; i-- > 0 && a->acc[i].round >= round;)
        if (a->acc[i].round == round && strcmp(a->acc[i].member, member) == 0) return &a->acc[i];
    return NULL;
}

int agg_accepted_count(const agg *a) {
    int n = 0;
    for (size_t i = a->nacc; i-- > 0 && a->acc[i].round >= a->round;)
        n += a->acc[i].round == a->round;
    return n;
}

agg_state agg_get_state(const agg *a) {
    return a->state;
}

uint64_t agg_current_round(const agg *a) {
    return a->round;
}

void agg_current_base(const agg *a, uint8_t hash[32]) {
    memcpy(hash, a->state == AGG_FINISHED ? a->version : a->base, 32);
}

void agg_set_policy(agg *a, const agg_policy *p) {
    a->policy = p ? p : agg_policy_default();
}

/* ---- transitions: the journal's records applied ----------------------------- */

static int open_state(const agg *a) {
    return a->state == AGG_OPEN || a->state == AGG_COLLECTING;
}

/* Applies one record to the state: the only place where the round's state
 * changes. Replay (at start, and read-only for agg_recompute) and the live
 * aggregator (commit, right after the append) both come here, so a record
 * means the same whether it is being written or read back. A record that
 * does not follow from the state (a round out of order, an acceptance twice)
 * is refused: in a replay that is a damaged journal, live it would be a bug. */
static int apply(agg *a, const journal_record *r) {
    unsigned long long rn = (unsigned long long)r->round, cur = (unsigned long long)a->round;
    const char *kind = journal_kind_name(r->kind), *st = agg_state_name(a->state);
    if (r->kind != JOURNAL_INIT && !a->initialized)
        return err_set("a '%s' record before 'init'", kind);
    switch (r->kind) {
        case JOURNAL_INIT:
            if (a->initialized) return err_set("a second 'init' record");
            if (memcmp(r->consortium, a->cfg.consortium, 32) != 0)
                return err_set("this state directory belongs to another consortium than '%s' "
                               "(its id differs); use a new state directory",
                               a->cfg.consortium_name);
            memcpy(a->version, r->hash, 32);
            a->initialized = 1;
            a->state = AGG_PUBLISHED; /* round 0's version: the imported base */
            a->round = 0;
            return 0;
        case JOURNAL_OPEN:
            if ((a->state != AGG_PUBLISHED && a->state != AGG_FAILED) || r->round != a->round + 1)
                return err_set("'open %llu' in state %s of round %llu", rn, st, cur);
            a->round = r->round;
            memcpy(a->base, r->hash, 32);
            a->deadline = r->deadline;
            a->state = AGG_OPEN;
            a->open_roster = a->journal_roster;
            agg_roster_free(a->open_view);
            a->open_view = NULL;
            a->bytes_received = a->bytes_served = 0;
            a->refused = 0;
            a->below_quorum_logged = 0;
            if (r->round == a->want_round) {
                memcpy(a->want_base, a->base, 32);
                a->want_found = 1;
            }
            return 0;
        case JOURNAL_ACCEPT: {
            if (r->round != a->round || !open_state(a))
                return err_set("'accept' for round %llu in state %s of round %llu", rn, st, cur);
            if (find_member(a, r->round, r->member) || find_msgid(a, r->msgid))
                return err_set("record 'accept %llu %s': accepted twice", rn, r->member);
            accept_rec ar = {.round = r->round, .size = r->size, .time = r->time};
            snprintf(ar.member, sizeof ar.member, "%s", r->member);
            memcpy(ar.msgid, r->msgid, MSG_ID_LEN);
            memcpy(ar.digest, r->digest, MSG_HASH_LEN);
            if (add_accept(a, &ar) < 0) return -1;
            a->state = AGG_COLLECTING;
            return 0;
        }
        case JOURNAL_CLOSE:
            if (r->round != a->round || !open_state(a))
                return err_set("'close %llu' in state %s of round %llu", rn, st, cur);
            a->state = AGG_AGGREGATING;
            a->close_roster = a->journal_roster;
            if (r->round == a->want_round) a->want_roster = a->journal_roster;
            return 0;
        case JOURNAL_ROSTER:
            if (r->round <= a->journal_roster)
                return err_set("record 'roster %llu': versions only go up (%llu is in force)", rn,
                               (unsigned long long)a->journal_roster);
            a->journal_roster = r->round;
            return 0;
        case JOURNAL_PUBLISH:
            if (r->round != a->round || a->state != AGG_AGGREGATING)
                return err_set("'publish %llu' in state %s of round %llu", rn, st, cur);
            memcpy(a->version, r->hash, 32);
            a->has_update = r->has_update;
            if (a->has_update) {
                memcpy(a->update_hash, r->update_hash, 32);
                a->update_size = r->update_size;
                memcpy(a->update_from, a->base, 32);
                memcpy(a->update_to, a->version, 32);
            }
            a->state = AGG_PUBLISHED;
            a->published++;
            return 0;
        case JOURNAL_FAIL:
            if (r->round != a->round || (!open_state(a) && a->state != AGG_AGGREGATING))
                return err_set("'fail %llu' in state %s of round %llu", rn, st, cur);
            a->state = AGG_FAILED; /* no new version: the next round reuses the base */
            return 0;
    }
    return err_set("journal record of unknown kind %d", (int)r->kind);
}

/* A live transition: the record is made durable, then applied. */
static int commit(agg *a, const journal_record *r) {
    if (journal_write(a->journal, r) < 0) return -1;
    if (apply(a, r) < 0)
        return err_context("the aggregator's own '%s' record does not apply (a bug; the "
                           "journal refuses it at the next start)",
                           journal_kind_name(r->kind));
    return 0;
}

static int replay_record(void *arg, const char *text, size_t line) {
    (void)line; /* journal_open names the line in the error's context */
    journal_record r;
    if (journal_record_decode(text, &r) < 0) return -1;
    return apply(arg, &r);
}

/* ---- models ---------------------------------------------------------------- */

static int load_version(const agg_config *c, const uint8_t hash[32], model **out) {
    char dir[AGG_PATH_MAX];
    if (store_version_dir(c->state, hash, dir, sizeof dir) < 0) return -1;
    if (checkpoint_load(out, dir) < 0) return err_context("loading model version %s", dir);
    return 0;
}

/* The model of version hash in a->model (loaded unless it already is). */
static int ensure_model(agg *a, const uint8_t hash[32]) {
    if (a->model && memcmp(a->model_version, hash, 32) == 0) return 0;
    model_free(a->model);
    a->model = NULL;
    if (load_version(&a->cfg, hash, &a->model) < 0) return -1;
    memcpy(a->model_version, hash, 32);
    return 0;
}

/* Writes m as a new version: STATE/tmp/<name>, then into the store. */
static int publish_model(const agg_config *c, const model *m, const char *name, uint8_t hash[32]) {
    char tmp[AGG_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s/tmp/%s", c->state, name) >= (int)sizeof tmp)
        return err_set("state path too long");
    if (store_remove_dir(tmp) < 0 || checkpoint_save(m, tmp, "float32") < 0 ||
        store_publish(c->state, tmp, hash) < 0)
        return err_context("publishing a model version");
    return 0;
}

/* Writes round's update u (from → to) as an update file (lora/update.h) in
 * STATE/tmp/update-r<round>/, durably, then moves it into the store as an
 * object named by its SHA-256 (hash; *size its bytes). The same update gives
 * the same bytes, so a repeat after a crash finds the object there. */
static int publish_update(const agg_config *c, update *u, uint64_t round, const uint8_t from[32],
                          const uint8_t to[32], uint8_t hash[32], uint64_t *size) {
    char dir[AGG_PATH_MAX], file[AGG_PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/tmp/update-r%llu", c->state, (unsigned long long)round) >=
            (int)sizeof dir ||
        fio_join(file, sizeof file, dir, "update.safetensors") < 0)
        return err_set("state path too long");
    memcpy(u->from, from, 32);
    memcpy(u->to, to, 32);
    u->round = round;
    if (store_remove_dir(dir) < 0 || fio_mkdirs(dir, 0700) < 0 || update_write(u, file) < 0 ||
        store_put_object(c->state, file, hash, size) < 0 || store_remove_dir(dir) < 0)
        return err_context("publishing round %llu's low-rank update", (unsigned long long)round);
    return 0;
}

/* ---- DP noise keys ----------------------------------------------------------- */

static int dp_on(const agg_config *c) {
    return c->has_policy && c->policy.dp.enabled;
}

static int key_path(const agg_config *c, uint64_t round, char *out, size_t n) {
    if (snprintf(out, n, "%s/noise/r%llu.key", c->state, (unsigned long long)round) >= (int)n)
        return err_set("state path %s is too long", c->state);
    return 0;
}

/* The noise source of round `round` under a DP policy. Production: the
 * ChaCha20 key stored for the round, or (create, and none stored yet) a fresh
 * one from the CSPRNG, written durably with mode 0600 before it is used.
 * Test mode: the seeded generator at test_seed + round, no key. */
static int round_noise(const agg_config *c, uint64_t round, int create, noise_source **out) {
    const policy *pol = &c->policy;
    if (pol->mode == POLICY_MODE_TEST) return noise_open_seeded(out, pol, pol->test_seed + round);
    char p[AGG_PATH_MAX];
    if (key_path(c, round, p, sizeof p) < 0) return -1;
    if (fio_exists(p)) {
        char *key;
        size_t len;
        if (fio_read_all(p, NOISE_KEY_LEN, &key, &len) < 0)
            return err_context("reading round %llu's DP noise key", (unsigned long long)round);
        int rc = len == NOISE_KEY_LEN
                     ? noise_open(out, pol, (const unsigned char *)key)
                     : err_set("%s: a DP noise key is %d bytes, this file has %zu; the state "
                               "directory was damaged",
                               p, NOISE_KEY_LEN, len);
        OPENSSL_cleanse(key, len);
        free(key);
        return rc;
    }
    if (!create)
        return err_set("round %llu's DP noise key %s is gone: it is deleted when the round's "
                       "version is published (the noise protects members only while it stays "
                       "secret), so this round cannot be recomputed",
                       (unsigned long long)round, p);
    unsigned char key[NOISE_KEY_LEN];
    if (noise_open(out, pol, NULL) < 0) return -1;
    int rc = noise_key(*out, key) < 0 || fio_write_atomic(p, key, sizeof key, 0600) < 0
                 ? err_context("storing round %llu's DP noise key", (unsigned long long)round)
                 : 0;
    OPENSSL_cleanse(key, sizeof key);
    if (rc < 0) {
        noise_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Deletes round's key (once its publish or fail record is written). */
static int forget_key(const agg_config *c, uint64_t round) {
    char p[AGG_PATH_MAX];
    if (!dp_on(c)) return 0;
    if (key_path(c, round, p, sizeof p) < 0) return -1;
    if (unlink(p) != 0) return errno == ENOENT ? 0 : err_errno("deleting %s", p);
    return fio_fsync_dir_of(p);
}

/* ---- opening the state directory ---------------------------------------- */

static int clean_dir(const char *dir, const char *suffix, int dirs) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : err_errno("opening %s", dir);
    struct dirent *e;
    char p[AGG_PATH_MAX];
    int rc = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name), s = strlen(suffix);
        if (e->d_name[0] == '.' || n < s || strcmp(e->d_name + n - s, suffix) != 0) continue;
        if (fio_join(p, sizeof p, dir, e->d_name) < 0)
            rc = -1;
        else if (dirs)
            rc = store_remove_dir(p);
        else if (unlink(p) != 0 && errno != ENOENT)
            rc = err_errno("removing %s", p);
    }
    closedir(d);
    return rc;
}

/* The newest round that has a line in metrics.jsonl; a torn last line (a
 * crash while appending) is cut off. */
static int metrics_scan(agg *a) {
    char p[AGG_PATH_MAX];
    if (state_path(a, "metrics.jsonl", p, sizeof p) < 0) return -1;
    if (!fio_exists(p)) return 0;
    char *data;
    size_t len;
    if (fio_read_all(p, METRICS_MAX, &data, &len) < 0) return err_context("reading metrics");
    size_t good = 0;
    for (size_t pos = 0; pos < len;) {
        char *nl = memchr(data + pos, '\n', len - pos);
        if (!nl) break;
        *nl = '\0';
        json_t *j = json_loads(data + pos, 0, NULL);
        json_t *r = j ? json_object_get(j, "round") : NULL;
        if (r && json_is_integer(r) && (uint64_t)json_integer_value(r) > a->metrics_round)
            a->metrics_round = (uint64_t)json_integer_value(r);
        json_decref(j);
        pos = (size_t)(nl - data) + 1;
        good = pos;
    }
    free(data);
    if (good < len && truncate(p, (off_t)good) != 0)
        return err_errno("cutting the torn last line of %s", p);
    return 0;
}

static int open_round(agg *a, uint64_t now) {
    journal_record r = {
        .kind = JOURNAL_OPEN, .round = a->round + 1, .deadline = now + a->cfg.deadline_s};
    memcpy(r.hash, a->version, 32);
    if (commit(a, &r) < 0) return -1;
    char sh[17];
    short_hex(a->base, sh);
    say("round %llu open: base %s..., deadline in %u s, quorum %u of %d",
        (unsigned long long)a->round, sh, a->cfg.deadline_s, a->cfg.quorum,
        agg_roster_count(a->roster));
    return 0;
}

int agg_open(agg **out, const agg_config *c, uint64_t now) {
    agg *a = calloc(1, sizeof *a);
    if (!a) return err_set("out of memory");
    a->cfg = *c;
    a->policy = agg_policy_default();
    if (c->has_policy) {
        agg_hooks_init(&a->hooks, &a->cfg.policy, &a->cfg.train);
        a->policy = &a->hooks.hooks;
    }
    a->lock_fd = -1;
    char p[AGG_PATH_MAX];
    static const char *const dirs[] = {"", "inbox", "versions", "tmp", "noise"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if ((i == 0 ? snprintf(p, sizeof p, "%s", c->state) >= (int)sizeof p
                    : state_path(a, dirs[i], p, sizeof p) < 0) ||
            fio_mkdirs(p, 0700) < 0)
            goto fail;
    if (state_path(a, "lock", p, sizeof p) < 0) goto fail;
    a->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (a->lock_fd < 0) {
        err_errno("opening %s", p);
        goto fail;
    }
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        err_set("state directory %s is in use by another aggregator (lock %s held)", c->state, p);
        goto fail;
    }
    if (keys_load_secret(c->keys_dir, c->keys_name, &a->keys) < 0 ||
        agg_roster_load(&a->roster, c, 0) < 0)
        goto fail;
    a->told_cap = agg_roster_size(a->roster) + 1;
    a->told = calloc((size_t)a->told_cap, sizeof *a->told);
    /* Uploads in progress: bounded, a few per member (a node that restarts
     * mid-upload starts a new one before the old one expires). */
    a->nup = 2 * agg_roster_count(a->roster) + 8;
    a->up = calloc((size_t)a->nup, sizeof *a->up);
    for (int i = 0; a->up && i < a->nup; i++) a->up[i].fd = -1;
    if (!a->told || !a->up) {
        err_set("out of memory");
        goto fail;
    }
    if (state_path(a, "journal", p, sizeof p) < 0 ||
        journal_open(&a->journal, p, 0, replay_record, a) < 0)
        goto fail;
    /* Leftovers of a crash: half-uploaded envelopes (their nodes had no
     * receipt and send them again) and half-written versions. */
    char dir[AGG_PATH_MAX];
    if (state_path(a, "inbox", dir, sizeof dir) < 0 || clean_dir(dir, ".part", 0) < 0 ||
        state_path(a, "tmp", dir, sizeof dir) < 0 || clean_dir(dir, "", 1) < 0 ||
        metrics_scan(a) < 0)
        goto fail;
    /* DP keys of rounds whose publish or fail record made it (a crash came
     * before the key was deleted); an aggregating round keeps its own. */
    if (a->state != AGG_AGGREGATING &&
        (state_path(a, "noise", dir, sizeof dir) < 0 || clean_dir(dir, ".key", 0) < 0))
        goto fail;
    if (dp_on(c)) {
        const policy *pol = &c->policy;
        dp_accountant_init(&a->dp);
        if (dp_accountant_add(&a->dp, pol->rounds.fraction, pol->dp.noise_multiplier,
                              (int64_t)a->published) < 0)
            goto fail;
        if (a->published)
            say("DP: %llu round(s) published so far, epsilon %.4g at delta %g (budget %g)",
                (unsigned long long)a->published, dp_epsilon(&a->dp, pol->dp.delta, NULL),
                pol->dp.delta, pol->dp.epsilon_budget);
    }

    const char *hook = getenv("FEDLORA_CRASH_AT");
    if (hook && *hook) {
        snprintf(a->crash_point, sizeof a->crash_point, "%s", hook);
        char *colon = strchr(a->crash_point, ':');
        a->crash_left = 1;
        if (colon) {
            *colon = '\0';
            a->crash_left = strtol(colon + 1, NULL, 10);
            if (a->crash_left < 1) a->crash_left = 1;
        }
    }

    if (!a->initialized) {
        /* A new federation: the base model goes into the store as version 0
         * (float32, one file) and round 1 opens on it. */
        char hex[STORE_HEX_LEN + 1];
        if (checkpoint_load(&a->model, c->base_model) < 0) {
            err_context("base_model %s", c->base_model);
            goto fail;
        }
        journal_record r = {.kind = JOURNAL_INIT};
        memcpy(r.consortium, c->consortium, 32);
        if (publish_model(c, a->model, "import", r.hash) < 0 || commit(a, &r) < 0) goto fail;
        memcpy(a->model_version, a->version, 32);
        hex_encode(a->version, 32, hex);
        say("new federation '%s' in %s: base model %s imported as version %.16s...",
            c->consortium_name, c->state, c->base_model, hex);
    } else {
        char sh[17];
        short_hex(a->state == AGG_PUBLISHED || a->state == AGG_FAILED ? a->version : a->base, sh);
        say("resuming from the journal: round %llu, %s, %d delta(s) accepted, version %s...",
            (unsigned long long)a->round, agg_state_name(a->state), agg_accepted_count(a), sh);
    }
    if (roster_journal(a) < 0) goto fail;
    if (agg_roster_version(a->roster))
        say("roster version %llu in force: %d active members (admin-signed, reloaded when %s "
            "changes or on SIGHUP)",
            (unsigned long long)agg_roster_version(a->roster), agg_roster_count(a->roster),
            c->roster_path);
    /* At rest before the first request: an aggregation a crash interrupted
     * is finished now, and the next round opened (agg.h). */
    if (a->state == AGG_AGGREGATING && aggregate_and_publish(a, now) < 0) goto fail;
    if (advance(a, now) < 0) goto fail;
    *out = a;
    return 0;
fail:
    agg_close(a);
    return -1;
}

void agg_close(agg *a) {
    if (!a) return;
    for (int i = 0; a->up && i < a->nup; i++) upload_drop(&a->up[i]);
    free(a->up);
    journal_close(a->journal);
    agg_roster_free(a->roster);
    agg_roster_free(a->open_view);
    keys_secret_wipe(&a->keys);
    model_free(a->model);
    agg_hooks_free(&a->hooks);
    free(a->acc);
    free(a->told);
    if (a->lock_fd >= 0) close(a->lock_fd);
    free(a);
}

/* ---- replies --------------------------------------------------------------- */

static int encode(const struct msg *m, uint8_t **out, size_t *len) {
    if (msg_encode(m, out, len) < 0) return err_context("encoding the reply");
    return 0;
}

/* An ERROR reply, logged. The reason is cut to MSG_REASON_MAX and stripped
 * of anything but printable ASCII (it may quote a peer's bytes). */
static int reply_error(agg *a, enum msg_error_code code, int retry_ms, uint8_t **out, size_t *len,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int reply_error(agg *a, enum msg_error_code code, int retry_ms, uint8_t **out, size_t *len,
                       const char *fmt, ...) {
    struct msg m = {.type = MSG_ERROR};
    m.error.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m.error.reason, sizeof m.error.reason, fmt, ap);
    va_end(ap);
    for (char *p = m.error.reason; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
    if (!m.error.reason[0]) snprintf(m.error.reason, sizeof m.error.reason, "error");
    m.error.has_retry_after = retry_ms >= 0;
    m.error.retry_after_ms = retry_ms >= 0 ? (uint32_t)retry_ms : 0;
    if (code != MSG_ERR_BUSY && !(code == MSG_ERR_WRONG_ROUND && retry_ms >= 0)) {
        say("refused: %s", m.error.reason);
        if (code != MSG_ERR_BAD_MESSAGE) a->refused++;
    }
    return encode(&m, out, len);
}

static int reply_receipt(const accept_rec *r, uint8_t **out, size_t *len) {
    struct msg m = {.type = MSG_RECEIPT};
    m.receipt.round = r->round;
    memcpy(m.receipt.id, r->msgid, MSG_ID_LEN);
    memcpy(m.receipt.digest, r->digest, MSG_HASH_LEN);
    m.receipt.time = r->time;
    return encode(&m, out, len);
}

/* SUBMIT_BEGIN and SUBMIT_CHUNK are answered with an ACK: "go on", with the
 * bytes of the upload held so far. The one answer that means "stored" is the
 * RECEIPT of SUBMIT_END, carrying the envelope's digest. */
static int reply_ack(const uint8_t id[MSG_ID_LEN], uint64_t stored, uint8_t **out, size_t *len) {
    struct msg m = {.type = MSG_ACK};
    memcpy(m.ack.id, id, MSG_ID_LEN);
    m.ack.stored = stored;
    return encode(&m, out, len);
}

/* ---- the roster in force ---------------------------------------------------- */

/* Journals the version in force when it is newer than the last journaled
 * one: from here on (and after a restart) it decides who takes part. */
static int roster_journal(agg *a) {
    uint64_t v = agg_roster_version(a->roster), size;
    uint8_t h[32];
    if (v <= a->journal_roster || agg_roster_hash(a->roster, h, &size) != 1) return 0;
    journal_record r = {.kind = JOURNAL_ROSTER, .round = v};
    memcpy(r.hash, h, 32);
    if (commit(a, &r) < 0) return -1;
    if (agg_roster_size(a->roster) + 1 > a->told_cap) {
        int cap = agg_roster_size(a->roster) + 1;
        char(*t)[KEYS_NAME_MAX + 1] = realloc(a->told, (size_t)cap * sizeof *t);
        if (!t) return err_set("out of memory for %d members", cap);
        a->told = t;
        a->told_cap = cap;
    }
    /* Upload slots follow the membership (a few per member, as at start).
     * No request is in flight here, so moving the array is safe. */
    int nup = 2 * agg_roster_count(a->roster) + 8;
    if (nup > a->nup) {
        upload *u = realloc(a->up, (size_t)nup * sizeof *u);
        if (!u) return err_set("out of memory for %d upload slots", nup);
        memset(u + a->nup, 0, (size_t)(nup - a->nup) * sizeof *u);
        for (int i = a->nup; i < nup; i++) u[i].fd = -1;
        a->up = u;
        a->nup = nup;
    }
    return 0;
}

/* Takes a newer roster file (a change seen, or SIGHUP). A refused file is
 * logged and changes nothing; only a journal failure stops the aggregator. */
static int roster_tick(agg *a) {
    char summary[512];
    int force = reload_requested;
    reload_requested = 0;
    int r = agg_roster_reload(a->roster, force, summary, sizeof summary);
    if (r < 0) {
        say("roster refused, version %llu stays in force: %s",
            (unsigned long long)agg_roster_version(a->roster), err_msg());
        return 0;
    }
    if (r == 0) return 0;
    if (roster_journal(a) < 0) return -1;
    say("roster %s (%d active members)", summary, agg_roster_count(a->roster));
    return 0;
}

/* Whether member m takes part in the current round: an active submitter
 * that was on the roster when the round opened, unless rounds.join =
 * "current" lets members added since join at once. */
static int takes_part(agg *a, const agg_member *m) {
    if (m->observer || !m->active) return 0;
    if (a->cfg.join_current || a->open_roster == agg_roster_version(a->roster)) return 1;
    if (!a->open_view && agg_roster_at(a->roster, a->open_roster, &a->open_view) < 0) return -1;
    agg_member then;
    return agg_roster_find_name(a->open_view, m->name, &then) == 1 && !then.observer;
}

/* 1 when every member taking part has a delta accepted this round. */
static int all_in(agg *a) {
    for (int i = 0; i < agg_roster_size(a->roster); i++) {
        const agg_member *m = agg_roster_entry(a->roster, i);
        int t = takes_part(a, m);
        if (t < 0) return -1;
        if (t && !find_member(a, a->round, m->name)) return 0;
    }
    return 1;
}

/* ---- HELLO / GET_MODEL ----------------------------------------------------- */

static void mark_told(agg *a, const char *name) {
    for (int i = 0; i < a->ntold; i++)
        if (strcmp(a->told[i], name) == 0) return;
    if (a->ntold < a->told_cap) {
        snprintf(a->told[a->ntold++], sizeof a->told[0], "%s", name);
        say("told %s that the federation is finished (%d of %d members)", name, a->ntold,
            agg_roster_count(a->roster));
        if (a->ntold >= agg_roster_count(a->roster)) a->all_told_at = (uint64_t)time(NULL);
    }
}

static int on_hello(agg *a, const struct msg_hello *h, uint64_t now, uint8_t **out, size_t *len) {
    agg_member m;
    int found = agg_roster_find(a->roster, h->fingerprint, &m);
    if (found < 0) return -1;
    char fp[17];
    short_hex(h->fingerprint, fp);
    if (!found) {
        const char *st = agg_roster_key_status(a->roster, h->fingerprint);
        if (!strcmp(st, "revoked"))
            return reply_error(a, MSG_ERR_NOT_MEMBER, -1, out, len,
                               "revoked: '%s' (identity %s...) was revoked from consortium '%s' "
                               "(roster version %llu)",
                               h->name, fp, a->cfg.consortium_name,
                               (unsigned long long)agg_roster_version(a->roster));
        if (!strcmp(st, "rotated"))
            return reply_error(a, MSG_ERR_NOT_MEMBER, -1, out, len,
                               "rotated: identity %s... is an old key of '%s'; the roster now "
                               "lists new keys for it: run the node with the new keys",
                               fp, h->name);
        return reply_error(a, MSG_ERR_NOT_MEMBER, -1, out, len,
                           "unknown node: '%s' (identity %s...) is not a member of consortium '%s'",
                           h->name, fp, a->cfg.consortium_name);
    }
    if (strcmp(m.name, h->name) != 0)
        return reply_error(a, MSG_ERR_NOT_MEMBER, -1, out, len,
                           "unknown node: name '%s' does not match the identity's name '%s'",
                           h->name, m.name);
    /* The fingerprint is public: only the signature says the member asks. */
    if (hello_verify(h, a->cfg.consortium, &m.pub, now, HELLO_SKEW_MAX_S) < 0)
        return reply_error(a, MSG_ERR_REJECTED, -1, out, len, "%s", err_msg());
    if (a->state == AGG_FINISHED) {
        /* No retry_after: the node is done and exits 0. */
        char hex[STORE_HEX_LEN + 1];
        hex_encode(a->version, 32, hex);
        mark_told(a, m.name);
        struct msg e = {.type = MSG_ERROR};
        e.error.code = MSG_ERR_WRONG_ROUND;
        snprintf(e.error.reason, sizeof e.error.reason,
                 "finished: all %llu rounds are done; final version %s",
                 (unsigned long long)a->round, hex);
        return encode(&e, out, len);
    }
    /* Between calls the round is at rest (agg.h): OPEN, COLLECTING or
     * FINISHED. A round being aggregated is never seen from here. */
    if (!open_state(a))
        return err_set("HELLO in state %s of round %llu: the state machine is not at rest (a "
                       "bug)",
                       agg_state_name(a->state), (unsigned long long)a->round);
    int part = takes_part(a, &m);
    if (part < 0) return -1;
    if (!part && !m.observer)
        return reply_error(a, MSG_ERR_WRONG_ROUND, RETRY_JOINING, out, len,
                           "welcome: '%s' joined after round %llu opened and takes part from "
                           "round %llu on (rounds.join = next); ask again",
                           m.name, (unsigned long long)a->round, (unsigned long long)a->round + 1);
    struct msg r = {.type = MSG_ROUND};
    r.round.round = a->round;
    memcpy(r.round.base, a->base, 32);
    r.round.train = a->cfg.train;
    r.round.deadline = a->deadline;
    /* Low-rank sync: a node that holds the previous version can make this
     * base from it and the update object (docs/protocol.md). */
    r.round.has_update = a->has_update && memcmp(a->update_to, a->base, 32) == 0;
    if (r.round.has_update) {
        memcpy(r.round.update_from, a->update_from, 32);
        memcpy(r.round.update_hash, a->update_hash, 32);
        r.round.update_size = a->update_size;
    }
    return encode(&r, out, len);
}

static int on_get_model(agg *a, const struct msg_get_model *g, uint8_t **out, size_t *len) {
    char sh[17];
    short_hex(g->version, sh);
    if (!store_has_any(a->cfg.state, g->version))
        return reply_error(a, MSG_ERR_NOT_FOUND, -1, out, len,
                           "unknown model version or object %s...", sh);
    uint8_t *buf = malloc(g->length);
    if (!buf) return err_set("out of memory for a %llu-byte chunk", (unsigned long long)g->length);
    size_t got;
    uint64_t total;
    int r = store_read(a->cfg.state, g->version, g->offset, buf, g->length, &got, &total);
    if (r != 0) {
        free(buf);
        if (r < 0) return -1;
        return reply_error(a, MSG_ERR_BAD_MESSAGE, -1, out, len,
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
    int rc = encode(&m, out, len);
    free(buf);
    return rc;
}

/* ---- SUBMIT_BEGIN / SUBMIT_CHUNK / SUBMIT_END ------------------------------- */

static void upload_drop(upload *u) {
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

static int on_submit_begin(agg *a, const struct msg_submit_begin *b, uint64_t now, uint8_t **out,
                           size_t *len) {
    char idhex[2 * MSG_ID_LEN + 1];
    hex_encode(b->id, MSG_ID_LEN, idhex);
    const accept_rec *prev = find_msgid(a, b->id);
    if (!prev) {
        char why[160];
        if (b->round != a->round || !open_state(a)) {
            round_problem(a, b->round, why, sizeof why);
            return reply_error(a, MSG_ERR_WRONG_ROUND, -1, out, len, "%s", why);
        }
        if (b->size > a->cfg.max_submission)
            return reply_error(a, MSG_ERR_TOO_LARGE, -1, out, len,
                               "oversized submission: %llu bytes, the limit is %llu",
                               (unsigned long long)b->size,
                               (unsigned long long)a->cfg.max_submission);
    }
    upload *u = upload_find(a, b->id);
    if (u) upload_drop(u); /* the node starts over (it restarted, or gave up on a chunk) */
    if (!(u = upload_slot(a)))
        return reply_error(a, MSG_ERR_BUSY, 2000, out, len,
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
        upload_drop(u);
        return -1;
    }
    /* An already accepted msgid (prev) is only hashed, to answer END with the
     * same receipt when it is the same envelope; nothing is written. */
    if (!prev) {
        if (snprintf(u->part, sizeof u->part, "%s/inbox/%s.part", a->cfg.state, idhex) >=
            (int)sizeof u->part) {
            upload_drop(u);
            return err_set("state path too long");
        }
        u->fd = open(u->part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (u->fd < 0) {
            err_errno("creating %s", u->part);
            upload_drop(u);
            return -1;
        }
    }
    return reply_ack(b->id, 0, out, len);
}

static int on_submit_chunk(agg *a, const struct msg_submit_chunk *c, uint64_t now, uint8_t **out,
                           size_t *len) {
    upload *u = upload_find(a, c->id);
    if (!u)
        return reply_error(a, MSG_ERR_NOT_FOUND, -1, out, len,
                           "no upload in progress for this msgid; start with SUBMIT_BEGIN");
    u->last_seen = now;
    if (c->index + 1 == u->next) /* a retried chunk whose answer was lost */
        return reply_ack(c->id, u->received, out, len);
    if (c->index != u->next) {
        uint32_t want = u->next;
        upload_drop(u);
        return reply_error(a, MSG_ERR_BAD_MESSAGE, -1, out, len,
                           "SUBMIT_CHUNK %u out of order: expected chunk %u; start over with "
                           "SUBMIT_BEGIN",
                           c->index, want);
    }
    if (c->index >= u->chunks || c->data_len > u->size - u->received) {
        uint64_t size = u->size;
        upload_drop(u);
        return reply_error(
            a, MSG_ERR_TOO_LARGE, -1, out, len,
            "oversized submission: more bytes or chunks than the %llu bytes SUBMIT_BEGIN "
            "declared",
            (unsigned long long)size);
    }
    if (crypto_sha256_update(u->sha, c->data, c->data_len) < 0) return -1;
    if (u->fd >= 0 && fio_write_full(u->fd, c->data, c->data_len, u->part) < 0) {
        upload_drop(u);
        return -1;
    }
    u->received += c->data_len;
    u->next++;
    a->bytes_received += c->data_len;
    crash_point(a, "collect");
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
static int lookup_any_key(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out) {
    agg_member m;
    int r = agg_roster_key_owner(arg, fp, &m);
    if (r == 1) *out = m.pub;
    return r;
}

static int seen_msgid(void *arg, const uint8_t id[ENVELOPE_MSGID_LEN]) {
    return find_msgid(arg, id) != NULL;
}

static void expect_for(const agg_config *c, agg_roster *roster, uint64_t round,
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
    expect_for(&a->cfg, a->roster, a->round, lookup_member, &x);
    x.seen = seen_msgid;
    x.seen_arg = a;
    envelope_status st = ENVELOPE_OK;
    keys_public pub;
    envelope_header hdr;
    if (envelope_open_mem(&x, &a->keys, env, env_len, payload, plen, &hdr, &pub, &st) < 0) {
        const char *what;
        enum msg_error_code code = refusal(st, &what);
        if (code == MSG_ERR_INTERNAL) return -1;
        if (reply_error(a, code, -1, out, len, "%s: %s", what, err_msg()) < 0) return -1;
        return 1;
    }
    uint8_t fp[KEYS_FP_LEN];
    if (keys_fingerprint(&pub, fp) < 0 || agg_roster_find(a->roster, fp, sender) != 1) {
        free(*payload);
        return err_set("sender of a verified envelope is not on the member list");
    }
    int part = sender->observer ? 0 : takes_part(a, sender);
    if (part <= 0) {
        free(*payload);
        *payload = NULL;
        if (part < 0) return -1;
        if (sender->observer)
            return reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                               "%s is an observer in the roster: observers do not submit",
                               sender->name) < 0
                       ? -1
                       : 1;
        return reply_error(a, MSG_ERR_WRONG_ROUND, -1, out, len,
                           "%s joined after round %llu opened and takes part from round %llu on "
                           "(rounds.join = next)",
                           sender->name, (unsigned long long)a->round,
                           (unsigned long long)a->round + 1) < 0
                   ? -1
                   : 1;
    }
    return 0;
}

static int on_submit_end(agg *a, const struct msg_submit_end *e, uint64_t now, uint8_t **out,
                         size_t *len) {
    upload *u = upload_find(a, e->id);
    if (!u)
        return reply_error(a, MSG_ERR_NOT_FOUND, -1, out, len,
                           "no upload in progress for this msgid; start with SUBMIT_BEGIN");
    if (u->received != u->size || u->next != u->chunks) {
        uint64_t got = u->received, size = u->size;
        upload_drop(u);
        return reply_error(a, MSG_ERR_BAD_MESSAGE, -1, out, len,
                           "SUBMIT_END before the whole envelope arrived: %llu of %llu bytes; "
                           "start over with SUBMIT_BEGIN",
                           (unsigned long long)got, (unsigned long long)size);
    }
    uint8_t digest[32];
    if (crypto_sha256_final(u->sha, digest) < 0) return -1;
    crypto_sha256_free(u->sha);
    u->sha = NULL;
    if (!crypto_equal(digest, e->digest, 32)) {
        upload_drop(u);
        return reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                           "digest mismatch: the bytes received do not hash to SUBMIT_END's "
                           "digest; submit again");
    }
    if (u->accepted) {
        /* The same msgid once more: the same receipt when it is the same
         * envelope (a node that lost the first answer), else a replay. */
        const accept_rec *prev = u->accepted;
        upload_drop(u);
        if (memcmp(prev->digest, digest, 32) == 0) return reply_receipt(prev, out, len);
        return reply_error(a, MSG_ERR_REJECTED, -1, out, len,
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
    upload_drop(u);
    if (!synced) {
        unlink(part);
        return -1;
    }
    if (round != a->round || !open_state(a)) {
        char why[160];
        unlink(part);
        round_problem(a, round, why, sizeof why);
        return reply_error(a, MSG_ERR_WRONG_ROUND, -1, out, len, "%s", why);
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
    const accept_rec *mine = find_member(a, round, m.name);
    if (mine) {
        rc = reply_error(a, MSG_ERR_REJECTED, -1, out, len,
                         "already submitted: %s's delta for round %llu was accepted (another "
                         "message id); one delta per member and round",
                         m.name, (unsigned long long)round);
        goto done;
    }
    if (ensure_model(a, a->base) < 0) goto done;
    agg_update up;
    char why[AGG_WHY_MAX];
    int b =
        agg_update_build(a->model, a->base, round, m.name, m.max_weight, payload, plen, &up, why);
    if (b < 0) goto done;
    if (b > 0) {
        rc = reply_error(a, MSG_ERR_REJECTED, -1, out, len, "%s's delta: %s", m.name, why);
        goto done;
    }
    uint64_t tokens = up.tokens;
    agg_update_free(&up);

    /* Durable before the receipt: rename into place, fsync the directory,
     * journal it. */
    char final[AGG_PATH_MAX];
    if (inbox_path(&a->cfg, round, m.name, final, sizeof final) < 0) goto done;
    if (rename(part, final) != 0) {
        err_errno("renaming %s to %s", part, final);
        goto done;
    }
    if (fio_fsync_dir_of(final) < 0) goto done;
    journal_record ar = {.kind = JOURNAL_ACCEPT, .round = round, .size = size, .time = now};
    snprintf(ar.member, sizeof ar.member, "%s", m.name);
    memcpy(ar.msgid, e->id, MSG_ID_LEN);
    memcpy(ar.digest, digest, 32);
    if (commit(a, &ar) < 0) goto done;
    say("round %llu: accepted %s's delta (%llu bytes, %llu tokens), %d accepted so far",
        (unsigned long long)round, ar.member, (unsigned long long)size, (unsigned long long)tokens,
        agg_accepted_count(a));
    crash_point(a, "receipt");
    rc = reply_receipt(&a->acc[a->nacc - 1], out, len);
done:
    unlink(part); /* gone already when accepted (renamed) */
    free(env);
    free(payload);
    return rc;
}

/* ---- STATUS ---------------------------------------------------------------- */

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
    memcpy(i->version, open_state(a) ? a->base : a->version, 32);
    agg_member mem;
    const char *st = agg_roster_key_status(a->roster, q->fingerprint);
    if (agg_roster_key_owner(a->roster, q->fingerprint, &mem) == 1 && strcmp(mem.name, q->name))
        st = "unknown"; /* the key is someone else's */
    snprintf(i->member, sizeof i->member, "%s", st);
    i->has_roster = agg_roster_hash(a->roster, i->roster_hash, &i->roster_size) == 1;
    i->roster_version = agg_roster_version(a->roster);
    return encode(&m, out, len);
}

/* ---- the request handler -------------------------------------------------- */

int agg_handle(agg *a, const void *req, size_t len, uint64_t now, uint8_t **reply,
               size_t *reply_len) {
    /* A roster written a moment ago is in force for this request already
     * (a stat when nothing changed): a member added is answered, a member
     * revoked is refused, from the very next message on. */
    if (roster_tick(a) < 0) return -1;
    struct msg m;
    if (msg_decode(req, len, NULL, &m) < 0)
        return reply_error(a, MSG_ERR_BAD_MESSAGE, -1, reply, reply_len, "%s", err_msg());
    int rc;
    switch (m.type) {
        case MSG_HELLO:
            rc = on_hello(a, &m.hello, now, reply, reply_len);
            break;
        case MSG_GET_MODEL:
            rc = on_get_model(a, &m.get_model, reply, reply_len);
            break;
        case MSG_SUBMIT_BEGIN:
            rc = on_submit_begin(a, &m.submit_begin, now, reply, reply_len);
            break;
        case MSG_SUBMIT_CHUNK:
            rc = on_submit_chunk(a, &m.submit_chunk, now, reply, reply_len);
            break;
        case MSG_SUBMIT_END:
            rc = on_submit_end(a, &m.submit_end, now, reply, reply_len);
            break;
        case MSG_STATUS:
            rc = on_status(a, &m.status, now, reply, reply_len);
            break;
        default:
            return reply_error(a, MSG_ERR_BAD_MESSAGE, -1, reply, reply_len,
                               "%s is not a request the aggregator answers", msg_type_name(m.type));
    }
    return rc;
}

/* ---- aggregation ------------------------------------------------------------- */

typedef struct {
    char member[KEYS_NAME_MAX + 1];
    char why[AGG_WHY_MAX];
} dropped;

typedef struct {
    agg_update *u; /* kept, in member name order */
    int n;
    double *w;
    dropped *drop;
    int ndrop;
    int merged; /* the n kept updates were merged (n >= the quorum) */
    uint64_t tokens, examples, bytes;
    update *factors; /* what was merged, as low-rank factors; NULL: a dense merge */
} round_result;

static void result_free(round_result *r) {
    update_free(r->factors);
    for (int i = 0; i < r->n; i++) agg_update_free(&r->u[i]);
    free(r->u);
    free(r->w);
    free(r->drop);
    memset(r, 0, sizeof *r);
}

static int by_member(const void *x, const void *y) {
    return strcmp((*(const accept_rec *const *)x)->member, (*(const accept_rec *const *)y)->member);
}

static void drop(round_result *r, uint64_t round, const char *member, const char *why) {
    dropped *d = &r->drop[r->ndrop++];
    snprintf(d->member, sizeof d->member, "%s", member);
    snprintf(d->why, sizeof d->why, "%s", why);
    say("round %llu: dropped %s's delta: %s", (unsigned long long)round, member, why);
}

/* W' = W + Σ_i w_i s_i B_i A_i as its factored update (lora/update.h): built
 * from the kept updates, applied to m by the portable kernel, kept in
 * r->factors for low-rank sync. */
static int merge_factored(model *m, round_result *r) {
    lora_set **sets = malloc((size_t)r->n * sizeof *sets);
    if (!sets) return err_set("out of memory merging %d updates", r->n);
    for (int i = 0; i < r->n; i++) sets[i] = r->u[i].set;
    int rc = update_build(&r->factors, m, sets, r->w, r->n);
    free(sets);
    if (rc == 0) rc = update_apply(m, r->factors);
    return rc;
}

/* The heart of a round, shared by the live aggregator and agg_recompute:
 * reads the n accepted envelopes in member name order, checks each again
 * (the same checks as at submission, so a delta that passed then passes
 * now), lets the policy validate and weigh them, and merges them into m
 * when at least `quorum` (and one) are kept. r->merged == 0 means nothing
 * was merged (m is untouched): the policy rejected too many.
 *
 * A policy whose merge is the exact product merge (agg_merge_exact: the
 * default policy, and any with its own weights) is a weighted sum of
 * products, so it is merged through its factored update instead of the
 * BLAS GEMM: the same maths, in the portable kernel that a node repeats bit
 * for bit, and r->factors is what low-rank sync serves. A policy file's
 * merge (hooks.h) is the policies library's own (aggregate_round): when it
 * is low rank (mean or multi-Krum without DP, fedit, svd) the library
 * applies it as an update with the same kernel and r->factors takes that
 * update; the median, trimmed mean and DP noise are dense: no factors. */
static int aggregate(const agg_config *c, agg_roster *roster, const keys_secret *keys,
                     const agg_policy *pol, model *m, const uint8_t base[32], uint64_t round,
                     int quorum, const accept_rec *const *acc, int n, round_result *r, agg *crash) {
    memset(r, 0, sizeof *r);
    const accept_rec **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    r->u = calloc((size_t)(n ? n : 1), sizeof *r->u);
    r->w = calloc((size_t)(n ? n : 1), sizeof *r->w);
    r->drop = calloc((size_t)(n ? n : 1), sizeof *r->drop);
    if (!order || !r->u || !r->w || !r->drop) {
        free(order);
        result_free(r);
        return err_set("out of memory aggregating %d deltas", n);
    }
    memcpy(order, acc, (size_t)n * sizeof *order);
    qsort(order, (size_t)n, sizeof *order, by_member);
    envelope_expect x;
    expect_for(c, roster, round, lookup_any_key, &x);
    int rc = -1;
    for (int i = 0; i < n; i++) {
        const accept_rec *a = order[i];
        char path[AGG_PATH_MAX], why[AGG_WHY_MAX];
        char *env = NULL;
        size_t env_len;
        uint8_t digest[32], *payload = NULL;
        size_t plen;
        if (inbox_path(c, round, a->member, path, sizeof path) < 0) goto done;
        /* The journal says this file was stored durably: not finding it, or
         * finding other bytes, means the state directory was damaged. */
        if (fio_read_all(path, (size_t)a->size, &env, &env_len) < 0 ||
            crypto_sha256(env, env_len, digest) < 0) {
            err_context("round %llu: the accepted delta of %s is gone (%s); the state directory "
                        "was damaged",
                        (unsigned long long)round, a->member, path);
            free(env);
            goto done;
        }
        if (env_len != a->size || memcmp(digest, a->digest, 32) != 0) {
            free(env);
            err_set("round %llu: %s no longer has the bytes that were receipted (digest "
                    "differs); the state directory was damaged",
                    (unsigned long long)round, path);
            goto done;
        }
        envelope_status st;
        keys_public pub;
        agg_member mem;
        int ok = envelope_open_mem(&x, keys, env, env_len, &payload, &plen, NULL, &pub, &st) == 0;
        free(env);
        uint8_t fp[KEYS_FP_LEN];
        if (!ok || keys_fingerprint(&pub, fp) < 0 || agg_roster_key_owner(roster, fp, &mem) != 1 ||
            strcmp(mem.name, a->member) != 0) {
            snprintf(why, sizeof why, "envelope no longer opens for this member: %s", err_msg());
            drop(r, round, a->member, why);
            free(payload);
            continue;
        }
        if (!mem.active) {
            snprintf(why, sizeof why,
                     "revoked: %s was revoked (roster version %llu) before its delta was merged",
                     a->member, (unsigned long long)agg_roster_version(roster));
            drop(r, round, a->member, why);
            free(payload);
            continue;
        }
        int b = agg_update_build(m, base, round, a->member, mem.max_weight, payload, plen,
                                 &r->u[r->n], why);
        free(payload);
        if (b < 0) goto done;
        if (b > 0) {
            drop(r, round, a->member, why);
            continue;
        }
        if (pol->validate) {
            int v = pol->validate(pol->arg, m, &r->u[r->n], why);
            if (v < 0) goto done;
            if (v > 0) {
                drop(r, round, a->member, why);
                agg_update_free(&r->u[r->n]);
                continue;
            }
        }
        r->tokens += r->u[r->n].tokens;
        r->examples += r->u[r->n].examples;
        r->bytes += a->size;
        r->n++;
        if (crash) crash_point(crash, "aggregate");
    }
    if (r->n > 0 && r->n >= quorum) {
        if (pol->weights(pol->arg, r->u, r->n, r->w) < 0 ||
            (pol->merge == agg_merge_exact ? merge_factored(m, r)
                                           : pol->merge(pol->arg, m, r->u, r->n, r->w)) < 0)
            goto done;
        /* A policy file's hooks (their arg is the agg_hooks, hooks.h) keep
         * the update of a low-rank merge. */
        if (c->has_policy) r->factors = agg_hooks_take_factors(pol->arg);
        r->merged = 1;
    }
    rc = 0;
done:
    free(order);
    if (rc < 0) result_free(r);
    return rc;
}

/* ---- metrics ------------------------------------------------------------------ */

static int metrics_write(agg *a, json_t *j) {
    char p[AGG_PATH_MAX];
    char *line = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!line) return err_set("out of memory formatting metrics");
    int rc = -1;
    if (state_path(a, "metrics.jsonl", p, sizeof p) < 0) goto done;
    int fd = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        err_errno("opening %s", p);
        goto done;
    }
    size_t n = strlen(line);
    line[n] = '\n'; /* json_dumps leaves room for the NUL, which becomes the newline */
    rc = fio_write_full(fd, line, n + 1, p);
    if (rc == 0 && fsync(fd) != 0) rc = err_errno("fsync of %s", p);
    close(fd);
done:
    free(line);
    return rc;
}

static json_t *hex_json(const uint8_t *h) {
    char hex[STORE_HEX_LEN + 1];
    hex_encode(h, 32, hex);
    return json_string(hex);
}

/* The policy's part of a round's metrics: the rule and merge mode, per
 * member the update norm, clipping factor, coefficient and selection of the
 * last merge (r merged), and with DP ε of this round and of all rounds
 * released so far (including this one when `released`), at δ. */
static void metrics_policy(const agg *a, json_t *j, const round_result *r, int released) {
    const policy *pol = &a->cfg.policy;
    json_object_set_new(j, "policy", json_string(a->cfg.policy_path));
    json_object_set_new(j, "rule", json_string(policy_rule_name(pol->robust.rule)));
    json_object_set_new(j, "merge", json_string(policy_merge_name(pol->merge.mode)));
    const aggregate_report *rep = &a->hooks.rep;
    if (r && r->merged && rep->K == r->n) {
        json_t *norm = json_object(), *clip = json_object(), *coef = json_object(),
               *sel = json_object();
        for (int i = 0; i < r->n; i++) {
            const char *name = r->u[i].member;
            json_object_set_new(norm, name, json_real(rep->norm[i]));
            json_object_set_new(clip, name, json_real(rep->clip[i]));
            json_object_set_new(coef, name, json_real(rep->coef[i]));
            json_object_set_new(sel, name, json_boolean(rep->selected[i]));
        }
        json_object_set_new(j, "update_norm", norm);
        json_object_set_new(j, "clip", clip);
        json_object_set_new(j, "coef", coef);
        json_object_set_new(j, "selected", sel);
        json_object_set_new(j, "noise_sigma", json_real(rep->noise_sigma));
    }
    if (!pol->dp.enabled) return;
    dp_accountant acc = a->dp;
    if (released) dp_accountant_add(&acc, pol->rounds.fraction, pol->dp.noise_multiplier, 1);
    json_object_set_new(j, "epsilon_round",
                        json_real(released
                                      ? dp_epsilon_for(pol->rounds.fraction,
                                                       pol->dp.noise_multiplier, 1, pol->dp.delta)
                                      : 0));
    json_object_set_new(j, "epsilon", json_real(dp_epsilon(&acc, pol->dp.delta, NULL)));
    json_object_set_new(j, "delta", json_real(pol->dp.delta));
    json_object_set_new(j, "epsilon_budget", json_real(pol->dp.epsilon_budget));
}

/* One line per round, written once: a round repeated after a crash finds its
 * line there already (metrics_round) and keeps the first. */
static int metrics_round(agg *a, const char *status, const uint8_t *version, const round_result *r,
                         double collect_s, double aggregate_s, double publish_s) {
    if (a->round <= a->metrics_round) return 0;
    json_t *j = json_object(), *acc = json_array(), *rej = json_array(), *w = json_object(),
           *lb = json_object(), *la = json_object(), *tok = json_object();
    if (!j || !acc || !rej || !w || !lb || !la || !tok) {
        json_decref(j), json_decref(acc), json_decref(rej), json_decref(w), json_decref(lb);
        json_decref(la), json_decref(tok);
        return err_set("out of memory for metrics");
    }
    for (int i = 0; r && i < r->n; i++) {
        const agg_update *u = &r->u[i];
        json_array_append_new(acc, json_string(u->member));
        json_object_set_new(w, u->member, json_real(r->w[i]));
        json_object_set_new(tok, u->member, json_integer((json_int_t)u->tokens));
        json_object_set_new(lb, u->member, json_real(u->loss_before));
        json_object_set_new(la, u->member, json_real(u->loss_after));
    }
    for (int i = 0; r && i < r->ndrop; i++) {
        json_t *d = json_object();
        json_object_set_new(d, "member", json_string(r->drop[i].member));
        json_object_set_new(d, "reason", json_string(r->drop[i].why));
        json_array_append_new(rej, d);
    }
    json_object_set_new(j, "round", json_integer((json_int_t)a->round));
    json_object_set_new(j, "status", json_string(status));
    json_object_set_new(j, "base", hex_json(a->base));
    json_object_set_new(j, "version", version ? hex_json(version) : json_null());
    json_object_set_new(j, "members_accepted", acc);
    json_object_set_new(j, "members_rejected", rej);
    json_object_set_new(j, "submissions_refused", json_integer(a->refused));
    json_object_set_new(j, "tokens", json_integer(r ? (json_int_t)r->tokens : 0));
    json_object_set_new(j, "examples", json_integer(r ? (json_int_t)r->examples : 0));
    json_object_set_new(j, "member_tokens", tok);
    json_object_set_new(j, "weights", w);
    json_object_set_new(j, "bytes_in", json_integer(r ? (json_int_t)r->bytes : 0));
    json_object_set_new(j, "bytes_received", json_integer((json_int_t)a->bytes_received));
    json_object_set_new(j, "bytes_served", json_integer((json_int_t)a->bytes_served));
    json_object_set_new(j, "collect_s", json_real(collect_s));
    json_object_set_new(j, "aggregate_s", json_real(aggregate_s));
    json_object_set_new(j, "publish_s", json_real(publish_s));
    json_object_set_new(j, "loss_before", lb);
    json_object_set_new(j, "loss_after", la);
    if (a->cfg.has_policy) metrics_policy(a, j, r, version != NULL);
    json_object_set_new(j, "time", json_integer((json_int_t)time(NULL)));
    int rc = metrics_write(a, j);
    json_decref(j);
    if (rc == 0) a->metrics_round = a->round;
    return rc;
}

/* ---- the state machine ------------------------------------------------------- */

static int round_accepts(const agg *a, uint64_t round, const accept_rec ***out, int *n) {
    *n = 0;
    *out = malloc((a->nacc ? a->nacc : 1) * sizeof **out);
    if (!*out) return err_set("out of memory");
    for (size_t i = 0; i < a->nacc; i++)
        if (a->acc[i].round == round) (*out)[(*n)++] = &a->acc[i];
    return 0;
}

static int fail_round(agg *a, const char *reason, uint64_t now) {
    journal_record r = {.kind = JOURNAL_FAIL, .round = a->round};
    snprintf(r.reason, sizeof r.reason, "%s", reason);
    if (commit(a, &r) < 0) return -1;
    say("round %llu failed (%s): no new version; the next round trains on the same base",
        (unsigned long long)a->round, reason);
    if (forget_key(&a->cfg, a->round) < 0) return -1;
    double open_t = (double)(a->deadline - a->cfg.deadline_s);
    return metrics_round(a, reason, NULL, NULL, (double)now - open_t, 0, 0);
}

static int close_round(agg *a, const char *why) {
    int n = agg_accepted_count(a);
    journal_record r = {.kind = JOURNAL_CLOSE, .round = a->round, .count = (uint64_t)n};
    if (commit(a, &r) < 0) return -1;
    for (int i = 0; i < a->nup; i++)
        if (a->up[i].used && a->up[i].round == a->round && !a->up[i].accepted)
            upload_drop(&a->up[i]);
    say("round %llu closed (%s) with %d delta(s); aggregating", (unsigned long long)a->round, why,
        n);
    return 0;
}

static int aggregate_and_publish(agg *a, uint64_t now) {
    const accept_rec **acc;
    int n;
    if (round_accepts(a, a->round, &acc, &n) < 0) return -1;
    double t0 = mono();
    round_result r;
    noise_source *noise = NULL;
    int rc = ensure_model(a, a->base);
    if (rc == 0 && dp_on(&a->cfg)) rc = round_noise(&a->cfg, a->round, 1, &noise);
    /* The members as they were when the round closed (the journal says
     * which version), so a restart, or a roster change since, merges the
     * same deltas. */
    agg_roster *closed = NULL;
    if (rc == 0) rc = agg_roster_at(a->roster, a->close_roster, &closed);
    if (rc == 0) {
        a->hooks.info = (aggregate_round_info){a->round, agg_roster_count(closed)};
        a->hooks.noise = noise;
        rc = aggregate(&a->cfg, closed, &a->keys, a->policy, a->model, a->base, a->round,
                       (int)a->cfg.quorum, acc, n, &r, a);
        a->hooks.noise = NULL;
    }
    agg_roster_free(closed);
    noise_free(noise);
    free(acc);
    if (rc < 0) {
        /* The model may be half merged: forget it, a restart reloads it. */
        model_free(a->model);
        a->model = NULL;
        return -1;
    }
    double t1 = mono(), open_t = (double)(a->deadline - a->cfg.deadline_s);
    if (!r.merged) {
        /* The policy rejected so many that the quorum is no longer met. */
        int kept = r.n;
        r.n = 0; /* nothing was merged: the metrics list the rejections only */
        int f = metrics_round(a, kept ? "below-quorum-after-validation" : "no-valid-delta", NULL,
                              &r, (double)now - open_t, t1 - t0, 0);
        r.n = kept;
        result_free(&r);
        if (f < 0) return -1;
        return fail_round(a, kept ? "below-quorum-after-validation" : "no-valid-delta", now);
    }
    char name[64], hex[STORE_HEX_LEN + 1];
    snprintf(name, sizeof name, "r%llu", (unsigned long long)a->round);
    uint8_t v[32], uh[32] = {0};
    uint64_t usize = 0;
    /* The version, then its update as an object: both in the store before
     * the publish record names them. */
    if (publish_model(&a->cfg, a->model, name, v) < 0 ||
        (r.factors && publish_update(&a->cfg, r.factors, a->round, a->base, v, uh, &usize) < 0)) {
        model_free(a->model);
        a->model = NULL;
        result_free(&r);
        return -1;
    }
    memcpy(a->model_version, v, 32);
    crash_point(a, "publish");
    double t2 = mono();
    char uhex[STORE_HEX_LEN + 1];
    hex_encode(v, 32, hex);
    hex_encode(uh, 32, uhex);
    unsigned long long rn = (unsigned long long)a->round;
    journal_record pr = {.kind = JOURNAL_PUBLISH,
                         .round = a->round,
                         .has_update = r.factors != NULL,
                         .update_size = usize};
    memcpy(pr.hash, v, 32);
    memcpy(pr.update_hash, uh, 32);
    if (metrics_round(a, "published", v, &r, (double)now - open_t, t1 - t0, t2 - t1) < 0 ||
        commit(a, &pr) < 0) {
        result_free(&r);
        return -1;
    }
    if (a->has_update)
        say("round %llu: low-rank update %.16s... of %llu bytes (%d weights, rank %d) makes "
            "this version from the round's base",
            rn, uhex, (unsigned long long)usize, r.factors->n_modules, r.factors->modules[0].rank);
    if (dp_on(&a->cfg)) {
        const policy *pol = &a->cfg.policy;
        if (dp_accountant_add(&a->dp, pol->rounds.fraction, pol->dp.noise_multiplier, 1) < 0 ||
            forget_key(&a->cfg, a->round) < 0) {
            result_free(&r);
            return -1;
        }
        say("round %llu: DP epsilon %.4g this round, %.4g over %llu round(s) at delta %g "
            "(budget %g)",
            (unsigned long long)a->round,
            dp_epsilon_for(pol->rounds.fraction, pol->dp.noise_multiplier, 1, pol->dp.delta),
            dp_epsilon(&a->dp, pol->dp.delta, NULL), (unsigned long long)a->published,
            pol->dp.delta, pol->dp.epsilon_budget);
    }
    say("round %llu published version %.16s... from %d delta(s) (%d dropped, %llu tokens): "
        "aggregate %.2f s, publish %.2f s",
        (unsigned long long)a->round, hex, r.n, r.ndrop, (unsigned long long)r.tokens, t1 - t0,
        t2 - t1);
    result_free(&r);
    return 0;
}

static void finish(agg *a, uint64_t now) {
    a->state = AGG_FINISHED;
    a->finished_at = now;
    char hex[STORE_HEX_LEN + 1];
    hex_encode(a->version, 32, hex);
    say("finished: %llu round(s) done; final version %s", (unsigned long long)a->round, hex);
}

/* DP: 1 when the next round would take ε above the budget; then it is not
 * opened: a log line and a metrics line (once, under the round number it
 * would have had) say so. */
static int dp_budget_spent(agg *a) {
    const policy *pol = &a->cfg.policy;
    double eps_next = 0;
    if (!dp_on(&a->cfg) || !dp_would_exceed(&a->dp, pol->rounds.fraction, pol->dp.noise_multiplier,
                                            pol->dp.delta, pol->dp.epsilon_budget, &eps_next))
        return 0;
    double eps = dp_epsilon(&a->dp, pol->dp.delta, NULL);
    uint64_t next = a->round + 1;
    say("DP budget: round %llu not opened: it would take epsilon from %.4g to %.4g at delta %g, "
        "above dp.epsilon_budget %g; the federation ends here",
        (unsigned long long)next, eps, eps_next, pol->dp.delta, pol->dp.epsilon_budget);
    if (next > a->metrics_round) {
        json_t *j = json_object();
        if (!j) return err_set("out of memory for metrics");
        json_object_set_new(j, "round", json_integer((json_int_t)next));
        json_object_set_new(j, "status", json_string("dp-budget-exhausted"));
        json_object_set_new(j, "epsilon", json_real(eps));
        json_object_set_new(j, "epsilon_next", json_real(eps_next));
        json_object_set_new(j, "epsilon_budget", json_real(pol->dp.epsilon_budget));
        json_object_set_new(j, "delta", json_real(pol->dp.delta));
        json_object_set_new(j, "rounds_published", json_integer((json_int_t)a->published));
        json_object_set_new(j, "time", json_integer((json_int_t)time(NULL)));
        int rc = metrics_write(a, j);
        json_decref(j);
        if (rc < 0) return -1;
        a->metrics_round = next;
    }
    return 1;
}

/* PUBLISHED → OPEN of the next round, or FINISHED after the last one (or
 * when the DP budget allows no more). */
static int advance(agg *a, uint64_t now) {
    if (a->state != AGG_PUBLISHED && a->state != AGG_FAILED) return 0;
    if (a->round >= a->cfg.rounds) {
        finish(a, now);
        return 0;
    }
    int spent = dp_budget_spent(a);
    if (spent != 0) {
        if (spent > 0) finish(a, now);
        return spent < 0 ? -1 : 0;
    }
    crash_point(a, "open");
    return open_round(a, now);
}

int agg_tick(agg *a, uint64_t now) {
    for (int i = 0; i < a->nup; i++)
        if (a->up[i].used && now > a->up[i].last_seen + UPLOAD_IDLE_S) {
            say("dropping an upload idle for %d s", UPLOAD_IDLE_S);
            upload_drop(&a->up[i]);
        }
    if (roster_tick(a) < 0) return -1;
    if (open_state(a)) {
        int n = agg_accepted_count(a), all = all_in(a);
        if (all < 0) return -1;
        if (all) {
            if (close_round(a, "every member submitted") < 0) return -1;
        } else if (now >= a->deadline) {
            if (n >= (int)a->cfg.quorum) {
                if (close_round(a, "deadline") < 0) return -1;
            } else if (a->cfg.fail_below_quorum) {
                if (fail_round(a, "below-quorum", now) < 0) return -1;
            } else if (!a->below_quorum_logged) {
                say("round %llu: deadline passed with %d of %u deltas needed; waiting for the "
                    "quorum (below_quorum = \"wait\")",
                    (unsigned long long)a->round, n, a->cfg.quorum);
                a->below_quorum_logged = 1;
            }
        }
    }
    if (a->state == AGG_AGGREGATING && aggregate_and_publish(a, now) < 0) return -1;
    return advance(a, now);
}

/* ---- serving ------------------------------------------------------------------ */

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void on_hup(int sig) {
    (void)sig;
    reload_requested = 1;
}

static int done_serving(const agg *a, uint64_t now) {
    if (a->state != AGG_FINISHED || a->cfg.linger_s < 0) return 0;
    /* After the last member heard "finished", wait a moment before closing
     * the socket: a DEALER with ZMQ_IMMEDIATE drops a reply still in flight
     * when the connection goes away, so leaving at once could cost that
     * member its answer. */
    return (a->all_told_at && now >= a->all_told_at + FINISH_GRACE_S) ||
           now >= a->finished_at + (uint64_t)a->cfg.linger_s;
}

int agg_run(agg *a) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return err_errno("installing signal handlers");
    sa.sa_handler = on_hup;
    if (sigaction(SIGHUP, &sa, NULL) != 0) return err_errno("installing the SIGHUP handler");
    signal(SIGPIPE, SIG_IGN);

    struct transport_opts o;
    transport_opts_default(&o);
    o.recv_timeout_ms = 200; /* how often deadlines and signals are looked at */
    void *ctx = zmq_ctx_new(), *sock = NULL;
    if (!ctx) return err_set("zmq_ctx_new failed");
    int rc = -1;
    char endpoint[AGG_ENDPOINT_MAX + 32], p[AGG_PATH_MAX];
    if (transport_router(ctx, a->cfg.bind, &o, &sock) < 0 ||
        transport_endpoint(sock, endpoint, sizeof endpoint) < 0)
        goto out;
    size_t el = strlen(endpoint);
    endpoint[el] = '\n';
    if (state_path(a, "endpoint", p, sizeof p) < 0 ||
        fio_write_atomic(p, endpoint, el + 1, 0644) < 0)
        goto out;
    endpoint[el] = '\0';
    say("listening on %s (consortium '%s', %d members, %llu rounds)", endpoint,
        a->cfg.consortium_name, agg_roster_count(a->roster), (unsigned long long)a->cfg.rounds);

    while (!stop_requested) {
        uint64_t now = (uint64_t)time(NULL);
        if (agg_tick(a, now) < 0) goto out;
        if (done_serving(a, now)) break;
        struct transport_msg req;
        int r = transport_serve_recv(sock, &o.lim, &req);
        if (r == 1) continue;
        if (r < 0) {
            say("dropped a message: %s", err_msg());
            continue;
        }
        uint8_t *reply = NULL;
        size_t rlen = 0;
        int h =
            req.n == TRANSPORT_PAYLOAD + 1
                ? agg_handle(a, transport_data(&req, TRANSPORT_PAYLOAD),
                             transport_size(&req, TRANSPORT_PAYLOAD), (uint64_t)time(NULL), &reply,
                             &rlen)
                : reply_error(a, MSG_ERR_BAD_MESSAGE, -1, &reply, &rlen,
                              "a request is one message frame, got %zu", req.n - TRANSPORT_PAYLOAD);
        if (h < 0) {
            /* Tell the node it is not its fault, then stop: the journal has
             * everything a restart needs. */
            char why[MSG_REASON_MAX + 1];
            snprintf(why, sizeof why, "%s", err_msg());
            free(reply);
            reply = NULL;
            if (reply_error(a, MSG_ERR_INTERNAL, 5000, &reply, &rlen,
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
            say("could not answer a node (it went away?): %s", err_msg());
        free(reply);
        transport_msg_close(&req);
    }
    if (stop_requested) say("stopping on a signal; the journal holds the state for a restart");
    rc = 0;
out:
    if (sock) transport_close(sock);
    zmq_ctx_term(ctx);
    return rc;
}

/* ---- offline recomputation -------------------------------------------------- */

int agg_recompute(const agg_config *c, uint64_t round, const char *out_dir, uint8_t hash[32]) {
    agg *a = calloc(1, sizeof *a);
    if (!a) return err_set("out of memory");
    a->cfg = *c;
    a->lock_fd = -1;
    int rc = -1;
    const accept_rec **acc = NULL;
    model *m = NULL;
    round_result r = {0};
    char p[AGG_PATH_MAX];
    a->want_round = round;
    if (keys_load_secret(c->keys_dir, c->keys_name, &a->keys) < 0 ||
        agg_roster_load(&a->roster, c, 1) < 0 || state_path(a, "journal", p, sizeof p) < 0 ||
        journal_open(NULL, p, 1, replay_record, a) < 0)
        goto done;
    agg_roster *closed;
    if (agg_roster_at(a->roster, a->want_roster, &closed) < 0) goto done;
    agg_roster_free(a->roster);
    a->roster = closed;
    /* The whole journal was replayed (read-only): the round's accepts are in
     * a->acc, its base was noted when its open record went by. */
    if (!a->want_found || round < 1 || round > a->round ||
        (round == a->round && (a->state == AGG_OPEN || a->state == AGG_COLLECTING))) {
        err_set("round %llu was not closed in %s (the journal reaches round %llu, %s)",
                (unsigned long long)round, c->state, (unsigned long long)a->round,
                agg_state_name(a->state));
        goto done;
    }
    int n;
    const agg_policy *pol = agg_policy_default();
    if (c->has_policy) {
        agg_hooks_init(&a->hooks, &c->policy, &c->train);
        a->hooks.info = (aggregate_round_info){round, agg_roster_count(a->roster)};
        pol = &a->hooks.hooks;
        if (dp_on(c) && round_noise(c, round, 0, &a->hooks.noise) < 0) goto done;
    }
    if (round_accepts(a, round, &acc, &n) < 0) goto done;
    if (load_version(c, a->want_base, &m) < 0) goto done;
    if (aggregate(c, a->roster, &a->keys, pol, m, a->want_base, round, (int)c->quorum, acc, n, &r,
                  NULL) < 0)
        goto done;
    if (!r.merged) {
        err_set("round %llu merged no delta (too many were dropped): it published no version",
                (unsigned long long)round);
        goto done;
    }
    if (checkpoint_save(m, out_dir, "float32") < 0 ||
        fio_join(p, sizeof p, out_dir, "model.safetensors") < 0 ||
        crypto_sha256_file(p, hash, NULL) < 0)
        goto done;
    rc = 0;
done:
    result_free(&r);
    free(acc);
    model_free(m);
    noise_free(a->hooks.noise);
    agg_hooks_free(&a->hooks);
    agg_roster_free(a->roster);
    keys_secret_wipe(&a->keys);
    free(a->acc);
    free(a);
    return rc;
}
