/* tokcorpus — writer and validating reader of the pre-tokenized corpus
 * format (layout in tokcorpus.h). Integers are written byte by byte in
 * little-endian order, so files move between machines unchanged. */
#include "model/tokenizer/tokcorpus.h"

#include "util/err.h"
#include "util/fio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define WBUF_SIZE (1u << 16)

static void put_le(unsigned char *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* ---- writer --------------------------------------------------------------------- */

struct tokcorpus_writer {
    char *path, *tmp;
    int fd;
    uint32_t vocab_size, width, flags;
    uint64_t n_tokens;
    uint64_t *bounds; /* n_docs + 1 entries */
    size_t n_bounds, cap_bounds;
    unsigned char buf[WBUF_SIZE];
    size_t buf_len;
};

static int wflush(tokcorpus_writer *w) {
    if (fio_write_full(w->fd, w->buf, w->buf_len, w->tmp)) return -1;
    w->buf_len = 0;
    return 0;
}

static int wput(tokcorpus_writer *w, uint64_t v, int bytes) {
    if (w->buf_len + (size_t)bytes > WBUF_SIZE && wflush(w)) return -1;
    put_le(w->buf + w->buf_len, v, bytes);
    w->buf_len += (size_t)bytes;
    return 0;
}

static int push_bound(tokcorpus_writer *w, uint64_t b) {
    if (w->n_bounds == w->cap_bounds) {
        size_t cap = w->cap_bounds ? w->cap_bounds * 2 : 1024;
        uint64_t *p = realloc(w->bounds, cap * sizeof *p);
        if (!p) return err_set("%s: out of memory for %zu document boundaries", w->path, cap);
        w->bounds = p;
        w->cap_bounds = cap;
    }
    w->bounds[w->n_bounds++] = b;
    return 0;
}

static void writer_free(tokcorpus_writer *w) {
    if (w->fd >= 0) close(w->fd);
    free(w->path);
    free(w->tmp);
    free(w->bounds);
    free(w);
}

int tokcorpus_writer_open(const char *path, uint32_t vocab_size, uint32_t flags,
                          tokcorpus_writer **out) {
    *out = NULL;
    if (vocab_size == 0) return err_set("%s: vocab_size must be > 0", path);
    tokcorpus_writer *w = calloc(1, sizeof *w);
    if (!w) return err_set("%s: out of memory", path);
    w->fd = -1;
    w->vocab_size = vocab_size;
    w->width = vocab_size <= 65536 ? 2 : 4;
    w->flags = flags;
    size_t n = strlen(path);
    w->path = strdup(path);
    w->tmp = malloc(n + 5);
    if (!w->path || !w->tmp || push_bound(w, 0)) {
        writer_free(w);
        return err_set("%s: out of memory", path);
    }
    memcpy(w->tmp, path, n);
    memcpy(w->tmp + n, ".tmp", 5);
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        err_errno("cannot create %s", w->tmp);
        writer_free(w);
        return -1;
    }
    memset(w->buf, 0, TOKCORPUS_HEADER_SIZE); /* the header is written last */
    w->buf_len = TOKCORPUS_HEADER_SIZE;
    *out = w;
    return 0;
}

int tokcorpus_writer_add(tokcorpus_writer *w, const uint32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= w->vocab_size)
            return err_set("%s: token id %u is not below the vocabulary size %u", w->path, ids[i],
                           w->vocab_size);
        if (wput(w, ids[i], (int)w->width)) return -1;
    }
    w->n_tokens += n;
    return push_bound(w, w->n_tokens);
}

uint64_t tokcorpus_writer_tokens(const tokcorpus_writer *w) {
    return w->n_tokens;
}

void tokcorpus_writer_abort(tokcorpus_writer *w) {
    if (!w) return;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
        unlink(w->tmp);
    }
    writer_free(w);
}

int tokcorpus_writer_finish(tokcorpus_writer *w) {
    for (size_t i = 0; i < w->n_bounds; i++)
        if (wput(w, w->bounds[i], 8)) goto fail;
    if (wflush(w)) goto fail;
    unsigned char h[TOKCORPUS_HEADER_SIZE] = {0};
    memcpy(h, TOKCORPUS_MAGIC, 8);
    put_le(h + 8, TOKCORPUS_VERSION, 4);
    put_le(h + 12, w->width, 4);
    put_le(h + 16, w->vocab_size, 4);
    put_le(h + 20, w->flags, 4);
    put_le(h + 24, w->n_bounds - 1, 8);
    put_le(h + 32, w->n_tokens, 8);
    if (lseek(w->fd, 0, SEEK_SET) != 0) {
        err_errno("cannot seek in %s", w->tmp);
        goto fail;
    }
    if (fio_write_full(w->fd, h, sizeof h, w->tmp)) goto fail;
    if (fsync(w->fd) != 0) {
        err_errno("cannot fsync %s", w->tmp);
        goto fail;
    }
    if (close(w->fd) != 0) {
        w->fd = -1;
        err_errno("cannot close %s", w->tmp);
        unlink(w->tmp);
        writer_free(w);
        return -1;
    }
    w->fd = -1;
    if (rename(w->tmp, w->path) != 0) {
        err_errno("cannot rename %s to %s", w->tmp, w->path);
        unlink(w->tmp);
        writer_free(w);
        return -1;
    }
    int rc = fio_fsync_dir_of(w->path);
    writer_free(w);
    return rc;
fail:
    tokcorpus_writer_abort(w);
    return -1;
}

/* ---- reader --------------------------------------------------------------------- */

