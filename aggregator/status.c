/* status — the status snapshot, and /status.json both ways (status.h). */
#include "aggregator/status.h"

#include "util/err.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const state_names[] = {
#define X(e, s) s,
    STATUS_STATES
#undef X
};

const char *status_state_name(status_state s) {
    return s >= 0 && s < STATUS_NSTATES ? state_names[s] : "?";
}

int status_state_parse(const char *name) {
    for (int i = 0; i < STATUS_NSTATES; i++)
        if (!strcmp(state_names[i], name)) return i;
    return -1;
}

void status_free(status_view *v) {
    if (!v) return;
    for (int i = 0; i < v->nhistory; i++) free(v->history[i].scores);
    free(v->history);
    free(v->members);
    free(v);
}

const status_round *status_round_get(const status_view *v, uint64_t r) {
    for (int i = v->nhistory; i-- > 0;)
        if (v->history[i].round == r) return &v->history[i];
    return NULL;
}

/* open_memstream's buffer and size are valid once the stream is closed. */
int status_stream_done(FILE *f, char **buf, size_t *n, const char *what, char **out, size_t *len) {
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        free(*buf);
        return err_set("out of memory formatting %s", what);
    }
    *out = *buf;
    *len = *n;
    return 0;
}

int status_round_words(const status_view *v, int64_t now, char *deadline, size_t dn, char *deltas,
                       size_t an) {
    deadline[0] = deltas[0] = '\0';
    if (strcmp(v->state, "OPEN") != 0 && strcmp(v->state, "COLLECTING") != 0) return 0;
    char d[32];
    if (v->deadline > now) {
        status_fmt_duration(v->deadline - now, d, sizeof d);
        snprintf(deadline, dn, "deadline in %s", d);
    } else if (v->deadline > 0) {
        status_fmt_duration(now - v->deadline, d, sizeof d);
        snprintf(deadline, dn, "deadline passed %s ago, waiting for the quorum", d);
    }
    snprintf(deltas, an, "%d delta%s in, %u needed", v->accepted, v->accepted == 1 ? "" : "s",
             v->quorum);
    return 1;
}

void status_fmt_duration(int64_t s, char *out, size_t n) {
    if (s < 0) s = 0;
    if (s < 60)
        snprintf(out, n, "%" PRId64 "s", s);
    else if (s < 3600)
        snprintf(out, n, "%" PRId64 "m %02" PRId64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, n, "%" PRId64 "h %02" PRId64 "m", s / 3600, s / 60 % 60);
    else
        snprintf(out, n, "%" PRId64 "d %02" PRId64 "h", s / 86400, s / 3600 % 24);
}

