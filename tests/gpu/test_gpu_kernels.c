/* test_gpu_kernels — every CUDA kernel against its CPU counterpart
 * (model/cpu/cpu.h), in fp32 storage (tolerances at fp32 rounding) and bf16
 * storage (inputs rounded to bf16 for the CPU reference; tolerances at bf16
 * rounding of the outputs). Shapes are chosen to hit the kernels' edges:
 * row widths that are not multiples of 32, several attention tiles with the
 * causal mask and a sliding window across them, head dims of 4 to 128
 * (including 80, not a multiple of 32), GQA, strided q/k/v, ALiBi's biases
 * (each case checked to be far from the result without them), the decode
 * kernel against the forward's last rows; xIELU's inputs on both sides of 0
 * and of eps (and at eps); BLOOM's q|k|v layout; the mixture of experts'
 * routing (ties included), grouping, gather and scatter, and its backward
 * against finite differences. */
#include "gpu_test.h"

#include "gpu/gpu_gemm.h"
#include "gpu/gpu_moe.h"
#include "model/cpu/cpu.h"

#include <omp.h>
#include <string.h>

static const char *tname(gpu_dtype t) {
    return t == GPU_BF16 ? "bf16" : "fp32";
}

/* ---- GEMM --------------------------------------------------------------------------- */

static void gemm_case(gpu_blas *b, int ta, int tb, int M, int N, int K, gpu_dtype ab, gpu_dtype ct,
                      int offset) {
    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
    size_t na = (size_t)(ta ? K : M) * lda + offset, nb = (size_t)(tb ? N : K) * ldb;
    size_t nc = (size_t)M * ldc;
    float *A = gt_rand(na, 1 + M, 1), *B = gt_rand(nb, 2 + N, 1), *C = gt_rand(nc, 3 + K, 1);
    if (ab == GPU_BF16) gt_round_bf16(A, na), gt_round_bf16(B, nb);
    if (ct == GPU_BF16) gt_round_bf16(C, nc);
    float alpha = 1.25f, beta = 0.5f;
    float *ref = malloc(nc * sizeof *ref), *got = malloc(nc * sizeof *got);
    memcpy(ref, C, nc * sizeof *ref);
    cpu_gemm(ta, tb, M, N, K, alpha, A + offset, lda, B, ldb, beta, ref, ldc);
    void *dA = gt_put(A, na, ab), *dB = gt_put(B, nb, ab), *dC = gt_put(C, nc, ct);
    void *dA_off = (char *)dA + (size_t)offset * gpu_dtype_size(ab);
    CHECK_OK(gpu_gemm(b, ta, tb, M, N, K, alpha, dA_off, lda, dB, ldb, ab, beta, dC, ldc, ct));
    gt_get(got, dC, nc, ct);
    char what[96];
    snprintf(what, sizeof what, "gemm %s->%s %dx%dx%d t%d%d%s", tname(ab), tname(ct), M, N, K, ta,
             tb, offset ? " misaligned" : "");
    GT_CLOSE(what, got, ref, nc, ct == GPU_BF16 ? 1e-2 : ab == GPU_BF16 ? 1e-4 : 1e-5);
    cudaFree(dA), cudaFree(dB), cudaFree(dC);
    free(A), free(B), free(C), free(ref), free(got);
}

static void test_gemm(void) {
    gpu_blas *b;
    CHECK_OK(gpu_blas_create(&b, 0));
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(b, ta, tb, 37, 53, 29, GPU_F32, GPU_F32, 0);
            gemm_case(b, ta, tb, 128, 96, 64, GPU_F32, GPU_F32, 0);
            gemm_case(b, ta, tb, 37, 53, 29, GPU_BF16, GPU_F32, 0);
            gemm_case(b, ta, tb, 128, 96, 64, GPU_BF16, GPU_BF16, 0);
        }
    gemm_case(b, 0, 1, 37, 53, 29, GPU_F32, GPU_F32, 1);
    gemm_case(b, 1, 0, 64, 48, 40, GPU_BF16, GPU_F32, 1);
    /* the same shape again: a cached plan */
    gemm_case(b, 0, 1, 37, 53, 29, GPU_F32, GPU_F32, 0);
    CHECK_FAILS_WITH(gpu_gemm(b, 0, 0, 4, 4, 0, 1, NULL, 1, NULL, 1, GPU_F32, 0, NULL, 4, GPU_F32),
                     "K = 0");
    gpu_blas_free(b);
}

/* ---- norms ---------------------------------------------------------------------------- */

