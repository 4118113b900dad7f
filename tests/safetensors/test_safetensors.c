/* test_safetensors — the safetensors reader, writer and model directories:
 * round trips per dtype, exact fp16/bf16 conversions, and every malformed
 * input refused with a message that names the broken rule. */
#include "model/safetensors.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"

#include <float.h>
#include <math.h>
#include <sys/stat.h>

/* A file with header text `h` (its length written as N unless n_override
 * >= 0) followed by dlen data bytes (zeros). */
static const char *make_file(const char *name, const char *h, size_t dlen, long long n_override) {
    size_t hl = strlen(h);
    unsigned char *b = calloc(8 + hl + dlen + 1, 1);
    uint64_t n = n_override >= 0 ? (uint64_t)n_override : hl;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, h, hl);
    const char *path = ts_tmp(name);
    CHECK_OK(ts_write_bytes(path, b, 8 + hl + dlen));
    free(b);
    return path;
}

static int open_file(const char *path) {
    safetensors_file *f;
    if (safetensors_open(&f, path) != 0) return -1;
    safetensors_close(f);
    return 0;
}

/* The same check through the memory parser, for the fuzzer's entry point. */
static int parse_file(const char *path) {
    size_t len;
    unsigned char *b = (unsigned char *)ts_read(path, &len);
    safetensors_file *f;
    int rc = safetensors_parse(&f, b, len, "buffer");
    if (rc == 0) safetensors_close(f);
    free(b);
    return rc;
}

