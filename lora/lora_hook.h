/* lora_hook.h — private to lora/: the adapter hook that model_linear calls
 * (lora_hook.c), for lora.c, which builds, attaches and frees the set. */
#ifndef FL_LORA_LORA_HOOK_H
#define FL_LORA_LORA_HOOK_H

#include "lora/lora.h"

/* forward and backward of one adapted linear (ctx: its lora_module) */
extern const model_adapter_ops lora_hook_ops;

/* Sizes the hook's scratch for chunks of `rows` rows: each module's u and
 * the set's buffers (dropout, groups). Returns 0, or −1 with the error set. */
int lora_hook_alloc_rows(lora_set *s, int rows);

/* Finds the input groups of m's blocks among the set's modules (called by
 * lora_attach once every module has its linear). Returns 0, or −1 with the
 * error set. */
int lora_hook_attach(lora_set *s, const model *m);

/* Forgets the groups (lora_detach). */
void lora_hook_detach(lora_set *s);

/* Frees what lora_hook_alloc_rows and lora_hook_attach allocated. */
void lora_hook_free(lora_set *s);

#endif
