/* fed_test.h — what the federation integration tests share: a scratch
 * federation run with the loopback harness (cli/harness.h: the real
 * `fedlora` binary, env FEDLORA_BIN, started as aggregator and node
 * processes on loopback, in the test's scratch directory), the round
 * metrics it is judged by, the offline recomputation check, and a
 * message-level proxy between nodes and the aggregator that can hold or
 * swallow chosen requests and replies (so a test can kill a node at an exact
 * point of its upload, or make a submission arrive late). With env
 * FT_TRACE=FILE the proxy writes every message it sees to FILE. */
#ifndef FL_TESTS_FED_TEST_H
#define FL_TESTS_FED_TEST_H

#include "aggregator/agg.h"
#include "aggregator/config.h"
#include "cli/harness.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "node/demo_corpus.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"
#include "wire/crypto.h"
#include "wire/keys.h"
#include "wire/msg.h"
#include "wire/transport.h"
#include "wire/version.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FT_NODES 4

typedef harness_fed ft_fed;

/* What the tests vary; the rest is the harness's defaults for tests. */
typedef struct {
    int rounds, quorum, deadline_s, steps, rank, seq, save_every, linger_s;
    const char *below_quorum; /* "wait" or "fail" */
    const char *policy;       /* a policy file for the aggregator, or NULL */
    const char *arch;         /* the base model's family (init-model's tiny preset): "llama" */
    const char *targets;      /* LoRA targets as libconfig list items; NULL: q_proj, v_proj,
                                 down_proj */
    const char *agg_extra;    /* more aggregator config (status, eval sections), or NULL */
} ft_options;

static inline void ft_options_init(ft_options *o) {
    *o = (ft_options){.rounds = 2,
                      .quorum = 0, /* 0: every member */
                      .deadline_s = 120,
                      .steps = 4,
                      .rank = 4,
                      .seq = 32,
                      .save_every = 2,
                      .linger_s = 3,
                      .below_quorum = "wait",
                      .arch = "llama",
                      .targets = "\"q_proj\", \"v_proj\", \"down_proj\""};
}

/* A federation of n nodes named uni-<domain> (the demo corpus's domains in
 * name order), in ts_dir()/<tag>: the demo's base model, keys, data, and
 * the aggregator's config (consortium "fed-test", targets o->targets: by
 * default q_proj, v_proj, down_proj; batch 4, lr 0.01). Nodes poll every
 * 50 ms, give up after 120 s and time a request out after 1 s. */
static inline int ft_setup(ft_fed *f, const char *tag, int n, const ft_options *o) {
    harness_options h;
    harness_options_default(&h);
    h.consortium = "fed-test";
    h.arch = o->arch;
    h.rounds = o->rounds;
    h.quorum = o->quorum;
    h.deadline_s = o->deadline_s;
    h.below_quorum = o->below_quorum;
    h.linger_s = o->linger_s;
    h.steps = o->steps;
    h.rank = o->rank;
    h.seq = o->seq;
    h.batch = 4;
    h.lr = 0.01;
    h.targets = o->targets ? o->targets : "\"q_proj\", \"v_proj\", \"down_proj\"";
    h.policy = o->policy;
    h.node_poll_ms = 50;
    snprintf(h.node_extra, sizeof h.node_extra,
             "request_timeout_ms = 1000;\ngive_up_s = 120;\nsave_every = %d;\n", o->save_every);
    snprintf(h.agg_extra, sizeof h.agg_extra, "%s", o->agg_extra ? o->agg_extra : "");
    const demo_domain *domains[HARNESS_NODES_MAX];
    for (int i = 0; i < n && i < HARNESS_NODES_MAX; i++)
        domains[i] = &demo_domains[i % demo_num_domains];
    char root[TS_PATH];
    return harness_setup(f, ts_path(root, "%s", tag), n, domains, &h);
}

static inline int ft_start_aggregator(ft_fed *f) {
    return harness_start_aggregator(f, ts_bin());
}

/* Node i's config, pointing at endpoint (the aggregator's or a proxy's);
 * extra: more config text. */
static inline int ft_node_config(ft_fed *f, int i, const char *endpoint, const char *extra) {
    return harness_node_config(f, i, endpoint, extra);
}