static void test_bad_inputs(void) {
    const char *p;
    const char *one = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    CHECK_OK(open_file(make_file("ok.st", one, 8, -1)));
    CHECK_OK(parse_file(make_file("ok.st", one, 8, -1)));

    p = ts_tmp("short.st");
    CHECK_OK(ts_write_bytes(p, "\x05\0\0", 3));
    CHECK_FAILS_WITH(open_file(p), "truncated safetensors file: 3 bytes");
    CHECK_OK(ts_write_bytes(p, "", 0));
    CHECK_FAILS_WITH(open_file(p), "truncated safetensors file: 0 bytes");

    /* Valid header, data cut short by 3 bytes. */
    p = make_file("cut.st", one, 5, -1);
    CHECK_FAILS_WITH(open_file(p), "run past the end of the file");
    CHECK_FAILS_WITH(parse_file(p), "run past the end of the file");

    p = make_file("hlen.st", one, 8, 1000);
    CHECK_FAILS_WITH(open_file(p), "header length 1000 runs past the end of the file");
    p = make_file("huge.st", one, 8, 200000000);
    CHECK_FAILS_WITH(open_file(p), "header length 200000000 is over the 100000000-byte limit");
    p = make_file("huge2.st", one, 8, (long long)0x7fffffffffffffffll);
    CHECK_FAILS_WITH(parse_file(p), "is over the");

    /* A header that lies about sizes: 2x2 F32 is 16 bytes, not 8. */
    p = make_file("lie.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 8,
                  -1);
    CHECK_FAILS_WITH(open_file(p), "hold 8 bytes, but shape [2, 2] of F32 needs 16");

    p = make_file("overlap.st",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  12, -1);
    CHECK_FAILS_WITH(open_file(p), "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]");

    /* The same region twice. */
    p = make_file("same.st",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                  8, -1);
    CHECK_FAILS_WITH(open_file(p), "overlap");

    p = make_file("gap.st",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                  12, -1);
    CHECK_FAILS_WITH(open_file(p), "gap of 4 unused bytes before tensor 'b'");
    p = make_file("gap0.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  -1);
    CHECK_FAILS_WITH(open_file(p), "gap of 4 unused bytes before tensor 'a'");

    p = make_file("outside.st",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000],\"data_offsets\":[0,4000]}}", 16, -1);
    CHECK_FAILS_WITH(open_file(p), "data_offsets [0, 4000] run past the end of the file");
    p = make_file("outside2.st",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9223372036854775806,"
                  "9223372036854775807]}}",
                  16, -1);
    CHECK_FAILS_WITH(open_file(p), "run past the end");

    p = make_file("dtype.st", "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  -1);
    CHECK_FAILS_WITH(open_file(p), "tensor 'a' has unknown dtype 'F33'");
    p = make_file("dtype2.st", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1);
    CHECK_FAILS_WITH(open_file(p), "tensor 'a' has no \"dtype\" string");

    p = make_file("dup.st",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, -1);
    CHECK_FAILS_WITH(open_file(p), "duplicate");

    p = make_file("trailing.st", one, 10, -1);
    CHECK_FAILS_WITH(open_file(p), "2 trailing bytes after the last tensor");
    p = make_file("trailing0.st", "{}", 1, -1);
    CHECK_FAILS_WITH(open_file(p), "1 trailing bytes");

    p = make_file("array.st", "[1, 2]", 0, -1);
    CHECK_FAILS_WITH(open_file(p), "header is not a JSON object");
    p = make_file("bad.st", "{\"a\":", 0, -1);
    CHECK_FAILS_WITH(open_file(p), "header is not valid JSON");
    p = make_file("empty.st", "", 0, -1);
    CHECK_FAILS_WITH(open_file(p), "header is not valid JSON");
    p = make_file("utf8.st", "{\"\xff\":{}}", 0, -1);
    CHECK_FAILS_WITH(open_file(p), "header is not valid JSON");
    p = make_file("entry.st", "{\"a\":[]}", 0, -1);
    CHECK_FAILS_WITH(open_file(p), "header entry for tensor 'a' is not an object");

    p = make_file("overflow.st",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                  "\"data_offsets\":[0,0]}}",
                  0, -1);
    CHECK_FAILS_WITH(open_file(p), "shape overflows");
    p = make_file("overflow2.st",
                  "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                  "\"data_offsets\":[0,0]}}",
                  0, -1);
    CHECK_FAILS_WITH(open_file(p), "byte size overflows");
    p = make_file("neg.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
                  -1);
    CHECK_FAILS_WITH(open_file(p), "shape entry 0 is not a non-negative integer");
    p = make_file("float.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}",
                  4, -1);
    CHECK_FAILS_WITH(open_file(p), "shape entry 0 is not a non-negative integer");
    p = make_file("rank.st",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                  1, -1);
    CHECK_FAILS_WITH(open_file(p), "rank 9");
    p = make_file("rev.st", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
                  -1);
    CHECK_FAILS_WITH(open_file(p), "end before they begin");
    p = make_file("offs.st", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
                  -1);
    CHECK_FAILS_WITH(open_file(p), "\"data_offsets\" must be [begin, end]");
    p = make_file("offs2.st", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,-1]}}", 1,
                  -1);
    CHECK_FAILS_WITH(open_file(p), "\"data_offsets\" must be [begin, end]");

    p = make_file("meta.st", "{\"__metadata__\":{\"format\":1}}", 0, -1);
    CHECK_FAILS_WITH(open_file(p), "\"__metadata__\" value of 'format' is not a string");
    p = make_file("meta2.st", "{\"__metadata__\":[]}", 0, -1);
    CHECK_FAILS_WITH(open_file(p), "\"__metadata__\" must be an object");

    CHECK_FAILS_WITH(open_file(ts_tmp("does-not-exist.st")), "cannot open");
    CHECK_FAILS_WITH(open_file(ts_dir()), "not a regular file");
}

/* Valid corner cases the reference implementation also accepts. */
static void test_good_corners(void) {
    safetensors_file *f;
    /* Header padded with spaces, leading whitespace, null metadata, an empty
     * name, a scalar and a zero-size tensor, unknown entry fields ignored. */
    const char *p = make_file("corners.st",
                              " {\"__metadata__\":null,\"\":{\"dtype\":\"F32\",\"shape\":[],"
                              "\"data_offsets\":[0,4],\"extra\":1},\"z\":{\"dtype\":\"BF16\","
                              "\"shape\":[3,0],\"data_offsets\":[4,4]}}    ",
                              4, -1);
    CHECK_OK(safetensors_open(&f, p));
    if (f) {
        CHECK(safetensors_count(f) == 2);
        const safetensors_tensor *s = safetensors_find(f, "");
        CHECK(s && s->ndim == 0 && s->numel == 1);
        const safetensors_tensor *z = safetensors_find(f, "z");
        CHECK(z && z->ndim == 2 && z->numel == 0 && z->shape[0] == 3 && z->shape[1] == 0);
        CHECK(safetensors_find(f, "y") == NULL);
        CHECK(safetensors_metadata(f, "format") == NULL);
        safetensors_close(f);
    }
    p = make_file("empty-ok.st", "{}", 0, -1);
    CHECK_OK(safetensors_open(&f, p));
    if (f) {
        CHECK(safetensors_count(f) == 0);
        safetensors_close(f);
    }
}

