/* model_cpu.c — the transformer's forward and backward on the CPU, as Hugging
 * Face transformers computes them (modeling_llama.py, which Mistral and Qwen2
 * share, and modeling_gpt2.py):
 *
 *   Llama:  x = embed[tok]; per layer  h = x + o(attn(rope(q, k), v)), q,k,v = lin(rmsnorm1(x))
 *                                      x = h + down(silu(gate(n)) · up(n)), n = rmsnorm2(h)
 *           logits = lm_head(rmsnorm_f(x))
 *   GPT-2:  x = wte[tok] + wpe[t]; per layer  h = x + c_proj(attn(c_attn(ln_1(x))))
 *                                             x = h + mlp.c_proj(gelu_new(c_fc(ln_2(h))))
 *           logits = ln_f(x) · wteᵀ
 *
 * Saved for backward, per layer: the residual stream entering and in the
 * middle of the layer, the norms' row statistics, q, k, v (after RoPE), the
 * attention's per-row log-sum-exp and output, the MLP's pre-activations.
 * Cheap values are recomputed when a backward needs them (a weight gradient
 * or an adapter): the linears' normalized inputs from the row statistics and
 * down's input (GELU or SwiGLU of the pre-activations), one layer at a time;
 * the attention probabilities block by block (attention.c). */
#include "model/cpu/cpu.h"

#include "util/err.h"

#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* What the activations hold: nothing yet, a forward's, or a finished backward's. */
enum { ACTS_FRESH, ACTS_FORWARD, ACTS_BACKWARD };

struct model_acts {
    const model *m;
    int B, T, N;
    int W; /* width of a layer's q|k|v block: H·D + 2·KV·D */
    int state, has_targets;
    int32_t *tokens, *targets; /* (N) copies of the last forward's inputs */
    double *lse, *row_loss;    /* (N) loss log-sum-exp and per-row loss */
    cpu_attn attn;
    real *block;               /* one allocation holding every buffer below */
    real *rope_cos, *rope_sin; /* (T, D/2), Llama family */
    real *resid;               /* (2L+1, N, C) the stream at each point */
    real *norm_mean;           /* (2L+1, N) LayerNorm means; GPT-2 only */
    real *norm_rstd;           /* (2L+1, N) norm index p normalizes resid point p */
    real *qkv;                 /* (L, N·W) per layer: q | k | v (see qkv_at) */
    real *att_lse;             /* (L, B, H, T) */
    real *att;                 /* (L, N, H·D) attention output, o's input */
    real *fc_a;                /* (L, N, F) gate_proj (Llama) or c_fc (GPT-2) output */
    real *fc_b;                /* (L, N, F) up_proj output, Llama only */
    real *act;                 /* (N, F) down's input, scratch: recomputed in backward */
    real *xf;                  /* (N, C) final norm output */
    real *logits;              /* (N, V) */
    real *nbuf;                /* (N, C) a norm's output, scratch */
    real *dresid, *dnorm;      /* (N, C) backward scratch */
    real *dqkv;                /* (N·W) */
    real *datt;                /* (N, H·D) */
    real *dfa, *dfb;           /* (N, F) */
    real *resid_grads;         /* (2L+1, N, C) when kept, else NULL */
    int probe_point;           /* −1: none */
    int64_t probe_index;
    double probe_delta;
};

/* ---- buffers ------------------------------------------------------------------ */

/* Hands out n values from the block, or counts them when the block is not
 * there yet; each buffer starts on a 64-byte boundary. */
static real *carve(model_acts *a, size_t *used, size_t n) {
    real *p = a->block ? a->block + *used : NULL;
    *used += (n + 15) / 16 * 16;
    return p;
}

