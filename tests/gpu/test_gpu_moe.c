/* test_gpu_moe — the mixture of experts' CUDA kernels (gpu/gpu_moe.h)
 * against CPU references in double, in fp32 and bf16 storage: routing
 * (softmax, top k, renormalized weights, ties), the grouping of (row, slot)
 * pairs by expert (exactly model/cpu/moe.c's counting sort), gather and
 * scatter, the backward of the weights and the router's logits against
 * finite differences (with and without the load-balancing term), and the
 * grouped expert MLP forward against each row's experts on the CPU. The
 * other kernels are test_gpu_kernels.c's. */
#include "gpu_test.h"

#include "gpu/gpu_gemm.h"
#include "gpu/gpu_moe.h"
#include "model/cpu/cpu.h"

#include <omp.h>
#include <string.h>

/* ---- mixture of experts (gpu_moe.h) -------------------------------------------------------- */

/* moe.c's routing in double: p (N, E), the top k (descending, the lower
 * expert first among equals) and their renormalized weights. */
static void ref_route(const float *lg, int N, int E, int k, double *p, int32_t *idx, double *w) {
    for (int n = 0; n < N; n++) {
        const float *l = lg + (size_t)n * E;
        double *pr = p + (size_t)n * E, mx = l[0], sum = 0, top = 0;
        for (int e = 1; e < E; e++) mx = fmax(mx, l[e]);
        for (int e = 0; e < E; e++) sum += pr[e] = exp(l[e] - mx);
        for (int e = 0; e < E; e++) pr[e] /= sum;
        int32_t *ix = idx + (size_t)n * k;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int t = 0; t < j; t++) taken |= ix[t] == e;
                if (!taken && (best < 0 || pr[e] > pr[best])) best = e;
            }
            ix[j] = best;
            top += pr[best];
        }
        for (int j = 0; j < k; j++) w[(size_t)n * k + j] = pr[ix[j]] / top;
    }
}

/* The grouping as a stable counting sort (moe.c's route). */
static void ref_group(const int32_t *idx, int N, int k, int E, int32_t *off, int32_t *tok,
                      int32_t *pos) {
    memset(off, 0, (size_t)(E + 1) * sizeof *off);
    for (int64_t i = 0; i < (int64_t)N * k; i++) off[idx[i] + 1]++;
    for (int e = 0; e < E; e++) off[e + 1] += off[e];
    int32_t *next = malloc((size_t)E * sizeof *next);
    memcpy(next, off, (size_t)E * sizeof *next);
    for (int64_t i = 0; i < (int64_t)N * k; i++) {
        int32_t r = next[idx[i]]++;
        tok[r] = (int32_t)(i / k);
        pos[i] = r;
    }
    free(next);
}

/* Row n's sum of its slots' rows, ascending expert order, coef NULL: 1. */
static void ref_scatter(float *out, const float *rows, const float *coef, const int32_t *idx,
                        const int32_t *pos, int N, int k, int C, int accumulate) {
    for (int n = 0; n < N; n++) {
        const int32_t *ix = idx + (size_t)n * k;
        int order[GPU_MOE_MAX_K];
        for (int j = 0; j < k; j++) order[j] = j;
        for (int a = 1; a < k; a++) /* a sort by expert id */
            for (int b = a; b > 0 && ix[order[b - 1]] > ix[order[b]]; b--) {
                int t = order[b];
                order[b] = order[b - 1];
                order[b - 1] = t;
            }
        for (int c = 0; c < C; c++) {
            float acc = 0;
            for (int j = 0; j < k; j++) {
                int s = order[j];
                float cf = coef ? coef[(size_t)n * k + s] : 1;
                acc += cf * rows[(size_t)pos[(size_t)n * k + s] * C + c];
            }
            out[(size_t)n * C + c] = accumulate ? out[(size_t)n * C + c] + acc : acc;
        }
    }
}

/* The routing's device buffers for N rows, E experts, k per row. */
typedef struct {
    float *prob, *w;
    int32_t *idx, *cnt, *off, *tok, *pos;
} moe_dev;

static void *gt_alloc(size_t bytes) {
    void *d;
    CUDA_OK(cudaMalloc(&d, bytes));
    return d;
}

static moe_dev moe_dev_alloc(int N, int E, int k) {
    size_t Nk = (size_t)N * k;
    return (moe_dev){
        gt_alloc((size_t)N * E * 4),   gt_alloc(Nk * 4), gt_alloc(Nk * 4), gt_alloc((size_t)E * 4),
        gt_alloc((size_t)(E + 1) * 4), gt_alloc(Nk * 4), gt_alloc(Nk * 4)};
}

