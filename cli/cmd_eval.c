/* fedlora eval — a model, with or without a LoRA adapter, on evaluation
 * sets: the mean next-token loss and perplexity on text files, acc and
 * acc_norm on multiple-choice tasks (data/mctask.h); with --json, the scores
 * as one JSON object (what the aggregator's evaluation of each version
 * reads, docs/federation.md). */
#include "cli/chatdata.h"
#include "cli/commands.h"
#include "cli/opts.h"
#include "data/dataset.h"
#include "data/mctask.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "train/trainer.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EVAL_SETS_MAX 64

static const char *usage_text =
    "usage: fedlora eval --model DIR (--data FILE | --task FILE)... [--adapter DIR]\n"
    "                    [--tokenizer FILE] [--seq T] [--batch B] [--json OUT]\n"
    "                    [--device cpu|cuda] [--precision fp32|bf16|auto]\n"
    "                    [--chat-format template|fedlora] [--chat-template FILE]\n"
    "                    [--loss-on assistant|all]\n"
    "\n"
    "Evaluates the model, with the PEFT LoRA adapter in --adapter DIR applied when given,\n"
    "on each --data and --task file (each option may be given several times).\n"
    "\n"
    "--data FILE: the mean next-token cross-entropy (nats) and the perplexity. FILE is\n"
    "what fedlora train reads (docs/training.md): text (one document per non-blank line),\n"
    "JSON Lines of {\"text\"}, instruction or chat records (only response tokens count;\n"
    "chat records in the model's chat template unless --chat-format fedlora, and every\n"
    "token with --loss-on all: docs/chat.md), or a pre-tokenized corpus. Documents are\n"
    "tokenized with DIR/tokenizer.json (or --tokenizer), each followed by the end-of-text\n"
    "token (a chat template ends its turns itself), joined, and cut into rows of T\n"
    "tokens (default 256, at most the model's context); every token after the first is\n"
    "predicted once.\n"
    "\n"
    "--task FILE: a multiple-choice task, one question per line:\n"
    "  {\"context\": \"...\", \"choices\": [\"...\", \"...\"], \"gold\": 0}\n"
    "scored as lm-evaluation-harness scores multiple-choice tasks: the log-likelihood of\n"
    "each choice after the context (and the \" \" delimiter, or the record's \"delimiter\");\n"
    "acc counts the questions whose most likely choice is the gold one, acc_norm the same\n"
    "with each log-likelihood divided by its choice's length in characters. --seq caps\n"
    "the tokens the model reads (default: its context); contexts are cut from the left.\n"
    "Tasks are scored on the CPU.\n"
    "\n"
    "--json OUT writes the scores as JSON ({\"sets\": [...]}, docs/formats.md).\n"
    "--device cuda evaluates --data on a GPU (docs/gpu.md). --precision: how the frozen\n"
    "weights multiply (fp32; bf16 with fp32 sums; auto, the default: bf16 on cuda and on\n"
    "CPUs with bf16 instructions, else fp32; docs/cpu-backend.md).\n";

/* The name a set goes by: its file's name. */
static const char *set_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s && s[1] ? s + 1 : path;
}

static int eval_text(model *m, lora_set *s, const char *path, const char *tok_path, long long T,
                     long long B, const char *device, const char *precision, const char *prefix,
                     const chatdata_opts *chat, const char *dir, json_t *sets) {
    dataset *d = NULL;
    chat_template *ct = NULL;
    dataset_options dopt = {.path = path,
                            .tokenizer = tok_path,
                            .seq = (int)T,
                            .eos_id = m->cfg.eos_token_id,
                            .vocab_size = m->cfg.vocab_size};
    if (chatdata_setup(chat, dir, &dopt, &ct) != 0 || dataset_open(&d, &dopt) != 0) {
        chat_template_free(ct);
        return -1;
    }
    chatdata_report(chat, d);
    size_t rows = dataset_num_rows(d, DATASET_TRAIN);
    if ((size_t)B > rows) B = (long long)rows;
    double t0 = clock_now_s(), loss;
    int64_t count;
    int rc =
        trainer_eval_on(m, s, (int)B, d, DATASET_TRAIN, device, precision, stderr, &loss, &count);
    dataset_free(d);
    chat_template_free(ct);
    if (rc != 0) return err_context("evaluating on %s", path);
    double secs = clock_now_s() - t0;
    printf("%sloss %.6f  perplexity %.4f  (%lld tokens predicted, %zu rows of %lld, %.1f s)\n",
           prefix, loss, exp(loss), (long long)count, rows, T, secs);
    json_t *j = json_object();
    json_object_set_new(j, "name", json_string(set_name(path)));
    json_object_set_new(j, "kind", json_string("text"));
    json_object_set_new(j, "loss", json_real(loss));
    json_object_set_new(j, "perplexity", json_real(exp(loss)));
    json_object_set_new(j, "tokens", json_integer(count));
    json_object_set_new(j, "seconds", json_real(secs));
    return json_array_append_new(sets, j) == 0 ? 0 : err_set("out of memory");
}

