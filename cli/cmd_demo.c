/* fedlora demo — a whole federation on loopback (DESIGN.md §1, the README's
 * main job): an aggregator and N university nodes as separate processes of
 * this very binary, each node with its own private corpus from a distinct
 * domain (node/demo_corpus.h), a tiny base model made on the spot, R rounds.
 *
 * The demo watches from outside, as an operator would: it reads the
 * aggregator's published versions and the nodes' receipts from their state
 * directories, and evaluates every version on the global held-out set (the
 * held-out lines of all the nodes' domains, which no node trains on). What it
 * prints, and writes to OUT/metrics.jsonl and OUT/report.svg, is documented in
 * docs/federation.md. */
#include "cli/commands.h"
#include "cli/opts.h"
#include "cli/tokens.h"
#include "lora/dataset.h"
#include "lora/trainer.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "node/demo_corpus.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"
#include "wire/crypto.h"
#include "wire/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEMO_NODES_MAX 8
#define DEMO_PATH 4096
#define DEMO_CONSORTIUM "fedlora-demo"

static const char *usage_text =
    "usage: fedlora demo [--rounds N] [--nodes N] [--out DIR] [--keep]\n"
    "                    [--steps N] [--lr X] [--rank R] [--timeout S]\n"
    "\n"
    "Runs a whole federation on this machine: an aggregator and N universities (separate\n"
    "processes of this binary, talking ZeroMQ over loopback), each training LoRA adapters\n"
    "on its own private corpus from a different domain, on a tiny base model made on the\n"
    "spot. Prints, per round, each university's local held-out loss before and after its\n"
    "training, the merged model's loss on a held-out mixture of all domains, the bytes\n"
    "moved and the time; writes DIR/metrics.jsonl, DIR/report.svg (the loss curves) and\n"
    "DIR/model/ (the final merged model, a Hugging Face directory).\n"
    "\n"
    "  --rounds N     federated rounds (3)\n"
    "  --nodes N      universities, 1 to 8 (3)\n"
    "  --out DIR      output directory, new or empty (fedlora-demo)\n"
    "  --keep         keep DIR/work: keys, configs, state directories and logs of every process\n"
    "  --steps N      local optimizer steps per round (15)\n"
    "  --lr X         local learning rate (0.01)\n"
    "  --rank R       LoRA rank (8)\n"
    "  --timeout S    give up after S seconds (600)\n";

/* The domains in the order nodes get them: the README's three first. */
static const char *const domain_order[] = {"astronomy", "medicine", "law",   "computing",
                                           "cooking",   "geology",  "music", "sailing"};

/* The base model: init-model's tiny Llama, with initializer_range raised
 * from 0.02 to 0.1. LoRA never touches lm_head, and with normal(0, 0.02) the
 * frozen head's logits stay within about ±1.3 whatever the adapters do (its
 * rows have norm 0.02·√C and the final RMSNorm fixes the hidden state's
 * norm), so no adapter could bring the loss much below ln V. */
#define DEMO_INIT_RANGE 0.1
#define DEMO_SEED 1
#define DEMO_SEQ 64
#define DEMO_BATCH 8

typedef struct {
    char name[KEYS_NAME_MAX + 1];
    const demo_domain *domain;
    char dir[DEMO_PATH], config[DEMO_PATH], log[DEMO_PATH], state[DEMO_PATH];
    pid_t pid;
    int status; /* exit status once reaped */
} demo_node;

typedef struct {
    uint64_t round;
    char version[65];
    double global_loss;
    double loss_before[DEMO_NODES_MAX], loss_after[DEMO_NODES_MAX];
    uint64_t bytes;
    double elapsed;
} demo_round;

typedef struct {
    long long rounds, nodes, steps, rank, timeout;
    double lr;
    const char *out;
    int keep;
    char work[DEMO_PATH], base[DEMO_PATH], keys[DEMO_PATH], agg_dir[DEMO_PATH],
        agg_state[DEMO_PATH], agg_config[DEMO_PATH], agg_log[DEMO_PATH], eval[DEMO_PATH],
        metrics[DEMO_PATH];
    pid_t agg_pid;
    int agg_status;
    demo_node node[DEMO_NODES_MAX];
    demo_round *hist; /* rounds + 1 entries: 0 is the base */
    int n_hist;
    /* The global evaluation: rows of the held-out mixture. */
    dataset *eval_set;
    double t0;
} demo;

static volatile sig_atomic_t demo_interrupted;

