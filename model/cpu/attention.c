/* attention.c — causal softmax attention with grouped-query heads.
 *
 * For one (batch, head) the T queries are taken in blocks of CPU_ATTN_BLOCK
 * rows; a block only meets keys up to its last row (and, with a sliding
 * window, from its first row's window start), so the masked upper triangle
 * is mostly never computed. Scores S = scale · Q Kᵀ and the weighted sum
 * P V are single-threaded GEMMs on the block, with the OpenMP threads spread
 * over (batch, head). With ALiBi (at->alibi) each score of head h gets
 * slope_h · j for its key j added before the softmax (alibi.c).
 *
 * The (T, T) probabilities are not kept: forward saves each row's
 * log-sum-exp, and backward recomputes P = exp(S − lse) one block at a time
 * (FlashAttention's recomputation, Dao et al. 2022), with
 *   dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),
 *   dQ = scale · dS K,  dK += scale · dSᵀ Q,  dV += Pᵀ dO.
 * With soft-capping (Gemma 2) the scores are cap · tanh(S / cap) before the
 * mask and softmax, and dS is multiplied by 1 − tanh² (softcap.c). */
#include "model/cpu/cpu.h"

#include "util/err.h"

#include <omp.h>
#include <string.h>

typedef struct {
    int r0, r1; /* query rows [r0, r1) */
    int c0, c1; /* key columns [c0, c1) that any of those rows may see */
} attn_block;

static attn_block block_at(const cpu_attn *at, int r0) {
    attn_block bl = {r0, r0 + CPU_ATTN_BLOCK, 0, 0};
    if (bl.r1 > at->T) bl.r1 = at->T;
    bl.c0 = at->window > 0 && r0 - at->window + 1 > 0 ? r0 - at->window + 1 : 0;
    bl.c1 = bl.r1;
    return bl;
}

/* First key visible to query i. */
static int first_key(const cpu_attn *at, int i) {
    return at->window > 0 && i - at->window + 1 > 0 ? i - at->window + 1 : 0;
}

/* S (rows × nc, row stride nc) holds scaled scores on entry; head h's
 * ALiBi bias is added to the visible ones. Forward (lse_out != NULL): turns
 * each row into its softmax and stores the row's log-sum-exp. Backward
 * (lse_out == NULL): turns each row into exp(S − lse_in[row]). Masked
 * entries become 0 either way. */
static void block_softmax(const cpu_attn *at, const attn_block *bl, int h, real *S, real *lse_out,
                          const real *lse_in) {
    int nc = bl->c1 - bl->c0;
    for (int i = bl->r0; i < bl->r1; i++) {
        real *row = S + (int64_t)(i - bl->r0) * nc;
        int lo = first_key(at, i) - bl->c0, hi = i - bl->c0 + 1; /* visible: [lo, hi) */
        for (int j = 0; j < lo; j++) row[j] = 0;
        for (int j = hi; j < nc; j++) row[j] = 0;
        if (at->alibi) {
            real slope = at->alibi[h];
            for (int j = lo; j < hi; j++) row[j] += cpu_alibi_bias(slope, bl->c0 + j);
        }
        if (lse_out) {
            if (at->softcap) cpu_softcap_forward(row + lo, hi - lo, at->softcap);
            real mx = cpu_row_max(row + lo, hi - lo);
            double sum = cpu_row_sum_exp(row + lo, row + lo, hi - lo, mx);
            real inv = (real)(1.0 / sum);
#pragma omp simd
            for (int j = lo; j < hi; j++) row[j] *= inv;
            lse_out[i] = (real)(mx + log(sum));
        } else {
            cpu_row_exp(row + lo, hi - lo, lse_in[i], 1);
        }
    }
}

/* Row i of head h's block with soft-capped scores
 * (cpu_softcap_attn_row_backward): S (raw, scaled) in p and dO·Vᵀ in dp
 * become P and d(S + bias); the masked entries 0 in both. The ALiBi bias is
 * added first, as block_softmax's forward adds it before the cap. */
