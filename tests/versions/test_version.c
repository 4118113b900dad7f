/* Model versions (wire/version.h): one hash over one file or every shard.
 *   - a sharded checkpoint sealed: the index lists each shard's SHA-256 and
 *     size (computed here independently), the version hash is the SHA-256
 *     of the index file, sealing again gives the same bytes, fedlora still
 *     loads the directory and version_verify accepts it;
 *   - a single file: the hash of model.safetensors, as before;
 *   - tampering: a flipped byte in a shard, a shard cut short or gone, an
 *     edited index, both layouts at once: each refused, naming the file;
 *   - the index reader's rules, one refusal per rule;
 *   - the test knob FEDLORA_SHARD_BYTES: read by checkpoint_write when the
 *     caller sets no limit, refused when it is not a byte count. */
#include "model/checkpoint.h"
#include "tests/support/ts_model.h"
#include "util/hex.h"
#include "wire/crypto.h"
#include "wire/version.h"

#include <jansson.h>

static int flip(const char *path, long offset) {
    int fd = open(path, O_RDWR);
    unsigned char b;
    int ok = fd >= 0 && pread(fd, &b, 1, offset) == 1 && (b ^= 0x01, 1) &&
             pwrite(fd, &b, 1, offset) == 1;
    if (fd >= 0) close(fd);
    return ok ? 0 : -1;
}

/* Replaces the hex digit at offset by another one. */
static int other_digit(const char *path, long offset) {
    int fd = open(path, O_RDWR);
    char c;
    int ok = fd >= 0 && pread(fd, &c, 1, offset) == 1 && (c = c == '0' ? '1' : '0', 1) &&
             pwrite(fd, &c, 1, offset) == 1;
    if (fd >= 0) close(fd);
    return ok ? 0 : -1;
}

static uint64_t size_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* A tiny Llama written in shards of at most `max` bytes into dir. */
static model *write_sharded(const char *dir, int64_t max) {
    model *m = ts_preset_model("llama", 7);
    checkpoint_save_options o = {.dtype = "float32", .max_shard_bytes = max};
    if (m) CHECK_OK(checkpoint_write(m, dir, &o));
    return m;
}

