/* fedlora train — LoRA fine-tuning of a Hugging Face model on a data file
 * (train/trainer.h does the work; docs/training.md describes it all). */
#include "cli/chatdata.h"
#include "cli/commands.h"
#include "cli/opts.h"
#include "data/dataset.h"
#include "lora/lora.h"
#include "model/checkpoint.h"
#include "train/trainer.h"
#include "util/err.h"
#include "util/fio.h"

#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *usage_text =
    "usage: fedlora train --model DIR --data FILE --out ADAPTER_DIR [options]\n"
    "\n"
    "Trains a LoRA adapter on FILE and writes it to ADAPTER_DIR as a PEFT adapter\n"
    "(adapter_config.json + adapter_model.safetensors), with metrics.jsonl and\n"
    "checkpoint/ beside it. FILE is text (one document per non-blank line), JSON Lines\n"
    "({\"text\"}, {\"instruction\", \"input\", \"output\"} or {\"messages\"} records) or a\n"
    "corpus from `fedlora tokenize` (docs/training.md). Chat records are rendered with the\n"
    "model's chat template, as transformers' apply_chat_template does (docs/chat.md).\n"
    "\n"
    "  --tokenizer FILE     tokenizer.json (default: DIR/tokenizer.json)\n"
    "  --chat-format F      template (the model's chat template; the default when it has one)\n"
    "                       or fedlora (fedlora's own <|role|> format; the default otherwise)\n"
    "  --chat-template FILE a .jinja chat template to use instead of the model's\n"
    "  --loss-on L          assistant (only the assistant's turns of chat records and the\n"
    "                       output of instruction records carry loss; default) or all\n"
    "  --rank R             LoRA rank (8)\n"
    "  --alpha A            LoRA alpha, above 0 (twice the rank); scale alpha/R\n"
    "  --rslora             scale alpha/sqrt(R) (rank-stabilized LoRA)\n"
    "  --targets LIST       modules to adapt, comma-separated, or all-linear (every linear\n"
    "                       but Mixtral's router, adapted only when named: gate)\n"
    "                       (PEFT's defaults: q_proj,v_proj for Llama and Mixtral,\n"
    "                       c_attn for GPT-2, query_key_value for BLOOM)\n"
    "  --dropout P          LoRA dropout (0)\n"
    "  --steps N            optimizer steps, at least 1 (100)\n"
    "  --lr X               peak learning rate, above 0 (2e-4)\n"
    "  --warmup W           linear warmup steps before the cosine decay, at most --steps (0)\n"
    "  --weight-decay WD    AdamW's decoupled weight decay (0)\n"
    "  --clip C             global gradient-norm clipping, 0 for none (1.0)\n"
    "  --batch B            rows per micro-batch (4)\n"
    "  --seq T              tokens per row (256, at most the model's context)\n"
    "  --grad-accum K       micro-batches per step (1)\n"
    "  --seed S             adapter initialisation, dropout, data order, held-out split (0)\n"
    "  --eval-fraction F    share of documents held out for the final eval loss (0.05)\n"
    "  --eval-every N       held-out loss also before step 1 and every N steps (0: end only)\n"
    "  --save-every N       checkpoint every N steps and at the end, 0 for none (100)\n"
    "  --log-every N        progress line every N steps when not on a terminal (10)\n"
    "  --resume CKPT        go on from OUT/checkpoint (its latest) or a step-N directory\n"
    "  --device cpu|cuda    where to train (cpu); cuda needs the CUDA backend module\n"
    "                       (libfedlora_cuda.so, next to fedlora) and a GPU (docs/gpu.md)\n"
    "  --precision P        fp32, bf16 or auto: how the frozen weights multiply. bf16: bf16\n"
    "                       products with fp32 sums (oneDNN on the CPU); fp32: exact fp32\n"
    "                       whatever the checkpoint's dtype. auto (default): bf16 on cuda and\n"
    "                       on CPUs with bf16 instructions (AVX512-BF16, AMX), else fp32\n"
    "  --threads N          OpenMP threads (default: OMP_NUM_THREADS or all cores)\n";

typedef struct {
    const char *model, *data, *tokenizer, *out, *rank, *alpha, *targets, *dropout, *steps, *lr,
        *warmup, *wd, *clip, *batch, *seq, *accum, *seed, *eval_fraction, *eval_every, *save_every,
        *log_every, *resume, *device, *precision, *threads;
    int rslora;
    chatdata_opts chat;
} train_args;

/* SIGINT / SIGTERM: the trainer finishes its step and saves a checkpoint
 * (trainer_request_stop); a second signal stops at once. Only
 * async-signal-safe calls here. */
