/* Sealed envelopes; the byte layout is documented in docs/envelope.md and
 * mirrored by the offsets below. All integers are big-endian. */
#include "wire/envelope.h"

#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Header offsets (ENVELOPE_HEADER_LEN = 172 bytes). */
enum {
    OFF_MAGIC = 0,       /* 4  "FLSE" */
    OFF_VERSION = 4,     /* 2  u16 */
    OFF_TYPE = 6,        /* 2  u16 payload type */
    OFF_CONSORTIUM = 8,  /* 32 */
    OFF_ROUND = 40,      /* 8  u64 */
    OFF_SENDER = 48,     /* 32 sender identity fingerprint */
    OFF_RECIPIENT = 80,  /* 32 recipient X25519 key fingerprint */
    OFF_MSGID = 112,     /* 16 random */
    OFF_SEGMENT = 128,   /* 4  u32 segment size */
    OFF_PAYLOAD = 132,   /* 8  u64 payload size */
    OFF_EPHEMERAL = 140, /* 32 ephemeral X25519 public key */
    HEADER_END = 172,
};
_Static_assert(HEADER_END == ENVELOPE_HEADER_LEN, "header layout and ENVELOPE_HEADER_LEN differ");

static const uint8_t MAGIC[4] = {'F', 'L', 'S', 'E'};
/* Domain-separation labels (ASCII, no terminator): the same keys must never
 * produce a value that is valid in another context. */
static const char KDF_LABEL[] = "fedlora envelope key v1";
static const char SIG_LABEL[] = "fedlora envelope signature v1";

/* HKDF output: AES key, nonce base, key confirmation. */
#define OKM_KEY 0
#define OKM_NONCE 32
#define OKM_CONFIRM 44
#define OKM_LEN 76

/* Hash and cipher a segment in slices this big, so each slice is hashed
 * while still in L1/L2 cache right after the cipher touched it. */
#define SLICE (64u << 10)

static void put_be16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v;
}
static void put_be32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static uint16_t get_be16(const uint8_t *p) {
    return (uint16_t)(p[0] << 8 | p[1]);
}
static uint32_t get_be32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = v << 8 | p[i];
    return v;
}
static uint64_t get_be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

const char *envelope_status_name(envelope_status s) {
    switch (s) {
        case ENVELOPE_OK:
            return "ok";
        case ENVELOPE_EIO:
            return "io";
        case ENVELOPE_EFORMAT:
            return "format";
        case ENVELOPE_EVERSION:
            return "version";
        case ENVELOPE_ETOOBIG:
            return "too-big";
        case ENVELOPE_ECONSORTIUM:
            return "consortium";
        case ENVELOPE_EROUND:
            return "round";
        case ENVELOPE_ETYPE:
            return "payload-type";
        case ENVELOPE_ERECIPIENT:
            return "recipient";
        case ENVELOPE_EUNKNOWN_SENDER:
            return "unknown-sender";
        case ENVELOPE_ESENDER:
            return "wrong-sender";
        case ENVELOPE_EREPLAY:
            return "replay";
        case ENVELOPE_EHEADER:
            return "header-auth";
        case ENVELOPE_ESEGMENT:
            return "segment-auth";
        case ENVELOPE_ETRUNCATED:
            return "truncated";
        case ENVELOPE_ETRAILING:
            return "trailing-bytes";
        case ENVELOPE_ESIGNATURE:
            return "signature";
    }
    return "unknown";
}

/* Sets *st and the error message; returns -1. */
static int refuse(envelope_status *st, envelope_status code, const char *fmt, ...) ERR_PRINTF(3, 4);
static int refuse(envelope_status *st, envelope_status code, const char *fmt, ...) {
    char msg[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    *st = code;
    return err_set("envelope refused (%s): %s", envelope_status_name(code), msg);
}

/* n bytes in hex (out holds 2n + 1). */
static const char *to_hex(const uint8_t *p, size_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) out[2 * i] = hex[p[i] >> 4], out[2 * i + 1] = hex[p[i] & 15];
    out[2 * n] = '\0';
    return out;
}

/* The first 8 bytes of a random-looking value (a fingerprint, an id) tell
 * values apart in a message. */
static const char *short_hex(const uint8_t *p, char out[17]) {
    return to_hex(p, 8, out);
}

/* ---- sizes ------------------------------------------------------------------------- */

