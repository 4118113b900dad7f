/* status_track — what the status page shows, gathered by the aggregator's
 * loop: which member each connection is (a verified HELLO or envelope binds
 * the ZeroMQ routing id of the request to the member), each member's last
 * contact, bytes and refusals, the rounds' history (the metrics.jsonl lines,
 * round records and evaluation records alike), and the snapshot built from
 * all that and the journal's state for status_http (status_http.h). Only
 * the aggregator's thread calls anything here. */
#include "aggregator/state.h"

#include "aggregator/status_http.h"
#include "aggregator/store.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PEERS_MAX 1024     /* connections remembered (least recently seen dropped) */
#define PEER_ID_MAX 32     /* bytes of a ZeroMQ routing id (5 by default) */
#define REBUILD_MIN_S 0.2  /* snapshots at most this often, */
#define REBUILD_IDLE_S 2.0 /* and at least this often */

typedef struct {
    char name[KEYS_NAME_MAX + 1];
    int64_t last_contact;
    uint64_t bytes_in, bytes_out;
    uint64_t seen_round, seen_seq; /* its last HELLO answered with ROUND seen_round */
    uint64_t refused_round, refused_seq;
    char refused_why[STATUS_TEXT_MAX];
} track_member;

typedef struct {
    uint8_t id[PEER_ID_MAX];
    size_t len;
    int member; /* index into members, -1: not known yet */
    uint64_t used;
} track_peer;

/* A round's outcome for its members: who was merged, who dropped and why. */
typedef struct {
    uint64_t round; /* 0: none */
    char (*accepted)[KEYS_NAME_MAX + 1];
    int naccepted;
    struct {
        char name[KEYS_NAME_MAX + 1];
        char why[STATUS_TEXT_MAX];
    } * rejected;
    int nrejected;
} outcome;

struct agg_status {
    track_member *m;
    int nm, capm;
    track_peer peers[PEERS_MAX];
    int peer; /* the request being handled comes from peers[peer]; -1: unknown */
    uint64_t seq;
    status_count refused[STATUS_COUNTS_MAX];
    int nrefused;
    status_count dropped[STATUS_COUNTS_MAX];
    int ndropped;
    status_round *hist; /* sorted by round */
    int nhist, caphist;
    outcome last[2]; /* the newest round line, and the one before */
    uint64_t bytes_in, bytes_out;
    int64_t started;
    int dirty;
    double built_at;
    status_http *http;
    char url[128]; /* where http listens */
};

static void outcome_clear(outcome *o) {
    free(o->accepted);
    free(o->rejected);
    memset(o, 0, sizeof *o);
}

int agg_status_open(agg *a) {
    agg_status *t = calloc(1, sizeof *t);
    if (!t) return err_set("out of memory for the status page");
    t->peer = -1;
    t->started = (int64_t)time(NULL);
    t->dirty = 1;
    a->status = t;
    return 0;
}

void agg_status_close(agg *a) {
    agg_status *t = a->status;
    if (!t) return;
    status_http_stop(t->http);
    for (int i = 0; i < t->nhist; i++) free(t->hist[i].scores);
    free(t->hist);
    free(t->m);
    outcome_clear(&t->last[0]);
    outcome_clear(&t->last[1]);
    free(t);
    a->status = NULL;
}

/* ---- members and connections ----------------------------------------------------------- */

static int member_index(agg_status *t, const char *name) {
    for (int i = 0; i < t->nm; i++)
        if (!strcmp(t->m[i].name, name)) return i;
    if (t->nm == t->capm) {
        int cap = t->capm ? 2 * t->capm : 16;
        track_member *m = realloc(t->m, (size_t)cap * sizeof *m);
        if (!m) return -1; /* the page misses this member's activity; nothing else does */
        t->m = m;
        t->capm = cap;
    }
    track_member *m = &t->m[t->nm];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    return t->nm++;
}

static track_member *find_member(agg_status *t, const char *name) {
    for (int i = 0; i < t->nm; i++)
        if (!strcmp(t->m[i].name, name)) return &t->m[i];
    return NULL;
}

