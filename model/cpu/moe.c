/* moe.c — the mixture-of-experts MLP of Mixtral (transformers 5's
 * modeling_mixtral.py: MixtralTopKRouter, MixtralExperts), forward and
 * backward, for the N rows h (N, C) of one layer:
 *
 *   logits = h Gᵀ                          router gate G (E, C)
 *   p      = softmax(logits)                over all E experts, per row
 *   top    = the k largest p, descending    torch.topk
 *   w      = top / Σ top                    renormalized over the k
 *   y[n]   = Σ_s w[n,s] · expert_{e_s}(h[n]),   expert(x) = w2(silu(w1 x) · w3 x)
 *
 * The experts run grouped, not densely: each expert's rows (the tokens that
 * chose it, in token order) are gathered into one block, and w1, w3, w2 are
 * one product each over that block (cpu_linear_forward, so the weights are
 * read in their dtype, in either precision, with their adapters); the
 * outputs are scattered back, each row summing its k weighted outputs in
 * ascending expert order (transformers' index_add_ order). E·k·N rows of
 * work instead of E·N. Kept for backward, per layer: p, the choice (experts,
 * weights), the grouping, each block's w1 and w3 outputs and w2's output
 * before weighting.
 *
 * Backward, given dy (N, C):
 *   dY[r]     = w[n,s] · dy[n]                r the block row of (n, s)
 *   dw[n,s]   = dy[n] · Y[r]
 *   the experts' backward over their blocks (swiglu, w1, w2, w3), dX
 *   dh[n]     = Σ_s dX[r]                     ascending expert order
 *   dp[e_t]   = (dw_t − Σ_s dw_s w_s) / Σ top       the renormalization's
 *   dp[e]    += aux · E · C_e / (L·N)²              the load-balancing loss
 *   dlogit[e] = p_e (dp_e − Σ_j p_j dp_j)            softmax
 *   dh       += dlogit G, and G's gradient / adapter
 * (the choice itself is piecewise constant: no gradient through top-k).
 *
 * The load-balancing loss (Switch Transformer, Fedus et al. 2021, eq. 4-6;
 * transformers' load_balancing_loss_func) over L layers of N rows:
 *   aux = E · Σ_e (C_e / (L·N)) · (P_e / (L·N))
 * with C_e the top-k choices of expert e and P_e the sum of p_e over every
 * row of every layer. Sums of p run in double in row order, so nothing
 * depends on the thread count. */
#include "model/cpu/moe.h"

#include "model/config_table.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cpu_moe {
    int N, E, k, C, F, layers;
    int rows; /* N of the last forward */
    int used; /* layer slots it wrote (the aux loss and the margin read these) */
    /* per layer slot */
    real *prob;   /* (layers, N, E) router probabilities */
    real *w;      /* (layers, N, k) renormalized weights of the chosen experts */
    int32_t *idx; /* (layers, N, k) the chosen experts, descending p */
    int32_t *off; /* (layers, E + 1) expert e's block is rows [off[e], off[e + 1]) */
    int32_t *tok; /* (layers, N·k) block row → token */
    int32_t *pos; /* (layers, N, k) (token, slot) → block row */
    double *psum; /* (layers, E) Σ_n p[n, e] */
    real *g, *u;  /* (layers, N·k, F) w1 and w3 outputs */
    real *y;      /* (layers, N·k, C) w2 outputs, before the weights */
    /* scratch */
    real *logits;    /* (N, E) router logits; in backward their gradient */
    real *xg;        /* (N·k, C) the gathered inputs */
    real *dyg;       /* (N·k, C) dY, then dX */
    real *act;       /* (N·k, F) w2's input */
    real *dact;      /* (N·k, F) d(w2's input), then d(w1 output) */
    real *du;        /* (N·k, F) d(w3 output) */
    double *dw;      /* (N, k) */
    double *ctot;    /* (E) C_e over the kept layers, for the aux loss's gradient */
    int32_t *cursor; /* (E) the grouping's next free row per expert */
};

/* One layer slot's kept values. */
typedef struct {
    real *prob, *w, *g, *u, *y;
    int32_t *idx, *off, *tok, *pos;
    double *psum;
} moe_slot;

