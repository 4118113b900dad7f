/* mergekit — offline merges of finished adapters, with mergekit's formulas
 * (arcee-ai/mergekit: merge_methods/linear.py, generalized_task_arithmetic.py,
 * sparsify.py), applied to the task vectors that LoRA adapters stand for.
 *
 * Adapter i's task vector on a module is τ_i = s_i·B_i·A_i (out, in) — what
 * the fine-tuned model minus the base would be; a module an adapter does not
 * adapt has τ_i = 0 there (the fine-tuned model left that weight alone). With
 * weights w_i, each module's weight becomes W + Δ:
 *
 *   linear           Δ = Σ w_i τ_i / Σ w_i                   (normalize: true)
 *   task_arithmetic  Δ = λ · Σ w_i τ_i                        (Ilharco et al. 2023)
 *   ties             τ_i ← top-k of |τ_i| (k = ⌊density·numel⌋, the rest 0);
 *                    sign e = sign(Σ_i w_i τ_i) (>= 0 counts as +);
 *                    keep i at a coordinate when sign(w_i τ_i) = e (0 is no sign);
 *                    Δ = λ · Σ_kept w_i τ_i / Σ_kept w_i (0 kept: divisor 1)
 *                                                             (Yadav et al. 2023)
 *   dare_linear      τ_i ← τ_i · m / density, m ~ Bernoulli(density) per value;
 *                    Δ = λ · Σ w_i τ_i                        (Yu et al. 2024)
 *   dare_ties        DARE's drop and rescale, then TIES's sign election and
 *                    Σ_kept w_i τ_i, not divided (mergekit: normalize false)
 *
 * Differences from mergekit, all documented in docs/policies.md: ties among
 * equal magnitudes at the top-k threshold keep the lower index (torch.argsort
 * keeps an unspecified one); DARE's masks come from a seeded counter-based
 * generator (rng.h) keyed by (seed, adapter, module, element), not torch's
 * bernoulli, so the same --seed gives the same merge on any machine. Memory:
 * the K task vectors of one module at a time. */
#ifndef FL_POLICIES_MERGEKIT_H
#define FL_POLICIES_MERGEKIT_H

#include "lora/lora.h"
#include "model/checkpoint.h"

#include <stdint.h>

typedef enum {
    MERGEKIT_LINEAR = 0,
    MERGEKIT_TASK_ARITHMETIC,
    MERGEKIT_TIES,
    MERGEKIT_DARE_LINEAR,
    MERGEKIT_DARE_TIES
} mergekit_method;

typedef struct {
    mergekit_method method;
    const double *weights; /* K */
    const double *density; /* K, each in (0, 1] (1: keep everything); TIES and DARE only */
    double lambda;         /* scale of the merged task vector (not for linear) */
    uint64_t seed;         /* DARE's drop masks */
} mergekit_options;

/* "linear", "task_arithmetic", … → method; -1 when unknown. */
int mergekit_parse_method(const char *name, mergekit_method *out);
const char *mergekit_method_name(mergekit_method m);

/* Δ (out, in) of one module from the K task vectors tau (K·out·in, adapter
 * k's at k·n; consumed: sparsified in place). module_index keys DARE's masks.
 * name names the module in errors. */
int mergekit_module(const mergekit_options *o, int K, int64_t n, real *tau, int module_index,
                    const char *name, real *delta);

/* W += Δ for every module any of the K adapters (made for m) adapts; m's
 * weights must be writable (checkpoint_load). */
int mergekit_merge(model *m, lora_set *const *sets, int K, const mergekit_options *o);

/* The merge as an edit of checkpoint_write (model/checkpoint.h), for a base
 * that is only read (a mapped bf16 checkpoint): each adapted weight gets
 * W += Δ as it is written, the same Δ and bits as mergekit_merge, one
 * module's task vectors in memory at a time. Checks the options and the
 * adapters' shapes first. f holds what the edit refers to; it, the sets
 * and o must outlive the writing. */
typedef struct {
    const model *m;
    lora_set *const *sets;
    int K;
    const mergekit_options *o;
    model_param *w;   /* scratch of the walk over modules */
    real *values;     /* the tensor being written, or NULL */
    const char *want; /* the module path being looked for */
    int found;
} mergekit_fold;
int mergekit_edit(const model *m, lora_set *const *sets, int K, const mergekit_options *o,
                  mergekit_fold *f, checkpoint_edit *e);

#endif
