/* version — a model version's identity over one file or its shards
 * (version.h). */
#include "wire/version.h"

#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"
#include "wire/crypto.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SIZE_MIN 8                    /* a safetensors file starts with its 8-byte header length */
#define BYTES_MAX ((uint64_t)1 << 62) /* the shards' sizes summed */

/* An untrusted string as it may appear in a message: at most 40 bytes,
 * anything outside printable ASCII as '?', so a refusal cannot forge a log
 * line. */
static const char *shown(const char *s, char out[48]) {
    size_t i = 0;
    for (; s[i] && i < 40; i++) out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

/* model-NNNNN-of-MMMMM.safetensors exactly, 1 <= NNNNN <= MMMMM: 0 and the
 * two numbers, else -1. */
static int shard_number(const char *s, int *k, int *of) {
    if (strlen(s) != VERSION_SHARD_NAME_LEN || strncmp(s, "model-", 6) != 0 ||
        strncmp(s + 11, "-of-", 4) != 0 || strcmp(s + 20, ".safetensors") != 0)
        return -1;
    int a = 0, b = 0;
    for (int i = 0; i < 5; i++) {
        char c = s[6 + i], d = s[15 + i];
        if (c < '0' || c > '9' || d < '0' || d > '9') return -1;
        a = 10 * a + (c - '0');
        b = 10 * b + (d - '0');
    }
    if (a < 1 || a > b) return -1;
    *k = a;
    *of = b;
    return 0;
}

static void shard_name(int k, int of, char out[VERSION_SHARD_NAME_LEN + 1]) {
    /* k, of <= VERSION_SHARDS_MAX: five digits each (the modulo says so to
     * the compiler) */
    snprintf(out, VERSION_SHARD_NAME_LEN + 1, "model-%05u-of-%05u.safetensors",
             (unsigned)k % 100000u, (unsigned)of % 100000u);
}

void version_index_free(version_index *x) {
    if (!x) return;
    free(x->shards);
    free(x);
}

/* metadata.fedlora_shards into x (n_shards, shards, bytes). */
static int parse_shards(version_index *x, json_t *shards, const char *where) {
    char s[48];
    size_t n = json_object_size(shards);
    if (!json_is_object(shards) || n < 1 || n > VERSION_SHARDS_MAX)
        return err_set("%s: metadata.fedlora_shards must be an object of 1 to %d shards (the "
                       "index of a sealed fedlora version lists every shard's SHA-256)",
                       where, VERSION_SHARDS_MAX);
    x->n_shards = (int)n;
    x->shards = calloc(n, sizeof *x->shards);
    if (!x->shards) return err_set("%s: out of memory for %zu shards", where, n);
    const char *name;
    json_t *v;
    json_object_foreach(shards, name, v) {
        int k, of;
        if (shard_number(name, &k, &of) != 0 || of != x->n_shards)
            return err_set("%s: metadata.fedlora_shards: '%s' is not a file name "
                           "model-NNNNN-of-%05d.safetensors of this index's %d shards",
                           where, shown(name, s), x->n_shards, x->n_shards);
        version_shard *sh = &x->shards[k - 1];
        json_t *hash = json_object_get(v, "sha256"), *size = json_object_get(v, "size");
        if (!json_is_object(v) || !json_is_string(hash) ||
            hex_decode(json_string_value(hash), sh->hash, VERSION_HASH_LEN) != 0)
            return err_set("%s: metadata.fedlora_shards.%s must be {\"sha256\": <64 lowercase hex "
                           "digits>, \"size\": <bytes>}",
                           where, name);
        if (!json_is_integer(size) || json_integer_value(size) < SIZE_MIN)
            return err_set("%s: metadata.fedlora_shards.%s.size must be an integer of at least %d "
                           "bytes",
                           where, name, SIZE_MIN);
        sh->size = (uint64_t)json_integer_value(size);
        if (sh->size > BYTES_MAX - x->bytes)
            return err_set("%s: the shards' sizes add up to more than 2^62 bytes", where);
        x->bytes += sh->size;
        memcpy(sh->name, name, VERSION_SHARD_NAME_LEN + 1);
    }
    return 0;
}

/* weight_map: every tensor in one of x's shards, every shard used. */
static int parse_weight_map(version_index *x, json_t *map, const char *where) {
    char s[48];
    size_t n = json_object_size(map);
    if (!json_is_object(map) || n < 1 || n > VERSION_TENSORS_MAX)
        return err_set("%s: \"weight_map\" must be an object of 1 to %d tensors (tensor name -> "
                       "shard file)",
                       where, VERSION_TENSORS_MAX);
    x->n_tensors = (int64_t)n;
    char *used = calloc((size_t)x->n_shards, 1);
    if (!used) return err_set("%s: out of memory", where);
    int rc = 0;
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        int k, of;
        size_t len = strlen(name);
        if (len < 1 || len > VERSION_TENSOR_NAME_MAX) {
            rc = err_set("%s: weight_map: a tensor name of %zu bytes (1 to %d allowed)", where, len,
                         VERSION_TENSOR_NAME_MAX);
            break;
        }
        if (!json_is_string(v) || shard_number(json_string_value(v), &k, &of) != 0 ||
            of != x->n_shards) {
            rc = err_set("%s: weight_map sends '%s' to %s, not to one of the %d shards "
                         "metadata.fedlora_shards lists",
                         where, shown(name, s),
                         json_is_string(v) ? "another file" : "something that is not a file name",
                         x->n_shards);
            break;
        }
        used[k - 1] = 1;
    }
    for (int k = 0; rc == 0 && k < x->n_shards; k++)
        if (!used[k])
            rc = err_set("%s: shard %s holds no tensor of weight_map", where, x->shards[k].name);
    free(used);
    return rc;
}

