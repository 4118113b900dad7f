/* Onboarding a node: `fedlora node init` (node/init.h) and `fedlora doctor`
 * (node/doctor.h).
 *
 * node init, run as the real binary: by flags it writes keys (0600, in a
 * 0700 directory), a copy of the aggregator's identity, a state directory
 * and a config that node_config_load reads back with every value; it refuses
 * to overwrite, and without a terminal a missing flag is an error naming it.
 * The library's checks refuse bad values naming the flag, and a failure
 * halfway leaves nothing behind.
 *
 * doctor, against a fake aggregator (a ROUTER in a thread answering STATUS
 * and GET_MODEL with a roster made here): all ok for a good setup; FAIL for a
 * private key of mode 0644, an aggregator nothing listens for, a roster
 * signed by another admin than the pinned one, a clock 1000 s off, a node
 * that is not on the roster or revoked, another consortium; warn for 60 s of
 * skew and for a config that pins no admin.
 *
 * Then the walk-through of docs/onboarding.md against a real `fedlora
 * aggregator` that reads a roster: node init, doctor (not on the roster yet:
 * FAIL), the admin's `fedlora roster add`, the aggregator reloads it, doctor
 * again (all ok). The assertions are on findings (status and check name),
 * never on timing. */
#include "node/doctor.h"
#include "node/init.h"
#include "node/node.h"
#include "tests/federation/fed_test.h"
#include "tests/support/ts_model.h"
#include "util/hex.h"
#include "wire/roster.h"

#include <pthread.h>

#define CONSORTIUM "onboarding-test"

/* ---- a fake aggregator ------------------------------------------------------------ */

typedef struct {
    transport *sock;
    transport_curve curve; /* the aggregator's keys */
    char endpoint[256];
    pthread_t thread;
    pthread_mutex_t lock;
    int stop;
    /* What it answers (under lock). */
    int64_t clock_offset; /* added to its time */
    char consortium[64];
    char member[16]; /* STATUS_INFO.member */
    char *roster;    /* served by GET_MODEL under its SHA-256; NULL: no roster */
    size_t roster_len;
    uint64_t roster_version;
    uint8_t roster_hash[32];
    /* What it saw. */
    int statuses;
    struct msg_status last_status;
} fake_agg;

static void fake_reply(fake_agg *f, struct transport_msg *req, const struct msg *rep) {
    uint8_t *buf;
    size_t len;
    if (msg_encode(rep, &buf, &len) != 0) {
        fprintf(stderr, "fake aggregator: %s\n", err_msg());
        return;
    }
    struct transport_frame fr = {buf, len};
    if (transport_serve_reply(f->sock, req, &fr, 1) != 0)
        fprintf(stderr, "fake aggregator: %s\n", err_msg());
    free(buf);
}

static void *fake_run(void *arg) {
    fake_agg *f = arg;
    struct transport_opts o;
    transport_opts_default(&o);
    for (;;) {
        pthread_mutex_lock(&f->lock);
        int stop = f->stop;
        pthread_mutex_unlock(&f->lock);
        if (stop) break;
        /* It speaks CURVE with the aggregator's keys and lets every key in:
         * the doctor's checks past the handshake are what is tested here
         * (the real aggregator's ZAP is test_real_aggregator's). */
        int has_req = 0, has_zap = 0;
        if (transport_serve_wait(f->sock, 50, &has_req, &has_zap) != 0) continue;
        struct transport_zap_request q;
        while (has_zap && transport_zap_next(f->sock, &q) == 0)
            transport_zap_reply(f->sock, &q, 1, "anyone", "OK");
        struct transport_msg req;
        if (!has_req || transport_serve_recv(f->sock, &o.lim, &req) != 0) continue;
        struct msg m, rep;
        memset(&rep, 0, sizeof rep);
        if (msg_decode(transport_data(&req, TRANSPORT_PAYLOAD),
                       transport_size(&req, TRANSPORT_PAYLOAD), NULL, &m) != 0) {
            transport_msg_close(&req);
            continue;
        }
        pthread_mutex_lock(&f->lock);
        if (m.type == MSG_STATUS) {
            f->statuses++;
            f->last_status = m.status;
            struct msg_status_info *i = &rep.status_info;
            rep.type = MSG_STATUS_INFO;
            i->time = (uint64_t)((int64_t)time(NULL) + f->clock_offset);
            snprintf(i->consortium, sizeof i->consortium, "%s", f->consortium);
            i->round = 1;
            snprintf(i->state, sizeof i->state, "OPEN");
            snprintf(i->member, sizeof i->member, "%s", f->member);
            if (f->roster) {
                i->has_roster = 1;
                i->roster_version = f->roster_version;
                memcpy(i->roster_hash, f->roster_hash, 32);
                i->roster_size = f->roster_len;
            }
        } else if (m.type == MSG_HELLO) {
            /* What an aggregator in the clear tells a revoked member. */
            rep.type = MSG_ERROR;
            rep.error.code = MSG_ERR_NOT_MEMBER;
            snprintf(rep.error.reason, sizeof rep.error.reason,
                     "revoked: '%s' (identity 0123...) was revoked from consortium '%s'",
                     m.hello.name, f->consortium);
        } else if (m.type == MSG_GET_MODEL && f->roster &&
                   !memcmp(m.get_model.version, f->roster_hash, 32) &&
                   m.get_model.offset < f->roster_len) {
            struct msg_model_chunk *c = &rep.model_chunk;
            uint64_t left = f->roster_len - m.get_model.offset;
            rep.type = MSG_MODEL_CHUNK;
            memcpy(c->version, f->roster_hash, 32);
            c->offset = m.get_model.offset;
            c->total = f->roster_len;
            c->data = (const uint8_t *)f->roster + c->offset;
            c->data_len = (uint32_t)(left < m.get_model.length ? left : m.get_model.length);
            c->final = c->offset + c->data_len == c->total;
        } else {
            rep.type = MSG_ERROR;
            rep.error.code = MSG_ERR_NOT_FOUND;
            snprintf(rep.error.reason, sizeof rep.error.reason, "fake aggregator: not served");
        }
        fake_reply(f, &req, &rep);
        pthread_mutex_unlock(&f->lock);
        transport_msg_close(&req);
    }
    return NULL;
}

