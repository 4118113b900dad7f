/* test_gpu_parity — the CUDA backend against the CPU backend, whole models.
 *
 * Graphs: the CPU tests' tiny ones (tests/cpu/tiny.h: Llama GQA with tied
 * embeddings; every bias, one kv head, head_dim != C/H; llama3 RoPE scaling;
 * a Mistral sliding window; GPT-2; Qwen3's per-head QK-norm; OLMo 2's
 * post-norms and projection QK-norm; Apertus's xIELU MLP; Gemma 2's
 * soft-capping, GeGLU, (1 + w) norms and per-layer windows; Gemma 3's local
 * RoPE; Phi-3's fused linears and partial LongRoPE; BLOOM's ALiBi,
 * head-interleaved query_key_value and embedding LayerNorm; Mixtral's
 * mixture of experts, top 2 of 4 and top 1 with the load-balancing loss,
 * also with the router adapted and with dropout) and nine larger ones whose
 * sequences span several attention tiles and whose LM head runs in several
 * chunks (one of them partial), OLMo 2, Apertus, Gemma 2, Phi-3 and BLOOM
 * among them with head_dim 32 (tensor-core attention in bf16), Gemma 3 with
 * head_dim 256 (CUDA cores, 8 dimensions per lane). BLOOM's three options
 * are each checked, on the CPU, to move the logits and the gradients far
 * past the tolerances, so a GPU that ignored one would fail
 * (check_bloom_options, which needs no device). LoRA on every linear
 * (rank 4, B random so the adapter matters); one case with dropout, whose
 * masks must be the CPU's.
 *
 * Compared, in fp32 mode and in bf16 mode (docs/gpu.md gives the bounds and
 * why): logits, the loss, the LoRA gradients; one AdamW update of the same
 * gradients (fp32, exact up to the clipping factor's last bit); and a
 * 10-step training trajectory with 2 micro-batches per step (losses per step
 * and the final adapter) against the CPU trainer's arithmetic (model_forward,
 * model_backward, adamw_step); and generation with a KV cache (gpu_decode)
 * against model_decode, step by step. */
#include "gpu_test.h"

#include "tests/cpu/tiny_lora.h"
#include "util/err.h"

#include <string.h>

/* Tolerances (docs/gpu.md). fp32: rounding only. bf16: weights, activations
 * and the GEMMs' inputs rounded to 8 significant bits, fp32 accumulation. */
typedef struct {
    double logits;     /* rel_max of the logits */
    double loss;       /* relative error of the loss */
    double grads;      /* rel_l2 of all LoRA gradients together */
    double traj_loss;  /* relative error of each step's loss */
    double traj_param; /* rel_l2 of the adapter after 10 steps */
} tolerances;

static const tolerances TOL_FP32 = {1e-4, 1e-4, 1e-4, 1e-4, 1e-4};
static const tolerances TOL_BF16 = {3e-2, 2e-3, 5e-2, 5e-3, 5e-2};

typedef struct {
    const char *name;
    model_config cfg;
    int B, T;
    int head_rows; /* 0: automatic */
    double dropout;
    const char *targets; /* LoRA target_modules; NULL: all-linear */
} pcase;

/* A mixture of experts' router is left out of all-linear: these name it. */
#define MOE_TARGETS "q_proj,k_proj,v_proj,o_proj,gate,w1,w2,w3"

/* The smallest gap between a row's k-th and (k+1)-th router probability
 * (model_acts_router_margin) a batch of a mixture of experts must have, so
 * that the GPU routes every token as the fp32 CPU: fp32 moves a
 * probability by ~1e-6, bf16 (rounded weights and activations) by about
 * 1e-3. A case's batch is the first of seeds 1234 … that has it. */
#define MOE_FP32_MARGIN 1e-4
#define MOE_BF16_MARGIN 1e-2
#define MOE_SEEDS 400

static model_config mid_llama(void) {
    model_config c = tiny_llama();
    c.vocab_size = 300;
    c.hidden_size = 64;
    c.intermediate_size = 160;
    c.num_heads = 2;
    c.num_kv_heads = 1;
    c.head_dim = 32; /* the tensor-core attention's smallest head dim */
    c.max_position = 256;
    c.family = MODEL_FAMILY_QWEN2;
    c.qkv_bias = 1; /* Qwen2: q/k/v biases only */
    c.tie_embeddings = 0;
    return c;
}

static const tiny_case *find_tiny(const tiny_case *tc, int nt, const char *name) {
    for (int i = 0; i < nt; i++)
        if (!strcmp(tc[i].name, name)) return &tc[i];
    fprintf(stderr, "no tiny case %s\n", name);
    exit(1);
}

/* BLOOM at head_dim 32 (tensor cores in bf16): ALiBi over 6 heads (the
 * slopes of a head count that is not a power of two) across several
 * attention tiles, query_key_value by head, the embedding's LayerNorm. */
static model_config mid_bloom(const tiny_case *tc, int nt) {
    model_config c = find_tiny(tc, nt, "bloom_alibi")->cfg;
    c.vocab_size = 300;
    c.num_heads = c.num_kv_heads = 6;
    c.head_dim = 32;
    c.hidden_size = 6 * 32; /* BLOOM: C = H·D, F = 4C */
    c.intermediate_size = 4 * c.hidden_size;
    c.max_position = 256;
    return c;
}

