/* status_http — the status page's HTTP server on libmicrohttpd
 * (status_http.h). */
#include "aggregator/status_http.h"

#include "util/err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CONNECTIONS_MAX 32u
#define CONNECTIONS_PER_IP 8u
#define IDLE_S 10u
#define REQUEST_MEMORY ((size_t)32 * 1024)

/* A snapshot and the requests rendering it. */
typedef struct {
    status_view *v;
    int refs;
} snapshot;

struct status_http {
    struct MHD_Daemon *d;
    pthread_mutex_t mu;
    snapshot *cur;
    char token[STATUS_TOKEN_MAX + 1];
    int refresh_s;
    void (*log)(const char *msg);
};

/* ---- the address and the token ---------------------------------------------------------- */

int status_bind_parse(const char *bind, struct sockaddr_storage *ss, socklen_t *len,
                      int *loopback) {
    char host[128];
    const char *port_s;
    memset(ss, 0, sizeof *ss);
    if (bind[0] == '[') {
        const char *end = strchr(bind, ']');
        if (!end || end[1] != ':' || (size_t)(end - bind - 1) >= sizeof host)
            return err_set("status bind \"%s\": an IPv6 address is written [ADDRESS]:PORT", bind);
        memcpy(host, bind + 1, (size_t)(end - bind - 1));
        host[end - bind - 1] = '\0';
        port_s = end + 2;
    } else {
        const char *colon = strrchr(bind, ':');
        if (!colon || (size_t)(colon - bind) >= sizeof host)
            return err_set("status bind \"%s\" must be HOST:PORT, e.g. \"127.0.0.1:8470\"", bind);
        memcpy(host, bind, (size_t)(colon - bind));
        host[colon - bind] = '\0';
        port_s = colon + 1;
    }
    char *end;
    errno = 0;
    long port = strtol(port_s, &end, 10);
    if (!*port_s || *end || errno || port < 0 || port > 65535)
        return err_set("status bind \"%s\": the port must be a number from 0 (any free port) to "
                       "65535",
                       bind);
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
        *loopback = (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof *v6;
        *loopback = IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr) ||
                    (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr) && v6->sin6_addr.s6_addr[12] == 127);
    } else {
        return err_set("status bind \"%s\": \"%s\" is not an IPv4 address, [IPv6] address or "
                       "localhost",
                       bind, host);
    }
    return 0;
}

int status_token_check(const char *token) {
    size_t n = strlen(token), k = 0;
    if (n < STATUS_TOKEN_MIN || n > STATUS_TOKEN_MAX)
        return err_set("the status token must be %d to %d characters long, got %zu; make one "
                       "with `openssl rand -hex 32`",
                       STATUS_TOKEN_MIN, STATUS_TOKEN_MAX, n);
    while (k < n && (strchr("-._~+/", token[k]) || (token[k] >= '0' && token[k] <= '9') ||
                     (token[k] >= 'a' && token[k] <= 'z') || (token[k] >= 'A' && token[k] <= 'Z')))
        k++;
    while (k < n && token[k] == '=') k++;
    if (k != n)
        return err_set("the status token may hold letters, digits, - . _ ~ + / and a trailing =, "
                       "not '%c' (character %zu)",
                       token[k], k + 1);
    return 0;
}

/* ---- snapshots ------------------------------------------------------------------------------- */

static snapshot *take(status_http *h) {
    pthread_mutex_lock(&h->mu);
    snapshot *s = h->cur;
    if (s) s->refs++;
    pthread_mutex_unlock(&h->mu);
    return s;
}

static void drop(status_http *h, snapshot *s) {
    if (!s) return;
    pthread_mutex_lock(&h->mu);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&h->mu);
    if (last) {
        status_free(s->v);
        free(s);
    }
}

void status_http_publish(status_http *h, status_view *v) {
    snapshot *s = malloc(sizeof *s);
    if (!s) { /* keep serving the previous one */
        status_free(v);
        return;
    }
    s->v = v;
    s->refs = 1; /* the server's own */
    pthread_mutex_lock(&h->mu);
    snapshot *old = h->cur;
    h->cur = s;
    pthread_mutex_unlock(&h->mu);
    drop(h, old);
}

/* ---- requests ----------------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type, char *body,
                             size_t len, const char *allow, int auth) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    /* No script, no external asset, no framing: inline styles only. */
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors "
                            "'none'; base-uri 'none'; form-action 'none'");
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (auth)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"fedlora\"");
    enum MHD_Result rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result text_reply(struct MHD_Connection *c, unsigned code, const char *msg,
                                  const char *allow, int auth) {
    char *body = strdup(msg);
    if (!body) return MHD_NO;
    return reply(c, code, "text/plain; charset=utf-8", body, strlen(body), allow, auth);
}

