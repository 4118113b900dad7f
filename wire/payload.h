/* payload — what travels inside a sealed envelope: the DELTA a node submits.
 *
 * One msgpack map (docs/protocol.md, "Federation flow", lists it byte by
 * byte), sealed with envelope_seal(payload_type = PAYLOAD_TYPE_DELTA):
 *
 *   "v"           1 (PAYLOAD_VERSION)
 *   "t"           "DELTA"
 *   "round"       the round it was trained for (= the envelope header's round)
 *   "base"        32-byte blob: version hash (SHA-256 of model.safetensors) trained on
 *   "tokens"      1..2^62 target tokens the adapter was trained on (the default weight)
 *   "examples"    1..2^62 training examples (sequences) seen
 *   "loss_before" finite number >= 0: local held-out loss of the base (metrics only)
 *   "loss_after"  finite number >= 0: the same with the adapter
 *   "rank"        1..4096, "alpha" (0, 10^6], "rslora" boolean: the LoRA config
 *   "targets"     1..MSG_TARGETS_MAX module names (as in ROUND.train.targets)
 *   "tensors"     blob: a TENSORS payload (msg_tensors_encode) holding, per adapted
 *                 module, the PEFT tensors
 *                   base_model.model.<module path>.lora_A.weight  F32 (rank, in)
 *                   base_model.model.<module path>.lora_B.weight  F32 (out, rank)
 *   "start"       optional 32-byte blob: the SHA-256 of the start adapter the
 *                 training began from (ROUND's start_hash); absent: a fresh
 *                 adapter of the member's own
 *
 * Decoding is schema-checked as msg.c does (mp_validate first, then typed
 * field getters naming the field in every error; unknown keys ignored,
 * duplicates refused) and additionally checks the tensor list's shape rules:
 * F32 only, two dimensions, names ending in ".lora_A.weight"/".lora_B.weight"
 * in complete pairs, A's rows == B's columns == "rank". Whether the shapes fit
 * the base model, and whether the values are finite, is the aggregator's check
 * (it needs the base). payload_delta_encode refuses what the decoder refuses. */
#ifndef FL_WIRE_PAYLOAD_H
#define FL_WIRE_PAYLOAD_H

#include "wire/msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAYLOAD_VERSION 1
#define PAYLOAD_TYPE_DELTA 1 /* envelope payload_type of a sealed DELTA */
/* Bytes of one encoded DELTA: the "tensors" blob is a msgpack bin 32, so at
 * most 4 GiB; a rank-16 adapter of a 1B-parameter model is ~50 MB. Receivers
 * pass their own (smaller) limit to the decoder. */
#define PAYLOAD_DELTA_MAX (UINT64_C(4) << 30)
#define PAYLOAD_COUNT_MAX (UINT64_C(1) << 62) /* "tokens", "examples" */

struct payload_delta {
    uint64_t round;
    uint8_t base[MSG_HASH_LEN];
    uint64_t tokens;
    uint64_t examples;
    double loss_before, loss_after;
    uint32_t rank;
    double alpha;
    bool rslora;
    uint32_t ntargets;
    char targets[MSG_TARGETS_MAX][MSG_TARGET_MAX + 1];
    bool has_start;              /* "start", optional */
    uint8_t start[MSG_HASH_LEN]; /* the start adapter's SHA-256 */
    /* Encode: the caller's array (any order; written sorted by name), data
     * F32 little-endian row-major. Decode: a malloc'd array whose data points
     * into the decoded buffer (keep it alive; unaligned: memcpy before use). */
    struct msg_tensor *tensors;
    size_t ntensors;
};

/* Encodes d into a malloc'd buffer (*out, *len; free() it). */
int payload_delta_encode(const struct payload_delta *d, uint8_t **out, size_t *len);
/* Decodes a DELTA of at most max_len bytes (0: PAYLOAD_DELTA_MAX); on success
 * d->tensors is malloc'd (payload_delta_free). On failure nothing is held. */
int payload_delta_decode(const void *buf, size_t len, uint64_t max_len, struct payload_delta *d);
/* Frees what payload_delta_decode allocated (not the buffer). */
void payload_delta_free(struct payload_delta *d);

/* The 32-byte consortium id (envelope header) of a consortium name, as both
 * the aggregator and the nodes derive it from their configs' "consortium":
 *   SHA-256("fedlora-consortium-v1" || name)   (21-byte ASCII label, no NUL)
 * name: 1..PAYLOAD_CONSORTIUM_NAME_MAX printable ASCII bytes. */
#define PAYLOAD_CONSORTIUM_NAME_MAX 128
int payload_consortium_id(const char *name, uint8_t id[32]);

/* The module path of a PEFT tensor name ("base_model.model.X.lora_A.weight"
 * -> "X", *is_b = 0); -1 when the name does not have that form or the path
 * does not fit in cap bytes. */
int payload_tensor_path(const char *name, char *path, size_t cap, int *is_b);

#endif
