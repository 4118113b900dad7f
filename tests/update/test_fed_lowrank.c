/* Low-rank model sync with real processes on loopback (docs/protocol.md,
 * "Low-rank model sync"):
 *   1. 3 nodes, 3 rounds, the default policy: every publish record names the
 *      round's update object, which is in the store, hashes to its name, says
 *      from and to in its metadata, and made offline from the round's base
 *      gives the published bytes; every node reaches the bases of rounds 2
 *      and 3 through the update (log, metrics "sync": "lowrank" with the
 *      update's bytes) and holds exactly the aggregator's version;
 *   2. 2 nodes, 4 rounds, behind a proxy that holds the update's GET_MODEL
 *      until the test has broken something: the update object corrupted on
 *      the aggregator (round 2), one node's previous version tampered with
 *      (round 3: only that node falls back), the object removed (round 4);
 *      each failure is one log line, the node downloads the full version and
 *      still ends with the aggregator's bytes;
 *   3. 3 nodes, 2 rounds under a policy file: with a low-rank merge (the
 *      clipped weighted mean, FedIT, the truncated SVD) round 1 publishes an
 *      update of the merge's rank and every node reaches round 2's base
 *      through it ("sync": "lowrank"); with the coordinate-wise median
 *      (dense) no update is published and nodes download full versions;
 *      every node holds exactly the aggregator's version. */
#include "lora/update.h"
#include "model/safetensors.h"
#include "tests/federation/fed_test.h"

#define LP (2 * TS_PATH + 128) /* a path made of an TS_PATH one and more */

/* The journal's publish record of a round: its version, and its update
 * object and size when it names one (uhex "" otherwise). 0 found, -1 not. */
static int publish_record(const ft_fed *f, int round, char v[65], char uhex[65], uint64_t *size) {
    char path[LP], want[32];
    char *text = ts_read(ts_in(path, f->agg_state, "journal"), NULL);
    snprintf(want, sizeof want, "publish %d ", round);
    int rc = -1;
    for (char *line = text ? strtok(text, "\n") : NULL; line && rc; line = strtok(NULL, "\n")) {
        if (strncmp(line, want, strlen(want)) != 0) continue;
        char rest[300];
        snprintf(rest, sizeof rest, "%s", line + strlen(want));
        char *hash = strchr(rest, '#');
        if (hash) *hash = '\0';
        unsigned long long s = 0;
        uhex[0] = '\0';
        int n = sscanf(rest, "%64s %64s %llu", v, uhex, &s);
        if (n == 1) uhex[0] = '\0';
        *size = s;
        rc = n == 1 || n == 3 ? 0 : -1;
    }
    free(text);
    return rc;
}

static void store_model(const ft_fed *f, const char *hex, char out[LP]) {
    snprintf(out, LP, "%s/versions/%s/model.safetensors", f->agg_state, hex);
}

static void round_base(const ft_fed *f, int round, char out[65]) {
    json_t *j = ft_round_metrics(f, round);
    json_t *b = j ? json_object_get(j, "base") : NULL;
    snprintf(out, 65, "%s", json_is_string(b) ? json_string_value(b) : "");
    json_decref(j);
}

/* The node's copy of a version hashes to its name. */
static void check_node_holds(const ft_fed *f, int i, const char *hex) {
    char path[LP], got[65] = "";
    snprintf(path, sizeof path, "%s/versions/%s/model.safetensors", f->node[i].state, hex);
    CHECK_MSG(harness_hash_file(path, got) == 0 && strcmp(got, hex) == 0,
              "%s: its version %.16s... hashes to '%s'", f->node[i].name, hex, got);
    CHECK(ts_contains(ts_in(path, f->node[i].state, "current.json"), hex));
}

/* ---- 1: every node syncs through the updates --------------------------------------- */

