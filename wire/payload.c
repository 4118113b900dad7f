/* payload — the DELTA map, encoded with msgpack-c, decoded with mp.h.
 *
 * The decoder follows msg.c's two steps: read the map once (string keys of
 * at most MSG_KEY_MAX printable bytes, no duplicates), then fetch each field
 * by key with a getter that states its rule in the error. The "tensors" blob
 * is a TENSORS payload and goes through msg_tensors_decode, bounded by its
 * own length. */
#include "wire/payload.h"

#include "util/err.h"
#include "wire/crypto.h"

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIELDS_MAX MSG_FIELDS_MAX
#define LOSS_MAX 1e6 /* a cross-entropy above this is garbage, not a metric */

static const char A_SUFFIX[] = ".lora_A.weight";
static const char B_SUFFIX[] = ".lora_B.weight";
static const char PREFIX[] = "base_model.model.";

/* ==== decoding ============================================================ */

struct field {
    const char *key;
    uint32_t klen;
    struct mp_reader val;
};

struct fields {
    uint32_t n;
    struct field f[FIELDS_MAX];
};

static int fields_read(struct mp_reader *r, struct fields *fs) {
    fs->n = 0;
    enum mp_type t = mp_peek(r);
    if (t != MP_MAP) return err_set("DELTA must be a map, got %s", mp_type_name(t));
    uint32_t n;
    if (mp_read_map(r, &n) < 0) return err_context("DELTA");
    if (n > FIELDS_MAX)
        return err_set("DELTA: map has %u fields, over the limit of %d", n, FIELDS_MAX);
    for (uint32_t i = 0; i < n; i++) {
        struct field *f = &fs->f[i];
        t = mp_peek(r);
        if (t != MP_STR)
            return err_set("DELTA: key %u must be a string, got %s", i, mp_type_name(t));
        if (mp_read_str(r, &f->key, &f->klen) < 0) return err_context("DELTA: key %u", i);
        if (f->klen == 0 || f->klen > MSG_KEY_MAX)
            return err_set("DELTA: key %u must be 1 to %d bytes", i, MSG_KEY_MAX);
        for (uint32_t k = 0; k < f->klen; k++)
            if ((unsigned char)f->key[k] < 0x20 || (unsigned char)f->key[k] >= 0x7f)
                return err_set("DELTA: key %u must be printable ASCII", i);
        for (uint32_t j = 0; j < i; j++)
            if (fs->f[j].klen == f->klen && memcmp(fs->f[j].key, f->key, f->klen) == 0)
                return err_set("DELTA: duplicate key '%.*s'", (int)f->klen, f->key);
        f->val = *r;
        if (mp_skip(r) < 0) return err_context("DELTA: field '%.*s'", (int)f->klen, f->key);
        fs->n++;
    }
    return 0;
}

static int need(const struct fields *fs, const char *key, struct mp_reader *r) {
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < fs->n; i++)
        if (fs->f[i].klen == kl && memcmp(fs->f[i].key, key, kl) == 0) {
            *r = fs->f[i].val;
            return 0;
        }
    return err_set("DELTA: missing required field '%s'", key);
}

/* 1 when an optional field is there. */
static int has(const struct fields *fs, const char *key) {
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < fs->n; i++)
        if (fs->f[i].klen == kl && memcmp(fs->f[i].key, key, kl) == 0) return 1;
    return 0;
}

static int get_uint(const struct fields *fs, const char *key, uint64_t min, uint64_t max,
                    uint64_t *v) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    enum mp_type t = mp_peek(&r);
    if (t != MP_INT || mp_read_uint(&r, v) < 0 || *v < min || *v > max)
        return err_set("DELTA: field '%s' must be an integer in [%llu, %llu]", key,
                       (unsigned long long)min, (unsigned long long)max);
    return 0;
}

/* A finite number in [lo, hi] (lo_open: in (lo, hi]); ints accepted. */
static int get_num(const struct fields *fs, const char *key, double lo, bool lo_open, double hi,
                   double *v) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    enum mp_type t = mp_peek(&r);
    if ((t != MP_FLOAT && t != MP_INT) || mp_read_double(&r, v) < 0 || !isfinite(*v) ||
        (lo_open ? !(*v > lo) : !(*v >= lo)) || *v > hi)
        return err_set("DELTA: field '%s' must be a finite number in %c%g, %g]", key,
                       lo_open ? '(' : '[', lo, hi);
    return 0;
}

