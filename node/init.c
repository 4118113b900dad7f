/* node init: a new node's directory (node/init.h). */
#include "node/init.h"

#include "model/config.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/payload.h"
#include "wire/roster.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FIELD(member) offsetof(node_init_options, member)

const node_init_field node_init_fields[NODE_INIT_FIELDS] = {
    {"name", 1, "member name (1-64 of A-Z a-z 0-9 . _ -): the roster will list you by it",
     FIELD(name)},
    {"out", 1, "directory for this node (keys, config, state; made if missing)", FIELD(out)},
    {"consortium", 1, "consortium name (exactly as the consortium admin spells it)",
     FIELD(consortium)},
    {"aggregator", 1, "aggregator endpoint (tcp://HOST:PORT)", FIELD(aggregator)},
    {"aggregator-id", 1, "the aggregator's public identity file (.id) the consortium sent you",
     FIELD(aggregator_id)},
    {"admin", 1, "the consortium admin's fingerprint (64 hex digits, as the admin read it to you)",
     FIELD(admin)},
    {"base-model", 1, "base model directory (config.json and tokenizer.json)", FIELD(base_model)},
    {"data", 1, "your training data file (text or JSON Lines; it never leaves this machine)",
     FIELD(data)},
    {"device", 0, "device to train on (cpu)", FIELD(device)},
};

const char **node_init_slot(node_init_options *o, const node_init_field *f) {
    return (const char **)((char *)o + f->offset);
}

static const char *get(const node_init_options *o, const node_init_field *f) {
    return *(const char *const *)((const char *)o + f->offset);
}

int node_init_missing(const node_init_options *o, char *list, size_t n) {
    int missing = 0;
    size_t used = 0;
    if (n) list[0] = '\0';
    for (int i = 0; i < NODE_INIT_FIELDS; i++) {
        const node_init_field *f = &node_init_fields[i];
        const char *v = get(o, f);
        if (!f->required || (v && *v)) continue;
        if (used < n) {
            int w = snprintf(list + used, n - used, "%s--%s", missing ? ", " : "", f->flag);
            used += w > 0 ? (size_t)w : 0;
        }
        missing++;
    }
    return missing;
}

/* tcp://HOST:PORT with a port 1..65535, or ipc://PATH; no spaces, quotes or
 * control characters (it goes into the config as it is). */
static int check_endpoint(const char *e) {
    if (strlen(e) >= NODE_ENDPOINT_MAX)
        return err_set("'%s' is longer than %d bytes", e, NODE_ENDPOINT_MAX - 1);
    for (const char *p = e; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '"' || *p == '\\' || *p == 0x7f)
            return err_set("'%s' has a space, quote or control character", e);
    if (!strncmp(e, "ipc://", 6) && e[6]) return 0;
    const char *colon = strrchr(e, ':');
    if (strncmp(e, "tcp://", 6) != 0 || colon < e + 7)
        return err_set("'%s' is not tcp://HOST:PORT (or ipc://PATH)", e);
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 1 || port > 65535)
        return err_set("'%s': the port must be a number from 1 to 65535", e);
    return 0;
}

static int check_base_model(const char *dir) {
    struct stat st;
    if (stat(dir, &st) != 0) return err_errno("%s", dir);
    if (!S_ISDIR(st.st_mode)) return err_set("%s is not a directory", dir);
    char p[NODE_PATH_MAX];
    model_config mc;
    if (fio_join(p, sizeof p, dir, "config.json") != 0) return -1;
    if (model_config_load(&mc, p) != 0) return -1;
    if (fio_join(p, sizeof p, dir, "tokenizer.json") != 0) return -1;
    if (!fio_exists(p))
        return err_set("%s has no tokenizer.json (the node tokenizes its data with it)", dir);
    return 0;
}

static int check_value(const char *flag, const char *v) {
    if (!v || !*v) return err_set("is empty");
    if (!strcmp(flag, "name")) return keys_name_check(v);
    if (!strcmp(flag, "out")) {
        struct stat st;
        if (stat(v, &st) == 0 && !S_ISDIR(st.st_mode))
            return err_set("%s exists and is not a directory", v);
        return 0;
    }
    if (!strcmp(flag, "consortium")) {
        uint8_t id[ENVELOPE_CONSORTIUM_LEN];
        return payload_consortium_id(v, id);
    }
    if (!strcmp(flag, "aggregator")) return check_endpoint(v);
    if (!strcmp(flag, "aggregator-id")) {
        keys_public pub;
        return keys_load_public(v, &pub);
    }
    if (!strcmp(flag, "admin")) {
        uint8_t fp[KEYS_FP_LEN];
        return roster_fingerprint_parse(v, fp);
    }
    if (!strcmp(flag, "base-model")) return check_base_model(v);
    if (!strcmp(flag, "data")) {
        struct stat st;
        if (stat(v, &st) != 0) return err_errno("%s", v);
        if (!S_ISREG(st.st_mode)) return err_set("%s is not a regular file", v);
        return 0;
    }
    if (!strcmp(flag, "device")) return node_config_check_device(v);
    return err_set("unknown option");
}

