/* test_lifecycle — the aggregator's start, its state directory and its end
 * (issue 17, cases 5, 7 and 9):
 *   - a state directory whose journal was deleted, or emptied, while it
 *     holds versions and accepted envelopes refuses to start, saying what
 *     to do (it used to begin a new federation on top: every acknowledged
 *     delta forgotten, an old envelope receipted again);
 *   - a complete last journal record that was damaged (a flipped byte, not
 *     a torn write) is logged, and the acceptance it held is recovered from
 *     the inbox: the delta still counts, its node still gets its receipt
 *     (it used to be dropped without a word);
 *   - the config is checked against the base model and the roster at
 *     start: targets that resolve to nothing, a seq beyond the context, a
 *     quorum the roster cannot reach are refused before anything is
 *     written;
 *   - a roster with no member yet: the aggregator warns and every round
 *     waits for members (it used to close each round at once with no
 *     delta, ending the federation for good);
 *   - `fedlora aggregator` binds before it journals: with its port in use
 *     it fails and writes no journal;
 *   - rounds.linger is honoured: the final version is served that long
 *     after the last round, even once every member heard "finished". */
#include "aggregator/agg.h"
#include "tests/aggregator/agg_test.h"
#include "util/hex.h"
#include "wire/client.h"
#include "wire/crypto.h"
#include "wire/roster.h"
#include "wire/transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

static struct fed F;
static const uint64_t T0 = 1800000000;
static agg_peer cur;

static struct msg ask(agg *a, const struct msg *req, uint64_t now) {
    return fed_ask(a, cur, req, now);
}

static struct msg submit(agg *a, int i, uint64_t seed, uint64_t now, uint8_t **env_out,
                         size_t *len_out) {
    return fed_submit(&F, a, i, seed, now, env_out, len_out);
}

/* The aggregator's log lines of fn(a) go to a file, which is returned. */
static char *stderr_of(void (*fn)(void *), void *arg, const char *name) {
    char path[600];
    fed_path(path, sizeof path, "%s.log", name);
    fflush(stderr);
    int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (saved < 0 || fd < 0 || dup2(fd, 2) != 2) fed_die("redirecting stderr");
    close(fd);
    fn(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char *text;
    size_t len;
    return fio_read_all(path, 1 << 20, &text, &len) == 0 ? text : NULL;
}

static agg_config *cfg_of(const char *sub, const char *rounds, const char *more) {
    static agg_config c;
    char path[600];
    fed_config(&F, sub, path, sizeof path, rounds, more);
    if (agg_config_load(&c, path) < 0) fed_die("agg_config_load");
    return &c;
}

/* ---- case 5: a lost journal ------------------------------------------------------ */

static void test_lost_journal(void) {
    agg_config *c = cfg_of("lost", "count = 2; quorum = 3; deadline = 100;", NULL);
    agg *a;
    CHECK_OK(agg_open(&a, c, T0));
    uint8_t *env;
    size_t len;
    struct msg r = submit(a, 0, 1, T0 + 1, &env, &len);
    CHECK(r.type == MSG_RECEIPT);
    agg_close(a);
    char journal[4200];
    snprintf(journal, sizeof journal, "%s/journal", c->state);
    /* Emptied, then deleted: refused both times, nothing written. */
    CHECK(truncate(journal, 0) == 0);
    CHECK_FAILS_WITH(agg_open(&a, c, T0 + 2), "is empty, but");
    CHECK(unlink(journal) == 0);
    CHECK_FAILS_WITH(agg_open(&a, c, T0 + 2), "the journal was lost");
    CHECK(strstr(err_msg(), "Restore the journal from a backup") != NULL);
    CHECK(strstr(err_msg(), "1 accepted envelope(s)") != NULL);
    CHECK_MSG(!fio_exists(journal), "a new journal was started");
    free(env);
    agg_config_free(c);
}

/* ---- case 7: a damaged complete record -------------------------------------------- */

struct reopen {
    agg_config *c;
    agg *a;
    int rc;
};

static void reopen(void *arg) {
    struct reopen *x = arg;
    x->rc = agg_open(&x->a, x->c, T0 + 3);
}

static void test_damaged_record(void) {
    agg_config *c = cfg_of("damaged", "count = 1; quorum = 3; deadline = 100;", NULL);
    agg *a;
    CHECK_OK(agg_open(&a, c, T0));
    uint8_t *env0, *env1;
    size_t len0, len1;
    CHECK(submit(a, 0, 1, T0 + 1, &env0, &len0).type == MSG_RECEIPT);
    struct msg r1 = submit(a, 1, 2, T0 + 1, &env1, &len1);
    CHECK(r1.type == MSG_RECEIPT);
    agg_close(a);
    /* A flipped byte in uni-b's accept record, the last line, which keeps
     * its '\n': damage, not a torn append. */
    char journal[4200], *text;
    size_t len;
    snprintf(journal, sizeof journal, "%s/journal", c->state);
    CHECK_OK(fio_read_all(journal, 1 << 20, &text, &len));
    char *last = text + len - 2;
    while (last > text && last[-1] != '\n') last--;
    CHECK(!strncmp(last, "accept 1 uni-b ", 15));
    last[20] ^= 0x01;
    CHECK_OK(fio_write_atomic(journal, text, len, 0644));
    free(text);

    struct reopen x = {c, NULL, -1};
    char *log = stderr_of(reopen, &x, "damaged-open");
    CHECK_MSG(x.rc == 0, "agg_open: %s", err_msg());
    CHECK_MSG(log && strstr(log, "JOURNAL DAMAGED") && strstr(log, "recovered uni-b's delta"),
              "log: %s", log ? log : "");
    free(log);
    if (x.rc != 0) return;
    a = x.a;
    CHECK(agg_accepted_count(a) == 2);
    /* uni-b's node, which held its receipt, is still counted: sending the
     * same envelope again gets a receipt for the same message id. */
    cur = fed_peer(1);
    struct msg m = {.type = MSG_HELLO};
    snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[1]);
    keys_fingerprint(&F.m[1].pub, m.hello.fingerprint);
    CHECK_OK(hello_sign(&m.hello, F.consortium, &F.m[1], T0 + 4));
    CHECK(ask(a, &m, T0 + 4).type == MSG_ROUND);
    m = (struct msg){.type = MSG_SUBMIT_BEGIN};
    m.submit_begin.round = 1;
    memcpy(m.submit_begin.id, r1.receipt.id, 16);
    m.submit_begin.size = len1;
    m.submit_begin.chunks = 1;
    struct msg r = ask(a, &m, T0 + 4);
    m = (struct msg){.type = MSG_SUBMIT_CHUNK};
    memcpy(m.submit_chunk.id, r1.receipt.id, 16);
    m.submit_chunk.data = env1;
    m.submit_chunk.data_len = (uint32_t)len1;
    r = ask(a, &m, T0 + 4);
    m = (struct msg){.type = MSG_SUBMIT_END};
    memcpy(m.submit_end.id, r1.receipt.id, 16);
    crypto_sha256(env1, len1, m.submit_end.digest);
    r = ask(a, &m, T0 + 4);
    CHECK(r.type == MSG_RECEIPT && !memcmp(r.receipt.id, r1.receipt.id, 16));
    CHECK(agg_accepted_count(a) == 2);
    agg_close(a);
    free(env0);
    free(env1);
    agg_config_free(c);
}

