/* gpu_attention.cu — causal softmax attention with grouped-query heads,
 * flash-style (FlashAttention, Dao et al. 2022; its backward as in
 * FlashAttention-2, Dao 2023): tiles of keys and values pass through shared
 * memory, each query row keeps a running max and sum (online softmax), and
 * no (T, T) matrix is ever stored. Forward saves each row's log-sum-exp;
 * backward recomputes P = exp(S − lse) tile by tile, with
 *   δ_i = dO_i · O_i,  dP = dO Vᵀ,  dS = P ⊙ (dP − δ),
 *   dQ = scale · dS K,  dK = scale · dSᵀ Q,  dV = Pᵀ dO,
 * the formulas of model/cpu/attention.c. With ALiBi (s.alibi) each scaled
 * score of head h against key j gets slope_h · j added first (P is
 * recomputed with it; the backward formulas are unchanged). With
 * soft-capping (s.softcap) the scores are cap · tanh(S / cap) before the
 * mask, and dS is multiplied by 1 − tanh².
 *
 * Plain fp32 arithmetic in CUDA cores (no tensor cores): one code path for
 * both storage types, straightforward to check against the CPU.
 *   forward and dQ: one block per (query tile of 64, head, batch), 8 warps of
 *     8 query rows; in a key tile of 32, lane j owns key j for the scores and
 *     dimension lane + 32c (c < DPL: 2, 4 or 8 for head dims up to 64, 128,
 *     256) for the accumulators.
 *   dK, dV: one block per (key tile of 64, kv head, batch), 8 warps of 8 key
 *     rows, looping over the query heads of the group and the query tiles
 *     that see the keys; lane i owns query i of a tile of 32. No atomics:
 *     every output element is written by one thread, so results are
 *     deterministic.
 * Tiles that the causal mask (and the sliding window) hide entirely are
 * skipped. Shared tiles are fp32, transposed with a row stride of 33 floats
 * so that both the per-key and the per-dimension reads are free of bank
 * conflicts; head dims are padded to a multiple of 4 (DP) with zeros.
 *
 * These CUDA-core kernels and the launchers that choose an implementation
 * are here; the tensor-core versions (bf16 mma.sync, head dims 32/64/128)
 * are gpu_attention_mma.cu, the decode kernel (generation against a KV
 * cache) gpu_attention_decode.cu, and the masks, soft-capping and ALiBi
 * all three use gpu_device.cuh. */
#include "gpu/gpu_attention_mma.cuh"
#include "gpu/gpu_device.cuh"

#include <math.h>

#define ATT_BQ 64 /* query rows per block (forward, dQ) */
#define ATT_BK 32 /* keys per tile: one per lane */
#define ATT_WARPS 8
#define ATT_ROWS 8 /* rows per warp */
#define ATT_LD 33  /* row stride of the transposed tiles */
#define ATT_THREADS (32 * ATT_WARPS)

static_assert(ATT_BQ == ATT_WARPS * ATT_ROWS, "query tile = warps x rows");

/* Loads rows [r0, r0 + n) of one head (columns col … col + D) of x into a
 * row-major (n, DP) fp32 tile, times mul; zeros past T and past D. */
template <typename T>
__device__ void load_rows(float *dst, const T *x, int64_t row_base, int ld, int col, int r0, int n,
                          int T_, int D, int DP, float mul) {
    for (int e = threadIdx.x; e < n * DP; e += ATT_THREADS) {
        int r = e / DP, d = e % DP, t = r0 + r;
        float v = 0;
        if (t < T_ && d < D) v = ldf(x, (row_base + t) * ld + col + d) * mul;
        dst[e] = v;
    }
}

