/* wire_msg: every message round-trips; the bounded reader and the schema
 * decoder refuse each kind of bad input with the precise reason.
 *
 * Hostile inputs are built byte by byte (nesting, lying headers) or with
 * msgpack-c's packer (well-formed msgpack that breaks the schema). */
#include "tests/check.h"
#include "util/err.h"
#include "wire/mp.h"
#include "wire/msg.h"

#include <math.h>
#include <msgpack.h>
#include <stdlib.h>

/* ---- helpers ---------------------------------------------------------------- */

static void fill(uint8_t *p, size_t n, uint8_t seed) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(seed + 31 * i);
}

/* Encodes m, decodes it, re-encodes the result: the two encodings must be
 * byte-identical (so every field survived), and the decoded message is left
 * in *out (its blobs point into *buf, which the caller frees). */
static int round_trip(const struct msg *m, struct msg *out, uint8_t **buf) {
    size_t len, len2;
    uint8_t *again;
    if (msg_encode(m, buf, &len) < 0) return -1;
    if (msg_decode(*buf, len, NULL, out) < 0) return -1;
    if (msg_encode(out, &again, &len2) < 0) return -1;
    int same = len == len2 && memcmp(*buf, again, len) == 0;
    free(again);
    return same
               ? 0
               : err_set("re-encoding the decoded %s gave different bytes", msg_type_name(m->type));
}

/* A msgpack-c builder for schema-breaking but well-formed inputs. */
struct b {
    msgpack_sbuffer sb;
    msgpack_packer pk;
};