static void on_signal(int sig) {
    demo_interrupted = sig;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int join(char *out, const char *dir, const char *name) {
    return fio_join(out, DEMO_PATH, dir, name);
}

static int write_text(const char *path, const char *text) {
    return fio_write_atomic(path, text, strlen(text), 0644);
}

/* ---- setup ------------------------------------------------------------------------------ */

static int make_base(demo *d, model_config *cfg) {
    model *m = NULL;
    if (model_config_preset(cfg, "llama", "tiny") != 0) return -1;
    cfg->bos_token_id = cfg->eos_token_id = 256; /* the byte-level tokenizer's end of text */
    cfg->initializer_range = DEMO_INIT_RANGE;
    if (model_create(&m, cfg) != 0) return -1;
    model_init_random(m, DEMO_SEED);
    int rc = checkpoint_save(m, d->base, "float32") == 0 && cli_write_tokenizer(d->base, cfg) == 0
                 ? 0
                 : -1;
    model_free(m);
    return rc;
}

static const demo_domain *find_domain(const char *name) {
    for (int i = 0; i < demo_num_domains; i++)
        if (strcmp(demo_domains[i].name, name) == 0) return &demo_domains[i];
    return NULL;
}

static int make_keys(demo *d) {
    keys_secret k;
    for (long long i = -1; i < d->nodes; i++) {
        const char *name = i < 0 ? "aggregator" : d->node[i].name;
        int rc = keys_generate(name, &k) == 0 && keys_write(&k, d->keys) == 0 ? 0 : -1;
        keys_secret_wipe(&k);
        if (rc != 0) return err_context("making the keys of %s", name);
    }
    return 0;
}

static int make_aggregator_config(demo *d) {
    char members[DEMO_NODES_MAX * 128] = "", text[8192];
    for (long long i = 0; i < d->nodes; i++) {
        char one[128];
        snprintf(one, sizeof one, "%s\"../keys/%s.id\"", i ? ", " : "", d->node[i].name);
        strcat(members, one);
    }
    /* Every member is awaited (quorum = all); the deadline only guards
     * against a node that dies, so it is generous. */
    snprintf(text, sizeof text,
             "# written by fedlora demo\n"
             "bind = \"tcp://127.0.0.1:*\";\n"
             "keys = { dir = \"../keys\"; name = \"aggregator\"; };\n"
             "consortium = \"%s\";\n"
             "members = [ %s ];\n"
             "base_model = \"../base\";\n"
             "state = \"state\";\n"
             "rounds = { count = %lld; quorum = %lld; deadline = 300; below_quorum = \"fail\"; "
             "linger = 5; };\n"
             "train = { steps = %lld; lr = %.17g; rank = %lld; alpha = %lld;\n"
             "          targets = [ \"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", "
             "\"gate_proj\", \"up_proj\", \"down_proj\" ];\n"
             "          batch = %d; seq = %d; };\n",
             DEMO_CONSORTIUM, members, d->rounds, d->nodes, d->steps, d->lr, d->rank, 2 * d->rank,
             DEMO_BATCH, DEMO_SEQ);
    return write_text(d->agg_config, text);
}

static int make_node(demo *d, demo_node *n, const char *endpoint) {
    char nodes[DEMO_PATH], data[DEMO_PATH], text[4096];
    if (join(nodes, d->work, "nodes") != 0 || join(n->dir, nodes, n->name) != 0 ||
        fio_mkdirs(n->dir, 0700) != 0 || join(data, n->dir, "data.txt") != 0 ||
        join(n->config, n->dir, "node.cfg") != 0 || join(n->log, n->dir, "node.log") != 0 ||
        join(n->state, n->dir, "state") != 0 || write_text(data, n->domain->train) != 0)
        return -1;
    snprintf(text, sizeof text,
             "# written by fedlora demo: %s, a university whose data is about %s\n"
             "keys = { dir = \"../../keys\"; name = \"%s\"; };\n"
             "consortium = \"%s\";\n"
             "aggregator = { endpoint = \"%s\"; identity = \"../../keys/aggregator.id\"; };\n"
             "base_model = \"../../base\";\n"
             "data = \"data.txt\";\n"
             "eval_fraction = 0.2;\n"
             "state = \"state\";\n"
             "threads = 1;\n"
             "poll_ms = 100;\n",
             n->name, n->domain->name, n->name, DEMO_CONSORTIUM, endpoint);
    return write_text(n->config, text);
}

/* ---- processes --------------------------------------------------------------------------- */

/* Starts `fedlora ARGS...` (this same executable) with stdout and stderr
 * going to log. One thread each: the processes share the machine. */
static int spawn(const char *log, const char *cmd, const char *config, pid_t *pid) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return err_errno("cannot create %s", log);
    fflush(NULL);
    pid_t p = fork();
    if (p < 0) {
        close(fd);
        return err_errno("fork");
    }
    if (p == 0) {
        if (dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(127);
        setenv("OMP_NUM_THREADS", "1", 1);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        char *argv[] = {"fedlora", (char *)cmd, "--config", (char *)config, NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fd);
    *pid = p;
    return 0;
}

/* Reaps whichever children have exited; returns how many are still running. */
static int reap(demo *d) {
    int running = 0;
    pid_t *pids[DEMO_NODES_MAX + 1];
    int *status[DEMO_NODES_MAX + 1];
    pids[0] = &d->agg_pid;
    status[0] = &d->agg_status;
    for (long long i = 0; i < d->nodes; i++) {
        pids[i + 1] = &d->node[i].pid;
        status[i + 1] = &d->node[i].status;
    }
    for (long long i = 0; i <= d->nodes; i++) {
        if (*pids[i] <= 0) continue;
        int st;
        pid_t r = waitpid(*pids[i], &st, WNOHANG);
        if (r == *pids[i]) {
            *status[i] = st;
            *pids[i] = 0;
        } else {
            running++;
        }
    }
    return running;
}

static void stop_all(demo *d) {
    if (d->agg_pid > 0) kill(d->agg_pid, SIGTERM);
    for (long long i = 0; i < d->nodes; i++)
        if (d->node[i].pid > 0) kill(d->node[i].pid, SIGTERM);
    for (int waited = 0; reap(d) > 0 && waited < 100; waited++) sleep_ms(50);
    if (d->agg_pid > 0) kill(d->agg_pid, SIGKILL);
    for (long long i = 0; i < d->nodes; i++)
        if (d->node[i].pid > 0) kill(d->node[i].pid, SIGKILL);
    while (reap(d) > 0) sleep_ms(10);
}

/* The last lines of a log, to show why a process failed. */
static void show_tail(const char *who, const char *log) {
    char *text;
    size_t len;
    if (fio_read_all(log, 1u << 24, &text, &len) != 0) return;
    size_t start = len, lines = 0;
    while (start > 0 && lines < 12) lines += text[--start] == '\n';
    fprintf(stderr, "---- last lines of %s (%s) ----\n%s", who, log, text + start);
    free(text);
}

static int exit_code(int st) {
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* ---- watching the federation ---------------------------------------------------------------- */

/* Calls fn for each JSON object line of a file (a missing file has none). */
static int each_json_line(const char *path, int (*fn)(void *, json_t *), void *arg) {
    if (!fio_exists(path)) return 0;
    char *text;
    size_t len;
    if (fio_read_all(path, 1u << 26, &text, &len) != 0) return -1;
    int rc = 0;
    for (char *p = text, *end = text + len; p < end && rc == 0;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) break; /* a line still being written */
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
        if (json_is_object(j)) rc = fn(arg, j);
        json_decref(j);
        p = nl + 1;
    }
    free(text);
    return rc;
}

struct published {
    uint64_t round;
    char version[65];
    int found;
};

/* The aggregator's metrics line of a published round carries the round and
 * the new version's hash. */
static int find_published(void *arg, json_t *j) {
    struct published *p = arg;
    json_t *r = json_object_get(j, "round"), *v = json_object_get(j, "version");
    if (json_is_integer(r) && (uint64_t)json_integer_value(r) == p->round && json_is_string(v) &&
        strlen(json_string_value(v)) == 64) {
        snprintf(p->version, sizeof p->version, "%s", json_string_value(v));
        p->found = 1;
    }
    return 0;
}

/* A node's receipt record of a round (node/internal.h's record): its local
 * losses and the bytes it moved. 1 found, 0 not (yet). */
static int node_round(const demo_node *n, uint64_t round, double *before, double *after,
                      uint64_t *bytes) {
    char path[DEMO_PATH], rel[64];
    snprintf(rel, sizeof rel, "receipts/round-%llu.json", (unsigned long long)round);
    if (join(path, n->state, rel) != 0 || !fio_exists(path)) return 0;
    char *text;
    size_t len;
    if (fio_read_all(path, 65536, &text, &len) != 0) return 0;
    json_t *j = json_loadb(text, len, 0, NULL);
    free(text);
    if (!j) return 0;
    json_t *b = json_object_get(j, "loss_before"), *a = json_object_get(j, "loss_after");
    *before = json_is_number(b) ? json_number_value(b) : NAN;
    *after = json_is_number(a) ? json_number_value(a) : NAN;
    *bytes = (uint64_t)json_integer_value(json_object_get(j, "download_bytes")) +
             (uint64_t)json_integer_value(json_object_get(j, "upload_bytes"));
    json_decref(j);
    return 1;
}

static int global_loss(demo *d, const char *model_dir, double *loss) {
    model *m = NULL;
    model_acts *acts = NULL;
    int64_t n;
    int B = 4, rc = -1;
    if (checkpoint_load(&m, model_dir) != 0) return err_context("loading %s", model_dir);
    if (model_acts_create(&acts, m, B, dataset_seq(d->eval_set)) == 0 &&
        trainer_eval(m, acts, B, d->eval_set, DATASET_TRAIN, NULL, loss, &n) == 0)
        rc = 0;
    model_acts_free(acts);
    model_free(m);
    return rc;
}

/* The version hash of a model file: SHA-256 of its bytes, in hex. */
static int hash_file(const char *path, char hex[65]) {
    uint8_t h[32];
    if (crypto_sha256_file(path, h, NULL) != 0) return -1;
    hex_encode(h, 32, hex);
    return 0;
}

static int version_dir(const demo *d, const char *hex, char *out) {
    char rel[128];
    snprintf(rel, sizeof rel, "versions/%s", hex);
    return join(out, d->agg_state, rel);
}

static void human_bytes(uint64_t b, char *out, size_t n) {
    if (b >= 10u << 20)
        snprintf(out, n, "%.1f MB", (double)b / 1e6);
    else
        snprintf(out, n, "%.0f kB", (double)b / 1e3);
}

static void print_header(const demo *d) {
    printf("\n%-6s %-13s", "round", "global loss");
    for (long long i = 0; i < d->nodes; i++) printf(" %-17.17s", d->node[i].name);
    printf(" %10s %7s\n", "moved", "time");
}

static int log_round(demo *d, const demo_round *r) {
    json_t *nodes = json_array();
    for (long long i = 0; nodes && i < d->nodes && r->round > 0; i++) {
        json_t *o = json_pack(
            "{s:s, s:s, s:o, s:o}", "name", d->node[i].name, "domain", d->node[i].domain->name,
            "loss_before", isfinite(r->loss_before[i]) ? json_real(r->loss_before[i]) : json_null(),
            "loss_after", isfinite(r->loss_after[i]) ? json_real(r->loss_after[i]) : json_null());
        if (!o || json_array_append_new(nodes, o) != 0) {
            json_decref(nodes);
            nodes = NULL;
        }
    }
    json_t *j = nodes ? json_pack("{s:I, s:s, s:f, s:o, s:I, s:f}", "round", (json_int_t)r->round,
                                  "version", r->version, "global_loss", r->global_loss, "nodes",
                                  nodes, "bytes", (json_int_t)r->bytes, "elapsed_s", r->elapsed)
                      : NULL;
    char *line = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!line) return err_set("out of memory writing %s", d->metrics);
    FILE *f = fopen(d->metrics, "a");
    int rc = f && fprintf(f, "%s\n", line) > 0 ? 0 : -1;
    if (f && fclose(f) != 0) rc = -1;
    free(line);
    if (rc != 0) return err_errno("cannot append to %s", d->metrics);

    char moved[32] = "", loss[32];
    if (r->round > 0) human_bytes(r->bytes, moved, sizeof moved);
    snprintf(loss, sizeof loss, "%.4f%s", r->global_loss, r->round == 0 ? " (base)" : "");
    printf("%-6llu %-13s", (unsigned long long)r->round, loss);
    for (long long i = 0; i < d->nodes; i++) {
        char cell[40] = "";
        if (r->round > 0)
            snprintf(cell, sizeof cell, "%.3f -> %.3f", r->loss_before[i], r->loss_after[i]);
        printf(" %-17s", cell);
    }
    if (r->round > 0)
        printf(" %10s %6.1fs\n", moved, r->elapsed);
    else
        printf("\n");
    fflush(stdout);
    return 0;
}

/* Round r is complete once the aggregator published it and every node that
 * is still running has its receipt (a node's receipt is recorded a moment
 * after the aggregator has it, and the round may close in between); a node
 * without one 5 s later did not take part in the round. */
static int try_round(demo *d, uint64_t round, double *last_t, double *seen, int *done) {
    char path[DEMO_PATH];
    struct published p = {.round = round};
    *done = 0;
    if (join(path, d->agg_state, "metrics.jsonl") != 0 ||
        each_json_line(path, find_published, &p) != 0)
        return -1;
    if (!p.found) return 0;
    if (*seen == 0) *seen = now_s();
    demo_round *r = &d->hist[round];
    memset(r, 0, sizeof *r);
    r->round = round;
    memcpy(r->version, p.version, sizeof r->version);
    for (long long i = 0; i < d->nodes; i++) {
        uint64_t b = 0;
        if (!node_round(&d->node[i], round, &r->loss_before[i], &r->loss_after[i], &b)) {
            if (d->node[i].pid > 0 && now_s() - *seen < 5) return 0; /* not written yet */
            r->loss_before[i] = r->loss_after[i] = NAN;
        }
        r->bytes += b;
    }
    char dir[DEMO_PATH];
    if (version_dir(d, r->version, dir) != 0 || global_loss(d, dir, &r->global_loss) != 0)
        return -1;
    double t = now_s();
    r->elapsed = t - *last_t;
    *last_t = t;
    d->n_hist = (int)round + 1;
    *done = 1;
    return log_round(d, r);
}

/* ---- the report ------------------------------------------------------------------------------ */

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#bcbd22"};

/* A self-contained SVG: the global held-out loss of each version (thick)
 * and each university's local held-out loss before (dashed) and after
 * (solid) its training in each round. */
static int write_report(const demo *d, const char *path) {
    const double W = 820, H = 460, L = 70, R = 260, T = 50, Bm = 60;
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < d->n_hist; k++) {
        const demo_round *r = &d->hist[k];
        lo = fmin(lo, r->global_loss), hi = fmax(hi, r->global_loss);
        for (long long i = 0; k > 0 && i < d->nodes; i++)
            if (isfinite(r->loss_before[i]) && isfinite(r->loss_after[i])) {
                lo = fmin(lo, fmin(r->loss_before[i], r->loss_after[i]));
                hi = fmax(hi, fmax(r->loss_before[i], r->loss_after[i]));
            }
    }
    if (!(hi > lo)) hi = lo + 1;
    double pad = (hi - lo) * 0.08;
    lo = floor((lo - pad) * 2) / 2, hi = ceil((hi + pad) * 2) / 2;
    int nx = d->n_hist > 1 ? d->n_hist - 1 : 1;
#define X(k) (L + (W - L - R) * (double)(k) / nx)
#define Y(v) (T + (H - T - Bm) * (hi - (v)) / (hi - lo))
    size_t cap = 1u << 16, len = 0;
    char *s = malloc(cap);
    if (!s) return err_set("out of memory for the report");
#define OUT(...)                                                                                   \
    do {                                                                                           \
        int k_ = snprintf(s + len, cap - len, __VA_ARGS__);                                        \
        if (k_ < 0 || (size_t)k_ >= cap - len) {                                                   \
            free(s);                                                                               \
            return err_set("the report does not fit in %zu bytes", cap);                           \
        }                                                                                          \
        len += (size_t)k_;                                                                         \
    } while (0)
    OUT("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
        "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n",
        W, H, W, H);
    OUT("<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    OUT("<text x=\"%.0f\" y=\"24\" font-size=\"16\" font-weight=\"bold\">fedlora demo: %lld "
        "universities, %lld rounds</text>\n",
        L, d->nodes, d->rounds);
    OUT("<text x=\"%.0f\" y=\"40\" fill=\"#555\">held-out loss (nats per token) after each "
        "round</text>\n",
        L);
    for (int t = 0; t <= 4; t++) { /* horizontal grid and y labels */
        double v = lo + (hi - lo) * t / 4;
        OUT("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, Y(v),
            W - R, Y(v));
        OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", L - 6, Y(v) + 4, v);
    }
    for (int k = 0; k < d->n_hist; k++)
        OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", X(k), H - Bm + 18, k);
    OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">round (0 = base model)</text>\n",
        (L + W - R) / 2, H - Bm + 40);
    OUT("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
        "stroke=\"#333\"/>\n",
        L, (double)T, W - L - R, H - T - Bm);
    for (long long i = 0; i < d->nodes; i++) {
        const char *c = palette[i % 8];
        for (int pass = 0; pass < 2; pass++) { /* 0: before (dashed), 1: after */
            OUT("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", c,
                pass ? "" : " stroke-dasharray=\"4 3\"");
            for (int k = 1; k < d->n_hist; k++) {
                double v = pass ? d->hist[k].loss_after[i] : d->hist[k].loss_before[i];
                if (isfinite(v)) OUT("%.1f,%.1f ", X(k), Y(v));
            }
            OUT("\"/>\n");
        }
        for (int k = 1; k < d->n_hist; k++)
            if (isfinite(d->hist[k].loss_after[i]))
                OUT("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", X(k),
                    Y(d->hist[k].loss_after[i]), c);
        double ly = T + 50 + 18.0 * (double)i;
        OUT("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
            "stroke-width=\"1.5\"/>\n",
            W - R + 16, ly - 4, W - R + 40, ly - 4, c);
        OUT("<text x=\"%.1f\" y=\"%.1f\">%s (%s)</text>\n", W - R + 46, ly, d->node[i].name,
            d->node[i].domain->name);
    }
    OUT("<polyline fill=\"none\" stroke=\"black\" stroke-width=\"3\" points=\"");
    for (int k = 0; k < d->n_hist; k++) OUT("%.1f,%.1f ", X(k), Y(d->hist[k].global_loss));
    OUT("\"/>\n");
    for (int k = 0; k < d->n_hist; k++)
        OUT("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"black\"/>\n"
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-weight=\"bold\">%.3f</text>\n",
            X(k), Y(d->hist[k].global_loss), X(k), Y(d->hist[k].global_loss) - 9,
            d->hist[k].global_loss);
    OUT("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\" "
        "stroke-width=\"3\"/>\n<text x=\"%.1f\" y=\"%.1f\">merged model, global held-out</text>\n",
        W - R + 16, (double)T + 10, W - R + 40, (double)T + 10, W - R + 46, (double)T + 14);
    OUT("<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">dashed: local loss before training,</text>\n"
        "<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">solid: after (its own held-out lines)</text>\n",
        W - R + 16, T + 50 + 18.0 * (double)d->nodes + 10, W - R + 16,
        T + 50 + 18.0 * (double)d->nodes + 26);
    OUT("</svg>\n");
