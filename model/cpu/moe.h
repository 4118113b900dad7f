/* moe — the mixture-of-experts MLP (block.mlp == MODEL_MLP_MOE, Mixtral's
 * MixtralSparseMoeBlock) on the CPU: routing, the experts' products grouped
 * by expert, the load-balancing loss. Used by block_mlp.c (training) and
 * decode.c; private to model/cpu/. moe.c has the formulas. */
#ifndef FL_MODEL_CPU_MOE_H
#define FL_MODEL_CPU_MOE_H

#include "model/cpu/cpu.h"

typedef struct cpu_moe cpu_moe;

/* Buffers for up to N rows, keeping the routing and the experts'
 * activations of `layers` layers for their backward (decoding keeps one
 * and reuses it). -1 with a message when out of memory. */
int cpu_moe_create(cpu_moe **out, const model_config *c, int N, int layers);
void cpu_moe_free(cpu_moe *mo);

/* y (N, C) = Σ over each row's k experts of weight · expert(h), or y += that
 * when accumulate; h (N, C) the sublayer's input. Keeps layer slot l's
 * routing, pre-activations and expert outputs. */
int cpu_moe_forward(cpu_moe *mo, model_precision prec, const model_layer *L, int l, const real *h,
                    real *y, int N, int accumulate);
/* dh (N, C) = d/dh given dy (N, C) (+= when accumulate_dh), and the router's
 * and experts' gradients where wanted (params with a grad, adapters). aux
 * is d(objective)/d(load-balancing loss) (0 when it is not part of the
 * objective). h is read only when cpu_moe_needs_input(L). */
int cpu_moe_backward(cpu_moe *mo, model_precision prec, model_layer *L, int l, const real *h,
                     const real *dy, real *dh, int N, int accumulate_dh, double aux);
int cpu_moe_needs_input(const model_layer *L);
/* transformers' load_balancing_loss_func over every kept layer of the last
 * forward (its N rows, no attention mask). */
double cpu_moe_aux_loss(const cpu_moe *mo);
/* The smallest gap between a row's k-th and (k+1)-th router probability
 * over the kept layers of the last forward (+inf when k = E): a change of
 * the router's input smaller than this keeps the routing. */
double cpu_moe_margin(const cpu_moe *mo);
/* The rows expert e of layer slot l received in the last forward (0 out of range). */
int cpu_moe_expert_rows(const cpu_moe *mo, int l, int e);

#endif
