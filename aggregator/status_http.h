/* status_http — the aggregator's read-only status page over HTTP, served
 * by libmicrohttpd from its own thread (docs/federation.md, "The status
 * page"):
 *
 *   GET /             the page (status_html)
 *   GET /status.json  the view as JSON (status_to_json)
 *   GET /metrics      Prometheus' text format (status_prometheus)
 *
 * Threads: the aggregator's loop is the only writer of its state; it hands
 * this server a finished, immutable snapshot (status_http_publish), which
 * replaces the previous one under a mutex. A request takes a reference to
 * the snapshot in force, renders it without any lock held, and drops the
 * reference; the last reference frees it. So the HTTP thread never reads
 * the aggregator's state, and a slow client never holds up the loop.
 *
 * Bounds: 32 connections (8 per client address), 10 s of inactivity, 32 KiB
 * of request headers (MHD_OPTION_CONNECTION_MEMORY_LIMIT), no request body
 * (refused with 413 when announced), GET and HEAD only (405 otherwise).
 * With a token every request needs "Authorization: Bearer <token>" (401
 * otherwise, compared in constant time); a server bound to an address that
 * is not loopback must have one (status_bind_parse tells). */
#ifndef FL_AGGREGATOR_STATUS_HTTP_H
#define FL_AGGREGATOR_STATUS_HTTP_H

#include "aggregator/status.h"

#include <stddef.h>
#include <sys/socket.h>

#define STATUS_TOKEN_MIN 16  /* characters of a bearer token */
#define STATUS_TOKEN_MAX 256 /* and at most */

/* "HOST:PORT" (HOST an IPv4 address, [IPv6], or localhost; PORT 0..65535,
 * 0 for any free one) into a socket address; *loopback says whether it is
 * 127.0.0.0/8 or ::1. The message names what is wrong. */
int status_bind_parse(const char *bind, struct sockaddr_storage *ss, socklen_t *len, int *loopback);
/* A bearer token is 16 to 256 characters of RFC 6750's token68 alphabet
 * (letters, digits, - . _ ~ + /, trailing =). */
int status_token_check(const char *token);

typedef struct status_http status_http;

/* Starts serving on bind (token NULL or "": none; refused when bind is not
 * loopback). The page reloads itself every refresh_s seconds. log gets
 * libmicrohttpd's messages (from its thread). *url gets "http://HOST:PORT/"
 * with the real port. */
int status_http_start(status_http **out, const char *bind, const char *token, int refresh_s,
                      void (*log)(const char *msg), char *url, size_t url_len);
/* Hands the server the next snapshot (it owns v from here on). */
void status_http_publish(status_http *h, status_view *v);
/* Stops serving (waits for requests being answered) and frees everything. */
void status_http_stop(status_http *h);

#endif
