/* `fedlora demo` runs a whole federation (aggregator + 3 university
 * processes, 3 rounds) and the merged model's loss on the global held-out
 * set falls round after round; its outputs are there and consistent: the
 * metrics lines, the SVG report, and a final model directory whose bytes are
 * the last published version. --keep, --nodes, --rounds are obeyed; --seed
 * makes the base model and the nodes' training (the same seed, the same
 * bytes; another seed, others; init-model --initializer-range 0.1 --seed N
 * writes the same base); --policy aggregates under a policy file;
 * --data runs the universities of a partition directory (docs/corpora.md)
 * and judges every version per domain (--eval-every thins that out). */
#include "tests/federation/fed_test.h"

/* The version the last line of a demo's metrics.jsonl names ("" if none). */
static void last_version_of(const char *out, char version[65]) {
    char path[TS_PATH];
    char *text = ts_read(ts_in(path, out, "metrics.jsonl"), NULL);
    version[0] = '\0';
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *v = j ? json_object_get(j, "version") : NULL;
        if (json_is_string(v)) snprintf(version, 65, "%s", json_string_value(v));
        json_decref(j);
    }
    free(text);
}

/* --seed N: the base model made from N and every node's config saying
 * seed = N; the same seed twice gives the same bytes, another seed others. */
static void test_seed(const char *root) {
    char out[3][TS_PATH], log[TS_PATH], v[3][65], base[3][65], path[TS_PATH];
    const char *seeds[3] = {"7", "7", "8"};
    ts_in(log, root, "seed.log");
    for (int k = 0; k < 3; k++) {
        char name[16];
        snprintf(name, sizeof name, "seed-%d", k);
        ts_in(out[k], root, name);
        CHECK_MSG(ft_run(log, 120, "demo", "--out", out[k], "--nodes", "1", "--rounds", "1",
                         "--steps", "2", "--seed", seeds[k], "--keep", NULL) == 0,
                  "fedlora demo --seed %s failed (see %s)", seeds[k], log);
        last_version_of(out[k], v[k]);
        CHECK_OK(harness_hash_file(ts_in(path, out[k], "work/base/model.safetensors"), base[k]));
    }
    CHECK(strlen(v[0]) == 64 && strcmp(v[0], v[1]) == 0 && strcmp(v[0], v[2]) != 0);
    CHECK(strcmp(base[0], base[1]) == 0 && strcmp(base[0], base[2]) != 0);
    CHECK(ts_contains(ts_in(path, out[2], "work/nodes/uni-astronomy/node.cfg"), "seed = 8;"));
    CHECK(ts_contains(log, "seed 7 (the base model and every node's training)"));
    /* The demo's base is init-model's tiny Llama at initializer_range 0.1
     * (docs/federation.md): the same seed writes the same bytes, so the
     * demo's experiments can be repeated with the plain commands. */
    char made[TS_PATH], made_hash[65];
    CHECK_MSG(ft_run(log, 60, "init-model", "--arch", "llama", "--preset", "tiny",
                     "--initializer-range", "0.1", "--seed", "7", "--out",
                     ts_in(made, root, "init-model-7"), NULL) == 0,
              "fedlora init-model failed (see %s)", log);
    CHECK_OK(harness_hash_file(ts_in(path, made, "model.safetensors"), made_hash));
    CHECK_MSG(strcmp(made_hash, base[0]) == 0, "init-model --seed 7 gives %s, the demo's base %s",
              made_hash, base[0]);
    /* Refused: a seed that is not a number. */
    char bad[TS_PATH];
    CHECK(ft_run(log, 30, "demo", "--out", ts_in(bad, root, "seed-bad"), "--seed", "-1", NULL) ==
          1);
}

/* --policy FILE: the aggregator runs under it (its rule in the round's
 * metrics), a copy next to its config; a missing file is refused. */
