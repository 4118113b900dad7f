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

/* Row i of a block with soft-capped scores (cpu_softcap_attn_row_backward):
 * S (raw, scaled) in p and dO·Vᵀ in dp become P and d(raw S); the masked
 * entries 0 in both. */
static void softcap_row_backward(const cpu_attn *at, const attn_block *bl, int i, real *p, real *dp,
                                 real lse, real dot) {
    int nc = bl->c1 - bl->c0, lo = first_key(at, i) - bl->c0, hi = i - bl->c0 + 1;
    for (int j = 0; j < lo; j++) p[j] = dp[j] = 0;
    for (int j = hi; j < nc; j++) p[j] = dp[j] = 0;
    cpu_softcap_attn_row_backward(p + lo, dp + lo, hi - lo, at->softcap, lse, dot);
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
                /* rowsum(P ⊙ dP) = dO_i · O_i, since O_i = Σ_j P_ij V_j. */
                for (int i = 0; i < rb; i++) {
                    const real *o = O + (int64_t)(r0 + i) * ldo, *g = dOb + (int64_t)i * ldo;
                    double dot = 0;
#pragma omp simd reduction(+ : dot)
                    for (int d = 0; d < D; d++) dot += (double)o[d] * g[d];
                    real *pr = P + (int64_t)i * nc, *dr = dP + (int64_t)i * nc;
                    if (at->softcap) {
                        softcap_row_backward(at, &bl, r0 + i, pr, dr, L[r0 + i], (real)dot);
                        continue;
                    }
#pragma omp simd
                    for (int j = 0; j < nc; j++) dr[j] = pr[j] * (dr[j] - (real)dot);
                }
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