static uint64_t segment_count(uint64_t payload, uint32_t seg) {
    /* An empty payload is one empty final segment, so that even then the
     * end of the envelope is authenticated. */
    return payload == 0 ? 1 : (payload + seg - 1) / seg;
}

int envelope_sealed_size(uint64_t payload_size, uint32_t segment_size, uint64_t *total) {
    if (segment_size < ENVELOPE_SEGMENT_MIN || segment_size > ENVELOPE_SEGMENT_MAX)
        return err_set("envelope segment size %u is outside %u..%u", segment_size,
                       ENVELOPE_SEGMENT_MIN, ENVELOPE_SEGMENT_MAX);
    if (payload_size > ENVELOPE_PAYLOAD_MAX)
        return err_set("envelope payload of %llu bytes is above the format's 2^50-byte cap",
                       (unsigned long long)payload_size);
    *total = ENVELOPE_HEADER_LEN + ENVELOPE_CONFIRM_LEN + payload_size +
             segment_count(payload_size, segment_size) * ENVELOPE_TAG_LEN + ENVELOPE_SIG_LEN;
    return 0;
}

/* ---- key schedule ---------------------------------------------------------------------- */

/* shared = X25519(priv, peer); okm = HKDF-SHA256(salt = ephemeral_pub ||
 * recipient_pub, ikm = shared, info = KDF_LABEL || SHA-256(header)). */
static int derive(const uint8_t priv[32], const uint8_t peer[32], const uint8_t eph_pub[32],
                  const uint8_t recipient_pub[32], const uint8_t header_digest[32],
                  uint8_t okm[OKM_LEN]) {
    uint8_t shared[32], salt[64], info[sizeof KDF_LABEL - 1 + 32];
    if (crypto_x25519(shared, priv, peer) != 0) return -1;
    memcpy(salt, eph_pub, 32);
    memcpy(salt + 32, recipient_pub, 32);
    memcpy(info, KDF_LABEL, sizeof KDF_LABEL - 1);
    memcpy(info + sizeof KDF_LABEL - 1, header_digest, 32);
    int rc = crypto_hkdf_sha256(salt, sizeof salt, shared, sizeof shared, info, sizeof info, okm,
                                OKM_LEN);
    crypto_wipe(shared, sizeof shared);
    return rc;
}

/* nonce_i = nonce_base XOR (0^32 || be64(i)); aad_i = header digest ||
 * be64(i) || final (1 byte). */
static void segment_nonce_aad(const uint8_t okm[OKM_LEN], const uint8_t header_digest[32],
                              uint64_t i, int final, uint8_t nonce[12], uint8_t aad[41]) {
    memcpy(nonce, okm + OKM_NONCE, 12);
    for (int b = 0; b < 8; b++) nonce[4 + b] ^= (uint8_t)(i >> (56 - 8 * b));
    memcpy(aad, header_digest, 32);
    put_be64(aad + 32, i);
    aad[40] = final ? 1 : 0;
}

/* Signed message: SIG_LABEL || header || SHA-256(confirmation || segments). */
static void signed_message(const uint8_t hb[ENVELOPE_HEADER_LEN], const uint8_t body_digest[32],
                           uint8_t msg[sizeof SIG_LABEL - 1 + ENVELOPE_HEADER_LEN + 32]) {
    memcpy(msg, SIG_LABEL, sizeof SIG_LABEL - 1);
    memcpy(msg + sizeof SIG_LABEL - 1, hb, ENVELOPE_HEADER_LEN);
    memcpy(msg + sizeof SIG_LABEL - 1 + ENVELOPE_HEADER_LEN, body_digest, 32);
}
#define SIGNED_MSG_LEN (sizeof SIG_LABEL - 1 + ENVELOPE_HEADER_LEN + 32)

/* ---- I/O helpers ------------------------------------------------------------------------ */

/* Reads until n bytes or end of input; *got says how many came. */
static int read_full(envelope_read_fn rd, void *arg, void *buf, size_t n, size_t *got) {
    *got = 0;
    while (*got < n) {
        size_t g = 0;
        if (rd(arg, (uint8_t *)buf + *got, n - *got, &g) != 0) return -1;
        if (g == 0) break;
        if (g > n - *got) return err_set("envelope reader returned more bytes than asked for");
        *got += g;
    }
    return 0;
}

