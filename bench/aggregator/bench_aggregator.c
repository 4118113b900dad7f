/* bench_aggregator — a federated round's cost outside training, and the
 * aggregator's memory against the number of nodes.
 *
 * A real `fedlora aggregator` process (--fedlora BIN) on tcp://127.0.0.1
 * serves a round on a randomly initialised model (default: preset
 * llama/100m, float32; --dtype bfloat16 for a bf16 base, whose versions are
 * then bf16). This program plays N nodes one after another, each
 * with a random rank-R adapter (B filled too, so B·A != 0; no training):
 *
 *   sync      GET_MODEL of the whole base version (1 MiB chunks) by the first
 *             node, written to disk (fsync) and SHA-256 checked: the
 *             full-weights model sync
 *   seal      payload_delta_encode + envelope_seal_mem, per node
 *   submit    SUBMIT_BEGIN, 1 MiB SUBMIT_CHUNKs, SUBMIT_END until the RECEIPT:
 *             transfer plus the aggregator's checks (digest, envelope open
 *             and signature, DELTA decode, shapes, finite values) and its
 *             durable store (fsync, rename, journal) before the receipt
 *   aggregate the aggregator's merge of the N deltas (metrics.jsonl aggregate_s)
 *   publish   writing and hashing the new version, and writing its low-rank
 *             update file (metrics.jsonl publish_s)
 *   lowrank   when round 2 opens, the second node reaches the new version
 *             from the base it holds, as `fedlora node` does (node/sync.c):
 *             GET_MODEL of the update object (to disk, SHA-256 checked),
 *             then map the base and write the new version from it
 *             (update_write_version), SHA-256 against the round's base
 *             (lowrank_fetch_s, then lowrank_make_s)
 *   full      the same node downloading that version in full instead
 *             (full_s), for comparison
 *
 * The aggregator's peak resident memory is its ru_maxrss (wait4) over the
 * whole run (start-up's import of the base included); round_rss is the
 * largest VmRSS sampled from the moment it listens to the end of the round:
 * N verifications, the merge and the publish; idle_rss its VmRSS when it
 * starts listening (the program and its libraries, what it keeps between
 * rounds). --base DIR: an existing model directory as the base (an
 * 8B-shaped one from `init-model --config`, bench/scale/run.sh) instead of
 * one made here. --scale, for models that fill the disk: the first node's
 * full sync is received and hashed but not kept (the node's copy is a hard
 * link to the stored version), the base directory is deleted once the
 * aggregator has imported it, the version made by low-rank sync is deleted
 * once checked, and the new version is not downloaded in full again;
 * lowrank_make_rss is this process's peak while it makes the version.
 * --check-round F: exit 1 unless round_rss − idle_rss is at most
 * F × model_bytes + 2 × update_bytes (the members' adapters and the merged
 * factors): the memory test (tests/aggregator/round_memory.sh).
 * Prints one RESULT line of key=value pairs. */
#include "lora/lora.h"
#include "lora/update.h"
#include "model/checkpoint.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"
#include "wire/hello.h"
#include "wire/crypto.h"
#include "wire/envelope.h"
#include "wire/keys.h"
#include "wire/msg.h"
#include "wire/payload.h"
#include "wire/client.h"
#include "wire/version.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "bench_aggregator: %s: %s\n", what, err_msg());
    exit(1);
}

/* snprintf that refuses to truncate a path. */
static void path(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void path(char *out, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= n) {
        err_set("path too long");
        die(fmt);
    }
}

static client *cl;       /* to the aggregator: the connection of the node speaking now */
static client **node_cl; /* each node's own (CURVE: keyed by its identity) */

/* Samples the aggregator's VmRSS every 5 ms while the round runs: the
 * memory of the round itself, apart from the start-up's import of the base
 * (which ru_maxrss, the whole process's peak, includes). */
static volatile int sampling = 1;
static long round_rss_kib, idle_rss_kib;

static long vm_kib(int pid, const char *field) {
    char path[64], line[256];
    long kib = 0;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, strlen(field))) kib = atol(line + strlen(field));
    if (f) fclose(f);
    return kib;
}

