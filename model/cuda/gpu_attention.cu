/* gpu_attention.cu — causal softmax attention with grouped-query heads,
 * flash-style (FlashAttention, Dao et al. 2022; its backward as in
 * FlashAttention-2, Dao 2023): tiles of keys and values pass through shared
 * memory, each query row keeps a running max and sum (online softmax), and
 * no (T, T) matrix is ever stored. Forward saves each row's log-sum-exp;
 * backward recomputes P = exp(S − lse) tile by tile, with
 *   δ_i = dO_i · O_i,  dP = dO Vᵀ,  dS = P ⊙ (dP − δ),
 *   dQ = scale · dS K,  dK = scale · dSᵀ Q,  dV = Pᵀ dO,
 * the formulas of model/cpu/attention.c. With soft-capping (s.softcap) the
 * scores are cap · tanh(S / cap) before the mask, and dS is multiplied by
 * 1 − tanh².
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
 * Why one file of over 900 lines: the forward, the two backward kernels and
 * the decode kernel are instantiated from the same device templates (tile
 * loads, the soft-capped and windowed score, the online-softmax update, the
 * shared-memory layout that gpu_attention_smem sizes); split, those would
 * become a header of device code that every part must include identically. */
#include "model/cuda/gpu_device.cuh"

#include <math.h>

#define ATT_BQ 64 /* query rows per block (forward, dQ) */
#define ATT_BK 32 /* keys per tile: one per lane */
#define ATT_WARPS 8
#define ATT_ROWS 8 /* rows per warp */
#define ATT_LD 33  /* row stride of the transposed tiles */
#define ATT_THREADS (32 * ATT_WARPS)

static_assert(ATT_BQ == ATT_WARPS * ATT_ROWS, "query tile = warps x rows");

