/* gpu_model.c — the model on the GPU: upload, forward, backward, LoRA.
 *
 * The same graph as model/cpu/model_cpu.c, step for step (see its header for
 * the formulas; the blocks are gpu_block.c), with the same buffers: the residual stream at every
 * point, the norms' row statistics, q|k|v after RoPE, the attention's output and log-sum-exps, the
 * MLP's pre-activations, per layer; the linears' normalized inputs and down's input recomputed in
 * backward when an adapter needs them. Differences:
 *   - GEMM operands (weights, activations, LoRA's copies) are bf16 in bf16
 *     mode; the residual stream, statistics and dx sums stay fp32;
 *   - the LM head and the cross-entropy run over chunks of head_rows rows:
 *     logits (chunk) → loss, and in a training pass at once the chunk's
 *     d logits and its share of d(final norm output), so the backward of
 *     the head happens inside the forward's loop and the (N, V) logits never
 *     exist;
 *   - base weights are frozen: no weight gradient is ever computed, only the
 *     activation gradients and the adapter's; the backward stops at point 0
 *     of the stream, so BLOOM's embedding LayerNorm (embed_norm) runs
 *     forward only (no adapter sits below it).
 *
 * LoRA (lora_hook.c's formulas, per adapted linear; u is kept from forward):
 *   forward   x̃ = dropout(x);  u = x̃ Aᵀ;  y += s · u Bᵀ
 *   backward  du = s · dy B;  dB += s · dyᵀ u;  dA += duᵀ x̃;  dx += mask ⊙ du A */
#include "gpu/gpu_internal.h"

#include "lora/lora_dropout.h"
#include "model/cpu/cpu.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(real) == sizeof(float), "the CUDA backend uploads the fp32 CPU model");

int gpu_cuda_fail(cudaError_t e, const char *call, const char *file, int line) {
    return err_set("CUDA error: %s (%s) in %s at %s:%d", cudaGetErrorString(e), cudaGetErrorName(e),
                   call, file, line);
}

int gpu_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" status */
        return 0;
    }
    return n > 0 ? n : 0;
}

int gpu_device_info(int dev, char *name, size_t name_len, double *mem_gib, int *cc_major,
                    int *cc_minor) {
    struct cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, dev));
    if (name && name_len) {
        strncpy(name, p.name, name_len - 1);
        name[name_len - 1] = '\0';
    }
    if (mem_gib) *mem_gib = (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0);
    if (cc_major) *cc_major = p.major;
    if (cc_minor) *cc_minor = p.minor;
    return 0;
}

void gpu_options_init(gpu_options *o) {
    memset(o, 0, sizeof *o);
    o->precision = GPU_PRECISION_FP32;
    o->batch = 1;
    o->seq = 128;
}

int gpu_use(gpu_model *g) {
    CU(cudaSetDevice(g->device));
    return 0;
}

int gpu_alloc(gpu_model *g, void **p, size_t bytes) {
    *p = NULL;
    if (g->n_allocs == g->cap_allocs) {
        int cap = g->cap_allocs ? 2 * g->cap_allocs : 256;
        void **na = realloc(g->allocs, (size_t)cap * sizeof *na);
        if (!na) return err_set("out of host memory tracking GPU buffers");
        g->allocs = na;
        g->cap_allocs = cap;
    }
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return err_set("out of GPU memory: %.2f GiB more needed (%.2f GiB already held); use a "
                       "smaller --batch or --seq (%s)",
                       (double)bytes / (1 << 30), (double)g->bytes / (1 << 30),
                       cudaGetErrorString(e));
    }
    g->allocs[g->n_allocs++] = *p;
    g->bytes += bytes;
    return 0;
}

size_t gpu_model_device_bytes(const gpu_model *g) {
    return g->bytes;
}

/* ---- upload ------------------------------------------------------------------------ */

/* A CPU param into a new device buffer of type t. Values already in t (a
 * bf16 checkpoint's weights for a bf16 run, fp32 for fp32) are copied as
 * they lie in memory — for a mapped checkpoint, straight from the file's
 * pages, with no host copy; others are converted in chunks (widened
 * exactly, or rounded to the nearest bf16, ties to even). */
static int upload_param(gpu_model *g, void **dst, const model_param *p, gpu_dtype t) {
    size_t n = (size_t)p->numel;
    OK(gpu_alloc(g, dst, n * gpu_dtype_size(t)));
    if ((t == GPU_F32 && p->dtype == MODEL_DTYPE_F32) ||
        (t == GPU_BF16 && p->dtype == MODEL_DTYPE_BF16)) {
        CU(cudaMemcpyAsync(*dst, p->values, n * gpu_dtype_size(t), cudaMemcpyHostToDevice,
                           g->stream));
        return 0;
    }
    enum { CHUNK = 1 << 20 };
    size_t m0 = n < CHUNK ? n : CHUNK;
    float *f = malloc(m0 * sizeof *f);
    uint16_t *h = t == GPU_BF16 ? malloc(m0 * sizeof *h) : NULL;
    if (!f || (t == GPU_BF16 && !h)) {
        free(f);
        free(h);
        return err_set("out of host memory converting %s for the GPU", p->name);
    }
    cudaError_t e = cudaSuccess;
    for (size_t i0 = 0; i0 < n && e == cudaSuccess; i0 += CHUNK) {
        size_t m = n - i0 < CHUNK ? n - i0 : CHUNK;
        model_param_read(p, (int64_t)i0, (int64_t)m, f);
        if (t == GPU_BF16) model_values_to_bf16(f, (int64_t)m, h);
        /* From pageable memory the copy is staged before it returns: the
         * buffers can be reused. */
        e = t == GPU_BF16 ? cudaMemcpyAsync((uint16_t *)*dst + i0, h, m * sizeof *h,
                                            cudaMemcpyHostToDevice, g->stream)
                          : cudaMemcpyAsync((float *)*dst + i0, f, m * sizeof *f,
                                            cudaMemcpyHostToDevice, g->stream);
    }
    free(f);
    free(h);
    if (e != cudaSuccess) return gpu_cuda_fail(e, "cudaMemcpyAsync(weights)", __FILE__, __LINE__);
    return 0;
}