static moe_slot slot_at(const cpu_moe *mo, int l) {
    size_t N = (size_t)mo->N, E = (size_t)mo->E, k = (size_t)mo->k;
    size_t Nk = N * k;
    return (moe_slot){mo->prob + l * N * E,   mo->w + l * N * k,      mo->g + l * Nk * mo->F,
                      mo->u + l * Nk * mo->F, mo->y + l * Nk * mo->C, mo->idx + l * N * k,
                      mo->off + l * (E + 1),  mo->tok + l * Nk,       mo->pos + l * N * k,
                      mo->psum + l * E};
}

void cpu_moe_free(cpu_moe *mo) {
    if (!mo) return;
    void *bufs[] = {mo->prob, mo->w,  mo->idx, mo->off,    mo->tok,   mo->pos, mo->psum,
                    mo->g,    mo->u,  mo->y,   mo->logits, mo->xg,    mo->dyg, mo->act,
                    mo->dact, mo->du, mo->dw,  mo->ctot,   mo->cursor};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(mo);
}

static void *alloc_n(size_t n, size_t size, int *bad) {
    void *p = malloc(n ? n * size : 1);
    if (!p) *bad = 1;
    return p;
}

int cpu_moe_create(cpu_moe **out, const model_config *c, int N, int layers) {
    *out = NULL;
    cpu_moe *mo = calloc(1, sizeof *mo);
    if (!mo) return err_set("out of memory for the experts' activations");
    mo->N = N;
    mo->E = c->num_experts;
    mo->k = c->experts_per_tok;
    mo->C = c->hidden_size;
    mo->F = c->intermediate_size;
    mo->layers = layers;
    size_t L = (size_t)layers, n = (size_t)N, E = (size_t)mo->E, k = (size_t)mo->k;
    size_t C = (size_t)mo->C, F = (size_t)mo->F, Nk = n * k;
    int bad = 0;
    mo->prob = alloc_n(L * n * E, sizeof(real), &bad);
    mo->w = alloc_n(L * n * k, sizeof(real), &bad);
    mo->idx = alloc_n(L * n * k, sizeof(int32_t), &bad);
    mo->off = alloc_n(L * (E + 1), sizeof(int32_t), &bad);
    mo->tok = alloc_n(L * Nk, sizeof(int32_t), &bad);
    mo->pos = alloc_n(L * n * k, sizeof(int32_t), &bad);
    mo->psum = alloc_n(L * E, sizeof(double), &bad);
    mo->g = alloc_n(L * Nk * F, sizeof(real), &bad);
    mo->u = alloc_n(L * Nk * F, sizeof(real), &bad);
    mo->y = alloc_n(L * Nk * C, sizeof(real), &bad);
    mo->logits = alloc_n(n * E, sizeof(real), &bad);
    mo->xg = alloc_n(Nk * C, sizeof(real), &bad);
    mo->dyg = alloc_n(Nk * C, sizeof(real), &bad);
    mo->act = alloc_n(Nk * F, sizeof(real), &bad);
    mo->dact = alloc_n(Nk * F, sizeof(real), &bad);
    mo->du = alloc_n(Nk * F, sizeof(real), &bad);
    mo->dw = alloc_n(n * k, sizeof(double), &bad);
    mo->ctot = alloc_n(E, sizeof(double), &bad);
    mo->cursor = alloc_n(E, sizeof(int32_t), &bad);
    if (bad) {
        double gb = (double)L * Nk * (2.0 * F + C) * sizeof(real) / 1e9;
        cpu_moe_free(mo);
        return err_set("out of memory: the experts' activations for %d rows need %.2f GB; use a "
                       "smaller --batch or --seq",
                       N, gb);
    }
    *out = mo;
    return 0;
}

/* ---- routing ------------------------------------------------------------------------ */

/* p, the top k (descending; the lower index first among equals) and their
 * renormalized weights, per row; then the grouping by expert and the sums
 * of p. */
