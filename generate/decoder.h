/* decoder — the next-token logits that generation samples from, on the CPU
 * (model_decode and its KV cache) or on a GPU (gpu_decode, through the CUDA
 * module that gpu/gpu_load.h loads), behind one interface: `fedlora
 * generate` does not care where it runs.
 *
 * A decoder holds one sequence: decoder_step appends tokens at positions
 * len … len + n − 1 (a prompt's prefill when n > 1, one generation step when
 * n == 1) and returns the logits after the last of them. Both backends keep
 * the keys and values of every earlier position, so each token goes through
 * the model once. On either device the logits are model_forward's at the
 * same positions up to rounding (fp32; bf16 on a GPU within its tolerances,
 * docs/gpu.md). */
#ifndef FL_GENERATE_DECODER_H
#define FL_GENERATE_DECODER_H

#include "lora/lora.h"
#include "model/model.h"

typedef struct decoder decoder;

/* A decoder for up to max_T positions of model m (GPT-2: at most its
 * n_positions) with adapter s (NULL: none; created for m). device and
 * precision as trainer_cpu_precision takes them ("cpu" or NULL, "cuda";
 * "fp32", "bf16", or NULL: on the CPU the model's own precision, which a
 * given one changes). The adapter's dropout is turned
 * off. m and s must outlive the decoder; on the CPU, s stays attached to m
 * until decoder_free. */
int decoder_open(decoder **out, model *m, lora_set *s, int max_T, const char *device,
                 const char *precision);
void decoder_free(decoder *d);

/* Appends tokens[0 … n) (n >= 1) and writes the logits (V) after the last
 * to logits. Refused, with the sequence unchanged, when they do not fit in
 * max_T positions or an id is outside the vocabulary. */
int decoder_step(decoder *d, const int32_t *tokens, int n, real *logits);
/* Positions held, and the most it can hold. */
int decoder_len(const decoder *d);
int decoder_capacity(const decoder *d);
/* Starts a new sequence at position 0. */
void decoder_reset(decoder *d);
/* "cpu fp32", "cpu bf16", "cuda fp32" or "cuda bf16". */
const char *decoder_device(const decoder *d);

#endif