/* ---- case 9: the config against the base and the roster -------------------------- */

/* A roster of `n` of the test members, signed by mallory as the admin. */
static void write_roster(const char *path, int n, char admin_hex[65]) {
    roster ro;
    CHECK_OK(roster_init(&ro, "test-consortium", &F.m[3].pub, 1700000000));
    for (int i = 0; i < n; i++)
        CHECK_OK(roster_add(&ro, &F.m[i].pub, ROSTER_ROLE_MEMBER, 1000000, 1700000000));
    CHECK_OK(roster_write(&ro, &F.m[3], path));
    roster_free(&ro);
    uint8_t fp[32];
    keys_fingerprint(&F.m[3].pub, fp);
    hex_encode(fp, 32, admin_hex);
}

static void test_config_checks(void) {
    char more[900], roster_path[600], hex[65];
    agg *a;
    agg_config *c = cfg_of("badtargets", "count = 1;", NULL);
    snprintf(c->train.targets[0], sizeof c->train.targets[0], "vv_proj");
    CHECK_FAILS_WITH(agg_open(&a, c, T0), "\"vv_proj\" matches no linear layer");
    char journal[4200];
    snprintf(journal, sizeof journal, "%s/journal", c->state);
    CHECK(!fio_exists(journal));
    agg_config_free(c);
    c = cfg_of("badseq", "count = 1;", NULL);
    c->train.seq = 100000;
    CHECK_FAILS_WITH(agg_open(&a, c, T0), "train.seq = 100000 is outside the model's context");
    agg_config_free(c);

    /* A roster of 3 and a quorum of 10: no round could ever close. */
    fed_path(roster_path, sizeof roster_path, "roster3.txt");
    write_roster(roster_path, 3, hex);
    snprintf(more, sizeof more, "roster = { file = \"%s\"; admin = \"%s\"; };\n", roster_path, hex);
    fed_config(&F, "quorum10", journal, sizeof journal, "count = 1; quorum = 10;", more);
    char *text = ts_read(journal, NULL), *mem = text ? strstr(text, "members = (") : NULL,
         *end = mem ? strstr(mem, ");\n") : NULL;
    CHECK(mem && end);
    if (mem && end) {
        memmove(mem, end + 3, strlen(end + 3) + 1); /* a roster instead of a member list */
        CHECK_OK(ts_write(journal, text));
        agg_config cq;
        CHECK_OK(agg_config_load(&cq, journal));
        CHECK_FAILS_WITH(agg_open(&a, &cq, T0), "has 3 active member(s): no round could close");
        agg_config_free(&cq);
    }
    free(text);
}

