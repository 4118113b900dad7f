/* roster — the consortium's signed, versioned list of members
 * (docs/architecture.md, "The federation": onboarding; the byte-by-byte
 * format is in docs/onboarding.md, "Roster file").
 *
 * A roster is a strict line-based text file:
 *
 *   fedlora-roster v1
 *   consortium: <1..128 printable ASCII bytes>
 *   version: <1..2^53, decimal, no leading zeros>
 *   previous: <SHA-256 of the whole previous roster file, 64 hex> | none (version 1 only)
 *   issued: <YYYY-MM-DDTHH:MM:SSZ>
 *   admin: <name> ed25519=<64 hex> x25519=<64 hex>
 *   members: <N>
 *   member: name=<n> role=member|observer max-weight=<w> status=active|revoked
 *           ed25519=<64 hex> x25519=<64 hex> added=<date> revoked=<date|-> rotated=<date|->
 *   ... (N member lines, one line each; wrapped here only)
 *   signature: <128 hex: Ed25519 signature by the admin key over every byte above>
 *
 * There is exactly one encoding of a given roster (fixed order, single spaces,
 * lowercase hex, canonical numbers): the parser re-encodes what it read and
 * refuses the file unless the bytes are identical, so what the signature
 * covers is exactly what the reader understood. The signed bytes begin with
 * the magic line, which no other fedlora signature (envelope headers are
 * binary) can begin with.
 *
 * Trust: the admin is an ordinary `fedlora keygen` identity; readers pin its
 * fingerprint (keys.h) and refuse a roster whose admin line names another
 * identity, whose signature does not verify, or whose version is older than
 * the one in force (no rollback). Each change is a new version whose
 * `previous` is the SHA-256 of the whole file it replaces: a hash chain that
 * roster_check_chain verifies between consecutive versions. */
#ifndef FL_WIRE_ROSTER_H
#define FL_WIRE_ROSTER_H

#include "wire/crypto.h"
#include "wire/keys.h"
#include "wire/payload.h"

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ROSTER_MEMBERS_MAX 4096
#define ROSTER_FILE_MAX (2u << 20) /* 4096 member lines of < 400 bytes fit */
#define ROSTER_VERSION_MAX (1ull << 53)
#define ROSTER_WEIGHT_ONE 1000000u /* max weights are kept in millionths */

typedef enum { ROSTER_ROLE_MEMBER, ROSTER_ROLE_OBSERVER } roster_role;

typedef struct {
    char name[KEYS_NAME_MAX + 1]; /* the member's name in the roster (keys_name_check rules) */
    roster_role role;
    uint32_t max_weight; /* cap on its aggregation weight, millionths in [1, 1000000] */
    int active;          /* status: 1 active, 0 revoked */
    keys_public pub; /* the member's keys; pub.name = name (the .id file's own label is not kept) */
    uint8_t fp[KEYS_FP_LEN]; /* keys_fingerprint(&pub), computed, not stored in the file */
    int64_t added;           /* UTC seconds since 1970; > 0 */
    int64_t revoked;         /* 0 while active */
    int64_t rotated;         /* last key rotation; 0: never */
} roster_member;

typedef struct {
    char consortium[PAYLOAD_CONSORTIUM_NAME_MAX + 1];
    uint64_t version;                    /* 1, 2, ... each change adds one */
    uint8_t previous[CRYPTO_SHA256_LEN]; /* SHA-256 of version-1's file; zeros for version 1 */
    int64_t issued;
    keys_public admin;
    uint8_t admin_fp[KEYS_FP_LEN];
    uint32_t n_members;
    roster_member *members; /* in the order they were added */
    uint8_t signature[CRYPTO_ED25519_SIG_LEN];
    uint8_t hash[CRYPTO_SHA256_LEN]; /* SHA-256 of the whole file (valid after roster_parse /
                                        roster_write) */
} roster;

/* A fresh version 1 with no members for consortium (payload.h name rules),
 * administered by admin, issued at now. */
int roster_init(roster *r, const char *consortium, const keys_public *admin, int64_t now);
void roster_free(roster *r);

/* Starts the next version: version + 1, previous = hash of the current file,
 * issued = now. Call it once before the changes that make up a version. */
int roster_next_version(roster *r, int64_t now);

/* Appends an active member named after its identity (pub->name). Refuses a
 * name or a fingerprint already in the roster, revoked members included (a
 * revoked key never comes back under another name). */
int roster_add(roster *r, const keys_public *pub, roster_role role, uint32_t max_weight,
               int64_t now);
/* Marks member `name` revoked at now; refuses unknown or already revoked. */
int roster_revoke(roster *r, const char *name, int64_t now);
/* Gives active member `name` new keys (same name, role and weight); refuses
 * keys already in the roster. */
int roster_rotate(roster *r, const char *name, const keys_public *pub, int64_t now);

/* Signs r with the admin's secret key (it must be r->admin) and writes it to
 * path atomically (util/fio.h, mode 0644); fills r->signature and r->hash. */
int roster_write(roster *r, const keys_secret *admin, const char *path);

/* Strict parse of roster text (len bytes; `what` names it in errors) into
 * out, hash included. Checks the format, canonical form, limits and the
 * internal rules (unique names and fingerprints, status vs dates), NOT the
 * signature: use roster_verify, or roster_load which does both. */
int roster_parse(const char *text, size_t len, roster *out, const char *what);
/* The admin line must name the pinned identity (admin_fp), the signature must
 * verify, and the version must be >= min_version (0 or 1: no minimum).
 * Each refusal says which rule failed: "not the pinned admin", "signature",
 * "rollback refused". */
int roster_verify(const roster *r, const uint8_t admin_fp[KEYS_FP_LEN], uint64_t min_version);
/* roster_parse + roster_verify of the file at path (at most ROSTER_FILE_MAX
 * bytes). On failure *out holds nothing to free. */
int roster_load(const char *path, const uint8_t admin_fp[KEYS_FP_LEN], uint64_t min_version,
                roster *out);
/* newer must be the version right after older, with previous == older's hash,
 * the same consortium and the same admin ("broken hash chain" otherwise). */
int roster_check_chain(const roster *older, const roster *newer);

/* The whole file's text (malloc'd, *len bytes, NUL-terminated) with the
 * current signature. */
int roster_encode(const roster *r, char **text, size_t *len);

/* The member with these keys (active or not), or NULL. */
const roster_member *roster_find_member(const roster *r, const uint8_t fp[KEYS_FP_LEN]);
const roster_member *roster_find_name(const roster *r, const char *name);
static inline double roster_weight(const roster_member *m) {
    return m->max_weight / (double)ROSTER_WEIGHT_ONE;
}

const char *roster_role_name(roster_role role);

/* A fingerprint as typed by a person: 64 hex digits, either case, spaces
 * allowed anywhere (the grouped form keys_fingerprint_text prints). */
int roster_fingerprint_parse(const char *text, uint8_t fp[KEYS_FP_LEN]);
/* Max weight text: "1" or "0." and 1..6 digits (no trailing zero), > 0. */
int roster_weight_parse(const char *text, size_t len, uint32_t *max_weight);
void roster_weight_format(uint32_t max_weight, char out[10]);
/* UTC date text YYYY-MM-DDTHH:MM:SSZ (20 characters + NUL). */
void roster_date_format(int64_t t, char out[21]);

#endif
