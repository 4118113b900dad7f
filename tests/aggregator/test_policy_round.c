/* Rounds under a policy file (config "policy", aggregator/hooks.h): the
 * aggregator's result is the policies library's (median, trimmed mean,
 * clipped mean, FedIT, SVD against a direct aggregate_round on the same
 * inputs); the low-rank merges (clipped mean, FedIT, SVD) publish their
 * update, which makes the version from the base, and the dense rules
 * (median, trimmed mean) publish none; a member over the
 * norm bound is rejected with its reason (log and metrics) and the round goes
 * on; DP-FedAvg reports the accountant's ε per round and cumulatively,
 * refuses to open a round past the budget (also after a restart); a crash
 * during a DP aggregation (FEDLORA_CRASH_AT in a child process) ends, after
 * the restart, in the bytes that the stored noise key gives offline, and the
 * key is gone once the version is published. */
#include "aggregator/agg.h"
#include "aggregator/store.h"
#include "lora/update.h"
#include "policies/accountant.h"
#include "policies/aggregate.h"
#include "tests/aggregator/agg_test.h"
#include "util/hex.h"
#include "wire/crypto.h"

#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

static struct fed F;
static const uint64_t T0 = 1800000000;

/* ---- a federation of `n` members (uni-a, uni-b, uni-c, then mallory) ------ */

/* Writes <sub>/policy.cfg and <sub>/aggregator.cfg naming it. */
static void write_config(const char *sub, int n, const char *rounds, const char *policy_text,
                         char *cfg, size_t cap) {
    char dir[600], pol[700], text[4096], members[2048] = "";
    fed_path(dir, sizeof dir, "%s", sub);
    if (fio_mkdirs(dir, 0700) < 0) fed_die("mkdir");
    snprintf(pol, sizeof pol, "%s/policy.cfg", dir);
    if (fio_write_atomic(pol, policy_text, strlen(policy_text), 0644) < 0) fed_die("policy");
    for (int i = 0; i < n; i++) {
        size_t l = strlen(members);
        snprintf(members + l, sizeof members - l, "%s\"%s/keys/%s.id\"", i ? ", " : "", F.dir,
                 fed_names[i]);
    }
    snprintf(text, sizeof text,
             "bind = \"tcp://127.0.0.1:*\";\n"
             "keys = { dir = \"%s/keys\"; name = \"agg\"; };\n"
             "consortium = \"test-consortium\";\n"
             "members = [ %s ];\n"
             "base_model = \"%s/base\";\n"
             "state = \"state\";\n"
             "policy = \"policy.cfg\";\n"
             /* These rounds hold the policy file's defences to the library's
              * results with outliers far above the default bound on a
              * member's update (docs/policies.md, "Default bounds", which
              * tests/aggregator/test_aggregator.c checks): off here. */
             "limits = { max_update_ratio = 0; };\n"
             "rounds = { %s };\n"
             "train = { steps = 2; lr = 0.001; rank = %d; alpha = 8; targets = [\"q_proj\", "
             "\"v_proj\"];\n"
             "          batch = 2; seq = 16; };\n",
             F.dir, members, F.dir, rounds, FED_RANK);
    if (snprintf(cfg, cap, "%s/aggregator.cfg", dir) >= (int)cap) fed_die("path");
    if (fio_write_atomic(cfg, text, strlen(text), 0644) < 0) fed_die("config");
}

static agg_peer cur; /* the connection requests come on (submit_delta) */

static int ask(agg *a, const struct msg *req, uint64_t now, struct msg *r) {
    uint8_t *buf, *rep;
    size_t len, rlen;
    if (msg_encode(req, &buf, &len) < 0) fed_die("msg_encode");
    int rc = agg_handle(a, &cur, buf, len, now, &rep, &rlen);
    free(buf);
    if (rc < 0) return -1;
    if (msg_decode(rep, rlen, NULL, r) < 0) fed_die("decoding a reply");
    free(rep);
    return 0;
}

