/* hex — lowercase hexadecimal, the one text form of hashes, fingerprints and
 * message ids in our files, journals and logs. */
#ifndef FL_UTIL_HEX_H
#define FL_UTIL_HEX_H

#include <stddef.h>
#include <stdint.h>

/* out: 2n lowercase digits and a NUL (2n + 1 bytes). */
void hex_encode(const uint8_t *in, size_t n, char *out);
/* 0..15 for a lowercase hex digit (also 'A'..'F' when upper_ok), else -1. */
int hex_value(char c, int upper_ok);
/* s must be exactly 2n lowercase digits (a NUL-terminated string); -1 otherwise. */
int hex_decode(const char *s, uint8_t *out, size_t n);

#endif
