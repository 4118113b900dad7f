/* Weights held in their checkpoint's dtype (model/checkpoint.h checkpoint_map,
 * model/cpu/wgemm.c) and models written as streams (checkpoint_write):
 *
 *   - cpu_wgemm with a bf16 or fp16 weight at fp32 precision gives exactly
 *     the bits of the same product over the weight widened to fp32 first
 *     (forward and backward forms, one-row products, a K long enough to be
 *     summed in slices, 1-3 threads), and the right numbers (double
 *     reference);
 *   - a mapped bf16/fp16/fp32 checkpoint (Llama and GPT-2, whose Conv1D
 *     weights are copied transposed) gives, at fp32 precision, the logits,
 *     loss and LoRA gradients of the same checkpoint loaded widened, bit for
 *     bit; its matrices are not copied (read from the file) except Conv1D;
 *     at bf16 precision an fp32 checkpoint's matrices become bf16;
 *   - sharded writing: the split follows transformers' rule, the index
 *     names every tensor, and the shards load as the single file does; a
 *     rewrite in the other layout removes the first;
 *   - merge-adapter's and merge's streamed folds into a mapped base write
 *     the bytes of the in-place merge of a widened model. */
#include "lora/delta.h"
#include "lora/lora.h"
#include "model/checkpoint.h"
#include "model/cpu/cpu.h"
#include "model/safetensors.h"
#include "policies/mergekit.h"
#include "tests/check.h"
#include "tests/cpu/tiny.h"
#include "tests/cpu/tiny_lora.h"
#include "tests/support/ts.h"
#include "util/err.h"
#include "util/fio.h"

#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static uint16_t bf16_of(float f) {
    real v = f;
    uint16_t h;
    model_values_to_bf16(&v, 1, &h);
    return h;
}

/* A weight param over given values (not owned by any model). */
static model_param weight(int out, int in, model_dtype dt, const void *values) {
    model_param p = {.ndim = 2, .shape = {out, in}, .numel = (int64_t)out * in, .dtype = dt};
    p.values = values;
    snprintf(p.name, sizeof p.name, "w.weight");
    return p;
}

