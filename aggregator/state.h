/* state — the aggregator's in-memory state, shared by the files that make up
 * agg.h (internal: nothing outside aggregator/ includes it).
 *
 *   state.c      the state directory: lock, replay, crash leftovers; logging
 *   rounds.c     the round state machine: journal records applied, ticks
 *   requests.c   agg_handle: HELLO, STATUS, ERROR replies
 *   uploads.c    SUBMIT_BEGIN / CHUNK / END: uploads, checks, acceptance
 *   publish.c    a closed round aggregated and its version published
 *   card.c       the files beside a version's weights: tokenizer, model card
 *   metrics.c    STATE/metrics.jsonl
 *   serve.c      agg_run: the ROUTER loop, GET_MODEL
 *   recompute.c  agg_recompute: a round re-derived offline
 *   status_track.c  what the status page shows, and its snapshots
 *                   (status.h, status_http.h)
 *   eval.c       every published version evaluated by a `fedlora eval` child
 *
 * Everything in struct agg that the journal decides is changed in one place,
 * agg_apply (rounds.c); the rest is derived from it (the model cache, the
 * uploads in progress, the metrics of what this process saw). */
#ifndef FL_AGGREGATOR_STATE_H
#define FL_AGGREGATOR_STATE_H

#include "aggregator/agg.h"
#include "aggregator/handout.h"
#include "aggregator/hooks.h"
#include "aggregator/journal.h"
#include "aggregator/members.h"
#include "lora/update.h"
#include "policies/accountant.h"
#include "wire/crypto.h"
#include "wire/envelope.h"

#include <jansson.h>
#include <signal.h>
#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>

#define AGG_REFUSALS_KEPT 32 /* refusal reasons a round's metrics line names */

/* A delta the journal accepted. */
typedef struct {
    uint64_t round;
    char member[KEYS_NAME_MAX + 1];
    uint8_t msgid[MSG_ID_LEN];
    uint8_t digest[MSG_HASH_LEN];
    uint64_t size;
    uint64_t time;
} accept_rec;

#define AGG_UPLOADS_PER_MEMBER 2 /* a node that restarts mid-upload opens a second one */
#define AGG_PEER_ID_MAX 255      /* bytes of a ROUTER routing id */

/* A member's session: the connection its last verified HELLO came on. Only
 * that connection uploads for it (agg.h, agg_peer). */
typedef struct {
    char member[KEYS_NAME_MAX + 1];
    uint8_t peer[AGG_PEER_ID_MAX];
    size_t peer_len;
} agg_session;

/* An upload in progress (SUBMIT_BEGIN until SUBMIT_END). */
typedef struct {
    int used;
    char member[KEYS_NAME_MAX + 1]; /* whose: the session that began it */
    uint8_t msgid[MSG_ID_LEN];
    uint64_t round;
    uint64_t size, received;
    uint32_t chunks, next;
    int fd;                     /* -1 when discarding (already accepted) */
    const accept_rec *accepted; /* the earlier acceptance of this msgid, or NULL */
    crypto_sha256_ctx *sha;
    uint64_t last_seen;
    uint64_t begun; /* the order uploads began in (agg.uploads_begun) */
    char part[AGG_PATH_MAX];
} upload;

typedef struct agg_status agg_status; /* status_track.c */
typedef struct agg_eval agg_eval;     /* eval.c */

struct agg {
    agg_config cfg; /* members and eval sets borrowed from the caller's config */
    keys_secret keys;
    agg_roster *roster;
    agg_journal *journal;
    const agg_policy *policy;
    agg_hooks hooks;  /* the policy file's hooks (cfg.has_policy) */
    dp_accountant dp; /* DP: the rounds published so far */
    int lock_fd;

    /* What the journal decides (agg_apply). */
    int initialized;
    uint8_t initial[32]; /* the imported base: round 0's version */
    agg_state state;
    uint64_t round;
    uint8_t base[32];    /* the current round's base version */
    uint8_t version[32]; /* the newest version (= base while a round is open) */
    uint64_t deadline;
    uint64_t published; /* publish records replayed or written */
    accept_rec *acc;    /* every acceptance of every round, in journal order */
    size_t nacc, capacc;
    /* The newest publish record's low-rank update, when it has one: the
     * object update_hash (update_size bytes) makes update_to from
     * update_from. ROUND offers it while update_to is the round's base. */
    int has_update;
    uint8_t update_from[32], update_to[32], update_hash[32];
    uint64_t update_size;
    agg_start start; /* the start adapter ROUND hands out (handout.h), once per round */
    /* Roster versions (0: the config's member list): the newest journaled,
     * the one in force when the current round opened (rounds.join = next:
     * who takes part), and when it closed (whose deltas count). */
    uint64_t journal_roster, open_roster, close_roster;