static int parity_cases(pcase *out) {
    tiny_case tc[TINY_MAX_CASES];
    int nt = tiny_cases(tc), n = 0;
    for (int i = 0; i < nt; i++)
        out[n++] = (pcase){tc[i].name, tc[i].cfg, tc[i].B, tc[i].T, 0, 0, NULL};
    out[n++] = (pcase){"bloom_mid", mid_bloom(tc, nt), 2, 150, 64, 0, NULL};
    out[n++] = (pcase){"llama_gqa_dropout", tc[0].cfg, tc[0].B, tc[0].T, 0, 0.2, NULL};
    /* Mixtral with the router adapted: top 2 of 4 (its gradient through the
     * renormalized weights), and top 1 with the load-balancing loss in the
     * objective (a weight of 1: the router learns only through that loss) */
    for (int i = 0; i < nt; i++) {
        if (!strcmp(tc[i].name, "mixtral_moe"))
            out[n++] =
                (pcase){"mixtral_moe_router", tc[i].cfg, tc[i].B, tc[i].T, 0, 0, MOE_TARGETS};
        if (!strcmp(tc[i].name, "mixtral_top1"))
            out[n++] =
                (pcase){"mixtral_top1_router", tc[i].cfg, tc[i].B, tc[i].T, 0, 0, MOE_TARGETS};
    }
    /* the same top 2 of 4 with dropout: the experts' masks over their blocks of rows */
    const tiny_case *mx = find_tiny(tc, nt, "mixtral_moe");
    out[n++] = (pcase){"mixtral_moe_dropout", mx->cfg, mx->B, mx->T, 0, 0.2, MOE_TARGETS};
    out[n++] = (pcase){"qwen_mid", mid_llama(), 2, 150, 64, 0, NULL};
    model_config w = mid_llama();
    w.family = MODEL_FAMILY_MISTRAL;
    w.qkv_bias = 0;
    w.num_heads = 2;
    w.num_kv_heads = 1;
    w.head_dim = 32;
    w.sliding_window = 40;
    out[n++] = (pcase){"mistral_mid_window", w, 2, 150, 100, 0, NULL};
    model_config g = tc[4].cfg; /* GPT-2 */
    g.vocab_size = 300;
    g.hidden_size = 64;
    g.intermediate_size = 256;
    g.num_heads = 2;
    g.num_kv_heads = 2;
    g.head_dim = 32;
    g.max_position = 256;
    out[n++] = (pcase){"gpt2_mid", g, 2, 150, 64, 0, NULL};
    model_config o = mid_llama();
    model_config_family(&o, MODEL_FAMILY_OLMO2);
    o.qkv_bias = 0;
    out[n++] = (pcase){"olmo2_mid", o, 2, 150, 64, 0, NULL};
    model_config a = mid_llama();
    model_config_family(&a, MODEL_FAMILY_APERTUS);
    a.qkv_bias = 0;
    a.num_heads = 4;
    a.num_kv_heads = 2;
    out[n++] = (pcase){"apertus_mid", a, 2, 150, 100, 0, NULL};
    /* Gemma 2 at head_dim 32: soft-capped scores in the tensor-core kernels,
     * a sliding layer (window 40, across key tiles) then a global one */
    model_config g2 = mid_llama();
    model_config_family(&g2, MODEL_FAMILY_GEMMA2);
    g2.qkv_bias = 0;
    g2.layer_types = 1;
    g2.layer_sliding[0] = 1;
    g2.sliding_window = 40;
    g2.query_pre_attn_scalar = 24;
    g2.attn_softcap = 1.5;
    g2.final_softcap = 3.0;
    out[n++] = (pcase){"gemma2_mid", g2, 2, 150, 64, 0, NULL};
    /* Gemma 3: the (1 + w) QK-norm, local and global RoPE tables, Gemma's
     * head_dim of 256 (attention on CUDA cores, 8 dimensions per lane) */
    model_config g3 = g2;
    g3.head_dim = 256;
    model_config_family(&g3, MODEL_FAMILY_GEMMA3);
    g3.attn_softcap = 0;
    g3.rope_theta = 1000;
    g3.rope_linear = 1;
    g3.rope_factor = 4;
    g3.rope_local_theta = 50;
    out[n++] = (pcase){"gemma3_mid", g3, 2, 150, 100, 0, NULL};
    /* Phi-3: fused linears, LongRoPE over half of each head with the long
     * factors (150 > 100 positions; decoding switches past 100) */
    model_config p3 = mid_llama();
    model_config_family(&p3, MODEL_FAMILY_PHI3);
    p3.qkv_bias = 0;
    p3.rope_dim = 16;
    p3.rope_longrope = 1;
    p3.rope_original_max_position = 100;
    for (int i = 0; i < 8; i++) p3.rope_short[i] = 1 + 0.25 * i, p3.rope_long[i] = 2 + i;
    p3.sliding_window = 60;
    out[n++] = (pcase){"phi3_mid", p3, 2, 150, 64, 0, NULL};
    return n;
}