static int upload_f32(gpu_model *g, float **dst, const model_param *p) {
    *dst = NULL;
    if (!p) return 0;
    return upload_param(g, (void **)dst, p, GPU_F32);
}

/* A host array of n floats into a new device buffer. */
static int upload_host(gpu_model *g, float **dst, const float *src, size_t n) {
    OK(gpu_alloc(g, (void **)dst, n * sizeof(float)));
    CU(cudaMemcpyAsync(*dst, src, n * sizeof(float), cudaMemcpyHostToDevice, g->stream));
    CU(cudaStreamSynchronize(g->stream)); /* src may be freed after */
    return 0;
}

/* Gemma's norms (RMS_1P) go up as 1 + w, rounded to fp32 as its
 * (1.0 + weight.float()): the RMSNorm kernels then compute x̂ · (1 + w),
 * forward and dx alike (the frozen base needs no dw). */
static int upload_norm(gpu_model *g, gpu_norm *d, const model_norm *n) {
    if (n->w && g->cfg.block.norm == MODEL_NORM_RMS_1P) {
        size_t k = (size_t)n->w->numel;
        float *h = malloc(k * sizeof *h);
        if (!h) return err_set("out of host memory uploading %s", n->w->name);
        model_param_read(n->w, 0, (int64_t)k, h);
        for (size_t i = 0; i < k; i++) h[i] = 1.0f + h[i];
        int rc = upload_host(g, &d->w, h, k);
        free(h);
        return rc;
    }
    OK(upload_f32(g, &d->w, n->w));
    return upload_f32(g, &d->b, n->b);
}

/* One RoPE table pair (T, R/2) (cpu_rope_table_for), cos then sin in one buffer. */
static int upload_rope(gpu_model *g, float **cs, float **sn, int local, int long_factors) {
    size_t n = (size_t)g->T * (size_t)(model_config_rope_dim(&g->cfg) / 2);
    float *ct = malloc(2 * n * sizeof *ct);
    if (!ct) return err_set("out of memory for the RoPE table");
    cpu_rope_table_for(ct, ct + n, &g->cfg, g->T, local, long_factors);
    int rc = upload_host(g, cs, ct, 2 * n);
    free(ct);
    if (rc != 0) return -1;
    *sn = *cs + n;
    return 0;
}

static int upload_linear(gpu_model *g, gpu_linear *d, const model_linear *l) {
    d->lora = -1;
    if (!l->w) return 0;
    d->in = l->in;
    d->out = l->out;
    OK(upload_param(g, &d->w, l->w, g->dt));
    return upload_f32(g, &d->b, l->b);
}

/* Linear j of a block, in lora.c's module order (model_layer_linear's:
 * the eight fixed ones, then a mixture of experts' router and experts). */
static gpu_linear *gpu_slot(gpu_layer *L, int j) {
    gpu_linear *all[] = {&L->q, &L->k, &L->v, &L->qkv, &L->o, &L->gate, &L->up, &L->down};
    if (j < GPU_BLOCK_LINEARS) return all[j];
    return j == GPU_BLOCK_LINEARS ? &L->router : &L->experts[j - GPU_BLOCK_LINEARS - 1];
}

/* The module path of a CPU linear: its weight's name without ".weight". */
static int same_path(const model_linear *l, const char *path) {
    size_t n = strlen(path);
    return l->w && strncmp(l->w->name, path, n) == 0 && strcmp(l->w->name + n, ".weight") == 0;
}

static int upload_lora(gpu_model *g, const model *m, const lora_set *s) {
    g->n_lora = s->n_modules;
    g->lora = calloc((size_t)s->n_modules, sizeof *g->lora);
    if (!g->lora) return err_set("out of memory for the GPU adapter");
    g->dropout = s->cfg.dropout;
    g->lora_seed = s->cfg.seed;
    g->counter = lora_dropout_counter(s);
    int64_t off = 0;
    for (int i = 0; i < s->n_modules; i++) {
        const lora_module *mod = &s->modules[i];
        gpu_lora *gl = &g->lora[i];
        memcpy(gl->path, mod->path, sizeof gl->path);
        gl->in = mod->in;
        gl->out = mod->out;
        gl->rank = mod->rank;
        gl->scale = (float)mod->scale;
        gl->off_a = off;
        off += mod->A.numel;
        gl->off_b = off;
        off += mod->B.numel;
        if (mod->rank > g->max_rank) g->max_rank = mod->rank;
        if (mod->in > g->max_in) g->max_in = mod->in;
        int found = 0;
        model_layer *ml =
            mod->layer >= 0 && mod->layer < m->cfg.num_layers ? &m->layers[mod->layer] : NULL;
        if (ml)
            for (int j = 0; j < model_layer_n_linears(ml) && !found; j++) {
                const model_linear *l = model_layer_linear(ml, j);
                if (!same_path(l, mod->path)) continue;
                if (l->in != mod->in || l->out != mod->out) break;
                gpu_slot(&g->layers[mod->layer], j)->lora = i;
                found = 1;
            }
        if (!found)
            return err_set("LoRA module %s (in %d, out %d) has no matching linear layer in this "
                           "model: the adapter was made for another base",
                           mod->path, mod->in, mod->out);
    }
    g->lora_numel = off;
    size_t bytes = (size_t)off * sizeof(float);
    OK(gpu_alloc(g, (void **)&g->lp, bytes));
    OK(gpu_alloc(g, (void **)&g->lg, bytes));
    OK(gpu_alloc(g, (void **)&g->lm, bytes));
    OK(gpu_alloc(g, (void **)&g->lv, bytes));
    CU(cudaMemsetAsync(g->lg, 0, bytes, g->stream));
    CU(cudaMemsetAsync(g->lm, 0, bytes, g->stream));
    CU(cudaMemsetAsync(g->lv, 0, bytes, g->stream));
    if (g->dt == GPU_BF16)
        OK(gpu_alloc(g, &g->lcast, (size_t)off * 2));
    else
        g->lcast = g->lp;
    size_t N = (size_t)g->N, ts = gpu_dtype_size(g->dt);
    for (int i = 0; i < g->n_lora; i++) OK(gpu_alloc(g, &g->lora[i].u, N * g->lora[i].rank * ts));
    OK(gpu_alloc(g, &g->lora_du, N * g->max_rank * ts));
    if (g->dropout > 0) OK(gpu_alloc(g, &g->lora_x, N * g->max_in * ts));
    return gpu_lora_upload(g, s);
}