static void test_dtype_names(void) {
    const char *names[] = {"BOOL", "U8",  "I8",  "I16", "U16", "F16",     "BF16",   "I32",
                           "U32",  "F32", "F64", "I64", "U64", "F8_E4M3", "F8_E5M2"};
    const size_t sizes[] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8, 1, 1};
    for (int i = 0; i < 15; i++) {
        safetensors_dtype d;
        CHECK(safetensors_dtype_parse(names[i], &d) == 0 && (int)d == i);
        CHECK(strcmp(safetensors_dtype_name(d), names[i]) == 0);
        CHECK(safetensors_dtype_size(d) == sizes[i]);
    }
    safetensors_dtype d;
    CHECK(safetensors_dtype_parse("f32", &d) != 0);
    CHECK(safetensors_dtype_parse("F4", &d) != 0);
}

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_f16_hand_values(void) {
    struct {
        float f;
        uint16_t h;
    } v[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3c00},
        {-2.0f, 0xc000},
        {0.5f, 0x3800},
        {65504.0f, 0x7bff},        /* largest half */
        {0x1p-14f, 0x0400},        /* smallest normal */
        {0x1p-24f, 0x0001},        /* smallest subnormal */
        {1023 * 0x1p-24f, 0x03ff}, /* largest subnormal */
        {-3 * 0x1p-24f, 0x8003},   /* negative subnormal */
        {INFINITY, 0x7c00},
        {-INFINITY, 0xfc00},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        CHECK_MSG(safetensors_f32_to_f16(v[i].f) == v[i].h, "f16(%g) = %04x, want %04x",
                  (double)v[i].f, safetensors_f32_to_f16(v[i].f), v[i].h);
        CHECK_MSG(f_bits(safetensors_f16_to_f32(v[i].h)) == f_bits(v[i].f), "%04x -> %g", v[i].h,
                  (double)safetensors_f16_to_f32(v[i].h));
    }
    /* Rounding: nearest, ties to even. */
    CHECK(safetensors_f32_to_f16(0.1f) == 0x2e66);
    CHECK(safetensors_f32_to_f16(1.0f / 3) == 0x3555);
    CHECK(safetensors_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);     /* tie -> even 1.0 */
    CHECK(safetensors_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02); /* tie -> even */
    CHECK(safetensors_f32_to_f16(0x1p-25f) == 0x0000);            /* tie -> even 0 */
    CHECK(safetensors_f32_to_f16(1.5f * 0x1p-25f) == 0x0001);
    CHECK(safetensors_f32_to_f16(3 * 0x1p-25f) == 0x0002); /* tie -> even */
    CHECK(safetensors_f32_to_f16(0x1p-40f) == 0x0000);     /* underflow */
    CHECK(safetensors_f32_to_f16(65519.996f) == 0x7bff);
    CHECK(safetensors_f32_to_f16(65520.0f) == 0x7c00); /* tie -> even = inf */
    CHECK(safetensors_f32_to_f16(1e10f) == 0x7c00);
    CHECK(safetensors_f32_to_f16(-1e10f) == 0xfc00);
    CHECK(safetensors_f32_to_f16(FLT_MIN) == 0x0000);
    uint16_t nan = safetensors_f32_to_f16(NAN);
    CHECK((nan & 0x7c00) == 0x7c00 && (nan & 0x03ff) != 0);
    CHECK(isnan(safetensors_f16_to_f32(0x7e00)) && isnan(safetensors_f16_to_f32(0xfc01)));
    /* A NaN whose payload sits only in the low bits must not become inf. */
    CHECK((safetensors_f32_to_f16(bits_f(0x7f800001)) & 0x03ff) != 0);
}