__device__ __forceinline__ int first_key(int i, int window) {
    return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

__device__ __forceinline__ bool visible(int i, int j, int T, int window) {
    return i < T && j <= i && (window == 0 || j > i - window);
}

/* Soft-capping of a scaled score (Gemma 2; model/cpu/softcap.c): cap ·
 * tanh(x / cap), or x when cap is 0. */
__device__ __forceinline__ float cap_score(float x, float cap) {
    return cap > 0 ? tanhf(x / cap) * cap : x;
}

/* d cap_score / dx at the capped value y: 1 − (y / cap)², or 1. */
__device__ __forceinline__ float cap_grad(float y, float cap) {
    float t = cap > 0 ? y / cap : 0.0f;
    return 1.0f - t * t;
}

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
#pragma unroll
        for (int i = 0; i < ATT_ROWS; i++) {
            int qi = q0 + w * ATT_ROWS + i;
            float x = visible(qi, j, T_, s.window) ? cap_score(sc[i], s.softcap) : -INFINITY;
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
#pragma unroll
        for (int i = 0; i < ATT_ROWS; i++) {
            int qi = q0 + w * ATT_ROWS + i;
            float y = cap_score(sc[i], s.softcap);
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
                float y = cap_score(sc[i], s.softcap);
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

/* ---- tensor cores: bf16 mma.sync, FlashAttention-2's structure ------------------------
 *
 * PTX mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA, "Matrix
 * Fragments for mma.m16n8k16"): with g = lane / 4 and t = lane % 4, a thread
 * holds of A (16 × 16, row-major) a0 = (g, 2t…2t+1), a1 = (g+8, 2t…), a2 =
 * (g, 2t+8…), a3 = (g+8, 2t+8…); of B (16 × 8, k × n) b0 = (2t…2t+1, g),
 * b1 = (2t+8…, g); of C and D (16 × 8, fp32) c0, c1 = (g, 2t…2t+1) and
 * c2, c3 = (g+8, 2t…). Pairs are two bf16 in one 32-bit register, the lower
 * index in the lower half. An accumulator chunk of S (16 rows × 8 keys) is
 * thus, pair by pair, a piece of the A fragment of P for the next product:
 * P never leaves registers.
 *
 * Each warp owns 16 rows (queries, or keys in the dK/dV kernel); a row's
 * values sit in the 4 threads of one group (lanes 4g … 4g+3), so row
 * reductions are two shuffles. Tiles are bf16 in shared memory, row-major
 * (for operands read along the head dimension) or transposed (read along
 * the sequence), rows padded by 8 elements so that the 32 lanes' 32-bit
 * reads fall in 32 different banks. */

#define MMA_ROWS 64     /* query rows per block (forward, dQ), keys per block (dK/dV) */
#define MMA_KT 64       /* keys per tile (forward, dQ) */
#define MMA_QT 32       /* queries per tile (dK/dV) */
#define MMA_THREADS 128 /* 4 warps of 16 rows */

__device__ __forceinline__ void mma_bf16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Two bf16 (lo at the lower index) as one register. */
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    uint32_t l = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    uint32_t h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
    return l | (h << 16);
}

__device__ __forceinline__ uint32_t ld2(const bf16 *p) {
    return *(const uint32_t *)p;
}

/* Rows [r0, r0 + n) of one head of x (columns col … col + D) into a
 * row-major tile of row stride ld_s, 8 elements (16 bytes) per load; zeros
 * past T. Transposed (dst[d · ld_s + r]) when transpose. */
template <int D>
__device__ void mma_load(bf16 *dst, int ld_s, const bf16 *x, int64_t row_base, int ld, int col,
                         int r0, int n, int T_, bool transpose) {
    constexpr int V = D / 8;
    for (int e = threadIdx.x; e < n * V; e += MMA_THREADS) {
        int r = e / V, c = (e % V) * 8, t = r0 + r;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (t < T_) val = *(const uint4 *)(x + (row_base + t) * ld + col + c);
        if (!transpose) {
            *(uint4 *)(dst + r * ld_s + c) = val;
        } else {
            const bf16 *pv = (const bf16 *)&val;
#pragma unroll
            for (int u = 0; u < 8; u++) dst[(c + u) * ld_s + r] = pv[u];
        }
    }
}

/* A fragment of rows r … r+15, columns k … k+15 of a row-major tile. */
__device__ __forceinline__ void frag_a(uint32_t a[4], const bf16 *tile, int ld_s, int r, int k) {
    const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    const bf16 *p0 = tile + (r + g) * ld_s + k + 2 * t, *p1 = p0 + 8 * ld_s;
    a[0] = ld2(p0);
    a[1] = ld2(p1);
    a[2] = ld2(p0 + 8);
    a[3] = ld2(p1 + 8);
}

/* B fragment (k … k+15) × (n … n+7) read from a tile holding B transposed,
 * i.e. with row n + g holding column n + g of B along k. */
__device__ __forceinline__ void frag_b(uint32_t b[2], const bf16 *tile, int ld_s, int n, int k) {
    const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    const bf16 *p = tile + (n + g) * ld_s + k + 2 * t;
    b[0] = ld2(p);
    b[1] = ld2(p + 8);
}

/* A fragment from accumulator chunks c0 (columns k … k+7) and c1 (k+8 …). */
__device__ __forceinline__ void frag_from_acc(uint32_t a[4], const float c0[4], const float c1[4]) {
    a[0] = pack2(c0[0], c0[1]);
    a[1] = pack2(c0[2], c0[3]);
    a[2] = pack2(c1[0], c1[1]);
    a[3] = pack2(c1[2], c1[3]);
}

/* Max and sum over the 4 threads of a row group. */
__device__ __forceinline__ float group_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float group_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <int D>
__global__ void __launch_bounds__(MMA_THREADS)
    attn_fwd_mma(gpu_attn_shape s, const bf16 *q, int ldq, const bf16 *k, int ldk, const bf16 *v,
                 int ldv, bf16 *out, float *lse) {
    constexpr int LS = D + 8, LT = MMA_KT + 8;
    extern __shared__ float4 smem4[];
    bf16 *Qs = (bf16 *)smem4;      /* (64 queries, LS) */
    bf16 *Ks = Qs + MMA_ROWS * LS; /* (64 keys, LS) */
    bf16 *Vt = Ks + MMA_KT * LS;   /* (D, LT): V transposed */
    const int T_ = s.T, H = s.H, group = s.H / s.KV;
    const int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / group;
    const int q0 = tile * MMA_ROWS, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int64_t base = (int64_t)b * T_;
    const int qi0 = q0 + w * 16 + g, qi1 = qi0 + 8;

    mma_load<D>(Qs, LS, q, base, ldq, h * D, q0, MMA_ROWS, T_, false);
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) frag_a(qf[kk], Qs, LS, w * 16, kk * 16);
    float o[D / 8][4];
#pragma unroll
    for (int c = 0; c < D / 8; c++) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0, l1 = 0;
    int last = min(T_, q0 + MMA_ROWS) - 1;
    int kt0 = first_key(q0, s.window) / MMA_KT, kt1 = last / MMA_KT;
    for (int kt = kt0; kt <= kt1; kt++) {
        __syncthreads();
        mma_load<D>(Ks, LS, k, base, ldk, kvh * D, kt * MMA_KT, MMA_KT, T_, false);
        mma_load<D>(Vt, LT, v, base, ldv, kvh * D, kt * MMA_KT, MMA_KT, T_, true);
        __syncthreads();
        float sc[MMA_KT / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; n++) {
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t bf[2];
                frag_b(bf, Ks, LS, n * 8, kk * 16);
                mma_bf16(sc[n], qf[kk], bf);
            }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int j = kt * MMA_KT + n * 8 + 2 * t + e;
                sc[n][e] = visible(qi0, j, T_, s.window) ? cap_score(sc[n][e] * s.scale, s.softcap)
                                                         : -INFINITY;
                sc[n][2 + e] = visible(qi1, j, T_, s.window)
                                   ? cap_score(sc[n][2 + e] * s.scale, s.softcap)
                                   : -INFINITY;
                mx0 = fmaxf(mx0, sc[n][e]);
                mx1 = fmaxf(mx1, sc[n][2 + e]);
            }
        float mn0 = fmaxf(m0, group_max(mx0)), mn1 = fmaxf(m1, group_max(mx1));
        float corr0 = mn0 == -INFINITY ? 1.0f : expf(m0 - mn0);
        float corr1 = mn1 == -INFINITY ? 1.0f : expf(m1 - mn1);
        float sum0 = 0, sum1 = 0;
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                sc[n][e] = mn0 == -INFINITY ? 0.0f : expf(sc[n][e] - mn0);
                sc[n][2 + e] = mn1 == -INFINITY ? 0.0f : expf(sc[n][2 + e] - mn1);
                sum0 += sc[n][e];
                sum1 += sc[n][2 + e];
            }
        l0 = l0 * corr0 + group_sum(sum0);
        l1 = l1 * corr1 + group_sum(sum1);
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int c = 0; c < D / 8; c++) {
            o[c][0] *= corr0;
            o[c][1] *= corr0;
            o[c][2] *= corr1;
            o[c][3] *= corr1;
        }
