/* fuzz_payload_decode: arbitrary bytes into the DELTA payload decoder
 * (wire/payload.h), which the aggregator runs on every opened envelope.
 *
 * Besides "no crash, no leak, no unbounded allocation" (ASan/UBSan and
 * libFuzzer's -rss_limit_mb), it checks that whatever the decoder accepts,
 * the encoder encodes, that the encoding decodes again, and that encoding
 * that gives the same bytes (a canonical form); it traps otherwise. */
#include "wire/payload.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct payload_delta d, d2;
    if (payload_delta_decode(data, size, 1u << 20, &d) != 0) return 0;
    uint8_t *a, *b;
    size_t la, lb;
    if (payload_delta_encode(&d, &a, &la) != 0) __builtin_trap();
    if (payload_delta_decode(a, la, 0, &d2) != 0) __builtin_trap();
    if (payload_delta_encode(&d2, &b, &lb) != 0) __builtin_trap();
    if (la != lb || memcmp(a, b, la) != 0) __builtin_trap();
    payload_delta_free(&d);
    payload_delta_free(&d2);
    free(a);
    free(b);
    return 0;
}
