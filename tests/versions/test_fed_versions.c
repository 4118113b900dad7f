/* Sharded and complete versions with real processes on loopback, the shard
 * limit forced down to 100 kB (FEDLORA_SHARD_BYTES, inherited by the
 * aggregator and the nodes) so that the tiny model is written as transformers
 * writes a model past 5 GB:
 *   1. 3 nodes, 3 rounds, the default policy: the imported base and every
 *      round's version are sharded in the store, sealed (version_verify) and
 *      each shard is served as an object that is the version's own file (a
 *      hard link); every version directory is complete (the base's tokenizer
 *      files, chat template and named templates byte for byte,
 *      generation_config.json, a card naming the version, its parent and the
 *      round); versions/latest names the last; the offline recomputation
 *      gives the published version; every node downloads round 1's base in
 *      full (index and shards) and makes the bases of rounds 2 and 3 from the
 *      low-rank updates, and holds exactly the aggregator's version.
 *      `fedlora export`: latest and a prefix, --link, refusals (a full --out,
 *      a prefix that names nothing, a changed shard in the store, a symbolic
 *      link planted in the store), the note for a version without its card;
 *      the export loads in `fedlora eval`.
 *   2. 2 nodes, 2 rounds under a median policy (no low-rank update: full
 *      downloads), behind a proxy: round 2's ROUND says the base is sharded;
 *      a byte of one changed shard is flipped on its way to node 0, once
 *      (node 1 is held back meanwhile): node 0 refuses those
 *      bytes, fetches the shard again and ends with the right version; the
 *      shards no round changed are linked from the version each node holds,
 *      not fetched (download_bytes: the index and the changed shards). */
#include "aggregator/store.h"
#include "tests/federation/fed_test.h"
#include "wire/version.h"

#define LP (2 * TS_PATH + 128)

static const char *TEMPLATE =
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}";

static int flip_byte(const char *path, uint64_t offset) {
    int fd = open(path, O_RDWR);
    unsigned char b = 0;
    int ok = fd >= 0 && pread(fd, &b, 1, (off_t)offset) == 1 && (b ^= 0x40, 1) &&
             pwrite(fd, &b, 1, (off_t)offset) == 1;
    if (fd >= 0) close(fd);
    return ok ? 0 : -1;
}

static void hex_of(const uint8_t h[32], char out[65]) {
    hex_encode(h, 32, out);
}

/* A round's base and version from the aggregator's metrics ("" when none). */
static void round_hashes(const ft_fed *f, int round, char base[65], char version[65]) {
    json_t *j = ft_round_metrics(f, round);
    json_t *b = j ? json_object_get(j, "base") : NULL,
           *v = j ? json_object_get(j, "version") : NULL;
    snprintf(base, 65, "%s", json_is_string(b) ? json_string_value(b) : "");
    snprintf(version, 65, "%s", json_is_string(v) ? json_string_value(v) : "");
    json_decref(j);
}

/* The index of a version in a state directory (NULL when unreadable). */
static version_index *index_of(const char *state, const char *hex) {
    char path[LP];
    version_index *x = NULL;
    snprintf(path, sizeof path, "%s/versions/%s/%s", state, hex, VERSION_INDEX_FILE);
    return version_index_read(&x, path, NULL) == 0 ? x : NULL;
}

/* The base gets what a real one has beside its weights: a chat template, a
 * tokenizer config, a named extra template. */
static void add_companions(const ft_fed *f) {
    char path[LP], dir[LP];
    CHECK_OK(ts_write(ts_in(path, f->base, "chat_template.jinja"), TEMPLATE));
    CHECK_OK(ts_write(ts_in(path, f->base, "tokenizer_config.json"),
                      "{\"eos_token\": \"<|endoftext|>\", \"model_max_length\": 128}\n"));
    ts_in(dir, f->base, "additional_chat_templates");
    CHECK_OK(fio_mkdirs(dir, 0755));
    CHECK_OK(ts_write(ts_in(path, dir, "tool_use.jinja"), "{{ messages[0]['content'] }}"));
}

/* Version hex in the aggregator's store: sharded, sealed, each shard served
 * as a hard link to the version's file, complete beside its weights. */
