/* fuzz_keys_public — a partner's public identity file (wire/keys.c,
 * keys_parse_public): the admin who onboards a university receives it by
 * mail or from a web page, so its bytes are untrusted.
 *
 * Besides "no crash, no leak", it traps when a property fails: the format
 * has one canonical form, so whatever parses is written back by
 * keys_format_public byte for byte, and its fingerprint can be taken. */
#include "wire/keys.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    keys_public p;
    if (keys_parse_public((const char *)data, size, &p, "fuzz") != 0) return 0;
    char text[KEYS_ID_FILE_MAX + 1];
    if (keys_format_public(&p, text, sizeof text) != 0) __builtin_trap();
    if (strlen(text) != size || memcmp(text, data, size) != 0) __builtin_trap();
    uint8_t fp[KEYS_FP_LEN];
    if (keys_fingerprint(&p, fp) != 0) __builtin_trap();
    return 0;
}