void agg_status_peer(agg *a, const uint8_t *id, size_t len) {
    agg_status *t = a->status;
    if (!t) return;
    t->peer = -1;
    if (!id || len == 0 || len > PEER_ID_MAX) return;
    int lru = 0;
    for (int i = 0; i < PEERS_MAX; i++) {
        track_peer *p = &t->peers[i];
        if (p->len == len && memcmp(p->id, id, len) == 0) {
            t->peer = i;
            p->used = ++t->seq;
            if (p->member >= 0) {
                t->m[p->member].last_contact = (int64_t)time(NULL);
                t->dirty = 1;
            }
            return;
        }
        if (p->used < t->peers[lru].used) lru = i;
    }
    track_peer *p = &t->peers[lru];
    memcpy(p->id, id, len);
    p->len = len;
    p->member = -1;
    p->used = ++t->seq;
    t->peer = lru;
}

void agg_status_member_seen(agg *a, const char *name, int got_round) {
    agg_status *t = a->status;
    if (!t) return;
    int i = member_index(t, name);
    if (i < 0) return;
    if (t->peer >= 0) t->peers[t->peer].member = i;
    track_member *m = &t->m[i];
    m->last_contact = (int64_t)time(NULL);
    if (got_round) {
        m->seen_round = a->round;
        m->seen_seq = ++t->seq;
    }
    t->dirty = 1;
}

static track_member *peer_member(agg_status *t) {
    return t->peer >= 0 && t->peers[t->peer].member >= 0 ? &t->m[t->peers[t->peer].member] : NULL;
}

void agg_status_bytes(agg *a, uint64_t in, uint64_t out) {
    agg_status *t = a->status;
    if (!t) return;
    t->bytes_in += in;
    t->bytes_out += out;
    track_member *m = peer_member(t);
    if (m) m->bytes_in += in, m->bytes_out += out;
    t->dirty = 1;
}

/* ---- reasons ------------------------------------------------------------------------------ */

static void count(status_count *c, int *n, const char *label) {
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < *n; i++)
            if (!strcmp(c[i].reason, label)) {
                c[i].count++;
                return;
            }
        if (*n < STATUS_COUNTS_MAX) {
            snprintf(c[*n].reason, sizeof c[0].reason, "%s", label);
            c[(*n)++].count = 1;
            return;
        }
        label = "other"; /* every slot taken: the rest count as other */
    }
    c[STATUS_COUNTS_MAX - 1].count++;
}

/* The refusal's kind, from the words its reason starts with (docs/protocol.md,
 * "Refusals": each reason starts with the words of its row). */