static int fake_start(fake_agg *f, const char *keys_dir) {
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->lock, NULL);
    snprintf(f->consortium, sizeof f->consortium, CONSORTIUM);
    snprintf(f->member, sizeof f->member, "active");
    keys_secret k;
    if (keys_load_secret(keys_dir, "aggregator", &k) != 0) return -1;
    memcpy(f->curve.secret_key, k.kx_priv, 32);
    memcpy(f->curve.public_key, k.pub.kx_pub, 32);
    keys_secret_wipe(&k);
    struct transport_opts o;
    transport_opts_default(&o);
    o.recv_timeout_ms = 50;
    o.linger_ms = 0;
    o.curve = &f->curve;
    if (transport_router(&f->sock, "tcp://127.0.0.1:*", &o) != 0 ||
        transport_endpoint(f->sock, f->endpoint, sizeof f->endpoint) != 0)
        return -1;
    return pthread_create(&f->thread, NULL, fake_run, f) == 0 ? 0 : err_set("pthread_create");
}

static void fake_stop(fake_agg *f) {
    pthread_mutex_lock(&f->lock);
    f->stop = 1;
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->thread, NULL);
    transport_close(f->sock);
    free(f->roster);
    pthread_mutex_destroy(&f->lock);
}

/* What the fake says next: its clock offset, member state, consortium. */
static void fake_set(fake_agg *f, int64_t offset, const char *member, const char *consortium) {
    pthread_mutex_lock(&f->lock);
    f->clock_offset = offset;
    snprintf(f->member, sizeof f->member, "%s", member);
    snprintf(f->consortium, sizeof f->consortium, "%s", consortium);
    pthread_mutex_unlock(&f->lock);
}

/* Serves the roster file at path (NULL: none). */
static int fake_serve_roster(fake_agg *f, const char *path) {
    char *text = NULL;
    size_t len = 0;
    roster r;
    memset(&r, 0, sizeof r);
    if (path && (fio_read_all(path, ROSTER_FILE_MAX, &text, &len) != 0 ||
                 roster_parse(text, len, &r, path) != 0))
        return -1;
    pthread_mutex_lock(&f->lock);
    free(f->roster);
    f->roster = text;
    f->roster_len = len;
    f->roster_version = r.version;
    memcpy(f->roster_hash, r.hash, 32);
    pthread_mutex_unlock(&f->lock);
    roster_free(&r);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------ */

static const char *root;

/* Runs `fedlora ARGS...` (NULL-terminated) with stdin from /dev/null (so
 * never a terminal) and stdout + stderr into log (new); its exit status. */
#define run_fedlora(log, ...) (unlink(log), ft_run((log), 120, __VA_ARGS__))

static unsigned mode_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (unsigned)(st.st_mode & 07777) : 0xffffu;
}

/* doctor on config with the given timeout; the report goes to r. */
static void doctor(const char *config, int timeout_ms, doctor_report *r) {
    doctor_report_free(r);
    doctor_options o = {.config = config, .timeout_ms = timeout_ms};
    CHECK_OK(doctor_run(&o, r));
}

static void show(const doctor_report *r) {
    char line[3 * DOCTOR_TEXT_MAX];
    for (size_t i = 0; i < r->n; i++) {
        doctor_format(&r->v[i], line, sizeof line);
        fprintf(stderr, "    %s\n", line);
    }
}

/* The text of the first finding of check with status s ("" when none). */
static const char *found(const doctor_report *r, const char *check, doctor_status s) {
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->v[i].check, check) && r->v[i].status == s) return r->v[i].found;
    return "";
}
static const char *todo(const doctor_report *r, const char *check, doctor_status s) {
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->v[i].check, check) && r->v[i].status == s) return r->v[i].todo;
    return "";
}

