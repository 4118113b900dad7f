/* hello — the signature on HELLO (docs/architecture.md, "The federation":
 * "HELLO (signed) → admit if rostered, active").
 *
 * A node says who it is with its identity's fingerprint, which is public
 * (it is in the roster). To make HELLO mean "the holder of this identity
 * asks", the node signs it with the identity's Ed25519 key over
 *
 *   "fedlora hello v1\n" ‖ consortium id (32) ‖ fingerprint (32)
 *     ‖ time (8 bytes, big-endian unix seconds) ‖ name
 *
 * and the aggregator checks the signature with the key the roster in force
 * gives that fingerprint, and the time against its own clock. The leading
 * text separates these bytes from every other fedlora signature (rosters
 * begin with "fedlora-roster", envelope headers are binary). The time
 * bounds a replayed HELLO to the skew window; HELLO changes no state, so a
 * replay within it reveals only the round's public parameters. */
#ifndef FL_WIRE_HELLO_H
#define FL_WIRE_HELLO_H

#include "wire/keys.h"
#include "wire/msg.h"

#include <stdint.h>

#define HELLO_SKEW_MAX_S 300 /* the aggregator refuses HELLOs whose time is further off */

/* Sets h->time = now and h->sig, signed with k (h->name and h->fingerprint
 * must already be set; the fingerprint must be k's). */
int hello_sign(struct msg_hello *h, const uint8_t consortium[32], const keys_secret *k,
               uint64_t now);
/* 0 when h->sig verifies under pub for this consortium and |h->time − now|
 * <= max_skew_s; -1 with a message saying which (signature, or the clock
 * difference and what to do). */
int hello_verify(const struct msg_hello *h, const uint8_t consortium[32], const keys_public *pub,
                 uint64_t now, uint64_t max_skew_s);

#endif
