#include "wire/crypto.h"

#include "util/err.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/* OpenSSL keeps its own error queue; fold its newest entry into our message
 * and clear the queue so a later failure does not report a stale reason. */
static int ossl_fail(const char *what) {
    unsigned long e = ERR_get_error();
    char reason[256] = "no OpenSSL reason given";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    return err_set("%s failed (%s)", what, reason);
}

int crypto_random(void *buf, size_t n) {
    /* RAND_bytes takes an int count. */
    unsigned char *p = buf;
    while (n > 0) {
        int chunk = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(p, chunk) != 1) return ossl_fail("RAND_bytes (the system CSPRNG)");
        p += chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

int crypto_equal(const void *a, const void *b, size_t n) {
    return CRYPTO_memcmp(a, b, n) == 0;
}

void crypto_wipe(void *p, size_t n) {
    OPENSSL_cleanse(p, n);
}

/* ---- SHA-256 ------------------------------------------------------------------ */

struct crypto_sha256_ctx {
    EVP_MD_CTX *md;
};

int crypto_sha256_new(crypto_sha256_ctx **out) {
    *out = NULL;
    crypto_sha256_ctx *c = calloc(1, sizeof *c);
    if (!c) return err_set("out of memory for a SHA-256 context");
    c->md = EVP_MD_CTX_new();
    if (!c->md) {
        free(c);
        return ossl_fail("EVP_MD_CTX_new");
    }
    if (EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) != 1) {
        crypto_sha256_free(c);
        return ossl_fail("EVP_DigestInit_ex(SHA-256)");
    }
    *out = c;
    return 0;
}

int crypto_sha256_update(crypto_sha256_ctx *c, const void *data, size_t n) {
    if (n > 0 && EVP_DigestUpdate(c->md, data, n) != 1)
        return ossl_fail("EVP_DigestUpdate(SHA-256)");
    return 0;
}

int crypto_sha256_final(crypto_sha256_ctx *c, uint8_t out[CRYPTO_SHA256_LEN]) {
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(c->md, out, &len) != 1) return ossl_fail("EVP_DigestFinal_ex(SHA-256)");
    if (len != CRYPTO_SHA256_LEN) return err_set("SHA-256 returned %u bytes, expected 32", len);
    return 0;
}

void crypto_sha256_free(crypto_sha256_ctx *c) {
    if (!c) return;
    EVP_MD_CTX_free(c->md);
    free(c);
}

int crypto_sha256(const void *data, size_t n, uint8_t out[CRYPTO_SHA256_LEN]) {
    crypto_sha256_ctx *c;
    if (crypto_sha256_new(&c) != 0) return -1;
    int rc = crypto_sha256_update(c, data, n);
    if (rc == 0) rc = crypto_sha256_final(c, out);
    crypto_sha256_free(c);
    return rc;
}

/* ---- HKDF-SHA256 --------------------------------------------------------------- */

int crypto_hkdf_sha256(const void *salt, size_t salt_len, const void *ikm, size_t ikm_len,
                       const void *info, size_t info_len, uint8_t *out, size_t out_len) {
    if (out_len == 0 || out_len > 255 * CRYPTO_SHA256_LEN)
        return err_set("HKDF-SHA256 output length %zu is outside 1..8160 (RFC 5869 §2.3)", out_len);
    /* RFC 5869 §2.2: an absent salt is HashLen zeros. Passing it explicitly
     * keeps the behaviour independent of how the provider treats "no salt". */
    static const uint8_t zero_salt[CRYPTO_SHA256_LEN];
    if (salt_len == 0) {
        salt = zero_salt;
        salt_len = sizeof zero_salt;
    }
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    if (!kdf) return ossl_fail("EVP_KDF_fetch(HKDF)");
    EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (!kctx) return ossl_fail("EVP_KDF_CTX_new(HKDF)");
    /* OSSL_PARAM wants non-const pointers; the KDF only reads them. An empty
     * info is passed as a zero-length octet string. */
    static const uint8_t empty[1];
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)(info_len ? info : empty),
                                          info_len),
        OSSL_PARAM_construct_end(),
    };
    int ok = EVP_KDF_derive(kctx, out, out_len, params) == 1;
    EVP_KDF_CTX_free(kctx);
    if (!ok) return ossl_fail("EVP_KDF_derive(HKDF-SHA256)");
    return 0;
}

/* ---- X25519 and Ed25519 -------------------------------------------------------- */

