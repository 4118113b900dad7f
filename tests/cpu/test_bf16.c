/* bf16 precision on the CPU (model/cpu/bf16.c, cpu_wgemm), against fp32:
 *
 *   - the oneDNN product itself: bf16-rounded inputs, summed in fp32. Its
 *     error against a double reference over the same rounded inputs must be
 *     fp32 accumulation's (a few 1e-7 of Σ|a·b|), far below what summing or
 *     storing in bf16 would give (~4e-3): a kernel that accumulated in bf16
 *     fails here;
 *   - the model in bf16 against the same model in fp32, with the tolerances
 *     docs/cpu-backend.md states (those of the GPU's bf16 mode, docs/gpu.md):
 *     logits, loss, LoRA gradients, and a 10-step training trajectory. A
 *     silent fallback to fp32 fails too: the bf16 kernel must have run
 *     (counted, and oneDNN's implementation named), and the results must
 *     differ from fp32's by more than fp32 rounding;
 *   - determinism: the same bf16 run twice gives the same bits, and a run
 *     resumed from a checkpoint gives the uninterrupted run's adapter.
 * Skipped, with a message, on a CPU where oneDNN cannot multiply bf16. */
#include "lora/adamw.h"
#include "lora/lora.h"
#include "model/cpu/cpu.h"
#include "model/safetensors.h"
#include "tests/check.h"
#include "tests/cpu/tiny.h"
#include "tests/cpu/tiny_lora.h"
#include "util/err.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* bf16 rounding of a float (nearest even), as a float. */
static float bf16_round(float f) {
    real in = f;
    uint16_t h;
    model_values_to_bf16(&in, 1, &h);
    uint32_t u = (uint32_t)h << 16;
    memcpy(&f, &u, 4);
    return f;
}

static void check_kernel(void) {
    /* C (M, N) = A (M, K) · Wᵀ with W (N, K), then C += A · Wᵀ again
     * (accumulate); and the backward form C (M, K') = A' · W. */
    enum { M = 37, N = 53, K = 1000 };
    float *A = malloc(sizeof(float) * M * K), *C = malloc(sizeof(float) * M * N);
    float *C2 = malloc(sizeof(float) * M * K);
    uint16_t *W = malloc(sizeof(uint16_t) * N * K);
    float *Wf = malloc(sizeof(float) * N * K);
    uint64_t s = 11;
    for (int i = 0; i < M * K; i++) A[i] = (float)tiny_uniform(&s);
    for (int i = 0; i < N * K; i++) {
        Wf[i] = bf16_round((float)tiny_uniform(&s));
        real v = Wf[i];
        model_values_to_bf16(&v, 1, &W[i]);
    }
    uint64_t n0 = cpu_bf16_gemm_count();
    CHECK_OK(cpu_bf16_gemm(1, M, N, K, A, K, W, 0, C, N));
    CHECK_MSG(cpu_bf16_gemm_count() == n0 + 1, "the bf16 product was not counted");
    printf("oneDNN: %s on %s\n", cpu_bf16_last_impl(), cpu_bf16_isa());
    CHECK_MSG(cpu_bf16_last_impl()[0], "oneDNN named no implementation");
    if (cpu_bf16_native())
        CHECK_MSG(strstr(cpu_bf16_last_impl(), "bf16") || strstr(cpu_bf16_last_impl(), "amx"),
                  "a CPU with bf16 instructions ran '%s'", cpu_bf16_last_impl());
    double worst = 0, worst_unrounded = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double sum = 0, mag = 0, sum_u = 0;
            for (int k = 0; k < K; k++) {
                double a = bf16_round(A[i * K + k]), w = Wf[j * K + k];
                sum += a * w;
                mag += fabs(a * w);
                sum_u += (double)A[i * K + k] * w;
            }
            worst = fmax(worst, fabs(C[i * N + j] - sum) / mag);
            worst_unrounded = fmax(worst_unrounded, fabs(C[i * N + j] - sum_u) / mag);
        }
    printf("bf16 GEMM, K = %d: error %.3g of sum|a*w| (fp32 sums); %.3g against the unrounded "
           "activations\n",
           K, worst, worst_unrounded);
    CHECK_MSG(worst < 2e-6, "bf16 GEMM error %.3g: not summed in fp32", worst);
    /* The activations were rounded to bf16: an fp32 fallback would be exact. */
    CHECK_MSG(worst_unrounded > 1e-4, "no bf16 rounding of the activations (%.3g): fp32 ran?",
              worst_unrounded);

    /* accumulate: C += A·Wᵀ doubles it exactly (the same fp32 sum added) */
    float *Cacc = malloc(sizeof(float) * M * N);
    memcpy(Cacc, C, sizeof(float) * M * N);
    CHECK_OK(cpu_bf16_gemm(1, M, N, K, A, K, W, 1, Cacc, N));
    int same = 1;
    for (int i = 0; i < M * N; i++) same &= Cacc[i] == C[i] + C[i];
    CHECK_MSG(same, "beta = 1 does not add the product to C");

    /* backward form: C2 (M, K) = A' (M, N) · W (N, K) */
    CHECK_OK(cpu_bf16_gemm(0, M, K, N, A, K, W, 0, C2, K));
    worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < K; j++) {
            double sum = 0, mag = 0;
            for (int k = 0; k < N; k++) {
                double a = bf16_round(A[i * K + k]), w = Wf[k * K + j];
                sum += a * w;
                mag += fabs(a * w);
            }
            worst = fmax(worst, mag > 0 ? fabs(C2[i * K + j] - sum) / mag : 0);
        }
    printf("bf16 GEMM, W not transposed: error %.3g\n", worst);
    CHECK_MSG(worst < 2e-6, "bf16 GEMM (W (K, N)) error %.3g", worst);
    free(A), free(C), free(C2), free(W), free(Wf), free(Cacc);
}

