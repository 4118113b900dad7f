/* trainer — the LoRA training loop, its checkpoints and its metrics
 * (docs/training.md).
 *
 * One optimizer step takes K = grad_accum micro-batches of B rows of T
 * tokens from the data order (dataset_order: positions step·K·B onwards).
 * Each micro-batch's backward is scaled by 1 / (targets of all K
 * micro-batches), so the accumulated gradient is that of the mean loss over
 * every target token of the step, as if the K·B rows were one batch. Then
 * AdamW (lora/adamw.h: clipping, warmup + cosine over `steps` updates) moves
 * the adapter. The reported loss is that same mean.
 *
 * Output, under out_dir:
 *   metrics.jsonl   one JSON object per line, flushed as it is written:
 *                   {"step", "loss", "lr", "grad_norm", "tokens",
 *                    "tokens_per_s", "elapsed_s"} after every step, and
 *                   {"step", "eval_loss", "eval_tokens"} after an evaluation
 *   checkpoint/     every save_every steps: step-NNNNNNNN/ holding
 *                   adapter_config.json + adapter_model.safetensors (PEFT),
 *                   optimizer.safetensors (AdamW's moments and step) and
 *                   trainer_state.json (step, data position, dropout
 *                   counter, tokens, elapsed time, thread count, and the
 *                   configuration with its fingerprint); built as
 *                   step-NNNNNNNN.tmp/, every file fsynced, then renamed
 *                   into place; then checkpoint/latest names it (written
 *                   atomically) and older step directories are removed
 *   adapter_config.json + adapter_model.safetensors   the final adapter
 *
 * Resume: every input of a step's arithmetic is either in the checkpoint
 * (adapter values, AdamW moments and step, data position, dropout counter)
 * or a function of the configuration, which must be the same (a different
 * one is an error naming the first field that differs). Reductions in the
 * CPU backend have fixed orders for a given thread count, so a resumed run
 * repeats the uninterrupted run's losses and final adapter bit for bit with
 * the same build and thread count; with another thread count OpenMP splits
 * GEMMs differently and the last bits may differ (a warning says so).
 *
 * Progress: on a terminal, one line rewritten in place (\r) with step, loss,
 * lr, tokens/s and ETA; otherwise a plain line every log_every steps.
 *
 * Devices (docs/gpu.md): device "cuda" runs the same loop on the CUDA backend
 * (gpu/gpu.h, whose module gpu/gpu_load.h loads at run time): the
 * model and adapter are uploaded once, each step is gpu_train_step over the
 * same K micro-batches of the same rows, evaluations use gpu_forward, and
 * the adapter and AdamW's state are copied back for every checkpoint and at
 * the end, so the files are written by the same code in the same formats,
 * and a checkpoint resumes on either device. With FEDLORA_WORLD_SIZE set
 * (gpu.h: one process per GPU) each rank takes grad_accum / world of every
 * step's micro-batches, the gradients are summed over the ranks, and only
 * rank 0 evaluates and writes files. */
#ifndef FL_TRAIN_TRAINER_H
#define FL_TRAIN_TRAINER_H

#include "data/dataset.h"
#include "gpu/gpu_api.h"
#include "lora/adamw.h"
#include "lora/lora.h"
#include "model/model.h"

#include <stdint.h>
#include <stdio.h>

#define TRAINER_METRICS_FILE "metrics.jsonl"
#define TRAINER_CHECKPOINT_DIR "checkpoint"
#define TRAINER_STATE_FILE "trainer_state.json"
#define TRAINER_OPTIMIZER_FILE "optimizer.safetensors"
#define TRAINER_LATEST_FILE "latest"

typedef struct {
    int batch;           /* B: rows per micro-batch */
    int grad_accum;      /* K: micro-batches per optimizer step */
    int64_t steps;       /* optimizer steps of the whole run */
    adamw_config opt;    /* lr, betas, eps, weight decay, warmup, clipping;
                            total_steps is taken from steps */
    uint64_t seed;       /* the data order's seed */
    int64_t save_every;  /* checkpoint every N steps (and at the end); 0: never */
    int64_t eval_every;  /* held-out loss every N steps and before the first; 0: at the end only */
    int64_t log_every;   /* plain progress lines every N steps (not on a terminal) */
    const char *out_dir; /* created if needed */
    const char *resume; /* a checkpoint directory, or a checkpoint/ holding `latest`; NULL: fresh */
    FILE *progress;     /* where progress goes (stderr); NULL: nowhere */
    const char *device; /* "cpu" (also NULL) or "cuda" */
    const char *precision; /* "fp32", "bf16", or NULL / "auto": on a GPU bf16, on the CPU
                              the model's own (trainer_cpu_precision) */
} trainer_options;