#undef OUT
#undef X
#undef Y
    int rc = fio_write_atomic(path, s, len, 0644);
    free(s);
    return rc;
}

/* ---- the run ----------------------------------------------------------------------------------
 */

static int copy_file(const char *from, const char *to) {
    char *text;
    size_t len;
    if (fio_read_all(from, (size_t)1 << 34, &text, &len) != 0) return -1;
    int rc = fio_write_atomic(to, text, len, 0644);
    free(text);
    return rc;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    return (type == FTW_DP ? rmdir(path) : unlink(path)) == 0 || errno == ENOENT ? 0 : -1;
}

/* Waits for the aggregator to write STATE/endpoint (where it listens). */
static int wait_endpoint(demo *d, char *endpoint, size_t n) {
    char path[DEMO_PATH];
    if (join(path, d->agg_state, "endpoint") != 0) return -1;
    for (double t0 = now_s(); now_s() - t0 < 30;) {
        if (fio_exists(path)) {
            char *text;
            size_t len;
            if (fio_read_all(path, 1024, &text, &len) != 0) return -1;
            while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' ')) text[--len] = 0;
            int ok = len > 0 && len < n;
            if (ok) memcpy(endpoint, text, len + 1);
            free(text);
            if (ok) return 0;
        }
        if (reap(d) == 0 || d->agg_pid == 0)
            return err_set("the aggregator exited before it listened (status %d)",
                           exit_code(d->agg_status));
        sleep_ms(20);
    }
    return err_set("the aggregator did not write %s within 30 s", path);
}

