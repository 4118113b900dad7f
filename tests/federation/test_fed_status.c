/* The consortium's view of a live federation: a 3-node, 2-round federation
 * of real processes on loopback whose aggregator serves its status page
 * (status = { bind = "127.0.0.1:0"; }) and evaluates every version
 * (eval = { data; tasks; }). One node's upload is held back by the proxy,
 * so the test can read /status.json and /metrics while the round collects:
 *
 *   before any node: round 1 OPEN, every member pending, the base as round 0;
 *   during round 1:  two members submitted, the held one training (it said
 *                    HELLO and got the round), each member's last contact and
 *                    download; /metrics counts them the same way and parses
 *                    as Prometheus' format (HELP and TYPE for every sample);
 *   round 2:         every member's previous round accepted; round 1 in the
 *                    history with the version metrics.jsonl names;
 *   finished:        every member accepted; the base and both versions
 *                    evaluated (eval records in metrics.jsonl, equal to
 *                    `fedlora eval --json` run by hand on the last version),
 *                    their scores on the page and in /metrics;
 *
 * the HTML page at each step, `fedlora status --config` (and --json, --url,
 * an https URL refused, --watch stopped by Ctrl-C). With FEDLORA_STATUS_HTML
 * set to a directory the pages are saved there (tests/browser/screenshot.sh
 * takes their screenshots). */
#include "aggregator/status.h"
#include "tests/federation/fed_test.h"
#include "tests/support/ts_http.h"

#include <math.h>

struct hold {
    const char *name; /* whose SUBMIT_BEGIN is held back in round 1 */
    int release;      /* round 1: let it through */
    int passed;       /* SUBMIT_BEGINs let through */
    int open2;        /* round 2: let the uploads through (held until the test saw it open) */
};

/* Every node talks through the proxy, so that what the page shows at each
 * step is not a race with the nodes: round 1's uploads pass except the held
 * member's until release; round 2's (any after round 1's three) wait until
 * the test has read the page at round 2's opening. */
static int hold_hook(ft_proxy *p, const char *name, int is_reply, const struct msg *m) {
    struct hold *h = p->arg;
    if (is_reply || m->type != MSG_SUBMIT_BEGIN) return FT_PASS;
    if (h->passed < 3 ? !h->release && !strcmp(name, h->name) : !h->open2) return FT_SWALLOW;
    h->passed++;
    return FT_PASS;
}

static char url[256];

/* /status.json, parsed (NULL when it could not be read). */
static status_view *get_view(void) {
    http_response r;
    if (ts_http_get(url, "status.json", NULL, &r) != 0) return NULL;
    status_view *v = NULL;
    int64_t now;
    if (r.status != 200 || status_from_json(r.body, r.body_len, &v, &now) != 0) v = NULL;
    http_response_free(&r);
    return v;
}

static char *get_text(const char *path) {
    http_response r;
    if (ts_http_get(url, path, NULL, &r) != 0 || r.status != 200) {
        http_response_free(&r);
        return NULL;
    }
    return r.body; /* owned by the caller now */
}

static const status_member *member(const status_view *v, const char *name) {
    for (int i = 0; v && i < v->nmembers; i++)
        if (!strcmp(v->members[i].name, name)) return &v->members[i];
    return NULL;
}

static int count_state(const status_view *v, status_state s) {
    int n = 0;
    for (int i = 0; v && i < v->nmembers; i++) n += v->members[i].state == s;
    return n;
}

/* /metrics parses, and says what the view says about the members. */
static void check_metrics(const status_view *v, const char *when) {
    char *m = get_text("metrics"), why[256] = "";
    int samples = 0;
    CHECK_MSG(m && ts_prom_check(m, why, sizeof why, &samples) == 0, "%s: /metrics: %s", when,
              m ? why : err_msg());
    for (int s = 0; m && v && s < STATUS_NSTATES; s++) {
        char series[96];
        snprintf(series, sizeof series, "fedlora_members{state=\"%s\"}",
                 status_state_name((status_state)s));
        CHECK_MSG(ts_prom_value(m, series) == count_state(v, (status_state)s), "%s: %s = %g", when,
                  series, ts_prom_value(m, series));
    }
    if (m && v) {
        CHECK(ts_prom_value(m, "fedlora_round") == (double)v->round);
        CHECK(ts_prom_value(m, "fedlora_deltas_accepted_total") == (double)v->deltas_accepted);
        CHECK(ts_prom_value(m, "fedlora_bytes_served_total") == (double)v->bytes_served);
    }
    free(m);
}

static void save_page(const char *name) {
    const char *dir = getenv("FEDLORA_STATUS_HTML");
    char *page = get_text("");
    CHECK_MSG(page && strstr(page, "<!DOCTYPE html>") && strstr(page, "http-equiv=\"refresh\""),
              "%s: no page", name);
    if (page && dir && *dir) {
        char path[TS_PATH];
        CHECK_OK(ts_write(ts_in(path, dir, name), page));
    }
    free(page);
}

