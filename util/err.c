#include "util/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char err_buf[ERR_MSG_MAX];

/* err_buf = a + ": " + b, cut to fit (a long message is still useful cut). */
static void append_two(const char *a, const char *b) {
    size_t n = strlen(a);
    if (n >= sizeof err_buf) n = sizeof err_buf - 1;
    memmove(err_buf, a, n);
    const char *parts[2] = {": ", b};
    for (int i = 0; i < 2; i++)
        for (const char *p = parts[i]; *p && n + 1 < sizeof err_buf; p++) err_buf[n++] = *p;
    err_buf[n] = '\0';
}

int err_set(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return -1;
}

int err_errno(const char *fmt, ...) {
    int saved = errno;
    char what[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    append_two(what, strerror(saved));
    return -1;
}

int err_context(const char *fmt, ...) {
    char prefix[ERR_MSG_MAX];
    char old[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_buf, sizeof old);
    append_two(prefix, old);
    return -1;
}

const char *err_msg(void) {
    return err_buf;
}

void err_clear(void) {
    err_buf[0] = '\0';
}