/* The case of that name (every name below is one of parity_cases's). */
static const pcase *find_case(const pcase *cases, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(cases[i].name, name) == 0) return &cases[i];
    fprintf(stderr, "no parity case %s\n", name);
    exit(1);
}

/* The adapter every case uses: all linears (or the case's targets), rank 4,
 * alpha 8, B random. */
static lora_set *make_lora(model *m, const pcase *pc, double dropout) {
    lora_set *s = NULL;
    if (!pc->targets) {
        s = tiny_adapter(m, 4, 8, dropout, 7, 0.2, 0);
    } else {
        lora_config lc;
        lora_config_init(&lc);
        lc.rank = 4;
        lc.alpha = 8;
        lc.dropout = dropout;
        lc.seed = 7;
        int rc = lora_config_set_targets(&lc, pc->targets);
        if (rc == 0) rc = lora_create(&s, m, &lc);
        lora_config_free(&lc);
        uint64_t r = 7 * 0x9E3779B97F4A7C15ull + 1;
        for (int i = 0; rc == 0 && i < s->n_modules; i++)
            for (int64_t j = 0; j < s->modules[i].B.numel; j++)
                s->modules[i].B.data[j] = (real)(0.2 * tiny_uniform(&r));
    }
    if (!s) {
        fprintf(stderr, "LoRA setup: %s\n", err_msg());
        exit(1);
    }
    return s;
}

/* The CPU tests' weights (tests/cpu/tiny.h): random, with norm weights and
 * biases moved away from ones and zeros so that no formula hides behind
 * them. */
static model *make_model(const model_config *cfg) {
    model *m = tiny_model(cfg, 5);
    if (!m) exit(check_finish());
    return m;
}

/* All gradients (or values) of a set, in lora_tensor order. */
static float *flat(lora_set *s, int grads) {
    float *v = malloc((size_t)lora_num_params(s) * sizeof *v), *p = v;
    for (int i = 0; i < lora_num_tensors(s); i++) {
        model_param *t = lora_tensor(s, i);
        memcpy(p, grads ? t->grad : t->data, (size_t)t->numel * sizeof *p);
        p += t->numel;
    }
    return v;
}

/* rel_l2 of the gradients of the modules adapting a mixture of experts'
 * router (block_sparse_moe.gate), in flat()'s order; *norm: the CPU's
 * gradients' norm there (0: no such module). */
static double router_grads(lora_set *s, const float *got, const float *want, double *norm) {
    double d = 0, w = 0;
    size_t off = 0;
    for (int i = 0; i < lora_num_tensors(s); i++) {
        model_param *t = lora_tensor(s, i);
        int router = 0;
        for (int j = 0; j < s->n_modules; j++)
            if ((t == &s->modules[j].A || t == &s->modules[j].B) &&
                strstr(s->modules[j].path, "block_sparse_moe.gate"))
                router = 1;
        for (int64_t e = 0; router && e < t->numel; e++) {
            double x = (double)got[off + e] - want[off + e];
            d += x * x;
            w += (double)want[off + e] * want[off + e];
        }
        off += (size_t)t->numel;
    }
    *norm = sqrt(w);
    return w > 0 ? sqrt(d / w) : 0;
}

/* What runs on the GPU: fp32, bf16 (attention on tensor cores where it
 * can), bf16 with the attention on CUDA cores. */
typedef struct {
    const char *name;
    gpu_precision prec;
    int simt_attention;
} gmode;

static const gmode MODES[] = {{"fp32", GPU_PRECISION_FP32, 0},
                              {"bf16", GPU_PRECISION_BF16, 0},
                              {"bf16-simt", GPU_PRECISION_BF16, 1}};

/* tok, tg: the batch of seed 1234, or for a mixture of experts the first
 * seed from there whose routing margin (without dropout) is at least want;
 * returns that margin (+inf without experts). */
static double pick_batch(model *m, model_acts *a, lora_set *s, int32_t *tok, int32_t *tg, int N,
                         double want) {
    int V = m->cfg.vocab_size;
    double margin = INFINITY;
    lora_set_training(s, 0); /* no dropout counter moves */
    for (uint64_t seed = 1234; seed < 1234 + MOE_SEEDS; seed++) {
        tiny_batch(tok, tg, N, V, seed);
        if (m->cfg.num_experts == 0) break;
        double loss;
        int64_t nt;
        CHECK_OK(model_forward(m, a, tok, tg, &loss, &nt));
        margin = model_acts_router_margin(a);
        if (margin >= want) break;
    }
    return margin;
}

