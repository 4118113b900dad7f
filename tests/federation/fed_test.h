/* fed_test.h — what the federation integration tests share: a scratch
 * federation (tiny base model, keys, aggregator and node configs) in a
 * temporary directory, the real `fedlora` binary (env FEDLORA_BIN) started as
 * aggregator and node processes on loopback, waiting on them and on their
 * files, and a message-level proxy between nodes and the aggregator that can
 * hold or swallow chosen requests and replies (so a test can kill a node at
 * an exact point of its upload, or make a submission arrive late). With env
 * FT_TRACE=FILE the proxy writes every message it sees to FILE. */
#ifndef FL_TESTS_FED_TEST_H
#define FL_TESTS_FED_TEST_H

#include "aggregator/agg.h"
#include "aggregator/config.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/tokenizer/tokenizer.h"
#include "node/demo_corpus.h"
#include "tests/check.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"
#include "wire/crypto.h"
#include "wire/keys.h"
#include "wire/msg.h"
#include "wire/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FT_PATH 1024
#define FT_NODES 4

static inline double ft_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void ft_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline const char *ft_bin(void) {
    const char *b = getenv("FEDLORA_BIN");
    return b ? b : "fedlora";
}

static inline const char *ft_in(char *out, const char *dir, const char *name) {
    if (fio_join(out, FT_PATH, dir, name) != 0) out[0] = '\0';
    return out;
}

static inline int ft_write(const char *path, const char *text) {
    return fio_write_atomic(path, text, strlen(text), 0644);
}

/* The whole file as a string (NULL when missing); free() it. */
static inline char *ft_read(const char *path) {
    char *text;
    size_t len;
    if (!fio_exists(path) || fio_read_all(path, 1u << 26, &text, &len) != 0) return NULL;
    return text;
}

static inline int ft_contains(const char *path, const char *needle) {
    char *t = ft_read(path);
    int found = t && strstr(t, needle) != NULL;
    free(t);
    return found;
}

/* Starts `fedlora ARGS...` (NULL-terminated) with stdout and stderr appended
 * to log. One OpenMP thread: the tests share a small machine. */
static inline pid_t ft_spawn(const char *log, ...) {
    const char *argv[16] = {"fedlora"};
    int n = 1;
    va_list ap;
    va_start(ap, log);
    for (const char *a; n < 15 && (a = va_arg(ap, const char *));) argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
        if (dup2(fd, 1) < 0 || dup2(fd, 2) < 0) _exit(127);
        setenv("OMP_NUM_THREADS", "1", 1);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        execv(ft_bin(), (char *const *)argv);
        _exit(127);
    }
    close(fd);
    return p;
}

/* Waits for a child to exit; its exit status, 128+N after signal N, or -1
 * when it is still running after timeout_s (it is then killed). */