static void softcap_row_backward(const cpu_attn *at, const attn_block *bl, int h, int i, real *p,
                                 real *dp, real lse, real dot) {
    int nc = bl->c1 - bl->c0, lo = first_key(at, i) - bl->c0, hi = i - bl->c0 + 1;
    for (int j = 0; j < lo; j++) p[j] = dp[j] = 0;
    for (int j = hi; j < nc; j++) p[j] = dp[j] = 0;
    if (at->alibi)
        for (int j = lo; j < hi; j++) p[j] += cpu_alibi_bias(at->alibi[h], bl->c0 + j);
    cpu_softcap_attn_row_backward(p + lo, dp + lo, hi - lo, at->softcap, lse, dot);
}

/* Query row i's dS in place of its dP (dr, the block's nc columns), given
 * its P (pr; softcap: the raw scaled scores), its O and dO rows (D values)
 * and log-sum-exp: dS = P ⊙ (dP − rowsum(P ⊙ dP)), where rowsum(P ⊙ dP) =
 * dO_i · O_i since O_i = Σ_j P_ij V_j. */
static void row_ds(const cpu_attn *at, const attn_block *bl, int h, int i, real *pr, real *dr,
                   const real *o, const real *g, real lse) {
    int nc = bl->c1 - bl->c0;
    double dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int d = 0; d < at->D; d++) dot += (double)o[d] * g[d];
    if (at->softcap) {
        softcap_row_backward(at, bl, h, i, pr, dr, lse, (real)dot);
        return;
    }
#pragma omp simd
    for (int j = 0; j < nc; j++) dr[j] = pr[j] * (dr[j] - (real)dot);
}

/* Threads for a parallel region: none for tiny problems, and never more than
 * the scratch was sized for. */
static int attn_threads(const cpu_attn *at) {
    if ((int64_t)at->B * at->H * at->T * at->T * at->D <= 1 << 16) return 1;
    int nt = omp_get_max_threads();
    return nt < at->threads ? nt : at->threads;
}

void cpu_attention_forward(const cpu_attn *at, const real *q, int ldq, const real *k, int ldk,
                           const real *v, int ldv, real *out, real *lse) {
    int T = at->T, H = at->H, D = at->D, group = at->H / at->KV, ldo = H * D;
#pragma omp parallel for schedule(dynamic) num_threads(attn_threads(at))
    for (int bh = 0; bh < at->B * H; bh++) {
        int b = bh / H, h = bh % H, kvh = h / group;
        real *S = at->scratch + omp_get_thread_num() * CPU_ATTN_SCRATCH(T);
        const real *Q = q + (int64_t)b * T * ldq + (int64_t)h * D;
        const real *K = k + (int64_t)b * T * ldk + (int64_t)kvh * D;
        const real *V = v + (int64_t)b * T * ldv + (int64_t)kvh * D;
        real *O = out + (int64_t)b * T * ldo + (int64_t)h * D;
        real *L = lse + (int64_t)bh * T;
        for (int r0 = 0; r0 < T; r0 += CPU_ATTN_BLOCK) {
            attn_block bl = block_at(at, r0);
            int rb = bl.r1 - bl.r0, nc = bl.c1 - bl.c0;
            real_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, rb, nc, D, at->scale,
                      Q + (int64_t)r0 * ldq, ldq, K + (int64_t)bl.c0 * ldk, ldk, 0, S, nc);
            block_softmax(at, &bl, h, S, L, NULL);
            real_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rb, D, nc, 1, S, nc,
                      V + (int64_t)bl.c0 * ldv, ldv, 0, O + (int64_t)r0 * ldo, ldo);
        }
    }
}