static void test_bf16_hand_values(void) {
    CHECK(safetensors_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(safetensors_f32_to_bf16(-2.0f) == 0xc000);
    CHECK(safetensors_f32_to_bf16(3.14159265f) == 0x4049);
    CHECK(safetensors_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);     /* tie -> even */
    CHECK(safetensors_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82); /* tie -> even */
    CHECK(safetensors_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);
    CHECK(safetensors_f32_to_bf16(FLT_MAX) == 0x7f80); /* rounds up to inf */
    CHECK(safetensors_f32_to_bf16(INFINITY) == 0x7f80);
    CHECK(safetensors_f32_to_bf16(-INFINITY) == 0xff80);
    CHECK(safetensors_f32_to_bf16(bits_f(0x00000001)) == 0x0000); /* tiny subnormal */
    CHECK(safetensors_f32_to_bf16(bits_f(0x00018000)) == 0x0002); /* subnormal tie -> even */
    CHECK(safetensors_f32_to_bf16(-0.0f) == 0x8000);
    CHECK(f_bits(safetensors_bf16_to_f32(0x0001)) == 0x00010000u); /* bf16 subnormal */
    CHECK(safetensors_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(safetensors_bf16_to_f32(0xff80) == -INFINITY);
    uint16_t nan = safetensors_f32_to_bf16(bits_f(0x7f800001)); /* payload only in low bits */
    CHECK((nan & 0x7f80) == 0x7f80 && (nan & 0x007f) != 0);
    CHECK(isnan(safetensors_bf16_to_f32(nan)));
}

/* Every half and every bfloat16 survives the round trip through fp32, and
 * every midpoint between neighbours rounds to the even one (the values just
 * beside it to the nearer one). */
static void test_exhaustive(void) {
    int bad_rt = 0, bad_mid = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = safetensors_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            if (!isnan(safetensors_f16_to_f32(safetensors_f32_to_f16(f)))) bad_rt++;
        } else if (safetensors_f32_to_f16(f) != h) {
            bad_rt++;
        }
        float b = safetensors_bf16_to_f32((uint16_t)h);
        if (isnan(b)) {
            if (!isnan(safetensors_bf16_to_f32(safetensors_f32_to_bf16(b)))) bad_rt++;
        } else if (safetensors_f32_to_bf16(b) != h) {
            bad_rt++;
        }
    }
    for (uint32_t h = 0; h < 0x7bff; h++) { /* positive finite neighbours */
        float a = safetensors_f16_to_f32((uint16_t)h),
              b = safetensors_f16_to_f32((uint16_t)(h + 1));
        float mid = (a + b) / 2; /* exact: 12 significant bits */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        if (safetensors_f32_to_f16(mid) != even) bad_mid++;
        if (safetensors_f32_to_f16(nextafterf(mid, 0)) != h) bad_mid++;
        if (safetensors_f32_to_f16(nextafterf(mid, INFINITY)) != h + 1) bad_mid++;
        if (safetensors_f32_to_f16(-mid) != (even | 0x8000)) bad_mid++;
    }
    for (uint32_t h = 0; h < 0x7f7f; h++) {
        float a = safetensors_bf16_to_f32((uint16_t)h),
              b = safetensors_bf16_to_f32((uint16_t)(h + 1));
        float mid = bits_f((f_bits(a) + f_bits(b)) / 2); /* exact midpoint: 9 significant bits */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        if (safetensors_f32_to_bf16(mid) != even) bad_mid++;
        if (safetensors_f32_to_bf16(nextafterf(mid, 0)) != h) bad_mid++;
        if (safetensors_f32_to_bf16(nextafterf(mid, INFINITY)) != h + 1) bad_mid++;
    }
    CHECK_MSG(bad_rt == 0, "%d values changed in a round trip", bad_rt);
    CHECK_MSG(bad_mid == 0, "%d midpoints rounded wrongly", bad_mid);
}