/* Every activation buffer (the layout of model_cpu.c's acts_layout). */
static int alloc_acts(gpu_model *g) {
    const model_config *c = &g->cfg;
    const model_block *bk = &c->block;
    size_t N = (size_t)g->N, C = (size_t)c->hidden_size, L = (size_t)c->num_layers;
    size_t F = (size_t)c->intermediate_size, V = (size_t)c->vocab_size;
    size_t HD = (size_t)c->num_heads * c->head_dim, W = (size_t)g->W, P = 2 * L + 1;
    size_t S = GPU_NORMS * L + 1 + (size_t)bk->embed_norm; /* norm slots */
    size_t ts = gpu_dtype_size(g->dt), f4 = sizeof(float);
    size_t bht = (size_t)g->B * c->num_heads * g->T;
    int gated = model_block_gated(bk);
    int dense = bk->mlp != MODEL_MLP_MOE; /* the experts' buffers are gpu_moe.c's */
    OK(gpu_alloc(g, (void **)&g->d_tokens, N * sizeof(int32_t)));
    OK(gpu_alloc(g, (void **)&g->d_targets, N * sizeof(int32_t)));
    OK(gpu_alloc(g, (void **)&g->resid, P * N * C * f4));
    if (bk->embed_norm) OK(gpu_alloc(g, (void **)&g->emb, N * C * f4));
    if (bk->norm == MODEL_NORM_LAYER) OK(gpu_alloc(g, (void **)&g->norm_mean, S * N * f4));
    OK(gpu_alloc(g, (void **)&g->norm_rstd, S * N * f4));
    OK(gpu_alloc(g, &g->qkv, L * N * W * ts));
    if (g->QK) {
        OK(gpu_alloc(g, (void **)&g->qk_raw, L * N * g->QK * f4));
        OK(gpu_alloc(g, (void **)&g->qk_rstd, L * N * g->QKR * f4));
        OK(gpu_alloc(g, (void **)&g->dqk_raw, N * g->QK * f4));
        if (g->dt != GPU_F32) {
            OK(gpu_alloc(g, (void **)&g->dqk32, N * g->QK * f4));
            OK(gpu_alloc(g, &g->dqk_t, N * g->QK * ts));
        } else {
            g->dqk_t = g->dqk_raw;
        }
    }
    if (bk->post_norm) {
        OK(gpu_alloc(g, (void **)&g->sub_out, L * 2 * N * C * f4));
        OK(gpu_alloc(g, (void **)&g->dsub, N * C * f4));
    }
    OK(gpu_alloc(g, (void **)&g->att_lse, L * bht * f4));
    OK(gpu_alloc(g, (void **)&g->att_delta, bht * f4));
    OK(gpu_alloc(g, &g->att, L * N * HD * ts));
    if (dense) {
        OK(gpu_alloc(g, &g->fc_a, L * N * F * ts));
        if (gated) OK(gpu_alloc(g, &g->fc_b, L * N * F * ts));
        if (bk->mlp == MODEL_MLP_GATED_FUSED) OK(gpu_alloc(g, &g->fc_fused, N * 2 * F * ts));
        OK(gpu_alloc(g, &g->act, N * F * ts));
    } else {
        OK(gpu_moe_create(g));
    }
    OK(gpu_alloc(g, &g->nbuf, N * C * ts));
    OK(gpu_alloc(g, &g->xf, N * C * ts));
    int rows = g->opt.head_rows;
    if (rows <= 0) {
        /* about 256 MiB of fp32 logits, a multiple of 64 rows */
        int64_t r = ((int64_t)256 << 20) / ((int64_t)V * 4);
        rows = r < 64 ? 64 : (int)(r / 64 * 64);
    }
    if (rows > g->N) rows = g->N;
    g->head_rows = rows;
    OK(gpu_alloc(g, (void **)&g->logits, (size_t)rows * V * f4));
    /* soft-capped logits: the backward needs them next to their gradient */
    if (g->dt == GPU_BF16 || c->final_softcap)
        OK(gpu_alloc(g, &g->dlogits, (size_t)rows * V * ts));
    else
        g->dlogits = g->logits;
    OK(gpu_alloc(g, (void **)&g->row_loss, N * f4));
    OK(gpu_alloc(g, (void **)&g->row_lse, N * f4));
    OK(gpu_alloc(g, (void **)&g->dresid, N * C * f4));
    OK(gpu_alloc(g, (void **)&g->dnorm, N * C * f4));
    if (g->dt == GPU_BF16)
        OK(gpu_alloc(g, &g->dy, N * C * ts));
    else
        g->dy = g->dresid;
    OK(gpu_alloc(g, &g->datt, N * HD * ts));
    OK(gpu_alloc(g, &g->dqkv, N * W * ts));
    if (dense) OK(gpu_alloc(g, &g->dfa, N * F * ts));
    if (dense && gated) OK(gpu_alloc(g, &g->dfb, N * F * ts));
    OK(gpu_alloc(g, (void **)&g->d_partials, GPU_SUMSQ_BLOCKS * sizeof(double)));
    g->h_row_loss = malloc(N * sizeof *g->h_row_loss);
    g->h_partials = malloc(GPU_SUMSQ_BLOCKS * sizeof *g->h_partials);
    if (!g->h_row_loss || !g->h_partials) return err_set("out of host memory for the GPU model");
    return 0;
}

