/* harness — a loopback federation of real processes (harness.h). */
#include "cli/harness.h"

#include "model/checkpoint.h"
#include "model/model.h"
#include "model/tokenizer/tokenizer.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"
#include "util/proc.h"
#include "wire/crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- processes ------------------------------------------------------------------ */

int harness_spawn(harness_proc *p, const char *bin, const char *log, int append,
                  const char *const *argv) {
    const char *args[32];
    int n = 0;
    args[n++] = "fedlora";
    for (; argv[n - 1] && n < 31; n++) args[n] = argv[n - 1];
    args[n] = NULL;
    /* The processes share the machine: one OpenMP and one BLAS thread each. */
    static const char *const env[] = {"OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", NULL};
    proc_options o = {.log = log, .append = append, .env = env};
    if (proc_spawn(&p->pid, bin ? bin : "/proc/self/exe", args, &o) != 0) return -1;
    p->status = 0;
    return 0;
}

int harness_running(harness_proc *p) {
    if (p->pid <= 0) return 0;
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid || (r < 0 && errno == ECHILD)) {
        if (r == p->pid) p->status = st;
        p->pid = 0;
        return 0;
    }
    return 1;
}

int harness_exit_code(int status) {
    return WIFEXITED(status) ? WEXITSTATUS(status)
                             : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

int harness_wait(harness_proc *p, double timeout_s) {
    if (p->pid <= 0) return harness_exit_code(p->status);
    for (double t0 = harness_now(); harness_running(p);) {
        if (harness_now() - t0 > timeout_s) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &p->status, 0);
            p->pid = 0;
            return -1;
        }
        harness_sleep_ms(20);
    }
    return harness_exit_code(p->status);
}

void harness_stop(harness_proc *p, double grace_s) {
    if (!harness_running(p)) return;
    kill(p->pid, SIGTERM);
    for (double t0 = harness_now(); harness_running(p) && harness_now() - t0 < grace_s;)
        harness_sleep_ms(20);
    if (harness_running(p)) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &p->status, 0);
        p->pid = 0;
    }
}

/* ---- files and time --------------------------------------------------------------- */

double harness_now(void) {
    return clock_now_s();
}

void harness_sleep_ms(int ms) {
    clock_sleep_ms(ms);
}

int harness_join(char *out, const char *dir, const char *name) {
    return fio_join(out, HARNESS_PATH, dir, name);
}

int harness_write_text(const char *path, const char *text) {
    return fio_write_atomic(path, text, strlen(text), 0644);
}

char *harness_read(const char *path) {
    char *text;
    size_t len;
    if (!fio_exists(path) || fio_read_all(path, (size_t)1 << 30, &text, &len) != 0) return NULL;
    return text;
}