int envelope_fd_read(void *arg, void *buf, size_t cap, size_t *got) {
    int fd = *(int *)arg;
    for (;;) {
        ssize_t r = read(fd, buf, cap);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return err_errno("cannot read envelope input (fd %d)", fd);
        *got = (size_t)r;
        return 0;
    }
}

int envelope_fd_write(void *arg, const void *buf, size_t len) {
    return fio_write_full(*(int *)arg, buf, len, "envelope output");
}

/* ---- seal ------------------------------------------------------------------------------------ */

static void header_encode(const envelope_header *h, uint8_t hb[ENVELOPE_HEADER_LEN]) {
    memcpy(hb + OFF_MAGIC, MAGIC, 4);
    put_be16(hb + OFF_VERSION, h->version);
    put_be16(hb + OFF_TYPE, h->payload_type);
    memcpy(hb + OFF_CONSORTIUM, h->consortium, ENVELOPE_CONSORTIUM_LEN);
    put_be64(hb + OFF_ROUND, h->round);
    memcpy(hb + OFF_SENDER, h->sender_fp, KEYS_FP_LEN);
    memcpy(hb + OFF_RECIPIENT, h->recipient_fp, KEYS_FP_LEN);
    memcpy(hb + OFF_MSGID, h->message_id, ENVELOPE_MSGID_LEN);
    put_be32(hb + OFF_SEGMENT, h->segment_size);
    put_be64(hb + OFF_PAYLOAD, h->payload_size);
    memcpy(hb + OFF_EPHEMERAL, h->ephemeral_pub, 32);
}

int envelope_seal(const envelope_params *p, const keys_secret *sender,
                  const uint8_t recipient_kx_pub[32], envelope_read_fn rd, void *rd_arg,
                  envelope_write_fn wr, void *wr_arg, envelope_header *out_hdr) {
    envelope_header h;
    memset(&h, 0, sizeof h);
    h.version = ENVELOPE_VERSION;
    h.payload_type = p->payload_type;
    memcpy(h.consortium, p->consortium, ENVELOPE_CONSORTIUM_LEN);
    h.round = p->round;
    h.segment_size = p->segment_size ? p->segment_size : ENVELOPE_SEGMENT_DEFAULT;
    h.payload_size = p->payload_size;
    uint64_t total;
    if (envelope_sealed_size(h.payload_size, h.segment_size, &total) != 0) return -1;

    uint8_t eph_priv[32], okm[OKM_LEN], hb[ENVELOPE_HEADER_LEN], hd[32];
    if (keys_fingerprint(&sender->pub, h.sender_fp) != 0 ||
        keys_kx_fingerprint(recipient_kx_pub, h.recipient_fp) != 0 ||
        crypto_random(h.message_id, sizeof h.message_id) != 0 ||
        crypto_x25519_keypair(eph_priv, h.ephemeral_pub) != 0)
        return err_context("sealing an envelope");
    header_encode(&h, hb);
    if (out_hdr) *out_hdr = h;
    int rc = crypto_sha256(hb, sizeof hb, hd);
    if (rc == 0)
        rc = derive(eph_priv, recipient_kx_pub, h.ephemeral_pub, recipient_kx_pub, hd, okm);
    crypto_wipe(eph_priv, sizeof eph_priv);
    if (rc != 0) return err_context("sealing an envelope: key agreement with the recipient key");

    uint64_t nseg = segment_count(h.payload_size, h.segment_size);
    size_t cap = (size_t)(h.payload_size < h.segment_size ? h.payload_size : h.segment_size);
    uint8_t *buf = malloc(cap + ENVELOPE_TAG_LEN);
    crypto_gcm *g = NULL;
    crypto_sha256_ctx *body = NULL;
    if (!buf) rc = err_set("out of memory for a %zu-byte envelope segment", cap);
    if (rc == 0) rc = crypto_gcm_new(&g, okm + OKM_KEY, 1);
    if (rc == 0) rc = crypto_sha256_new(&body);
    if (rc == 0) rc = wr(wr_arg, hb, sizeof hb);
    if (rc == 0) rc = wr(wr_arg, okm + OKM_CONFIRM, ENVELOPE_CONFIRM_LEN);
    if (rc == 0) rc = crypto_sha256_update(body, okm + OKM_CONFIRM, ENVELOPE_CONFIRM_LEN);
    uint64_t left = h.payload_size;
    for (uint64_t i = 0; rc == 0 && i < nseg; i++) {
        size_t len = (size_t)(left < h.segment_size ? left : h.segment_size);
        size_t got;
        uint8_t nonce[12], aad[41];
        rc = read_full(rd, rd_arg, buf, len, &got);
        if (rc == 0 && got < len)
            rc = err_set("payload reader ended after %llu bytes, the envelope header promises %llu",
                         (unsigned long long)(h.payload_size - left + got),
                         (unsigned long long)h.payload_size);
        segment_nonce_aad(okm, hd, i, i + 1 == nseg, nonce, aad);
        if (rc == 0) rc = crypto_gcm_begin(g, nonce, aad, sizeof aad);
        for (size_t off = 0; rc == 0 && off < len; off += SLICE) {
            size_t n = len - off < SLICE ? len - off : SLICE;
            rc = crypto_gcm_update(g, buf + off, buf + off, n);
            if (rc == 0) rc = crypto_sha256_update(body, buf + off, n);
        }
        if (rc == 0) rc = crypto_gcm_finish_encrypt(g, buf + len);
        if (rc == 0) rc = crypto_sha256_update(body, buf + len, ENVELOPE_TAG_LEN);
        if (rc == 0) rc = wr(wr_arg, buf, len + ENVELOPE_TAG_LEN);
        left -= len;
    }
    if (rc == 0) {
        uint8_t extra;
        size_t got;
        rc = read_full(rd, rd_arg, &extra, 1, &got);
        if (rc == 0 && got != 0)
            rc = err_set("payload reader has more than the %llu bytes the envelope header promises",
                         (unsigned long long)h.payload_size);
    }
    uint8_t digest[32], msg[SIGNED_MSG_LEN], sig[ENVELOPE_SIG_LEN];
    if (rc == 0) rc = crypto_sha256_final(body, digest);
    if (rc == 0) {
        signed_message(hb, digest, msg);
        rc = crypto_ed25519_sign(sig, sender->sign_seed, msg, sizeof msg);
    }
    if (rc == 0) rc = wr(wr_arg, sig, sizeof sig);
    crypto_sha256_free(body);
    crypto_gcm_free(g);
    crypto_wipe(okm, sizeof okm);
    if (buf) crypto_wipe(buf, cap + ENVELOPE_TAG_LEN);
    free(buf);
    return rc == 0 ? 0 : err_context("sealing an envelope");
}

