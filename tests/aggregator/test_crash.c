/* Crash safety with real processes: `fedlora aggregator` (env FEDLORA_BIN)
 * on loopback, three members played by this test's client, which speaks the
 * node protocol (HELLO, GET_MODEL, SUBMIT_BEGIN/CHUNK/END) with pre-made,
 * deterministic deltas and keeps each sealed envelope until its receipt, as
 * a node's outbox does.
 *
 * First a run without crashes (the reference). Its rounds are then
 * recomputed offline (`fedlora aggregator --recompute R --out DIR`), which
 * must give the published bytes. Then trials in which the aggregator is
 * SIGKILLed at seeded random points through the test hook FEDLORA_CRASH_AT
 * (mid-upload, between the journal's fsync and the RECEIPT, during
 * aggregation, after the version is stored but before it is journaled,
 * before the next round opens) and restarted, up to twice per trial. After
 * each trial: every round completed, the final model hash equals the
 * reference's, every receipt the client got is in the journal and in its
 * round's merged members, and the aggregator exited 0 by itself. One more
 * run stops the aggregator with SIGTERM mid-round: it exits 0 and a restart
 * ends in the same model.
 *
 * Trials: 3 by default; FEDLORA_LONG=1 runs 24; FEDLORA_TRIALS=N sets any
 * number, FEDLORA_SEED=S changes the random points (each trial prints its
 * points, so a failure can be replayed). */
#include "aggregator/store.h"
#include "tests/aggregator/agg_test.h"
#include "wire/crypto.h"
#include "wire/client.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#define ROUNDS 2
#define CHUNK 2048 /* small chunks, so that a crash can come mid-upload */

static struct fed F;
static const char *bin;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- the aggregator process ------------------------------------------------ */

struct aggp {
    char cfg[600], state[600], log[600];
    pid_t pid;
    client *cl[FED_MEMBERS]; /* one connection per member, as each node has its own */
    int starts, kills;
    const char *crash[3]; /* FEDLORA_CRASH_AT of the 1st, 2nd, 3rd start (NULL: none) */
};

static void show_log(const struct aggp *p) {
    char *text;
    size_t len;
    if (fio_read_all(p->log, 1 << 22, &text, &len) == 0) {
        fprintf(stderr, "---- aggregator log %s (last 3000 bytes) ----\n%s\n", p->log,
                text + (len > 3000 ? len - 3000 : 0));
        free(text);
    }
}

static void disconnect(struct aggp *p) {
    for (int i = 0; i < FED_MEMBERS; i++) {
        client_close(p->cl[i]);
        p->cl[i] = NULL;
    }
}

/* Starts the aggregator and connects to the endpoint it writes. Returns 0,
 * or 1 when it died before listening (a crash point in its start-up). */
static int start(struct aggp *p) {
    char ep_path[700];
    snprintf(ep_path, sizeof ep_path, "%s/endpoint", p->state);
    unlink(ep_path);
    const char *crash = p->starts < 3 ? p->crash[p->starts] : NULL;
    p->starts++;
    pid_t pid = fork();
    if (pid < 0) fed_die("fork");
    if (pid == 0) {
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) dup2(fd, 2);
        if (crash)
            setenv("FEDLORA_CRASH_AT", crash, 1);
        else
            unsetenv("FEDLORA_CRASH_AT");
        execl(bin, "fedlora", "aggregator", "--config", p->cfg, (char *)NULL);
        _exit(127);
    }
    p->pid = pid;
    for (int i = 0; i < 3000; i++) {
        char *ep;
        size_t len;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            p->pid = 0;
            if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
                p->kills++;
                return 1;
            }
            show_log(p);
            fprintf(stderr, "aggregator exited during start-up (status %d)\n", status);
            exit(1);
        }
        if (fio_exists(ep_path) && fio_read_all(ep_path, 1024, &ep, &len) == 0) {
            if (len && ep[len - 1] == '\n') ep[len - 1] = '\0';
            /* One attempt per request: request() itself revives a killed
             * aggregator and asks again. */
            client_options o;
            client_options_default(&o);
            o.timeout_ms = 2000;
            o.linger_ms = 0;
            o.curve_server = F.agg.pub.kx_pub; /* CURVE, each node with its own key */
            for (int m = 0; m < FED_MEMBERS; m++) {
                o.curve_me = &F.m[m];
                if (client_open(&p->cl[m], ep, &o) < 0) fed_die("client_open");
            }
            free(ep);
            return 0;
        }
        sleep_ms(10);
    }
    show_log(p);
    fprintf(stderr, "aggregator did not start listening within 30 s\n");
    exit(1);
}