static size_t acts_layout(model_acts *a) {
    const model_config *c = &a->m->cfg;
    size_t N = (size_t)a->N, C = (size_t)c->hidden_size, L = (size_t)c->num_layers;
    size_t F = (size_t)c->intermediate_size, V = (size_t)c->vocab_size;
    size_t HD = (size_t)c->num_heads * c->head_dim, W = (size_t)a->W, P = 2 * L + 1;
    int llama = c->arch == MODEL_ARCH_LLAMA;
    size_t used = 0;
    a->rope_cos = llama ? carve(a, &used, (size_t)a->T * c->head_dim / 2) : NULL;
    a->rope_sin = llama ? carve(a, &used, (size_t)a->T * c->head_dim / 2) : NULL;
    a->resid = carve(a, &used, P * N * C);
    a->norm_mean = llama ? NULL : carve(a, &used, P * N);
    a->norm_rstd = carve(a, &used, P * N);
    a->qkv = carve(a, &used, L * N * W);
    a->att_lse = carve(a, &used, L * N * c->num_heads);
    a->att = carve(a, &used, L * N * HD);
    a->fc_a = carve(a, &used, L * N * F);
    a->fc_b = llama ? carve(a, &used, L * N * F) : NULL;
    a->act = carve(a, &used, N * F);
    a->xf = carve(a, &used, N * C);
    a->logits = carve(a, &used, N * V);
    a->nbuf = carve(a, &used, N * C);
    a->dresid = carve(a, &used, N * C);
    a->dnorm = carve(a, &used, N * C);
    a->dqkv = carve(a, &used, N * W);
    a->datt = carve(a, &used, N * HD);
    a->dfa = carve(a, &used, N * F);
    a->dfb = llama ? carve(a, &used, N * F) : NULL;
    a->attn.scratch = carve(a, &used, (size_t)a->attn.threads * CPU_ATTN_SCRATCH(a->T));
    return used;
}

int model_acts_create(model_acts **out, const model *m, int B, int T) {
    *out = NULL;
    const model_config *c = &m->cfg;
    if (B <= 0 || T <= 0)
        return err_set("activations for batch %d x sequence %d: both must be positive", B, T);
    if ((int64_t)B * T > INT_MAX / 4)
        return err_set("activations for batch %d x sequence %d: too many tokens in one batch", B,
                       T);
    if (c->arch == MODEL_ARCH_GPT2 && T > c->max_position)
        return err_set("sequence length %d exceeds the model's %d learned positions (n_positions); "
                       "use --seq %d or less",
                       T, c->max_position, c->max_position);
    cpu_init();
    model_acts *a = calloc(1, sizeof *a);
    if (!a) return err_set("out of memory for the activations");
    a->m = m;
    a->B = B;
    a->T = T;
    a->N = B * T;
    a->W = (c->num_heads + 2 * c->num_kv_heads) * c->head_dim;
    a->state = ACTS_FRESH;
    a->probe_point = -1;
    a->attn = (cpu_attn){.B = B,
                         .T = T,
                         .H = c->num_heads,
                         .KV = c->num_kv_heads,
                         .D = c->head_dim,
                         .window = c->sliding_window,
                         .scale = (real)(1.0 / sqrt((double)c->head_dim)),
                         .threads = omp_get_max_threads()};
    size_t n = acts_layout(a);
    if (n > SIZE_MAX / sizeof(real) / 2) {
        free(a);
        return err_set("activations for batch %d x sequence %d: size overflows", B, T);
    }
    if (posix_memalign((void **)&a->block, 64, n * sizeof(real)) != 0) a->block = NULL;
    a->tokens = malloc((size_t)a->N * sizeof *a->tokens);
    a->targets = malloc((size_t)a->N * sizeof *a->targets);
    a->lse = malloc((size_t)a->N * sizeof *a->lse);
    a->row_loss = malloc((size_t)a->N * sizeof *a->row_loss);
    if (!a->block || !a->tokens || !a->targets || !a->lse || !a->row_loss) {
        model_acts_free(a);
        return err_set("out of memory: activations for batch %d x sequence %d need %.2f GB; "
                       "use a smaller --batch or --seq",
                       B, T, (double)n * sizeof(real) / 1e9);
    }
    acts_layout(a);
    if (a->rope_cos) cpu_rope_table(a->rope_cos, a->rope_sin, c, T);
    *out = a;
    return 0;
}

void model_acts_free(model_acts *a) {
    if (!a) return;
    free(a->block);
    free(a->tokens);
    free(a->targets);
    free(a->lse);
    free(a->row_loss);
    free(a->resid_grads);
    free(a);
}

const real *model_acts_logits(const model_acts *a) {
    return a->logits;
}

int model_acts_keep_resid_grads(model_acts *a) {
    if (a->resid_grads) return 0;
    const model_config *c = &a->m->cfg;
    size_t n = (size_t)MODEL_RESID_POINTS(c) * a->N * c->hidden_size;
    a->resid_grads = calloc(n, sizeof(real));
    if (!a->resid_grads) return err_set("out of memory keeping the residual-stream gradients");
    return 0;
}

