/* msg — encode with msgpack-c's packer, decode with the bounded reader (mp.h).
 *
 * Decoding a map happens in two steps: fields_read() walks the map once,
 * refusing non-string, over-long or duplicate keys (two parsers that keep the
 * first or the last duplicate would see different messages), and remembers
 * where each value starts; then each message's decoder asks for its fields
 * by key with a typed getter that states the rule it enforces in its error
 * message. Keys nobody asks for are ignored: that is how a newer peer adds a
 * field without breaking older ones.
 *
 * Why one file of over 900 lines: the messages and the TENSORS payload are
 * read by the same field reader and typed getters and written by the same
 * packer helpers, whose rules (bounds, canonical forms, error wording) must
 * not drift apart; split, those helpers would have to become an interface
 * of their own for two callers. */
#include "wire/msg.h"

#include "util/err.h"

#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct mp_limits MSG_LIMITS = {
    .max_total = MSG_FRAME_MAX,
    .max_depth = MSG_DEPTH_MAX,
    .max_items = MSG_FIELDS_MAX,
    .max_str = 1024, /* above every schema string limit, so unknown fields pass */
    .max_bin = MSG_CHUNK_MAX,
};

const struct mp_limits MSG_TENSORS_LIMITS = {
    .max_total = MSG_SUBMIT_MAX,
    .max_depth = 3, /* array of tensors → tensor map → shape array */
    .max_items = MSG_TENSORS_MAX,
    .max_str = MSG_TENSOR_NAME_MAX,
    .max_bin = UINT32_MAX,
};

static const char *const type_names[] = {
    [MSG_HELLO] = "HELLO",
    [MSG_ROUND] = "ROUND",
    [MSG_GET_MODEL] = "GET_MODEL",
    [MSG_MODEL_CHUNK] = "MODEL_CHUNK",
    [MSG_SUBMIT_BEGIN] = "SUBMIT_BEGIN",
    [MSG_SUBMIT_CHUNK] = "SUBMIT_CHUNK",
    [MSG_SUBMIT_END] = "SUBMIT_END",
    [MSG_RECEIPT] = "RECEIPT",
    [MSG_ERROR] = "ERROR",
    [MSG_ACK] = "ACK",
    [MSG_STATUS] = "STATUS",
    [MSG_STATUS_INFO] = "STATUS_INFO",
};
#define N_TYPES (sizeof type_names / sizeof type_names[0])

const char *msg_type_name(enum msg_type t) {
    if ((unsigned)t >= N_TYPES) return NULL;
    return type_names[t];
}

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [MSG_F32] = {"F32", 4}, [MSG_F16] = {"F16", 2}, [MSG_BF16] = {"BF16", 2},
    [MSG_F64] = {"F64", 8}, [MSG_I32] = {"I32", 4}, [MSG_I64] = {"I64", 8},
    [MSG_U8] = {"U8", 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

const char *msg_dtype_name(enum msg_dtype d) {
    if ((unsigned)d >= N_DTYPES) return NULL;
    return dtypes[d].name;
}

size_t msg_dtype_size(enum msg_dtype d) {
    if ((unsigned)d >= N_DTYPES) return 0;
    return dtypes[d].size;
}

/* ==== decoding ============================================================ */

struct field {
    const char *key;
    uint32_t klen;
    struct mp_reader val; /* positioned at the value */
};

struct fields {
    const char *msg;    /* "HELLO", "TENSORS[3]": first word of every error */
    const char *prefix; /* "train." inside a nested map */
    uint32_t n;
    struct field f[MSG_FIELDS_MAX];
};

/* Field labels for errors: "HELLO: field 'caps[2]'". */
struct label {
    char s[160];
};

static struct label label_of(const struct fields *fs, const char *key, long index) {
    struct label l;
    if (index < 0)
        snprintf(l.s, sizeof l.s, "%s: field '%s%s'", fs->msg, fs->prefix, key);
    else
        snprintf(l.s, sizeof l.s, "%s: field '%s%s[%ld]'", fs->msg, fs->prefix, key, index);
    return l;
}

/* "<label> must be <want>, got <got...>" */
static int bad(const struct label *l, const char *want, const char *got_fmt, ...) ERR_PRINTF(3, 4);
static int bad(const struct label *l, const char *want, const char *got_fmt, ...) {
    char got[128];
    va_list ap;
    va_start(ap, got_fmt);
    vsnprintf(got, sizeof got, got_fmt, ap);
    va_end(ap);
    return err_set("%s must be %s, got %s", l->s, want, got);
}

static bool printable(const char *s, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f) return false;
    return true;
}

static int fields_read(struct mp_reader *r, const char *msg, const char *prefix,
                       struct fields *fs) {
    fs->msg = msg;
    fs->prefix = prefix;
    fs->n = 0;
    enum mp_type t = mp_peek(r);
    char in[48] = ""; /* prefix "train." names the field "train" */
    if (*prefix) snprintf(in, sizeof in, " in '%.*s'", (int)strlen(prefix) - 1, prefix);
    if (t != MP_MAP && *prefix)
        return err_set("%s: field '%.*s' must be a map, got %s", msg, (int)strlen(prefix) - 1,
                       prefix, mp_type_name(t));
    if (t != MP_MAP) return err_set("%s must be a map, got %s", msg, mp_type_name(t));
    uint32_t n;
    if (mp_read_map(r, &n) < 0) return err_context("%s", msg);
    if (n > MSG_FIELDS_MAX)
        return err_set("%s: map has %u fields, over the limit of %d", msg, n, MSG_FIELDS_MAX);
    for (uint32_t i = 0; i < n; i++) {
        struct field *f = &fs->f[i];
        t = mp_peek(r);
        if (t != MP_STR)
            return err_set("%s: key %u%s must be a string, got %s", msg, i, in, mp_type_name(t));
        if (mp_read_str(r, &f->key, &f->klen) < 0) return err_context("%s: key %u%s", msg, i, in);
        if (f->klen == 0 || f->klen > MSG_KEY_MAX || !printable(f->key, f->klen))
            return err_set("%s: key %u%s must be 1 to %d printable ASCII bytes", msg, i, in,
                           MSG_KEY_MAX);
        for (uint32_t j = 0; j < i; j++)
            if (fs->f[j].klen == f->klen && memcmp(fs->f[j].key, f->key, f->klen) == 0)
                return err_set("%s: duplicate key '%s%.*s'", msg, prefix, (int)f->klen, f->key);
        f->val = *r;
        if (mp_skip(r) < 0)
            return err_context("%s: field '%s%.*s'", msg, prefix, (int)f->klen, f->key);
        fs->n++;
    }
    return 0;
}

