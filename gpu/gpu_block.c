/* gpu_block.c — the transformer blocks on the GPU, forward, backward and
 * decoding: model/cpu/model_cpu.c's graph (x = x + post(f(pre(x))) for f the
 * attention and the MLP sublayer, by the block options of the config) with
 * block_attn.c's and block_mlp.c's sublayers (a mixture of experts:
 * gpu_moe.c), over the buffers of gpu_internal.h. Differences from the CPU:
 *   - in bf16 mode the GEMM operands are bf16: a sublayer's input (its
 *     pre-norm's output, or the stream itself without one) and the
 *     sublayer's d(output) are converted; the stream, every norm's input and
 *     statistics, QK-norm's q and k before the norm, and every dx sum stay
 *     fp32;
 *   - the base is frozen: no gradient for norms, xIELU's values or weights,
 *     only for the adapter (gpu_model.c's linears). */
#include "gpu/gpu_internal.h"

#include <math.h>
#include <string.h>

/* ---- views ------------------------------------------------------------------------------ */

/* A layer's q, k, v inside its N·W block: QKV_SEPARATE three contiguous
 * matrices, QKV_FUSED (and QKV_HEADS, once moved) the columns q (H·D) |
 * k (KV·D) | v (KV·D) of one (N, W) matrix (model_cpu's block_attn.c).
 * rows: the rows the block holds (N, or T for decoding). */
typedef struct {
    void *q, *k, *v;
    int ldq, ldk, ldv;
} qkv_view;

static qkv_view qkv_at(const gpu_model *g, void *base, size_t rows) {
    const model_config *c = &g->cfg;
    int HD = c->num_heads * c->head_dim, KVD = c->num_kv_heads * c->head_dim;
    if (c->block.qkv == MODEL_QKV_FUSED || c->block.qkv == MODEL_QKV_HEADS)
        return (qkv_view){
            base, gpu_elem(g, base, HD), gpu_elem(g, base, (size_t)HD + KVD), g->W, g->W, g->W};
    return (qkv_view){
        base, gpu_elem(g, base, rows * HD), gpu_elem(g, base, rows * (HD + KVD)), HD, KVD, KVD};
}

/* The same view moved to row r. */
static qkv_view qkv_row(const gpu_model *g, qkv_view v, size_t r) {
    return (qkv_view){gpu_elem(g, v.q, r * v.ldq),
                      gpu_elem(g, v.k, r * v.ldk),
                      gpu_elem(g, v.v, r * v.ldv),
                      v.ldq,
                      v.ldk,
                      v.ldv};
}

static size_t layer_off(const gpu_model *g, int l, size_t per_row) {
    return (size_t)l * g->N * per_row;
}

/* Layer l's attention: its window, the score scale, soft-capping and ALiBi. */
static gpu_attn_shape attn_shape(const gpu_model *g, int l) {
    const model_config *c = &g->cfg;
    return (gpu_attn_shape){.B = g->B,
                            .T = g->T,
                            .H = c->num_heads,
                            .KV = c->num_kv_heads,
                            .D = c->head_dim,
                            .window = model_config_window(c, l),
                            .scale = (float)model_config_attn_scale(c),
                            .softcap = (float)c->attn_softcap,
                            .impl = g->opt.simt_attention ? GPU_ATTN_SIMT : GPU_ATTN_AUTO,
                            .alibi = g->alibi};
}

/* Layer l's RoPE tables (T, R/2): Gemma 3's local one on sliding layers,
 * else the global one of this pass's length (LongRoPE: short or long). */
static void layer_rope(const gpu_model *g, int l, const float **cs, const float **sn) {
    if (model_config_local_rope(&g->cfg, l)) {
        *cs = g->rope_lcos;
        *sn = g->rope_lsin;
    } else if (g->rope_long) {
        *cs = g->rope_long_cos;
        *sn = g->rope_long_sin;
    } else {
        *cs = g->rope_cos;
        *sn = g->rope_sin;
    }
}

static int has_lora(const gpu_linear *l) {
    return l->lora >= 0;
}

/* ---- norms: slot s keeps the statistics ----------------------------------------------- */

static float *slot_mean(const gpu_model *g, int s) {
    return g->norm_mean ? g->norm_mean + (size_t)s * g->N : NULL;
}

