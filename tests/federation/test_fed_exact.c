/* A 3-node, 2-round federation of real processes on loopback ends with model
 * bytes equal to an offline recomputation from the same sealed deltas
 * (agg_recompute: the stored base version and the inbox's envelopes, merged
 * again), and the nodes' durable records tell the same story: one receipt per
 * round, an empty outbox, the last version synced. A node that is not a
 * member is turned away. Run on the tiny Llama, and again on the tiny Qwen3
 * and Apertus (QK-norm weights, xIELU's parameters and 0-dimensional buffers
 * in the base, carried through the versions by name like every tensor),
 * Gemma 2, Gemma 3 and Phi-3 (the fused qkv_proj and gate_up_proj as
 * targets), BLOOM (query_key_value, dense_4h_to_h) and Mixtral (q, v and
 * every expert's w2, the experts' adapters merged into their own weights). */
#include "aggregator/agg.h"
#include "aggregator/config.h"
#include "tests/federation/fed_test.h"

static void run_exact(const char *arch, const char *targets, int outsider) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    o.arch = arch;
    if (targets) o.targets = targets;
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
        CHECK(ts_contains(log, "refused this node's key (CURVE, ZAP status 400)"));
        /* A member whose aggregator.identity is not the aggregator's key (a
         * wrong file, or a fake aggregator at that address): no secure
         * channel, so no byte of a model or of a delta goes either way. */
        snprintf(text, sizeof text,
                 "keys = { dir = \"../keys\"; name = \"%s\"; };\n"
                 "consortium = \"fed-test\";\n"
                 "aggregator = { endpoint = \"%s\"; identity = \"../keys/uni-outsider.id\"; };\n"
                 "base_model = \"../base\"; data = \"none.txt\"; state = \"state2\";\n",
                 f.node[0].name, f.endpoint);
        CHECK_OK(ts_write(ts_in(cfg, dir, "wrong-agg.cfg"), text));
        CHECK(ft_run(ts_in(log, dir, "wrong-agg.log"), 30, "node", "--config", cfg, NULL) == 1);
        CHECK(ts_contains(log, "does not hold the key of aggregator.identity"));
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
    run_exact("llama", NULL, 1);
    run_exact("qwen3", NULL, 0);
    run_exact("apertus", NULL, 0);
    run_exact("gemma2", NULL, 0);
    run_exact("gemma3_text", NULL, 0);
    /* Phi-3's attention input and MLP are fused modules */
    run_exact("phi3", "\"qkv_proj\", \"gate_up_proj\", \"down_proj\"", 0);
    run_exact("bloom", "\"query_key_value\", \"dense_4h_to_h\"", 0);
    run_exact("mixtral", "\"q_proj\", \"v_proj\", \"w2\"", 0);
    return check_finish();
}