/* Submits member's delta (seed, opts) for the current round; 1 on a RECEIPT. */
static int submit_delta(agg *a, const keys_secret *member, uint64_t seed,
                        const struct delta_opts *o, uint64_t now) {
    uint8_t base[32], id[16];
    agg_current_base(a, base);
    uint64_t round = agg_current_round(a);
    size_t plen, len;
    uint8_t *p = fed_delta(&F, round, base, seed, o, &plen);
    uint8_t *env = fed_seal(&F, member, "test-consortium", round, p, plen, &len, id);
    free(p);
    /* The member's node says a verified HELLO, then uploads on its connection. */
    int who = fed_sender(&F, env, len);
    struct msg m = {.type = MSG_HELLO}, r;
    cur = fed_peer(who);
    snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[who]);
    keys_fingerprint(&member->pub, m.hello.fingerprint);
    if (hello_sign(&m.hello, F.consortium, member, now) < 0 || ask(a, &m, now, &r) < 0 ||
        r.type != MSG_ROUND)
        fed_die("HELLO before a submission");
    m = (struct msg){.type = MSG_SUBMIT_BEGIN};
    m.submit_begin.round = round;
    memcpy(m.submit_begin.id, id, 16);
    m.submit_begin.size = len;
    m.submit_begin.chunks = 1;
    int ok = ask(a, &m, now, &r) == 0 && r.type == MSG_ACK && r.ack.stored == 0;
    m = (struct msg){.type = MSG_SUBMIT_CHUNK};
    memcpy(m.submit_chunk.id, id, 16);
    m.submit_chunk.data = env;
    m.submit_chunk.data_len = (uint32_t)len;
    ok = ok && ask(a, &m, now, &r) == 0 && r.type == MSG_ACK && r.ack.stored == len;
    m = (struct msg){.type = MSG_SUBMIT_END};
    memcpy(m.submit_end.id, id, 16);
    crypto_sha256(env, len, m.submit_end.digest);
    ok = ok && ask(a, &m, now, &r) == 0 && r.type == MSG_RECEIPT && r.receipt.time == now;
    free(env);
    return ok;
}

/* What the library makes of the given members' deltas (seeds, opts) on the
 * round's base, by a direct aggregate_round; returns the model file's hash. */
static void direct(const agg_config *c, const uint8_t base_hash[32], uint64_t round,
                   const int *members, const uint64_t *seeds, const struct delta_opts *opts, int K,
                   noise_source *noise, const char *out, uint8_t hash[32]) {
    char dir[4200];
    model *m;
    if (store_version_dir(c->state, base_hash, dir, sizeof dir) < 0 || checkpoint_load(&m, dir) < 0)
        fed_die("loading the base version");
    agg_update u[8];
    aggregate_member mb[8];
    for (int k = 0; k < K; k++) {
        size_t plen;
        char why[AGG_WHY_MAX];
        uint8_t *p = fed_delta(&F, round, base_hash, seeds[k], opts ? &opts[k] : NULL, &plen);
        if (agg_update_build(m, base_hash, round, fed_names[members[k]], 1, p, plen, &u[k], why))
            fed_die(why);
        free(p);
        mb[k] = (aggregate_member){fed_names[members[k]], u[k].set, u[k].tokens, u[k].examples};
    }
    aggregate_round_info info = {round, c->n_members};
    char p[700];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    if (aggregate_round(&c->policy, m, mb, K, &info, noise, NULL, NULL) < 0 ||
        checkpoint_save(m, out, "float32") < 0 || crypto_sha256_file(p, hash, NULL) < 0)
        fed_die("direct aggregation");
    for (int k = 0; k < K; k++) agg_update_free(&u[k]);
    model_free(m);
}

/* The update named by round 1's publish record (64 hex), "" when it names
 * none; -1 when there is no such record. */
