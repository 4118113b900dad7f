/* config — the aggregator's libconfig file and its member list. */
#include "aggregator/config.h"

#include "aggregator/status_http.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/roster.h"

#include <libconfig.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const top_keys[] = {"bind",   "keys",   "consortium", "members", "base_model",
                                       "state",  "rounds", "train",      "limits",  "policy",
                                       "roster", "status", "eval",       "curve"};
static const char *const status_keys[] = {"bind", "token", "token_file", "refresh"};
static const char *const eval_keys[] = {"data",  "tasks",   "tokenizer", "seq",
                                        "batch", "threads", "timeout"};
static const char *const keys_keys[] = {"dir", "name"};
static const char *const rounds_keys[] = {"count",        "quorum", "deadline",
                                          "below_quorum", "linger", "join"};
static const char *const roster_keys[] = {"file", "admin"};
static const char *const train_keys[] = {"steps", "lr", "rank", "alpha", "targets", "batch", "seq"};
static const char *const limits_keys[] = {"max_submission", "max_update_ratio"};
static const char *const member_keys[] = {"id", "max_weight"};
#define N(a) (sizeof a / sizeof a[0])

struct cfg_ctx {
    config_t cf;
    const char *file;
    char dir[AGG_PATH_MAX];
};

static int check_keys(const struct cfg_ctx *x, const config_setting_t *group,
                      const char *const *known, size_t n, const char *where) {
    for (int i = 0; i < config_setting_length(group); i++) {
        const char *name = config_setting_name(config_setting_get_elem(group, (unsigned)i));
        size_t k = 0;
        while (k < n && strcmp(known[k], name) != 0) k++;
        if (k == n)
            return err_set("%s: unknown key '%s%s' (docs/protocol.md, \"Aggregator config\", "
                           "lists the keys)",
                           x->file, where, name ? name : "?");
    }
    return 0;
}

static int group(const struct cfg_ctx *x, const char *key, const char *const *known, size_t n,
                 int required, config_setting_t **out) {
    *out = config_lookup(&x->cf, key);
    if (!*out) return required ? err_set("%s: missing required group '%s'", x->file, key) : 0;
    if (!config_setting_is_group(*out))
        return err_set("%s: '%s' must be a group { ... }", x->file, key);
    char where[64];
    snprintf(where, sizeof where, "%s.", key);
    return check_keys(x, *out, known, n, where);
}

static int get_string(const struct cfg_ctx *x, const config_setting_t *s, const char *key,
                      char *out, size_t n) {
    const char *v = config_setting_get_string(s);
    if (!v) return err_set("%s: '%s' must be a string", x->file, key);
    if (!*v) return err_set("%s: '%s' must not be empty", x->file, key);
    if (strlen(v) >= n) return err_set("%s: '%s' is longer than %zu bytes", x->file, key, n - 1);
    memcpy(out, v, strlen(v) + 1);
    return 0;
}

static int lookup_string(const struct cfg_ctx *x, const char *key, int required, char *out,
                         size_t n) {
    config_setting_t *s = config_lookup(&x->cf, key);
    if (!s) return required ? err_set("%s: missing required key '%s'", x->file, key) : 0;
    return get_string(x, s, key, out, n);
}

/* A path; a relative one is taken from the config file's directory. */
static int resolve(const struct cfg_ctx *x, const char *key, const char *v, char *out, size_t n) {
    if (v[0] == '/' || !x->dir[0]) {
        if (snprintf(out, n, "%s", v) >= (int)n)
            return err_set("%s: '%s' is too long", x->file, key);
        return 0;
    }
    if (fio_join(out, n, x->dir, v) != 0) return err_context("%s: '%s'", x->file, key);
    return 0;
}

static int lookup_path(const struct cfg_ctx *x, const char *key, char *out, size_t n) {
    char v[AGG_PATH_MAX];
    if (lookup_string(x, key, 1, v, sizeof v) < 0) return -1;
    return resolve(x, key, v, out, n);
}

static int lookup_int(const struct cfg_ctx *x, const char *key, int required, long long lo,
                      long long hi, long long *v) {
    config_setting_t *s = config_lookup(&x->cf, key);
    if (!s) return required ? err_set("%s: missing required key '%s'", x->file, key) : 0;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return err_set("%s: '%s' must be an integer", x->file, key);
    long long y = config_setting_get_int64(s);
    if (y < lo || y > hi)
        return err_set("%s: '%s' must be from %lld to %lld, got %lld", x->file, key, lo, hi, y);
    *v = y;
    return 0;
}

