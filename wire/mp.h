/* mp — a bounded reader for untrusted msgpack bytes.
 *
 * msgpack-c's unpacker believes the counts it reads: five bytes `dd ff ff ff
 * ff` (an array of 2^32-1 elements) make it ask its zone for 2^32 objects
 * before it has seen a single element, and it has no limit on string sizes or
 * the total. So bytes from the network never go to msgpack-c. mp_validate
 * walks a buffer once, without allocating and without recursion, and refuses
 * it unless every count and length fits in the bytes that are left and every
 * limit below holds; the schema decoder (msg.c) then reads the fields in place
 * with the mp_read_* cursor functions, which never read past the end either.
 *
 * Format: https://github.com/msgpack/msgpack/blob/master/spec.md. Extension
 * types (fixext, ext 8/16/32) and the reserved byte 0xc1 are refused: the
 * protocol uses neither. */
#ifndef FL_WIRE_MP_H
#define FL_WIRE_MP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Hard ceiling on mp_limits.max_depth: the size of the validator's stack. */
#define MP_DEPTH_MAX 64

struct mp_limits {
    size_t max_total;   /* bytes in the whole buffer */
    uint32_t max_depth; /* containers inside containers: a map of scalars is depth 1 */
    uint32_t max_items; /* elements of one array, or key/value pairs of one map */
    uint32_t max_str;   /* bytes of one string */
    uint32_t max_bin;   /* bytes of one blob (bin 8/16/32) */
};

enum mp_type {
    MP_END, /* no bytes left */
    MP_NIL,
    MP_BOOL,
    MP_INT, /* any integer encoding, signed or not */
    MP_FLOAT,
    MP_STR,
    MP_BIN,
    MP_ARRAY,
    MP_MAP,
    MP_EXT,     /* refused everywhere, named in errors */
    MP_INVALID, /* the reserved byte 0xc1 */
};

/* A cursor over a buffer the caller keeps alive; start is kept for offsets in
 * error messages. */
struct mp_reader {
    const uint8_t *start, *p, *end;
};

void mp_init(struct mp_reader *r, const void *buf, size_t len);
size_t mp_left(const struct mp_reader *r);
/* Offset of the cursor from the start of the buffer, for error messages. */
size_t mp_offset(const struct mp_reader *r);

/* Checks that buf holds exactly one msgpack object (no trailing bytes) within
 * the limits; every array/map count is checked against the bytes left before
 * anything else happens. Allocates nothing. */
int mp_validate(const void *buf, size_t len, const struct mp_limits *lim);

/* The type of the next object, without consuming it. */
enum mp_type mp_peek(const struct mp_reader *r);
/* "an integer", "a string", ... for "must be X, got Y" messages. */
const char *mp_type_name(enum mp_type t);

/* Each reads one object of the named type and advances the cursor; on a type
 * mismatch or truncation it returns -1 with a message and leaves the cursor
 * where it was. Strings and blobs are views into the buffer (not copied, not
 * NUL-terminated). Counts of arrays and maps are checked against the bytes
 * left (each element takes at least one byte). */
int mp_read_bool(struct mp_reader *r, bool *v);
/* Any integer encoding holding a value >= 0. */
int mp_read_uint(struct mp_reader *r, uint64_t *v);
/* float 32/64 or any integer, converted to double. */
int mp_read_double(struct mp_reader *r, double *v);
int mp_read_str(struct mp_reader *r, const char **s, uint32_t *len);
int mp_read_bin(struct mp_reader *r, const uint8_t **b, uint32_t *len);
int mp_read_array(struct mp_reader *r, uint32_t *n);
int mp_read_map(struct mp_reader *r, uint32_t *pairs);
/* Skips one whole object, containers included, iteratively (no recursion). */
int mp_skip(struct mp_reader *r);

#endif