static int upload(gpu_model *g, const model *m, const lora_set *s) {
    const model_config *c = &m->cfg;
    CU(cudaSetDevice(g->device));
    CU(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    OK(gpu_blas_create(&g->blas, g->stream));
    OK(upload_param(g, &g->wte, m->wte, g->dt));
    if (m->wpe) OK(upload_param(g, &g->wpe, m->wpe, g->dt));
    if (m->lm_head == m->wte)
        g->lm_head = g->wte;
    else
        OK(upload_param(g, &g->lm_head, m->lm_head, g->dt));
    OK(upload_norm(g, &g->norm_f, &m->norm_f));
    if (c->block.embed_norm) OK(upload_norm(g, &g->embed_norm, &m->embed_norm));
    g->layers = calloc((size_t)c->num_layers, sizeof *g->layers);
    if (!g->layers) return err_set("out of memory for the GPU model's layers");
    for (int l = 0; l < c->num_layers; l++) {
        model_layer *L = &m->layers[l]; /* model_layer_linear takes it writable */
        gpu_layer *G = &g->layers[l];
        OK(upload_norm(g, &G->attn_in, &L->attn_in));
        OK(upload_norm(g, &G->attn_out, &L->attn_out));
        OK(upload_norm(g, &G->mlp_in, &L->mlp_in));
        OK(upload_norm(g, &G->mlp_out, &L->mlp_out));
        OK(upload_norm(g, &G->q_norm, &L->q_norm));
        OK(upload_norm(g, &G->k_norm, &L->k_norm));
        if (c->block.act == MODEL_ACT_XIELU) {
            real v[4];
            cpu_xielu_values(&L->xielu, v);
            G->xielu = (gpu_xielu){v[0], v[1], v[2], v[3]};
        }
        if (L->moe.experts) {
            G->n_experts = L->moe.n_experts;
            G->experts = calloc((size_t)3 * G->n_experts, sizeof *G->experts);
            if (!G->experts) return err_set("out of memory for the GPU model's experts");
        }
        for (int j = 0; j < model_layer_n_linears(L); j++)
            OK(upload_linear(g, gpu_slot(G, j), model_layer_linear(L, j)));
    }
    if (c->block.pos == MODEL_POS_ROPE) {
        /* LongRoPE: both factor sets; a pass rotates with its length's */
        OK(upload_rope(g, &g->rope_cos, &g->rope_sin, 0, 0));
        if (c->rope_longrope) OK(upload_rope(g, &g->rope_long_cos, &g->rope_long_sin, 0, 1));
        if (c->rope_local_theta > 0) OK(upload_rope(g, &g->rope_lcos, &g->rope_lsin, 1, 0));
    }
    if (c->block.pos == MODEL_POS_ALIBI) {
        /* the CPU's fp32 slopes (real is float here) */
        float *slopes = malloc((size_t)c->num_heads * sizeof *slopes);
        if (!slopes) return err_set("out of host memory for the ALiBi slopes");
        cpu_alibi_slopes(slopes, c->num_heads);
        int rc = upload_host(g, &g->alibi, slopes, (size_t)c->num_heads);
        free(slopes);
        if (rc != 0) return -1;
    }
    OK(alloc_acts(g));
    if (s) OK(upload_lora(g, m, s));
    CU(cudaDeviceSynchronize());
    return 0;
}

int gpu_model_upload(gpu_model **out, const model *m, const lora_set *s, const gpu_options *o) {
    *out = NULL;
    const model_config *c = &m->cfg;
    int n_dev = gpu_available();
    if (n_dev == 0) return err_set("no CUDA device is available (use --device cpu)");
    if (o->device < 0 || o->device >= n_dev)
        return err_set("CUDA device %d does not exist (this machine has %d)", o->device, n_dev);
    if (o->batch < 1 || o->seq < 1 || (int64_t)o->batch * o->seq > INT32_MAX / 4)
        return err_set("GPU batch %d x sequence %d: both must be positive and their product "
                       "moderate",
                       o->batch, o->seq);
    if (c->block.pos == MODEL_POS_LEARNED && o->seq > c->max_position)
        return err_set("sequence length %d exceeds the model's %d learned positions "
                       "(n_positions); use --seq %d or less",
                       o->seq, c->max_position, c->max_position);
    if (c->head_dim > GPU_ATTN_MAX_D || c->head_dim % 2 != 0)
        return err_set("head_dim %d: the CUDA attention supports even head dims up to %d",
                       c->head_dim, GPU_ATTN_MAX_D);
    /* Head dims past 128 (Gemma's 256) run on CUDA cores with up to 210 KB
     * of shared memory per block (gpu_attention_smem): an H100 opts in to
     * 227 KB, an A100 to 163 KB, so Gemma trains on the one and is refused
     * on the other. */
    int smem_optin = 0;
    CU(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, o->device));
    if (gpu_attention_smem(c->head_dim) > (size_t)smem_optin)
        return err_set("head_dim %d: the CUDA attention needs %zu KB of shared memory per block, "
                       "this GPU allows %d KB; use --device cpu",
                       c->head_dim, gpu_attention_smem(c->head_dim) / 1024, smem_optin / 1024);
    if (c->num_kv_heads < 1 || c->num_heads % c->num_kv_heads != 0 || c->num_heads > 65535)
        return err_set("%d attention heads over %d kv heads: the CUDA attention needs a whole "
                       "number of query heads per kv head and at most 65535 heads",
                       c->num_heads, c->num_kv_heads);
    if (o->batch > 65535)
        return err_set("GPU batch %d: at most 65535 rows per micro-batch (use --grad-accum)",
                       o->batch);
    if (c->block.qkv == MODEL_QKV_HEADS && c->num_kv_heads != c->num_heads)
        return err_set("a head-interleaved query_key_value with %d heads over %d kv heads: the "
                       "layout (H, 3, D) needs one kv head per head",
                       c->num_heads, c->num_kv_heads);
    if (s && s->arch != c->arch)
        return err_set("the LoRA adapter was made for another architecture than this model");
    gpu_model *g = calloc(1, sizeof *g);
    if (!g) return err_set("out of memory creating the GPU model");
    g->cfg = *c;
    g->opt = *o;
    g->B = o->batch;
    g->T = o->seq;
    g->N = o->batch * o->seq;
    g->W = (c->num_heads + 2 * c->num_kv_heads) * c->head_dim;
    if (c->block.qk_norm != MODEL_QK_NORM_NONE) {
        g->QK = (c->num_heads + c->num_kv_heads) * c->head_dim;
        g->QKR = cpu_qk_norm_rows(c, 1);
    }
    g->dt = o->precision == GPU_PRECISION_BF16 ? GPU_BF16 : GPU_F32;
    g->device = o->device;
    g->world = 1;
    if (upload(g, m, s) != 0) {
        gpu_model_free(g);
        return err_context("uploading the model to CUDA device %d", o->device);
    }
    *out = g;
    return 0;
}

