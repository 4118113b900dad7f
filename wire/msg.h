/* msg — the federation's messages: msgpack maps, encoded with msgpack-c's
 * packer and decoded by a schema-checked reader over untrusted bytes.
 *
 * Every message is one msgpack map with the protocol version under "v" and
 * the message type under "t"; docs/protocol.md lists each field byte by byte.
 * Decoding first runs mp_validate() (bounded depth, counts checked against
 * the bytes left, bounded strings, blobs and total size; see mp.h), then
 * reads each field by key: a missing required field, a wrong type, an
 * out-of-range value or a duplicate key is an error naming the message and
 * the field; keys this version does not know are skipped. Blobs in decoded
 * messages (chunk data) point into the caller's buffer, which must outlive
 * the struct. msg_encode refuses to produce what msg_decode would refuse. */
#ifndef FL_WIRE_MSG_H
#define FL_WIRE_MSG_H

#include "wire/mp.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- limits (documented in docs/protocol.md) ---------------------------- */
#define MSG_VERSION 1                        /* "v" of every message this build speaks */
#define MSG_HASH_LEN 32                      /* SHA-256: model versions, fingerprints, digests */
#define MSG_ID_LEN 16                        /* submission message ids (random, = envelope id) */
#define MSG_SIG_LEN 64                       /* Ed25519 signatures */
#define MSG_NAME_MAX 64                      /* node name, bytes */
#define MSG_CAPS_MAX 16                      /* capabilities in HELLO */
#define MSG_CAP_MAX 32                       /* bytes of one capability */
#define MSG_TARGETS_MAX 32                   /* target module names in a train config */
#define MSG_TARGET_MAX 64                    /* bytes of one target module name */
#define MSG_REASON_MAX 256                   /* bytes of an ERROR's reason */
#define MSG_CHUNK_MAX (1u << 20)             /* bulk bytes in one MODEL_CHUNK / SUBMIT_CHUNK */
#define MSG_FRAME_MAX (MSG_CHUNK_MAX + 4096) /* an encoded message; chunk + fields */
#define MSG_FIELDS_MAX 64                    /* entries of one map, unknown keys included */
#define MSG_KEY_MAX 32                       /* bytes of one key */
#define MSG_SUBMIT_MAX (1ull << 40)          /* bytes of one sealed submission (1 TiB) */
#define MSG_BASE_SIZE_MAX (1ull << 50) /* bytes of a model version ROUND may announce (1 PiB) */
#define MSG_DEPTH_MAX 8                /* nesting; ROUND.train.targets[i] is at 3 */
#define MSG_RETRY_AFTER_MAX 86400000u  /* ERROR retry_after, ms (one day) */

/* Tensor payloads (TENSORS): named blobs with a dtype and a shape. */
#define MSG_TENSORS_MAX 16384   /* tensors in one payload */
#define MSG_TENSOR_NAME_MAX 255 /* bytes of one tensor name */
#define MSG_TENSOR_NDIM_MAX 8   /* dimensions of one tensor */

/* Limits for mp_validate() on one message frame. */
extern const struct mp_limits MSG_LIMITS;
/* Limits for a TENSORS payload (large blobs, many items). */
extern const struct mp_limits MSG_TENSORS_LIMITS;

enum msg_type {
    MSG_HELLO = 1,    /* node → aggregator: who I am, what I have */
    MSG_ROUND,        /* aggregator → node: round r, base version, train config */
    MSG_GET_MODEL,    /* node → aggregator: a byte range of a model version */
    MSG_MODEL_CHUNK,  /* aggregator → node: that byte range */
    MSG_SUBMIT_BEGIN, /* node → aggregator: a sealed envelope follows in chunks */
    MSG_SUBMIT_CHUNK, /* node → aggregator: one chunk of it */
    MSG_SUBMIT_END,   /* node → aggregator: done, SHA-256 of the whole envelope */
    MSG_RECEIPT,      /* aggregator → node: stored durably, the node may forget it */
    MSG_ERROR,        /* either way: a code, a reason, maybe when to retry */
    MSG_ACK,          /* aggregator → node: SUBMIT_BEGIN/CHUNK taken, bytes stored so far */
    MSG_STATUS,       /* node → aggregator: how are things (fedlora doctor; no state change) */
    MSG_STATUS_INFO,  /* aggregator → node: its clock, round, roster in force */
};

