/* decode.c — incremental decoding with a key/value cache, as Hugging Face
 * transformers' generate() does with past_key_values.
 *
 * model_forward recomputes every position of a sequence; generating T tokens
 * that way costs O(T²) layer passes. Here each new token goes through the
 * layers once: every row of the transformer is computed independently of the
 * others except in attention, and attention of a query at position p only
 * needs the keys and values of positions ≤ p. So a step keeps, per layer,
 * the keys (after RoPE) and values of every earlier position, and computes
 * for its n new rows exactly the graph of model_cpu.c:
 *
 *   x = embed[tok] (+ wpe[p] for GPT-2, p = len … len + n − 1; BLOOM: norm(x))
 *   per layer: k, v of the new rows → cache rows [len, len + n);
 *              x += post(o(attn(q, cache keys and values [0, len + n))))
 *              x += post(mlp(pre(x)))
 *   (pre, post: the block's input and output norms, where it has them; q and
 *   k through the QK-norm before RoPE, where it has one)
 *   logits = lm_head(norm_f(x of the last row))
 *
 * with the same kernels (model/cpu/cpu.h), so that its logits equal
 * model_forward's at every position up to rounding (tests/decode/).
 *
 * Positions: RoPE rotates each key once, at its own position, before it is
 * cached (the cache holds rotated keys, as transformers' DynamicCache);
 * GPT-2's learned positions are added at the embedding; ALiBi adds slope ·
 * (key position) to the scores, as attention.c. Sliding window:
 * query p sees keys (p − window, p], the mask of attention.c; the cache still
 * keeps all positions (a ring buffer would bound it to the window, but batch-1
 * generation of at most max_T tokens does not need it). Adapters: every
 * linear goes through cpu_linear_forward, so a LoRA set attached to the
 * model applies here as in model_forward; whoever attaches it turns its
 * dropout off for generation (lora_set_training(s, 0)).
 *
 * A step of many tokens (a prompt's prefill) runs in chunks of DECODE_CHUNK
 * rows: each chunk appends its keys and values before the next one attends
 * to them, so scratch memory does not grow with the prompt. */
#include "model/cpu/cpu.h"
#include "model/cpu/moe.h"

#include "util/err.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define DECODE_CHUNK 64 /* rows per pass through the layers */

struct model_kv_cache {
    const model *m;
    int max_T, len;
    int KVD;         /* KV·D: one cached row of one layer */
    int threads;     /* the attention scratch was sized for this many */
    real *k, *v;     /* (L, max_T, KV·D): keys after RoPE, values */
    real *block;     /* one allocation holding every buffer below */
    real *rope_cos;  /* (max_T, R/2), Llama family (LongRoPE: the short factors') */
    real *rope_sin;  /* (max_T, R/2) */
    real *rope_lcos; /* (max_T, R/2) Gemma 3's local RoPE, or NULL */
    real *rope_lsin;
    real *rope_long_cos; /* (max_T, R/2) LongRoPE's long factors, or NULL */
    real *rope_long_sin;
    int rope_long;     /* this call's rows rotate with the long factors */
    real *x;           /* (CHUNK, C) the residual stream of the chunk's rows */
    real *nbuf;        /* (CHUNK, C) a norm's output */
    real *qkv;         /* (CHUNK, H·D) q; QKV_FUSED (CHUNK, W) the fused q | k | v */
    real *fused;       /* (CHUNK, 2F) GATED_FUSED: gate_up's output */
    real *qk_rstd;     /* (CHUNK · (H + KV)) QK-norm statistics, scratch */
    real *att;         /* (CHUNK, H·D) attention output, o's input */
    real *sub;         /* (CHUNK, C) a sublayer's output before its post-norm */
    real *fa, *fb;     /* (CHUNK, F) gate / up output, then down's input in place; up (GATED) */
    real *mean, *rstd; /* (CHUNK) norm row statistics */
    real *scores;      /* threads · CHUNK · max_T attention probabilities */
    real *alibi;       /* (H) ALiBi slopes */
    cpu_moe *moe;      /* MLP_MOE: routing and experts' buffers for CHUNK rows */
};

/* ---- buffers ------------------------------------------------------------------ */

/* As model_cpu.c's carve: n values from the block, or counted when the block
 * is not there yet; 64-byte aligned. */
static real *decode_carve(model_kv_cache *c, size_t *used, size_t n) {
    real *p = c->block ? c->block + *used : NULL;
    *used += (n + 15) / 16 * 16;
    return p;
}

