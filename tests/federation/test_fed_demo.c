/* `fedlora demo` runs a whole federation (aggregator + 3 university
 * processes, 3 rounds) and the merged model's loss on the global held-out
 * set falls round after round; its outputs are there and consistent: the
 * metrics lines, the SVG report, and a final model directory whose bytes are
 * the last published version. */
#include "tests/federation/fed_test.h"

static char root[] = "/tmp/fl_fed_demo_XXXXXX";

int main(void) {
    setenv("OMP_WAIT_POLICY", "passive", 0);
    CHECK(mkdtemp(root) != NULL);
    char out[FT_PATH], log[FT_PATH], path[FT_PATH];
    ft_in(out, root, "demo");
    ft_in(log, root, "demo.log");
    pid_t p = ft_spawn(log, "demo", "--out", out, NULL); /* the defaults: 3 nodes, 3 rounds */
    CHECK_MSG(ft_wait(p, 240) == 0, "fedlora demo failed (see %s)", log);

    /* metrics.jsonl: rounds 0 (the base) to 3, the global loss falling. */
    char *text = ft_read(ft_in(path, out, "metrics.jsonl"));
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
    char model_dir[FT_PATH], hash[65] = "";
    ft_in(model_dir, out, "model");
    CHECK_OK(ft_hash_file(ft_in(path, model_dir, "model.safetensors"), hash));
    CHECK_MSG(strcmp(hash, last_version) == 0, "model/ holds %s, the last version is %s", hash,
              last_version);
    CHECK(fio_exists(ft_in(path, model_dir, "tokenizer.json")));
    model *m = NULL;
    CHECK_OK(checkpoint_load(&m, model_dir));
    model_free(m);

    /* The report: one self-contained SVG with the global curve and a curve
     * per node, and the work directory gone (no --keep). */
    char *svg = ft_read(ft_in(path, out, "report.svg"));
    CHECK(svg && strncmp(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"", 39) == 0);
    CHECK(svg && strstr(svg, "</svg>") && !strstr(svg, "href"));
    int polylines = 0;
    for (const char *q = svg; q && (q = strstr(q, "<polyline")); q++) polylines++;
    CHECK_MSG(polylines == 1 + 2 * 3, "%d curves", polylines);
    free(svg);
    CHECK(!fio_exists(ft_in(path, out, "work")));

    /* Another run into the same directory is refused, nothing overwritten. */
    char log2[FT_PATH];
    p = ft_spawn(ft_in(log2, root, "again.log"), "demo", "--out", out, NULL);
    CHECK(ft_wait(p, 60) == 1);
    CHECK(ft_contains(log2, "not empty"));

    /* --keep keeps every process's files; --nodes and --rounds are obeyed. */
    char out2[FT_PATH];
    ft_in(out2, root, "kept");
    p = ft_spawn(log2, "demo", "--out", out2, "--nodes", "2", "--rounds", "1", "--keep", NULL);
    CHECK_MSG(ft_wait(p, 120) == 0, "fedlora demo --keep failed (see %s)", log2);
    CHECK(fio_exists(ft_in(path, out2, "work/aggregator/aggregator.log")));
    CHECK(fio_exists(ft_in(path, out2, "work/nodes/uni-medicine/state/receipts/round-1.json")));
    CHECK(!fio_exists(ft_in(path, out2, "work/nodes/uni-law")));

    if (!check_failed) {
        char cmd[FT_PATH + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
        CHECK(system(cmd) == 0);
    }
    return check_finish();
}
