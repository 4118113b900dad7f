/* ops.c — activations, embedding lookups and the cross-entropy loss. */
#include "model/cpu/cpu.h"

/* Elementwise ops: OpenMP threads take contiguous spans, and a span is one
 * SIMD loop (in a CPU_CLONES function, so it gets AVX2 where there is some). */
#define ELEMS_PARALLEL(n) if ((n) > 32768)

/* Runs `call` on each OpenMP thread with its span [lo_, hi_) of n items
 * (parallel above the same size as ELEMS_PARALLEL). */
#define FOR_SPANS(n, call)                                                                         \
    do {                                                                                           \
        int64_t n_ = (n);                                                                          \
        _Pragma("omp parallel if (n_ > 32768)") {                                                  \
            int64_t lo_, hi_;                                                                      \
            cpu_thread_range(n_, &lo_, &hi_);                                                      \
            call;                                                                                  \
        }                                                                                          \
    } while (0)

CPU_CLONES static void ops_swiglu_fwd_span(real *act, const real *g, const real *u, int64_t lo,
                                           int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        real s = 1 / (1 + cpu_exp(-g[i]));
        act[i] = g[i] * s * u[i];
    }
}

void cpu_swiglu_forward(real *act, const real *g, const real *u, int64_t n) {
    FOR_SPANS(n, ops_swiglu_fwd_span(act, g, u, lo_, hi_));
}

/* d silu(g)/dg = s (1 + g (1 − s)), s = sigmoid(g). */
CPU_CLONES static void ops_swiglu_bwd_span(real *dg, real *du, const real *dact, const real *g,
                                           const real *u, int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        real s = 1 / (1 + cpu_exp(-g[i])), d = dact[i];
        du[i] = d * g[i] * s;
        dg[i] = d * u[i] * s * (1 + g[i] * (1 - s));
    }
}

void cpu_swiglu_backward(real *dg, real *du, const real *dact, const real *g, const real *u,
                         int64_t n) {
    FOR_SPANS(n, ops_swiglu_bwd_span(dg, du, dact, g, u, lo_, hi_));
}

#define GELU_K ((real)0.7978845608028654) /* sqrt(2/pi) */
#define GELU_C ((real)0.044715)

CPU_CLONES static void ops_gelu_fwd_span(real *y, const real *x, int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        real v = x[i];
        y[i] = (real)0.5 * v * (1 + cpu_tanh(GELU_K * (v + GELU_C * v * v * v)));
    }
}

void cpu_gelu_forward(real *y, const real *x, int64_t n) {
    FOR_SPANS(n, ops_gelu_fwd_span(y, x, lo_, hi_));
}

/* gelu'(x) = 0.5 (1 + t) + 0.5 x (1 − t²) k (1 + 3c x²), t = tanh(k (x + c x³)). */
CPU_CLONES static void ops_gelu_bwd_span(real *dx, const real *dy, const real *x, int64_t lo,
                                         int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        real v = x[i];
        real t = cpu_tanh(GELU_K * (v + GELU_C * v * v * v));
        real d =
            (real)0.5 * (1 + t) + (real)0.5 * v * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * v * v);
        dx[i] = dy[i] * d;
    }
}

void cpu_gelu_backward(real *dx, const real *dy, const real *x, int64_t n) {
    FOR_SPANS(n, ops_gelu_bwd_span(dx, dy, x, lo_, hi_));
}

/* GeGLU (Shazeer 2020; Gemma's MLP): act = gelu_tanh(g) · u, the GELU
 * rounded before the product as transformers' act_fn(gate) * up. */
CPU_CLONES static void ops_geglu_fwd_span(real *act, const real *g, const real *u, int64_t lo,
                                          int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        real v = g[i];
        real a = (real)0.5 * v * (1 + cpu_tanh(GELU_K * (v + GELU_C * v * v * v)));
        act[i] = a * u[i];
    }
}

void cpu_geglu_forward(real *act, const real *g, const real *u, int64_t n) {
    FOR_SPANS(n, ops_geglu_fwd_span(act, g, u, lo_, hi_));
}

/* du = dact · gelu(g), dg = dact · u · gelu'(g) (gelu' as cpu_gelu_backward). */
CPU_CLONES static void ops_geglu_bwd_span(real *dg, real *du, const real *dact, const real *g,
                                          const real *u, int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        real v = g[i], d = dact[i];
        real t = cpu_tanh(GELU_K * (v + GELU_C * v * v * v));
        real a = (real)0.5 * v * (1 + t);
        real da =
            (real)0.5 * (1 + t) + (real)0.5 * v * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * v * v);
        du[i] = d * a;
        dg[i] = d * u[i] * da;
    }
}

void cpu_geglu_backward(real *dg, real *du, const real *dact, const real *g, const real *u,
                        int64_t n) {
    FOR_SPANS(n, ops_geglu_bwd_span(dg, du, dact, g, u, lo_, hi_));
}

