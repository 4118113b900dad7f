/* gpu_moe.c — Mixtral's mixture-of-experts MLP on the GPU: model/cpu/moe.c's
 * forward and backward (its header gives the formulas), step for step, with
 * the kernels of gpu_moe.cu and the experts' products as GEMMs over each
 * expert's block of gathered rows (gpu_linear_forward_rows: the base weight
 * and the adapter, LoRA's dropout masks over the block's rows as the CPU's).
 *
 *   logits = router(h)                      (N, E) fp32
 *   route: p, the top k, renormalized w;  group: off, tok, pos
 *   xg = h[tok];  g = w1(xg), u = w3(xg) per block;  act = silu(g) · u
 *   Y = w2(act) per block (fp32);  y = Σ_s w · Y[pos]   ascending experts
 *
 * The experts' row counts decide the GEMMs' shapes, so the forward copies
 * off (E + 1) to the host and waits for the stream once per layer; the
 * backward reuses that copy. Kept per layer, as on the CPU: p, w, the
 * choice, the grouping, g and u (the GEMM type), Y (fp32), and Σ_n p for
 * the load-balancing loss. dX, the experts' d(input) summed over w1 and w3,
 * is fp32 in both modes, as every dx sum of the backend. */
#include "gpu/gpu_internal.h"
#include "gpu/gpu_moe.h"

#include "model/config_table.h"
#include "util/err.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(GPU_MOE_MAX_K == MAX_EXPERTS_PER_TOK, "the kernels' slot arrays hold every k");

struct gpu_moe {
    int N, E, k, C, F, L;
    int rows; /* N of the last forward */
    int used; /* layers the last forward wrote */
    /* per layer (L of each), device */
    float *prob;  /* (L, N, E) */
    float *w;     /* (L, N, k) */
    int32_t *idx; /* (L, N, k) */
    int32_t *off; /* (L, E + 1) */
    int32_t *tok; /* (L, N·k) */
    int32_t *pos; /* (L, N·k) */
    double *psum; /* (L, E) */
    void *g, *u;  /* (L, N·k, F) the GEMM type */
    float *y;     /* (L, N·k, C) w2's outputs before the weights */
    /* scratch, device */
    float *logits; /* (N, E) */
    void *dlog;    /* (N, E) the GEMM type (fp32 mode: == logits) */
    int32_t *cnt;  /* (E) */
    void *xg;      /* (N·k, C) gathered inputs */
    void *dyg;     /* (N·k, C) dY */
    float *dxg;    /* (N·k, C) dX */
    void *act;     /* (N·k, F) w2's input */
    void *dact;    /* (N·k, F) d(w2's input), then d(w1 output) */
    void *du;      /* (N·k, F) d(w3 output) */
    double *dw;    /* (N·k) */
    double *aux_c; /* (E) the load-balancing loss's d/dp */
    /* host */
    int32_t *h_off; /* (L, E + 1) */
    double *h_psum; /* (L, E) */
    double *h_aux_c;
};

void gpu_moe_free(struct gpu_moe *mo) {
    if (!mo) return;
    free(mo->h_off);
    free(mo->h_psum);
    free(mo->h_aux_c);
    free(mo);
}

int gpu_moe_create(gpu_model *g) {
    const model_config *c = &g->cfg;
    struct gpu_moe *mo = calloc(1, sizeof *mo);
    if (!mo) return err_set("out of host memory for the experts' state");
    g->moe = mo;
    mo->N = g->N;
    mo->E = c->num_experts;
    mo->k = c->experts_per_tok;
    mo->C = c->hidden_size;
    mo->F = c->intermediate_size;
    mo->L = c->num_layers;
    size_t L = (size_t)mo->L, N = (size_t)mo->N, E = (size_t)mo->E, k = (size_t)mo->k;
    size_t C = (size_t)mo->C, F = (size_t)mo->F, Nk = N * k;
    size_t ts = gpu_dtype_size(g->dt), f4 = sizeof(float), i4 = sizeof(int32_t);
    mo->h_off = malloc(L * (E + 1) * i4);
    mo->h_psum = malloc(L * E * sizeof(double));
    mo->h_aux_c = malloc(E * sizeof(double));
    if (!mo->h_off || !mo->h_psum || !mo->h_aux_c)
        return err_set("out of host memory for the experts' state");
    OK(gpu_alloc(g, (void **)&mo->prob, L * N * E * f4));
    OK(gpu_alloc(g, (void **)&mo->w, L * Nk * f4));
    OK(gpu_alloc(g, (void **)&mo->idx, L * Nk * i4));
    OK(gpu_alloc(g, (void **)&mo->off, L * (E + 1) * i4));
    OK(gpu_alloc(g, (void **)&mo->tok, L * Nk * i4));
    OK(gpu_alloc(g, (void **)&mo->pos, L * Nk * i4));
    OK(gpu_alloc(g, (void **)&mo->psum, L * E * sizeof(double)));
    OK(gpu_alloc(g, &mo->g, L * Nk * F * ts));
    OK(gpu_alloc(g, &mo->u, L * Nk * F * ts));
    OK(gpu_alloc(g, (void **)&mo->y, L * Nk * C * f4));
    OK(gpu_alloc(g, (void **)&mo->logits, N * E * f4));
    if (g->dt == GPU_F32)
        mo->dlog = mo->logits;
    else
        OK(gpu_alloc(g, &mo->dlog, N * E * ts));
    OK(gpu_alloc(g, (void **)&mo->cnt, E * i4));
    OK(gpu_alloc(g, &mo->xg, Nk * C * ts));
    OK(gpu_alloc(g, &mo->dyg, Nk * C * ts));
    OK(gpu_alloc(g, (void **)&mo->dxg, Nk * C * f4));
    OK(gpu_alloc(g, &mo->act, Nk * F * ts));
    OK(gpu_alloc(g, &mo->dact, Nk * F * ts));
    OK(gpu_alloc(g, &mo->du, Nk * F * ts));
    OK(gpu_alloc(g, (void **)&mo->dw, Nk * sizeof(double)));
    OK(gpu_alloc(g, (void **)&mo->aux_c, E * sizeof(double)));
    return 0;
}

