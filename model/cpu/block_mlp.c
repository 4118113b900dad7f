/* block_mlp.c — a block's MLP sublayer, forward and backward:
 *
 *   y = down(silu(gate(h)) · up(h))      MLP_GATED (Llama, Qwen, OLMo 2)
 *   y = down(act(up(h)))                 MLP_PLAIN: gelu_new (GPT-2's c_fc,
 *                                        c_proj), xIELU (Apertus)
 *
 * Saved: the pre-activations (gate and up, or up); down's input is
 * recomputed from them when its backward needs it (act.c). */
#include "model/cpu/acts.h"

int block_mlp_needs_input(const model_layer *L) {
    return (L->gate.w && cpu_linear_needs_input(&L->gate)) || cpu_linear_needs_input(&L->up);
}

int block_mlp_forward(model_acts *a, int l, const real *h, real *y, int accumulate) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    const model_layer *L = &m->layers[l];
    int N = a->N, F = c->intermediate_size;
    real *fa = a->fc_a + acts_layer_off(a, l, F);
    real *fb = a->fc_b ? a->fc_b + acts_layer_off(a, l, F) : NULL;
    if (c->block.mlp == MODEL_MLP_GATED) {
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
    if (cpu_linear_needs_input(&L->down))
        cpu_mlp_act_forward(&c->block, &L->xielu, a->act, fa, fb, (int64_t)N * F);
    TRY(cpu_linear_backward(m->precision, &L->down, a->act, dy, a->dfa, N, 0));
    cpu_mlp_act_backward(&c->block, &L->xielu, a->dfa, a->dfb, a->dfa, fa, fb, N, F, a->act_sums);
    if (c->block.mlp == MODEL_MLP_GATED) {
        TRY(cpu_linear_backward(m->precision, &L->gate, h, a->dfa, dh, N, accumulate_dh));
        return cpu_linear_backward(m->precision, &L->up, h, a->dfb, dh, N, 1);
    }
    return cpu_linear_backward(m->precision, &L->up, h, a->dfa, dh, N, accumulate_dh);
}