static void moe_dev_free(moe_dev *d) {
    cudaFree(d->prob), cudaFree(d->w), cudaFree(d->idx), cudaFree(d->cnt), cudaFree(d->off);
    cudaFree(d->tok), cudaFree(d->pos);
}

/* Routing, grouping, Σp, gather and scatter, against the references;
 * returns nothing, frees everything. E = 5 with k = 3 (no power of two),
 * rows spanning several of the grouping's 256-pair chunks, and rows of
 * equal logits (ties go to the lower expert). */
static void test_moe_routing(gpu_dtype t, int E, int k) {
    int N = 301, C = 70;
    int64_t Nk = (int64_t)N * k;
    float *lg = gt_rand((size_t)N * E, 91 + E, 2);
    for (int e = 0; e < E; e++) lg[e] = 0.5f;                 /* row 0: all equal */
    for (int e = 0; e < E; e++) lg[E + e] = e % 2 ? 1.5f : 0; /* row 1: ties at the top */
    double *p = malloc((size_t)N * E * sizeof *p), *w = malloc((size_t)Nk * sizeof *w);
    int32_t *idx = malloc((size_t)Nk * 4), *gidx = malloc((size_t)Nk * 4);
    ref_route(lg, N, E, k, p, idx, w);
    float *dlg = gt_put(lg, (size_t)N * E, GPU_F32);
    moe_dev d = moe_dev_alloc(N, E, k);
    float *dprob = d.prob, *dw_ = d.w;
    int32_t *didx = d.idx, *dcnt = d.cnt, *doff = d.off, *dtok = d.tok, *dpos = d.pos;
    double *dpsum = gt_alloc((size_t)E * sizeof(double));
    CUDA_OK(gpu_moe_route(dlg, N, E, k, dprob, didx, dw_, 0));
    float *gp = malloc((size_t)N * E * 4), *gw = malloc((size_t)Nk * 4);
    float *fp = malloc((size_t)N * E * 4), *fw = malloc((size_t)Nk * 4);
    gt_get(gp, dprob, (size_t)N * E, GPU_F32);
    gt_get(gw, dw_, (size_t)Nk, GPU_F32);
    CUDA_OK(cudaMemcpy(gidx, didx, (size_t)Nk * 4, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < (int64_t)N * E; i++) fp[i] = (float)p[i];
    for (int64_t i = 0; i < Nk; i++) fw[i] = (float)w[i];
    char what[96];
    snprintf(what, sizeof what, "moe route E=%d k=%d: softmax", E, k);
    GT_CLOSE(what, gp, fp, (size_t)N * E, 1e-6);
    CHECK_MSG(memcmp(gidx, idx, (size_t)Nk * 4) == 0, "moe route E=%d k=%d: the top k differ", E,
              k);
    snprintf(what, sizeof what, "moe route E=%d k=%d: renormalized weights", E, k);
    GT_CLOSE(what, gw, fw, (size_t)Nk, 1e-6);
    /* the weights are renormalized, not the probabilities themselves */
    double worst = 0;
    for (int n = 0; n < N; n++) {
        double sum = 0;
        for (int j = 0; j < k; j++) sum += gw[(size_t)n * k + j];
        worst = fmax(worst, fabs(sum - 1));
    }
    CHECK_MSG(worst <= 1e-6, "moe route: weights sum to 1 within %.2e", worst);
    CHECK(gidx[0] == 0 && gw[0] == gw[1]); /* row 0's tie: experts 0, 1, … */
    CHECK(gidx[k] == 1);                   /* row 1: the first of the equal top ones */

    /* grouping: the CPU's permutation, exactly */
    int32_t *off = malloc((size_t)(E + 1) * 4), *tok = malloc((size_t)Nk * 4);
    int32_t *pos = malloc((size_t)Nk * 4), *goff = malloc((size_t)(E + 1) * 4);
    int32_t *gtok = malloc((size_t)Nk * 4), *gpos = malloc((size_t)Nk * 4);
    ref_group(gidx, N, k, E, off, tok, pos);
    CUDA_OK(gpu_moe_group(didx, N, k, E, dcnt, doff, dtok, dpos, 0));
    CUDA_OK(cudaMemcpy(goff, doff, (size_t)(E + 1) * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(gtok, dtok, (size_t)Nk * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(gpos, dpos, (size_t)Nk * 4, cudaMemcpyDeviceToHost));
    CHECK_MSG(memcmp(goff, off, (size_t)(E + 1) * 4) == 0, "moe group E=%d: offsets", E);
    CHECK_MSG(memcmp(gtok, tok, (size_t)Nk * 4) == 0, "moe group E=%d: block rows", E);
    CHECK_MSG(memcmp(gpos, pos, (size_t)Nk * 4) == 0, "moe group E=%d: positions", E);
    printf("  moe group E=%d k=%d: %s\n", E, k,
           memcmp(goff, off, (size_t)(E + 1) * 4) || memcmp(gtok, tok, (size_t)Nk * 4) ||
                   memcmp(gpos, pos, (size_t)Nk * 4)
               ? "FAIL"
               : "the CPU's permutation");

    /* Σ_n p in row order: the CPU's sum of the same values */
    double *gpsum = malloc((size_t)E * sizeof *gpsum);
    CUDA_OK(gpu_moe_psum(dpsum, dprob, N, E, 0));
    CUDA_OK(cudaMemcpy(gpsum, dpsum, (size_t)E * sizeof(double), cudaMemcpyDeviceToHost));
    for (int e = 0; e < E; e++) {
        double s = 0;
        for (int n = 0; n < N; n++) s += gp[(size_t)n * E + e];
        CHECK_MSG(gpsum[e] == s, "moe psum expert %d: %.17g vs %.17g", e, gpsum[e], s);
    }

    /* gather (type t, exact) and the weighted scatter (fp32) */
    size_t nh = (size_t)N * C, ng = (size_t)Nk * C;
    float *h = gt_rand(nh, 95, 1), *xg = malloc(ng * 4), *gxg = malloc(ng * 4);
    if (t == GPU_BF16) gt_round_bf16(h, nh);
    for (int64_t r = 0; r < Nk; r++) memcpy(xg + r * C, h + (size_t)tok[r] * C, (size_t)C * 4);
    void *dh = gt_put(h, nh, t), *dxg;
    CUDA_OK(cudaMalloc(&dxg, ng * gpu_dtype_size(t)));
    CUDA_OK(gpu_moe_gather(dxg, dh, t, dtok, Nk, C, 0));
    gt_get(gxg, dxg, ng, t);
    snprintf(what, sizeof what, "moe gather %s", gt_dtype_name(t));
    GT_CLOSE(what, gxg, xg, ng, 0);
    float *rows = gt_rand(ng, 96, 1), *out0 = gt_rand(nh, 97, 1), *ref = malloc(nh * 4);
    float *got = malloc(nh * 4);
    float *drows = gt_put(rows, ng, GPU_F32), *dout = gt_put(out0, nh, GPU_F32);
    for (int acc = 0; acc < 2; acc++) {
        /* weighted, then (the backward's dX sum) weights of 1, accumulated */
        memcpy(ref, out0, nh * 4);
        ref_scatter(ref, rows, acc ? NULL : gw, gidx, gpos, N, k, C, acc);
        CUDA_OK(cudaMemcpy(dout, out0, nh * 4, cudaMemcpyHostToDevice));
        CUDA_OK(gpu_moe_scatter(dout, drows, acc ? NULL : dw_, didx, dpos, N, k, C, acc, 0));
        gt_get(got, dout, nh, GPU_F32);
        GT_CLOSE(acc ? "moe scatter, weights 1, accumulate" : "moe scatter, weighted", got, ref, nh,
                 1e-6);
    }
    moe_dev_free(&d);
    cudaFree(dlg), cudaFree(dpsum), cudaFree(dh), cudaFree(dxg);
    cudaFree(drows), cudaFree(dout);
    free(lg), free(p), free(w), free(idx), free(gidx), free(gp), free(gw), free(fp), free(fw);
    free(off), free(tok), free(pos), free(goff), free(gtok), free(gpos), free(gpsum);
    free(h), free(xg), free(gxg), free(rows), free(out0), free(ref), free(got);
}

/* Row n's part of the backward's objective with the choice held fixed:
 * J = Σ_s dw_s · w_s(logits) + Σ_e aux_e · p_e(logits), in double. */
static double router_objective(const double *l, int E, int k, const int32_t *ix, const double *dw,
                               const double *aux) {
    double mx = l[0], sum = 0, top = 0, J = 0;
    for (int e = 1; e < E; e++) mx = fmax(mx, l[e]);
    for (int e = 0; e < E; e++) sum += exp(l[e] - mx);
    for (int j = 0; j < k; j++) top += exp(l[ix[j]] - mx) / sum;
    for (int j = 0; j < k; j++) J += dw[j] * (exp(l[ix[j]] - mx) / sum) / top;
    if (aux)
        for (int e = 0; e < E; e++) J += aux[e] * exp(l[e] - mx) / sum;
    return J;
}

/* The weighting's backward (dY, dw) and the router's (against central
 * differences of router_objective), with and without the load-balancing
 * term. */
static void test_moe_backward(gpu_dtype t) {
    int N = 53, E = 6, k = 2, C = 45;
    int64_t Nk = (int64_t)N * k;
    float *lg = gt_rand((size_t)N * E, 101, 2);
    double *p = malloc((size_t)N * E * sizeof *p), *w = malloc((size_t)Nk * sizeof *w);
    int32_t *idx = malloc((size_t)Nk * 4), *off = malloc((size_t)(E + 1) * 4);
    int32_t *tok = malloc((size_t)Nk * 4), *pos = malloc((size_t)Nk * 4);
    ref_route(lg, N, E, k, p, idx, w);
    ref_group(idx, N, k, E, off, tok, pos);
    float *fp = malloc((size_t)N * E * 4), *fw = malloc((size_t)Nk * 4);
    for (int64_t i = 0; i < (int64_t)N * E; i++) fp[i] = (float)p[i];
    for (int64_t i = 0; i < Nk; i++) fw[i] = (float)w[i];

    /* dY = w · dy, dw = dy · Y */
    size_t nh = (size_t)N * C, ng = (size_t)Nk * C;
    float *dy = gt_rand(nh, 102, 1), *Y = gt_rand(ng, 103, 1);
    if (t == GPU_BF16) gt_round_bf16(dy, nh);
    float *ref = malloc(ng * 4), *got = malloc(ng * 4);
    double *rdw = malloc((size_t)Nk * sizeof *rdw), *gdw = malloc((size_t)Nk * sizeof *gdw);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            int64_t r = pos[(size_t)n * k + j];
            double d = 0;
            for (int c = 0; c < C; c++) {
                ref[r * C + c] = fw[(size_t)n * k + j] * dy[(size_t)n * C + c];
                d += (double)dy[(size_t)n * C + c] * Y[r * C + c];
            }
            rdw[(size_t)n * k + j] = d;
        }
    if (t == GPU_BF16) gt_round_bf16(ref, ng);
    void *ddy = gt_put(dy, nh, t), *ddY;
    float *dYk = gt_put(Y, ng, GPU_F32), *dw_ = gt_put(fw, (size_t)Nk, GPU_F32);
    int32_t *dpos, *didx;
    double *ddw, *daux;
    CUDA_OK(cudaMalloc(&ddY, ng * gpu_dtype_size(t)));
    CUDA_OK(cudaMalloc((void **)&dpos, (size_t)Nk * 4));
    CUDA_OK(cudaMalloc((void **)&didx, (size_t)Nk * 4));
    CUDA_OK(cudaMalloc((void **)&ddw, (size_t)Nk * sizeof(double)));
    CUDA_OK(cudaMalloc((void **)&daux, (size_t)E * sizeof(double)));
    CUDA_OK(cudaMemcpy(dpos, pos, (size_t)Nk * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(didx, idx, (size_t)Nk * 4, cudaMemcpyHostToDevice));
    CUDA_OK(gpu_moe_combine_backward(ddY, ddw, ddy, t, dYk, dw_, dpos, N, k, C, 0));
    gt_get(got, ddY, ng, t);
    CUDA_OK(cudaMemcpy(gdw, ddw, (size_t)Nk * sizeof(double), cudaMemcpyDeviceToHost));
    char what[96];
    snprintf(what, sizeof what, "moe dY = w dy %s", gt_dtype_name(t));
    GT_CLOSE(what, got, ref, ng, 0);
    double e_dw = 0, m_dw = 0;
    for (int64_t i = 0; i < Nk; i++) {
        e_dw = fmax(e_dw, fabs(gdw[i] - rdw[i]));
        m_dw = fmax(m_dw, fabs(rdw[i]));
    }
    printf("  moe dw = dy . Y %s: rel_max %.3e\n", gt_dtype_name(t), e_dw / m_dw);
    CHECK_MSG(e_dw <= 1e-12 * m_dw, "moe dw: %.3e", e_dw / m_dw);

    /* the router's backward: random dw and load-balancing coefficients */
    double *dwv = malloc((size_t)Nk * sizeof *dwv), aux[6];
    uint64_t seed = 104;
    for (int64_t i = 0; i < Nk; i++) dwv[i] = (double)(rng_next(&seed) >> 11) / 9007199254740992.0;
    for (int e = 0; e < E; e++) aux[e] = 0.3 * (double)(rng_next(&seed) >> 11) / 9007199254740992.0;
    CUDA_OK(cudaMemcpy(ddw, dwv, (size_t)Nk * sizeof(double), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(daux, aux, sizeof aux, cudaMemcpyHostToDevice));
    float *dprob = gt_put(fp, (size_t)N * E, GPU_F32);
    void *dlog;
    CUDA_OK(cudaMalloc(&dlog, (size_t)N * E * gpu_dtype_size(t)));
    float *fd = malloc((size_t)N * E * 4), *gl = malloc((size_t)N * E * 4);
    for (int with_aux = 0; with_aux < 2; with_aux++) {
        const double *a = with_aux ? aux : NULL;
        for (int n = 0; n < N; n++) {
            double l[6], hstep = 1e-5;
            for (int e = 0; e < E; e++) l[e] = lg[(size_t)n * E + e];
            for (int e = 0; e < E; e++) {
                double l0 = l[e];
                l[e] = l0 + hstep;
                double jp = router_objective(l, E, k, idx + (size_t)n * k, dwv + (size_t)n * k, a);
                l[e] = l0 - hstep;
                double jm = router_objective(l, E, k, idx + (size_t)n * k, dwv + (size_t)n * k, a);
                l[e] = l0;
                fd[(size_t)n * E + e] = (float)((jp - jm) / (2 * hstep));
            }
        }
        CUDA_OK(gpu_moe_router_backward(dlog, t, dprob, dw_, didx, ddw, with_aux ? daux : NULL, N,
                                        E, k, 0));
        gt_get(gl, dlog, (size_t)N * E, t);
        snprintf(what, sizeof what, "moe router backward %s%s vs finite differences",
                 gt_dtype_name(t), with_aux ? " + aux" : "");
        GT_CLOSE(what, gl, fd, (size_t)N * E, t == GPU_BF16 ? 1e-2 : 1e-5);
    }
    cudaFree(ddy), cudaFree(ddY), cudaFree(dYk), cudaFree(dw_), cudaFree(dpos), cudaFree(didx);
    cudaFree(ddw), cudaFree(daux), cudaFree(dprob), cudaFree(dlog);
    free(lg), free(p), free(w), free(idx), free(off), free(tok), free(pos), free(fp), free(fw);
    free(dy), free(Y), free(ref), free(got), free(rdw), free(gdw), free(dwv), free(fd), free(gl);
}

/* The grouped expert MLP forward, as gpu_moe.c strings it (gather, one
 * GEMM per expert's block for w1, w3, w2, SwiGLU, weighted scatter), against
 * each row's k experts computed one by one on the CPU. */
static void test_moe_experts(void) {
    int N = 41, E = 4, k = 2, C = 24, F = 40;
    int64_t Nk = (int64_t)N * k;
    float *lg = gt_rand((size_t)N * E, 111, 2), *h = gt_rand((size_t)N * C, 112, 1);
    float *W1 = gt_rand((size_t)E * F * C, 113, 0.3f), *W3 = gt_rand((size_t)E * F * C, 114, 0.3f);
    float *W2 = gt_rand((size_t)E * C * F, 115, 0.3f);
    double *p = malloc((size_t)N * E * sizeof *p), *w = malloc((size_t)Nk * sizeof *w);
    int32_t *idx = malloc((size_t)Nk * 4);
    ref_route(lg, N, E, k, p, idx, w);
    /* CPU: y[n] = Σ_s w · w2(silu(w1 h) · w3 h), ascending experts */
    float *ref = calloc((size_t)N * C, 4), *a = malloc((size_t)F * 4), *b = malloc((size_t)F * 4);
    float *act = malloc((size_t)F * 4), *o = malloc((size_t)C * 4);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            for (int j = 0; j < k; j++) {
                if (idx[(size_t)n * k + j] != e) continue;
                const float *x = h + (size_t)n * C;
                cpu_gemm(0, 1, 1, F, C, 1, x, C, W1 + (size_t)e * F * C, C, 0, a, F);
                cpu_gemm(0, 1, 1, F, C, 1, x, C, W3 + (size_t)e * F * C, C, 0, b, F);
                cpu_swiglu_forward(act, a, b, F);
                cpu_gemm(0, 1, 1, C, F, 1, act, F, W2 + (size_t)e * C * F, F, 0, o, C);
                for (int c = 0; c < C; c++)
                    ref[(size_t)n * C + c] += (float)w[(size_t)n * k + j] * o[c];
            }
    /* GPU */
    gpu_blas *bl;
    CHECK_OK(gpu_blas_create(&bl, 0));
    float *dlg = gt_put(lg, (size_t)N * E, GPU_F32), *dh = gt_put(h, (size_t)N * C, GPU_F32);
    float *dW1 = gt_put(W1, (size_t)E * F * C, GPU_F32),
          *dW3 = gt_put(W3, (size_t)E * F * C, GPU_F32);
    float *dW2 = gt_put(W2, (size_t)E * C * F, GPU_F32);
    moe_dev d = moe_dev_alloc(N, E, k);
    float *dprob = d.prob, *dw_ = d.w;
    int32_t *didx = d.idx, *dcnt = d.cnt, *doff = d.off, *dtok = d.tok, *dpos = d.pos, off[5];
    float *dxg = gt_alloc((size_t)Nk * C * 4), *dg = gt_alloc((size_t)Nk * F * 4);
    float *du = gt_alloc((size_t)Nk * F * 4), *dact = gt_alloc((size_t)Nk * F * 4);
    float *dY = gt_alloc((size_t)Nk * C * 4), *dy = gt_alloc((size_t)N * C * 4);
    CUDA_OK(gpu_moe_route(dlg, N, E, k, dprob, didx, dw_, 0));
    CUDA_OK(gpu_moe_group(didx, N, k, E, dcnt, doff, dtok, dpos, 0));
    CUDA_OK(cudaMemcpy(off, doff, sizeof off, cudaMemcpyDeviceToHost));
    CUDA_OK(gpu_moe_gather(dxg, dh, GPU_F32, dtok, Nk, C, 0));
    for (int e = 0; e < E; e++) {
        int r0 = off[e], n = off[e + 1] - r0;
        CHECK_OK(gpu_gemm(bl, 0, 1, n, F, C, 1, dxg + (size_t)r0 * C, C, dW1 + (size_t)e * F * C, C,
                          GPU_F32, 0, dg + (size_t)r0 * F, F, GPU_F32));
        CHECK_OK(gpu_gemm(bl, 0, 1, n, F, C, 1, dxg + (size_t)r0 * C, C, dW3 + (size_t)e * F * C, C,
                          GPU_F32, 0, du + (size_t)r0 * F, F, GPU_F32));
    }
    CUDA_OK(gpu_swiglu_forward(dact, dg, du, GPU_F32, Nk * F, 0));
    for (int e = 0; e < E; e++) {
        int r0 = off[e], n = off[e + 1] - r0;
        CHECK_OK(gpu_gemm(bl, 0, 1, n, C, F, 1, dact + (size_t)r0 * F, F, dW2 + (size_t)e * C * F,
                          F, GPU_F32, 0, dY + (size_t)r0 * C, C, GPU_F32));
    }
    CUDA_OK(gpu_moe_scatter(dy, dY, dw_, didx, dpos, N, k, C, 0, 0));
    float *got = malloc((size_t)N * C * 4);
    gt_get(got, dy, (size_t)N * C, GPU_F32);
    GT_CLOSE("moe grouped experts forward (top 2 of 4)", got, ref, (size_t)N * C, 1e-5);
    CHECK(off[0] == 0 && off[E] == Nk);
    gpu_blas_free(bl);
    moe_dev_free(&d);
    cudaFree(dlg), cudaFree(dh), cudaFree(dW1), cudaFree(dW3), cudaFree(dW2);
    cudaFree(dxg), cudaFree(dg), cudaFree(du), cudaFree(dact), cudaFree(dY), cudaFree(dy);
    free(lg), free(h), free(W1), free(W3), free(W2), free(p), free(w), free(idx), free(ref);
    free(a), free(b), free(act), free(o), free(got);
}

int main(void) {
    GPU_TEST_REQUIRE_DEVICE();
    test_moe_routing(GPU_F32, 8, 2);
    test_moe_routing(GPU_BF16, 5, 3);
    test_moe_routing(GPU_F32, 4, 1);
    test_moe_backward(GPU_F32);
    test_moe_backward(GPU_BF16);
    test_moe_experts();
    return check_finish();
}