    agg_roster *open_view; /* the roster of open_roster, when it is not the one in force */
    model *model;          /* the model of version model_version, loaded on demand */
    agg_norms *norms;      /* its weights' norms, for the default bound (merge.h) */
    uint8_t model_version[32];
    /* Versions and objects this process hashed (or wrote): agg_verify_stored. */
    uint8_t (*verified)[32];
    int nverified, verified_cap;

    upload *up;
    int nup;
    uint64_t uploads_begun;
    agg_session *sessions; /* at most one per member */
    int nsessions, sessions_cap;

    /* Metrics of the current round as this process saw it. */
    uint64_t bytes_received, bytes_served;
    int refused;
    /* The first AGG_REFUSALS_KEPT of them, as told to the node: named in
     * the round's metrics line ("refusals"). */
    char refusals[AGG_REFUSALS_KEPT][MSG_REASON_MAX + 1];
    int nrefusals;
    int below_quorum_logged;
    uint64_t metrics_round; /* newest round with a line in metrics.jsonl */

    /* After the last round: members told "finished", and since when. */
    char (*told)[KEYS_NAME_MAX + 1];
    int ntold, told_cap;
    uint64_t finished_at, all_told_at;

    /* Test hook FEDLORA_CRASH_AT=<point>[:<n>]: SIGKILL at the n-th time. */
    char crash_point[32];
    long crash_left;

    agg_status *status; /* the status page's view (never NULL once open) */
    agg_eval *eval;     /* evaluations of published versions (NULL without "eval") */
};

/* A member's delta dropped from a round, and why. */
typedef struct {
    char member[KEYS_NAME_MAX + 1];
    char why[AGG_WHY_MAX];
} dropped;

/* What aggregating a round gave (publish.c). */
typedef struct {
    agg_update *u; /* kept, in member name order */
    int n;
    double *w;
    dropped *drop;
    int ndrop;
    int merged; /* the n kept updates were merged (n >= the quorum) */
    /* Not published although merged: the version written holds a value that is
     * not finite (agg_model_finite says which); the round fails with it. */
    char nonfinite[AGG_WHY_MAX];
    uint64_t tokens, examples, bytes;
    agg_change change; /* what the merge changes (merge.h): factors, or a dense change */
    lora_set *start;   /* the round's start adapter (handout.h), or NULL */
} round_result;

/* Set from signal handlers (serve.c). */
extern volatile sig_atomic_t agg_stop_requested;
extern volatile sig_atomic_t agg_reload_requested; /* SIGHUP: look at the roster file now */

/* ---- state.c ---------------------------------------------------------------- */
/* "<UTC time> aggregator: " + the message, a line on stderr. */
void agg_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* FEDLORA_CRASH_AT: SIGKILL at the configured hit of `point`. */
void agg_crash_point(agg *a, const char *point);
/* The first 16 hex digits of a hash. */
void agg_short_hex(const uint8_t *h, char out[17]);
int agg_state_path(const agg *a, const char *name, char *out, size_t n);
/* STATE/inbox/r<round>-<member>.env */
int agg_inbox_path(const agg_config *c, uint64_t round, const char *member, char *out, size_t n);

/* ---- rounds.c --------------------------------------------------------------- */
/* Applies one journal record to the state: the only place the round's
 * state changes (replay and live alike). */
int agg_apply(agg *a, const journal_record *r);
/* A live transition: the record appended durably, then applied. */
int agg_commit(agg *a, const journal_record *r);
/* The same, but 1 when the record could not be written and the journal is
 * as it was (a full disk): nothing happened, the caller may refuse what
 * needed the record instead of stopping. */
int agg_commit_try(agg *a, const journal_record *r);
/* journal_open's callback: decodes a record and applies it. */
int agg_replay_record(void *arg, const char *text, size_t line);
/* Carries a closed round through its aggregation and opens the next round
 * (or finishes): afterwards the round is at rest (agg.h). */