/* ---- open / verify ------------------------------------------------------------------------------
 */

/* Format and size checks that need nothing but the header bytes and the limits. */
static int header_parse(const uint8_t hb[ENVELOPE_HEADER_LEN], const envelope_expect *x,
                        envelope_header *h, envelope_status *st) {
    if (memcmp(hb + OFF_MAGIC, MAGIC, 4) != 0)
        return refuse(st, ENVELOPE_EFORMAT,
                      "bytes 0..3 are not the magic 'FLSE': not a fedlora sealed envelope");
    h->version = get_be16(hb + OFF_VERSION);
    h->payload_type = get_be16(hb + OFF_TYPE);
    memcpy(h->consortium, hb + OFF_CONSORTIUM, ENVELOPE_CONSORTIUM_LEN);
    h->round = get_be64(hb + OFF_ROUND);
    memcpy(h->sender_fp, hb + OFF_SENDER, KEYS_FP_LEN);
    memcpy(h->recipient_fp, hb + OFF_RECIPIENT, KEYS_FP_LEN);
    memcpy(h->message_id, hb + OFF_MSGID, ENVELOPE_MSGID_LEN);
    h->segment_size = get_be32(hb + OFF_SEGMENT);
    h->payload_size = get_be64(hb + OFF_PAYLOAD);
    memcpy(h->ephemeral_pub, hb + OFF_EPHEMERAL, 32);
    if (h->version != ENVELOPE_VERSION)
        return refuse(st, ENVELOPE_EVERSION,
                      "protocol version %u at offset 4, this build speaks version %d: upgrade "
                      "the older side",
                      h->version, ENVELOPE_VERSION);
    if (h->segment_size < ENVELOPE_SEGMENT_MIN || h->segment_size > ENVELOPE_SEGMENT_MAX)
        return refuse(st, ENVELOPE_EFORMAT, "segment size %u at offset 128 is outside %u..%u",
                      h->segment_size, ENVELOPE_SEGMENT_MIN, ENVELOPE_SEGMENT_MAX);
    uint32_t max_seg = x->max_segment ? x->max_segment : ENVELOPE_SEGMENT_MAX;
    if (h->segment_size > max_seg)
        return refuse(st, ENVELOPE_ETOOBIG,
                      "segment size %u at offset 128 is above this receiver's limit of %u bytes",
                      h->segment_size, max_seg);
    if (h->payload_size > ENVELOPE_PAYLOAD_MAX)
        return refuse(st, ENVELOPE_ETOOBIG,
                      "payload of %llu bytes (offset 132) is above the format's cap of 2^50 bytes",
                      (unsigned long long)h->payload_size);
    if (h->payload_size > x->max_payload)
        return refuse(st, ENVELOPE_ETOOBIG,
                      "payload of %llu bytes (offset 132) is above this receiver's limit of %llu",
                      (unsigned long long)h->payload_size, (unsigned long long)x->max_payload);
    return 0;
}

