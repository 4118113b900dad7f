/* config — what `fedlora aggregator --config FILE` reads, and the member list.
 *
 * A libconfig file (docs/protocol.md, "Federation flow", lists every key with
 * an example). Relative paths are taken from the file's directory, so a
 * config works from any working directory. Unknown keys are errors: a typo
 * in "quorum" must not silently run with the default. */
#ifndef FL_AGGREGATOR_CONFIG_H
#define FL_AGGREGATOR_CONFIG_H

#include "policies/policy.h"
#include "wire/keys.h"
#include "wire/msg.h"
#include "wire/payload.h"

#include <stdint.h>

#define AGG_PATH_MAX 4096
#define AGG_ENDPOINT_MAX 256
#define AGG_MEMBERS_MAX 4096
/* limits.max_update_ratio's default (docs/policies.md, "Default bounds"). */
#define AGG_MAX_UPDATE_RATIO_DEFAULT 4.0
#define AGG_STATUS_TOKEN_MAX 256 /* STATUS_TOKEN_MAX */
#define AGG_EVAL_SETS_MAX 32     /* eval.data and eval.tasks, each */

typedef struct {
    char id_path[AGG_PATH_MAX]; /* the member's public identity file (fedlora keygen's NAME.id) */
    double max_weight;          /* cap on its aggregation weight p_i, in (0, 1]; 1: none */
} agg_member_config;

typedef struct {
    char file[AGG_PATH_MAX];     /* the config file, for messages */
    char bind[AGG_ENDPOINT_MAX]; /* "bind": tcp://HOST:PORT (port * picks one) */
    int curve; /* "curve": CURVE transport with the members' keys (1, the default), or in the
                  clear (0; docs/threat-model.md, docs/onboarding.md "Moving to CURVE") */
    char keys_dir[AGG_PATH_MAX];       /* "keys.dir" */
    char keys_name[KEYS_NAME_MAX + 1]; /* "keys.name": DIR/NAME.{sign.pem,kx.pem,id} */
    char consortium_name[PAYLOAD_CONSORTIUM_NAME_MAX + 1]; /* "consortium" */
    uint8_t consortium[32];                                /* payload_consortium_id of it */
    /* Who may take part: either "members", a fixed list of identity files,
     * or "roster" = { file; admin; }, the consortium's signed roster
     * (members.h), reloaded while running. Exactly one of the two. */
    int n_members; /* "members": list of groups */
    agg_member_config *members;
    int has_roster;
    char roster_path[AGG_PATH_MAX];    /* "roster.file" */
    uint8_t roster_admin[KEYS_FP_LEN]; /* "roster.admin": the pinned admin fingerprint */
    char base_model[AGG_PATH_MAX];     /* "base_model": HF model dir of the first round's base */
    char state[AGG_PATH_MAX];          /* "state": journal, inbox, versions, metrics */
    uint64_t rounds;                   /* "rounds.count": 1..10^6 */
    uint32_t quorum;       /* "rounds.quorum": 1..members, accepted deltas to close; with a roster,
                              0 (not set) means every active member when the aggregator starts */
    uint32_t deadline_s;   /* "rounds.deadline": seconds a round collects (1..10^7) */
    int fail_below_quorum; /* "rounds.below_quorum": "wait" (0) or "fail" (1) */
    int linger_s; /* "rounds.linger": serve this long after the last round; -1: until signalled */
    int join_current;        /* "rounds.join": a member added while a round is open takes part in it
                                ("current", 1) or from the next round on ("next", 0, the default) */
    struct msg_train train;  /* "train": steps, lr, rank, alpha, targets, batch, seq */
    uint64_t max_submission; /* "limits.max_submission": bytes of one sealed delta */
    double max_update_ratio; /* "limits.max_update_ratio": a module's update at most this many
                                times the norm of the weight it changes (merge.h); 0: no bound */
    /* "policy": the consortium's policy file (docs/policies.md), or none
     * (has_policy 0: exact product merge, p_i ∝ tokens, members' max_weight).
     * With a file, its rounds group decides quorum, deadline and
     * below_quorum (copied into the fields above; the config's own
     * rounds.quorum/deadline/below_quorum must then be absent), its
     * rounds.max_rounds (when > 0) caps rounds.count, and its weighting.cap
     * replaces the members' max_weight (which must then be absent). */
    int has_policy;
    char policy_path[AGG_PATH_MAX];
    policy policy;
    /* "status" = { bind; token; token_file; refresh; }: the read-only status
     * page (status_http.h). bind "HOST:PORT" (port 0: any free one), the
     * bearer token (required when bind is not loopback), the page's reload
     * interval in seconds. */
    int has_status;
    char status_bind[AGG_ENDPOINT_MAX];
    char status_token[AGG_STATUS_TOKEN_MAX + 1];
    int status_refresh_s;
    /* "eval" = { data; tasks; tokenizer; seq; batch; threads; timeout; }:
     * every published version evaluated on these sets (eval.c). */
    int has_eval;
    char **eval_data, **eval_tasks; /* resolved paths */
    int n_eval_data, n_eval_tasks;
    char eval_tokenizer[AGG_PATH_MAX]; /* "" : base_model/tokenizer.json */
    int eval_seq;                      /* 0: fedlora eval's default */
    int eval_batch, eval_threads, eval_timeout_s;
    /* Not from the file: the fedlora binary that runs `fedlora eval`
     * (cmd_aggregator sets it). */
    char eval_exe[AGG_PATH_MAX];
} agg_config;

/* Reads and checks the file (every key, types, ranges); on failure the
 * message names the file, the key and the rule. */
int agg_config_load(agg_config *c, const char *path);
void agg_config_free(agg_config *c);

#endif