static int authorized(status_http *h, struct MHD_Connection *c) {
    if (!h->token[0]) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    size_t n = strlen(h->token);
    /* RFC 6750 2.1: "Bearer" (any case), one space, the token. */
    return a && strncasecmp(a, "Bearer ", 7) == 0 && strlen(a + 7) == n &&
           CRYPTO_memcmp(a + 7, h->token, n) == 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls) {
    (void)version, (void)upload_data, (void)upload_data_size, (void)con_cls;
    status_http *h = cls;
    /* Everything is decided on the headers, in the first call: a response
     * queued before a body arrives makes libmicrohttpd discard the body and
     * close the connection, so no body is ever read. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return text_reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "read-only: GET or HEAD\n", "GET, HEAD",
                          0);
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if ((cl && strcmp(cl, "0") != 0) ||
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
        return text_reply(c, MHD_HTTP_CONTENT_TOO_LARGE, "a GET request has no body\n", NULL, 0);
    if (!authorized(h, c))
        return text_reply(c, MHD_HTTP_UNAUTHORIZED,
                          "this status page needs \"Authorization: Bearer <token>\" (the "
                          "aggregator config's status.token)\n",
                          NULL, 1);
    int page = !strcmp(url, "/") || !strcmp(url, "/index.html"),
        json = !strcmp(url, "/status.json"), prom = !strcmp(url, "/metrics");
    if (!page && !json && !prom)
        return text_reply(c, MHD_HTTP_NOT_FOUND,
                          "not found: / , /status.json and /metrics are "
                          "served\n",
                          NULL, 0);
    snapshot *s = take(h);
    if (!s)
        return text_reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, "the aggregator is starting\n", NULL, 0);
    char *body = NULL;
    size_t len = 0;
    int64_t now = (int64_t)time(NULL);
    int rc = page   ? status_html(s->v, now, h->refresh_s, &body, &len)
             : json ? status_to_json(s->v, now, &body, &len)
                    : status_prometheus(s->v, now, &body, &len);
    drop(h, s);
    if (rc != 0) return text_reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, err_msg(), NULL, 0);
    return reply(c, MHD_HTTP_OK,
                 page   ? "text/html; charset=utf-8"
                 : json ? "application/json"
                        : "text/plain; version=0.0.4; charset=utf-8",
                 body, len, NULL, 0);
}

static void log_mhd(void *cls, const char *fmt, va_list ap) {
    status_http *h = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = '\0';
    if (h->log) h->log(msg);
}

/* ---- the server ----------------------------------------------------------------------------- */

int status_http_start(status_http **out, const char *bind, const char *token, int refresh_s,
                      void (*log)(const char *msg), char *url, size_t url_len) {
    *out = NULL;
    struct sockaddr_storage ss;
    socklen_t sl;
    int loopback;
    if (status_bind_parse(bind, &ss, &sl, &loopback) != 0) return -1;
    if (token && token[0] && status_token_check(token) != 0) return -1;
    if (!loopback && !(token && token[0]))
        return err_set("status bind \"%s\" is not a loopback address: anyone who reaches it "
                       "could read the page; set status.token or bind to 127.0.0.1",
                       bind);
    status_http *h = calloc(1, sizeof *h);
    if (!h) return err_set("out of memory for the status page");
    if (pthread_mutex_init(&h->mu, NULL) != 0) {
        free(h);
        return err_set("pthread_mutex_init failed");
    }
    snprintf(h->token, sizeof h->token, "%s", token ? token : "");
    h->refresh_s = refresh_s;
    h->log = log;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, handle, h, MHD_OPTION_EXTERNAL_LOGGER, log_mhd, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, CONNECTIONS_MAX,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, CONNECTIONS_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
        IDLE_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT, REQUEST_MEMORY, MHD_OPTION_END);
    if (!h->d) {
        pthread_mutex_destroy(&h->mu);
        free(h);
        return err_set("cannot serve the status page on %s (is the port in use? see the log line "
                       "before this one)",
                       bind);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = info ? info->port : 0;
    char host[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
        snprintf(url, url_len, "http://[%s]:%u/", host, port);
    } else {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
        snprintf(url, url_len, "http://%s:%u/", host, port);
    }
    *out = h;
    return 0;
}

void status_http_stop(status_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->d);
    drop(h, h->cur);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
