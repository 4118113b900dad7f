/* test_stored_hash — issue 17, case 6: stored versions and update objects
 * are hashed again when they are loaded and before they are served or
 * merged on. One flipped byte in a stored base, a restart, and the
 * aggregator used to merge on the damaged base and publish a different
 * version (exit 0); nodes took it, since they check the hash the aggregator
 * announces.
 *
 *   1. single file: a byte flipped in the stored version a round is open
 *      on is refused at the restart (agg_open), with a message that names
 *      the file, says that it does not hash to its name and what to do;
 *      with the byte put back, the aggregator starts and publishes the same
 *      version the undamaged run did;
 *   2. sharded (FEDLORA_SHARD_BYTES): the shards of the version this
 *      process published count as checked with it (served without being
 *      hashed again); a byte flipped in one shard is refused at the
 *      restart, naming that shard;
 *   3. the round's low-rank update object (STATE/objects) damaged: refused
 *      at the restart;
 *   4. serving: an older version that the start does not check (the
 *      imported base, two rounds back), damaged, is not served: GET_MODEL
 *      gets INTERNAL, the aggregator keeps running and serves what is
 *      intact. */
#include "aggregator/agg.h"
#include "aggregator/state.h"
#include "aggregator/store.h"
#include "tests/aggregator/agg_test.h"
#include "wire/crypto.h"
#include "wire/version.h"

#include <dirent.h>
#include <sys/stat.h>

static struct fed F;
static const uint64_t T0 = 1800000000;

/* Member i's delta for the open round; 1 on a RECEIPT. */
static int submit(agg *a, int i, uint64_t now) {
    return fed_submit(&F, a, i, 30 + (uint64_t)i, now, NULL, NULL).type == MSG_RECEIPT;
}

/* Every member submits and the round closes: 1 when it was published. */
static int run_round(agg *a, uint64_t now) {
    uint64_t r = agg_current_round(a);
    int took = 1;
    for (int i = 0; i < FED_MEMBERS; i++) took &= submit(a, i, now);
    return took && agg_tick(a, now) == 0 && agg_current_round(a) == r + 1;
}

/* Flips one bit of the byte at offset (len / 2 when offset < 0) of path. */
static void flip(const char *path, long offset) {
    char *bytes;
    size_t len;
    CHECK_OK(fio_read_all(path, 1 << 26, &bytes, &len));
    size_t at = offset < 0 ? len / 2 : (size_t)offset;
    bytes[at] ^= 0x10;
    CHECK_OK(fio_write_atomic(path, bytes, len, 0644));
    free(bytes);
}

/* A config in sub/ whose first round is published; v1 its version. */
static agg *first_round(const char *sub, agg_config *c, const char *rounds, uint8_t v1[32]) {
    char cfg[600];
    agg *a;
    fed_config(&F, sub, cfg, sizeof cfg, rounds, NULL);
    CHECK_OK(agg_config_load(c, cfg));
    CHECK_OK(agg_open(&a, c, T0));
    CHECK(run_round(a, T0 + 1));
    agg_current_base(a, v1); /* round 1's version, round 2's base */
    return a;
}

/* The open refused, with a message that says what, which file and what to do. */
static void check_refused(const agg_config *c, const char *file, uint64_t now) {
    agg *a;
    int opened = agg_open(&a, c, now) == 0;
    CHECK_MSG(!opened,
              "the aggregator started on a stored file (%s) that no longer hashes to "
              "its name",
              file);
    if (opened) {
        agg_close(a);
        return;
    }
    const char *m = err_msg();
    CHECK_MSG(strstr(m, "does not hash to its name") && strstr(m, file) &&
                  strstr(m, "was damaged") && strstr(m, "Restore"),
              "the refusal does not say what, where and what to do: %s", m);
}

static void single_file(void) {
    agg_config c;
    uint8_t v1[32], again[32];
    agg *a = first_round("single", &c, "count = 2; quorum = 3; deadline = 100;", v1);
    agg_close(a);
    char path[4300];
    CHECK_OK(store_model_path(c.state, v1, path, sizeof path));
    flip(path, -1);
    check_refused(&c, path, T0 + 2);

    /* The remedy the message gives: the right bytes back, and it goes on to
     * publish round 2 from the intact base. */
    flip(path, -1);
    CHECK_OK(agg_open(&a, &c, T0 + 3));
    for (int i = 0; i < FED_MEMBERS; i++) CHECK(submit(a, i, T0 + 4));
    CHECK(agg_tick(a, T0 + 4) == 0 && agg_get_state(a) == AGG_FINISHED);
    agg_current_base(a, again);
    agg_close(a);
    CHECK(memcmp(again, v1, 32) != 0); /* round 2 published a version of its own */
    agg_config_free(&c);
}

