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
    "usage: fedlora init-model --arch llama|gpt2 --preset tiny|small|100m|124m --out DIR\n"
    "                          [--seed N] [--dtype float32|bfloat16|float16]\n"
    "\n"
    "Writes config.json, model.safetensors and a byte-level tokenizer.json to DIR, a model\n"
    "that Hugging Face transformers loads as is. Weights follow transformers' own\n"
    "initialisation (normal(0, 0.02), norms 1, biases 0), deterministic for a seed.\n";

int cmd_init_model(int argc, char **argv) {
    const char *arch = NULL, *preset = NULL, *out = NULL, *dtype = "float32", *seed_s = "0";
    opts_spec spec[] = {
        {"arch", &arch}, {"preset", &preset}, {"out", &out}, {"seed", &seed_s}, {"dtype", &dtype},
    };
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!arch || !preset || !out) return opts_missing(usage_text, "--arch, --preset and --out");
    long long seed;
    if (opts_int(seed_s, "--seed", 0, (long long)1 << 62, &seed) != 0) return opts_fail();

    model_config cfg;
    model *m = NULL;
    if (model_config_preset(&cfg, arch, preset) != 0) return opts_fail();
    /* The byte-level tokenizer owns ids 0..255; its end-of-text token, the
     * model's bos and eos, comes right after them unless the preset's
     * vocabulary has its own place for it (GPT-2's 50256). */
    if (cfg.eos_token_id < 256) cfg.bos_token_id = cfg.eos_token_id = 256;
    if (model_create(&m, &cfg) != 0) return opts_fail();
    model_init_random(m, (uint64_t)seed);
    if (fio_exists(out) && !fio_dir_empty(out)) {
        model_free(m);
        fprintf(stderr,
                "fedlora init-model: %s already exists and is not empty; choose a new "
                "--out directory (nothing was written)\n",
                out);
        return 1;
    }
    if (checkpoint_save(m, out, dtype) != 0 || cli_write_tokenizer(out, &cfg) != 0) {
        model_free(m);
        return opts_fail();
    }
    printf("wrote %s: %s-%s, %lld parameters, %s, seed %lld\n", out, arch, preset,
           model_config_num_params(&cfg), dtype, seed);
    model_free(m);
    return 0;
}
