/* fedlora demo — a whole federation on loopback (the README's main job): an
 * aggregator and N university nodes as separate processes of this very
 * binary, each node with its own private corpus from a distinct domain
 * (node/demo_corpus.h) or its share of a partition (--data, demo_data.h), a
 * tiny base model made on the spot (or --base), R rounds. The processes,
 * their files and their logs are the loopback harness's (cli/harness.h),
 * which the federation tests drive too.
 *
 * The demo watches from outside, as an operator would: it reads the
 * aggregator's published versions and the nodes' receipts from their state
 * directories, and evaluates versions on each domain's held-out text, which
 * no node trains on; the global loss is the token-weighted mean over the
 * domains. What it prints, and writes to OUT/metrics.jsonl and
 * OUT/report.svg (demo_report.h), is documented in docs/federation.md. */
#include "aggregator/store.h"
#include "cli/commands.h"
#include "cli/demo_data.h"
#include "cli/demo_report.h"
#include "cli/harness.h"
#include "cli/opts.h"
#include "data/dataset.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "node/demo_corpus.h"
#include "train/trainer.h"
#include "util/err.h"
#include "util/fio.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *usage_text =
    "usage: fedlora demo [--rounds N] [--nodes N] [--out DIR] [--keep]\n"
    "                    [--steps N] [--lr X] [--rank R] [--batch B] [--seq T] [--timeout S]\n"
    "                    [--policy FILE] [--seed N] [--data DIR] [--base DIR]\n"
    "                    [--eval-every N] [--eval-fraction F] [--precision P]\n"
    "\n"
    "Runs a whole federation on this machine: an aggregator and N universities (separate\n"
    "processes of this binary, talking ZeroMQ over loopback), each training LoRA adapters\n"
    "on its own private corpus from a different domain, on a tiny base model made on the\n"
    "spot. Prints, per round, each university's local held-out loss before and after its\n"
    "training, the merged model's loss on a held-out mixture of all domains, the bytes\n"
    "moved and the time; writes DIR/metrics.jsonl, DIR/report.svg (the loss curves) and\n"
    "DIR/model/ (the final merged model, a Hugging Face directory).\n"
    "\n"
    "  --rounds N     federated rounds (3)\n"
    "  --nodes N      universities, 1 to 8 (3; with --data: every university of DIR)\n"
    "  --out DIR      output directory, new or empty (fedlora-demo)\n"
    "  --keep         keep DIR/work: keys, configs, state directories and logs of every process\n"
    "  --steps N      local optimizer steps per round (15)\n"
    "  --lr X         local learning rate (0.01)\n"
    "  --rank R       LoRA rank (8)\n"
    "  --batch B      sequences per local step (8)\n"
    "  --seq T        tokens per sequence (64)\n"
    "  --timeout S    give up after S seconds (600)\n"
    "  --policy FILE  aggregate under this policy file (docs/policies.md): weighting,\n"
    "                 validation, robust rules, merge mode, DP; its 'rounds' group sets the\n"
    "                 quorum and deadline (without it: every node, 300 s, fail below quorum)\n"
    "  --seed N       seed of the base model made on the spot and of every node's training\n"
    "                 (its held-out split, adapters and data order); without it the model\n"
    "                 comes from seed 1 and the nodes use their default seed, 0\n"
    "  --data DIR     a partition made by bench/data/partition (docs/corpora.md):\n"
    "                 universities DIR/uni-*/train.txt, judged on DIR/heldout/<domain>.txt\n"
    "                 (default: the built-in toy corpora)\n"
    "  --base DIR     start from this base model (config.json, model.safetensors,\n"
    "                 tokenizer.json) instead of the tiny one made on the spot\n"
    "  --eval-every N evaluate the merged model every N rounds and after the last (1)\n"
    "  --eval-fraction F  share of each university's documents it holds out for its\n"
    "                 local loss (0.2)\n"
    "  --precision P  the nodes' training precision: auto, fp32 or bf16 (auto)\n";

