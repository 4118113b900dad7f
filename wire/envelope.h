/* envelope — sealed envelopes: a payload encrypted to one recipient's X25519
 * key and signed by its sender's Ed25519 key (docs/architecture.md, "The
 * federation"; byte layout and rationale in docs/envelope.md).
 *
 *   ephemeral X25519 with the recipient key → HKDF-SHA256 (salt: both public
 *   keys; info: version label and the SHA-256 of the header) → AES-256-GCM
 *   over fixed-size segments (nonce = base XOR index, AAD = header digest ||
 *   index || final flag, 16-byte tags) → Ed25519 signature over
 *   header || SHA-256(all segment bytes incl. tags), written as a trailer.
 *
 * Streaming: seal and open move one segment at a time between a reader and
 * a writer callback, so memory is O(segment size) whatever the payload size.
 * Both are one pass. Open hands each segment's plaintext to the sink as soon
 * as its GCM tag verifies; the sender's signature can only be checked at the
 * end, so everything the sink received is PROVISIONAL until envelope_open
 * returns 0: a sink must write to a temporary place and commit only then.
 * (Each released segment is already authenticated as coming from the holder
 * of the ephemeral key named in the header; the signature then ties that key
 * and the whole ciphertext to the sender.) A caller who wants nothing
 * decrypted before the signature is known good runs envelope_verify first
 * and envelope_open second over the same bytes (two passes over a file).
 *
 * envelope_verify needs no private key: it checks the header against the
 * expected context and the signature over the ciphertext, which is what the
 * aggregator does when a submission arrives, so that deltas can stay sealed
 * at rest in the inbox until aggregation. */
#ifndef FL_WIRE_ENVELOPE_H
#define FL_WIRE_ENVELOPE_H

#include "wire/keys.h"

#include <stddef.h>
#include <stdint.h>

#define ENVELOPE_VERSION 1
#define ENVELOPE_HEADER_LEN 172
#define ENVELOPE_CONFIRM_LEN 32
#define ENVELOPE_TAG_LEN 16
#define ENVELOPE_SIG_LEN 64
#define ENVELOPE_CONSORTIUM_LEN 32
#define ENVELOPE_MSGID_LEN 16
#define ENVELOPE_SEGMENT_MIN 1024u
#define ENVELOPE_SEGMENT_MAX (16u << 20)
#define ENVELOPE_SEGMENT_DEFAULT (1u << 20)
/* Hard cap on payload_size (2^50 bytes, 1 PiB) so that every size computed
 * from a header fits a uint64_t without overflow. */
#define ENVELOPE_PAYLOAD_MAX (UINT64_C(1) << 50)

/* Why open or verify refused an envelope. Each refusal has its own code so
 * callers (and tests) can tell them apart; err_msg() adds the detail. */
typedef enum {
    ENVELOPE_OK = 0,
    ENVELOPE_EIO,             /* reader/writer/allocation/OpenSSL failure, not the sender's bytes */
    ENVELOPE_EFORMAT,         /* not an envelope: bad magic, segment size out of range */
    ENVELOPE_EVERSION,        /* protocol version this build does not speak */
    ENVELOPE_ETOOBIG,         /* payload or segment size above the caller's limits */
    ENVELOPE_ECONSORTIUM,     /* sealed for another consortium */
    ENVELOPE_EROUND,          /* sealed for a round outside the accepted range */
    ENVELOPE_ETYPE,           /* payload type other than expected */
    ENVELOPE_ERECIPIENT,      /* sealed to another recipient key */
    ENVELOPE_EUNKNOWN_SENDER, /* sender fingerprint not known to the lookup */
    ENVELOPE_ESENDER,         /* a known sender, but not the one this session expects */
    ENVELOPE_EREPLAY,         /* message id seen before */
    ENVELOPE_EHEADER,         /* header fails key confirmation: altered, or not for our key */
    ENVELOPE_ESEGMENT,        /* a segment fails GCM: ciphertext/tag altered, reordered, spliced */
    ENVELOPE_ETRUNCATED,      /* the bytes end before the envelope does */
    ENVELOPE_ETRAILING,       /* bytes after the signature */
    ENVELOPE_ESIGNATURE,      /* sender's signature does not verify */
} envelope_status;

const char *envelope_status_name(envelope_status s);

/* The header fields, as parsed (open/verify) or as written (seal). */
typedef struct {
    uint16_t version;
    uint16_t payload_type;
    uint8_t consortium[ENVELOPE_CONSORTIUM_LEN];
    uint64_t round;
    uint8_t sender_fp[KEYS_FP_LEN];
    uint8_t recipient_fp[KEYS_FP_LEN];
    uint8_t message_id[ENVELOPE_MSGID_LEN];
    uint32_t segment_size;
    uint64_t payload_size;
    uint8_t ephemeral_pub[32];
} envelope_header;

