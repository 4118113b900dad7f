/* rounds — the round state machine (agg.h draws it).
 *
 * The journal (journal.h lists its records) is the one source of the
 * round's state: every transition is a journal_record, appended (and
 * fsync'd) by agg_commit and then applied to the in-memory state by
 * agg_apply, the same function that replays the journal at start (as Redis
 * replays its append-only file through the code that serves live commands).
 * So a transition is written once, and a restart rebuilds exactly the state
 * the live process had.
 *
 * Each record is written (and fsync'd) before the step that depends on it
 * becomes visible: a RECEIPT after its accept, the next open after its
 * publish. A crash between a step and its record repeats the step after the
 * restart, and every step is idempotent or deterministic (an inbox file
 * renamed again over itself, a version published again under the same
 * hash).
 *
 * Also here: the acceptance list, who takes part in a round (the roster in
 * force, rounds.join), and the DP budget that stops the federation. */
#include "aggregator/state.h"

#include "aggregator/store.h"
#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define UPLOAD_IDLE_S 600 /* an upload silent this long is dropped */

const char *agg_state_name(agg_state s) {
    switch (s) {
        case AGG_OPEN:
            return "OPEN";
        case AGG_COLLECTING:
            return "COLLECTING";
        case AGG_AGGREGATING:
            return "AGGREGATING";
        case AGG_PUBLISHED:
            return "PUBLISHED";
        case AGG_FAILED:
            return "FAILED";
        case AGG_FINISHED:
            return "FINISHED";
    }
    return "?";
}

/* ---- the acceptance list and accessors -------------------------------------- */

static int add_accept(agg *a, const accept_rec *r) {
    if (a->nacc == a->capacc) {
        size_t cap = a->capacc ? 2 * a->capacc : 64;
        accept_rec *p = realloc(a->acc, cap * sizeof *p);
        if (!p) return err_set("out of memory for the acceptance list");
        a->acc = p;
        a->capacc = cap;
    }
    a->acc[a->nacc++] = *r;
    return 0;
}

const accept_rec *agg_find_msgid(const agg *a, const uint8_t id[MSG_ID_LEN]) {
    for (size_t i = 0; i < a->nacc; i++)
        if (memcmp(a->acc[i].msgid, id, MSG_ID_LEN) == 0) return &a->acc[i];
    return NULL;
}

/* acc is in journal order, so its rounds never go down: a round's
 * acceptances are the tail from the newest back to the first older round
 * (all_in runs this every tick; the list holds every round's). */
const accept_rec *agg_find_member(const agg *a, uint64_t round, const char *member) {
    for (size_t i = a->nacc; i-- > 0 && a->acc[i].round >= round;)
        if (a->acc[i].round == round && strcmp(a->acc[i].member, member) == 0) return &a->acc[i];
    return NULL;
}

int agg_accepted_count(const agg *a) {
    int n = 0;
    for (size_t i = a->nacc; i-- > 0 && a->acc[i].round >= a->round;)
        n += a->acc[i].round == a->round;
    return n;
}

agg_state agg_get_state(const agg *a) {
    return a->state;
}

uint64_t agg_current_round(const agg *a) {
    return a->round;
}

void agg_current_base(const agg *a, uint8_t hash[32]) {
    memcpy(hash, a->state == AGG_FINISHED ? a->version : a->base, 32);
}

void agg_set_policy(agg *a, const agg_policy *p) {
    a->policy = p ? p : agg_policy_default();
}

int agg_open_state(const agg *a) {
    return a->state == AGG_OPEN || a->state == AGG_COLLECTING;
}

/* ---- transitions: the journal's records applied ------------------------------ */

/* Applies one record to the state: the only place where the round's state
 * changes. Replay (at start, and read-only for agg_recompute) and the live
 * aggregator (commit, right after the append) both come here, so a record
 * means the same whether it is being written or read back. A record that
 * does not follow from the state (a round out of order, an acceptance twice)
 * is refused: in a replay that is a damaged journal, live it would be a bug. */
