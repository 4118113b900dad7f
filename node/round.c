/* node round: train an adapter on the round's base with the round's
 * settings and the node's data (a fresh one of its own, or the start
 * adapter the round hands out: node/start.c), then build the DELTA payload (wire/payload.h)
 * and seal it to the aggregator (wire/envelope.h).
 *
 * Everything that decides the adapter is a function of the node config, the
 * round number and the base version: the held-out split comes from `seed`
 * (the same documents every round), the adapter's initialisation and the data
 * order from (seed, name, round), so a training killed midway resumes from
 * its checkpoint (train/trainer.h) into the adapter an uninterrupted run makes. */
#include "node/internal.h"

#include "data/dataset.h"
#include "lora/lora.h"
#include "train/trainer.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"
#include "util/rng.h"
#include "wire/crypto.h"
#include "wire/payload.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The seed of round r's adapter and data order: distinct per member and
 * round, fixed for a given config. */
static uint64_t round_seed(const node_config *c, uint64_t round) {
    uint64_t s = dataset_fnv1a64(DATASET_FNV_OFFSET, c->name, strlen(c->name));
    s ^= c->seed * 0x9e3779b97f4a7c15ull ^ round;
    return rng_next(&s);
}

/* Target tokens the trainer consumed: the steps visit positions
 * 0 .. steps·K·B - 1 of the data order (train/trainer.h), and each row's
 * targets that carry loss are counted. */
static int count_tokens(const dataset *d, uint64_t seed, uint64_t examples, uint64_t *tokens) {
    size_t rows = dataset_num_rows(d, DATASET_TRAIN);
    int T = dataset_seq(d);
    int64_t *per_row = calloc(rows, sizeof *per_row);
    int32_t *in = malloc(sizeof(int32_t) * (size_t)T), *tg = malloc(sizeof(int32_t) * (size_t)T);
    dataset_order o = {0};
    int rc = -1;
    if (!per_row || !in || !tg) {
        err_set("out of memory counting training tokens");
        goto done;
    }
    for (size_t i = 0; i < rows; i++) {
        if (dataset_row(d, DATASET_TRAIN, i, in, tg) != 0) goto done;
        for (int t = 0; t < T; t++) per_row[i] += tg[t] != MODEL_IGNORE_INDEX;
    }
    if (dataset_order_init(&o, rows, seed) != 0) goto done;
    *tokens = 0;
    for (uint64_t pos = 0; pos < examples; pos++)
        *tokens += (uint64_t)per_row[dataset_order_row(&o, pos)];
    rc = 0;
done:
    dataset_order_free(&o);
    free(per_row);
    free(in);
    free(tg);
    return rc;
}

/* The adapter's tensors as the payload's TENSORS list (pointing into s). */
static int adapter_tensors(lora_set *s, struct msg_tensor **out, size_t *n) {
    int k = lora_num_tensors(s);
    struct msg_tensor *t = calloc((size_t)k, sizeof *t);
    if (!t) return err_set("out of memory listing the adapter's tensors");
    for (int i = 0; i < k; i++) {
        const model_param *p = lora_tensor(s, i);
        if (snprintf(t[i].name, sizeof t[i].name, "%s", p->name) >= (int)sizeof t[i].name) {
            free(t);
            return err_set("tensor name %s is too long for a payload", p->name);
        }
        t[i].dtype = MSG_F32;
        t[i].ndim = 2;
        t[i].shape[0] = (uint64_t)p->shape[0];
        t[i].shape[1] = (uint64_t)p->shape[1];
        t[i].data = (const uint8_t *)p->data; /* real is float here, little-endian */
        t[i].size = (uint64_t)p->numel * sizeof(float);
    }
    *out = t;
    *n = (size_t)k;
    return 0;
}

/* Seals the payload and writes the outbox files: the record first, the
 * envelope last, each atomically, so an envelope in the outbox always has
 * its record (the envelope's presence is what a restart goes by). The
 * payload itself is kept too (mode 0600; the same bytes as the adapter the
 * trainer left in rounds/<r>/train): after a key rotation the delta is
 * sealed again with the new keys instead of trained again (node_reseal). */
static int seal_and_store(node_ctx *n, const uint8_t *payload, size_t len, node_round_record *rec) {
    envelope_params p = {
        .round = rec->round, .payload_type = PAYLOAD_TYPE_DELTA, .payload_size = len};
    memcpy(p.consortium, n->c->consortium, sizeof p.consortium);
    uint8_t *env = NULL;
    size_t env_len = 0;
    envelope_header hdr;
    if (envelope_seal_mem(&p, &n->me, n->agg.kx_pub, payload, &env, &env_len, &hdr) != 0)
        return err_context("sealing round %llu's delta", (unsigned long long)rec->round);
    memcpy(rec->msgid, hdr.message_id, MSG_ID_LEN);
    rec->envelope_bytes = env_len;
    char outbox[NODE_PATH_MAX], json[NODE_PATH_MAX], path[NODE_PATH_MAX], plain[NODE_PATH_MAX];
    int rc = -1;
    if (crypto_sha256(env, env_len, rec->digest) != 0 || node_path(n, outbox, "outbox") != 0 ||
        fio_mkdirs(outbox, 0755) != 0 ||
        node_path(n, json, "outbox/round-%llu.json", (unsigned long long)rec->round) != 0 ||
        node_path(n, plain, "outbox/round-%llu.payload", (unsigned long long)rec->round) != 0 ||
        node_path(n, path, "outbox/round-%llu.env", (unsigned long long)rec->round) != 0 ||
        node_record_write(json, rec) != 0 || fio_write_atomic(plain, payload, len, 0600) != 0 ||
        fio_write_atomic(path, env, env_len, 0600) != 0)
        goto done;
    rc = 0;
done:
    free(env);
    return rc;
}