const real *model_acts_resid_grad(const model_acts *a, int point) {
    const model_config *c = &a->m->cfg;
    if (!a->resid_grads || point < 0 || point >= MODEL_RESID_POINTS(c)) return NULL;
    return a->resid_grads + (size_t)point * a->N * c->hidden_size;
}

int model_acts_set_probe(model_acts *a, int point, int64_t index, double delta) {
    const model_config *c = &a->m->cfg;
    if (point >= MODEL_RESID_POINTS(c) ||
        (point >= 0 && (index < 0 || index >= (int64_t)a->N * c->hidden_size)))
        return err_set("probe at point %d, index %lld: out of range (%d points of %lld values)",
                       point, (long long)index, MODEL_RESID_POINTS(c),
                       (long long)a->N * c->hidden_size);
    a->probe_point = point < 0 ? -1 : point;
    a->probe_index = index;
    a->probe_delta = delta;
    return 0;
}

/* ---- views --------------------------------------------------------------------- */

static real *resid_at(const model_acts *a, int point) {
    return a->resid + (size_t)point * a->N * a->m->cfg.hidden_size;
}

/* A layer's q, k and v inside its block of N·W values. Llama family: three
 * contiguous matrices q (N, H·D), k and v (N, KV·D), the outputs of three
 * linears. GPT-2: one (N, 3C) matrix, c_attn's output, whose column thirds are
 * q, k and v. */
typedef struct {
    real *q, *k, *v;
    int ldq, ldk, ldv;
} qkv_view;

static qkv_view qkv_at(const model_acts *a, real *base) {
    const model_config *c = &a->m->cfg;
    int HD = c->num_heads * c->head_dim, KVD = c->num_kv_heads * c->head_dim;
    if (c->arch == MODEL_ARCH_GPT2)
        return (qkv_view){base, base + HD, base + 2 * HD, a->W, a->W, a->W};
    return (qkv_view){base, base + (size_t)a->N * HD, base + (size_t)a->N * (HD + KVD), HD, KVD,
                      KVD};
}

static size_t layer_off(const model_acts *a, int l, size_t per_row) {
    return (size_t)l * a->N * per_row;
}

static void probe(model_acts *a, int point) {
    if (a->probe_point == point) resid_at(a, point)[a->probe_index] += (real)a->probe_delta;
}

static void keep_grad(model_acts *a, int point) {
    const model_config *c = &a->m->cfg;
    if (a->resid_grads)
        memcpy(a->resid_grads + (size_t)point * a->N * c->hidden_size, a->dresid,
               (size_t)a->N * c->hidden_size * sizeof(real));
}

/* ---- norms by architecture: norm index p normalizes resid point p ------------ */

static void norm_forward(model_acts *a, int p, const model_param *w, const model_param *b,
                         real *y) {
    const model_config *c = &a->m->cfg;
    const real *x = resid_at(a, p);
    real *rstd = a->norm_rstd + (size_t)p * a->N;
    if (c->arch == MODEL_ARCH_GPT2)
        cpu_layernorm_forward(y, a->norm_mean + (size_t)p * a->N, rstd, x, w->data, b->data, a->N,
                              c->hidden_size, c->norm_eps);
    else
        cpu_rmsnorm_forward(y, rstd, x, w->data, a->N, c->hidden_size, c->norm_eps);
}

static void norm_apply(model_acts *a, int p, const model_param *w, const model_param *b, real *y) {
    const model_config *c = &a->m->cfg;
    const real *x = resid_at(a, p), *rstd = a->norm_rstd + (size_t)p * a->N;
    if (c->arch == MODEL_ARCH_GPT2)
        cpu_layernorm_apply(y, x, w->data, b->data, a->norm_mean + (size_t)p * a->N, rstd, a->N,
                            c->hidden_size);
    else
        cpu_rmsnorm_apply(y, x, w->data, rstd, a->N, c->hidden_size);
}

/* dresid += d(norm)/dx · dy; the norm's weight gradients when requested. */
static void norm_backward(model_acts *a, int p, model_param *w, model_param *b, const real *dy) {
    const model_config *c = &a->m->cfg;
    const real *x = resid_at(a, p), *rstd = a->norm_rstd + (size_t)p * a->N;
    if (c->arch == MODEL_ARCH_GPT2)
        cpu_layernorm_backward(a->dresid, w->grad, b->grad, dy, x, w->data,
                               a->norm_mean + (size_t)p * a->N, rstd, a->N, c->hidden_size);
    else
        cpu_rmsnorm_backward(a->dresid, w->grad, dy, x, w->data, rstd, a->N, c->hidden_size);
}