enum msg_error_code {
    MSG_ERR_BAD_MESSAGE = 1, /* could not decode or out of protocol order */
    MSG_ERR_VERSION,         /* protocol version not spoken */
    MSG_ERR_NOT_MEMBER,      /* sender not on the roster, or revoked */
    MSG_ERR_WRONG_ROUND,     /* no round open, or a different one */
    MSG_ERR_NOT_FOUND,       /* unknown model version or submission id */
    MSG_ERR_TOO_LARGE,       /* over a size limit */
    MSG_ERR_REJECTED,        /* submission failed verification (envelope, digest) */
    MSG_ERR_BUSY,            /* try again later, see retry_after */
    MSG_ERR_INTERNAL,        /* the other side failed; not the sender's fault */
};
#define MSG_ERR_LAST MSG_ERR_INTERNAL

struct msg_hello {
    char name[MSG_NAME_MAX + 1];       /* "name": [A-Za-z0-9._-], not .x or -x */
    uint8_t fingerprint[MSG_HASH_LEN]; /* "id": SHA-256 of the public identity */
    uint32_t ncaps;                    /* "caps": array of identifier strings */
    char caps[MSG_CAPS_MAX][MSG_CAP_MAX + 1];
    bool has_model;                     /* "have_round" and "have_version", */
    uint64_t have_round;                /* optional but together: the newest */
    uint8_t have_version[MSG_HASH_LEN]; /* round/version the node holds */
    uint64_t time;                      /* "time": the node's clock, unix seconds */
    uint8_t sig[MSG_SIG_LEN];           /* "sig": Ed25519 by the identity (wire/hello.h) */
};

struct msg_train {
    uint32_t steps;    /* "steps": 1..10^7 optimizer steps */
    double lr;         /* "lr": finite, in (0, 1] */
    uint32_t rank;     /* "rank": 1..4096 */
    double alpha;      /* "alpha": finite, in (0, 10^6] */
    uint32_t ntargets; /* "targets": 1..MSG_TARGETS_MAX module names */
    char targets[MSG_TARGETS_MAX][MSG_TARGET_MAX + 1];
    uint32_t batch; /* "batch": 1..65536 sequences per step */
    uint32_t seq;   /* "seq": 1..2^20 tokens per sequence */
};

struct msg_round {
    uint64_t round;             /* "round" */
    uint8_t base[MSG_HASH_LEN]; /* "base": version hash of the base model */
    struct msg_train train;     /* "train": a map, see above */
    uint64_t deadline;          /* "deadline": unix seconds */
    /* "base_sharded", optional (absent: false): base is a sharded version,
     * base its index's SHA-256, every shard fetched by its own hash
     * (wire/version.h). Written only when true. */
    bool base_sharded;
    /* Optional, all three or none: base can also be made from the version
     * update_from and the low-rank factor file update_hash (update_size
     * bytes, fetched with GET_MODEL like any stored object; docs/protocol.md,
     * "Low-rank model sync"). */
    bool has_update;
    uint8_t update_from[MSG_HASH_LEN]; /* "update_from": the previous version */
    uint8_t update_hash[MSG_HASH_LEN]; /* "update_hash": SHA-256 of the factor file */
    uint64_t update_size;              /* "update_size": 1..MSG_SUBMIT_MAX bytes */
    /* Optional, start_hash and start_size together: the adapter every member
     * starts the round's training from (docs/protocol.md, "Start
     * adapters"), a PEFT adapter_model.safetensors at the round's rank,
     * alpha and targets, fetched with GET_MODEL by its SHA-256. Absent: each
     * member draws its own fresh adapter. */
    bool has_start;
    uint8_t start_hash[MSG_HASH_LEN]; /* "start_hash": SHA-256 of the adapter file */
    uint64_t start_size;              /* "start_size": 1..MSG_SUBMIT_MAX bytes */
    /* Optional, only with start_hash: the adapter is the fresh one lora_create
     * makes from this seed (A from the seed, B = 0), so a node can make it
     * instead of fetching it (and still checks its hash). */
    bool has_start_seed;
    uint64_t start_seed; /* "start_seed" */
    /* Optional: the bytes a full download of base moves (its one file, or
     * its shards summed), so a node can tell whether the low-rank update is
     * the cheaper way to it, and a download of a single-file version may not
     * exceed it (a fake or broken server cannot make a node write more). */
    bool has_base_size;
    uint64_t base_size; /* "base_size": 1..MSG_BASE_SIZE_MAX */
};