/* Layer l's kept values. */
typedef struct {
    float *prob, *w, *y;
    int32_t *idx, *off, *tok, *pos, *h_off;
    double *psum, *h_psum;
    void *g, *u;
} moe_slot;

static moe_slot slot_at(const gpu_model *g, int l) {
    const struct gpu_moe *mo = g->moe;
    size_t N = (size_t)mo->N, E = (size_t)mo->E, Nk = N * mo->k, L = (size_t)l;
    return (moe_slot){.prob = mo->prob + L * N * E,
                      .w = mo->w + L * Nk,
                      .y = mo->y + L * Nk * mo->C,
                      .idx = mo->idx + L * Nk,
                      .off = mo->off + L * (E + 1),
                      .tok = mo->tok + L * Nk,
                      .pos = mo->pos + L * Nk,
                      .h_off = mo->h_off + L * (E + 1),
                      .psum = mo->psum + L * E,
                      .h_psum = mo->h_psum + L * E,
                      .g = gpu_elem(g, mo->g, L * Nk * mo->F),
                      .u = gpu_elem(g, mo->u, L * Nk * mo->F)};
}

/* ---- forward -------------------------------------------------------------------------- */

int gpu_moe_forward(gpu_model *g, int l, const void *h, void *y, gpu_dtype yt, int accumulate) {
    struct gpu_moe *mo = g->moe;
    const gpu_layer *L = &g->layers[l];
    int N = g->N, E = mo->E, k = mo->k, C = mo->C, F = mo->F;
    int64_t Nk = (int64_t)N * k;
    if (yt != GPU_F32) return err_set("the experts' sum goes into fp32 (the residual stream)");
    moe_slot s = slot_at(g, l);
    OK(gpu_linear_forward(g, &L->router, h, mo->logits, GPU_F32, 0));
    CU(gpu_moe_route(mo->logits, N, E, k, s.prob, s.idx, s.w, g->stream));
    CU(gpu_moe_group(s.idx, N, k, E, mo->cnt, s.off, s.tok, s.pos, g->stream));
    CU(gpu_moe_psum(s.psum, s.prob, N, E, g->stream));
    CU(cudaMemcpyAsync(s.h_off, s.off, (size_t)(E + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                       g->stream));
    CU(cudaMemcpyAsync(s.h_psum, s.psum, (size_t)E * sizeof(double), cudaMemcpyDeviceToHost,
                       g->stream));
    CU(cudaStreamSynchronize(g->stream));
    CU(gpu_moe_gather(mo->xg, h, g->dt, s.tok, Nk, C, g->stream));
    for (int e = 0; e < E; e++) {
        int r0 = s.h_off[e], n = s.h_off[e + 1] - r0;
        const gpu_linear *ex = &L->experts[3 * e];
        const void *x = gpu_elem(g, mo->xg, (size_t)r0 * C);
        OK(gpu_linear_forward_rows(g, &ex[0], x, gpu_elem(g, s.g, (size_t)r0 * F), g->dt, 0, n));
        OK(gpu_linear_forward_rows(g, &ex[2], x, gpu_elem(g, s.u, (size_t)r0 * F), g->dt, 0, n));
    }
    CU(gpu_swiglu_forward(mo->act, s.g, s.u, g->dt, Nk * F, g->stream));
    for (int e = 0; e < E; e++) {
        int r0 = s.h_off[e], n = s.h_off[e + 1] - r0;
        OK(gpu_linear_forward_rows(g, &L->experts[3 * e + 1], gpu_elem(g, mo->act, (size_t)r0 * F),
                                   s.y + (size_t)r0 * C, GPU_F32, 0, n));
    }
    CU(gpu_moe_scatter(y, s.y, s.w, s.idx, s.pos, N, k, C, accumulate, g->stream));
    mo->rows = N;
    mo->used = l + 1; /* a forward runs its layers in order */
    return 0;
}

/* ---- backward ------------------------------------------------------------------------- */

int gpu_moe_needs_input(const gpu_layer *L) {
    if (L->router.lora >= 0) return 1;
    for (int e = 0; e < L->n_experts; e++)
        if (L->experts[3 * e].lora >= 0 || L->experts[3 * e + 2].lora >= 0) return 1;
    return 0;
}

static int w2_needs_input(const gpu_layer *L) {
    for (int e = 0; e < L->n_experts; e++)
        if (L->experts[3 * e + 1].lora >= 0) return 1;
    return 0;
}

/* aux_c (E) = aux · E · C_e / (L·N)², C_e the choices of expert e over the
 * kept layers (moe.c's router_backward), uploaded; NULL when the loss is
 * not in the objective. */
static int aux_coefficients(gpu_model *g, const double **out) {
    struct gpu_moe *mo = g->moe;
    *out = NULL;
    if (g->aux_grad == 0) return 0;
    double LN = (double)mo->used * mo->rows, unit = g->aux_grad * mo->E / (LN * LN);
    for (int e = 0; e < mo->E; e++) {
        double t = 0;
        for (int l = 0; l < mo->used; l++) {
            const int32_t *off = mo->h_off + (size_t)l * (mo->E + 1);
            t += off[e + 1] - off[e];
        }
        mo->h_aux_c[e] = unit * t;
    }
    /* from pageable memory: staged before the call returns */
    CU(cudaMemcpyAsync(mo->aux_c, mo->h_aux_c, (size_t)mo->E * sizeof(double),
                       cudaMemcpyHostToDevice, g->stream));
    *out = mo->aux_c;
    return 0;
}

int gpu_moe_backward(gpu_model *g, int l, const void *h, const void *dy, float *dh,
                     int accumulate_dh) {
    struct gpu_moe *mo = g->moe;
    const gpu_layer *L = &g->layers[l];
    int N = g->N, E = mo->E, k = mo->k, C = mo->C, F = mo->F;
    int64_t Nk = (int64_t)N * k;
    if (N != mo->rows || l >= mo->used)
        return err_set("the experts' backward of layer %d needs its forward over %d rows first", l,
                       N);
    moe_slot s = slot_at(g, l);
    /* dY (block rows) = w · dy;  dw = dy · Y */
    CU(gpu_moe_combine_backward(mo->dyg, mo->dw, dy, g->dt, s.y, s.w, s.pos, N, k, C, g->stream));
    if (gpu_moe_needs_input(L)) CU(gpu_moe_gather(mo->xg, h, g->dt, s.tok, Nk, C, g->stream));
    if (w2_needs_input(L)) CU(gpu_swiglu_forward(mo->act, s.g, s.u, g->dt, Nk * F, g->stream));
    for (int e = 0; e < E; e++) {
        int r0 = s.h_off[e], n = s.h_off[e + 1] - r0;
        OK(gpu_linear_backward_rows(g, &L->experts[3 * e + 1], gpu_elem(g, mo->act, (size_t)r0 * F),
                                    gpu_elem(g, mo->dyg, (size_t)r0 * C),
                                    gpu_elem(g, mo->dact, (size_t)r0 * F), g->dt, 0, n));
    }
    CU(gpu_swiglu_backward(mo->dact, mo->du, mo->dact, s.g, s.u, g->dt, Nk * F, g->stream));
    for (int e = 0; e < E; e++) {
        int r0 = s.h_off[e], n = s.h_off[e + 1] - r0;
        const gpu_linear *ex = &L->experts[3 * e];
        const void *x = gpu_elem(g, mo->xg, (size_t)r0 * C);
        float *dx = mo->dxg + (size_t)r0 * C;
        OK(gpu_linear_backward_rows(g, &ex[0], x, gpu_elem(g, mo->dact, (size_t)r0 * F), dx,
                                    GPU_F32, 0, n));
        OK(gpu_linear_backward_rows(g, &ex[2], x, gpu_elem(g, mo->du, (size_t)r0 * F), dx, GPU_F32,
                                    1, n));
    }
    CU(gpu_moe_scatter(dh, mo->dxg, NULL, s.idx, s.pos, N, k, C, accumulate_dh, g->stream));
    const double *aux_c;
    OK(aux_coefficients(g, &aux_c));
    CU(gpu_moe_router_backward(mo->dlog, g->dt, s.prob, s.w, s.idx, mo->dw, aux_c, N, E, k,
                               g->stream));
    return gpu_linear_backward(g, &L->router, h, mo->dlog, dh, GPU_F32, 1);
}

/* ---- the load-balancing loss ------------------------------------------------------------- */

double gpu_moe_aux_loss(const gpu_model *g) {
    const struct gpu_moe *mo = g->moe;
    if (!mo || mo->used == 0 || mo->rows == 0) return 0;
    double LN = (double)mo->used * mo->rows, sum = 0;
    for (int e = 0; e < mo->E; e++) {
        double count = 0, psum = 0;
        for (int l = 0; l < mo->used; l++) {
            const int32_t *off = mo->h_off + (size_t)l * (mo->E + 1);
            count += off[e + 1] - off[e];
            psum += mo->h_psum[(size_t)l * mo->E + e];
        }
        sum += (count / LN) * (psum / LN);
    }
    return sum * mo->E;
}
