/* http — the status page's GET client (http.h). */
#include "wire/http.h"

#include "util/err.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- URLs ------------------------------------------------------------------------------------ */

int http_url_parse(const char *url, http_url *u) {
    memset(u, 0, sizeof *u);
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return err_set("URL \"%s\": spaces and control characters are not allowed (character "
                           "%zu)",
                           url, (size_t)(p - url) + 1);
    if (!strncasecmp(url, "https://", 8))
        return err_set("%s: https is not supported: the status page speaks plain HTTP, meant for "
                       "loopback; reach a remote aggregator's page through an SSH tunnel (ssh -L "
                       "8470:127.0.0.1:8470 HOST) and use http://127.0.0.1:8470/",
                       url);
    if (strncasecmp(url, "http://", 7) != 0)
        return err_set("URL \"%s\" must start with http://", url);
    const char *h = url + 7, *path = strchr(h, '/');
    size_t hl = path ? (size_t)(path - h) : strlen(h);
    if (memchr(h, '@', hl)) return err_set("URL \"%s\": user names in URLs are not supported", url);
    const char *port_s = NULL;
    if (hl && h[0] == '[') {
        const char *end = memchr(h, ']', hl);
        if (!end || end == h + 1) return err_set("URL \"%s\": unterminated [IPv6 address]", url);
        if ((size_t)(end - h - 1) > HTTP_HOST_MAX) return err_set("URL \"%s\": host too long", url);
        memcpy(u->host, h + 1, (size_t)(end - h - 1));
        u->ipv6 = 1;
        if (end + 1 < h + hl) {
            if (end[1] != ':') return err_set("URL \"%s\": expected ':' after ']'", url);
            port_s = end + 2;
        }
    } else {
        const char *colon = memchr(h, ':', hl);
        size_t n = colon ? (size_t)(colon - h) : hl;
        if (n == 0 || n > HTTP_HOST_MAX) return err_set("URL \"%s\": no host, or too long", url);
        for (size_t i = 0; i < n; i++)
            if (!((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') ||
                  (h[i] >= '0' && h[i] <= '9') || h[i] == '.' || h[i] == '-'))
                return err_set("URL \"%s\": '%c' is not allowed in a host name", url, h[i]);
        memcpy(u->host, h, n);
        if (colon) port_s = colon + 1;
    }
    u->port = 80;
    if (port_s) {
        long port = 0;
        const char *end = h + hl;
        if (port_s == end) return err_set("URL \"%s\": empty port", url);
        for (const char *p = port_s; p < end; p++) {
            if (*p < '0' || *p > '9' || port > 65535)
                return err_set("URL \"%s\": the port must be a number from 1 to 65535", url);
            port = port * 10 + (*p - '0');
        }
        if (port < 1 || port > 65535)
            return err_set("URL \"%s\": the port must be a number from 1 to 65535", url);
        u->port = (uint16_t)port;
    }
    if (!path) path = "/";
    if (strchr(path, '#')) return err_set("URL \"%s\": fragments (#) are not supported", url);
    if (strlen(path) > HTTP_PATH_MAX) return err_set("URL \"%s\": path too long", url);
    snprintf(u->path, sizeof u->path, "%s", path);
    return 0;
}

/* ---- responses ---------------------------------------------------------------------------------
 */

void http_response_free(http_response *r) {
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* The end of the line starting at p (its '\n'), or NULL when it has none
 * before end. */
static const uint8_t *line_end(const uint8_t *p, const uint8_t *end) {
    return memchr(p, '\n', (size_t)(end - p));
}

static int is_tchar(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Parses the decimal or hex number in [p, end) (no sign, no overflow). */
static int parse_uint(const uint8_t *p, const uint8_t *end, int base, uint64_t *v) {
    if (p == end || end - p > 19) return -1;
    *v = 0;
    for (; p < end; p++) {
        int d = *p >= '0' && *p <= '9'                 ? *p - '0'
                : base == 16 && *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                : base == 16 && *p >= 'A' && *p <= 'F' ? *p - 'A' + 10
                                                       : -1;
        if (d < 0) return -1;
        *v = *v * (uint64_t)base + (uint64_t)d;
    }
    return 0;
}

/* Decodes a chunked body from p: 0 with the body, 1 when incomplete, -1
 * malformed. */
static int dechunk(const uint8_t *p, const uint8_t *end, size_t max_body, http_response *out) {
    size_t total = 0;
    char *body = NULL;
    for (int pass = 0; pass < 2; pass++) {
        /* Pass 0 checks and measures; pass 1 copies into a body of that size. */
        const uint8_t *q = p;
        total = 0;
        for (;;) {
            const uint8_t *nl = line_end(q, end);
            if (!nl) return end - q > 1024 ? err_set("HTTP chunk size line too long") : 1;
            const uint8_t *e = q;
            while (e < nl && ((*e >= '0' && *e <= '9') || (*e >= 'a' && *e <= 'f') ||
                              (*e >= 'A' && *e <= 'F')))
                e++;
            uint64_t size;
            if (parse_uint(q, e, 16, &size) != 0 || (e < nl && *e != ';' && *e != '\r'))
                return err_set("HTTP response: malformed chunk size");
            q = nl + 1;
            if (size == 0) {
                /* Trailer lines, then an empty line. */
                for (;;) {
                    const uint8_t *t = line_end(q, end);
                    if (!t) return 1;
                    int empty = t == q || (t == q + 1 && *q == '\r');
                    q = t + 1;
                    if (empty) break;
                }
                break;
            }
            if (size > max_body - total)
                return err_set("HTTP response body is over the %zu bytes accepted", max_body);
            if ((uint64_t)(end - q) < size + 1) return 1;
            if (pass == 1) memcpy(body + total, q, (size_t)size);
            total += (size_t)size;
            q += size;
            if (*q == '\r') {
                if (end - q < 2) return 1;
                q++;
            }
            if (*q != '\n') return err_set("HTTP response: a chunk is longer than its size says");
            q++;
        }
        if (pass == 0 && !(body = malloc(total + 1))) return err_set("out of memory");
    }
    body[total] = '\0';
    out->body = body;
    out->body_len = total;
    return 0;
}

int http_response_parse(const uint8_t *buf, size_t len, int eof, size_t max_body,
                        http_response *out) {
    memset(out, 0, sizeof *out);
    const uint8_t *end = buf + len, *p = buf;
    /* The head: status line, headers, empty line. */
    const uint8_t *head_end = NULL;
    for (const uint8_t *q = buf; q < end;) {
        const uint8_t *nl = line_end(q, end);
        if (!nl) break;
        if (nl == q || (nl == q + 1 && *q == '\r')) {
            head_end = nl + 1;
            break;
        }
        q = nl + 1;
    }
    if (!head_end) {
        if (len > HTTP_HEADER_MAX)
            return err_set("HTTP response headers are over %d bytes", HTTP_HEADER_MAX);
        return eof ? err_set("HTTP response: the connection closed %s",
                             len ? "inside the headers" : "without a response")
                   : 1;
    }
    if (head_end - buf > HTTP_HEADER_MAX)
        return err_set("HTTP response headers are over %d bytes", HTTP_HEADER_MAX);
    /* HTTP/1.x SP 3DIGIT SP reason */
    const uint8_t *nl = line_end(p, end);
    if (nl - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
        p[8] != ' ' || p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' ||
        p[11] > '9' || (nl - p > 12 && p[12] != ' ' && p[12] != '\r'))
        return err_set("not an HTTP/1.x response (status line \"%.*s\")",
                       (int)(nl - p > 40 ? 40 : nl - p), (const char *)p);
    out->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (out->status < 200)
        return err_set("HTTP response: unexpected interim status %d", out->status);
    int chunked = 0, has_length = 0, nheaders = 0;
    uint64_t length = 0;
    for (p = nl + 1; p < head_end;) {
        nl = line_end(p, head_end);
        const uint8_t *le = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
        if (le == p) break; /* the empty line */
        if (++nheaders > HTTP_HEADERS_MAX)
            return err_set("HTTP response has more than %d headers", HTTP_HEADERS_MAX);
        if (*p == ' ' || *p == '\t')
            return err_set("HTTP response: folded header lines are not allowed (RFC 9112 5.2)");
        const uint8_t *colon = p;
        while (colon < le && is_tchar(*colon)) colon++;
        if (colon == p || colon == le || *colon != ':')
            return err_set("HTTP response: malformed header line");
        const uint8_t *v = colon + 1, *ve = le;
        while (v < ve && (*v == ' ' || *v == '\t')) v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        for (const uint8_t *c = v; c < ve; c++)
            if (*c < 0x20 && *c != '\t') return err_set("HTTP response: control byte in a header");
        size_t nlen = (size_t)(colon - p), vlen = (size_t)(ve - v);
        if (nlen == 17 && !strncasecmp((const char *)p, "transfer-encoding", 17)) {
            if (vlen != 7 || strncasecmp((const char *)v, "chunked", 7) != 0)
                return err_set("HTTP response: transfer coding \"%.*s\" is not supported",
                               (int)(vlen > 40 ? 40 : vlen), (const char *)v);
            chunked = 1;
        } else if (nlen == 14 && !strncasecmp((const char *)p, "content-length", 14)) {
            uint64_t l;
            if (parse_uint(v, ve, 10, &l) != 0 || (has_length && l != length))
                return err_set("HTTP response: invalid Content-Length");
            length = l;
            has_length = 1;
        } else if (nlen == 12 && !strncasecmp((const char *)p, "content-type", 12)) {
            snprintf(out->content_type, sizeof out->content_type, "%.*s",
                     (int)(vlen < sizeof out->content_type ? vlen : sizeof out->content_type - 1),
                     (const char *)v);
        }
        p = nl + 1;
    }
    if (chunked && has_length)
        return err_set("HTTP response has both Content-Length and chunked coding (RFC 9112 6.3)");
    int rc;
    if (out->status == 204 || out->status == 304) {
        rc = (out->body = calloc(1, 1)) ? 0 : err_set("out of memory");
    } else if (chunked) {
        rc = dechunk(head_end, end, max_body, out);
        if (rc == 1 && eof) rc = err_set("HTTP response: the connection closed inside the body");
    } else {
        size_t have = (size_t)(end - head_end);
        if (has_length && length > max_body)
            return err_set("HTTP response body is %llu bytes, over the %zu accepted",
                           (unsigned long long)length, max_body);
        if (!has_length && have > max_body)
            return err_set("HTTP response body is over the %zu bytes accepted", max_body);
        if (has_length && have < length)
            return eof ? err_set("HTTP response: the connection closed after %zu of %llu body "
                                 "bytes",
                                 have, (unsigned long long)length)
                       : 1;
        if (!has_length && !eof) return 1; /* the body ends with the connection */
        size_t n = has_length ? (size_t)length : have;
        out->body = malloc(n + 1);
        if (!out->body) return err_set("out of memory");
        memcpy(out->body, head_end, n);
        out->body[n] = '\0';
        out->body_len = n;
        rc = 0;
    }
    if (rc != 0) http_response_free(out);
    return rc;
}

/* ---- the exchange -------------------------------------------------------------------------------
 */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Waits for events on fd until the deadline: 0 ready, -1 timed out / error. */
static int wait_fd(int fd, short events, double deadline, const char *what) {
    for (;;) {
        int left = (int)(deadline - now_ms());
        if (left <= 0) return err_set("%s: no answer in time", what);
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, left);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return err_errno("%s: poll", what);
    }
}

static int connect_to(const http_url *u, double deadline, int *out) {
    char port[8], where[HTTP_HOST_MAX + 16];
    snprintf(port, sizeof port, "%u", u->port);
    snprintf(where, sizeof where, u->ipv6 ? "[%s]:%s" : "%s:%s", u->host, port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(u->host, port, &hints, &res);
    if (g != 0) return err_set("cannot resolve %s: %s", u->host, gai_strerror(g));
    int rc = -1;
    for (struct addrinfo *ai = res; ai && rc != 0; ai = ai->ai_next) {
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err_errno("socket");
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            err_errno("cannot connect to %s", where);
            close(fd);
            continue;
        }
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (wait_fd(fd, POLLOUT, deadline, where) != 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
            if (soerr) errno = soerr, err_errno("cannot connect to %s", where);
            close(fd);
            continue;
        }
        *out = fd;
        rc = 0;
    }
    freeaddrinfo(res);
    return rc;
}

int http_get(const http_url *u, const char *path, const char *token, size_t max_body,
             int timeout_ms, http_response *out) {
    memset(out, 0, sizeof *out);
    double deadline = now_ms() + timeout_ms;
    char req[HTTP_PATH_MAX + HTTP_HOST_MAX + 512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s%s%s:%u\r\nUser-Agent: fedlora-status\r\n"
                     "Accept: */*\r\nConnection: close\r\n%s%s%s\r\n",
                     path ? path : u->path, u->ipv6 ? "[" : "", u->host, u->ipv6 ? "]" : "",
                     u->port, token && *token ? "Authorization: Bearer " : "",
                     token && *token ? token : "", token && *token ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req) return err_set("HTTP request too long");
    int fd = -1;
    if (connect_to(u, deadline, &fd) != 0) return -1;
    int rc = -1;
    for (size_t sent = 0; sent < (size_t)n;) {
        if (wait_fd(fd, POLLOUT, deadline, u->host) != 0) goto done;
        ssize_t w = send(fd, req + sent, (size_t)n - sent, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            err_errno("sending to %s", u->host);
            goto done;
        }
        if (w > 0) sent += (size_t)w;
    }
    /* Room for the head, the body and chunk framing; never more. */
    size_t cap = 65536, len = 0, limit = HTTP_HEADER_MAX + max_body + max_body / 8 + 4096;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        err_set("out of memory");
        goto done;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= limit) {
                err_set("HTTP response from %s is over %zu bytes", u->host, limit);
                break;
            }
            cap = cap * 2 < limit ? cap * 2 : limit;
            uint8_t *b = realloc(buf, cap);
            if (!b) {
                err_set("out of memory");
                break;
            }
            buf = b;
        }
        if (wait_fd(fd, POLLIN, deadline, u->host) != 0) break;
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r < 0) {
            err_errno("reading from %s", u->host);
            break;
        }
        len += (size_t)r;
        int p = http_response_parse(buf, len, r == 0, max_body, out);
        if (p <= 0) {
            rc = p;
            break;
        }
    }
    free(buf);
done:
    close(fd);
    return rc;
}