#define CHECK_STATUS(r, check, want)                                                               \
    do {                                                                                           \
        int got_ = doctor_status_of((r), (check));                                                 \
        CHECK_MSG(got_ == (int)(want), "%s: status %d, want %d", (check), got_, (int)(want));      \
        if (got_ != (int)(want)) show(r);                                                          \
    } while (0)

/* A copy of config (in its directory, so relative paths still hold) with
 * one piece of text replaced (replace NULL: the line holding `find` dropped). */
static int config_variant(const char *config, const char *out, const char *find,
                          const char *replace) {
    char *text = ts_read(config, NULL);
    if (!text) return err_set("cannot read %s", config);
    char *at = strstr(text, find), buf[16384];
    if (!at) {
        free(text);
        return err_set("'%s' not in %s", find, config);
    }
    if (replace) {
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - text), text, replace, at + strlen(find));
    } else {
        char *bol = at, *eol = strchr(at, '\n');
        while (bol > text && bol[-1] != '\n') bol--;
        snprintf(buf, sizeof buf, "%.*s%s", (int)(bol - text), text, eol ? eol + 1 : "");
    }
    free(text);
    return ts_write(out, buf);
}

/* A roster of consortium CONSORTIUM signed by admin (dir/name), listing the
 * members' .id files; revoke: a member's name to revoke in a second version
 * (NULL: none). */
static int make_roster(const char *path, const char *admin_dir, const char *admin_name,
                       const char *const *ids, int n, const char *revoke) {
    keys_secret admin;
    roster r;
    int64_t now = (int64_t)time(NULL) - 100;
    if (keys_load_secret(admin_dir, admin_name, &admin) != 0) return -1;
    int rc = roster_init(&r, CONSORTIUM, &admin.pub, now);
    for (int i = 0; rc == 0 && i < n; i++) {
        keys_public pub;
        rc = keys_load_public(ids[i], &pub);
        if (rc == 0) rc = roster_add(&r, &pub, ROSTER_ROLE_MEMBER, ROSTER_WEIGHT_ONE, now);
    }
    if (rc == 0) rc = roster_write(&r, &admin, path);
    if (rc == 0 && revoke) {
        rc = roster_next_version(&r, now + 10);
        if (rc == 0) rc = roster_revoke(&r, revoke, now + 10);
        if (rc == 0) rc = roster_write(&r, &admin, path);
    }
    roster_free(&r);
    keys_secret_wipe(&admin);
    return rc;
}

static void fp_of_id(const char *path, uint8_t fp[32]) {
    keys_public pub;
    memset(fp, 0, 32);
    CHECK_OK(keys_load_public(path, &pub));
    CHECK_OK(keys_fingerprint(&pub, fp));
}

/* ---- node init ----------------------------------------------------------------------- */

static char base[TS_PATH], data[TS_PATH], agg_id[TS_PATH], admin_dir[TS_PATH], rogue_dir[TS_PATH],
    node_dir[TS_PATH], node_cfg[TS_PATH], node_id[TS_PATH], other_id[TS_PATH],
    admin_text[KEYS_FP_TEXT_LEN];
static uint8_t admin_fp[32];

static void test_init_library(void) {
    node_init_options o;
    memset(&o, 0, sizeof o);
    char list[256];
    CHECK(node_init_missing(&o, list, sizeof list) == 8);
    CHECK(strstr(list, "--name") && strstr(list, "--base-model") && !strstr(list, "--device"));

    const node_init_field *f = node_init_fields;
    const node_init_field *name = NULL, *admin = NULL, *agg = NULL, *dev = NULL, *bm = NULL;
    for (int i = 0; i < NODE_INIT_FIELDS; i++) {
        if (!strcmp(f[i].flag, "name")) name = &f[i];
        if (!strcmp(f[i].flag, "admin")) admin = &f[i];
        if (!strcmp(f[i].flag, "aggregator")) agg = &f[i];
        if (!strcmp(f[i].flag, "device")) dev = &f[i];
        if (!strcmp(f[i].flag, "base-model")) bm = &f[i];
    }
    CHECK(name && admin && agg && dev && bm);
    if (!(name && admin && agg && dev && bm)) return;
    CHECK_OK(node_init_check(name, "uni-x"));
    CHECK_FAILS_WITH(node_init_check(name, "-bad"), "--name");
    CHECK_OK(node_init_check(admin, admin_text));
    CHECK_FAILS_WITH(node_init_check(admin, "12 34 zz"), "--admin");
    CHECK_FAILS_WITH(node_init_check(admin, "1234"), "--admin");
    CHECK_OK(node_init_check(agg, "tcp://agg.example.org:7000"));
    CHECK_FAILS_WITH(node_init_check(agg, "http://agg.example.org:7000"), "--aggregator");
    CHECK_FAILS_WITH(node_init_check(agg, "tcp://agg.example.org:0"), "port");
    CHECK_OK(node_init_check(dev, "cpu"));
    /* The CUDA backend module and a GPU are looked for by doctor and training. */
    CHECK_OK(node_init_check(dev, "cuda"));
    CHECK_FAILS_WITH(node_init_check(dev, "tpu"), "--device");
    CHECK_OK(node_init_check(bm, base));
    CHECK_FAILS_WITH(node_init_check(bm, root), "config.json"); /* no model there */

    /* A failure halfway (state is a file, after the keys were written)
     * leaves nothing behind. */
    char out[TS_PATH], p[TS_PATH];
    ts_in(out, root, "halfway");
    CHECK_OK(fio_mkdirs(out, 0755));
    CHECK_OK(ts_write(ts_in(p, out, "state"), "not a directory\n"));
    o = (node_init_options){.name = "uni-h",
                            .out = out,
                            .consortium = CONSORTIUM,
                            .aggregator = "tcp://127.0.0.1:9",
                            .aggregator_id = agg_id,
                            .admin = admin_text,
                            .base_model = base,
                            .data = data};
    node_init_result res;
    CHECK(node_init_create(&o, &res) != 0);
    CHECK(!fio_exists(ts_in(p, out, "keys/uni-h.sign.pem")));
    CHECK(!fio_exists(ts_in(p, out, "keys/uni-h.id")));
    CHECK(!fio_exists(ts_in(p, out, "keys")));
    CHECK(!fio_exists(ts_in(p, out, "aggregator.id")));
    CHECK(!fio_exists(ts_in(p, out, "node.cfg")));
    CHECK(fio_exists(ts_in(p, out, "state"))); /* not ours: left alone */
}