/* The value of key, or NULL when absent. */
static const struct mp_reader *find(const struct fields *fs, const char *key) {
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < fs->n; i++)
        if (fs->f[i].klen == kl && memcmp(fs->f[i].key, key, kl) == 0) return &fs->f[i].val;
    return NULL;
}

static int need(const struct fields *fs, const char *key, struct mp_reader *r) {
    const struct mp_reader *v = find(fs, key);
    if (!v) return err_set("%s: missing required field '%s%s'", fs->msg, fs->prefix, key);
    *r = *v;
    return 0;
}

static int read_uint(struct mp_reader *r, const struct label *l, uint64_t min, uint64_t max,
                     uint64_t *v) {
    char want[96];
    if (min == 0 && max == UINT64_MAX)
        snprintf(want, sizeof want, "a non-negative integer");
    else
        snprintf(want, sizeof want, "an integer in [%llu, %llu]", (unsigned long long)min,
                 (unsigned long long)max);
    enum mp_type t = mp_peek(r);
    if (t != MP_INT) return bad(l, want, "%s", mp_type_name(t));
    if (mp_read_uint(r, v) < 0) return bad(l, want, "a negative integer");
    if (*v < min || *v > max) return bad(l, want, "%llu", (unsigned long long)*v);
    return 0;
}

static int get_u64(const struct fields *fs, const char *key, uint64_t min, uint64_t max,
                   uint64_t *v) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    struct label l = label_of(fs, key, -1);
    return read_uint(&r, &l, min, max, v);
}

static int get_u32(const struct fields *fs, const char *key, uint32_t min, uint32_t max,
                   uint32_t *v) {
    uint64_t w;
    if (get_u64(fs, key, min, max, &w) < 0) return -1;
    *v = (uint32_t)w;
    return 0;
}

/* A finite number in (0, max]; integers are accepted (Python packs 16.0 as
 * a float but 16 as an int). */
static int get_positive(const struct fields *fs, const char *key, double max, double *v) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    struct label l = label_of(fs, key, -1);
    char want[64];
    snprintf(want, sizeof want, "a finite number in (0, %g]", max);
    enum mp_type t = mp_peek(&r);
    if (t != MP_FLOAT && t != MP_INT) return bad(&l, want, "%s", mp_type_name(t));
    if (mp_read_double(&r, v) < 0) return err_context("%s", l.s);
    if (!isfinite(*v) || !(*v > 0) || *v > max) return bad(&l, want, "%g", *v);
    return 0;
}

static int get_bool(const struct fields *fs, const char *key, bool *v) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    struct label l = label_of(fs, key, -1);
    enum mp_type t = mp_peek(&r);
    if (t != MP_BOOL) return bad(&l, "a boolean", "%s", mp_type_name(t));
    return mp_read_bool(&r, v);
}

/* A blob of exactly n bytes (hashes, ids). */
static int get_fixed(const struct fields *fs, const char *key, uint8_t *out, uint32_t n) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    struct label l = label_of(fs, key, -1);
    char want[48];
    snprintf(want, sizeof want, "a blob of exactly %u bytes", n);
    enum mp_type t = mp_peek(&r);
    if (t != MP_BIN) return bad(&l, want, "%s", mp_type_name(t));
    const uint8_t *b;
    uint32_t len;
    if (mp_read_bin(&r, &b, &len) < 0) return err_context("%s", l.s);
    if (len != n) return bad(&l, want, "%u bytes", len);
    memcpy(out, b, n);
    return 0;
}

static int get_blob(const struct fields *fs, const char *key, uint32_t min, uint32_t max,
                    const uint8_t **out, uint32_t *len) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    struct label l = label_of(fs, key, -1);
    char want[64];
    snprintf(want, sizeof want, "a blob of %u to %u bytes", min, max);
    enum mp_type t = mp_peek(&r);
    if (t != MP_BIN) return bad(&l, want, "%s", mp_type_name(t));
    if (mp_read_bin(&r, out, len) < 0) return err_context("%s", l.s);
    if (*len < min || *len > max) return bad(&l, want, "%u bytes", *len);
    return 0;
}

/* Identifiers (names, capabilities, module names, dtypes) end up in logs and
 * file names: [A-Za-z0-9._-], not starting with '.' or '-' (no hidden files,
 * no "..", nothing that reads as an option; the rule of keys_name_check, so
 * every identity name passes). Free text
 * (reasons, tensor names) may be any printable ASCII. Neither may be empty
 * or hold control characters, so printing one cannot forge a log line. */
enum str_kind { IDENT, TEXT };

static bool ident_byte(unsigned char c, bool first) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')
        return true;
    return !first && (c == '.' || c == '-');
}

