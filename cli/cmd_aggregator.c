/* fedlora aggregator --config FILE — the consortium's aggregator
 * (aggregator/agg.h); with --recompute ROUND --out DIR, the offline
 * re-derivation of one round's model from the stored sealed deltas. */
#include "aggregator/agg.h"
#include "aggregator/store.h"
#include "cli/commands.h"
#include "cli/opts.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

static const char *usage_text =
    "usage: fedlora aggregator --config FILE\n"
    "       fedlora aggregator --config FILE --recompute ROUND --out DIR\n"
    "\n"
    "Runs the consortium's aggregator: admits the members listed in the config,\n"
    "opens rounds, collects their sealed LoRA deltas (stored durably before each\n"
    "receipt), merges them exactly (W' = W + sum p_i s_i B_i A_i) and publishes\n"
    "each new model version, content-addressed, under the state directory, as a\n"
    "complete Hugging Face directory (fedlora export writes one out). A\n"
    "restart with the same config goes on where it stopped (the journal is\n"
    "replayed). SIGTERM or SIGINT stop it cleanly. Per-round metrics go to\n"
    "STATE/metrics.jsonl, log lines to stderr. docs/protocol.md, \"Federation\n"
    "flow\", lists the config keys. With a \"status\" section it serves a\n"
    "read-only status page (HTML, /status.json, Prometheus /metrics; see\n"
    "`fedlora status`); with an \"eval\" section it evaluates every published\n"
    "version with `fedlora eval` (docs/federation.md).\n"
    "Connections are authenticated and encrypted with CURVE keyed by the\n"
    "aggregator's and the members' identities; only the roster's members and\n"
    "observers connect (curve = false: in the clear).\n"
    "\n"
    "  --config FILE     the aggregator's config (libconfig)\n"
    "  --recompute ROUND re-derive round ROUND's model offline from the state\n"
    "                    directory (base version + accepted sealed deltas) into\n"
    "                    --out DIR, and print its version hash\n"
    "  --out DIR         where --recompute writes config.json and the weights\n";

int cmd_aggregator(int argc, char **argv) {
    const char *config = NULL, *recompute = NULL, *out = NULL;
    opts_spec spec[] = {{"config", &config}, {"recompute", &recompute}, {"out", &out}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!config) return opts_missing(usage_text, "--config");
    if (recompute && !out) return opts_missing(usage_text, "--out (with --recompute)");
    if (out && !recompute) return opts_missing(usage_text, "--recompute (with --out)");
    agg_config c;
    if (agg_config_load(&c, config) < 0) return opts_fail();
    rc = 1;
    if (recompute) {
        long long round;
        uint8_t hash[32];
        char hex[STORE_HEX_LEN + 1];
        if (fio_exists(out) && !fio_dir_empty(out)) {
            err_set("%s already exists and is not empty; choose a new --out directory", out);
        } else if (opts_int(recompute, "--recompute", 1, 1000000, &round) == 0 &&
                   agg_recompute(&c, (uint64_t)round, out, hash) == 0) {
            hex_encode(hash, 32, hex);
            printf("round %lld recomputed into %s: version %s\n", round, out, hex);
            rc = 0;
        }
        if (rc) opts_fail();
        agg_config_free(&c);
        return rc;
    }
    /* The config's "eval" section runs this very binary as `fedlora eval`. */
    ssize_t n = readlink("/proc/self/exe", c.eval_exe, sizeof c.eval_exe - 1);
    c.eval_exe[n > 0 ? n : 0] = '\0';
    /* Bound first: a port in use (or a CURVE key that does not load) stops
     * here, before anything is written to the state directory. */
    agg *a;
    agg_listener *l = NULL;
    if (agg_listen(&l, &c) == 0 && agg_open(&a, &c, (uint64_t)time(NULL)) == 0) {
        if (agg_run(a, l) == 0) rc = 0;
        agg_close(a);
    }
    agg_listener_close(l);
    if (rc) {
        err_context("aggregator (config %s)", config);
        opts_fail();
    }
    agg_config_free(&c);
    return rc;
}
