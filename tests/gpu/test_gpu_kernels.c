/* test_gpu_kernels — every CUDA kernel against its CPU counterpart
 * (model/cpu/cpu.h), in fp32 storage (tolerances at fp32 rounding) and bf16
 * storage (inputs rounded to bf16 for the CPU reference; tolerances at bf16
 * rounding of the outputs). Shapes are chosen to hit the kernels' edges:
 * row widths that are not multiples of 32, several attention tiles with the
 * causal mask and a sliding window across them, head dims of 4 to 128
 * (including 80, not a multiple of 32), GQA, strided q/k/v, ALiBi's biases
 * (each case checked to be far from the result without them), the decode
 * kernel against the forward's last rows; xIELU's inputs on both sides of 0
 * and of eps (and at eps); BLOOM's q|k|v layout. The mixture of experts'
 * kernels are test_gpu_moe.c's. */
#include "gpu_test.h"

#include "gpu/gpu_gemm.h"
#include "model/cpu/cpu.h"

#include <omp.h>
#include <string.h>

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
    snprintf(what, sizeof what, "gemm %s->%s %dx%dx%d t%d%d%s", gt_dtype_name(ab),
             gt_dtype_name(ct), M, N, K, ta, tb, offset ? " misaligned" : "");
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
    snprintf(what, sizeof what, "rmsnorm forward y (%s)", gt_dtype_name(t));
    GT_CLOSE(what, got, y, n, ytol);
    GT_CLOSE("rmsnorm forward rstd", grstd, rstd, (size_t)N, 1e-6);
    CUDA_OK(gpu_rmsnorm_apply(dY, t, dX, dW, dR, N, C, 0));
    gt_get(got, dY, n, t);
    snprintf(what, sizeof what, "rmsnorm apply (%s)", gt_dtype_name(t));
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
    snprintf(what, sizeof what, "layernorm forward y (%s)", gt_dtype_name(t));
    GT_CLOSE(what, got, y, n, ytol);
    GT_CLOSE("layernorm forward mean", gmean, mean, (size_t)N, 1e-6);
    GT_CLOSE("layernorm forward rstd", grstd, rstd, (size_t)N, 1e-6);
    CUDA_OK(gpu_layernorm_apply(dY, t, dX, dW, dB, dM, dR, N, C, 0));
    gt_get(got, dY, n, t);
    snprintf(what, sizeof what, "layernorm apply (%s)", gt_dtype_name(t));
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
                     inverse ? "inverse" : "forward", gt_dtype_name(t));
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
        snprintf(what, sizeof what, "%s forward (%s)", gated[a].name, gt_dtype_name(t));
        GT_CLOSE(what, got, ref, n, tol);
        gated[a].cpu_bwd(ref, ref2, d, g, u, (int64_t)n);
        CUDA_OK(cudaMemcpy(o1, dd, n * gpu_dtype_size(t), cudaMemcpyDeviceToDevice));
        /* dg in place of dact */
        CUDA_OK(gated[a].gpu_bwd(o1, o2, o1, dg, du, t, (int64_t)n, 0));
        gt_get(got, o1, n, t);
        snprintf(what, sizeof what, "%s backward dg (%s)", gated[a].name, gt_dtype_name(t));
        GT_CLOSE(what, got, ref, n, tol);
        gt_get(got, o2, n, t);
        snprintf(what, sizeof what, "%s backward du (%s)", gated[a].name, gt_dtype_name(t));
        GT_CLOSE(what, got, ref2, n, tol);
    }

    cpu_gelu_forward(ref, g, (int64_t)n);
    CUDA_OK(gpu_gelu_forward(o1, dg, t, (int64_t)n, 0));
    gt_get(got, o1, n, t);
    snprintf(what, sizeof what, "gelu forward (%s)", gt_dtype_name(t));
    GT_CLOSE(what, got, ref, n, tol);
    cpu_gelu_backward(ref, d, g, (int64_t)n);
    CUDA_OK(cudaMemcpy(o1, dd, n * gpu_dtype_size(t), cudaMemcpyDeviceToDevice));
    CUDA_OK(gpu_gelu_backward(o1, o1, dg, t, (int64_t)n, 0));
    gt_get(got, o1, n, t);
    snprintf(what, sizeof what, "gelu backward (%s)", gt_dtype_name(t));
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
    snprintf(what, sizeof what, "softcap backward (%s)", gt_dtype_name(t));
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
    snprintf(what, sizeof what, "xielu forward (%s)", gt_dtype_name(t));
    GT_CLOSE(what, got, ref, n, tol);
    cpu_xielu_backward(ref, d, x, &px, 1, (int)n, NULL);
    CUDA_OK(cudaMemcpy(o, dd, n * gpu_dtype_size(t), cudaMemcpyDeviceToDevice));
    CUDA_OK(gpu_xielu_backward(o, o, dx, t, (int64_t)n, &gk, 0)); /* dx in place of dy */
    gt_get(got, o, n, t);
    snprintf(what, sizeof what, "xielu backward (%s)", gt_dtype_name(t));
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
        snprintf(what, sizeof what, "embedding%s (%s)", pos ? " + positions" : "",
                 gt_dtype_name(t));
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
        snprintf(what, sizeof what, "bias %s (%s)", acc ? "+=" : "=", gt_dtype_name(t));
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
    snprintf(what, sizeof what, "xent d logits (%s%s)", gt_dtype_name(t),
             t == GPU_F32 ? ", in place" : "");
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
             T, H, KV, D, ac->window, ac->softcap, ac->alibi ? " alibi" : "", n, pos,
             gt_dtype_name(t));
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
    snprintf(what, sizeof what, "qkv (H, 3, D) -> (3, H, D) (%s)", gt_dtype_name(t));
    GT_CLOSE(what, got, fused, n, 0);
    CUDA_OK(gpu_qkv_heads(d_back, d_fused, t, N, H, D, 1, 0));
    gt_get(got, d_back, n, t);
    snprintf(what, sizeof what, "qkv (3, H, D) -> (H, 3, D), round trip (%s)", gt_dtype_name(t));
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
    test_dropout();
    test_optimizer();
    return check_finish();
}