/* Context checks: consortium, round, type, recipient, sender, replay. */
static int header_check(const envelope_expect *x, const uint8_t recipient_kx_pub[32],
                        const envelope_header *h, keys_public *sender, envelope_status *st) {
    char a[17], b[17];
    if (memcmp(h->consortium, x->consortium, ENVELOPE_CONSORTIUM_LEN) != 0) {
        /* Consortium ids need not look random: show them whole. */
        char ha[2 * ENVELOPE_CONSORTIUM_LEN + 1], hb[2 * ENVELOPE_CONSORTIUM_LEN + 1];
        return refuse(st, ENVELOPE_ECONSORTIUM,
                      "sealed for consortium %s, this receiver serves %s: the sender is "
                      "configured for another consortium",
                      to_hex(h->consortium, ENVELOPE_CONSORTIUM_LEN, ha),
                      to_hex(x->consortium, ENVELOPE_CONSORTIUM_LEN, hb));
    }
    if (h->round < x->round_min || h->round > x->round_max)
        return refuse(st, ENVELOPE_EROUND,
                      "sealed for round %llu, this receiver accepts rounds %llu..%llu: a stale or "
                      "replayed submission",
                      (unsigned long long)h->round, (unsigned long long)x->round_min,
                      (unsigned long long)x->round_max);
    if (x->check_payload_type && h->payload_type != x->payload_type)
        return refuse(st, ENVELOPE_ETYPE, "payload type %u, expected %u", h->payload_type,
                      x->payload_type);
    uint8_t rfp[KEYS_FP_LEN];
    if (keys_kx_fingerprint(recipient_kx_pub, rfp) != 0) {
        *st = ENVELOPE_EIO;
        return -1;
    }
    if (memcmp(rfp, h->recipient_fp, KEYS_FP_LEN) != 0)
        return refuse(st, ENVELOPE_ERECIPIENT,
                      "sealed to recipient key %s..., this receiver's key is %s...: the sender "
                      "used another (or an old) aggregator key",
                      short_hex(h->recipient_fp, a), short_hex(rfp, b));
    int found = x->lookup(x->lookup_arg, h->sender_fp, sender);
    if (found < 0) {
        *st = ENVELOPE_EIO;
        return err_context("looking up the envelope's sender");
    }
    if (found == 0)
        return refuse(
            st, ENVELOPE_EUNKNOWN_SENDER,
            "sender fingerprint %s... is not a known member (not in the roster, or revoked)",
            short_hex(h->sender_fp, a));
    uint8_t sfp[KEYS_FP_LEN];
    if (keys_fingerprint(sender, sfp) != 0) {
        *st = ENVELOPE_EIO;
        return -1;
    }
    if (memcmp(sfp, h->sender_fp, KEYS_FP_LEN) != 0) {
        *st = ENVELOPE_EIO;
        return err_set("sender lookup for %s... returned identity '%s' with another fingerprint",
                       short_hex(h->sender_fp, a), sender->name);
    }
    if (x->expected_sender && memcmp(x->expected_sender, h->sender_fp, KEYS_FP_LEN) != 0)
        return refuse(st, ENVELOPE_ESENDER,
                      "sealed by '%s' (%s...) but this session belongs to %s...: members may only "
                      "submit their own updates",
                      sender->name, short_hex(h->sender_fp, a), short_hex(x->expected_sender, b));
    if (x->seen) {
        int seen = x->seen(x->seen_arg, h->message_id);
        if (seen < 0) {
            *st = ENVELOPE_EIO;
            return err_context("checking the envelope's message id for replay");
        }
        if (seen)
            return refuse(st, ENVELOPE_EREPLAY,
                          "message id %s... from '%s' was already accepted: a replay",
                          short_hex(h->message_id, a), sender->name);
    }
    return 0;
}

