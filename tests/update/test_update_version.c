/* update_write_version (lora/update.h): the version an update makes, written
 * from a mapped base a tensor at a time.
 *
 *   - fp32 base: the bytes of update_apply on the widened model saved as
 *     fp32 (the aggregator's version before streaming), for Llama and GPT-2;
 *   - bf16 base: deterministic (the same base and update give the same
 *     bytes), only the changed weights differ from the base, and they are
 *     the stochastic rounding of update_apply's fp32 result keyed by the
 *     base's hash (checked value by value against the definition);
 *   - 200 rounds of updates of 0.3 ulp each (each below half a bf16 ulp of
 *     every weight changed) through versions written and mapped in turn end
 *     close to the fp32 accumulation, where nearest rounding (what a
 *     bf16 version without stochastic rounding would do) loses all of it;
 *   - a mapped base refuses update_apply with a message, not a crash. */
#include "lora/update.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "tests/check.h"
#include "tests/cpu/tiny.h"
#include "tests/support/ts_model.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* An update of every q_proj and up/c_fc weight: rank 2, random factors. */
static update *random_update(const model *m, uint64_t seed, double scale) {
    update *u = NULL;
    if (update_create(&u) != 0) return NULL;
    uint64_t s = seed;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (p->ndim != 2 ||
            (!strstr(p->name, "q_proj") && !strstr(p->name, "c_fc") && !strstr(p->name, "up_proj")))
            continue;
        int out = (int)p->shape[0], in = (int)p->shape[1], R = 2;
        float *B = malloc(sizeof *B * (size_t)out * R), *A = malloc(sizeof *A * (size_t)R * in);
        for (int j = 0; j < out * R; j++) B[j] = (float)(scale * tiny_uniform(&s));
        for (int j = 0; j < R * in; j++) A[j] = (float)tiny_uniform(&s);
        int rc = update_add(u, m, p->name, R, B, A);
        free(B);
        free(A);
        if (rc != 0) {
            update_free(u);
            return NULL;
        }
    }
    for (int i = 0; i < 32; i++) u->from[i] = (uint8_t)(seed * 31 + (uint64_t)i);
    return u;
}

static void check_fp32(void) {
    const char *archs[] = {"llama", "gpt2"};
    for (int a = 0; a < 2; a++) {
        char base[TS_PATH], legacy[TS_PATH], streamed[TS_PATH], pa[TS_PATH], pb[TS_PATH];
        model *src = ts_preset_model(archs[a], 3);
        CHECK(src != NULL);
        if (!src) continue;
        CHECK_OK(checkpoint_save(src, ts_path(base, "fp32_base_%s", archs[a]), "float32"));
        update *u = random_update(src, 11, 0.05);
        CHECK(u != NULL);
        model *wide = NULL, *mapped = NULL;
        CHECK_OK(checkpoint_load(&wide, base));
        CHECK_OK(checkpoint_map(&mapped, base, MODEL_PRECISION_FP32));
        if (u && wide && mapped) {
            CHECK_FAILS_WITH(update_apply(mapped, u), "held read-only");
            CHECK_OK(update_apply(wide, u));
            CHECK_OK(checkpoint_save(wide, ts_path(legacy, "fp32_legacy_%s", archs[a]), "float32"));
            CHECK_OK(update_write_version(mapped, u,
                                          ts_path(streamed, "fp32_streamed_%s", archs[a]), 1));
            CHECK_MSG(ts_same_file(ts_in(pa, legacy, "model.safetensors"),
                                   ts_in(pb, streamed, "model.safetensors")),
                      "%s: the streamed fp32 version differs from update_apply's", archs[a]);
        }
        update_free(u);
        model_free(wide);
        model_free(mapped);
        model_free(src);
    }
}

static float bf16_widen1(uint16_t h) {
    real v;
    model_values_widen(MODEL_DTYPE_BF16, &h, 1, &v);
    return (float)v;
}

