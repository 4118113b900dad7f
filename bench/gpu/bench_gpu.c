/* bench_gpu — LoRA training throughput of the CUDA backend: tokens/s and
 * model FLOP utilisation for one training step (forward, backward, AdamW)
 * as gpu_train_step runs it, on randomly initialised weights (speed does not
 * depend on the values).
 *
 * Shapes (built here; the reference script builds the same):
 *   gpt2-124m     GPT-2 small: V 50257, C 768, L 12, H 12, T <= 1024
 *   qwen2.5-0.5b  Qwen2.5-0.5B's shape (Llama family with q/k/v biases, GQA
 *                 14/2, tied embeddings): V 151936, C 896, F 4864, L 24
 *
 * FLOPs per token (docs/gpu.md): with the base frozen, forward 2 per weight
 * and backward 2 more (dx only, no dW), so
 *   4 · N_mm                       N_mm: weights of every matmul, LM head included
 * + 6 · L · H · D · (T + 1)        causal attention: QKᵀ and PV forward, dP, dS·K,
 *                                  dSᵀ·Q and Pᵀ·dO backward, over the (T+1)/2 keys
 *                                  a query sees on average
 * + 6 · Σ r · (in + out)           LoRA: 2 products forward, 4 backward
 * MFU = that × tokens/s / peak (dense bf16 tensor-core peak, --peak-tflops).
 *
 *   bench_gpu --model gpt2-124m --batch 8 --seq 1024 --rank 16 --steps 10 */
#include "bench/bench.h"
#include "bench/bench_lora_model.h"
#include "gpu/gpu.h"
#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int shape_config(const char *name, model_config *c) {
    if (strcmp(name, "gpt2-124m") == 0) return model_config_preset(c, "gpt2", "124m");
    if (strcmp(name, "qwen2.5-0.5b") == 0) {
        memset(c, 0, sizeof *c);
        model_config_family(c, MODEL_FAMILY_QWEN2);
        c->vocab_size = 151936;
        c->hidden_size = 896;
        c->intermediate_size = 4864;
        c->num_layers = 24;
        c->num_heads = 14;
        c->num_kv_heads = 2;
        c->head_dim = 64;
        c->max_position = 32768;
        c->norm_eps = 1e-6;
        c->rope_theta = 1000000;
        c->tie_embeddings = 1;
        c->qkv_bias = 1;
        c->bos_token_id = c->eos_token_id = -1;
        c->initializer_range = 0.02;
        strcpy(c->torch_dtype, "bfloat16");
        return model_config_check(c, name);
    }
    return err_set("unknown --model %s (gpt2-124m or qwen2.5-0.5b)", name);
}

/* Weights of every matmul: the blocks' linears and the LM head. */
static double matmul_params(const model *m) {
    double n = (double)m->cfg.vocab_size * m->cfg.hidden_size;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        const model_layer *L = &m->layers[l];
        const model_linear *all[] = {&L->q, &L->k,    &L->v,  &L->qkv,
                                     &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 8; j++)
            if (all[j]->w) n += (double)all[j]->in * all[j]->out;
    }
    return n;
}