/* The same rows transposed: dst[d · ATT_LD + r], n <= 32. */
template <typename T>
__device__ void load_rows_t(float *dst, const T *x, int64_t row_base, int ld, int col, int r0,
                            int n, int T_, int D, int DP) {
    for (int e = threadIdx.x; e < n * DP; e += ATT_THREADS) {
        int r = e / DP, d = e % DP, t = r0 + r;
        float v = 0;
        if (t < T_ && d < D) v = ldf(x, (row_base + t) * ld + col + d);
        dst[d * ATT_LD + r] = v;
    }
}

/* ---- forward ---------------------------------------------------------------------- */

template <typename T, int DPL>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_fwd_kernel(gpu_attn_shape s, int DP, const T *q, int ldq, const T *k, int ldk, const T *v,
                    int ldv, T *out, float *lse) {
    extern __shared__ float4 smem4[];
    float *Qs = (float *)smem4;   /* (BQ, DP), scaled */
    float *Kt = Qs + ATT_BQ * DP; /* (DP, 33) */
    float *Vt = Kt + DP * ATT_LD; /* (DP, 33) */
    float *Ps = Vt + DP * ATT_LD; /* (WARPS, ROWS, BK) */
    const int T_ = s.T, D = s.D, H = s.H, group = s.H / s.KV;
    const int tile = gridDim.x - 1 - blockIdx.x; /* longest tiles first */
    const int h = blockIdx.y, b = blockIdx.z, kvh = h / group;
    const int q0 = tile * ATT_BQ, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t base = (int64_t)b * T_;
    const float slope = alibi_slope(s, h);
    float *P = Ps + w * ATT_ROWS * ATT_BK;

    load_rows(Qs, q, base, ldq, h * D, q0, ATT_BQ, T_, D, DP, s.scale);
    float m[ATT_ROWS], l[ATT_ROWS], o[ATT_ROWS][DPL];
#pragma unroll
    for (int i = 0; i < ATT_ROWS; i++) {
        m[i] = -INFINITY;
        l[i] = 0;
#pragma unroll
        for (int c = 0; c < DPL; c++) o[i][c] = 0;
    }
    int last = min(T_, q0 + ATT_BQ) - 1;
    int kt0 = first_key(q0, s.window) / ATT_BK, kt1 = last / ATT_BK;
    for (int kt = kt0; kt <= kt1; kt++) {
        __syncthreads();
        load_rows_t(Kt, k, base, ldk, kvh * D, kt * ATT_BK, ATT_BK, T_, D, DP);
        load_rows_t(Vt, v, base, ldv, kvh * D, kt * ATT_BK, ATT_BK, T_, D, DP);
        __syncthreads();
        float sc[ATT_ROWS];
#pragma unroll
        for (int i = 0; i < ATT_ROWS; i++) sc[i] = 0;
        for (int d = 0; d < DP; d += 4) {
            float k0 = Kt[(d + 0) * ATT_LD + lane], k1 = Kt[(d + 1) * ATT_LD + lane];
            float k2 = Kt[(d + 2) * ATT_LD + lane], k3 = Kt[(d + 3) * ATT_LD + lane];
#pragma unroll
            for (int i = 0; i < ATT_ROWS; i++) {
                float4 qv = *(const float4 *)&Qs[(w * ATT_ROWS + i) * DP + d];
                sc[i] += qv.x * k0 + qv.y * k1 + qv.z * k2 + qv.w * k3;
            }
        }
        const int j = kt * ATT_BK + lane;
        const float bias = alibi_bias(slope, j); /* the lane's key, every row */
#pragma unroll
        for (int i = 0; i < ATT_ROWS; i++) {
            int qi = q0 + w * ATT_ROWS + i;
            float x = visible(qi, j, T_, s.window) ? cap_score(alibi_add(sc[i], bias), s.softcap)
                                                   : -INFINITY;
            float mn = fmaxf(m[i], warp_max(x));
            float p = mn == -INFINITY ? 0.0f : expf(x - mn);
            float corr = mn == -INFINITY ? 1.0f : expf(m[i] - mn);
            l[i] = l[i] * corr + warp_sum(p);
#pragma unroll
            for (int c = 0; c < DPL; c++) o[i][c] *= corr;
            m[i] = mn;
            P[i * ATT_BK + lane] = p;
        }
        __syncwarp();
        for (int jj = 0; jj < ATT_BK; jj += 4) {
            float vv[DPL][4];
#pragma unroll
            for (int c = 0; c < DPL; c++) {
                int d = lane + 32 * c;
#pragma unroll
                for (int u = 0; u < 4; u++) vv[c][u] = d < DP ? Vt[d * ATT_LD + jj + u] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < ATT_ROWS; i++) {
                float4 p4 = *(const float4 *)&P[i * ATT_BK + jj];
#pragma unroll
                for (int c = 0; c < DPL; c++)
                    o[i][c] +=
                        p4.x * vv[c][0] + p4.y * vv[c][1] + p4.z * vv[c][2] + p4.w * vv[c][3];
            }
        }
        __syncwarp();
    }
    const int HD = H * D;
#pragma unroll
    for (int i = 0; i < ATT_ROWS; i++) {
        int qi = q0 + w * ATT_ROWS + i;
        if (qi >= T_) continue;
        float inv = 1.0f / l[i];
#pragma unroll
        for (int c = 0; c < DPL; c++) {
            int d = lane + 32 * c;
            if (d < D) stf(out, (base + qi) * HD + h * D + d, o[i][c] * inv);
        }
        if (lane == 0) lse[((int64_t)b * H + h) * T_ + qi] = m[i] + logf(l[i]);
    }
}

