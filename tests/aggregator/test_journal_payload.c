/* The aggregator's records and codecs, without a running round: the journal
 * (appends, replay, a torn or damaged last line, every record kind encoded
 * and decoded), the DELTA payload codec and the members' weights. The
 * rounds themselves are test_aggregator.c's. */
#include "aggregator/agg.h"
#include "aggregator/journal.h"
#include "lora/delta.h"
#include "tests/aggregator/agg_test.h"

#include <jansson.h>
#include <sys/stat.h>

static struct fed F;

/* ---- journal ------------------------------------------------------------- */

struct recs {
    int n;
    char r[16][64];
};

static int collect(void *arg, const char *rec, size_t line) {
    struct recs *x = arg;
    (void)line;
    snprintf(x->r[x->n++], sizeof x->r[0], "%s", rec);
    return 0;
}

static void test_journal(void) {
    char p[600];
    fed_path(p, sizeof p, "journal-test");
    agg_journal *j;
    struct recs x = {0};
    CHECK_OK(journal_open(&j, p, 0, collect, &x));
    CHECK(x.n == 0);
    CHECK_OK(journal_append(j, "open 1 abc %d", 5));
    CHECK_OK(journal_append(j, "accept 1 uni-a"));
    CHECK_FAILS_WITH(journal_append(j, "bad # record"), "without '#'");
    journal_close(j);

    memset(&x, 0, sizeof x);
    CHECK_OK(journal_open(&j, p, 0, collect, &x));
    CHECK(x.n == 2 && !strcmp(x.r[0], "open 1 abc 5") && !strcmp(x.r[1], "accept 1 uni-a"));
    journal_close(j);

    /* A torn last record (no newline: the crash came mid-write) is ignored
     * and cut, and appends go on after the good records. */
    FILE *f = fopen(p, "a");
    fputs("close 1 #1234", f);
    fclose(f);
    memset(&x, 0, sizeof x);
    CHECK_OK(journal_open(&j, p, 0, collect, &x));
    CHECK(x.n == 2);
    CHECK_OK(journal_append(j, "close 1 2"));
    journal_close(j);
    memset(&x, 0, sizeof x);
    CHECK_OK(journal_open(&j, p, 0, collect, &x));
    CHECK(x.n == 3 && !strcmp(x.r[2], "close 1 2"));
    journal_close(j);

    /* A complete last line with a wrong checksum is torn too. */
    f = fopen(p, "a");
    fputs("publish 1 ff #00000000\n", f);
    fclose(f);
    memset(&x, 0, sizeof x);
    CHECK_OK(journal_open(&j, p, 1, collect, &x)); /* read-only: skipped, not cut */
    CHECK(x.n == 3);
    size_t len;
    char *data;
    CHECK_OK(fio_read_all(p, 1 << 20, &data, &len));
    CHECK(strstr(data, "publish 1 ff") != NULL);
    free(data);
    CHECK_OK(journal_open(&j, p, 0, collect, &x));
    journal_close(j);
    CHECK_OK(fio_read_all(p, 1 << 20, &data, &len));
    CHECK(strstr(data, "publish 1 ff") == NULL);

    /* A damaged record in the middle is corruption, not a crash. */
    data[2] ^= 1;
    CHECK_OK(fio_write_atomic(p, data, len, 0644));
    free(data);
    CHECK_FAILS_WITH(journal_open(&j, p, 0, collect, &x), "corrupt at line 1");
}

/* Every kind of record, as the aggregator writes it: decoding then encoding
 * gives the same text. */
static const char *const canonical_records[] = {
    "init 1b803ac9543fa8380ed38870851d7f6677cdeb75673e3f2b218ebdfde60f6575 "
    "6a97944ff9b5b2fc8141061a837cc51b8624272328fd73693a751e3f5859e1d9",
    "open 1 6a97944ff9b5b2fc8141061a837cc51b8624272328fd73693a751e3f5859e1d9 1795719452",
    "accept 1 uni-medicine 9d584c8d494133777598b2ce806e4718 "
    "a08e080a0d5a81f99c5d87b3ded11b00e1a47a6df1d9bdd5e3d4c83244edcaf3 77943 1795719153",
    "close 1 3",
    "publish 1 6a97944ff9b5b2fc8141061a837cc51b8624272328fd73693a751e3f5859e1d9",
    "publish 2 6a97944ff9b5b2fc8141061a837cc51b8624272328fd73693a751e3f5859e1d9 "
    "1b803ac9543fa8380ed38870851d7f6677cdeb75673e3f2b218ebdfde60f6575 18944",
    "fail 3 below-quorum-after-validation",
    "roster 4 1b803ac9543fa8380ed38870851d7f6677cdeb75673e3f2b218ebdfde60f6575",
};