void cpu_attention_backward(const cpu_attn *at, const real *q, int ldq, const real *k, int ldk,
                            const real *v, int ldv, const real *out, const real *dout,
                            const real *lse, real *dq, real *dk, real *dv) {
    int T = at->T, H = at->H, D = at->D, group = at->H / at->KV, ldo = H * D;
    /* One task per (batch, kv head): the query heads sharing a kv head all
     * add into its dK and dV, so they belong to the same thread. */
#pragma omp parallel for schedule(dynamic) num_threads(attn_threads(at))
    for (int bk = 0; bk < at->B * at->KV; bk++) {
        int b = bk / at->KV, kvh = bk % at->KV;
        real *P = at->scratch + omp_get_thread_num() * CPU_ATTN_SCRATCH(T);
        real *dP = P + (int64_t)CPU_ATTN_BLOCK * T;
        const real *K = k + (int64_t)b * T * ldk + (int64_t)kvh * D;
        const real *V = v + (int64_t)b * T * ldv + (int64_t)kvh * D;
        real *dK = dk + (int64_t)b * T * ldk + (int64_t)kvh * D;
        real *dV = dv + (int64_t)b * T * ldv + (int64_t)kvh * D;
        for (int t = 0; t < T; t++) {
            memset(dK + (int64_t)t * ldk, 0, (size_t)D * sizeof(real));
            memset(dV + (int64_t)t * ldv, 0, (size_t)D * sizeof(real));
        }
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const real *Q = q + (int64_t)b * T * ldq + (int64_t)h * D;
            const real *O = out + (int64_t)b * T * ldo + (int64_t)h * D;
            const real *dO = dout + (int64_t)b * T * ldo + (int64_t)h * D;
            real *dQ = dq + (int64_t)b * T * ldq + (int64_t)h * D;
            const real *L = lse + ((int64_t)b * H + h) * T;
            for (int r0 = 0; r0 < T; r0 += CPU_ATTN_BLOCK) {
                attn_block bl = block_at(at, r0);
                int rb = bl.r1 - bl.r0, nc = bl.c1 - bl.c0;
                const real *Qb = Q + (int64_t)r0 * ldq, *dOb = dO + (int64_t)r0 * ldo;
                const real *Kb = K + (int64_t)bl.c0 * ldk, *Vb = V + (int64_t)bl.c0 * ldv;
                real_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, rb, nc, D, at->scale, Qb, ldq,
                          Kb, ldk, 0, P, nc);
                if (!at->softcap) block_softmax(at, &bl, h, P, NULL, L);
                real_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, rb, nc, D, 1, dOb, ldo, Vb, ldv,
                          0, dP, nc);
                for (int i = 0; i < rb; i++)
                    row_ds(at, &bl, h, r0 + i, P + (int64_t)i * nc, dP + (int64_t)i * nc,
                           O + (int64_t)(r0 + i) * ldo, dOb + (int64_t)i * ldo, L[r0 + i]);
                real_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, D, rb, 1, P, nc, dOb, ldo, 1,
                          dV + (int64_t)bl.c0 * ldv, ldv);
                real_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rb, D, nc, at->scale, dP, nc,
                          Kb, ldk, 0, dQ + (int64_t)r0 * ldq, ldq);
                real_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, D, rb, at->scale, dP, nc, Qb,
                          ldq, 1, dK + (int64_t)bl.c0 * ldk, ldk);
            }
        }
    }
}

/* ---- bf16 precision: the same blocks, all heads at once through oneDNN ----
 *
 * Under --precision bf16 the five products above run as oneDNN matmuls of
 * bf16 operands with fp32 sums, as PyTorch's CPU autocast runs attention on
 * bf16 q, k, v: q, k, v and dO are rounded to bf16, and so are P and dS
 * before they multiply (FlashAttention's kernels round P the same way, Dao
 * 2023). Scores, softmax, log-sum-exps and dS stay fp32; so do O, dQ, dK
 * and dV, which oneDNN writes in fp32 straight into the caller's layouts.
 *
 * One call per product and query block covers every (batch, head): a
 * 5-dimensional batched matmul (B, KV, G, rows, cols) whose G = H / KV query
 * heads broadcast over their kv head (a dimension of 1 in k or v). dK and dV
 * sum over the G query heads of a kv head, so their products read P and dS
 * as (B, KV, cols, G·rows): the block's rows of all G heads are one long
 * inner dimension. The per-block buffers are laid out (B, H, rows, ·) so
 * that both readings are plain strides. */

