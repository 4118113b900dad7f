/* test_forward_precision — the fp32 build against the fp64 build.
 *
 * This source is compiled twice. Against fl_model_f64 (cpu_forward_f64) it
 * runs every tiny case and writes logits, loss and every param's gradient to
 * cpu_forward_f64.bin in the test's working directory. Against fl_model_f32
 * (cpu_forward_f32, which CTest runs after it) it runs the same cases on the
 * same weights (tiny_weights rounds them through float) and checks the fp32
 * results against that file: logits and loss within 1e-5 relative, gradients
 * within 1e-4 relative per tensor. The fp32 build also checks its error paths,
 * the RoPE table against transformers' numbers, and that 1 and 2 threads give
 * bit-identical results. */
#include "model/cpu/cpu.h"
#include "model/model.h"
#include "tests/check.h"
#include "tests/cpu/tiny.h"
#include "util/err.h"

#include <omp.h>
#include <stdlib.h>

#define DUMP_FILE "cpu_forward_f64.bin"

/* Forward + backward of one case; calls emit(value) for the loss, every
 * logit, then every param's gradient in table order. */
typedef void (*emit_fn)(void *ctx, const char *what, int64_t n, const real *v, double loss);

static void run_case(const tiny_case *tc, emit_fn emit, void *ctx) {
    model *m = NULL;
    model_acts *a = NULL;
    int N = tc->B * tc->T;
    int32_t *tokens = malloc((size_t)N * sizeof *tokens),
            *targets = malloc((size_t)N * sizeof *targets);
    CHECK_OK(model_create(&m, &tc->cfg));
    if (m && tokens && targets) {
        tiny_weights(m, 21);
        tiny_batch(tokens, targets, N, tc->cfg.vocab_size, 22);
        CHECK_OK(model_want_all_grads(m));
        CHECK_OK(model_acts_create(&a, m, tc->B, tc->T));
    }
    if (a) {
        double sum = 0;
        int64_t count = 0;
        CHECK_OK(model_forward(m, a, tokens, targets, &sum, &count));
        emit(ctx, "loss", 0, NULL, sum / (double)count);
        emit(ctx, "logits", (int64_t)N * tc->cfg.vocab_size, model_acts_logits(a), 0);
        CHECK_OK(model_backward(m, a, 1.0 / (double)count));
        for (int i = 0; i < m->n_params; i++)
            emit(ctx, m->params[i].name, m->params[i].numel, m->params[i].grad, 0);
    }
    model_acts_free(a);
    model_free(m);
    free(tokens);
    free(targets);
}

#ifdef FL_REAL_F64

static void emit_write(void *ctx, const char *what, int64_t n, const real *v, double loss) {
    FILE *f = ctx;
    if (!v) {
        CHECK(fwrite(&loss, sizeof loss, 1, f) == 1);
        return;
    }
    CHECK(fwrite(&n, sizeof n, 1, f) == 1);
    CHECK(fwrite(v, sizeof *v, (size_t)n, f) == (size_t)n);
}

int main(void) {
    tiny_case cases[TINY_MAX_CASES];
    int n = tiny_cases(cases);
    FILE *f = fopen(DUMP_FILE ".tmp", "wb");
    CHECK(f != NULL);
    if (!f) return check_finish();
    for (int i = 0; i < n; i++) run_case(&cases[i], emit_write, f);
    CHECK(fclose(f) == 0);
    CHECK(rename(DUMP_FILE ".tmp", DUMP_FILE) == 0);
    return check_finish();
}

#else

typedef struct {
    FILE *f;
    const char *name;
    double worst_logits, worst_grad;
} cmp_ctx;