static void test_norms(gpu_dtype t) {
    int N = 37, C = 200;
    float eps = 1e-5f;
    size_t n = (size_t)N * C;
    float *x = gt_rand(n, 11, 2), *w = gt_rand(C, 12, 0.2f), *b = gt_rand(C, 13, 0.5f);
    float *dy = gt_rand(n, 14, 1), *dx0 = gt_rand(n, 15, 0.1f);
    for (int c = 0; c < C; c++) w[c] += 1;
    float *y = malloc(n * 4), *got = malloc(n * 4), *rstd = malloc(N * 4), *mean = malloc(N * 4);
    float *grstd = malloc(N * 4), *gmean = malloc(N * 4), *dx = malloc(n * 4);
    float *dX = gt_put(x, n, GPU_F32), *dW = gt_put(w, C, GPU_F32), *dB = gt_put(b, C, GPU_F32);
    float *dDY = gt_put(dy, n, GPU_F32), *dDX = gt_put(dx0, n, GPU_F32);
    float *dR = gt_put(rstd, N, GPU_F32), *dM = gt_put(mean, N, GPU_F32);
    void *dY = gt_put(x, n, t);
    double ytol = t == GPU_BF16 ? 1e-2 : 1e-5;
    char what[64];

    /* RMSNorm */
    cpu_rmsnorm_forward(y, rstd, x, w, N, C, eps);
    CUDA_OK(gpu_rmsnorm_forward(dY, t, dR, dX, dW, N, C, eps, 0));
    gt_get(got, dY, n, t);
    gt_get(grstd, dR, N, GPU_F32);
    snprintf(what, sizeof what, "rmsnorm forward y (%s)", tname(t));
    GT_CLOSE(what, got, y, n, ytol);
    GT_CLOSE("rmsnorm forward rstd", grstd, rstd, (size_t)N, 1e-6);
    CUDA_OK(gpu_rmsnorm_apply(dY, t, dX, dW, dR, N, C, 0));
    gt_get(got, dY, n, t);
    snprintf(what, sizeof what, "rmsnorm apply (%s)", tname(t));
    GT_CLOSE(what, got, y, n, ytol);
    memcpy(dx, dx0, n * 4);
    cpu_rmsnorm_backward(dx, NULL, dy, x, w, rstd, N, C);
    CUDA_OK(cudaMemcpy(dR, rstd, N * 4, cudaMemcpyHostToDevice));
    CUDA_OK(gpu_rmsnorm_backward(dDX, dDY, dX, dW, dR, N, C, 0));
    gt_get(got, dDX, n, GPU_F32);
    GT_CLOSE("rmsnorm backward dx (+=)", got, dx, n, 1e-5);

    /* LayerNorm */
    cpu_layernorm_forward(y, mean, rstd, x, w, b, N, C, eps);
    CUDA_OK(gpu_layernorm_forward(dY, t, dM, dR, dX, dW, dB, N, C, eps, 0));
    gt_get(got, dY, n, t);
    gt_get(grstd, dR, N, GPU_F32);
    gt_get(gmean, dM, N, GPU_F32);
    snprintf(what, sizeof what, "layernorm forward y (%s)", tname(t));
    GT_CLOSE(what, got, y, n, ytol);
    GT_CLOSE("layernorm forward mean", gmean, mean, (size_t)N, 1e-6);
    GT_CLOSE("layernorm forward rstd", grstd, rstd, (size_t)N, 1e-6);
    CUDA_OK(gpu_layernorm_apply(dY, t, dX, dW, dB, dM, dR, N, C, 0));
    gt_get(got, dY, n, t);
    snprintf(what, sizeof what, "layernorm apply (%s)", tname(t));
    GT_CLOSE(what, got, y, n, ytol);
    memcpy(dx, dx0, n * 4);
    cpu_layernorm_backward(dx, NULL, NULL, dy, x, w, mean, rstd, N, C);
    CUDA_OK(cudaMemcpy(dR, rstd, N * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dM, mean, N * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dDX, dx0, n * 4, cudaMemcpyHostToDevice));
    CUDA_OK(gpu_layernorm_backward(dDX, dDY, dX, dW, dM, dR, N, C, 0));
    gt_get(got, dDX, n, GPU_F32);
    GT_CLOSE("layernorm backward dx (+=)", got, dx, n, 1e-5);

    cudaFree(dX), cudaFree(dW), cudaFree(dB), cudaFree(dDY), cudaFree(dDX), cudaFree(dR);
    cudaFree(dM), cudaFree(dY);
    free(x), free(w), free(b), free(dy), free(dx0), free(y), free(got), free(rstd), free(mean);
    free(grstd), free(gmean), free(dx);
}

/* ---- RoPE ----------------------------------------------------------------------------- */

/* llama3 scaling over whole heads, and Phi-3's LongRoPE (long factors, the
 * attention factor) over the first half of each head, the rest passing
 * through. */
static void test_rope(gpu_dtype t) {
    for (int partial = 0; partial < 2; partial++) {
        model_config c;
        memset(&c, 0, sizeof c);
        c.head_dim = 8;
        c.rope_theta = 100;
        c.max_position = 64;
        if (partial) {
            c.family = MODEL_FAMILY_PHI3;
            c.rope_dim = 4;
            c.rope_longrope = 1;
            c.rope_original_max_position = 4; /* T = 5 > 4: the long factors */
            c.rope_short[0] = 1.5, c.rope_short[1] = 3;
            c.rope_long[0] = 2.5, c.rope_long[1] = 7;
        } else {
            c.rope_llama3 = 1;
            c.rope_factor = 8;
            c.rope_low_freq_factor = 1;
            c.rope_high_freq_factor = 4;
            c.rope_original_max_position = 32;
        }
        int T = 5, B = 2, N = B * T, H = 3, D = 8, R = partial ? 4 : 8, ld = H * D + 4;
        float cs[5 * 4], sn[5 * 4];
        cpu_rope_table(cs, sn, &c, T);
        float *dcs = gt_put(cs, (size_t)T * R / 2, GPU_F32);
        float *dsn = gt_put(sn, (size_t)T * R / 2, GPU_F32);
        size_t n = (size_t)N * ld;
        for (int inverse = 0; inverse < 2; inverse++) {
            float *x = gt_rand(n, 21 + inverse, 2), *got = malloc(n * 4);
            if (t == GPU_BF16) gt_round_bf16(x, n);
            void *dx = gt_put(x, n, t);
            cpu_rope_apply(x, ld, N, T, H, D, R, cs, sn, inverse);
            CUDA_OK(gpu_rope(dx, t, ld, N, T, H, D, R, dcs, dsn, inverse, 0));
            gt_get(got, dx, n, t);
            char what[64];
            snprintf(what, sizeof what, "rope %s %s (%s)", partial ? "longrope, partial" : "llama3",
                     inverse ? "inverse" : "forward", tname(t));
            GT_CLOSE(what, got, x, n, t == GPU_BF16 ? 1e-2 : 1e-6);
            cudaFree(dx);
            free(x), free(got);
        }
        cudaFree(dcs), cudaFree(dsn);
    }
}

/* ---- activations ---------------------------------------------------------------------------- */

