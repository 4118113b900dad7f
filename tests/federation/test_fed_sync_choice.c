/* The node's sync choice (docs/federation.md, "What a round moves"): when
 * the ROUND's base_size says the low-rank update is not smaller than the
 * version, the node downloads the version instead.
 *
 * Five members of rank 32 under the exact merge make an update of rank 160
 * for the tiny model's q_proj, v_proj and down_proj: its file (about 600
 * kB) is larger than the whole model (536 kB), and every node syncs round 2
 * "full" with a log line that says why, its download the version's size.
 * With rank 4 the update (rank 20) is the smaller download and every node
 * syncs round 2 "lowrank". With versions sharded (FEDLORA_SHARD_BYTES, 100
 * kB shards) the ROUND's base_size is the shards summed, and the rank-32
 * nodes again take the version (without that size they would take the
 * larger update). */
#include "tests/federation/fed_test.h"
#include "wire/version.h"

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

/* The bytes of version `hex` in the aggregator's store: its one file, or
 * its shards summed (the index's fedlora_shards). */
static uint64_t version_size(const ft_fed *f, const char *hex, int sharded) {
    char path[TS_PATH], rel[160];
    snprintf(rel, sizeof rel, "versions/%s/%s", hex,
             sharded ? VERSION_INDEX_FILE : VERSION_MODEL_FILE);
    ts_in(path, f->agg_state, rel);
    if (!sharded) return file_size(path);
    version_index *x = NULL;
    uint64_t bytes = version_index_read(&x, path, NULL) == 0 ? x->bytes : 0;
    version_index_free(x);
    return bytes;
}

static void run(const char *tag, int rank, const char *want, int sharded) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    o.steps = 2;
    o.rank = rank;
    ft_fed f;
    if (sharded) setenv("FEDLORA_SHARD_BYTES", "100000", 1); /* inherited by every process */
    if (ft_setup(&f, tag, 5, &o) != 0 || ft_start_aggregator(&f) != 0) {
        CHECK_MSG(0, "%s: %s", tag, err_msg());
        return;
    }
    ft_run_nodes(&f, f.endpoint, 180);
    char v1[65], path[TS_PATH];
    ft_version(&f, 1, v1);
    uint64_t model_bytes = version_size(&f, v1, sharded);
    CHECK_MSG(model_bytes > 0, "%s: version %s has no %s", tag, v1,
              sharded ? "index (not sharded)" : "model.safetensors");
    for (int i = 0; i < f.n; i++) {
        sync_line s = {.round = 2};
        CHECK(harness_jsonl_each(ts_in(path, f.node[i].state, "metrics.jsonl"), take_sync, &s) ==
              1);
        CHECK_MSG(!strcmp(s.sync, want), "%s, %s: round 2 synced '%s', want '%s'", tag,
                  f.node[i].name, s.sync, want);
        if (!strcmp(want, "full")) {
            /* Sharded: shards unchanged since round 1 are linked, not fetched. */
            CHECK_MSG(sharded ? s.bytes > 0 && s.bytes <= model_bytes + 65536
                              : s.bytes == model_bytes,
                      "%s: downloaded %llu bytes, the version has %llu", f.node[i].name,
                      (unsigned long long)s.bytes, (unsigned long long)model_bytes);
            CHECK(ts_contains(f.node[i].log, "is not smaller than the version"));
        } else {
            CHECK_MSG(s.bytes < model_bytes, "%s: the update took %llu bytes", f.node[i].name,
                      (unsigned long long)s.bytes);
        }
    }
    ft_teardown(&f);
    if (sharded) unsetenv("FEDLORA_SHARD_BYTES");
}

int main(void) {
    run("rank32", 32, "full", 0);
    run("rank4", 4, "lowrank", 0);
    run("rank32-sharded", 32, "full", 1);
    return check_finish();
}