static int eval_task(model *m, lora_set *s, const char *path, const char *tok_path, long long T,
                     long long B, const char *prefix, json_t *sets) {
    if (!tok_path)
        return err_set("task %s is text, so it needs a tokenizer: pass --tokenizer FILE (the base "
                       "model's tokenizer.json)",
                       path);
    mctask *t = NULL;
    tokenizer *tok = NULL;
    mctask_result r = {0};
    if (mctask_load(&t, path) != 0 || tokenizer_load(tok_path, &tok) != 0) {
        mctask_free(t);
        return -1;
    }
    /* lm-evaluation-harness's prefix token: the tokenizer's BOS, else EOS;
     * here the model's (config.json carries both). */
    mctask_options o = {.batch = (int)B,
                        .max_length = (int)T,
                        .prefix_token =
                            m->cfg.bos_token_id >= 0 ? m->cfg.bos_token_id : m->cfg.eos_token_id,
                        .progress = stderr};
    double t0 = clock_now_s();
    int rc = s ? lora_attach(s, m) : 0;
    if (rc == 0) {
        rc = mctask_score(t, m, tok, &o, &r);
        if (s) lora_detach(s);
    }
    if (rc == 0) {
        double secs = clock_now_s() - t0;
        printf("%sacc %.4f  acc_norm %.4f  (%zu questions, %zu choices, %.1f s)\n", prefix, r.acc,
               r.acc_norm, r.docs, r.choices, secs);
        json_t *j = json_object();
        json_object_set_new(j, "name", json_string(set_name(path)));
        json_object_set_new(j, "kind", json_string("choice"));
        json_object_set_new(j, "acc", json_real(r.acc));
        json_object_set_new(j, "acc_norm", json_real(r.acc_norm));
        json_object_set_new(j, "questions", json_integer((json_int_t)r.docs));
        json_object_set_new(j, "choices", json_integer((json_int_t)r.choices));
        json_object_set_new(j, "seconds", json_real(secs));
        if (json_array_append_new(sets, j) != 0) rc = err_set("out of memory");
    } else {
        err_context("scoring task %s", path);
    }
    mctask_result_free(&r);
    tokenizer_free(tok);
    mctask_free(t);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *dir = NULL, *tok_path = NULL, *adapter = NULL, *seq_s = NULL, *batch_s = "4",
               *device = "cpu", *precision = NULL, *json_out = NULL;
    const char *data[EVAL_SETS_MAX], *task[EVAL_SETS_MAX];
    int ndata = 0, ntask = 0;
    chatdata_opts chat = {0};
    opts_spec spec[] = {{"model", &dir},
                        {"data", NULL, NULL, data, &ndata, EVAL_SETS_MAX},
                        {"task", NULL, NULL, task, &ntask, EVAL_SETS_MAX},
                        {"tokenizer", &tok_path},
                        {"seq", &seq_s},
                        {"batch", &batch_s},
                        {"adapter", &adapter},
                        {"device", &device},
                        {"precision", &precision},
                        {"json", &json_out},
                        {"chat-format", &chat.format},
                        {"chat-template", &chat.tpl_path},
                        {"loss-on", &chat.loss_on}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!dir || ndata + ntask == 0) return opts_missing(usage_text, "--model and --data or --task");
    long long T = 256, B;
    if ((seq_s && opts_int(seq_s, "--seq", 1, 1 << 20, &T) != 0) ||
        opts_int(batch_s, "--batch", 1, 4096, &B) || trainer_device_check(device, precision) != 0)
        return opts_fail();
    if (ntask && strcmp(device, "cpu") != 0) {
        err_set("multiple-choice tasks are scored on the CPU; leave out --device %s or evaluate "
                "the tasks in a run of their own",
                device);
        return opts_fail();
    }

    model *m = NULL;
    lora_set *s = NULL;
    json_t *sets = json_array();
    rc = 1;
    if (!sets) {
        err_set("out of memory");
        goto done;
    }
    char how[96];
    if (trainer_load_base(&m, dir, device, precision, how, sizeof how) != 0) goto done;
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
    double t0 = clock_now_s();
    int several = ndata + ntask > 1;
    for (int i = 0; i < ndata; i++) {
        char prefix[512] = "";
        if (several) snprintf(prefix, sizeof prefix, "%s: ", set_name(data[i]));
        long long seq = !seq_s && T > m->cfg.max_position ? m->cfg.max_position : T;
        if (eval_text(m, s, data[i], tok_path, seq, B, device, precision, prefix, &chat, dir,
                      sets) != 0)
            goto done;
    }
    for (int i = 0; i < ntask; i++) {
        char prefix[512] = "";
        if (several) snprintf(prefix, sizeof prefix, "%s: ", set_name(task[i]));
        /* A task reads up to the model's context unless --seq says less. */
        long long seq = !seq_s || T > m->cfg.max_position ? m->cfg.max_position : T;
        if (eval_task(m, s, task[i], tok_path, seq, B, prefix, sets) != 0) goto done;
    }
    if (json_out) {
        json_t *j = json_object();
        json_object_set_new(j, "model", json_string(dir));
        json_object_set_new(j, "adapter", adapter ? json_string(adapter) : json_null());
        json_object_set_new(j, "sets", json_incref(sets));
        json_object_set_new(j, "seconds", json_real(clock_now_s() - t0));
        char *text = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        json_decref(j);
        if (!text) {
            err_set("out of memory");
            goto done;
        }
        int w = fio_write_atomic(json_out, text, strlen(text), 0644);
        free(text);
        if (w != 0) goto done;
    }
    rc = 0;
done:
    if (rc != 0) opts_fail();
    json_decref(sets);
    lora_free(s);
    model_free(m);
    return rc;
}
