/* lora_target.c — the adapter's config (lora_config: targets, exclusions,
 * layers, rank and alpha patterns; lora.h) and which modules it targets:
 * module paths matched as PEFT matches them (check_target_module_exists,
 * get_pattern_key), regular expressions through PCRE2 as Python's re. */
#include "lora/lora_target.h"

#include "util/err.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LORA_LIST_MAX 100000 /* bound on names in one target list */

/* ---- config ---------------------------------------------------------------------- */

void lora_config_init(lora_config *c) {
    memset(c, 0, sizeof *c);
    c->rank = 8;
    c->alpha = 8;
}

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void free_patterns(lora_pattern *p, int n) {
    for (int i = 0; i < n; i++) free(p[i].key);
    free(p);
}

void lora_config_free(lora_config *c) {
    if (!c) return;
    free_list(c->targets, c->n_targets);
    free(c->target_regex);
    free_list(c->exclude, c->n_exclude);
    free(c->exclude_regex);
    free(c->layers);
    free_patterns(c->rank_pattern, c->n_rank_pattern);
    free_patterns(c->alpha_pattern, c->n_alpha_pattern);
    free(c->base_model);
    lora_config_init(c);
}

static int dup_str(char **dst, const char *src) {
    *dst = NULL;
    if (!src) return 0;
    *dst = strdup(src);
    return *dst ? 0 : err_set("out of memory copying the LoRA config");
}

static int dup_list(char ***dst, char *const *src, int n) {
    *dst = NULL;
    if (n == 0) return 0;
    *dst = calloc((size_t)n, sizeof **dst);
    if (!*dst) return err_set("out of memory copying the LoRA config");
    for (int i = 0; i < n; i++)
        if (dup_str(&(*dst)[i], src[i]) != 0) return -1;
    return 0;
}

static int dup_patterns(lora_pattern **dst, const lora_pattern *src, int n) {
    *dst = NULL;
    if (n == 0) return 0;
    *dst = calloc((size_t)n, sizeof **dst);
    if (!*dst) return err_set("out of memory copying the LoRA config");
    for (int i = 0; i < n; i++) {
        (*dst)[i].value = src[i].value;
        if (dup_str(&(*dst)[i].key, src[i].key) != 0) return -1;
    }
    return 0;
}

int lora_config_copy(lora_config *dst, const lora_config *src) {
    *dst = *src;
    /* Clear the borrowed pointers first, so a failure half way frees only copies. */
    dst->targets = dst->exclude = NULL;
    dst->target_regex = dst->exclude_regex = dst->base_model = NULL;
    dst->layers = NULL;
    dst->rank_pattern = dst->alpha_pattern = NULL;
    dst->n_targets = dst->n_exclude = dst->n_layers = 0;
    dst->n_rank_pattern = dst->n_alpha_pattern = 0;
    int rc = 0;
    if (dup_list(&dst->targets, src->targets, src->n_targets) == 0)
        dst->n_targets = src->n_targets;
    else
        rc = -1;
    if (rc == 0 && dup_list(&dst->exclude, src->exclude, src->n_exclude) == 0)
        dst->n_exclude = src->n_exclude;
    else
        rc = -1;
    if (rc == 0 && dup_patterns(&dst->rank_pattern, src->rank_pattern, src->n_rank_pattern) == 0)
        dst->n_rank_pattern = src->n_rank_pattern;
    else
        rc = -1;
    if (rc == 0 && dup_patterns(&dst->alpha_pattern, src->alpha_pattern, src->n_alpha_pattern) == 0)
        dst->n_alpha_pattern = src->n_alpha_pattern;
    else
        rc = -1;
    if (rc == 0 && (dup_str(&dst->target_regex, src->target_regex) != 0 ||
                    dup_str(&dst->exclude_regex, src->exclude_regex) != 0 ||
                    dup_str(&dst->base_model, src->base_model) != 0))
        rc = -1;
    if (rc == 0 && src->n_layers > 0) {
        dst->layers = malloc((size_t)src->n_layers * sizeof *dst->layers);
        if (!dst->layers)
            rc = err_set("out of memory copying the LoRA config");
        else {
            memcpy(dst->layers, src->layers, (size_t)src->n_layers * sizeof *dst->layers);
            dst->n_layers = src->n_layers;
        }
    }
    if (rc != 0) lora_config_free(dst);
    return rc;
}