static void emit_compare(void *vctx, const char *what, int64_t n, const real *v, double loss) {
    cmp_ctx *c = vctx;
    if (!v) {
        double ref = 0;
        CHECK(fread(&ref, sizeof ref, 1, c->f) == 1);
        CHECK_MSG(fabs(loss - ref) <= 1e-5 * fabs(ref), "%s: loss %.9g, fp64 %.9g", c->name, loss,
                  ref);
        return;
    }
    int64_t rn = -1;
    CHECK(fread(&rn, sizeof rn, 1, c->f) == 1);
    CHECK_MSG(rn == n, "%s: %s: %lld values, the fp64 file has %lld", c->name, what, (long long)n,
              (long long)rn);
    if (rn != n) return;
    double *ref = malloc((size_t)n * sizeof *ref);
    CHECK(ref && fread(ref, sizeof *ref, (size_t)n, c->f) == (size_t)n);
    double maxref = 0, maxdiff = 0;
    for (int64_t j = 0; ref && j < n; j++) {
        if (fabs(ref[j]) > maxref) maxref = fabs(ref[j]);
        if (fabs(v[j] - ref[j]) > maxdiff) maxdiff = fabs(v[j] - ref[j]);
    }
    free(ref);
    int logits = strcmp(what, "logits") == 0;
    double rel = maxref > 0 ? maxdiff / maxref : maxdiff, tol = logits ? 1e-5 : 1e-4;
    double *worst = logits ? &c->worst_logits : &c->worst_grad;
    if (rel > *worst) *worst = rel;
    CHECK_MSG(rel < tol, "%s: %s: fp32 vs fp64 relative difference %.3g", c->name, what, rel);
}

/* transformers 5.x, LlamaConfig(head_dim=16, rope_theta=10000, rope_scaling=
 * {rope_type: llama3, factor: 8, low_freq_factor: 1, high_freq_factor: 4,
 * original_max_position_embeddings: 64}): ROPE_INIT_FUNCTIONS["llama3"]. */
static const double hf_llama3_inv_freq[8] = {1,
                                             0.244384587,
                                             0.0130422562,
                                             0.00395284733,
                                             0.00124999997,
                                             0.000395284733,
                                             0.000125000006,
                                             3.95284733e-05};
/* The same without rope_scaling (LlamaRotaryEmbedding.inv_freq). */
static const double hf_default_inv_freq[8] = {1,
                                              0.316227764,
                                              0.100000001,
                                              0.0316227786,
                                              0.00999999978,
                                              0.00316227786,
                                              0.00100000005,
                                              0.000316227786};

static void check_rope_table(void) {
    model_config c = tiny_llama();
    c.head_dim = 16;
    c.rope_theta = 10000;
    real cs[5 * 8], sn[5 * 8];
    for (int scaled = 0; scaled < 2; scaled++) {
        c.rope_llama3 = scaled;
        c.rope_factor = 8;
        c.rope_low_freq_factor = 1;
        c.rope_high_freq_factor = 4;
        c.rope_original_max_position = 64;
        cpu_rope_table(cs, sn, &c, 5);
        const double *inv = scaled ? hf_llama3_inv_freq : hf_default_inv_freq;
        for (int t = 0; t < 5; t++)
            for (int i = 0; i < 8; i++) {
                CHECK_NEAR(cs[t * 8 + i], cos(t * inv[i]), 2e-6);
                CHECK_NEAR(sn[t * 8 + i], sin(t * inv[i]), 2e-6);
            }
    }
}

static void check_errors(void) {
    tiny_case cases[TINY_MAX_CASES];
    tiny_cases(cases);
    const tiny_case *gpt2 = &cases[4];
    model *m = NULL;
    model_acts *a = NULL;
    CHECK_OK(model_create(&m, &gpt2->cfg));
    if (!m) return;
    tiny_weights(m, 3);
    CHECK_FAILS_WITH(model_acts_create(&a, m, 1, gpt2->cfg.max_position + 1), "learned positions");
    CHECK(a == NULL);
    CHECK_FAILS_WITH(model_acts_create(&a, m, 0, 4), "positive");
    CHECK_OK(model_acts_create(&a, m, 1, 4));
    if (!a) {
        model_free(m);
        return;
    }
    int32_t tok[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, MODEL_IGNORE_INDEX};
    double sum;
    int64_t n;
    CHECK_FAILS_WITH(model_backward(m, a, 1), "needs a forward");
    tok[2] = 32; /* == V: the first id out of range */
    CHECK_FAILS_WITH(model_forward(m, a, tok, tgt, &sum, &n), "outside the vocabulary");
    tok[2] = -1;
    CHECK_FAILS_WITH(model_forward(m, a, tok, tgt, &sum, &n), "position 2");
    tok[2] = 3;
    tgt[1] = 32;
    CHECK_FAILS_WITH(model_forward(m, a, tok, tgt, &sum, &n), "target id 32");
    tgt[1] = -5;
    CHECK_FAILS_WITH(model_forward(m, a, tok, tgt, &sum, &n), "ignore index");
    tgt[1] = 3;
    /* Logits only: no loss, so no backward. */
    CHECK_OK(model_forward(m, a, tok, NULL, &sum, &n));
    CHECK(n == 0 && sum == 0);
    CHECK_FAILS_WITH(model_backward(m, a, 1), "no targets");
    /* One backward per forward. */
    CHECK_OK(model_forward(m, a, tok, tgt, &sum, &n));
    CHECK(n == 3 && sum > 0);
    double first = sum;
    CHECK_OK(model_forward(m, a, tok, tgt, &sum, &n));
    CHECK(sum == first); /* deterministic */
    CHECK_OK(model_backward(m, a, 1.0 / 3));
    CHECK_FAILS_WITH(model_backward(m, a, 1.0 / 3), "one backward per forward");
    CHECK_FAILS_WITH(model_acts_set_probe(a, 2 * gpt2->cfg.num_layers + 1, 0, 1), "out of range");
    CHECK(model_acts_resid_grad(a, 0) == NULL); /* not kept */
    model_acts_free(a);
    model_free(m);
}