void cpu_embed_forward(real *x, const int32_t *tokens, const model_param *wte,
                       const model_param *wpe, int t0, int N, int T, int C) {
#pragma omp parallel for ELEMS_PARALLEL((int64_t)N *C)
    for (int n = 0; n < N; n++) {
        real *xr = x + (int64_t)n * C;
        model_param_read(wte, (int64_t)tokens[n] * C, C, xr);
        if (wpe) model_param_add(wpe, (int64_t)(t0 + n % T) * C, C, xr);
    }
}

/* Rows may repeat a token, so threads split the columns, not the rows. */
void cpu_embed_backward(real *dwte, real *dwpe, const real *dx, const int32_t *tokens, int N, int T,
                        int C) {
#pragma omp parallel ELEMS_PARALLEL((int64_t)N *C)
    {
        int64_t lo, hi;
        cpu_thread_range(C, &lo, &hi);
        for (int n = 0; n < N; n++) {
            const real *g = dx + (int64_t)n * C;
            if (dwte) {
                real *e = dwte + (int64_t)tokens[n] * C;
#pragma omp simd
                for (int64_t c = lo; c < hi; c++) e[c] += g[c];
            }
            if (dwpe) {
                real *p = dwpe + (int64_t)(n % T) * C;
#pragma omp simd
                for (int64_t c = lo; c < hi; c++) p[c] += g[c];
            }
        }
    }
}

/* Eight running maxima, so that the comparisons vectorize without assuming
 * the absence of NaNs (a max reduction would need -ffinite-math-only). */
CPU_CLONES static real ops_row_max(const real *x, int n) {
    real m[8];
    for (int k = 0; k < 8; k++) m[k] = x[0];
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    real mx = m[0];
    for (int k = 1; k < 8; k++) mx = m[k] > mx ? m[k] : mx;
    return mx;
}

real cpu_row_max(const real *x, int n) {
    return ops_row_max(x, n);
}

/* Blocks of 256 are summed in SIMD at the working precision, the block sums
 * in double: vectorized, and within ~1e-7 relative of a double sum. */
#define SUM_BLOCK 256

CPU_CLONES static double ops_row_sum_exp(real *y, const real *x, int n, real shift) {
    double s = 0;
    for (int i0 = 0; i0 < n; i0 += SUM_BLOCK) {
        int i1 = i0 + SUM_BLOCK < n ? i0 + SUM_BLOCK : n;
        real bs = 0;
        if (y) {
#pragma omp simd reduction(+ : bs)
            for (int i = i0; i < i1; i++) {
                y[i] = cpu_exp(x[i] - shift);
                bs += y[i];
            }
        } else {
#pragma omp simd reduction(+ : bs)
            for (int i = i0; i < i1; i++) bs += cpu_exp(x[i] - shift);
        }
        s += bs;
    }
    return s;
}

double cpu_row_sum_exp(real *y, const real *x, int n, real shift) {
    return ops_row_sum_exp(y, x, n, shift);
}

CPU_CLONES static void ops_row_exp(real *x, int n, real shift, real scale) {
#pragma omp simd
    for (int i = 0; i < n; i++) x[i] = scale * cpu_exp(x[i] - shift);
}

void cpu_row_exp(real *x, int n, real shift, real scale) {
    ops_row_exp(x, n, shift, scale);
}

void cpu_xent_forward(double *lse, double *row_loss, const real *logits, const int32_t *targets,
                      int N, int V) {
#pragma omp parallel for ELEMS_PARALLEL((int64_t)N *V)
    for (int n = 0; n < N; n++) {
        const real *l = logits + (int64_t)n * V;
        real mx = cpu_row_max(l, V);
        lse[n] = mx + log(cpu_row_sum_exp(NULL, l, V, mx));
        int32_t t = targets[n];
        row_loss[n] = t == MODEL_IGNORE_INDEX ? 0 : lse[n] - l[t];
    }
}

/* cap 0: plain logits; else soft-capped ones (softcap.c's row). */
static void xent_backward(real *logits, const double *lse, const int32_t *targets, int N, int V,
                          double scale, real cap) {
#pragma omp parallel for ELEMS_PARALLEL((int64_t)N *V)
    for (int n = 0; n < N; n++) {
        real *l = logits + (int64_t)n * V;
        int32_t t = targets[n];
        if (t == MODEL_IGNORE_INDEX) {
            memset(l, 0, (size_t)V * sizeof(real));
            continue;
        }
        if (cap) {
            cpu_softcap_xent_row(l, V, (real)lse[n], (real)scale, cap, t);
            continue;
        }
        cpu_row_exp(l, V, (real)lse[n], (real)scale);
        l[t] -= (real)scale;
    }
}

void cpu_xent_backward(real *logits, const double *lse, const int32_t *targets, int N, int V,
                       double scale) {
    xent_backward(logits, lse, targets, N, V, scale, 0);
}

void cpu_xent_softcap_backward(real *logits, const double *lse, const int32_t *targets, int N,
                               int V, double scale, real cap) {
    xent_backward(logits, lse, targets, N, V, scale, cap);
}
