/* sampler — the next token from a row of logits, as `fedlora generate`
 * picks it.
 *
 * Greedy (argmax, the lowest id on ties) when the temperature is 0;
 * otherwise p_v ∝ exp((logit_v − max) / temperature) in double, cut to the
 * nucleus (Holtzman et al. 2020: the smallest set of most likely tokens,
 * taken by probability then id, whose mass reaches top_p of the total), and
 * one draw u ∈ [0, mass) from a SplitMix64 stream seeded by the caller,
 * walked down that ordered set. The same logits, settings and seed give the
 * same tokens on every machine.
 *
 * The nucleus is found with a binary heap over the vocabulary (built in
 * O(V), then one pop per nucleus member) rather than a sort of all V
 * candidates: a trained model's nucleus holds a handful of tokens, and a
 * sort of 50 k candidates per token cost several milliseconds — more than a
 * decoding step on a GPU. Heap and sort give the candidates in the same
 * order, so the picks are the same bits as a sort's (tests/decode/). */
#ifndef FL_GENERATE_SAMPLER_H
#define FL_GENERATE_SAMPLER_H

#include "model/real.h"

#include <stdint.h>

typedef struct sampler sampler;

/* A sampler for rows of V logits; temperature >= 0, top_p in (0, 1]. */
int sampler_create(sampler **out, int V, double temperature, double top_p, uint64_t seed);
void sampler_free(sampler *s);

/* The next token id in [0, V) for logits (V); -1, with a message, when a
 * logit is NaN or infinite. */
int sampler_next(sampler *s, const real *logits);

#endif
