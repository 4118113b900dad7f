/* test_gpu_device_cli — `fedlora train`, `eval` and `generate` with --device and
 * --precision, as real processes, in whatever this build and machine have.
 * It runs everywhere and is never skipped. What happens is decided at run
 * time, by whether the CUDA backend module (libfedlora_cuda.so, next to the
 * fedlora binary; gpu/gpu_load.h) loads and what it sees:
 *   - no module (a build without the CUDA backend): --device cuda fails
 *     (exit 1) with "CUDA backend module ... not found ... use --device cpu";
 *     a build that made the module must load it;
 *   - the module but no usable GPU (CI with nvcc, a laptop): exit 1 with
 *     "no CUDA device found (<why>) — use --device cpu", no crash, and
 *     nothing written (the check comes before the model is loaded);
 *   - a GPU: a few steps train and evaluate on it (fp32 and bf16) and write
 *     the adapter; greedy generation with that adapter in fp32 writes the
 *     CPU's text, and bf16 generation runs; with CUDA_VISIBLE_DEVICES="" the
 *     GPU is hidden and the error above names that variable;
 * and in every build: bad --device / --precision values are errors, and
 * --device cpu --precision fp32 trains as before. */
#include "gpu/gpu_load.h"
#include "tests/support/ts_model.h"

static char base[TS_PATH], data[TS_PATH];

/* Runs args (NULL-terminated within TS_MAX_ARGS) with `--precision P`
 * appended when precision is not NULL. */
static int run_with_precision(const char *tag, const char **args, const char *precision) {
    int n = 0;
    while (args[n]) n++; /* the rest of args is NULL */
    if (precision) {
        args[n++] = "--precision";
        args[n++] = precision;
    }
    args[n] = NULL;
    return ts_run_v(tag, args);
}

/* `fedlora train` of 2 tiny steps into OUT with the device options. */
static int train(const char *tag, const char *out, const char *device, const char *precision) {
    const char *args[TS_MAX_ARGS] = {ts_bin(), "train",        "--model", base,       "--data",
                                     data,     "--out",        out,       "--steps",  "2",
                                     "--seq",  "32",           "--batch", "2",        "--rank",
                                     "4",      "--save-every", "0",       "--device", device};
    return run_with_precision(tag, args, precision);
}

static int eval(const char *tag, const char *device, const char *precision) {
    const char *args[TS_MAX_ARGS] = {ts_bin(), "eval",  "--model", base,       "--data",
                                     data,     "--seq", "32",      "--device", device};
    return run_with_precision(tag, args, precision);
}

/* `fedlora generate`, greedy, of 12 tokens with the adapter in ADAPTER. */
static int generate(const char *tag, const char *adapter, const char *device,
                    const char *precision) {
    const char *args[TS_MAX_ARGS] = {ts_bin(),       "generate", "--model",  base,     "--adapter",
                                     adapter,        "--prompt", "The sea",  "--seed", "3",
                                     "--max-tokens", "12",       "--device", device};
    return run_with_precision(tag, args, precision);
}

/* The run failed with exit 1 (an error, not a crash) and said all of the
 * NULL-terminated needles on stderr. */
static void check_refused(int rc, const char *tag, ...) {
    char *err = ts_output(tag, "err");
    CHECK_MSG(rc == 1, "%s: exit %d (wanted 1), stderr '%s'", tag, rc, err ? err : "(none)");
    va_list ap;
    va_start(ap, tag);
    for (const char *needle; (needle = va_arg(ap, const char *)) != NULL;)
        CHECK_MSG(err && strstr(err, needle), "%s: stderr '%s' lacks '%s'", tag,
                  err ? err : "(none)", needle);
    va_end(ap);
    free(err);
}

static void check_adapter(const char *out) {
    char path[TS_PATH];
    CHECK_MSG(fio_exists(ts_in(path, out, "adapter_model.safetensors")), "%s: no adapter", out);
    CHECK_MSG(fio_exists(ts_in(path, out, "adapter_config.json")), "%s: no adapter config", out);
}

/* --device cuda where it cannot run: refused before anything is loaded or
 * written, with what the build or the machine lacks. */
static void check_cuda_refused(const char *why, const char *needle2) {
    char out[TS_PATH], tag[64];
    snprintf(tag, sizeof tag, "cuda_%s", why);
    int rc = train(tag, ts_path(out, "%s", tag), "cuda", NULL);
    printf("train --device cuda (%s): exit %d\n", why, rc);
    check_refused(rc, tag, "use --device cpu", needle2, NULL);
    CHECK_MSG(!fio_exists(out), "%s: %s was created", tag, out);
    snprintf(tag, sizeof tag, "eval_cuda_%s", why);
    rc = eval(tag, "cuda", "fp32");
    check_refused(rc, tag, "use --device cpu", needle2, NULL);
    snprintf(tag, sizeof tag, "generate_cuda_%s", why);
    rc = generate(tag, ts_path(out, "cpu"), "cuda", NULL);
    check_refused(rc, tag, "use --device cpu", needle2, NULL);
}