static void test_policy(const char *root) {
    char out[TS_PATH], log[TS_PATH], pol[TS_PATH], path[TS_PATH];
    ts_in(pol, root, "median.policy");
    CHECK_OK(ts_write(pol, "weighting = { by = \"equal\"; };\n"
                           "robust = { rule = \"median\"; };\n"
                           "rounds = { quorum = 2; deadline_s = 300; };\n"));
    ts_in(out, root, "policy");
    ts_in(log, root, "policy.log");
    CHECK_MSG(ft_run(log, 120, "demo", "--out", out, "--nodes", "2", "--rounds", "1", "--steps",
                     "2", "--policy", pol, "--keep", NULL) == 0,
              "fedlora demo --policy failed (see %s)", log);
    char state[TS_PATH];
    json_t *m = harness_round_metrics(ts_in(state, out, "work/aggregator/state"), 1);
    json_t *rule = m ? json_object_get(m, "rule") : NULL,
           *st = m ? json_object_get(m, "status") : NULL;
    CHECK_MSG(json_is_string(rule) && !strcmp(json_string_value(rule), "median"),
              "round 1 was not aggregated under the policy file");
    CHECK(json_is_string(st) && !strcmp(json_string_value(st), "published"));
    json_decref(m);
    CHECK(ts_same_file(pol, ts_in(path, out, "work/aggregator/policy.cfg")));
    CHECK(ts_contains(ts_in(path, out, "work/aggregator/aggregator.cfg"),
                      "policy = \"policy.cfg\";"));
    char v[65];
    last_version_of(out, v);
    CHECK(strlen(v) == 64);
    /* A policy file that is not there. */
    char bad[TS_PATH];
    CHECK(ft_run(log, 30, "demo", "--out", ts_in(bad, root, "policy-bad"), "--policy",
                 ts_in(path, root, "no-such.policy"), NULL) == 1);
    CHECK(ts_contains(log, "no such file"));
}

/* --data DIR: the universities and held-out domains of a partition
 * directory, as bench/data/partition lays it out (made here by hand); every
 * evaluated round has each domain's loss, and the global loss is their
 * token-weighted mean; --eval-every 2 leaves round 1 unevaluated. */
static void test_data(const char *root) {
    char dir[TS_PATH], path[TS_PATH], out[TS_PATH], log[TS_PATH];
    ts_in(dir, root, "partition");
    const char *unis[2] = {"uni-stars", "uni-law"}, *doms[2] = {"astronomy", "law"};
    for (int i = 0; i < 2; i++) {
        const demo_domain *d = NULL;
        for (int k = 0; k < demo_num_domains; k++)
            if (!strcmp(demo_domains[k].name, doms[i])) d = &demo_domains[k];
        char rel[64];
        snprintf(rel, sizeof rel, "%s/train.txt", unis[i]);
        CHECK_OK(fio_mkdirs(ts_in(path, dir, unis[i]), 0755));
        CHECK_OK(ts_write(ts_in(path, dir, rel), d->train));
        snprintf(rel, sizeof rel, "heldout/%s.txt", doms[i]);
        CHECK_OK(fio_mkdirs(ts_in(path, dir, "heldout"), 0755));
        CHECK_OK(ts_write(ts_in(path, dir, rel), d->heldout));
    }
    CHECK_OK(ts_write(ts_in(path, dir, "PARTITION"),
                      "university\tdomain\tdocuments\tbytes\tproportion\n"
                      "uni-stars\tastronomy\t11\t1500\t1\nuni-stars\tlaw\t0\t0\t0\n"
                      "uni-law\tastronomy\t0\t0\t0\nuni-law\tlaw\t11\t1500\t1\n"));
    ts_in(out, root, "data");
    ts_in(log, root, "data.log");
    CHECK_MSG(ft_run(log, 120, "demo", "--out", out, "--data", dir, "--rounds", "2", "--steps", "2",
                     "--eval-every", "2", NULL) == 0,
              "fedlora demo --data failed (see %s)", log);
    char *text = ts_read(ts_in(path, out, "metrics.jsonl"), NULL);
    int lines = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL), *doms_j = json_object_get(j, "domains"),
               *g = json_object_get(j, "global_loss"), *nodes = json_object_get(j, "nodes");
        if (lines == 1) {
            CHECK_MSG(json_is_null(g) && json_object_size(doms_j) == 0,
                      "round 1 was evaluated with --eval-every 2");
        } else {
            double a = json_number_value(json_object_get(doms_j, "astronomy")),
                   l = json_number_value(json_object_get(doms_j, "law"));
            CHECK_MSG(json_object_size(doms_j) == 2 && a > 0 && l > 0, "line %d", lines);
            /* The global loss is a weighted mean of the two. */
            CHECK(json_is_real(g) && json_real_value(g) >= fmin(a, l) - 1e-12 &&
                  json_real_value(g) <= fmax(a, l) + 1e-12);
        }
        if (lines > 0) {
            CHECK(json_array_size(nodes) == 2);
            json_t *n0 = json_array_get(nodes, 0);
            const char *name = json_string_value(json_object_get(n0, "name")),
                       *domain = json_string_value(json_object_get(n0, "domain"));
            CHECK_MSG(name && domain && !strcmp(name, "uni-law") && !strcmp(domain, "law"),
                      "the first node is %s (%s)", name ? name : "?", domain ? domain : "?");
        }
        lines++;
        json_decref(j);
    }
    free(text);
    CHECK_MSG(lines == 3, "%d metrics lines", lines);
    /* A directory that is not a partition, and --nodes against it. */
    char bad[TS_PATH];
    CHECK(ft_run(log, 30, "demo", "--out", ts_in(bad, root, "data-bad"), "--data", root, NULL) ==
          1);
    CHECK(ts_contains(log, "no held-out files"));
    CHECK(ft_run(log, 30, "demo", "--out", bad, "--data", dir, "--nodes", "3", NULL) == 1);
    CHECK(ts_contains(log, "has 2 universities"));
}

