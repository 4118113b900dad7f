/* bench_lora — LoRA training tokens/s and peak memory of the CPU backend.
 *
 *   bench_lora --arch gpt2|llama --preset 124m|100m [--rank R --batch B --seq T --steps N]
 *              [--precision fp32|bf16]
 *
 * fp32: the model in fp32 memory, fp32 GEMMs (OpenBLAS). bf16: the model as
 * a user holds a bf16 checkpoint (mapped, 2 bytes a weight) and the frozen
 * GEMMs in bf16 with fp32 sums (oneDNN), the rest in fp32.
 *
 * One step is what train/trainer.c does per optimizer step: zero the adapter's
 * gradients, forward and backward with the adapters attached (no gradient
 * for the frozen base weights), AdamW with clipping. Adapters of rank R (16)
 * on every linear layer of the blocks (PEFT's "all-linear"), alpha 2R,
 * random weights (model_init_random) and random tokens: the same work that
 * bench/lora/ref_peft.py measures with PyTorch + PEFT.
 *
 * Peak memory is the process's ru_maxrss (getrusage) at the end: the
 * weights, the activations, the adapter and its optimizer state, and
 * everything else the process holds.
 *
 * Also printed: the GEMM peak of the precision on this machine, measured in
 * the same process (a (B·T, C) x (C, 4C) product, the shape of an MLP's
 * first linear, repeated), and the share of it the training step reaches,
 * counting 4N FLOPs per token for the N weights the step multiplies by
 * (forward and the backward to the inputs; no weight gradients) and
 * 6·T·H·D per token and layer for causal attention (forward 2 products,
 * backward 4, over half the T x T scores). */
#include "bench/bench.h"
#include "bench/bench_lora_model.h"
#include "lora/adamw.h"
#include "lora/lora.h"
#include "model/cpu/cpu.h"
#include "model/model.h"
#include "util/err.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static int fail(void) {
    fprintf(stderr, "bench_lora: %s\n", err_msg());
    return 1;
}

/* GFLOP/s of the precision's GEMM on an (M, C) x (C, 4C) product (best of
 * 5 after a warm-up): what a step could reach if it were all GEMMs. */
static double gemm_peak(int bf16, int M, int C) {
    int N = 4 * C;
    real *a = calloc((size_t)M * C, sizeof *a), *c = calloc((size_t)M * N, sizeof *c);
    void *w = calloc((size_t)N * C, bf16 ? 2 : sizeof(real));
    uint64_t r = 7;
    for (int64_t i = 0; a && i < (int64_t)M * C; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        a[i] = (real)((r >> 40) & 0xffff) / 65536.0f - 0.5f;
    }
    for (int64_t i = 0; w && i < (int64_t)N * C; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        real v = (real)((r >> 40) & 0xffff) / 65536.0f - 0.5f;
        if (bf16)
            model_values_to_bf16(&v, 1, (uint16_t *)w + i);
        else
            ((real *)w)[i] = v;
    }
    double best = 1e30;
    for (int it = 0; a && c && w && it < 6; it++) {
        double t0 = bench_now();
        if (bf16) {
            if (cpu_bf16_gemm(1, M, N, C, a, C, w, 0, c, N) != 0) break;
        } else {
            cpu_gemm(0, 1, M, N, C, 1, a, C, w, C, 0, c, N);
        }
        double dt = bench_now() - t0;
        if (it > 0 && dt < best) best = dt;
    }
    free(a);
    free(c);
    free(w);
    return 2.0 * M * N * C / best / 1e9;
}

/* Weights of the products a token passes through: every linear and the LM
 * head (the embedding is a lookup). */
static double frozen_matmul_params(const model *m) {
    double n = 0;
    /* A mixture of experts multiplies each token by k of its E experts:
     * an expert's weights count k / E of theirs (the router counts whole). */
    double expert_share =
        m->cfg.num_experts > 0 ? (double)m->cfg.experts_per_tok / (double)m->cfg.num_experts : 1.0;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].ndim == 2 && &m->params[i] != m->wte && &m->params[i] != m->wpe)
            n += (double)m->params[i].numel *
                 (strstr(m->params[i].name, ".experts.") ? expert_share : 1.0);
    if (m->lm_head == m->wte) n += (double)m->wte->numel;
    return n;
}