/* The shared pass of open (recipient != NULL: decrypt to sink) and verify
 * (recipient == NULL: hash only). */
static int open_core(const envelope_expect *x, const keys_secret *recipient,
                     const uint8_t recipient_kx_pub[32], envelope_read_fn rd, void *rd_arg,
                     envelope_write_fn sink, void *sink_arg, envelope_header *out_hdr,
                     keys_public *out_sender, envelope_status *st) {
    *st = ENVELOPE_OK;
    if (!x->lookup) {
        *st = ENVELOPE_EIO;
        return err_set("envelope_expect.lookup is required to know the senders");
    }
    uint8_t hb[ENVELOPE_HEADER_LEN];
    envelope_header h;
    keys_public sender;
    memset(&h, 0, sizeof h);
    memset(&sender, 0, sizeof sender);
    size_t got;
    if (read_full(rd, rd_arg, hb, sizeof hb, &got) != 0) {
        *st = ENVELOPE_EIO;
        return err_context("reading the envelope header");
    }
    if (got < sizeof hb)
        return refuse(st, ENVELOPE_ETRUNCATED,
                      "input ends after %zu bytes, inside the %d-byte header", got,
                      ENVELOPE_HEADER_LEN);
    int rc = header_parse(hb, x, &h, st);
    if (out_hdr) *out_hdr = h;
    if (rc == 0) rc = header_check(x, recipient_kx_pub, &h, &sender, st);
    if (out_sender) *out_sender = sender;
    if (rc != 0) return -1;

    uint8_t hd[32], okm[OKM_LEN], confirm[ENVELOPE_CONFIRM_LEN];
    uint64_t offset = ENVELOPE_HEADER_LEN;
    uint64_t nseg = segment_count(h.payload_size, h.segment_size);
    size_t cap = (size_t)(h.payload_size < h.segment_size ? h.payload_size : h.segment_size);
    uint8_t *buf = NULL;
    crypto_gcm *g = NULL;
    crypto_sha256_ctx *body = NULL;
    memset(okm, 0, sizeof okm);
    if (crypto_sha256(hb, sizeof hb, hd) != 0) {
        rc = -1, *st = ENVELOPE_EIO;
        goto done;
    }
    if (recipient && derive(recipient->kx_priv, h.ephemeral_pub, h.ephemeral_pub, recipient_kx_pub,
                            hd, okm) != 0) {
        rc = refuse(st, ENVELOPE_EHEADER, "the ephemeral key at offset 140 is unusable (%s)",
                    err_msg());
        goto done;
    }
    if (read_full(rd, rd_arg, confirm, sizeof confirm, &got) != 0) {
        rc = -1, *st = ENVELOPE_EIO;
        goto done;
    }
    if (got < sizeof confirm) {
        rc = refuse(st, ENVELOPE_ETRUNCATED,
                    "input ends at offset %llu, inside the key confirmation",
                    (unsigned long long)(offset + got));
        goto done;
    }
    if (recipient && !crypto_equal(confirm, okm + OKM_CONFIRM, sizeof confirm)) {
        rc = refuse(st, ENVELOPE_EHEADER,
                    "key confirmation (offset 172) does not match: the header was altered, or the "
                    "envelope was not sealed to this key");
        goto done;
    }
    offset += sizeof confirm;
    buf = malloc(cap + ENVELOPE_TAG_LEN);
    if (!buf || crypto_sha256_new(&body) != 0 ||
        (recipient && crypto_gcm_new(&g, okm + OKM_KEY, 0) != 0)) {
        rc = buf ? -1 : err_set("out of memory for a %zu-byte envelope segment", cap);
        *st = ENVELOPE_EIO;
        goto done;
    }
    if (crypto_sha256_update(body, confirm, sizeof confirm) != 0) {
        rc = -1, *st = ENVELOPE_EIO;
        goto done;
    }
    uint64_t left = h.payload_size;
    for (uint64_t i = 0; i < nseg; i++) {
        size_t len = (size_t)(left < h.segment_size ? left : h.segment_size);
        size_t want = len + ENVELOPE_TAG_LEN;
        if (read_full(rd, rd_arg, buf, want, &got) != 0) {
            rc = err_context("reading envelope segment %llu", (unsigned long long)i);
            *st = ENVELOPE_EIO;
            goto done;
        }
        if (got < want) {
            rc =
                refuse(st, ENVELOPE_ETRUNCATED,
                       "input ends at offset %llu, inside segment %llu of %llu (%zu of %zu bytes): "
                       "the envelope was cut short",
                       (unsigned long long)(offset + got), (unsigned long long)i,
                       (unsigned long long)nseg, got, want);
            goto done;
        }
        if (g) {
            uint8_t nonce[12], aad[41];
            segment_nonce_aad(okm, hd, i, i + 1 == nseg, nonce, aad);
            rc = crypto_gcm_begin(g, nonce, aad, sizeof aad);
        }
        for (size_t off = 0; rc == 0 && off < len; off += SLICE) {
            size_t n = len - off < SLICE ? len - off : SLICE;
            rc = crypto_sha256_update(body, buf + off, n);
            if (rc == 0 && g) rc = crypto_gcm_update(g, buf + off, buf + off, n);
        }
        if (rc == 0) rc = crypto_sha256_update(body, buf + len, ENVELOPE_TAG_LEN);
        if (rc != 0) {
            *st = ENVELOPE_EIO;
            goto done;
        }
        if (g && crypto_gcm_finish_decrypt(g, buf + len, ENVELOPE_TAG_LEN) != 0) {
            rc =
                refuse(st, ENVELOPE_ESEGMENT,
                       "segment %llu of %llu (offset %llu) fails authentication: its ciphertext "
                       "or tag was altered, or segments were reordered or spliced in",
                       (unsigned long long)i, (unsigned long long)nseg, (unsigned long long)offset);
            goto done;
        }
        if (sink && len > 0 && sink(sink_arg, buf, len) != 0) {
            rc = err_context("writing the plaintext of envelope segment %llu",
                             (unsigned long long)i);
            *st = ENVELOPE_EIO;
            goto done;
        }
        offset += want;
        left -= len;
    }
    uint8_t sig[ENVELOPE_SIG_LEN], extra, digest[32], msg[SIGNED_MSG_LEN];
    if (read_full(rd, rd_arg, sig, sizeof sig, &got) != 0) {
        rc = -1, *st = ENVELOPE_EIO;
        goto done;
    }
    if (got < sizeof sig) {
        rc = refuse(st, ENVELOPE_ETRUNCATED,
                    "input ends at offset %llu, inside the 64-byte signature: the envelope was "
                    "cut short",
                    (unsigned long long)(offset + got));
        goto done;
    }
    if (read_full(rd, rd_arg, &extra, 1, &got) != 0) {
        rc = -1, *st = ENVELOPE_EIO;
        goto done;
    }
    if (got != 0) {
        rc = refuse(st, ENVELOPE_ETRAILING,
                    "bytes follow the signature, which ends the envelope at offset %llu",
                    (unsigned long long)(offset + sizeof sig));
        goto done;
    }
    if (crypto_sha256_final(body, digest) != 0) {
        rc = -1, *st = ENVELOPE_EIO;
        goto done;
    }
    signed_message(hb, digest, msg);
    if (crypto_ed25519_verify(sig, sender.sign_pub, msg, sizeof msg) != 0)
        rc = refuse(st, ENVELOPE_ESIGNATURE,
                    "the signature at offset %llu is not valid for sender '%s': the envelope was "
                    "altered, or signed by another key than the sender it names",
                    (unsigned long long)offset, sender.name);
done:
    crypto_sha256_free(body);
    crypto_gcm_free(g);
    crypto_wipe(okm, sizeof okm);
    if (buf) crypto_wipe(buf, cap + ENVELOPE_TAG_LEN);
    free(buf);
    return rc == 0 ? 0 : -1;
}

