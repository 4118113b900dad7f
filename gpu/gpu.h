/* gpu — the CUDA backend: the model's forward and backward, LoRA training and
 * AdamW on one GPU, and data parallelism over several through NCCL
 * (docs/gpu.md).
 *
 * The CPU backend (model/cpu/, lora/lora_hook.c, lora/adamw.c) is the reference:
 * this computes the same functions, tested against it (tests/gpu/). What
 * lives on the GPU:
 *   - the frozen base, uploaded once from a CPU `model`: linear and embedding
 *     weights in bf16 (GPU_PRECISION_BF16) or fp32 (GPU_PRECISION_FP32, for testing); norm
 *     weights and biases in fp32;
 *   - the LoRA adapter of a lora_set: A and B, their gradients and AdamW's
 *     moments in fp32 (in bf16 mode the GEMMs read a bf16 copy of A and B
 *     made after each update, as torch autocast does);
 *   - activations for batches of B × T tokens: bf16 (GPU_PRECISION_BF16) or fp32, with
 *     the residual stream, norm statistics, log-sum-exps and every gradient
 *     sum in fp32.
 * GEMMs run on cuBLASLt (fp32 accumulation); attention is flash-style
 * (no T × T matrix); the LM head and its cross-entropy run over chunks of
 * rows, so the full (B·T, V) logits never exist when only the loss is wanted.
 *
 * Semantics follow the CPU's: model_forward's loss sum and target count,
 * model_backward's scale, lora_dropout.h's masks (bit for bit, from the same
 * seed, module index and counter), adamw_step (clipping, warmup + cosine,
 * the update with the same fp32 roundings), the trainer's step over K
 * micro-batches scaled by the step's target count.
 *
 * Threads: a gpu_model belongs to one host thread at a time; every call makes
 * its device current. Errors are util/err.h messages; after a CUDA error
 * inside a kernel the gpu_model must be freed. */
#ifndef FL_GPU_GPU_H
#define FL_GPU_GPU_H

#include "lora/adamw.h"
#include "lora/lora.h"
#include "model/model.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { GPU_PRECISION_FP32 = 0, GPU_PRECISION_BF16 = 1 } gpu_precision;

/* Number of CUDA devices usable here; 0 when there is no driver, no device,
 * or the runtime cannot start (never an error). */
int gpu_available(void);
/* The name, memory (GiB) and compute capability of device dev. */
int gpu_device_info(int dev, char *name, size_t name_len, double *mem_gib, int *cc_major,
                    int *cc_minor);

typedef struct {
    gpu_precision precision;
    int device;         /* CUDA ordinal */
    int batch;          /* B: rows per micro-batch */
    int seq;            /* T: tokens per row (GPT-2: <= n_positions) */
    int head_rows;      /* rows per LM-head chunk; 0 picks one (about 256 MiB of fp32 logits) */
    int simt_attention; /* 1: attention on CUDA cores in bf16 mode too (by default it runs on
                           tensor cores where it can: head_dim 32, 64 or 128) */
} gpu_options;

/* B 1, T 128, fp32, device 0, automatic head chunks, automatic attention. */
void gpu_options_init(gpu_options *o);

typedef struct gpu_model gpu_model;

/* Uploads model m and, when s is not NULL, the adapter s (created for m by
 * lora_create: its modules, ranks, scales, dropout and current A, B values);
 * allocates everything forward and backward need for batches of o->batch ×
 * o->seq tokens. Dropout is off (as lora_create leaves a set); the dropout
 * counter is s's. m and s are not referenced afterwards. */
int gpu_model_upload(gpu_model **out, const model *m, const lora_set *s, const gpu_options *o);
void gpu_model_free(gpu_model *g);
/* Device memory this gpu_model holds, bytes. */
size_t gpu_model_device_bytes(const gpu_model *g);

/* ---- forward / backward (B·T tokens of the options' shape) ---------------------
 * tokens and targets as model_forward's (targets already shifted,
 * MODEL_IGNORE_INDEX where no loss is wanted); ids outside the vocabulary are
 * an error. */

/* Forward. With targets: *loss_sum and *n_targets as model_forward's (else
 * 0). logits_out (B·T, V) host floats, or NULL: computed chunk by chunk and
 * copied out; without it no (B·T, V) buffer is used at all. */
int gpu_forward(gpu_model *g, const int32_t *tokens, const int32_t *targets, double *loss_sum,
                int64_t *n_targets, float *logits_out);
/* Forward, then the backward of scale · loss_sum: the LoRA gradients
 * accumulate (+=) as model_backward's do into lora_want_grads' buffers.
 * Needs targets and an adapter. */
int gpu_forward_backward(gpu_model *g, const int32_t *tokens, const int32_t *targets, double scale,
                         double *loss_sum, int64_t *n_targets);

