/* fedlora status — the aggregator's status page in the terminal: reads
 * /status.json over HTTP (wire/http.h) and prints the round, each member and
 * the last rounds (aggregator/status.h's status_text); --watch redraws it
 * until Ctrl-C. */
#include "aggregator/config.h"
#include "aggregator/status.h"
#include "cli/commands.h"
#include "cli/opts.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/http.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 5000

static const char *usage_text =
    "usage: fedlora status (--config FILE | --url URL) [--watch] [--interval S] [--json]\n"
    "                      [--token-file FILE]\n"
    "\n"
    "Shows the aggregator's status page in the terminal: the round, its state and\n"
    "deadline, each member's state (pending, training, submitted, accepted, refused and\n"
    "why, missed, revoked, observer), last contact and bytes, and the last rounds with\n"
    "their losses and evaluation scores. It reads /status.json from the page the\n"
    "aggregator serves with a \"status\" section in its config (docs/federation.md).\n"
    "\n"
    "  --config FILE     the aggregator's config: its status.bind and status.token (and\n"
    "                    STATE/status-url, where the page really listens)\n"
    "  --url URL         the page's address, http://HOST:PORT/ (plain http only; use an\n"
    "                    SSH tunnel for a remote aggregator); the token, if the page\n"
    "                    needs one, from --token-file or FEDLORA_STATUS_TOKEN\n"
    "  --watch           redraw every --interval seconds (default 2) until Ctrl-C\n"
    "  --json            print /status.json itself instead\n";

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

/* The page's URL and token from the aggregator's config. */
static int from_config(const char *path, char *url, size_t n, char *token, size_t tn) {
    agg_config c;
    if (agg_config_load(&c, path) != 0) return -1;
    int rc = -1;
    if (!c.has_status) {
        err_set("%s has no \"status\" section, so its aggregator serves no status page; add "
                "status = { bind = \"127.0.0.1:8470\"; };",
                path);
        goto done;
    }
    snprintf(token, tn, "%s", c.status_token);
    /* Where it listens now, as the aggregator wrote it (the port may have
     * been the system's pick); else what the config asks for. */
    char p[AGG_PATH_MAX], *text = NULL;
    size_t len = 0;
    if (fio_join(p, sizeof p, c.state, "status-url") == 0 && fio_exists(p) &&
        fio_read_all(p, 512, &text, &len) == 0) {
        while (len && (text[len - 1] == '\n' || text[len - 1] == '\r')) len--;
        snprintf(url, n, "%.*s", (int)len, text);
        free(text);
    } else {
        /* A wildcard bind is reached on loopback. */
        const char *b = c.status_bind, *port = strrchr(b, ':');
        if (!strncmp(b, "0.0.0.0:", 8))
            snprintf(url, n, "http://127.0.0.1:%.8s/", port + 1);
        else if (!strncmp(b, "[::]:", 5))
            snprintf(url, n, "http://[::1]:%.8s/", port + 1);
        else
            snprintf(url, n, "http://%.*s/", (int)(n > 16 ? n - 16 : 0), b);
    }
    rc = 0;
done:
    agg_config_free(&c);
    return rc;
}

/* GET .../status.json; its body in *r (status 200) or an error. */
static int fetch(const http_url *u, const char *token, http_response *r) {
    char path[HTTP_PATH_MAX + 16];
    size_t pl = strlen(u->path);
    if (pl >= 5 && !strcmp(u->path + pl - 5, ".json"))
        snprintf(path, sizeof path, "%s", u->path);
    else
        snprintf(path, sizeof path, "%s%sstatus.json", u->path, u->path[pl - 1] == '/' ? "" : "/");
    if (http_get(u, path, token, STATUS_JSON_MAX, TIMEOUT_MS, r) != 0)
        return err_context("reading http://%s%s%s:%u%s (is the aggregator running, with a "
                           "\"status\" section in its config?)",
                           u->ipv6 ? "[" : "", u->host, u->ipv6 ? "]" : "", u->port, path);
    if (r->status == 200) return 0;
    char first[160];
    snprintf(first, sizeof first, "%.*s", (int)strcspn(r->body, "\n"), r->body);
    for (char *c = first; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
    int status = r->status;
    http_response_free(r);
    if (status == 401)
        return err_set("the status page wants a token (HTTP 401): give the aggregator's "
                       "status.token with --config, --token-file or FEDLORA_STATUS_TOKEN");
    return err_set("the status page answered HTTP %d: %s", status, first);
}

static int show(const http_url *u, const char *token, int json, int clear) {
    http_response r;
    if (fetch(u, token, &r) != 0) return -1;
    if (json) {
        fwrite(r.body, 1, r.body_len, stdout);
        fputc('\n', stdout);
        http_response_free(&r);
        return 0;
    }
    status_view *v;
    int64_t now;
    int rc = status_from_json(r.body, r.body_len, &v, &now);
    http_response_free(&r);
    if (rc != 0) return -1;
    int width = 100;
    struct winsize ws;
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        width = ws.ws_col;
    char *text;
    size_t len;
    rc = status_text(v, now, width, &text, &len);
    status_free(v);
    if (rc != 0) return -1;
    if (clear) fputs("\033[H\033[2J", stdout);
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    free(text);
    return 0;
}

int cmd_status(int argc, char **argv) {
    const char *config = NULL, *url_s = NULL, *interval_s = "2", *token_file = NULL;
    int watch = 0, json = 0;
    opts_spec spec[] = {{"config", &config},     {"url", &url_s},
                        {"watch", NULL, &watch}, {"interval", &interval_s},
                        {"json", NULL, &json},   {"token-file", &token_file}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!config == !url_s) return opts_missing(usage_text, "one of --config and --url");
    double interval;
    if (opts_double(interval_s, "--interval", 0.2, 86400, &interval) != 0) return opts_fail();
    char url[512] = "", token[512] = "";
    if (config) {
        if (token_file) {
            err_set("--token-file goes with --url; with --config the token is the config's");
            return opts_fail();
        }
        if (from_config(config, url, sizeof url, token, sizeof token) != 0) return opts_fail();
    } else {
        snprintf(url, sizeof url, "%s", url_s);
        const char *env = getenv("FEDLORA_STATUS_TOKEN");
        if (token_file) {
            char *text;
            size_t len;
            if (fio_read_all(token_file, sizeof token - 1, &text, &len) != 0) return opts_fail();
            while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
                len--;
            snprintf(token, sizeof token, "%.*s", (int)len, text);
            free(text);
        } else if (env) {
            snprintf(token, sizeof token, "%s", env);
        }
        for (const char *c = token; *c; c++)
            if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f) {
                err_set("the token may not hold spaces or control characters");
                return opts_fail();
            }
    }
    http_url u;
    if (http_url_parse(url, &u) != 0) return opts_fail();
    if (!watch) return show(&u, token, json, 0) == 0 ? 0 : opts_fail();

    if (opts_catch_stop(on_signal) != 0) return opts_fail();
    int tty = isatty(STDOUT_FILENO);
    while (!stop) {
        if (show(&u, token, json, tty) != 0) {
            /* The aggregator may be restarting: say so, and keep watching. */
            if (tty) fputs("\033[H\033[2J", stdout);
            printf("%s\n(trying again every %g s; Ctrl-C to stop)\n", err_msg(), interval);
            fflush(stdout);
        }
        struct timespec ts = {(time_t)interval,
                              (long)((interval - (double)(time_t)interval) * 1e9)};
        while (!stop && nanosleep(&ts, &ts) != 0) {
        }
        if (!tty && !stop) fputs("\n", stdout);
    }
    return 0;
}
