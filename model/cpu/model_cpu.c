/* model_cpu.c — the transformer's forward and backward on the CPU, as Hugging
 * Face transformers computes them (modeling_llama.py, which Mistral and Qwen2
 * share, modeling_qwen3.py, modeling_olmo2.py, modeling_apertus.py,
 * modeling_gpt2.py, modeling_gemma2.py, modeling_gemma3.py, modeling_phi3.py,
 * modeling_mixtral.py and modeling_bloom.py).
 * One graph, shaped by the block options of the config (model/config.h,
 * model_block):
 *
 *   x = embed[tok] (+ wpe[t], POS_LEARNED) (· √C, embed_scale), then norm(x)
 *       with embed_norm
 *   per block, for sublayer f in (attention, MLP):
 *       x = x + post(f(pre(x)))      pre: the input norm (pre_norm), post: the
 *                                    output norm (post_norm), else identity
 *   logits = lm_head(norm_f(x))      (or the tied embedding; soft-capped
 *                                    cap · tanh(logits / cap) with final_softcap)
 *
 * Llama: pre RMSNorm, no post; GPT-2: pre LayerNorm; OLMo 2: post RMSNorm
 * only; Gemma: both, RMSNorm with (1 + w); BLOOM: pre LayerNorm and a
 * LayerNorm on the embedding. The sublayers are block_attn.c and
 * block_mlp.c. With a mixture of experts and output_router_logits the loss
 * adds router_aux_loss_coef · aux (moe.c) to the mean cross-entropy, as
 * transformers' MixtralForCausalLM does: loss_sum gets coef · aux · n_targets.
 *
 * Saved for backward, per layer: the residual stream entering and in the
 * middle of the layer, every norm's row statistics, the sublayers' outputs
 * before a post-norm, and what the sublayers keep (acts.h). Cheap values are
 * recomputed when a backward needs them (a weight gradient or an adapter):
 * the normalized inputs of the sublayers from the row statistics, down's
 * input, and the attention probabilities block by block (attention.c). */
#include "model/cpu/acts.h"

#include "util/err.h"

#include <string.h>

static void probe(model_acts *a, int point) {
    if (a->probe_point == point) acts_resid(a, point)[a->probe_index] += (real)a->probe_delta;
}

static void keep_grad(model_acts *a, int point) {
    const model_config *c = &a->m->cfg;
    if (a->resid_grads)
        memcpy(a->resid_grads + (size_t)point * a->N * c->hidden_size, a->dresid,
               (size_t)a->N * c->hidden_size * sizeof(real));
}

