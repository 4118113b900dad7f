/* A 3-node, 2-round federation of real processes on loopback ends with model
 * bytes equal to an offline recomputation from the same sealed deltas
 * (agg_recompute: the stored base version and the inbox's envelopes, merged
 * again), and the nodes' durable records tell the same story: one receipt per
 * round, an empty outbox, the last version synced. A node that is not a
 * member is turned away. Run on the tiny Llama, and again on the tiny Qwen3
 * and Apertus (QK-norm weights, xIELU's parameters and 0-dimensional buffers
 * in the base, carried through the versions by name like every tensor). */
#include "aggregator/agg.h"
#include "aggregator/config.h"
#include "tests/federation/fed_test.h"

static void run_exact(const char *arch, int outsider) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    o.arch = arch;
    ft_fed f;
    char tag[32];
    snprintf(tag, sizeof tag, "exact_%s", arch);
    CHECK_OK(ft_setup(&f, tag, 3, &o));
    CHECK_OK(ft_start_aggregator(&f));
    if (outsider) {
        /* A node whose identity is not on the member list is turned away at
         * its first HELLO and exits 1 saying so. */
        char dir[TS_PATH], cfg[TS_PATH], log[TS_PATH], text[2048];
        CHECK_OK(harness_keys(f.keys, "uni-outsider"));
        ts_in(dir, f.root, "outsider");
        CHECK_OK(fio_mkdirs(dir, 0700));
        snprintf(text, sizeof text,
                 "keys = { dir = \"../keys\"; name = \"uni-outsider\"; };\n"
                 "consortium = \"fed-test\";\n"
                 "aggregator = { endpoint = \"%s\"; identity = \"../keys/aggregator.id\"; };\n"
                 "base_model = \"../base\"; data = \"none.txt\"; state = \"state\";\n",
                 f.endpoint);
        CHECK_OK(ts_write(ts_in(cfg, dir, "node.cfg"), text));
        CHECK(ft_run(ts_in(log, dir, "node.log"), 30, "node", "--config", cfg, NULL) == 1);
        CHECK(ts_contains(log, "does not admit this node: unknown node"));
    }
    for (int i = 0; i < f.n; i++) {
        /* The first node trains the round's batch of 4 as 2 micro-batches of
         * 2 (its local override): the same updates, less memory. */
        CHECK_OK(ft_node_config(&f, i, f.endpoint, i == 0 ? "batch = 2;\n" : ""));
        CHECK_OK(ft_start_node(&f, i));
    }
    for (int i = 0; i < f.n; i++)
        CHECK_MSG(harness_wait(&f.node[i].proc, 180) == 0, "%s did not finish cleanly (see %s)",
                  f.node[i].name, f.node[i].log);
    CHECK_MSG(harness_wait(&f.agg, 60) == 0, "the aggregator did not finish cleanly (see %s)",
              f.agg_log);

    for (int r = 1; r <= 2; r++) {
        CHECK_MSG(ft_count_accepted(&f, r) == 3, "round %d: %d deltas accepted", r,
                  ft_count_accepted(&f, r));
        ft_check_recompute(&f, r);
    }
    /* Round 2 trained on round 1's version. */
    json_t *m1 = ft_round_metrics(&f, 1), *m2 = ft_round_metrics(&f, 2);
    CHECK(m1 && m2);
    if (m1 && m2) {
        json_t *v1 = json_object_get(m1, "version"), *b2 = json_object_get(m2, "base");
        CHECK(json_is_string(v1) && json_is_string(b2) &&
              strcmp(json_string_value(v1), json_string_value(b2)) == 0);
    }
    json_decref(m1);
    json_decref(m2);

    /* Each node: a receipt per round, nothing left in the outbox, local
     * held-out loss lower after its training, round 2's base synced. */
    for (int i = 0; i < f.n; i++) {
        char path[TS_PATH], rel[64];
        for (int r = 1; r <= 2; r++) {
            snprintf(rel, sizeof rel, "receipts/round-%d.json", r);
            char *text = ts_read(ts_in(path, f.node[i].state, rel), NULL);
            json_t *j = text ? json_loads(text, 0, NULL) : NULL;
            free(text);
            CHECK_MSG(j != NULL, "%s has no receipt for round %d", f.node[i].name, r);
            if (j) {
                double before = json_number_value(json_object_get(j, "loss_before"));
                double after = json_number_value(json_object_get(j, "loss_after"));
                CHECK_MSG(after < before, "%s round %d: local loss %g -> %g", f.node[i].name, r,
                          before, after);
                CHECK(json_integer_value(json_object_get(j, "receipt_time")) > 0);
            }
            json_decref(j);
            snprintf(rel, sizeof rel, "outbox/round-%d.env", r);
            CHECK(!fio_exists(ts_in(path, f.node[i].state, rel)));
        }
        char *metrics = ts_read(ts_in(path, f.node[i].state, "metrics.jsonl"), NULL);
        int lines = 0;
        for (char *p = metrics; p && *p; p++) lines += *p == '\n';
        CHECK_MSG(lines == 2, "%s: %d metrics lines", f.node[i].name, lines);
        free(metrics);
        char v1[65], current[TS_PATH];
        ft_version(&f, 1, v1);
        CHECK(ts_contains(ts_in(current, f.node[i].state, "current.json"), v1));
    }
    ft_teardown(&f);
}

int main(void) {
    run_exact("llama", 1);
    run_exact("qwen3", 0);
    run_exact("apertus", 0);
    return check_finish();
}
