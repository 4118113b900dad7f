/* fuzz_peft_weights — a PEFT adapter_model.safetensors from untrusted bytes
 * (lora/peft.h, peft_load_weights): what a node reads as a round's start
 * adapter (docs/protocol.md, "Start adapters") after checking its hash.
 *
 * The bytes are parsed with safetensors_parse and loaded into a rank-1
 * q_proj adapter of init-model's tiny Llama (2 layers, hidden 64); a file
 * that loads must have filled every tensor, and is written back with
 * peft_save_weights and loaded again into the same values (the round trip
 * the aggregator and the nodes rely on: the same adapter, the same bytes).
 * Seeds: tests/fuzz/corpus/fuzz_peft_weights/ (a valid adapter made by
 * `fedlora train`, one of another rank, one with an extra module, a
 * truncated one). */
#include "lora/lora.h"
#include "lora/peft.h"
#include "model/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static model *base;
static char path[64];

static lora_set *fresh(void) {
    lora_config c;
    lora_config_init(&c);
    c.rank = 1;
    c.alpha = 2;
    lora_set *s = NULL;
    if (lora_config_set_targets(&c, "q_proj") != 0 || lora_create(&s, base, &c) != 0) abort();
    lora_config_free(&c);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!base) {
        model_config cfg;
        if (model_config_preset(&cfg, "llama", "tiny") != 0 || model_create(&base, &cfg) != 0)
            abort();
        snprintf(path, sizeof path, "/tmp/fuzz_peft_weights.%d", (int)getpid());
    }
    safetensors_file *f = NULL;
    if (safetensors_parse(&f, data, size, "fuzz") != 0) return 0;
    lora_set *s = fresh();
    if (peft_load_weights(s, f, "fuzz") == 0) {
        safetensors_file *g = NULL;
        lora_set *t = fresh();
        if (peft_save_weights(s, path) != 0 || safetensors_open(&g, path) != 0 ||
            peft_load_weights(t, g, path) != 0)
            abort();
        for (int i = 0; i < s->n_modules; i++)
            if (memcmp(s->modules[i].A.data, t->modules[i].A.data,
                       (size_t)s->modules[i].A.numel * sizeof(real)) != 0 ||
                memcmp(s->modules[i].B.data, t->modules[i].B.data,
                       (size_t)s->modules[i].B.numel * sizeof(real)) != 0)
                abort();
        safetensors_close(g);
        lora_free(t);
        unlink(path);
    }
    lora_free(s);
    safetensors_close(f);
    return 0;
}
