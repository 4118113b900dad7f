/* lora_test.h — helpers shared by the LoRA tests: reference tensors from
 * expected.safetensors and HF labels to shifted targets (the rest is
 * tests/support's). */
#ifndef FL_TESTS_LORA_TEST_H
#define FL_TESTS_LORA_TEST_H

#include "model/model.h"
#include "model/safetensors.h"
#include "tests/check.h"
#include "tests/support/ts_model.h"
#include "util/err.h"
#include "util/fio.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The named tensor as doubles, its element count checked; NULL after a
 * failed CHECK when absent or of another size. */
static inline double *lt_read(const safetensors_file *f, const char *name, int64_t numel) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t != NULL, "expected.safetensors has no '%s'", name);
    if (!t) return NULL;
    CHECK_MSG(t->numel == numel, "'%s' has %lld elements, wanted %lld", name, (long long)t->numel,
              (long long)numel);
    double *out = t->numel == numel ? malloc((size_t)numel * sizeof *out) : NULL;
    if (out && safetensors_to_double(t, out) != 0) {
        CHECK_MSG(0, "%s", err_msg());
        free(out);
        out = NULL;
    }
    return out;
}

/* I64 ids of shape (S, B, T) or (B, T): batch s of it as int32 (B·T). */
static inline int32_t *lt_ids(const safetensors_file *f, const char *name, int s, int *B, int *T) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t && t->dtype == SAFETENSORS_I64 && (t->ndim == 2 || t->ndim == 3),
              "expected.safetensors needs '%s' as I64 (S, B, T)", name);
    if (!t || t->dtype != SAFETENSORS_I64 || (t->ndim != 2 && t->ndim != 3)) return NULL;
    *B = (int)t->shape[t->ndim - 2];
    *T = (int)t->shape[t->ndim - 1];
    int64_t n = (int64_t)*B * *T, off = (int64_t)s * n;
    if (off + n > t->numel) return NULL;
    int32_t *out = malloc((size_t)n * sizeof *out);
    for (int64_t i = 0; out && i < n; i++) {
        int64_t v;
        memcpy(&v, t->data + 8 * (off + i), 8); /* little-endian host, as the format */
        out[i] = (int32_t)v;
    }
    return out;
}

/* HF shifts labels inside the loss: targets[b, t] = labels[b, t + 1]. */
static inline void lt_shift(int32_t *targets, const int32_t *labels, int B, int T) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            targets[b * T + t] = t + 1 < T ? labels[b * T + t + 1] : MODEL_IGNORE_INDEX;
}

#endif