void status_fmt_bytes(uint64_t b, char *out, size_t n) {
    static const char *const unit[] = {"B", "kB", "MB", "GB", "TB", "PB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1000 && u < 5) v /= 1000, u++;
    if (u == 0)
        snprintf(out, n, "%" PRIu64 " B", b);
    else
        snprintf(out, n, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v, unit[u]);
}

void status_fmt_ago(int64_t then, int64_t now, char *out, size_t n) {
    if (then <= 0) {
        snprintf(out, n, "never");
        return;
    }
    char d[32];
    status_fmt_duration(now - then, d, sizeof d);
    snprintf(out, n, "%s ago", d);
}

/* ---- to JSON -------------------------------------------------------------------------- */

/* NaN and infinities are not JSON: they become null. */
static json_t *num(double x) {
    return isfinite(x) ? json_real(x) : json_null();
}

static json_t *str(const char *s) {
    json_t *j = json_string(s);
    return j ? j : json_string("?"); /* not UTF-8: cannot come from our own strings */
}

static json_t *counts(const status_count *c, int n) {
    json_t *o = json_object();
    for (int i = 0; o && i < n; i++)
        json_object_set_new(o, c[i].reason, json_integer((json_int_t)c[i].count));
    return o;
}

static json_t *round_json(const status_round *r) {
    json_t *j = json_object(), *sets = json_array(), *ev = json_object();
    for (int i = 0; i < r->nscores; i++) {
        const status_score *s = &r->scores[i];
        json_t *o = json_object();
        json_object_set_new(o, "name", str(s->name));
        json_object_set_new(o, "kind", json_string(s->choice ? "choice" : "text"));
        if (s->choice) {
            json_object_set_new(o, "acc", num(s->acc));
            json_object_set_new(o, "acc_norm", num(s->acc_norm));
            json_object_set_new(o, "questions", json_integer(s->count));
        } else {
            json_object_set_new(o, "loss", num(s->loss));
            json_object_set_new(o, "perplexity", num(s->perplexity));
            json_object_set_new(o, "tokens", json_integer(s->count));
        }
        json_array_append_new(sets, o);
    }
    json_object_set_new(ev, "state", str(r->eval));
    json_object_set_new(ev, "error", str(r->eval_error));
    json_object_set_new(ev, "sets", sets);
    json_object_set_new(j, "round", json_integer((json_int_t)r->round));
    json_object_set_new(j, "status", str(r->status));
    json_object_set_new(j, "version", r->version[0] ? str(r->version) : json_null());
    json_object_set_new(j, "accepted", json_integer(r->accepted));
    json_object_set_new(j, "rejected", json_integer(r->rejected));
    json_object_set_new(j, "tokens", json_integer((json_int_t)r->tokens));
    json_object_set_new(j, "bytes_in", json_integer((json_int_t)r->bytes_in));
    json_object_set_new(j, "collect_s", num(r->collect_s));
    json_object_set_new(j, "aggregate_s", num(r->aggregate_s));
    json_object_set_new(j, "publish_s", num(r->publish_s));
    json_object_set_new(j, "loss_before", num(r->loss_before));
    json_object_set_new(j, "loss_after", num(r->loss_after));
    json_object_set_new(j, "epsilon", num(r->epsilon));
    json_object_set_new(j, "time", json_integer(r->time));
    json_object_set_new(j, "eval", ev);
    return j;
}

static json_t *member_json(const status_member *m) {
    json_t *j = json_object();
    json_object_set_new(j, "name", str(m->name));
    json_object_set_new(j, "fingerprint", str(m->fingerprint));
    json_object_set_new(j, "role", json_string(m->observer ? "observer" : "member"));
    json_object_set_new(j, "state", json_string(status_state_name(m->state)));
    json_object_set_new(j, "why", str(m->why));
    json_object_set_new(j, "last_contact", json_integer(m->last_contact));
    json_object_set_new(j, "bytes_in", json_integer((json_int_t)m->bytes_in));
    json_object_set_new(j, "bytes_out", json_integer((json_int_t)m->bytes_out));
    json_object_set_new(j, "last_round", json_integer((json_int_t)m->last_round));
    json_object_set_new(j, "last_outcome",
                        m->last_round ? json_string(status_state_name(m->last)) : json_null());
    json_object_set_new(j, "last_why", str(m->last_why));
    return j;
}

int status_to_json(const status_view *v, int64_t now, char **out, size_t *len) {
    json_t *j = json_object(), *round = json_object(), *members = json_array(),
           *hist = json_array(), *ctr = json_object(), *sets = json_array();
    if (!j || !round || !members || !hist || !ctr || !sets) {
        json_decref(j), json_decref(round), json_decref(members), json_decref(hist);
        json_decref(ctr), json_decref(sets);
        return err_set("out of memory for /status.json");
    }
    json_object_set_new(round, "number", json_integer((json_int_t)v->round));
    json_object_set_new(round, "of", json_integer((json_int_t)v->rounds));
    json_object_set_new(round, "state", str(v->state));
    json_object_set_new(round, "deadline", json_integer(v->deadline));
    json_object_set_new(round, "quorum", json_integer(v->quorum));
    json_object_set_new(round, "accepted", json_integer(v->accepted));
    json_object_set_new(round, "base", str(v->base));
    json_object_set_new(round, "version", str(v->version));
    for (int i = 0; i < v->nmembers; i++)
        json_array_append_new(members, member_json(&v->members[i]));
    for (int i = 0; i < v->nhistory; i++) json_array_append_new(hist, round_json(&v->history[i]));
    json_object_set_new(ctr, "deltas_accepted", json_integer((json_int_t)v->deltas_accepted));
    json_object_set_new(ctr, "bytes_received", json_integer((json_int_t)v->bytes_received));
    json_object_set_new(ctr, "bytes_served", json_integer((json_int_t)v->bytes_served));
    json_object_set_new(ctr, "refused", counts(v->refused, v->nrefused));
    json_object_set_new(ctr, "dropped", counts(v->dropped, v->ndropped));
    for (int i = 0; i < v->neval_sets; i++) json_array_append_new(sets, str(v->eval_sets[i]));
    json_object_set_new(j, "format", json_integer(STATUS_FORMAT));
    json_object_set_new(j, "time", json_integer(now));
    json_object_set_new(j, "updated", json_integer(v->updated));
    json_object_set_new(j, "started", json_integer(v->started));
    json_object_set_new(j, "consortium", str(v->consortium));
    json_object_set_new(j, "round", round);
    json_object_set_new(j, "members", members);
    json_object_set_new(j, "history", hist);
    json_object_set_new(j, "counters", ctr);
    if (v->dp) {
        json_t *dp = json_object();
        json_object_set_new(dp, "epsilon", num(v->epsilon));
        json_object_set_new(dp, "delta", num(v->delta));
        json_object_set_new(dp, "budget", num(v->epsilon_budget));
        json_object_set_new(j, "dp", dp);
    } else {
        json_object_set_new(j, "dp", json_null());
    }
    json_object_set_new(j, "eval_sets", sets);
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!text) return err_set("out of memory formatting /status.json");
    *out = text;
    *len = strlen(text);
    return 0;
}