/* After a request got no answer: if the aggregator was killed, start it
 * again (as many times as its start-up crashes). Any other death fails. */
static void revive(struct aggp *p) {
    int status;
    if (p->pid && waitpid(p->pid, &status, WNOHANG) != p->pid) return;
    if (p->pid) {
        if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
            show_log(p);
            fprintf(stderr, "aggregator died unexpectedly (status %d)\n", status);
            exit(1);
        }
        p->kills++;
        p->pid = 0;
    }
    disconnect(p);
    while (start(p) == 1) {
    }
}

/* One request of member's node and its reply (decoded into *r, valid until
 * the next request). Retries through restarts of the aggregator. */
static void request(struct aggp *p, int member, const struct msg *m, struct msg *r) {
    for (int attempt = 0;; attempt++) {
        if (attempt > 200) {
            show_log(p);
            fprintf(stderr, "no answer from the aggregator after 200 attempts\n");
            exit(1);
        }
        if (!p->cl[member]) revive(p);
        int k = client_call(p->cl[member], m, r);
        if (k == CLIENT_GARBLED) fed_die("decoding a reply");
        if (k == CLIENT_OK) return;
        revive(p);
    }
}

/* ---- one member's side of a round ------------------------------------------- */

struct receipt {
    uint64_t round;
    int member;
    uint8_t id[16];
};

struct run {
    struct aggp p;
    struct receipt rc[ROUNDS * FED_MEMBERS];
    int nrc;
    uint8_t final[32];
    int sigterm_at; /* after this many receipts, SIGTERM the aggregator (0: never) */
    int sigterms;
};

/* A clean stop: SIGTERM, exit status 0, then a start that resumes. */
static void stop_and_restart(struct run *R) {
    int status;
    CHECK(kill(R->p.pid, SIGTERM) == 0);
    CHECK(waitpid(R->p.pid, &status, 0) == R->p.pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "SIGTERM: exit status %d", status);
    R->p.pid = 0;
    R->sigterms++;
    disconnect(&R->p);
    revive(&R->p);
}

/* member's signed HELLO, on its connection. */
static void say_hello(struct aggp *p, int member, struct msg *r) {
    struct msg m = {.type = MSG_HELLO};
    snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[member]);
    keys_fingerprint(&F.m[member].pub, m.hello.fingerprint);
    if (hello_sign(&m.hello, F.consortium, &F.m[member], (uint64_t)time(NULL)) < 0)
        fed_die("signing HELLO");
    request(p, member, &m, r);
}

/* HELLO until round `round` is open; *base gets its base version. */
static void wait_round(struct aggp *p, int member, uint64_t round, uint8_t base[32]) {
    for (;;) {
        struct msg r;
        say_hello(p, member, &r);
        if (r.type == MSG_ROUND && r.round.round == round) {
            memcpy(base, r.round.base, 32);
            return;
        }
        if (r.type == MSG_ROUND && r.round.round < round) { /* the others' round not closed */
            sleep_ms(20);
            continue;
        }
        if (r.type == MSG_ERROR && r.error.code == MSG_ERR_WRONG_ROUND && r.error.has_retry_after) {
            sleep_ms(50);
            continue;
        }
        show_log(p);
        fprintf(stderr, "HELLO for round %llu: unexpected %s %s\n", (unsigned long long)round,
                msg_type_name(r.type), r.type == MSG_ERROR ? r.error.reason : "");
        exit(1);
    }
}

/* Downloads a version and checks its hash, as a node's model sync does. */
static void sync_model(struct aggp *p, int member, const uint8_t version[32]) {
    crypto_sha256_ctx *sha;
    crypto_sha256_new(&sha);
    uint64_t off = 0;
    for (;;) {
        struct msg m = {.type = MSG_GET_MODEL}, r;
        memcpy(m.get_model.version, version, 32);
        m.get_model.offset = off;
        m.get_model.length = MSG_CHUNK_MAX;
        request(p, member, &m, &r);
        CHECK(r.type == MSG_MODEL_CHUNK && r.model_chunk.offset == off);
        if (r.type != MSG_MODEL_CHUNK) exit(1);
        crypto_sha256_update(sha, r.model_chunk.data, r.model_chunk.data_len);
        off += r.model_chunk.data_len;
        if (r.model_chunk.final) break;
    }
    uint8_t h[32];
    crypto_sha256_final(sha, h);
    crypto_sha256_free(sha);
    CHECK(memcmp(h, version, 32) == 0);
}

