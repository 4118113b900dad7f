/* lora_hook.c — the forward and backward that model_linear's adapter hook
 * calls for an adapted linear (lora.h), dropout, and the shared A products
 * of linears that take the same input.
 *
 * Per adapted linear, rows n of a chunk (N = B·T tokens):
 *   forward    x̃ = dropout(x)             (N, in)
 *              u = x̃ Aᵀ                  (N, r)    kept for backward
 *              y += s · u Bᵀ              (N, out)
 *   backward   du = s · dy B              (N, r)
 *              dB += s · dyᵀ u            (out, r)
 *              dA += duᵀ x̃               (r, in)
 *              dx += mask/(1−p) ⊙ du A    (N, in)
 * Every product is one GEMM.
 *
 * Input groups. A block's q, k and v (and gate and up) read the same x, and
 * the model runs them one after another, forward and backward, with the
 * same x and dx (model.h, "Linears that share an input"). With rank r each
 * of their x-side products (x Aᵀ, duᵀ x, du A) is a GEMM with one side of
 * only r: it streams x or dx through memory for 2r flops per element and
 * runs at a third of the GEMM's peak (58 against 140 GFLOP/s for three
 * rank-16 modules of a 1024 × 768 input, 2 threads). So without dropout
 * (which gives each module its own x̃) the group's members share them:
 *   forward, first member    U = x [A₁; A₂; …]ᵀ         (N, Σr), each u a
 *                            block of U's columns
 *   backward, each member    its du into DU's columns, its dB
 *   backward, last member    [dA₁; dA₂; …] += DUᵀ x    (Σr, in)
 *                            dx += DU [A₁; A₂; …]       (N, in)
 * The sums are the same; only their rounding differs from one product per
 * module (an fp32 ulp or so). A member called out of that order computes
 * its own products, and members left waiting are finished alone by the next
 * backward call, before it reuses the scratch. A backward pass must not end
 * with members waiting (model/cpu's end with a block's last member; a
 * forward drops what waits: the backward that left it was abandoned). */
#include "lora/lora_hook.h"

#include "lora/lora_dropout.h"

#include "model/cpu/cpu.h"
#include "util/err.h"

#include <stdlib.h>
#include <string.h>

/* The key of one module's dropout mask in one training forward. */
static uint64_t dropout_key(const lora_module *mod, uint64_t counter) {
    return lora_dropout_key(mod->set->cfg.seed, mod->index, counter);
}

/* out (n, in) = x (n, in) · mask / (1 − p) for rows r0… of the whole batch,
 * or out += that (accumulate: the backward's dx, where a dropped element
 * adds nothing), as gpu/'s dropout kernel. */
static void dropout_mask(real *out, const real *x, int n, int in, int64_t r0, uint64_t key,
                         double p, int accumulate) {
    real keep_scale = (real)(1.0 / (1.0 - p));
#pragma omp parallel for if ((int64_t)n * in > 65536)
    for (int i = 0; i < n; i++) {
        int64_t base = (r0 + i) * in;
        for (int j = 0; j < in; j++) {
            int64_t e = (int64_t)i * in + j;
            int keep = lora_dropout_keep(key, base + j, p);
            if (accumulate) {
                if (keep) out[e] += x[e] * keep_scale;
            } else {
                out[e] = keep ? x[e] * keep_scale : 0;
            }
        }
    }
}

/* ---- input groups ---------------------------------------------------------------- */

static lora_group *module_group(const lora_module *mod) {
    return mod->group >= 0 ? &mod->set->groups[mod->group] : NULL;
}

/* dst (rank_sum, in) = the members' A matrices stacked, in member order. */
static void group_stack_A(const lora_set *s, const lora_group *g, real *dst) {
    for (int i = 0; i < g->n; i++) {
        const lora_module *m = &s->modules[g->first + i];
        memcpy(dst, m->A.data, (size_t)m->A.numel * sizeof(real));
        dst += m->A.numel;
    }
}

/* Forward of the group's first member: every member's u (n, r) = x Aᵀ,
 * one GEMM for all, U (n, Σr) split into the members' u. */
static void group_forward(lora_set *s, lora_group *g, const real *x, int n) {
    int R = g->rank_sum;
    group_stack_A(s, g, s->scratch_gA);
    cpu_gemm(0, 1, n, R, g->in, 1, x, g->in, s->scratch_gA, g->in, 0, s->scratch_gu, R);
    int col = 0;
    for (int i = 0; i < g->n; i++) {
        lora_module *m = &s->modules[g->first + i];
        int r = m->rank;
#pragma omp parallel for if ((int64_t)n * r > 65536)
        for (int row = 0; row < n; row++)
            memcpy(m->u + (int64_t)row * r, s->scratch_gu + (int64_t)row * R + col,
                   (size_t)r * sizeof(real));
        col += r;
    }
}