/* Writes one tensor of each kind, reads the bytes and values back. */
static void test_round_trip(void) {
    float f32[6] = {1.5f, -2.25f, 0.0f, 1e-30f, 65504.0f, -0.0f};
    uint16_t bf16[4] = {0x3f80, 0xc049, 0x0001, 0x7f80};
    uint16_t f16[5] = {0x3c00, 0x8001, 0x7bff, 0xfc00, 0x3555};
    double f64[3] = {1.0 / 3, -1e300, 5e-324};
    int64_t i64[2] = {-1, 1ll << 62};
    uint8_t u8[3] = {0, 7, 255};
    float scalar = 42.0f;
    safetensors_entry e[] = {
        {"w.f32", SAFETENSORS_F32, 2, {2, 3}, f32}, {"w.bf16", SAFETENSORS_BF16, 2, {2, 2}, bf16},
        {"w.f16", SAFETENSORS_F16, 1, {5}, f16},    {"w.f64", SAFETENSORS_F64, 1, {3}, f64},
        {"i.i64", SAFETENSORS_I64, 1, {2}, i64},    {"i.u8", SAFETENSORS_U8, 3, {1, 3, 1}, u8},
        {"s", SAFETENSORS_F32, 0, {0}, &scalar},    {"zero", SAFETENSORS_F16, 2, {0, 4}, NULL},
    };
    const int n = (int)(sizeof e / sizeof e[0]);
    const char *meta[] = {"format", "pt", "note", "quote \" and \xc3\xa9", NULL};
    const char *path = ts_tmp("rt.safetensors");
    CHECK_OK(safetensors_write(path, e, n, meta));

    size_t len;
    unsigned char *raw = (unsigned char *)ts_read(path, &len);
    CHECK(raw != NULL);
    if (!raw) return;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | raw[i];
    CHECK(hl % 8 == 0);
    size_t j = (size_t)hl; /* the JSON, then only padding spaces */
    while (j > 0 && raw[8 + j - 1] == ' ') j--;
    CHECK(j > 0 && raw[8 + j - 1] == '}' && hl - j < 8);
    CHECK(memcmp(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"", 30) == 0);

    safetensors_file *f;
    CHECK_OK(safetensors_open(&f, path));
    if (!f) {
        free(raw);
        return;
    }
    CHECK(safetensors_count(f) == n);
    CHECK(strcmp(safetensors_metadata(f, "format"), "pt") == 0);
    CHECK(strcmp(safetensors_metadata(f, "note"), "quote \" and \xc3\xa9") == 0);
    /* Data is laid out in the order given. */
    CHECK(strcmp(safetensors_tensor_at(f, 0)->name, "w.f32") == 0);
    CHECK(safetensors_tensor_at(f, n) == NULL);
    for (int i = 0; i < n; i++) {
        const safetensors_tensor *t = safetensors_find(f, e[i].name);
        CHECK_MSG(t != NULL, "%s", e[i].name);
        if (!t) continue;
        CHECK(t->dtype == e[i].dtype && t->ndim == e[i].ndim);
        for (int d = 0; d < t->ndim; d++) CHECK(t->shape[d] == e[i].shape[d]);
        size_t nb = (size_t)t->numel * safetensors_dtype_size(t->dtype);
        CHECK(t->end - t->begin == nb);
        CHECK(nb == 0 || memcmp(t->data, e[i].data, nb) == 0);
        /* The reported pointer is inside the file at the reported offset. */
        CHECK(memcmp(raw + 8 + hl + t->begin, t->data, nb) == 0);
    }
    float out[6];
    double dout[6];
    CHECK_OK(safetensors_to_float(safetensors_find(f, "w.f32"), out));
    CHECK(memcmp(out, f32, sizeof f32) == 0);
    CHECK_OK(safetensors_to_double(safetensors_find(f, "w.f32"), dout));
    for (int i = 0; i < 6; i++) CHECK(dout[i] == (double)f32[i]);
    CHECK_OK(safetensors_to_float(safetensors_find(f, "w.bf16"), out));
    CHECK(out[0] == 1.0f && out[1] == -3.140625f && out[2] == 0x1p-133f && out[3] == INFINITY);
    CHECK_OK(safetensors_to_float(safetensors_find(f, "w.f16"), out));
    CHECK(out[0] == 1.0f && out[1] == -0x1p-24f && out[2] == 65504.0f && out[3] == -INFINITY);
    CHECK(out[4] == 0.333251953125f);
    CHECK_OK(safetensors_to_double(safetensors_find(f, "w.f16"), dout));
    CHECK(dout[4] == 0.333251953125);
    CHECK_OK(safetensors_to_double(safetensors_find(f, "w.f64"), dout));
    CHECK(memcmp(dout, f64, sizeof f64) == 0);
    CHECK_OK(safetensors_to_float(safetensors_find(f, "w.f64"), out));
    CHECK(out[0] == (float)(1.0 / 3) && out[1] == -INFINITY && out[2] == 0.0f);
    CHECK_OK(safetensors_to_float(safetensors_find(f, "s"), out));
    CHECK(out[0] == 42.0f);
    CHECK_OK(safetensors_to_float(safetensors_find(f, "zero"), out));
    CHECK_FAILS_WITH(safetensors_to_float(safetensors_find(f, "i.i64"), out),
                     "tensor 'i.i64' has dtype I64; only F32, BF16, F16 and F64");
    CHECK_FAILS_WITH(safetensors_to_double(safetensors_find(f, "i.u8"), dout), "has dtype U8");
    safetensors_close(f);

    /* Deterministic: the same entries give the same bytes. */
    const char *path2 = ts_tmp("rt2.safetensors");
    CHECK_OK(safetensors_write(path2, e, n, meta));
    size_t len2;
    unsigned char *raw2 = (unsigned char *)ts_read(path2, &len2);
    CHECK(raw2 && len2 == len && memcmp(raw, raw2, len) == 0);
    free(raw2);

    /* Zero-copy parse of the same bytes, at an odd address (unaligned data). */
    unsigned char *odd = malloc(len + 1);
    memcpy(odd + 1, raw, len);
    CHECK_OK(safetensors_parse(&f, odd + 1, len, "memory"));
    if (f) {
        const safetensors_tensor *t = safetensors_find(f, "w.f32");
        CHECK(t && strcmp(t->file, "memory") == 0);
        CHECK_OK(safetensors_to_float(t, out));
        CHECK(memcmp(out, f32, sizeof f32) == 0);
        safetensors_close(f);
    }
    free(odd);
    free(raw);
}

