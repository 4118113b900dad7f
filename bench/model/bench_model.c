/* bench_model — forward+backward tokens/s of the CPU backend, and the
 * achieved FLOP/s as a fraction of this machine's measured sgemm peak.
 *
 *   bench_model --arch gpt2|llama --preset 124m|100m [--batch B --seq T --steps N]
 *
 * Every parameter's gradient is requested, so the work equals a PyTorch
 * full fine-tuning step (loss.backward() on all weights), which is what
 * bench/model/ref_torch.py measures with the same shapes and threads.
 *
 * FLOPs per token (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, app. B):
 * 6·N for the weight matmuls (forward 2N, backward 4N; N counts the LM head
 * but not the embedding lookups) plus 12·L·T·H·D for attention (q·kᵀ and
 * p·v, 4·T·H·D per layer forward, three times that with backward). */
#include "bench/bench.h"
#include "model/cpu/cpu.h"
#include "model/model.h"
#include "util/err.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* sgemm peak: the best of a few square products large enough to be
 * compute-bound (n = 2048: 17 GFLOP each), through cpu_gemm, i.e. with the
 * same OpenBLAS kernels and the same OpenMP threads as the model's GEMMs. */
static double sgemm_peak(void) {
    int n = 2048;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) return 0;
    for (int i = 0; i < n * n; i++) a[i] = b[i] = 1.0f / (1 + i % 7);
    double best = 0;
    for (int r = 0; r < 4; r++) {
        double t0 = bench_now();
        cpu_gemm(0, 1, n, n, n, 1, a, n, b, n, 0, c, n);
        double dt = bench_now() - t0;
        double f = 2.0 * n * n * n / dt;
        if (f > best) best = f;
    }
    free(a), free(b), free(c);
    return best;
}

int main(int argc, char **argv) {
    const char *arch = "gpt2", *preset = "124m";
    int B = 4, T = 256, steps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--arch"))
            arch = argv[i + 1];
        else if (!strcmp(argv[i], "--preset"))
            preset = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq"))
            T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_model: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    model_config cfg;
    model *m;
    model_acts *a;
    if (model_config_preset(&cfg, arch, preset) != 0 || model_create(&m, &cfg) != 0 ||
        model_want_all_grads(m) != 0 || model_acts_create(&a, m, B, T) != 0) {
        fprintf(stderr, "bench_model: %s\n", err_msg());
        return 1;
    }
    model_init_random(m, 1);
    int32_t *tok = malloc(sizeof(int32_t) * B * T), *tgt = malloc(sizeof(int32_t) * B * T);
    uint64_t s = 42;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)cfg.vocab_size);
    }
    for (int i = 0; i < B * T; i++) tgt[i] = (i % T == T - 1) ? MODEL_IGNORE_INDEX : tok[i + 1];

    long long n_dense = model_config_num_params(&cfg);
    /* The embedding lookup is no matmul; a tied LM head is one. */
    n_dense -= (long long)cfg.vocab_size * cfg.hidden_size * (cfg.tie_embeddings ? 0 : 1);
    if (cfg.arch == MODEL_ARCH_GPT2) n_dense -= (long long)cfg.max_position * cfg.hidden_size;
    double flops_tok = 6.0 * n_dense + 12.0 * cfg.num_layers * T * cfg.num_heads * cfg.head_dim;

    double best = 1e30, loss = 0;
    for (int it = 0; it < steps + 1; it++) { /* first one warms up */
        double ls;
        int64_t nt;
        double t0 = bench_now();
        if (model_forward(m, a, tok, tgt, &ls, &nt) != 0 || model_backward(m, a, 1.0 / nt) != 0) {
            fprintf(stderr, "bench_model: %s\n", err_msg());
            return 1;
        }
        double dt = bench_now() - t0;
        if (it > 0 && dt < best) best = dt;
        loss = ls / nt;
    }
    double tps = B * T / best;
    cpu_init();
    double peak = sgemm_peak();
    printf("fedlora %s-%s threads=%d B=%d T=%d params=%lld loss=%.4f tokens/s=%.1f "
           "GFLOP/s=%.1f sgemm_peak=%.1f fraction=%.3f\n",
           arch, preset, omp_get_max_threads(), B, T, model_config_num_params(&cfg), loss, tps,
           tps * flops_tok / 1e9, peak / 1e9, tps * flops_tok / peak);
    model_acts_free(a);
    model_free(m);
    free(tok), free(tgt);
    return 0;
}