static void test_init_cli(const char *endpoint) {
    char log[TS_PATH], p[TS_PATH];
    ts_in(log, root, "init.log");
    int rc = run_fedlora(log, "node", "init", "--name", "uni-x", "--out", node_dir, "--consortium",
                         CONSORTIUM, "--aggregator", endpoint, "--aggregator-id", agg_id, "--admin",
                         admin_text, "--base-model", base, "--data", data, NULL);
    CHECK_MSG(rc == 0, "node init exited %d", rc);
    char *out = ts_read(log, NULL);
    CHECK(out != NULL);
    if (rc != 0 && out) fprintf(stderr, "%s", out);

    /* Keys like keygen's: private 0600 in a 0700 directory, the .id public. */
    CHECK(mode_of(ts_in(p, node_dir, "keys/uni-x.sign.pem")) == 0600);
    CHECK(mode_of(ts_in(p, node_dir, "keys/uni-x.kx.pem")) == 0600);
    CHECK(mode_of(ts_in(p, node_dir, "keys")) == 0700);
    CHECK(mode_of(node_id) == 0644);
    CHECK(mode_of(ts_in(p, node_dir, "state")) == 0700);
    keys_secret k;
    CHECK_OK(keys_load_secret(ts_in(p, node_dir, "keys"), "uni-x", &k));
    uint8_t fp[32];
    char fp_text[KEYS_FP_TEXT_LEN], line[KEYS_FP_TEXT_LEN + 32];
    CHECK_OK(keys_fingerprint(&k.pub, fp));
    keys_secret_wipe(&k);
    keys_fingerprint_text(fp, fp_text);
    snprintf(line, sizeof line, "\nfingerprint: %s\n", fp_text);
    CHECK_MSG(out && strstr(out, line), "the output does not print the fingerprint %s", fp_text);
    CHECK(out && strstr(out, "fedlora doctor --config") && strstr(out, "uni-x.id"));
    free(out);

    /* The aggregator's identity is copied byte for byte. */
    char *a = ts_read(agg_id, NULL), *b = ts_read(ts_in(p, node_dir, "aggregator.id"), NULL);
    CHECK(a && b && !strcmp(a, b));
    free(a);
    free(b);

    /* The config loads, with every value given. */
    node_config c;
    CHECK_OK(node_config_load(&c, node_cfg));
    CHECK(!strcmp(c.name, "uni-x") && !strcmp(c.consortium_name, CONSORTIUM));
    CHECK(!strcmp(c.endpoint, endpoint) && !strcmp(c.device, "cpu"));
    CHECK(c.has_admin && !memcmp(c.admin_fp, admin_fp, 32));
    char want[TS_PATH], *real = realpath(base, NULL);
    CHECK(real && !strcmp(c.base_model, real));
    free(real);
    CHECK(!strcmp(c.keys_dir, ts_in(want, node_dir, "keys")));
    CHECK(!strcmp(c.state_dir, ts_in(want, node_dir, "state")));
    CHECK(!strcmp(c.aggregator_id, ts_in(want, node_dir, "aggregator.id")));
    char *cfg = ts_read(node_cfg, NULL);
    CHECK(cfg && strstr(cfg, "# The consortium admin's identity fingerprint")); /* commented */
    free(cfg);
    /* The admin key: optional, and when given a whole fingerprint. */
    char variant[TS_PATH];
    ts_in(variant, node_dir, "variant.cfg");
    CHECK_OK(config_variant(node_cfg, variant, "admin = ", NULL));
    CHECK_OK(node_config_load(&c, variant));
    CHECK(!c.has_admin);
    CHECK_OK(config_variant(node_cfg, variant, "admin = \"", "admin = \"12 34\"; #"));
    CHECK_FAILS_WITH(node_config_load(&c, variant), "'admin'");
    unlink(variant);

    /* Never overwrite: a second run fails and changes nothing. */
    char *key_before = ts_read(ts_in(p, node_dir, "keys/uni-x.sign.pem"), NULL);
    char *cfg_before = ts_read(node_cfg, NULL);
    rc = run_fedlora(log, "node", "init", "--name", "uni-x", "--out", node_dir, "--consortium",
                     "another", "--aggregator", endpoint, "--aggregator-id", agg_id, "--admin",
                     admin_text, "--base-model", base, "--data", data, NULL);
    CHECK(rc == 1);
    CHECK(ts_contains(log, "already exists"));
    char *key_after = ts_read(ts_in(p, node_dir, "keys/uni-x.sign.pem"), NULL);
    char *cfg_after = ts_read(node_cfg, NULL);
    CHECK(key_before && key_after && !strcmp(key_before, key_after));
    CHECK(cfg_before && cfg_after && !strcmp(cfg_before, cfg_after));
    free(key_before);
    free(key_after);
    free(cfg_before);
    free(cfg_after);

    /* No terminal: missing flags are an error naming them; nothing is made. */
    char fresh[TS_PATH];
    ts_in(fresh, root, "fresh");
    rc = run_fedlora(log, "node", "init", "--name", "uni-y", "--out", fresh, "--consortium",
                     CONSORTIUM, "--aggregator", endpoint, "--aggregator-id", agg_id,
                     "--base-model", base, NULL);
    CHECK(rc == 2);
    CHECK(ts_contains(log, "missing --admin, --data"));
    CHECK(!fio_exists(fresh));

    /* A bad value is refused naming its flag. */
    rc = run_fedlora(log, "node", "init", "--name", "uni-y", "--out", fresh, "--consortium",
                     CONSORTIUM, "--aggregator", endpoint, "--aggregator-id", agg_id, "--admin",
                     "not a fingerprint", "--base-model", base, "--data", data, NULL);
    CHECK(rc == 1);
    CHECK(ts_contains(log, "--admin"));
    CHECK(!fio_exists(fresh));
}

