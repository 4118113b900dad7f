/* cpu — the kernels of the CPU backend. model/ uses all of them; other
 * modules use cpu_gemm for their GEMMs, to stay in the same threading model.
 *
 * Threading: every kernel is parallel through OpenMP, and OpenBLAS is put in
 * single-threaded mode (cpu_init). On the 2-core machines this targets,
 * OpenBLAS's own pthread pool and OpenMP's team fight over the cores: measured
 * with 2048x768x768 sgemms, OpenMP loops next to a 2-thread OpenBLAS ran at
 * 60% speed, and several heads' attention GEMMs issued from OpenMP threads at
 * 10%. With one team, cpu_gemm splits each large GEMM over the OpenMP threads
 * and attention issues one single-threaded GEMM per (batch, head) block.
 *
 * Layouts are row-major; a "row" is one token (N = B·T rows). */
#ifndef FL_MODEL_CPU_CPU_H
#define FL_MODEL_CPU_CPU_H

#include "model/model.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The kernels' inner loops carry `#pragma omp simd`. GCC if-converts (and so
 * vectorizes) a loop holding a float comparison only when it may assume that
 * comparisons do not trap; nothing here enables FP traps, so say so. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
/* clang reports an `omp simd` loop it did not vectorize (it does not, under
 * the sanitizers) as a warning; vectorizing is a hint, not a requirement. */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpass-failed"
#endif

/* The hot elementwise loops (activations, softmax, cross-entropy) are built
 * twice, for baseline x86-64 (SSE2) and for x86-64-v3 (AVX2), and the loader
 * picks one per CPU (GNU ifunc). On the AVX-512 development machine the SSE2
 * code of exp-based loops ran ~4x slower than the AVX2 code; GPT-2 124M's
 * forward +7%. Only the fp32 product build. Cloned functions are static
 * (clang 14 cannot call a clone set defined in another file) with names
 * unique across files (clang exports their resolvers). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(FL_REAL_F64)
#define CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CPU_CLONES
#endif

/* Elementary functions at the backend's precision. The fp64 build (gradient
 * checks) uses libm. The fp32 build uses an exp that vectorizes, Cephes'
 * expf (Moshier): n = round(x / ln 2), r = x − n ln 2 (in two parts), a
 * degree-6 polynomial for e^r, times 2^n built in the exponent bits; within
 * 2 ulp of libm over the clamped range [−87.3, 88.3] (beyond it the result
 * saturates near 0 or FLT_MAX, close enough for every use here). */
#ifdef FL_REAL_F64
static inline real cpu_exp(real x) {
    return exp(x);
}
static inline real cpu_tanh(real x) {
    return tanh(x);
}
#else
static inline real cpu_exp(real x) {
    /* Clamped so that n fits the exponent (n <= 127: no overflow to inf); a
     * NaN becomes the lower bound, which keeps the int conversion defined,
     * and is returned as it came. */
    float xc = x > -87.33654f ? x : -87.33654f;
    xc = xc < 88.3762626f ? xc : 88.3762626f;
    /* round to nearest with the 1.5·2^23 trick (no SSE4.1 roundps needed) */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x == x ? p * scale : x;
}
/* tanh y = 1 − 2 / (e^{2y} + 1): absolute error ~1e-7, which is what GELU
 * (its only user, through 0.5·x·(1 + tanh)) needs. */
static inline real cpu_tanh(real x) {
    return 1 - 2 / (cpu_exp(2 * x) + 1);
}
#endif

/* Returns -1 from the enclosing function when a call that leaves a message
 * fails (the kernels' way of passing an error up). */
#define TRY(call)                                                                                  \
    do {                                                                                           \
        if ((call) != 0) return -1;                                                                \
    } while (0)

/* Makes OpenBLAS single-threaded (see above). Idempotent. */
void cpu_init(void);

/* This thread's share [*lo, *hi) of n items, inside an OpenMP team. */
void cpu_thread_range(int64_t n, int64_t *lo, int64_t *hi);