/* x (n values) *= the embedding's scale (Gemma's √C). */
static void scale_rows(real *x, int64_t n, const model_config *c) {
    real s = cpu_embed_scale(c);
#pragma omp parallel for simd if (n > 32768)
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

/* ---- norms: slot s of the statistics ---------------------------------------- */

static void norm_forward(model_acts *a, int s, const model_norm *nm, const real *x, real *y) {
    const model_config *c = &a->m->cfg;
    cpu_norm_forward(c->block.norm, nm, y, acts_norm_mean(a, s), acts_norm_rstd(a, s), x, a->N,
                     c->hidden_size, c->norm_eps);
}

static void norm_apply(model_acts *a, int s, const model_norm *nm, const real *x, real *y) {
    const model_config *c = &a->m->cfg;
    cpu_norm_apply(c->block.norm, nm, y, x, acts_norm_mean(a, s), acts_norm_rstd(a, s), a->N,
                   c->hidden_size);
}

/* dx += d(norm)/dx · dy; the norm's gradients when requested. */
static void norm_backward(model_acts *a, int s, const model_norm *nm, const real *x, const real *dy,
                          real *dx) {
    const model_config *c = &a->m->cfg;
    cpu_norm_backward(c->block.norm, nm, dx, dy, x, acts_norm_mean(a, s), acts_norm_rstd(a, s),
                      a->N, c->hidden_size);
}

/* ---- a block: two sublayers around the residual stream --------------------- */

typedef int (*sub_forward)(model_acts *a, int l, const real *h, real *y, int accumulate);
typedef int (*sub_backward)(model_acts *a, int l, const real *h, const real *dy, real *dh,
                            int accumulate_dh);

/* One sublayer of block l (sub 0 attention, 1 MLP) and its norms: point p
 * (= 2l + sub) → p + 1. */
typedef struct {
    int sub;
    const model_norm *in, *out; /* the layer's pre- and post-norm (w NULL: none) */
    sub_forward forward;
    sub_backward backward;
    int (*needs_input)(const model_layer *L);
} sublayer;

static sublayer sublayer_of(const model_layer *L, int sub) {
    if (sub == 0)
        return (sublayer){0,
                          &L->attn_in,
                          &L->attn_out,
                          block_attn_forward,
                          block_attn_backward,
                          block_attn_needs_input};
    return (sublayer){
        1, &L->mlp_in, &L->mlp_out, block_mlp_forward, block_mlp_backward, block_mlp_needs_input};
}

static int norm_slot(int l, int sub, int out) {
    return ACTS_NORMS * l + (sub ? ACTS_NORM_MLP_IN : ACTS_NORM_ATTN_IN) + out;
}

static real *sub_out(const model_acts *a, int l, int sub) {
    return a->sub_out + ((size_t)2 * l + sub) * a->N * a->m->cfg.hidden_size;
}

static int sublayer_forward(model_acts *a, int l, const sublayer *s) {
    int C = a->m->cfg.hidden_size, p = 2 * l + s->sub;
    size_t bytes = (size_t)a->N * C * sizeof(real);
    const real *x = acts_resid(a, p);
    real *next = acts_resid(a, p + 1);
    const real *h = x;
    if (s->in->w) {
        norm_forward(a, norm_slot(l, s->sub, 0), s->in, x, a->nbuf);
        h = a->nbuf;
    }
    if (s->out->w) {
        /* next = x + norm(f(h)) */
        real *y = sub_out(a, l, s->sub);
        TRY(s->forward(a, l, h, y, 0));
        norm_forward(a, norm_slot(l, s->sub, 1), s->out, y, next);
        int64_t n = (int64_t)a->N * C;
#pragma omp parallel for simd if (n > 32768)
        for (int64_t i = 0; i < n; i++) next[i] += x[i];
    } else {
        /* next = x + f(h), the sublayer's last linear adding onto a copy of x */
        memcpy(next, x, bytes);
        TRY(s->forward(a, l, h, next, 1));
    }
    probe(a, p + 1);
    return 0;
}

/* dresid holds d/d(point p + 1) and becomes d/d(point p). */
static int sublayer_backward(model_acts *a, int l, const sublayer *s) {
    const model_layer *L = &a->m->layers[l];
    int p = 2 * l + s->sub;
    const real *x = acts_resid(a, p), *dy = a->dresid;
    if (s->out->w) {
        /* the residual passes dresid on as it is; the branch goes through the norm */
        memset(a->dsub, 0, (size_t)a->N * a->m->cfg.hidden_size * sizeof(real));
        norm_backward(a, norm_slot(l, s->sub, 1), s->out, sub_out(a, l, s->sub), a->dresid,
                      a->dsub);
        dy = a->dsub;
    }
    if (!s->in->w) return s->backward(a, l, x, dy, a->dresid, 1);
    if (s->needs_input(L)) norm_apply(a, norm_slot(l, s->sub, 0), s->in, x, a->nbuf);
    TRY(s->backward(a, l, a->nbuf, dy, a->dnorm, 0));
    norm_backward(a, norm_slot(l, s->sub, 0), s->in, x, a->dnorm, a->dresid);
    return 0;
}

/* ---- forward ----------------------------------------------------------------- */

static int layer_forward(model_acts *a, int l) {
    const model_layer *L = &a->m->layers[l];
    for (int sub = 0; sub < 2; sub++) {
        sublayer s = sublayer_of(L, sub);
        TRY(sublayer_forward(a, l, &s));
    }
    return 0;
}

/* The embedding norm's statistics follow the final norm's. */
static int embed_slot(const model_acts *a) {
    return ACTS_NORMS * a->m->cfg.num_layers + 1;
}

/* Point 0 of the stream: the embedding, through its norm where the block
 * has one (BLOOM's word_embeddings_layernorm). */
static void embed_forward(model_acts *a) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    real *x0 = acts_resid(a, 0);
    real *e = c->block.embed_norm ? a->emb : x0;
    cpu_embed_forward(e, a->tokens, m->wte, m->wpe, 0, a->N, a->T, c->hidden_size);
    if (c->block.embed_scale) scale_rows(e, (int64_t)a->N * c->hidden_size, c);
    if (c->block.embed_norm) norm_forward(a, embed_slot(a), &m->embed_norm, a->emb, x0);
}

/* dresid holds d/d(point 0): the embedding's gradients. */
static void embed_backward(model_acts *a) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    real *de = a->dresid;
    if (c->block.embed_norm) {
        memset(a->dnorm, 0, (size_t)a->N * c->hidden_size * sizeof(real));
        norm_backward(a, embed_slot(a), &m->embed_norm, a->emb, a->dresid, a->dnorm);
        de = a->dnorm;
    }
    /* through the embedding's scale (Gemma): d(wte[tok]) = s · d(stream) */
    if (c->block.embed_scale) scale_rows(de, (int64_t)a->N * c->hidden_size, c);
    cpu_embed_backward(m->wte->grad, m->wpe ? m->wpe->grad : NULL, de, a->tokens, a->N, a->T,
                       c->hidden_size);
}

