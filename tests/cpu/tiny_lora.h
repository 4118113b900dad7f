/* tiny_lora.h — a LoRA adapter on tiny.h's models, for the tests that need
 * one whose effect shows (decoding, GPU parity). Link fl_lora_core (or
 * fl_lora_f64 for the fp64 build). */
#ifndef FL_TESTS_CPU_TINY_LORA_H
#define FL_TESTS_CPU_TINY_LORA_H

#include "lora/lora.h"
#include "tests/cpu/tiny.h"

/* A set on every linear, rank r, the given alpha, dropout and seed, not
 * attached. Its B (and A too when all is set) are uniform in ±scale from
 * the seed: lora_create's B is 0, which would hide the adapter. NULL on
 * failure (err_msg() says why). */
static inline lora_set *tiny_adapter(model *m, int rank, double alpha, double dropout,
                                     uint64_t seed, double scale, int all) {
    lora_config lc;
    lora_config_init(&lc);
    lc.rank = rank;
    lc.alpha = alpha;
    lc.dropout = dropout;
    lc.seed = seed;
    lora_set *s = NULL;
    int rc = lora_config_set_targets(&lc, "all-linear");
    if (rc == 0) rc = lora_create(&s, m, &lc);
    lora_config_free(&lc);
    if (rc != 0) return NULL;
    uint64_t r = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < s->n_modules; i++) {
        model_param *t[2] = {&s->modules[i].B, &s->modules[i].A};
        for (int k = 0; k < (all ? 2 : 1); k++)
            for (int64_t j = 0; j < t[k]->numel; j++)
                t[k]->data[j] = (real)(scale * tiny_uniform(&r));
    }
    return s;
}

#endif
