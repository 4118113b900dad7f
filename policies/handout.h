/* handout — the adapter every member starts a round from, and what a
 * member's update is when that start is not zero (docs/policies.md, "Where
 * a round starts").
 *
 * A start adapter G = (A0, B0) at the round's rank r and scale s (the
 * round's alpha / r) is handed to every member; member i trains it into
 * (A_i, B_i) on a frozen base that the node offsets by −s·B0·A0, so its
 * model starts exactly at the round's base W and ends at
 *
 *   W + s·(B_i A_i − B0 A0):   member i's update Δ_i = s·(B_i A_i − B0 A0).
 *
 * With B0 = 0 (a fresh start, shared or own) that is s·B_i·A_i as always.
 * The rules of aggregate.h act on Δ_i; as factors it is the rank r_i + r
 * difference adapter B = [B_i | −B0], A = [A_i; A0] at scale s
 * (handout_difference).
 *
 * The next round's start under merge.start "global" (the consortium's
 * adapter continued from round to round), from this round's start G and
 * its update ΔW (the factors aggregate_prepare returned):
 *
 *   fedit  G' = (Σ p_i A_i, Σ p_i B_i): FedAvg of the members' factors, as
 *          Flower's FedAvg and FlowerTune run it; then ΔW = s(B̄Ā − B0A0)
 *          and W' = W + ΔW keeps the model equal to W₀ + s·B̄·Ā (W₀ the
 *          federation's first base) up to rounding, Flower's model;
 *   exact, svd
 *          G' = the rank-r truncated SVD of s·B0·A0 + ΔW (svd.h), as
 *          A' = c·V_rᵀ, B' = U_r Σ_r / (c·s), with c = 1/√3 the row norm
 *          of a fresh (kaiming-uniform) A, so the start keeps a fresh A's
 *          scale and B carries the magnitude; a direction whose σ is 0
 *          (or below 10⁻⁹ σ₁) takes the fresh adapter's row and a zero
 *          column. The base keeps the exact sum: G' only decides where in
 *          (A, B) the next training starts, not the model it starts from.
 *
 * Every step is deterministic (fixed orders, the SVD seeded by the round),
 * so the aggregator and a recomputation make the same start. */
#ifndef FL_POLICIES_HANDOUT_H
#define FL_POLICIES_HANDOUT_H

#include "lora/lora.h"
#include "lora/offset.h"
#include "lora/update.h"
#include "policies/aggregate.h"
#include "policies/policy.h"

#include <stddef.h>
#include <stdint.h>

/* c: the row norm of a fresh A (kaiming-uniform, bound 1/√in:
 * E‖a‖² = in · (1/in)/3). */
#define HANDOUT_ROW_NORM 0.57735026918962576 /* 1/√3 */

/* A zero adapter (A from lora_create's seed 0 draw, B = 0) over the modules
 * of `like`, at another rank and alpha. */
int handout_set_like(const model *m, const lora_set *like, int rank, double alpha, lora_set **out);

/* The difference adapter of member relative to start: rank r_i + r0, B =
 * [B_i | −B0], A = [A_i; A0], each module's scale the member's (which must
 * equal the start's, as must its modules and rank: else an error naming
 * the module). Its s·B·A is Δ_i above. */
int handout_difference(const model *m, const lora_set *member, const lora_set *start,
                       lora_set **out);

/* The next round's start under merge.start "global" (above): from this
 * round's start and members (in the order they were aggregated) with their
 * coefficients coef (aggregate_report.coef), and the round's update u
 * (aggregate_prepare's factors; NULL is refused). fresh: a fresh adapter
 * of the next round (lora_create with its seed), whose rows replace dead
 * directions. round seeds the SVD. */
int handout_next(const policy *pol, const model *m, const lora_set *start,
                 const aggregate_member *members, const double *coef, int K, const update *u,
                 const lora_set *fresh, uint64_t round, lora_set **next);

#endif
