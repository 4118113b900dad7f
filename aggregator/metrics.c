/* metrics — STATE/metrics.jsonl, one line per round (docs/protocol.md,
 * "Metrics"), written once: a round repeated after a crash keeps its first
 * line; and the evaluation records of versions (eval.c). Every line read
 * or written also goes to the status page's history. */
#include "aggregator/state.h"

#include "aggregator/store.h"
#include "util/err.h"
#include "util/fio.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define METRICS_MAX (64u << 20) /* bytes of metrics.jsonl read at start */

/* The newest round that has a line in metrics.jsonl; a torn last line (a
 * crash while appending) is cut off. */
int agg_metrics_scan(agg *a) {
    char p[AGG_PATH_MAX];
    if (agg_state_path(a, "metrics.jsonl", p, sizeof p) < 0) return -1;
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
        /* Eval records ("kind") follow their round's line; only round lines
         * say which rounds have theirs. */
        if (r && json_is_integer(r) && !json_object_get(j, "kind") &&
            (uint64_t)json_integer_value(r) > a->metrics_round)
            a->metrics_round = (uint64_t)json_integer_value(r);
        if (json_is_object(j)) {
            agg_status_line(a, j);
            agg_eval_scan_line(a, j);
        }
        json_decref(j);
        pos = (size_t)(nl - data) + 1;
        good = pos;
    }
    free(data);
    if (good < len && truncate(p, (off_t)good) != 0)
        return err_errno("cutting the torn last line of %s", p);
    return 0;
}

int agg_metrics_write(agg *a, json_t *j) {
    char p[AGG_PATH_MAX];
    char *line = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!line) return err_set("out of memory formatting metrics");
    int rc = -1;
    if (agg_state_path(a, "metrics.jsonl", p, sizeof p) < 0) goto done;
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
    if (rc == 0) agg_status_line(a, j);
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
int agg_metrics_round(agg *a, const char *status, const uint8_t *version, const round_result *r,
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
    json_t *why = json_array();
    for (int i = 0; why && i < a->nrefusals; i++)
        json_array_append_new(why, json_string(a->refusals[i]));
    json_object_set_new(j, "refusals", why ? why : json_null());
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
    int rc = agg_metrics_write(a, j);
    json_decref(j);
    if (rc == 0) a->metrics_round = a->round;
    return rc;
}