static void route(cpu_moe *mo, const moe_slot *s, int N) {
    int E = mo->E, k = mo->k;
#pragma omp parallel for if ((int64_t)N * E > 8192)
    for (int n = 0; n < N; n++) {
        const real *lg = mo->logits + (int64_t)n * E;
        real *p = s->prob + (int64_t)n * E;
        /* softmax(router_logits.float()) */
        real mx = cpu_row_max(lg, E);
        double sum = cpu_row_sum_exp(p, lg, E, mx);
        for (int e = 0; e < E; e++) p[e] = (real)(p[e] / sum);
        int32_t *ix = s->idx + (int64_t)n * k;
        real *w = s->w + (int64_t)n * k, top_sum = 0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int t = 0; t < j; t++) taken |= ix[t] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            ix[j] = best;
            w[j] = p[best];
            top_sum += p[best];
        }
        for (int j = 0; j < k; j++) w[j] /= top_sum;
    }
    /* counting sort of (token, slot) by expert: token order within a block */
    int32_t *off = s->off;
    memset(off, 0, (size_t)(E + 1) * sizeof *off);
    for (int64_t i = 0; i < (int64_t)N * k; i++) off[s->idx[i] + 1]++;
    for (int e = 0; e < E; e++) off[e + 1] += off[e];
    int32_t *next = mo->cursor;
    memcpy(next, off, (size_t)E * sizeof *next);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            int r = next[s->idx[(int64_t)n * k + j]]++;
            s->tok[r] = n;
            s->pos[(int64_t)n * k + j] = r;
        }
    for (int e = 0; e < E; e++) s->psum[e] = 0;
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++) s->psum[e] += s->prob[(int64_t)n * E + e];
}

/* xg (rows, C) = h[tok[r]]. */
static void gather(real *xg, const real *h, const int32_t *tok, int64_t rows, int C) {
#pragma omp parallel for if (rows * C > 65536)
    for (int64_t r = 0; r < rows; r++)
        memcpy(xg + r * C, h + (int64_t)tok[r] * C, (size_t)C * sizeof(real));
}

/* Row n's k slots in ascending expert order (the order transformers adds
 * the experts' outputs in). */
static void expert_order(const int32_t *ix, int k, int *order) {
    for (int j = 0; j < k; j++) {
        int t = j;
        while (t > 0 && ix[order[t - 1]] > ix[j]) {
            order[t] = order[t - 1];
            t--;
        }
        order[t] = j;
    }
}

/* out (N, C) = Σ_s coef[n,s] · rows[pos[n,s]] (coef NULL: 1), or += that
 * when accumulate. The sum of a row starts from 0 and adds the experts in
 * ascending order; then it is added to out. */
static void scatter(real *out, const real *rows, const real *coef, const moe_slot *s, int N, int k,
                    int C, int accumulate) {
#pragma omp parallel for if ((int64_t)N * C * k > 65536)
    for (int n = 0; n < N; n++) {
        int order[MAX_EXPERTS_PER_TOK];
        const int32_t *ix = s->idx + (int64_t)n * k;
        expert_order(ix, k, order);
        const real *src[MAX_EXPERTS_PER_TOK];
        real c0[MAX_EXPERTS_PER_TOK];
        for (int j = 0; j < k; j++) {
            int t = order[j];
            src[j] = rows + (int64_t)s->pos[(int64_t)n * k + t] * C;
            c0[j] = coef ? coef[(int64_t)n * k + t] : 1;
        }
        real *o = out + (int64_t)n * C;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            real acc = 0;
            for (int j = 0; j < k; j++) acc += c0[j] * src[j][c];
            o[c] = accumulate ? o[c] + acc : acc;
        }
    }
}

/* ---- forward -------------------------------------------------------------------------- */