int version_index_parse(version_index **out, const void *buf, size_t len, const char *where) {
    *out = NULL;
    if (len > VERSION_INDEX_MAX)
        return err_set("%s: %zu bytes, more than the %zu an index may have", where, len,
                       VERSION_INDEX_MAX);
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return err_set("%s: not valid JSON: %s (line %d, column %d)", where, je.text, je.line,
                       je.column);
    version_index *x = calloc(1, sizeof *x);
    int rc = -1;
    json_t *meta = json_object_get(root, "metadata");
    json_t *total = json_object_get(meta, "total_size");
    if (!x) {
        err_set("%s: out of memory", where);
    } else if (!json_is_object(root) || !json_is_object(meta)) {
        err_set("%s: an index is a JSON object with a \"metadata\" object", where);
    } else if (!json_is_integer(total) || json_integer_value(total) < 0) {
        err_set("%s: metadata.total_size must be an integer >= 0 (bytes of tensor data)", where);
    } else if (parse_shards(x, json_object_get(meta, "fedlora_shards"), where) == 0 &&
               parse_weight_map(x, json_object_get(root, "weight_map"), where) == 0) {
        x->total_size = (uint64_t)json_integer_value(total);
        if (x->total_size > x->bytes)
            err_set("%s: metadata.total_size is %llu bytes of tensors, more than the %llu bytes "
                    "of the shards",
                    where, (unsigned long long)x->total_size, (unsigned long long)x->bytes);
        else
            rc = 0;
    }
    json_decref(root);
    if (rc != 0) {
        version_index_free(x);
        return -1;
    }
    *out = x;
    return 0;
}

int version_index_read(version_index **out, const char *path, uint8_t hash[VERSION_HASH_LEN]) {
    char *text;
    size_t len;
    *out = NULL;
    if (fio_read_all(path, VERSION_INDEX_MAX, &text, &len) != 0) return -1;
    int rc = hash && crypto_sha256(text, len, hash) != 0
                 ? -1
                 : version_index_parse(out, text, len, path);
    free(text);
    return rc;
}

int version_is_sharded(const char *dir) {
    char single[4096], index[4096];
    if (fio_join(single, sizeof single, dir, VERSION_MODEL_FILE) != 0 ||
        fio_join(index, sizeof index, dir, VERSION_INDEX_FILE) != 0)
        return -1;
    int s = fio_exists(single), i = fio_exists(index);
    if (s && i)
        return err_set("%s holds both %s and %s: a version is one or the other (transformers "
                       "would load the single file)",
                       dir, VERSION_MODEL_FILE, VERSION_INDEX_FILE);
    if (!s && !i)
        return err_set("%s holds no model weights (neither %s nor %s)", dir, VERSION_MODEL_FILE,
                       VERSION_INDEX_FILE);
    return i;
}

/* The shard count of an unsealed index's weight_map (checkpoint_write's
 * file names); every shard must hold a tensor. */
static int unsealed_shards(json_t *map, const char *where) {
    int of = 0;
    const char *name;
    json_t *v;
    if (!json_is_object(map) || json_object_size(map) == 0)
        return err_set("%s: no \"weight_map\" object", where);
    char *used = NULL, s[48];
    json_object_foreach(map, name, v) {
        int k, o;
        if (!json_is_string(v) || shard_number(json_string_value(v), &k, &o) != 0 ||
            (of && o != of)) {
            free(used);
            return err_set("%s: weight_map sends '%s' to a file that is not a shard of this "
                           "layout",
                           where, shown(name, s));
        }
        if (!used && !(used = calloc((size_t)(of = o), 1))) return err_set("out of memory");
        used[k - 1] = 1;
    }
    for (int k = 0; k < of; k++)
        if (!used[k]) {
            free(used);
            return err_set("%s: shard %d of %d holds no tensor", where, k + 1, of);
        }
    free(used);
    return of;
}

/* Hashes dir's shards into metadata.fedlora_shards of root (an index as
 * checkpoint_write wrote it). */
