/* ts.h — what the C tests share, one prefix (ts_): the test's scratch
 * directory, files, fixtures, and the real `fedlora` binary (env
 * FEDLORA_BIN) run as a child with its output kept. Models, tiny configs and
 * worst-index differences are in ts_model.h; the BLAS merge oracle in
 * blas_merge.h; a loopback federation is cli/harness.h's.
 *
 * Header-only (static inline), so that a test links only the libraries it
 * tests, fp32 or fp64 alike. */
#ifndef FL_TESTS_SUPPORT_TS_H
#define FL_TESTS_SUPPORT_TS_H

#include "tests/check.h"
#include "util/err.h"
#include "util/fio.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TS_PATH 4096

/* ---- the scratch directory ---------------------------------------------------------- */

static char ts_root[TS_PATH];

static inline int ts_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* rm -r of a tree (a missing one is fine). */
static inline int ts_remove_tree(const char *path) {
    if (!fio_exists(path)) return 0;
    return nftw(path, ts_rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0
                                                                  : err_errno("removing %s", path);
}

static inline void ts_cleanup(void) {
    if (!ts_root[0]) return;
    if (check_failed || getenv("FEDLORA_KEEP_TMP")) {
        fprintf(stderr, "the test's files are kept in %s\n", ts_root);
        return;
    }
    if (ts_remove_tree(ts_root) != 0) fprintf(stderr, "%s\n", err_msg());
}

/* The test's scratch directory, $TMPDIR/fedlora-test-XXXXXX (or /tmp),
 * made on first use and removed at exit, unless a check failed or
 * FEDLORA_KEEP_TMP is set: then it stays, named on stderr, for a look. */
static inline const char *ts_dir(void) {
    if (!ts_root[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(ts_root, sizeof ts_root, "%s/fedlora-test-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(ts_root)) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(ts_cleanup);
    }
    return ts_root;
}

/* dir/name into out (TS_PATH bytes); "" when it does not fit. */
static inline char *ts_in(char *out, const char *dir, const char *name) {
    if (fio_join(out, TS_PATH, dir, name) != 0) out[0] = '\0';
    return out;
}

/* dir/<name, printf-style> into out (TS_PATH bytes). */
static inline char *ts_vin(char *out, const char *dir, const char *fmt, va_list ap) {
    char rel[TS_PATH];
    vsnprintf(rel, sizeof rel, fmt, ap);
    return ts_in(out, dir, rel);
}

/* ts_dir()/<name, printf-style> into out (TS_PATH bytes). */
static inline char *ts_path(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline char *ts_path(char *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ts_vin(out, ts_dir(), fmt, ap);
    va_end(ap);
    return out;
}

/* ts_dir()/name in a rotating buffer (eight are live at once), for
 * passing a scratch path inline. */
static inline const char *ts_tmp(const char *name) {
    static char bufs[8][TS_PATH];
    static int next;
    return ts_in(bufs[next++ % 8], ts_dir(), name);
}

/* $FEDLORA_FIXTURES (tests/fixtures when the variable is not set). */
static inline const char *ts_fixtures(void) {
    const char *fx = getenv("FEDLORA_FIXTURES");
    return fx && *fx ? fx : "tests/fixtures";
}

/* A fixture: $FEDLORA_FIXTURES/<name, printf-style> into out (TS_PATH). */
static inline char *ts_fixture(char *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline char *ts_fixture(char *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ts_vin(out, ts_fixtures(), fmt, ap);
    va_end(ap);
    return out;
}

/* A file of the repository's examples, examples/<name, printf-style>
 * (found from the fixtures, tests/fixtures), into out (TS_PATH). */
static inline char *ts_example(char *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline char *ts_example(char *out, const char *fmt, ...) {
    char root[TS_PATH];
    ts_in(root, ts_fixtures(), "../../examples");
    va_list ap;
    va_start(ap, fmt);
    ts_vin(out, root, fmt, ap);
    va_end(ap);
    return out;
}

/* ---- files ---------------------------------------------------------------------------- */

/* The whole file, NUL-terminated (free() it); *len its size (len may be
 * NULL). NULL when missing or unreadable. */
static inline char *ts_read(const char *path, size_t *len) {
    char *buf = NULL;
    size_t n = 0;
    if (!fio_exists(path) || fio_read_all(path, (size_t)1 << 30, &buf, &n) != 0) return NULL;
    if (len) *len = n;
    return buf;
}

static inline int ts_write_bytes(const char *path, const void *data, size_t len) {
    return fio_write_atomic(path, data, len, 0644);
}

static inline int ts_write(const char *path, const char *text) {
    return ts_write_bytes(path, text, strlen(text));
}

/* Are two files byte for byte the same? */
static inline int ts_same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = ts_read(a, &na), *y = ts_read(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* Does the file contain needle? (0 when it is missing) */
static inline int ts_contains(const char *path, const char *needle) {
    char *t = ts_read(path, NULL);
    int found = t && strstr(t, needle) != NULL;
    free(t);
    return found;
}

/* ---- time ------------------------------------------------------------------------------ */

/* Monotonic seconds, and a sleep that a signal does not cut short. */
static inline double ts_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static inline void ts_sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}

/* ---- the fedlora binary ----------------------------------------------------------------- */

static inline const char *ts_bin(void) {
    const char *b = getenv("FEDLORA_BIN");
    return b ? b : "fedlora";
}

/* out (TS_PATH bytes) = the file `name` in the fedlora binary's directory. */
static inline char *ts_next_to_bin(char *out, const char *name) {
    char dir[TS_PATH];
    snprintf(dir, sizeof dir, "%s", ts_bin());
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    return ts_in(out, dir, name);
}

/* Runs FEDLORA_BIN with the NULL-terminated args (args[0] is the program's
 * name), stdout and stderr into ts_dir()/<tag>.out and <tag>.err; returns
 * the exit status (128 + N after signal N), or -1 when it could not run.
 * rss_kib (may be NULL): the run's peak resident memory (ru_maxrss). */
static inline int ts_run_rss(const char *tag, const char *const *args, long *rss_kib) {
    char out[TS_PATH], err[TS_PATH];
    ts_path(out, "%s.out", tag);
    ts_path(err, "%s.err", tag);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        /* On a machine shared with other work, busy-waiting OpenMP threads
         * can run a tiny model a hundred times slower; passive waiting
         * changes no result. */
        setenv("OMP_WAIT_POLICY", "passive", 0);
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0) _exit(126);
        execv(ts_bin(), (char *const *)args);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) != pid) return -1;
    if (rss_kib) *rss_kib = ru.ru_maxrss;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static inline int ts_run_v(const char *tag, const char *const *args) {
    return ts_run_rss(tag, args, NULL);
}

#define TS_MAX_ARGS 64
/* ts_run(tag, "train", "--model", dir, ..., NULL) */
static inline int ts_run(const char *tag, ...) {
    const char *args[TS_MAX_ARGS];
    int n = 0;
    args[n++] = ts_bin();
    va_list ap;
    va_start(ap, tag);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < TS_MAX_ARGS - 1) args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return ts_run_v(tag, args);
}

/* What a run left on stdout ("out") or stderr ("err"); free() it. */
static inline char *ts_output(const char *tag, const char *ext) {
    char path[TS_PATH];
    return ts_read(ts_path(path, "%s.%s", tag, ext), NULL);
}

/* The run failed (exit 1) and said what it should on stderr. */
#define CHECK_RUN_FAILS(rc, tag, needle)                                                           \
    do {                                                                                           \
        char *e_ = ts_output((tag), "err");                                                        \
        CHECK_MSG((rc) == 1 && e_ && strstr(e_, (needle)) != NULL,                                 \
                  "%s: exit %d, stderr '%s', wanted it to contain '%s'", (tag), (rc),              \
                  e_ ? e_ : "(none)", (needle));                                                   \
        free(e_);                                                                                  \
    } while (0)

#define CHECK_RUN_OK(rc, tag)                                                                      \
    do {                                                                                           \
        char *e_ = ts_output((tag), "err");                                                        \
        CHECK_MSG((rc) == 0, "%s: exit %d, stderr '%s'", (tag), (rc), e_ ? e_ : "(none)");         \
        free(e_);                                                                                  \
    } while (0)

#endif