static void lowrank_path(void) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 3;
    ft_fed f;
    CHECK_OK(ft_setup(&f, "lowrank", 3, &o));
    CHECK_OK(ft_start_aggregator(&f));
    ft_run_nodes(&f, f.endpoint, 240);

    char v[4][65], u[4][65], base[65], path[LP];
    uint64_t usize[4] = {0}, model_bytes = 0;
    for (int r = 1; r <= 3; r++) {
        char published[65];
        ft_version(&f, r, published);
        CHECK_MSG(publish_record(&f, r, v[r], u[r], &usize[r]) == 0 && strlen(u[r]) == 64,
                  "round %d's publish record names no update", r);
        CHECK(strcmp(v[r], published) == 0);
        store_model(&f, v[r], path);
        model_bytes = ft_file_size(path);
        CHECK_MSG(usize[r] > 0 && usize[r] < model_bytes / 2, "update %llu bytes, model %llu",
                  (unsigned long long)usize[r], (unsigned long long)model_bytes);
        /* The object: named by its SHA-256, of the recorded size, from the
         * round's base to its version. */
        char obj[LP], got[65] = "";
        snprintf(obj, sizeof obj, "%s/objects/%s", f.agg_state, u[r]);
        CHECK(harness_hash_file(obj, got) == 0 && strcmp(got, u[r]) == 0);
        CHECK(ft_file_size(obj) == usize[r]);
        round_base(&f, r, base);
        safetensors_file *sf;
        CHECK_OK(safetensors_open(&sf, obj));
        if (sf) {
            char rs[8];
            snprintf(rs, sizeof rs, "%d", r);
            CHECK(!strcmp(safetensors_metadata(sf, "from"), base));
            CHECK(!strcmp(safetensors_metadata(sf, "to"), v[r]));
            CHECK(!strcmp(safetensors_metadata(sf, "round"), rs));
            safetensors_close(sf);
        }
        /* Applied here, in this process, to the base: the published bytes. */
        model *m = NULL;
        update *up = NULL;
        char dir[LP], out[LP], name[32];
        snprintf(dir, sizeof dir, "%s/versions/%s", f.agg_state, base);
        snprintf(name, sizeof name, "made-%d", r);
        ts_in(out, f.root, name);
        CHECK_OK(checkpoint_load(&m, dir));
        CHECK_OK(update_read(&up, obj, m));
        CHECK_OK(update_apply(m, up));
        CHECK_OK(checkpoint_save(m, out, "float32"));
        got[0] = '\0';
        CHECK(harness_hash_file(ts_in(path, out, "model.safetensors"), got) == 0 &&
              strcmp(got, v[r]) == 0);
        update_free(up);
        model_free(m);
    }
    /* Each node: round 1 downloaded in full, rounds 2 and 3 made from the
     * previous version and the update published with it. */
    for (int i = 0; i < f.n; i++) {
        CHECK_MSG(ft_count_in(f.node[i].log, "sync: low-rank update") == 2, "%s (see %s)",
                  f.node[i].name, f.node[i].log);
        CHECK(ft_count_in(f.node[i].log, "low-rank sync failed") == 0);
        char sync[16];
        uint64_t bytes;
        ft_node_sync(&f, i, 1, sync, &bytes);
        CHECK_MSG(!strcmp(sync, "full") && bytes == model_bytes, "%s round 1: %s, %llu bytes",
                  f.node[i].name, sync, (unsigned long long)bytes);
        for (int r = 2; r <= 3; r++) {
            ft_node_sync(&f, i, r, sync, &bytes);
            CHECK_MSG(!strcmp(sync, "lowrank") && bytes == usize[r - 1],
                      "%s round %d: %s, %llu bytes (update %llu)", f.node[i].name, r, sync,
                      (unsigned long long)bytes, (unsigned long long)usize[r - 1]);
        }
        check_node_holds(&f, i, v[2]);
    }
    ft_teardown(&f);
}

/* ---- 2: failures fall back to the full download ------------------------------------ */

struct gate {
    uint64_t round;                         /* the newest ROUND with an update seen */
    uint8_t update[32], from[32], base[32]; /* its fields */
    uint64_t open_for;                      /* the round whose update GET_MODELs pass */
};

