/* fuzz_peft_config — adapter_config.json from an untrusted adapter directory.
 *
 * The bytes are parsed with peft_parse_config; a config that parses is
 * resolved on tiny Llama and GPT-2 models (lora_create: regular expressions
 * from the file are compiled and run here), and whatever resolves is written
 * back with peft_config_json, read again, resolved again and written again:
 * the two writes must be byte for byte equal (the round trip the product
 * relies on), else the target aborts. */
#include "lora/lora.h"
#include "lora/peft.h"

#include <stdlib.h>
#include <string.h>

#define N_MODELS 3
static model *models[N_MODELS];

/* Two layers of each tensor layout, and Apertus (no gate_proj), small sizes
 * (weights stay zero). */
static void init_models(void) {
    if (models[0]) return;
    model_config c;
    memset(&c, 0, sizeof c);
    model_config_family(&c, MODEL_FAMILY_LLAMA);
    c.vocab_size = 50;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.max_position = 64;
    c.norm_eps = 1e-5;
    c.rope_theta = 10000;
    c.bos_token_id = c.eos_token_id = -1;
    strcpy(c.torch_dtype, "float32");
    if (model_create(&models[0], &c) != 0) abort();
    model_config_family(&c, MODEL_FAMILY_GPT2);
    c.intermediate_size = 64;
    c.num_heads = c.num_kv_heads = 2;
    c.head_dim = 8;
    c.tie_embeddings = 1;
    if (model_create(&models[1], &c) != 0) abort();
    model_config_family(&c, MODEL_FAMILY_APERTUS);
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.tie_embeddings = 0;
    c.qkv_bias = c.o_bias = c.mlp_bias = 0;
    if (model_create(&models[2], &c) != 0) abort();
}

/* Resolves cfg on m and returns its adapter_config.json, or NULL. */
static char *resolve_and_write(const model *m, const lora_config *cfg, size_t *len) {
    lora_set *s;
    if (lora_create(&s, m, cfg) != 0) return NULL;
    char *json = NULL;
    if (peft_config_json(s, &json, len) != 0) json = NULL;
    lora_free(s);
    return json;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    init_models();
    lora_config cfg;
    if (peft_parse_config(&cfg, (const char *)data, size, "fuzz") != 0) return 0;
    for (int i = 0; i < N_MODELS; i++) {
        size_t n1, n2;
        char *j1 = resolve_and_write(models[i], &cfg, &n1);
        if (!j1) continue;
        lora_config back;
        if (peft_parse_config(&back, j1, n1, "fuzz-rewrite") != 0) abort();
        char *j2 = resolve_and_write(models[i], &back, &n2);
        if (!j2 || n1 != n2 || memcmp(j1, j2, n1) != 0) abort();
        free(j1);
        free(j2);
        lora_config_free(&back);
    }
    lora_config_free(&cfg);
    return 0;
}