static void check_store_version(const ft_fed *f, const char *hex, int round, const char *parent) {
    char dir[LP], path[LP], obj[LP], want[LP];
    uint8_t h[32];
    snprintf(dir, sizeof dir, "%s/versions/%s", f->agg_state, hex);
    CHECK(hex_decode(hex, h, 32) == 0);
    CHECK_MSG(version_is_sharded(dir) == 1, "version %.16s... of round %d is not sharded", hex,
              round);
    CHECK_MSG(version_verify(dir, h) == 0, "%s", err_msg());
    version_index *x = index_of(f->agg_state, hex);
    CHECK(x && x->n_shards >= 4);
    for (int k = 0; x && k < x->n_shards; k++) {
        char shex[65];
        struct stat a, b;
        hex_of(x->shards[k].hash, shex);
        snprintf(obj, sizeof obj, "%s/objects/%s", f->agg_state, shex);
        ts_in(path, dir, x->shards[k].name);
        /* The object is this version's file, or an earlier version's
         * identical one. */
        CHECK_MSG(
            stat(obj, &a) == 0 && stat(path, &b) == 0 && a.st_nlink >= 2 && a.st_size == b.st_size,
            "shard %s of %.16s... is not served as objects/%.16s...", x->shards[k].name, hex, shex);
        if (a.st_ino != b.st_ino) CHECK(ts_same_file(obj, path));
    }
    version_index_free(x);
    static const char *const same[] = {"tokenizer.json", "tokenizer_config.json",
                                       "chat_template.jinja",
                                       "additional_chat_templates/tool_use.jinja"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
        CHECK_MSG(ts_same_file(ts_in(path, dir, same[i]), ts_in(want, f->base, same[i])),
                  "version %.16s... of round %d: %s differs from the base's", hex, round, same[i]);
    CHECK(ts_contains(ts_in(path, dir, "generation_config.json"), "\"eos_token_id\": 256"));
    ts_in(path, dir, "README.md");
    CHECK_MSG(ts_contains(path, hex), "the card of %.16s... does not name it", hex);
    CHECK(ts_contains(path, "library_name: transformers"));
    if (round > 0) {
        char line[64];
        snprintf(line, sizeof line, "| round | %d of 3 |", round);
        CHECK_MSG(ts_contains(path, parent) && ts_contains(path, line) &&
                      ts_contains(path, "| members merged | 3 |"),
                  "the card of round %d (%s)", round, path);
    } else {
        CHECK(ts_contains(path, "the base model"));
    }
}

static int export_run(const char *tag, const char *state, const char *version, const char *out,
                      int link) {
    return link ? ts_run(tag, "export", "--state", state, "--version", version, "--out", out,
                         "--link", NULL)
                : ts_run(tag, "export", "--state", state, "--version", version, "--out", out, NULL);
}

static void exports(const ft_fed *f, char v[4][65]) {
    char out[LP], path[LP], store[LP], prefix[16];
    uint8_t h[32];
    /* latest: the last version, verified where it lands, complete. */
    ts_in(out, f->root, "export-latest");
    int rc = export_run("export-latest", f->agg_state, "latest", out, 0);
    CHECK_RUN_OK(rc, "export-latest");
    CHECK(hex_decode(v[3], h, 32) == 0);
    CHECK_MSG(version_verify(out, h) == 0, "%s", err_msg());
    static const char *const files[] = {"config.json",         "tokenizer.json",
                                        "chat_template.jinja", "generation_config.json",
                                        "README.md",           "tokenizer_config.json"};
    snprintf(store, sizeof store, "%s/versions/%s", f->agg_state, v[3]);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char a[LP], b[LP];
        CHECK_MSG(ts_same_file(ts_in(a, out, files[i]), ts_in(b, store, files[i])), "%s", files[i]);
    }
    CHECK(ts_contains(ts_in(path, out, "additional_chat_templates/tool_use.jinja"), "messages"));
    char *said = ts_output("export-latest", "out");
    CHECK(said && strstr(said, v[3]));
    free(said);
    /* It loads and evaluates in fedlora (tokenizer found next to it). */
    rc = ts_run("eval-export", "eval", "--model", out, "--data", f->node[0].data, NULL);
    CHECK_RUN_OK(rc, "eval-export");
    /* A full --out is refused and left alone. */
    rc = export_run("export-again", f->agg_state, "latest", out, 0);
    CHECK_RUN_FAILS(rc, "export-again", "is not empty");
    /* A prefix; --link shares the store's files. */
    snprintf(prefix, sizeof prefix, "%.12s", v[1]);
    ts_in(out, f->root, "export-r1");
    rc = export_run("export-r1", f->agg_state, prefix, out, 1);
    CHECK_RUN_OK(rc, "export-r1");
    CHECK(hex_decode(v[1], h, 32) == 0 && version_verify(out, h) == 0);
    version_index *x = index_of(f->agg_state, v[1]);
    if (x) {
        struct stat a, b;
        snprintf(store, sizeof store, "%s/versions/%s/%s", f->agg_state, v[1], x->shards[0].name);
        CHECK(stat(ts_in(path, out, x->shards[0].name), &a) == 0 && stat(store, &b) == 0 &&
              a.st_ino == b.st_ino);
    }
    rc = export_run("export-none", f->agg_state, "00000000", ts_tmp("export-none"), 0);
    CHECK_RUN_FAILS(rc, "export-none", "0 versions");
    rc = export_run("export-bad", f->agg_state, "r1", ts_tmp("export-bad"), 0);
    CHECK_RUN_FAILS(rc, "export-bad", "names no version");
    /* A changed shard in the store: refused, naming it. */
    if (x) {
        snprintf(store, sizeof store, "%s/versions/%s/%s", f->agg_state, v[1], x->shards[1].name);
        CHECK_OK(flip_byte(store, 100));
        rc = export_run("export-tampered", f->agg_state, v[1], ts_tmp("export-tampered"), 0);
        CHECK_RUN_FAILS(rc, "export-tampered", "the shard was changed");
        CHECK(!fio_exists(ts_tmp("export-tampered"))); /* nothing half-written stays */
        CHECK_OK(flip_byte(store, 100));
    }
    version_index_free(x);
    /* A symbolic link planted in the store is not followed. */
    char saved[LP];
    snprintf(store, sizeof store, "%s/versions/%s/tokenizer.json", f->agg_state, v[2]);
    ts_in(saved, f->root, "saved-tokenizer.json");
    CHECK(rename(store, saved) == 0 && symlink("/etc/passwd", store) == 0);
    rc = export_run("export-link", f->agg_state, v[2], ts_tmp("export-link"), 0);
    CHECK_RUN_FAILS(rc, "export-link", "tokenizer.json is a symbolic link: not followed");
    CHECK(unlink(store) == 0 && rename(saved, store) == 0);
    /* A version published before versions were complete: exported with a
     * note. */
    snprintf(store, sizeof store, "%s/versions/%s/README.md", f->agg_state, v[0]);
    CHECK(unlink(store) == 0);
    rc = export_run("export-old", f->agg_state, v[0], ts_tmp("export-old"), 0);
    CHECK_RUN_OK(rc, "export-old");
    char *note = ts_output("export-old", "err");
    CHECK(note && strstr(note, "note: version") && strstr(note, "copy the tokenizer files"));
    free(note);
}