static int gate_hook(ft_proxy *p, const char *name, int is_reply, const struct msg *m) {
    struct gate *g = p->arg;
    (void)name;
    if (is_reply && m->type == MSG_ROUND && m->round.has_update && m->round.round > g->round) {
        g->round = m->round.round;
        memcpy(g->update, m->round.update_hash, 32);
        memcpy(g->from, m->round.update_from, 32);
        memcpy(g->base, m->round.base, 32);
    }
    if (!is_reply && m->type == MSG_GET_MODEL && g->round > g->open_for &&
        memcmp(m->get_model.version, g->update, 32) == 0)
        return FT_SWALLOW; /* the node asks again after its request timeout */
    return FT_PASS;
}

static void flip_byte(const char *path, uint64_t offset) {
    int fd = open(path, O_RDWR);
    unsigned char b = 0;
    CHECK(fd >= 0 && pread(fd, &b, 1, (off_t)offset) == 1);
    b ^= 0x40;
    CHECK(fd >= 0 && pwrite(fd, &b, 1, (off_t)offset) == 1);
    if (fd >= 0) close(fd);
}

static void fallbacks(void) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 4;
    ft_fed f;
    ft_proxy p;
    struct gate g = {0};
    CHECK_OK(ft_setup(&f, "fallback", 2, &o));
    CHECK_OK(ft_start_aggregator(&f));
    CHECK_OK(ft_proxy_open(&p, &f, f.endpoint, gate_hook, &g));
    for (int i = 0; i < f.n; i++) {
        CHECK_OK(ft_node_config(&f, i, p.endpoint, ""));
        CHECK_OK(ft_start_node(&f, i));
    }
    char uhex[65], fhex[65], path[LP];
    for (double t0 = harness_now(); harness_now() - t0 < 240;) {
        ft_proxy_pump(&p, 50);
        if (g.round > g.open_for) {
            for (int i = 0; i < 32; i++) {
                snprintf(uhex + 2 * i, 3, "%02x", g.update[i]);
                snprintf(fhex + 2 * i, 3, "%02x", g.from[i]);
            }
            snprintf(path, sizeof path, "%s/objects/%s", f.agg_state, uhex);
            if (g.round == 2) {
                flip_byte(path, ft_file_size(path) / 2); /* the aggregator serves corrupt bytes */
            } else if (g.round == 3) {
                /* Node 0's copy of the version the update starts from. */
                char model[LP];
                snprintf(model, sizeof model, "%s/versions/%s/model.safetensors", f.node[0].state,
                         fhex);
                flip_byte(model, ft_file_size(model) - 100);
            } else {
                CHECK(unlink(path) == 0); /* the object is gone */
            }
            g.open_for = g.round;
        }
        if (!harness_running(&f.node[0].proc) && !harness_running(&f.node[1].proc)) break;
    }
    for (int i = 0; i < f.n; i++)
        CHECK_MSG(harness_wait(&f.node[i].proc, 5) == 0, "%s (see %s)", f.node[i].name,
                  f.node[i].log);
    CHECK_MSG(harness_wait(&f.agg, 30) == 0, "aggregator (see %s)", f.agg_log);
    CHECK_MSG(g.open_for == 4, "the proxy saw updates up to round %llu",
              (unsigned long long)g.open_for);

    const char *corrupt = "low-rank sync failed (the update's bytes do not hash";
    const char *tampered = "not to the round's base); downloading the full version";
    const char *removed = "low-rank sync failed (the aggregator refused GET_MODEL";
    CHECK_MSG(ft_count_in(f.node[0].log, corrupt) == 1 &&
                  ft_count_in(f.node[0].log, tampered) == 1 &&
                  ft_count_in(f.node[0].log, removed) == 1 &&
                  ft_count_in(f.node[0].log, "low-rank sync failed") == 3 &&
                  ft_count_in(f.node[0].log, "sync: low-rank update") == 0,
              "see %s", f.node[0].log);
    CHECK_MSG(ft_count_in(f.node[1].log, corrupt) == 1 &&
                  ft_count_in(f.node[1].log, removed) == 1 &&
                  ft_count_in(f.node[1].log, "low-rank sync failed") == 2 &&
                  ft_count_in(f.node[1].log, "sync: low-rank update") == 1,
              "see %s", f.node[1].log);
    char v[5][65], u[5][65], sync[16];
    uint64_t us[5], bytes, model_bytes;
    for (int r = 1; r <= 4; r++) CHECK_OK(publish_record(&f, r, v[r], u[r], &us[r]));
    store_model(&f, v[1], path);
    model_bytes = ft_file_size(path);
    for (int r = 2; r <= 4; r++)
        for (int i = 0; i < 2; i++) {
            ft_node_sync(&f, i, r, sync, &bytes);
            int lowrank = i == 1 && r == 3;
            /* The update's bytes (all of them, or none when it was gone)
             * count too when they were fetched before the fallback. */
            uint64_t want = lowrank ? us[r - 1] : (r == 4 ? 0 : us[r - 1]) + model_bytes;
            CHECK_MSG(!strcmp(sync, lowrank ? "lowrank" : "full") && bytes == want,
                      "%s round %d: %s, %llu bytes, want %llu", f.node[i].name, r, sync,
                      (unsigned long long)bytes, (unsigned long long)want);
        }
    for (int i = 0; i < 2; i++) check_node_holds(&f, i, v[3]);
    ft_proxy_close(&p);
    ft_teardown(&f);
}