/* Raw private bytes → EVP_PKEY (OpenSSL derives and caches the public part). */
static EVP_PKEY *pkey_from_private(int type, const uint8_t *priv, const char *what) {
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(type, NULL, priv, 32);
    if (!k) ossl_fail(what);
    return k;
}

static int pkey_public_bytes(EVP_PKEY *k, uint8_t pub[32], const char *what) {
    size_t len = 32;
    if (EVP_PKEY_get_raw_public_key(k, pub, &len) != 1) return ossl_fail(what);
    if (len != 32) return err_set("%s returned %zu bytes, expected 32", what, len);
    return 0;
}

static int pkey_generate(int type, uint8_t priv[32], uint8_t pub[32], const char *name) {
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_id(type, NULL);
    if (!pctx) return ossl_fail(name);
    EVP_PKEY *k = NULL;
    int ok = EVP_PKEY_keygen_init(pctx) == 1 && EVP_PKEY_keygen(pctx, &k) == 1;
    EVP_PKEY_CTX_free(pctx);
    if (!ok) return ossl_fail(name);
    size_t len = 32;
    int rc = 0;
    if (EVP_PKEY_get_raw_private_key(k, priv, &len) != 1 || len != 32)
        rc = ossl_fail("EVP_PKEY_get_raw_private_key");
    if (rc == 0) rc = pkey_public_bytes(k, pub, "EVP_PKEY_get_raw_public_key");
    EVP_PKEY_free(k);
    if (rc != 0) crypto_wipe(priv, 32);
    return rc;
}

int crypto_x25519_keypair(uint8_t priv[CRYPTO_X25519_LEN], uint8_t pub[CRYPTO_X25519_LEN]) {
    return pkey_generate(EVP_PKEY_X25519, priv, pub, "X25519 key generation");
}

int crypto_x25519_public(const uint8_t priv[CRYPTO_X25519_LEN], uint8_t pub[CRYPTO_X25519_LEN]) {
    EVP_PKEY *k = pkey_from_private(EVP_PKEY_X25519, priv, "loading an X25519 private key");
    if (!k) return -1;
    int rc = pkey_public_bytes(k, pub, "X25519 public key derivation");
    EVP_PKEY_free(k);
    return rc;
}

int crypto_x25519(uint8_t shared[CRYPTO_X25519_LEN], const uint8_t priv[CRYPTO_X25519_LEN],
                  const uint8_t peer_pub[CRYPTO_X25519_LEN]) {
    EVP_PKEY *k = pkey_from_private(EVP_PKEY_X25519, priv, "loading an X25519 private key");
    if (!k) return -1;
    EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub, 32);
    if (!peer) {
        EVP_PKEY_free(k);
        return ossl_fail("loading the peer's X25519 public key");
    }
    int rc = 0;
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new(k, NULL);
    size_t len = CRYPTO_X25519_LEN;
    /* OpenSSL's derive fails on an all-zero result (small-order peer key). */
    if (!pctx || EVP_PKEY_derive_init(pctx) != 1 || EVP_PKEY_derive_set_peer(pctx, peer) != 1 ||
        EVP_PKEY_derive(pctx, shared, &len) != 1)
        rc = ossl_fail("X25519 key agreement (a small-order or invalid peer key is refused)");
    else if (len != CRYPTO_X25519_LEN)
        rc = err_set("X25519 returned %zu bytes, expected 32", len);
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(peer);
    EVP_PKEY_free(k);
    if (rc != 0) crypto_wipe(shared, CRYPTO_X25519_LEN);
    return rc;
}

int crypto_ed25519_keypair(uint8_t seed[CRYPTO_ED25519_SEED_LEN],
                           uint8_t pub[CRYPTO_ED25519_PUB_LEN]) {
    return pkey_generate(EVP_PKEY_ED25519, seed, pub, "Ed25519 key generation");
}

int crypto_ed25519_public(const uint8_t seed[CRYPTO_ED25519_SEED_LEN],
                          uint8_t pub[CRYPTO_ED25519_PUB_LEN]) {
    EVP_PKEY *k = pkey_from_private(EVP_PKEY_ED25519, seed, "loading an Ed25519 private key");
    if (!k) return -1;
    int rc = pkey_public_bytes(k, pub, "Ed25519 public key derivation");
    EVP_PKEY_free(k);
    return rc;
}