static int published_update(const agg_config *c, char uhex[65]) {
    char p[4200], *text, v[65];
    size_t len;
    snprintf(p, sizeof p, "%s/journal", c->state);
    uhex[0] = '\0';
    if (fio_read_all(p, 1 << 20, &text, &len) < 0) return -1;
    const char *rec = strstr(text, "publish 1 ");
    int n = rec ? sscanf(rec, "publish 1 %64s %64s", v, uhex) : 0;
    if (n == 2 && uhex[0] == '#') uhex[0] = '\0'; /* the record's checksum: no update */
    free(text);
    return n >= 1 ? 0 : -1;
}

/* ---- robust rules ----------------------------------------------------------- */

static void check_rule(const char *sub, int n, policy_rule rule, const char *policy_text) {
    char cfg[700], out[600];
    write_config(sub, n, "count = 1;", policy_text, cfg, sizeof cfg);
    agg_config c;
    agg *a;
    CHECK_OK(agg_config_load(&c, cfg));
    CHECK(c.has_policy && c.quorum == (uint32_t)n && c.deadline_s == 1000 &&
          c.policy.robust.rule == rule);
    CHECK_OK(agg_open(&a, &c, T0));
    uint8_t base[32], got[32], want[32], mean[32];
    agg_current_base(a, base);
    int members[4] = {0, 1, 2, 3};
    uint64_t seeds[4] = {11, 12, 13, 14};
    struct delta_opts o[4] = {{0}};
    o[n - 1].poison = 5.0f; /* one outlier, so that the rules differ from the mean */
    for (int i = 0; i < n; i++) CHECK(submit_delta(a, &F.m[i], seeds[i], &o[i], T0 + 1));
    CHECK_OK(agg_tick(a, T0 + 1));
    CHECK(agg_get_state(a) == AGG_FINISHED);
    agg_current_base(a, got);
    fed_path(out, sizeof out, "%s/direct", sub);
    direct(&c, base, 1, members, seeds, o, n, NULL, out, want);
    CHECK(memcmp(got, want, 32) == 0);
    /* ... and it is not what the plain mean gives. */
    c.policy.robust.rule = POLICY_RULE_MEAN;
    fed_path(out, sizeof out, "%s/mean", sub);
    direct(&c, base, 1, members, seeds, o, n, NULL, out, mean);
    CHECK(memcmp(got, mean, 32) != 0);
    json_t *j = fed_metrics_of(&c, 1);
    CHECK(j && !strcmp(json_string_value(json_object_get(j, "rule")), policy_rule_name(rule)));
    json_decref(j);
    /* A coordinate rule is dense: no update, nodes download the version. */
    char uhex[65] = "x";
    CHECK(published_update(&c, uhex) == 0 && uhex[0] == '\0');
    agg_close(a);
    /* The offline recomputation follows the same policy. */
    c.policy.robust.rule = rule;
    fed_path(out, sizeof out, "%s/recompute", sub);
    CHECK_OK(agg_recompute(&c, 1, out, want));
    CHECK(memcmp(got, want, 32) == 0);
    agg_config_free(&c);
}

static void test_robust_rules(void) {
    check_rule("median", 3, POLICY_RULE_MEDIAN,
               "robust = { rule = \"median\"; };\n"
               "rounds = { quorum = 3; deadline_s = 1000; };\n");
    check_rule("trimmed", 4, POLICY_RULE_TRIMMED_MEAN,
               "robust = { rule = \"trimmed_mean\"; trim_beta = 0.25; };\n"
               "rounds = { quorum = 4; deadline_s = 1000; };\n");
}

/* ---- low-rank merges: published as updates ----------------------------------- */

/* Three members under a policy whose merge is low rank: the version is the
 * library's (direct aggregate_round), the publish record names an update
 * object of rank want_rank per weight, from the base to the version, that
 * makes the version's bytes when applied to the base here (as a node
 * does); --recompute agrees. */
