/* test_uploads — who may make the aggregator store bytes, and what an
 * upload may cost it (issue 17, cases 2, 3, 4 and 8), through its request
 * handler:
 *   - a connection without a verified HELLO cannot begin an upload, hold a
 *     slot or make the aggregator write a byte; fourteen such connections
 *     leave a member's upload untouched (it used to get BUSY);
 *   - a member holds at most two uploads: a third evicts its own oldest,
 *     never another member's;
 *   - another connection (another member's session, or none) can neither
 *     restart nor feed nor end a member's upload by its message id;
 *   - on a connection authenticated as one key (CURVE), a HELLO naming
 *     another identity opens no session;
 *   - SUBMIT_END sent again after its envelope was accepted gets the same
 *     receipt, on its member's connection and with its digest only;
 *   - SUBMIT_END checks the stored upload streaming: 48 MiB of garbage are
 *     refused on their header without the aggregator's peak memory growing
 *     by the upload (it used to read it whole first).
 * The full disk is tests/aggregator/test_disk.c's. */
#include "aggregator/agg.h"
#include "tests/aggregator/agg_test.h"
#include "wire/crypto.h"

#include <dirent.h>

static struct fed F;
static const uint64_t T0 = 1800000000;

/* One request on connection p; the reply decoded into *r. */
static void ask_on(agg *a, agg_peer p, const struct msg *req, uint64_t now, struct msg *r) {
    uint8_t *buf, *rep;
    size_t len, rlen;
    if (msg_encode(req, &buf, &len) < 0) fed_die("msg_encode");
    int rc = agg_handle(a, &p, buf, len, now, &rep, &rlen);
    free(buf);
    CHECK_MSG(rc == 0, "agg_handle failed: %s", err_msg());
    if (rc != 0 || msg_decode(rep, rlen, NULL, r) < 0) {
        memset(r, 0, sizeof *r);
        if (rc == 0) free(rep);
        return;
    }
    if (r->type == MSG_MODEL_CHUNK) r->model_chunk.data = NULL;
    free(rep);
}

/* Member i's signed HELLO, said on connection p. */
static struct msg hello_on(agg *a, agg_peer p, int i, uint64_t now) {
    struct msg m = {.type = MSG_HELLO}, r;
    snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[i]);
    keys_fingerprint(&F.m[i].pub, m.hello.fingerprint);
    CHECK_OK(hello_sign(&m.hello, F.consortium, &F.m[i], now));
    ask_on(a, p, &m, now, &r);
    return r;
}

static struct msg begin_on(agg *a, agg_peer p, const uint8_t id[16], uint64_t size,
                           uint32_t chunks) {
    struct msg m = {.type = MSG_SUBMIT_BEGIN}, r;
    m.submit_begin.round = agg_current_round(a);
    memcpy(m.submit_begin.id, id, 16);
    m.submit_begin.size = size;
    m.submit_begin.chunks = chunks;
    ask_on(a, p, &m, T0 + 1, &r);
    return r;
}

static struct msg chunk_on(agg *a, agg_peer p, const uint8_t id[16], uint32_t index,
                           const uint8_t *data, uint32_t n) {
    struct msg m = {.type = MSG_SUBMIT_CHUNK}, r;
    memcpy(m.submit_chunk.id, id, 16);
    m.submit_chunk.index = index;
    m.submit_chunk.data = data;
    m.submit_chunk.data_len = n;
    ask_on(a, p, &m, T0 + 1, &r);
    return r;
}

static struct msg end_on(agg *a, agg_peer p, const uint8_t id[16], const uint8_t digest[32]) {
    struct msg m = {.type = MSG_SUBMIT_END}, r;
    memcpy(m.submit_end.id, id, 16);
    memcpy(m.submit_end.digest, digest, 32);
    ask_on(a, p, &m, T0 + 1, &r);
    return r;
}

/* A whole envelope on connection p, in chunks of 4000 bytes: END's reply. */
static struct msg upload_on(agg *a, agg_peer p, const uint8_t *env, size_t len,
                            const uint8_t id[16]) {
    uint32_t chunks = (uint32_t)((len + 3999) / 4000);
    struct msg r = begin_on(a, p, id, len, chunks);
    if (r.type != MSG_ACK) return r;
    for (uint32_t i = 0; i < chunks; i++) {
        size_t off = (size_t)i * 4000;
        r = chunk_on(a, p, id, i, env + off, (uint32_t)(len - off < 4000 ? len - off : 4000));
        if (r.type != MSG_ACK) return r;
    }
    uint8_t d[32];
    crypto_sha256(env, len, d);
    return end_on(a, p, id, d);
}