/* A multiple-choice task from held-out lines: each line's second half
 * against another line's. */
static void write_task(const char *path, const char *heldout) {
    char *copy = strdup(heldout), *lines[16];
    int n = 0;
    for (char *s = strtok(copy, "\n"); s && n < 16; s = strtok(NULL, "\n"))
        if (strlen(s) > 24) lines[n++] = s;
    FILE *f = fopen(path, "w");
    for (int i = 0; f && i < n && i < 8; i++) {
        const char *a = lines[i], *b = lines[(i + 1) % n];
        int ha = (int)strlen(a) / 2, hb = (int)strlen(b) / 2;
        json_t *j = json_pack("{s:s#, s:[s, s], s:i}", "context", a, ha, "choices", a + ha + 1,
                              b + hb + 1, "gold", 0);
        char *line = json_dumps(j, JSON_COMPACT);
        fprintf(f, "%s\n", line);
        free(line);
        json_decref(j);
    }
    if (f) fclose(f);
    free(copy);
}

struct evals {
    int n;
    int rounds[8];
    json_t *last; /* the newest round's record */
};

static int keep_eval(void *arg, json_t *line) {
    struct evals *e = arg;
    json_t *k = json_object_get(line, "kind");
    if (!json_is_string(k) || strcmp(json_string_value(k), "eval")) return 0;
    int r = (int)json_integer_value(json_object_get(line, "round"));
    if (e->n < 8) e->rounds[e->n++] = r;
    if (!e->last || r > json_integer_value(json_object_get(e->last, "round"))) {
        json_decref(e->last);
        e->last = json_incref(line);
    }
    return 0;
}

