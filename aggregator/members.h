/* members — who may take part: the aggregator's view of the consortium's
 * members (issue #7, docs/onboarding.md).
 *
 * Two sources. A config may list identity files (`members = (...)`): fixed
 * for the process's life. Or it names the consortium's signed roster
 * (`roster = { file; admin; }`, wire/roster.h): then the aggregator pins the
 * admin's fingerprint, reads the newest roster it can verify, and takes a
 * newer one while running (agg_roster_reload: a file watch and SIGHUP), so a
 * university joins, leaves or changes its keys without a restart and
 * without a change anywhere else.
 *
 * Every roster version the aggregator accepted is kept in the state
 * directory, STATE/rosters/v<N>.roster, so that
 *   - a restart starts from the newest version in force and refuses older
 *     files (no rollback, also across restarts);
 *   - an envelope accepted under a key that was rotated away since can
 *     still be opened at aggregation (the key history: every key any
 *     version gave a member), so a rotation loses no pending delta;
 *   - the aggregation of a round, and its offline recomputation, use the
 *     version that was in force when the round closed (the journal says
 *     which; agg_roster_open_version).
 *
 * Rules, from the roster version in force:
 *   - HELLO and a delta's acceptance need the member's CURRENT key and
 *     status active (a revoked member is refused from its next message on;
 *     an old key after a rotation is refused too);
 *   - at aggregation, an accepted envelope opens under any key the member
 *     ever had, but the member must still be active: a revocation drops its
 *     not yet merged delta (that is what "revoked at once" means for data
 *     nothing has used yet);
 *   - observers (role observer) may follow rounds and download versions,
 *     never submit, and do not count towards "every member submitted". */
#ifndef FL_AGGREGATOR_MEMBERS_H
#define FL_AGGREGATOR_MEMBERS_H

#include "aggregator/config.h"
#include "wire/keys.h"

#include <stdint.h>

typedef struct {
    char name[KEYS_NAME_MAX + 1];
    keys_public pub;
    uint8_t fp[KEYS_FP_LEN];
    double max_weight; /* (0, 1] */
    int observer;      /* role observer: may not submit */
    int active;        /* 0: revoked */
} agg_member;

typedef struct agg_roster agg_roster;

/* The config's member list, or the newest verified roster of the config's
 * file and STATE/rosters (a newer file is stored there before it is used).
 * The roster must be for the config's consortium. history_only: the
 * stored versions only, the file is not looked at (offline
 * recomputation reads the state directory and changes nothing). */
int agg_roster_load(agg_roster **out, const agg_config *c, int history_only);
/* The roster as it was at `version` (from STATE/rosters), with the key
 * history of every version up to the newest; for a config list, or when
 * version is the one in force, a copy of r. */
int agg_roster_at(const agg_roster *r, uint64_t version, agg_roster **out);
void agg_roster_free(agg_roster *r);

/* Looks at the roster file (when force is 0: only when its size, mtime or
 * inode changed since the last look). Returns 1 when a newer version was
 * verified, stored and is now in force (*summary says what changed, e.g.
 * "version 4: added uni-d; revoked uni-b"), 0 when nothing changed, -1 when
 * the file was refused (err_msg says why; the version in force stays). */
int agg_roster_reload(agg_roster *r, int force, char *summary, size_t n);

/* 1 and *m when fp is the current key of an active member (observers
 * included), 0 when not, -1 on failure. */
int agg_roster_find(const agg_roster *r, const uint8_t fp[KEYS_FP_LEN], agg_member *m);
/* The same by name. */
int agg_roster_find_name(const agg_roster *r, const char *name, agg_member *m);
/* The same by the X25519 public key: the CURVE key a connection proves
 * (wire/transport.h). */
int agg_roster_find_kx(const agg_roster *r, const uint8_t kx_pub[32], agg_member *m);
/* 1 and the member (its current entry, status included) that ever held key
 * fp; 0 when no version ever had that key. */
int agg_roster_key_owner(const agg_roster *r, const uint8_t fp[KEYS_FP_LEN], agg_member *m);
/* "active", "revoked", "rotated" (an old key of an active member) or
 * "unknown", for STATUS replies and refusals. */
const char *agg_roster_key_status(const agg_roster *r, const uint8_t fp[KEYS_FP_LEN]);
/* The same for a key history entry found by its X25519 key (the CURVE key
 * a connection offered): for the log line of a refused connection. */
const char *agg_roster_kx_status(const agg_roster *r, const uint8_t kx_pub[32]);
/* Every entry of the version in force (revoked ones too), i in [0, size). */
int agg_roster_size(const agg_roster *r);
const agg_member *agg_roster_entry(const agg_roster *r, int i);
/* Active members that submit (observers not counted). */
int agg_roster_count(const agg_roster *r);

/* Signed roster in force: version (0 for a config list), its file's SHA-256
 * and size, and the stored copy's path (served with GET_MODEL by hash). */
uint64_t agg_roster_version(const agg_roster *r);
int agg_roster_hash(const agg_roster *r, uint8_t hash[KEYS_FP_LEN], uint64_t *size);

#endif