static int get_bool(const struct fields *fs, const char *key, bool *v) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    if (mp_peek(&r) != MP_BOOL) return err_set("DELTA: field '%s' must be a boolean", key);
    return mp_read_bool(&r, v);
}

static int get_bin(const struct fields *fs, const char *key, const uint8_t **b, uint32_t *len) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    enum mp_type t = mp_peek(&r);
    if (t != MP_BIN || mp_read_bin(&r, b, len) < 0)
        return err_set("DELTA: field '%s' must be a blob, got %s", key, mp_type_name(t));
    return 0;
}

static int get_str(const struct fields *fs, const char *key, const char *want, char *out) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    const char *s;
    uint32_t n;
    if (mp_peek(&r) != MP_STR || mp_read_str(&r, &s, &n) < 0 || strlen(want) != n ||
        memcmp(s, want, n) != 0)
        return err_set("DELTA: field '%s' must be the string \"%s\"", key, want);
    if (out) memcpy(out, s, n);
    return 0;
}

/* Module names: the identifier rule of msg.c ([A-Za-z0-9_] first, then also
 * '.' and '-'), since they reach logs and configs. */
static bool ident_ok(const char *s, uint32_t n) {
    if (n == 0 || n > MSG_TARGET_MAX) return false;
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || (i > 0 && (c == '.' || c == '-'));
        if (!ok) return false;
    }
    return true;
}

static int get_targets(const struct fields *fs, struct payload_delta *d) {
    struct mp_reader r;
    if (need(fs, "targets", &r) < 0) return -1;
    uint32_t n;
    if (mp_peek(&r) != MP_ARRAY || mp_read_array(&r, &n) < 0 || n < 1 || n > MSG_TARGETS_MAX)
        return err_set("DELTA: field 'targets' must be an array of 1 to %d strings",
                       MSG_TARGETS_MAX);
    for (uint32_t i = 0; i < n; i++) {
        const char *s;
        uint32_t len;
        if (mp_peek(&r) != MP_STR || mp_read_str(&r, &s, &len) < 0 || !ident_ok(s, len))
            return err_set("DELTA: field 'targets[%u]' must be a string of 1 to %d bytes of "
                           "[A-Za-z0-9._-] not starting with '.' or '-'",
                           i, MSG_TARGET_MAX);
        memcpy(d->targets[i], s, len);
        d->targets[i][len] = '\0';
    }
    d->ntargets = n;
    return 0;
}

int payload_consortium_id(const char *name, uint8_t id[32]) {
    static const char label[] = "fedlora-consortium-v1";
    size_t n = strlen(name);
    if (n == 0 || n > PAYLOAD_CONSORTIUM_NAME_MAX)
        return err_set("consortium name must be 1 to %d bytes, got %zu",
                       PAYLOAD_CONSORTIUM_NAME_MAX, n);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || (unsigned char)name[i] >= 0x7f)
            return err_set("consortium name must be printable ASCII, got byte 0x%02x at %zu",
                           (unsigned char)name[i], i);
    uint8_t buf[sizeof label - 1 + PAYLOAD_CONSORTIUM_NAME_MAX];
    memcpy(buf, label, sizeof label - 1);
    memcpy(buf + sizeof label - 1, name, n);
    return crypto_sha256(buf, sizeof label - 1 + n, id);
}

int payload_tensor_path(const char *name, char *path, size_t cap, int *is_b) {
    size_t n = strlen(name), pl = sizeof PREFIX - 1, sl = sizeof A_SUFFIX - 1;
    if (n <= pl + sl || memcmp(name, PREFIX, pl) != 0) return -1;
    const char *suf = name + n - sl;
    if (strcmp(suf, A_SUFFIX) == 0)
        *is_b = 0;
    else if (strcmp(suf, B_SUFFIX) == 0)
        *is_b = 1;
    else
        return -1;
    size_t len = n - pl - sl;
    if (len + 1 > cap) return -1;
    memcpy(path, name + pl, len);
    path[len] = '\0';
    return 0;
}

/* Tensors arrive sorted by name (msg_tensors_decode enforces it), and
 * "X.lora_A.weight" < "X.lora_B.weight" with nothing between them for the
 * same X (the names differ only in that one byte), so pairs are adjacent. */