static void *sampler(void *arg) {
    while (sampling) {
        long kib = vm_kib((int)(intptr_t)arg, "VmRSS:");
        if (kib > round_rss_kib) round_rss_kib = kib;
        usleep(5000);
    }
    return NULL;
}

/* One request, one reply (valid until the next request). */
static void request(const struct msg *m, struct msg *r) {
    if (client_call(cl, m, r) != CLIENT_OK) die("request");
}

static keys_secret *members; /* the nodes' identities, for hello() to find its connection */

static void hello(const keys_secret *k, struct msg *r) {
    cl = node_cl[k - members]; /* the node speaks on its own connection from here on */
    struct msg m = {.type = MSG_HELLO};
    uint8_t consortium[32];
    snprintf(m.hello.name, sizeof m.hello.name, "%s", k->pub.name);
    keys_fingerprint(&k->pub, m.hello.fingerprint);
    if (payload_consortium_id("bench", consortium) < 0 ||
        hello_sign(&m.hello, consortium, k, (uint64_t)time(NULL)) < 0)
        die("signing HELLO");
    request(&m, r);
}

/* Where fetch's chunks go: the file (or nowhere), their hash, and the
 * first VERSION_INDEX_MAX bytes in memory (a sharded version's index). */
typedef struct {
    int fd;
    const char *path;
    crypto_sha256_ctx *sha;
    char *head;
    size_t head_len;
} fetch_sink;

static int to_file(void *arg, const uint8_t *data, size_t len) {
    fetch_sink *f = arg;
    if (f->head_len + len <= VERSION_INDEX_MAX) {
        memcpy(f->head + f->head_len, data, len);
        f->head_len += len;
    } else {
        f->head_len = VERSION_INDEX_MAX + 1; /* too long for an index */
    }
    return crypto_sha256_update(f->sha, data, len) < 0 ||
                   (f->fd >= 0 && fio_write_full(f->fd, data, len, f->path) < 0)
               ? -1
               : 0;
}

/* GET_MODEL of the whole object `hash` into path (written, fsync'd; NULL:
 * received and hashed only), its SHA-256 checked, as a node's download
 * does; returns its size. */
static uint64_t fetch_head(const uint8_t hash[32], const char *path, char **head,
                           size_t *head_len) {
    fetch_sink f = {path ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1, path, NULL,
                    malloc(VERSION_INDEX_MAX), 0};
    if ((path && f.fd < 0) || !f.head) die(path ? path : "memory");
    if (crypto_sha256_new(&f.sha) < 0) die("sha256");
    uint64_t total = 0;
    if (client_download(cl, hash, 0, 0, UINT64_MAX, to_file, &f, &total) != CLIENT_OK)
        die("GET_MODEL");
    uint8_t h[32];
    if ((path && (fsync(f.fd) != 0 || close(f.fd) != 0)) || crypto_sha256_final(f.sha, h) < 0)
        die(path ? path : "hashing");
    crypto_sha256_free(f.sha);
    if (memcmp(h, hash, 32) != 0) die("fetched object hash");
    if (head) {
        *head = f.head;
        *head_len = f.head_len;
    } else {
        free(f.head);
    }
    return total;
}

static uint64_t fetch(const uint8_t hash[32], const char *path) {
    return fetch_head(hash, path, NULL, NULL);
}

/* A whole version, as a node syncs it: GET_MODEL of its hash, and when that
 * is a sharded version's index, each shard by its own hash (into dir, or
 * received and hashed only when dir is NULL); returns the bytes moved. */
static uint64_t fetch_version(const uint8_t hash[32], const char *dir) {
    char root[4200], p[4200];
    char *head = NULL;
    size_t head_len = 0;
    if (dir) path(root, sizeof root, "%s/download.root", dir);
    uint64_t total = fetch_head(hash, dir ? root : NULL, &head, &head_len);
    version_index *x = NULL;
    int sharded = head_len <= VERSION_INDEX_MAX && head_len > 0 && head[0] == '{';
    if (sharded && version_index_parse(&x, head, head_len, "the version's index") < 0)
        die("the version's index");
    free(head);
    for (int i = 0; sharded && i < x->n_shards; i++) {
        if (dir) path(p, sizeof p, "%s/%s", dir, x->shards[i].name);
        total += fetch(x->shards[i].hash, dir ? p : NULL);
    }
    version_index_free(x);
    if (dir) {
        path(p, sizeof p, "%s/%s", dir, sharded ? VERSION_INDEX_FILE : VERSION_MODEL_FILE);
        if (rename(root, p) != 0) die("renaming the downloaded version");
    }
    return total;
}