static void check_lowrank(const char *sub, const char *policy_text, int want_rank) {
    char cfg[700], out[600];
    write_config(sub, 3, "count = 1;", policy_text, cfg, sizeof cfg);
    agg_config c;
    agg *a;
    CHECK_OK(agg_config_load(&c, cfg));
    CHECK_OK(agg_open(&a, &c, T0));
    uint8_t base[32], got[32], want[32];
    agg_current_base(a, base);
    int members[3] = {0, 1, 2};
    uint64_t seeds[3] = {61, 62, 63};
    for (int i = 0; i < 3; i++) CHECK(submit_delta(a, &F.m[i], seeds[i], NULL, T0 + 1));
    CHECK_OK(agg_tick(a, T0 + 1));
    CHECK(agg_get_state(a) == AGG_FINISHED);
    agg_current_base(a, got);
    agg_close(a);
    fed_path(out, sizeof out, "%s/direct", sub);
    direct(&c, base, 1, members, seeds, NULL, 3, NULL, out, want);
    CHECK_MSG(memcmp(got, want, 32) == 0, "%s: the aggregator's version is not the library's", sub);
    char uhex[65];
    uint8_t uh[32], made[32];
    CHECK(published_update(&c, uhex) == 0 && strlen(uhex) == 64 && hex_decode(uhex, uh, 32) == 0);
    char obj[4200], dir[4200], p[700];
    model *m = NULL;
    update *u = NULL;
    CHECK_OK(store_object_path(c.state, uh, obj, sizeof obj));
    CHECK_OK(store_version_dir(c.state, base, dir, sizeof dir));
    CHECK_OK(checkpoint_load(&m, dir));
    CHECK_OK(update_read(&u, obj, m));
    if (u) {
        CHECK(u->round == 1 && !memcmp(u->from, base, 32) && !memcmp(u->to, got, 32));
        CHECK(u->n_modules == 4);
        for (int i = 0; i < u->n_modules; i++)
            CHECK_MSG(u->modules[i].rank == want_rank, "%s: %s has rank %d, want %d", sub,
                      u->modules[i].name, u->modules[i].rank, want_rank);
        CHECK_OK(update_apply(m, u));
    }
    fed_path(out, sizeof out, "%s/made", sub);
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    CHECK_OK(checkpoint_save(m, out, "float32"));
    CHECK_OK(crypto_sha256_file(p, made, NULL));
    CHECK_MSG(memcmp(made, got, 32) == 0, "%s: base + update is not the published version", sub);
    update_free(u);
    model_free(m);
    fed_path(out, sizeof out, "%s/recompute", sub);
    CHECK_OK(agg_recompute(&c, 1, out, want));
    CHECK(memcmp(got, want, 32) == 0);
    agg_config_free(&c);
}

static void test_lowrank(void) {
    /* The mean with clipping: all three updates clipped, rank 3 · 4. */
    check_lowrank("clipped-mean",
                  "robust = { clip_norm = 0.001; };\n"
                  "rounds = { quorum = 3; deadline_s = 1000; };\n",
                  3 * FED_RANK);
    agg_config c;
    char cfg[700];
    fed_path(cfg, sizeof cfg, "clipped-mean/aggregator.cfg");
    CHECK_OK(agg_config_load(&c, cfg));
    json_t *j = fed_metrics_of(&c, 1), *clip = j ? json_object_get(j, "clip") : NULL;
    for (int i = 0; i < 3; i++) CHECK(json_real_value(json_object_get(clip, fed_names[i])) < 1);
    json_decref(j);
    agg_config_free(&c);
    /* The deltas here are independent adapters: fedit's own-start variant. */
    check_lowrank("fedit",
                  "merge = { mode = \"fedit\"; start = \"own\"; };\n"
                  "rounds = { quorum = 3; deadline_s = 1000; };\n",
                  FED_RANK);
    check_lowrank("svd",
                  "merge = { mode = \"svd\"; svd_rank = 2; };\n"
                  "rounds = { quorum = 3; deadline_s = 1000; };\n",
                  2);
}

/* ---- validation ----------------------------------------------------------------- */

