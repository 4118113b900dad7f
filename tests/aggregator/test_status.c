/* test_status — the status page's pieces, in process:
 *   - the view as JSON and back (the round trip, every field), and what the
 *     reader refuses (each refusal names the field);
 *   - the renderings: HTML escapes every text and loads nothing from
 *     elsewhere, Prometheus' format holds line by line (labels escaped), the
 *     terminal gets no control byte from a hostile page;
 *   - the HTTP server: GET and HEAD only (405), no body (413), the bearer
 *     token (401 without it or with a wrong one), 404, 503 before the first
 *     snapshot, a snapshot replaced while requests read the old one; a
 *     non-loopback address without a token is refused;
 *   - the HTTP client's URL and response parsers (https refused, framing by
 *     Content-Length, chunks and the connection's end, bounds);
 *   - the aggregator config's "status" and "eval" sections;
 *   - the evaluation runner (eval.c) when `fedlora eval` fails, or is
 *     stopped with the aggregator: a failed record that says why; a repeat
 *     after the restart;
 *   - `fedlora status --config` against a page that needs a token. */
#include "aggregator/config.h"
#include "aggregator/state.h"
#include "aggregator/status.h"
#include "aggregator/status_http.h"
#include "tests/aggregator/agg_test.h"
#include "tests/support/ts_http.h"

#include <math.h>
#include <pthread.h>
#include <sys/stat.h>

static status_view *sample_view(const char *hostile) {
    status_view *v = calloc(1, sizeof *v);
    v->updated = 1765000000;
    v->started = 1764990000;
    snprintf(v->consortium, sizeof v->consortium, "eu-open-llm %s", hostile);
    snprintf(v->state, sizeof v->state, "COLLECTING");
    v->round = 3;
    v->rounds = 5;
    v->deadline = 1765000300;
    v->quorum = 2;
    v->accepted = 1;
    memset(v->base, 'a', 64);
    memset(v->version, 'b', 64);
    v->nmembers = 3;
    v->members = calloc(3, sizeof *v->members);
    for (int i = 0; i < 3; i++) {
        status_member *m = &v->members[i];
        snprintf(m->name, sizeof m->name, "uni-%c", 'a' + i);
        snprintf(m->fingerprint, sizeof m->fingerprint, "0123456789abcdef");
        m->state = i == 0 ? STATUS_SUBMITTED : i == 1 ? STATUS_REFUSED : STATUS_TRAINING;
        m->last_contact = 1764999990 + i;
        m->bytes_in = 1000u * (unsigned)i;
        m->bytes_out = 123456789;
        m->last_round = 2;
        m->last = i == 2 ? STATUS_MISSED : STATUS_ACCEPTED;
    }
    snprintf(v->members[1].why, sizeof v->members[1].why, "replay: %s", hostile);
    v->nhistory = 3;
    v->history = calloc(3, sizeof *v->history);
    for (int i = 0; i < 3; i++) {
        status_round *r = &v->history[i];
        r->round = (uint64_t)i;
        snprintf(r->status, sizeof r->status, i ? "published" : "base");
        memset(r->version, '0' + i, 64);
        r->accepted = i ? 2 : 0;
        r->tokens = 4096u * (unsigned)i;
        r->collect_s = r->aggregate_s = r->publish_s = i ? 0.25 * i : NAN;
        r->loss_before = i ? 5.0 - i : NAN;
        r->loss_after = i ? 4.5 - i : NAN;
        r->epsilon = NAN;
        r->time = 1764995000 + i;
        snprintf(r->eval, sizeof r->eval, "done");
        r->nscores = 2;
        r->scores = calloc(2, sizeof *r->scores);
        snprintf(r->scores[0].name, sizeof r->scores[0].name, "held\"out\\%s", hostile);
        r->scores[0].loss = 4.2 - 0.1 * i;
        r->scores[0].perplexity = exp(r->scores[0].loss);
        r->scores[0].acc = r->scores[0].acc_norm = NAN;
        r->scores[0].count = 999;
        snprintf(r->scores[1].name, sizeof r->scores[1].name, "arc.jsonl");
        r->scores[1].choice = 1;
        r->scores[1].acc = 0.25 + 0.125 * i;
        r->scores[1].acc_norm = 0.5;
        r->scores[1].loss = r->scores[1].perplexity = NAN;
        r->scores[1].count = 8;
    }
    v->nrefused = 2;
    snprintf(v->refused[0].reason, sizeof v->refused[0].reason, "replay");
    v->refused[0].count = 2;
    snprintf(v->refused[1].reason, sizeof v->refused[1].reason, "stale_round");
    v->refused[1].count = 1;
    v->deltas_accepted = 5;
    v->bytes_received = 777;
    v->bytes_served = 888;
    v->dp = 1;
    v->epsilon = 1.5;
    v->delta = 1e-5;
    v->epsilon_budget = 8;
    v->neval_sets = 2;
    snprintf(v->eval_sets[0], sizeof v->eval_sets[0], "%s", v->history[0].scores[0].name);
    snprintf(v->eval_sets[1], sizeof v->eval_sets[1], "arc.jsonl");
    return v;
}

