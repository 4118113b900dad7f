/* ts_model.h — models for tests and how far two sets of numbers are apart
 * (the worst element: how much, where, and the two values there, so that a
 * failure message points at it). Built against fl_model_f32 or fl_model_f64
 * (`real` is float or double). The tiny test graphs themselves are
 * tests/cpu/tiny.h's. */
#ifndef FL_TESTS_SUPPORT_TS_MODEL_H
#define FL_TESTS_SUPPORT_TS_MODEL_H

#include "model/checkpoint.h"
#include "model/model.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/support/ts.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>

/* ---- models ------------------------------------------------------------------------------ */

/* A model of cfg with random weights (model_init_random from seed); NULL
 * after a failed CHECK. */
static inline model *ts_model(const model_config *cfg, uint64_t seed) {
    model *m = NULL;
    CHECK_OK(model_create(&m, cfg));
    if (m) model_init_random(m, seed);
    return m;
}

/* init-model's "tiny" preset of arch ("llama", "gpt2"), random weights. */
static inline model *ts_preset_model(const char *arch, uint64_t seed) {
    model_config cfg;
    if (model_config_preset(&cfg, arch, "tiny") != 0) {
        CHECK_MSG(0, "%s", err_msg());
        return NULL;
    }
    return ts_model(&cfg, seed);
}

/* config.json text that parses, is saved and read back to the same config
 * (what is written is what is read); i names it in the message. */
static inline void ts_config_round_trip(const char *json, size_t i) {
    model_config a, b;
    CHECK_OK(model_config_parse(&a, json, strlen(json), "test/config.json"));
    const char *path = ts_tmp("saved-config.json");
    CHECK_OK(model_config_save(&a, path));
    CHECK_OK(model_config_load(&b, path));
    CHECK_MSG(memcmp(&a, &b, sizeof a) == 0, "config %zu changed in a save/load round trip", i);
}

/* arch's tiny preset builds, with as many parameters in the table as the
 * config's count says; the model (NULL after a failed CHECK). */
static inline model *ts_preset_counted(const char *arch) {
    model_config c;
    model *m = NULL;
    CHECK_OK(model_config_preset(&c, arch, "tiny"));
    CHECK_OK(model_create(&m, &c));
    if (!m) return NULL;
    long long table = 0;
    for (int p = 0; p < m->n_params; p++)
        if (!m->params[p].buffer && m->params[p].name[0]) table += m->params[p].numel;
    CHECK_MSG(table == model_config_num_params(&c), "%s tiny: table %lld, formula %lld", arch,
              table, model_config_num_params(&c));
    return m;
}

/* A model directory like init-model's: the preset's tiny shape with weights
 * of standard deviation init_range from seed, and the byte-level tokenizer
 * (ids 0..255 are bytes, 256 is <|endoftext|>, the model's bos and eos).
 * tweak, when given, edits the config before the model is made. */
static inline int ts_model_dir(const char *dir, const char *arch, double init_range, uint64_t seed,
                               void (*tweak)(model_config *)) {
    model_config cfg;
    model *m = NULL;
    if (model_config_preset(&cfg, arch, "tiny") != 0) return -1;
    cfg.bos_token_id = cfg.eos_token_id = 256;
    cfg.initializer_range = init_range;
    if (tweak) tweak(&cfg);
    if (model_create(&m, &cfg) != 0) return -1;
    model_init_random(m, seed);
    int rc = checkpoint_save(m, dir, "float32");
    model_free(m);
    char path[TS_PATH];
    tokenizer_special_token eot = {"<|endoftext|>", 256};
    return rc == 0 ? tokenizer_save_bytelevel(ts_in(path, dir, "tokenizer.json"), &eot, 1, NULL)
                   : -1;
}

/* ---- differences ------------------------------------------------------------------------- */

typedef struct {
    double diff;      /* the largest |got − want| */
    int64_t at;       /* its index (-1: no elements) */
    double got, want; /* the two values there */
} ts_worst;

/* The worst of n values; want NULL compares against 0 (max |got|). */
static inline ts_worst ts_worst_real(const real *got, const real *want, int64_t n) {
    ts_worst w = {0, -1, 0, 0};
    for (int64_t i = 0; got && i < n; i++) {
        double g = (double)got[i], v = want ? (double)want[i] : 0.0, d = fabs(g - v);
        if (d > w.diff || w.at < 0) w = (ts_worst){d, i, g, v};
    }
    return w;
}

/* The same against a reference in double (a fixture's, or a loop's). */
static inline ts_worst ts_worst_ref(const real *got, const double *want, int64_t n) {
    ts_worst w = {0, -1, 0, 0};
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (d > w.diff || w.at < 0) w = (ts_worst){d, i, (double)got[i], want[i]};
    }
    return w;
}

/* Over every parameter of two models of one shape; *param (may be NULL)
 * names the parameter of the worst element. */
static inline ts_worst ts_worst_model(const model *got, const model *want, const char **param) {
    ts_worst w = {0, -1, 0, 0};
    for (int i = 0; i < got->n_params && i < want->n_params; i++) {
        ts_worst p = ts_worst_real(got->params[i].data, want->params[i].data, got->params[i].numel);
        if (p.at >= 0 && (p.diff > w.diff || w.at < 0)) {
            w = p;
            if (param) *param = got->params[i].name;
        }
    }
    return w;
}

/* max |got − want| (want NULL: max |got|). */
static inline double ts_max_diff(const real *got, const real *want, int64_t n) {
    return ts_worst_real(got, want, n).diff;
}

/* max |got − ref| against a double reference. */
static inline double ts_max_err(const real *got, const double *ref, int64_t n) {
    return ts_worst_ref(got, ref, n).diff;
}

/* max |got − ref| / max |ref| (the absolute error when ref is all 0). */
static inline double ts_rel_err(const real *got, const double *ref, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s = fmax(s, fabs(ref[i]));
    double e = ts_max_err(got, ref, n);
    return s > 0 ? e / s : e;
}

/* "1.2e-05 at 17 (0.5012 vs 0.5)", for a failure message. */
static inline const char *ts_worst_text(const ts_worst *w, char *buf, size_t n) {
    snprintf(buf, n, "%.3g at %lld (%.9g vs %.9g)", w->diff, (long long)w->at, w->got, w->want);
    return buf;
}

#endif
