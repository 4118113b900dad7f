/* acts.c — the activations' buffers (acts.h says what each holds), the
 * residual-stream gradients kept for checks, and the probe. */
#include "model/cpu/acts.h"

#include "util/err.h"

#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Hands out n values from the block, or counts them when the block is not
 * there yet; each buffer starts on a 64-byte boundary. */
static real *carve(model_acts *a, size_t *used, size_t n) {
    real *p = a->block ? a->block + *used : NULL;
    *used += (n + 15) / 16 * 16;
    return p;
}

/* carve, or NULL (nothing counted) when the block does not need the buffer. */
static real *carve_if(int want, model_acts *a, size_t *used, size_t n) {
    return want ? carve(a, used, n) : NULL;
}

static size_t acts_layout(model_acts *a) {
    const model_config *c = &a->m->cfg;
    const model_block *bk = &c->block;
    size_t N = (size_t)a->N, C = (size_t)c->hidden_size, L = (size_t)c->num_layers;
    size_t F = (size_t)c->intermediate_size, V = (size_t)c->vocab_size;
    size_t HD = (size_t)c->num_heads * c->head_dim, W = (size_t)a->W, P = 2 * L + 1;
    size_t S = ACTS_NORMS * L + 1 + (size_t)bk->embed_norm; /* norm slots */
    int rope = bk->pos == MODEL_POS_ROPE, gated = model_block_gated(bk);
    int dense = bk->mlp != MODEL_MLP_MOE; /* MoE's buffers are moe.c's */
    int local = rope && c->rope_local_theta > 0;
    size_t rope_n = (size_t)a->T * (size_t)(model_config_rope_dim(c) / 2);
    size_t used = 0;
    a->rope_cos = carve_if(rope, a, &used, rope_n);
    a->rope_sin = carve_if(rope, a, &used, rope_n);
    a->rope_lcos = carve_if(local, a, &used, rope_n);
    a->rope_lsin = carve_if(local, a, &used, rope_n);
    a->alibi = carve_if(bk->pos == MODEL_POS_ALIBI, a, &used, (size_t)c->num_heads);
    a->emb = carve_if(bk->embed_norm, a, &used, N * C);
    a->resid = carve(a, &used, P * N * C);
    a->norm_mean = carve_if(bk->norm == MODEL_NORM_LAYER, a, &used, S * N);
    a->norm_rstd = carve(a, &used, S * N);
    a->qkv = carve(a, &used, L * N * W);
    a->qk_raw = carve_if(a->QK > 0, a, &used, L * N * a->QK);
    a->qk_rstd = carve_if(a->QK > 0, a, &used, L * N * a->QKR);
    a->att_lse = carve(a, &used, L * N * c->num_heads);
    a->att = carve(a, &used, L * N * HD);
    a->sub_out = carve_if(bk->post_norm, a, &used, L * 2 * N * C);
    a->fc_a = carve_if(dense, a, &used, L * N * F);
    a->fc_b = carve_if(gated, a, &used, L * N * F);
    a->fc_fused = carve_if(bk->mlp == MODEL_MLP_GATED_FUSED, a, &used, N * 2 * F);
    a->act = carve_if(dense, a, &used, N * F);
    a->xf = carve(a, &used, N * C);
    a->logits = carve(a, &used, N * V);
    a->nbuf = carve(a, &used, N * C);
    a->dresid = carve(a, &used, N * C);
    a->dnorm = carve(a, &used, N * C);
    a->dsub = carve_if(bk->post_norm, a, &used, N * C);
    a->dqkv = carve(a, &used, N * W);
    a->dqk_raw = carve_if(a->QK > 0, a, &used, N * a->QK);
    a->datt = carve(a, &used, N * HD);
    a->dfa = carve_if(dense, a, &used, N * F);
    a->dfb = carve_if(gated, a, &used, N * F);
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
    if (c->block.pos == MODEL_POS_LEARNED && T > c->max_position)
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
    if (c->block.qk_norm != MODEL_QK_NORM_NONE) {
        a->QK = (c->num_heads + c->num_kv_heads) * c->head_dim;
        a->QKR = cpu_qk_norm_rows(c, 1);
    }
    a->state = ACTS_FRESH;
    a->probe_point = -1;
    a->attn = (cpu_attn){.B = B,
                         .T = T,
                         .H = c->num_heads,
                         .KV = c->num_kv_heads,
                         .D = c->head_dim,
                         .window = c->sliding_window,
                         .scale = (real)model_config_attn_scale(c),
                         .softcap = (real)c->attn_softcap,
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
    if (c->block.act == MODEL_ACT_XIELU) a->act_sums = malloc((size_t)a->N * 2 * sizeof(double));
    int moe_fail = c->block.mlp == MODEL_MLP_MOE && cpu_moe_create(&a->moe, c, a->N, c->num_layers);
    if (!a->block || !a->tokens || !a->targets || !a->lse || !a->row_loss ||
        (c->block.act == MODEL_ACT_XIELU && !a->act_sums) || moe_fail) {
        model_acts_free(a);
        return err_set("out of memory: activations for batch %d x sequence %d need %.2f GB; "
                       "use a smaller --batch or --seq",
                       B, T, (double)n * sizeof(real) / 1e9);
    }
    acts_layout(a);
    if (a->rope_cos) cpu_rope_table(a->rope_cos, a->rope_sin, c, T);
    if (a->alibi) cpu_alibi_slopes(a->alibi, c->num_heads);
    a->attn.alibi = a->alibi;
    if (a->rope_lcos) cpu_rope_table_for(a->rope_lcos, a->rope_lsin, c, T, 1, 0);
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
    free(a->act_sums);
    free(a->resid_grads);
    free(a->attn_bf16);
    cpu_moe_free(a->moe);
    free(a);
}

int acts_attn_bf16(model_acts *a, cpu_attn *at) {
    if (!a->attn_bf16) {
        size_t n = cpu_attention_bf16_bytes(&a->attn);
        if (posix_memalign(&a->attn_bf16, 64, n) != 0) {
            a->attn_bf16 = NULL;
            return err_set("out of memory: bf16 attention for batch %d x sequence %d needs %.2f "
                           "GB; use a smaller --batch or --seq",
                           a->B, a->T, (double)n / 1e9);
        }
    }
    at->bf16 = a->attn_bf16;
    return 0;
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

double model_acts_router_margin(const model_acts *a) {
    return a->moe ? cpu_moe_margin(a->moe) : INFINITY;
}

int model_acts_expert_rows(const model_acts *a, int l, int e) {
    return a->moe ? cpu_moe_expert_rows(a->moe, l, e) : 0;
}
