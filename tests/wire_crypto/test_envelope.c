/* Sealed envelopes: round trips, the bad-input matrix (each case asserts the
 * precise refusal code and message), streaming with bounded memory.
 *
 * `test_envelope --write-fuzz-seeds DIR` writes the seed corpus of
 * tests/fuzz/fuzz_envelope_open.c (envelopes sealed with the fixture keys). */
#include "tests/check.h"
#include "tests/wire_crypto/envelope_fixture.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"
#include "wire/envelope.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define OFF_SEGMENTS (ENVELOPE_HEADER_LEN + ENVELOPE_CONFIRM_LEN)

typedef struct {
    uint8_t *p;
    size_t len;
} bytes;

static const keys_secret *A, *B, *AGG, *AGG_OLD, *OUTSIDER;

static void fill_pattern(uint8_t *p, size_t n, uint64_t start) {
    for (size_t i = 0; i < n; i++) {
        uint64_t x = start + i;
        p[i] = (uint8_t)(x ^ (x >> 8) ^ (x >> 17) ^ 0x5a);
    }
}

static bytes seal_by(const keys_secret *sender, const uint8_t *recipient_pub, const uint8_t *pt,
                     size_t n, uint32_t seg, envelope_header *hdr) {
    envelope_params p = fixture_params(n, seg);
    bytes e = {NULL, 0};
    if (envelope_seal_mem(&p, sender, recipient_pub, pt, &e.p, &e.len, hdr) != 0)
        fprintf(stderr, "seal failed: %s\n", err_msg());
    return e;
}

/* A payload of n pattern bytes sealed by A to the aggregator. */
static bytes seal_pattern(size_t n, uint32_t seg) {
    uint8_t *pt = malloc(n ? n : 1);
    fill_pattern(pt, n, 0);
    bytes e = seal_by(A, AGG->pub.kx_pub, pt, n, seg, NULL);
    free(pt);
    return e;
}

/* ---- streaming helpers -------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t len, pos, step; /* step: deliver at most this many bytes per call */
} reader;

static int read_mem(void *arg, void *buf, size_t cap, size_t *got) {
    reader *r = arg;
    size_t n = r->len - r->pos;
    if (n > cap) n = cap;
    if (r->step && n > r->step) n = r->step;
    if (n) memcpy(buf, r->p + r->pos, n);
    r->pos += n;
    *got = n;
    return 0;
}

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int fail;
} sink;

static int sink_write(void *arg, const void *buf, size_t n) {
    sink *s = arg;
    if (s->fail) return err_set("sink refuses (test)");
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2;
        s->p = realloc(s->p, s->cap);
    }
    memcpy(s->p + s->len, buf, n);
    s->len += n;
    return 0;
}

/* Opens e with the streaming API (reading in odd-sized pieces) and with the
 * in-memory API; both must agree on the status, which is returned. */
static envelope_status open_both(const envelope_expect *x, const keys_secret *recipient, bytes e,
                                 sink *out) {
    reader r = {e.p, e.len, 0, 777};
    sink s = {NULL, 0, 0, 0};
    envelope_status st_stream = ENVELOPE_OK, st_mem = ENVELOPE_OK;
    int rc = envelope_open(x, recipient, read_mem, &r, sink_write, &s, NULL, NULL, &st_stream);
    CHECK((rc == 0) == (st_stream == ENVELOPE_OK));
    char msg_stream[ERR_MSG_MAX];
    snprintf(msg_stream, sizeof msg_stream, "%s", err_msg());
    uint8_t *pt = NULL;
    size_t n = 0;
    rc = envelope_open_mem(x, recipient, e.p, e.len, &pt, &n, NULL, NULL, &st_mem);
    CHECK((rc == 0) == (st_mem == ENVELOPE_OK));
    CHECK(rc == 0 || pt == NULL);
    if (rc == 0) CHECK(n == s.len && (n == 0 || memcmp(pt, s.p, n) == 0));
    free(pt);
    /* Leave the streaming message as the current one for the caller. */
    err_set("%s", msg_stream);
    if (out)
        *out = s;
    else
        free(s.p);
    if (st_mem != st_stream) {
        CHECK_MSG(0, "streaming says %s, in-memory says %s", envelope_status_name(st_stream),
                  envelope_status_name(st_mem));
    }
    return st_stream;
}

