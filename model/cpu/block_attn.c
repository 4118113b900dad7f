/* block_attn.c — a block's attention sublayer, forward and backward:
 *
 *   q, k, v = q_proj(h), k_proj(h), v_proj(h)     QKV_SEPARATE
 *           = column thirds of c_attn(h)          QKV_FUSED (GPT-2)
 *           = query_key_value(h) viewed (H, 3, D) QKV_HEADS (BLOOM): moved into
 *             the fused layout (alibi.c's cpu_qkv_heads)
 *   q, k    = qk_norm(q), qk_norm(k)              QK-norm (before RoPE, as
 *             Qwen3 / Apertus per head, OLMo 2 over the projection)
 *   q, k    = rope(q), rope(k)                    POS_ROPE (POS_ALIBI: a bias
 *             in the attention's scores, attention.c)
 *   y       = o(attn(q, k, v))
 *
 * Saved: q, k, v as attention reads them, the pre-norm q | k and the QK-norm
 * statistics, the attention output and log-sum-exps (acts.h). */
#include "model/cpu/acts.h"

/* A layer's q, k and v inside its block of N·W values. QKV_SEPARATE: three
 * contiguous matrices q (N, H·D), k and v (N, KV·D), the outputs of three
 * linears. QKV_FUSED (and QKV_HEADS, once moved): one (N, W) matrix whose
 * columns are q (H·D) | k (KV·D) | v (KV·D) (GPT-2's thirds, Phi-3's
 * qkv_proj). */
typedef struct {
    real *q, *k, *v;
    int ldq, ldk, ldv;
} qkv_view;

static qkv_view qkv_at(const model_acts *a, real *base) {
    const model_config *c = &a->m->cfg;
    int HD = c->num_heads * c->head_dim, KVD = c->num_kv_heads * c->head_dim;
    if (c->block.qkv == MODEL_QKV_FUSED || c->block.qkv == MODEL_QKV_HEADS)
        return (qkv_view){base, base + HD, base + HD + KVD, a->W, a->W, a->W};
    return (qkv_view){base, base + (size_t)a->N * HD, base + (size_t)a->N * (HD + KVD), HD, KVD,
                      KVD};
}

/* RoPE of layer l (POS_ROPE) on q and k, in place; inverse: the backward. */
static void layer_rope(const model_acts *a, int l, const qkv_view *v, int inverse) {
    const model_config *c = &a->m->cfg;
    int local = model_config_local_rope(c, l), R = model_config_rope_dim(c);
    const real *cs = local ? a->rope_lcos : a->rope_cos, *sn = local ? a->rope_lsin : a->rope_sin;
    cpu_rope_apply(v->q, v->ldq, a->N, a->T, c->num_heads, c->head_dim, R, cs, sn, inverse);
    cpu_rope_apply(v->k, v->ldk, a->N, a->T, c->num_kv_heads, c->head_dim, R, cs, sn, inverse);
}

int block_attn_needs_input(const model_layer *L) {
    if (L->qkv.w) return cpu_linear_needs_input(&L->qkv); /* QKV_FUSED, QKV_HEADS */
    return cpu_linear_needs_input(&L->q) || cpu_linear_needs_input(&L->k) ||
           cpu_linear_needs_input(&L->v);
}