/* Reads up to cap bytes into buf; *got = 0 means end of input. Short reads
 * are fine (they are retried). 0 ok, -1 failure with err_set. For open and
 * verify, input must end where the envelope ends (ENVELOPE_ETRAILING). */
typedef int (*envelope_read_fn)(void *arg, void *buf, size_t cap, size_t *got);
/* Consumes exactly len bytes. 0 ok, -1 failure with err_set. */
typedef int (*envelope_write_fn)(void *arg, const void *buf, size_t len);

/* Ready-made callbacks over a file descriptor (arg points to an int). */
int envelope_fd_read(void *arg, void *buf, size_t cap, size_t *got);
int envelope_fd_write(void *arg, const void *buf, size_t len);

typedef struct {
    uint8_t consortium[ENVELOPE_CONSORTIUM_LEN];
    uint64_t round;
    uint16_t payload_type; /* application-defined, e.g. "LoRA delta" */
    uint32_t segment_size; /* 0: ENVELOPE_SEGMENT_DEFAULT */
    uint64_t payload_size; /* exactly what the reader will deliver */
} envelope_params;

/* Seals payload_size bytes from rd to wr for the holder of recipient_kx_pub.
 * The reader must deliver exactly payload_size bytes. `hdr` (may be NULL)
 * receives the header written, e.g. its message id. On failure, whatever
 * was already written is not an envelope: discard it. */
int envelope_seal(const envelope_params *p, const keys_secret *sender,
                  const uint8_t recipient_kx_pub[32], envelope_read_fn rd, void *rd_arg,
                  envelope_write_fn wr, void *wr_arg, envelope_header *hdr);

/* Total sealed size for a payload (header, confirmation, tags, signature). */
int envelope_sealed_size(uint64_t payload_size, uint32_t segment_size, uint64_t *total);

/* Sender lookup: fill *out and return 1 when fp names a known sender, 0 when
 * unknown, -1 on failure (with err_set). */
typedef int (*envelope_lookup_fn)(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out);
/* Replay check: 1 when message id was already accepted, 0 when new, -1 on
 * failure. It must only look: the caller records the id after open/verify
 * succeeds (recording earlier would let forged envelopes burn ids). */
typedef int (*envelope_seen_fn)(void *arg, const uint8_t id[ENVELOPE_MSGID_LEN]);

/* What the receiving side accepts. */
typedef struct {
    uint8_t consortium[ENVELOPE_CONSORTIUM_LEN];
    uint64_t round_min, round_max; /* accepted rounds, inclusive */
    int check_payload_type;        /* when set, payload_type must equal ... */
    uint16_t payload_type;
    uint64_t max_payload;           /* refuse larger payloads (ENVELOPE_ETOOBIG) */
    uint32_t max_segment;           /* 0: ENVELOPE_SEGMENT_MAX */
    const uint8_t *expected_sender; /* NULL: any known sender; else its fingerprint */
    envelope_lookup_fn lookup;      /* required */
    void *lookup_arg;
    envelope_seen_fn seen; /* NULL: no replay check here (e.g. already done at receipt) */
    void *seen_arg;
} envelope_expect;

/* Opens an envelope from rd, writing the plaintext to sink (PROVISIONAL until
 * this returns 0, see above). Refuses with *status (may be NULL) set to the
 * precise reason and err_msg() saying what, where and what to do. `hdr` and
 * `sender` (may be NULL) receive what was parsed, as soon as it was. */
int envelope_open(const envelope_expect *x, const keys_secret *recipient, envelope_read_fn rd,
                  void *rd_arg, envelope_write_fn sink, void *sink_arg, envelope_header *hdr,
                  keys_public *sender, envelope_status *status);

/* Checks header against x, recipient fingerprint against recipient_kx_pub,
 * and the sender's signature over header and ciphertext, without decrypting
 * (no private key needed). Reads the whole envelope once. */
int envelope_verify(const envelope_expect *x, const uint8_t recipient_kx_pub[32],
                    envelope_read_fn rd, void *rd_arg, envelope_header *hdr, keys_public *sender,
                    envelope_status *status);

/* In-memory forms for small messages. seal_mem returns a malloc'd envelope;
 * open_mem checks the length against the header before allocating, and
 * returns the malloc'd plaintext only when everything verified (nothing
 * provisional is ever visible). */
int envelope_seal_mem(const envelope_params *p, const keys_secret *sender,
                      const uint8_t recipient_kx_pub[32], const void *payload, uint8_t **out,
                      size_t *out_len, envelope_header *hdr);
int envelope_open_mem(const envelope_expect *x, const keys_secret *recipient, const void *env,
                      size_t len, uint8_t **payload, size_t *payload_len, envelope_header *hdr,
                      keys_public *sender, envelope_status *status);

#endif