int agg_apply(agg *a, const journal_record *r) {
    unsigned long long rn = (unsigned long long)r->round, cur = (unsigned long long)a->round;
    const char *kind = journal_kind_name(r->kind), *st = agg_state_name(a->state);
    if (r->kind != JOURNAL_INIT && !a->initialized)
        return err_set("a '%s' record before 'init'", kind);
    switch (r->kind) {
        case JOURNAL_INIT:
            if (a->initialized) return err_set("a second 'init' record");
            if (memcmp(r->consortium, a->cfg.consortium, 32) != 0)
                return err_set("this state directory belongs to another consortium than '%s' "
                               "(its id differs); use a new state directory",
                               a->cfg.consortium_name);
            memcpy(a->version, r->hash, 32);
            memcpy(a->initial, r->hash, 32);
            a->initialized = 1;
            a->state = AGG_PUBLISHED; /* round 0's version: the imported base */
            a->round = 0;
            return 0;
        case JOURNAL_OPEN:
            if ((a->state != AGG_PUBLISHED && a->state != AGG_FAILED) || r->round != a->round + 1)
                return err_set("'open %llu' in state %s of round %llu", rn, st, cur);
            a->round = r->round;
            memcpy(a->base, r->hash, 32);
            a->deadline = r->deadline;
            a->state = AGG_OPEN;
            a->open_roster = a->journal_roster;
            agg_roster_free(a->open_view);
            a->open_view = NULL;
            a->bytes_received = a->bytes_served = 0;
            a->refused = a->nrefusals = 0;
            a->below_quorum_logged = 0;
            return 0;
        case JOURNAL_ACCEPT: {
            if (r->round != a->round || !agg_open_state(a))
                return err_set("'accept' for round %llu in state %s of round %llu", rn, st, cur);
            if (agg_find_member(a, r->round, r->member) || agg_find_msgid(a, r->msgid))
                return err_set("record 'accept %llu %s': accepted twice", rn, r->member);
            accept_rec ar = {.round = r->round, .size = r->size, .time = r->time};
            snprintf(ar.member, sizeof ar.member, "%s", r->member);
            memcpy(ar.msgid, r->msgid, MSG_ID_LEN);
            memcpy(ar.digest, r->digest, MSG_HASH_LEN);
            if (add_accept(a, &ar) < 0) return -1;
            a->state = AGG_COLLECTING;
            return 0;
        }
        case JOURNAL_CLOSE:
            if (r->round != a->round || !agg_open_state(a))
                return err_set("'close %llu' in state %s of round %llu", rn, st, cur);
            a->state = AGG_AGGREGATING;
            a->close_roster = a->journal_roster;
            return 0;
        case JOURNAL_ROSTER:
            if (r->round <= a->journal_roster)
                return err_set("record 'roster %llu': versions only go up (%llu is in force)", rn,
                               (unsigned long long)a->journal_roster);
            a->journal_roster = r->round;
            return 0;
        case JOURNAL_PUBLISH:
            if (r->round != a->round || a->state != AGG_AGGREGATING)
                return err_set("'publish %llu' in state %s of round %llu", rn, st, cur);
            memcpy(a->version, r->hash, 32);
            a->has_update = r->has_update;
            if (a->has_update) {
                memcpy(a->update_hash, r->update_hash, 32);
                a->update_size = r->update_size;
                memcpy(a->update_from, a->base, 32);
                memcpy(a->update_to, a->version, 32);
            }
            a->state = AGG_PUBLISHED;
            a->published++;
            return 0;
        case JOURNAL_FAIL:
            if (r->round != a->round || (!agg_open_state(a) && a->state != AGG_AGGREGATING))
                return err_set("'fail %llu' in state %s of round %llu", rn, st, cur);
            a->state = AGG_FAILED; /* no new version: the next round reuses the base */
            return 0;
    }
    return err_set("journal record of unknown kind %d", (int)r->kind);
}

/* A live transition: the record is made durable, then applied. */
int agg_commit(agg *a, const journal_record *r) {
    return agg_commit_try(a, r) == 0 ? 0 : -1;
}

int agg_commit_try(agg *a, const journal_record *r) {
    if (journal_write(a->journal, r) < 0) return journal_usable(a->journal) ? 1 : -1;
    if (agg_apply(a, r) < 0)
        return err_context("the aggregator's own '%s' record does not apply (a bug; the "
                           "journal refuses it at the next start)",
                           journal_kind_name(r->kind));
    agg_status_changed(a);
    return 0;
}

int agg_replay_record(void *arg, const char *text, size_t line) {
    (void)line; /* journal_open names the line in the error's context */
    journal_record r;
    if (journal_record_decode(text, &r) < 0) return -1;
    return agg_apply(arg, &r);
}

/* ---- the roster in force, and who takes part --------------------------------- */

/* Journals the version in force when it is newer than the last journaled
 * one: from here on (and after a restart) it decides who takes part. */
