/* lora_dropout.h — LoRA dropout's mask, the one definition that the CPU
 * (lora_hook.c) and the CUDA backend (gpu/) both use, so that both draw the
 * same masks bit for bit. Header-only and usable from CUDA (util/rng.h).
 *
 * The mask of module `index` in its `counter`-th training forward has key
 * lora_dropout_key(seed, index, counter); element e (global row · in +
 * column) is kept with probability 1 − p. Nothing is stored: the backward
 * draws the mask again from the same key. */
#ifndef FL_LORA_LORA_DROPOUT_H
#define FL_LORA_LORA_DROPOUT_H

#include "util/rng.h"

#include <stdint.h>

RNG_HD static inline uint64_t lora_dropout_key(uint64_t seed, int index, uint64_t counter) {
    return rng_mix64(rng_mix64(seed ^ 0xD1B54A32D192ED03ull) ^
                     rng_mix64(((uint64_t)index << 40) ^ counter));
}

RNG_HD static inline int lora_dropout_keep(uint64_t key, int64_t e, double p) {
    return rng_unit0(rng_mix64(key + (uint64_t)e * 0x9E3779B97F4A7C15ull)) >= p;
}

#endif
