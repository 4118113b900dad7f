/* test_real_size — what lets real-size checkpoints fit, as the user runs it:
 *
 *   - `fedlora init-model` streams the model out tensor by tensor: its
 *     weights are the bytes of model_init_random + checkpoint_save (every
 *     draw in the same order), for Llama and GPT-2 (whose Conv1D weights
 *     are written transposed), in fp32 and bf16; --config takes a
 *     config.json (its torch_dtype the default --dtype) and gives the same
 *     model as the preset it describes;
 *   - peak memory (ru_maxrss of the process) on a ~100M-parameter bf16
 *     model: init-model holds about one tensor; eval and train hold the
 *     checkpoint once (within 1.3x the file's size, plus their activations
 *     and the libraries), at both precisions. A whole-model fp32 copy, 2x
 *     the file, fails this. */
#include "model/checkpoint.h"
#include "model/cpu/cpu.h"
#include "tests/support/ts_model.h"

#include <sys/resource.h>
#include <sys/stat.h>

static void check_init_streamed(void) {
    const char *archs[] = {"llama", "gpt2"}, *dtypes[] = {"float32", "bfloat16"};
    for (int a = 0; a < 2; a++)
        for (int d = 0; d < 2; d++) {
            char cli[TS_PATH], lib[TS_PATH], name[64], pa[TS_PATH], pb[TS_PATH];
            snprintf(name, sizeof name, "init_cli_%s_%s", archs[a], dtypes[d]);
            ts_path(cli, name);
            snprintf(name, sizeof name, "init_lib_%s_%s", archs[a], dtypes[d]);
            ts_path(lib, name);
            int rc = ts_run(name, "init-model", "--arch", archs[a], "--preset", "tiny", "--seed",
                            "5", "--dtype", dtypes[d], "--out", cli, NULL);
            CHECK_RUN_OK(rc, name);
            model_config cfg;
            model *m = NULL;
            CHECK_OK(model_config_preset(&cfg, archs[a], "tiny"));
            if (cfg.eos_token_id < 256) cfg.bos_token_id = cfg.eos_token_id = 256;
            CHECK_OK(model_create(&m, &cfg));
            if (!m) continue;
            model_init_random(m, 5);
            CHECK_OK(checkpoint_save(m, lib, dtypes[d]));
            model_free(m);
            CHECK_MSG(ts_same_file(ts_in(pa, cli, "model.safetensors"),
                                   ts_in(pb, lib, "model.safetensors")),
                      "%s %s: init-model's weights differ from model_init_random's", archs[a],
                      dtypes[d]);
        }
    /* --config: a config.json in, the preset's model out, in its torch_dtype */
    char cfgdir[TS_PATH], fromcfg[TS_PATH], preset[TS_PATH], path[TS_PATH], pb[TS_PATH];
    model_config cfg;
    CHECK_OK(model_config_preset(&cfg, "llama", "small"));
    cfg.bos_token_id = cfg.eos_token_id = 256;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "bfloat16");
    CHECK_OK(fio_mkdirs(ts_path(cfgdir, "cfg"), 0755));
    CHECK_OK(model_config_save(&cfg, ts_in(path, cfgdir, "config.json")));
    CHECK_RUN_OK(ts_run("init_config", "init-model", "--config", path, "--seed", "2", "--out",
                        ts_path(fromcfg, "from_config"), NULL),
                 "init_config");
    CHECK_RUN_OK(ts_run("init_preset", "init-model", "--arch", "llama", "--preset", "small",
                        "--seed", "2", "--dtype", "bfloat16", "--out",
                        ts_path(preset, "from_preset"), NULL),
                 "init_preset");
    CHECK_MSG(ts_same_file(ts_in(path, fromcfg, "model.safetensors"),
                           ts_in(pb, preset, "model.safetensors")),
              "init-model --config gives another model than the preset it describes");
    int rc = ts_run("init_both", "init-model", "--config", path, "--arch", "llama", "--out",
                    ts_path(pb, "both"), NULL);
    CHECK_MSG(rc > 0 && rc < 128 && !fio_exists(pb), "--config with --arch: exit %d", rc);
}

#ifndef FL_SANITIZE /* peak memory is not checked under the sanitizers (main) */
/* An upper bound of the activations, LoRA and scratch a run of B x T rows
 * holds (model/cpu/model_cpu.c's buffers, with room). */
