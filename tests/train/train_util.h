/* train_util.h — what the training tests share: scratch directories, small
 * models written to disk, files, and running the real `fedlora` binary
 * (env FEDLORA_BIN) as a child process. */
#ifndef FL_TESTS_TRAIN_UTIL_H
#define FL_TESTS_TRAIN_UTIL_H

#include "model/checkpoint.h"
#include "model/model.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/check.h"
#include "util/err.h"
#include "util/fio.h"

#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TU_PATH 1024

static char tu_root[] = "/tmp/fl_train_test_XXXXXX";

/* A fresh directory for the whole test program; paths below it by name. */
static inline int tu_init(void) {
    /* For the fedlora processes the tests start (this process's OpenMP
     * read its environment at load time): on a machine shared with other
     * work, busy-waiting OpenMP threads can run a tiny model a hundred times
     * slower. Passive waiting changes no result, only how idle threads wait. */
    setenv("OMP_WAIT_POLICY", "passive", 0);
    return mkdtemp(tu_root) ? 0 : -1;
}

static inline const char *tu_path(char *out, const char *name) {
    snprintf(out, TU_PATH, "%s/%s", tu_root, name);
    return out;
}

/* dir/name into out (TU_PATH bytes). */
static inline const char *tu_in(char *out, const char *dir, const char *name) {
    if (fio_join(out, TU_PATH, dir, name) != 0) out[0] = '\0';
    return out;
}

static inline const char *tu_bin(void) {
    const char *b = getenv("FEDLORA_BIN");
    return b ? b : "fedlora";
}

/* out (TU_PATH bytes) = the file `name` in the fedlora binary's directory. */
static inline const char *tu_next_to_bin(char *out, const char *name) {
    char dir[TU_PATH];
    snprintf(dir, sizeof dir, "%s", tu_bin());
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    return tu_in(out, dir, name);
}

static inline const char *tu_corpus(char *out, const char *name) {
    const char *fx = getenv("FEDLORA_FIXTURES");
    snprintf(out, TU_PATH, "%s/../../examples/corpus/%s", fx ? fx : "tests/fixtures", name);
    return out;
}

static inline int tu_write(const char *path, const char *text) {
    return fio_write_atomic(path, text, strlen(text), 0644);
}

/* The whole file (NUL-terminated), or NULL. */
static inline char *tu_read(const char *path, size_t *len) {
    char *buf = NULL;
    size_t n = 0;
    if (fio_read_all(path, (size_t)1 << 30, &buf, &n) != 0) return NULL;
    if (len) *len = n;
    return buf;
}

static inline int tu_same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = tu_read(a, &na), *y = tu_read(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* A tiny model of the preset's shape with weights drawn with standard
 * deviation init_range, and the byte-level tokenizer (ids 0..255 are bytes,
 * 256 is <|endoftext|>, the model's bos and eos). tweak, when given, edits
 * the config before the model is built. */
static inline int tu_make_model(const char *dir, const char *arch, double init_range, uint64_t seed,
                                void (*tweak)(model_config *)) {
    model_config cfg;
    model *m = NULL;
    if (model_config_preset(&cfg, arch, "tiny") != 0) return -1;
    cfg.bos_token_id = cfg.eos_token_id = 256;
    cfg.initializer_range = init_range;
    if (tweak) tweak(&cfg);
    if (model_create(&m, &cfg) != 0) return -1;
    model_init_random(m, seed);
    int rc = checkpoint_save(m, dir, "float32");
    model_free(m);
    char path[TU_PATH];
    tu_in(path, dir, "tokenizer.json");
    tokenizer_special_token eot = {"<|endoftext|>", 256};
    return rc == 0 ? tokenizer_save_bytelevel(path, &eot, 1, NULL) : -1;
}

/* Runs FEDLORA_BIN with the NULL-terminated arguments, stdout and stderr
 * into files under the root named `tag`.out / `tag`.err; returns the exit
 * status (128 + signal when killed), or -1 when it could not run. */
static inline int tu_run_v(const char *tag, const char *const *args) {
    char out[TU_PATH], err[TU_PATH], name[256];
    snprintf(name, sizeof name, "%s.out", tag);
    tu_path(out, name);
    snprintf(name, sizeof name, "%s.err", tag);
    tu_path(err, name);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0) _exit(126);
        execv(tu_bin(), (char *const *)args);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

#define TU_MAX_ARGS 64
/* tu_run(tag, "train", "--model", dir, ..., NULL) */
static inline int tu_run(const char *tag, ...) {
    const char *args[TU_MAX_ARGS];
    int n = 0;
    args[n++] = tu_bin();
    va_list ap;
    va_start(ap, tag);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < TU_MAX_ARGS - 1) args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return tu_run_v(tag, args);
}

/* The stderr (or stdout) a run left. */
static inline char *tu_output(const char *tag, const char *ext) {
    char path[TU_PATH], name[256];
    snprintf(name, sizeof name, "%s.%s", tag, ext);
    return tu_read(tu_path(path, name), NULL);
}

/* The run failed (exit 1) and said what it should on stderr. */
#define CHECK_RUN_FAILS(rc, tag, needle)                                                           \
    do {                                                                                           \
        char *e_ = tu_output((tag), "err");                                                        \
        CHECK_MSG((rc) == 1 && e_ && strstr(e_, (needle)) != NULL,                                 \
                  "%s: exit %d, stderr '%s', wanted it to contain '%s'", (tag), (rc),              \
                  e_ ? e_ : "(none)", (needle));                                                   \
        free(e_);                                                                                  \
    } while (0)

#define CHECK_RUN_OK(rc, tag)                                                                      \
    do {                                                                                           \
        char *e_ = tu_output((tag), "err");                                                        \
        CHECK_MSG((rc) == 0, "%s: exit %d, stderr '%s'", (tag), (rc), e_ ? e_ : "(none)");         \
        free(e_);                                                                                  \
    } while (0)

/* Removes the test's scratch tree (best effort: it is under /tmp). */
static inline void tu_cleanup(void) {
    char cmd[TU_PATH + 16];
    if (getenv("FEDLORA_KEEP_TMP")) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tu_root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tu_root);
}

#endif