/* A random rank-r adapter on m's shapes, as a DELTA payload. */
static uint8_t *make_delta(const model *m, const uint8_t base[32], int rank, const char *targets,
                           uint64_t seed, size_t *len, size_t *adapter_bytes) {
    lora_config cfg;
    lora_config_init(&cfg);
    cfg.rank = rank;
    cfg.alpha = 2.0 * rank;
    cfg.seed = seed;
    lora_set *s = NULL;
    if (lora_config_set_targets(&cfg, targets) < 0 || lora_create(&s, m, &cfg) < 0)
        die("lora_create");
    struct msg_tensor *t = calloc((size_t)(2 * s->n_modules), sizeof *t);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    *adapter_bytes = 0;
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        for (int64_t k = 0; k < mod->B.numel; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            mod->B.data[k] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5) * 1e-3f;
        }
        model_param *p[2] = {&mod->A, &mod->B};
        for (int j = 0; j < 2; j++) {
            struct msg_tensor *e = &t[2 * i + j];
            snprintf(e->name, sizeof e->name, "%s", p[j]->name);
            e->dtype = MSG_F32;
            e->ndim = 2;
            e->shape[0] = (uint64_t)p[j]->shape[0];
            e->shape[1] = (uint64_t)p[j]->shape[1];
            e->data = (const uint8_t *)p[j]->data;
            e->size = (uint64_t)p[j]->numel * 4;
            *adapter_bytes += e->size;
        }
    }
    struct payload_delta d = {.round = 1,
                              .tokens = 10000 + seed,
                              .examples = 100,
                              .loss_before = 10.0,
                              .loss_after = 9.0,
                              .rank = (uint32_t)rank,
                              .alpha = cfg.alpha,
                              .tensors = t,
                              .ntensors = (size_t)(2 * s->n_modules)};
    memcpy(d.base, base, 32);
    d.ntargets = (uint32_t)cfg.n_targets;
    for (int i = 0; i < cfg.n_targets; i++)
        snprintf(d.targets[i], sizeof d.targets[i], "%s", cfg.targets[i]);
    uint8_t *out;
    if (payload_delta_encode(&d, &out, len) < 0) die("payload_delta_encode");
    free(t);
    lora_free(s);
    lora_config_free(&cfg);
    return out;
}