/* Logits, loss and gradients of one batch; in fp32 also one AdamW update. */
static void check_pass(const pcase *pc, const gmode *md) {
    gpu_precision prec = md->prec;
    const tolerances *tol = prec == GPU_PRECISION_BF16 ? &TOL_BF16 : &TOL_FP32;
    int N = pc->B * pc->T, V = pc->cfg.vocab_size;
    model *m = make_model(&pc->cfg);
    lora_set *s = make_lora(m, pc, pc->dropout), *s2 = make_lora(m, pc, pc->dropout);
    model_acts *a = NULL;
    int32_t *tok = malloc((size_t)N * 4), *tg = malloc((size_t)N * 4);
    CHECK_OK(lora_attach(s, m));
    CHECK_OK(lora_want_grads(s));
    CHECK_OK(lora_want_grads(s2));
    CHECK_OK(lora_reserve(s, N));
    CHECK_OK(model_acts_create(&a, m, pc->B, pc->T));
    if (!a) exit(check_finish());
    pick_batch(m, a, s, tok, tg, N, prec == GPU_PRECISION_BF16 ? MOE_BF16_MARGIN : MOE_FP32_MARGIN);
    lora_set_training(s, pc->dropout > 0);

    gpu_options o;
    gpu_options_init(&o);
    o.precision = prec;
    o.simt_attention = md->simt_attention;
    o.batch = pc->B;
    o.seq = pc->T;
    o.head_rows = pc->head_rows;
    gpu_model *g = NULL;
    CHECK_OK(gpu_model_upload(&g, m, s, &o));
    if (!g) exit(check_finish());
    gpu_lora_set_training(g, pc->dropout > 0);
    uint64_t counter0 = lora_dropout_counter(s);

    /* CPU reference */
    double loss = 0, gloss = 0;
    int64_t nt = 0, gnt = 0;
    CHECK_OK(model_forward(m, a, tok, tg, &loss, &nt));
    float *logits = malloc((size_t)N * V * 4), *glogits = malloc((size_t)N * V * 4);
    float *glogits2 = malloc((size_t)N * V * 4);
    memcpy(logits, model_acts_logits(a), (size_t)N * V * 4);
    /* the margin of this forward (dropout included): none of the seeds may have had it */
    double margin = model_acts_router_margin(a);
    if (margin < (prec == GPU_PRECISION_BF16 ? MOE_BF16_MARGIN : MOE_FP32_MARGIN)) {
        printf("  %-20s %s: no batch of %d seeds routes with a margin over %s's resolution "
               "(%.1e): not compared\n",
               pc->name, md->name, MOE_SEEDS, md->name, margin);
        CHECK_MSG(prec == GPU_PRECISION_BF16, "%s: fp32 routing margin %.1e", pc->name, margin);
        gpu_model_free(g);
        free(logits), free(glogits), free(glogits2), free(tok), free(tg);
        model_acts_free(a);
        lora_free(s), lora_free(s2);
        model_free(m);
        return;
    }
    CHECK_OK(model_backward(m, a, 1.0 / (double)nt));
    float *grads = flat(s, 1);

    /* GPU: forward (same dropout masks: same counter) */
    gpu_lora_set_dropout_counter(g, counter0);
    CHECK_OK(gpu_forward(g, tok, tg, &gloss, &gnt, glogits));
    CHECK(gnt == nt);
    double e_logits = gt_rel_max(glogits, logits, (size_t)N * V, 1e-30);
    double e_loss = fabs(gloss - loss) / fabs(loss);
    /* logits only (no targets): the same numbers */
    gpu_lora_set_dropout_counter(g, counter0);
    CHECK_OK(gpu_forward(g, tok, NULL, NULL, NULL, glogits2));
    CHECK(memcmp(glogits, glogits2, (size_t)N * V * 4) == 0);

    /* GPU: forward + backward */
    gpu_lora_set_dropout_counter(g, counter0);
    gpu_lora_zero_grads(g);
    double bloss = 0;
    int64_t bnt = 0;
    CHECK_OK(gpu_forward_backward(g, tok, tg, 1.0 / (double)nt, &bloss, &bnt));
    CHECK(bnt == nt);
    CHECK(gpu_lora_dropout_counter(g) == lora_dropout_counter(s));
    CHECK_OK(gpu_lora_download_grads(g, s2));
    float *ggrads = flat(s2, 1);
    int64_t np = lora_num_params(s);
    double e_grads = gt_rel_l2(ggrads, grads, (size_t)np, 1e-30);
    double e_bloss = fabs(bloss - loss) / fabs(loss);
    printf("  %-20s %s: logits %.2e  loss %.2e (sum %.6f vs %.6f)  fwd+bwd loss %.2e  grads %.2e\n",
           pc->name, md->name, e_logits, e_loss, gloss, loss, e_bloss, e_grads);
    CHECK_MSG(e_logits <= tol->logits, "%s %s logits %.3e", pc->name, md->name, e_logits);
    CHECK_MSG(e_loss <= tol->loss, "%s %s loss %.3e", pc->name, md->name, e_loss);
    CHECK_MSG(e_bloss <= tol->loss, "%s %s fwd+bwd loss %.3e", pc->name, md->name, e_bloss);
    CHECK_MSG(e_grads <= tol->grads, "%s %s grads %.3e", pc->name, md->name, e_grads);
    /* An adapted router on its own: with top 1 its gradient comes only from
     * the load-balancing loss, with top 2 through the renormalized weights;
     * it is a small part of all gradients, so it is measured alone. */
    double rnorm = 0, e_router = router_grads(s, ggrads, grads, &rnorm);
    if (pc->targets && pc->cfg.num_experts > 0) {
        printf("  %-20s %s: router grads %.2e (norm %.3e), routing margin %.1e\n", pc->name,
               md->name, e_router, rnorm, margin);
        CHECK_MSG(rnorm > 0, "%s: the router has a gradient", pc->name);
        CHECK_MSG(e_router <= tol->grads, "%s %s router grads %.3e", pc->name, md->name, e_router);
    }

    if (prec == GPU_PRECISION_FP32) {
        /* One AdamW update of the very same gradients: the GPU's, copied into
         * the CPU set, with clipping active. */
        CHECK_OK(gpu_lora_download_grads(g, s));
        adamw_config oc;
        adamw_config_init(&oc);
        oc.lr = 1e-2;
        oc.weight_decay = 0.1;
        oc.max_grad_norm = 0.05;
        model_param *params[256];
        int n = lora_num_tensors(s);
        for (int i = 0; i < n && i < 256; i++) params[i] = lora_tensor(s, i);
        adamw *opt = NULL;
        CHECK_OK(adamw_create(&opt, params, n, &oc));
        CHECK_OK(gpu_adamw_init(g, &oc));
        for (int step = 0; step < 2 && opt; step++) {
            double lr = 0, norm = 0;
            CHECK_OK(adamw_step(opt));
            CHECK_OK(gpu_adamw_step(g, &lr, &norm));
            CHECK(lr == opt->last_lr);
            CHECK_NEAR(norm, opt->last_grad_norm, 1e-12 * opt->last_grad_norm);
        }
        CHECK_OK(gpu_lora_download(g, s2));
        float *cv = flat(s, 0), *gv = flat(s2, 0);
        char what[96];
        snprintf(what, sizeof what, "%s: 2 AdamW updates of the same grads", pc->name);
        GT_CLOSE(what, gv, cv, (size_t)np, 1e-6);
        /* the optimizer state round-trips through a CPU adamw (checkpoints) */
        adamw *copy = NULL;
        CHECK_OK(adamw_create(&copy, params, n, &oc));
        if (copy) {
            CHECK_OK(gpu_adamw_download(g, copy));
            CHECK(copy->step == 2);
            double e_m = 0;
            for (int64_t i = 0; i < copy->numel; i++)
                e_m = fmax(e_m, fabs((double)copy->exp_avg[i] - opt->exp_avg[i]));
            CHECK(e_m <= 1e-6);
            CHECK_OK(gpu_adamw_upload(g, copy));
        }
        adamw_free(copy);
        adamw_free(opt);
        free(cv), free(gv);
    }
    gpu_model_free(g);
    free(logits), free(glogits), free(glogits2), free(grads), free(ggrads), free(tok), free(tg);
    model_acts_free(a);
    lora_free(s), lora_free(s2);
    model_free(m);
}

