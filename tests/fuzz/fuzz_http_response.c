/* fuzz_http_response — HTTP responses from untrusted bytes (wire/http.c,
 * what `fedlora status` reads from a status page): the parser must say
 * "complete", "more" or "malformed", never crash, leak or hang, and never
 * hand out a body over its limit. Byte 0 picks the limit (its value times
 * 64) and whether the connection is closed after the bytes; a complete
 * response of a connection still open stays complete when it closes, with
 * the same body. */
#include "wire/http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > (1u << 18)) return 0;
    size_t max_body = (size_t)(data[0] >> 1) * 64;
    int eof = data[0] & 1;
    http_response r;
    int rc = http_response_parse(data + 1, size - 1, eof, max_body, &r);
    if (rc < -1 || rc > 1) abort();
    if (rc != 0) {
        if (r.body) abort();
        return 0;
    }
    if (!r.body || r.body_len > max_body || r.body[r.body_len] != '\0' || r.status < 200 ||
        r.status > 599)
        abort();
    if (!eof) {
        http_response s;
        if (http_response_parse(data + 1, size - 1, 1, max_body, &s) != 0 ||
            s.body_len != r.body_len || memcmp(s.body, r.body, r.body_len) != 0)
            abort();
        http_response_free(&s);
    }
    http_response_free(&r);
    return 0;
}