int agg_settle(agg *a, uint64_t now);
int agg_fail_round(agg *a, const char *reason, uint64_t now);
int agg_open_state(const agg *a); /* OPEN or COLLECTING */
const accept_rec *agg_find_msgid(const agg *a, const uint8_t id[MSG_ID_LEN]);
const accept_rec *agg_find_member(const agg *a, uint64_t round, const char *member);
/* The acceptances of a round (malloc'd pointers into a->acc). */
int agg_round_accepts(const agg *a, uint64_t round, const accept_rec ***out, int *n);
/* Journals the roster in force when it is newer than the last journaled. */
int agg_roster_journal(agg *a);
/* Takes a newer roster file (a change seen, or SIGHUP). */
int agg_roster_tick(agg *a);
/* 1 when member m takes part in the current round, 0 when not, -1 failure. */
int agg_takes_part(agg *a, const agg_member *m);

/* ---- requests.c ------------------------------------------------------------- */
int agg_encode(const struct msg *m, uint8_t **out, size_t *len);
/* An ERROR reply (retry_ms < 0: none), logged unless routine. */
int agg_reply_error(agg *a, enum msg_error_code code, int retry_ms, uint8_t **out, size_t *len,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* ---- uploads.c -------------------------------------------------------------- */
/* The member whose session peer is (a verified HELLO on this connection),
 * or NULL. */
const agg_session *agg_session_of(const agg *a, const agg_peer *peer);
/* Opens (or moves) member's session to peer's connection. */
int agg_session_open(agg *a, const agg_peer *peer, const char *member);
/* Drops the sessions and uploads of members that are no longer active
 * submitters in the roster in force (after a roster change). */
void agg_sessions_prune(agg *a);
int agg_on_submit_begin(agg *a, const agg_session *s, const struct msg_submit_begin *b,
                        uint64_t now, uint8_t **out, size_t *len);
int agg_on_submit_chunk(agg *a, const agg_session *s, const struct msg_submit_chunk *c,
                        uint64_t now, uint8_t **out, size_t *len);
int agg_on_submit_end(agg *a, const agg_session *s, const struct msg_submit_end *e, uint64_t now,
                      uint8_t **out, size_t *len);
void agg_upload_drop(upload *u);
/* After a damaged journal record was cut: every envelope of the open round
 * in the inbox that the journal has no acceptance for is checked as at
 * SUBMIT_END and accepted again (its journal record written anew, logged);
 * one that does not pass is logged and left. */
int agg_recover_inbox(agg *a, uint64_t now);
/* What an accepted envelope of `round` must be (lookup: whose keys count). */
void agg_envelope_expect(const agg_config *c, agg_roster *roster, uint64_t round,
                         envelope_lookup_fn lookup, envelope_expect *x);
/* Any key a member ever had (an acceptance survives a rotation). */
int agg_lookup_any_key(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out);

/* ---- publish.c -------------------------------------------------------------- */
/* The model of version hash, mapped read-only (checkpoint_map): its
 * weights stay in the version's dtype and in the page cache. The stored
 * files are hashed first (store_verify): a damaged version is refused. */
int agg_load_version(const agg_config *c, const uint8_t hash[32], model **out);
/* The model of version hash in a->model (loaded unless it already is). */
int agg_ensure_model(agg *a, const uint8_t hash[32]);
/* The stored version or object hash checked against its name
 * (store_verify) unless this process did so already, or stored it itself
 * (agg_mark_verified): at start for what the journal is at, before anything
 * is served. */
int agg_verify_stored(agg *a, const uint8_t hash[32]);
/* Counts hash as checked (this process hashed or wrote it); a sharded
 * version's shards with it. */
int agg_mark_verified(agg *a, const uint8_t hash[32]);
/* 1 when hash counts as checked in this process. */
int agg_is_verified(const agg *a, const uint8_t hash[32]);
/* Writes m as a new version (STATE/tmp/<name>, then into the store). */
/* Writes the version `change` makes from base (the version base_hash,
 * mapped) into dir, a tensor at a time: update_write_version for factors,
 * the dense change applied weight by weight otherwise; in the base's dtype,
 * a bf16 base's changed weights rounded stochastically keyed by base_hash
 * (docs/formats.md, "Versions of a bf16 base"). */
int agg_write_version(const model *base, const uint8_t base_hash[32], const agg_change *change,
                      const char *dir);
/* What the files beside a version's weights describe (card.c). */
typedef struct {
    const agg *a;
    uint64_t round;        /* the round that made it; 0: the imported base */
    const uint8_t *parent; /* the round's base; NULL for the import */
    const round_result *r; /* what the round merged; NULL for the import */
} agg_card;
/* Moves a version directory written in STATE/tmp/<name> into the store
 * (store_publish), completed as card describes it (agg_complete_version),
 * and points versions/latest at it; hash: its version hash. */
int agg_publish_dir(const agg_card *card, const char *name, uint8_t hash[32]);
/* Merges the current round (AGGREGATING) and publishes its version, or
 * fails it when the policy kept too few. */
int agg_aggregate_and_publish(agg *a, uint64_t now);
/* The heart of a round, shared with agg_recompute (publish.c says more). */
int agg_aggregate(const agg_config *c, agg_roster *roster, const keys_secret *keys,
                  const agg_policy *pol, const model *m, const uint8_t base[32], uint64_t round,
                  int quorum, const accept_rec *const *acc, int n, round_result *r, agg *crash);
void agg_result_free(round_result *r);
int agg_dp_on(const agg_config *c);
/* Round's DP noise source (create: a fresh key when none is stored). */
int agg_round_noise(const agg_config *c, uint64_t round, int create, noise_source **out);
/* Deletes round's noise key (once its publish or fail record is written). */
int agg_forget_key(const agg_config *c, uint64_t round);

/* ---- card.c ----------------------------------------------------------------- */
/* store_finish_fn (ctx: an agg_card): copies the tokenizer files and chat
 * templates (from the parent version, or from base_model), writes
 * generation_config.json when they hold none, and README.md, the card. */
int agg_complete_version(void *ctx, const char *dir, const uint8_t hash[32]);

/* ---- metrics.c -------------------------------------------------------------- */
/* The newest round with a line in metrics.jsonl; a torn last line is cut. */
int agg_metrics_scan(agg *a);
int agg_metrics_write(agg *a, json_t *j);
/* The current round's line, written once. */
int agg_metrics_round(agg *a, const char *status, const uint8_t *version, const round_result *r,
                      double collect_s, double aggregate_s, double publish_s);

/* ---- serve.c ---------------------------------------------------------------- */
int agg_on_get_model(agg *a, const struct msg_get_model *g, uint8_t **out, size_t *len);

/* ---- status_track.c ------------------------------------------------------------ */
int agg_status_open(agg *a);
void agg_status_close(agg *a);
/* Binds the status page's port (config "status"; nothing without it): in
 * agg_open, before the journal, so that a port in use refuses the start
 * before any round is journaled. */
int agg_status_bind(agg *a);
/* Serves it (binding it if agg_status_bind was not called) and writes its
 * URL to STATE/status-url. */
int agg_status_serve(agg *a);
/* The request being handled came on the connection with this ZeroMQ
 * routing id (NULL: none); the member known to use it counts as seen. */
void agg_status_peer(agg *a, const uint8_t *id, size_t len);
/* A verified request of member `name` (HELLO, a sealed envelope) on the
 * current connection; got_round: it was sent the open round's ROUND. */
void agg_status_member_seen(agg *a, const char *name, int got_round);
/* Upload bytes received, model bytes served, on the current connection. */
void agg_status_bytes(agg *a, uint64_t in, uint64_t out);
/* A refusal sent on the current connection (its reason). */
void agg_status_refusal(agg *a, const char *reason);
/* A line of metrics.jsonl (a round or an eval record), read or written. */
void agg_status_line(agg *a, json_t *line);
/* An evaluation of round's version is queued or running. */
void agg_status_eval_state(agg *a, uint64_t round, const uint8_t version[32], const char *state);
/* Something the page shows changed (a journal record applied, ...). */
void agg_status_changed(agg *a);
/* Rebuilds the snapshot the page serves when something changed (at most
 * every 0.2 s, at least every 2 s). */
void agg_status_tick(agg *a);

/* ---- eval.c --------------------------------------------------------------------- */
int agg_eval_open(agg *a);
/* Stops a running evaluation (it runs again at the next start). */
void agg_eval_close(agg *a);
/* Round's version waits for its evaluation. */
int agg_eval_queue(agg *a, uint64_t round, const uint8_t version[32]);
/* A metrics.jsonl line read at start: published versions without an eval
 * record are queued. */
void agg_eval_scan_line(agg *a, json_t *line);
/* Reaps a finished evaluation (its record to metrics.jsonl) and starts the
 * next one. -1 only when the record cannot be written. */
int agg_eval_tick(agg *a);
/* 1 when nothing is queued or running. */
int agg_eval_idle(const agg *a);

#endif
