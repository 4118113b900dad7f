/* fuzz_policy_file — the policy file reader (policies/policy_file.c) on
 * arbitrary bytes: it must return 0 with a policy that passes policy_check,
 * or -1 with a message, and never crash or leak. */
#include "policies/policy.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* libconfig 1.5 (Debian 12) leaks its scanner's string buffer (strbuf_append)
 * when a syntax error interrupts some settings; the caller has no handle to
 * free it. The policy is read once, at start, from the operator's file, so
 * the fuzzer ignores leaks inside libconfig and reports every other. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
    return "leak:libconfig.so\n";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 65536) return 0;
    policy p;
    if (policy_parse(&p, (const char *)data, size, "fuzz") == 0 && policy_check(&p) != 0) abort();
    err_clear();
    return 0;
}