typedef struct {
    uint16_t *k, *v;    /* (B, KV, T, D) */
    uint16_t *q, *dout; /* (B, H, BLOCK, D): the block's rows */
    real *s, *dp;       /* (B, H, BLOCK, T) at most: scores then P; dO·Vᵀ then dS */
    uint16_t *p, *ds;   /* the same shapes in bf16: P, and scale · dS */
} attn_bf16_bufs;

/* The buffers inside `base` (NULL: only counts), each 64-byte aligned;
 * returns the bytes used. */
static size_t bf16_bufs(const cpu_attn *at, void *base, attn_bf16_bufs *bb) {
    size_t kv = (size_t)at->B * at->KV * at->T * at->D;
    size_t blk = (size_t)at->B * at->H * CPU_ATTN_BLOCK * at->D;
    size_t sc = (size_t)at->B * at->H * CPU_ATTN_BLOCK * at->T;
    size_t sizes[8] = {2 * kv, 2 * kv, 2 * blk, 2 * blk, sizeof(real) * sc, sizeof(real) * sc,
                       2 * sc, 2 * sc};
    void *ptr[8];
    size_t used = 0;
    for (int i = 0; i < 8; i++) {
        ptr[i] = base ? (char *)base + used : NULL;
        used += (sizes[i] + 63) / 64 * 64;
    }
    if (bb) *bb = (attn_bf16_bufs){ptr[0], ptr[1], ptr[2], ptr[3], ptr[4], ptr[5], ptr[6], ptr[7]};
    return used;
}

size_t cpu_attention_bf16_bytes(const cpu_attn *at) {
    return bf16_bufs(at, NULL, NULL);
}

/* Whether a loop over n items is worth the OpenMP team. */
#define BF16_PAR(n) if ((int64_t)(n)*at->T * at->D > 1 << 16)

/* x (N, KV·D) of row stride ld → dst (B, KV, T, D) in bf16. */
static void kv_to_bf16(const cpu_attn *at, const real *x, int ld, uint16_t *dst) {
    int T = at->T, KV = at->KV, D = at->D;
#pragma omp parallel for schedule(static) BF16_PAR(at->B *KV)
    for (int bk = 0; bk < at->B * KV; bk++) {
        int b = bk / KV, kvh = bk % KV;
        for (int t = 0; t < T; t++)
            model_values_to_bf16(x + ((int64_t)b * T + t) * ld + (int64_t)kvh * D, D,
                                 dst + ((int64_t)bk * T + t) * D);
    }
}

/* Rows [r0, r0 + rb) of x (N, H·D) of row stride ld → dst (B, H, rb, D). */
static void rows_to_bf16(const cpu_attn *at, const real *x, int ld, int r0, int rb, uint16_t *dst) {
    int T = at->T, H = at->H, D = at->D;
#pragma omp parallel for schedule(static) BF16_PAR(at->B *H)
    for (int bh = 0; bh < at->B * H; bh++) {
        int b = bh / H, h = bh % H;
        for (int i = 0; i < rb; i++)
            model_values_to_bf16(x + ((int64_t)b * T + r0 + i) * ld + (int64_t)h * D, D,
                                 dst + ((int64_t)bh * rb + i) * D);
    }
}

/* The operand descriptions of one block (rb rows, nc columns). */
typedef struct {
    cpu_bf16_md rows;     /* (B, KV, G, rb, D): q or dO of the block, contiguous */
    cpu_bf16_md kv_t;     /* (B, KV, 1, D, nc): kᵀ or vᵀ from column c0 */
    cpu_bf16_md kv;       /* (B, KV, 1, nc, D): k or v from column c0 */
    cpu_bf16_md scores;   /* (B, KV, G, rb, nc): S, P, dP, dS, contiguous */
    cpu_bf16_md scores_t; /* (B, KV, nc, G·rb): Pᵀ or dSᵀ */
    cpu_bf16_md rows_g;   /* (B, KV, G·rb, D): the block's q or dO, heads stacked */
} attn_bf16_mds;