static int add_shard_hashes(json_t *root, const char *dir, const char *where) {
    json_t *meta = json_object_get(root, "metadata");
    if (!json_is_object(meta)) return err_set("%s: no \"metadata\" object", where);
    int of = unsealed_shards(json_object_get(root, "weight_map"), where);
    if (of < 0) return -1;
    json_t *shards = json_object();
    if (!shards || json_object_set_new(meta, "fedlora_shards", shards) != 0)
        return err_set("out of memory sealing %s", where);
    for (int k = 1; k <= of; k++) {
        char name[VERSION_SHARD_NAME_LEN + 1], path[4096], hex[2 * VERSION_HASH_LEN + 1];
        uint8_t h[VERSION_HASH_LEN];
        uint64_t size;
        shard_name(k, of, name);
        if (fio_join(path, sizeof path, dir, name) != 0 || crypto_sha256_file(path, h, &size) != 0)
            return err_context("sealing %s", where);
        hex_encode(h, VERSION_HASH_LEN, hex);
        json_t *e = json_pack("{s:s, s:I}", "sha256", hex, "size", (json_int_t)size);
        if (!e || json_object_set_new(shards, name, e) != 0)
            return err_set("out of memory sealing %s", where);
    }
    return 0;
}

int version_seal(const char *dir, uint8_t hash[VERSION_HASH_LEN]) {
    char path[4096];
    int sharded = version_is_sharded(dir);
    if (sharded < 0) return err_context("sealing a version");
    if (fio_join(path, sizeof path, dir, sharded ? VERSION_INDEX_FILE : VERSION_MODEL_FILE) != 0)
        return -1;
    if (!sharded)
        return crypto_sha256_file(path, hash, NULL) == 0 ? 0 : err_context("sealing %s", dir);
    char *text;
    size_t len;
    if (fio_read_all(path, VERSION_INDEX_MAX, &text, &len) != 0) return -1;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root)
        return err_set("%s: not valid JSON: %s (line %d, column %d)", path, je.text, je.line,
                       je.column);
    int rc = -1;
    char *out = NULL;
    version_index *x = NULL;
    if (add_shard_hashes(root, dir, path) != 0) goto done;
    /* As save_pretrained writes an index: json.dumps(indent=2,
     * sort_keys=True) and a newline. */
    out = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    char *line = out ? realloc(out, strlen(out) + 2) : NULL;
    if (!line) {
        err_set("out of memory sealing %s", path);
        goto done;
    }
    out = line;
    len = strlen(out);
    out[len++] = '\n';
    out[len] = '\0';
    /* What is sealed must read back: the reader is the one the nodes use. */
    if (version_index_parse(&x, out, len, path) != 0 ||
        fio_write_atomic(path, out, len, 0644) != 0 || crypto_sha256(out, len, hash) != 0)
        goto done;
    rc = 0;
done:
    version_index_free(x);
    free(out);
    json_decref(root);
    return rc;
}

int version_verify(const char *dir, const uint8_t want[VERSION_HASH_LEN]) {
    char path[4096], got_hex[2 * VERSION_HASH_LEN + 1], want_hex[2 * VERSION_HASH_LEN + 1];
    uint8_t got[VERSION_HASH_LEN];
    hex_encode(want, VERSION_HASH_LEN, want_hex);
    int sharded = version_is_sharded(dir);
    if (sharded < 0 ||
        fio_join(path, sizeof path, dir, sharded ? VERSION_INDEX_FILE : VERSION_MODEL_FILE) != 0)
        return err_context("checking version %.16s...", want_hex);
    /* The hash first: an index that is not the version's is refused as
     * such, whatever it holds. */
    char *text = NULL;
    size_t len = 0;
    if (sharded ? fio_read_all(path, VERSION_INDEX_MAX, &text, &len) != 0 ||
                      crypto_sha256(text, len, got) != 0
                : crypto_sha256_file(path, got, NULL) != 0) {
        free(text);
        return err_context("checking version %.16s...", want_hex);
    }
    int rc = 0;
    version_index *x = NULL;
    if (memcmp(got, want, VERSION_HASH_LEN) != 0) {
        hex_encode(got, VERSION_HASH_LEN, got_hex);
        rc = err_set("%s hashes to %.16s..., not to version %.16s...: the file was changed", path,
                     got_hex, want_hex);
    } else if (sharded && version_index_parse(&x, text, len, path) != 0) {
        rc = -1;
    }
    free(text);
    for (int k = 0; rc == 0 && x && k < x->n_shards; k++) {
        const version_shard *s = &x->shards[k];
        uint64_t size;
        if (fio_join(path, sizeof path, dir, s->name) != 0 ||
            crypto_sha256_file(path, got, &size) != 0) {
            rc = err_context("checking version %.16s...", want_hex);
        } else if (size != s->size || memcmp(got, s->hash, VERSION_HASH_LEN) != 0) {
            hex_encode(got, VERSION_HASH_LEN, got_hex);
            rc = err_set("%s: %llu bytes hashing to %.16s..., but version %.16s...'s index lists "
                         "%llu bytes of another SHA-256: the shard was changed",
                         path, (unsigned long long)size, got_hex, want_hex,
                         (unsigned long long)s->size);
        }
    }
    version_index_free(x);
    return rc;
}