/* The family check_model runs: Llama, then OLMo 2 and Apertus, whose
 * post-norms, QK-norm and xIELU stay fp32 around the bf16 products. */
static model_family medium_family = MODEL_FAMILY_LLAMA;

/* A model large enough for the bf16 path (B·T >= CPU_BF16_MIN_ROWS rows). */
static model_config medium(void) {
    model_config c = tiny_llama();
    model_config_family(&c, medium_family);
    c.vocab_size = 256;
    c.hidden_size = 96;
    c.intermediate_size = 160;
    c.num_heads = 6;
    c.num_kv_heads = 2;
    c.head_dim = 16;
    c.num_layers = 3;
    c.max_position = 64;
    c.initializer_range = 0.08;
    return c;
}

static double rel_max(const real *a, const real *ref, int64_t n) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - ref[i]));
        m = fmax(m, fabs((double)ref[i]));
    }
    return m > 0 ? d / m : d;
}

typedef struct {
    model *m;
    lora_set *s;
    model_acts *a;
} net;

/* The same weights and adapter (seeded), at precision p. */
static void net_make(net *n, model_precision p) {
    model_config c = medium();
    memset(n, 0, sizeof *n);
    CHECK_OK(model_create(&n->m, &c));
    if (!n->m) exit(check_finish());
    model_init_random(n->m, 21);
    n->s = tiny_adapter(n->m, 8, 16, 0, 3, 0.05, 0);
    CHECK_MSG(n->s != NULL, "%s", err_msg());
    if (!n->s) exit(check_finish());
    CHECK_OK(model_set_precision(n->m, p));
    CHECK_OK(lora_want_grads(n->s));
    CHECK_OK(lora_attach(n->s, n->m));
    CHECK_OK(model_acts_create(&n->a, n->m, 4, 32));
}

static void net_free(net *n) {
    model_acts_free(n->a);
    lora_detach(n->s);
    lora_free(n->s);
    model_free(n->m);
}

static double step(net *n, const int32_t *tok, const int32_t *tg) {
    double loss;
    int64_t cnt;
    lora_zero_grads(n->s);
    CHECK_OK(model_forward(n->m, n->a, tok, tg, &loss, &cnt));
    CHECK_OK(model_backward(n->m, n->a, 1.0 / (double)cnt));
    return loss / (double)cnt;
}

static double rel_l2_grads(const lora_set *a, const lora_set *ref, int values) {
    double d = 0, r = 0;
    for (int i = 0; i < a->n_modules; i++) {
        const model_param *pa[2] = {&a->modules[i].A, &a->modules[i].B};
        const model_param *pr[2] = {&ref->modules[i].A, &ref->modules[i].B};
        for (int k = 0; k < 2; k++) {
            const real *x = values ? pa[k]->data : pa[k]->grad;
            const real *y = values ? pr[k]->data : pr[k]->grad;
            for (int64_t j = 0; j < pa[k]->numel; j++) {
                d += ((double)x[j] - y[j]) * ((double)x[j] - y[j]);
                r += (double)y[j] * y[j];
            }
        }
    }
    return sqrt(d / r);
}

