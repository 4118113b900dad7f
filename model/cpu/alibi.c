/* alibi.c — ALiBi's per-head slopes (Press, Smith, Lewis 2022, "Train Short,
 * Test Long"), as transformers' modeling_bloom.py _get_alibi_slopes makes
 * them, and the head-interleaved q|k|v layout of BLOOM's query_key_value.
 *
 * Slopes: with P the largest power of two <= H, head h < P gets
 * base^(h + 1), base = 2^(−2^−(log2 P − 3)) = 2^(−8/P); when H is not a
 * power of two the remaining H − P heads take the odd powers 1, 3, 5, … of
 * extra = 2^(−4/P) (the slopes of 2P heads, every other one). transformers
 * computes in fp32: base and extra are rounded to fp32, then
 * torch.pow(base, k) in fp32. Here the power of the fp32 base is taken in
 * double and rounded once; that is torch's value for every H < 32 and for
 * 64 <= H < 128; for 32 <= H < 64 and H >= 128 torch's CPU pow (SLEEF's
 * powf, 1 ulp) rounds a few slopes the other way (Poro's 56 heads: slope 15,
 * 0x1.306fe4p-4 against 0x1.306fe6p-4), a relative 1e-7.
 *
 * The bias a query adds to its score against the key at position j is
 * slope_h · j (attention.c, decode.c): transformers' alibi tensor, which
 * takes the key's absolute position (the softmax of a row does not change
 * when a constant is added, so the −slope_h · i of the paper's relative
 * form is left out, as transformers does). In fp32 the product is rounded
 * to fp32 as transformers' fp32 alibi tensor; in the fp64 twin it is exact. */
#include "model/cpu/cpu.h"

void cpu_alibi_slopes(real *slopes, int H) {
    int p = 1;
    while (p * 2 <= H) p *= 2;
    /* 2^(−(2^−(log2 p − 3))) = 2^(−8 / p), rounded to fp32 as torch.full(…, float32) */
    float base = (float)pow(2.0, -8.0 / p);
    for (int h = 0; h < p; h++) slopes[h] = (real)(float)pow((double)base, h + 1);
    if (p == H) return;
    float extra = (float)pow(2.0, -4.0 / p);
    int rest = H - p < p ? H - p : p;
    for (int i = 0; i < rest; i++) slopes[p + i] = (real)(float)pow((double)extra, 2 * i + 1);
}

/* BLOOM's query_key_value output row, viewed as (H, 3, D) (BloomAttention's
 * _reshape: per head q_h | k_h | v_h), to and from the fused layout q | k | v
 * of (3, H, D) that the attention reads. */
void cpu_qkv_heads(real *dst, const real *src, int N, int H, int D, int to_heads) {
    int64_t W = (int64_t)3 * H * D;
#pragma omp parallel for if ((int64_t)N * W > 65536)
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < 3; j++) {
                int64_t heads = (int64_t)n * W + ((int64_t)h * 3 + j) * D;
                int64_t fused = (int64_t)n * W + ((int64_t)j * H + h) * D;
                memcpy(dst + (to_heads ? heads : fused), src + (to_heads ? fused : heads),
                       (size_t)D * sizeof(real));
            }
}
