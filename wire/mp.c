/* mp — bounded msgpack reader; see mp.h for why it exists.
 *
 * Everything goes through head(), which decodes one object header (the type
 * byte and its fixed-size fields, following the format table of the msgpack
 * spec) and checks that those bytes are present. Callers then check the
 * variable part (string/blob bytes, container elements) against the bytes
 * left before touching it. */
#include "wire/mp.h"

#include "util/err.h"

#include <string.h>

struct head {
    enum mp_type type;
    size_t len; /* bytes of the header itself */
    uint32_t n; /* string/blob bytes, array elements, map pairs, ext bytes */
    bool neg;   /* integer below zero: value in i; otherwise in u */
    uint64_t u;
    int64_t i;
    double f;
    bool b;
};

static uint64_t be(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int k = 0; k < bytes; k++) v = v << 8 | p[k];
    return v;
}

void mp_init(struct mp_reader *r, const void *buf, size_t len) {
    r->start = buf;
    r->p = buf;
    r->end = r->p + len;
}

size_t mp_left(const struct mp_reader *r) {
    return (size_t)(r->end - r->p);
}

size_t mp_offset(const struct mp_reader *r) {
    return (size_t)(r->p - r->start);
}

const char *mp_type_name(enum mp_type t) {
    switch (t) {
        case MP_END:
            return "the end of the data";
        case MP_NIL:
            return "nil";
        case MP_BOOL:
            return "a boolean";
        case MP_INT:
            return "an integer";
        case MP_FLOAT:
            return "a float";
        case MP_STR:
            return "a string";
        case MP_BIN:
            return "a blob";
        case MP_ARRAY:
            return "an array";
        case MP_MAP:
            return "a map";
        case MP_EXT:
            return "an extension object";
        case MP_INVALID:
            return "the reserved byte 0xc1";
    }
    return "an unknown type";
}

/* Type bytes 0xc4..0xdf (the spec's format table): the type, and how many
 * fixed bytes follow the type byte (a length, a count, or the value). For ext
 * formats that includes the ext type byte. */
#define F(tag) [(tag)-0xc0]
static const struct {
    enum mp_type type;
    uint8_t extra;
} formats[32] = {
    // clang-format off
    F(0xc4) = {MP_BIN, 1},   F(0xc5) = {MP_BIN, 2},   F(0xc6) = {MP_BIN, 4},
    F(0xc7) = {MP_EXT, 2},   F(0xc8) = {MP_EXT, 3},   F(0xc9) = {MP_EXT, 5},
    F(0xca) = {MP_FLOAT, 4}, F(0xcb) = {MP_FLOAT, 8},
    F(0xcc) = {MP_INT, 1},   F(0xcd) = {MP_INT, 2},   F(0xce) = {MP_INT, 4},   F(0xcf) = {MP_INT, 8},
    F(0xd0) = {MP_INT, 1},   F(0xd1) = {MP_INT, 2},   F(0xd2) = {MP_INT, 4},   F(0xd3) = {MP_INT, 8},
    F(0xd4) = {MP_EXT, 1},   F(0xd5) = {MP_EXT, 1},   F(0xd6) = {MP_EXT, 1},   F(0xd7) = {MP_EXT, 1},
    F(0xd8) = {MP_EXT, 1},
    F(0xd9) = {MP_STR, 1},   F(0xda) = {MP_STR, 2},   F(0xdb) = {MP_STR, 4},
    F(0xdc) = {MP_ARRAY, 2}, F(0xdd) = {MP_ARRAY, 4}, F(0xde) = {MP_MAP, 2},   F(0xdf) = {MP_MAP, 4},
    // clang-format on
};
#undef F