static float *slot_rstd(const gpu_model *g, int s) {
    return g->norm_rstd + (size_t)s * g->N;
}

/* y (N, C) of type yt = norm(x), x fp32. */
static int norm_forward(gpu_model *g, int s, const gpu_norm *nm, const float *x, void *y,
                        gpu_dtype yt) {
    const model_config *c = &g->cfg;
    if (c->block.norm == MODEL_NORM_LAYER)
        CU(gpu_layernorm_forward(y, yt, slot_mean(g, s), slot_rstd(g, s), x, nm->w, nm->b, g->N,
                                 c->hidden_size, c->norm_eps, g->stream));
    else
        CU(gpu_rmsnorm_forward(y, yt, slot_rstd(g, s), x, nm->w, g->N, c->hidden_size, c->norm_eps,
                               g->stream));
    return 0;
}

/* y (N, C) of type g->dt = norm(x) again, from the statistics. */
static int norm_apply(gpu_model *g, int s, const gpu_norm *nm, const float *x, void *y) {
    const model_config *c = &g->cfg;
    if (c->block.norm == MODEL_NORM_LAYER)
        CU(gpu_layernorm_apply(y, g->dt, x, nm->w, nm->b, slot_mean(g, s), slot_rstd(g, s), g->N,
                               c->hidden_size, g->stream));
    else
        CU(gpu_rmsnorm_apply(y, g->dt, x, nm->w, slot_rstd(g, s), g->N, c->hidden_size, g->stream));
    return 0;
}

/* dx += d(norm)/dx · dy (fp32). */
static int norm_backward(gpu_model *g, int s, const gpu_norm *nm, const float *x, const float *dy,
                         float *dx) {
    const model_config *c = &g->cfg;
    if (c->block.norm == MODEL_NORM_LAYER)
        CU(gpu_layernorm_backward(dx, dy, x, nm->w, slot_mean(g, s), slot_rstd(g, s), g->N,
                                  c->hidden_size, g->stream));
    else
        CU(gpu_rmsnorm_backward(dx, dy, x, nm->w, slot_rstd(g, s), g->N, c->hidden_size,
                                g->stream));
    return 0;
}

int gpu_final_norm_forward(gpu_model *g) {
    int L = g->cfg.num_layers;
    return norm_forward(g, GPU_NORMS * L, &g->norm_f, gpu_resid(g, 2 * L), g->xf, g->dt);
}

int gpu_final_norm_backward(gpu_model *g) {
    int L = g->cfg.num_layers;
    return norm_backward(g, GPU_NORMS * L, &g->norm_f, gpu_resid(g, 2 * L), g->dnorm, g->dresid);
}

int gpu_embed_norm_forward(gpu_model *g) {
    int L = g->cfg.num_layers;
    return norm_forward(g, GPU_NORMS * L + 1, &g->embed_norm, g->emb, gpu_resid(g, 0), GPU_F32);
}

/* ---- QK-norm: RMSNorm rows of q (H heads) and k (KV heads), cpu_qk_norm_* ------------- */

static void qk_rows(const gpu_model *g, int heads, int *rows, int *width) {
    const model_config *c = &g->cfg;
    int head = c->block.qk_norm == MODEL_QK_NORM_HEAD;
    *rows = head ? g->N * heads : g->N;
    *width = head ? c->head_dim : heads * c->head_dim;
}

/* q, k (type dt, contiguous) = QK-norm of layer l's q_raw | k_raw (fp32). */
static int qk_norm_forward(gpu_model *g, int l, void *q, void *k) {
    const model_config *c = &g->cfg;
    const gpu_layer *L = &g->layers[l];
    float *q_raw = g->qk_raw + layer_off(g, l, g->QK);
    float *k_raw = q_raw + (size_t)g->N * c->num_heads * c->head_dim;
    float *rstd = g->qk_rstd + layer_off(g, l, g->QKR);
    int rq, wq, rk, wk;
    qk_rows(g, c->num_heads, &rq, &wq);
    qk_rows(g, c->num_kv_heads, &rk, &wk);
    CU(gpu_rmsnorm_forward(q, g->dt, rstd, q_raw, L->q_norm.w, rq, wq, c->norm_eps, g->stream));
    CU(gpu_rmsnorm_forward(k, g->dt, rstd + rq, k_raw, L->k_norm.w, rk, wk, c->norm_eps,
                           g->stream));
    return 0;
}

