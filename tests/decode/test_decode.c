/* test_decode — incremental decoding (model_decode with a KV cache) against
 * model_forward over the whole sequence.
 *
 * Compiled twice: against the fp32 libraries (decode_f32, tolerance 1e-5) and
 * the fp64 ones (decode_f64, tolerance 1e-12), per unit of the largest |logit|. For every graph of
 * tests/cpu/tiny.h (GQA, every bias, llama3 RoPE, a Mistral sliding window
 * shorter than the sequence, GPT-2) and one Llama with all of those at once
 * and a sequence longer than a prefill chunk, each without and with a LoRA
 * adapter on every linear (random B, dropout configured but off): the logits
 * that model_decode returns equal model_forward's at every position, for
 * token-by-token decoding, a prefill of k tokens followed by single steps,
 * and uneven steps; again after a reset. The cache refuses to grow past
 * max_T, an id outside the vocabulary, a cache of another model, and a GPT-2
 * cache beyond n_positions, each with a clear error and the cache unchanged. */
#include "lora/lora.h"
#include "model/model.h"
#include "tests/check.h"
#include "tests/cpu/tiny_lora.h"
#include "tests/support/ts_model.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>

#ifdef FL_REAL_F64
#define TOL 1e-12
#else
#define TOL 1e-5
#endif

/* The graphs of tiny.h at once, as a Qwen2 (the family with both a sliding
 * window and biases): GQA, llama3 RoPE, a window of 5, q/k/v biases; 150
 * positions, so a prefill spans several 64-row chunks. */
static model_config llama_all(void) {
    model_config c = tiny_llama();
    c.family = MODEL_FAMILY_QWEN2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 8;
    c.rope_llama3 = 1;
    c.rope_factor = 8;
    c.rope_low_freq_factor = 1;
    c.rope_high_freq_factor = 4;
    c.rope_original_max_position = 32;
    c.rope_theta = 100;
    c.sliding_window = 5;
    c.qkv_bias = 1;
    c.tie_embeddings = 0;
    c.max_position = 160;
    return c;
}

/* A LoRA set on every linear with random A and B (a fresh B is 0, which
 * would make the adapter invisible), dropout configured and turned off. */
static lora_set *random_adapter(model *m) {
    lora_set *s = tiny_adapter(m, 2, 3, 0.25, 5, 0.5, 1);
    CHECK_MSG(s != NULL, "adapter: %s", err_msg());
    if (!s) return NULL;
    CHECK_OK(lora_attach(s, m));
    lora_set_training(s, 0);
    return s;
}

/* Decodes tokens (T) from an empty cache: a first step of `first` tokens
 * (none when 0), then steps of the given sizes, cycled. Returns max |logits −
 * ref row| over the positions the steps end at, and checks the cache's length
 * after each. */
static double decode_in_steps(const model *m, model_kv_cache *c, const int32_t *tokens, int T,
                              const real *ref, int first, const int *steps, int n_steps,
                              real *logits) {
    int V = m->cfg.vocab_size;
    double err = 0;
    model_kv_cache_reset(c);
    for (int pos = 0, i = 0; pos < T; i++) {
        int want = pos == 0 && first > 0 ? first : steps[i % n_steps];
        int n = want < T - pos ? want : T - pos;
        if (model_decode(m, c, tokens + pos, n, logits) != 0) {
            CHECK_MSG(0, "decode %d tokens at %d: %s", n, pos, err_msg());
            return INFINITY;
        }
        pos += n;
        const real *row = ref + (size_t)(pos - 1) * V;
        for (int v = 0; v < V; v++) err = fmax(err, fabs((double)logits[v] - (double)row[v]));
        CHECK(model_kv_cache_len(c) == pos);
    }
    return err;
}

/* model_forward's logits (T, V) for one sequence; NULL on failure. */
static real *forward_logits(const model *m, const int32_t *tokens, int T) {
    model_acts *a = NULL;
    size_t n = (size_t)T * m->cfg.vocab_size;
    real *out = malloc(n * sizeof *out);
    CHECK_OK(model_acts_create(&a, m, 1, T));
    if (a && out && model_forward(m, a, tokens, NULL, NULL, NULL) == 0) {
        memcpy(out, model_acts_logits(a), n * sizeof *out);
    } else {
        CHECK_MSG(0, "forward: %s", err_msg());
        free(out);
        out = NULL;
    }
    model_acts_free(a);
    return out;
}

/* The logits of every schedule against model_forward's, for the model as it
 * is (with whatever adapter is attached). */