/* C (M, N) = alpha · op(A) · op(B) + beta · C, row-major; op transposes when
 * trans is set. Cut into tiles that depend on the shape only, spread over
 * the OpenMP threads (one thread when already inside a parallel region):
 * the bits do not depend on the thread count (gemm.c says why). */
void cpu_gemm(int transA, int transB, int M, int N, int K, real alpha, const real *A, int lda,
              const real *B, int ldb, real beta, real *C, int ldc);

/* ---- GEMM tiles (gemm.c) and their B operand (wgemm.c) ---- */

#define CPU_TILE 256      /* C is cut into CPU_TILE x CPU_TILE tiles */
#define CPU_KTILE 8192    /* a longer K is summed in slices of this many */
#define CPU_GEMV_ROWS 256 /* one-row products: B's rows in blocks of this many */

/* op(B) of a tiled GEMM: a `real` matrix (B, ldb), or a model weight (w) in
 * any dtype, held (out, in), widened to `real` a tile at a time. */
typedef struct {
    int transB;    /* op(B) = Bᵀ, B stored (N, K) */
    const real *B; /* a real operand, or NULL for w */
    int ldb;       /* B's row stride (w: its in) */
    const model_param *w;
    uint64_t call; /* tells one GEMM's widened tiles from another's */
} cpu_bsrc;

/* The block of B behind op(B)[k0:k1, n0:n1] and its row stride: a pointer
 * into B, or (w) a per-thread buffer valid until the next tile; NULL when
 * that buffer cannot be allocated. */
const real *cpu_bsrc_tile(const cpu_bsrc *b, int64_t n0, int64_t n1, int64_t k0, int64_t k1,
                          int *ldb);
/* The tiled GEMM behind cpu_gemm, for any B source; -1 (message set) when
 * a widened tile cannot be allocated. */
int cpu_gemm_tiled(int transA, const cpu_bsrc *b, int M, int N, int K, real alpha, const real *A,
                   int lda, real beta, real *C, int ldc);

/* C (M, n) = A (M, k) · op(W) + beta · C for a weight W (out, in) held in any
 * dtype: op(W) = Wᵀ (transW, a linear's forward: k = in, n = out) or W (its
 * backward to the input: k = out, n = in). FP32 precision multiplies in
 * fp32 through the tiles; BF16 precision with a bf16 weight goes to oneDNN
 * (bf16.c) unless M is below CPU_BF16_MIN_ROWS. beta is 0 or 1. */
int cpu_wgemm(model_precision prec, int transW, const model_param *w, int M, const real *A, int lda,
              real beta, real *C, int ldc);

/* ---- bf16 GEMMs through oneDNN (bf16.c) ---- */

/* Fewer rows than this (a decoding step) multiply a bf16 weight in fp32
 * through the tiles: oneDNN repacks the whole weight on every call, which
 * costs more than the product when there is one row. */
#define CPU_BF16_MIN_ROWS 16

/* 0 when oneDNN multiplies bf16 on this CPU, else -1 with a message. */
int cpu_bf16_check(void);
/* Whether the CPU has bf16 instructions (AVX512-BF16 or AMX): where it has
 * none, oneDNN may still emulate bf16, more slowly than fp32. */
int cpu_bf16_native(void);
/* oneDNN's name for the ISA it uses, e.g. "avx512_core_bf16". */
const char *cpu_bf16_isa(void);
/* C (M, N) = bf16(A) (M, K) · op(W) + beta · C with fp32 accumulation; W
 * bf16 (N, K) when transW, else (K, N); beta 0 or 1. */
int cpu_bf16_gemm(int transW, int M, int N, int K, const real *A, int lda, const uint16_t *W,
                  real beta, real *C, int ldc);
/* A strided operand of cpu_bf16_matmul: dims (batch…, rows, cols) and the
 * element strides of each. */