static int arg_int(int argc, char **argv, int *i, int *out) {
    if (*i + 1 >= argc) return err_set("%s needs a value", argv[*i]);
    char *end;
    long v = strtol(argv[++*i], &end, 10);
    if (*end || v < 0 || v > 1 << 24) return err_set("%s: bad value %s", argv[*i - 1], argv[*i]);
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv) {
    const char *name = "gpt2-124m", *prec = "bf16", *attn = "auto";
    int B = 8, T = 1024, rank = 16, steps = 10, warmup = 3;
    double peak = 989.4; /* H100 SXM / H200: dense bf16 TFLOP/s (NVIDIA datasheet) */
    for (int i = 1; i < argc; i++) {
        int rc = 0;
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            name = argv[++i];
        else if (strcmp(argv[i], "--precision") == 0 && i + 1 < argc)
            prec = argv[++i];
        else if (strcmp(argv[i], "--attention") == 0 && i + 1 < argc)
            attn = argv[++i];
        else if (strcmp(argv[i], "--peak-tflops") == 0 && i + 1 < argc)
            peak = atof(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0)
            rc = arg_int(argc, argv, &i, &B);
        else if (strcmp(argv[i], "--seq") == 0)
            rc = arg_int(argc, argv, &i, &T);
        else if (strcmp(argv[i], "--rank") == 0)
            rc = arg_int(argc, argv, &i, &rank);
        else if (strcmp(argv[i], "--steps") == 0)
            rc = arg_int(argc, argv, &i, &steps);
        else if (strcmp(argv[i], "--warmup") == 0)
            rc = arg_int(argc, argv, &i, &warmup);
        else
            rc = err_set("usage: bench_gpu [--model gpt2-124m|qwen2.5-0.5b] [--batch B] [--seq T] "
                         "[--rank R] [--steps N] [--warmup N] [--precision bf16|fp32] "
                         "[--attention auto|simt] [--peak-tflops P]");
        if (rc != 0) {
            fprintf(stderr, "bench_gpu: %s\n", err_msg());
            return 2;
        }
    }
    if (rank < 1) {
        fprintf(stderr, "bench_gpu: --rank must be >= 1\n");
        return 2;
    }
    if (gpu_available() == 0) {
        fprintf(stderr, "bench_gpu: no CUDA device\n");
        return 2;
    }
    model_config cfg;
    model *m = NULL;
    lora_set *s = NULL;
    gpu_model *g = NULL;
    int32_t *tok = NULL, *tg = NULL;
    int rc = 1;
    double t0 = bench_now();
    if (shape_config(name, &cfg) != 0 || bench_lora_model(&cfg, rank, &m, &s) != 0) goto out;
    gpu_options o;
    gpu_options_init(&o);
    o.precision = strcmp(prec, "fp32") == 0 ? GPU_PRECISION_FP32 : GPU_PRECISION_BF16;
    o.simt_attention = strcmp(attn, "simt") == 0;
    o.batch = B;
    o.seq = T;
    if (gpu_model_upload(&g, m, s, &o) != 0) goto out;
    adamw_config oc;
    adamw_config_init(&oc);
    oc.lr = 1e-4;
    oc.weight_decay = 0;
    if (gpu_adamw_init(g, &oc) != 0) goto out;
    gpu_lora_set_training(g, 1);
    double setup = bench_now() - t0;

    size_t n = (size_t)B * T;
    tok = malloc(n * sizeof *tok);
    tg = malloc(n * sizeof *tg);
    if (!tok || !tg) {
        err_set("out of memory");
        goto out;
    }
    uint64_t state = 42;
    for (size_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((state >> 33) % (uint64_t)cfg.vocab_size);
    }
    for (size_t i = 0; i < n; i++) tg[i] = i % T == (size_t)T - 1 ? tok[i - T + 1] : tok[i + 1];
    gpu_step_result r;
    for (int i = 0; i < warmup; i++)
        if (gpu_train_step(g, tok, tg, 1, &r) != 0) goto out;
    double t1 = bench_now();
    for (int i = 0; i < steps; i++)
        if (gpu_train_step(g, tok, tg, 1, &r) != 0) goto out;
    double dt = bench_now() - t1;

    double nmm = matmul_params(m), nlora = 0;
    for (int i = 0; i < s->n_modules; i++)
        nlora += (double)s->modules[i].rank * (s->modules[i].in + s->modules[i].out);
    double attn_flops = 6.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * (T + 1.0);
    double flops_tok = 4 * nmm + attn_flops + 6 * nlora;
    double tps = (double)steps * n / dt;
    double tflops = flops_tok * tps / 1e12;
    char dev[128] = "?";
    gpu_device_info(0, dev, sizeof dev, NULL, NULL, NULL);
    printf("# %s on %s: N_mm %.1fM, LoRA %.2fM params, %.3g GFLOP/token (4N %.3g, attention "
           "%.3g, LoRA %.3g); setup %.1f s\n",
           name, dev, nmm / 1e6, (double)lora_num_params(s) / 1e6, flops_tok / 1e9, 4 * nmm / 1e9,
           attn_flops / 1e9, 6 * nlora / 1e9, setup);
    printf("bench_gpu model=%s precision=%s attention=%s batch=%d seq=%d rank=%d steps=%d "
           "tokens_per_s=%.0f ms_per_step=%.2f tflops=%.1f mfu=%.1f mem_gib=%.2f loss=%.4f\n",
           name, prec, attn, B, T, rank, steps, tps, 1e3 * dt / steps, tflops, 100 * tflops / peak,
           (double)gpu_model_device_bytes(g) / (1 << 30), r.loss);
    rc = 0;
out:
    if (rc != 0) fprintf(stderr, "bench_gpu: %s\n", err_msg());
    free(tok);
    free(tg);
    gpu_model_free(g);
    lora_free(s);
    model_free(m);
    return rc;
}