static void test_activations(gpu_dtype t) {
    size_t n = 1000;
    float *g = gt_rand(n, 31, 4), *u = gt_rand(n, 32, 2), *d = gt_rand(n, 33, 1);
    if (t == GPU_BF16) gt_round_bf16(g, n), gt_round_bf16(u, n), gt_round_bf16(d, n);
    float *ref = malloc(n * 4), *ref2 = malloc(n * 4), *got = malloc(n * 4);
    void *dg = gt_put(g, n, t), *du = gt_put(u, n, t), *dd = gt_put(d, n, t);
    void *o1 = gt_put(g, n, t), *o2 = gt_put(g, n, t);
    double tol = t == GPU_BF16 ? 1e-2 : 1e-5;
    char what[64];

    /* the gated activations: SwiGLU and GeGLU (Gemma) */
    static const struct {
        const char *name;
        void (*cpu_fwd)(real *, const real *, const real *, int64_t);
        void (*cpu_bwd)(real *, real *, const real *, const real *, const real *, int64_t);
        cudaError_t (*gpu_fwd)(void *, const void *, const void *, gpu_dtype, int64_t,
                               cudaStream_t);
        cudaError_t (*gpu_bwd)(void *, void *, const void *, const void *, const void *, gpu_dtype,
                               int64_t, cudaStream_t);
    } gated[] = {
        {"swiglu", cpu_swiglu_forward, cpu_swiglu_backward, gpu_swiglu_forward,
         gpu_swiglu_backward},
        {"geglu", cpu_geglu_forward, cpu_geglu_backward, gpu_geglu_forward, gpu_geglu_backward},
    };
    for (size_t a = 0; a < sizeof gated / sizeof gated[0]; a++) {
        gated[a].cpu_fwd(ref, g, u, (int64_t)n);
        CUDA_OK(gated[a].gpu_fwd(o1, dg, du, t, (int64_t)n, 0));
        gt_get(got, o1, n, t);
        snprintf(what, sizeof what, "%s forward (%s)", gated[a].name, tname(t));
        GT_CLOSE(what, got, ref, n, tol);
        gated[a].cpu_bwd(ref, ref2, d, g, u, (int64_t)n);
        CUDA_OK(cudaMemcpy(o1, dd, n * gpu_dtype_size(t), cudaMemcpyDeviceToDevice));
        /* dg in place of dact */
        CUDA_OK(gated[a].gpu_bwd(o1, o2, o1, dg, du, t, (int64_t)n, 0));
        gt_get(got, o1, n, t);
        snprintf(what, sizeof what, "%s backward dg (%s)", gated[a].name, tname(t));
        GT_CLOSE(what, got, ref, n, tol);
        gt_get(got, o2, n, t);
        snprintf(what, sizeof what, "%s backward du (%s)", gated[a].name, tname(t));
        GT_CLOSE(what, got, ref2, n, tol);
    }

    cpu_gelu_forward(ref, g, (int64_t)n);
    CUDA_OK(gpu_gelu_forward(o1, dg, t, (int64_t)n, 0));
    gt_get(got, o1, n, t);
    snprintf(what, sizeof what, "gelu forward (%s)", tname(t));
    GT_CLOSE(what, got, ref, n, tol);
    cpu_gelu_backward(ref, d, g, (int64_t)n);
    CUDA_OK(cudaMemcpy(o1, dd, n * gpu_dtype_size(t), cudaMemcpyDeviceToDevice));
    CUDA_OK(gpu_gelu_backward(o1, o1, dg, t, (int64_t)n, 0));
    gt_get(got, o1, n, t);
    snprintf(what, sizeof what, "gelu backward (%s)", tname(t));
    GT_CLOSE(what, got, ref, n, tol);

    cudaFree(dg), cudaFree(du), cudaFree(dd), cudaFree(o1), cudaFree(o2);
    free(g), free(u), free(d), free(ref), free(ref2), free(got);
}

/* Soft-capping of logits (Gemma 2): forward on fp32 values, backward into a
 * gradient of type t, against softcap.c (values up to 4 caps, so the tanh
 * saturates on some). */
static void test_softcap(gpu_dtype t) {
    size_t n = 1000;
    float cap = 3.0f;
    float *x = gt_rand(n, 71, 12), *d = gt_rand(n, 72, 1), *ref = malloc(n * 4);
    float *got = malloc(n * 4);
    if (t == GPU_BF16) gt_round_bf16(d, n);
    memcpy(ref, x, n * 4);
    cpu_softcap_forward(ref, (int64_t)n, cap);
    float *dx = gt_put(x, n, GPU_F32);
    CUDA_OK(gpu_softcap(dx, (int64_t)n, cap, 0));
    gt_get(got, dx, n, GPU_F32);
    GT_CLOSE("softcap forward", got, ref, n, 1e-6);
    /* backward: the reference d · (1 − (y / cap)²) from the CPU's capped values */
    float *want = malloc(n * 4);
    for (size_t i = 0; i < n; i++) want[i] = d[i] * (1 - (ref[i] / cap) * (ref[i] / cap));
    void *dd = gt_put(d, n, t);
    CUDA_OK(gpu_softcap_backward(dd, t, dx, (int64_t)n, cap, 0));
    gt_get(got, dd, n, t);
    char what[64];
    snprintf(what, sizeof what, "softcap backward (%s)", tname(t));
    GT_CLOSE(what, got, want, n, t == GPU_BF16 ? 1e-2 : 1e-5);
    cudaFree(dx), cudaFree(dd);
    free(x), free(d), free(ref), free(got), free(want);
}

/* ---- the block options' kernels (gpu_block_kernels.cu) -----------------------------------------
 */

static void test_xielu(gpu_dtype t) {
    size_t n = 1000;
    float *x = gt_rand(n, 41, 3), *d = gt_rand(n, 42, 1);
    x[0] = -0.05f; /* exactly eps: torch.minimum's tie */
    if (t == GPU_BF16) gt_round_bf16(x, n), gt_round_bf16(d, n);
    /* a layer's values: eps far enough below 0 that (eps, 0] holds inputs */
    real vals[4] = {0.3f, -0.9f, 0.45f, -0.05f};
    model_param pp[4];
    memset(pp, 0, sizeof pp);
    for (int i = 0; i < 4; i++) pp[i].data = &vals[i], pp[i].numel = 1;
    model_xielu px = {&pp[0], &pp[1], &pp[2], &pp[3]};
    real k[4];
    cpu_xielu_values(&px, k);
    gpu_xielu gk = {k[0], k[1], k[2], k[3]};
    float *ref = malloc(n * 4), *got = malloc(n * 4);
    void *dx = gt_put(x, n, t), *dd = gt_put(d, n, t), *o = gt_put(x, n, t);
    double tol = t == GPU_BF16 ? 1e-2 : 1e-5;
    char what[64];
    cpu_xielu_forward(ref, x, &px, (int64_t)n);
    CUDA_OK(gpu_xielu_forward(o, dx, t, (int64_t)n, &gk, 0));
    gt_get(got, o, n, t);
    snprintf(what, sizeof what, "xielu forward (%s)", tname(t));
    GT_CLOSE(what, got, ref, n, tol);
    cpu_xielu_backward(ref, d, x, &px, 1, (int)n, NULL);
    CUDA_OK(cudaMemcpy(o, dd, n * gpu_dtype_size(t), cudaMemcpyDeviceToDevice));
    CUDA_OK(gpu_xielu_backward(o, o, dx, t, (int64_t)n, &gk, 0)); /* dx in place of dy */
    gt_get(got, o, n, t);
    snprintf(what, sizeof what, "xielu backward (%s)", tname(t));
    GT_CLOSE(what, got, ref, n, tol);

    /* the post-norm's residual add */
    float *y = gt_rand(n, 43, 2);
    for (size_t i = 0; i < n; i++) ref[i] = y[i] + x[i];
    float *dy32 = gt_put(y, n, GPU_F32), *dx32 = gt_put(x, n, GPU_F32);
    CUDA_OK(gpu_add_f32(dy32, dx32, (int64_t)n, 0));
    gt_get(got, dy32, n, GPU_F32);
    GT_CLOSE("add_f32", got, ref, n, 0);
    cudaFree(dx), cudaFree(dd), cudaFree(o), cudaFree(dy32), cudaFree(dx32);
    free(x), free(d), free(y), free(ref), free(got);
}

