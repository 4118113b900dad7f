/* noise — the randomness behind DP-FedAvg: Gaussian noise and member sampling.
 *
 * Production mode draws from a CSPRNG: the ChaCha20 keystream (RFC 8439, via
 * OpenSSL's EVP_chacha20) under a 256-bit key from RAND_priv_bytes, OpenSSL's
 * DRBG for values that must stay secret. The key makes a round's noise
 * reproducible by whoever holds it: the aggregator stores it (mode 0600)
 * with the round's journal, so a crash and replay add the same noise and end
 * in the same model bytes, and deletes it once the version is published (the
 * noise protects members only while it stays secret).
 *
 * A seeded, non-cryptographic generator (rng.h) exists for tests only: it is
 * available only when the policy says mode = "test", and noise_open never
 * returns it for a production policy.
 *
 * Normals: Box–Muller on 53-bit uniforms in (0, 1]. Floating-point samplers
 * leak through their rounding pattern in theory (Mironov 2012, for Laplace);
 * docs/policies.md says what this does and does not defend against. */
#ifndef FL_POLICIES_NOISE_H
#define FL_POLICIES_NOISE_H

#include "model/real.h"
#include "policies/policy.h"

#include <stddef.h>
#include <stdint.h>

#define NOISE_KEY_LEN 32

typedef struct noise_source noise_source;

/* The policy's source: production → ChaCha20 under `key` (NOISE_KEY_LEN
 * bytes, from an earlier noise_key of this round) or, when key is NULL, a
 * fresh key from RAND_priv_bytes; test → the seeded generator from
 * pol->test_seed (key ignored). */
int noise_open(noise_source **out, const policy *pol, const unsigned char *key);
/* The seeded generator; refused unless pol->mode is POLICY_MODE_TEST. */
int noise_open_seeded(noise_source **out, const policy *pol, uint64_t seed);
void noise_free(noise_source *n);

/* 1 for the CSPRNG, 0 for the test generator. */
int noise_is_cryptographic(const noise_source *n);
/* The CSPRNG's key (to persist for replay); -1 for the test generator. */
int noise_key(const noise_source *n, unsigned char key[NOISE_KEY_LEN]);

/* 64 random bits. */
int noise_bits(noise_source *n, uint64_t *out);
/* count standard normals N(0, 1). */
int noise_gaussian(noise_source *n, double *out, size_t count);
/* x[j] += sigma · N(0, 1) for j < count. */
int noise_add(noise_source *n, real *x, int64_t count, double sigma);
/* Poisson sampling (what the RDP analysis of the subsampled Gaussian
 * assumes): chosen[i] = 1 independently with probability q, i < N. */
int noise_sample(noise_source *n, double q, int N, unsigned char *chosen);

#endif
