/* act.c — the MLP's activation by the block's options (model_block.mlp, .act),
 * and xIELU.
 *
 * xIELU (Huang et al. 2024, "Deriving Activation Functions Using
 * Integration", arXiv:2411.13010), as transformers' XIELUActivation computes
 * it (activations.py, _xielu_python), with trained scalars alpha_p, alpha_n
 * and stored beta, eps:
 *
 *   ap = softplus(alpha_p),  an = beta + softplus(alpha_n)
 *   y  = ap·x·x + beta·x                          x > 0
 *   y  = (expm1(min(x, eps)) − x)·an + beta·x     x ≤ 0
 *
 * softplus as torch's (threshold 20: softplus(z) = z above it). Backward:
 *   dy/dx = 2·ap·x + beta                         x > 0
 *   dy/dx = (e·[min'] − 1)·an + beta              x ≤ 0, e = exp(min(x, eps)),
 *           [min'] = 1 for x < eps, ½ at x = eps (torch.minimum's tie), 0 above
 *   d/d alpha_p = Σ_{x>0} dy·x²                 · softplus'(alpha_p)
 *   d/d alpha_n = Σ_{x≤0} dy·(expm1(min) − x)   · softplus'(alpha_n)
 * The two sums run per row in double, then over rows in row order, so the
 * gradients do not depend on the thread count. */
#include "model/cpu/cpu.h"

#ifdef FL_REAL_F64
#define act_expm1 expm1
#else
#define act_expm1 expm1f
#endif

#define SOFTPLUS_THRESHOLD 20.0 /* torch.nn.functional.softplus's default */

static double softplus(double z) {
    return z > SOFTPLUS_THRESHOLD ? z : log1p(exp(z));
}

static double softplus_grad(double z) {
    return z > SOFTPLUS_THRESHOLD ? 1.0 : 1.0 / (1.0 + exp(-z));
}

/* The scalars of one layer's xIELU, as the forward uses them. */
typedef struct {
    real ap, an, beta, eps;
} xielu_k;

static xielu_k xielu_scalars(const model_xielu *p) {
    real beta = p->beta->data[0];
    return (xielu_k){(real)softplus(p->alpha_p->data[0]),
                     (real)(beta + (real)softplus(p->alpha_n->data[0])), beta, p->eps->data[0]};
}

void cpu_xielu_values(const model_xielu *p, real v[4]) {
    xielu_k k = xielu_scalars(p);
    v[0] = k.ap;
    v[1] = k.an;
    v[2] = k.beta;
    v[3] = k.eps;
}

void cpu_xielu_forward(real *y, const real *x, const model_xielu *p, int64_t n) {
    xielu_k k = xielu_scalars(p);
#pragma omp parallel for if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        real v = x[i];
        if (v > 0) {
            y[i] = k.ap * v * v + k.beta * v;
        } else {
            real m = v < k.eps ? v : k.eps;
            y[i] = (act_expm1(m) - v) * k.an + k.beta * v;
        }
    }
}

void cpu_xielu_backward(real *dx, const real *dy, const real *x, const model_xielu *p, int rows,
                        int F, double *sums) {
    xielu_k k = xielu_scalars(p);
    int want = (p->alpha_p->grad || p->alpha_n->grad) && sums;
#pragma omp parallel for if ((int64_t)rows * F > 32768)
    for (int r = 0; r < rows; r++) {
        double sp = 0, sn = 0;
        for (int j = 0; j < F; j++) {
            int64_t i = (int64_t)r * F + j;
            real v = x[i], g = dy[i];
            if (v > 0) {
                sp += (double)g * v * v;
                dx[i] = g * (2 * k.ap * v + k.beta);
            } else {
                real m = v < k.eps ? v : k.eps;
                real e = v < k.eps ? cpu_exp(m) : v == k.eps ? cpu_exp(m) / 2 : 0;
                sn += (double)g * (act_expm1(m) - v);
                dx[i] = g * ((e - 1) * k.an + k.beta);
            }
        }
        if (want) {
            sums[2 * r] = sp;
            sums[2 * r + 1] = sn;
        }
    }
    if (!want) return;
    double sp = 0, sn = 0;
    for (int r = 0; r < rows; r++) {
        sp += sums[2 * r];
        sn += sums[2 * r + 1];
    }
    if (p->alpha_p->grad) p->alpha_p->grad[0] += (real)(sp * softplus_grad(p->alpha_p->data[0]));
    if (p->alpha_n->grad) p->alpha_n->grad[0] += (real)(sn * softplus_grad(p->alpha_n->data[0]));
}

void cpu_mlp_act_forward(const model_block *b, const model_xielu *p, real *act, const real *fa,
                         const real *fb, int64_t n) {
    if (b->mlp == MODEL_MLP_GATED) {
        cpu_swiglu_forward(act, fa, fb, n); /* model_config_check: GATED is SiLU's */
        return;
    }
    if (b->act == MODEL_ACT_XIELU)
        cpu_xielu_forward(act, fa, p, n);
    else
        cpu_gelu_forward(act, fa, n);
}

void cpu_mlp_act_backward(const model_block *b, const model_xielu *p, real *dfa, real *dfb,
                          const real *dact, const real *fa, const real *fb, int rows, int F,
                          double *sums) {
    int64_t n = (int64_t)rows * F;
    if (b->mlp == MODEL_MLP_GATED)
        cpu_swiglu_backward(dfa, dfb, dact, fa, fb, n);
    else if (b->act == MODEL_ACT_XIELU)
        cpu_xielu_backward(dfa, dact, fa, p, rows, F, sums);
    else
        cpu_gelu_backward(dfa, dact, fa, n);
}
