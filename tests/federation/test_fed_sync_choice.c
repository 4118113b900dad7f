/* The node's sync choice (docs/federation.md, "What a round moves"): when
 * the ROUND's base_size says the low-rank update is not smaller than the
 * version, the node downloads the version instead.
 *
 * Five members of rank 32 under the exact merge make an update of rank 160
 * for the tiny model's q_proj, v_proj and down_proj: its file (about 600
 * kB) is larger than the whole model (536 kB), and every node syncs round 2
 * "full" with a log line that says why, its download the version's size.
 * With rank 4 the update (rank 20) is the smaller download and every node
 * syncs round 2 "lowrank". */
#include "tests/federation/fed_test.h"

#include <sys/stat.h>

typedef struct {
    int round;
    char sync[16];
    uint64_t bytes;
} sync_line;

static int take_sync(void *arg, json_t *j) {
    sync_line *s = arg;
    if (json_integer_value(json_object_get(j, "round")) != s->round) return 0;
    json_t *m = json_object_get(j, "sync");
    snprintf(s->sync, sizeof s->sync, "%s", json_is_string(m) ? json_string_value(m) : "");
    s->bytes = (uint64_t)json_integer_value(json_object_get(j, "download_bytes"));
    return 1;
}

static uint64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static void run(const char *tag, int rank, const char *want) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    o.steps = 2;
    o.rank = rank;
    ft_fed f;
    if (ft_setup(&f, tag, 5, &o) != 0 || ft_start_aggregator(&f) != 0) {
        CHECK_MSG(0, "%s: %s", tag, err_msg());
        return;
    }
    ft_run_nodes(&f, f.endpoint, 180);
    char v1[65], path[TS_PATH], rel[128];
    ft_version(&f, 1, v1);
    snprintf(rel, sizeof rel, "versions/%s/model.safetensors", v1);
    uint64_t model_bytes = file_size(ts_in(path, f.agg_state, rel));
    CHECK(model_bytes > 0);
    for (int i = 0; i < f.n; i++) {
        sync_line s = {.round = 2};
        CHECK(harness_jsonl_each(ts_in(path, f.node[i].state, "metrics.jsonl"), take_sync, &s) ==
              1);
        CHECK_MSG(!strcmp(s.sync, want), "%s, %s: round 2 synced '%s', want '%s'", tag,
                  f.node[i].name, s.sync, want);
        if (!strcmp(want, "full")) {
            CHECK_MSG(s.bytes == model_bytes, "%s: downloaded %llu bytes, the version has %llu",
                      f.node[i].name, (unsigned long long)s.bytes, (unsigned long long)model_bytes);
            CHECK(ts_contains(f.node[i].log, "is not smaller than the version"));
        } else {
            CHECK_MSG(s.bytes < model_bytes, "%s: the update took %llu bytes", f.node[i].name,
                      (unsigned long long)s.bytes);
        }
    }
    ft_teardown(&f);
}

int main(void) {
    run("rank32", 32, "full");
    run("rank4", 4, "lowrank");
    return check_finish();
}
