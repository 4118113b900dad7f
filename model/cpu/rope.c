/* rope.c — rotary position embedding (Su et al. 2021) as Hugging Face
 * transformers applies it: q·cos + rotate_half(q)·sin, rotate_half(x) =
 * (−x[D/2:], x[:D/2]), cos and sin of emb = cat(freqs, freqs). So dimension
 * i < D/2 is paired with i + D/2 and both use angle t · inv_freq[i]. */
#include "model/cpu/cpu.h"

/* inv_freq as transformers' _compute_default_rope_parameters and, for
 * rope_scaling {"rope_type": "llama3"}, _compute_llama3_parameters: wavelengths
 * shorter than original_max_position / high_freq_factor are kept, those longer
 * than original_max_position / low_freq_factor are divided by factor, and the
 * band between is interpolated smoothly. HF computes these in fp32: the
 * frequency and the angle are rounded to `real` at the same points. */
static real rope_inv_freq(const model_config *cfg, int i) {
    int D = cfg->head_dim;
    real inv = (real)(1.0 / pow(cfg->rope_theta, (double)(2 * i) / D));
    if (!cfg->rope_llama3) return inv;
    double factor = cfg->rope_factor, lo = cfg->rope_low_freq_factor;
    double hi = cfg->rope_high_freq_factor, old = cfg->rope_original_max_position;
    double low_freq_wavelen = old / lo, high_freq_wavelen = old / hi;
    double wavelen = 2 * M_PI / inv;
    if (wavelen > low_freq_wavelen) return (real)(inv / factor);
    if (wavelen < high_freq_wavelen) return inv;
    double smooth = (old / wavelen - lo) / (hi - lo);
    return (real)((1 - smooth) * inv / factor + smooth * inv);
}

void cpu_rope_table(real *cos_t, real *sin_t, const model_config *cfg, int T) {
    int half = cfg->head_dim / 2;
    for (int i = 0; i < half; i++) {
        real inv = rope_inv_freq(cfg, i);
        for (int t = 0; t < T; t++) {
            real angle = (real)t * inv;
            cos_t[(int64_t)t * half + i] = (real)cos(angle);
            sin_t[(int64_t)t * half + i] = (real)sin(angle);
        }
    }
}

void cpu_rope_apply(real *x, int ld, int N, int T, int nheads, int D, const real *cos_t,
                    const real *sin_t, int inverse) {
    int half = D / 2;
    real sign = inverse ? -1 : 1;
#pragma omp parallel for if ((int64_t)N * nheads * D > 32768)
    for (int n = 0; n < N; n++) {
        const real *c = cos_t + (int64_t)(n % T) * half, *s = sin_t + (int64_t)(n % T) * half;
        for (int h = 0; h < nheads; h++) {
            real *x0 = x + (int64_t)n * ld + (int64_t)h * D, *x1 = x0 + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                real a = x0[i], b = x1[i], si = sign * s[i];
                x0[i] = a * c[i] - b * si;
                x1[i] = b * c[i] + a * si;
            }
        }
    }
}