struct empty_run {
    agg_config *c;
    int ok;
};

static void empty_roster_run(void *arg) {
    struct empty_run *x = arg;
    agg *a;
    x->ok = agg_open(&a, x->c, T0) == 0;
    if (!x->ok) return;
    /* Long past the deadline: still round 1, open, waiting. */
    for (uint64_t t = T0; t < T0 + 500; t += 50) CHECK_OK(agg_tick(a, t));
    CHECK_MSG(agg_current_round(a) == 1 && agg_get_state(a) == AGG_OPEN, "round %llu, state %s",
              (unsigned long long)agg_current_round(a), agg_state_name(agg_get_state(a)));
    agg_close(a);
}

static void test_empty_roster(void) {
    char roster_path[600], hex[65], more[900], cfg[600];
    fed_path(roster_path, sizeof roster_path, "roster0.txt");
    write_roster(roster_path, 0, hex);
    snprintf(more, sizeof more, "roster = { file = \"%s\"; admin = \"%s\"; };\n", roster_path, hex);
    fed_config(&F, "empty", cfg, sizeof cfg,
               "count = 3; quorum = 2; deadline = 100; below_quorum = \"wait\";", more);
    char *text = ts_read(cfg, NULL), *mem = text ? strstr(text, "members = (") : NULL,
         *end = mem ? strstr(mem, ");\n") : NULL;
    CHECK(mem && end);
    if (!mem || !end) return free(text);
    memmove(mem, end + 3, strlen(end + 3) + 1);
    CHECK_OK(ts_write(cfg, text));
    free(text);
    agg_config c;
    CHECK_OK(agg_config_load(&c, cfg));
    struct empty_run x = {&c, 0};
    char *log = stderr_of(empty_roster_run, &x, "empty-roster");
    CHECK_MSG(x.ok, "agg_open: %s", err_msg());
    CHECK_MSG(log && strstr(log, "the roster has no active member yet"), "log: %s", log ? log : "");
    free(log);
    agg_config_free(&c);
}

/* ---- the binary: bind before journal, linger ------------------------------------- */

static const char *bin;

static pid_t spawn(const char *cfg, const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 2);
        execl(bin, "fedlora", "aggregator", "--config", cfg, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid, double secs, double *took) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if (took) *took = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if ((double)(t1.tv_sec - t0.tv_sec) > secs) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(20000);
    }
}

static void test_bind_first(void) {
    /* Someone holds the port. */
    transport *t;
    struct transport_opts o;
    transport_opts_default(&o);
    char ep[256], cfg[600], log[600], journal[700];
    CHECK_OK(transport_router(&t, "tcp://127.0.0.1:*", &o));
    CHECK_OK(transport_endpoint(t, ep, sizeof ep));
    fed_config(&F, "busyport", cfg, sizeof cfg, "count = 1;", NULL);
    char *text = ts_read(cfg, NULL), out[8192];
    char *bind = text ? strstr(text, "tcp://127.0.0.1:*") : NULL;
    CHECK(bind != NULL);
    if (!bind) return free(text);
    *bind = '\0';
    snprintf(out, sizeof out, "%s%s%s", text, ep, bind + strlen("tcp://127.0.0.1:*"));
    free(text);
    CHECK_OK(ts_write(cfg, out));
    fed_path(log, sizeof log, "busyport/aggregator.log");
    int rc = wait_exit(spawn(cfg, log), 30, NULL);
    CHECK_MSG(rc == 1 && ts_contains(log, "Address already in use"), "exit %d (see %s)", rc, log);
    fed_path(journal, sizeof journal, "busyport/state/journal");
    CHECK_MSG(!fio_exists(journal), "%s was written before the bind failed", journal);
    transport_close(t);
}

/* The status page's port too is bound before the journal: with it in use,
 * agg_open refuses and no round is journaled (a restart with the port free
 * starts round 1 afresh, not on top of a half-started state). */