/* 10 optimizer steps of K = 2 micro-batches (the same two every step, so the
 * loss falls), CPU trainer arithmetic against gpu_train_step. */
static void check_trajectory(const pcase *pc, const gmode *md) {
    enum { STEPS = 10, K = 2 };
    gpu_precision prec = md->prec;
    const tolerances *tol = prec == GPU_PRECISION_BF16 ? &TOL_BF16 : &TOL_FP32;
    int N = pc->B * pc->T, V = pc->cfg.vocab_size;
    model *m = make_model(&pc->cfg);
    lora_set *s = make_lora(m, pc, pc->dropout), *s2 = make_lora(m, pc, pc->dropout);
    int32_t *tok = malloc((size_t)K * N * 4), *tg = malloc((size_t)K * N * 4);
    for (int k = 0; k < K; k++) tiny_batch(tok + k * N, tg + k * N, N, V, 77 + k);
    int64_t count = 0;
    for (int i = 0; i < K * N; i++) count += tg[i] != MODEL_IGNORE_INDEX;

    adamw_config oc;
    adamw_config_init(&oc);
    oc.lr = 5e-3;
    oc.weight_decay = 0.01;
    oc.warmup_steps = 2;
    oc.total_steps = STEPS;
    oc.max_grad_norm = 1.0;

    gpu_options o;
    gpu_options_init(&o);
    o.precision = prec;
    o.simt_attention = md->simt_attention;
    o.batch = pc->B;
    o.seq = pc->T;
    o.head_rows = pc->head_rows;
    gpu_model *g = NULL;
    CHECK_OK(gpu_model_upload(&g, m, s, &o));
    if (!g) exit(check_finish());
    CHECK_OK(gpu_adamw_init(g, &oc));
    gpu_lora_set_training(g, 1);

    model_acts *a = NULL;
    CHECK_OK(lora_attach(s, m));
    CHECK_OK(lora_want_grads(s));
    CHECK_OK(lora_reserve(s, N));
    lora_set_training(s, 1);
    CHECK_OK(model_acts_create(&a, m, pc->B, pc->T));
    model_param *params[256];
    int n = lora_num_tensors(s);
    for (int i = 0; i < n && i < 256; i++) params[i] = lora_tensor(s, i);
    adamw *opt = NULL;
    CHECK_OK(adamw_create(&opt, params, n, &oc));
    if (!opt || !a) exit(check_finish());

    double cpu_loss[STEPS], gpu_loss[STEPS], worst = 0;
    for (int step = 0; step < STEPS; step++) {
        lora_zero_grads(s);
        double sum = 0;
        for (int k = 0; k < K; k++) {
            double ls;
            int64_t nt;
            CHECK_OK(model_forward(m, a, tok + k * N, tg + k * N, &ls, &nt));
            CHECK_OK(model_backward(m, a, 1.0 / (double)count));
            sum += ls;
        }
        CHECK_OK(adamw_step(opt));
        cpu_loss[step] = sum / (double)count;
        gpu_step_result r;
        CHECK_OK(gpu_train_step(g, tok, tg, K, &r));
        gpu_loss[step] = r.loss;
        CHECK(r.n_targets == count);
        CHECK(r.lr == opt->last_lr);
        double e = fabs(gpu_loss[step] - cpu_loss[step]) / fabs(cpu_loss[step]);
        worst = fmax(worst, e);
    }
    CHECK(gpu_lora_dropout_counter(g) == lora_dropout_counter(s));
    CHECK_OK(gpu_lora_download(g, s2));
    float *cv = flat(s, 0), *gv = flat(s2, 0);
    double e_param = gt_rel_l2(gv, cv, (size_t)lora_num_params(s), 1e-30);
    printf("  %-20s %s: 10 steps, loss %.4f -> %.4f (cpu %.4f -> %.4f), worst step loss %.2e, "
           "adapter %.2e\n",
           pc->name, md->name, gpu_loss[0], gpu_loss[STEPS - 1], cpu_loss[0], cpu_loss[STEPS - 1],
           worst, e_param);
    CHECK_MSG(worst <= tol->traj_loss, "%s %s trajectory loss %.3e", pc->name, md->name, worst);
    CHECK_MSG(e_param <= tol->traj_param, "%s %s trajectory adapter %.3e", pc->name, md->name,
              e_param);
    CHECK(cpu_loss[STEPS - 1] < cpu_loss[0]);
    CHECK(gpu_loss[STEPS - 1] < gpu_loss[0]);
    adamw_free(opt);
    model_acts_free(a);
    gpu_model_free(g);
    free(cv), free(gv), free(tok), free(tg);
    lora_free(s), lora_free(s2);
    model_free(m);
}