static int run(demo *d) {
    model_config cfg;
    char endpoint[512], eval_text[1 << 16] = "", path[DEMO_PATH], tok[DEMO_PATH];
    if (make_base(d, &cfg) != 0 || make_keys(d) != 0 || fio_mkdirs(d->agg_dir, 0700) != 0 ||
        make_aggregator_config(d) != 0)
        return -1;
    for (long long i = 0; i < d->nodes; i++) {
        if (strlen(eval_text) + strlen(d->node[i].domain->heldout) >= sizeof eval_text)
            return err_set("the held-out lines do not fit the demo's buffer");
        strcat(eval_text, d->node[i].domain->heldout);
    }
    if (write_text(d->eval, eval_text) != 0 || join(tok, d->base, "tokenizer.json") != 0) return -1;
    dataset_options dopt = {.path = d->eval,
                            .tokenizer = tok,
                            .seq = DEMO_SEQ,
                            .eos_id = cfg.eos_token_id,
                            .vocab_size = cfg.vocab_size};
    if (dataset_open(&d->eval_set, &dopt) != 0) return err_context("the global held-out set");

    printf("fedlora demo: an aggregator and %lld universities on loopback, %lld rounds\n", d->nodes,
           d->rounds);
    printf("  base model: tiny Llama (%lld parameters, byte-level tokenizer), made in %s\n",
           model_config_num_params(&cfg), d->base);
    printf("  local training per round: %lld steps, lr %g, LoRA rank %lld on every linear layer\n",
           d->steps, d->lr, d->rank);
    for (long long i = 0; i < d->nodes; i++)
        printf("  %-17s trains on %s (%zu bytes of private text)\n", d->node[i].name,
               d->node[i].domain->name, strlen(d->node[i].domain->train));
    printf("  global held-out set: %zu lines of all %lld domains, never trained on\n",
           dataset_num_docs(d->eval_set, DATASET_TRAIN), d->nodes);
    fflush(stdout);

    d->t0 = now_s();
    if (spawn(d->agg_log, "aggregator", d->agg_config, &d->agg_pid) != 0 ||
        wait_endpoint(d, endpoint, sizeof endpoint) != 0)
        return -1;
    for (long long i = 0; i < d->nodes; i++)
        if (make_node(d, &d->node[i], endpoint) != 0 ||
            spawn(d->node[i].log, "node", d->node[i].config, &d->node[i].pid) != 0)
            return -1;

    demo_round *r0 = &d->hist[0];
    memset(r0, 0, sizeof *r0);
    if (join(path, d->base, "model.safetensors") != 0 || hash_file(path, r0->version) != 0 ||
        global_loss(d, d->base, &r0->global_loss) != 0)
        return -1;
    d->n_hist = 1;
    print_header(d);
    if (log_round(d, r0) != 0) return -1;

    double last_t = d->t0, seen = 0;
    uint64_t next = 1;
    while (next <= (uint64_t)d->rounds) {
        if (demo_interrupted) return err_set("interrupted");
        if (now_s() - d->t0 > (double)d->timeout)
            return err_set("the federation did not finish within %lld s (--timeout)", d->timeout);
        int done;
        if (try_round(d, next, &last_t, &seen, &done) != 0) return -1;
        if (done) {
            next++;
            seen = 0;
            continue;
        }
        int running = reap(d);
        for (long long i = 0; i < d->nodes; i++)
            if (d->node[i].pid == 0 && exit_code(d->node[i].status) != 0)
                return err_set("%s exited with status %d (its log: %s)", d->node[i].name,
                               exit_code(d->node[i].status), d->node[i].log);
        if (d->agg_pid == 0 && exit_code(d->agg_status) != 0)
            return err_set("the aggregator exited with status %d (its log: %s)",
                           exit_code(d->agg_status), d->agg_log);
        if (running == 0)
            return err_set("every process exited before round %llu was published",
                           (unsigned long long)next);
        sleep_ms(50);
    }
    /* The nodes exit once told the federation is finished; the aggregator
     * after its linger time, or now. */
    for (double t = now_s(); now_s() - t < 30;) {
        reap(d);
        int nodes_left = 0;
        for (long long i = 0; i < d->nodes; i++) nodes_left += d->node[i].pid > 0;
        if (!nodes_left) break;
        sleep_ms(50);
    }
    stop_all(d);
    for (long long i = 0; i < d->nodes; i++)
        if (exit_code(d->node[i].status) != 0)
            return err_set("%s exited with status %d (its log: %s)", d->node[i].name,
                           exit_code(d->node[i].status), d->node[i].log);
    double total = now_s() - d->t0;

    /* The final merged model, as a Hugging Face directory. */
    char model_dir[DEMO_PATH], vdir[DEMO_PATH], from[DEMO_PATH], to[DEMO_PATH];
    const demo_round *last = &d->hist[d->n_hist - 1];
    if (join(model_dir, d->out, "model") != 0 || fio_mkdirs(model_dir, 0755) != 0 ||
        version_dir(d, last->version, vdir) != 0)
        return -1;
    const char *files[][2] = {
        {"model.safetensors", NULL}, {"config.json", NULL}, {"tokenizer.json", d->base}};
    for (int i = 0; i < 3; i++)
        if (join(from, files[i][1] ? files[i][1] : vdir, files[i][0]) != 0 ||
            join(to, model_dir, files[i][0]) != 0 || copy_file(from, to) != 0)
            return -1;
    if (join(path, d->out, "report.svg") != 0 || write_report(d, path) != 0) return -1;

    uint64_t bytes = 0;
    for (int k = 1; k < d->n_hist; k++) bytes += d->hist[k].bytes;
    char moved[32];
    human_bytes(bytes, moved, sizeof moved);
    double drop = d->hist[0].global_loss - last->global_loss;
    printf("\nglobal held-out loss %.4f -> %.4f over %lld rounds (%s by %.4f); %s moved; "
           "%.1f s\n",
           d->hist[0].global_loss, last->global_loss, d->rounds, drop > 0 ? "down" : "UP",
           fabs(drop), moved, total);
    printf("wrote %s/metrics.jsonl, %s/report.svg and %s/model/ (final version %.16s…)\n", d->out,
           d->out, d->out, last->version);
    return 0;
}