void gpu_model_free(gpu_model *g) {
    if (!g) return;
    cudaSetDevice(g->device);
    if (g->stream) cudaStreamSynchronize(g->stream);
    gpu_dist_free(g);
    gpu_blas_free(g->blas);
    for (int i = 0; i < g->n_allocs; i++) cudaFree(g->allocs[i]);
    if (g->stream) cudaStreamDestroy(g->stream);
    free(g->allocs);
    gpu_moe_free(g->moe);
    if (g->layers)
        for (int l = 0; l < g->cfg.num_layers; l++) free(g->layers[l].experts);
    free(g->layers);
    free(g->lora);
    free(g->h_row_loss);
    free(g->h_partials);
    free(g);
}

/* ---- the adapter ------------------------------------------------------------------------ */

/* s's modules must be those of g (paths, ranks, shapes). */
static int same_modules(const gpu_model *g, const lora_set *s) {
    if (s->n_modules != g->n_lora)
        return err_set("the LoRA adapter has %d modules, the GPU model's has %d", s->n_modules,
                       g->n_lora);
    for (int i = 0; i < g->n_lora; i++) {
        const lora_module *m = &s->modules[i];
        const gpu_lora *l = &g->lora[i];
        if (strcmp(m->path, l->path) != 0 || m->rank != l->rank || m->in != l->in ||
            m->out != l->out)
            return err_set("LoRA module %d differs: %s (r %d, %dx%d) against the GPU's %s "
                           "(r %d, %dx%d)",
                           i, m->path, m->rank, m->out, m->in, l->path, l->rank, l->out, l->in);
    }
    return 0;
}

/* Refreshes the GEMMs' bf16 copy of A and B (bf16 mode). */
static int lora_cast(gpu_model *g) {
    if (g->dt == GPU_BF16)
        CU(gpu_convert(g->lcast, GPU_BF16, g->lp, GPU_F32, g->lora_numel, g->stream));
    return 0;
}

int gpu_lora_upload(gpu_model *g, const lora_set *s) {
    OK(gpu_use(g));
    OK(same_modules(g, s));
    for (int i = 0; i < g->n_lora; i++) {
        const lora_module *m = &s->modules[i];
        CU(cudaMemcpyAsync(g->lp + g->lora[i].off_a, m->A.data, (size_t)m->A.numel * sizeof(float),
                           cudaMemcpyHostToDevice, g->stream));
        CU(cudaMemcpyAsync(g->lp + g->lora[i].off_b, m->B.data, (size_t)m->B.numel * sizeof(float),
                           cudaMemcpyHostToDevice, g->stream));
    }
    OK(lora_cast(g));
    CU(cudaStreamSynchronize(g->stream));
    return 0;
}