/* ---- from JSON (untrusted) ---------------------------------------------------------------- */

typedef struct {
    char where[96];
} reader;

static int get_obj(reader *r, json_t *o, const char *key, int required, json_t **out) {
    *out = json_object_get(o, key);
    if (!*out || json_is_null(*out)) {
        *out = NULL;
        return required ? err_set("/status.json: %s%s is missing", r->where, key) : 0;
    }
    if (!json_is_object(*out))
        return err_set("/status.json: %s%s must be an object", r->where, key);
    return 0;
}

static int get_str(reader *r, json_t *o, const char *key, int required, char *out, size_t n) {
    json_t *v = json_object_get(o, key);
    out[0] = '\0';
    if (!v || json_is_null(v))
        return required ? err_set("/status.json: %s%s is missing", r->where, key) : 0;
    if (!json_is_string(v)) return err_set("/status.json: %s%s must be a string", r->where, key);
    size_t len = json_string_length(v);
    if (len >= n || memchr(json_string_value(v), '\0', len))
        return err_set("/status.json: %s%s is longer than %zu bytes", r->where, key, n - 1);
    memcpy(out, json_string_value(v), len + 1);
    return 0;
}

static int get_int(reader *r, json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    json_t *v = json_object_get(o, key);
    *out = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return err_set("/status.json: %s%s must be an integer from %" PRId64 " to %" PRId64,
                       r->where, key, lo, hi);
    *out = json_integer_value(v);
    return 0;
}

