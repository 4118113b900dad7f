/* status — the consortium's view of a running federation: one immutable
 * snapshot of the round, the members and the rounds' history that the
 * aggregator's status page renders three ways (status_http.c: HTML,
 * /status.json, Prometheus' /metrics) and `fedlora status` renders in the
 * terminal (status_text.c) after reading /status.json back (status_from_json,
 * which treats the bytes as untrusted). docs/federation.md, "The status
 * page", describes what each field means.
 *
 * Nothing secret is in it: names, public fingerprints, round numbers,
 * counts, bytes, timings, losses and scores (docs/threat-model.md). */
#ifndef FL_AGGREGATOR_STATUS_H
#define FL_AGGREGATOR_STATUS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define STATUS_FORMAT 1             /* "format" of /status.json */
#define STATUS_NAME_MAX 64          /* member names (KEYS_NAME_MAX) */
#define STATUS_TEXT_MAX 256         /* reasons and other free text */
#define STATUS_MEMBERS_MAX 4096     /* ROSTER_MEMBERS_MAX */
#define STATUS_ROUNDS_MAX 500       /* rounds of history shown (the newest) */
#define STATUS_SCORES_MAX 64        /* evaluation sets per version */
#define STATUS_COUNTS_MAX 64        /* refusal reasons counted */
#define STATUS_JSON_MAX (16u << 20) /* bytes of /status.json read back */

/* A member's state in the round shown (docs/federation.md lists them). */
#define STATUS_STATES                                                                              \
    X(PENDING, "pending")                                                                          \
    X(TRAINING, "training")                                                                        \
    X(SUBMITTED, "submitted")                                                                      \
    X(ACCEPTED, "accepted")                                                                        \
    X(REFUSED, "refused")                                                                          \
    X(MISSED, "missed")                                                                            \
    X(REVOKED, "revoked")                                                                          \
    X(OBSERVER, "observer")

typedef enum {
#define X(e, s) STATUS_##e,
    STATUS_STATES
#undef X
        STATUS_NSTATES
} status_state;

const char *status_state_name(status_state s);
/* -1 when name is no state. */
int status_state_parse(const char *name);

typedef struct {
    char name[STATUS_NAME_MAX + 1];
    char fingerprint[17];      /* the first 16 hex digits of its identity's SHA-256 */
    int observer;              /* role observer: follows, never submits */
    status_state state;        /* in the round shown */
    char why[STATUS_TEXT_MAX]; /* refused: the reason; pending: when it takes part */
    int64_t last_contact;      /* unix time of its last request to this process; 0: none */
    uint64_t bytes_in;         /* sealed deltas it uploaded to this process */
    uint64_t bytes_out;        /* model bytes this process served it */
    uint64_t last_round;       /* the newest closed round before the one shown (0: none) */
    status_state last;         /* what became of it there: accepted, refused, submitted
                                  (the round failed), missed */
    char last_why[STATUS_TEXT_MAX];
} status_member;

typedef struct {
    char name[STATUS_NAME_MAX + 1]; /* the set's file name */
    int choice;                     /* 0: a text set (loss), 1: a multiple-choice task */
    double loss, perplexity;        /* text sets; NAN otherwise */
    double acc, acc_norm;           /* tasks; NAN otherwise */
    int64_t count;                  /* tokens predicted, or questions */
} status_score;

/* One round of the history: its metrics line (docs/protocol.md, "Metrics")
 * and the evaluation of its version. Round 0 is the base. */
typedef struct {
    uint64_t round;
    char status[32]; /* published, below-quorum, no-valid-delta, ..., "base" for round 0 */
    char version[65];
    int accepted, rejected; /* deltas merged, dropped at aggregation */
    uint64_t tokens, bytes_in;
    double collect_s, aggregate_s, publish_s;
    double loss_before, loss_after; /* the merged members' local held-out losses, token-weighted
                                       means; NAN when none */
    double epsilon;                 /* DP ε spent up to this round; NAN without DP */
    int64_t time;
    char eval[16]; /* "" (none configured), queued, running, done, failed */
    char eval_error[STATUS_TEXT_MAX];
    status_score *scores;
    int nscores;
} status_round;

typedef struct {
    char reason[40];
    uint64_t count;
} status_count;

typedef struct {
    int64_t updated, started; /* unix times: the snapshot, the aggregator's start */
    char consortium[129];
    char state[16];   /* OPEN, COLLECTING, FINISHED, ... (agg_state_name) */
    uint64_t round;   /* the round shown: the open one, or the last one */
    uint64_t rounds;  /* configured */
    int64_t deadline; /* unix time; 0: none */
    uint32_t quorum;  /* deltas needed */
    int accepted;     /* deltas accepted in the round shown */
    char base[65];    /* its base version */
    char version[65]; /* the newest version */
    status_member *members;
    int nmembers;
    status_round *history; /* oldest first, the newest STATUS_ROUNDS_MAX */
    int nhistory;
    /* Counters (Prometheus): receipts in the journal; this process's
     * refusals and transfer bytes; deltas dropped at aggregation (history). */
    uint64_t deltas_accepted, bytes_received, bytes_served;
    status_count refused[STATUS_COUNTS_MAX];
    int nrefused;
    status_count dropped[STATUS_COUNTS_MAX];
    int ndropped;
    int dp; /* DP-FedAvg on */
    double epsilon, delta, epsilon_budget;
    char eval_sets[STATUS_SCORES_MAX][STATUS_NAME_MAX + 1]; /* configured sets, in order */
    int neval_sets;
} status_view;

void status_free(status_view *v);
/* The view's history entry for round r, or NULL. */
const status_round *status_round_get(const status_view *v, uint64_t r);

/* /status.json: the view as JSON (docs/federation.md), with "time" = now
 * (the clock of the moment it is served). *out malloc'd, NUL-terminated. */
int status_to_json(const status_view *v, int64_t now, char **out, size_t *len);
/* Reads /status.json back: untrusted bytes, at most STATUS_JSON_MAX, every
 * count and string bounded by the limits above; unknown keys ignored. On
 * success *now is its "time". Errors name the field. */
int status_from_json(const char *text, size_t len, status_view **out, int64_t *now);

/* Renderings of the view at time now (malloc'd, NUL-terminated). */
/* The page: self-contained HTML, reloading itself every refresh_s seconds. */
int status_html(const status_view *v, int64_t now, int refresh_s, char **out, size_t *len);
/* Prometheus' text exposition format, version 0.0.4. */
int status_prometheus(const status_view *v, int64_t now, char **out, size_t *len);
/* The terminal's view: width columns (>= 60). */
int status_text(const status_view *v, int64_t now, int width, char **out, size_t *len);

/* What the renderings share: the end of an open_memstream buffer (-1 with
 * a message naming what when the stream failed), and small formats:
 * "3m 20s", "1.2 MB", "12 s ago". */
int status_stream_done(FILE *f, char **buf, size_t *n, const char *what, char **out, size_t *len);
/* 1 while the round shown takes deltas (OPEN, COLLECTING); then *deadline
 * says "deadline in 3m 20s" or "deadline passed 1m 05s ago, waiting for the
 * quorum" ("" without a deadline) and *deltas "2 deltas in, 3 needed". */
int status_round_words(const status_view *v, int64_t now, char *deadline, size_t dn, char *deltas,
                       size_t an);
void status_fmt_duration(int64_t s, char *out, size_t n);
void status_fmt_bytes(uint64_t b, char *out, size_t n);
void status_fmt_ago(int64_t then, int64_t now, char *out, size_t n);

#endif
