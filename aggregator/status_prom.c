/* status_prom — the status view in Prometheus' text exposition format
 * (version 0.0.4: "# HELP" and "# TYPE" lines, then `name{label="value"}
 * number` samples; label values escape \, " and newline). Counters end in
 * _total. docs/federation.md, "The status page", lists every metric. */
#include "aggregator/status.h"

#include "util/err.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void family(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void value(FILE *f, double x) {
    if (isnan(x))
        fputs("NaN", f);
    else if (isinf(x))
        fputs(x > 0 ? "+Inf" : "-Inf", f);
    else
        fprintf(f, "%.17g", x);
}

/* A label value, escaped. */
static void label(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fprintf(f, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

static void sample(FILE *f, const char *name, double x) {
    fprintf(f, "%s ", name);
    value(f, x);
    fputc('\n', f);
}

/* name{k="v"} x, or with two labels when k2 is not NULL. */
static void sample2(FILE *f, const char *name, const char *k, const char *v, const char *k2,
                    const char *v2, double x) {
    fprintf(f, "%s{%s=\"", name, k);
    label(f, v);
    if (k2) {
        fprintf(f, "\",%s=\"", k2);
        label(f, v2);
    }
    fputs("\"} ", f);
    value(f, x);
    fputc('\n', f);
}

static const char *const round_states[] = {"OPEN",      "COLLECTING", "AGGREGATING",
                                           "PUBLISHED", "FAILED",     "FINISHED"};

/* The newest round whose version was evaluated. */
static const status_round *newest_eval(const status_view *v) {
    for (int i = v->nhistory; i-- > 0;)
        if (!strcmp(v->history[i].eval, "done")) return &v->history[i];
    return NULL;
}

int status_prometheus(const status_view *v, int64_t now, char **out, size_t *len) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return err_errno("open_memstream for /metrics");

    family(f, "fedlora_up", "gauge", "1 while the aggregator serves this page.");
    sample(f, "fedlora_up", 1);
    family(f, "fedlora_start_time_seconds", "gauge", "Unix time the aggregator started.");
    sample(f, "fedlora_start_time_seconds", (double)v->started);
    family(f, "fedlora_round", "gauge", "The round open now (or the last one, once finished).");
    sample(f, "fedlora_round", (double)v->round);
    family(f, "fedlora_rounds_configured", "gauge", "Rounds the federation runs (rounds.count).");
    sample(f, "fedlora_rounds_configured", (double)v->rounds);
    family(f, "fedlora_round_state", "gauge", "1 for the state the round is in, 0 for the others.");
    for (size_t i = 0; i < sizeof round_states / sizeof round_states[0]; i++)
        sample2(f, "fedlora_round_state", "state", round_states[i], NULL, NULL,
                !strcmp(v->state, round_states[i]));
    family(f, "fedlora_round_deadline_seconds", "gauge",
           "Unix time the open round's deadline falls (0: none).");
    sample(f, "fedlora_round_deadline_seconds", (double)v->deadline);
    family(f, "fedlora_round_deadline_remaining_seconds", "gauge",
           "Seconds until the open round's deadline (0 once it passed).");
    sample(f, "fedlora_round_deadline_remaining_seconds",
           v->deadline > now ? (double)(v->deadline - now) : 0);
    family(f, "fedlora_round_quorum", "gauge", "Deltas the open round needs to close.");
    sample(f, "fedlora_round_quorum", v->quorum);
    family(f, "fedlora_round_deltas", "gauge", "Deltas accepted in the open round so far.");
    sample(f, "fedlora_round_deltas", v->accepted);

    uint64_t published = 0, failed = 0, merged = 0;
    double agg_s = 0, pub_s = 0;
    for (int i = 0; i < v->nhistory; i++) {
        const status_round *r = &v->history[i];
        if (r->round == 0) continue;
        if (!strcmp(r->status, "published"))
            published++;
        else
            failed++;
        merged += (uint64_t)r->accepted;
        if (isfinite(r->aggregate_s)) agg_s += r->aggregate_s;
        if (isfinite(r->publish_s)) pub_s += r->publish_s;
    }
    family(f, "fedlora_rounds_total", "counter", "Rounds ended, by how they ended.");
    sample2(f, "fedlora_rounds_total", "status", "published", NULL, NULL, (double)published);
    sample2(f, "fedlora_rounds_total", "status", "failed", NULL, NULL, (double)failed);

    int by_state[STATUS_NSTATES] = {0};
    for (int i = 0; i < v->nmembers; i++) by_state[v->members[i].state]++;
    family(f, "fedlora_members", "gauge", "Members by their state in the round shown.");
    for (int s = 0; s < STATUS_NSTATES; s++)
        sample2(f, "fedlora_members", "state", status_state_name((status_state)s), NULL, NULL,
                by_state[s]);

    family(f, "fedlora_deltas_accepted_total", "counter",
           "Sealed deltas receipted (stored and journaled), every round.");
    sample(f, "fedlora_deltas_accepted_total", (double)v->deltas_accepted);
    family(f, "fedlora_deltas_merged_total", "counter", "Deltas merged into a published version.");
    sample(f, "fedlora_deltas_merged_total", (double)merged);
    family(f, "fedlora_submissions_refused_total", "counter",
           "Requests refused by this aggregator process, by reason (docs/protocol.md, "
           "\"Refusals\").");
    for (int i = 0; i < v->nrefused; i++)
        sample2(f, "fedlora_submissions_refused_total", "reason", v->refused[i].reason, NULL, NULL,
                (double)v->refused[i].count);
    family(f, "fedlora_deltas_dropped_total", "counter",
           "Accepted deltas dropped at aggregation (policy validation, revocation), by reason.");
    for (int i = 0; i < v->ndropped; i++)
        sample2(f, "fedlora_deltas_dropped_total", "reason", v->dropped[i].reason, NULL, NULL,
                (double)v->dropped[i].count);

    family(f, "fedlora_bytes_received_total", "counter",
           "Bytes of sealed deltas uploaded to this aggregator process.");
    sample(f, "fedlora_bytes_received_total", (double)v->bytes_received);
    family(f, "fedlora_bytes_served_total", "counter",
           "Bytes of model versions and objects this aggregator process served.");
    sample(f, "fedlora_bytes_served_total", (double)v->bytes_served);

    family(f, "fedlora_aggregate_seconds_total", "counter",
           "Seconds spent merging deltas, over the rounds in the history.");
    sample(f, "fedlora_aggregate_seconds_total", agg_s);
    family(f, "fedlora_publish_seconds_total", "counter",
           "Seconds spent writing and hashing versions, over the rounds in the history.");
    sample(f, "fedlora_publish_seconds_total", pub_s);
    const status_round *last = NULL;
    for (int i = v->nhistory; i-- > 0 && !last;)
        if (v->history[i].round > 0) last = &v->history[i];
    family(f, "fedlora_last_aggregate_seconds", "gauge", "Seconds the last round's merge took.");
    sample(f, "fedlora_last_aggregate_seconds", last ? last->aggregate_s : NAN);
    family(f, "fedlora_last_publish_seconds", "gauge", "Seconds the last round's publish took.");
    sample(f, "fedlora_last_publish_seconds", last ? last->publish_s : NAN);

    if (v->dp) {
        family(f, "fedlora_dp_epsilon", "gauge",
               "DP-FedAvg: epsilon spent by the rounds published so far, at fedlora_dp_delta.");
        sample(f, "fedlora_dp_epsilon", v->epsilon);
        family(f, "fedlora_dp_delta", "gauge", "DP-FedAvg: the delta epsilon is reported at.");
        sample(f, "fedlora_dp_delta", v->delta);
        family(f, "fedlora_dp_epsilon_budget", "gauge", "DP-FedAvg: dp.epsilon_budget.");
        sample(f, "fedlora_dp_epsilon_budget", v->epsilon_budget);
    }

    const status_round *ev = newest_eval(v);
    if (ev) {
        family(f, "fedlora_eval_round", "gauge", "The round whose version was evaluated last.");
        sample(f, "fedlora_eval_round", (double)ev->round);
        family(f, "fedlora_eval_loss", "gauge",
               "Mean next-token loss (nats) of the newest evaluated version, per text set.");
        for (int i = 0; i < ev->nscores; i++)
            if (!ev->scores[i].choice)
                sample2(f, "fedlora_eval_loss", "set", ev->scores[i].name, NULL, NULL,
                        ev->scores[i].loss);
        family(f, "fedlora_eval_accuracy", "gauge",
               "Multiple-choice accuracy of the newest evaluated version, per task (acc, "
               "acc_norm).");
        for (int i = 0; i < ev->nscores; i++)
            if (ev->scores[i].choice) {
                sample2(f, "fedlora_eval_accuracy", "set", ev->scores[i].name, "metric", "acc",
                        ev->scores[i].acc);
                sample2(f, "fedlora_eval_accuracy", "set", ev->scores[i].name, "metric", "acc_norm",
                        ev->scores[i].acc_norm);
            }
    }
    return status_stream_done(f, &buf, &n, "/metrics", out, len);
}