int node_init_check(const node_init_field *f, const char *value) {
    if (check_value(f->flag, value) != 0) return err_context("--%s", f->flag);
    return 0;
}

/* ---- the config file -------------------------------------------------------- */

struct text {
    char *buf;
    size_t len, cap;
    int failed;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...) {
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(t->buf ? t->buf + t->len : NULL, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (w < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)w < t->cap - t->len) {
            t->len += (size_t)w;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)w + 1;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = 1;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

/* A libconfig string literal: '"' and '\' escaped; control characters are
 * refused (a path or name with a newline is a mistake, not a wish). */
static int put_string(struct text *t, const char *key, const char *s) {
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return err_set("%s '%s' has a control character", key, s);
    put(t, "\"");
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            put(t, "\\%c", *p);
        else
            put(t, "%c", *p);
    }
    put(t, "\"");
    return 0;
}

static int config_text(struct text *t, const node_init_options *o, const char *base_model,
                       const char *data, const uint8_t agg_fp[KEYS_FP_LEN],
                       const uint8_t admin_fp[KEYS_FP_LEN]) {
    char date[21], agg_text[KEYS_FP_TEXT_LEN], admin_text[KEYS_FP_TEXT_LEN];
    roster_date_format((int64_t)time(NULL), date);
    keys_fingerprint_text(agg_fp, agg_text);
    keys_fingerprint_text(admin_fp, admin_text);
    put(t,
        "# fedlora node config, written by `fedlora node init` on %s.\n"
        "# docs/federation.md lists every key. Relative paths are taken from this file's\n"
        "# directory. Check the whole setup with: fedlora doctor --config node.cfg\n\n",
        date);
    put(t,
        "# This member's identity, made here: keys/%s.sign.pem and keys/%s.kx.pem are\n"
        "# the private keys (mode 0600; they never leave this machine), keys/%s.id is\n"
        "# the public identity the consortium admin adds to the roster.\n"
        "keys = { dir = \"keys\"; name = \"%s\"; };\n\n",
        o->name, o->name, o->name, o->name);
    put(t, "# The consortium's name: the same string as in the aggregator's config and\n"
           "# the roster.\n"
           "consortium = ");
    if (put_string(t, "--consortium", o->consortium) != 0) return -1;
    put(t,
        ";\n\n# Where the aggregator listens, and its public identity (a copy of the file\n"
        "# the consortium sent; this node seals its updates to that key). Its\n"
        "# fingerprint, to compare with the consortium by phone or video call:\n"
        "#   %s\n"
        "aggregator = { endpoint = \"%s\"; identity = \"aggregator.id\"; };\n\n",
        agg_text, o->aggregator);
    put(t,
        "# The consortium admin's identity fingerprint, compared with the admin by phone\n"
        "# or video call: the only key this node trusts to sign the roster. Change it\n"
        "# only after talking to the admin, never because an aggregator says so.\n"
        "admin = \"%s\";\n\n",
        admin_text);
    put(t, "# The federation's base model: config.json and tokenizer.json (they never\n"
           "# change within a federation; every round's weights come from the aggregator).\n"
           "base_model = ");
    if (put_string(t, "--base-model", base_model) != 0) return -1;
    put(t, ";\n\n# The local training data (text, JSON Lines or a `fedlora tokenize` corpus).\n"
           "# It never leaves this machine: only sealed LoRA updates and two loss numbers do.\n"
           "data = ");
    if (put_string(t, "--data", data) != 0) return -1;
    put(t,
        ";\n\n# Where everything durable goes (model versions, sealed updates, receipts).\n"
        "# Keep it on a disk that survives a reboot, with room for 3 copies of the model.\n"
        "state = \"state\";\n\n"
        "# Where training runs, and how the frozen weights multiply: \"auto\" is bf16\n"
        "# on GPUs and on CPUs with bf16 instructions, else fp32 (docs/federation.md).\n"
        "device = \"%s\";\n"
        "precision = \"auto\";\n",
        o->device && *o->device ? o->device : "cpu");
    if (t->failed) return err_set("out of memory writing the node config");
    return 0;
}

/* ---- making the directory --------------------------------------------------- */

/* What this call made, undone in reverse order when a later step fails. */
struct made {
    char paths[10][NODE_PATH_MAX];
    int is_dir[10];
    int n;
};

static void made_add(struct made *m, const char *path, int is_dir) {
    snprintf(m->paths[m->n], sizeof m->paths[m->n], "%s", path);
    m->is_dir[m->n++] = is_dir;
}

static void made_undo(struct made *m) {
    for (int i = m->n - 1; i >= 0; i--) {
        if (m->is_dir[i])
            rmdir(m->paths[i]); /* only when empty: never remove what others put there */
        else
            unlink(m->paths[i]);
    }
}