static int read_str(struct mp_reader *r, const struct label *l, enum str_kind kind, char *out,
                    uint32_t max) {
    char want[128];
    snprintf(want, sizeof want, "a string of 1 to %u %s", max,
             kind == IDENT ? "bytes of [A-Za-z0-9._-] not starting with '.' or '-'"
                           : "printable ASCII bytes");
    enum mp_type t = mp_peek(r);
    if (t != MP_STR) return bad(l, want, "%s", mp_type_name(t));
    const char *s;
    uint32_t n;
    if (mp_read_str(r, &s, &n) < 0) return err_context("%s", l->s);
    if (n == 0 || n > max) return bad(l, want, "%u bytes", n);
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = kind == IDENT ? ident_byte(c, i == 0) : (c >= 0x20 && c < 0x7f);
        if (!ok) return bad(l, want, "byte 0x%02x at position %u", c, i);
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static int get_str(const struct fields *fs, const char *key, enum str_kind kind, char *out,
                   uint32_t max) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    struct label l = label_of(fs, key, -1);
    return read_str(&r, &l, kind, out, max);
}

/* An array of min..max identifiers, each at most item_max bytes, stored in
 * rows of `stride` bytes starting at out. */
static int get_idents(const struct fields *fs, const char *key, uint32_t min, uint32_t max,
                      uint32_t item_max, char *out, size_t stride, uint32_t *count) {
    struct mp_reader r;
    if (need(fs, key, &r) < 0) return -1;
    struct label l = label_of(fs, key, -1);
    char want[96];
    snprintf(want, sizeof want, "an array of %u to %u strings", min, max);
    enum mp_type t = mp_peek(&r);
    if (t != MP_ARRAY) return bad(&l, want, "%s", mp_type_name(t));
    uint32_t n;
    if (mp_read_array(&r, &n) < 0) return err_context("%s", l.s);
    if (n < min || n > max) return bad(&l, want, "%u elements", n);
    for (uint32_t i = 0; i < n; i++) {
        struct label li = label_of(fs, key, (long)i);
        if (read_str(&r, &li, IDENT, out + i * stride, item_max) < 0) return -1;
    }
    *count = n;
    return 0;
}

/* ---- the messages --------------------------------------------------------- */

static int decode_hello(const struct fields *fs, struct msg_hello *h) {
    if (get_str(fs, "name", IDENT, h->name, MSG_NAME_MAX) < 0 ||
        get_fixed(fs, "id", h->fingerprint, MSG_HASH_LEN) < 0 ||
        get_idents(fs, "caps", 0, MSG_CAPS_MAX, MSG_CAP_MAX, h->caps[0], sizeof h->caps[0],
                   &h->ncaps) < 0)
        return -1;
    bool has_round = find(fs, "have_round") != NULL;
    bool has_version = find(fs, "have_version") != NULL;
    if (has_round != has_version)
        return err_set("HELLO: fields 'have_round' and 'have_version' go together, got only '%s'",
                       has_round ? "have_round" : "have_version");
    h->has_model = has_round;
    if (h->has_model && (get_u64(fs, "have_round", 0, UINT64_MAX, &h->have_round) < 0 ||
                         get_fixed(fs, "have_version", h->have_version, MSG_HASH_LEN) < 0))
        return -1;
    if (get_u64(fs, "time", 0, UINT64_MAX, &h->time) < 0 ||
        get_fixed(fs, "sig", h->sig, MSG_SIG_LEN) < 0)
        return -1;
    return 0;
}

static int decode_train(const struct fields *top, struct msg_train *c) {
    struct mp_reader r;
    if (need(top, "train", &r) < 0) return -1;
    struct fields fs;
    if (fields_read(&r, top->msg, "train.", &fs) < 0) return -1;
    if (get_u32(&fs, "steps", 1, 10000000, &c->steps) < 0 ||
        get_positive(&fs, "lr", 1.0, &c->lr) < 0 || get_u32(&fs, "rank", 1, 4096, &c->rank) < 0 ||
        get_positive(&fs, "alpha", 1e6, &c->alpha) < 0 ||
        get_idents(&fs, "targets", 1, MSG_TARGETS_MAX, MSG_TARGET_MAX, c->targets[0],
                   sizeof c->targets[0], &c->ntargets) < 0 ||
        get_u32(&fs, "batch", 1, 65536, &c->batch) < 0 ||
        get_u32(&fs, "seq", 1, 1u << 20, &c->seq) < 0)
        return -1;
    return 0;
}

/* Optional fields that only mean something together: 1 when all are
 * there, 0 when none is, -1 (naming the first missing one) otherwise. */
static int all_or_none(const struct fields *fs, const char *const *keys, int n) {
    int have = 0;
    for (int i = 0; i < n; i++) have += find(fs, keys[i]) != NULL;
    if (have == 0) return 0;
    if (have == n) return 1;
    for (int i = 0; i < n; i++)
        if (!find(fs, keys[i]))
            return err_set("%s: optional fields '%s' and '%s' go together, '%s' is missing",
                           fs->msg, keys[0], keys[n - 1], keys[i]);
    return -1;
}