/* ---- 1 ---------------------------------------------------------------------------- */

static void sharded_lowrank(void) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 3;
    ft_fed f;
    CHECK_OK(ft_setup(&f, "sharded", 3, &o));
    add_companions(&f);
    CHECK_OK(ft_start_aggregator(&f));
    ft_run_nodes(&f, f.endpoint, 240);

    char v[4][65], base[65];
    for (int r = 1; r <= 3; r++) {
        round_hashes(&f, r, base, v[r]);
        CHECK_MSG(strlen(v[r]) == 64, "round %d published nothing", r);
        if (r == 1) snprintf(v[0], sizeof v[0], "%s", base);
        CHECK(strcmp(base, v[r - 1]) == 0);
    }
    for (int r = 0; r <= 3; r++) check_store_version(&f, v[r], r, r ? v[r - 1] : "");
    uint8_t latest[32];
    char lhex[65] = "";
    CHECK_OK(store_latest(f.agg_state, latest));
    hex_of(latest, lhex);
    CHECK_MSG(strcmp(lhex, v[3]) == 0, "versions/latest names %s", lhex);
    ft_check_recompute(&f, 2);

    /* The nodes: round 1 in full (the index, then each shard), rounds 2 and
     * 3 made from the updates; each holds round 3's base, verified. */
    char path[LP], sync[16];
    uint64_t bytes, v0_bytes = 0;
    version_index *x0 = index_of(f.agg_state, v[0]);
    if (x0) {
        snprintf(path, sizeof path, "%s/versions/%s/%s", f.agg_state, v[0], VERSION_INDEX_FILE);
        v0_bytes = x0->bytes + ft_file_size(path);
    }
    version_index_free(x0);
    for (int i = 0; i < f.n; i++) {
        CHECK_MSG(ft_count_in(f.node[i].log, "(sharded)") == 1 &&
                      ft_count_in(f.node[i].log, "sync: low-rank update") == 2 &&
                      ft_count_in(f.node[i].log, "low-rank sync failed") == 0,
                  "see %s", f.node[i].log);
        ft_node_sync(&f, i, 1, sync, &bytes);
        CHECK_MSG(!strcmp(sync, "full") && bytes == v0_bytes,
                  "%s round 1: %s, %llu bytes (want %llu)", f.node[i].name, sync,
                  (unsigned long long)bytes, (unsigned long long)v0_bytes);
        for (int r = 2; r <= 3; r++) {
            ft_node_sync(&f, i, r, sync, &bytes);
            CHECK_MSG(!strcmp(sync, "lowrank"), "%s round %d: %s", f.node[i].name, r, sync);
        }
        uint8_t h[32];
        snprintf(path, sizeof path, "%s/versions/%s", f.node[i].state, v[2]);
        CHECK(hex_decode(v[2], h, 32) == 0);
        CHECK_MSG(version_is_sharded(path) == 1 && version_verify(path, h) == 0, "%s: %s",
                  f.node[i].name, err_msg());
    }
    exports(&f, v);
    ft_teardown(&f);
}

