/* fuzz_roster_load: arbitrary bytes into the roster parser and verifier
 * (wire/roster.h), the path every roster file from disk takes.
 *
 * Besides "no crash, no leak, no unbounded allocation", it traps when a
 * property fails: whatever roster_parse accepts, roster_encode writes back
 * byte for byte (the format has one canonical form, which is what makes the
 * signature cover exactly what was understood), and a member found by
 * fingerprint has that fingerprint. Verification against a fixed pin must
 * fail or succeed without crashing. */
#include "wire/roster.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    roster r;
    if (roster_parse((const char *)data, size, &r, "fuzz") != 0) return 0;
    char *text;
    size_t len;
    if (roster_encode(&r, &text, &len) != 0) __builtin_trap();
    if (len != size || memcmp(text, data, size) != 0) __builtin_trap();
    free(text);
    for (uint32_t i = 0; i < r.n_members; i++) {
        const roster_member *m = roster_find_member(&r, r.members[i].fp);
        if (!m || memcmp(m->fp, r.members[i].fp, KEYS_FP_LEN) != 0) __builtin_trap();
    }
    static const uint8_t pin[KEYS_FP_LEN] = {1};
    (void)roster_verify(&r, pin, 0);
    (void)roster_verify(&r, r.admin_fp, 3);
    roster_free(&r);
    return 0;
}