int main(int argc, char **argv) {
    const char *bin = NULL, *dir = "/tmp/fedlora-bench-aggregator", *preset = "100m",
               *dtype = "float32", *base_arg = NULL;
    double check_round = 0;
    int scale = 0;
    const char *targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    int nodes = 3, rank = 16;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--fedlora"))
            bin = argv[i + 1];
        else if (!strcmp(argv[i], "--nodes"))
            nodes = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rank"))
            rank = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--preset"))
            preset = argv[i + 1];
        else if (!strcmp(argv[i], "--targets"))
            targets = argv[i + 1];
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--dtype"))
            dtype = argv[i + 1];
        else if (!strcmp(argv[i], "--check-round"))
            check_round = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--base"))
            base_arg = argv[i + 1];
        else if (!strcmp(argv[i], "--scale"))
            scale = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!bin || nodes < 1 || nodes > 64 || rank < 1) {
        fprintf(stderr, "usage: bench_aggregator --fedlora BIN [--nodes N] [--rank R] [--preset "
                        "P] [--targets LIST] [--dir DIR] [--dtype float32|bfloat16] "
                        "[--check-round F] [--base DIR] [--scale 1]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    char p[4096], run[4096], keys[4096], base_dir[4096];
    if (base_arg)
        path(base_dir, sizeof base_dir, "%s", base_arg);
    else
        path(base_dir, sizeof base_dir, "%s/base-%s-%s", dir, preset, dtype);
    path(run, sizeof run, "%s/run-%d", dir, nodes);
    path(keys, sizeof keys, "%s/keys", run);
    path(p, sizeof p, "rm -rf '%s'", run);
    if (system(p) != 0 || fio_mkdirs(run, 0700) < 0) die("preparing the run directory");

    /* The base model, made once per preset and dtype (random weights), or
     * given; mapped here (only its shapes are used). */
    model_config mc;
    model *m = NULL;
    path(p, sizeof p, "%s/model.safetensors", base_dir);
    if (!base_arg && !fio_exists(p)) {
        if (model_config_preset(&mc, "llama", preset) < 0 || model_create(&m, &mc) < 0)
            die("model");
        model_init_random(m, 1);
        if (checkpoint_save(m, base_dir, dtype) < 0) die("saving the base");
        model_free(m);
    }
    if (checkpoint_map(&m, base_dir, MODEL_PRECISION_FP32) < 0) die("the base model");
    mc = m->cfg;

    keys_secret agg, *mem = calloc((size_t)nodes, sizeof *mem);
    if (keys_generate("agg", &agg) < 0 || keys_write(&agg, keys) < 0) die("keys");
    char cfg[1 << 16];
    int n = snprintf(cfg, sizeof cfg,
                     "bind = \"tcp://127.0.0.1:*\";\nkeys = { dir = \"%s\"; name = \"agg\"; };\n"
                     "consortium = \"bench\";\nbase_model = \"%s\";\nstate = \"%s/state\";\n"
                     "rounds = { count = 2; deadline = 86400; linger = 600; };\n"
                     "train = { steps = 1; lr = 0.001; rank = %d; alpha = %d; targets = "
                     "[\"q_proj\"]; batch = 1; seq = 16; };\n"
                     "limits = { max_submission = 1073741824; };\nmembers = (",
                     keys, base_dir, run, rank, 2 * rank);
    for (int i = 0; i < nodes; i++) {
        char name[32];
        snprintf(name, sizeof name, "uni-%02d", i);
        if (keys_generate(name, &mem[i]) < 0 || keys_write(&mem[i], keys) < 0) die("keys");
        n += snprintf(cfg + n, sizeof cfg - (size_t)n, "%s\"%s/%s.id\"", i ? ", " : "", keys, name);
    }
    n += snprintf(cfg + n, sizeof cfg - (size_t)n, ");\n");
    char cfg_path[4200], log_path[4200], ep_path[4200];
    path(cfg_path, sizeof cfg_path, "%s/aggregator.cfg", run);
    path(log_path, sizeof log_path, "%s/aggregator.log", run);
    path(ep_path, sizeof ep_path, "%s/state/endpoint", run);
    if (fio_write_atomic(cfg_path, cfg, (size_t)n, 0644) < 0) die("config");

    double t_start = now_s();
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 2);
        execl(bin, "fedlora", "aggregator", "--config", cfg_path, (char *)NULL);
        _exit(127);
    }
    char *ep = NULL;
    size_t len;
    while (!fio_exists(ep_path) || fio_read_all(ep_path, 1024, &ep, &len) < 0) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "aggregator exited; see %s\n", log_path);
            return 1;
        }
        usleep(20000);
    }
    double t_listen = now_s();
    idle_rss_kib = vm_kib((int)pid, "VmRSS:");
    if (scale) { /* imported: the base's bytes are in the store now */
        path(p, sizeof p, "rm -rf '%s'", base_dir);
        if (system(p) != 0) die("removing the imported base");
    }
    pthread_t th;
    pthread_create(&th, NULL, sampler, (void *)(intptr_t)pid);
    ep[len - 1] = '\0';
    client_options co;
    client_options_default(&co);
    co.timeout_ms = 600000; /* a merge of 16 may take long */
    node_cl = calloc((size_t)nodes, sizeof *node_cl);
    members = mem;
    co.curve_server = agg.pub.kx_pub;
    for (int i = 0; node_cl && i < nodes; i++) {
        co.curve_me = &mem[i];
        if (client_open(&node_cl[i], ep, &co) < 0) die("connect");
    }
    if (!node_cl) die("out of memory");

    /* Full-weights sync by the first node, into the version directory the
     * nodes hold (config.json is the federation's, from the base model). */
    struct msg r;
    uint8_t base[32];
    hello(&mem[0], &r);
    if (r.type != MSG_ROUND) die("HELLO");
    memcpy(base, r.round.base, 32);
    char held[4096];
    path(held, sizeof held, "%s/node/held", run);
    path(p, sizeof p, "%s/config.json", held);
    if (fio_mkdirs(held, 0755) < 0 || model_config_save(&mc, p) < 0) die("the node's config.json");
    double t0 = now_s();
    uint64_t total = fetch_version(base, scale ? NULL : held);
    double sync_s = now_s() - t0;
    if (scale) { /* the node's copy: the stored version's files themselves */
        char hex[65];
        hex_encode(base, 32, hex);
        path(p, sizeof p, "cp -al --remove-destination '%s/state/versions/%s/.' '%s/'", run, hex,
             held);
        if (system(p) != 0) die("linking the held version");
    }

    double seal_s = 0, submit_s = 0;
    size_t adapter = 0, env_total = 0;
    for (int i = 0; i < nodes; i++) {
        size_t plen, elen;
        uint8_t *pl = make_delta(m, base, rank, targets, (uint64_t)i + 1, &plen, &adapter);
        double a = now_s();
        envelope_params ep_ = {
            .round = 1, .payload_type = PAYLOAD_TYPE_DELTA, .payload_size = plen};
        payload_consortium_id("bench", ep_.consortium);
        envelope_header hdr;
        uint8_t *env;
        if (envelope_seal_mem(&ep_, &mem[i], agg.pub.kx_pub, pl, &env, &elen, &hdr) < 0)
            die("seal");
        double b = now_s();
        seal_s += b - a;
        env_total += elen;
        hello(&mem[i], &r); /* an upload needs the member's verified HELLO first */
        if (r.type != MSG_ROUND) die("HELLO before a submission");
        struct msg s = {.type = MSG_SUBMIT_BEGIN};
        s.submit_begin.round = 1;
        memcpy(s.submit_begin.id, hdr.message_id, 16);
        s.submit_begin.size = elen;
        s.submit_begin.chunks = (uint32_t)((elen + MSG_CHUNK_MAX - 1) / MSG_CHUNK_MAX);
        request(&s, &r);
        for (uint32_t c = 0; c < s.submit_begin.chunks; c++) {
            struct msg k = {.type = MSG_SUBMIT_CHUNK};
            memcpy(k.submit_chunk.id, hdr.message_id, 16);
            k.submit_chunk.index = c;
            k.submit_chunk.data = env + (size_t)c * MSG_CHUNK_MAX;
            k.submit_chunk.data_len = (uint32_t)(elen - (size_t)c * MSG_CHUNK_MAX < MSG_CHUNK_MAX
                                                     ? elen - (size_t)c * MSG_CHUNK_MAX
                                                     : MSG_CHUNK_MAX);
            request(&k, &r);
        }
        struct msg e = {.type = MSG_SUBMIT_END};
        memcpy(e.submit_end.id, hdr.message_id, 16);
        crypto_sha256(env, elen, e.submit_end.digest);
        request(&e, &r);
        if (r.type != MSG_RECEIPT) {
            fprintf(stderr, "no receipt: %s\n", r.type == MSG_ERROR ? r.error.reason : "?");
            return 1;
        }
        submit_s += now_s() - b;
        free(env);
        free(pl);
    }
    /* The last receipt closes the round; asking again waits for the merge
     * and the publish (one thread: the reply comes after them) and gets
     * round 2, whose base the low-rank update makes from round 1's. */
    double t1 = now_s();
    for (;;) {
        hello(&mem[nodes > 1 ? 1 : 0], &r);
        if (r.type == MSG_ROUND && r.round.round == 2) break;
        usleep(50000);
    }
    double close_s = now_s() - t1;
    sampling = 0;
    pthread_join(th, NULL);
    if (!r.round.has_update) die("round 2's ROUND offers no low-rank update");
    struct msg_round r2 = r.round;

    /* The second node's low-rank sync, as node/sync.c does it. */
    char made[4096], upath[4200], full_dir[4200];
    path(made, sizeof made, "%s/node/lowrank", run);
    path(upath, sizeof upath, "%s/node/update.safetensors", run);
    path(full_dir, sizeof full_dir, "%s/node/full", run);
    double l0 = now_s();
    uint64_t ubytes = fetch(r2.update_hash, upath);
    double l1 = now_s();
    model *held_m = NULL;
    update *u = NULL;
    uint8_t h[32];
    if (checkpoint_map(&held_m, held, MODEL_PRECISION_FP32) < 0 ||
        update_read(&u, upath, held_m) < 0 || update_write_version(held_m, u, made, 1) < 0)
        die("low-rank sync");
    model_free(held_m);
    update_free(u);
    if (version_seal(made, h) < 0 || memcmp(h, r2.base, 32) != 0)
        die("the version made from the update has another hash");
    double l2 = now_s();
    struct rusage self;
    getrusage(RUSAGE_SELF, &self);
    double make_rss_mib = (double)self.ru_maxrss / 1024.0;
    /* The same version downloaded in full. */
    uint64_t full_bytes = total;
    double full_s = 0;
    if (scale) {
        path(p, sizeof p, "rm -rf '%s'", made);
        if (system(p) != 0) die("removing the made version");
    } else {
        if (fio_mkdirs(full_dir, 0755) < 0) die(full_dir);
        full_bytes = fetch_version(r2.base, full_dir);
        full_s = now_s() - l2;
    }
    if (ubytes != r2.update_size || full_bytes != total) die("object sizes");

    for (int i = 0; i < nodes; i++) client_close(node_cl[i]);
    free(node_cl);
    kill(pid, SIGTERM); /* round 2 is not played: the aggregator exits 0 on SIGTERM */
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "aggregator failed; see %s\n", log_path);
        return 1;
    }

    /* aggregate_s and publish_s from the aggregator's own metrics line. */
    double agg_s = -1, pub_s = -1;
    char mp[4200], *metrics;
    path(mp, sizeof mp, "%s/state/metrics.jsonl", run);
    if (fio_read_all(mp, 1 << 20, &metrics, &len) == 0) {
        char *a = strstr(metrics, "\"aggregate_s\":"), *b = strstr(metrics, "\"publish_s\":");
        if (a) agg_s = atof(a + 14);
        if (b) pub_s = atof(b + 12);
        free(metrics);
    }
    /* update_bytes: the merged update's factors [p_i s_i B_i] and [A_i] of
     * every node, as the file the aggregator serves. */
    printf("RESULT nodes=%d rank=%d params=%lld model_bytes=%llu adapter_bytes=%zu "
           "envelope_bytes=%zu start_s=%.2f sync_s=%.2f seal_s=%.3f submit_s=%.3f "
           "close_s=%.2f aggregate_s=%.3f publish_s=%.2f update_bytes=%llu lowrank_fetch_s=%.2f "
           "lowrank_make_s=%.2f lowrank_s=%.2f full_s=%.2f peak_rss_mib=%.0f round_rss_mib=%.0f "
           "idle_rss_mib=%.0f lowrank_make_rss_mib=%.0f dtype=%s\n",
           nodes, rank, model_config_num_params(&mc), (unsigned long long)total, adapter,
           env_total / (size_t)nodes, t_listen - t_start, sync_s, seal_s, submit_s, close_s, agg_s,
           pub_s, (unsigned long long)ubytes, l1 - l0, l2 - l1, l2 - l0, full_s,
           (double)ru.ru_maxrss / 1024.0, (double)round_rss_kib / 1024.0,
           (double)idle_rss_kib / 1024.0, make_rss_mib, mc.torch_dtype);
    if (check_round > 0) {
        double over = (double)(round_rss_kib - idle_rss_kib) * 1024.0;
        double bound = check_round * (double)total + 2.0 * (double)ubytes;
        printf("round memory above idle: %.1f MiB, bound %.1f MiB (%.2f x the %.1f MiB model + 2 x "
               "the %.1f MiB update)\n",
               over / 1048576, bound / 1048576, check_round, (double)total / 1048576,
               (double)ubytes / 1048576);
        if (over > bound) {
            fprintf(stderr, "the aggregator's round took more memory than the bound\n");
            return 1;
        }
    }
    free(ep);
    free(mem);
    model_free(m);
    return 0;
}