static int decode_round(const struct fields *fs, struct msg_round *m) {
    if (get_u64(fs, "round", 0, UINT64_MAX, &m->round) < 0 ||
        get_fixed(fs, "base", m->base, MSG_HASH_LEN) < 0 || decode_train(fs, &m->train) < 0 ||
        get_u64(fs, "deadline", 0, UINT64_MAX, &m->deadline) < 0)
        return -1;
    m->base_sharded = false;
    if (find(fs, "base_sharded") && get_bool(fs, "base_sharded", &m->base_sharded) < 0) return -1;
    static const char *const upd[] = {"update_from", "update_hash", "update_size"};
    int has = all_or_none(fs, upd, 3);
    if (has < 0) return -1;
    m->has_update = has;
    if (has && (get_fixed(fs, "update_from", m->update_from, MSG_HASH_LEN) < 0 ||
                get_fixed(fs, "update_hash", m->update_hash, MSG_HASH_LEN) < 0 ||
                get_u64(fs, "update_size", 1, MSG_SUBMIT_MAX, &m->update_size) < 0))
        return -1;
    static const char *const start[] = {"start_hash", "start_size"};
    if ((has = all_or_none(fs, start, 2)) < 0) return -1;
    m->has_start = has;
    if (has && (get_fixed(fs, "start_hash", m->start_hash, MSG_HASH_LEN) < 0 ||
                get_u64(fs, "start_size", 1, MSG_SUBMIT_MAX, &m->start_size) < 0))
        return -1;
    m->has_start_seed = find(fs, "start_seed") != NULL;
    if (m->has_start_seed && !m->has_start)
        return err_set("%s: optional field 'start_seed' needs 'start_hash' and 'start_size'",
                       fs->msg);
    if (m->has_start_seed && get_u64(fs, "start_seed", 0, UINT64_MAX, &m->start_seed) < 0)
        return -1;
    m->has_base_size = find(fs, "base_size") != NULL;
    if (m->has_base_size && get_u64(fs, "base_size", 1, MSG_BASE_SIZE_MAX, &m->base_size) < 0)
        return -1;
    return 0;
}

static int decode_status(const struct fields *fs, struct msg_status *m) {
    if (get_str(fs, "name", IDENT, m->name, MSG_NAME_MAX) < 0 ||
        get_fixed(fs, "id", m->fingerprint, MSG_HASH_LEN) < 0)
        return -1;
    return 0;
}

static int decode_status_info(const struct fields *fs, struct msg_status_info *m) {
    if (get_u64(fs, "time", 0, UINT64_MAX, &m->time) < 0 ||
        get_str(fs, "consortium", TEXT, m->consortium, MSG_REASON_MAX) < 0 ||
        get_u64(fs, "round", 0, UINT64_MAX, &m->round) < 0 ||
        get_str(fs, "state", IDENT, m->state, MSG_STATE_MAX) < 0 ||
        get_fixed(fs, "version", m->version, MSG_HASH_LEN) < 0 ||
        get_str(fs, "member", IDENT, m->member, MSG_STATE_MAX) < 0)
        return -1;
    static const char *const ros[] = {"roster_version", "roster_hash", "roster_size"};
    int has = all_or_none(fs, ros, 3);
    if (has < 0) return -1;
    m->has_roster = has;
    if (has && (get_u64(fs, "roster_version", 1, UINT64_MAX, &m->roster_version) < 0 ||
                get_fixed(fs, "roster_hash", m->roster_hash, MSG_HASH_LEN) < 0 ||
                get_u64(fs, "roster_size", 1, MSG_SUBMIT_MAX, &m->roster_size) < 0))
        return -1;
    static const char *const agg[] = {"aggregator"};
    if ((has = all_or_none(fs, agg, 1)) < 0) return -1;
    m->has_aggregator = has;
    if (has && get_fixed(fs, "aggregator", m->aggregator, MSG_HASH_LEN) < 0) return -1;
    return 0;
}

static int decode_get_model(const struct fields *fs, struct msg_get_model *m) {
    if (get_fixed(fs, "version", m->version, MSG_HASH_LEN) < 0 ||
        get_u64(fs, "offset", 0, UINT64_MAX, &m->offset) < 0 ||
        get_u64(fs, "length", 1, MSG_CHUNK_MAX, &m->length) < 0)
        return -1;
    if (m->offset > UINT64_MAX - m->length)
        return err_set("GET_MODEL: offset %llu + length %llu overflows",
                       (unsigned long long)m->offset, (unsigned long long)m->length);
    return 0;
}

static int decode_model_chunk(const struct fields *fs, struct msg_model_chunk *m) {
    if (get_fixed(fs, "version", m->version, MSG_HASH_LEN) < 0 ||
        get_u64(fs, "offset", 0, UINT64_MAX, &m->offset) < 0 ||
        get_u64(fs, "total", 0, UINT64_MAX, &m->total) < 0 ||
        get_blob(fs, "data", 0, MSG_CHUNK_MAX, &m->data, &m->data_len) < 0 ||
        get_bool(fs, "final", &m->final) < 0)
        return -1;
    if (m->offset > m->total || m->data_len > m->total - m->offset)
        return err_set("MODEL_CHUNK: %u bytes at offset %llu run past the total of %llu bytes",
                       m->data_len, (unsigned long long)m->offset, (unsigned long long)m->total);
    uint64_t rest = m->total - m->offset - m->data_len;
    if (m->final && rest != 0)
        return err_set("MODEL_CHUNK: field 'final' is true but %llu bytes of the model follow",
                       (unsigned long long)rest);
    if (!m->final && rest == 0)
        return err_set("MODEL_CHUNK: field 'final' is false but the chunk ends the model");
    if (!m->final && m->data_len == 0)
        return err_set("MODEL_CHUNK: an empty chunk must be the final one");
    return 0;
}

static int decode_submit_begin(const struct fields *fs, struct msg_submit_begin *m) {
    if (get_u64(fs, "round", 0, UINT64_MAX, &m->round) < 0 ||
        get_fixed(fs, "msgid", m->id, MSG_ID_LEN) < 0 ||
        get_u64(fs, "size", 1, MSG_SUBMIT_MAX, &m->size) < 0 ||
        get_u32(fs, "chunks", 1, (uint32_t)(MSG_SUBMIT_MAX / MSG_CHUNK_MAX), &m->chunks) < 0)
        return -1;
    /* Every chunk carries 1..MSG_CHUNK_MAX bytes. */
    if (m->chunks > m->size || m->size > (uint64_t)m->chunks * MSG_CHUNK_MAX)
        return err_set("SUBMIT_BEGIN: %llu bytes cannot travel in %u chunks of 1 to %u bytes",
                       (unsigned long long)m->size, m->chunks, MSG_CHUNK_MAX);
    return 0;
}