static void check_wgemm(void) {
    /* K = in = 9000 > CPU_KTILE: the forward sums in two slices. */
    static const int shapes[][3] = {{37, 600, 9000}, {1, 700, 300}, {300, 513, 257}};
    for (int sh = 0; sh < 3; sh++) {
        int M = shapes[sh][0], out = shapes[sh][1], in = shapes[sh][2];
        int64_t n = (int64_t)out * in;
        uint16_t *wb = malloc(sizeof *wb * (size_t)n), *wh = malloc(sizeof *wh * (size_t)n);
        float *wf = malloc(sizeof *wf * (size_t)n), *wfh = malloc(sizeof *wfh * (size_t)n);
        int64_t xn = (int64_t)M * (in > out ? in : out);
        real *x = malloc(sizeof *x * (size_t)xn);
        uint64_t s = 7 + (uint64_t)sh;
        for (int64_t i = 0; i < n; i++) {
            wb[i] = bf16_of((float)tiny_uniform(&s));
            model_values_widen(MODEL_DTYPE_BF16, &wb[i], 1, &wf[i]);
            wh[i] = safetensors_f32_to_f16((float)tiny_uniform(&s));
            model_values_widen(MODEL_DTYPE_F16, &wh[i], 1, &wfh[i]);
        }
        for (int64_t i = 0; i < xn; i++) x[i] = (real)tiny_uniform(&s);
        model_param pb = weight(out, in, MODEL_DTYPE_BF16, wb);
        model_param pf = weight(out, in, MODEL_DTYPE_F32, wf);
        model_param ph = weight(out, in, MODEL_DTYPE_F16, wh);
        model_param pfh = weight(out, in, MODEL_DTYPE_F32, wfh);
        for (int transW = 0; transW < 2; transW++) {
            int N = transW ? out : in, K = transW ? in : out;
            real *want = malloc(sizeof(real) * (size_t)M * N),
                 *got = malloc(sizeof(real) * (size_t)M * N);
            real *c0 = malloc(sizeof(real) * (size_t)M * N);
            for (int64_t i = 0; i < (int64_t)M * N; i++) c0[i] = (real)tiny_uniform(&s);
            int same = 1;
            for (int t = 1; t <= 3; t++) {
                omp_set_num_threads(t);
                memcpy(got, c0, sizeof(real) * (size_t)M * N);
                CHECK_OK(cpu_wgemm(MODEL_PRECISION_FP32, transW, &pb, M, x, K, 1, got, N));
                if (t == 1) {
                    memcpy(want, c0, sizeof(real) * (size_t)M * N);
                    CHECK_OK(cpu_wgemm(MODEL_PRECISION_FP32, transW, &pf, M, x, K, 1, want, N));
                }
                same &= memcmp(got, want, sizeof(real) * (size_t)M * N) == 0;
            }
            CHECK_MSG(same, "bf16 weight %dx%d (M %d, transW %d): bits differ from the fp32 copy's",
                      out, in, M, transW);
            memcpy(got, c0, sizeof(real) * (size_t)M * N);
            memcpy(want, c0, sizeof(real) * (size_t)M * N);
            CHECK_OK(cpu_wgemm(MODEL_PRECISION_FP32, transW, &ph, M, x, K, 1, got, N));
            CHECK_OK(cpu_wgemm(MODEL_PRECISION_FP32, transW, &pfh, M, x, K, 1, want, N));
            CHECK_MSG(!memcmp(got, want, sizeof(real) * (size_t)M * N),
                      "fp16 weight (transW %d): bits differ from the fp32 copy's", transW);
            double worst = 0;
            /* numbers: the fp32 product against double */
            memcpy(got, c0, sizeof(real) * (size_t)M * N);
            CHECK_OK(cpu_wgemm(MODEL_PRECISION_FP32, transW, &pb, M, x, K, 1, got, N));
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j += 7) {
                    double sum = c0[(int64_t)i * N + j], mag = fabs(sum);
                    for (int k = 0; k < K; k++) {
                        double w = transW ? wf[(int64_t)j * in + k] : wf[(int64_t)k * in + j];
                        sum += x[(int64_t)i * K + k] * w;
                        mag += fabs(x[(int64_t)i * K + k] * w);
                    }
                    worst = fmax(worst, fabs(got[(int64_t)i * N + j] - sum) / mag);
                }
            CHECK_MSG(worst < 1e-6, "bf16 weight, fp32 precision: error %.3g", worst);
            free(want), free(got), free(c0);
        }
        omp_set_num_threads(2);
        free(wb), free(wh), free(wf), free(wfh), free(x);
    }
}

/* Logits, loss and LoRA gradients of one forward + backward. */
typedef struct {
    double loss;
    real *logits, *grads;
    int64_t n_logits, n_grads;
} run_out;

static run_out run(model *m, lora_set *s, const tiny_case *tc) {
    run_out r = {0};
    int N = tc->B * tc->T, V = m->cfg.vocab_size;
    int32_t *tok = malloc(sizeof *tok * (size_t)N), *tg = malloc(sizeof *tg * (size_t)N);
    tiny_batch(tok, tg, N, V, 31);
    model_acts *a = NULL;
    int64_t cnt;
    lora_zero_grads(s);
    CHECK_OK(lora_attach(s, m));
    CHECK_OK(model_acts_create(&a, m, tc->B, tc->T));
    if (a) {
        CHECK_OK(model_forward(m, a, tok, tg, &r.loss, &cnt));
        r.n_logits = (int64_t)N * V;
        r.logits = malloc(sizeof(real) * (size_t)r.n_logits);
        memcpy(r.logits, model_acts_logits(a), sizeof(real) * (size_t)r.n_logits);
        CHECK_OK(model_backward(m, a, 1.0 / (double)cnt));
    }
    for (int i = 0; i < lora_num_tensors(s); i++) r.n_grads += lora_tensor(s, i)->numel;
    r.grads = malloc(sizeof(real) * (size_t)r.n_grads);
    for (int i = 0, off = 0; i < lora_num_tensors(s); i++) {
        const model_param *p = lora_tensor(s, i);
        memcpy(r.grads + off, p->grad, sizeof(real) * (size_t)p->numel);
        off += (int)p->numel;
    }
    model_acts_free(a);
    lora_detach(s);
    free(tok);
    free(tg);
    return r;
}