static double acts_bytes(const model_config *c, int N) {
    double C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, L = c->num_layers;
    double HD = (double)c->num_heads * c->head_dim, W = HD + 2.0 * c->num_kv_heads * c->head_dim;
    double per_row = V + (2 * L + 1) * C + L * (W + HD + 2 * F + 4) + 2 * F + 6 * C + W + HD;
    return 4.0 * N * per_row * 1.5;
}

static void check_memory(void) {
    char dir[TS_PATH], data[TS_PATH], path[TS_PATH], out[TS_PATH];
    long rss = 0;
    const char *init[] = {ts_bin(), "init-model", "--arch",   "llama", "--preset",
                          "100m",   "--dtype",    "bfloat16", "--out", ts_path(dir, "m100"),
                          NULL};
    CHECK_RUN_OK(ts_run_rss("init100", init, &rss), "init100");
    model_config cfg;
    CHECK_OK(model_config_load(&cfg, ts_in(path, dir, "config.json")));
    struct stat st;
    CHECK(stat(ts_in(path, dir, "model.safetensors"), &st) == 0);
    double file = (double)st.st_size, largest = 4.0 * cfg.vocab_size * cfg.hidden_size;
    double libs = 64.0 * 1024 * 1024; /* the binary, OpenBLAS, oneDNN, allocator slack */
    printf("init-model 100m bf16: peak %.0f MB for a %.0f MB file (largest tensor as fp32: %.0f "
           "MB)\n",
           rss / 1024.0, file / 1e6, largest / 1e6);
    CHECK_MSG(rss * 1024.0 <= 1.3 * largest + libs, "init-model peaked at %ld kB", rss);

    /* 12 short documents: a few rows of 64 */
    char *text = ts_read(ts_example(path, "corpus/mixed.txt"), NULL);
    CHECK(text != NULL);
    if (text) {
        char *cut = text;
        for (int i = 0; i < 12 && cut; i++) cut = strchr(cut + 1, '\n');
        if (cut) cut[1] = '\0';
    }
    CHECK_OK(ts_write(ts_path(data, "short.txt"), text ? text : ""));
    free(text);
    double bound = 1.3 * file + acts_bytes(&cfg, 64) + libs;
    const char *precisions[] = {"fp32", "bf16"};
    for (int p = 0; p < 2; p++) {
        if (p == 1 && cpu_bf16_check() != 0) {
            printf("bf16 not run: %s\n", err_msg());
            break;
        }
        char tag[64];
        snprintf(tag, sizeof tag, "eval_%s", precisions[p]);
        const char *ev[] = {ts_bin(),      "eval",        "--model", dir,       "--data",
                            data,          "--seq",       "64",      "--batch", "1",
                            "--precision", precisions[p], NULL};
        CHECK_RUN_OK(ts_run_rss(tag, ev, &rss), tag);
        printf("eval %s: peak %.0f MB (bound %.0f MB: 1.3 x file + activations + libraries)\n",
               precisions[p], rss / 1024.0, bound / 1048576.0);
        CHECK_MSG(rss * 1024.0 <= bound, "eval %s peaked at %ld kB", precisions[p], rss);
        snprintf(tag, sizeof tag, "train_%s", precisions[p]);
        char aname[64];
        snprintf(aname, sizeof aname, "adapter_%s", precisions[p]);
        const char *tr[] = {ts_bin(),      "train",
                            "--model",     dir,
                            "--data",      data,
                            "--seq",       "64",
                            "--batch",     "1",
                            "--steps",     "2",
                            "--targets",   "q_proj,k_proj,v_proj,o_proj",
                            "--precision", precisions[p],
                            "--out",       ts_path(out, aname),
                            NULL};
        CHECK_RUN_OK(ts_run_rss(tag, tr, &rss), tag);
        printf("train %s: peak %.0f MB\n", precisions[p], rss / 1024.0);
        CHECK_MSG(rss * 1024.0 <= bound, "train %s peaked at %ld kB", precisions[p], rss);
    }
}

#endif

int main(void) {
    check_init_streamed();
#ifdef FL_SANITIZE
    printf("peak memory not checked: a sanitizer build's shadow memory would dominate it\n");
#else
    check_memory();
#endif
    return check_finish();
}
