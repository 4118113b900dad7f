/* fedlora merge — merges finished PEFT adapters into their base model with
 * mergekit's methods (policies/mergekit.h) and writes a Hugging Face model
 * directory, in the base's dtype, with the base's tokenizer files. */
#include "cli/commands.h"
#include "model/modeldir.h"
#include "cli/opts.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "model/checkpoint.h"
#include "policies/mergekit.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MERGE_MAX_ADAPTERS 64
static const char *usage_text =
    "usage: fedlora merge --method linear|task_arithmetic|ties|dare_linear|dare_ties\n"
    "                     [--weights W1,W2,...] [--density D | D1,D2,...] [--lambda L]\n"
    "                     [--seed N] --model DIR --out DIR ADAPTER_DIR...\n"
    "\n"
    "Merges LoRA adapters made for the base model DIR as mergekit does, on their task\n"
    "vectors tau_i = s*B_i*A_i (docs/policies.md, \"Offline merges\"):\n"
    "  linear           W + sum w_i tau_i / sum w_i\n"
    "  task_arithmetic  W + lambda * sum w_i tau_i\n"
    "  ties             top-k by magnitude (k = density * size), sign elected by the\n"
    "                   weighted sum, mean of the agreeing values, times lambda\n"
    "  dare_linear      random keep with p = density, rescaled by 1/density, weighted sum\n"
    "  dare_ties        DARE's drop, then TIES's sign election (sum, not mean)\n"
    "Defaults: weights 1 each, density 1 (ties, dare_*), lambda 1, seed 0. Writes\n"
    "config.json and model.safetensors (the base's dtype) and the base's tokenizer files.\n";

/* "a,b,c" → K numbers in [lo, hi]; one number fills all K when broadcast is set. */
static int parse_list(const char *s, const char *opt, int K, int broadcast, double lo, double hi,
                      double *out) {
    int n = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[64];
        if (len == 0 || len >= sizeof item)
            return err_set("%s: '%s' is not a comma-separated list of numbers", opt, s);
        memcpy(item, p, len);
        item[len] = '\0';
        if (n >= K) return err_set("%s gives more than the %d values (one per adapter)", opt, K);
        if (opts_double(item, opt, lo, hi, &out[n]) != 0) return -1;
        n++;
        if (!comma) break;
        p = comma + 1;
    }
    if (n == 1 && broadcast)
        for (int k = 1; k < K; k++) out[k] = out[0];
    else if (n != K)
        return err_set("%s gives %d values for %d adapters", opt, n, K);
    return 0;
}

int cmd_merge(int argc, char **argv) {
    const char *method_s = NULL, *weights_s = NULL, *density_s = NULL, *lambda_s = NULL,
               *seed_s = NULL, *dir = NULL, *out = NULL;
    const char *adapters[MERGE_MAX_ADAPTERS];
    int K = 0;
    opts_spec spec[] = {{"method", &method_s}, {"weights", &weights_s}, {"density", &density_s},
                        {"lambda", &lambda_s}, {"seed", &seed_s},       {"model", &dir},
                        {"out", &out}};
    int rc = opts_parse_all(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text, adapters,
                            MERGE_MAX_ADAPTERS, &K);
    if (rc >= 0) return rc;
    if (!method_s || !dir || !out || K < 1)
        return opts_missing(usage_text, "--method, --model, --out and at least one adapter");
    mergekit_options o = {.lambda = 1.0};
    if (mergekit_parse_method(method_s, &o.method) != 0) {
        err_set("unknown --method '%s' (linear, task_arithmetic, ties, dare_linear, dare_ties)",
                method_s);
        return opts_fail();
    }
    int sparse = o.method == MERGEKIT_TIES || o.method == MERGEKIT_DARE_LINEAR ||
                 o.method == MERGEKIT_DARE_TIES;
    if (density_s && !sparse) {
        err_set("--density applies to ties, dare_linear and dare_ties, not %s", method_s);
        return opts_fail();
    }
    if ((lambda_s || seed_s) && o.method == MERGEKIT_LINEAR) {
        err_set("--lambda and --seed do not apply to linear (a normalised weighted average)");
        return opts_fail();
    }
    double weights[MERGE_MAX_ADAPTERS], density[MERGE_MAX_ADAPTERS];
    for (int k = 0; k < K; k++) weights[k] = density[k] = 1.0;
    long long seed = 0;
    if ((weights_s && parse_list(weights_s, "--weights", K, 0, -1e6, 1e6, weights) != 0) ||
        (density_s && parse_list(density_s, "--density", K, 1, 1e-9, 1, density) != 0) ||
        (lambda_s && opts_double(lambda_s, "--lambda", -1e6, 1e6, &o.lambda) != 0) ||
        (seed_s && opts_int(seed_s, "--seed", 0, (long long)(~0ull >> 1), &seed) != 0))
        return opts_fail();
    o.weights = weights;
    o.density = density;
    o.seed = (uint64_t)seed;
    if (fio_exists(out) && !fio_dir_empty(out)) {
        err_set("%s already exists and is not empty; choose a new --out directory (nothing was "
                "written)",
                out);
        return opts_fail();
    }
    model *m = NULL;
    lora_set *sets[MERGE_MAX_ADAPTERS] = {0};
    rc = 1;
    /* The base as stored (mapped), streamed out with the merge applied. */
    if (checkpoint_map(&m, dir, MODEL_PRECISION_FP32) != 0) goto done;
    for (int k = 0; k < K; k++)
        if (peft_load(&sets[k], m, adapters[k]) != 0) {
            err_context("loading adapter %s for model %s", adapters[k], dir);
            goto done;
        }
    mergekit_fold fold;
    checkpoint_edit edit;
    checkpoint_save_options so = {.dtype = m->cfg.torch_dtype, .edit = &edit, .release = 1};
    if (mergekit_edit(m, sets, K, &o, &fold, &edit) != 0 || checkpoint_write(m, out, &so) != 0 ||
        modeldir_copy_companions(dir, out) != 0 ||
        modeldir_ensure_generation_config(&m->cfg, out) != 0)
        goto done;
    printf("wrote %s: %s merged with %d adapters by %s, %s\n", out, dir, K, method_s,
           m->cfg.torch_dtype);
    rc = 0;
done:
    if (rc != 0) opts_fail();
    for (int k = 0; k < K; k++) lora_free(sets[k]);
    model_free(m);
    return rc;
}