/* ---- doctor ---------------------------------------------------------------------------- */

static const char *const all_checks[] = {
    "config", "keys",         "aggregator-id",  "base-model", "data",       "state", "disk",
    "gpu",    "reachability", "aggregator-key", "consortium", "membership", "clock", "roster"};
#define N_CHECKS (sizeof all_checks / sizeof all_checks[0])

static void test_doctor(fake_agg *f) {
    doctor_report r = {0};
    char roster_ok[TS_PATH], roster_rogue[TS_PATH], roster_without[TS_PATH],
        roster_revoked[TS_PATH], variant[TS_PATH], p[TS_PATH];
    const char *both[] = {other_id, node_id};
    CHECK_OK(make_roster(ts_in(roster_ok, root, "roster-ok.txt"), admin_dir, "consortium-admin",
                         both, 2, NULL));
    CHECK_OK(make_roster(ts_in(roster_rogue, root, "roster-rogue.txt"), rogue_dir, "rogue-admin",
                         both, 2, NULL));
    CHECK_OK(make_roster(ts_in(roster_without, root, "roster-without.txt"), admin_dir,
                         "consortium-admin", both, 1, NULL));
    CHECK_OK(make_roster(ts_in(roster_revoked, root, "roster-revoked.txt"), admin_dir,
                         "consortium-admin", both, 2, "uni-x"));

    /* A good setup: every check ok, nothing else. */
    CHECK_OK(fake_serve_roster(f, roster_ok));
    fake_set(f, 0, "active", CONSORTIUM);
    doctor(node_cfg, 5000, &r);
    for (size_t i = 0; i < N_CHECKS; i++) CHECK_STATUS(&r, all_checks[i], DOCTOR_OK);
    CHECK(doctor_count(&r, DOCTOR_WARN) == 0 && doctor_count(&r, DOCTOR_FAIL) == 0);
    uint8_t fp[32];
    fp_of_id(node_id, fp);
    pthread_mutex_lock(&f->lock);
    CHECK(f->statuses >= 1 && !strcmp(f->last_status.name, "uni-x"));
    CHECK(!memcmp(f->last_status.fingerprint, fp, 32)); /* STATUS names these keys */
    pthread_mutex_unlock(&f->lock);

    /* A bf16 base shipped without weights (config.json and tokenizer.json
     * only, as a node's base_model is): sized at 2 bytes a parameter, as its
     * versions are written, not fp32's 4 (it asked 3 x 29.9 GiB for an 8B
     * bf16 model whose versions are 15 GiB). */
    {
        char bare[TS_PATH], cfg_path[TS_PATH], tok[TS_PATH], from[TS_PATH], real[PATH_MAX];
        ts_in(bare, root, "base-bf16-no-weights");
        CHECK_OK(fio_mkdirs(bare, 0755));
        char *cfg_text = ts_read(ts_in(from, base, "config.json"), NULL);
        char *tok_text = ts_read(ts_in(from, base, "tokenizer.json"), NULL);
        char *at = cfg_text ? strstr(cfg_text, "\"float32\"") : NULL;
        CHECK_MSG(at != NULL, "the test base's config.json names no float32 dtype");
        if (at && tok_text && realpath(base, real)) {
            char *bf = malloc(strlen(cfg_text) + 8);
            sprintf(bf, "%.*s\"bfloat16\"%s", (int)(at - cfg_text), cfg_text,
                    at + strlen("\"float32\""));
            CHECK_OK(ts_write(ts_in(cfg_path, bare, "config.json"), bf));
            CHECK_OK(ts_write(ts_in(tok, bare, "tokenizer.json"), tok_text));
            free(bf);
            CHECK_OK(
                config_variant(node_cfg, ts_in(variant, node_dir, "bf16-base.cfg"), real, bare));
            doctor(variant, 3000, &r);
            const char *disk = found(&r, "disk", DOCTOR_OK);
            CHECK_MSG(strstr(disk, "x 2 bytes, bfloat16") != NULL,
                      "doctor sizes a bf16 base without weights as: %s", disk);
        }
        free(cfg_text);
        free(tok_text);
    }

    /* The same through the binary: exit 0, one line per finding. */
    char log[TS_PATH];
    ts_in(log, root, "doctor.log");
    int rc = run_fedlora(log, "doctor", "--config", node_cfg, "--timeout", "5", NULL);
    CHECK_MSG(rc == 0, "fedlora doctor exited %d", rc);
    CHECK(ts_contains(log, "ok    keys: ") && ts_contains(log, "ok    roster: "));
    CHECK(ts_contains(log, "0 warn, 0 FAIL"));

    /* The wrong aggregator.identity (issue 17, case 10: doctor used to pass,
     * and the node failed at its first submission): the aggregator cannot
     * prove that key, aggregator-key FAILs and nothing past it is judged. */
    char wrong_id[TS_PATH + 32];
    snprintf(wrong_id, sizeof wrong_id, "identity = \"%s\"", other_id);
    CHECK_OK(config_variant(node_cfg, ts_in(variant, node_dir, "wrong-agg.cfg"),
                            "identity = \"aggregator.id\"", wrong_id));
    doctor(variant, 3000, &r);
    CHECK_STATUS(&r, "aggregator-key", DOCTOR_FAIL);
    CHECK(strstr(found(&r, "aggregator-key", DOCTOR_FAIL), "does not hold the key") != NULL);
    CHECK(doctor_status_of(&r, "membership") == -1 && doctor_status_of(&r, "roster") == -1);
    rc = run_fedlora(log, "doctor", "--config", variant, "--timeout", "3", NULL);
    CHECK(rc == 1 && ts_contains(log, "FAIL  aggregator-key: "));

    /* A revoked member's node is not told to ask to be added again (issue
     * 17, case 10): a revoked name and key can never come back. */
    rc = run_fedlora(log, "node", "--config", node_cfg, NULL);
    CHECK_MSG(rc == 1 && ts_contains(log, "revoked: 'uni-x'") &&
                  ts_contains(log, "cannot rejoin") && !ts_contains(log, "to add"),
              "exit %d (see %s)", rc, log);

    /* A private key others can read: FAIL, saying chmod 600. */
    char sign[TS_PATH], want[TS_PATH + 16];
    ts_in(sign, node_dir, "keys/uni-x.sign.pem");
    CHECK(chmod(sign, 0644) == 0);
    doctor(node_cfg, 5000, &r);
    CHECK_STATUS(&r, "keys", DOCTOR_FAIL);
    snprintf(want, sizeof want, "chmod 600 %s", sign);
    CHECK(strstr(todo(&r, "keys", DOCTOR_FAIL), want) != NULL);
    /* Without its private key the node cannot authenticate (CURVE): said
     * once, under reachability. */
    CHECK_STATUS(&r, "reachability", DOCTOR_FAIL);
    CHECK(strstr(found(&r, "reachability", DOCTOR_FAIL), "CURVE needs this node's private keys"));
    rc = run_fedlora(log, "doctor", "--config", node_cfg, "--timeout", "5", NULL);
    CHECK(rc == 1);
    CHECK(ts_contains(log, "FAIL  keys: ") && ts_contains(log, want));
    CHECK(chmod(sign, 0600) == 0);

    /* Nothing listens: FAIL reachability, and no verdict on the rest. */
    transport *s = NULL;
    struct transport_opts to;
    transport_opts_default(&to);
    char dead[256] = "";
    CHECK(transport_router(&s, "tcp://127.0.0.1:*", &to) == 0 &&
          transport_endpoint(s, dead, sizeof dead) == 0);
    transport_close(s); /* the port is free again */
    CHECK_OK(
        config_variant(node_cfg, ts_in(variant, node_dir, "unreachable.cfg"), f->endpoint, dead));
    doctor(variant, 300, &r);
    CHECK_STATUS(&r, "reachability", DOCTOR_FAIL);
    CHECK(strstr(found(&r, "reachability", DOCTOR_FAIL), "cannot reach") != NULL);
    CHECK(strstr(todo(&r, "reachability", DOCTOR_FAIL), "firewall") != NULL);
    CHECK(doctor_status_of(&r, "clock") == -1 && doctor_status_of(&r, "roster") == -1);
    CHECK_STATUS(&r, "keys", DOCTOR_OK);

    /* A roster signed by another admin than the pinned one. */
    CHECK_OK(fake_serve_roster(f, roster_rogue));
    doctor(node_cfg, 5000, &r);
    CHECK_STATUS(&r, "roster", DOCTOR_FAIL);
    CHECK(strstr(found(&r, "roster", DOCTOR_FAIL), "your config pins") != NULL);
    CHECK(strstr(found(&r, "roster", DOCTOR_FAIL), admin_text) != NULL);
    CHECK(strstr(todo(&r, "roster", DOCTOR_FAIL), "do not change the pin") != NULL);

    /* With no admin pinned, the same roster is only a warning. */
    CHECK_OK(config_variant(node_cfg, ts_in(variant, node_dir, "unpinned.cfg"), "admin = ", NULL));
    doctor(variant, 5000, &r);
    CHECK_STATUS(&r, "roster", DOCTOR_WARN);
    CHECK(strstr(found(&r, "roster", DOCTOR_WARN), "pins no admin") != NULL);

    /* Clocks: 1000 s off fails, 60 s warns. */
    CHECK_OK(fake_serve_roster(f, roster_ok));
    fake_set(f, -1000, "active", CONSORTIUM);
    doctor(node_cfg, 5000, &r);
    CHECK_STATUS(&r, "clock", DOCTOR_FAIL);
    CHECK(strstr(todo(&r, "clock", DOCTOR_FAIL), "NTP") != NULL);
    CHECK_STATUS(&r, "roster", DOCTOR_OK);
    fake_set(f, 60, "active", CONSORTIUM);
    doctor(node_cfg, 5000, &r);
    CHECK_STATUS(&r, "clock", DOCTOR_WARN);

    /* Not on the roster. */
    CHECK_OK(fake_serve_roster(f, roster_without));
    fake_set(f, 0, "unknown", CONSORTIUM);
    doctor(node_cfg, 5000, &r);
    CHECK_STATUS(&r, "membership", DOCTOR_FAIL);
    CHECK(strstr(todo(&r, "membership", DOCTOR_FAIL), "uni-x.id") != NULL);
    CHECK_STATUS(&r, "roster", DOCTOR_FAIL);
    CHECK(strstr(found(&r, "roster", DOCTOR_FAIL), "does not list") != NULL);

    /* Revoked. */
    CHECK_OK(fake_serve_roster(f, roster_revoked));
    fake_set(f, 0, "revoked", CONSORTIUM);
    doctor(node_cfg, 5000, &r);
    CHECK_STATUS(&r, "membership", DOCTOR_FAIL);
    CHECK_STATUS(&r, "roster", DOCTOR_FAIL);
    CHECK(strstr(found(&r, "roster", DOCTOR_FAIL), "revoked") != NULL);

    /* Another consortium behind that endpoint. */
    CHECK_OK(fake_serve_roster(f, roster_ok));
    fake_set(f, 0, "active", "another-consortium");
    doctor(node_cfg, 5000, &r);
    CHECK_STATUS(&r, "consortium", DOCTOR_FAIL);

    /* No roster served: a warning. */
    CHECK_OK(fake_serve_roster(f, NULL));
    fake_set(f, 0, "active", CONSORTIUM);
    doctor(node_cfg, 5000, &r);
    CHECK_STATUS(&r, "roster", DOCTOR_WARN);
    CHECK(doctor_count(&r, DOCTOR_FAIL) == 0);

    /* A config that does not load: one finding, nothing else checked. */
    doctor(ts_in(p, root, "no-such.cfg"), 300, &r);
    CHECK(r.n == 1);
    CHECK_STATUS(&r, "config", DOCTOR_FAIL);
    doctor_report_free(&r);
}