static void sealed_shards(void) {
    char dir[TS_PATH], index[TS_PATH], path[TS_PATH];
    ts_path(dir, "sharded");
    model *m = write_sharded(dir, 100000);
    ts_in(index, dir, VERSION_INDEX_FILE);
    CHECK(version_is_sharded(dir) == 1);
    uint8_t h[32], again[32], file_hash[32];
    CHECK_OK(version_seal(dir, h));
    /* The version hash is the index file's SHA-256. */
    CHECK_OK(crypto_sha256_file(index, file_hash, NULL));
    CHECK(memcmp(h, file_hash, 32) == 0);
    /* The index names every shard with its own hash and size. */
    json_t *root = json_load_file(index, 0, NULL);
    json_t *shards = json_object_get(json_object_get(root, "metadata"), "fedlora_shards");
    CHECK_MSG(json_object_size(shards) >= 4, "%zu shards", json_object_size(shards));
    int n = (int)json_object_size(shards);
    for (int k = 1; k <= n; k++) {
        char name[64], hex[65];
        uint8_t sh[32];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k, n);
        CHECK_OK(crypto_sha256_file(ts_in(path, dir, name), sh, NULL));
        hex_encode(sh, 32, hex);
        json_t *e = json_object_get(shards, name);
        CHECK_MSG(e && !strcmp(json_string_value(json_object_get(e, "sha256")), hex), "%s", name);
        CHECK((uint64_t)json_integer_value(json_object_get(e, "size")) == size_of(path));
    }
    /* transformers' keys are still there, unchanged. */
    CHECK(json_integer_value(json_object_get(json_object_get(root, "metadata"), "total_size")) > 0);
    CHECK(json_object_size(json_object_get(root, "weight_map")) == (size_t)m->n_params);
    json_decref(root);
    /* Sealing again: the same index, byte for byte. */
    char *before = ts_read(index, NULL);
    CHECK_OK(version_seal(dir, again));
    char *after = ts_read(index, NULL);
    CHECK(memcmp(h, again, 32) == 0 && before && after && !strcmp(before, after));
    free(before);
    free(after);
    CHECK_OK(version_verify(dir, h));
    /* The reader the nodes use accepts it and says the same. */
    version_index *x = NULL;
    CHECK_OK(version_index_read(&x, index, again));
    CHECK(x && x->n_shards == n && x->n_tensors == m->n_params && memcmp(again, h, 32) == 0);
    version_index_free(x);
    /* fedlora loads the sealed directory: the same values. */
    model *back = NULL;
    CHECK_OK(checkpoint_load(&back, dir));
    if (back && m) {
        const char *worst = NULL;
        ts_worst w = ts_worst_model(back, m, &worst);
        CHECK_MSG(w.diff == 0, "%s differs", worst ? worst : "?");
    }
    model_free(back);
    model_free(m);

    /* Tampering. */
    char shard2[TS_PATH], saved[TS_PATH], name2[64];
    snprintf(name2, sizeof name2, "model-00002-of-%05d.safetensors", n);
    ts_in(shard2, dir, name2);
    CHECK_OK(flip(shard2, (long)size_of(shard2) - 3));
    snprintf(saved, sizeof saved, "%s: ", name2);
    CHECK_FAILS_WITH(version_verify(dir, h), saved);
    CHECK_FAILS_WITH(version_verify(dir, h), "the shard was changed");
    CHECK_OK(flip(shard2, (long)size_of(shard2) - 3));
    CHECK_OK(version_verify(dir, h));
    size_t shard_len = 0;
    char *shard_bytes = ts_read(shard2, &shard_len);
    CHECK(truncate(shard2, (off_t)size_of(shard2) - 1) == 0);
    CHECK_FAILS_WITH(version_verify(dir, h), "the shard was changed");
    if (shard_bytes) CHECK_OK(ts_write_bytes(shard2, shard_bytes, shard_len));
    free(shard_bytes);
    ts_path(saved, "saved-shard");
    CHECK(rename(shard2, saved) == 0);
    CHECK_FAILS_WITH(version_verify(dir, h), name2);
    CHECK(rename(saved, shard2) == 0);
    CHECK_OK(version_verify(dir, h));
    /* An edited index (a digit of a shard's hash): its hash is no longer
     * the version's. */
    char *text = ts_read(index, NULL);
    char *digit = text ? strstr(text, "\"sha256\": \"") : NULL;
    long at = digit ? (long)(digit - text) + 11 : 0;
    free(text);
    CHECK(at > 0);
    char *orig = ts_read(index, NULL);
    CHECK_OK(other_digit(index, at));
    CHECK_FAILS_WITH(version_verify(dir, h), "not to version");
    if (orig) CHECK_OK(ts_write(index, orig));
    free(orig);
    CHECK_OK(version_verify(dir, h));
    /* Two layouts at once. */
    CHECK_OK(ts_write(ts_in(path, dir, VERSION_MODEL_FILE), "x"));
    CHECK(version_is_sharded(dir) == -1);
    CHECK_FAILS_WITH(version_verify(dir, h), "holds both");
    unlink(path);
    CHECK_FAILS_WITH(version_is_sharded(ts_tmp("nothing-here")), "holds no model weights");
}

static void single_file(void) {
    char dir[TS_PATH], path[TS_PATH];
    ts_path(dir, "single");
    model *m = ts_preset_model("gpt2", 3);
    if (m) CHECK_OK(checkpoint_save(m, dir, "float32"));
    model_free(m);
    uint8_t h[32], file_hash[32];
    CHECK(version_is_sharded(dir) == 0);
    CHECK_OK(version_seal(dir, h));
    CHECK_OK(crypto_sha256_file(ts_in(path, dir, VERSION_MODEL_FILE), file_hash, NULL));
    CHECK(memcmp(h, file_hash, 32) == 0);
    CHECK_OK(version_verify(dir, h));
    CHECK(!fio_exists(ts_in(path, dir, VERSION_INDEX_FILE)));
    CHECK_OK(flip(ts_in(path, dir, VERSION_MODEL_FILE), 100));
    CHECK_FAILS_WITH(version_verify(dir, h), "model.safetensors hashes to");
}

