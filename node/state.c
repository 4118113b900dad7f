/* node state: the small durable records of a round (sealed, receipted) and
 * the metrics log. Every record is written with fio_write_atomic, so after a
 * crash a record is either there whole or not at all. */
#include "node/internal.h"

#include "util/err.h"
#include "util/fio.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RECORD_MAX 65536 /* bytes of one record file */

int node_path(const node_ctx *n, char *out, const char *fmt, ...) {
    char rel[NODE_PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    if (k < 0 || k >= (int)sizeof rel) return err_set("state path %s/... is too long", fmt);
    return fio_join(out, NODE_PATH_MAX, n->c->state_dir, rel);
}

/* A JSON number for a loss that may be unknown (NaN is not JSON). */
static json_t *json_loss(double v) {
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *record_json(const node_round_record *r) {
    char base[2 * MSG_HASH_LEN + 1], id[2 * MSG_ID_LEN + 1], digest[2 * MSG_HASH_LEN + 1];
    hex_encode(r->base, MSG_HASH_LEN, base);
    hex_encode(r->msgid, MSG_ID_LEN, id);
    hex_encode(r->digest, MSG_HASH_LEN, digest);
    return json_pack("{s:I, s:s, s:s, s:s, s:I, s:o, s:o, s:I, s:I, s:f, s:I, s:I, s:I, s:s}",
                     "round", (json_int_t)r->round, "base", base, "msgid", id, "digest", digest,
                     "envelope_bytes", (json_int_t)r->envelope_bytes, "loss_before",
                     json_loss(r->loss_before), "loss_after", json_loss(r->loss_after), "tokens",
                     (json_int_t)r->tokens, "examples", (json_int_t)r->examples, "train_s",
                     r->train_s, "download_bytes", (json_int_t)r->download_bytes, "upload_bytes",
                     (json_int_t)r->upload_bytes, "receipt_time", (json_int_t)r->receipt_time,
                     "sync", r->sync);
}

int node_record_write(const char *path, const node_round_record *r) {
    json_t *j = record_json(r);
    char *text = j ? json_dumps(j, JSON_SORT_KEYS | JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!text) return err_set("out of memory writing %s", path);
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps leaves room for its NUL: reuse it for the newline */
    int rc = fio_write_atomic(path, text, len + 1, 0644);
    free(text);
    return rc;
}

static int get_u64(json_t *j, const char *key, uint64_t *v, const char *path) {
    json_t *x = json_object_get(j, key);
    if (!json_is_integer(x) || json_integer_value(x) < 0)
        return err_set("%s: '%s' must be a non-negative integer", path, key);
    *v = (uint64_t)json_integer_value(x);
    return 0;
}

static int get_hex(json_t *j, const char *key, uint8_t *b, size_t n, const char *path) {
    json_t *x = json_object_get(j, key);
    if (!json_is_string(x) || hex_decode(json_string_value(x), b, n) != 0)
        return err_set("%s: '%s' must be %zu lowercase hex digits", path, key, 2 * n);
    return 0;
}

static double get_loss(json_t *j, const char *key) {
    json_t *x = json_object_get(j, key);
    return json_is_number(x) ? json_number_value(x) : NAN;
}

int node_record_read(const char *path, node_round_record *r) {
    char *text;
    size_t len;
    if (fio_read_all(path, RECORD_MAX, &text, &len) != 0) return -1;
    json_error_t e;
    json_t *j = json_loadb(text, len, 0, &e);
    free(text);
    if (!j) return err_set("%s:%d: %s (a node state record)", path, e.line, e.text);
    memset(r, 0, sizeof *r);
    int rc = -1;
    if (!json_is_object(j)) {
        err_set("%s: a node state record must be a JSON object", path);
        goto done;
    }
    json_t *ts = json_object_get(j, "train_s");
    if (get_u64(j, "round", &r->round, path) != 0 ||
        get_hex(j, "base", r->base, MSG_HASH_LEN, path) != 0 ||
        get_hex(j, "msgid", r->msgid, MSG_ID_LEN, path) != 0 ||
        get_hex(j, "digest", r->digest, MSG_HASH_LEN, path) != 0 ||
        get_u64(j, "envelope_bytes", &r->envelope_bytes, path) != 0 ||
        get_u64(j, "tokens", &r->tokens, path) != 0 ||
        get_u64(j, "examples", &r->examples, path) != 0 ||
        get_u64(j, "download_bytes", &r->download_bytes, path) != 0 ||
        get_u64(j, "upload_bytes", &r->upload_bytes, path) != 0 ||
        get_u64(j, "receipt_time", &r->receipt_time, path) != 0)
        goto done;
    r->loss_before = get_loss(j, "loss_before");
    r->loss_after = get_loss(j, "loss_after");
    r->train_s = json_is_number(ts) ? json_number_value(ts) : 0;
    /* "sync" came later: an older record has none. */
    json_t *sy = json_object_get(j, "sync");
    snprintf(r->sync, sizeof r->sync, "%s", json_is_string(sy) ? json_string_value(sy) : "");
    rc = 0;
done:
    json_decref(j);
    return rc;
}

int node_metrics_append(const node_ctx *n, const node_round_record *r) {
    char path[NODE_PATH_MAX];
    if (node_path(n, path, "metrics.jsonl") != 0) return -1;
    json_t *j = record_json(r);
    if (j && json_object_set_new(j, "node", json_string(n->c->name)) != 0) {
        json_decref(j);
        j = NULL;
    }
    char *line = j ? json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(j);
    if (!line) return err_set("out of memory writing %s", path);
    size_t len = strlen(line);
    line[len] = '\n';
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int rc = -1;
    if (fd < 0) {
        err_errno("cannot open %s", path);
    } else if (fio_write_full(fd, line, len + 1, path) == 0) {
        if (fsync(fd) != 0)
            err_errno("cannot fsync %s", path);
        else
            rc = 0;
    }
    if (fd >= 0 && close(fd) != 0 && rc == 0) rc = err_errno("cannot close %s", path);
    free(line);
    return rc;
}