/* ---- embedding and bias ------------------------------------------------------------------------
 */

static void test_embed_bias(gpu_dtype t) {
    int V = 50, C = 24, T = 4, N = 12;
    float *wte = gt_rand((size_t)V * C, 41, 1), *wpe = gt_rand((size_t)T * C, 42, 1);
    if (t == GPU_BF16) gt_round_bf16(wte, (size_t)V * C), gt_round_bf16(wpe, (size_t)T * C);
    int32_t tok[12];
    uint64_t s = 43;
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(rng_next(&s) % (uint64_t)V);
    int32_t *dtok;
    CUDA_OK(cudaMalloc((void **)&dtok, sizeof tok));
    CUDA_OK(cudaMemcpy(dtok, tok, sizeof tok, cudaMemcpyHostToDevice));
    void *dwte = gt_put(wte, (size_t)V * C, t), *dwpe = gt_put(wpe, (size_t)T * C, t);
    size_t n = (size_t)N * C;
    float *ref = malloc(n * 4), *got = malloc(n * 4);
    float *dx = gt_put(ref, n, GPU_F32);
    char what[64];
    for (int pos = 0; pos < 2; pos++) {
        model_param pwte = {.ndim = 2, .shape = {V, C}, .numel = (int64_t)V * C, .values = wte};
        model_param pwpe = {.ndim = 2, .shape = {T, C}, .numel = (int64_t)T * C, .values = wpe};
        cpu_embed_forward(ref, tok, &pwte, pos ? &pwpe : NULL, 0, N, T, C);
        CUDA_OK(gpu_embed_forward(dx, dtok, dwte, pos ? dwpe : NULL, t, N, T, C, 0));
        gt_get(got, dx, n, GPU_F32);
        snprintf(what, sizeof what, "embedding%s (%s)", pos ? " + positions" : "", tname(t));
        GT_CLOSE(what, got, ref, n, 1e-7);
    }
    /* bias: y = b, then y += b */
    int out = 24;
    float *b = gt_rand((size_t)out, 44, 1), *y0 = gt_rand(n, 45, 1);
    if (t == GPU_BF16) gt_round_bf16(y0, n);
    void *dy = gt_put(y0, n, t);
    float *db = gt_put(b, (size_t)out, GPU_F32);
    for (int acc = 0; acc < 2; acc++) {
        for (size_t i = 0; i < n; i++) ref[i] = acc ? ref[i] + b[i % out] : b[i % out];
        CUDA_OK(gpu_add_bias(dy, t, db, N, out, acc, 0));
        gt_get(got, dy, n, t);
        snprintf(what, sizeof what, "bias %s (%s)", acc ? "+=" : "=", tname(t));
        GT_CLOSE(what, got, ref, n, t == GPU_BF16 ? 1e-2 : 1e-7);
    }
    cudaFree(dtok), cudaFree(dwte), cudaFree(dwpe), cudaFree(dx), cudaFree(dy), cudaFree(db);
    free(wte), free(wpe), free(ref), free(got), free(b), free(y0);
}

/* ---- cross-entropy -------------------------------------------------------------------------- */

static void test_xent(gpu_dtype t) {
    int N = 6, V = 1000;
    size_t n = (size_t)N * V;
    float *logits = gt_rand(n, 51, 5), *got = malloc(n * 4), *ref = malloc(n * 4);
    int32_t tg[6] = {3, MODEL_IGNORE_INDEX, 999, 0, 517, MODEL_IGNORE_INDEX};
    double lse[6], loss[6];
    float lse_f[6], loss_f[6], glse[6], gloss[6];
    float scale = 0.37f;
    cpu_xent_forward(lse, loss, logits, tg, N, V);
    for (int i = 0; i < N; i++) lse_f[i] = (float)lse[i], loss_f[i] = (float)loss[i];
    memcpy(ref, logits, n * 4);
    cpu_xent_backward(ref, lse, tg, N, V, scale);
    float *dl = gt_put(logits, n, GPU_F32), *dlse = gt_put(lse_f, 6, GPU_F32);
    float *dloss = gt_put(loss_f, 6, GPU_F32);
    int32_t *dtg;
    CUDA_OK(cudaMalloc((void **)&dtg, sizeof tg));
    CUDA_OK(cudaMemcpy(dtg, tg, sizeof tg, cudaMemcpyHostToDevice));
    void *dd = t == GPU_F32 ? (void *)dl : gt_put(logits, n, t); /* fp32: in place */
    CUDA_OK(gpu_xent(dl, dtg, N, V, dlse, dloss, dd, t, scale, 0));
    gt_get(glse, dlse, 6, GPU_F32);
    gt_get(gloss, dloss, 6, GPU_F32);
    gt_get(got, dd, n, t);
    char what[64];
    GT_CLOSE("xent lse", glse, lse_f, 6, 1e-6);
    GT_CLOSE("xent row loss", gloss, loss_f, 6, 1e-6);
    CHECK(gloss[1] == 0 && gloss[5] == 0);
    snprintf(what, sizeof what, "xent d logits (%s%s)", tname(t), t == GPU_F32 ? ", in place" : "");
    GT_CLOSE(what, got, ref, n, t == GPU_BF16 ? 1e-2 : 1e-5);
    /* forward only: no gradient written */
    CUDA_OK(gpu_xent(dl, dtg, N, V, dlse, dloss, NULL, t, scale, 0));
    gt_get(gloss, dloss, 6, GPU_F32);
    if (t == GPU_BF16) GT_CLOSE("xent row loss, no gradient", gloss, loss_f, 6, 1e-6);
    if (t != GPU_F32) cudaFree(dd);
    cudaFree(dl), cudaFree(dlse), cudaFree(dloss), cudaFree(dtg);
    free(logits), free(got), free(ref);
}