static int get_number(const struct cfg_ctx *x, const config_setting_t *s, const char *key,
                      double *v) {
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_FLOAT)
        *v = config_setting_get_float(s);
    else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
        *v = (double)config_setting_get_int64(s);
    else
        return err_set("%s: '%s' must be a number", x->file, key);
    return 0;
}

static int lookup_number(const struct cfg_ctx *x, const char *key, double *v) {
    config_setting_t *s = config_lookup(&x->cf, key);
    if (!s) return err_set("%s: missing required key '%s'", x->file, key);
    return get_number(x, s, key, v);
}

/* "roster" = { file = "roster.txt"; admin = "<fingerprint>"; }: the signed
 * roster and the admin identity it must be signed by (members.h). */
static int load_roster(const struct cfg_ctx *x, agg_config *c) {
    config_setting_t *g;
    char admin[256];
    if (group(x, "roster", roster_keys, N(roster_keys), 1, &g) < 0 ||
        lookup_path(x, "roster.file", c->roster_path, sizeof c->roster_path) < 0 ||
        lookup_string(x, "roster.admin", 1, admin, sizeof admin) < 0)
        return -1;
    if (roster_fingerprint_parse(admin, c->roster_admin) < 0)
        return err_context("%s: 'roster.admin' (the admin's fingerprint, as `fedlora keygen` or "
                           "`fedlora roster list` print it)",
                           x->file);
    c->has_roster = 1;
    return 0;
}

static int load_members(const struct cfg_ctx *x, agg_config *c) {
    config_setting_t *list = config_lookup(&x->cf, "members");
    int has_roster = config_lookup(&x->cf, "roster") != NULL;
    if (list && has_roster)
        return err_set("%s: both 'members' and 'roster' are set: give one (a signed roster "
                       "replaces the member list)",
                       x->file);
    if (has_roster) return load_roster(x, c);
    if (!list)
        return err_set("%s: missing 'roster' = { file = \"roster.txt\"; admin = \"FINGERPRINT\"; } "
                       "or 'members' = ( { id = \"uni-a.id\"; }, ... )",
                       x->file);
    if (!config_setting_is_list(list) && !config_setting_is_array(list))
        return err_set("%s: 'members' must be a list ( { id = \"FILE.id\"; max_weight = 1.0; }, "
                       "... ) or an array [ \"FILE.id\", ... ]",
                       x->file);
    int n = config_setting_length(list);
    if (n < 1 || n > AGG_MEMBERS_MAX)
        return err_set("%s: 'members' must list 1 to %d members, got %d", x->file, AGG_MEMBERS_MAX,
                       n);
    c->members = calloc((size_t)n, sizeof *c->members);
    if (!c->members) return err_set("out of memory for %d members", n);
    c->n_members = n;
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        agg_member_config *m = &c->members[i];
        char key[64], v[AGG_PATH_MAX];
        m->max_weight = 1.0;
        snprintf(key, sizeof key, "members[%d]", i);
        if (config_setting_type(e) == CONFIG_TYPE_STRING) {
            if (get_string(x, e, key, v, sizeof v) < 0) return -1;
        } else if (config_setting_is_group(e)) {
            if (check_keys(x, e, member_keys, N(member_keys), "members[].") < 0) return -1;
            config_setting_t *id = config_setting_get_member(e, "id");
            if (!id) return err_set("%s: %s has no 'id' (the member's .id file)", x->file, key);
            snprintf(key, sizeof key, "members[%d].id", i);
            if (get_string(x, id, key, v, sizeof v) < 0) return -1;
            config_setting_t *w = config_setting_get_member(e, "max_weight");
            if (w) {
                snprintf(key, sizeof key, "members[%d].max_weight", i);
                if (get_number(x, w, key, &m->max_weight) < 0) return -1;
                if (!(m->max_weight > 0 && m->max_weight <= 1))
                    return err_set("%s: '%s' must be in (0, 1], got %g", x->file, key,
                                   m->max_weight);
            }
        } else {
            return err_set("%s: %s must be a string or a group { id = ...; }", x->file, key);
        }
        if (resolve(x, key, v, m->id_path, sizeof m->id_path) < 0) return -1;
    }
    return 0;
}