int envelope_open(const envelope_expect *x, const keys_secret *recipient, envelope_read_fn rd,
                  void *rd_arg, envelope_write_fn sink, void *sink_arg, envelope_header *hdr,
                  keys_public *sender, envelope_status *status) {
    envelope_status st_local;
    envelope_status *st = status ? status : &st_local;
    return open_core(x, recipient, recipient->pub.kx_pub, rd, rd_arg, sink, sink_arg, hdr, sender,
                     st);
}

int envelope_verify(const envelope_expect *x, const uint8_t recipient_kx_pub[32],
                    envelope_read_fn rd, void *rd_arg, envelope_header *hdr, keys_public *sender,
                    envelope_status *status) {
    envelope_status st_local;
    envelope_status *st = status ? status : &st_local;
    return open_core(x, NULL, recipient_kx_pub, rd, rd_arg, NULL, NULL, hdr, sender, st);
}

/* ---- in-memory forms
 * ----------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t len, pos;
} mem_reader;

static int mem_read(void *arg, void *buf, size_t cap, size_t *got) {
    mem_reader *m = arg;
    size_t n = m->len - m->pos < cap ? m->len - m->pos : cap;
    if (n) memcpy(buf, m->p + m->pos, n);
    m->pos += n;
    *got = n;
    return 0;
}

typedef struct {
    uint8_t *p;
    size_t cap, len;
} mem_writer;

static int mem_write(void *arg, const void *buf, size_t n) {
    mem_writer *m = arg;
    if (n > m->cap - m->len) return err_set("envelope output exceeds its %zu-byte buffer", m->cap);
    memcpy(m->p + m->len, buf, n);
    m->len += n;
    return 0;
}

int envelope_seal_mem(const envelope_params *p, const keys_secret *sender,
                      const uint8_t recipient_kx_pub[32], const void *payload, uint8_t **out,
                      size_t *out_len, envelope_header *hdr) {
    *out = NULL;
    *out_len = 0;
    uint64_t total;
    uint32_t seg = p->segment_size ? p->segment_size : ENVELOPE_SEGMENT_DEFAULT;
    if (envelope_sealed_size(p->payload_size, seg, &total) != 0) return -1;
    if (total > SIZE_MAX)
        return err_set("sealed envelope of %llu bytes does not fit in memory",
                       (unsigned long long)total);
    mem_writer w = {malloc((size_t)total), (size_t)total, 0};
    if (!w.p) return err_set("out of memory for a %llu-byte envelope", (unsigned long long)total);
    mem_reader r = {payload, (size_t)p->payload_size, 0};
    if (envelope_seal(p, sender, recipient_kx_pub, mem_read, &r, mem_write, &w, hdr) != 0) {
        free(w.p);
        return -1;
    }
    *out = w.p;
    *out_len = w.len;
    return 0;
}

int envelope_open_mem(const envelope_expect *x, const keys_secret *recipient, const void *env,
                      size_t len, uint8_t **payload, size_t *payload_len, envelope_header *hdr,
                      keys_public *sender, envelope_status *status) {
    envelope_status st_local;
    envelope_status *st = status ? status : &st_local;
    *payload = NULL;
    *payload_len = 0;
    *st = ENVELOPE_OK;
    /* Everything that sizes an allocation is checked before it is made:
     * the limits on the header's sizes, then the exact total length. */
    envelope_header h;
    memset(&h, 0, sizeof h);
    if (len < ENVELOPE_HEADER_LEN)
        return refuse(st, ENVELOPE_ETRUNCATED, "%zu bytes, shorter than the %d-byte header", len,
                      ENVELOPE_HEADER_LEN);
    if (header_parse(env, x, &h, st) != 0) {
        if (hdr) *hdr = h;
        return -1;
    }
    uint64_t total;
    if (envelope_sealed_size(h.payload_size, h.segment_size, &total) != 0) {
        *st = ENVELOPE_EFORMAT;
        return -1;
    }
    if (len < total)
        return refuse(st, ENVELOPE_ETRUNCATED,
                      "%zu bytes, but its header describes a %llu-byte envelope: it was cut short",
                      len, (unsigned long long)total);
    if (len > total)
        return refuse(st, ENVELOPE_ETRAILING,
                      "%zu bytes, but its header describes a %llu-byte envelope", len,
                      (unsigned long long)total);
    mem_writer w = {malloc(h.payload_size ? (size_t)h.payload_size : 1), (size_t)h.payload_size, 0};
    if (!w.p) {
        *st = ENVELOPE_EIO;
        return err_set("out of memory for a %llu-byte payload", (unsigned long long)h.payload_size);
    }
    mem_reader r = {env, len, 0};
    if (envelope_open(x, recipient, mem_read, &r, mem_write, &w, hdr, sender, st) != 0) {
        crypto_wipe(w.p, w.cap);
        free(w.p);
        return -1;
    }
    *payload = w.p;
    *payload_len = w.len;
    return 0;
}