static void test_writer_errors(void) {
    float x[2] = {1, 2};
    safetensors_entry dup[] = {{"a", SAFETENSORS_F32, 1, {2}, x},
                               {"a", SAFETENSORS_F32, 1, {2}, x}};
    const char *p = ts_tmp("w.safetensors");
    CHECK_FAILS_WITH(safetensors_write(p, dup, 2, NULL), "duplicate tensor name 'a'");
    safetensors_entry meta[] = {{"__metadata__", SAFETENSORS_F32, 1, {2}, x}};
    CHECK_FAILS_WITH(safetensors_write(p, meta, 1, NULL), "invalid tensor name");
    safetensors_entry neg[] = {{"a", SAFETENSORS_F32, 1, {-2}, x}};
    CHECK_FAILS_WITH(safetensors_write(p, neg, 1, NULL), "negative dimension");

    safetensors_entry one[] = {{"a", SAFETENSORS_F32, 1, {2}, x}};
    safetensors_writer *w;
    CHECK_OK(safetensors_writer_open(&w, p, one, 1, NULL));
    if (w) {
        CHECK_OK(safetensors_writer_put(w, x, 4));
        CHECK_FAILS_WITH(safetensors_writer_put(w, x, 8), "4 bytes more than the tensors declare");
        CHECK_FAILS_WITH(safetensors_writer_finish(w), "only 4 of the 8 declared data bytes");
    }
    /* Nothing visible, no temporary file left behind. */
    CHECK(access(p, F_OK) != 0);
    CHECK_OK(safetensors_writer_open(&w, p, one, 1, NULL));
    if (w) safetensors_writer_abort(w);
    CHECK(access(p, F_OK) != 0);
    char tmpname[1100];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", p, (long)getpid());
    CHECK(access(tmpname, F_OK) != 0);
    CHECK_FAILS_WITH(safetensors_write(ts_tmp("no/such/dir/x.safetensors"), one, 1, NULL),
                     "cannot create");
}

/* A sharded directory as save_pretrained writes it. */
static void write_sharded(const char *dir, const char *index_json) {
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[3] = {7, 8, 9};
    char path[1024];
    mkdir(dir, 0755);
    safetensors_entry s1[] = {{"a", SAFETENSORS_F32, 2, {2, 2}, a},
                              {"b", SAFETENSORS_F32, 1, {2}, b}};
    safetensors_entry s2[] = {{"c", SAFETENSORS_F32, 1, {3}, c}};
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    CHECK_OK(safetensors_write(path, s1, 2, NULL));
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    CHECK_OK(safetensors_write(path, s2, 1, NULL));
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK_OK(ts_write_bytes(path, index_json, strlen(index_json)));
}

static int open_dir(const char *dir) {
    safetensors_dir *d;
    if (safetensors_dir_open(&d, dir) != 0) return -1;
    safetensors_dir_close(d);
    return 0;
}