#define CPU_BF16_MD_MAX 5
typedef struct {
    int ndims;
    int64_t dims[CPU_BF16_MD_MAX], strides[CPU_BF16_MD_MAX];
} cpu_bf16_md;
static inline cpu_bf16_md cpu_bf16_md_make(int ndims, const int64_t *dims, const int64_t *strides) {
    cpu_bf16_md d;
    memset(&d, 0, sizeof d); /* the cache compares descriptions as bytes */
    d.ndims = ndims;
    for (int i = 0; i < ndims && i < CPU_BF16_MD_MAX; i++) {
        d.dims[i] = dims[i];
        d.strides[i] = strides[i];
    }
    return d;
}
/* Batched C (…, M, N) = A (…, M, K) · B (…, K, N), or C += that when
 * accumulate: A and B bf16, C fp32, summed in fp32 (oneDNN's matmul). The
 * three have the same number of dimensions (2 to CPU_BF16_MD_MAX); a batch
 * dimension of 1 in A or B is broadcast (oneDNN's implicit broadcast, "Matrix
 * Multiplication"). Any strides: a transposed operand is its strides
 * swapped. Counted with cpu_bf16_gemm's products. */
int cpu_bf16_matmul(const cpu_bf16_md *a, const uint16_t *A, const cpu_bf16_md *b,
                    const uint16_t *B, const cpu_bf16_md *c, real *C, int accumulate);
/* Products computed so far, and the implementation oneDNN chose last (for
 * tests that must see the bf16 kernel run, not a fallback). */
uint64_t cpu_bf16_gemm_count(void);
const char *cpu_bf16_last_impl(void);

/* ---- linear layers (linear.c): the only place a model_linear is applied ---- */

/* y (N, out) = x (N, in) · Wᵀ + b, or y += that when accumulate is set; then
 * the adapter's y += f(x). The product with W at precision prec. */
int cpu_linear_forward(model_precision prec, const model_linear *l, const real *x, real *y, int N,
                       int accumulate);
/* dx (N, in) = dy (N, out) · W (or += when accumulate_dx), plus the adapter's
 * term; W.grad += dyᵀ x and b.grad += Σ_rows dy only for params whose grad is
 * non-NULL. x is the forward's input. */
int cpu_linear_backward(model_precision prec, const model_linear *l, const real *x, const real *dy,
                        real *dx, int N, int accumulate_dx);
/* Does the backward of l need its forward input x (weight grad or adapter)? */
int cpu_linear_needs_input(const model_linear *l);

/* ---- norms (norm.c). Statistics are kept per row; the normalized output is
 * recomputed from them when backward needs it. dx is accumulated (+=); dw
 * and db are accumulated when non-NULL. ---- */

/* RMSNorm (Zhang & Sennrich 2019; HF LlamaRMSNorm): y = w · x / sqrt(mean(x²) + eps). */
void cpu_rmsnorm_forward(real *y, real *rstd, const real *x, const real *w, int N, int C,
                         double eps);
void cpu_rmsnorm_apply(real *y, const real *x, const real *w, const real *rstd, int N, int C);
void cpu_rmsnorm_backward(real *dx, real *dw, const real *dy, const real *x, const real *w,
                          const real *rstd, int N, int C);
/* LayerNorm (Ba et al. 2016; biased variance as torch.nn.LayerNorm):
 * y = w · (x − mean) / sqrt(var + eps) + b. */
void cpu_layernorm_forward(real *y, real *mean, real *rstd, const real *x, const real *w,
                           const real *b, int N, int C, double eps);
void cpu_layernorm_apply(real *y, const real *x, const real *w, const real *b, const real *mean,
                         const real *rstd, int N, int C);
void cpu_layernorm_backward(real *dx, real *dw, real *db, const real *dy, const real *x,
                            const real *w, const real *mean, const real *rstd, int N, int C);

/* Gemma's RMSNorm: y = x̂ · (1 + w), (1 + w) rounded to `real` first; the
 * statistics, dx with (1 + w) for w, and dw as RMSNorm's. y may be NULL in
 * cpu_rmsnorm_forward (statistics only). */
