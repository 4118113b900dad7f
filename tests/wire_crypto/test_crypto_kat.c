/* Known-answer tests of wire/crypto.h, through our own wrappers:
 * X25519 (RFC 7748 §5.2 and §6.1), Ed25519 (RFC 8032 §7.1 tests 1-3),
 * HKDF-SHA256 (RFC 5869 A.1-A.3), AES-256-GCM (McGrew-Viega GCM spec test
 * cases 13-16, the AES-256 ones with 96-bit IVs), SHA-256 (FIPS 180-2 "abc"). */
#include "tests/check.h"
#include "util/err.h"
#include "wire/crypto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Decodes hex into out (at most cap bytes); returns the byte count. */
static size_t unhex(const char *hex, uint8_t *out, size_t cap) {
    size_t n = strlen(hex) / 2;
    if (n > cap) {
        fprintf(stderr, "test vector longer than its buffer\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

static int eq_hex(const uint8_t *got, size_t n, const char *hex) {
    uint8_t want[256];
    size_t wn = unhex(hex, want, sizeof want);
    return wn == n && memcmp(got, want, n) == 0;
}

static void test_sha256(void) {
    uint8_t d[32];
    CHECK_OK(crypto_sha256("abc", 3, d));
    CHECK(eq_hex(d, 32, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    /* Streaming in pieces gives the same digest. */
    crypto_sha256_ctx *c;
    CHECK_OK(crypto_sha256_new(&c));
    CHECK_OK(crypto_sha256_update(c, "a", 1));
    CHECK_OK(crypto_sha256_update(c, "", 0));
    CHECK_OK(crypto_sha256_update(c, "bc", 2));
    uint8_t d2[32];
    CHECK_OK(crypto_sha256_final(c, d2));
    crypto_sha256_free(c);
    CHECK(memcmp(d, d2, 32) == 0);
}

static void x25519_case(const char *scalar, const char *u, const char *out) {
    uint8_t k[32], p[32], r[32];
    unhex(scalar, k, 32);
    unhex(u, p, 32);
    CHECK_OK(crypto_x25519(r, k, p));
    CHECK_MSG(eq_hex(r, 32, out), "X25519(%.16s…, %.16s…)", scalar, u);
}

static void test_x25519(void) {
    /* RFC 7748 §5.2, the two single-multiplication vectors. */
    x25519_case("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
    x25519_case("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957");
    /* §5.2 iterated: k = u = 9; repeat k, u = X25519(k, u), k. */
    uint8_t k[32] = {9}, u[32] = {9}, next[32];
    for (int i = 1; i <= 1000; i++) {
        if (crypto_x25519(next, k, u) != 0) {
            CHECK_MSG(0, "iteration %d: %s", i, err_msg());
            break;
        }
        memcpy(u, k, 32);
        memcpy(k, next, 32);
        if (i == 1)
            CHECK(
                eq_hex(k, 32, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"));
    }
    CHECK(eq_hex(k, 32, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"));

    /* §6.1 Diffie-Hellman: public keys from private keys, shared secret both ways. */
    uint8_t a[32], b[32], apub[32], bpub[32], s1[32], s2[32];
    unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", a, 32);
    unhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb", b, 32);
    CHECK_OK(crypto_x25519_public(a, apub));
    CHECK_OK(crypto_x25519_public(b, bpub));
    CHECK(eq_hex(apub, 32, "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
    CHECK(eq_hex(bpub, 32, "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
    CHECK_OK(crypto_x25519(s1, a, bpub));
    CHECK_OK(crypto_x25519(s2, b, apub));
    const char *shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
    CHECK(eq_hex(s1, 32, shared));
    CHECK(eq_hex(s2, 32, shared));

    /* A small-order peer key (u = 0) gives an all-zero secret: refused. */
    uint8_t zero[32] = {0};
    CHECK_FAILS_WITH(crypto_x25519(s1, a, zero), "X25519 key agreement");

    /* Fresh key pairs agree with each other. */
    uint8_t p1[32], q1[32], p2[32], q2[32];
    CHECK_OK(crypto_x25519_keypair(p1, q1));
    CHECK_OK(crypto_x25519_keypair(p2, q2));
    CHECK(memcmp(p1, p2, 32) != 0);
    CHECK_OK(crypto_x25519(s1, p1, q2));
    CHECK_OK(crypto_x25519(s2, p2, q1));
    CHECK(memcmp(s1, s2, 32) == 0);
}

static void ed25519_case(int n, const char *seed_hex, const char *pub_hex, const char *msg_hex,
                         const char *sig_hex) {
    uint8_t seed[32], pub[32], msg[8], sig[64], want_sig[64];
    unhex(seed_hex, seed, 32);
    size_t mlen = unhex(msg_hex, msg, sizeof msg);
    unhex(sig_hex, want_sig, 64);
    CHECK_OK(crypto_ed25519_public(seed, pub));
    CHECK_MSG(eq_hex(pub, 32, pub_hex), "RFC 8032 test %d public key", n);
    CHECK_OK(crypto_ed25519_sign(sig, seed, msg, mlen));
    CHECK_MSG(memcmp(sig, want_sig, 64) == 0, "RFC 8032 test %d signature", n);
    CHECK_OK(crypto_ed25519_verify(want_sig, pub, msg, mlen));
    /* A flipped bit anywhere in the signature, or another message, is refused. */
    uint8_t bad[64];
    memcpy(bad, want_sig, 64);
    bad[n * 7 % 64] ^= 0x10;
    CHECK_FAILS_WITH(crypto_ed25519_verify(bad, pub, msg, mlen), "not valid");
    uint8_t other[9] = {0};
    memcpy(other, msg, mlen);
    CHECK_FAILS_WITH(crypto_ed25519_verify(want_sig, pub, other, mlen + 1), "not valid");
}

static void test_ed25519(void) {
    ed25519_case(1, "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                 "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
                 "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                 "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
    ed25519_case(2, "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                 "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
                 "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                 "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00");
    ed25519_case(3, "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
                 "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
                 "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
                 "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a");
    uint8_t seed[32], pub[32], sig[64];
    CHECK_OK(crypto_ed25519_keypair(seed, pub));
    CHECK_OK(crypto_ed25519_sign(sig, seed, "hello", 5));
    CHECK_OK(crypto_ed25519_verify(sig, pub, "hello", 5));
}

static void hkdf_case(int n, const uint8_t *ikm, size_t ikm_len, const uint8_t *salt,
                      size_t salt_len, const uint8_t *info, size_t info_len, size_t L,
                      const char *okm_hex) {
    uint8_t okm[82];
    CHECK_OK(crypto_hkdf_sha256(salt, salt_len, ikm, ikm_len, info, info_len, okm, L));
    CHECK_MSG(eq_hex(okm, L, okm_hex), "RFC 5869 A.%d OKM", n);
}

static void test_hkdf(void) {
    uint8_t ikm[80], salt[80], info[80];
    /* A.1: IKM = 0x0b x 22, salt = 0x00..0x0c, info = 0xf0..0xf9, L = 42. */
    memset(ikm, 0x0b, 22);
    for (int i = 0; i < 13; i++) salt[i] = (uint8_t)i;
    for (int i = 0; i < 10; i++) info[i] = (uint8_t)(0xf0 + i);
    hkdf_case(
        1, ikm, 22, salt, 13, info, 10, 42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
    /* A.2: IKM = 0x00..0x4f, salt = 0x60..0xaf, info = 0xb0..0xff, L = 82. */
    for (int i = 0; i < 80; i++) {
        ikm[i] = (uint8_t)i;
        salt[i] = (uint8_t)(0x60 + i);
        info[i] = (uint8_t)(0xb0 + i);
    }
    hkdf_case(2, ikm, 80, salt, 80, info, 80, 82,
              "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
              "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
              "cc30c58179ec3e87c14c01d5c1f3434f1d87");
    /* A.3: IKM = 0x0b x 22, empty salt and info, L = 42. */
    memset(ikm, 0x0b, 22);
    hkdf_case(
        3, ikm, 22, NULL, 0, NULL, 0, 42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
    uint8_t big[8161];
    CHECK_FAILS_WITH(crypto_hkdf_sha256(NULL, 0, ikm, 22, NULL, 0, big, sizeof big), "outside");
}

static void gcm_case(int n, const char *key_hex, const char *iv_hex, const char *pt_hex,
                     const char *aad_hex, const char *ct_hex, const char *tag_hex) {
    uint8_t key[32], iv[12], pt[64], aad[20], ct[64], tag[16], out[64], want_tag[16];
    unhex(key_hex, key, 32);
    unhex(iv_hex, iv, 12);
    size_t n_pt = unhex(pt_hex, pt, sizeof pt);
    size_t n_aad = unhex(aad_hex, aad, sizeof aad);
    unhex(tag_hex, want_tag, 16);
    CHECK_OK(crypto_aes256gcm_encrypt(key, iv, aad, n_aad, pt, n_pt, ct, tag));
    CHECK_MSG(n_pt == 0 || eq_hex(ct, n_pt, ct_hex), "GCM test case %d ciphertext", n);
    CHECK_MSG(memcmp(tag, want_tag, 16) == 0, "GCM test case %d tag", n);
    CHECK_OK(crypto_aes256gcm_decrypt(key, iv, aad, n_aad, ct, n_pt, want_tag, 16, out));
    CHECK_MSG(n_pt == 0 || memcmp(out, pt, n_pt) == 0, "GCM test case %d decryption", n);

    /* Refusals: a flipped tag bit, a flipped ciphertext bit, other AAD, and
     * truncated tags (which OpenSSL alone would check as a prefix). */
    uint8_t bad[16];
    memcpy(bad, want_tag, 16);
    bad[15] ^= 1;
    CHECK_FAILS_WITH(crypto_aes256gcm_decrypt(key, iv, aad, n_aad, ct, n_pt, bad, 16, out),
                     "authentication failed");
    if (n_pt > 0) {
        ct[n_pt / 2] ^= 0x80;
        CHECK_FAILS_WITH(crypto_aes256gcm_decrypt(key, iv, aad, n_aad, ct, n_pt, want_tag, 16, out),
                         "authentication failed");
        ct[n_pt / 2] ^= 0x80;
    }
    CHECK_FAILS_WITH(crypto_aes256gcm_decrypt(key, iv, "x", 1, ct, n_pt, want_tag, 16, out),
                     "authentication failed");
    CHECK_FAILS_WITH(crypto_aes256gcm_decrypt(key, iv, aad, n_aad, ct, n_pt, want_tag, 12, out),
                     "tag must be exactly 16 bytes, got 12");
    CHECK_FAILS_WITH(crypto_aes256gcm_decrypt(key, iv, aad, n_aad, ct, n_pt, want_tag, 4, out),
                     "tag must be exactly 16 bytes, got 4");
    /* The streaming context refuses a short tag the same way. */
    crypto_gcm *g;
    CHECK_OK(crypto_gcm_new(&g, key, 0));
    CHECK_OK(crypto_gcm_begin(g, iv, aad, n_aad));
    CHECK_OK(crypto_gcm_update(g, ct, out, n_pt));
    CHECK_FAILS_WITH(crypto_gcm_finish_decrypt(g, want_tag, 15), "tag must be exactly 16 bytes");
    crypto_gcm_free(g);
}

static void test_gcm(void) {
    const char *zero_key = "0000000000000000000000000000000000000000000000000000000000000000";
    const char *key = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    const char *iv = "cafebabefacedbaddecaf888";
    const char *pt64 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                       "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    const char *ct64 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
                       "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
    const char *pt60 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                       "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
    const char *ct60 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
                       "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
    gcm_case(13, zero_key, "000000000000000000000000", "", "", "",
             "530f8afbc74536b9a963b4f1c4cb738b");
    gcm_case(14, zero_key, "000000000000000000000000", "00000000000000000000000000000000", "",
             "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919");
    gcm_case(15, key, iv, pt64, "", ct64, "b094dac5d93471bdec1a502270e3cc6c");
    gcm_case(16, key, iv, pt60, "feedfacedeadbeeffeedfacedeadbeefabaddad2", ct60,
             "76fc6ece0f4e1768cddf8853bb2d551b");

    /* One context, many messages (how the envelope uses it): test case 16
     * twice in a row gives the same answer. */
    uint8_t k[32], n[12], p[60], a[20], c[60], t[16];
    unhex(key, k, 32);
    unhex(iv, n, 12);
    unhex(pt60, p, 60);
    unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2", a, 20);
    crypto_gcm *g;
    CHECK_OK(crypto_gcm_new(&g, k, 1));
    for (int rep = 0; rep < 2; rep++) {
        CHECK_OK(crypto_gcm_begin(g, n, a, 20));
        CHECK_OK(crypto_gcm_update(g, p, c, 25)); /* in two uneven pieces */
        CHECK_OK(crypto_gcm_update(g, p + 25, c + 25, 35));
        CHECK_OK(crypto_gcm_finish_encrypt(g, t));
        CHECK(eq_hex(c, 60, ct60));
        CHECK(eq_hex(t, 16, "76fc6ece0f4e1768cddf8853bb2d551b"));
    }
    crypto_gcm_free(g);
}

static void test_random(void) {
    uint8_t a[32], b[32], zero[32] = {0};
    CHECK_OK(crypto_random(a, sizeof a));
    CHECK_OK(crypto_random(b, sizeof b));
    CHECK(memcmp(a, b, 32) != 0);
    CHECK(memcmp(a, zero, 32) != 0);
    CHECK(crypto_equal(a, a, 32));
    CHECK(!crypto_equal(a, b, 32));
}

int main(void) {
    test_sha256();
    test_x25519();
    test_ed25519();
    test_hkdf();
    test_gcm();
    test_random();
    return check_finish();
}
