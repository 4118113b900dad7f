/* eval — every published version evaluated on the consortium's evaluation
 * sets (config "eval", docs/federation.md, "Evaluating every version").
 *
 * A version is evaluated by a child process running `fedlora eval` on it
 * (`--data` for each text set, `--task` for each multiple-choice task,
 * `--json` for the scores), niced and with its own thread count, while the
 * aggregator goes on serving the next round: the loop only looks at the
 * child between requests (agg_eval_tick). The child maps the version's
 * weights from the store (checkpoint_map), so it costs the activations and
 * page cache, not a second copy of the model; a crash in it is its own.
 *
 * One child at a time; versions wait in publication order. Each evaluation
 * ends in one metrics.jsonl record, {"kind": "eval", "round", "version",
 * "sets" | "error", "seconds", "time"} (docs/protocol.md, "Metrics"), which
 * is also what says a version was evaluated: at start, every version with a
 * round line and no eval record (and the base, round 0) is queued again, so
 * an aggregator stopped during an evaluation repeats it after its restart. */
#include "aggregator/state.h"

#include "aggregator/status.h"
#include "aggregator/store.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EVAL_NICE 10            /* the child yields the CPU to the aggregator's rounds */
#define EVAL_OUT_MAX (1u << 20) /* bytes of the child's --json read back */
#define EVAL_LOG_TAIL 4096
#define EVAL_TIMED_OUT (-1) /* finish()'s status: eval.timeout passed */
#define EVAL_NO_START                                                                              \
    (-2) /* finish()'s status: the child could not be started */ /* bytes of its log searched for  \
                                                                    the last line */

typedef struct {
    uint64_t round;
    uint8_t version[32];
} eval_job;

struct agg_eval {
    eval_job *q; /* waiting, oldest first */
    int n, cap;
    pid_t pid; /* the child, 0 when none */
    eval_job running;
    double started;
    char out[AGG_PATH_MAX], log[AGG_PATH_MAX];
};

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int agg_eval_open(agg *a) {
    if (!a->cfg.has_eval) return 0;
    if (!a->cfg.eval_exe[0])
        return err_set("%s: 'eval' needs the fedlora binary to run `fedlora eval`; start the "
                       "aggregator with `fedlora aggregator`",
                       a->cfg.file);
    a->eval = calloc(1, sizeof *a->eval);
    if (!a->eval) return err_set("out of memory");
    char dir[AGG_PATH_MAX];
    if (agg_state_path(a, "eval", dir, sizeof dir) < 0 || fio_mkdirs(dir, 0700) < 0) return -1;
    return 0;
}

static void stop_child(agg_eval *e) {
    if (e->pid <= 0) return;
    kill(e->pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(e->pid, NULL, WNOHANG) == e->pid) {
            e->pid = 0;
            return;
        }
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(e->pid, SIGKILL);
    waitpid(e->pid, NULL, 0);
    e->pid = 0;
}

void agg_eval_close(agg *a) {
    if (!a->eval) return;
    if (a->eval->pid > 0)
        agg_say("stopping the evaluation of round %llu's version; it runs again at the next start",
                (unsigned long long)a->eval->running.round);
    stop_child(a->eval);
    free(a->eval->q);
    free(a->eval);
    a->eval = NULL;
}

int agg_eval_queue(agg *a, uint64_t round, const uint8_t version[32]) {
    agg_eval *e = a->eval;
    if (!e) return 0;
    if (e->pid > 0 && e->running.round == round) return 0;
    for (int i = 0; i < e->n; i++)
        if (e->q[i].round == round) {
            memcpy(e->q[i].version, version, 32);
            return 0;
        }
    if (e->n == e->cap) {
        int cap = e->cap ? 2 * e->cap : 8;
        eval_job *q = realloc(e->q, (size_t)cap * sizeof *q);
        if (!q) return err_set("out of memory for the evaluation queue");
        e->q = q;
        e->cap = cap;
    }
    e->q[e->n].round = round;
    memcpy(e->q[e->n].version, version, 32);
    e->n++;
    agg_status_eval_state(a, round, version, "queued");
    return 0;
}

/* A line of metrics.jsonl read at start: a published round's version waits
 * for its evaluation until an eval record for its round follows. */