int cmd_demo(int argc, char **argv) {
    const char *rounds = "3", *nodes = "3", *steps = "15", *lr = "0.01", *rank = "8",
               *timeout = "600";
    demo d;
    memset(&d, 0, sizeof d);
    d.out = "fedlora-demo";
    opts_spec spec[] = {{"rounds", &rounds},     {"nodes", &nodes},    {"out", &d.out},
                        {"keep", NULL, &d.keep}, {"steps", &steps},    {"lr", &lr},
                        {"rank", &rank},         {"timeout", &timeout}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (opts_int(rounds, "--rounds", 1, 100, &d.rounds) != 0 ||
        opts_int(nodes, "--nodes", 1, DEMO_NODES_MAX, &d.nodes) != 0 ||
        opts_int(steps, "--steps", 1, 100000, &d.steps) != 0 ||
        opts_double(lr, "--lr", 1e-6, 1, &d.lr) != 0 ||
        opts_int(rank, "--rank", 1, 64, &d.rank) != 0 ||
        opts_int(timeout, "--timeout", 1, 86400, &d.timeout) != 0)
        return opts_fail();
    if (fio_exists(d.out) && !fio_dir_empty(d.out)) {
        fprintf(stderr,
                "fedlora demo: %s already exists and is not empty; remove it or choose another "
                "--out\n",
                d.out);
        return 1;
    }
    for (long long i = 0; i < d.nodes; i++) {
        d.node[i].domain = find_domain(domain_order[i]);
        if (!d.node[i].domain) {
            err_set("the demo corpus has no domain '%s'", domain_order[i]);
            return opts_fail();
        }
        snprintf(d.node[i].name, sizeof d.node[i].name, "uni-%s", domain_order[i]);
    }
    d.hist = calloc((size_t)d.rounds + 1, sizeof *d.hist);
    if (!d.hist || join(d.work, d.out, "work") != 0 || join(d.base, d.work, "base") != 0 ||
        join(d.keys, d.work, "keys") != 0 || join(d.agg_dir, d.work, "aggregator") != 0 ||
        join(d.agg_state, d.agg_dir, "state") != 0 ||
        join(d.agg_config, d.agg_dir, "aggregator.cfg") != 0 ||
        join(d.agg_log, d.agg_dir, "aggregator.log") != 0 ||
        join(d.eval, d.work, "global-heldout.txt") != 0 ||
        join(d.metrics, d.out, "metrics.jsonl") != 0 || fio_mkdirs(d.work, 0700) != 0) {
        free(d.hist);
        return opts_fail();
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rc = run(&d);
    if (rc != 0) {
        char why[ERR_MSG_MAX];
        snprintf(why, sizeof why, "%s", err_msg());
        stop_all(&d);
        if (!demo_interrupted) { /* what went wrong is in the logs' last lines */
            show_tail("the aggregator", d.agg_log);
            for (long long i = 0; i < d.nodes; i++)
                if (d.node[i].log[0]) show_tail(d.node[i].name, d.node[i].log);
        }
        fprintf(stderr, "fedlora demo: %s\n(everything is kept in %s)\n", why, d.work);
    } else if (!d.keep && nftw(d.work, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
        fprintf(stderr, "fedlora demo: could not remove %s: %s\n", d.work, strerror(errno));
    }
    dataset_free(d.eval_set);
    free(d.hist);
    return rc == 0 ? 0 : demo_interrupted ? 128 + demo_interrupted : 1;
}