/* Keys checked against an outbox envelope: ours, and nobody else's. */
static int lookup_self(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out) {
    const node_ctx *n = arg;
    if (memcmp(fp, n->fp, KEYS_FP_LEN) != 0) return 0;
    *out = n->me.pub;
    return 1;
}

int node_outbox_signed_by_me(node_ctx *n, uint64_t round) {
    char path[NODE_PATH_MAX];
    if (node_path(n, path, "outbox/round-%llu.env", (unsigned long long)round) != 0) return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno("cannot open %s", path);
    envelope_expect x = {.lookup = lookup_self, .lookup_arg = n};
    memcpy(x.consortium, n->c->consortium, sizeof x.consortium);
    x.round_min = x.round_max = round;
    x.max_payload = PAYLOAD_DELTA_MAX;
    envelope_status st = ENVELOPE_OK;
    envelope_header hdr;
    int rc = envelope_verify(&x, n->agg.kx_pub, envelope_fd_read, &fd, &hdr, NULL, &st);
    close(fd);
    if (rc == 0) return 1;
    if (st == ENVELOPE_EUNKNOWN_SENDER) return 0;
    return err_context("checking the sealed delta %s", path);
}

int node_reseal(node_ctx *n, uint64_t round) {
    char json[NODE_PATH_MAX], plain[NODE_PATH_MAX];
    unsigned long long rn = (unsigned long long)round;
    node_round_record rec;
    char *payload = NULL;
    size_t len = 0;
    if (node_path(n, json, "outbox/round-%llu.json", rn) != 0 ||
        node_path(n, plain, "outbox/round-%llu.payload", rn) != 0 ||
        node_record_read(json, &rec) != 0)
        return -1;
    if (fio_read_all(plain, PAYLOAD_DELTA_MAX, &payload, &len) != 0)
        return err_context("round %llu's delta was sealed with other keys and its payload is not "
                           "kept, so it cannot be sealed again; remove STATE/outbox/round-%llu.* "
                           "to train the round again",
                           rn, rn);
    int rc = seal_and_store(n, (const uint8_t *)payload, len, &rec);
    free(payload);
    if (rc == 0)
        node_log(n,
                 "round %llu: the delta was sealed with this node's previous keys; sealed it "
                 "again with the current ones (%llu bytes)",
                 rn, (unsigned long long)rec.envelope_bytes);
    return rc;
}

