/* state — the state directory and what every file of the aggregator uses:
 * agg_open takes the directory's lock, replays the journal (rounds.c applies
 * each record), removes a crash's leftovers and brings the round to rest;
 * agg_close; the log line, the crash test hook and state paths. */
#include "aggregator/state.h"

#include "aggregator/store.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "util/err.h"
#include "util/fio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void agg_say(const char *fmt, ...) {
    char when[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s aggregator: %s\n", when, msg);
}

void agg_crash_point(agg *a, const char *point) {
    if (!a->crash_point[0] || strcmp(a->crash_point, point) != 0) return;
    if (--a->crash_left > 0) return;
    agg_say("FEDLORA_CRASH_AT=%s: killing myself (test hook)", point);
    kill(getpid(), SIGKILL);
}

void agg_short_hex(const uint8_t *h, char out[17]) {
    char full[STORE_HEX_LEN + 1];
    hex_encode(h, 32, full);
    memcpy(out, full, 16);
    out[16] = '\0';
}

int agg_state_path(const agg *a, const char *name, char *out, size_t n) {
    return fio_join(out, n, a->cfg.state, name);
}

int agg_inbox_path(const agg_config *c, uint64_t round, const char *member, char *out, size_t n) {
    if (snprintf(out, n, "%s/inbox/r%llu-%s.env", c->state, (unsigned long long)round, member) >=
        (int)n)
        return err_set("state path %s is too long", c->state);
    return 0;
}

static int clean_dir(const char *dir, const char *suffix, int dirs) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : err_errno("opening %s", dir);
    struct dirent *e;
    char p[AGG_PATH_MAX];
    int rc = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name), s = strlen(suffix);
        if (e->d_name[0] == '.' || n < s || strcmp(e->d_name + n - s, suffix) != 0) continue;
        if (fio_join(p, sizeof p, dir, e->d_name) < 0)
            rc = -1;
        else if (dirs)
            rc = fio_remove_tree(p);
        else if (unlink(p) != 0 && errno != ENOENT)
            rc = err_errno("removing %s", p);
    }
    closedir(d);
    return rc;
}

/* Entries in STATE/<sub> (dot files aside) whose name ends in suffix. */
static int count_entries(const agg *a, const char *sub, const char *suffix) {
    char dir[AGG_PATH_MAX];
    if (agg_state_path(a, sub, dir, sizeof dir) < 0) return 0;
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t len = strlen(e->d_name), s = strlen(suffix);
        n += e->d_name[0] != '.' && len >= s && !strcmp(e->d_name + len - s, suffix);
    }
    if (d) closedir(d);
    return n;
}

/* A journal that is gone (or empty) while the state directory holds what a
 * journal decided (versions, accepted envelopes, objects, rosters, metrics)
 * is a lost journal, not a new federation: starting one on top would forget
 * every acknowledged delta and reset the replay protection (issue 17). */
static int refuse_lost_journal(const agg *a, const char *journal) {
    struct stat st;
    if (stat(journal, &st) == 0 && st.st_size > 0) return 0;
    char metrics[AGG_PATH_MAX];
    int versions = count_entries(a, "versions", ""), inbox = count_entries(a, "inbox", ".env"),
        objects = count_entries(a, "objects", ""), rosters = count_entries(a, "rosters", ".roster");
    int has_metrics = agg_state_path(a, "metrics.jsonl", metrics, sizeof metrics) == 0 &&
                      stat(metrics, &st) == 0 && st.st_size > 0;
    if (!versions && !inbox && !objects && !rosters && !has_metrics) return 0;
    return err_set("%s is %s, but %s holds what a journal decided (%d version(s), %d accepted "
                   "envelope(s), %d object(s), %d roster version(s)%s): the journal was lost. "
                   "Starting over here would forget every acknowledged delta and accept old "
                   "envelopes again. Restore the journal from a backup; or, to begin a new "
                   "federation, give the config another state directory (keep this one as the "
                   "record of the old federation)",
                   journal, stat(journal, &st) == 0 ? "empty" : "missing", a->cfg.state, versions,
                   inbox, objects, rosters, has_metrics ? ", metrics" : "");
}