static size_t decode_layout(model_kv_cache *c) {
    const model_config *g = &c->m->cfg;
    size_t R = DECODE_CHUNK, C = (size_t)g->hidden_size, F = (size_t)g->intermediate_size;
    size_t HD = (size_t)g->num_heads * g->head_dim, T = (size_t)c->max_T;
    size_t LTK = (size_t)g->num_layers * T * c->KVD;
    const model_block *bk = &g->block;
    int rope = bk->pos == MODEL_POS_ROPE, fused = bk->qkv != MODEL_QKV_SEPARATE;
    int dense = bk->mlp != MODEL_MLP_MOE;
    int local = rope && g->rope_local_theta > 0, longrope = rope && g->rope_longrope;
    size_t W = HD + 2 * (size_t)c->KVD, RT = T * (size_t)(model_config_rope_dim(g) / 2);
    size_t used = 0;
    c->k = decode_carve(c, &used, LTK);
    c->v = decode_carve(c, &used, LTK);
    c->rope_cos = rope ? decode_carve(c, &used, RT) : NULL;
    c->rope_sin = rope ? decode_carve(c, &used, RT) : NULL;
    c->rope_lcos = local ? decode_carve(c, &used, RT) : NULL;
    c->rope_lsin = local ? decode_carve(c, &used, RT) : NULL;
    c->rope_long_cos = longrope ? decode_carve(c, &used, RT) : NULL;
    c->rope_long_sin = longrope ? decode_carve(c, &used, RT) : NULL;
    c->x = decode_carve(c, &used, R * C);
    c->nbuf = decode_carve(c, &used, R * C);
    c->qkv = decode_carve(c, &used, R * (fused ? W : HD));
    c->fused = bk->mlp == MODEL_MLP_GATED_FUSED ? decode_carve(c, &used, R * 2 * F) : NULL;
    c->qk_rstd = bk->qk_norm ? decode_carve(c, &used, (size_t)cpu_qk_norm_rows(g, (int)R)) : NULL;
    c->att = decode_carve(c, &used, R * HD);
    c->sub = bk->post_norm ? decode_carve(c, &used, R * C) : NULL;
    c->fa = dense ? decode_carve(c, &used, R * F) : NULL;
    c->fb = model_block_gated(bk) ? decode_carve(c, &used, R * F) : NULL;
    c->alibi = bk->pos == MODEL_POS_ALIBI ? decode_carve(c, &used, (size_t)g->num_heads) : NULL;
    c->mean = decode_carve(c, &used, R);
    c->rstd = decode_carve(c, &used, R);
    c->scores = decode_carve(c, &used, (size_t)c->threads * R * T);
    return used;
}