static int decode_submit_chunk(const struct fields *fs, struct msg_submit_chunk *m) {
    if (get_fixed(fs, "msgid", m->id, MSG_ID_LEN) < 0 ||
        get_u32(fs, "index", 0, (uint32_t)(MSG_SUBMIT_MAX / MSG_CHUNK_MAX) - 1, &m->index) < 0 ||
        get_blob(fs, "data", 1, MSG_CHUNK_MAX, &m->data, &m->data_len) < 0)
        return -1;
    return 0;
}

static int decode_submit_end(const struct fields *fs, struct msg_submit_end *m) {
    if (get_fixed(fs, "msgid", m->id, MSG_ID_LEN) < 0 ||
        get_fixed(fs, "digest", m->digest, MSG_HASH_LEN) < 0)
        return -1;
    return 0;
}

static int decode_receipt(const struct fields *fs, struct msg_receipt *m) {
    if (get_u64(fs, "round", 0, UINT64_MAX, &m->round) < 0 ||
        get_fixed(fs, "msgid", m->id, MSG_ID_LEN) < 0 ||
        get_fixed(fs, "digest", m->digest, MSG_HASH_LEN) < 0 ||
        get_u64(fs, "time", 0, UINT64_MAX, &m->time) < 0)
        return -1;
    return 0;
}

static int decode_ack(const struct fields *fs, struct msg_ack *m) {
    if (get_fixed(fs, "msgid", m->id, MSG_ID_LEN) < 0 ||
        get_u64(fs, "stored", 0, MSG_SUBMIT_MAX, &m->stored) < 0)
        return -1;
    return 0;
}

static int decode_error(const struct fields *fs, struct msg_error *m) {
    uint32_t code;
    if (get_u32(fs, "code", 1, MSG_ERR_LAST, &code) < 0 ||
        get_str(fs, "reason", TEXT, m->reason, MSG_REASON_MAX) < 0)
        return -1;
    m->code = (enum msg_error_code)code;
    m->has_retry_after = find(fs, "retry_after") != NULL;
    if (m->has_retry_after &&
        get_u32(fs, "retry_after", 0, MSG_RETRY_AFTER_MAX, &m->retry_after_ms) < 0)
        return -1;
    m->has_final = find(fs, "final") != NULL;
    if (m->has_final && get_fixed(fs, "final", m->final, MSG_HASH_LEN) < 0) return -1;
    return 0;
}

int msg_decode(const void *buf, size_t len, const struct mp_limits *lim, struct msg *m) {
    if (!lim) lim = &MSG_LIMITS;
    memset(m, 0, sizeof *m);
    if (mp_validate(buf, len, lim) < 0) return err_context("message");
    struct mp_reader r;
    mp_init(&r, buf, len);
    struct fields fs;
    if (fields_read(&r, "message", "", &fs) < 0) return -1;

    uint64_t v;
    if (get_u64(&fs, "v", 0, UINT64_MAX, &v) < 0) return -1;
    if (v != MSG_VERSION)
        return err_set("message: unsupported protocol version %llu (this build speaks %d)",
                       (unsigned long long)v, MSG_VERSION);
    char t[MSG_KEY_MAX + 1];
    if (get_str(&fs, "t", IDENT, t, MSG_KEY_MAX) < 0) return -1;
    m->type = 0;
    for (unsigned i = 1; i < N_TYPES; i++)
        if (strcmp(t, type_names[i]) == 0) m->type = (enum msg_type)i;
    if (m->type == 0) return err_set("message: unknown message type '%s'", t);
    fs.msg = type_names[m->type];

    switch (m->type) {
        case MSG_HELLO:
            return decode_hello(&fs, &m->hello);
        case MSG_ROUND:
            return decode_round(&fs, &m->round);
        case MSG_GET_MODEL:
            return decode_get_model(&fs, &m->get_model);
        case MSG_MODEL_CHUNK:
            return decode_model_chunk(&fs, &m->model_chunk);
        case MSG_SUBMIT_BEGIN:
            return decode_submit_begin(&fs, &m->submit_begin);
        case MSG_SUBMIT_CHUNK:
            return decode_submit_chunk(&fs, &m->submit_chunk);
        case MSG_SUBMIT_END:
            return decode_submit_end(&fs, &m->submit_end);
        case MSG_RECEIPT:
            return decode_receipt(&fs, &m->receipt);
        case MSG_ERROR:
            return decode_error(&fs, &m->error);
        case MSG_ACK:
            return decode_ack(&fs, &m->ack);
        case MSG_STATUS:
            return decode_status(&fs, &m->status);
        case MSG_STATUS_INFO:
            return decode_status_info(&fs, &m->status_info);
    }
    return err_set("message: unknown message type '%s'", t);
}

/* ==== encoding ============================================================
 * Every msgpack-c pack call returns 0 or -1 (the buffer could not grow); the
 * first failure sticks in `failed` and the encoder gives up at the end. */

struct enc {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    bool failed;
};

/* cap: the expected size. Reserving it up front saves the buffer's growth
 * by doubling (8 KiB, 16 KiB, ... 2 MiB for a full chunk: eight reallocs and
 * copies), or, for a large TENSORS payload, a moment at twice its size. */
static int enc_init(struct enc *e, size_t cap) {
    msgpack_sbuffer_init(&e->sb);
    msgpack_packer_init(&e->pk, &e->sb, msgpack_sbuffer_write);
    e->failed = false;
    e->sb.data = malloc(cap);
    if (!e->sb.data) return err_set("out of memory for a %zu-byte encoding", cap);
    e->sb.alloc = cap;
    return 0;
}