int main(void) {
    CHECK_OK(ts_model_dir(ts_path(base, "base"), "llama", 0.1, 4, NULL));
    char path[TS_PATH], out[TS_PATH];
    char *text = ts_read(ts_example(path, "corpus/mixed.txt"), NULL);
    CHECK_MSG(text != NULL, "cannot read %s", path);
    CHECK_OK(ts_write(ts_path(data, "mixed.txt"), text ? text : ""));
    free(text);

    /* Every build: names checked, the CPU path unchanged. */
    check_refused(train("tpu", ts_path(out, "tpu"), "tpu", NULL), "tpu",
                  "--device must be cpu or cuda, got 'tpu'", NULL);
    check_refused(train("fp16", ts_path(out, "fp16"), "cuda", "fp16"), "fp16",
                  "--precision must be fp32, bf16 or auto, got 'fp16'", NULL);
    int rc = train("cpu", ts_path(out, "cpu"), "cpu", "fp32");
    CHECK_RUN_OK(rc, "cpu");
    check_adapter(out);
    check_refused(generate("gen_tpu", out, "tpu", NULL), "gen_tpu",
                  "--device must be cpu or cuda, got 'tpu'", NULL);
    rc = generate("gen_cpu", out, "cpu", NULL);
    CHECK_RUN_OK(rc, "gen_cpu");
    char *cpu_text = ts_output("gen_cpu", "out");
    CHECK_MSG(cpu_text && strlen(cpu_text) > 1, "gen_cpu printed '%s'",
              cpu_text ? cpu_text : "(none)");

    /* The module fedlora will find: the one next to it. */
    char module[TS_PATH];
    setenv(GPU_LOAD_ENV, ts_next_to_bin(module, GPU_MODULE_FILE), 1);
    const gpu_api *gpu = gpu_load_api();
    unsetenv(GPU_LOAD_ENV);
    CHECK_MSG(gpu || !GPU_MODULE_BUILT, "this build made %s, but it does not load: %s", module,
              err_msg());
    int n_dev = gpu ? gpu->available() : 0;
    if (!gpu) {
        printf("no CUDA backend module: %s\n", err_msg());
        check_cuda_refused("no_backend", "CUDA backend module");
    } else if (n_dev == 0) {
        printf("CUDA backend module %s; no device\n", gpu_load_path());
        check_cuda_refused("no_device", "no CUDA device found (");
    } else {
        /* A GPU: it trains and evaluates there. */
        printf("CUDA backend module %s; %d device(s)\n", gpu_load_path(), n_dev);
        rc = train("gpu_fp32", ts_path(out, "gpu_fp32"), "cuda", "fp32");
        CHECK_RUN_OK(rc, "gpu_fp32");
        check_adapter(out);
        rc = train("gpu_bf16", ts_path(out, "gpu_bf16"), "cuda", NULL);
        CHECK_RUN_OK(rc, "gpu_bf16");
        check_adapter(out);
        char *log = ts_output("gpu_bf16", "err");
        CHECK_MSG(log && strstr(log, "training on CUDA device 0") && strstr(log, "in bf16"),
                  "gpu_bf16: stderr '%s' does not say where it trains", log ? log : "(none)");
        free(log);
        rc = eval("gpu_eval", "cuda", NULL);
        CHECK_RUN_OK(rc, "gpu_eval");
        char *o = ts_output("gpu_eval", "out");
        CHECK_MSG(o && strncmp(o, "loss ", 5) == 0, "gpu_eval printed '%s'", o ? o : "(none)");
        free(o);
        /* Generation on the GPU: fp32 picks the CPU's greedy tokens, bf16 runs. */
        rc = generate("gen_gpu_fp32", ts_path(out, "cpu"), "cuda", "fp32");
        CHECK_RUN_OK(rc, "gen_gpu_fp32");
        o = ts_output("gen_gpu_fp32", "out");
        CHECK_MSG(o && cpu_text && strcmp(o, cpu_text) == 0,
                  "greedy text on the GPU '%s' differs from the CPU's '%s'", o ? o : "(none)",
                  cpu_text ? cpu_text : "(none)");
        free(o);
        rc = generate("gen_gpu_bf16", ts_path(out, "cpu"), "cuda", NULL);
        CHECK_RUN_OK(rc, "gen_gpu_bf16");
        log = ts_output("gen_gpu_bf16", "err");
        CHECK_MSG(log && strstr(log, "cuda bf16"), "gen_gpu_bf16: stderr '%s'",
                  log ? log : "(none)");
        free(log);
        /* Hidden devices: the same error as on a machine without one. */
        setenv("CUDA_VISIBLE_DEVICES", "", 1);
        check_cuda_refused("hidden", "CUDA_VISIBLE_DEVICES is ''");
        unsetenv("CUDA_VISIBLE_DEVICES");
    }
    free(cpu_text);
    return check_finish();
}