/* The config against the base model and the members, at start: targets
 * that resolve to no module, a seq beyond the context or a quorum no
 * member list could reach would only fail later, at every node. */
static int check_config_against_base(const agg *a) {
    const agg_config *c = &a->cfg;
    char p[AGG_PATH_MAX];
    model_config mc;
    model *m = NULL;
    lora_config lc;
    lora_set *s = NULL;
    char targets[MSG_TARGETS_MAX * (MSG_TARGET_MAX + 1) + 1] = "";
    for (uint32_t i = 0; i < c->train.ntargets; i++) {
        if (i) strcat(targets, ",");
        strcat(targets, c->train.targets[i]);
    }
    lora_config_init(&lc);
    lc.rank = (int)c->train.rank;
    lc.alpha = c->train.alpha;
    int rc = -1;
    if (fio_join(p, sizeof p, c->base_model, "config.json") < 0 || model_config_load(&mc, p) < 0)
        err_context("base_model %s", c->base_model);
    else if (model_config_seq_check(&mc, c->train.seq, "train.seq") < 0)
        err_context("%s", c->file);
    else if (model_create_unfilled(&m, &mc) < 0 || lora_config_set_targets(&lc, targets) < 0 ||
             lora_create(&s, m, &lc) < 0)
        err_context("%s: train.targets [%s] on the base model %s", c->file, targets, c->base_model);
    else
        rc = 0;
    lora_free(s);
    lora_config_free(&lc);
    model_free(m);
    if (rc < 0) return -1;
    /* Who can deliver the quorum: a fixed list is checked when it loads; a
     * roster may grow, but one with members too few for the quorum is a
     * mistake, and one with none yet waits for the admin to add them. */
    int active = agg_roster_count(a->roster);
    if (c->has_roster && active > 0 && (int)c->quorum > active)
        return err_set("%s: rounds.quorum is %u, but roster version %llu has %d active member(s): "
                       "no round could close; lower the quorum, or add the members to the "
                       "roster first",
                       c->has_policy ? c->policy_path : c->file, c->quorum,
                       (unsigned long long)agg_roster_version(a->roster), active);
    if (active == 0)
        agg_say("warning: the roster has no active member yet: every round waits until members "
                "are added and %u delta(s) arrive",
                c->quorum);
    return 0;
}