/* ---- backward: δ = rowsum(dO ⊙ O), one warp per (row, head) ------------------------- */

template <typename T>
__global__ void attn_delta_kernel(gpu_attn_shape s, const T *out, const T *dout, float *delta) {
    int64_t rows = (int64_t)s.B * s.T * s.H;
    int64_t r = blockIdx.x * (int64_t)ATT_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows) return;
    int h = (int)(r % s.H);
    int64_t n = r / s.H; /* token row b·T + t */
    int64_t off = n * s.H * s.D + (int64_t)h * s.D;
    float acc = 0;
    for (int d = lane; d < s.D; d += 32) acc += ldf(out, off + d) * ldf(dout, off + d);
    acc = warp_sum(acc);
    int b = (int)(n / s.T), t = (int)(n % s.T);
    if (lane == 0) delta[((int64_t)b * s.H + h) * s.T + t] = acc;
}

/* ---- backward: dQ ------------------------------------------------------------------- */

template <typename T, int DPL>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_dq_kernel(gpu_attn_shape s, int DP, const T *q, int ldq, const T *k, int ldk, const T *v,
                   int ldv, const T *dout, const float *lse, const float *delta, T *dq) {
    extern __shared__ float4 smem4[];
    float *Qs = (float *)smem4;    /* (BQ, DP), scaled */
    float *dOs = Qs + ATT_BQ * DP; /* (BQ, DP) */
    float *Kt = dOs + ATT_BQ * DP; /* (DP, 33) */
    float *Vt = Kt + DP * ATT_LD;  /* (DP, 33) */
    float *Ps = Vt + DP * ATT_LD;  /* (WARPS, ROWS, BK): dS */
    const int T_ = s.T, D = s.D, H = s.H, group = s.H / s.KV;
    const int tile = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, kvh = h / group;
    const int q0 = tile * ATT_BQ, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t base = (int64_t)b * T_;
    const int HD = H * D;
    const float slope = alibi_slope(s, h);
    float *P = Ps + w * ATT_ROWS * ATT_BK;

    load_rows(Qs, q, base, ldq, h * D, q0, ATT_BQ, T_, D, DP, s.scale);
    load_rows(dOs, dout, base, HD, h * D, q0, ATT_BQ, T_, D, DP, 1.0f);
    float L[ATT_ROWS], Dl[ATT_ROWS], acc[ATT_ROWS][DPL];
#pragma unroll
    for (int i = 0; i < ATT_ROWS; i++) {
        int qi = q0 + w * ATT_ROWS + i;
        int64_t r = ((int64_t)b * H + h) * T_ + qi;
        L[i] = qi < T_ ? lse[r] : 0.0f;
        Dl[i] = qi < T_ ? delta[r] : 0.0f;
#pragma unroll
        for (int c = 0; c < DPL; c++) acc[i][c] = 0;
    }
    int last = min(T_, q0 + ATT_BQ) - 1;
    int kt0 = first_key(q0, s.window) / ATT_BK, kt1 = last / ATT_BK;
    for (int kt = kt0; kt <= kt1; kt++) {
        __syncthreads();
        load_rows_t(Kt, k, base, ldk, kvh * D, kt * ATT_BK, ATT_BK, T_, D, DP);
        load_rows_t(Vt, v, base, ldv, kvh * D, kt * ATT_BK, ATT_BK, T_, D, DP);
        __syncthreads();
        float sc[ATT_ROWS], dp[ATT_ROWS];
#pragma unroll
        for (int i = 0; i < ATT_ROWS; i++) sc[i] = dp[i] = 0;
        for (int d = 0; d < DP; d += 4) {
            float k0 = Kt[(d + 0) * ATT_LD + lane], k1 = Kt[(d + 1) * ATT_LD + lane];
            float k2 = Kt[(d + 2) * ATT_LD + lane], k3 = Kt[(d + 3) * ATT_LD + lane];
            float v0 = Vt[(d + 0) * ATT_LD + lane], v1 = Vt[(d + 1) * ATT_LD + lane];
            float v2 = Vt[(d + 2) * ATT_LD + lane], v3 = Vt[(d + 3) * ATT_LD + lane];
#pragma unroll
            for (int i = 0; i < ATT_ROWS; i++) {
                float4 qv = *(const float4 *)&Qs[(w * ATT_ROWS + i) * DP + d];
                float4 gv = *(const float4 *)&dOs[(w * ATT_ROWS + i) * DP + d];
                sc[i] += qv.x * k0 + qv.y * k1 + qv.z * k2 + qv.w * k3;
                dp[i] += gv.x * v0 + gv.y * v1 + gv.z * v2 + gv.w * v3;
            }
        }
        const int j = kt * ATT_BK + lane;
        const float bias = alibi_bias(slope, j); /* the lane's key, every row */
#pragma unroll
        for (int i = 0; i < ATT_ROWS; i++) {
            int qi = q0 + w * ATT_ROWS + i;
            float y = cap_score(alibi_add(sc[i], bias), s.softcap);
            float p = visible(qi, j, T_, s.window) ? expf(y - L[i]) : 0.0f;
            P[i * ATT_BK + lane] = p * (dp[i] - Dl[i]) * cap_grad(y, s.softcap);
        }
        __syncwarp();
        for (int jj = 0; jj < ATT_BK; jj += 4) {
            float kk[DPL][4];
#pragma unroll
            for (int c = 0; c < DPL; c++) {
                int d = lane + 32 * c;
#pragma unroll
                for (int u = 0; u < 4; u++) kk[c][u] = d < DP ? Kt[d * ATT_LD + jj + u] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < ATT_ROWS; i++) {
                float4 p4 = *(const float4 *)&P[i * ATT_BK + jj];
#pragma unroll
                for (int c = 0; c < DPL; c++)
                    acc[i][c] +=
                        p4.x * kk[c][0] + p4.y * kk[c][1] + p4.z * kk[c][2] + p4.w * kk[c][3];
            }
        }
        __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < ATT_ROWS; i++) {
        int qi = q0 + w * ATT_ROWS + i;
        if (qi >= T_) continue;
#pragma unroll
        for (int c = 0; c < DPL; c++) {
            int d = lane + 32 * c;
            if (d < D) stf(dq, (base + qi) * ldq + h * D + d, acc[i][c] * s.scale);
        }
    }
}