static void run_free(run_out *r) {
    free(r->logits);
    free(r->grads);
}

/* A config big enough for several GEMM tiles (V 320 > 256 columns) with
 * tiny.h's case as the graph. */
static tiny_case grown(tiny_case tc) {
    tc.cfg.vocab_size = 320;
    tc.cfg.hidden_size = 64;
    tc.cfg.intermediate_size = tc.cfg.arch == MODEL_ARCH_GPT2 ? 256 : 96;
    tc.cfg.head_dim = tc.cfg.arch == MODEL_ARCH_GPT2 ? 32 : tc.cfg.head_dim * 2;
    if (tc.cfg.arch != MODEL_ARCH_GPT2 && tc.cfg.num_heads * tc.cfg.head_dim > 128)
        tc.cfg.head_dim = 128 / tc.cfg.num_heads;
    if (tc.cfg.arch == MODEL_ARCH_BLOOM) { /* C = H·D and F = 4C */
        tc.cfg.hidden_size = tc.cfg.num_heads * 8;
        tc.cfg.head_dim = 8;
        tc.cfg.intermediate_size = 4 * tc.cfg.hidden_size;
    }
    tc.B = 4;
    tc.T = tc.cfg.max_position < 40 ? tc.cfg.max_position : 40;
    return tc;
}

static void check_mapped(void) {
    tiny_case cases[TINY_MAX_CASES];
    int nc = tiny_cases(cases);
    const char *dtypes[] = {"bfloat16", "float16", "float32"};
    const model_dtype mdt[] = {MODEL_DTYPE_BF16, MODEL_DTYPE_F16, MODEL_DTYPE_F32};
    for (int ci = 0; ci < nc; ci++) {
        tiny_case tc = grown(cases[ci]);
        model *src = NULL;
        CHECK_OK(model_create(&src, &tc.cfg));
        if (!src) continue;
        tiny_weights(src, 3);
        for (int di = 0; di < 3; di++) {
            char dir[TS_PATH];
            ts_path(dir, "%s_%s", tc.name, dtypes[di]);
            CHECK_OK(checkpoint_save(src, dir, dtypes[di]));
            model *wide = NULL, *mapped = NULL;
            CHECK_OK(checkpoint_load(&wide, dir));
            CHECK_OK(checkpoint_map(&mapped, dir, MODEL_PRECISION_FP32));
            if (!wide || !mapped) {
                model_free(wide);
                model_free(mapped);
                continue;
            }
            int bad = 0;
            for (int i = 0; i < mapped->n_params; i++) {
                const model_param *p = &mapped->params[i];
                if (p->ndim < 2) /* vectors and scalars */
                    bad += p->dtype != MODEL_DTYPE_REAL || !p->data;
                else
                    bad += p->dtype != mdt[di] || p->data || (p->owned != NULL) != p->conv1d;
            }
            CHECK_MSG(bad == 0, "%s %s: %d params not held as mapped", tc.name, dtypes[di], bad);
            /* memory: the values held are the file's bytes */
            CHECK(model_values_bytes(mapped) <= model_values_bytes(wide));
            lora_set *s1 = tiny_adapter(wide, 4, 8, 0, 5, 0.1, 0);
            lora_set *s2 = tiny_adapter(mapped, 4, 8, 0, 5, 0.1, 0);
            CHECK(s1 && s2);
            if (s1 && s2) {
                CHECK_OK(lora_want_grads(s1));
                CHECK_OK(lora_want_grads(s2));
                for (int t = 1; t <= 2; t++) {
                    omp_set_num_threads(t);
                    run_out a = run(wide, s1, &tc), b = run(mapped, s2, &tc);
                    CHECK_MSG(a.loss == b.loss && a.logits && b.logits &&
                                  !memcmp(a.logits, b.logits, sizeof(real) * (size_t)a.n_logits) &&
                                  !memcmp(a.grads, b.grads, sizeof(real) * (size_t)a.n_grads),
                              "%s %s, %d threads: mapped and widened differ (loss %.17g vs %.17g)",
                              tc.name, dtypes[di], t, b.loss, a.loss);
                    run_free(&a);
                    run_free(&b);
                }
                omp_set_num_threads(2);
            }
            lora_free(s1);
            lora_free(s2);
            model_free(wide);
            model_free(mapped);

            /* at bf16 precision, every matrix is bf16 (converted if need be) */
            if (cpu_bf16_check() == 0) {
                CHECK_OK(checkpoint_map(&mapped, dir, MODEL_PRECISION_BF16));
                for (int i = 0; mapped && i < mapped->n_params; i++) {
                    const model_param *p = &mapped->params[i];
                    if (p->ndim != 2) continue;
                    bad += p->dtype != MODEL_DTYPE_BF16;
                    /* a bf16 file's matrices are read in place */
                    if (mdt[di] == MODEL_DTYPE_BF16) bad += (p->owned != NULL) != p->conv1d;
                }
                CHECK_MSG(bad == 0, "%s %s at bf16: %d matrices not bf16", tc.name, dtypes[di],
                          bad);
                model_free(mapped);
            }
            err_clear();
        }
        model_free(src);
    }
}