/* GET_MODEL fetches any object the aggregator serves by its SHA-256: model
 * versions, low-rank update files, roster files. */
struct msg_get_model {
    uint8_t version[MSG_HASH_LEN]; /* "version": the object's SHA-256 */
    uint64_t offset;               /* "offset" */
    uint64_t length;               /* "length": 1..MSG_CHUNK_MAX */
};

struct msg_model_chunk {
    uint8_t version[MSG_HASH_LEN]; /* "version" */
    uint64_t offset;               /* "offset" */
    uint64_t total;                /* "total": size of the whole model file */
    const uint8_t *data;           /* "data": blob of at most MSG_CHUNK_MAX bytes, */
    uint32_t data_len;             /* within total, non-empty unless final */
    bool final;                    /* "final": true iff offset + data_len == total */
};

struct msg_submit_begin {
    uint64_t round;         /* "round" */
    uint8_t id[MSG_ID_LEN]; /* "msgid" */
    uint64_t size;          /* "size": 1..MSG_SUBMIT_MAX envelope bytes */
    uint32_t chunks;        /* "chunks": enough MSG_CHUNK_MAX chunks, <= size */
};

struct msg_submit_chunk {
    uint8_t id[MSG_ID_LEN]; /* "msgid" */
    uint32_t index;         /* "index": 0-based */
    const uint8_t *data;    /* "data": 1..MSG_CHUNK_MAX bytes */
    uint32_t data_len;
};

struct msg_submit_end {
    uint8_t id[MSG_ID_LEN];       /* "msgid" */
    uint8_t digest[MSG_HASH_LEN]; /* "digest": SHA-256 of the whole envelope */
};

struct msg_receipt {
    uint64_t round;               /* "round" */
    uint8_t id[MSG_ID_LEN];       /* "msgid" */
    uint8_t digest[MSG_HASH_LEN]; /* "digest": as in SUBMIT_END */
    uint64_t time;                /* "time": unix seconds when it was stored */
};

/* The answer to SUBMIT_BEGIN and each SUBMIT_CHUNK: "go on". Not a receipt:
 * only the RECEIPT answering SUBMIT_END means the envelope is stored. */
struct msg_ack {
    uint8_t id[MSG_ID_LEN]; /* "msgid": the upload's message id */
    uint64_t stored;        /* "stored": bytes of it stored so far, 0..MSG_SUBMIT_MAX
                               (where an interrupted upload could resume) */
};

struct msg_error {
    enum msg_error_code code;        /* "code": 1..MSG_ERR_LAST */
    char reason[MSG_REASON_MAX + 1]; /* "reason": no control characters */
    bool has_retry_after;            /* "retry_after": optional, */
    uint32_t retry_after_ms;         /* 0..MSG_RETRY_AFTER_MAX */
    bool has_final;                  /* "final": optional; present only when the */
    uint8_t final[MSG_HASH_LEN];     /* federation is over: its final version */
};

/* STATUS asks, without changing any state, what `fedlora doctor` checks:
 * the aggregator's clock, whether this identity is on its roster, and the
 * roster itself (fetched with GET_MODEL by roster_hash, then verified by
 * the asker against its pinned admin fingerprint). */
