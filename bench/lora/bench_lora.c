/* bench_lora — LoRA training tokens/s and peak memory of the CPU backend.
 *
 *   bench_lora --arch gpt2|llama --preset 124m|100m [--rank R --batch B --seq T --steps N]
 *
 * One step is what lora/trainer.c does per optimizer step: zero the adapter's
 * gradients, forward and backward with the adapters attached (no gradient
 * for the frozen base weights), AdamW with clipping. Adapters of rank R (16)
 * on every linear layer of the blocks (PEFT's "all-linear"), alpha 2R,
 * random weights (model_init_random) and random tokens: the same work that
 * bench/lora/ref_peft.py measures with PyTorch + PEFT.
 *
 * Peak memory is the process's ru_maxrss (getrusage) at the end: the
 * weights, the activations, the adapter and its optimizer state, and
 * everything else the process holds. */
#include "bench/bench.h"
#include "bench/bench_lora_model.h"
#include "lora/adamw.h"
#include "lora/lora.h"
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

int main(int argc, char **argv) {
    const char *arch = "gpt2", *preset = "124m";
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
    if (model_config_preset(&cfg, arch, preset) != 0 || bench_lora_model(&cfg, rank, &m, &s) != 0 ||
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
    printf("fedlora %s-%s threads=%d B=%d T=%d r=%d modules=%d trainable=%lld loss=%.4f "
           "tokens/s=%.1f peak_rss_mib=%.0f\n",
           arch, preset, omp_get_max_threads(), B, T, rank, s->n_modules,
           (long long)lora_num_params(s), loss, B * T / best, ru.ru_maxrss / 1024.0);
    adamw_free(opt);
    lora_free(s);
    model_acts_free(a);
    model_free(m);
    free(params);
    free(tok);
    free(tgt);
    return 0;
}