int cpu_moe_forward(cpu_moe *mo, model_precision prec, const model_layer *L, int l, const real *h,
                    real *y, int N, int accumulate) {
    int E = mo->E, k = mo->k, C = mo->C, F = mo->F;
    moe_slot s = slot_at(mo, l);
    TRY(cpu_linear_forward(prec, &L->moe.router, h, mo->logits, N, 0));
    route(mo, &s, N);
    gather(mo->xg, h, s.tok, (int64_t)N * k, C);
    /* Every expert's linears run, with no rows too: an adapter counts its
     * forwards (LoRA's dropout masks), whether a batch reached it or not. */
    for (int e = 0; e < E; e++) {
        int r0 = s.off[e], n = s.off[e + 1] - r0;
        const model_linear *ex = &L->moe.experts[3 * e];
        TRY(cpu_linear_forward(prec, &ex[0], mo->xg + (int64_t)r0 * C, s.g + (int64_t)r0 * F, n,
                               0));
        TRY(cpu_linear_forward(prec, &ex[2], mo->xg + (int64_t)r0 * C, s.u + (int64_t)r0 * F, n,
                               0));
    }
    cpu_swiglu_forward(mo->act, s.g, s.u, (int64_t)N * k * F);
    for (int e = 0; e < E; e++) {
        int r0 = s.off[e], n = s.off[e + 1] - r0;
        TRY(cpu_linear_forward(prec, &L->moe.experts[3 * e + 1], mo->act + (int64_t)r0 * F,
                               s.y + (int64_t)r0 * C, n, 0));
    }
    scatter(y, s.y, s.w, &s, N, k, C, accumulate);
    mo->rows = N;
    mo->used = l + 1; /* a forward runs its layers in order */
    return 0;
}

/* ---- backward ------------------------------------------------------------------------- */

int cpu_moe_needs_input(const model_layer *L) {
    if (cpu_linear_needs_input(&L->moe.router)) return 1;
    for (int e = 0; e < L->moe.n_experts; e++)
        if (cpu_linear_needs_input(&L->moe.experts[3 * e]) ||
            cpu_linear_needs_input(&L->moe.experts[3 * e + 2]))
            return 1;
    return 0;
}

static int w2_needs_input(const model_layer *L) {
    for (int e = 0; e < L->moe.n_experts; e++)
        if (cpu_linear_needs_input(&L->moe.experts[3 * e + 1])) return 1;
    return 0;
}

/* C_e summed over the kept layers (the load-balancing loss's counts). */
static void choice_totals(cpu_moe *mo) {
    for (int e = 0; e < mo->E; e++) {
        double t = 0;
        for (int l = 0; l < mo->used; l++) {
            const int32_t *off = mo->off + (size_t)l * (mo->E + 1);
            t += off[e + 1] - off[e];
        }
        mo->ctot[e] = t;
    }
}

/* mo->logits (N, E) = d/d(router logits) from dw (and the aux term). */
static void router_backward(cpu_moe *mo, const moe_slot *s, int N, double aux) {
    int E = mo->E, k = mo->k;
    /* The load-balancing term only when it is in the objective: with it off,
     * ctot was never filled, and 0 · (whatever the heap left there) is NaN
     * when those bytes are a NaN or an infinity. */
    double aux_unit = 0;
    const double *ctot = NULL;
    if (aux != 0) {
        choice_totals(mo);
        double LN = (double)mo->used * N;
        aux_unit = aux * E / (LN * LN);
        ctot = mo->ctot;
    }
#pragma omp parallel for if ((int64_t)N * E > 8192)
    for (int n = 0; n < N; n++) {
        const real *p = s->prob + (int64_t)n * E, *w = s->w + (int64_t)n * k;
        const int32_t *ix = s->idx + (int64_t)n * k;
        const double *dw = mo->dw + (int64_t)n * k;
        real *dl = mo->logits + (int64_t)n * E;
        double top = 0, dww = 0;
        for (int j = 0; j < k; j++) {
            top += p[ix[j]];
            dww += dw[j] * w[j];
        }
        for (int e = 0; e < E; e++) dl[e] = ctot ? (real)(aux_unit * ctot[e]) : 0;
        for (int j = 0; j < k; j++) dl[ix[j]] += (real)((dw[j] - dww) / top);
        double dot = 0;
        for (int e = 0; e < E; e++) dot += (double)p[e] * dl[e];
        for (int e = 0; e < E; e++) dl[e] = (real)(p[e] * (dl[e] - dot));
    }
}