/* dq | dk (type dt, contiguous N·QK, after RoPE's backward) → d(q_raw | k_raw)
 * in the GEMM type; returns it. */
static void *qk_norm_backward(gpu_model *g, int l, void *dqk) {
    const model_config *c = &g->cfg;
    const gpu_layer *L = &g->layers[l];
    size_t n = (size_t)g->N * g->QK, nq = (size_t)g->N * c->num_heads * c->head_dim;
    float *q_raw = g->qk_raw + layer_off(g, l, g->QK), *rstd = g->qk_rstd + layer_off(g, l, g->QKR);
    float *d32 = (float *)dqk;
    cudaError_t e = cudaSuccess;
    if (g->dt != GPU_F32) {
        d32 = g->dqk32;
        e = gpu_convert(d32, GPU_F32, dqk, g->dt, (int64_t)n, g->stream);
    }
    int rq, wq, rk, wk;
    qk_rows(g, c->num_heads, &rq, &wq);
    qk_rows(g, c->num_kv_heads, &rk, &wk);
    if (e == cudaSuccess) e = cudaMemsetAsync(g->dqk_raw, 0, n * sizeof(float), g->stream);
    if (e == cudaSuccess)
        e = gpu_rmsnorm_backward(g->dqk_raw, d32, q_raw, L->q_norm.w, rstd, rq, wq, g->stream);
    if (e == cudaSuccess)
        e = gpu_rmsnorm_backward(g->dqk_raw + nq, d32 + nq, q_raw + nq, L->k_norm.w, rstd + rq, rk,
                                 wk, g->stream);
    if (e == cudaSuccess && g->dt != GPU_F32)
        e = gpu_convert(g->dqk_t, g->dt, g->dqk_raw, GPU_F32, (int64_t)n, g->stream);
    if (e != cudaSuccess) {
        gpu_cuda_fail(e, "QK-norm backward", __FILE__, __LINE__);
        return NULL;
    }
    return g->dqk_t;
}

/* ---- the attention sublayer (block_attn.c) ------------------------------------------------ */

/* q, k, v of the g->N rows of h into dst (rows at positions pos …; RoPE
 * tables indexed by row % T_rope from position pos on). */
static int qkv_forward(gpu_model *g, int l, const void *h, const qkv_view *dst, int pos,
                       int T_rope) {
    const model_config *c = &g->cfg;
    const gpu_layer *L = &g->layers[l];
    int N = g->N, R = model_config_rope_dim(c), half = R / 2;
    if (c->block.qkv == MODEL_QKV_FUSED) {
        OK(gpu_linear_forward(g, &L->qkv, h, dst->q, g->dt, 0));
    } else if (c->block.qkv == MODEL_QKV_HEADS) {
        /* query_key_value's (H, 3, D) rows into dqkv (backward's scratch,
         * N·W, free in a forward), then into the fused layout at dst: the
         * N rows of dst are contiguous (row stride W), also in the cache */
        OK(gpu_linear_forward(g, &L->qkv, h, g->dqkv, g->dt, 0));
        CU(gpu_qkv_heads(dst->q, g->dqkv, g->dt, N, c->num_heads, c->head_dim, 0, g->stream));
    } else if (g->QK) {
        float *q_raw = g->qk_raw + layer_off(g, l, g->QK);
        OK(gpu_linear_forward(g, &L->q, h, q_raw, GPU_F32, 0));
        OK(gpu_linear_forward(g, &L->k, h, q_raw + (size_t)N * c->num_heads * c->head_dim, GPU_F32,
                              0));
        OK(gpu_linear_forward(g, &L->v, h, dst->v, g->dt, 0));
        OK(qk_norm_forward(g, l, dst->q, dst->k));
    } else {
        OK(gpu_linear_forward(g, &L->q, h, dst->q, g->dt, 0));
        OK(gpu_linear_forward(g, &L->k, h, dst->k, g->dt, 0));
        OK(gpu_linear_forward(g, &L->v, h, dst->v, g->dt, 0));
    }
    if (c->block.pos == MODEL_POS_ROPE) {
        const float *cs, *sn;
        layer_rope(g, l, &cs, &sn);
        cs += (size_t)pos * half;
        sn += (size_t)pos * half;
        CU(gpu_rope(dst->q, g->dt, dst->ldq, N, T_rope, c->num_heads, c->head_dim, R, cs, sn, 0,
                    g->stream));
        CU(gpu_rope(dst->k, g->dt, dst->ldk, N, T_rope, c->num_kv_heads, c->head_dim, R, cs, sn, 0,
                    g->stream));
    }
    return 0;
}