static int head(const struct mp_reader *r, struct head *h) {
    memset(h, 0, sizeof *h);
    size_t left = mp_left(r);
    if (left == 0) {
        h->type = MP_END;
        return err_set("expected a value at byte %zu, but the data ends there", mp_offset(r));
    }
    const uint8_t *p = r->p;
    uint8_t tag = p[0];
    h->len = 1;

    if (tag <= 0x7f) {
        h->type = MP_INT, h->u = tag;
        return 0;
    }
    if (tag >= 0xe0) {
        h->type = MP_INT, h->neg = true, h->i = (int8_t)tag;
        return 0;
    }
    if (tag >= 0x80 && tag <= 0x8f) {
        h->type = MP_MAP, h->n = tag & 0x0f;
        return 0;
    }
    if (tag >= 0x90 && tag <= 0x9f) {
        h->type = MP_ARRAY, h->n = tag & 0x0f;
        return 0;
    }
    if (tag >= 0xa0 && tag <= 0xbf) {
        h->type = MP_STR, h->n = tag & 0x1f;
        return 0;
    }
    switch (tag) {
        case 0xc0:
            h->type = MP_NIL;
            return 0;
        case 0xc1:
            h->type = MP_INVALID;
            return err_set("reserved byte 0xc1 at byte %zu is not valid msgpack", mp_offset(r));
        case 0xc2:
        case 0xc3:
            h->type = MP_BOOL, h->b = tag == 0xc3;
            return 0;
    }
    h->type = formats[tag - 0xc0].type;
    int extra = formats[tag - 0xc0].extra; /* fixed bytes after the type byte */
    if ((size_t)extra > left - 1)
        return err_set("truncated %s at byte %zu: its header needs %d more bytes, %zu left",
                       mp_type_name(h->type), mp_offset(r), extra, left - 1);
    h->len = 1 + (size_t)extra;
    const uint8_t *q = p + 1;
    switch (h->type) {
        case MP_BIN:
        case MP_STR:
        case MP_ARRAY:
        case MP_MAP:
            h->n = (uint32_t)be(q, extra);
            break;
        case MP_EXT:
            /* fixext: 1, 2, 4, 8, 16 data bytes; ext 8/16/32: a length. Either
             * way a type byte follows; only errors name this type. */
            h->n = tag >= 0xd4 ? 1u << (tag - 0xd4) : (uint32_t)be(q, extra - 1);
            break;
        case MP_FLOAT:
            if (extra == 4) {
                uint32_t bits = (uint32_t)be(q, 4);
                float f;
                memcpy(&f, &bits, sizeof f);
                h->f = f;
            } else {
                uint64_t bits = be(q, 8);
                memcpy(&h->f, &bits, sizeof h->f);
            }
            break;
        case MP_INT:
            if (tag <= 0xcf) {
                h->u = be(q, extra);
            } else {
                /* Two's complement of the given width, sign-extended. */
                uint64_t raw = be(q, extra);
                int shift = 64 - 8 * extra;
                int64_t v = (int64_t)(raw << shift) >> shift;
                if (v < 0)
                    h->neg = true, h->i = v;
                else
                    h->u = (uint64_t)v;
            }
            break;
        default:
            break;
    }
    return 0;
}

/* The variable part that follows a header: bytes of a string/blob/ext, or the
 * minimum bytes a container's elements take (one per element). */
static uint64_t body_min(const struct head *h) {
    switch (h->type) {
        case MP_STR:
        case MP_BIN:
            return h->n;
        case MP_EXT:
            return (uint64_t)h->n + 1;
        case MP_ARRAY:
            return h->n;
        case MP_MAP:
            return 2 * (uint64_t)h->n;
        default:
            return 0;
    }
}

static int check_body(const struct mp_reader *r, const struct head *h) {
    uint64_t need = body_min(h);
    size_t left = mp_left(r) - h->len;
    if (need <= left) return 0;
    if (h->type == MP_ARRAY || h->type == MP_MAP)
        return err_set("%s header at byte %zu claims %u %s, but only %zu bytes follow",
                       h->type == MP_ARRAY ? "array" : "map", mp_offset(r), h->n,
                       h->type == MP_ARRAY ? "elements" : "pairs", left);
    return err_set("%s at byte %zu claims %llu bytes, but only %zu bytes follow",
                   mp_type_name(h->type), mp_offset(r), (unsigned long long)need, left);
}

int mp_validate(const void *buf, size_t len, const struct mp_limits *lim) {
    if (lim->max_depth > MP_DEPTH_MAX)
        return err_set("msgpack limits: max_depth %u is over the ceiling %d", lim->max_depth,
                       MP_DEPTH_MAX);
    if (len > lim->max_total)
        return err_set("%zu bytes is over the limit of %zu bytes for one message", len,
                       lim->max_total);
    struct mp_reader r;
    mp_init(&r, buf, len);
    /* pending[d]: objects still to read inside the d-th open container
     * (pending[0]: the single top-level object). An element is read at depth
     * `depth`; a container found there opens depth + 1. */
    uint64_t pending[MP_DEPTH_MAX + 1];
    uint32_t depth = 0;
    pending[0] = 1;
    /* The sum of pending[]: each of those objects needs at least one byte. */
    uint64_t outstanding = 1;
    for (;;) {
        while (depth > 0 && pending[depth] == 0) depth--;
        if (pending[depth] == 0) break;
        pending[depth]--;
        outstanding--;
        struct head h;
        if (head(&r, &h) < 0) return -1;
        if (h.type == MP_EXT)
            return err_set("extension object at byte %zu: extensions are not part of the protocol",
                           mp_offset(&r));
        if (h.type == MP_STR && h.n > lim->max_str)
            return err_set("string at byte %zu is %u bytes, over the limit of %u", mp_offset(&r),
                           h.n, lim->max_str);
        if (h.type == MP_BIN && h.n > lim->max_bin)
            return err_set("blob at byte %zu is %u bytes, over the limit of %u", mp_offset(&r), h.n,
                           lim->max_bin);
        if (h.type == MP_ARRAY || h.type == MP_MAP) {
            if (h.n > lim->max_items)
                return err_set("%s at byte %zu has %u %s, over the limit of %u",
                               mp_type_name(h.type), mp_offset(&r), h.n,
                               h.type == MP_ARRAY ? "elements" : "pairs", lim->max_items);
            if (depth + 1 > lim->max_depth)
                return err_set("%s at byte %zu is nested %u deep, over the limit of %u",
                               mp_type_name(h.type), mp_offset(&r), depth + 1, lim->max_depth);
        }
        if (check_body(&r, &h) < 0) return -1;
        r.p += h.len;
        if (h.type == MP_STR || h.type == MP_BIN) r.p += h.n;
        if ((h.type == MP_ARRAY || h.type == MP_MAP) && h.n > 0) {
            depth++;
            pending[depth] = body_min(&h);
            outstanding += pending[depth];
            if (outstanding > mp_left(&r))
                return err_set("containers open at byte %zu claim %llu more values, but only %zu "
                               "bytes follow",
                               mp_offset(&r), (unsigned long long)outstanding, mp_left(&r));
        }
    }
    if (r.p != r.end)
        return err_set("%zu unexpected bytes after the end of the message at byte %zu", mp_left(&r),
                       mp_offset(&r));
    return 0;
}