/* ---- 2 ---------------------------------------------------------------------------- */

struct corrupt {
    const ft_fed *f;
    int phase; /* 0 waiting for round 2, 1 the target is to be corrupted, 2 it was, once */
    uint8_t target[32];
    int rounds_sharded, rounds_seen;
};

/* The first shard of round 2's base that round 1's base does not have. */
static int pick_target(struct corrupt *c, const uint8_t base2[32]) {
    char b1[65], v1[65], b2[65];
    round_hashes(c->f, 1, b1, v1);
    hex_of(base2, b2);
    version_index *old = index_of(c->f->agg_state, b1), *now = index_of(c->f->agg_state, b2);
    int found = 0;
    for (int k = 0; old && now && !found && k < now->n_shards; k++) {
        int known = 0;
        for (int j = 0; j < old->n_shards; j++)
            known |= memcmp(old->shards[j].hash, now->shards[k].hash, 32) == 0;
        if (known) continue;
        memcpy(c->target, now->shards[k].hash, 32);
        found = 1;
    }
    version_index_free(old);
    version_index_free(now);
    return found;
}

static int corrupt_hook(ft_proxy *p, const char *name, int is_reply, const struct msg *m) {
    struct corrupt *c = p->arg;
    const char *node0 = c->f->node[0].name;
    if (is_reply && m->type == MSG_ROUND) {
        c->rounds_seen++;
        c->rounds_sharded += m->round.base_sharded;
        if (m->round.round == 2 && c->phase == 0 && pick_target(c, m->round.base)) c->phase = 1;
    }
    if (c->phase != 1) return FT_PASS;
    if (!is_reply && m->type == MSG_GET_MODEL && memcmp(m->get_model.version, c->target, 32) == 0)
        return strcmp(name, node0) == 0 ? FT_PASS : FT_SWALLOW; /* node 1 waits */
    if (is_reply && m->type == MSG_MODEL_CHUNK && m->model_chunk.final &&
        memcmp(m->model_chunk.version, c->target, 32) == 0 && strcmp(name, node0) == 0) {
        /* The shard's last chunk to node 0 with one byte flipped on the way
         * (the aggregator refuses to serve a damaged store: test_stored_hash):
         * the decoded blob points into the frame the proxy forwards. */
        if (m->model_chunk.data_len > 0)
            ((uint8_t *)m->model_chunk.data)[m->model_chunk.data_len / 2] ^= 0x10;
        c->phase = 2;
    }
    return FT_PASS;
}

