/* peft — PEFT adapter directories, written and read.
 *
 * The directory PeftModel.save_pretrained writes and
 * PeftModel.from_pretrained(base, dir) reads (docs/formats.md, "Adapters"):
 *
 *   adapter_config.json        LoraConfig.to_dict(), as json.dumps(indent=2,
 *                              sort_keys=True) prints it
 *   adapter_model.safetensors  one F32 tensor pair per module:
 *       base_model.model.<module path>.lora_A.weight   (r, in)
 *       base_model.model.<module path>.lora_B.weight   (out, r)
 *     metadata {"format": "pt"}; tensors in name order (as safetensors'
 *     save_file lays them out)
 *
 * Written: peft_type "LORA", task_type "CAUSAL_LM", r, lora_alpha,
 * target_modules (a list of names, or the regular expression; "all-linear"
 * is written as the names it resolved to), lora_dropout, use_rslora,
 * fan_in_fan_out (true for GPT-2, whose linears are Conv1D), bias "none",
 * rank_pattern, alpha_pattern, exclude_modules, layers_to_transform,
 * layers_pattern null, base_model_name_or_path, inference_mode true,
 * init_lora_weights true, modules_to_save null, revision null, use_dora
 * false. Fields PEFT has and we do not write take PEFT's defaults on load.
 * The same adapter gives the same bytes.
 *
 * Read: what PEFT writes for LoRA. Refused, each with a message naming the
 * field: another peft_type, and the LoRA variants this code does not compute
 * (use_dora, bias other than "none", lora_bias, modules_to_save,
 * trainable_token_indices, layer_replication, target_parameters, qalora,
 * alora). Tensors must be exactly the ones the config resolves to on the base:
 * a missing one, an extra one, or a shape that differs from what the base
 * needs is an error naming the tensor ("adapter made for another base"). */
#ifndef FL_LORA_PEFT_H
#define FL_LORA_PEFT_H

#include "lora/lora.h"

#include <stddef.h>

#define PEFT_CONFIG_FILE "adapter_config.json"
#define PEFT_WEIGHTS_FILE "adapter_model.safetensors"
#define PEFT_CONFIG_MAX (16u << 20) /* bytes of adapter_config.json we accept */

/* Writes DIR/adapter_model.safetensors then DIR/adapter_config.json, each
 * atomically; DIR is created if needed. */
int peft_save(const lora_set *s, const char *dir);
/* The adapter_config.json bytes peft_save writes for s (malloc'd, NUL-terminated). */
int peft_config_json(const lora_set *s, char **out, size_t *len);

/* Parses adapter_config.json text into cfg (lora_config_init'ed by it);
 * `where` names the source in messages. */
int peft_parse_config(lora_config *cfg, const char *json, size_t len, const char *where);
/* Reads DIR/adapter_config.json into cfg. */
int peft_read_config(lora_config *cfg, const char *dir);

/* The weights file alone: s's tensors as peft_save writes them to
 * PEFT_WEIGHTS_FILE (the same adapter, the same bytes), durably. */
int peft_save_weights(const lora_set *s, const char *path);
/* Fills s (made by lora_create for the config the file belongs to) from a
 * parsed weights file: every lora_A / lora_B of s must be there with s's
 * shape (F32, F16, BF16 or F64), and nothing else; `where` names the file in
 * messages. Values are not checked for finiteness. */
struct safetensors_file;
int peft_load_weights(lora_set *s, const struct safetensors_file *f, const char *where);

/* Reads a PEFT LoRA directory made for base model m: the config resolved on
 * m, then every lora_A / lora_B from the safetensors file (F32, F16, BF16 or
 * F64), checked against m's shapes. Not attached. */
int peft_load(lora_set **out, const model *m, const char *dir);

#endif
