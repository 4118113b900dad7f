/* fuzz_tokenizer_load — tokenizer.json from untrusted bytes: loading must
 * either succeed or fail with a message, never crash, leak or hang; a
 * tokenizer that loads must encode and decode a fixed text. */
#include "model/tokenizer/tokenizer.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 20)) return 0;
    tokenizer *t = NULL;
    if (tokenizer_load_json((const char *)data, size, "fuzz", &t) != 0) return 0;
    static const char text[] =
        "Hello w\xC3\xB6rld <s>  123456 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80\n\t!";
    tokenizer_ids ids = {0};
    if (tokenizer_encode(t, text, sizeof text - 1, 1, &ids) == 0) {
        char *out;
        size_t n;
        if (tokenizer_decode(t, ids.ids, ids.n, 0, &out, &n) == 0) free(out);
    }
    tokenizer_ids_free(&ids);
    tokenizer_free(t);
    return 0;
}
