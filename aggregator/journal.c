/* journal — append-only, checksummed, fsync'd lines, and the records they
 * hold (see journal.h). */
#include "aggregator/journal.h"

#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"
#include "wire/crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK_HEX 8
#define LINE_MAX_BYTES (JOURNAL_RECORD_MAX + 3 + CHECK_HEX) /* " #" + hex + '\n' */

struct agg_journal {
    int fd;
    off_t size;                  /* bytes of good records */
    int broken;                  /* a failed append could not be cut back: refuse further appends */
    size_t cut_line, cut_offset; /* what open cut off the end (cut_line 0: nothing) */
    int cut_complete;
    char path[4096];
};

int journal_cut(const agg_journal *j, size_t *line, size_t *offset, int *complete) {
    if (!j || !j->cut_line) return 0;
    *line = j->cut_line;
    *offset = j->cut_offset;
    *complete = j->cut_complete;
    return 1;
}

static int checksum(const char *rec, size_t n, char hex[CHECK_HEX + 1]) {
    uint8_t h[CRYPTO_SHA256_LEN];
    if (crypto_sha256(rec, n, h) < 0) return -1;
    for (int i = 0; i < CHECK_HEX / 2; i++) snprintf(hex + 2 * i, 3, "%02x", h[i]);
    return 0;
}

int journal_format(const char *rec, char *out, size_t cap) {
    size_t n = strlen(rec);
    if (n == 0 || n > JOURNAL_RECORD_MAX)
        return err_set("journal record of %zu bytes (must be 1 to %d)", n, JOURNAL_RECORD_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)rec[i] < 0x20 || (unsigned char)rec[i] >= 0x7f || rec[i] == '#')
            return err_set("journal record has byte 0x%02x at %zu (printable ASCII without '#')",
                           (unsigned char)rec[i], i);
    char hex[CHECK_HEX + 1];
    if (checksum(rec, n, hex) < 0) return -1;
    int len = snprintf(out, cap, "%s #%s\n", rec, hex);
    if (len < 0 || (size_t)len >= cap) return err_set("journal line buffer too small");
    return len;
}

/* 1 when line (n bytes, without '\n') is "<rec> #<hex>" with a matching
 * checksum; rec is copied out NUL-terminated. */
static int line_ok(const char *line, size_t n, char *rec) {
    if (n < CHECK_HEX + 3 || n > LINE_MAX_BYTES - 1) return 0;
    size_t rl = n - CHECK_HEX - 2;
    if (line[rl] != ' ' || line[rl + 1] != '#') return 0;
    for (size_t i = 0; i < rl; i++)
        if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] >= 0x7f || line[i] == '#')
            return 0;
    char hex[CHECK_HEX + 1];
    if (checksum(line, rl, hex) < 0) return -1;
    if (memcmp(hex, line + rl + 2, CHECK_HEX) != 0) return 0;
    memcpy(rec, line, rl);
    rec[rl] = '\0';
    return 1;
}

int journal_open(agg_journal **out, const char *path, int readonly, journal_record_fn fn,
                 void *arg) {
    if (out) *out = NULL;
    char *data = NULL;
    size_t len = 0;
    if (fio_exists(path)) {
        if (fio_read_all(path, JOURNAL_FILE_MAX, &data, &len) < 0)
            return err_context("reading journal");
    } else if (readonly) {
        return err_set("journal %s does not exist (no round was ever run in this state dir)", path);
    }
    size_t pos = 0, good_end = 0, line = 0, cut_line = 0;
    int cut_complete = 0;
    char rec[LINE_MAX_BYTES];
    while (pos < len) {
        line++;
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (data + pos)) : len - pos;
        int ok = nl ? line_ok(data + pos, n, rec) : 0;
        if (ok < 0) goto fail;
        if (!ok) {
            size_t after = nl ? (size_t)(nl - data) + 1 : len;
            if (after < len) {
                err_set("journal %s is corrupt at line %zu (byte offset %zu): a damaged record "
                        "followed by others cannot come from a crash; restore the state "
                        "directory from a backup",
                        path, line, pos);
                goto fail;
            }
            /* A torn last record: the crash came before its fsync returned,
             * so no receipt or publication depended on it. A complete line
             * that fails is damage instead: the caller is told. */
            cut_line = line;
            cut_complete = nl != NULL;
            break;
        }
        if (fn && fn(arg, rec, line) < 0) {
            err_context("journal %s, line %zu", path, line);
            goto fail;
        }
        pos = (size_t)(nl - data) + 1;
        good_end = pos;
    }
    free(data);
    data = NULL;
    if (readonly) return 0;

    agg_journal *j = calloc(1, sizeof *j);
    if (!j) return err_set("out of memory");
    snprintf(j->path, sizeof j->path, "%s", path);
    j->fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (j->fd < 0) {
        free(j);
        return err_errno("opening journal %s", path);
    }
    if (good_end < len) {
        if (ftruncate(j->fd, (off_t)good_end) != 0) {
            err_errno("cutting the torn last record of journal %s", path);
            journal_close(j);
            return -1;
        }
    }
    if (lseek(j->fd, (off_t)good_end, SEEK_SET) < 0 || fsync(j->fd) != 0 ||
        fio_fsync_dir_of(path) < 0) {
        err_errno("preparing journal %s for appends", path);
        journal_close(j);
        return -1;
    }
    j->size = (off_t)good_end;
    j->cut_line = cut_line;
    j->cut_offset = good_end;
    j->cut_complete = cut_complete;
    *out = j;
    return 0;
