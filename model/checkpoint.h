/* checkpoint — Hugging Face model directories in and out of a model.
 *
 * A directory holds config.json and model.safetensors (or a sharded
 * model.safetensors.index.json), as save_pretrained writes them for
 * LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and GPT2LMHeadModel.
 * Loading converts F32/BF16/F16/F64 to `real`, transposes GPT-2's Conv1D
 * weights to (out, in), and accepts GPT-2 names with or without the
 * "transformer." prefix (the original hub checkpoint has none). Saving writes
 * what save_pretrained would: the tied lm_head is left out, Conv1D weights go
 * back to (in, out), metadata {"format": "pt"}. Memory stays bounded: one
 * tensor is converted at a time. */
#ifndef FL_MODEL_CHECKPOINT_H
#define FL_MODEL_CHECKPOINT_H

#include "model/model.h"

/* config.json + weights -> a new model. Every parameter must be present with
 * the shape config.json implies; a tensor the config does not describe is an
 * error (only known non-parameter buffers are skipped). */
int checkpoint_load(model **out, const char *dir);
/* Fills the parameters of an existing model from a weights directory (the
 * model's config decides which tensors and shapes are expected). */
int checkpoint_load_weights(model *m, const char *dir);
/* Writes DIR/config.json and DIR/model.safetensors (DIR is created if
 * needed); dtype is "float32", "bfloat16" or "float16" (round to nearest
 * even) and is recorded as config.json's torch_dtype. */
int checkpoint_save(const model *m, const char *dir, const char *dtype);

#endif