/* ---- attention ------------------------------------------------------------------------------- */

typedef struct {
    int B, T, H, KV, D, window, pad;
    float softcap; /* Gemma 2's soft-capping of the scores, 0: none */
    int alibi;     /* BLOOM's ALiBi biases (cpu_alibi_slopes of H heads) */
} attn_case;

static const char *impl_name(gpu_dtype t, gpu_attn_impl impl) {
    if (impl == GPU_ATTN_MMA) return "bf16, tensor cores";
    return t == GPU_BF16 ? "bf16, CUDA cores" : "fp32";
}

/* A case's attention as the CPU and the GPU see it: their shapes, the CPU's
 * scratch, ALiBi's slopes on both sides (the GPU's only with ac->alibi). */
typedef struct {
    cpu_attn at;
    gpu_attn_shape gs;
    float *slopes, *d_slopes;
} attn_pair;

static attn_pair attn_pair_make(const attn_case *ac, int B, gpu_attn_impl impl) {
    attn_pair p;
    int threads = omp_get_max_threads();
    p.slopes = malloc((size_t)ac->H * sizeof *p.slopes);
    cpu_alibi_slopes(p.slopes, ac->H);
    p.d_slopes = ac->alibi ? gt_put(p.slopes, (size_t)ac->H, GPU_F32) : NULL;
    p.at = (cpu_attn){.B = B,
                      .T = ac->T,
                      .H = ac->H,
                      .KV = ac->KV,
                      .D = ac->D,
                      .window = ac->window,
                      .scale = (float)(1.0 / sqrt((double)ac->D)),
                      .softcap = ac->softcap,
                      .alibi = ac->alibi ? p.slopes : NULL,
                      .threads = threads,
                      .scratch = malloc((size_t)threads * CPU_ATTN_SCRATCH(ac->T) * sizeof(float))};
    p.gs = (gpu_attn_shape){.B = B,
                            .T = ac->T,
                            .H = ac->H,
                            .KV = ac->KV,
                            .D = ac->D,
                            .window = ac->window,
                            .scale = p.at.scale,
                            .softcap = ac->softcap,
                            .impl = impl,
                            .alibi = p.d_slopes};
    return p;
}

static void attn_pair_free(attn_pair *p) {
    cudaFree(p->d_slopes);
    free(p->slopes), free(p->at.scratch);
}

static void attention_case(const attn_case *ac, gpu_dtype t, gpu_attn_impl impl) {
    int B = ac->B, T = ac->T, H = ac->H, KV = ac->KV, D = ac->D, N = B * T;
    /* q | k | v packed in one matrix of row stride ld, as GPT-2's c_attn output */
    int ld = (H + 2 * KV) * D + ac->pad, HD = H * D;
    size_t nq = (size_t)N * ld, no = (size_t)N * HD, nl = (size_t)B * H * T;
    float *qkv = gt_rand(nq, 61 + T, 1.5f), *dout = gt_rand(no, 62 + T, 1);
    if (t == GPU_BF16) gt_round_bf16(qkv, nq), gt_round_bf16(dout, no);
    float *out = calloc(no, 4), *lse = calloc(nl, 4), *gout = calloc(no, 4), *glse = calloc(nl, 4);
    float *dqkv = calloc(nq, 4), *gdqkv = calloc(nq, 4);
    attn_pair ap = attn_pair_make(ac, B, impl);
    const cpu_attn at = ap.at;
    const gpu_attn_shape gs = ap.gs;
    const float *q = qkv, *k = qkv + HD, *v = qkv + HD + KV * D;
    cpu_attention_forward(&at, q, ld, k, ld, v, ld, out, lse);
    void *d_qkv = gt_put(qkv, nq, t), *d_out = gt_put(out, no, t), *d_dout = gt_put(dout, no, t);
    void *d_dqkv = gt_put(dqkv, nq, t); /* zeros: the pad columns stay zero */
    float *d_lse = gt_put(lse, nl, GPU_F32), *d_delta = gt_put(lse, nl, GPU_F32);
    size_t ts = gpu_dtype_size(t);
    char *bq = d_qkv, *bd = d_dqkv;
    CUDA_OK(gpu_attention_forward(&gs, bq, ld, bq + HD * ts, ld, bq + (HD + KV * D) * ts, ld, d_out,
                                  d_lse, t, 0));
    gt_get(gout, d_out, no, t);
    gt_get(glse, d_lse, nl, GPU_F32);
    char what[128], name[80];
    snprintf(name, sizeof name, "attention B%d T%d H%d KV%d D%d w%d cap%g%s", B, T, H, KV, D,
             ac->window, ac->softcap, ac->alibi ? " alibi" : "");
    double tol_out = t == GPU_BF16 ? 2e-2 : 1e-5, tol_d = t == GPU_BF16 ? 3e-2 : 1e-4;
    snprintf(what, sizeof what, "%s: out (%s)", name, impl_name(t, impl));
    GT_CLOSE(what, gout, out, no, tol_out);
    snprintf(what, sizeof what, "%s: lse (%s)", name, impl_name(t, impl));
    GT_CLOSE(what, glse, lse, nl, 1e-5);
    if (ac->alibi) {
        /* the biases matter here: without them the CPU's output and
         * log-sum-exps lie far outside the tolerances just met */
        cpu_attn plain = at;
        plain.alibi = NULL;
        float *out0 = calloc(no, 4), *lse0 = calloc(nl, 4);
        cpu_attention_forward(&plain, q, ld, k, ld, v, ld, out0, lse0);
        double e_out = gt_rel_max(out0, out, no, 1e-30), e_lse = gt_rel_max(lse0, lse, nl, 1e-30);
        printf("  %s: without ALiBi out %.2e, lse %.2e off\n", name, e_out, e_lse);
        CHECK_MSG(e_out > 5 * tol_out && e_lse > 100 * 1e-5, "%s: ALiBi changes out by %.2e only",
                  name, e_out);
        free(out0), free(lse0);
    }
    /* Backward from the GPU's forward output (what the GPU backward reads too). */
    cpu_attention_backward(&at, q, ld, k, ld, v, ld, gout, dout, lse, dqkv, dqkv + HD,
                           dqkv + HD + KV * D);
    CUDA_OK(gpu_attention_backward(&gs, bq, ld, bq + HD * ts, ld, bq + (HD + KV * D) * ts, ld,
                                   d_out, d_dout, d_lse, d_delta, bd, bd + HD * ts,
                                   bd + (HD + KV * D) * ts, t, 0));
    gt_get(gdqkv, d_dqkv, nq, t);
    snprintf(what, sizeof what, "%s: dq|dk|dv (%s)", name, impl_name(t, impl));
    GT_CLOSE(what, gdqkv, dqkv, nq, tol_d);
    if (ac->alibi) {
        /* the same backward without the biases (P recomputed without them) */
        cpu_attn plain = at;
        plain.alibi = NULL;
        float *d0 = calloc(nq, 4);
        cpu_attention_backward(&plain, q, ld, k, ld, v, ld, gout, dout, lse, d0, d0 + HD,
                               d0 + HD + KV * D);
        double e = gt_rel_l2(d0, dqkv, nq, 1e-30);
        printf("  %s: backward without ALiBi %.2e off\n", name, e);
        CHECK_MSG(e > 5 * tol_d, "%s: ALiBi changes dq|dk|dv by %.2e only", name, e);
        free(d0);
    }
    cudaFree(d_qkv), cudaFree(d_out), cudaFree(d_dout), cudaFree(d_dqkv), cudaFree(d_lse);
    cudaFree(d_delta);
    attn_pair_free(&ap);
    free(qkv), free(dout), free(out), free(lse), free(gout), free(glse), free(dqkv), free(gdqkv);
}

