/* Fixed identities and an expected-context for envelope tests and the
 * envelope fuzz target, so that seeds written by one are opened by the other.
 * The keys are deterministic (a repeated byte as the private key): fine for
 * tests, never for use. */
#ifndef FL_TESTS_ENVELOPE_FIXTURE_H
#define FL_TESTS_ENVELOPE_FIXTURE_H

#include "util/err.h"
#include "wire/crypto.h"
#include "wire/envelope.h"
#include "wire/keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Index into fixture_keys[]. */
enum { FX_UNI_A, FX_UNI_B, FX_AGG, FX_AGG_OLD, FX_OUTSIDER, FX_COUNT };

static keys_secret fixture_keys[FX_COUNT];
static const uint8_t FIXTURE_CONSORTIUM[ENVELOPE_CONSORTIUM_LEN] =
    "fedlora-test-consortium-0000001";
#define FIXTURE_PAYLOAD_TYPE 7
#define FIXTURE_ROUND 42

static inline void fixture_init(void) {
    static const char *names[FX_COUNT] = {"uni-a", "uni-b", "aggregator", "aggregator-old",
                                          "outsider"};
    for (int i = 0; i < FX_COUNT; i++) {
        keys_secret *k = &fixture_keys[i];
        memset(k, 0, sizeof *k);
        snprintf(k->pub.name, sizeof k->pub.name, "%s", names[i]);
        memset(k->sign_seed, 0x11 * (i + 1), 32);
        memset(k->kx_priv, 0x22 + 0x11 * i, 32);
        if (crypto_ed25519_public(k->sign_seed, k->pub.sign_pub) != 0 ||
            crypto_x25519_public(k->kx_priv, k->pub.kx_pub) != 0) {
            fprintf(stderr, "fixture keys: %s\n", err_msg());
            exit(2);
        }
    }
}

/* The roster: every fixture identity except the outsider. */
static inline int fixture_lookup(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out) {
    (void)arg;
    for (int i = 0; i < FX_COUNT; i++) {
        if (i == FX_OUTSIDER) continue;
        uint8_t f[KEYS_FP_LEN];
        if (keys_fingerprint(&fixture_keys[i].pub, f) != 0) return -1;
        if (memcmp(f, fp, KEYS_FP_LEN) == 0) {
            *out = fixture_keys[i].pub;
            return 1;
        }
    }
    return 0;
}

static inline envelope_params fixture_params(uint64_t payload_size, uint32_t segment_size) {
    envelope_params p;
    memset(&p, 0, sizeof p);
    memcpy(p.consortium, FIXTURE_CONSORTIUM, sizeof p.consortium);
    p.round = FIXTURE_ROUND;
    p.payload_type = FIXTURE_PAYLOAD_TYPE;
    p.segment_size = segment_size;
    p.payload_size = payload_size;
    return p;
}

/* What the aggregator of the fixture consortium accepts. */
static inline envelope_expect fixture_expect(uint64_t max_payload) {
    envelope_expect x;
    memset(&x, 0, sizeof x);
    memcpy(x.consortium, FIXTURE_CONSORTIUM, sizeof x.consortium);
    x.round_min = x.round_max = FIXTURE_ROUND;
    x.check_payload_type = 1;
    x.payload_type = FIXTURE_PAYLOAD_TYPE;
    x.max_payload = max_payload;
    x.lookup = fixture_lookup;
    return x;
}

#endif