struct tokcorpus {
    unsigned char *map;
    size_t size;
    uint32_t width, vocab_size, flags;
    uint64_t n_docs, n_tokens;
    const unsigned char *tokens, *bounds;
};

static int validate(tokcorpus *c, const char *path) {
    const unsigned char *h = c->map;
    if (c->size < TOKCORPUS_HEADER_SIZE || memcmp(h, TOKCORPUS_MAGIC, 8) != 0)
        return err_set("%s: not a fedlora token file (no FLTOKENS header); make one with "
                       "fedlora tokenize",
                       path);
    uint32_t version = (uint32_t)get_le(h + 8, 4);
    if (version != TOKCORPUS_VERSION)
        return err_set("%s: token file version %u, this fedlora reads version %u", path, version,
                       TOKCORPUS_VERSION);
    c->width = (uint32_t)get_le(h + 12, 4);
    c->vocab_size = (uint32_t)get_le(h + 16, 4);
    c->flags = (uint32_t)get_le(h + 20, 4);
    c->n_docs = get_le(h + 24, 8);
    c->n_tokens = get_le(h + 32, 8);
    if ((c->width != 2 && c->width != 4) || c->vocab_size == 0 ||
        (c->width == 2 && c->vocab_size > 65536))
        return err_set("%s: corrupt header: token width %u with vocab_size %u", path, c->width,
                       c->vocab_size);
    if (c->flags & ~TOKCORPUS_FLAG_SPECIAL)
        return err_set("%s: corrupt header: unknown flags 0x%x", path, c->flags);
    for (int i = 40; i < 64; i++)
        if (h[i]) return err_set("%s: corrupt header: reserved bytes are not zero", path);
    uint64_t body = c->size - TOKCORPUS_HEADER_SIZE;
    if (c->n_tokens > body / c->width || c->n_docs >= UINT64_MAX / 8)
        return err_set("%s: truncated or corrupt: %llu tokens do not fit in %zu bytes", path,
                       (unsigned long long)c->n_tokens, c->size);
    uint64_t rest = body - c->n_tokens * c->width;
    if (rest % 8 || rest / 8 != c->n_docs + 1)
        return err_set("%s: truncated or corrupt: %zu bytes, but the header says %llu tokens "
                       "and %llu documents (%llu bytes)",
                       path, c->size, (unsigned long long)c->n_tokens,
                       (unsigned long long)c->n_docs,
                       (unsigned long long)(TOKCORPUS_HEADER_SIZE + c->n_tokens * c->width +
                                            (c->n_docs + 1) * 8));
    c->tokens = h + TOKCORPUS_HEADER_SIZE;
    c->bounds = c->tokens + c->n_tokens * c->width;
    uint64_t prev = 0;
    for (uint64_t i = 0; i <= c->n_docs; i++) {
        uint64_t b = get_le(c->bounds + 8 * i, 8);
        if (b < prev || b > c->n_tokens || (i == 0 && b != 0) ||
            (i == c->n_docs && b != c->n_tokens))
            return err_set("%s: corrupt document boundary %llu (%llu)", path, (unsigned long long)i,
                           (unsigned long long)b);
        prev = b;
    }
    for (uint64_t i = 0; i < c->n_tokens; i++) {
        uint64_t v = get_le(c->tokens + i * c->width, (int)c->width);
        if (v >= c->vocab_size)
            return err_set("%s: token %llu is %llu, not below vocab_size %u", path,
                           (unsigned long long)i, (unsigned long long)v, c->vocab_size);
    }
    return 0;
}

int tokcorpus_open(const char *path, tokcorpus **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno("cannot open %s", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return err_errno("cannot stat %s", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set("%s is not a regular file", path);
    }
    tokcorpus *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return err_set("%s: out of memory", path);
    }
    c->size = (size_t)st.st_size;
    if (c->size >= TOKCORPUS_HEADER_SIZE) {
        void *m = mmap(NULL, c->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            err_errno("cannot map %s", path);
            close(fd);
            free(c);
            return -1;
        }
        c->map = m;
    }
    close(fd);
    if (validate(c, path)) {
        tokcorpus_close(c);
        return -1;
    }
    *out = c;
    return 0;
}

void tokcorpus_close(tokcorpus *c) {
    if (!c) return;
    if (c->map) munmap(c->map, c->size);
    free(c);
}

uint64_t tokcorpus_n_docs(const tokcorpus *c) {
    return c->n_docs;
}

uint64_t tokcorpus_n_tokens(const tokcorpus *c) {
    return c->n_tokens;
}

uint32_t tokcorpus_vocab_size(const tokcorpus *c) {
    return c->vocab_size;
}

uint32_t tokcorpus_flags(const tokcorpus *c) {
    return c->flags;
}

int tokcorpus_doc(const tokcorpus *c, uint64_t doc, uint64_t *start, uint64_t *n) {
    if (doc >= c->n_docs)
        return err_set("document %llu out of range (%llu documents)", (unsigned long long)doc,
                       (unsigned long long)c->n_docs);
    *start = get_le(c->bounds + 8 * doc, 8);
    *n = get_le(c->bounds + 8 * (doc + 1), 8) - *start;
    return 0;
}

int tokcorpus_read(const tokcorpus *c, uint64_t start, size_t n, uint32_t *out) {
    if (start > c->n_tokens || n > c->n_tokens - start)
        return err_set("tokens [%llu, +%zu) out of range (%llu tokens)", (unsigned long long)start,
                       n, (unsigned long long)c->n_tokens);
    const unsigned char *p = c->tokens + start * c->width;
    for (size_t i = 0; i < n; i++) out[i] = (uint32_t)get_le(p + i * c->width, (int)c->width);
    return 0;
}