static inline int ft_start_node(ft_fed *f, int i) {
    return harness_start_node(f, i, ts_bin());
}

/* The NULL-terminated arguments of ap into argv (32 slots). */
static inline void ft_argv(const char **argv, va_list ap) {
    int n = 0;
    for (const char *a; n < 31 && (a = va_arg(ap, const char *));) argv[n++] = a;
    argv[n] = NULL;
}

/* Starts `fedlora ARGS...` (NULL-terminated) with its output appended to
 * log; 0 or -1. */
static inline int ft_start(harness_proc *p, const char *log, ...) {
    const char *argv[32];
    va_list ap;
    va_start(ap, log);
    ft_argv(argv, ap);
    va_end(ap);
    return harness_spawn(p, ts_bin(), log, 1, argv);
}

/* Runs `fedlora ARGS...` (NULL-terminated) with its output appended to log,
 * for up to timeout_s; its exit code (harness_wait). */
static inline int ft_run(const char *log, double timeout_s, ...) {
    const char *argv[32];
    va_list ap;
    va_start(ap, timeout_s);
    ft_argv(argv, ap);
    va_end(ap);
    harness_proc p;
    if (harness_spawn(&p, ts_bin(), log, 1, argv) != 0) return -1;
    return harness_wait(&p, timeout_s);
}

/* Kills whatever is still running (the scratch directory goes with the
 * test's, ts.h: kept when a check failed). */
static inline void ft_teardown(ft_fed *f) {
    for (int i = 0; i < f->n; i++)
        if (harness_running(&f->node[i].proc)) harness_stop(&f->node[i].proc, 0);
    if (harness_running(&f->agg)) harness_stop(&f->agg, 0);
}

/* The aggregator's metrics line for a round (a JSON object; json_decref it),
 * or NULL when there is none (yet). */
static inline json_t *ft_round_metrics(const ft_fed *f, int round) {
    return harness_round_metrics(f->agg_state, (uint64_t)round);
}

/* How often `name` appears in a round's members_accepted (0 when the round
 * has no metrics line yet). */
static inline int ft_accepted(const ft_fed *f, int round, const char *name) {
    json_t *j = ft_round_metrics(f, round);
    json_t *acc = j ? json_object_get(j, "members_accepted") : NULL;
    int count = 0;
    for (size_t i = 0; json_is_array(acc) && i < json_array_size(acc); i++)
        count += json_is_string(json_array_get(acc, i)) &&
                 strcmp(json_string_value(json_array_get(acc, i)), name) == 0;
    json_decref(j);
    return count;
}

static inline int ft_count_accepted(const ft_fed *f, int round) {
    json_t *j = ft_round_metrics(f, round);
    json_t *acc = j ? json_object_get(j, "members_accepted") : NULL;
    int n = json_is_array(acc) ? (int)json_array_size(acc) : 0;
    json_decref(j);
    return n;
}

/* The version a round published (64 hex digits), "" when none. */
static inline void ft_version(const ft_fed *f, int round, char out[65]) {
    json_t *j = ft_round_metrics(f, round);
    json_t *v = j ? json_object_get(j, "version") : NULL;
    snprintf(out, 65, "%s", json_is_string(v) ? json_string_value(v) : "");
    json_decref(j);
}

/* Bytes of a file (0 when it is missing). */
static inline uint64_t ft_file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* How often needle appears in a file (a log). */
static inline int ft_count_in(const char *path, const char *needle) {
    char *t = ts_read(path, NULL);
    int n = 0;
    for (const char *p = t; p && (p = strstr(p, needle)); p += strlen(needle)) n++;
    free(t);
    return n;
}

/* Node i's metrics line for a round: how it synced the round's base
 * ("sync") and the bytes it fetched for that ("download_bytes"). */
static inline void ft_node_sync(const ft_fed *f, int i, int round, char sync[16], uint64_t *bytes) {
    char path[TS_PATH];
    char *text = ts_read(ts_in(path, f->node[i].state, "metrics.jsonl"), NULL);
    sync[0] = '\0';
    *bytes = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        if (j && json_integer_value(json_object_get(j, "round")) == round) {
            json_t *s = json_object_get(j, "sync");
            snprintf(sync, 16, "%s", json_is_string(s) ? json_string_value(s) : "");
            *bytes = (uint64_t)json_integer_value(json_object_get(j, "download_bytes"));
        }
        json_decref(j);
    }
    free(text);
}

