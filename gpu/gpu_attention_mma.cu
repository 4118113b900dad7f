/* gpu_attention_mma.cu — see gpu_attention_mma.cuh. */
#include "gpu/gpu_attention_mma.cuh"
#include "gpu/gpu_device.cuh"

#include <math.h>

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

/* A tile of scores in accumulator layout (NC chunks of 8 keys; chunk n,
 * element e and 2 + e: rows g and g + 8, key j0 + 8n + e with j0 the tile's
 * first key plus 2t) times the score scale, then, with ALiBi, slope · j
 * added (alibi_add). The condition is uniform over the block, so a model
 * without ALiBi pays nothing for it. */
template <int NC>
__device__ __forceinline__ void scale_scores(float sc[NC][4], const gpu_attn_shape &s, float slope,
                                             int j0) {
#pragma unroll
    for (int n = 0; n < NC; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) sc[n][e] *= s.scale;
    if (s.alibi) {
#pragma unroll
        for (int n = 0; n < NC; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = j0 + n * 8 + e;
                const float bias = alibi_bias(slope, j);
                sc[n][e] = alibi_add(sc[n][e], bias);
                sc[n][2 + e] = alibi_add(sc[n][2 + e], bias);
            }
    }
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
    const float slope = alibi_slope(s, h);

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
        scale_scores<MMA_KT / 8>(sc, s, slope, kt * MMA_KT + 2 * t);
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int j = kt * MMA_KT + n * 8 + 2 * t + e;
                sc[n][e] =
                    visible(qi0, j, T_, s.window) ? cap_score(sc[n][e], s.softcap) : -INFINITY;
                sc[n][2 + e] =
                    visible(qi1, j, T_, s.window) ? cap_score(sc[n][2 + e], s.softcap) : -INFINITY;
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
    const float slope = alibi_slope(s, h);

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
        scale_scores<MMA_KT / 8>(sc, s, slope, kt * MMA_KT + 2 * t);
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int j = kt * MMA_KT + n * 8 + 2 * t + e;
                float y0 = cap_score(sc[n][e], s.softcap);
                float y1 = cap_score(sc[n][2 + e], s.softcap);
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
        /* ALiBi: the biases of the thread's two keys, for every query */
        const float slope = alibi_slope(s, h);
        const float bias0 = alibi_bias(slope, kj0), bias1 = alibi_bias(slope, kj1);
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
            /* Sᵀ scaled; with ALiBi (uniform over the block) plus the keys' biases */
#pragma unroll
            for (int n = 0; n < MMA_QT / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[n][e] *= s.scale;
            if (s.alibi) {
#pragma unroll
                for (int n = 0; n < MMA_QT / 8; n++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        st[n][e] = alibi_add(st[n][e], bias0);
                        st[n][2 + e] = alibi_add(st[n][2 + e], bias1);
                    }
            }
#pragma unroll
            for (int n = 0; n < MMA_QT / 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int jq = n * 8 + 2 * t + e, qi = qb + jq;
                    float Lq = Ls[jq], Dq = Ds[jq];
                    float y0 = cap_score(st[n][e], s.softcap);
                    float y1 = cap_score(st[n][2 + e], s.softcap);
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

template <int D>
static cudaError_t forward_mma(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                               int ldk, const void *v, int ldv, void *out, float *lse,
                               cudaStream_t stream) {
    size_t smem = sizeof(bf16) * (2 * (size_t)MMA_ROWS * (D + 8) + (size_t)D * (MMA_KT + 8));
    dim3 grid((s->T + MMA_ROWS - 1) / MMA_ROWS, s->H, s->B);
    return gpu_launch(attn_fwd_mma<D>, grid, MMA_THREADS, smem, stream, *s, (const bf16 *)q, ldq,
                      (const bf16 *)k, ldk, (const bf16 *)v, ldv, (bf16 *)out, lse);
}

template <int D>
static cudaError_t backward_mma(const gpu_attn_shape *s, const void *q, int ldq, const void *k,
                                int ldk, const void *v, int ldv, const void *dout, const float *lse,
                                const float *delta, void *dq, void *dk, void *dv,
                                cudaStream_t stream) {
    size_t smem_q = sizeof(bf16) * (4 * (size_t)MMA_ROWS * (D + 8) + (size_t)D * (MMA_KT + 8));
    dim3 grid_q((s->T + MMA_ROWS - 1) / MMA_ROWS, s->H, s->B);
    cudaError_t e = gpu_launch(attn_dq_mma<D>, grid_q, MMA_THREADS, smem_q, stream, *s,
                               (const bf16 *)q, ldq, (const bf16 *)k, ldk, (const bf16 *)v, ldv,
                               (const bf16 *)dout, lse, delta, (bf16 *)dq);
    if (e != cudaSuccess) return e;
    size_t smem_kv = sizeof(bf16) * (2 * (size_t)MMA_ROWS * (D + 8) + 2 * (size_t)MMA_QT * (D + 8) +
                                     2 * (size_t)D * (MMA_QT + 8)) +
                     sizeof(float) * 2 * MMA_QT;
    dim3 grid_kv((s->T + MMA_ROWS - 1) / MMA_ROWS, s->KV, s->B);
    return gpu_launch(attn_dkv_mma<D>, grid_kv, MMA_THREADS, smem_kv, stream, *s, (const bf16 *)q,
                      ldq, (const bf16 *)k, ldk, (const bf16 *)v, ldv, (const bf16 *)dout, lse,
                      delta, (bf16 *)dk, (bf16 *)dv);
}

cudaError_t gpu_attention_forward_mma(const gpu_attn_shape *s, const void *q, int ldq,
                                      const void *k, int ldk, const void *v, int ldv, void *out,
                                      float *lse, cudaStream_t stream) {
    return s->D == 32   ? forward_mma<32>(s, q, ldq, k, ldk, v, ldv, out, lse, stream)
           : s->D == 64 ? forward_mma<64>(s, q, ldq, k, ldk, v, ldv, out, lse, stream)
                        : forward_mma<128>(s, q, ldq, k, ldk, v, ldv, out, lse, stream);
}

cudaError_t gpu_attention_backward_mma(const gpu_attn_shape *s, const void *q, int ldq,
                                       const void *k, int ldk, const void *v, int ldv,
                                       const void *dout, const float *lse, const float *delta,
                                       void *dq, void *dk, void *dv, cudaStream_t stream) {
    return s->D == 32
               ? backward_mma<32>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq, dk, dv, stream)
           : s->D == 64
               ? backward_mma<64>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq, dk, dv, stream)
               : backward_mma<128>(s, q, ldq, k, ldk, v, ldv, dout, lse, delta, dq, dk, dv, stream);
}
