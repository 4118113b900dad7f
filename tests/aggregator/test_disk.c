/* test_disk — a full disk refuses an upload and never stops the aggregator
 * (issue 17, case 2: a chunk write that hit ENOSPC made it exit, and a
 * restart cleared the partial files, so anyone could repeat it).
 *
 * The state directory lives on a 6 MiB tmpfs the test mounts in a mount
 * namespace of its own (unshare(CLONE_NEWNS), so nothing outside this
 * process sees it): an upload declared larger than the free space is
 * refused at SUBMIT_BEGIN (statvfs) with BUSY; one that fits, when the disk
 * then fills up, is refused at the chunk that hits ENOSPC; either way the
 * aggregator keeps answering (HELLO, GET_MODEL), and once there is room a
 * member's submission is receipted. Where the namespace or the mount is
 * not permitted (no CAP_SYS_ADMIN), the test says so and is skipped (exit
 * 77). */
#include "aggregator/agg.h"
#include "tests/aggregator/agg_test.h"
#include "wire/crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>

static struct fed F;
static const uint64_t T0 = 1800000000;

static struct msg ask_on(agg *a, int peer, const struct msg *req) {
    uint8_t *buf, *rep;
    size_t len, rlen;
    struct msg r = {0};
    agg_peer p = fed_peer(peer);
    if (msg_encode(req, &buf, &len) < 0) fed_die("msg_encode");
    int rc = agg_handle(a, &p, buf, len, T0 + 1, &rep, &rlen);
    free(buf);
    CHECK_MSG(rc == 0, "agg_handle failed (the aggregator would stop): %s", err_msg());
    if (rc == 0 && msg_decode(rep, rlen, NULL, &r) < 0) r.type = 0;
    if (r.type == MSG_MODEL_CHUNK) r.model_chunk.data = NULL;
    if (rc == 0) free(rep);
    return r;
}

static int refused_busy(const struct msg *r, const char *needle) {
    int ok = r->type == MSG_ERROR && r->error.code == MSG_ERR_BUSY && r->error.has_retry_after &&
             strstr(r->error.reason, needle);
    if (!ok)
        fprintf(stderr, "  wanted BUSY containing '%s', got %s: %s\n", needle,
                msg_type_name(r->type), r->type == MSG_ERROR ? r->error.reason : "");
    return ok;
}

static struct msg hello(agg *a) {
    struct msg m = {.type = MSG_HELLO};
    snprintf(m.hello.name, sizeof m.hello.name, "%s", fed_names[0]);
    keys_fingerprint(&F.m[0].pub, m.hello.fingerprint);
    CHECK_OK(hello_sign(&m.hello, F.consortium, &F.m[0], T0 + 1));
    return ask_on(a, 0, &m);
}

static struct msg begin(agg *a, const uint8_t id[16], uint64_t size, uint32_t chunks) {
    struct msg m = {.type = MSG_SUBMIT_BEGIN};
    m.submit_begin.round = 1;
    memcpy(m.submit_begin.id, id, 16);
    m.submit_begin.size = size;
    m.submit_begin.chunks = chunks;
    return ask_on(a, 0, &m);
}

static struct msg chunk(agg *a, const uint8_t id[16], uint32_t i, const uint8_t *d, uint32_t n) {
    struct msg m = {.type = MSG_SUBMIT_CHUNK};
    memcpy(m.submit_chunk.id, id, 16);
    m.submit_chunk.index = i;
    m.submit_chunk.data = d;
    m.submit_chunk.data_len = n;
    return ask_on(a, 0, &m);
}

/* Writes zeros into path until the file system is full. */
static void fill(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    static uint8_t block[65536];
    while (fd >= 0 && write(fd, block, sizeof block) > 0) {
    }
    if (fd >= 0) close(fd);
}

/* The scenario, in a child that may mount: its exit status is its number
 * of failed checks, or 77 to skip. */
static int scenario(void) {
    char root[600], mnt[700], cfg[600];
    fed_path(root, sizeof root, "disk");
    snprintf(mnt, sizeof mnt, "%s/state", root);
    if (fio_mkdirs(mnt, 0700) < 0) fed_die("mkdir");
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", mnt, "tmpfs", 0, "size=6m") != 0) {
        printf("skipped: cannot mount a tmpfs in a mount namespace of our own (%s); the full-disk "
               "case needs CAP_SYS_ADMIN (root, or a container that grants it)\n",
               strerror(errno));
        return 77;
    }
    fed_config(&F, "disk", cfg, sizeof cfg, "count = 1; quorum = 3; deadline = 100;",
               "limits = { max_submission = 67108864; };\n");
    agg_config c;
    agg *a;
    if (agg_config_load(&c, cfg) < 0 || agg_open(&a, &c, T0) < 0) fed_die("agg_open");
    struct msg r = hello(a);
    CHECK(r.type == MSG_ROUND);

    /* Declared larger than the disk: refused before a byte is written. */
    uint8_t id[16] = {0x11};
    r = begin(a, id, 8 << 20, 8);
    CHECK(refused_busy(&r, "cannot store this upload now"));

    /* It fits when it begins; then the disk fills up under it. */
    uint8_t data[65536] = {0};
    id[0] = 0x12;
    r = begin(a, id, 3 * sizeof data, 3);
    CHECK(r.type == MSG_ACK);
    char filler[800];
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    fill(filler);
    r = chunk(a, id, 0, data, sizeof data);
    CHECK(refused_busy(&r, "No space left on device"));
    /* ... and nothing else: it answers, it serves the model. */
    r = hello(a);
    CHECK(r.type == MSG_ROUND);
    uint8_t base[32];
    agg_current_base(a, base);
    struct msg g = {.type = MSG_GET_MODEL};
    memcpy(g.get_model.version, base, 32);
    g.get_model.length = 4096;
    r = ask_on(a, 0, &g);
    CHECK(r.type == MSG_MODEL_CHUNK);
    CHECK(agg_get_state(a) == AGG_OPEN);

    /* Room again: a member's envelope is receipted. */
    unlink(filler);
    size_t plen, len;
    uint8_t *p = fed_delta(&F, 1, base, 5, NULL, &plen), mid[16];
    uint8_t *env = fed_seal(&F, &F.m[0], "test-consortium", 1, p, plen, &len, mid);
    r = begin(a, mid, len, 1);
    CHECK(r.type == MSG_ACK);
    r = chunk(a, mid, 0, env, (uint32_t)len);
    CHECK(r.type == MSG_ACK);
    struct msg e = {.type = MSG_SUBMIT_END};
    memcpy(e.submit_end.id, mid, 16);
    crypto_sha256(env, len, e.submit_end.digest);
    r = ask_on(a, 0, &e);
    CHECK_MSG(r.type == MSG_RECEIPT, "after the disk was freed: %s",
              r.type == MSG_ERROR ? r.error.reason : msg_type_name(r.type));
    free(p);
    free(env);
    agg_close(a);
    agg_config_free(&c);
    umount(mnt);
    return check_failed ? check_failed : 0;
}

int main(void) {
    /* The scratch directory is this process's; the child makes everything
     * in it (OpenMP's threads do not survive a fork, so none are started
     * here). */
    ts_dir();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        fed_init(&F);
        int rc = scenario();
        model_free(F.base);
        fflush(NULL);
        _exit(rc & 0xff);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st));
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77) return 77;
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the scenario failed %d check(s)",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return check_finish();
}