static int check_tensors(const struct payload_delta *d) {
    if (d->ntensors % 2 != 0)
        return err_set("DELTA: 'tensors' holds %zu tensors; lora_A/lora_B come in pairs",
                       d->ntensors);
    for (size_t i = 0; i < d->ntensors; i += 2) {
        const struct msg_tensor *a = &d->tensors[i], *b = &d->tensors[i + 1];
        char pa[MSG_TENSOR_NAME_MAX + 1], pb[MSG_TENSOR_NAME_MAX + 1];
        int a_is_b, b_is_b;
        if (payload_tensor_path(a->name, pa, sizeof pa, &a_is_b) < 0 || a_is_b ||
            payload_tensor_path(b->name, pb, sizeof pb, &b_is_b) < 0 || !b_is_b ||
            strcmp(pa, pb) != 0)
            return err_set("DELTA: tensors must be pairs named base_model.model.<path>.lora_A."
                           "weight and .lora_B.weight, got '%s' then '%s'",
                           a->name, b->name);
        for (int k = 0; k < 2; k++) {
            const struct msg_tensor *t = k ? b : a;
            if (t->dtype != MSG_F32 || t->ndim != 2 || t->shape[0] == 0 || t->shape[1] == 0)
                return err_set("DELTA: tensor '%s' must be a non-empty 2-D F32 tensor", t->name);
        }
        if (a->shape[0] != d->rank || b->shape[1] != d->rank)
            return err_set("DELTA: module '%s' has lora_A (%llu, %llu) and lora_B (%llu, %llu), "
                           "but rank is %u",
                           pa, (unsigned long long)a->shape[0], (unsigned long long)a->shape[1],
                           (unsigned long long)b->shape[0], (unsigned long long)b->shape[1],
                           d->rank);
    }
    return 0;
}

int payload_delta_decode(const void *buf, size_t len, uint64_t max_len, struct payload_delta *d) {
    memset(d, 0, sizeof *d);
    if (max_len == 0 || max_len > PAYLOAD_DELTA_MAX) max_len = PAYLOAD_DELTA_MAX;
    if (len > max_len)
        return err_set("DELTA: %zu bytes, over the limit of %llu", len,
                       (unsigned long long)max_len);
    const struct mp_limits lim = {
        .max_total = max_len,
        .max_depth = 2, /* the map, and "targets" inside it */
        .max_items = FIELDS_MAX,
        .max_str = 1024,
        .max_bin = UINT32_MAX,
    };
    if (mp_validate(buf, len, &lim) < 0) return err_context("DELTA");
    struct mp_reader r;
    mp_init(&r, buf, len);
    struct fields fs;
    if (fields_read(&r, &fs) < 0) return -1;
    uint64_t v, rank;
    const uint8_t *base, *blob;
    uint32_t base_len, blob_len;
    if (get_uint(&fs, "v", PAYLOAD_VERSION, PAYLOAD_VERSION, &v) < 0 ||
        get_str(&fs, "t", "DELTA", NULL) < 0 ||
        get_uint(&fs, "round", 0, UINT64_MAX, &d->round) < 0 ||
        get_bin(&fs, "base", &base, &base_len) < 0)
        return -1;
    if (base_len != MSG_HASH_LEN)
        return err_set("DELTA: field 'base' must be a blob of exactly %d bytes, got %u",
                       MSG_HASH_LEN, base_len);
    memcpy(d->base, base, MSG_HASH_LEN);
    if (get_uint(&fs, "tokens", 1, PAYLOAD_COUNT_MAX, &d->tokens) < 0 ||
        get_uint(&fs, "examples", 1, PAYLOAD_COUNT_MAX, &d->examples) < 0 ||
        get_num(&fs, "loss_before", 0, false, LOSS_MAX, &d->loss_before) < 0 ||
        get_num(&fs, "loss_after", 0, false, LOSS_MAX, &d->loss_after) < 0 ||
        get_uint(&fs, "rank", 1, 4096, &rank) < 0 ||
        get_num(&fs, "alpha", 0, true, 1e6, &d->alpha) < 0 ||
        get_bool(&fs, "rslora", &d->rslora) < 0 || get_targets(&fs, d) < 0 ||
        get_bin(&fs, "tensors", &blob, &blob_len) < 0)
        return -1;
    d->rank = (uint32_t)rank;
    if ((d->has_start = has(&fs, "start"))) {
        const uint8_t *start;
        uint32_t start_len;
        if (get_bin(&fs, "start", &start, &start_len) < 0) return -1;
        if (start_len != MSG_HASH_LEN)
            return err_set("DELTA: field 'start' must be a blob of exactly %d bytes, got %u",
                           MSG_HASH_LEN, start_len);
        memcpy(d->start, start, MSG_HASH_LEN);
    }
    if (msg_tensors_decode(blob, blob_len, NULL, &d->tensors, &d->ntensors) < 0)
        return err_context("DELTA: field 'tensors'");
    if (check_tensors(d) < 0) {
        payload_delta_free(d);
        return -1;
    }
    return 0;
}