/* The x-side products of the first `joined` members of the waiting group,
 * whose du are DU's first columns: dA += duᵀ x, dx += du A. All members
 * joined: one GEMM each for the group; fewer (the order was broken): one
 * pair per member. */
static void group_finish(lora_set *s) {
    lora_group *g = s->pending;
    s->pending = NULL;
    if (!g) return;
    int R = g->rank_sum, n = g->bwd_n, in = g->in;
    const real *x = g->bwd_x;
    if (g->bwd_joined == g->n) {
        int has_grad = s->modules[g->first].A.grad != NULL;
        if (has_grad) {
            /* [dA₁; dA₂; …] (R, in) = DUᵀ x, added to each member's dA */
            cpu_gemm(1, 0, R, in, n, 1, s->scratch_gdu, R, x, in, 0, s->scratch_gdA, in);
            const real *d = s->scratch_gdA;
            for (int i = 0; i < g->n; i++) {
                lora_module *m = &s->modules[g->first + i];
                real *ga = m->A.grad;
#pragma omp simd
                for (int64_t e = 0; e < m->A.numel; e++) ga[e] += d[e];
                d += m->A.numel;
            }
        }
        group_stack_A(s, g, s->scratch_gA);
        cpu_gemm(0, 0, n, in, R, 1, s->scratch_gdu, R, s->scratch_gA, in, 1, g->bwd_dx, in);
    } else {
        int col = 0;
        for (int i = 0; i < g->bwd_joined; i++) {
            lora_module *m = &s->modules[g->first + i];
            const real *du = s->scratch_gdu + col;
            if (m->A.grad) cpu_gemm(1, 0, m->rank, in, n, 1, du, R, x, in, 1, m->A.grad, in);
            cpu_gemm(0, 0, n, in, m->rank, 1, du, R, m->A.data, in, 1, g->bwd_dx, in);
            col += m->rank;
        }
    }
    g->bwd_joined = 0;
}

/* ---- the adapter hook ---------------------------------------------------------- */

static void lora_forward(void *ctx, const real *x, real *y, int N) {
    lora_module *mod = ctx;
    lora_set *s = mod->set;
    int in = mod->in, out = mod->out, r = mod->rank, cap = s->cap_rows;
    uint64_t call = ++s->calls;
    /* A forward inside a group's backward: that backward was abandoned (an
     * error between its members); its waiting products go with it. */
    if (s->pending) {
        s->pending->bwd_joined = 0;
        s->pending = NULL;
    }
    /* A forward counts even with no rows (an expert no token chose), so every
     * module's counter stays the set's (lora_dropout_counter). */
    mod->u_dropout = s->training && s->cfg.dropout > 0;
    if (s->training) mod->u_counter = mod->counter++;
    if (N <= 0) {
        mod->u_rows = 0;
        return;
    }
    lora_group *g = module_group(mod);
    if (g && !mod->u_dropout && N <= cap) {
        if (mod->group_pos == 0) {
            group_forward(s, g, x, N);
            g->fwd_x = x;
            g->fwd_n = N;
            g->fwd_call = call;
        }
        if (g->fwd_x == x && g->fwd_n == N && g->fwd_call + (uint64_t)mod->group_pos == call) {
            /* y (N, out) += s · u Bᵀ, u made by the group's first member */
            cpu_gemm(0, 1, N, out, r, (real)mod->scale, mod->u, r, mod->B.data, r, 1, y, out);
            mod->u_rows = N;
            return;
        }
    }
    uint64_t key = dropout_key(mod, mod->u_counter);
    int save = N <= cap;
    for (int r0 = 0; r0 < N; r0 += cap) {
        int n = N - r0 < cap ? N - r0 : cap;
        const real *xin = x + (int64_t)r0 * in;
        if (mod->u_dropout) {
            dropout_mask(s->scratch_x, xin, n, in, r0, key, s->cfg.dropout, 0);
            xin = s->scratch_x;
        }
        real *u = save ? mod->u : s->scratch_u;
        /* u (n, r) = x̃ (n, in) · Aᵀ;  y (n, out) += s · u · Bᵀ */
        cpu_gemm(0, 1, n, r, in, 1, xin, in, mod->A.data, in, 0, u, r);
        cpu_gemm(0, 1, n, out, r, (real)mod->scale, u, r, mod->B.data, r, 1, y + (int64_t)r0 * out,
                 out);
    }
    mod->u_rows = save ? N : -1;
}