/* The domains in the order nodes get them: the README's three first. */
static const char *const domain_order[] = {"astronomy", "medicine", "law",   "computing",
                                           "cooking",   "geology",  "music", "sailing"};

/* The base model is the harness's default (harness_options_default): the
 * tiny Llama with initializer_range raised from 0.02 to 0.1. LoRA never
 * touches lm_head, and with normal(0, 0.02) the frozen head's logits stay
 * within about ±1.3 whatever the adapters do (its rows have norm 0.02·√C and
 * the final RMSNorm fixes the hidden state's norm), so no adapter could bring
 * the loss much below ln V. */
#define DEMO_CONSORTIUM "fedlora-demo"

typedef struct {
    long long rounds, nodes, steps, rank, batch, seq, timeout, seed, eval_every;
    double lr, eval_fraction;
    const char *out, *policy, *seed_text, *data_dir, *base_dir, *precision, *nodes_text;
    int keep;
    char work[HARNESS_PATH], metrics[HARNESS_PATH];
    harness_fed fed;
    demo_data data;   /* the universities' data and the held-out domains */
    demo_round *hist; /* rounds + 1 entries: 0 is the base */
    int n_hist;
    /* The evaluation: each domain's held-out rows. */
    dataset *eval_set[DEMO_DOMAINS_MAX];
    double t0;
} demo;

static volatile sig_atomic_t demo_interrupted;

static void on_signal(int sig) {
    demo_interrupted = sig;
}

/* ---- watching the federation ---------------------------------------------------------------- */

/* A node's receipt record of a round (node/internal.h's record): its local
 * losses and the bytes it moved. 1 found, 0 not (yet). */
static int node_round(const harness_node *n, uint64_t round, double *before, double *after,
                      uint64_t *bytes) {
    char path[HARNESS_PATH], rel[64];
    snprintf(rel, sizeof rel, "receipts/round-%llu.json", (unsigned long long)round);
    if (harness_join(path, n->state, rel) != 0) return 0;
    char *text = harness_read(path);
    if (!text) return 0;
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    if (!j) return 0;
    json_t *b = json_object_get(j, "loss_before"), *a = json_object_get(j, "loss_after");
    *before = json_is_number(b) ? json_number_value(b) : NAN;
    *after = json_is_number(a) ? json_number_value(a) : NAN;
    *bytes = (uint64_t)json_integer_value(json_object_get(j, "download_bytes")) +
             (uint64_t)json_integer_value(json_object_get(j, "upload_bytes"));
    json_decref(j);
    return 1;
}

/* The model's loss on each domain's held-out text, and their token-weighted
 * mean (the global loss). */
static int evaluate(demo *d, const char *model_dir, demo_round *r) {
    model *m = NULL;
    model_acts *acts = NULL;
    int B = 4, rc = 0;
    if (checkpoint_load(&m, model_dir) != 0) return err_context("loading %s", model_dir);
    double sum = 0;
    int64_t total = 0;
    if (model_acts_create(&acts, m, B, (int)d->seq) != 0) rc = -1;
    for (int k = 0; rc == 0 && k < d->data.n_domains; k++) {
        int64_t n;
        rc = trainer_eval(m, acts, B, d->eval_set[k], DATASET_TRAIN, NULL, &r->domain_loss[k], &n);
        sum += r->domain_loss[k] * (double)n;
        total += n;
    }
    r->n_domains = d->data.n_domains;
    r->global_loss = rc == 0 && total > 0 ? sum / (double)total : NAN;
    model_acts_free(acts);
    model_free(m);
    return rc;
}

static int version_dir(const demo *d, const char *hex, char *out) {
    char rel[128];
    snprintf(rel, sizeof rel, "versions/%s", hex);
    return harness_join(out, d->fed.agg_state, rel);
}

static void human_bytes(uint64_t b, char *out, size_t n) {
    if (b >= 10u << 20)
        snprintf(out, n, "%.1f MB", (double)b / 1e6);
    else
        snprintf(out, n, "%.0f kB", (double)b / 1e3);
}

