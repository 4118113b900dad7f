/* delta — the weight updates LoRA adapters stand for, and folding them in.
 *
 * A module's update is ΔW = s · B · A (out, in): PEFT's get_delta_weight
 * (lora/layer.py), which for a GPT-2 Conv1D transposes it to (in, out)
 * because that is how Conv1D stores its weight on disk (fan_in_fan_out).
 * In memory every base weight is (out, in) (model/model.h), so folding needs
 * no transpose here; checkpoint_save writes Conv1D weights back as (in, out).
 *
 * Merging K adapters exactly, W' = W + Σ_k c_k · B_k · A_k, is the factored
 * update of lora/update.h (its portable kernel gives the same bytes on every
 * machine); the same merge as BLAS GEMMs is the tests' oracle
 * (tests/support/blas_merge.h). */
#ifndef FL_LORA_DELTA_H
#define FL_LORA_DELTA_H

#include "lora/lora.h"
#include "model/checkpoint.h"

/* dw = s · B · A of one module: (out, in), or (in, out) when transposed
 * (a Conv1D's on-disk orientation). One GEMM. */
void delta_dense(const lora_module *mod, real *dw, int transposed);

/* The base weight (out, in) module mod folds into, in *w; refused (a
 * message naming the module) when m has no 2-D weight of that shape. */
int delta_weight(const model *m, const lora_module *mod, model_param **w);

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

#endif