static void test_status_bind_first(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 1) == 0 &&
          getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    char more[128];
    snprintf(more, sizeof more, "status = { bind = \"127.0.0.1:%d\"; };", ntohs(sa.sin_port));
    agg_config *c = cfg_of("busystatus", "count = 1;", more);
    agg *a;
    CHECK_FAILS_WITH(agg_open(&a, c, T0), "status");
    char journal[4200];
    snprintf(journal, sizeof journal, "%s/journal", c->state);
    CHECK_MSG(!fio_exists(journal), "%s was written before the status page's bind failed", journal);
    close(fd);
    /* With the port free the same state directory starts. */
    CHECK_OK(agg_open(&a, c, T0));
    agg_close(a);
}

static void test_linger(void) {
    char cfg[600], log[600], epf[700];
    fed_config(&F, "linger", cfg, sizeof cfg, "count = 1; quorum = 3; deadline = 600; linger = 6;",
               NULL);
    fed_path(log, sizeof log, "linger/aggregator.log");
    fed_path(epf, sizeof epf, "linger/state/endpoint");
    pid_t pid = spawn(cfg, log);
    char *ep = NULL;
    for (int i = 0; i < 1500 && !(ep = fio_exists(epf) ? ts_read(epf, NULL) : NULL); i++)
        usleep(20000);
    CHECK(ep != NULL);
    if (!ep) return;
    ep[strcspn(ep, "\n")] = '\0';
    client *cl[FED_MEMBERS];
    client_options co;
    client_options_default(&co);
    co.curve_server = F.agg.pub.kx_pub;
    for (int i = 0; i < FED_MEMBERS; i++) {
        co.curve_me = &F.m[i];
        CHECK_OK(client_open(&cl[i], ep, &co));
    }
    free(ep);
    /* Each member: HELLO, its delta, then HELLO until "finished". */
    for (int i = 0; i < FED_MEMBERS; i++) {
        struct msg m = {.type = MSG_HELLO}, r;
        snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[i]);
        keys_fingerprint(&F.m[i].pub, m.hello.fingerprint);
        CHECK_OK(hello_sign(&m.hello, F.consortium, &F.m[i], (uint64_t)time(NULL)));
        CHECK(client_call(cl[i], &m, &r) == CLIENT_OK && r.type == MSG_ROUND);
        uint8_t base[32], id[16];
        memcpy(base, r.round.base, 32);
        size_t plen, len;
        uint8_t *p = fed_delta(&F, 1, base, 9 + (uint64_t)i, NULL, &plen);
        uint8_t *env = fed_seal(&F, &F.m[i], "test-consortium", 1, p, plen, &len, id);
        free(p);
        struct msg b = {.type = MSG_SUBMIT_BEGIN};
        b.submit_begin.round = 1;
        memcpy(b.submit_begin.id, id, 16);
        b.submit_begin.size = len;
        b.submit_begin.chunks = 1;
        CHECK(client_call(cl[i], &b, &r) == CLIENT_OK && r.type == MSG_ACK);
        struct msg k = {.type = MSG_SUBMIT_CHUNK};
        memcpy(k.submit_chunk.id, id, 16);
        k.submit_chunk.data = env;
        k.submit_chunk.data_len = (uint32_t)len;
        CHECK(client_call(cl[i], &k, &r) == CLIENT_OK && r.type == MSG_ACK);
        struct msg e = {.type = MSG_SUBMIT_END};
        memcpy(e.submit_end.id, id, 16);
        crypto_sha256(env, len, e.submit_end.digest);
        CHECK(client_call(cl[i], &e, &r) == CLIENT_OK && r.type == MSG_RECEIPT);
        free(env);
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < FED_MEMBERS; i++)
        for (int tries = 0; tries < 200; tries++) {
            struct msg m = {.type = MSG_HELLO}, r;
            snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[i]);
            keys_fingerprint(&F.m[i].pub, m.hello.fingerprint);
            CHECK_OK(hello_sign(&m.hello, F.consortium, &F.m[i], (uint64_t)time(NULL)));
            if (client_call(cl[i], &m, &r) == CLIENT_OK && r.type == MSG_ERROR && r.error.has_final)
                break;
            usleep(50000);
        }
    for (int i = 0; i < FED_MEMBERS; i++) client_close(cl[i]);
    /* Every member heard "finished": it still serves until linger (6 s). */
    double took = 0;
    int rc = wait_exit(pid, 30, &took);
    CHECK_MSG(rc == 0 && took >= 4.0, "exit %d %.1f s after every member heard \"finished\"", rc,
              took);
}

int main(void) {
    bin = getenv("FEDLORA_BIN");
    fed_init(&F);
    test_lost_journal();
    test_damaged_record();
    test_config_checks();
    test_empty_roster();
    if (bin && access(bin, X_OK) == 0) {
        test_bind_first();
        test_status_bind_first();
        test_linger();
    } else {
        CHECK_MSG(0, "FEDLORA_BIN must name the fedlora binary");
    }
    model_free(F.base);
    return check_finish();
}
