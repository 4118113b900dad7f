/* A running federation under a signed roster (issue #7): a fourth
 * university is onboarded while three others train, without restarting the
 * aggregator or touching the others; then, while round 3 is held open, one
 * member's keys are rotated after its delta was accepted, another's before
 * its sealed delta could be sent, a third member is revoked, and forged,
 * rolled-back and foreign-admin roster files are refused.
 *
 *   round 1, 2   uni-0..2 (uni-3 is added after round 1 published and waits:
 *                rounds.join = next)
 *   round 3      uni-0, uni-3 accepted; uni-1 accepted, then revoked (its
 *                delta is dropped at aggregation); uni-2 held at its upload
 *                and killed, its keys rotated, restarted with the new keys:
 *                it seals the same delta again; uni-0's keys rotated after
 *                its acceptance (its delta still counts)
 *   round 4      uni-0 (new keys), uni-2 (new keys), uni-3
 *
 * Every process is the real `fedlora` binary; nodes talk through the test
 * proxy (fed_test.h) so that uni-2 can be stopped at an exact point. */
#include "../federation/fed_test.h"

#include "aggregator/agg.h"
#include "aggregator/config.h"
#include "util/hex.h"

enum { N = 4 };

typedef struct {
    ft_fed *f;
    int hold; /* 1: uni-2's round-3 upload is held (kill it), 2: killed */
} ctl;

static int hook(ft_proxy *p, const char *name, int is_reply, const struct msg *m) {
    ctl *c = p->arg;
    if (is_reply || strcmp(name, c->f->node[2].name) != 0 || c->hold == 2) return FT_PASS;
    if (m->type == MSG_SUBMIT_BEGIN && m->submit_begin.round == 3) c->hold = 1;
    /* Held: nothing it sends (its retries included) gets through until it
     * is killed. */
    return c->hold == 1 ? FT_SWALLOW : FT_PASS;
}

/* Runs `fedlora ARGS...` to completion; its exit status. */
#define CLI(f, ...) ft_run(admin_log, 60, __VA_ARGS__, NULL)
static char admin_log[TS_PATH];

static int count_in(const char *path, const char *needle) {
    char *t = ts_read(path, NULL);
    int n = 0;
    for (const char *s = t; s && (s = strstr(s, needle)); s += strlen(needle)) n++;
    free(t);
    return n;
}

/* Waits (pumping the proxy) until the aggregator's log holds needle at
 * least `times` times. */
static int wait_log(ft_proxy *p, const ft_fed *f, const char *needle, int times, double secs) {
    for (double t0 = harness_now(); harness_now() - t0 < secs;) {
        if (count_in(f->agg_log, needle) >= times) return 0;
        ft_proxy_pump(p, 20);
    }
    return -1;
}

/* The rejection reason of member in a round's metrics, "" when none. */
static void rejected_reason(const ft_fed *f, int round, const char *member, char *out, size_t n) {
    json_t *j = ft_round_metrics(f, round);
    json_t *rej = j ? json_object_get(j, "members_rejected") : NULL;
    snprintf(out, n, "%s", "");
    for (size_t i = 0; json_is_array(rej) && i < json_array_size(rej); i++) {
        json_t *d = json_array_get(rej, i);
        const char *m = json_string_value(json_object_get(d, "member"));
        if (m && strcmp(m, member) == 0)
            snprintf(out, n, "%s", json_string_value(json_object_get(d, "reason")));
    }
    json_decref(j);
}

static int node_uses_keys(ft_fed *f, int i, const char *keys_dir, const char *endpoint) {
    char extra[TS_PATH + 64];
    /* A later key overrides nothing in libconfig: write the config anew
     * with the other keys directory. */
    if (ft_node_config(f, i, endpoint, "") != 0) return -1;
    char *text = ts_read(f->node[i].config, NULL);
    if (!text) return -1;
    const char *old = "dir = \"../../keys\";";
    char *at = strstr(text, old);
    if (!at) return free(text), -1;
    *at = '\0';
    snprintf(extra, sizeof extra, "dir = \"%s\";", keys_dir);
    char out[8192];
    snprintf(out, sizeof out, "%s%s%s", text, extra, at + strlen(old));
    free(text);
    return ts_write(f->node[i].config, out);
}

