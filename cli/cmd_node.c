/* fedlora node — take part in federated rounds (node/node.h does the work;
 * docs/federation.md describes the config file and the flow); and
 * fedlora node init — make a new node's directory (node/init.h;
 * docs/onboarding.md). */
#include "cli/commands.h"
#include "cli/opts.h"
#include "node/init.h"
#include "node/node.h"
#include "util/err.h"

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *usage_text =
    "usage: fedlora node --config FILE\n"
    "       fedlora node init ...      (make a new node's keys and config: node init --help)\n"
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
    "The connection is authenticated and encrypted with CURVE: the aggregator must prove it\n"
    "holds the key of aggregator.identity, and admits only keys on its roster\n"
    "(aggregator.curve = false only while a consortium moves to CURVE: docs/onboarding.md).\n"
    "All progress goes to stderr. SIGTERM or SIGINT stops it safely; run it again with the\n"
    "same config to go on where it stopped (a sealed delta is never trained or sent twice).\n"
    "Exit status: 0 when the federation is finished, 1 on an error, 128+N after signal N.\n";

static void on_signal(int sig) {
    node_request_stop(sig);
}

static const char *init_usage =
    "usage: fedlora node init --name NAME --out DIR --consortium NAME\n"
    "           --aggregator tcp://HOST:PORT --aggregator-id FILE --admin FINGERPRINT\n"
    "           --base-model DIR --data FILE [--device cpu]\n"
    "\n"
    "Makes what a new university needs to join the consortium, in DIR:\n"
    "  DIR/keys/NAME.sign.pem, NAME.kx.pem  private keys (mode 0600): they stay on this machine\n"
    "  DIR/keys/NAME.id                     public identity: send it to the consortium admin\n"
    "  DIR/aggregator.id                    a copy of the aggregator's identity (--aggregator-id)\n"
    "  DIR/node.cfg                         the node config, every key explained in a comment\n"
    "  DIR/state/                           the node's state directory\n"
    "then prints this identity's fingerprint and the next steps. Existing keys or a config\n"
    "are never overwritten. On a terminal it asks for each missing option; otherwise a\n"
    "missing option is an error.\n"
    "\n"
    "  --name NAME            your member name: 1-64 of A-Z a-z 0-9 . _ - (not starting . or -)\n"
    "  --out DIR              the node's directory (made if missing)\n"
    "  --consortium NAME      the consortium's name, as the admin spells it\n"
    "  --aggregator ENDPOINT  where the aggregator listens: tcp://HOST:PORT\n"
    "  --aggregator-id FILE   the aggregator's public .id file, from the consortium\n"
    "  --admin FINGERPRINT    the consortium admin's fingerprint (64 hex digits, spaces allowed),\n"
    "                         as the admin read it to you by phone or video call\n"
    "  --base-model DIR       the federation's base model (config.json, tokenizer.json)\n"
    "  --data FILE            your training data (text or JSON Lines); it never leaves here\n"
    "  --device cpu           where to train (cpu)\n";

/* One answer from the terminal: the line without surrounding white space,
 * malloc'd; NULL at end of input. */
static char *ask(const char *prompt) {
    fprintf(stderr, "%s: ", prompt);
    fflush(stderr);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        fputc('\n', stderr);
        return NULL;
    }
    char *start = line;
    while (*start && isspace((unsigned char)*start)) start++;
    size_t len = strlen(start);
    while (len && isspace((unsigned char)start[len - 1])) len--;
    memmove(line, start, len);
    line[len] = '\0';
    return line;
}

static int node_init_command(int argc, char **argv) {
    node_init_options o;
    memset(&o, 0, sizeof o);
    opts_spec spec[NODE_INIT_FIELDS];
    for (int i = 0; i < NODE_INIT_FIELDS; i++)
        spec[i] = (opts_spec){node_init_fields[i].flag, node_init_slot(&o, &node_init_fields[i])};
    int rc = opts_parse(argc, argv, spec, NODE_INIT_FIELDS, init_usage);
    if (rc >= 0) return rc;

    char missing[256];
    char *answers[NODE_INIT_FIELDS] = {0};
    if (node_init_missing(&o, missing, sizeof missing) > 0) {
        if (!isatty(STDIN_FILENO)) {
            fprintf(stderr,
                    "fedlora node init: missing %s (give them as flags, or run it on a terminal "
                    "to be asked)\n\n%s",
                    missing, init_usage);
            return 2;
        }
        /* Ask for each missing one, again until the answer is usable. */
        for (int i = 0; i < NODE_INIT_FIELDS; i++) {
            const node_init_field *f = &node_init_fields[i];
            const char **slot = node_init_slot(&o, f);
            if (!f->required || (*slot && **slot)) continue;
            for (;;) {
                char *a = ask(f->prompt);
                if (!a) {
                    fprintf(stderr, "fedlora node init: no answer for --%s\n", f->flag);
                    rc = 2;
                    goto done;
                }
                if (node_init_check(f, a) == 0) {
                    answers[i] = a;
                    *slot = a;
                    break;
                }
                fprintf(stderr, "  %s\n", err_msg());
                free(a);
            }
        }
    }
    node_init_result res;
    if (node_init_create(&o, &res) != 0) {
        fprintf(stderr, "fedlora node init: %s\n", err_msg());
        rc = 1;
        goto done;
    }
    char fp[KEYS_FP_TEXT_LEN], agg_fp[KEYS_FP_TEXT_LEN];
    keys_fingerprint_text(res.fp, fp);
    keys_fingerprint_text(res.agg_fp, agg_fp);
    printf("wrote %s/keys/%s.sign.pem and %s.kx.pem (private keys: they never leave this machine)\n"
           "wrote %s (public identity)\n"
           "wrote %s/aggregator.id, %s and %s/state/\n"
           "aggregator fingerprint: %s\n"
           "          (compare it with the consortium's operator)\n"
           "fingerprint: %s\n\n"
           "Next steps:\n"
           "  1. Send %s to the consortium admin (e-mail is fine: it is public).\n"
           "  2. Read the fingerprint above to the admin over a phone or video call; the admin\n"
           "     must see the same one before adding you to the roster.\n"
           "  3. Once the admin has added you: fedlora doctor --config %s\n"
           "  4. When doctor finds nothing to fix: fedlora node --config %s\n",
           o.out, o.name, o.name, res.id_file, o.out, res.config, o.out, agg_fp, fp, res.id_file,
           res.config, res.config);
    rc = 0;
done:
    for (int i = 0; i < NODE_INIT_FIELDS; i++) free(answers[i]);
    return rc;
}

int cmd_node(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "init")) {
        /* argv[0] names the command in opts' messages: "fedlora node init: ..." */
        char **args = malloc((size_t)argc * sizeof *args);
        if (!args) return fprintf(stderr, "fedlora node init: out of memory\n"), 1;
        args[0] = (char *)"node init";
        memcpy(args + 1, argv + 2, (size_t)(argc - 2) * sizeof *args);
        int rc = node_init_command(argc - 1, args);
        free(args);
        return rc;
    }
    const char *config = NULL;
    opts_spec spec[] = {{"config", &config}};
    int rc = opts_parse(argc, argv, spec, 1, usage_text);
    if (rc >= 0) return rc;
    if (!config) return opts_missing(usage_text, "--config");
    node_config c;
    if (node_config_load(&c, config) != 0) return opts_fail();

    if (opts_catch_stop(on_signal) != 0) return opts_fail();
    rc = node_run(&c);
    if (rc == NODE_FINISHED) return 0;
    if (rc == NODE_STOPPED) return 128 + node_stop_signal_number();
    return opts_fail();
}