/* ---- the reader's rules ------------------------------------------------------------- */

static const char *H1 = "1111111111111111111111111111111111111111111111111111111111111111";
static const char *H2 = "2222222222222222222222222222222222222222222222222222222222222222";

/* An index of two shards with the given pieces. */
static void index_text(char *out, size_t n, const char *s1, const char *h1, const char *size1,
                       const char *map2, const char *total) {
    snprintf(out, n,
             "{\"metadata\": {\"fedlora_shards\": {\"%s\": {\"sha256\": \"%s\", \"size\": %s}, "
             "\"model-00002-of-00002.safetensors\": {\"sha256\": \"%s\", \"size\": 200}}, "
             "\"total_size\": %s}, \"weight_map\": {\"a.weight\": "
             "\"model-00001-of-00002.safetensors\", \"b.weight\": \"%s\"}}",
             s1, h1, size1, H2, total, map2);
}

static int parse(const char *text) {
    version_index *x = NULL;
    int rc = version_index_parse(&x, text, strlen(text), "idx");
    version_index_free(x);
    return rc;
}

static void reader_rules(void) {
    const char *S1 = "model-00001-of-00002.safetensors", *S2 = "model-00002-of-00002.safetensors";
    char t[2048];
    index_text(t, sizeof t, S1, H1, "100", S2, "250");
    version_index *x = NULL;
    CHECK_OK(version_index_parse(&x, t, strlen(t), "idx"));
    CHECK(x && x->n_shards == 2 && x->bytes == 300 && x->total_size == 250 && x->n_tensors == 2 &&
          !strcmp(x->shards[1].name, S2) && x->shards[0].size == 100 &&
          x->shards[1].hash[31] == 0x22);
    version_index_free(x);

    index_text(t, sizeof t, "model-1-of-2.safetensors", H1, "100", S2, "250");
    CHECK_FAILS_WITH(parse(t), "is not a file name model-NNNNN-of-00002.safetensors");
    index_text(t, sizeof t, "model-00001-of-00003.safetensors", H1, "100", S2, "250");
    CHECK_FAILS_WITH(parse(t), "of this index's 2 shards");
    index_text(t, sizeof t, "../model-00001-of-00002.safetensors", H1, "100", S2, "250");
    CHECK_FAILS_WITH(parse(t), "is not a file name");
    index_text(t, sizeof t, "model-00000-of-00002.safetensors", H1, "100", S2, "250");
    CHECK_FAILS_WITH(parse(t), "is not a file name");
    index_text(t, sizeof t, S1, "11", "100", S2, "250");
    CHECK_FAILS_WITH(parse(t), "64 lowercase hex");
    index_text(t, sizeof t, S1, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
               "100", S2, "250");
    CHECK_FAILS_WITH(parse(t), "64 lowercase hex");
    index_text(t, sizeof t, S1, H1, "7", S2, "250");
    CHECK_FAILS_WITH(parse(t), "size must be an integer of at least 8");
    index_text(t, sizeof t, S1, H1, "\"100\"", S2, "250");
    CHECK_FAILS_WITH(parse(t), "size must be an integer");
    index_text(t, sizeof t, S1, H1, "4611686018427387900", S2, "250");
    CHECK_FAILS_WITH(parse(t), "more than 2^62");
    index_text(t, sizeof t, S1, H1, "100", "model.safetensors", "250");
    CHECK_FAILS_WITH(parse(t), "weight_map sends 'b.weight' to another file");
    index_text(t, sizeof t, S1, H1, "100", "../../etc/passwd", "250");
    CHECK_FAILS_WITH(parse(t), "weight_map sends");
    index_text(t, sizeof t, S1, H1, "100", S1, "250");
    CHECK_FAILS_WITH(parse(t), "shard model-00002-of-00002.safetensors holds no tensor");
    index_text(t, sizeof t, S1, H1, "100", S2, "301");
    CHECK_FAILS_WITH(parse(t), "more than the 300 bytes of the shards");
    index_text(t, sizeof t, S1, H1, "100", S2, "-1");
    CHECK_FAILS_WITH(parse(t), "total_size must be an integer >= 0");
    /* Two shards named alike: JSON with a duplicate key. */
    index_text(t, sizeof t, S2, H1, "100", S2, "250");
    CHECK_FAILS_WITH(parse(t), "duplicate");
    CHECK_FAILS_WITH(parse("{\"metadata\": {\"total_size\": 1}, \"weight_map\": {}}"),
                     "metadata.fedlora_shards must be an object");
    CHECK_FAILS_WITH(parse("[1, 2]"), "a JSON object with a \"metadata\" object");
    CHECK_FAILS_WITH(parse("{\"metadata\": "), "not valid JSON");
    /* An empty weight_map, a tensor name past the bound. */
    snprintf(t, sizeof t,
             "{\"metadata\": {\"total_size\": 0, \"fedlora_shards\": "
             "{\"model-00001-of-00001.safetensors\": {\"sha256\": \"%s\", \"size\": 8}}}, "
             "\"weight_map\": {}}",
             H1);
    CHECK_FAILS_WITH(parse(t), "\"weight_map\" must be an object of 1 to");
    char *big = malloc(VERSION_TENSOR_NAME_MAX + 512);
    if (big) {
        int w = snprintf(big, 512,
                         "{\"metadata\": {\"total_size\": 0, \"fedlora_shards\": "
                         "{\"model-00001-of-00001.safetensors\": {\"sha256\": \"%s\", \"size\": "
                         "8}}}, \"weight_map\": {\"",
                         H1);
        memset(big + w, 'x', VERSION_TENSOR_NAME_MAX + 1);
        snprintf(big + w + VERSION_TENSOR_NAME_MAX + 1, 128,
                 "\": \"model-00001-of-00001.safetensors\"}}");
        CHECK_FAILS_WITH(parse(big), "a tensor name of 1025 bytes");
        free(big);
    }
    /* Bytes past the bound are refused before they are parsed. */
    size_t n = VERSION_INDEX_MAX + 1;
    char *huge = malloc(n);
    if (huge) {
        memset(huge, ' ', n);
        version_index *y = NULL;
        CHECK_FAILS_WITH(version_index_parse(&y, huge, n, "idx"), "more than the");
        free(huge);
    }
}