/* Member i's delta for the open round, sealed. */
static uint8_t *sealed(agg *a, int i, uint64_t seed, size_t *len, uint8_t id[16]) {
    uint8_t base[32];
    agg_current_base(a, base);
    size_t plen;
    uint8_t *p = fed_delta(&F, agg_current_round(a), base, seed, NULL, &plen);
    uint8_t *env = fed_seal(&F, &F.m[i], "test-consortium", agg_current_round(a), p, plen, len, id);
    free(p);
    return env;
}

/* Files in STATE/inbox. */
static int inbox_files(const agg_config *c) {
    char dir[4300];
    snprintf(dir, sizeof dir, "%s/inbox", c->state);
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static agg *open_agg(const char *sub, const char *more, agg_config *c) {
    char path[600];
    fed_config(&F, sub, path, sizeof path, "count = 1; quorum = 3; deadline = 100;", more);
    if (agg_config_load(c, path) < 0) fed_die("agg_config_load");
    agg *a;
    if (agg_open(&a, c, T0) < 0) fed_die("agg_open");
    return a;
}

static void test_no_session_no_upload(void) {
    agg_config c;
    agg *a = open_agg("nosession", NULL, &c);
    uint8_t id[16] = {1}, data[64] = {0}, d[32] = {0};
    /* Fourteen strangers (2 x members + 8 slots used to be theirs). */
    for (int i = 0; i < 14; i++) {
        id[1] = (uint8_t)i;
        agg_peer stranger = fed_peer(10 + (i % 4));
        struct msg r = begin_on(a, stranger, id, 1 << 20, 1);
        CHECK(fed_is_error(&r, MSG_ERR_BAD_MESSAGE, "no verified HELLO on this connection"));
        r = chunk_on(a, stranger, id, 0, data, sizeof data);
        CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
        r = end_on(a, stranger, id, d);
        CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
    }
    CHECK_MSG(inbox_files(&c) == 0, "%d files in the inbox", inbox_files(&c));
    /* A non-member's HELLO opens nothing either. */
    struct msg r = hello_on(a, fed_peer(13), 3, T0);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_MEMBER, "unknown node"));
    r = begin_on(a, fed_peer(13), id, 1000, 1);
    CHECK(fed_is_error(&r, MSG_ERR_BAD_MESSAGE, "no verified HELLO"));
    /* On a connection the transport authenticated as mallory's key, uni-a's
     * HELLO (captured on the way, valid for 300 s) opens no session. */
    agg_peer as_mallory = fed_peer(14);
    as_mallory.authenticated = 1;
    keys_fingerprint(&F.m[3].pub, as_mallory.fp);
    r = hello_on(a, as_mallory, 0, T0);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "another identity than the key this connection"));
    r = begin_on(a, as_mallory, id, 1000, 1);
    CHECK(fed_is_error(&r, MSG_ERR_BAD_MESSAGE, "no verified HELLO"));
    /* The members are not kept waiting by any of it. */
    for (int i = 0; i < 3; i++) {
        size_t len;
        uint8_t mid[16];
        uint8_t *env = sealed(a, i, 70 + (uint64_t)i, &len, mid);
        r = hello_on(a, fed_peer(i), i, T0);
        CHECK(r.type == MSG_ROUND);
        r = upload_on(a, fed_peer(i), env, len, mid);
        CHECK_MSG(r.type == MSG_RECEIPT, "%s: %s", fed_names[i],
                  r.type == MSG_ERROR ? r.error.reason : msg_type_name(r.type));
        free(env);
    }
    agg_close(a);
    agg_config_free(&c);
}