static void enc_ok(struct enc *e, int rc) {
    if (rc != 0) e->failed = true;
}

static void put_str_value(struct enc *e, const char *s, size_t n) {
    enc_ok(e, msgpack_pack_str(&e->pk, n));
    if (n > 0) enc_ok(e, msgpack_pack_str_body(&e->pk, s, n));
}

static void put_key(struct enc *e, const char *key) {
    put_str_value(e, key, strlen(key));
}

static void put_uint(struct enc *e, const char *key, uint64_t v) {
    put_key(e, key);
    enc_ok(e, msgpack_pack_uint64(&e->pk, v));
}

static void put_double(struct enc *e, const char *key, double v) {
    put_key(e, key);
    enc_ok(e, msgpack_pack_double(&e->pk, v));
}

static void put_bool(struct enc *e, const char *key, bool v) {
    put_key(e, key);
    enc_ok(e, v ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk));
}

static void put_bin(struct enc *e, const char *key, const uint8_t *b, size_t n) {
    put_key(e, key);
    enc_ok(e, msgpack_pack_bin(&e->pk, n));
    if (n > 0) enc_ok(e, msgpack_pack_bin_body(&e->pk, b, n));
}

/* s lives in a char array of `size` bytes; a missing terminator is caught
 * by the decoder's length check (size - 1 is the field's limit). */
static void put_str(struct enc *e, const char *key, const char *s, size_t size) {
    put_key(e, key);
    put_str_value(e, s, strnlen(s, size));
}

static void put_strs(struct enc *e, const char *key, const char *rows, size_t stride, uint32_t n) {
    put_key(e, key);
    enc_ok(e, msgpack_pack_array(&e->pk, n));
    for (uint32_t i = 0; i < n; i++)
        put_str_value(e, rows + i * stride, strnlen(rows + i * stride, stride));
}

/* Map header with n type-specific fields, then "v" and "t". */
static void put_header(struct enc *e, enum msg_type t, size_t n) {
    enc_ok(e, msgpack_pack_map(&e->pk, n + 2));
    put_uint(e, "v", MSG_VERSION);
    put_str(e, "t", type_names[t], MSG_KEY_MAX);
}

static void encode_body(struct enc *e, const struct msg *m) {
    switch (m->type) {
        case MSG_HELLO: {
            const struct msg_hello *h = &m->hello;
            put_header(e, m->type, h->has_model ? 7 : 5);
            put_str(e, "name", h->name, sizeof h->name);
            put_bin(e, "id", h->fingerprint, MSG_HASH_LEN);
            put_strs(e, "caps", h->caps[0], sizeof h->caps[0], h->ncaps);
            put_uint(e, "time", h->time);
            put_bin(e, "sig", h->sig, MSG_SIG_LEN);
            if (h->has_model) {
                put_uint(e, "have_round", h->have_round);
                put_bin(e, "have_version", h->have_version, MSG_HASH_LEN);
            }
            break;
        }
        case MSG_ROUND: {
            const struct msg_round *r = &m->round;
            const struct msg_train *c = &r->train;
            put_header(e, m->type,
                       4 + r->base_sharded + 3 * r->has_update + 2 * r->has_start +
                           r->has_start_seed + r->has_base_size);
            put_uint(e, "round", r->round);
            put_bin(e, "base", r->base, MSG_HASH_LEN);
            put_key(e, "train");
            enc_ok(e, msgpack_pack_map(&e->pk, 7));
            put_uint(e, "steps", c->steps);
            put_double(e, "lr", c->lr);
            put_uint(e, "rank", c->rank);
            put_double(e, "alpha", c->alpha);
            put_strs(e, "targets", c->targets[0], sizeof c->targets[0], c->ntargets);
            put_uint(e, "batch", c->batch);
            put_uint(e, "seq", c->seq);
            put_uint(e, "deadline", r->deadline);
            if (r->base_sharded) put_bool(e, "base_sharded", true);
            if (r->has_update) {
                put_bin(e, "update_from", r->update_from, MSG_HASH_LEN);
                put_bin(e, "update_hash", r->update_hash, MSG_HASH_LEN);
                put_uint(e, "update_size", r->update_size);
            }
            if (r->has_start) {
                put_bin(e, "start_hash", r->start_hash, MSG_HASH_LEN);
                put_uint(e, "start_size", r->start_size);
            }
            if (r->has_start_seed) put_uint(e, "start_seed", r->start_seed);
            if (r->has_base_size) put_uint(e, "base_size", r->base_size);
            break;
        }
        case MSG_GET_MODEL:
            put_header(e, m->type, 3);
            put_bin(e, "version", m->get_model.version, MSG_HASH_LEN);
            put_uint(e, "offset", m->get_model.offset);
            put_uint(e, "length", m->get_model.length);
            break;
        case MSG_MODEL_CHUNK: {
            const struct msg_model_chunk *c = &m->model_chunk;
            put_header(e, m->type, 5);
            put_bin(e, "version", c->version, MSG_HASH_LEN);
            put_uint(e, "offset", c->offset);
            put_uint(e, "total", c->total);
            put_bin(e, "data", c->data, c->data_len);
            put_bool(e, "final", c->final);
            break;
        }
        case MSG_SUBMIT_BEGIN:
            put_header(e, m->type, 4);
            put_uint(e, "round", m->submit_begin.round);
            put_bin(e, "msgid", m->submit_begin.id, MSG_ID_LEN);
            put_uint(e, "size", m->submit_begin.size);
            put_uint(e, "chunks", m->submit_begin.chunks);
            break;
        case MSG_SUBMIT_CHUNK:
            put_header(e, m->type, 3);
            put_bin(e, "msgid", m->submit_chunk.id, MSG_ID_LEN);
            put_uint(e, "index", m->submit_chunk.index);
            put_bin(e, "data", m->submit_chunk.data, m->submit_chunk.data_len);
            break;
        case MSG_SUBMIT_END:
            put_header(e, m->type, 2);
            put_bin(e, "msgid", m->submit_end.id, MSG_ID_LEN);
            put_bin(e, "digest", m->submit_end.digest, MSG_HASH_LEN);
            break;
        case MSG_RECEIPT:
            put_header(e, m->type, 4);
            put_uint(e, "round", m->receipt.round);
            put_bin(e, "msgid", m->receipt.id, MSG_ID_LEN);
            put_bin(e, "digest", m->receipt.digest, MSG_HASH_LEN);
            put_uint(e, "time", m->receipt.time);
            break;
        case MSG_ERROR:
            put_header(e, m->type, 2 + m->error.has_retry_after + m->error.has_final);
            put_uint(e, "code", (uint64_t)m->error.code);
            put_str(e, "reason", m->error.reason, sizeof m->error.reason);
            if (m->error.has_retry_after) put_uint(e, "retry_after", m->error.retry_after_ms);
            if (m->error.has_final) put_bin(e, "final", m->error.final, MSG_HASH_LEN);
            break;
        case MSG_ACK:
            put_header(e, m->type, 2);
            put_bin(e, "msgid", m->ack.id, MSG_ID_LEN);
            put_uint(e, "stored", m->ack.stored);
            break;
        case MSG_STATUS:
            put_header(e, m->type, 2);
            put_str(e, "name", m->status.name, sizeof m->status.name);
            put_bin(e, "id", m->status.fingerprint, MSG_HASH_LEN);
            break;
        case MSG_STATUS_INFO: {
            const struct msg_status_info *i = &m->status_info;
            put_header(e, m->type, 6 + (i->has_roster ? 3 : 0) + (i->has_aggregator ? 1 : 0));
            put_uint(e, "time", i->time);
            put_str(e, "consortium", i->consortium, sizeof i->consortium);
            put_uint(e, "round", i->round);
            put_str(e, "state", i->state, sizeof i->state);
            put_bin(e, "version", i->version, MSG_HASH_LEN);
            put_str(e, "member", i->member, sizeof i->member);
            if (i->has_roster) {
                put_uint(e, "roster_version", i->roster_version);
                put_bin(e, "roster_hash", i->roster_hash, MSG_HASH_LEN);
                put_uint(e, "roster_size", i->roster_size);
            }
            if (i->has_aggregator) put_bin(e, "aggregator", i->aggregator, MSG_HASH_LEN);
            break;
        }
    }
}