void cpu_rmsnorm1p_forward(real *y, real *rstd, const real *x, const real *w, int N, int C,
                           double eps);
void cpu_rmsnorm1p_apply(real *y, const real *x, const real *w, const real *rstd, int N, int C);
void cpu_rmsnorm1p_backward(real *dx, real *dw, const real *dy, const real *x, const real *w,
                            const real *rstd, int N, int C);

/* The block's norms by kind (model_config's block.norm): the functions above
 * on a model_norm's w (and b). mean is used by LayerNorm only. */
void cpu_norm_forward(model_norm_kind kind, const model_norm *nm, real *y, real *mean, real *rstd,
                      const real *x, int N, int C, double eps);
void cpu_norm_apply(model_norm_kind kind, const model_norm *nm, real *y, const real *x,
                    const real *mean, const real *rstd, int N, int C);
void cpu_norm_backward(model_norm_kind kind, const model_norm *nm, real *dx, const real *dy,
                       const real *x, const real *mean, const real *rstd, int N, int C);

/* QK-norm (block.qk_norm != NONE): q (N, H·D) and k (N, KV·D), contiguous,
 * = RMSNorm (of the block's kind: Gemma 3's is (1 + w)) of q_raw, k_raw per
 * head (HEAD) or per row (PROJ) with the
 * layer's q_norm, k_norm weights; rstd holds cpu_qk_norm_rows(c, N) values
 * (q's rows, then k's). q may be q_raw and k k_raw (in place). Backward:
 * dq_raw, dk_raw += d/d(raw), the norms' weight gradients when wanted. */
int cpu_qk_norm_rows(const model_config *c, int N);
void cpu_qk_norm_forward(const model_config *c, const model_layer *L, real *q, real *k,
                         const real *q_raw, const real *k_raw, real *rstd, int N);
void cpu_qk_norm_backward(const model_config *c, const model_layer *L, real *dq_raw, real *dk_raw,
                          const real *dq, const real *dk, const real *q_raw, const real *k_raw,
                          const real *rstd, int N);

/* ---- the MLP's activation (act.c) ---- */

/* One layer's xIELU values as the formula uses them (act.c): softplus(alpha_p),
 * beta + softplus(alpha_n), beta, eps (the CUDA backend uploads these). */
void cpu_xielu_values(const model_xielu *p, real v[4]);
/* xIELU (act.c has the formula) of n values with one layer's parameters. */
void cpu_xielu_forward(real *y, const real *x, const model_xielu *p, int64_t n);
/* dx = dy · xielu'(x) (dx may be dy), x (rows, F); adds the gradients of
 * alpha_p and alpha_n where they have one, summed through sums (2·rows
 * doubles of scratch) in an order that does not depend on the threads. */
void cpu_xielu_backward(real *dx, const real *dy, const real *x, const model_xielu *p, int rows,
                        int F, double *sums);
/* down's input act (n values) from the MLP's pre-activations: gated
 * silu(fa) · fb or gelu_tanh(fa) · fb (GeGLU), PLAIN act(fa) (gelu_new or
 * xIELU with p). */
void cpu_mlp_act_forward(const model_block *b, const model_xielu *p, real *act, const real *fa,
                         const real *fb, int64_t n);
/* Its backward over (rows, F): dfa (and dfb, GATED) from dact; dfa may be
 * dact. sums: cpu_xielu_backward's scratch (xIELU). */
void cpu_mlp_act_backward(const model_block *b, const model_xielu *p, real *dfa, real *dfb,
                          const real *dact, const real *fa, const real *fb, int rows, int F,
                          double *sums);

/* ---- elementwise and lookups (ops.c) ---- */

/* SwiGLU (Shazeer 2020): act = silu(g) · u, silu(g) = g · sigmoid(g). n values. */
void cpu_swiglu_forward(real *act, const real *g, const real *u, int64_t n);
/* dg may be dact (in place). */
void cpu_swiglu_backward(real *dg, real *du, const real *dact, const real *g, const real *u,
                         int64_t n);