/* ---- generation ----------------------------------------------------------------------
 * A gpu_model uploaded with batch 1 and seq = T keeps a KV cache of T
 * positions (model_decode's, on the GPU). gpu_decode runs n tokens (n >= 1)
 * at positions pos … pos + n − 1 through the model, keeps their keys and
 * values, and writes the logits (V) after the last of them to logits_out
 * (host floats). pos is the number of positions already fed (0: a new
 * sequence; less than that rewinds); pos + n <= T. The adapter applies with
 * dropout off. gpu_forward and gpu_forward_backward use the same buffers:
 * after either, decoding starts again at 0. */
int gpu_decode(gpu_model *g, const int32_t *tokens, int n, int pos, float *logits_out);

/* ---- the adapter ------------------------------------------------------------------ */

void gpu_lora_zero_grads(gpu_model *g);
/* Dropout on (training) or off, as lora_set_training. */
void gpu_lora_set_training(gpu_model *g, int on);
/* As lora_dropout_counter / lora_set_dropout_counter. */
uint64_t gpu_lora_dropout_counter(const gpu_model *g);
void gpu_lora_set_dropout_counter(gpu_model *g, uint64_t counter);
/* Copies A and B values from the GPU into s / from s to the GPU; s must have
 * the modules (paths, ranks, shapes) the gpu_model was made with. */
int gpu_lora_download(gpu_model *g, lora_set *s);
int gpu_lora_upload(gpu_model *g, const lora_set *s);
/* Copies the accumulated gradients into s's (after lora_want_grads). */
int gpu_lora_download_grads(gpu_model *g, lora_set *s);

/* ---- AdamW on the GPU (lora/adamw.h's semantics) -------------------------------- */

/* Sets the hyper-parameters, zero moments, step 0. */
int gpu_adamw_init(gpu_model *g, const adamw_config *cfg);
/* One update of the accumulated gradients: clipping, the scheduled lr,
 * AdamW; fails, changing nothing, on a non-finite gradient norm. The lr used
 * and the norm before clipping go to *lr and *grad_norm (either may be NULL). */
int gpu_adamw_step(gpu_model *g, double *lr, double *grad_norm);
/* Copies the moments, step, last lr and last norm into o / from o. o must be
 * an optimizer over the tensors of a lora_set with the gpu_model's modules,
 * in lora_tensor order (adamw_create(lora_tensor(s, 0 … 2n−1))): then
 * adamw_save / adamw_load keep the GPU's state in checkpoints. */
int gpu_adamw_download(gpu_model *g, adamw *o);
int gpu_adamw_upload(gpu_model *g, const adamw *o);

/* ---- one training step, as the trainer's step_once ------------------------------ */

typedef struct {
    double loss;       /* mean loss over the step's targets (all ranks) */
    int64_t n_targets; /* targets of the step (all ranks) */
    double lr;         /* the lr of the update */
    double grad_norm;  /* the global gradient norm before clipping */
} gpu_step_result;

/* tokens, targets: K micro-batches of B·T each, one after the other. Zeroes
 * the gradients, runs each micro-batch's forward and backward scaled by
 * 1 / (targets of the whole step, over every rank), all-reduces the
 * gradients when distributed, then gpu_adamw_step. Needs gpu_adamw_init. */
int gpu_train_step(gpu_model *g, const int32_t *tokens, const int32_t *targets, int K,
                   gpu_step_result *r);

/* ---- data parallelism (NCCL) --------------------------------------------------------
 * One process per GPU; each uploads the same model and adapter and calls
 * gpu_dist_init before training; gpu_train_step then sums the gradients of
 * every rank (each already scaled by 1 / the step's global target count), so
 * every rank applies the same update to the same adapter.
 *
 * Bootstrap: rank 0 makes an ncclUniqueId and writes it (atomically) to
 * id_path, which must not exist yet; the other ranks wait for that file (up
 * to timeout_s seconds) and read it. id_path on a file system every process
 * sees (a shared one across machines). */
#define GPU_DIST_ENV_RANK "FEDLORA_RANK"
#define GPU_DIST_ENV_WORLD "FEDLORA_WORLD_SIZE"
#define GPU_DIST_ENV_ID_FILE "FEDLORA_NCCL_ID_FILE"

/* 1 when this build has NCCL. */
int gpu_dist_supported(void);
int gpu_dist_init(gpu_model *g, int rank, int world, const char *id_path, double timeout_s);
/* gpu_dist_init from FEDLORA_RANK, FEDLORA_WORLD_SIZE and FEDLORA_NCCL_ID_FILE;
 * *enabled = 0 (and nothing done) when FEDLORA_WORLD_SIZE is unset. */
int gpu_dist_init_env(gpu_model *g, double timeout_s, int *enabled);
/* This process's rank and the number of ranks (0 and 1 when not distributed). */
int gpu_dist_rank(const gpu_model *g);
int gpu_dist_world(const gpu_model *g);

#ifdef __cplusplus
}
#endif

#endif
