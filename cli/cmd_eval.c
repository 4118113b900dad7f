/* fedlora eval — mean next-token loss and perplexity of a model, with or
 * without a LoRA adapter, on a file. */
#include "cli/commands.h"
#include "cli/opts.h"
#include "lora/dataset.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "lora/trainer.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "util/err.h"
#include "util/fio.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const char *usage_text =
    "usage: fedlora eval --model DIR --data FILE [--adapter DIR] [--tokenizer FILE] [--seq T]\n"
    "                    [--batch B] [--device cpu|cuda] [--precision fp32|bf16|auto]\n"
    "\n"
    "Prints the mean next-token cross-entropy (nats) and the perplexity of the model on\n"
    "FILE, with the PEFT LoRA adapter in --adapter DIR applied when given. FILE is what\n"
    "fedlora train reads (docs/training.md): text (one document per non-blank line),\n"
    "JSON Lines of {\"text\"}, instruction or chat records (only response tokens count), or\n"
    "a pre-tokenized corpus. Documents are tokenized with DIR/tokenizer.json (or\n"
    "--tokenizer), each followed by the end-of-text token, joined, and cut into rows of T\n"
    "tokens (default 256, at most the model's context); every token after the first is\n"
    "predicted once. --device cuda evaluates on a GPU (docs/gpu.md). --precision: how the\n"
    "frozen weights multiply (fp32; bf16 with fp32 sums; auto, the default: bf16 on cuda\n"
    "and on CPUs with bf16 instructions, else fp32; docs/cpu-backend.md).\n";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cmd_eval(int argc, char **argv) {
    const char *dir = NULL, *data = NULL, *tok_path = NULL, *adapter = NULL, *seq_s = NULL,
               *batch_s = "4", *device = "cpu", *precision = NULL;
    opts_spec spec[] = {{"model", &dir},     {"data", &data},          {"tokenizer", &tok_path},
                        {"seq", &seq_s},     {"batch", &batch_s},      {"adapter", &adapter},
                        {"device", &device}, {"precision", &precision}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!dir || !data) return opts_missing(usage_text, "--model and --data");
    long long T = 256, B;
    if ((seq_s && opts_int(seq_s, "--seq", 1, 1 << 20, &T) != 0) ||
        opts_int(batch_s, "--batch", 1, 4096, &B) || trainer_device_check(device, precision) != 0)
        return opts_fail();

    model *m = NULL;
    lora_set *s = NULL;
    dataset *d = NULL;
    rc = 1;
    if (trainer_load_base(&m, dir, device, precision) != 0) goto done;
    model_precision prec;
    char how[96];
    if (trainer_precision_of(device, precision, &prec) != 0) goto done;
    trainer_precision_describe(device, prec, how, sizeof how);
    fprintf(stderr, "evaluating on %s in %s\n", device, how);
    if (adapter && peft_load(&s, m, adapter) != 0) {
        err_context("loading adapter %s for model %s", adapter, dir);
        goto done;
    }
    if (!seq_s && T > m->cfg.max_position) T = m->cfg.max_position;
    if (model_config_seq_check(&m->cfg, T, "--seq") != 0) goto done;
    char tok_default[4096];
    if (!tok_path && fio_join(tok_default, sizeof tok_default, dir, "tokenizer.json") == 0 &&
        fio_exists(tok_default))
        tok_path = tok_default;
    dataset_options dopt = {.path = data,
                            .tokenizer = tok_path,
                            .seq = (int)T,
                            .eos_id = m->cfg.eos_token_id,
                            .vocab_size = m->cfg.vocab_size};
    if (dataset_open(&d, &dopt) != 0) goto done;
    size_t rows = dataset_num_rows(d, DATASET_TRAIN);
    if ((size_t)B > rows) B = (long long)rows;
    double t0 = now(), loss;
    int64_t count;
    int erc =
        trainer_eval_on(m, s, (int)B, d, DATASET_TRAIN, device, precision, stderr, &loss, &count);
    if (erc != 0) goto done;
    printf("loss %.6f  perplexity %.4f  (%lld tokens predicted, %zu rows of %lld, %.1f s)\n", loss,
           exp(loss), (long long)count, rows, T, now() - t0);
    rc = 0;
done:
    if (rc != 0) opts_fail();
    dataset_free(d);
    lora_free(s);
    model_free(m);
    return rc;
}