/* transformers' split: a new shard when the next tensor would take the
 * current one past the limit. */
static int expected_shards(const model *m, int64_t es, int64_t max, int *shard) {
    int n = 0;
    int64_t used = 0;
    for (int i = 0; i < m->n_params; i++) {
        int64_t b = m->params[i].numel * es;
        if (n == 0 || used + b > max) {
            if (n == 0 || used > 0) n++;
            used = 0;
        }
        shard[i] = n - 1;
        used += b;
    }
    return n;
}

static void check_sharding(void) {
    tiny_case cases[TINY_MAX_CASES];
    tiny_cases(cases);
    tiny_case tc = grown(cases[1]); /* untied head, biases */
    model *m = NULL;
    CHECK_OK(model_create(&m, &tc.cfg));
    if (!m) return;
    tiny_weights(m, 8);
    const char *one = ts_tmp("shard_one"), *many = ts_tmp("shard_many");
    CHECK_OK(checkpoint_save(m, one, "bfloat16"));
    int64_t max = 20000;
    checkpoint_save_options o = {.dtype = "bfloat16", .max_shard_bytes = max};
    CHECK_OK(checkpoint_write(m, many, &o));
    int shard[256];
    int n = expected_shards(m, 2, max, shard);
    CHECK(n > 2);
    char path[TS_PATH];
    ts_in(path, many, "model.safetensors.index.json");
    json_error_t je;
    json_t *idx = json_load_file(path, 0, &je);
    CHECK_MSG(idx != NULL, "%s: %s", path, je.text);
    json_t *map = json_object_get(idx, "weight_map");
    int64_t total = 0;
    for (int i = 0; i < m->n_params; i++) {
        char want[64];
        snprintf(want, sizeof want, "model-%05d-of-%05d.safetensors", shard[i] + 1, n);
        const char *got = json_string_value(json_object_get(map, m->params[i].name));
        CHECK_MSG(got && !strcmp(got, want), "%s in %s, want %s", m->params[i].name,
                  got ? got : "(none)", want);
        total += m->params[i].numel * 2;
    }
    CHECK(json_object_size(map) == (size_t)m->n_params);
    CHECK(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")) ==
          total);
    json_decref(idx);
    ts_in(path, many, "model.safetensors");
    CHECK_MSG(!fio_exists(path), "a sharded model has a model.safetensors");
    model *a = NULL, *b = NULL;
    CHECK_OK(checkpoint_map(&a, one, MODEL_PRECISION_FP32));
    CHECK_OK(checkpoint_map(&b, many, MODEL_PRECISION_FP32));
    for (int i = 0; a && b && i < a->n_params; i++) {
        size_t bytes = (size_t)a->params[i].numel * model_dtype_size(a->params[i].dtype);
        CHECK_MSG(!memcmp(a->params[i].values, b->params[i].values, bytes), "%s differs",
                  a->params[i].name);
    }
    model_free(a);
    model_free(b);
    /* rewritten as one file: the index goes */
    CHECK_OK(checkpoint_save(m, many, "bfloat16"));
    ts_in(path, many, "model.safetensors.index.json");
    CHECK_MSG(!fio_exists(path), "the index of the old layout stayed");
    model_free(m);
}