fail:
    free(data);
    return -1;
}

int journal_append(agg_journal *j, const char *fmt, ...) {
    char rec[JOURNAL_RECORD_MAX + 2], buf[LINE_MAX_BYTES + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(rec, sizeof rec, fmt, ap);
    va_end(ap);
    if (n < 0 || n > JOURNAL_RECORD_MAX)
        return err_set("journal record too long (over %d bytes)", JOURNAL_RECORD_MAX);
    if (j->broken)
        return err_set("journal %s: an earlier append failed and could not be undone; restart "
                       "the aggregator",
                       j->path);
    int len = journal_format(rec, buf, sizeof buf);
    if (len < 0) return err_context("journal %s", j->path);
    /* One write: a crash leaves this line whole or torn at its end, and
     * either way the lines before it intact. */
    if (fio_write_full(j->fd, buf, (size_t)len, j->path) < 0 || fsync(j->fd) != 0) {
        /* A half-written line must not stay in front of later records
         * (that would read as corruption): cut back to the good records. */
        int e = errno;
        if (ftruncate(j->fd, j->size) != 0 || lseek(j->fd, j->size, SEEK_SET) < 0) j->broken = 1;
        errno = e;
        return err_errno("appending to journal %s", j->path);
    }
    j->size += len;
    return 0;
}

int journal_usable(const agg_journal *j) {
    return j && !j->broken;
}

void journal_close(agg_journal *j) {
    if (!j) return;
    if (j->fd >= 0) close(j->fd);
    free(j);
}

int journal_write(agg_journal *j, const journal_record *r) {
    char rec[JOURNAL_RECORD_MAX + 1];
    if (journal_record_encode(r, rec) < 0) return err_context("journal %s", j->path);
    return journal_append(j, "%s", rec);
}

/* ---- the record grammar ------------------------------------------------------- */

const char *journal_kind_name(journal_kind k) {
    switch (k) {
        case JOURNAL_INIT:
            return "init";
        case JOURNAL_OPEN:
            return "open";
        case JOURNAL_ACCEPT:
            return "accept";
        case JOURNAL_CLOSE:
            return "close";
        case JOURNAL_PUBLISH:
            return "publish";
        case JOURNAL_FAIL:
            return "fail";
        case JOURNAL_ROSTER:
            return "roster";
    }
    return "?";
}

int journal_record_encode(const journal_record *r, char out[JOURNAL_RECORD_MAX + 1]) {
    char h1[2 * MSG_HASH_LEN + 1], h2[2 * MSG_HASH_LEN + 1], id[2 * MSG_ID_LEN + 1];
    unsigned long long n = (unsigned long long)r->round;
    int len = -1;
    switch (r->kind) {
        case JOURNAL_INIT:
            hex_encode(r->consortium, MSG_HASH_LEN, h1);
            hex_encode(r->hash, MSG_HASH_LEN, h2);
            len = snprintf(out, JOURNAL_RECORD_MAX + 1, "init %s %s", h1, h2);
            break;
        case JOURNAL_OPEN:
            hex_encode(r->hash, MSG_HASH_LEN, h1);
            len = snprintf(out, JOURNAL_RECORD_MAX + 1, "open %llu %s %llu", n, h1,
                           (unsigned long long)r->deadline);
            break;
        case JOURNAL_ACCEPT:
            if (keys_name_check(r->member) < 0) return err_context("journal record 'accept'");
            hex_encode(r->msgid, MSG_ID_LEN, id);
            hex_encode(r->digest, MSG_HASH_LEN, h1);
            len = snprintf(out, JOURNAL_RECORD_MAX + 1, "accept %llu %s %s %s %llu %llu", n,
                           r->member, id, h1, (unsigned long long)r->size,
                           (unsigned long long)r->time);
            break;
        case JOURNAL_CLOSE:
            len = snprintf(out, JOURNAL_RECORD_MAX + 1, "close %llu %llu", n,
                           (unsigned long long)r->count);
            break;
        case JOURNAL_PUBLISH:
            hex_encode(r->hash, MSG_HASH_LEN, h1);
            if (!r->has_update) {
                len = snprintf(out, JOURNAL_RECORD_MAX + 1, "publish %llu %s", n, h1);
                break;
            }
            if (r->update_size == 0) return err_set("journal record 'publish': an empty update");
            hex_encode(r->update_hash, MSG_HASH_LEN, h2);
            len = snprintf(out, JOURNAL_RECORD_MAX + 1, "publish %llu %s %s %llu", n, h1, h2,
                           (unsigned long long)r->update_size);
            break;
        case JOURNAL_FAIL:
            if (!r->reason[0] || strchr(r->reason, ' '))
                return err_set("journal record 'fail': the reason '%s' must be one word",
                               r->reason);
            len = snprintf(out, JOURNAL_RECORD_MAX + 1, "fail %llu %s", n, r->reason);
            break;
        case JOURNAL_ROSTER:
            hex_encode(r->hash, MSG_HASH_LEN, h1);
            len = snprintf(out, JOURNAL_RECORD_MAX + 1, "roster %llu %s", n, h1);
            break;
    }
    if (len < 0) return err_set("journal record of unknown kind %d", (int)r->kind);
    if (len > JOURNAL_RECORD_MAX)
        return err_set("journal record over %d bytes", JOURNAL_RECORD_MAX);
    return 0;
}

/* A decimal without sign or leading blanks, as strtoull reads it. */
static int parse_u64(const char *s, uint64_t *v) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') return -1;
    *v = x;
    return 0;
}