/* ---- backward: dK and dV ---------------------------------------------------------------- */

template <typename T, int DPL>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_dkv_kernel(gpu_attn_shape s, int DP, const T *q, int ldq, const T *k, int ldk, const T *v,
                    int ldv, const T *dout, const float *lse, const float *delta, T *dk, T *dv) {
    extern __shared__ float4 smem4[];
    float *Ks = (float *)smem4;       /* (64, DP), scaled: the block's keys */
    float *Vs = Ks + ATT_BQ * DP;     /* (64, DP) */
    float *Qt = Vs + ATT_BQ * DP;     /* (DP, 33): a tile of 32 queries */
    float *dOt = Qt + DP * ATT_LD;    /* (DP, 33) */
    float *Ls = dOt + DP * ATT_LD;    /* (32) their log-sum-exps */
    float *Ds = Ls + ATT_BK;          /* (32) their δ */
    float *Ps = Ds + ATT_BK;          /* (WARPS, ROWS, 32): P */
    float *Gs = Ps + ATT_BQ * ATT_BK; /* (WARPS, ROWS, 32): dS */
    const int T_ = s.T, D = s.D, H = s.H, group = s.H / s.KV;
    const int kvh = blockIdx.y, b = blockIdx.z;
    const int k0 = blockIdx.x * ATT_BQ, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t base = (int64_t)b * T_;
    const int HD = H * D;
    float *P = Ps + w * ATT_ROWS * ATT_BK, *G = Gs + w * ATT_ROWS * ATT_BK;

    load_rows(Ks, k, base, ldk, kvh * D, k0, ATT_BQ, T_, D, DP, s.scale);
    load_rows(Vs, v, base, ldv, kvh * D, k0, ATT_BQ, T_, D, DP, 1.0f);
    float accK[ATT_ROWS][DPL], accV[ATT_ROWS][DPL];
#pragma unroll
    for (int i = 0; i < ATT_ROWS; i++)
#pragma unroll
        for (int c = 0; c < DPL; c++) accK[i][c] = accV[i][c] = 0;
    /* Queries that see any of keys [k0, k1): from k0 on, and with a window
     * only up to k1 − 1 + window − 1. */
    int k1 = min(T_, k0 + ATT_BQ);
    int qend = s.window > 0 ? min(T_, k1 - 1 + s.window) : T_;
    int qt0 = k0 / ATT_BK, qt1 = (qend - 1) / ATT_BK;
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        /* ALiBi: the biases of the warp's keys, for every query */
        const float slope = alibi_slope(s, h);
        float bias[ATT_ROWS];
#pragma unroll
        for (int i = 0; i < ATT_ROWS; i++) bias[i] = alibi_bias(slope, k0 + w * ATT_ROWS + i);
        for (int qt = qt0; qt <= qt1; qt++) {
            int qb = qt * ATT_BK;
            __syncthreads();
            load_rows_t(Qt, q, base, ldq, h * D, qb, ATT_BK, T_, D, DP);
            load_rows_t(dOt, dout, base, HD, h * D, qb, ATT_BK, T_, D, DP);
            if (threadIdx.x < ATT_BK) {
                int qi = qb + threadIdx.x;
                int64_t r = ((int64_t)b * H + h) * T_ + qi;
                Ls[threadIdx.x] = qi < T_ ? lse[r] : 0.0f;
                Ds[threadIdx.x] = qi < T_ ? delta[r] : 0.0f;
            }
            __syncthreads();
            float sc[ATT_ROWS], dp[ATT_ROWS];
#pragma unroll
            for (int i = 0; i < ATT_ROWS; i++) sc[i] = dp[i] = 0;
            for (int d = 0; d < DP; d += 4) {
                float a0 = Qt[(d + 0) * ATT_LD + lane], a1 = Qt[(d + 1) * ATT_LD + lane];
                float a2 = Qt[(d + 2) * ATT_LD + lane], a3 = Qt[(d + 3) * ATT_LD + lane];
                float g0 = dOt[(d + 0) * ATT_LD + lane], g1 = dOt[(d + 1) * ATT_LD + lane];
                float g2 = dOt[(d + 2) * ATT_LD + lane], g3 = dOt[(d + 3) * ATT_LD + lane];
#pragma unroll
                for (int i = 0; i < ATT_ROWS; i++) {
                    float4 kv = *(const float4 *)&Ks[(w * ATT_ROWS + i) * DP + d];
                    float4 vv = *(const float4 *)&Vs[(w * ATT_ROWS + i) * DP + d];
                    sc[i] += kv.x * a0 + kv.y * a1 + kv.z * a2 + kv.w * a3;
                    dp[i] += vv.x * g0 + vv.y * g1 + vv.z * g2 + vv.w * g3;
                }
            }
            const int qi = qb + lane;
            const float Lq = Ls[lane], Dq = Ds[lane];
#pragma unroll
            for (int i = 0; i < ATT_ROWS; i++) {
                int kj = k0 + w * ATT_ROWS + i;
                float y = cap_score(alibi_add(sc[i], bias[i]), s.softcap);
                float p = visible(qi, kj, T_, s.window) ? expf(y - Lq) : 0.0f;
                P[i * ATT_BK + lane] = p;
                G[i * ATT_BK + lane] = p * (dp[i] - Dq) * cap_grad(y, s.softcap);
            }
            __syncwarp();
            for (int jj = 0; jj < ATT_BK; jj += 4) {
                float qq[DPL][4], gg[DPL][4];
#pragma unroll
                for (int c = 0; c < DPL; c++) {
                    int d = lane + 32 * c;
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        qq[c][u] = d < DP ? Qt[d * ATT_LD + jj + u] : 0.0f;
                        gg[c][u] = d < DP ? dOt[d * ATT_LD + jj + u] : 0.0f;
                    }
                }
#pragma unroll
                for (int i = 0; i < ATT_ROWS; i++) {
                    float4 p4 = *(const float4 *)&P[i * ATT_BK + jj];
                    float4 g4 = *(const float4 *)&G[i * ATT_BK + jj];
#pragma unroll
                    for (int c = 0; c < DPL; c++) {
                        accV[i][c] +=
                            p4.x * gg[c][0] + p4.y * gg[c][1] + p4.z * gg[c][2] + p4.w * gg[c][3];
                        accK[i][c] +=
                            g4.x * qq[c][0] + g4.y * qq[c][1] + g4.z * qq[c][2] + g4.w * qq[c][3];
                    }
                }
            }
            __syncwarp();
        }
    }