int main(void) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 4;
    o.quorum = 2;
    ft_fed f;
    ft_proxy p;
    ctl c = {.f = &f};
    CHECK_OK(ft_setup(&f, "onboard", N, &o));
    ts_in(admin_log, f.root, "admin.log");

    /* The admin: an identity, a roster of the first three members. */
    char roster[TS_PATH], adm[TS_PATH], id[TS_PATH], fp_hex[65], path[2 * TS_PATH];
    keys_public admin_pub;
    uint8_t fp[KEYS_FP_LEN];
    ts_in(roster, f.root, "roster.txt");
    ts_in(adm, f.keys, "admin");
    CHECK_OK(harness_keys(f.keys, "admin"));
    CHECK_OK(keys_load_public(ts_in(path, f.keys, "admin.id"), &admin_pub));
    CHECK_OK(keys_fingerprint(&admin_pub, fp));
    hex_encode(fp, KEYS_FP_LEN, fp_hex);
    CHECK(CLI(f, "roster", "init", "--admin", adm, "--consortium", "fed-test", "--out", roster) ==
          0);
    for (int i = 0; i < 3; i++)
        CHECK(CLI(f, "roster", "add", "--roster", roster, "--admin", adm, "--member",
                  ts_in(id, f.keys,
                        (snprintf(path, sizeof path, "%s.id", f.node[i].name), path))) == 0);
    char *v4 = ts_read(roster, NULL); /* version 4: init + 3 adds */
    CHECK(v4 && strstr(v4, "version: 4\n"));

    /* The aggregator reads the roster instead of a member list. */
    char *cfg = ts_read(f.agg_config, NULL), text[8192];
    CHECK(cfg != NULL);
    char *members = cfg ? strstr(cfg, "members = [") : NULL;
    char *end = members ? strstr(members, "];\n") : NULL;
    CHECK(members && end);
    if (!members || !end) return check_finish();
    *members = '\0';
    snprintf(text, sizeof text, "%sroster = { file = \"../roster.txt\"; admin = \"%s\"; };\n%s",
             cfg, fp_hex, end + 3);
    free(cfg);
    CHECK_OK(ts_write(f.agg_config, text));
    CHECK_OK(ft_start_aggregator(&f));
    CHECK_OK(ft_proxy_open(&p, &f, f.endpoint, hook, &c));
    for (int i = 0; i < N; i++) CHECK_OK(ft_node_config(&f, i, p.endpoint, ""));
    for (int i = 0; i < 3; i++) CHECK_OK(ft_start_node(&f, i));

    /* What the other three have, to see that onboarding changes none of it. */
    char before[3][2][65];
    for (int i = 0; i < 3; i++) {
        CHECK_OK(harness_hash_file(f.node[i].config, before[i][0]));
        snprintf(path, sizeof path, "%s/%s.sign.pem", f.keys, f.node[i].name);
        CHECK_OK(harness_hash_file(path, before[i][1]));
    }

    /* Round 1 published: the fourth university joins. Its keys were made on
     * its side (ft_setup); the admin adds its public identity after the
     * fingerprint check, and it starts its node. Nothing else changes. */
    CHECK_MSG(wait_log(&p, &f, "round 2 open", 1, 120) == 0, "round 1 did not publish (%s)",
              f.agg_log);
    char fp3[65];
    keys_public pub3;
    uint8_t f3[KEYS_FP_LEN];
    snprintf(path, sizeof path, "%s/%s.id", f.keys, f.node[3].name);
    CHECK_OK(keys_load_public(path, &pub3));
    CHECK_OK(keys_fingerprint(&pub3, f3));
    hex_encode(f3, KEYS_FP_LEN, fp3);
    CHECK(CLI(f, "roster", "add", "--roster", roster, "--admin", adm, "--member", path,
              "--fingerprint", fp3) == 0);
    CHECK_OK(ft_start_node(&f, 3));
    char added[128];
    snprintf(added, sizeof added, "roster version 5: added %s", f.node[3].name);
    CHECK_MSG(wait_log(&p, &f, added, 1, 30) == 0, "the aggregator did not take version 5 (%s)",
              f.agg_log);

    /* Round 3: uni-0, uni-1 and uni-3 get in; uni-2 is held at its upload. */
    char acc[3][128];
    int in[3] = {0, 1, 3};
    for (int k = 0; k < 3; k++) {
        snprintf(acc[k], sizeof acc[k], "round 3: accepted %s's delta", f.node[in[k]].name);
        CHECK_MSG(wait_log(&p, &f, acc[k], 1, 120) == 0, "%s never got into round 3",
                  f.node[in[k]].name);
    }
    for (double t0 = harness_now(); c.hold == 0 && harness_now() - t0 < 60;) ft_proxy_pump(&p, 20);
    CHECK(c.hold == 1);
    kill(f.node[2].proc.pid, SIGKILL);
    CHECK(harness_wait(&f.node[2].proc, 10) == 128 + SIGKILL);
    c.hold = 2;
    snprintf(path, sizeof path, "%s/outbox/round-3.env", f.node[2].state);
    CHECK_MSG(fio_exists(path), "uni-2 had no sealed delta when it was held");
    CHECK_MSG(ft_accepted(&f, 2, f.node[3].name) == 0, "uni-3 took part in round 2, which opened "
                                                       "before it joined");
    for (int i = 0; i < 3; i++) {
        char now_cfg[65], now_key[65];
        CHECK_OK(harness_hash_file(f.node[i].config, now_cfg));
        snprintf(path, sizeof path, "%s/%s.sign.pem", f.keys, f.node[i].name);
        CHECK_OK(harness_hash_file(path, now_key));
        CHECK_MSG(!strcmp(now_cfg, before[i][0]) && !strcmp(now_key, before[i][1]),
                  "onboarding changed %s's files", f.node[i].name);
    }

    /* Bad roster files are refused, the version in force stays. */
    char *v5 = ts_read(roster, NULL);
    CHECK(v5 && strstr(v5, "version: 5\n"));
    CHECK_OK(ts_write(roster, v4)); /* rollback */
    CHECK(wait_log(&p, &f, "rollback refused", 1, 30) == 0);
    /* A forged change: one member's weight edited after the admin signed. */
    char forged[8192] = "";
    char *w = v5 ? strstr(v5, "max-weight=1 ") : NULL;
    CHECK(w != NULL);
    if (w) snprintf(forged, sizeof forged, "%.*smax-weight=0.5 %s", (int)(w - v5), v5, w + 13);
    CHECK_OK(ts_write(roster, forged));
    CHECK(wait_log(&p, &f, "signature does not verify", 1, 30) == 0);
    char foreign[TS_PATH];
    ts_in(foreign, f.root, "foreign.txt");
    CHECK(CLI(f, "roster", "init", "--admin", ts_in(path, f.keys, f.node[3].name), "--consortium",
              "fed-test", "--out", foreign) == 0);
    char *fr = ts_read(foreign, NULL);
    CHECK_OK(ts_write(roster, fr));
    free(fr);
    CHECK(wait_log(&p, &f, "not the pinned admin", 1, 30) == 0);
    CHECK_OK(ts_write(roster, v5)); /* the real one again: no change */

    /* Rotate uni-0 (its round-3 delta is accepted already) and uni-2 (its
     * delta is sealed with the old keys, not sent), revoke uni-1. */
    char keys2[TS_PATH], newid[2 * TS_PATH];
    ts_in(keys2, f.root, "keys2");
    CHECK_OK(fio_mkdirs(keys2, 0700));
    ft_proxy_add_keys(&p, keys2); /* the proxy speaks for the new keys upstream */
    for (int i = 0; i < 3; i += 2) {
        CHECK_OK(harness_keys(keys2, f.node[i].name));
        snprintf(newid, sizeof newid, "%s/%s.id", keys2, f.node[i].name);
        CHECK(CLI(f, "roster", "rotate", "--roster", roster, "--admin", adm, "--name",
                  f.node[i].name, "--member", newid) == 0);
    }
    CHECK(CLI(f, "roster", "revoke", "--roster", roster, "--admin", adm, "--name",
              f.node[1].name) == 0);
    char revoked[96];
    snprintf(revoked, sizeof revoked, "revoked %s", f.node[1].name);
    CHECK_MSG(wait_log(&p, &f, revoked, 1, 30) == 0, "the revocation was not taken (%s)",
              f.agg_log);
    CHECK_OK(node_uses_keys(&f, 2, "../../keys2", p.endpoint));
    CHECK_OK(ft_start_node(&f, 2));

    /* uni-0 learns of its rotation at its next HELLO and stops; it comes
     * back with the new keys. uni-1 is refused and stops. */
    int restarted0 = 0, exit0 = -1, exit1 = -1;
    for (double t0 = harness_now(); harness_now() - t0 < 240;) {
        ft_proxy_pump(&p, 20);
        if (!restarted0 && !harness_running(&f.node[0].proc)) {
            exit0 = harness_wait(&f.node[0].proc, 5);
            CHECK_OK(node_uses_keys(&f, 0, "../../keys2", p.endpoint));
            CHECK_OK(ft_start_node(&f, 0));
            restarted0 = 1;
        }
        if (exit1 < 0 && !harness_running(&f.node[1].proc))
            exit1 = harness_wait(&f.node[1].proc, 5);
        if (restarted0 && !harness_running(&f.node[0].proc) && !harness_running(&f.node[2].proc) &&
            !harness_running(&f.node[3].proc))
            break;
    }
    /* With CURVE both are refused at the handshake, which tells a node only
     * that its key is not admitted; the aggregator's log says why. */
    CHECK_MSG(restarted0 && exit0 != 0 && ts_contains(f.node[0].log, "refused this node's key"),
              "uni-0 with its old keys: exit %d (see %s)", exit0, f.node[0].log);
    CHECK_MSG(exit1 != 0 && ts_contains(f.node[1].log, "refused this node's key"),
              "uni-1 after its revocation: exit %d (see %s)", exit1, f.node[1].log);
    CHECK_MSG(ts_contains(f.agg_log, "is rotated on the roster") &&
                  ts_contains(f.agg_log, "is revoked on the roster"),
              "the aggregator's log does not say why it refused them (%s)", f.agg_log);
    /* Their open connections were closed when the roster changed, not left
     * to carry requests (issue 17: a revoked member's connection stayed). */
    CHECK_MSG(ts_contains(f.agg_log, "connection(s) of keys the roster no longer admits"),
              "no connection was closed on the revocation (%s)", f.agg_log);
    for (int i = 0; i < N; i += 1 + (i == 0))
        CHECK_MSG(harness_wait(&f.node[i].proc, 5) == 0, "%s (see %s)", f.node[i].name,
                  f.node[i].log);
    CHECK_MSG(harness_wait(&f.agg, 30) == 0, "aggregator (see %s)", f.agg_log);
    CHECK_MSG(count_in(f.agg_log, "listening on") == 1, "the aggregator restarted");
    CHECK(ts_contains(f.node[2].log, "sealed it again with the current ones"));

    /* Who counted in which round. */
    for (int r = 1; r <= 2; r++) {
        CHECK(ft_count_accepted(&f, r) == 3);
        CHECK(ft_accepted(&f, r, f.node[3].name) == 0);
    }
    CHECK(ft_count_accepted(&f, 3) == 3);
    CHECK(ft_accepted(&f, 3, f.node[0].name) == 1 && ft_accepted(&f, 3, f.node[2].name) == 1 &&
          ft_accepted(&f, 3, f.node[3].name) == 1);
    char why[256];
    rejected_reason(&f, 3, f.node[1].name, why, sizeof why);
    CHECK_MSG(strstr(why, "revoked") != NULL, "uni-1's round-3 delta: '%s'", why);
    CHECK(ft_count_accepted(&f, 4) == 3 && ft_accepted(&f, 4, f.node[1].name) == 0);

    /* Offline recomputation of round 3 uses the roster in force when it
     * closed: same bytes. */
    ft_check_recompute(&f, 3);

    free(v4);
    free(v5);
    ft_proxy_close(&p);
    ft_teardown(&f);
    return check_finish();
}
