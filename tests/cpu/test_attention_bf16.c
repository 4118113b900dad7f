/* bf16 attention on the CPU (model/cpu/attention.c's bf16 path, through
 * bf16.c's cpu_bf16_matmul), against the fp32 attention:
 *
 *   - the batched product itself, with the strides and the broadcast
 *     kv-head dimension attention gives it: its error against a double
 *     reference over the same bf16-rounded inputs must be fp32 summation's
 *     (a few 1e-7 of Σ|a·b|; summing in bf16 would be ~4e-3), and oneDNN
 *     must have chosen a compiled kernel, not its reference loops;
 *   - the attention forward (O and the log-sum-exps) and backward (dQ, dK,
 *     dV) for plain causal, grouped-query, sliding-window, ALiBi and
 *     soft-capped heads, with T not a multiple of the 64-row blocks: within
 *     bf16's tolerance of fp32 and not equal to it (the products ran in
 *     bf16), each option changing fp32's result by several times that
 *     tolerance (so a bf16 path that ignored it would fail), and the
 *     products counted: 2 per block forward, 5 backward.
 * Skipped, with a message, on a CPU where oneDNN cannot multiply bf16. */
#include "model/cpu/cpu.h"
#include "tests/check.h"
#include "tests/cpu/tiny.h"
#include "util/err.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* C (2, 3, 2, M, N) = A (2, 3, 2, M, K) · B (2, 3, 1, K, N), B read
 * transposed from (K, N) strides {1, K}, C strided inside a wider matrix;
 * then C += the same product. */
static void check_matmul(void) {
    enum { B0 = 2, B1 = 3, G = 2, M = 33, N = 47, K = 200, LDC = 64 };
    int64_t na = (int64_t)B0 * B1 * G * M * K, nb = (int64_t)B0 * B1 * K * N;
    int64_t nc = (int64_t)B0 * B1 * G * M * LDC;
    uint16_t *A = malloc(sizeof *A * na), *Bm = malloc(sizeof *Bm * nb);
    real *C = calloc((size_t)nc, sizeof(real)), *C2 = malloc(sizeof(real) * nc);
    uint64_t s = 7;
    for (int64_t i = 0; i < na; i++) {
        real v = (real)tiny_uniform(&s);
        model_values_to_bf16(&v, 1, &A[i]);
    }
    for (int64_t i = 0; i < nb; i++) {
        real v = (real)tiny_uniform(&s);
        model_values_to_bf16(&v, 1, &Bm[i]);
    }
    cpu_bf16_md a = cpu_bf16_md_make(5, (int64_t[]){B0, B1, G, M, K},
                                     (int64_t[]){B1 * G * M * K, G * M * K, M * K, K, 1});
    /* B stored (B0, B1, N, K): op(B) (K, N) has strides {1, K} */
    cpu_bf16_md b = cpu_bf16_md_make(5, (int64_t[]){B0, B1, 1, K, N},
                                     (int64_t[]){B1 * N * K, N * K, N * K, 1, K});
    cpu_bf16_md c = cpu_bf16_md_make(5, (int64_t[]){B0, B1, G, M, N},
                                     (int64_t[]){B1 * G * M * LDC, G * M * LDC, M * LDC, LDC, 1});
    uint64_t n0 = cpu_bf16_gemm_count();
    CHECK_OK(cpu_bf16_matmul(&a, A, &b, Bm, &c, C, 0));
    CHECK_MSG(cpu_bf16_gemm_count() == n0 + 1, "the batched product was not counted");
    const char *impl = cpu_bf16_last_impl();
    printf("batched bf16 matmul: %s on %s\n", impl, cpu_bf16_isa());
    CHECK_MSG(impl[0] && !strstr(impl, "ref"), "oneDNN ran '%s' (its reference loops)", impl);
    double worst = 0;
    int pad_touched = 0;
    for (int i0 = 0; i0 < B0; i0++)
        for (int i1 = 0; i1 < B1; i1++)
            for (int g = 0; g < G; g++)
                for (int m = 0; m < M; m++) {
                    const real *crow = C + (((int64_t)(i0 * B1 + i1) * G + g) * M + m) * LDC;
                    for (int n = N; n < LDC; n++) pad_touched |= crow[n] != 0;
                    for (int n = 0; n < N; n++) {
                        double sum = 0, mag = 0;
                        for (int k = 0; k < K; k++) {
                            double x =
                                bf16_value(A[(((int64_t)(i0 * B1 + i1) * G + g) * M + m) * K + k]);
                            double y = bf16_value(Bm[((int64_t)(i0 * B1 + i1) * N + n) * K + k]);
                            sum += x * y;
                            mag += fabs(x * y);
                        }
                        worst = fmax(worst, fabs(crow[n] - sum) / mag);
                    }
                }
    printf("batched bf16 matmul: error %.3g of sum|a*b|\n", worst);
    CHECK_MSG(worst < 2e-6, "batched bf16 matmul error %.3g: not summed in fp32", worst);
    CHECK_MSG(!pad_touched, "the product wrote outside its strided rows");
    memcpy(C2, C, sizeof(real) * nc);
    CHECK_OK(cpu_bf16_matmul(&a, A, &b, Bm, &c, C2, 1));
    int same = 1;
    for (int64_t i = 0; i < nc; i++) same &= C2[i] == C[i] + C[i];
    CHECK_MSG(same, "accumulate does not add the product to C");
    free(A), free(Bm), free(C), free(C2);
}