static void on_stop(int sig) {
    if (trainer_stop_requested()) _exit(128 + sig);
    trainer_request_stop(sig);
    static const char msg[] = "\nfedlora train: stopping after this step and saving a checkpoint "
                              "(signal again to stop at once)\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
}

/* Numbers from the options into the trainer's and the adapter's settings. */
static int parse_numbers(const train_args *a, trainer_options *t, lora_config *lc, long long *T,
                         double *eval_fraction) {
    long long rank, steps, warmup, batch, accum, seed, ev, save, logn;
    double alpha = 0, dropout, lr, wd, clip;
    if (opts_int(a->rank, "--rank", 0, 1 << 20, &rank) != 0 ||
        (a->alpha && opts_double(a->alpha, "--alpha", -1e9, 1e9, &alpha) != 0) ||
        opts_double(a->dropout, "--dropout", 0, 1, &dropout) != 0 ||
        opts_int(a->steps, "--steps", 1, 1LL << 40, &steps) != 0 ||
        opts_double(a->lr, "--lr", 0, 1e3, &lr) != 0 ||
        opts_int(a->warmup, "--warmup", 0, 1LL << 40, &warmup) != 0 ||
        opts_double(a->wd, "--weight-decay", 0, 1e3, &wd) != 0 ||
        opts_double(a->clip, "--clip", 0, 1e30, &clip) != 0 ||
        opts_int(a->batch, "--batch", 1, 1 << 16, &batch) != 0 ||
        opts_int(a->seq, "--seq", 1, 1 << 20, T) != 0 ||
        opts_int(a->accum, "--grad-accum", 1, 1 << 16, &accum) != 0 ||
        opts_int(a->seed, "--seed", 0, (long long)1 << 62, &seed) != 0 ||
        opts_double(a->eval_fraction, "--eval-fraction", 0, 0.99, eval_fraction) != 0 ||
        opts_int(a->eval_every, "--eval-every", 0, 1LL << 40, &ev) != 0 ||
        opts_int(a->save_every, "--save-every", 0, 1LL << 40, &save) != 0 ||
        opts_int(a->log_every, "--log-every", 1, 1LL << 40, &logn) != 0)
        return -1;
    /* Values the ranges above let through but that train nothing, or train
     * something else than asked, without a word: refused instead. */
    if (a->alpha && !(alpha > 0))
        return err_set("--alpha must be above 0, got %g: the adapter's update is scaled by "
                       "alpha/rank, so %s",
                       alpha, alpha == 0 ? "0 makes it nothing" : "a negative one reverses it");
    if (!(lr > 0)) return err_set("--lr must be above 0: with 0 no step changes the adapter");
    if (warmup > steps)
        return err_set("--warmup %lld is longer than --steps %lld: the learning rate would never "
                       "reach --lr; use a warmup of at most the number of steps",
                       warmup, steps);
    lc->rank = (int)rank;
    lc->alpha = a->alpha ? alpha : 2.0 * (double)rank;
    lc->use_rslora = a->rslora;
    lc->dropout = dropout;
    lc->seed = (uint64_t)seed;
    t->steps = steps;
    t->opt.lr = lr;
    t->opt.warmup_steps = warmup;
    t->opt.weight_decay = wd;
    t->opt.max_grad_norm = clip;
    t->batch = (int)batch;
    t->grad_accum = (int)accum;
    t->seed = (uint64_t)seed;
    t->eval_every = ev;
    t->save_every = save;
    t->log_every = logn;
    return 0;
}

