/* norm.c — RMSNorm and LayerNorm, forward and backward, one row per token;
 * the block's norms by kind, and QK-norm over heads or projections.
 *
 * Row statistics are summed in double. Backward (x̂ = normalized x, g = dy·w):
 *   RMSNorm:   dx = rstd · (g − x̂ · mean(g·x̂))
 *   LayerNorm: dx = rstd · (g − mean(g) − x̂ · mean(g·x̂))
 *   dw = Σ_rows dy·x̂, db = Σ_rows dy.
 * Weight gradients are summed per column by the thread owning that column,
 * so the result does not depend on scheduling. */
#include "model/cpu/cpu.h"

#define ROWS_PARALLEL(N, C) if ((int64_t)(N) * (C) > 16384)

void cpu_rmsnorm_forward(real *y, real *rstd, const real *x, const real *w, int N, int C,
                         double eps) {
#pragma omp parallel for ROWS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *xr = x + (int64_t)n * C;
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        rstd[n] = (real)(1.0 / sqrt(ss / C + eps));
    }
    cpu_rmsnorm_apply(y, x, w, rstd, N, C);
}

void cpu_rmsnorm_apply(real *y, const real *x, const real *w, const real *rstd, int N, int C) {
#pragma omp parallel for ROWS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *xr = x + (int64_t)n * C;
        real *yr = y + (int64_t)n * C, r = rstd[n];
        /* (x · rstd) · w, in HF's order of operations. */
#pragma omp simd
        for (int c = 0; c < C; c++) yr[c] = xr[c] * r * w[c];
    }
}

void cpu_rmsnorm_backward(real *dx, real *dw, const real *dy, const real *x, const real *w,
                          const real *rstd, int N, int C) {
#pragma omp parallel for ROWS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *xr = x + (int64_t)n * C, *dyr = dy + (int64_t)n * C;
        real *dxr = dx + (int64_t)n * C, r = rstd[n];
        double dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++) dot += (double)(dyr[c] * w[c]) * (xr[c] * r);
        real m = (real)(dot / C);
#pragma omp simd
        for (int c = 0; c < C; c++) dxr[c] += r * (dyr[c] * w[c] - xr[c] * r * m);
    }
    if (!dw) return;
#pragma omp parallel ROWS_PARALLEL(N, C)
    {
        int64_t lo, hi;
        cpu_thread_range(C, &lo, &hi);
        for (int n = 0; n < N; n++) {
            const real *xr = x + (int64_t)n * C, *dyr = dy + (int64_t)n * C;
            real r = rstd[n];
#pragma omp simd
            for (int64_t c = lo; c < hi; c++) dw[c] += dyr[c] * xr[c] * r;
        }
    }
}

void cpu_layernorm_forward(real *y, real *mean, real *rstd, const real *x, const real *w,
                           const real *b, int N, int C, double eps) {
#pragma omp parallel for ROWS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *xr = x + (int64_t)n * C;
        double s = 0, ss = 0;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += xr[c];
        double mu = s / C;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += (xr[c] - mu) * (xr[c] - mu);
        mean[n] = (real)mu;
        rstd[n] = (real)(1.0 / sqrt(ss / C + eps));
    }
    cpu_layernorm_apply(y, x, w, b, mean, rstd, N, C);
}

void cpu_layernorm_apply(real *y, const real *x, const real *w, const real *b, const real *mean,
                         const real *rstd, int N, int C) {
#pragma omp parallel for ROWS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *xr = x + (int64_t)n * C;
        real *yr = y + (int64_t)n * C, mu = mean[n], r = rstd[n];
#pragma omp simd
        for (int c = 0; c < C; c++) yr[c] = (xr[c] - mu) * r * w[c] + b[c];
    }
}

void cpu_layernorm_backward(real *dx, real *dw, real *db, const real *dy, const real *x,
                            const real *w, const real *mean, const real *rstd, int N, int C) {
#pragma omp parallel for ROWS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *xr = x + (int64_t)n * C, *dyr = dy + (int64_t)n * C;
        real *dxr = dx + (int64_t)n * C, mu = mean[n], r = rstd[n];
        double sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
        for (int c = 0; c < C; c++) {
            double g = (double)dyr[c] * w[c];
            sg += g;
            sgx += g * (xr[c] - mu) * r;
        }
        real mg = (real)(sg / C), mgx = (real)(sgx / C);
#pragma omp simd
        for (int c = 0; c < C; c++) dxr[c] += r * (dyr[c] * w[c] - mg - (xr[c] - mu) * r * mgx);
    }
    if (!dw && !db) return;