int lora_config_set_targets(lora_config *c, const char *comma_list) {
    free_list(c->targets, c->n_targets);
    c->targets = NULL;
    c->n_targets = 0;
    free(c->target_regex);
    c->target_regex = NULL;
    int n = 1;
    for (const char *p = comma_list; *p; p++) n += *p == ',';
    if (n > LORA_LIST_MAX) return err_set("target_modules: more than %d names", LORA_LIST_MAX);
    char **v = calloc((size_t)n, sizeof *v);
    if (!v) return err_set("out of memory for target_modules");
    const char *p = comma_list;
    for (int i = 0; i < n; i++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0) {
            free_list(v, i);
            return err_set("target_modules \"%s\": empty module name (names are comma-separated, "
                           "e.g. q_proj,v_proj)",
                           comma_list);
        }
        v[i] = strndup(p, len);
        if (!v[i]) {
            free_list(v, i);
            return err_set("out of memory for target_modules");
        }
        p = e ? e + 1 : p + len;
    }
    c->targets = v;
    c->n_targets = n;
    return 0;
}

int lora_config_set_target_regex(lora_config *c, const char *regex) {
    free_list(c->targets, c->n_targets);
    c->targets = NULL;
    c->n_targets = 0;
    free(c->target_regex);
    return dup_str(&c->target_regex, regex);
}

static int add_pattern(lora_pattern **v, int *n, const char *key, double value, const char *what) {
    for (int i = 0; i < *n; i++)
        if (strcmp((*v)[i].key, key) == 0) return err_set("%s: key \"%s\" given twice", what, key);
    lora_pattern *nv = realloc(*v, (size_t)(*n + 1) * sizeof *nv);
    if (!nv) return err_set("out of memory for %s", what);
    *v = nv;
    if (dup_str(&nv[*n].key, key) != 0) return -1;
    nv[*n].value = value;
    (*n)++;
    return 0;
}

int lora_config_add_rank_pattern(lora_config *c, const char *key, int rank) {
    return add_pattern(&c->rank_pattern, &c->n_rank_pattern, key, rank, "rank_pattern");
}

int lora_config_add_alpha_pattern(lora_config *c, const char *key, double alpha) {
    return add_pattern(&c->alpha_pattern, &c->n_alpha_pattern, key, alpha, "alpha_pattern");
}

int lora_config_set_base_model(lora_config *c, const char *name) {
    free(c->base_model);
    return dup_str(&c->base_model, name);
}

/* ---- matching module paths as PEFT does --------------------------------------------- */

/* Python's re on subject, through PCRE2: full (re.fullmatch) or as
 * get_pattern_key's re.match(r"(.*\.)?(KEY)$"). *hit is 1 on a match. */
static int regex_match(const char *pattern, const char *subject, int full, const char *what,
                       int *hit) {
    char *wrapped = NULL;
    const char *pat = pattern;
    uint32_t opts = PCRE2_ANCHORED;
    if (full) {
        opts |= PCRE2_ENDANCHORED;
    } else {
        size_t len = strlen(pattern) + 16;
        wrapped = malloc(len);
        if (!wrapped) return err_set("out of memory matching %s", what);
        snprintf(wrapped, len, "(.*\\.)?(%s)$", pattern);
        pat = wrapped;
    }
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &code, &off, NULL);
    free(wrapped);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return err_set("%s \"%s\" is not a valid regular expression: %s", what, pattern,
                       (const char *)msg);
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) {
        pcre2_code_free(re);
        return err_set("out of memory matching %s", what);
    }
    int rc = pcre2_match(re, (PCRE2_SPTR)subject, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
        return err_set("%s \"%s\": matching \"%s\" failed (PCRE2 error %d)", what, pattern, subject,
                       rc);
    *hit = rc >= 0;
    return 0;
}

/* PEFT's suffix rule for lists: key == name or key ends with "." + name. */
int lora_target_suffix(const char *path, const char *name) {
    size_t lp = strlen(path), ln = strlen(name);
    if (lp == ln) return strcmp(path, name) == 0;
    return lp > ln && path[lp - ln - 1] == '.' && strcmp(path + lp - ln, name) == 0;
}

