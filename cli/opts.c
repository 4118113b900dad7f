#include "cli/opts.h"

#include "util/err.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *opts_cmd = "";

static int usage_error(const char *usage, const char *fmt, const char *arg) {
    fprintf(stderr, "fedlora %s: ", opts_cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage);
    return 2;
}

int opts_parse_all(int argc, char **argv, const opts_spec *spec, int n, const char *usage,
                   const char **positional, int max_positional, int *n_positional) {
    opts_cmd = argc > 0 ? argv[0] : "";
    if (n_positional) *n_positional = 0;
    unsigned long long seen = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (!positional || *n_positional >= max_positional)
                return usage_error(usage, "unexpected argument '%s'", a);
            positional[(*n_positional)++] = a;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int k = 0;
        while (k < n && !(strlen(spec[k].name) == len && !strncmp(spec[k].name, name, len))) k++;
        if (k == n) return usage_error(usage, "unknown option '%s'", a);
        if (!spec[k].list && k < 64 && (seen >> k & 1))
            return usage_error(usage, "option '%s' given twice", a);
        if (k < 64) seen |= 1ull << k;
        if (spec[k].list) {
            if (!eq && i + 1 >= argc) return usage_error(usage, "option '%s' needs a value", a);
            if (*spec[k].count >= spec[k].max)
                return usage_error(usage, "option '%s' given too many times", a);
            spec[k].list[(*spec[k].count)++] = eq ? eq + 1 : argv[++i];
        } else if (spec[k].flag) {
            if (eq) return usage_error(usage, "option '%s' takes no value", a);
            *spec[k].flag = 1;
        } else if (eq) {
            *spec[k].value = eq + 1;
        } else {
            if (i + 1 >= argc) return usage_error(usage, "option '%s' needs a value", a);
            *spec[k].value = argv[++i];
        }
    }
    return -1;
}

int opts_parse(int argc, char **argv, const opts_spec *spec, int n, const char *usage) {
    return opts_parse_all(argc, argv, spec, n, usage, NULL, 0, NULL);
}

int opts_missing(const char *usage, const char *what) {
    return usage_error(usage, "missing %s", what);
}

int opts_fail(void) {
    fprintf(stderr, "fedlora %s: %s\n", opts_cmd, err_msg());
    return 1;
}

int opts_catch_stop(void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return err_errno("installing the SIGTERM/SIGINT handlers");
    return 0;
}

int opts_int(const char *s, const char *name, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return err_set("%s must be an integer from %lld to %lld, got '%s'", name, lo, hi, s);
    *out = v;
    return 0;
}

int opts_double(const char *s, const char *name, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
        return err_set("%s must be a number from %g to %g, got '%s'", name, lo, hi, s);
    *out = v;
    return 0;
}