int main(int argc, char **argv) {
    const char *arch = "gpt2", *preset = "124m", *precision = "fp32";
    int rank = 16, B = 4, T = 256, steps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--arch"))
            arch = argv[i + 1];
        else if (!strcmp(argv[i], "--preset"))
            preset = argv[i + 1];
        else if (!strcmp(argv[i], "--rank"))
            rank = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq"))
            T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--precision"))
            precision = argv[i + 1];
        else {
            fprintf(stderr, "bench_lora: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (rank < 1 || B < 1 || T < 1 || steps < 1) {
        fprintf(stderr, "bench_lora: --rank, --batch, --seq and --steps must be >= 1\n");
        return 2;
    }
    model_config cfg;
    model *m = NULL;
    model_acts *a = NULL;
    lora_set *s = NULL;
    adamw *opt = NULL;
    int bf16 = !strcmp(precision, "bf16");
    if (!bf16 && strcmp(precision, "fp32") != 0) {
        fprintf(stderr, "bench_lora: --precision must be fp32 or bf16\n");
        return 2;
    }
    if (model_config_preset(&cfg, arch, preset) != 0 ||
        (bf16 ? bench_lora_model_bf16(&cfg, rank, MODEL_PRECISION_BF16, &m, &s)
              : bench_lora_model(&cfg, rank, &m, &s)) != 0 ||
        lora_want_grads(s) != 0 || lora_reserve(s, B * T) != 0 || lora_attach(s, m) != 0 ||
        model_acts_create(&a, m, B, T) != 0)
        return fail();
    int n = lora_num_tensors(s);
    model_param **params = malloc(sizeof *params * (size_t)n);
    if (!params) return 1;
    for (int i = 0; i < n; i++) params[i] = lora_tensor(s, i);
    adamw_config oc;
    adamw_config_init(&oc);
    oc.lr = 1e-4;
    if (adamw_create(&opt, params, n, &oc) != 0) return fail();
    lora_set_training(s, 1);

    int32_t *tok = malloc(sizeof(int32_t) * B * T), *tgt = malloc(sizeof(int32_t) * B * T);
    uint64_t r = 42;
    for (int i = 0; i < B * T; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((r >> 33) % (uint64_t)cfg.vocab_size);
    }
    for (int i = 0; i < B * T; i++) tgt[i] = (i % T == T - 1) ? MODEL_IGNORE_INDEX : tok[i + 1];

    double best = 1e30, loss = 0;
    for (int it = 0; it < steps + 1; it++) { /* the first one warms up */
        double ls;
        int64_t nt;
        double t0 = bench_now();
        lora_zero_grads(s);
        if (model_forward(m, a, tok, tgt, &ls, &nt) != 0 || model_backward(m, a, 1.0 / nt) != 0 ||
            adamw_step(opt) != 0)
            return fail();
        double dt = bench_now() - t0;
        if (it > 0 && dt < best) best = dt;
        loss = ls / nt;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double peak = gemm_peak(bf16, B * T, cfg.hidden_size);
    double flops =
        4.0 * frozen_matmul_params(m) + 6.0 * T * cfg.num_layers * cfg.num_heads * cfg.head_dim;
    double achieved = flops * B * T / best / 1e9;
    printf("fedlora %s-%s precision=%s threads=%d B=%d T=%d r=%d modules=%d trainable=%lld "
           "loss=%.4f tokens/s=%.1f peak_rss_mib=%.0f gemm_peak_gflops=%.1f step_gflops=%.1f "
           "share_of_peak=%.2f\n",
           arch, preset, precision, omp_get_max_threads(), B, T, rank, s->n_modules,
           (long long)lora_num_params(s), loss, B * T / best, ru.ru_maxrss / 1024.0, peak, achieved,
           achieved / peak);
    adamw_free(opt);
    lora_free(s);
    model_acts_free(a);
    model_free(m);
    free(params);
    free(tok);
    free(tgt);
    return 0;
}