/* Waits for a round's metrics line; 0, or -1 after timeout_s. */
static inline int ft_wait_round(const ft_fed *f, int round, double timeout_s) {
    for (double t0 = harness_now(); harness_now() - t0 < timeout_s; harness_sleep_ms(20)) {
        json_t *j = ft_round_metrics(f, round);
        json_decref(j);
        if (j) return 0;
    }
    return -1;
}

/* Starts every node pointed at endpoint, waits for all of them and then the
 * aggregator to exit 0 (each wait up to secs). */
static inline void ft_run_nodes(ft_fed *f, const char *endpoint, double secs) {
    for (int i = 0; i < f->n; i++) {
        CHECK_OK(ft_node_config(f, i, endpoint, ""));
        CHECK_OK(ft_start_node(f, i));
    }
    for (int i = 0; i < f->n; i++)
        CHECK_MSG(harness_wait(&f->node[i].proc, secs) == 0, "%s (see %s)", f->node[i].name,
                  f->node[i].log);
    CHECK_MSG(harness_wait(&f->agg, secs) == 0, "aggregator (see %s)", f->agg_log);
}

/* Re-derives a round offline from the aggregator's state directory
 * (agg_recompute) and checks that it gives the bytes the round published. */
static inline void ft_check_recompute(ft_fed *f, int round) {
    char version[65], out[TS_PATH], name[32], hex[65];
    ft_version(f, round, version);
    CHECK_MSG(strlen(version) == 64, "round %d published no version", round);
    agg_config c;
    uint8_t h[32];
    snprintf(name, sizeof name, "recompute-%d", round);
    ts_in(out, f->root, name);
    CHECK_OK(agg_config_load(&c, f->agg_config));
    CHECK_OK(agg_recompute(&c, (uint64_t)round, out, h));
    agg_config_free(&c);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", h[i]);
    CHECK_MSG(strcmp(hex, version) == 0, "round %d: recomputed %s, published %s", round, hex,
              version);
    /* The bytes themselves, not just what the function says they hash to
     * (one file, or the index and every shard it lists). */
    CHECK_MSG(version_verify(out, h) == 0, "round %d: %s", round, err_msg());
}

/* ---- a proxy between the nodes and the aggregator --------------------------------
 * Nodes connect to the proxy's ROUTER; each node (peer) gets its own DEALER
 * to the aggregator, so the aggregator sees ordinary nodes. Every request and
 * reply is decoded and shown to a hook, which says whether to pass it on.
 *
 * The federation runs with CURVE, so the proxy ends it on both sides: to the
 * nodes it is a CURVE server with the aggregator's own keys (a test may hold
 * them; an attacker cannot), and upstream each peer's DEALER speaks with the
 * keys of the identity whose public key the node showed, found in the key
 * directories the proxy knows (the federation's, and any added with
 * ft_proxy_add_keys). A key the aggregator refuses upstream is refused to
 * the node too, and its connection closed, as the aggregator would. */

enum { FT_PASS = 0, FT_SWALLOW = 1 };

typedef struct ft_proxy ft_proxy;
/* is_reply: 0 for a node's request, 1 for the aggregator's reply to it;
 * name: the node's name once it sent a HELLO ("" before). */
typedef int (*ft_hook)(ft_proxy *p, const char *name, int is_reply, const struct msg *m);

typedef struct {
    uint8_t id[256];
    size_t id_len;
    transport *back;
    transport_curve keys; /* the node's, upstream */
    char name[KEYS_NAME_MAX + 1];
} ft_peer;

struct ft_proxy {
    transport *front;
    char endpoint[512], upstream[512];
    ft_peer peer[16];
    int npeers;
    struct transport_opts o;
    transport_curve front_keys; /* the aggregator's */
    char keys_dirs[4][TS_PATH];
    int nkeys_dirs;
    uint8_t denied[16][32]; /* keys the aggregator refused upstream */
    int ndenied;
    ft_hook hook;
    void *arg;
    FILE *trace;
};

