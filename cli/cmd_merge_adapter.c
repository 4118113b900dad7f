/* fedlora merge-adapter — folds a LoRA adapter into its base model and
 * writes the result as a Hugging Face model directory (W' = W + s·B·A per
 * adapted module, lora/delta.h), in the base's dtype, streamed tensor by
 * tensor from the mapped base. */
#include "cli/commands.h"
#include "model/modeldir.h"
#include "cli/opts.h"
#include "lora/delta.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "model/checkpoint.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdio.h>
#include <stdlib.h>

static const char *usage_text =
    "usage: fedlora merge-adapter --model DIR --adapter DIR --out DIR\n"
    "\n"
    "Adds the adapter's update s*B*A to the base weights and writes config.json and\n"
    "model.safetensors to --out in the base model's dtype (config.json's torch_dtype),\n"
    "with the base's tokenizer and generation files copied along: a model that\n"
    "transformers, vLLM and fedlora load without PEFT.\n";

int cmd_merge_adapter(int argc, char **argv) {
    const char *dir = NULL, *adapter = NULL, *out = NULL;
    opts_spec spec[] = {{"model", &dir}, {"adapter", &adapter}, {"out", &out}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!dir || !adapter || !out) return opts_missing(usage_text, "--model, --adapter and --out");
    if (fio_exists(out) && !fio_dir_empty(out)) {
        err_set("%s already exists and is not empty; choose a new --out directory (nothing was "
                "written)",
                out);
        return opts_fail();
    }
    model *m = NULL;
    lora_set *s = NULL;
    rc = 1;
    /* The base as it is stored (mapped), streamed out with the adapter
     * folded in: memory is a tensor, not the model (checkpoint_write). */
    if (checkpoint_map(&m, dir, MODEL_PRECISION_FP32) != 0) goto done;
    if (peft_load(&s, m, adapter) != 0) {
        err_context("loading adapter %s for model %s", adapter, dir);
        goto done;
    }
    checkpoint_edit fold;
    checkpoint_save_options so = {.dtype = m->cfg.torch_dtype, .edit = &fold, .release = 1};
    if (delta_fold_edit(m, s, &fold) != 0 || checkpoint_write(m, out, &so) != 0 ||
        modeldir_copy_companions(dir, out) != 0 ||
        modeldir_ensure_generation_config(&m->cfg, out) != 0)
        goto done;
    printf("wrote %s: %s with %d adapted modules of %s folded in, %s\n", out, dir, s->n_modules,
           adapter, m->cfg.torch_dtype);
    rc = 0;
done:
    if (rc != 0) opts_fail();
    lora_free(s);
    model_free(m);
    return rc;
}