int model_kv_cache_create(model_kv_cache **out, const model *m, int max_T) {
    *out = NULL;
    const model_config *g = &m->cfg;
    if (max_T <= 0) return err_set("KV cache for %d positions: it must hold at least one", max_T);
    if (g->block.pos == MODEL_POS_LEARNED && max_T > g->max_position)
        return err_set("KV cache for %d positions: the model has only %d learned positions "
                       "(n_positions); ask for %d or fewer",
                       max_T, g->max_position, g->max_position);
    cpu_init();
    model_kv_cache *c = calloc(1, sizeof *c);
    if (!c) return err_set("out of memory for the KV cache");
    c->m = m;
    c->max_T = max_T;
    c->KVD = g->num_kv_heads * g->head_dim;
    c->threads = omp_get_max_threads();
    /* The large buffers grow with max_T: keys and values, 2·L·max_T·KV·D, and
     * the attention scratch; the others are CHUNK rows of sizes that the
     * model's own weights already hold. Counted in double, so that an absurd
     * max_T is refused rather than wrapping size_t. */
    double big = 2.0 * g->num_layers * max_T * c->KVD + (double)c->threads * DECODE_CHUNK * max_T;
    if (big > (double)(SIZE_MAX / sizeof(real) / 4)) {
        free(c);
        return err_set("KV cache for %d positions: size overflows", max_T);
    }
    size_t n = decode_layout(c);
    if (posix_memalign((void **)&c->block, 64, n * sizeof(real)) != 0) {
        free(c);
        return err_set("out of memory: a KV cache for %d positions needs %.2f GB; "
                       "generate fewer tokens",
                       max_T, (double)n * sizeof(real) / 1e9);
    }
    decode_layout(c);
    /* LongRoPE: both tables; each call rotates with the set its length picks */
    if (c->rope_cos) cpu_rope_table_for(c->rope_cos, c->rope_sin, g, max_T, 0, 0);
    if (c->rope_lcos) cpu_rope_table_for(c->rope_lcos, c->rope_lsin, g, max_T, 1, 0);
    if (c->rope_long_cos) cpu_rope_table_for(c->rope_long_cos, c->rope_long_sin, g, max_T, 0, 1);
    if (c->alibi) cpu_alibi_slopes(c->alibi, g->num_heads);
    if (g->block.mlp == MODEL_MLP_MOE && cpu_moe_create(&c->moe, g, DECODE_CHUNK, 1) != 0) {
        model_kv_cache_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void model_kv_cache_free(model_kv_cache *c) {
    if (!c) return;
    free(c->block);
    cpu_moe_free(c->moe);
    free(c);
}

void model_kv_cache_reset(model_kv_cache *c) {
    c->len = 0;
}

int model_kv_cache_len(const model_kv_cache *c) {
    return c->len;
}

int model_kv_cache_capacity(const model_kv_cache *c) {
    return c->max_T;
}

/* ---- one chunk of rows ----------------------------------------------------------- */

/* First key visible to the query at position p (attention.c's mask). */
static int decode_first_key(int window, int p) {
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* ALiBi: row[j] += slope · (j0 + j), the keys at positions j0 … j0 + n − 1. */
static void alibi_row(real *row, real slope, int j0, int n) {
    for (int j = 0; j < n; j++) row[j] += cpu_alibi_bias(slope, j0 + j);
}

/* The same for one query (n == 1, every generation step) with grouped-query
 * attention: the `group` query heads that share a key/value head are one
 * (group, D) block of q, so one GEMM per kv head computes their scores and
 * one their outputs, and each cached key and value is read once per step
 * instead of once per query head. Threads take kv heads. */
static void decode_attention_one(const model_kv_cache *c, int l, const real *q, const real *K,
                                 const real *V, int p, real *out) {
    const model_config *g = &c->m->cfg;
    int KV = g->num_kv_heads, D = g->head_dim, group = g->num_heads / g->num_kv_heads;
    int ldkv = c->KVD, c0 = decode_first_key(model_config_window(g, l), p), nc = p + 1 - c0;
    real scale = (real)model_config_attn_scale(g), cap = (real)g->attn_softcap;
    int nt = omp_get_max_threads() < c->threads ? omp_get_max_threads() : c->threads;
    if ((int64_t)g->num_heads * nc * D <= 1 << 16) nt = 1;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int kvh = 0; kvh < KV; kvh++) {
        real *S = c->scores + (int64_t)omp_get_thread_num() * DECODE_CHUNK * c->max_T;
        const real *Qg = q + (int64_t)kvh * group * D; /* (group, D): heads kvh·group … */
        const real *Kh = K + (int64_t)c0 * ldkv + (int64_t)kvh * D;
        const real *Vh = V + (int64_t)c0 * ldkv + (int64_t)kvh * D;
        real_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, group, nc, D, scale, Qg, D, Kh, ldkv, 0,
                  S, nc);
        for (int i = 0; i < group; i++) {
            real *row = S + (int64_t)i * nc;
            if (c->alibi) alibi_row(row, c->alibi[kvh * group + i], c0, nc);
            if (cap) cpu_softcap_forward(row, nc, cap);
            real mx = cpu_row_max(row, nc);
            double sum = cpu_row_sum_exp(row, row, nc, mx);
            real inv = (real)(1.0 / sum);
#pragma omp simd
            for (int j = 0; j < nc; j++) row[j] *= inv;
        }
        real_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, group, D, nc, 1, S, nc, Vh, ldkv, 0,
                  out + (int64_t)kvh * group * D, D);
    }
}

/* out (n, H·D) = attention of the n queries q (row stride ldq) at positions
 * p0 … p0 + n − 1 over the layer's cached keys K and values V (rows
 * [0, p0 + n), stride KV·D). As attention.c's forward for one block of rows:
 * S = scale · Q Kᵀ over the keys any of the rows may see, masked row softmax,
 * O = P V; threads take heads. */
