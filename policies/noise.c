/* noise.c — CSPRNG (ChaCha20 keystream) and test-mode Gaussian noise (noise.h). */
#include "policies/noise.h"

#include "util/rng.h"
#include "util/err.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#define NOISE_BUF 4096 /* keystream bytes produced per EVP call */

struct noise_source {
    int crypto;
    /* CSPRNG */
    unsigned char key[NOISE_KEY_LEN];
    EVP_CIPHER_CTX *ctx;
    unsigned char buf[NOISE_BUF];
    size_t pos; /* next unread byte of buf (NOISE_BUF: empty) */
    /* test generator */
    uint64_t state;
    /* Box–Muller yields normals in pairs: the second waits here. */
    int have_spare;
    double spare;
};

int noise_open_seeded(noise_source **out, const policy *pol, uint64_t seed) {
    *out = NULL;
    if (pol->mode != POLICY_MODE_TEST)
        return err_set("a seeded noise generator is only available in the policy's test mode "
                       "(mode = \"test\"); production noise comes from the CSPRNG");
    noise_source *n = calloc(1, sizeof *n);
    if (!n) return err_set("noise: out of memory");
    n->state = seed;
    *out = n;
    return 0;
}

int noise_open(noise_source **out, const policy *pol, const unsigned char *key) {
    if (pol->mode == POLICY_MODE_TEST) return noise_open_seeded(out, pol, pol->test_seed);
    *out = NULL;
    noise_source *n = calloc(1, sizeof *n);
    if (!n) return err_set("noise: out of memory");
    n->crypto = 1;
    n->pos = NOISE_BUF;
    if (key)
        memcpy(n->key, key, NOISE_KEY_LEN);
    else if (RAND_priv_bytes(n->key, NOISE_KEY_LEN) != 1) {
        free(n);
        return err_set("noise: RAND_priv_bytes failed: OpenSSL's DRBG could not be seeded");
    }
    /* ChaCha20 with a zero 128-bit counter‖nonce: key ↦ one keystream, used
     * once (a fresh key per round), read by encrypting zeros. */
    static const unsigned char iv[16] = {0};
    n->ctx = EVP_CIPHER_CTX_new();
    if (!n->ctx || EVP_EncryptInit_ex(n->ctx, EVP_chacha20(), NULL, n->key, iv) != 1) {
        noise_free(n);
        return err_set("noise: cannot set up ChaCha20 (OpenSSL EVP_chacha20)");
    }
    *out = n;
    return 0;
}

void noise_free(noise_source *n) {
    if (!n) return;
    EVP_CIPHER_CTX_free(n->ctx);
    OPENSSL_cleanse(n, sizeof *n);
    free(n);
}

int noise_is_cryptographic(const noise_source *n) {
    return n->crypto;
}

int noise_key(const noise_source *n, unsigned char key[NOISE_KEY_LEN]) {
    if (!n->crypto) return err_set("noise: the test generator has no key");
    memcpy(key, n->key, NOISE_KEY_LEN);
    return 0;
}

static int refill(noise_source *n) {
    static const unsigned char zeros[NOISE_BUF] = {0};
    int len = 0;
    if (EVP_EncryptUpdate(n->ctx, n->buf, &len, zeros, NOISE_BUF) != 1 || len != NOISE_BUF)
        return err_set("noise: ChaCha20 keystream failed");
    n->pos = 0;
    return 0;
}

int noise_bits(noise_source *n, uint64_t *out) {
    if (!n->crypto) {
        *out = rng_next(&n->state);
        return 0;
    }
    if (n->pos + 8 > NOISE_BUF && refill(n) != 0) return -1;
    memcpy(out, n->buf + n->pos, 8);
    n->pos += 8;
    return 0;
}

int noise_gaussian(noise_source *n, double *out, size_t count) {
    size_t i = 0;
    if (count && n->have_spare) {
        out[i++] = n->spare;
        n->have_spare = 0;
    }
    while (i < count) {
        uint64_t b1, b2;
        if (noise_bits(n, &b1) != 0 || noise_bits(n, &b2) != 0) return -1;
        double z0, z1;
        rng_box_muller(b1, b2, &z0, &z1);
        out[i++] = z0;
        if (i < count)
            out[i++] = z1;
        else {
            n->spare = z1;
            n->have_spare = 1;
        }
    }
    return 0;
}

int noise_add(noise_source *n, real *x, int64_t count, double sigma) {
    double z[512];
    for (int64_t j = 0; j < count;) {
        size_t c = (size_t)(count - j < 512 ? count - j : 512);
        if (noise_gaussian(n, z, c) != 0) return -1;
        for (size_t k = 0; k < c; k++) x[j + (int64_t)k] += (real)(sigma * z[k]);
        j += (int64_t)c;
    }
    return 0;
}

int noise_sample(noise_source *n, double q, int N, unsigned char *chosen) {
    if (!(q > 0 && q <= 1)) return err_set("noise: sampling rate %g must be in (0, 1]", q);
    for (int i = 0; i < N; i++) {
        uint64_t b;
        if (noise_bits(n, &b) != 0) return -1;
        chosen[i] = q >= 1 || rng_unit(b) <= q;
    }
    return 0;
}