#pragma unroll
        for (int kk = 0; kk < MMA_KT / 16; kk++) {
            uint32_t pa[4];
            frag_from_acc(pa, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
            for (int c = 0; c < D / 8; c++) {
                uint32_t bf[2];
                frag_b(bf, Vt, LT, c * 8, kk * 16);
                mma_bf16(o[c], pa, bf);
            }
        }
    }
    const int HD = H * D;
    float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
    for (int c = 0; c < D / 8; c++) {
        int d = h * D + c * 8 + 2 * t;
        if (qi0 < T_)
            *(uint32_t *)(out + (base + qi0) * HD + d) = pack2(o[c][0] * inv0, o[c][1] * inv0);
        if (qi1 < T_)
            *(uint32_t *)(out + (base + qi1) * HD + d) = pack2(o[c][2] * inv1, o[c][3] * inv1);
    }
    if (t == 0) {
        if (qi0 < T_) lse[((int64_t)b * H + h) * T_ + qi0] = m0 + logf(l0);
        if (qi1 < T_) lse[((int64_t)b * H + h) * T_ + qi1] = m1 + logf(l1);
    }
}

template <int D>
__global__ void __launch_bounds__(MMA_THREADS)
    attn_dq_mma(gpu_attn_shape s, const bf16 *q, int ldq, const bf16 *k, int ldk, const bf16 *v,
                int ldv, const bf16 *dout, const float *lse, const float *delta, bf16 *dq) {
    constexpr int LS = D + 8, LT = MMA_KT + 8;
    extern __shared__ float4 smem4[];
    bf16 *Qs = (bf16 *)smem4;       /* (64 queries, LS) */
    bf16 *dOs = Qs + MMA_ROWS * LS; /* (64 queries, LS) */
    bf16 *Ks = dOs + MMA_ROWS * LS; /* (64 keys, LS) */
    bf16 *Vs = Ks + MMA_KT * LS;    /* (64 keys, LS) */
    bf16 *Kt = Vs + MMA_KT * LS;    /* (D, LT): K transposed */
    const int T_ = s.T, H = s.H, group = s.H / s.KV, HD = H * D;
    const int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / group;
    const int q0 = tile * MMA_ROWS, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int64_t base = (int64_t)b * T_;
    const int qi0 = q0 + w * 16 + g, qi1 = qi0 + 8;
    const int64_t r0 = ((int64_t)b * H + h) * T_;
    const float L0 = qi0 < T_ ? lse[r0 + qi0] : 0.0f, L1 = qi1 < T_ ? lse[r0 + qi1] : 0.0f;
    const float D0 = qi0 < T_ ? delta[r0 + qi0] : 0.0f, D1 = qi1 < T_ ? delta[r0 + qi1] : 0.0f;

    mma_load<D>(Qs, LS, q, base, ldq, h * D, q0, MMA_ROWS, T_, false);
    mma_load<D>(dOs, LS, dout, base, HD, h * D, q0, MMA_ROWS, T_, false);
    float acc[D / 8][4];
#pragma unroll
    for (int c = 0; c < D / 8; c++) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0;
    int last = min(T_, q0 + MMA_ROWS) - 1;
    int kt0 = first_key(q0, s.window) / MMA_KT, kt1 = last / MMA_KT;
    for (int kt = kt0; kt <= kt1; kt++) {
        __syncthreads();
        mma_load<D>(Ks, LS, k, base, ldk, kvh * D, kt * MMA_KT, MMA_KT, T_, false);
        mma_load<D>(Vs, LS, v, base, ldv, kvh * D, kt * MMA_KT, MMA_KT, T_, false);
        mma_load<D>(Kt, LT, k, base, ldk, kvh * D, kt * MMA_KT, MMA_KT, T_, true);
        __syncthreads();
        float sc[MMA_KT / 8][4], dp[MMA_KT / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; n++) {
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0;
            dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qa[4], ga[4];
            frag_a(qa, Qs, LS, w * 16, kk * 16);
            frag_a(ga, dOs, LS, w * 16, kk * 16);
#pragma unroll
            for (int n = 0; n < MMA_KT / 8; n++) {
                uint32_t bk[2], bv[2];
                frag_b(bk, Ks, LS, n * 8, kk * 16);
                frag_b(bv, Vs, LS, n * 8, kk * 16);
                mma_bf16(sc[n], qa, bk);
                mma_bf16(dp[n], ga, bv);
            }
        }
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int j = kt * MMA_KT + n * 8 + 2 * t + e;
                float y0 = cap_score(sc[n][e] * s.scale, s.softcap);
                float y1 = cap_score(sc[n][2 + e] * s.scale, s.softcap);
                float p0 = visible(qi0, j, T_, s.window) ? expf(y0 - L0) : 0.0f;
                float p1 = visible(qi1, j, T_, s.window) ? expf(y1 - L1) : 0.0f;
                sc[n][e] = p0 * (dp[n][e] - D0) * cap_grad(y0, s.softcap); /* dS */
                sc[n][2 + e] = p1 * (dp[n][2 + e] - D1) * cap_grad(y1, s.softcap);
            }
#pragma unroll
        for (int kk = 0; kk < MMA_KT / 16; kk++) {
            uint32_t da[4];
            frag_from_acc(da, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
            for (int c = 0; c < D / 8; c++) {
                uint32_t bf[2];
                frag_b(bf, Kt, LT, c * 8, kk * 16);
                mma_bf16(acc[c], da, bf);
            }
        }
    }
#pragma unroll
    for (int c = 0; c < D / 8; c++) {
        int d = h * D + c * 8 + 2 * t;
        if (qi0 < T_)
            *(uint32_t *)(dq + (base + qi0) * ldq + d) =
                pack2(acc[c][0] * s.scale, acc[c][1] * s.scale);
        if (qi1 < T_)
            *(uint32_t *)(dq + (base + qi1) * ldq + d) =
                pack2(acc[c][2] * s.scale, acc[c][3] * s.scale);
    }
}