int crypto_ed25519_sign(uint8_t sig[CRYPTO_ED25519_SIG_LEN],
                        const uint8_t seed[CRYPTO_ED25519_SEED_LEN], const void *msg, size_t n) {
    EVP_PKEY *k = pkey_from_private(EVP_PKEY_ED25519, seed, "loading an Ed25519 private key");
    if (!k) return -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t len = CRYPTO_ED25519_SIG_LEN;
    int rc = 0;
    /* Pure Ed25519: no digest (NULL md) and a one-shot sign over the message. */
    if (!md || EVP_DigestSignInit(md, NULL, NULL, NULL, k) != 1 ||
        EVP_DigestSign(md, sig, &len, msg, n) != 1)
        rc = ossl_fail("Ed25519 signing");
    else if (len != CRYPTO_ED25519_SIG_LEN)
        rc = err_set("Ed25519 signature is %zu bytes, expected 64", len);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    return rc;
}

int crypto_ed25519_verify(const uint8_t sig[CRYPTO_ED25519_SIG_LEN],
                          const uint8_t pub[CRYPTO_ED25519_PUB_LEN], const void *msg, size_t n) {
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
    if (!k) return ossl_fail("decoding the Ed25519 public key");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestVerifyInit(md, NULL, NULL, NULL, k) != 1) {
        EVP_MD_CTX_free(md);
        EVP_PKEY_free(k);
        return ossl_fail("Ed25519 verification setup");
    }
    int v = EVP_DigestVerify(md, sig, CRYPTO_ED25519_SIG_LEN, msg, n);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    ERR_clear_error(); /* a bad signature leaves a queue entry we do not need */
    if (v != 1) return err_set("Ed25519 signature is not valid for this key and message");
    return 0;
}

/* ---- AES-256-GCM ------------------------------------------------------------------ */

struct crypto_gcm {
    EVP_CIPHER_CTX *c;
    int encrypt;
};