int agg_roster_journal(agg *a) {
    uint64_t v = agg_roster_version(a->roster), size;
    uint8_t h[32];
    if (v <= a->journal_roster || agg_roster_hash(a->roster, h, &size) != 1) return 0;
    journal_record r = {.kind = JOURNAL_ROSTER, .round = v};
    memcpy(r.hash, h, 32);
    if (agg_commit(a, &r) < 0) return -1;
    if (agg_roster_size(a->roster) + 1 > a->told_cap) {
        int cap = agg_roster_size(a->roster) + 1;
        char(*t)[KEYS_NAME_MAX + 1] = realloc(a->told, (size_t)cap * sizeof *t);
        if (!t) return err_set("out of memory for %d members", cap);
        a->told = t;
        a->told_cap = cap;
    }
    /* Upload slots follow the membership (a few per member, as at start).
     * No request is in flight here, so moving the array is safe. */
    int nup = 2 * agg_roster_count(a->roster) + 8;
    if (nup > a->nup) {
        upload *u = realloc(a->up, (size_t)nup * sizeof *u);
        if (!u) return err_set("out of memory for %d upload slots", nup);
        memset(u + a->nup, 0, (size_t)(nup - a->nup) * sizeof *u);
        for (int i = a->nup; i < nup; i++) u[i].fd = -1;
        a->up = u;
        a->nup = nup;
    }
    return 0;
}

/* Takes a newer roster file (a change seen, or SIGHUP). A refused file is
 * logged and changes nothing; only a journal failure stops the aggregator. */
int agg_roster_tick(agg *a) {
    char summary[512];
    int force = agg_reload_requested;
    agg_reload_requested = 0;
    int r = agg_roster_reload(a->roster, force, summary, sizeof summary);
    if (r < 0) {
        agg_say("roster refused, version %llu stays in force: %s",
                (unsigned long long)agg_roster_version(a->roster), err_msg());
        return 0;
    }
    if (r == 0) return 0;
    if (agg_roster_journal(a) < 0) return -1;
    /* A member revoked (or an old key) uploads nothing more. */
    agg_sessions_prune(a);
    agg_say("roster %s (%d active members)", summary, agg_roster_count(a->roster));
    return 0;
}

/* Whether member m takes part in the current round: an active submitter
 * that was on the roster when the round opened, unless rounds.join =
 * "current" lets members added since join at once. */
int agg_takes_part(agg *a, const agg_member *m) {
    if (m->observer || !m->active) return 0;
    if (a->cfg.join_current || a->open_roster == agg_roster_version(a->roster)) return 1;
    if (!a->open_view && agg_roster_at(a->roster, a->open_roster, &a->open_view) < 0) return -1;
    agg_member then;
    return agg_roster_find_name(a->open_view, m->name, &then) == 1 && !then.observer;
}

/* 1 when every member taking part has a delta accepted this round, and
 * they are at least the quorum. With nobody taking part (a roster with no
 * member yet) that is not "everybody is in": the round waits for members
 * (issue 17: it used to close at once with no delta, and every round after
 * it, ending the federation). Nor does a round close early below the
 * quorum: the deadline's rules (below_quorum) decide then. */
static int all_in(agg *a) {
    int taking = 0;
    for (int i = 0; i < agg_roster_size(a->roster); i++) {
        const agg_member *m = agg_roster_entry(a->roster, i);
        int t = agg_takes_part(a, m);
        if (t < 0) return -1;
        if (t && !agg_find_member(a, a->round, m->name)) return 0;
        taking += t;
    }
    return taking > 0 && agg_accepted_count(a) >= (int)a->cfg.quorum;
}

int agg_round_accepts(const agg *a, uint64_t round, const accept_rec ***out, int *n) {
    *n = 0;
    *out = malloc((a->nacc ? a->nacc : 1) * sizeof **out);
    if (!*out) return err_set("out of memory");
    for (size_t i = 0; i < a->nacc; i++)
        if (a->acc[i].round == round) (*out)[(*n)++] = &a->acc[i];
    return 0;
}

/* ---- the steps ---------------------------------------------------------------- */

static int open_round(agg *a, uint64_t now) {
    journal_record r = {
        .kind = JOURNAL_OPEN, .round = a->round + 1, .deadline = now + a->cfg.deadline_s};
    memcpy(r.hash, a->version, 32);
    if (agg_commit(a, &r) < 0) return -1;
    char sh[17];
    agg_short_hex(a->base, sh);
    agg_say("round %llu open: base %s..., deadline in %u s, quorum %u of %d",
            (unsigned long long)a->round, sh, a->cfg.deadline_s, a->cfg.quorum,
            agg_roster_count(a->roster));
    return 0;
}

static int close_round(agg *a, const char *why) {
    int n = agg_accepted_count(a);
    journal_record r = {.kind = JOURNAL_CLOSE, .round = a->round, .count = (uint64_t)n};
    if (agg_commit(a, &r) < 0) return -1;
    for (int i = 0; i < a->nup; i++)
        if (a->up[i].used && a->up[i].round == a->round && !a->up[i].accepted)
            agg_upload_drop(&a->up[i]);
    agg_say("round %llu closed (%s) with %d delta(s); aggregating", (unsigned long long)a->round,
            why, n);
    return 0;
}