static attn_bf16_mds bf16_mds(const cpu_attn *at, int rb, int nc) {
    int64_t B = at->B, KV = at->KV, G = at->H / at->KV, T = at->T, D = at->D, H = at->H;
    attn_bf16_mds m;
    m.rows = cpu_bf16_md_make(5, (int64_t[]){B, KV, G, rb, D},
                              (int64_t[]){H * rb * D, G * rb * D, rb * D, D, 1});
    m.kv_t = cpu_bf16_md_make(5, (int64_t[]){B, KV, 1, D, nc},
                              (int64_t[]){KV * T * D, T * D, T * D, 1, D});
    m.kv = cpu_bf16_md_make(5, (int64_t[]){B, KV, 1, nc, D},
                            (int64_t[]){KV * T * D, T * D, T * D, D, 1});
    m.scores = cpu_bf16_md_make(5, (int64_t[]){B, KV, G, rb, nc},
                                (int64_t[]){H * rb * nc, G * rb * nc, rb * nc, nc, 1});
    m.scores_t = cpu_bf16_md_make(4, (int64_t[]){B, KV, nc, G * rb},
                                  (int64_t[]){H * rb * nc, G * rb * nc, 1, nc});
    m.rows_g = cpu_bf16_md_make(4, (int64_t[]){B, KV, G * rb, D},
                                (int64_t[]){H * rb * D, G * rb * D, D, 1});
    return m;
}

/* (B, KV, G, rb, D) rows written into a (N, ·) matrix of row stride ld at
 * row r0 (O, dQ); (B, KV, nc, D) rows into one at row c0 (dK, dV). */
static cpu_bf16_md out_rows(const cpu_attn *at, int rb, int ld) {
    int64_t G = at->H / at->KV, D = at->D;
    return cpu_bf16_md_make(5, (int64_t[]){at->B, at->KV, G, rb, D},
                            (int64_t[]){(int64_t)at->T * ld, G * D, D, ld, 1});
}
static cpu_bf16_md out_kv(const cpu_attn *at, int nc, int ld) {
    return cpu_bf16_md_make(4, (int64_t[]){at->B, at->KV, nc, at->D},
                            (int64_t[]){(int64_t)at->T * ld, at->D, ld, 1});
}

int cpu_attention_bf16_forward(const cpu_attn *at, const real *q, int ldq, const real *k, int ldk,
                               const real *v, int ldv, real *out, real *lse) {
    if (!at->bf16) return err_set("bf16 attention without its buffers");
    attn_bf16_bufs bb;
    bf16_bufs(at, at->bf16, &bb);
    int T = at->T, H = at->H, ldo = H * at->D;
    kv_to_bf16(at, k, ldk, bb.k);
    kv_to_bf16(at, v, ldv, bb.v);
    for (int r0 = 0; r0 < T; r0 += CPU_ATTN_BLOCK) {
        attn_block bl = block_at(at, r0);
        int rb = bl.r1 - bl.r0, nc = bl.c1 - bl.c0;
        attn_bf16_mds m = bf16_mds(at, rb, nc);
        cpu_bf16_md o = out_rows(at, rb, ldo);
        rows_to_bf16(at, q, ldq, r0, rb, bb.q);
        TRY(cpu_bf16_matmul(&m.rows, bb.q, &m.kv_t, bb.k + (int64_t)bl.c0 * at->D, &m.scores, bb.s,
                            0));
#pragma omp parallel for schedule(static) BF16_PAR(at->B *H)
        for (int bh = 0; bh < at->B * H; bh++) {
            real *S = bb.s + (int64_t)bh * rb * nc;
#pragma omp simd
            for (int64_t j = 0; j < (int64_t)rb * nc; j++) S[j] *= at->scale;
            block_softmax(at, &bl, bh % H, S, lse + (int64_t)bh * T, NULL);
            model_values_to_bf16(S, (int64_t)rb * nc, bb.p + (int64_t)bh * rb * nc);
        }
        TRY(cpu_bf16_matmul(&m.scores, bb.p, &m.kv, bb.v + (int64_t)bl.c0 * at->D, &o,
                            out + (int64_t)r0 * ldo, 0));
    }
    return 0;
}