static int get_u64(reader *r, json_t *o, const char *key, uint64_t *out) {
    int64_t v;
    if (get_int(r, o, key, 0, INT64_MAX, &v) != 0) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int get_num(reader *r, json_t *o, const char *key, double *out) {
    json_t *v = json_object_get(o, key);
    *out = NAN;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return err_set("/status.json: %s%s must be a number", r->where, key);
    *out = json_number_value(v);
    return 0;
}

static int get_state(reader *r, json_t *o, const char *key, status_state *out) {
    char s[24];
    if (get_str(r, o, key, 0, s, sizeof s) != 0) return -1;
    int k = s[0] ? status_state_parse(s) : (int)STATUS_PENDING;
    if (k < 0) return err_set("/status.json: %s%s: unknown member state '%s'", r->where, key, s);
    *out = (status_state)k;
    return 0;
}

static int get_array(reader *r, json_t *o, const char *key, size_t max, json_t **out) {
    *out = json_object_get(o, key);
    if (!*out || json_is_null(*out)) {
        *out = NULL;
        return 0;
    }
    if (!json_is_array(*out) || json_array_size(*out) > max)
        return err_set("/status.json: %s%s must be an array of at most %zu entries", r->where, key,
                       max);
    return 0;
}

static int read_counts(reader *r, json_t *o, const char *key, status_count *c, int *n) {
    json_t *m;
    *n = 0;
    if (get_obj(r, o, key, 0, &m) != 0) return -1;
    if (!m) return 0;
    if (json_object_size(m) > STATUS_COUNTS_MAX)
        return err_set("/status.json: %s%s has more than %d reasons", r->where, key,
                       STATUS_COUNTS_MAX);
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (strlen(k) >= sizeof c[0].reason || !json_is_integer(v) || json_integer_value(v) < 0)
            return err_set("/status.json: %s%s: a reason of at most %zu bytes with a count",
                           r->where, key, sizeof c[0].reason - 1);
        snprintf(c[*n].reason, sizeof c[0].reason, "%s", k);
        c[(*n)++].count = (uint64_t)json_integer_value(v);
    }
    return 0;
}

static int read_member(reader *r, json_t *j, status_member *m) {
    if (!json_is_object(j)) return err_set("/status.json: %smust be an object", r->where);
    char role[16];
    int64_t t;
    if (get_str(r, j, "name", 1, m->name, sizeof m->name) != 0 ||
        get_str(r, j, "fingerprint", 0, m->fingerprint, sizeof m->fingerprint) != 0 ||
        get_str(r, j, "role", 0, role, sizeof role) != 0 ||
        get_state(r, j, "state", &m->state) != 0 ||
        get_str(r, j, "why", 0, m->why, sizeof m->why) != 0 ||
        get_int(r, j, "last_contact", 0, INT64_MAX, &t) != 0)
        return -1;
    m->last_contact = t;
    m->observer = !strcmp(role, "observer");
    m->last = STATUS_MISSED;
    if (get_u64(r, j, "bytes_in", &m->bytes_in) != 0 ||
        get_u64(r, j, "bytes_out", &m->bytes_out) != 0 ||
        get_u64(r, j, "last_round", &m->last_round) != 0 ||
        get_str(r, j, "last_why", 0, m->last_why, sizeof m->last_why) != 0)
        return -1;
    if (m->last_round && get_state(r, j, "last_outcome", &m->last) != 0) return -1;
    return 0;
}

static int read_score(reader *r, json_t *j, status_score *s) {
    char kind[16];
    if (!json_is_object(j)) return err_set("/status.json: %smust be an object", r->where);
    if (get_str(r, j, "name", 1, s->name, sizeof s->name) != 0 ||
        get_str(r, j, "kind", 1, kind, sizeof kind) != 0)
        return -1;
    if (strcmp(kind, "text") != 0 && strcmp(kind, "choice") != 0)
        return err_set("/status.json: %skind must be \"text\" or \"choice\"", r->where);
    s->choice = !strcmp(kind, "choice");
    return get_num(r, j, "loss", &s->loss) || get_num(r, j, "perplexity", &s->perplexity) ||
                   get_num(r, j, "acc", &s->acc) || get_num(r, j, "acc_norm", &s->acc_norm) ||
                   get_int(r, j, s->choice ? "questions" : "tokens", 0, INT64_MAX, &s->count)
               ? -1
               : 0;
}

