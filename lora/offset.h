/* offset — a base model offset by an adapter's product, so that training
 * that adapter starts from the base itself.
 *
 * Training an adapter (A0, B0) whose B0 is not zero on a base W starts from
 * W + s·B0·A0. When W already holds that product (the consortium's global
 * adapter is merged into every version: docs/protocol.md, "Start
 * adapters"), the training must run on W − s·B0·A0 instead, so that it
 * starts at W and ends at W + s·(B A − B0 A0). lora_offset_base makes that
 * base: for every module of s whose B is not all zero,
 *
 *   W ← W − s·B·A        with update_apply_rows (lora/update.h), B's
 *                        coefficient (float)(−s)·B, in fp32,
 *
 * giving the weight writable fp32 values (model_param_writable) when it was
 * held in another dtype: memory of the adapted weights in fp32 for as long
 * as the model lives. Modules whose B is zero are left as they are (a fresh
 * adapter needs no offset). */
#ifndef FL_LORA_OFFSET_H
#define FL_LORA_OFFSET_H

#include "lora/lora.h"
#include "model/model.h"

/* 1 when some B of s is not zero. */
int lora_has_product(const lora_set *s);
/* W ← W − s·B·A as above, for s made on m's shapes. */
int lora_offset_base(model *m, const lora_set *s);

#endif
