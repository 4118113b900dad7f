/* err — one readable error message per thread, SQLite style.
 *
 * Functions that can fail return a status (0 ok, -1 failure) and leave the
 * reason here; the caller adds context on the way up ("loading model dir X: "),
 * and the CLI prints the whole sentence once, on stderr. A message should say
 * what failed, where (file, offset, field) and what to do about it. */
#ifndef FL_UTIL_ERR_H
#define FL_UTIL_ERR_H

#include <stddef.h>

#define ERR_MSG_MAX 1024

#if defined(__GNUC__)
#define ERR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ERR_PRINTF(a, b)
#endif

/* Sets the message (replacing any earlier one) and returns -1, so that
 * `return err_set("…");` reads naturally. */
int err_set(const char *fmt, ...) ERR_PRINTF(1, 2);
/* As err_set, with ": strerror(errno)" appended. */
int err_errno(const char *fmt, ...) ERR_PRINTF(1, 2);
/* Puts context in front of the current message and returns -1. */
int err_context(const char *fmt, ...) ERR_PRINTF(1, 2);
/* The current message ("" when none). */
const char *err_msg(void);
void err_clear(void);

#endif
