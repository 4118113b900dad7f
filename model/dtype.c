/* dtype.c — parameter values held in a dtype other than `real`.
 *
 * A checkpoint's frozen weights stay in the dtype they were saved in (bf16
 * for every large open model today), so memory is what the file holds, not
 * 2x or 4x it. This file is the one place that turns those bits into
 * numbers (widening, exact) and back (narrowing to bf16, round to nearest
 * even, as torch's .to(torch.bfloat16)). */
#include "model/cpu/cpu.h"
#include "model/safetensors.h"
#include "util/err.h"
#include "util/rng.h"

#include <stdlib.h>
#include <string.h>

size_t model_dtype_size(model_dtype t) {
    switch (t) {
        case MODEL_DTYPE_F32:
            return 4;
        case MODEL_DTYPE_F64:
            return 8;
        case MODEL_DTYPE_BF16:
        case MODEL_DTYPE_F16:
            return 2;
    }
    return 0;
}

const char *model_dtype_name(model_dtype t) {
    switch (t) {
        case MODEL_DTYPE_F32:
            return "F32";
        case MODEL_DTYPE_F64:
            return "F64";
        case MODEL_DTYPE_BF16:
            return "BF16";
        case MODEL_DTYPE_F16:
            return "F16";
    }
    return "?";
}

const char *model_precision_name(model_precision p) {
    return p == MODEL_PRECISION_BF16 ? "bf16" : "fp32";
}

/* bf16 is the top half of an fp32: widening is a shift, exact. */
CPU_CLONES static void bf16_widen(const uint16_t *src, int64_t n, real *dst) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        dst[i] = f;
    }
}

void model_values_widen(model_dtype t, const void *src, int64_t n, real *dst) {
    switch (t) {
        case MODEL_DTYPE_BF16:
            bf16_widen(src, n, dst);
            return;
        case MODEL_DTYPE_F16: {
            const uint16_t *h = src;
            for (int64_t i = 0; i < n; i++) dst[i] = safetensors_f16_to_f32(h[i]);
            return;
        }
        case MODEL_DTYPE_F32: {
            const float *f = src;
            for (int64_t i = 0; i < n; i++) dst[i] = f[i];
            return;
        }
        case MODEL_DTYPE_F64: {
            const double *d = src;
            for (int64_t i = 0; i < n; i++) dst[i] = (real)d[i];
            return;
        }
    }
}

/* Round to nearest, ties to even: add 0x7fff plus the lowest kept bit, then
 * truncate; a NaN stays a (quiet) NaN instead of rounding into infinity. */
CPU_CLONES static void to_bf16(const real *src, int64_t n, uint16_t *dst) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float f = (float)src[i];
        uint32_t u;
        memcpy(&u, &f, 4);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        uint32_t nan = (u >> 16) | 0x40u;
        dst[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
    }
}

void model_values_to_bf16(const real *src, int64_t n, uint16_t *dst) {
    to_bf16(src, n, dst);
}

/* The public random bits of stochastic rounding: SplitMix64's finalizer
 * (util/rng.h) over the key and the element's index, so that any
 * machine draws the same bit pattern for the same element. */
static inline uint64_t sr_bits(uint64_t key, uint64_t index) {
    return rng_mix64(key + (index + 1) * 0x9E3779B97F4A7C15ull);
}

/* x's fp32 bits u = (t << 16) | r: t is x truncated to bf16 (toward zero)
 * and r/65536 how far x lies from t towards the next bf16 away from zero,
 * exactly (within a binade both grids are uniform). Rounding away with
 * probability r/65536 makes E[bf16(x)] = x: small updates survive in
 * expectation, where round-to-nearest drops every one below half an ulp. */
CPU_CLONES static void to_bf16_sr(const real *src, int64_t n, uint64_t key, int64_t first,
                                  uint16_t *dst) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float f = (float)src[i];
        uint32_t u;
        memcpy(&u, &f, 4);
        uint32_t r = u & 0xffffu, t = u >> 16;
        uint32_t draw = (uint32_t)(sr_bits(key, (uint64_t)(first + i)) >> 48);
        uint32_t nan = t | 0x40u;
        uint32_t out = t + (draw < r ? 1u : 0u);
        dst[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : out);
    }
}

void model_values_to_bf16_stochastic(const real *src, int64_t n, uint64_t key, int64_t first,
                                     uint16_t *dst) {
    to_bf16_sr(src, n, key, first, dst);
}