int agg_fail_round(agg *a, const char *reason, uint64_t now) {
    journal_record r = {.kind = JOURNAL_FAIL, .round = a->round};
    snprintf(r.reason, sizeof r.reason, "%s", reason);
    if (agg_commit(a, &r) < 0) return -1;
    agg_say("round %llu failed (%s): no new version; the next round trains on the same base",
            (unsigned long long)a->round, reason);
    if (agg_forget_key(&a->cfg, a->round) < 0) return -1;
    double open_t = (double)(a->deadline - a->cfg.deadline_s);
    return agg_metrics_round(a, reason, NULL, NULL, (double)now - open_t, 0, 0);
}

static void finish(agg *a, uint64_t now) {
    a->state = AGG_FINISHED;
    agg_status_changed(a);
    a->finished_at = now;
    char hex[STORE_HEX_LEN + 1];
    hex_encode(a->version, 32, hex);
    agg_say("finished: %llu round(s) done; final version %s", (unsigned long long)a->round, hex);
}

/* DP: 1 when the next round would take ε above the budget; then it is not
 * opened: a log line and a metrics line (once, under the round number it
 * would have had) say so. */
static int dp_budget_spent(agg *a) {
    const policy *pol = &a->cfg.policy;
    double eps_next = 0;
    if (!agg_dp_on(&a->cfg) ||
        !dp_would_exceed(&a->dp, pol->rounds.fraction, pol->dp.noise_multiplier, pol->dp.delta,
                         pol->dp.epsilon_budget, &eps_next))
        return 0;
    double eps = dp_epsilon(&a->dp, pol->dp.delta, NULL);
    uint64_t next = a->round + 1;
    agg_say(
        "DP budget: round %llu not opened: it would take epsilon from %.4g to %.4g at delta %g, "
        "above dp.epsilon_budget %g; the federation ends here",
        (unsigned long long)next, eps, eps_next, pol->dp.delta, pol->dp.epsilon_budget);
    if (next > a->metrics_round) {
        json_t *j = json_object();
        if (!j) return err_set("out of memory for metrics");
        json_object_set_new(j, "round", json_integer((json_int_t)next));
        json_object_set_new(j, "status", json_string("dp-budget-exhausted"));
        json_object_set_new(j, "epsilon", json_real(eps));
        json_object_set_new(j, "epsilon_next", json_real(eps_next));
        json_object_set_new(j, "epsilon_budget", json_real(pol->dp.epsilon_budget));
        json_object_set_new(j, "delta", json_real(pol->dp.delta));
        json_object_set_new(j, "rounds_published", json_integer((json_int_t)a->published));
        json_object_set_new(j, "time", json_integer((json_int_t)time(NULL)));
        int rc = agg_metrics_write(a, j);
        json_decref(j);
        if (rc < 0) return -1;
        a->metrics_round = next;
    }
    return 1;
}

/* PUBLISHED → OPEN of the next round, or FINISHED after the last one (or
 * when the DP budget allows no more). */
static int advance(agg *a, uint64_t now) {
    if (a->state != AGG_PUBLISHED && a->state != AGG_FAILED) return 0;
    if (a->round >= a->cfg.rounds) {
        finish(a, now);
        return 0;
    }
    int spent = dp_budget_spent(a);
    if (spent != 0) {
        if (spent > 0) finish(a, now);
        return spent < 0 ? -1 : 0;
    }
    agg_crash_point(a, "open");
    return open_round(a, now);
}

int agg_settle(agg *a, uint64_t now) {
    if (a->state == AGG_AGGREGATING && agg_aggregate_and_publish(a, now) < 0) return -1;
    return advance(a, now);
}

int agg_tick(agg *a, uint64_t now) {
    for (int i = 0; i < a->nup; i++)
        if (a->up[i].used && now > a->up[i].last_seen + UPLOAD_IDLE_S) {
            agg_say("dropping an upload idle for %d s", UPLOAD_IDLE_S);
            agg_upload_drop(&a->up[i]);
        }
    if (agg_roster_tick(a) < 0) return -1;
    if (agg_open_state(a)) {
        int n = agg_accepted_count(a), all = all_in(a);
        if (all < 0) return -1;
        if (all) {
            if (close_round(a, "every member submitted") < 0) return -1;
        } else if (now >= a->deadline) {
            if (n >= (int)a->cfg.quorum) {
                if (close_round(a, "deadline") < 0) return -1;
            } else if (a->cfg.fail_below_quorum) {
                if (agg_fail_round(a, "below-quorum", now) < 0) return -1;
            } else if (!a->below_quorum_logged) {
                agg_say("round %llu: deadline passed with %d of %u deltas needed; waiting for the "
                        "quorum (below_quorum = \"wait\")",
                        (unsigned long long)a->round, n, a->cfg.quorum);
                a->below_quorum_logged = 1;
            }
        }
    }
    return agg_settle(a, now);
}
