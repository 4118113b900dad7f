/* validate — a member's submitted update, checked before it may count.
 *
 * The aggregator decodes a DELTA (wire/payload.h) into named tensors and
 * hands them here with the member's declared LoRA settings. validate_build
 * either returns the member's adapter as a lora_set on the base model, ready
 * for aggregate_round, or rejects it with a one-line reason (the aggregator
 * logs it and goes on with the round without this member). Checks, in order:
 *
 *   base      the update was trained on this round's base version (hash);
 *   rank      1 <= rank <= validation.max_rank (or the round's rank);
 *   tensors   exactly the set the round's targets resolve to on the base:
 *             base_model.model.<path>.lora_A.weight (rank, in) and
 *             .lora_B.weight (out, rank) for every adapted module, nothing
 *             missing, nothing extra, no duplicate;
 *   finite    every value is finite (no NaN, no ±Inf);
 *   norm      ‖Σ_modules s·B·A‖_F <= validation.max_norm (when set).
 *
 * Reasons start with a short code (base, rank, tensors, finite, norm) so
 * logs can be counted by cause. */
#ifndef FL_POLICIES_VALIDATE_H
#define FL_POLICIES_VALIDATE_H

#include "lora/lora.h"
#include "policies/policy.h"

#include <stddef.h>
#include <stdint.h>

#define VALIDATE_HASH_LEN 32
#define VALIDATE_REASON_MAX 256

/* One submitted tensor: a PEFT name, a 2-D shape, rows·cols F32 values,
 * little-endian, at any alignment (it may point into a decoded message). */
typedef struct {
    const char *name;
    int64_t rows, cols;
    const void *data;
} validate_tensor;

typedef struct {
    const char *member;        /* for messages */
    const unsigned char *base; /* VALIDATE_HASH_LEN bytes trained on */
    int rank;                  /* declared LoRA rank */
    double alpha;              /* declared lora_alpha */
    int rslora;                /* s = alpha/sqrt(r) */
    const validate_tensor *tensors;
    size_t n_tensors;
} validate_submission;

/* Builds the member's adapter on base model m under the round's LoRA config
 * (its targets decide the expected modules; rank, alpha and rslora are the
 * member's). Returns 0 with *out set when accepted; 1 when rejected, with
 * *out NULL and `reason` filled; -1 on an internal failure (out of memory),
 * with err_msg set. */
int validate_build(const policy *pol, const model *m, const lora_config *round_cfg,
                   const unsigned char *round_base, const validate_submission *sub, lora_set **out,
                   char *reason, size_t reason_cap);

/* The checks that remain once an adapter is built (by validate_build, or
 * by the aggregator's own payload decoder, which already checks base,
 * tensor set, shapes and finiteness): rank <= validation.max_rank (or
 * round_rank when that is 0) for every module, finite values, and the norm
 * bound. 0 accepted, 1 rejected with `reason`. */
int validate_check(const policy *pol, int round_rank, const lora_set *s, const char *member,
                   char *reason, size_t reason_cap);

/* ‖Σ_modules s·B·A‖_F of an adapter, without forming B·A:
 * ‖s B A‖_F² = s² · Σ_{a,b} (BᵀB)_{ab} (A Aᵀ)_{ab}. */
double validate_update_norm(const lora_set *s);

/* ---- the default bounds on a member's influence (docs/policies.md, "Default
 * bounds"), which hold with or without a policy file ---------------------- */

/* ‖s·B·A‖_F of one module, the same identity as validate_update_norm but
 * summed in double from the factors' values, so that an update scaled to
 * 1e30 gives its norm (≈1e30·…), not an overflow: the Gram matrices are
 * (r, r), O((out + in)·r²). NaN when a value is not finite. */
double validate_module_norm(const lora_module *mod);
/* Σ v² of n values of dtype t, in double. A tensor may be fed in pieces
 * (the sums add), as a streaming merge reads it. */
double validate_sum_squares(model_dtype t, const void *values, int64_t n);
/* 0 when each of the n values (dtype t) of tensor `name` is finite, else 1
 * with `reason` naming the tensor, the first bad element and its value. For
 * a tensor merged (or written) in pieces, `first` is the index of values[0]
 * in the whole tensor, so the message names the element. A merge checks
 * every tensor of a new version with it before anything is published. */
int validate_finite(const char *name, model_dtype t, const void *values, int64_t first, int64_t n,
                    char *reason, size_t reason_cap);

#endif