/* Submits until a RECEIPT for this envelope arrives (starting over after
 * any failure, as a node does after a restart). */
static void submit_until_receipt(struct run *R, int member, uint64_t round, const uint8_t *env,
                                 size_t len, const uint8_t id[16]) {
    uint8_t digest[32];
    crypto_sha256(env, len, digest);
    for (int attempt = 0; attempt < 100; attempt++) {
        struct msg m = {.type = MSG_SUBMIT_BEGIN}, r;
        /* An upload needs a verified HELLO on its connection, as a node
         * says before each attempt (a restart forgets it). */
        int starts = R->p.starts;
        say_hello(&R->p, member, &r);
        m.submit_begin.round = round;
        memcpy(m.submit_begin.id, id, 16);
        m.submit_begin.size = len;
        m.submit_begin.chunks = (uint32_t)((len + CHUNK - 1) / CHUNK);
        request(&R->p, member, &m, &r);
        int ok = r.type == MSG_ACK && r.ack.stored == 0 && R->p.starts == starts;
        for (uint32_t i = 0; ok && i < m.submit_begin.chunks; i++) {
            struct msg c = {.type = MSG_SUBMIT_CHUNK};
            memcpy(c.submit_chunk.id, id, 16);
            c.submit_chunk.index = i;
            c.submit_chunk.data = env + (size_t)i * CHUNK;
            c.submit_chunk.data_len = (uint32_t)(len - i * CHUNK < CHUNK ? len - i * CHUNK : CHUNK);
            request(&R->p, member, &c, &r);
            ok = r.type == MSG_ACK &&
                 r.ack.stored == (uint64_t)i * CHUNK + c.submit_chunk.data_len &&
                 R->p.starts == starts;
        }
        if (ok) {
            struct msg e = {.type = MSG_SUBMIT_END};
            memcpy(e.submit_end.id, id, 16);
            memcpy(e.submit_end.digest, digest, 32);
            request(&R->p, member, &e, &r);
            if (r.type == MSG_RECEIPT && !memcmp(r.receipt.digest, digest, 32) &&
                r.receipt.round == round) {
                struct receipt *x = &R->rc[R->nrc++];
                x->round = round;
                x->member = member;
                memcpy(x->id, id, 16);
                if (R->nrc == R->sigterm_at) stop_and_restart(R);
                return;
            }
        }
        /* A restart in the middle, or the upload was lost with the process:
         * start over with the same envelope (same message id). */
        if (r.type == MSG_ERROR && r.error.code != MSG_ERR_NOT_FOUND &&
            r.error.code != MSG_ERR_BAD_MESSAGE && r.error.code != MSG_ERR_BUSY) {
            show_log(&R->p);
            fprintf(stderr, "%s, round %llu: refused: %s\n", fed_names[member],
                    (unsigned long long)round, r.error.reason);
            exit(1);
        }
    }
    fprintf(stderr, "no receipt after 100 attempts\n");
    exit(1);
}