/* GeGLU: act = gelu_tanh(g) · u (Gemma). n values; dg may be dact. */
void cpu_geglu_forward(real *act, const real *g, const real *u, int64_t n);
void cpu_geglu_backward(real *dg, real *du, const real *dact, const real *g, const real *u,
                        int64_t n);
/* GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))). */
void cpu_gelu_forward(real *y, const real *x, int64_t n);
/* dx = dy · gelu'(x); dx may be dy. */
void cpu_gelu_backward(real *dx, const real *dy, const real *x, int64_t n);
/* max_i x[i] (n >= 1). */
real cpu_row_max(const real *x, int n);
/* Σ_i exp(x[i] − shift), also stored into y[i] when y is not NULL (y may be x). */
double cpu_row_sum_exp(real *y, const real *x, int n, real shift);
/* In place: x[i] = scale · exp(x[i] − shift). */
void cpu_row_exp(real *x, int n, real shift, real scale);
/* x (N, C) = wte[tokens] (+ wpe[t0 + t] when wpe, t = row % T); the tables
 * in any dtype. */
void cpu_embed_forward(real *x, const int32_t *tokens, const model_param *wte,
                       const model_param *wpe, int t0, int N, int T, int C);
/* dwte[tokens] += dx, dwpe[t] += dx (each when non-NULL). */
void cpu_embed_backward(real *dwte, real *dwpe, const real *dx, const int32_t *tokens, int N, int T,
                        int C);
/* Per-row log-sum-exp of logits (N, V) into lse, and the cross-entropy
 * lse − logit[target] into row_loss (0 for MODEL_IGNORE_INDEX). Targets must
 * already be valid. */
void cpu_xent_forward(double *lse, double *row_loss, const real *logits, const int32_t *targets,
                      int N, int V);
/* In place: logits become d(scale · Σ loss)/d logits = scale (softmax − onehot),
 * and 0 on ignored rows. */
void cpu_xent_backward(real *logits, const double *lse, const int32_t *targets, int N, int V,
                       double scale);

/* ---- rotary position embedding (rope.c) ---- */

/* cos, sin (T, R/2), R = model_config_rope_dim: angle t · inv_freq[i],
 * inv_freq[i] = theta^(−2i/R), with transformers' rescaling of inv_freq
 * (llama3, linear, LongRoPE's short or long factors, and LongRoPE's
 * attention factor on cos and sin). The global table, for a sequence of T
 * positions: LongRoPE's long factors when T exceeds the original context,
 * as transformers chooses them. */
void cpu_rope_table(real *cos_t, real *sin_t, const model_config *cfg, int T);
/* The same with the choice made by the caller: local (Gemma 3's sliding
 * layers: the default RoPE of rope_local_theta) or global, and LongRoPE's
 * long factors or short ones. */
void cpu_rope_table_for(real *cos_t, real *sin_t, const model_config *cfg, int T, int local,
                        int long_factors);
/* In place on x (N rows of stride ld, nheads heads of D at column h·D), the
 * first R dimensions of each head (the rest pass through), HF rotate_half
 * convention: pairs (i, i + R/2); row n at position n % T of the (T, R/2)
 * tables. inverse applies the transpose (the backward). */
void cpu_rope_apply(real *x, int ld, int N, int T, int nheads, int D, int R, const real *cos_t,
                    const real *sin_t, int inverse);

/* ---- ALiBi and BLOOM's q|k|v layout (alibi.c) ---- */

/* slopes (H): transformers' _get_alibi_slopes, fp32 values (alibi.c says
 * where they may differ from torch's by an ulp). */
void cpu_alibi_slopes(real *slopes, int H);
/* The bias of a score against the key at position j (slope · j, rounded to
 * the build's precision as transformers' alibi tensor). */
static inline real cpu_alibi_bias(real slope, int j) {
    return slope * (real)j;
}
/* dst (N, 3·H·D) = src's rows from the fused layout (3, H, D) to BLOOM's
 * (H, 3, D) (to_heads), or back; dst and src do not overlap. */