int crypto_gcm_new(crypto_gcm **out, const uint8_t key[CRYPTO_GCM_KEY_LEN], int encrypt) {
    *out = NULL;
    crypto_gcm *g = calloc(1, sizeof *g);
    if (!g) return err_set("out of memory for an AES-256-GCM context");
    g->encrypt = encrypt ? 1 : 0;
    g->c = EVP_CIPHER_CTX_new();
    /* Key once; each message then only sets its nonce (begin). The default
     * GCM IV length is already 12 bytes; set it anyway so the intent is
     * explicit and a provider with another default cannot surprise us. */
    if (!g->c || EVP_CipherInit_ex(g->c, EVP_aes_256_gcm(), NULL, NULL, NULL, g->encrypt) != 1 ||
        EVP_CIPHER_CTX_ctrl(g->c, EVP_CTRL_GCM_SET_IVLEN, CRYPTO_GCM_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(g->c, NULL, NULL, key, NULL, g->encrypt) != 1) {
        crypto_gcm_free(g);
        return ossl_fail("AES-256-GCM setup");
    }
    *out = g;
    return 0;
}

int crypto_gcm_begin(crypto_gcm *g, const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad,
                     size_t aad_len) {
    if (EVP_CipherInit_ex(g->c, NULL, NULL, NULL, nonce, g->encrypt) != 1)
        return ossl_fail("AES-256-GCM nonce setup");
    if (aad_len > (size_t)INT_MAX)
        return err_set("AES-256-GCM AAD of %zu bytes is too long", aad_len);
    int outl = 0;
    if (aad_len > 0 && EVP_CipherUpdate(g->c, NULL, &outl, aad, (int)aad_len) != 1)
        return ossl_fail("AES-256-GCM AAD");
    return 0;
}

int crypto_gcm_update(crypto_gcm *g, const void *in, void *out, size_t n) {
    const unsigned char *src = in;
    unsigned char *dst = out;
    /* EVP takes int lengths; GCM is a stream mode, so outl == inl. */
    while (n > 0) {
        int chunk = n > (size_t)(1 << 30) ? 1 << 30 : (int)n;
        int outl = 0;
        if (EVP_CipherUpdate(g->c, dst, &outl, src, chunk) != 1)
            return ossl_fail(g->encrypt ? "AES-256-GCM encryption" : "AES-256-GCM decryption");
        if (outl != chunk)
            return err_set("AES-256-GCM produced %d bytes for %d bytes of input", outl, chunk);
        src += chunk;
        dst += chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

int crypto_gcm_finish_encrypt(crypto_gcm *g, uint8_t tag[CRYPTO_GCM_TAG_LEN]) {
    if (!g->encrypt) return err_set("crypto_gcm_finish_encrypt on a decryption context");
    unsigned char dummy[16];
    int outl = 0;
    if (EVP_EncryptFinal_ex(g->c, dummy, &outl) != 1 || outl != 0)
        return ossl_fail("AES-256-GCM finish");
    if (EVP_CIPHER_CTX_ctrl(g->c, EVP_CTRL_GCM_GET_TAG, CRYPTO_GCM_TAG_LEN, tag) != 1)
        return ossl_fail("AES-256-GCM get tag");
    return 0;
}

/* OpenSSL would check a 4..16-byte prefix of the tag; we never let it. */
static int check_tag_len(size_t tag_len) {
    if (tag_len == CRYPTO_GCM_TAG_LEN) return 0;
    return err_set("AES-256-GCM tag must be exactly 16 bytes, got %zu: truncated tags are refused "
                   "(they weaken forgery resistance)",
                   tag_len);
}

int crypto_gcm_finish_decrypt(crypto_gcm *g, const uint8_t *tag, size_t tag_len) {
    if (g->encrypt) return err_set("crypto_gcm_finish_decrypt on an encryption context");
    if (check_tag_len(tag_len) != 0) return -1;
    /* SET_TAG takes a non-const pointer but only copies from it. */
    if (EVP_CIPHER_CTX_ctrl(g->c, EVP_CTRL_GCM_SET_TAG, CRYPTO_GCM_TAG_LEN, (void *)tag) != 1)
        return ossl_fail("AES-256-GCM set tag");
    unsigned char dummy[16];
    int outl = 0;
    if (EVP_DecryptFinal_ex(g->c, dummy, &outl) != 1) {
        ERR_clear_error();
        return err_set("AES-256-GCM authentication failed (ciphertext, tag, nonce or AAD altered)");
    }
    return 0;
}

void crypto_gcm_free(crypto_gcm *g) {
    if (!g) return;
    EVP_CIPHER_CTX_free(g->c); /* also cleanses the key schedule */
    free(g);
}

int crypto_aes256gcm_encrypt(const uint8_t key[CRYPTO_GCM_KEY_LEN],
                             const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad,
                             size_t aad_len, const void *pt, size_t n, void *ct,
                             uint8_t tag[CRYPTO_GCM_TAG_LEN]) {
    crypto_gcm *g;
    if (crypto_gcm_new(&g, key, 1) != 0) return -1;
    int rc = crypto_gcm_begin(g, nonce, aad, aad_len);
    if (rc == 0) rc = crypto_gcm_update(g, pt, ct, n);
    if (rc == 0) rc = crypto_gcm_finish_encrypt(g, tag);
    crypto_gcm_free(g);
    return rc;
}

int crypto_aes256gcm_decrypt(const uint8_t key[CRYPTO_GCM_KEY_LEN],
                             const uint8_t nonce[CRYPTO_GCM_NONCE_LEN], const void *aad,
                             size_t aad_len, const void *ct, size_t n, const uint8_t *tag,
                             size_t tag_len, void *pt) {
    if (check_tag_len(tag_len) != 0) return -1;
    crypto_gcm *g;
    if (crypto_gcm_new(&g, key, 0) != 0) return -1;
    int rc = crypto_gcm_begin(g, nonce, aad, aad_len);
    if (rc == 0) rc = crypto_gcm_update(g, ct, pt, n);
    if (rc == 0) rc = crypto_gcm_finish_decrypt(g, tag, tag_len);
    crypto_gcm_free(g);
    if (rc != 0) crypto_wipe(pt, n);
    return rc;
}

/* Read in 1 MiB pieces: memory stays bounded whatever the file's size. */
int crypto_sha256_file(const char *path, uint8_t hash[CRYPTO_SHA256_LEN], uint64_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno("opening %s", path);
    crypto_sha256_ctx *ctx = NULL;
    size_t cap = 1u << 20;
    uint8_t *buf = malloc(cap);
    uint64_t total = 0;
    int rc = -1;
    if (!buf) {
        err_set("out of memory hashing %s", path);
        goto done;
    }
    if (crypto_sha256_new(&ctx) < 0) goto done;
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            err_errno("reading %s", path);
            goto done;
        }
        if (n == 0) break;
        if (crypto_sha256_update(ctx, buf, (size_t)n) < 0) goto done;
        total += (uint64_t)n;
    }
    if (crypto_sha256_final(ctx, hash) < 0) goto done;
    if (size) *size = total;
    rc = 0;
done:
    crypto_sha256_free(ctx);
    free(buf);
    close(fd);
    return rc;
}
