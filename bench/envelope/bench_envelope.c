/* bench_envelope — sealed-envelope throughput on one thread.
 *
 * Seals a payload (default 1 GiB) streamed from a generator into memory,
 * then opens it streamed from memory into a discarding sink, and verifies it
 * (signature only). For scale it also times the two primitives every payload
 * byte goes through, over the same bytes and segment size: AES-256-GCM alone
 * (our crypto_gcm wrapper, in place) and SHA-256 alone. GB/s are 10^9 bytes
 * of payload per second, the unit of `openssl speed` ("1000s of bytes").
 *
 * Each measurement is repeated (--reps, default 3) and the fastest kept: on
 * a shared machine the fastest run is the one least disturbed by others.
 *
 * usage: bench_envelope [--size BYTES] [--segment BYTES] [--reps N] */
#include "bench/bench.h"
#include "util/err.h"
#include "wire/crypto.h"
#include "wire/envelope.h"
#include "wire/keys.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PATTERN (1u << 20)
static uint8_t pattern[PATTERN];

/* The payload: the random pattern repeated (a memcpy per read, as a file
 * reader would cost at least). */
typedef struct {
    uint64_t pos, len;
} gen;

static int gen_read(void *arg, void *buf, size_t cap, size_t *got) {
    gen *g = arg;
    size_t n = g->len - g->pos < cap ? (size_t)(g->len - g->pos) : cap;
    for (size_t done = 0; done < n;) {
        size_t off = (size_t)((g->pos + done) % PATTERN), k = PATTERN - off;
        if (k > n - done) k = n - done;
        memcpy((uint8_t *)buf + done, pattern + off, k);
        done += k;
    }
    g->pos += n;
    *got = n;
    return 0;
}

typedef struct {
    uint8_t *p;
    size_t len, pos;
} membuf;

static int mem_write(void *arg, const void *buf, size_t n) {
    membuf *m = arg;
    if (n > m->len - m->pos) return err_set("bench buffer overflow");
    memcpy(m->p + m->pos, buf, n);
    m->pos += n;
    return 0;
}

static int mem_read(void *arg, void *buf, size_t cap, size_t *got) {
    membuf *m = arg;
    size_t n = m->len - m->pos < cap ? m->len - m->pos : cap;
    memcpy(buf, m->p + m->pos, n);
    m->pos += n;
    *got = n;
    return 0;
}

static int discard(void *arg, const void *buf, size_t n) {
    uint64_t *total = arg;
    (void)buf;
    *total += n;
    return 0;
}

static keys_public roster_one;
static int lookup(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out) {
    uint8_t f[KEYS_FP_LEN];
    (void)arg;
    if (keys_fingerprint(&roster_one, f) != 0) return -1;
    if (memcmp(f, fp, KEYS_FP_LEN) != 0) return 0;
    *out = roster_one;
    return 1;
}

static void die(const char *what) {
    fprintf(stderr, "bench_envelope: %s: %s\n", what, err_msg());
    exit(1);
}

