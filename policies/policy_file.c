/* policy_file.c — the policy file, read with libconfig (policy.h).
 *
 * Every key is declared once in the table below (group, name, type, range,
 * destination); the reader walks the file, not the table, so a key the table
 * does not know is an error naming it, and a key that appears is checked for
 * type and range at its line. A policy is one self-contained file: libconfig's
 * @include is refused, so what the operators audit is all there is. */
#include "policies/policy.h"

#include "util/err.h"
#include "util/fio.h"

#include <libconfig.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { K_DOUBLE, K_INT, K_INT64, K_BOOL, K_ENUM } key_type;

typedef struct {
    const char *group; /* "" for a top-level key */
    const char *name;
    key_type type;
    double lo, hi;              /* K_DOUBLE, K_INT, K_INT64: accepted range */
    const char *const *choices; /* K_ENUM: NULL-terminated names, value = index */
    size_t offset;              /* into policy */
} key_spec;

static const char *const modes[] = {"production", "test", NULL};
static const char *const weight_by[] = {"tokens", "examples", "equal", NULL};
static const char *const rules[] = {"mean", "median", "trimmed_mean", "krum", NULL};
static const char *const merges[] = {"exact", "fedit", "svd", NULL};
static const char *const below[] = {"wait", "fail", NULL};
static const char *const starts[] = {"auto", "own", "shared", "global", NULL};

#define OFF(field) offsetof(policy, field)
static const key_spec keys[] = {
    {"", "mode", K_ENUM, 0, 0, modes, OFF(mode)},
    {"", "test_seed", K_INT64, 0, 9.2e18, NULL, OFF(test_seed)},
    {"weighting", "by", K_ENUM, 0, 0, weight_by, OFF(weighting.by)},
    {"weighting", "cap", K_DOUBLE, 0, 1, NULL, OFF(weighting.cap)},
    {"validation", "max_norm", K_DOUBLE, 0, INFINITY, NULL, OFF(validation.max_norm)},
    {"validation", "max_rank", K_INT, 0, 1 << 16, NULL, OFF(validation.max_rank)},
    {"robust", "rule", K_ENUM, 0, 0, rules, OFF(robust.rule)},
    {"robust", "trim_beta", K_DOUBLE, 0, 0.5, NULL, OFF(robust.trim_beta)},
    {"robust", "krum_f", K_INT, 0, 1 << 20, NULL, OFF(robust.krum_f)},
    {"robust", "krum_m", K_INT, 0, 1 << 20, NULL, OFF(robust.krum_m)},
    {"robust", "clip_norm", K_DOUBLE, 0, INFINITY, NULL, OFF(robust.clip_norm)},
    {"merge", "mode", K_ENUM, 0, 0, merges, OFF(merge.mode)},
    {"merge", "svd_rank", K_INT, 1, 1 << 16, NULL, OFF(merge.svd_rank)},
    {"merge", "svd_oversample", K_INT, 0, 1 << 12, NULL, OFF(merge.svd_oversample)},
    {"merge", "svd_power_iters", K_INT, 0, 64, NULL, OFF(merge.svd_power_iters)},
    {"merge", "block_bytes", K_INT64, 1 << 20, 9.2e18, NULL, OFF(merge.block_bytes)},
    {"merge", "start", K_ENUM, 0, 0, starts, OFF(merge.start)},
    {"dp", "enabled", K_BOOL, 0, 0, NULL, OFF(dp.enabled)},
    {"dp", "clip", K_DOUBLE, 0, INFINITY, NULL, OFF(dp.clip)},
    {"dp", "noise_multiplier", K_DOUBLE, 0, INFINITY, NULL, OFF(dp.noise_multiplier)},
    {"dp", "delta", K_DOUBLE, 0, 1, NULL, OFF(dp.delta)},
    {"dp", "epsilon_budget", K_DOUBLE, 0, INFINITY, NULL, OFF(dp.epsilon_budget)},
    {"dp", "weight_saturation", K_DOUBLE, 0, INFINITY, NULL, OFF(dp.weight_saturation)},
    {"dp", "expected_weight", K_DOUBLE, 0, INFINITY, NULL, OFF(dp.expected_weight)},
    {"rounds", "quorum", K_INT, 1, 1 << 20, NULL, OFF(rounds.quorum)},
    {"rounds", "deadline_s", K_DOUBLE, 0, INFINITY, NULL, OFF(rounds.deadline_s)},
    {"rounds", "fraction", K_DOUBLE, 0, 1, NULL, OFF(rounds.fraction)},
    {"rounds", "below_quorum", K_ENUM, 0, 0, below, OFF(rounds.below_quorum)},
    {"rounds", "max_rounds", K_INT, 0, 1 << 30, NULL, OFF(rounds.max_rounds)},
};
#undef OFF

static int is_group_name(const char *name) {
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (keys[i].group[0] && !strcmp(keys[i].group, name)) return 1;
    return 0;
}