static const char *hostile = "<script>alert('x')</script>\n\x1b[2J&";

static void test_json(void) {
    status_view *v = sample_view(hostile), *w = NULL;
    char *a = NULL, *b = NULL;
    size_t la, lb;
    int64_t now = 0;
    CHECK_OK(status_to_json(v, 1765000100, &a, &la));
    CHECK_OK(status_from_json(a, la, &w, &now));
    CHECK(now == 1765000100);
    if (w) {
        CHECK_OK(status_to_json(w, now, &b, &lb));
        CHECK_MSG(b && la == lb && !memcmp(a, b, la), "round trip differs:\n%s\n%s", a, b);
        CHECK(w->nmembers == 3 && w->members[1].state == STATUS_REFUSED);
        CHECK(!strcmp(w->members[1].why, v->members[1].why));
        CHECK(w->members[2].last == STATUS_MISSED && w->members[0].last_round == 2);
        CHECK(w->nhistory == 3 && isnan(w->history[0].loss_before));
        CHECK(w->history[2].nscores == 2 && w->history[2].scores[1].choice);
        CHECK(w->history[2].scores[1].acc == 0.5 && w->history[2].scores[0].count == 999);
        CHECK(w->dp && w->epsilon == 1.5 && w->nrefused == 2 && w->refused[0].count == 2);
        CHECK(status_round_get(w, 1) && status_round_get(w, 1)->accepted == 2);
        CHECK(status_round_get(w, 7) == NULL);
    }
    free(a);
    free(b);
    status_free(w);
    status_free(v);

    static const struct {
        const char *json, *needle;
    } bad[] = {
        {"[1]", "not a JSON object"},
        {"{", "not valid JSON"},
        {"{\"format\": 2}", "format 2"},
        {"{\"format\": 1, \"round\": {\"state\": \"OPEN\"}}", "consortium is missing"},
        {"{\"format\": 1, \"consortium\": \"c\"}", "round is missing"},
        {"{\"format\": 1, \"consortium\": \"c\", \"round\": {\"state\": \"OPEN\", \"number\": -1}}",
         "round.number must be an integer"},
        {"{\"format\": 1, \"consortium\": \"c\", \"round\": {\"state\": \"OPEN\"}, \"members\": "
         "[{\"name\": \"x\", \"state\": \"sleeping\"}]}",
         "members[0].state: unknown member state"},
        {"{\"format\": 1, \"consortium\": \"c\", \"round\": {\"state\": \"OPEN\"}, \"members\": "
         "[{\"state\": \"pending\"}]}",
         "members[0].name is missing"},
        {"{\"format\": 1, \"consortium\": \"c\", \"round\": {\"state\": \"OPEN\"}, \"history\": "
         "[{\"round\": 1, \"eval\": {\"sets\": [{\"name\": \"x\", \"kind\": \"odd\"}]}}]}",
         "history[0].eval.sets[0].kind"},
        {"{\"format\": 1, \"consortium\": \"c\", \"round\": {\"state\": \"OPEN\"}, \"counters\": "
         "{\"refused\": {\"x\": -1}}}",
         "counters.refused"},
        {"{\"format\": 1, \"consortium\": \"c\", \"consortium\": \"d\"}", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        status_view *x = NULL;
        CHECK_FAILS_WITH(status_from_json(bad[i].json, strlen(bad[i].json), &x, &now),
                         bad[i].needle);
        CHECK(x == NULL);
    }
    /* Counts and lengths are bounded before anything is kept. */
    size_t cap = 64 * (STATUS_MEMBERS_MAX + 2);
    char *big = malloc(cap);
    int n = snprintf(big, cap,
                     "{\"format\": 1, \"consortium\": \"c\", \"round\": {\"state\": "
                     "\"OPEN\"}, \"members\": [");
    for (int i = 0; i <= STATUS_MEMBERS_MAX; i++)
        n += snprintf(big + n, cap - (size_t)n, "%s{\"name\": \"m\"}", i ? "," : "");
    n += snprintf(big + n, cap - (size_t)n, "]}");
    status_view *x = NULL;
    CHECK_FAILS_WITH(status_from_json(big, (size_t)n, &x, &now), "at most 4096");
    char name[400];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    n = snprintf(big, cap,
                 "{\"format\": 1, \"consortium\": \"c\", \"round\": {\"state\": "
                 "\"OPEN\"}, \"members\": [{\"name\": \"%s\"}]}",
                 name);
    CHECK_FAILS_WITH(status_from_json(big, (size_t)n, &x, &now), "members[0].name is longer");
    free(big);
}

static void test_renderings(void) {
    status_view *v = sample_view(hostile);
    char *out;
    size_t len;
    CHECK_OK(status_html(v, 1765000100, 5, &out, &len));
    CHECK(strstr(out, "<meta http-equiv=\"refresh\" content=\"5\">") != NULL);
    CHECK_MSG(!strstr(out, "<script") && !strstr(out, "\x1b"), "unescaped text in the page");
    CHECK(strstr(out, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") != NULL);
    CHECK(!strstr(out, "src=") && !strstr(out, "href=\"http") && !strstr(out, "url("));
    CHECK(strstr(out, "<b>deadline in 3m 20s</b>") != NULL);
    CHECK(strstr(out, "<svg") && strstr(out, "<polyline"));
    CHECK(strstr(out, "s-submitted") && strstr(out, "s-refused") && strstr(out, "s-training"));
    free(out);

    CHECK_OK(status_prometheus(v, 1765000100, &out, &len));
    char why[256] = "";
    int samples;
    CHECK_MSG(ts_prom_check(out, why, sizeof why, &samples) == 0, "%s", why);
    CHECK(samples > 30);
    CHECK(ts_prom_value(out, "fedlora_members{state=\"submitted\"}") == 1);
    CHECK(ts_prom_value(out, "fedlora_members{state=\"pending\"}") == 0);
    CHECK(ts_prom_value(out, "fedlora_round_state{state=\"COLLECTING\"}") == 1);
    CHECK(ts_prom_value(out, "fedlora_round_deadline_remaining_seconds") == 200);
    CHECK(ts_prom_value(out, "fedlora_rounds_total{status=\"published\"}") == 2);
    CHECK(ts_prom_value(out, "fedlora_submissions_refused_total{reason=\"replay\"}") == 2);
    CHECK(ts_prom_value(out, "fedlora_aggregate_seconds_total") == 0.75);
    CHECK(ts_prom_value(out, "fedlora_eval_accuracy{set=\"arc.jsonl\",metric=\"acc\"}") == 0.5);
    CHECK(ts_prom_value(out, "fedlora_dp_epsilon") == 1.5);
    CHECK_MSG(strstr(out, "set=\"held\\\"out\\\\<script>alert('x')</script>\\n\x1b[2J&\"") != NULL,
              "label value not escaped as the format says");
    free(out);

    CHECK_OK(status_text(v, 1765000100, 100, &out, &len));
    int clean = 1;
    for (size_t i = 0; i < len; i++)
        clean &= out[i] == '\n' || ((unsigned char)out[i] >= 0x20 && (unsigned char)out[i] < 0x7f);
    CHECK_MSG(clean, "control bytes reach the terminal");
    CHECK(strstr(out, "round 3 of 5, COLLECTING, deadline in 3m 20s, 1 delta in, 2 needed"));
    CHECK(strstr(out, "uni-b") && strstr(out, "refused") && strstr(out, "replay: <script>"));
    free(out);
    status_free(v);
}

/* ---- the server ------------------------------------------------------------------------- */

struct hammer {
    const char *url;
    int ok, failed;
};

static void *hammer(void *arg) {
    struct hammer *h = arg;
    for (int i = 0; i < 40; i++) {
        http_response r;
        if (ts_http_get(h->url, i % 2 ? "status.json" : "", "0123456789abcdef0123", &r) == 0 &&
            r.status == 200)
            h->ok++;
        else
            h->failed++;
        http_response_free(&r);
    }
    return NULL;
}

static void test_server(void) {
    status_http *h = NULL;
    char url[128];
    const char *token = "0123456789abcdef0123";
    CHECK_FAILS_WITH(status_http_start(&h, "0.0.0.0:0", NULL, 5, NULL, url, sizeof url),
                     "not a loopback address");
    CHECK_FAILS_WITH(status_http_start(&h, "127.0.0.1:0", "short", 5, NULL, url, sizeof url),
                     "16 to 256 characters");
    CHECK_OK(status_http_start(&h, "127.0.0.1:0", token, 7, NULL, url, sizeof url));
    if (!h) return;
    CHECK(!strncmp(url, "http://127.0.0.1:", 17));
    http_response r;
    CHECK_OK(ts_http_get(url, "status.json", token, &r));
    CHECK(r.status == 503);
    http_response_free(&r);
    status_http_publish(h, sample_view("x"));
    CHECK_OK(ts_http_get(url, "status.json", NULL, &r));
    CHECK(r.status == 401);
    http_response_free(&r);
    CHECK_OK(ts_http_get(url, "status.json", "0123456789abcdef0124", &r));
    CHECK(r.status == 401);
    http_response_free(&r);
    CHECK_OK(ts_http_get(url, "status.json", token, &r));
    CHECK(r.status == 200 && !strcmp(r.content_type, "application/json"));
    status_view *v = NULL;
    int64_t now;
    CHECK_OK(status_from_json(r.body, r.body_len, &v, &now));
    CHECK(v && v->round == 3 && v->nmembers == 3);
    status_free(v);
    http_response_free(&r);
    CHECK_OK(ts_http_get(url, "", token, &r));
    CHECK(r.status == 200 && strstr(r.content_type, "text/html") &&
          strstr(r.body, "content=\"7\""));
    http_response_free(&r);
    CHECK_OK(ts_http_get(url, "metrics", token, &r));
    CHECK(r.status == 200 && strstr(r.content_type, "version=0.0.4"));
    http_response_free(&r);
    CHECK_OK(ts_http_get(url, "secrets", token, &r));
    CHECK(r.status == 404);
    http_response_free(&r);
    char req[512];
    snprintf(req, sizeof req,
             "POST /status.json HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Length: 2\r\n\r\n{}",
             token);
    CHECK(ts_http_raw(url, req) == 405);
    snprintf(req, sizeof req,
             "GET /status.json HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Length: 5\r\n\r\nhello",
             token);
    CHECK(ts_http_raw(url, req) == 413);
    snprintf(req, sizeof req, "HEAD / HTTP/1.1\r\nHost: x\r\nAuthorization: bearer %s\r\n\r\n",
             token);
    CHECK(ts_http_raw(url, req) == 200);
    /* Headers past the request memory limit: refused, the server lives on. */
    char *huge = malloc(70000);
    int n = snprintf(huge, 70000, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    memset(huge + n, 'p', 65000);
    snprintf(huge + n + 65000, 70000 - (size_t)n - 65000, "\r\n\r\n");
    int code = ts_http_raw(url, huge);
    CHECK_MSG(code == 431 || code == 413 || code == 400 || code == -1, "code %d", code);
    free(huge);
    /* Snapshots replaced while clients read: every request gets a whole one. */
    struct hammer ha = {url, 0, 0}, hb = {url, 0, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, hammer, &ha);
    pthread_create(&tb, NULL, hammer, &hb);
    for (int i = 0; i < 200; i++) status_http_publish(h, sample_view(i % 2 ? "y" : "z"));
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK_MSG(ha.failed + hb.failed == 0 && ha.ok + hb.ok == 80, "%d ok, %d failed", ha.ok + hb.ok,
              ha.failed + hb.failed);
    status_http_stop(h);

    struct sockaddr_storage ss;
    socklen_t sl;
    int lo;
    CHECK(status_bind_parse("127.0.0.1:0", &ss, &sl, &lo) == 0 && lo);
    CHECK(status_bind_parse("127.1.2.3:80", &ss, &sl, &lo) == 0 && lo);
    CHECK(status_bind_parse("[::1]:8470", &ss, &sl, &lo) == 0 && lo);
    CHECK(status_bind_parse("localhost:8470", &ss, &sl, &lo) == 0 && lo);
    CHECK(status_bind_parse("10.0.0.1:8470", &ss, &sl, &lo) == 0 && !lo);
    CHECK(status_bind_parse("[::]:8470", &ss, &sl, &lo) == 0 && !lo);
    CHECK_FAILS_WITH(status_bind_parse("example.org:80", &ss, &sl, &lo), "not an IPv4 address");
    CHECK_FAILS_WITH(status_bind_parse("127.0.0.1", &ss, &sl, &lo), "HOST:PORT");
    CHECK_FAILS_WITH(status_bind_parse("127.0.0.1:65536", &ss, &sl, &lo), "the port");
    CHECK_FAILS_WITH(status_bind_parse("[::1:80", &ss, &sl, &lo), "[ADDRESS]:PORT");
    CHECK_FAILS_WITH(status_token_check("0123456789abcdef 123"), "not ' '");
    CHECK_OK(status_token_check("abcDEF0123456789-._~+/=="));
}

/* ---- the client's parsers -------------------------------------------------------------- */

static int parse(const char *text, int eof, size_t max, http_response *r) {
    return http_response_parse((const uint8_t *)text, strlen(text), eof, max, r);
}

static void test_client(void) {
    http_url u;
    CHECK_FAILS_WITH(http_url_parse("https://127.0.0.1:8470/", &u), "https is not supported");
    CHECK_FAILS_WITH(http_url_parse("ftp://x/", &u), "must start with http://");
    CHECK_FAILS_WITH(http_url_parse("http://user@x/", &u), "user names");
    CHECK_FAILS_WITH(http_url_parse("http://x:0/", &u), "from 1 to 65535");
    CHECK_FAILS_WITH(http_url_parse("http://x:99999/", &u), "from 1 to 65535");
    CHECK_FAILS_WITH(http_url_parse("http://x y/", &u), "spaces");
    CHECK_OK(http_url_parse("http://127.0.0.1:8470/", &u));
    CHECK(!strcmp(u.host, "127.0.0.1") && u.port == 8470 && !strcmp(u.path, "/") && !u.ipv6);
    CHECK_OK(http_url_parse("HTTP://[::1]:9/a/status.json", &u));
    CHECK(!strcmp(u.host, "::1") && u.ipv6 && u.port == 9 && !strcmp(u.path, "/a/status.json"));
    CHECK_OK(http_url_parse("http://localhost", &u));
    CHECK(u.port == 80 && !strcmp(u.path, "/"));

    http_response r;
    CHECK(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 0, 100, &r) == 1);
    CHECK(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 1, 100, &r) == -1);
    CHECK(parse("HTTP/1.1 200 OK\r\nContent-Type: text/x\r\nContent-Length: 5\r\n\r\nhello", 0, 100,
                &r) == 0);
    CHECK(r.status == 200 && r.body_len == 5 && !strcmp(r.body, "hello") &&
          !strcmp(r.content_type, "text/x"));
    http_response_free(&r);
    CHECK(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n"
                "0\r\nX-T: 1\r\n\r\n",
                0, 100, &r) == 0);
    CHECK(r.body_len == 5 && !strcmp(r.body, "abcde"));
    http_response_free(&r);
    CHECK(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", 0, 100, &r) ==
          1);
    CHECK(parse("HTTP/1.0 200 OK\n\nto the end", 0, 100, &r) == 1);
    CHECK(parse("HTTP/1.0 200 OK\n\nto the end", 1, 100, &r) == 0);
    CHECK(r.body_len == 10);
    http_response_free(&r);
    CHECK_FAILS_WITH(parse("HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", 0, 100, &r),
                     "over the 100");
    CHECK_FAILS_WITH(
        parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n", 0, 100, &r),
        "over the 100");
    CHECK_FAILS_WITH(parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"
                           "\r\n",
                           0, 100, &r),
                     "both");
    CHECK_FAILS_WITH(
        parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 0, 100, &r),
        "Content-Length");
    CHECK_FAILS_WITH(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 0, 100, &r),
                     "not supported");
    CHECK_FAILS_WITH(parse("HTTP/1.1 100 Continue\r\n\r\n", 0, 100, &r), "interim");
    CHECK_FAILS_WITH(parse("SSH-2.0-OpenSSH\r\n\r\n", 0, 100, &r), "not an HTTP/1.x response");
    CHECK_FAILS_WITH(parse("HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", 0, 100, &r), "folded");
    CHECK_FAILS_WITH(parse("HTTP/1.1 200 OK\r\nA b\r\n\r\n", 0, 100, &r), "malformed header");
    CHECK_FAILS_WITH(parse("", 1, 100, &r), "without a response");
    char *head = malloc(HTTP_HEADER_MAX + 100);
    snprintf(head, HTTP_HEADER_MAX + 100, "HTTP/1.1 200 OK\r\nX: ");
    memset(head + strlen(head), 'x', HTTP_HEADER_MAX);
    head[HTTP_HEADER_MAX + 20] = '\0';
    CHECK_FAILS_WITH(parse(head, 0, 100, &r), "headers are over");
    free(head);
}