/* Fills B 4, K 1, steps 100, AdamW defaults with lr 2e-4 and weight decay 0,
 * seed 0, save_every 100, eval_every 0, log_every 10, progress stderr,
 * device cpu. */
void trainer_options_init(trainer_options *o);

/* Whether the device and precision (as in trainer_options) can run here:
 * valid names, and for "cuda" the CUDA backend module (loaded here, on the
 * first call) and a CUDA device that the runtime sees. Errors say which and
 * what to do (e.g. "no CUDA device found (...) — use --device cpu").
 * trainer_run checks this itself; callers may check before loading a model. */
int trainer_device_check(const char *device, const char *precision);
/* Whether device names the GPU ("cuda"), and whether a run there computes in
 * bf16 (precision "bf16" or NULL). */
int trainer_device_is_cuda(const char *device);
int trainer_device_bf16(const char *device, const char *precision);
/* The precision a run on device computes at: --precision as given, or the
 * device's default (trainer_options.precision). bf16 on the CPU needs
 * oneDNN to multiply bf16 here (an error says so). */
int trainer_precision_of(const char *device, const char *precision, model_precision *out);
/* The frozen base in dir as a run on device at precision uses it
 * (model/checkpoint.h, checkpoint_map): each weight in its checkpoint's
 * dtype, for the CPU at the run's precision (bf16 converts other dtypes to
 * bf16); for a GPU as stored, converted by the upload. how (may be NULL):
 * the precision as trainer_precision_describe says it, for the log. */
int trainer_load_base(model **out, const char *dir, const char *device, const char *precision,
                      char *how, size_t how_len);
/* The precision a run with m on device computes at, made so: on the CPU a
 * precision given sets the model's (model_set_precision), none (NULL or
 * "auto") keeps the one m was loaded at (trainer_load_base resolves the
 * default); on a GPU, trainer_precision_of's. */
int trainer_cpu_precision(model *m, const char *device, const char *precision,
                          model_precision *out);
/* For the log: "fp32", "bf16", or on the CPU "bf16 (oneDNN, <isa>)". */
void trainer_precision_describe(const char *device, model_precision p, char *buf, size_t len);
/* gpu->model_upload of m (and s, NULL: none) for batches of B rows of T
 * tokens, in bf16 or fp32, with the backend's other options at their
 * defaults. */
int trainer_gpu_upload(const gpu_api *gpu, gpu_model **g, const model *m, const lora_set *s, int B,
                       int T, int bf16);

typedef struct {
    int64_t steps;       /* steps done, including those of a resumed checkpoint */
    double loss;         /* the last step's loss (NAN if no step ran here) */
    double eval_loss;    /* held-out mean loss at the end (NAN without held-out rows) */
    int64_t eval_tokens; /* targets it averaged */
    int rank;            /* this process's rank in a data-parallel run, else 0: rank 0 alone
                            evaluates and writes the files */
    int stopped;         /* the signal a stop was asked with (trainer_request_stop), else 0 */
} trainer_result;

/* Asks a running trainer_run to stop after the step in progress:
 * async-signal-safe, for a SIGINT/SIGTERM handler. The run then saves the
 * steps since its last checkpoint as a checkpoint (whatever save_every
 * says), sets res->stopped and fails with a message naming --resume. */
void trainer_request_stop(int sig);
/* The signal a stop was asked with, 0 when none. */
int trainer_stop_requested(void);

/* Trains the adapter s (created for m by lora_create; attached here and
 * detached on return) on d's training rows. The rows' length is the
 * dataset's T. On failure nothing already checkpointed is touched. */
int trainer_run(model *m, lora_set *s, const dataset *d, const trainer_options *o,
                trainer_result *res);

/* Mean loss over every row of a split, in order, in batches of acts' B rows
 * (the last one padded with rows that carry no loss). *n_targets = 0 and
 * *loss = NAN when the split is empty. When progress is a terminal, a line
 * there shows how far it is. */
int trainer_eval(const model *m, model_acts *acts, int B, const dataset *d, dataset_split split,
                 FILE *progress, double *loss, int64_t *n_targets);

/* trainer_eval on a device (trainer_device_check's names): with the adapter
 * s (not attached; NULL: the base alone) in batches of B rows of the
 * dataset's T. On "cpu" s is attached for the evaluation and detached after;
 * on "cuda" the model and s are uploaded to the GPU for it. */
int trainer_eval_on(model *m, lora_set *s, int B, const dataset *d, dataset_split split,
                    const char *device, const char *precision, FILE *progress, double *loss,
                    int64_t *n_targets);

#endif
