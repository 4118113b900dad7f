/* fuzz_msg_decode: arbitrary bytes into the message decoder, the TENSORS
 * decoder and the bounded msgpack validator.
 *
 * Besides "no crash, no leak, no unbounded allocation" (ASan/UBSan and
 * libFuzzer's -rss_limit_mb), it checks three properties and traps when one
 * fails:
 *   - whatever msg_decode accepts, msg_encode can encode, and decoding that
 *     encoding and encoding again gives the same bytes (a canonical form);
 *   - the same for TENSORS payloads;
 *   - whatever mp_validate accepts, msgpack-c parses to the end as well
 *     (the validator is stricter than msgpack-c, never looser). */
#include "wire/mp.h"
#include "wire/msg.h"

#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_message(const uint8_t *data, size_t size) {
    struct msg m, m2;
    if (msg_decode(data, size, NULL, &m) != 0) return;
    uint8_t *a, *b;
    size_t la, lb;
    if (msg_encode(&m, &a, &la) != 0) __builtin_trap();
    if (msg_decode(a, la, NULL, &m2) != 0) __builtin_trap();
    if (msg_encode(&m2, &b, &lb) != 0) __builtin_trap();
    if (la != lb || memcmp(a, b, la) != 0) __builtin_trap();
    free(a);
    free(b);
}

static void check_tensors(const uint8_t *data, size_t size) {
    struct msg_tensor *t, *t2;
    size_t n, n2;
    if (msg_tensors_decode(data, size, NULL, &t, &n) != 0) return;
    uint8_t *a, *b;
    size_t la, lb;
    if (msg_tensors_encode(t, n, &a, &la) != 0) __builtin_trap();
    if (msg_tensors_decode(a, la, NULL, &t2, &n2) != 0 || n2 != n) __builtin_trap();
    if (msg_tensors_encode(t2, n2, &b, &lb) != 0) __builtin_trap();
    if (la != lb || memcmp(a, b, la) != 0) __builtin_trap();
    free(t);
    free(t2);
    free(a);
    free(b);
}

static void check_against_msgpack_c(const uint8_t *data, size_t size) {
    if (mp_validate(data, size, &MSG_LIMITS) != 0) return;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack_next(&u, (const char *)data, size, &off);
    if (rc != MSGPACK_UNPACK_SUCCESS || off != size) __builtin_trap();
    msgpack_unpacked_destroy(&u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_message(data, size);
    check_tensors(data, size);
    check_against_msgpack_c(data, size);
    return 0;
}