/* ---- the shard-size knob ------------------------------------------------------------ */

static void shard_knob(void) {
    char dir[TS_PATH], path[TS_PATH];
    model *m = ts_preset_model("llama", 9);
    checkpoint_save_options o = {.dtype = "float32"};
    ts_path(dir, "knob");
    setenv("FEDLORA_SHARD_BYTES", "150000", 1);
    if (m) CHECK_OK(checkpoint_write(m, dir, &o));
    CHECK(version_is_sharded(dir) == 1);
    CHECK(fio_exists(ts_in(path, dir, "model-00001-of-00004.safetensors")));
    /* The caller's own limit wins. */
    o.max_shard_bytes = 1000000000;
    if (m) CHECK_OK(checkpoint_write(m, dir, &o));
    CHECK(version_is_sharded(dir) == 0);
    o.max_shard_bytes = 0;
    static const char *const bad[] = {"0", "-5", "12kb", "", "6000000000", "+3", " 7"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ts_remove_tree(dir);
        setenv("FEDLORA_SHARD_BYTES", bad[i], 1);
        if (!bad[i][0]) {
            /* Set but empty: as unset. */
            if (m) CHECK_OK(checkpoint_write(m, dir, &o));
            CHECK(version_is_sharded(dir) == 0);
        } else if (m) {
            CHECK_FAILS_WITH(checkpoint_write(m, dir, &o), "FEDLORA_SHARD_BYTES='");
            CHECK(!fio_exists(ts_in(path, dir, "config.json")));
        }
    }
    unsetenv("FEDLORA_SHARD_BYTES");
    if (m) CHECK_OK(checkpoint_write(m, dir, &o));
    CHECK(version_is_sharded(dir) == 0);
    model_free(m);
}

int main(void) {
    sealed_shards();
    single_file();
    reader_rules();
    shard_knob();
    return check_finish();
}