int harness_copy_file(const char *from, const char *to) {
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

int harness_remove_tree(const char *path) {
    if (!fio_exists(path)) return 0;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return err_errno("cannot remove %s", path);
    return 0;
}

int harness_wait_file(const char *path, double timeout_s) {
    for (double t0 = harness_now(); harness_now() - t0 < timeout_s; harness_sleep_ms(10))
        if (fio_exists(path)) return 0;
    return err_set("%s did not appear within %g s", path, timeout_s);
}

int harness_hash_file(const char *path, char hex[65]) {
    uint8_t h[32];
    if (crypto_sha256_file(path, h, NULL) != 0) return -1;
    hex_encode(h, 32, hex);
    return 0;
}

void harness_show_tail(const char *who, const char *log, int lines) {
    char *text = harness_read(log);
    if (!text) return;
    size_t start = strlen(text);
    for (int seen = 0; start > 0 && seen < lines;) seen += text[--start] == '\n';
    fprintf(stderr, "---- last lines of %s (%s) ----\n%s", who, log, text + start);
    free(text);
}

/* ---- JSON Lines ------------------------------------------------------------------- */

int harness_jsonl_each(const char *path, int (*fn)(void *arg, json_t *line), void *arg) {
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

struct find_round {
    uint64_t round;
    json_t *found;
};

static int keep_round(void *arg, json_t *j) {
    struct find_round *f = arg;
    json_t *r = json_object_get(j, "round");
    if (!json_is_integer(r) || (uint64_t)json_integer_value(r) != f->round) return 0;
    f->found = json_incref(j);
    return 1;
}

json_t *harness_round_metrics(const char *agg_state, uint64_t round) {
    char path[HARNESS_PATH];
    struct find_round f = {round, NULL};
    if (harness_join(path, agg_state, "metrics.jsonl") != 0) return NULL;
    harness_jsonl_each(path, keep_round, &f);
    return f.found;
}

/* ---- a scratch federation --------------------------------------------------------- */

void harness_options_default(harness_options *o) {
    *o = (harness_options){.consortium = "fedlora-demo",
                           .rounds = 3,
                           .quorum = 0,
                           .deadline_s = 300,
                           .linger_s = 5,
                           .below_quorum = "fail",
                           .steps = 15,
                           .rank = 8,
                           .batch = 8,
                           .seq = 64,
                           .lr = 0.01,
                           .targets = "\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", "
                                      "\"gate_proj\", \"up_proj\", \"down_proj\"",
                           .arch = "llama",
                           .model_seed = 1,
                           .init_range = 0.1,
                           .eval_fraction = 0.2,
                           .node_poll_ms = 100};
}

/* The base model: init-model's tiny preset of the options' family (a Llama
 * by default) with the options' initializer range and seed, and its
 * byte-level tokenizer (<|endoftext|> = 256, the model's bos and eos). */
static int make_base(const harness_fed *f) {
    model_config cfg;
    model *m = NULL;
    char path[HARNESS_PATH];
    if (model_config_preset(&cfg, f->o.arch ? f->o.arch : "llama", "tiny") != 0) return -1;
    cfg.bos_token_id = cfg.eos_token_id = 256;
    cfg.initializer_range = f->o.init_range;
    if (model_create(&m, &cfg) != 0) return -1;
    model_init_random(m, f->o.model_seed);
    int rc = checkpoint_save(m, f->base, "float32");
    model_free(m);
    tokenizer_special_token eot = {"<|endoftext|>", 256};
    if (rc == 0 && (harness_join(path, f->base, "tokenizer.json") != 0 ||
                    tokenizer_save_bytelevel(path, &eot, 1, NULL) != 0))
        rc = -1;
    return rc == 0 ? 0 : err_context("making the base model in %s", f->base);
}

int harness_keys(const char *dir, const char *name) {
    keys_secret k;
    int rc = keys_generate(name, &k) == 0 && keys_write(&k, dir) == 0 ? 0 : -1;
    keys_secret_wipe(&k);
    return rc == 0 ? 0 : err_context("making the keys of %s", name);
}

static int aggregator_config(harness_fed *f) {
    const harness_options *o = &f->o;
    char members[HARNESS_NODES_MAX * (KEYS_NAME_MAX + 32)] = "", text[16384], rounds[256],
                                                      policy[HARNESS_PATH + 32] = "";
    for (int i = 0; i < f->n; i++) {
        size_t l = strlen(members);
        snprintf(members + l, sizeof members - l, "%s\"../keys/%s.id\"", i ? ", " : "",
                 f->node[i].name);
    }
    if (o->policy) {
        /* The policy file decides quorum, deadline and below_quorum
         * (docs/policies.md); it is copied next to the config. */
        char copy[HARNESS_PATH];
        if (harness_join(copy, f->agg_dir, "policy.cfg") != 0 ||
            harness_copy_file(o->policy, copy) != 0)
            return err_context("the policy file %s", o->policy);
        snprintf(policy, sizeof policy, "policy = \"policy.cfg\";\n");
        snprintf(rounds, sizeof rounds, "count = %d; linger = %d;", o->rounds, o->linger_s);
    } else {
        snprintf(rounds, sizeof rounds,
                 "count = %d; quorum = %d; deadline = %d; below_quorum = \"%s\"; linger = %d;",
                 o->rounds, o->quorum ? o->quorum : f->n, o->deadline_s, o->below_quorum,
                 o->linger_s);
    }
    int len = snprintf(text, sizeof text,
                       "%s%s%s"
                       "bind = \"tcp://127.0.0.1:*\";\n"
                       "keys = { dir = \"../keys\"; name = \"aggregator\"; };\n"
                       "consortium = \"%s\";\n"
                       "members = [ %s ];\n"
                       "base_model = \"../base\";\n"
                       "state = \"state\";\n"
                       "%s"
                       "rounds = { %s };\n"
                       "train = { steps = %d; lr = %.17g; rank = %d; alpha = %d;\n"
                       "          targets = [ %s ];\n"
                       "          batch = %d; seq = %d; };\n"
                       "%s",
                       o->header ? "# " : "", o->header ? o->header : "", o->header ? "\n" : "",
                       o->consortium, members, policy, rounds, o->steps, o->lr, o->rank,
                       2 * o->rank, o->targets, o->batch, o->seq, o->agg_extra);
    if (len < 0 || (size_t)len >= sizeof text)
        return err_set("the aggregator's config does not fit %zu bytes", sizeof text);
    return harness_write_text(f->agg_config, text);
}

/* An absolute form of path into out (HARNESS_PATH bytes). */
static int absolute(const char *path, char *out) {
    if (path[0] == '/') return snprintf(out, HARNESS_PATH, "%s", path) < HARNESS_PATH ? 0 : -1;
    char cwd[HARNESS_PATH];
    if (!getcwd(cwd, sizeof cwd)) return err_errno("getcwd");
    return harness_join(out, cwd, path);
}

static int link_to(const char *target, const char *link) {
    char abs[HARNESS_PATH];
    if (absolute(target, abs) != 0) return err_set("path %s is too long", target);
    if (symlink(abs, link) != 0) return err_errno("cannot link %s to %s", link, abs);
    return 0;
}

/* The federation's files; node i's data from domains[i] or data[i]. */
static int setup(harness_fed *f, const char *root, int n, const demo_domain *const *domains,
                 const char *const *names, const char *const *data, const harness_options *o) {
    memset(f, 0, sizeof *f);
    if (n < 1 || n > HARNESS_NODES_MAX)
        return err_set("a federation of %d nodes (1 to %d)", n, HARNESS_NODES_MAX);
    f->o = *o;
    f->n = n;
    char nodes[HARNESS_PATH];
    if (snprintf(f->root, sizeof f->root, "%s", root) >= (int)sizeof f->root ||
        harness_join(f->base, root, "base") != 0 || harness_join(f->keys, root, "keys") != 0 ||
        harness_join(f->agg_dir, root, "aggregator") != 0 ||
        harness_join(f->agg_config, f->agg_dir, "aggregator.cfg") != 0 ||
        harness_join(f->agg_state, f->agg_dir, "state") != 0 ||
        harness_join(f->agg_log, f->agg_dir, "aggregator.log") != 0 ||
        harness_join(nodes, root, "nodes") != 0 || fio_mkdirs(f->agg_dir, 0700) != 0)
        return -1;
    if ((o->base_dir ? link_to(o->base_dir, f->base) : make_base(f)) != 0 ||
        harness_keys(f->keys, "aggregator") != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        harness_node *d = &f->node[i];
        d->domain = domains ? domains[i] : NULL;
        if (domains)
            snprintf(d->name, sizeof d->name, "uni-%s", d->domain->name);
        else if (snprintf(d->name, sizeof d->name, "%s", names[i]) >= (int)sizeof d->name)
            return err_set("node name %s is too long", names[i]);
        if (harness_join(d->dir, nodes, d->name) != 0 || fio_mkdirs(d->dir, 0700) != 0 ||
            harness_join(d->data, d->dir, "data.txt") != 0 ||
            harness_join(d->config, d->dir, "node.cfg") != 0 ||
            harness_join(d->state, d->dir, "state") != 0 ||
            harness_join(d->log, d->dir, "node.log") != 0 ||
            (domains ? harness_write_text(d->data, d->domain->train) : link_to(data[i], d->data)) !=
                0 ||
            harness_keys(f->keys, d->name) != 0)
            return -1;
    }
    return aggregator_config(f);
}

int harness_setup(harness_fed *f, const char *root, int n, const demo_domain *const *domains,
                  const harness_options *o) {
    return setup(f, root, n, domains, NULL, NULL, o);
}

int harness_setup_files(harness_fed *f, const char *root, int n, const char *const *names,
                        const char *const *data, const harness_options *o) {
    return setup(f, root, n, NULL, names, data, o);
}

int harness_start_aggregator(harness_fed *f, const char *bin) {
    char path[HARNESS_PATH];
    const char *argv[] = {"aggregator", "--config", f->agg_config, NULL};
    if (harness_join(path, f->agg_state, "endpoint") != 0) return -1;
    unlink(path); /* a previous run's */
    if (harness_spawn(&f->agg, bin, f->agg_log, 1, argv) != 0) return -1;
    for (double t0 = harness_now(); harness_now() - t0 < 30; harness_sleep_ms(20)) {
        char *text = fio_exists(path) ? harness_read(path) : NULL;
        if (text) {
            size_t len = strcspn(text, "\n");
            int ok = len > 0 && len < sizeof f->endpoint;
            if (ok) snprintf(f->endpoint, sizeof f->endpoint, "%.*s", (int)len, text);
            free(text);
            if (ok) return 0;
        }
        if (!harness_running(&f->agg))
            return err_set("the aggregator exited before it listened (status %d; see %s)",
                           harness_exit_code(f->agg.status), f->agg_log);
    }
    return err_set("the aggregator did not write %s within 30 s (see %s)", path, f->agg_log);
}

int harness_node_config(harness_fed *f, int i, const char *endpoint, const char *extra) {
    const harness_node *d = &f->node[i];
    char text[4096], seed[64] = "";
    if (f->o.has_node_seed)
        snprintf(seed, sizeof seed, "seed = %llu;\n", (unsigned long long)f->o.node_seed);
    int len =
        snprintf(text, sizeof text,
                 "%s%s%s"
                 "keys = { dir = \"../../keys\"; name = \"%s\"; };\n"
                 "consortium = \"%s\";\n"
                 "aggregator = { endpoint = \"%s\"; identity = \"../../keys/aggregator.id\"; "
                 "};\n"
                 "base_model = \"../../base\";\n"
                 "data = \"data.txt\";\n"
                 "eval_fraction = %.17g;\n"
                 "state = \"state\";\n"
                 "threads = 1;\n"
                 "poll_ms = %d;\n"
                 "%s%s%s",
                 f->o.header ? "# " : "", f->o.header ? f->o.header : "", f->o.header ? "\n" : "",
                 d->name, f->o.consortium, endpoint, f->o.eval_fraction, f->o.node_poll_ms, seed,
                 f->o.node_extra, extra ? extra : "");
    if (len < 0 || (size_t)len >= sizeof text)
        return err_set("%s's config does not fit %zu bytes", d->name, sizeof text);
    return harness_write_text(d->config, text);
}

int harness_start_node(harness_fed *f, int i, const char *bin) {
    const char *argv[] = {"node", "--config", f->node[i].config, NULL};
    return harness_spawn(&f->node[i].proc, bin, f->node[i].log, 1, argv);
}

void harness_stop_all(harness_fed *f, double grace_s) {
    /* Everyone is asked at once, then waited for. */
    if (harness_running(&f->agg)) kill(f->agg.pid, SIGTERM);
    for (int i = 0; i < f->n; i++)
        if (harness_running(&f->node[i].proc)) kill(f->node[i].proc.pid, SIGTERM);
    harness_stop(&f->agg, grace_s);
    for (int i = 0; i < f->n; i++) harness_stop(&f->node[i].proc, grace_s);
}