static void b_init(struct b *b) {
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void b_str(struct b *b, const char *s) {
    msgpack_pack_str_with_body(&b->pk, s, strlen(s));
}

static void b_kstr(struct b *b, const char *k, const char *v) {
    b_str(b, k);
    b_str(b, v);
}

static void b_kuint(struct b *b, const char *k, uint64_t v) {
    b_str(b, k);
    msgpack_pack_uint64(&b->pk, v);
}

static void b_kbin(struct b *b, const char *k, size_t n) {
    uint8_t z[64] = {0};
    b_str(b, k);
    msgpack_pack_bin_with_body(&b->pk, z, n);
}

/* The start of a message map with `fields` entries after "v" and "t". */
static void b_head(struct b *b, const char *type, size_t fields) {
    msgpack_pack_map(&b->pk, fields + 2);
    b_kuint(b, "v", MSG_VERSION);
    b_kstr(b, "t", type);
}

static int b_decode(struct b *b, struct msg *m) {
    int rc = msg_decode(b->sb.data, b->sb.size, NULL, m);
    msgpack_sbuffer_destroy(&b->sb);
    return rc;
}

static struct msg sample_hello(void) {
    struct msg m = {.type = MSG_HELLO};
    strcpy(m.hello.name, "uni-bern.ch");
    fill(m.hello.fingerprint, MSG_HASH_LEN, 1);
    m.hello.ncaps = 2;
    strcpy(m.hello.caps[0], "cuda");
    strcpy(m.hello.caps[1], "bf16");
    m.hello.time = 1795000000;
    fill(m.hello.sig, MSG_SIG_LEN, 9);
    return m;
}

static struct msg sample_round(void) {
    struct msg m = {.type = MSG_ROUND};
    m.round.round = 7;
    fill(m.round.base, MSG_HASH_LEN, 2);
    m.round.train = (struct msg_train){
        .steps = 200, .lr = 2e-4, .rank = 16, .alpha = 32, .ntargets = 2, .batch = 8, .seq = 512};
    strcpy(m.round.train.targets[0], "q_proj");
    strcpy(m.round.train.targets[1], "v_proj");
    m.round.deadline = 1795000000;
    return m;
}

/* ---- round trips ------------------------------------------------------------- */

static void test_round_trips(void) {
    static uint8_t chunk[MSG_CHUNK_MAX];
    fill(chunk, sizeof chunk, 9);
    struct msg out;
    uint8_t *buf;

    struct msg m = sample_hello();
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.type == MSG_HELLO && strcmp(out.hello.name, "uni-bern.ch") == 0);
    CHECK(out.hello.ncaps == 2 && strcmp(out.hello.caps[1], "bf16") == 0);
    CHECK(memcmp(out.hello.fingerprint, m.hello.fingerprint, MSG_HASH_LEN) == 0);
    CHECK(!out.hello.has_model);
    free(buf);

    m.hello.has_model = true;
    m.hello.have_round = 6;
    fill(m.hello.have_version, MSG_HASH_LEN, 3);
    m.hello.ncaps = 0;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.hello.has_model && out.hello.have_round == 6 && out.hello.ncaps == 0);
    CHECK(memcmp(out.hello.have_version, m.hello.have_version, MSG_HASH_LEN) == 0);
    free(buf);

    m = sample_round();
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.round.round == 7 && out.round.deadline == 1795000000);
    CHECK(out.round.train.lr == 2e-4 && out.round.train.alpha == 32);
    CHECK(out.round.train.steps == 200 && out.round.train.rank == 16);
    CHECK(out.round.train.batch == 8 && out.round.train.seq == 512);
    CHECK(out.round.train.ntargets == 2 && strcmp(out.round.train.targets[1], "v_proj") == 0);
    free(buf);

    m = (struct msg){.type = MSG_GET_MODEL};
    fill(m.get_model.version, MSG_HASH_LEN, 4);
    m.get_model.offset = 5ull << 30;
    m.get_model.length = MSG_CHUNK_MAX;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.get_model.offset == 5ull << 30 && out.get_model.length == MSG_CHUNK_MAX);
    free(buf);

    /* A full-size chunk must fit one frame. */
    m = (struct msg){.type = MSG_MODEL_CHUNK};
    fill(m.model_chunk.version, MSG_HASH_LEN, 5);
    m.model_chunk.offset = 3 * (uint64_t)MSG_CHUNK_MAX;
    m.model_chunk.total = 4 * (uint64_t)MSG_CHUNK_MAX;
    m.model_chunk.data = chunk;
    m.model_chunk.data_len = MSG_CHUNK_MAX;
    m.model_chunk.final = true;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.model_chunk.data_len == MSG_CHUNK_MAX && out.model_chunk.final);
    CHECK(memcmp(out.model_chunk.data, chunk, MSG_CHUNK_MAX) == 0);
    free(buf);

    /* An empty model is one empty, final chunk. */
    m.model_chunk.offset = m.model_chunk.total = 0;
    m.model_chunk.data = NULL;
    m.model_chunk.data_len = 0;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.model_chunk.data_len == 0 && out.model_chunk.final);
    free(buf);

    m = (struct msg){.type = MSG_SUBMIT_BEGIN};
    m.submit_begin.round = 7;
    fill(m.submit_begin.id, MSG_ID_LEN, 6);
    m.submit_begin.size = 3 * (uint64_t)MSG_CHUNK_MAX + 1;
    m.submit_begin.chunks = 4;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.submit_begin.size == m.submit_begin.size && out.submit_begin.chunks == 4);
    CHECK(memcmp(out.submit_begin.id, m.submit_begin.id, MSG_ID_LEN) == 0);
    free(buf);

    m = (struct msg){.type = MSG_SUBMIT_CHUNK};
    fill(m.submit_chunk.id, MSG_ID_LEN, 6);
    m.submit_chunk.index = 3;
    m.submit_chunk.data = chunk + 10;
    m.submit_chunk.data_len = 1;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.submit_chunk.index == 3 && out.submit_chunk.data_len == 1 &&
          out.submit_chunk.data[0] == chunk[10]);
    free(buf);

    m = (struct msg){.type = MSG_SUBMIT_END};
    fill(m.submit_end.id, MSG_ID_LEN, 6);
    fill(m.submit_end.digest, MSG_HASH_LEN, 7);
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(memcmp(out.submit_end.digest, m.submit_end.digest, MSG_HASH_LEN) == 0);
    free(buf);

    m = (struct msg){.type = MSG_RECEIPT};
    m.receipt.round = 7;
    fill(m.receipt.id, MSG_ID_LEN, 6);
    fill(m.receipt.digest, MSG_HASH_LEN, 7);
    m.receipt.time = 1795000123;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.receipt.time == 1795000123 && out.receipt.round == 7);
    free(buf);

    m = (struct msg){.type = MSG_ACK};
    fill(m.ack.id, MSG_ID_LEN, 8);
    m.ack.stored = 3 * MSG_CHUNK_MAX + 17;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.type == MSG_ACK && out.ack.stored == 3 * MSG_CHUNK_MAX + 17);
    CHECK(memcmp(out.ack.id, m.ack.id, MSG_ID_LEN) == 0);
    free(buf);
    m.ack.stored = 0; /* SUBMIT_BEGIN's answer */
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.ack.stored == 0);
    free(buf);
    m.ack.stored = MSG_SUBMIT_MAX;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.ack.stored == MSG_SUBMIT_MAX);
    free(buf);
    m.ack.stored = MSG_SUBMIT_MAX + 1; /* never sent: the decoder would refuse it */
    size_t len;
    CHECK_FAILS_WITH(msg_encode(&m, &buf, &len), "refusing to encode an invalid ACK");

    m = (struct msg){.type = MSG_ERROR};
    m.error.code = MSG_ERR_BUSY;
    strcpy(m.error.reason, "aggregating round 7; try again in a minute");
    m.error.has_retry_after = true;
    m.error.retry_after_ms = 60000;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.error.code == MSG_ERR_BUSY && out.error.retry_after_ms == 60000);
    CHECK(strcmp(out.error.reason, m.error.reason) == 0);
    free(buf);

    m.error.has_retry_after = false;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(!out.error.has_retry_after && !out.error.has_final);
    free(buf);

    /* The end of the federation: WRONG_ROUND with its final version. A
     * decoder that does not know "final" ignores it (unknown fields are). */
    m.error.code = MSG_ERR_WRONG_ROUND;
    strcpy(m.error.reason, "finished: all 3 rounds are done");
    m.error.has_final = true;
    fill(m.error.final, MSG_HASH_LEN, 13);
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.error.has_final && memcmp(out.error.final, m.error.final, MSG_HASH_LEN) == 0 &&
          !out.error.has_retry_after);
    free(buf);

    /* ROUND with the optional low-rank update of its base. */
    m = sample_round();
    m.round.has_update = true;
    fill(m.round.update_from, MSG_HASH_LEN, 11);
    fill(m.round.update_hash, MSG_HASH_LEN, 12);
    m.round.update_size = 31300000;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.round.has_update && out.round.update_size == 31300000);
    CHECK(memcmp(out.round.update_from, m.round.update_from, MSG_HASH_LEN) == 0);
    CHECK(memcmp(out.round.update_hash, m.round.update_hash, MSG_HASH_LEN) == 0);
    free(buf);
    m = sample_round();
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(!out.round.has_update && !out.round.base_sharded);
    size_t plain_len = 0;
    uint8_t *plain = NULL;
    CHECK_OK(msg_encode(&m, &plain, &plain_len));
    free(buf);
    /* A sharded base: "base_sharded" true; false is not written, so a ROUND
     * of a single-file base has the bytes it always had. */
    m.round.base_sharded = true;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.round.base_sharded && !out.round.has_update);
    free(buf);
    uint8_t *sharded = NULL;
    size_t sharded_len = 0;
    CHECK_OK(msg_encode(&m, &sharded, &sharded_len));
    CHECK(plain && sharded && sharded_len == plain_len + 14 &&
          memmem(sharded, sharded_len,
                 "\xac"
                 "base_sharded"
                 "\xc3",
                 14) != NULL &&
          memmem(plain, plain_len, "base_sharded", 12) == NULL);
    free(plain);
    free(sharded);

    /* STATUS and its answer, with and without a roster. */
    m = (struct msg){.type = MSG_STATUS};
    strcpy(m.status.name, "uni-d");
    fill(m.status.fingerprint, MSG_HASH_LEN, 13);
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.type == MSG_STATUS && strcmp(out.status.name, "uni-d") == 0);
    CHECK(memcmp(out.status.fingerprint, m.status.fingerprint, MSG_HASH_LEN) == 0);
    free(buf);
    m = (struct msg){.type = MSG_STATUS_INFO};
    m.status_info.time = 1795000000;
    strcpy(m.status_info.consortium, "eu-open-llm");
    m.status_info.round = 4;
    strcpy(m.status_info.state, "COLLECTING");
    fill(m.status_info.version, MSG_HASH_LEN, 14);
    strcpy(m.status_info.member, "active");
    m.status_info.has_roster = true;
    m.status_info.roster_version = 5;
    fill(m.status_info.roster_hash, MSG_HASH_LEN, 15);
    m.status_info.roster_size = 2100;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(out.type == MSG_STATUS_INFO && out.status_info.time == 1795000000 &&
          out.status_info.round == 4 && out.status_info.has_roster &&
          out.status_info.roster_version == 5 && out.status_info.roster_size == 2100);
    CHECK(!strcmp(out.status_info.consortium, "eu-open-llm") &&
          !strcmp(out.status_info.state, "COLLECTING") &&
          !strcmp(out.status_info.member, "active"));
    CHECK(memcmp(out.status_info.roster_hash, m.status_info.roster_hash, MSG_HASH_LEN) == 0);
    free(buf);
    m.status_info.has_roster = false;
    CHECK_OK(round_trip(&m, &out, &buf));
    CHECK(!out.status_info.has_roster);
    free(buf);
}