int msg_encode(const struct msg *m, uint8_t **out, size_t *len) {
    const char *name = msg_type_name(m->type);
    if (!name) return err_set("msg_encode: unknown message type %d", (int)m->type);
    /* Fields take well under 4 KiB; chunk data is bounded by the decoder's
     * limit (anything larger is refused below anyway). */
    size_t blob = m->type == MSG_MODEL_CHUNK    ? m->model_chunk.data_len
                  : m->type == MSG_SUBMIT_CHUNK ? m->submit_chunk.data_len
                                                : 0;
    struct enc e;
    if (enc_init(&e, 4096 + (blob < MSG_CHUNK_MAX ? blob : MSG_CHUNK_MAX)) < 0)
        return err_context("encoding %s", name);
    encode_body(&e, m);
    if (e.failed) {
        msgpack_sbuffer_destroy(&e.sb);
        return err_set("encoding %s: out of memory", name);
    }
    /* The decoder is the one statement of the rules: what it refuses, the
     * encoder must not send. Blobs are skipped, so this costs little. */
    struct msg check;
    if (msg_decode(e.sb.data, e.sb.size, NULL, &check) < 0) {
        msgpack_sbuffer_destroy(&e.sb);
        return err_context("refusing to encode an invalid %s", name);
    }
    *len = e.sb.size;
    *out = (uint8_t *)msgpack_sbuffer_release(&e.sb);
    return 0;
}

/* ==== TENSORS ============================================================= */

static int decode_tensor(struct mp_reader *r, uint32_t index, struct msg_tensor *t) {
    char ctx[32];
    snprintf(ctx, sizeof ctx, "TENSORS[%u]", index);
    struct fields fs;
    if (fields_read(r, ctx, "", &fs) < 0) return -1;
    char dtype[8];
    if (get_str(&fs, "name", TEXT, t->name, MSG_TENSOR_NAME_MAX) < 0 ||
        get_str(&fs, "dtype", IDENT, dtype, sizeof dtype - 1) < 0)
        return -1;
    t->dtype = 0;
    for (unsigned d = 1; d < N_DTYPES; d++)
        if (strcmp(dtype, dtypes[d].name) == 0) t->dtype = (enum msg_dtype)d;
    if (t->dtype == 0)
        return err_set("%s: field 'dtype' must be one of F32, F16, BF16, F64, I32, I64, U8, "
                       "got '%s'",
                       ctx, dtype);

    struct mp_reader s;
    if (need(&fs, "shape", &s) < 0) return -1;
    struct label l = label_of(&fs, "shape", -1);
    char want[64];
    snprintf(want, sizeof want, "an array of at most %d dimensions", MSG_TENSOR_NDIM_MAX);
    enum mp_type ty = mp_peek(&s);
    if (ty != MP_ARRAY) return bad(&l, want, "%s", mp_type_name(ty));
    if (mp_read_array(&s, &t->ndim) < 0) return err_context("%s", l.s);
    if (t->ndim > MSG_TENSOR_NDIM_MAX) return bad(&l, want, "%u dimensions", t->ndim);
    /* Bytes = product of the dimensions times the dtype size, computed with
     * overflow checks: a shape like [2^40, 2^40] must not wrap to a small
     * number that matches a short blob. */
    uint64_t bytes = msg_dtype_size(t->dtype);
    for (uint32_t d = 0; d < t->ndim; d++) {
        struct label ld = label_of(&fs, "shape", (long)d);
        if (read_uint(&s, &ld, 0, UINT64_MAX, &t->shape[d]) < 0) return -1;
        if (__builtin_mul_overflow(bytes, t->shape[d], &bytes))
            return err_set("%s: shape overflows 64 bits", ctx);
    }
    const uint8_t *data;
    uint32_t n;
    if (get_blob(&fs, "data", 0, UINT32_MAX, &data, &n) < 0) return -1;
    if (n != bytes)
        return err_set("%s: '%s' has %u bytes of data, but its shape and dtype %s need %llu", ctx,
                       t->name, n, dtype, (unsigned long long)bytes);
    t->data = data;
    t->size = n;
    return 0;
}

