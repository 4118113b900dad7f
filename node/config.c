/* node configuration: a libconfig file (docs/federation.md lists every key). */
#include "node/node.h"

#include "util/err.h"
#include "util/fio.h"
#include "wire/payload.h"
#include "wire/roster.h"

#include <libconfig.h>
#include <stdio.h>
#include <string.h>

void node_config_init(node_config *c) {
    memset(c, 0, sizeof *c);
    c->eval_fraction = 0.1;
    snprintf(c->device, sizeof c->device, "cpu");
    snprintf(c->precision, sizeof c->precision, "auto");
    c->save_every = 10;
    c->poll_ms = 1000;
    c->request_timeout_ms = 5000;
    c->give_up_s = 600;
    c->max_model_bytes = (uint64_t)64 << 30;
    c->curve = 1;
}

/* The keys a node config may have; anything else is a typo worth an error. */
static const char *const top_keys[] = {
    "keys",
    "consortium",
    "aggregator",
    "base_model",
    "data",
    "eval_fraction",
    "seed",
    "batch",
    "threads",
    "device",
    "precision",
    "state",
    "save_every",
    "poll_ms",
    "request_timeout_ms",
    "give_up_s",
    "max_model_bytes",
    "admin",
};
static const char *const keys_keys[] = {"dir", "name"};
static const char *const aggregator_keys[] = {"endpoint", "identity", "curve"};

static int check_keys(const config_setting_t *group, const char *const *known, size_t n,
                      const char *where, const char *file) {
    for (int i = 0; i < config_setting_length(group); i++) {
        const char *name = config_setting_name(config_setting_get_elem(group, (unsigned)i));
        size_t k = 0;
        while (k < n && strcmp(known[k], name) != 0) k++;
        if (k == n)
            return err_set("%s: unknown key '%s%s' (docs/federation.md lists the keys)", file,
                           where, name);
    }
    return 0;
}

/* A path from the file: relative ones are taken from the file's directory, so
 * a config works from any working directory. */
static int get_path(const config_t *cf, const char *key, const char *dir, char *out, size_t n,
                    int required, const char *file) {
    const char *s;
    if (!config_lookup_string(cf, key, &s)) {
        if (config_lookup(cf, key)) return err_set("%s: '%s' must be a string (a path)", file, key);
        if (required) return err_set("%s: missing required key '%s'", file, key);
        return 0;
    }
    if (!*s) return err_set("%s: '%s' must not be empty", file, key);
    if (s[0] == '/' || !*dir) {
        if (snprintf(out, n, "%s", s) >= (int)n) return err_set("%s: '%s' is too long", file, key);
        return 0;
    }
    if (fio_join(out, n, dir, s) != 0) return err_context("%s: '%s'", file, key);
    return 0;
}