/* Loss and gradients of one forward + backward with `threads` OpenMP threads. */
static double run_threads(model *m, int B, int T, int threads, real **grads) {
    omp_set_num_threads(threads);
    model_acts *a = NULL;
    int N = B * T;
    int32_t *tok = malloc((size_t)N * sizeof *tok), *tgt = malloc((size_t)N * sizeof *tgt);
    double sum = 0;
    int64_t n = 0;
    CHECK_OK(model_acts_create(&a, m, B, T));
    if (a && tok && tgt) {
        tiny_batch(tok, tgt, N, m->cfg.vocab_size, 5);
        model_zero_grads(m);
        CHECK_OK(model_forward(m, a, tok, tgt, &sum, &n));
        CHECK_OK(model_backward(m, a, 1.0 / (double)n));
        for (int i = 0; i < m->n_params; i++) {
            grads[i] = malloc((size_t)m->params[i].numel * sizeof(real));
            if (grads[i])
                memcpy(grads[i], m->params[i].grad, (size_t)m->params[i].numel * sizeof(real));
        }
    }
    model_acts_free(a);
    free(tok);
    free(tgt);
    return sum;
}

/* The work is split differently with 1 and 2 threads (GEMM blocks, rows,
 * columns, attention heads), but fedlora's kernels compute every value in
 * the same order whatever the split, so the results are bit-identical; this
 * catches a reduction whose order depends on the schedule. (It also relies
 * on OpenBLAS computing a GEMM element the same way whether the GEMM is split
 * by rows or columns, as its kernels here do.) Sizes are above every kernel's
 * threshold for going parallel. */
static void check_thread_determinism(void) {
    for (int arch = 0; arch < 2; arch++) {
        model_config c = tiny_llama();
        c.vocab_size = 320;
        c.hidden_size = 128;
        c.intermediate_size = 256;
        c.head_dim = 32;
        c.max_position = 128;
        if (arch == 1) {
            tiny_case cases[TINY_MAX_CASES];
            tiny_cases(cases);
            c = cases[4].cfg;
            c.vocab_size = 320;
            c.hidden_size = 128;
            c.intermediate_size = 512;
            c.head_dim = 64;
            c.max_position = 128;
        }
        model *m = NULL;
        CHECK_OK(model_create(&m, &c));
        if (!m) continue;
        tiny_weights(m, 9);
        CHECK_OK(model_want_all_grads(m));
        real *g1[64] = {0}, *g2[64] = {0};
        CHECK(m->n_params <= 64);
        if (m->n_params <= 64) {
            double l1 = run_threads(m, 2, 128, 1, g1), l2 = run_threads(m, 2, 128, 2, g2);
            CHECK_MSG(l1 == l2, "%s: loss %.17g with 1 thread, %.17g with 2",
                      arch ? "gpt2" : "llama", l1, l2);
            for (int i = 0; i < m->n_params; i++)
                CHECK_MSG(g1[i] && g2[i] &&
                              memcmp(g1[i], g2[i], (size_t)m->params[i].numel * sizeof(real)) == 0,
                          "%s: gradient differs between 1 and 2 threads", m->params[i].name);
        }
        for (int i = 0; i < 64; i++) {
            free(g1[i]);
            free(g2[i]);
        }
        model_free(m);
    }
    omp_set_num_threads(2);
}

