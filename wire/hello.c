/* hello — signing and checking HELLO (hello.h). */
#include "wire/hello.h"

#include "util/err.h"
#include "wire/crypto.h"

#include <string.h>

static const char CONTEXT[] = "fedlora hello v1\n";

/* The signed bytes (hello.h); out holds at least HELLO_SIGNED_MAX. */
#define HELLO_SIGNED_MAX (sizeof CONTEXT - 1 + 32 + MSG_HASH_LEN + 8 + MSG_NAME_MAX)

static size_t signed_bytes(const struct msg_hello *h, const uint8_t consortium[32],
                           uint8_t out[HELLO_SIGNED_MAX]) {
    size_t n = 0, name = strnlen(h->name, MSG_NAME_MAX);
    memcpy(out, CONTEXT, sizeof CONTEXT - 1);
    n += sizeof CONTEXT - 1;
    memcpy(out + n, consortium, 32);
    n += 32;
    memcpy(out + n, h->fingerprint, MSG_HASH_LEN);
    n += MSG_HASH_LEN;
    for (int i = 7; i >= 0; i--) out[n++] = (uint8_t)(h->time >> (8 * i));
    memcpy(out + n, h->name, name);
    return n + name;
}

int hello_sign(struct msg_hello *h, const uint8_t consortium[32], const keys_secret *k,
               uint64_t now) {
    uint8_t fp[KEYS_FP_LEN], msg[HELLO_SIGNED_MAX];
    if (keys_fingerprint(&k->pub, fp) < 0) return -1;
    if (memcmp(fp, h->fingerprint, KEYS_FP_LEN) != 0)
        return err_set("HELLO names another identity than the key signing it");
    h->time = now;
    size_t n = signed_bytes(h, consortium, msg);
    return crypto_ed25519_sign(h->sig, k->sign_seed, msg, n) < 0 ? err_context("signing HELLO") : 0;
}

int hello_verify(const struct msg_hello *h, const uint8_t consortium[32], const keys_public *pub,
                 uint64_t now, uint64_t max_skew_s) {
    uint8_t msg[HELLO_SIGNED_MAX];
    size_t n = signed_bytes(h, consortium, msg);
    if (crypto_ed25519_verify(h->sig, pub->sign_pub, msg, n) < 0)
        return err_set("HELLO from '%s': the signature does not verify with the roster's key for "
                       "that identity (another key, another consortium, or altered on the way)",
                       h->name);
    uint64_t d = h->time > now ? h->time - now : now - h->time;
    if (d > max_skew_s)
        return err_set("HELLO from '%s': its clock is %llu s %s the aggregator's (at most %llu s "
                       "allowed); synchronise the clock (NTP) — `fedlora doctor` shows the skew",
                       h->name, (unsigned long long)d, h->time > now ? "ahead of" : "behind",
                       (unsigned long long)max_skew_s);
    return 0;
}