struct msg_status {
    char name[MSG_NAME_MAX + 1];       /* "name" */
    uint8_t fingerprint[MSG_HASH_LEN]; /* "id" */
};

#define MSG_STATE_MAX 32 /* bytes of STATUS_INFO.state */

struct msg_status_info {
    uint64_t time;                       /* "time": the aggregator's clock, unix seconds */
    char consortium[MSG_REASON_MAX + 1]; /* "consortium": its name */
    uint64_t round;                      /* "round": current round */
    char state[MSG_STATE_MAX + 1];       /* "state": OPEN, COLLECTING, ... (an identifier) */
    uint8_t version[MSG_HASH_LEN];       /* "version": the current round's base */
    char member[MSG_STATE_MAX + 1];      /* "member": active | revoked | unknown */
    bool has_roster;                     /* "roster_version", "roster_hash", */
    uint64_t roster_version;             /* "roster_size": all or none (none: the */
    uint8_t roster_hash[MSG_HASH_LEN];   /* aggregator lists members in its config) */
    uint64_t roster_size;
    /* Optional: the fingerprint of the identity the aggregator runs with
     * (its keys' .id), which `fedlora doctor` compares with the .id it was
     * given. Over CURVE the handshake proves the key; in the clear it is a
     * check against a wrong file, not against a forger. */
    bool has_aggregator;
    uint8_t aggregator[MSG_HASH_LEN]; /* "aggregator" */
};

struct msg {
    enum msg_type type;
    union {
        struct msg_hello hello;
        struct msg_round round;
        struct msg_get_model get_model;
        struct msg_model_chunk model_chunk;
        struct msg_submit_begin submit_begin;
        struct msg_submit_chunk submit_chunk;
        struct msg_submit_end submit_end;
        struct msg_receipt receipt;
        struct msg_error error;
        struct msg_ack ack;
        struct msg_status status;
        struct msg_status_info status_info;
    };
};

/* "HELLO", "ROUND", ... (the "t" value); NULL for an unknown type. */
const char *msg_type_name(enum msg_type t);

/* Encodes m into a malloc'd buffer (*out, *len; free() it). Fails, encoding
 * nothing, when m breaks a rule msg_decode enforces. */
int msg_encode(const struct msg *m, uint8_t **out, size_t *len);
/* Decodes one message; lim NULL means MSG_LIMITS. On failure the message names
 * the message type and field, e.g. "HELLO: field 'name' must be a string of
 * at most 64 bytes, got an integer". */
int msg_decode(const void *buf, size_t len, const struct mp_limits *lim, struct msg *m);

/* ---- TENSORS payloads ------------------------------------------------------
 * An array of maps {"name", "dtype", "shape", "data"}, names in strictly
 * increasing byte order (canonical, no duplicates). dtype names follow
 * safetensors. data is the row-major little-endian bytes; its length must be
 * the product of shape times the dtype size. */
enum msg_dtype { MSG_F32 = 1, MSG_F16, MSG_BF16, MSG_F64, MSG_I32, MSG_I64, MSG_U8 };

struct msg_tensor {
    char name[MSG_TENSOR_NAME_MAX + 1];
    enum msg_dtype dtype;
    uint32_t ndim;
    uint64_t shape[MSG_TENSOR_NDIM_MAX];
    const uint8_t *data; /* not aligned: memcpy before use */
    uint64_t size;
};

const char *msg_dtype_name(enum msg_dtype d);
size_t msg_dtype_size(enum msg_dtype d);
/* Encodes n tensors (any order; written sorted by name). */
int msg_tensors_encode(const struct msg_tensor *t, size_t n, uint8_t **out, size_t *len);
/* Decodes a payload; lim NULL means MSG_TENSORS_LIMITS. *t is a malloc'd
 * array of *n tensors (free() it) whose data points into buf. */
int msg_tensors_decode(const void *buf, size_t len, const struct mp_limits *lim,
                       struct msg_tensor **t, size_t *n);

#endif