int main(void) {
    const char *root = ts_dir();
    char out[TS_PATH], log[TS_PATH], path[TS_PATH];
    ts_in(out, root, "demo");
    ts_in(log, root, "demo.log");
    /* the defaults: 3 nodes, 3 rounds */
    CHECK_MSG(ft_run(log, 240, "demo", "--out", out, NULL) == 0, "fedlora demo failed (see %s)",
              log);

    /* metrics.jsonl: rounds 0 (the base) to 3, the global loss falling. */
    char *text = ts_read(ts_in(path, out, "metrics.jsonl"), NULL);
    CHECK(text != NULL);
    double prev = INFINITY;
    int lines = 0;
    char last_version[65] = "";
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        CHECK(j != NULL);
        if (!j) continue;
        double g = json_number_value(json_object_get(j, "global_loss"));
        json_t *nodes = json_object_get(j, "nodes"), *v = json_object_get(j, "version");
        CHECK_MSG(json_integer_value(json_object_get(j, "round")) == lines, "line %d", lines);
        CHECK_MSG(g < prev, "round %d: global held-out loss %g, after %g", lines, g, prev);
        CHECK(json_is_string(v) && strlen(json_string_value(v)) == 64);
        if (json_is_string(v))
            snprintf(last_version, sizeof last_version, "%s", json_string_value(v));
        if (lines > 0) {
            CHECK(json_array_size(nodes) == 3);
            CHECK(json_integer_value(json_object_get(j, "bytes")) > 0);
            for (size_t i = 0; i < json_array_size(nodes); i++) {
                json_t *n = json_array_get(nodes, i);
                CHECK(json_is_real(json_object_get(n, "loss_before")));
                CHECK(json_is_real(json_object_get(n, "loss_after")));
            }
        }
        prev = g;
        lines++;
        json_decref(j);
    }
    free(text);
    CHECK_MSG(lines == 4, "%d metrics lines", lines);

    /* The final model: a loadable directory holding the last version's bytes. */
    char model_dir[TS_PATH], hash[65] = "";
    ts_in(model_dir, out, "model");
    CHECK_OK(harness_hash_file(ts_in(path, model_dir, "model.safetensors"), hash));
    CHECK_MSG(strcmp(hash, last_version) == 0, "model/ holds %s, the last version is %s", hash,
              last_version);
    CHECK(fio_exists(ts_in(path, model_dir, "tokenizer.json")));
    model *m = NULL;
    CHECK_OK(checkpoint_load(&m, model_dir));
    model_free(m);

    /* The report: one self-contained SVG with the global curve and a curve
     * per node, and the work directory gone (no --keep). */
    char *svg = ts_read(ts_in(path, out, "report.svg"), NULL);
    CHECK(svg && strncmp(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"", 39) == 0);
    CHECK(svg && strstr(svg, "</svg>") && !strstr(svg, "href"));
    int polylines = 0;
    for (const char *q = svg; q && (q = strstr(q, "<polyline")); q++) polylines++;
    CHECK_MSG(polylines == 1 + 2 * 3, "%d curves", polylines);
    free(svg);
    CHECK(!fio_exists(ts_in(path, out, "work")));

    /* Another run into the same directory is refused, nothing overwritten. */
    char log2[TS_PATH];
    CHECK(ft_run(ts_in(log2, root, "again.log"), 60, "demo", "--out", out, NULL) == 1);
    CHECK(ts_contains(log2, "not empty"));

    /* --keep keeps every process's files; --nodes and --rounds are obeyed. */
    char out2[TS_PATH];
    ts_in(out2, root, "kept");
    CHECK_MSG(ft_run(log2, 120, "demo", "--out", out2, "--nodes", "2", "--rounds", "1", "--keep",
                     NULL) == 0,
              "fedlora demo --keep failed (see %s)", log2);
    CHECK(fio_exists(ts_in(path, out2, "work/aggregator/aggregator.log")));
    CHECK(fio_exists(ts_in(path, out2, "work/nodes/uni-medicine/state/receipts/round-1.json")));
    CHECK(!fio_exists(ts_in(path, out2, "work/nodes/uni-law")));

    test_seed(root);
    test_policy(root);
    test_data(root);
    return check_finish();
}