/* ---- 3: rounds under a policy file ------------------------------------------------- */

/* 3 nodes, 2 rounds under a policy file (its rounds group replaces the
 * config's quorum and deadline). With a low-rank merge (rank > 0) round 1
 * publishes an update of that rank per weight and every node reaches round
 * 2's base through it; with a dense one nothing is published and nodes
 * download the version. Either way every node ends with the aggregator's
 * bytes. */
static void policy_sync(const char *tag, const char *policy_text, const char *rule,
                        const char *merge, int rank) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    ft_fed f;
    CHECK_OK(ft_setup(&f, tag, 3, &o));
    char text[4096], dir[LP], path[LP];
    snprintf(dir, sizeof dir, "%s", f.agg_config);
    *strrchr(dir, '/') = '\0';
    snprintf(text, sizeof text, "%srounds = { quorum = 3; deadline_s = 120; };\n", policy_text);
    CHECK_OK(ts_write(ts_in(path, dir, "policy.cfg"), text));
    snprintf(text, sizeof text,
             "bind = \"tcp://127.0.0.1:*\";\n"
             "keys = { dir = \"../keys\"; name = \"aggregator\"; };\n"
             "consortium = \"fed-test\";\n"
             "members = [ \"../keys/%s.id\", \"../keys/%s.id\", \"../keys/%s.id\" ];\n"
             "base_model = \"../base\";\n"
             "state = \"state\";\n"
             "policy = \"policy.cfg\";\n"
             "rounds = { count = 2; linger = 3; };\n"
             "train = { steps = 4; lr = 0.01; rank = 4; alpha = 8; targets = [ \"q_proj\", "
             "\"v_proj\" ]; batch = 4; seq = 32; };\n",
             f.node[0].name, f.node[1].name, f.node[2].name);
    CHECK_OK(ts_write(f.agg_config, text));
    CHECK_OK(ft_start_aggregator(&f));
    ft_run_nodes(&f, f.endpoint, 240);
    char v[65], u[65] = "x", base[65];
    uint64_t us = 1, bytes;
    CHECK_OK(publish_record(&f, 1, v, u, &us));
    CHECK(strlen(v) == 64);
    json_t *j = ft_round_metrics(&f, 1);
    CHECK_MSG(j && !strcmp(json_string_value(json_object_get(j, "rule")), rule) &&
                  !strcmp(json_string_value(json_object_get(j, "merge")), merge),
              "%s: round 1's metrics name another rule or merge", tag);
    /* clip_norm clips every member here; without it none is clipped. */
    json_t *clip = j ? json_object_get(j, "clip") : NULL;
    for (int i = 0; i < f.n; i++) {
        double c = json_real_value(json_object_get(clip, f.node[i].name));
        CHECK_MSG(strstr(policy_text, "clip_norm") ? c > 0 && c < 1 : c == 1,
                  "%s: %s's clip factor is %g", tag, f.node[i].name, c);
    }
    json_decref(j);
    store_model(&f, v, path);
    uint64_t model_bytes = ft_file_size(path);
    if (rank > 0) {
        /* The update: in the store, from round 1's base to its version, at
         * the merge's rank. */
        char obj[LP], got[65] = "";
        CHECK_MSG(strlen(u) == 64 && us > 0 && us < model_bytes / 2,
                  "%s: round 1 published update '%s' (%llu bytes)", tag, u, (unsigned long long)us);
        snprintf(obj, sizeof obj, "%s/objects/%s", f.agg_state, u);
        CHECK(harness_hash_file(obj, got) == 0 && strcmp(got, u) == 0 && ft_file_size(obj) == us);
        round_base(&f, 1, base);
        snprintf(path, sizeof path, "%s/versions/%s", f.agg_state, base);
        model *m = NULL;
        update *up = NULL;
        CHECK_OK(checkpoint_load(&m, path));
        if (m) CHECK_OK(update_read(&up, obj, m));
        for (int i = 0; up && i < up->n_modules; i++)
            CHECK_MSG(up->modules[i].rank == rank, "%s: %s has rank %d, want %d", tag,
                      up->modules[i].name, up->modules[i].rank, rank);
        update_free(up);
        model_free(m);
    } else {
        CHECK_MSG(u[0] == '\0', "%s: round 1 published update '%s'", tag, u);
        CHECK(fio_dir_empty(ts_in(path, f.agg_state, "objects")) == 1);
    }
    for (int i = 0; i < f.n; i++) {
        char sync[16];
        ft_node_sync(&f, i, 2, sync, &bytes);
        if (rank > 0) {
            CHECK_MSG(!strcmp(sync, "lowrank") && bytes == us,
                      "%s: %s round 2: %s, %llu bytes (update %llu)", tag, f.node[i].name, sync,
                      (unsigned long long)bytes, (unsigned long long)us);
            CHECK_MSG(ft_count_in(f.node[i].log, "sync: low-rank update") == 1 &&
                          ft_count_in(f.node[i].log, "low-rank sync failed") == 0,
                      "%s: see %s", tag, f.node[i].log);
        } else {
            CHECK(ft_count_in(f.node[i].log, "low-rank") == 0);
            CHECK_MSG(!strcmp(sync, "full") && bytes == model_bytes,
                      "%s: %s round 2: %s, %llu bytes", tag, f.node[i].name, sync,
                      (unsigned long long)bytes);
        }
        check_node_holds(&f, i, v);
    }
    ft_teardown(&f);
}

static void policies(void) {
    /* Low rank: the weighted mean (clipping scales a member's weight only;
     * all three are clipped), FedIT's factor average, the truncated SVD. */
    policy_sync("pmean", "robust = { clip_norm = 0.001; };\n", "mean", "exact", 3 * 4);
    policy_sync("pfedit", "weighting = { by = \"equal\"; };\nmerge = { mode = \"fedit\"; };\n",
                "mean", "fedit", 4);
    policy_sync("psvd", "merge = { mode = \"svd\"; svd_rank = 3; };\n", "mean", "svd", 3);
    /* Dense: the coordinate-wise median. */
    policy_sync("pmedian", "robust = { rule = \"median\"; };\n", "median", "exact", 0);
}

int main(void) {
    lowrank_path();
    fallbacks();
    policies();
    return check_finish();
}