/* Another directory of identities the proxy may speak for upstream. */
static inline void ft_proxy_add_keys(ft_proxy *p, const char *dir) {
    if (p->nkeys_dirs < 4) snprintf(p->keys_dirs[p->nkeys_dirs++], TS_PATH, "%s", dir);
}

static inline int ft_proxy_open(ft_proxy *p, const ft_fed *f, const char *upstream, ft_hook hook,
                                void *arg) {
    memset(p, 0, sizeof *p);
    snprintf(p->upstream, sizeof p->upstream, "%s", upstream);
    p->hook = hook;
    p->arg = arg;
    p->trace = getenv("FT_TRACE") ? fopen(getenv("FT_TRACE"), "w") : NULL;
    ft_proxy_add_keys(p, f->keys);
    keys_secret agg;
    if (keys_load_secret(f->keys, "aggregator", &agg) != 0) return -1;
    memcpy(p->front_keys.secret_key, agg.kx_priv, 32);
    memcpy(p->front_keys.public_key, agg.pub.kx_pub, 32);
    keys_secret_wipe(&agg);
    transport_opts_default(&p->o);
    p->o.recv_timeout_ms = 0;
    p->o.curve = &p->front_keys;
    int rc = transport_router(&p->front, "tcp://127.0.0.1:*", &p->o) == 0 &&
                     transport_endpoint(p->front, p->endpoint, sizeof p->endpoint) == 0
                 ? 0
                 : -1;
    p->o.curve = NULL; /* each peer's DEALER gets its own keys */
    return rc;
}

static inline void ft_proxy_close(ft_proxy *p) {
    for (int i = 0; i < p->npeers; i++) transport_close(p->peer[i].back);
    transport_close(p->front);
    if (p->trace) fclose(p->trace);
}

/* The identity (in the proxy's key directories) whose X25519 key is pub. */
static inline int ft_proxy_find_key(ft_proxy *p, const uint8_t pub[32], keys_secret *out) {
    for (int d = 0; d < p->nkeys_dirs; d++) {
        DIR *dir = opendir(p->keys_dirs[d]);
        for (struct dirent *e; dir && (e = readdir(dir));) {
            size_t n = strlen(e->d_name);
            if (n < 4 || strcmp(e->d_name + n - 3, ".id") != 0 || n - 3 > KEYS_NAME_MAX) continue;
            char name[KEYS_NAME_MAX + 1];
            snprintf(name, sizeof name, "%.*s", (int)(n - 3), e->d_name);
            if (keys_load_secret(p->keys_dirs[d], name, out) == 0 &&
                !memcmp(out->pub.kx_pub, pub, 32)) {
                closedir(dir);
                return 1;
            }
            keys_secret_wipe(out);
        }
        if (dir) closedir(dir);
    }
    return 0;
}

static inline int ft_proxy_denied(const ft_proxy *p, const uint8_t pub[32]) {
    for (int i = 0; i < p->ndenied; i++)
        if (!memcmp(p->denied[i], pub, 32)) return 1;
    return 0;
}

/* The front's ZAP requests: a key the proxy can speak for upstream, and
 * that the aggregator has not refused; its User-Id is the key in hex. */
static inline void ft_proxy_zap(ft_proxy *p) {
    struct transport_zap_request q;
    while (transport_zap_next(p->front, &q) == 0) {
        keys_secret k;
        int ok = !strcmp(q.mechanism, "CURVE") && !ft_proxy_denied(p, q.client_key) &&
                 ft_proxy_find_key(p, q.client_key, &k);
        char user[65];
        hex_encode(q.client_key, 32, user);
        if (ok) keys_secret_wipe(&k);
        transport_zap_reply(p->front, &q, ok, user, ok ? "OK" : "no");
    }
}

static inline int ft_proxy_keep(void *arg, const char *user) {
    uint8_t pub[32];
    return hex_decode(user, pub, 32) != 0 || !ft_proxy_denied(arg, pub);
}