/* ---- the bounded reader -------------------------------------------------------- */

static const struct mp_limits loose = {
    .max_total = SIZE_MAX,
    .max_depth = MP_DEPTH_MAX,
    .max_items = UINT32_MAX,
    .max_str = UINT32_MAX,
    .max_bin = UINT32_MAX,
};

static void test_reader_matrix(void) {
    struct msg m;

    /* 10,000 nested arrays (0x91 = array of 1) around a nil: refused at the
     * depth limit, without recursion. */
    size_t deep = 10000;
    uint8_t *nest = malloc(deep + 1);
    memset(nest, 0x91, deep);
    nest[deep] = 0xc0;
    CHECK_FAILS_WITH(msg_decode(nest, deep + 1, NULL, &m), "nested 9 deep, over the limit of 8");
    CHECK_FAILS_WITH(mp_validate(nest, deep + 1, &loose), "nested 65 deep, over the limit of 64");
    /* The same depth of maps {"k": {"k": ...}}. */
    uint8_t *maps = malloc(3 * deep + 1);
    for (size_t i = 0; i < deep; i++) memcpy(maps + 3 * i, "\x81\xa1k", 3);
    maps[3 * deep] = 0xc0;
    CHECK_FAILS_WITH(msg_decode(maps, 3 * deep + 1, NULL, &m), "map at byte 24 is nested 9 deep");
    free(nest);
    free(maps);

    /* An array header claiming 2^32 - 1 elements in 5 bytes: refused by the
     * element limit, and without that limit by the count check against the
     * bytes left, before anything is allocated. */
    const uint8_t huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    CHECK_FAILS_WITH(msg_decode(huge_array, 5, NULL, &m),
                     "array at byte 0 has 4294967295 elements, over the limit of 64");
    CHECK_FAILS_WITH(mp_validate(huge_array, 5, &loose),
                     "array header at byte 0 claims 4294967295 elements, but only 0 bytes follow");
    const uint8_t huge_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0};
    CHECK_FAILS_WITH(mp_validate(huge_map, sizeof huge_map, &loose),
                     "map header at byte 0 claims 4294967295 pairs, but only 2 bytes follow");
    /* Counts that each fit, but not together: [[[x, x, x], ...]] in 6 bytes. */
    const uint8_t nested_counts[] = {0x93, 0x93, 0x93, 0xc0, 0xc0, 0xc0};
    CHECK_FAILS_WITH(mp_validate(nested_counts, sizeof nested_counts, &loose),
                     "containers open at byte 2 claim 5 more values, but only 4 bytes follow");
    struct mp_reader r;
    mp_init(&r, nested_counts, sizeof nested_counts);
    CHECK_FAILS_WITH(mp_skip(&r), "claim 5 more values, but only 4 bytes follow");
    CHECK(mp_offset(&r) == 0);

    /* A string longer than the buffer (str 32 claiming 4096 bytes, 2 there). */
    const uint8_t long_str[] = {0xdb, 0x00, 0x00, 0x10, 0x00, 'a', 'b'};
    CHECK_FAILS_WITH(mp_validate(long_str, sizeof long_str, &loose),
                     "a string at byte 0 claims 4096 bytes, but only 2 bytes follow");
    CHECK_FAILS_WITH(msg_decode(long_str, sizeof long_str, NULL, &m),
                     "string at byte 0 is 4096 bytes, over the limit of 1024");
    mp_init(&r, long_str, sizeof long_str);
    const char *s;
    uint32_t sl;
    CHECK_FAILS_WITH(mp_read_str(&r, &s, &sl), "claims 4096 bytes, but only 2 bytes follow");
    const uint8_t long_bin[] = {0xc5, 0x01, 0x00, 1, 2, 3};
    CHECK_FAILS_WITH(mp_validate(long_bin, sizeof long_bin, &loose),
                     "a blob at byte 0 claims 256 bytes, but only 3 bytes follow");

    /* Truncated headers, the reserved byte, extensions, trailing bytes. */
    const uint8_t trunc[] = {0xcf, 0x01, 0x02};
    CHECK_FAILS_WITH(mp_validate(trunc, sizeof trunc, &loose),
                     "truncated an integer at byte 0: its header needs 8 more bytes, 2 left");
    const uint8_t reserved[] = {0x91, 0xc1};
    CHECK_FAILS_WITH(mp_validate(reserved, sizeof reserved, &loose),
                     "reserved byte 0xc1 at byte 1");
    const uint8_t ext[] = {0xd4, 0x01, 0x00};
    CHECK_FAILS_WITH(mp_validate(ext, sizeof ext, &loose), "extensions are not part of");
    const uint8_t trailing[] = {0xc0, 0xc0};
    CHECK_FAILS_WITH(mp_validate(trailing, sizeof trailing, &loose),
                     "1 unexpected bytes after the end of the message at byte 1");
    CHECK_FAILS_WITH(mp_validate(trailing, 0, &loose), "the data ends there");
    struct mp_limits small = loose;
    small.max_total = 1;
    CHECK_FAILS_WITH(mp_validate(trailing, 2, &small), "2 bytes is over the limit of 1 bytes");

    /* The cursor reads integers of every width and sign. */
    const uint8_t ints[] = {0xd0, 0xff, 0xd3, 0,    0, 0, 0, 0, 0, 0,
                            5,    0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0};
    mp_init(&r, ints, sizeof ints);
    uint64_t u;
    CHECK_FAILS_WITH(mp_read_uint(&r, &u), "non-negative integer at byte 0, got -1");
    double d;
    CHECK_OK(mp_read_double(&r, &d));
    CHECK(d == -1.0);
    CHECK_OK(mp_read_uint(&r, &u));
    CHECK(u == 5);
    CHECK_OK(mp_read_double(&r, &d));
    CHECK(d == 1.5);
    CHECK(mp_peek(&r) == MP_END);
}