#define CHECK_REFUSED(expr, code, needle)                                                          \
    do {                                                                                           \
        envelope_status st_ = (expr);                                                              \
        CHECK_MSG(st_ == (code) && strstr(err_msg(), (needle)) != NULL,                            \
                  "status %s, message '%s'; wanted %s with '%s'", envelope_status_name(st_),       \
                  err_msg(), envelope_status_name(code), (needle));                                \
    } while (0)

static envelope_status verify_bytes(const envelope_expect *x, bytes e) {
    reader r = {e.p, e.len, 0, 0};
    envelope_status st = ENVELOPE_OK;
    int rc = envelope_verify(x, AGG->pub.kx_pub, read_mem, &r, NULL, NULL, &st);
    CHECK((rc == 0) == (st == ENVELOPE_OK));
    return st;
}

static bytes copy_bytes(bytes e) {
    bytes c = {malloc(e.len), e.len};
    memcpy(c.p, e.p, e.len);
    return c;
}

/* ---- round trips ------------------------------------------------------------------------ */

static void test_round_trips(void) {
    envelope_expect x = fixture_expect(1 << 24);
    const struct {
        size_t n;
        uint32_t seg;
    } cases[] = {{0, 1024},
                 {1, 1024},
                 {1023, 1024},
                 {1024, 1024},
                 {1025, 1024},
                 {5000, 1024},
                 {3 * 1024 * 1024 + 7, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c].n;
        uint8_t *pt = malloc(n ? n : 1);
        fill_pattern(pt, n, c);
        envelope_header h;
        bytes e = seal_by(A, AGG->pub.kx_pub, pt, n, cases[c].seg, &h);
        uint64_t total;
        CHECK_OK(envelope_sealed_size(n, h.segment_size, &total));
        CHECK_MSG(e.len == total, "payload %zu: sealed %zu bytes, expected %llu", n, e.len,
                  (unsigned long long)total);
        CHECK(h.segment_size == (cases[c].seg ? cases[c].seg : ENVELOPE_SEGMENT_DEFAULT));
        sink s;
        CHECK_MSG(open_both(&x, AGG, e, &s) == ENVELOPE_OK, "payload %zu: %s", n, err_msg());
        CHECK_MSG(s.len == n && (n == 0 || memcmp(s.p, pt, n) == 0), "payload %zu differs", n);
        CHECK_MSG(verify_bytes(&x, e) == ENVELOPE_OK, "verify payload %zu: %s", n, err_msg());

        /* The parsed header is the sealed one, and the sender is A. */
        reader r = {e.p, e.len, 0, 0};
        envelope_header got;
        keys_public who;
        CHECK_OK(envelope_open(&x, AGG, read_mem, &r, NULL, NULL, &got, &who, NULL));
        CHECK(memcmp(&got, &h, sizeof h) == 0);
        CHECK(got.round == FIXTURE_ROUND && got.payload_type == FIXTURE_PAYLOAD_TYPE);
        CHECK(strcmp(who.name, "uni-a") == 0);
        free(s.p);
        free(e.p);
        free(pt);
    }

    /* Two seals of the same payload share nothing but the header's context. */
    envelope_header h1, h2;
    uint8_t pt[100] = {0};
    bytes e1 = seal_by(A, AGG->pub.kx_pub, pt, sizeof pt, 1024, &h1);
    bytes e2 = seal_by(A, AGG->pub.kx_pub, pt, sizeof pt, 1024, &h2);
    CHECK(memcmp(h1.message_id, h2.message_id, ENVELOPE_MSGID_LEN) != 0);
    CHECK(memcmp(h1.ephemeral_pub, h2.ephemeral_pub, 32) != 0);
    CHECK(memcmp(e1.p + OFF_SEGMENTS, e2.p + OFF_SEGMENTS, sizeof pt) != 0);
    /* The header is where docs/envelope.md says. */
    CHECK(memcmp(e1.p, "FLSE", 4) == 0 && e1.p[4] == 0 && e1.p[5] == ENVELOPE_VERSION);
    CHECK(e1.p[6] == 0 && e1.p[7] == FIXTURE_PAYLOAD_TYPE);
    CHECK(memcmp(e1.p + 8, FIXTURE_CONSORTIUM, 32) == 0 && e1.p[47] == FIXTURE_ROUND);
    CHECK(memcmp(e1.p + 112, h1.message_id, 16) == 0);
    CHECK(e1.p[130] == 1024 >> 8 && e1.p[139] == sizeof pt);
    free(e1.p);
    free(e2.p);
}