static void print_header(const demo *d) {
    printf("\n%-6s %-13s", "round", "global loss");
    for (long long i = 0; i < d->nodes; i++) printf(" %-17.17s", d->fed.node[i].name);
    printf(" %10s %7s\n", "moved", "time");
}

static int log_round(demo *d, const demo_round *r) {
    json_t *nodes = json_array(), *doms = json_object();
    for (long long i = 0; nodes && i < d->nodes && r->round > 0; i++) {
        const harness_node *n = &d->fed.node[i];
        json_t *o = json_pack(
            "{s:s, s:s, s:o, s:o}", "name", n->name, "domain", d->data.label[i], "loss_before",
            isfinite(r->loss_before[i]) ? json_real(r->loss_before[i]) : json_null(), "loss_after",
            isfinite(r->loss_after[i]) ? json_real(r->loss_after[i]) : json_null());
        if (!o || json_array_append_new(nodes, o) != 0) {
            json_decref(nodes);
            nodes = NULL;
        }
    }
    int evaluated = isfinite(r->global_loss);
    for (int k = 0; doms && evaluated && k < r->n_domains; k++)
        if (json_object_set_new(doms, d->data.domain[k], json_real(r->domain_loss[k])) != 0) {
            json_decref(doms);
            doms = NULL;
        }
    json_t *j =
        nodes && doms
            ? json_pack("{s:I, s:s, s:o, s:o, s:o, s:I, s:f}", "round", (json_int_t)r->round,
                        "version", r->version, "global_loss",
                        evaluated ? json_real(r->global_loss) : json_null(), "domains", doms,
                        "nodes", nodes, "bytes", (json_int_t)r->bytes, "elapsed_s", r->elapsed)
            : NULL;
    if (!j) {
        json_decref(nodes);
        json_decref(doms);
    }
    char *line = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!line) return err_set("out of memory writing %s", d->metrics);
    FILE *f = fopen(d->metrics, "a");
    int rc = f && fprintf(f, "%s\n", line) > 0 ? 0 : -1;
    if (f && fclose(f) != 0) rc = -1;
    free(line);
    if (rc != 0) return err_errno("cannot append to %s", d->metrics);

    char moved[32] = "", loss[32] = "-";
    if (r->round > 0) human_bytes(r->bytes, moved, sizeof moved);
    if (evaluated)
        snprintf(loss, sizeof loss, "%.4f%s", r->global_loss, r->round == 0 ? " (base)" : "");
    printf("%-6llu %-13s", (unsigned long long)r->round, loss);
    for (long long i = 0; i < d->nodes; i++) {
        char cell[40] = "";
        if (r->round > 0)
            snprintf(cell, sizeof cell, "%.3f -> %.3f", r->loss_before[i], r->loss_after[i]);
        printf(" %-17s", cell);
    }
    if (r->round > 0)
        printf(" %10s %6.1fs\n", moved, r->elapsed);
    else
        printf("\n");
    fflush(stdout);
    return 0;
}

/* Round r is complete once the aggregator published it (its metrics line
 * carries the new version) and every node that is still running has its
 * receipt (a node's receipt is recorded a moment after the aggregator has
 * it, and the round may close in between); a node without one 5 s later did
 * not take part in the round. */
