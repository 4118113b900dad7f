/* bench_generate — text generation speed (what `fedlora generate` does) of
 * the decoder (generate/decoder.h): a prompt's prefill, then greedy decoding one
 * token at a time from the KV cache, with a LoRA adapter attached unmerged.
 *
 *   bench_generate --arch gpt2|llama --preset 124m|100m [--prompt P --new G --rank R
 *                  --repeats N --device cpu|cuda --precision fp32|bf16
 *                  --temperature T --top-p P]
 *
 * Random weights (model_init_random) and a random prompt of P tokens (128);
 * G new tokens (128) chosen by argmax, as `fedlora generate --temperature 0`
 * (no sampling cost on either side, no early stop at EOS; --temperature and
 * --top-p sample instead, through generate/sampler.h); an adapter of
 * rank R (16, 0 for none) on every linear layer of the blocks (PEFT's
 * "all-linear"), as `generate --adapter` runs it. Reported: the prefill's
 * time and tokens/s, the decode rate over the G − 1 single-token steps
 * (each step: the model on one new position, attention over the cache, the
 * LM head, the argmax), and the process's peak RSS. Best of N (3) repeats
 * after a warm-up; bench/generate/ref_hf_generate.py measures the same with
 * transformers' generate(). */
#include "bench/bench.h"
#include "bench/bench_lora_model.h"
#include "generate/decoder.h"
#include "generate/sampler.h"
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
    fprintf(stderr, "bench_generate: %s\n", err_msg());
    return 1;
}

int main(int argc, char **argv) {
    const char *arch = "gpt2", *preset = "124m", *device = "cpu", *precision = NULL;
    int P = 128, G = 128, rank = 16, repeats = 3;
    double temperature = 0, top_p = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--arch"))
            arch = v;
        else if (!strcmp(k, "--preset"))
            preset = v;
        else if (!strcmp(k, "--prompt"))
            P = atoi(v);
        else if (!strcmp(k, "--new"))
            G = atoi(v);
        else if (!strcmp(k, "--rank"))
            rank = atoi(v);
        else if (!strcmp(k, "--repeats"))
            repeats = atoi(v);
        else if (!strcmp(k, "--device"))
            device = v;
        else if (!strcmp(k, "--precision"))
            precision = v;
        else if (!strcmp(k, "--temperature"))
            temperature = atof(v);
        else if (!strcmp(k, "--top-p"))
            top_p = atof(v);
        else {
            fprintf(stderr, "bench_generate: unknown option %s\n", k);
            return 2;
        }
    }
    if (P < 1 || G < 2 || rank < 0 || repeats < 1) {
        fprintf(stderr, "bench_generate: needs --prompt >= 1, --new >= 2, --rank >= 0\n");
        return 2;
    }
    model_config cfg;
    model *m = NULL;
    lora_set *s = NULL;
    decoder *d = NULL;
    if (model_config_preset(&cfg, arch, preset) != 0 || bench_lora_model(&cfg, rank, &m, &s) != 0)
        return fail();
    if (decoder_open(&d, m, s, P + G, device, precision) != 0) return fail();
    int V = cfg.vocab_size;
    int32_t *seq = malloc(sizeof *seq * (size_t)(P + G));
    real *logits = malloc(sizeof *logits * (size_t)V);
    if (!seq || !logits) return 1;
    uint64_t r = 42;
    for (int i = 0; i < P; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        seq[i] = (int32_t)((r >> 33) % (uint64_t)V);
    }

    double best_prefill = 1e30, best_decode = 1e30;
    uint64_t check = 0;
    for (int it = 0; it < repeats + 1; it++) { /* the first one warms up */
        sampler *smp = NULL;                   /* the same seed every repeat */
        if (sampler_create(&smp, V, temperature, top_p, 1) != 0) return fail();
        decoder_reset(d);
        double t0 = bench_now();
        if (decoder_step(d, seq, P, logits) != 0) return fail();
        if ((seq[P] = sampler_next(smp, logits)) < 0) return fail();
        double t1 = bench_now();
        for (int j = 1; j < G; j++) {
            if (decoder_step(d, &seq[P + j - 1], 1, logits) != 0) return fail();
            if ((seq[P + j] = sampler_next(smp, logits)) < 0) return fail();
        }
        double t2 = bench_now();
        sampler_free(smp);
        if (it > 0) {
            if (t1 - t0 < best_prefill) best_prefill = t1 - t0;
            if (t2 - t1 < best_decode) best_decode = t2 - t1;
        }
        /* The same tokens every repeat (same seed): a cheap check that the
         * cache was reset, printed so that runs can be compared. */
        uint64_t h = 1469598103934665603ull;
        for (int j = 0; j < G; j++) h = (h ^ (uint64_t)seq[P + j]) * 1099511628211ull;
        if (it > 0 && h != check) {
            fprintf(stderr, "bench_generate: repeat %d generated other tokens\n", it);
            return 1;
        }
        check = h;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("fedlora %s-%s device=%s threads=%d P=%d G=%d r=%d T=%g top_p=%g prefill_s=%.4f "
           "prefill_tokens/s=%.1f decode_ms/token=%.2f decode_tokens/s=%.1f tokens=%016llx "
           "peak_rss_mib=%.0f\n",
           arch, preset, decoder_device(d), omp_get_max_threads(), P, G, rank, temperature, top_p,
           best_prefill, P / best_prefill, 1e3 * best_decode / (G - 1), (G - 1) / best_decode,
           (unsigned long long)check, ru.ru_maxrss / 1024.0);
    decoder_free(d);
    lora_free(s);
    model_free(m);
    free(seq);
    free(logits);
    return 0;
}