static void test_status(void) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    o.linger_s = -1; /* served until stopped: the test reads it after the last round */
    ft_fed f;
    char heldout[TS_PATH], task[TS_PATH], agg_cfg_extra[2 * TS_PATH + 256];
    ts_path(heldout, "heldout.txt");
    ts_path(task, "choices.jsonl");
    CHECK_OK(ts_write(heldout, demo_domains[0].heldout));
    write_task(task, demo_domains[1].heldout);
    snprintf(agg_cfg_extra, sizeof agg_cfg_extra,
             "status = { bind = \"127.0.0.1:0\"; refresh = 2; };\n"
             "eval = { data = [\"%s\"]; tasks = [\"%s\"]; seq = 64; threads = 1; };\n",
             heldout, task);
    o.agg_extra = agg_cfg_extra;
    CHECK_OK(ft_setup(&f, "status", 3, &o));
    CHECK_OK(ft_start_aggregator(&f));
    char path[TS_PATH];
    CHECK_OK(harness_wait_file(ts_in(path, f.agg_state, "status-url"), 10));
    char *u = ts_read(path, NULL);
    snprintf(url, sizeof url, "%.*s", u ? (int)strcspn(u, "\n") : 0, u ? u : "");
    free(u);
    CHECK_MSG(!strncmp(url, "http://127.0.0.1:", 17), "status-url '%s'", url);

    /* Before any node: round 1 open, everyone pending, the base as round 0. */
    status_view *v = NULL;
    for (double t0 = harness_now(); !v && harness_now() - t0 < 10; harness_sleep_ms(50))
        v = get_view();
    CHECK_MSG(v != NULL, "no /status.json from %s", url);
    if (v) {
        CHECK(!strcmp(v->consortium, "fed-test") && v->round == 1 && v->rounds == 2);
        CHECK(!strcmp(v->state, "OPEN") && v->quorum == 3 && v->accepted == 0);
        CHECK(v->nmembers == 3 && count_state(v, STATUS_PENDING) == 3);
        CHECK(v->deadline > v->updated);
        for (int i = 0; i < 3; i++) {
            const status_member *m = member(v, f.node[i].name);
            CHECK_MSG(m && strlen(m->fingerprint) == 16 && m->last_contact == 0 && !m->observer,
                      "%s", f.node[i].name);
        }
        const status_round *base = status_round_get(v, 0);
        CHECK(base && !strcmp(base->status, "base") && !strcmp(base->version, v->base));
        CHECK(v->neval_sets == 2 && !strcmp(v->eval_sets[0], "heldout.txt") &&
              !strcmp(v->eval_sets[1], "choices.jsonl"));
        check_metrics(v, "before");
    }
    status_free(v);
    save_page("status-start.html");

    /* Round 1 with the third node's upload held back. */
    ft_proxy p;
    struct hold hold = {f.node[2].name, 0, 0, 0};
    CHECK_OK(ft_proxy_open(&p, &f, f.endpoint, hold_hook, &hold));
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ft_node_config(&f, i, p.endpoint, ""));
        CHECK_OK(ft_start_node(&f, i));
    }
    int seen = 0;
    for (double t0 = harness_now(); !seen && harness_now() - t0 < 120;) {
        ft_proxy_pump(&p, 100);
        v = get_view();
        const status_member *held = member(v, f.node[2].name);
        seen = v && count_state(v, STATUS_SUBMITTED) == 2 && held && held->state == STATUS_TRAINING;
        if (seen) {
            CHECK(!strcmp(v->state, "COLLECTING") && v->accepted == 2 && v->deltas_accepted == 2);
            for (int i = 0; i < 3; i++) {
                const status_member *m = member(v, f.node[i].name);
                CHECK_MSG(m && m->last_contact > 0 && m->bytes_out > 0,
                          "%s: contact %lld, %llu "
                          "bytes out",
                          f.node[i].name, m ? (long long)m->last_contact : -1,
                          m ? (unsigned long long)m->bytes_out : 0);
                CHECK_MSG(m && (i == 2 ? m->bytes_in == 0 : m->bytes_in > 0), "%s: %llu bytes in",
                          f.node[i].name, m ? (unsigned long long)m->bytes_in : 0);
            }
            check_metrics(v, "collecting");
            save_page("status-collecting.html");
        }
        status_free(v);
    }
    CHECK_MSG(seen, "never saw two members submitted and %s training", f.node[2].name);

    /* Released: round 1 closes and round 2 opens. */
    hold.release = 1;
    int round2 = 0;
    for (double t0 = harness_now(); !round2 && harness_now() - t0 < 120;) {
        ft_proxy_pump(&p, 100);
        v = get_view();
        round2 = v && v->round == 2;
        if (round2) {
            char v1[65];
            ft_version(&f, 1, v1);
            const status_round *r1 = status_round_get(v, 1);
            CHECK_MSG(r1 && !strcmp(r1->status, "published") && !strcmp(r1->version, v1) &&
                          r1->accepted == 3 && r1->tokens > 0 && isfinite(r1->loss_after),
                      "round 1 in the history");
            for (int i = 0; i < 3; i++) {
                const status_member *m = member(v, f.node[i].name);
                CHECK_MSG(m && m->last_round == 1 && m->last == STATUS_ACCEPTED,
                          "%s: previous "
                          "round",
                          f.node[i].name);
                CHECK(m && m->state != STATUS_ACCEPTED && m->state != STATUS_REFUSED);
            }
            check_metrics(v, "round 2");
        }
        status_free(v);
    }
    CHECK_MSG(round2, "round 2 never opened");
    hold.open2 = 1;

    /* The rest of the federation. */
    int done = 0;
    for (double t0 = harness_now(); !done && harness_now() - t0 < 180;) {
        ft_proxy_pump(&p, 100);
        done = !harness_running(&f.node[0].proc) && !harness_running(&f.node[1].proc) &&
               !harness_running(&f.node[2].proc);
    }
    for (int i = 0; i < 3; i++)
        CHECK_MSG(harness_wait(&f.node[i].proc, 5) == 0, "%s (see %s)", f.node[i].name,
                  f.node[i].log);
    /* Every version evaluated: the base (0) and rounds 1 and 2. */
    struct evals e = {0};
    char metrics_path[TS_PATH];
    ts_in(metrics_path, f.agg_state, "metrics.jsonl");
    for (double t0 = harness_now(); e.n < 3 && harness_now() - t0 < 120; harness_sleep_ms(100)) {
        json_decref(e.last);
        memset(&e, 0, sizeof e);
        harness_jsonl_each(metrics_path, keep_eval, &e);
    }
    CHECK_MSG(e.n == 3 && e.rounds[0] == 0 && e.rounds[1] == 1 && e.rounds[2] == 2,
              "%d eval records (see %s)", e.n, f.agg_log);
    /* `fedlora eval --json` by hand on the last version gives the record's
     * scores exactly (the same command, the same single thread). */
    char v2[65], vdir[TS_PATH + 80], mine[TS_PATH], tok[TS_PATH], log[TS_PATH];
    ft_version(&f, 2, v2);
    snprintf(vdir, sizeof vdir, "%s/versions/%s", f.agg_state, v2);
    CHECK(ft_run(ts_path(log, "eval-by-hand.log"), 120, "eval", "--model", vdir, "--tokenizer",
                 ts_in(tok, f.base, "tokenizer.json"), "--data", heldout, "--task", task, "--seq",
                 "64", "--json", ts_path(mine, "mine.json"), NULL) == 0);
    json_t *by_hand = json_load_file(mine, 0, NULL);
    json_t *rec_sets = json_object_get(e.last, "sets"), *my_sets = json_object_get(by_hand, "sets");
    CHECK_MSG(json_array_size(rec_sets) == 2 && json_array_size(my_sets) == 2, "eval record: %s",
              e.last ? json_dumps(e.last, 0) : "(none)");
    for (size_t i = 0; i < 2 && json_array_size(rec_sets) == 2; i++) {
        json_t *a = json_array_get(rec_sets, i), *b = json_array_get(my_sets, i);
        const char *key = i == 0 ? "loss" : "acc";
        CHECK_MSG(json_real_value(json_object_get(a, key)) ==
                      json_real_value(json_object_get(b, key)),
                  "%s: record %.17g, by hand %.17g", key, json_real_value(json_object_get(a, key)),
                  json_real_value(json_object_get(b, key)));
    }
    json_decref(by_hand);

    /* Finished: every member accepted, the scores on the page. */
    v = NULL;
    for (double t0 = harness_now(); harness_now() - t0 < 10; harness_sleep_ms(100)) {
        status_free(v);
        v = get_view();
        const status_round *r2 = v ? status_round_get(v, 2) : NULL;
        if (v && !strcmp(v->state, "FINISHED") && r2 && !strcmp(r2->eval, "done")) break;
    }
    if (v) {
        CHECK(!strcmp(v->state, "FINISHED") && v->round == 2);
        CHECK_MSG(count_state(v, STATUS_ACCEPTED) == 3, "%d accepted",
                  count_state(v, STATUS_ACCEPTED));
        CHECK(v->deltas_accepted == 6 && v->nhistory == 3);
        for (uint64_t r = 0; r <= 2; r++) {
            const status_round *h2 = status_round_get(v, r);
            CHECK_MSG(h2 && !strcmp(h2->eval, "done") && h2->nscores == 2 &&
                          isfinite(h2->scores[0].loss) && h2->scores[1].acc >= 0 &&
                          h2->scores[1].acc <= 1,
                      "round %llu's evaluation on the page", (unsigned long long)r);
        }
        check_metrics(v, "finished");
        char *m = get_text("metrics");
        CHECK(m && isfinite(ts_prom_value(m, "fedlora_eval_loss{set=\"heldout.txt\"}")));
        CHECK(m && ts_prom_value(m, "fedlora_rounds_total{status=\"published\"}") == 2);
        CHECK(m && ts_prom_value(m, "fedlora_deltas_merged_total") == 6);
        free(m);
    } else {
        CHECK_MSG(0, "no /status.json after the federation");
    }
    status_free(v);
    char *page = get_text("");
    CHECK(page && strstr(page, "FINISHED") && strstr(page, "<svg") &&
          strstr(page, f.node[0].name) && strstr(page, "choices.jsonl"));
    free(page);
    save_page("status-finished.html");

    /* The terminal's view. */
    int rc = ts_run("status_cli", "status", "--config", f.agg_config, NULL);
    char *out = ts_output("status_cli", "out");
    CHECK_MSG(rc == 0 && out && strstr(out, "fed-test: round 2 of 2, FINISHED"), "%s",
              out ? out : "(none)");
    for (int i = 0; i < 3 && out; i++) {
        char line[128];
        snprintf(line, sizeof line, "%-20s accepted", f.node[i].name);
        CHECK_MSG(strstr(out, line) != NULL, "no '%s' in\n%s", line, out);
    }
    free(out);
    rc = ts_run("status_json", "status", "--url", url, "--json", NULL);
    out = ts_output("status_json", "out");
    status_view *w = NULL;
    int64_t now;
    CHECK(rc == 0 && out && status_from_json(out, strlen(out), &w, &now) == 0);
    status_free(w);
    free(out);
    rc = ts_run("status_https", "status", "--url", "https://127.0.0.1:1/", NULL);
    CHECK_RUN_FAILS(rc, "status_https", "https is not supported");
    harness_proc watch = {0};
    const char *wargs[] = {"status", "--url", url, "--watch", "--interval", "0.3", NULL};
    CHECK_OK(harness_spawn(&watch, ts_bin(), ts_path(path, "watch.out"), 0, wargs));
    harness_sleep_ms(1500);
    if (watch.pid > 0) kill(watch.pid, SIGINT);
    CHECK_MSG(harness_wait(&watch, 10) == 0, "--watch did not stop cleanly on SIGINT");
    out = ts_read(path, NULL);
    int frames = 0;
    for (const char *s = out; s && (s = strstr(s, "fed-test: round")); s++) frames++;
    CHECK_MSG(frames >= 2, "--watch drew %d frames", frames);
    free(out);

    harness_stop(&f.agg, 10);
    CHECK_MSG(harness_exit_code(f.agg.status) == 0, "aggregator exit %d (see %s)",
              harness_exit_code(f.agg.status), f.agg_log);
    json_decref(e.last);
    ft_proxy_close(&p);
    ft_teardown(&f);
}

int main(void) {
    test_status();
    return check_finish();
}
