/* gpu_attention_decode.cu — attention of new query rows against a key/value
 * cache (generation), the decode half of the CUDA attention; the training
 * kernels (forward, backward, tensor cores) are gpu_attention.cu's. The
 * masks, soft-capping and ALiBi are gpu_device.cuh's, shared with them, so
 * both compute the same scores (checked by test_gpu_kernels against the CPU). */
#include "gpu/gpu_device.cuh"

#include <math.h>

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
    const float slope = alibi_slope(s, h);
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
            x = cap_score(alibi_add(dot, alibi_bias(slope, j)),
                          s.softcap); /* j: the key's position */
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