static int try_round(demo *d, uint64_t round, double *seen, int *done) {
    *done = 0;
    json_t *m = harness_round_metrics(d->fed.agg_state, round);
    json_t *v = m ? json_object_get(m, "version") : NULL;
    if (!json_is_string(v) || strlen(json_string_value(v)) != 64) {
        json_decref(m);
        return 0;
    }
    if (*seen == 0) *seen = harness_now();
    demo_round *r = &d->hist[round];
    memset(r, 0, sizeof *r);
    r->round = round;
    snprintf(r->version, sizeof r->version, "%s", json_string_value(v));
    /* The round's wall time as the aggregator saw it: from its opening to
     * its publication (so the demo's own evaluations do not count). */
    r->elapsed = json_number_value(json_object_get(m, "collect_s")) +
                 json_number_value(json_object_get(m, "aggregate_s")) +
                 json_number_value(json_object_get(m, "publish_s"));
    json_decref(m);
    for (long long i = 0; i < d->nodes; i++) {
        uint64_t b = 0;
        if (!node_round(&d->fed.node[i], round, &r->loss_before[i], &r->loss_after[i], &b)) {
            if (harness_running(&d->fed.node[i].proc) && harness_now() - *seen < 5)
                return 0; /* not written yet */
            r->loss_before[i] = r->loss_after[i] = NAN;
        }
        r->bytes += b;
    }
    char dir[HARNESS_PATH];
    r->global_loss = NAN;
    if ((round % (uint64_t)d->eval_every == 0 || round == (uint64_t)d->rounds) &&
        (version_dir(d, r->version, dir) != 0 || evaluate(d, dir, r) != 0))
        return -1;
    d->n_hist = (int)round + 1;
    *done = 1;
    return log_round(d, r);
}

/* A process that ended with an error ends the demo. */
static int check_processes(demo *d) {
    for (long long i = 0; i < d->nodes; i++) {
        harness_node *n = &d->fed.node[i];
        if (!harness_running(&n->proc) && harness_exit_code(n->proc.status) != 0)
            return err_set("%s exited with status %d (its log: %s)", n->name,
                           harness_exit_code(n->proc.status), n->log);
    }
    if (!harness_running(&d->fed.agg) && harness_exit_code(d->fed.agg.status) != 0)
        return err_set("the aggregator exited with status %d (its log: %s)",
                       harness_exit_code(d->fed.agg.status), d->fed.agg_log);
    return 0;
}

/* ---- the run ----------------------------------------------------------------------------------
 */

/* The toy corpora: the nodes' domains in domain_order, each one's training
 * lines its university's data, its held-out lines written to work/heldout/. */
static int toy_data(demo *d, const demo_domain **domains) {
    demo_data *x = &d->data;
    memset(x, 0, sizeof *x);
    char dir[HARNESS_PATH];
    if (harness_join(dir, d->work, "heldout") != 0 || fio_mkdirs(dir, 0700) != 0) return -1;
    for (long long i = 0; i < d->nodes; i++) {
        domains[i] = NULL;
        for (int k = 0; k < demo_num_domains; k++)
            if (strcmp(demo_domains[k].name, domain_order[i]) == 0) domains[i] = &demo_domains[k];
        if (!domains[i]) return err_set("the demo corpus has no domain '%s'", domain_order[i]);
        char file[DEMO_LABEL_MAX + 8];
        snprintf(x->label[i], sizeof x->label[i], "%s", domains[i]->name);
        snprintf(x->domain[i], sizeof x->domain[i], "%s", domains[i]->name);
        snprintf(file, sizeof file, "%s.txt", domains[i]->name);
        if (harness_join(x->heldout[i], dir, file) != 0 ||
            harness_write_text(x->heldout[i], domains[i]->heldout) != 0)
            return -1;
    }
    x->n = x->n_domains = (int)d->nodes;
    return 0;
}