/* ---- against a real aggregator ------------------------------------------------------- */

static ft_fed fed;

static void test_real_aggregator(void) {
    ft_options fo;
    ft_options_init(&fo);
    fo.rounds = 1;
    fo.quorum = 1;
    CHECK_OK(ft_setup(&fed, "doctor", 2, &fo));
    char log[TS_PATH], adm[TS_PATH], roster[TS_PATH], id[TS_PATH], fp_hex[65];
    char fp_text[KEYS_FP_TEXT_LEN], dir[TS_PATH], cfg[TS_PATH], text[8192];
    ts_in(log, fed.root, "cli.log");
    ts_in(roster, fed.root, "roster.txt");
    ts_in(adm, fed.keys, "admin");
    uint8_t fp[32];
    CHECK_OK(harness_keys(fed.keys, "admin"));
    fp_of_id(ts_in(id, fed.keys, "admin.id"), fp);
    hex_encode(fp, 32, fp_hex);
    keys_fingerprint_text(fp, fp_text);
    snprintf(text, sizeof text, "%s.id", fed.node[0].name);
    CHECK(run_fedlora(log, "roster", "init", "--admin", adm, "--consortium", "fed-test", "--out",
                      roster, NULL) == 0);
    CHECK(run_fedlora(log, "roster", "add", "--roster", roster, "--admin", adm, "--member",
                      ts_in(id, fed.keys, text), NULL) == 0);

    /* The aggregator reads the roster instead of a member list. */
    char *agg_cfg = ts_read(fed.agg_config, NULL);
    char *members = agg_cfg ? strstr(agg_cfg, "members = [") : NULL;
    char *end = members ? strstr(members, "];\n") : NULL;
    CHECK(members && end);
    if (!members || !end) {
        free(agg_cfg);
        ft_teardown(&fed);
        return;
    }
    *members = '\0';
    snprintf(text, sizeof text, "%sroster = { file = \"../roster.txt\"; admin = \"%s\"; };\n%s",
             agg_cfg, fp_hex, end + 3);
    free(agg_cfg);
    CHECK_OK(ts_write(fed.agg_config, text));
    CHECK_OK(ft_start_aggregator(&fed));

    /* The new university: node init, then doctor. */
    ts_in(dir, fed.root, "uni-new");
    ts_in(cfg, dir, "node.cfg");
    CHECK(run_fedlora(log, "node", "init", "--name", "uni-new", "--out", dir, "--consortium",
                      "fed-test", "--aggregator", fed.endpoint, "--aggregator-id",
                      ts_in(id, fed.keys, "aggregator.id"), "--admin", fp_text, "--base-model",
                      fed.base, "--data", data, NULL) == 0);
    doctor_report r = {0};
    doctor(cfg, 5000, &r);
    CHECK_STATUS(&r, "reachability", DOCTOR_OK);
    /* Not on the roster yet: with CURVE the aggregator proves its key and
     * refuses ours at the handshake, so nothing past it can be asked. */
    CHECK_STATUS(&r, "aggregator-key", DOCTOR_OK);
    CHECK_STATUS(&r, "membership", DOCTOR_FAIL);
    CHECK(strstr(found(&r, "membership", DOCTOR_FAIL), "refuses uni-new's key") != NULL);
    CHECK(strstr(todo(&r, "membership", DOCTOR_FAIL), "uni-new.id") != NULL);
    CHECK(doctor_count(&r, DOCTOR_FAIL) == 1);

    /* The admin adds it; the running aggregator takes the new version. */
    CHECK(run_fedlora(log, "roster", "add", "--roster", roster, "--admin", adm, "--member",
                      ts_in(id, dir, "keys/uni-new.id"), NULL) == 0);
    int added = 0;
    for (double t0 = harness_now(); !added && harness_now() - t0 < 60; harness_sleep_ms(50))
        added = ts_contains(fed.agg_log, "added uni-new");
    CHECK_MSG(added, "the aggregator did not take roster version 3 (%s)", fed.agg_log);
    doctor(cfg, 5000, &r);
    for (size_t i = 0; i < N_CHECKS; i++) CHECK_STATUS(&r, all_checks[i], DOCTOR_OK);
    CHECK(doctor_count(&r, DOCTOR_WARN) == 0 && doctor_count(&r, DOCTOR_FAIL) == 0);
    CHECK(strstr(found(&r, "roster", DOCTOR_OK), "version 3") != NULL);
    int rc = run_fedlora(log, "doctor", "--config", cfg, NULL);
    CHECK_MSG(rc == 0, "fedlora doctor exited %d (%s)", rc, log);
    doctor_report_free(&r);
    ft_teardown(&fed);
}