/* Generation: gpu_decode against model_decode (the CPU's KV cache), with the
 * adapter: a prompt's prefill, then one token at a time up to the context,
 * then a rewind that feeds three tokens at an earlier position (the CPU
 * replays the same prefix into a fresh cache). Every step's logits within
 * the forward's tolerance. */
static void check_decode(const pcase *pc, const gmode *md) {
    const tolerances *tol = md->prec == GPU_PRECISION_BF16 ? &TOL_BF16 : &TOL_FP32;
    int V = pc->cfg.vocab_size;
    int T = pc->T < pc->cfg.max_position ? pc->T : pc->cfg.max_position;
    model *m = make_model(&pc->cfg);
    lora_set *s = make_lora(m, pc, 0);
    CHECK_OK(lora_attach(s, m));
    model_kv_cache *kv = NULL;
    CHECK_OK(model_kv_cache_create(&kv, m, T));
    gpu_options o;
    gpu_options_init(&o);
    o.precision = md->prec;
    o.simt_attention = md->simt_attention;
    o.batch = 1;
    o.seq = T;
    gpu_model *g = NULL;
    CHECK_OK(gpu_model_upload(&g, m, s, &o));
    if (!g || !kv) exit(check_finish());
    int32_t *tok = malloc((size_t)T * 4), *tg = malloc((size_t)T * 4);
    tiny_batch(tok, tg, T, V, 4321);
    float *want = malloc((size_t)V * 4), *got = malloc((size_t)V * 4);
    double worst = 0;
    int p = T / 3 > 0 ? T / 3 : 1, steps = 0;
    for (int pos = 0; pos < T; steps++) {
        int n = pos == 0 ? p : 1;
        CHECK_OK(model_decode(m, kv, tok + pos, n, want));
        CHECK_OK(gpu_decode(g, tok + pos, n, pos, got));
        worst = fmax(worst, gt_rel_max(got, want, (size_t)V, 1e-30));
        pos += n;
    }
    /* rewind: positions r … r + 2 again, after the same prefix */
    int r = p / 2, n = T - r < 3 ? T - r : 3;
    model_kv_cache_reset(kv);
    if (r > 0) CHECK_OK(model_decode(m, kv, tok, r, want));
    for (int i = 0; i < n; i++) tok[r + i] = (tok[r + i] + 1 + i) % V;
    CHECK_OK(model_decode(m, kv, tok + r, n, want));
    CHECK_OK(gpu_decode(g, tok + r, n, r, got));
    double e_rewind = gt_rel_max(got, want, (size_t)V, 1e-30);
    printf("  %-20s %s: decode %d steps to %d positions, worst logits %.2e, rewind %.2e\n",
           pc->name, md->name, steps, T, worst, e_rewind);
    CHECK_MSG(worst <= tol->logits, "%s %s decode logits %.3e", pc->name, md->name, worst);
    CHECK_MSG(e_rewind <= tol->logits, "%s %s rewound decode logits %.3e", pc->name, md->name,
              e_rewind);
    gpu_model_free(g);
    model_kv_cache_free(kv);
    free(tok), free(tg), free(want), free(got);
    lora_detach(s);
    lora_free(s);
    model_free(m);
}