/* Backward of a group member: du into its columns of DU and dB now; the
 * x-side products wait for the last member (group_finish). Returns 0 when
 * the call joined the group, −1 when it must be computed alone. */
static int group_backward(lora_module *mod, const real *x, const real *dy, real *dx, int N,
                          uint64_t call) {
    lora_set *s = mod->set;
    lora_group *g = module_group(mod);
    if (!g || mod->u_dropout || mod->u_rows != N || N > s->cap_rows) return -1;
    if (mod->group_pos == 0) {
        g->bwd_x = x;
        g->bwd_dx = dx;
        g->bwd_n = N;
        g->bwd_call = call;
        g->bwd_joined = 0;
        s->pending = g;
    } else if (s->pending != g || g->bwd_joined != mod->group_pos || g->bwd_x != x ||
               g->bwd_dx != dx || g->bwd_n != N || g->bwd_call + (uint64_t)mod->group_pos != call) {
        return -1;
    }
    int r = mod->rank, out = mod->out, R = g->rank_sum;
    int col = 0;
    for (int i = 0; i < mod->group_pos; i++) col += s->modules[g->first + i].rank;
    real scale = (real)mod->scale;
    real *du = s->scratch_gdu + col;
    /* du (N, r) = s · dy (N, out) · B (out, r), columns col… of DU (N, R) */
    cpu_gemm(0, 0, N, r, out, scale, dy, out, mod->B.data, r, 0, du, R);
    /* dB (out, r) += s · dyᵀ · u */
    if (mod->B.grad) cpu_gemm(1, 0, out, r, N, scale, dy, out, mod->u, r, 1, mod->B.grad, r);
    g->bwd_joined++;
    if (g->bwd_joined == g->n) group_finish(s);
    return 0;
}

static void lora_backward(void *ctx, const real *x, const real *dy, real *dx, int N) {
    lora_module *mod = ctx;
    lora_set *s = mod->set;
    int in = mod->in, out = mod->out, r = mod->rank, cap = s->cap_rows;
    real scale = (real)mod->scale;
    uint64_t call = ++s->calls;
    if (N <= 0) return;
    /* A group still waiting is finished first unless this call is its next
     * member: its scratch is about to be reused. */
    if (s->pending && (mod->group_pos == 0 || s->pending != module_group(mod))) group_finish(s);
    if (group_backward(mod, x, dy, dx, N, call) == 0) return;
    if (s->pending) group_finish(s);
    int saved = mod->u_rows == N;
    uint64_t key = dropout_key(mod, mod->u_counter);
    double p = s->cfg.dropout;
    for (int r0 = 0; r0 < N; r0 += cap) {
        int n = N - r0 < cap ? N - r0 : cap;
        const real *xin = x + (int64_t)r0 * in;
        const real *dyc = dy + (int64_t)r0 * out;
        real *dxc = dx + (int64_t)r0 * in;
        if (mod->u_dropout) {
            dropout_mask(s->scratch_x, xin, n, in, r0, key, p, 0);
            xin = s->scratch_x;
        }
        const real *u = mod->u + (int64_t)r0 * r;
        if (!saved) {
            cpu_gemm(0, 1, n, r, in, 1, xin, in, mod->A.data, in, 0, s->scratch_u, r);
            u = s->scratch_u;
        }
        real *du = s->scratch_du;
        /* du (n, r) = s · dy (n, out) · B (out, r) */
        cpu_gemm(0, 0, n, r, out, scale, dyc, out, mod->B.data, r, 0, du, r);
        /* dB (out, r) += s · dyᵀ · u */
        if (mod->B.grad) cpu_gemm(1, 0, out, r, n, scale, dyc, out, u, r, 1, mod->B.grad, r);
        /* dA (r, in) += duᵀ · x̃ */
        if (mod->A.grad) cpu_gemm(1, 0, r, in, n, 1, du, r, xin, in, 1, mod->A.grad, in);
        /* dx (n, in) += du · A, through the dropout mask */
        if (mod->u_dropout) {
            cpu_gemm(0, 0, n, in, r, 1, du, r, mod->A.data, in, 0, s->scratch_x, in);
            dropout_mask(dxc, s->scratch_x, n, in, r0, key, p, 1);
        } else {
            cpu_gemm(0, 0, n, in, r, 1, du, r, mod->A.data, in, 1, dxc, in);
        }
    }
}