static int load_train(const struct cfg_ctx *x, agg_config *c) {
    config_setting_t *g;
    if (group(x, "train", train_keys, N(train_keys), 1, &g) < 0) return -1;
    struct msg_train *t = &c->train;
    long long steps, rank, batch, seq;
    if (lookup_int(x, "train.steps", 1, 1, 10000000, &steps) < 0 ||
        lookup_number(x, "train.lr", &t->lr) < 0 ||
        lookup_int(x, "train.rank", 1, 1, 4096, &rank) < 0 ||
        lookup_number(x, "train.alpha", &t->alpha) < 0 ||
        lookup_int(x, "train.batch", 1, 1, 65536, &batch) < 0 ||
        lookup_int(x, "train.seq", 1, 1, 1 << 20, &seq) < 0)
        return -1;
    t->steps = (uint32_t)steps;
    t->rank = (uint32_t)rank;
    t->batch = (uint32_t)batch;
    t->seq = (uint32_t)seq;
    config_setting_t *tg = config_lookup(&x->cf, "train.targets");
    if (!tg) return err_set("%s: missing required key 'train.targets'", x->file);
    if (!config_setting_is_array(tg) && !config_setting_is_list(tg))
        return err_set("%s: 'train.targets' must be an array of module names [\"q_proj\", ...]",
                       x->file);
    int n = config_setting_length(tg);
    if (n < 1 || n > MSG_TARGETS_MAX)
        return err_set("%s: 'train.targets' must hold 1 to %d names, got %d", x->file,
                       MSG_TARGETS_MAX, n);
    for (int i = 0; i < n; i++) {
        char key[48];
        snprintf(key, sizeof key, "train.targets[%d]", i);
        if (get_string(x, config_setting_get_elem(tg, (unsigned)i), key, t->targets[i],
                       sizeof t->targets[i]) < 0)
            return -1;
    }
    t->ntargets = (uint32_t)n;
    /* The ROUND decoder is the one statement of the train config's rules (lr
     * in (0, 1], identifiers, ...): a config that could not be sent is
     * refused here, at start, rather than when the first node says HELLO. */
    struct msg m = {.type = MSG_ROUND};
    m.round.train = *t;
    uint8_t *buf;
    size_t len;
    if (msg_encode(&m, &buf, &len) < 0) return err_context("%s: group 'train'", x->file);
    free(buf);
    return 0;
}

/* "status" = { bind = "127.0.0.1:8470"; token = "..."; }: the status page
 * (status_http.h). A page anyone on the network could read needs a token. */
