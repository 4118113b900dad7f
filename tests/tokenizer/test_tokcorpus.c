/* test_tokcorpus — the pre-tokenized corpus file: what is written is read
 * back, both token widths, and every kind of corruption (each truncation, a
 * flipped byte in each header field, bad boundaries, out-of-range tokens) is
 * an error, never a crash. */
#include "model/tokenizer/tokcorpus.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const uint32_t doc0[] = {1, 2, 3}, doc2[] = {7, 0, 999};

static void write_sample(const char *path, uint32_t vocab, uint32_t flags) {
    tokcorpus_writer *w = NULL;
    CHECK_OK(tokcorpus_writer_open(path, vocab, flags, &w));
    if (!w) return;
    CHECK_OK(tokcorpus_writer_add(w, doc0, 3));
    CHECK_OK(tokcorpus_writer_add(w, NULL, 0)); /* an empty document keeps its place */
    CHECK_OK(tokcorpus_writer_add(w, doc2, 3));
    CHECK(tokcorpus_writer_tokens(w) == 6);
    CHECK_OK(tokcorpus_writer_finish(w));
}

static void test_roundtrip(uint32_t vocab, size_t expect_size) {
    char path[TS_PATH];
    ts_path(path, "a.tok");
    write_sample(path, vocab, TOKCORPUS_FLAG_SPECIAL);
    char tmp[TS_PATH + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!fio_exists(tmp));
    char *data;
    size_t len;
    CHECK_OK(fio_read_all(path, 1 << 20, &data, &len));
    CHECK_MSG(len == expect_size, "size %zu, want %zu", len, expect_size);
    free(data);
    tokcorpus *c = NULL;
    CHECK_OK(tokcorpus_open(path, &c));
    if (!c) return;
    CHECK(tokcorpus_n_docs(c) == 3 && tokcorpus_n_tokens(c) == 6);
    CHECK(tokcorpus_vocab_size(c) == vocab && tokcorpus_flags(c) == TOKCORPUS_FLAG_SPECIAL);
    uint64_t start, n;
    uint32_t got[8];
    CHECK_OK(tokcorpus_doc(c, 0, &start, &n));
    CHECK(start == 0 && n == 3);
    CHECK_OK(tokcorpus_read(c, start, n, got));
    CHECK(!memcmp(got, doc0, sizeof doc0));
    CHECK_OK(tokcorpus_doc(c, 1, &start, &n));
    CHECK(start == 3 && n == 0);
    CHECK_OK(tokcorpus_doc(c, 2, &start, &n));
    CHECK(start == 3 && n == 3);
    CHECK_OK(tokcorpus_read(c, start, n, got));
    CHECK(!memcmp(got, doc2, sizeof doc2));
    CHECK_FAILS_WITH(tokcorpus_doc(c, 3, &start, &n), "out of range");
    CHECK_FAILS_WITH(tokcorpus_read(c, 4, 3, got), "out of range");
    CHECK_FAILS_WITH(tokcorpus_read(c, UINT64_MAX, 2, got), "out of range");
    tokcorpus_close(c);
}

static void expect_corrupt(const char *path, const unsigned char *p, size_t n, const char *needle) {
    CHECK_OK(ts_write_bytes(path, p, n));
    tokcorpus *c = NULL;
    CHECK_FAILS_WITH(tokcorpus_open(path, &c), needle);
    CHECK(c == NULL);
}

static void test_corruption(void) {
    char path[TS_PATH], bad[TS_PATH];
    ts_path(path, "b.tok");
    ts_path(bad, "bad.tok");
    write_sample(path, 1000, 0);
    unsigned char *orig;
    size_t len;
    CHECK_OK(fio_read_all(path, 1 << 20, (char **)&orig, &len));
    unsigned char *p = malloc(len + 8);
    /* every truncation, including the empty file */
    for (size_t cut = 0; cut < len; cut++) {
        CHECK_OK(ts_write_bytes(bad, orig, cut));
        tokcorpus *c = NULL;
        err_clear();
        CHECK_MSG(tokcorpus_open(bad, &c) != 0 && c == NULL, "truncated to %zu opened", cut);
    }
    /* one extra byte */
    memcpy(p, orig, len);
    p[len] = 0;
    expect_corrupt(bad, p, len + 1, "truncated or corrupt");
    struct {
        size_t off;
        unsigned char value;
        const char *needle;
    } flips[] = {
        {0, 'X', "not a fedlora token file"},
        {8, 2, "version 2"},
        {12, 3, "token width 3"},
        {16, 0, "corrupt header"}, /* vocab 1000 → 768: token 999 too big */
        {20, 4, "unknown flags"},
        {24, 9, "truncated or corrupt"}, /* n_docs */
        {32, 5, "truncated or corrupt"}, /* n_tokens */
        {50, 1, "reserved bytes"},
        {64 + 12 + 8, 9, "corrupt document boundary"}, /* bound[1] = 9 > n_tokens */
        {64 + 10, 0xFF, "not below vocab_size"},       /* token 5 = 0xFF03... */
    };
    for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        memcpy(p, orig, len);
        p[flips[i].off] = flips[i].value;
        if (flips[i].off == 16) p[17] = 3; /* vocab_size = 768 < 999 */
        expect_corrupt(bad, p, len, flips[i].off == 16 ? "not below vocab_size" : flips[i].needle);
    }
    /* a decreasing boundary */
    memcpy(p, orig, len);
    p[64 + 12 + 16] = 1; /* bound[2] = 1 < bound[1] = 3 */
    expect_corrupt(bad, p, len, "corrupt document boundary");
    free(p);
    free(orig);
    unlink(bad);
    unlink(path);
}

static void test_writer_errors(void) {
    char path[TS_PATH];
    ts_path(path, "c.tok");
    tokcorpus_writer *w = NULL;
    CHECK_FAILS_WITH(tokcorpus_writer_open(path, 0, 0, &w), "vocab_size must be > 0");
    CHECK_OK(tokcorpus_writer_open(path, 10, 0, &w));
    if (w) {
        CHECK_FAILS_WITH(tokcorpus_writer_add(w, (uint32_t[]){3, 10}, 2), "token id 10");
        tokcorpus_writer_abort(w);
    }
    char tmp[TS_PATH + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!fio_exists(path) && !fio_exists(tmp));
    CHECK_FAILS_WITH(tokcorpus_writer_open("/nonexistent-dir/x.tok", 10, 0, &w), "cannot create");
    tokcorpus *c = NULL;
    CHECK_FAILS_WITH(tokcorpus_open("/nonexistent-dir/x.tok", &c), "cannot open");
    CHECK_FAILS_WITH(tokcorpus_open(ts_dir(), &c), "not a regular file");
}

int main(void) {
    /* 64-byte header + 6 tokens + 4 boundaries of 8 bytes */
    test_roundtrip(1000, 64 + 6 * 2 + 4 * 8);
    test_roundtrip(128256, 64 + 6 * 4 + 4 * 8);
    test_corruption();
    test_writer_errors();
    return check_finish();
}
