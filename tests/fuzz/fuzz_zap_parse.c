/* fuzz_zap_parse — the ZAP request (RFC 27) a CURVE aggregator's handler
 * reads (wire/transport.c, transport_zap_parse). libzmq makes the request,
 * but its fields come from the peer's handshake (the key, the routing id),
 * so they are parsed as untrusted bytes.
 *
 * The input is a list of frames, each a length byte and that many bytes
 * (at most TRANSPORT_FRAMES_MAX frames). Besides "no crash, no leak", it
 * traps when a property fails: what parses has a request id of at most 255
 * bytes, a printable NUL-terminated address, and, for CURVE, exactly the
 * 32 key bytes of the last frame. */
#include "wire/transport.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    struct transport_frame f[TRANSPORT_FRAMES_MAX];
    size_t n = 0, pos = 0;
    while (pos < size && n < TRANSPORT_FRAMES_MAX) {
        size_t len = data[pos++];
        if (len > size - pos) len = size - pos;
        f[n++] = (struct transport_frame){data + pos, len};
        pos += len;
    }
    struct transport_zap_request q;
    if (transport_zap_parse(f, n, &q) != 0) return 0;
    if (q.request_id_len > TRANSPORT_ZAP_FIELD_MAX || q.request_id_len != f[1].len)
        __builtin_trap();
    for (const char *c = q.address; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) __builtin_trap();
    if (!strcmp(q.mechanism, "CURVE") &&
        (n != 7 || f[6].len != 32 || memcmp(q.client_key, f[6].data, 32) != 0))
        __builtin_trap();
    return 0;
}
