/* keys — a member's identity: an Ed25519 signing key and an X25519
 * key-agreement key (docs/architecture.md, "The federation"; the files:
 * docs/formats.md, "Keys and identities").
 *
 * On disk, for identity NAME in directory DIR:
 *   DIR/NAME.sign.pem   Ed25519 private key, PKCS#8 PEM, mode 0600
 *   DIR/NAME.kx.pem     X25519 private key, PKCS#8 PEM, mode 0600
 *   DIR/NAME.id         the public identity, four text lines (mode 0644):
 *                         fedlora-identity v1
 *                         name: NAME
 *                         ed25519: <64 lowercase hex digits>
 *                         x25519: <64 lowercase hex digits>
 * Files are created with O_EXCL, never overwritten. Private keys stay where
 * they were made; only the .id file travels (to the consortium admin).
 *
 * The fingerprint of an identity is
 *   SHA-256("fedlora-identity-v1" || ed25519 public (32) || x25519 public (32))
 * (the label is the 19 ASCII bytes, no terminator). The name is a label
 * chosen by its owner and is not part of it: the fingerprint names the keys.
 * It is printed as 16 groups of 4 hex digits for reading aloud over an
 * out-of-band channel (phone, video call) when the admin adds the member. */
#ifndef FL_WIRE_KEYS_H
#define FL_WIRE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#define KEYS_NAME_MAX 64
#define KEYS_FP_LEN 32
#define KEYS_FP_TEXT_LEN 80 /* 16 groups of 4 hex digits, 15 spaces, NUL */
#define KEYS_ID_FILE_MAX 512
#define KEYS_PATH_MAX 4096 /* one key file's path, NUL included */

typedef struct {
    char name[KEYS_NAME_MAX + 1]; /* 1..64 of [A-Za-z0-9._-], not starting with '.' or '-' */
    uint8_t sign_pub[32];         /* Ed25519 public key (RFC 8032 encoding) */
    uint8_t kx_pub[32];           /* X25519 public key (RFC 7748 u-coordinate) */
} keys_public;

typedef struct {
    keys_public pub;
    uint8_t sign_seed[32]; /* Ed25519 private key (the RFC 8032 seed) */
    uint8_t kx_priv[32];   /* X25519 private scalar */
} keys_secret;

/* 0 when name is a valid identity name (see keys_public.name), else -1 with
 * a message saying what is wrong. Names become file names, hence the rules. */
int keys_name_check(const char *name);

/* The three files of identity name in dir (header comment): the one place
 * that knows how they are named. */
typedef struct {
    char sign[KEYS_PATH_MAX]; /* DIR/NAME.sign.pem */
    char kx[KEYS_PATH_MAX];   /* DIR/NAME.kx.pem */
    char id[KEYS_PATH_MAX];   /* DIR/NAME.id */
} keys_paths;

/* Fills out; -1 when name is not a valid identity name (keys_name_check) or
 * a path would not fit KEYS_PATH_MAX ("path too long: DIR/NAME.sign.pem"). */
int keys_paths_of(keys_paths *out, const char *dir, const char *name);

/* Fresh keys from the CSPRNG. */
int keys_generate(const char *name, keys_secret *out);
void keys_secret_wipe(keys_secret *k);

/* Writes the three files into dir (created, mode 0700, if missing). Refuses
 * when any of them exists; on failure removes what it created. */
int keys_write(const keys_secret *k, const char *dir);

/* The .id text (keys.h header comment), NUL-terminated; -1 if cap is too small. */
int keys_format_public(const keys_public *p, char *buf, size_t cap);
/* Strict parser for .id text: exactly the four lines, in order, each ended by
 * '\n', lowercase hex of the right length, a valid name, nothing else.
 * `what` names the source in errors. */
int keys_parse_public(const char *text, size_t len, keys_public *out, const char *what);
int keys_load_public(const char *path, keys_public *out);

/* Loads DIR/NAME.{sign.pem,kx.pem,id}. Refuses private key files readable
 * or writable by group or others, keys of the wrong type, encrypted PEM, and
 * a .id whose public keys do not match the private ones. */
int keys_load_secret(const char *dir, const char *name, keys_secret *out);

int keys_fingerprint(const keys_public *p, uint8_t fp[KEYS_FP_LEN]);
/* SHA-256("fedlora-x25519-v1" || x25519 public): names a recipient key in
 * the envelope header (17-byte ASCII label). */
int keys_kx_fingerprint(const uint8_t kx_pub[32], uint8_t fp[KEYS_FP_LEN]);
void keys_fingerprint_text(const uint8_t fp[KEYS_FP_LEN], char out[KEYS_FP_TEXT_LEN]);

#endif