static void decode_attention(const model_kv_cache *c, int l, const real *q, int ldq, const real *K,
                             const real *V, int p0, int n, real *out) {
    const model_config *g = &c->m->cfg;
    int H = g->num_heads, D = g->head_dim, group = g->num_heads / g->num_kv_heads;
    int window = model_config_window(g, l), ldo = H * D, ldkv = c->KVD;
    int c0 = decode_first_key(window, p0), c1 = p0 + n, nc = c1 - c0;
    real scale = (real)model_config_attn_scale(g), cap = (real)g->attn_softcap;
    int nt = omp_get_max_threads() < c->threads ? omp_get_max_threads() : c->threads;
    if ((int64_t)H * n * nc * D <= 1 << 16) nt = 1; /* too small for a parallel region */
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int h = 0; h < H; h++) {
        int kvh = h / group;
        real *S = c->scores + (int64_t)omp_get_thread_num() * DECODE_CHUNK * c->max_T;
        const real *Kh = K + (int64_t)c0 * ldkv + (int64_t)kvh * D;
        const real *Vh = V + (int64_t)c0 * ldkv + (int64_t)kvh * D;
        real_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nc, D, scale, q + (int64_t)h * D, ldq,
                  Kh, ldkv, 0, S, nc);
        for (int i = 0; i < n; i++) {
            real *row = S + (int64_t)i * nc;
            int p = p0 + i, lo = decode_first_key(window, p) - c0, hi = p - c0 + 1;
            for (int j = 0; j < lo; j++) row[j] = 0;
            for (int j = hi; j < nc; j++) row[j] = 0;
            if (c->alibi) alibi_row(row + lo, c->alibi[h], c0 + lo, hi - lo);
            if (cap) cpu_softcap_forward(row + lo, hi - lo, cap);
            real mx = cpu_row_max(row + lo, hi - lo);
            double sum = cpu_row_sum_exp(row + lo, row + lo, hi - lo, mx);
            real inv = (real)(1.0 / sum);
#pragma omp simd
            for (int j = lo; j < hi; j++) row[j] *= inv;
        }
        real_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, D, nc, 1, S, nc, Vh, ldkv, 0,
                  out + (int64_t)h * D, ldo);
    }
}

/* y (n, C) = the norm nm of the stream's n rows x. */
static void decode_norm(model_kv_cache *c, const model_norm *nm, real *y, const real *x, int n) {
    const model_config *g = &c->m->cfg;
    cpu_norm_forward(g->block.norm, nm, y, c->mean, c->rstd, x, n, g->hidden_size, g->norm_eps);
}

/* c->x (n, C) += post(y), y (n, C) a sublayer's output, post its output norm
 * (model_cpu.c's sublayer_forward). */
static void decode_residual(model_kv_cache *c, const model_norm *post, const real *y, int n) {
    int64_t m = (int64_t)n * c->m->cfg.hidden_size;
    decode_norm(c, post, c->nbuf, y, n);
    for (int64_t i = 0; i < m; i++) c->x[i] = c->nbuf[i] + c->x[i];
}

/* The attention sublayer's q (row stride *ldq) for the n rows of h at
 * positions p0 …, their keys and values appended to the layer's cache rows
 * [p0, p0 + n) (block_attn.c's forward). */
