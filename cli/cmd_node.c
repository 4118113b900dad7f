/* fedlora node — take part in federated rounds (node/node.h does the work;
 * docs/federation.md describes the config file and the flow). */
#include "cli/commands.h"
#include "cli/opts.h"
#include "node/node.h"
#include "util/err.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static const char *usage_text =
    "usage: fedlora node --config FILE\n"
    "\n"
    "Joins the consortium's aggregator and takes part in its rounds until the federation\n"
    "is finished: fetches each round's model version, trains a LoRA adapter on the local\n"
    "data (which never leaves this machine), seals it to the aggregator and submits it.\n"
    "FILE is a libconfig file (docs/federation.md lists every key):\n"
    "\n"
    "  keys = { dir = \"keys\"; name = \"uni-a\"; };     # fedlora keygen --name uni-a --out keys\n"
    "  consortium = \"my-consortium\";\n"
    "  aggregator = { endpoint = \"tcp://agg.example.org:7000\"; identity = \"aggregator.id\"; };\n"
    "  base_model = \"base\";                           # config.json + tokenizer.json\n"
    "  data = \"private.jsonl\";\n"
    "  state = \"state\";\n"
    "\n"
    "All progress goes to stderr. SIGTERM or SIGINT stops it safely; run it again with the\n"
    "same config to go on where it stopped (a sealed delta is never trained or sent twice).\n"
    "Exit status: 0 when the federation is finished, 1 on an error, 128+N after signal N.\n";

static void on_signal(int sig) {
    node_request_stop(sig);
}

int cmd_node(int argc, char **argv) {
    const char *config = NULL;
    opts_spec spec[] = {{"config", &config}};
    int rc = opts_parse(argc, argv, spec, 1, usage_text);
    if (rc >= 0) return rc;
    if (!config) return opts_missing(usage_text, "--config");
    node_config c;
    if (node_config_load(&c, config) != 0) return opts_fail();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
        err_errno("sigaction");
        return opts_fail();
    }
    rc = node_run(&c);
    if (rc == NODE_FINISHED) return 0;
    if (rc == NODE_STOPPED) return 128 + node_stop_signal_number();
    return opts_fail();
}