static void check_streamed_merges(void) {
    tiny_case cases[TINY_MAX_CASES];
    int nc = tiny_cases(cases);
    for (int ci = 0; ci < nc; ci += 4) { /* llama_gqa, gpt2 and apertus_xielu */
        tiny_case tc = grown(cases[ci]);
        model *src = NULL;
        CHECK_OK(model_create(&src, &tc.cfg));
        if (!src) continue;
        tiny_weights(src, 12);
        char base[TS_PATH], legacy[TS_PATH], streamed[TS_PATH];
        ts_path(base, "merge_base_%s", tc.name);
        CHECK_OK(checkpoint_save(src, base, "bfloat16"));
        /* merge-adapter: in place on a widened copy, and streamed */
        model *wide = NULL, *mapped = NULL;
        CHECK_OK(checkpoint_load(&wide, base));
        CHECK_OK(checkpoint_map(&mapped, base, MODEL_PRECISION_FP32));
        lora_set *s = wide ? tiny_adapter(wide, 4, 8, 0, 9, 0.2, 1) : NULL;
        if (!wide || !mapped || !s) {
            model_free(src), model_free(wide), model_free(mapped), lora_free(s);
            continue;
        }
        ts_path(legacy, "merged_legacy_%s", tc.name);
        ts_path(streamed, "merged_streamed_%s", tc.name);
        CHECK_OK(delta_merge(wide, s));
        CHECK_OK(checkpoint_save(wide, legacy, "bfloat16"));
        checkpoint_edit e;
        checkpoint_save_options o = {.dtype = "bfloat16", .edit = &e, .release = 1};
        CHECK_OK(delta_fold_edit(mapped, s, &e));
        CHECK_OK(checkpoint_write(mapped, streamed, &o));
        char pa[TS_PATH], pb[TS_PATH];
        ts_in(pa, legacy, "model.safetensors");
        ts_in(pb, streamed, "model.safetensors");
        CHECK_MSG(ts_same_file(pa, pb), "%s: merge-adapter streamed differs from in place",
                  tc.name);
        model_free(wide);

        /* merge (TIES): in place and streamed */
        CHECK_OK(checkpoint_load(&wide, base));
        lora_set *s2 = tiny_adapter(mapped, 2, 4, 0, 10, 0.2, 1);
        lora_set *sets[2] = {s, s2};
        double w[2] = {1.0, 0.5}, dens[2] = {0.5, 0.7};
        mergekit_options mo = {.method = MERGEKIT_TIES, .weights = w, .density = dens, .lambda = 1};
        CHECK_OK(mergekit_merge(wide, sets, 2, &mo));
        ts_path(legacy, "ties_legacy_%s", tc.name);
        ts_path(streamed, "ties_streamed_%s", tc.name);
        CHECK_OK(checkpoint_save(wide, legacy, "bfloat16"));
        mergekit_fold f;
        CHECK_OK(mergekit_edit(mapped, sets, 2, &mo, &f, &e));
        CHECK_OK(checkpoint_write(mapped, streamed, &o));
        ts_in(pa, legacy, "model.safetensors");
        ts_in(pb, streamed, "model.safetensors");
        CHECK_MSG(ts_same_file(pa, pb), "%s: merge (ties) streamed differs from in place", tc.name);
        lora_free(s);
        lora_free(s2);
        model_free(wide);
        model_free(mapped);
        model_free(src);
    }
}

static float widen1(uint16_t h) {
    real v;
    model_values_widen(MODEL_DTYPE_BF16, &h, 1, &v);
    return (float)v;
}