/* ---- the schema ------------------------------------------------------------------- */

static void test_schema(void) {
    struct msg m;
    struct b b;

    /* Optional fields that only mean something together. */
    b_init(&b);
    b_head(&b, "STATUS_INFO", 8);
    b_kuint(&b, "time", 1);
    b_kstr(&b, "consortium", "c");
    b_kuint(&b, "round", 1);
    b_kstr(&b, "state", "OPEN");
    b_kbin(&b, "version", MSG_HASH_LEN);
    b_kstr(&b, "member", "unknown");
    b_kuint(&b, "roster_version", 3);
    b_kbin(&b, "roster_hash", MSG_HASH_LEN);
    CHECK_FAILS_WITH(b_decode(&b, &m), "STATUS_INFO: optional fields 'roster_version' and "
                                       "'roster_size' go together, 'roster_size' is missing");
    b_init(&b);
    b_head(&b, "STATUS", 2);
    b_kstr(&b, "name", "-x");
    b_kbin(&b, "id", MSG_HASH_LEN);
    CHECK_FAILS_WITH(b_decode(&b, &m), "STATUS: field 'name'");

    /* ACK: both fields required, msgid exactly 16 bytes, stored bounded. */
    b_init(&b);
    b_head(&b, "ACK", 1);
    b_kbin(&b, "msgid", MSG_ID_LEN);
    CHECK_FAILS_WITH(b_decode(&b, &m), "ACK: missing required field 'stored'");
    b_init(&b);
    b_head(&b, "ACK", 2);
    b_kbin(&b, "msgid", MSG_ID_LEN - 1);
    b_kuint(&b, "stored", 0);
    CHECK_FAILS_WITH(b_decode(&b, &m),
                     "ACK: field 'msgid' must be a blob of exactly 16 bytes, got 15 bytes");
    b_init(&b);
    b_head(&b, "ACK", 2);
    b_kbin(&b, "msgid", MSG_ID_LEN);
    b_kuint(&b, "stored", MSG_SUBMIT_MAX + 1);
    CHECK_FAILS_WITH(b_decode(&b, &m), "ACK: field 'stored'");
    b_init(&b);
    b_head(&b, "ACK", 2);
    b_kbin(&b, "msgid", MSG_ID_LEN);
    b_kstr(&b, "stored", "12");
    CHECK_FAILS_WITH(b_decode(&b, &m), "ACK: field 'stored'");
    b_init(&b);
    b_head(&b, "ACK", 3); /* an unknown field is skipped */
    b_kbin(&b, "msgid", MSG_ID_LEN);
    b_kuint(&b, "stored", 4096);
    b_kuint(&b, "resume_hint", 1);
    CHECK_OK(b_decode(&b, &m));
    CHECK(m.type == MSG_ACK && m.ack.stored == 4096);

    /* Wrong types. */
    b_init(&b);
    b_head(&b, "HELLO", 3);
    b_kuint(&b, "name", 42);
    b_kbin(&b, "id", 32);
    b_str(&b, "caps");
    msgpack_pack_array(&b.pk, 0);
    CHECK_FAILS_WITH(b_decode(&b, &m), "HELLO: field 'name' must be a string of 1 to 64 bytes "
                                       "of [A-Za-z0-9._-] not starting with '.' or '-', "
                                       "got an integer");
    b_init(&b);
    b_head(&b, "HELLO", 3);
    b_kstr(&b, "name", "uni");
    b_kstr(&b, "id", "not a hash");
    b_str(&b, "caps");
    msgpack_pack_array(&b.pk, 0);
    CHECK_FAILS_WITH(b_decode(&b, &m),
                     "HELLO: field 'id' must be a blob of exactly 32 bytes, got a string");
    b_init(&b);
    b_head(&b, "HELLO", 3);
    b_kstr(&b, "name", "uni");
    b_kbin(&b, "id", 31);
    b_str(&b, "caps");
    msgpack_pack_array(&b.pk, 0);
    CHECK_FAILS_WITH(b_decode(&b, &m),
                     "HELLO: field 'id' must be a blob of exactly 32 bytes, got 31 bytes");
    b_init(&b);
    b_head(&b, "HELLO", 3);
    b_kstr(&b, "name", "uni bern");
    b_kbin(&b, "id", 32);
    b_str(&b, "caps");
    msgpack_pack_array(&b.pk, 0);
    CHECK_FAILS_WITH(b_decode(&b, &m), "got byte 0x20 at position 3");
    b_init(&b);
    b_head(&b, "HELLO", 3);
    b_kstr(&b, "name", "uni");
    b_kbin(&b, "id", 32);
    b_str(&b, "caps");
    msgpack_pack_array(&b.pk, 1);
    msgpack_pack_true(&b.pk);
    CHECK_FAILS_WITH(b_decode(&b, &m), "HELLO: field 'caps[0]' must be a string");

    /* Missing required fields, at the top and inside "train". */
    b_init(&b);
    b_head(&b, "HELLO", 2);
    b_kstr(&b, "name", "uni");
    b_kbin(&b, "id", 32);
    CHECK_FAILS_WITH(b_decode(&b, &m), "HELLO: missing required field 'caps'");
    b_init(&b);
    msgpack_pack_map(&b.pk, 1);
    b_kstr(&b, "t", "HELLO");
    CHECK_FAILS_WITH(b_decode(&b, &m), "message: missing required field 'v'");
    b_init(&b);
    b_head(&b, "ROUND", 4);
    b_kuint(&b, "round", 1);
    b_kbin(&b, "base", 32);
    b_kuint(&b, "deadline", 1);
    b_str(&b, "train");
    msgpack_pack_map(&b.pk, 6);
    b_kuint(&b, "steps", 10);
    b_kuint(&b, "rank", 8);
    b_kuint(&b, "alpha", 16); /* an integer is a fine number */
    b_str(&b, "targets");
    msgpack_pack_array(&b.pk, 1);
    b_str(&b, "q_proj");
    b_kuint(&b, "batch", 1);
    b_kuint(&b, "seq", 64);
    CHECK_FAILS_WITH(b_decode(&b, &m), "ROUND: missing required field 'train.lr'");
    b_init(&b);
    b_head(&b, "ROUND", 4);
    b_kuint(&b, "round", 1);
    b_kbin(&b, "base", 32);
    b_kuint(&b, "deadline", 1);
    b_kuint(&b, "train", 3);
    CHECK_FAILS_WITH(b_decode(&b, &m), "ROUND: field 'train' must be a map, got an integer");

    /* Unknown fields are ignored, nested ones included. */
    b_init(&b);
    b_head(&b, "GET_MODEL", 5);
    b_kbin(&b, "version", 32);
    b_str(&b, "from_the_future");
    msgpack_pack_map(&b.pk, 1);
    b_str(&b, "x");
    msgpack_pack_array(&b.pk, 2);
    msgpack_pack_nil(&b.pk);
    msgpack_pack_double(&b.pk, 1.5);
    b_kuint(&b, "offset", 10);
    b_kuint(&b, "length", 20);
    b_kstr(&b, "note", "ignored");
    CHECK_OK(b_decode(&b, &m));
    CHECK(m.type == MSG_GET_MODEL && m.get_model.offset == 10 && m.get_model.length == 20);

    /* Ranges, consistency rules, versions, types, keys. */
    b_init(&b);
    b_head(&b, "GET_MODEL", 3);
    b_kbin(&b, "version", 32);
    b_kuint(&b, "offset", 0);
    b_kuint(&b, "length", MSG_CHUNK_MAX + 1);
    CHECK_FAILS_WITH(b_decode(&b, &m),
                     "GET_MODEL: field 'length' must be an integer in [1, 1048576], got 1048577");
    b_init(&b);
    b_head(&b, "GET_MODEL", 3);
    b_kbin(&b, "version", 32);
    b_str(&b, "offset");
    msgpack_pack_int64(&b.pk, -1);
    b_kuint(&b, "length", 1);
    CHECK_FAILS_WITH(b_decode(&b, &m), "field 'offset' must be a non-negative integer, got a "
                                       "negative integer");
    b_init(&b);
    b_head(&b, "MODEL_CHUNK", 5);
    b_kbin(&b, "version", 32);
    b_kuint(&b, "offset", 0);
    b_kuint(&b, "total", 100);
    b_kbin(&b, "data", 10);
    b_str(&b, "final");
    msgpack_pack_true(&b.pk);
    CHECK_FAILS_WITH(b_decode(&b, &m), "'final' is true but 90 bytes of the model follow");
    b_init(&b);
    b_head(&b, "MODEL_CHUNK", 5);
    b_kbin(&b, "version", 32);
    b_kuint(&b, "offset", 95);
    b_kuint(&b, "total", 100);
    b_kbin(&b, "data", 10);
    b_str(&b, "final");
    msgpack_pack_true(&b.pk);
    CHECK_FAILS_WITH(b_decode(&b, &m), "10 bytes at offset 95 run past the total of 100 bytes");
    b_init(&b); /* an empty chunk that is not the last: a peer could loop forever */
    b_head(&b, "MODEL_CHUNK", 5);
    b_kbin(&b, "version", 32);
    b_kuint(&b, "offset", 10);
    b_kuint(&b, "total", 100);
    b_kbin(&b, "data", 0);
    b_str(&b, "final");
    msgpack_pack_false(&b.pk);
    CHECK_FAILS_WITH(b_decode(&b, &m), "an empty chunk must be the final one");
    b_init(&b);
    b_head(&b, "SUBMIT_BEGIN", 4);
    b_kuint(&b, "round", 3);
    b_kbin(&b, "msgid", 16);
    b_kuint(&b, "size", 3 * (uint64_t)MSG_CHUNK_MAX);
    b_kuint(&b, "chunks", 2);
    CHECK_FAILS_WITH(b_decode(&b, &m), "3145728 bytes cannot travel in 2 chunks");
    b_init(&b);
    b_head(&b, "ERROR", 2);
    b_kuint(&b, "code", 99);
    b_kstr(&b, "reason", "?");
    CHECK_FAILS_WITH(b_decode(&b, &m), "ERROR: field 'code' must be an integer in [1, 9], got 99");
    b_init(&b);
    b_head(&b, "ERROR", 2);
    b_kuint(&b, "code", 1);
    b_kstr(&b, "reason", "line one\nFAKE LOG LINE");
    CHECK_FAILS_WITH(b_decode(&b, &m), "got byte 0x0a at position 8");
    b_init(&b);
    b_head(&b, "ROUND", 4);
    b_kuint(&b, "round", 1);
    b_kbin(&b, "base", 32);
    b_kuint(&b, "deadline", 1);
    b_str(&b, "train");
    msgpack_pack_map(&b.pk, 7);
    b_kuint(&b, "steps", 10);
    b_str(&b, "lr");
    msgpack_pack_double(&b.pk, NAN);
    b_kuint(&b, "rank", 8);
    b_kuint(&b, "alpha", 16);
    b_str(&b, "targets");
    msgpack_pack_array(&b.pk, 1);
    b_str(&b, "q_proj");
    b_kuint(&b, "batch", 1);
    b_kuint(&b, "seq", 64);
    CHECK_FAILS_WITH(b_decode(&b, &m),
                     "ROUND: field 'train.lr' must be a finite number in (0, 1], got nan");
    b_init(&b);
    b_head(&b, "HELLO", 4);
    b_kstr(&b, "name", "uni");
    b_kbin(&b, "id", 32);
    b_str(&b, "caps");
    msgpack_pack_array(&b.pk, 0);
    b_kuint(&b, "have_round", 3);
    CHECK_FAILS_WITH(b_decode(&b, &m), "'have_round' and 'have_version' go together");
    b_init(&b); /* HELLO is signed: time and sig are required */
    b_head(&b, "HELLO", 4);
    b_kstr(&b, "name", "uni");
    b_kbin(&b, "id", 32);
    b_str(&b, "caps");
    msgpack_pack_array(&b.pk, 0);
    b_kuint(&b, "time", 3);
    CHECK_FAILS_WITH(b_decode(&b, &m), "HELLO: missing required field 'sig'");
    b_init(&b);
    b_head(&b, "HELLO", 2);
    b_kstr(&b, "name", "uni");
    b_kstr(&b, "name", "other");
    CHECK_FAILS_WITH(b_decode(&b, &m), "message: duplicate key 'name'");
    b_init(&b);
    msgpack_pack_map(&b.pk, 2);
    b_kuint(&b, "v", 2);
    b_kstr(&b, "t", "HELLO");
    CHECK_FAILS_WITH(b_decode(&b, &m), "unsupported protocol version 2 (this build speaks 1)");
    b_init(&b);
    b_head(&b, "GOODBYE", 0);
    CHECK_FAILS_WITH(b_decode(&b, &m), "unknown message type 'GOODBYE'");
    b_init(&b);
    msgpack_pack_map(&b.pk, 1);
    msgpack_pack_uint64(&b.pk, 1);
    msgpack_pack_uint64(&b.pk, 1);
    CHECK_FAILS_WITH(b_decode(&b, &m), "message: key 0 must be a string, got an integer");
    b_init(&b);
    msgpack_pack_array(&b.pk, 1);
    msgpack_pack_nil(&b.pk);
    CHECK_FAILS_WITH(b_decode(&b, &m), "message must be a map, got an array");

    /* The encoder refuses what the decoder refuses. */
    struct msg bad = sample_hello();
    strcpy(bad.hello.name, "../etc");
    uint8_t *buf = NULL;
    size_t len;
    CHECK_FAILS_WITH(msg_encode(&bad, &buf, &len),
                     "refusing to encode an invalid HELLO: HELLO: field 'name'");
    CHECK(buf == NULL);
    bad = sample_round();
    bad.round.train.ntargets = 0;
    CHECK_FAILS_WITH(msg_encode(&bad, &buf, &len),
                     "field 'train.targets' must be an array of 1 to 32 strings, got 0 elements");
    bad = (struct msg){.type = (enum msg_type)42};
    CHECK_FAILS_WITH(msg_encode(&bad, &buf, &len), "unknown message type 42");
}