/* ---- the config ------------------------------------------------------------------------- */

static void test_config(const struct fed *f) {
    char cfg[600], more[1024], data[600], task[600];
    agg_config c;
    fed_path(data, sizeof data, "cfg-heldout.txt");
    fed_path(task, sizeof task, "sub/cfg-heldout.txt");
    CHECK_OK(ts_write(data, "some text\n"));
    CHECK_OK(fio_mkdirs(ts_tmp("sub"), 0700));
    CHECK_OK(ts_write(task, "{}\n"));
    static const struct {
        const char *text, *needle;
    } bad[] = {
        {"status = { bind = \"0.0.0.0:8470\"; };", "is not a loopback address"},
        {"status = { bind = \"127.0.0.1\"; };", "HOST:PORT"},
        {"status = { bind = \"127.0.0.1:1\"; token = \"short\"; };", "16 to 256 characters"},
        {"status = { bind = \"127.0.0.1:1\"; colour = 1; };", "unknown key 'status.colour'"},
        {"status = { bind = \"127.0.0.1:1\"; refresh = 0; };", "'status.refresh' must be from 1"},
        {"eval = { };", "names no set"},
        {"eval = { data = [\"missing.txt\"]; };", "no such file"},
        {"eval = { data = [\"%s\"]; tasks = [\"%s\"]; };", "two evaluation sets are named"},
        {"eval = { data = [\"%s\"]; threads = 0; };", "'eval.threads' must be from 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(more, sizeof more, bad[i].text, data, task);
        fed_config(f, "cfg", cfg, sizeof cfg, "count = 1;", more);
        CHECK_FAILS_WITH(agg_config_load(&c, cfg), bad[i].needle);
    }
    snprintf(more, sizeof more,
             "status = { bind = \"0.0.0.0:8471\"; token = \"0123456789abcdef0123\"; refresh = 9; "
             "};\neval = { data = [\"%s\"]; tasks = [\"../cfg2.jsonl\"]; seq = 64; threads = 2; };",
             data);
    CHECK_OK(ts_write(ts_tmp("cfg2.jsonl"), "{}\n"));
    fed_config(f, "cfg", cfg, sizeof cfg, "count = 1;", more);
    CHECK_OK(agg_config_load(&c, cfg));
    CHECK(c.has_status && !strcmp(c.status_bind, "0.0.0.0:8471") && c.status_refresh_s == 9);
    CHECK(!strcmp(c.status_token, "0123456789abcdef0123"));
    CHECK(c.has_eval && c.n_eval_data == 1 && c.n_eval_tasks == 1 && c.eval_seq == 64 &&
          c.eval_threads == 2 && c.eval_batch == 4 && c.eval_timeout_s == 3600);
    CHECK(strstr(c.eval_tasks[0], "cfg2.jsonl") != NULL);
    agg_config_free(&c);
    /* The token from a file (the config may be shared; the token not). */
    CHECK_OK(ts_write(ts_tmp("cfg/token"), "abcdefabcdefabcdefabcdef\n"));
    fed_config(f, "cfg", cfg, sizeof cfg, "count = 1;",
               "status = { bind = \"127.0.0.1:0\"; token_file = \"token\"; };");
    CHECK_OK(agg_config_load(&c, cfg));
    CHECK(!strcmp(c.status_token, "abcdefabcdefabcdefabcdef"));
    agg_config_free(&c);
}

/* ---- the evaluation runner --------------------------------------------------------------- */

struct eval_rec {
    int n;
    char error[512];
};

static int find_eval(void *arg, json_t *line) {
    struct eval_rec *e = arg;
    json_t *k = json_object_get(line, "kind");
    if (!json_is_string(k) || strcmp(json_string_value(k), "eval")) return 0;
    e->n++;
    json_t *err = json_object_get(line, "error");
    snprintf(e->error, sizeof e->error, "%s", json_is_string(err) ? json_string_value(err) : "");
    return 0;
}

static struct eval_rec eval_records(const agg_config *c) {
    char p[4200];
    struct eval_rec e = {0};
    snprintf(p, sizeof p, "%s/metrics.jsonl", c->state);
    harness_jsonl_each(p, find_eval, &e);
    return e;
}

static void test_eval_runner(const struct fed *f) {
    char cfg[600], more[1024], data[600], slow[600];
    fed_path(data, sizeof data, "runner-heldout.txt");
    CHECK_OK(ts_write(data, "some text\n"));
    snprintf(more, sizeof more, "eval = { data = [\"%s\"]; };", data);
    /* A child that fails: one record saying how, and the base is not tried
     * again after a restart. */
    fed_config(f, "runner", cfg, sizeof cfg, "count = 1;", more);
    agg_config c;
    agg *a = NULL;
    CHECK_OK(agg_config_load(&c, cfg));
    snprintf(c.eval_exe, sizeof c.eval_exe, "/bin/false");
    CHECK_OK(agg_open(&a, &c, 1000));
    CHECK(a && !agg_eval_idle(a));
    for (double t0 = harness_now(); a && !agg_eval_idle(a) && harness_now() - t0 < 10;
         harness_sleep_ms(20))
        CHECK_OK(agg_eval_tick(a));
    struct eval_rec e = eval_records(&c);
    CHECK_MSG(e.n == 1 && strstr(e.error, "fedlora eval exited with status 1") &&
                  strstr(e.error, "STATE/eval/r0.log"),
              "%d records, error '%s'", e.n, e.error);
    agg_close(a);
    CHECK_OK(agg_open(&a, &c, 1001));
    CHECK(a && agg_eval_idle(a));
    agg_close(a);
    agg_config_free(&c);
    /* A child still running when the aggregator stops: stopped with it, no
     * record, and queued again at the next start. An exec that fails: the
     * record says so. */
    fed_path(slow, sizeof slow, "slow-eval.sh");
    CHECK_OK(ts_write(slow, "#!/bin/sh\nexec sleep 30\n"));
    CHECK(chmod(slow, 0755) == 0);
    fed_config(f, "runner2", cfg, sizeof cfg, "count = 1;", more);
    CHECK_OK(agg_config_load(&c, cfg));
    snprintf(c.eval_exe, sizeof c.eval_exe, "%s", slow);
    CHECK_OK(agg_open(&a, &c, 1000));
    CHECK_OK(agg_eval_tick(a));
    double t0 = harness_now();
    agg_close(a); /* stops the child (SIGTERM) */
    CHECK_MSG(harness_now() - t0 < 5, "stopping the evaluation took %.1f s", harness_now() - t0);
    CHECK(eval_records(&c).n == 0);
    snprintf(c.eval_exe, sizeof c.eval_exe, "/nonexistent/fedlora");
    CHECK_OK(agg_open(&a, &c, 1001));
    CHECK(a && !agg_eval_idle(a));
    for (t0 = harness_now(); a && !agg_eval_idle(a) && harness_now() - t0 < 10;
         harness_sleep_ms(20))
        CHECK_OK(agg_eval_tick(a));
    e = eval_records(&c);
    CHECK_MSG(e.n == 1 && strstr(e.error, "status 127"), "%d records, error '%s'", e.n, e.error);
    agg_close(a);
    agg_config_free(&c);
}

/* `fedlora status --config` reads the token and the page's address from the
 * aggregator's config and state directory, and sends the token. */
static void test_cli_token(const struct fed *f) {
    const char *token = "cli-token-0123456789";
    status_http *h = NULL;
    char url[128], cfg[600], more[256], state[700];
    CHECK_OK(status_http_start(&h, "127.0.0.1:0", token, 5, NULL, url, sizeof url));
    if (!h) return;
    status_http_publish(h, sample_view("cli"));
    snprintf(more, sizeof more, "status = { bind = \"127.0.0.1:0\"; token = \"%s\"; };", token);
    fed_config(f, "cli", cfg, sizeof cfg, "count = 1;", more);
    fed_path(state, sizeof state, "cli/state");
    char path[800];
    snprintf(path, sizeof path, "%s/status-url", state);
    CHECK_OK(fio_mkdirs(state, 0700));
    CHECK_OK(ts_write(path, url));
    int rc = ts_run("status_token", "status", "--config", cfg, NULL);
    char *out = ts_output("status_token", "out");
    CHECK_MSG(rc == 0 && out && strstr(out, "round 3 of 5, COLLECTING"), "exit %d: %s", rc,
              out ? out : "(none)");
    free(out);
    rc = ts_run("status_no_token", "status", "--url", url, NULL);
    CHECK_RUN_FAILS(rc, "status_no_token", "wants a token (HTTP 401)");
    setenv("FEDLORA_STATUS_TOKEN", token, 1);
    rc = ts_run("status_env_token", "status", "--url", url, "--json", NULL);
    unsetenv("FEDLORA_STATUS_TOKEN");
    CHECK_RUN_OK(rc, "status_env_token");
    status_http_stop(h);
}

int main(void) {
    test_json();
    test_renderings();
    test_server();
    test_client();
    struct fed f;
    fed_init(&f);
    test_config(&f);
    test_eval_runner(&f);
    test_cli_token(&f);
    model_free(f.base);
    return check_finish();
}