int lora_target_all_linear(const lora_config *c) {
    return c->n_targets == 1 && strcasecmp(c->targets[0], "all-linear") == 0;
}

/* Does the module at path (in block layer) take an adapter? Follows
 * check_target_module_exists: exclusions first, then the targets, then
 * layers_to_transform (suffix matches of a list only). */
int lora_target_match(const lora_config *c, const char *path, int layer, int *hit) {
    *hit = 0;
    int which = -1;
    if (c->exclude_regex) {
        int ex;
        if (regex_match(c->exclude_regex, path, 1, "exclude_modules", &ex) != 0) return -1;
        if (ex) return 0;
    }
    for (int i = 0; i < c->n_exclude; i++)
        if (lora_target_suffix(path, c->exclude[i])) return 0;
    if (c->target_regex) return regex_match(c->target_regex, path, 1, "target_modules", hit);
    if (lora_target_all_linear(c)) {
        *hit = 1;
        return 0;
    }
    /* A name equal to the whole path is taken as is; layers_to_transform
     * filters only suffix matches (PEFT's order of tests). */
    for (int i = 0; i < c->n_targets; i++)
        if (strcmp(path, c->targets[i]) == 0) {
            *hit = 1;
            return 0;
        }
    for (int i = 0; i < c->n_targets; i++)
        if (lora_target_suffix(path, c->targets[i])) {
            which = i;
            break;
        }
    if (which < 0) return 0;
    if (c->layers) {
        int in_list = 0;
        for (int i = 0; i < c->n_layers; i++) in_list |= c->layers[i] == layer;
        if (!in_list) return 0;
    }
    *hit = 1;
    return 0;
}

static int cmp_pattern_key(const void *a, const void *b) {
    return strcmp(((const lora_pattern *)a)->key, ((const lora_pattern *)b)->key);
}

void lora_target_sort_patterns(lora_config *c) {
    if (c->n_rank_pattern)
        qsort(c->rank_pattern, (size_t)c->n_rank_pattern, sizeof *c->rank_pattern, cmp_pattern_key);
    if (c->n_alpha_pattern)
        qsort(c->alpha_pattern, (size_t)c->n_alpha_pattern, sizeof *c->alpha_pattern,
              cmp_pattern_key);
}

/* The value of the first pattern that matches path, as get_pattern_key. */
int lora_target_pattern(const lora_pattern *p, int n, const char *path, const char *what,
                        double dflt, double *out) {
    *out = dflt;
    for (int i = 0; i < n; i++) {
        int hit;
        if (regex_match(p[i].key, path, 0, what, &hit) != 0) return -1;
        if (hit) {
            *out = p[i].value;
            return 0;
        }
    }
    return 0;
}

/* Checks the config's own values, before any module is looked at. */
int lora_target_check(const lora_config *c) {
    if (c->rank < 1)
        return err_set("LoRA rank r = %d: the rank must be at least 1 (e.g. --rank 8)", c->rank);
    if (!isfinite(c->alpha)) return err_set("lora_alpha must be a finite number");
    if (!(c->dropout >= 0 && c->dropout < 1))
        return err_set("lora_dropout = %g: it must be in [0, 1)", c->dropout);
    if (c->n_targets == 0 && !c->target_regex)
        return err_set("no LoRA target modules given (e.g. --targets q_proj,v_proj)");
    if (c->layers && (c->target_regex || lora_target_all_linear(c)))
        return err_set("layers_to_transform cannot be used when target_modules is a string (a "
                       "regular expression or all-linear); list the module names instead");
    for (int i = 0; i < c->n_rank_pattern; i++)
        if (!(c->rank_pattern[i].value >= 1 && c->rank_pattern[i].value <= 1e9 &&
              c->rank_pattern[i].value == floor(c->rank_pattern[i].value)))
            return err_set("rank_pattern \"%s\": rank %g must be a whole number of at least 1",
                           c->rank_pattern[i].key, c->rank_pattern[i].value);
    for (int i = 0; i < c->n_alpha_pattern; i++)
        if (!isfinite(c->alpha_pattern[i].value))
            return err_set("alpha_pattern \"%s\": alpha must be a finite number",
                           c->alpha_pattern[i].key);
    return 0;
}
