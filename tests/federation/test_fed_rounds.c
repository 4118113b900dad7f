/* Quorum and deadline, with real processes on loopback:
 *   1. a round closes at its deadline once the quorum is met, without the
 *      member that is late, and refuses that member's late submission with
 *      a WRONG_ROUND reply that says why; the late node drops the stale delta
 *      and goes on with the next round;
 *   2. below the quorum with below_quorum = "wait", the round stays open
 *      past its deadline (a node stopped with SIGTERM meanwhile and started
 *      again waits on) and closes when the quorum arrives;
 *   3. below the quorum with below_quorum = "fail", the round fails at the
 *      deadline and publishes no version. */
#include "tests/federation/fed_test.h"

/* ---- 1: quorum met at the deadline, a late submission refused ------------------------ */

struct late {
    const char *late_node; /* whose SUBMIT_BEGIN is held back */
    int release;           /* set once round 1 is closed: let it through */
    int refused;           /* the aggregator's answer to it was WRONG_ROUND */
    char reason[MSG_REASON_MAX + 1];
    int last_was_begin;
};

static int late_hook(ft_proxy *p, const char *name, int is_reply, const struct msg *m) {
    struct late *l = p->arg;
    if (strcmp(name, l->late_node) != 0) return FT_PASS;
    if (!is_reply) {
        l->last_was_begin = m->type == MSG_SUBMIT_BEGIN && m->submit_begin.round == 1;
        if (l->last_was_begin && !l->release) return FT_SWALLOW; /* "still on its way" */
        return FT_PASS;
    }
    if (l->last_was_begin && m->type == MSG_ERROR && m->error.code == MSG_ERR_WRONG_ROUND) {
        l->refused = 1;
        snprintf(l->reason, sizeof l->reason, "%s", m->error.reason);
    }
    return FT_PASS;
}

static void quorum_at_deadline(void) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    o.quorum = 2;
    o.deadline_s = 3;
    ft_fed f;
    ft_proxy p;
    struct late l = {0};
    CHECK_OK(ft_setup(&f, "quorum", 3, &o));
    CHECK_OK(ft_start_aggregator(&f));
    l.late_node = f.node[2].name;
    CHECK_OK(ft_proxy_open(&p, &f, f.endpoint, late_hook, &l));
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ft_node_config(&f, i, i == 2 ? p.endpoint : f.endpoint, ""));
        CHECK_OK(ft_start_node(&f, i));
    }
    int done = 0;
    for (double t0 = harness_now(); !done && harness_now() - t0 < 120;) {
        ft_proxy_pump(&p, 50);
        if (!l.release && ft_count_accepted(&f, 1) > 0) l.release = 1;
        done = !harness_running(&f.node[0].proc) && !harness_running(&f.node[1].proc) &&
               !harness_running(&f.node[2].proc);
    }
    for (int i = 0; i < 3; i++)
        CHECK_MSG(harness_wait(&f.node[i].proc, 5) == 0, "%s (see %s)", f.node[i].name,
                  f.node[i].log);
    CHECK_MSG(harness_wait(&f.agg, 30) == 0, "aggregator (see %s)", f.agg_log);
    /* Round 1 closed with the two on time, without the late one. */
    CHECK(ft_count_accepted(&f, 1) == 2);
    CHECK(ft_accepted(&f, 1, f.node[2].name) == 0);
    CHECK_MSG(l.refused, "the late SUBMIT_BEGIN was not refused with WRONG_ROUND");
    CHECK_MSG(strstr(l.reason, "round 1") != NULL, "reason: '%s'", l.reason);
    CHECK(ts_contains(f.node[2].log, "no longer takes deltas"));
    /* The late node never got a receipt for round 1 and kept nothing to send. */
    char path[TS_PATH];
    CHECK(!fio_exists(ts_in(path, f.node[2].state, "receipts/round-1.json")));
    CHECK(!fio_exists(ts_in(path, f.node[2].state, "outbox/round-1.env")));
    char v2[65];
    ft_version(&f, 2, v2);
    CHECK(strlen(v2) == 64);
    ft_proxy_close(&p);
    ft_teardown(&f);
}

/* ---- 2 and 3: below the quorum --------------------------------------------------------------- */

static void below_quorum(const char *policy) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 1;
    o.quorum = 2;
    o.deadline_s = 1;
    o.below_quorum = policy;
    ft_fed f;
    char path[TS_PATH];
    CHECK_OK(ft_setup(&f, policy, 2, &o));
    CHECK_OK(ft_start_aggregator(&f));
    for (int i = 0; i < 2; i++) CHECK_OK(ft_node_config(&f, i, f.endpoint, ""));
    CHECK_OK(ft_start_node(&f, 0));

    if (strcmp(policy, "wait") == 0) {
        /* Its delta is in (whenever it came: the round waits), and the 1 s
         * deadline, counted from the round's opening, is well past. */
        CHECK_OK(harness_wait_file(ts_in(path, f.node[0].state, "receipts/round-1.json"), 60));
        harness_sleep_ms(2500);
        json_t *early = ft_round_metrics(&f, 1);
        CHECK_MSG(early == NULL, "round 1 closed below its quorum");
        json_decref(early);
        CHECK(harness_running(&f.agg) && harness_running(&f.node[0].proc));
        /* A clean stop while waiting, and a restart that waits on (its
         * receipt is on disk: nothing is trained or sent again). */
        kill(f.node[0].proc.pid, SIGTERM);
        CHECK(harness_wait(&f.node[0].proc, 10) == 128 + SIGTERM);
        CHECK(ts_contains(f.node[0].log, "stopping on signal 15"));
        CHECK_OK(ft_start_node(&f, 0));
        CHECK_OK(ft_start_node(&f, 1)); /* the quorum arrives: the round closes */
        for (int i = 0; i < 2; i++)
            CHECK_MSG(harness_wait(&f.node[i].proc, 60) == 0, "%s (see %s)", f.node[i].name,
                      f.node[i].log);
        CHECK_MSG(harness_wait(&f.agg, 30) == 0, "aggregator (see %s)", f.agg_log);
        CHECK(ft_count_accepted(&f, 1) == 2);
        char *log = ts_read(f.node[0].log, NULL);
        int trained = 0;
        for (const char *q = log; q && (q = strstr(q, "round 1: training")); q++) trained++;
        CHECK_MSG(trained == 1, "the node trained round 1 %d times", trained);
        free(log);
        char v[65];
        ft_version(&f, 1, v);
        CHECK(strlen(v) == 64);
    } else {
        /* The round failed at its deadline, with at most this node's delta:
         * no version, and the federation (one round) is finished; the node
         * is told so and exits 0. */
        CHECK_MSG(harness_wait(&f.node[0].proc, 60) == 0, "%s (see %s)", f.node[0].name,
                  f.node[0].log);
        CHECK_MSG(harness_wait(&f.agg, 30) == 0, "aggregator (see %s)", f.agg_log);
        json_t *j = ft_round_metrics(&f, 1);
        CHECK(j != NULL);
        if (j) {
            CHECK(json_is_null(json_object_get(j, "version")));
            json_t *st = json_object_get(j, "status");
            CHECK_MSG(json_is_string(st) && strstr(json_string_value(st), "quorum"), "status %s",
                      json_is_string(st) ? json_string_value(st) : "?");
        }
        json_decref(j);
    }
    ft_teardown(&f);
}

int main(void) {
    quorum_at_deadline();
    below_quorum("wait");
    below_quorum("fail");
    return check_finish();
}