static int decode_qkv(model_kv_cache *c, int l, const model_layer *L, const real *h, real *Kn,
                      real *Vn, int p0, int n, int *ldq) {
    const model_config *g = &c->m->cfg;
    model_precision prec = c->m->precision;
    int D = g->head_dim, R = model_config_rope_dim(g), half = R / 2, KVD = c->KVD;
    int HD = g->num_heads * D, W = HD + 2 * KVD;
    if (g->block.qkv == MODEL_QKV_FUSED) {
        /* c_attn / qkv_proj (n, W): columns q | k | v; k and v move to the cache. */
        TRY(cpu_linear_forward(prec, &L->qkv, h, c->qkv, n, 0));
        for (int i = 0; i < n; i++) {
            const real *row = c->qkv + (size_t)i * W;
            memcpy(Kn + (size_t)i * KVD, row + HD, (size_t)KVD * sizeof(real));
            memcpy(Vn + (size_t)i * KVD, row + HD + KVD, (size_t)KVD * sizeof(real));
        }
        *ldq = W;
    } else if (g->block.qkv == MODEL_QKV_HEADS) {
        /* query_key_value (n, W = 3C) of rows (H, 3, D): each head's k and v go
         * to the cache, its q moves forward to column h·D of its row (a
         * head's q never lands on a part of the row not yet read) */
        TRY(cpu_linear_forward(prec, &L->qkv, h, c->qkv, n, 0));
        for (int i = 0; i < n; i++) {
            real *row = c->qkv + (size_t)i * W;
            for (int hd = 0; hd < g->num_heads; hd++) {
                const real *src = row + (size_t)hd * 3 * D;
                memcpy(Kn + (size_t)i * KVD + (size_t)hd * D, src + D, (size_t)D * sizeof(real));
                memcpy(Vn + (size_t)i * KVD + (size_t)hd * D, src + 2 * D,
                       (size_t)D * sizeof(real));
                memmove(row + (size_t)hd * D, src, (size_t)D * sizeof(real));
            }
        }
        *ldq = W;
    } else {
        TRY(cpu_linear_forward(prec, &L->q, h, c->qkv, n, 0));
        TRY(cpu_linear_forward(prec, &L->k, h, Kn, n, 0));
        TRY(cpu_linear_forward(prec, &L->v, h, Vn, n, 0));
        /* the n new rows are contiguous in the cache (stride KV·D): normalized in place */
        if (g->block.qk_norm) cpu_qk_norm_forward(g, L, c->qkv, Kn, c->qkv, Kn, c->qk_rstd, n);
        *ldq = g->num_heads * D;
    }
    if (g->block.pos == MODEL_POS_ROPE) {
        /* The layer's tables from position p0 on: row i of these n rows is at p0 + i. */
        const real *cs = c->rope_cos, *sn = c->rope_sin;
        if (model_config_local_rope(g, l))
            cs = c->rope_lcos, sn = c->rope_lsin;
        else if (c->rope_long)
            cs = c->rope_long_cos, sn = c->rope_long_sin;
        cs += (size_t)p0 * half;
        sn += (size_t)p0 * half;
        cpu_rope_apply(c->qkv, *ldq, n, n, g->num_heads, D, R, cs, sn, 0);
        cpu_rope_apply(Kn, KVD, n, n, g->num_kv_heads, D, R, cs, sn, 0);
    }
    return 0;
}

/* The MLP's pre-activations of n rows of h: gate into fa and up into fb
 * (gated), or up into fa (decode_layer). */
static int decode_mlp_in(model_kv_cache *c, const model_layer *L, const real *h, int n) {
    const model_config *g = &c->m->cfg;
    model_precision prec = c->m->precision;
    int F = g->intermediate_size;
    if (g->block.mlp == MODEL_MLP_GATED_FUSED) {
        /* gate_up_proj (n, 2F): columns gate | up */
        TRY(cpu_linear_forward(prec, &L->up, h, c->fused, n, 0));
        for (int i = 0; i < n; i++) {
            memcpy(c->fa + (size_t)i * F, c->fused + (size_t)i * 2 * F, (size_t)F * sizeof(real));
            memcpy(c->fb + (size_t)i * F, c->fused + (size_t)i * 2 * F + F,
                   (size_t)F * sizeof(real));
        }
        return 0;
    }
    if (g->block.mlp == MODEL_MLP_GATED) {
        TRY(cpu_linear_forward(prec, &L->gate, h, c->fa, n, 0));
        return cpu_linear_forward(prec, &L->up, h, c->fb, n, 0);
    }
    return cpu_linear_forward(prec, &L->up, h, c->fa, n, 0);
}

/* y (n, C) = the MLP of the n rows h (+= when accumulate): block_mlp.c's
 * forward, or the experts' (moe.c). */
static int decode_mlp(model_kv_cache *c, const model_layer *L, const real *h, real *y, int n,
                      int accumulate) {
    const model_config *g = &c->m->cfg;
    model_precision prec = c->m->precision;
    if (g->block.mlp == MODEL_MLP_MOE)
        return cpu_moe_forward(c->moe, prec, L, 0, h, y, n, accumulate);
    TRY(decode_mlp_in(c, L, h, n));
    cpu_mlp_act_forward(&g->block, &L->xielu, c->fa, c->fa, c->fb,
                        (int64_t)n * g->intermediate_size);
    return cpu_linear_forward(prec, &L->down, c->fa, y, n, accumulate);
}

/* Layer l for the n rows in c->x, at positions p0 …; appends their keys and
 * values to the layer's cache rows [p0, p0 + n). */
