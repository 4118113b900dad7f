/* gpu_test.h — what the GPU tests share: skipping where there is no GPU,
 * device buffers, random data and error measures.
 *
 * A GPU test exits 77 ("skipped: no CUDA device") on a machine without one;
 * CTest counts that as skipped (SKIP_RETURN_CODE 77), so CI without GPUs
 * stays green while the CUDA code is still compiled and linked there.
 *
 * Errors are measured relative to the reference's size, so one tolerance
 * fits values of any scale:
 *   rel_max = max_i |got_i − want_i| / max(max_i |want_i|, floor)
 *   rel_l2  = ‖got − want‖₂ / max(‖want‖₂, floor)
 * Every comparison prints its measure, so a run shows the margins. */
#ifndef FL_TESTS_GPU_GPU_TEST_H
#define FL_TESTS_GPU_GPU_TEST_H

#include "gpu/gpu.h"
#include "gpu/gpu_kernels.h"
#include "tests/check.h"
#include "tests/gpu/gpu_measure.h"
#include "util/err.h"
#include "util/rng.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define GPU_TEST_SKIP 77

#define GPU_TEST_REQUIRE_DEVICE()                                                                  \
    do {                                                                                           \
        if (gpu_available() == 0) {                                                                \
            printf("skipped: no CUDA device\n");                                                   \
            return GPU_TEST_SKIP;                                                                  \
        }                                                                                          \
    } while (0)

/* A CUDA call in a test: a failure is a failed check, and the test stops
 * (the device state is unknown after it). */
#define CUDA_OK(call)                                                                              \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: CUDA error %s in %s\n", __FILE__, __LINE__,                    \
                    cudaGetErrorString(e_), #call);                                                \
            check_failed++;                                                                        \
            exit(check_finish());                                                                  \
        }                                                                                          \
    } while (0)

/* n values uniform in [−scale, scale). */
/* A storage type's name in the tests' output. */
static inline const char *gt_dtype_name(gpu_dtype t) {
    return t == GPU_BF16 ? "bf16" : "fp32";
}

static inline float *gt_rand(size_t n, uint64_t seed, float scale) {
    float *x = malloc(n * sizeof *x);
    if (!x) abort();
    for (size_t i = 0; i < n; i++)
        x[i] = scale * (float)((double)(rng_next(&seed) >> 11) / 4503599627370496.0 - 1.0);
    return x;
}

/* Rounds in place to bf16 values, so a CPU reference sees the GPU's inputs. */
static inline void gt_round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = gpu_bf16_round(x[i]);
}

/* Device copy of n host floats, stored as t. */
static inline void *gt_put(const float *h, size_t n, gpu_dtype t) {
    void *d;
    CUDA_OK(cudaMalloc(&d, n * gpu_dtype_size(t) + 16));
    if (t == GPU_F32) {
        CUDA_OK(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice));
    } else {
        uint16_t *b = malloc(n * sizeof *b + 1);
        if (!b) abort();
        for (size_t i = 0; i < n; i++) b[i] = gpu_f32_to_bf16(h[i]);
        CUDA_OK(cudaMemcpy(d, b, n * sizeof *b, cudaMemcpyHostToDevice));
        free(b);
    }
    return d;
}

/* n values of type t from the device, as floats. */
static inline void gt_get(float *h, const void *d, size_t n, gpu_dtype t) {
    CUDA_OK(cudaDeviceSynchronize());
    if (t == GPU_F32) {
        CUDA_OK(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
        return;
    }
    uint16_t *b = malloc(n * sizeof *b + 1);
    if (!b) abort();
    CUDA_OK(cudaMemcpy(b, d, n * sizeof *b, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) h[i] = gpu_bf16_to_f32(b[i]);
    free(b);
}

/* Checks rel_max <= tol and prints the measure. */
#define GT_CLOSE(what, got, want, n, tol)                                                          \
    do {                                                                                           \
        double e_ = gt_rel_max((got), (want), (n), 1e-30);                                         \
        printf("  %-44s rel_max %.3e (tol %.0e)%s\n", (what), e_, (double)(tol),                   \
               e_ <= (tol) ? "" : "  FAIL");                                                       \
        CHECK_MSG(e_ <= (tol), "%s: rel_max %.3e > %.0e", (what), e_, (double)(tol));              \
    } while (0)

#endif