static int read_round(reader *r, json_t *j, status_round *h) {
    if (!json_is_object(j)) return err_set("/status.json: %smust be an object", r->where);
    int64_t acc, rej;
    json_t *ev, *sets;
    if (get_u64(r, j, "round", &h->round) != 0 ||
        get_str(r, j, "status", 0, h->status, sizeof h->status) != 0 ||
        get_str(r, j, "version", 0, h->version, sizeof h->version) != 0 ||
        get_int(r, j, "accepted", 0, STATUS_MEMBERS_MAX, &acc) != 0 ||
        get_int(r, j, "rejected", 0, STATUS_MEMBERS_MAX, &rej) != 0 ||
        get_u64(r, j, "tokens", &h->tokens) != 0 || get_u64(r, j, "bytes_in", &h->bytes_in) != 0 ||
        get_num(r, j, "collect_s", &h->collect_s) != 0 ||
        get_num(r, j, "aggregate_s", &h->aggregate_s) != 0 ||
        get_num(r, j, "publish_s", &h->publish_s) != 0 ||
        get_num(r, j, "loss_before", &h->loss_before) != 0 ||
        get_num(r, j, "loss_after", &h->loss_after) != 0 ||
        get_num(r, j, "epsilon", &h->epsilon) != 0 ||
        get_int(r, j, "time", 0, INT64_MAX, &h->time) != 0 || get_obj(r, j, "eval", 0, &ev) != 0)
        return -1;
    h->accepted = (int)acc;
    h->rejected = (int)rej;
    if (!ev) return 0;
    if (get_str(r, ev, "state", 0, h->eval, sizeof h->eval) != 0 ||
        get_str(r, ev, "error", 0, h->eval_error, sizeof h->eval_error) != 0 ||
        get_array(r, ev, "sets", STATUS_SCORES_MAX, &sets) != 0)
        return -1;
    if (!sets || json_array_size(sets) == 0) return 0;
    h->scores = calloc(json_array_size(sets), sizeof *h->scores);
    if (!h->scores) return err_set("out of memory reading /status.json");
    for (size_t i = 0; i < json_array_size(sets); i++) {
        size_t w = strlen(r->where);
        snprintf(r->where + w, sizeof r->where - w, "eval.sets[%zu].", i);
        int rc = read_score(r, json_array_get(sets, i), &h->scores[h->nscores]);
        r->where[w] = '\0';
        if (rc != 0) return -1;
        h->nscores++;
    }
    return 0;
}

