/* ts_http.h — what the status page's tests share: a GET of a path on a
 * base URL (wire/http.h), a raw request for what the client never sends
 * (other methods, bodies), a checker of Prometheus' text exposition format,
 * and a reader of one sample's value from it. Header-only (static inline). */
#ifndef FL_TESTS_SUPPORT_TS_HTTP_H
#define FL_TESTS_SUPPORT_TS_HTTP_H

#include "util/err.h"
#include "wire/http.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* GET base (http://HOST:PORT/) + path; 0 with *r, or -1. */
static inline int ts_http_get(const char *base, const char *path, const char *token,
                              http_response *r) {
    http_url u;
    char full[HTTP_PATH_MAX];
    memset(r, 0, sizeof *r);
    if (http_url_parse(base, &u) != 0) return -1;
    snprintf(full, sizeof full, "/%s", path[0] == '/' ? path + 1 : path);
    return http_get(&u, full, token, 32u << 20, 5000, r);
}

/* Sends `request` as it is to base's host and port and returns the status
 * code of the answer (-1 when none came). */
static inline int ts_http_raw(const char *base, const char *request) {
    http_url u;
    if (http_url_parse(base, &u) != 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(u.port)};
    if (inet_pton(AF_INET, u.host, &a.sin_addr) != 1) return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    int code = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        send(fd, request, strlen(request), MSG_NOSIGNAL) == (ssize_t)strlen(request)) {
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n > 12) {
            buf[n] = '\0';
            if (!strncmp(buf, "HTTP/1.", 7)) code = atoi(buf + 9);
        }
    }
    close(fd);
    return code;
}

/* Is s a Prometheus metric or label name ([a-zA-Z_:][a-zA-Z0-9_:]*, no
 * colon in labels)? Returns its length (0: not one). */
static inline size_t ts_prom_name(const char *s, int label) {
    size_t n = 0;
    while ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') || s[n] == '_' ||
           (!label && s[n] == ':') || (n > 0 && s[n] >= '0' && s[n] <= '9'))
        n++;
    return n;
}

/* Checks text against the text exposition format 0.0.4: every line a
 * "# HELP name text", "# TYPE name counter|gauge|untyped|summary|histogram"
 * or a sample `name{label="value",...} number` whose name had both a HELP
 * and a TYPE line before it, label values escaped (\\ \" \n), numbers as Go's
 * ParseFloat reads them (NaN, +Inf, -Inf included), counters ending in
 * _total, the text ending in a newline. 0, or -1 with why. */
static inline int ts_prom_check(const char *text, char *why, size_t n, int *samples) {
    char help[256][128], type[256][128];
    int nh = 0, nt = 0, line = 0;
    *samples = 0;
    size_t len = strlen(text);
    if (!len || text[len - 1] != '\n') return snprintf(why, n, "does not end in a newline"), -1;
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        char l[2048];
        size_t ll = (size_t)(e - p);
        line++;
        if (ll >= sizeof l) return snprintf(why, n, "line %d too long", line), -1;
        memcpy(l, p, ll);
        l[ll] = '\0';
        p = e + 1;
        if (!strncmp(l, "# HELP ", 7) || !strncmp(l, "# TYPE ", 7)) {
            size_t k = ts_prom_name(l + 7, 0);
            if (!k || l[7 + k] != ' ' || k >= 128)
                return snprintf(why, n, "line %d: bad metric name: %.80s", line, l), -1;
            char name[128];
            memcpy(name, l + 7, k);
            name[k] = '\0';
            if (l[2] == 'T') {
                const char *t = l + 8 + k;
                if (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "untyped") &&
                    strcmp(t, "summary") && strcmp(t, "histogram"))
                    return snprintf(why, n, "line %d: unknown type '%.40s'", line, t), -1;
                if (!strcmp(t, "counter") && (k < 6 || strcmp(name + k - 6, "_total")))
                    return snprintf(why, n, "line %d: counter %s does not end in _total", line,
                                    name),
                           -1;
                if (nt < 256) snprintf(type[nt++], 128, "%s", name);
            } else if (nh < 256) {
                snprintf(help[nh++], 128, "%s", name);
            }
            continue;
        }
        if (l[0] == '#') return snprintf(why, n, "line %d: unknown comment: %.80s", line, l), -1;
        size_t k = ts_prom_name(l, 0);
        if (!k || k >= 128) return snprintf(why, n, "line %d: bad sample: %.80s", line, l), -1;
        char name[128];
        memcpy(name, l, k);
        name[k] = '\0';
        int has_help = 0, has_type = 0;
        for (int i = 0; i < nh; i++) has_help |= !strcmp(help[i], name);
        for (int i = 0; i < nt; i++) has_type |= !strcmp(type[i], name);
        if (!has_help || !has_type)
            return snprintf(why, n, "line %d: %s has no HELP or TYPE before it", line, name), -1;
        const char *q = l + k;
        if (*q == '{') {
            q++;
            while (*q != '}') {
                size_t lk = ts_prom_name(q, 1);
                if (!lk || q[lk] != '=' || q[lk + 1] != '"')
                    return snprintf(why, n, "line %d: bad label: %.80s", line, l), -1;
                q += lk + 2;
                while (*q && *q != '"') {
                    if (*q == '\\') {
                        if (q[1] != '\\' && q[1] != '"' && q[1] != 'n')
                            return snprintf(why, n, "line %d: bad escape", line), -1;
                        q++;
                    }
                    q++;
                }
                if (*q != '"') return snprintf(why, n, "line %d: unterminated label", line), -1;
                q++;
                if (*q == ',')
                    q++;
                else if (*q != '}')
                    return snprintf(why, n, "line %d: bad label list", line), -1;
            }
            q++;
        }
        if (*q != ' ') return snprintf(why, n, "line %d: no space before the value", line), -1;
        q++;
        char *end;
        if (strcmp(q, "NaN") && strcmp(q, "+Inf") && strcmp(q, "-Inf")) {
            double v = strtod(q, &end);
            (void)v;
            if (end == q || (*end && *end != ' '))
                return snprintf(why, n, "line %d: bad value '%.40s'", line, q), -1;
        }
        (*samples)++;
    }
    return 0;
}

/* The value of the sample written exactly `series` (name and labels as the
 * page writes them, e.g. `fedlora_members{state="pending"}`); NAN when it is
 * not there. */
static inline double ts_prom_value(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, series, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

#endif
