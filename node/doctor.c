/* doctor: a node's setup, checked (node/doctor.h lists the checks). */
#include "node/doctor.h"

#include "gpu/gpu_load.h"
#include "model/config.h"
#include "node/node.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/client.h"
#include "wire/crypto.h"
#include "wire/keys.h"
#include "wire/msg.h"
#include "wire/roster.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* Clock skew limits, seconds: round deadlines are unix seconds, so a node
 * minutes off would miss them or think it has time it does not. */
#define SKEW_WARN_S 30
#define SKEW_FAIL_S 300
/* The node holds the current version, a download in progress and the
 * trainer's checkpoints: about three copies of the model. */
#define DISK_FACTOR 3

struct doc {
    const doctor_options *o;
    doctor_report *r;
    int oom;
    node_config c;
    keys_paths keys; /* this node's key files (set by check_keys before have_fp) */
    int have_fp;     /* fp is this node's identity (from its keys, or at least its .id) */
    uint8_t fp[KEYS_FP_LEN];
    int have_secret; /* me holds this node's keys (CURVE needs them) */
    keys_secret me;
    int have_agg; /* agg is the aggregator's identity (aggregator.identity) */
    keys_public agg;
    long long params;              /* the base model's parameter count, 0: unknown */
    int param_bytes;               /* bytes of one parameter in its torch_dtype */
    char dtype[16];                /* config.json's torch_dtype */
    char disk_path[NODE_PATH_MAX]; /* where the state lives (or its nearest existing parent) */
    client *cl;                    /* to the aggregator */
};

/* ---- the report ------------------------------------------------------------ */

static void note(struct doc *d, doctor_status s, const char *check, const char *todo,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void note(struct doc *d, doctor_status s, const char *check, const char *todo,
                 const char *fmt, ...) {
    doctor_report *r = d->r;
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        doctor_finding *v = realloc(r->v, cap * sizeof *v);
        if (!v) {
            d->oom = 1;
            return;
        }
        r->v = v;
        r->cap = cap;
    }
    doctor_finding *f = &r->v[r->n++];
    f->status = s;
    snprintf(f->check, sizeof f->check, "%s", check);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->found, sizeof f->found, fmt, ap);
    va_end(ap);
    snprintf(f->todo, sizeof f->todo, "%s", todo ? todo : "");
    if (d->o->on_finding) d->o->on_finding(f, d->o->arg);
}

void doctor_report_free(doctor_report *r) {
    free(r->v);
    memset(r, 0, sizeof *r);
}

int doctor_status_of(const doctor_report *r, const char *check) {
    int worst = -1;
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->v[i].check, check) && (int)r->v[i].status > worst)
            worst = (int)r->v[i].status;
    return worst;
}

size_t doctor_count(const doctor_report *r, doctor_status s) {
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++) n += r->v[i].status == s;
    return n;
}

const char *doctor_status_name(doctor_status s) {
    return s == DOCTOR_OK ? "ok" : s == DOCTOR_WARN ? "warn" : "FAIL";
}

void doctor_format(const doctor_finding *f, char *buf, size_t n) {
    snprintf(buf, n, "%-4s  %s: %s%s%s", doctor_status_name(f->status), f->check, f->found,
             f->todo[0] ? " \xe2\x80\x94 " : "", f->todo); /* U+2014 em dash */
}

/* A "what to do" text with values in it (cut at DOCTOR_TEXT_MAX bytes). */
static const char *text_fmt(char out[DOCTOR_TEXT_MAX], const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const char *text_fmt(char out[DOCTOR_TEXT_MAX], const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, DOCTOR_TEXT_MAX, fmt, ap);
    va_end(ap);
    return out;
}

static void fmt_bytes(double b, char out[32]) {
    if (b >= 1024.0 * 1024 * 1024)
        snprintf(out, 32, "%.1f GiB", b / (1024.0 * 1024 * 1024));
    else if (b >= 1024.0 * 1024)
        snprintf(out, 32, "%.1f MiB", b / (1024.0 * 1024));
    else if (b >= 1024.0)
        snprintf(out, 32, "%.1f KiB", b / 1024.0);
    else
        snprintf(out, 32, "%.0f bytes", b);
}