static int download(gpu_model *g, lora_set *s, const float *src, int grads) {
    OK(gpu_use(g));
    OK(same_modules(g, s));
    for (int i = 0; i < g->n_lora; i++) {
        lora_module *m = &s->modules[i];
        real *a = grads ? m->A.grad : m->A.data, *b = grads ? m->B.grad : m->B.data;
        if (!a || !b)
            return err_set("the LoRA set has no gradient buffers (call lora_want_grads first)");
        CU(cudaMemcpyAsync(a, src + g->lora[i].off_a, (size_t)m->A.numel * sizeof(float),
                           cudaMemcpyDeviceToHost, g->stream));
        CU(cudaMemcpyAsync(b, src + g->lora[i].off_b, (size_t)m->B.numel * sizeof(float),
                           cudaMemcpyDeviceToHost, g->stream));
    }
    CU(cudaStreamSynchronize(g->stream));
    return 0;
}

int gpu_lora_download(gpu_model *g, lora_set *s) {
    return download(g, s, g->lp, 0);
}

int gpu_lora_download_grads(gpu_model *g, lora_set *s) {
    return download(g, s, g->lg, 1);
}

void gpu_lora_zero_grads(gpu_model *g) {
    if (g->lg && gpu_use(g) == 0)
        cudaMemsetAsync(g->lg, 0, (size_t)g->lora_numel * sizeof(float), g->stream);
}

void gpu_lora_set_training(gpu_model *g, int on) {
    g->training = on != 0;
}

uint64_t gpu_lora_dropout_counter(const gpu_model *g) {
    return g->counter;
}

void gpu_lora_set_dropout_counter(gpu_model *g, uint64_t counter) {
    g->counter = counter;
}

static float keep_scale(const gpu_model *g) {
    return (float)(1.0 / (1.0 - g->dropout));
}

static void *lora_a(const gpu_model *g, const gpu_lora *l) {
    return (char *)g->lcast + (size_t)l->off_a * gpu_dtype_size(g->dt);
}

static void *lora_b(const gpu_model *g, const gpu_lora *l) {
    return (char *)g->lcast + (size_t)l->off_b * gpu_dtype_size(g->dt);
}

/* y (N, out) of type yt += s · dropout(x) Aᵀ Bᵀ; keeps u. N > 0 rows. */
static int lora_forward(gpu_model *g, gpu_lora *l, const void *x, void *y, gpu_dtype yt, int N) {
    gpu_dtype t = g->dt;
    const void *xin = x;
    if (l->dropped) {
        CU(gpu_dropout(g->lora_x, t, x, t, N, l->in, 0, l->key, g->dropout, keep_scale(g), 0,
                       g->stream));
        xin = g->lora_x;
    }
    OK(gpu_gemm(g->blas, 0, 1, N, l->rank, l->in, 1, xin, l->in, lora_a(g, l), l->in, t, 0, l->u,
                l->rank, t));
    return gpu_gemm(g->blas, 0, 1, N, l->out, l->rank, l->scale, l->u, l->rank, lora_b(g, l),
                    l->rank, t, 1, y, l->out, yt);
}

/* The adapter's backward: its gradients, and dx (N, in) of type dxt += its
 * term. N > 0 rows. */
static int lora_backward(gpu_model *g, gpu_lora *l, const void *x, const void *dy, void *dx,
                         gpu_dtype dxt, int N) {
    gpu_dtype t = g->dt;
    int r = l->rank;
    const void *xin = x;
    if (l->dropped) {
        CU(gpu_dropout(g->lora_x, t, x, t, N, l->in, 0, l->key, g->dropout, keep_scale(g), 0,
                       g->stream));
        xin = g->lora_x;
    }
    /* du (N, r) = s · dy B;  dB += s · dyᵀ u;  dA += duᵀ x̃ */
    OK(gpu_gemm(g->blas, 0, 0, N, r, l->out, l->scale, dy, l->out, lora_b(g, l), r, t, 0,
                g->lora_du, r, t));
    OK(gpu_gemm(g->blas, 1, 0, l->out, r, N, l->scale, dy, l->out, l->u, r, t, 1, g->lg + l->off_b,
                r, GPU_F32));
    OK(gpu_gemm(g->blas, 1, 0, r, l->in, N, 1, g->lora_du, r, xin, l->in, t, 1, g->lg + l->off_a,
                l->in, GPU_F32));
    /* dx += du A, through the dropout mask */
    if (l->dropped) {
        OK(gpu_gemm(g->blas, 0, 0, N, l->in, r, 1, g->lora_du, r, lora_a(g, l), l->in, t, 0,
                    g->lora_x, l->in, t));
        CU(gpu_dropout(dx, dxt, g->lora_x, t, N, l->in, 0, l->key, g->dropout, keep_scale(g), 1,
                       g->stream));
        return 0;
    }
    return gpu_gemm(g->blas, 0, 0, N, l->in, r, 1, g->lora_du, r, lora_a(g, l), l->in, t, 1, dx,
                    l->in, dxt);
}

/* ---- linears -------------------------------------------------------------------------- */

int gpu_linear_forward_rows(gpu_model *g, const gpu_linear *l, const void *x, void *y, gpu_dtype yt,
                            int accumulate, int N) {
    if (N <= 0) return 0;
    float beta = accumulate ? 1 : 0;
    if (l->b) {
        CU(gpu_add_bias(y, yt, l->b, N, l->out, accumulate, g->stream));
        beta = 1;
    }
    OK(gpu_gemm(g->blas, 0, 1, N, l->out, l->in, 1, x, l->in, l->w, l->in, g->dt, beta, y, l->out,
                yt));
    if (l->lora >= 0) OK(lora_forward(g, &g->lora[l->lora], x, y, yt, N));
    return 0;
}

int gpu_linear_backward_rows(gpu_model *g, const gpu_linear *l, const void *x, const void *dy,
                             void *dx, gpu_dtype dxt, int accumulate, int N) {
    if (N <= 0) return 0;
    OK(gpu_gemm(g->blas, 0, 0, N, l->in, l->out, 1, dy, l->out, l->w, l->in, g->dt,
                accumulate ? 1 : 0, dx, l->in, dxt));
    if (l->lora >= 0) OK(lora_backward(g, &g->lora[l->lora], x, dy, dx, dxt, N));
    return 0;
}

