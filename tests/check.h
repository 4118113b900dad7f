/* check.h — the assertion helpers every C test uses.
 *
 * CHECK keeps going after a failure so one run shows every broken case; the
 * test's main returns check_finish(), which prints "N passed, N failed" and
 * a non-zero status when anything failed. */
#ifndef FL_TESTS_CHECK_H
#define FL_TESTS_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (cond) {                                                                                \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* A call that must succeed (status 0); on failure shows err_msg(). */
#define CHECK_OK(call) CHECK_MSG((call) == 0, "%s", err_msg())

/* A call that must fail, with an error message containing `needle`. */
#define CHECK_FAILS_WITH(call, needle)                                                             \
    do {                                                                                           \
        err_clear();                                                                               \
        int check_rc_ = (call);                                                                    \
        CHECK_MSG(check_rc_ != 0 && strstr(err_msg(), (needle)) != NULL,                           \
                  "rc=%d, message '%s', wanted one containing '%s'", check_rc_, err_msg(),         \
                  (needle));                                                                       \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", (double)(a),      \
              (double)(b), (double)(tol))

static inline int check_finish(void) {
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