/* A whole federation: ROUNDS rounds, three members, crashes as p.crash says. */
static void run_federation(struct run *R, const char *sub) {
    char cfg[600];
    fed_config(&F, sub, cfg, sizeof cfg, "count = 2; quorum = 3; deadline = 3600; linger = 2;",
               NULL);
    snprintf(R->p.cfg, sizeof R->p.cfg, "%s", cfg);
    fed_path(R->p.state, sizeof R->p.state, "%s/state", sub);
    fed_path(R->p.log, sizeof R->p.log, "%s/aggregator.log", sub);
    revive(&R->p);
    for (uint64_t round = 1; round <= ROUNDS; round++)
        for (int i = 0; i < FED_MEMBERS; i++) {
            uint8_t base[32];
            wait_round(&R->p, i, round, base);
            sync_model(&R->p, i, base);
            /* The same delta in every run (seeded by member and round); the
             * envelope is sealed once and kept until its receipt. */
            size_t plen, len;
            uint8_t id[16];
            uint8_t *payload = fed_delta(&F, round, base, 1000 * round + (uint64_t)i, NULL, &plen);
            uint8_t *env = fed_seal(&F, &F.m[i], "test-consortium", round, payload, plen, &len, id);
            submit_until_receipt(R, i, round, env, len, id);
            free(payload);
            free(env);
        }
    /* Each member hears "finished" with the final version. */
    for (int i = 0; i < FED_MEMBERS; i++) {
        for (;;) {
            struct msg r;
            say_hello(&R->p, i, &r);
            if (r.type == MSG_ERROR && r.error.code == MSG_ERR_WRONG_ROUND && r.error.has_final) {
                CHECK(!r.error.has_retry_after);
                CHECK(strstr(r.error.reason, "finished") != NULL);
                memcpy(R->final, r.error.final, 32);
                break;
            }
            CHECK(r.type == MSG_ERROR && r.error.has_retry_after);
            sleep_ms(50);
        }
    }
    /* Told everyone: the aggregator exits 0 on its own. */
    disconnect(&R->p);
    int status = 0;
    for (int i = 0; i < 3000 && waitpid(R->p.pid, &status, WNOHANG) == 0; i++) sleep_ms(10);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "aggregator exit status %d", status);
    if (!WIFEXITED(status)) {
        kill(R->p.pid, SIGKILL);
        waitpid(R->p.pid, &status, 0);
    }
}

/* Every receipt the client holds is an accept record in the journal and a
 * merged member of its round in metrics.jsonl. */
static void check_receipts(const struct run *R) {
    char p[700], *journal;
    size_t len;
    snprintf(p, sizeof p, "%s/journal", R->p.state);
    CHECK_OK(fio_read_all(p, 1 << 24, &journal, &len));
    for (int k = 0; k < R->nrc; k++) {
        const struct receipt *x = &R->rc[k];
        char idhex[33], rec[200];
        hex_encode(x->id, 16, idhex);
        snprintf(rec, sizeof rec, "accept %llu %s %s ", (unsigned long long)x->round,
                 fed_names[x->member], idhex);
        CHECK_MSG(strstr(journal, rec) != NULL, "receipted delta missing from the journal: %s",
                  rec);
    }
    free(journal);
    snprintf(p, sizeof p, "%s/metrics.jsonl", R->p.state);
    FILE *f = fopen(p, "r");
    CHECK(f != NULL);
    char line[1 << 16];
    int rounds = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        CHECK(j != NULL);
        uint64_t round = (uint64_t)json_integer_value(json_object_get(j, "round"));
        json_t *acc = json_object_get(j, "members_accepted");
        rounds++;
        for (int k = 0; k < R->nrc; k++) {
            if (R->rc[k].round != round) continue;
            int found = 0;
            for (size_t i = 0; i < json_array_size(acc); i++)
                found |=
                    !strcmp(json_string_value(json_array_get(acc, i)), fed_names[R->rc[k].member]);
            CHECK_MSG(found, "round %llu: receipted %s not merged", (unsigned long long)round,
                      fed_names[R->rc[k].member]);
        }
        json_decref(j);
    }
    if (f) fclose(f);
    CHECK_MSG(rounds == ROUNDS, "%d metrics lines for %d rounds", rounds, ROUNDS);
    CHECK(R->nrc == ROUNDS * FED_MEMBERS);
}

/* ---- offline recomputation ------------------------------------------------- */

static void check_recompute(const struct run *R, const char *sub) {
    for (int round = 1; round <= ROUNDS; round++) {
        char out[600], cmd[2400], mine[700], *line = NULL;
        fed_path(out, sizeof out, "%s/recompute-%d", sub, round);
        snprintf(cmd, sizeof cmd, "'%s' aggregator --config '%s' --recompute %d --out '%s'", bin,
                 R->p.cfg, round, out);
        FILE *f = popen(cmd, "r");
        size_t cap = 0;
        CHECK(f && getline(&line, &cap, f) > 0);
        CHECK(f && pclose(f) == 0);
        const char *v = line ? strstr(line, "version ") : NULL;
        char vhex[65] = "";
        if (v) snprintf(vhex, sizeof vhex, "%.64s", v + 8);
        uint8_t h[32], h2[32];
        CHECK(hex_decode(vhex, h, 32) == 0);
        free(line);
        /* The recomputed file hashes to that, and is byte for byte the
         * version the live aggregator published for the round. */
        snprintf(mine, sizeof mine, "%s/model.safetensors", out);
        CHECK_OK(crypto_sha256_file(mine, h2, NULL));
        CHECK(memcmp(h, h2, 32) == 0);
        char pub[700];
        CHECK_OK(store_model_path(R->p.state, h, pub, sizeof pub));
        size_t la, lb;
        char *a, *b;
        CHECK_OK(fio_read_all(mine, 1 << 26, &a, &la));
        CHECK_OK(fio_read_all(pub, 1 << 26, &b, &lb));
        CHECK(la == lb && memcmp(a, b, la) == 0);
        if (round == ROUNDS) CHECK(memcmp(h, R->final, 32) == 0);
        free(a);
        free(b);
    }
}