static int run(demo *d) {
    const demo_domain *domains[HARNESS_NODES_MAX];
    if (!d->data_dir && toy_data(d, domains) != 0) return -1;
    harness_options o;
    harness_options_default(&o);
    o.consortium = DEMO_CONSORTIUM;
    o.header = "written by fedlora demo";
    o.rounds = (int)d->rounds;
    o.steps = (int)d->steps;
    o.rank = (int)d->rank;
    o.lr = d->lr;
    o.batch = (int)d->batch;
    o.seq = (int)d->seq;
    o.policy = d->policy;
    o.base_dir = d->base_dir;
    o.eval_fraction = d->eval_fraction;
    if (d->precision)
        snprintf(o.node_extra, sizeof o.node_extra, "precision = \"%s\";\n", d->precision);
    if (d->seed_text) {
        o.model_seed = (uint64_t)d->seed;
        o.has_node_seed = 1;
        o.node_seed = (uint64_t)d->seed;
    }
    harness_fed *f = &d->fed;
    if (d->data_dir) {
        const char *names[HARNESS_NODES_MAX], *files[HARNESS_NODES_MAX];
        for (int i = 0; i < d->data.n; i++) names[i] = d->data.name[i], files[i] = d->data.train[i];
        if (harness_setup_files(f, d->work, d->data.n, names, files, &o) != 0) return -1;
    } else if (harness_setup(f, d->work, (int)d->nodes, domains, &o) != 0) {
        return -1;
    }

    char path[HARNESS_PATH], tok[HARNESS_PATH];
    model_config cfg;
    if (harness_join(path, f->base, "config.json") != 0 || model_config_load(&cfg, path) != 0 ||
        harness_join(tok, f->base, "tokenizer.json") != 0)
        return -1;
    size_t docs = 0;
    for (int k = 0; k < d->data.n_domains; k++) {
        dataset_options dopt = {.path = d->data.heldout[k],
                                .tokenizer = tok,
                                .seq = (int)d->seq,
                                .eos_id = cfg.eos_token_id,
                                .vocab_size = cfg.vocab_size};
        if (dataset_open(&d->eval_set[k], &dopt) != 0)
            return err_context("the held-out set of %s", d->data.domain[k]);
        docs += dataset_num_docs(d->eval_set[k], DATASET_TRAIN);
    }

    printf("fedlora demo: an aggregator and %lld universities on loopback, %lld rounds\n", d->nodes,
           d->rounds);
    if (d->base_dir)
        printf("  base model: %s (%lld parameters)\n", d->base_dir, model_config_num_params(&cfg));
    else
        printf("  base model: tiny Llama (%lld parameters, byte-level tokenizer), made in %s\n",
               model_config_num_params(&cfg), f->base);
    printf("  local training per round: %lld steps of %lld x %lld tokens, lr %g, LoRA rank %lld "
           "on every linear layer\n",
           d->steps, d->batch, d->seq, d->lr, d->rank);
    if (d->policy) printf("  aggregation under the policy file %s\n", d->policy);
    if (d->seed_text) printf("  seed %lld (the base model and every node's training)\n", d->seed);
    for (long long i = 0; i < d->nodes; i++) {
        char *text = harness_read(f->node[i].data);
        printf("  %-17s trains on %s (%zu bytes of private text)\n", f->node[i].name,
               d->data.label[i], text ? strlen(text) : 0);
        free(text);
    }
    printf("  held-out sets: %zu documents of %d domains, never trained on%s\n", docs,
           d->data.n_domains,
           d->eval_every > 1 ? " (evaluated every few rounds: --eval-every)" : "");
    fflush(stdout);

    d->t0 = harness_now();
    if (harness_start_aggregator(f, NULL) != 0) return -1;
    for (int i = 0; i < f->n; i++)
        if (harness_node_config(f, i, f->endpoint, NULL) != 0 ||
            harness_start_node(f, i, NULL) != 0)
            return -1;

    demo_round *r0 = &d->hist[0];
    memset(r0, 0, sizeof *r0);
    /* Round 0: the base as the aggregator imported it (versions/latest
     * until round 1 publishes). */
    uint8_t h0[STORE_HASH_LEN];
    if (store_latest(f->agg_state, h0) != 0 || evaluate(d, f->base, r0) != 0) return -1;
    hex_encode(h0, STORE_HASH_LEN, r0->version);
    d->n_hist = 1;
    print_header(d);
    if (log_round(d, r0) != 0) return -1;

    double seen = 0;
    uint64_t next = 1;
    while (next <= (uint64_t)d->rounds) {
        if (demo_interrupted) return err_set("interrupted");
        if (harness_now() - d->t0 > (double)d->timeout)
            return err_set("the federation did not finish within %lld s (--timeout)", d->timeout);
        int done;
        if (try_round(d, next, &seen, &done) != 0) return -1;
        if (done) {
            next++;
            seen = 0;
            continue;
        }
        if (check_processes(d) != 0) return -1;
        int running = harness_running(&f->agg);
        for (int i = 0; i < f->n; i++) running += harness_running(&f->node[i].proc);
        if (running == 0)
            return err_set("every process exited before round %llu was published",
                           (unsigned long long)next);
        harness_sleep_ms(50);
    }
    /* The nodes exit once told the federation is finished; the aggregator
     * after its linger time, or now. */
    for (double t = harness_now(); harness_now() - t < 30; harness_sleep_ms(50)) {
        int nodes_left = 0;
        for (int i = 0; i < f->n; i++) nodes_left += harness_running(&f->node[i].proc);
        if (!nodes_left) break;
    }
    harness_stop_all(f, 5);
    for (int i = 0; i < f->n; i++)
        if (harness_exit_code(f->node[i].proc.status) != 0)
            return err_set("%s exited with status %d (its log: %s)", f->node[i].name,
                           harness_exit_code(f->node[i].proc.status), f->node[i].log);
    double total = harness_now() - d->t0;

    /* The final merged model, as a Hugging Face directory: the version as
     * `fedlora export` writes it. */
    char model_dir[HARNESS_PATH];
    const demo_round *last = &d->hist[d->n_hist - 1];
    uint8_t last_hash[STORE_HASH_LEN];
    int complete;
    if (harness_join(model_dir, d->out, "model") != 0 ||
        hex_decode(last->version, last_hash, STORE_HASH_LEN) != 0 ||
        store_export(f->agg_state, last_hash, model_dir, 0, &complete) != 0)
        return err_context("writing the final model");
    demo_report rep = {
        .hist = d->hist, .n_hist = d->n_hist, .n_nodes = f->n, .rounds = (int)d->rounds};
    for (int i = 0; i < f->n; i++) {
        rep.names[i] = f->node[i].name;
        rep.domains[i] = d->data.label[i];
    }
    if (harness_join(path, d->out, "report.svg") != 0 || demo_report_svg(path, &rep) != 0)
        return -1;

    uint64_t bytes = 0;
    for (int k = 1; k < d->n_hist; k++) bytes += d->hist[k].bytes;
    char moved[32];
    human_bytes(bytes, moved, sizeof moved);
    double drop = d->hist[0].global_loss - last->global_loss;
    printf("\nglobal held-out loss %.4f -> %.4f over %lld rounds (%s by %.4f); %s moved; "
           "%.1f s\n",
           d->hist[0].global_loss, last->global_loss, d->rounds, drop > 0 ? "down" : "UP",
           fabs(drop), moved, total);
    printf("wrote %s/metrics.jsonl, %s/report.svg and %s/model/ (final version %.16s…)\n", d->out,
           d->out, d->out, last->version);
    return 0;
}

