/* checkpoint — Hugging Face model directories in and out of a model.
 *
 * A directory holds config.json and model.safetensors (or a sharded
 * model.safetensors.index.json), as save_pretrained writes them for
 * every supported family (model/config.h).
 * checkpoint_load converts F32/BF16/F16/F64 to `real` (a writable model, for
 * merging into); checkpoint_map keeps the weights as they are. transposes GPT-2's Conv1D
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
/* config.json + weights -> a frozen base, as train, eval, generate and the
 * node use it: every weight matrix stays in its checkpoint's dtype (bf16,
 * fp16 or fp32), read in place from the mapped file where its bytes can be
 * used as they are (else copied once: GPT-2's Conv1D weights, which are
 * transposed), so memory is the file's size, not 2-4x it; vectors (norms,
 * biases) become `real`. At BF16 precision, matrices saved in another dtype
 * are converted to bf16 as they are read (and the CPU must multiply bf16).
 * The file stays mapped until model_free; values of mapped matrices are
 * read-only (data NULL): model_param_want_grad makes a param trainable. The
 * fp64 build loads as checkpoint_load. */
int checkpoint_map(model **out, const char *dir, model_precision prec);
/* Fills the parameters of an existing model from a weights directory (the
 * model's config decides which tensors and shapes are expected). */
int checkpoint_load_weights(model *m, const char *dir);
/* transformers' default max_shard_size, "5GB". */
#define CHECKPOINT_SHARD_BYTES 5000000000LL

/* A change to some tensors on their way to the file (checkpoint_write): for
 * each param touches says yes to, apply gets its values as real, in memory
 * layout ((out, in) for a linear weight; zeros for a param with no values
 * yet), to change in place. */
typedef struct {
    int (*touches)(void *ctx, const model_param *p);
    int (*apply)(void *ctx, const model_param *p, real *values);
    void *ctx;
} checkpoint_edit;

typedef struct {
    const char *dtype;           /* "float32", "bfloat16" or "float16" (round to nearest even) */
    int64_t max_shard_bytes;     /* 0: CHECKPOINT_SHARD_BYTES, or the test knob
                                    FEDLORA_SHARD_BYTES from the environment */
    const checkpoint_edit *edit; /* NULL: every tensor as it is */
    int release; /* the model is not used after this: give a mapped file's pages back as its
                    tensors are written (memory stays at a tensor, not the model) */
    /* Rounding of edited or converted values to bf16: nearest even (0), or
     * stochastic (1) with the public draws of model_values_to_bf16_stochastic
     * keyed by CHECKPOINT_SR_KEY(sr_key, index of the param in the table):
     * what versions of a bf16 base use (docs/formats.md, "Versions of a bf16 base"). */
    int stochastic;
    uint64_t sr_key;
} checkpoint_save_options;

/* The stochastic-rounding key of a model's param i under a version's key. */
#define CHECKPOINT_SR_KEY(key, i) ((key) ^ ((uint64_t)(i) + 1) * 0xD1B54A32D192ED03ull)

/* Writes DIR/config.json (torch_dtype = o->dtype) and the weights (DIR is
 * created if needed): one model.safetensors, or shards of at most
 * max_shard_bytes and model.safetensors.index.json as transformers writes
 * them; the layout not written is removed. Tensors stream one at a time
 * (checkpoint_save.c): only edited or converted ones are held whole, as
 * real. */
int checkpoint_write(const model *m, const char *dir, const checkpoint_save_options *o);
/* checkpoint_write with every tensor as it is, in dtype. */
int checkpoint_save(const model *m, const char *dir, const char *dtype);

#endif