static void test_norm_bound(void) {
    char cfg[700], out[600], logp[600];
    write_config("norm", 3, "count = 1;",
                 "validation = { max_norm = 1.0; };\n"
                 "rounds = { quorum = 2; deadline_s = 1000; };\n",
                 cfg, sizeof cfg);
    agg_config c;
    agg *a;
    CHECK_OK(agg_config_load(&c, cfg));
    CHECK_OK(agg_open(&a, &c, T0));
    uint8_t base[32], got[32], want[32];
    agg_current_base(a, base);
    struct delta_opts big = {.poison = 100.0f};
    CHECK(submit_delta(a, &F.m[0], 21, NULL, T0 + 1));
    CHECK(submit_delta(a, &F.m[1], 22, NULL, T0 + 1));
    CHECK(submit_delta(a, &F.m[2], 23, &big, T0 + 1)); /* receipted: checked at aggregation */
    /* The aggregator's log goes to a file while it aggregates. */
    fed_path(logp, sizeof logp, "norm/log");
    fflush(stderr);
    int saved = dup(2), fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(saved >= 0 && fd >= 0 && dup2(fd, 2) == 2);
    close(fd);
    CHECK_OK(agg_tick(a, T0 + 1));
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK(agg_get_state(a) == AGG_FINISHED); /* the round went on with the other two */
    char *log;
    size_t len;
    CHECK_OK(fio_read_all(logp, 1 << 20, &log, &len));
    CHECK(strstr(log, "dropped uni-c's delta: norm: uni-c's update has norm") != NULL);
    free(log);
    json_t *j = fed_metrics_of(&c, 1);
    CHECK(j && !strcmp(json_string_value(json_object_get(j, "status")), "published"));
    json_t *rej = json_object_get(j, "members_rejected");
    CHECK(
        json_array_size(rej) == 1 &&
        !strcmp(json_string_value(json_object_get(json_array_get(rej, 0), "member")), "uni-c") &&
        !strncmp(json_string_value(json_object_get(json_array_get(rej, 0), "reason")), "norm:", 5));
    CHECK(json_array_size(json_object_get(j, "members_accepted")) == 2);
    json_decref(j);
    agg_current_base(a, got);
    int members[2] = {0, 1};
    uint64_t seeds[2] = {21, 22};
    fed_path(out, sizeof out, "norm/direct");
    direct(&c, base, 1, members, seeds, NULL, 2, NULL, out, want);
    CHECK(memcmp(got, want, 32) == 0);
    agg_close(a);
    agg_config_free(&c);
}

/* ---- DP: ε and the budget ----------------------------------------------------- */