/* ---- the bad-input matrix -------------------------------------------------------------- */

static void test_flipped_header_bit(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(3000, 1024);
    e.p[112 + 5] ^= 0x04; /* message id: no context check looks at it */
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_EHEADER, "key confirmation");
    /* Without the private key, the signature catches it. */
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_ESIGNATURE, "not valid for sender 'uni-a'");
    e.p[112 + 5] ^= 0x04;
    /* The payload size: a stream fails the key confirmation, the in-memory
     * form already the length check. */
    e.p[132 + 7] ^= 0x01;
    reader r = {e.p, e.len, 0, 0};
    envelope_status st;
    CHECK(envelope_open(&x, AGG, read_mem, &r, NULL, NULL, NULL, NULL, &st) != 0);
    CHECK_MSG(st == ENVELOPE_EHEADER, "%s", err_msg());
    uint8_t *pt;
    size_t n;
    CHECK(envelope_open_mem(&x, AGG, e.p, e.len, &pt, &n, NULL, NULL, &st) != 0);
    CHECK_MSG(st == ENVELOPE_ETRUNCATED, "%s", err_msg());
    free(e.p);
}

static void test_flipped_ciphertext_bit(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(3000, 1024);
    size_t seg1 = OFF_SEGMENTS + 1024 + 16;
    e.p[seg1 + 100] ^= 0x80;
    sink s;
    CHECK_REFUSED(open_both(&x, AGG, e, &s), ENVELOPE_ESEGMENT, "segment 1 of 3");
    CHECK(s.len == 1024); /* segment 0 was released (provisionally), segment 1 never */
    free(s.p);
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_ESIGNATURE, "signature");
    free(e.p);
}

static void test_flipped_tag_bit(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(3000, 1024);
    e.p[OFF_SEGMENTS + 1024 + 3] ^= 0x01; /* inside segment 0's tag */
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ESEGMENT, "segment 0 of 3");
    free(e.p);
    /* The last segment's tag, right before the signature. */
    e = seal_pattern(3000, 1024);
    e.p[e.len - ENVELOPE_SIG_LEN - 1] ^= 0x40;
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ESEGMENT, "segment 2 of 3");
    free(e.p);
}

static void test_flipped_signature_bit(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(3000, 1024);
    e.p[e.len - 10] ^= 0x02;
    sink s;
    CHECK_REFUSED(open_both(&x, AGG, e, &s), ENVELOPE_ESIGNATURE, "not valid for sender 'uni-a'");
    /* Everything was decrypted into the sink, yet open refused: that output
     * is provisional and must be discarded (envelope.h). */
    CHECK(s.len == 3000);
    free(s.p);
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_ESIGNATURE, "signature");
    free(e.p);
}

static void test_last_segment_dropped(void) {
    envelope_expect x = fixture_expect(1 << 20);
    /* 3 segments: 1024, 1024, 952. Remove the last one (952 + 16 bytes) and
     * keep the signature. */
    bytes e = seal_pattern(3000, 1024);
    size_t last = OFF_SEGMENTS + 2 * (1024 + 16), last_len = 952 + 16;
    memmove(e.p + last, e.p + last + last_len, ENVELOPE_SIG_LEN);
    e.len -= last_len;
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ETRUNCATED, "cut short");
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_ETRUNCATED, "inside segment 2 of 3");
    free(e.p);
    /* Full-size last segment: 2 x 1024, drop the second. */
    e = seal_pattern(2048, 1024);
    memmove(e.p + OFF_SEGMENTS + 1040, e.p + OFF_SEGMENTS + 2080, ENVELOPE_SIG_LEN);
    e.len -= 1040;
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ETRUNCATED, "cut short");
    free(e.p);
    /* Cut anywhere: inside the header, the confirmation, a segment, the signature. */
    e = seal_pattern(3000, 1024);
    size_t cuts[] = {0, 100, 180, OFF_SEGMENTS + 10, e.len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        bytes c = {e.p, cuts[i]};
        CHECK_REFUSED(open_both(&x, AGG, c, NULL), ENVELOPE_ETRUNCATED, "");
    }
    free(e.p);
}