/* fp32 and bf16 on CUDA cores for every case; bf16 on tensor cores for the
 * head dims they take (32, 64, 128; rows of a multiple of 8 elements). */
static void test_attention(gpu_dtype t) {
    attn_case cases[] = {
        {2, 7, 4, 2, 4, 0, 0},     /* the tiny models' shape: one tile */
        {1, 130, 2, 1, 64, 0, 0},  /* three query tiles, a partial one */
        {2, 200, 4, 2, 128, 0, 8}, /* widest tensor-core head dim, strided rows */
        {1, 300, 3, 3, 80, 50, 0}, /* D not a multiple of 32, a window across tiles */
        {2, 65, 2, 2, 8, 3, 8},    /* a short window */
        {1, 96, 6, 2, 16, 33, 0},  /* GQA groups of 3, window just over a key tile */
        {2, 150, 4, 1, 32, 70, 0}, /* GQA 4:1, a window over two key tiles */
        {1, 257, 2, 2, 64, 0, 0},  /* a last tile of one row */
        /* Gemma 2's soft-capped scores (the tiny cases' scores reach ~±6) */
        {2, 150, 4, 2, 32, 0, 0, 2.0f},  /* capped, causal, several tiles, GQA */
        {1, 130, 2, 1, 64, 40, 0, 1.5f}, /* capped with a window */
        /* Gemma's head_dim 256: CUDA cores, 8 dimensions per lane */
        {1, 100, 2, 1, 256, 0, 0, 0},
        {2, 70, 4, 2, 256, 30, 8, 2.0f},
        /* BLOOM's ALiBi: the tiny model's 6 heads of 4 (slopes of a
         * non-power-of-two head count), several tiles at the tensor cores'
         * head dims, with GQA (the dK/dV kernels' loop over a group's
         * heads) and with a window. Not with soft-capping: no model has
         * both, and the CPU's soft-capped backward leaves ALiBi out. */
        {2, 7, 6, 6, 4, 0, 0, 0, 1},
        {2, 150, 6, 6, 32, 0, 0, 0, 1},
        {1, 130, 4, 2, 64, 0, 8, 0, 1},
        {1, 200, 3, 3, 128, 0, 0, 0, 1},
        {2, 100, 4, 2, 32, 40, 0, 0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        attention_case(&cases[i], t, GPU_ATTN_SIMT);
        int D = cases[i].D;
        if (t == GPU_BF16 && (D == 32 || D == 64 || D == 128))
            attention_case(&cases[i], t, GPU_ATTN_MMA);
    }
    gpu_attn_shape bad = {.B = 1, .T = 4, .H = 2, .KV = 1, .D = 258, .scale = 1};
    CHECK(gpu_attention_forward(&bad, NULL, 0, NULL, 0, NULL, 0, NULL, NULL, t, 0) ==
          cudaErrorInvalidValue);
    /* tensor cores asked for where they do not apply: refused, not run */
    gpu_attn_shape odd = {
        .B = 1, .T = 4, .H = 2, .KV = 1, .D = 80, .scale = 1, .impl = GPU_ATTN_MMA};
    CHECK(gpu_attention_forward(&odd, NULL, 0, NULL, 0, NULL, 0, NULL, NULL, t, 0) ==
          cudaErrorInvalidValue);
}

/* Generation's kernel: n new rows at positions pos … pos + n − 1 against a
 * cache of pos + n keys are the last n rows of the causal forward over
 * T = pos + n positions (B = 1), so cpu_attention_forward is the reference;
 * with ALiBi also checked to lie far from the result without it. */
static void decode_case(const attn_case *ac, int n, gpu_dtype t) {
    int T = ac->T, H = ac->H, KV = ac->KV, D = ac->D, pos = T - n;
    int ld = (H + 2 * KV) * D + ac->pad, HD = H * D;
    size_t nq = (size_t)T * ld, no = (size_t)T * HD, nl = (size_t)H * T;
    float *qkv = gt_rand(nq, 161 + T, 1.5f);
    if (t == GPU_BF16) gt_round_bf16(qkv, nq);
    float *out = calloc(no, 4), *lse = calloc(nl, 4), *got = calloc((size_t)n * HD, 4);
    attn_pair ap = attn_pair_make(ac, 1, GPU_ATTN_AUTO);
    const cpu_attn at = ap.at;
    const gpu_attn_shape gs = ap.gs;
    const float *q = qkv, *k = qkv + HD, *v = qkv + HD + KV * D;
    cpu_attention_forward(&at, q, ld, k, ld, v, ld, out, lse);
    const float *want = out + (size_t)pos * HD; /* the last n rows */
    void *d_qkv = gt_put(qkv, nq, t), *d_out = gt_put(got, (size_t)n * HD, t);
    size_t ts = gpu_dtype_size(t);
    char *bq = d_qkv;
    CUDA_OK(gpu_attention_decode(&gs, n, pos, bq + (size_t)pos * ld * ts, ld, bq + HD * ts, ld,
                                 bq + (HD + KV * D) * ts, ld, d_out, t, 0));
    gt_get(got, d_out, (size_t)n * HD, t);
    char what[128];
    double tol = t == GPU_BF16 ? 2e-2 : 1e-5;
    snprintf(what, sizeof what, "attention decode T%d H%d KV%d D%d w%d cap%g%s: %d rows at %d (%s)",
             T, H, KV, D, ac->window, ac->softcap, ac->alibi ? " alibi" : "", n, pos, tname(t));
    GT_CLOSE(what, got, want, (size_t)n * HD, tol);
    if (ac->alibi) {
        cpu_attn plain = at;
        plain.alibi = NULL;
        float *out0 = calloc(no, 4);
        cpu_attention_forward(&plain, q, ld, k, ld, v, ld, out0, lse);
        double e = gt_rel_max(out0 + (size_t)pos * HD, want, (size_t)n * HD, 1e-30);
        printf("  %s: without ALiBi %.2e off\n", what, e);
        CHECK_MSG(e > 5 * tol, "%s: ALiBi changes the rows by %.2e only", what, e);
        free(out0);
    }
    cudaFree(d_qkv), cudaFree(d_out);
    attn_pair_free(&ap);
    free(qkv), free(out), free(lse), free(got);
}

/* One new row at the end of a context, and a few rows after a rewind. */
static void test_attention_decode(gpu_dtype t) {
    attn_case cases[] = {
        {1, 70, 4, 2, 32, 0, 0, 0, 0},     /* GQA, two chunks of keys for the last row */
        {1, 150, 3, 3, 80, 50, 8, 0, 0},   /* a window, strided rows */
        {1, 40, 2, 1, 256, 0, 0, 2.0f, 0}, /* Gemma: head dim 256, soft-capped */
        {1, 7, 6, 6, 4, 0, 0, 0, 1},       /* BLOOM's tiny heads, ALiBi */
        {1, 200, 6, 6, 32, 0, 0, 0, 1},    /* ALiBi over two chunks of keys */
        {1, 90, 4, 2, 64, 30, 0, 0, 1},    /* ALiBi with GQA and a window */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        decode_case(&cases[i], 1, t);
        decode_case(&cases[i], cases[i].T < 3 ? cases[i].T : 3, t);
    }
}

/* ---- BLOOM's query_key_value layout ---------------------------------------------------------- */

/* (H, 3, D) rows to the fused (3, H, D) and back, against cpu_qkv_heads:
 * a copy, so exact. */
static void test_qkv_heads(gpu_dtype t) {
    int N = 37, H = 6, D = 20;
    size_t n = (size_t)N * 3 * H * D;
    float *heads = gt_rand(n, 91, 1), *fused = malloc(n * 4), *got = malloc(n * 4);
    if (t == GPU_BF16) gt_round_bf16(heads, n);
    cpu_qkv_heads(fused, heads, N, H, D, 0);
    /* a permutation that moves values: a kernel that copied would fail */
    CHECK(memcmp(fused, heads, n * 4) != 0);
    void *d_heads = gt_put(heads, n, t), *d_fused = gt_put(heads, n, t);
    void *d_back = gt_put(fused, n, t);
    CUDA_OK(gpu_qkv_heads(d_fused, d_heads, t, N, H, D, 0, 0));
    gt_get(got, d_fused, n, t);
    char what[64];
    snprintf(what, sizeof what, "qkv (H, 3, D) -> (3, H, D) (%s)", tname(t));
    GT_CLOSE(what, got, fused, n, 0);
    CUDA_OK(gpu_qkv_heads(d_back, d_fused, t, N, H, D, 1, 0));
    gt_get(got, d_back, n, t);
    snprintf(what, sizeof what, "qkv (3, H, D) -> (H, 3, D), round trip (%s)", tname(t));
    GT_CLOSE(what, got, heads, n, 0);
    CHECK(gpu_qkv_heads(d_back, d_fused, t, N, 0, D, 1, 0) == cudaErrorInvalidValue);
    cudaFree(d_heads), cudaFree(d_fused), cudaFree(d_back);
    free(heads), free(fused), free(got);
}

/* ---- dropout ------------------------------------------------------------------------------------
 */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void test_dropout(void) {
    int n = 7, in = 33;
    int64_t row0 = 5;
    uint64_t key = 0x0123456789abcdefull;
    double p = 0.3;
    float ks = (float)(1.0 / (1.0 - p));
    size_t cnt = (size_t)n * in;
    float *x = gt_rand(cnt, 71, 1), *o0 = gt_rand(cnt, 72, 1), *ref = malloc(cnt * 4);
    float *acc = malloc(cnt * 4), *got = malloc(cnt * 4);
    int kept = 0;
    for (size_t i = 0; i < cnt; i++) {
        uint64_t e = (uint64_t)(row0 * in) + i;
        int keep =
            (double)(mix64(key + e * 0x9E3779B97F4A7C15ull) >> 11) * (1.0 / 9007199254740992.0) >=
            p;
        kept += keep;
        ref[i] = keep ? x[i] * ks : 0;
        acc[i] = keep ? o0[i] + x[i] * ks : o0[i];
    }
    float *dx = gt_put(x, cnt, GPU_F32), *dout = gt_put(o0, cnt, GPU_F32);
    CUDA_OK(gpu_dropout(dout, GPU_F32, dx, GPU_F32, n, in, row0, key, p, ks, 0, 0));
    gt_get(got, dout, cnt, GPU_F32);
    GT_CLOSE("dropout mask (lora.c's hash), apply", got, ref, cnt, 0);
    CUDA_OK(cudaMemcpy(dout, o0, cnt * 4, cudaMemcpyHostToDevice));
    CUDA_OK(gpu_dropout(dout, GPU_F32, dx, GPU_F32, n, in, row0, key, p, ks, 1, 0));
    gt_get(got, dout, cnt, GPU_F32);
    GT_CLOSE("dropout mask, accumulate", got, acc, cnt, 0);
    CHECK(kept > (int)cnt / 2 && kept < (int)cnt * 9 / 10);
    cudaFree(dx), cudaFree(dout);
    free(x), free(o0), free(ref), free(acc), free(got);
}

/* ---- optimizer
 * ------------------------------------------------------------------------------------ */

static void test_optimizer(void) {
    int64_t n = 100003;
    float *x = gt_rand((size_t)n, 81, 3);
    double ref = 0;
    for (int64_t i = 0; i < n; i++) ref += (double)x[i] * x[i];
    double *dpart, part[GPU_SUMSQ_BLOCKS];
    float *dx = gt_put(x, (size_t)n, GPU_F32);
    CUDA_OK(cudaMalloc((void **)&dpart, sizeof part));
    CUDA_OK(gpu_sumsq(dx, n, dpart, 0));
    CUDA_OK(cudaMemcpy(part, dpart, sizeof part, cudaMemcpyDeviceToHost));
    double sum = 0;
    for (int i = 0; i < GPU_SUMSQ_BLOCKS; i++) sum += part[i];
    printf("  sum of squares: rel err %.3e\n", fabs(sum - ref) / ref);
    CHECK(fabs(sum - ref) <= 1e-12 * ref);

    /* AdamW's update: adamw.c's loop with the same scalars, bit for bit. */
    float *p = gt_rand((size_t)n, 82, 1), *g = gt_rand((size_t)n, 83, 0.01f);
    float *m = gt_rand((size_t)n, 84, 0.001f), *v = gt_rand((size_t)n, 85, 1e-5f);
    for (int64_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *dp = gt_put(p, (size_t)n, GPU_F32), *dg = gt_put(g, (size_t)n, GPU_F32);
    float *dm = gt_put(m, (size_t)n, GPU_F32), *dv = gt_put(v, (size_t)n, GPU_F32);
    for (int lerp_low = 0; lerp_low < 2; lerp_low++) {
        float w1 = lerp_low ? 0.1f : 0.6f;
        gpu_adamw_scalars s = {.decay = 0.999f,
                               .w1 = w1,
                               .b1 = 1 - w1,
                               .b2 = 0.999f,
                               .w2 = 0.001f,
                               .bc2s = 0.0447f,
                               .eps = 1e-8f,
                               .neg_step = -0.0123f,
                               .lerp_low = lerp_low};
        CUDA_OK(gpu_adamw_update(dp, dg, dm, dv, n, &s, 0));
        for (int64_t j = 0; j < n; j++) {
            p[j] = p[j] * s.decay;
            m[j] = lerp_low ? m[j] + s.w1 * (g[j] - m[j]) : g[j] - (g[j] - m[j]) * s.b1;
            v[j] = v[j] * s.b2;
            v[j] = v[j] + s.w2 * g[j] * g[j];
            float denom = sqrtf(v[j]) / s.bc2s + s.eps;
            p[j] = p[j] + s.neg_step * m[j] / denom;
        }
        float *got = malloc((size_t)n * 4);
        gt_get(got, dp, (size_t)n, GPU_F32);
        GT_CLOSE(lerp_low ? "adamw update p (lerp low)" : "adamw update p (lerp high)", got, p,
                 (size_t)n, 0);
        gt_get(got, dm, (size_t)n, GPU_F32);
        GT_CLOSE("adamw update exp_avg", got, m, (size_t)n, 0);
        gt_get(got, dv, (size_t)n, GPU_F32);
        GT_CLOSE("adamw update exp_avg_sq", got, v, (size_t)n, 0);
        free(got);
    }
    /* clipping's scale */
    CUDA_OK(gpu_scale_f32(dg, n, 0.37f, 0));
    float *got = malloc((size_t)n * 4);
    for (int64_t j = 0; j < n; j++) g[j] *= 0.37f;
    gt_get(got, dg, (size_t)n, GPU_F32);
    GT_CLOSE("gradient scale", got, g, (size_t)n, 0);
    /* bf16 conversion rounds as gpu_f32_to_bf16 */
    void *db;
    CUDA_OK(cudaMalloc(&db, (size_t)n * 2));
    CUDA_OK(gpu_convert(db, GPU_BF16, dx, GPU_F32, n, 0));
    CUDA_OK(gpu_convert(dg, GPU_F32, db, GPU_BF16, n, 0));
    gt_get(got, dg, (size_t)n, GPU_F32);
    gt_round_bf16(x, (size_t)n);
    GT_CLOSE("fp32 -> bf16 -> fp32 conversion", got, x, (size_t)n, 0);
    cudaFree(db), cudaFree(dx), cudaFree(dpart), cudaFree(dp), cudaFree(dg), cudaFree(dm);
    cudaFree(dv);
    free(x), free(p), free(g), free(m), free(v), free(got);
}

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
    snprintf(what, sizeof what, "moe gather %s", tname(t));
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
    snprintf(what, sizeof what, "moe dY = w dy %s", tname(t));
    GT_CLOSE(what, got, ref, ng, 0);
    double e_dw = 0, m_dw = 0;
    for (int64_t i = 0; i < Nk; i++) {
        e_dw = fmax(e_dw, fabs(gdw[i] - rdw[i]));
        m_dw = fmax(m_dw, fabs(rdw[i]));
    }
    printf("  moe dw = dy . Y %s: rel_max %.3e\n", tname(t), e_dw / m_dw);
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
        snprintf(what, sizeof what, "moe router backward %s%s vs finite differences", tname(t),
                 with_aux ? " + aux" : "");
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
    char name[256];
    double mem;
    int major, minor;
    if (gpu_device_info(0, name, sizeof name, &mem, &major, &minor) == 0)
        printf("device 0: %s, %.1f GiB, compute capability %d.%d\n", name, mem, major, minor);
    test_gemm();
    for (int t = 0; t < 2; t++) {
        gpu_dtype dt = t ? GPU_BF16 : GPU_F32;
        test_norms(dt);
        test_rope(dt);
        test_activations(dt);
        test_xielu(dt);
        test_softcap(dt);
        test_embed_bias(dt);
        test_xent(dt);
        test_attention(dt);
        test_attention_decode(dt);
        test_qkv_heads(dt);
    }
    test_moe_routing(GPU_F32, 8, 2);
    test_moe_routing(GPU_BF16, 5, 3);
    test_moe_routing(GPU_F32, 4, 1);
    test_moe_backward(GPU_F32);
    test_moe_backward(GPU_BF16);
    test_moe_experts();
    test_dropout();
    test_optimizer();
    return check_finish();
}
