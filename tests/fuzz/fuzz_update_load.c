/* fuzz_update_load — the low-rank update reader (lora/update.h) on arbitrary
 * bytes, checked against init-model's tiny Llama (2 layers, hidden 64): parse
 * and validate, then apply what it accepted to a copy of the model. Any
 * crash, sanitizer report or leak is a finding; refusals are the expected
 * outcome. Seeds: tests/fuzz/corpus/fuzz_update_load/ (valid updates of one
 * and of several weights, and near misses). */
#include "lora/update.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static model *base, *work;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!base) {
        model_config cfg;
        if (model_config_preset(&cfg, "llama", "tiny") != 0 || model_create(&base, &cfg) != 0 ||
            model_create(&work, &cfg) != 0)
            abort();
        model_init_random(base, 1);
    }
    update *u;
    if (update_parse(&u, data, size, "fuzz", base) != 0) return 0;
    if (u->n_modules < 1) abort(); /* an accepted update changes something */
    for (int i = 0; i < base->n_params; i++)
        memcpy(work->params[i].data, base->params[i].data,
               (size_t)base->params[i].numel * sizeof(real));
    if (update_apply(work, u) != 0) abort(); /* the reader checked every shape */
    update_free(u);
    return 0;
}