static int read_view(json_t *j, status_view *v, int64_t *now) {
    reader r = {""};
    json_t *round, *members, *hist, *ctr, *dp, *sets;
    int64_t fmt;
    if (!json_is_object(j)) return err_set("/status.json: not a JSON object");
    if (get_int(&r, j, "format", 0, INT32_MAX, &fmt) != 0) return -1;
    if (fmt != STATUS_FORMAT)
        return err_set("/status.json: format %" PRId64 ", this fedlora reads format %d", fmt,
                       STATUS_FORMAT);
    if (get_int(&r, j, "time", 0, INT64_MAX, now) != 0 ||
        get_int(&r, j, "updated", 0, INT64_MAX, &v->updated) != 0 ||
        get_int(&r, j, "started", 0, INT64_MAX, &v->started) != 0 ||
        get_str(&r, j, "consortium", 1, v->consortium, sizeof v->consortium) != 0 ||
        get_obj(&r, j, "round", 1, &round) != 0 ||
        get_array(&r, j, "members", STATUS_MEMBERS_MAX, &members) != 0 ||
        get_array(&r, j, "history", STATUS_ROUNDS_MAX, &hist) != 0 ||
        get_obj(&r, j, "counters", 0, &ctr) != 0 || get_obj(&r, j, "dp", 0, &dp) != 0 ||
        get_array(&r, j, "eval_sets", STATUS_SCORES_MAX, &sets) != 0)
        return -1;
    snprintf(r.where, sizeof r.where, "round.");
    int64_t quorum, acc;
    if (get_u64(&r, round, "number", &v->round) != 0 || get_u64(&r, round, "of", &v->rounds) != 0 ||
        get_str(&r, round, "state", 1, v->state, sizeof v->state) != 0 ||
        get_int(&r, round, "deadline", 0, INT64_MAX, &v->deadline) != 0 ||
        get_int(&r, round, "quorum", 0, STATUS_MEMBERS_MAX, &quorum) != 0 ||
        get_int(&r, round, "accepted", 0, STATUS_MEMBERS_MAX, &acc) != 0 ||
        get_str(&r, round, "base", 0, v->base, sizeof v->base) != 0 ||
        get_str(&r, round, "version", 0, v->version, sizeof v->version) != 0)
        return -1;
    v->quorum = (uint32_t)quorum;
    v->accepted = (int)acc;
    size_t nm = members ? json_array_size(members) : 0, nh = hist ? json_array_size(hist) : 0;
    if ((nm && !(v->members = calloc(nm, sizeof *v->members))) ||
        (nh && !(v->history = calloc(nh, sizeof *v->history))))
        return err_set("out of memory reading /status.json");
    for (size_t i = 0; i < nm; i++) {
        snprintf(r.where, sizeof r.where, "members[%zu].", i);
        if (read_member(&r, json_array_get(members, i), &v->members[i]) != 0) return -1;
        v->nmembers++;
    }
    for (size_t i = 0; i < nh; i++) {
        snprintf(r.where, sizeof r.where, "history[%zu].", i);
        int rc = read_round(&r, json_array_get(hist, i), &v->history[i]);
        v->nhistory++; /* its scores are freed with it either way */
        if (rc != 0) return -1;
    }
    snprintf(r.where, sizeof r.where, "counters.");
    if (ctr && (get_u64(&r, ctr, "deltas_accepted", &v->deltas_accepted) != 0 ||
                get_u64(&r, ctr, "bytes_received", &v->bytes_received) != 0 ||
                get_u64(&r, ctr, "bytes_served", &v->bytes_served) != 0 ||
                read_counts(&r, ctr, "refused", v->refused, &v->nrefused) != 0 ||
                read_counts(&r, ctr, "dropped", v->dropped, &v->ndropped) != 0))
        return -1;
    snprintf(r.where, sizeof r.where, "dp.");
    v->dp = dp != NULL;
    if (dp &&
        (get_num(&r, dp, "epsilon", &v->epsilon) != 0 || get_num(&r, dp, "delta", &v->delta) != 0 ||
         get_num(&r, dp, "budget", &v->epsilon_budget) != 0))
        return -1;
    for (size_t i = 0; sets && i < json_array_size(sets); i++) {
        json_t *s = json_array_get(sets, i);
        if (!json_is_string(s) || json_string_length(s) > STATUS_NAME_MAX)
            return err_set("/status.json: eval_sets[%zu] must be a name of at most %d bytes", i,
                           STATUS_NAME_MAX);
        snprintf(v->eval_sets[v->neval_sets++], STATUS_NAME_MAX + 1, "%s", json_string_value(s));
    }
    return 0;
}

int status_from_json(const char *text, size_t len, status_view **out, int64_t *now) {
    *out = NULL;
    if (len > STATUS_JSON_MAX)
        return err_set("/status.json is %zu bytes, more than the %u read", len, STATUS_JSON_MAX);
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        return err_set("/status.json is not valid JSON (%s, line %d, column %d)", je.text, je.line,
                       je.column);
    status_view *v = calloc(1, sizeof *v);
    int rc = v ? read_view(j, v, now) : err_set("out of memory reading /status.json");
    json_decref(j);
    if (rc != 0) {
        status_free(v);
        return -1;
    }
    *out = v;
    return 0;
}