/* y (N, C) of type yt = o(attn(q, k, v of h)) (+= when accumulate). pos < 0:
 * a training-shaped pass over the batch; pos >= 0: decoding, the N rows at
 * positions pos … against the layer's cache (qkv with T rows, B = 1). */
static int attn_forward(gpu_model *g, int l, const void *h, void *y, gpu_dtype yt, int accumulate,
                        int pos) {
    const model_config *c = &g->cfg;
    const gpu_layer *L = &g->layers[l];
    int HD = c->num_heads * c->head_dim;
    gpu_attn_shape as = attn_shape(g, l);
    if (pos < 0) {
        qkv_view qv = qkv_at(g, gpu_elem(g, g->qkv, layer_off(g, l, g->W)), (size_t)g->N);
        void *att = gpu_elem(g, g->att, layer_off(g, l, HD));
        OK(qkv_forward(g, l, h, &qv, 0, g->T));
        CU(gpu_attention_forward(&as, qv.q, qv.ldq, qv.k, qv.ldk, qv.v, qv.ldv, att,
                                 g->att_lse + layer_off(g, l, c->num_heads), g->dt, g->stream));
        return gpu_linear_forward(g, &L->o, att, y, yt, accumulate);
    }
    /* decoding: layer l's block is a cache of T rows; the new rows start at pos */
    qkv_view cache = qkv_at(g, gpu_elem(g, g->qkv, (size_t)l * g->T * g->W), (size_t)g->T);
    qkv_view fresh = qkv_row(g, cache, (size_t)pos);
    OK(qkv_forward(g, l, h, &fresh, pos, g->N));
    if (pos == 0) {
        /* a prompt's prefill is a training-shaped forward of n rows: the
         * flash kernels (tensor cores in bf16 where they apply) */
        as.T = g->N;
        CU(gpu_attention_forward(&as, cache.q, cache.ldq, cache.k, cache.ldk, cache.v, cache.ldv,
                                 g->att, g->att_lse, g->dt, g->stream));
    } else {
        CU(gpu_attention_decode(&as, g->N, pos, fresh.q, cache.ldq, cache.k, cache.ldk, cache.v,
                                cache.ldv, g->att, g->dt, g->stream));
    }
    return gpu_linear_forward(g, &L->o, g->att, y, yt, accumulate);
}