static void sharded(void) {
    char base[700];
    struct stat st;
    snprintf(base, sizeof base, "%s/base/model.safetensors", F.dir);
    CHECK_OK(stat(base, &st) == 0 ? 0 : -1);
    char knob[32];
    snprintf(knob, sizeof knob, "%lld", (long long)st.st_size / 3);
    setenv("FEDLORA_SHARD_BYTES", knob, 1);
    agg_config c;
    uint8_t v1[32];
    agg *a = first_round("sharded", &c, "count = 2; quorum = 3; deadline = 100;", v1);
    CHECK(store_is_sharded(c.state, v1) == 1);
    char dir[4300], shard[4700];
    CHECK_OK(store_version_dir(c.state, v1, dir, sizeof dir));
    /* The shards of the version this process published count as checked
     * with it: GET_MODEL serves each one (under its own hash) without
     * hashing it again, as it serves the version (an 8B model's 5 GB shard
     * was hashed inside the first request, past the node's timeout). */
    {
        char index[4400];
        version_index *x = NULL;
        snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
        CHECK_OK(version_index_read(&x, index, NULL));
        CHECK(agg_is_verified(a, v1));
        for (int i = 0; x && i < x->n_shards; i++)
            CHECK_MSG(agg_is_verified(a, x->shards[i].hash),
                      "shard %s of the version just published would be hashed again when served",
                      x->shards[i].name);
        CHECK(x && x->n_shards >= 2);
        version_index_free(x);
    }
    agg_close(a);
    unsetenv("FEDLORA_SHARD_BYTES");
    snprintf(shard, sizeof shard, "%s/model-00002-of-", dir);
    /* The second shard, whatever the count: found by its prefix. */
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, "model-00002-of-", 15)) {
            snprintf(shard, sizeof shard, "%s/%s", dir, e->d_name);
            found = 1;
        }
    if (d) closedir(d);
    CHECK_MSG(found, "version %s has no second shard", dir);
    flip(shard, -1);
    check_refused(&c, shard, T0 + 2);
    agg_config_free(&c);
}

static void update_object(void) {
    agg_config c;
    uint8_t v1[32];
    agg *a = first_round("update", &c, "count = 2; quorum = 3; deadline = 100;", v1);
    agg_close(a);
    /* The objects of a single-file federation with a fixed member list: the
     * round's low-rank update only. */
    char dir[4300], obj[4700];
    snprintf(dir, sizeof dir, "%s/objects", c.state);
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(obj, sizeof obj, "%s/%s", dir, e->d_name);
            n++;
        }
    if (d) closedir(d);
    CHECK_MSG(n == 1, "%s holds %d objects, not the one update", dir, n);
    flip(obj, -1);
    check_refused(&c, obj, T0 + 2);
    agg_config_free(&c);
}

static struct msg get_model(agg *a, const uint8_t hash[32], uint64_t now) {
    struct msg m = {.type = MSG_GET_MODEL};
    memcpy(m.get_model.version, hash, 32);
    m.get_model.offset = 0;
    m.get_model.length = 4096;
    return fed_ask(a, fed_peer(0), &m, now);
}

static void serving(void) {
    agg_config c;
    uint8_t v1[32], v0[32];
    agg *a = first_round("serve", &c, "count = 3; quorum = 3; deadline = 100;", v1);
    CHECK(fed_round_base(&c, 1, v0) == 0);
    CHECK(run_round(a, T0 + 2));
    agg_close(a);
    /* The imported base is two rounds back: the restart does not hash it. */
    char path[4300];
    CHECK_OK(store_model_path(c.state, v0, path, sizeof path));
    flip(path, -1);
    CHECK_OK(agg_open(&a, &c, T0 + 3));
    struct msg r = get_model(a, v0, T0 + 3);
    CHECK(fed_is_error(&r, MSG_ERR_INTERNAL, "damaged"));
    r = get_model(a, v0, T0 + 3); /* refused again, not served on a retry */
    CHECK(fed_is_error(&r, MSG_ERR_INTERNAL, "damaged"));
    r = get_model(a, v1, T0 + 3); /* an intact version is served */
    CHECK(r.type == MSG_MODEL_CHUNK && r.model_chunk.offset == 0);
    agg_close(a);
    agg_config_free(&c);
}

int main(void) {
    fed_init(&F);
    single_file();
    sharded();
    update_object();
    serving();
    model_free(F.base);
    return check_finish();
}