static inline ft_peer *ft_proxy_peer(ft_proxy *p, struct transport_msg *m) {
    const void *id = transport_data(m, 0);
    size_t len = transport_size(m, 0);
    for (int i = 0; i < p->npeers; i++)
        if (p->peer[i].id_len == len && memcmp(p->peer[i].id, id, len) == 0) return &p->peer[i];
    char user[80];
    uint8_t pub[32];
    keys_secret k;
    if (p->npeers == 16 || len > sizeof p->peer[0].id ||
        !transport_msg_user(m, user, sizeof user) || hex_decode(user, pub, 32) != 0 ||
        !ft_proxy_find_key(p, pub, &k))
        return NULL;
    ft_peer *q = &p->peer[p->npeers];
    memset(q, 0, sizeof *q);
    memcpy(q->id, id, len);
    q->id_len = len;
    memcpy(q->keys.secret_key, k.kx_priv, 32);
    memcpy(q->keys.public_key, k.pub.kx_pub, 32);
    keys_secret_wipe(&k);
    keys_public agg;
    char agg_id[TS_PATH];
    if (keys_load_public(ts_in(agg_id, p->keys_dirs[0], "aggregator.id"), &agg) != 0) return NULL;
    memcpy(q->keys.server_key, agg.kx_pub, 32);
    struct transport_opts o = p->o;
    o.curve = &q->keys;
    if (transport_dealer(&q->back, p->upstream, &o) != 0) return NULL;
    p->npeers++;
    return q;
}

/* Moves whatever is waiting, for up to ms milliseconds. */
static inline void ft_proxy_pump(ft_proxy *p, int ms) {
    for (double t0 = harness_now(); harness_now() - t0 < ms / 1000.0;) {
        transport *socks[17];
        int ready[17];
        int npeers = p->npeers; /* a new peer below is polled from the next round on */
        socks[0] = p->front;
        for (int i = 0; i < npeers; i++) socks[i + 1] = p->peer[i].back;
        ft_proxy_zap(p);
        /* A key the aggregator refused upstream is refused here too. */
        for (int i = 0; i < npeers; i++)
            if (transport_handshake(p->peer[i].back, NULL) == TRANSPORT_HS_REFUSED &&
                !ft_proxy_denied(p, p->peer[i].keys.public_key) && p->ndenied < 16) {
                memcpy(p->denied[p->ndenied++], p->peer[i].keys.public_key, 32);
                transport_drop_users(p->front, ft_proxy_keep, p);
            }
        if (transport_poll(socks, (size_t)npeers + 1, 10, ready) <= 0) continue;
        struct transport_msg m;
        if (ready[0] && transport_serve_recv(p->front, &p->o.lim, &m) == 0) {
            ft_peer *q = m.n == 3 ? ft_proxy_peer(p, &m) : NULL;
            struct msg req;
            if (q && msg_decode(transport_data(&m, 2), transport_size(&m, 2), NULL, &req) == 0) {
                if (req.type == MSG_HELLO) snprintf(q->name, sizeof q->name, "%s", req.hello.name);
                if (p->trace)
                    fprintf(p->trace, "%.3f req %s from %s\n", harness_now(),
                            msg_type_name(req.type), q->name);
                if (p->hook(p, q->name, 0, &req) == FT_PASS) {
                    struct transport_frame f[2] = {{transport_data(&m, 1), transport_size(&m, 1)},
                                                   {transport_data(&m, 2), transport_size(&m, 2)}};
                    if (transport_send(q->back, f, 2) != 0 && p->trace)
                        fprintf(p->trace, "%.3f send fail %s\n", harness_now(), err_msg());
                }
            }
            transport_msg_close(&m);
        }
        for (int i = 0; i < npeers; i++) {
            if (!ready[i + 1] || transport_recv(p->peer[i].back, &p->o.lim, &m) != 0) continue;
            struct msg rep;
            int ok = m.n == 2 &&
                     msg_decode(transport_data(&m, 1), transport_size(&m, 1), NULL, &rep) == 0;
            if (p->trace)
                fprintf(p->trace, "%.3f reply %s to %s\n", harness_now(),
                        ok ? msg_type_name(rep.type) : "(undecodable)", p->peer[i].name);
            if (ok && p->hook(p, p->peer[i].name, 1, &rep) == FT_PASS) {
                struct transport_frame f[3] = {{p->peer[i].id, p->peer[i].id_len},
                                               {transport_data(&m, 0), transport_size(&m, 0)},
                                               {transport_data(&m, 1), transport_size(&m, 1)}};
                transport_send(p->front, f, 3);
            }
            transport_msg_close(&m);
        }
    }
}

#endif