static int load_status(const struct cfg_ctx *x, agg_config *c) {
    config_setting_t *g;
    long long refresh = 5;
    char token_file[AGG_PATH_MAX] = "";
    if (group(x, "status", status_keys, N(status_keys), 0, &g) < 0) return -1;
    if (!g) return 0;
    snprintf(c->status_bind, sizeof c->status_bind, "127.0.0.1:8470");
    if (lookup_string(x, "status.bind", 0, c->status_bind, sizeof c->status_bind) < 0 ||
        lookup_string(x, "status.token", 0, c->status_token, sizeof c->status_token) < 0 ||
        lookup_int(x, "status.refresh", 0, 1, 3600, &refresh) < 0)
        return -1;
    if (config_lookup(&x->cf, "status.token_file")) {
        if (c->status_token[0])
            return err_set("%s: give one of 'status.token' and 'status.token_file'", x->file);
        char *text;
        size_t len;
        if (lookup_path(x, "status.token_file", token_file, sizeof token_file) < 0) return -1;
        if (fio_read_all(token_file, 4096, &text, &len) < 0)
            return err_context("%s: 'status.token_file'", x->file);
        while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
            len--;
        int fits = len < sizeof c->status_token;
        if (fits) memcpy(c->status_token, text, len), c->status_token[len] = '\0';
        free(text);
        if (!fits) return err_set("%s: the token in %s is too long", x->file, token_file);
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    int loopback;
    if (status_bind_parse(c->status_bind, &ss, &sl, &loopback) < 0 ||
        (c->status_token[0] && status_token_check(c->status_token) < 0))
        return err_context("%s: 'status'", x->file);
    if (!loopback && !c->status_token[0])
        return err_set("%s: status.bind \"%s\" is not a loopback address, so anyone who reaches "
                       "it could read the status page: set status.token (e.g. `openssl rand -hex "
                       "32`) or bind to 127.0.0.1",
                       x->file, c->status_bind);
    c->status_refresh_s = (int)refresh;
    c->has_status = 1;
    return 0;
}

/* A list of paths ("eval.data", "eval.tasks"), resolved. */
static int path_list(const struct cfg_ctx *x, const char *key, char ***out, int *n) {
    config_setting_t *l = config_lookup(&x->cf, key);
    *n = 0;
    if (!l) return 0;
    if (!config_setting_is_array(l) && !config_setting_is_list(l))
        return err_set("%s: '%s' must be an array of file names [\"...\", ...]", x->file, key);
    int len = config_setting_length(l);
    if (len > AGG_EVAL_SETS_MAX)
        return err_set("%s: '%s' names %d files, at most %d", x->file, key, len, AGG_EVAL_SETS_MAX);
    *out = calloc((size_t)(len ? len : 1), sizeof **out);
    if (!*out) return err_set("out of memory");
    for (int i = 0; i < len; i++) {
        char k[64], v[AGG_PATH_MAX];
        snprintf(k, sizeof k, "%s[%d]", key, i);
        (*out)[i] = malloc(AGG_PATH_MAX);
        if (!(*out)[i]) return err_set("out of memory");
        (*n)++;
        if (get_string(x, config_setting_get_elem(l, (unsigned)i), k, v, sizeof v) < 0 ||
            resolve(x, k, v, (*out)[i], AGG_PATH_MAX) < 0)
            return -1;
        if (!fio_exists((*out)[i]))
            return err_set("%s: '%s' = \"%s\": no such file", x->file, k, (*out)[i]);
    }
    return 0;
}

static const char *file_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* "eval" = { data = [...]; tasks = [...]; }: the consortium's evaluation
 * sets, text (loss) and multiple-choice tasks (eval.c). */
static int load_eval(const struct cfg_ctx *x, agg_config *c) {
    config_setting_t *g;
    long long seq = 0, batch = 4, threads = 1, timeout = 3600;
    if (group(x, "eval", eval_keys, N(eval_keys), 0, &g) < 0) return -1;
    if (!g) return 0;
    if (path_list(x, "eval.data", &c->eval_data, &c->n_eval_data) < 0 ||
        path_list(x, "eval.tasks", &c->eval_tasks, &c->n_eval_tasks) < 0 ||
        lookup_int(x, "eval.seq", 0, 1, 1 << 20, &seq) < 0 ||
        lookup_int(x, "eval.batch", 0, 1, 4096, &batch) < 0 ||
        lookup_int(x, "eval.threads", 0, 1, 1024, &threads) < 0 ||
        lookup_int(x, "eval.timeout", 0, 0, 10000000, &timeout) < 0)
        return -1;
    if (c->n_eval_data + c->n_eval_tasks == 0)
        return err_set("%s: 'eval' names no set: give eval.data (text files: loss and perplexity) "
                       "and/or eval.tasks (multiple-choice task files)",
                       x->file);
    /* Sets go by their file names (metrics, the status page): one each. */
    int n = c->n_eval_data + c->n_eval_tasks;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < i; k++) {
            const char *a =
                i < c->n_eval_data ? c->eval_data[i] : c->eval_tasks[i - c->n_eval_data];
            const char *b =
                k < c->n_eval_data ? c->eval_data[k] : c->eval_tasks[k - c->n_eval_data];
            if (!strcmp(file_name(a), file_name(b)))
                return err_set("%s: two evaluation sets are named '%s' (%s and %s); sets go by "
                               "their file names, so give them different ones",
                               x->file, file_name(a), b, a);
        }
    if (config_lookup(&x->cf, "eval.tokenizer") &&
        lookup_path(x, "eval.tokenizer", c->eval_tokenizer, sizeof c->eval_tokenizer) < 0)
        return -1;
    c->eval_seq = (int)seq;
    c->eval_batch = (int)batch;
    c->eval_threads = (int)threads;
    c->eval_timeout_s = (int)timeout;
    c->has_eval = 1;
    return 0;
}