static void test_dp_budget(void) {
    const double z = 2.0, delta = 1e-5;
    double e1 = dp_epsilon_for(1, z, 1, delta), e2 = dp_epsilon_for(1, z, 2, delta),
           e3 = dp_epsilon_for(1, z, 3, delta);
    CHECK(e1 < e2 && e2 < e3);
    char cfg[700], text[1024];
    snprintf(text, sizeof text,
             "weighting = { by = \"equal\"; };\n"
             "dp = { enabled = true; clip = 0.5; noise_multiplier = %g; delta = %g; "
             "epsilon_budget = %.17g; };\n"
             "rounds = { quorum = 3; deadline_s = 1000; };\n",
             z, delta, (e2 + e3) / 2);
    write_config("dp", 3, "count = 5;", text, cfg, sizeof cfg);
    agg_config c;
    agg *a;
    CHECK_OK(agg_config_load(&c, cfg));
    CHECK_OK(agg_open(&a, &c, T0));
    for (uint64_t r = 1; r <= 2; r++) {
        for (int i = 0; i < 3; i++)
            CHECK(submit_delta(a, &F.m[i], 30 + 10 * r + (uint64_t)i, NULL, T0 + r));
        CHECK_OK(agg_tick(a, T0 + r));
    }
    /* Round 3 would pass the budget: not opened, the federation is finished. */
    CHECK(agg_get_state(a) == AGG_FINISHED && agg_current_round(a) == 2);
    const double want[3] = {0, e1, e2};
    for (uint64_t r = 1; r <= 2; r++) {
        json_t *j = fed_metrics_of(&c, r);
        CHECK(j && !strcmp(json_string_value(json_object_get(j, "status")), "published"));
        CHECK_NEAR(json_real_value(json_object_get(j, "epsilon")), want[r], 1e-12 * want[r]);
        CHECK_NEAR(json_real_value(json_object_get(j, "epsilon_round")), e1, 1e-12 * e1);
        CHECK_NEAR(json_real_value(json_object_get(j, "noise_sigma")), z * 0.5 / 3, 1e-12);
        json_decref(j);
    }
    json_t *j = fed_metrics_of(&c, 3);
    CHECK(j && !strcmp(json_string_value(json_object_get(j, "status")), "dp-budget-exhausted"));
    CHECK_NEAR(json_real_value(json_object_get(j, "epsilon")), e2, 1e-12 * e2);
    CHECK_NEAR(json_real_value(json_object_get(j, "epsilon_next")), e3, 1e-12 * e3);
    json_decref(j);
    /* No key is left once the versions are published. */
    char keys[4200];
    snprintf(keys, sizeof keys, "%s/noise", c.state);
    CHECK(fio_dir_empty(keys) == 1);
    agg_close(a);
    /* A restart rebuilds the accountant from the journal: still no round 3. */
    CHECK_OK(agg_open(&a, &c, T0 + 10));
    CHECK(agg_get_state(a) == AGG_FINISHED && agg_current_round(a) == 2);
    agg_close(a);
    char p[4200], *jt;
    size_t len;
    snprintf(p, sizeof p, "%s/journal", c.state);
    CHECK_OK(fio_read_all(p, 1 << 20, &jt, &len));
    CHECK(strstr(jt, "open 2 ") != NULL && strstr(jt, "open 3 ") == NULL);
    free(jt);
    /* A published DP round cannot be recomputed: its noise key is gone. */
    char out[600];
    uint8_t h[32];
    fed_path(out, sizeof out, "dp/recompute");
    CHECK_FAILS_WITH(agg_recompute(&c, 1, out, h), "noise key");
    agg_config_free(&c);
}

/* ---- DP: crash during aggregation ------------------------------------------------ */

static const char *const dp_crash_policy = "weighting = { by = \"equal\"; };\n"
                                           "dp = { enabled = true; clip = 0.5; "
                                           "noise_multiplier = 1.0; epsilon_budget = 100; };\n"
                                           "rounds = { quorum = 3; deadline_s = 1000; };\n";

/* The child: submits three deltas and ticks; FEDLORA_CRASH_AT=aggregate
 * kills it during the aggregation (after the noise key was stored). */
static int crash_child(const char *cfg, const char *keys_dir) {
    agg_config c;
    agg *a;
    if (agg_config_load(&c, cfg) < 0 || agg_open(&a, &c, T0) < 0) fed_die("child: agg_open");
    if (keys_load_secret(keys_dir, "agg", &F.agg) < 0 ||
        payload_consortium_id("test-consortium", F.consortium) < 0)
        fed_die("child: keys");
    for (int i = 0; i < FED_MEMBERS; i++)
        if (keys_load_secret(keys_dir, fed_names[i], &F.m[i]) < 0) fed_die("child: keys");
    char base[600];
    snprintf(base, sizeof base, "%s/../base", keys_dir);
    if (checkpoint_load(&F.base, base) < 0) fed_die("child: base");
    for (int i = 0; i < FED_MEMBERS; i++)
        if (!submit_delta(a, &F.m[i], 51 + (uint64_t)i, NULL, T0 + 1)) fed_die("child: submit");
    agg_tick(a, T0 + 1);
    fprintf(stderr, "child: FEDLORA_CRASH_AT did not kill me\n");
    return 3;
}

