/* fedlora export — a published model version out of an aggregator's state
 * directory as a Hugging Face directory that transformers loads as it is
 * (docs/federation.md, "Exporting a version"): the weights, verified against
 * the version hash where they land, config.json, the tokenizer files and
 * chat templates, generation_config.json and the model card. */
#include "aggregator/store.h"
#include "cli/commands.h"
#include "cli/opts.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/hex.h"

#include <stdio.h>

static const char *usage_text =
    "usage: fedlora export --state DIR [--version HASH|latest] --out DIR [--link]\n"
    "\n"
    "Writes a model version published by an aggregator into --out (new or empty):\n"
    "its weights (model.safetensors, or shards and model.safetensors.index.json),\n"
    "config.json, the base's tokenizer files and chat template, generation_config.json\n"
    "and README.md, the model card. The weights are checked against the version's\n"
    "SHA-256 where they are written.\n"
    "\n"
    "  --state DIR     the aggregator's state directory (its config's `state`)\n"
    "  --version V     latest (the default: the newest version, versions/latest), the\n"
    "                  version's 64 hex digits, or the first 8 or more of them\n"
    "  --out DIR       where the model directory goes (new or empty)\n"
    "  --link          hard-link the weights instead of copying them (same file\n"
    "                  system; then never rewrite them in place: they are the store's)\n";

int cmd_export(int argc, char **argv) {
    const char *state = NULL, *version = "latest", *out = NULL;
    int link = 0;
    opts_spec spec[] = {
        {"state", &state}, {"version", &version}, {"out", &out}, {"link", NULL, &link}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!state || !out) return opts_missing(usage_text, "--state and --out");
    if (fio_exists(out) && !fio_dir_empty(out)) {
        err_set("%s already exists and is not empty; choose a new --out directory (nothing was "
                "written)",
                out);
        return opts_fail();
    }
    uint8_t hash[STORE_HASH_LEN];
    char hex[STORE_HEX_LEN + 1];
    int complete = 0, existed = fio_exists(out);
    if (store_resolve(state, version, hash) != 0) {
        err_context("--version %s in --state %s", version, state);
        return opts_fail();
    }
    if (store_export(state, hash, out, link, &complete) != 0) {
        /* Half a model directory must not pass for one. */
        char why[ERR_MSG_MAX];
        snprintf(why, sizeof why, "%s", err_msg());
        if (!existed && fio_remove_tree(out) == 0)
            err_set("%s (nothing was written)", why);
        else
            err_set("%s (%s holds a partial export: remove it)", why, out);
        return opts_fail();
    }
    hex_encode(hash, STORE_HASH_LEN, hex);
    if (!complete)
        fprintf(stderr,
                "fedlora export: note: version %.16s... was published before versions carried "
                "their tokenizer files and model card: copy the tokenizer files from the base "
                "model into %s\n",
                hex, out);
    printf("exported version %s to %s (weights verified)\n", hex, out);
    return 0;
}
