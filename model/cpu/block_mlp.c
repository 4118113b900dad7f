/* block_mlp.c — a block's MLP sublayer, forward and backward:
 *
 *   y = down(silu(gate(h)) · up(h))      MLP_GATED (Llama, Qwen, OLMo 2;
 *                                        gelu_tanh: GeGLU, Gemma)
 *   g | u = gate_up(h), y = down(silu(g) · u)   MLP_GATED_FUSED (Phi-3)
 *   y = down(act(up(h)))                 MLP_PLAIN: gelu_new (GPT-2's c_fc,
 *                                        c_proj, BLOOM's dense_h_to_4h,
 *                                        dense_4h_to_h), xIELU (Apertus)
 *   y = Σ_top-k w_e · expert_e(h)        MLP_MOE (Mixtral): moe.c
 *
 * Saved: the pre-activations (gate and up, or up); down's input is
 * recomputed from them when its backward needs it (act.c). */
#include "model/cpu/acts.h"

#include <string.h>

/* Columns [0, F) and [F, 2F) of fused (N, 2F) into a and b (N, F), or back
 * (join). */
static void split_halves(real *fused, real *a, real *b, int N, int F, int join) {
    size_t bytes = (size_t)F * sizeof(real);
#pragma omp parallel for if ((int64_t)N * F > 32768)
    for (int n = 0; n < N; n++) {
        real *row = fused + (size_t)n * 2 * F;
        if (join) {
            memcpy(row, a + (size_t)n * F, bytes);
            memcpy(row + F, b + (size_t)n * F, bytes);
        } else {
            memcpy(a + (size_t)n * F, row, bytes);
            memcpy(b + (size_t)n * F, row + F, bytes);
        }
    }
}

int block_mlp_needs_input(const model_layer *L) {
    if (L->moe.experts) return cpu_moe_needs_input(L);
    return (L->gate.w && cpu_linear_needs_input(&L->gate)) || cpu_linear_needs_input(&L->up);
}

int block_mlp_forward(model_acts *a, int l, const real *h, real *y, int accumulate) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    const model_layer *L = &m->layers[l];
    int N = a->N, F = c->intermediate_size;
    real *fa = a->fc_a + acts_layer_off(a, l, F);
    real *fb = a->fc_b ? a->fc_b + acts_layer_off(a, l, F) : NULL;
    if (c->block.mlp == MODEL_MLP_MOE)
        return cpu_moe_forward(a->moe, m->precision, L, l, h, y, N, accumulate);
    if (c->block.mlp == MODEL_MLP_GATED_FUSED) {
        TRY(cpu_linear_forward(m->precision, &L->up, h, a->fc_fused, N, 0));
        split_halves(a->fc_fused, fa, fb, N, F, 0);
    } else if (c->block.mlp == MODEL_MLP_GATED) {
        TRY(cpu_linear_forward(m->precision, &L->gate, h, fa, N, 0));
        TRY(cpu_linear_forward(m->precision, &L->up, h, fb, N, 0));
    } else {
        TRY(cpu_linear_forward(m->precision, &L->up, h, fa, N, 0));
    }
    cpu_mlp_act_forward(&c->block, &L->xielu, a->act, fa, fb, (int64_t)N * F);
    return cpu_linear_forward(m->precision, &L->down, a->act, y, N, accumulate);
}

int block_mlp_backward(model_acts *a, int l, const real *h, const real *dy, real *dh,
                       int accumulate_dh) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    model_layer *L = &m->layers[l];
    int N = a->N, F = c->intermediate_size;
    real *fa = a->fc_a + acts_layer_off(a, l, F);
    real *fb = a->fc_b ? a->fc_b + acts_layer_off(a, l, F) : NULL;
    if (c->block.mlp == MODEL_MLP_MOE)
        return cpu_moe_backward(a->moe, m->precision, L, l, h, dy, dh, N, accumulate_dh,
                                a->aux_grad);
    if (cpu_linear_needs_input(&L->down))
        cpu_mlp_act_forward(&c->block, &L->xielu, a->act, fa, fb, (int64_t)N * F);
    TRY(cpu_linear_backward(m->precision, &L->down, a->act, dy, a->dfa, N, 0));
    cpu_mlp_act_backward(&c->block, &L->xielu, a->dfa, a->dfb, a->dfa, fa, fb, N, F, a->act_sums);
    if (c->block.mlp == MODEL_MLP_GATED_FUSED) {
        split_halves(a->fc_fused, a->dfa, a->dfb, N, F, 1);
        return cpu_linear_backward(m->precision, &L->up, h, a->fc_fused, dh, N, accumulate_dh);
    }
    if (c->block.mlp == MODEL_MLP_GATED) {
        TRY(cpu_linear_backward(m->precision, &L->gate, h, a->dfa, dh, N, accumulate_dh));
        return cpu_linear_backward(m->precision, &L->up, h, a->dfb, dh, N, 1);
    }
    return cpu_linear_backward(m->precision, &L->up, h, a->dfa, dh, N, accumulate_dh);
}