void model_param_read(const model_param *p, int64_t off, int64_t n, real *out) {
    const unsigned char *v = p->values;
    if (p->dtype == MODEL_DTYPE_REAL) {
        memcpy(out, (const real *)p->values + off, (size_t)n * sizeof(real));
        return;
    }
    model_values_widen(p->dtype, v + (size_t)off * model_dtype_size(p->dtype), n, out);
}

void model_param_add(const model_param *p, int64_t off, int64_t n, real *acc) {
    const unsigned char *v =
        (const unsigned char *)p->values + (size_t)off * model_dtype_size(p->dtype);
    switch (p->dtype) {
        case MODEL_DTYPE_BF16: {
            const uint16_t *b = (const uint16_t *)v;
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                uint32_t u = (uint32_t)b[i] << 16;
                float f;
                memcpy(&f, &u, 4);
                acc[i] += f;
            }
            return;
        }
        case MODEL_DTYPE_F16: {
            const uint16_t *h = (const uint16_t *)v;
            for (int64_t i = 0; i < n; i++) acc[i] += safetensors_f16_to_f32(h[i]);
            return;
        }
        case MODEL_DTYPE_F32: {
            const float *f = (const float *)v;
            for (int64_t i = 0; i < n; i++) acc[i] += f[i];
            return;
        }
        case MODEL_DTYPE_F64: {
            const double *d = (const double *)v;
            for (int64_t i = 0; i < n; i++) acc[i] += (real)d[i];
            return;
        }
    }
}

void model_values_transpose(void *dst, const void *src, int64_t rows, int64_t cols, size_t es) {
    /* 32x32 tiles, so that both sides stay in cache; elements are copied as
     * bytes, so src may be unaligned (a mapped file's tensor). */
    enum { TILE = 32 };
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (int64_t r0 = 0; r0 < rows; r0 += TILE)
        for (int64_t c0 = 0; c0 < cols; c0 += TILE) {
            int64_t r1 = r0 + TILE < rows ? r0 + TILE : rows;
            int64_t c1 = c0 + TILE < cols ? c0 + TILE : cols;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++)
                    memcpy(d + (size_t)(c * rows + r) * es, s + (size_t)(r * cols + c) * es, es);
        }
}

void model_param_disk_shape(const model_param *p, int64_t shape[2]) {
    shape[0] = p->conv1d ? p->shape[1] : p->shape[0];
    shape[1] = p->conv1d ? p->shape[0] : p->shape[1];
}

int64_t model_values_bytes(const model *m) {
    int64_t total = 0;
    for (int i = 0; i < m->n_params; i++)
        total += m->params[i].numel * (int64_t)model_dtype_size(m->params[i].dtype);
    return total;
}

int model_set_precision(model *m, model_precision prec) {
    if (prec == MODEL_PRECISION_BF16) {
#ifdef FL_REAL_F64
        return err_set("bf16 precision is not available in the fp64 build");
#else
        if (cpu_bf16_check() != 0) return -1;
        /* Weights saved in another dtype get a bf16 copy: the GEMMs then read
         * 2 bytes per weight, as autocast's cast of each weight does, but
         * once instead of at every step. Their writable fp32 values, if any,
         * are dropped (data = NULL), so nothing can change one copy and not
         * the other. */
        for (int i = 0; i < m->n_params; i++) {
            model_param *p = &m->params[i];
            /* Only frozen weight matrices: their GEMMs are what the precision decides. */
            if (p->ndim != 2 || p->grad || p->dtype == MODEL_DTYPE_BF16) continue;
            enum { CHUNK = 1 << 16 };
            uint16_t *b = malloc((size_t)p->numel * sizeof *b);
            real *tmp = malloc(CHUNK * sizeof *tmp);
            if (!b || !tmp) {
                free(b);
                free(tmp);
                return err_set("out of memory for the bf16 copy of %s", p->name);
            }
            for (int64_t j = 0; j < p->numel; j += CHUNK) {
                int64_t k = p->numel - j < CHUNK ? p->numel - j : CHUNK;
                model_param_read(p, j, k, tmp);
                model_values_to_bf16(tmp, k, b + j);
            }
            free(tmp);
            free(p->owned);
            p->owned = b;
            p->values = b;
            p->dtype = MODEL_DTYPE_BF16;
            p->data = NULL;
        }
#endif
    }
    m->precision = prec;
    return 0;
}
