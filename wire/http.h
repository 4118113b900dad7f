/* http — a small HTTP/1.1 GET client over a plain TCP socket, for reading
 * the aggregator's status page (`fedlora status`, the tests).
 *
 * Plain http only: an https URL is refused with a message (the status page
 * is meant for loopback, or an SSH tunnel to it). Everything that comes back
 * is untrusted and bounded: the status line and headers at most
 * HTTP_HEADER_MAX bytes and HTTP_HEADERS_MAX lines, the body at most the
 * caller's max_body, framed by Content-Length, chunked transfer coding or
 * the end of the connection (RFC 9112, section 6.3); a malformed or
 * oversized response is an error that says what was wrong. The response
 * parser is a pure function of the bytes (http_response_parse) with a
 * libFuzzer target (tests/fuzz/fuzz_http_response.c). One request per
 * connection ("Connection: close"), one deadline for the whole exchange. */
#ifndef FL_WIRE_HTTP_H
#define FL_WIRE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define HTTP_HEADER_MAX (16 * 1024) /* bytes of the status line and headers */
#define HTTP_HEADERS_MAX 100        /* header lines */
#define HTTP_HOST_MAX 255
#define HTTP_PATH_MAX 1024

typedef struct {
    char host[HTTP_HOST_MAX + 1]; /* a name or an address; IPv6 without brackets */
    int ipv6;                     /* the host was written [v6] */
    uint16_t port;
    char path[HTTP_PATH_MAX + 1]; /* from the first '/', "/" when none */
} http_url;

/* http://HOST[:PORT][/PATH]; https and every other scheme, user info,
 * spaces and control characters are refused with a message. */
int http_url_parse(const char *url, http_url *u);

typedef struct {
    int status;             /* 200, 401, ... */
    char content_type[128]; /* "" when absent */
    char *body;             /* malloc'd, NUL-terminated (not counted in body_len) */
    size_t body_len;
} http_response;

void http_response_free(http_response *r);

/* Parses the bytes of a response received so far (eof: the peer closed the
 * connection after them). Returns 0 with *out filled when the response is
 * complete, 1 when more bytes are needed, -1 when the bytes cannot be a
 * response within the bounds (err_msg says why). */
int http_response_parse(const uint8_t *buf, size_t len, int eof, size_t max_body,
                        http_response *out);

/* GET u's host and port for path (NULL: u->path), with "Authorization:
 * Bearer token" when token is not NULL or "", within timeout_ms for the
 * whole exchange. Any status is returned as it came (the caller decides). */
int http_get(const http_url *u, const char *path, const char *token, size_t max_body,
             int timeout_ms, http_response *out);

#endif