static void test_member_slots(void) {
    agg_config c;
    agg *a = open_agg("slots", NULL, &c);
    struct msg r = hello_on(a, fed_peer(0), 0, T0);
    CHECK(r.type == MSG_ROUND);
    r = hello_on(a, fed_peer(1), 1, T0);
    CHECK(r.type == MSG_ROUND);
    /* uni-a begins fourteen uploads and feeds each a chunk: each is taken,
     * its own older ones make room, and at most two of its .part files are
     * ever on disk. */
    uint8_t id[16] = {7}, data[100] = {0};
    for (int i = 0; i < 14; i++) {
        id[1] = (uint8_t)i;
        r = begin_on(a, fed_peer(0), id, 1000, 10);
        CHECK(r.type == MSG_ACK);
        r = chunk_on(a, fed_peer(0), id, 0, data, sizeof data);
        CHECK(r.type == MSG_ACK && r.ack.stored == 100);
    }
    CHECK_MSG(inbox_files(&c) == 2, "%d files in the inbox", inbox_files(&c));
    /* The second newest is still there: its next chunk is taken. */
    id[1] = 12;
    r = chunk_on(a, fed_peer(0), id, 1, data, sizeof data);
    CHECK(r.type == MSG_ACK && r.ack.stored == 200);
    id[1] = 11; /* evicted by the newest */
    r = chunk_on(a, fed_peer(0), id, 1, data, sizeof data);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
    /* uni-b is not kept waiting by them. */
    size_t len;
    uint8_t mid[16];
    uint8_t *env = sealed(a, 1, 80, &len, mid);
    r = upload_on(a, fed_peer(1), env, len, mid);
    CHECK_MSG(r.type == MSG_RECEIPT, "uni-b: %s",
              r.type == MSG_ERROR ? r.error.reason : msg_type_name(r.type));
    free(env);
    agg_close(a);
    agg_config_free(&c);
}

static void test_cancel_from_elsewhere(void) {
    agg_config c;
    agg *a = open_agg("cancel", NULL, &c);
    size_t len;
    uint8_t id[16];
    uint8_t *env = sealed(a, 0, 90, &len, id);
    struct msg r = hello_on(a, fed_peer(0), 0, T0);
    CHECK(r.type == MSG_ROUND);
    r = hello_on(a, fed_peer(1), 1, T0);
    CHECK(r.type == MSG_ROUND);
    uint32_t chunks = (uint32_t)((len + 3999) / 4000);
    CHECK(chunks >= 2);
    r = begin_on(a, fed_peer(0), id, len, chunks);
    CHECK(r.type == MSG_ACK);
    r = chunk_on(a, fed_peer(0), id, 0, env, 4000);
    CHECK(r.type == MSG_ACK && r.ack.stored == 4000);
    /* Someone who saw the message id: another member restarting it, a
     * stranger or another member feeding or ending it. */
    r = begin_on(a, fed_peer(1), id, len, chunks);
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "another member's upload"));
    uint8_t junk[16] = {0}, d[32] = {0};
    r = chunk_on(a, fed_peer(1), id, 1, junk, sizeof junk);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
    r = chunk_on(a, fed_peer(12), id, 1, junk, sizeof junk);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
    r = end_on(a, fed_peer(12), id, d);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
    /* uni-a's upload goes on where it was. */
    for (uint32_t i = 1; i < chunks; i++) {
        size_t off = (size_t)i * 4000;
        r = chunk_on(a, fed_peer(0), id, i, env + off,
                     (uint32_t)(len - off < 4000 ? len - off : 4000));
        CHECK(r.type == MSG_ACK);
    }
    crypto_sha256(env, len, d);
    r = end_on(a, fed_peer(0), id, d);
    CHECK_MSG(r.type == MSG_RECEIPT, "uni-a: %s",
              r.type == MSG_ERROR ? r.error.reason : msg_type_name(r.type));
    /* An envelope uni-a sealed, uploaded on uni-b's connection, is not uni-b's. */
    free(env);
    env = sealed(a, 0, 91, &len, id);
    r = upload_on(a, fed_peer(1), env, len, id);
    CHECK(r.type == MSG_ERROR && r.error.code == MSG_ERR_REJECTED);
    free(env);
    agg_close(a);
    agg_config_free(&c);
}

/* SUBMIT_END sent again after the first was accepted (the node's request
 * timed out while the aggregator checked the delta on a new base): the same
 * receipt, not a refusal that made the node upload the whole envelope once
 * more (seen at 8B: bench/scale/federation.sh). Only for its member and its
 * digest: another member's connection, or another digest, get no receipt. */
