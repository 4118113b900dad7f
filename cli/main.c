/* fedlora — one binary, git-style subcommands (docs/architecture.md, "The CLI
 * contract"). */
#include "cli/commands.h"

#include <stdio.h>
#include <string.h>

#ifndef FEDLORA_VERSION
#define FEDLORA_VERSION "dev"
#endif

/* In the order people meet them: local fine-tuning, then the federation. */
static const cli_command commands[] = {
    {"init-model", cmd_init_model, "write a randomly initialised Hugging Face model directory"},
    {"tokenize", cmd_tokenize, "encode a text or JSONL corpus into a pre-tokenized token file"},
    {"train", cmd_train, "fine-tune a LoRA adapter (PEFT format) on a data file"},
    {"eval", cmd_eval, "a model on evaluation sets: loss and perplexity, multiple-choice acc"},
    {"generate", cmd_generate, "continue a prompt with a model and optional adapter"},
    {"merge-adapter", cmd_merge_adapter, "fold a LoRA adapter into its base model"},
    {"merge", cmd_merge, "merge adapters into the base model: linear, task arithmetic, TIES, DARE"},
#ifdef FEDLORA_NET
    {"keygen", cmd_keygen, "make a member identity (Ed25519 + X25519 keys), print its fingerprint"},
    {"roster", cmd_roster, "the consortium's signed member list: init, add, revoke, rotate, list"},
    {"aggregator", cmd_aggregator, "run the consortium's aggregator (aggregator --config FILE)"},
    {"status", cmd_status, "the aggregator's status page in the terminal: round, members, rounds"},
    {"export", cmd_export, "write a published version as a Hugging Face model directory"},
    {"node", cmd_node, "take part in federated rounds as a university (node --config FILE)"},
    {"doctor", cmd_doctor, "check a node's setup: config, keys, disk, the aggregator, the roster"},
    {"demo", cmd_demo, "run a whole federation on loopback: aggregator, 3 universities, 3 rounds"},
#endif
};

static void usage(FILE *f) {
    fprintf(f, "usage: fedlora <command> [options]   (fedlora <command> --help for its options)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("fedlora %s\n", FEDLORA_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "fedlora: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
