/* bench_policies — aggregation throughput and memory of one round.
 *
 * K members' rank-r adapters on every linear layer of a Llama-shaped model
 * (hidden 1024, MLP 2816, GQA 16/4 heads, 2 layers; --hidden scales it, with
 * MLP 2.75x and 64-wide heads, for quick runs), aggregated under one
 * rule; GB/s = bytes of factors in (every member's A and B, 10^9 bytes) per
 * second of aggregate_round, best of --reps, next to a memcpy of the same
 * number of bytes in the same process. Memory: the resident set before the
 * round (model + adapters) and the peak after it (ru_maxrss), so the
 * difference is the round's working memory.
 *
 * Usage: bench_policies --members K --rule mean|median|trimmed_mean|krum|dp|svd
 *                       [--rank R] [--reps N] [--hidden C] */
#include "bench/bench.h"
#include "lora/lora.h"
#include "model/model.h"
#include "policies/aggregate.h"
#include "policies/rng.h"
#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double rss_mib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return (double)res * sysconf(_SC_PAGESIZE) / (1 << 20);
}

static double peak_mib(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss / 1024.0;
}

int main(int argc, char **argv) {
    int K = 8, rank = 16, reps = 3, hidden = 1024;
    const char *rule = "mean";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--members"))
            K = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rule"))
            rule = argv[i + 1];
        else if (!strcmp(argv[i], "--rank"))
            rank = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--hidden"))
            hidden = atoi(argv[i + 1]);
    }
    if (hidden < 64 || hidden % 64 != 0) {
        fprintf(stderr, "--hidden must be a multiple of 64 (heads are 64 wide)\n");
        return 2;
    }
    policy p;
    policy_defaults(&p);
    p.weighting.by = POLICY_WEIGHT_EQUAL;
    p.mode = POLICY_MODE_PRODUCTION;
    if (!strcmp(rule, "median"))
        p.robust.rule = POLICY_RULE_MEDIAN;
    else if (!strcmp(rule, "trimmed_mean"))
        p.robust.rule = POLICY_RULE_TRIMMED_MEAN;
    else if (!strcmp(rule, "krum"))
        p.robust.rule = POLICY_RULE_KRUM;
    else if (!strcmp(rule, "svd"))
        p.merge.mode = POLICY_MERGE_SVD;
    else if (!strcmp(rule, "dp"))
        p.dp.enabled = 1;
    else if (strcmp(rule, "mean") != 0) {
        fprintf(stderr, "unknown --rule %s\n", rule);
        return 2;
    }
    model_config c;
    memset(&c, 0, sizeof c);
    model_config_family(&c, MODEL_FAMILY_LLAMA);
    c.vocab_size = 320;
    c.hidden_size = hidden;
    c.intermediate_size = hidden * 11 / 4; /* 2816 for 1024 */
    c.num_layers = 2;
    c.num_heads = hidden / 64;
    c.num_kv_heads = c.num_heads >= 4 ? c.num_heads / 4 : 1;
    c.head_dim = 64;
    c.max_position = 256;
    c.norm_eps = 1e-5;
    c.rope_theta = 10000;
    c.bos_token_id = c.eos_token_id = -1;
    c.initializer_range = 0.02;
    strcpy(c.torch_dtype, "float32");
    model *m;
    if (model_create(&m, &c) != 0) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    model_init_random(m, 1);
    lora_config lc;
    lora_config_init(&lc);
    lc.rank = rank;
    lc.alpha = 2 * rank;
    lora_config_set_targets(&lc, "all-linear");
    lora_set **sets = calloc((size_t)K, sizeof *sets);
    aggregate_member *mb = calloc((size_t)K, sizeof *mb);
    for (int k = 0; k < K; k++) {
        if (lora_create(&sets[k], m, &lc) != 0) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        for (int t = 0; t < lora_num_tensors(sets[k]); t++) {
            model_param *q = lora_tensor(sets[k], t);
            for (int64_t j = 0; j < q->numel; j++)
                q->data[j] =
                    (real)(0.01 *
                           (rng_unit(rng_at((uint64_t)k, (uint64_t)t, 0, (uint64_t)j)) - 0.5));
        }
        mb[k] = (aggregate_member){"member", sets[k], 1000, 10};
    }
    noise_source *ns = NULL;
    aggregate_round_info info = {.round = 1, .roster_size = K};
    if (p.dp.enabled && noise_open(&ns, &p, NULL) != 0) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    double before = rss_mib(), best = 1e30;
    aggregate_report rep = {0};
    for (int r = 0; r < reps; r++) {
        aggregate_report_free(&rep);
        double t0 = bench_now();
        if (aggregate_round(&p, m, mb, K, &info, ns, NULL, &rep) != 0) {
            fprintf(stderr, "%s\n", err_msg());
            return 1;
        }
        double t = bench_now() - t0;
        best = t < best ? t : best;
    }
    double peak = peak_mib();
    /* memcpy of the same bytes, best of 5. */
    size_t bytes = (size_t)rep.bytes_in;
    char *src = malloc(bytes), *dst = malloc(bytes);
    memset(src, 1, bytes);
    memset(dst, 0, bytes);
    double mbest = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0 = bench_now();
        memcpy(dst, src, bytes);
        double t = bench_now() - t0;
        mbest = t < mbest ? t : mbest;
        src[r] = dst[bytes - 1 - r]; /* keep the copies observable */
    }
    printf("rule=%s members=%d rank=%d modules=%d delta_mb=%.1f seconds=%.4f gbps=%.3f "
           "memcpy_gbps=%.2f ratio=%.4f rss_before_mib=%.0f peak_rss_mib=%.0f work_mib=%.0f\n",
           rule, K, rank, rep.n_modules, bytes / 1e6, best, bytes / best / 1e9, bytes / mbest / 1e9,
           mbest / best, before, peak, peak - before);
    free(src);
    free(dst);
    aggregate_report_free(&rep);
    noise_free(ns);
    for (int k = 0; k < K; k++) lora_free(sets[k]);
    free(sets);
    free(mb);
    lora_config_free(&lc);
    model_free(m);
    return 0;
}
