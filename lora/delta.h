/* delta — the weight updates LoRA adapters stand for, and folding them in.
 *
 * A module's update is ΔW = s · B · A (out, in): PEFT's get_delta_weight
 * (lora/layer.py), which for a GPT-2 Conv1D transposes it to (in, out)
 * because that is how Conv1D stores its weight on disk (fan_in_fan_out).
 * In memory every base weight is (out, in) (model/model.h), so folding needs
 * no transpose here; checkpoint_save writes Conv1D weights back as (in, out).
 *
 * Merging K adapters exactly (DESIGN §4): W' = W + Σ_k c_k · B_k · A_k with
 * c_k = p_k · s_k, computed as ONE GEMM per module,
 *
 *   [c_1 B_1 | … | c_K B_K]  (out, Σ r_k)   ·   [A_1; …; A_K]  (Σ r_k, in),
 *
 * which is the sum of the products, not the product of averaged factors
 * (mean(B)·mean(A) ≠ mean(B·A)), and lets every adapter have its own rank. */
#ifndef FL_LORA_DELTA_H
#define FL_LORA_DELTA_H

#include "lora/lora.h"
#include "model/checkpoint.h"

/* dw = s · B · A of one module: (out, in), or (in, out) when transposed
 * (a Conv1D's on-disk orientation). One GEMM. */
void delta_dense(const lora_module *mod, real *dw, int transposed);

/* W (out, in, row stride ldw) += Σ_k coef[k] · B_k (out, r_k) · A_k (r_k, in),
 * as one GEMM over the concatenated factors. K >= 1; any rank may be 0. */
int delta_product(real *W, int ldw, int out, int in, int K, const real *const *B,
                  const real *const *A, const int *rank, const double *coef);

/* Folds s·B·A into the base weights of m for every module of s (what
 * `fedlora merge-adapter` does): W += s·B·A, one GEMM per module. s must
 * have been made for m's shapes; it need not be attached (detach it before
 * running the merged model, or the adapter would count twice). */
int delta_merge(model *m, const lora_set *s);

/* The same fold as an edit of checkpoint_write (model/checkpoint.h): each
 * adapted weight gets W += s·B·A, delta_merge's GEMM and bits, as it is
 * written, so the base needs no writable copy (a mapped bf16 base streams
 * through). Checks first that s was made for m's shapes. *e refers to s. */
int delta_fold_edit(const model *m, const lora_set *s, checkpoint_edit *e);

/* W' = W + Σ_k weights[k] · s_k · B_k · A_k over K adapters made for m's
 * shapes, one GEMM per module path (a path absent from some adapters takes
 * only those that have it). The aggregator's exact merge. */
int delta_merge_product(model *m, lora_set *const *sets, const double *weights, int K);

#endif
