/* softcap.c — logit soft-capping (Gemma 2, Gemma 3): x ↦ cap · tanh(x / cap),
 * as transformers computes it (x / cap, tanh, · cap, each rounded), on the
 * attention scores before the mask (Gemma2Attention's
 * attn_logit_softcapping) and on the LM head's logits
 * (final_logit_softcapping). Backward: d/dx = d/dy · (1 − t²), t = tanh(x /
 * cap), which the capped value gives back as t = y / cap. */
#include "model/cpu/cpu.h"

CPU_CLONES static void softcap_span(real *x, int64_t lo, int64_t hi, real cap) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) x[i] = cpu_tanh(x[i] / cap) * cap;
}

void cpu_softcap_forward(real *x, int64_t n, real cap) {
    if (n <= 32768) {
        /* an attention row (already inside the attention's threads), or a few logits */
        softcap_span(x, 0, n, cap);
        return;
    }
#pragma omp parallel
    {
        int64_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        softcap_span(x, lo, hi, cap);
    }
}

CPU_CLONES static void softcap_attn_row(real *p, real *dp, int n, real cap, real lse, real dot) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        real t = cpu_tanh(p[j] / cap);
        real e = cpu_exp(t * cap - lse);
        p[j] = e;
        dp[j] = e * (dp[j] - dot) * (1 - t * t);
    }
}

void cpu_softcap_attn_row_backward(real *p, real *dp, int n, real cap, real lse, real dot) {
    softcap_attn_row(p, dp, n, cap, lse, dot);
}

/* d/dz of scale · Σ loss: scale · (softmax(L) − onehot) · (1 − (L / cap)²). */
CPU_CLONES static void softcap_xent_row(real *l, int V, real lse, real scale, real cap,
                                        int32_t target) {
    real at_target = l[target];
#pragma omp simd
    for (int j = 0; j < V; j++) {
        real t = l[j] / cap;
        l[j] = scale * cpu_exp(l[j] - lse) * (1 - t * t);
    }
    real t = at_target / cap;
    l[target] -= scale * (1 - t * t);
}

void cpu_softcap_xent_row(real *l, int V, real lse, real scale, real cap, int32_t target) {
    softcap_xent_row(l, V, lse, scale, cap, target);
}