static void test_dirs(void) {
    const char *good = "{\"metadata\":{\"total_size\":36},\"weight_map\":{"
                       "\"c\":\"model-00002-of-00002.safetensors\","
                       "\"a\":\"model-00001-of-00002.safetensors\","
                       "\"b\":\"model-00001-of-00002.safetensors\"}}";
    const char *dir = ts_tmp("sharded");
    write_sharded(dir, good);
    safetensors_dir *d;
    CHECK_OK(safetensors_dir_open(&d, dir));
    if (d) {
        CHECK(safetensors_dir_count(d) == 3);
        CHECK(strcmp(safetensors_dir_tensor_at(d, 0)->name, "a") == 0); /* sorted by name */
        const safetensors_tensor *c = safetensors_dir_find(d, "c");
        float v[3];
        CHECK(c && strstr(c->file, "model-00002-of-00002.safetensors"));
        CHECK(c && safetensors_to_float(c, v) == 0 && v[0] == 7 && v[2] == 9);
        CHECK(safetensors_dir_find(d, "d") == NULL);
        safetensors_dir_close(d);
    }

    /* A missing shard. */
    char shard2[1024];
    snprintf(shard2, sizeof shard2, "%s/model-00002-of-00002.safetensors", dir);
    remove(shard2);
    CHECK_FAILS_WITH(open_dir(dir), "shard model-00002-of-00002.safetensors (named by");
    CHECK_FAILS_WITH(open_dir(dir), "No such file or directory");

    /* Listed in the index, absent from its shard. */
    const char *lost = "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                       "\"x\":\"model-00001-of-00002.safetensors\"}}";
    dir = ts_tmp("lost");
    write_sharded(dir, lost);
    CHECK_FAILS_WITH(open_dir(dir), "lists tensor 'x' in shard model-00001-of-00002.safetensors, "
                                    "but that shard does not contain it");

    const char *escape = "{\"weight_map\":{\"a\":\"../sharded/model-00001-of-00002.safetensors\"}}";
    dir = ts_tmp("escape");
    write_sharded(dir, escape);
    CHECK_FAILS_WITH(open_dir(dir), "weight_map entry for 'a' must be a shard file name");
    dir = ts_tmp("nomap");
    write_sharded(dir, "{\"metadata\":{}}");
    CHECK_FAILS_WITH(open_dir(dir), "no \"weight_map\" object");
    dir = ts_tmp("badjson");
    write_sharded(dir, "{\"weight_map\":");
    CHECK_FAILS_WITH(open_dir(dir), "model.safetensors.index.json: not valid JSON");

    /* A corrupt shard is reported with its own file name. */
    dir = ts_tmp("corrupt");
    write_sharded(dir, good);
    char shard1[1024];
    snprintf(shard1, sizeof shard1, "%s/model-00001-of-00002.safetensors", dir);
    CHECK_OK(ts_write_bytes(shard1, "\x03\0\0\0\0\0\0\0{}", 10)); /* N = 3, 2 bytes follow */
    CHECK_FAILS_WITH(open_dir(dir), "model-00001-of-00002.safetensors: header length 3 runs past");

    /* model.safetensors wins over an index, as in transformers. */
    dir = ts_tmp("single");
    write_sharded(dir, "not even json");
    float y = 3;
    safetensors_entry e[] = {{"y", SAFETENSORS_F32, 1, {1}, &y}};
    char single[1024];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    CHECK_OK(safetensors_write(single, e, 1, NULL));
    CHECK_OK(safetensors_dir_open(&d, dir));
    if (d) {
        CHECK(safetensors_dir_count(d) == 1 && safetensors_dir_find(d, "y"));
        safetensors_dir_close(d);
    }

    dir = ts_tmp("nothing");
    mkdir(dir, 0755);
    CHECK_FAILS_WITH(open_dir(dir), "has neither model.safetensors nor "
                                    "model.safetensors.index.json");
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/pytorch_model.bin", dir);
    CHECK_OK(ts_write_bytes(bin, "x", 1));
    CHECK_FAILS_WITH(open_dir(dir), "pytorch_model.bin is not read");
}

int main(void) {
    test_bad_inputs();
    test_good_corners();
    test_dtype_names();
    test_f16_hand_values();
    test_bf16_hand_values();
    test_exhaustive();
    test_round_trip();
    test_writer_errors();
    test_dirs();
    return check_finish();
}