/* ---- forward ----------------------------------------------------------------- */

static int layer_forward(model_acts *a, int l) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    const model_layer *L = &m->layers[l];
    int N = a->N, C = c->hidden_size, F = c->intermediate_size;
    int HD = c->num_heads * c->head_dim, llama = c->arch == MODEL_ARCH_LLAMA;
    size_t resid_bytes = (size_t)N * C * sizeof(real);
    qkv_view qv = qkv_at(a, a->qkv + layer_off(a, l, a->W));
    real *att = a->att + layer_off(a, l, HD);
    real *fa = a->fc_a + layer_off(a, l, F);

    /* attention block: point 2l → 2l+1 */
    norm_forward(a, 2 * l, L->norm1_w, L->norm1_b, a->nbuf);
    if (llama) {
        TRY(cpu_linear_forward(m->precision, &L->q, a->nbuf, qv.q, N, 0));
        TRY(cpu_linear_forward(m->precision, &L->k, a->nbuf, qv.k, N, 0));
        TRY(cpu_linear_forward(m->precision, &L->v, a->nbuf, qv.v, N, 0));
        cpu_rope_apply(qv.q, qv.ldq, N, a->T, c->num_heads, c->head_dim, a->rope_cos, a->rope_sin,
                       0);
        cpu_rope_apply(qv.k, qv.ldk, N, a->T, c->num_kv_heads, c->head_dim, a->rope_cos,
                       a->rope_sin, 0);
    } else {
        TRY(cpu_linear_forward(m->precision, &L->qkv, a->nbuf, qv.q, N, 0));
    }
    cpu_attention_forward(&a->attn, qv.q, qv.ldq, qv.k, qv.ldk, qv.v, qv.ldv, att,
                          a->att_lse + layer_off(a, l, c->num_heads));
    memcpy(resid_at(a, 2 * l + 1), resid_at(a, 2 * l), resid_bytes);
    TRY(cpu_linear_forward(m->precision, &L->o, att, resid_at(a, 2 * l + 1), N, 1));
    probe(a, 2 * l + 1);

    /* MLP block: point 2l+1 → 2l+2 */
    norm_forward(a, 2 * l + 1, L->norm2_w, L->norm2_b, a->nbuf);
    if (llama) {
        real *fb = a->fc_b + layer_off(a, l, F);
        TRY(cpu_linear_forward(m->precision, &L->gate, a->nbuf, fa, N, 0));
        TRY(cpu_linear_forward(m->precision, &L->up, a->nbuf, fb, N, 0));
        cpu_swiglu_forward(a->act, fa, fb, (int64_t)N * F);
    } else {
        TRY(cpu_linear_forward(m->precision, &L->up, a->nbuf, fa, N, 0));
        cpu_gelu_forward(a->act, fa, (int64_t)N * F);
    }
    memcpy(resid_at(a, 2 * l + 2), resid_at(a, 2 * l + 1), resid_bytes);
    TRY(cpu_linear_forward(m->precision, &L->down, a->act, resid_at(a, 2 * l + 2), N, 1));
    probe(a, 2 * l + 2);
    return 0;
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
    cpu_embed_forward(resid_at(a, 0), a->tokens, m->wte, m->wpe, 0, N, a->T, c->hidden_size);
    probe(a, 0);
    for (int l = 0; l < Lyr; l++) TRY(layer_forward(a, l));
    norm_forward(a, 2 * Lyr, m->norm_f_w, m->norm_f_b, a->xf);
    model_linear head = lm_head_linear(m);
    TRY(cpu_linear_forward(m->precision, &head, a->xf, a->logits, N, 0));

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
    }
    if (loss_sum) *loss_sum = sum;
    if (n_targets) *n_targets = count;
    a->state = ACTS_FORWARD;
    return 0;
}

/* ---- backward ---------------------------------------------------------------- */