static int read_key(policy *p, const key_spec *k, const config_setting_t *s, const char *where) {
    char full[96];
    snprintf(full, sizeof full, "%s%s%s", k->group, k->group[0] ? "." : "", k->name);
    int line = config_setting_source_line(s);
    char *dst = (char *)p + k->offset;
    int type = config_setting_type(s);
    switch (k->type) {
        case K_DOUBLE: {
            if (type != CONFIG_TYPE_FLOAT && type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
                return err_set("%s, line %d: %s must be a number", where, line, full);
            double v = type == CONFIG_TYPE_FLOAT ? config_setting_get_float(s)
                                                 : (double)config_setting_get_int64(s);
            if (!(isfinite(v) && v >= k->lo && v <= k->hi))
                return err_set("%s, line %d: %s must be in [%g, %g], got %g", where, line, full,
                               k->lo, k->hi, v);
            memcpy(dst, &v, sizeof v);
            return 0;
        }
        case K_INT:
        case K_INT64: {
            if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
                return err_set("%s, line %d: %s must be an integer", where, line, full);
            long long v = config_setting_get_int64(s);
            if ((double)v < k->lo || (double)v > k->hi)
                return err_set("%s, line %d: %s must be in [%.0f, %.0f], got %lld", where, line,
                               full, k->lo, k->hi, v);
            if (k->type == K_INT) {
                int iv = (int)v;
                memcpy(dst, &iv, sizeof iv);
            } else {
                int64_t iv = v;
                memcpy(dst, &iv, sizeof iv);
            }
            return 0;
        }
        case K_BOOL: {
            if (type != CONFIG_TYPE_BOOL)
                return err_set("%s, line %d: %s must be true or false", where, line, full);
            int v = config_setting_get_bool(s);
            memcpy(dst, &v, sizeof v);
            return 0;
        }
        case K_ENUM: {
            const char *v = type == CONFIG_TYPE_STRING ? config_setting_get_string(s) : NULL;
            for (int i = 0; v && k->choices[i]; i++)
                if (!strcmp(v, k->choices[i])) {
                    memcpy(dst, &i, sizeof i); /* the enums are int-sized, value = index */
                    return 0;
                }
            char list[128] = "";
            for (int i = 0; k->choices[i]; i++) {
                size_t n = strlen(list);
                snprintf(list + n, sizeof list - n, "%s\"%s\"", i ? ", " : "", k->choices[i]);
            }
            return err_set("%s, line %d: %s must be one of %s", where, line, full, list);
        }
    }
    return err_set("%s: internal error reading %s", where, full);
}

/* The settings of one group (group "" is the root), each matched to the table. */
static int read_group(policy *p, const config_setting_t *g, const char *group, const char *where) {
    int n = config_setting_length(g);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        if (!name) continue;
        if (!group[0] && config_setting_is_group(s) && is_group_name(name)) {
            if (read_group(p, s, name, where) != 0) return -1;
            continue;
        }
        const key_spec *k = NULL;
        for (size_t j = 0; j < sizeof keys / sizeof keys[0] && !k; j++)
            if (!strcmp(keys[j].group, group) && !strcmp(keys[j].name, name)) k = &keys[j];
        if (!k)
            return err_set("%s, line %d: unknown key '%s%s%s' (docs/policies.md lists the keys)",
                           where, config_setting_source_line(s), group, group[0] ? "." : "", name);
        if (read_key(p, k, s, where) != 0) return -1;
    }
    return 0;
}

int policy_parse(policy *p, const char *text, size_t len, const char *where) {
    policy_defaults(p);
    if (memchr(text, '\0', len))
        return err_set("%s: the policy file contains a NUL byte; it must be text", where);
    char *copy = malloc(len + 1);
    if (!copy) return err_set("%s: out of memory reading the policy", where);
    memcpy(copy, text, len);
    copy[len] = '\0';
    int rc = 0;
    if (strcasestr(copy, "@include"))
        rc = err_set("%s: @include is not allowed: a policy is one self-contained file", where);
    config_t cfg;
    config_init(&cfg);
    if (rc == 0 && config_read_string(&cfg, copy) != CONFIG_TRUE)
        rc = err_set("%s, line %d: %s", where, config_error_line(&cfg),
                     config_error_text(&cfg) ? config_error_text(&cfg) : "syntax error");
    if (rc == 0) rc = read_group(p, config_root_setting(&cfg), "", where);
    config_destroy(&cfg);
    free(copy);
    if (rc == 0 && policy_check(p) != 0) rc = err_context("%s", where);
    return rc;
}

int policy_load(policy *p, const char *path) {
    char *text;
    size_t len;
    if (fio_read_all(path, POLICY_FILE_MAX, &text, &len) != 0)
        return err_context("reading policy file");
    int rc = policy_parse(p, text, len, path);
    free(text);
    return rc;
}