static void check_schedules(const char *name, const model *m, const int32_t *tokens, int T,
                            const real *ref) {
    int V = m->cfg.vocab_size;
    model_kv_cache *c = NULL;
    real *logits = malloc((size_t)V * sizeof *logits);
    CHECK_OK(model_kv_cache_create(&c, m, T));
    if (!c || !logits) {
        free(logits);
        model_kv_cache_free(c);
        return;
    }
    CHECK(model_kv_cache_capacity(c) == T);
    static const int one[] = {1}, uneven[] = {3, 1, 5, 2, 1, 7};
    struct {
        const char *what;
        int first;
        const int *steps;
        int n;
    } sched[] = {{"token by token", 0, one, 1},
                 {"prefill then steps", T > 70 ? 70 : T / 2, one, 1},
                 {"uneven steps", 0, uneven, 6},
                 {"whole sequence at once", T, one, 1},
                 {"token by token after reset", 0, one, 1}};
    /* Decoding one row computes its products with gemv, the forward with
     * gemm: the same sums in another order, so the bound is relative to the
     * logits' scale (TOL per unit of the largest |logit|, at least TOL). */
    double scale = fmax(1.0, ts_max_diff(ref, NULL, (int64_t)T * V));
    for (size_t i = 0; i < sizeof sched / sizeof sched[0]; i++) {
        double e = decode_in_steps(m, c, tokens, T, ref, sched[i].first, sched[i].steps, sched[i].n,
                                   logits);
        CHECK_MSG(e <= TOL * scale, "%s, %s: max |decode - forward| = %.3g > %g (max |logit| %.3g)",
                  name, sched[i].what, e, TOL * scale, scale);
        printf("%-18s %-28s max |decode - forward| %.2e (max |logit| %.2f)\n", name, sched[i].what,
               e, scale);
    }

    /* Full: one more token, and a prefill that would overflow, are refused
     * with the cache as it was. */
    CHECK_FAILS_WITH(model_decode(m, c, tokens, 1, logits), "KV cache full");
    CHECK(model_kv_cache_len(c) == T);
    model_kv_cache_reset(c);
    CHECK(model_kv_cache_len(c) == 0);
    CHECK_OK(model_decode(m, c, tokens, 1, logits));
    CHECK_FAILS_WITH(model_decode(m, c, tokens, T, logits), "KV cache full");
    CHECK(model_kv_cache_len(c) == 1);
    /* The refused calls left the cache intact: the next position still matches. */
    if (T > 1) {
        CHECK_OK(model_decode(m, c, tokens + 1, 1, logits));
        CHECK(ts_max_diff(logits, ref + (size_t)V, (size_t)V) <= TOL);
    }
    free(logits);
    model_kv_cache_free(c);
}

static void run_case(const char *name, const model_config *cfg, int T) {
    model *m = NULL;
    CHECK_OK(model_create(&m, cfg));
    if (!m) return;
    tiny_weights(m, 31);
    int32_t *tokens = malloc((size_t)T * sizeof *tokens);
    int32_t *unused = malloc((size_t)T * sizeof *unused);
    if (!tokens || !unused) {
        CHECK(0);
        goto done;
    }
    tiny_batch(tokens, unused, T, cfg->vocab_size, 32);

    real *base = forward_logits(m, tokens, T);
    if (base) check_schedules(name, m, tokens, T, base);

    lora_set *s = random_adapter(m);
    real *adapted = s ? forward_logits(m, tokens, T) : NULL;
    if (base && adapted) {
        /* The adapter changes the logits, so matching them below means
         * model_decode applied it. */
        double moved = ts_max_diff(base, adapted, (size_t)T * cfg->vocab_size);
        CHECK_MSG(moved > 1e-3, "%s: the adapter moved the logits by only %.3g", name, moved);
        char with[64];
        snprintf(with, sizeof with, "%s + lora", name);
        check_schedules(with, m, tokens, T, adapted);
    }
    free(adapted);
    free(base);
    lora_free(s);
done:
    free(tokens);
    free(unused);
    model_free(m);
}

static void test_errors(void) {
    tiny_case cases[TINY_MAX_CASES];
    int n = tiny_cases(cases);
    const model_config *gpt2 = NULL, *llama = &cases[0].cfg;
    for (int i = 0; i < n; i++)
        if (cases[i].cfg.arch == MODEL_ARCH_GPT2) gpt2 = &cases[i].cfg;
    model *m = NULL, *other = NULL;
    model_kv_cache *c = NULL;
    CHECK(gpt2 != NULL);
    if (!gpt2) return;
    CHECK_OK(model_create(&m, gpt2));
    CHECK_OK(model_create(&other, llama));
    if (!m || !other) goto done;
    tiny_weights(m, 3);
    CHECK_FAILS_WITH(model_kv_cache_create(&c, m, gpt2->max_position + 1), "learned positions");
    CHECK(c == NULL);
    CHECK_FAILS_WITH(model_kv_cache_create(&c, m, 0), "at least one");
    CHECK_OK(model_kv_cache_create(&c, m, gpt2->max_position));
    if (!c) goto done;
    real logits[64];
    int32_t bad[2] = {1, gpt2->vocab_size}, neg = -1;
    CHECK_FAILS_WITH(model_decode(m, c, bad, 2, logits), "outside the vocabulary");
    CHECK_FAILS_WITH(model_decode(m, c, &neg, 1, logits), "outside the vocabulary");
    CHECK_FAILS_WITH(model_decode(m, c, bad, 0, logits), "at least one");
    CHECK_FAILS_WITH(model_decode(other, c, bad, 1, logits), "another model");
    CHECK(model_kv_cache_len(c) == 0);
    CHECK_OK(model_decode(m, c, bad, 1, logits));
    CHECK(model_kv_cache_len(c) == 1);
done:
    model_kv_cache_free(c);
    model_free(m);
    model_free(other);
}

int main(void) {
    tiny_case cases[TINY_MAX_CASES];
    int n = tiny_cases(cases);
    for (int i = 0; i < n; i++) {
        /* a longer sequence than tiny.h's batches; GPT-2 fills its context */
        int T = cases[i].cfg.max_position < 24 ? cases[i].cfg.max_position : 24;
        /* LongRoPE picks its factors by each call's length (transformers'
         * generation), so decoding across the original context is not the
         * forward of the whole sequence (test_decode_longrope checks that
         * against transformers): here the whole sequence stays within it. */
        if (cases[i].cfg.rope_longrope) cases[i].cfg.rope_original_max_position = T;
        run_case(cases[i].name, &cases[i].cfg, T);
    }
    model_config all = llama_all();
    run_case("llama_all", &all, 150);
    test_errors();
    return check_finish();
}