/* dh (N, C) fp32 = d/dh given dy (type dt) (+= when accumulate_dh). */
static int attn_backward(gpu_model *g, int l, const void *h, const void *dy, float *dh,
                         int accumulate_dh) {
    const model_config *c = &g->cfg;
    const gpu_layer *L = &g->layers[l];
    int N = g->N, HD = c->num_heads * c->head_dim;
    qkv_view qv = qkv_at(g, gpu_elem(g, g->qkv, layer_off(g, l, g->W)), (size_t)N);
    qkv_view dqv = qkv_at(g, g->dqkv, (size_t)N);
    void *att = gpu_elem(g, g->att, layer_off(g, l, HD));
    gpu_attn_shape as = attn_shape(g, l);
    float *lse = g->att_lse + layer_off(g, l, c->num_heads); /* (B, H, T) of layer l */

    OK(gpu_linear_backward(g, &L->o, att, dy, g->datt, g->dt, 0));
    CU(gpu_attention_backward(&as, qv.q, qv.ldq, qv.k, qv.ldk, qv.v, qv.ldv, att, g->datt, lse,
                              g->att_delta, dqv.q, dqv.k, dqv.v, g->dt, g->stream));
    if (c->block.pos == MODEL_POS_ROPE) {
        const float *cs, *sn;
        int R = model_config_rope_dim(c);
        layer_rope(g, l, &cs, &sn);
        CU(gpu_rope(dqv.q, g->dt, dqv.ldq, N, g->T, c->num_heads, c->head_dim, R, cs, sn, 1,
                    g->stream));
        CU(gpu_rope(dqv.k, g->dt, dqv.ldk, N, g->T, c->num_kv_heads, c->head_dim, R, cs, sn, 1,
                    g->stream));
    }
    if (c->block.qkv == MODEL_QKV_FUSED)
        return gpu_linear_backward(g, &L->qkv, h, g->dqkv, dh, GPU_F32, accumulate_dh);
    if (c->block.qkv == MODEL_QKV_HEADS) {
        /* d(q|k|v) back to query_key_value's (H, 3, D) rows, into the layer's
         * q|k|v block (read for the last time by the attention's backward
         * above), as block_attn.c does */
        CU(gpu_qkv_heads(qv.q, g->dqkv, g->dt, N, c->num_heads, c->head_dim, 1, g->stream));
        return gpu_linear_backward(g, &L->qkv, h, qv.q, dh, GPU_F32, accumulate_dh);
    }
    void *dq = dqv.q, *dk = dqv.k;
    if (g->QK) {
        /* dq | dk are contiguous at the start of dqkv */
        dq = qk_norm_backward(g, l, dqv.q);
        if (!dq) return -1;
        dk = gpu_elem(g, dq, (size_t)N * HD);
    }
    OK(gpu_linear_backward(g, &L->q, h, dq, dh, GPU_F32, accumulate_dh));
    OK(gpu_linear_backward(g, &L->k, h, dk, dh, GPU_F32, 1));
    return gpu_linear_backward(g, &L->v, h, dqv.v, dh, GPU_F32, 1);
}

static int attn_needs_input(const gpu_layer *L) {
    return has_lora(&L->q) || has_lora(&L->k) || has_lora(&L->v) || has_lora(&L->qkv);
}

/* ---- the MLP sublayer (block_mlp.c) ------------------------------------------------------ */

/* down's input act (N, F) from layer l's pre-activations. */
static int mlp_act(gpu_model *g, int l, const void *fa, const void *fb) {
    const model_config *c = &g->cfg;
    int64_t n = (int64_t)g->N * c->intermediate_size;
    if (model_block_gated(&c->block) && c->block.act == MODEL_ACT_GELU_TANH)
        CU(gpu_geglu_forward(g->act, fa, fb, g->dt, n, g->stream));
    else if (model_block_gated(&c->block))
        CU(gpu_swiglu_forward(g->act, fa, fb, g->dt, n, g->stream));
    else if (c->block.act == MODEL_ACT_XIELU)
        CU(gpu_xielu_forward(g->act, fa, g->dt, n, &g->layers[l].xielu, g->stream));
    else
        CU(gpu_gelu_forward(g->act, fa, g->dt, n, g->stream));
    return 0;
}

/* Columns [0, F) and [F, 2F) of fc_fused (N, 2F) into a and b (N, F), or
 * back (join): Phi-3's gate_up_proj. */
static int split_halves(gpu_model *g, void *a, void *b, int join) {
    size_t ts = gpu_dtype_size(g->dt), row = (size_t)g->cfg.intermediate_size * ts;
    void *half2 = (char *)g->fc_fused + row;
    if (join) {
        CU(cudaMemcpy2DAsync(g->fc_fused, 2 * row, a, row, row, (size_t)g->N,
                             cudaMemcpyDeviceToDevice, g->stream));
        CU(cudaMemcpy2DAsync(half2, 2 * row, b, row, row, (size_t)g->N, cudaMemcpyDeviceToDevice,
                             g->stream));
    } else {
        CU(cudaMemcpy2DAsync(a, row, g->fc_fused, 2 * row, row, (size_t)g->N,
                             cudaMemcpyDeviceToDevice, g->stream));
        CU(cudaMemcpy2DAsync(b, row, half2, 2 * row, row, (size_t)g->N, cudaMemcpyDeviceToDevice,
                             g->stream));
    }
    return 0;
}