#pragma omp parallel ROWS_PARALLEL(N, C)
    {
        int64_t lo, hi;
        cpu_thread_range(C, &lo, &hi);
        for (int n = 0; n < N; n++) {
            const real *xr = x + (int64_t)n * C, *dyr = dy + (int64_t)n * C;
            real mu = mean[n], r = rstd[n];
            if (dw) {
#pragma omp simd
                for (int64_t c = lo; c < hi; c++) dw[c] += dyr[c] * (xr[c] - mu) * r;
            }
            if (db) {
#pragma omp simd
                for (int64_t c = lo; c < hi; c++) db[c] += dyr[c];
            }
        }
    }
}

/* ---- by the block's norm kind ------------------------------------------------ */

void cpu_norm_forward(model_norm_kind kind, const model_norm *nm, real *y, real *mean, real *rstd,
                      const real *x, int N, int C, double eps) {
    if (kind == MODEL_NORM_LAYER)
        cpu_layernorm_forward(y, mean, rstd, x, nm->w->data, nm->b->data, N, C, eps);
    else
        cpu_rmsnorm_forward(y, rstd, x, nm->w->data, N, C, eps);
}

void cpu_norm_apply(model_norm_kind kind, const model_norm *nm, real *y, const real *x,
                    const real *mean, const real *rstd, int N, int C) {
    if (kind == MODEL_NORM_LAYER)
        cpu_layernorm_apply(y, x, nm->w->data, nm->b->data, mean, rstd, N, C);
    else
        cpu_rmsnorm_apply(y, x, nm->w->data, rstd, N, C);
}

void cpu_norm_backward(model_norm_kind kind, const model_norm *nm, real *dx, const real *dy,
                       const real *x, const real *mean, const real *rstd, int N, int C) {
    if (kind == MODEL_NORM_LAYER)
        cpu_layernorm_backward(dx, nm->w->grad, nm->b->grad, dy, x, nm->w->data, mean, rstd, N, C);
    else
        cpu_rmsnorm_backward(dx, nm->w->grad, dy, x, nm->w->data, rstd, N, C);
}

/* ---- QK-norm: RMSNorm rows of the projected q (N, H·D) and k (N, KV·D) -------
 * HEAD: every head's D values are a row (N·H rows of D, weight (D));
 * PROJ: every token's whole projection is a row (N rows of H·D, weight (H·D)).
 * Both matrices are contiguous, so either view is a plain (rows, width). */

static void qk_rows(const model_config *c, int heads, int N, int *rows, int *width) {
    int head = c->block.qk_norm == MODEL_QK_NORM_HEAD;
    *rows = head ? N * heads : N;
    *width = head ? c->head_dim : heads * c->head_dim;
}

int cpu_qk_norm_rows(const model_config *c, int N) {
    int rq, rk, w;
    qk_rows(c, c->num_heads, N, &rq, &w);
    qk_rows(c, c->num_kv_heads, N, &rk, &w);
    return rq + rk;
}

void cpu_qk_norm_forward(const model_config *c, const model_layer *L, real *q, real *k,
                         const real *q_raw, const real *k_raw, real *rstd, int N) {
    int rows, width;
    qk_rows(c, c->num_heads, N, &rows, &width);
    cpu_rmsnorm_forward(q, rstd, q_raw, L->q_norm.w->data, rows, width, c->norm_eps);
    rstd += rows;
    qk_rows(c, c->num_kv_heads, N, &rows, &width);
    cpu_rmsnorm_forward(k, rstd, k_raw, L->k_norm.w->data, rows, width, c->norm_eps);
}

void cpu_qk_norm_backward(const model_config *c, const model_layer *L, real *dq_raw, real *dk_raw,
                          const real *dq, const real *dk, const real *q_raw, const real *k_raw,
                          const real *rstd, int N) {
    int rows, width;
    qk_rows(c, c->num_heads, N, &rows, &width);
    cpu_rmsnorm_backward(dq_raw, L->q_norm.w->grad, dq, q_raw, L->q_norm.w->data, rstd, rows,
                         width);
    rstd += rows;
    qk_rows(c, c->num_kv_heads, N, &rows, &width);
    cpu_rmsnorm_backward(dk_raw, L->k_norm.w->grad, dk, k_raw, L->k_norm.w->data, rstd, rows,
                         width);
}