/* One-row products (each step of generation) take cpu_gemm's gemv path when
 * B is stored (N, K). For every transpose combination, with beta != 0: the
 * result matches a double-precision reference, and 1, 2 and 3 threads give
 * the same bits. Shapes: N not a multiple of 16 and strides wider than the
 * rows; and a K of 8 (a LoRA B of rank 8), rows packed, N·K above the
 * threshold for going parallel: there OpenBLAS's gemv changes about half
 * the bits when split in three, so cpu_gemm does not split it. */
static void check_one_row_gemm(void) {
    static const int shapes[][2] = {{5003, 771}, {40000, 8}};
    for (int sh = 0; sh < 2; sh++) {
        int N = shapes[sh][0], K = shapes[sh][1], LDA = 3, ldb_t = sh ? K : K + 5, ldb_n = N + 3;
        size_t nb = (size_t)(K > N ? K : N) * (size_t)(ldb_t > ldb_n ? ldb_t : ldb_n);
        real *A = malloc(sizeof(real) * K * LDA), *B = malloc(sizeof(real) * nb);
        real *C0 = malloc(sizeof(real) * N), *C[3];
        for (int t = 0; t < 3; t++) C[t] = malloc(sizeof(real) * N);
        uint64_t r = 5;
        for (int i = 0; i < K * LDA; i++) A[i] = (real)tiny_uniform(&r);
        for (size_t i = 0; i < nb; i++) B[i] = (real)tiny_uniform(&r);
        for (int j = 0; j < N; j++) C0[j] = (real)tiny_uniform(&r);
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int lda = ta ? LDA : K, ldb = tb ? ldb_t : ldb_n;
                for (int t = 0; t < 3; t++) {
                    omp_set_num_threads(t + 1);
                    memcpy(C[t], C0, sizeof(real) * N);
                    cpu_gemm(ta, tb, 1, N, K, 0.75f, A, lda, B, ldb, 0.5f, C[t], N);
                }
                double worst = 0;
                for (int j = 0; j < N; j++) {
                    double sum = 0, mag = 0;
                    for (int k = 0; k < K; k++) {
                        double a = A[ta ? (size_t)k * LDA : (size_t)k];
                        double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                        sum += a * b;
                        mag += fabs(a * b);
                    }
                    double want = 0.75 * sum + 0.5 * C0[j];
                    worst = fmax(worst, fabs(C[0][j] - want) / (0.75 * mag + 0.5 * fabs(C0[j])));
                }
                CHECK_MSG(worst < 1e-6, "one-row gemm %dx%d transA=%d transB=%d: error %.3g", N, K,
                          ta, tb, worst);
                CHECK_MSG(memcmp(C[0], C[1], sizeof(real) * N) == 0 &&
                              memcmp(C[0], C[2], sizeof(real) * N) == 0,
                          "one-row gemm %dx%d transA=%d transB=%d: the bits depend on the "
                          "thread count",
                          N, K, ta, tb);
            }
        free(A);
        free(B);
        free(C0);
        for (int t = 0; t < 3; t++) free(C[t]);
    }
    omp_set_num_threads(2);
}

int main(void) {
    check_rope_table();
    check_one_row_gemm();
    check_errors();
    check_thread_determinism();
    cmp_ctx ctx = {fopen(DUMP_FILE, "rb"), NULL, 0, 0};
    CHECK_MSG(ctx.f != NULL, DUMP_FILE " is missing: run the cpu_forward_f64 test first");
    if (!ctx.f) return check_finish();
    tiny_case cases[TINY_MAX_CASES];
    int n = tiny_cases(cases);
    for (int i = 0; i < n; i++) {
        ctx.name = cases[i].name;
        run_case(&cases[i], emit_compare, &ctx);
    }
    CHECK(fgetc(ctx.f) == EOF);
    fclose(ctx.f);
    printf("fp32 vs fp64: logits %.3g, gradients %.3g (worst relative difference)\n",
           ctx.worst_logits, ctx.worst_grad);
    return check_finish();
}

#endif
