/* handout — the adapter each member starts a round from, as the aggregator
 * hands it out (docs/protocol.md, "Start adapters"; docs/policies.md,
 * "Where a round starts").
 *
 * merge.start decides it (the policy file's, or without one
 * POLICY_START_DEFAULT_EXACT for the default exact merge):
 *
 *   own     nothing is handed out; each member draws its own fresh adapter
 *           (ROUND without start fields);
 *   shared  round r's fresh adapter: lora_create at the round's rank, alpha
 *           and targets, seeded with agg_start_seed(consortium, r), B = 0;
 *   global  round 1's shared fresh adapter, then the consortium's adapter
 *           continued: the start of round r+1 is made when round r is
 *           aggregated (policies/handout.h, handout_next), stored as an
 *           object and named by STATE/starts/r<r+1> (one line, its SHA-256
 *           in hex), written durably before round r's publish record. A
 *           round that fails writes none, so its successor keeps the
 *           newest start named at or before it.
 *
 * Every start is a PEFT adapter_model.safetensors (lora/peft.h,
 * peft_save_weights) in the store, served by GET_MODEL under its SHA-256;
 * ROUND carries start_hash and start_size, and start_seed for a fresh one
 * (a node may make it itself, and checks its hash either way). A member's
 * DELTA names the start it trained from; the aggregation drops a delta
 * that names another (or none, when one was handed out). */
#ifndef FL_AGGREGATOR_HANDOUT_H
#define FL_AGGREGATOR_HANDOUT_H

#include "aggregator/config.h"
#include "aggregator/merge.h"
#include "lora/lora.h"
#include "model/model.h"
#include "policies/policy.h"
#include "wire/msg.h"

#include <stdint.h>

/* A round's start, as ROUND describes it. */
typedef struct {
    uint64_t round; /* the round described (0: nothing yet) */
    int has;        /* a start is handed out */
    int from_seed;  /* it is the fresh adapter of `seed` */
    uint64_t seed;
    uint8_t hash[32]; /* SHA-256 of the adapter file */
    uint64_t size;
} agg_start;

/* merge.start, resolved: the policy's, or the default exact merge's. */
policy_start agg_start_mode(const agg_config *c);
/* The public seed of round's fresh start: the first 8 bytes (little-endian)
 * of SHA-256("fedlora-start-v1" ‖ consortium id ‖ round as 8 bytes
 * big-endian). */
uint64_t agg_start_seed(const uint8_t consortium[32], uint64_t round);
/* lora_create's config for the round's adapters: c's train rank, alpha and
 * targets, with seed. Free with lora_config_free. */
int agg_start_config(const agg_config *c, uint64_t seed, lora_config *cfg);

/* Round's start: *info, and (set != NULL) the adapter itself on m (the
 * round's base: only its shapes matter), NULL when none is handed out. A
 * fresh start's file is written into the store the first time. */
int agg_start_of(const agg_config *c, const model *m, uint64_t round, agg_start *info,
                 lora_set **set);
/* 0 when update u was trained from the start info describes (or none is
 * handed out), 1 (why says so) when not. */
int agg_start_check(const agg_start *info, const agg_update *u, char why[AGG_WHY_MAX]);
/* Under merge.start "global", after round's merge: the next round's start
 * from this round's (start) and what was merged (the kept updates u[0..n),
 * their weights w, the change), into the store and STATE/starts/r<round+1>.
 * Nothing under other modes. */
int agg_start_publish_next(const agg_config *c, const model *m, uint64_t round,
                           const lora_set *start, const agg_update *u, int n, const double *w,
                           const agg_change *change);
/* The optional ROUND fields of a's open round: start_* (described once per
 * round, kept in a->start) and base_size (the base version's bytes). */
struct agg;
int agg_start_round_fields(struct agg *a, struct msg_round *r);

#endif
