/* bench_transport — ZeroMQ loopback throughput of a sealed update, raw and
 * through the protocol.
 *
 * A DEALER (the node) streams to a ROUTER (the aggregator) over
 * tcp://127.0.0.1, each side with its own ZeroMQ context (its own I/O thread,
 * as two processes would have), through transport_send / transport_recv with
 * the default limits (1 MiB + 4 KiB frames, 64 messages queued per peer). The
 * payload is sealed once, up front, for the first two modes:
 *
 *   raw          the sealed envelope's bytes in plain 1 MiB frames: the
 *                ceiling, what ZeroMQ does with these bytes and nothing else;
 *   submit       the same bytes as the protocol sends them: SUBMIT_BEGIN,
 *                SUBMIT_CHUNK messages of 1 MiB (msg_encode, handed to libzmq
 *                without a second copy), SUBMIT_END; the receiver decodes
 *                every message with the schema-checked decoder;
 *   seal-inline  no sealing up front: envelope_seal streams into the socket,
 *                one frame per sealed segment, so the sender pays for AES-GCM
 *                and SHA-256 while it sends;
 *   seal+open    as seal-inline, and the receiver runs envelope_open on the
 *                frames as they arrive (plaintext to a sink that drops it);
 *   seal-only    no socket: envelope_seal into a writer that drops the bytes,
 *                on one thread, to tell the sealer's cost from the socket's.
 *
 * Nothing is acknowledged per chunk: the senders stream and ZMQ_SNDHWM gives
 * back-pressure. GB/s is payload bytes (10^9) per second from the first send
 * to the last byte received; best of --reps runs, modes interleaved so that
 * load from other processes hits them alike. Usage:
 *   bench_transport [--mib N] [--reps N]      (defaults: 1024 MiB, 3 runs) */
#include "util/err.h"
#include "wire/envelope.h"
#include "wire/keys.h"
#include "wire/msg.h"
#include "wire/transport.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK MSG_CHUNK_MAX

enum mode { RAW, SUBMIT, SEAL_INLINE, SEAL_OPEN, SEAL_ONLY, N_MODES };
static const char *const mode_names[] = {"raw", "submit", "seal-inline", "seal+open", "seal-only"};