const model_adapter_ops lora_hook_ops = {lora_forward, lora_backward};

/* ---- sizing and groups ------------------------------------------------------------ */

static int grow(real **p, size_t n, const char *what, int rows) {
    real *q = realloc(*p, (n ? n : 1) * sizeof(real));
    if (!q) return err_set("out of memory for LoRA %s (%d rows)", what, rows);
    *p = q;
    return 0;
}

static int alloc_group_rows(lora_set *s, int rows) {
    size_t nr = (size_t)rows * s->max_rank_sum;
    if (s->max_rank_sum == 0) return 0;
    if (grow(&s->scratch_gu, nr, "group scratch", rows) != 0 ||
        grow(&s->scratch_gdu, nr, "group scratch", rows) != 0)
        return -1;
    return 0;
}

int lora_hook_alloc_rows(lora_set *s, int rows) {
    for (int i = 0; i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        if (grow(&mod->u, (size_t)rows * mod->rank, "activations", rows) != 0) return -1;
        mod->u_rows = -1;
    }
    size_t nr = (size_t)rows * s->max_rank;
    if (grow(&s->scratch_u, nr, "scratch", rows) != 0 ||
        grow(&s->scratch_du, nr, "scratch", rows) != 0)
        return -1;
    if (s->cfg.dropout > 0 &&
        grow(&s->scratch_x, (size_t)rows * s->max_in, "dropout scratch", rows) != 0)
        return -1;
    if (alloc_group_rows(s, rows) != 0) return -1;
    s->cap_rows = rows;
    return 0;
}

/* The group of the adapted modules among a block's linears `lins` (in the
 * order the model runs them), when there are two or more. */
static int add_group(lora_set *s, model_linear *const *lins, int n_lins) {
    int first = -1, n = 0;
    for (int j = 0; j < n_lins; j++) {
        if (!lins[j]->w || lins[j]->adapter != &lora_hook_ops) continue;
        lora_module *m = lins[j]->adapter_ctx;
        if (m->set != s) continue;
        /* members must be consecutive in the set, as lora_create orders them */
        if (n > 0 && m->index != first + n) return 0;
        if (n == 0) first = m->index;
        n++;
    }
    if (n < 2) return 0;
    lora_group *g = realloc(s->groups, (size_t)(s->n_groups + 1) * sizeof *g);
    if (!g) return err_set("out of memory for the LoRA input groups");
    s->groups = g;
    g = &s->groups[s->n_groups];
    memset(g, 0, sizeof *g);
    g->first = first;
    g->n = n;
    g->in = s->modules[first].in;
    for (int i = 0; i < n; i++) {
        lora_module *m = &s->modules[first + i];
        m->group = s->n_groups;
        m->group_pos = i;
        g->rank_sum += m->rank;
    }
    s->n_groups++;
    return 0;
}

int lora_hook_attach(lora_set *s, const model *m) {
    lora_hook_detach(s);
    for (int l = 0; l < m->cfg.num_layers; l++) {
        model_layer *L = &m->layers[l];
        model_linear *qkv[] = {&L->q, &L->k, &L->v}, *mlp[] = {&L->gate, &L->up};
        if (add_group(s, qkv, 3) != 0 || add_group(s, mlp, 2) != 0) return -1;
    }
    int max_sum = 0;
    for (int i = 0; i < s->n_groups; i++)
        if (s->groups[i].rank_sum > max_sum) max_sum = s->groups[i].rank_sum;
    size_t na = (size_t)max_sum * s->max_in;
    if (max_sum > 0 && (grow(&s->scratch_gA, na, "group scratch", 0) != 0 ||
                        grow(&s->scratch_gdA, na, "group scratch", 0) != 0))
        return -1;
    s->max_rank_sum = max_sum;
    return alloc_group_rows(s, s->cap_rows);
}

void lora_hook_detach(lora_set *s) {
    for (int i = 0; i < s->n_modules; i++) s->modules[i].group = -1;
    free(s->groups);
    s->groups = NULL;
    s->n_groups = 0;
    s->pending = NULL;
}

void lora_hook_free(lora_set *s) {
    lora_hook_detach(s);
    for (int i = 0; i < s->n_modules; i++) free(s->modules[i].u);
    free(s->scratch_x);
    free(s->scratch_u);
    free(s->scratch_du);
    free(s->scratch_gA);
    free(s->scratch_gdA);
    free(s->scratch_gu);
    free(s->scratch_gdu);
}