int main(void) {
    umask(022); /* the modes asserted below are what keygen and init ask for */
    root = ts_dir();
    char aggkeys[TS_PATH], others[TS_PATH];
    CHECK_OK(ts_model_dir(ts_in(base, root, "base"), "llama", 0.1, 1, NULL));
    CHECK_OK(ts_write(ts_in(data, root, "data.txt"), "one line of local text\nanother\n"));
    CHECK_OK(harness_keys(ts_in(aggkeys, root, "aggregator-keys"), "aggregator"));
    ts_in(agg_id, aggkeys, "aggregator.id");
    CHECK_OK(harness_keys(ts_in(admin_dir, root, "admin"), "consortium-admin"));
    CHECK_OK(harness_keys(ts_in(rogue_dir, root, "rogue"), "rogue-admin"));
    CHECK_OK(harness_keys(ts_in(others, root, "others"), "uni-other"));
    ts_in(other_id, others, "uni-other.id");
    char p[TS_PATH];
    fp_of_id(ts_in(p, admin_dir, "consortium-admin.id"), admin_fp);
    keys_fingerprint_text(admin_fp, admin_text);
    ts_in(node_dir, root, "uni-x");
    ts_in(node_cfg, node_dir, "node.cfg");
    ts_in(node_id, node_dir, "keys/uni-x.id");

    fake_agg f;
    CHECK_OK(fake_start(&f, aggkeys));
    test_init_library();
    test_init_cli(f.endpoint);
    if (fio_exists(node_cfg)) test_doctor(&f);
    fake_stop(&f);
    test_real_aggregator();

    return check_finish();
}
