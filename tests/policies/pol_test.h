/* pol_test.h — helpers shared by the policies tests: a tiny base model,
 * members' adapters with chosen values, dense updates in double. */
#ifndef FL_TESTS_POLICIES_POL_TEST_H
#define FL_TESTS_POLICIES_POL_TEST_H

#include "tests/cpu/tiny.h"
#include "lora/lora.h"
#include "model/model.h"
#include "util/rng.h"
#include "tests/check.h"
#include "tests/support/ts_model.h"
#include "util/err.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* tests/cpu/tiny.h's Llama: hidden 16 (q_proj and o_proj are 16 × 16, k_proj and
 * v_proj 8 × 16), two layers, random weights. */
static inline model *pt_model(void) {
    model_config c = tiny_llama();
    return ts_model(&c, 7);
}

/* An adapter on targets (comma list) with rank r, alpha, A and B filled with
 * N(0, 1)·scale values from seed (B nonzero, unlike a fresh adapter). */
static inline lora_set *pt_adapter(const model *m, const char *targets, int r, double alpha,
                                   uint64_t seed, double scale) {
    lora_config c;
    lora_config_init(&c);
    c.rank = r;
    c.alpha = alpha;
    lora_set *s = NULL;
    if (lora_config_set_targets(&c, targets) == 0 && lora_create(&s, m, &c) != 0) s = NULL;
    lora_config_free(&c);
    if (!s) {
        CHECK_MSG(0, "pt_adapter: %s", err_msg());
        return NULL;
    }
    for (int t = 0; t < lora_num_tensors(s); t++) {
        model_param *p = lora_tensor(s, t);
        for (int64_t j = 0; j < p->numel; j += 2) {
            double z0, z1;
            rng_box_muller(rng_at(seed, (uint64_t)t, 1, (uint64_t)j),
                           rng_at(seed, (uint64_t)t, 2, (uint64_t)j), &z0, &z1);
            p->data[j] = (real)(scale * z0);
            if (j + 1 < p->numel) p->data[j + 1] = (real)(scale * z1);
        }
    }
    return s;
}

/* dense (out, in) += f · s · B · A of one module, in double. */
static inline void pt_dense_add(const lora_module *mod, double f, double *dense) {
    for (int o = 0; o < mod->out; o++)
        for (int i = 0; i < mod->in; i++) {
            double sum = 0;
            for (int k = 0; k < mod->rank; k++)
                sum += (double)mod->B.data[o * mod->rank + k] * mod->A.data[k * mod->in + i];
            dense[o * mod->in + i] += f * mod->scale * sum;
        }
}

/* A copy of every weight of m (to compare before and after). */
static inline real *pt_snapshot(const model *m, int64_t *n) {
    int64_t total = 0;
    for (int i = 0; i < m->n_params; i++) total += m->params[i].numel;
    real *copy = malloc((size_t)total * sizeof *copy);
    int64_t off = 0;
    for (int i = 0; copy && i < m->n_params; i++) {
        memcpy(copy + off, m->params[i].data, (size_t)m->params[i].numel * sizeof *copy);
        off += m->params[i].numel;
    }
    *n = total;
    return copy;
}

/* The weight of a module path. */
static inline real *pt_weight(const model *m, const char *path) {
    char name[MODEL_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", path);
    model_param *p = model_find_param(m, name);
    return p ? p->data : NULL;
}

#endif