int cpu_moe_backward(cpu_moe *mo, model_precision prec, model_layer *L, int l, const real *h,
                     const real *dy, real *dh, int N, int accumulate_dh, double aux) {
    int E = mo->E, k = mo->k, C = mo->C, F = mo->F;
    int64_t Nk = (int64_t)N * k;
    moe_slot s = slot_at(mo, l);
    /* dY (block rows) = w · dy;  dw = dy · Y */
#pragma omp parallel for if (Nk * C > 65536)
    for (int n = 0; n < N; n++) {
        const real *g = dy + (int64_t)n * C;
        for (int j = 0; j < k; j++) {
            int64_t r = s.pos[(int64_t)n * k + j];
            const real *Y = s.y + r * C;
            real wt = s.w[(int64_t)n * k + j], *d = mo->dyg + r * C;
            double dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < C; c++) {
                dot += (double)g[c] * Y[c];
                d[c] = wt * g[c];
            }
            mo->dw[(int64_t)n * k + j] = dot;
        }
    }
    if (cpu_moe_needs_input(L)) gather(mo->xg, h, s.tok, Nk, C);
    if (w2_needs_input(L)) cpu_swiglu_forward(mo->act, s.g, s.u, Nk * F);
    for (int e = 0; e < E; e++) {
        int r0 = s.off[e], n = s.off[e + 1] - r0;
        TRY(cpu_linear_backward(prec, &L->moe.experts[3 * e + 1], mo->act + (int64_t)r0 * F,
                                mo->dyg + (int64_t)r0 * C, mo->dact + (int64_t)r0 * F, n, 0));
    }
    cpu_swiglu_backward(mo->dact, mo->du, mo->dact, s.g, s.u, Nk * F);
    /* dX into dyg's rows (every dY was read above) */
    for (int e = 0; e < E; e++) {
        int r0 = s.off[e], n = s.off[e + 1] - r0;
        const model_linear *ex = &L->moe.experts[3 * e];
        const real *x = mo->xg + (int64_t)r0 * C;
        real *dx = mo->dyg + (int64_t)r0 * C;
        TRY(cpu_linear_backward(prec, &ex[0], x, mo->dact + (int64_t)r0 * F, dx, n, 0));
        TRY(cpu_linear_backward(prec, &ex[2], x, mo->du + (int64_t)r0 * F, dx, n, 1));
    }
    scatter(dh, mo->dyg, NULL, &s, N, k, C, accumulate_dh);
    router_backward(mo, &s, N, aux);
    return cpu_linear_backward(prec, &L->moe.router, h, mo->logits, dh, N, 1);
}

/* ---- the load-balancing loss, the routing margin ----------------------------------------- */

double cpu_moe_aux_loss(const cpu_moe *mo) {
    if (mo->used == 0 || mo->rows == 0) return 0;
    double LN = (double)mo->used * mo->rows, sum = 0;
    for (int e = 0; e < mo->E; e++) {
        double count = 0, psum = 0;
        for (int l = 0; l < mo->used; l++) {
            moe_slot s = slot_at(mo, l);
            count += s.off[e + 1] - s.off[e];
            psum += s.psum[e];
        }
        sum += (count / LN) * (psum / LN);
    }
    return sum * mo->E;
}

double cpu_moe_margin(const cpu_moe *mo) {
    double margin = INFINITY;
    if (mo->k == mo->E) return margin;
    for (int l = 0; l < mo->used; l++) {
        moe_slot s = slot_at(mo, l);
        for (int n = 0; n < mo->rows; n++) {
            const real *p = s.prob + (int64_t)n * mo->E;
            const int32_t *ix = s.idx + (int64_t)n * mo->k;
            double kth = p[ix[mo->k - 1]], rest = -INFINITY;
            for (int e = 0; e < mo->E; e++) {
                int taken = 0;
                for (int j = 0; j < mo->k; j++) taken |= ix[j] == e;
                if (!taken && p[e] > rest) rest = p[e];
            }
            if (kth - rest < margin) margin = kth - rest;
        }
    }
    return margin;
}

int cpu_moe_expert_rows(const cpu_moe *mo, int l, int e) {
    if (l < 0 || l >= mo->used || e < 0 || e >= mo->E) return 0;
    const int32_t *off = mo->off + (size_t)l * (mo->E + 1);
    return off[e + 1] - off[e];
}
