/* Real nodes ride out aggregator crashes. The aggregator of a 3-node,
 * 2-round federation is SIGKILLed (its test hook FEDLORA_CRASH_AT, see
 * docs/protocol.md) twice: mid-upload (after it wrote a chunk of the second
 * upload) and between a delta's journal record and its RECEIPT (the second
 * receipt after the first restart); it is restarted on the same port each
 * time. The nodes, which only see requests go unanswered, retry, start the
 * interrupted upload over and resubmit the envelope whose receipt was lost.
 * The federation must end as a run without crashes does: every node counted
 * once per round and the same final model bytes. */
#include "aggregator/agg.h"
#include "aggregator/config.h"
#include "tests/federation/fed_test.h"

static void start_aggregator_with(ft_fed *f, const char *crash_at) {
    if (crash_at) setenv("FEDLORA_CRASH_AT", crash_at, 1);
    CHECK_OK(ft_start(&f->agg, f->agg_log, "aggregator", "--config", f->agg_config, NULL));
    unsetenv("FEDLORA_CRASH_AT");
}

/* The aggregator binds where it did first, so the nodes find it again. */
static int pin_endpoint(ft_fed *f) {
    char *cfg = ts_read(f->agg_config, NULL);
    if (!cfg) return -1;
    const char *any = "tcp://127.0.0.1:*";
    char *at = strstr(cfg, any), text[8192];
    int rc = -1;
    if (at) {
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - cfg), cfg, f->endpoint,
                 at + strlen(any));
        rc = ts_write(f->agg_config, text);
    }
    free(cfg);
    return rc;
}

/* Runs a federation, crashing the aggregator at each of crash[0..n-1] in
 * turn; returns the final version in v2. */
static void run(const char *tag, const char *const *crash, int n, char v2[65]) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    ft_fed f;
    CHECK_OK(ft_setup(&f, tag, 3, &o));
    char path[TS_PATH];
    start_aggregator_with(&f, n > 0 ? crash[0] : NULL);
    CHECK_OK(harness_wait_file(ts_in(path, f.agg_state, "endpoint"), 30));
    char *ep = ts_read(path, NULL);
    CHECK(ep != NULL);
    if (ep) {
        ep[strcspn(ep, "\n")] = 0;
        snprintf(f.endpoint, sizeof f.endpoint, "%s", ep);
        free(ep);
    }
    CHECK_OK(pin_endpoint(&f));
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ft_node_config(&f, i, f.endpoint, ""));
        CHECK_OK(ft_start_node(&f, i));
    }
    int crashes = 0;
    for (double t0 = harness_now(); harness_now() - t0 < 180; harness_sleep_ms(20)) {
        int running = 0;
        for (int i = 0; i < 3; i++) running += harness_running(&f.node[i].proc);
        if (!running) break;
        if (!harness_running(&f.agg)) {
            int st = harness_wait(&f.agg, 1);
            CHECK_MSG(st == 128 + SIGKILL, "the aggregator exited with %d (see %s)", st, f.agg_log);
            if (st != 128 + SIGKILL || ++crashes > n) break;
            start_aggregator_with(&f, crashes < n ? crash[crashes] : NULL);
        }
    }
    CHECK_MSG(crashes == n, "%d of %d crashes happened", crashes, n);
    for (int i = 0; i < 3; i++)
        CHECK_MSG(harness_wait(&f.node[i].proc, 5) == 0, "%s (see %s)", f.node[i].name,
                  f.node[i].log);
    CHECK_MSG(harness_wait(&f.agg, 30) == 0, "aggregator (see %s)", f.agg_log);
    for (int r = 1; r <= 2; r++)
        for (int i = 0; i < 3; i++)
            CHECK_MSG(ft_accepted(&f, r, f.node[i].name) == 1, "%s: round %d counts %s %d times",
                      tag, r, f.node[i].name, ft_accepted(&f, r, f.node[i].name));
    ft_version(&f, 2, v2);
    CHECK(strlen(v2) == 64);
    if (n > 0) {
        /* The crashes did happen where asked, and the nodes noticed. */
        CHECK(ts_contains(f.agg_log, "FEDLORA_CRASH_AT=collect"));
        CHECK(ts_contains(f.agg_log, "FEDLORA_CRASH_AT=receipt"));
        int retried = 0;
        for (int i = 0; i < 3; i++) retried += ts_contains(f.node[i].log, "no answer from");
        CHECK(retried > 0);
        ft_check_recompute(&f, 2);
    }
    ft_teardown(&f);
}

int main(void) {
    char ref[65] = "", crashed[65] = "";
    run("ref", NULL, 0, ref);
    const char *crash[] = {"collect:2", "receipt:2"};
    run("restart", crash, 2, crashed);
    CHECK_MSG(*ref && strcmp(ref, crashed) == 0, "final version %s with crashes, %s without",
              crashed, ref);
    return check_finish();
}