/* Errors are messages, not crashes. */
static void check_errors(void) {
    tiny_case tc[TINY_MAX_CASES];
    tiny_cases(tc);
    model *m = make_model(&tc[4].cfg); /* GPT-2, 16 positions */
    gpu_options o;
    gpu_options_init(&o);
    o.batch = 1;
    o.seq = 32;
    gpu_model *g = NULL;
    CHECK_FAILS_WITH(gpu_model_upload(&g, m, NULL, &o), "learned positions");
    o.seq = 8;
    o.device = 1 << 20;
    CHECK_FAILS_WITH(gpu_model_upload(&g, m, NULL, &o), "does not exist");
    o.device = 0;
    CHECK_OK(gpu_model_upload(&g, m, NULL, &o));
    if (g) {
        int32_t tok[8] = {0, 1, 2, 3, 4, 5, 6, 32}, tg[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        CHECK_FAILS_WITH(gpu_forward(g, tok, tg, NULL, NULL, NULL), "outside the vocabulary");
        tok[7] = 7;
        CHECK_FAILS_WITH(gpu_forward_backward(g, tok, tg, 1, NULL, NULL), "LoRA adapter");
        double loss;
        int64_t nt;
        CHECK_OK(gpu_forward(g, tok, tg, &loss, &nt, NULL));
        CHECK(nt == 8 && isfinite(loss));
        pcase all = {0};
        lora_set *s = make_lora(m, &all, 0);
        CHECK_FAILS_WITH(gpu_lora_download(g, s), "modules");
        adamw_config oc;
        adamw_config_init(&oc);
        CHECK_FAILS_WITH(gpu_adamw_init(g, &oc), "no LoRA adapter");
        lora_free(s);
        /* decoding: within the cache, from a position it holds, valid ids */
        float logits[256];
        CHECK(tc[4].cfg.vocab_size <= 256);
        CHECK_FAILS_WITH(gpu_decode(g, tok, 2, 1, logits), "the cache holds 0 positions");
        CHECK_FAILS_WITH(gpu_decode(g, tok, 9, 0, logits), "do not fit the 8 positions");
        tok[1] = -1;
        CHECK_FAILS_WITH(gpu_decode(g, tok, 2, 0, logits), "outside the vocabulary");
        tok[1] = 1;
        CHECK_OK(gpu_decode(g, tok, 5, 0, logits));
        CHECK_OK(gpu_decode(g, tok + 5, 1, 5, logits));
        CHECK_FAILS_WITH(gpu_decode(g, tok, 3, 6, logits), "do not fit");
        CHECK_FAILS_WITH(gpu_decode(g, tok, 1, 7, logits), "the cache holds 6 positions");
        /* a training-shaped pass reuses the cache's buffers: decoding starts over */
        CHECK_OK(gpu_forward(g, tok, tg, &loss, &nt, NULL));
        CHECK_FAILS_WITH(gpu_decode(g, tok, 1, 1, logits), "the cache holds 0 positions");
        CHECK_OK(gpu_decode(g, tok, 1, 0, logits));
        gpu_model_free(g);
    }
    o.batch = 2;
    CHECK_OK(gpu_model_upload(&g, m, NULL, &o));
    if (g) {
        int32_t tok[2] = {1, 2};
        float logits[256];
        CHECK_FAILS_WITH(gpu_decode(g, tok, 1, 0, logits), "batch 1");
        gpu_model_free(g);
    }
    model_free(m);
    /* a head dim past the CUDA attention's 256: refused at upload, by name */
    model_config wide = tc[0].cfg;
    wide.num_heads = wide.num_kv_heads = 1;
    wide.head_dim = 258;
    m = make_model(&wide);
    o.batch = 1;
    CHECK_FAILS_WITH(gpu_model_upload(&g, m, NULL, &o), "head_dim 258");
    model_free(m);
}

/* bf16 with CUDA-core attention runs only the cases tensor cores would
 * otherwise take (head_dim 32, 64, 128). */
static int mode_runs(const gmode *md, const pcase *pc) {
    int D = pc->cfg.head_dim;
    return !md->simt_attention || D == 32 || D == 64 || D == 128;
}

/* The CPU's logits (N·V) and LoRA gradients of one batch of pc's model m
 * (adapter s attached), as check_pass computes its reference. */
static void cpu_reference(const pcase *pc, model *m, lora_set *s, const int32_t *tok,
                          const int32_t *tg, float *logits, float *grads) {
    int N = pc->B * pc->T;
    model_acts *a = NULL;
    double loss = 0;
    int64_t nt = 0;
    CHECK_OK(model_acts_create(&a, m, pc->B, pc->T));
    if (!a) exit(check_finish());
    lora_zero_grads(s);
    CHECK_OK(model_forward(m, a, tok, tg, &loss, &nt));
    memcpy(logits, model_acts_logits(a), (size_t)N * pc->cfg.vocab_size * 4);
    CHECK_OK(model_backward(m, a, 1.0 / (double)nt));
    float *g = flat(s, 1);
    memcpy(grads, g, (size_t)lora_num_params(s) * sizeof *g);
    free(g);
    model_acts_free(a);
}

/* BLOOM's three options each matter in the parity cases: the CPU with one of
 * them switched off (on the same weights: ALiBi → no position signal at all,
 * the model has no wpe; query_key_value read as the fused q | k | v without
 * the (H, 3, D) permutation; no embedding LayerNorm) gives logits and LoRA
 * gradients far outside the bf16 bounds check_pass holds the GPU to, so a
 * CUDA backend that ignored an option, forward or backward, would fail
 * there. Runs on the CPU: no device needed. */
static void check_bloom_options(const pcase *cases, int n) {
    const double margin = 3; /* times the bf16 bounds */
    int seen = 0;
    for (int i = 0; i < n; i++) {
        const pcase *pc = &cases[i];
        if (pc->cfg.arch != MODEL_ARCH_BLOOM) continue;
        seen++;
        int N = pc->B * pc->T, V = pc->cfg.vocab_size;
        model *m = make_model(&pc->cfg);
        lora_set *s = make_lora(m, pc, 0);
        CHECK_OK(lora_attach(s, m));
        CHECK_OK(lora_want_grads(s));
        CHECK_OK(lora_reserve(s, N));
        size_t nl = (size_t)N * V, np = (size_t)lora_num_params(s);
        int32_t *tok = malloc((size_t)N * 4), *tg = malloc((size_t)N * 4);
        float *logits = malloc(nl * 4), *grads = malloc(np * 4);
        float *logits2 = malloc(nl * 4), *grads2 = malloc(np * 4);
        tiny_batch(tok, tg, N, V, 1234);
        cpu_reference(pc, m, s, tok, tg, logits, grads);
        for (int opt = 0; opt < 3; opt++) {
            model_block keep = m->cfg.block;
            const char *what = opt == 0   ? "ALiBi"
                               : opt == 1 ? "query_key_value by head"
                                          : "word_embeddings_layernorm";
            if (opt == 0) m->cfg.block.pos = MODEL_POS_LEARNED; /* m->wpe is NULL */
            if (opt == 1) m->cfg.block.qkv = MODEL_QKV_FUSED;
            if (opt == 2) m->cfg.block.embed_norm = 0;
            cpu_reference(pc, m, s, tok, tg, logits2, grads2);
            m->cfg.block = keep;
            double e_l = gt_rel_max(logits2, logits, nl, 1e-30);
            double e_g = gt_rel_l2(grads2, grads, np, 1e-30);
            printf("  %-20s without %s: logits %.2e, grads %.2e off\n", pc->name, what, e_l, e_g);
            CHECK_MSG(e_l > margin * TOL_BF16.logits, "%s: %s moves the logits by %.2e only",
                      pc->name, what, e_l);
            CHECK_MSG(e_g > margin * TOL_BF16.grads, "%s: %s moves the gradients by %.2e only",
                      pc->name, what, e_g);
        }
        lora_detach(s);
        lora_free(s);
        model_free(m);
        free(tok), free(tg), free(logits), free(grads), free(logits2), free(grads2);
    }
    CHECK(seen == 2);
}

int main(void) {
    pcase cases[32];
    int n = parity_cases(cases);
    check_bloom_options(cases, n);
    if (gpu_available() == 0) {
        printf("skipped: no CUDA device (BLOOM's options were checked)\n");
        return check_failed ? check_finish() : GPU_TEST_SKIP;
    }
    for (int mi = 0; mi < 3; mi++) {
        const gmode *md = &MODES[mi];
        printf("%s: one batch (rel_max logits, rel loss, rel_l2 gradients)\n", md->name);
        for (int i = 0; i < n; i++)
            if (mode_runs(md, &cases[i])) check_pass(&cases[i], md);
        printf("%s: training trajectory\n", md->name);
        if (!md->simt_attention) {
            check_trajectory(find_case(cases, n, "llama_gqa"), md);
            check_trajectory(find_case(cases, n, "gpt2"), md);
        }
        /* several tiles and head chunks */
        check_trajectory(find_case(cases, n, "qwen_mid"), md);
        check_trajectory(find_case(cases, n, "gemma2_mid"), md);
        check_trajectory(find_case(cases, n, "phi3_mid"), md);
        check_trajectory(find_case(cases, n, "bloom_mid"), md);
        if (md->prec == GPU_PRECISION_FP32) /* dropout masks */
            check_trajectory(find_case(cases, n, "llama_gqa_dropout"), md);
        /* a mixture of experts: the load-balancing loss in the objective over 10 steps */
        if (md->prec == GPU_PRECISION_FP32)
            check_trajectory(find_case(cases, n, "mixtral_top1_router"), md);
        printf("%s: generation (gpu_decode against model_decode)\n", md->name);
        /* (a mixture of experts in fp32 only: a bf16 token may route otherwise) */
        for (int i = 0; i < n; i++)
            if (cases[i].dropout == 0 && mode_runs(md, &cases[i]) &&
                (md->prec == GPU_PRECISION_FP32 || cases[i].cfg.num_experts == 0))
                check_decode(&cases[i], md);
    }
    check_errors();
    return check_finish();
}