int cpu_attention_bf16_backward(const cpu_attn *at, const real *q, int ldq, const real *k, int ldk,
                                const real *v, int ldv, const real *out, const real *dout,
                                const real *lse, real *dq, real *dk, real *dv) {
    if (!at->bf16) return err_set("bf16 attention without its buffers");
    attn_bf16_bufs bb;
    bf16_bufs(at, at->bf16, &bb);
    int T = at->T, H = at->H, D = at->D, ldo = H * D;
    kv_to_bf16(at, k, ldk, bb.k);
    kv_to_bf16(at, v, ldv, bb.v);
    for (int64_t t = 0; t < (int64_t)at->B * T; t++) {
        memset(dk + t * ldk, 0, (size_t)at->KV * D * sizeof(real));
        memset(dv + t * ldv, 0, (size_t)at->KV * D * sizeof(real));
    }
    for (int r0 = 0; r0 < T; r0 += CPU_ATTN_BLOCK) {
        attn_block bl = block_at(at, r0);
        int rb = bl.r1 - bl.r0, nc = bl.c1 - bl.c0;
        attn_bf16_mds m = bf16_mds(at, rb, nc);
        cpu_bf16_md oq = out_rows(at, rb, ldq), okd = out_kv(at, nc, ldk),
                    ovd = out_kv(at, nc, ldv);
        const uint16_t *Kc = bb.k + (int64_t)bl.c0 * D, *Vc = bb.v + (int64_t)bl.c0 * D;
        rows_to_bf16(at, q, ldq, r0, rb, bb.q);
        rows_to_bf16(at, dout, ldo, r0, rb, bb.dout);
        TRY(cpu_bf16_matmul(&m.rows, bb.q, &m.kv_t, Kc, &m.scores, bb.s, 0));
        TRY(cpu_bf16_matmul(&m.rows, bb.dout, &m.kv_t, Vc, &m.scores, bb.dp, 0));
#pragma omp parallel for schedule(static) BF16_PAR(at->B *H)
        for (int bh = 0; bh < at->B * H; bh++) {
            int b = bh / H, h = bh % H;
            real *P = bb.s + (int64_t)bh * rb * nc, *dP = bb.dp + (int64_t)bh * rb * nc;
            const real *L = lse + (int64_t)bh * T;
#pragma omp simd
            for (int64_t j = 0; j < (int64_t)rb * nc; j++) P[j] *= at->scale;
            if (!at->softcap) block_softmax(at, &bl, h, P, NULL, L);
            for (int i = 0; i < rb; i++) {
                int64_t row = ((int64_t)b * T + r0 + i) * ldo + (int64_t)h * D;
                real *dr = dP + (int64_t)i * nc;
                row_ds(at, &bl, h, r0 + i, P + (int64_t)i * nc, dr, out + row, dout + row,
                       L[r0 + i]);
#pragma omp simd
                for (int j = 0; j < nc; j++) dr[j] *= at->scale;
            }
            model_values_to_bf16(P, (int64_t)rb * nc, bb.p + (int64_t)bh * rb * nc);
            model_values_to_bf16(dP, (int64_t)rb * nc, bb.ds + (int64_t)bh * rb * nc);
        }
        /* dV += Pᵀ dO, dQ = (scale · dS) K, dK += (scale · dS)ᵀ Q */
        TRY(cpu_bf16_matmul(&m.scores_t, bb.p, &m.rows_g, bb.dout, &ovd, dv + (int64_t)bl.c0 * ldv,
                            1));
        TRY(cpu_bf16_matmul(&m.scores, bb.ds, &m.kv, Kc, &oq, dq + (int64_t)r0 * ldq, 0));
        TRY(cpu_bf16_matmul(&m.scores_t, bb.ds, &m.rows_g, bb.q, &okd, dk + (int64_t)bl.c0 * ldk,
                            1));
    }
    return 0;
}