struct run {
    enum mode mode;
    uint64_t payload;      /* plaintext bytes */
    const uint8_t *source; /* CHUNK bytes of pattern, repeated to make the payload */
    const uint8_t *sealed; /* the payload sealed up front (raw, submit) */
    uint64_t sealed_len;
    const keys_secret *node, *agg;
    transport *dealer;
    char error[ERR_MSG_MAX];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

_Noreturn static void die(const char *what) {
    fprintf(stderr, "bench_transport: %s: %s\n", what, err_msg());
    exit(1);
}

static const uint8_t consortium[ENVELOPE_CONSORTIUM_LEN] = "bench-consortium";

/* ---- sender -------------------------------------------------------------------- */

struct source {
    const uint8_t *pattern;
    uint64_t left;
};

/* Payload reader for envelope_seal: the pattern, over and over. */
static int source_read(void *arg, void *buf, size_t cap, size_t *got) {
    struct source *s = arg;
    size_t n = cap < CHUNK ? cap : CHUNK;
    if (n > s->left) n = (size_t)s->left;
    memcpy(buf, s->pattern, n);
    s->left -= n;
    *got = n;
    return 0;
}

/* Envelope writer: each piece the sealer writes (header, confirmation, one
 * sealed segment, signature) goes out as one frame. */
static int socket_write(void *arg, const void *buf, size_t len) {
    struct transport_frame f = {buf, len};
    return transport_send(arg, &f, 1);
}

struct memory {
    uint8_t *buf;
    size_t len;
};

static int memory_write(void *arg, const void *buf, size_t len) {
    struct memory *m = arg;
    memcpy(m->buf + m->len, buf, len);
    m->len += len;
    return 0;
}

static int send_msg(transport *dealer, const struct msg *m) {
    uint8_t *buf;
    size_t len;
    if (msg_encode(m, &buf, &len) != 0) return -1;
    struct transport_frame f = {buf, len};
    return transport_send_give(dealer, &f, 1);
}

static int send_submission(const struct run *r) {
    struct msg m = {.type = MSG_SUBMIT_BEGIN};
    m.submit_begin.round = 1;
    memset(m.submit_begin.id, 0x5a, MSG_ID_LEN);
    m.submit_begin.size = r->sealed_len;
    m.submit_begin.chunks = (uint32_t)((r->sealed_len + CHUNK - 1) / CHUNK);
    if (send_msg(r->dealer, &m) != 0) return -1;
    uint32_t index = 0;
    for (uint64_t off = 0; off < r->sealed_len; off += CHUNK, index++) {
        m = (struct msg){.type = MSG_SUBMIT_CHUNK};
        memset(m.submit_chunk.id, 0x5a, MSG_ID_LEN);
        m.submit_chunk.index = index;
        m.submit_chunk.data = r->sealed + off;
        m.submit_chunk.data_len =
            (uint32_t)(r->sealed_len - off < CHUNK ? r->sealed_len - off : CHUNK);
        if (send_msg(r->dealer, &m) != 0) return -1;
    }
    m = (struct msg){.type = MSG_SUBMIT_END};
    memset(m.submit_end.id, 0x5a, MSG_ID_LEN);
    return send_msg(r->dealer, &m);
}

static void *send_payload(void *arg) {
    struct run *r = arg;
    int rc = 0;
    if (r->mode == RAW) {
        for (uint64_t off = 0; rc == 0 && off < r->sealed_len; off += CHUNK) {
            uint64_t n = r->sealed_len - off < CHUNK ? r->sealed_len - off : CHUNK;
            struct transport_frame f = {r->sealed + off, (size_t)n};
            rc = transport_send(r->dealer, &f, 1);
        }
    } else if (r->mode == SUBMIT) {
        rc = send_submission(r);
    } else {
        envelope_params p = {.round = 1, .payload_type = 1, .payload_size = r->payload};
        memcpy(p.consortium, consortium, sizeof consortium);
        struct source s = {r->source, r->payload};
        rc = envelope_seal(&p, r->node, r->agg->pub.kx_pub, source_read, &s, socket_write,
                           r->dealer, NULL);
    }
    if (rc != 0) snprintf(r->error, sizeof r->error, "%s", err_msg());
    return NULL;
}

/* ---- receiver -------------------------------------------------------------------- */

struct inbox {
    transport *router;
    struct transport_limits lim;
    struct transport_msg m; /* current message: [peer][bytes] */
    size_t off;             /* bytes of it already consumed */
    uint64_t received;      /* bytes of all frames after the peer frame */
    uint64_t expect;        /* bytes the sender sends in all: then end of input */
};

static int next_frame(struct inbox *in) {
    transport_msg_close(&in->m);
    int rc = transport_recv(in->router, &in->lim, &in->m);
    if (rc == 1) return err_set("receiver timed out");
    if (rc < 0) return -1;
    if (in->m.n != 2) return err_set("expected [peer][data], got %zu frames", in->m.n);
    in->off = 0;
    in->received += transport_size(&in->m, 1);
    return 0;
}

/* Envelope reader for envelope_open: the frames, in order. */
static int inbox_read(void *arg, void *buf, size_t cap, size_t *got) {
    struct inbox *in = arg;
    while (in->m.n == 0 || in->off == transport_size(&in->m, 1)) {
        if (in->received == in->expect) {
            *got = 0;
            return 0;
        }
        if (next_frame(in) < 0) return -1;
    }
    size_t n = transport_size(&in->m, 1) - in->off;
    if (n > cap) n = cap;
    memcpy(buf, transport_data(&in->m, 1) + in->off, n);
    in->off += n;
    *got = n;
    return 0;
}

static int discard(void *arg, const void *buf, size_t len) {
    *(uint64_t *)arg += len;
    return 0;
}

static double seal_only(const struct run *r) {
    envelope_params p = {.round = 1, .payload_type = 1, .payload_size = r->payload};
    memcpy(p.consortium, consortium, sizeof consortium);
    struct source s = {r->source, r->payload};
    uint64_t out = 0;
    double t0 = now_s();
    if (envelope_seal(&p, r->node, r->agg->pub.kx_pub, source_read, &s, discard, &out, NULL) != 0)
        die("seal-only");
    return now_s() - t0;
}

static int lookup(void *arg, const uint8_t fp[KEYS_FP_LEN], keys_public *out) {
    const keys_secret *node = arg;
    uint8_t mine[KEYS_FP_LEN];
    if (keys_fingerprint(&node->pub, mine) != 0) return -1;
    if (memcmp(fp, mine, KEYS_FP_LEN) != 0) return 0;
    *out = node->pub;
    return 1;
}

/* Receives a submission: BEGIN, chunks in order, END, each decoded. */
static int receive_submission(struct inbox *in, uint64_t sealed_len) {
    struct msg m;
    uint64_t data = 0;
    uint32_t chunks = 0, next = 0;
    for (;;) {
        if (next_frame(in) < 0) return -1;
        if (msg_decode(transport_data(&in->m, 1), transport_size(&in->m, 1), NULL, &m) != 0)
            return -1;
        if (m.type == MSG_SUBMIT_BEGIN)
            chunks = m.submit_begin.chunks;
        else if (m.type == MSG_SUBMIT_CHUNK && m.submit_chunk.index == next++)
            data += m.submit_chunk.data_len;
        else if (m.type == MSG_SUBMIT_END)
            break;
        else
            return err_set("unexpected %s", msg_type_name(m.type));
    }
    if (next != chunks || data != sealed_len)
        return err_set("got %u chunks, %llu bytes", next, (unsigned long long)data);
    return 0;
}

/* One run; returns seconds from the first send to the last byte received. */
static double run_once(struct run *r, transport *router, const struct transport_opts *o) {
    if (r->mode == SEAL_ONLY) return seal_only(r);
    /* Every mode but submit moves exactly the envelope's bytes as frames. */
    struct inbox in = {.router = router, .lim = o->lim, .expect = r->sealed_len};
    pthread_t th;
    double t0 = now_s();
    if (pthread_create(&th, NULL, send_payload, r) != 0) {
        err_set("pthread_create failed");
        die("starting the sender");
    }
    if (r->mode == SEAL_OPEN) {
        envelope_expect x = {.round_min = 1,
                             .round_max = 1,
                             .max_payload = r->payload,
                             .lookup = lookup,
                             .lookup_arg = (void *)r->node};
        memcpy(x.consortium, consortium, sizeof consortium);
        uint64_t plain = 0;
        envelope_status st;
        if (envelope_open(&x, r->agg, inbox_read, &in, discard, &plain, NULL, NULL, &st) != 0)
            die("envelope_open");
        if (plain != r->payload) {
            err_set("opened %llu bytes of %llu", (unsigned long long)plain,
                    (unsigned long long)r->payload);
            die("seal+open");
        }
    } else if (r->mode == SUBMIT) {
        if (receive_submission(&in, r->sealed_len) != 0) die("receiving the submission");
    } else {
        while (in.received < in.expect)
            if (next_frame(&in) < 0) die("receiving");
    }
    double t = now_s() - t0;
    transport_msg_close(&in.m);
    pthread_join(th, NULL);
    if (r->error[0]) {
        err_set("%s", r->error);
        die("sending");
    }
    return t;
}

int main(int argc, char **argv) {
    uint64_t mib = 1024;
    int reps = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc)
            mib = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_transport [--mib N] [--reps N]\n");
            return 2;
        }
    }
    if (mib == 0 || mib > (1u << 20) || reps < 1) {
        fprintf(stderr, "bench_transport: --mib must be in 1..2^20, --reps positive\n");
        return 2;
    }

    static uint8_t pattern[CHUNK];
    for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (uint8_t)(i * 2654435761u >> 13);
    keys_secret node, agg;
    if (keys_generate("bench-node", &node) != 0 || keys_generate("bench-agg", &agg) != 0)
        die("keys");

    /* Seal the payload once, into memory, for the raw and submit modes. */
    uint64_t payload = mib << 20, sealed_len;
    if (envelope_sealed_size(payload, ENVELOPE_SEGMENT_DEFAULT, &sealed_len) != 0) die("size");
    struct memory sealed = {malloc(sealed_len), 0};
    if (!sealed.buf) {
        err_set("out of memory for %llu bytes", (unsigned long long)sealed_len);
        die("sealing");
    }
    envelope_params p = {.round = 1, .payload_type = 1, .payload_size = payload};
    memcpy(p.consortium, consortium, sizeof consortium);
    struct source src = {pattern, payload};
    if (envelope_seal(&p, &node, agg.pub.kx_pub, source_read, &src, memory_write, &sealed, NULL) !=
        0)
        die("sealing");

    struct transport_opts o;
    transport_opts_default(&o);
    o.send_timeout_ms = o.recv_timeout_ms = 30000;
    /* Each end with a context (an I/O thread) of its own, as two processes
     * would have. */
    o.own_context = 1;
    transport *router, *dealer;
    char ep[256];
    if (transport_router(&router, "tcp://127.0.0.1:*", &o) != 0 ||
        transport_endpoint(router, ep, sizeof ep) != 0 || transport_dealer(&dealer, ep, &o) != 0)
        die("sockets");
    /* One small message first, so the connection is up before timing. */
    struct transport_frame hi = {"hi", 2};
    struct transport_msg m;
    if (transport_send(dealer, &hi, 1) != 0 || transport_recv(router, &o.lim, &m) != 0)
        die("warm-up");
    transport_msg_close(&m);

    printf("payload %llu MiB, sealed %llu bytes, 1 MiB chunks, tcp loopback\n",
           (unsigned long long)mib, (unsigned long long)sealed_len);
    double best[N_MODES] = {0};
    for (int rep = 0; rep < reps; rep++) {
        for (int mode = 0; mode < N_MODES; mode++) {
            struct run r = {.mode = (enum mode)mode,
                            .payload = payload,
                            .source = pattern,
                            .sealed = sealed.buf,
                            .sealed_len = sealed_len,
                            .node = &node,
                            .agg = &agg,
                            .dealer = dealer};
            double t = run_once(&r, router, &o);
            double gbs = (double)payload / t / 1e9;
            printf("run %d %-12s %.3f s  %.3f GB/s\n", rep + 1, mode_names[mode], t, gbs);
            fflush(stdout);
            if (gbs > best[mode]) best[mode] = gbs;
        }
    }
    for (int mode = 0; mode < N_MODES; mode++)
        printf("best %-12s %.3f GB/s  (/ raw = %.2f)\n", mode_names[mode], best[mode],
               best[mode] / best[RAW]);

    free(sealed.buf);
    keys_secret_wipe(&node);
    keys_secret_wipe(&agg);
    if (transport_close(dealer) != 0 || transport_close(router) != 0) die("closing");
    return 0;
}