/* ---- TENSORS ------------------------------------------------------------------------- */

static void test_tensors(void) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[4] = {1, 2, 3, 4};
    struct msg_tensor in[3] = {
        {.name = "layers.0.q_proj.lora_B",
         .dtype = MSG_F32,
         .ndim = 2,
         .shape = {3, 2},
         .data = (const uint8_t *)a,
         .size = sizeof a},
        {.name = "layers.0.q_proj.lora_A",
         .dtype = MSG_BF16,
         .ndim = 2,
         .shape = {2, 2},
         .data = (const uint8_t *)h,
         .size = sizeof h},
        {.name = "scale", .dtype = MSG_F32, .ndim = 0, .data = (const uint8_t *)a, .size = 4},
    };
    uint8_t *buf;
    size_t len, n;
    struct msg_tensor *out;
    CHECK_OK(msg_tensors_encode(in, 3, &buf, &len));
    CHECK_OK(msg_tensors_decode(buf, len, NULL, &out, &n));
    CHECK(n == 3);
    if (n == 3) {
        /* Sorted by name on the wire. */
        CHECK(strcmp(out[0].name, "layers.0.q_proj.lora_A") == 0 && out[0].dtype == MSG_BF16);
        CHECK(strcmp(out[1].name, "layers.0.q_proj.lora_B") == 0);
        CHECK(out[1].ndim == 2 && out[1].shape[0] == 3 && out[1].shape[1] == 2);
        CHECK(out[1].size == sizeof a && memcmp(out[1].data, a, sizeof a) == 0);
        CHECK(out[2].ndim == 0 && out[2].size == 4);
    }
    free(out);
    free(buf);

    /* Data length that does not match shape × dtype. */
    struct msg_tensor t = in[0];
    t.size = 20;
    CHECK_FAILS_WITH(msg_tensors_encode(&t, 1, &buf, &len),
                     "'layers.0.q_proj.lora_B' has 20 bytes of data, but its shape and dtype "
                     "F32 need 24");
    /* Duplicate names. */
    struct msg_tensor dup[2] = {in[2], in[2]};
    CHECK_FAILS_WITH(msg_tensors_encode(dup, 2, &buf, &len),
                     "names must be in strictly increasing byte order, but 'scale' follows "
                     "'scale'");
    t = in[0];
    t.dtype = (enum msg_dtype)77;
    CHECK_FAILS_WITH(msg_tensors_encode(&t, 1, &buf, &len), "unknown dtype");
    CHECK_FAILS_WITH(msg_tensors_encode(in, 0, &buf, &len), "1 to 16384 tensors, got 0");

    /* Hand-built payloads: an unknown dtype, a shape whose product wraps 64
     * bits, names out of order. */
    struct b b;
    b_init(&b);
    msgpack_pack_array(&b.pk, 1);
    msgpack_pack_map(&b.pk, 4);
    b_kstr(&b, "name", "w");
    b_kstr(&b, "dtype", "Q4_K");
    b_str(&b, "shape");
    msgpack_pack_array(&b.pk, 0);
    b_kbin(&b, "data", 1);
    CHECK_FAILS_WITH(msg_tensors_decode(b.sb.data, b.sb.size, NULL, &out, &n),
                     "TENSORS[0]: field 'dtype' must be one of F32, F16, BF16, F64, I32, I64, "
                     "U8, got 'Q4_K'");
    msgpack_sbuffer_destroy(&b.sb);
    b_init(&b);
    msgpack_pack_array(&b.pk, 1);
    msgpack_pack_map(&b.pk, 4);
    b_kstr(&b, "name", "w");
    b_kstr(&b, "dtype", "F32");
    b_str(&b, "shape");
    msgpack_pack_array(&b.pk, 3);
    for (int i = 0; i < 3; i++) msgpack_pack_uint64(&b.pk, 1ull << 31);
    b_kbin(&b, "data", 8);
    CHECK_FAILS_WITH(msg_tensors_decode(b.sb.data, b.sb.size, NULL, &out, &n),
                     "TENSORS[0]: shape overflows 64 bits");
    msgpack_sbuffer_destroy(&b.sb);
    b_init(&b);
    msgpack_pack_array(&b.pk, 2);
    for (int i = 0; i < 2; i++) {
        msgpack_pack_map(&b.pk, 4);
        b_kstr(&b, "name", i == 0 ? "b" : "a");
        b_kstr(&b, "dtype", "U8");
        b_str(&b, "shape");
        msgpack_pack_array(&b.pk, 1);
        msgpack_pack_uint64(&b.pk, 1);
        b_kbin(&b, "data", 1);
    }
    CHECK_FAILS_WITH(msg_tensors_decode(b.sb.data, b.sb.size, NULL, &out, &n),
                     "TENSORS[1]: names must be in strictly increasing byte order, but 'a' "
                     "follows 'b'");
    msgpack_sbuffer_destroy(&b.sb);
    /* A huge count in the array header is refused before any allocation. */
    const uint8_t many[] = {0xdd, 0x00, 0x01, 0x00, 0x00, 0x80};
    CHECK_FAILS_WITH(msg_tensors_decode(many, sizeof many, NULL, &out, &n),
                     "has 65536 elements, over the limit of 16384");
    CHECK(out == NULL && n == 0);
}

int main(void) {
    test_round_trips();
    test_reader_matrix();
    test_schema();
    test_tensors();
    return check_finish();
}
