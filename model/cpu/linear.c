/* linear.c — y = x Wᵀ + b with W (out, in), as torch.nn.Linear, plus the
 * optional adapter hook (LoRA plugs in here and nowhere else). The products
 * with W go through cpu_wgemm, which reads W in whatever dtype it is held
 * and computes at the model's precision. */
#include "model/cpu/cpu.h"

#include <string.h>

int cpu_linear_forward(model_precision prec, const model_linear *l, const real *x, real *y, int N,
                       int accumulate) {
    int in = l->in, out = l->out;
    real beta = accumulate ? 1 : 0;
    if (l->b) {
        /* Put the bias into y first, so the GEMM adds onto it (beta = 1). */
        const real *b = l->b->data;
#pragma omp parallel for if ((int64_t)N * out > 65536)
        for (int n = 0; n < N; n++) {
            real *row = y + (int64_t)n * out;
            if (accumulate) {
#pragma omp simd
                for (int o = 0; o < out; o++) row[o] += b[o];
            } else {
                memcpy(row, b, (size_t)out * sizeof(real));
            }
        }
        beta = 1;
    }
    if (cpu_wgemm(prec, 1, l->w, N, x, in, beta, y, out) != 0) return -1;
    if (l->adapter) l->adapter->forward(l->adapter_ctx, x, y, N);
    return 0;
}

int cpu_linear_needs_input(const model_linear *l) {
    return l->w->grad != NULL || l->adapter != NULL;
}

int cpu_linear_backward(model_precision prec, const model_linear *l, const real *x, const real *dy,
                        real *dx, int N, int accumulate_dx) {
    int in = l->in, out = l->out;
    /* dx (N, in) = dy (N, out) · W (out, in) */
    if (cpu_wgemm(prec, 0, l->w, N, dy, out, accumulate_dx ? 1 : 0, dx, in) != 0) return -1;
    /* dW (out, in) += dyᵀ (out, N) · x (N, in); a trained weight is `real`. */
    if (l->w->grad) cpu_gemm(1, 0, out, in, N, 1, dy, out, x, in, 1, l->w->grad, in);
    if (l->b && l->b->grad) {
        real *db = l->b->grad;
#pragma omp parallel
        {
            int64_t lo, hi;
            cpu_thread_range(out, &lo, &hi);
            for (int n = 0; n < N; n++) {
                const real *row = dy + (int64_t)n * out;
#pragma omp simd
                for (int64_t o = lo; o < hi; o++) db[o] += row[o];
            }
        }
    }
    if (l->adapter) l->adapter->backward(l->adapter_ctx, x, dy, dx, N);
    return 0;
}