/* ---- crash points ------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* FEDLORA_CRASH_AT for one start: a point and which hit of it. The ranges
 * are what one process sees in a whole run (chunks per submission x 6
 * submissions, 6 receipts, 3 decoded deltas per round, 2 publications, and
 * the opening of rounds 1 and 2), so the first start always crashes. */
static void pick(uint64_t *s, char *out, size_t n, int chunks) {
    static const struct {
        const char *point;
        int max;
    } pts[] = {{"collect", 0}, {"receipt", 6}, {"aggregate", 6}, {"publish", 2}, {"open", 2}};
    int k = (int)(rng_next(s) % 5);
    int max = pts[k].max ? pts[k].max : chunks * ROUNDS * FED_MEMBERS;
    snprintf(out, n, "%s:%d", pts[k].point, 1 + (int)(rng_next(s) % (uint64_t)max));
}

int main(void) {
    bin = getenv("FEDLORA_BIN");
    if (!bin || access(bin, X_OK) != 0) {
        fprintf(stderr, "FEDLORA_BIN must name the fedlora binary\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    fed_init(&F);
    const char *e = getenv("FEDLORA_TRIALS");
    int trials = e ? atoi(e) : getenv("FEDLORA_LONG") ? 24 : 3;
    e = getenv("FEDLORA_SEED");
    uint64_t seed = e ? strtoull(e, NULL, 10) : 20261126;

    static struct run ref;
    run_federation(&ref, "reference");
    CHECK(ref.p.kills == 0);
    check_receipts(&ref);
    check_recompute(&ref, "reference");
    char hex[65];
    hex_encode(ref.final, 32, hex);
    printf("reference run: final version %s\n", hex);

    /* SIGTERM in the middle of round 1 (and again in round 2): clean exits,
     * and the restarts go on to the same model. */
    static struct run term;
    term.sigterm_at = 2;
    run_federation(&term, "sigterm");
    CHECK(term.sigterms == 1 && term.p.kills == 0 && term.p.starts == 2);
    CHECK(memcmp(term.final, ref.final, 32) == 0);
    check_receipts(&term);

    /* Envelope size in chunks (the same in every run) for the ranges. */
    size_t plen, len;
    uint8_t id[16], base[32] = {0};
    uint8_t *p = fed_delta(&F, 1, base, 1, NULL, &plen);
    free(fed_seal(&F, &F.m[0], "test-consortium", 1, p, plen, &len, id));
    free(p);
    int chunks = (int)((len + CHUNK - 1) / CHUNK);

    for (int t = 0; t < trials; t++) {
        static struct run R;
        memset(&R, 0, sizeof R);
        uint64_t s = seed * 7919 + (uint64_t)t + 1;
        char c0[32], c1[32];
        pick(&s, c0, sizeof c0, chunks);
        pick(&s, c1, sizeof c1, chunks);
        R.p.crash[0] = c0;
        R.p.crash[1] = rng_next(&s) % 2 ? c1 : NULL;
        char sub[32];
        snprintf(sub, sizeof sub, "trial-%d", t);
        printf("trial %d: FEDLORA_CRASH_AT=%s then %s\n", t, c0, R.p.crash[1] ? c1 : "none");
        fflush(stdout);
        run_federation(&R, sub);
        CHECK_MSG(R.p.kills >= 1, "trial %d: the aggregator was never killed", t);
        CHECK_MSG(memcmp(R.final, ref.final, 32) == 0,
                  "trial %d: the final model differs from the run without crashes", t);
        check_receipts(&R);
        printf("trial %d: %d kill(s), %d start(s), final version %s\n", t, R.p.kills, R.p.starts,
               memcmp(R.final, ref.final, 32) == 0 ? "= reference" : "DIFFERS");
        if (check_failed) {
            show_log(&R.p);
            break;
        }
    }
    model_free(F.base);
    return check_finish();
}
