/* policy — the consortium's aggregation policy: one libconfig file that the
 * operators read and audit (docs/policies.md lists every key, its default and
 * the formula behind it; policies/example.policy.cfg is a complete example).
 *
 * The file decides, for every round:
 *   weighting   how much each member counts: p_i ∝ tokens, examples or 1,
 *               with a per-member cap (no member above `cap` of a round);
 *   validation  which submitted updates are refused (policies/validate.h);
 *   robust      the aggregation rule on the dense updates s_i·B_i·A_i: mean,
 *               coordinate-wise median, trimmed mean, multi-Krum, with
 *               optional norm clipping first (policies/robust.h);
 *   merge       how the rule's result becomes the new base: the exact product
 *               merge, FedIT's factor average (inexact, for comparison), or a
 *               rank-r truncated SVD of the merged update;
 *   dp          DP-FedAvg: clip, Gaussian noise from a CSPRNG, an RDP
 *               accountant and a budget (policies/accountant.h, noise.h);
 *   rounds      quorum, deadline, fraction of members sampled per round.
 *
 * policy_defaults gives a complete policy (exact product merge of the
 * token-weighted mean, no DP); policy_parse/policy_load overwrite what the
 * file sets and then policy_check refuses combinations that do not make sense
 * (each message names the key). */
#ifndef FL_POLICIES_POLICY_H
#define FL_POLICIES_POLICY_H

#include <stddef.h>
#include <stdint.h>

#define POLICY_FILE_MAX (1u << 20) /* bytes of policy file read */

typedef enum { POLICY_MODE_PRODUCTION = 0, POLICY_MODE_TEST } policy_mode;
typedef enum {
    POLICY_WEIGHT_TOKENS = 0,
    POLICY_WEIGHT_EXAMPLES,
    POLICY_WEIGHT_EQUAL
} policy_weight_by;
typedef enum {
    POLICY_RULE_MEAN = 0,
    POLICY_RULE_MEDIAN,
    POLICY_RULE_TRIMMED_MEAN,
    POLICY_RULE_KRUM
} policy_rule;
typedef enum { POLICY_MERGE_EXACT = 0, POLICY_MERGE_FEDIT, POLICY_MERGE_SVD } policy_merge;
typedef enum { POLICY_BELOW_QUORUM_WAIT = 0, POLICY_BELOW_QUORUM_FAIL } policy_below_quorum;
/* Where each member's training starts in a round (docs/policies.md, "Where
 * a round starts"): auto (the merge mode's own: fedit shared, exact and svd
 * policy_start_default), own (a fresh adapter each member draws itself),
 * shared (one fresh adapter from the round's public seed, B = 0), global
 * (the consortium's global adapter, continued from round to round). */
typedef enum {
    POLICY_START_AUTO = 0,
    POLICY_START_OWN,
    POLICY_START_SHARED,
    POLICY_START_GLOBAL
} policy_start;
/* What merge.start "auto" means for the exact and svd merges. */
#define POLICY_START_DEFAULT_EXACT POLICY_START_OWN

typedef struct {
    /* "production" (default) or "test": only test mode may draw DP noise and
     * member samples from a seeded, non-cryptographic generator (test_seed). */
    policy_mode mode;
    uint64_t test_seed;

    struct {
        policy_weight_by by; /* tokens (default) | examples | equal */
        double cap;          /* largest share of one member, (0, 1]; 1: no cap */
    } weighting;

    struct {
        double max_norm; /* bound on ‖Σ_modules s·B·A‖_F of one member; 0: none */
        int max_rank;    /* largest LoRA rank accepted; 0: the round's rank */
    } validation;

    struct {
        policy_rule rule;
        double trim_beta; /* trimmed mean: fraction cut from each end, [0, 0.5) */
        int krum_f;       /* multi-Krum: Byzantine members tolerated */
        int krum_m;       /* multi-Krum: members averaged; 0: K − f */
        double clip_norm; /* clip each member's whole update to this norm first; 0: off */
    } robust;

    struct {
        policy_merge mode;
        int svd_rank;        /* POLICY_MERGE_SVD: rank r of the global adapter */
        int svd_oversample;  /* randomized SVD: extra sample columns p (Halko et al.) */
        int svd_power_iters; /* randomized SVD: subspace iterations q */
        int64_t block_bytes; /* working memory for dense per-member blocks */
        policy_start start;  /* where members start a round; resolve with policy_start_of */
    } merge;

    struct {
        int enabled;
        double clip;             /* C: each member's whole update clipped to ‖·‖ <= C */
        double noise_multiplier; /* z: noise std on the weighted sum is z·C */
        double delta;            /* δ at which ε is reported */
        double epsilon_budget;   /* no round starts that would take ε above this */
        /* Per-member weight w_i in [0, 1]: 1 with weighting "equal", else
         * min(n_i / weight_saturation, 1) with n_i tokens or examples. */
        double weight_saturation;
        /* E = q·W, the expected total weight of a round's sampled members;
         * 0: fraction × roster size (right for equal weights only). */
        double expected_weight;
    } dp;

    struct {
        int quorum;                       /* accepted updates needed to aggregate, >= 1 */
        double deadline_s;                /* seconds from opening to closing a round */
        double fraction;                  /* q: each member is sampled with this probability */
        policy_below_quorum below_quorum; /* at the deadline: wait on, or fail the round */
        int max_rounds;                   /* rounds to run; 0: until the DP budget or forever */
    } rounds;
} policy;

/* A complete default policy (docs/policies.md lists the defaults). */
void policy_defaults(policy *p);
/* Refuses inconsistent settings with a message naming the key. */
int policy_check(const policy *p);

/* libconfig text → p (policy_defaults first, then every key the text sets,
 * then policy_check). Unknown keys and groups are errors, so a misspelt key
 * never silently keeps its default. `where` names the source in messages.
 * Only in builds with FEDLORA_NET (libconfig). */
int policy_parse(policy *p, const char *text, size_t len, const char *where);
/* Reads and parses a policy file (at most POLICY_FILE_MAX bytes). */
int policy_load(policy *p, const char *path);

/* Names as the file spells them. */
const char *policy_rule_name(policy_rule r);
const char *policy_merge_name(policy_merge m);
const char *policy_weight_name(policy_weight_by w);
const char *policy_start_name(policy_start s);
/* merge.start with "auto" resolved for the merge mode: fedit starts every
 * member from the round's shared fresh adapter, as FedIT's authors run it;
 * exact and svd from POLICY_START_DEFAULT_EXACT. */
policy_start policy_start_of(const policy *p);

/* ---- rounds ------------------------------------------------------------------ */

typedef enum {
    POLICY_ROUND_WAIT = 0,  /* keep collecting */
    POLICY_ROUND_AGGREGATE, /* close and aggregate now */
    POLICY_ROUND_FAIL       /* close without aggregating (below quorum at the deadline) */
} policy_round_action;

/* What to do with an open round: `accepted` valid updates of `sampled`
 * members asked, `elapsed_s` after it opened. Aggregate when the quorum is
 * met and every sampled member has answered, or when the quorum is met at the
 * deadline; below quorum at the deadline: wait or fail as configured. */
policy_round_action policy_round_decide(const policy *p, int accepted, int sampled,
                                        double elapsed_s);

#endif
