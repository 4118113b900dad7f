/* bench_lora_model.h — the network the LoRA benchmarks measure, built in one
 * place so that bench_lora, bench_generate and bench_gpu time the same work
 * as their PyTorch + PEFT references (bench/hf_presets.py, ref_*.py): the
 * config's model with random weights (model_init_random, seed 1) and, for
 * rank > 0, a LoRA adapter of that rank with alpha = 2·rank on every linear
 * layer of the blocks (PEFT's target_modules="all-linear"; a mixture of
 * experts' router included by name, as the reference adapts it through
 * target_parameters, where fedlora's all-linear leaves it frozen). */
#ifndef FL_BENCH_BENCH_LORA_MODEL_H
#define FL_BENCH_BENCH_LORA_MODEL_H

#include "lora/lora.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static inline int bench_lora_adapter(const model_config *cfg, int rank, model **m, lora_set **s) {
    if (rank <= 0) return 0;
    lora_config lc;
    lora_config_init(&lc);
    lc.rank = rank;
    lc.alpha = 2.0 * rank;
    const char *targets = cfg->block.mlp == MODEL_MLP_MOE
                              ? "q_proj,k_proj,v_proj,o_proj,gate,w1,w2,w3"
                              : "all-linear";
    int rc = lora_config_set_targets(&lc, targets) != 0 || lora_create(s, *m, &lc) != 0;
    lora_config_free(&lc);
    if (rc) {
        model_free(*m);
        *m = NULL;
        return -1;
    }
    return 0;
}

/* *m and (rank > 0) *s, else -1 with err_msg() set and nothing allocated. */
static inline int bench_lora_model(const model_config *cfg, int rank, model **m, lora_set **s) {
    *m = NULL;
    *s = NULL;
    if (model_create(m, cfg) != 0) return -1;
    model_init_random(*m, 1);
    return bench_lora_adapter(cfg, rank, m, s);
}

/* The same network as a user holds a bf16 checkpoint: the weights written
 * as bfloat16 by a child process (so that this process never holds them in
 * fp32 and its peak memory is the run's), then mapped at precision prec
 * (model/checkpoint.h); the files are removed, the mapping stays. */
static inline int bench_lora_model_bf16(const model_config *cfg, int rank, model_precision prec,
                                        model **m, lora_set **s) {
    *m = NULL;
    *s = NULL;
    char dir[] = "/tmp/fedlora-bench-XXXXXX", path[64];
    if (!mkdtemp(dir)) return err_errno("mkdtemp");
    pid_t pid = fork();
    if (pid < 0) return err_errno("fork");
    if (pid == 0) {
        model *w = NULL;
        int ok = model_create(&w, cfg) == 0;
        if (ok) model_init_random(w, 1);
        ok = ok && checkpoint_save(w, dir, "bfloat16") == 0;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    int rc = waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0
                 ? checkpoint_map(m, dir, prec)
                 : err_set("writing the bf16 benchmark model in %s failed", dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
    if (rc != 0) return -1;
    return bench_lora_adapter(cfg, rank, m, s);
}

#endif