template <int D>
__global__ void __launch_bounds__(MMA_THREADS)
    attn_dkv_mma(gpu_attn_shape s, const bf16 *q, int ldq, const bf16 *k, int ldk, const bf16 *v,
                 int ldv, const bf16 *dout, const float *lse, const float *delta, bf16 *dk,
                 bf16 *dv) {
    constexpr int LS = D + 8, LT = MMA_QT + 8;
    extern __shared__ float4 smem4[];
    bf16 *Ks = (bf16 *)smem4;            /* (64 keys, LS) */
    bf16 *Vs = Ks + MMA_ROWS * LS;       /* (64 keys, LS) */
    bf16 *Qs = Vs + MMA_ROWS * LS;       /* (32 queries, LS) */
    bf16 *dOs = Qs + MMA_QT * LS;        /* (32 queries, LS) */
    bf16 *Qt = dOs + MMA_QT * LS;        /* (D, LT): Q transposed */
    bf16 *dOt = Qt + D * LT;             /* (D, LT): dO transposed */
    float *Ls = (float *)(dOt + D * LT); /* (32) */
    float *Ds = Ls + MMA_QT;             /* (32) */
    const int T_ = s.T, H = s.H, group = s.H / s.KV, HD = H * D;
    const int kvh = blockIdx.y, b = blockIdx.z;
    const int k0 = blockIdx.x * MMA_ROWS, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int64_t base = (int64_t)b * T_;
    const int kj0 = k0 + w * 16 + g, kj1 = kj0 + 8;

    mma_load<D>(Ks, LS, k, base, ldk, kvh * D, k0, MMA_ROWS, T_, false);
    mma_load<D>(Vs, LS, v, base, ldv, kvh * D, k0, MMA_ROWS, T_, false);
    float ak[D / 8][4], av[D / 8][4];
#pragma unroll
    for (int c = 0; c < D / 8; c++)
#pragma unroll
        for (int e = 0; e < 4; e++) ak[c][e] = av[c][e] = 0;
    int k1 = min(T_, k0 + MMA_ROWS);
    int qend = s.window > 0 ? min(T_, k1 - 1 + s.window) : T_;
    int qt0 = k0 / MMA_QT, qt1 = (qend - 1) / MMA_QT;
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const int64_t r0 = ((int64_t)b * H + h) * T_;
        for (int qt = qt0; qt <= qt1; qt++) {
            int qb = qt * MMA_QT;
            __syncthreads();
            mma_load<D>(Qs, LS, q, base, ldq, h * D, qb, MMA_QT, T_, false);
            mma_load<D>(dOs, LS, dout, base, HD, h * D, qb, MMA_QT, T_, false);
            mma_load<D>(Qt, LT, q, base, ldq, h * D, qb, MMA_QT, T_, true);
            mma_load<D>(dOt, LT, dout, base, HD, h * D, qb, MMA_QT, T_, true);
            if (threadIdx.x < MMA_QT) {
                int qi = qb + threadIdx.x;
                Ls[threadIdx.x] = qi < T_ ? lse[r0 + qi] : 0.0f;
                Ds[threadIdx.x] = qi < T_ ? delta[r0 + qi] : 0.0f;
            }
            __syncthreads();
            /* Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for the warp's 16 keys and the tile's 32 queries */
            float st[MMA_QT / 8][4], dpt[MMA_QT / 8][4];
#pragma unroll
            for (int n = 0; n < MMA_QT / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t ka[4], va[4];
                frag_a(ka, Ks, LS, w * 16, kk * 16);
                frag_a(va, Vs, LS, w * 16, kk * 16);
#pragma unroll
                for (int n = 0; n < MMA_QT / 8; n++) {
                    uint32_t bq[2], bg[2];
                    frag_b(bq, Qs, LS, n * 8, kk * 16);
                    frag_b(bg, dOs, LS, n * 8, kk * 16);
                    mma_bf16(st[n], ka, bq);
                    mma_bf16(dpt[n], va, bg);
                }
            }
#pragma unroll
            for (int n = 0; n < MMA_QT / 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int jq = n * 8 + 2 * t + e, qi = qb + jq;
                    float Lq = Ls[jq], Dq = Ds[jq];
                    float y0 = cap_score(st[n][e] * s.scale, s.softcap);
                    float y1 = cap_score(st[n][2 + e] * s.scale, s.softcap);
                    float p0 = visible(qi, kj0, T_, s.window) ? expf(y0 - Lq) : 0.0f;
                    float p1 = visible(qi, kj1, T_, s.window) ? expf(y1 - Lq) : 0.0f;
                    st[n][e] = p0; /* Pᵀ */
                    st[n][2 + e] = p1;
                    dpt[n][e] = p0 * (dpt[n][e] - Dq) * cap_grad(y0, s.softcap); /* dSᵀ */
                    dpt[n][2 + e] = p1 * (dpt[n][2 + e] - Dq) * cap_grad(y1, s.softcap);
                }
                /* dV += Pᵀ dO, dK += dSᵀ Q */
#pragma unroll
            for (int kk = 0; kk < MMA_QT / 16; kk++) {
                uint32_t pa[4], da[4];
                frag_from_acc(pa, st[2 * kk], st[2 * kk + 1]);
                frag_from_acc(da, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                for (int c = 0; c < D / 8; c++) {
                    uint32_t bg[2], bq[2];
                    frag_b(bg, dOt, LT, c * 8, kk * 16);
                    frag_b(bq, Qt, LT, c * 8, kk * 16);
                    mma_bf16(av[c], pa, bg);
                    mma_bf16(ak[c], da, bq);
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < D / 8; c++) {
        int d = kvh * D + c * 8 + 2 * t;
        if (kj0 < T_) {
            *(uint32_t *)(dk + (base + kj0) * ldk + d) =
                pack2(ak[c][0] * s.scale, ak[c][1] * s.scale);
            *(uint32_t *)(dv + (base + kj0) * ldv + d) = pack2(av[c][0], av[c][1]);
        }
        if (kj1 < T_) {
            *(uint32_t *)(dk + (base + kj1) * ldk + d) =
                pack2(ak[c][2] * s.scale, ak[c][3] * s.scale);
            *(uint32_t *)(dv + (base + kj1) * ldv + d) = pack2(av[c][2], av[c][3]);
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
template <typename K, typename... Args>
static cudaError_t att_launch(K kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream,
                              Args... args) {
    if (smem > 48 * 1024) {
        cudaError_t e =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    kernel<<<grid, threads, smem, stream>>>(args...);
    return cudaGetLastError();
}

template <typename T, int DPL>
static cudaError_t att_forward(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                               int ldk, const void *v, int ldv, void *out, float *lse,
                               cudaStream_t stream) {
    int DP = att_dp(s->D);
    size_t smem = att_smem_fwd(DP);
    dim3 grid((s->T + ATT_BQ - 1) / ATT_BQ, s->H, s->B);
    return att_launch(attn_fwd_kernel<T, DPL>, grid, ATT_THREADS, smem, stream, *s, DP,
                      (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv, (T *)out, lse);
}

template <int D>
static cudaError_t att_forward_mma(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                                   int ldk, const void *v, int ldv, void *out, float *lse,
                                   cudaStream_t stream) {
    size_t smem = sizeof(bf16) * (2 * (size_t)MMA_ROWS * (D + 8) + (size_t)D * (MMA_KT + 8));
    dim3 grid((s->T + MMA_ROWS - 1) / MMA_ROWS, s->H, s->B);
    return att_launch(attn_fwd_mma<D>, grid, MMA_THREADS, smem, stream, *s, (const bf16 *)q, ldq,
                      (const bf16 *)k, ldk, (const bf16 *)v, ldv, (bf16 *)out, lse);
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
    if (mma)
        return s->D == 32   ? att_forward_mma<32>(s, q, ldq, k, ldk, v, ldv, out, lse, stream)
               : s->D == 64 ? att_forward_mma<64>(s, q, ldq, k, ldk, v, ldv, out, lse, stream)
                            : att_forward_mma<128>(s, q, ldq, k, ldk, v, ldv, out, lse, stream);
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
    cudaError_t e = att_launch(attn_dq_kernel<T, DPL>, grid_q, ATT_THREADS, smem_q, stream, *s, DP,
                               (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv,
                               (const T *)dout, lse, delta, (T *)dq);
    if (e != cudaSuccess) return e;
    size_t smem_kv = att_smem_dkv(DP);
    dim3 grid_kv((s->T + ATT_BQ - 1) / ATT_BQ, s->KV, s->B);
    return att_launch(attn_dkv_kernel<T, DPL>, grid_kv, ATT_THREADS, smem_kv, stream, *s, DP,
                      (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv, (const T *)dout, lse,
                      delta, (T *)dk, (T *)dv);
}

template <int D>
static cudaError_t att_backward_mma(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                                    int ldk, const void *v, int ldv, const void *dout,
                                    const float *lse, const float *delta, void *dq, void *dk,
                                    void *dv, cudaStream_t stream) {
    size_t smem_q = sizeof(bf16) * (4 * (size_t)MMA_ROWS * (D + 8) + (size_t)D * (MMA_KT + 8));
    dim3 grid_q((s->T + MMA_ROWS - 1) / MMA_ROWS, s->H, s->B);
    cudaError_t e = att_launch(attn_dq_mma<D>, grid_q, MMA_THREADS, smem_q, stream, *s,
                               (const bf16 *)q, ldq, (const bf16 *)k, ldk, (const bf16 *)v, ldv,
                               (const bf16 *)dout, lse, delta, (bf16 *)dq);
    if (e != cudaSuccess) return e;
    size_t smem_kv = sizeof(bf16) * (2 * (size_t)MMA_ROWS * (D + 8) + 2 * (size_t)MMA_QT * (D + 8) +
                                     2 * (size_t)D * (MMA_QT + 8)) +
                     sizeof(float) * 2 * MMA_QT;
    dim3 grid_kv((s->T + MMA_ROWS - 1) / MMA_ROWS, s->KV, s->B);
    return att_launch(attn_dkv_mma<D>, grid_kv, MMA_THREADS, smem_kv, stream, *s, (const bf16 *)q,
                      ldq, (const bf16 *)k, ldk, (const bf16 *)v, ldv, (const bf16 *)dout, lse,
                      delta, (bf16 *)dk, (bf16 *)dv);
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
        return s->D == 32   ? att_backward_mma<32>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq,
                                                 dk, dv, stream)
               : s->D == 64 ? att_backward_mma<64>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq,
                                                   dk, dv, stream)
                            : att_backward_mma<128>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq,
                                                    dk, dv, stream);
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

/* ---- decode: new query rows against a key/value cache (generation) ------------------
 * One block per (new row, head): the row's scaled query sits in shared
 * memory; keys pass in chunks of DEC_THREADS, thread j scoring key j0 + j
 * (a dot product over D), then the chunk's probabilities go through shared
 * memory to the threads that own an output dimension (thread t owns
 * d = t + u·DEC_THREADS, u < DEC_DIMS: two dimensions each at Gemma's D of
 * 256), which accumulate Σ p_j v_j[d]. Online softmax across chunks, as in the forward
 * kernel. Generation feeds one row at a time, where a block per (row, head)
 * has nothing to tile; a prompt's prefill feeds many, each reading every key
 * before it, which is the forward's work without its tiling and cheap next to
 * the GEMMs for the prompt lengths generation sees. */
#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_DIMS ((GPU_ATTN_MAX_D + DEC_THREADS - 1) / DEC_THREADS) /* output dims per thread */

template <typename T>
__global__ void __launch_bounds__(DEC_THREADS)
    attn_decode_kernel(gpu_attn_shape s, int pos, const T *q, int ldq, const T *k, int ldk,
                       const T *v, int ldv, T *out) {
    __shared__ float qs[GPU_ATTN_MAX_D];
    __shared__ float ps[DEC_THREADS];
    __shared__ float red[DEC_WARPS];
    const int i = blockIdx.x, h = blockIdx.y, D = s.D, kvh = h / (s.H / s.KV);
    const int tid = threadIdx.x, lane = tid % 32, w = tid / 32;
    const int qi = pos + i; /* the row's absolute position */
    for (int d = tid; d < D; d += DEC_THREADS)
        qs[d] = ldf(q, (int64_t)i * ldq + h * D + d) * s.scale;
    __syncthreads();
    float m = -INFINITY, l = 0, acc[DEC_DIMS]; /* acc[u]: output dimension tid + u·DEC_THREADS */
#pragma unroll
    for (int u = 0; u < DEC_DIMS; u++) acc[u] = 0;
    /* j0 <= qi for the whole block: every chunk has at least one visible key
     * (key j0), so the block's max is finite. */
    for (int j0 = first_key(qi, s.window); j0 <= qi; j0 += DEC_THREADS) {
        const int j = j0 + tid;
        float x = -INFINITY;
        if (j <= qi) {
            const int64_t kb = (int64_t)j * ldk + (int64_t)kvh * D;
            float dot = 0;
            for (int d = 0; d < D; d++) dot += qs[d] * ldf(k, kb + d);
            x = cap_score(dot, s.softcap);
        }
        float bm = warp_max(x);
        if (lane == 0) red[w] = bm;
        __syncthreads();
        bm = red[0];
#pragma unroll
        for (int u = 1; u < DEC_WARPS; u++) bm = fmaxf(bm, red[u]);
        __syncthreads(); /* red is written again below */
        const float mn = fmaxf(m, bm);
        const float p = x == -INFINITY ? 0.0f : expf(x - mn);
        const float corr = m == -INFINITY ? 1.0f : expf(m - mn);
        ps[tid] = p;
        float bs = warp_sum(p);
        if (lane == 0) red[w] = bs;
        __syncthreads();
        bs = 0;
#pragma unroll
        for (int u = 0; u < DEC_WARPS; u++) bs += red[u];
        l = l * corr + bs;
        m = mn;
        const int cnt = min(DEC_THREADS, qi - j0 + 1);
#pragma unroll
        for (int u = 0; u < DEC_DIMS; u++) {
            const int d = tid + u * DEC_THREADS;
            if (d >= D) break;
            const int64_t vb = (int64_t)kvh * D + d;
            float a = 0;
            for (int t = 0; t < cnt; t++) a += ps[t] * ldf(v, (int64_t)(j0 + t) * ldv + vb);
            acc[u] = acc[u] * corr + a;
        }
        __syncthreads(); /* ps and red are rewritten by the next chunk */
    }
#pragma unroll
    for (int u = 0; u < DEC_DIMS; u++) {
        const int d = tid + u * DEC_THREADS;
        if (d < D) stf(out, (int64_t)i * s.H * D + (int64_t)h * D + d, acc[u] / l);
    }
}

extern "C" cudaError_t gpu_attention_decode(const gpu_attn_shape *s, int n, int pos, const void *q,
                                            int ldq, const void *k, int ldk, const void *v, int ldv,
                                            void *out, gpu_dtype t, cudaStream_t stream) {
    if (s->D < 1 || s->D > GPU_ATTN_MAX_D || s->KV < 1 || s->H % s->KV != 0 || s->H > 65535 ||
        s->B != 1 || s->window < 0 || !(s->softcap >= 0) || n < 1 || pos < 0)
        return cudaErrorInvalidValue;
    dim3 grid((unsigned)n, (unsigned)s->H);
    if (t == GPU_BF16)
        attn_decode_kernel<bf16><<<grid, DEC_THREADS, 0, stream>>>(
            *s, pos, (const bf16 *)q, ldq, (const bf16 *)k, ldk, (const bf16 *)v, ldv, (bf16 *)out);
    else
        attn_decode_kernel<float>
            <<<grid, DEC_THREADS, 0, stream>>>(*s, pos, (const float *)q, ldq, (const float *)k,
                                               ldk, (const float *)v, ldv, (float *)out);
    return cudaGetLastError();
}