int gpu_linear_forward(gpu_model *g, const gpu_linear *l, const void *x, void *y, gpu_dtype yt,
                       int accumulate) {
    return gpu_linear_forward_rows(g, l, x, y, yt, accumulate, g->N);
}

int gpu_linear_backward(gpu_model *g, const gpu_linear *l, const void *x, const void *dy, void *dx,
                        gpu_dtype dxt, int accumulate) {
    return gpu_linear_backward_rows(g, l, x, dy, dx, dxt, accumulate, g->N);
}

/* Every id in range (model_forward's checks and messages). */
static int check_ids(const gpu_model *g, const int32_t *tokens, const int32_t *targets) {
    int V = g->cfg.vocab_size;
    for (int n = 0; n < g->N; n++) {
        if (tokens[n] < 0 || tokens[n] >= V)
            return err_set("token id %d at batch row %d, position %d is outside the vocabulary "
                           "[0, %d): the data was tokenized for another model",
                           tokens[n], n / g->T, n % g->T, V);
        if (targets && targets[n] != MODEL_IGNORE_INDEX && (targets[n] < 0 || targets[n] >= V))
            return err_set("target id %d at batch row %d, position %d is outside the vocabulary "
                           "[0, %d) and is not the ignore index %d",
                           targets[n], n / g->T, n % g->T, V, MODEL_IGNORE_INDEX);
    }
    return 0;
}

/* The LM head and the loss over chunks of rows; with backward, each chunk's
 * d(final norm output) into dnorm. */
static int head_pass(gpu_model *g, int has_targets, int backward, float scale, float *logits_out) {
    const model_config *c = &g->cfg;
    int V = c->vocab_size, C = c->hidden_size;
    if (!has_targets && !logits_out) return 0; /* nothing wants the head */
    for (int r0 = 0; r0 < g->N; r0 += g->head_rows) {
        int n = g->N - r0 < g->head_rows ? g->N - r0 : g->head_rows;
        OK(gpu_gemm(g->blas, 0, 1, n, V, C, 1, gpu_elem(g, g->xf, (size_t)r0 * C), C, g->lm_head, C,
                    g->dt, 0, g->logits, V, GPU_F32));
        if (c->final_softcap)
            CU(gpu_softcap(g->logits, (int64_t)n * V, (float)c->final_softcap, g->stream));
        if (logits_out)
            CU(cudaMemcpyAsync(logits_out + (size_t)r0 * V, g->logits,
                               (size_t)n * V * sizeof(float), cudaMemcpyDeviceToHost, g->stream));
        if (!has_targets) continue;
        CU(gpu_xent(g->logits, g->d_targets + r0, n, V, g->row_lse + r0, g->row_loss + r0,
                    backward ? g->dlogits : NULL, g->dt, scale, g->stream));
        if (backward && c->final_softcap)
            CU(gpu_softcap_backward(g->dlogits, g->dt, g->logits, (int64_t)n * V,
                                    (float)c->final_softcap, g->stream));
        if (backward)
            OK(gpu_gemm(g->blas, 0, 0, n, C, V, 1, g->dlogits, V, g->lm_head, C, g->dt, 0,
                        g->dnorm + (size_t)r0 * C, C, GPU_F32));
    }
    return 0;
}

/* Point 0 of the stream for the n = g->N rows of d_tokens, at positions
 * whose wpe rows start at wpe (T: rows per sequence; model_cpu.c's
 * embed_forward): the embedding, times √C (Gemma, cpu_embed_scale), through
 * its norm (BLOOM's word_embeddings_layernorm) into point 0. */
static int embed_forward(gpu_model *g, const void *wpe, int T) {
    const model_config *c = &g->cfg;
    int n = g->N;
    float *e = c->block.embed_norm ? g->emb : gpu_resid(g, 0);
    CU(gpu_embed_forward(e, g->d_tokens, g->wte, wpe, g->dt, n, T, c->hidden_size, g->stream));
    if (c->block.embed_scale)
        CU(gpu_scale_f32(e, (int64_t)n * c->hidden_size, (float)cpu_embed_scale(c), g->stream));
    if (c->block.embed_norm) OK(gpu_embed_norm_forward(g));
    return 0;
}

/* ---- one pass ----------------------------------------------------------------------------- */