static void test_segments_reordered(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(3000, 1024);
    uint8_t tmp[1040];
    uint8_t *s0 = e.p + OFF_SEGMENTS, *s1 = s0 + 1040;
    memcpy(tmp, s0, 1040);
    memcpy(s0, s1, 1040);
    memcpy(s1, tmp, 1040);
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ESEGMENT, "segment 0 of 3");
    free(e.p);
    /* A segment spliced in from another envelope with the same keys. */
    bytes e1 = seal_pattern(3000, 1024), e2 = seal_pattern(3000, 1024);
    memcpy(e1.p + OFF_SEGMENTS + 1040, e2.p + OFF_SEGMENTS + 1040, 1040);
    CHECK_REFUSED(open_both(&x, AGG, e1, NULL), ENVELOPE_ESEGMENT, "segment 1 of 3");
    free(e1.p);
    free(e2.p);
}

static void test_wrong_recipient(void) {
    envelope_expect x = fixture_expect(1 << 20);
    uint8_t pt[10] = {1};
    bytes e = seal_by(A, AGG_OLD->pub.kx_pub, pt, sizeof pt, 1024, NULL);
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ERECIPIENT, "another (or an old)");
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_ERECIPIENT, "recipient key");
    /* Rewriting the recipient fingerprint to ours does not help: the key
     * confirmation then fails. */
    uint8_t fp[32];
    CHECK_OK(keys_kx_fingerprint(AGG->pub.kx_pub, fp));
    memcpy(e.p + 80, fp, 32);
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_EHEADER, "key confirmation");
    free(e.p);
}

static void test_unknown_signer(void) {
    envelope_expect x = fixture_expect(1 << 20);
    uint8_t pt[10] = {2};
    bytes e = seal_by(OUTSIDER, AGG->pub.kx_pub, pt, sizeof pt, 1024, NULL);
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_EUNKNOWN_SENDER, "not a known member");
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_EUNKNOWN_SENDER, "roster");
    free(e.p);
}

static void test_wrong_signer(void) {
    envelope_expect x = fixture_expect(1 << 20);
    uint8_t pt[10] = {3};
    /* B seals an envelope that names A as its sender, signing with B's key. */
    keys_secret forged = *B;
    forged.pub = A->pub;
    bytes e = seal_by(&forged, AGG->pub.kx_pub, pt, sizeof pt, 1024, NULL);
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ESIGNATURE, "not valid for sender 'uni-a'");
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_ESIGNATURE, "signed by another key");
    free(e.p);
    /* B seals honestly as B, but on a session that belongs to A. */
    uint8_t fp_a[32];
    CHECK_OK(keys_fingerprint(&A->pub, fp_a));
    x.expected_sender = fp_a;
    e = seal_by(B, AGG->pub.kx_pub, pt, sizeof pt, 1024, NULL);
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ESENDER, "sealed by 'uni-b'");
    free(e.p);
    /* B re-labels A's envelope as its own: the header changes, so the key
     * confirmation fails (the header is bound into the key). */
    x.expected_sender = NULL;
    e = seal_by(A, AGG->pub.kx_pub, pt, sizeof pt, 1024, NULL);
    uint8_t fp_b[32];
    CHECK_OK(keys_fingerprint(&B->pub, fp_b));
    memcpy(e.p + 48, fp_b, 32);
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_EHEADER, "key confirmation");
    free(e.p);
}

/* A replay store: the ids accepted so far. */
typedef struct {
    uint8_t ids[8][ENVELOPE_MSGID_LEN];
    int n;
} seen_set;

static int seen_check(void *arg, const uint8_t id[ENVELOPE_MSGID_LEN]) {
    seen_set *s = arg;
    for (int i = 0; i < s->n; i++)
        if (memcmp(s->ids[i], id, ENVELOPE_MSGID_LEN) == 0) return 1;
    return 0;
}