static inline int ft_wait(pid_t pid, double timeout_s) {
    if (pid <= 0) return -1;
    for (double t0 = ft_now();;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (ft_now() - t0 > timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        ft_sleep_ms(20);
    }
}

/* 1 while the child runs; an exited child is left for ft_wait to reap. */
static inline int ft_running(pid_t pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (pid <= 0 || waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return 0;
    return info.si_pid == 0;
}

/* Waits until path exists; 0, or -1 after timeout_s. */
static inline int ft_wait_file(const char *path, double timeout_s) {
    for (double t0 = ft_now(); ft_now() - t0 < timeout_s; ft_sleep_ms(10))
        if (fio_exists(path)) return 0;
    return -1;
}

/* ---- a scratch federation ------------------------------------------------------- */

typedef struct {
    int rounds, quorum, deadline_s, steps, rank, seq, save_every, linger_s;
    const char *below_quorum; /* "wait" or "fail" */
    const char *arch;         /* the base model's init-model preset family ("llama") */
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
                      .arch = "llama"};
}

typedef struct {
    char root[FT_PATH], base[FT_PATH], keys[FT_PATH];
    char agg_config[FT_PATH], agg_state[FT_PATH], agg_log[FT_PATH], endpoint[256];
    int n;
    char name[FT_NODES][64], node_dir[FT_NODES][FT_PATH], node_config[FT_NODES][FT_PATH],
        node_state[FT_NODES][FT_PATH], node_log[FT_NODES][FT_PATH];
    pid_t agg, node[FT_NODES];
    ft_options o;
} ft_fed;

/* The demo's base model (cli/cmd_demo.c): init-model's tiny Llama (or the
 * tiny preset of another family) with initializer_range 0.1, seed 1, and its
 * byte-level tokenizer. */
static inline int ft_base_model(const char *dir, const char *arch) {
    model_config cfg;
    model *m = NULL;
    char path[FT_PATH];
    if (model_config_preset(&cfg, arch, "tiny") != 0) return -1;
    cfg.bos_token_id = cfg.eos_token_id = 256;
    cfg.initializer_range = 0.1;
    if (model_create(&m, &cfg) != 0) return -1;
    model_init_random(m, 1);
    int rc = checkpoint_save(m, dir, "float32");
    model_free(m);
    tokenizer_special_token eot = {"<|endoftext|>", 256};
    if (rc == 0) rc = tokenizer_save_bytelevel(ft_in(path, dir, "tokenizer.json"), &eot, 1, NULL);
    return rc;
}

static inline int ft_keys(const char *dir, const char *name) {
    keys_secret k;
    int rc = keys_generate(name, &k) == 0 && keys_write(&k, dir) == 0 ? 0 : -1;
    keys_secret_wipe(&k);
    return rc;
}

/* Makes the federation's files: base model, keys for "aggregator" and n
 * members named uni-<domain>, each with the training lines of a demo domain
 * as its data, and the aggregator's config. */
static inline int ft_setup(ft_fed *f, const char *tag, int n, const ft_options *o) {
    memset(f, 0, sizeof *f);
    f->n = n;
    f->o = *o;
    setenv("OMP_WAIT_POLICY", "passive", 0);
    snprintf(f->root, sizeof f->root, "/tmp/fl_fed_%s_XXXXXX", tag);
    if (!mkdtemp(f->root)) return err_errno("mkdtemp");
    char agg_dir[FT_PATH], text[8192], members[1024] = "";
    if (!*ft_in(f->base, f->root, "base") || !*ft_in(f->keys, f->root, "keys") ||
        !*ft_in(agg_dir, f->root, "aggregator") || fio_mkdirs(agg_dir, 0700) != 0 ||
        !*ft_in(f->agg_config, agg_dir, "aggregator.cfg") ||
        !*ft_in(f->agg_state, agg_dir, "state") || !*ft_in(f->agg_log, agg_dir, "aggregator.log"))
        return -1;
    if (ft_base_model(f->base, o->arch) != 0 || ft_keys(f->keys, "aggregator") != 0) return -1;
    for (int i = 0; i < n; i++) {
        const demo_domain *d = &demo_domains[i % demo_num_domains];
        char nodes[FT_PATH], data[FT_PATH], one[128];
        snprintf(f->name[i], sizeof f->name[i], "uni-%s", d->name);
        if (!*ft_in(nodes, f->root, "nodes") || !*ft_in(f->node_dir[i], nodes, f->name[i]) ||
            fio_mkdirs(f->node_dir[i], 0700) != 0 ||
            ft_write(ft_in(data, f->node_dir[i], "data.txt"), d->train) != 0 ||
            !*ft_in(f->node_config[i], f->node_dir[i], "node.cfg") ||
            !*ft_in(f->node_state[i], f->node_dir[i], "state") ||
            !*ft_in(f->node_log[i], f->node_dir[i], "node.log") || ft_keys(f->keys, f->name[i]))
            return -1;
        snprintf(one, sizeof one, "%s\"../keys/%s.id\"", i ? ", " : "", f->name[i]);
        strcat(members, one);
    }
    snprintf(text, sizeof text,
             "bind = \"tcp://127.0.0.1:*\";\n"
             "keys = { dir = \"../keys\"; name = \"aggregator\"; };\n"
             "consortium = \"fed-test\";\n"
             "members = [ %s ];\n"
             "base_model = \"../base\";\n"
             "state = \"state\";\n"
             "rounds = { count = %d; quorum = %d; deadline = %d; below_quorum = \"%s\"; "
             "linger = %d; };\n"
             "train = { steps = %d; lr = 0.01; rank = %d; alpha = %d; targets = [ \"q_proj\", "
             "\"v_proj\", \"down_proj\" ]; batch = 4; seq = %d; };\n",
             members, o->rounds, o->quorum ? o->quorum : n, o->deadline_s, o->below_quorum,
             o->linger_s, o->steps, o->rank, 2 * o->rank, o->seq);
    return ft_write(f->agg_config, text);
}

/* Starts the aggregator and waits for the endpoint it listens on. */
static inline int ft_start_aggregator(ft_fed *f) {
    char path[FT_PATH];
    f->agg = ft_spawn(f->agg_log, "aggregator", "--config", f->agg_config, NULL);
    if (f->agg < 0 || ft_wait_file(ft_in(path, f->agg_state, "endpoint"), 30) != 0)
        return err_set("the aggregator did not start (see %s)", f->agg_log);
    char *ep = ft_read(path);
    if (!ep) return -1;
    ep[strcspn(ep, "\n")] = 0;
    snprintf(f->endpoint, sizeof f->endpoint, "%s", ep);
    free(ep);
    return 0;
}

/* Writes node i's config, pointing it at endpoint (the aggregator's, or a
 * proxy's); extra is more config text (may be ""). */
static inline int ft_node_config(ft_fed *f, int i, const char *endpoint, const char *extra) {
    char text[4096];
    snprintf(text, sizeof text,
             "keys = { dir = \"../../keys\"; name = \"%s\"; };\n"
             "consortium = \"fed-test\";\n"
             "aggregator = { endpoint = \"%s\"; identity = \"../../keys/aggregator.id\"; };\n"
             "base_model = \"../../base\";\n"
             "data = \"data.txt\";\n"
             "eval_fraction = 0.2;\n"
             "state = \"state\";\n"
             "threads = 1;\n"
             "poll_ms = 50;\n"
             "request_timeout_ms = 1000;\n"
             "give_up_s = 120;\n"
             "save_every = %d;\n%s",
             f->name[i], endpoint, f->o.save_every, extra);
    return ft_write(f->node_config[i], text);
}

static inline int ft_start_node(ft_fed *f, int i) {
    f->node[i] = ft_spawn(f->node_log[i], "node", "--config", f->node_config[i], NULL);
    return f->node[i] > 0 ? 0 : err_set("cannot start node %d", i);
}

/* Kills whatever is still running and removes the scratch directory unless
 * the test failed (then it stays for a look). */
static inline void ft_teardown(ft_fed *f) {
    for (int i = 0; i < f->n; i++)
        if (f->node[i] > 0 && ft_running(f->node[i]))
            kill(f->node[i], SIGKILL), ft_wait(f->node[i], 5);
    if (f->agg > 0 && ft_running(f->agg)) kill(f->agg, SIGKILL), ft_wait(f->agg, 5);
    if (check_failed) {
        fprintf(stderr, "federation files kept in %s\n", f->root);
        return;
    }
    char cmd[FT_PATH + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->root);
}

/* The aggregator's metrics line for a round (a JSON object; json_decref it),
 * or NULL when there is none (yet). */
static inline json_t *ft_round_metrics(const ft_fed *f, int round) {
    char path[FT_PATH];
    char *text = ft_read(ft_in(path, f->agg_state, "metrics.jsonl"));
    json_t *found = NULL;
    for (char *line = text ? strtok(text, "\n") : NULL; line && !found; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *r = j ? json_object_get(j, "round") : NULL;
        if (json_is_integer(r) && json_integer_value(r) == round)
            found = j;
        else
            json_decref(j);
    }
    free(text);
    return found;
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

/* Waits for a round's metrics line; 0, or -1 after timeout_s. */
static inline int ft_wait_round(const ft_fed *f, int round, double timeout_s) {
    for (double t0 = ft_now(); ft_now() - t0 < timeout_s; ft_sleep_ms(20)) {
        json_t *j = ft_round_metrics(f, round);
        json_decref(j);
        if (j) return 0;
    }
    return -1;
}

/* SHA-256 of a file as hex. */
static inline int ft_hash_file(const char *path, char out[65]) {
    uint8_t h[32];
    if (crypto_sha256_file(path, h, NULL) != 0) return -1;
    hex_encode(h, 32, out);
    return 0;
}

/* Starts every node pointed at endpoint, waits for all of them and then the
 * aggregator to exit 0 (each wait up to secs). */
static inline void ft_run_nodes(ft_fed *f, const char *endpoint, double secs) {
    for (int i = 0; i < f->n; i++) {
        CHECK_OK(ft_node_config(f, i, endpoint, ""));
        CHECK_OK(ft_start_node(f, i));
    }
    for (int i = 0; i < f->n; i++)
        CHECK_MSG(ft_wait(f->node[i], secs) == 0, "%s (see %s)", f->name[i], f->node_log[i]);
    CHECK_MSG(ft_wait(f->agg, secs) == 0, "aggregator (see %s)", f->agg_log);
}

/* Re-derives a round offline from the aggregator's state directory
 * (agg_recompute) and checks that it gives the bytes the round published. */
static inline void ft_check_recompute(ft_fed *f, int round) {
    char version[65], out[FT_PATH], name[32], hex[65], model[FT_PATH];
    ft_version(f, round, version);
    CHECK_MSG(strlen(version) == 64, "round %d published no version", round);
    agg_config c;
    uint8_t h[32];
    snprintf(name, sizeof name, "recompute-%d", round);
    ft_in(out, f->root, name);
    CHECK_OK(agg_config_load(&c, f->agg_config));
    CHECK_OK(agg_recompute(&c, (uint64_t)round, out, h));
    agg_config_free(&c);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", h[i]);
    CHECK_MSG(strcmp(hex, version) == 0, "round %d: recomputed %s, published %s", round, hex,
              version);
    /* The bytes themselves, not just what the function says they hash to. */
    char got[65] = "";
    CHECK_OK(ft_hash_file(ft_in(model, out, "model.safetensors"), got));
    CHECK_MSG(strcmp(got, version) == 0, "round %d: recomputed file hashes to %s", round, got);
}

/* ---- a proxy between the nodes and the aggregator --------------------------------
 * Nodes connect to the proxy's ROUTER; each node (peer) gets its own DEALER
 * to the aggregator, so the aggregator sees ordinary nodes. Every request and
 * reply is decoded and shown to a hook, which says whether to pass it on. */

enum { FT_PASS = 0, FT_SWALLOW = 1 };

typedef struct ft_proxy ft_proxy;
/* is_reply: 0 for a node's request, 1 for the aggregator's reply to it;
 * name: the node's name once it sent a HELLO ("" before). */
typedef int (*ft_hook)(ft_proxy *p, const char *name, int is_reply, const struct msg *m);

typedef struct {
    uint8_t id[256];
    size_t id_len;
    void *back;
    char name[KEYS_NAME_MAX + 1];
} ft_peer;

struct ft_proxy {
    void *ctx, *front;
    char endpoint[256], upstream[256];
    ft_peer peer[16];
    int npeers;
    struct transport_opts o;
    ft_hook hook;
    void *arg;
    FILE *trace;
};

static inline int ft_proxy_open(ft_proxy *p, const char *upstream, ft_hook hook, void *arg) {
    memset(p, 0, sizeof *p);
    snprintf(p->upstream, sizeof p->upstream, "%s", upstream);
    p->hook = hook;
    p->arg = arg;
    p->trace = getenv("FT_TRACE") ? fopen(getenv("FT_TRACE"), "w") : NULL;
    transport_opts_default(&p->o);
    p->o.recv_timeout_ms = 0;
    p->ctx = zmq_ctx_new();
    if (!p->ctx) return err_set("zmq_ctx_new");
    return transport_router(p->ctx, "tcp://127.0.0.1:*", &p->o, &p->front) == 0 &&
                   transport_endpoint(p->front, p->endpoint, sizeof p->endpoint) == 0
               ? 0
               : -1;
}

static inline void ft_proxy_close(ft_proxy *p) {
    for (int i = 0; i < p->npeers; i++) transport_close(p->peer[i].back);
    if (p->front) transport_close(p->front);
    if (p->ctx) zmq_ctx_term(p->ctx);
    if (p->trace) fclose(p->trace);
}

static inline ft_peer *ft_proxy_peer(ft_proxy *p, const void *id, size_t len) {
    for (int i = 0; i < p->npeers; i++)
        if (p->peer[i].id_len == len && memcmp(p->peer[i].id, id, len) == 0) return &p->peer[i];
    if (p->npeers == 16 || len > sizeof p->peer[0].id) return NULL;
    ft_peer *q = &p->peer[p->npeers];
    memset(q, 0, sizeof *q);
    memcpy(q->id, id, len);
    q->id_len = len;
    if (transport_dealer(p->ctx, p->upstream, &p->o, &q->back) != 0) return NULL;
    p->npeers++;
    return q;
}

/* Moves whatever is waiting, for up to ms milliseconds. */
static inline void ft_proxy_pump(ft_proxy *p, int ms) {
    for (double t0 = ft_now(); ft_now() - t0 < ms / 1000.0;) {
        zmq_pollitem_t items[17];
        int npeers = p->npeers; /* a new peer below is polled from the next round on */
        items[0] = (zmq_pollitem_t){p->front, 0, ZMQ_POLLIN, 0};
        for (int i = 0; i < npeers; i++)
            items[i + 1] = (zmq_pollitem_t){p->peer[i].back, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(items, npeers + 1, 10) <= 0) continue;
        struct transport_msg m;
        if ((items[0].revents & ZMQ_POLLIN) && transport_recv(p->front, &p->o.lim, &m) == 0) {
            ft_peer *q =
                m.n == 3 ? ft_proxy_peer(p, transport_data(&m, 0), transport_size(&m, 0)) : NULL;
            struct msg req;
            if (q && msg_decode(transport_data(&m, 2), transport_size(&m, 2), NULL, &req) == 0) {
                if (req.type == MSG_HELLO) snprintf(q->name, sizeof q->name, "%s", req.hello.name);
                if (p->trace)
                    fprintf(p->trace, "%.3f req %s from %s\n", ft_now(), msg_type_name(req.type),
                            q->name);
                if (p->hook(p, q->name, 0, &req) == FT_PASS) {
                    struct transport_frame f[2] = {{transport_data(&m, 1), transport_size(&m, 1)},
                                                   {transport_data(&m, 2), transport_size(&m, 2)}};
                    if (transport_send(q->back, f, 2) != 0 && p->trace)
                        fprintf(p->trace, "%.3f send fail %s\n", ft_now(), err_msg());
                }
            }
            transport_msg_close(&m);
        }
        for (int i = 0; i < npeers; i++) {
            if (!(items[i + 1].revents & ZMQ_POLLIN) ||
                transport_recv(p->peer[i].back, &p->o.lim, &m) != 0)
                continue;
            struct msg rep;
            int ok = m.n == 2 &&
                     msg_decode(transport_data(&m, 1), transport_size(&m, 1), NULL, &rep) == 0;
            if (p->trace)
                fprintf(p->trace, "%.3f reply %s to %s\n", ft_now(),
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