static int layer_backward(model_acts *a, int l) {
    const model *m = a->m;
    const model_config *c = &m->cfg;
    model_layer *L = &m->layers[l];
    int N = a->N, F = c->intermediate_size;
    int HD = c->num_heads * c->head_dim, llama = c->arch == MODEL_ARCH_LLAMA;
    qkv_view qv = qkv_at(a, a->qkv + layer_off(a, l, a->W));
    qkv_view dqv = qkv_at(a, a->dqkv);
    real *att = a->att + layer_off(a, l, HD);
    real *fa = a->fc_a + layer_off(a, l, F), *fb = llama ? a->fc_b + layer_off(a, l, F) : NULL;

    /* MLP block: dresid holds d/d(point 2l+2) and becomes d/d(point 2l+1). */
    if (cpu_linear_needs_input(&L->down)) {
        if (llama)
            cpu_swiglu_forward(a->act, fa, fb, (int64_t)N * F);
        else
            cpu_gelu_forward(a->act, fa, (int64_t)N * F);
    }
    TRY(cpu_linear_backward(m->precision, &L->down, a->act, a->dresid, a->dfa, N, 0));
    if (llama) {
        cpu_swiglu_backward(a->dfa, a->dfb, a->dfa, fa, fb, (int64_t)N * F);
        if (cpu_linear_needs_input(&L->gate) || cpu_linear_needs_input(&L->up))
            norm_apply(a, 2 * l + 1, L->norm2_w, L->norm2_b, a->nbuf);
        TRY(cpu_linear_backward(m->precision, &L->gate, a->nbuf, a->dfa, a->dnorm, N, 0));
        TRY(cpu_linear_backward(m->precision, &L->up, a->nbuf, a->dfb, a->dnorm, N, 1));
    } else {
        cpu_gelu_backward(a->dfa, a->dfa, fa, (int64_t)N * F);
        if (cpu_linear_needs_input(&L->up))
            norm_apply(a, 2 * l + 1, L->norm2_w, L->norm2_b, a->nbuf);
        TRY(cpu_linear_backward(m->precision, &L->up, a->nbuf, a->dfa, a->dnorm, N, 0));
    }
    norm_backward(a, 2 * l + 1, L->norm2_w, L->norm2_b, a->dnorm);
    keep_grad(a, 2 * l + 1);

    /* attention block: d/d(point 2l+1) → d/d(point 2l) */
    TRY(cpu_linear_backward(m->precision, &L->o, att, a->dresid, a->datt, N, 0));
    cpu_attention_backward(&a->attn, qv.q, qv.ldq, qv.k, qv.ldk, qv.v, qv.ldv, att, a->datt,
                           a->att_lse + layer_off(a, l, c->num_heads), dqv.q, dqv.k, dqv.v);
    if (llama) {
        cpu_rope_apply(dqv.q, dqv.ldq, N, a->T, c->num_heads, c->head_dim, a->rope_cos, a->rope_sin,
                       1);
        cpu_rope_apply(dqv.k, dqv.ldk, N, a->T, c->num_kv_heads, c->head_dim, a->rope_cos,
                       a->rope_sin, 1);
        if (cpu_linear_needs_input(&L->q) || cpu_linear_needs_input(&L->k) ||
            cpu_linear_needs_input(&L->v))
            norm_apply(a, 2 * l, L->norm1_w, L->norm1_b, a->nbuf);
        TRY(cpu_linear_backward(m->precision, &L->q, a->nbuf, dqv.q, a->dnorm, N, 0));
        TRY(cpu_linear_backward(m->precision, &L->k, a->nbuf, dqv.k, a->dnorm, N, 1));
        TRY(cpu_linear_backward(m->precision, &L->v, a->nbuf, dqv.v, a->dnorm, N, 1));
    } else {
        if (cpu_linear_needs_input(&L->qkv)) norm_apply(a, 2 * l, L->norm1_w, L->norm1_b, a->nbuf);
        TRY(cpu_linear_backward(m->precision, &L->qkv, a->nbuf, a->dqkv, a->dnorm, N, 0));
    }
    norm_backward(a, 2 * l, L->norm1_w, L->norm1_b, a->dnorm);
    keep_grad(a, 2 * l);
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

    cpu_xent_backward(a->logits, a->lse, a->targets, N, c->vocab_size, scale);
    model_linear head = lm_head_linear(m);
    TRY(cpu_linear_backward(m->precision, &head, a->xf, a->logits, a->dnorm, N, 0));
    memset(a->dresid, 0, (size_t)N * c->hidden_size * sizeof(real));
    norm_backward(a, 2 * Lyr, m->norm_f_w, m->norm_f_b, a->dnorm);
    keep_grad(a, 2 * Lyr);
    for (int l = Lyr - 1; l >= 0; l--) TRY(layer_backward(a, l));
    cpu_embed_backward(m->wte->grad, m->wpe ? m->wpe->grad : NULL, a->dresid, a->tokens, N, a->T,
                       c->hidden_size);
    return 0;
}