static void check_bf16(void) {
    char base[TS_PATH], v1[TS_PATH], v1b[TS_PATH], pa[TS_PATH], pb[TS_PATH];
    model *src = ts_preset_model("llama", 4);
    if (!src) return;
    CHECK_OK(checkpoint_save(src, ts_path(base, "bf16_base"), "bfloat16"));
    model *mapped = NULL, *wide = NULL;
    CHECK_OK(checkpoint_map(&mapped, base, MODEL_PRECISION_FP32));
    CHECK_OK(checkpoint_load(&wide, base));
    update *u = mapped ? random_update(mapped, 12, 0.05) : NULL;
    if (!mapped || !wide || !u) {
        model_free(src), model_free(mapped), model_free(wide), update_free(u);
        return;
    }
    CHECK_OK(update_write_version(mapped, u, ts_path(v1, "bf16_v1"), 0));
    CHECK_OK(update_write_version(mapped, u, ts_path(v1b, "bf16_v1_again"), 0));
    CHECK_MSG(ts_same_file(ts_in(pa, v1, "model.safetensors"), ts_in(pb, v1b, "model.safetensors")),
              "the same base and update gave different bf16 versions");
    /* value by value: SR(update_apply(widened W)) with the documented key */
    CHECK_OK(update_apply(wide, u));
    model *out = NULL;
    CHECK_OK(checkpoint_map(&out, v1, MODEL_PRECISION_FP32));
    uint64_t key = update_version_key(u->from);
    int bad = 0, changed = 0;
    for (int i = 0; out && i < out->n_params; i++) {
        const model_param *p = &out->params[i], *b = &mapped->params[i];
        if (p->ndim != 2) continue;
        int touched = 0;
        for (int k = 0; k < u->n_modules; k++) touched |= !strcmp(u->modules[k].name, p->name);
        if (!touched) {
            bad += memcmp(p->values, b->values, (size_t)p->numel * 2) != 0;
            continue;
        }
        uint16_t *want = malloc(sizeof *want * (size_t)p->numel);
        model_values_to_bf16_stochastic(wide->params[i].data, p->numel, CHECKPOINT_SR_KEY(key, i),
                                        0, want);
        bad += memcmp(p->values, want, (size_t)p->numel * 2) != 0;
        changed += memcmp(p->values, b->values, (size_t)p->numel * 2) != 0;
        free(want);
    }
    CHECK_MSG(bad == 0, "%d tensors differ from the definition", bad);
    CHECK_MSG(changed == u->n_modules, "%d of %d changed weights moved", changed, u->n_modules);
    model_free(out);
    update_free(u);
    model_free(wide);
    model_free(mapped);
    model_free(src);
}

/* 200 rounds, each adding 0.3 ulp to every element of q_proj (values in
 * [1, 2), ulp 2^-7): the version after each written from the last, mapped. */
static void check_accumulation(void) {
    enum { ROUNDS = 200 };
    model *src = ts_preset_model("llama", 5);
    if (!src) return;
    model_param *q = model_find_param(src, "model.layers.0.self_attn.q_proj.weight");
    CHECK(q != NULL);
    if (!q) return;
    uint64_t s = 9;
    for (int64_t j = 0; j < q->numel; j++)
        q->data[j] = (real)(1.0 + 0.998 * (tiny_uniform(&s) + 1) / 2);
    char dir[2][TS_PATH], base[TS_PATH];
    CHECK_OK(checkpoint_save(src, ts_path(base, "acc_base"), "bfloat16"));
    ts_path(dir[0], "acc_a");
    ts_path(dir[1], "acc_b");
    int out = (int)q->shape[0], in = (int)q->shape[1];
    const float d = 0.3f / 128;
    float *B = malloc(sizeof *B * (size_t)out), *A = malloc(sizeof *A * (size_t)in);
    for (int i = 0; i < out; i++) B[i] = d;
    for (int j = 0; j < in; j++) A[j] = 1;
    double *acc = malloc(sizeof *acc * (size_t)q->numel);
    model *cur = NULL;
    CHECK_OK(checkpoint_map(&cur, base, MODEL_PRECISION_FP32));
    const model_param *cq = cur ? model_find_param(cur, q->name) : NULL;
    for (int64_t j = 0; cq && j < q->numel; j++)
        acc[j] = bf16_widen1(((const uint16_t *)cq->values)[j]);
    for (int r = 0; cur && r < ROUNDS; r++) {
        update *u = NULL;
        CHECK_OK(update_create(&u));
        CHECK_OK(update_add(u, cur, q->name, 1, B, A));
        for (int i = 0; i < 32; i++)
            u->from[i] = (uint8_t)(r * 7 + i * 13 + 1); /* a new base each round */
        for (int64_t j = 0; j < q->numel; j++) acc[j] += (float)(B[0] * A[0]);
        const char *next = dir[r % 2];
        CHECK_OK(update_write_version(cur, u, next, 1));
        update_free(u);
        model_free(cur);
        cur = NULL;
        CHECK_OK(checkpoint_map(&cur, next, MODEL_PRECISION_FP32));
    }
    cq = cur ? model_find_param(cur, q->name) : NULL;
    double mean = 0, rms = 0, total = ROUNDS * 0.3;
    for (int64_t j = 0; cq && j < q->numel; j++) {
        double e = (bf16_widen1(((const uint16_t *)cq->values)[j]) - acc[j]) * 128;
        mean += e / (double)q->numel;
        rms += e * e / (double)q->numel;
    }
    rms = sqrt(rms);
    printf("%d versions of +0.3 ulp (%.0f ulp in all) through update_write_version: off by %.3f "
           "ulp on average (rms %.2f) of the %.0f ulp an fp32 sum gets\n",
           ROUNDS, total, mean, rms, total);
    CHECK_MSG(cq && fabs(mean) < 0.5 && rms < 12, "the versions drifted: mean %.3f, rms %.2f", mean,
              rms);
    free(B), free(A), free(acc);
    model_free(cur);
    model_free(src);
}

int main(void) {
    check_fp32();
    check_bf16();
    check_accumulation();
    return check_finish();
}