static void test_end_again(void) {
    agg_config c;
    agg *a = open_agg("end-again", NULL, &c);
    size_t len;
    uint8_t id[16], d[32], other[32];
    uint8_t *env = sealed(a, 0, 92, &len, id);
    CHECK(hello_on(a, fed_peer(0), 0, T0).type == MSG_ROUND);
    CHECK(hello_on(a, fed_peer(1), 1, T0).type == MSG_ROUND);
    struct msg first = upload_on(a, fed_peer(0), env, len, id);
    CHECK_MSG(first.type == MSG_RECEIPT, "uni-a: %s",
              first.type == MSG_ERROR ? first.error.reason : msg_type_name(first.type));
    crypto_sha256(env, len, d);
    struct msg again = end_on(a, fed_peer(0), id, d);
    CHECK_MSG(again.type == MSG_RECEIPT, "SUBMIT_END again: %s",
              again.type == MSG_ERROR ? again.error.reason : msg_type_name(again.type));
    CHECK(again.type == MSG_RECEIPT && again.receipt.round == first.receipt.round &&
          memcmp(again.receipt.id, id, 16) == 0 && memcmp(again.receipt.digest, d, 32) == 0 &&
          again.receipt.time == first.receipt.time);
    memcpy(other, d, 32);
    other[0] ^= 1;
    struct msg r = end_on(a, fed_peer(0), id, other);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
    r = end_on(a, fed_peer(1), id, d);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
    r = end_on(a, fed_peer(12), id, d);
    CHECK(fed_is_error(&r, MSG_ERR_NOT_FOUND, "no upload in progress"));
    free(env);
    agg_close(a);
    agg_config_free(&c);
}

/* The peak resident memory (VmHWM), in bytes; after reset, from now on. */
static long long peak_rss(int reset) {
    if (reset) {
        FILE *f = fopen("/proc/self/clear_refs", "w");
        if (f) {
            fputs("5", f); /* resets VmHWM (proc(5)) */
            fclose(f);
        }
    }
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atoll(line + 6);
    if (f) fclose(f);
    return kb * 1024;
}

static void test_streaming_end(void) {
    agg_config c;
    agg *a = open_agg("memory", "limits = { max_submission = 67108864; };\n", &c);
    struct msg r = hello_on(a, fed_peer(0), 0, T0);
    CHECK(r.type == MSG_ROUND);
    const uint32_t chunks = 48;
    uint8_t *chunk = malloc(MSG_CHUNK_MAX), id[16] = {0x42}, d[32];
    crypto_sha256_ctx *h;
    crypto_sha256_new(&h);
    r = begin_on(a, fed_peer(0), id, (uint64_t)chunks * MSG_CHUNK_MAX, chunks);
    CHECK(r.type == MSG_ACK);
    for (uint32_t i = 0; i < chunks && r.type == MSG_ACK; i++) {
        for (size_t k = 0; k < MSG_CHUNK_MAX; k++) chunk[k] = (uint8_t)(k * 31 + i);
        crypto_sha256_update(h, chunk, MSG_CHUNK_MAX);
        r = chunk_on(a, fed_peer(0), id, i, chunk, MSG_CHUNK_MAX);
    }
    crypto_sha256_final(h, d);
    crypto_sha256_free(h);
    free(chunk);
    long long before = peak_rss(1);
    r = end_on(a, fed_peer(0), id, d);
    long long grew = peak_rss(0) - before;
    CHECK(fed_is_error(&r, MSG_ERR_REJECTED, "tampered envelope"));
    printf("SUBMIT_END of a %u MiB garbage upload: peak memory +%.1f MiB\n", chunks,
           (double)grew / (1 << 20));
    CHECK_MSG(before > 0 && grew < (16 << 20), "peak memory grew by %lld bytes", grew);
    CHECK_MSG(inbox_files(&c) == 0, "%d files in the inbox", inbox_files(&c));
    agg_close(a);
    agg_config_free(&c);
}

int main(void) {
    fed_init(&F);
    test_no_session_no_upload();
    test_member_slots();
    test_cancel_from_elsewhere();
    test_end_again();
    test_streaming_end();
    model_free(F.base);
    return check_finish();
}