static void sharded_full_corrupt(void) {
    char policy[LP], root[LP];
    ts_path(policy, "median.policy.cfg");
    CHECK_OK(ts_write(policy, "robust = { rule = \"median\"; };\n"
                              "rounds = { quorum = 2; deadline_s = 120; };\n"));
    harness_options h;
    harness_options_default(&h);
    h.consortium = "fed-test";
    h.rounds = 2;
    h.linger_s = 3;
    h.steps = 4;
    h.rank = 4;
    h.seq = 32;
    h.batch = 4;
    h.lr = 0.01;
    h.targets = "\"q_proj\", \"v_proj\", \"down_proj\"";
    h.policy = policy;
    h.node_poll_ms = 50;
    snprintf(h.node_extra, sizeof h.node_extra, "request_timeout_ms = 1000;\ngive_up_s = 120;\n");
    const demo_domain *domains[2] = {&demo_domains[0], &demo_domains[1]};
    ft_fed f;
    CHECK_OK(harness_setup(&f, ts_path(root, "corrupt"), 2, domains, &h));
    CHECK_OK(ft_start_aggregator(&f));
    ft_proxy p;
    struct corrupt c = {.f = &f};
    CHECK_OK(ft_proxy_open(&p, &f, f.endpoint, corrupt_hook, &c));
    for (int i = 0; i < f.n; i++) {
        CHECK_OK(ft_node_config(&f, i, p.endpoint, ""));
        CHECK_OK(ft_start_node(&f, i));
    }
    for (double t0 = harness_now(); harness_now() - t0 < 240;) {
        ft_proxy_pump(&p, 50);
        if (!harness_running(&f.node[0].proc) && !harness_running(&f.node[1].proc)) break;
    }
    for (int i = 0; i < f.n; i++)
        CHECK_MSG(harness_wait(&f.node[i].proc, 5) == 0, "%s (see %s)", f.node[i].name,
                  f.node[i].log);
    CHECK_MSG(harness_wait(&f.agg, 30) == 0, "aggregator (see %s)", f.agg_log);
    CHECK_MSG(c.phase == 2, "the proxy got to phase %d", c.phase);
    CHECK_MSG(c.rounds_seen > 0 && c.rounds_sharded == c.rounds_seen,
              "%d of %d ROUND messages said base_sharded", c.rounds_sharded, c.rounds_seen);

    const char *refused = "the downloaded bytes do not match shard model-";
    CHECK_MSG(ft_count_in(f.node[0].log, refused) == 1, "see %s", f.node[0].log);
    CHECK_MSG(ft_count_in(f.node[1].log, refused) == 0, "see %s", f.node[1].log);
    char b1[65], v1[65], b2[65], v2[65], path[LP], sync[16];
    round_hashes(&f, 1, b1, v1);
    round_hashes(&f, 2, b2, v2);
    CHECK(strcmp(b2, v1) == 0 && strlen(v2) == 64);
    /* Round 2's full download: the index, and the shards round 1 changed;
     * the others are linked from the version each node holds. */
    version_index *old = index_of(f.agg_state, b1), *now = index_of(f.agg_state, b2);
    uint64_t want = 0, target = 0;
    int unchanged = 0;
    for (int k = 0; old && now && k < now->n_shards; k++) {
        int known = 0;
        for (int j = 0; j < old->n_shards; j++)
            known |= memcmp(old->shards[j].hash, now->shards[k].hash, 32) == 0;
        unchanged += known;
        if (!known) want += now->shards[k].size;
        if (!memcmp(now->shards[k].hash, c.target, 32)) target = now->shards[k].size;
    }
    snprintf(path, sizeof path, "%s/versions/%s/%s", f.agg_state, b2, VERSION_INDEX_FILE);
    want += ft_file_size(path);
    CHECK_MSG(unchanged >= 1 && target > 0, "%d shards unchanged", unchanged);
    version_index_free(old);
    version_index_free(now);
    for (int i = 0; i < f.n; i++) {
        uint64_t bytes;
        ft_node_sync(&f, i, 2, sync, &bytes);
        uint64_t expect = want + (i == 0 ? target : 0); /* node 0 fetched one shard twice */
        CHECK_MSG(!strcmp(sync, "full") && bytes == expect, "%s round 2: %s, %llu bytes, want %llu",
                  f.node[i].name, sync, (unsigned long long)bytes, (unsigned long long)expect);
        CHECK_MSG(ft_count_in(f.node[i].log, "linked, not fetched") == unchanged, "see %s",
                  f.node[i].log);
        uint8_t h[32];
        snprintf(path, sizeof path, "%s/versions/%s", f.node[i].state, b2);
        CHECK(hex_decode(b2, h, 32) == 0);
        CHECK_MSG(version_verify(path, h) == 0, "%s: %s", f.node[i].name, err_msg());
        /* No part file is left, no unverified byte under a final name. */
        char part[LP + 64];
        snprintf(part, sizeof part, "%s/%s.part", path, VERSION_INDEX_FILE);
        CHECK(!fio_exists(part));
    }
    ft_proxy_close(&p);
    ft_teardown(&f);
}

int main(void) {
    setenv("FEDLORA_SHARD_BYTES", "100000", 1);
    sharded_lowrank();
    sharded_full_corrupt();
    return check_finish();
}
