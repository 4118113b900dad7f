/* gpu_gemm.c — row-major GEMMs on cuBLASLt (gpu_gemm.h).
 *
 * cuBLAS is column-major. A row-major (r, c) matrix with leading dimension ld
 * is the column-major (c, r) matrix with the same ld, so row-major
 * C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: cuBLASLt is called
 * with the operands swapped, m = N, n = M, and each operand's transpose flag
 * as given (its stored layout being the transposed shape).
 *
 * Where cuBLASLt's heuristic offers no algorithm (odd leading dimensions or
 * alignments of tiny shapes), the plan falls back to classic cuBLAS
 * (cublasGemmEx, same types, same fp32 compute), which takes any layout. */
#include "gpu/gpu_gemm.h"

#include "util/err.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <stdint.h>
#include <stdlib.h>

#define GEMM_WORKSPACE ((size_t)32 << 20) /* cuBLASLt's recommendation for Hopper */
/* Training uses a few dozen shapes; generation adds a set per prompt length
 * (the prefill's rows), so the cache is bounded: past this many plans a new
 * one replaces a cached one, slot by slot in turn. */
#define GEMM_PLANS_MAX 512

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    gpu_dtype ab, ct;
    unsigned align_a, align_b, align_c; /* bytes the pointers are aligned to, at most 256 */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc; /* cuBLASLt's operands: la holds our B, lb our A */
    cublasLtMatmulAlgo_t algo;
    int legacy; /* no cuBLASLt algorithm: cublasGemmEx */
} gemm_plan;

struct gpu_blas {
    cublasLtHandle_t lt;
    cublasHandle_t blas; /* the fallback */
    cudaStream_t stream;
    void *workspace;
    gemm_plan *plans;
    int n_plans, cap_plans;
    int next_evict; /* once GEMM_PLANS_MAX are cached: the slot a new plan replaces */
};

static int lt_check(cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    return err_set("cuBLASLt %s failed: %s (%d)", what, cublasLtGetStatusString(s), (int)s);
}

int gpu_blas_create(gpu_blas **out, cudaStream_t stream) {
    *out = NULL;
    gpu_blas *b = calloc(1, sizeof *b);
    if (!b) return err_set("out of memory creating the cuBLASLt context");
    b->stream = stream;
    if (lt_check(cublasLtCreate(&b->lt), "cublasLtCreate") != 0) {
        free(b);
        return -1;
    }
    if (lt_check(cublasCreate(&b->blas), "cublasCreate") != 0 ||
        lt_check(cublasSetStream(b->blas, stream), "cublasSetStream") != 0) {
        if (b->blas) cublasDestroy(b->blas);
        cublasLtDestroy(b->lt);
        free(b);
        return -1;
    }
    cudaError_t e = cudaMalloc(&b->workspace, GEMM_WORKSPACE);
    if (e != cudaSuccess) {
        cublasDestroy(b->blas);
        cublasLtDestroy(b->lt);
        free(b);
        return err_set("cudaMalloc of the %zu MiB cuBLASLt workspace failed: %s",
                       GEMM_WORKSPACE >> 20, cudaGetErrorString(e));
    }
    *out = b;
    return 0;
}

static void plan_free(gemm_plan *p) {
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
}

void gpu_blas_free(gpu_blas *b) {
    if (!b) return;
    for (int i = 0; i < b->n_plans; i++) plan_free(&b->plans[i]);
    free(b->plans);
    cudaFree(b->workspace);
    cublasDestroy(b->blas);
    cublasLtDestroy(b->lt);
    free(b);
}

static unsigned ptr_align(const void *p) {
    uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 1 && a % al != 0) al >>= 1;
    return al;
}