int agg_open(agg **out, const agg_config *c, uint64_t now) {
    agg *a = calloc(1, sizeof *a);
    if (!a) return err_set("out of memory");
    a->cfg = *c;
    a->policy = agg_policy_default();
    if (c->has_policy) {
        agg_hooks_init(&a->hooks, &a->cfg.policy, &a->cfg.train);
        a->policy = &a->hooks.hooks;
    }
    a->lock_fd = -1;
    char p[AGG_PATH_MAX];
    static const char *const dirs[] = {"", "inbox", "versions", "tmp", "noise"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if ((i == 0 ? snprintf(p, sizeof p, "%s", c->state) >= (int)sizeof p
                    : agg_state_path(a, dirs[i], p, sizeof p) < 0) ||
            fio_mkdirs(p, 0700) < 0)
            goto fail;
    if (agg_state_path(a, "lock", p, sizeof p) < 0) goto fail;
    a->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (a->lock_fd < 0) {
        err_errno("opening %s", p);
        goto fail;
    }
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        err_set("state directory %s is in use by another aggregator (lock %s held)", c->state, p);
        goto fail;
    }
    /* Before anything below stores a file there (the roster's versions). */
    if (agg_state_path(a, "journal", p, sizeof p) < 0 || refuse_lost_journal(a, p) < 0) goto fail;
    if (keys_load_secret(c->keys_dir, c->keys_name, &a->keys) < 0 ||
        agg_roster_load(&a->roster, c, 0) < 0)
        goto fail;
    a->told_cap = agg_roster_size(a->roster) + 1;
    a->told = calloc((size_t)a->told_cap, sizeof *a->told);
    /* Uploads in progress: bounded, a few per member (a node that restarts
     * mid-upload starts a new one before the old one expires). */
    a->nup = 2 * agg_roster_count(a->roster) + 8;
    a->up = calloc((size_t)a->nup, sizeof *a->up);
    for (int i = 0; a->up && i < a->nup; i++) a->up[i].fd = -1;
    if (!a->told || !a->up) {
        err_set("out of memory");
        goto fail;
    }
    if (check_config_against_base(a) < 0 || agg_status_open(a) < 0 || agg_status_bind(a) < 0 ||
        agg_state_path(a, "journal", p, sizeof p) < 0 ||
        journal_open(&a->journal, p, 0, agg_replay_record, a) < 0 || agg_eval_open(a) < 0)
        goto fail;
    /* What the journal cut off its end is said; a complete record that was
     * damaged (not torn by a crash) may have been an acceptance whose
     * receipt went out: the inbox has its envelope (uploads.c). */
    size_t cut_line, cut_offset;
    int cut_complete = 0, recover = 0;
    if (journal_cut(a->journal, &cut_line, &cut_offset, &cut_complete)) {
        if (cut_complete)
            agg_say("JOURNAL DAMAGED: %s line %zu (byte offset %zu) is a complete record whose "
                    "checksum does not match: it was damaged after it was written, not torn by "
                    "a crash. It is cut off; an acceptance it may have held is recovered from "
                    "the inbox below. Check the disk, and keep a copy of the state directory",
                    p, cut_line, cut_offset);
        else
            agg_say("journal: cut an unfinished last record at line %zu (byte offset %zu), the "
                    "trace of a crash during its append; nothing depended on it",
                    cut_line, cut_offset);
        recover = cut_complete;
    }
    /* The base is evaluated too (round 0), unless metrics.jsonl says it was. */
    if (a->initialized && agg_eval_queue(a, 0, a->initial) < 0) goto fail;
    /* Leftovers of a crash: half-uploaded envelopes (their nodes had no
     * receipt and send them again) and half-written versions. */
    char dir[AGG_PATH_MAX];
    if (agg_state_path(a, "inbox", dir, sizeof dir) < 0 || clean_dir(dir, ".part", 0) < 0 ||
        agg_state_path(a, "tmp", dir, sizeof dir) < 0 || clean_dir(dir, "", 1) < 0 ||
        agg_metrics_scan(a) < 0)
        goto fail;
    /* DP keys of rounds whose publish or fail record made it (a crash came
     * before the key was deleted); an aggregating round keeps its own. */
    if (a->state != AGG_AGGREGATING &&
        (agg_state_path(a, "noise", dir, sizeof dir) < 0 || clean_dir(dir, ".key", 0) < 0))
        goto fail;
    if (agg_dp_on(c)) {
        const policy *pol = &c->policy;
        dp_accountant_init(&a->dp);
        if (dp_accountant_add(&a->dp, pol->rounds.fraction, pol->dp.noise_multiplier,
                              (int64_t)a->published) < 0)
            goto fail;
        if (a->published)
            agg_say("DP: %llu round(s) published so far, epsilon %.4g at delta %g (budget %g)",
                    (unsigned long long)a->published, dp_epsilon(&a->dp, pol->dp.delta, NULL),
                    pol->dp.delta, pol->dp.epsilon_budget);
    }

    const char *hook = getenv("FEDLORA_CRASH_AT");
    if (hook && *hook) {
        snprintf(a->crash_point, sizeof a->crash_point, "%s", hook);
        char *colon = strchr(a->crash_point, ':');
        a->crash_left = 1;
        if (colon) {
            *colon = '\0';
            a->crash_left = strtol(colon + 1, NULL, 10);
            if (a->crash_left < 1) a->crash_left = 1;
        }
    }

    if (!a->initialized) {
        /* A new federation: the base model goes into the store as version 0
         * in its own dtype (config.json's torch_dtype), written a tensor at
         * a time from the mapped checkpoint, and round 1 opens on it. */
        char hex[STORE_HEX_LEN + 1], tmp[AGG_PATH_MAX];
        model *base = NULL;
        if (checkpoint_map(&base, c->base_model, MODEL_PRECISION_FP32) < 0) {
            err_context("base_model %s", c->base_model);
            goto fail;
        }
        journal_record r = {.kind = JOURNAL_INIT};
        memcpy(r.consortium, c->consortium, 32);
        checkpoint_save_options so = {.dtype = base->cfg.torch_dtype, .release = 1};
        int irc = snprintf(tmp, sizeof tmp, "%s/tmp/import", c->state) >= (int)sizeof tmp ||
                          fio_remove_tree(tmp) < 0 || checkpoint_write(base, tmp, &so) < 0
                      ? -1
                      : 0;
        model_free(base);
        agg_card card = {.a = a};
        if (irc < 0 || agg_publish_dir(&card, "import", r.hash) < 0 || agg_commit(a, &r) < 0 ||
            agg_eval_queue(a, 0, a->initial) < 0)
            goto fail;
        if (agg_mark_verified(a, a->version) < 0) goto fail;
        hex_encode(a->version, 32, hex);
        agg_say("new federation '%s' in %s: base model %s imported as version %.16s...",
                c->consortium_name, c->state, c->base_model, hex);
    } else {
        char sh[17];
        agg_short_hex(a->state == AGG_PUBLISHED || a->state == AGG_FAILED ? a->version : a->base,
                      sh);
        agg_say("resuming from the journal: round %llu, %s, %d delta(s) accepted, version %s...",
                (unsigned long long)a->round, agg_state_name(a->state), agg_accepted_count(a), sh);
        /* What the journal stands on is hashed again before anything is
         * built on it or served (issue 17, case 6): the newest version,
         * the round's base (none before round 1 opens) and the low-rank
         * update that makes it. */
        if (agg_verify_stored(a, a->version) < 0 ||
            (a->round > 0 && agg_verify_stored(a, a->base) < 0) ||
            (a->has_update && agg_verify_stored(a, a->update_hash) < 0))
            goto fail;
    }
    /* versions/latest names the newest published version (set after its
     * record; a crash in between is mended here). */
    if (store_set_latest(c->state, a->version) < 0 || agg_roster_journal(a) < 0) goto fail;
    if (agg_roster_version(a->roster))
        agg_say("roster version %llu in force: %d active members (admin-signed, reloaded when %s "
                "changes or on SIGHUP)",
                (unsigned long long)agg_roster_version(a->roster), agg_roster_count(a->roster),
                c->roster_path);
    if (recover && agg_open_state(a) && agg_recover_inbox(a, now) < 0) goto fail;
    /* At rest before the first request: an aggregation a crash interrupted
     * is finished now, and the next round opened (agg.h). */
    if (agg_settle(a, now) < 0) goto fail;
    *out = a;
    return 0;
fail:
    agg_close(a);
    return -1;
}

void agg_close(agg *a) {
    if (!a) return;
    agg_eval_close(a);
    agg_status_close(a);
    for (int i = 0; a->up && i < a->nup; i++) agg_upload_drop(&a->up[i]);
    free(a->up);
    free(a->sessions);
    free(a->verified);
    journal_close(a->journal);
    agg_roster_free(a->roster);
    agg_roster_free(a->open_view);
    keys_secret_wipe(&a->keys);
    model_free(a->model);
    agg_norms_free(a->norms);
    agg_hooks_free(&a->hooks);
    free(a->acc);
    free(a->told);
    if (a->lock_fd >= 0) close(a->lock_fd);
    free(a);
}
