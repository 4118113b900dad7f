/* fuzz_status_json — /status.json from untrusted bytes (aggregator/status.c,
 * what `fedlora status` reads from a status page): status_from_json must
 * succeed or fail with a message, never crash, leak or hang. A view that
 * reads is rendered every way (terminal, HTML, Prometheus) and written back:
 * reading what was written gives the same JSON again (the round trip). */
#include "aggregator/status.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 20)) return 0;
    status_view *v = NULL;
    int64_t now;
    if (status_from_json((const char *)data, size, &v, &now) != 0) {
        if (v) abort();
        return 0;
    }
    char *out = NULL, *again = NULL;
    size_t len, len2;
    if (status_text(v, now, 80, &out, &len) != 0 || strlen(out) != len) abort();
    free(out);
    if (status_html(v, now, 5, &out, &len) != 0 || strlen(out) != len) abort();
    free(out);
    if (status_prometheus(v, now, &out, &len) != 0 || strlen(out) != len) abort();
    free(out);
    if (status_to_json(v, now, &out, &len) != 0) abort();
    status_view *w = NULL;
    int64_t now2;
    if (status_from_json(out, len, &w, &now2) != 0 || now2 != now ||
        status_to_json(w, now2, &again, &len2) != 0 || len2 != len || memcmp(out, again, len))
        abort();
    free(out);
    free(again);
    status_free(w);
    status_free(v);
    return 0;
}
