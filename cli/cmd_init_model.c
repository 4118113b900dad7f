/* fedlora init-model — a randomly initialised Hugging Face model directory. */
#include "cli/commands.h"
#include "cli/opts.h"
#include "cli/tokens.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdio.h>
#include <stdlib.h>

static const char *usage_text =
    "usage: fedlora init-model --arch ARCH --preset PRESET --out DIR\n"
    "       fedlora init-model --config config.json --out DIR\n"
    "                          [--seed N] [--dtype float32|bfloat16|float16]\n"
    "                          [--initializer-range STD]\n"
    "\n"
    "Writes config.json, the weights and a byte-level tokenizer.json to DIR, a model that\n"
    "Hugging Face transformers loads as is. --config takes any supported Hugging Face\n"
    "config.json (a real model's shape, e.g. an 8B Llama) instead of a preset. Weights\n"
    "follow transformers' own initialisation (normal(0, initializer_range), norms 1 or,\n"
    "for Gemma's x * (1 + w), 0, biases 0), deterministic for a seed; they are written\n"
    "tensor by tensor (memory: the largest tensor), in shards with an index past 5 GB as\n"
    "transformers writes them.\n"
    "--dtype defaults to the config's torch_dtype (float32 for a preset).\n"
    "\n"
    "Presets: llama tiny|small|100m, gpt2 tiny|small|124m, and tiny for mistral, qwen2,\n"
    "qwen3, olmo2, apertus, gemma2, gemma3_text, phi3, bloom and mixtral (2 layers, hidden\n"
    "64, byte-level vocabulary; Gemma's: a sliding layer then a global one; mixtral: 4\n"
    "experts, top-2); mixtral 400m is the MoE benchmark's shape (8 experts, top-2).\n";

typedef struct {
    const model_config *cfg;
    uint64_t state;
} init_ctx;

static int init_touches(void *ctx, const model_param *p) {
    return 1;
}

/* Called for the params in table order, so the draws are model_init_random's. */
static int init_apply(void *ctx, const model_param *p, real *v) {
    init_ctx *c = ctx;
    model_init_param(c->cfg, p, &c->state, v);
    return 0;
}

int cmd_init_model(int argc, char **argv) {
    const char *arch = NULL, *preset = NULL, *config = NULL, *out = NULL, *dtype = NULL,
               *seed_s = "0", *range_s = NULL;
    opts_spec spec[] = {
        {"arch", &arch},
        {"preset", &preset},
        {"config", &config},
        {"out", &out},
        {"seed", &seed_s},
        {"dtype", &dtype},
        {"initializer-range", &range_s},
    };
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!out || (config ? arch || preset : !arch || !preset))
        return opts_missing(usage_text, "--out and either --arch and --preset, or --config");
    long long seed;
    double range = 0;
    if (opts_int(seed_s, "--seed", 0, (long long)1 << 62, &seed) != 0 ||
        (range_s && opts_double(range_s, "--initializer-range", 0, 10, &range) != 0))
        return opts_fail();

    model_config cfg;
    model *m = NULL;
    if (config ? model_config_load(&cfg, config) != 0
               : model_config_preset(&cfg, arch, preset) != 0)
        return opts_fail();
    if (range_s) cfg.initializer_range = range;
    if (!dtype) dtype = config ? cfg.torch_dtype : "float32";
    /* The byte-level tokenizer owns ids 0..255; its end-of-text token, the
     * model's bos and eos, comes right after them unless the vocabulary has
     * its own place for it (GPT-2's 50256, Llama 3's 128001). */
    if (cfg.eos_token_id < 256) cfg.bos_token_id = cfg.eos_token_id = 256;
    if (fio_exists(out) && !fio_dir_empty(out)) {
        fprintf(stderr,
                "fedlora init-model: %s already exists and is not empty; choose a new "
                "--out directory (nothing was written)\n",
                out);
        return 1;
    }
    /* The table only: values are drawn as each tensor is written. */
    if (model_create_unfilled(&m, &cfg) != 0) return opts_fail();
    init_ctx ic = {&cfg, model_init_state((uint64_t)seed)};
    checkpoint_edit init = {.touches = init_touches, .apply = init_apply, .ctx = &ic};
    checkpoint_save_options so = {.dtype = dtype, .edit = &init};
    if (checkpoint_write(m, out, &so) != 0 || cli_write_tokenizer(out, &cfg) != 0) {
        model_free(m);
        return opts_fail();
    }
    printf("wrote %s: %s%s%s, %lld parameters, %s, seed %lld\n", out, config ? config : arch,
           config ? "" : "-", config ? "" : preset, model_config_num_params(&cfg), dtype, seed);
    model_free(m);
    return 0;
}