int node_train_and_seal(node_ctx *n, const struct msg_round *r) {
    const node_config *c = n->c;
    const struct msg_train *tr = &r->train;
    char vdir[NODE_PATH_MAX], tok[NODE_PATH_MAX], out[NODE_PATH_MAX], latest[NODE_PATH_MAX],
        ckpt[NODE_PATH_MAX], targets[MSG_TARGETS_MAX * (MSG_TARGET_MAX + 1)] = "";
    unsigned long long rn = (unsigned long long)r->round;
    int B = c->batch ? c->batch : (int)tr->batch;
    if ((int)tr->batch % B != 0)
        return err_set("round %llu trains with batch %u, which the local batch override %d does "
                       "not divide; choose a divisor of %u",
                       rn, tr->batch, B, tr->batch);
    for (uint32_t i = 0; i < tr->ntargets; i++) {
        if (i) strcat(targets, ",");
        strcat(targets, tr->targets[i]);
    }
    if (node_version_dir(n, r->base, vdir) != 0 ||
        fio_join(tok, sizeof tok, c->base_model, "tokenizer.json") != 0 ||
        node_path(n, out, "rounds/%llu/train", rn) != 0 ||
        fio_join(ckpt, sizeof ckpt, out, TRAINER_CHECKPOINT_DIR) != 0 ||
        fio_join(latest, sizeof latest, ckpt, TRAINER_LATEST_FILE) != 0)
        return -1;

    model *m = NULL;
    lora_set *s = NULL;
    dataset *d = NULL;
    model_acts *acts = NULL;
    struct msg_tensor *tensors = NULL;
    uint8_t *payload = NULL;
    size_t payload_len = 0, ntensors = 0;
    lora_config lc;
    lora_config_init(&lc);
    int rc = -1;
    uint64_t seed = round_seed(c, r->round);
    if (trainer_load_base(&m, vdir, c->device, c->precision, NULL, 0) != 0) {
        err_context("loading model version %s", vdir);
        goto done;
    }
    dataset_options dopt = {.path = c->data,
                            .tokenizer = tok,
                            .seq = (int)tr->seq,
                            .eos_id = m->cfg.eos_token_id,
                            .vocab_size = m->cfg.vocab_size,
                            .eval_fraction = c->eval_fraction,
                            .seed = c->seed};
    if (dataset_open(&d, &dopt) != 0) goto done;
    if (dataset_num_rows(d, DATASET_TRAIN) == 0 || dataset_num_rows(d, DATASET_EVAL) == 0) {
        err_set("%s: %zu training and %zu held-out rows of %u tokens; the node needs both "
                "(more documents, or another eval_fraction)",
                c->data, dataset_num_rows(d, DATASET_TRAIN), dataset_num_rows(d, DATASET_EVAL),
                tr->seq);
        goto done;
    }
    lc.rank = (int)tr->rank;
    lc.alpha = tr->alpha;
    lc.seed = seed;
    if (lora_config_set_targets(&lc, targets) != 0 || lora_config_set_base_model(&lc, vdir) != 0 ||
        lora_create(&s, m, &lc) != 0)
        goto done;

    /* Local held-out loss of the base (the fresh adapter is B = 0 and not
     * attached yet, so this is the base model alone). */
    double loss_before;
    int64_t eval_tokens;
    if (model_acts_create(&acts, m, B, (int)tr->seq) != 0 ||
        trainer_eval(m, acts, B, d, DATASET_EVAL, NULL, &loss_before, &eval_tokens) != 0)
        goto done;
    model_acts_free(acts);
    acts = NULL;
    /* The round's start adapter, when one is handed out (node/start.c):
     * after the base's own loss, since it offsets the base. */
    if (node_start_apply(n, r, m, s) != 0) goto done;

    trainer_options to;
    trainer_options_init(&to);
    to.batch = B;
    to.grad_accum = (int)tr->batch / B;
    to.steps = tr->steps;
    to.opt.lr = tr->lr;
    to.seed = seed;
    to.save_every = c->save_every;
    to.log_every = tr->steps >= 4 ? tr->steps / 4 : 1;
    to.out_dir = out;
    to.progress = stderr;
    to.device = c->device;
    to.precision = c->precision;
    if (fio_exists(latest)) {
        to.resume = ckpt;
        node_log(n, "round %llu: resuming the training from its last checkpoint", rn);
    } else if (fio_remove_tree(out) != 0) { /* a run killed before its first checkpoint */
        goto done;
    }
    node_log(n,
             "round %llu: training %u steps (rank %u, lr %g, batch %u x seq %u) on %zu rows; "
             "local held-out loss %.4f",
             rn, tr->steps, tr->rank, tr->lr, tr->batch, tr->seq,
             dataset_num_rows(d, DATASET_TRAIN), loss_before);
    trainer_result res;
    double t0 = clock_now_s();
    node_in_training = 1;
    int trc = trainer_run(m, s, d, &to, &res);
    node_in_training = 0;
    if (trc != 0) {
        err_context("round %llu: training", rn);
        goto done;
    }

    node_round_record rec = {.round = r->round,
                             .loss_before = loss_before,
                             .loss_after = res.eval_loss,
                             .examples = (uint64_t)tr->steps * tr->batch,
                             .train_s = clock_now_s() - t0,
                             .download_bytes = n->download_bytes};
    memcpy(rec.base, r->base, MSG_HASH_LEN);
    snprintf(rec.sync, sizeof rec.sync, "%s", n->sync_method);
    if (count_tokens(d, seed, rec.examples, &rec.tokens) != 0) goto done;
    struct payload_delta pd = {.round = r->round,
                               .tokens = rec.tokens,
                               .examples = rec.examples,
                               .loss_before = loss_before,
                               .loss_after = res.eval_loss,
                               .rank = tr->rank,
                               .alpha = tr->alpha,
                               .rslora = false,
                               .ntargets = tr->ntargets};
    memcpy(pd.base, r->base, MSG_HASH_LEN);
    memcpy(pd.targets, tr->targets, sizeof pd.targets);
    pd.has_start = r->has_start;
    memcpy(pd.start, r->start_hash, MSG_HASH_LEN);
    if (adapter_tensors(s, &tensors, &ntensors) != 0) goto done;
    pd.tensors = tensors;
    pd.ntensors = ntensors;
    if (payload_delta_encode(&pd, &payload, &payload_len) != 0) {
        err_context("round %llu: encoding the delta", rn);
        goto done;
    }
    if (seal_and_store(n, payload, payload_len, &rec) != 0) goto done;
    node_log(n,
             "round %llu: trained in %.1f s, local held-out loss %.4f -> %.4f; sealed %llu "
             "bytes",
             rn, rec.train_s, loss_before, res.eval_loss, (unsigned long long)rec.envelope_bytes);
    /* The adapter is in the envelope now; its optimizer checkpoints are not
     * needed any more (the final adapter and metrics stay for the record). */
    rc = fio_remove_tree(ckpt);
done:
    free(payload);
    free(tensors);
    model_acts_free(acts);
    lora_free(s);
    lora_config_free(&lc);
    dataset_free(d);
    model_free(m);
    return rc;
}