static int mlp_forward(gpu_model *g, int l, const void *h, void *y, gpu_dtype yt, int accumulate,
                       int pos) {
    (void)pos;
    const model_config *c = &g->cfg;
    const gpu_layer *L = &g->layers[l];
    if (c->block.mlp == MODEL_MLP_MOE) return gpu_moe_forward(g, l, h, y, yt, accumulate);
    int F = c->intermediate_size;
    void *fa = gpu_elem(g, g->fc_a, layer_off(g, l, F));
    void *fb = g->fc_b ? gpu_elem(g, g->fc_b, layer_off(g, l, F)) : NULL;
    if (c->block.mlp == MODEL_MLP_GATED_FUSED) {
        OK(gpu_linear_forward(g, &L->up, h, g->fc_fused, g->dt, 0));
        OK(split_halves(g, fa, fb, 0));
    } else if (c->block.mlp == MODEL_MLP_GATED) {
        OK(gpu_linear_forward(g, &L->gate, h, fa, g->dt, 0));
        OK(gpu_linear_forward(g, &L->up, h, fb, g->dt, 0));
    } else {
        OK(gpu_linear_forward(g, &L->up, h, fa, g->dt, 0));
    }
    OK(mlp_act(g, l, fa, fb));
    return gpu_linear_forward(g, &L->down, g->act, y, yt, accumulate);
}

static int mlp_backward(gpu_model *g, int l, const void *h, const void *dy, float *dh,
                        int accumulate_dh) {
    const model_config *c = &g->cfg;
    const gpu_layer *L = &g->layers[l];
    if (c->block.mlp == MODEL_MLP_MOE) return gpu_moe_backward(g, l, h, dy, dh, accumulate_dh);
    int F = c->intermediate_size;
    int64_t n = (int64_t)g->N * F;
    void *fa = gpu_elem(g, g->fc_a, layer_off(g, l, F));
    void *fb = g->fc_b ? gpu_elem(g, g->fc_b, layer_off(g, l, F)) : NULL;
    if (has_lora(&L->down)) OK(mlp_act(g, l, fa, fb));
    OK(gpu_linear_backward(g, &L->down, g->act, dy, g->dfa, g->dt, 0));
    if (model_block_gated(&c->block)) {
        if (c->block.act == MODEL_ACT_GELU_TANH)
            CU(gpu_geglu_backward(g->dfa, g->dfb, g->dfa, fa, fb, g->dt, n, g->stream));
        else
            CU(gpu_swiglu_backward(g->dfa, g->dfb, g->dfa, fa, fb, g->dt, n, g->stream));
        if (c->block.mlp == MODEL_MLP_GATED_FUSED) {
            OK(split_halves(g, g->dfa, g->dfb, 1));
            return gpu_linear_backward(g, &L->up, h, g->fc_fused, dh, GPU_F32, accumulate_dh);
        }
        OK(gpu_linear_backward(g, &L->gate, h, g->dfa, dh, GPU_F32, accumulate_dh));
        return gpu_linear_backward(g, &L->up, h, g->dfb, dh, GPU_F32, 1);
    }
    if (c->block.act == MODEL_ACT_XIELU)
        CU(gpu_xielu_backward(g->dfa, g->dfa, fa, g->dt, n, &L->xielu, g->stream));
    else
        CU(gpu_gelu_backward(g->dfa, g->dfa, fa, g->dt, n, g->stream));
    return gpu_linear_backward(g, &L->up, h, g->dfa, dh, GPU_F32, accumulate_dh);
}

static int mlp_needs_input(const gpu_layer *L) {
    if (L->experts) return gpu_moe_needs_input(L);
    return has_lora(&L->gate) || has_lora(&L->up);
}

/* ---- a sublayer and its norms: point p = 2l + sub → p + 1 ------------------------------- */

typedef struct {
    int sub;
    const gpu_norm *in, *out; /* pre- and post-norm (w NULL: none) */
    int (*forward)(gpu_model *g, int l, const void *h, void *y, gpu_dtype yt, int accumulate,
                   int pos);
    int (*backward)(gpu_model *g, int l, const void *h, const void *dy, float *dh,
                    int accumulate_dh);
    int (*needs_input)(const gpu_layer *L);
} sublayer;

static sublayer sublayer_of(const gpu_layer *L, int sub) {
    if (sub == 0)
        return (sublayer){
            0, &L->attn_in, &L->attn_out, attn_forward, attn_backward, attn_needs_input};
    return (sublayer){1, &L->mlp_in, &L->mlp_out, mlp_forward, mlp_backward, mlp_needs_input};
}