int main(int argc, char **argv) {
    uint64_t size = 1ull << 30;
    uint32_t seg = ENVELOPE_SEGMENT_DEFAULT;
    int reps = 3;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 < argc && !strcmp(argv[i], "--size"))
            size = strtoull(argv[i + 1], NULL, 10);
        else if (i + 1 < argc && !strcmp(argv[i], "--segment"))
            seg = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (i + 1 < argc && !strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else
            return fprintf(stderr, "usage: bench_envelope [--size BYTES] [--segment BYTES] "
                                   "[--reps N]\n"),
                   2;
    }
    if (reps < 1) reps = 1;
    keys_secret sender, agg;
    if (crypto_random(pattern, sizeof pattern) != 0 || keys_generate("bench-node", &sender) != 0 ||
        keys_generate("bench-aggregator", &agg) != 0)
        die("setup");
    roster_one = sender.pub;
    uint64_t total;
    if (envelope_sealed_size(size, seg, &total) != 0) die("size");
    membuf sealed = {malloc(total), (size_t)total, 0};
    if (!sealed.p)
        return fprintf(stderr, "bench_envelope: no memory for %llu bytes\n",
                       (unsigned long long)total),
               1;
    /* Fault the pages in before timing (non-zero: malloc + memset(0) may be
     * turned into calloc, which leaves them untouched). */
    memset(sealed.p, 0xa5, sealed.len);

    envelope_params p = {.round = 1, .payload_type = 1, .segment_size = seg, .payload_size = size};
    envelope_expect x = {.round_min = 1, .round_max = 1, .max_payload = size, .lookup = lookup};
    double t_seal = 1e30, t_open = 1e30, t_verify = 1e30, t_gcm = 1e30, t_sha = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        gen g = {0, size};
        sealed.pos = 0;
        double t0 = bench_now();
        if (envelope_seal(&p, &sender, agg.pub.kx_pub, gen_read, &g, mem_write, &sealed, NULL) != 0)
            die("seal");
        t_seal = fmin(t_seal, bench_now() - t0);

        uint64_t out = 0;
        sealed.pos = 0;
        t0 = bench_now();
        if (envelope_open(&x, &agg, mem_read, &sealed, discard, &out, NULL, NULL, NULL) != 0)
            die("open");
        t_open = fmin(t_open, bench_now() - t0);
        if (out != size) {
            fprintf(stderr, "bench_envelope: opened %llu bytes\n", (unsigned long long)out);
            return 1;
        }
        sealed.pos = 0;
        t0 = bench_now();
        if (envelope_verify(&x, agg.pub.kx_pub, mem_read, &sealed, NULL, NULL, NULL) != 0)
            die("verify");
        t_verify = fmin(t_verify, bench_now() - t0);

        /* The primitives alone, over the sealed buffer in segment-sized
         * pieces (this overwrites it: it is sealed afresh next rep). */
        uint8_t key[32] = {1}, nonce[12] = {2}, tag[16];
        crypto_gcm *gcm;
        if (crypto_gcm_new(&gcm, key, 1) != 0) die("gcm");
        t0 = bench_now();
        for (uint64_t off = 0; off < size; off += seg) {
            size_t n = size - off < seg ? (size_t)(size - off) : seg;
            if (crypto_gcm_begin(gcm, nonce, NULL, 0) != 0 ||
                crypto_gcm_update(gcm, sealed.p + off, sealed.p + off, n) != 0 ||
                crypto_gcm_finish_encrypt(gcm, tag) != 0)
                die("gcm");
        }
        t_gcm = fmin(t_gcm, bench_now() - t0);
        crypto_gcm_free(gcm);
        crypto_sha256_ctx *sha;
        uint8_t digest[32];
        if (crypto_sha256_new(&sha) != 0) die("sha256");
        t0 = bench_now();
        for (uint64_t off = 0; off < size; off += seg) {
            size_t n = size - off < seg ? (size_t)(size - off) : seg;
            if (crypto_sha256_update(sha, sealed.p + off, n) != 0) die("sha256");
        }
        if (crypto_sha256_final(sha, digest) != 0) die("sha256");
        t_sha = fmin(t_sha, bench_now() - t0);
        crypto_sha256_free(sha);
    }

    double gb = (double)size / 1e9;
    printf("payload %llu bytes, segment %u bytes, sealed %llu bytes, 1 thread, best of %d\n",
           (unsigned long long)size, seg, (unsigned long long)total, reps);
    printf("seal            %7.3f s  %6.3f GB/s\n", t_seal, gb / t_seal);
    printf("open            %7.3f s  %6.3f GB/s\n", t_open, gb / t_open);
    printf("seal+open       %7.3f s  %6.3f GB/s per operation (2 x payload / total time)\n",
           t_seal + t_open, 2 * gb / (t_seal + t_open));
    printf("verify (no key) %7.3f s  %6.3f GB/s\n", t_verify, gb / t_verify);
    printf("AES-256-GCM     %7.3f s  %6.3f GB/s (crypto_gcm alone, in place)\n", t_gcm, gb / t_gcm);
    printf("SHA-256         %7.3f s  %6.3f GB/s (alone)\n", t_sha, gb / t_sha);
    printf("GCM+SHA bound   %17.3f GB/s (1 / (1/GCM + 1/SHA): one pass does both)\n",
           gb / (t_gcm + t_sha));
    /* One line for scripts. */
    printf("RESULT seal=%.4f open=%.4f sealopen=%.4f verify=%.4f gcm=%.4f sha256=%.4f\n",
           gb / t_seal, gb / t_open, 2 * gb / (t_seal + t_open), gb / t_verify, gb / t_gcm,
           gb / t_sha);
    keys_secret_wipe(&sender);
    keys_secret_wipe(&agg);
    free(sealed.p);
    return 0;
}
