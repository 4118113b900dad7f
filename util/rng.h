/* rng — the project's one seeded generator, for what must be reproducible
 * and need not be secret: weight and adapter initialisation, LoRA dropout
 * masks, the data order and held-out split, sampling, DARE's drop masks
 * (`fedlora merge --seed`), the randomized SVD's test matrix, DP noise in a
 * policy's explicit test mode (production DP noise comes from
 * policies/noise.h's CSPRNG) and retry jitter. Header-only and usable from
 * CUDA C (RNG_HD), so a kernel draws the same values as the CPU.
 *
 * SplitMix64 (Steele, Lea, Flood 2014, as in java.util.SplittableRandom):
 * a 64-bit counter stepped by the golden-ratio increment, finalised with
 * Stafford's "Mix13" — also used as a counter-based hash, so element j of
 * stream (seed, a, b) is one call, independent of evaluation order. */
#ifndef FL_UTIL_RNG_H
#define FL_UTIL_RNG_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define RNG_HD __host__ __device__
#else
#define RNG_HD
#endif

RNG_HD static inline uint64_t rng_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

RNG_HD static inline uint64_t rng_next(uint64_t *state) {
    *state += UINT64_C(0x9e3779b97f4a7c15);
    return rng_mix64(*state);
}

/* The value at position j of the stream keyed by (seed, a, b). */
RNG_HD static inline uint64_t rng_at(uint64_t seed, uint64_t a, uint64_t b, uint64_t j) {
    uint64_t k = rng_mix64(seed ^ rng_mix64(a + UINT64_C(0x9e3779b97f4a7c15) * (b + 1)));
    return rng_mix64(k + UINT64_C(0x9e3779b97f4a7c15) * (j + 1));
}

/* 53 random bits as a double in (0, 1]: never 0, so log() is safe. */
RNG_HD static inline double rng_unit(uint64_t bits) {
    return (double)((bits >> 11) + 1) * 0x1.0p-53;
}

/* 53 random bits as a double in [0, 1): k / 2^53. */
RNG_HD static inline double rng_unit0(uint64_t bits) {
    return (double)(bits >> 11) * 0x1.0p-53;
}

/* Box–Muller (1958): two independent standard normals from two uniforms. */
static inline void rng_box_muller(uint64_t b1, uint64_t b2, double *z0, double *z1) {
    double r = sqrt(-2.0 * log(rng_unit(b1)));
    double t = 6.283185307179586476925 * rng_unit(b2);
    *z0 = r * cos(t);
    *z1 = r * sin(t);
}

#endif