static model_linear lm_head_linear(const model *m) {
    return (model_linear){.w = m->lm_head, .in = m->cfg.hidden_size, .out = m->cfg.vocab_size};
}

int model_forward(const model *m, model_acts *a, const int32_t *tokens, const int32_t *targets,
                  double *loss_sum, int64_t *n_targets) {
    const model_config *c = &m->cfg;
    int N = a->N, V = c->vocab_size, Lyr = c->num_layers;
    if (a->m != m) return err_set("model_forward: the activations were created for another model");
    for (int n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= V)
            return err_set("token id %d at batch row %d, position %d is outside the vocabulary "
                           "[0, %d): the data was tokenized for another model",
                           tokens[n], n / a->T, n % a->T, V);
        if (targets && targets[n] != MODEL_IGNORE_INDEX && (targets[n] < 0 || targets[n] >= V))
            return err_set("target id %d at batch row %d, position %d is outside the vocabulary "
                           "[0, %d) and is not the ignore index %d",
                           targets[n], n / a->T, n % a->T, V, MODEL_IGNORE_INDEX);
    }
    memcpy(a->tokens, tokens, (size_t)N * sizeof *tokens);
    a->has_targets = targets != NULL;
    if (targets) memcpy(a->targets, targets, (size_t)N * sizeof *targets);

    a->state = ACTS_FRESH;
    embed_forward(a);
    probe(a, 0);
    for (int l = 0; l < Lyr; l++) TRY(layer_forward(a, l));
    norm_forward(a, ACTS_NORMS * Lyr, &m->norm_f, acts_resid(a, 2 * Lyr), a->xf);
    model_linear head = lm_head_linear(m);
    TRY(cpu_linear_forward(m->precision, &head, a->xf, a->logits, N, 0));
    if (c->final_softcap) cpu_softcap_forward(a->logits, (int64_t)N * V, (real)c->final_softcap);

    double sum = 0;
    int64_t count = 0;
    if (targets) {
        cpu_xent_forward(a->lse, a->row_loss, a->logits, a->targets, N, V);
        /* Summed in row order, so the loss does not depend on the thread count. */
        for (int n = 0; n < N; n++) {
            if (a->targets[n] == MODEL_IGNORE_INDEX) continue;
            sum += a->row_loss[n];
            count++;
        }
        if (c->block.mlp == MODEL_MLP_MOE && c->router_aux_loss)
            sum += c->router_aux_loss_coef * cpu_moe_aux_loss(a->moe) * (double)count;
    }
    a->n_targets = count;
    if (loss_sum) *loss_sum = sum;
    if (n_targets) *n_targets = count;
    a->state = ACTS_FORWARD;
    return 0;
}

/* ---- backward ---------------------------------------------------------------- */

static int layer_backward(model_acts *a, int l) {
    const model_layer *L = &a->m->layers[l];
    for (int sub = 1; sub >= 0; sub--) {
        sublayer s = sublayer_of(L, sub);
        TRY(sublayer_backward(a, l, &s));
        keep_grad(a, 2 * l + sub);
    }
    return 0;
}

int model_backward(model *m, model_acts *a, double scale) {
    const model_config *c = &m->cfg;
    int N = a->N, Lyr = c->num_layers;
    if (a->m != m) return err_set("model_backward: the activations were created for another model");
    if (a->state != ACTS_FORWARD)
        return err_set("model_backward needs a forward first (and one backward per forward)");
    if (!a->has_targets)
        return err_set("model_backward: the last forward had no targets, so there is no loss");
    a->state = ACTS_BACKWARD;
    /* d(scale · loss_sum)/d aux, loss_sum holding coef · aux · n_targets */
    a->aux_grad = c->block.mlp == MODEL_MLP_MOE && c->router_aux_loss
                      ? scale * c->router_aux_loss_coef * (double)a->n_targets
                      : 0;

    if (c->final_softcap)
        cpu_xent_softcap_backward(a->logits, a->lse, a->targets, N, c->vocab_size, scale,
                                  (real)c->final_softcap);
    else
        cpu_xent_backward(a->logits, a->lse, a->targets, N, c->vocab_size, scale);
    model_linear head = lm_head_linear(m);
    TRY(cpu_linear_backward(m->precision, &head, a->xf, a->logits, a->dnorm, N, 0));
    memset(a->dresid, 0, (size_t)N * c->hidden_size * sizeof(real));
    norm_backward(a, ACTS_NORMS * Lyr, &m->norm_f, acts_resid(a, 2 * Lyr), a->dnorm, a->dresid);
    keep_grad(a, 2 * Lyr);
    for (int l = Lyr - 1; l >= 0; l--) TRY(layer_backward(a, l));
    embed_backward(a);
    return 0;
}