/* The policy file and what it takes over from this config (config.h). */
static int load_policy(const struct cfg_ctx *x, agg_config *c) {
    static const char *const owned[] = {"rounds.quorum", "rounds.deadline", "rounds.below_quorum"};
    for (size_t i = 0; i < N(owned); i++)
        if (config_lookup(&x->cf, owned[i]))
            return err_set("%s: '%s' is set, but a policy file is given: its 'rounds' group "
                           "decides quorum, deadline and below_quorum; remove '%s' here",
                           x->file, owned[i], owned[i]);
    for (int i = 0; i < c->n_members; i++)
        if (c->members[i].max_weight != 1.0)
            return err_set("%s: members[%d].max_weight is set, but a policy file is given: its "
                           "'weighting.cap' caps every member; remove max_weight",
                           x->file, i);
    if (lookup_path(x, "policy", c->policy_path, sizeof c->policy_path) < 0) return -1;
    if (policy_load(&c->policy, c->policy_path) < 0) return err_context("%s: 'policy'", x->file);
    const policy *p = &c->policy;
    if (!c->has_roster && p->rounds.quorum > c->n_members)
        return err_set("%s: rounds.quorum = %d is above the %d members of %s", c->policy_path,
                       p->rounds.quorum, c->n_members, x->file);
    if (p->rounds.deadline_s > 10000000)
        return err_set("%s: rounds.deadline_s = %g is above 10^7 s", c->policy_path,
                       p->rounds.deadline_s);
    /* Member sampling would need a "not asked this round" answer to HELLO,
     * which the protocol does not have: every member is asked every round. */
    if (p->rounds.fraction != 1.0)
        return err_set("%s: rounds.fraction = %g: the aggregator asks every member every round "
                       "(q = 1); member sampling is not supported, set rounds.fraction = 1",
                       c->policy_path, p->rounds.fraction);
    c->quorum = (uint32_t)p->rounds.quorum;
    c->deadline_s = (uint32_t)ceil(p->rounds.deadline_s);
    c->fail_below_quorum = p->rounds.below_quorum == POLICY_BELOW_QUORUM_FAIL;
    if (p->rounds.max_rounds > 0 && (uint64_t)p->rounds.max_rounds < c->rounds)
        c->rounds = (uint64_t)p->rounds.max_rounds;
    c->has_policy = 1;
    return 0;
}