int block_attn_forward(model_acts *a, int l, const real *h, real *y, int accumulate) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    const model_layer *L = &m->layers[l];
    int N = a->N, HD = c->num_heads * c->head_dim;
    qkv_view qv = qkv_at(a, a->qkv + acts_layer_off(a, l, a->W));
    real *att = a->att + acts_layer_off(a, l, HD);

    if (c->block.qkv == MODEL_QKV_FUSED) {
        TRY(cpu_linear_forward(m->precision, &L->qkv, h, qv.q, N, 0));
    } else if (c->block.qkv == MODEL_QKV_HEADS) {
        /* query_key_value's (H, 3, D) rows into dqkv (backward's scratch),
         * then into the fused layout */
        TRY(cpu_linear_forward(m->precision, &L->qkv, h, a->dqkv, N, 0));
        cpu_qkv_heads(qv.q, a->dqkv, N, c->num_heads, c->head_dim, 0);
    } else if (a->QK) {
        /* the projections into qk_raw (kept), normalized into q and k */
        real *q_raw = a->qk_raw + acts_layer_off(a, l, a->QK), *k_raw = q_raw + (size_t)N * HD;
        TRY(cpu_linear_forward(m->precision, &L->q, h, q_raw, N, 0));
        TRY(cpu_linear_forward(m->precision, &L->k, h, k_raw, N, 0));
        TRY(cpu_linear_forward(m->precision, &L->v, h, qv.v, N, 0));
        cpu_qk_norm_forward(c, L, qv.q, qv.k, q_raw, k_raw,
                            a->qk_rstd + acts_layer_off(a, l, a->QKR), N);
    } else {
        TRY(cpu_linear_forward(m->precision, &L->q, h, qv.q, N, 0));
        TRY(cpu_linear_forward(m->precision, &L->k, h, qv.k, N, 0));
        TRY(cpu_linear_forward(m->precision, &L->v, h, qv.v, N, 0));
    }
    if (c->block.pos == MODEL_POS_ROPE) layer_rope(a, l, &qv, 0);
    cpu_attn at = acts_attn(a, l);
    real *lse = a->att_lse + acts_layer_off(a, l, c->num_heads);
    if (m->precision == MODEL_PRECISION_BF16) {
        TRY(acts_attn_bf16(a, &at));
        TRY(cpu_attention_bf16_forward(&at, qv.q, qv.ldq, qv.k, qv.ldk, qv.v, qv.ldv, att, lse));
    } else {
        cpu_attention_forward(&at, qv.q, qv.ldq, qv.k, qv.ldk, qv.v, qv.ldv, att, lse);
    }
    return cpu_linear_forward(m->precision, &L->o, att, y, N, accumulate);
}

int block_attn_backward(model_acts *a, int l, const real *h, const real *dy, real *dh,
                        int accumulate_dh) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    model_layer *L = &m->layers[l];
    int N = a->N, HD = c->num_heads * c->head_dim;
    qkv_view qv = qkv_at(a, a->qkv + acts_layer_off(a, l, a->W));
    qkv_view dqv = qkv_at(a, a->dqkv);
    real *att = a->att + acts_layer_off(a, l, HD);

    TRY(cpu_linear_backward(m->precision, &L->o, att, dy, a->datt, N, 0));
    cpu_attn at = acts_attn(a, l);
    const real *lse = a->att_lse + acts_layer_off(a, l, c->num_heads);
    if (m->precision == MODEL_PRECISION_BF16) {
        TRY(acts_attn_bf16(a, &at));
        TRY(cpu_attention_bf16_backward(&at, qv.q, qv.ldq, qv.k, qv.ldk, qv.v, qv.ldv, att, a->datt,
                                        lse, dqv.q, dqv.k, dqv.v));
    } else {
        cpu_attention_backward(&at, qv.q, qv.ldq, qv.k, qv.ldk, qv.v, qv.ldv, att, a->datt, lse,
                               dqv.q, dqv.k, dqv.v);
    }
    if (c->block.pos == MODEL_POS_ROPE) layer_rope(a, l, &dqv, 1);
    if (c->block.qkv == MODEL_QKV_FUSED)
        return cpu_linear_backward(m->precision, &L->qkv, h, a->dqkv, dh, N, accumulate_dh);
    if (c->block.qkv == MODEL_QKV_HEADS) {
        /* d(q|k|v) back to query_key_value's (H, 3, D) rows, into the layer's
         * q|k|v block (read for the last time by the attention's backward) */
        cpu_qkv_heads(qv.q, a->dqkv, N, c->num_heads, c->head_dim, 1);
        return cpu_linear_backward(m->precision, &L->qkv, h, qv.q, dh, N, accumulate_dh);
    }
    real *dq = dqv.q, *dk = dqv.k;
    if (a->QK) {
        /* through the QK-norm: d(q_raw | k_raw) */
        real *q_raw = a->qk_raw + acts_layer_off(a, l, a->QK), *k_raw = q_raw + (size_t)N * HD;
        dq = a->dqk_raw;
        dk = dq + (size_t)N * HD;
        memset(dq, 0, (size_t)N * a->QK * sizeof(real));
        cpu_qk_norm_backward(c, L, dq, dk, dqv.q, dqv.k, q_raw, k_raw,
                             a->qk_rstd + acts_layer_off(a, l, a->QKR), N);
    }
    TRY(cpu_linear_backward(m->precision, &L->q, h, dq, dh, N, accumulate_dh));
    TRY(cpu_linear_backward(m->precision, &L->k, h, dk, dh, N, 1));
    return cpu_linear_backward(m->precision, &L->v, h, dqv.v, dh, N, 1);
}