static int norm_slot(int l, int sub, int out) {
    return GPU_NORMS * l + 2 * sub + out;
}

static float *sub_out(const gpu_model *g, int l, int sub) {
    return g->sub_out + ((size_t)2 * l + sub) * g->N * g->cfg.hidden_size;
}

/* nbuf (N, C) of the GEMM type = the sublayer's input: its pre-norm of x, or
 * x itself. recompute: the pre-norm from its kept statistics. */
static int sub_input(gpu_model *g, int l, const sublayer *s, const float *x, int recompute) {
    int64_t n = (int64_t)g->N * g->cfg.hidden_size;
    if (!s->in->w) {
        CU(gpu_convert(g->nbuf, g->dt, x, GPU_F32, n, g->stream));
        return 0;
    }
    if (recompute) return norm_apply(g, norm_slot(l, s->sub, 0), s->in, x, g->nbuf);
    return norm_forward(g, norm_slot(l, s->sub, 0), s->in, x, g->nbuf, g->dt);
}

static int sublayer_forward(gpu_model *g, int l, int sub, int pos) {
    const gpu_layer *L = &g->layers[l];
    sublayer s = sublayer_of(L, sub);
    int p = 2 * l + sub;
    int64_t n = (int64_t)g->N * g->cfg.hidden_size;
    float *x = gpu_resid(g, p), *next = gpu_resid(g, p + 1);
    OK(sub_input(g, l, &s, x, 0));
    if (s.out->w) {
        /* next = x + norm(f(h)) */
        float *y = sub_out(g, l, sub);
        OK(s.forward(g, l, g->nbuf, y, GPU_F32, 0, pos));
        OK(norm_forward(g, norm_slot(l, sub, 1), s.out, y, next, GPU_F32));
        CU(gpu_add_f32(next, x, n, g->stream));
        return 0;
    }
    CU(cudaMemcpyAsync(next, x, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, g->stream));
    return s.forward(g, l, g->nbuf, next, GPU_F32, 1, pos);
}

/* dresid holds d/d(point p + 1) and becomes d/d(point p). */
static int sublayer_backward(gpu_model *g, int l, int sub) {
    const gpu_layer *L = &g->layers[l];
    sublayer s = sublayer_of(L, sub);
    int p = 2 * l + sub;
    int64_t n = (int64_t)g->N * g->cfg.hidden_size;
    const float *x = gpu_resid(g, p), *dy32 = g->dresid;
    if (s.out->w) {
        /* the residual passes dresid on; the branch goes through the norm */
        CU(cudaMemsetAsync(g->dsub, 0, (size_t)n * sizeof(float), g->stream));
        OK(norm_backward(g, norm_slot(l, sub, 1), s.out, sub_out(g, l, sub), g->dresid, g->dsub));
        dy32 = g->dsub;
    }
    /* d(sublayer output) in the GEMMs' type */
    const void *dy = dy32;
    if (g->dt != GPU_F32) {
        CU(gpu_convert(g->dy, g->dt, dy32, GPU_F32, n, g->stream));
        dy = g->dy;
    }
    if (s.needs_input(L)) OK(sub_input(g, l, &s, x, 1));
    if (!s.in->w) return s.backward(g, l, g->nbuf, dy, g->dresid, 1);
    OK(s.backward(g, l, g->nbuf, dy, g->dnorm, 0));
    return norm_backward(g, norm_slot(l, sub, 0), s.in, x, g->dnorm, g->dresid);
}

/* ---- the blocks ------------------------------------------------------------------------- */

int gpu_blocks_forward(gpu_model *g) {
    for (int l = 0; l < g->cfg.num_layers; l++)
        for (int sub = 0; sub < 2; sub++) OK(sublayer_forward(g, l, sub, -1));
    return 0;
}

int gpu_blocks_backward(gpu_model *g) {
    for (int l = g->cfg.num_layers - 1; l >= 0; l--)
        for (int sub = 1; sub >= 0; sub--) OK(sublayer_backward(g, l, sub));
    return 0;
}

int gpu_blocks_decode(gpu_model *g, int pos) {
    for (int l = 0; l < g->cfg.num_layers; l++)
        for (int sub = 0; sub < 2; sub++) OK(sublayer_forward(g, l, sub, pos));
    return 0;
}