#pragma unroll
    for (int i = 0; i < ATT_ROWS; i++) {
        int kj = k0 + w * ATT_ROWS + i;
        if (kj >= T_) continue;
#pragma unroll
        for (int c = 0; c < DPL; c++) {
            int d = lane + 32 * c;
            if (d >= D) continue;
            stf(dk, (base + kj) * ldk + kvh * D + d, accK[i][c] * s.scale);
            stf(dv, (base + kj) * ldv + kvh * D + d, accV[i][c]);
        }
    }
}

/* ---- launchers ---------------------------------------------------------------------------- */

static int att_dp(int D) {
    return (D + 3) / 4 * 4;
}

/* The SIMT kernels' dynamic shared memory, bytes: forward, dQ, dK|dV. */
static size_t att_smem_fwd(int DP) {
    return sizeof(float) *
           ((size_t)ATT_BQ * DP + 2 * (size_t)DP * ATT_LD + (size_t)ATT_WARPS * ATT_ROWS * ATT_BK);
}
static size_t att_smem_dq(int DP) {
    return sizeof(float) * (2 * (size_t)ATT_BQ * DP + 2 * (size_t)DP * ATT_LD +
                            (size_t)ATT_WARPS * ATT_ROWS * ATT_BK);
}
static size_t att_smem_dkv(int DP) {
    return sizeof(float) * (2 * (size_t)ATT_BQ * DP + 2 * (size_t)DP * ATT_LD + 2 * (size_t)ATT_BK +
                            2 * (size_t)ATT_BQ * ATT_BK);
}

