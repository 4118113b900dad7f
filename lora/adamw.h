/* adamw — the optimizer of the LoRA trainer, with PyTorch's semantics.
 *
 * torch.optim.AdamW (Loshchilov & Hutter 2019, decoupled weight decay), as
 * its single-tensor CPU path computes it (torch/optim/adam.py,
 * _single_tensor_adam with decoupled_weight_decay=True), per element, step t
 * counted from 1:
 *
 *   p  = p · (1 − lr·wd)
 *   m  = m + (1 − β1)·(g − m)                 (exp_avg.lerp_(g, 1 − β1))
 *   v  = v·β2 + (1 − β2)·g·g                  (exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2))
 *   p  = p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
 *
 * eps is added after the square root of the bias-corrected second moment.
 * Scalars are formed in double and applied at the parameters' precision, as
 * torch does with Python floats on fp32 tensors.
 *
 * Learning rate: linear warmup then cosine decay to 0, as transformers'
 * get_cosine_schedule_with_warmup under torch's LambdaLR: the k-th update
 * (k = 0, 1, …, counting completed updates) uses lr · λ(k) with
 *   λ(k) = k / max(1, warmup)                                   k < warmup
 *   λ(k) = max(0, ½(1 + cos(π · (k − warmup) / max(1, total − warmup))))
 * so with warmup > 0 the first update has lr 0, exactly as in transformers.
 *
 * Clipping: torch.nn.utils.clip_grad_norm_: the total norm is the 2-norm of
 * all gradients as one vector; every gradient is multiplied by
 * min(1, max_norm / (total + 1e-6)).
 *
 * One deliberate difference: a non-finite gradient norm is an error and the
 * parameters are left as they were (torch would write NaNs into them). */
#ifndef FL_LORA_ADAMW_H
#define FL_LORA_ADAMW_H

#include "model/model.h"

#include <stdint.h>

typedef struct {
    double lr;            /* peak learning rate (torch default 1e-3) */
    double beta1, beta2;  /* (0.9, 0.999) */
    double eps;           /* 1e-8 */
    double weight_decay;  /* 1e-2 (AdamW's default) */
    int64_t warmup_steps; /* linear warmup updates (0: none) */
    int64_t total_steps;  /* updates of the whole run for the cosine; 0: constant lr after warmup */
    double max_grad_norm; /* global-norm clipping threshold; 0 disables it */
} adamw_config;

typedef struct {
    adamw_config cfg;
    int n;                 /* tensors */
    model_param **params;  /* borrowed; each needs data and grad */
    real *exp_avg;         /* m, every tensor's values one after the other */
    real *exp_avg_sq;      /* v */
    int64_t numel;         /* total values */
    int64_t step;          /* completed updates */
    double last_lr;        /* lr of the last update */
    double last_grad_norm; /* total gradient norm before clipping, of the last update */
} adamw;

/* torch.optim.AdamW's defaults, no warmup, constant lr, clipping at 1.0
 * (the transformers Trainer's max_grad_norm). */
void adamw_config_init(adamw_config *c);

/* An optimizer over n tensors (e.g. lora_tensor(s, 0 … lora_num_tensors(s)−1)),
 * moments zero, step 0. The params array is copied; the tensors are not. */
int adamw_create(adamw **out, model_param *const *params, int n, const adamw_config *cfg);
void adamw_free(adamw *o);

/* The scheduled multiplier λ(k) (see above). */
double adamw_schedule(int64_t k, int64_t warmup, int64_t total);
/* The learning rate the next update will use: cfg.lr · λ(step). */
double adamw_next_lr(const adamw *o);

/* The total 2-norm of the gradients; when max_norm > 0, scales them by
 * min(1, max_norm / (norm + 1e-6)). Returns the norm before clipping. */
double adamw_clip_grad_norm(model_param *const *params, int n, double max_norm);

/* One update: clips (cfg.max_grad_norm), then applies AdamW with the
 * scheduled lr; step += 1. Gradients are left as they are (zero them before
 * the next accumulation). Fails, changing nothing, on a non-finite gradient. */
int adamw_step(adamw *o);

/* The state (step, m, v) in a safetensors file: tensors "exp_avg.<name>" and
 * "exp_avg_sq.<name>" at the parameters' precision, metadata
 * {"format": "fedlora-adamw", "step": "<n>"}. Written atomically; the same
 * state gives the same bytes. */
int adamw_save(const adamw *o, const char *path);
/* Restores a state saved for the same tensors (names and shapes must match,
 * else an error naming the first difference: a checkpoint from another
 * configuration). */
int adamw_load(adamw *o, const char *path);

#endif