static void test_replayed_message_id(void) {
    envelope_expect x = fixture_expect(1 << 20);
    seen_set seen = {.n = 0};
    x.seen = seen_check;
    x.seen_arg = &seen;
    bytes e = seal_pattern(500, 1024);
    envelope_header h;
    reader r = {e.p, e.len, 0, 0};
    CHECK_OK(envelope_open(&x, AGG, read_mem, &r, NULL, NULL, &h, NULL, NULL));
    memcpy(seen.ids[seen.n++], h.message_id, ENVELOPE_MSGID_LEN); /* the caller records it */
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_EREPLAY, "already accepted: a replay");
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_EREPLAY, "replay");
    /* A fresh envelope with the same content is not a replay. */
    bytes e2 = seal_pattern(500, 1024);
    CHECK(open_both(&x, AGG, e2, NULL) == ENVELOPE_OK);
    free(e.p);
    free(e2.p);
}

static void test_round_mismatch(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(10, 1024);
    x.round_min = x.round_max = FIXTURE_ROUND + 1;
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_EROUND, "sealed for round 42");
    x.round_min = 0, x.round_max = FIXTURE_ROUND - 1;
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_EROUND, "accepts rounds 0..41");
    x.round_min = FIXTURE_ROUND - 1, x.round_max = FIXTURE_ROUND + 1;
    CHECK(open_both(&x, AGG, e, NULL) == ENVELOPE_OK);
    /* Editing the round in the header to the accepted one breaks the key. */
    x.round_min = x.round_max = FIXTURE_ROUND + 1;
    e.p[47] = FIXTURE_ROUND + 1;
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_EHEADER, "key confirmation");
    free(e.p);
}

static void test_consortium_mismatch(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(10, 1024);
    x.consortium[31] ^= 1;
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ECONSORTIUM, "another consortium");
    CHECK_REFUSED(verify_bytes(&x, e), ENVELOPE_ECONSORTIUM, "consortium");
    free(e.p);
}

static void test_payload_type_mismatch(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(10, 1024);
    x.payload_type = FIXTURE_PAYLOAD_TYPE + 1;
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ETYPE, "payload type 7, expected 8");
    x.check_payload_type = 0;
    CHECK(open_both(&x, AGG, e, NULL) == ENVELOPE_OK);
    free(e.p);
}

static void test_short_tag(void) {
    envelope_expect x = fixture_expect(1 << 20);
    /* The format has no tag length: tags are always 16 bytes. A last tag
     * shortened to 12 bytes makes the envelope 4 bytes short. In memory the
     * length check catches it before any decryption; a stream reads 4
     * signature bytes as the end of the tag, which fails GCM. (The wrapper's
     * own refusal of tags shorter than 16 bytes is in test_crypto_kat.) */
    bytes e = seal_pattern(3000, 1024);
    size_t tag_end = e.len - ENVELOPE_SIG_LEN;
    memmove(e.p + tag_end - 4, e.p + tag_end, ENVELOPE_SIG_LEN);
    e.len -= 4;
    uint8_t *pt = NULL;
    size_t n;
    envelope_status st;
    CHECK(envelope_open_mem(&x, AGG, e.p, e.len, &pt, &n, NULL, NULL, &st) != 0);
    CHECK_MSG(st == ENVELOPE_ETRUNCATED && strstr(err_msg(), "cut short"), "%s", err_msg());
    reader r = {e.p, e.len, 0, 0};
    CHECK(envelope_open(&x, AGG, read_mem, &r, NULL, NULL, NULL, NULL, &st) != 0);
    CHECK_MSG(st == ENVELOPE_ESEGMENT && strstr(err_msg(), "segment 2 of 3"), "%s", err_msg());
    free(e.p);
}