enum mp_type mp_peek(const struct mp_reader *r) {
    struct head h;
    head(r, &h); /* on failure h.type still names what was found */
    return h.type;
}

/* Reads a header that must be of type `want`, with its body present. */
static int take(struct mp_reader *r, enum mp_type want, struct head *h) {
    if (head(r, h) < 0) return -1;
    if (h->type != want)
        return err_set("expected %s at byte %zu, got %s", mp_type_name(want), mp_offset(r),
                       mp_type_name(h->type));
    if (check_body(r, h) < 0) return -1;
    r->p += h->len;
    return 0;
}

int mp_read_bool(struct mp_reader *r, bool *v) {
    struct head h;
    if (take(r, MP_BOOL, &h) < 0) return -1;
    *v = h.b;
    return 0;
}

int mp_read_uint(struct mp_reader *r, uint64_t *v) {
    struct head h;
    if (head(r, &h) < 0) return -1;
    if (h.type != MP_INT)
        return err_set("expected an integer at byte %zu, got %s", mp_offset(r),
                       mp_type_name(h.type));
    if (h.neg)
        return err_set("expected a non-negative integer at byte %zu, got %lld", mp_offset(r),
                       (long long)h.i);
    r->p += h.len;
    *v = h.u;
    return 0;
}

int mp_read_double(struct mp_reader *r, double *v) {
    struct head h;
    if (head(r, &h) < 0) return -1;
    if (h.type == MP_FLOAT)
        *v = h.f;
    else if (h.type == MP_INT)
        *v = h.neg ? (double)h.i : (double)h.u;
    else
        return err_set("expected a number at byte %zu, got %s", mp_offset(r), mp_type_name(h.type));
    r->p += h.len;
    return 0;
}

int mp_read_str(struct mp_reader *r, const char **s, uint32_t *len) {
    struct head h;
    if (take(r, MP_STR, &h) < 0) return -1;
    *s = (const char *)r->p;
    *len = h.n;
    r->p += h.n;
    return 0;
}

int mp_read_bin(struct mp_reader *r, const uint8_t **b, uint32_t *len) {
    struct head h;
    if (take(r, MP_BIN, &h) < 0) return -1;
    *b = r->p;
    *len = h.n;
    r->p += h.n;
    return 0;
}

int mp_read_array(struct mp_reader *r, uint32_t *n) {
    struct head h;
    if (take(r, MP_ARRAY, &h) < 0) return -1;
    *n = h.n;
    return 0;
}

int mp_read_map(struct mp_reader *r, uint32_t *pairs) {
    struct head h;
    if (take(r, MP_MAP, &h) < 0) return -1;
    *pairs = h.n;
    return 0;
}

int mp_skip(struct mp_reader *r) {
    /* Objects still to skip; containers add their elements. Every object
     * takes at least one byte, so more pending objects than bytes left is
     * malformed: checking that keeps `pending` bounded by the buffer size. */
    const uint8_t *save = r->p;
    uint64_t pending = 1;
    while (pending > 0) {
        struct head h;
        if (head(r, &h) < 0) goto fail;
        if (h.type == MP_EXT) {
            err_set("extension object at byte %zu: extensions are not part of the protocol",
                    mp_offset(r));
            goto fail;
        }
        if (check_body(r, &h) < 0) goto fail;
        pending--;
        r->p += h.len;
        if (h.type == MP_STR || h.type == MP_BIN)
            r->p += h.n;
        else if (h.type == MP_ARRAY || h.type == MP_MAP)
            pending += body_min(&h);
        if (pending > mp_left(r)) {
            err_set("containers ending at byte %zu claim %llu more values, but only %zu bytes "
                    "follow",
                    mp_offset(r), (unsigned long long)pending, mp_left(r));
            goto fail;
        }
    }
    return 0;
fail:
    r->p = save;
    return -1;
}
