/* rope.c — rotary position embedding (Su et al. 2021) as Hugging Face
 * transformers applies it: q·cos + rotate_half(q)·sin, rotate_half(x) =
 * (−x[R/2:R], x[:R/2]), cos and sin of emb = cat(freqs, freqs), over the
 * first R dimensions of each head (R = D unless the config rotates part of
 * the head: Phi-3's partial_rotary_factor). So dimension i < R/2 is paired
 * with i + R/2 and both use angle t · inv_freq[i]; dimensions R … D − 1 pass
 * through. */
#include "model/cpu/cpu.h"

/* inv_freq as transformers' _compute_default_rope_parameters and, for
 * rope_scaling {"rope_type": "llama3"}, _compute_llama3_parameters: wavelengths
 * shorter than original_max_position / high_freq_factor are kept, those longer
 * than original_max_position / low_freq_factor are divided by factor, and the
 * band between is interpolated smoothly; "linear" divides every frequency by
 * factor (_compute_linear_scaling_rope_parameters); "longrope" divides
 * frequency i by short_factor[i] or long_factor[i]
 * (_compute_longrope_parameters). HF computes these in fp32: the frequency
 * and the angle are rounded to `real` at the same points. local: Gemma 3's
 * sliding layers, the default RoPE of rope_local_theta. */
static real rope_inv_freq(const model_config *cfg, int i, int local, int long_factors) {
    int R = model_config_rope_dim(cfg);
    double theta = local ? cfg->rope_local_theta : cfg->rope_theta;
    if (!local && cfg->rope_longrope) {
        /* 1 / (ext · base^(2i/R)), each step in fp32 as transformers */
        real ext = (real)(long_factors ? cfg->rope_long[i] : cfg->rope_short[i]);
        real base = (real)pow(theta, (double)(2 * i) / R);
        return 1 / (ext * base);
    }
    real inv = (real)(1.0 / pow(theta, (double)(2 * i) / R));
    if (local) return inv;
    if (cfg->rope_linear) return (real)(inv / cfg->rope_factor);
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

void cpu_rope_table_for(real *cos_t, real *sin_t, const model_config *cfg, int T, int local,
                        int long_factors) {
    int half = model_config_rope_dim(cfg) / 2;
    /* LongRoPE's attention factor scales cos and sin (emb.cos() · attention_scaling) */
    int scaled = !local && cfg->rope_longrope;
    real f = (real)model_config_rope_attn_factor(cfg);
    for (int i = 0; i < half; i++) {
        real inv = rope_inv_freq(cfg, i, local, long_factors);
        for (int t = 0; t < T; t++) {
            real angle = (real)t * inv;
            real c = (real)cos(angle), s = (real)sin(angle);
            cos_t[(int64_t)t * half + i] = scaled ? c * f : c;
            sin_t[(int64_t)t * half + i] = scaled ? s * f : s;
        }
    }
}

void cpu_rope_table(real *cos_t, real *sin_t, const model_config *cfg, int T) {
    cpu_rope_table_for(cos_t, sin_t, cfg, T, 0, model_config_rope_long(cfg, T));
}

void cpu_rope_apply(real *x, int ld, int N, int T, int nheads, int D, int R, const real *cos_t,
                    const real *sin_t, int inverse) {
    int half = R / 2;
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