static cudaDataType_t lt_type(gpu_dtype t) {
    return t == GPU_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

static int same_key(const gemm_plan *p, const gemm_plan *k) {
    return p->ta == k->ta && p->tb == k->tb && p->M == k->M && p->N == k->N && p->K == k->K &&
           p->lda == k->lda && p->ldb == k->ldb && p->ldc == k->ldc && p->ab == k->ab &&
           p->ct == k->ct && p->align_a == k->align_a && p->align_b == k->align_b &&
           p->align_c == k->align_c;
}

/* Builds descriptors for key k and asks cuBLASLt's heuristic for the best
 * algorithm. */
static int plan_make(gpu_blas *b, gemm_plan *k) {
    cublasOperation_t opa = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt's A is our B */
    cublasOperation_t opb = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType_t ab = lt_type(k->ab), ct = lt_type(k->ct);
    /* stored layouts (column-major rows, cols) before op */
    uint64_t a_rows = k->tb ? (uint64_t)k->K : (uint64_t)k->N;
    uint64_t a_cols = k->tb ? (uint64_t)k->N : (uint64_t)k->K;
    uint64_t b_rows = k->ta ? (uint64_t)k->M : (uint64_t)k->K;
    uint64_t b_cols = k->ta ? (uint64_t)k->K : (uint64_t)k->M;
    int32_t scale_type = CUDA_R_32F;
    if (lt_check(cublasLtMatmulDescCreate(&k->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                 "MatmulDescCreate") != 0 ||
        lt_check(
            cublasLtMatmulDescSetAttribute(k->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa),
            "set TRANSA") != 0 ||
        lt_check(
            cublasLtMatmulDescSetAttribute(k->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb),
            "set TRANSB") != 0 ||
        lt_check(cublasLtMatmulDescSetAttribute(k->desc, CUBLASLT_MATMUL_DESC_SCALE_TYPE,
                                                &scale_type, sizeof scale_type),
                 "set SCALE_TYPE") != 0 ||
        lt_check(cublasLtMatrixLayoutCreate(&k->la, ab, a_rows, a_cols, k->ldb), "layout A") != 0 ||
        lt_check(cublasLtMatrixLayoutCreate(&k->lb, ab, b_rows, b_cols, k->lda), "layout B") != 0 ||
        lt_check(cublasLtMatrixLayoutCreate(&k->lc, ct, (uint64_t)k->N, (uint64_t)k->M, k->ldc),
                 "layout C") != 0)
        return -1;
    cublasLtMatmulPreference_t pref;
    if (lt_check(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate") != 0) return -1;
    size_t ws = GEMM_WORKSPACE;
    uint32_t al_a = k->align_b, al_b = k->align_a, al_c = k->align_c;
    int rc = 0;
    if (lt_check(cublasLtMatmulPreferenceSetAttribute(
                     pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
                 "set workspace") != 0 ||
        lt_check(cublasLtMatmulPreferenceSetAttribute(
                     pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a),
                 "set alignment A") != 0 ||
        lt_check(cublasLtMatmulPreferenceSetAttribute(
                     pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b),
                 "set alignment B") != 0 ||
        lt_check(cublasLtMatmulPreferenceSetAttribute(
                     pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c),
                 "set alignment C") != 0 ||
        lt_check(cublasLtMatmulPreferenceSetAttribute(
                     pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c),
                 "set alignment D") != 0)
        rc = -1;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t hs = CUBLAS_STATUS_SUCCESS;
    if (rc == 0)
        hs = cublasLtMatmulAlgoGetHeuristic(b->lt, k->desc, k->la, k->lb, k->lc, k->lc, pref, 1,
                                            &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (rc != 0) return -1;
    if (hs == CUBLAS_STATUS_NOT_SUPPORTED || (hs == CUBLAS_STATUS_SUCCESS && found < 1)) {
        k->legacy = 1;
        return 0;
    }
    if (lt_check(hs, "AlgoGetHeuristic") != 0) return -1;
    k->algo = res.algo;
    return 0;
}

static int plan_get(gpu_blas *b, const gemm_plan *key, const gemm_plan **out) {
    for (int i = 0; i < b->n_plans; i++)
        if (same_key(&b->plans[i], key)) {
            *out = &b->plans[i];
            return 0;
        }
    gemm_plan *p;
    if (b->n_plans == GEMM_PLANS_MAX) {
        p = &b->plans[b->next_evict];
        b->next_evict = (b->next_evict + 1) % GEMM_PLANS_MAX;
        plan_free(p);
        /* until the new plan is made, the slot holds the last one */
        *p = b->plans[--b->n_plans];
    } else if (b->n_plans == b->cap_plans) {
        int cap = b->cap_plans ? 2 * b->cap_plans : 64;
        gemm_plan *np = realloc(b->plans, (size_t)cap * sizeof *np);
        if (!np) return err_set("out of memory for cuBLASLt plans");
        b->plans = np;
        b->cap_plans = cap;
    }
    p = &b->plans[b->n_plans];
    *p = *key;
    p->desc = NULL;
    p->la = p->lb = p->lc = NULL;
    p->legacy = 0;
    if (plan_make(b, p) != 0) {
        plan_free(p);
        return -1;
    }
    b->n_plans++;
    *out = p;
    return 0;
}

int gpu_gemm(gpu_blas *b, int transA, int transB, int M, int N, int K, float alpha, const void *A,
             int lda, const void *B, int ldb, gpu_dtype ab, float beta, void *C, int ldc,
             gpu_dtype ct) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) return err_set("gpu_gemm: K = %d, must be positive", K);
    if (ab == GPU_F32 && ct == GPU_BF16)
        return err_set("gpu_gemm: fp32 inputs with a bf16 output are not a supported combination");
    gemm_plan key = {.ta = transA != 0,
                     .tb = transB != 0,
                     .M = M,
                     .N = N,
                     .K = K,
                     .lda = lda,
                     .ldb = ldb,
                     .ldc = ldc,
                     .ab = ab,
                     .ct = ct,
                     .align_a = ptr_align(A),
                     .align_b = ptr_align(B),
                     .align_c = ptr_align(C)};
    const gemm_plan *p = NULL;
    if (plan_get(b, &key, &p) != 0) return err_context("GEMM %dx%dx%d", M, N, K);
    if (p->legacy)
        return lt_check(cublasGemmEx(b->blas, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                     transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                     lt_type(ab), ldb, A, lt_type(ab), lda, &beta, C, lt_type(ct),
                                     ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                        "cublasGemmEx");
    return lt_check(cublasLtMatmul(b->lt, p->desc, &alpha, B, p->la, A, p->lb, &beta, C, p->lc, C,
                                   p->lc, &p->algo, b->workspace, GEMM_WORKSPACE, b->stream),
                    "matmul");
}
