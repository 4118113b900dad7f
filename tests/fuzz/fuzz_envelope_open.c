/* libFuzzer target: arbitrary bytes as a sealed envelope, opened by the
 * fixture aggregator through every entry point (in memory, streaming in
 * uneven reads, and verify without the private key). Nothing may crash,
 * leak, or allocate beyond the limits; a refusal must come with a status.
 *
 * Seeds (tests/fuzz/corpus/fuzz_envelope_open/) are valid envelopes sealed
 * with the fixture keys: `test_envelope --write-fuzz-seeds DIR`. */
#include "tests/wire_crypto/envelope_fixture.h"
#include "wire/envelope.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    size_t len, pos, step;
} fuzz_reader;

static int fuzz_read(void *arg, void *buf, size_t cap, size_t *got) {
    fuzz_reader *r = arg;
    size_t n = r->len - r->pos;
    if (n > cap) n = cap;
    if (n > r->step) n = r->step;
    if (n) memcpy(buf, r->p + r->pos, n);
    r->pos += n;
    *got = n;
    return 0;
}

static int fuzz_discard(void *arg, const void *buf, size_t n) {
    size_t *total = arg;
    (void)buf;
    *total += n;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        fixture_init();
        ready = 1;
    }
    const keys_secret *agg = &fixture_keys[FX_AGG];
    /* Accept any round and type so that mutations get past the context
     * checks into the cryptographic ones; bound what may be allocated. */
    envelope_expect x = fixture_expect(1 << 16);
    x.round_min = 0;
    x.round_max = UINT64_MAX;
    x.check_payload_type = 0;

    uint8_t *pt = NULL;
    size_t n = 0;
    envelope_status st = ENVELOPE_OK;
    int rc = envelope_open_mem(&x, agg, data, size, &pt, &n, NULL, NULL, &st);
    if ((rc == 0) != (st == ENVELOPE_OK) || (rc != 0 && pt != NULL)) abort();
    if (rc == 0 && n > x.max_payload) abort();
    free(pt);

    size_t released = 0;
    fuzz_reader r = {data, size, 0, 1 + size % 997};
    rc = envelope_open(&x, agg, fuzz_read, &r, fuzz_discard, &released, NULL, NULL, &st);
    if ((rc == 0) != (st == ENVELOPE_OK) || released > x.max_payload) abort();

    r = (fuzz_reader){data, size, 0, 4096};
    rc = envelope_verify(&x, agg->pub.kx_pub, fuzz_read, &r, NULL, NULL, &st);
    if ((rc == 0) != (st == ENVELOPE_OK)) abort();
    return 0;
}
