/* crypto — thin, checked wrappers over OpenSSL 3.0 EVP for the primitives the
 * sealed envelope and the identities are made of.
 *
 * Keys cross this interface as raw bytes in the encodings of their RFCs
 * (X25519: RFC 7748 §5, 32-byte little-endian u-coordinates; Ed25519: RFC 8032
 * §5.1.5, the 32-byte private seed and the 32-byte encoded point), so the
 * known-answer vectors of those RFCs can be fed through these very functions.
 * Every call checks every OpenSSL return and reports through util/err.h;
 * secrets on the stack are wiped with OPENSSL_cleanse before returning.
 *
 * AES-256-GCM is exposed as a reusable streaming context because the envelope
 * encrypts many segments under one key: one EVP_CIPHER_CTX keyed once, a fresh
 * 12-byte nonce per segment. Tags are exactly 16 bytes both ways: OpenSSL
 * would verify a truncated tag (EVP_CTRL_GCM_SET_TAG accepts 1..16 bytes),
 * which would let a forger try 2^32 instead of 2^128 guesses, so any other
 * length is refused here before OpenSSL sees it. */
#ifndef FL_WIRE_CRYPTO_H
#define FL_WIRE_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define CRYPTO_SHA256_LEN 32
#define CRYPTO_X25519_LEN 32 /* private scalar, public u-coordinate, shared secret */
#define CRYPTO_ED25519_SEED_LEN 32
#define CRYPTO_ED25519_PUB_LEN 32
#define CRYPTO_ED25519_SIG_LEN 64
#define CRYPTO_GCM_KEY_LEN 32
#define CRYPTO_GCM_NONCE_LEN 12
#define CRYPTO_GCM_TAG_LEN 16

/* CSPRNG (RAND_bytes, OpenSSL's DRBG seeded from the OS). */
int crypto_random(void *buf, size_t n);

/* Constant-time comparison: 1 when equal, 0 otherwise. */
int crypto_equal(const void *a, const void *b, size_t n);

/* Zeroes memory in a way the compiler may not elide (OPENSSL_cleanse). */
void crypto_wipe(void *p, size_t n);

/* SHA-256 (FIPS 180-4), one shot and streaming. */
int crypto_sha256(const void *data, size_t n, uint8_t out[CRYPTO_SHA256_LEN]);

typedef struct crypto_sha256_ctx crypto_sha256_ctx;
int crypto_sha256_new(crypto_sha256_ctx **ctx);
int crypto_sha256_update(crypto_sha256_ctx *ctx, const void *data, size_t n);
/* Writes the digest; the context may then be freed (it is not reset). */
int crypto_sha256_final(crypto_sha256_ctx *ctx, uint8_t out[CRYPTO_SHA256_LEN]);
void crypto_sha256_free(crypto_sha256_ctx *ctx);
/* SHA-256 of a whole file, streamed; *size (when not NULL) gets its bytes. */
int crypto_sha256_file(const char *path, uint8_t out[CRYPTO_SHA256_LEN], uint64_t *size);

/* HKDF-SHA256 (RFC 5869): extract with salt, expand with info to out_len
 * bytes (at most 255 * 32). An empty salt means 32 zero bytes, per §2.2. */
int crypto_hkdf_sha256(const void *salt, size_t salt_len, const void *ikm, size_t ikm_len,
                       const void *info, size_t info_len, uint8_t *out, size_t out_len);

/* X25519 (RFC 7748). keypair draws a fresh private key from the CSPRNG.
 * crypto_x25519 refuses an all-zero shared secret (a small-order peer key,
 * RFC 7748 §6.1 "check"), so a contributory exchange is guaranteed. */
int crypto_x25519_keypair(uint8_t priv[CRYPTO_X25519_LEN], uint8_t pub[CRYPTO_X25519_LEN]);
int crypto_x25519_public(const uint8_t priv[CRYPTO_X25519_LEN], uint8_t pub[CRYPTO_X25519_LEN]);
int crypto_x25519(uint8_t shared[CRYPTO_X25519_LEN], const uint8_t priv[CRYPTO_X25519_LEN],
                  const uint8_t peer_pub[CRYPTO_X25519_LEN]);

/* Ed25519 (RFC 8032, pure: the message is signed as is, no pre-hash). */
int crypto_ed25519_keypair(uint8_t seed[CRYPTO_ED25519_SEED_LEN],
                           uint8_t pub[CRYPTO_ED25519_PUB_LEN]);
int crypto_ed25519_public(const uint8_t seed[CRYPTO_ED25519_SEED_LEN],
                          uint8_t pub[CRYPTO_ED25519_PUB_LEN]);
int crypto_ed25519_sign(uint8_t sig[CRYPTO_ED25519_SIG_LEN],
                        const uint8_t seed[CRYPTO_ED25519_SEED_LEN], const void *msg, size_t n);
/* 0 when the signature is valid for (pub, msg); -1 when it is not or when the
 * public key does not decode; the message says which. */
int crypto_ed25519_verify(const uint8_t sig[CRYPTO_ED25519_SIG_LEN],
                          const uint8_t pub[CRYPTO_ED25519_PUB_LEN], const void *msg, size_t n);

/* AES-256-GCM (NIST SP 800-38D) with 12-byte nonces and 16-byte tags.
 * Usage per message: begin(nonce, aad) → update* → finish_encrypt / finish_decrypt.
 * update may work in place (in == out). For decryption the plaintext written
 * by update is unauthenticated until finish_decrypt returns 0: callers must
 * not release it before. */
typedef struct crypto_gcm crypto_gcm;
int crypto_gcm_new(crypto_gcm **g, const uint8_t key[CRYPTO_GCM_KEY_LEN], int encrypt);
int crypto_gcm_begin(crypto_gcm *g, const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad,
                     size_t aad_len);
int crypto_gcm_update(crypto_gcm *g, const void *in, void *out, size_t n);
int crypto_gcm_finish_encrypt(crypto_gcm *g, uint8_t tag[CRYPTO_GCM_TAG_LEN]);
/* -1 with "authentication failed" when the tag does not match, or with
 * "tag must be exactly 16 bytes" when tag_len != 16 (checked first). */
int crypto_gcm_finish_decrypt(crypto_gcm *g, const uint8_t *tag, size_t tag_len);
void crypto_gcm_free(crypto_gcm *g);

/* One-shot forms over a fresh context (the known-answer tests use them). */
int crypto_aes256gcm_encrypt(const uint8_t key[CRYPTO_GCM_KEY_LEN],
                             const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad,
                             size_t aad_len, const void *pt, size_t n, void *ct,
                             uint8_t tag[CRYPTO_GCM_TAG_LEN]);
int crypto_aes256gcm_decrypt(const uint8_t key[CRYPTO_GCM_KEY_LEN],
                             const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad,
                             size_t aad_len, const void *ct, size_t n, const uint8_t *tag,
                             size_t tag_len, void *pt);

#endif