static int roundtrip_line(void *arg, const char *rec, size_t line) {
    int *n = arg;
    journal_record r;
    char back[JOURNAL_RECORD_MAX + 1] = "";
    CHECK_MSG(journal_record_decode(rec, &r) == 0 && journal_record_encode(&r, back) == 0 &&
                  !strcmp(back, rec),
              "line %zu '%s' came back as '%s' (%s)", line, rec, back, err_msg());
    (*n)++;
    return 0;
}

static void test_journal_records(void) {
    journal_record r;
    char back[JOURNAL_RECORD_MAX + 1];
    for (size_t i = 0; i < sizeof canonical_records / sizeof *canonical_records; i++) {
        CHECK_OK(journal_record_decode(canonical_records[i], &r));
        CHECK_OK(journal_record_encode(&r, back));
        CHECK_MSG(!strcmp(back, canonical_records[i]), "'%s' came back as '%s'",
                  canonical_records[i], back);
    }
    CHECK_OK(journal_record_decode(canonical_records[2], &r));
    CHECK(r.kind == JOURNAL_ACCEPT && r.round == 1 && !strcmp(r.member, "uni-medicine") &&
          r.msgid[0] == 0x9d && r.digest[31] == 0xf3 && r.size == 77943 && r.time == 1795719153);
    CHECK_OK(journal_record_decode(canonical_records[5], &r));
    CHECK(r.kind == JOURNAL_PUBLISH && r.has_update && r.update_size == 18944 &&
          r.update_hash[0] == 0x1b && r.hash[0] == 0x6a);
    /* What the grammar refuses. */
    CHECK_FAILS_WITH(journal_record_decode("opne 1 00 5", &r), "unknown record");
    CHECK_FAILS_WITH(journal_record_decode("open x 00 5", &r), "bad round number");
    CHECK_FAILS_WITH(journal_record_decode("open -1 00 5", &r), "bad round number");
    CHECK_FAILS_WITH(journal_record_decode("open 1 abc 5", &r), "bad fields");
    CHECK_FAILS_WITH(journal_record_decode("close 1 many", &r), "bad fields");
    CHECK_FAILS_WITH(journal_record_decode("accept 1 .x 00 00 1 2", &r), "bad fields");
    CHECK_FAILS_WITH(
        journal_record_decode("publish 1 6a97944ff9b5b2fc8141061a837cc51b8624272328fd73693a751e3f"
                              "5859e1d9 1b803ac9543fa8380ed38870851d7f6677cdeb75673e3f2b218ebdfde6"
                              "0f6575 0",
                              &r),
        "bad update fields");
    r = (journal_record){.kind = JOURNAL_FAIL, .round = 1};
    snprintf(r.reason, sizeof r.reason, "two words");
    CHECK_FAILS_WITH(journal_record_encode(&r, back), "one word");
    /* A journal written by an aggregator before records had a type (the
     * fuzz seed from a demo run): every line comes back byte for byte. */
    const char *fx = getenv("FEDLORA_FIXTURES");
    char p[1024];
    snprintf(p, sizeof p, "%s/../fuzz/corpus/fuzz_journal/demo_two_rounds",
             fx ? fx : "tests/fixtures");
    int n = 0;
    CHECK_OK(journal_open(NULL, p, 1, roundtrip_line, &n));
    CHECK_MSG(n >= 10, "%d records in %s", n, p);
}

/* ---- payload ------------------------------------------------------------- */