/* mkdir -p dir, noting it in m when it did not exist. */
static int make_dir(struct made *m, const char *dir, unsigned mode) {
    int existed = fio_exists(dir);
    if (fio_mkdirs(dir, mode) != 0) return -1;
    if (!existed) made_add(m, dir, 1);
    return 0;
}

static int absolute(const char *path, const char *flag, char *out) {
    char *r = realpath(path, NULL);
    if (!r) return err_errno("--%s %s", flag, path);
    int rc = 0;
    if (snprintf(out, NODE_PATH_MAX, "%s", r) >= NODE_PATH_MAX)
        rc = err_set("--%s %s: the path is too long", flag, path);
    free(r);
    return rc;
}

static int create(const node_init_options *o, node_init_result *res, struct made *m) {
    char keys_dir[NODE_PATH_MAX], agg_id[NODE_PATH_MAX], state[NODE_PATH_MAX];
    keys_paths kp;
    if (fio_join(res->config, sizeof res->config, o->out, "node.cfg") != 0 ||
        fio_join(keys_dir, sizeof keys_dir, o->out, "keys") != 0 ||
        fio_join(agg_id, sizeof agg_id, o->out, "aggregator.id") != 0 ||
        fio_join(state, sizeof state, o->out, "state") != 0 ||
        keys_paths_of(&kp, keys_dir, o->name) != 0)
        return -1;
    _Static_assert(sizeof res->id_file >= sizeof kp.id,
                   "node_init_result.id_file holds a key path");
    memcpy(res->id_file, kp.id, sizeof kp.id);
    const char *targets[] = {res->config, agg_id, kp.sign, kp.kx, res->id_file};
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++)
        if (fio_exists(targets[i]))
            return err_set("%s already exists: node init never overwrites keys or a config "
                           "(choose another --out, or move the old files away)",
                           targets[i]);

    char base_model[NODE_PATH_MAX], data[NODE_PATH_MAX];
    uint8_t admin_fp[KEYS_FP_LEN];
    keys_public agg;
    char *agg_text = NULL;
    size_t agg_len;
    if (absolute(o->base_model, "base-model", base_model) != 0 ||
        absolute(o->data, "data", data) != 0 || roster_fingerprint_parse(o->admin, admin_fp) != 0)
        return -1;
    if (fio_read_all(o->aggregator_id, KEYS_ID_FILE_MAX, &agg_text, &agg_len) != 0)
        return err_context("--aggregator-id");
    int rc = keys_parse_public(agg_text, agg_len, &agg, o->aggregator_id);
    if (rc == 0) rc = keys_fingerprint(&agg, res->agg_fp);

    struct text t = {0};
    if (rc == 0) rc = config_text(&t, o, base_model, data, res->agg_fp, admin_fp);

    /* The keys first: they are what a node cannot get back. */
    keys_secret k;
    memset(&k, 0, sizeof k);
    if (rc == 0) rc = make_dir(m, o->out, 0755);
    if (rc == 0) rc = make_dir(m, keys_dir, 0700);
    if (rc == 0) rc = keys_generate(o->name, &k);
    if (rc == 0) {
        rc = keys_write(&k, keys_dir); /* all three files, or none */
        if (rc == 0) {
            made_add(m, kp.sign, 0);
            made_add(m, kp.kx, 0);
            made_add(m, res->id_file, 0);
            rc = keys_fingerprint(&k.pub, res->fp);
        }
    }
    keys_secret_wipe(&k);
    if (rc == 0) rc = fio_write_atomic(agg_id, agg_text, agg_len, 0644);
    if (rc == 0) made_add(m, agg_id, 0);
    if (rc == 0) rc = make_dir(m, state, 0700);
    if (rc == 0) rc = fio_write_atomic(res->config, t.buf, t.len, 0644);
    if (rc == 0) {
        made_add(m, res->config, 0);
        node_config c;
        if (node_config_load(&c, res->config) != 0)
            rc = err_context("the config node init wrote does not load");
    }
    free(t.buf);
    free(agg_text);
    return rc;
}

int node_init_create(const node_init_options *o, node_init_result *res) {
    memset(res, 0, sizeof *res);
    char missing[256];
    if (node_init_missing(o, missing, sizeof missing) > 0)
        return err_set("missing %s (give them as flags, or run it on a terminal to be asked)",
                       missing);
    for (int i = 0; i < NODE_INIT_FIELDS; i++) {
        const node_init_field *f = &node_init_fields[i];
        const char *v = get(o, f);
        if (v && node_init_check(f, v) != 0) return -1;
    }
    struct made m = {.n = 0};
    if (create(o, res, &m) == 0) return 0;
    char why[ERR_MSG_MAX];
    snprintf(why, sizeof why, "%s", err_msg());
    made_undo(&m);
    return err_set("%s", why);
}