static int get_string(const config_t *cf, const char *key, char *out, size_t n, int required,
                      const char *file) {
    const char *s;
    if (!config_lookup_string(cf, key, &s)) {
        if (config_lookup(cf, key)) return err_set("%s: '%s' must be a string", file, key);
        if (required) return err_set("%s: missing required key '%s'", file, key);
        return 0;
    }
    if (strlen(s) >= n) return err_set("%s: '%s' is longer than %zu bytes", file, key, n - 1);
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

static int get_int(const config_t *cf, const char *key, long long lo, long long hi, long long *v,
                   const char *file) {
    config_setting_t *s = config_lookup(cf, key);
    if (!s) return 0;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return err_set("%s: '%s' must be an integer", file, key);
    long long x = config_setting_get_int64(s);
    if (x < lo || x > hi)
        return err_set("%s: '%s' must be from %lld to %lld, got %lld", file, key, lo, hi, x);
    *v = x;
    return 0;
}

static int get_int32(const config_t *cf, const char *key, long long lo, long long hi, int *v,
                     const char *file) {
    long long x = *v;
    if (get_int(cf, key, lo, hi, &x, file) != 0) return -1;
    *v = (int)x;
    return 0;
}

int node_config_check_device(const char *device) {
    /* Whether the CUDA backend module loads and a GPU is there is checked
     * when training starts (and by `fedlora doctor`), not here: a config
     * stays loadable on a machine whose GPU is busy or being serviced. */
    if (strcmp(device, "cpu") == 0 || strcmp(device, "cuda") == 0) return 0;
    return err_set("must be \"cpu\" or \"cuda\", got \"%s\"", device);
}

int node_config_load(node_config *c, const char *path) {
    node_config_init(c);
    char dir[NODE_PATH_MAX] = "";
    const char *slash = strrchr(path, '/');
    if (slash) {
        size_t n = (size_t)(slash - path);
        if (n == 0) n = 1; /* "/file" lives in "/" */
        if (n >= sizeof dir) return err_set("config path %s is too long", path);
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    config_t cf;
    config_init(&cf);
    int rc = -1;
    if (!config_read_file(&cf, path)) {
        if (config_error_type(&cf) == CONFIG_ERR_FILE_IO)
            err_errno("cannot read node config %s", path);
        else
            err_set("%s:%d: %s", config_error_file(&cf) ? config_error_file(&cf) : path,
                    config_error_line(&cf), config_error_text(&cf));
        goto done;
    }
    config_setting_t *root = config_root_setting(&cf), *agg = config_lookup(&cf, "aggregator"),
                     *keys = config_lookup(&cf, "keys");
    if (check_keys(root, top_keys, sizeof top_keys / sizeof top_keys[0], "", path) != 0) goto done;
    if (!agg || !config_setting_is_group(agg)) {
        err_set("%s: missing group 'aggregator' = { endpoint = \"tcp://HOST:PORT\"; identity = "
                "\"FILE.id\"; }",
                path);
        goto done;
    }
    if (!keys || !config_setting_is_group(keys)) {
        err_set("%s: missing group 'keys' = { dir = \"DIR\"; name = \"NAME\"; } (fedlora keygen "
                "--name NAME --out DIR made them)",
                path);
        goto done;
    }
    if (check_keys(agg, aggregator_keys, 3, "aggregator.", path) != 0 ||
        check_keys(keys, keys_keys, 2, "keys.", path) != 0)
        goto done;

    char admin[KEYS_FP_TEXT_LEN + 64] = "";
    long long seed = 0, max_model = (long long)c->max_model_bytes;
    double ef = c->eval_fraction;
    if (get_string(&cf, "keys.name", c->name, sizeof c->name, 1, path) != 0 ||
        get_path(&cf, "keys.dir", dir, c->keys_dir, sizeof c->keys_dir, 1, path) != 0 ||
        get_string(&cf, "consortium", c->consortium_name, sizeof c->consortium_name, 1, path) !=
            0 ||
        get_string(&cf, "aggregator.endpoint", c->endpoint, sizeof c->endpoint, 1, path) != 0 ||
        get_path(&cf, "aggregator.identity", dir, c->aggregator_id, sizeof c->aggregator_id, 1,
                 path) != 0 ||
        get_path(&cf, "base_model", dir, c->base_model, sizeof c->base_model, 1, path) != 0 ||
        get_path(&cf, "data", dir, c->data, sizeof c->data, 1, path) != 0 ||
        get_path(&cf, "state", dir, c->state_dir, sizeof c->state_dir, 1, path) != 0 ||
        get_string(&cf, "device", c->device, sizeof c->device, 0, path) != 0 ||
        get_string(&cf, "precision", c->precision, sizeof c->precision, 0, path) != 0 ||
        get_int(&cf, "seed", 0, (long long)1 << 62, &seed, path) != 0 ||
        get_int32(&cf, "batch", 0, 65536, &c->batch, path) != 0 ||
        get_int32(&cf, "threads", 0, 4096, &c->threads, path) != 0 ||
        get_int32(&cf, "save_every", 0, 1 << 30, &c->save_every, path) != 0 ||
        get_int32(&cf, "poll_ms", 10, 3600000, &c->poll_ms, path) != 0 ||
        get_int32(&cf, "request_timeout_ms", 10, 3600000, &c->request_timeout_ms, path) != 0 ||
        get_int32(&cf, "give_up_s", 1, 1 << 30, &c->give_up_s, path) != 0 ||
        get_int(&cf, "max_model_bytes", 1, (long long)1 << 50, &max_model, path) != 0 ||
        get_string(&cf, "admin", admin, sizeof admin, 0, path) != 0)
        goto done;
    /* CURVE unless the consortium runs without it (docs/onboarding.md,
     * "Moving to CURVE"): both sides must say the same. */
    c->curve = 1;
    config_setting_t *curve = config_lookup(&cf, "aggregator.curve");
    if (curve) {
        if (config_setting_type(curve) != CONFIG_TYPE_BOOL) {
            err_set("%s: 'aggregator.curve' must be true or false", path);
            goto done;
        }
        c->curve = config_setting_get_bool(curve);
    }
    config_setting_t *efs = config_lookup(&cf, "eval_fraction");
    if (efs) {
        int t = config_setting_type(efs);
        if (t != CONFIG_TYPE_FLOAT && t != CONFIG_TYPE_INT) {
            err_set("%s: 'eval_fraction' must be a number", path);
            goto done;
        }
        ef = t == CONFIG_TYPE_FLOAT ? config_setting_get_float(efs)
                                    : (double)config_setting_get_int(efs);
        if (!(ef > 0 && ef < 1)) {
            err_set("%s: 'eval_fraction' must be in (0, 1): the local held-out loss needs "
                    "held-out documents, got %g",
                    path, ef);
            goto done;
        }
    }
    c->eval_fraction = ef;
    c->seed = (uint64_t)seed;
    c->max_model_bytes = (uint64_t)max_model;
    if (keys_name_check(c->name) != 0) {
        err_context("%s: 'keys.name'", path);
        goto done;
    }
    if (node_config_check_device(c->device) != 0) {
        err_context("%s: 'device'", path);
        goto done;
    }
    if (strcmp(c->precision, "auto") != 0 && strcmp(c->precision, "fp32") != 0 &&
        strcmp(c->precision, "bf16") != 0) {
        err_set("%s: 'precision' must be \"auto\", \"fp32\" or \"bf16\", got \"%s\"", path,
                c->precision);
        goto done;
    }
    if (strncmp(c->endpoint, "tcp://", 6) != 0 && strncmp(c->endpoint, "ipc://", 6) != 0) {
        err_set("%s: aggregator.endpoint must be tcp://HOST:PORT (or ipc://PATH), got \"%s\"", path,
                c->endpoint);
        goto done;
    }
    if (payload_consortium_id(c->consortium_name, c->consortium) != 0) {
        err_context("%s: 'consortium'", path);
        goto done;
    }
    if (config_lookup(&cf, "admin")) {
        if (roster_fingerprint_parse(admin, c->admin_fp) != 0) {
            err_context("%s: 'admin' (the consortium admin's fingerprint, as `fedlora roster "
                        "init` printed it)",
                        path);
            goto done;
        }
        c->has_admin = 1;
    }
    rc = 0;
done:
    config_destroy(&cf);
    return rc;
}