/* ---- local checks ------------------------------------------------------------ */

static int check_config(struct doc *d) {
    if (node_config_load(&d->c, d->o->config) != 0) {
        note(d, DOCTOR_FAIL, "config",
             "fix it (docs/federation.md lists every key), or make a new node directory with "
             "`fedlora node init`",
             "%s", err_msg());
        return -1;
    }
    note(d, DOCTOR_OK, "config", NULL, "%s loads: node %s, consortium '%s', aggregator %s",
         d->o->config, d->c.name, d->c.consortium_name, d->c.endpoint);
    return 0;
}

/* One private key file: 0 when it is fine, else a FAIL finding. */
static int check_key_file(struct doc *d, const char *path) {
    struct stat st;
    char todo[DOCTOR_TEXT_MAX];
    if (stat(path, &st) != 0) {
        int e = errno;
        note(d, DOCTOR_FAIL, "keys",
             "keys.dir and keys.name in the config must name the files `fedlora node init` (or "
             "`fedlora keygen`) made",
             "cannot open %s: %s", path, strerror(e));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        note(d, DOCTOR_FAIL, "keys", "point keys.dir at the directory holding the key files",
             "%s is not a regular file", path);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        note(d, DOCTOR_FAIL, "keys",
             "run the node as the user that owns its keys, or chown the key files to it",
             "%s belongs to uid %u, not to this user (uid %u)", path, (unsigned)st.st_uid,
             (unsigned)geteuid());
        return -1;
    }
    if (st.st_mode & 077) {
        text_fmt(todo,
                 "chmod 600 %s (if someone else may have copied it meanwhile, make new keys and "
                 "ask the admin to rotate them)",
                 path);
        note(d, DOCTOR_FAIL, "keys", todo, "%s has mode %04o: other users can read the private key",
             path, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

static void check_keys(struct doc *d) {
    if (keys_paths_of(&d->keys, d->c.keys_dir, d->c.name) != 0) {
        note(d, DOCTOR_FAIL, "keys", "use a shorter keys.dir", "%s", err_msg());
        return;
    }
    int files_ok = check_key_file(d, d->keys.sign) == 0;
    files_ok &= check_key_file(d, d->keys.kx) == 0;
    if (files_ok) {
        keys_secret k;
        if (keys_load_secret(d->c.keys_dir, d->c.name, &k) != 0) {
            note(d, DOCTOR_FAIL, "keys",
                 "the .id must be the one made together with these private keys: restore the "
                 "matching files (or make new keys and send the new .id to the admin)",
                 "%s", err_msg());
        } else {
            d->have_fp = keys_fingerprint(&k.pub, d->fp) == 0;
            d->me = k;
            d->have_secret = 1;
            keys_secret_wipe(&k);
        }
    }
    if (!d->have_fp) {
        /* The .id alone still tells the aggregator checks who we are. */
        keys_public pub;
        d->have_fp = keys_load_public(d->keys.id, &pub) == 0 && keys_fingerprint(&pub, d->fp) == 0;
        return;
    }
    char fp[KEYS_FP_TEXT_LEN];
    keys_fingerprint_text(d->fp, fp);
    note(d, DOCTOR_OK, "keys", NULL,
         "%s: private keys readable only by you, %s.id matches them; fingerprint %s", d->c.keys_dir,
         d->c.name, fp);
}

static void check_aggregator_id(struct doc *d) {
    keys_public pub;
    uint8_t fp[KEYS_FP_LEN];
    char text[KEYS_FP_TEXT_LEN];
    if (keys_load_public(d->c.aggregator_id, &pub) != 0 || keys_fingerprint(&pub, fp) != 0) {
        note(d, DOCTOR_FAIL, "aggregator-id",
             "get the aggregator's .id file from the consortium and set aggregator.identity to it",
             "%s", err_msg());
        return;
    }
    d->agg = pub;
    d->have_agg = 1;
    keys_fingerprint_text(fp, text);
    note(d, DOCTOR_OK, "aggregator-id",
         "compare this fingerprint with the consortium's operator by phone or video call",
         "%s: '%s', fingerprint %s", d->c.aggregator_id, pub.name, text);
}

static void check_base_model(struct doc *d) {
    char p[NODE_PATH_MAX];
    model_config mc;
    if (fio_join(p, sizeof p, d->c.base_model, "config.json") != 0 ||
        model_config_load(&mc, p) != 0) {
        note(d, DOCTOR_FAIL, "base-model",
             "base_model must be the federation's base model directory (config.json, "
             "tokenizer.json), as the consortium distributes it",
             "%s", err_msg());
        return;
    }
    d->params = model_config_num_params(&mc);
    /* A version is written in the base's dtype (docs/formats.md), so a bf16
     * base takes 2 bytes a parameter on disk, not fp32's 4. */
    snprintf(d->dtype, sizeof d->dtype, "%s", mc.torch_dtype);
    d->param_bytes =
        !strcmp(mc.torch_dtype, "bfloat16") || !strcmp(mc.torch_dtype, "float16") ? 2 : 4;
    if (fio_join(p, sizeof p, d->c.base_model, "tokenizer.json") != 0 || !fio_exists(p)) {
        note(d, DOCTOR_FAIL, "base-model",
             "copy the federation's tokenizer.json into the base model directory",
             "%s has no tokenizer.json (the node tokenizes its data with it)", d->c.base_model);
        return;
    }
    note(d, DOCTOR_OK, "base-model", NULL, "%s: %lld parameters, tokenizer.json present",
         d->c.base_model, d->params);
}

static void check_data(struct doc *d) {
    struct stat st;
    const char *p = d->c.data;
    const char *todo = "point data at the local training file (text or JSON Lines)";
    if (stat(p, &st) != 0) {
        int e = errno;
        note(d, DOCTOR_FAIL, "data", todo, "cannot open %s: %s", p, strerror(e));
    } else if (!S_ISREG(st.st_mode)) {
        note(d, DOCTOR_FAIL, "data", todo, "%s is not a regular file", p);
    } else if (access(p, R_OK) != 0) {
        note(d, DOCTOR_FAIL, "data", "give the node's user read access to it",
             "%s is not readable by this user", p);
    } else if (st.st_size == 0) {
        note(d, DOCTOR_FAIL, "data", todo, "%s is empty", p);
    } else {
        char size[32];
        fmt_bytes((double)st.st_size, size);
        note(d, DOCTOR_OK, "data", NULL, "%s: %s", p, size);
    }
}

/* Can we create a file in dir? Tried for real (a read-only mount or an ACL
 * is what access() may not tell), then removed. */
static int probe_write(const char *dir) {
    char p[NODE_PATH_MAX], name[64];
    snprintf(name, sizeof name, ".doctor-probe-%ld", (long)getpid());
    if (fio_join(p, sizeof p, dir, name) != 0) return -1;
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return err_errno("cannot create a file in %s", dir);
    close(fd);
    if (unlink(p) != 0) return err_errno("cannot remove %s", p);
    return 0;
}

static void check_state(struct doc *d) {
    const char *s = d->c.state_dir;
    const char *todo = "point state at a directory the node's user can write, on a disk that "
                       "survives a reboot";
    struct stat st;
    snprintf(d->disk_path, sizeof d->disk_path, "%s", s);
    if (stat(s, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            note(d, DOCTOR_FAIL, "state", todo, "%s is not a directory", s);
            d->disk_path[0] = '\0';
        } else if (probe_write(s) != 0) {
            note(d, DOCTOR_FAIL, "state", todo, "%s", err_msg());
        } else {
            note(d, DOCTOR_OK, "state", NULL, "%s is writable", s);
        }
        return;
    }
    /* Not there yet: the node makes it (mkdir -p) under its nearest
     * existing parent, which must be writable. */
    char *slash;
    while ((slash = strrchr(d->disk_path, '/')) != NULL) {
        if (slash == d->disk_path)
            slash[1] = '\0';
        else
            *slash = '\0';
        if (stat(d->disk_path, &st) == 0) break;
        if (slash == d->disk_path) break;
    }
    if (!slash) snprintf(d->disk_path, sizeof d->disk_path, ".");
    if (stat(d->disk_path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        note(d, DOCTOR_FAIL, "state", todo, "%s does not exist, and neither does a parent", s);
        d->disk_path[0] = '\0';
    } else if (probe_write(d->disk_path) != 0) {
        note(d, DOCTOR_FAIL, "state", todo, "%s does not exist and cannot be made: %s", s,
             err_msg());
    } else {
        note(d, DOCTOR_OK, "state", NULL, "%s does not exist yet; the node will make it in %s", s,
             d->disk_path);
    }
}

/* The base model's size: its *.safetensors files when there are any, else
 * the parameter count × the bytes of its torch_dtype (how says which, in
 * how[how_len]). 0 when neither is known. */
static double model_bytes(struct doc *d, char *how, size_t how_len) {
    DIR *dir = opendir(d->c.base_model);
    double sum = 0;
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            size_t n = strlen(e->d_name);
            char p[NODE_PATH_MAX];
            struct stat st;
            if (n > 12 && !strcmp(e->d_name + n - 12, ".safetensors") &&
                fio_join(p, sizeof p, d->c.base_model, e->d_name) == 0 && stat(p, &st) == 0 &&
                S_ISREG(st.st_mode))
                sum += (double)st.st_size;
        }
        closedir(dir);
    }
    if (sum > 0) {
        snprintf(how, how_len, "its safetensors files");
        return sum;
    }
    snprintf(how, how_len, "its parameter count x %d bytes, %s", d->param_bytes, d->dtype);
    return (double)d->params * d->param_bytes;
}

static void check_disk(struct doc *d) {
    if (!d->disk_path[0]) return; /* the state check said why */
    struct statvfs vfs;
    if (statvfs(d->disk_path, &vfs) != 0) {
        int e = errno;
        note(d, DOCTOR_WARN, "disk", NULL, "cannot tell the free space of %s: %s", d->disk_path,
             strerror(e));
        return;
    }
    double free_b = (double)vfs.f_bavail * (double)vfs.f_frsize;
    char how[64];
    double model = model_bytes(d, how, sizeof how);
    char f[32], m[32], need[32];
    fmt_bytes(free_b, f);
    if (model <= 0) {
        note(d, DOCTOR_WARN, "disk", "make base_model the federation's base model directory",
             "%s free in %s; the base model's size is unknown (no config.json or safetensors "
             "in %s)",
             f, d->disk_path, d->c.base_model);
        return;
    }
    fmt_bytes(model, m);
    fmt_bytes(DISK_FACTOR * model, need);
    if (free_b < DISK_FACTOR * model)
        note(d, DOCTOR_WARN, "disk",
             "free space there or move state to a larger disk: the node keeps the current "
             "version, a download in progress and training checkpoints",
             "%s free in %s, less than %d x the base model's %s (%s) = %s", f, d->disk_path,
             DISK_FACTOR, m, how, need);
    else
        note(d, DOCTOR_OK, "disk", NULL, "%s free in %s, at least %d x the base model's %s (%s)", f,
             d->disk_path, DISK_FACTOR, m, how);
}

/* device "cuda" needs the CUDA backend module (gpu/gpu_load.h: loading it
 * here is the check) and a GPU the runtime sees; with device "cpu", a GPU
 * that sits unused is worth a hint. (node_config_check_device decides which
 * devices a config may name.) */
static void check_gpu(struct doc *d) {
    int cuda = !strcmp(d->c.device, "cuda");
    const gpu_api *gpu = gpu_load_api();
    if (!gpu) {
        /* The loader's message without its advice, which is for the CLI. */
        const char *msg = err_msg(), *dash = strstr(msg, " — ");
        if (cuda)
            note(d, DOCTOR_FAIL, "gpu",
                 "the module is built with fedlora under -DFEDLORA_CUDA=on and needs the CUDA "
                 "libraries (docs/gpu.md); or set device = \"cpu\"",
                 "device cuda, but %.*s", dash ? (int)(dash - msg) : (int)strlen(msg), msg);
        else
            note(d, DOCTOR_OK, "gpu", NULL, "device cpu (no CUDA backend module here)");
        return;
    }
    int n = gpu->available();
    char name[128] = "GPU 0";
    double gib = 0;
    int major = 0, minor = 0;
    if (n == 0) {
        char why[256];
        gpu->why_unavailable(why, sizeof why);
        if (cuda)
            note(d, DOCTOR_FAIL, "gpu",
                 "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or set device "
                 "= \"cpu\"",
                 "device cuda, but the CUDA runtime sees no GPU here (%s)", why);
        else
            note(d, DOCTOR_OK, "gpu", NULL, "device cpu; no GPU here");
        return;
    }
    if (gpu->device_info(0, name, sizeof name, &gib, &major, &minor) != 0)
        snprintf(name, sizeof name, "GPU 0 (%.100s)", err_msg());
    note(d, DOCTOR_OK, "gpu",
         cuda ? NULL : "the node trains on the CPU as configured (device = \"cpu\")",
         "device %s; %d GPU%s here (0: %s, %.0f GiB, compute capability %d.%d; backend %s)",
         d->c.device, n, n == 1 ? "" : "s", name, gib, major, minor, gpu_load_path());
}

/* ---- the aggregator ----------------------------------------------------------- */

/* The same client as the node's (wire/client.h), but one attempt with the
 * doctor's timeout: a check must answer, not wait out an outage. */
static int connect_aggregator(struct doc *d) {
    client_options o;
    client_options_default(&o);
    o.timeout_ms = d->o->timeout_ms;
    o.give_up_s = 0;
    o.linger_ms = 0;
    if (d->c.curve) {
        /* CURVE: the aggregator must prove it holds aggregator.identity's
         * key, and takes only a roster member's (docs/threat-model.md). */
        if (!d->have_secret || !d->have_agg)
            return err_set("CURVE needs this node's private keys and the aggregator's .id, and %s "
                           "did not load (see above)",
                           !d->have_secret ? "the keys" : "aggregator.identity");
        o.curve_me = &d->me;
        o.curve_server = d->agg.kx_pub;
    }
    return client_open(&d->cl, d->c.endpoint, &o);
}

/* The aggregator's key, from the CURVE handshake or (in the clear) from
 * what STATUS_INFO says; a FAIL when it is not aggregator.identity's. */
static void check_aggregator_key(struct doc *d, const struct msg_status_info *info) {
    if (!d->have_agg) return; /* aggregator-id said why */
    char want[KEYS_FP_TEXT_LEN], got[KEYS_FP_TEXT_LEN];
    uint8_t fp[KEYS_FP_LEN];
    keys_fingerprint(&d->agg, fp);
    keys_fingerprint_text(fp, want);
    if (d->c.curve) {
        note(d, DOCTOR_OK, "aggregator-key", NULL,
             "the aggregator proved it holds the key of %s (CURVE)", d->c.aggregator_id);
        return;
    }
    if (info && info->has_aggregator && memcmp(info->aggregator, fp, KEYS_FP_LEN) != 0) {
        keys_fingerprint_text(info->aggregator, got);
        note(d, DOCTOR_FAIL, "aggregator-key",
             "get the aggregator's .id from its operator and compare the fingerprint by phone: "
             "deltas sealed to the wrong key are refused at submission",
             "the aggregator at %s runs as identity %s, aggregator.identity is %s", d->c.endpoint,
             got, want);
        return;
    }
    note(d, DOCTOR_WARN, "aggregator-key",
         "run the consortium with CURVE (aggregator.curve = true, the default) so that the "
         "aggregator proves its key",
         info && info->has_aggregator
             ? "aggregator.curve = false: the aggregator says it is %s, but nothing proves it"
             : "aggregator.curve = false: nothing proves the aggregator holds %s",
         want);
}

static void disconnect_aggregator(struct doc *d) {
    client_close(d->cl);
    d->cl = NULL;
}

typedef struct {
    char *buf;
    uint64_t have, size;
} roster_sink;

static int to_buffer(void *arg, const uint8_t *data, size_t len) {
    roster_sink *r = arg;
    if (len > r->size - r->have)
        return err_set("the roster's chunks run past its announced %llu bytes",
                       (unsigned long long)r->size);
    memcpy(r->buf + r->have, data, len);
    r->have += len;
    return 0;
}

/* Fetches the roster object (GET_MODEL by its hash, the node's chunked
 * download) into a malloc'd, NUL-terminated buffer of exactly `size` bytes
 * whose SHA-256 is `hash`. */
static int fetch_object(struct doc *d, const uint8_t hash[MSG_HASH_LEN], uint64_t size,
                        char **out) {
    if (size == 0 || size > ROSTER_FILE_MAX)
        return err_set("the aggregator announces a roster of %llu bytes; a roster has 1 to %u",
                       (unsigned long long)size, (unsigned)ROSTER_FILE_MAX);
    roster_sink r = {malloc((size_t)size + 1), 0, size};
    if (!r.buf) return err_set("out of memory for a %llu-byte roster", (unsigned long long)size);
    if (client_download(d->cl, hash, 0, size, ROSTER_FILE_MAX, to_buffer, &r, NULL) != CLIENT_OK) {
        free(r.buf);
        return err_context("fetching the roster");
    }
    r.buf[size] = '\0';
    uint8_t got[CRYPTO_SHA256_LEN];
    if (crypto_sha256(r.buf, (size_t)size, got) != 0) {
        free(r.buf);
        return -1;
    }
    if (memcmp(got, hash, CRYPTO_SHA256_LEN) != 0) {
        free(r.buf);
        return err_set("the roster's bytes do not hash to the roster_hash the aggregator "
                       "announced (damaged or swapped on the way)");
    }
    *out = r.buf;
    return 0;
}

static void check_roster(struct doc *d, const struct msg_status_info *info) {
    char todo[DOCTOR_TEXT_MAX];
    if (!info->has_roster) {
        note(d, DOCTOR_WARN, "roster",
             "ask the aggregator's operator to run it with the consortium's signed roster",
             "the aggregator serves no roster: who is a member cannot be checked against the "
             "admin's signature");
        return;
    }
    char *text = NULL;
    if (fetch_object(d, info->roster_hash, info->roster_size, &text) != 0) {
        note(d, DOCTOR_FAIL, "roster", "tell the aggregator's operator; run doctor again later",
             "%s", err_msg());
        return;
    }
    roster r;
    memset(&r, 0, sizeof r);
    if (roster_parse(text, (size_t)info->roster_size, &r, "the aggregator's roster") != 0) {
        free(text);
        note(d, DOCTOR_FAIL, "roster", "tell the aggregator's operator and the consortium admin",
             "%s", err_msg());
        return;
    }
    free(text);
    char have[KEYS_FP_TEXT_LEN], pinned[KEYS_FP_TEXT_LEN];
    keys_fingerprint_text(r.admin_fp, have);
    if (d->c.has_admin && memcmp(r.admin_fp, d->c.admin_fp, KEYS_FP_LEN) != 0) {
        keys_fingerprint_text(d->c.admin_fp, pinned);
        note(d, DOCTOR_FAIL, "roster",
             "compare the fingerprint with your consortium admin out of band (phone, video "
             "call); do not change the pin on the aggregator's word",
             "the roster the aggregator serves is signed by admin %s, your config pins %s", have,
             pinned);
        goto done;
    }
    /* Without a pin the signature can only be checked against the key the
     * file itself names: that proves nothing about who signed it. */
    if (roster_verify(&r, d->c.has_admin ? d->c.admin_fp : r.admin_fp, 0) != 0) {
        note(d, DOCTOR_FAIL, "roster",
             "tell the consortium admin and the aggregator's operator: this roster was changed "
             "after it was signed",
             "%s", err_msg());
        goto done;
    }
    if (strcmp(r.consortium, d->c.consortium_name) != 0) {
        note(d, DOCTOR_FAIL, "roster", "tell the consortium admin and the aggregator's operator",
             "the roster is consortium '%s', the config's is '%s'", r.consortium,
             d->c.consortium_name);
        goto done;
    }
    if (r.version != info->roster_version)
        note(d, DOCTOR_WARN, "roster", "run doctor again; if it stays, tell the operator",
             "STATUS announced roster version %llu, the file served is version %llu",
             (unsigned long long)info->roster_version, (unsigned long long)r.version);
    if (!d->c.has_admin) {
        text_fmt(todo,
                 "ask the consortium admin for their fingerprint by phone or video call and add "
                 "admin = \"...\" to %s",
                 d->o->config);
        note(d, DOCTOR_WARN, "roster", todo,
             "the config pins no admin: nothing checks who signed roster version %llu (it names "
             "admin '%s', %s)",
             (unsigned long long)r.version, r.admin.name, have);
    }
    if (!d->have_fp) goto done; /* the keys check said why */
    const roster_member *m = roster_find_member(&r, d->fp);
    char date[21];
    if (!m) {
        text_fmt(todo,
                 "send %s to the consortium admin and compare the fingerprint by phone or "
                 "video call",
                 d->keys.id);
        note(d, DOCTOR_FAIL, "roster", todo,
             "roster version %llu (%u members) does not list this node's keys",
             (unsigned long long)r.version, r.n_members);
    } else if (!m->active) {
        roster_date_format(m->revoked, date);
        note(d, DOCTOR_FAIL, "roster", "ask the consortium admin",
             "roster version %llu lists these keys as '%s', revoked on %s",
             (unsigned long long)r.version, m->name, date);
    } else {
        if (strcmp(m->name, d->c.name) != 0)
            note(d, DOCTOR_WARN, "roster",
                 "set keys.name to the roster's name, or ask the admin which is right",
                 "the roster calls these keys '%s', the config's keys.name is '%s'", m->name,
                 d->c.name);
        note(d, DOCTOR_OK, "roster", NULL,
             "version %llu, %u members, signed by %s admin '%s'; this node is active member '%s'",
             (unsigned long long)r.version, r.n_members, d->c.has_admin ? "the pinned" : "the",
             r.admin.name, m->name);
    }
done:
    roster_free(&r);
}

static void check_aggregator(struct doc *d) {
    double secs = d->o->timeout_ms / 1000.0;
    const char *unreachable = "is the aggregator running, is the port open (firewall), is the "
                              "address right (aggregator.endpoint)?";
    if (connect_aggregator(d) != 0) {
        note(d, DOCTOR_FAIL, "reachability", unreachable, "cannot connect to %s: %s", d->c.endpoint,
             err_msg());
        disconnect_aggregator(d);
        return;
    }
    struct msg req = {.type = MSG_STATUS}, rep;
    snprintf(req.status.name, sizeof req.status.name, "%s", d->c.name);
    if (d->have_fp) memcpy(req.status.fingerprint, d->fp, MSG_HASH_LEN);
    int rc = client_call(d->cl, &req, &rep);
    if (rc == CLIENT_DENIED && client_denial(d->cl) == CLIENT_KEY_REFUSED) {
        /* It answered the handshake as the holder of aggregator.identity's
         * key, and refused ours: reachable, the right aggregator, not (or
         * no longer) a member. */
        char fp[KEYS_FP_TEXT_LEN], todo[DOCTOR_TEXT_MAX];
        keys_fingerprint_text(d->fp, fp);
        note(d, DOCTOR_OK, "reachability", NULL, "%s answers the CURVE handshake", d->c.endpoint);
        check_aggregator_key(d, NULL);
        text_fmt(todo,
                 "not added yet: send %s to the consortium admin and compare the fingerprint by "
                 "phone or video call; revoked or rotated: ask the consortium admin",
                 d->keys.id);
        note(d, DOCTOR_FAIL, "membership", todo,
             "the aggregator refuses %s's key (fingerprint %s): its roster does not list it as an "
             "active member or observer, so consortium, clock and roster cannot be checked yet",
             d->c.name, fp);
        disconnect_aggregator(d);
        return;
    }
    if (rc == CLIENT_DENIED) {
        note(d, DOCTOR_FAIL, "aggregator-key",
             "check aggregator.identity with the consortium's operator (compare the fingerprint "
             "by phone), and that both sides set curve the same",
             "%s", err_msg());
        disconnect_aggregator(d);
        return;
    }
    if (rc != CLIENT_OK) {
        if (rc == CLIENT_GARBLED)
            note(d, DOCTOR_FAIL, "reachability", "is aggregator.endpoint really the aggregator?",
                 "%s", err_msg());
        else
            note(d, DOCTOR_FAIL, "reachability", unreachable, "cannot reach %s within %g s (%s)",
                 d->c.endpoint, secs, err_msg());
        disconnect_aggregator(d);
        return;
    }
    int64_t now = (int64_t)time(NULL);
    if (rep.type != MSG_STATUS_INFO) {
        if (rep.type == MSG_ERROR)
            note(d, DOCTOR_FAIL, "reachability",
                 "an aggregator older than this fedlora does not answer STATUS: ask its operator "
                 "to update it",
                 "%s answers STATUS with ERROR: %s", d->c.endpoint, rep.error.reason);
        else
            note(d, DOCTOR_FAIL, "reachability", "is aggregator.endpoint really the aggregator?",
                 "%s answers STATUS with %s", d->c.endpoint, msg_type_name(rep.type));
        disconnect_aggregator(d);
        return;
    }
    struct msg_status_info info = rep.status_info; /* no blobs: safe past the next call */
    note(d, DOCTOR_OK, "reachability", NULL, "%s answers: round %llu, state %s", d->c.endpoint,
         (unsigned long long)info.round, info.state);
    check_aggregator_key(d, &info);

    if (strcmp(info.consortium, d->c.consortium_name) != 0)
        note(d, DOCTOR_FAIL, "consortium",
             "check 'consortium' in the config and aggregator.endpoint with the consortium",
             "the aggregator at %s runs consortium '%s', the config says '%s'", d->c.endpoint,
             info.consortium, d->c.consortium_name);
    else
        note(d, DOCTOR_OK, "consortium", NULL, "'%s'", info.consortium);

    if (d->have_fp) {
        char fp[KEYS_FP_TEXT_LEN], todo[DOCTOR_TEXT_MAX];
        keys_fingerprint_text(d->fp, fp);
        text_fmt(todo,
                 "send %s to the consortium admin, compare the fingerprint by phone or "
                 "video call, and run doctor again once the roster lists you",
                 d->keys.id);
        if (!strcmp(info.member, "active"))
            note(d, DOCTOR_OK, "membership", NULL, "the aggregator knows %s as an active member",
                 d->c.name);
        else if (!strcmp(info.member, "revoked"))
            note(d, DOCTOR_FAIL, "membership", "ask the consortium admin",
                 "the aggregator says %s (fingerprint %s) is revoked", d->c.name, fp);
        else if (!strcmp(info.member, "unknown"))
            note(d, DOCTOR_FAIL, "membership", todo,
                 "%s (fingerprint %s) is not on the aggregator's roster", d->c.name, fp);
        else
            note(d, DOCTOR_FAIL, "membership", todo, "the aggregator says member state '%s' for %s",
                 info.member, d->c.name);
    }

    int64_t skew = (int64_t)info.time - now;
    int64_t abs_skew = skew < 0 ? -skew : skew;
    const char *ntp = "enable NTP on this machine (e.g. timedatectl set-ntp true): round "
                      "deadlines are unix seconds";
    if (abs_skew > SKEW_FAIL_S)
        note(d, DOCTOR_FAIL, "clock", ntp,
             "the aggregator's clock is %lld s %s this machine's (more than %d s)",
             (long long)abs_skew, skew > 0 ? "ahead of" : "behind", SKEW_FAIL_S);
    else if (abs_skew > SKEW_WARN_S)
        note(d, DOCTOR_WARN, "clock", ntp,
             "the aggregator's clock is %lld s %s this machine's (more than %d s)",
             (long long)abs_skew, skew > 0 ? "ahead of" : "behind", SKEW_WARN_S);
    else
        note(d, DOCTOR_OK, "clock", NULL, "within %lld s of the aggregator's", (long long)abs_skew);

    check_roster(d, &info);
    disconnect_aggregator(d);
}

int doctor_run(const doctor_options *o, doctor_report *r) {
    struct doc *d = calloc(1, sizeof *d);
    if (!d) return err_set("out of memory");
    d->o = o;
    d->r = r;
    if (check_config(d) == 0) {
        check_keys(d);
        check_aggregator_id(d);
        check_base_model(d);
        check_data(d);
        check_state(d);
        check_disk(d);
        check_gpu(d);
        check_aggregator(d);
    }
    int oom = d->oom;
    keys_secret_wipe(&d->me);
    free(d);
    return oom ? err_set("out of memory for doctor's findings") : 0;
}