/* Splits rec in place into at most max words (max + 1: more than that). */
static int words(char *rec, char **w, int max) {
    int n = 0;
    char *save = NULL;
    for (char *p = strtok_r(rec, " ", &save); p; p = strtok_r(NULL, " ", &save)) {
        if (n == max) return max + 1;
        w[n++] = p;
    }
    return n;
}

int journal_record_decode(const char *text, journal_record *r) {
    memset(r, 0, sizeof *r);
    char rec[JOURNAL_RECORD_MAX + 1];
    if (strlen(text) > JOURNAL_RECORD_MAX)
        return err_set("journal record of over %d bytes", JOURNAL_RECORD_MAX);
    snprintf(rec, sizeof rec, "%s", text);
    char *w[8];
    int n = words(rec, w, 8);
    if (n < 1) return err_set("empty record");
    int is_init = !strcmp(w[0], "init");
    if (n >= 2 && !is_init && parse_u64(w[1], &r->round) < 0)
        return err_set("record '%s': bad round number", text);
    if (is_init && n == 3) {
        r->kind = JOURNAL_INIT;
        if (hex_decode(w[1], r->consortium, MSG_HASH_LEN) < 0 ||
            hex_decode(w[2], r->hash, MSG_HASH_LEN) < 0)
            return err_set("record '%s': bad hex", text);
        return 0;
    }
    if (!strcmp(w[0], "open") && n == 4) {
        r->kind = JOURNAL_OPEN;
        if (hex_decode(w[2], r->hash, MSG_HASH_LEN) < 0 || parse_u64(w[3], &r->deadline) < 0)
            return err_set("record '%s': bad fields", text);
        return 0;
    }
    if (!strcmp(w[0], "accept") && n == 7) {
        r->kind = JOURNAL_ACCEPT;
        if (keys_name_check(w[2]) < 0 || hex_decode(w[3], r->msgid, MSG_ID_LEN) < 0 ||
            hex_decode(w[4], r->digest, MSG_HASH_LEN) < 0 || parse_u64(w[5], &r->size) < 0 ||
            parse_u64(w[6], &r->time) < 0)
            return err_set("record '%s': bad fields", text);
        snprintf(r->member, sizeof r->member, "%s", w[2]);
        return 0;
    }
    if (!strcmp(w[0], "close") && n == 3) {
        r->kind = JOURNAL_CLOSE;
        if (parse_u64(w[2], &r->count) < 0) return err_set("record '%s': bad fields", text);
        return 0;
    }
    if (!strcmp(w[0], "roster") && n == 3) {
        r->kind = JOURNAL_ROSTER;
        if (hex_decode(w[2], r->hash, MSG_HASH_LEN) < 0)
            return err_set("record '%s': bad hex", text);
        return 0;
    }
    if (!strcmp(w[0], "publish") && (n == 3 || n == 5)) {
        r->kind = JOURNAL_PUBLISH;
        if (hex_decode(w[2], r->hash, MSG_HASH_LEN) < 0)
            return err_set("record '%s': bad hex", text);
        r->has_update = n == 5;
        if (r->has_update && (hex_decode(w[3], r->update_hash, MSG_HASH_LEN) < 0 ||
                              parse_u64(w[4], &r->update_size) < 0 || r->update_size == 0))
            return err_set("record '%s': bad update fields", text);
        return 0;
    }
    if (!strcmp(w[0], "fail") && n == 3) {
        r->kind = JOURNAL_FAIL;
        if (strlen(w[2]) > JOURNAL_REASON_MAX) return err_set("record '%s': bad fields", text);
        snprintf(r->reason, sizeof r->reason, "%s", w[2]);
        return 0;
    }
    return err_set("unknown record '%s'", text);
}