void cpu_qkv_heads(real *dst, const real *src, int N, int H, int D, int to_heads);

/* ---- causal self-attention (attention.c) ---- */

typedef struct {
    int B, T, H, KV, D;
    int window; /* sliding window (0 = none): key j is visible to query i iff i − window < j ≤ i */
    const real *alibi; /* ALiBi: (H) slopes, score(i, j) += slope_h · j; NULL: none */
    real scale;        /* 1/sqrt(D), or query_pre_attn_scalar^(−½) */
    real softcap;      /* scores s become softcap · tanh(s / softcap) before the mask; 0 = none */
    int threads;       /* scratch was sized for this many threads */
    real *scratch;     /* threads · CPU_ATTN_SCRATCH(T) values */
    void *bf16;        /* the bf16 path's cpu_attention_bf16_bytes, 64-byte aligned, or NULL */
} cpu_attn;

#define CPU_ATTN_BLOCK 64
#define CPU_ATTN_SCRATCH(T) ((int64_t)2 * CPU_ATTN_BLOCK * (T))

/* q (N, H·D) of row stride ldq, k and v (N, KV·D) of strides ldk, ldv; query
 * head h reads kv head h / (H / KV). out (N, H·D) contiguous; lse (B, H, T)
 * keeps each softmax row's log-sum-exp so backward can recompute it. */
void cpu_attention_forward(const cpu_attn *at, const real *q, int ldq, const real *k, int ldk,
                           const real *v, int ldv, real *out, real *lse);
/* dq, dk, dv (same layouts as q, k, v) are overwritten. */
void cpu_attention_backward(const cpu_attn *at, const real *q, int ldq, const real *k, int ldk,
                            const real *v, int ldv, const real *out, const real *dout,
                            const real *lse, real *dq, real *dk, real *dv);

/* The same under bf16 precision (attention.c says how): the products in
 * bf16 through oneDNN with fp32 sums, all heads of a query block at once;
 * at->bf16 holds cpu_attention_bf16_bytes(at) of buffers. -1 with a message
 * when oneDNN fails. */
size_t cpu_attention_bf16_bytes(const cpu_attn *at);
int cpu_attention_bf16_forward(const cpu_attn *at, const real *q, int ldq, const real *k, int ldk,
                               const real *v, int ldv, real *out, real *lse);
int cpu_attention_bf16_backward(const cpu_attn *at, const real *q, int ldq, const real *k, int ldk,
                                const real *v, int ldv, const real *out, const real *dout,
                                const real *lse, real *dq, real *dk, real *dv);

/* ---- soft-capping (softcap.c): cap · tanh(x / cap), Gemma ---- */

/* In place on n values. */
void cpu_softcap_forward(real *x, int64_t n, real cap);
/* One attention row's backward with capped scores (attention.c): on entry p
 * holds the n scaled raw scores s, dp holds dO·Vᵀ; on return p = exp(cap ·
 * tanh(s / cap) − lse) and dp = p · (dp − dot) · (1 − tanh²(s / cap)), the
 * gradient of the raw scores. */
void cpu_softcap_attn_row_backward(real *p, real *dp, int n, real cap, real lse, real dot);
/* cpu_xent_backward for soft-capped logits (the forward's, capped): the
 * gradient of the logits before the cap, d/dz = d/dL · (1 − (L / cap)²)
 * (ops.c, by rows of cpu_softcap_xent_row: one row of V logits, its target
 * and log-sum-exp). */
void cpu_softcap_xent_row(real *l, int V, real lse, real scale, real cap, int32_t target);
void cpu_xent_softcap_backward(real *logits, const double *lse, const int32_t *targets, int N,
                               int V, double scale, real cap);
/* The token embedding's factor: √C rounded to fp32 (Gemma's embed_scale
 * buffer, a float32 tensor in every dtype transformers runs), or 1. */
static inline real cpu_embed_scale(const model_config *c) {
    return c->block.embed_scale ? (real)(float)sqrt((double)c->hidden_size) : 1;
}

#endif
