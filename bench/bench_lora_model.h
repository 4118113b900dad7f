/* bench_lora_model.h — the network the LoRA benchmarks measure, built in one
 * place so that bench_lora, bench_generate and bench_gpu time the same work
 * as their PyTorch + PEFT references (bench/hf_presets.py, ref_*.py): the
 * config's model with random weights (model_init_random, seed 1) and, for
 * rank > 0, a LoRA adapter of that rank with alpha = 2·rank on every linear
 * layer of the blocks (PEFT's target_modules="all-linear"). */
#ifndef FL_BENCH_BENCH_LORA_MODEL_H
#define FL_BENCH_BENCH_LORA_MODEL_H

#include "lora/lora.h"
#include "model/model.h"

/* *m and (rank > 0) *s, else -1 with err_msg() set and nothing allocated. */
static inline int bench_lora_model(const model_config *cfg, int rank, model **m, lora_set **s) {
    *m = NULL;
    *s = NULL;
    if (model_create(m, cfg) != 0) return -1;
    model_init_random(*m, 1);
    if (rank <= 0) return 0;
    lora_config lc;
    lora_config_init(&lc);
    lc.rank = rank;
    lc.alpha = 2.0 * rank;
    int rc = lora_config_set_targets(&lc, "all-linear") != 0 || lora_create(s, *m, &lc) != 0;
    lora_config_free(&lc);
    if (rc) {
        model_free(*m);
        *m = NULL;
        return -1;
    }
    return 0;
}

#endif