extern "C" size_t gpu_attention_smem(int D) {
    int DP = att_dp(D);
    size_t a = att_smem_fwd(DP), b = att_smem_dq(DP), c = att_smem_dkv(DP);
    return a > b ? (a > c ? a : c) : (b > c ? b : c);
}

/* The SIMT kernels' dimensions per lane: 2 up to 64, 4 up to 128, 8 up to 256
 * (Gemma's head_dim). */
static int att_dpl(int D) {
    int DP = att_dp(D);
    return DP <= 64 ? 2 : DP <= 128 ? 4 : 8;
}

static cudaError_t att_check(const gpu_attn_shape *s) {
    if (s->D < 2 || s->D > GPU_ATTN_MAX_D || s->KV < 1 || s->H % s->KV != 0 || s->T < 1 ||
        s->B < 1 || s->H > 65535 || s->B > 65535 || s->window < 0 || !(s->softcap >= 0))
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

/* Can the tensor-core kernels take this call? bf16, a head dim they are
 * built for, 16-byte aligned rows. */
static bool att_mma_fits(const gpu_attn_shape *s, gpu_dtype t, const void *const *ptrs, int n_ptrs,
                         const int *lds, int n_lds) {
    if (t != GPU_BF16 || (s->D != 32 && s->D != 64 && s->D != 128)) return false;
    for (int i = 0; i < n_ptrs; i++)
        if ((uintptr_t)ptrs[i] % 16 != 0) return false;
    for (int i = 0; i < n_lds; i++)
        if (lds[i] % 8 != 0) return false;
    return true;
}

/* SIMT, tensor cores, or an error for a forced choice that does not fit. */
static cudaError_t att_pick(const gpu_attn_shape *s, bool fits, bool *mma) {
    *mma = s->impl == GPU_ATTN_MMA || (s->impl == GPU_ATTN_AUTO && fits);
    return *mma && !fits ? cudaErrorInvalidValue : cudaSuccess;
}

/* Raises the kernel's dynamic shared-memory limit when it needs more than
 * the default 48 KB, then launches. */
template <typename T, int DPL>
static cudaError_t att_forward(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                               int ldk, const void *v, int ldv, void *out, float *lse,
                               cudaStream_t stream) {
    int DP = att_dp(s->D);
    size_t smem = att_smem_fwd(DP);
    dim3 grid((s->T + ATT_BQ - 1) / ATT_BQ, s->H, s->B);
    return gpu_launch(attn_fwd_kernel<T, DPL>, grid, ATT_THREADS, smem, stream, *s, DP,
                      (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv, (T *)out, lse);
}

extern "C" cudaError_t gpu_attention_forward(const gpu_attn_shape *s, const void *q, int ldq,
                                             const void *k, int ldk, const void *v, int ldv,
                                             void *out, float *lse, gpu_dtype t,
                                             cudaStream_t stream) {
    cudaError_t e = att_check(s);
    if (e != cudaSuccess) return e;
    const void *ptrs[] = {q, k, v, out};
    const int lds[] = {ldq, ldk, ldv};
    bool mma;
    e = att_pick(s, att_mma_fits(s, t, ptrs, 4, lds, 3), &mma);
    if (e != cudaSuccess) return e;
    if (mma) return gpu_attention_forward_mma(s, q, ldq, k, ldk, v, ldv, out, lse, stream);
    int dpl = att_dpl(s->D);
    if (t == GPU_BF16)
        return dpl == 2   ? att_forward<bf16, 2>(s, q, ldq, k, ldk, v, ldv, out, lse, stream)
               : dpl == 4 ? att_forward<bf16, 4>(s, q, ldq, k, ldk, v, ldv, out, lse, stream)
                          : att_forward<bf16, 8>(s, q, ldq, k, ldk, v, ldv, out, lse, stream);
    return dpl == 2   ? att_forward<float, 2>(s, q, ldq, k, ldk, v, ldv, out, lse, stream)
           : dpl == 4 ? att_forward<float, 4>(s, q, ldq, k, ldk, v, ldv, out, lse, stream)
                      : att_forward<float, 8>(s, q, ldq, k, ldk, v, ldv, out, lse, stream);
}

/* δ = rowsum(dO ⊙ O), for either implementation. */
template <typename T>
static cudaError_t att_delta(const gpu_attn_shape *s, const void *out, const void *dout,
                             float *delta, cudaStream_t stream) {
    int64_t rows = (int64_t)s->B * s->T * s->H;
    attn_delta_kernel<T>
        <<<(unsigned)((rows + ATT_WARPS - 1) / ATT_WARPS), ATT_THREADS, 0, stream>>>(
            *s, (const T *)out, (const T *)dout, delta);
    return cudaGetLastError();
}

template <typename T, int DPL>
static cudaError_t att_backward(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                                int ldk, const void *v, int ldv, const void *dout, const float *lse,
                                const float *delta, void *dq, void *dk, void *dv,
                                cudaStream_t stream) {
    int DP = att_dp(s->D);
    size_t smem_q = att_smem_dq(DP);
    dim3 grid_q((s->T + ATT_BQ - 1) / ATT_BQ, s->H, s->B);
    cudaError_t e = gpu_launch(attn_dq_kernel<T, DPL>, grid_q, ATT_THREADS, smem_q, stream, *s, DP,
                               (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv,
                               (const T *)dout, lse, delta, (T *)dq);
    if (e != cudaSuccess) return e;
    size_t smem_kv = att_smem_dkv(DP);
    dim3 grid_kv((s->T + ATT_BQ - 1) / ATT_BQ, s->KV, s->B);
    return gpu_launch(attn_dkv_kernel<T, DPL>, grid_kv, ATT_THREADS, smem_kv, stream, *s, DP,
                      (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv, (const T *)dout, lse,
                      delta, (T *)dk, (T *)dv);
}

extern "C" cudaError_t gpu_attention_backward(const gpu_attn_shape *s, const void *q, int ldq,
                                              const void *k, int ldk, const void *v, int ldv,
                                              const void *out, const void *dout, const float *lse,
                                              float *delta, void *dq, void *dk, void *dv,
                                              gpu_dtype t, cudaStream_t stream) {
    cudaError_t e = att_check(s);
    if (e != cudaSuccess) return e;
    const void *ptrs[] = {q, k, v, out, dout, dq, dk, dv};
    const int lds[] = {ldq, ldk, ldv};
    bool mma;
    e = att_pick(s, att_mma_fits(s, t, ptrs, 8, lds, 3), &mma);
    if (e != cudaSuccess) return e;
    e = t == GPU_BF16 ? att_delta<bf16>(s, out, dout, delta, stream)
                      : att_delta<float>(s, out, dout, delta, stream);
    if (e != cudaSuccess) return e;
    if (mma)
        return gpu_attention_backward_mma(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq, dk, dv,
                                          stream);
    int dpl = att_dpl(s->D);
    if (t == GPU_BF16)
        return dpl == 2 ? att_backward<bf16, 2>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq, dk,
                                                dv, stream)
               : dpl == 4 ? att_backward<bf16, 4>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq,
                                                  dk, dv, stream)
                          : att_backward<bf16, 8>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq,
                                                  dk, dv, stream);
    return dpl == 2   ? att_backward<float, 2>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq, dk,
                                             dv, stream)
           : dpl == 4 ? att_backward<float, 4>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq, dk,
                                               dv, stream)
                      : att_backward<float, 8>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq, dk,
                                               dv, stream);
}