static void test_payload(void) {
    uint8_t base[32] = {1, 2, 3};
    size_t len;
    uint8_t *p = fed_delta(&F, 3, base, 11, NULL, &len);
    struct payload_delta d;
    CHECK_OK(payload_delta_decode(p, len, 0, &d));
    CHECK(d.round == 3 && d.base[2] == 3 && d.rank == FED_RANK && d.ntargets == 2 &&
          !strcmp(d.targets[0], "q_proj") && d.ntensors == 8 && d.tokens == 1000 + 11 % 7 * 100);
    /* 2 layers x {q, v} x {A, B}, sorted: layer 0 q A, q B, v A, v B, ... */
    CHECK(strstr(d.tensors[0].name, "layers.0.self_attn.q_proj.lora_A.weight") != NULL);
    CHECK(d.tensors[0].shape[0] == FED_RANK && d.tensors[1].shape[1] == FED_RANK);
    /* Re-encoding the decoded delta gives the same bytes (canonical). */
    uint8_t *q;
    size_t qlen;
    CHECK_OK(payload_delta_encode(&d, &q, &qlen));
    CHECK(qlen == len && memcmp(p, q, len) == 0);
    free(q);

    /* The encoder refuses what the decoder refuses. */
    struct payload_delta bad = d;
    bad.rank = FED_RANK + 1;
    CHECK_FAILS_WITH(payload_delta_encode(&bad, &q, &qlen), "but rank is");
    bad = d;
    bad.ntensors = 3;
    CHECK_FAILS_WITH(payload_delta_encode(&bad, &q, &qlen), "come in pairs");
    bad = d;
    bad.tokens = 0;
    CHECK_FAILS_WITH(payload_delta_encode(&bad, &q, &qlen), "'tokens'");
    bad = d;
    bad.loss_after = NAN;
    CHECK_FAILS_WITH(payload_delta_encode(&bad, &q, &qlen), "'loss_after'");
    bad = d;
    struct msg_tensor t[2] = {d.tensors[0], d.tensors[1]};
    t[1].dtype = MSG_F16;
    t[1].size /= 2;
    bad.tensors = t;
    bad.ntensors = 2;
    CHECK_FAILS_WITH(payload_delta_encode(&bad, &q, &qlen), "2-D F32");
    snprintf(t[1].name, sizeof t[1].name, "base_model.model.x.lora_C.weight");
    t[1].dtype = MSG_F32;
    t[1].size *= 2;
    CHECK_FAILS_WITH(payload_delta_encode(&bad, &q, &qlen), "must be pairs");
    payload_delta_free(&d);

    /* Truncations and flipped bytes never decode into garbage silently. */
    for (size_t cut = 0; cut < len; cut += len / 37 + 1)
        CHECK(payload_delta_decode(p, cut, 0, &d) < 0);
    CHECK_FAILS_WITH(payload_delta_decode(p, len, len - 1, &d), "over the limit");
    uint8_t *z = malloc(len);
    memcpy(z, p, len);
    z[2] = 'x'; /* map header, fixstr header, then the key "v": now "x" */
    CHECK_FAILS_WITH(payload_delta_decode(z, len, 0, &d), "missing required field 'v'");
    free(z);
    free(p);

    /* Seeds of the fuzz target, made by an independent (Python) encoder. */
    static const char *const seeds[] = {"valid_one_module",    "valid_two_modules",
                                        "valid_unknown_field", "bad_rank_mismatch",
                                        "bad_b_shape",         "bad_truncated"};
    const char *fx = getenv("FEDLORA_FIXTURES");
    for (size_t i = 0; fx && i < sizeof seeds / sizeof seeds[0]; i++) {
        char sp[1024];
        char *buf;
        size_t n;
        snprintf(sp, sizeof sp, "%s/../fuzz/corpus/fuzz_payload_decode/%s", fx, seeds[i]);
        CHECK_OK(fio_read_all(sp, 1 << 20, &buf, &n));
        int rc = payload_delta_decode(buf, n, 0, &d);
        CHECK_MSG((rc == 0) == (seeds[i][0] == 'v'), "%s: %s", seeds[i], err_msg());
        if (rc == 0) {
            CHECK(d.round == 3 && d.tokens == 1234 && d.alpha == 16.0 && d.base[31] == 31);
            payload_delta_free(&d);
        }
        free(buf);
    }

    uint8_t id1[32], id2[32];
    CHECK_OK(payload_consortium_id("eu", id1));
    CHECK_OK(payload_consortium_id("eu", id2));
    CHECK(memcmp(id1, id2, 32) == 0);
    CHECK_OK(payload_consortium_id("eu2", id2));
    CHECK(memcmp(id1, id2, 32) != 0);
    CHECK_FAILS_WITH(payload_consortium_id("", id1), "1 to 128");
}

/* ---- weights and the exact merge ----------------------------------------- */

static void test_weights(void) {
    agg_update u[3] = {{.tokens = 100, .max_weight = 1},
                       {.tokens = 100, .max_weight = 1},
                       {.tokens = 200, .max_weight = 1}};
    double w[3];
    CHECK_OK(agg_weights_tokens(NULL, u, 3, w));
    CHECK_NEAR(w[0], 0.25, 1e-12);
    CHECK_NEAR(w[2], 0.5, 1e-12);
    u[2].max_weight = 0.3; /* capped: the excess 0.2 goes to the others by tokens */
    CHECK_OK(agg_weights_tokens(NULL, u, 3, w));
    CHECK_NEAR(w[0], 0.35, 1e-12);
    CHECK_NEAR(w[1], 0.35, 1e-12);
    CHECK_NEAR(w[2], 0.3, 1e-12);
    u[0].max_weight = u[1].max_weight = 0.3; /* caps sum to 0.9: each gets its cap */
    CHECK_OK(agg_weights_tokens(NULL, u, 3, w));
    CHECK_NEAR(w[0] + w[1] + w[2], 0.9, 1e-12);
}

int main(void) {
    fed_init(&F);
    test_journal();
    test_journal_records();
    test_payload();
    test_weights();
    model_free(F.base);
    return check_finish();
}