void payload_delta_free(struct payload_delta *d) {
    free(d->tensors);
    d->tensors = NULL;
    d->ntensors = 0;
}

/* ==== encoding ============================================================ */

static int pk_str(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

int payload_delta_encode(const struct payload_delta *d, uint8_t **out, size_t *len) {
    if (d->ntargets < 1 || d->ntargets > MSG_TARGETS_MAX)
        return err_set("encoding DELTA: %u targets, must be 1 to %d", d->ntargets, MSG_TARGETS_MAX);
    uint8_t *blob;
    size_t blob_len;
    if (msg_tensors_encode(d->tensors, d->ntensors, &blob, &blob_len) < 0)
        return err_context("encoding DELTA");
    if (blob_len > UINT32_MAX - 4096) {
        free(blob);
        return err_set("encoding DELTA: %zu bytes of tensors, over the 4 GiB limit", blob_len);
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    sb.alloc = blob_len + 4096; /* fields take well under 4 KiB */
    sb.data = malloc(sb.alloc);
    if (!sb.data) {
        free(blob);
        return err_set("encoding DELTA: out of memory for %zu bytes", sb.alloc);
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int bad = msgpack_pack_map(&pk, 13 + d->has_start);
    bad |= pk_str(&pk, "v") || msgpack_pack_uint64(&pk, PAYLOAD_VERSION);
    bad |= pk_str(&pk, "t") || pk_str(&pk, "DELTA");
    bad |= pk_str(&pk, "round") || msgpack_pack_uint64(&pk, d->round);
    bad |= pk_str(&pk, "base") || msgpack_pack_bin(&pk, MSG_HASH_LEN) ||
           msgpack_pack_bin_body(&pk, d->base, MSG_HASH_LEN);
    bad |= pk_str(&pk, "tokens") || msgpack_pack_uint64(&pk, d->tokens);
    bad |= pk_str(&pk, "examples") || msgpack_pack_uint64(&pk, d->examples);
    bad |= pk_str(&pk, "loss_before") || msgpack_pack_double(&pk, d->loss_before);
    bad |= pk_str(&pk, "loss_after") || msgpack_pack_double(&pk, d->loss_after);
    bad |= pk_str(&pk, "rank") || msgpack_pack_uint64(&pk, d->rank);
    bad |= pk_str(&pk, "alpha") || msgpack_pack_double(&pk, d->alpha);
    bad |= pk_str(&pk, "rslora") || (d->rslora ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    bad |= pk_str(&pk, "targets") || msgpack_pack_array(&pk, d->ntargets);
    for (uint32_t i = 0; i < d->ntargets; i++) {
        size_t n = strnlen(d->targets[i], sizeof d->targets[i]);
        bad |= msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, d->targets[i], n);
    }
    bad |= pk_str(&pk, "tensors") || msgpack_pack_bin(&pk, blob_len) ||
           msgpack_pack_bin_body(&pk, blob, blob_len);
    if (d->has_start)
        bad |= pk_str(&pk, "start") || msgpack_pack_bin(&pk, MSG_HASH_LEN) ||
               msgpack_pack_bin_body(&pk, d->start, MSG_HASH_LEN);
    free(blob);
    if (bad) {
        msgpack_sbuffer_destroy(&sb);
        return err_set("encoding DELTA: out of memory");
    }
    /* The decoder states the rules; refuse to send what it would refuse. */
    struct payload_delta check;
    if (payload_delta_decode(sb.data, sb.size, 0, &check) < 0) {
        msgpack_sbuffer_destroy(&sb);
        return err_context("refusing to encode an invalid DELTA");
    }
    payload_delta_free(&check);
    *len = sb.size;
    *out = (uint8_t *)msgpack_sbuffer_release(&sb);
    return 0;
}
