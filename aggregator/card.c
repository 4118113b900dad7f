/* card — what makes a published version a directory transformers loads as
 * it is (docs/formats.md, "Complete versions"): beside the weights and
 * config.json, the base's tokenizer files and chat templates,
 * generation_config.json, and README.md, the model card: where the version
 * comes from (base model, parent version, round), who made it (how many
 * members, tokens, the policy, the members' losses) and its hash. None of
 * these files is part of the version's identity (wire/version.h), so a
 * version published again after a crash keeps the directory of its first
 * publication. */
#include "aggregator/state.h"

#include "aggregator/store.h"
#include "model/modeldir.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CARD_FILE "README.md"

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s && s[1] ? s + 1 : path;
}

/* "bfloat16, 4 shards, 16.1 GB" */
static int weights_line(const char *dir, char *out, size_t n) {
    char path[AGG_PATH_MAX];
    model_config cfg;
    if (fio_join(path, sizeof path, dir, "config.json") < 0 || model_config_load(&cfg, path) < 0)
        return -1;
    int sharded = version_is_sharded(dir);
    if (sharded < 0) return -1;
    uint64_t bytes = 0;
    int shards = 1;
    if (sharded) {
        version_index *x;
        if (fio_join(path, sizeof path, dir, VERSION_INDEX_FILE) < 0 ||
            version_index_read(&x, path, NULL) < 0)
            return -1;
        bytes = x->bytes;
        shards = x->n_shards;
        version_index_free(x);
    } else {
        struct stat st;
        if (fio_join(path, sizeof path, dir, VERSION_MODEL_FILE) < 0 || stat(path, &st) != 0)
            return err_errno("stat of %s", path);
        bytes = (uint64_t)st.st_size;
    }
    char count[32];
    if (sharded)
        snprintf(count, sizeof count, "%d shards with an index", shards);
    else
        snprintf(count, sizeof count, "one file");
    snprintf(out, n, "%s, %s, %llu bytes", cfg.torch_dtype, count, (unsigned long long)bytes);
    return 0;
}

/* The aggregation rule, as the card says it. */
static void policy_line(const agg *a, char *out, size_t n) {
    const agg_config *c = &a->cfg;
    if (!c->has_policy) {
        snprintf(out, n,
                 "the exact product merge, W' = W + Σ_k p_k s_k B_k A_k, with weights p_k "
                 "proportional to the members' tokens");
        return;
    }
    const policy *pol = &c->policy;
    int w = snprintf(out, n, "policy file `%s`: weighting by %s, rule %s, merge %s",
                     base_name(c->policy_path), policy_weight_name(pol->weighting.by),
                     policy_rule_name(pol->robust.rule), policy_merge_name(pol->merge.mode));
    if (pol->dp.enabled && w > 0 && (size_t)w < n) {
        /* Released with this version: the rounds published before and this one. */
        dp_accountant acc = a->dp;
        dp_accountant_add(&acc, pol->rounds.fraction, pol->dp.noise_multiplier, 1);
        snprintf(out + w, n - (size_t)w,
                 "; DP-FedAvg (noise multiplier %g): epsilon %.4g at delta %g over the rounds so "
                 "far (budget %g)",
                 pol->dp.noise_multiplier, dp_epsilon(&acc, pol->dp.delta, NULL), pol->dp.delta,
                 pol->dp.epsilon_budget);
    }
}

/* README.md: YAML front matter as the Hugging Face Hub reads it, then the
 * version's story in a table. */