void agg_eval_scan_line(agg *a, json_t *line) {
    agg_eval *e = a->eval;
    json_t *rn = json_object_get(line, "round"), *kind = json_object_get(line, "kind"),
           *st = json_object_get(line, "status"), *v = json_object_get(line, "version");
    if (!e || !json_is_integer(rn) || json_integer_value(rn) < 0) return;
    uint64_t round = (uint64_t)json_integer_value(rn);
    if (json_is_string(kind) && !strcmp(json_string_value(kind), "eval")) {
        for (int i = 0; i < e->n; i++)
            if (e->q[i].round == round) {
                memmove(e->q + i, e->q + i + 1, (size_t)(e->n - i - 1) * sizeof *e->q);
                e->n--;
                break;
            }
        return;
    }
    uint8_t h[32];
    if (!kind && json_is_string(st) && !strcmp(json_string_value(st), "published") &&
        json_is_string(v) && hex_decode(json_string_value(v), h, 32) == 0)
        agg_eval_queue(a, round, h);
}

/* The last non-empty line of the child's log, printable ASCII, for the
 * record's error. */
static void log_tail(const char *path, char *out, size_t n) {
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st;
    char buf[EVAL_LOG_TAIL + 1];
    off_t from = fstat(fd, &st) == 0 && st.st_size > EVAL_LOG_TAIL ? st.st_size - EVAL_LOG_TAIL : 0;
    ssize_t got = pread(fd, buf, EVAL_LOG_TAIL, from);
    close(fd);
    if (got <= 0) return;
    size_t end = (size_t)got;
    while (end > 0 && (buf[end - 1] == '\n' || buf[end - 1] == '\r' || buf[end - 1] == ' ')) end--;
    size_t start = end;
    while (start > 0 && buf[start - 1] != '\n') start--;
    size_t k = 0;
    for (size_t i = start; i < end && k + 1 < n; i++)
        out[k++] = (unsigned char)buf[i] >= 0x20 && (unsigned char)buf[i] < 0x7f ? buf[i] : '?';
    out[k] = '\0';
}

static int start_next(agg *a) {
    agg_eval *e = a->eval;
    const agg_config *c = &a->cfg;
    if (e->pid > 0 || e->n == 0) return 0;
    e->running = e->q[0];
    memmove(e->q, e->q + 1, (size_t)(e->n - 1) * sizeof *e->q);
    e->n--;
    e->started = mono();
    char dir[AGG_PATH_MAX], tok[AGG_PATH_MAX], name[64], seq[24], batch[24];
    if (store_version_dir(c->state, e->running.version, dir, sizeof dir) < 0) return -1;
    snprintf(name, sizeof name, "eval/r%llu.json", (unsigned long long)e->running.round);
    if (agg_state_path(a, name, e->out, sizeof e->out) < 0) return -1;
    snprintf(name, sizeof name, "eval/r%llu.log", (unsigned long long)e->running.round);
    if (agg_state_path(a, name, e->log, sizeof e->log) < 0) return -1;
    if (c->eval_tokenizer[0])
        snprintf(tok, sizeof tok, "%s", c->eval_tokenizer);
    else if (fio_join(tok, sizeof tok, c->base_model, "tokenizer.json") < 0)
        return -1;
    unlink(e->out);
    snprintf(seq, sizeof seq, "%d", c->eval_seq);
    snprintf(batch, sizeof batch, "%d", c->eval_batch);
    /* argv: eval --model DIR --tokenizer T --json OUT --batch B [--seq T]
     * (--data F)... (--task F)... */
    int nargs = 12 + 2 * (c->n_eval_data + c->n_eval_tasks), k = 0;
    const char **argv = calloc((size_t)nargs + 1, sizeof *argv);
    if (!argv) return err_set("out of memory");
    argv[k++] = "fedlora";
    argv[k++] = "eval";
    argv[k++] = "--model";
    argv[k++] = dir;
    argv[k++] = "--tokenizer";
    argv[k++] = tok;
    argv[k++] = "--json";
    argv[k++] = e->out;
    argv[k++] = "--batch";
    argv[k++] = batch;
    if (c->eval_seq > 0) {
        argv[k++] = "--seq";
        argv[k++] = seq;
    }
    for (int i = 0; i < c->n_eval_data; i++) argv[k++] = "--data", argv[k++] = c->eval_data[i];
    for (int i = 0; i < c->n_eval_tasks; i++) argv[k++] = "--task", argv[k++] = c->eval_tasks[i];
    /* Niced, in a process group of its own (a Ctrl-C meant for the
     * aggregator reaches the aggregator, which then stops the child). */
    char threads[32];
    snprintf(threads, sizeof threads, "OMP_NUM_THREADS=%d", c->eval_threads);
    const char *env[] = {threads, "OPENBLAS_NUM_THREADS=1", NULL};
    proc_options po = {.log = e->log, .env = env, .nice = EVAL_NICE, .own_group = 1};
    pid_t pid;
    int rc = proc_spawn(&pid, c->eval_exe, argv, &po);
    free(argv);
    if (rc != 0) return err_context("starting `fedlora eval`");
    e->pid = pid;
    e->started = mono();
    agg_status_eval_state(a, e->running.round, e->running.version, "running");
    agg_say("evaluating round %llu's version on %d set(s) (log %s)",
            (unsigned long long)e->running.round, c->n_eval_data + c->n_eval_tasks, e->log);
    return 0;
}