static const char *refusal_label(const char *r) {
    static const struct {
        const char *prefix, *label;
    } table[] = {
        {"unknown node", "unknown_node"},
        {"revoked", "revoked"},
        {"rotated", "rotated"},
        {"wrong consortium", "wrong_consortium"},
        {"stale round", "stale_round"},
        {"finished", "finished"},
        {"replay", "replay"},
        {"already submitted", "already_submitted"},
        {"tampered envelope", "tampered_envelope"},
        {"digest mismatch", "digest_mismatch"},
        {"oversized submission", "oversized_submission"},
        {"sealed for another aggregator", "wrong_recipient"},
        {"not a DELTA envelope", "not_a_delta"},
        {"no upload in progress", "no_upload"},
        {"SUBMIT_CHUNK", "out_of_order"},
        {"SUBMIT_END", "incomplete_upload"},
        {"GET_MODEL", "bad_request"},
        {"unknown model version", "not_found"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strncmp(r, table[i].prefix, strlen(table[i].prefix))) return table[i].label;
    if (!strncmp(r, "round ", 6)) return strstr(r, "closed") ? "late_submission" : "wrong_round";
    const char *d = strstr(r, "'s delta: ");
    if (d) {
        d += 10;
        return !strncmp(d, "wrong base version", 18)    ? "wrong_base_version"
               : !strncmp(d, "NaN or Inf", 10)          ? "nan_or_inf"
               : !strncmp(d, "shapes do not match", 19) ? "shapes"
               : !strncmp(d, "bad DELTA payload", 17)   ? "bad_payload"
                                                        : "bad_delta";
    }
    if (strstr(r, "is an observer")) return "observer";
    if (strstr(r, "joined after round")) return "joins_next_round";
    return "other";
}

/* A dropped delta's kind: the word before its reason's first colon
 * (policy validation says "rank: ...", "finite: ...", "norm: ..."). */
static void dropped_label(const char *why, char *out, size_t n) {
    if (!strncmp(why, "envelope", 8)) {
        snprintf(out, n, "envelope");
        return;
    }
    size_t k = 0;
    while (why[k] && why[k] != ':' && k + 1 < n && k < 24) {
        char c = why[k];
        out[k] = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ? c : '_';
        k++;
    }
    out[k] = '\0';
    if (!k || why[k] != ':') snprintf(out, n, "other");
}

void agg_status_refusal(agg *a, const char *reason) {
    agg_status *t = a->status;
    if (!t) return;
    count(t->refused, &t->nrefused, refusal_label(reason));
    track_member *m = peer_member(t);
    if (m) {
        m->refused_round = a->round;
        m->refused_seq = ++t->seq;
        snprintf(m->refused_why, sizeof m->refused_why, "%s", reason);
    }
    t->dirty = 1;
}

void agg_status_changed(agg *a) {
    if (a->status) a->status->dirty = 1;
}

/* ---- the history: metrics.jsonl lines ------------------------------------------------------ */

static status_round *hist_entry(agg_status *t, uint64_t round) {
    int k = t->nhist;
    while (k > 0 && t->hist[k - 1].round > round) k--;
    if (k > 0 && t->hist[k - 1].round == round) return &t->hist[k - 1];
    if (t->nhist == STATUS_ROUNDS_MAX) {
        if (k == 0) return NULL; /* older than everything kept */
        free(t->hist[0].scores);
        memmove(t->hist, t->hist + 1, (size_t)(t->nhist - 1) * sizeof *t->hist);
        t->nhist--;
        k--;
    }
    if (t->nhist == t->caphist) {
        int cap = t->caphist ? 2 * t->caphist : 16;
        status_round *h = realloc(t->hist, (size_t)cap * sizeof *h);
        if (!h) return NULL;
        t->hist = h;
        t->caphist = cap;
    }
    memmove(t->hist + k + 1, t->hist + k, (size_t)(t->nhist - k) * sizeof *t->hist);
    t->nhist++;
    status_round *r = &t->hist[k];
    memset(r, 0, sizeof *r);
    r->round = round;
    r->collect_s = r->aggregate_s = r->publish_s = NAN;
    r->loss_before = r->loss_after = r->epsilon = NAN;
    return r;
}

static double jnum(json_t *j, const char *key) {
    json_t *v = json_object_get(j, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static uint64_t juint(json_t *j, const char *key) {
    json_t *v = json_object_get(j, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static void jstr(json_t *j, const char *key, char *out, size_t n) {
    json_t *v = json_object_get(j, key);
    snprintf(out, n, "%s", json_is_string(v) ? json_string_value(v) : "");
}

/* Token-weighted mean of a per-member loss map (member_tokens weighs). */
static double weighted(json_t *losses, json_t *tokens) {
    double sum = 0, w = 0;
    const char *k;
    json_t *v;
    json_object_foreach(losses, k, v) {
        double x = json_is_number(v) ? json_number_value(v) : NAN;
        json_t *tk = json_object_get(tokens, k);
        double tw = json_is_integer(tk) ? (double)json_integer_value(tk) : 0;
        if (isfinite(x) && tw > 0) sum += tw * x, w += tw;
    }
    return w > 0 ? sum / w : NAN;
}

static void round_line(agg_status *t, json_t *j, uint64_t round) {
    status_round *r = hist_entry(t, round);
    json_t *acc = json_object_get(j, "members_accepted"),
           *rej = json_object_get(j, "members_rejected"),
           *tok = json_object_get(j, "member_tokens");
    if (r) {
        jstr(j, "status", r->status, sizeof r->status);
        jstr(j, "version", r->version, sizeof r->version);
        r->accepted = json_is_array(acc) ? (int)json_array_size(acc) : 0;
        r->rejected = json_is_array(rej) ? (int)json_array_size(rej) : 0;
        r->tokens = juint(j, "tokens");
        r->bytes_in = juint(j, "bytes_in");
        r->collect_s = jnum(j, "collect_s");
        r->aggregate_s = jnum(j, "aggregate_s");
        r->publish_s = jnum(j, "publish_s");
        r->loss_before = weighted(json_object_get(j, "loss_before"), tok);
        r->loss_after = weighted(json_object_get(j, "loss_after"), tok);
        r->epsilon = jnum(j, "epsilon");
        r->time = (int64_t)juint(j, "time");
    }
    for (size_t i = 0; json_is_array(rej) && i < json_array_size(rej); i++) {
        char label[32], why[STATUS_TEXT_MAX];
        jstr(json_array_get(rej, i), "reason", why, sizeof why);
        dropped_label(why, label, sizeof label);
        count(t->dropped, &t->ndropped, label);
    }
    /* The members' outcomes, for the newest two rounds that ran (a round
     * the DP budget kept from opening has a line, and no members). */
    char status[32];
    jstr(j, "status", status, sizeof status);
    if (round < t->last[0].round || !strcmp(status, "dp-budget-exhausted")) return;
    if (round > t->last[0].round) {
        outcome_clear(&t->last[1]);
        t->last[1] = t->last[0];
        memset(&t->last[0], 0, sizeof t->last[0]);
    } else {
        outcome_clear(&t->last[0]);
    }
    outcome *o = &t->last[0];
    o->round = round;
    size_t na = json_is_array(acc) ? json_array_size(acc) : 0,
           nr = json_is_array(rej) ? json_array_size(rej) : 0;
    o->accepted = calloc(na ? na : 1, sizeof *o->accepted);
    o->rejected = calloc(nr ? nr : 1, sizeof *o->rejected);
    if (!o->accepted || !o->rejected) return;
    for (size_t i = 0; i < na; i++) {
        json_t *s = json_array_get(acc, i);
        snprintf(o->accepted[o->naccepted++], KEYS_NAME_MAX + 1, "%s",
                 json_is_string(s) ? json_string_value(s) : "");
    }
    for (size_t i = 0; i < nr; i++) {
        jstr(json_array_get(rej, i), "member", o->rejected[i].name, sizeof o->rejected[i].name);
        jstr(json_array_get(rej, i), "reason", o->rejected[i].why, sizeof o->rejected[i].why);
        o->nrejected++;
    }
}

static void eval_line(agg_status *t, json_t *j, uint64_t round) {
    status_round *r = hist_entry(t, round);
    if (!r) return;
    if (!r->version[0]) jstr(j, "version", r->version, sizeof r->version);
    json_t *err = json_object_get(j, "error"), *sets = json_object_get(j, "sets");
    free(r->scores);
    r->scores = NULL;
    r->nscores = 0;
    if (json_is_string(err)) {
        snprintf(r->eval, sizeof r->eval, "failed");
        snprintf(r->eval_error, sizeof r->eval_error, "%s", json_string_value(err));
        return;
    }
    snprintf(r->eval, sizeof r->eval, "done");
    r->eval_error[0] = '\0';
    size_t n = json_is_array(sets) ? json_array_size(sets) : 0;
    if (n > STATUS_SCORES_MAX) n = STATUS_SCORES_MAX;
    if (!n || !(r->scores = calloc(n, sizeof *r->scores))) return;
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(sets, i);
        status_score *sc = &r->scores[r->nscores++];
        char kind[16];
        jstr(s, "name", sc->name, sizeof sc->name);
        jstr(s, "kind", kind, sizeof kind);
        sc->choice = !strcmp(kind, "choice");
        sc->loss = jnum(s, "loss");
        sc->perplexity = jnum(s, "perplexity");
        sc->acc = jnum(s, "acc");
        sc->acc_norm = jnum(s, "acc_norm");
        sc->count = (int64_t)juint(s, sc->choice ? "questions" : "tokens");
    }
}

void agg_status_line(agg *a, json_t *line) {
    agg_status *t = a->status;
    json_t *rn = json_object_get(line, "round");
    if (!t || !json_is_integer(rn) || json_integer_value(rn) < 0) return;
    uint64_t round = (uint64_t)json_integer_value(rn);
    json_t *kind = json_object_get(line, "kind");
    if (json_is_string(kind) && !strcmp(json_string_value(kind), "eval"))
        eval_line(t, line, round);
    else if (!kind)
        round_line(t, line, round);
    t->dirty = 1;
}

void agg_status_eval_state(agg *a, uint64_t round, const uint8_t version[32], const char *state) {
    agg_status *t = a->status;
    if (!t) return;
    status_round *r = hist_entry(t, round);
    if (!r) return;
    if (!r->version[0]) hex_encode(version, 32, r->version);
    if (!strcmp(r->eval, "done") || !strcmp(r->eval, "failed")) return;
    snprintf(r->eval, sizeof r->eval, "%s", state);
    t->dirty = 1;
}

/* ---- the snapshot ------------------------------------------------------------------------- */

/* What became of member `name` in the round of outcome o. */
static status_state outcome_of(const agg *a, const outcome *o, const char *name, char *why,
                               size_t n) {
    why[0] = '\0';
    for (int i = 0; i < o->naccepted; i++)
        if (!strcmp(o->accepted[i], name)) return STATUS_ACCEPTED;
    for (int i = 0; i < o->nrejected; i++)
        if (!strcmp(o->rejected[i].name, name)) {
            snprintf(why, n, "%s", o->rejected[i].why);
            return STATUS_REFUSED;
        }
    return agg_find_member(a, o->round, name) ? STATUS_SUBMITTED : STATUS_MISSED;
}

static int member_view(agg *a, const agg_member *e, status_member *s) {
    agg_status *t = a->status;
    snprintf(s->name, sizeof s->name, "%s", e->name);
    char fp[2 * KEYS_FP_LEN + 1];
    hex_encode(e->fp, KEYS_FP_LEN, fp);
    snprintf(s->fingerprint, sizeof s->fingerprint, "%.16s", fp);
    s->observer = e->observer;
    const track_member *m = find_member(t, e->name);
    if (m) {
        s->last_contact = m->last_contact;
        s->bytes_in = m->bytes_in;
        s->bytes_out = m->bytes_out;
    }
    int finished = a->state == AGG_FINISHED;
    const outcome *prev = &t->last[finished && t->last[0].round == a->round ? 1 : 0];
    if (prev->round && prev->round < a->round + finished && !e->observer && e->active) {
        s->last_round = prev->round;
        s->last = outcome_of(a, prev, e->name, s->last_why, sizeof s->last_why);
    }
    if (!e->active) {
        s->state = STATUS_REVOKED;
        return 0;
    }
    if (e->observer) {
        s->state = STATUS_OBSERVER;
        return 0;
    }
    if (finished) {
        if (t->last[0].round == a->round)
            s->state = outcome_of(a, &t->last[0], e->name, s->why, sizeof s->why);
        else
            s->state = STATUS_MISSED;
        return 0;
    }
    if (agg_find_member(a, a->round, e->name)) {
        s->state = STATUS_SUBMITTED;
        return 0;
    }
    if (m && m->refused_round == a->round && m->refused_seq > m->seen_seq) {
        s->state = STATUS_REFUSED;
        snprintf(s->why, sizeof s->why, "%s", m->refused_why);
        return 0;
    }
    int part = agg_takes_part(a, e);
    if (part < 0) return -1;
    if (!part) {
        s->state = STATUS_PENDING;
        snprintf(s->why, sizeof s->why, "takes part from round %llu on",
                 (unsigned long long)a->round + 1);
        return 0;
    }
    s->state = m && m->seen_round == a->round ? STATUS_TRAINING : STATUS_PENDING;
    return 0;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s && s[1] ? s + 1 : path;
}

static status_view *build_view(agg *a, int64_t now) {
    agg_status *t = a->status;
    status_view *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->updated = now;
    v->started = t->started;
    snprintf(v->consortium, sizeof v->consortium, "%s", a->cfg.consortium_name);
    snprintf(v->state, sizeof v->state, "%s", agg_state_name(a->state));
    v->round = a->round;
    v->rounds = a->cfg.rounds;
    v->deadline = agg_open_state(a) ? (int64_t)a->deadline : 0;
    v->quorum = a->cfg.quorum;
    v->accepted = agg_accepted_count(a);
    hex_encode(a->round ? a->base : a->version, 32, v->base);
    hex_encode(a->version, 32, v->version);
    int n = agg_roster_size(a->roster);
    v->members = calloc((size_t)(n ? n : 1), sizeof *v->members);
    if (!v->members) goto fail;
    for (int i = 0; i < n; i++)
        if (member_view(a, agg_roster_entry(a->roster, i), &v->members[v->nmembers++]) < 0)
            goto fail;
    /* The base is round 0 of the history. */
    status_round *base = a->initialized ? hist_entry(t, 0) : NULL;
    if (base && !base->status[0]) {
        snprintf(base->status, sizeof base->status, "base");
        hex_encode(a->initial, 32, base->version);
    }
    v->history = calloc((size_t)(t->nhist ? t->nhist : 1), sizeof *v->history);
    if (!v->history) goto fail;
    for (int i = 0; i < t->nhist; i++) {
        status_round *r = &v->history[v->nhistory++];
        *r = t->hist[i];
        r->scores = NULL;
        if (t->hist[i].nscores) {
            r->scores = malloc((size_t)t->hist[i].nscores * sizeof *r->scores);
            if (!r->scores) {
                r->nscores = 0;
                goto fail;
            }
            memcpy(r->scores, t->hist[i].scores, (size_t)t->hist[i].nscores * sizeof *r->scores);
        }
    }
    v->deltas_accepted = a->nacc;
    v->bytes_received = t->bytes_in;
    v->bytes_served = t->bytes_out;
    memcpy(v->refused, t->refused, sizeof v->refused);
    v->nrefused = t->nrefused;
    memcpy(v->dropped, t->dropped, sizeof v->dropped);
    v->ndropped = t->ndropped;
    if (agg_dp_on(&a->cfg)) {
        const policy *pol = &a->cfg.policy;
        v->dp = 1;
        v->delta = pol->dp.delta;
        v->epsilon_budget = pol->dp.epsilon_budget;
        v->epsilon = dp_epsilon(&a->dp, pol->dp.delta, NULL);
    }
    for (int i = 0; i < a->cfg.n_eval_data + a->cfg.n_eval_tasks && i < STATUS_SCORES_MAX; i++)
        snprintf(v->eval_sets[v->neval_sets++], STATUS_NAME_MAX + 1, "%s",
                 base_name(i < a->cfg.n_eval_data ? a->cfg.eval_data[i]
                                                  : a->cfg.eval_tasks[i - a->cfg.n_eval_data]));
    return v;
fail:
    status_free(v);
    return NULL;
}

static void log_http(const char *msg) {
    agg_say("status page: %s", msg);
}

int agg_status_bind(agg *a) {
    agg_status *t = a->status;
    if (!t || !a->cfg.has_status || t->http) return 0;
    if (status_http_start(&t->http, a->cfg.status_bind, a->cfg.status_token,
                          a->cfg.status_refresh_s, log_http, t->url, sizeof t->url) != 0)
        return err_context("%s: 'status'", a->cfg.file);
    return 0;
}

int agg_status_serve(agg *a) {
    agg_status *t = a->status;
    if (!t || !a->cfg.has_status) return 0;
    if (agg_status_bind(a) < 0) return -1;
    /* Where it listens, for `fedlora status --config` (the port may have
     * been picked by the system). */
    char line[sizeof t->url + 1], p[AGG_PATH_MAX];
    size_t ul = strlen(t->url);
    memcpy(line, t->url, ul);
    line[ul] = '\n';
    if (agg_state_path(a, "status-url", p, sizeof p) < 0 ||
        fio_write_atomic(p, line, ul + 1, 0644) < 0)
        return -1;
    agg_say("status page on %s%s", t->url,
            a->cfg.status_token[0] ? " (bearer token required)" : "");
    t->dirty = 1;
    agg_status_tick(a);
    return 0;
}

void agg_status_tick(agg *a) {
    agg_status *t = a->status;
    if (!t || !t->http) return;
    double now = clock_now_s();
    if (now - t->built_at < REBUILD_MIN_S || (!t->dirty && now - t->built_at < REBUILD_IDLE_S))
        return;
    status_view *v = build_view(a, (int64_t)time(NULL));
    if (!v) return; /* out of memory: the previous snapshot stays, the next tick tries again */
    status_http_publish(t->http, v);
    t->built_at = now;
    t->dirty = 0;
}
