/* gpu_measure.h — the error measures of the GPU tests (gpu_test.h), without
 * any CUDA header, so tests that reach the backend through its module
 * (test_gpu_trainer.c) use them too:
 *   rel_max = max_i |got_i − want_i| / max(max_i |want_i|, floor)
 *   rel_l2  = ‖got − want‖₂ / max(‖want‖₂, floor)
 * A NaN anywhere counts as an infinite error. */
#ifndef FL_TESTS_GPU_GPU_MEASURE_H
#define FL_TESTS_GPU_GPU_MEASURE_H

#include <math.h>
#include <stddef.h>

static inline double gt_rel_max(const float *got, const float *want, size_t n, double floor_) {
    double d = 0, m = floor_;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= d)) d = e; /* NaN counts as an infinite error */
        if (fabs((double)want[i]) > m) m = fabs((double)want[i]);
    }
    return d / m;
}

static inline double gt_rel_l2(const float *got, const float *want, size_t n, double floor_) {
    double d = 0, w = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - want[i];
        d += e * e;
        w += (double)want[i] * want[i];
    }
    double den = sqrt(w) > floor_ ? sqrt(w) : floor_;
    return isnan(d) ? INFINITY : sqrt(d) / den;
}

#endif