static int pass(gpu_model *g, const int32_t *tokens, const int32_t *targets, int backward,
                double scale, double *loss_sum, int64_t *n_targets, float *logits_out) {
    const model_config *c = &g->cfg;
    int N = g->N;
    if (loss_sum) *loss_sum = 0;
    if (n_targets) *n_targets = 0;
    if (backward && (!targets || g->n_lora == 0))
        return err_set("a GPU backward needs targets and a LoRA adapter");
    OK(gpu_use(g));
    OK(check_ids(g, tokens, targets));
    g->kv_len = 0; /* this pass overwrites the keys and values gpu_decode kept */
    CU(cudaMemcpyAsync(g->d_tokens, tokens, (size_t)N * sizeof *tokens, cudaMemcpyHostToDevice,
                       g->stream));
    if (targets)
        CU(cudaMemcpyAsync(g->d_targets, targets, (size_t)N * sizeof *targets,
                           cudaMemcpyHostToDevice, g->stream));
    /* Dropout masks of this forward (lora_forward's counter logic). */
    for (int i = 0; i < g->n_lora; i++) {
        g->lora[i].dropped = g->training && g->dropout > 0;
        if (g->training) g->lora[i].key = lora_dropout_key(g->lora_seed, i, g->counter);
    }
    if (g->training && g->n_lora) g->counter++;
    /* The load-balancing loss is in the objective as coef · aux per target
     * (model_cpu.c): its gradient's weight is known before the forward. */
    int aux = c->block.mlp == MODEL_MLP_MOE && c->router_aux_loss && targets;
    int64_t count = 0;
    if (targets)
        for (int n = 0; n < N; n++) count += targets[n] != MODEL_IGNORE_INDEX;
    g->aux_grad = aux && backward ? scale * c->router_aux_loss_coef * (double)count : 0;

    OK(embed_forward(g, g->wpe, g->T));
    g->rope_long = model_config_rope_long(c, g->T);
    OK(gpu_blocks_forward(g));
    OK(gpu_final_norm_forward(g));
    OK(head_pass(g, targets != NULL, backward, (float)scale, logits_out));
    if (targets)
        CU(cudaMemcpyAsync(g->h_row_loss, g->row_loss, (size_t)N * sizeof(float),
                           cudaMemcpyDeviceToHost, g->stream));
    if (backward) {
        CU(cudaMemsetAsync(g->dresid, 0, (size_t)N * c->hidden_size * sizeof(float), g->stream));
        OK(gpu_final_norm_backward(g));
        OK(gpu_blocks_backward(g));
    }
    CU(cudaStreamSynchronize(g->stream));
    if (targets) {
        /* Summed in row order, in double, as the CPU does. */
        double sum = 0;
        for (int n = 0; n < N; n++)
            if (targets[n] != MODEL_IGNORE_INDEX) sum += g->h_row_loss[n];
        if (aux) sum += c->router_aux_loss_coef * gpu_moe_aux_loss(g) * (double)count;
        if (loss_sum) *loss_sum = sum;
        if (n_targets) *n_targets = count;
    }
    return 0;
}

int gpu_forward(gpu_model *g, const int32_t *tokens, const int32_t *targets, double *loss_sum,
                int64_t *n_targets, float *logits_out) {
    return pass(g, tokens, targets, 0, 0, loss_sum, n_targets, logits_out);
}

int gpu_forward_backward(gpu_model *g, const int32_t *tokens, const int32_t *targets, double scale,
                         double *loss_sum, int64_t *n_targets) {
    return pass(g, tokens, targets, 1, scale, loss_sum, n_targets, NULL);
}

/* ---- generation: a KV cache in the qkv buffers ----------------------------------------
 * With B = 1, layer l's q|k|v block (qkv_at with N = T rows) is a cache of T
 * positions: gpu_decode writes the new rows' keys and values (after RoPE)
 * at rows pos … pos + n − 1 and the attention reads rows 0 … pos + n − 1.
 * Everything else (residual points, norms, MLP, LoRA scratch) works on the
 * first n rows of its buffer, with g->N set to n for the call. */

static int decode_rows(gpu_model *g, int n, int pos, float *logits_out) {
    const model_config *c = &g->cfg;
    int C = c->hidden_size, V = c->vocab_size;
    /* GPT-2's positions pos … are wpe's rows from pos on (row % n below) */
    const void *wpe = g->wpe ? gpu_elem(g, g->wpe, (size_t)pos * C) : NULL;
    OK(embed_forward(g, wpe, n));
    /* LongRoPE: this call's length picks the factors (model_decode's rule) */
    g->rope_long = model_config_rope_long(c, pos + n);
    OK(gpu_blocks_decode(g, pos));
    OK(gpu_final_norm_forward(g));
    /* the head of the last row only: its logits (V) */
    OK(gpu_gemm(g->blas, 0, 1, 1, V, C, 1, gpu_elem(g, g->xf, (size_t)(n - 1) * C), C, g->lm_head,
                C, g->dt, 0, g->logits, V, GPU_F32));
    if (c->final_softcap) CU(gpu_softcap(g->logits, V, (float)c->final_softcap, g->stream));
    CU(cudaMemcpyAsync(logits_out, g->logits, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost,
                       g->stream));
    CU(cudaStreamSynchronize(g->stream));
    return 0;
}

int gpu_decode(gpu_model *g, const int32_t *tokens, int n, int pos, float *logits_out) {
    const model_config *c = &g->cfg;
    if (g->B != 1)
        return err_set("GPU generation needs a model uploaded with batch 1, this one has %d", g->B);
    if (n < 1 || pos < 0 || pos > g->kv_len)
        return err_set("GPU decode of %d tokens at position %d: the cache holds %d positions "
                       "(pos must be at most that, n at least 1)",
                       n, pos, g->kv_len);
    if (n > g->T - pos)
        return err_set("%d tokens at position %d do not fit the %d positions the GPU model was "
                       "uploaded for",
                       n, pos, g->T);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return err_set("token id %d at position %d is outside the vocabulary [0, %d)",
                           tokens[i], pos + i, c->vocab_size);
    OK(gpu_use(g));
    CU(cudaMemcpyAsync(g->d_tokens, tokens, (size_t)n * sizeof *tokens, cudaMemcpyHostToDevice,
                       g->stream));
    for (int i = 0; i < g->n_lora; i++) g->lora[i].dropped = 0; /* generation: no dropout */
    /* Rows from pos on are rewritten: until this call succeeds the cache
     * holds pos positions. */
    g->kv_len = pos;
    int rows = g->N;
    g->N = n;
    int rc = decode_rows(g, n, pos, logits_out);
    g->N = rows;
    if (rc == 0) g->kv_len = pos + n;
    return rc;
}
