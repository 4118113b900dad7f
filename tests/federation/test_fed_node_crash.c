/* SIGKILL a node mid-upload and mid-training: it resumes, and the aggregator
 * counts its delta once. Three nodes, two rounds, all of them talking through
 * a proxy that sees every message, so the kills land at exact points:
 *
 *   A, round 1: killed right after the aggregator took its SUBMIT_CHUNK (the
 *      upload is half done there: no SUBMIT_END); restarted, it submits the
 *      same sealed envelope (same message id) again from the start.
 *   B, round 2: killed after the aggregator accepted and journaled its delta
 *      but before the RECEIPT reached it; restarted, it submits the same
 *      envelope again and gets the same receipt (idempotent). A's round-2
 *      submission is held back meanwhile, so that round 2 is still open.
 *   C, round 1: killed mid-training, once the trainer wrote a checkpoint;
 *      restarted, the training resumes from that checkpoint (no new seal of
 *      anything before).
 *
 * Afterwards every round counts each node exactly once, the receipts name
 * the envelopes sealed before the kills, and the final model equals the
 * offline recomputation from the sealed deltas. */
#include "aggregator/agg.h"
#include "aggregator/config.h"
#include "tests/federation/fed_test.h"

struct ctl {
    const ft_fed *f;
    int last_req[FT_NODES]; /* type of each node's last request */
    int kill_a, kill_b;     /* 1: kill now, 2: done */
    int b_receipted;        /* B has its round-2 receipt after the restart */
};

static int node_index(const ft_fed *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->node[i].name, name) == 0) return i;
    return -1;
}

static int hook(ft_proxy *p, const char *name, int is_reply, const struct msg *m) {
    struct ctl *c = p->arg;
    int i = node_index(c->f, name);
    if (i < 0) return FT_PASS;
    if (!is_reply) {
        c->last_req[i] = m->type;
        if (i == 0 && m->type == MSG_SUBMIT_BEGIN && m->submit_begin.round == 2 && !c->b_receipted)
            return FT_SWALLOW; /* A waits: round 2 must stay open for B */
        return FT_PASS;
    }
    /* The aggregator's answer (ACK) to A's first SUBMIT_CHUNK, in round 1. */
    if (i == 0 && !c->kill_a && c->last_req[i] == MSG_SUBMIT_CHUNK && m->type == MSG_ACK) {
        c->kill_a = 1;
        return FT_SWALLOW;
    }
    /* The receipt for B's round-2 delta (the answer to SUBMIT_END). */
    if (i == 1 && !c->kill_b && c->last_req[i] == MSG_SUBMIT_END && m->type == MSG_RECEIPT &&
        m->receipt.round == 2) {
        c->kill_b = 1;
        return FT_SWALLOW;
    }
    return FT_PASS;
}

/* The msgid (hex) in a node's record file, "" when none. */
static void record_msgid(const char *path, char out[33]) {
    char *text = ts_read(path, NULL);
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    json_t *id = j ? json_object_get(j, "msgid") : NULL;
    snprintf(out, 33, "%s", json_is_string(id) ? json_string_value(id) : "");
    json_decref(j);
    free(text);
}

static void kill_and_restart(ft_fed *f, int i) {
    kill(f->node[i].proc.pid, SIGKILL);
    CHECK(harness_wait(&f->node[i].proc, 10) == 128 + SIGKILL);
    CHECK_OK(ft_start_node(f, i));
}

int main(void) {
    ft_options o;
    ft_options_init(&o);
    o.rounds = 2;
    o.steps = 60; /* long enough to be caught mid-training */
    o.save_every = 5;
    ft_fed f;
    ft_proxy p;
    struct ctl c = {.f = &f};
    CHECK_OK(ft_setup(&f, "crash", 3, &o));
    CHECK_OK(ft_start_aggregator(&f));
    CHECK_OK(ft_proxy_open(&p, &f, f.endpoint, hook, &c));
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ft_node_config(&f, i, p.endpoint, ""));
        CHECK_OK(ft_start_node(&f, i));
    }
    char a_sealed[33] = "", b_sealed[33] = "", path[TS_PATH], latest[TS_PATH], env[TS_PATH];
    int c_killed = 0;
    ts_in(latest, f.node[2].state, "rounds/1/train/checkpoint/latest");
    ts_in(env, f.node[2].state, "outbox/round-1.env");
    for (double t0 = harness_now(); harness_now() - t0 < 180;) {
        ft_proxy_pump(&p, 10);
        if (c.kill_a == 1) {
            record_msgid(ts_in(path, f.node[0].state, "outbox/round-1.json"), a_sealed);
            kill_and_restart(&f, 0);
            c.kill_a = 2;
        }
        if (c.kill_b == 1) {
            record_msgid(ts_in(path, f.node[1].state, "outbox/round-2.json"), b_sealed);
            kill_and_restart(&f, 1);
            c.kill_b = 2;
        }
        if (c.kill_b == 2 && !c.b_receipted)
            c.b_receipted = fio_exists(ts_in(path, f.node[1].state, "receipts/round-2.json"));
        if (!c_killed && fio_exists(latest)) {
            /* Freeze it first, so that what is on disk is what it had when
             * killed: a checkpoint, and nothing sealed yet. */
            kill(f.node[2].proc.pid, SIGSTOP);
            CHECK_MSG(!fio_exists(env), "C had finished training before the kill");
            kill_and_restart(&f, 2);
            c_killed = 1;
        }
        int running = 0;
        for (int i = 0; i < 3; i++) running += harness_running(&f.node[i].proc);
        if (!running) break;
    }
    for (int i = 0; i < 3; i++)
        CHECK_MSG(harness_wait(&f.node[i].proc, 5) == 0, "%s (see %s)", f.node[i].name,
                  f.node[i].log);
    CHECK_MSG(harness_wait(&f.agg, 30) == 0, "aggregator (see %s)", f.agg_log);
    CHECK(c.kill_a == 2 && c.kill_b == 2 && c_killed);

    /* Each node counted exactly once in each round. */
    for (int r = 1; r <= 2; r++)
        for (int i = 0; i < 3; i++)
            CHECK_MSG(ft_accepted(&f, r, f.node[i].name) == 1, "round %d counts %s %d times", r,
                      f.node[i].name, ft_accepted(&f, r, f.node[i].name));
    /* The receipts are for the envelopes sealed before the kills. */
    char got[33];
    record_msgid(ts_in(path, f.node[0].state, "receipts/round-1.json"), got);
    CHECK_MSG(*a_sealed && strcmp(got, a_sealed) == 0, "A sealed %s, receipt for %s", a_sealed,
              got);
    record_msgid(ts_in(path, f.node[1].state, "receipts/round-2.json"), got);
    CHECK_MSG(*b_sealed && strcmp(got, b_sealed) == 0, "B sealed %s, receipt for %s", b_sealed,
              got);
    CHECK(ts_contains(f.node[2].log, "resuming the training from its last checkpoint"));

    /* And the merged model is what the sealed deltas give, offline. */
    ft_check_recompute(&f, 2);

    ft_proxy_close(&p);
    ft_teardown(&f);
    return check_finish();
}