static void test_oversize(void) {
    bytes e = seal_pattern(5000, 1024);
    envelope_expect x = fixture_expect(4999);
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ETOOBIG, "limit of 4999");
    x = fixture_expect(5000);
    CHECK(open_both(&x, AGG, e, NULL) == ENVELOPE_OK);
    free(e.p);
    /* A segment size above the receiver's own limit. */
    e = seal_pattern(5000, 4096);
    x.max_segment = 2048;
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ETOOBIG, "segment size 4096");
    free(e.p);
    /* A header claiming 2^60 bytes is refused before anything is allocated,
     * even by a receiver with no limit of its own. */
    e = seal_pattern(10, 1024);
    x = fixture_expect(UINT64_MAX);
    e.p[132] = 0x10; /* payload size = 2^60 + 10 */
    CHECK_REFUSED(open_both(&x, AGG, e, NULL), ENVELOPE_ETOOBIG, "cap of 2^50 bytes");
    free(e.p);
}

static void test_malformed(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(10, 1024);
    bytes c = copy_bytes(e);
    c.p[0] = 'X';
    CHECK_REFUSED(open_both(&x, AGG, c, NULL), ENVELOPE_EFORMAT, "not a fedlora sealed envelope");
    memcpy(c.p, e.p, e.len);
    c.p[5] = 2;
    CHECK_REFUSED(open_both(&x, AGG, c, NULL), ENVELOPE_EVERSION, "protocol version 2");
    memcpy(c.p, e.p, e.len);
    memset(c.p + 128, 0, 4);
    CHECK_REFUSED(open_both(&x, AGG, c, NULL), ENVELOPE_EFORMAT, "segment size 0");
    memcpy(c.p, e.p, e.len);
    memset(c.p + 140, 0, 32); /* ephemeral key of small order */
    CHECK_REFUSED(open_both(&x, AGG, c, NULL), ENVELOPE_EHEADER, "ephemeral key");
    memcpy(c.p, e.p, e.len);
    c.p[180] ^= 1; /* key confirmation */
    CHECK_REFUSED(open_both(&x, AGG, c, NULL), ENVELOPE_EHEADER, "key confirmation");
    CHECK_REFUSED(verify_bytes(&x, c), ENVELOPE_ESIGNATURE, "signature");
    free(c.p);
    /* Trailing bytes after the signature. */
    c.len = e.len + 3;
    c.p = calloc(1, c.len);
    memcpy(c.p, e.p, e.len);
    CHECK_REFUSED(open_both(&x, AGG, c, NULL), ENVELOPE_ETRAILING, "");
    CHECK_REFUSED(verify_bytes(&x, c), ENVELOPE_ETRAILING, "follow the signature");
    free(c.p);
    /* The wrong private key (a member's) for an envelope addressed to AGG
     * whose recipient fingerprint we pretend matches: key confirmation. */
    keys_secret wrong = *B;
    memcpy(wrong.pub.kx_pub, AGG->pub.kx_pub, 32);
    CHECK_REFUSED(open_both(&x, &wrong, e, NULL), ENVELOPE_EHEADER, "key confirmation");
    free(e.p);
}

static int read_fail(void *arg, void *buf, size_t cap, size_t *got) {
    reader *r = arg;
    if (r->pos >= 300) return err_set("disk on fire (test)");
    return read_mem(arg, buf, cap, got);
}

static void test_io_failures(void) {
    envelope_expect x = fixture_expect(1 << 20);
    bytes e = seal_pattern(3000, 1024);
    reader r = {e.p, e.len, 0, 100};
    envelope_status st;
    CHECK(envelope_open(&x, AGG, read_fail, &r, NULL, NULL, NULL, NULL, &st) != 0);
    CHECK_MSG(st == ENVELOPE_EIO && strstr(err_msg(), "disk on fire"), "%s", err_msg());
    sink s = {NULL, 0, 0, 1};
    r = (reader){e.p, e.len, 0, 0};
    CHECK(envelope_open(&x, AGG, read_mem, &r, sink_write, &s, NULL, NULL, &st) != 0);
    CHECK_MSG(st == ENVELOPE_EIO && strstr(err_msg(), "sink refuses"), "%s", err_msg());
    /* The lookup is required. */
    x.lookup = NULL;
    r = (reader){e.p, e.len, 0, 0};
    CHECK(envelope_open(&x, AGG, read_mem, &r, NULL, NULL, NULL, NULL, &st) != 0);
    CHECK(st == ENVELOPE_EIO);
    free(e.p);

    /* Seal: the reader must deliver exactly payload_size bytes. */
    uint8_t pt[2000] = {0};
    envelope_params p = fixture_params(2000, 1024);
    sink out = {NULL, 0, 0, 0};
    r = (reader){pt, 1500, 0, 0};
    CHECK_FAILS_WITH(envelope_seal(&p, A, AGG->pub.kx_pub, read_mem, &r, sink_write, &out, NULL),
                     "ended after 1500 bytes, the envelope header promises 2000");
    out.len = 0;
    r = (reader){pt, 2000, 0, 0};
    p.payload_size = 1999;
    CHECK_FAILS_WITH(envelope_seal(&p, A, AGG->pub.kx_pub, read_mem, &r, sink_write, &out, NULL),
                     "more than the 1999 bytes");
    p.payload_size = 2000;
    p.segment_size = 100;
    CHECK_FAILS_WITH(envelope_seal(&p, A, AGG->pub.kx_pub, read_mem, &r, sink_write, &out, NULL),
                     "segment size 100 is outside");
    free(out.p);
}