static int write_card(const agg_card *card, const char *dir, const uint8_t hash[32]) {
    const agg *a = card->a;
    const agg_config *c = &a->cfg;
    const round_result *r = card->r;
    char hex[STORE_HEX_LEN + 1], parent[STORE_HEX_LEN + 1], origin[STORE_HEX_LEN + 1];
    char weights[128], pol[512], path[AGG_PATH_MAX];
    hex_encode(hash, 32, hex);
    hex_encode(card->round ? a->initial : hash, 32, origin);
    if (weights_line(dir, weights, sizeof weights) < 0) return -1;
    policy_line(a, pol, sizeof pol);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return err_errno("writing the model card");
    fprintf(f, "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- fedlora\n"
               "- federated-learning\n- lora\n---\n\n");
    if (card->round == 0) {
        fprintf(f,
                "# %s: the base model\n\n"
                "The base model of the federated fine-tuning of consortium `%s`, as it was "
                "imported by the consortium's fedlora aggregator. No round has changed it yet.\n\n",
                c->consortium_name, c->consortium_name);
    } else {
        fprintf(f,
                "# %s: round %llu\n\n"
                "A model version of consortium `%s`, made by federated LoRA fine-tuning with "
                "fedlora: each member trained a LoRA adapter on its own data, which never left "
                "it, and sent only the sealed adapter; the aggregator merged the adapters into "
                "the weights of the parent version.\n\n",
                c->consortium_name, (unsigned long long)card->round, c->consortium_name);
    }
    fprintf(f, "| | |\n| --- | --- |\n");
    fprintf(f, "| version (SHA-256 of the weights) | `%s` |\n", hex);
    if (card->parent) {
        hex_encode(card->parent, 32, parent);
        fprintf(f, "| parent version | `%s` |\n", parent);
    }
    fprintf(f, "| base model | `%s`, imported as version `%s` |\n", base_name(c->base_model),
            origin);
    if (card->round) {
        fprintf(f, "| round | %llu of %llu |\n", (unsigned long long)card->round,
                (unsigned long long)c->rounds);
        fprintf(f, "| members merged | %d", r->n);
        if (r->ndrop) fprintf(f, " (%d dropped at aggregation)", r->ndrop);
        fprintf(f, " |\n| tokens trained on | %llu (%llu sequences) |\n",
                (unsigned long long)r->tokens, (unsigned long long)r->examples);
        fprintf(f, "| aggregation | %s |\n", pol);
    }
    fprintf(f, "| weights | %s |\n\n", weights);
    fprintf(f,
            "Terms of use: those of the base model `%s` (its own card and license say which); "
            "this card does not change them.\n\n",
            base_name(c->base_model));
    if (card->round) {
        const struct msg_train *t = &c->train;
        fprintf(f, "## Training\n\nEach member trained a fresh LoRA adapter on this round's "
                   "parent version: ");
        fprintf(f,
                "%u steps of %u sequences of %u tokens, learning rate %g, rank %u, alpha %g, "
                "on",
                t->steps, t->batch, t->seq, t->lr, t->rank, t->alpha);
        for (uint32_t i = 0; i < t->ntargets; i++)
            fprintf(f, "%s `%s`", i ? "," : "", t->targets[i]);
        fprintf(f, ".\n\n## Metrics\n\n");
        double before = 0, after = 0;
        for (int i = 0; i < r->n; i++) {
            before += r->u[i].loss_before / r->n;
            after += r->u[i].loss_after / r->n;
        }
        fprintf(f,
                "Each member's loss on its own held-out documents, before and after its local "
                "training (the mean over the %d members; each member's own numbers are in the "
                "aggregator's metrics.jsonl):\n\n"
                "| loss before | loss after |\n| --- | --- |\n| %.4f | %.4f |\n\n",
                r->n, before, after);
    }
    fprintf(f,
            "## Identity\n\n"
            "The version hash is the SHA-256 of `model.safetensors` or, when the weights are "
            "sharded, of `model.safetensors.index.json`, whose metadata (`fedlora_shards`) lists "
            "the SHA-256 and size of every shard. It covers the weights only: this card, "
            "`config.json`, `generation_config.json` and the tokenizer files are not part of "
            "it. `sha256sum` of that file gives the hash.\n");
    if (fclose(f) != 0 || !text) {
        free(text);
        return err_errno("writing the model card");
    }
    int rc = fio_join(path, sizeof path, dir, CARD_FILE) < 0
                 ? -1
                 : fio_write_atomic(path, text, len, 0644);
    free(text);
    return rc;
}

/* The tokenizer files come from the parent version when it is complete
 * (it has its card), else from the configured base model: after the
 * import the store holds all it needs. */
int agg_complete_version(void *ctx, const char *dir, const uint8_t hash[32]) {
    const agg_card *card = ctx;
    const agg_config *c = &card->a->cfg;
    char from[AGG_PATH_MAX], card_path[AGG_PATH_MAX], config[AGG_PATH_MAX];
    snprintf(from, sizeof from, "%s", c->base_model);
    if (card->parent) {
        char pdir[AGG_PATH_MAX];
        if (store_version_dir(c->state, card->parent, pdir, sizeof pdir) < 0 ||
            fio_join(card_path, sizeof card_path, pdir, CARD_FILE) < 0)
            return -1;
        if (fio_exists(card_path)) snprintf(from, sizeof from, "%s", pdir);
    }
    model_config cfg;
    if (modeldir_copy_companions(from, dir) < 0 ||
        fio_join(config, sizeof config, dir, "config.json") < 0 ||
        model_config_load(&cfg, config) < 0 || modeldir_ensure_generation_config(&cfg, dir) < 0 ||
        write_card(card, dir, hash) < 0)
        return err_context("completing the version directory %s", dir);
    return 0;
}