typedef struct {
    const char *name;
    int B, T, H, KV, D, window, alibi;
    double softcap;
} attn_case;

typedef struct {
    real *out, *lse, *dq, *dk, *dv;
} attn_result;

static double rel_l2(const real *a, const real *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* One attention forward and backward over fused q|k|v rows (ld = W). */
static void run(const attn_case *tc, int bf16, int window, int alibi, double softcap,
                const real *qkv, const real *dout, attn_result *r) {
    int N = tc->B * tc->T, HD = tc->H * tc->D, W = HD + 2 * tc->KV * tc->D;
    real slopes[64];
    cpu_alibi_slopes(slopes, tc->H);
    int threads = omp_get_max_threads();
    cpu_attn at = {.B = tc->B,
                   .T = tc->T,
                   .H = tc->H,
                   .KV = tc->KV,
                   .D = tc->D,
                   .window = window,
                   .alibi = alibi ? slopes : NULL,
                   .scale = (real)(1.0 / sqrt(tc->D)),
                   .softcap = (real)softcap,
                   .threads = threads};
    at.scratch = malloc(sizeof(real) * threads * CPU_ATTN_SCRATCH(tc->T));
    if (bf16 && posix_memalign(&at.bf16, 64, cpu_attention_bf16_bytes(&at)) != 0) at.bf16 = NULL;
    real *dqkv = calloc((size_t)N * W, sizeof(real));
    r->out = malloc(sizeof(real) * N * HD);
    r->lse = malloc(sizeof(real) * N * tc->H);
    if (!at.scratch || (bf16 && !at.bf16) || !dqkv || !r->out || !r->lse) {
        CHECK_MSG(0, "out of memory");
        exit(1);
    }
    const real *q = qkv, *k = qkv + HD, *v = qkv + HD + tc->KV * tc->D;
    if (bf16) {
        CHECK_OK(cpu_attention_bf16_forward(&at, q, W, k, W, v, W, r->out, r->lse));
        CHECK_OK(cpu_attention_bf16_backward(&at, q, W, k, W, v, W, r->out, dout, r->lse, dqkv,
                                             dqkv + HD, dqkv + HD + tc->KV * tc->D));
    } else {
        cpu_attention_forward(&at, q, W, k, W, v, W, r->out, r->lse);
        cpu_attention_backward(&at, q, W, k, W, v, W, r->out, dout, r->lse, dqkv, dqkv + HD,
                               dqkv + HD + tc->KV * tc->D);
    }
    /* gradients split into contiguous dq, dk, dv for comparison */
    int KD = tc->KV * tc->D;
    r->dq = malloc(sizeof(real) * N * HD);
    r->dk = malloc(sizeof(real) * N * KD);
    r->dv = malloc(sizeof(real) * N * KD);
    for (int i = 0; i < N; i++) {
        memcpy(r->dq + (int64_t)i * HD, dqkv + (int64_t)i * W, sizeof(real) * HD);
        memcpy(r->dk + (int64_t)i * KD, dqkv + (int64_t)i * W + HD, sizeof(real) * KD);
        memcpy(r->dv + (int64_t)i * KD, dqkv + (int64_t)i * W + HD + KD, sizeof(real) * KD);
    }
    free(dqkv);
    free(at.scratch);
    free(at.bf16);
}

static void result_free(attn_result *r) {
    free(r->out), free(r->lse), free(r->dq), free(r->dk), free(r->dv);
}

/* The largest relative L2 difference over O, dQ, dK, dV, and the largest
 * absolute one over the log-sum-exps. */
static double differ(const attn_case *tc, const attn_result *a, const attn_result *ref,
                     double *lse_diff) {
    int64_t N = (int64_t)tc->B * tc->T, HD = (int64_t)tc->H * tc->D, KD = (int64_t)tc->KV * tc->D;
    double e = rel_l2(a->out, ref->out, N * HD);
    e = fmax(e, rel_l2(a->dq, ref->dq, N * HD));
    e = fmax(e, rel_l2(a->dk, ref->dk, N * KD));
    e = fmax(e, rel_l2(a->dv, ref->dv, N * KD));
    double l = 0;
    for (int64_t i = 0; i < N * tc->H; i++) l = fmax(l, fabs((double)a->lse[i] - ref->lse[i]));
    if (lse_diff) *lse_diff = l;
    return e;
}

/* bf16 against fp32 (bounds as docs/cpu-backend.md states them). */
#define BF16_TOL 2e-2

static void check_case(const attn_case *tc) {
    int N = tc->B * tc->T, HD = tc->H * tc->D, W = HD + 2 * tc->KV * tc->D;
    real *qkv = malloc(sizeof(real) * N * W), *dout = malloc(sizeof(real) * N * HD);
    uint64_t s = 1234 + (uint64_t)tc->T;
    /* scores of a few units, as in a trained model, so the softmax is peaked */
    for (int64_t i = 0; i < (int64_t)N * W; i++) qkv[i] = (real)(1.5 * tiny_uniform(&s));
    for (int64_t i = 0; i < (int64_t)N * HD; i++) dout[i] = (real)tiny_uniform(&s);
    attn_result f, b, plain;
    run(tc, 0, tc->window, tc->alibi, tc->softcap, qkv, dout, &f);
    uint64_t n0 = cpu_bf16_gemm_count();
    run(tc, 1, tc->window, tc->alibi, tc->softcap, qkv, dout, &b);
    uint64_t used = cpu_bf16_gemm_count() - n0;
    int blocks = (tc->T + CPU_ATTN_BLOCK - 1) / CPU_ATTN_BLOCK;
    CHECK_MSG(used == (uint64_t)7 * blocks, "%s: %llu bf16 products for %d blocks (want %d)",
              tc->name, (unsigned long long)used, blocks, 7 * blocks);
    CHECK_MSG(!strstr(cpu_bf16_last_impl(), "ref"), "%s: oneDNN ran '%s'", tc->name,
              cpu_bf16_last_impl());
    double lse_err, err = differ(tc, &b, &f, &lse_err);
    /* what the case's options change in fp32 */
    run(tc, 0, 0, 0, 0, qkv, dout, &plain);
    double effect = differ(tc, &plain, &f, NULL);
    printf("%-10s bf16 vs fp32: %.3g (rel_l2 of O, dQ, dK, dV), log-sum-exp %.3g; the options "
           "change fp32 by %.3g\n",
           tc->name, err, lse_err, effect);
    CHECK_MSG(err < BF16_TOL, "%s: bf16 differs from fp32 by %.3g", tc->name, err);
    CHECK_MSG(lse_err < 5e-2, "%s: log-sum-exps differ by %.3g", tc->name, lse_err);
    CHECK_MSG(err > 1e-5, "%s: bf16 gave fp32's numbers (%.3g): fp32 ran?", tc->name, err);
    if (tc->window || tc->alibi || tc->softcap)
        CHECK_MSG(effect > 5 * BF16_TOL, "%s: the options change fp32 by only %.3g", tc->name,
                  effect);
    result_free(&f), result_free(&b), result_free(&plain);
    free(qkv), free(dout);
}

int main(void) {
    omp_set_num_threads(2);
    if (cpu_bf16_check() != 0) {
        printf("SKIP: %s\n", err_msg());
        return 77;
    }
    check_matmul();
    const attn_case cases[] = {
        {"mha", 2, 150, 4, 4, 16, 0, 0, 0},       {"gqa", 2, 150, 6, 2, 32, 0, 0, 0},
        {"window", 2, 150, 6, 2, 16, 40, 0, 0},   {"alibi", 1, 150, 6, 6, 16, 0, 1, 0},
        {"softcap", 2, 130, 4, 2, 16, 0, 0, 2.0}, {"alibi_cap", 1, 150, 6, 3, 16, 0, 1, 3.0},
        {"one_block", 3, 20, 4, 1, 8, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i]);
    return check_finish();
}