static void test_dp_crash(const char *self) {
    char cfg[700], keys_dir[700];
    write_config("dpcrash", 3, "count = 1;", dp_crash_policy, cfg, sizeof cfg);
    snprintf(keys_dir, sizeof keys_dir, "%s/keys", F.dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* A fresh process (exec), not a fork of this one: OpenMP's threads
         * do not survive fork. */
        setenv("FEDLORA_CRASH_AT", "aggregate:2", 1);
        execl(self, self, "crash-child", cfg, keys_dir, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

    agg_config c;
    CHECK_OK(agg_config_load(&c, cfg));
    char key[4200];
    snprintf(key, sizeof key, "%s/noise/r1.key", c.state);
    struct stat sb;
    CHECK(stat(key, &sb) == 0 && (sb.st_mode & 0777) == 0600 && sb.st_size == 32);
    /* Offline, with the stored key, before the restart. */
    char out[600];
    uint8_t offline[32], got[32], base[32];
    fed_path(out, sizeof out, "dpcrash/recompute");
    CHECK_OK(agg_recompute(&c, 1, out, offline));
    CHECK_OK(fed_round_base(&c, 1, base));
    /* The restart finishes the interrupted aggregation before it returns. */
    agg *a;
    CHECK_OK(agg_open(&a, &c, T0 + 2));
    CHECK(agg_get_state(a) == AGG_FINISHED);
    agg_current_base(a, got);
    CHECK(memcmp(got, offline, 32) == 0); /* the same noise after the crash */
    CHECK(!fio_exists(key));              /* deleted once published */
    /* The noise is there: a noiseless mean gives other bytes. */
    uint8_t clean[32];
    int members[3] = {0, 1, 2};
    uint64_t seeds[3] = {51, 52, 53};
    policy nodp = c.policy;
    nodp.dp.enabled = 0;
    c.policy = nodp;
    fed_path(out, sizeof out, "dpcrash/clean");
    direct(&c, base, 1, members, seeds, NULL, 3, NULL, out, clean);
    CHECK(memcmp(got, clean, 32) != 0);
    agg_close(a);
    agg_config_free(&c);
}

/* ---- config ------------------------------------------------------------------------- */

static void test_config(void) {
    char cfg[700];
    agg_config c;
    write_config("cfg", 3, "count = 1;", "rounds = { quorum = 2; };\n", cfg, sizeof cfg);
    CHECK_OK(agg_config_load(&c, cfg));
    CHECK(c.has_policy && c.quorum == 2 && c.deadline_s == 3600);
    agg_config_free(&c);
    write_config("cfg1", 3, "count = 4;", "rounds = { max_rounds = 2; };\n", cfg, sizeof cfg);
    CHECK_OK(agg_config_load(&c, cfg));
    CHECK(c.rounds == 2 && c.quorum == 1);
    agg_config_free(&c);
    /* The config's own round rules would contradict the policy's. */
    write_config("cfg2", 3, "count = 1; quorum = 2;", "", cfg, sizeof cfg);
    CHECK_FAILS_WITH(agg_config_load(&c, cfg), "a policy file is given");
    write_config("cfg3", 3, "count = 1;", "rounds = { fraction = 0.5; };\n", cfg, sizeof cfg);
    CHECK_FAILS_WITH(agg_config_load(&c, cfg), "member sampling is not supported");
    write_config("cfg4", 3, "count = 1;", "robust = { rule = \"krum\"; };\n", cfg, sizeof cfg);
    CHECK_FAILS_WITH(agg_config_load(&c, cfg), "krum");
    write_config("cfg5", 3, "count = 1;", "rounds = { quorum = 4; };\n", cfg, sizeof cfg);
    CHECK_FAILS_WITH(agg_config_load(&c, cfg), "above the 3 members");
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "crash-child")) return crash_child(argv[2], argv[3]);
    fed_init(&F);
    test_config();
    test_robust_rules();
    test_lowrank();
    test_norm_bound();
    test_dp_budget();
    test_dp_crash(argv[0]);
    model_free(F.base);
    return check_finish();
}
