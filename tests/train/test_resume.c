/* test_resume — a training process killed with SIGKILL mid-run and resumed
 * from its last checkpoint ends with the uninterrupted run's final adapter,
 * byte for byte (adapter_model.safetensors and adapter_config.json), and its
 * metrics.jsonl has the uninterrupted run's records (every field but the
 * timing ones, loss to 17 digits, so bit for bit).
 *
 * The run uses what a resume must carry: LoRA dropout (its RNG position),
 * gradient accumulation, warmup + cosine, held-out evaluations, and more
 * steps than the data has rows (a second epoch, reshuffled). The killed run
 * is started as a real `fedlora train`; the test polls for its first
 * checkpoint and kills it at once, while ~110 of its 120 steps remain.
 * Both precisions: fp32, and bf16 where the CPU multiplies it (oneDNN). */
#include "model/cpu/cpu.h"
#include "tests/support/ts_model.h"

#include <time.h>

static char base[TS_PATH], data[TS_PATH];

#define STEPS "120"

static const char *precision;

static void train_args(const char **args, const char *out, const char *resume) {
    const char *a[] = {ts_bin(),       "train",  "--model",      base,  "--data",    data,
                       "--out",        out,      "--steps",      STEPS, "--seq",     "32",
                       "--batch",      "2",      "--grad-accum", "2",   "--lr",      "5e-3",
                       "--warmup",     "10",     "--dropout",    "0.1", "--targets", "all-linear",
                       "--save-every", "10",     "--eval-every", "50",  "--seed",    "9",
                       "--precision",  precision};
    int n = (int)(sizeof a / sizeof a[0]);
    memcpy(args, a, sizeof a);
    if (resume) {
        args[n++] = "--resume";
        args[n++] = resume;
    }
    args[n] = NULL;
}

/* metrics.jsonl without the fields that measure time. */
static char *metrics_untimed(const char *out) {
    char path[TS_PATH];
    char *text = ts_read(ts_in(path, out, "metrics.jsonl"), NULL);
    if (!text) return NULL;
    /* Each step line ends with "tokens_per_s": …, "elapsed_s": …}: cut there. */
    char *w = text;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *cut = strstr(line, ", \"tokens_per_s\"");
        size_t n = cut ? (size_t)(cut - line) : strlen(line);
        memmove(w, line, n);
        w += n;
        *w++ = '\n';
    }
    *w = '\0';
    return text;
}

static void scenario(void) {
    printf("precision %s\n", precision);
    /* The uninterrupted run. */
    char whole[TS_PATH], killed[TS_PATH], name[64];
    const char *args[64];
    snprintf(name, sizeof name, "whole_%s", precision);
    train_args(args, ts_path(whole, name), NULL);
    CHECK_RUN_OK(ts_run_v(name, args), name);

    /* The same run, killed once its first checkpoint is complete. */
    snprintf(name, sizeof name, "killed_%s", precision);
    ts_path(killed, name);
    char latest[TS_PATH];
    ts_in(latest, killed, "checkpoint/latest");
    train_args(args, killed, NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) _exit(126);
        execv(ts_bin(), (char *const *)args);
        _exit(127);
    }
    CHECK(pid > 0);
    int status = 0, exited = 0;
    for (int i = 0; pid > 0 && i < 600000 && !fio_exists(latest); i++) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            exited = 1;
            break;
        }
        struct timespec ts = {0, 100000}; /* 0.1 ms */
        nanosleep(&ts, NULL);
    }
    if (pid > 0 && !exited) {
        CHECK(kill(pid, SIGKILL) == 0);
        CHECK(waitpid(pid, &status, 0) == pid);
    }
    CHECK_MSG(!exited && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "the run was to be killed mid-way, it ended with status %d", status);
    char *at = ts_read(latest, NULL);
    CHECK_MSG(at && strcmp(at, "step-00000120\n") != 0, "killed at checkpoint %s",
              at ? at : "(none)");
    if (at) printf("killed after checkpoint %s", at);
    free(at);
    char final_path[TS_PATH];
    CHECK(!fio_exists(ts_in(final_path, killed, "adapter_model.safetensors")));

    /* Resumed from the last checkpoint (via checkpoint/latest). */
    char ckpt[TS_PATH];
    train_args(args, killed, ts_in(ckpt, killed, "checkpoint"));
    snprintf(name, sizeof name, "resumed_%s", precision);
    CHECK_RUN_OK(ts_run_v(name, args), name);
    char *log = ts_output(name, "err");
    CHECK(log && strstr(log, "resuming from"));
    free(log);

    const char *files[] = {"adapter_model.safetensors", "adapter_config.json"};
    for (int i = 0; i < 2; i++) {
        char a[TS_PATH], b[TS_PATH];
        CHECK_MSG(ts_same_file(ts_in(a, whole, files[i]), ts_in(b, killed, files[i])),
                  "%s differs between the uninterrupted and the resumed run", files[i]);
    }
    char *ma = metrics_untimed(whole), *mb = metrics_untimed(killed);
    CHECK(ma && mb && strlen(ma) > 1000);
    CHECK_MSG(ma && mb && !strcmp(ma, mb),
              "metrics differ:\n--- uninterrupted\n%.600s\n--- "
              "resumed\n%.600s",
              ma ? ma : "", mb ? mb : "");
    free(ma);
    free(mb);
}

int main(void) {
    CHECK_OK(ts_model_dir(ts_path(base, "base"), "llama", 0.1, 4, NULL));
    char path[TS_PATH];
    char *text = ts_read(ts_example(path, "corpus/mixed.txt"), NULL);
    CHECK_MSG(text != NULL, "cannot read %s", path);
    CHECK_OK(ts_write(ts_path(data, "mixed.txt"), text ? text : ""));
    free(text);
    precision = "fp32";
    scenario();
    if (cpu_bf16_check() == 0) {
        precision = "bf16";
        scenario();
    } else {
        printf("bf16 not run: %s\n", err_msg());
    }
    return check_finish();
}