int cmd_train(int argc, char **argv) {
    train_args a = {.rank = "8",
                    .dropout = "0",
                    .steps = "100",
                    .lr = "2e-4",
                    .warmup = "0",
                    .wd = "0",
                    .clip = "1.0",
                    .batch = "4",
                    .seq = NULL,
                    .accum = "1",
                    .seed = "0",
                    .eval_fraction = "0.05",
                    .eval_every = "0",
                    .save_every = "100",
                    .log_every = "10",
                    .device = "cpu"};
    opts_spec spec[] = {
        {"model", &a.model},
        {"data", &a.data},
        {"tokenizer", &a.tokenizer},
        {"chat-format", &a.chat.format},
        {"chat-template", &a.chat.tpl_path},
        {"loss-on", &a.chat.loss_on},
        {"out", &a.out},
        {"rank", &a.rank},
        {"alpha", &a.alpha},
        {"rslora", NULL, &a.rslora},
        {"targets", &a.targets},
        {"dropout", &a.dropout},
        {"steps", &a.steps},
        {"lr", &a.lr},
        {"warmup", &a.warmup},
        {"weight-decay", &a.wd},
        {"clip", &a.clip},
        {"batch", &a.batch},
        {"seq", &a.seq},
        {"grad-accum", &a.accum},
        {"seed", &a.seed},
        {"eval-fraction", &a.eval_fraction},
        {"eval-every", &a.eval_every},
        {"save-every", &a.save_every},
        {"log-every", &a.log_every},
        {"resume", &a.resume},
        {"device", &a.device},
        {"precision", &a.precision},
        {"threads", &a.threads},
    };
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!a.model || !a.data || !a.out) return opts_missing(usage_text, "--model, --data and --out");
    /* Before anything is loaded: a missing GPU is known at once. */
    if (trainer_device_check(a.device, a.precision) != 0) return opts_fail();
    if (a.threads) {
        long long nt;
        if (opts_int(a.threads, "--threads", 1, 4096, &nt) != 0) return opts_fail();
        omp_set_num_threads((int)nt);
    }

    trainer_options t;
    trainer_options_init(&t);
    lora_config lc;
    lora_config_init(&lc);
    long long T = 256;
    double eval_fraction;
    int seq_given = a.seq != NULL;
    if (!seq_given) a.seq = "256";
    model *m = NULL;
    lora_set *s = NULL;
    dataset *d = NULL;
    chat_template *ct = NULL;
    rc = 1;
    if (parse_numbers(&a, &t, &lc, &T, &eval_fraction) != 0) goto done;
    if (trainer_load_base(&m, a.model, a.device, a.precision, NULL, 0) != 0) goto done;
    /* The default row length fits the model; one asked for must fit it. */
    if (!seq_given && T > m->cfg.max_position) T = m->cfg.max_position;
    if (model_config_seq_check(&m->cfg, T, "--seq") != 0) goto done;
    const char *targets = a.targets                         ? a.targets
                          : m->cfg.arch == MODEL_ARCH_GPT2  ? "c_attn"
                          : m->cfg.arch == MODEL_ARCH_BLOOM ? "query_key_value"
                                                            : "q_proj,v_proj";
    if (lora_config_set_targets(&lc, targets) != 0 ||
        lora_config_set_base_model(&lc, a.model) != 0 || lora_create(&s, m, &lc) != 0)
        goto done;

    char tok_path[4096];
    const char *tokenizer = a.tokenizer;
    if (!tokenizer && fio_join(tok_path, sizeof tok_path, a.model, "tokenizer.json") == 0 &&
        fio_exists(tok_path))
        tokenizer = tok_path;
    dataset_options dopt = {.path = a.data,
                            .tokenizer = tokenizer,
                            .seq = (int)T,
                            .eos_id = m->cfg.eos_token_id,
                            .vocab_size = m->cfg.vocab_size,
                            .eval_fraction = eval_fraction,
                            .seed = t.seed};
    if (chatdata_setup(&a.chat, a.model, &dopt, &ct) != 0 || dataset_open(&d, &dopt) != 0)
        goto done;
    printf("model %s: %d layers, hidden %d; LoRA on %d modules (%s), %lld trainable parameters\n",
           a.model, m->cfg.num_layers, m->cfg.hidden_size, s->n_modules, targets,
           (long long)lora_num_params(s));
    printf("data %s (%s): %zu documents, %zu rows of %lld tokens for training, %zu held out\n",
           a.data, dataset_format(d), dataset_num_docs(d, DATASET_TRAIN),
           dataset_num_rows(d, DATASET_TRAIN), T, dataset_num_rows(d, DATASET_EVAL));
    chatdata_report(&a.chat, d);
    fflush(stdout);

    t.out_dir = a.out;
    t.resume = a.resume;
    t.device = a.device;
    t.precision = a.precision;
    trainer_result res;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) {
        err_errno("installing the SIGINT/SIGTERM handlers");
        goto done;
    }
    if (trainer_run(m, s, d, &t, &res) != 0) {
        if (res.stopped) rc = 128 + res.stopped;
        goto done;
    }
    if (res.rank != 0) { /* data parallel: rank 0 reports and writes */
        printf("rank %d: %lld steps done\n", res.rank, (long long)res.steps);
        rc = 0;
        goto done;
    }
    printf("wrote adapter %s after %lld steps", a.out, (long long)res.steps);
    if (isfinite(res.loss)) printf(", last loss %.4f", res.loss);
    if (res.eval_tokens > 0)
        printf("; held-out loss %.4f, perplexity %.3f over %lld tokens", res.eval_loss,
               exp(res.eval_loss), (long long)res.eval_tokens);
    printf("\n");
    rc = 0;
done:
    if (rc != 0) opts_fail();
    dataset_free(d);
    chat_template_free(ct);
    lora_free(s);
    lora_config_free(&lc);
    model_free(m);
    return rc;
}