int cmd_demo(int argc, char **argv) {
    const char *rounds = "3", *steps = "15", *lr = "0.01", *rank = "8", *timeout = "600",
               *batch = "8", *seq = "64", *eval_every = "1", *eval_fraction = "0.2";
    demo d;
    memset(&d, 0, sizeof d);
    d.out = "fedlora-demo";
    opts_spec spec[] = {{"rounds", &rounds},
                        {"nodes", &d.nodes_text},
                        {"out", &d.out},
                        {"keep", NULL, &d.keep},
                        {"steps", &steps},
                        {"lr", &lr},
                        {"rank", &rank},
                        {"batch", &batch},
                        {"seq", &seq},
                        {"timeout", &timeout},
                        {"policy", &d.policy},
                        {"seed", &d.seed_text},
                        {"data", &d.data_dir},
                        {"base", &d.base_dir},
                        {"eval-every", &eval_every},
                        {"eval-fraction", &eval_fraction},
                        {"precision", &d.precision}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (opts_int(rounds, "--rounds", 1, 100000, &d.rounds) != 0 ||
        opts_int(steps, "--steps", 1, 100000, &d.steps) != 0 ||
        opts_double(lr, "--lr", 1e-6, 1, &d.lr) != 0 ||
        opts_int(rank, "--rank", 1, 64, &d.rank) != 0 ||
        opts_int(batch, "--batch", 1, 4096, &d.batch) != 0 ||
        opts_int(seq, "--seq", 2, 65536, &d.seq) != 0 ||
        opts_int(timeout, "--timeout", 1, 10000000, &d.timeout) != 0 ||
        opts_int(eval_every, "--eval-every", 1, 100000, &d.eval_every) != 0 ||
        opts_double(eval_fraction, "--eval-fraction", 1e-6, 0.9, &d.eval_fraction) != 0 ||
        (d.seed_text && opts_int(d.seed_text, "--seed", 0, (long long)1 << 62, &d.seed) != 0))
        return opts_fail();
    if (d.precision && strcmp(d.precision, "auto") != 0 && strcmp(d.precision, "fp32") != 0 &&
        strcmp(d.precision, "bf16") != 0) {
        err_set("--precision %s: want auto, fp32 or bf16", d.precision);
        return opts_fail();
    }
    if (d.policy && !fio_exists(d.policy)) {
        err_set("--policy %s: no such file", d.policy);
        return opts_fail();
    }
    if (d.base_dir && !fio_exists(d.base_dir)) {
        err_set("--base %s: no such directory", d.base_dir);
        return opts_fail();
    }
    if (d.data_dir) {
        if (demo_data_partition(&d.data, d.data_dir) != 0) return opts_fail();
        d.nodes = d.data.n;
        long long want;
        if (d.nodes_text && (opts_int(d.nodes_text, "--nodes", 1, HARNESS_NODES_MAX, &want) != 0 ||
                             want != d.nodes)) {
            err_set("--nodes %s: --data %s has %lld universities, and with --data all of them "
                    "take part (make a partition with --nodes N for another count)",
                    d.nodes_text, d.data_dir, d.nodes);
            return opts_fail();
        }
    } else if (opts_int(d.nodes_text ? d.nodes_text : "3", "--nodes", 1, demo_num_domains,
                        &d.nodes) != 0) {
        return opts_fail();
    }
    if (fio_exists(d.out) && !fio_dir_empty(d.out)) {
        fprintf(stderr,
                "fedlora demo: %s already exists and is not empty; remove it or choose another "
                "--out\n",
                d.out);
        return 1;
    }
    d.hist = calloc((size_t)d.rounds + 1, sizeof *d.hist);
    if (!d.hist || harness_join(d.work, d.out, "work") != 0 ||
        harness_join(d.metrics, d.out, "metrics.jsonl") != 0 || fio_mkdirs(d.work, 0700) != 0) {
        free(d.hist);
        return opts_fail();
    }
    if (opts_catch_stop(on_signal) != 0) {
        free(d.hist);
        return opts_fail();
    }

    rc = run(&d);
    if (rc != 0) {
        char why[ERR_MSG_MAX];
        snprintf(why, sizeof why, "%s", err_msg());
        harness_stop_all(&d.fed, 5);
        if (!demo_interrupted) { /* what went wrong is in the logs' last lines */
            if (d.fed.agg_log[0]) harness_show_tail("the aggregator", d.fed.agg_log, 12);
            for (int i = 0; i < d.fed.n; i++)
                if (d.fed.node[i].log[0])
                    harness_show_tail(d.fed.node[i].name, d.fed.node[i].log, 12);
        }
        fprintf(stderr, "fedlora demo: %s\n(everything is kept in %s)\n", why, d.work);
    } else if (!d.keep && harness_remove_tree(d.work) != 0) {
        fprintf(stderr, "fedlora demo: could not remove %s: %s\n", d.work, strerror(errno));
    }
    for (int k = 0; k < DEMO_DOMAINS_MAX; k++) dataset_free(d.eval_set[k]);
    free(d.hist);
    return rc == 0 ? 0 : demo_interrupted ? 128 + demo_interrupted : 1;
}