/* Stochastic rounding to bf16: exact values stay, the expected result is the
 * value, the draws are a function of (key, index), and 200 rounds of
 * updates of 0.3 ulp each (every one below half an ulp, all of which
 * nearest rounding drops) end close to the fp32 accumulation. */
static void check_stochastic_rounding(void) {
    enum { N = 4096, ROUNDS = 200 };
    real *x = malloc(sizeof *x * N), *acc = malloc(sizeof *acc * N);
    uint16_t *a = malloc(sizeof *a * N), *b = malloc(sizeof *b * N), *rne = malloc(sizeof *rne * N);
    uint64_t s = 3;
    for (int i = 0; i < N; i++) {
        uint16_t h = bf16_of((float)(1 + 0.999 * (tiny_uniform(&s) + 1) / 2)); /* [1, 2) */
        a[i] = rne[i] = h;
        x[i] = widen1(h);
    }
    model_values_to_bf16_stochastic(x, N, 77, 0, b);
    CHECK_MSG(!memcmp(a, b, sizeof *a * N), "exact bf16 values were changed");
    /* unbiased: 0.3 ulp above a grid point rounds up 30 % of the time */
    const float ulp = 1.0f / 128; /* in [1, 2) */
    for (int i = 0; i < N; i++) x[i] = widen1(a[i]) + 0.3f * ulp;
    int up = 0;
    for (int k = 0; k < 25; k++) {
        model_values_to_bf16_stochastic(x, N, 1000 + (uint64_t)k, 0, b);
        for (int i = 0; i < N; i++) up += b[i] != a[i];
    }
    double frac = up / (25.0 * N);
    printf("stochastic rounding: %.4f of 0.3-ulp values rounded up\n", frac);
    CHECK_MSG(fabs(frac - 0.3) < 0.01, "rounded up %.4f of the time, want 0.3", frac);
    model_values_to_bf16_stochastic(x, N, 5, 10, a);
    model_values_to_bf16_stochastic(x + 10, N - 10, 5, 20, b);
    CHECK_MSG(!memcmp(a + 10, b, sizeof *a * (N - 10)), "draws depend on more than (key, index)");
    model_values_to_bf16_stochastic(x, N, 6, 10, b);
    CHECK_MSG(memcmp(a, b, sizeof *a * N) != 0, "another key drew the same pattern");
    /* 200 rounds of +0.3 ulp */
    for (int i = 0; i < N; i++) {
        a[i] = bf16_of(widen1(rne[i]));
        acc[i] = widen1(rne[i]);
    }
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < N; i++) {
            float d = 0.3f * ulp;
            acc[i] += d;
            x[i] = widen1(a[i]) + d;
        }
        model_values_to_bf16_stochastic(x, N, 0xabcdull * (uint64_t)(r + 1), 0, a);
        for (int i = 0; i < N; i++) x[i] = widen1(rne[i]) + 0.3f * ulp;
        model_values_to_bf16(x, N, rne);
    }
    double mean = 0, rms = 0, rne_err = 0;
    for (int i = 0; i < N; i++) {
        double e = (widen1(a[i]) - acc[i]) / ulp;
        mean += e / N;
        rms += e * e / N;
        rne_err += fabs(widen1(rne[i]) - acc[i]) / ulp / N;
    }
    rms = sqrt(rms);
    printf("%d rounds of +0.3 ulp (60 ulp in all): stochastic rounding off by %.3f ulp on "
           "average (rms %.2f), nearest rounding by %.1f\n",
           ROUNDS, mean, rms, rne_err);
    CHECK_MSG(fabs(mean) < 0.5 && rms < 12, "stochastic rounding drifted: mean %.3f, rms %.2f",
              mean, rms);
    CHECK_MSG(rne_err > 50, "nearest rounding was expected to lose the updates (%.1f)", rne_err);
    free(x), free(acc), free(a), free(b), free(rne);
}

int main(void) {
    omp_set_num_threads(2);
    check_stochastic_rounding();
    check_wgemm();
    check_mapped();
    check_sharding();
    check_streamed_merges();
    return check_finish();
}