/* ---- streaming with bounded memory ----------------------------------------------------- */

typedef struct {
    uint64_t pos, len;
} gen;

static int gen_read(void *arg, void *buf, size_t cap, size_t *got) {
    gen *g = arg;
    size_t n = g->len - g->pos < cap ? (size_t)(g->len - g->pos) : cap;
    fill_pattern(buf, n, g->pos);
    g->pos += n;
    *got = n;
    return 0;
}

typedef struct {
    uint64_t pos;
    int bad;
} checker;

static int check_write(void *arg, const void *buf, size_t n) {
    checker *c = arg;
    uint8_t want[4096];
    for (size_t off = 0; off < n; off += sizeof want) {
        size_t k = n - off < sizeof want ? n - off : sizeof want;
        fill_pattern(want, k, c->pos + off);
        if (memcmp(want, (const uint8_t *)buf + off, k) != 0) c->bad = 1;
    }
    c->pos += n;
    return 0;
}

static long max_rss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void test_streaming_bounded_memory(void) {
    /* 128 MiB through a temporary file: far more than the memory the seal and
     * open may use (a segment buffer each). */
    const uint64_t size = 128ull << 20;
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (!f) return;
    int fd = fileno(f);
    long rss0 = max_rss_kb();
    envelope_params p = fixture_params(size, 0);
    gen g = {0, size};
    envelope_header h;
    CHECK_OK(envelope_seal(&p, A, AGG->pub.kx_pub, gen_read, &g, envelope_fd_write, &fd, &h));
    uint64_t total;
    CHECK_OK(envelope_sealed_size(size, ENVELOPE_SEGMENT_DEFAULT, &total));
    CHECK((uint64_t)lseek(fd, 0, SEEK_END) == total);

    envelope_expect x = fixture_expect(size);
    lseek(fd, 0, SEEK_SET);
    CHECK_OK(envelope_verify(&x, AGG->pub.kx_pub, envelope_fd_read, &fd, NULL, NULL, NULL));
    lseek(fd, 0, SEEK_SET);
    checker c = {0, 0};
    envelope_status st;
    CHECK_OK(envelope_open(&x, AGG, envelope_fd_read, &fd, check_write, &c, NULL, NULL, &st));
    CHECK(st == ENVELOPE_OK && c.pos == size && !c.bad);
    long grew_kb = max_rss_kb() - rss0;
    CHECK_MSG(grew_kb < 24 * 1024, "peak RSS grew by %ld KiB for a 128 MiB payload", grew_kb);
    fclose(f);
}

/* ---- an independent implementation ---------------------------------------------------- */

/* The .env files in tests/fixtures/envelope/ were sealed by make_envelopes.py, a Python
 * implementation of docs/envelope.md (pyca/cryptography), with the fixture
 * keys and a fixed ephemeral key: opening them checks the code against the
 * document, byte for byte. */