int msg_tensors_decode(const void *buf, size_t len, const struct mp_limits *lim,
                       struct msg_tensor **out, size_t *count) {
    if (!lim) lim = &MSG_TENSORS_LIMITS;
    *out = NULL;
    *count = 0;
    if (mp_validate(buf, len, lim) < 0) return err_context("TENSORS");
    struct mp_reader r;
    mp_init(&r, buf, len);
    enum mp_type t = mp_peek(&r);
    if (t != MP_ARRAY)
        return err_set("TENSORS: payload must be an array of tensors, got %s", mp_type_name(t));
    uint32_t n;
    if (mp_read_array(&r, &n) < 0) return err_context("TENSORS");
    if (n == 0 || n > MSG_TENSORS_MAX)
        return err_set("TENSORS: payload must hold 1 to %d tensors, got %u", MSG_TENSORS_MAX, n);
    /* n is bounded by MSG_TENSORS_MAX and (validated) by the bytes present. */
    struct msg_tensor *ts = calloc(n, sizeof *ts);
    if (!ts) return err_set("TENSORS: out of memory for %u tensors", n);
    for (uint32_t i = 0; i < n; i++) {
        if (decode_tensor(&r, i, &ts[i]) < 0) goto fail;
        if (i > 0 && strcmp(ts[i - 1].name, ts[i].name) >= 0) {
            err_set("TENSORS[%u]: names must be in strictly increasing byte order, but '%s' "
                    "follows '%s'",
                    i, ts[i].name, ts[i - 1].name);
            goto fail;
        }
    }
    *out = ts;
    *count = n;
    return 0;
fail:
    free(ts);
    return -1;
}

static int by_name(const void *a, const void *b) {
    const struct msg_tensor *x = *(const struct msg_tensor *const *)a;
    const struct msg_tensor *y = *(const struct msg_tensor *const *)b;
    return strcmp(x->name, y->name);
}

int msg_tensors_encode(const struct msg_tensor *t, size_t n, uint8_t **out, size_t *len) {
    if (n == 0 || n > MSG_TENSORS_MAX)
        return err_set("TENSORS: payload must hold 1 to %d tensors, got %zu", MSG_TENSORS_MAX, n);
    const struct msg_tensor **order = malloc(n * sizeof *order);
    if (!order) return err_set("TENSORS: out of memory");
    /* Reserve the whole encoding up front (see enc_init). Per tensor: at most
     * 5 (map/keys) + 4 * 8 (key strings) + 2 + 255 (name) + 5 (dtype)
     * + 1 + 8 * 9 (shape) + 5 (bin32 header) < 512 bytes besides the data. */
    size_t cap = 16;
    for (size_t i = 0; i < n; i++) {
        order[i] = &t[i];
        /* What the msgpack framing itself cannot carry is refused here; the
         * remaining rules are the decoder's, checked below. */
        const char *why = NULL;
        if (!msg_dtype_name(t[i].dtype))
            why = "unknown dtype";
        else if (t[i].ndim > MSG_TENSOR_NDIM_MAX)
            why = "too many dimensions";
        else if (t[i].size > UINT32_MAX)
            why = "over 4 GiB of data (msgpack bin 32 limit)";
        else if (__builtin_add_overflow(cap, t[i].size + 512, &cap))
            why = "size overflows";
        if (why) {
            free(order);
            return err_set("TENSORS: tensor %zu ('%.*s'): %s", i, MSG_TENSOR_NAME_MAX, t[i].name,
                           why);
        }
    }
    qsort(order, n, sizeof *order, by_name);

    struct enc e;
    if (enc_init(&e, cap) < 0) {
        free(order);
        return err_context("TENSORS");
    }
    enc_ok(&e, msgpack_pack_array(&e.pk, n));
    for (size_t i = 0; i < n; i++) {
        const struct msg_tensor *x = order[i];
        enc_ok(&e, msgpack_pack_map(&e.pk, 4));
        put_str(&e, "name", x->name, sizeof x->name);
        put_str(&e, "dtype", msg_dtype_name(x->dtype), 8);
        put_key(&e, "shape");
        enc_ok(&e, msgpack_pack_array(&e.pk, x->ndim));
        for (uint32_t d = 0; d < x->ndim; d++) enc_ok(&e, msgpack_pack_uint64(&e.pk, x->shape[d]));
        put_bin(&e, "data", x->data, x->size);
    }
    free(order);
    if (e.failed) {
        msgpack_sbuffer_destroy(&e.sb);
        return err_set("encoding TENSORS: out of memory");
    }
    struct msg_tensor *check;
    size_t nc;
    if (msg_tensors_decode(e.sb.data, e.sb.size, NULL, &check, &nc) < 0) {
        msgpack_sbuffer_destroy(&e.sb);
        return err_context("refusing to encode an invalid payload");
    }
    free(check);
    *len = e.sb.size;
    *out = (uint8_t *)msgpack_sbuffer_release(&e.sb);
    return 0;
}