static void check_model(void) {
    net f, b, b2;
    net_make(&f, MODEL_PRECISION_FP32);
    net_make(&b, MODEL_PRECISION_BF16);
    net_make(&b2, MODEL_PRECISION_BF16);
    int N = 4 * 32, V = medium().vocab_size;
    int32_t tok[128], tg[128];
    tiny_batch(tok, tg, N, V, 5);
    uint64_t n0 = cpu_bf16_gemm_count();
    double lf = step(&f, tok, tg);
    CHECK_MSG(cpu_bf16_gemm_count() == n0, "fp32 precision ran bf16 products");
    double lb = step(&b, tok, tg);
    uint64_t used = cpu_bf16_gemm_count() - n0;
    /* every frozen GEMM of forward and backward: 7 linears (6 in a plain MLP)
     * x 3 layers, the head, forward and backward */
    int per_layer = f.m->cfg.block.mlp == MODEL_MLP_GATED ? 7 : 6;
    CHECK_MSG(used >= (uint64_t)2 * (per_layer * 3 + 1), "only %llu bf16 products in a bf16 step",
              (unsigned long long)used);
    double lb2 = step(&b2, tok, tg);
    CHECK_MSG(lb == lb2, "bf16 is not deterministic: loss %.17g then %.17g", lb, lb2);
    double e_loss = fabs(lb - lf) / fabs(lf), e_grad = rel_l2_grads(b.s, f.s, 0);
    printf("family %d, bf16 vs fp32: loss %.3g, LoRA gradients %.3g (rel_l2)\n", (int)medium_family,
           e_loss, e_grad);
    CHECK_MSG(e_loss < 2e-3, "loss %.9g (bf16) vs %.9g (fp32)", lb, lf);
    CHECK_MSG(e_grad < 5e-2, "LoRA gradients differ by %.3g", e_grad);
    /* Not fp32 in disguise: bf16's rounding shows in the loss. */
    CHECK_MSG(e_loss > 1e-7 || e_grad > 1e-5, "bf16 gave fp32's numbers (loss %.3g, grads %.3g)",
              e_loss, e_grad);

    /* logits of a forward alone */
    double l1, l2;
    int64_t c1, c2;
    CHECK_OK(model_forward(f.m, f.a, tok, tg, &l1, &c1));
    CHECK_OK(model_forward(b.m, b.a, tok, tg, &l2, &c2));
    double e_logits = rel_max(model_acts_logits(b.a), model_acts_logits(f.a), (int64_t)N * V);
    printf("bf16 vs fp32 logits: %.3g (rel_max)\n", e_logits);
    CHECK_MSG(e_logits < 3e-2 && e_logits > 1e-6, "logits differ by %.3g", e_logits);

    /* 10 AdamW steps on both */
    adamw *of = NULL, *ob = NULL;
    adamw_config oc;
    adamw_config_init(&oc);
    oc.lr = 5e-3;
    oc.total_steps = 10;
    model_param *pf[64], *pb[64];
    int nt = lora_num_tensors(f.s);
    CHECK(nt <= 64);
    for (int i = 0; i < nt && i < 64; i++) pf[i] = lora_tensor(f.s, i), pb[i] = lora_tensor(b.s, i);
    CHECK_OK(adamw_create(&of, pf, nt, &oc));
    CHECK_OK(adamw_create(&ob, pb, nt, &oc));
    double worst_step = 0;
    for (int k = 0; k < 10 && of && ob; k++) {
        tiny_batch(tok, tg, N, V, 100 + (uint64_t)k);
        double a = step(&f, tok, tg), c = step(&b, tok, tg);
        worst_step = fmax(worst_step, fabs(c - a) / fabs(a));
        CHECK_OK(adamw_step(of));
        CHECK_OK(adamw_step(ob));
    }
    double e_adapter = rel_l2_grads(b.s, f.s, 1);
    printf("10 steps: each step's loss within %.3g, adapter %.3g (rel_l2)\n", worst_step,
           e_adapter);
    CHECK_MSG(worst_step < 5e-3, "a step's loss differs by %.3g", worst_step);
    CHECK_MSG(e_adapter < 5e-2, "the adapter after 10 steps differs by %.3g", e_adapter);
    adamw_free(of);
    adamw_free(ob);
    net_free(&f);
    net_free(&b);
    net_free(&b2);
}

/* model_set_precision(BF16) rounds every frozen weight matrix to bf16 once
 * and leaves vectors (norms, biases) and trainable params alone. */
static void check_conversion(void) {
    model_config c = medium();
    c.qkv_bias = c.o_bias = 1;
    model *m = NULL, *ref = NULL;
    CHECK_OK(model_create(&m, &c));
    CHECK_OK(model_create(&ref, &c));
    if (!m || !ref) return;
    model_init_random(m, 4);
    model_init_random(ref, 4);
    CHECK_OK(model_param_want_grad(&m->params[1])); /* trained: stays real */
    CHECK_OK(model_set_precision(m, MODEL_PRECISION_BF16));
    int bad = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i], *r = &ref->params[i];
        int frozen_matrix = p->ndim == 2 && i != 1;
        if (!frozen_matrix) {
            bad += p->dtype != MODEL_DTYPE_REAL || p->data == NULL;
            continue;
        }
        bad += p->dtype != MODEL_DTYPE_BF16 || p->data != NULL;
        const uint16_t *v = p->values;
        for (int64_t j = 0; j < p->numel && p->dtype == MODEL_DTYPE_BF16; j++)
            bad += v[j] != safetensors_f32_to_bf16((float)r->data[j]);
    }
    CHECK_MSG(bad == 0, "%d values or params converted wrongly", bad);
    model_free(m);
    model_free(ref);
}

int main(void) {
    omp_set_num_threads(2);
    if (cpu_bf16_check() != 0) {
        printf("SKIP: %s\n", err_msg());
        return 77;
    }
    check_kernel();
    check_conversion();
    const model_family fams[] = {MODEL_FAMILY_LLAMA, MODEL_FAMILY_OLMO2, MODEL_FAMILY_APERTUS};
    for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++) {
        medium_family = fams[i];
        check_model();
    }
    return check_finish();
}