/* The child is done (status as waitpid gives it, or -1: timed out): its
 * record goes to metrics.jsonl. */
static int finish(agg *a, int status) {
    agg_eval *e = a->eval;
    double secs = mono() - e->started;
    char hex[STORE_HEX_LEN + 1], why[STATUS_TEXT_MAX] = "", log[48];
    hex_encode(e->running.version, 32, hex);
    /* The state directory's own name for the log, short enough to quote. */
    snprintf(log, sizeof log, "eval/r%llu.log", (unsigned long long)e->running.round);
    json_t *sets = NULL;
    if (status == EVAL_TIMED_OUT) {
        snprintf(why, sizeof why, "stopped after %d s (eval.timeout); see STATE/%s",
                 a->cfg.eval_timeout_s, log);
    } else if (status == EVAL_NO_START) {
        snprintf(why, sizeof why, "could not start `fedlora eval`: %.200s", err_msg());
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char tail[128];
        log_tail(e->log, tail, sizeof tail);
        snprintf(why, sizeof why, "fedlora eval %s %d%s%s (STATE/%s)",
                 WIFEXITED(status) ? "exited with status" : "died of signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), tail[0] ? ": " : "",
                 tail, log);
    } else {
        char *text;
        size_t len;
        json_error_t je;
        json_t *out = NULL;
        if (fio_read_all(e->out, EVAL_OUT_MAX, &text, &len) == 0) {
            out = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
            free(text);
        }
        sets = out ? json_incref(json_object_get(out, "sets")) : NULL;
        json_decref(out);
        if (!json_is_array(sets)) {
            json_decref(sets);
            sets = NULL;
            snprintf(why, sizeof why, "fedlora eval wrote no scores (STATE/%s)", log);
        }
    }
    e->pid = 0;
    json_t *j = json_object();
    if (!j) {
        json_decref(sets);
        return err_set("out of memory");
    }
    json_object_set_new(j, "kind", json_string("eval"));
    json_object_set_new(j, "round", json_integer((json_int_t)e->running.round));
    json_object_set_new(j, "version", json_string(hex));
    if (sets)
        json_object_set_new(j, "sets", sets);
    else
        json_object_set_new(j, "error", json_string(why));
    json_object_set_new(j, "seconds", json_real(secs));
    json_object_set_new(j, "time", json_integer((json_int_t)time(NULL)));
    int rc = agg_metrics_write(a, j);
    json_decref(j);
    if (sets)
        agg_say("round %llu's version evaluated in %.1f s", (unsigned long long)e->running.round,
                secs);
    else
        agg_say("round %llu's version: evaluation failed: %s", (unsigned long long)e->running.round,
                why);
    return rc;
}

int agg_eval_tick(agg *a) {
    agg_eval *e = a->eval;
    if (!e) return 0;
    if (e->pid > 0) {
        int status;
        pid_t r = waitpid(e->pid, &status, WNOHANG);
        if (r == 0 && a->cfg.eval_timeout_s > 0 && mono() - e->started > a->cfg.eval_timeout_s) {
            stop_child(e);
            if (finish(a, EVAL_TIMED_OUT) < 0) return -1;
        } else if (r == e->pid) {
            if (finish(a, status) < 0) return -1;
        } else if (r < 0 && errno != EINTR) {
            err_errno("waiting for `fedlora eval`");
            if (finish(a, EVAL_NO_START) < 0) return -1;
        }
    }
    /* A version whose evaluation cannot start gets a record that says why;
     * the rounds go on. Only a record that cannot be written stops the
     * aggregator (the disk is gone). */
    if (e->pid <= 0 && e->n > 0 && start_next(a) < 0 && finish(a, EVAL_NO_START) < 0) return -1;
    return 0;
}

int agg_eval_idle(const agg *a) {
    return !a->eval || (a->eval->pid <= 0 && a->eval->n == 0);
}