static void test_python_reference(void) {
    const char *fixtures = getenv("FEDLORA_FIXTURES");
    CHECK_MSG(fixtures != NULL, "FEDLORA_FIXTURES is not set");
    if (!fixtures) return;
    const struct {
        const char *file;
        size_t payload;
        uint8_t first_id_byte;
    } refs[] = {{"envelope/empty.env", 0, 0}, {"envelope/three-segments.env", 3000, 16}};
    envelope_expect x = fixture_expect(1 << 20);
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
        char path[4096], *data;
        size_t len;
        CHECK_OK(fio_join(path, sizeof path, fixtures, refs[i].file));
        if (fio_read_all(path, 1 << 20, &data, &len) != 0) {
            CHECK_MSG(0, "%s", err_msg());
            continue;
        }
        bytes e = {(uint8_t *)data, len};
        sink s;
        CHECK_MSG(open_both(&x, AGG, e, &s) == ENVELOPE_OK, "%s: %s", refs[i].file, err_msg());
        uint8_t *want = malloc(refs[i].payload + 1);
        fill_pattern(want, refs[i].payload, 0);
        CHECK(s.len == refs[i].payload && (s.len == 0 || memcmp(s.p, want, s.len) == 0));
        reader r = {e.p, e.len, 0, 0};
        envelope_header h;
        CHECK_OK(envelope_open(&x, AGG, read_mem, &r, NULL, NULL, &h, NULL, NULL));
        CHECK(h.message_id[0] == refs[i].first_id_byte &&
              h.message_id[15] == refs[i].first_id_byte + 15);
        CHECK(verify_bytes(&x, e) == ENVELOPE_OK);
        /* One flipped bit in the reference makes it fail, as it must. */
        e.p[len / 2] ^= 1;
        CHECK(open_both(&x, AGG, e, NULL) != ENVELOPE_OK);
        free(want);
        free(s.p);
        free(data);
    }
}

/* ---- fuzz seeds ------------------------------------------------------------------------- */

static int write_fuzz_seeds(const char *dir) {
    if (fio_mkdirs(dir, 0755) != 0) return fprintf(stderr, "%s\n", err_msg()), 1;
    const size_t sizes[] = {0, 1, 40, 1024, 2500};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        bytes e = seal_pattern(sizes[i], 1024);
        char name[64], path[4096];
        snprintf(name, sizeof name, "sealed-%zu", sizes[i]);
        if (!e.p || fio_join(path, sizeof path, dir, name) != 0 ||
            fio_write_atomic(path, e.p, e.len, 0644) != 0)
            return fprintf(stderr, "%s\n", err_msg()), 1;
        free(e.p);
    }
    return 0;
}

static const struct {
    const char *name;
    void (*run)(void);
} cases[] = {
    {"round_trips", test_round_trips},
    {"flipped_header_bit", test_flipped_header_bit},
    {"flipped_ciphertext_bit", test_flipped_ciphertext_bit},
    {"flipped_tag_bit", test_flipped_tag_bit},
    {"flipped_signature_bit", test_flipped_signature_bit},
    {"last_segment_dropped", test_last_segment_dropped},
    {"segments_reordered", test_segments_reordered},
    {"wrong_recipient", test_wrong_recipient},
    {"unknown_signer", test_unknown_signer},
    {"wrong_signer", test_wrong_signer},
    {"replayed_message_id", test_replayed_message_id},
    {"round_mismatch", test_round_mismatch},
    {"consortium_mismatch", test_consortium_mismatch},
    {"payload_type_mismatch", test_payload_type_mismatch},
    {"short_tag", test_short_tag},
    {"oversize", test_oversize},
    {"malformed", test_malformed},
    {"io_failures", test_io_failures},
    {"streaming_bounded_memory", test_streaming_bounded_memory},
    {"python_reference", test_python_reference},
};

/* No argument: every case. One argument: that case only (CTest registers
 * each case as its own test, envelope.<case>). */
int main(int argc, char **argv) {
    fixture_init();
    A = &fixture_keys[FX_UNI_A];
    B = &fixture_keys[FX_UNI_B];
    AGG = &fixture_keys[FX_AGG];
    AGG_OLD = &fixture_keys[FX_AGG_OLD];
    OUTSIDER = &fixture_keys[FX_OUTSIDER];
    if (argc == 3 && !strcmp(argv[1], "--write-fuzz-seeds")) return write_fuzz_seeds(argv[2]);
    int ran = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) continue;
        cases[i].run();
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "test_envelope: no case named '%s'\n", argv[1]);
        return 2;
    }
    return check_finish();
}