static int decode_layer(model_kv_cache *c, int l, int p0, int n) {
    const model_config *g = &c->m->cfg;
    const model_layer *L = &c->m->layers[l];
    model_precision prec = c->m->precision;
    int KVD = c->KVD, ldq;
    size_t layer = (size_t)l * c->max_T * KVD;
    real *K = c->k + layer, *V = c->v + layer;
    real *Kn = K + (size_t)p0 * KVD, *Vn = V + (size_t)p0 * KVD; /* the new rows */
    const real *h;

    /* attention sublayer */
    h = c->x;
    if (L->attn_in.w) {
        decode_norm(c, &L->attn_in, c->nbuf, c->x, n);
        h = c->nbuf;
    }
    TRY(decode_qkv(c, l, L, h, Kn, Vn, p0, n, &ldq));
    if (n == 1 && g->num_heads > g->num_kv_heads && g->num_heads / g->num_kv_heads <= DECODE_CHUNK)
        decode_attention_one(c, l, c->qkv, K, V, p0, c->att);
    else
        decode_attention(c, l, c->qkv, ldq, K, V, p0, n, c->att);
    if (L->attn_out.w) {
        TRY(cpu_linear_forward(prec, &L->o, c->att, c->sub, n, 0));
        decode_residual(c, &L->attn_out, c->sub, n);
    } else {
        TRY(cpu_linear_forward(prec, &L->o, c->att, c->x, n, 1));
    }

    /* MLP sublayer */
    h = c->x;
    if (L->mlp_in.w) {
        decode_norm(c, &L->mlp_in, c->nbuf, c->x, n);
        h = c->nbuf;
    }
    if (L->mlp_out.w) {
        TRY(decode_mlp(c, L, h, c->sub, n, 0));
        decode_residual(c, &L->mlp_out, c->sub, n);
        return 0;
    }
    return decode_mlp(c, L, h, c->x, n, 1);
}

/* ---- the step ---------------------------------------------------------------------- */

int model_decode(const model *m, model_kv_cache *c, const int32_t *tokens, int n,
                 real *logits_out) {
    const model_config *g = &m->cfg;
    int C = g->hidden_size, V = g->vocab_size;
    if (c->m != m) return err_set("model_decode: the KV cache was created for another model");
    if (n <= 0) return err_set("model_decode: %d tokens to append; give at least one", n);
    if (n > c->max_T - c->len)
        return err_set("KV cache full: it holds %d of its %d positions and %d more tokens do not "
                       "fit; create it with a larger max_T, or reset it",
                       c->len, c->max_T, n);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return err_set("token id %d at position %d is outside the vocabulary [0, %d): it was "
                           "tokenized for another model",
                           tokens[i], c->len + i, V);

    int rows = 0, len0 = c->len;
    /* LongRoPE: the factors of this call's length, as transformers picks
     * them per forward (the cached keys keep their own). */
    c->rope_long = model_config_rope_long(g, len0 + n);
    real escale = cpu_embed_scale(g);
    for (int s = 0; s < n; s += rows) {
        rows = n - s < DECODE_CHUNK ? n - s : DECODE_CHUNK;
        int p0 = c->len;
        /* Row i of the chunk is at position p0 + i. */
        cpu_embed_forward(c->x, tokens + s, m->wte, m->wpe, p0, rows, rows, C);
        if (g->block.embed_norm) {
            decode_norm(c, &m->embed_norm, c->nbuf, c->x, rows);
            memcpy(c->x, c->nbuf, (size_t)rows * C * sizeof(real));
        }
        if (g->block.embed_scale)
            for (int64_t i = 0; i < (int64_t)rows * C; i++) c->x[i] *= escale;
        for (int l = 0; l < g->num_layers; l++)
            if (decode_layer(c, l, p0, rows) != 0) {
                c->len = len0; /* the cache as it was: the new rows are not valid */
                return -1;
            }
        c->len += rows;
    }

    /* The head on the last row only: one (1, C) norm and one (1, C)·(C, V). */
    const real *last = c->x + (size_t)(rows - 1) * C;
    decode_norm(c, &m->norm_f, c->nbuf, last, 1);
    model_linear head = {.w = m->lm_head, .in = C, .out = V};
    TRY(cpu_linear_forward(m->precision, &head, c->nbuf, logits_out, 1, 0));
    if (g->final_softcap) cpu_softcap_forward(logits_out, V, (real)g->final_softcap);
    return 0;
}