int agg_config_load(agg_config *c, const char *path) {
    memset(c, 0, sizeof *c);
    struct cfg_ctx x = {.file = path};
    if (snprintf(c->file, sizeof c->file, "%s", path) >= (int)sizeof c->file)
        return err_set("config path %s is too long", path);
    const char *slash = strrchr(path, '/');
    if (slash) {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        memcpy(x.dir, path, n);
        x.dir[n] = '\0';
    }
    config_init(&x.cf);
    int rc = -1;
    if (!config_read_file(&x.cf, path)) {
        if (config_error_type(&x.cf) == CONFIG_ERR_FILE_IO)
            err_errno("cannot read aggregator config %s", path);
        else
            err_set("%s:%d: %s", config_error_file(&x.cf) ? config_error_file(&x.cf) : path,
                    config_error_line(&x.cf), config_error_text(&x.cf));
        goto done;
    }
    config_setting_t *g;
    if (check_keys(&x, config_root_setting(&x.cf), top_keys, N(top_keys), "") < 0 ||
        lookup_string(&x, "bind", 1, c->bind, sizeof c->bind) < 0 ||
        group(&x, "keys", keys_keys, N(keys_keys), 1, &g) < 0 ||
        lookup_path(&x, "keys.dir", c->keys_dir, sizeof c->keys_dir) < 0 ||
        lookup_string(&x, "keys.name", 1, c->keys_name, sizeof c->keys_name) < 0 ||
        lookup_string(&x, "consortium", 1, c->consortium_name, sizeof c->consortium_name) < 0 ||
        lookup_path(&x, "base_model", c->base_model, sizeof c->base_model) < 0 ||
        lookup_path(&x, "state", c->state, sizeof c->state) < 0 || load_members(&x, c) < 0 ||
        load_train(&x, c) < 0)
        goto done;
    if (keys_name_check(c->keys_name) < 0) {
        err_context("%s: 'keys.name'", path);
        goto done;
    }
    if (payload_consortium_id(c->consortium_name, c->consortium) < 0) {
        err_context("%s: 'consortium'", path);
        goto done;
    }
    c->curve = 1;
    config_setting_t *curve = config_lookup(&x.cf, "curve");
    if (curve) {
        if (config_setting_type(curve) != CONFIG_TYPE_BOOL) {
            err_set("%s: 'curve' must be true or false", path);
            goto done;
        }
        c->curve = config_setting_get_bool(curve);
    }
    if (strncmp(c->bind, "tcp://", 6) != 0 && strncmp(c->bind, "ipc://", 6) != 0) {
        err_set("%s: 'bind' must be tcp://HOST:PORT (or ipc://PATH), got \"%s\"", path, c->bind);
        goto done;
    }

    long long count = 1, quorum = c->n_members, deadline = 600, linger = 30;
    long long max_quorum = c->has_roster ? ROSTER_MEMBERS_MAX : c->n_members;
    char below[16] = "wait", join[16] = "next";
    if (group(&x, "rounds", rounds_keys, N(rounds_keys), 1, &g) < 0 ||
        lookup_int(&x, "rounds.count", 1, 1, 1000000, &count) < 0 ||
        lookup_int(&x, "rounds.quorum", 0, 1, max_quorum, &quorum) < 0 ||
        lookup_int(&x, "rounds.deadline", 0, 1, 10000000, &deadline) < 0 ||
        lookup_int(&x, "rounds.linger", 0, -1, 1000000, &linger) < 0 ||
        lookup_string(&x, "rounds.below_quorum", 0, below, sizeof below) < 0 ||
        lookup_string(&x, "rounds.join", 0, join, sizeof join) < 0)
        goto done;
    if (strcmp(join, "next") != 0 && strcmp(join, "current") != 0) {
        err_set("%s: 'rounds.join' must be \"next\" or \"current\", got \"%s\"", path, join);
        goto done;
    }
    c->join_current = strcmp(join, "current") == 0;
    if (strcmp(below, "wait") != 0 && strcmp(below, "fail") != 0) {
        err_set("%s: 'rounds.below_quorum' must be \"wait\" or \"fail\", got \"%s\"", path, below);
        goto done;
    }
    c->rounds = (uint64_t)count;
    if (c->has_roster && !config_lookup(&x.cf, "policy") && quorum == 0) {
        err_set("%s: with a 'roster', set 'rounds.quorum' (deltas needed to close a round): the "
                "membership changes while running, so \"every member\" is no fixed number",
                path);
        goto done;
    }
    c->quorum = (uint32_t)quorum;
    c->deadline_s = (uint32_t)deadline;
    c->linger_s = (int)linger;
    c->fail_below_quorum = strcmp(below, "fail") == 0;

    long long max_sub = 1ll << 30;
    if (group(&x, "limits", limits_keys, N(limits_keys), 0, &g) < 0 ||
        lookup_int(&x, "limits.max_submission", 0, 1024, (long long)PAYLOAD_DELTA_MAX, &max_sub) <
            0)
        goto done;
    c->max_submission = (uint64_t)max_sub;
    /* The default bound on a member's influence (docs/policies.md,
     * "Default bounds"): no module's update may be larger than the weight
     * it changes. */
    c->max_update_ratio = AGG_MAX_UPDATE_RATIO_DEFAULT;
    config_setting_t *ratio = config_lookup(&x.cf, "limits.max_update_ratio");
    if (ratio && get_number(&x, ratio, "limits.max_update_ratio", &c->max_update_ratio) < 0)
        goto done;
    if (!(c->max_update_ratio >= 0 && c->max_update_ratio <= 1e6)) {
        err_set("%s: 'limits.max_update_ratio' must be from 0 (no bound) to 10^6, got %g", path,
                c->max_update_ratio);
        goto done;
    }
    if (config_lookup(&x.cf, "policy") && load_policy(&x, c) < 0) goto done;
    if (load_status(&x, c) < 0 || load_eval(&x, c) < 0) goto done;
    rc = 0;
done:
    config_destroy(&x.cf);
    if (rc < 0) agg_config_free(c);
    return rc;
}

static void free_list(char ***l, int *n) {
    for (int i = 0; *l && i < *n; i++) free((*l)[i]);
    free(*l);
    *l = NULL;
    *n = 0;
}

void agg_config_free(agg_config *c) {
    free(c->members);
    c->members = NULL;
    c->n_members = 0;
    free_list(&c->eval_data, &c->n_eval_data);
    free_list(&c->eval_tasks, &c->n_eval_tasks);
}
